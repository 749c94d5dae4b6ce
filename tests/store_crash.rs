//! kill -9 during 20 concurrent calls, then a restart on the same store: it opens, every record
//! and item parses, each call's items are a gap-free sequence, and every transcript that was
//! recorded more than the flush interval (plus one batch) before the kill is there.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use callbridge_testkit::demo::demo_script;
use callbridge_testkit::sim::caller::{run_call, CallerConfig};
use callbridge_testkit::sim::webhook::sid;
use common::store::{admin, ADMIN_TOKEN};
use common::{mock, temp_data_dir, Proxy, AUTH_TOKEN};

/// `STORE_FLUSH_MS` of the test.
const FLUSH_MS: u64 = 100;

/// Time one batch write and its flush may take on top of the interval (a loaded 2-core VM).
const BATCH_SLACK_MS: u64 = 100;

/// `2026-11-30T08:22:22.930559Z` as unix ms.
fn parse_rfc3339_ms(ts: &str) -> Option<u64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let ms: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000 + ms) as u64)
}

/// Transcripts the server logged (`caller: …` / `assistant: …`), each logged right after it was
/// enqueued: (unix ms, callSid, kind, text).
fn logged_transcripts(log: &str) -> Vec<(u64, String, &'static str, String)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(ts) = line.split_whitespace().next().and_then(parse_rfc3339_ms) else {
            continue;
        };
        for (marker, kind) in [
            (": caller: ", "caller_transcript"),
            (": assistant: ", "assistant_transcript"),
        ] {
            if let Some((_, rest)) = line.split_once(marker) {
                if let Some((text, sid)) = rest.rsplit_once(" call_sid=") {
                    out.push((ts, sid.trim().to_owned(), kind, text.to_owned()));
                }
            }
        }
    }
    out
}

#[test]
fn rfc3339_timestamps_parse() {
    assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
    assert_eq!(
        parse_rfc3339_ms("2026-11-30T07:54:41.000123Z"),
        Some(1_796_025_281_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_twenty_calls_loses_nothing_older_than_the_flush_interval() {
    let mock = mock(|m| m.session.response_audio_ms = 3_000).await;
    let dir = temp_data_dir("crash");
    let dir_s = dir.to_str().unwrap().to_owned();
    let flush = FLUSH_MS.to_string();
    let env = [
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("DATA_DIR", dir_s.as_str()),
        ("STORE_FLUSH_MS", flush.as_str()),
        // The transcripts' log lines time each enqueue (they are off by default).
        ("LOG_TRANSCRIPTS", "true"),
        ("LOG_LEVEL", "info,callbridge::runtime=debug"),
    ];
    let mut proxy = Proxy::with_mock(&mock, &env);
    let calls: Vec<u32> = (0..20).map(|i| 600 + i).collect();
    let mut tasks = Vec::new();
    for &n in &calls {
        let mut caller = CallerConfig::new(proxy.addr, n, demo_script());
        caller.auth_token = Some(AUTH_TOKEN.into());
        caller.public_host = Some(common::PUBLIC_HOST.into());
        tasks.push(tokio::spawn(run_call(caller)));
    }
    // Kill once every call has some conversation recorded, well before the scripts end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logged = logged_transcripts(&proxy.log());
        let with_items = calls
            .iter()
            .filter(|&&n| {
                logged
                    .iter()
                    .any(|(_, s, _, _)| *s == sid("CA", u128::from(n)))
            })
            .count();
        if with_items == calls.len() && logged.len() >= 2 * calls.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "calls did not get going:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = callbridge::store::unix_ms();
    proxy.kill();
    let log = proxy.log();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }

    // Restart on the same store.
    let proxy = Proxy::with_mock(&mock, &env);
    // (stderr is read by another thread: give the line a moment to arrive.)
    let marked = "marked calls left in progress by a previous process as failed";
    assert!(common::logged(&proxy, marked).await, "{}", proxy.log());
    // Every record parses (the listing reads them all) ...
    let (status, page) = admin(proxy.addr, "GET", "/api/admin/calls?limit=1000", "").await;
    assert_eq!(status, 200, "{page}");
    let listed: Vec<String> = page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["callSid"].as_str().unwrap().to_owned())
        .collect();
    let mut stored: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for &n in &calls {
        let call_sid = sid("CA", u128::from(n));
        assert!(
            listed.contains(&call_sid),
            "{call_sid} missing from {listed:?}"
        );
        // ... and every item parses, in a gap-free sequence.
        let (status, rec) = admin(
            proxy.addr,
            "GET",
            &format!("/api/admin/calls/{call_sid}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{rec}");
        assert!(
            ["failed", "completed"].contains(&rec["status"].as_str().unwrap()),
            "a call cut by the crash is not left in progress: {rec}"
        );
        let items = rec["realtimeConversation"].as_array().unwrap();
        let seqs: Vec<u64> = items.iter().map(|i| i["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (0..items.len() as u64).collect::<Vec<_>>(),
            "{call_sid}"
        );
        assert_eq!(rec["items"], items.len() as u64, "{call_sid}: item count");
        stored.insert(
            call_sid,
            items
                .iter()
                .filter(|i| i["text"].is_string())
                .map(|i| {
                    (
                        i["type"].as_str().unwrap().to_owned(),
                        i["text"].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
        );
    }
    // Everything recorded before the crash-loss bound is there.
    let bound = killed_at - FLUSH_MS - BATCH_SLACK_MS;
    let logged = logged_transcripts(&log);
    let old: Vec<_> = logged.iter().filter(|(t, ..)| *t < bound).collect();
    assert!(
        old.len() >= calls.len(),
        "too few items before the bound to test: {}",
        old.len()
    );
    for (t, call_sid, kind, text) in old {
        let have = stored.get(call_sid).map(Vec::as_slice).unwrap_or(&[]);
        assert!(
            have.iter().any(|(k, x)| k == kind && x == text),
            "{call_sid}: {kind} {text:?} logged {} ms before the kill is lost; stored: {have:?}",
            killed_at - t
        );
    }
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
