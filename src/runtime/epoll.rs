//! The tokio (epoll) driver: accepts connections, reads HTTP requests with limits and timeouts,
//! and runs each call's loop. It only moves bytes and time: parsing, routing and every protocol
//! decision live in `front/`, `twilio/`, `openai/` and [`Call`].
//!
//! The connection handler ([`connection`]) and the call loop are generic over the transport
//! ([`Transport`], [`Dial`]): the io_uring driver (`runtime::uring`) runs the very same code over
//! its owned-buffer stream adapter, so the two drivers differ only in how bytes reach the buffers.
//!
//! One task per call owns both of its sockets (Twilio's and OpenAI's), so a call's audio never
//! crosses a thread or takes a lock. Each leg has an output buffer; a leg whose buffer is above
//! [`HIGH_WATER_BYTES`] stops the reading of the other leg (backpressure into TCP), and a leg that
//! makes no write progress for [`WRITE_STALL_TIMEOUT`] ends the call with a reason.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bridge::{Call, CallConfig, CallEvent, EndReason, Leg};
use crate::front::http::{self, Limits, Parsed, Request};
use crate::front::routes::{App, Response, Routed, UpgradeGrant};
use crate::front::ws::{self, Decoder, Encoder, Message, Role};
use crate::metrics::{self, CallMeter};
use crate::openai::client::Connector;
use crate::openai::pool::{maintain, PoolConfig, PooledDial, SharedPool};
use crate::runtime::io::{Dial, Transport};
use crate::runtime::{next_phase, Phase};
use crate::store::sink::CallRecorder;

/// Largest Twilio message: a `start` with parameters is under 2 KiB and media frames are ~400
/// bytes; 64 KiB leaves room for unusually large frames and refuses abuse (close 1009).
pub const MAX_TWILIO_MESSAGE_BYTES: usize = 64 * 1024;

/// Largest OpenAI message: audio deltas are a few KiB to a few hundred KiB; `session.updated`
/// with long instructions and tools stays far below 4 MiB.
pub const MAX_OPENAI_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Output buffered for one leg before the other leg stops being read (backpressure).
pub const HIGH_WATER_BYTES: usize = 1024 * 1024;

/// A leg with pending output and no write progress for this long is a vanished peer: the default
/// of `WRITE_STALL_TIMEOUT_SECS` (`Config::write_stall_timeout`, which takes it from here).
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a keep-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the closing handshake and the last flush may take when a call ends.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a read asks room for when the input has less than [`MIN_READ_SPACE`] free. Twilio frames
/// are ~400 bytes and deltas a few KiB, so 2 KiB reads lose nothing (a bigger message takes a
/// second read). Buffers start empty and grow to what the call's messages need (amortised
/// doubling), then stay there: a call's buffers rest at its largest message, not at a guess
/// (4 KiB initial capacities on five buffers were ~20 KiB of every call's ~70 KiB), and shrink
/// back above [`SHRINK_ABOVE`] once empty.
const READ_CHUNK: usize = 2 * 1024;

/// Free input space below which a read first reserves [`READ_CHUNK`] more.
const MIN_READ_SPACE: usize = 512;

/// An empty input or output buffer with more capacity than this (a burst, a big message, a slow
/// peer up to [`HIGH_WATER_BYTES`]) is shrunk back to [`READ_CHUNK`], so a call's memory returns to
/// its resting size. Above every regular frame size, so the hot path never reallocates.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Shrinks an emptied buffer that grew past [`SHRINK_ABOVE`].
fn shrink_if_idle(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
        buf.shrink_to(READ_CHUNK);
    }
}

