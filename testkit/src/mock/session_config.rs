//! The mock's session configuration: the default `session.created` body, the strict checks on
//! `session.update` (protocol.md 5.2, 5.6), and the merge of a partial update.

use serde_json::{json, Map, Value};

use super::rejection::MockRejection;

use crate::schema::BETA_SESSION_FIELDS;

/// Audio formats of the GA interface (`audio.input.format.type`, `audio.output.format.type`).
const AUDIO_FORMATS: [&str; 3] = ["audio/pcm", "audio/pcmu", "audio/pcma"];

/// The only sample rate `audio/pcm` supports (protocol.md 5.2).
const PCM_RATE: u64 = 24_000;

/// Built-in voices (protocol.md 5.2); a custom voice is `{"id": "voice_…"}`.
const VOICES: [&str; 10] = [
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
];

/// Server VAD defaults (protocol.md 5.2), filled into a `turn_detection` that omits them.
const DEFAULT_THRESHOLD: f64 = 0.5;
/// Default `prefix_padding_ms`.
const DEFAULT_PREFIX_PADDING_MS: u64 = 300;
/// Default `silence_duration_ms`.
const DEFAULT_SILENCE_DURATION_MS: u64 = 500;

/// The session the mock announces in `session.created`: the real server's GA defaults, in
/// particular 24 kHz PCM in both directions, so a client that forgets `session.update` is caught.
pub(super) fn default_session(session_id: &str, model: &str) -> Value {
    json!({
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": null,
        "truncation": "auto",
        "prompt": null,
        "include": null,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": PCM_RATE},
                "transcription": null,
                "noise_reduction": null,
                "turn_detection": default_server_vad(),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": PCM_RATE},
                "voice": "marin",
                "speed": 1.0,
            }
        }
    })
}

/// A `server_vad` with every field at its default.
fn default_server_vad() -> Value {
    json!({
        "type": "server_vad",
        "threshold": DEFAULT_THRESHOLD,
        "prefix_padding_ms": DEFAULT_PREFIX_PADDING_MS,
        "silence_duration_ms": DEFAULT_SILENCE_DURATION_MS,
        "idle_timeout_ms": null,
        "create_response": true,
        "interrupt_response": true,
    })
}

/// Checks a `session.update`'s `session` object beyond the schema: GA shape only, known formats
/// and voices, VAD ranges, and no voice change once audio was produced.
pub(super) fn check_update(
    update: &Value,
    effective: &Value,
    audio_produced: bool,
) -> Result<(), MockRejection> {
    let session = update
        .as_object()
        .ok_or_else(|| MockRejection::MissingParameter("session".into()))?;
    if let Some(field) = BETA_SESSION_FIELDS
        .iter()
        .find(|field| session.contains_key(**field))
    {
        return Err(MockRejection::UnknownParameter(format!("session.{field}")));
    }
    match session.get("type").and_then(Value::as_str) {
        None => return Err(MockRejection::MissingParameter("session.type".into())),
        Some("realtime") => {}
        Some(other) => {
            return Err(invalid(
                "session.type",
                format!("mock only serves 'realtime' sessions, got '{other}'"),
            ))
        }
    }
    check_output_modalities(session)?;
    if let Some(audio) = session.get("audio").filter(|a| !a.is_null()) {
        check_audio(audio)?;
        let voice = audio.pointer("/output/voice");
        let current = effective.pointer("/audio/output/voice");
        if audio_produced && voice.is_some() && voice != current {
            return Err(MockRejection::VoiceLocked);
        }
    }
    Ok(())
}

/// A [`MockRejection::InvalidValue`].
fn invalid(param: &str, reason: String) -> MockRejection {
    MockRejection::InvalidValue {
        param: param.to_owned(),
        reason,
    }
}

