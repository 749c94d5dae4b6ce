//! [`Call`]: everything one call needs, as a sans-IO state machine.
//!
//! ```text
//!   Twilio frames ──handle_twilio_frame──▶ ┌──────┐ ──poll_transmit──▶ frames for a Leg
//!   OpenAI frames ──handle_openai_frame──▶ │ Call │ ──poll_event─────▶ CallEvent (store, metrics, end)
//!   timer         ──handle_timeout───────▶ └──────┘ ──poll_timeout───▶ next deadline
//! ```
//!
//! # Run loop (written once, in the driver)
//! After every input (`handle_*`), drain [`Call::poll_transmit`] until `None`, then
//! [`Call::poll_event`] until `None`, then re-arm the timer with [`Call::poll_timeout`]. When
//! [`Call::is_ended`] is true and nothing is left to transmit, close both legs.
//!
//! # Order of things on a call
//! 1. The driver creates the `Call` when Twilio's WebSocket upgrade is accepted.
//! 2. Twilio `start` keys the call (streamSid; callSid and token checked against the signed URL).
//!    Only then ([`CallEvent::StreamStarted`]) does the driver connect to OpenAI (or take a
//!    pre-warmed connection): a stream URL read from a log opens no Realtime session. OpenAI
//!    `session.created` arrives, and `session.update` is sent.
//! 3. `session.updated` confirming `audio/pcmu` both ways makes the session ready: caller audio
//!    buffered so far is forwarded, then every `media` becomes an `input_audio_buffer.append`.
//! 4. Assistant audio deltas become Twilio `media` + `mark` pairs (split at ~100 ms); barge-in
//!    follows the [`ledger`](super::ledger) rule: `clear` first, then `conversation.item.truncate`.
//! 5. Twilio `stop` (or its socket closing) ends the call and the driver closes the OpenAI leg;
//!    the OpenAI leg closing ends the call and the driver closes Twilio's socket (normal close), so
//!    Twilio continues with the `<Redirect>` after `<Connect>`.
//!
//! Nothing here reads a clock or touches a socket: `now` is an argument everywhere.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ledger::{Ledger, MarkEcho, MAX_CHUNK_B64};
use crate::openai::events::{
    self as oa, OpenAiParseError, ResponseStatus, ServerEvent, ServerEventParser, Usage,
};
use crate::openai::session::{encode_session_update, AgentSettings};
use crate::twilio::events::{self as tw, TwilioEvent, TwilioParseError, TwilioParser};
use crate::twilio::stream_id::StartTokenCheck;
use crate::wire::b64;

/// Which peer a frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The Twilio Media Stream (callbridge is the WebSocket server).
    Twilio,
    /// The OpenAI Realtime session (callbridge is the WebSocket client).
    OpenAi,
}

impl Leg {
    /// `twilio` or `openai`, for logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Leg::Twilio => "twilio",
            Leg::OpenAi => "openai",
        }
    }
}

/// One text frame to send, written into the driver's buffer by [`Call::poll_transmit`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where it goes.
    pub leg: Leg,
    /// Its length in the buffer.
    pub len: usize,
}

/// Bytes of caller audio kept while the OpenAI session is being set up: 3 s. Twilio starts
/// streaming as soon as the call connects, usually before `session.updated`; this keeps the
/// caller's first words. Past it the oldest audio is dropped and counted.
pub const DEFAULT_MAX_PRESESSION_AUDIO_MS: u64 = 3_000;

/// A Twilio stream with no frame for this long has a vanished peer: Twilio sends a `media` frame
/// every 20 ms for as long as the call is up, so 10 s of nothing (500 missed frames) is a network
/// partition or a crashed edge, not a quiet caller.
pub const DEFAULT_TWILIO_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Interrupted responses remembered so their late deltas are dropped. A barge-in interrupts
/// one or two responses; 16 covers any plausible run of quick interruptions.
const MAX_INTERRUPTED: usize = 16;

/// Adds `id` to the interrupted `list` unless present, dropping the oldest beyond
/// [`MAX_INTERRUPTED`].
fn remember_interrupted(list: &mut VecDeque<String>, id: &str) {
    if list.iter().any(|r| r == id) {
        return;
    }
    if list.len() == MAX_INTERRUPTED {
        list.pop_front();
    }
    list.push_back(id.to_owned());
}

/// Log lines per protocol-error kind per call before they are only counted (a peer sending
/// garbage at 50 frames per second must not flood the log).
const MAX_LOGGED_PER_KIND: u32 = 5;

/// What a call needs to know from outside; shared by the calls of a server.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Realtime model name for `session.update`.
    pub model: String,
    /// The agent (voice, instructions, tools, …).
    pub agent: Arc<AgentSettings>,
    /// The callSid from the signed stream URL: `start.callSid` must match it.
    pub expected_call_sid: String,
    /// The check of the per-call token issued in the TwiML `<Parameter name="token">` (constant
    /// time), if one is required.
    pub start_token: Option<StartTokenCheck>,
    /// Twilio `start` must arrive within this time of the upgrade.
    pub start_timeout: Duration,
    /// `session.updated` must arrive within this time of the accepted `start` (when the OpenAI
    /// leg is dialled).
    pub session_timeout: Duration,
    /// Caller audio kept before the session is ready, ms.
    pub max_presession_audio_ms: u64,
    /// A started stream with no Twilio frame for this long ends the call.
    pub twilio_idle_timeout: Duration,
    /// OpenAI event types logged at info (`LOG_EVENT_TYPES`).
    pub log_event_types: Arc<[String]>,
    /// The driver resolves the agent from the `start` parameters (the store's `agentId`) and
    /// hands it over with [`Call::set_agent`]; `session.update` waits for it. `false`: `agent`
    /// is used as is.
    pub wait_for_agent: bool,
}

