//! The call loop: one task per call owns both of its sockets (Twilio's and OpenAI's) and moves
//! bytes and time between them and the sans-IO [`Call`]. Written once, for every driver: the
//! sockets are [`Transport`] halves, whose operations own their buffers.
//!
//! ```text
//!            ┌──────────── LegState[Twilio] ───────────┐      ┌──────── LegState[OpenAi] ───────────┐
//!  Twilio ──▶ recv ─▶ input ─▶ ws::Decoder ─▶ Call::handle_* ─▶ poll_transmit ─▶ output ─▶ send ──▶ OpenAI
//!  Twilio ◀── send ◀─ output ◀─ poll_transmit ◀─ Call::handle_* ◀─ ws::Decoder ◀─ input ◀─ recv ◀── OpenAI
//! ```
//!
//! The two legs are one pair indexed by [`Leg`]: what happens when bytes arrive, when a send
//! completes, when a peer closes or stalls is written once for both. Each leg has an output
//! buffer; a leg whose pending output is above [`HIGH_WATER_BYTES`] stops the reading of the other
//! leg (backpressure into TCP), and a leg that makes no send progress for the configured
//! `WRITE_STALL_TIMEOUT_SECS` ends the call with a reason.

use std::future::poll_fn;
use std::io;
use std::ops::{Index, IndexMut};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::transport::{self, room_to_recv, shrink_if_idle, Ready, RecvHalf, SendHalf, Sent};
use super::CLOSE_TIMEOUT;
use crate::front::routes::{App, UpgradeGrant};
use crate::metrics::CallMeter;
use crate::openai::client::Dial;
use crate::store::sink::CallRecorder;
use callbridge_core::bridge::{Call, CallConfig, CallEvent, EndReason, Leg};
use callbridge_core::wire::ws::{Decoder, Encoder, Message, Role};

/// Largest Twilio message: a `start` with parameters is under 2 KiB and media frames are ~400
/// bytes; 64 KiB leaves room for unusually large frames and refuses abuse (close 1009).
pub const MAX_TWILIO_MESSAGE_BYTES: usize = 64 * 1024;

/// Largest OpenAI message: audio deltas are a few KiB to a few hundred KiB; `session.updated`
/// with long instructions and tools stays far below 4 MiB.
pub const MAX_OPENAI_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Output pending for one leg before the other leg stops being read (backpressure).
pub const HIGH_WATER_BYTES: usize = 1024 * 1024;

/// One leg's buffers and WebSocket state: the same for every transport.
pub(crate) struct LegState {
    /// Received bytes not yet decoded (with the receive while one is in flight).
    input: Vec<u8>,
    /// Frames queued and not yet handed to a send.
    output: Vec<u8>,
    /// An empty buffer to queue into while `output` is with a send in flight. It gains capacity
    /// only when frames are queued during a send (a plain socket's send completes at once).
    spare: Vec<u8>,
    /// Bytes in the send in flight (0 for none, or a flush).
    sending: usize,
    /// A receive is in flight.
    receiving: bool,
    /// A send (or flush) is in flight.
    send_busy: bool,
    /// The stream holds sent bytes until flushed (TLS records).
    needs_flush: bool,
    decoder: Decoder,
    encoder: Encoder,
    /// Last time a send made progress (or nothing was pending).
    last_progress: Instant,
    /// Pending output with no progress for this long: the peer is gone.
    stall_timeout: Duration,
    /// Its socket exists (the OpenAI leg's only once dialled).
    connected: bool,
    /// Receiving: the peer has not closed and no receive or send failed.
    open: bool,
    /// We sent a close frame (nothing more is sent).
    closing: bool,
}

impl LegState {
    /// A leg whose socket exists, with the bytes that came with its handshake.
    pub(crate) fn connected(
        input: Vec<u8>,
        role: Role,
        max_message: usize,
        stall_timeout: Duration,
    ) -> LegState {
        LegState {
            connected: true,
            open: true,
            input,
            ..LegState::not_connected(role, max_message, stall_timeout)
        }
    }