/// `output_modalities` is `["audio"]` or `["text"]` (GA accepts one, not both; protocol.md 5.2,
/// unconfirmed there, enforced here so callbridge stays on the safe side).
fn check_output_modalities(session: &Map<String, Value>) -> Result<(), MockRejection> {
    let Some(modalities) = session.get("output_modalities").filter(|m| !m.is_null()) else {
        return Ok(());
    };
    let ok = modalities.as_array().is_some_and(|list| {
        list.len() == 1 && matches!(list[0].as_str(), Some("audio") | Some("text"))
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "session.output_modalities",
            "expected [\"audio\"] or [\"text\"]".into(),
        ))
    }
}

/// Checks `session.audio`.
fn check_audio(audio: &Value) -> Result<(), MockRejection> {
    let audio = audio
        .as_object()
        .ok_or_else(|| invalid("session.audio", "expected an object".into()))?;
    for (key, value) in audio {
        if key != "input" && key != "output" {
            return Err(MockRejection::UnknownParameter(format!(
                "session.audio.{key}"
            )));
        }
        if let Some(format) = value.get("format").filter(|f| !f.is_null()) {
            check_format(&format!("session.audio.{key}.format"), format)?;
        }
    }
    if let Some(input) = audio.get("input") {
        if let Some(td) = input.get("turn_detection").filter(|t| !t.is_null()) {
            check_turn_detection(td)?;
        }
    }
    if let Some(voice) = audio.get("output").and_then(|o| o.get("voice")) {
        check_voice(voice)?;
    }
    Ok(())
}

/// An audio format object: known `type`, and `rate` 24000 for PCM.
fn check_format(param: &str, format: &Value) -> Result<(), MockRejection> {
    let kind = format.get("type").and_then(Value::as_str);
    if !kind.is_some_and(|k| AUDIO_FORMATS.contains(&k)) {
        return Err(invalid(
            &format!("{param}.type"),
            format!(
                "expected one of {AUDIO_FORMATS:?}, got {}",
                format.get("type").unwrap_or(&Value::Null)
            ),
        ));
    }
    let rate = format.get("rate").filter(|r| !r.is_null());
    if let Some(rate) = rate {
        if kind != Some("audio/pcm") || rate.as_u64() != Some(PCM_RATE) {
            return Err(invalid(
                &format!("{param}.rate"),
                format!("only audio/pcm has a rate, and it must be {PCM_RATE}"),
            ));
        }
    }
    Ok(())
}

/// `turn_detection`: a known type and values in range.
fn check_turn_detection(td: &Value) -> Result<(), MockRejection> {
    const PARAM: &str = "session.audio.input.turn_detection";
    match td.get("type").and_then(Value::as_str) {
        Some("server_vad") | Some("semantic_vad") => {}
        _ => {
            return Err(invalid(
                &format!("{PARAM}.type"),
                "expected server_vad or semantic_vad".into(),
            ))
        }
    }
    if let Some(threshold) = td.get("threshold").filter(|t| !t.is_null()) {
        if !threshold.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)) {
            return Err(invalid(
                &format!("{PARAM}.threshold"),
                "expected 0.0 to 1.0".into(),
            ));
        }
    }
    for field in [
        "prefix_padding_ms",
        "silence_duration_ms",
        "idle_timeout_ms",
    ] {
        if let Some(value) = td.get(field).filter(|v| !v.is_null()) {
            if value.as_u64().is_none() {
                return Err(invalid(
                    &format!("{PARAM}.{field}"),
                    "expected a non-negative integer".into(),
                ));
            }
        }
    }
    Ok(())
}

/// `audio.output.voice`: a built-in name or `{"id": …}`.
fn check_voice(voice: &Value) -> Result<(), MockRejection> {
    let ok = match voice {
        Value::String(name) => VOICES.contains(&name.as_str()),
        Value::Object(custom) => custom.get("id").is_some_and(Value::is_string),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "session.audio.output.voice",
            format!("unknown voice {voice}"),
        ))
    }
}

