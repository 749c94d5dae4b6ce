//! A tokio-uring TCP socket seen as tokio's `AsyncRead` / `AsyncWrite`, so the shared connection
//! handler and call loop (through the readiness adapter, `transport::Ready`) and rustls (through
//! tokio-rustls, i.e. `ClientConnection::read_tls` / `write_tls` on in-memory buffers) run on the
//! io_uring driver. A ring-native transport (the call loop's owned-buffer operations submitted
//! straight to the ring) is the next step.
//!
//! ```text
//!  kernel ──IORING_OP_RECV into the socket's buffer──▶ rx ──poll_read──▶ call loop / rustls
//!  kernel ◀─IORING_OP_SEND from the socket's buffer─── tx ◀─poll_write── call loop / rustls
//! ```
//!
//! The operations belong to the stream itself: at most one recv and one send in flight per
//! socket, each an [`InFlightOneshot`] stored in the stream (built with tokio-uring's public
//! [`UnsubmittedOneshot`], which takes any submission entry), and polled by whoever reads or
//! writes: the call's own task. No helper task, no `Notify`, no extra wake-up per frame (a task
//! hop per frame is measurable against the ~15 µs a frame costs, README "Runtimes"). `RECV` and
//! `SEND` rather than tokio-uring's `READ` / `WRITE` skip the kernel's generic file read/write
//! path.
//!
//! - **Reads:** a recv in flight owns the socket's receive buffer; `poll_read` starts one when
//!   nothing unread is left and polls it. Dropping a read future (the call loop's `select!` does
//!   every turn) cancels nothing: the operation stays in the stream, so no bytes are lost.
//! - **Writes:** `poll_write` queues into `tx` (bounded by [`TX_CAP`]: above it, `Pending` until a
//!   send completes) and starts a send when none is in flight, so what is written goes to the
//!   kernel at once unless a send is still in flight. `poll_flush` is `Ready` once nothing waits
//!   behind a send in flight (everything is handed to the kernel, as after a `write` syscall); it
//!   does not wait for the completion, so the writer is not woken once more per frame. Sends carry
//!   `MSG_WAITALL` (the kernel finishes a send before completing it); a short send is resent from
//!   where it stopped at the next write, flush or shutdown. `poll_shutdown` waits for every send
//!   to complete, then sends the FIN.
//! - **Buffers** are owned by the stream for its life and handed to the kernel and back (`Vec`s
//!   moved into the operation, never copied, never reallocated once warm): 0 allocations per
//!   frame (`tests/no_alloc_uring.rs`). The receive buffer is initialised once (zeros), so the
//!   kernel writes into initialised memory and no `unsafe` `set_len` is needed.
//! - **Close:** dropping both halves shuts the read side at once (which ends a recv in flight),
//!   and what was written but not yet sent still goes out (a small closing task, bounded by
//!   [`CLOSE_TIMEOUT`]) before the write side is shut and the descriptor closed.
//!
//! Soundness without `unsafe` in this file: a submission entry carries a raw pointer into a
//! buffer; the buffer (a `Vec`, whose heap block does not move when the `Vec` does) is moved into
//! the operation's stable data together with a handle on the socket, and tokio-uring keeps that
//! data alive until the kernel posts the completion, even when the operation is dropped first.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::{cqueue, opcode, types};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_uring::net::TcpStream;
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

use super::transport::{Ready, Transport};
use super::CLOSE_TIMEOUT;

/// Unsent bytes accepted before `poll_write` returns `Pending`.
pub const TX_CAP: usize = 64 * 1024;

/// The size of the socket's own receive buffer, which each recv fills: Twilio frames are ~400
/// bytes and deltas a few KiB; a bigger message takes more recvs.
const RECV_BUFFER_BYTES: usize = 4 * 1024;

/// What a recv or send in flight owns: the buffer the kernel reads or writes, and the socket, so
/// neither goes away before the completion.
pub struct OpData {
    buf: Vec<u8>,
    _sock: Rc<TcpStream>,
}

/// Turns a completion into the byte count (or the error) and hands the buffer back.
pub struct OpResult;

impl OneshotOutputTransform for OpResult {
    type Output = (io::Result<usize>, Vec<u8>);
    type StoredData = OpData;

