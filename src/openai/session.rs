//! The agent's settings and the GA `session.update` built from them (protocol.md 5.2).
//!
//! INTERFACE CONTRACT (the bridge depends on these names and shapes; keep them).

use serde::{Deserialize, Serialize};

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

/// Appends the `session.update` for `agent` on `model` to `out`.
pub fn encode_session_update(
    _out: &mut Vec<u8>,
    _event_id: &str,
    _model: &str,
    _agent: &AgentSettings,
) {
    unimplemented!("openai-events work")
}

impl AgentSettings {
    /// Checks the settings (temporary; replaced by the openai-events work).
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
