//! Twilio Media Streams messages (protocol.md section 4).
//!
//! Inbound messages are parsed from a mutable frame buffer and borrow their strings from it
//! (simd-json unescapes in place). Outbound messages are encoded into a caller-owned buffer.
//!
//! INTERFACE CONTRACT (the bridge depends on these names and shapes; keep them).
//!
//! # One fast path, simd-json as its fallback and oracle
//!
//! [`TwilioParser::parse`] first tries a fast path: the allocation-free [`flat_json`] scanner
//! plus a few field checks, for `media` (50 frames per second per call) and `mark`. It answers
//! only when the frame is one of those two events in its plain shape (no escapes, no arrays, no
//! duplicate keys, valid base64). Everything else, including every error, goes to the full path:
//! simd-json builds a tape (in a reused buffer) and the event is read from the tape field by
//! field. The full path is the reference: whenever the fast path answers, its answer equals the
//! full path's (checked by a property test over valid and mutated frames of every event type).
//!
//! The full path reads simd-json's tape directly instead of going through serde: each missing or
//! mistyped field then gets its own [`TwilioParseError`] naming it, duplicate keys are caught
//! explicitly, and the tape's allocation is reused across frames.
//!
//! # Leniency (protocol.md 4.1)
//!
//! Unknown fields are ignored everywhere, unknown `event` values give [`TwilioEvent::Unknown`]
//! (no other field required), `connected` needs nothing but `event`, every other known event
//! needs a string `streamSid`. The counters (`sequenceNumber`, `media.chunk`,
//! `media.timestamp`) are strings holding decimal digits; a JSON integer is accepted too, and
//! anything else (other strings, other types, absent) gives `None`, never an error. A known
//! field that appears twice in the same object is rejected ([`TwilioParseError::DuplicateField`]):
//! two JSON parsers (ours, and any other that reads the same frame) could disagree on which copy
//! counts.

use simd_json::prelude::*;
use simd_json::value::tape::{Object, Value};

use crate::wire::flat_json::{self, FlatObject, FlatValue, Span};
use crate::wire::{b64, json_out, json_scratch};

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
    /// A field we read appears more than once in the same object.
    #[error("duplicate field {0}")]
    DuplicateField(&'static str),
}

impl TwilioParseError {
    /// A short, stable label for metrics and logs (`not_json`, `missing_field`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            TwilioParseError::NotJson(_) => "not_json",
            TwilioParseError::MissingField(_) => "missing_field",
            TwilioParseError::WrongType(_) => "wrong_type",
            TwilioParseError::BadBase64 => "bad_base64",
            TwilioParseError::DuplicateField(_) => "duplicate_field",
        }
    }
}

/// Parses inbound frames. Frames the fast path does not take are parsed by simd-json with the
/// thread's scratch space ([`json_scratch`]), so steady-state parsing does not allocate and a
/// call keeps no parser memory of its own.
#[derive(Default)]
pub struct TwilioParser {
    _private: (),
}

impl TwilioParser {
    /// A parser (zero-sized: the scratch space is per thread, so building one costs nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one text frame. The frame is modified in place (unescaping) and the event borrows it.
    ///
    /// `media` and `mark` frames of the usual shape take the allocation-free fast path; any other
    /// frame, and every malformed one, is parsed by [`TwilioParser::parse_full`].
    pub fn parse<'a>(&mut self, frame: &'a mut [u8]) -> Result<TwilioEvent<'a>, TwilioParseError> {
        // Two phases because of the borrow checker: the scan borrows the frame only briefly and
        // returns byte ranges; only if it answers do we give up the mutable borrow and build
        // `&'a str`s from those ranges. Otherwise the frame is still free for simd-json.
        match FastFrame::scan(frame) {
            Some(found) => found.build(frame),
            None => self.parse_full(frame),
        }
    }

    /// Parses one text frame with simd-json only, without trying the fast path. Gives the same
    /// result as [`TwilioParser::parse`]; exists for tests and benchmarks.
    pub fn parse_full<'a>(
        &mut self,
        frame: &'a mut [u8],
    ) -> Result<TwilioEvent<'a>, TwilioParseError> {
        json_scratch::parse_tape(frame, event_from_tape)
            .unwrap_or_else(|e| Err(TwilioParseError::NotJson(e.to_string())))
    }
}

/// A `media` or `mark` frame recognised by the fast path, with its strings as byte ranges of
/// the frame (already checked: valid UTF-8, no escapes, payload valid base64).
#[derive(Debug)]
enum FastFrame {
    /// A `media` event.
    Media {
        /// `streamSid`.
        stream_sid: Span,
        /// `sequenceNumber`.
        sequence_number: Option<u64>,
        /// `media.chunk`.
        chunk: Option<u64>,
        /// `media.timestamp`.
        timestamp_ms: Option<u64>,
        /// `media.payload`.
        payload_b64: Span,
    },
    /// A `mark` event.
    Mark {
        /// `streamSid`.
        stream_sid: Span,
        /// `mark.name`.
        name: Span,
    },
}

impl FastFrame {
    /// Recognises a plain `media` or `mark` frame; `None` for anything else (the full parser
    /// then decides, including every error).
    fn scan(frame: &[u8]) -> Option<FastFrame> {
        let mut obj = FlatObject::new();
        if !flat_json::scan(frame, &mut obj) {
            return None;
        }
        // One pass over the fields (the scanner guarantees no key repeats in an object).
        let mut found = FastFields::default();
        for field in obj.fields() {
            match (field.parent, field.key, field.value) {
                (None, "event", FlatValue::Str(s)) => found.event = Some(s),
                (None, "streamSid", FlatValue::Str(s)) => found.stream_sid = Some(s),
                (None, "sequenceNumber", v) => found.sequence_number = flat_counter(v),
                (None, "media" | "mark", FlatValue::Object) => found.body = Some(field.key),
                (Some("media"), "chunk", v) => found.chunk = flat_counter(v),
                (Some("media"), "timestamp", v) => found.timestamp_ms = flat_counter(v),
                (Some("media"), "payload", FlatValue::Str(s)) => found.payload = Some(s),
                (Some("mark"), "name", FlatValue::Str(s)) => found.mark_name = Some(s),
                _ => {}
            }
        }
        let span = |s: &str| Span::of(frame, s);
        let stream_sid = span(found.stream_sid?);
        match (found.event?, found.body?) {
            ("media", "media") => {
                let payload = found.payload?;
                if !b64::is_valid(payload.as_bytes()) {
                    return None;
                }
                Some(FastFrame::Media {
                    stream_sid,
                    sequence_number: found.sequence_number,
                    chunk: found.chunk,
                    timestamp_ms: found.timestamp_ms,
                    payload_b64: span(payload),
                })
            }
            ("mark", "mark") => Some(FastFrame::Mark {
                stream_sid,
                name: span(found.mark_name?),
            }),
            _ => None,
        }
    }

