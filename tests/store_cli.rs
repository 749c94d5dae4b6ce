//! `callbridge agents|numbers|calls` in both modes: on the store files when no server holds
//! them, through the running server's admin API when one does, with clear messages either way.

mod common;

use std::time::Duration;

use callbridge_testkit::sim::webhook::sid;
use common::store::{cli, fails, ok, ADMIN_TOKEN};
use common::{temp_data_dir, webhook, Proxy, AUTH_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_on_the_store_directly_and_through_a_running_server() {
    let dir = temp_data_dir("cli");
    let file = dir.with_extension("agent.json");
    std::fs::write(
        &file,
        r#"{"id":"sales-ja","name":"営業","voice":"coral","instructions":"丁寧に。","transcription":{"model":"gpt-4o-transcribe","language":"ja"}}"#,
    )
    .unwrap();
    let bad = dir.with_extension("bad.json");
    std::fs::write(
        &bad,
        r#"{"id":"x","name":"X","voice":"robot","instructions":""}"#,
    )
    .unwrap();

    // Direct mode: no server holds the store.
    let f = file.to_str().unwrap();
    assert!(ok(&cli(&dir, &["agents", "put", f], &[])).contains("stored agent sales-ja"));
    let err = fails(&cli(&dir, &["agents", "put", bad.to_str().unwrap()], &[]));
    assert!(err.contains("unknown voice \"robot\""), "{err}");
    assert!(ok(&cli(
        &dir,
        &["numbers", "put", "+81501234567", "sales-ja"],
        &[]
    ))
    .contains("+81501234567 -> sales-ja"));
    let err = fails(&cli(
        &dir,
        &["numbers", "put", "+81501234567", "nobody"],
        &[],
    ));
    assert!(err.contains("unknown agent \"nobody\""), "{err}");
    let list = ok(&cli(&dir, &["agents", "list"], &[]));
    assert!(
        list.contains("sales-ja") && list.contains("coral") && list.contains("営業"),
        "{list}"
    );
    let got = ok(&cli(&dir, &["agents", "get", "sales-ja"], &[]));
    assert!(got.contains("\"language\": \"ja\""), "{got}");
    let err = fails(&cli(&dir, &["calls", "show", "CA404"], &[]));
    assert!(err.contains("unknown call \"CA404\""), "{err}");

    // A server now holds the store.
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("DATA_DIR", dir_s.as_str()),
        // No stream URL of this instance is out when it stops: no window to keep bridging.
        ("DRAIN_ACCEPT_SECS", "0"),
    ]);
    let err = fails(&cli(&dir, &["agents", "list"], &[]));
    assert!(
        err.contains("locked by a running callbridge") && err.contains("--server"),
        "{err}"
    );
    // A second server on the same store refuses to start, saying why.
    let err = fails(&cli(
        &dir,
        &["serve"],
        &[
            ("LISTEN", "127.0.0.1:0"),
            ("USE_OPENAI_REALTIME", "false"),
            ("ALLOW_UNSIGNED_WEBHOOKS", "true"),
        ],
    ));
    assert!(
        err.contains("is locked by another process") && err.contains("DATA_DIR="),
        "{err}"
    );
    let server = format!("http://{}", proxy.addr);
    let err = fails(&cli(&dir, &["agents", "list", "--server", &server], &[]));
    assert!(err.contains("ADMIN_TOKEN"), "{err}");
    let err = fails(&cli(
        &dir,
        &[
            "agents",
            "list",
            "--server",
            &server,
            "--admin-token",
            "wrong",
        ],
        &[],
    ));
    assert!(
        err.contains("wrong bearer token") && err.contains("401"),
        "{err}"
    );
    let with_token = [("ADMIN_TOKEN", ADMIN_TOKEN)];
    let list = ok(&cli(
        &dir,
        &["agents", "list", "--server", &server],
        &with_token,
    ));
    assert!(list.contains("sales-ja"), "{list}");
    let numbers = ok(&cli(
        &dir,
        &["numbers", "list", "--server", &server],
        &with_token,
    ));
    assert!(
        numbers.contains("+81501234567") && numbers.contains("sales-ja"),
        "{numbers}"
    );

    // A call arrives; the CLI shows it through the server.
    assert_eq!(webhook(proxy.addr, 77).await.status, 200);
    let call_sid = sid("CA", 77);
    let mut listed = String::new();
    for _ in 0..100 {
        listed = ok(&cli(
            &dir,
            &["calls", "list", "--server", &server],
            &with_token,
        ));
        if listed.contains(&call_sid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        listed.contains(&call_sid) && listed.contains("fallback"),
        "{listed}"
    );
    let shown = ok(&cli(
        &dir,
        &["calls", "show", &call_sid, "--server", &server],
        &with_token,
    ));
    assert!(
        shown.contains("agent sales-ja") && shown.contains("USE_OPENAI_REALTIME=false"),
        "{shown}"
    );
    let json = ok(&cli(
        &dir,
        &["calls", "show", &call_sid, "--json", "--server", &server],
        &with_token,
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["agentId"], "sales-ja");

    // A clean shutdown flushes; the store is free again for the direct mode.
    assert!(
        proxy.terminate(Duration::from_secs(10)),
        "server did not stop: {}",
        proxy.log()
    );
    let shown = ok(&cli(&dir, &["calls", "show", &call_sid, "--json"], &[]));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["status"], "fallback");
    let err = fails(&cli(&dir, &["calls", "list", "--cursor", "zz"], &[]));
    assert!(err.contains("bad cursor"), "{err}");
    assert!(ok(&cli(&dir, &["numbers", "delete", "+81501234567"], &[])).contains("deleted"));
    assert!(ok(&cli(&dir, &["agents", "delete", "sales-ja"], &[])).contains("deleted"));
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&bad);
}

#[test]
fn the_cli_refuses_bad_arguments_with_a_clear_message() {
    let dir = temp_data_dir("cli-bad");
    let not_json = dir.with_extension("notjson.json");
    std::fs::write(&not_json, "{id: x").unwrap();
    let no_id = dir.with_extension("noid.json");
    std::fs::write(&no_id, r#"{"name":"X","voice":"marin","instructions":""}"#).unwrap();

    let err = fails(&cli(
        &dir,
        &["agents", "put", not_json.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains("is not JSON"), "{err}");
    let err = fails(&cli(&dir, &["agents", "put", no_id.to_str().unwrap()], &[]));
    assert!(err.contains("the agent needs an \"id\""), "{err}");
    let missing = dir.with_extension("missing.json");
    let err = fails(&cli(
        &dir,
        &["agents", "put", missing.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains("reading"), "{err}");
    let err = fails(&cli(
        &dir,
        &["agents", "list", "--server", "https://example.invalid"],
        &[("ADMIN_TOKEN", ADMIN_TOKEN)],
    ));
    assert!(err.contains("use http://HOST:PORT"), "{err}");
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = fails(&cli(
        &dir,
        &[
            "agents",
            "list",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[("ADMIN_TOKEN", ADMIN_TOKEN)],
    ));
    assert!(err.contains("is callbridge serve running there?"), "{err}");
    let err = fails(&cli(&dir, &["calls", "list", "--status", "done"], &[]));
    assert!(err.contains("use ringing") && err.contains("400"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&not_json);
    let _ = std::fs::remove_file(&no_id);
}