/// Accepts connections while `phase` is [`Phase::Running`]; when it turns
/// [`Phase::Draining`], closes the listener and lets the connections finish; when it turns
/// [`Phase::Closed`] (or every connection has finished), drops what is left (closing its sockets)
/// and returns.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    connector: Arc<Connector>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut listener = Some(listener);
    let mut tasks = JoinSet::new();
    let pool_cfg = PoolConfig::from_config(app.config());
    let pool = pool_cfg.map(SharedPool::new);
    if let (Some(pool), Some(pc)) = (&pool, pool_cfg) {
        tokio::spawn(maintain(
            Arc::clone(pool),
            Arc::clone(&connector),
            pc.warm_timeout,
            phase.clone(),
        ));
    }
    let dial = PooledDial::new(connector, pool);
    loop {
        tokio::select! {
            accepted = async { listener.as_ref().expect("guarded").accept().await }, if listener.is_some() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (app, dial) = (Arc::clone(&app), dial.clone());
                    tasks.spawn(async move { connection(stream, peer, app, dial).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                if listener.is_none() && tasks.is_empty() {
                    break;
                }
            }
            now = next_phase(&mut phase) => {
                match now {
                    Phase::Running => {}
                    Phase::Draining => {
                        listener = None;
                        if tasks.is_empty() {
                            break;
                        }
                    }
                    Phase::Closed => break,
                }
            }
        }
    }
    tasks.shutdown().await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One HTTP connection: requests with keep-alive, until an upgrade hands it to a call whose
/// OpenAI leg `dialer` opens. Shared by both drivers.
pub(crate) async fn connection<S: Transport, D: Dial>(
    mut stream: S,
    peer: SocketAddr,
    app: Arc<App>,
    dialer: D,
) {
    let limits = Limits::default();
    let read_timeout = app.config().http_read_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buf, &limits, read_timeout).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(resp) => {
                tracing::warn!(%peer, status = resp.status, "bad request: {}", String::from_utf8_lossy(&resp.body).trim_end());
                metrics::http_request("", resp.status);
                write_response(&mut out, &resp, false);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, send_all(&mut stream, &out)).await;
                return;
            }
        };
        let keep_alive = request.keep_alive();
        match route(&app, &request).await {
            Routed::Respond(resp) => {
                tracing::debug!(%peer, method = %request.method, path = %request.path, status = resp.status, "http");
                metrics::http_request(&request.path, resp.status);
                write_response(&mut out, &resp, keep_alive);
                if send_all(&mut stream, &out).await.is_err() || !keep_alive {
                    return;
                }
            }
            Routed::Upgrade(grant) => {
                metrics::http_request(&request.path, 101);
                out.clear();
                ws::write_upgrade_response(&mut out, &grant.accept);
                if send_all(&mut stream, &out).await.is_err() {
                    return;
                }
                let leftover = std::mem::take(&mut buf);
                // The response buffer is not needed by the call; freed, not kept for its life.
                drop(std::mem::take(&mut out));
                run_call(stream, leftover, grant, app, dialer).await;
                return;
            }
        }
    }
}

/// Writes all of `out` and flushes (a transport that queues writes sends them on flush).
async fn send_all<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await
}

/// Routes a request. Admin requests (store reads and writes, fsyncs, listings) run on tokio's
/// blocking pool, so they never hold up the IO thread that also moves calls' audio; everything
/// else is answered here, at once.
async fn route(app: &Arc<App>, request: &Request) -> Routed {
    if !request.path.starts_with(crate::front::admin::PREFIX) {
        return app.route(request, unix_now());
    }
    // A copy goes to the blocking thread (admin requests are rare and at most 64 KiB).
    let (app, copy) = (Arc::clone(app), request.clone());
    match tokio::task::spawn_blocking(move || app.route(&copy, unix_now())).await {
        Ok(routed) => routed,
        Err(e) => {
            tracing::error!(path = %request.path, "admin request failed: {e}");
            Routed::Respond(error_response(500, "internal error"))
        }
    }
}

fn write_response(out: &mut Vec<u8>, resp: &Response, keep_alive: bool) {
    out.clear();
    let headers: Vec<(&str, &str)> = resp.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http::write_response(
        out,
        resp.status,
        resp.content_type,
        &resp.body,
        keep_alive,
        &headers,
    );
}

