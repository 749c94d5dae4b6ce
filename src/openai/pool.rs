//! Pre-warmed OpenAI connections: TCP, TLS and the WebSocket handshake done and `session.created`
//! received, so a new call only sends `session.update`.
//!
//! ```text
//!  maintain() ──dial + wait for session.created──▶ Pool.idle ──checkout──▶ PooledDial::dial ──▶ call
//!      ▲  refill to target(rate)       retire idle > max age, discard dead ones ◀── tick (1 s)
//! ```
//!
//! - [`Pool`] is the sans-IO part: which connections to keep, how many to warm, when to retire
//!   one. It takes the time as an argument, so it is tested with a fake clock.
//! - [`warm`] opens one connection and waits for its `session.created`, which stays unread in the
//!   connection's leftover bytes: the call's core reads it as if it had just arrived.
//! - [`maintain`] keeps a pool filled in the background; [`PooledDial`] hands pooled connections
//!   to calls (and dials directly when the pool is empty). Both are generic over the driver's
//!   [`Dial`], so each io_uring worker keeps its own pool on its own thread and the epoll driver one
//!   shared pool.
//!
//! Sizing follows the recent call arrival rate: enough connections for the calls expected while
//! one connection warms (rate × warm time, plus a second of margin), at least one, at most
//! `OPENAI_POOL_MAX` (0 disables the pool). The rate is the higher of the last 30 s's and the
//! last 2 s's, so a burst raises the pool within two seconds and a lull lowers it over thirty.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, Notify};

use crate::lifecycle::{next_phase, Phase};
use crate::openai::client::{ConnectError, Dial};
use crate::openai::health::Breaker;
use callbridge_core::openai::events::{ServerEvent, ServerEventParser};
use callbridge_core::wire::ws::{Decoder, Encoder, Message, Role};

/// How often idle connections are checked for age and death.
pub const TICK: Duration = Duration::from_secs(1);

/// The window over which the call arrival rate is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);

/// The short window whose rate counts when it is higher (a burst): averaged over
/// [`RATE_WINDOW`] alone, 1,000 calls arriving within 5 s read as 33 calls/s, and the pool
/// stayed at a tenth of what the burst needed.
pub const BURST_WINDOW: Duration = Duration::from_secs(2);

/// Added to the warm time when sizing: calls arriving while a replacement warms.
const SIZING_MARGIN: Duration = Duration::from_secs(1);

/// Largest first message (`session.created`) accepted while warming.
const MAX_FIRST_MESSAGE: usize = 256 * 1024;

/// Settings of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most idle connections (0: no pool).
    pub max: usize,
    /// An idle connection older than this is closed (before the server would close it).
    pub max_idle: Duration,
    /// How long warming (connect + `session.created`) may take.
    pub warm_timeout: Duration,
}

impl PoolConfig {
    /// The pool settings of `cfg`; `None` when the pool is off (`OPENAI_POOL_MAX=0`).
    pub fn from_config(cfg: &crate::config::Config) -> Option<PoolConfig> {
        // No pool when calls never use OpenAI (`USE_OPENAI_REALTIME=false`).
        (cfg.openai_pool_max > 0 && cfg.use_openai_realtime).then(|| PoolConfig {
            max: cfg.openai_pool_max,
            max_idle: cfg.openai_pool_max_idle,
            warm_timeout: cfg.openai_connect_timeout + cfg.openai_session_timeout,
        })
    }
}

/// A ready connection: the stream and the unread bytes that arrived with it (the
/// `session.created` frame, and anything after it).
pub struct Warm<C> {
    /// The connection.
    pub conn: C,
    /// Bytes received and not yet given to a call; starts with `session.created`.
    pub rest: Vec<u8>,
    /// When `session.created` arrived.
    pub since: Instant,
}

/// Why warming a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarmError {
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(#[from] ConnectError),
    /// The connection closed or failed before `session.created`.
    #[error("closed before session.created: {0}")]
    Closed(String),
    /// The first message was not `session.created`.
    #[error("first message was not session.created: {0}")]
    Unexpected(String),
    /// No `session.created` in time.
    #[error("no session.created within {0:?}")]
    Timeout(Duration),
}

/// What the first complete message in a buffer of server frames is.
#[derive(Debug, PartialEq, Eq)]
enum First {
    /// Not complete yet.
    Incomplete,
    /// `session.created`.
    SessionCreated,
    /// Anything else (a close, an error event, …), described.
    Other(String),
}

