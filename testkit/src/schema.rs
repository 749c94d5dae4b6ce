//! Validation of Realtime GA events against the official JSON Schemas (protocol.md 5.3, 5.4), for
//! the mock server at run time and for tests.
//!
//! The schemas (exported from the openai Python SDK's types) are embedded verbatim from
//! `src/openai/schema/`. Their top level is an `anyOf` over every event, whose error says nothing
//! useful, so one validator is compiled per event type from
//! `{"$ref": "#/$defs/<Name>", "$defs": <all defs>}` (deps.md section 7) and an event is checked
//! against the one its `type` names.
//!
//! The schemas allow additional properties everywhere, so they cannot catch beta-era fields;
//! [`beta_fields`] lists those explicitly (protocol.md 5.6).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{json, Value};

/// The client-events schema (`openai-realtime-client-events.schema.json`).
const CLIENT_SCHEMA: &str = include_str!("schema/client-events.schema.json");
/// The server-events schema (`openai-realtime-server-events.schema.json`).
const SERVER_SCHEMA: &str = include_str!("schema/server-events.schema.json");

/// Longest single error message shown; longer ones (a whole object echoed back in a type error)
/// are cut, since the instance path already says where the problem is.
const MAX_SHOWN_ERROR_LEN: usize = 200;

/// Most failing checks listed in one message: an item that matches none of nine `anyOf`
/// alternatives fails dozens of checks, and the first few say enough.
const MAX_SHOWN_ERRORS: usize = 8;

/// `message` cut to [`MAX_SHOWN_ERROR_LEN`] bytes (at a character boundary) with an ellipsis.
fn shorten(message: &str) -> String {
    if message.len() <= MAX_SHOWN_ERROR_LEN {
        return message.to_owned();
    }
    format!(
        "{}…",
        callbridge_core::wire::ws::truncate_at_char(message, MAX_SHOWN_ERROR_LEN)
    )
}

/// Validators for one schema, one per event type, compiled once.
pub struct SchemaValidator {
    /// Which schema this is (`client` / `server`), for messages.
    side: &'static str,
    /// Event `type` string → (definition name, validator of that definition).
    by_type: HashMap<String, (String, jsonschema::Validator)>,
}

impl SchemaValidator {
    /// The validator of client events (what callbridge sends), compiled on first use.
    pub fn client() -> &'static SchemaValidator {
        static CLIENT: OnceLock<SchemaValidator> = OnceLock::new();
        CLIENT.get_or_init(|| SchemaValidator::compile("client", CLIENT_SCHEMA))
    }

    /// The validator of server events (what OpenAI and the mock send), compiled on first use.
    pub fn server() -> &'static SchemaValidator {
        static SERVER: OnceLock<SchemaValidator> = OnceLock::new();
        SERVER.get_or_init(|| SchemaValidator::compile("server", SERVER_SCHEMA))
    }

    /// Compiles the per-type validators of an embedded schema.
    ///
    /// Panics only if the embedded schema itself is broken, which the tests of this module rule
    /// out (the files are compile-time constants).
    fn compile(side: &'static str, text: &str) -> SchemaValidator {
        let schema: Value = serde_json::from_str(text).expect("embedded schema is JSON");
        let defs = &schema["$defs"];
        let mut by_type = HashMap::new();
        for (type_name, def_name) in event_definitions(&schema) {
            let root = json!({ "$ref": format!("#/$defs/{def_name}"), "$defs": defs });
            let validator = jsonschema::validator_for(&root)
                .unwrap_or_else(|e| panic!("embedded {side} schema {def_name}: {e}"));
            by_type.insert(type_name, (def_name, validator));
        }
        SchemaValidator { side, by_type }
    }

    /// Checks `event` against the definition of its `type`.
    ///
    /// The error names the event and definition, then lists each failing leaf check as
    /// `<instance path>: <message> (schema <keyword path>)`, e.g.
    /// `/: "audio" is a required property (schema /$defs/InputAudioBufferAppendEvent/required)`.
    /// Failures inside an `anyOf` are reported per alternative, so a `session` without `type`
    /// reads `/session: "type" is a required property (schema
    /// /$defs/RealtimeSessionCreateRequest/required)` rather than "not valid under any of the
    /// schemas".
    pub fn validate(&self, event: &Value) -> Result<(), String> {
        let Some(event_type) = event.get("type").and_then(Value::as_str) else {
            return Err(format!("{} event has no string \"type\"", self.side));
        };
        let Some((def_name, validator)) = self.by_type.get(event_type) else {
            return Err(format!("unknown {} event type {event_type:?}", self.side));
        };
        let evaluation = validator.evaluate(event);
        if evaluation.flag().valid {
            return Ok(());
        }
        let mut problems: Vec<String> = Vec::new();
        for entry in evaluation.iter_errors() {
            let at = entry.instance_location.as_str();
            let at = if at.is_empty() { "/" } else { at };
            let message = shorten(&entry.error.to_string());
            let line = format!("{at}: {message} (schema {})", entry.schema_location);
            if !problems.contains(&line) {
                problems.push(line);
            }
        }
        let shown = problems.len().min(MAX_SHOWN_ERRORS);
        let mut text = format!(
            "{event_type} ({def_name}) is invalid: {}",
            problems[..shown].join("; ")
        );
        if problems.len() > shown {
            text.push_str(&format!("; and {} more", problems.len() - shown));
        }
        Err(text)
    }

    /// The event types this schema defines.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }
}

