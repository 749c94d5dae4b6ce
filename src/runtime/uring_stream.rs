//! A tokio-uring TCP socket seen as tokio's `AsyncRead` / `AsyncWrite`, so the shared connection
//! handler, the call loop and rustls (through tokio-rustls, i.e. `ClientConnection::read_tls` /
//! `write_tls` on in-memory buffers) run unchanged on the io_uring driver.
//!
//! ```text
//!  kernel ──io_uring recv (owned buffer)──▶ reader task ──▶ rx ──poll_read──▶ call loop / rustls
//!  kernel ◀─io_uring send (owned buffer)─── writer task ◀── tx ◀─poll_write── call loop / rustls
//! ```
//!
//! Two small tasks per socket, on the same worker thread as the call (`Rc`, no `Send`, no lock),
//! each with one owned buffer that lives as long as the socket: a recv or send in flight owns its
//! buffer, which is how io_uring wants it, and a read or write of the call loop never cancels an
//! operation in flight (so no bytes are lost when the loop's `select!` drops a read future).
//! `tx` and the writer's buffer are swapped, not copied. Both directions are bounded:
//! [`RX_CAP`] unread bytes stop the reader (backpressure into TCP), [`TX_CAP`] unsent bytes make
//! `poll_write` return `Pending`.
//!
//! Dropping both halves closes the socket: the read side is shut at once (which ends a recv in
//! flight), what was already written is still sent (bounded by [`CLOSE_TIMEOUT`]), then the write
//! side is shut and the descriptor closed.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_uring::net::TcpStream;

use super::io::Transport;

/// Unread bytes held before the reader stops issuing recvs.
pub const RX_CAP: usize = 64 * 1024;

/// Unsent bytes accepted before `poll_write` returns `Pending`.
pub const TX_CAP: usize = 64 * 1024;

/// Bytes asked for per recv: the reader's one buffer. Twilio frames are ~400 bytes and deltas a
/// few KiB; a bigger message takes more recvs. (16 KiB here, with 16 KiB initial `rx`/`tx`
/// and writer buffers, was ~64 KiB of every socket's memory.)
const READ_CHUNK: usize = 4 * 1024;

/// How long the bytes still queued when the stream is dropped may take to leave.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// State shared by the two halves and the two tasks of one socket (one thread).
#[derive(Default)]
struct Shared {
    /// Received, not yet read by the owner.
    rx: Vec<u8>,
    /// The peer closed its side (or the read side was shut).
    rx_eof: bool,
    /// The last recv failed.
    rx_err: Option<io::ErrorKind>,
    /// The owner waiting for `rx`.
    rx_waker: Option<Waker>,
    /// Written by the owner, not yet handed to the kernel.
    tx: Vec<u8>,
    /// A send is in flight.
    tx_inflight: bool,
    /// A send failed: every later write fails.
    tx_err: Option<io::ErrorKind>,
    /// The owner waiting for room in `tx` or for a flush.
    tx_waker: Option<Waker>,
    /// Both halves are gone.
    closed: bool,
}

/// Wakes `slot`'s waker, if any.
fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

/// Stores `cx`'s waker in `slot` unless the same one is already there (no clone, no refcount).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// What the halves share: the socket, the state, and the tasks' doorbells. Its drop (when both
/// halves are gone) starts the close.
struct Inner {
    sock: Rc<TcpStream>,
    shared: Rc<RefCell<Shared>>,
    reader: Rc<Notify>,
    writer: Rc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.borrow_mut().closed = true;
        // Ends a recv in flight (it completes with 0); the writer sends what is queued first.
        let _ = self.sock.shutdown(Shutdown::Read);
        self.reader.notify_one();
        self.writer.notify_one();
    }
}

/// A tokio-uring `TcpStream` as an `AsyncRead + AsyncWrite` stream. Must be created inside a
/// tokio-uring runtime (it spawns its two tasks there).
pub struct UringStream {
    inner: Rc<Inner>,
}

impl UringStream {
    /// Wraps a connected socket and starts its reader and writer tasks on this worker.
    pub fn new(sock: TcpStream) -> UringStream {
        let inner = Rc::new(Inner {
            sock: Rc::new(sock),
            // `rx` and `tx` start empty and grow to what the connection's messages need.
            shared: Rc::new(RefCell::new(Shared::default())),
            reader: Rc::new(Notify::new()),
            writer: Rc::new(Notify::new()),
        });
        tokio_uring::spawn(reader(
            Rc::clone(&inner.sock),
            Rc::clone(&inner.shared),
            Rc::clone(&inner.reader),
        ));
        tokio_uring::spawn(writer(
            Rc::clone(&inner.sock),
            Rc::clone(&inner.shared),
            Rc::clone(&inner.writer),
        ));
        UringStream { inner }
    }
}