/// Looks at the first message of `bytes` (server frames, unmasked) without consuming them.
fn first_message(bytes: &[u8]) -> First {
    let mut copy = bytes.to_vec();
    let mut decoder = Decoder::new(Role::Client, MAX_FIRST_MESSAGE);
    let mut start = 0;
    loop {
        let decoded = match decoder.decode(&mut copy[start..]) {
            Ok(d) => d,
            Err(e) => return First::Other(format!("websocket error: {e}")),
        };
        if decoded.needs_more() {
            return First::Incomplete;
        }
        start += decoded.consumed;
        match decoded.message {
            None => continue,
            Some(Message::Text(text)) => {
                return match ServerEventParser::new().parse(text) {
                    Ok(ServerEvent::SessionCreated { .. }) => First::SessionCreated,
                    Ok(ServerEvent::Error(_)) => First::Other("error event".into()),
                    Ok(_) => First::Other("another event".into()),
                    Err(e) => First::Other(format!("unparsable event: {e}")),
                }
            }
            Some(Message::Close { code, .. }) => return First::Other(format!("close {code:?}")),
            Some(Message::Ping(_) | Message::Pong(_)) => continue,
            Some(Message::Binary(_)) => return First::Other("binary frame".into()),
        }
    }
}

/// Whether the bytes after the first message of `bytes` contain a close frame (the server closed
/// an idle connection).
fn holds_close(bytes: &[u8]) -> bool {
    let mut copy = bytes.to_vec();
    let mut decoder = Decoder::new(Role::Client, usize::MAX);
    let mut start = 0;
    while start < copy.len() {
        match decoder.decode(&mut copy[start..]) {
            Err(_) => return true,
            Ok(d) if d.needs_more() => return false,
            Ok(d) => {
                if matches!(d.message, Some(Message::Close { .. })) {
                    return true;
                }
                start += d.consumed;
            }
        }
    }
    false
}

/// Opens one connection with `dialer` and waits for its `session.created`, within `timeout`.
pub async fn warm<D: Dial>(dialer: &D, timeout: Duration) -> Result<Warm<D::Conn>, WarmError> {
    let work = async {
        let (mut conn, mut rest) = dialer.dial().await?;
        loop {
            match first_message(&rest) {
                First::SessionCreated => {
                    return Ok(Warm {
                        conn,
                        rest,
                        since: Instant::now(),
                    })
                }
                First::Other(what) => return Err(WarmError::Unexpected(what)),
                First::Incomplete if rest.len() > MAX_FIRST_MESSAGE => {
                    return Err(WarmError::Unexpected("first message too large".into()))
                }
                First::Incomplete => {}
            }
            rest.reserve(4096);
            match conn.read_buf(&mut rest).await {
                Ok(0) => return Err(WarmError::Closed("eof".into())),
                Ok(_) => {}
                Err(e) => return Err(WarmError::Closed(e.to_string())),
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(WarmError::Timeout(timeout)),
    }
}

/// Whether an idle connection is still usable, without waiting: reads what is there (appending
/// it to `rest`); EOF, an error or a close frame means dead.
fn still_alive<C: AsyncRead + Unpin>(w: &mut Warm<C>) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut chunk = [0u8; 1024];
    loop {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut w.conn).poll_read(&mut cx, &mut buf) {
            Poll::Pending => break,
            Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return false,
            Poll::Ready(Ok(())) => {
                if w.rest.len() > MAX_FIRST_MESSAGE {
                    return false;
                }
                w.rest.extend_from_slice(buf.filled());
            }
        }
    }
    !holds_close(&w.rest)
}

/// Closes a retired connection the polite way: a close frame (1000), then FIN, within 1 s.
async fn close_politely<C: AsyncWrite + Unpin>(mut w: Warm<C>) {
    let mut out = Vec::with_capacity(16);
    Encoder::new(Role::Client).close(&mut out, 1000, "idle");
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        w.conn.write_all(&out).await?;
        w.conn.shutdown().await
    })
    .await;
}

/// The sans-IO pool: idle connections (oldest first), recent arrivals, connections warming.
pub struct Pool<C> {
    cfg: PoolConfig,
    idle: VecDeque<Warm<C>>,
    arrivals: VecDeque<Instant>,
    warming: usize,
    /// Smoothed time to warm one connection.
    warm_time: Duration,
    /// Connections discarded because they died while idle.
    pub discarded_dead: u64,
    /// Connections retired for age.
    pub retired: u64,
}

