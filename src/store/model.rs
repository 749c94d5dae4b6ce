//! What the store keeps: agents, number routes, call records and conversation items, as JSON
//! documents (camelCase, the original Node backend's names where one existed), each validated
//! before it is written.
//!
//! - [`Agent`]: the backend's `AgentSettings` document plus a display name; turned into the
//!   [`AgentSettings`] the bridge sends in `session.update` by [`Agent::to_settings`].
//! - Number routes: E.164 number → agent id ([`validate_number`]); the key [`DEFAULT_ROUTE`]
//!   names the default agent.
//! - [`CallRecord`]: the backend's `CallSession` (`realtimeSessionId` keeps its name).
//! - [`ConversationItem`]: one entry of the backend's `realtimeConversation`, appended in order.

use serde::{Deserialize, Serialize};

use callbridge_core::openai::session::{AgentSettings, TurnDetection as VadSettings};

/// The number-route key that names the default agent (`callbridge numbers put default AGENT`).
pub const DEFAULT_ROUTE: &str = "default";

/// Longest agent id: ids go into TwiML parameters and URLs.
pub const MAX_ID_LEN: usize = 64;

/// Longest instructions, bytes: OpenAI's own limit is far larger, but an agent document must
/// fit the admin API's 64 KiB body limit with its tools.
pub const MAX_INSTRUCTIONS_BYTES: usize = 32 * 1024;

/// Longest greeting, bytes (a sentence or two is spoken).
pub const MAX_GREETING_BYTES: usize = 2 * 1024;

/// Largest VAD prefix padding or silence duration, ms: ten seconds is far past any useful value.
pub const MAX_VAD_MS: u32 = 10_000;

/// The turn-detection type callbridge sends (protocol.md 5.2: `server_vad`).
pub const SERVER_VAD: &str = "server_vad";

/// Why a document cannot be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// An id is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("bad id {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ -")]
    BadId(String),
    /// A required text field is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A text field is too long.
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The voice is not a Realtime voice.
    #[error("unknown voice {0:?}: use one of alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin, cedar")]
    UnknownVoice(String),
    /// The language is not an ISO-639-1 code.
    #[error("bad language {0:?}: use an ISO-639-1 code such as \"ja\" or \"en\"")]
    BadLanguage(String),
    /// The turn-detection type is not supported.
    #[error("turn detection type {0:?} is not supported: callbridge sends \"server_vad\"")]
    BadTurnDetectionType(String),
    /// A VAD duration is out of range.
    #[error("{field} {value} ms is more than {MAX_VAD_MS} ms")]
    BadVadMs {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// The Realtime settings are invalid (threshold, speed, noise reduction, tools).
    #[error("{0}")]
    Settings(String),
    /// A phone number is not E.164.
    #[error("bad number {0:?}: use E.164 (+ and 1-15 digits, e.g. +81501234567) or \"default\"")]
    BadNumber(String),
}

/// An agent: who answers a call and how (the backend's `AgentSettings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Agent {
    /// Stable id: the key in the `agents` tree and the `agentId` stream parameter.
    pub id: String,
    /// Display name for people.
    pub name: String,
    /// Realtime output voice (one of [`callbridge_core::openai::session::VOICES`]).
    pub voice: String,
    /// System prompt.
    pub instructions: String,
    /// What the AI says first when the call connects; `None`: it waits for the caller.
    #[serde(default)]
    pub greeting: Option<String>,
    /// Caller transcription settings; `None`: no caller transcripts.
    #[serde(default = "default_transcription")]
    pub transcription: Option<Transcription>,
    /// Turn detection (server VAD).
    #[serde(default)]
    pub turn_detection: TurnDetection,
    /// OpenAI function tool definitions (`{"type":"function","name",…}`); executed by a later
    /// issue, sent to the model now.
    #[serde(default)]
    pub tools: Vec<serde_json::Value>,
    /// Output speed (0.25–1.5); `None`: the API default (1.0).
    #[serde(default)]
    pub speed: Option<f64>,
    /// `near_field` (handsets), `far_field`, or `None` (off).
    #[serde(default = "default_noise_reduction")]
    pub noise_reduction: Option<String>,
}

fn default_transcription() -> Option<Transcription> {
    Some(Transcription::default())
}

fn default_noise_reduction() -> Option<String> {
    Some("near_field".to_owned())
}