    /// A leg whose socket is not open yet.
    fn not_connected(role: Role, max_message: usize, stall_timeout: Duration) -> LegState {
        LegState {
            input: Vec::new(),
            output: Vec::new(),
            spare: Vec::new(),
            sending: 0,
            receiving: false,
            send_busy: false,
            needs_flush: false,
            decoder: Decoder::new(role, max_message),
            encoder: Encoder::new(role),
            last_progress: Instant::now(),
            stall_timeout,
            connected: false,
            open: false,
            closing: false,
        }
    }

    /// Output not yet sent: queued, or in the send in flight.
    fn pending(&self) -> usize {
        self.sending + self.output.len()
    }

    /// Restarts the stall clock while nothing is pending: a leg that had nothing to send for a
    /// while is not "stalled" the moment it has something again. Called before output is queued.
    fn note_idle(&mut self, now: Instant) {
        if self.pending() == 0 {
            self.last_progress = now;
        }
    }

    /// When the leg counts as stalled if its pending output makes no progress: `None` while
    /// nothing is pending.
    fn stall_deadline(&self) -> Option<Instant> {
        (self.pending() > 0).then(|| self.last_progress + self.stall_timeout)
    }

    fn stalled(&self, now: Instant) -> bool {
        self.stall_deadline().is_some_and(|d| now > d)
    }

    /// Queues a text message, unless we are closing.
    fn queue_text(&mut self, payload: &[u8]) {
        if !self.closing {
            self.encoder.text(&mut self.output, payload);
        }
    }

    /// Queues a close frame, once.
    fn queue_close(&mut self, code: u16, reason: &str) {
        if !self.closing {
            self.encoder.close(&mut self.output, code, reason);
            self.closing = true;
        }
    }

    /// Hands `io` a receive, when one may start: connected, open, none in flight, and `allowed`
    /// (backpressure).
    fn start_recv<R: RecvHalf>(&mut self, rd: &mut R, allowed: bool) {
        if self.connected && self.open && !self.receiving && allowed {
            let mut buf = std::mem::take(&mut self.input);
            room_to_recv(&mut buf);
            rd.start_recv(buf);
            self.receiving = true;
        }
    }

    /// Hands `io` a send of the queued output, or a flush, when one is due and none is in flight.
    fn start_send<W: SendHalf>(&mut self, wr: &mut W) {
        if !self.connected || self.send_busy {
            return;
        }
        if !self.output.is_empty() {
            let buf = std::mem::replace(&mut self.output, std::mem::take(&mut self.spare));
            self.sending = buf.len();
            wr.start_send(buf);
            self.send_busy = true;
        } else if self.needs_flush {
            wr.start_send(std::mem::take(&mut self.spare));
            self.send_busy = true;
        }
    }

    /// Takes back the buffer of a completed receive.
    fn on_received(&mut self, buf: Vec<u8>) {
        self.receiving = false;
        self.input = buf;
    }

    /// Takes back the buffer of a completed send, of which `n` bytes were taken.
    fn on_sent(&mut self, mut buf: Vec<u8>, n: usize, flushed: bool, now: Instant) {
        self.send_busy = false;
        let was_flush = self.sending == 0;
        self.sending = 0;
        buf.drain(..n.min(buf.len()));
        if was_flush {
            self.spare = buf;
        } else if self.output.is_empty() {
            // Nothing queued meanwhile (the usual case): the buffer, with anything unsent,
            // is the output again.
            self.spare = std::mem::replace(&mut self.output, buf);
        } else if buf.is_empty() {
            self.spare = buf;
        } else {
            // The unsent rest goes before what was queued meanwhile.
            buf.extend_from_slice(&self.output);
            self.output.clear();
            self.spare = std::mem::replace(&mut self.output, buf);
        }
        shrink_if_idle(&mut self.output);
        shrink_if_idle(&mut self.spare);
        if n > 0 {
            self.last_progress = now;
        }
        self.needs_flush = !flushed;
    }