impl<C> Pool<C> {
    /// An empty pool.
    pub fn new(cfg: PoolConfig) -> Self {
        Pool {
            cfg,
            idle: VecDeque::new(),
            arrivals: VecDeque::new(),
            warming: 0,
            warm_time: Duration::from_millis(500),
            discarded_dead: 0,
            retired: 0,
        }
    }

    /// Idle connections held.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    /// Connections being warmed.
    pub fn warming(&self) -> usize {
        self.warming
    }

    /// A call arrived at `now`.
    pub fn note_arrival(&mut self, now: Instant) {
        self.arrivals.push_back(now);
        self.forget_old_arrivals(now);
    }

    fn forget_old_arrivals(&mut self, now: Instant) {
        while let Some(&t) = self.arrivals.front() {
            if now.saturating_duration_since(t) > RATE_WINDOW {
                self.arrivals.pop_front();
            } else {
                break;
            }
        }
    }

    /// How many connections the pool wants (idle plus warming) at `now`: the calls expected
    /// while one connection warms, at least 1, at most `max`; 0 when disabled.
    pub fn target(&mut self, now: Instant) -> usize {
        if self.cfg.max == 0 {
            return 0;
        }
        self.forget_old_arrivals(now);
        let recent = self
            .arrivals
            .iter()
            .rev()
            .take_while(|&&t| now.saturating_duration_since(t) < BURST_WINDOW)
            .count();
        let rate = (self.arrivals.len() as f64 / RATE_WINDOW.as_secs_f64())
            .max(recent as f64 / BURST_WINDOW.as_secs_f64());
        let expected = rate * (self.warm_time + SIZING_MARGIN).as_secs_f64();
        (expected.ceil() as usize).clamp(1, self.cfg.max)
    }

    /// How many connections to start warming now (counted as warming from here on).
    pub fn start_warming(&mut self, now: Instant) -> usize {
        let want = self
            .target(now)
            .saturating_sub(self.idle.len() + self.warming);
        self.warming += want;
        want
    }

    /// A warming attempt ended after `took`; a ready connection joins the idle ones (unless the
    /// pool is over its target, e.g. after the rate fell).
    pub fn warmed(&mut self, now: Instant, outcome: Option<Warm<C>>, took: Duration) {
        self.warming = self.warming.saturating_sub(1);
        if let Some(w) = outcome {
            self.warm_time = (self.warm_time * 3 + took) / 4;
            if self.idle.len() < self.target(now) {
                self.idle.push_back(w);
            }
        }
    }

    /// Takes the youngest idle connection (the most life left); `None` when empty. Counts the
    /// arrival either way.
    pub fn checkout(&mut self, now: Instant) -> Option<Warm<C>> {
        self.checkout_live(now, |_| true)
    }

    /// Like [`Pool::checkout`], but skips connections `alive` says died while idle: they are
    /// dropped and counted in `discarded_dead`. The drivers' path ([`PooledDial`]).
    pub fn checkout_live(
        &mut self,
        now: Instant,
        mut alive: impl FnMut(&mut Warm<C>) -> bool,
    ) -> Option<Warm<C>> {
        self.note_arrival(now);
        while let Some(mut w) = self.idle.pop_back() {
            if alive(&mut w) {
                return Some(w);
            }
            self.discarded_dead += 1;
            tracing::info!("openai pool: discarded a connection that died while idle");
        }
        None
    }

    /// Removes and returns the connections idle for longer than `max_idle`.
    pub fn retire(&mut self, now: Instant) -> Vec<Warm<C>> {
        let mut old = Vec::new();
        while let Some(w) = self.idle.front() {
            if now.saturating_duration_since(w.since) >= self.cfg.max_idle {
                old.extend(self.idle.pop_front());
            } else {
                break;
            }
        }
        self.retired += old.len() as u64;
        old
    }

    /// Drops the idle connections `alive` says are dead; returns how many.
    pub fn discard_dead(&mut self, mut alive: impl FnMut(&mut Warm<C>) -> bool) -> usize {
        let before = self.idle.len();
        self.idle.retain_mut(|w| alive(w));
        let gone = before - self.idle.len();
        self.discarded_dead += gone as u64;
        gone
    }
}

