//! A stream URL opens one stream per instance: three upgrades of one URL at once, one is
//! bridged, the two others are refused with 409 before 101 (and counted), and the mock OpenAI
//! sees exactly one session.

mod common;

use std::time::Duration;

use callbridge_testkit::sim::twiml::Twiml;
use callbridge_testkit::sim::webhook;
use common::{closed_sessions, http, mock, Proxy, RawStream, AUTH_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_upgrades_of_one_url_bridge_one_call() {
    let n = 5;
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let resp = common::webhook(proxy.addr, n).await;
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).expect("TwiML");
    let stream = twiml.stream().expect("a stream").clone();
    let sig = webhook::signature(AUTH_TOKEN, &stream.url, &[]);
    let headers = [("x-twilio-signature", sig.as_str())];
    let upgrade = || RawStream::connect(proxy.addr, &stream.path, &headers);
    let (a, b, c) = tokio::join!(upgrade(), upgrade(), upgrade());
    let mut accepted: Vec<RawStream> = Vec::new();
    let mut refused = Vec::new();
    for r in [a, b, c] {
        match r {
            Ok(raw) => accepted.push(raw),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(refused, [409, 409], "log:\n{}", proxy.log());
    let mut raw = accepted.pop().expect("one upgrade bridged");
    raw.params = stream.parameters.clone();
    raw.call_sid = webhook::sid("CA", u128::from(n));
    raw.stream_sid = webhook::sid("MZ", u128::from(n));
    raw.start().await;
    // The bridged call gets its session before it hangs up.
    let ready = common::eventually(Duration::from_secs(5), || {
        mock.sessions().iter().any(|s| {
            s.sent_events
                .iter()
                .any(|e| e.contains("\"session.updated\""))
        })
    })
    .await;
    assert!(ready, "log:\n{}", proxy.log());
    raw.media("/////////////////////w==").await;
    raw.stop().await;
    assert_eq!(raw.until_closed(Duration::from_secs(5)).await, Some(1000));
    let closed = closed_sessions(&mock, 1, Duration::from_secs(5)).await;
    assert_eq!(closed.len(), 1);
    assert_eq!(mock.sessions().len(), 1, "one OpenAI session for one URL");
    // The id stays used: a fourth upgrade, after the call, is refused too.
    assert_eq!(upgrade().await.err(), Some(409));
    let metrics = http(proxy.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("callbridge_refused_total{reason=\"stream_reused\"} 3"),
        "{text}"
    );
    assert!(common::logged(&proxy, "its stream id already opened a stream").await);
}
