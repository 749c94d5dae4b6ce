//! OpenAI Realtime GA events (protocol.md section 5): server events parsed from a mutable frame
//! buffer (borrowing, simd-json unescapes in place); client events encoded into a caller buffer.
//!
//! INTERFACE CONTRACT (the bridge depends on these names and shapes; keep them).

/// One server event the bridge cares about. Everything else is [`ServerEvent::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent<'a> {
    /// `session.created`.
    SessionCreated {
        /// `session.id`, when present.
        session_id: Option<&'a str>,
    },
    /// `session.updated`: the effective configuration.
    SessionUpdated {
        /// `session.id`, when present.
        session_id: Option<&'a str>,
        /// `session.audio.input.format.type`.
        input_format: Option<&'a str>,
        /// `session.audio.output.format.type`.
        output_format: Option<&'a str>,
    },
    /// `error`.
    Error(ApiError<'a>),
    /// `input_audio_buffer.speech_started`: the barge-in trigger.
    SpeechStarted {
        /// `item_id` of the future user item.
        item_id: Option<&'a str>,
        /// Position on the input timeline (not usable for truncation).
        audio_start_ms: u64,
    },
    /// `input_audio_buffer.speech_stopped`.
    SpeechStopped {
        /// `item_id`.
        item_id: Option<&'a str>,
        /// Position on the input timeline.
        audio_end_ms: u64,
    },
    /// `conversation.item.input_audio_transcription.completed`: the caller's words.
    InputTranscriptionCompleted {
        /// The user item.
        item_id: &'a str,
        /// The transcript text.
        transcript: &'a str,
    },
    /// `conversation.item.input_audio_transcription.failed`.
    InputTranscriptionFailed {
        /// The user item.
        item_id: &'a str,
        /// `error.message`, when present.
        message: &'a str,
    },
    /// `response.created`.
    ResponseCreated {
        /// `response.id`.
        response_id: &'a str,
    },
    /// `response.output_item.added`.
    OutputItemAdded {
        /// `response_id`.
        response_id: &'a str,
        /// `item.id`.
        item_id: &'a str,
        /// `item.type`: `message`, `function_call`, …
        item_type: &'a str,
    },
    /// `response.output_audio.delta`: assistant audio to forward unchanged.
    OutputAudioDelta {
        /// `response_id`.
        response_id: &'a str,
        /// `item_id`.
        item_id: &'a str,
        /// `delta`: base64 μ-law.
        delta_b64: &'a str,
    },
    /// `response.output_audio.done`.
    OutputAudioDone {
        /// `response_id`.
        response_id: &'a str,
        /// `item_id`.
        item_id: &'a str,
    },
    /// `response.output_audio_transcript.done`: what the assistant said (generated, not heard).
    OutputAudioTranscriptDone {
        /// `response_id`.
        response_id: &'a str,
        /// `item_id`.
        item_id: &'a str,
        /// The transcript.
        transcript: &'a str,
    },
    /// `response.function_call_arguments.done`: a tool call.
    FunctionCallArgumentsDone {
        /// `response_id`.
        response_id: &'a str,
        /// `item_id`.
        item_id: &'a str,
        /// `call_id`, echoed in the `function_call_output`.
        call_id: &'a str,
        /// The function name.
        name: &'a str,
        /// The arguments, JSON text.
        arguments: &'a str,
    },
    /// `response.done`.
    ResponseDone {
        /// `response.id`.
        response_id: &'a str,
        /// `response.status`.
        status: &'a str,
        /// `response.status_details.reason`, when present.
        reason: Option<&'a str>,
        /// `response.usage`, when present.
        usage: Option<Usage>,
    },
    /// `conversation.item.truncated`.
    ItemTruncated {
        /// `item_id`.
        item_id: &'a str,
        /// `audio_end_ms`.
        audio_end_ms: u64,
    },
    /// Any other well-formed event (logged at debug, otherwise ignored).
    Other {
        /// The event `type`.
        event_type: &'a str,
    },
}

/// The `error` object of an `error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError<'a> {
    /// `error.type`.
    pub error_type: &'a str,
    /// `error.code`.
    pub code: Option<&'a str>,
    /// `error.message`.
    pub message: &'a str,
    /// `error.event_id`: our id of the client event that failed.
    pub event_id: Option<&'a str>,
}

/// Token usage of one response (`response.usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `total_tokens`.
    pub total_tokens: u64,
    /// `input_tokens`.
    pub input_tokens: u64,
    /// `output_tokens`.
    pub output_tokens: u64,
}

/// Why a server frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenAiParseError {
    /// Not a JSON object.
    #[error("not a json object: {0}")]
    NotJson(String),
    /// A required field is missing or has the wrong type.
    #[error("event {event}: bad or missing field {field}")]
    BadField {
        /// The event type.
        event: String,
        /// The field.
        field: &'static str,
    },
    /// An audio delta is not valid base64.
    #[error("audio delta is not valid base64")]
    BadBase64,
}

impl OpenAiParseError {
    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            OpenAiParseError::NotJson(_) => "not_json",
            OpenAiParseError::BadField { .. } => "bad_field",
            OpenAiParseError::BadBase64 => "bad_base64",
        }
    }
}

/// Parses server frames with reusable scratch buffers.
#[derive(Default)]
pub struct ServerEventParser {}

impl ServerEventParser {
    /// A parser with empty scratch buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one text frame (modified in place); the event borrows it.
    pub fn parse<'a>(&mut self, _frame: &'a mut [u8]) -> Result<ServerEvent<'a>, OpenAiParseError> {
        unimplemented!("openai-events work")
    }
}

/// Appends `{"type":"input_audio_buffer.append","audio":…}` (audio passed through as is).
pub fn encode_append(_out: &mut Vec<u8>, _audio_b64: &str) {
    unimplemented!("openai-events work")
}

/// Appends a `conversation.item.truncate` with `content_index` 0.
pub fn encode_truncate(_out: &mut Vec<u8>, _event_id: &str, _item_id: &str, _audio_end_ms: u64) {
    unimplemented!("openai-events work")
}

/// Appends a `conversation.item.create` carrying a `function_call_output`.
pub fn encode_function_output(_out: &mut Vec<u8>, _event_id: &str, _call_id: &str, _output: &str) {
    unimplemented!("openai-events work")
}

/// Appends a `conversation.item.create` carrying a user `input_text` message.
pub fn encode_user_text(_out: &mut Vec<u8>, _event_id: &str, _text: &str) {
    unimplemented!("openai-events work")
}

/// Appends a `response.create` (optionally with `response.instructions`).
pub fn encode_response_create(_out: &mut Vec<u8>, _event_id: &str, _instructions: Option<&str>) {
    unimplemented!("openai-events work")
}

/// Appends a `response.cancel`.
pub fn encode_response_cancel(_out: &mut Vec<u8>, _event_id: &str) {
    unimplemented!("openai-events work")
}