/// A pool shared by the maintainer and the calls of one worker (or of the epoll driver), with
/// the doorbell that wakes the maintainer after a checkout. The lock is taken at call setup and
/// on the maintainer's tick, never on the audio path.
pub struct SharedPool<C> {
    pool: Mutex<Pool<C>>,
    doorbell: Notify,
}

impl<C> SharedPool<C> {
    /// A shared empty pool.
    pub fn new(cfg: PoolConfig) -> Arc<Self> {
        Arc::new(SharedPool {
            pool: Mutex::new(Pool::new(cfg)),
            doorbell: Notify::new(),
        })
    }

    /// The pool, locked.
    pub fn lock(&self) -> MutexGuard<'_, Pool<C>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps `pool` filled with connections from `dialer` until `phase` leaves
/// [`Phase::Running`]; then drops the idle ones.
pub async fn maintain<D: Dial>(
    pool: Arc<SharedPool<D::Conn>>,
    dialer: Arc<D>,
    warm_timeout: Duration,
    breaker: Breaker,
    mut phase: watch::Receiver<Phase>,
) {
    let mut warming = FuturesUnordered::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let start = pool.lock().start_warming(Instant::now());
        for _ in 0..start {
            let dialer = Arc::clone(&dialer);
            warming.push(async move {
                let began = Instant::now();
                let outcome = warm(&*dialer, warm_timeout).await;
                (outcome, began.elapsed())
            });
        }
        tokio::select! {
            Some((outcome, took)) = warming.next(), if !warming.is_empty() => {
                // A failed warming is a failed connect like a call's: the breaker counts it. A
                // good one proves only the handshake, not that sessions work, so it does not
                // close the breaker (only a call whose session got ready does).
                if outcome.is_err() {
                    breaker.note(false);
                }
                let outcome = match outcome {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!("openai pool: warming a connection failed: {e}");
                        // Do not hammer a failing endpoint.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        None
                    }
                };
                let mut p = pool.lock();
                p.warmed(Instant::now(), outcome, took);
                // Logged under the lock, like the checkout's line: the latest line is the pool's
                // state (tests wait on it).
                tracing::debug!(idle = p.idle(), "openai pool: warming ended");
                drop(p);
            }
            _ = pool.doorbell.notified() => {}
            _ = tick.tick() => {
                let (old, dead) = {
                    let mut p = pool.lock();
                    let old = p.retire(Instant::now());
                    (old, p.discard_dead(still_alive))
                };
                if !old.is_empty() {
                    tracing::debug!(retired = old.len(), "openai pool: retired idle connections");
                }
                for w in old {
                    close_politely(w).await;
                }
                if dead > 0 {
                    tracing::info!(dead, "openai pool: discarded connection(s) that died while idle");
                }
            }
            now = next_phase(&mut phase) => {
                if now != Phase::Running {
                    break;
                }
            }
        }
    }
    let idle: Vec<Warm<D::Conn>> = pool.lock().idle.drain(..).collect();
    let n = idle.len();
    let mut closing: FuturesUnordered<_> = idle.into_iter().map(close_politely).collect();
    while closing.next().await.is_some() {}
    tracing::debug!(closed = n, "openai pool: stopped");
}

/// A [`Dial`] that takes a pre-warmed connection when the pool has a live one, and dials
/// directly otherwise; each call wakes the maintainer to refill.
pub struct PooledDial<D: Dial> {
    dialer: Arc<D>,
    pool: Option<Arc<SharedPool<D::Conn>>>,
}

impl<D: Dial> Clone for PooledDial<D> {
    fn clone(&self) -> Self {
        PooledDial {
            dialer: Arc::clone(&self.dialer),
            pool: self.pool.clone(),
        }
    }
}

impl<D: Dial> PooledDial<D> {
    /// Dials through `pool` (or always directly when `None`).
    pub fn new(dialer: Arc<D>, pool: Option<Arc<SharedPool<D::Conn>>>) -> Self {
        PooledDial { dialer, pool }
    }

    /// A live pooled connection, discarding dead ones on the way.
    fn take_live(&self) -> Option<Warm<D::Conn>> {
        let shared = self.pool.as_ref()?;
        let found = {
            let mut p = shared.lock();
            let found = p.checkout_live(Instant::now(), still_alive);
            tracing::debug!(idle = p.idle(), "openai pool: checkout");
            found
        };
        shared.doorbell.notify_one();
        found
    }
}

impl<D: Dial> Dial for PooledDial<D> {
    type Conn = D::Conn;

