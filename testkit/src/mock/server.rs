//! The IO shell of the mock: a WebSocket server on loopback running one [`MockSession`] per
//! connection, as strict at the door as the real endpoint (protocol.md 5.1):
//!
//! - the path must be `/v1/realtime` with a `model` query parameter;
//! - `Authorization: Bearer …` is required (401 otherwise, with the real API's JSON error);
//! - an `OpenAI-Beta` header is refused (it would select the retired beta protocol);
//! - client frames must be masked (RFC 6455), text only.
//!
//! With [`MockServerConfig::self_check`] every event the mock sends is validated against the
//! server JSON Schema and violations are recorded, so tests catch a mock that drifts from the API.
//!
//! With [`MockServerConfig::tls`] it serves `wss://` like the real endpoint, so the proxy's TLS
//! client (rustls, on both drivers) is exercised end to end against a test CA
//! (`OPENAI_EXTRA_CA_FILE`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{MockConfig, MockSession, MockStats};
use crate::schema::{self, SchemaValidator};
use callbridge_core::wire::http::{self, Limits, Parsed};
use callbridge_core::wire::ws::{self, Decoder, Encoder, Message, Role};

/// Largest client message the mock accepts (the real API's 15 MiB event limit, plus framing).
const MAX_CLIENT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Time allowed for the upgrade request.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the mock server.
#[derive(Clone)]
pub struct MockServerConfig {
    /// The script and behaviour of each session.
    pub session: MockConfig,
    /// Validate every sent event against the server schema (costly; on in tests).
    pub self_check: bool,
    /// Simulated one-way network delay: the handshake answer waits this long, and each frame the
    /// mock sends leaves this long after the session produced it (frames keep their spacing; a
    /// burst is delayed, not spread out).
    pub latency: Duration,
    /// `(n, ms)`: the first `n` connections end after `ms` milliseconds (as a server closing
    /// idle sessions does), whatever the session's script says. For pool tests.
    pub short_sessions: Option<(u64, u64)>,
    /// Keep every non-delta event sent in [`SessionRecord::sent_events`] (on by default; the
    /// load test turns it off so long runs do not grow the generator's memory).
    pub keep_sent_events: bool,
    /// Serve TLS (`wss://`) with this configuration ([`tls_config`]); `None`: plain `ws://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A hung server: each session stops reading its socket (but keeps it open and keeps
    /// sending what it has) once it has received this many bytes of caller audio. For tests of
    /// a peer that stops reading.
    pub stop_reading_after_audio_bytes: Option<u64>,
}

impl std::fmt::Debug for MockServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServerConfig")
            .field("session", &self.session)
            .field("self_check", &self.self_check)
            .field("latency", &self.latency)
            .field("short_sessions", &self.short_sessions)
            .field("keep_sent_events", &self.keep_sent_events)
            .field("tls", &self.tls.is_some())
            .field(
                "stop_reading_after_audio_bytes",
                &self.stop_reading_after_audio_bytes,
            )
            .finish()
    }
}

/// Why a TLS certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MockTlsError {
    /// The certificate PEM holds no certificate, or does not parse.
    #[error("TLS certificate: {0}")]
    Certificate(String),
    /// The key PEM holds no private key, or does not parse.
    #[error("TLS key: {0}")]
    Key(String),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A TLS server configuration from a PEM certificate chain and its PEM private key.
pub fn tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, MockTlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(cert_pem))
        .collect::<Result<_, _>>()
        .map_err(|e| MockTlsError::Certificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(MockTlsError::Certificate("no PEM certificate found".into()));
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(key_pem))
        .map_err(|e| MockTlsError::Key(e.to_string()))?
        .ok_or_else(|| MockTlsError::Key("no PEM private key found".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MockTlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| MockTlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

impl Default for MockServerConfig {
    fn default() -> Self {
        let session = MockConfig {
            validate_client: Arc::new(strict_client_check),
            ..MockConfig::default()
        };
        MockServerConfig {
            session,
            self_check: false,
            latency: Duration::ZERO,
            short_sessions: None,
            keep_sent_events: true,
            tls: None,
            stop_reading_after_audio_bytes: None,
        }
    }
}

/// The mock's client-event check: the client JSON Schema (by event type) and the beta-era
/// fields the schema cannot see.
pub fn strict_client_check(event: &serde_json::Value) -> Result<(), String> {
    SchemaValidator::client().validate(event)?;
    let beta = schema::beta_fields(event);
    if beta.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "beta-era fields are not part of the GA interface: {}",
            beta.join(", ")
        ))
    }
}

