//! The tokio (epoll) driver: accepts connections on the process's multi-threaded runtime and
//! runs each one's [`connection`] handler (and, after an upgrade, its call loop) over tokio's
//! `TcpStream` (a [`Transport`](super::transport::Transport) through the readiness adapter).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::connection::connection;
use super::{take_queued, CLOSE_TIMEOUT};
use crate::front::routes::App;
use crate::lifecycle::{next_phase, Phase};
use crate::openai::client::Connector;
use crate::openai::pool::{maintain, PoolConfig, PooledDial, SharedPool};

/// Accepts connections until `phase` turns [`Phase::Closed`] (a drain keeps accepting: its
/// webhooks and Twilio's after-stream requests must be answered). Then it takes every
/// connection still queued on the listener (closing a listener resets what is in its accept
/// queue), closes the listener, gives the connections left [`CLOSE_TIMEOUT`] to finish, and
/// drops the rest (closing their sockets).
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    connector: Arc<Connector>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut tasks = JoinSet::new();
    let pool_cfg = PoolConfig::from_config(app.config());
    let pool = pool_cfg.map(SharedPool::new);
    if let (Some(pool), Some(pc)) = (&pool, pool_cfg) {
        tokio::spawn(maintain(
            Arc::clone(pool),
            Arc::clone(&connector),
            pc.warm_timeout,
            app.breaker().clone(),
            phase.clone(),
        ));
    }
    let dial = PooledDial::new(connector, pool);
    let spawn = |tasks: &mut JoinSet<()>, stream: tokio::net::TcpStream, peer: SocketAddr| {
        let _ = stream.set_nodelay(true);
        let (app, dial) = (Arc::clone(&app), dial.clone());
        tasks.spawn(async move { connection(stream, peer, app, dial).await });
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn(&mut tasks, stream, peer),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            now = next_phase(&mut phase) => {
                if now == Phase::Closed {
                    break;
                }
            }
        }
    }
    // What is already queued on the listener is taken and served, not reset by the close (from
    // the socket itself: tokio's accept would only see what its reactor has reported so far).
    if let Ok(listener) = listener.into_std() {
        for (stream, peer) in take_queued(&listener) {
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                spawn(&mut tasks, stream, peer);
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}
