//! Twilio's side of one bidirectional Media Stream, sans-IO (protocol.md 4).
//!
//! ```text
//!  driver (caller.rs)                 StreamSession                       callbridge
//!  ─ open ──────────────────────────▶ connected, start ───────────────────▶
//!  ─ every 20 ms: send_next_frame ──▶ dtmf?, media (script frame n) ──────▶  … stop
//!  ◀── handle_text(now, json) ◀────── media → Playout, mark → queued, clear ◀──
//!  ─ at poll_timeout: handle_timeout ▶ mark echoes whose audio has played ──▶
//! ```
//!
//! Outbound messages are JSON texts, each one WebSocket text frame, with the field order and
//! string-typed numbers of protocol.md 4.1. Everything the proxy sends is checked against 4.2;
//! what Twilio would reject or that breaks callbridge's own contract (mark names of 6.2) is
//! recorded as a [`Violation`], never a panic. The [`StreamReport`] holds the truth the tests
//! compare callbridge against: every payload received, what really played of each item, and
//! what had played of the interrupted item when each `clear` arrived.
//!
//! Time is an argument; the driver passes its clock.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use super::playout::{mark_item_id, ChunkId, ItemPlayout, Playout, BYTES_PER_MS};
use super::probe::StreamProbe;
use super::script::{tag_frame, Script, FRAME_BYTES, FRAME_MS};

/// Characters of an offending message kept in a [`Violation`], enough to see what it was.
const VIOLATION_DETAIL_CHARS: usize = 200;

/// Identity and content of one stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `accountSid` (`AC…`).
    pub account_sid: String,
    /// `callSid` (`CA…`), the one of the webhook.
    pub call_sid: String,
    /// `streamSid` (`MZ…`) the proxy must put on everything it sends.
    pub stream_sid: String,
    /// The TwiML `<Parameter>`s, verbatim, in document order: `start.customParameters`.
    pub custom_parameters: Vec<(String, String)>,
    /// What the caller says.
    pub script: Script,
    /// `Some(call_no)`: tag every frame with `(call_no, frame index)` (see `script::tag_frame`).
    pub frame_tag: Option<u32>,
}

/// What [`StreamSession::send_next_frame`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStep {
    /// A frame (and any DTMF due) was sent; call again in 20 ms.
    Sent,
    /// The script ended: `stop` was sent; the driver closes the socket (1000).
    Stopped,
    /// `stop` was already sent; nothing more to send.
    Done,
}

/// What the proxy did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViolationKind {
    /// A binary WebSocket message (protocol.md 4: every message is a JSON text frame).
    Binary,
    /// A text message that is not a JSON object.
    NotJson,
    /// No string `event`.
    NoEvent,
    /// An `event` other than `media`, `mark`, `clear`.
    UnknownEvent,
    /// No `streamSid` (4.2: every message must carry it).
    MissingStreamSid,
    /// A `streamSid` that is not this stream's; the message is ignored.
    WrongStreamSid,
    /// `media` without a string `media.payload`.
    MediaWithoutPayload,
    /// `media.payload` that is not padded standard base64; the message is ignored.
    BadPayload,
    /// `media` with inbound-only fields (`track`, `chunk`, `timestamp`, `sequenceNumber`).
    MediaExtraField,
    /// `mark` without a string `mark.name` (4.2: not a valid mark); ignored.
    MarkWithoutName,
    /// A mark name that is not `e={epoch};i={item_id};ms={cum}` (callbridge's contract, 6.2).
    ForeignMarkName,
    /// A `clear` while nothing was playing (6.2 step 1: nothing to clear), later than
    /// [`CLEAR_RACE_WINDOW`] after the caller's last mark echo.
    ClearWhileIdle,
}

/// How long after the caller's last mark echo a `clear` with nothing playing is still taken
/// for one that crossed the echo in flight (the proxy decides on the echoes it has received),
/// not a violation. Far below the quietest gap of the load test's script (~500 ms between the
/// end of an answer and the next speech), so a proxy that clears whenever speech starts is
/// still caught.
pub const CLEAR_RACE_WINDOW: Duration = Duration::from_millis(250);

/// One protocol violation by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// When, since the stream opened.
    pub at: Duration,
    /// What.
    pub kind: ViolationKind,
    /// The start of the offending message (or a short explanation).
    pub detail: String,
}

/// One `media` message from the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMedia {
    /// When, since the stream opened.
    pub at: Duration,
    /// `media.payload` exactly as received, for byte-exact comparisons.
    pub payload_b64: String,
    /// Decoded length.
    pub bytes: usize,
    /// The item it belonged to, by the mark that followed it; `None` if no mark did.
    pub item_id: Option<String>,
    /// Bytes of it the caller heard.
    pub played_bytes: u64,
}

/// One `clear` from the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearRecord {
    /// When, since the stream opened.
    pub at: Duration,
    /// Whether audio was playing when it arrived.
    pub was_playing: bool,
    /// The item being played when it arrived (or, if the buffer was empty, the item heard last).
    pub item_id: Option<String>,
    /// Bytes of that item the caller really heard, up to the clear.
    pub item_played_bytes: u64,
    /// The same in whole ms: compare with callbridge's `audio_end_ms` for this item.
    pub item_played_ms: u64,
    /// Bytes of audio it discarded.
    pub discarded_bytes: u64,
    /// Pending marks it caused to be echoed (their audio never played), in order.
    pub echoed_marks: Vec<String>,
}