/// What one connection did, for tests and the demo.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Connection number (1, 2, …) in accept order.
    pub conn_no: u64,
    /// When the upgrade completed.
    pub opened_at: Instant,
    /// When the connection ended (close frame or EOF), if it has.
    pub closed_at: Option<Instant>,
    /// How it ended.
    pub close_reason: String,
    /// The session's counters and records (updated when the connection ends).
    pub stats: MockStats,
    /// Every server event sent except audio and transcript deltas, as JSON text, in order.
    pub sent_events: Vec<String>,
    /// Server-schema violations of events the mock sent (with `self_check`).
    pub schema_violations: Vec<String>,
}

/// A running mock server.
pub struct MockServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it serves `wss://`.
    tls: bool,
    records: Arc<Mutex<Vec<Arc<Mutex<SessionRecord>>>>>,
    shutdown: watch::Sender<bool>,
}

impl MockServer {
    /// Binds `listen` and serves until dropped or [`MockServer::stop`]ped.
    pub async fn start(listen: SocketAddr, cfg: MockServerConfig) -> std::io::Result<MockServer> {
        // The schema validators compile on first use, most of a second in a debug build. Done
        // in a session's task, that holds up a worker of the runtime the mock shares with a
        // test, and with it the runtime's IO and timers: the test's own client sees a prompt
        // answer up to a second late. So they are compiled here, on a blocking thread.
        let self_check = cfg.self_check;
        let _ = tokio::task::spawn_blocking(move || {
            SchemaValidator::client();
            if self_check {
                SchemaValidator::server();
            }
        })
        .await;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let tls = cfg.tls.is_some();
        let records: Arc<Mutex<Vec<Arc<Mutex<SessionRecord>>>>> = Arc::default();
        let (shutdown, mut rx) = watch::channel(false);
        let recs = Arc::clone(&records);
        let cfg = Arc::new(cfg);
        tokio::spawn(async move {
            let mut conn_no = 0;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        conn_no += 1;
                        let (cfg, recs) = (Arc::clone(&cfg), Arc::clone(&recs));
                        let mut session_cfg = cfg.session.clone();
                        session_cfg.id_prefix = format!("{}{conn_no}x", session_cfg.id_prefix);
                        if let Some((n, ms)) = cfg.short_sessions {
                            if conn_no <= n {
                                session_cfg.max_session_ms = Some(ms);
                            }
                        }
                        tokio::spawn(async move {
                            let _ = stream.set_nodelay(true);
                            match cfg.tls.clone() {
                                None => connection(stream, conn_no, cfg, session_cfg, recs).await,
                                Some(tls) => {
                                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                                    let handshake = tokio::time::timeout(UPGRADE_TIMEOUT, acceptor.accept(stream));
                                    if let Ok(Ok(stream)) = handshake.await {
                                        connection(stream, conn_no, cfg, session_cfg, recs).await;
                                    }
                                }
                            }
                        });
                    }
                    _ = rx.changed() => return,
                }
            }
        });
        Ok(MockServer {
            addr,
            tls,
            records,
            shutdown,
        })
    }

    /// The `ws://` URL callbridge should use.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/realtime?model=gpt-realtime", self.addr)
    }

    /// A snapshot of every session so far (live ones with stats as of their last update).
    pub fn sessions(&self) -> Vec<SessionRecord> {
        let recs = self.records.lock().unwrap_or_else(|e| e.into_inner());
        recs.iter()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// How many sessions have not ended yet.
    pub fn open_sessions(&self) -> usize {
        let recs = self.records.lock().unwrap_or_else(|e| e.into_inner());
        recs.iter()
            .filter(|r| {
                r.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .closed_at
                    .is_none()
            })
            .count()
    }

    /// Removes the records of the sessions that have ended and returns them, so a long load
    /// test (thousands of sessions per step) does not accumulate them.
    pub fn take_closed_sessions(&self) -> Vec<SessionRecord> {
        let mut recs = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = Vec::new();
        recs.retain(|r| {
            let rec = r.lock().unwrap_or_else(|e| e.into_inner());
            if rec.closed_at.is_some() {
                closed.push(rec.clone());
                false
            } else {
                true
            }
        });
        closed
    }

    /// Stops accepting.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn refuse(status: u16, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": null, "param": null}}).to_string();
    let mut out = Vec::new();
    http::write_response(
        &mut out,
        status,
        "application/json",
        body.as_bytes(),
        false,
        &[],
    );
    out
}

