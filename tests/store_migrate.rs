//! A store written by callbridge before its engine changed (sled, commit 4042b55) moves to the
//! current engine with `callbridge store migrate --from-sled DIR`, and reads back the same.
//!
//! The fixture (`tests/fixtures/sled-4042b55/`) was made with that commit's release binary: an
//! agent and a route put through its admin API, three calls of the load test's script (Japanese
//! and English transcripts, barge-ins), then a fourth stream of call 1 killed with kill -9 halfway,
//! so call 1 is left `in-progress` with two streams' worth of conversation. The `*.json` files
//! are what that binary's CLI printed for the store (`calls show … --json`, `calls list --json`,
//! `agents list --json`, `numbers list --json`): the current CLI must print the same bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::store::{admin, cli, fails, ok, ADMIN_TOKEN};
use common::{temp_data_dir, Proxy};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sled-4042b55")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_of_the_previous_release_migrates_and_reads_back_byte_for_byte() {
    let dir = temp_data_dir("migrate");
    std::fs::create_dir_all(&dir).unwrap();
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(fixture().join("store.tar.gz"))
        .arg("-C")
        .arg(&dir)
        .status()
        .expect("tar");
    assert!(untar.success());

    // The server refuses the old store, and says what to run; so does the CLI.
    let serve = [
        "serve",
        "--allow-unsigned-webhooks",
        "--openai-url",
        "ws://127.0.0.1:9/v1/realtime",
    ];
    let err = fails(&cli(&dir, &serve, &[]));
    assert!(
        err.contains("old sled format") && err.contains("callbridge store migrate --from-sled"),
        "{err}"
    );
    assert!(fails(&cli(&dir, &["calls", "list"], &[])).contains("store migrate --from-sled"));

    // Into the same directory: the new file sits beside sled's.
    let d = dir.to_str().unwrap();
    let migrate = ["store", "migrate", "--from-sled", d, "--data-dir", d];
    let said = ok(&cli(&dir, &migrate, &[]));
    assert!(
        said.contains("copied 1 agents, 1 numbers, 3 calls (1 in progress), 20 items"),
        "{said}"
    );
    // A second run finds the destination full.
    assert!(fails(&cli(&dir, &migrate, &[])).contains("migrate into an empty directory"));

    // The current CLI prints what the old one printed, byte for byte (before recovery: call 1
    // is still in progress, as the kill left it).
    for (args, file) in [
        (vec!["agents", "list", "--json"], "agents.json"),
        (vec!["numbers", "list", "--json"], "numbers.json"),
        (vec!["calls", "list", "--json"], "calls.json"),
        (
            vec![
                "calls",
                "show",
                "CA00000000000000000000000000000001",
                "--json",
            ],
            "call-CA1.json",
        ),
        (
            vec![
                "calls",
                "show",
                "CA00000000000000000000000000000002",
                "--json",
            ],
            "call-CA2.json",
        ),
        (
            vec![
                "calls",
                "show",
                "CA00000000000000000000000000000003",
                "--json",
            ],
            "call-CA3.json",
        ),
    ] {
        let want = std::fs::read_to_string(fixture().join(file)).unwrap();
        let got = ok(&cli(&dir, &args, &[]));
        assert_eq!(got, want, "{file}");
    }

    // The server starts on it, marks the killed call failed, and serves the same conversation.
    let dir_s = dir.display().to_string();
    let proxy = Proxy::spawn(&[
        ("DATA_DIR", dir_s.as_str()),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
        ("ALLOW_UNSIGNED_WEBHOOKS", "true"),
        // The fixture's calls are from 2026-12: keep them whatever the date of the run.
        ("RETENTION", "0"),
    ]);
    assert!(
        common::logged(
            &proxy,
            "marked calls left in progress by a previous process as failed"
        )
        .await,
        "{}",
        proxy.log()
    );
    let (status, rec) = admin(
        proxy.addr,
        "GET",
        "/api/admin/calls/CA00000000000000000000000000000001",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(rec["status"], "failed");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("call-CA1.json")).unwrap())
            .unwrap();
    assert_eq!(rec["realtimeConversation"], want["realtimeConversation"]);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
