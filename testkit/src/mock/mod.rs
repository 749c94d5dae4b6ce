//! The scripted mock OpenAI Realtime server, sans-IO core: one [`MockSession`] per WebSocket
//! connection of a client (callbridge) to the mock.
//!
//! ```text
//!  callbridge ──text frame──▶ IO shell ──handle_client_text(now, text)──▶ MockSession
//!  callbridge ◀─text frame─── IO shell ◀──────────poll_send()──────────── MockSession
//!                             IO shell ───handle_timeout(now) at poll_timeout()──▶
//!                             IO shell ◀──────should_close()─── (close the socket)
//! ```
//!
//! It follows `protocol.md` section 5 (GA interface, `audio/pcmu`, server VAD, barge-in) and is
//! strict where the real server is strict, and stricter where a lenient mock would hide a
//! callbridge bug (audio before `session.updated`, beta-era session fields, a `response.create`
//! before the tool output). Every refusal is an `error` event, never a panic, and is recorded in
//! [`MockStats`] with everything else a test wants to check.
//!
//! # Run loop
//!
//! After [`MockSession::new`] and after every `handle_*` call: drain [`MockSession::poll_send`]
//! until `None`, then check [`MockSession::should_close`], then re-arm the timer with
//! [`MockSession::poll_timeout`] and call [`MockSession::handle_timeout`] when it fires.
//!
//! # Script
//!
//! * Caller turns come from an energy VAD over the appended μ-law (module `audio`): a 20 ms window is
//!   speech when its mean absolute linear amplitude exceeds `threshold ×`
//!   [`MockConfig::vad_amplitude_at_full_threshold`] (threshold 0.5 → 500 by default; silence is
//!   0, the mock's own tone about 3800), or when it overlaps a [`MockConfig::scripted_speech`]
//!   span. `silence_duration_ms` of silence ends the turn: `speech_stopped`, `committed`, the
//!   user item, its transcript (next line of [`MockConfig::user_transcripts`], if transcription
//!   is on), then a response if `create_response`.
//! * A response streams [`MockConfig::response_audio_ms`] of [`mock_audio`] in deltas whose sizes
//!   cycle through [`MockConfig::delta_sizes_ms`], [`MockConfig::speedup`] times faster than real
//!   time, with transcript deltas of the next [`MockConfig::assistant_transcripts`] line.
//! * Ids are counters (`event_M00001`, `item_M00002`, `resp_M00001`, `call_M00001`, with
//!   [`MockConfig::id_prefix`] `M`), so runs are reproducible.
//!
//! # Layout
//! - `audio`: μ-law codec, [`mock_audio`], the energy VAD.
//! - `session_config`: default session, `session.update` checks and merge.
//! - `response`: response streaming, cancellation, the scripted function call.
//! - `rejection`: [`MockRejection`] and the `error` events built from it.
//! - [`server`]: the IO shell: a loopback WebSocket server running one session per connection.

mod audio;
mod rejection;
mod response;
pub mod server;
mod session_config;
pub mod tap;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

pub use audio::{
    decode_mock_audio_tag, linear_to_ulaw, mean_abs_amplitude, mock_audio, ulaw_to_linear,
    SpeechSpan, BYTES_PER_MS, MOCK_AUDIO_TAG_BYTES, VAD_WINDOW_MS,
};
pub use rejection::{MockRejection, SentError, CLIENT_EVENT_TYPES, INVALID_REQUEST_ERROR};

use audio::{Vad, VadEvent, VadParams};
use response::AudioResponse;

/// Largest `audio` string of one `input_audio_buffer.append`: the real API's 15 MiB per event
/// (protocol.md 5.3).
pub const MAX_APPEND_AUDIO_CHARS: usize = 15 * 1024 * 1024;

/// Least audio `input_audio_buffer.commit` accepts, ms (the real server's minimum).
pub const MIN_COMMIT_MS: u64 = 100;

/// The validation hook: checks one client event (parsed JSON) and names the problem. The
/// integrator wires it to the client JSON Schema validator.
pub type ClientValidator = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// The default hook: the event is an object with a string `type` (the schema's common ground).
pub fn basic_client_check(event: &Value) -> Result<(), String> {
    match event.get("type") {
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err("'type' must be a string".to_owned()),
        None => Err("expected an object with a 'type'".to_owned()),
    }
}

/// The scripted function call (protocol.md 5.4): response number `on_response` is a
/// `function_call` item instead of audio.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCallScript {
    /// Tool name, e.g. `lookup_order`.
    pub name: String,
    /// Arguments as JSON text, e.g. `{"order_id":"12345"}`.
    pub arguments: String,
    /// Which response of the session (1-based) is the call.
    pub on_response: u32,
}