impl CallConfig {
    /// A config with defaults for everything but the ids.
    pub fn new(model: &str, agent: Arc<AgentSettings>, expected_call_sid: &str) -> Self {
        CallConfig {
            model: model.to_owned(),
            agent,
            expected_call_sid: expected_call_sid.to_owned(),
            start_token: None,
            start_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            max_presession_audio_ms: DEFAULT_MAX_PRESESSION_AUDIO_MS,
            twilio_idle_timeout: DEFAULT_TWILIO_IDLE_TIMEOUT,
            log_event_types: Arc::from(Vec::new()),
            wait_for_agent: false,
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Twilio sent `stop`: the caller hung up.
    TwilioStop,
    /// Twilio's socket closed without `stop` (network failure).
    TwilioClosed,
    /// Twilio sent no `start` in time.
    StartTimeout,
    /// Twilio's socket stayed open but sent nothing for this long (the peer vanished).
    TwilioSilent(Duration),
    /// The stream is not the one the webhook asked for.
    Unauthorized(&'static str),
    /// `start.mediaFormat` is not μ-law 8 kHz mono.
    BadMediaFormat(String),
    /// The OpenAI connection could not be made.
    OpenAiConnectFailed(String),
    /// OpenAI failed during setup (error event, wrong formats, or no `session.updated` in time).
    OpenAiSetupFailed(String),
    /// OpenAI refused the agent's session settings: an `error` answering our `session.update`
    /// (its `event_id`, or an `invalid_request_error` naming a session parameter). The agent's
    /// fault, not OpenAI's: the caller gets the fallback, the breaker learns nothing.
    AgentRejected {
        /// The agent whose settings were refused.
        agent_id: String,
        /// `error.code`, `error.param` and `error.message`.
        why: String,
    },
    /// The OpenAI socket closed.
    OpenAiClosed(String),
    /// The instance is shutting down and the call outlived its drain (`DRAIN_TIMEOUT_SECS`):
    /// the stream is closed normally, so the caller reaches the fallback through after-stream.
    Drained,
    /// A peer stopped reading: output queued for it made no progress for `after` (a hung
    /// peer, or one whose network vanished without a reset). An OpenAI leg that stalls is an
    /// AI failure: the caller gets the fallback path.
    PeerStalled {
        /// The leg that stopped reading.
        leg: Leg,
        /// How long its queued output made no progress.
        after: Duration,
    },
}

impl EndReason {
    /// Whether the AI leg is to blame: the caller should then get the fallback path.
    pub fn is_ai_failure(&self) -> bool {
        matches!(
            self,
            EndReason::OpenAiConnectFailed(_)
                | EndReason::OpenAiSetupFailed(_)
                | EndReason::AgentRejected { .. }
                | EndReason::OpenAiClosed(_)
                | EndReason::PeerStalled {
                    leg: Leg::OpenAi,
                    ..
                }
        )
    }

    /// Whether the AI leg never became usable (no connection, or no session): what the
    /// webhook's breaker counts as OpenAI being unreachable (`openai::health`).
    pub fn is_openai_unreachable(&self) -> bool {
        matches!(
            self,
            EndReason::OpenAiConnectFailed(_) | EndReason::OpenAiSetupFailed(_)
        )
    }

    /// Whether the call ended as it should: the caller hung up (Twilio `stop`). Only then does
    /// `after-stream`, should Twilio fetch it, hang up; every other end sends the caller to the
    /// fallback. Twilio does not fetch after-stream after its own `stop` (protocol.md 2.1), so
    /// today every after-stream that reaches callbridge answers the fallback; the distinction is
    /// kept for ends callbridge will close on purpose with the caller still there (an agent that
    /// says goodbye), which must hang up instead.
    pub fn is_normal(&self) -> bool {
        matches!(self, EndReason::TwilioStop)
    }

    /// A short stable label for metrics and records.
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::TwilioStop => "twilio_stop",
            EndReason::TwilioClosed => "twilio_closed",
            EndReason::StartTimeout => "start_timeout",
            EndReason::TwilioSilent(_) => "twilio_silent",
            EndReason::Unauthorized(_) => "unauthorized",
            EndReason::BadMediaFormat(_) => "bad_media_format",
            EndReason::OpenAiConnectFailed(_) => "openai_connect_failed",
            EndReason::OpenAiSetupFailed(_) => "openai_setup_failed",
            EndReason::AgentRejected { .. } => "agent_rejected",
            EndReason::Drained => "drained",
            EndReason::OpenAiClosed(_) => "openai_closed",
            EndReason::PeerStalled {
                leg: Leg::Twilio, ..
            } => "twilio_stalled",
            EndReason::PeerStalled {
                leg: Leg::OpenAi, ..
            } => "openai_stalled",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::TwilioStop => f.write_str("twilio sent stop (caller hung up)"),
            EndReason::TwilioClosed => f.write_str("twilio socket closed without stop"),
            EndReason::StartTimeout => f.write_str("no start message from twilio in time"),
            EndReason::TwilioSilent(d) => write!(
                f,
                "no frame from twilio for {:.1}s (peer vanished)",
                d.as_secs_f32()
            ),
            EndReason::Unauthorized(why) => write!(f, "stream refused: {why}"),
            EndReason::BadMediaFormat(what) => write!(f, "unsupported media format: {what}"),
            EndReason::OpenAiConnectFailed(why) => write!(f, "openai connect failed: {why}"),
            EndReason::OpenAiSetupFailed(why) => write!(f, "openai session setup failed: {why}"),
            EndReason::Drained => {
                f.write_str("drained: the instance shut down before the call ended")
            }
            EndReason::AgentRejected { agent_id, why } => {
                write!(f, "openai refused the settings of agent {agent_id}: {why}")
            }
            EndReason::OpenAiClosed(why) => write!(f, "openai closed the session: {why}"),
            EndReason::PeerStalled { leg, after } => write!(
                f,
                "{} peer stopped reading: no write progress for {:.1}s",
                leg.label(),
                after.as_secs_f32()
            ),
        }
    }
}

/// Something that happened on the call, for the store, metrics and logs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CallEvent {
    /// Twilio `start` accepted.
    StreamStarted {
        /// `streamSid`.
        stream_sid: String,
        /// `callSid`.
        call_sid: String,
        /// The `<Parameter>`s of the TwiML.
        parameters: Vec<(String, String)>,
    },
    /// `session.updated` confirmed μ-law both ways; audio flows.
    SessionReady {
        /// OpenAI session id.
        session_id: Option<String>,
        /// Time from the upgrade to this moment.
        setup: Duration,
    },
    /// The caller's words (input transcription completed).
    CallerTranscript {
        /// User item id.
        item_id: String,
        /// Transcript.
        text: String,
    },
    /// The assistant's generated words (output transcript done).
    AssistantTranscript {
        /// Assistant item id.
        item_id: String,
        /// Transcript (of what was generated; see `Interrupted` for what was heard).
        text: String,
    },
    /// A barge-in: `conversation.item.truncate` was sent (after a `clear` when audio played).
    Interrupted {
        /// The item that was playing.
        item_id: String,
        /// What the caller heard of it, ms (the `audio_end_ms` sent).
        audio_end_ms: u64,
        /// Audio sent for it, ms.
        sent_ms: u64,
        /// Estimate beyond `sent_ms` that was clamped away, ms.
        clamped_ms: u64,
        /// Whether a `clear` went to Twilio (audio was playing); `false`: nothing played, the
        /// response was still generating (protocol.md 6.2 step 1).
        cleared: bool,
    },
    /// The model called a tool.
    ToolCall {
        /// `call_id`.
        call_id: String,
        /// Function name.
        name: String,
        /// Arguments (JSON text).
        arguments: String,
    },
    /// A DTMF key press.
    Dtmf {
        /// The digit.
        digit: String,
    },
    /// A response finished.
    ResponseDone {
        /// `response.id`, when the server gave one.
        response_id: Option<String>,
        /// `response.status`.
        status: ResponseStatus,
        /// Token usage, when reported.
        usage: Option<Usage>,
    },
    /// An OpenAI `error` event after setup (logged, not fatal).
    OpenAiError {
        /// `error.code`.
        code: Option<String>,
        /// `error.message`.
        message: String,
        /// Our `event_id` of the failing client event.
        event_id: Option<String>,
    },
    /// A frame was dropped because it broke the protocol (the error names the peer).
    ProtocolError(ProtocolError),
    /// The call is over. Emitted once.
    Ended {
        /// Why.
        reason: EndReason,
    },
}

