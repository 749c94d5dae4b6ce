//! The hard call limit, against the real binary: with MAX_CALLS=10 and 30 calls arriving at
//! once, exactly 10 are bridged and the 20 others reach the conference, through the webhook
//! (the reservation of a stream just minted counts) or the after-stream (the upgrade is the
//! binding check); none gets silence. And MAX_CONNECTIONS closes what is past it.

mod common;

use std::time::Duration;

use callbridge_testkit::sim::caller::{run_call, CallOutcome, CallReport};
use callbridge_testkit::sim::script::Script;
use callbridge_testkit::sim::twiml::Twiml;
use common::{closed_sessions, eventually, http, mock, signed_caller, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Places calls `first..first + 30` at once (each would talk for 3 s) and sorts their reports.
async fn thirty_calls_at_once(proxy: &Proxy, first: u32) -> Vec<CallReport> {
    let calls = (first..first + 30).map(|n| {
        let caller = signed_caller(proxy, n, Script::hello_then_hang_up(3_000));
        tokio::spawn(run_call(caller))
    });
    let mut reports = Vec::new();
    for c in calls.collect::<Vec<_>>() {
        reports.push(c.await.expect("task").expect("the simulated call ran"));
    }
    reports
}

/// The conference a report ended in: at the webhook, or through after-stream.
fn conference_of(r: &CallReport) -> Option<String> {
    if let Some(after) = &r.after_stream {
        return Twiml::parse(&after.twiml)
            .ok()
            .and_then(|t| t.conference().map(str::to_owned));
    }
    r.conference.clone()
}

/// Exactly 10 bridged calls ran to their end; every other caller reached its conference, and
/// `via_after_stream` of them through after-stream.
fn assert_ten_bridged_and_no_silence(reports: &[CallReport], log: &str) -> usize {
    let bridged = reports
        .iter()
        .filter(|r| r.outcome == CallOutcome::Completed)
        .count();
    assert_eq!(bridged, 10, "bridged calls; log:\n{log}");
    let mut via_after_stream = 0;
    for r in reports
        .iter()
        .filter(|r| r.outcome != CallOutcome::Completed)
    {
        let room = format!("support-{}", r.call_sid);
        assert_eq!(
            conference_of(r).as_deref(),
            Some(room.as_str()),
            "{} got {:?} (silence or a hang-up)",
            r.call_sid,
            r.outcome
        );
        if r.after_stream.is_some() {
            assert_eq!(r.outcome, CallOutcome::ProxyClosed { code: Some(1000) });
            via_after_stream += 1;
        }
    }
    via_after_stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_calls_10_thirty_calls_at_once_bridge_ten_and_the_rest_reach_the_conference() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[("MAX_CALLS", "10")]);
    let reports = thirty_calls_at_once(&proxy, 100).await;
    assert_ten_bridged_and_no_silence(&reports, &proxy.log());
    assert_eq!(
        closed_sessions(&mock, 10, Duration::from_secs(5))
            .await
            .len(),
        10
    );
    assert_eq!(
        mock.sessions().len(),
        10,
        "an OpenAI session per bridged call only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_is_the_binding_check_when_reservations_have_lapsed() {
    // Reservations that lapse at once stand for streams minted by other instances' webhooks:
    // all 30 streams come, and the upgrade must hold the limit by itself.
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(
        &mock,
        &[("MAX_CALLS", "10"), ("STREAM_RESERVE_SECS", "0.001")],
    );
    let reports = thirty_calls_at_once(&proxy, 200).await;
    let via_after_stream = assert_ten_bridged_and_no_silence(&reports, &proxy.log());
    assert!(via_after_stream > 0, "no upgrade was closed for the limit");
    assert_eq!(
        closed_sessions(&mock, 10, Duration::from_secs(5))
            .await
            .len(),
        10
    );
    assert_eq!(mock.sessions().len(), 10);
    let metrics = http(proxy.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = format!("callbridge_refused_total{{reason=\"max_calls\"}} {via_after_stream}");
    assert!(text.contains(&line), "{line} in\n{text}");
}

/// A keep-alive `GET /healthz` on `stream`, answered: the server holds this connection.
async fn healthz_on(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    while !got.ends_with(b"}\n") {
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// The value of the sample `line_prefix` in a scrape.
fn sample(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_max_connections_is_closed_at_once_and_counted() {
    let proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("ALLOW_UNSIGNED_WEBHOOKS", "true"),
        ("MAX_CALLS", "1"),
        ("MAX_CONNECTIONS", "3"),
    ]);
    // Three keep-alive connections, each answered once: every slot is held.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        healthz_on(&mut s).await;
        held.push(s);
    }
    let mut fourth = TcpStream::connect(proxy.addr)
        .await
        .expect("the kernel accepts");
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("closed at once, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer: {:?}", &buf[..n]);
    assert!(common::logged(&proxy, "connection refused: MAX_CONNECTIONS open").await);
    // A slot frees when a held connection closes; the scrape then gets through.
    held.pop();
    let mut scrape = String::new();
    let got = eventually(Duration::from_secs(5), || {
        let raw = std::net::TcpStream::connect(proxy.addr).and_then(|mut s| {
            use std::io::{Read, Write};
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        scrape = raw.unwrap_or_default();
        scrape.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(got, "no scrape got through");
    let refused = sample(
        &scrape,
        "callbridge_refused_total{reason=\"max_connections\"} ",
    );
    assert!(refused >= Some(1.0), "{refused:?}");
    assert_eq!(sample(&scrape, "callbridge_http_connections "), Some(3.0));
}