/// How the mock behaves. `Default` is a realistic short conversation: energy VAD, 3 s answers in
/// varying deltas at 4× real time, English and Japanese lines taking turns.
#[derive(Clone)]
pub struct MockConfig {
    /// Infix of every generated id, so several sessions of one test have distinct ids.
    pub id_prefix: String,
    /// Model reported in the session.
    pub model: String,
    /// Audio of each assistant response, ms.
    pub response_audio_ms: u64,
    /// Sizes of successive audio deltas, ms, cycled (the last delta is what remains). A 0 or an
    /// empty list is treated as 20 ms.
    pub delta_sizes_ms: Vec<u64>,
    /// How much faster than real time audio is generated (4.0: a 200 ms delta every 50 ms).
    /// Non-finite or non-positive values are treated as 1.0.
    pub speedup: f64,
    /// Wall time from the start of a response to its first delta, ms (the model's latency).
    pub first_delta_delay_ms: u64,
    /// Mean absolute amplitude that counts as speech at `threshold` 1.0; the VAD threshold is
    /// `turn_detection.threshold` times this (0.5 → 500 by default).
    pub vad_amplitude_at_full_threshold: f64,
    /// Whether loud audio is speech (off: only [`MockConfig::scripted_speech`] spans are).
    pub energy_vad: bool,
    /// Input-timeline spans that are speech whatever the audio ("speech after N ms of caller
    /// audio, for M ms").
    pub scripted_speech: Vec<SpeechSpan>,
    /// Caller transcripts, one per committed turn, cycled.
    pub user_transcripts: Vec<String>,
    /// Assistant lines, one per audio response, cycled.
    pub assistant_transcripts: Vec<String>,
    /// Optional scripted function call.
    pub function_call: Option<FunctionCallScript>,
    /// Close the session this long after it started (like the real 60-minute limit), ms.
    pub max_session_ms: Option<u64>,
    /// The validation hook every client event passes first.
    pub validate_client: ClientValidator,
    /// Keep per-frame records in [`MockStats`] (every append and delta string, every client
    /// event type). On by default for tests; the load test turns it off, since these grow by
    /// ~11 KB per call-second and would be what it measures.
    pub keep_records: bool,
    /// Observation hooks (the load test's tags and clocks); `None` in normal use.
    pub tap: Option<tap::MockTapFactory>,
}

impl std::fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockConfig")
            .field("id_prefix", &self.id_prefix)
            .field("response_audio_ms", &self.response_audio_ms)
            .field("delta_sizes_ms", &self.delta_sizes_ms)
            .field("speedup", &self.speedup)
            .field("scripted_speech", &self.scripted_speech)
            .field("function_call", &self.function_call)
            .finish_non_exhaustive()
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        let lines = |lines: &[&str]| lines.iter().map(|l| (*l).to_owned()).collect();
        MockConfig {
            id_prefix: "M".to_owned(),
            model: "gpt-realtime".to_owned(),
            response_audio_ms: 3000,
            delta_sizes_ms: vec![20, 40, 80, 120, 200, 60],
            speedup: 4.0,
            first_delta_delay_ms: 100,
            vad_amplitude_at_full_threshold: 1000.0,
            energy_vad: true,
            scripted_speech: Vec::new(),
            user_transcripts: lines(&[
                "Hello, I'd like to check my order.",
                "注文番号は12345です。",
                "When will it arrive?",
                "ありがとうございました。",
            ]),
            assistant_transcripts: lines(&[
                "Certainly. May I have your order number?",
                "ご注文番号12345を確認いたします。少々お待ちください。",
                "It will arrive on June 3rd.",
                "お電話ありがとうございました。",
            ]),
            function_call: None,
            max_session_ms: None,
            validate_client: Arc::new(basic_client_check),
            keep_records: true,
            tap: None,
        }
    }
}

impl MockConfig {
    /// The config with the "speech after `start_ms` ms of caller audio, for `duration_ms`"
    /// script added.
    pub fn with_speech_at(mut self, start_ms: u64, duration_ms: u64) -> Self {
        self.scripted_speech.push(SpeechSpan {
            start_ms,
            duration_ms,
        });
        self
    }

    /// Replaces values that would make the script meaningless (documented on the fields).
    fn sanitized(mut self) -> Self {
        if self.delta_sizes_ms.is_empty() {
            self.delta_sizes_ms.push(VAD_WINDOW_MS);
        }
        for size in &mut self.delta_sizes_ms {
            if *size == 0 {
                *size = VAD_WINDOW_MS;
            }
        }
        if !(self.speedup.is_finite() && self.speedup > 0.0) {
            self.speedup = 1.0;
        }
        self
    }
}

/// A `conversation.item.truncate` the mock received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateRecord {
    /// `item_id` as sent.
    pub item_id: String,
    /// `audio_end_ms` as sent (may be negative in a malformed event).
    pub audio_end_ms: i64,
    /// Audio the mock had sent for that item, ms (bytes / 8, rounded down); `None` if the item
    /// is unknown or has no audio.
    pub sent_ms: Option<u64>,
    /// Whether the mock answered `conversation.item.truncated`.
    pub accepted: bool,
}