/// A frame a call dropped because it broke the protocol, by the peer at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Twilio sent it.
    Twilio(TwilioFault),
    /// OpenAI sent it.
    OpenAi(OpenAiFault),
}

/// What Twilio got wrong (protocol.md section 4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TwilioFault {
    /// The text frame is not a Media Streams message.
    Unparsable(TwilioParseError),
    /// A binary frame: Media Streams has none.
    BinaryFrame,
    /// A message for a `streamSid` that is not this call's.
    UnknownStreamSid,
    /// `media` before `start`.
    MediaBeforeStart,
    /// Another message (`mark`, `dtmf`, `stop`) before `start`.
    MessageBeforeStart,
    /// A second `start`.
    DuplicateStart,
    /// The echo of a mark callbridge never sent.
    UnknownMark,
}

/// What OpenAI got wrong (protocol.md section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenAiFault {
    /// The text frame is not a server event.
    Unparsable(OpenAiParseError),
    /// A binary frame: the Realtime API has none.
    BinaryFrame,
    /// A second `session.created`.
    DuplicateSessionCreated,
    /// `session.updated` before our `session.update`.
    UnexpectedSessionUpdated,
    /// Assistant audio before the Twilio stream started (nowhere to play it).
    AudioBeforeStart,
    /// An audio delta that is not valid base64.
    BadAudio,
}

impl ProtocolError {
    /// The peer at fault.
    pub fn leg(&self) -> Leg {
        match self {
            ProtocolError::Twilio(_) => Leg::Twilio,
            ProtocolError::OpenAi(_) => Leg::OpenAi,
        }
    }

    /// A short stable label for metrics and records (`not_json`, `bad_base64`, …).
    pub fn label(&self) -> &'static str {
        match self {
            ProtocolError::Twilio(f) => match f {
                TwilioFault::Unparsable(e) => e.kind(),
                TwilioFault::BinaryFrame => "binary_frame",
                TwilioFault::UnknownStreamSid => "unknown_stream_sid",
                TwilioFault::MediaBeforeStart => "media_before_start",
                TwilioFault::MessageBeforeStart => "message_before_start",
                TwilioFault::DuplicateStart => "duplicate_start",
                TwilioFault::UnknownMark => "unknown_mark",
            },
            ProtocolError::OpenAi(f) => match f {
                OpenAiFault::Unparsable(e) => e.kind(),
                OpenAiFault::BinaryFrame => "binary_frame",
                OpenAiFault::DuplicateSessionCreated => "duplicate_session_created",
                OpenAiFault::UnexpectedSessionUpdated => "unexpected_session_updated",
                OpenAiFault::AudioBeforeStart => "audio_before_start",
                OpenAiFault::BadAudio => "bad_base64",
            },
        }
    }
}

/// A Twilio message that must name the call's stream, for [`TwilioFault`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamMessage {
    Media,
    Mark,
    Dtmf,
    Stop,
}

impl StreamMessage {
    fn name(self) -> &'static str {
        match self {
            StreamMessage::Media => "media",
            StreamMessage::Mark => "mark",
            StreamMessage::Dtmf => "dtmf",
            StreamMessage::Stop => "stop",
        }
    }
}

/// Counters of one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Caller audio frames forwarded to OpenAI.
    pub audio_frames_up: u64,
    /// Assistant audio `media` messages sent to Twilio.
    pub audio_frames_down: u64,
    /// Marks sent to Twilio.
    pub marks_sent: u64,
    /// Echoes of outstanding marks.
    pub marks_played: u64,
    /// Echoes of marks discarded by `clear`.
    pub marks_stale: u64,
    /// Echoes of marks not outstanding, or never sent.
    pub marks_unknown: u64,
    /// Barge-ins that sent `clear` + truncate.
    pub barge_ins: u64,
    /// `speech_started` with nothing playing while a response was still generating: truncated
    /// at what was sent, without a `clear`.
    pub generation_truncations: u64,
    /// `speech_started` while nothing was playing.
    pub speech_without_playback: u64,
    /// Late deltas of interrupted responses, dropped.
    pub late_deltas_dropped: u64,
    /// Caller audio dropped because the session was not ready for too long.
    pub presession_audio_dropped: u64,
    /// Frames dropped for protocol errors, both legs.
    pub protocol_errors: u64,
    /// OpenAI `error` events.
    pub openai_errors: u64,
}

/// Where the Twilio stream is.
#[derive(Debug)]
enum StreamPhase {
    /// Upgraded: `start` must come by `created_at + start_timeout`.
    AwaitingStart,
    /// `start` accepted (callSid and token checked); the OpenAI leg is dialled from here.
    Started {
        /// `streamSid`: every message we send to Twilio carries it.
        stream_sid: String,
        /// When `session.updated` must have arrived (`start` + the session timeout).
        session_deadline: Instant,
    },
}

/// Where the OpenAI session is.
#[derive(Debug)]
enum SessionPhase {
    /// Waiting for `session.created`.
    AwaitingCreated {
        /// Caller audio received meanwhile.
        held: HeldAudio,
    },
    /// `session.created` arrived; `session.update` waits for `start` (and the agent).
    Created {
        /// `session.id`, when the server sent one.
        session_id: Option<String>,
        /// Caller audio received meanwhile.
        held: HeldAudio,
    },
    /// `session.update` sent; waiting for `session.updated`.
    Updating {
        /// `session.id`, when the server sent one.
        session_id: Option<String>,
        /// The number of the update's `event_id`: an `error` naming it refuses the agent.
        update_id: u64,
        /// Caller audio received meanwhile.
        held: HeldAudio,
    },
    /// `session.updated` confirmed μ-law both ways: audio flows.
    Ready {
        /// `session.id`, when the server sent one.
        session_id: Option<String>,
    },
}

impl SessionPhase {
    fn session_id(&self) -> Option<&str> {
        match self {
            SessionPhase::AwaitingCreated { .. } => None,
            SessionPhase::Created { session_id, .. }
            | SessionPhase::Updating { session_id, .. }
            | SessionPhase::Ready { session_id } => session_id.as_deref(),
        }
    }

    /// The caller audio held until the session is ready; `None` once it is.
    fn held_mut(&mut self) -> Option<&mut HeldAudio> {
        match self {
            SessionPhase::AwaitingCreated { held }
            | SessionPhase::Created { held, .. }
            | SessionPhase::Updating { held, .. } => Some(held),
            SessionPhase::Ready { .. } => None,
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self, SessionPhase::Ready { .. })
    }
}

/// Caller audio (base64) received before the session was ready, oldest first, bounded by
/// [`CallConfig::max_presession_audio_ms`] (protocol.md 5.1: never append before
/// `session.updated` confirmed audio/pcmu).
#[derive(Debug, Default)]
struct HeldAudio {
    /// The payloads, oldest first.
    frames: VecDeque<String>,
    /// Decoded bytes in `frames`.
    bytes: u64,
}

