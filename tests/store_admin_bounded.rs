//! The admin API on a big store: listings and exports are bounded per answer (a cursor carries
//! the rest), and they run off the IO thread, so a call on the same worker keeps answering
//! while an operator exports.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use callbridge::store::{ItemKind, Op, RecordChange, Store, StoreOptions, MAX_SCAN};
use common::store::{admin, ADMIN_TOKEN};
use common::{http_raw, temp_data_dir, Proxy, RawStream};
use serde_json::Value;

/// Calls in the store: four listing budgets' worth, and far more JSONL than one export answer.
const CALLS: usize = 4 * MAX_SCAN;

/// Items per call (~300 bytes of text each).
const ITEMS: usize = 6;

/// Writes `CALLS` finished calls with their items into a new store directory.
fn big_store() -> std::path::PathBuf {
    let dir = temp_data_dir("admin-bounded");
    let store = Store::open(&dir, StoreOptions::default()).expect("open");
    let text = "word ".repeat(60);
    for i in 0..CALLS {
        let sid: Arc<str> = Arc::from(format!("CA{i:032}"));
        let at_ms = 1_700_000_000_000 + i as u64 * 1000;
        store.enqueue(Op::Record {
            call_sid: Arc::clone(&sid),
            at_ms,
            change: RecordChange::Webhook {
                from: "+15550001111".into(),
                to: "+15550002222".into(),
                agent_id: None,
                fallback: Some("realtime off".into()),
            },
        });
        for j in 0..ITEMS {
            store.enqueue(Op::Append {
                call_sid: Arc::clone(&sid),
                at_ms: at_ms + j as u64,
                kind: ItemKind::CallerTranscript {
                    item_id: format!("item_{j}"),
                    text: text.clone(),
                },
            });
        }
        if i % 2000 == 1999 {
            store.flush(Duration::from_secs(30)).expect("flush");
        }
    }
    store.flush(Duration::from_secs(30)).expect("flush");
    store.close();
    dir
}

