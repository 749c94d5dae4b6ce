//! Why the mock rejected a client event, and the `error` server event it sends for it.
//!
//! The messages imitate the real server's wording (sentence case, like OpenAI's), so they break
//! this crate's "short lowercase messages" rule on purpose: they are wire text, not Rust errors
//! for humans. Where protocol.md quotes a message it is used verbatim; every other message and
//! `code` is a best guess, marked "(guess)" on its variant. Clients must match on the echoed
//! `event_id`, never on the text.

use serde_json::{json, Value};

/// The `error.type` of every rejection (the real server uses it for all client mistakes).
pub const INVALID_REQUEST_ERROR: &str = "invalid_request_error";

/// A client event the mock refused. Each becomes one `error` server event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MockRejection {
    /// The text frame is not JSON (guess: code `invalid_json`).
    #[error("Invalid JSON in client event: {0}")]
    InvalidJson(String),
    /// A required field is missing or has the wrong JSON type (code
    /// `missing_required_parameter`, as the real server).
    #[error("Missing required parameter: '{0}'.")]
    MissingParameter(String),
    /// A field the GA interface does not know, e.g. beta-era `session.modalities` (code
    /// `unknown_parameter`, as the real server).
    #[error("Unknown parameter: '{0}'.")]
    UnknownParameter(String),
    /// The event `type` is not a client event (code `invalid_value`, param `type`; the real
    /// server lists the supported values like this, wording a guess).
    #[error("Invalid value: '{0}'. Supported values are: {supported}.", supported = supported_types())]
    UnknownEventType(String),
    /// The validation hook (the client JSON Schema) refused the event (code `invalid_value`).
    #[error("Invalid client event: {0}")]
    SchemaViolation(String),
    /// A field has a value the mock refuses (code `invalid_value`).
    #[error("Invalid value for '{param}': {reason}")]
    InvalidValue {
        /// Dotted path of the field.
        param: String,
        /// What is wrong.
        reason: String,
    },
    /// `input_audio_buffer.append` audio is not valid base64 (guess: code `invalid_value`).
    #[error("Invalid 'audio'. Expected base64-encoded audio bytes: {0}")]
    InvalidAudio(String),
    /// Mock-only: caller audio arrived before `session.updated` (protocol.md 5.1), while the
    /// session still expected 24 kHz PCM. The real server would silently misread it.
    #[error("callbridge must not send audio before session.updated")]
    AudioBeforeSessionUpdated,
    /// `conversation.item.truncate` past the audio of the item (protocol.md 5.5, verbatim).
    #[error("Audio content of {sent_ms}ms is already shorter than {requested_ms}ms")]
    TruncatePastAudio {
        /// Audio the item has, ms (what the mock sent, or a shorter earlier truncate).
        sent_ms: u64,
        /// The requested `audio_end_ms`.
        requested_ms: u64,
    },
    /// An `item_id` the conversation does not hold (guess: code `invalid_value`).
    #[error("Item with item_id '{0}' not found.")]
    ItemNotFound(String),
    /// A truncate of an item that is not an assistant message with audio (guess).
    #[error("Only assistant messages with audio can be truncated, '{0}' is not one.")]
    NotTruncatable(String),
    /// `response.create` during a response (protocol.md 5.5, verbatim; guess: code
    /// `conversation_already_has_active_response`).
    #[error("Conversation already has an active response in progress")]
    ActiveResponse,
    /// `response.cancel` with nothing to cancel (protocol.md 5.5, verbatim; guess: code
    /// `response_cancel_not_active`).
    #[error("Cancellation failed: no active response found")]
    NoActiveResponse,
    /// `function_call_output` for a `call_id` the conversation never had (guess).
    #[error("Tool call ID '{0}' not found in conversation.")]
    UnknownCallId(String),
    /// Mock-only: `response.create` while the scripted function call still waits for its
    /// `function_call_output` (the model would answer without the tool result).
    #[error("mock: response.create before function_call_output for call_id '{0}'")]
    FunctionCallOutputMissing(String),
    /// `input_audio_buffer.commit` with under 100 ms buffered (guess of the real wording; code
    /// `input_audio_buffer_commit_empty`).
    #[error("Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only has {0}ms of audio.")]
    CommitTooSmall(u64),
    /// A voice change after the session produced audio (guess of the real wording; code
    /// `cannot_update_voice`).
    #[error("Cannot update a conversation's voice if assistant audio is present.")]
    VoiceLocked,
    /// A valid client event the mock does not implement (code `unsupported_by_mock`).
    #[error("mock: '{0}' is not supported by the mock server")]
    Unsupported(String),
    /// The scripted session lifetime ended (the real server's 60-minute limit; guess of the
    /// wording; code `session_expired`).
    #[error("Your session hit the maximum duration of 60 minutes.")]
    SessionExpired,
}