    /// After a failed send: nothing more goes out on this leg.
    fn on_send_failed(&mut self, buf: Vec<u8>) {
        self.send_busy = false;
        self.sending = 0;
        self.open = false;
        self.output.clear();
        self.spare = buf;
        self.spare.clear();
    }

    /// Decodes every complete message in `input` and feeds it to the call; `Closed` when the
    /// peer closed (a close frame) or broke the WebSocket protocol (we answer with a close).
    fn decode_input(&mut self, leg: Leg, call: &mut Call, now: Instant) -> LegInput {
        let mut start = 0;
        let result = loop {
            let decoded = match self.decoder.decode(&mut self.input[start..]) {
                Ok(d) => d,
                Err(e) => {
                    let code = e.close_code();
                    self.queue_close(code, &e.to_string());
                    break LegInput::Closed(format!("websocket error ({code}): {e}"));
                }
            };
            let consumed = decoded.consumed;
            match decoded.message {
                None if consumed == 0 => break LegInput::Open,
                None => {}
                Some(Message::Text(text)) => match leg {
                    Leg::Twilio => call.handle_twilio_frame(now, text),
                    Leg::OpenAi => call.handle_openai_frame(now, text),
                },
                Some(Message::Binary(_)) => match leg {
                    Leg::Twilio => call.handle_twilio_binary(now),
                    Leg::OpenAi => call.handle_openai_binary(now),
                },
                Some(Message::Ping(payload)) if !self.closing => {
                    self.encoder.pong(&mut self.output, payload)
                }
                Some(Message::Ping(_)) | Some(Message::Pong(_)) => {}
                Some(Message::Close { code, reason }) => {
                    let why = format!(
                        "close {} {reason:?}",
                        code.map_or("(no code)".to_owned(), |c| c.to_string())
                    );
                    self.queue_close(1000, "");
                    start += consumed;
                    break LegInput::Closed(why);
                }
            }
            start += consumed;
        };
        self.input.drain(..start);
        shrink_if_idle(&mut self.input);
        result
    }
}

/// What decoding a leg's input produced.
enum LegInput {
    /// More may come.
    Open,
    /// The peer closed (or broke the protocol), with a description.
    Closed(String),
}

/// The two legs' states, indexed by [`Leg`].
struct Legs([LegState; 2]);

impl Index<Leg> for Legs {
    type Output = LegState;

    fn index(&self, leg: Leg) -> &LegState {
        &self.0[slot(leg)]
    }
}

impl IndexMut<Leg> for Legs {
    fn index_mut(&mut self, leg: Leg) -> &mut LegState {
        &mut self.0[slot(leg)]
    }
}

/// The array slot of a leg.
fn slot(leg: Leg) -> usize {
    match leg {
        Leg::Twilio => 0,
        Leg::OpenAi => 1,
    }
}

/// Both legs.
const LEGS: [Leg; 2] = [Leg::Twilio, Leg::OpenAi];

/// One leg's socket halves.
pub(crate) struct LegIo<R, W> {
    pub(crate) rd: R,
    pub(crate) wr: W,
}

/// A completed operation on one leg.
enum Done {
    /// A receive: the bytes appended (0 at the end of the stream) and the buffer.
    Received(io::Result<usize>, Vec<u8>),
    /// A send (or flush) and the buffer.
    Sent(io::Result<Sent>, Vec<u8>),
}

