//! The io_uring driver: thread per core on tokio-uring.
//!
//! `WORKERS` threads, each with its own tokio-uring runtime (one ring, a current-thread tokio
//! runtime and a `LocalSet`) and its own listening socket on the same port (`SO_REUSEPORT`, so
//! the kernel spreads new connections over the workers). A connection stays on the worker that
//! accepted it, and so does the call it becomes: its OpenAI socket is opened by that worker
//! (TCP over the same ring, TLS with rustls on the same thread), so a call's audio never crosses
//! a thread or takes a lock.
//!
//! The driver only accepts and moves bytes: sockets are wrapped in
//! [`UringStream`](super::uring_stream::UringStream) and handed to the connection handler and call
//! loop shared with the epoll driver ([`super::connection`], [`super::call_loop`]).
//!
//! [`probe`] tells whether io_uring can be used here (`RUNTIME=auto`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::connection::connection;
use super::uring_stream::UringStream;
use super::{take_queued, CLOSE_TIMEOUT};
use crate::front::routes::App;
use crate::lifecycle::{next_phase, Phase};
use crate::openai::client::{ConnectError, Connector, Dial, WsConn};
use crate::openai::pool::{maintain, PoolConfig, PooledDial, SharedPool};

/// Entries of each worker's submission queue (the completion queue is twice as large).
const RING_ENTRIES: u32 = 1024;

/// Backlog of each worker's listening socket.
const LISTEN_BACKLOG: i32 = 1024;

/// A new tokio-uring runtime with this driver's ring size and flags (where the kernel has them,
/// else the plain ring tokio-uring sets up by default):
///
/// - `COOP_TASKRUN`: the kernel posts completions when the worker next enters it (every loop
///   turn does) instead of interrupting it with an IPI for each one: about a third less CPU per
///   frame in the load test (README "Runtimes").
/// - `SINGLE_ISSUER`: only the worker thread submits to its ring (true by construction: one
///   ring per worker thread), which lets the kernel skip locking.
///
/// Not `DEFER_TASKRUN`: completions would then wait for an `io_uring_enter(GETEVENTS)`, but
/// tokio-uring sleeps in epoll on the ring's fd, so the worker would never wake.
fn new_runtime() -> io::Result<tokio_uring::Runtime> {
    let mut tuned = tokio_uring::uring_builder();
    tuned.setup_coop_taskrun().setup_single_issuer();
    match tokio_uring::Runtime::new(
        tokio_uring::builder()
            .entries(RING_ENTRIES)
            .uring_builder(&tuned),
    ) {
        Ok(rt) => Ok(rt),
        // EINVAL: a kernel before 6.0 (SINGLE_ISSUER) or 5.19 (COOP_TASKRUN).
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            tracing::debug!(
                "io_uring without SINGLE_ISSUER/COOP_TASKRUN (the kernel refused them: {e})"
            );
            tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES))
        }
        Err(e) => Err(e),
    }
}

/// Whether io_uring works in this process: builds a ring and completes one no-op on it, on a
/// throw-away thread. `Err` says why not, in words for the log (disabled by sysctl, blocked by
/// seccomp, a kernel without io_uring, a memlock limit).
pub fn probe() -> Result<(), String> {
    let outcome = std::thread::Builder::new()
        .name("uring-probe".into())
        .spawn(|| -> io::Result<()> {
            let rt = new_runtime()?;
            rt.block_on(tokio_uring::no_op())
        })
        .map_err(|e| format!("cannot start a probe thread: {e}"))?
        .join()
        .map_err(|_| "the io_uring probe panicked".to_owned())?;
    outcome.map_err(|e| explain(&e))
}