impl HeldAudio {
    /// Keeps `payload_b64`, then drops the oldest frames beyond `max_bytes`; returns how many
    /// were dropped.
    fn push(&mut self, payload_b64: &str, max_bytes: u64) -> u64 {
        self.bytes += b64::decoded_len(payload_b64.as_bytes()) as u64;
        self.frames.push_back(payload_b64.to_owned());
        let mut dropped = 0;
        while self.bytes > max_bytes {
            let Some(old) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= b64::decoded_len(old.as_bytes()) as u64;
            dropped += 1;
        }
        dropped
    }
}

/// Tool results waiting for the response that asked for them to end: they go out with one
/// `response.create` on its `response.done` (a `response.create` while a response is active is
/// refused, `conversation_already_has_active_response`, and a response may carry several calls).
#[derive(Debug)]
struct PendingTools {
    /// The response whose `response.done` releases them (the `response_id` of the
    /// `…arguments.done`: also right when a barge-in already ended our view of it); `None`
    /// when no response is known to carry them, and they go out at once.
    response_id: Option<String>,
    /// `(call_id, output)`, in the order they came.
    outputs: Vec<(String, String)>,
}

/// Outbound frames waiting for `poll_transmit`: one byte arena and the frame boundaries. Both
/// keep their capacity, so the steady state allocates nothing.
#[derive(Debug, Default)]
struct Outbox {
    bytes: Vec<u8>,
    frames: VecDeque<(Leg, usize)>,
    read: usize,
}