/// Reads and checks the upgrade request; `Err` is the refusal to send.
async fn accept_upgrade<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(String, Vec<u8>), Vec<u8>> {
    let mut buf = Vec::with_capacity(2048);
    let limits = Limits::default();
    let deadline = tokio::time::Instant::now() + UPGRADE_TIMEOUT;
    let req = loop {
        match http::parse_request(&buf, &limits) {
            Ok(Parsed::Complete { request, consumed }) => {
                buf.drain(..consumed);
                break request;
            }
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(refuse(e.status(), &e.to_string())),
        }
        buf.reserve(2048);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(Vec::new()),
        }
    };
    if req.path != "/v1/realtime" {
        return Err(refuse(404, &format!("unknown path {}", req.path)));
    }
    let model_ok = req.query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.strip_prefix("model=").is_some_and(|m| !m.is_empty()))
    });
    if !model_ok {
        return Err(refuse(400, "missing required parameter: 'model'"));
    }
    let bearer = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|k| !k.trim().is_empty());
    if !bearer {
        return Err(refuse(401, "Missing bearer authentication in header"));
    }
    if req.header("openai-beta").is_some() {
        return Err(refuse(
            400,
            "OpenAI-Beta selects the retired beta protocol; the GA interface takes no beta header",
        ));
    }
    let accept = ws::check_upgrade(&req).map_err(|e| refuse(e.status(), &e.to_string()))?;
    Ok((accept, buf))
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    conn_no: u64,
    cfg: Arc<MockServerConfig>,
    session_cfg: MockConfig,
    recs: Arc<Mutex<Vec<Arc<Mutex<SessionRecord>>>>>,
) {
    let (accept, mut input) = match accept_upgrade(&mut stream).await {
        Ok(x) => x,
        Err(refusal) => {
            let _ = stream.write_all(&refusal).await;
            return;
        }
    };
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    let mut out = Vec::with_capacity(4096);
    ws::write_upgrade_response(&mut out, &accept);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    out.clear();
    let record = Arc::new(Mutex::new(SessionRecord {
        conn_no,
        opened_at: Instant::now(),
        closed_at: None,
        close_reason: String::new(),
        stats: MockStats::default(),
        sent_events: Vec::new(),
        schema_violations: Vec::new(),
    }));
    recs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::clone(&record));

    let mut session = MockSession::new(session_cfg, Instant::now());
    let mut decoder = Decoder::new(Role::Server, MAX_CLIENT_MESSAGE_BYTES);
    let mut encoder = Encoder::new(Role::Server);
    // Frames held back by the simulated network: each leaves `latency` after the session
    // produced it (a pipe, not a queue of sleeps: a burst is delayed, not spread out).
    let mut in_flight: std::collections::VecDeque<(tokio::time::Instant, Vec<u8>)> =
        std::collections::VecDeque::new();
    let reason = loop {
        // Send what the session has, then see whether it wants to close.
        while let Some(text) = session.poll_send() {
            if cfg.self_check || cfg.keep_sent_events {
                observe_sent(&record, &text, cfg.self_check);
            }
            if cfg.latency.is_zero() {
                encoder.text(&mut out, text.as_bytes());
            } else {
                let mut frame = Vec::with_capacity(text.len() + 10);
                encoder.text(&mut frame, text.as_bytes());
                in_flight.push_back((tokio::time::Instant::now() + cfg.latency, frame));
            }
        }
        let now = tokio::time::Instant::now();
        while in_flight.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, frame)) = in_flight.pop_front() {
                out.extend_from_slice(&frame);
            }
        }
        let close = session.should_close().filter(|_| in_flight.is_empty());
        if let Some((code, why)) = close {
            encoder.close(&mut out, code, &why);
            let _ = stream.write_all(&out).await;
            break format!("mock closed: {code} {why}");
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                break "write failed".to_owned();
            }
            out.clear();
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        let next_due = in_flight.front().map(|(due, _)| *due);
        input.reserve(16 * 1024);
        let reading = cfg
            .stop_reading_after_audio_bytes
            .is_none_or(|limit| session.stats().input_audio_bytes < limit);
        tokio::select! {
            r = stream.read_buf(&mut input), if reading => {
                match r {
                    Ok(0) | Err(_) => break "client closed the connection without a close frame".to_owned(),
                    Ok(_) => {}
                }
                match feed(&mut session, &mut decoder, &mut encoder, &mut input, &mut out) {
                    Ok(()) => {}
                    Err(why) => {
                        let _ = stream.write_all(&out).await;
                        break why;
                    }
                }
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                session.handle_timeout(Instant::now());
            }
            _ = async { match next_due { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {}
        }
    };
    let mut rec = record.lock().unwrap_or_else(|e| e.into_inner());
    rec.closed_at = Some(Instant::now());
    rec.close_reason = reason;
    rec.stats = session.stats().clone();
}