    fn dial(&self) -> impl Future<Output = Result<(D::Conn, Vec<u8>), ConnectError>> {
        let taken = self.take_live();
        async move {
            match taken {
                Some(w) => {
                    tracing::debug!(
                        idle_ms = w.since.elapsed().as_millis() as u64,
                        "openai: pre-warmed connection"
                    );
                    Ok((w.conn, w.rest))
                }
                None => self.dialer.dial().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callbridge_core::wire::ws::Encoder;

    #[test]
    fn no_pool_dials_openai_when_realtime_is_off() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: crate::config::ServeArgs,
        }
        let config = |args: &[&str]| {
            let mut full = vec!["callbridge", "--allow-unsigned-webhooks"];
            full.extend_from_slice(args);
            <Cli as clap::Parser>::try_parse_from(full)
                .unwrap()
                .serve
                .into_config()
                .unwrap()
        };
        let off = config(&["--use-openai-realtime", "false", "--openai-pool-max", "4"]);
        assert!(PoolConfig::from_config(&off).is_none());
        let on = config(&[
            "--openai-url",
            "ws://127.0.0.1:9/",
            "--openai-pool-max",
            "4",
        ]);
        assert_eq!(PoolConfig::from_config(&on).map(|p| p.max), Some(4));
    }

    fn cfg(max: usize) -> PoolConfig {
        PoolConfig {
            max,
            max_idle: Duration::from_secs(60),
            warm_timeout: Duration::from_secs(5),
        }
    }

    fn warm_at(since: Instant, id: u32) -> Warm<u32> {
        Warm {
            conn: id,
            rest: Vec::new(),
            since,
        }
    }

    #[test]
    fn a_disabled_pool_wants_nothing() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(cfg(0));
        for i in 0..100 {
            p.note_arrival(t0 + Duration::from_millis(i));
        }
        assert_eq!(p.start_warming(t0 + Duration::from_secs(1)), 0);
        assert!(p.checkout(t0).is_none());
    }