/// Reads one complete request. `Ok(None)`: the peer closed or idled out between requests.
/// `Err`: the answer to send before closing (400/408/413/414/431/…).
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &Limits,
    read_timeout: Duration,
) -> Result<Option<http::Request>, Response> {
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        match http::parse_request(buf, limits) {
            Ok(Parsed::Complete { request, consumed }) => {
                buf.drain(..consumed);
                return Ok(Some(request));
            }
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(error_response(e.status(), &e.to_string())),
        }
        // The read timeout runs from the first byte of a request; between requests, the idle one.
        let limit = if buf.is_empty() {
            tokio::time::Instant::now() + IDLE_TIMEOUT
        } else {
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + read_timeout)
        };
        match tokio::time::timeout_at(limit, read_some(Some(stream), buf)).await {
            Err(_) if buf.is_empty() => return Ok(None),
            Err(_) => return Err(error_response(408, "request not completed in time")),
            Ok(Ok(0)) => {
                if !buf.is_empty() {
                    tracing::warn!(bytes = buf.len(), "peer closed in the middle of a request");
                }
                return Ok(None);
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Ok(None),
        }
    }
}

fn error_response(status: u16, msg: &str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: format!("{msg}\n").into_bytes(),
        headers: vec![],
    }
}

/// One leg's socket halves and buffers.
struct LegIo<R, W> {
    rd: R,
    wr: W,
    input: Vec<u8>,
    output: Vec<u8>,
    decoder: Decoder,
    encoder: Encoder,
    /// TLS may hold written bytes until flushed.
    needs_flush: bool,
    /// Last time a write made progress (or the buffer was empty).
    last_progress: Instant,
    /// Queued output with no progress for this long: the peer is gone.
    stall_timeout: Duration,
    /// We sent a close frame (nothing more is sent).
    closing: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> LegIo<R, W> {
    fn new(
        rd: R,
        wr: W,
        input: Vec<u8>,
        role: Role,
        max_message: usize,
        stall_timeout: Duration,
    ) -> Self {
        LegIo {
            rd,
            wr,
            input,
            output: Vec::new(),
            decoder: Decoder::new(role, max_message),
            encoder: Encoder::new(role),
            needs_flush: false,
            last_progress: Instant::now(),
            stall_timeout,
            closing: false,
        }
    }

    /// Restarts the stall clock while nothing is queued: a leg that had nothing to send for a
    /// while is not "stalled" the moment it has something again. Called before output is queued.
    fn note_idle(&mut self, now: Instant) {
        if self.output.is_empty() {
            self.last_progress = now;
        }
    }

    /// When the leg counts as stalled if its queued output makes no progress: `None` while
    /// nothing is queued.
    fn stall_deadline(&self) -> Option<Instant> {
        (!self.output.is_empty()).then(|| self.last_progress + self.stall_timeout)
    }

    fn stalled(&self, now: Instant) -> bool {
        self.stall_deadline().is_some_and(|d| now > d)
    }

    /// Writes out everything buffered and shuts the write side, within [`CLOSE_TIMEOUT`]; with
    /// `drain`, then reads (and discards) until the peer closes, within the same time. The
    /// draining matters where the last bytes we wrote must arrive: closing a socket with unread
    /// input makes the kernel answer with a reset, which throws away whatever the peer had not
    /// taken yet (the load test lost the last caller frames of calls this way when the OpenAI
    /// side was slow to read).
    async fn finish(&mut self, drain: bool) {
        let (wr, rd) = (&mut self.wr, &mut self.rd);
        let (out, sink) = (&self.output, &mut self.input);
        // The drained bytes go through the leg's own input buffer: a stack array here would sit
        // in every call's task for the call's whole life (an async fn's state is as large as
        // its largest await point).
        sink.clear();
        sink.reserve(MIN_READ_SPACE);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            wr.write_all(out).await?;
            wr.flush().await?;
            wr.shutdown().await?;
            if drain {
                loop {
                    sink.clear();
                    if rd.read_buf(sink).await? == 0 {
                        break;
                    }
                }
            }
            Ok::<(), io::Error>(())
        })
        .await;
        self.output.clear();
    }
}