/// Decodes client frames and hands their text to the session. `Err`: the connection is over.
fn feed(
    session: &mut MockSession,
    decoder: &mut Decoder,
    encoder: &mut Encoder,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut start = 0;
    let result = loop {
        let decoded = match decoder.decode(&mut input[start..]) {
            Ok(d) => d,
            Err(e) => {
                encoder.close(out, e.close_code(), &e.to_string());
                break Err(format!("websocket error from the client: {e}"));
            }
        };
        let consumed = decoded.consumed;
        match decoded.message {
            None if consumed == 0 => break Ok(()),
            None => {}
            Some(Message::Text(text)) => match std::str::from_utf8(text) {
                Ok(text) => session.handle_client_text(Instant::now(), text),
                Err(_) => {
                    encoder.close(out, 1007, "invalid utf-8");
                    break Err("client sent invalid utf-8".to_owned());
                }
            },
            Some(Message::Binary(_)) => {
                encoder.close(out, 1003, "binary frames are not part of the realtime api");
                break Err("client sent a binary frame".to_owned());
            }
            Some(Message::Ping(p)) => encoder.pong(out, p),
            Some(Message::Pong(_)) => {}
            Some(Message::Close { code, .. }) => {
                encoder.close(out, 1000, "");
                break Err(format!(
                    "client closed ({})",
                    code.map_or("no code".to_owned(), |c| c.to_string())
                ));
            }
        }
        start += consumed;
    };
    input.drain(..start.min(input.len()));
    result
}

fn observe_sent(record: &Mutex<SessionRecord>, text: &str, self_check: bool) {
    let is_delta =
        text.contains("\"response.output_audio.delta\"") || text.contains("_transcript.delta\"");
    if !self_check && is_delta {
        return;
    }
    let mut rec = record.lock().unwrap_or_else(|e| e.into_inner());
    if self_check {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => {
                if let Err(e) = SchemaValidator::server().validate(&v) {
                    rec.schema_violations.push(e);
                }
            }
            Err(e) => rec.schema_violations.push(format!("not json: {e}")),
        }
    }
    if !is_delta {
        rec.sent_events.push(text.to_owned());
    }
}
