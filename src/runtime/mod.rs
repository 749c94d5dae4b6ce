//! IO drivers: they move bytes and time between sockets and the sans-IO core.
//!
//! - [`epoll`]: the tokio driver (epoll on Linux), on the process's multi-threaded runtime.
//! - [`uring`]: the io_uring driver (tokio-uring), one thread, ring and `SO_REUSEPORT` listener
//!   per worker.
//!
//! Both run the same connection handler and call loop ([`epoll::connection`], generic over the
//! [`io::Transport`] and [`io::Dial`] traits). [`Server`] picks a driver (`RUNTIME`), starts it on
//! a listener and stops it.

pub mod epoll;
pub mod io;
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
use crate::openai::client::Connector;
use crate::store::{Store, StoreOptions};

/// Where a server is in its life; drivers watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting.
    Running,
    /// Not accepting; connections and calls finish.
    Draining,
    /// Everything left is dropped, closing its sockets.
    Closed,
}

/// Waits for the next phase change (cancel-safe, as `watch::Receiver::changed`); a dropped
/// sender reads as [`Phase::Closed`].
pub(crate) async fn next_phase(phase: &mut watch::Receiver<Phase>) -> Phase {
    match phase.changed().await {
        Ok(()) => *phase.borrow(),
        Err(_) => Phase::Closed,
    }
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
        Ok(Server {
            local_addr,
            app,
            driver,
            phase,
            running,
        })
    }

    /// Stops accepting, waits up to `grace` for active calls to finish, then closes every
    /// connection that is left (on either driver) and waits for the driver to end.
    pub async fn stop(self, grace: Duration) {
        let _ = self.phase.send(Phase::Draining);
        let deadline = tokio::time::Instant::now() + grace;
        while self.app.active_calls() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
