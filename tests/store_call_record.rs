//! A call through the real binary leaves a record: the agent picked by the called number drives
//! `session.update`, and the conversation holds both sides' transcripts byte-exact (Japanese
//! included), the barge-in with what the caller heard, and the usage totals of `response.done`.

mod common;

use std::time::Duration;

use callbridge_testkit::demo::demo_script;
use callbridge_testkit::sim::caller::CallerConfig;
use callbridge_testkit::sim::script::Script;
use callbridge_testkit::sim::webhook::sid;
use common::store::{admin, wait_for_call, ADMIN_TOKEN};
use common::{closed_sessions, mock, run_signed_call, Proxy, AUTH_TOKEN};
use serde_json::{json, Value};

fn sent_events(s: &callbridge_testkit::mock::server::SessionRecord, ty: &str) -> Vec<Value> {
    s.sent_events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| v["type"] == ty)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_leaves_its_record_with_both_transcripts_the_interruption_and_usage() {
    let mock = mock(|m| {
        m.session.response_audio_ms = 3_500;
        m.session.user_transcripts = vec![
            "注文番号は12345です。".into(),
            "ちょっと待ってください、\"引用\" \\ と改行\nも。".into(),
        ];
        m.session.assistant_transcripts = vec![
            "ご注文番号12345を確認いたします。少々お待ちください。".into(),
            "Certainly — I'll wait. 🙂".into(),
        ];
    })
    .await;
    let proxy = Proxy::with_mock(&mock, &[("ADMIN_TOKEN", ADMIN_TOKEN)]);
    let addr = proxy.addr;

    // An agent for the called number drives the session.
    let agent = json!({"name": "受付 (JA)", "voice": "cedar", "instructions": "丁寧な日本語で短く答えてください。",
        "transcription": {"model": "gpt-4o-transcribe", "language": "ja"},
        "turnDetection": {"type": "server_vad", "threshold": 0.5, "prefixPaddingMs": 300, "silenceDurationMs": 400}});
    let (status, body) = admin(
        addr,
        "PUT",
        "/api/admin/agents/reception-ja",
        &agent.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin(
        addr,
        "PUT",
        "/api/admin/numbers/%2B81501234567",
        r#"{"agentId": "reception-ja"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");

    run_signed_call(&proxy, CallerConfig::new(addr, 31, demo_script())).await;
    let sessions = closed_sessions(&mock, 1, Duration::from_secs(3)).await;
    let s = &sessions[0];
    assert!(s.stats.errors.is_empty(), "{:?}", s.stats.errors);
    assert!(s.schema_violations.is_empty(), "{:?}", s.schema_violations);
    let update = &s.stats.session_updates[0];
    assert_eq!(update["audio"]["output"]["voice"], "cedar");
    assert_eq!(update["instructions"], "丁寧な日本語で短く答えてください。");
    assert_eq!(update["audio"]["input"]["transcription"]["language"], "ja");
    assert_eq!(
        update["audio"]["input"]["turn_detection"]["silence_duration_ms"],
        400
    );

    let call_sid = sid("CA", 31);
    let rec = wait_for_call(addr, &call_sid, Duration::from_secs(5), |v| {
        v["status"] == "completed"
    })
    .await;
    assert_eq!(rec["agentId"], "reception-ja");
    assert_eq!(rec["from"], "+819012345678");
    assert_eq!(rec["to"], "+81501234567");
    assert_eq!(rec["streamSid"], sid("MZ", 31));
    assert!(rec["answeredAtMs"].as_u64().unwrap() >= rec["startedAtMs"].as_u64().unwrap());
    assert!(rec["endedAtMs"].as_u64().unwrap() >= rec["answeredAtMs"].as_u64().unwrap());
    assert_eq!(rec["itemsLost"], 0);
    let created = sent_events(s, "session.created");
    assert_eq!(rec["realtimeSessionId"], created[0]["session"]["id"]);

    // Usage: the sums of every response.done the mock sent.
    let done = sent_events(s, "response.done");
    let sum = |k: &str| -> u64 {
        done.iter()
            .map(|d| d["response"]["usage"][k].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(sum("total_tokens") > 0);
    assert_eq!(rec["usage"]["totalTokens"], sum("total_tokens"));
    assert_eq!(rec["usage"]["inputTokens"], sum("input_tokens"));
    assert_eq!(rec["usage"]["outputTokens"], sum("output_tokens"));
    assert_eq!(rec["usage"]["responses"], done.len() as u64);

    // Transcripts, byte-exact and in order.
    let items = rec["realtimeConversation"].as_array().unwrap();
    let of = |ty: &str| -> Vec<String> {
        items
            .iter()
            .filter(|i| i["type"] == ty)
            .map(|i| i["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let caller_said: Vec<String> =
        sent_events(s, "conversation.item.input_audio_transcription.completed")
            .iter()
            .map(|e| e["transcript"].as_str().unwrap().to_owned())
            .collect();
    let assistant_said: Vec<String> = sent_events(s, "response.output_audio_transcript.done")
        .iter()
        .map(|e| e["transcript"].as_str().unwrap().to_owned())
        .collect();
    assert!(!caller_said.is_empty() && !assistant_said.is_empty());
    assert_eq!(of("caller_transcript"), caller_said);
    assert_eq!(of("assistant_transcript"), assistant_said);
    assert!(of("caller_transcript").contains(&"注文番号は12345です。".to_owned()));
    let seqs: Vec<u64> = items.iter().map(|i| i["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..items.len() as u64).collect::<Vec<_>>());
    assert_eq!(rec["items"], items.len() as u64);

    // The barge-in: one interruption with what the caller heard, the same as the truncate sent.
    let truncates = &s.stats.truncates;
    assert_eq!(truncates.len(), 1);
    assert_eq!(rec["interruptions"], 1);
    let interruption = items.iter().find(|i| i["type"] == "interruption").unwrap();
    assert_eq!(interruption["itemId"], truncates[0].item_id.as_str());
    assert_eq!(interruption["heardMs"], truncates[0].audio_end_ms);
    let interrupted: Vec<&Value> = items
        .iter()
        .filter(|i| i["type"] == "assistant_transcript" && i["interrupted"] == true)
        .collect();
    assert_eq!(interrupted.len(), 1, "{items:?}");
    assert_eq!(interrupted[0]["itemId"], truncates[0].item_id.as_str());
    assert_eq!(interrupted[0]["heardMs"], truncates[0].audio_end_ms);

    // The list shows it, filtered by agent and status.
    let (status, page) = admin(
        addr,
        "GET",
        "/api/admin/calls?agent=reception-ja&status=completed",
        "",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["calls"][0]["callSid"], call_sid.as_str());
    let (_, page) = admin(addr, "GET", "/api/admin/calls?agent=nobody", "").await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_greeting_speaks_first_and_an_unknown_agent_id_gets_the_default() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[("ADMIN_TOKEN", ADMIN_TOKEN)]);
    let addr = proxy.addr;
    let agent = json!({"name": "Greeter", "voice": "sage", "instructions": "Be brief.",
        "greeting": "お電話ありがとうございます。"});
    let (status, body) = admin(addr, "PUT", "/api/admin/agents/greeter", &agent.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = admin(
        addr,
        "PUT",
        "/api/admin/numbers/default",
        r#"{"agentId":"greeter"}"#,
    )
    .await;
    assert_eq!(status, 201);

    let mut caller = CallerConfig::new(addr, 41, Script::hello_then_hang_up(3_000));
    caller.to = "+81999999999".into(); // no route: the default agent
    run_signed_call(&proxy, caller).await;
    let sessions = closed_sessions(&mock, 1, Duration::from_secs(3)).await;
    let s = &sessions[0];
    assert!(s.stats.errors.is_empty(), "{:?}", s.stats.errors);
    assert_eq!(
        s.stats.session_updates[0]["audio"]["output"]["voice"],
        "sage"
    );
    // The AI speaks first: response.create right after session.update, before any caller turn.
    let types = &s.stats.client_event_types;
    let update = types.iter().position(|t| t == "session.update").unwrap();
    let create = types
        .iter()
        .position(|t| t == "response.create")
        .expect("a response.create for the greeting");
    assert!(create > update);
    assert!(s.stats.responses_created >= 1);
    let rec = wait_for_call(addr, &sid("CA", 41), Duration::from_secs(5), |v| {
        v["status"] == "completed"
    })
    .await;
    assert_eq!(rec["agentId"], "greeter");

    // A stream whose agentId is unknown here (another instance's agent) gets the default agent.
    let mut raw = common::RawStream::open(addr, 42).await;
    for (k, v) in raw.params.iter_mut() {
        if k == "agentId" {
            *v = "agent-only-on-another-instance".into();
        }
    }
    // The start token is checked, not the agent: the stream is accepted.
    raw.start().await;
    let rec = wait_for_call(addr, &sid("CA", 42), Duration::from_secs(5), |v| {
        v["status"] == "in-progress"
    })
    .await;
    assert_eq!(rec["agentId"], "greeter");
    let warned = "unknown agent: using the default agent";
    assert!(common::logged(&proxy, warned).await, "{}", proxy.log());
    raw.stop().await;
    let rec = wait_for_call(addr, &sid("CA", 42), Duration::from_secs(5), |v| {
        v["status"] == "completed"
    })
    .await;
    assert!(rec["endReason"].as_str().unwrap().contains("stop"), "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_off_and_ai_failures_are_recorded_as_fallback() {
    let proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let resp = common::webhook(proxy.addr, 51).await;
    assert!(String::from_utf8_lossy(&resp.body).contains("<Conference"));
    let rec = wait_for_call(proxy.addr, &sid("CA", 51), Duration::from_secs(5), |v| {
        v["status"] == "fallback"
    })
    .await;
    assert!(
        rec["endReason"]
            .as_str()
            .unwrap()
            .contains("USE_OPENAI_REALTIME=false"),
        "{rec}"
    );

    // The AI leg fails (the OpenAI URL accepts TCP but never answers the handshake): the
    // record says fallback.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/v1/realtime", silent.local_addr().unwrap());
    let proxy = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", url.as_str()),
        ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ("OPENAI_CONNECT_TIMEOUT_SECS", "1"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let mut raw = common::RawStream::open(proxy.addr, 52).await;
    raw.start().await;
    let _ = raw.until_closed(Duration::from_secs(10)).await;
    let after = common::after_stream(proxy.addr, 52).await;
    assert!(String::from_utf8_lossy(&after.body).contains("<Conference"));
    let rec = wait_for_call(proxy.addr, &sid("CA", 52), Duration::from_secs(5), |v| {
        v["status"] == "fallback"
    })
    .await;
    assert!(
        rec["endReason"].as_str().unwrap().contains("openai"),
        "{rec}"
    );
    let items = rec["realtimeConversation"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "error" && i["source"] == "callbridge"),
        "{rec}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_serving_the_stream_records_a_call_whose_webhook_went_elsewhere() {
    let mock = mock(|_| {}).await;
    let url = mock.url();
    let env = [
        ("OPENAI_REALTIME_URL", url.as_str()),
        ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ("STREAM_SECRET", "shared-secret-of-the-instances"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ];
    let a = Proxy::spawn(&env);
    let b = Proxy::spawn(&env);
    // Twilio calls instance A's webhook ...
    let resp = common::webhook(a.addr, 61).await;
    assert_eq!(resp.status, 200);
    let twiml =
        callbridge_testkit::sim::twiml::Twiml::parse(std::str::from_utf8(&resp.body).unwrap())
            .expect("twiml");
    let stream = twiml.stream().expect("a stream").clone();
    let (_, path) = callbridge_testkit::sim::twiml::split_wss_url(&stream.url).unwrap();
    // ... and the load balancer sends the stream to instance B.
    let sig = callbridge_testkit::sim::webhook::signature(AUTH_TOKEN, &stream.url, &[]);
    let mut raw = common::RawStream::connect(b.addr, path, &[("x-twilio-signature", &sig)])
        .await
        .expect("B accepts a stream A minted");
    raw.params = stream.parameters.clone();
    raw.call_sid = sid("CA", 61);
    raw.stream_sid = sid("MZ", 61);
    raw.start().await;
    let rec = wait_for_call(b.addr, &sid("CA", 61), Duration::from_secs(5), |v| {
        v["status"] == "in-progress"
    })
    .await;
    assert_eq!(rec["from"], "+819012345678");
    assert_eq!(rec["to"], "+81501234567");
    assert_eq!(rec["agentId"], "default");
    assert_eq!(rec["streamSid"], sid("MZ", 61));
    raw.stop().await;
    wait_for_call(b.addr, &sid("CA", 61), Duration::from_secs(5), |v| {
        v["status"] == "completed"
    })
    .await;
    // A keeps its own record of the webhook: ringing (records are per instance).
    let rec = wait_for_call(a.addr, &sid("CA", 61), Duration::from_secs(5), |_| true).await;
    assert_eq!(rec["status"], "ringing");
}
