//! Twilio `stop` (the caller hung up) closes the OpenAI socket at once (within 100 ms).

mod common;

use std::time::{Duration, Instant};

use common::{mock, Proxy, RawStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_stop_closes_the_openai_socket_within_100_ms() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = RawStream::open(proxy.addr, 31).await;
    raw.start().await;
    // Stream some silence until the OpenAI session is open and ready.
    let silence = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xffu8; 160]);
    for _ in 0..10 {
        raw.media(&silence).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.sessions().len(), 1, "log:\n{}", proxy.log());
    let stopped_at = Instant::now();
    raw.stop().await;
    let deadline = stopped_at + Duration::from_secs(2);
    let closed_at = loop {
        if let Some(at) = mock.sessions()[0].closed_at {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "the OpenAI leg is still open 2 s after stop"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let took = closed_at.saturating_duration_since(stopped_at);
    assert!(
        took < Duration::from_millis(100),
        "OpenAI socket closed {took:?} after stop"
    );
    let rec = &mock.sessions()[0];
    assert!(
        rec.close_reason.contains("client closed (1000)"),
        "a normal close frame, not a dropped socket: {}",
        rec.close_reason
    );
    // And Twilio's socket is closed normally too.
    assert_eq!(raw.until_closed(Duration::from_secs(2)).await, Some(1000));
    assert!(
        proxy.log().contains("twilio sent stop"),
        "log:\n{}",
        proxy.log()
    );
}