    fn transform_oneshot_output(self, data: OpData, cqe: cqueue::Entry) -> Self::Output {
        let res = cqe.result();
        let out = if res >= 0 {
            Ok(res as usize)
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        (out, data.buf)
    }
}

/// A recv or send in flight.
type InFlight = InFlightOneshot<OpData, OpResult>;

/// Starts a recv into all of `buf` (its length, initialised memory).
fn submit_recv(sock: &Rc<TcpStream>, mut buf: Vec<u8>) -> InFlight {
    let entry = opcode::Recv::new(
        types::Fd(sock.as_raw_fd()),
        buf.as_mut_ptr(),
        buf.len() as u32,
    )
    .build();
    let data = OpData {
        buf,
        _sock: Rc::clone(sock),
    };
    UnsubmittedOneshot::new(data, OpResult, entry).submit()
}

/// Starts a send of all of `buf`; `MSG_NOSIGNAL`: a closed peer is an `EPIPE`, not a signal;
/// `MSG_WAITALL`: the kernel completes it only when all is sent (or on an error).
fn submit_send(sock: &Rc<TcpStream>, buf: Vec<u8>) -> InFlight {
    let entry = opcode::Send::new(types::Fd(sock.as_raw_fd()), buf.as_ptr(), buf.len() as u32)
        .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
        .build();
    let data = OpData {
        buf,
        _sock: Rc::clone(sock),
    };
    UnsubmittedOneshot::new(data, OpResult, entry).submit()
}

/// One socket's state (one thread; shared by the two halves).
struct Io {
    sock: Rc<TcpStream>,
    /// The recv in flight, if any (it owns the receive buffer).
    recv: Option<InFlight>,
    /// The receive buffer when no recv owns it: `rx[rx_pos..rx_end]` is received and unread.
    rx: Vec<u8>,
    rx_pos: usize,
    rx_end: usize,
    /// The peer closed its side (or the read side was shut).
    rx_eof: bool,
    /// The last recv failed.
    rx_err: Option<io::ErrorKind>,
    /// The send in flight, if any (it owns the buffer being sent).
    send: Option<InFlight>,
    /// Written, not yet handed to a send.
    tx: Vec<u8>,
    /// The buffer of the last completed send, reused for the next one.
    tx_spare: Vec<u8>,
    /// A send failed: every later write fails.
    tx_err: Option<io::ErrorKind>,
}

impl Io {
    /// The state of a fresh socket: nothing in flight, buffers empty (they grow on first use).
    fn new(sock: Rc<TcpStream>) -> Io {
        Io {
            sock,
            recv: None,
            rx: Vec::new(),
            rx_pos: 0,
            rx_end: 0,
            rx_eof: false,
            rx_err: None,
            send: None,
            tx: Vec::new(),
            tx_spare: Vec::new(),
            tx_err: None,
        }
    }

    /// Copies unread bytes into `buf`, starting and polling a recv when there are none.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.rx_pos < self.rx_end {
                let n = buf.remaining().min(self.rx_end - self.rx_pos);
                buf.put_slice(&self.rx[self.rx_pos..self.rx_pos + n]);
                self.rx_pos += n;
                if self.rx_pos == self.rx_end {
                    // Everything taken: the next recv goes in flight now, so bytes (or the
                    // peer's close) arriving before the next read are already received (the
                    // pool's liveness check looks with a single poll).
                    self.start_recv();
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(kind) = self.rx_err {
                return Poll::Ready(Err(kind.into()));
            }
            if self.rx_eof {
                return Poll::Ready(Ok(()));
            }
            self.start_recv();
            let Some(op) = self.recv.as_mut() else {
                continue;
            };
            let (res, b) = match Pin::new(op).poll(cx) {
                Poll::Pending => {
                    // Reads are polled every loop turn: a good moment to re-send the rest of a
                    // short send that completed since (nothing else would look at it until the
                    // next write).
                    self.reap_send();
                    return Poll::Pending;
                }
                Poll::Ready(done) => done,
            };
            self.recv = None;
            self.rx = b;
            (self.rx_pos, self.rx_end) = (0, 0);
            match res {
                Ok(0) => self.rx_eof = true,
                Ok(n) => self.rx_end = n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.rx_err = Some(e.kind()),
            }
        }
    }