    /// Builds the event from the ranges found by [`FastFrame::scan`] on this same `frame`.
    fn build(self, frame: &[u8]) -> Result<TwilioEvent<'_>, TwilioParseError> {
        // The scan already validated these slices as UTF-8, so the error arm cannot be taken;
        // should it ever be, "not json" is still the truthful answer.
        let text = |span: Span| {
            span.text(frame)
                .ok_or_else(|| TwilioParseError::NotJson("invalid utf-8".to_owned()))
        };
        Ok(match self {
            FastFrame::Media {
                stream_sid,
                sequence_number,
                chunk,
                timestamp_ms,
                payload_b64,
            } => TwilioEvent::Media(Media {
                stream_sid: text(stream_sid)?,
                sequence_number,
                chunk,
                timestamp_ms,
                payload_b64: text(payload_b64)?,
            }),
            FastFrame::Mark { stream_sid, name } => TwilioEvent::Mark(Mark {
                stream_sid: text(stream_sid)?,
                name: text(name)?,
            }),
        })
    }
}

/// The fields the fast path looks at, gathered in one pass over the scanned object.
#[derive(Default)]
struct FastFields<'a> {
    /// `event`, when a string.
    event: Option<&'a str>,
    /// `streamSid`, when a string.
    stream_sid: Option<&'a str>,
    /// `sequenceNumber` as a counter.
    sequence_number: Option<u64>,
    /// The last of `media` / `mark` seen as an object. A frame carrying both may be declined,
    /// which only sends it to the full path.
    body: Option<&'a str>,
    /// `media.chunk` as a counter.
    chunk: Option<u64>,
    /// `media.timestamp` as a counter.
    timestamp_ms: Option<u64>,
    /// `media.payload`, when a string.
    payload: Option<&'a str>,
    /// `mark.name`, when a string.
    mark_name: Option<&'a str>,
}

/// A counter field (`sequenceNumber`, `chunk`, `timestamp`) from a scanned value.
fn flat_counter(value: FlatValue<'_>) -> Option<u64> {
    match value {
        FlatValue::Str(s) => parse_decimal(s),
        FlatValue::UInt(n) => Some(n),
        FlatValue::Object => None,
    }
}

/// Most digits a `u64` can have.
const MAX_U64_DIGITS: usize = 20;

/// A string of 1 to 20 ASCII digits as `u64`; `None` for anything else (sign, spaces, empty,
/// overflow). Twilio sends its counters as such strings.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > MAX_U64_DIGITS {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Reads the event from simd-json's tape.
fn event_from_tape<'i>(root: Value<'_, 'i>) -> Result<TwilioEvent<'i>, TwilioParseError> {
    let Some(obj) = root.as_object() else {
        let found = root.value_type();
        return Err(TwilioParseError::NotJson(format!("top level is {found:?}")));
    };
    let [event] = pick(&obj, [("event", "event")])?;
    match string(required(event, "event")?, "event")? {
        "connected" => Ok(TwilioEvent::Connected),
        "start" => start_event(&obj).map(TwilioEvent::Start),
        "media" => media_event(&obj).map(TwilioEvent::Media),
        "mark" => mark_event(&obj).map(TwilioEvent::Mark),
        "dtmf" => dtmf_event(&obj).map(TwilioEvent::Dtmf),
        "stop" => stop_event(&obj).map(TwilioEvent::Stop),
        event => Ok(TwilioEvent::Unknown { event }),
    }
}

/// The `start` event.
fn start_event<'i>(obj: &Object<'_, 'i>) -> Result<Start<'i>, TwilioParseError> {
    let [sid, start] = pick(obj, [("streamSid", "streamSid"), ("start", "start")])?;
    let stream_sid = string(required(sid, "streamSid")?, "streamSid")?;
    let start = object(required(start, "start")?, "start")?;
    let [call_sid, account_sid, tracks, parameters, format] = pick(
        &start,
        [
            ("callSid", "start.callSid"),
            ("accountSid", "start.accountSid"),
            ("tracks", "start.tracks"),
            ("customParameters", "start.customParameters"),
            ("mediaFormat", "start.mediaFormat"),
        ],
    )?;
    let format = object(required(format, "start.mediaFormat")?, "start.mediaFormat")?;
    let [encoding, sample_rate, channels] = pick(
        &format,
        [
            ("encoding", "start.mediaFormat.encoding"),
            ("sampleRate", "start.mediaFormat.sampleRate"),
            ("channels", "start.mediaFormat.channels"),
        ],
    )?;
    Ok(Start {
        stream_sid,
        call_sid: string(required(call_sid, "start.callSid")?, "start.callSid")?,
        account_sid: string(
            required(account_sid, "start.accountSid")?,
            "start.accountSid",
        )?,
        tracks: string_list(tracks, "start.tracks")?,
        custom_parameters: string_map(parameters, "start.customParameters")?,
        encoding: string(
            required(encoding, "start.mediaFormat.encoding")?,
            "start.mediaFormat.encoding",
        )?,
        sample_rate: small_uint(sample_rate, "start.mediaFormat.sampleRate")?,
        channels: small_uint(channels, "start.mediaFormat.channels")?,
    })
}

