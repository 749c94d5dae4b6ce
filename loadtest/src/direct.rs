//! Direct mode: the generator's own latency floor, without the proxy.
//!
//! ```text
//!  proxy mode:   caller ─loopback─▶ callbridge (process) ─loopback─▶ mock
//!  direct mode:  caller ─loopback─▶ facade task: bridge::Call ⇄ MockSession (function calls)
//! ```
//!
//! The facade is a small in-process stand-in for the proxy: it answers the webhook with a
//! `<Connect><Stream>`, accepts the WebSocket, and runs callbridge's own sans-IO
//! [`callbridge_core::bridge::Call`] with the mock session behind it as plain function calls, in the
//! same task. The callers, their frames, tags, clocks and checks are exactly those of proxy mode;
//! what is gone is the proxy process, its scheduling, and the second loopback hop with its
//! WebSocket framing. What remains is what the generator itself adds: one loopback hop, the
//! callers' and the mock's work, and the runtime's queueing under the same load. Latencies
//! measured this way are the floor the proxy-mode numbers should be read against.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use callbridge_core::bridge::{Call, CallConfig, Leg};
use callbridge_core::openai::session::AgentSettings;
use callbridge_core::twilio::twiml::connect_stream;
use callbridge_core::wire::form::Form;
use callbridge_core::wire::http::{self, Limits, Parsed};
use callbridge_core::wire::ws::{self, Decoder, Encoder, Message, Role};
use callbridge_testkit::mock::{MockConfig, MockSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Time allowed for one HTTP request to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest caller message: callbridge's own limit.
const MAX_MESSAGE: usize = callbridge::runtime::call_loop::MAX_TWILIO_MESSAGE_BYTES;

/// Path prefix of the facade's stream URLs.
const STREAM_PREFIX: &str = "/direct/";

/// The running facade.
pub struct Facade {
    /// Where callers connect.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Facade {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Facade {
    /// Listens on 127.0.0.1 (ephemeral port); every stream gets a mock session made from `mock`.
    pub async fn start(mock: MockConfig) -> anyhow::Result<Facade> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the direct-mode facade")?;
        let addr = listener.local_addr()?;
        let mock = Arc::new(mock);
        let agent = Arc::new(AgentSettings::default());
        let task = tokio::spawn(async move {
            let mut conn_no = 0u64;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                conn_no += 1;
                let (mock, agent) = (Arc::clone(&mock), Arc::clone(&agent));
                tokio::spawn(async move {
                    // The facade reports only its own IO failures (the callers report the rest).
                    if let Err(e) = connection(stream, conn_no, mock, agent).await {
                        eprintln!("direct facade connection: {e:#}");
                    }
                });
            }
        });
        Ok(Facade { addr, task })
    }
}

/// Reads one request from `stream` (`buf` keeps what follows it).
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<http::Request> {
    let limits = Limits::default();
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        match http::parse_request(buf, &limits) {
            Ok(Parsed::Complete { request, consumed }) => {
                buf.drain(..consumed);
                return Ok(request);
            }
            Ok(Parsed::Partial) => {}
            Err(e) => anyhow::bail!("bad request: {e}"),
        }
        buf.reserve(4096);
        let n = tokio::time::timeout_at(deadline, stream.read_buf(buf))
            .await
            .context("request timed out")??;
        anyhow::ensure!(n > 0, "peer closed before a whole request");
    }
}

/// One connection: the webhook (answered and closed) or a stream (upgraded and run).
async fn connection(
    mut stream: TcpStream,
    conn_no: u64,
    mock: Arc<MockConfig>,
    agent: Arc<AgentSettings>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let req = read_request(&mut stream, &mut buf).await?;
    let mut out = Vec::with_capacity(4096);
    if req.method == "POST" {
        let form = Form::parse(&req.body).map_err(|e| anyhow::anyhow!("form: {e}"))?;
        let call_sid = form.get("CallSid").context("no CallSid")?;
        let host = req.header("host").unwrap_or("127.0.0.1");
        // No <Redirect>: the call ends with the stream.
        let twiml = connect_stream(&format!("wss://{host}{STREAM_PREFIX}{call_sid}"), &[], "");
        http::write_response(&mut out, 200, "text/xml", twiml.as_bytes(), false, &[]);
        stream.write_all(&out).await?;
        return Ok(());
    }
    let call_sid = req
        .path
        .strip_prefix(STREAM_PREFIX)
        .context("unknown path")?
        .to_owned();
    let accept = ws::check_upgrade(&req).map_err(|e| anyhow::anyhow!("upgrade: {e}"))?;
    ws::write_upgrade_response(&mut out, &accept);
    stream.write_all(&out).await?;
    out.clear();
    let mut mock_cfg = (*mock).clone();
    mock_cfg.id_prefix = format!("D{conn_no}x");
    run_stream(stream, buf, &call_sid, mock_cfg, agent).await
}

