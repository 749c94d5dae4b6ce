//! IO drivers: they move bytes and time between sockets and the sans-IO core.
//!
//! - [`epoll`]: the tokio driver (epoll on Linux). The io_uring driver (tokio-uring, thread per
//!   core) is to drop in beside it with the same shape.
//!
//! [`Server`] starts a driver on a listener and stops it.

pub mod epoll;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::front::routes::App;
use crate::openai::client::Connector;
use crate::store::{Store, StoreOptions};

/// A running server: its address, its app state, and the switch that stops it.
pub struct Server {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Shared state (active calls, config).
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `cfg.listen` and starts accepting. Must be called inside a tokio runtime.
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
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let local_addr = listener.local_addr()?;
        let store = open_store(&cfg)?;
        let app = Arc::new(
            App::new(Arc::new(cfg))
                .context("STREAM_SECRET")?
                .with_store(store),
        );
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(epoll::serve(
            listener,
            Arc::clone(&app),
            Arc::new(connector),
            rx,
        ));
        Ok(Server {
            local_addr,
            app,
            shutdown,
            task,
        })
    }

    /// Stops accepting, then waits up to `grace` for active calls to finish.
    pub async fn stop(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.app.active_calls() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
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
        config_agent: Arc::clone(&cfg.agent),
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
