//! IO drivers: they move bytes and time between sockets and the sans-IO core.
//!
//! - [`connection`]: one HTTP connection until an upgrade, and [`call_loop`]: one call's two
//!   legs; written once, over the [`transport`] traits (operations that own their buffers).
//! - [`epoll`]: the tokio driver (epoll on Linux), on the process's multi-threaded runtime.
//! - [`uring`]: the io_uring driver (tokio-uring), one thread, ring and `SO_REUSEPORT` listener
//!   per worker, its sockets through [`uring_stream`].
//!
//! [`Server`] picks a driver (`RUNTIME`), starts it on a listener and stops it.

pub mod call_loop;
pub mod connection;
pub mod epoll;
pub mod transport;
pub mod uring;
pub mod uring_stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, RuntimeChoice};
use crate::front::routes::App;
pub use crate::lifecycle::Phase;
use crate::openai::client::Connector;
use crate::store::{Store, StoreOptions};

/// How long the closing handshake and the last flush may take when a connection ends, and how
/// long a closing driver waits for its connections.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The connections waiting in `listener`'s accept queue, taken with non-blocking accepts until
/// the queue is empty (and made non-blocking for the driver), so that closing the listener resets
/// none of them: closing a listener resets its accept queue, and with `SO_REUSEPORT` the queued
/// connections are not handed to the other listeners. Both drivers call it before they close.
pub(crate) fn take_queued(
    listener: &std::net::TcpListener,
) -> Vec<(std::net::TcpStream, SocketAddr)> {
    let mut taken = Vec::new();
    if listener.set_nonblocking(true).is_err() {
        return taken;
    }
    while let Ok((sock, peer)) = listener.accept() {
        if sock.set_nonblocking(true).is_ok() {
            taken.push((sock, peer));
        }
    }
    taken
}

/// The IO driver a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring, thread per core.
    Uring,
    /// tokio (epoll).
    Epoll,
}