/// Every client event type of the GA interface (client schema), for [`MockRejection::UnknownEventType`].
pub const CLIENT_EVENT_TYPES: [&str; 11] = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
];

/// `'a', 'b', …` of [`CLIENT_EVENT_TYPES`].
fn supported_types() -> String {
    CLIENT_EVENT_TYPES
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl MockRejection {
    /// The `error.code` sent for this rejection.
    pub fn code(&self) -> &'static str {
        match self {
            MockRejection::InvalidJson(_) => "invalid_json",
            MockRejection::MissingParameter(_) => "missing_required_parameter",
            MockRejection::UnknownParameter(_) => "unknown_parameter",
            MockRejection::ActiveResponse => "conversation_already_has_active_response",
            MockRejection::NoActiveResponse => "response_cancel_not_active",
            MockRejection::CommitTooSmall(_) => "input_audio_buffer_commit_empty",
            MockRejection::VoiceLocked => "cannot_update_voice",
            MockRejection::Unsupported(_) => "unsupported_by_mock",
            MockRejection::SessionExpired => "session_expired",
            MockRejection::UnknownEventType(_)
            | MockRejection::SchemaViolation(_)
            | MockRejection::InvalidValue { .. }
            | MockRejection::InvalidAudio(_)
            | MockRejection::AudioBeforeSessionUpdated
            | MockRejection::TruncatePastAudio { .. }
            | MockRejection::ItemNotFound(_)
            | MockRejection::NotTruncatable(_)
            | MockRejection::UnknownCallId(_)
            | MockRejection::FunctionCallOutputMissing(_) => "invalid_value",
        }
    }

    /// The `error.param` sent for this rejection, when one field is to blame.
    pub fn param(&self) -> Option<String> {
        match self {
            MockRejection::MissingParameter(p) | MockRejection::UnknownParameter(p) => {
                Some(p.clone())
            }
            MockRejection::InvalidValue { param, .. } => Some(param.clone()),
            MockRejection::UnknownEventType(_) => Some("type".to_owned()),
            MockRejection::InvalidAudio(_) | MockRejection::AudioBeforeSessionUpdated => {
                Some("audio".to_owned())
            }
            MockRejection::TruncatePastAudio { .. } => Some("audio_end_ms".to_owned()),
            MockRejection::ItemNotFound(_) | MockRejection::NotTruncatable(_) => {
                Some("item_id".to_owned())
            }
            MockRejection::UnknownCallId(_) => Some("item.call_id".to_owned()),
            _ => None,
        }
    }

    /// The `error` server event (without its own `event_id`, which the session adds), echoing
    /// the failing client event's `event_id` as `error.event_id`.
    pub(super) fn to_event(&self, client_event_id: Option<&str>) -> Value {
        json!({
            "type": "error",
            "error": {
                "type": INVALID_REQUEST_ERROR,
                "code": self.code(),
                "message": self.to_string(),
                "param": self.param(),
                "event_id": client_event_id,
            }
        })
    }
}

/// An `error` event the mock sent (kept in [`super::MockStats::errors`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SentError {
    /// Why.
    pub rejection: MockRejection,
    /// The failing client event's `event_id`, echoed as `error.event_id`.
    pub client_event_id: Option<String>,
    /// The `type` of the failing client event, when it had a readable one.
    pub client_event_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_error_event_matches_protocol_example() {
        let rejection = MockRejection::TruncatePastAudio {
            sent_ms: 980,
            requested_ms: 1240,
        };
        let event = rejection.to_event(Some("evt_client_17"));
        assert_eq!(event["type"], "error");
        assert_eq!(event["error"]["type"], "invalid_request_error");
        assert_eq!(event["error"]["code"], "invalid_value");
        assert_eq!(
            event["error"]["message"],
            "Audio content of 980ms is already shorter than 1240ms"
        );
        assert_eq!(event["error"]["event_id"], "evt_client_17");
    }

    #[test]
    fn error_without_client_event_id_sends_null() {
        let event = MockRejection::ActiveResponse.to_event(None);
        assert!(event["error"]["event_id"].is_null());
        assert!(event["error"]["param"].is_null());
    }

    #[test]
    fn unknown_type_message_lists_supported_values() {
        let message = MockRejection::UnknownEventType("foo".into()).to_string();
        assert!(message.starts_with("Invalid value: 'foo'. Supported values are: 'session.update'"));
        assert!(message.ends_with("'output_audio_buffer.clear'."));
    }
}