/// An HTTP answer read whole (the shared client stops at 1 MiB, an export part is bigger).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn export(addr: std::net::SocketAddr, query: &str) -> Answer {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut req = Vec::new();
    callbridge_testkit::sim::webhook::write_request(
        &mut req,
        "GET",
        &addr.to_string(),
        &format!("/api/admin/calls.jsonl{query}"),
        &[("Authorization", auth.as_str())],
        b"",
    );
    let raw = http_raw(addr, &req, Duration::from_secs(20)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = raw[split + 4..].to_vec();
    let answer = Answer {
        status,
        headers,
        body,
    };
    let length: usize = answer.header("Content-Length").unwrap().parse().unwrap();
    assert_eq!(answer.body.len(), length, "the whole body");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_exports_and_listings_come_in_bounded_parts_and_never_stall_a_call() {
    let dir = big_store();
    let dir_s = dir.display().to_string();
    let mock = common::mock(|_| {}).await;
    // One IO thread, where the driver allows it, so admin work done on that thread would stall
    // the call deterministically.
    let proxy = Proxy::with_mock(
        &mock,
        &[
            ("DATA_DIR", dir_s.as_str()),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            ("WORKERS", "1"),
            // The calls are from 2023: the default RETENTION (30 days) would delete them while
            // the test exports them.
            ("RETENTION", "0"),
        ],
    );
    let addr = proxy.addr;

    // The export comes in parts of at most EXPORT_MAX_BYTES (+ one call), each ending with the
    // cursor of the rest; together they hold every call exactly once, newest first.
    let mut seen = Vec::new();
    let mut query = String::new();
    let mut parts = 0;
    let mut slowest = Duration::ZERO;
    loop {
        let t = Instant::now();
        let resp = export(addr, &query).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(resp.status, 200);
        assert!(
            resp.body.len() < callbridge::front::admin::EXPORT_MAX_BYTES + 64 * 1024,
            "an answer of {} bytes",
            resp.body.len()
        );
        parts += 1;
        for line in resp.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).expect("a JSON line");
            assert_eq!(v["realtimeConversation"].as_array().unwrap().len(), ITEMS);
            seen.push(v["callSid"].as_str().unwrap().to_owned());
        }
        match resp.header("X-Next-Cursor") {
            Some(c) => query = format!("?cursor={c}"),
            None => break,
        }
    }
    assert!(parts > 1, "the export should not fit one answer");
    let expected: Vec<String> = (0..CALLS).rev().map(|i| format!("CA{i:032}")).collect();
    assert_eq!(seen.len(), CALLS);
    assert!(seen == expected, "every call once, newest first");

    // A filter that matches nothing reads at most MAX_SCAN records per page: short pages with
    // a cursor, until the index is exhausted.
    let mut pages = 0;
    let mut cursor = String::new();
    loop {
        let (status, v) = admin(
            addr,
            "GET",
            &format!("/api/admin/calls?status=completed&limit=1000{cursor}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert!(v["calls"].as_array().unwrap().is_empty());
        pages += 1;
        match v["nextCursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        pages,
        CALLS / MAX_SCAN,
        "one page per {MAX_SCAN} records examined"
    );
    // A filter that matches: full pages.
    let (status, v) = admin(
        addr,
        "GET",
        "/api/admin/calls?status=fallback&limit=1000",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["calls"].as_array().unwrap().len(), 1000);

    // The CLI follows short pages: a rare filter still fills its page, or says nothing is left.
    let server = format!("http://{addr}");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::callbridge_bin())
            .args(args)
            .args(["--server", server.as_str()])
            .env_clear()
            .env("DATA_DIR", &dir)
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("NO_COLOR", "1")
            .output()
            .expect("run the CLI");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let none = cli(&["calls", "list", "--status", "completed", "--json"]);
    let v: Value = serde_json::from_str(&none).unwrap();
    assert!(v["calls"].as_array().unwrap().is_empty(), "{none}");
    assert!(v["nextCursor"].is_null(), "every page followed: {none}");
    let three = cli(&["calls", "list", "--status", "fallback", "--limit", "3"]);
    assert_eq!(
        three.lines().filter(|l| l.starts_with("CA")).count(),
        3,
        "{three}"
    );
    assert!(three.contains("next page: --cursor"), "{three}");

    // A call on the (only) IO thread answers pings while exports run back to back.
    let mut call = RawStream::open(addr, 1).await;
    call.start().await;
    let exporting = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(2);
        let mut n = 0;
        while Instant::now() < until {
            let resp = export(addr, "").await;
            assert_eq!(resp.status, 200);
            n += 1;
        }
        n
    });
    let mut pongs = Vec::new();
    while !exporting.is_finished() {
        let t = Instant::now();
        call.send_ping(b"live").await;
        assert_eq!(call.expect_pong(Duration::from_secs(10)).await, b"live");
        pongs.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exports = exporting.await.unwrap();
    let (pings, worst) = (pongs.len(), pongs.iter().max().copied().unwrap_or_default());
    eprintln!(
        "{exports} exports, {pings} pings, slowest pong {worst:?}, slowest export part {slowest:?}"
    );
    assert!(
        exports >= 1 && pings >= 10,
        "{exports} exports, {pings} pings"
    );
    // Done on the IO thread, every export answer holds a pong back for about as long as the
    // answer takes (measured: 350 of 365 ms), so each of the exports makes a slow pong; off it,
    // a pong waits a few ms. The time is measured in this process, which shares its runtime
    // with the mock, so a stall here (not in the proxy) makes a slow pong too: a slow pong or
    // two is tolerated, one per export is not.
    let slow = pongs.iter().filter(|p| **p >= slowest / 2).count();
    assert!(
        slow <= 2 && slow < exports,
        "{slow} of {pings} pongs took at least half an export answer's time ({slowest:?}) while \
         {exports} exports ran; slowest {worst:?}"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