/// One mark echoed back to the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoedMark {
    /// When, since the stream opened.
    pub at: Duration,
    /// The name, as received.
    pub name: String,
    /// Whether it was echoed because a `clear` discarded it (its audio never played).
    pub discarded: bool,
}

/// Timings of one scripted utterance, on the driver's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtteranceReport {
    /// Index of its segment in the script.
    pub segment: usize,
    /// Whether it is a scripted barge-in.
    pub barge_in: bool,
    /// Stream time of its first sample (ms).
    pub start_ms: u64,
    /// Stream time after its last sample (ms).
    pub end_ms: u64,
    /// When its first frame was sent, since the stream opened.
    pub started_at: Option<Duration>,
    /// When its last frame was sent, since the stream opened.
    pub ended_at: Option<Duration>,
    /// From `ended_at` to the first assistant `media` received after it.
    pub first_audio_after_end: Option<Duration>,
    /// Barge-ins only: from `started_at` to the first `clear` received after it.
    pub clear_after_start: Option<Duration>,
}

/// Everything the stream saw; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    /// The `streamSid` used.
    pub stream_sid: String,
    /// Caller frames sent.
    pub frames_sent: u32,
    /// DTMF messages sent.
    pub dtmf_sent: u32,
    /// Whether the caller hung up (sent `stop`).
    pub stop_sent: bool,
    /// Per utterance timings.
    pub utterances: Vec<UtteranceReport>,
    /// Every `media` received, in order.
    pub media: Vec<ReceivedMedia>,
    /// Every `clear` received, in order.
    pub clears: Vec<ClearRecord>,
    /// Every mark echoed, in order.
    pub marks_echoed: Vec<EchoedMark>,
    /// What played of each item.
    pub items: Vec<ItemPlayout>,
    /// Whole ms of assistant audio the caller heard.
    pub played_ms_total: u64,
    /// Bytes heard that no mark attributed to an item.
    pub unattributed_played_bytes: u64,
    /// Bytes discarded by `clear`s.
    pub discarded_bytes: u64,
    /// Bytes refused because more than 10 minutes were buffered.
    pub dropped_bytes: u64,
    /// Every protocol violation by the proxy.
    pub violations: Vec<Violation>,
}

/// Per-utterance instants measured while running.
#[derive(Debug, Clone, Default)]
struct UtteranceClock {
    /// Send time of its first frame.
    started: Option<Instant>,
    /// Send time of its last frame.
    ended: Option<Instant>,
    /// First assistant media after `ended`.
    first_audio: Option<Instant>,
    /// First clear after `started` (barge-ins).
    clear: Option<Instant>,
}

/// A `media` received, with its playout chunk.
#[derive(Debug, Clone)]
struct MediaIn {
    /// When.
    at: Instant,
    /// Payload as received.
    payload_b64: String,
    /// Decoded length.
    bytes: usize,
    /// Its chunk in the playout.
    chunk: ChunkId,
}

/// Twilio's side of one Media Stream. See the module docs.
#[derive(Debug)]
pub struct StreamSession {
    /// Identity, parameters, script.
    cfg: StreamConfig,
    /// When the stream opened (time origin of the report).
    opened_at: Instant,
    /// `sequenceNumber` of the last message sent after `connected` (`start` is 1).
    seq: u64,
    /// Index of the next frame to send.
    next_frame: u32,
    /// Whether `stop` was sent.
    stop_sent: bool,
    /// The caller's playout buffer.
    playout: Playout,
    /// Per utterance timings, indexed like `script.utterances()`.
    utterances: Vec<UtteranceClock>,
    /// Every media received.
    media: Vec<MediaIn>,
    /// Every clear received.
    clears: Vec<ClearRecord>,
    /// Every mark echoed.
    echoed: Vec<EchoedMark>,
    /// DTMF messages sent.
    dtmf_sent: u32,
    /// Protocol violations.
    violations: Vec<Violation>,
    /// Optional observer ([`StreamSession::set_probe`]).
    probe: Option<std::sync::Arc<dyn StreamProbe>>,
    /// Whether each received payload is kept for the report ([`StreamSession::set_keep_payloads`]).
    keep_payloads: bool,
}

impl StreamSession {
    /// A stream that opened (WebSocket upgraded) at `now`.
    pub fn new(cfg: StreamConfig, now: Instant) -> Self {
        let utterances = vec![UtteranceClock::default(); cfg.script.utterances().len()];
        StreamSession {
            cfg,
            opened_at: now,
            seq: 0,
            next_frame: 0,
            stop_sent: false,
            playout: Playout::new(),
            utterances,
            media: Vec::new(),
            clears: Vec::new(),
            echoed: Vec::new(),
            dtmf_sent: 0,
            violations: Vec::new(),
            probe: None,
            keep_payloads: true,
        }
    }

    /// Installs an observer of frames sent and media/clears received.
    pub fn set_probe(&mut self, probe: Option<std::sync::Arc<dyn StreamProbe>>) {
        self.probe = probe;
    }

    /// Whether to keep every received payload in the report (default: yes). The load test says
    /// no: long calls would otherwise hold every byte of assistant audio in memory
    /// ([`ReceivedMedia::payload_b64`] is then empty).
    pub fn set_keep_payloads(&mut self, keep: bool) {
        self.keep_payloads = keep;
    }

