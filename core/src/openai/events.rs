//! OpenAI Realtime GA events (protocol.md section 5): server events parsed from a mutable frame
//! buffer (borrowing, simd-json unescapes in place); client events encoded into a caller buffer.
//!
//! INTERFACE CONTRACT (the bridge depends on these names and shapes; keep them).
//!
//! Parsing goes through simd-json's tape (a flat list of nodes, strings borrowed from the frame),
//! with the tape and simd-json's scratch buffers kept by [`ServerEventParser`] between frames, so
//! a parse allocates nothing once the buffers have grown to the largest frame. Fields are then
//! looked up by path (`response.status_details.reason`) and checked one by one, which gives a
//! precise [`OpenAiParseError::BadField`] instead of a generic serde error.
//!
//! # Fast path for audio deltas
//!
//! Most server frames of a call are `response.output_audio.delta` (ten or more per second of
//! assistant speech). [`ServerEventParser::parse`] first offers each frame to the allocation-free
//! [`flat_json`] scanner: a flat object without escapes whose `type` is the delta type and whose
//! `response_id`, `item_id` and `delta` are strings becomes [`ServerEvent::OutputAudioDelta`]
//! directly. Every other frame, every malformed one included, goes to the tape path
//! ([`ServerEventParser::parse_full`]), which is the reference: whenever the fast path answers,
//! its answer equals the tape path's (a property test checks it on generated and mutated frames).

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use crate::wire::flat_json::{self, FlatObject, FlatValue, Span};
use crate::wire::json_out::{write_str, write_u64};
use crate::wire::json_scratch;

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
        /// `response.id` (optional in the GA schema).
        response_id: Option<&'a str>,
    },
    /// `response.output_item.added`.
    OutputItemAdded {
        /// `response_id`.
        response_id: &'a str,
        /// `item.id` (optional in the GA schema).
        item_id: Option<&'a str>,
        /// `item.type`: `message`, `function_call`, …
        item_type: &'a str,
    },
    /// `response.content_part.added`: a part of an assistant message item (its audio, or text).
    ContentPartAdded {
        /// `response_id`.
        response_id: &'a str,
        /// `item_id`.
        item_id: &'a str,
        /// `content_index`.
        content_index: u64,
        /// `part.type`: `audio` (or `output_audio`), `text`; absent or `null` allowed.
        part_type: Option<&'a str>,
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
        /// `response.id` (optional in the GA schema).
        response_id: Option<&'a str>,
        /// `response.status`.
        status: ResponseStatus,
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
    /// `error.param`: the parameter at fault, when the server names one
    /// (`session.audio.output.voice`).
    pub param: Option<&'a str>,
}

/// How a response ended (`response.done`'s `response.status`, protocol.md 5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStatus {
    /// `completed`.
    Completed,
    /// `cancelled` (a barge-in's `turn_detected`, or our `response.cancel`).
    Cancelled,
    /// `incomplete` (e.g. `max_output_tokens`).
    Incomplete,
    /// `failed`.
    Failed,
    /// Absent, or a value this version does not know.
    Other,
}

impl ResponseStatus {
    /// The status of a `response.status` value.
    pub fn parse(s: &str) -> ResponseStatus {
        match s {
            "completed" => ResponseStatus::Completed,
            "cancelled" => ResponseStatus::Cancelled,
            "incomplete" => ResponseStatus::Incomplete,
            "failed" => ResponseStatus::Failed,
            _ => ResponseStatus::Other,
        }
    }
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

/// Label used as the event name of a [`OpenAiParseError::BadField`] when the frame has no usable
/// `type`.
const UNKNOWN_EVENT: &str = "<no type>";

/// Parses server frames with reusable scratch buffers.
///
/// simd-json's scratch space and the node list of the last tape are kept per thread
/// ([`json_scratch`]), not per parser: both keep their capacity from frame to frame, so
/// steady-state parsing does not allocate, and they are sized by the largest non-delta event
/// (`session.updated` with long instructions), ~15 KiB that every call kept for its whole life
/// when they lived here.
#[derive(Default)]
pub struct ServerEventParser {
    _private: (),
}

impl ServerEventParser {
    /// A parser (zero-sized: the scratch space is per thread, so building one costs nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one text frame (modified in place); the event borrows it.
    ///
    /// simd-json unescapes strings inside `frame`, so every `&str` of the event is the decoded
    /// text even when the wire form had `\uXXXX` or `\"` escapes. Unknown event types give
    /// [`ServerEvent::Other`]; unknown fields are ignored.
    ///
    /// Audio deltas of the usual shape take the allocation-free fast path (see the module docs);
    /// the answer is the same as [`ServerEventParser::parse_full`]'s.
    pub fn parse<'a>(&mut self, frame: &'a mut [u8]) -> Result<ServerEvent<'a>, OpenAiParseError> {
        // Two phases because of the borrow checker: the scan borrows the frame only briefly and
        // returns byte ranges; only if it answers do we give up the mutable borrow and build
        // `&'a str`s from those ranges. Otherwise the frame is still free for simd-json.
        match FastDelta::scan(frame) {
            Some(found) => found.build(frame),
            None => self.parse_full(frame),
        }
    }

    /// Parses one text frame with simd-json's tape only, without trying the fast path. Gives the
    /// same result as [`ServerEventParser::parse`]; exists for tests and benchmarks.
    pub fn parse_full<'a>(
        &mut self,
        frame: &'a mut [u8],
    ) -> Result<ServerEvent<'a>, OpenAiParseError> {
        json_scratch::parse_tape(frame, event_from_root)
            .unwrap_or_else(|e| Err(OpenAiParseError::NotJson(e.to_string())))
    }
}

