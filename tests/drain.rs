//! Deploys that cut no call (README "Deploying"): SIGTERM turns /readyz to 503 at once and keeps
//! /healthz 200; calls in flight run to their own end; an upgrade inside DRAIN_ACCEPT_SECS is
//! bridged and one after it reaches the conference through after-stream; calls that outlive
//! DRAIN_TIMEOUT_SECS are closed with a close frame, their after-stream (answered by the draining
//! instance) is the conference and their record says `drained`; a second signal exits at once;
//! every record is final and the process exits 0. `RUNTIME=uring` runs the same on io_uring.

mod common;

use std::time::{Duration, Instant};

use callbridge_testkit::sim::caller::{run_call, CallOutcome, CallReport};
use callbridge_testkit::sim::script::Script;
use callbridge_testkit::sim::twiml::Twiml;
use callbridge_testkit::sim::webhook;
use common::{eventually, http, mock, signed_caller, temp_data_dir, Proxy, RawStream, AUTH_TOKEN};
use serde_json::Value;

/// Every call record in `dir`, read with the CLI once the server has exited.
fn records(dir: &std::path::Path) -> Vec<Value> {
    let out = std::process::Command::new(common::callbridge_bin())
        .args(["calls", "list", "--json", "--limit", "1000"])
        .env_clear()
        .env("DATA_DIR", dir)
        .output()
        .expect("run callbridge calls list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["calls"].as_array().expect("calls").clone()
}

/// Whether the mock has given `n` sessions their `session.updated`.
fn sessions_ready(mock: &callbridge_testkit::mock::server::MockServer, n: usize) -> bool {
    mock.sessions()
        .iter()
        .filter(|s| {
            s.sent_events
                .iter()
                .any(|e| e.contains("\"session.updated\""))
        })
        .count()
        >= n
}

/// The status of `GET path`.
async fn status_of(proxy: &Proxy, path: &str) -> (u16, String) {
    let r = http(proxy.addr, "GET", path, &[], b"").await;
    (r.status, String::from_utf8_lossy(&r.body).trim().to_owned())
}

/// The stream of call `n`'s TwiML, answered now (before a drain, or during it).
async fn stream_of(proxy: &Proxy, n: u32) -> callbridge_testkit::sim::twiml::StreamVerb {
    let resp = common::webhook(proxy.addr, n).await;
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).expect("TwiML");
    twiml.stream().expect("a stream").clone()
}