    /// Appends `connected` and `start` (protocol.md 4.1), the first two messages.
    pub fn open(&mut self, out: &mut Vec<String>) {
        out.push(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_owned());
        let seq = self.next_seq();
        let c = &self.cfg;
        let mut params = String::from("{");
        for (i, (k, v)) in dedup_last_wins(&c.custom_parameters).iter().enumerate() {
            if i > 0 {
                params.push(',');
            }
            params.push_str(&format!("{}:{}", js(k), js(v)));
        }
        params.push('}');
        out.push(format!(
            concat!(
                r#"{{"event":"start","sequenceNumber":"{}","start":{{"accountSid":{},"#,
                r#""streamSid":{},"callSid":{},"tracks":["inbound"],"customParameters":{},"#,
                r#""mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}},"#,
                r#""streamSid":{}}}"#
            ),
            seq,
            js(&c.account_sid),
            js(&c.stream_sid),
            js(&c.call_sid),
            params,
            js(&c.stream_sid)
        ));
    }

    /// Sends the next scripted frame at `now` (DTMF due in it first), or `stop` once the script
    /// has ended. Echoes due marks first.
    pub fn send_next_frame(&mut self, now: Instant, out: &mut Vec<String>) -> FrameStep {
        if self.stop_sent {
            return FrameStep::Done;
        }
        self.echo_due(now, out);
        let n = self.next_frame;
        if n >= self.cfg.script.frame_count() {
            let seq = self.next_seq();
            out.push(format!(
                r#"{{"event":"stop","sequenceNumber":"{}","stop":{{"accountSid":{},"callSid":{}}},"streamSid":{}}}"#,
                seq,
                js(&self.cfg.account_sid),
                js(&self.cfg.call_sid),
                js(&self.cfg.stream_sid)
            ));
            self.stop_sent = true;
            return FrameStep::Stopped;
        }
        let digits: Vec<char> = self.cfg.script.dtmf_in_frame(n).collect();
        for digit in digits {
            let seq = self.next_seq();
            out.push(format!(
                r#"{{"event":"dtmf","streamSid":{},"sequenceNumber":"{}","dtmf":{{"track":"inbound_track","digit":"{}"}}}}"#,
                js(&self.cfg.stream_sid),
                seq,
                digit
            ));
            self.dtmf_sent += 1;
        }
        let mut frame = [0u8; FRAME_BYTES];
        self.cfg.script.fill_frame(n, &mut frame);
        if let Some(call_no) = self.cfg.frame_tag {
            tag_frame(call_no, n, &mut frame);
        }
        if let Some(probe) = &self.probe {
            probe.frame_sent(now, n);
        }
        let seq = self.next_seq();
        out.push(format!(
            r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{}"}},"streamSid":{}}}"#,
            seq,
            u64::from(n) + 1,
            u64::from(n) * u64::from(FRAME_MS),
            base64::engine::general_purpose::STANDARD.encode(frame),
            js(&self.cfg.stream_sid)
        ));
        for (u, clock) in self
            .cfg
            .script
            .utterances()
            .iter()
            .zip(&mut self.utterances)
        {
            if u.first_frame() == n {
                clock.started = Some(now);
            }
            if u.last_frame() == n {
                clock.ended = Some(now);
            }
        }
        self.next_frame += 1;
        FrameStep::Sent
    }