/// The `type` of an audio delta.
const AUDIO_DELTA: &str = "response.output_audio.delta";

/// An audio delta recognised by the fast path, its strings as spans of the frame (checked:
/// valid UTF-8, no escapes).
#[derive(Debug)]
struct FastDelta {
    /// `response_id`.
    response_id: Span,
    /// `item_id`.
    item_id: Span,
    /// `delta`.
    delta: Span,
}

impl FastDelta {
    /// Recognises a flat audio delta whose three fields are plain strings; `None` for anything
    /// else (the tape path then decides, including every error).
    fn scan(frame: &[u8]) -> Option<FastDelta> {
        let mut obj = FlatObject::new();
        if !flat_json::scan(frame, &mut obj) {
            return None;
        }
        // The scanner guarantees each top-level key appears once, so `get` sees the only copy.
        let text = |key: &str| match obj.get(None, key) {
            Some(FlatValue::Str(s)) => Some(s),
            _ => None,
        };
        if text("type")? != AUDIO_DELTA {
            return None;
        }
        let span = |s: &str| Span::of(frame, s);
        Some(FastDelta {
            response_id: span(text("response_id")?),
            item_id: span(text("item_id")?),
            delta: span(text("delta")?),
        })
    }

    /// Builds the event from the ranges found by [`FastDelta::scan`] on this same `frame`.
    fn build(self, frame: &[u8]) -> Result<ServerEvent<'_>, OpenAiParseError> {
        // The scan already validated these slices as UTF-8, so the error arm cannot be taken;
        // should it ever be, "not json" is still the truthful answer.
        let text = |span: Span| {
            span.text(frame)
                .ok_or_else(|| OpenAiParseError::NotJson("invalid utf-8".to_owned()))
        };
        Ok(ServerEvent::OutputAudioDelta {
            response_id: text(self.response_id)?,
            item_id: text(self.item_id)?,
            delta_b64: text(self.delta)?,
        })
    }
}

/// Builds the event from the parsed document; the strings it returns live as long as the frame
/// (`'a`), not the tape.
fn event_from_root<'a>(root: TapeValue<'_, 'a>) -> Result<ServerEvent<'a>, OpenAiParseError> {
    if root.as_object().is_none() {
        return Err(OpenAiParseError::NotJson(format!(
            "top level is {:?}, not an object",
            root.value_type()
        )));
    }
    let event_type = match root.get("type").and_then(TapeValue::into_string) {
        Some(t) => t,
        None => return Err(bad_field(UNKNOWN_EVENT, "type")),
    };
    let f = Fields { root, event_type };
    match event_type {
        AUDIO_DELTA => Ok(ServerEvent::OutputAudioDelta {
            response_id: f.str("response_id")?,
            item_id: f.str("item_id")?,
            delta_b64: f.str("delta")?,
        }),
        "session.created" => Ok(ServerEvent::SessionCreated {
            session_id: f.session_id()?,
        }),
        "session.updated" => Ok(ServerEvent::SessionUpdated {
            session_id: f.session_id()?,
            input_format: f.opt_str("session.audio.input.format.type")?,
            output_format: f.opt_str("session.audio.output.format.type")?,
        }),
        "error" => f.api_error().map(ServerEvent::Error),
        "input_audio_buffer.speech_started" => Ok(ServerEvent::SpeechStarted {
            item_id: f.opt_str("item_id")?,
            audio_start_ms: f.u64("audio_start_ms")?,
        }),
        "input_audio_buffer.speech_stopped" => Ok(ServerEvent::SpeechStopped {
            item_id: f.opt_str("item_id")?,
            audio_end_ms: f.u64("audio_end_ms")?,
        }),
        "conversation.item.input_audio_transcription.completed" => {
            Ok(ServerEvent::InputTranscriptionCompleted {
                item_id: f.str("item_id")?,
                transcript: f.str("transcript")?,
            })
        }
        "conversation.item.input_audio_transcription.failed" => {
            Ok(ServerEvent::InputTranscriptionFailed {
                item_id: f.str("item_id")?,
                message: f.opt_str("error.message")?.unwrap_or(""),
            })
        }
        // `RealtimeResponse` has no required field in the GA schema: an absent `id` is
        // schema-valid (`None`), an absent `status` reads as unknown, while `response` itself is
        // required.
        "response.created" => {
            f.require_object("response")?;
            Ok(ServerEvent::ResponseCreated {
                response_id: f.opt_str("response.id")?,
            })
        }
        // Every conversation item variant of the GA schema makes `id` optional, `type` required.
        "response.output_item.added" => Ok(ServerEvent::OutputItemAdded {
            response_id: f.str("response_id")?,
            item_id: f.opt_str("item.id")?,
            item_type: f.str("item.type")?,
        }),
        "response.content_part.added" => Ok(ServerEvent::ContentPartAdded {
            response_id: f.str("response_id")?,
            item_id: f.str("item_id")?,
            content_index: f.u64("content_index")?,
            part_type: f.opt_str("part.type")?,
        }),
        "response.output_audio.done" => Ok(ServerEvent::OutputAudioDone {
            response_id: f.str("response_id")?,
            item_id: f.str("item_id")?,
        }),
        "response.output_audio_transcript.done" => Ok(ServerEvent::OutputAudioTranscriptDone {
            response_id: f.str("response_id")?,
            item_id: f.str("item_id")?,
            transcript: f.str("transcript")?,
        }),
        "response.function_call_arguments.done" => Ok(ServerEvent::FunctionCallArgumentsDone {
            response_id: f.str("response_id")?,
            item_id: f.str("item_id")?,
            call_id: f.str("call_id")?,
            name: f.str("name")?,
            arguments: f.str("arguments")?,
        }),
        "response.done" => {
            f.require_object("response")?;
            Ok(ServerEvent::ResponseDone {
                response_id: f.opt_str("response.id")?,
                status: ResponseStatus::parse(f.opt_str("response.status")?.unwrap_or("")),
                reason: f.opt_str("response.status_details.reason")?,
                usage: f.usage()?,
            })
        }
        "conversation.item.truncated" => Ok(ServerEvent::ItemTruncated {
            item_id: f.str("item_id")?,
            audio_end_ms: f.u64("audio_end_ms")?,
        }),
        _ => Ok(ServerEvent::Other { event_type }),
    }
}

