//! A whole call through the real binary: webhook, stream, session, both transcripts, audio both
//! ways byte-exact and in order, a clean end, and every event on both sides valid.

mod common;

use std::time::Duration;

use callbridge_testkit::sim::caller::CallerConfig;
use callbridge_testkit::sim::script::Script;
use common::{assert_delivered_byte_exact, closed_sessions, mock, run_signed_call, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_call_carries_audio_both_ways_byte_exact_and_ends_cleanly() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let mut caller = CallerConfig::new(proxy.addr, 7, Script::hello_then_hang_up(4_500));
    caller.frame_tag = Some(7);
    let report = run_signed_call(&proxy, caller).await;
    let stream = report.stream.as_ref().expect("stream");
    assert!(
        stream.violations.is_empty(),
        "twilio protocol violations: {:?}",
        stream.violations
    );

    let sessions = closed_sessions(&mock, 1, Duration::from_secs(2)).await;
    assert_eq!(
        sessions.len(),
        1,
        "the OpenAI leg is closed when the caller hangs up"
    );
    let s = &sessions[0];
    assert!(
        s.stats.errors.is_empty(),
        "mock OpenAI refused events: {:?}",
        s.stats.errors
    );
    assert!(s.schema_violations.is_empty(), "{:?}", s.schema_violations);
    assert_eq!(s.stats.appends_before_session_updated, 0);

    // session.update in the GA shape.
    let update = &s.stats.session_updates[0];
    assert_eq!(update["type"], "realtime");
    assert_eq!(update["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(update["audio"]["output"]["format"]["type"], "audio/pcmu");
    assert_eq!(
        update["audio"]["input"]["turn_detection"]["type"],
        "server_vad"
    );

    // Audio both ways: every frame once, in order, byte-exact.
    assert_delivered_byte_exact(7, s, stream);

    // Both sides of the conversation happened.
    let types: Vec<String> = s
        .sent_events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| v["type"].as_str().map(str::to_owned))
        .collect();
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    assert!(types.contains(&"conversation.item.input_audio_transcription.completed"));
    assert!(types.contains(&"response.done"));
    // What was said is in the store, never in the log (LOG_TRANSCRIPTS is off).
    let log = proxy.log();
    assert!(!log.contains("check my order"), "log:\n{log}");
}