    /// Handles one text message from the proxy received at `now`; mark echoes go to `out`.
    pub fn handle_text(&mut self, now: Instant, text: &[u8], out: &mut Vec<String>) {
        self.echo_due(now, out);
        let msg = match serde_json::from_slice::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => return self.violation(now, ViolationKind::NotJson, text),
        };
        let Some(event) = msg.get("event").and_then(Value::as_str) else {
            return self.violation(now, ViolationKind::NoEvent, text);
        };
        match msg.get("streamSid") {
            None => return self.violation(now, ViolationKind::MissingStreamSid, text),
            Some(Value::String(s)) if *s == self.cfg.stream_sid => {}
            Some(_) => return self.violation(now, ViolationKind::WrongStreamSid, text),
        }
        match event {
            "media" => self.on_media(now, &msg, text),
            "mark" => self.on_mark(now, &msg, text, out),
            "clear" => self.on_clear(now, out),
            _ => self.violation(now, ViolationKind::UnknownEvent, text),
        }
    }

    /// Records a binary message from the proxy (never valid on a Media Stream).
    pub fn handle_binary(&mut self, now: Instant, payload: &[u8]) {
        self.violation(now, ViolationKind::Binary, payload);
    }

    /// When a queued mark's audio will have played: call [`StreamSession::handle_timeout`]
    /// then. `None` when no mark waits or the caller hung up.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stop_sent {
            return None;
        }
        self.playout.next_mark_due()
    }

    /// Plays up to `now` and echoes the marks whose audio has played.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<String>) {
        self.echo_due(now, out);
    }

    /// Whether the caller has hung up (`stop` sent).
    pub fn is_stopped(&self) -> bool {
        self.stop_sent
    }

    /// The report, as of `now` (playout advanced to `now`, without echoing anything).
    pub fn report(&mut self, now: Instant) -> StreamReport {
        if !self.stop_sent {
            self.playout.advance(now);
        }
        let since = |t: Instant| t.saturating_duration_since(self.opened_at);
        let utterances = self
            .cfg
            .script
            .utterances()
            .iter()
            .zip(&self.utterances)
            .map(|(u, c)| UtteranceReport {
                segment: u.segment,
                barge_in: u.barge_in,
                start_ms: u.start_ms(),
                end_ms: u.end_ms(),
                started_at: c.started.map(since),
                ended_at: c.ended.map(since),
                first_audio_after_end: c.ended.zip(c.first_audio).map(|(e, a)| a - e),
                clear_after_start: c.started.zip(c.clear).map(|(s, k)| k - s),
            })
            .collect();
        let media = self
            .media
            .iter()
            .map(|m| ReceivedMedia {
                at: since(m.at),
                payload_b64: m.payload_b64.clone(),
                bytes: m.bytes,
                item_id: self.playout.chunk_item(m.chunk).map(str::to_owned),
                played_bytes: self.playout.chunk_played_bytes(m.chunk),
            })
            .collect();
        StreamReport {
            stream_sid: self.cfg.stream_sid.clone(),
            frames_sent: self.next_frame,
            dtmf_sent: self.dtmf_sent,
            stop_sent: self.stop_sent,
            utterances,
            media,
            clears: self.clears.clone(),
            marks_echoed: self.echoed.clone(),
            items: self.playout.items().to_vec(),
            played_ms_total: self.playout.played_ms_total(),
            unattributed_played_bytes: self.playout.unattributed_played_bytes(),
            discarded_bytes: self.playout.discarded_bytes_total(),
            dropped_bytes: self.playout.dropped_bytes_total(),
            violations: self.violations.clone(),
        }
    }

    /// `media`: queue the audio, note latencies.
    fn on_media(&mut self, now: Instant, msg: &serde_json::Map<String, Value>, text: &[u8]) {
        let media = msg.get("media").and_then(Value::as_object);
        let Some(payload) = media.and_then(|m| m.get("payload")).and_then(Value::as_str) else {
            return self.violation(now, ViolationKind::MediaWithoutPayload, text);
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(payload) else {
            return self.violation(now, ViolationKind::BadPayload, text);
        };
        let extra = media.is_some_and(|m| {
            ["track", "chunk", "timestamp"]
                .iter()
                .any(|k| m.contains_key(*k))
        }) || msg.contains_key("sequenceNumber");
        if extra {
            self.violation(now, ViolationKind::MediaExtraField, text);
        }
        if self.stop_sent {
            return;
        }
        if let Some(probe) = &self.probe {
            probe.media_received(now, &bytes);
        }
        let chunk = self.playout.push_media(now, bytes.len());
        self.media.push(MediaIn {
            at: now,
            payload_b64: if self.keep_payloads {
                payload.to_owned()
            } else {
                String::new()
            },
            bytes: bytes.len(),
            chunk,
        });
        for c in &mut self.utterances {
            if c.first_audio.is_none() && c.ended.is_some_and(|e| e <= now) {
                c.first_audio = Some(now);
            }
        }
    }

    /// `mark`: queue it behind the audio (or echo it at once on an empty buffer).
    fn on_mark(
        &mut self,
        now: Instant,
        msg: &serde_json::Map<String, Value>,
        text: &[u8],
        out: &mut Vec<String>,
    ) {
        let name = msg
            .get("mark")
            .and_then(Value::as_object)
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        let Some(name) = name else {
            return self.violation(now, ViolationKind::MarkWithoutName, text);
        };
        if mark_item_id(name).is_none() {
            self.violation(now, ViolationKind::ForeignMarkName, text);
        }
        if self.stop_sent {
            return;
        }
        self.playout.push_mark(now, name);
        self.echo_due(now, out);
    }

    /// `clear`: record what had played of the interrupted item, discard, echo pending marks.
    fn on_clear(&mut self, now: Instant, out: &mut Vec<String>) {
        if self.stop_sent {
            return;
        }
        if let Some(probe) = &self.probe {
            probe.clear_received(now);
        }
        // The echo of the last mark may still have been on its way to the proxy when it decided
        // to clear (protocol.md 6.2 step 1 goes by what the proxy has been told): a clear that
        // arrives within CLEAR_RACE_WINDOW of the last echo crossed it, anything later is a
        // clear the proxy could have known to be pointless.
        // After echo_due: an echo that became due in this same turn leaves now, and crossed it.
        self.echo_due(now, out);
        let last_echo_at = self
            .echoed
            .iter()
            .rev()
            .find(|m| !m.discarded)
            .map(|m| m.at);
        let was_playing = self.playout.is_playing();
        let since_open = now.saturating_duration_since(self.opened_at);
        let crossed_last_echo = !was_playing
            && last_echo_at.is_some_and(|at| since_open.saturating_sub(at) <= CLEAR_RACE_WINDOW);
        if !was_playing && !crossed_last_echo {
            self.violation_text(
                now,
                ViolationKind::ClearWhileIdle,
                "clear with nothing playing",
            );
        }
        let item_id = self
            .playout
            .playing_item()
            .or_else(|| self.last_heard_item())
            .map(str::to_owned);
        let item_played_bytes = item_id
            .as_deref()
            .map_or(0, |i| self.playout.played_bytes_of(i));
        let discarded_bytes = self.playout.buffered_bytes();
        let echoed_marks = self.playout.clear(now);
        for name in &echoed_marks {
            self.echo(now, name, true, out);
        }
        for (u, c) in self
            .cfg
            .script
            .utterances()
            .iter()
            .zip(&mut self.utterances)
        {
            if u.barge_in && c.clear.is_none() && c.started.is_some_and(|s| s <= now) {
                c.clear = Some(now);
            }
        }
        self.clears.push(ClearRecord {
            at: now.saturating_duration_since(self.opened_at),
            was_playing,
            item_id,
            item_played_bytes,
            item_played_ms: item_played_bytes / BYTES_PER_MS,
            discarded_bytes,
            echoed_marks,
        });
    }

    /// The item of the most recent media that played at all.
    fn last_heard_item(&self) -> Option<&str> {
        self.media
            .iter()
            .rev()
            .filter(|m| self.playout.chunk_played_bytes(m.chunk) > 0)
            .find_map(|m| self.playout.chunk_item(m.chunk))
    }

    /// Echoes every mark whose audio has played by `now`.
    fn echo_due(&mut self, now: Instant, out: &mut Vec<String>) {
        if self.stop_sent {
            return;
        }
        for name in self.playout.advance(now) {
            self.echo(now, &name, false, out);
        }
    }

    /// Appends one mark echo (protocol.md 4.1 `mark`).
    fn echo(&mut self, now: Instant, name: &str, discarded: bool, out: &mut Vec<String>) {
        let seq = self.next_seq();
        out.push(format!(
            r#"{{"event":"mark","sequenceNumber":"{}","streamSid":{},"mark":{{"name":{}}}}}"#,
            seq,
            js(&self.cfg.stream_sid),
            js(name)
        ));
        self.echoed.push(EchoedMark {
            at: now.saturating_duration_since(self.opened_at),
            name: name.to_owned(),
            discarded,
        });
    }

    /// The next `sequenceNumber`.
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Records a violation with the start of the offending message.
    fn violation(&mut self, now: Instant, kind: ViolationKind, msg: &[u8]) {
        let text = String::from_utf8_lossy(msg);
        let detail: String = text.chars().take(VIOLATION_DETAIL_CHARS).collect();
        self.violation_text(now, kind, &detail);
    }

    /// Records a violation with an explanation.
    fn violation_text(&mut self, now: Instant, kind: ViolationKind, detail: &str) {
        self.violations.push(Violation {
            at: now.saturating_duration_since(self.opened_at),
            kind,
            detail: detail.to_owned(),
        });
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    Value::from(s).to_string()
}

/// Parameters with repeated names collapsed (the first position, the last value), as a JSON
/// object can carry each name once.
fn dedup_last_wins(params: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (k, v) in params {
        match out.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::script::{read_tag, Clip, Segment};

    const MZ: &str = "MZ00000000000000000000000000000001";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(script: Script) -> StreamConfig {
        StreamConfig {
            account_sid: "AC00000000000000000000000000000001".to_owned(),
            call_sid: "CA00000000000000000000000000000001".to_owned(),
            stream_sid: MZ.to_owned(),
            custom_parameters: vec![
                ("callId".to_owned(), "c_7f3a9e".to_owned()),
                ("token".to_owned(), "q\"9".to_owned()),
            ],
            script,
            frame_tag: None,
        }
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn media_msg(bytes: usize) -> String {
        let payload = base64::engine::general_purpose::STANDARD.encode(vec![0x55u8; bytes]);
        format!(r#"{{"event":"media","streamSid":"{MZ}","media":{{"payload":"{payload}"}}}}"#)
    }

    fn mark_msg(name: &str) -> String {
        format!(r#"{{"event":"mark","streamSid":"{MZ}","mark":{{"name":"{name}"}}}}"#)
    }

    fn clear_msg() -> String {
        format!(r#"{{"event":"clear","streamSid":"{MZ}"}}"#)
    }

    /// A session opened at t0, with its opening messages drained.
    fn session(script: Script) -> (StreamSession, Instant, Vec<String>) {
        let t0 = Instant::now();
        let mut s = StreamSession::new(cfg(script), t0);
        let mut out = Vec::new();
        s.open(&mut out);
        (s, t0, out)
    }

    #[test]
    fn opening_messages_are_connected_then_start_exactly_as_twilio_sends_them() {
        let (_, _, out) = session(Script::hello_then_hang_up(0));
        assert_eq!(
            out[0],
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#
        );
        assert_eq!(
            out[1],
            concat!(
                r#"{"event":"start","sequenceNumber":"1","start":{"#,
                r#""accountSid":"AC00000000000000000000000000000001","#,
                r#""streamSid":"MZ00000000000000000000000000000001","#,
                r#""callSid":"CA00000000000000000000000000000001","tracks":["inbound"],"#,
                r#""customParameters":{"callId":"c_7f3a9e","token":"q\"9"},"#,
                r#""mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"#,
                r#""streamSid":"MZ00000000000000000000000000000001"}"#
            )
        );
    }

    #[test]
    fn frames_carry_string_counters_and_the_script_audio() {
        let script = Script::new(vec![Segment::Speak(Clip::HELLO_EN)]).unwrap();
        let (mut s, t0, _) = session(script.clone());
        let mut out = Vec::new();
        assert_eq!(s.send_next_frame(t0, &mut out), FrameStep::Sent);
        assert_eq!(s.send_next_frame(t0 + ms(20), &mut out), FrameStep::Sent);
        let m = json(&out[1]);
        assert_eq!(m["event"], "media");
        assert_eq!(m["sequenceNumber"], "3");
        assert_eq!(m["media"]["track"], "inbound");
        assert_eq!(m["media"]["chunk"], "2");
        assert_eq!(m["media"]["timestamp"], "20");
        assert_eq!(m["streamSid"], MZ);
        let payload = m["media"]["payload"].as_str().unwrap();
        assert_eq!(payload.len(), 216);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        let mut expected = [0u8; FRAME_BYTES];
        script.fill_frame(1, &mut expected);
        assert_eq!(bytes, expected);
        assert_eq!(read_tag(&bytes), None);
    }

    #[test]
    fn stop_follows_the_last_frame_and_nothing_after_it() {
        let script = Script::new(vec![Segment::Silence { ms: 40 }]).unwrap();
        let (mut s, t0, _) = session(script);
        let mut out = Vec::new();
        assert_eq!(s.send_next_frame(t0, &mut out), FrameStep::Sent);
        assert_eq!(s.send_next_frame(t0 + ms(20), &mut out), FrameStep::Sent);
        assert_eq!(s.send_next_frame(t0 + ms(40), &mut out), FrameStep::Stopped);
        assert_eq!(s.send_next_frame(t0 + ms(60), &mut out), FrameStep::Done);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[2],
            r#"{"event":"stop","sequenceNumber":"4","stop":{"accountSid":"AC00000000000000000000000000000001","callSid":"CA00000000000000000000000000000001"},"streamSid":"MZ00000000000000000000000000000001"}"#
        );
        assert!(s.is_stopped());
        assert_eq!(s.report(t0 + ms(60)).frames_sent, 2);
    }

    #[test]
    fn dtmf_goes_before_the_media_of_its_frame_and_tags_mark_frames() {
        let script = Script::new(vec![
            Segment::Silence { ms: 20 },
            Segment::Dtmf { digit: '7' },
            Segment::Silence { ms: 20 },
        ])
        .unwrap();
        let t0 = Instant::now();
        let mut c = cfg(script);
        c.frame_tag = Some(9);
        let mut s = StreamSession::new(c, t0);
        let mut out = Vec::new();
        s.send_next_frame(t0, &mut out);
        s.send_next_frame(t0 + ms(20), &mut out);
        assert_eq!(
            out[1],
            r#"{"event":"dtmf","streamSid":"MZ00000000000000000000000000000001","sequenceNumber":"2","dtmf":{"track":"inbound_track","digit":"7"}}"#
        );
        let m = json(&out[2]);
        assert_eq!(m["sequenceNumber"], "3");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(m["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(read_tag(&bytes), Some((9, 1)));
        assert_eq!(s.report(t0).dtmf_sent, 1);
    }

    #[test]
    fn marks_are_echoed_when_their_audio_has_played() {
        let (mut s, t0, _) = session(Script::hello_then_hang_up(5000));
        let mut out = Vec::new();
        s.handle_text(t0, media_msg(400).as_bytes(), &mut out);
        s.handle_text(t0, mark_msg("e=0;i=item_A;ms=50").as_bytes(), &mut out);
        assert!(out.is_empty());
        assert_eq!(s.poll_timeout(), Some(t0 + ms(50)));
        s.handle_timeout(t0 + ms(49), &mut out);
        assert!(out.is_empty());
        s.handle_timeout(t0 + ms(50), &mut out);
        assert_eq!(
            out,
            vec![r#"{"event":"mark","sequenceNumber":"2","streamSid":"MZ00000000000000000000000000000001","mark":{"name":"e=0;i=item_A;ms=50"}}"#.to_owned()]
        );
        assert_eq!(s.poll_timeout(), None);
        let r = s.report(t0 + ms(100));
        assert_eq!(r.items[0].played_ms(), 50);
        assert_eq!(r.media[0].item_id.as_deref(), Some("item_A"));
        assert!(!r.marks_echoed[0].discarded);
        assert!(r.violations.is_empty());
    }

    #[test]
    fn a_mark_on_an_empty_buffer_is_echoed_at_once() {
        let (mut s, t0, _) = session(Script::hello_then_hang_up(5000));
        let mut out = Vec::new();
        s.handle_text(t0, mark_msg("e=0;i=item_A;ms=0").as_bytes(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(json(&out[0])["mark"]["name"], "e=0;i=item_A;ms=0");
    }

    #[test]
    fn clear_records_what_really_played_and_echoes_pending_marks() {
        let (mut s, t0, _) = session(Script::hello_then_barge_in(2400, 6000));
        let mut out = Vec::new();
        // Caller frames up to 2500 ms; the assistant answers at 2500 ms with 3 deltas.
        for n in 0..=125u64 {
            s.send_next_frame(t0 + ms(20 * n), &mut out);
        }
        out.clear();
        let answer_at = t0 + ms(2500);
        for (bytes, cum) in [(400, 50), (2400, 350), (800, 450)] {
            s.handle_text(answer_at, media_msg(bytes).as_bytes(), &mut out);
            let mark = format!("e=0;i=item_X;ms={cum}");
            s.handle_text(answer_at, mark_msg(&mark).as_bytes(), &mut out);
        }
        s.handle_timeout(answer_at + ms(50), &mut out);
        assert_eq!(out.len(), 1);
        // The clear lands 180 ms into the item.
        s.handle_text(answer_at + ms(180), clear_msg().as_bytes(), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(json(&out[1])["mark"]["name"], "e=0;i=item_X;ms=350");
        assert_eq!(json(&out[2])["mark"]["name"], "e=0;i=item_X;ms=450");
        let r = s.report(answer_at + ms(1000));
        let clear = &r.clears[0];
        assert!(clear.was_playing);
        assert_eq!(clear.item_id.as_deref(), Some("item_X"));
        assert_eq!(clear.item_played_ms, 180);
        assert_eq!(clear.discarded_bytes, 3600 - 1440);
        assert_eq!(clear.echoed_marks.len(), 2);
        assert_eq!(
            r.marks_echoed
                .iter()
                .map(|m| m.discarded)
                .collect::<Vec<_>>(),
            vec![false, true, true]
        );
        assert_eq!(r.played_ms_total, 180);
        // The barge-in utterance starts at 2400 ms (frame 120), the clear arrives at 2680.
        let barge = &r.utterances[1];
        assert!(barge.barge_in);
        assert_eq!(barge.started_at, Some(ms(2400)));
        assert_eq!(barge.clear_after_start, Some(ms(280)));
        // The greeting ended in frame 118 (sent at 2360 ms); first audio at 2500.
        assert_eq!(r.utterances[0].ended_at, Some(ms(2360)));
        assert_eq!(r.utterances[0].first_audio_after_end, Some(ms(140)));
        assert_eq!(r.media.len(), 3);
        assert_eq!(r.media[1].played_bytes, 1040);
        assert!(r.violations.is_empty());
    }

    #[test]
    fn a_clear_with_nothing_playing_is_a_violation_naming_the_last_item() {
        let (mut s, t0, _) = session(Script::hello_then_hang_up(5000));
        let mut out = Vec::new();
        s.handle_text(t0, media_msg(160).as_bytes(), &mut out);
        s.handle_text(t0, mark_msg("e=0;i=item_A;ms=20").as_bytes(), &mut out);
        // The mark is echoed when its 20 ms have played; the clear comes long after.
        s.handle_timeout(t0 + ms(20), &mut out);
        let late = ms(20) + CLEAR_RACE_WINDOW + ms(1);
        s.handle_text(t0 + late, clear_msg().as_bytes(), &mut out);
        let r = s.report(t0 + late);
        assert!(!r.clears[0].was_playing);
        assert_eq!(r.clears[0].item_id.as_deref(), Some("item_A"));
        assert_eq!(r.clears[0].item_played_ms, 20);
        assert_eq!(r.violations[0].kind, ViolationKind::ClearWhileIdle);
    }

    #[test]
    fn a_clear_that_finds_the_last_echo_due_crossed_it() {
        let (mut s, t0, _) = session(Script::hello_then_hang_up(5000));
        let mut out = Vec::new();
        s.handle_text(t0, media_msg(160).as_bytes(), &mut out);
        s.handle_text(t0, mark_msg("e=0;i=item_A;ms=20").as_bytes(), &mut out);
        // No timeout in between: the echo becomes due, and leaves, with the clear itself.
        s.handle_text(t0 + ms(30), clear_msg().as_bytes(), &mut out);
        let r = s.report(t0 + ms(30));
        assert!(!r.clears[0].was_playing);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn a_clear_that_crossed_the_last_echo_in_flight_is_not_a_violation() {
        let (mut s, t0, _) = session(Script::hello_then_hang_up(5000));
        let mut out = Vec::new();
        s.handle_text(t0, media_msg(160).as_bytes(), &mut out);
        s.handle_text(t0, mark_msg("e=0;i=item_A;ms=20").as_bytes(), &mut out);
        s.handle_timeout(t0 + ms(20), &mut out);
        // Within the window: the proxy may not have had the echo when it cleared.
        let soon = ms(20) + CLEAR_RACE_WINDOW;
        s.handle_text(t0 + soon, clear_msg().as_bytes(), &mut out);
        let r = s.report(t0 + soon);
        assert!(!r.clears[0].was_playing);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn malformed_messages_are_recorded_as_violations() {
        let (mut s, t0, _) = session(Script::hello_then_hang_up(5000));
        let mut out = Vec::new();
        let cases: Vec<(String, ViolationKind)> = vec![
            ("not json".to_owned(), ViolationKind::NotJson),
            ("[1,2]".to_owned(), ViolationKind::NotJson),
            (format!(r#"{{"streamSid":"{MZ}"}}"#), ViolationKind::NoEvent),
            (
                r#"{"event":"clear"}"#.to_owned(),
                ViolationKind::MissingStreamSid,
            ),
            (
                r#"{"event":"clear","streamSid":"MZ0"}"#.to_owned(),
                ViolationKind::WrongStreamSid,
            ),
            (
                format!(r#"{{"event":"mark","streamSid":"{MZ}"}}"#),
                ViolationKind::MarkWithoutName,
            ),
            (
                format!(r#"{{"event":"mark","streamSid":"{MZ}","mark":{{"name":5}}}}"#),
                ViolationKind::MarkWithoutName,
            ),
            (
                format!(r#"{{"event":"media","streamSid":"{MZ}","media":{{}}}}"#),
                ViolationKind::MediaWithoutPayload,
            ),
            (
                format!(r#"{{"event":"media","streamSid":"{MZ}","media":{{"payload":"@@@"}}}}"#),
                ViolationKind::BadPayload,
            ),
            (
                format!(r#"{{"event":"start","streamSid":"{MZ}"}}"#),
                ViolationKind::UnknownEvent,
            ),
        ];
        for (msg, _) in &cases {
            s.handle_text(t0, msg.as_bytes(), &mut out);
        }
        s.handle_binary(t0, b"\x00\x01");
        let r = s.report(t0);
        let kinds: Vec<ViolationKind> = r.violations.iter().map(|v| v.kind).collect();
        let mut expected: Vec<ViolationKind> = cases.iter().map(|(_, k)| *k).collect();
        expected.push(ViolationKind::Binary);
        assert_eq!(kinds, expected);
        assert!(out.is_empty(), "nothing malformed is acted on");
        assert!(r.media.is_empty() && r.clears.is_empty());
        assert_eq!(r.violations[3].detail, r#"{"event":"clear"}"#);
    }

    #[test]
    fn contract_breaches_are_recorded_but_the_message_still_acts() {
        let (mut s, t0, _) = session(Script::hello_then_hang_up(5000));
        let mut out = Vec::new();
        let with_extra = format!(
            r#"{{"event":"media","streamSid":"{MZ}","media":{{"track":"outbound","payload":"AAAA"}}}}"#
        );
        s.handle_text(t0, with_extra.as_bytes(), &mut out);
        s.handle_text(t0, mark_msg("responsePart").as_bytes(), &mut out);
        s.handle_timeout(t0 + ms(1), &mut out);
        let r = s.report(t0 + ms(1));
        let kinds: Vec<ViolationKind> = r.violations.iter().map(|v| v.kind).collect();
        assert_eq!(
            kinds,
            vec![
                ViolationKind::MediaExtraField,
                ViolationKind::ForeignMarkName
            ]
        );
        assert_eq!(r.media.len(), 1);
        assert_eq!(
            out.len(),
            1,
            "the foreign mark is still echoed after its audio"
        );
    }

    #[test]
    fn after_stop_nothing_is_queued_or_echoed() {
        let script = Script::new(vec![Segment::Silence { ms: 20 }]).unwrap();
        let (mut s, t0, _) = session(script);
        let mut out = Vec::new();
        s.send_next_frame(t0, &mut out);
        s.send_next_frame(t0 + ms(20), &mut out);
        out.clear();
        s.handle_text(t0 + ms(30), media_msg(160).as_bytes(), &mut out);
        s.handle_text(t0 + ms(30), mark_msg("e=0;i=a;ms=20").as_bytes(), &mut out);
        s.handle_text(t0 + ms(30), clear_msg().as_bytes(), &mut out);
        assert!(out.is_empty());
        assert_eq!(s.poll_timeout(), None);
        let r = s.report(t0 + ms(100));
        assert!(r.media.is_empty() && r.clears.is_empty());
    }

    #[test]
    fn repeated_custom_parameter_names_keep_the_last_value() {
        let params = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "3".to_owned()),
        ];
        assert_eq!(dedup_last_wins(&params), vec![("a", "3"), ("b", "2")]);
    }

    #[derive(Debug, Default)]
    struct Seen {
        frames: Vec<u32>,
        media_bytes: Vec<usize>,
        clears: usize,
    }

    #[derive(Debug, Default)]
    struct TestProbe(std::sync::Mutex<Seen>);

    impl StreamProbe for TestProbe {
        fn frame_sent(&self, _now: Instant, index: u32) {
            self.0.lock().unwrap().frames.push(index);
        }
        fn media_received(&self, _now: Instant, audio: &[u8]) {
            self.0.lock().unwrap().media_bytes.push(audio.len());
        }
        fn clear_received(&self, _now: Instant) {
            self.0.lock().unwrap().clears += 1;
        }
    }

    #[test]
    fn a_probe_sees_frames_media_and_clears_and_payloads_can_be_dropped() {
        let script = Script::new(vec![Segment::Silence { ms: 100 }]).unwrap();
        let (mut s, t0, _) = session(script);
        let probe = std::sync::Arc::new(TestProbe::default());
        s.set_probe(Some(probe.clone()));
        s.set_keep_payloads(false);
        let mut out = Vec::new();
        s.send_next_frame(t0, &mut out);
        s.send_next_frame(t0 + ms(20), &mut out);
        s.handle_text(t0 + ms(25), media_msg(800).as_bytes(), &mut out);
        s.handle_text(
            t0 + ms(26),
            mark_msg("e=0;i=item_A;ms=100").as_bytes(),
            &mut out,
        );
        s.handle_text(t0 + ms(30), clear_msg().as_bytes(), &mut out);
        let seen = probe.0.lock().unwrap();
        assert_eq!(seen.frames, [0, 1]);
        assert_eq!(seen.media_bytes, [800]);
        assert_eq!(seen.clears, 1);
        let report = s.report(t0 + ms(40));
        assert_eq!(report.media.len(), 1);
        assert_eq!(report.media[0].bytes, 800);
        assert!(report.media[0].payload_b64.is_empty(), "payloads not kept");
    }
}
