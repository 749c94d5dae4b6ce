//! What the connection handler and the call loop need from a socket: a byte stream split into a
//! receiving half and a sending half, whose operations own their buffers.
//!
//! An operation is started with a buffer ([`RecvHalf::start_recv`], [`SendHalf::start_send`]) and
//! polled to completion, which hands the buffer back ([`RecvHalf::poll_recv`],
//! [`SendHalf::poll_send`]). At most one receive and one send are in flight per stream, and an
//! operation in flight belongs to its half, not to the future that awaits it: dropping that
//! future (the call loop's `select!` does, every turn) cancels nothing, and nothing is lost.
//!
//! That fits both kinds of driver:
//!
//! - **completion-based** (io_uring): `start_*` submits the operation with the buffer, which the
//!   kernel owns until the completion; `poll_*` looks for the completion. No copy, and no
//!   buffer the kernel could write into after it was freed;
//! - **readiness-based** (epoll): [`Ready`] keeps the buffer and does the `read`/`write` when
//!   polled, through tokio's `AsyncRead`/`AsyncWrite`.
//!
//! The OpenAI leg is TLS through tokio-rustls on both drivers today, so it comes in through
//! [`Ready`] too (over the io_uring driver's own stream adapter).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a receive asks room for when the buffer has less than [`MIN_RECV_SPACE`] free. Twilio
/// frames are ~400 bytes and deltas a few KiB, so 2 KiB receives lose nothing (a bigger message
/// takes a second receive). Buffers start empty and grow to what a connection's messages need
/// (amortised doubling), then stay there, and shrink back once empty above [`SHRINK_ABOVE`].
pub const READ_CHUNK: usize = 2 * 1024;

/// Free space below which a receive first reserves [`READ_CHUNK`] more.
pub const MIN_RECV_SPACE: usize = 512;

/// An empty buffer with more capacity than this (after a burst, a big message, a slow peer) is
/// shrunk back to [`READ_CHUNK`], so a connection's memory returns to its resting size. Above
/// every regular frame size, so the hot path never reallocates.
pub const SHRINK_ABOVE: usize = 64 * 1024;

/// Makes room in `buf` for a receive (see [`READ_CHUNK`]).
pub fn room_to_recv(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < MIN_RECV_SPACE {
        buf.reserve(READ_CHUNK);
    }
}

/// Shrinks an emptied buffer that grew past [`SHRINK_ABOVE`].
pub fn shrink_if_idle(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
        buf.shrink_to(READ_CHUNK);
    }
}

/// The receiving half of a stream.
pub trait RecvHalf {
    /// Starts a receive into the spare capacity of `buf`, appending to what it holds (the caller
    /// reserves room first). Only when no receive is in flight.
    fn start_recv(&mut self, buf: Vec<u8>);

    /// The receive's outcome once it completes: the bytes appended (0 at the end of the stream)
    /// and the buffer. `Pending` until then; must not be called with no receive started.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<(io::Result<usize>, Vec<u8>)>;
}

/// The outcome of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Bytes taken from the front of the buffer (at least one unless the buffer was empty).
    pub n: usize,
    /// Whether everything taken is also flushed. A stream that holds written bytes (TLS records,
    /// a send still in flight) says `false`, and the caller flushes with an empty send.
    pub flushed: bool,
}

/// The sending half of a stream.
pub trait SendHalf {
    /// Starts sending a prefix of `buf` (the caller drops what [`Sent::n`] says was taken when
    /// the buffer comes back). With `buf` empty, flushes what the stream holds. Only when no send
    /// is in flight.
    fn start_send(&mut self, buf: Vec<u8>);

    /// The send's outcome once it completes, and the buffer (unchanged). `Pending` until then;
    /// must not be called with no send started.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<(io::Result<Sent>, Vec<u8>)>;