/// The `media` event.
fn media_event<'i>(obj: &Object<'_, 'i>) -> Result<Media<'i>, TwilioParseError> {
    let [sid, sequence_number, media] = pick(
        obj,
        [
            ("streamSid", "streamSid"),
            ("sequenceNumber", "sequenceNumber"),
            ("media", "media"),
        ],
    )?;
    let stream_sid = string(required(sid, "streamSid")?, "streamSid")?;
    let media = object(required(media, "media")?, "media")?;
    let [chunk, timestamp, payload] = pick(
        &media,
        [
            ("chunk", "media.chunk"),
            ("timestamp", "media.timestamp"),
            ("payload", "media.payload"),
        ],
    )?;
    let payload_b64 = string(required(payload, "media.payload")?, "media.payload")?;
    if !b64::is_valid(payload_b64.as_bytes()) {
        return Err(TwilioParseError::BadBase64);
    }
    Ok(Media {
        stream_sid,
        sequence_number: counter(sequence_number),
        chunk: counter(chunk),
        timestamp_ms: counter(timestamp),
        payload_b64,
    })
}

/// The `mark` event.
fn mark_event<'i>(obj: &Object<'_, 'i>) -> Result<Mark<'i>, TwilioParseError> {
    let [sid, mark] = pick(obj, [("streamSid", "streamSid"), ("mark", "mark")])?;
    let stream_sid = string(required(sid, "streamSid")?, "streamSid")?;
    let mark = object(required(mark, "mark")?, "mark")?;
    let [name] = pick(&mark, [("name", "mark.name")])?;
    let name = string(required(name, "mark.name")?, "mark.name")?;
    Ok(Mark { stream_sid, name })
}

/// The `dtmf` event.
fn dtmf_event<'i>(obj: &Object<'_, 'i>) -> Result<Dtmf<'i>, TwilioParseError> {
    let [sid, dtmf] = pick(obj, [("streamSid", "streamSid"), ("dtmf", "dtmf")])?;
    let stream_sid = string(required(sid, "streamSid")?, "streamSid")?;
    let dtmf = object(required(dtmf, "dtmf")?, "dtmf")?;
    let [digit] = pick(&dtmf, [("digit", "dtmf.digit")])?;
    let digit = string(required(digit, "dtmf.digit")?, "dtmf.digit")?;
    Ok(Dtmf { stream_sid, digit })
}

/// The `stop` event; the `stop` object and its `callSid` are optional.
fn stop_event<'i>(obj: &Object<'_, 'i>) -> Result<Stop<'i>, TwilioParseError> {
    let [sid, stop] = pick(obj, [("streamSid", "streamSid"), ("stop", "stop")])?;
    let stream_sid = string(required(sid, "streamSid")?, "streamSid")?;
    let call_sid = match stop {
        None => None,
        Some(stop) => {
            let [call_sid] = pick(&object(stop, "stop")?, [("callSid", "stop.callSid")])?;
            call_sid.map(|v| string(v, "stop.callSid")).transpose()?
        }
    };
    Ok(Stop {
        stream_sid,
        call_sid,
    })
}

/// The values of the keys `wanted` (JSON key, label for errors) in `obj`, in the order asked;
/// other keys are ignored. A wanted key that occurs twice is an error.
fn pick<'t, 'i, const N: usize>(
    obj: &Object<'t, 'i>,
    wanted: [(&str, &'static str); N],
) -> Result<[Option<Value<'t, 'i>>; N], TwilioParseError> {
    let mut found = [None; N];
    for (key, value) in obj.iter() {
        if let Some(i) = wanted.iter().position(|(k, _)| *k == key) {
            if found[i].is_some() {
                return Err(TwilioParseError::DuplicateField(wanted[i].1));
            }
            found[i] = Some(value);
        }
    }
    Ok(found)
}

/// A present value, or `MissingField(label)`.
fn required<'t, 'i>(
    value: Option<Value<'t, 'i>>,
    label: &'static str,
) -> Result<Value<'t, 'i>, TwilioParseError> {
    value.ok_or(TwilioParseError::MissingField(label))
}

/// A string value, or `WrongType(label)`.
fn string<'i>(value: Value<'_, 'i>, label: &'static str) -> Result<&'i str, TwilioParseError> {
    value
        .into_string()
        .ok_or(TwilioParseError::WrongType(label))
}

/// An object value, or `WrongType(label)`.
fn object<'t, 'i>(
    value: Value<'t, 'i>,
    label: &'static str,
) -> Result<Object<'t, 'i>, TwilioParseError> {
    value.as_object().ok_or(TwilioParseError::WrongType(label))
}

/// A required JSON integer that fits in `u32` (`sampleRate`, `channels`).
fn small_uint(value: Option<Value<'_, '_>>, label: &'static str) -> Result<u32, TwilioParseError> {
    required(value, label)?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(TwilioParseError::WrongType(label))
}

/// A counter field: decimal digits in a string, or a JSON integer; anything else is `None`.
fn counter(value: Option<Value<'_, '_>>) -> Option<u64> {
    let value = value?;
    match value.as_str() {
        Some(s) => parse_decimal(s),
        None => value.as_u64(),
    }
}

/// An optional array of strings (`start.tracks`); absent or `null` is empty.
fn string_list<'i>(
    value: Option<Value<'_, 'i>>,
    label: &'static str,
) -> Result<Vec<&'i str>, TwilioParseError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let array = value.as_array().ok_or(TwilioParseError::WrongType(label))?;
    array.iter().map(|item| string(item, label)).collect()
}

/// An optional object of strings (`start.customParameters`), in document order; absent or
/// `null` is empty. A name that repeats is an error: the bridge looks parameters up by name.
fn string_map<'i>(
    value: Option<Value<'_, 'i>>,
    label: &'static str,
) -> Result<Vec<(&'i str, &'i str)>, TwilioParseError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let map = object(value, label)?;
    let pairs = map
        .iter()
        .map(|(name, v)| Ok((name, string(v, label)?)))
        .collect::<Result<Vec<_>, TwilioParseError>>()?;
    let mut names: Vec<&str> = pairs.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(TwilioParseError::DuplicateField(label));
    }
    Ok(pairs)
}