/// Polls the operations in flight on both legs, starting at a different one each time so a busy
/// leg cannot starve the other; the first completion wins.
fn poll_io<TR, TW, OR, OW>(
    cx: &mut Context<'_>,
    legs: &Legs,
    tw: &mut LegIo<TR, TW>,
    mut oa: Option<&mut LegIo<OR, OW>>,
    rotation: &mut usize,
) -> Poll<(Leg, Done)>
where
    TR: RecvHalf,
    TW: SendHalf,
    OR: RecvHalf,
    OW: SendHalf,
{
    *rotation = (*rotation + 1) % 4;
    for i in 0..4 {
        let (leg, receive) = match (*rotation + i) % 4 {
            0 => (Leg::Twilio, true),
            1 => (Leg::OpenAi, true),
            2 => (Leg::Twilio, false),
            _ => (Leg::OpenAi, false),
        };
        let state = &legs[leg];
        let polled = match (leg, receive) {
            (_, true) if !state.receiving => continue,
            (_, false) if !state.send_busy => continue,
            (Leg::Twilio, true) => tw.rd.poll_recv(cx).map(|(r, b)| Done::Received(r, b)),
            (Leg::Twilio, false) => tw.wr.poll_send(cx).map(|(r, b)| Done::Sent(r, b)),
            (Leg::OpenAi, true) => match oa.as_deref_mut() {
                Some(io) => io.rd.poll_recv(cx).map(|(r, b)| Done::Received(r, b)),
                None => continue,
            },
            (Leg::OpenAi, false) => match oa.as_deref_mut() {
                Some(io) => io.wr.poll_send(cx).map(|(r, b)| Done::Sent(r, b)),
                None => continue,
            },
        };
        if let Poll::Ready(done) = polled {
            return Poll::Ready((leg, done));
        }
    }
    Poll::Pending
}