/// Caller transcription (`audio.input.transcription`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Transcription {
    /// Model (`gpt-4o-transcribe`, `gpt-4o-mini-transcribe`, `whisper-1`).
    pub model: String,
    /// ISO-639-1 language of the caller (`ja`); `None`: detected.
    #[serde(default)]
    pub language: Option<String>,
}

impl Default for Transcription {
    fn default() -> Self {
        Transcription {
            model: "gpt-4o-transcribe".to_owned(),
            language: None,
        }
    }
}

/// Turn detection (`audio.input.turn_detection`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TurnDetection {
    /// Only [`SERVER_VAD`] is supported.
    #[serde(rename = "type", default = "default_vad_type")]
    pub kind: String,
    /// Activation threshold, 0.0–1.0.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Audio kept before detected speech, ms.
    #[serde(default = "default_prefix_padding")]
    pub prefix_padding_ms: u32,
    /// Silence that ends a turn, ms.
    #[serde(default = "default_silence")]
    pub silence_duration_ms: u32,
}

fn default_vad_type() -> String {
    SERVER_VAD.to_owned()
}
fn default_threshold() -> f64 {
    VadSettings::default().threshold
}
fn default_prefix_padding() -> u32 {
    VadSettings::default().prefix_padding_ms
}
fn default_silence() -> u32 {
    VadSettings::default().silence_duration_ms
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection {
            kind: default_vad_type(),
            threshold: default_threshold(),
            prefix_padding_ms: default_prefix_padding(),
            silence_duration_ms: default_silence(),
        }
    }
}

/// Whether `id` is a usable agent id.
pub fn validate_id(id: &str) -> Result<(), ModelError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadId(id.to_owned()))
    }
}

/// Whether `number` is an E.164 number (`+`, then 1–15 digits, the first not 0) or
/// [`DEFAULT_ROUTE`].
pub fn validate_number(number: &str) -> Result<(), ModelError> {
    if number == DEFAULT_ROUTE {
        return Ok(());
    }
    let digits = number.strip_prefix('+').unwrap_or("");
    let ok = (1..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadNumber(number.to_owned()))
    }
}

fn check_len(field: &'static str, text: &str, max: usize) -> Result<(), ModelError> {
    if text.len() > max {
        return Err(ModelError::TooLong {
            field,
            len: text.len(),
            max,
        });
    }
    Ok(())
}

impl Agent {
    /// Checks everything OpenAI would reject or misread, with a message that names the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_id(&self.id)?;
        if self.name.trim().is_empty() {
            return Err(ModelError::Empty("name"));
        }
        check_len("name", &self.name, 200)?;
        if !callbridge_core::openai::session::VOICES.contains(&self.voice.as_str()) {
            return Err(ModelError::UnknownVoice(self.voice.clone()));
        }
        check_len("instructions", &self.instructions, MAX_INSTRUCTIONS_BYTES)?;
        if let Some(greeting) = &self.greeting {
            if greeting.trim().is_empty() {
                return Err(ModelError::Empty("greeting (omit it or use null for none)"));
            }
            check_len("greeting", greeting, MAX_GREETING_BYTES)?;
        }
        if let Some(t) = &self.transcription {
            if t.model.trim().is_empty() {
                return Err(ModelError::Empty("transcription.model"));
            }
            if let Some(lang) = &t.language {
                let ok = lang.len() == 2 && lang.bytes().all(|b| b.is_ascii_lowercase());
                if !ok {
                    return Err(ModelError::BadLanguage(lang.clone()));
                }
            }
        }
        let td = &self.turn_detection;
        if td.kind != SERVER_VAD {
            return Err(ModelError::BadTurnDetectionType(td.kind.clone()));
        }
        for (field, value) in [
            ("turnDetection.prefixPaddingMs", td.prefix_padding_ms),
            ("turnDetection.silenceDurationMs", td.silence_duration_ms),
        ] {
            if value > MAX_VAD_MS {
                return Err(ModelError::BadVadMs { field, value });
            }
        }
        self.to_settings()
            .validate()
            .map_err(|e| ModelError::Settings(e.to_string()))
    }

    /// The settings the bridge sends in `session.update`.
    pub fn to_settings(&self) -> AgentSettings {
        AgentSettings {
            id: self.id.clone(),
            voice: self.voice.clone(),
            instructions: self.instructions.clone(),
            greeting: self.greeting.clone(),
            transcription_model: self.transcription.as_ref().map(|t| t.model.clone()),
            language: self.transcription.as_ref().and_then(|t| t.language.clone()),
            turn_detection: VadSettings {
                threshold: self.turn_detection.threshold,
                prefix_padding_ms: self.turn_detection.prefix_padding_ms,
                silence_duration_ms: self.turn_detection.silence_duration_ms,
            },
            tools: self.tools.clone(),
            speed: self.speed,
            noise_reduction: self.noise_reduction.clone(),
        }
    }
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    /// The webhook answered; no stream yet.
    Ringing,
    /// The media stream started.
    InProgress,
    /// The caller hung up (Twilio `stop`).
    Completed,
    /// The call ended for another reason (network, protocol, timeouts).
    Failed,
    /// The caller went to the legacy conference (`USE_OPENAI_REALTIME=false`, overload, or the
    /// AI leg failed).
    Fallback,
}

