//! The admin API through the real binary: disabled without a token, 401 with a wrong one, every
//! route's bad input answered with the right 4xx and a message, and paginated call listings.

mod common;

use std::time::Duration;

use common::store::{admin, ADMIN_TOKEN};
use common::{http, webhook, Proxy, AUTH_TOKEN};
use serde_json::Value;

fn message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).expect("errors are JSON");
    v["error"].as_str().expect("an error message").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_token_the_api_is_disabled() {
    let proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("ALLOW_UNSIGNED_WEBHOOKS", "true"),
    ]);
    for path in [
        "/api/admin/agents",
        "/api/admin/calls",
        "/api/admin/numbers/default",
    ] {
        let r = http(
            proxy.addr,
            "GET",
            path,
            &[("Authorization", "Bearer x")],
            b"",
        )
        .await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(message(&r.body), "admin API disabled: set ADMIN_TOKEN");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_refuses_bad_input_with_the_right_status_and_a_message() {
    let proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("ALLOW_UNSIGNED_WEBHOOKS", "true"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let addr = proxy.addr;
    let routes = [
        ("GET", "/api/admin/agents"),
        ("GET", "/api/admin/agents/a"),
        ("PUT", "/api/admin/agents/a"),
        ("DELETE", "/api/admin/agents/a"),
        ("GET", "/api/admin/numbers"),
        ("PUT", "/api/admin/numbers/%2B15551234567"),
        ("DELETE", "/api/admin/numbers/%2B15551234567"),
        ("GET", "/api/admin/calls"),
        ("GET", "/api/admin/calls/CA1"),
        ("GET", "/api/admin/calls.jsonl"),
    ];
    // Missing and wrong tokens: 401 on every route, with WWW-Authenticate.
    for (method, path) in routes {
        let r = http(addr, method, path, &[], b"{}").await;
        assert_eq!(r.status, 401, "{method} {path}");
        assert!(message(&r.body).contains("missing bearer token"));
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        for auth in [
            "Bearer wrong",
            "Basic YWRtaW4=",
            "Bearer admin-test-token-012345678",
        ] {
            let r = http(addr, method, path, &[("Authorization", auth)], b"{}").await;
            assert_eq!(r.status, 401, "{method} {path} {auth}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }

    let good = r#"{"name":"A","voice":"marin","instructions":"hi"}"#;
    let cases: Vec<(&str, &str, &str, u16, &str)> = vec![
        ("PUT", "/api/admin/agents/a", "{not json", 400, "bad JSON"),
        ("PUT", "/api/admin/agents/a", "", 400, "empty body"),
        ("PUT", "/api/admin/agents/a", "[1,2]", 400, "JSON object"),
        (
            "PUT",
            "/api/admin/agents/a",
            r#"{"name":"A","voice":"robot","instructions":""}"#,
            400,
            "unknown voice \"robot\"",
        ),
        (
            "PUT",
            "/api/admin/agents/a",
            r#"{"name":"A","voice":"marin"}"#,
            400,
            "missing field `instructions`",
        ),
        (
            "PUT",
            "/api/admin/agents/a",
            r#"{"name":"A","voice":"marin","instructions":"","colour":"red"}"#,
            400,
            "unknown field `colour`",
        ),
        (
            "PUT",
            "/api/admin/agents/a",
            r#"{"id":"b","name":"A","voice":"marin","instructions":""}"#,
            400,
            "does not match",
        ),
        ("PUT", "/api/admin/agents/a%20b", good, 400, "bad id"),
        (
            "PUT",
            "/api/admin/agents/a",
            r#"{"name":"A","voice":"marin","instructions":"","speed":9}"#,
            400,
            "speed",
        ),
        (
            "PUT",
            "/api/admin/agents/a",
            r#"{"name":"A","voice":"marin","instructions":"","turnDetection":{"type":"semantic_vad"}}"#,
            400,
            "server_vad",
        ),
        (
            "PUT",
            "/api/admin/agents/a",
            r#"{"name":"A","voice":"marin","instructions":"","tools":[{"type":"function"}]}"#,
            400,
            "tool 0",
        ),
        (
            "GET",
            "/api/admin/agents/nobody",
            "",
            404,
            "unknown agent \"nobody\"",
        ),
        (
            "DELETE",
            "/api/admin/agents/nobody",
            "",
            404,
            "unknown agent",
        ),
        ("POST", "/api/admin/agents", "", 405, "method not allowed"),
        (
            "PUT",
            "/api/admin/numbers/%2B15551234567",
            "{",
            400,
            "bad JSON",
        ),
        (
            "PUT",
            "/api/admin/numbers/%2B15551234567",
            r#"{"agent":"a"}"#,
            400,
            "agentId",
        ),
        (
            "PUT",
            "/api/admin/numbers/5551234567",
            r#"{"agentId":"default"}"#,
            400,
            "E.164",
        ),
        (
            "PUT",
            "/api/admin/numbers/%2B15551234567",
            r#"{"agentId":"nobody"}"#,
            422,
            "unknown agent \"nobody\"",
        ),
        (
            "DELETE",
            "/api/admin/numbers/%2B19999999999",
            "",
            404,
            "unknown number",
        ),
        (
            "GET",
            "/api/admin/calls/CA404",
            "",
            404,
            "unknown call \"CA404\"",
        ),
        (
            "GET",
            "/api/admin/calls?cursor=nothex",
            "",
            400,
            "bad cursor",
        ),
        (
            "GET",
            "/api/admin/calls?since=yesterday",
            "",
            400,
            "unix time in milliseconds",
        ),
        (
            "GET",
            "/api/admin/calls?status=done",
            "",
            400,
            "use ringing",
        ),
        ("GET", "/api/admin/calls?limit=0", "", 400, "limit"),
        ("GET", "/api/admin/calls?limit=5000", "", 400, "limit"),
        (
            "GET",
            "/api/admin/calls?colour=red",
            "",
            400,
            "unknown query parameter",
        ),
        (
            "GET",
            "/api/admin/calls.jsonl?cursor=zz",
            "",
            400,
            "bad cursor",
        ),
        (
            "DELETE",
            "/api/admin/calls/CA1",
            "",
            405,
            "method not allowed",
        ),
        ("GET", "/api/admin/nothing", "", 404, "no such admin route"),
        (
            "GET",
            "/api/admin/agents/%ZZ",
            "",
            400,
            "bad percent-encoding",
        ),
        (
            "PUT",
            "/api/admin/agents/a",
            r#"{"id":7,"name":"A","voice":"marin","instructions":""}"#,
            400,
            "does not match",
        ),
        (
            "GET",
            "/api/admin/calls?until=soon",
            "",
            400,
            "unix time in milliseconds",
        ),
        ("GET", "/api/admin/calls?limit=ten", "", 400, "limit"),
        ("GET", "/api/admin/calls?since=%ZZ", "", 400, "bad query"),
        (
            "GET",
            "/api/admin/calls.jsonl?status=done",
            "",
            400,
            "use ringing",
        ),
        (
            "PATCH",
            "/api/admin/agents/a",
            "",
            405,
            "method not allowed",
        ),
        ("POST", "/api/admin/numbers", "", 405, "method not allowed"),
        (
            "GET",
            "/api/admin/numbers/%2B15551234567",
            "",
            405,
            "method not allowed",
        ),
        (
            "POST",
            "/api/admin/calls.jsonl",
            "",
            405,
            "method not allowed",
        ),
    ];
    for (method, path, body, want, msg) in cases {
        let (status, v) = admin(addr, method, path, body).await;
        assert_eq!(status, want, "{method} {path} {body}: {v}");
        let got = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no message: {v}"));
        assert!(
            got.contains(msg),
            "{method} {path} {body}: {got:?} should contain {msg:?}"
        );
    }

    // The good paths, for contrast, and an agent in use cannot be deleted.
    assert_eq!(admin(addr, "PUT", "/api/admin/agents/a", good).await.0, 201);
    assert_eq!(admin(addr, "PUT", "/api/admin/agents/a", good).await.0, 200);
    let (s, v) = admin(
        addr,
        "PUT",
        "/api/admin/numbers/%2B15551234567",
        r#"{"agentId":"a"}"#,
    )
    .await;
    assert_eq!((s, v["number"].as_str()), (201, Some("+15551234567")));
    let (s, v) = admin(addr, "DELETE", "/api/admin/agents/a", "").await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("+15551234567"));
    assert_eq!(
        admin(addr, "DELETE", "/api/admin/numbers/%2B15551234567", "")
            .await
            .0,
        204
    );
    assert_eq!(
        admin(addr, "DELETE", "/api/admin/agents/a", "").await.0,
        204
    );
    let (s, v) = admin(addr, "GET", "/api/admin/agents", "").await;
    assert_eq!((s, v["agents"].as_array().unwrap().len()), (200, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_listings_paginate_without_loss_or_repeat_and_export_as_jsonl() {
    let proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("STORE_FLUSH_MS", "20"),
    ]);
    let addr = proxy.addr;
    let n = 300u32;
    for i in 0..n {
        assert_eq!(webhook(addr, 1000 + i).await.status, 200);
    }
    // Records land within a flush interval or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = admin(addr, "GET", "/api/admin/calls?limit=1000", "").await;
        if v["calls"].as_array().unwrap().len() == n as usize {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "records missing: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/admin/calls?limit=7&status=fallback&cursor={c}"),
            None => "/api/admin/calls?limit=7&status=fallback".to_owned(),
        };
        let (s, v) = admin(addr, "GET", &path, "").await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        for c in v["calls"].as_array().unwrap() {
            seen.push(c["callSid"].as_str().unwrap().to_owned());
        }
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(pages >= (n as usize).div_ceil(7));
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), n as usize, "no call lost or repeated");
    assert_eq!(seen.len(), n as usize);
    // Newest first: the last webhook is the first listed (same-ms calls are ordered by sid).
    let (_, first) = admin(addr, "GET", "/api/admin/calls?limit=1", "").await;
    let t0 = first["calls"][0]["startedAtMs"].as_u64().unwrap();
    let (_, older) = admin(
        addr,
        "GET",
        &format!("/api/admin/calls?limit=1000&until={t0}"),
        "",
    )
    .await;
    assert!(older["calls"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["startedAtMs"].as_u64().unwrap() < t0));

    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = http(
        addr,
        "GET",
        "/api/admin/calls.jsonl",
        &[("Authorization", auth.as_str())],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = r
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), n as usize);
    assert!(lines
        .iter()
        .all(|l| l["realtimeConversation"].is_array() && l["status"] == "fallback"));
}