/// Opens `stream` (signed) for call `n`.
async fn upgrade(
    proxy: &Proxy,
    stream: &callbridge_testkit::sim::twiml::StreamVerb,
    n: u32,
) -> RawStream {
    let sig = webhook::signature(AUTH_TOKEN, &stream.url, &[]);
    let mut raw = RawStream::connect(proxy.addr, &stream.path, &[("x-twilio-signature", &sig)])
        .await
        .expect("upgrade accepted");
    raw.params = stream.parameters.clone();
    raw.call_sid = webhook::sid("CA", u128::from(n));
    raw.stream_sid = webhook::sid("MZ", u128::from(n));
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_twenty_calls_cuts_none_and_exits_zero_with_every_record_final() {
    let mock = mock(|_| {}).await;
    let dir = temp_data_dir("drain");
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut proxy = Proxy::with_mock(
        &mock,
        &[
            ("DATA_DIR", dir_s.as_str()),
            ("DRAIN_ACCEPT_SECS", "2"),
            ("DRAIN_HTTP_GRACE_SECS", "2"),
        ],
    );
    assert_eq!(status_of(&proxy, "/readyz").await, (200, "ready".into()));
    let calls: Vec<_> = (1..=20)
        .map(|n| {
            tokio::spawn(run_call(signed_caller(
                &proxy,
                n,
                Script::hello_then_hang_up(7_000),
            )))
        })
        .collect();
    assert!(eventually(Duration::from_secs(20), || sessions_ready(&mock, 20)).await);
    // Two more calls whose TwiML is already out when the signal comes.
    let (in_window, after_window) = (stream_of(&proxy, 21).await, stream_of(&proxy, 22).await);

    proxy.signal("TERM");
    let sent = Instant::now();
    let mut readyz = status_of(&proxy, "/readyz").await;
    while readyz.0 != 503 && sent.elapsed() < Duration::from_secs(2) {
        readyz = status_of(&proxy, "/readyz").await;
    }
    let took = sent.elapsed();
    assert_eq!(readyz, (503, "draining".into()));
    assert!(
        took <= Duration::from_millis(100),
        "/readyz turned 503 after {took:?}"
    );
    assert_eq!(
        status_of(&proxy, "/healthz").await.0,
        200,
        "liveness is unchanged"
    );

    // Inside DRAIN_ACCEPT_SECS: bridged like any call.
    let mut raw = upgrade(&proxy, &in_window, 21).await;
    raw.start().await;
    assert!(eventually(Duration::from_secs(10), || sessions_ready(&mock, 21)).await);
    raw.media("/////////////////////w==").await;
    raw.stop().await;
    assert_eq!(raw.until_closed(Duration::from_secs(5)).await, Some(1000));

    // After the window: the upgrade is accepted and closed at once, and the draining instance
    // sends the caller to the conference. A wait the protocol needs: DRAIN_ACCEPT_SECS (2 s from
    // the signal) must pass, and nothing shows its end (the proxy compares the clock with it at
    // each upgrade; call 22's stream id is single-use, so the test cannot try until refused).
    // It costs the test no time: the 20 calls in flight run 7 s.
    tokio::time::sleep_until((sent + Duration::from_millis(2_100)).into()).await;
    let mut raw = upgrade(&proxy, &after_window, 22).await;
    assert_eq!(raw.until_closed(Duration::from_secs(5)).await, Some(1000));
    assert_eq!(
        common::after_stream_conference(proxy.addr, 22).await,
        Some(common::room(22))
    );

    // Every call in flight ran to its own end: the caller hung up, nothing was cut.
    for c in calls {
        let report: CallReport = c.await.unwrap().expect("the call ran");
        assert_eq!(
            report.outcome,
            CallOutcome::Completed,
            "{}",
            report.call_sid
        );
    }
    assert_eq!(
        proxy.wait_for_exit(Duration::from_secs(20)),
        Some(0),
        "log:\n{}",
        proxy.log()
    );
    let records = records(&dir);
    for r in &records {
        let status = r["status"].as_str().unwrap();
        assert!(
            ["completed", "fallback", "failed"].contains(&status),
            "not final: {r}"
        );
    }
    let status_of_call = |n: u32| {
        let sid = webhook::sid("CA", u128::from(n));
        records
            .iter()
            .find(|r| r["callSid"] == sid.as_str())
            .map(|r| r["status"].as_str().unwrap().to_owned())
    };
    for n in 1..=21 {
        assert_eq!(status_of_call(n).as_deref(), Some("completed"), "call {n}");
    }
    assert_eq!(status_of_call(22).as_deref(), Some("fallback"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_outlast_the_drain_timeout_are_closed_and_reach_the_conference_as_drained() {
    let mock = mock(|_| {}).await;
    let dir = temp_data_dir("drain-timeout");
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut proxy = Proxy::with_mock(
        &mock,
        &[
            ("DATA_DIR", dir_s.as_str()),
            ("DRAIN_TIMEOUT_SECS", "2"),
            ("DRAIN_ACCEPT_SECS", "1"),
        ],
    );
    let calls: Vec<_> = (31..=33)
        .map(|n| {
            tokio::spawn(run_call(signed_caller(
                &proxy,
                n,
                Script::hello_then_hang_up(60_000),
            )))
        })
        .collect();
    assert!(eventually(Duration::from_secs(20), || sessions_ready(&mock, 3)).await);
    proxy.signal("TERM");
    let sent = Instant::now();
    for c in calls {
        let report = c.await.unwrap().expect("the call ran");
        // Closed normally by the proxy (a close frame), and Twilio's <Redirect> reached the
        // draining instance, which answered the conference.
        assert_eq!(
            report.outcome,
            CallOutcome::ProxyClosed { code: Some(1000) }
        );
        let after = report.after_stream.expect("after-stream fetched");
        assert_eq!(after.status, 200);
        let room = Twiml::parse(&after.twiml)
            .unwrap()
            .conference()
            .map(str::to_owned);
        assert_eq!(room, Some(format!("support-{}", report.call_sid)));
    }
    let ended_after = sent.elapsed();
    assert!(
        ended_after >= Duration::from_secs(2) && ended_after < Duration::from_secs(10),
        "{ended_after:?}"
    );
    assert_eq!(
        proxy.wait_for_exit(Duration::from_secs(20)),
        Some(0),
        "log:\n{}",
        proxy.log()
    );
    let records = records(&dir);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r["status"], "fallback", "{r}");
        assert!(
            r["endReason"]
                .as_str()
                .is_some_and(|e| e.starts_with("drained")),
            "{r}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once_with_the_store_flushed() {
    let mock = mock(|_| {}).await;
    let dir = temp_data_dir("drain-twice");
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut proxy = Proxy::with_mock(&mock, &[("DATA_DIR", dir_s.as_str())]);
    let calls: Vec<_> = (41..=43)
        .map(|n| {
            tokio::spawn(run_call(signed_caller(
                &proxy,
                n,
                Script::hello_then_hang_up(60_000),
            )))
        })
        .collect();
    assert!(eventually(Duration::from_secs(20), || sessions_ready(&mock, 3)).await);
    proxy.signal("TERM");
    assert!(common::logged(&proxy, "signal: draining").await);
    // The drain would let these calls run for 15 minutes.
    assert_eq!(status_of(&proxy, "/readyz").await.0, 503);
    proxy.signal("INT");
    let sent = Instant::now();
    assert_eq!(
        proxy.wait_for_exit(Duration::from_secs(10)),
        Some(0),
        "log:\n{}",
        proxy.log()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );
    for c in calls {
        let report = c.await.unwrap().expect("the call ran");
        assert_ne!(report.outcome, CallOutcome::Completed);
    }
    let records = records(&dir);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r["status"], "fallback", "flushed and final: {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_keeps_its_accept_window_before_it_exits() {
    // No call is up when the signal comes, but a webhook's TwiML went out just before: its
    // stream must still be bridged during DRAIN_ACCEPT_SECS, not refused by a closed port.
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[("DRAIN_ACCEPT_SECS", "2")]);
    let stream = stream_of(&proxy, 51).await;
    proxy.signal("TERM");
    let sent = Instant::now();
    assert!(common::logged(&proxy, "signal: draining").await);
    let mut raw = upgrade(&proxy, &stream, 51).await;
    raw.start().await;
    assert!(
        eventually(Duration::from_secs(10), || sessions_ready(&mock, 1)).await,
        "the upgrade inside the window was bridged; log:\n{}",
        proxy.log()
    );
    raw.stop().await;
    assert_eq!(raw.until_closed(Duration::from_secs(5)).await, Some(1000));
    assert_eq!(proxy.wait_for_exit(Duration::from_secs(10)), Some(0));
    let lived = sent.elapsed();
    assert!(
        lived >= Duration::from_secs(2),
        "exited {lived:?} after the signal, inside its accept window"
    );
}
