//! callbridge-core's OpenAI event parser and encoders against the GA schemas (the test kit
//! holds them): every server frame here is valid under the server schema and parses to the
//! event it should; every client event the bridge writes is exactly the expected text, valid
//! under the client schema, and free of beta-interface fields.

use callbridge_core::openai::events::*;
use callbridge_testkit::schema::{beta_fields, SchemaValidator};

/// Parses `text` with a fresh parser; the frame is leaked so the event can be returned.
fn parse(text: &str) -> Result<ServerEvent<'static>, OpenAiParseError> {
    let frame: &'static mut [u8] = Box::leak(text.as_bytes().to_vec().into_boxed_slice());
    ServerEventParser::new().parse(frame)
}

/// Parses an event that must also be valid under the server schema (keeps the test frames
/// honest).
fn parse_valid(text: &str) -> ServerEvent<'static> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    SchemaValidator::server().validate(&value).unwrap();
    parse(text).unwrap()
}

/// Checks a client event: exact text, valid under the client schema, no beta fields.
fn check_client(out: &[u8], expected: &str) -> serde_json::Value {
    let text = std::str::from_utf8(out).unwrap();
    assert_eq!(text, expected);
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    SchemaValidator::client().validate(&value).unwrap();
    assert_eq!(beta_fields(&value), Vec::<String>::new());
    value
}

// The compact examples of protocol.md 5.4, verbatim.
const EX_DELTA: &str = r#"{"type": "response.output_audio.delta", "event_id": "event_C3", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0, "delta": "/////39/fn5+fn5+/////w=="}"#;
const EX_SPEECH_STARTED: &str = r#"{"type": "input_audio_buffer.speech_started", "event_id": "event_B1", "audio_start_ms": 15320, "item_id": "item_U7"}"#;
const EX_FUNCTION_CALL: &str = r#"{"type": "response.function_call_arguments.done", "event_id": "event_C8", "response_id": "resp_R1", "item_id": "item_F3", "output_index": 1, "call_id": "call_Q2f8", "name": "lookup_order", "arguments": "{\"order_id\":\"12345\"}"}"#;
const EX_DONE_COMPLETED: &str = r#"{"type": "response.done", "event_id": "event_C9", "response": {"id": "resp_R1", "object": "realtime.response", "status": "completed", "status_details": null, "output": [], "usage": {"total_tokens": 412, "input_tokens": 301, "output_tokens": 111, "input_token_details": {"text_tokens": 120, "audio_tokens": 181, "cached_tokens": 0}, "output_token_details": {"text_tokens": 25, "audio_tokens": 86}}}}"#;
const EX_TRUNCATED: &str = r#"{"type": "conversation.item.truncated", "event_id": "event_D1", "item_id": "item_CBx2", "content_index": 0, "audio_end_ms": 1240}"#;
const EX_ERROR: &str = r#"{"type": "error", "event_id": "event_A3", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Audio content of 980ms is already shorter than 1240ms", "param": null, "event_id": "evt_client_17"}}"#;
const EX_DONE_CANCELLED: &str = r#"{"type": "response.done", "event_id": "event_E1", "response": {"id": "resp_R2", "object": "realtime.response", "status": "cancelled", "status_details": {"type": "cancelled", "reason": "turn_detected"}, "output": []}}"#;

#[test]
fn protocol_audio_delta_example_parses() {
    assert_eq!(
        parse_valid(EX_DELTA),
        ServerEvent::OutputAudioDelta {
            response_id: "resp_R1",
            item_id: "item_CBx2",
            delta_b64: "/////39/fn5+fn5+/////w==",
        }
    );
}

#[test]
fn protocol_speech_started_example_parses() {
    assert_eq!(
        parse_valid(EX_SPEECH_STARTED),
        ServerEvent::SpeechStarted {
            item_id: Some("item_U7"),
            audio_start_ms: 15320,
        }
    );
}

