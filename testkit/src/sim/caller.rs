//! The simulated caller's IO shell (tokio): one inbound call, exactly as Twilio places it.
//!
//! ```text
//!  run_call ─ POST /api/twilio/voice (form, X-Twilio-Signature) ──────────▶ callbridge
//!           ◀ TwiML: <Connect><Stream url=wss://…> … <Redirect>  (or a fallback: stop here)
//!           ─ GET {stream path} Upgrade: websocket, x-twilio-signature ──▶
//!           ⇄ StreamSession: connected, start, media every 20 ms, dtmf, stop  /  media, mark, clear
//!           ─ if callbridge closed first: POST the <Redirect> URL (signed) ─▶ after-stream TwiML
//! ```
//!
//! All protocol logic is in the sans-IO parts ([`super::webhook`], [`super::twiml`],
//! [`super::stream`]); this file only moves bytes and reads the clock. We connect to
//! `proxy_addr` but speak as if to the public name of the URLs (Host header, signed URLs), the
//! way Twilio reaches callbridge through a load balancer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};

use callbridge_core::wire::ws::{self, Decoder, Encoder, Message, Role};

use super::script::{Script, FRAME_MS};
use super::stream::{FrameStep, StreamConfig, StreamReport, StreamSession};
use super::twiml::{split_http_url, StreamVerb, Twiml};
use super::webhook::{
    form_encode, parse_response, sid, signature, voice_params, write_request, CallIdentity,
    HttpClientError, HttpResponse,
};

/// Path of the voice webhook (the number's Voice URL).
pub const VOICE_PATH: &str = "/api/twilio/voice";

/// How long Twilio waits for a webhook answer (protocol.md 1.2: 15 s by default, unconfirmed).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long we wait for the WebSocket upgrade answer; Twilio gives up after a few seconds.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long we wait for callbridge's close after our `stop` + close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest WebSocket message accepted from callbridge. Its `media` carry OpenAI deltas
/// unchanged, a few KB of base64 each; 1 MiB leaves room without letting a bug eat memory.
pub const MAX_WS_MESSAGE: usize = 1024 * 1024;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One simulated call.
#[derive(Debug, Clone)]
pub struct CallerConfig {
    /// Where callbridge listens (we connect here).
    pub proxy_addr: SocketAddr,
    /// The public name in URLs, `Host` headers and signatures (callbridge's `PUBLIC_HOST`);
    /// `None`: the address itself.
    pub public_host: Option<String>,
    /// Twilio auth token; `Some`: sign every request like Twilio.
    pub auth_token: Option<String>,
    /// `CallSid`.
    pub call_sid: String,
    /// `AccountSid`.
    pub account_sid: String,
    /// `streamSid` of the Media Stream.
    pub stream_sid: String,
    /// `From`.
    pub from: String,
    /// `To` (selects the agent).
    pub to: String,
    /// Extra webhook parameters (e.g. `CallerName`), sent and signed.
    pub extra_params: Vec<(String, String)>,
    /// What the caller says.
    pub script: Script,
    /// `Some(call_no)`: tag frames (see `script::tag_frame`).
    pub frame_tag: Option<u32>,
    /// Observer of the stream (the load test's clocks and frame checks).
    pub probe: Option<std::sync::Arc<dyn super::probe::StreamProbe>>,
    /// Keep every received payload in the report (default); the load test turns it off.
    pub keep_payloads: bool,
}

impl CallerConfig {
    /// Call number `n` to `proxy_addr`: SIDs derived from `n` (`CA…n`, `MZ…n`), a Japanese
    /// caller and number, unsigned, untagged.
    pub fn new(proxy_addr: SocketAddr, n: u32, script: Script) -> Self {
        CallerConfig {
            proxy_addr,
            public_host: None,
            auth_token: None,
            call_sid: sid("CA", u128::from(n)),
            account_sid: sid("AC", 1),
            stream_sid: sid("MZ", u128::from(n)),
            from: "+819012345678".to_owned(),
            to: "+81501234567".to_owned(),
            extra_params: Vec::new(),
            script,
            frame_tag: None,
            probe: None,
            keep_payloads: true,
        }
    }

    /// The host used in URLs and `Host` headers.
    fn host(&self) -> String {
        self.public_host
            .clone()
            .unwrap_or_else(|| self.proxy_addr.to_string())
    }