/// Appends `{"event":"media","streamSid":…,"media":{"payload":…}}` to `out`.
///
/// `payload_b64` must be base64 (as [`b64::is_valid`] checks): it is copied without escaping,
/// since base64 text never needs any.
pub fn encode_media(out: &mut Vec<u8>, stream_sid: &str, payload_b64: &str) {
    debug_assert!(
        b64::is_valid(payload_b64.as_bytes()),
        "encode_media: payload is not base64"
    );
    out.extend_from_slice(br#"{"event":"media","streamSid":"#);
    json_out::write_str(out, stream_sid);
    out.extend_from_slice(br#","media":{"payload":""#);
    out.extend_from_slice(payload_b64.as_bytes());
    out.extend_from_slice(br#""}}"#);
}

/// Appends `{"event":"mark","streamSid":…,"mark":{"name":…}}` to `out` (name JSON-escaped).
pub fn encode_mark(out: &mut Vec<u8>, stream_sid: &str, name: &str) {
    out.extend_from_slice(br#"{"event":"mark","streamSid":"#);
    json_out::write_str(out, stream_sid);
    out.extend_from_slice(br#","mark":{"name":"#);
    json_out::write_str(out, name);
    out.extend_from_slice(b"}}");
}

/// Appends `{"event":"clear","streamSid":…}` to `out`.
pub fn encode_clear(out: &mut Vec<u8>, stream_sid: &str) {
    out.extend_from_slice(br#"{"event":"clear","streamSid":"#);
    json_out::write_str(out, stream_sid);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::json_render::{mutate, mutation, render, J};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use proptest::prelude::*;

    const SID: &str = "MZ00000000000000000000000000000001";

    /// Parses `text` with both paths; asserts they agree and returns the answer (owned, so the
    /// frames can be dropped).
    fn both(text: &[u8]) -> Result<String, TwilioParseError> {
        let mut parser = TwilioParser::new();
        let mut a = text.to_vec();
        let mut b = text.to_vec();
        let fast = parser.parse(&mut a).map(|e| format!("{e:?}"));
        let full = parser.parse_full(&mut b).map(|e| format!("{e:?}"));
        assert_eq!(
            fast,
            full,
            "paths disagree on {}",
            String::from_utf8_lossy(text)
        );
        fast
    }

    /// Parses `text` with [`TwilioParser::parse`] and hands the event to `check`.
    fn with_event(text: &str, check: impl FnOnce(Result<TwilioEvent<'_>, TwilioParseError>)) {
        let mut frame = text.as_bytes().to_vec();
        check(TwilioParser::new().parse(&mut frame));
    }

    #[test]
    fn parses_the_media_example_of_the_protocol_on_the_fast_path() {
        let text = r#"{
          "event": "media",
          "sequenceNumber": "2",
          "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "/////39/fn5+fn5+/////w=="},
          "streamSid": "MZ00000000000000000000000000000001"
        }"#;
        assert!(FastFrame::scan(text.as_bytes()).is_some());
        with_event(text, |ev| {
            assert_eq!(
                ev,
                Ok(TwilioEvent::Media(Media {
                    stream_sid: SID,
                    sequence_number: Some(2),
                    chunk: Some(1),
                    timestamp_ms: Some(5),
                    payload_b64: "/////39/fn5+fn5+/////w==",
                }))
            )
        });
        both(text.as_bytes()).unwrap();
    }

    #[test]
    fn parses_the_mark_example_on_the_fast_path() {
        let text = r#"{"event": "mark", "sequenceNumber": "58", "streamSid": "MZ00000000000000000000000000000001",
 "mark": {"name": "e=3;i=item_CBx1;ms=1240"}}"#;
        assert!(FastFrame::scan(text.as_bytes()).is_some());
        with_event(text, |ev| {
            assert_eq!(
                ev,
                Ok(TwilioEvent::Mark(Mark {
                    stream_sid: SID,
                    name: "e=3;i=item_CBx1;ms=1240"
                }))
            )
        });
    }

    #[test]
    fn parses_the_connected_start_dtmf_and_stop_examples() {
        with_event(
            r#"{"event": "connected", "protocol": "Call", "version": "1.0.0"}"#,
            |ev| assert_eq!(ev, Ok(TwilioEvent::Connected)),
        );
        let start = r#"{
  "event": "start",
  "sequenceNumber": "1",
  "start": {
    "accountSid": "AC00000000000000000000000000000001",
    "streamSid": "MZ00000000000000000000000000000001",
    "callSid": "CA00000000000000000000000000000001",
    "tracks": ["inbound"],
    "customParameters": {"callId": "c_7f3a9e", "agentId": "agent_sales_ja", "token": "q9vJ2kM1xZ"},
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
  },
  "streamSid": "MZ00000000000000000000000000000001"
}"#;
        with_event(start, |ev| {
            assert_eq!(
                ev,
                Ok(TwilioEvent::Start(Start {
                    stream_sid: SID,
                    call_sid: "CA00000000000000000000000000000001",
                    account_sid: "AC00000000000000000000000000000001",
                    tracks: vec!["inbound"],
                    custom_parameters: vec![
                        ("callId", "c_7f3a9e"),
                        ("agentId", "agent_sales_ja"),
                        ("token", "q9vJ2kM1xZ")
                    ],
                    encoding: "audio/x-mulaw",
                    sample_rate: 8000,
                    channels: 1,
                }))
            )
        });
        with_event(
            r#"{"event": "dtmf", "streamSid": "MZ00000000000000000000000000000001", "sequenceNumber": "57",
 "dtmf": {"track": "inbound_track", "digit": "1"}}"#,
            |ev| {
                assert_eq!(
                    ev,
                    Ok(TwilioEvent::Dtmf(Dtmf {
                        stream_sid: SID,
                        digit: "1"
                    }))
                )
            },
        );
        with_event(
            r#"{"event": "stop", "sequenceNumber": "512",
 "stop": {"accountSid": "AC00000000000000000000000000000001", "callSid": "CA00000000000000000000000000000001"},
 "streamSid": "MZ00000000000000000000000000000001"}"#,
            |ev| {
                assert_eq!(
                    ev,
                    Ok(TwilioEvent::Stop(Stop {
                        stream_sid: SID,
                        call_sid: Some("CA00000000000000000000000000000001")
                    }))
                )
            },
        );
    }

    #[test]
    fn unescapes_strings_on_the_full_path() {
        let text = r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"a\"b\\c\u00e9\u65e5\n"}}"#;
        assert!(FastFrame::scan(text.as_bytes()).is_none());
        with_event(text, |ev| {
            assert_eq!(
                ev,
                Ok(TwilioEvent::Mark(Mark {
                    stream_sid: "MZ1",
                    name: "a\"b\\cé日\n"
                }))
            )
        });
    }

    #[test]
    fn start_without_custom_parameters_or_tracks_is_accepted() {
        for params in [
            "",
            r#""customParameters":{},"#,
            r#""customParameters":null,"#,
        ] {
            let text = format!(
                r#"{{"event":"start","streamSid":"MZ1","start":{{"callSid":"CA1","accountSid":"AC1",{params}"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
            );
            with_event(&text, |ev| match ev {
                Ok(TwilioEvent::Start(start)) => {
                    assert!(start.custom_parameters.is_empty());
                    assert!(start.tracks.is_empty());
                }
                other => panic!("{params}: {other:?}"),
            });
        }
    }

    #[test]
    fn counters_that_are_not_decimal_strings_are_none_not_errors() {
        for (value, want) in [
            ("\"abc\"", None),
            ("\"\"", None),
            ("\"+5\"", None),
            ("\" 5\"", None),
            ("\"-5\"", None),
            ("\"18446744073709551616\"", None),
            ("\"18446744073709551615\"", Some(u64::MAX)),
            ("\"007\"", Some(7)),
            ("7", Some(7)),
            ("7.5", None),
            ("-7", None),
            ("null", None),
            ("true", None),
            ("[]", None),
            ("{}", None),
        ] {
            let text = format!(
                r#"{{"event":"media","streamSid":"MZ1","sequenceNumber":{value},"media":{{"chunk":{value},"timestamp":{value},"payload":"AAAA"}}}}"#
            );
            with_event(&text, |ev| match ev {
                Ok(TwilioEvent::Media(m)) => {
                    assert_eq!(m.sequence_number, want, "{value}");
                    assert_eq!(m.chunk, want, "{value}");
                    assert_eq!(m.timestamp_ms, want, "{value}");
                }
                other => panic!("{value}: {other:?}"),
            });
            both(text.as_bytes()).unwrap();
        }
    }

    #[test]
    fn unknown_events_and_unknown_fields_are_tolerated() {
        with_event(r#"{"event":"someday","x":[1,{"y":null}]}"#, |ev| {
            assert_eq!(ev, Ok(TwilioEvent::Unknown { event: "someday" }))
        });
        with_event(
            r#"{"extra":[true],"event":"media","streamSid":"MZ1","media":{"payload":"","x":{"y":1}}}"#,
            |ev| match ev {
                Ok(TwilioEvent::Media(m)) => assert_eq!(m.payload_b64, ""),
                other => panic!("{other:?}"),
            },
        );
    }

    #[test]
    fn every_malformed_frame_gets_its_error() {
        use TwilioParseError::*;
        let cases: &[(&[u8], TwilioParseError)] = &[
            (br#"{"streamSid":"MZ1"}"#, MissingField("event")),
            (br#"{"event":5}"#, WrongType("event")),
            (br#"{"event":"media","media":{"payload":"AAAA"}}"#, MissingField("streamSid")),
            (br#"{"event":"media","streamSid":7,"media":{"payload":"AAAA"}}"#, WrongType("streamSid")),
            (br#"{"event":"media","streamSid":"MZ1"}"#, MissingField("media")),
            (br#"{"event":"media","streamSid":"MZ1","media":"AAAA"}"#, WrongType("media")),
            (br#"{"event":"media","streamSid":"MZ1","media":{}}"#, MissingField("media.payload")),
            (br#"{"event":"media","streamSid":"MZ1","media":{"payload":1}}"#, WrongType("media.payload")),
            (br#"{"event":"media","streamSid":"MZ1","media":{"payload":"AAA"}}"#, BadBase64),
            (br#"{"event":"media","streamSid":"MZ1","media":{"payload":"AA\nA"}}"#, BadBase64),
            (br#"{"event":"media","streamSid":"MZ1","streamSid":"MZ2","media":{"payload":""}}"#, DuplicateField("streamSid")),
            (br#"{"event":"media","event":"mark","streamSid":"MZ1","media":{"payload":""}}"#, DuplicateField("event")),
            (br#"{"event":"media","streamSid":"MZ1","media":{"payload":"","payload":"AAAA"}}"#, DuplicateField("media.payload")),
            (br#"{"event":"mark","streamSid":"MZ1"}"#, MissingField("mark")),
            (br#"{"event":"mark","streamSid":"MZ1","mark":{}}"#, MissingField("mark.name")),
            (br#"{"event":"mark","streamSid":"MZ1","mark":{"name":null}}"#, WrongType("mark.name")),
            (br#"{"event":"dtmf","streamSid":"MZ1","dtmf":{"track":"inbound_track"}}"#, MissingField("dtmf.digit")),
            (br#"{"event":"dtmf","streamSid":"MZ1","dtmf":[]}"#, WrongType("dtmf")),
            (br#"{"event":"stop"}"#, MissingField("streamSid")),
            (br#"{"event":"stop","streamSid":"MZ1","stop":"x"}"#, WrongType("stop")),
            (br#"{"event":"stop","streamSid":"MZ1","stop":{"callSid":1}}"#, WrongType("stop.callSid")),
            (br#"{"event":"start","streamSid":"MZ1"}"#, MissingField("start")),
            (br#"{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1"}}"#, MissingField("start.mediaFormat")),
            (br#"{"event":"start","streamSid":"MZ1","start":{"accountSid":"AC1","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#, MissingField("start.callSid")),
            (br#"{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":"8000","channels":1}}}"#, WrongType("start.mediaFormat.sampleRate")),
            (br#"{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":4294967296}}}"#, WrongType("start.mediaFormat.channels")),
            (br#"{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1","tracks":"inbound","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#, WrongType("start.tracks")),
            (br#"{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1","tracks":[1],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#, WrongType("start.tracks")),
            (br#"{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1","customParameters":{"a":1},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#, WrongType("start.customParameters")),
            (br#"{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1","customParameters":{"token":"a","token":"b"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#, DuplicateField("start.customParameters")),
        ];
        for (text, want) in cases {
            assert_eq!(
                both(text).as_ref().map_err(Clone::clone),
                Err(want.clone()),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn non_json_arrays_and_binary_garbage_are_not_json() {
        let cases: &[&[u8]] = &[
            b"",
            b"   ",
            b"[]",
            b"[{\"event\":\"media\"}]",
            b"\"media\"",
            b"42",
            b"null",
            b"{",
            b"{\"event\":\"media\"",
            b"{\"event\":\"media\"} x",
            b"\xff\xfe\x00\x01",
            b"{\"event\":\"\xff\"}",
            b"\x00",
        ];
        for text in cases {
            let err = both(text).unwrap_err();
            assert_eq!(
                err.kind(),
                "not_json",
                "{:?}: {err}",
                String::from_utf8_lossy(text)
            );
            assert!(err.to_string().len() < 100, "{err}");
        }
    }

    #[test]
    fn one_parser_handles_frames_of_growing_and_shrinking_size() {
        let mut parser = TwilioParser::new();
        for len in [160usize, 8000, 16, 40_000, 160] {
            let payload = STANDARD.encode(vec![0xffu8; len]);
            let mut frame = Vec::new();
            frame.extend_from_slice(br#"{"event":"media","streamSid":"MZ1","media":{"payload":"#);
            json_out::write_str(&mut frame, &payload);
            frame.extend_from_slice(b"}}");
            let mut copy = frame.clone();
            match parser.parse(&mut frame) {
                Ok(TwilioEvent::Media(m)) => assert_eq!(m.payload_b64, payload),
                other => panic!("{other:?}"),
            }
            match parser.parse_full(&mut copy) {
                Ok(TwilioEvent::Media(m)) => assert_eq!(m.payload_b64, payload),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn encoders_write_the_exact_shapes_of_the_protocol() {
        let mut out = Vec::new();
        encode_media(&mut out, SID, "/////39/fn5+fn5+/////w==");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"event":"media","streamSid":"MZ00000000000000000000000000000001","media":{"payload":"/////39/fn5+fn5+/////w=="}}"#
        );
        let mut out = Vec::new();
        encode_mark(&mut out, SID, "e=3;i=item_CBx1;ms=1240");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"event":"mark","streamSid":"MZ00000000000000000000000000000001","mark":{"name":"e=3;i=item_CBx1;ms=1240"}}"#
        );
        let mut out = Vec::new();
        encode_clear(&mut out, SID);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"event":"clear","streamSid":"MZ00000000000000000000000000000001"}"#
        );
    }

    #[test]
    fn encoders_append_and_escape_and_round_trip_through_serde_json() {
        let mut out = b"prefix".to_vec();
        encode_mark(&mut out, "MZ\"1", "na\"me\\\n日本");
        let value: serde_json::Value = serde_json::from_slice(&out[6..]).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"event":"mark","streamSid":"MZ\"1","mark":{"name":"na\"me\\\n日本"}})
        );
        // An encoded frame parses back into the event it describes.
        let mut frame = Vec::new();
        encode_mark(&mut frame, SID, "x\"y");
        assert_eq!(
            TwilioParser::new().parse(&mut frame),
            Ok(TwilioEvent::Mark(Mark {
                stream_sid: SID,
                name: "x\"y"
            }))
        );
    }

    proptest! {
        #[test]
        fn encoded_media_and_clear_round_trip_through_serde_json(
            sid in "[A-Za-z0-9\"\\\\\u{3042}]{0,40}",
            data in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let payload = STANDARD.encode(&data);
            let mut out = Vec::new();
            encode_media(&mut out, &sid, &payload);
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(
                value,
                serde_json::json!({"event":"media","streamSid":sid,"media":{"payload":payload}})
            );
            let mut out = Vec::new();
            encode_clear(&mut out, &sid);
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(value, serde_json::json!({"event":"clear","streamSid":sid}));
        }
    }

    // ---- property test: the fast path agrees with the full path --------------------------------

    fn s(v: &str) -> J {
        J::Str(v.to_owned())
    }

    /// Short text; one time in four with characters that must be escaped in JSON.
    fn text() -> impl Strategy<Value = J> {
        prop_oneof![
            3 => "[a-zA-Z0-9 ;=_/+\u{3042}-\u{3093}\u{1F600}]{0,12}".prop_map(J::Str),
            1 => "[a-zA-Z0-9 \"\\\\\n\u{1}]{0,12}".prop_map(J::Str),
        ]
    }

    fn counter_value() -> impl Strategy<Value = J> {
        prop_oneof![
            6 => "[1-9][0-9]{0,6}".prop_map(J::Str),
            1 => Just(s("0")),
            1 => "[a-z0-9 +-]{0,4}".prop_map(J::Str),
            1 => any::<u64>().prop_map(J::Int),
            1 => prop_oneof![Just("-1"), Just("1.5"), Just("null"), Just("true"), Just("1e2")].prop_map(J::Raw),
        ]
    }

    fn payload() -> impl Strategy<Value = J> {
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(|d| J::Str(STANDARD.encode(d))),
            1 => "[A-Za-z0-9+/=]{0,12}".prop_map(J::Str),
            1 => Just(J::Int(5)),
        ]
    }

    /// Unknown members: names that never collide with the known ones.
    fn extras() -> impl Strategy<Value = Vec<(String, J)>> {
        let leaf = prop_oneof![
            4 => text(),
            2 => any::<u64>().prop_map(J::Int),
            1 => Just(J::Raw("null")),
            1 => Just(J::Raw("-2.5e3")),
        ];
        let value = leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                2 => inner.clone(),
                1 => proptest::collection::vec(inner.clone(), 0..3).prop_map(J::Arr),
                1 => proptest::collection::vec(("x[a-z]{0,2}", inner), 0..3).prop_map(|m| J::Obj(dedup(m))),
            ]
        });
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(("x[a-z]{0,3}", value), 1..3).prop_map(dedup),
        ]
    }

    fn dedup(mut members: Vec<(String, J)>) -> Vec<(String, J)> {
        let mut seen = std::collections::HashSet::new();
        members.retain(|(k, _)| seen.insert(k.clone()));
        members
    }

    /// An object from optional members plus extras, in shuffled order.
    fn obj(
        members: Vec<(&'static str, Option<J>)>,
        extra: Vec<(String, J)>,
    ) -> impl Strategy<Value = J> {
        let mut all: Vec<(String, J)> = members
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect();
        all.extend(extra);
        Just(all).prop_shuffle().prop_map(J::Obj)
    }

    fn sid() -> impl Strategy<Value = J> {
        "MZ[0-9a-f]{32}".prop_map(J::Str)
    }

    fn media_frame() -> impl Strategy<Value = J> {
        (
            sid(),
            proptest::option::weighted(0.9, counter_value()),
            counter_value(),
            counter_value(),
            payload(),
            extras(),
            extras(),
        )
            .prop_flat_map(|(sid, seq, chunk, ts, payload, extra, inner_extra)| {
                obj(
                    vec![
                        ("track", Some(s("inbound"))),
                        ("chunk", Some(chunk)),
                        ("timestamp", Some(ts)),
                        ("payload", Some(payload)),
                    ],
                    inner_extra,
                )
                .prop_flat_map(move |media| {
                    obj(
                        vec![
                            ("event", Some(s("media"))),
                            ("sequenceNumber", seq.clone()),
                            ("media", Some(media)),
                            ("streamSid", Some(sid.clone())),
                        ],
                        extra.clone(),
                    )
                })
            })
    }

    fn simple_frame(
        event: &'static str,
        body_key: &'static str,
        body_field: &'static str,
    ) -> impl Strategy<Value = J> {
        (sid(), text(), extras(), any::<bool>()).prop_flat_map(
            move |(sid, value, extra, with_body)| {
                let body = with_body.then(|| J::Obj(vec![(body_field.to_owned(), value.clone())]));
                obj(
                    vec![
                        ("event", Some(s(event))),
                        ("sequenceNumber", Some(s("58"))),
                        ("streamSid", Some(sid)),
                        (body_key, body),
                    ],
                    extra,
                )
            },
        )
    }

    fn start_frame() -> impl Strategy<Value = J> {
        let params = proptest::collection::vec(("[a-zA-Z\u{3042}]{1,6}", text()), 0..4)
            .prop_map(|m| J::Obj(dedup(m)));
        (
            sid(),
            params,
            proptest::option::of(Just(J::Arr(vec![s("inbound")]))),
            prop_oneof![Just(J::Int(8000)), Just(J::Raw("8000.0")), Just(s("8000"))],
            extras(),
        )
            .prop_flat_map(|(sid, params, tracks, rate, extra)| {
                let format = J::Obj(vec![
                    ("encoding".into(), s("audio/x-mulaw")),
                    ("sampleRate".into(), rate),
                    ("channels".into(), J::Int(1)),
                ]);
                obj(
                    vec![
                        ("accountSid", Some(s("AC00000000000000000000000000000001"))),
                        ("streamSid", Some(sid.clone())),
                        ("callSid", Some(s("CA00000000000000000000000000000001"))),
                        ("tracks", tracks),
                        ("customParameters", Some(params)),
                        ("mediaFormat", Some(format)),
                    ],
                    extra.clone(),
                )
                .prop_flat_map(move |start| {
                    obj(
                        vec![
                            ("event", Some(s("start"))),
                            ("sequenceNumber", Some(s("1"))),
                            ("start", Some(start)),
                            ("streamSid", Some(sid.clone())),
                        ],
                        vec![],
                    )
                })
            })
    }

    fn any_frame() -> impl Strategy<Value = J> {
        prop_oneof![
            4 => media_frame(),
            2 => simple_frame("mark", "mark", "name"),
            1 => simple_frame("dtmf", "dtmf", "digit"),
            1 => simple_frame("stop", "stop", "callSid"),
            1 => simple_frame("someday", "x", "y"),
            1 => start_frame(),
            1 => extras().prop_flat_map(|e| obj(vec![("event", Some(s("connected"))), ("protocol", Some(s("Call")))], e)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6000))]

        #[test]
        fn fast_path_answers_equal_full_path_answers(
            frame in any_frame(),
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
            let mut parser = TwilioParser::new();
            let mut a = bytes.clone();
            let mut b = bytes.clone();
            let fast_answered = FastFrame::scan(&bytes).is_some();
            let parsed = parser.parse(&mut a);
            let full = parser.parse_full(&mut b);
            prop_assert_eq!(&parsed, &full, "fast path answered: {}", fast_answered);
            if mutations.is_empty() {
                // An unmutated frame is valid JSON: it never fails as "not json".
                if let Err(e) = &full {
                    prop_assert_ne!(e.kind(), "not_json", "{}", String::from_utf8_lossy(&bytes));
                }
                // Compare with an independent reading through serde_json.
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                check_against_serde(&full, &value)?;
            }
        }
    }

    /// A `media` or `mark` frame of the plain shape Twilio sends, members in random order.
    fn plain_hot_frame() -> impl Strategy<Value = J> {
        let digits = || "[1-9][0-9]{0,7}".prop_map(J::Str);
        let media = (
            sid(),
            digits(),
            digits(),
            digits(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_flat_map(|(sid, seq, chunk, ts, data)| {
                obj(
                    vec![
                        ("track", Some(s("inbound"))),
                        ("chunk", Some(chunk)),
                        ("timestamp", Some(ts)),
                        ("payload", Some(J::Str(STANDARD.encode(data)))),
                    ],
                    vec![],
                )
                .prop_flat_map(move |media| {
                    obj(
                        vec![
                            ("event", Some(s("media"))),
                            ("sequenceNumber", Some(seq.clone())),
                            ("media", Some(media)),
                            ("streamSid", Some(sid.clone())),
                        ],
                        vec![],
                    )
                })
            });
        let mark = (sid(), "[a-z0-9=;_.]{0,30}").prop_flat_map(|(sid, name)| {
            obj(
                vec![
                    ("event", Some(s("mark"))),
                    ("streamSid", Some(sid)),
                    ("mark", Some(J::Obj(vec![("name".into(), J::Str(name))]))),
                ],
                vec![],
            )
        });
        prop_oneof![3 => media, 1 => mark]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn plain_hot_frames_take_the_fast_path_and_mutations_of_them_agree(
            frame in plain_hot_frame(),
            space in any::<bool>(),
            mutations in proptest::collection::vec(mutation(), 0..2),
        ) {
            let mut text = String::new();
            render(&mut text, &frame, false, space);
            let mut bytes = text.into_bytes();
            if mutations.is_empty() {
                prop_assert!(FastFrame::scan(&bytes).is_some());
            }
            for m in &mutations {
                mutate(&mut bytes, m);
            }
            let mut parser = TwilioParser::new();
            let mut a = bytes.clone();
            let mut b = bytes.clone();
            prop_assert_eq!(parser.parse(&mut a), parser.parse_full(&mut b));
        }
    }

    /// Checks the main fields of a parsed event against serde_json's reading of the frame.
    fn check_against_serde(
        parsed: &Result<TwilioEvent<'_>, TwilioParseError>,
        v: &serde_json::Value,
    ) -> Result<(), TestCaseError> {
        let counter = |v: &serde_json::Value| match v {
            serde_json::Value::String(s)
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse::<u64>().ok()
            }
            other => other.as_u64(),
        };
        match parsed {
            Ok(TwilioEvent::Media(m)) => {
                prop_assert_eq!(v["event"].as_str(), Some("media"));
                prop_assert_eq!(Some(m.stream_sid), v["streamSid"].as_str());
                prop_assert_eq!(Some(m.payload_b64), v["media"]["payload"].as_str());
                prop_assert_eq!(m.sequence_number, counter(&v["sequenceNumber"]));
                prop_assert_eq!(m.chunk, counter(&v["media"]["chunk"]));
                prop_assert_eq!(m.timestamp_ms, counter(&v["media"]["timestamp"]));
            }
            Ok(TwilioEvent::Mark(m)) => {
                prop_assert_eq!(Some(m.name), v["mark"]["name"].as_str());
                prop_assert_eq!(Some(m.stream_sid), v["streamSid"].as_str());
            }
            Ok(TwilioEvent::Dtmf(d)) => prop_assert_eq!(Some(d.digit), v["dtmf"]["digit"].as_str()),
            Ok(TwilioEvent::Stop(st)) => {
                prop_assert_eq!(st.call_sid, v["stop"]["callSid"].as_str())
            }
            Ok(TwilioEvent::Start(st)) => {
                let params: Vec<(&str, &str)> = v["start"]["customParameters"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                    .collect();
                let mut got = st.custom_parameters.clone();
                got.sort();
                let mut want = params;
                want.sort();
                prop_assert_eq!(got, want);
                prop_assert_eq!(st.sample_rate, 8000);
            }
            Ok(TwilioEvent::Unknown { event }) => {
                prop_assert_eq!(Some(*event), v["event"].as_str())
            }
            Ok(TwilioEvent::Connected) => prop_assert_eq!(v["event"].as_str(), Some("connected")),
            Err(TwilioParseError::BadBase64) => {
                let payload = v["media"]["payload"].as_str().unwrap();
                prop_assert!(!b64::is_valid(payload.as_bytes()));
            }
            Err(TwilioParseError::MissingField(f)) => prop_assert!(
                f.ends_with("name") || f.ends_with("digit") || *f == "mark" || *f == "dtmf",
                "{}",
                f
            ),
            Err(TwilioParseError::WrongType(f)) => prop_assert!(
                *f == "media.payload" || *f == "start.mediaFormat.sampleRate",
                "{}",
                f
            ),
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
        Ok(())
    }
}

#[cfg(test)]
mod twilio_media_tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(
        seq: &str,
        track: &str,
        chunk: &str,
        ts: &str,
        payload: &str,
        sid: &str,
        tail: &str,
    ) -> Vec<u8> {
        format!(
            "{{\"event\":\"media\",\"sequenceNumber\":\"{seq}\",\"media\":{{\"track\":\"{track}\",\"chunk\":\"{chunk}\",\"timestamp\":\"{ts}\",\"payload\":\"{payload}\"}},\"streamSid\":\"{sid}\"}}{tail}"
        )
        .into_bytes()
    }

    #[test]
    fn twilios_own_media_frame_takes_the_fast_path_and_equals_simd_json() {
        let payload = "/////39/fn5+fn5+/////w==";
        let f = frame(
            "2",
            "inbound",
            "1",
            "5",
            payload,
            "MZ00000000000000000000000000000001",
            "",
        );
        assert!(FastFrame::scan(&f).is_some());
        let mut parser = TwilioParser::new();
        let (mut a, mut b) = (f.clone(), f);
        assert_eq!(parser.parse(&mut a), parser.parse_full(&mut b));
    }

    #[test]
    fn near_misses_agree_with_simd_json() {
        let p = "AAAA";
        let sid = "MZ1";
        let cases = [
            frame("02", "inbound", "1", "5", p, sid, ""),
            frame("99999999999999999999", "inbound", "1", "5", p, sid, ""),
            frame("", "inbound", "1", "5", p, sid, ""),
            frame("2", "in bound", "1", "5", p, sid, ""),
            frame("2", "inbound", "1", "5", "@@@@", sid, ""),
            frame("2", "inbound", "1", "5", p, "MZ\\u0031", ""),
            frame("2", "inbound", "1", "5", p, "", ""),
            frame("2", "inbound", "1", "5", p, sid, " "),
            frame("2", "inbound", "1", "5", p, sid, "x"),
        ];
        let mut parser = TwilioParser::new();
        for f in cases {
            let (mut a, mut b) = (f.clone(), f.clone());
            assert_eq!(
                parser.parse(&mut a),
                parser.parse_full(&mut b),
                "{}",
                String::from_utf8_lossy(&f)
            );
        }
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_simd_json_on_generated_media_frames(
            seq in "[0-9]{0,21}",
            track in "[a-z_ ]{0,9}",
            chunk in "[0-9]{1,4}",
            ts in "(0|[1-9][0-9]{0,6})",
            payload in "[A-Za-z0-9+/=@]{0,40}",
            sid in "[A-Za-z0-9_]{0,34}",
            tail in "( |\\n|)",
            flip in proptest::option::of((0usize..400, any::<u8>())),
        ) {
            let mut f = frame(&seq, &track, &chunk, &ts, &payload, &sid, &tail);
            if let Some((i, b)) = flip {
                let i = i % f.len();
                f[i] = b;
            }
            let mut parser = TwilioParser::new();
            let (mut a, mut b) = (f.clone(), f);
            prop_assert_eq!(parser.parse(&mut a), parser.parse_full(&mut b));
        }
    }
}