/// The audio deltas the mock sent for one assistant item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemAudio {
    /// The assistant item.
    pub item_id: String,
    /// Its response.
    pub response_id: String,
    /// Every `delta` string, in order.
    pub deltas: Vec<String>,
}

/// What a session received and sent, for assertions.
#[derive(Debug, Clone, Default)]
pub struct MockStats {
    /// Every `input_audio_buffer.append` `audio` string, in order (also rejected ones).
    pub appends: Vec<String>,
    /// Caller audio accepted (decoded, after `session.updated`), bytes.
    pub input_audio_bytes: u64,
    /// Appends that arrived before `session.updated` (each also got an error).
    pub appends_before_session_updated: u32,
    /// The `type` of every client event that had one, in order.
    pub client_event_types: Vec<String>,
    /// Every truncate, accepted or not.
    pub truncates: Vec<TruncateRecord>,
    /// Every `error` event sent.
    pub errors: Vec<SentError>,
    /// Audio deltas sent, per assistant item, in the order the items started.
    pub audio_deltas: Vec<ItemAudio>,
    /// Each accepted `session.update` `session` object, as received.
    pub session_updates: Vec<Value>,
    /// The effective session after the last accepted update (`None` before any).
    pub accepted_session: Option<Value>,
    /// `function_call_output` items received: `(call_id, output)`.
    pub function_call_outputs: Vec<(String, String)>,
    /// `call_id`s of the scripted function calls sent.
    pub function_calls: Vec<String>,
    /// Responses started.
    pub responses_created: u32,
    /// Responses that ended `completed`.
    pub responses_completed: u32,
    /// Responses that ended `cancelled`.
    pub responses_cancelled: u32,
    /// `input_audio_buffer.speech_started` events sent.
    pub speech_started: u32,
}

impl MockStats {
    /// The delta strings sent for `item_id`, in order.
    pub fn deltas_for(&self, item_id: &str) -> Option<&[String]> {
        self.audio_deltas
            .iter()
            .find(|audio| audio.item_id == item_id)
            .map(|audio| audio.deltas.as_slice())
    }

    /// Appends one delta to its item's list.
    fn record_delta(&mut self, item_id: &str, response_id: &str, delta: String) {
        match self
            .audio_deltas
            .iter_mut()
            .rev()
            .find(|a| a.item_id == item_id)
        {
            Some(audio) => audio.deltas.push(delta),
            None => self.audio_deltas.push(ItemAudio {
                item_id: item_id.to_owned(),
                response_id: response_id.to_owned(),
                deltas: vec![delta],
            }),
        }
    }
}

/// Deterministic id generator: one counter per id kind.
#[derive(Debug)]
struct Ids {
    /// [`MockConfig::id_prefix`].
    prefix: String,
    /// Counters by kind (`event`, `item`, `resp`, `call`).
    counters: HashMap<&'static str, u64>,
}

impl Ids {
    /// `{kind}_{prefix}{n:05}`, n counting from 1 per kind.
    fn next(&mut self, kind: &'static str) -> String {
        let counter = self.counters.entry(kind).or_insert(0);
        *counter += 1;
        format!("{kind}_{}{:05}", self.prefix, counter)
    }

    /// The session id.
    fn session(&self) -> String {
        format!("sess_{}", self.prefix)
    }

    /// The conversation id.
    fn conversation(&self) -> String {
        format!("conv_{}", self.prefix)
    }
}

/// What a conversation item is, as far as the mock's checks care.
#[derive(Debug, Clone, PartialEq)]
enum ItemKind {
    /// A caller turn (committed audio).
    UserAudio,
    /// A text message created by the client.
    Text,
    /// An assistant message with audio; `limit_ms` after a truncate.
    AssistantAudio {
        /// Audio sent for it so far, bytes.
        sent_bytes: usize,
        /// `audio_end_ms` of the last accepted truncate.
        limit_ms: Option<u64>,
    },
    /// A function call; `answered` once its output arrived.
    FunctionCall {
        /// Its `call_id`.
        call_id: String,
        /// Whether a `function_call_output` for it arrived.
        answered: bool,
    },
    /// A function call output created by the client.
    FunctionCallOutput,
}

/// One conversation item.
#[derive(Debug, Clone)]
struct Item {
    /// What it is.
    kind: ItemKind,
    /// Its latest JSON (for `conversation.item.retrieve`).
    value: Value,
}

