//! The agent's settings and the GA `session.update` built from them (protocol.md 5.2).
//!
//! INTERFACE CONTRACT (the bridge depends on these names and shapes; keep them).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::json_out::{write_f64, write_str, write_u64};

/// Everything about an agent that shapes the Realtime session. Until the store lands it comes
/// from the configuration; the names follow the original backend's `AgentSettings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSettings {
    /// Agent id (the `agentId` stream parameter).
    pub id: String,
    /// Output voice (`marin`, `cedar`, `alloy`, …).
    pub voice: String,
    /// System prompt.
    pub instructions: String,
    /// Text the AI speaks first, if any.
    pub greeting: Option<String>,
    /// Input transcription model (`gpt-4o-transcribe`, …); `None` disables caller transcripts.
    pub transcription_model: Option<String>,
    /// ISO-639-1 language of the caller (`ja`), for transcription.
    pub language: Option<String>,
    /// Server VAD settings.
    pub turn_detection: TurnDetection,
    /// OpenAI function tool definitions (`{"type":"function","name",…}`).
    pub tools: Vec<serde_json::Value>,
    /// Output speed (0.25–1.5), when set.
    pub speed: Option<f64>,
    /// `near_field`, `far_field`, or `None` (off).
    pub noise_reduction: Option<String>,
}

/// `audio.input.turn_detection` for `server_vad`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnDetection {
    /// Activation threshold, 0.0–1.0.
    pub threshold: f64,
    /// Audio kept before detected speech, ms.
    pub prefix_padding_ms: u32,
    /// Silence that ends a turn, ms.
    pub silence_duration_ms: u32,
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
        }
    }
}

/// Output voices the GA API accepts by name (protocol.md 5.2; `marin` and `cedar` are recommended).
pub const VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
];

/// `audio.input.noise_reduction.type` values.
pub const NOISE_REDUCTIONS: &[&str] = &["near_field", "far_field"];

/// Valid server VAD `threshold` (protocol.md 5.2: 0.0–1.0).
pub const THRESHOLD_RANGE: std::ops::RangeInclusive<f64> = 0.0..=1.0;

/// Valid `audio.output.speed` (protocol.md 5.2: 0.25–1.5).
pub const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.25..=1.5;

/// The audio format on both legs: G.711 μ-law at 8 kHz, byte-identical to Twilio's payloads, so
/// audio passes through without transcoding.
const AUDIO_FORMAT: &str = "audio/pcmu";

/// Why an [`AgentSettings`] cannot be sent to OpenAI.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// `voice` is not one of [`VOICES`].
    #[error("unknown voice {0:?}")]
    UnknownVoice(String),
    /// `turn_detection.threshold` outside [`THRESHOLD_RANGE`] (or NaN).
    #[error("vad threshold {0} is outside 0..=1")]
    BadThreshold(f64),
    /// `speed` outside [`SPEED_RANGE`] (or NaN).
    #[error("speed {0} is outside 0.25..=1.5")]
    BadSpeed(f64),
    /// `noise_reduction` is not one of [`NOISE_REDUCTIONS`].
    #[error("unknown noise reduction {0:?}")]
    UnknownNoiseReduction(String),
    /// A tool is not `{"type": "function", "name": <non-empty string>, …}`.
    #[error("tool {index}: {reason}")]
    BadTool {
        /// Position in `tools`.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl AgentSettings {
    /// Checks the values OpenAI would reject (or silently misread) before a call uses them.
    pub fn validate(&self) -> Result<(), AgentError> {
        if !VOICES.contains(&self.voice.as_str()) {
            return Err(AgentError::UnknownVoice(self.voice.clone()));
        }
        let threshold = self.turn_detection.threshold;
        if !THRESHOLD_RANGE.contains(&threshold) {
            return Err(AgentError::BadThreshold(threshold));
        }
        if let Some(speed) = self.speed {
            if !SPEED_RANGE.contains(&speed) {
                return Err(AgentError::BadSpeed(speed));
            }
        }
        if let Some(nr) = &self.noise_reduction {
            if !NOISE_REDUCTIONS.contains(&nr.as_str()) {
                return Err(AgentError::UnknownNoiseReduction(nr.clone()));
            }
        }
        for (index, tool) in self.tools.iter().enumerate() {
            check_tool(tool).map_err(|reason| AgentError::BadTool { index, reason })?;
        }
        Ok(())
    }
}