    /// What the webhook says about the call.
    fn identity(&self) -> CallIdentity {
        CallIdentity {
            call_sid: self.call_sid.clone(),
            account_sid: self.account_sid.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            extra: self.extra_params.clone(),
        }
    }
}

/// How the call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The script ran to its end; the caller hung up (`stop`, close 1000).
    Completed,
    /// callbridge closed the stream first (close frame with this code); the TwiML after
    /// `</Connect>` ran (see [`CallReport::after_stream`]).
    ProxyClosed {
        /// The close code, `None` for a close frame without one.
        code: Option<u16>,
    },
    /// The connection dropped without a close frame; treated like a close.
    StreamLost,
    /// callbridge sent bytes that are not valid WebSocket; we closed with the matching code.
    WsProtocolError {
        /// What was wrong.
        reason: String,
    },
    /// TwiML without a `<Connect><Stream>` (busy `<Say><Hangup/>`, `<Dial><Conference>`,
    /// `<Reject/>`): no stream was opened.
    Fallback,
    /// The webhook answered a non-2xx status: the caller hears Twilio's application error.
    WebhookRefused {
        /// The status.
        status: u16,
    },
    /// The webhook answered something Twilio cannot execute.
    InvalidTwiml {
        /// Why.
        reason: String,
    },
    /// The WebSocket upgrade was refused with this status.
    UpgradeRefused {
        /// The status.
        status: u16,
    },
}

/// The TwiML fetched after the stream (the `<Redirect>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterStream {
    /// The URL requested (signed as is).
    pub url: String,
    /// Response status.
    pub status: u16,
    /// Response body (TwiML).
    pub twiml: String,
    /// Time to the complete answer.
    pub latency: Duration,
}

/// Everything one simulated call saw.
#[derive(Debug, Clone, PartialEq)]
pub struct CallReport {
    /// `CallSid`.
    pub call_sid: String,
    /// How it ended.
    pub outcome: CallOutcome,
    /// Status of the voice webhook answer.
    pub webhook_status: u16,
    /// Body of the voice webhook answer.
    pub twiml: String,
    /// Time from connecting to the complete webhook answer.
    pub webhook_latency: Duration,
    /// The conference of a `<Dial><Conference>` fallback.
    pub conference: Option<String>,
    /// The `<Stream url>` used.
    pub stream_url: Option<String>,
    /// Time from connecting to the `101` answer.
    pub upgrade_latency: Option<Duration>,
    /// What happened on the stream.
    pub stream: Option<StreamReport>,
    /// The TwiML fetched after callbridge closed the stream.
    pub after_stream: Option<AfterStream>,
}

/// A failure of the simulator's own IO (not a finding about callbridge).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing came back in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An unreadable HTTP response.
    #[error("http: {0}")]
    Http(#[from] HttpClientError),
    /// An unreadable WebSocket handshake answer (other than a refusal).
    #[error("websocket handshake: {0}")]
    Handshake(ws::HandshakeError),
    /// A URL we cannot request.
    #[error("bad url {0:?}")]
    BadUrl(String),
}

/// Places one call; see the module docs.
pub async fn run_call(cfg: CallerConfig) -> Result<CallReport, SimError> {
    let url = format!("https://{}{VOICE_PATH}", cfg.host());
    let params = voice_params(&cfg.identity(), "ringing");
    let started = Instant::now();
    let resp = request(&cfg, "POST", &url, &params).await?;
    let mut report = CallReport {
        call_sid: cfg.call_sid.clone(),
        outcome: CallOutcome::Fallback,
        webhook_status: resp.status,
        twiml: String::from_utf8_lossy(&resp.body).into_owned(),
        webhook_latency: started.elapsed(),
        conference: None,
        stream_url: None,
        upgrade_latency: None,
        stream: None,
        after_stream: None,
    };
    if !(200..300).contains(&resp.status) {
        report.outcome = CallOutcome::WebhookRefused {
            status: resp.status,
        };
        return Ok(report);
    }
    let twiml = match std::str::from_utf8(&resp.body)
        .map_err(|e| e.to_string())
        .and_then(|doc| Twiml::parse(doc).map_err(|e| e.to_string()))
    {
        Ok(t) => t,
        Err(reason) => {
            report.outcome = CallOutcome::InvalidTwiml { reason };
            return Ok(report);
        }
    };
    report.conference = twiml.conference().map(str::to_owned);
    let Some(stream) = twiml.stream() else {
        return Ok(report);
    };
    report.stream_url = Some(stream.url.clone());
    let run = run_stream(&cfg, stream).await?;
    report.upgrade_latency = run.upgrade_latency;
    report.stream = run.report;
    report.outcome = run.outcome;
    let closed_by_proxy = matches!(
        report.outcome,
        CallOutcome::ProxyClosed { .. } | CallOutcome::StreamLost
    );
    if let (true, Some(redirect)) = (closed_by_proxy, twiml.redirect_after_stream()) {
        let params = voice_params(&cfg.identity(), "in-progress");
        let started = Instant::now();
        let resp = request(&cfg, &redirect.method, &redirect.url, &params).await?;
        report.after_stream = Some(AfterStream {
            url: redirect.url.clone(),
            status: resp.status,
            twiml: String::from_utf8_lossy(&resp.body).into_owned(),
            latency: started.elapsed(),
        });
    }
    Ok(report)
}