/// One scripted mock OpenAI Realtime session (see the module docs for the run loop).
#[derive(Debug)]
pub struct MockSession {
    /// The script (sanitized).
    config: MockConfig,
    /// Id counters.
    ids: Ids,
    /// Latest `now` seen; earlier `now`s are treated as this.
    last_now: Instant,
    /// When the session ends by [`MockConfig::max_session_ms`].
    close_at: Option<Instant>,
    /// Set once the server must close: `(close code, reason)`.
    closing: Option<(u16, String)>,
    /// Server events waiting for [`MockSession::poll_send`].
    outbox: VecDeque<String>,
    /// The effective session configuration.
    session: Value,
    /// Whether `session.updated` was sent (audio may flow only after it).
    session_updated_sent: bool,
    /// Whether assistant audio was produced (locks the voice).
    assistant_audio_produced: bool,
    /// Conversation items by id.
    items: HashMap<String, Item>,
    /// Item ids in conversation order (for `previous_item_id`).
    order: Vec<String>,
    /// Caller audio accepted, bytes (the input timeline: 8 bytes per ms).
    input_bytes: u64,
    /// Input timeline position where the uncommitted buffer starts, bytes.
    buffer_start_bytes: u64,
    /// The energy VAD.
    vad: Vad,
    /// The user item of the open speech turn.
    speech_item: Option<String>,
    /// The audio response being generated.
    active: Option<AudioResponse>,
    /// A function-call response whose arguments are out but whose `response.done` is not yet:
    /// it is still the active response (a `response.create` now is refused, as by the real
    /// server).
    tool_response: Option<response::ToolResponse>,
    /// Responses started (the [`mock_audio`] key of the next is this + 1).
    responses_started: u32,
    /// Next line of [`MockConfig::user_transcripts`].
    user_line: usize,
    /// Next line of [`MockConfig::assistant_transcripts`].
    assistant_line: usize,
    /// Text tokens of client text items, billed as response input.
    text_input_tokens: u64,
    /// What happened.
    stats: MockStats,
    /// This session's observer ([`MockConfig::tap`]).
    tap: Option<Box<dyn tap::SessionTap>>,
    /// `audio.input.format.type` and the turn detection of `session`, re-read whenever it
    /// changes: every append needs both, and reading them from the JSON each time was a tenth of
    /// the load test's CPU.
    input: (String, Option<session_config::TurnDetection>),
}

impl MockSession {
    /// A new session at `now`; `session.created` (24 kHz PCM defaults) is already queued.
    pub fn new(config: MockConfig, now: Instant) -> Self {
        let config = config.sanitized();
        let ids = Ids {
            prefix: config.id_prefix.clone(),
            counters: HashMap::new(),
        };
        let session = session_config::default_session(&ids.session(), &config.model);
        let session_tap = config.tap.as_ref().map(|make| make());
        let close_at = config
            .max_session_ms
            .map(|ms| now + Duration::from_millis(ms));
        let mut mock = MockSession {
            config,
            ids,
            last_now: now,
            close_at,
            closing: None,
            outbox: VecDeque::new(),
            session,
            session_updated_sent: false,
            assistant_audio_produced: false,
            items: HashMap::new(),
            order: Vec::new(),
            input_bytes: 0,
            buffer_start_bytes: 0,
            vad: Vad::new(),
            speech_item: None,
            active: None,
            tool_response: None,
            responses_started: 0,
            user_line: 0,
            assistant_line: 0,
            text_input_tokens: 0,
            stats: MockStats::default(),
            tap: session_tap,
            input: (String::new(), None),
        };
        mock.refresh_input();
        let created = json!({"type": "session.created", "session": mock.session.clone()});
        mock.push_event(created);
        mock
    }

    /// Handles one client event (the text of one WebSocket text frame), after sending whatever
    /// was due before `now`. Checks, in order, each failure being one `error` event: JSON, a
    /// string `type`, a known client event type, the validation hook, then the event's own rules.
    /// Ignored once the session is closing.
    pub fn handle_client_text(&mut self, now: Instant, text: &str) {
        let now = self.advance(now);
        self.run_timers(now);
        if self.closing.is_some() {
            return;
        }
        let event: Value = match serde_json::from_str(text) {
            Ok(event) => event,
            Err(err) => {
                self.reject(None, None, MockRejection::InvalidJson(err.to_string()));
                return;
            }
        };
        let event_id = event
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(kind) = event.get("type").and_then(Value::as_str).map(str::to_owned) else {
            let rejection = MockRejection::MissingParameter("type".into());
            self.reject(event_id, None, rejection);
            return;
        };
        if self.config.keep_records {
            self.stats.client_event_types.push(kind.clone());
        }
        if let Err(rejection) = self.dispatch(now, &kind, &event) {
            self.reject(event_id, Some(kind), rejection);
        }
    }