impl Driver {
    /// `uring` or `epoll`.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Uring => "uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Chooses the driver for `choice`: `auto` probes io_uring. Returns the driver and why.
pub fn choose_driver(choice: RuntimeChoice) -> anyhow::Result<(Driver, String)> {
    match choice {
        RuntimeChoice::Epoll => Ok((Driver::Epoll, "RUNTIME=epoll".to_owned())),
        RuntimeChoice::Uring => match uring::probe() {
            Ok(()) => Ok((Driver::Uring, "RUNTIME=uring".to_owned())),
            Err(why) => anyhow::bail!(
                "RUNTIME=uring, but io_uring cannot be used: {why} (set RUNTIME=epoll or auto)"
            ),
        },
        RuntimeChoice::Auto => match uring::probe() {
            Ok(()) => Ok((
                Driver::Uring,
                "RUNTIME=auto: the io_uring probe (ring setup + a no-op) succeeded".to_owned(),
            )),
            Err(why) => Ok((
                Driver::Epoll,
                format!("RUNTIME=auto: io_uring unusable, {why}"),
            )),
        },
    }
}

enum Running {
    Epoll(tokio::task::JoinHandle<()>),
    Uring(uring::Workers),
}

/// A running server: its address, its app state, and the switch that stops it.
pub struct Server {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Shared state (active calls, config).
    pub app: Arc<App>,
    /// The driver serving.
    pub driver: Driver,
    phase: watch::Sender<Phase>,
    running: Running,
}

impl Server {
    /// Picks the driver (`cfg.runtime`), binds `cfg.listen` and starts accepting. Must be called
    /// inside a tokio runtime.
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        // Before any call: handles taken before the recorder exists would record nothing.
        if let Err(e) = crate::metrics::install() {
            tracing::warn!("metrics disabled: {e}");
        }
        let extra_ca = match &cfg.openai_extra_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading OPENAI_EXTRA_CA_FILE {}", path.display()))?,
            ),
            None => None,
        };
        let connector = Connector::new(
            cfg.openai_url.clone(),
            cfg.openai_api_key.clone(),
            extra_ca.as_deref(),
            cfg.openai_connect_timeout,
        )
        .context("setting up the OpenAI connector")?;
        announce_security(&cfg);
        let (driver, why) = choose_driver(cfg.runtime)?;
        let (listen, workers) = (cfg.listen, cfg.workers);
        let store = open_store(&cfg)?;
        let app = Arc::new(
            App::new(Arc::new(cfg))
                .context("STREAM_SECRET")?
                .with_store(store),
        );
        let (phase, rx) = watch::channel(Phase::Running);
        let connector = Arc::new(connector);
        let (local_addr, running) = match driver {
            Driver::Epoll => {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                let local_addr = listener.local_addr()?;
                let task = tokio::spawn(epoll::serve(listener, Arc::clone(&app), connector, rx));
                (local_addr, Running::Epoll(task))
            }
            Driver::Uring => {
                let workers = uring::start(listen, workers, Arc::clone(&app), connector, rx)?;
                (workers.local_addr, Running::Uring(workers))
            }
        };
        let threads = match driver {
            Driver::Uring => format!(", {workers} worker thread(s)"),
            Driver::Epoll => String::new(),
        };
        tracing::info!(
            runtime = driver.name(),
            "io driver: {}{threads} ({why})",
            driver.name()
        );
        app.mark_ready();
        Ok(Server {
            local_addr,
            app,
            driver,
            phase,
            running,
        })
    }

    /// Stops the server within `grace`: calls get `grace` to end on their own, then the ones left
    /// are ended (`drained`, closed normally), and everything is closed and flushed. For the
    /// library's users (the demo, tests); `serve` drains with [`Server::drain`].
    pub async fn stop(self, grace: Duration) {
        let plan = DrainPlan {
            accept: Duration::ZERO,
            calls: grace,
            http_grace: Duration::ZERO,
        };
        self.shut_down(plan, std::future::pending()).await;
    }

    /// The drain of a signalled instance (design.md "Life of an instance"; README "Deploying"):
    ///
    /// 1. at once: `/readyz` answers 503 and `callbridge_draining` reads 1; the listener stays
    ///    open: webhooks, after-stream and status callbacks are answered throughout, and
    ///    upgrades are bridged for `DRAIN_ACCEPT_SECS` (later ones are accepted and closed, so the
    ///    caller reaches the fallback);
    /// 2. calls in flight run on, for `DRAIN_TIMEOUT_SECS` at most; then the ones left are ended
    ///    (`drained`: closed normally, so Twilio follows the `<Redirect>` to the fallback);
    /// 3. the listener stays open until the after-stream of every call this instance closed has
    ///    come, or `DRAIN_HTTP_GRACE_SECS` after the last call;
    /// 4. the listeners close without losing a queued connection, the store flushes.
    ///
    /// `force` (a second signal) ends it at once: calls are ended now, the grace is skipped, and
    /// the store still flushes.
    pub async fn drain(self, force: impl std::future::Future<Output = ()>) {
        let drain = self.app.config().drain;
        let plan = DrainPlan {
            accept: drain.accept,
            calls: drain.timeout,
            http_grace: drain.http_grace,
        };
        self.shut_down(plan, force).await;
    }

    async fn shut_down(self, plan: DrainPlan, force: impl std::future::Future<Output = ()>) {
        // Fused: once it has fired, later waits see it as pending instead of polling it again.
        let force = futures_util::FutureExt::fuse(force);
        tokio::pin!(force);
        let started = tokio::time::Instant::now();
        let accept_until = self.app.begin_drain(started.into_std(), plan.accept);
        let _ = self.phase.send(Phase::Draining);
        let mut forced = false;
        // 2. Upgrades are bridged until the accept window ends, and calls run on until they are
        //    done (not before the window ends: its TwiML is already out) or the deadline.
        let deadline = started + plan.calls;
        forced |= wait_for_calls(
            &self.app,
            deadline,
            accept_until.into(),
            true,
            force.as_mut(),
        )
        .await;
        // No call starts from here on (an upgrade that got past the admission before this line
        // is already counted active below).
        self.app.stop_bridging();
        if self.app.active_calls() > 0 {
            tracing::warn!(
                calls = self.app.active_calls(),
                "drain: ending the calls still up (their callers go to the fallback)"
            );
            self.app.end_calls();
            // Each call closes both legs within its own CLOSE_TIMEOUT and records its end.
            let bound = if forced { FORCED_CALL_END } else { CALL_END };
            let now = tokio::time::Instant::now();
            forced |= wait_for_calls(&self.app, now + bound, now, false, force.as_mut()).await;
        }
        // 3. Twilio's after-stream for the calls we closed.
        if !forced && plan.http_grace > Duration::ZERO {
            let until = tokio::time::Instant::now() + plan.http_grace;
            let mut poll = tokio::time::interval(DRAIN_POLL);
            while self.app.awaiting_after_streams() > 0 && tokio::time::Instant::now() < until {
                tokio::select! {
                    _ = poll.tick() => {}
                    _ = force.as_mut() => break,
                }
            }
        }
        crate::metrics::set_drain(true, self.app.active_calls());
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            calls_left = self.app.active_calls(),
            "drain done: closing the listeners"
        );
        // 4. Close (the drivers take what is queued on their listeners first).
        let _ = self.phase.send(Phase::Closed);
        match self.running {
            Running::Epoll(task) => {
                let _ = task.await;
            }
            Running::Uring(workers) => {
                let _ = tokio::task::spawn_blocking(move || workers.join()).await;
            }
        }
        // Everything the calls recorded is written and flushed before the process exits.
        if let Some(store) = self.app.store().cloned() {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }
}