/// Applies a checked partial update (protocol.md 5.2 "Partial updates"): top-level fields and
/// each field of `audio.input` / `audio.output` replace the old value whole (so a new `format`
/// drops the old `rate`); `null` clears. Then fills VAD and PCM defaults.
pub(super) fn merge(effective: &mut Value, update: &Value) {
    let (Some(target), Some(update)) = (effective.as_object_mut(), update.as_object()) else {
        return;
    };
    for (key, value) in update {
        if key == "audio" && value.is_object() {
            merge_audio(target, value);
        } else {
            target.insert(key.clone(), value.clone());
        }
    }
    normalize(effective);
}

/// Merges `audio.input` and `audio.output` field by field.
fn merge_audio(target: &mut Map<String, Value>, audio: &Value) {
    let audio_target = target.entry("audio").or_insert_with(|| json!({}));
    if !audio_target.is_object() {
        *audio_target = json!({});
    }
    for side in ["input", "output"] {
        let Some(fields) = audio.get(side).and_then(Value::as_object) else {
            continue;
        };
        let Some(side_target) = audio_target
            .as_object_mut()
            .map(|a| a.entry(side).or_insert_with(|| json!({})))
        else {
            continue;
        };
        if !side_target.is_object() {
            *side_target = json!({});
        }
        if let Some(side_target) = side_target.as_object_mut() {
            for (key, value) in fields {
                side_target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Fills the defaults the real server reports back: VAD fields, `rate` of PCM formats.
fn normalize(session: &mut Value) {
    if let Some(td) = session.pointer_mut("/audio/input/turn_detection") {
        if let Some(fields) = td.as_object_mut() {
            let semantic = fields.get("type").and_then(Value::as_str) == Some("semantic_vad");
            let defaults = if semantic {
                json!({"eagerness": "auto", "create_response": true, "interrupt_response": true})
            } else {
                default_server_vad()
            };
            for (key, value) in defaults.as_object().into_iter().flatten() {
                if fields.get(key).is_none_or(Value::is_null) {
                    fields.insert(key.clone(), value.clone());
                }
            }
        }
    }
    for side in ["input", "output"] {
        if let Some(format) = session.pointer_mut(&format!("/audio/{side}/format")) {
            if format.get("type").and_then(Value::as_str) == Some("audio/pcm") {
                format["rate"] = json!(PCM_RATE);
            }
        }
    }
}

/// `audio.input.format.type` of the effective session (`audio/pcm` if unset, the default).
pub(super) fn input_format(session: &Value) -> &str {
    session
        .pointer("/audio/input/format/type")
        .and_then(Value::as_str)
        .unwrap_or("audio/pcm")
}

/// Whether caller transcription is on (`audio.input.transcription` set).
pub(super) fn transcription_enabled(session: &Value) -> bool {
    session
        .pointer("/audio/input/transcription")
        .is_some_and(|t| !t.is_null())
}

/// The effective turn detection, or `None` when disabled (`null`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TurnDetection {
    /// 0.0–1.0; scaled to an amplitude by the mock's config.
    pub(super) threshold: f64,
    /// Subtracted from the detected start.
    pub(super) prefix_padding_ms: u64,
    /// Silence that ends a turn.
    pub(super) silence_duration_ms: u64,
    /// Start a response when a turn ends.
    pub(super) create_response: bool,
    /// Cancel the active response when speech starts.
    pub(super) interrupt_response: bool,
}

/// Reads `audio.input.turn_detection` (`semantic_vad` is approximated by server VAD defaults).
pub(super) fn turn_detection(session: &Value) -> Option<TurnDetection> {
    let td = session
        .pointer("/audio/input/turn_detection")
        .filter(|t| t.is_object())?;
    let flag = |key: &str| td.get(key).and_then(Value::as_bool).unwrap_or(true);
    let ms = |key: &str, default: u64| td.get(key).and_then(Value::as_u64).unwrap_or(default);
    Some(TurnDetection {
        threshold: td
            .get("threshold")
            .and_then(Value::as_f64)
            .unwrap_or(DEFAULT_THRESHOLD),
        prefix_padding_ms: ms("prefix_padding_ms", DEFAULT_PREFIX_PADDING_MS),
        silence_duration_ms: ms("silence_duration_ms", DEFAULT_SILENCE_DURATION_MS),
        create_response: flag("create_response"),
        interrupt_response: flag("interrupt_response"),
    })
}

/// The `audio.output` of the effective session (format and voice, for response objects).
pub(super) fn output_audio(session: &Value) -> Value {
    json!({
        "format": session.pointer("/audio/output/format").cloned().unwrap_or(Value::Null),
        "voice": session.pointer("/audio/output/voice").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ga_update() -> Value {
        json!({
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "短く答えてください。",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "gpt-4o-transcribe", "language": "ja"},
                    "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 400}
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "cedar"}
            }
        })
    }

    #[test]
    fn ga_update_merges_and_fills_defaults() {
        let mut session = default_session("sess_x", "gpt-realtime");
        check_update(&ga_update(), &session, false).unwrap();
        merge(&mut session, &ga_update());
        assert_eq!(input_format(&session), "audio/pcmu");
        assert_eq!(
            session["audio"]["input"]["format"],
            json!({"type": "audio/pcmu"})
        );
        assert_eq!(session["audio"]["output"]["voice"], "cedar");
        assert_eq!(session["audio"]["output"]["speed"], 1.0);
        assert!(transcription_enabled(&session));
        let td = turn_detection(&session).unwrap();
        assert_eq!(td.threshold, 0.6);
        assert_eq!(td.silence_duration_ms, 400);
        assert_eq!(td.prefix_padding_ms, 300);
        assert!(td.create_response && td.interrupt_response);
        assert_eq!(session["id"], "sess_x");
    }

    #[test]
    fn null_turn_detection_disables_vad() {
        let mut session = default_session("s", "m");
        let update = json!({"type": "realtime", "audio": {"input": {"turn_detection": null}}});
        check_update(&update, &session, false).unwrap();
        merge(&mut session, &update);
        assert_eq!(turn_detection(&session), None);
    }

    #[test]
    fn beta_fields_are_unknown_parameters() {
        let session = default_session("s", "m");
        for field in BETA_SESSION_FIELDS {
            let mut update = json!({"type": "realtime"});
            update[field] = json!("x");
            assert_eq!(
                check_update(&update, &session, false),
                Err(MockRejection::UnknownParameter(format!("session.{field}")))
            );
        }
    }

    #[test]
    fn missing_session_type_is_rejected() {
        let session = default_session("s", "m");
        assert_eq!(
            check_update(&json!({"instructions": "x"}), &session, false),
            Err(MockRejection::MissingParameter("session.type".into()))
        );
        assert!(check_update(&json!({"type": "transcription"}), &session, false).is_err());
        assert!(check_update(&json!("realtime"), &session, false).is_err());
    }

    #[test]
    fn bad_formats_voices_and_ranges_are_rejected() {
        let session = default_session("s", "m");
        let cases = [
            json!({"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}}),
            json!({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}}),
            json!({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}}),
            json!({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "none"}}}}),
            json!({"type": "realtime", "audio": {"output": {"voice": "nobody"}}}),
            json!({"type": "realtime", "audio": {"speakers": {}}}),
            json!({"type": "realtime", "output_modalities": ["text", "audio"]}),
        ];
        for case in cases {
            assert!(check_update(&case, &session, false).is_err(), "{case}");
        }
    }

    #[test]
    fn voice_change_after_audio_is_rejected_but_same_voice_is_fine() {
        let session = default_session("s", "m");
        let same = json!({"type": "realtime", "audio": {"output": {"voice": "marin"}}});
        let other = json!({"type": "realtime", "audio": {"output": {"voice": "cedar"}}});
        assert_eq!(check_update(&same, &session, true), Ok(()));
        assert_eq!(
            check_update(&other, &session, true),
            Err(MockRejection::VoiceLocked)
        );
        assert_eq!(check_update(&other, &session, false), Ok(()));
    }
}