/// A function tool is an object with `type: "function"` and a non-empty string `name`.
fn check_tool(tool: &Value) -> Result<(), &'static str> {
    let object = tool.as_object().ok_or("not an object")?;
    if object.get("type").and_then(Value::as_str) != Some("function") {
        return Err("type is not \"function\"");
    }
    match object.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => Ok(()),
        _ => Err("missing or empty name"),
    }
}

impl Default for AgentSettings {
    /// A plain English receptionist: `marin`, transcription by `gpt-4o-transcribe` (language
    /// auto-detected), near-field noise reduction (phone handsets), default VAD, no tools.
    fn default() -> Self {
        AgentSettings {
            id: "default".to_owned(),
            voice: "marin".to_owned(),
            instructions: "You are a friendly phone assistant. Answer briefly and clearly, in the \
                           caller's language."
                .to_owned(),
            greeting: None,
            transcription_model: Some("gpt-4o-transcribe".to_owned()),
            language: None,
            turn_detection: TurnDetection::default(),
            tools: Vec::new(),
            speed: None,
            noise_reduction: Some("near_field".to_owned()),
        }
    }
}

/// Appends the `session.update` for `agent` on `model` to `out`.
///
/// The GA shape of protocol.md 5.2, members in its order: everything under `session`,
/// `type: "realtime"`, μ-law in and out, server VAD that both creates and interrupts responses.
/// Noise reduction and transcription are sent as `null` when off (a partial update would
/// otherwise keep the session's defaults); `speed` only when set; `tools` and `tool_choice` only
/// when there are tools. The tools are the operator's JSON, written as stored.
pub fn encode_session_update(
    out: &mut Vec<u8>,
    event_id: &str,
    model: &str,
    agent: &AgentSettings,
) {
    let vad = &agent.turn_detection;
    out.extend_from_slice(b"{\"type\":\"session.update\",\"event_id\":");
    write_str(out, event_id);
    out.extend_from_slice(b",\"session\":{\"type\":\"realtime\",\"model\":");
    write_str(out, model);
    out.extend_from_slice(b",\"output_modalities\":[\"audio\"],\"instructions\":");
    write_str(out, &agent.instructions);
    out.extend_from_slice(b",\"audio\":{\"input\":{\"format\":");
    write_audio_format(out);
    out.extend_from_slice(b",\"noise_reduction\":");
    match &agent.noise_reduction {
        Some(kind) => {
            out.extend_from_slice(b"{\"type\":");
            write_str(out, kind);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"transcription\":");
    match &agent.transcription_model {
        Some(model) => {
            out.extend_from_slice(b"{\"model\":");
            write_str(out, model);
            if let Some(language) = &agent.language {
                out.extend_from_slice(b",\"language\":");
                write_str(out, language);
            }
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"turn_detection\":{\"type\":\"server_vad\",\"threshold\":");
    write_f64(out, vad.threshold);
    out.extend_from_slice(b",\"prefix_padding_ms\":");
    write_u64(out, vad.prefix_padding_ms.into());
    out.extend_from_slice(b",\"silence_duration_ms\":");
    write_u64(out, vad.silence_duration_ms.into());
    out.extend_from_slice(b",\"create_response\":true,\"interrupt_response\":true}}");
    out.extend_from_slice(b",\"output\":{\"format\":");
    write_audio_format(out);
    out.extend_from_slice(b",\"voice\":");
    write_str(out, &agent.voice);
    if let Some(speed) = agent.speed {
        out.extend_from_slice(b",\"speed\":");
        write_f64(out, speed);
    }
    out.extend_from_slice(b"}}");
    if !agent.tools.is_empty() {
        out.extend_from_slice(b",\"tools\":");
        // Writing a `Value` into a `Vec` cannot fail (no I/O error, string keys only).
        serde_json::to_writer(&mut *out, &agent.tools).expect("serializing json values into a vec");
        out.extend_from_slice(b",\"tool_choice\":\"auto\"");
    }
    out.extend_from_slice(b"}}");
}

/// Appends `{"type":"audio/pcmu"}`.
fn write_audio_format(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":");
    write_str(out, AUDIO_FORMAT);
    out.push(b'}');
}

impl AgentSettings {
    /// The agent of protocol.md 5.2's worked example (Japanese reception desk, one tool): the
    /// reference agent of the `session.update` tests here and of the schema tests in the test kit.
    pub fn protocol_example() -> AgentSettings {
        AgentSettings {
            id: "sample".to_owned(),
            voice: "marin".to_owned(),
            instructions:
                "あなたは株式会社サンプルの電話受付です。丁寧な日本語で、短く答えてください。"
                    .to_owned(),
            greeting: Some("お電話ありがとうございます。".to_owned()),
            transcription_model: Some("gpt-4o-transcribe".to_owned()),
            language: Some("ja".to_owned()),
            turn_detection: TurnDetection::default(),
            tools: vec![serde_json::json!({
                "type": "function",
                "name": "lookup_order",
                "description": "注文番号から注文状況を調べる",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "order_id": { "type": "string", "description": "注文番号" }
                    },
                    "required": ["order_id"]
                }
            })],
            speed: None,
            noise_reduction: Some("near_field".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    /// The `session.update` built as a `serde_json::Value`: the oracle the hand-written encoder
    /// is checked against.
    fn session_update_value(event_id: &str, model: &str, agent: &AgentSettings) -> Value {
        let vad = &agent.turn_detection;
        let noise_reduction = match &agent.noise_reduction {
            Some(kind) => json!({ "type": kind }),
            None => Value::Null,
        };
        let transcription = match &agent.transcription_model {
            Some(model) => {
                let mut t = Map::new();
                t.insert("model".to_owned(), json!(model));
                if let Some(language) = &agent.language {
                    t.insert("language".to_owned(), json!(language));
                }
                Value::Object(t)
            }
            None => Value::Null,
        };
        let mut output = json!({
            "format": { "type": AUDIO_FORMAT },
            "voice": agent.voice,
        });
        if let Some(speed) = agent.speed {
            output["speed"] = json!(speed);
        }
        let mut session = json!({
            "type": "realtime",
            "model": model,
            "output_modalities": ["audio"],
            "instructions": agent.instructions,
            "audio": {
                "input": {
                    "format": { "type": AUDIO_FORMAT },
                    "noise_reduction": noise_reduction,
                    "transcription": transcription,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": vad.threshold,
                        "prefix_padding_ms": vad.prefix_padding_ms,
                        "silence_duration_ms": vad.silence_duration_ms,
                        "create_response": true,
                        "interrupt_response": true,
                    },
                },
                "output": output,
            },
        });
        if !agent.tools.is_empty() {
            session["tools"] = Value::Array(agent.tools.clone());
            session["tool_choice"] = json!("auto");
        }
        json!({ "type": "session.update", "event_id": event_id, "session": session })
    }

    proptest::proptest! {
        #[test]
        fn the_encoder_equals_the_serde_json_oracle(
            event_id in "\\PC{0,12}",
            instructions in "\\PC{0,40}",
            voice_index in 0..VOICES.len(),
            transcription in proptest::option::of("[a-z0-9-]{1,20}"),
            language in proptest::option::of("[a-z]{2}"),
            noise in proptest::option::of(0..NOISE_REDUCTIONS.len()),
            threshold in 0.0f64..=1.0,
            prefix in proptest::num::u32::ANY,
            silence in proptest::num::u32::ANY,
            speed in proptest::option::of(0.25f64..=1.5),
            tools in 0usize..3,
        ) {
            let agent = AgentSettings {
                id: "a".to_owned(),
                voice: VOICES[voice_index].to_owned(),
                instructions,
                greeting: None,
                transcription_model: transcription,
                language,
                turn_detection: TurnDetection {
                    threshold,
                    prefix_padding_ms: prefix,
                    silence_duration_ms: silence,
                },
                tools: (0..tools)
                    .map(|i| json!({"type": "function", "name": format!("t{i}"), "x": [1.5, null, "\u{1}"]}))
                    .collect(),
                speed,
                noise_reduction: noise.map(|i| NOISE_REDUCTIONS[i].to_owned()),
            };
            let mut out = Vec::new();
            encode_session_update(&mut out, &event_id, "gpt-realtime", &agent);
            let value: Value = serde_json::from_slice(&out).unwrap();
            // The oracle goes through text as well: serde_json's reader (without its
            // float_roundtrip feature) may land 1 ULP off on a 17-digit number, the same way
            // for both sides only when both are read from text.
            let oracle = session_update_value(&event_id, "gpt-realtime", &agent);
            let oracle: Value = serde_json::from_str(&oracle.to_string()).unwrap();
            proptest::prop_assert_eq!(value, oracle);
        }
    }

    /// Encodes and parses back (the test kit checks the same agents' events against the GA
    /// client schema: `testkit/tests/session_update.rs`).
    fn encode(agent: &AgentSettings) -> Value {
        let mut out = Vec::new();
        encode_session_update(&mut out, "evt_session_1", "gpt-realtime", agent);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn session_update_is_exactly_the_protocol_example() {
        // protocol.md 5.2, verbatim, plus our event_id.
        let expected: Value = serde_json::from_str(
            r#"{
  "type": "session.update",
  "event_id": "evt_session_1",
  "session": {
    "type": "realtime",
    "model": "gpt-realtime",
    "output_modalities": ["audio"],
    "instructions": "あなたは株式会社サンプルの電話受付です。丁寧な日本語で、短く答えてください。",
    "audio": {
      "input": {
        "format": {"type": "audio/pcmu"},
        "noise_reduction": {"type": "near_field"},
        "transcription": {"model": "gpt-4o-transcribe", "language": "ja"},
        "turn_detection": {
          "type": "server_vad",
          "threshold": 0.5,
          "prefix_padding_ms": 300,
          "silence_duration_ms": 500,
          "create_response": true,
          "interrupt_response": true
        }
      },
      "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}
    },
    "tools": [
      {
        "type": "function",
        "name": "lookup_order",
        "description": "注文番号から注文状況を調べる",
        "parameters": {
          "type": "object",
          "properties": {"order_id": {"type": "string", "description": "注文番号"}},
          "required": ["order_id"]
        }
      }
    ],
    "tool_choice": "auto"
  }
}"#,
        )
        .unwrap();
        assert_eq!(encode(&AgentSettings::protocol_example()), expected);
    }

    #[test]
    fn session_update_appends_to_the_buffer() {
        let mut out = b"[".to_vec();
        encode_session_update(&mut out, "e", "gpt-realtime", &AgentSettings::default());
        assert_eq!(out[0], b'[');
        let value: Value = serde_json::from_slice(&out[1..]).unwrap();
        assert_eq!(value["type"], "session.update");
    }

    #[test]
    fn off_features_are_null_and_optional_ones_absent() {
        let agent = AgentSettings {
            transcription_model: None,
            language: Some("ja".to_owned()),
            noise_reduction: None,
            tools: Vec::new(),
            speed: None,
            ..AgentSettings::protocol_example()
        };
        let session = &encode(&agent)["session"];
        assert_eq!(session["audio"]["input"]["transcription"], Value::Null);
        assert_eq!(session["audio"]["input"]["noise_reduction"], Value::Null);
        assert!(session["audio"]["input"].get("transcription").is_some());
        assert!(session["audio"]["output"].get("speed").is_none());
        assert!(session.get("tools").is_none());
        assert!(session.get("tool_choice").is_none());
    }

    #[test]
    fn language_is_omitted_when_unknown() {
        let agent = AgentSettings {
            language: None,
            ..AgentSettings::protocol_example()
        };
        let transcription = &encode(&agent)["session"]["audio"]["input"]["transcription"];
        assert_eq!(transcription, &json!({ "model": "gpt-4o-transcribe" }));
    }

    #[test]
    fn speed_and_vad_settings_are_sent() {
        let agent = AgentSettings {
            speed: Some(1.25),
            noise_reduction: Some("far_field".to_owned()),
            turn_detection: TurnDetection {
                threshold: 0.8,
                prefix_padding_ms: 200,
                silence_duration_ms: 700,
            },
            ..AgentSettings::protocol_example()
        };
        let audio = &encode(&agent)["session"]["audio"];
        assert_eq!(audio["output"]["speed"], 1.25);
        assert_eq!(
            audio["input"]["noise_reduction"],
            json!({ "type": "far_field" })
        );
        let vad = &audio["input"]["turn_detection"];
        assert_eq!(vad["threshold"], 0.8);
        assert_eq!(vad["prefix_padding_ms"], 200);
        assert_eq!(vad["silence_duration_ms"], 700);
    }

    #[test]
    fn the_default_agent_is_valid_and_encodes() {
        let agent = AgentSettings::default();
        assert_eq!(agent.validate(), Ok(()));
        assert_eq!(agent.id, "default");
        assert_eq!(agent.voice, "marin");
        assert!(agent.tools.is_empty());
        let session = &encode(&agent)["session"];
        assert_eq!(session["audio"]["output"]["voice"], "marin");
        assert_eq!(
            session["audio"]["input"]["transcription"],
            json!({ "model": "gpt-4o-transcribe" })
        );
    }

    #[test]
    fn the_sample_agent_is_valid() {
        assert_eq!(AgentSettings::protocol_example().validate(), Ok(()));
        for voice in VOICES {
            let agent = AgentSettings {
                voice: (*voice).to_owned(),
                ..AgentSettings::protocol_example()
            };
            assert_eq!(agent.validate(), Ok(()), "{voice}");
        }
    }

    #[test]
    fn bad_settings_are_rejected_with_the_reason() {
        let base = AgentSettings::protocol_example();
        let with = |f: &dyn Fn(&mut AgentSettings)| {
            let mut a = base.clone();
            f(&mut a);
            a.validate().unwrap_err()
        };
        assert_eq!(
            with(&|a| a.voice = "nova".to_owned()),
            AgentError::UnknownVoice("nova".to_owned())
        );
        assert_eq!(
            with(&|a| a.turn_detection.threshold = 1.5),
            AgentError::BadThreshold(1.5)
        );
        assert_eq!(
            with(&|a| a.turn_detection.threshold = -0.1),
            AgentError::BadThreshold(-0.1)
        );
        assert!(matches!(
            with(&|a| a.turn_detection.threshold = f64::NAN),
            AgentError::BadThreshold(_)
        ));
        assert_eq!(with(&|a| a.speed = Some(0.2)), AgentError::BadSpeed(0.2));
        assert_eq!(with(&|a| a.speed = Some(1.6)), AgentError::BadSpeed(1.6));
        assert_eq!(
            with(&|a| a.noise_reduction = Some("studio".to_owned())),
            AgentError::UnknownNoiseReduction("studio".to_owned())
        );
        let tool_error = |tool: Value| with(&|a| a.tools.push(tool.clone()));
        assert_eq!(
            tool_error(json!("lookup")),
            AgentError::BadTool {
                index: 1,
                reason: "not an object"
            }
        );
        assert_eq!(
            tool_error(json!({ "type": "mcp", "name": "x" })),
            AgentError::BadTool {
                index: 1,
                reason: "type is not \"function\""
            }
        );
        assert_eq!(
            tool_error(json!({ "type": "function", "name": "" })),
            AgentError::BadTool {
                index: 1,
                reason: "missing or empty name"
            }
        );
        assert_eq!(
            tool_error(json!({ "type": "function" })),
            AgentError::BadTool {
                index: 1,
                reason: "missing or empty name"
            }
        );
        assert_eq!(
            AgentError::BadTool {
                index: 1,
                reason: "not an object"
            }
            .to_string(),
            "tool 1: not an object"
        );
    }

    #[test]
    fn limits_are_inclusive() {
        for (threshold, speed) in [(0.0, 0.25), (1.0, 1.5)] {
            let mut agent = AgentSettings::protocol_example();
            agent.turn_detection.threshold = threshold;
            agent.speed = Some(speed);
            assert_eq!(agent.validate(), Ok(()));
        }
    }
}
