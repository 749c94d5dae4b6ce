//! What the shared connection handler and call loop need from a driver: a byte stream that splits
//! into a read half and a write half ([`Transport`]), and a way to open the OpenAI leg ([`Dial`]).
//!
//! The epoll driver implements them with tokio's `TcpStream` and [`Connector::connect`]; the
//! io_uring driver with its owned-buffer stream adapter (`runtime::uring_stream`). Everything
//! above these two traits (HTTP, WebSocket, the call's decisions, timers) is written once.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::openai::client::{Conn, ConnectError, Connector};

/// A connected byte stream that can be split into independently used halves without a lock.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Sized {
    /// The read half.
    type Read: AsyncRead + Unpin;
    /// The write half.
    type Write: AsyncWrite + Unpin;
    /// Splits the stream; dropping both halves closes it.
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl Transport for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    fn into_halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

/// Opens a new OpenAI Realtime connection (TCP, TLS, WebSocket handshake done).
pub trait Dial {
    /// The connected stream.
    type Conn: AsyncRead + AsyncWrite + Unpin;
    /// Connects; returns the stream and the bytes that arrived after the handshake response
    /// (the start of the first frames, e.g. `session.created`).
    fn dial(&self) -> impl Future<Output = Result<(Self::Conn, Vec<u8>), ConnectError>>;
}

impl Dial for Connector {
    type Conn = Conn;

    fn dial(&self) -> impl Future<Output = Result<(Conn, Vec<u8>), ConnectError>> {
        self.connect()
    }
}
