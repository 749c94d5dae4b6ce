//! Twilio Media Streams messages (protocol.md section 4).
//!
//! Inbound messages are parsed from a mutable frame buffer and borrow their strings from it
//! (simd-json unescapes in place). Outbound messages are encoded into a caller-owned buffer.
//!
//! INTERFACE CONTRACT (the bridge depends on these names and shapes; keep them).

/// One message received from Twilio on a Media Stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioEvent<'a> {
    /// `connected`: the first message, once.
    Connected,
    /// `start`: stream metadata; everything needed to key the call.
    Start(Start<'a>),
    /// `media`: caller audio. The payload is already checked to be valid base64.
    Media(Media<'a>),
    /// `mark`: echo of a mark we sent (played, or discarded by `clear`).
    Mark(Mark<'a>),
    /// `dtmf`: a key press.
    Dtmf(Dtmf<'a>),
    /// `stop`: the stream ended (the call hung up).
    Stop(Stop<'a>),
    /// A well-formed message with an `event` we do not know; ignored by the bridge.
    Unknown {
        /// The unknown `event` value.
        event: &'a str,
    },
}

/// The `start` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start<'a> {
    /// `streamSid` (`MZ…`): required on every message we send back.
    pub stream_sid: &'a str,
    /// `start.callSid` (`CA…`).
    pub call_sid: &'a str,
    /// `start.accountSid` (`AC…`).
    pub account_sid: &'a str,
    /// `start.tracks`, e.g. `["inbound"]`.
    pub tracks: Vec<&'a str>,
    /// `start.customParameters`: the TwiML `<Parameter>`s, in document order.
    pub custom_parameters: Vec<(&'a str, &'a str)>,
    /// `start.mediaFormat.encoding` (must be `audio/x-mulaw`).
    pub encoding: &'a str,
    /// `start.mediaFormat.sampleRate` (must be 8000).
    pub sample_rate: u32,
    /// `start.mediaFormat.channels` (must be 1).
    pub channels: u32,
}

/// The `media` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media<'a> {
    /// `streamSid`.
    pub stream_sid: &'a str,
    /// `sequenceNumber`, when present and numeric.
    pub sequence_number: Option<u64>,
    /// `media.chunk`, when present and numeric.
    pub chunk: Option<u64>,
    /// `media.timestamp` (ms of inbound stream time), when present and numeric.
    pub timestamp_ms: Option<u64>,
    /// `media.payload`: base64 μ-law, checked valid, passed through untouched.
    pub payload_b64: &'a str,
}

/// The `mark` echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark<'a> {
    /// `streamSid`.
    pub stream_sid: &'a str,
    /// `mark.name`, exactly as we sent it.
    pub name: &'a str,
}

/// The `dtmf` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtmf<'a> {
    /// `streamSid`.
    pub stream_sid: &'a str,
    /// `dtmf.digit`.
    pub digit: &'a str,
}

/// The `stop` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop<'a> {
    /// `streamSid`.
    pub stream_sid: &'a str,
    /// `stop.callSid`, when present.
    pub call_sid: Option<&'a str>,
}

/// Why an inbound Twilio frame was rejected. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TwilioParseError {
    /// The frame is not a JSON object.
    #[error("not a json object: {0}")]
    NotJson(String),
    /// A required field is missing.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("field {0} has the wrong type")]
    WrongType(&'static str),
    /// `media.payload` is not valid base64.
    #[error("media payload is not valid base64")]
    BadBase64,
}

impl TwilioParseError {
    /// A short, stable label for metrics and logs (`not_json`, `missing_field`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            TwilioParseError::NotJson(_) => "not_json",
            TwilioParseError::MissingField(_) => "missing_field",
            TwilioParseError::WrongType(_) => "wrong_type",
            TwilioParseError::BadBase64 => "bad_base64",
        }
    }
}

/// Parses inbound frames; owns reusable scratch buffers so steady-state parsing does not
/// allocate.
#[derive(Default)]
pub struct TwilioParser {}

impl TwilioParser {
    /// A parser with empty scratch buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one text frame. The frame is modified in place (unescaping) and the event borrows it.
    pub fn parse<'a>(&mut self, _frame: &'a mut [u8]) -> Result<TwilioEvent<'a>, TwilioParseError> {
        unimplemented!("twilio-wire work")
    }
}

/// Appends `{"event":"media","streamSid":…,"media":{"payload":…}}` to `out`.
pub fn encode_media(_out: &mut Vec<u8>, _stream_sid: &str, _payload_b64: &str) {
    unimplemented!("twilio-wire work")
}

/// Appends `{"event":"mark","streamSid":…,"mark":{"name":…}}` to `out` (name JSON-escaped).
pub fn encode_mark(_out: &mut Vec<u8>, _stream_sid: &str, _name: &str) {
    unimplemented!("twilio-wire work")
}

/// Appends `{"event":"clear","streamSid":…}` to `out`.
pub fn encode_clear(_out: &mut Vec<u8>, _stream_sid: &str) {
    unimplemented!("twilio-wire work")
}