/// One signed webhook request to `url` (answered by `proxy_addr`): `POST` with a form body, or
/// `GET` with the parameters in the query (then the signed URL includes them).
async fn request(
    cfg: &CallerConfig,
    method: &str,
    url: &str,
    params: &[(String, String)],
) -> Result<HttpResponse, SimError> {
    let (signed_url, body) = if method == "GET" {
        let sep = if url.contains('?') { '&' } else { '?' };
        (format!("{url}{sep}{}", form_encode(params)), String::new())
    } else {
        (url.to_owned(), form_encode(params))
    };
    let (host, path) = split_http_url(&signed_url).ok_or_else(|| SimError::BadUrl(url.into()))?;
    let sig = cfg.auth_token.as_deref().map(|token| {
        let signed_params = if method == "GET" { &[][..] } else { params };
        signature(token, &signed_url, signed_params)
    });
    let mut headers = Vec::new();
    if let Some(sig) = &sig {
        headers.push(("X-Twilio-Signature", sig.as_str()));
    }
    let mut out = Vec::new();
    write_request(&mut out, method, host, path, &headers, body.as_bytes());
    let exchange = async {
        let mut sock = TcpStream::connect(cfg.proxy_addr).await?;
        sock.write_all(&out).await?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let n = sock.read(&mut chunk).await?;
            buf.extend_from_slice(&chunk[..n]);
            if let Some(resp) = parse_response(&buf, n == 0)? {
                return Ok(resp);
            }
        }
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| SimError::Timeout("webhook answer"))?
}

/// What the stream part produced.
struct StreamRun {
    /// How it ended.
    outcome: CallOutcome,
    /// Time to the `101`.
    upgrade_latency: Option<Duration>,
    /// The session report (none if the upgrade was refused).
    report: Option<StreamReport>,
}