    /// Sends what is due at `now`: response deltas, the session's end.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        self.run_timers(now);
    }

    /// When [`MockSession::handle_timeout`] must next be called (`None`: nothing scheduled).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing.is_some() {
            return None;
        }
        let delta_at = self.active.as_ref().map(|response| response.next_at);
        let tool_done_at = self.tool_response.as_ref().map(|t| t.done_at);
        [delta_at, tool_done_at, self.close_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next server event to send, as JSON text.
    pub fn poll_send(&mut self) -> Option<String> {
        self.outbox.pop_front()
    }

    /// `(WebSocket close code, reason)` once the server must close the connection (after the
    /// queued events are sent).
    pub fn should_close(&self) -> Option<(u16, String)> {
        self.closing.clone()
    }

    /// What the session received and sent so far.
    pub fn stats(&self) -> &MockStats {
        &self.stats
    }

    /// The effective session configuration (as in the last `session.created`/`updated`).
    pub fn session(&self) -> &Value {
        &self.session
    }

    /// Re-reads [`MockSession::input`] from the effective session.
    fn refresh_input(&mut self) {
        self.input = (
            session_config::input_format(&self.session).to_owned(),
            session_config::turn_detection(&self.session),
        );
    }

    /// `now`, never earlier than a `now` seen before.
    fn advance(&mut self, now: Instant) -> Instant {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    /// Timers due at `now`: response pacing, then the session's end.
    fn run_timers(&mut self, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        self.step_response(now);
        self.finish_tool_response(now);
        if self.close_at.is_some_and(|at| at <= now) {
            self.reject(None, None, MockRejection::SessionExpired);
            self.closing = Some((1000, "session expired".to_owned()));
        }
    }

    /// Queues a server event, giving it the next `event_id`.
    fn push_event(&mut self, mut event: Value) {
        event["event_id"] = Value::String(self.ids.next("event"));
        self.outbox.push_back(event.to_string());
    }

    /// Queues the `error` event for `rejection` and records it.
    fn reject(&mut self, event_id: Option<String>, kind: Option<String>, rejection: MockRejection) {
        tracing::debug!(?kind, ?event_id, %rejection, "mock openai rejected a client event");
        self.push_event(rejection.to_event(event_id.as_deref()));
        self.stats.errors.push(SentError {
            rejection,
            client_event_id: event_id,
            client_event_type: kind,
        });
    }

    /// Routes a client event of type `kind` after the validation hook.
    fn dispatch(&mut self, now: Instant, kind: &str, event: &Value) -> Result<(), MockRejection> {
        if !CLIENT_EVENT_TYPES.contains(&kind) {
            return Err(MockRejection::UnknownEventType(kind.to_owned()));
        }
        (self.config.validate_client)(event).map_err(MockRejection::SchemaViolation)?;
        match kind {
            "session.update" => self.on_session_update(event),
            "input_audio_buffer.append" => self.on_append(now, event),
            "input_audio_buffer.commit" => self.on_commit(),
            "input_audio_buffer.clear" => self.on_clear(),
            "conversation.item.create" => self.on_item_create(event),
            "conversation.item.retrieve" => self.on_item_retrieve(event),
            "conversation.item.truncate" => self.on_truncate(event),
            "conversation.item.delete" => self.on_item_delete(event),
            "response.create" => self.on_response_create(now),
            "response.cancel" => self.on_response_cancel(event),
            // WebRTC/SIP only (protocol.md 5.4, unconfirmed): callbridge must not send it.
            _ => Err(MockRejection::Unsupported(kind.to_owned())),
        }
    }

    /// `session.update`: strict GA checks, merge, answer with the full session.
    fn on_session_update(&mut self, event: &Value) -> Result<(), MockRejection> {
        let update = event
            .get("session")
            .ok_or_else(|| MockRejection::MissingParameter("session".into()))?;
        session_config::check_update(update, &self.session, self.assistant_audio_produced)?;
        session_config::merge(&mut self.session, update);
        self.refresh_input();
        self.session_updated_sent = true;
        self.stats.session_updates.push(update.clone());
        self.stats.accepted_session = Some(self.session.clone());
        let updated = json!({"type": "session.updated", "session": self.session.clone()});
        self.push_event(updated);
        Ok(())
    }

    /// `input_audio_buffer.append`: decode, enforce `session.updated` and `audio/pcmu`, feed the
    /// VAD.
    fn on_append(&mut self, now: Instant, event: &Value) -> Result<(), MockRejection> {
        let audio = required_str(event, "audio")?;
        if self.config.keep_records {
            self.stats.appends.push(audio.to_owned());
        }
        if audio.len() > MAX_APPEND_AUDIO_CHARS {
            return Err(MockRejection::InvalidAudio(format!(
                "more than {MAX_APPEND_AUDIO_CHARS} characters"
            )));
        }
        let bytes = STANDARD
            .decode(audio)
            .map_err(|err| MockRejection::InvalidAudio(err.to_string()))?;
        if !self.session_updated_sent {
            self.stats.appends_before_session_updated += 1;
            return Err(MockRejection::AudioBeforeSessionUpdated);
        }
        let format = self.input.0.as_str();
        if format != "audio/pcmu" {
            return Err(MockRejection::InvalidValue {
                param: "audio".into(),
                reason: format!("the mock expects audio/pcmu input, the session has {format}"),
            });
        }
        self.input_bytes += bytes.len() as u64;
        self.stats.input_audio_bytes += bytes.len() as u64;
        if let Some(tap) = &mut self.tap {
            tap.input_audio(now, &bytes);
        }
        self.run_vad(now, &bytes);
        Ok(())
    }

    /// Feeds caller audio to the VAD and acts on what it detects.
    fn run_vad(&mut self, now: Instant, bytes: &[u8]) {
        let detection = self.input.1;
        let params = detection.as_ref().map(|td| VadParams {
            amplitude_threshold: td.threshold * self.config.vad_amplitude_at_full_threshold,
            prefix_padding_ms: td.prefix_padding_ms,
            silence_duration_ms: td.silence_duration_ms,
            energy: self.config.energy_vad,
        });
        let mut events = Vec::new();
        self.vad.push(
            bytes,
            params.as_ref(),
            &self.config.scripted_speech,
            &mut events,
        );
        let Some(td) = detection else {
            return;
        };
        for event in events {
            match event {
                VadEvent::SpeechStarted { audio_start_ms } => {
                    if let Some(tap) = &mut self.tap {
                        tap.speech_started(now);
                    }
                    self.on_speech_started(audio_start_ms, td.interrupt_response);
                }
                VadEvent::SpeechStopped { audio_end_ms } => {
                    self.on_speech_stopped(now, audio_end_ms, td.create_response);
                }
            }
        }
    }

    /// VAD saw speech: `speech_started` with a new user item id; barge-in if configured.
    fn on_speech_started(&mut self, audio_start_ms: u64, interrupt_response: bool) {
        let item_id = self.ids.next("item");
        self.speech_item = Some(item_id.clone());
        self.stats.speech_started += 1;
        self.push_event(json!({
            "type": "input_audio_buffer.speech_started",
            "audio_start_ms": audio_start_ms,
            "item_id": item_id,
        }));
        if interrupt_response {
            self.cancel_response("turn_detected");
        }
    }

    /// VAD saw the end of the turn: `speech_stopped`, commit, transcript, maybe a response.
    fn on_speech_stopped(&mut self, now: Instant, audio_end_ms: u64, create_response: bool) {
        let item_id = self
            .speech_item
            .take()
            .unwrap_or_else(|| self.ids.next("item"));
        self.push_event(json!({
            "type": "input_audio_buffer.speech_stopped",
            "audio_end_ms": audio_end_ms,
            "item_id": item_id,
        }));
        self.commit_user_audio(item_id);
        // With a response still running (interrupt_response off) the mock starts none.
        if create_response && !self.responding() {
            self.start_response(now);
        }
    }

    /// `input_audio_buffer.committed`, the user item, and its transcript.
    fn commit_user_audio(&mut self, item_id: String) {
        let previous = self.order.last().cloned();
        self.push_event(json!({
            "type": "input_audio_buffer.committed",
            "item_id": item_id,
            "previous_item_id": previous,
        }));
        let buffered_ms = (self.input_bytes - self.buffer_start_bytes) / BYTES_PER_MS;
        self.buffer_start_bytes = self.input_bytes;
        let item = json!({
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": null}],
        });
        self.add_item(&item_id, ItemKind::UserAudio, item.clone());
        self.push_event(json!({"type": "conversation.item.done", "item": item}));
        let transcript = self.next_user_line();
        if session_config::transcription_enabled(&self.session) {
            let output_tokens = (transcript.chars().count() as u64).div_ceil(4);
            let input_tokens = buffered_ms / 100;
            self.push_event(json!({
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript,
                "usage": {
                    "type": "tokens",
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                },
            }));
        }
    }

    /// Adds an item to the conversation and sends `conversation.item.added`.
    fn add_item(&mut self, item_id: &str, kind: ItemKind, value: Value) {
        let previous = self.order.last().cloned();
        self.push_event(json!({
            "type": "conversation.item.added",
            "previous_item_id": previous,
            "item": value,
        }));
        self.order.push(item_id.to_owned());
        self.items.insert(item_id.to_owned(), Item { kind, value });
    }

    /// The next caller line (cycled).
    fn next_user_line(&mut self) -> String {
        let line = cycle(&self.config.user_transcripts, self.user_line);
        self.user_line += 1;
        line
    }

    /// The next assistant line (cycled).
    fn next_assistant_line(&mut self) -> String {
        let line = cycle(&self.config.assistant_transcripts, self.assistant_line);
        self.assistant_line += 1;
        line
    }

    /// `input_audio_buffer.commit`: the buffered audio becomes a user item (no response).
    fn on_commit(&mut self) -> Result<(), MockRejection> {
        let buffered_ms = (self.input_bytes - self.buffer_start_bytes) / BYTES_PER_MS;
        if buffered_ms < MIN_COMMIT_MS {
            return Err(MockRejection::CommitTooSmall(buffered_ms));
        }
        self.vad.reset_turn();
        let item_id = self
            .speech_item
            .take()
            .unwrap_or_else(|| self.ids.next("item"));
        self.commit_user_audio(item_id);
        Ok(())
    }

    /// `input_audio_buffer.clear`: drop the uncommitted audio and any open turn.
    fn on_clear(&mut self) -> Result<(), MockRejection> {
        self.buffer_start_bytes = self.input_bytes;
        self.vad.reset_turn();
        self.speech_item = None;
        self.push_event(json!({"type": "input_audio_buffer.cleared"}));
        Ok(())
    }

    /// `conversation.item.create`: a text message or a `function_call_output`.
    fn on_item_create(&mut self, event: &Value) -> Result<(), MockRejection> {
        let item = event
            .get("item")
            .filter(|item| item.is_object())
            .ok_or_else(|| MockRejection::MissingParameter("item".into()))?;
        if let Some(previous) = event.get("previous_item_id").and_then(Value::as_str) {
            if !self.items.contains_key(previous) {
                return Err(MockRejection::ItemNotFound(previous.to_owned()));
            }
        }
        let item_id = match item.get("id").and_then(Value::as_str) {
            Some(id) if self.items.contains_key(id) => {
                return Err(MockRejection::InvalidValue {
                    param: "item.id".into(),
                    reason: format!("an item with id '{id}' already exists"),
                })
            }
            Some(id) => id.to_owned(),
            None => self.ids.next("item"),
        };
        let kind = match item.get("type").and_then(Value::as_str) {
            Some("message") => self.check_text_message(item)?,
            Some("function_call_output") => self.accept_function_output(item)?,
            other => {
                return Err(MockRejection::InvalidValue {
                    param: "item.type".into(),
                    reason: format!(
                        "the mock accepts message and function_call_output items, got {other:?}"
                    ),
                })
            }
        };
        let mut value = item.clone();
        value["id"] = json!(item_id);
        value["object"] = json!("realtime.item");
        value["status"] = json!("completed");
        self.add_item(&item_id, kind, value.clone());
        self.push_event(json!({"type": "conversation.item.done", "item": value}));
        Ok(())
    }

    /// A `message` item: role `user` or `system`, text parts only (`input_text`).
    fn check_text_message(&mut self, item: &Value) -> Result<ItemKind, MockRejection> {
        let role = item.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user") | Some("system")) {
            return Err(MockRejection::InvalidValue {
                param: "item.role".into(),
                reason: format!("the mock accepts user and system messages, got {role:?}"),
            });
        }
        let parts = item
            .get("content")
            .and_then(Value::as_array)
            .filter(|parts| !parts.is_empty())
            .ok_or_else(|| MockRejection::MissingParameter("item.content".into()))?;
        let mut chars = 0u64;
        for part in parts {
            let text = part
                .get("text")
                .and_then(Value::as_str)
                .filter(|_| part.get("type").and_then(Value::as_str) == Some("input_text"));
            let text = text.ok_or_else(|| MockRejection::InvalidValue {
                param: "item.content".into(),
                reason: "the mock accepts only input_text parts with a text".into(),
            })?;
            chars += text.chars().count() as u64;
        }
        self.text_input_tokens += chars.div_ceil(4);
        Ok(ItemKind::Text)
    }

    /// A `function_call_output`: its `call_id` must be a call the mock made.
    fn accept_function_output(&mut self, item: &Value) -> Result<ItemKind, MockRejection> {
        let call_id = item
            .get("call_id")
            .and_then(Value::as_str)
            .ok_or_else(|| MockRejection::MissingParameter("item.call_id".into()))?;
        let output = item
            .get("output")
            .and_then(Value::as_str)
            .ok_or_else(|| MockRejection::MissingParameter("item.output".into()))?;
        let call = self.items.values_mut().find(
            |stored| matches!(&stored.kind, ItemKind::FunctionCall { call_id: id, .. } if id == call_id),
        );
        let Some(call) = call else {
            return Err(MockRejection::UnknownCallId(call_id.to_owned()));
        };
        if let ItemKind::FunctionCall { answered, .. } = &mut call.kind {
            *answered = true;
        }
        let output_chars = output.chars().count() as u64;
        self.text_input_tokens += output_chars.div_ceil(4);
        self.stats
            .function_call_outputs
            .push((call_id.to_owned(), output.to_owned()));
        Ok(ItemKind::FunctionCallOutput)
    }

    /// `conversation.item.retrieve`: the item's latest JSON.
    fn on_item_retrieve(&mut self, event: &Value) -> Result<(), MockRejection> {
        let item_id = required_str(event, "item_id")?;
        let item = self
            .items
            .get(item_id)
            .ok_or_else(|| MockRejection::ItemNotFound(item_id.to_owned()))?;
        let retrieved = json!({"type": "conversation.item.retrieved", "item": item.value.clone()});
        self.push_event(retrieved);
        Ok(())
    }

    /// `conversation.item.delete`.
    fn on_item_delete(&mut self, event: &Value) -> Result<(), MockRejection> {
        let item_id = required_str(event, "item_id")?;
        if self.items.remove(item_id).is_none() {
            return Err(MockRejection::ItemNotFound(item_id.to_owned()));
        }
        self.order.retain(|id| id != item_id);
        self.push_event(json!({"type": "conversation.item.deleted", "item_id": item_id}));
        Ok(())
    }

    /// `conversation.item.truncate` (protocol.md 5.3, 5.5): assistant audio items only,
    /// `content_index` 0, `audio_end_ms` within the audio the mock sent. Recorded either way.
    fn on_truncate(&mut self, event: &Value) -> Result<(), MockRejection> {
        let item_id = required_str(event, "item_id")?.to_owned();
        let content_index = event
            .get("content_index")
            .and_then(Value::as_i64)
            .ok_or_else(|| MockRejection::MissingParameter("content_index".into()))?;
        let audio_end_ms = event
            .get("audio_end_ms")
            .and_then(Value::as_i64)
            .ok_or_else(|| MockRejection::MissingParameter("audio_end_ms".into()))?;
        let audio = match self.items.get(&item_id).map(|item| &item.kind) {
            Some(ItemKind::AssistantAudio {
                sent_bytes,
                limit_ms,
            }) => Some((*sent_bytes as u64 / BYTES_PER_MS, *limit_ms)),
            _ => None,
        };
        let verdict = check_truncate(&item_id, audio, content_index, audio_end_ms, &self.items);
        self.stats.truncates.push(TruncateRecord {
            item_id: item_id.clone(),
            audio_end_ms,
            sent_ms: audio.map(|(sent_ms, _)| sent_ms),
            accepted: verdict.is_ok(),
        });
        let end_ms = verdict?;
        if let Some(tap) = &mut self.tap {
            tap.truncated(&item_id, end_ms);
        }
        if let Some(Item {
            kind: ItemKind::AssistantAudio { limit_ms, .. },
            ..
        }) = self.items.get_mut(&item_id)
        {
            *limit_ms = Some(end_ms);
        }
        self.push_event(json!({
            "type": "conversation.item.truncated",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": end_ms,
        }));
        Ok(())
    }

    /// `response.create`: refused during a response, or while the scripted call waits for its
    /// output.
    fn on_response_create(&mut self, now: Instant) -> Result<(), MockRejection> {
        if self.responding() {
            return Err(MockRejection::ActiveResponse);
        }
        let waiting = self.items.values().find_map(|item| match &item.kind {
            ItemKind::FunctionCall {
                call_id,
                answered: false,
            } => Some(call_id.clone()),
            _ => None,
        });
        if let Some(call_id) = waiting {
            return Err(MockRejection::FunctionCallOutputMissing(call_id));
        }
        self.start_response(now);
        Ok(())
    }

    /// `response.cancel`: cancel the active response (an optional `response_id` must match).
    fn on_response_cancel(&mut self, event: &Value) -> Result<(), MockRejection> {
        let wanted = event.get("response_id").and_then(Value::as_str);
        let matches = match (self.active_response_id(), wanted) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(active), Some(id)) => active == id,
        };
        if !matches {
            return Err(MockRejection::NoActiveResponse);
        }
        self.cancel_response("client_cancelled");
        Ok(())
    }
}