    /// Flushes and sends the end of the stream (FIN). Only when no send is in flight.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A connected stream that splits into independently used halves without a lock; dropping both
/// halves closes it.
pub trait Transport {
    /// The receiving half.
    type Recv: RecvHalf;
    /// The sending half.
    type Send: SendHalf;
    /// Splits the stream.
    fn into_halves(self) -> (Self::Recv, Self::Send);
}

/// Receives once into `buf` (see [`RecvHalf::start_recv`]). Dropping the future leaves the
/// receive in flight in `half`.
pub async fn recv<R: RecvHalf>(half: &mut R, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    half.start_recv(buf);
    poll_fn(|cx| half.poll_recv(cx)).await
}

/// Sends all of `buf`, then flushes; hands the buffer back (emptied on success).
pub async fn send_all<W: SendHalf>(half: &mut W, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let mut flushed = true;
    while !buf.is_empty() || !flushed {
        half.start_send(buf);
        let (result, back) = poll_fn(|cx| half.poll_send(cx)).await;
        buf = back;
        match result {
            Ok(sent) => {
                buf.drain(..sent.n);
                flushed = sent.flushed;
            }
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// Flushes and sends the end of the stream.
pub async fn shutdown<W: SendHalf>(half: &mut W) -> io::Result<()> {
    poll_fn(|cx| half.poll_shutdown(cx)).await
}

/// A readiness-based half (tokio's `AsyncRead` or `AsyncWrite`) seen as a [`RecvHalf`] or
/// [`SendHalf`]: it holds the operation's buffer and reads or writes when polled.
pub struct Ready<T> {
    io: T,
    /// The buffer of the operation in flight.
    op: Option<Vec<u8>>,
}

impl<T> Ready<T> {
    /// Wraps one half.
    pub fn new(io: T) -> Ready<T> {
        Ready { io, op: None }
    }
}

impl<T: AsyncRead + AsyncWrite> Ready<T> {
    /// Splits a readiness-based stream with `tokio::io::split` (a lock shared by the halves,
    /// never contended: both are used by one task).
    pub fn split(
        stream: T,
    ) -> (
        Ready<tokio::io::ReadHalf<T>>,
        Ready<tokio::io::WriteHalf<T>>,
    ) {
        let (rd, wr) = tokio::io::split(stream);
        (Ready::new(rd), Ready::new(wr))
    }
}

impl<T: AsyncRead + Unpin> RecvHalf for Ready<T> {
    fn start_recv(&mut self, buf: Vec<u8>) {
        debug_assert!(self.op.is_none(), "a receive is already in flight");
        self.op = Some(buf);
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<(io::Result<usize>, Vec<u8>)> {
        let buf = self.op.as_mut().expect("poll_recv without start_recv");
        // A readiness read cancelled while pending loses nothing: dropping it here is free.
        let result = std::task::ready!(pin!(self.io.read_buf(buf)).poll(cx));
        Poll::Ready((result, self.op.take().unwrap_or_default()))
    }
}

impl<T: AsyncWrite + Unpin> SendHalf for Ready<T> {
    fn start_send(&mut self, buf: Vec<u8>) {
        debug_assert!(self.op.is_none(), "a send is already in flight");
        self.op = Some(buf);
    }

    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<(io::Result<Sent>, Vec<u8>)> {
        let buf = self.op.as_ref().expect("poll_send without start_send");
        let result = if buf.is_empty() {
            std::task::ready!(Pin::new(&mut self.io).poll_flush(cx)).map(|()| Sent {
                n: 0,
                flushed: true,
            })
        } else {
            match std::task::ready!(Pin::new(&mut self.io).poll_write(cx, buf)) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    // One flush attempt right away: it usually completes at once (a plain
                    // socket; TLS with room in the socket), which saves the caller a turn.
                    let flushed = matches!(self.io.flush().now_or_never(), Some(Ok(())));
                    Ok(Sent { n, flushed })
                }
                Err(e) => Err(e),
            }
        };
        Poll::Ready((result, self.op.take().unwrap_or_default()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Transport for tokio::net::TcpStream {
    type Recv = Ready<tokio::net::tcp::OwnedReadHalf>;
    type Send = Ready<tokio::net::tcp::OwnedWriteHalf>;

    fn into_halves(self) -> (Self::Recv, Self::Send) {
        let (rd, wr) = self.into_split();
        (Ready::new(rd), Ready::new(wr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_cross_a_ready_pair_and_buffers_come_back() {
        let (a, b) = tokio::io::duplex(64);
        let (mut a_rd, mut a_wr) = Ready::split(a);
        let (mut b_rd, mut b_wr) = Ready::split(b);
        // More than the pipe holds: send_all loops over partial sends.
        let message: Vec<u8> = (0..200u8).collect();
        let sender = async {
            let (result, buf) = send_all(&mut a_wr, message.clone()).await;
            result.unwrap();
            assert!(buf.is_empty());
            assert!(buf.capacity() >= 200, "the buffer came back");
            shutdown(&mut a_wr).await.unwrap();
        };
        let receiver = async {
            let mut got = Vec::new();
            loop {
                got.reserve(32);
                let (n, back) = recv(&mut b_rd, got).await;
                got = back;
                if n.unwrap() == 0 {
                    break got;
                }
            }
        };
        let ((), got) = tokio::join!(sender, receiver);
        assert_eq!(got, message);
        // The other direction still works, and an empty send is a flush.
        let (result, _) = send_all(&mut b_wr, b"pong".to_vec()).await;
        result.unwrap();
        b_wr.start_send(Vec::new());
        let (sent, _) = poll_fn(|cx| b_wr.poll_send(cx)).await;
        assert_eq!(
            sent.unwrap(),
            Sent {
                n: 0,
                flushed: true
            }
        );
        let (n, buf) = recv(&mut a_rd, Vec::with_capacity(8)).await;
        assert_eq!((n.unwrap(), &buf[..]), (4, &b"pong"[..]));
    }

    #[tokio::test]
    async fn a_dropped_receive_stays_in_flight_and_loses_nothing() {
        let (a, b) = tokio::io::duplex(64);
        let (_a_rd, mut a_wr) = Ready::split(a);
        let (mut b_rd, _b_wr) = Ready::split(b);
        b_rd.start_recv(Vec::with_capacity(16));
        // Polled once with nothing to read, then abandoned (as a `select!` does).
        assert!(poll_fn(|cx| Poll::Ready(b_rd.poll_recv(cx).is_pending())).await);
        send_all(&mut a_wr, b"late".to_vec()).await.0.unwrap();
        let (n, buf) = poll_fn(|cx| b_rd.poll_recv(cx)).await;
        assert_eq!((n.unwrap(), &buf[..]), (4, &b"late"[..]));
    }
}