/// Opens the Media Stream and runs the script on a real 20 ms clock.
async fn run_stream(cfg: &CallerConfig, stream: &StreamVerb) -> Result<StreamRun, SimError> {
    let started = Instant::now();
    let sock = TcpStream::connect(cfg.proxy_addr).await?;
    sock.set_nodelay(true)?;
    let (mut rd, mut wr) = sock.into_split();
    let key = ws::new_client_key();
    let sig = cfg
        .auth_token
        .as_deref()
        .map(|token| signature(token, &stream.url, &[]));
    // Twilio sends the signature header in lower case on the upgrade (protocol.md 3.1).
    let mut headers = vec![("user-agent", "Twilio.TmeWs/1.0")];
    if let Some(sig) = &sig {
        headers.push(("x-twilio-signature", sig.as_str()));
    }
    let mut out = Vec::new();
    ws::write_client_handshake(&mut out, &stream.host, &stream.path, &key, &headers);
    wr.write_all(&out).await?;
    out.clear();
    let mut inbuf = Vec::new();
    let upgrade = async {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            match ws::parse_handshake_response(&inbuf, &key) {
                Ok(Some(head_len)) => return Ok(Ok(head_len)),
                Ok(None) => {}
                Err(ws::HandshakeError::Rejected { status, .. }) => return Ok(Err(status)),
                Err(e) => return Err(SimError::Handshake(e)),
            }
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                return Err(SimError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            inbuf.extend_from_slice(&chunk[..n]);
        }
    };
    let upgraded = tokio::time::timeout(UPGRADE_TIMEOUT, upgrade)
        .await
        .map_err(|_| SimError::Timeout("websocket upgrade"))??;
    let head_len = match upgraded {
        Ok(n) => n,
        Err(status) => {
            return Ok(StreamRun {
                outcome: CallOutcome::UpgradeRefused { status },
                upgrade_latency: Some(started.elapsed()),
                report: None,
            })
        }
    };
    let upgrade_latency = Some(started.elapsed());
    inbuf.drain(..head_len);
    let mut session = StreamSession::new(stream_config(cfg, stream), Instant::now().into_std());
    session.set_probe(cfg.probe.clone());
    session.set_keep_payloads(cfg.keep_payloads);
    let mut link = Link {
        session,
        enc: Encoder::new(Role::Client),
        dec: Decoder::new(Role::Client, MAX_WS_MESSAGE),
        inbuf,
        msgs: Vec::new(),
        out,
    };
    let outcome = link.run(&mut rd, &mut wr).await?;
    let report = link.session.report(Instant::now().into_std());
    Ok(StreamRun {
        outcome,
        upgrade_latency,
        report: Some(report),
    })
}

/// The session's configuration for this call and stream.
fn stream_config(cfg: &CallerConfig, stream: &StreamVerb) -> StreamConfig {
    StreamConfig {
        account_sid: cfg.account_sid.clone(),
        call_sid: cfg.call_sid.clone(),
        stream_sid: cfg.stream_sid.clone(),
        custom_parameters: stream.parameters.clone(),
        script: cfg.script.clone(),
        frame_tag: cfg.frame_tag,
    }
}

/// How reading frames ended, when it did.
enum Closed {
    /// A close frame with this code.
    Frame(Option<u16>),
    /// Invalid WebSocket bytes.
    Protocol(ws::WsError),
}

/// An upgraded stream: the session plus the WebSocket codec and buffers.
struct Link {
    /// Twilio's side of the stream.
    session: StreamSession,
    /// Client-side frame encoder (masks).
    enc: Encoder,
    /// Client-side frame decoder.
    dec: Decoder,
    /// Bytes read and not yet decoded.
    inbuf: Vec<u8>,
    /// JSON messages the session produced, to send.
    msgs: Vec<String>,
    /// Encoded frames to write.
    out: Vec<u8>,
}

impl Link {
    /// The stream's event loop: a 20 ms ticker (missed ticks burst, like a real stream catching
    /// up), the next mark echo deadline, and the socket.
    async fn run(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
    ) -> Result<CallOutcome, SimError> {
        self.session.open(&mut self.msgs);
        self.flush(wr).await?;
        let mut ticker = tokio::time::interval(Duration::from_millis(u64::from(FRAME_MS)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut chunk = vec![0u8; READ_CHUNK];
        // Frames that arrived with the 101 answer.
        if let Some(closed) = self.decode_all(Instant::now()) {
            return self.on_closed(closed, wr).await;
        }
        loop {
            let deadline = self.session.poll_timeout().map(Instant::from_std);
            tokio::select! {
                _ = ticker.tick() => {
                    let now = Instant::now().into_std();
                    if self.session.send_next_frame(now, &mut self.msgs) == FrameStep::Stopped {
                        self.flush(wr).await?;
                        return self.hang_up(rd, wr).await;
                    }
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.session.handle_timeout(Instant::now().into_std(), &mut self.msgs);
                }
                read = rd.read(&mut chunk) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(CallOutcome::StreamLost);
                    }
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    if let Some(closed) = self.decode_all(Instant::now()) {
                        self.flush(wr).await?;
                        return self.on_closed(closed, wr).await;
                    }
                }
            }
            self.flush(wr).await?;
        }
    }