fn bad_field(event: &str, field: &'static str) -> OpenAiParseError {
    OpenAiParseError::BadField {
        event: event.to_owned(),
        field,
    }
}

/// Typed access to the fields of one event by dotted path (`response.usage.total_tokens`); the
/// path doubles as the field name in errors.
struct Fields<'t, 'a> {
    /// The event object.
    root: TapeValue<'t, 'a>,
    /// Its `type`, for errors.
    event_type: &'a str,
}

impl<'t, 'a> Fields<'t, 'a> {
    /// The value at `path`: `Ok(None)` when it, or an object on the way, is absent or `null`;
    /// an error when something on the way is neither an object nor `null`.
    fn lookup(&self, path: &'static str) -> Result<Option<TapeValue<'t, 'a>>, OpenAiParseError> {
        let mut current = self.root;
        for key in path.split('.') {
            if current.is_null() {
                return Ok(None);
            }
            let Some(object) = current.as_object() else {
                return Err(bad_field(self.event_type, path));
            };
            match object.get(key) {
                Some(next) => current = next,
                None => return Ok(None),
            }
        }
        Ok((!current.is_null()).then_some(current))
    }

    /// A string that may be absent or `null`, but not of another type.
    fn opt_str(&self, path: &'static str) -> Result<Option<&'a str>, OpenAiParseError> {
        match self.lookup(path)? {
            None => Ok(None),
            Some(v) => v
                .into_string()
                .map(Some)
                .ok_or_else(|| bad_field(self.event_type, path)),
        }
    }

    /// A required string.
    fn str(&self, path: &'static str) -> Result<&'a str, OpenAiParseError> {
        self.opt_str(path)?
            .ok_or_else(|| bad_field(self.event_type, path))
    }

    /// A non-negative integer that may be absent or `null`.
    fn opt_u64(&self, path: &'static str) -> Result<Option<u64>, OpenAiParseError> {
        match self.lookup(path)? {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad_field(self.event_type, path)),
        }
    }

    /// A required non-negative integer.
    fn u64(&self, path: &'static str) -> Result<u64, OpenAiParseError> {
        self.opt_u64(path)?
            .ok_or_else(|| bad_field(self.event_type, path))
    }

    /// Requires `path` to be an object (present and not `null`).
    fn require_object(&self, path: &'static str) -> Result<(), OpenAiParseError> {
        match self.lookup(path)? {
            Some(v) if v.as_object().is_some() => Ok(()),
            _ => Err(bad_field(self.event_type, path)),
        }
    }

    /// `session.id` of a `session.created` / `session.updated`, whose `session` is required.
    fn session_id(&self) -> Result<Option<&'a str>, OpenAiParseError> {
        self.require_object("session")?;
        self.opt_str("session.id")
    }