async fn read_some<R: AsyncRead + Unpin>(
    rd: Option<&mut R>,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    match rd {
        Some(rd) => {
            if buf.capacity() - buf.len() < MIN_READ_SPACE {
                buf.reserve(READ_CHUNK);
            }
            rd.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

/// Awaits the pending OpenAI connect, if any; never resolves once it is gone.
async fn connect_some<F: std::future::Future + Unpin>(connect: &mut Option<F>) -> F::Output {
    match connect.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// What a write future achieved.
enum Progress {
    /// Bytes taken from the output buffer, and whether they were flushed at once too (else the
    /// leg needs a flush: TLS holding records, or an io_uring stream with a send in flight).
    Wrote { n: usize, flushed: bool },
    /// Buffered TLS bytes were flushed.
    Flushed,
}

/// Writes pending output, or flushes when only a flush is pending; never resolves otherwise.
/// One future per leg, so the writer is borrowed once.
async fn write_leg<W: AsyncWrite + Unpin>(
    wr: Option<&mut W>,
    buf: &[u8],
    needs_flush: bool,
) -> io::Result<Progress> {
    match wr {
        Some(wr) if !buf.is_empty() => match wr.write(buf).await? {
            0 => Err(io::ErrorKind::WriteZero.into()),
            n => {
                // One flush attempt right away: it usually completes at once (a plain socket;
                // TLS with room in the socket), which saves the call loop a turn per write.
                let flushed = matches!(wr.flush().now_or_never(), Some(Ok(())));
                Ok(Progress::Wrote { n, flushed })
            }
        },
        Some(wr) if needs_flush => wr.flush().await.map(|()| Progress::Flushed),
        _ => std::future::pending().await,
    }
}

/// What reading a leg's input produced.
enum LegInput {
    /// More may come.
    Open,
    /// The peer closed (close frame or EOF), with a description.
    Closed(String),
}

/// Decodes every complete message in `leg.input` and feeds it to the call.
fn decode_input<R, W>(
    leg: &mut LegIo<R, W>,
    which: Leg,
    call: &mut Call,
    now: Instant,
) -> LegInput {
    let mut start = 0;
    let result = loop {
        let decoded = match leg.decoder.decode(&mut leg.input[start..]) {
            Ok(d) => d,
            Err(e) => {
                let code = e.close_code();
                if !leg.closing {
                    leg.encoder.close(&mut leg.output, code, &e.to_string());
                    leg.closing = true;
                }
                break LegInput::Closed(format!("websocket error ({code}): {e}"));
            }
        };
        let consumed = decoded.consumed;
        match decoded.message {
            None if consumed == 0 => break LegInput::Open,
            None => {}
            Some(Message::Text(text)) => match which {
                Leg::Twilio => call.handle_twilio_frame(now, text),
                Leg::OpenAi => call.handle_openai_frame(now, text),
            },
            Some(Message::Binary(_)) => match which {
                Leg::Twilio => call.handle_twilio_binary(now),
                Leg::OpenAi => call.handle_openai_binary(now),
            },
            Some(Message::Ping(payload)) if !leg.closing => {
                leg.encoder.pong(&mut leg.output, payload)
            }
            Some(Message::Ping(_)) => {}
            Some(Message::Pong(_)) => {}
            Some(Message::Close { code, reason }) => {
                let why = format!(
                    "close {} {reason:?}",
                    code.map_or("(no code)".to_owned(), |c| c.to_string())
                );
                if !leg.closing {
                    leg.encoder
                        .close(&mut leg.output, code.map_or(1000, |_| 1000), "");
                    leg.closing = true;
                }
                start += consumed;
                break LegInput::Closed(why);
            }
        }
        start += consumed;
    };
    leg.input.drain(..start);
    shrink_if_idle(&mut leg.input);
    result
}

/// Moves what the call wants to send into the legs' output buffers.
fn pump_transmits<TR, TW, OR, OW>(
    call: &mut Call,
    scratch: &mut Vec<u8>,
    tw: &mut LegIo<TR, TW>,
    oa: Option<&mut LegIo<OR, OW>>,
) {
    let mut oa = oa;
    while let Some(tx) = call.poll_transmit(scratch) {
        let payload = &scratch[..tx.len];
        match tx.leg {
            Leg::Twilio if !tw.closing => tw.encoder.text(&mut tw.output, payload),
            Leg::OpenAi => match oa.as_deref_mut() {
                Some(oa) if !oa.closing => oa.encoder.text(&mut oa.output, payload),
                _ => tracing::debug!(
                    call_sid = call.call_sid(),
                    "dropped a frame for a closed openai leg"
                ),
            },
            Leg::Twilio => {}
        }
    }
}

/// The OpenAI leg over a dialer's connection.
type OpenAiLeg<C> = LegIo<tokio::io::ReadHalf<C>, tokio::io::WriteHalf<C>>;

/// Runs one call: Twilio's socket (already upgraded) and a new OpenAI connection.
async fn run_call<S: Transport, D: Dial>(
    stream: S,
    leftover: Vec<u8>,
    grant: UpgradeGrant,
    app: Arc<App>,
    dialer: D,
) {
    let cfg = app.config();
    let _active = app.call_started();
    let started = Instant::now();
    let mut call_cfg = CallConfig::new(&cfg.openai_model, Arc::clone(&cfg.agent), &grant.call_sid);
    call_cfg.expected_start_token = Some(grant.start_token.clone());
    call_cfg.session_timeout = cfg.openai_session_timeout;
    call_cfg.twilio_idle_timeout = cfg.twilio_idle_timeout;
    call_cfg.log_event_types = Arc::clone(&cfg.log_event_types);
    // The store records the call and hands it its agent at `start`.
    let mut recorder = CallRecorder::new(app.store(), &grant.call_sid);
    call_cfg.wait_for_agent = recorder.resolves_agent();
    let mut call = Call::new(call_cfg, started);
    let mut meter = CallMeter::new(started);
    tracing::info!(call_sid = %grant.call_sid, "media stream accepted");

    let (tw_rd, tw_wr) = stream.into_halves();
    let mut tw = LegIo::new(
        tw_rd,
        tw_wr,
        leftover,
        Role::Server,
        MAX_TWILIO_MESSAGE_BYTES,
        cfg.write_stall_timeout,
    );
    let mut oa: Option<OpenAiLeg<D::Conn>> = None;
    // Boxed, and dropped once it resolves: inline, the connect future (TCP connect, TLS
    // handshake state, its timeout) stayed in the call's task for the whole call.
    let mut connect = Some(Box::pin(dialer.dial()));
    let mut scratch: Vec<u8> = Vec::new();
    let mut tw_open = true;
    let mut oa_open = false;
    // One timer per call, moved only when the deadline comes earlier than the armed one or the
    // armed one has passed. The write-stall deadline moves forward on every write, so a fresh
    // `sleep_until` per loop turn cost a timer-wheel insert and removal per frame (~2.5% of the
    // proxy's CPU in perf). Firing early is harmless: `handle_timeout` only acts on deadlines
    // that have passed, and the next turn re-arms at the real deadline.
    let mut armed = started + Duration::from_secs(3600);
    let timer = tokio::time::sleep_until(armed.into());
    tokio::pin!(timer);

    // Bytes that arrived with the upgrade request.
    if !tw.input.is_empty() {
        meter.on_read(Leg::Twilio, tw.input.len(), started);
        if let LegInput::Closed(why) = decode_input(&mut tw, Leg::Twilio, &mut call, Instant::now())
        {
            tracing::info!(call_sid = %grant.call_sid, "twilio closed: {why}");
            tw_open = false;
            call.handle_twilio_closed(Instant::now());
        }
    }

    loop {
        // Before anything is queued this turn: a leg with an empty buffer is not behind.
        let turn = Instant::now();
        tw.note_idle(turn);
        if let Some(o) = oa.as_mut() {
            o.note_idle(turn);
        }
        pump_transmits(&mut call, &mut scratch, &mut tw, oa.as_mut());
        meter.on_queued(
            call.stats(),
            tw.output.len(),
            oa.as_ref().map_or(0, |o| o.output.len()),
        );
        dispatch_events(&mut call, &mut meter, &mut recorder, &app, &grant);
        if call.has_pending_transmit() {
            // The agent handed over at `start` releases session.update.
            pump_transmits(&mut call, &mut scratch, &mut tw, oa.as_mut());
        }
        if call.is_ended() {
            break;
        }
        // Nothing above waits: the turn's clock reading still stands.
        let now = turn;
        meter.tick(now, call.outstanding_marks());
        if tw.stalled(now) || oa.as_ref().is_some_and(|o| o.stalled(now)) {
            let leg = if tw.stalled(now) {
                Leg::Twilio
            } else {
                Leg::OpenAi
            };
            call.hang_up(
                now,
                EndReason::PeerStalled {
                    leg,
                    after: cfg.write_stall_timeout,
                },
            );
            continue;
        }
        let deadline = [
            call.poll_timeout(),
            tw.stall_deadline(),
            oa.as_ref().and_then(LegIo::stall_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(3600));
        if deadline < armed || armed <= now {
            timer.as_mut().reset(deadline.into());
            armed = deadline;
        }
        let tw_can_read = tw_open
            && oa
                .as_ref()
                .is_none_or(|o| o.output.len() < HIGH_WATER_BYTES);
        let oa_can_read = oa_open && tw.output.len() < HIGH_WATER_BYTES;
        let (oa_rd, oa_wr, oa_in, oa_out, oa_flush) = match oa.as_mut() {
            Some(o) => (
                Some(&mut o.rd),
                Some(&mut o.wr),
                &mut o.input,
                &o.output[..],
                o.needs_flush,
            ),
            None => (None, None, &mut scratch, &[][..], false),
        };
        tokio::select! {
            r = read_some(tw_can_read.then_some(&mut tw.rd), &mut tw.input) => {
                let now = Instant::now();
                match r {
                    Ok(0) | Err(_) => {
                        tw_open = false;
                        call.handle_twilio_closed(now);
                    }
                    Ok(n) => {
                        meter.on_read(Leg::Twilio, n, now);
                        if let LegInput::Closed(why) = decode_input(&mut tw, Leg::Twilio, &mut call, now) {
                            tracing::info!(call_sid = %grant.call_sid, "twilio closed: {why}");
                            tw_open = false;
                            call.handle_twilio_closed(now);
                        }
                    }
                }
            }
            r = read_some(oa_rd.filter(|_| oa_can_read), oa_in) => {
                let now = Instant::now();
                let oa_leg = oa.as_mut().expect("reading implies connected");
                match r {
                    Ok(0) | Err(_) => {
                        oa_open = false;
                        let why = match r { Err(e) => format!("io error: {e}"), _ => "connection closed without a close frame".to_owned() };
                        call.handle_openai_closed(now, &why);
                    }
                    Ok(n) => {
                        meter.on_read(Leg::OpenAi, n, now);
                        if let LegInput::Closed(why) = decode_input(oa_leg, Leg::OpenAi, &mut call, now) {
                            oa_open = false;
                            call.handle_openai_closed(now, &why);
                        }
                    }
                }
            }
            r = write_leg(Some(&mut tw.wr), &tw.output, tw.needs_flush) => match r {
                Ok(Progress::Wrote { n, flushed }) => {
                    tw.output.drain(..n);
                    shrink_if_idle(&mut tw.output);
                    tw.last_progress = Instant::now();
                    meter.on_written(Leg::Twilio, n, tw.last_progress);
                    tw.needs_flush = !flushed;
                }
                Ok(Progress::Flushed) => tw.needs_flush = false,
                Err(_) => {
                    tw_open = false;
                    tw.output.clear();
                    call.handle_twilio_closed(Instant::now());
                }
            },
            r = write_leg(oa_wr, oa_out, oa_flush) => {
                let oa_leg = oa.as_mut().expect("writing implies connected");
                match r {
                    Ok(Progress::Wrote { n, flushed }) => {
                        oa_leg.output.drain(..n);
                        shrink_if_idle(&mut oa_leg.output);
                        oa_leg.last_progress = Instant::now();
                        meter.on_written(Leg::OpenAi, n, oa_leg.last_progress);
                        oa_leg.needs_flush = !flushed;
                    }
                    Ok(Progress::Flushed) => oa_leg.needs_flush = false,
                    Err(e) => {
                        oa_open = false;
                        oa_leg.output.clear();
                        call.handle_openai_closed(Instant::now(), &format!("write failed: {e}"));
                    }
                }
            }
            r = connect_some(&mut connect) => {
                connect = None;
                let now = Instant::now();
                meter.on_openai_connect(now.duration_since(started), r.is_ok());
                match r {
                    Ok((conn, rest)) => {
                        tracing::debug!(call_sid = %grant.call_sid, ms = now.duration_since(started).as_millis() as u64, "openai connected");
                        let (rd, wr) = tokio::io::split(conn);
                        let mut leg = LegIo::new(rd, wr, rest, Role::Client, MAX_OPENAI_MESSAGE_BYTES, cfg.write_stall_timeout);
                        oa_open = true;
                        if !leg.input.is_empty() {
                            meter.on_read(Leg::OpenAi, leg.input.len(), now);
                            if let LegInput::Closed(why) = decode_input(&mut leg, Leg::OpenAi, &mut call, now) {
                                oa_open = false;
                                call.handle_openai_closed(now, &why);
                            }
                        }
                        oa = Some(leg);
                    }
                    Err(e) => call.handle_openai_connect_failed(now, &e.to_string()),
                }
            }
            _ = &mut timer => {
                call.handle_timeout(Instant::now());
            }
        }
    }

    // The call is over: say goodbye on both legs and flush, bounded in time.
    pump_transmits(&mut call, &mut scratch, &mut tw, oa.as_mut());
    dispatch_events(&mut call, &mut meter, &mut recorder, &app, &grant);
    if let Some(o) = oa.as_mut() {
        if !o.closing {
            o.encoder.close(&mut o.output, 1000, "call ended");
            o.closing = true;
        }
    }
    if tw_open && !tw.closing {
        // A normal close: Twilio finishes <Connect> and follows the <Redirect>.
        tw.encoder.close(&mut tw.output, 1000, "call ended");
        tw.closing = true;
    }
    // Only the OpenAI leg is drained: the caller's last audio must reach it (see `finish`).
    match oa.as_mut() {
        Some(o) => {
            tokio::join!(tw.finish(false), o.finish(true));
        }
        None => tw.finish(false).await,
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
    // The webhook's breaker learns from every AI leg that got ready or failed to.
    match ev {
        CallEvent::Ended { reason } if reason.is_ai_failure() => {
            if reason.is_openai_unreachable() {
                app.note_openai_outcome(false);
            }
            app.record_ai_failure(&grant.call_sid)
        }
        CallEvent::SessionReady { setup, .. } => {
            app.note_openai_outcome(true);
            tracing::debug!(call_sid = %grant.call_sid, setup_ms = setup.as_millis() as u64, "session ready");
        }
        CallEvent::CallerTranscript { text, .. } => {
            tracing::info!(call_sid = %grant.call_sid, "caller: {text}")
        }
        CallEvent::AssistantTranscript { text, .. } => {
            tracing::info!(call_sid = %grant.call_sid, "assistant: {text}")
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

    fn idle_leg() -> LegIo<tokio::io::Empty, tokio::io::Sink> {
        LegIo::new(
            tokio::io::empty(),
            tokio::io::sink(),
            Vec::new(),
            Role::Server,
            MAX_TWILIO_MESSAGE_BYTES,
            WRITE_STALL_TIMEOUT,
        )
    }

    #[test]
    fn a_leg_with_nothing_to_send_for_a_while_is_not_stalled_when_output_comes() {
        // The last write was long ago (the bot was silent while the caller spoke).
        let mut leg = idle_leg();
        let now = Instant::now() + WRITE_STALL_TIMEOUT * 2;
        // A loop turn: the stall clock restarts, then a frame is queued.
        leg.note_idle(now);
        leg.encoder.text(&mut leg.output, b"{}");
        assert!(!leg.stalled(now));
        assert!(
            leg.last_progress + WRITE_STALL_TIMEOUT > now,
            "no deadline in the past"
        );
        // Still queued, no progress for longer than the limit: stalled.
        let later = now + WRITE_STALL_TIMEOUT + Duration::from_millis(1);
        leg.note_idle(later);
        assert!(leg.stalled(later));
    }

    #[test]
    fn only_a_leg_with_queued_output_has_a_stall_deadline() {
        let mut leg = idle_leg();
        let now = Instant::now();
        leg.note_idle(now);
        // Nothing queued: no deadline, so an idle call sets no stall timer at all.
        assert_eq!(leg.stall_deadline(), None);
        assert!(!leg.stalled(now + WRITE_STALL_TIMEOUT * 10));
        leg.encoder.text(&mut leg.output, b"{}");
        assert_eq!(leg.stall_deadline(), Some(now + WRITE_STALL_TIMEOUT));
        assert!(!leg.stalled(now + WRITE_STALL_TIMEOUT));
        assert!(leg.stalled(now + WRITE_STALL_TIMEOUT + Duration::from_millis(1)));
    }
}