    /// After our `stop`: close 1000 and wait for callbridge's close (or EOF), still reading.
    async fn hang_up(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
    ) -> Result<CallOutcome, SimError> {
        self.enc.close(&mut self.out, 1000, "");
        wr.write_all(&self.out).await?;
        self.out.clear();
        let mut chunk = vec![0u8; READ_CHUNK];
        let drain = async {
            loop {
                let n = rd.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<_, SimError>(());
                }
                self.inbuf.extend_from_slice(&chunk[..n]);
                if self.decode_all(Instant::now()).is_some() {
                    return Ok(());
                }
            }
        };
        // A missing close after our stop is callbridge's problem, not the call's outcome.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        let _ = wr.shutdown().await;
        Ok(CallOutcome::Completed)
    }

    /// callbridge closed first (or broke the protocol): answer the close and report.
    async fn on_closed(
        &mut self,
        closed: Closed,
        wr: &mut OwnedWriteHalf,
    ) -> Result<CallOutcome, SimError> {
        let outcome = match closed {
            Closed::Frame(code) => {
                // Echo the code (RFC 6455 5.5.1); 1005 "no code" cannot be sent, so send none.
                self.enc.close(&mut self.out, code.unwrap_or(1000), "");
                CallOutcome::ProxyClosed { code }
            }
            Closed::Protocol(e) => {
                self.enc.close(&mut self.out, e.close_code(), "");
                CallOutcome::WsProtocolError {
                    reason: e.to_string(),
                }
            }
        };
        let _ = wr.write_all(&self.out).await;
        self.out.clear();
        let _ = wr.shutdown().await;
        Ok(outcome)
    }

    /// Decodes every complete frame in `inbuf`, feeding the session; stops at a close.
    fn decode_all(&mut self, now: Instant) -> Option<Closed> {
        let now = now.into_std();
        let mut start = 0;
        let mut closed = None;
        while closed.is_none() {
            let decoded = match self.dec.decode(&mut self.inbuf[start..]) {
                Ok(d) => d,
                Err(e) => {
                    closed = Some(Closed::Protocol(e));
                    break;
                }
            };
            let consumed = decoded.consumed;
            match decoded.message {
                None if consumed == 0 => break,
                None | Some(Message::Pong(_)) => {}
                Some(Message::Text(text)) => self.session.handle_text(now, text, &mut self.msgs),
                Some(Message::Binary(bin)) => self.session.handle_binary(now, bin),
                Some(Message::Ping(payload)) => self.enc.pong(&mut self.out, payload),
                Some(Message::Close { code, .. }) => closed = Some(Closed::Frame(code)),
            }
            start += consumed;
        }
        self.inbuf.drain(..start);
        closed
    }

    /// Encodes the session's messages as text frames and writes everything pending.
    async fn flush(&mut self, wr: &mut OwnedWriteHalf) -> Result<(), SimError> {
        for msg in self.msgs.drain(..) {
            self.enc.text(&mut self.out, msg.as_bytes());
        }
        if !self.out.is_empty() {
            wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// Sleeps until `deadline`; never completes for `None` (the `select!` guard disables it).
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! One call against a fake callbridge on 127.0.0.1 (real sockets, real clock: the timing
    //! assertions leave tens of ms of slack for a loaded machine).

    use super::*;
    use crate::sim::webhook::signature;
    use tokio::net::TcpListener;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const HOST: &str = "bridge.example.com";
    const WSS: &str = "wss://bridge.example.com/api/twilio/media-stream/c_1";

    /// Reads one HTTP request (head and Content-Length body) and returns it as text.
    async fn read_request(sock: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text[..head_end]
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.parse::<usize>().unwrap());
                if buf.len() >= head_end + 4 + len {
                    return text;
                }
            }
        }
    }

    fn header<'a>(req: &'a str, name: &str) -> Option<&'a str> {
        req.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    async fn answer(sock: &mut TcpStream, body: &str) {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await.unwrap();
    }

    /// The next text message from the caller; `None` on close.
    async fn next_text(
        sock: &mut TcpStream,
        dec: &mut Decoder,
        buf: &mut Vec<u8>,
    ) -> Option<String> {
        let mut chunk = [0u8; 4096];
        loop {
            let d = dec.decode(&mut buf[..]).unwrap();
            let consumed = d.consumed;
            let msg = match d.message {
                Some(Message::Text(t)) => Some(Some(String::from_utf8(t.to_vec()).unwrap())),
                Some(Message::Close { .. }) => Some(None),
                _ => None,
            };
            buf.drain(..consumed);
            if let Some(m) = msg {
                return m;
            }
            if consumed == 0 {
                let n = sock.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    /// Reads caller messages until one with `event` (media frames keep flowing meanwhile).
    async fn wait_event(
        sock: &mut TcpStream,
        dec: &mut Decoder,
        buf: &mut Vec<u8>,
        event: &str,
    ) -> serde_json::Value {
        loop {
            let text = next_text(sock, dec, buf).await.expect("stream open");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["event"] == event {
                return v;
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_streams_plays_marks_clears_and_follows_the_redirect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = tokio::spawn(async move {
            // 1. The voice webhook, signed over the public https URL.
            let (mut s, _) = listener.accept().await.unwrap();
            let req = read_request(&mut s).await;
            assert!(req.starts_with("POST /api/twilio/voice HTTP/1.1\r\n"));
            assert_eq!(header(&req, "Host"), Some(HOST));
            assert_eq!(header(&req, "X-Twilio-Signature").map(str::len), Some(28));
            let twiml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"{WSS}\"><Parameter name=\"token\" value=\"t&amp;1\"/></Stream></Connect><Redirect method=\"POST\">https://{HOST}/api/twilio/after-stream/c_1?n=1&amp;m=2</Redirect></Response>"
            );
            answer(&mut s, &twiml).await;
            drop(s);
            // 2. The stream upgrade, signed over the exact wss:// URL.
            let (mut s, _) = listener.accept().await.unwrap();
            let req = read_request(&mut s).await;
            assert!(req.starts_with("GET /api/twilio/media-stream/c_1 HTTP/1.1\r\n"));
            let expected_sig = signature(TOKEN, WSS, &[]);
            assert_eq!(
                header(&req, "x-twilio-signature"),
                Some(expected_sig.as_str())
            );
            let key = header(&req, "Sec-WebSocket-Key").unwrap();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                ws::accept_key(key)
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            let mut dec = Decoder::new(Role::Server, 1 << 20);
            let mut enc = Encoder::new(Role::Server);
            let mut buf = Vec::new();
            let connected = wait_event(&mut s, &mut dec, &mut buf, "connected").await;
            assert_eq!(connected["protocol"], "Call");
            let start = next_text(&mut s, &mut dec, &mut buf).await.unwrap();
            let start: serde_json::Value = serde_json::from_str(&start).unwrap();
            assert_eq!(start["start"]["customParameters"]["token"], "t&1");
            let sid = start["streamSid"].as_str().unwrap().to_owned();
            // 3. 100 ms of item_A, then 1 s of item_B cleared 200 ms in.
            let mut out = Vec::new();
            let media = |bytes: usize| {
                use base64::Engine;
                let p = base64::engine::general_purpose::STANDARD.encode(vec![0x55u8; bytes]);
                format!(r#"{{"event":"media","streamSid":"{sid}","media":{{"payload":"{p}"}}}}"#)
            };
            let mark = |name: &str| {
                format!(r#"{{"event":"mark","streamSid":"{sid}","mark":{{"name":"{name}"}}}}"#)
            };
            enc.text(&mut out, media(800).as_bytes());
            enc.text(&mut out, mark("e=0;i=item_A;ms=100").as_bytes());
            s.write_all(&out).await.unwrap();
            out.clear();
            let sent = Instant::now();
            let echo = wait_event(&mut s, &mut dec, &mut buf, "mark").await;
            assert_eq!(echo["mark"]["name"], "e=0;i=item_A;ms=100");
            assert!(
                sent.elapsed() >= Duration::from_millis(95),
                "{:?}",
                sent.elapsed()
            );
            enc.text(&mut out, media(8000).as_bytes());
            enc.text(&mut out, mark("e=0;i=item_B;ms=1000").as_bytes());
            s.write_all(&out).await.unwrap();
            out.clear();
            // A wait the protocol needs: the caller plays audio in real time, and what this test
            // checks is that a clear 200 ms into item_B's playout reports ~200 ms played.
            tokio::time::sleep(Duration::from_millis(200)).await;
            enc.text(
                &mut out,
                format!(r#"{{"event":"clear","streamSid":"{sid}"}}"#).as_bytes(),
            );
            s.write_all(&out).await.unwrap();
            out.clear();
            let echo = wait_event(&mut s, &mut dec, &mut buf, "mark").await;
            assert_eq!(echo["mark"]["name"], "e=0;i=item_B;ms=1000");
            // 4. callbridge ends the AI part.
            enc.close(&mut out, 1000, "done");
            s.write_all(&out).await.unwrap();
            assert_eq!(next_text(&mut s, &mut dec, &mut buf).await, None);
            drop(s);
            // 5. Twilio follows the <Redirect>.
            let (mut s, _) = listener.accept().await.unwrap();
            let req = read_request(&mut s).await;
            assert!(req.starts_with("POST /api/twilio/after-stream/c_1?n=1&m=2 HTTP/1.1\r\n"));
            assert!(req.contains("CallStatus=in-progress"));
            answer(&mut s, "<Response><Hangup/></Response>").await;
        });
        let mut cfg = CallerConfig::new(addr, 1, Script::hello_then_hang_up(10_000));
        cfg.public_host = Some(HOST.to_owned());
        cfg.auth_token = Some(TOKEN.to_owned());
        let report = run_call(cfg).await.unwrap();
        proxy.await.unwrap();
        assert_eq!(
            report.outcome,
            CallOutcome::ProxyClosed { code: Some(1000) }
        );
        assert_eq!(report.stream_url.as_deref(), Some(WSS));
        let stream = report.stream.unwrap();
        assert!(stream.violations.is_empty(), "{:?}", stream.violations);
        assert!(stream.frames_sent > 0 && !stream.stop_sent);
        assert_eq!(stream.media.len(), 2);
        let clear = &stream.clears[0];
        assert_eq!(clear.item_id.as_deref(), Some("item_B"));
        assert!(
            (180..=300).contains(&clear.item_played_ms),
            "played {} ms",
            clear.item_played_ms
        );
        assert_eq!(stream.items[0].played_ms(), 100);
        let after = report.after_stream.unwrap();
        assert_eq!(after.twiml, "<Response><Hangup/></Response>");
        assert_eq!(
            after.url,
            "https://bridge.example.com/api/twilio/after-stream/c_1?n=1&m=2"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_hangs_up_with_stop_after_its_script_and_a_fallback_opens_no_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let req = read_request(&mut s).await;
            assert_eq!(
                header(&req, "X-Twilio-Signature"),
                None,
                "no token: unsigned"
            );
            let host = header(&req, "Host").unwrap().to_owned();
            let twiml = format!(
                "<Response><Connect><Stream url=\"wss://{host}/s/1\"/></Connect></Response>"
            );
            answer(&mut s, &twiml).await;
            drop(s);
            let (mut s, _) = listener.accept().await.unwrap();
            let req = read_request(&mut s).await;
            let key = header(&req, "Sec-WebSocket-Key").unwrap();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                ws::accept_key(key)
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            let (mut dec, mut buf) = (Decoder::new(Role::Server, 1 << 20), Vec::new());
            let mut events = Vec::new();
            while let Some(text) = next_text(&mut s, &mut dec, &mut buf).await {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                events.push(v["event"].as_str().unwrap().to_owned());
            }
            let mut out = Vec::new();
            Encoder::new(Role::Server).close(&mut out, 1000, "");
            s.write_all(&out).await.unwrap();
            assert_eq!(
                events,
                ["connected", "start", "media", "media", "media", "stop"]
            );
            // A second call gets the human fallback.
            let (mut s, _) = listener.accept().await.unwrap();
            read_request(&mut s).await;
            answer(
                &mut s,
                "<Response><Say>x</Say><Dial><Conference>room-1</Conference></Dial></Response>",
            )
            .await;
        });
        let script = Script::new(vec![crate::sim::script::Segment::Silence { ms: 60 }]).unwrap();
        let report = run_call(CallerConfig::new(addr, 2, script.clone()))
            .await
            .unwrap();
        assert_eq!(report.outcome, CallOutcome::Completed);
        let stream = report.stream.unwrap();
        assert!(stream.stop_sent);
        assert_eq!(stream.frames_sent, 3);
        assert!(report.after_stream.is_none());
        let report = run_call(CallerConfig::new(addr, 3, script)).await.unwrap();
        proxy.await.unwrap();
        assert_eq!(report.outcome, CallOutcome::Fallback);
        assert_eq!(report.conference.as_deref(), Some("room-1"));
        assert!(report.stream.is_none());
    }
}