/// The truncate checks, in the order the real server reports them; `Ok(audio_end_ms)`.
fn check_truncate(
    item_id: &str,
    audio: Option<(u64, Option<u64>)>,
    content_index: i64,
    audio_end_ms: i64,
    items: &HashMap<String, Item>,
) -> Result<u64, MockRejection> {
    let Some((sent_ms, limit_ms)) = audio else {
        return Err(if items.contains_key(item_id) {
            MockRejection::NotTruncatable(item_id.to_owned())
        } else {
            MockRejection::ItemNotFound(item_id.to_owned())
        });
    };
    if content_index != 0 {
        return Err(MockRejection::InvalidValue {
            param: "content_index".into(),
            reason: format!("the item has one content part, got {content_index}"),
        });
    }
    let requested_ms = u64::try_from(audio_end_ms).map_err(|_| MockRejection::InvalidValue {
        param: "audio_end_ms".into(),
        reason: format!("must not be negative, got {audio_end_ms}"),
    })?;
    let available_ms = limit_ms.map_or(sent_ms, |limit| limit.min(sent_ms));
    if requested_ms > available_ms {
        return Err(MockRejection::TruncatePastAudio {
            sent_ms: available_ms,
            requested_ms,
        });
    }
    Ok(requested_ms)
}

/// `event[key]` as a string, or a missing-parameter rejection.
fn required_str<'a>(event: &'a Value, key: &str) -> Result<&'a str, MockRejection> {
    event
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| MockRejection::MissingParameter(key.to_owned()))
}

/// Line `index` of `lines`, cycled (a fixed filler if the list is empty).
fn cycle(lines: &[String], index: usize) -> String {
    if lines.is_empty() {
        return "…".to_owned();
    }
    lines[index % lines.len()].clone()
}