    #[test]
    fn a_checkout_skips_and_counts_connections_that_died_while_idle() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(cfg(8));
        for id in 1..=3 {
            p.idle.push_back(warm_at(t0, id));
        }
        // The youngest two (3, 2) died; 1 is alive.
        let got = p.checkout_live(t0, |w| w.conn == 1).map(|w| w.conn);
        assert_eq!(got, Some(1));
        assert_eq!(p.discarded_dead, 2);
        assert!(p.idle.is_empty());
        // All dead: none, and the arrival still counts.
        p.idle.push_back(warm_at(t0, 4));
        assert!(p.checkout_live(t0, |_| false).is_none());
        assert_eq!(p.discarded_dead, 3);
        assert_eq!(p.arrivals.len(), 2);
    }

    #[test]
    fn the_target_follows_the_arrival_rate_within_one_and_max() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(cfg(8));
        assert_eq!(p.target(t0), 1, "one warm connection with no traffic");
        // 30 calls/s for the whole window: 30 × (0.5 s + 1 s) = 45, capped at 8.
        for i in 0..900 {
            p.note_arrival(t0 + Duration::from_millis(i * 33));
        }
        let now = t0 + Duration::from_millis(900 * 33);
        assert_eq!(p.target(now), 8);
        // 2 calls/s: 60 in the window → 2 × 1.5 = 3.
        let mut p: Pool<u32> = Pool::new(cfg(8));
        for i in 0..60 {
            p.note_arrival(t0 + Duration::from_millis(i * 500));
        }
        assert_eq!(p.target(t0 + Duration::from_millis(59 * 500)), 3);
        // Long after the burst, back to one.
        assert_eq!(p.target(t0 + Duration::from_secs(120)), 1);
    }

    #[test]
    fn a_burst_raises_the_target_at_once_and_it_falls_back_over_the_long_window() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(cfg(1000));
        // 200 calls/s for 1 s after a quiet start: 200 in the last 2 s → 100/s × 1.5 s = 150
        // (the 30 s average alone: 200 / 30 × 1.5 = 10).
        for i in 0..200 {
            p.note_arrival(t0 + Duration::from_millis(i * 5));
        }
        let end = t0 + Duration::from_millis(995);
        assert_eq!(p.target(end), 150);
        // 3 s after the burst only the 30 s average counts: 200 / 30 × 1.5 = 10.
        assert_eq!(p.target(end + Duration::from_secs(3)), 10);
        // After 30 s, nothing.
        assert_eq!(p.target(end + Duration::from_secs(31)), 1);
    }

    #[test]
    fn warming_is_counted_so_refills_are_not_doubled() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(cfg(4));
        assert_eq!(p.start_warming(t0), 1);
        assert_eq!(p.start_warming(t0), 0, "one already warming");
        p.warmed(t0, Some(warm_at(t0, 1)), Duration::from_millis(100));
        assert_eq!((p.idle(), p.warming()), (1, 0));
        assert_eq!(p.start_warming(t0), 0);
        // A checkout makes room for one more.
        assert_eq!(p.checkout(t0).map(|w| w.conn), Some(1));
        assert_eq!(p.start_warming(t0), 1);
        // A failed attempt is forgotten, so the next round retries.
        p.warmed(t0, None, Duration::ZERO);
        assert_eq!(p.start_warming(t0), 1);
    }

    #[test]
    fn idle_connections_are_retired_at_the_max_age_oldest_first() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(cfg(4));
        // Busy enough (100 calls in the window) for a target of 4.
        (0..100).for_each(|_| p.note_arrival(t0));
        for i in 0..4 {
            p.warming += 1;
            p.warmed(
                t0,
                Some(warm_at(t0 + Duration::from_secs(i * 10), i as u32)),
                Duration::from_millis(500),
            );
        }
        assert_eq!(p.idle(), 4);
        let gone: Vec<u32> = p
            .retire(t0 + Duration::from_secs(75))
            .into_iter()
            .map(|w| w.conn)
            .collect();
        assert_eq!(
            gone,
            vec![0, 1],
            "60 s max idle: the ones warmed at 0 s and 10 s"
        );
        assert_eq!(p.retired, 2);
        // Checkout takes the youngest.
        assert_eq!(
            p.checkout(t0 + Duration::from_secs(75)).map(|w| w.conn),
            Some(3)
        );
    }

    #[test]
    fn dead_connections_are_discarded() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(cfg(4));
        (0..100).for_each(|_| p.note_arrival(t0));
        for i in 0..3 {
            p.warming += 1;
            p.warmed(t0, Some(warm_at(t0, i)), Duration::from_millis(500));
        }
        assert_eq!(p.idle(), 3);
        assert_eq!(p.discard_dead(|w| w.conn != 1), 1);
        assert_eq!(p.discarded_dead, 1);
        assert_eq!(p.idle(), 2);
    }

    fn server_text(json: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::new(Role::Server).text(&mut out, json.as_bytes());
        out
    }

    const CREATED: &str = r#"{"type":"session.created","event_id":"e1","session":{"type":"realtime","id":"sess_1","object":"realtime.session","model":"gpt-realtime"}}"#;

    #[test]
    fn the_first_message_must_be_session_created_and_may_arrive_in_pieces() {
        let frame = server_text(CREATED);
        assert_eq!(first_message(&frame[..10]), First::Incomplete);
        assert_eq!(first_message(&frame), First::SessionCreated);
        let err = server_text(
            r#"{"type":"error","event_id":"e1","error":{"type":"invalid_request_error","message":"no"}}"#,
        );
        assert!(matches!(first_message(&err), First::Other(_)));
        let mut close = Vec::new();
        Encoder::new(Role::Server).close(&mut close, 1000, "idle");
        assert!(matches!(first_message(&close), First::Other(_)));
        // A close after session.created marks an idle connection dead.
        let mut both = frame.clone();
        assert!(!holds_close(&both));
        both.extend_from_slice(&close);
        assert!(holds_close(&both));
    }

    /// A dialer that never connects: the tests below only look at what `dial()` does up front.
    struct NeverDial;

    impl Dial for NeverDial {
        type Conn = tokio::io::DuplexStream;

        fn dial(&self) -> impl Future<Output = Result<(Self::Conn, Vec<u8>), ConnectError>> {
            std::future::pending()
        }
    }

    #[test]
    fn a_miss_on_an_empty_pool_still_counts_the_arrival_and_rings_the_doorbell() {
        use futures_util::FutureExt;
        let shared = SharedPool::<tokio::io::DuplexStream>::new(cfg(4));
        let dial = PooledDial::new(Arc::new(NeverDial), Some(Arc::clone(&shared)));
        drop(dial.dial());
        assert_eq!(shared.lock().arrivals.len(), 1);
        assert!(
            shared.doorbell.notified().now_or_never().is_some(),
            "the maintainer must be woken to refill after a miss"
        );
    }
}