impl Outbox {
    fn push(&mut self, leg: Leg, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.bytes);
        self.frames.push_back((leg, self.bytes.len()));
    }

    fn pop_into(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (leg, end) = self.frames.pop_front()?;
        buf.clear();
        buf.extend_from_slice(&self.bytes[self.read..end]);
        self.read = end;
        if self.frames.is_empty() {
            self.bytes.clear();
            self.read = 0;
        }
        Some(Transmit {
            leg,
            len: buf.len(),
        })
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// A client `event_id` (`cb_{n}`), kept on the stack.
#[derive(Clone, Copy)]
struct EventId {
    buf: [u8; 24],
    len: usize,
}

impl EventId {
    fn new(n: u64) -> Self {
        let mut buf = [0u8; 24];
        buf[..3].copy_from_slice(b"cb_");
        let mut scratch = [0u8; 20];
        let digits = crate::wire::json_out::u64_digits(n, &mut scratch);
        let len = 3 + digits.len();
        buf[3..len].copy_from_slice(digits);
        EventId { buf, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("cb")
    }
}

/// One phone call bridged to one Realtime session. See the module docs for the run loop.
pub struct Call {
    cfg: CallConfig,
    /// When the upgrade was accepted (start of setup timing).
    created_at: Instant,
    /// Latest `now` seen; earlier values are treated as this one.
    last_now: Instant,
    /// When the last Twilio frame arrived (for the idle deadline).
    last_twilio_at: Instant,
    /// The Twilio stream's phase.
    stream: StreamPhase,
    /// The OpenAI session's phase.
    session: SessionPhase,
    ledger: Ledger,
    outbox: Outbox,
    events: VecDeque<CallEvent>,
    /// Responses interrupted by barge-in: their late deltas are dropped.
    interrupted_responses: VecDeque<String>,
    /// The response between its `response.created` and `response.done`: server VAD with
    /// `interrupt_response` cancels it when the caller starts speaking (protocol.md 5.5), even
    /// when none of its audio is playing yet.
    active_response: Option<String>,
    /// Tool results waiting for their response to end.
    tools: Option<PendingTools>,
    /// Between `speech_started` and `speech_stopped`: server VAD will answer this turn itself,
    /// so a `response.create` now would collide with its response.
    caller_speaking: bool,
    /// Items interrupted by barge-in.
    interrupted_items: VecDeque<String>,
    stats: CallStats,
    /// Log lines written per protocol-error kind (rate limit).
    logged_kinds: Vec<(&'static str, u32)>,
    next_event_id: u64,
    /// Reused buffer for mark names.
    mark_name: String,
    ended: Option<EndReason>,
}

impl Call {
    /// A call whose Twilio upgrade was accepted at `now`.
    pub fn new(cfg: CallConfig, now: Instant) -> Self {
        Call {
            cfg,
            created_at: now,
            last_now: now,
            last_twilio_at: now,
            stream: StreamPhase::AwaitingStart,
            session: SessionPhase::AwaitingCreated {
                held: HeldAudio::default(),
            },
            ledger: Ledger::new(),
            outbox: Outbox::default(),
            events: VecDeque::new(),
            interrupted_responses: VecDeque::new(),
            active_response: None,
            tools: None,
            caller_speaking: false,
            interrupted_items: VecDeque::new(),
            stats: CallStats::default(),
            logged_kinds: Vec::new(),
            next_event_id: 1,
            mark_name: String::with_capacity(64),
            ended: None,
        }
    }

    /// The call's counters.
    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// `streamSid`, once known.
    pub fn stream_sid(&self) -> Option<&str> {
        match &self.stream {
            StreamPhase::AwaitingStart => None,
            StreamPhase::Started { stream_sid, .. } => Some(stream_sid),
        }
    }

    /// The OpenAI session id, once known.
    pub fn session_id(&self) -> Option<&str> {
        self.session.session_id()
    }

    /// The callSid this call is for.
    pub fn call_sid(&self) -> &str {
        &self.cfg.expected_call_sid
    }

    /// Why the call ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.ended.as_ref()
    }

    /// Whether the call has ended (the driver closes both legs once `poll_transmit` is drained).
    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// Marks sent to Twilio and not yet echoed (assistant audio queued at Twilio), for metrics.
    pub fn outstanding_marks(&self) -> usize {
        self.ledger.outstanding_marks()
    }

    /// Whether the session is ready (caller audio is forwarded).
    pub fn is_ready(&self) -> bool {
        self.session.is_ready()
    }

    /// Writes the next frame to send into `buf` (cleared first).
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.outbox.pop_into(buf)
    }

    /// The next event for the store, metrics and logs.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// When [`Call::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        // Before `start`: the start deadline; after it: the idle deadline of the Twilio stream,
        // and the session's until it is ready.
        Some(match &self.stream {
            StreamPhase::AwaitingStart => self.created_at + self.cfg.start_timeout,
            StreamPhase::Started {
                session_deadline, ..
            } => {
                let idle = self.last_twilio_at + self.cfg.twilio_idle_timeout;
                match self.session.is_ready() {
                    true => idle,
                    false => idle.min(*session_deadline),
                }
            }
        })
    }

    /// Fires the deadlines that have passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.observe(now);
        if self.ended.is_some() {
            return;
        }
        let session_deadline = match &self.stream {
            StreamPhase::AwaitingStart => {
                if now >= self.created_at + self.cfg.start_timeout {
                    self.end(EndReason::StartTimeout);
                }
                return;
            }
            StreamPhase::Started {
                session_deadline, ..
            } => *session_deadline,
        };
        if now >= self.last_twilio_at + self.cfg.twilio_idle_timeout {
            self.end(EndReason::TwilioSilent(
                now.saturating_duration_since(self.last_twilio_at),
            ));
        } else if !self.session.is_ready() && now >= session_deadline {
            let secs = self.cfg.session_timeout.as_secs_f32();
            self.end(EndReason::OpenAiSetupFailed(format!(
                "no session.updated within {secs:.1}s"
            )));
        }
    }

    /// Ends the call for a reason found by the driver (slow peer, shutdown, …).
    pub fn hang_up(&mut self, now: Instant, reason: EndReason) {
        self.observe(now);
        self.end(reason);
    }

    /// Twilio's socket closed (after `stop`, or without it).
    pub fn handle_twilio_closed(&mut self, now: Instant) {
        self.observe(now);
        self.end(EndReason::TwilioClosed);
    }

    /// The OpenAI connection attempt failed.
    pub fn handle_openai_connect_failed(&mut self, now: Instant, why: &str) {
        self.observe(now);
        self.end(EndReason::OpenAiConnectFailed(why.to_owned()));
    }

    /// The OpenAI socket closed (close frame or EOF); `why` says how.
    pub fn handle_openai_closed(&mut self, now: Instant, why: &str) {
        self.observe(now);
        let reason = if self.session.is_ready() {
            EndReason::OpenAiClosed(why.to_owned())
        } else {
            EndReason::OpenAiSetupFailed(format!("closed during setup: {why}"))
        };
        self.end(reason);
    }

    /// A binary frame from Twilio: not part of Media Streams; dropped and counted.
    pub fn handle_twilio_binary(&mut self, now: Instant) {
        self.last_twilio_at = self.observe(now);
        self.protocol_error(
            ProtocolError::Twilio(TwilioFault::BinaryFrame),
            format_args!("binary frames are not part of media streams"),
        );
    }

    /// A binary frame from OpenAI: not part of the Realtime API; dropped and counted.
    pub fn handle_openai_binary(&mut self, now: Instant) {
        self.observe(now);
        self.protocol_error(
            ProtocolError::OpenAi(OpenAiFault::BinaryFrame),
            format_args!("binary frames are not part of the realtime api"),
        );
    }

    /// One text frame from Twilio (parsed in place).
    pub fn handle_twilio_frame(&mut self, now: Instant, frame: &mut [u8]) {
        let now = self.observe(now);
        self.last_twilio_at = now;
        if self.ended.is_some() {
            return;
        }
        // The parser is stateless (simd-json's scratch is per thread, `wire::json_scratch`).
        match TwilioParser::new().parse(frame) {
            Ok(ev) => self.on_twilio(now, ev),
            Err(e) => {
                let detail = e.to_string();
                self.protocol_error(
                    ProtocolError::Twilio(TwilioFault::Unparsable(e)),
                    format_args!("{detail}"),
                )
            }
        }
    }

    /// One text frame from OpenAI (parsed in place).
    pub fn handle_openai_frame(&mut self, now: Instant, frame: &mut [u8]) {
        let now = self.observe(now);
        if self.ended.is_some() {
            return;
        }
        match ServerEventParser::new().parse(frame) {
            Ok(ev) => self.on_openai(now, ev),
            Err(e) => {
                let detail = e.to_string();
                self.protocol_error(
                    ProtocolError::OpenAi(OpenAiFault::Unparsable(e)),
                    format_args!("{detail}"),
                )
            }
        }
    }

    fn observe(&mut self, now: Instant) -> Instant {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    fn end(&mut self, reason: EndReason) {
        if self.ended.is_some() {
            return;
        }
        if let EndReason::AgentRejected { agent_id, .. } = &reason {
            // An operator's mistake in one agent: loud, and named, so it is found and fixed.
            tracing::error!(call_sid = %self.cfg.expected_call_sid, agent = %agent_id, %reason, "call ended: the agent's settings were refused; check this agent");
        } else if reason.is_ai_failure() {
            tracing::warn!(call_sid = %self.cfg.expected_call_sid, %reason, "call ended");
        } else {
            tracing::info!(call_sid = %self.cfg.expected_call_sid, %reason, "call ended");
        }
        self.events.push_back(CallEvent::Ended {
            reason: reason.clone(),
        });
        self.ended = Some(reason);
        if let Some(held) = self.session.held_mut() {
            *held = HeldAudio::default();
        }
    }

    fn protocol_error(&mut self, error: ProtocolError, detail: std::fmt::Arguments<'_>) {
        self.stats.protocol_errors += 1;
        let (leg, kind) = (error.leg(), error.label());
        self.events.push_back(CallEvent::ProtocolError(error));
        let logged = match self.logged_kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.logged_kinds.push((kind, 1));
                1
            }
        };
        if logged <= MAX_LOGGED_PER_KIND {
            tracing::warn!(call_sid = %self.cfg.expected_call_sid, leg = leg.label(), kind, "dropped frame: {detail}");
        }
    }

    fn event_id(&mut self) -> EventId {
        let id = EventId::new(self.next_event_id);
        self.next_event_id += 1;
        id
    }

    // ---- Twilio ----------------------------------------------------------------------------

    fn on_twilio(&mut self, now: Instant, ev: TwilioEvent<'_>) {
        match ev {
            TwilioEvent::Connected => {}
            TwilioEvent::Start(start) => self.on_start(now, start),
            TwilioEvent::Media(media) => {
                if self.check_stream(media.stream_sid, StreamMessage::Media) {
                    self.on_caller_audio(media.payload_b64);
                }
            }
            TwilioEvent::Mark(mark) => {
                if self.check_stream(mark.stream_sid, StreamMessage::Mark) {
                    self.on_mark_echo(now, mark.name);
                }
            }
            TwilioEvent::Dtmf(dtmf) => {
                if self.check_stream(dtmf.stream_sid, StreamMessage::Dtmf) {
                    self.events.push_back(CallEvent::Dtmf {
                        digit: dtmf.digit.to_owned(),
                    });
                }
            }
            TwilioEvent::Stop(stop) => {
                if self.check_stream(stop.stream_sid, StreamMessage::Stop) {
                    self.end(EndReason::TwilioStop);
                }
            }
            TwilioEvent::Unknown { event } => {
                tracing::debug!(call_sid = %self.cfg.expected_call_sid, event, "ignored unknown twilio event");
            }
        }
    }

    /// Whether a message is for this call's stream; counts and logs it otherwise.
    fn check_stream(&mut self, stream_sid: &str, what: StreamMessage) -> bool {
        let fault = match self.stream_sid() {
            Some(sid) if sid == stream_sid => return true,
            Some(_) => TwilioFault::UnknownStreamSid,
            None if what == StreamMessage::Media => TwilioFault::MediaBeforeStart,
            None => TwilioFault::MessageBeforeStart,
        };
        let what = what.name();
        match fault {
            TwilioFault::UnknownStreamSid => self.protocol_error(
                ProtocolError::Twilio(fault),
                format_args!("{what} for stream {stream_sid:?}, not ours"),
            ),
            _ => self.protocol_error(
                ProtocolError::Twilio(fault),
                format_args!("{what} before start"),
            ),
        }
        false
    }

    fn on_start(&mut self, now: Instant, start: tw::Start<'_>) {
        if self.stream_sid().is_some() {
            self.protocol_error(
                ProtocolError::Twilio(TwilioFault::DuplicateStart),
                format_args!("second start message ignored"),
            );
            return;
        }
        if start.call_sid != self.cfg.expected_call_sid {
            self.end(EndReason::Unauthorized(
                "start.callSid does not match the stream url",
            ));
            return;
        }
        if let Some(check) = &self.cfg.start_token {
            let token = start
                .custom_parameters
                .iter()
                .find(|(k, _)| *k == "token")
                .map(|(_, v)| *v);
            if !token.is_some_and(|t| check.accepts(t)) {
                self.end(EndReason::Unauthorized("start token missing or wrong"));
                return;
            }
        }
        if start.encoding != "audio/x-mulaw" || start.sample_rate != 8000 || start.channels != 1 {
            let what = format!(
                "{} {} Hz {} channel(s)",
                start.encoding, start.sample_rate, start.channels
            );
            self.end(EndReason::BadMediaFormat(what));
            return;
        }
        // OpenAI is dialled from now on: its session gets its whole timeout from here (a stream
        // that never starts ends by the start timeout, and counts nothing against OpenAI).
        self.stream = StreamPhase::Started {
            stream_sid: start.stream_sid.to_owned(),
            session_deadline: now + self.cfg.session_timeout,
        };
        self.events.push_back(CallEvent::StreamStarted {
            stream_sid: start.stream_sid.to_owned(),
            call_sid: start.call_sid.to_owned(),
            parameters: start
                .custom_parameters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        if self.cfg.wait_for_agent {
            // The driver resolves the agent from these parameters and calls `set_agent`.
            return;
        }
        if matches!(self.session, SessionPhase::Created { .. }) {
            self.send_session_update();
        }
    }

    fn on_caller_audio(&mut self, payload_b64: &str) {
        let max_bytes = self.cfg.max_presession_audio_ms * super::ledger::BYTES_PER_MS;
        match self.session.held_mut() {
            // Not ready: keep the newest audio up to the bound.
            Some(held) => self.stats.presession_audio_dropped += held.push(payload_b64, max_bytes),
            None => {
                self.stats.audio_frames_up += 1;
                self.outbox
                    .push(Leg::OpenAi, |out| oa::encode_append(out, payload_b64));
            }
        }
    }

    fn on_mark_echo(&mut self, now: Instant, name: &str) {
        match self.ledger.on_mark_echo(now, name) {
            MarkEcho::Played { .. } => self.stats.marks_played += 1,
            MarkEcho::Stale => self.stats.marks_stale += 1,
            MarkEcho::NotOutstanding => {
                self.stats.marks_unknown += 1;
                tracing::debug!(call_sid = %self.cfg.expected_call_sid, name, "echo of a mark not outstanding");
            }
            MarkEcho::Unrecognised => {
                self.stats.marks_unknown += 1;
                self.protocol_error(
                    ProtocolError::Twilio(TwilioFault::UnknownMark),
                    format_args!("echo of a mark we never sent: {name:?}"),
                );
            }
        }
    }

    // ---- OpenAI ----------------------------------------------------------------------------

    fn on_openai(&mut self, now: Instant, ev: ServerEvent<'_>) {
        self.log_event(&ev);
        match ev {
            ServerEvent::SessionCreated { session_id } => self.on_session_created(session_id),
            ServerEvent::SessionUpdated {
                input_format,
                output_format,
                ..
            } => self.on_session_updated(now, input_format, output_format),
            ServerEvent::Error(err) => self.on_api_error(err),
            ServerEvent::SpeechStarted { .. } => self.on_speech_started(now),
            ServerEvent::OutputAudioDelta {
                response_id,
                item_id,
                delta_b64,
            } => self.on_audio_delta(now, response_id, item_id, delta_b64),
            ServerEvent::InputTranscriptionCompleted {
                item_id,
                transcript,
            } => {
                self.events.push_back(CallEvent::CallerTranscript {
                    item_id: item_id.to_owned(),
                    text: transcript.to_owned(),
                });
            }
            ServerEvent::InputTranscriptionFailed { item_id, message } => {
                tracing::warn!(call_sid = %self.cfg.expected_call_sid, item_id, message, "caller transcription failed");
            }
            ServerEvent::OutputAudioTranscriptDone {
                item_id,
                transcript,
                ..
            } => {
                self.events.push_back(CallEvent::AssistantTranscript {
                    item_id: item_id.to_owned(),
                    text: transcript.to_owned(),
                });
            }
            ServerEvent::FunctionCallArgumentsDone {
                response_id,
                call_id,
                name,
                arguments,
                ..
            } => self.on_tool_call(response_id, call_id, name, arguments),
            ServerEvent::SpeechStopped { .. } => self.caller_speaking = false,
            // An item's audio part: from now on it can be truncated (at 0 ms if the caller speaks
            // before any of its audio plays). An item with no audio part has nothing to truncate.
            ServerEvent::ContentPartAdded {
                response_id,
                item_id,
                content_index: 0,
                part_type: Some("audio" | "output_audio"),
            } if !self.interrupted_responses.iter().any(|r| r == response_id) => {
                self.ledger.on_item_added(now, response_id, item_id);
            }
            ServerEvent::ResponseCreated {
                response_id: Some(response_id),
            } => {
                self.active_response = Some(response_id.to_owned());
            }
            ServerEvent::ResponseDone {
                response_id,
                status,
                usage,
                ..
            } => {
                // A `response.done` without an id can only be the one response in flight.
                if response_id.is_none() || self.active_response.as_deref() == response_id {
                    self.active_response = None;
                }
                if response_id.is_some()
                    && self
                        .tools
                        .as_ref()
                        .is_some_and(|t| t.response_id.as_deref() == response_id)
                {
                    // A response cut short by the caller, or a caller speaking now: server VAD
                    // answers that turn by itself (and sees the outputs); asking for another
                    // response would collide with it.
                    self.send_tool_outputs(
                        status != ResponseStatus::Cancelled && !self.caller_speaking,
                    );
                }
                self.events.push_back(CallEvent::ResponseDone {
                    response_id: response_id.map(str::to_owned),
                    status,
                    usage,
                });
            }
            _ => {}
        }
    }

    fn log_event(&self, ev: &ServerEvent<'_>) {
        if self.cfg.log_event_types.is_empty() {
            return;
        }
        let ty = event_type(ev);
        if self.cfg.log_event_types.iter().any(|t| t == ty) {
            tracing::info!(call_sid = %self.cfg.expected_call_sid, event = ty, "openai event");
        }
    }

    fn on_session_created(&mut self, session_id: Option<&str>) {
        let SessionPhase::AwaitingCreated { held } = &mut self.session else {
            self.protocol_error(
                ProtocolError::OpenAi(OpenAiFault::DuplicateSessionCreated),
                format_args!("second session.created ignored"),
            );
            return;
        };
        self.session = SessionPhase::Created {
            session_id: session_id.filter(|s| !s.is_empty()).map(str::to_owned),
            held: std::mem::take(held),
        };
        if self.stream_sid().is_some() && !self.cfg.wait_for_agent {
            self.send_session_update();
        }
    }

    /// Sends `session.update`, once `session.created` has come ([`SessionPhase::Created`]);
    /// in any other phase, nothing.
    fn send_session_update(&mut self) {
        let SessionPhase::Created { session_id, held } = &mut self.session else {
            return;
        };
        let (session_id, held) = (session_id.take(), std::mem::take(held));
        let update_id = self.next_event_id;
        let id = self.event_id();
        let (model, agent) = (&self.cfg.model, &self.cfg.agent);
        self.outbox.push(Leg::OpenAi, |out| {
            encode_session_update(out, id.as_str(), model, agent)
        });
        self.session = SessionPhase::Updating {
            session_id,
            update_id,
            held,
        };
    }

    fn on_session_updated(&mut self, now: Instant, input: Option<&str>, output: Option<&str>) {
        let (session_id, held) = match &mut self.session {
            SessionPhase::Updating {
                session_id, held, ..
            } => (session_id.take(), std::mem::take(held)),
            SessionPhase::AwaitingCreated { .. } | SessionPhase::Created { .. } => {
                self.protocol_error(
                    ProtocolError::OpenAi(OpenAiFault::UnexpectedSessionUpdated),
                    format_args!("session.updated before our session.update"),
                );
                return;
            }
            // A later update's confirmation (none is sent today): nothing to do.
            SessionPhase::Ready { .. } => return,
        };
        if input != Some("audio/pcmu") || output != Some("audio/pcmu") {
            let why = format!("session.updated has formats {input:?}/{output:?}, not audio/pcmu");
            self.end(EndReason::OpenAiSetupFailed(why));
            return;
        }
        self.events.push_back(CallEvent::SessionReady {
            session_id: session_id.clone(),
            setup: now.saturating_duration_since(self.created_at),
        });
        self.session = SessionPhase::Ready { session_id };
        // The greeting first: sent after the held caller audio, it would meet the server's own
        // response whenever that audio already holds a whole turn (refused:
        // `conversation_already_has_active_response`, and the greeting lost). Sent first, it
        // starts at once, and caller speech in the held audio interrupts it like any barge-in.
        if let Some(greeting) = self.cfg.agent.greeting.clone() {
            let id = self.event_id();
            let instructions = format!("Greet the caller by saying exactly: {greeting}");
            self.outbox.push(Leg::OpenAi, |out| {
                oa::encode_response_create(out, id.as_str(), Some(&instructions))
            });
        }
        for payload in held.frames {
            self.stats.audio_frames_up += 1;
            self.outbox
                .push(Leg::OpenAi, |out| oa::encode_append(out, &payload));
        }
    }

    fn on_api_error(&mut self, err: oa::ApiError<'_>) {
        self.stats.openai_errors += 1;
        if !self.session.is_ready() {
            let why = format!(
                "{} ({}{}{})",
                err.message,
                err.code.unwrap_or(err.error_type),
                if err.param.is_some() { ", " } else { "" },
                err.param.unwrap_or("")
            );
            let reason = if self.answers_session_update(&err) {
                EndReason::AgentRejected {
                    agent_id: self.cfg.agent.id.clone(),
                    why,
                }
            } else {
                EndReason::OpenAiSetupFailed(why)
            };
            self.end(reason);
            return;
        }
        // After setup, errors are benign (a truncate that lost a race, a cancel with nothing to
        // cancel): log with the echoed event id and go on (protocol.md 5.5).
        tracing::warn!(
            call_sid = %self.cfg.expected_call_sid,
            code = err.code.unwrap_or(""),
            event_id = err.event_id.unwrap_or(""),
            "openai error: {}",
            err.message
        );
        self.events.push_back(CallEvent::OpenAiError {
            code: err.code.map(str::to_owned),
            message: err.message.to_owned(),
            event_id: err.event_id.map(str::to_owned),
        });
    }

    /// Whether a setup `error` refuses the agent's settings: it names our `session.update`
    /// (`error.event_id`), or it is an `invalid_request_error` about a session parameter. The
    /// model is the server's configuration, not the agent's: an unknown model is everyone's
    /// problem and stays an OpenAI failure.
    fn answers_session_update(&self, err: &oa::ApiError<'_>) -> bool {
        let about_model = err.code == Some("model_not_found")
            || err
                .param
                .is_some_and(|p| p == "model" || p.ends_with(".model"));
        if about_model {
            return false;
        }
        // Only a refusal of what we asked for is the agent's: a server error, a rate limit or a
        // quota answering the same session.update is everyone's (OpenAI's or the account's).
        if err.error_type != "invalid_request_error" {
            return false;
        }
        let names_ours = match (err.event_id, &self.session) {
            (Some(theirs), SessionPhase::Updating { update_id, .. }) => {
                theirs == EventId::new(*update_id).as_str()
            }
            _ => false,
        };
        names_ours || err.param.is_some_and(|p| p.starts_with("session."))
    }

    fn on_audio_delta(&mut self, now: Instant, response_id: &str, item_id: &str, delta_b64: &str) {
        if self.interrupted_responses.iter().any(|r| r == response_id)
            || self.interrupted_items.iter().any(|i| i == item_id)
        {
            self.stats.late_deltas_dropped += 1;
            return;
        }
        if !b64::is_valid(delta_b64.as_bytes()) {
            self.protocol_error(
                ProtocolError::OpenAi(OpenAiFault::BadAudio),
                format_args!("audio delta of item {item_id} is not valid base64"),
            );
            return;
        }
        let StreamPhase::Started { stream_sid, .. } = &self.stream else {
            self.protocol_error(
                ProtocolError::OpenAi(OpenAiFault::AudioBeforeStart),
                format_args!("audio delta before the twilio stream started"),
            );
            return;
        };
        // Split long deltas at multiples of 4 base64 characters (valid pieces without decoding),
        // so that marks are at most ~100 ms apart (the ledger's error bound).
        let mut rest = delta_b64;
        let mut pieces_left = piece_count(delta_b64.len());
        while !rest.is_empty() {
            let cut = piece_len(rest.len(), pieces_left);
            pieces_left = pieces_left.saturating_sub(1);
            let (chunk, tail) = rest.split_at(cut);
            rest = tail;
            let bytes = b64::decoded_len(chunk.as_bytes()) as u64;
            self.outbox
                .push(Leg::Twilio, |out| tw::encode_media(out, stream_sid, chunk));
            self.stats.audio_frames_down += 1;
            if let Some(cum_ms) = self.ledger.on_audio_sent(now, response_id, item_id, bytes) {
                self.ledger
                    .write_mark_name(&mut self.mark_name, item_id, cum_ms);
                let name = &self.mark_name;
                self.outbox
                    .push(Leg::Twilio, |out| tw::encode_mark(out, stream_sid, name));
                self.stats.marks_sent += 1;
            }
        }
    }

    fn on_speech_started(&mut self, now: Instant) {
        self.caller_speaking = true;
        // The server cancels the response in progress (interrupt_response): deltas of it that
        // are still in flight must not play after the caller started speaking (protocol.md 6.1
        // flaw 6), also when nothing of it is playing at this moment.
        let generating = self.active_response.take();
        if let Some(active) = &generating {
            remember_interrupted(&mut self.interrupted_responses, active);
        }
        if self.ledger.is_playing() {
            for response_id in self.ledger.response_ids() {
                remember_interrupted(&mut self.interrupted_responses, response_id);
            }
        }
        let Some(barge_in) = self.ledger.on_speech_started(now, generating.as_deref()) else {
            self.stats.speech_without_playback += 1;
            return;
        };
        let StreamPhase::Started { stream_sid, .. } = &self.stream else {
            return;
        };
        // 1. The caller must stop hearing the AI at once: clear first (when anything plays).
        if barge_in.clear {
            self.outbox
                .push(Leg::Twilio, |out| tw::encode_clear(out, stream_sid));
            self.stats.barge_ins += 1;
        } else {
            self.stats.generation_truncations += 1;
        }
        // 2. Then tell the model what was heard.
        for (item_id, audio_end_ms) in barge_in.truncates() {
            let id = EventId::new(self.next_event_id);
            self.next_event_id += 1;
            self.outbox.push(Leg::OpenAi, |out| {
                oa::encode_truncate(out, id.as_str(), item_id, audio_end_ms)
            });
            remember_interrupted(&mut self.interrupted_items, item_id);
        }
        tracing::info!(
            call_sid = %self.cfg.expected_call_sid,
            item_id = %barge_in.item_id,
            audio_end_ms = barge_in.audio_end_ms,
            sent_ms = barge_in.sent_ms,
            cleared = barge_in.clear,
            "barge-in: truncated what the caller heard"
        );
        self.events.push_back(CallEvent::Interrupted {
            item_id: barge_in.item_id,
            audio_end_ms: barge_in.audio_end_ms,
            sent_ms: barge_in.sent_ms,
            clamped_ms: barge_in.clamped_ms,
            cleared: barge_in.clear,
        });
    }

    fn on_tool_call(&mut self, response_id: &str, call_id: &str, name: &str, arguments: &str) {
        self.events.push_back(CallEvent::ToolCall {
            call_id: call_id.to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        });
        // Tool execution is not wired yet: answer with an error so the model tells the caller
        // instead of going silent.
        let output = oa::tool_unavailable_output(name);
        let carrier = Some(response_id)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .or_else(|| self.active_response.clone());
        let pending = self.tools.get_or_insert_with(|| PendingTools {
            response_id: None,
            outputs: Vec::new(),
        });
        pending.outputs.push((call_id.to_owned(), output));
        match carrier {
            Some(carrier) => pending.response_id = Some(carrier),
            // No response known to carry it (unusual): nothing to wait for.
            None => self.send_tool_outputs(!self.caller_speaking),
        }
    }

    /// Sends the waiting tool results, then (with `respond`) one `response.create` for all.
    fn send_tool_outputs(&mut self, respond: bool) {
        let outputs = self.tools.take().map(|t| t.outputs).unwrap_or_default();
        for (call_id, output) in outputs {
            let id = self.event_id();
            self.outbox.push(Leg::OpenAi, |out| {
                oa::encode_function_output(out, id.as_str(), &call_id, &output)
            });
        }
        if respond {
            let id = self.event_id();
            self.outbox.push(Leg::OpenAi, |out| {
                oa::encode_response_create(out, id.as_str(), None)
            });
        }
    }

    /// The agent for this call, resolved by the driver after `start` (see
    /// [`CallConfig::wait_for_agent`]); sends `session.update` if OpenAI is already waiting for
    /// it. Too late once `session.update` went out: then ignored (the voice cannot change after
    /// the first audio anyway).
    pub fn set_agent(&mut self, agent: Arc<AgentSettings>) {
        if !matches!(
            self.session,
            SessionPhase::AwaitingCreated { .. } | SessionPhase::Created { .. }
        ) {
            tracing::debug!(call_sid = %self.cfg.expected_call_sid, "agent handed over after session.update: ignored");
            return;
        }
        // `start` arrived and was waiting for the agent.
        let was_pending = self.cfg.wait_for_agent && self.stream_sid().is_some();
        self.cfg.agent = agent;
        self.cfg.wait_for_agent = false;
        if was_pending && self.ended.is_none() {
            // Sent now if session.created came already, else when it comes.
            self.send_session_update();
        }
    }

    /// The agent of this call.
    pub fn agent(&self) -> &Arc<AgentSettings> {
        &self.cfg.agent
    }

    /// Whether outbound frames are waiting.
    pub fn has_pending_transmit(&self) -> bool {
        !self.outbox.is_empty()
    }
}

/// Number of pieces a delta of `b64_len` characters is cut into: the fewest that keep each piece
/// within [`MAX_CHUNK_B64`].
fn piece_count(b64_len: usize) -> usize {
    b64_len.div_ceil(MAX_CHUNK_B64).max(1)
}

/// Length of the next piece when `len` characters are left for `pieces` pieces: an even share,
/// rounded up to a multiple of 4 characters (a valid base64 piece without decoding).
fn piece_len(len: usize, pieces: usize) -> usize {
    if pieces <= 1 {
        return len;
    }
    let quads = len / 4;
    (quads.div_ceil(pieces) * 4).min(len)
}

/// The wire `type` of a parsed server event, for `LOG_EVENT_TYPES`.
pub fn event_type<'a>(ev: &ServerEvent<'a>) -> &'a str {
    match ev {
        ServerEvent::SessionCreated { .. } => "session.created",
        ServerEvent::SessionUpdated { .. } => "session.updated",
        ServerEvent::Error(_) => "error",
        ServerEvent::SpeechStarted { .. } => "input_audio_buffer.speech_started",
        ServerEvent::SpeechStopped { .. } => "input_audio_buffer.speech_stopped",
        ServerEvent::InputTranscriptionCompleted { .. } => {
            "conversation.item.input_audio_transcription.completed"
        }
        ServerEvent::InputTranscriptionFailed { .. } => {
            "conversation.item.input_audio_transcription.failed"
        }
        ServerEvent::ResponseCreated { .. } => "response.created",
        ServerEvent::OutputItemAdded { .. } => "response.output_item.added",
        ServerEvent::ContentPartAdded { .. } => "response.content_part.added",
        ServerEvent::OutputAudioDelta { .. } => "response.output_audio.delta",
        ServerEvent::OutputAudioDone { .. } => "response.output_audio.done",
        ServerEvent::OutputAudioTranscriptDone { .. } => "response.output_audio_transcript.done",
        ServerEvent::FunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
        ServerEvent::ResponseDone { .. } => "response.done",
        ServerEvent::ItemTruncated { .. } => "conversation.item.truncated",
        ServerEvent::Other { event_type } => event_type,
    }
}