#[test]
fn protocol_function_call_example_parses_with_unescaped_arguments() {
    assert_eq!(
        parse_valid(EX_FUNCTION_CALL),
        ServerEvent::FunctionCallArgumentsDone {
            response_id: "resp_R1",
            item_id: "item_F3",
            call_id: "call_Q2f8",
            name: "lookup_order",
            arguments: r#"{"order_id":"12345"}"#,
        }
    );
}

#[test]
fn protocol_completed_response_done_example_parses_with_usage() {
    assert_eq!(
        parse_valid(EX_DONE_COMPLETED),
        ServerEvent::ResponseDone {
            response_id: Some("resp_R1"),
            status: ResponseStatus::Completed,
            reason: None,
            usage: Some(Usage {
                total_tokens: 412,
                input_tokens: 301,
                output_tokens: 111,
            }),
        }
    );
}

#[test]
fn protocol_cancelled_response_done_example_parses_with_reason() {
    assert_eq!(
        parse_valid(EX_DONE_CANCELLED),
        ServerEvent::ResponseDone {
            response_id: Some("resp_R2"),
            status: ResponseStatus::Cancelled,
            reason: Some("turn_detected"),
            usage: None,
        }
    );
}

#[test]
fn protocol_truncated_example_parses() {
    assert_eq!(
        parse_valid(EX_TRUNCATED),
        ServerEvent::ItemTruncated {
            item_id: "item_CBx2",
            audio_end_ms: 1240,
        }
    );
}

#[test]
fn protocol_error_example_parses_with_echoed_event_id() {
    assert_eq!(
        parse_valid(EX_ERROR),
        ServerEvent::Error(ApiError {
            error_type: "invalid_request_error",
            code: Some("invalid_value"),
            message: "Audio content of 980ms is already shorter than 1240ms",
            event_id: Some("evt_client_17"),
            param: None,
        })
    );
}

#[test]
fn session_created_gives_the_session_id() {
    let text = r#"{"type":"session.created","event_id":"ev1","session":{"type":"realtime","id":"sess_1","object":"realtime.session","model":"gpt-realtime","audio":{"input":{"format":{"type":"audio/pcm","rate":24000}}}}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::SessionCreated {
            session_id: Some("sess_1")
        }
    );
}

#[test]
fn session_updated_gives_both_audio_formats() {
    let text = r#"{"type":"session.updated","event_id":"ev2","session":{"type":"realtime","id":"sess_1","audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"},"voice":"marin"}}}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::SessionUpdated {
            session_id: Some("sess_1"),
            input_format: Some("audio/pcmu"),
            output_format: Some("audio/pcmu"),
        }
    );
}

#[test]
fn session_updated_without_audio_has_no_formats() {
    let text =
        r#"{"type":"session.updated","event_id":"ev2","session":{"type":"realtime","audio":null}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::SessionUpdated {
            session_id: None,
            input_format: None,
            output_format: None,
        }
    );
}

#[test]
fn error_without_code_or_event_id_parses() {
    let text =
        r#"{"type":"error","event_id":"ev","error":{"type":"server_error","message":"boom"}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::Error(ApiError {
            error_type: "server_error",
            code: None,
            message: "boom",
            event_id: None,
            param: None,
        })
    );
}

#[test]
fn error_param_is_read() {
    let text = r#"{"type":"error","event_id":"ev","error":{"type":"invalid_request_error","code":"invalid_value","message":"Invalid voice","param":"session.audio.output.voice","event_id":"cb_1"}}"#;
    let ServerEvent::Error(err) = parse_valid(text) else {
        panic!("an error event");
    };
    assert_eq!(err.param, Some("session.audio.output.voice"));
    assert_eq!(err.event_id, Some("cb_1"));
}

#[test]
fn speech_stopped_parses() {
    let text = r#"{"type":"input_audio_buffer.speech_stopped","event_id":"ev","audio_end_ms":16800,"item_id":"item_U7"}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::SpeechStopped {
            item_id: Some("item_U7"),
            audio_end_ms: 16800,
        }
    );
}