    /// The `error` object of an `error` event.
    fn api_error(&self) -> Result<ApiError<'a>, OpenAiParseError> {
        self.require_object("error")?;
        Ok(ApiError {
            error_type: self.str("error.type")?,
            code: self.opt_str("error.code")?,
            message: self.str("error.message")?,
            event_id: self.opt_str("error.event_id")?,
            param: self.opt_str("error.param")?,
        })
    }

    /// `response.usage` of a `response.done`; absent counters (nullable in the schema) are 0.
    fn usage(&self) -> Result<Option<Usage>, OpenAiParseError> {
        if self.lookup("response.usage")?.is_none() {
            return Ok(None);
        }
        self.require_object("response.usage")?;
        Ok(Some(Usage {
            total_tokens: self.opt_u64("response.usage.total_tokens")?.unwrap_or(0),
            input_tokens: self.opt_u64("response.usage.input_tokens")?.unwrap_or(0),
            output_tokens: self.opt_u64("response.usage.output_tokens")?.unwrap_or(0),
        }))
    }
}

/// Appends `,"event_id":"…"` (event ids let the server's `error.event_id` name the failing event).
fn write_event_id(out: &mut Vec<u8>, event_id: &str) {
    out.extend_from_slice(b",\"event_id\":");
    write_str(out, event_id);
}