/// Receives into one owned buffer until EOF, an error, or the close; pauses while [`RX_CAP`]
/// bytes wait unread.
async fn reader(sock: Rc<TcpStream>, shared: Rc<RefCell<Shared>>, doorbell: Rc<Notify>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        loop {
            let (closed, full) = {
                let s = shared.borrow();
                (s.closed, s.rx.len() >= RX_CAP)
            };
            if closed {
                return;
            }
            if !full {
                break;
            }
            doorbell.notified().await;
        }
        buf.clear();
        if buf.capacity() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let (res, b) = sock.read(buf).await;
        buf = b;
        let mut s = shared.borrow_mut();
        match res {
            Ok(0) => {
                s.rx_eof = true;
                wake(&mut s.rx_waker);
                return;
            }
            Ok(n) => {
                if s.rx.is_empty() {
                    // Hand the received buffer over instead of copying it (the usual case: the
                    // owner read everything before); `buf` takes the emptied one for the next recv.
                    buf.truncate(n);
                    std::mem::swap(&mut s.rx, &mut buf);
                } else {
                    s.rx.extend_from_slice(&buf[..n]);
                }
                wake(&mut s.rx_waker);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                s.rx_err = Some(e.kind());
                wake(&mut s.rx_waker);
                return;
            }
        }
    }
}

/// Sends what the owner queued, swapping `tx` with its own buffer; after the close, sends what
/// is left (bounded by [`CLOSE_TIMEOUT`]) and shuts the write side.
async fn writer(sock: Rc<TcpStream>, shared: Rc<RefCell<Shared>>, doorbell: Rc<Notify>) {
    let mut out: Vec<u8> = Vec::new();
    loop {
        let (idle, closing) = {
            let mut s = shared.borrow_mut();
            if s.tx.is_empty() || s.tx_err.is_some() {
                (true, s.closed)
            } else {
                std::mem::swap(&mut s.tx, &mut out);
                s.tx_inflight = true;
                (false, s.closed)
            }
        };
        if idle {
            if closing {
                break;
            }
            doorbell.notified().await;
            continue;
        }
        let res = if closing {
            match tokio::time::timeout(CLOSE_TIMEOUT, sock.write_all(out)).await {
                Ok((res, b)) => {
                    out = b;
                    res
                }
                Err(_) => {
                    shared.borrow_mut().tx_err = Some(io::ErrorKind::TimedOut);
                    break;
                }
            }
        } else {
            let (res, b) = sock.write_all(out).await;
            out = b;
            res
        };
        out.clear();
        let mut s = shared.borrow_mut();
        s.tx_inflight = false;
        if let Err(e) = res {
            s.tx_err = Some(e.kind());
            s.tx.clear();
        }
        wake(&mut s.tx_waker);
    }
    let _ = sock.shutdown(Shutdown::Both);
}

/// Copies unread bytes into `buf`; `Ready` with nothing at EOF.
fn poll_read_inner(
    inner: &Inner,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let mut s = inner.shared.borrow_mut();
    if !s.rx.is_empty() {
        let n = buf.remaining().min(s.rx.len());
        buf.put_slice(&s.rx[..n]);
        let was_full = s.rx.len() >= RX_CAP;
        s.rx.drain(..n);
        if was_full {
            inner.reader.notify_one();
        }
        return Poll::Ready(Ok(()));
    }
    if let Some(kind) = s.rx_err {
        return Poll::Ready(Err(kind.into()));
    }
    if s.rx_eof {
        return Poll::Ready(Ok(()));
    }
    register(&mut s.rx_waker, cx);
    Poll::Pending
}

/// Queues as much of `data` as fits under [`TX_CAP`].
fn poll_write_inner(inner: &Inner, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    let mut s = inner.shared.borrow_mut();
    if let Some(kind) = s.tx_err {
        return Poll::Ready(Err(kind.into()));
    }
    if data.is_empty() {
        return Poll::Ready(Ok(0));
    }
    let room = TX_CAP.saturating_sub(s.tx.len());
    if room == 0 {
        register(&mut s.tx_waker, cx);
        return Poll::Pending;
    }
    let n = room.min(data.len());
    let was_empty = s.tx.is_empty();
    s.tx.extend_from_slice(&data[..n]);
    if was_empty {
        inner.writer.notify_one();
    }
    Poll::Ready(Ok(n))
}

