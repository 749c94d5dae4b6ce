//! Shared harness of the integration tests: the real `callbridge serve` binary on loopback, the
//! strict mock OpenAI server in-process, HTTP helpers, and a raw Twilio-side stream for tests that
//! need exact control over each frame.
#![allow(dead_code)]

mod bin;
pub use bin::callbridge_bin;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callbridge_core::wire::ws::{self, Decoder, Encoder, Message, Role};
use callbridge_testkit::mock::server::{MockServer, MockServerConfig, SessionRecord};
use callbridge_testkit::sim::caller::{run_call, CallOutcome, CallReport, CallerConfig};
use callbridge_testkit::sim::twiml::{split_wss_url, Twiml};
use callbridge_testkit::sim::webhook::{
    self, parse_response, write_request, CallIdentity, HttpResponse,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The auth token tests sign with.
pub const AUTH_TOKEN: &str = "test-auth-token-0123456789abcdef";

/// The `PUBLIC_HOST` of signed test servers: Twilio-side requests go to the server's loopback
/// address but name (and sign) this host, as through a load balancer.
pub const PUBLIC_HOST: &str = "callbridge.test";

/// The environment of a server that checks signatures like a real deployment.
pub const SIGNED: [(&str, &str); 2] = [
    ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
    ("PUBLIC_HOST", PUBLIC_HOST),
];

/// The environment of a server that runs unsigned (the explicit override).
pub const UNSIGNED: [(&str, &str); 1] = [("ALLOW_UNSIGNED_WEBHOOKS", "true")];

/// Call `n` to `proxy`, signed like Twilio's and naming [`PUBLIC_HOST`].
pub fn signed_caller(
    proxy: &Proxy,
    n: u32,
    script: callbridge_testkit::sim::script::Script,
) -> CallerConfig {
    let mut caller = CallerConfig::new(proxy.addr, n, script);
    caller.auth_token = Some(AUTH_TOKEN.into());
    caller.public_host = Some(PUBLIC_HOST.into());
    caller
}

/// A running `callbridge serve`, killed on drop. Its log is captured.
pub struct Proxy {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Its store (`DATA_DIR`).
    pub data_dir: std::path::PathBuf,
    /// A temporary store made for it, removed on drop.
    owned_dir: Option<std::path::PathBuf>,
}

/// Runs `caller` signed with [`AUTH_TOKEN`] against `proxy` and asserts the call completed
/// (printing the proxy's log if not).
pub async fn run_signed_call(proxy: &Proxy, mut caller: CallerConfig) -> CallReport {
    caller.auth_token = Some(AUTH_TOKEN.into());
    caller.public_host = Some(PUBLIC_HOST.into());
    let report = run_call(caller).await.expect("call ran");
    assert_eq!(
        report.outcome,
        CallOutcome::Completed,
        "log:\n{}",
        proxy.log()
    );
    report
}

/// Polls `cond` every 10 ms until it holds or `within` passed; returns whether it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits up to 2 s (stderr is read by another thread) until the proxy's log contains `needle`.
pub async fn logged(proxy: &Proxy, needle: &str) -> bool {
    eventually(Duration::from_secs(2), || proxy.log().contains(needle)).await
}

/// A fresh, unique directory path under the system temp dir (not created).
pub fn temp_data_dir(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!(
        "callbridge-test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

impl Proxy {
    /// Spawns the real binary with a clean environment plus `env`, and waits for "listening on".
    /// It runs in the temp directory, outside the repository, so a developer's ./.env never
    /// reaches the tests.
    pub fn spawn(env: &[(&str, &str)]) -> Proxy {
        Proxy::spawn_in(&std::env::temp_dir(), env)
    }

    /// [`Proxy::spawn`] with `dir` as the working directory (where `serve` looks for `.env`).
    pub fn spawn_in(dir: &std::path::Path, env: &[(&str, &str)]) -> Proxy {
        let mut cmd = Command::new(callbridge_bin());
        cmd.arg("serve")
            .current_dir(dir)
            .env_clear()
            .env("LISTEN", "127.0.0.1:0")
            .env("LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            .env("RUNTIME", runtime());
        // The suite runs on the driver and the store engine the environment names (CI and
        // the engine comparison run it again with RUNTIME=uring, STORE_ENGINE=sled|fjall).
        for name in ["WORKERS", "STORE_ENGINE"] {
            if let Ok(v) = std::env::var(name) {
                cmd.env(name, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Each server gets its own store unless the test names one (one process per store).
        let (data_dir, owned_dir) = match env.iter().find(|(k, _)| *k == "DATA_DIR") {
            Some((_, dir)) => (std::path::PathBuf::from(dir), None),
            None => {
                let dir = temp_data_dir("proxy");
                cmd.env("DATA_DIR", &dir);
                (dir.clone(), Some(dir))
            }
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn callbridge");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let log2 = Arc::clone(&log);
        let log_reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                log2.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read stdout");
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
            // stdout closed: the process is exiting; its whole stderr is in the log once the
            // reader has seen EOF (bounded, in case a child still holds the pipe open).
            let deadline = Instant::now() + Duration::from_secs(2);
            while !log_reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!(
                "callbridge did not start: {line}{rest}\nlog:\n{}",
                log.lock().unwrap()
            );
        };
        let addr = addr.parse().expect("address");
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = stdout.read_to_string(&mut sink);
        });
        Proxy {
            child,
            addr,
            log,
            data_dir,
            owned_dir,
        }
    }

    /// Spawns callbridge pointed at `mock`, signing checks on, plus `extra` env.
    pub fn with_mock(mock: &MockServer, extra: &[(&str, &str)]) -> Proxy {
        let url = mock.url();
        let mut env = vec![
            ("OPENAI_REALTIME_URL", url.as_str()),
            ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ];
        env.extend_from_slice(&SIGNED);
        env.extend_from_slice(extra);
        Proxy::spawn(&env)
    }

    /// Everything callbridge logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id (for CPU accounting in measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Proxy {
    /// SIGKILL (kill -9) and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`TERM`, `INT`, …) without waiting.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `within`: its exit code (`None`: still running,
    /// or ended by a signal).
    pub fn wait_for_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM (a clean shutdown) and wait for the exit, at most `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.owned_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The IO driver the proxy under test runs on: `RUNTIME` from the test's environment
/// (`RUNTIME=uring cargo test --test '*'` runs the whole suite on io_uring), else `epoll`.
pub fn runtime() -> String {
    std::env::var("RUNTIME").unwrap_or_else(|_| "epoll".to_owned())
}

/// Whether io_uring works here, by the server's own start-up probe (sysctl, seccomp, kernel);
/// says why when it does not. Under `RUNTIME=uring` (CI's second pass) an unusable io_uring
/// fails the test instead of skipping it, so that pass cannot go green by skipping.
pub fn uring_usable() -> bool {
    match callbridge::runtime::uring::probe() {
        Ok(()) => true,
        Err(why) => {
            assert_ne!(
                runtime(),
                "uring",
                "RUNTIME=uring, but io_uring is unusable here: {why}"
            );
            eprintln!("skipped: io_uring unusable here: {why}");
            false
        }
    }
}

/// Starts the strict mock (schema self-check on) with `tweak` applied.
pub async fn mock(tweak: impl FnOnce(&mut MockServerConfig)) -> MockServer {
    let mut cfg = MockServerConfig {
        self_check: true,
        ..MockServerConfig::default()
    };
    tweak(&mut cfg);
    MockServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .await
        .expect("start mock")
}

/// Waits until `n` mock sessions have closed (at most `within`).
pub async fn closed_sessions(mock: &MockServer, n: usize, within: Duration) -> Vec<SessionRecord> {
    let deadline = Instant::now() + within;
    loop {
        let s: Vec<_> = mock
            .sessions()
            .into_iter()
            .filter(|s| s.closed_at.is_some())
            .collect();
        if s.len() >= n || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends raw bytes and reads the whole answer (until the server closes or `timeout`).
pub async fn http_raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut buf)).await;
    buf
}

/// One request, parsed answer.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut req = Vec::new();
    write_request(&mut req, method, &addr.to_string(), path, headers, body);
    let raw = http_raw(addr, &req, Duration::from_secs(5)).await;
    parse_response(&raw, true)
        .expect("valid response")
        .expect("complete response")
}

/// The voice webhook for call `n`, signed like Twilio's.
pub async fn webhook(addr: SocketAddr, n: u32) -> HttpResponse {
    let call = CallIdentity {
        call_sid: webhook::sid("CA", u128::from(n)),
        account_sid: webhook::sid("AC", 1),
        from: "+819012345678".into(),
        to: "+81501234567".into(),
        extra: vec![],
    };
    let params = webhook::voice_params(&call, "ringing");
    let url = format!("https://{PUBLIC_HOST}/api/twilio/voice");
    let sig = webhook::signature(AUTH_TOKEN, &url, &params);
    let body = webhook::form_encode(&params);
    http(
        addr,
        "POST",
        "/api/twilio/voice",
        &[("X-Twilio-Signature", &sig)],
        body.as_bytes(),
    )
    .await
}

/// A raw Twilio-side media stream: we write every frame ourselves.
pub struct RawStream {
    stream: TcpStream,
    enc: Encoder,
    dec: Decoder,
    input: Vec<u8>,
    /// `customParameters` from the TwiML.
    pub params: Vec<(String, String)>,
    /// The callSid.
    pub call_sid: String,
    /// The streamSid we use.
    pub stream_sid: String,
    seq: u64,
}

impl RawStream {
    /// Webhook for call `n`, then the upgrade to the TwiML's stream URL (signed).
    pub async fn open(addr: SocketAddr, n: u32) -> RawStream {
        let resp = webhook(addr, n).await;
        assert_eq!(
            resp.status,
            200,
            "webhook: {}",
            String::from_utf8_lossy(&resp.body)
        );
        let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).expect("twiml");
        let stream = twiml.stream().expect("a <Connect><Stream>").clone();
        let (_, path) = split_wss_url(&stream.url).expect("wss url");
        let sig = webhook::signature(AUTH_TOKEN, &stream.url, &[]);
        let mut raw = RawStream::connect(addr, path, &[("x-twilio-signature", &sig)])
            .await
            .expect("upgrade accepted");
        raw.params = stream.parameters.clone();
        raw.call_sid = webhook::sid("CA", u128::from(n));
        raw.stream_sid = webhook::sid("MZ", u128::from(n));
        raw
    }

    /// Upgrades to `path`; `Err(status)` when refused.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawStream, u16> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // Like Twilio's frames, each of ours leaves at once (no Nagle wait for an ACK).
        stream.set_nodelay(true).expect("nodelay");
        let key = ws::new_client_key();
        let mut req = Vec::new();
        ws::write_client_handshake(&mut req, &addr.to_string(), path, &key, headers);
        stream.write_all(&req).await.expect("write");
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("handshake in time")
                .expect("read");
            if n == 0 {
                let resp = parse_response(&buf, true).ok().flatten();
                return Err(resp.map_or(0, |r| r.status));
            }
            buf.extend_from_slice(&chunk[..n]);
            match ws::parse_handshake_response(&buf, &key) {
                Ok(Some(len)) => {
                    let input = buf.split_off(len);
                    return Ok(RawStream {
                        stream,
                        enc: Encoder::new(Role::Client),
                        dec: Decoder::new(Role::Client, 1 << 24),
                        input,
                        params: vec![],
                        call_sid: String::new(),
                        stream_sid: String::new(),
                        seq: 0,
                    });
                }
                Ok(None) => {}
                Err(ws::HandshakeError::Rejected { status, .. }) => return Err(status),
                Err(e) => panic!("bad handshake response: {e}"),
            }
        }
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &[u8]) {
        self.try_send_text(text).await.expect("send");
    }

    /// Sends one text frame; the error when the proxy has closed the socket.
    pub async fn try_send_text(&mut self, text: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::new();
        self.enc.text(&mut out, text);
        self.stream.write_all(&out).await
    }

    /// Sends bytes as they are (hand-made frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send raw");
    }

    /// Sends a ping frame (masked, as a client's must be).
    pub async fn send_ping(&mut self, payload: &[u8]) {
        self.try_send_ping(payload).await.expect("send ping");
    }

    /// Sends a ping frame; the error when the proxy has closed the socket.
    pub async fn try_send_ping(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::new();
        self.enc.ping(&mut out, payload);
        self.stream.write_all(&out).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, payload: &[u8]) {
        let mut out = Vec::new();
        self.enc.binary(&mut out, payload);
        self.stream.write_all(&out).await.expect("send");
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string().as_bytes()).await;
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    /// `connected` then `start` with the TwiML's parameters.
    pub async fn start(&mut self) {
        self.send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            .await;
        let params: serde_json::Map<String, Value> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let seq = self.next_seq();
        self.send(json!({"event": "start", "sequenceNumber": seq, "streamSid": self.stream_sid,
            "start": {"accountSid": webhook::sid("AC", 1), "streamSid": self.stream_sid, "callSid": self.call_sid,
                "tracks": ["inbound"], "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        .await;
    }

    /// One `media` frame with `payload`.
    pub async fn media(&mut self, payload: &str) {
        self.try_media(payload).await.expect("send media");
    }

    /// One `media` frame with `payload`; the error when the proxy has closed the socket.
    pub async fn try_media(&mut self, payload: &str) -> std::io::Result<()> {
        let seq = self.next_seq();
        let chunk = (self.seq - 1).to_string();
        let ts = ((self.seq - 2) * 20).to_string();
        let sid = self.stream_sid.clone();
        let msg = json!({"event": "media", "sequenceNumber": seq, "streamSid": sid,
            "media": {"track": "inbound", "chunk": chunk, "timestamp": ts, "payload": payload}});
        self.try_send_text(msg.to_string().as_bytes()).await
    }

    /// `stop`.
    pub async fn stop(&mut self) {
        let seq = self.next_seq();
        let (sid, call) = (self.stream_sid.clone(), self.call_sid.clone());
        self.send(json!({"event": "stop", "sequenceNumber": seq, "streamSid": sid, "stop": {"accountSid": webhook::sid("AC", 1), "callSid": call}})).await;
    }

    /// The next frame from callbridge that `pick` takes (`Some`), skipping the others; `Ok(None)`
    /// past `deadline`, `Err(())` when the socket closed or failed.
    async fn next_frame<T>(
        &mut self,
        deadline: tokio::time::Instant,
        mut pick: impl FnMut(Message<'_>) -> Option<T>,
    ) -> Result<Option<T>, ()> {
        loop {
            let decoded = self
                .dec
                .decode(&mut self.input)
                .expect("callbridge sends valid websocket");
            let consumed = decoded.consumed;
            let picked = decoded.message.and_then(&mut pick);
            // Consumed before returning, so the next call waits for the next frame.
            self.input.drain(..consumed);
            if picked.is_some() {
                return Ok(picked);
            }
            if consumed > 0 {
                continue;
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(()),
                Ok(Ok(n)) => self.input.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next message from callbridge: `Ok(Some(json))`, `Ok(None)` on timeout, `Err(close
    /// code)` when it closed.
    pub async fn recv(&mut self, within: Duration) -> Result<Option<Value>, Option<u16>> {
        let deadline = tokio::time::Instant::now() + within;
        let next = self
            .next_frame(deadline, |m| match m {
                Message::Text(t) => Some(Ok(
                    serde_json::from_slice::<Value>(t).expect("callbridge sends JSON")
                )),
                Message::Close { code, .. } => Some(Err(code)),
                Message::Binary(_) => panic!("callbridge sent a binary frame to twilio"),
                _ => None,
            })
            .await;
        match next {
            Ok(Some(Ok(v))) => Ok(Some(v)),
            Ok(Some(Err(code))) => Err(code),
            Ok(None) => Ok(None),
            Err(()) => Err(None),
        }
    }

    /// Reads until callbridge sends a pong and returns its payload (text frames before it are
    /// skipped; [`RawStream::recv`] skips control frames, so it cannot see one).
    pub async fn expect_pong(&mut self, within: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + within;
        let pong = self
            .next_frame(deadline, |m| match m {
                Message::Pong(p) => Some(p.to_vec()),
                _ => None,
            })
            .await;
        match pong {
            Ok(Some(p)) => p,
            Ok(None) => panic!("no pong within {within:?}"),
            Err(()) => panic!("callbridge closed before the pong"),
        }
    }

    /// Reads until callbridge closes; returns the close code (`None`: no close frame).
    pub async fn until_closed(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("callbridge did not close within {within:?}"),
                Err(code) => return code,
            }
        }
    }
}

/// Asserts that call `call`'s audio went through untouched: every tagged uplink frame reached
/// OpenAI once, in order, from this call only (at most a few trailing frames may be cut by the
/// hang-up), and the caller received exactly the bytes the mock sent, in order.
pub fn assert_delivered_byte_exact(
    call: u32,
    session: &SessionRecord,
    stream: &callbridge_testkit::sim::stream::StreamReport,
) {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let tags: Vec<(u32, u32)> = session
        .stats
        .appends
        .iter()
        .map(|a| {
            callbridge_testkit::sim::script::read_tag(&engine.decode(a).expect("valid base64"))
                .expect("tagged frame")
        })
        .collect();
    for (i, (c, seq)) in tags.iter().enumerate() {
        assert_eq!(
            (*c, *seq),
            (call, i as u32),
            "call {call}: uplink frame {i} is {c}/{seq} (lost, duplicated, reordered or crossed)"
        );
    }
    assert!(
        tags.len() as u32 + 5 >= stream.frames_sent,
        "call {call}: {} of {} frames reached OpenAI",
        tags.len(),
        stream.frames_sent
    );
    let sent: Vec<u8> = session
        .stats
        .audio_deltas
        .iter()
        .flat_map(|i| i.deltas.iter())
        .flat_map(|d| engine.decode(d).expect("mock base64"))
        .collect();
    let received: Vec<u8> = stream
        .media
        .iter()
        .flat_map(|m| engine.decode(&m.payload_b64).expect("valid base64"))
        .collect();
    assert!(!sent.is_empty(), "call {call}: the mock answered nothing");
    assert_eq!(
        received.len(),
        sent.len(),
        "call {call}: downlink bytes lost or added"
    );
    assert!(received == sent, "call {call}: downlink audio differs");
}

/// The call number in the tag of a session's first append.
pub fn call_of(session: &SessionRecord) -> u32 {
    use base64::Engine;
    let first = session.stats.appends.first().expect("the call sent audio");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(first)
        .expect("valid base64");
    callbridge_testkit::sim::script::read_tag(&bytes)
        .expect("tagged frame")
        .0
}

/// A form POST to `path` with `params`, signed like Twilio's over `https://{addr}{path}`.
pub async fn signed_post(
    addr: SocketAddr,
    path: &str,
    params: &[(String, String)],
) -> HttpResponse {
    let url = format!("https://{PUBLIC_HOST}{path}");
    let sig = webhook::signature(AUTH_TOKEN, &url, params);
    let body = webhook::form_encode(params);
    http(
        addr,
        "POST",
        path,
        &[("X-Twilio-Signature", &sig)],
        body.as_bytes(),
    )
    .await
}

/// What Twilio fetches after the stream of call `n` closed: the TwiML's `<Redirect>`
/// (`/api/twilio/after-stream`), signed, with the call's parameters and `CallStatus=in-progress`.
pub async fn after_stream(addr: SocketAddr, n: u32) -> HttpResponse {
    let call = CallIdentity {
        call_sid: webhook::sid("CA", u128::from(n)),
        account_sid: webhook::sid("AC", 1),
        from: "+819012345678".into(),
        to: "+81501234567".into(),
        extra: vec![],
    };
    let params = webhook::voice_params(&call, "in-progress");
    signed_post(addr, "/api/twilio/after-stream", &params).await
}

/// The legacy conference room of call `n` under the default `CONFERENCE_NAME`.
pub fn room(n: u32) -> String {
    format!("support-{}", webhook::sid("CA", u128::from(n)))
}

/// The conference room Twilio's `after-stream` fetch for call `n` is sent to, if any (`None`:
/// the call is hung up).
pub async fn after_stream_conference(addr: SocketAddr, n: u32) -> Option<String> {
    let resp = after_stream(addr, n).await;
    assert_eq!(resp.status, 200);
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).expect("valid TwiML");
    twiml.conference().map(str::to_owned)
}

pub mod store;