impl CallStatus {
    /// The wire name (`ringing`, `in-progress`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ringing => "ringing",
            CallStatus::InProgress => "in-progress",
            CallStatus::Completed => "completed",
            CallStatus::Failed => "failed",
            CallStatus::Fallback => "fallback",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<CallStatus> {
        [
            CallStatus::Ringing,
            CallStatus::InProgress,
            CallStatus::Completed,
            CallStatus::Failed,
            CallStatus::Fallback,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// Token usage summed over a call's `response.done` events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// `response.done` events that reported usage.
    pub responses: u64,
    /// Sum of `input_tokens`.
    pub input_tokens: u64,
    /// Sum of `output_tokens`.
    pub output_tokens: u64,
    /// Sum of `total_tokens`.
    pub total_tokens: u64,
}

/// One call (the backend's `CallSession`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// Twilio `CallSid`: the key.
    pub call_sid: String,
    /// Twilio `streamSid`, once the stream started.
    #[serde(default)]
    pub stream_sid: Option<String>,
    /// Caller number.
    #[serde(default)]
    pub from: String,
    /// Called number.
    #[serde(default)]
    pub to: String,
    /// The agent that answered.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Where the call is.
    pub status: CallStatus,
    /// When the record was created (webhook, or stream start on another instance), unix ms.
    pub started_at_ms: u64,
    /// When the media stream started, unix ms.
    #[serde(default)]
    pub answered_at_ms: Option<u64>,
    /// When the call ended, unix ms.
    #[serde(default)]
    pub ended_at_ms: Option<u64>,
    /// OpenAI Realtime session id (the backend's name).
    #[serde(default)]
    pub realtime_session_id: Option<String>,
    /// Token usage summed from `response.done`.
    #[serde(default)]
    pub usage: UsageTotals,
    /// Barge-ins (clear + truncate).
    #[serde(default)]
    pub interruptions: u32,
    /// Why the call ended (or went to the fallback).
    #[serde(default)]
    pub end_reason: Option<String>,
    /// Conversation items stored.
    #[serde(default)]
    pub items: u32,
    /// Items dropped because the store queue was full (design.md: a full queue is counted, and
    /// the record says so).
    #[serde(default)]
    pub items_lost: u64,
}

impl CallRecord {
    /// A new record with nothing known but the sid, the status and the time.
    pub fn new(call_sid: &str, status: CallStatus, at_ms: u64) -> CallRecord {
        CallRecord {
            call_sid: call_sid.to_owned(),
            stream_sid: None,
            from: String::new(),
            to: String::new(),
            agent_id: None,
            status,
            started_at_ms: at_ms,
            answered_at_ms: None,
            ended_at_ms: None,
            realtime_session_id: None,
            usage: UsageTotals::default(),
            interruptions: 0,
            end_reason: None,
            items: 0,
            items_lost: 0,
        }
    }
}

/// One entry of a call's conversation (the backend's `realtimeConversation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationItem {
    /// Position in the call, from 0, in the order things happened.
    pub seq: u32,
    /// When it happened, unix ms.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: ItemKind,
}