/// `Ready` once everything queued has been handed to the kernel.
fn poll_flush_inner(inner: &Inner, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let mut s = inner.shared.borrow_mut();
    if let Some(kind) = s.tx_err {
        return Poll::Ready(Err(kind.into()));
    }
    if s.tx.is_empty() && !s.tx_inflight {
        return Poll::Ready(Ok(()));
    }
    register(&mut s.tx_waker, cx);
    Poll::Pending
}

/// Flushes, then shuts the write side (FIN).
fn poll_shutdown_inner(inner: &Inner, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    match poll_flush_inner(inner, cx) {
        Poll::Ready(Ok(())) => {
            let _ = inner.sock.shutdown(Shutdown::Write);
            Poll::Ready(Ok(()))
        }
        other => other,
    }
}

/// `AsyncRead` for a type holding `inner: Rc<Inner>`: the stream and its read half share it.
macro_rules! impl_async_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                poll_read_inner(&self.inner, cx, buf)
            }
        }
    };
}

/// `AsyncWrite` for a type holding `inner: Rc<Inner>`: the stream and its write half share it.
macro_rules! impl_async_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                poll_write_inner(&self.inner, cx, data)
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                poll_flush_inner(&self.inner, cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                poll_shutdown_inner(&self.inner, cx)
            }
        }
    };
}

/// The read half of a [`UringStream`].
pub struct UringRead {
    inner: Rc<Inner>,
}

/// The write half of a [`UringStream`].
pub struct UringWrite {
    inner: Rc<Inner>,
}

impl_async_read!(UringStream);
impl_async_write!(UringStream);
impl_async_read!(UringRead);
impl_async_write!(UringWrite);

impl Transport for UringStream {
    type Read = UringRead;
    type Write = UringWrite;

    fn into_halves(self) -> (UringRead, UringWrite) {
        (
            UringRead {
                inner: Rc::clone(&self.inner),
            },
            UringWrite { inner: self.inner },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair of [`UringStream`]s on loopback (call inside a tokio-uring runtime).
    async fn pair() -> (UringStream, UringStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio_uring::net::TcpListener::from_std(listener);
        let (client, server) = tokio::join!(
            tokio_uring::net::TcpStream::connect(addr),
            listener.accept()
        );
        (
            UringStream::new(client.unwrap()),
            UringStream::new(server.unwrap().0),
        )
    }

    /// Whether io_uring works here; says so when a test is skipped for it.
    fn uring_ok() -> bool {
        match super::super::uring::probe() {
            Ok(()) => true,
            Err(why) => {
                eprintln!("skipped: io_uring unusable here: {why}");
                false
            }
        }
    }

    #[test]
    fn a_megabyte_goes_through_byte_exact_with_bounded_buffers_and_eof_after_shutdown() {
        if !uring_ok() {
            return;
        }
        tokio_uring::start(async {
            let (a, b) = pair().await;
            let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
            let (mut a_rd, mut a_wr) = a.into_halves();
            let sent = data.clone();
            let writer = tokio_uring::spawn(async move {
                // Writes far more than TX_CAP: poll_write must push back, not grow.
                a_wr.write_all(&sent).await.unwrap();
                a_wr.shutdown().await.unwrap();
                a_wr
            });
            let mut b = b;
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), data.len());
            assert!(got == data, "bytes differ");
            let _a_wr = writer.await.unwrap();
            // The other direction still works after a half close.
            b.write_all(b"pong").await.unwrap();
            b.flush().await.unwrap();
            let mut four = [0u8; 4];
            a_rd.read_exact(&mut four).await.unwrap();
            assert_eq!(&four, b"pong");
        });
    }

    #[test]
    fn bytes_written_just_before_the_drop_are_still_delivered_then_the_peer_sees_eof() {
        if !uring_ok() {
            return;
        }
        tokio_uring::start(async {
            let (mut a, mut b) = pair().await;
            a.write_all(b"last words").await.unwrap();
            drop(a);
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), b.read_to_end(&mut got))
                .await
                .expect("eof within 2 s")
                .unwrap();
            assert_eq!(got, b"last words");
        });
    }

    #[test]
    fn a_write_to_a_closed_peer_fails_instead_of_hanging() {
        if !uring_ok() {
            return;
        }
        tokio_uring::start(async {
            let (mut a, b) = pair().await;
            drop(b);
            let chunk = vec![0u8; 64 * 1024];
            let outcome = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    a.write_all(&chunk).await?;
                    a.flush().await?;
                }
            })
            .await;
            let err: io::Result<()> = outcome.expect("the failure shows within 5 s");
            assert!(err.is_err());
        });
    }
}