/// Awaits the pending OpenAI connect, if any; never resolves once it is gone.
async fn connect_some<F: std::future::Future + Unpin>(connect: &mut Option<F>) -> F::Output {
    match connect.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Tells the call that `leg`'s peer is gone.
fn peer_closed(call: &mut Call, leg: Leg, now: Instant, why: &str) {
    match leg {
        Leg::Twilio => {
            tracing::info!(call_sid = call.call_sid(), "twilio closed: {why}");
            call.handle_twilio_closed(now);
        }
        Leg::OpenAi => call.handle_openai_closed(now, why),
    }
}

/// Moves what the call wants to send into the legs' output buffers.
fn pump_transmits(call: &mut Call, scratch: &mut Vec<u8>, legs: &mut Legs) {
    while let Some(tx) = call.poll_transmit(scratch) {
        let leg = &mut legs[tx.leg];
        if leg.connected {
            leg.queue_text(&scratch[..tx.len]);
        } else {
            tracing::debug!(
                call_sid = call.call_sid(),
                leg = tx.leg.label(),
                "dropped a frame for a leg not connected"
            );
        }
    }
}

/// The OpenAI leg's halves over a dialer's connection.
type OpenAiIo<C> = LegIo<Ready<tokio::io::ReadHalf<C>>, Ready<tokio::io::WriteHalf<C>>>;

/// Runs one call: Twilio's socket (already upgraded, `leftover` the bytes that came with the
/// upgrade request) and a new OpenAI connection from `dialer`.
pub(crate) async fn run_call<R: RecvHalf, W: SendHalf, D: Dial>(
    twilio: LegIo<R, W>,
    leftover: Vec<u8>,
    grant: UpgradeGrant,
    app: Arc<App>,
    dialer: D,
) {
    let cfg = app.config();
    let started = Instant::now();
    let mut call_cfg = CallConfig::new(&cfg.openai_model, Arc::clone(&cfg.agent), &grant.call_sid);
    call_cfg.start_token = Some(grant.start_token.clone());
    call_cfg.session_timeout = cfg.openai_session_timeout;
    call_cfg.twilio_idle_timeout = cfg.twilio_idle_timeout;
    call_cfg.log_event_types = Arc::clone(&cfg.log_event_types);
    // The store records the call and hands it its agent at `start`.
    let mut recorder = CallRecorder::new(app.store(), &grant.call_sid);
    call_cfg.wait_for_agent = recorder.resolves_agent();
    let mut call = Call::new(call_cfg, started);
    let mut meter = CallMeter::new(started);
    tracing::info!(call_sid = %grant.call_sid, "media stream accepted");

    let stall = cfg.write_stall_timeout;
    let mut legs = Legs([
        LegState::connected(leftover, Role::Server, MAX_TWILIO_MESSAGE_BYTES, stall),
        LegState::not_connected(Role::Client, MAX_OPENAI_MESSAGE_BYTES, stall),
    ]);
    let mut tw = twilio;
    let mut oa: Option<OpenAiIo<D::Conn>> = None;
    // The OpenAI leg is dialled (or taken from the pool) only once `start` carried the right
    // token (the call's `StreamStarted`): an upgrade alone opens no Realtime session. Boxed, and
    // dropped once it resolves: inline, the connect future (TCP connect, TLS handshake state,
    // its timeout) would stay in the call's task for the whole call.
    let mut connect = None;
    let mut dialed_at: Option<Instant> = None;
    let mut scratch: Vec<u8> = Vec::new();
    let mut rotation = 0;
    // One timer per call, moved only when the deadline comes earlier than the armed one or the
    // armed one has passed: the write-stall deadline moves forward on every send, and a fresh
    // `sleep_until` per loop turn would cost a timer-wheel insert and removal per frame. Firing
    // early is harmless: `handle_timeout` only acts on deadlines that have passed, and the next
    // turn re-arms at the real deadline.
    let mut armed = started + Duration::from_secs(3600);
    let timer = tokio::time::sleep_until(armed.into());
    tokio::pin!(timer);
    // The drain's deadline: the call is ended (`drained`) and closed normally. Polling it costs a
    // few atomics per loop turn (no lock on the audio path).
    let mut ended_by_drain = app.end_calls_watch();
    let mut drain_seen = false;

    // Bytes that arrived with the upgrade request.
    on_bytes(&mut legs, &mut call, &mut meter, Leg::Twilio, started);

    loop {
        // Before anything is queued this turn: a leg with nothing pending is not behind.
        let turn = Instant::now();
        for leg in LEGS {
            legs[leg].note_idle(turn);
        }
        pump_transmits(&mut call, &mut scratch, &mut legs);
        meter.on_queued(
            call.stats(),
            legs[Leg::Twilio].pending(),
            legs[Leg::OpenAi].pending(),
        );
        dispatch_events(&mut call, &mut meter, &mut recorder, &app, &grant);
        if call.has_pending_transmit() {
            // The agent handed over at `start` releases session.update.
            pump_transmits(&mut call, &mut scratch, &mut legs);
        }
        if call.is_ended() {
            break;
        }
        // Nothing above waits: the turn's clock reading still stands.
        let now = turn;
        if dialed_at.is_none() && call.stream_sid().is_some() {
            dialed_at = Some(now);
            connect = Some(Box::pin(dialer.dial()));
        }
        meter.tick(now, call.outstanding_marks());
        if let Some(leg) = LEGS.into_iter().find(|&leg| legs[leg].stalled(now)) {
            let reason = EndReason::PeerStalled { leg, after: stall };
            call.hang_up(now, reason);
            continue;
        }
        let deadline = [
            call.poll_timeout(),
            legs[Leg::Twilio].stall_deadline(),
            legs[Leg::OpenAi].stall_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(3600));
        if deadline < armed || armed <= now {
            timer.as_mut().reset(deadline.into());
            armed = deadline;
        }
        // A leg is not read while the other leg's output is above the high-water mark
        // (backpressure), and Twilio not while its own is either (pongs to a ping flood from a
        // peer that reads nothing must not grow memory; the stall timeout then ends the call).
        let below = |leg: Leg| legs[leg].pending() < HIGH_WATER_BYTES;
        let (tw_may, oa_may) = (below(Leg::Twilio) && below(Leg::OpenAi), below(Leg::Twilio));
        legs[Leg::Twilio].start_recv(&mut tw.rd, tw_may);
        legs[Leg::Twilio].start_send(&mut tw.wr);
        if let Some(io) = oa.as_mut() {
            legs[Leg::OpenAi].start_recv(&mut io.rd, oa_may);
            legs[Leg::OpenAi].start_send(&mut io.wr);
        }
        tokio::select! {
            (leg, done) = poll_fn(|cx| poll_io(cx, &legs, &mut tw, oa.as_mut(), &mut rotation)) => {
                on_done(&mut legs, &mut call, &mut meter, leg, done);
            }
            r = connect_some(&mut connect) => {
                connect = None;
                let now = Instant::now();
                let took = now.duration_since(dialed_at.unwrap_or(started));
                meter.on_openai_connect(took, r.is_ok());
                match r {
                    Ok((conn, rest)) => {
                        tracing::debug!(call_sid = %grant.call_sid, ms = took.as_millis() as u64, "openai connected");
                        let (rd, wr) = Ready::split(conn);
                        oa = Some(LegIo { rd, wr });
                        legs[Leg::OpenAi] = LegState::connected(rest, Role::Client, MAX_OPENAI_MESSAGE_BYTES, stall);
                        on_bytes(&mut legs, &mut call, &mut meter, Leg::OpenAi, now);
                    }
                    Err(e) => call.handle_openai_connect_failed(now, &e.to_string()),
                }
            }
            _ = &mut timer => {
                call.handle_timeout(Instant::now());
            }
            _ = &mut ended_by_drain, if !drain_seen => {
                drain_seen = true;
                call.hang_up(Instant::now(), EndReason::Drained);
            }
        }
    }

    // The call is over: say goodbye on both legs and flush, bounded in time.
    pump_transmits(&mut call, &mut scratch, &mut legs);
    dispatch_events(&mut call, &mut meter, &mut recorder, &app, &grant);
    let Legs([tw_state, oa_state]) = &mut legs;
    // A normal close: Twilio finishes <Connect> and follows the <Redirect>.
    if tw_state.open {
        tw_state.queue_close(1000, "call ended");
    }
    // Only the OpenAI leg is drained: the caller's last audio must reach it (see `finish`).
    match oa.as_mut() {
        Some(io) => {
            oa_state.queue_close(1000, "call ended");
            tokio::join!(finish(&mut tw, tw_state, false), finish(io, oa_state, true));
        }
        None => finish(&mut tw, tw_state, false).await,
    }
    let stats = call.stats();
    tracing::info!(
        call_sid = %grant.call_sid,
        reason = call.end_reason().map(|r| r.label()).unwrap_or("unknown"),
        duration_ms = started.elapsed().as_millis() as u64,
        up = stats.audio_frames_up,
        down = stats.audio_frames_down,
        barge_ins = stats.barge_ins,
        protocol_errors = stats.protocol_errors,
        "call finished"
    );
}

/// Feeds the bytes `leg` holds to the call (those that came with a handshake, or a receive's).
fn on_bytes(legs: &mut Legs, call: &mut Call, meter: &mut CallMeter, leg: Leg, now: Instant) {
    let state = &mut legs[leg];
    if state.input.is_empty() {
        return;
    }
    meter.on_read(leg, state.input.len(), now);
    if let LegInput::Closed(why) = state.decode_input(leg, call, now) {
        state.open = false;
        peer_closed(call, leg, now, &why);
    }
}

/// Handles a completed operation on `leg`.
fn on_done(legs: &mut Legs, call: &mut Call, meter: &mut CallMeter, leg: Leg, done: Done) {
    let now = Instant::now();
    match done {
        Done::Received(result, buf) => {
            let state = &mut legs[leg];
            state.on_received(buf);
            match result {
                Ok(n) if n > 0 => {
                    meter.on_read(leg, n, now);
                    if let LegInput::Closed(why) = state.decode_input(leg, call, now) {
                        state.open = false;
                        peer_closed(call, leg, now, &why);
                    }
                }
                Ok(_) => {
                    state.open = false;
                    peer_closed(call, leg, now, "connection closed without a close frame");
                }
                Err(e) => {
                    state.open = false;
                    peer_closed(call, leg, now, &format!("io error: {e}"));
                }
            }
        }
        Done::Sent(result, buf) => {
            let state = &mut legs[leg];
            match result {
                Ok(Sent { n, flushed }) => {
                    state.on_sent(buf, n, flushed, now);
                    if n > 0 {
                        meter.on_written(leg, n, now);
                    }
                }
                Err(e) => {
                    state.on_send_failed(buf);
                    peer_closed(call, leg, now, &format!("write failed: {e}"));
                }
            }
        }
    }
}

/// Sends what `state` still holds and shuts the write side, within [`CLOSE_TIMEOUT`]; with
/// `drain`, then receives (and discards) until the peer closes, within the same time. The
/// draining matters where the last bytes we sent must arrive: closing a socket with unread input
/// makes the kernel answer with a reset, which throws away whatever the peer had not taken yet
/// (the load test lost the last caller frames of calls this way when the OpenAI side was slow to
/// read).
pub(crate) async fn finish<R: RecvHalf, W: SendHalf>(
    io: &mut LegIo<R, W>,
    state: &mut LegState,
    drain: bool,
) {
    if !state.connected {
        return;
    }
    let work = async {
        if state.send_busy {
            let (result, buf) = poll_fn(|cx| io.wr.poll_send(cx)).await;
            match result {
                Ok(Sent { n, flushed }) => state.on_sent(buf, n, flushed, Instant::now()),
                Err(e) => return Err(e),
            }
        }
        let (result, _) = transport::send_all(&mut io.wr, std::mem::take(&mut state.output)).await;
        result?;
        transport::shutdown(&mut io.wr).await?;
        if drain {
            // The drained bytes go through the leg's own input buffer (the one with the receive
            // in flight, if any: that receive completes first).
            let more = |r: io::Result<usize>| matches!(r, Ok(n) if n > 0);
            let (mut sink, mut open) = if state.receiving {
                state.receiving = false;
                let (result, buf) = poll_fn(|cx| io.rd.poll_recv(cx)).await;
                (buf, more(result))
            } else {
                (std::mem::take(&mut state.input), state.open)
            };
            while open {
                sink.clear();
                room_to_recv(&mut sink);
                let (result, buf) = transport::recv(&mut io.rd, sink).await;
                sink = buf;
                open = more(result);
            }
        }
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, work).await;
    state.output.clear();
}

/// Hands every event the call produced to the metrics, the store and the app.
fn dispatch_events(
    call: &mut Call,
    meter: &mut CallMeter,
    recorder: &mut CallRecorder,
    app: &App,
    grant: &UpgradeGrant,
) {
    while let Some(ev) = call.poll_event() {
        meter.on_event(&ev);
        recorder.on_event(call, &ev);
        on_call_event(app, grant, ev);
    }
}

fn on_call_event(app: &App, grant: &UpgradeGrant, ev: CallEvent) {
    match ev {
        CallEvent::Ended { reason } => {
            // The webhook's breaker learns from every AI leg that got ready or could not.
            if reason.is_openai_unreachable() {
                app.breaker().note(false);
            }
            // after-stream hangs up only on a call known to have ended normally here.
            app.call_ended(&grant.call_sid, reason.is_normal());
        }
        CallEvent::SessionReady { setup, .. } => {
            app.breaker().note(true);
            tracing::debug!(call_sid = %grant.call_sid, setup_ms = setup.as_millis() as u64, "session ready");
        }
        // What was said stays out of the log unless LOG_TRANSCRIPTS=true (then at debug).
        CallEvent::CallerTranscript { text, .. } if app.config().log_transcripts => {
            tracing::debug!(call_sid = %grant.call_sid, "caller: {text}")
        }
        CallEvent::AssistantTranscript { text, .. } if app.config().log_transcripts => {
            tracing::debug!(call_sid = %grant.call_sid, "assistant: {text}")
        }
        CallEvent::ToolCall { name, call_id, .. } => {
            tracing::info!(call_sid = %grant.call_sid, tool = %name, %call_id, "tool call (tools are not executed yet: answered with an error result)")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(10);

    fn idle_leg() -> LegState {
        LegState::connected(Vec::new(), Role::Server, MAX_TWILIO_MESSAGE_BYTES, STALL)
    }

    #[test]
    fn a_leg_with_nothing_to_send_for_a_while_is_not_stalled_when_output_comes() {
        // The last send was long ago (the bot was silent while the caller spoke).
        let mut leg = idle_leg();
        let now = Instant::now() + STALL * 2;
        // A loop turn: the stall clock restarts, then a frame is queued.
        leg.note_idle(now);
        leg.queue_text(b"{}");
        assert!(!leg.stalled(now));
        assert!(leg.last_progress + STALL > now, "no deadline in the past");
        // Still queued, no progress for longer than the limit: stalled.
        let later = now + STALL + Duration::from_millis(1);
        leg.note_idle(later);
        assert!(leg.stalled(later));
    }

    #[test]
    fn only_a_leg_with_pending_output_has_a_stall_deadline() {
        let mut leg = idle_leg();
        let now = Instant::now();
        leg.note_idle(now);
        // Nothing queued: no deadline, so an idle call sets no stall timer at all.
        assert_eq!(leg.stall_deadline(), None);
        assert!(!leg.stalled(now + STALL * 10));
        leg.queue_text(b"{}");
        assert_eq!(leg.stall_deadline(), Some(now + STALL));
        assert!(!leg.stalled(now + STALL));
        assert!(leg.stalled(now + STALL + Duration::from_millis(1)));
    }

    /// A send half that records what it was handed and completes as told.
    #[derive(Default)]
    struct FakeSend {
        handed: Option<Vec<u8>>,
    }

    impl SendHalf for FakeSend {
        fn start_send(&mut self, buf: Vec<u8>) {
            assert!(self.handed.replace(buf).is_none());
        }
        fn poll_send(&mut self, _: &mut Context<'_>) -> Poll<(io::Result<Sent>, Vec<u8>)> {
            unreachable!("the tests complete sends by hand")
        }
        fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn output_queued_during_a_send_follows_the_unsent_rest_in_order() {
        let mut leg = idle_leg();
        let mut wr = FakeSend::default();
        let now = Instant::now();
        leg.output.extend_from_slice(b"abcdef");
        leg.start_send(&mut wr);
        assert_eq!(leg.pending(), 6);
        // Queued while the send is in flight.
        leg.output.extend_from_slice(b"gh");
        assert_eq!(leg.pending(), 8);
        // Only four bytes were taken, and they still need a flush.
        let buf = wr.handed.take().unwrap();
        leg.on_sent(buf, 4, false, now);
        assert_eq!(leg.output, b"efgh");
        assert!(leg.needs_flush);
        assert!(leg.spare.is_empty());
        // The rest goes out next, whole.
        leg.start_send(&mut wr);
        let buf = wr.handed.take().unwrap();
        assert_eq!(buf, b"efgh");
        leg.on_sent(buf, 4, true, now);
        assert_eq!(leg.pending(), 0);
        assert!(!leg.needs_flush);
        // Nothing to send and nothing to flush: no send starts.
        leg.start_send(&mut wr);
        assert!(wr.handed.is_none());
    }

    #[test]
    fn a_complete_send_keeps_its_buffer_as_the_output_so_nothing_is_reallocated() {
        let mut leg = idle_leg();
        let mut wr = FakeSend::default();
        leg.output.reserve(1000);
        leg.output.extend_from_slice(b"frame");
        let capacity = leg.output.capacity();
        leg.start_send(&mut wr);
        let buf = wr.handed.take().unwrap();
        leg.on_sent(buf, 5, true, Instant::now());
        assert!(leg.output.is_empty());
        assert_eq!(leg.output.capacity(), capacity);
        assert_eq!(leg.spare.capacity(), 0);
    }
}