    /// Puts a recv in flight into the receive buffer, unless one is, or unread bytes, the end or
    /// an error are there.
    fn start_recv(&mut self) {
        if self.recv.is_some() || self.rx_eof || self.rx_err.is_some() {
            return;
        }
        (self.rx_pos, self.rx_end) = (0, 0);
        let mut b = std::mem::take(&mut self.rx);
        if b.len() < RECV_BUFFER_BYTES {
            // Once per socket: from here on the buffer stays initialised.
            b.resize(RECV_BUFFER_BYTES, 0);
        }
        self.recv = Some(submit_recv(&self.sock, b));
    }

    /// Queues as much of `data` as fits under [`TX_CAP`] and starts a send if none is in flight.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(kind) = self.tx_err {
            return Poll::Ready(Err(kind.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Reap a send that completed (freeing the slot for the next one; frames come ms apart,
        // so it usually has), without asking to be woken when it has not.
        self.reap_send();
        if self.tx.len() >= TX_CAP {
            // Full: wait for the send in flight (this registers the waker), then send the rest.
            if self.send.is_some() && self.poll_send_done(cx).is_pending() {
                return Poll::Pending;
            }
            self.start_send();
        }
        if let Some(kind) = self.tx_err {
            return Poll::Ready(Err(kind.into()));
        }
        let n = (TX_CAP - self.tx.len()).min(data.len());
        self.tx.extend_from_slice(&data[..n]);
        self.start_send();
        Poll::Ready(Ok(n))
    }

    /// Hands `tx` to a new send when none is in flight (swapping buffers, not copying).
    fn start_send(&mut self) {
        if self.send.is_none() && !self.tx.is_empty() && self.tx_err.is_none() {
            let mut out = std::mem::take(&mut self.tx_spare);
            out.clear();
            std::mem::swap(&mut out, &mut self.tx);
            self.send = Some(submit_send(&self.sock, out));
        }
    }

    /// Takes the result of a send that has completed, if one has (re-sending the rest of a short
    /// one), without registering a waker: the completion of a send with nothing behind it must
    /// not wake the writer for another loop turn. Only while nothing is queued behind the send:
    /// then a flush is waiting for it with its own waker, which a no-op waker must not replace.
    fn reap_send(&mut self) {
        if self.send.is_some() && self.tx.is_empty() {
            let _ = self.poll_send_done(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }

    /// `flush`: `Ready` once nothing waits behind a send in flight (all written bytes are handed
    /// to the kernel). Only the send in flight is waited for, not the one started after it, so
    /// the writer is not woken once more for a send with nothing behind it.
    fn poll_handed_over(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.tx.is_empty() {
            if self.send.is_some() && self.poll_send_done(cx).is_pending() {
                return Poll::Pending;
            }
            self.start_send();
        }
        match self.tx_err {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Drives sends until nothing is queued or in flight (`Ready(Ok)`), one is pending, or one
    /// failed: what shutdown and close wait for.
    fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(kind) = self.tx_err {
                return Poll::Ready(Err(kind.into()));
            }
            if self.send.is_none() {
                if self.tx.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                self.start_send();
            }
            if self.poll_send_done(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Polls the send in flight, if any; once it completed, takes its result.
    fn poll_send_done(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(op) = self.send.as_mut() else {
            return Poll::Ready(());
        };
        let (res, b) = match Pin::new(op).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(done) => done,
        };
        self.send = None;
        self.on_send_done(res, b);
        Poll::Ready(())
    }

    /// A send completed with `res`, handing back its buffer `b`: recycle it, or re-send the rest
    /// of a short send ahead of what was queued meanwhile, or remember the error.
    fn on_send_done(&mut self, res: io::Result<usize>, mut b: Vec<u8>) {
        match res {
            Ok(n) if n == b.len() => {
                b.clear();
                self.tx_spare = b;
            }
            Ok(0) => {
                self.tx_err = Some(io::ErrorKind::WriteZero);
                self.tx.clear();
            }
            Ok(n) => {
                // A short send: the rest goes first, then what was queued meanwhile (rare: one
                // copy).
                b.drain(..n);
                b.extend_from_slice(&self.tx);
                self.tx.clear();
                self.send = Some(submit_send(&self.sock, b));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.send = Some(submit_send(&self.sock, b));
            }
            Err(e) => {
                self.tx_err = Some(e.kind());
                self.tx.clear();
            }
        }
    }
}

/// What the halves share. Its drop (when both halves are gone) starts the close.
struct Inner {
    io: RefCell<Io>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let io = self.io.get_mut();
        // Ends a recv in flight (it completes with 0; tokio-uring keeps its buffer until then).
        let _ = io.sock.shutdown(Shutdown::Read);
        io.recv = None;
        // Outside a runtime (the worker is being torn down) nothing can be sent any more.
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        if !in_runtime || io.tx_err.is_some() || (io.send.is_none() && io.tx.is_empty()) {
            // A send still in flight is ended by the shutdown (EPIPE), which frees the socket.
            let _ = io.sock.shutdown(Shutdown::Both);
            return;
        }
        // Written before the drop, so it still goes out (bounded, the same way as any send),
        // then FIN.
        let mut io = std::mem::replace(io, Io::new(Rc::clone(&io.sock)));
        tokio_uring::spawn(async move {
            let drained = std::future::poll_fn(|cx| io.poll_drained(cx));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, drained).await;
            let _ = io.sock.shutdown(Shutdown::Both);
        });
    }
}

/// A tokio-uring `TcpStream` as an `AsyncRead + AsyncWrite` stream. Must be used inside a
/// tokio-uring runtime (its operations are submitted to the current thread's ring).
pub struct UringStream {
    inner: Rc<Inner>,
}

impl UringStream {
    /// Wraps a connected socket. Buffers start empty and grow to what the socket's messages need.
    pub fn new(sock: TcpStream) -> UringStream {
        UringStream {
            inner: Rc::new(Inner {
                io: RefCell::new(Io::new(Rc::new(sock))),
            }),
        }
    }
}

/// Flushes, then shuts the write side (FIN).
fn poll_shutdown_inner(inner: &Inner, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let mut io = inner.io.borrow_mut();
    match io.poll_drained(cx) {
        Poll::Ready(Ok(())) => {
            let _ = io.sock.shutdown(Shutdown::Write);
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
                self.inner.io.borrow_mut().poll_read(cx, buf)
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
                self.inner.io.borrow_mut().poll_write(cx, data)
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.inner.io.borrow_mut().poll_handed_over(cx)
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

impl UringStream {
    /// Splits the stream into its `AsyncRead` and `AsyncWrite` halves (sharing the socket's state
    /// on this thread, no lock).
    pub fn into_split(self) -> (UringRead, UringWrite) {
        (
            UringRead {
                inner: Rc::clone(&self.inner),
            },
            UringWrite { inner: self.inner },
        )
    }
}

/// Seen by the call loop through the readiness adapter (the stream runs its own operations).
impl Transport for UringStream {
    type Recv = Ready<UringRead>;
    type Send = Ready<UringWrite>;

    fn into_halves(self) -> (Ready<UringRead>, Ready<UringWrite>) {
        let (rd, wr) = self.into_split();
        (Ready::new(rd), Ready::new(wr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
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

    /// Whether io_uring works here (a ring can be set up: not refused by the kernel, seccomp or
    /// a memlock limit); says so when a test is skipped for it.
    fn uring_ok() -> bool {
        match io_uring::IoUring::new(8) {
            Ok(_) => true,
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
            let (mut a_rd, mut a_wr) = a.into_split();
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
    fn writes_push_back_once_tx_cap_bytes_wait_behind_a_send_in_flight() {
        use futures_util::FutureExt as _;
        if !uring_ok() {
            return;
        }
        tokio_uring::start(async {
            let (mut a, _b) = pair().await;
            // One synchronous stretch: completions are only taken when the worker parks.
            let wrote = |r: Option<io::Result<usize>>| r.map(|r| r.unwrap());
            assert_eq!(wrote(a.write(&[1; 100]).now_or_never()), Some(100), "sent");
            let big = vec![2u8; TX_CAP];
            assert_eq!(wrote(a.write(&big).now_or_never()), Some(TX_CAP), "queued");
            assert!(
                a.write(b"x").now_or_never().is_none(),
                "TX_CAP bytes wait behind the send in flight: push back"
            );
            // Once the send completes, room comes back.
            tokio::time::timeout(Duration::from_secs(2), a.flush())
                .await
                .expect("flushed within 2 s")
                .unwrap();
            assert_eq!(wrote(a.write(b"x").now_or_never()), Some(1));
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