/// How long each part of a shut-down may take.
#[derive(Debug, Clone, Copy)]
struct DrainPlan {
    /// Upgrades are still bridged this long.
    accept: Duration,
    /// Calls run on this long before they are ended.
    calls: Duration,
    /// The listener waits this long after the last call for after-stream requests.
    http_grace: Duration,
}

/// How often a drain looks at what is left (it reports the calls left once a second).
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// How long calls told to end get to close both legs and record their end: the call loop's
/// own close bound (2 s) plus a margin.
const CALL_END: Duration = Duration::from_secs(3);

/// The same after a second signal: records still land, but the process does not wait for slow
/// peers' closing handshakes.
const FORCED_CALL_END: Duration = Duration::from_secs(1);

/// Waits until no call is active and `not_before` has passed, or `deadline`, or `force` (returns
/// `true` then). Reports the calls left every second (`callbridge_drain_calls_left`, and a log line
/// every 10 s when `report`).
async fn wait_for_calls(
    app: &App,
    deadline: tokio::time::Instant,
    not_before: tokio::time::Instant,
    report: bool,
    mut force: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    let mut poll = tokio::time::interval(DRAIN_POLL);
    let mut last_report = tokio::time::Instant::now();
    let mut reports = 0u32;
    loop {
        let left = app.active_calls();
        let now = tokio::time::Instant::now();
        if now.duration_since(last_report) >= Duration::from_secs(1) || reports == 0 {
            crate::metrics::set_drain(true, left);
            if report && reports.is_multiple_of(10) {
                tracing::info!(calls_left = left, "draining");
            }
            reports += 1;
            last_report = now;
        }
        if (left == 0 && now >= not_before) || now >= deadline {
            return false;
        }
        tokio::select! {
            _ = poll.tick() => {}
            _ = force.as_mut() => {
                tracing::warn!(calls_left = left, "second signal: ending the drain now");
                return true;
            }
        }
    }
}

/// Says at start what is not safe about this configuration: no signatures (an error line and
/// the `callbridge_unsigned_webhooks` gauge at 1), or a per-process stream secret.
fn announce_security(cfg: &Config) {
    let unsigned = !cfg.twilio.is_signed();
    crate::metrics::set_unsigned_webhooks(unsigned);
    if unsigned {
        tracing::error!(
            "ALLOW_UNSIGNED_WEBHOOKS=true: Twilio signatures are NOT checked; anyone who reaches \
             this port can place calls billed to you. Set TWILIO_AUTH_TOKEN and PUBLIC_HOST for \
             real use"
        );
    }
    if !cfg.stream_secret_shared {
        tracing::warn!(
            "STREAM_SECRET is not set: stream URLs are signed with a random per-process secret, \
             so several instances (or this one after a restart) refuse each other's streams; set \
             the same STREAM_SECRET on every instance"
        );
    }
}

/// Opens the store in `DATA_DIR` (a second process on the same directory gets a clear
/// "locked" error) and repairs what a crash of the previous process left.
fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let opts = StoreOptions {
        flush_every: cfg.store_flush,
        cache_bytes: cfg.store_cache_bytes,
        engine: cfg.store_engine,
        retention: cfg.retention,
        max_bytes: cfg.store_max_bytes,
        config_agent: Arc::clone(&cfg.agent),
        ..StoreOptions::default()
    };
    let store = Store::open(&cfg.data_dir, opts)
        .with_context(|| format!("opening the store (DATA_DIR={})", cfg.data_dir.display()))?;
    let fixed = store.recover().context("checking the store")?;
    if fixed > 0 {
        tracing::warn!(
            calls = fixed,
            "marked calls left in progress by a previous process as failed"
        );
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_queued_on_a_listener_are_taken_before_it_closes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel completes these handshakes and queues them: nobody has accepted yet.
        let clients: Vec<_> = (0..5)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let taken = take_queued(&listener);
        assert_eq!(taken.len(), clients.len());
        assert!(take_queued(&listener).is_empty(), "the queue is empty now");
    }
}