/// The call loop: caller socket ⇄ `Call` ⇄ `MockSession`, all in this task.
async fn run_stream(
    stream: TcpStream,
    mut input: Vec<u8>,
    call_sid: &str,
    mock_cfg: MockConfig,
    agent: Arc<AgentSettings>,
) -> anyhow::Result<()> {
    let now = Instant::now();
    let mut call = Call::new(CallConfig::new("gpt-realtime", agent, call_sid), now);
    let mut mock = MockSession::new(mock_cfg, now);
    let (mut rd, mut wr) = stream.into_split();
    let mut dec = Decoder::new(Role::Server, MAX_MESSAGE);
    let mut enc = Encoder::new(Role::Server);
    let (mut out, mut scratch) = (Vec::with_capacity(16 * 1024), Vec::with_capacity(16 * 1024));
    let mut caller_open = true;
    let mut mock_open = true;
    loop {
        let now = Instant::now();
        pump(
            &mut call,
            &mut mock,
            &mut mock_open,
            &mut enc,
            &mut out,
            &mut scratch,
            now,
        );
        while call.poll_event().is_some() {}
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if call.is_ended() || !caller_open {
            break;
        }
        let deadline = [call.poll_timeout(), mock.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        input.reserve(16 * 1024);
        tokio::select! {
            r = rd.read_buf(&mut input) => {
                let now = Instant::now();
                match r {
                    Ok(0) | Err(_) => {
                        caller_open = false;
                        call.handle_twilio_closed(now);
                    }
                    Ok(_) => {
                        let mut start = 0;
                        loop {
                            let d = match dec.decode(&mut input[start..]) {
                                Ok(d) => d,
                                Err(e) => {
                                    enc.close(&mut out, e.close_code(), "");
                                    caller_open = false;
                                    call.handle_twilio_closed(now);
                                    break;
                                }
                            };
                            let consumed = d.consumed;
                            match d.message {
                                None if consumed == 0 => break,
                                Some(Message::Text(text)) => call.handle_twilio_frame(now, text),
                                Some(Message::Close { .. }) => {
                                    enc.close(&mut out, 1000, "");
                                    caller_open = false;
                                    call.handle_twilio_closed(now);
                                }
                                Some(Message::Ping(p)) => enc.pong(&mut out, p),
                                Some(Message::Binary(_)) => call.handle_twilio_binary(now),
                                _ => {}
                            }
                            start += consumed;
                            if !caller_open {
                                break;
                            }
                        }
                        input.drain(..start.min(input.len()));
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                mock.handle_timeout(now);
                call.handle_timeout(now);
            }
        }
    }
    // Every `break` follows a `pump` that drained both sides with no input since: no second pump.
    if caller_open {
        enc.close(&mut out, 1000, "call ended");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        wr.write_all(&out).await?;
        wr.shutdown().await
    })
    .await;
    Ok(())
}

/// Moves frames between the call and the mock until neither has anything more; Twilio-bound
/// frames are WebSocket-encoded into `out`.
fn pump(
    call: &mut Call,
    mock: &mut MockSession,
    mock_open: &mut bool,
    enc: &mut Encoder,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    now: Instant,
) {
    loop {
        let mut moved = false;
        while let Some(tx) = call.poll_transmit(scratch) {
            moved = true;
            let frame = &scratch[..tx.len];
            match tx.leg {
                Leg::Twilio => enc.text(out, frame),
                Leg::OpenAi if *mock_open => {
                    mock.handle_client_text(now, std::str::from_utf8(frame).unwrap_or(""))
                }
                Leg::OpenAi => {}
            }
        }
        while let Some(text) = mock.poll_send() {
            moved = true;
            let mut bytes = text.into_bytes();
            call.handle_openai_frame(now, &mut bytes);
        }
        if *mock_open {
            if let Some((code, why)) = mock.should_close() {
                *mock_open = false;
                call.handle_openai_closed(now, &format!("mock closed {code} {why}"));
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}