/// Appends `{"type":"input_audio_buffer.append","audio":…}` (audio passed through as is).
///
/// `audio_b64` is copied without escaping: the caller must pass base64 text (the Twilio
/// `media.payload`, checked by the Twilio layer), which never needs JSON escapes. No `event_id`:
/// appends have no reply, and there are fifty a second.
pub fn encode_append(out: &mut Vec<u8>, audio_b64: &str) {
    out.extend_from_slice(b"{\"type\":\"input_audio_buffer.append\",\"audio\":\"");
    out.extend_from_slice(audio_b64.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Appends a `conversation.item.truncate` with `content_index` 0.
pub fn encode_truncate(out: &mut Vec<u8>, event_id: &str, item_id: &str, audio_end_ms: u64) {
    out.extend_from_slice(b"{\"type\":\"conversation.item.truncate\"");
    write_event_id(out, event_id);
    out.extend_from_slice(b",\"item_id\":");
    write_str(out, item_id);
    out.extend_from_slice(b",\"content_index\":0,\"audio_end_ms\":");
    write_u64(out, audio_end_ms);
    out.push(b'}');
}

/// Appends a `conversation.item.create` carrying a `function_call_output`.
pub fn encode_function_output(out: &mut Vec<u8>, event_id: &str, call_id: &str, output: &str) {
    out.extend_from_slice(b"{\"type\":\"conversation.item.create\"");
    write_event_id(out, event_id);
    out.extend_from_slice(b",\"item\":{\"type\":\"function_call_output\",\"call_id\":");
    write_str(out, call_id);
    out.extend_from_slice(b",\"output\":");
    write_str(out, output);
    out.extend_from_slice(b"}}");
}

/// The `output` of a `function_call_output` for a tool the bridge cannot run: a JSON object
/// whose `error` says so, for the model to tell the caller.
pub fn tool_unavailable_output(name: &str) -> String {
    let mut out = b"{\"error\":".to_vec();
    write_str(
        &mut out,
        &format!("the tool {name} is not available right now"),
    );
    out.push(b'}');
    String::from_utf8(out).expect("json_out writes UTF-8")
}

/// Appends a `conversation.item.create` carrying a user `input_text` message.
pub fn encode_user_text(out: &mut Vec<u8>, event_id: &str, text: &str) {
    out.extend_from_slice(b"{\"type\":\"conversation.item.create\"");
    write_event_id(out, event_id);
    out.extend_from_slice(
        b",\"item\":{\"type\":\"message\",\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":",
    );
    write_str(out, text);
    out.extend_from_slice(b"}]}}");
}

/// Appends a `response.create` (optionally with `response.instructions`).
pub fn encode_response_create(out: &mut Vec<u8>, event_id: &str, instructions: Option<&str>) {
    out.extend_from_slice(b"{\"type\":\"response.create\"");
    write_event_id(out, event_id);
    if let Some(instructions) = instructions {
        out.extend_from_slice(b",\"response\":{\"instructions\":");
        write_str(out, instructions);
        out.push(b'}');
    }
    out.push(b'}');
}

/// Appends a `response.cancel`.
pub fn encode_response_cancel(out: &mut Vec<u8>, event_id: &str) {
    out.extend_from_slice(b"{\"type\":\"response.cancel\"");
    write_event_id(out, event_id);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::json_render::{mutate, mutation, render, J};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use proptest::prelude::*;

    /// Parses `text` with a fresh parser; the frame is leaked so the event can be returned.
    fn parse(text: &str) -> Result<ServerEvent<'static>, OpenAiParseError> {
        let frame: &'static mut [u8] = Box::leak(text.as_bytes().to_vec().into_boxed_slice());
        ServerEventParser::new().parse(frame)
    }

    fn bad(event: &str, field: &'static str) -> OpenAiParseError {
        OpenAiParseError::BadField {
            event: event.to_owned(),
            field,
        }
    }

    // Compact examples of protocol.md 5.4, verbatim (the test kit checks them all against the
    // GA schema: testkit/tests/openai_events.rs).
    const EX_DELTA: &str = r#"{"type": "response.output_audio.delta", "event_id": "event_C3", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0, "delta": "/////39/fn5+fn5+/////w=="}"#;
    const EX_SPEECH_STARTED: &str = r#"{"type": "input_audio_buffer.speech_started", "event_id": "event_B1", "audio_start_ms": 15320, "item_id": "item_U7"}"#;
    const EX_TRUNCATED: &str = r#"{"type": "conversation.item.truncated", "event_id": "event_D1", "item_id": "item_CBx2", "content_index": 0, "audio_end_ms": 1240}"#;
    const EX_ERROR: &str = r#"{"type": "error", "event_id": "event_A3", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Audio content of 980ms is already shorter than 1240ms", "param": null, "event_id": "evt_client_17"}}"#;

    #[test]
    fn unknown_and_ignored_types_are_other() {
        for event_type in [
            "conversation.item.added",
            "response.content_part.done",
            "rate_limits.updated",
            "some.future.event",
        ] {
            let text = format!(r#"{{"type":"{event_type}","event_id":"ev","x":[1,{{"y":null}}]}}"#);
            assert_eq!(
                parse(&text).unwrap(),
                ServerEvent::Other {
                    event_type: Box::leak(event_type.to_owned().into_boxed_str())
                }
            );
        }
    }

    #[test]
    fn extra_fields_and_key_order_do_not_matter() {
        let text = r#"{"delta":"AAAA","future":{"deep":[1,2,{"a":"b"}]},"item_id":"i","type":"response.output_audio.delta","response_id":"r","obfuscation":"xyz"}"#;
        assert_eq!(
            parse(text).unwrap(),
            ServerEvent::OutputAudioDelta {
                response_id: "r",
                item_id: "i",
                delta_b64: "AAAA",
            }
        );
    }

    #[test]
    fn non_json_frames_are_not_json() {
        for text in [
            "",
            "not json",
            "{\"type\":",
            "{\"type\":\"error\"",
            "{} trailing",
            "\u{0}",
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(err, OpenAiParseError::NotJson(_)),
                "{text:?}: {err:?}"
            );
            assert_eq!(err.kind(), "not_json");
        }
    }

    #[test]
    fn invalid_utf8_is_not_json() {
        let mut frame = b"{\"type\":\"error\xff\"}".to_vec();
        let err = ServerEventParser::new().parse(&mut frame).unwrap_err();
        assert!(matches!(err, OpenAiParseError::NotJson(_)), "{err:?}");
    }

    #[test]
    fn non_object_documents_are_not_json() {
        for text in ["[1,2]", "\"response.done\"", "42", "null", "true"] {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(err, OpenAiParseError::NotJson(_)),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn deeply_nested_frames_are_rejected_not_overflowed() {
        let text = format!(
            "{{\"type\":\"x\",\"a\":{}{}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(matches!(parse(&text), Err(OpenAiParseError::NotJson(_))));
    }

    #[test]
    fn missing_or_non_string_type_is_a_bad_field() {
        assert_eq!(parse("{}").unwrap_err(), bad(UNKNOWN_EVENT, "type"));
        assert_eq!(
            parse(r#"{"type":7}"#).unwrap_err(),
            bad(UNKNOWN_EVENT, "type")
        );
        assert_eq!(
            parse(r#"{"type":null}"#).unwrap_err(),
            bad(UNKNOWN_EVENT, "type")
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let cases = [
            (
                r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i"}"#,
                "response.output_audio.delta",
                "delta",
            ),
            (
                r#"{"type":"response.output_audio.delta","response_id":"r","delta":"AAAA"}"#,
                "response.output_audio.delta",
                "item_id",
            ),
            (
                r#"{"type":"response.output_audio.delta","item_id":"i","delta":"AAAA"}"#,
                "response.output_audio.delta",
                "response_id",
            ),
            (
                r#"{"type":"input_audio_buffer.speech_started","item_id":"i"}"#,
                "input_audio_buffer.speech_started",
                "audio_start_ms",
            ),
            (
                r#"{"type":"input_audio_buffer.speech_stopped"}"#,
                "input_audio_buffer.speech_stopped",
                "audio_end_ms",
            ),
            (r#"{"type":"response.done"}"#, "response.done", "response"),
            (
                r#"{"type":"response.created","response":null}"#,
                "response.created",
                "response",
            ),
            (
                r#"{"type":"response.output_item.added","response_id":"r","item":{"id":"i"}}"#,
                "response.output_item.added",
                "item.type",
            ),
            (r#"{"type":"error","event_id":"e"}"#, "error", "error"),
            (
                r#"{"type":"error","error":{"type":"x"}}"#,
                "error",
                "error.message",
            ),
            (
                r#"{"type":"error","error":{"message":"m"}}"#,
                "error",
                "error.type",
            ),
            (
                r#"{"type":"session.created"}"#,
                "session.created",
                "session",
            ),
            (
                r#"{"type":"session.updated","session":null}"#,
                "session.updated",
                "session",
            ),
            (
                r#"{"type":"conversation.item.truncated","item_id":"i"}"#,
                "conversation.item.truncated",
                "audio_end_ms",
            ),
            (
                r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"i"}"#,
                "conversation.item.input_audio_transcription.completed",
                "transcript",
            ),
            (
                r#"{"type":"conversation.item.input_audio_transcription.failed"}"#,
                "conversation.item.input_audio_transcription.failed",
                "item_id",
            ),
            (
                r#"{"type":"response.output_audio.done","response_id":"r"}"#,
                "response.output_audio.done",
                "item_id",
            ),
            (
                r#"{"type":"response.output_audio_transcript.done","response_id":"r","item_id":"i"}"#,
                "response.output_audio_transcript.done",
                "transcript",
            ),
            (
                r#"{"type":"response.function_call_arguments.done","response_id":"r","item_id":"i","call_id":"c","name":"n"}"#,
                "response.function_call_arguments.done",
                "arguments",
            ),
        ];
        for (text, event, field) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err, bad(event, field), "{text}");
            assert_eq!(err.kind(), "bad_field");
        }
    }

    #[test]
    fn fields_of_the_wrong_type_are_named() {
        let cases = [
            (
                r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":5}"#,
                "delta",
            ),
            (
                r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":"15320"}"#,
                "audio_start_ms",
            ),
            (
                r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":-1}"#,
                "audio_start_ms",
            ),
            (
                r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":1.5}"#,
                "audio_start_ms",
            ),
            (
                r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":1,"item_id":3}"#,
                "item_id",
            ),
            (r#"{"type":"response.done","response":5}"#, "response"),
            (
                r#"{"type":"response.done","response":{"id":"r","status":"failed","status_details":"x"}}"#,
                "response.status_details.reason",
            ),
            (
                r#"{"type":"response.done","response":{"id":"r","status":"completed","usage":[]}}"#,
                "response.usage",
            ),
            (
                r#"{"type":"response.done","response":{"id":"r","status":"completed","usage":{"total_tokens":"12"}}}"#,
                "response.usage.total_tokens",
            ),
            (
                r#"{"type":"session.updated","session":{"audio":{"input":{"format":"g711_ulaw"}}}}"#,
                "session.audio.input.format.type",
            ),
            (r#"{"type":"session.created","session":"s"}"#, "session"),
        ];
        for (text, field) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(&err, OpenAiParseError::BadField { field: f, .. } if *f == field),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn one_parser_handles_a_sequence_of_frames_of_any_size() {
        let mut parser = ServerEventParser::new();
        let big_delta = "A".repeat(200_000);
        let big = format!(
            r#"{{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"{big_delta}"}}"#
        );
        let frames = [
            EX_TRUNCATED,
            big.as_str(),
            "nope",
            EX_DELTA,
            EX_ERROR,
            big.as_str(),
            EX_SPEECH_STARTED,
        ];
        let mut kinds = Vec::new();
        for text in frames {
            let mut frame = text.as_bytes().to_vec();
            match parser.parse(&mut frame) {
                Ok(ServerEvent::OutputAudioDelta { delta_b64, .. }) => kinds.push(delta_b64.len()),
                Ok(_) => kinds.push(1),
                Err(_) => kinds.push(0),
            }
        }
        assert_eq!(kinds, [1, 200_000, 0, 24, 1, 200_000, 1]);
    }

    #[test]
    fn encoders_append_to_what_is_already_in_the_buffer() {
        let mut out = b"xx".to_vec();
        encode_response_cancel(&mut out, "e1");
        assert_eq!(out, br#"xx{"type":"response.cancel","event_id":"e1"}"#);
    }

    #[test]
    fn tool_unavailable_output_is_a_json_object_naming_the_tool() {
        assert_eq!(
            tool_unavailable_output("lookup_order"),
            r#"{"error":"the tool lookup_order is not available right now"}"#
        );
        // A hostile name cannot break out of the string.
        let odd = tool_unavailable_output("a\"}\\\n");
        let value: serde_json::Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error": "the tool a\"}\\\n is not available right now"})
        );
    }

    #[test]
    fn event_ids_with_quotes_are_escaped() {
        let mut out = Vec::new();
        encode_truncate(&mut out, "a\"b", "i\\d", 0);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["event_id"], "a\"b");
        assert_eq!(value["item_id"], "i\\d");
    }

    // ---- the fast path for audio deltas ----------------------------------------------------

    /// Parses `text` with both paths; asserts they agree and says whether the fast path answered.
    fn both_paths(text: &str) -> (Result<String, OpenAiParseError>, bool) {
        let mut parser = ServerEventParser::new();
        let (mut a, mut b) = (text.as_bytes().to_vec(), text.as_bytes().to_vec());
        let fast = FastDelta::scan(&a).is_some();
        let parsed = parser.parse(&mut a).map(|e| format!("{e:?}"));
        let full = parser.parse_full(&mut b).map(|e| format!("{e:?}"));
        assert_eq!(parsed, full, "paths disagree on {text}");
        (parsed, fast)
    }

    #[test]
    fn the_protocol_delta_example_takes_the_fast_path() {
        assert!(FastDelta::scan(EX_DELTA.as_bytes()).is_some());
        let (answer, fast) = both_paths(EX_DELTA);
        assert!(fast);
        assert!(answer.unwrap().contains("/////39/fn5+fn5+/////w=="));
    }

    #[test]
    fn deltas_with_nested_unknown_objects_take_the_fast_path() {
        let text = r#"{"type":"response.output_audio.delta","meta":{"a":1,"b":"x"},"response_id":"r","item_id":"i","delta":"AAAA"}"#;
        assert_eq!(
            both_paths(text),
            (
                Ok(format!(
                    "{:?}",
                    ServerEvent::OutputAudioDelta {
                        response_id: "r",
                        item_id: "i",
                        delta_b64: "AAAA"
                    }
                )),
                true
            )
        );
    }

    #[test]
    fn escaped_ids_go_to_the_tape_path_and_are_unescaped() {
        let text = r#"{"type":"response.output_audio.delta","response_id":"r\u00e9","item_id":"i\"1","delta":"AAAA"}"#;
        assert!(FastDelta::scan(text.as_bytes()).is_none());
        assert_eq!(
            parse(text).unwrap(),
            ServerEvent::OutputAudioDelta {
                response_id: "ré",
                item_id: "i\"1",
                delta_b64: "AAAA",
            }
        );
    }

    #[test]
    fn other_events_and_broken_deltas_are_left_to_the_tape_path() {
        for text in [
            EX_TRUNCATED,
            r#"{"type":"response.output_audio.done","response_id":"r","item_id":"i","delta":"AAAA"}"#,
            r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i"}"#,
            r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":5}"#,
            r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":null}"#,
            r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"A","delta":"B"}"#,
            r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","x":{"delta":"A"}}"#,
            r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"AAAA"} x"#,
        ] {
            assert!(FastDelta::scan(text.as_bytes()).is_none(), "{text}");
            let _ = both_paths(text);
        }
    }

    /// An id: usually plain, sometimes unicode, sometimes with characters JSON must escape.
    fn id() -> impl Strategy<Value = J> {
        prop_oneof![
            6 => "[a-zA-Z0-9_]{0,24}".prop_map(J::Str),
            2 => "[a-z_\u{3042}-\u{3093}\u{1F600}\u{7f}]{0,12}".prop_map(J::Str),
            1 => "[a-z \"\\\\\n\u{1}/]{0,12}".prop_map(J::Str),
        ]
    }

    /// A base64 delta of 0 to 200 ms, sometimes something else.
    fn delta_value() -> impl Strategy<Value = J> {
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..1600).prop_map(|d| J::Str(STANDARD.encode(d))),
            1 => "[A-Za-z0-9+/=]{0,12}".prop_map(J::Str),
            1 => prop_oneof![Just(J::Int(5)), Just(J::Raw("null")), Just(J::Arr(vec![]))],
        ]
    }

    /// A field that may be absent or of the wrong type.
    fn maybe(value: impl Strategy<Value = J>) -> impl Strategy<Value = Option<J>> {
        prop_oneof![
            12 => value.prop_map(Some),
            1 => Just(None),
            1 => prop_oneof![Just(J::Int(7)), Just(J::Raw("null")), Just(J::Raw("true"))].prop_map(Some),
        ]
    }

    /// Unknown members: names that never collide with the known ones; integers, strings,
    /// `null`, floats, arrays and objects.
    fn extras() -> impl Strategy<Value = Vec<(String, J)>> {
        let leaf = prop_oneof![
            4 => id(),
            3 => any::<u64>().prop_map(J::Int),
            1 => Just(J::Raw("null")),
            1 => Just(J::Raw("-2.5e3")),
        ];
        let value = leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                3 => inner.clone(),
                1 => proptest::collection::vec(inner.clone(), 0..3).prop_map(J::Arr),
                1 => proptest::collection::btree_map("x[a-z]{0,2}", inner, 0..3)
                    .prop_map(|m| J::Obj(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map("x[a-z]{0,3}", value, 0..4)
            .prop_map(|m| m.into_iter().collect())
    }

    /// An audio delta as the server sends it (GA fields), with the given ids and delta, extras,
    /// and members in random order.
    fn delta_frame() -> impl Strategy<Value = J> {
        let event_type = prop_oneof![
            12 => Just(J::Str(AUDIO_DELTA.to_owned())),
            1 => Just(J::Str("response.output_audio.done".to_owned())),
            1 => Just(J::Str(format!("{AUDIO_DELTA}x"))),
            1 => Just(J::Int(3)),
        ];
        (
            maybe(event_type),
            maybe(id()),
            maybe(id()),
            maybe(delta_value()),
            proptest::option::weighted(0.8, id()),
            extras(),
        )
            .prop_flat_map(|(ty, response_id, item_id, delta, event_id, extra)| {
                let mut members: Vec<(String, J)> = [
                    ("type", ty),
                    ("response_id", response_id),
                    ("item_id", item_id),
                    ("delta", delta),
                    ("event_id", event_id),
                    ("output_index", Some(J::Int(0))),
                    ("content_index", Some(J::Int(0))),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                .collect();
                members.extend(extra);
                Just(members).prop_shuffle().prop_map(J::Obj)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn fast_path_answers_equal_tape_path_answers(
            frame in delta_frame(),
            escape in proptest::bool::weighted(0.2),
            space in any::<bool>(),
            mutations in prop_oneof![Just(Vec::new()), proptest::collection::vec(mutation(), 1..3)],
        ) {
            let mut text = String::new();
            render(&mut text, &frame, escape, space);
            let mut bytes = text.into_bytes();
            for m in &mutations {
                mutate(&mut bytes, m);
            }
            let mut parser = ServerEventParser::new();
            let (mut a, mut b) = (bytes.clone(), bytes.clone());
            let fast_answered = FastDelta::scan(&bytes).is_some();
            let parsed = parser.parse(&mut a);
            let full = parser.parse_full(&mut b);
            prop_assert_eq!(&parsed, &full, "fast path answered: {}", fast_answered);
            if mutations.is_empty() {
                // Unmutated frames are JSON: compare with an independent reading.
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                check_against_serde(&full, &value)?;
            }
        }

        #[test]
        fn plain_deltas_take_the_fast_path(
            response_id in "[a-zA-Z0-9_]{0,24}",
            item_id in "[a-zA-Z0-9_\u{3042}-\u{3093}]{0,12}",
            audio in proptest::collection::vec(any::<u8>(), 0..1600),
            extra in extras(),
            space in any::<bool>(),
        ) {
            let delta = STANDARD.encode(audio);
            let mut members = vec![
                ("type".to_owned(), J::Str(AUDIO_DELTA.to_owned())),
                ("response_id".to_owned(), J::Str(response_id.clone())),
                ("item_id".to_owned(), J::Str(item_id.clone())),
                ("delta".to_owned(), J::Str(delta.clone())),
            ];
            // Only extras the scanner accepts: strings without escapes and integers.
            members.extend(extra.into_iter().filter(|(_, v)| match v {
                J::Str(s) => !s.contains(['"', '\\']) && !s.chars().any(|c| c < ' '),
                J::Int(_) => true,
                _ => false,
            }));
            let mut text = String::new();
            render(&mut text, &J::Obj(members), false, space);
            prop_assert!(FastDelta::scan(text.as_bytes()).is_some(), "{}", text);
            let mut frame = text.into_bytes();
            prop_assert_eq!(
                ServerEventParser::new().parse(&mut frame),
                Ok(ServerEvent::OutputAudioDelta {
                    response_id: &response_id,
                    item_id: &item_id,
                    delta_b64: &delta,
                })
            );
        }
    }

    /// Checks a parsed delta frame against serde_json's reading of it.
    fn check_against_serde(
        parsed: &Result<ServerEvent<'_>, OpenAiParseError>,
        v: &serde_json::Value,
    ) -> Result<(), TestCaseError> {
        let is_delta = v["type"] == AUDIO_DELTA;
        match parsed {
            Ok(ServerEvent::OutputAudioDelta {
                response_id,
                item_id,
                delta_b64,
            }) => {
                prop_assert!(is_delta);
                prop_assert_eq!(Some(*response_id), v["response_id"].as_str());
                prop_assert_eq!(Some(*item_id), v["item_id"].as_str());
                prop_assert_eq!(Some(*delta_b64), v["delta"].as_str());
            }
            Ok(ServerEvent::OutputAudioDone { .. }) => {
                prop_assert_eq!(v["type"].as_str(), Some("response.output_audio.done"))
            }
            Ok(ServerEvent::Other { event_type }) => {
                prop_assert_eq!(Some(*event_type), v["type"].as_str())
            }
            Err(OpenAiParseError::BadField { field, .. }) => {
                let field_ok = match *field {
                    "type" => !v["type"].is_string(),
                    f => !v[f].is_string(),
                };
                prop_assert!(field_ok, "{} is a string in {}", field, v);
            }
            other => prop_assert!(false, "unexpected answer {:?} for {}", other, v),
        }
        Ok(())
    }
}