/// What a conversation item says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemKind {
    /// The caller's words (input transcription completed).
    CallerTranscript {
        /// OpenAI user item id.
        #[serde(rename = "itemId")]
        item_id: String,
        /// Transcript, as sent.
        text: String,
    },
    /// The assistant's words (output transcript done).
    AssistantTranscript {
        /// OpenAI assistant item id.
        #[serde(rename = "itemId")]
        item_id: String,
        /// Transcript of what was generated.
        text: String,
        /// Cut short by a barge-in.
        #[serde(default)]
        interrupted: bool,
        /// When interrupted: the audio the caller heard, ms (`audio_end_ms` of the truncate).
        #[serde(rename = "heardMs", default, skip_serializing_if = "Option::is_none")]
        heard_ms: Option<u64>,
    },
    /// A barge-in: the caller spoke over the assistant.
    Interruption {
        /// The assistant item that was playing.
        #[serde(rename = "itemId")]
        item_id: String,
        /// What the caller heard of it, ms.
        #[serde(rename = "heardMs")]
        heard_ms: u64,
        /// Audio sent for it, ms.
        #[serde(rename = "sentMs")]
        sent_ms: u64,
    },
    /// The model called a tool.
    ToolCall {
        /// `call_id`.
        #[serde(rename = "callId")]
        call_id: String,
        /// Function name.
        name: String,
        /// Arguments (JSON text).
        arguments: String,
    },
    /// A tool's result, as sent back to the model.
    ToolResult {
        /// `call_id`.
        #[serde(rename = "callId")]
        call_id: String,
        /// Output (JSON text).
        output: String,
    },
    /// A DTMF key press.
    Dtmf {
        /// The key.
        digit: String,
    },
    /// An error on the call (OpenAI `error` event, protocol error, failure).
    Error {
        /// `openai`, `twilio` or `callbridge`.
        source: String,
        /// Error code, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// What happened.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        serde_json::from_str(
            r#"{"id":"sales-ja","name":"Sales","voice":"marin","instructions":"丁寧に。"}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_minimal_agent_gets_defaults_and_validates() {
        let a = agent();
        a.validate().unwrap();
        assert_eq!(a.turn_detection, TurnDetection::default());
        assert_eq!(a.transcription, Some(Transcription::default()));
        assert_eq!(a.to_settings().voice, "marin");
    }

    #[test]
    fn bad_agents_are_refused_with_the_field_named() {
        type Tweak = Box<dyn Fn(&mut Agent)>;
        let cases: Vec<(Tweak, &str)> = vec![
            (
                Box::new(|a| a.voice = "robot".into()),
                "unknown voice \"robot\"",
            ),
            (Box::new(|a| a.id = "a b".into()), "bad id"),
            (Box::new(|a| a.id = "x".repeat(65)), "bad id"),
            (Box::new(|a| a.name = " ".into()), "name must not be empty"),
            (
                Box::new(|a| a.turn_detection.kind = "semantic_vad".into()),
                "not supported",
            ),
            (Box::new(|a| a.turn_detection.threshold = 1.5), "threshold"),
            (Box::new(|a| a.speed = Some(3.0)), "speed"),
            (
                Box::new(|a| a.turn_detection.silence_duration_ms = 60_000),
                "silenceDurationMs",
            ),
            (
                Box::new(|a| {
                    a.transcription = Some(Transcription {
                        model: "gpt-4o-transcribe".into(),
                        language: Some("japanese".into()),
                    })
                }),
                "bad language",
            ),
            (
                Box::new(|a| a.tools = vec![serde_json::json!({"type": "x"})]),
                "tool 0",
            ),
            (Box::new(|a| a.greeting = Some("".into())), "greeting"),
        ];
        for (tweak, want) in cases {
            let mut a = agent();
            tweak(&mut a);
            let err = a.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn unknown_agent_fields_are_refused() {
        let err = serde_json::from_str::<Agent>(
            r#"{"id":"a","name":"A","voice":"marin","instructions":"","vocie":"x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `vocie`"), "{err}");
    }

    #[test]
    fn numbers_must_be_e164_or_default() {
        for ok in ["+81501234567", "+1", "default", "+123456789012345"] {
            validate_number(ok).unwrap();
        }
        for bad in [
            "81501234567",
            "+",
            "+0123",
            "+1234567890123456",
            "+81-50",
            "",
        ] {
            assert!(validate_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn items_serialize_with_their_type_tag() {
        let item = ConversationItem {
            seq: 3,
            at_ms: 10,
            kind: ItemKind::AssistantTranscript {
                item_id: "item_1".into(),
                text: "こんにちは".into(),
                interrupted: true,
                heard_ms: Some(1240),
            },
        };
        let v = serde_json::to_value(&item).unwrap();
        assert_eq!(v["type"], "assistant_transcript");
        assert_eq!(v["heardMs"], 1240);
        assert_eq!(v["itemId"], "item_1");
        let back: ConversationItem = serde_json::from_value(v).unwrap();
        assert_eq!(back, item);
        assert_eq!(
            CallStatus::parse("in-progress"),
            Some(CallStatus::InProgress)
        );
        assert_eq!(
            serde_json::to_value(CallStatus::InProgress).unwrap(),
            "in-progress"
        );
    }
}
