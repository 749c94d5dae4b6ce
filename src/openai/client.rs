//! Connecting to the Realtime endpoint: TCP, then rustls for `wss://` (webpki roots plus an
//! optional extra CA file), then the WebSocket opening handshake with `Authorization: Bearer`.
//! No `OpenAI-Beta` header: that would select the retired beta protocol (protocol.md 5.1).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::config::WsUrl;
use callbridge_core::wire::ws;

/// Largest handshake response head accepted (OpenAI's is well under 2 KiB).
const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;

/// Why the connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP connect or IO failed.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// The TLS configuration could not be built.
    #[error("tls setup: {0}")]
    TlsSetup(String),
    /// The server name is not valid for TLS.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// The WebSocket handshake failed (non-101 answer, bad accept key, …).
    #[error("handshake: {0}")]
    Handshake(String),
    /// The whole connect took too long.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A connected byte stream to OpenAI over any transport `S`, plain or TLS.
///
/// The epoll driver uses it over tokio's `TcpStream` ([`Conn`]); the io_uring driver over its
/// owned-buffer stream adapter, so TLS (rustls fed from in-memory buffers) runs on the worker that
/// owns the call.
pub enum WsConn<S> {
    /// `ws://` (local mock).
    Plain(S),
    /// `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

/// A connection over tokio's `TcpStream` (the epoll driver).
pub type Conn = WsConn<TcpStream>;

/// Opens a new OpenAI Realtime connection (TCP, TLS, WebSocket handshake done). Each driver has
/// its own (the io_uring driver's runs TCP on its ring); the pool wraps one.
pub trait Dial {
    /// The connected stream (rustls through tokio's traits on both drivers today).
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsConn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            WsConn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsConn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WsConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WsConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsConn::Plain(s) => Pin::new(s).poll_flush(cx),
            WsConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WsConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Makes connections to one Realtime endpoint. Cheap to share (`Arc`).
pub struct Connector {
    url: WsUrl,
    api_key: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
}

impl Connector {
    /// A connector for `url`; TLS is set up when the URL is `wss://`.
    pub fn new(
        url: WsUrl,
        api_key: Option<String>,
        extra_ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let tls = if url.tls {
            Some(tls_connector(extra_ca_pem)?)
        } else {
            None
        };
        Ok(Connector {
            url,
            api_key,
            tls,
            timeout,
        })
    }

    /// The endpoint's host name (or address) and port, for transports that connect themselves.
    pub fn host_port(&self) -> (&str, u16) {
        (&self.url.host, self.url.port)
    }

    /// Runs `connect` (TCP + TLS + WebSocket handshake, over any transport) bounded by the
    /// connect timeout.
    pub async fn bounded<T>(
        &self,
        connect: impl std::future::Future<Output = Result<T, ConnectError>>,
    ) -> Result<T, ConnectError> {
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout(self.timeout)),
        }
    }

    /// Connects and completes the WebSocket handshake. Returns the stream and any bytes that
    /// arrived after the handshake response (the start of the first frames).
    pub async fn connect(&self) -> Result<(Conn, Vec<u8>), ConnectError> {
        self.bounded(self.connect_inner()).await
    }

    async fn connect_inner(&self) -> Result<(Conn, Vec<u8>), ConnectError> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port)).await?;
        tcp.set_nodelay(true)?;
        self.handshake(tcp).await
    }

    /// TLS (for `wss://`) and the WebSocket opening handshake over an already connected
    /// transport. No timeout of its own: the caller bounds the whole connect with
    /// [`Connector::bounded`].
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tcp: S,
    ) -> Result<(WsConn<S>, Vec<u8>), ConnectError> {
        let mut conn = match &self.tls {
            None => WsConn::Plain(tcp),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
                    .map_err(|_| ConnectError::ServerName(self.url.host.clone()))?;
                WsConn::Tls(Box::new(tls.connect(name, tcp).await?))
            }
        };
        let key = ws::new_client_key();
        let auth = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth));
        }
        let mut req = Vec::with_capacity(512);
        ws::write_client_handshake(
            &mut req,
            &self.url.host_header(),
            &self.url.path_and_query,
            &key,
            &headers,
        );
        conn.write_all(&req).await?;
        conn.flush().await?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(ConnectError::Handshake(
                    "connection closed during the handshake".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            match ws::parse_handshake_response(&buf, &key) {
                Ok(Some(head_len)) => {
                    let rest = buf.split_off(head_len);
                    return Ok((conn, rest));
                }
                Ok(None) if buf.len() > MAX_HANDSHAKE_BYTES => {
                    return Err(ConnectError::Handshake("response head too large".into()))
                }
                Ok(None) => {}
                Err(e) => return Err(ConnectError::Handshake(e.to_string())),
            }
        }
    }
}

fn tls_connector(extra_ca_pem: Option<&[u8]>) -> Result<tokio_rustls::TlsConnector, ConnectError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_ca_pem {
        let mut reader = io::BufReader::new(pem);
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut reader) {
            let cert = cert.map_err(|e| ConnectError::TlsSetup(format!("extra CA file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ConnectError::TlsSetup(format!("extra CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(ConnectError::TlsSetup(
                "extra CA file has no PEM certificate".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_setup_works_with_the_webpki_roots_and_refuses_a_bad_ca_file() {
        assert!(tls_connector(None).is_ok());
        assert!(matches!(
            tls_connector(Some(b"not a pem")),
            Err(ConnectError::TlsSetup(_))
        ));
    }

    #[tokio::test]
    async fn a_connect_that_hangs_ends_at_the_connect_timeout() {
        let url = WsUrl::parse("ws://127.0.0.1:9/").unwrap();
        let c = Connector::new(url, None, None, Duration::from_millis(50)).unwrap();
        let r = c
            .bounded(std::future::pending::<Result<(), ConnectError>>())
            .await;
        assert!(matches!(r, Err(ConnectError::Timeout(t)) if t == Duration::from_millis(50)));
    }
}