/// (event `type`, `$defs` name) of every event the schema's top-level `anyOf` lists, read from
/// each definition's `properties.type.const` (or the single entry of its `enum`).
fn event_definitions(schema: &Value) -> Vec<(String, String)> {
    let refs = schema["anyOf"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    refs.iter()
        .filter_map(|r| r["$ref"].as_str()?.strip_prefix("#/$defs/"))
        .filter_map(|def_name| {
            let type_schema = &schema["$defs"][def_name]["properties"]["type"];
            let type_name = type_schema["const"]
                .as_str()
                .or_else(|| type_schema["enum"].get(0)?.as_str())?;
            Some((type_name.to_owned(), def_name.to_owned()))
        })
        .collect()
}

/// Session fields of the beta interface that GA does not have (protocol.md 5.2, 5.6). The
/// schemas allow extra properties, so these are refused by name (here and by the mock).
pub const BETA_SESSION_FIELDS: &[&str] = &[
    "modalities",
    "input_audio_format",
    "output_audio_format",
    "voice",
    "turn_detection",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "temperature",
    "max_response_output_tokens",
];

/// `response.create` overrides of the beta interface that GA does not have.
const BETA_RESPONSE_FIELDS: &[&str] = &[
    "modalities",
    "voice",
    "output_audio_format",
    "temperature",
    "max_response_output_tokens",
];

/// Event type prefixes of the beta interface, renamed in GA (`response.audio.delta` is
/// `response.output_audio.delta` now).
const BETA_TYPE_PREFIXES: &[&str] = &[
    "response.audio.",
    "response.audio_transcript.",
    "response.text.",
];

/// Beta-era fields in an event, as dotted paths (`session.voice`, `session.type (missing)`);
/// empty for a clean GA event.
///
/// The schemas accept these (additional properties are allowed), but the GA server ignores or
/// rejects them, so the mock answers them with an `error` and the tests forbid them.
pub fn beta_fields(event: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let event_type = event.get("type").and_then(Value::as_str).unwrap_or("");
    if BETA_TYPE_PREFIXES.iter().any(|p| event_type.starts_with(p)) {
        found.push(format!("type {event_type}"));
    }
    match event_type {
        "session.update" => {
            let session = event.get("session");
            collect_present(session, "session", BETA_SESSION_FIELDS, &mut found);
            if session.and_then(|s| s.get("type")).is_none() {
                found.push("session.type (missing)".to_owned());
            }
        }
        "response.create" => {
            collect_present(
                event.get("response"),
                "response",
                BETA_RESPONSE_FIELDS,
                &mut found,
            );
        }
        "conversation.item.create" => collect_beta_content(event.get("item"), &mut found),
        _ => {}
    }
    found
}

/// Pushes `<prefix>.<field>` for each of `fields` present in the object `parent`.
fn collect_present(parent: Option<&Value>, prefix: &str, fields: &[&str], found: &mut Vec<String>) {
    let Some(object) = parent.and_then(Value::as_object) else {
        return;
    };
    for field in fields {
        if object.contains_key(*field) {
            found.push(format!("{prefix}.{field}"));
        }
    }
}

/// Beta content part types of an assistant message: `text` and `audio` became `output_text` and
/// `output_audio`.
fn collect_beta_content(item: Option<&Value>, found: &mut Vec<String>) {
    let Some(item) = item else { return };
    if item.get("role").and_then(Value::as_str) != Some("assistant") {
        return;
    }
    let parts = item.get("content").and_then(Value::as_array);
    for (i, part) in parts.into_iter().flatten().enumerate() {
        if let Some(t @ ("text" | "audio")) = part.get("type").and_then(Value::as_str) {
            found.push(format!("item.content[{i}].type {t}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_error(event: Value) -> String {
        SchemaValidator::client().validate(&event).unwrap_err()
    }

    #[test]
    fn every_event_of_both_schemas_gets_a_validator() {
        assert_eq!(SchemaValidator::client().event_types().count(), 11);
        assert_eq!(SchemaValidator::server().event_types().count(), 46);
        let mut client: Vec<&str> = SchemaValidator::client().event_types().collect();
        client.sort_unstable();
        assert!(client.contains(&"session.update"));
        assert!(client.contains(&"input_audio_buffer.append"));
    }

    #[test]
    fn a_good_event_passes() {
        let event = json!({ "type": "input_audio_buffer.append", "audio": "AAAA" });
        assert_eq!(SchemaValidator::client().validate(&event), Ok(()));
    }

    #[test]
    fn a_missing_property_is_named() {
        let msg = client_error(json!({ "type": "input_audio_buffer.append" }));
        assert!(msg.contains("\"audio\" is a required property"), "{msg}");
        assert!(msg.contains("InputAudioBufferAppendEvent"), "{msg}");
    }

    #[test]
    fn a_wrong_type_names_the_property_path() {
        let msg = client_error(json!({
            "type": "conversation.item.truncate",
            "item_id": "i", "content_index": 0, "audio_end_ms": "1240"
        }));
        assert!(msg.contains("/audio_end_ms"), "{msg}");
        assert!(msg.contains("integer"), "{msg}");
    }

    #[test]
    fn a_nested_error_names_the_nested_path() {
        let msg = client_error(json!({
            "type": "session.update",
            "session": { "type": "realtime", "output_modalities": ["speech"] }
        }));
        assert!(msg.contains("/session"), "{msg}");
    }

    #[test]
    fn an_item_matching_no_alternative_lists_a_bounded_number_of_checks() {
        let msg = client_error(json!({
            "type": "conversation.item.create",
            "item": { "type": "nonsense" }
        }));
        assert!(
            msg.starts_with(
                "conversation.item.create (ConversationItemCreateEvent) is invalid: /item: "
            ),
            "{msg}"
        );
        assert!(msg.matches("(schema ").count() <= MAX_SHOWN_ERRORS, "{msg}");
        assert!(msg.contains(" more"), "{msg}");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "あ".repeat(100);
        let short = shorten(&long);
        assert!(short.len() <= MAX_SHOWN_ERROR_LEN + "…".len());
        assert!(short.ends_with('…'));
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn unknown_and_missing_types_are_errors() {
        let msg = client_error(json!({ "type": "response.audio.delta" }));
        assert!(
            msg.contains("unknown client event type \"response.audio.delta\""),
            "{msg}"
        );
        let msg = client_error(json!({ "audio": "AAAA" }));
        assert!(msg.contains("no string \"type\""), "{msg}");
        // A server event is not a client event.
        assert!(SchemaValidator::client()
            .validate(&json!({ "type": "session.updated", "event_id": "e", "session": {} }))
            .is_err());
    }

    #[test]
    fn server_events_are_checked_against_their_definition() {
        let good = json!({
            "type": "input_audio_buffer.speech_started", "event_id": "event_B1",
            "audio_start_ms": 15320, "item_id": "item_U7"
        });
        assert_eq!(SchemaValidator::server().validate(&good), Ok(()));
        let mut bad = good.clone();
        bad.as_object_mut().unwrap().remove("item_id");
        let msg = SchemaValidator::server().validate(&bad).unwrap_err();
        assert!(msg.contains("\"item_id\" is a required property"), "{msg}");
    }

    #[test]
    fn protocol_server_examples_validate() {
        // protocol.md 5.4 compact examples, verbatim.
        let examples = [
            r#"{"type": "response.output_audio.delta", "event_id": "event_C3", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0, "delta": "/////39/fn5+fn5+/////w=="}"#,
            r#"{"type": "input_audio_buffer.speech_started", "event_id": "event_B1", "audio_start_ms": 15320, "item_id": "item_U7"}"#,
            r#"{"type": "response.function_call_arguments.done", "event_id": "event_C8", "response_id": "resp_R1", "item_id": "item_F3", "output_index": 1, "call_id": "call_Q2f8", "name": "lookup_order", "arguments": "{\"order_id\":\"12345\"}"}"#,
            r#"{"type": "response.done", "event_id": "event_C9", "response": {"id": "resp_R1", "object": "realtime.response", "status": "completed", "status_details": null, "output": [], "usage": {"total_tokens": 412, "input_tokens": 301, "output_tokens": 111, "input_token_details": {"text_tokens": 120, "audio_tokens": 181, "cached_tokens": 0}, "output_token_details": {"text_tokens": 25, "audio_tokens": 86}}}}"#,
            r#"{"type": "conversation.item.truncated", "event_id": "event_D1", "item_id": "item_CBx2", "content_index": 0, "audio_end_ms": 1240}"#,
            r#"{"type": "error", "event_id": "event_A3", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Audio content of 980ms is already shorter than 1240ms", "param": null, "event_id": "evt_client_17"}}"#,
            r#"{"type": "response.done", "event_id": "event_E1", "response": {"id": "resp_R2", "object": "realtime.response", "status": "cancelled", "status_details": {"type": "cancelled", "reason": "turn_detected"}, "output": []}}"#,
        ];
        for text in examples {
            let event: Value = serde_json::from_str(text).unwrap();
            assert_eq!(SchemaValidator::server().validate(&event), Ok(()), "{text}");
        }
    }

    #[test]
    fn protocol_client_examples_validate() {
        // protocol.md 5.3 examples, verbatim.
        let examples = [
            r#"{"type": "input_audio_buffer.append", "audio": "/////39/fn5+fn5+/////w=="}"#,
            r#"{"type": "conversation.item.truncate", "item_id": "item_CBx1", "content_index": 0, "audio_end_ms": 1240}"#,
            r#"{"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "call_Q2f8", "output": "{\"status\":\"shipped\",\"eta\":\"2025-06-03\"}"}}"#,
            r#"{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "（通話が始まりました。挨拶してください）"}]}}"#,
            r#"{"type": "response.create"}"#,
            r#"{"type": "response.cancel"}"#,
        ];
        for text in examples {
            let event: Value = serde_json::from_str(text).unwrap();
            assert_eq!(SchemaValidator::client().validate(&event), Ok(()), "{text}");
            assert_eq!(beta_fields(&event), Vec::<String>::new(), "{text}");
        }
    }

    #[test]
    fn beta_session_update_without_session_type_fails_the_schema() {
        let beta = json!({
            "type": "session.update",
            "session": { "modalities": ["text", "audio"], "voice": "alloy" }
        });
        let msg = SchemaValidator::client().validate(&beta).unwrap_err();
        assert!(
            msg.contains(
                "/session: \"type\" is a required property \
                 (schema /$defs/RealtimeSessionCreateRequest/required)"
            ),
            "{msg}"
        );
        assert_eq!(
            beta_fields(&beta),
            [
                "session.modalities",
                "session.voice",
                "session.type (missing)"
            ]
        );
    }

    #[test]
    fn beta_session_fields_pass_the_schema_but_are_listed() {
        let beta = json!({
            "type": "session.update",
            "session": {
                "type": "realtime",
                "modalities": ["text", "audio"],
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_ulaw",
                "voice": "alloy",
                "turn_detection": { "type": "server_vad" },
                "input_audio_transcription": { "model": "whisper-1" },
                "temperature": 0.8
            }
        });
        assert_eq!(SchemaValidator::client().validate(&beta), Ok(()));
        assert_eq!(
            beta_fields(&beta),
            [
                "session.modalities",
                "session.input_audio_format",
                "session.output_audio_format",
                "session.voice",
                "session.turn_detection",
                "session.input_audio_transcription",
                "session.temperature",
            ]
        );
    }

    #[test]
    fn beta_response_overrides_and_content_types_are_found() {
        let create = json!({
            "type": "response.create",
            "response": { "modalities": ["audio"], "voice": "alloy", "instructions": "hi" }
        });
        assert_eq!(
            beta_fields(&create),
            ["response.modalities", "response.voice"]
        );
        let item = json!({
            "type": "conversation.item.create",
            "item": { "type": "message", "role": "assistant",
                      "content": [{ "type": "output_text", "text": "ok" }, { "type": "text", "text": "old" }] }
        });
        assert_eq!(beta_fields(&item), ["item.content[1].type text"]);
        let renamed = json!({ "type": "response.audio.delta", "delta": "AAAA" });
        assert_eq!(beta_fields(&renamed), ["type response.audio.delta"]);
    }

    #[test]
    fn a_ga_session_update_has_no_beta_fields() {
        let ga = json!({
            "type": "session.update",
            "session": { "type": "realtime", "audio": { "output": { "voice": "marin" } } }
        });
        assert_eq!(beta_fields(&ga), Vec::<String>::new());
    }

    #[test]
    fn embedded_schemas_match_the_shared_copies() {
        let pairs = [
            (
                CLIENT_SCHEMA,
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../shared/schemas/openai-realtime-client-events.schema.json"
                ),
            ),
            (
                SERVER_SCHEMA,
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../shared/schemas/openai-realtime-server-events.schema.json"
                ),
            ),
        ];
        for (embedded, shared) in pairs {
            match std::fs::read_to_string(shared) {
                Ok(text) => assert!(text == embedded, "{shared} differs from the embedded copy"),
                Err(e) => println!("skipped: {shared} not readable ({e})"),
            }
        }
    }
}