/// Says why io_uring failed, from the error and the sysctl.
fn explain(e: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_owned());
    let why = match e.raw_os_error() {
        Some(38) => "the kernel has no io_uring (ENOSYS)".to_owned(),
        Some(1) => match sysctl.as_deref() {
            Some("2") => "io_uring is disabled by sysctl kernel.io_uring_disabled=2 (EPERM)".to_owned(),
            Some("1") => "io_uring is restricted by sysctl kernel.io_uring_disabled=1 to the io_uring_group (EPERM)".to_owned(),
            _ => "io_uring is not permitted here, likely a seccomp filter (container default profiles block it) (EPERM)".to_owned(),
        },
        Some(12) => "cannot allocate the ring (ENOMEM): raise RLIMIT_MEMLOCK (ulimit -l) on kernels before 5.12".to_owned(),
        _ => "io_uring setup failed".to_owned(),
    };
    format!("{why}: {e}")
}

/// A listening socket with `SO_REUSEPORT` (and `SO_REUSEADDR`), non-blocking.
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The running workers of the io_uring driver.
pub struct Workers {
    /// The address all workers listen on.
    pub local_addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Joins the worker threads (blocks until they have ended: from async code, on a blocking
    /// thread).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds `workers` `SO_REUSEPORT` listeners on `listen` (the first one picks the port when it
/// is 0) and starts one worker thread with its own ring on each. Returns once every worker's
/// ring is up, or the first error.
pub fn start(
    listen: SocketAddr,
    workers: usize,
    app: Arc<App>,
    connector: Arc<Connector>,
    phase: watch::Receiver<Phase>,
) -> anyhow::Result<Workers> {
    let first = reuseport_listener(listen).with_context(|| format!("binding {listen}"))?;
    let local_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers.max(1) {
        listeners.push(
            reuseport_listener(local_addr)
                .with_context(|| format!("binding {local_addr} (SO_REUSEPORT)"))?,
        );
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    let mut threads = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (app, connector, phase, ready) = (
            Arc::clone(&app),
            Arc::clone(&connector),
            phase.clone(),
            ready_tx.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("uring-{i}"))
            .spawn(move || {
                let rt = match new_runtime() {
                    Ok(rt) => {
                        let _ = ready.send(Ok(()));
                        rt
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                drop(ready);
                rt.block_on(serve(listener, app, connector, phase));
            })
            .context("starting an io_uring worker thread")?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(anyhow::anyhow!(explain(&e))).context("starting an io_uring worker")
            }
            Err(_) => anyhow::bail!("an io_uring worker ended before its ring was up"),
        }
    }
    Ok(Workers {
        local_addr,
        threads,
    })
}

type AcceptFuture =
    Pin<Box<dyn Future<Output = io::Result<(tokio_uring::net::TcpStream, SocketAddr)>>>>;

/// One accept, owning (a handle on) the listener, so it can be kept across loop turns: an accept
/// in flight is never cancelled while the worker runs (a cancelled io_uring accept can lose the
/// connection it accepted).
fn accept(listener: &Rc<tokio_uring::net::TcpListener>) -> AcceptFuture {
    let listener = Rc::clone(listener);
    Box::pin(async move { listener.accept().await })
}

/// One worker: accepts on its own listener and runs each connection on this thread, through the
/// same phases ([`crate::lifecycle::Phase`]) as the epoll driver's accept loop.
async fn serve(
    listener: std::net::TcpListener,
    app: Arc<App>,
    connector: Arc<Connector>,
    mut phase: watch::Receiver<Phase>,
) {
    // A second descriptor of the listening socket: at close, it takes the queued connections
    // (non-blocking accepts), then shuts the socket, which ends the ring's accept in flight.
    let mut stop_handle = listener.try_clone().ok();
    let listener = Rc::new(tokio_uring::net::TcpListener::from_std(listener));
    let mut accepting: Option<AcceptFuture> = Some(accept(&listener));
    let mut tasks = JoinSet::new();
    let dialer = Arc::new(UringDial::new(connector));
    let pool_cfg = PoolConfig::from_config(app.config());
    let pool = pool_cfg.map(SharedPool::new);
    if let (Some(pool), Some(pc)) = (&pool, pool_cfg) {
        tokio_uring::spawn(maintain(
            Arc::clone(pool),
            Arc::clone(&dialer),
            pc.warm_timeout,
            app.breaker().clone(),
            phase.clone(),
        ));
    }
    let dial = PooledDial::new(dialer, pool);
    let serve_one = |tasks: &mut JoinSet<()>, sock: tokio_uring::net::TcpStream, peer| {
        let _ = sock.set_nodelay(true);
        let stream = UringStream::new(sock);
        tasks.spawn_local(connection(stream, peer, Arc::clone(&app), dial.clone()));
    };
    loop {
        tokio::select! {
            accepted = async { accepting.as_mut().expect("always set while serving").await } => {
                accepting = Some(accept(&listener));
                match accepted {
                    Ok((sock, peer)) => serve_one(&mut tasks, sock, peer),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            now = next_phase(&mut phase) => {
                if now == Phase::Closed {
                    break;
                }
            }
        }
    }
    // Closing a SO_REUSEPORT listener resets the connections in its accept queue (they are not
    // handed to the other workers' listeners). So: take what is queued with non-blocking accepts
    // on the second descriptor, then shut the socket (which also ends the ring's accept in
    // flight: tokio-uring would not cancel it in the kernel, and a cancelled accept can lose the
    // connection it took), and serve whatever that accept still returns.
    if let Some(h) = &stop_handle {
        for (sock, peer) in take_queued(h) {
            serve_one(
                &mut tasks,
                tokio_uring::net::TcpStream::from_std(sock),
                peer,
            );
        }
    }
    stop_listening(&mut stop_handle);
    if let Some(in_flight) = accepting.take() {
        if let Ok(Ok((sock, peer))) = tokio::time::timeout(CLOSE_TIMEOUT, in_flight).await {
            serve_one(&mut tasks, sock, peer);
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

/// Shuts the listening socket (every descriptor of it): no more connections are queued on it, and
/// an accept in flight completes with an error.
fn stop_listening(handle: &mut Option<std::net::TcpListener>) {
    if let Some(h) = handle.take() {
        let _ = socket2::SockRef::from(&h).shutdown(std::net::Shutdown::Both);
    }
}

/// Opens a call's OpenAI leg on the current worker: TCP through this worker's ring, then TLS and
/// the WebSocket handshake over the [`UringStream`].
pub struct UringDial {
    connector: Arc<Connector>,
}

impl UringDial {
    /// A dialer for `connector`'s endpoint (must be used inside a worker).
    pub fn new(connector: Arc<Connector>) -> UringDial {
        UringDial { connector }
    }

    async fn connect(&self) -> Result<(WsConn<UringStream>, Vec<u8>), ConnectError> {
        let (host, port) = self.connector.host_port();
        let mut last_err = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
        for addr in tokio::net::lookup_host((host, port)).await? {
            match tokio_uring::net::TcpStream::connect(addr).await {
                Ok(sock) => {
                    let _ = sock.set_nodelay(true);
                    return self.connector.handshake(UringStream::new(sock)).await;
                }
                Err(e) => last_err = e,
            }
        }
        Err(ConnectError::Io(last_err))
    }
}

impl Dial for UringDial {
    type Conn = WsConn<UringStream>;

    async fn dial(&self) -> Result<(WsConn<UringStream>, Vec<u8>), ConnectError> {
        self.connector.bounded(self.connect()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_explained_by_errno() {
        let enosys = explain(&io::Error::from_raw_os_error(38));
        assert!(enosys.contains("no io_uring (ENOSYS)"), "{enosys}");
        let eperm = explain(&io::Error::from_raw_os_error(1));
        assert!(
            eperm.contains("EPERM") && (eperm.contains("sysctl") || eperm.contains("seccomp")),
            "{eperm}"
        );
        let enomem = explain(&io::Error::from_raw_os_error(12));
        assert!(enomem.contains("RLIMIT_MEMLOCK"), "{enomem}");
    }

    #[test]
    fn workers_share_one_port() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        let b = reuseport_listener(addr).expect("a second SO_REUSEPORT listener on the same port");
        assert_eq!(b.local_addr().unwrap(), addr);
    }
}
