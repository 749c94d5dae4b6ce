//! OpenAI unreachable: the first calls try, fail fast and are sent to the conference by
//! `after-stream`; after three failed connects in a row the webhook sends callers straight to
//! the conference without opening a stream (protocol.md 2.2), with the metric and the log saying
//! why.

mod common;

use std::time::Duration;

use callbridge_testkit::sim::twiml::Twiml;
use common::{after_stream_conference, logged, room, webhook as post_webhook, Proxy, RawStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_three_failed_connects_the_webhook_sends_callers_straight_to_the_conference() {
    // Nothing listens on port 1: every connect is refused at once.
    let proxy = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:1/v1/realtime"),
        ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ("TWILIO_AUTH_TOKEN", common::AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    for n in 61..64 {
        // RawStream::open posts the webhook and upgrades: the webhook still streams.
        // The proxy dials OpenAI once `start` checked out; refused, it ends the stream.
        let mut raw = RawStream::open(proxy.addr, n).await;
        raw.start().await;
        assert_eq!(
            raw.until_closed(Duration::from_secs(5)).await,
            Some(1000),
            "log:\n{}",
            proxy.log()
        );
        assert_eq!(after_stream_conference(proxy.addr, n).await, Some(room(n)));
    }
    assert!(
        logged(
            &proxy,
            "OpenAI unreachable: new calls go to the legacy conference"
        )
        .await,
        "log:\n{}",
        proxy.log()
    );
    // The fourth call: no stream at all.
    let resp = post_webhook(proxy.addr, 64).await;
    assert_eq!(resp.status, 200);
    let body = std::str::from_utf8(&resp.body).unwrap();
    assert!(!body.contains("<Connect>"), "{body}");
    let twiml = Twiml::parse(body).expect("TwiML");
    assert_eq!(twiml.conference(), Some(room(64).as_str()));
    let metrics = common::http(proxy.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("callbridge_calls_total{outcome=\"fallback_openai_down\"} 1"),
        "{}",
        text.lines()
            .filter(|l| l.contains("calls_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_failed_warming_opens_the_breaker_before_any_call_tries() {
    // No call is placed: only the pool's own connects learn that OpenAI is unreachable.
    let proxy = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:1/v1/realtime"),
        ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ("OPENAI_POOL_MAX", "2"),
        ("TWILIO_AUTH_TOKEN", common::AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    assert!(
        common::eventually(Duration::from_secs(10), || proxy
            .log()
            .contains("OpenAI unreachable: new calls go to the legacy conference"))
        .await,
        "log:\n{}",
        proxy.log()
    );
    let resp = post_webhook(proxy.addr, 70).await;
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).expect("TwiML");
    assert!(twiml.stream().is_none(), "{:?}", twiml);
    assert_eq!(twiml.conference(), Some(room(70).as_str()));
}