#[test]
fn input_transcription_completed_parses() {
    let text = r#"{"type":"conversation.item.input_audio_transcription.completed","event_id":"ev","item_id":"item_U7","content_index":0,"transcript":"hello","usage":{"type":"duration","seconds":1.2}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::InputTranscriptionCompleted {
            item_id: "item_U7",
            transcript: "hello",
        }
    );
}

#[test]
fn input_transcription_failed_gives_the_error_message() {
    let text = r#"{"type":"conversation.item.input_audio_transcription.failed","event_id":"ev","item_id":"item_U7","content_index":0,"error":{"type":"transcription_error","message":"audio unclear"}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::InputTranscriptionFailed {
            item_id: "item_U7",
            message: "audio unclear",
        }
    );
}

#[test]
fn input_transcription_failed_without_message_gives_empty_text() {
    let text = r#"{"type":"conversation.item.input_audio_transcription.failed","event_id":"ev","item_id":"item_U7","content_index":0,"error":{}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::InputTranscriptionFailed {
            item_id: "item_U7",
            message: "",
        }
    );
}

#[test]
fn response_created_parses() {
    let text = r#"{"type":"response.created","event_id":"ev","response":{"id":"resp_R1","object":"realtime.response","status":"in_progress","output":[]}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::ResponseCreated {
            response_id: Some("resp_R1")
        }
    );
}

#[test]
fn output_item_added_gives_item_id_and_type() {
    let text = r#"{"type":"response.output_item.added","event_id":"ev","response_id":"resp_R1","output_index":0,"item":{"id":"item_CBx2","object":"realtime.item","type":"message","role":"assistant","status":"in_progress","content":[]}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::OutputItemAdded {
            response_id: "resp_R1",
            item_id: Some("item_CBx2"),
            item_type: "message",
        }
    );
}

#[test]
fn content_part_added_parses() {
    let text = r#"{"type":"response.content_part.added","event_id":"ev","response_id":"resp_R1","item_id":"item_CBx2","output_index":0,"content_index":0,"part":{"type":"audio","transcript":""}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::ContentPartAdded {
            response_id: "resp_R1",
            item_id: "item_CBx2",
            content_index: 0,
            part_type: Some("audio"),
        }
    );
}

#[test]
fn output_audio_done_parses() {
    let text = r#"{"type":"response.output_audio.done","event_id":"ev","response_id":"resp_R1","item_id":"item_CBx2","output_index":0,"content_index":0}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::OutputAudioDone {
            response_id: "resp_R1",
            item_id: "item_CBx2",
        }
    );
}

#[test]
fn output_audio_transcript_done_unescapes_japanese_and_quotes() {
    // 「こんにちは」と"Hi" with the Japanese as \u escapes and an emoji as a surrogate pair.
    let text = r#"{"type":"response.output_audio_transcript.done","event_id":"ev","response_id":"resp_R1","item_id":"item_CBx2","output_index":0,"content_index":0,"transcript":"\u300c\u3053\u3093\u306b\u3061\u306f\u300d\u3068\"Hi\" \\ \ud83d\ude00\n"}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::OutputAudioTranscriptDone {
            response_id: "resp_R1",
            item_id: "item_CBx2",
            transcript: "「こんにちは」と\"Hi\" \\ 😀\n",
        }
    );
}

#[test]
fn raw_utf8_japanese_passes_through() {
    let text = r#"{"type":"conversation.item.input_audio_transcription.completed","event_id":"ev","item_id":"item_U7","content_index":0,"transcript":"注文番号は12345です","usage":{"type":"duration","seconds":1}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::InputTranscriptionCompleted {
            item_id: "item_U7",
            transcript: "注文番号は12345です",
        }
    );
}

