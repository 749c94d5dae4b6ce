//! A tool call through the real binary: the model calls a tool mid-call; callbridge answers
//! with a `function_call_output` and asks for the next response only once the response that
//! carried the call is done (protocol.md 5.3/5.4: a `response.create` while a response is still
//! active is refused by the server).

mod common;

use std::time::Duration;

use callbridge_testkit::mock::FunctionCallScript;
use callbridge_testkit::sim::caller::CallerConfig;
use callbridge_testkit::sim::script::Script;
use common::{closed_sessions, mock, run_signed_call, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_is_answered_after_its_response_is_done_and_the_model_then_speaks() {
    let mock = mock(|m| {
        m.session.function_call = Some(FunctionCallScript {
            name: "lookup_order".into(),
            arguments: "{\"order_id\":\"12345\"}".into(),
            on_response: 1,
        });
        m.session.response_audio_ms = 1_500;
    })
    .await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let caller = CallerConfig::new(proxy.addr, 31, Script::hello_then_hang_up(5_000));
    let report = run_signed_call(&proxy, caller).await;
    let stream = report.stream.as_ref().expect("stream");
    assert!(stream.violations.is_empty(), "{:?}", stream.violations);

    let sessions = closed_sessions(&mock, 1, Duration::from_secs(2)).await;
    let s = &sessions[0];
    // Nothing refused: in particular no `conversation_already_has_active_response`.
    assert!(
        s.stats.errors.is_empty(),
        "mock OpenAI refused events: {:?}\nlog:\n{}",
        s.stats.errors,
        proxy.log()
    );
    assert!(s.schema_violations.is_empty(), "{:?}", s.schema_violations);
    assert_eq!(s.stats.function_calls.len(), 1);
    // Tools are not executed yet: the model gets an error result to tell the caller about.
    assert_eq!(
        s.stats.function_call_outputs.len(),
        1,
        "one output per call"
    );
    let (call_id, output) = &s.stats.function_call_outputs[0];
    assert_eq!(call_id, &s.stats.function_calls[0]);
    assert!(output.contains("lookup_order"), "{output}");
    // The tool call's response, then the spoken answer the output asked for.
    assert_eq!(s.stats.responses_created, 2);
    assert_eq!(s.stats.responses_completed, 2);
    let types = &s.stats.client_event_types;
    let output_at = types
        .iter()
        .position(|t| t == "conversation.item.create")
        .expect("the function_call_output");
    assert_eq!(
        types[output_at + 1..]
            .iter()
            .filter(|t| *t == "response.create")
            .count(),
        1,
        "one response.create after the output: {types:?}"
    );
    assert!(
        !s.stats.audio_deltas.is_empty(),
        "the model spoke after the tool result"
    );
    assert!(
        proxy.log().contains("lookup_order"),
        "the tool call is logged or recorded; log:\n{}",
        proxy.log()
    );
}