#[test]
fn schema_optional_ids_and_status_may_be_absent() {
    // The GA schema's `RealtimeResponse` has no required field and conversation items make
    // `id` optional: such events are valid and must not be dropped as malformed.
    let cases = [
        r#"{"type":"response.created","event_id":"e","response":{}}"#,
        r#"{"type":"response.done","event_id":"e","response":{"status":"completed"}}"#,
        r#"{"type":"response.done","event_id":"e","response":{"id":"r","status":null}}"#,
        r#"{"type":"response.output_item.added","event_id":"e","response_id":"r","output_index":0,"item":{"type":"message","role":"assistant","content":[]}}"#,
    ];
    for text in cases {
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        SchemaValidator::server()
            .validate(&value)
            .unwrap_or_else(|e| panic!("not schema-valid: {e}: {text}"));
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    assert_eq!(
        parse_valid(cases[1]),
        ServerEvent::ResponseDone {
            response_id: None,
            status: ResponseStatus::Completed,
            reason: None,
            usage: None,
        }
    );
    assert_eq!(
        parse_valid(cases[3]),
        ServerEvent::OutputItemAdded {
            response_id: "r",
            item_id: None,
            item_type: "message",
        }
    );
}

#[test]
fn usage_with_null_counters_counts_zero() {
    let text = r#"{"type":"response.done","event_id":"e","response":{"id":"r","status":"failed","status_details":{"type":"failed","error":{"type":"server_error"}},"usage":{"total_tokens":null,"input_tokens":3}}}"#;
    assert_eq!(
        parse_valid(text),
        ServerEvent::ResponseDone {
            response_id: Some("r"),
            status: ResponseStatus::Failed,
            reason: None,
            usage: Some(Usage {
                total_tokens: 0,
                input_tokens: 3,
                output_tokens: 0,
            }),
        }
    );
}

#[test]
fn append_copies_the_audio_as_is() {
    let mut out = Vec::new();
    encode_append(&mut out, "/////39/fn5+fn5+/////w==");
    check_client(
        &out,
        r#"{"type":"input_audio_buffer.append","audio":"/////39/fn5+fn5+/////w=="}"#,
    );
}

#[test]
fn truncate_has_content_index_zero() {
    let mut out = Vec::new();
    encode_truncate(&mut out, "evt_7", "item_CBx1", 1240);
    check_client(
        &out,
        r#"{"type":"conversation.item.truncate","event_id":"evt_7","item_id":"item_CBx1","content_index":0,"audio_end_ms":1240}"#,
    );
}

#[test]
fn function_output_escapes_the_json_text() {
    let mut out = Vec::new();
    let output = r#"{"status":"shipped","eta":"2025-06-03","note":"発送済み"}"#;
    encode_function_output(&mut out, "evt_8", "call_Q2f8", output);
    let value = check_client(
        &out,
        r#"{"type":"conversation.item.create","event_id":"evt_8","item":{"type":"function_call_output","call_id":"call_Q2f8","output":"{\"status\":\"shipped\",\"eta\":\"2025-06-03\",\"note\":\"発送済み\"}"}}"#,
    );
    assert_eq!(value["item"]["output"], output);
}

#[test]
fn user_text_is_one_input_text_part() {
    let mut out = Vec::new();
    let text = "（通話が始まりました。挨拶してください）\n\"quoted\"";
    encode_user_text(&mut out, "evt_9", text);
    let value = check_client(
        &out,
        r#"{"type":"conversation.item.create","event_id":"evt_9","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"（通話が始まりました。挨拶してください）\n\"quoted\""}]}}"#,
    );
    assert_eq!(value["item"]["content"][0]["text"], text);
}

#[test]
fn response_create_carries_instructions_only_when_given() {
    let mut out = Vec::new();
    encode_response_create(&mut out, "evt_10", None);
    check_client(&out, r#"{"type":"response.create","event_id":"evt_10"}"#);
    out.clear();
    encode_response_create(
        &mut out,
        "evt_11",
        Some("「お電話ありがとうございます」と挨拶してください。"),
    );
    check_client(
        &out,
        r#"{"type":"response.create","event_id":"evt_11","response":{"instructions":"「お電話ありがとうございます」と挨拶してください。"}}"#,
    );
}

#[test]
fn response_cancel_has_an_event_id() {
    let mut out = Vec::new();
    encode_response_cancel(&mut out, "evt_12");
    check_client(&out, r#"{"type":"response.cancel","event_id":"evt_12"}"#);
}
