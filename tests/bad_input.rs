//! Bad input against the real binary: garbage on an established media stream, WebSocket framing
//! violations, broken and oversized HTTP requests, an OpenAI `error` mid-call, and either peer
//! vanishing. Every case ends in an exact, observable answer (status, close code, log line, what
//! reached the mock) and the process keeps running.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use callbridge_testkit::mock::server::{strict_client_check, MockServer, SessionRecord};
use callbridge_testkit::sim::script::{read_tag, tag_frame, FRAME_BYTES};
use callbridge_testkit::sim::twiml::Twiml;
use callbridge_testkit::sim::webhook::{self, parse_response, HttpResponse};
use common::{
    after_stream_conference, closed_sessions, eventually, http, http_raw, logged, mock, room,
    webhook, Proxy, RawStream,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One 20 ms frame of μ-law silence carrying the tag `(call, seq)`, base64.
fn frame(call: u32, seq: u32) -> String {
    let mut f = [0xFFu8; FRAME_BYTES];
    tag_frame(call, seq, &mut f);
    B64.encode(f)
}

/// A `media` message for stream `sid`.
fn media(sid: &str, seq: u64, payload: &str) -> Value {
    json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": sid,
        "media": {"track": "inbound", "chunk": seq.to_string(), "timestamp": (seq * 20).to_string(),
            "payload": payload}})
}

/// Whether the mock has confirmed a session (sent `session.updated`).
fn session_updated(mock: &MockServer) -> bool {
    mock.sessions().iter().any(|s| {
        s.sent_events
            .iter()
            .any(|e| e.contains("\"session.updated\""))
    })
}

/// Whether callbridge itself has received `session.updated` (it logs the event type at info, as
/// `LOG_EVENT_TYPES` says by default). Waiting for the mock to have *sent* it is not enough: a
/// `stop` sent right after could reach callbridge before `session.updated` does.
fn proxy_saw_session_updated(proxy: &Proxy) -> bool {
    proxy.log().contains("event=\"session.updated\"")
}

/// Call `n` with its stream started and the OpenAI session confirmed: audio flows.
async fn established(mock: &MockServer, proxy: &Proxy, n: u32) -> RawStream {
    let mut raw = RawStream::open(proxy.addr, n).await;
    raw.start().await;
    assert!(
        eventually(Duration::from_secs(10), || session_updated(mock)
            && proxy_saw_session_updated(proxy))
        .await,
        "no session.updated; log:\n{}",
        proxy.log()
    );
    // Let the proxy read session.updated too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw
}

/// Sends `stop`, expects the normal close, and returns the mock's (closed) session.
async fn hang_up(raw: &mut RawStream, mock: &MockServer, proxy: &Proxy) -> SessionRecord {
    raw.stop().await;
    assert_eq!(
        raw.until_closed(Duration::from_secs(3)).await,
        Some(1000),
        "log:\n{}",
        proxy.log()
    );
    let mut sessions = closed_sessions(mock, 1, Duration::from_secs(2)).await;
    assert_eq!(sessions.len(), 1, "the OpenAI leg is closed");
    sessions.remove(0)
}

/// The tags of the audio the mock received, in order.
fn appended_tags(s: &SessionRecord) -> Vec<(u32, u32)> {
    s.stats
        .appends
        .iter()
        .map(|a| read_tag(&B64.decode(a).expect("base64 append")).expect("tagged frame"))
        .collect()
}

/// Waits for the "call finished" summary line (logged after both legs are closed).
async fn finished_line(proxy: &Proxy) -> String {
    finished_line_within(proxy, Duration::from_secs(3)).await
}

/// [`finished_line`], waiting up to `within` for the call to end.
async fn finished_line_within(proxy: &Proxy, within: Duration) -> String {
    let found = eventually(within, || proxy.log().contains("call finished")).await;
    assert!(found, "no call summary; log:\n{}", proxy.log());
    proxy
        .log()
        .lines()
        .find(|l| l.contains("call finished"))
        .unwrap()
        .to_owned()
}

/// A call with good frame 0, then `garbage`, then good frame 1: the garbage is dropped with a
/// warning naming `kind`, both good frames reach OpenAI once, and the call ends normally.
async fn garbage_between_good_frames(
    n: u32,
    kind: &str,
    garbage: impl AsyncFnOnce(&mut RawStream),
) {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    raw.media(&frame(n, 0)).await;
    garbage(&mut raw).await;
    raw.media(&frame(n, 1)).await;
    let session = hang_up(&mut raw, &mock, &proxy).await;

    assert_eq!(appended_tags(&session), vec![(n, 0), (n, 1)]);
    assert!(
        session.stats.errors.is_empty(),
        "{:?}",
        session.stats.errors
    );
    let summary = finished_line(&proxy).await;
    let log = proxy.log();
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dropped frame"))
        .collect();
    assert_eq!(dropped.len(), 1, "log:\n{log}");
    assert!(
        dropped[0].contains(&format!("kind=\"{kind}\"")),
        "{}",
        dropped[0]
    );
    assert!(dropped[0].contains("leg=\"twilio\""), "{}", dropped[0]);
    assert!(summary.contains("reason=\"twilio_stop\""), "{summary}");
    assert!(summary.contains("protocol_errors=1"), "{summary}");
    assert!(summary.contains("up=2"), "{summary}");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_that_is_not_json_is_dropped_with_a_not_json_warning_and_the_call_goes_on() {
    garbage_between_good_frames(11, "not_json", async |raw: &mut RawStream| {
        raw.send_text(b"this is { not json").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_is_dropped_with_a_binary_frame_warning_and_the_call_goes_on() {
    garbage_between_good_frames(12, "binary_frame", async |raw: &mut RawStream| {
        let mut f = [0xFFu8; FRAME_BYTES];
        tag_frame(12, 99, &mut f);
        raw.send_binary(&f).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_with_another_stream_sid_is_dropped_with_an_unknown_stream_sid_warning() {
    garbage_between_good_frames(13, "unknown_stream_sid", async |raw: &mut RawStream| {
        let other = webhook::sid("MZ", 999);
        raw.send(media(&other, 50, &frame(13, 99))).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_whose_payload_is_not_base64_is_dropped_with_a_bad_base64_warning() {
    garbage_between_good_frames(14, "bad_base64", async |raw: &mut RawStream| {
        let sid = raw.stream_sid.clone();
        raw.send(media(&sid, 50, "!!not*base64~~")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_of_a_mark_never_sent_is_dropped_with_an_unknown_mark_warning() {
    garbage_between_good_frames(15, "unknown_mark", async |raw: &mut RawStream| {
        let sid = raw.stream_sid.clone();
        raw.send(
            json!({"event": "mark", "sequenceNumber": "50", "streamSid": sid,
            "mark": {"name": "never-sent-by-callbridge"}}),
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_event_type_is_ignored_without_a_warning_and_the_call_goes_on() {
    let n = 16;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    raw.media(&frame(n, 0)).await;
    let sid = raw.stream_sid.clone();
    raw.send(
        json!({"event": "transcription", "sequenceNumber": "50", "streamSid": sid,
        "transcription": {"text": "hello"}}),
    )
    .await;
    raw.media(&frame(n, 1)).await;
    let session = hang_up(&mut raw, &mock, &proxy).await;

    assert_eq!(appended_tags(&session), vec![(n, 0), (n, 1)]);
    let summary = finished_line(&proxy).await;
    let log = proxy.log();
    assert!(!log.contains("dropped frame"), "log:\n{log}");
    assert!(summary.contains("reason=\"twilio_stop\""), "{summary}");
    assert!(summary.contains("protocol_errors=0"), "{summary}");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_before_start_is_dropped_with_a_media_before_start_warning_and_start_still_works() {
    let n = 17;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = RawStream::open(proxy.addr, n).await;
    raw.send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        .await;
    let sid = raw.stream_sid.clone();
    raw.send(media(&sid, 1, &frame(n, 99))).await;
    raw.start().await;
    assert!(
        eventually(Duration::from_secs(10), || session_updated(&mock)
            && proxy_saw_session_updated(&proxy))
        .await
    );
    raw.media(&frame(n, 0)).await;
    raw.media(&frame(n, 1)).await;
    let session = hang_up(&mut raw, &mock, &proxy).await;

    assert_eq!(appended_tags(&session), vec![(n, 0), (n, 1)]);
    let summary = finished_line(&proxy).await;
    let log = proxy.log();
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dropped frame"))
        .collect();
    assert_eq!(dropped.len(), 1, "log:\n{log}");
    assert!(
        dropped[0].contains("kind=\"media_before_start\""),
        "{}",
        dropped[0]
    );
    assert!(summary.contains("protocol_errors=1"), "{summary}");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_is_logged_five_times_per_kind_and_counted_in_full() {
    let n = 18;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    for _ in 0..50 {
        raw.send_text(b"garbage").await;
    }
    raw.media(&frame(n, 0)).await;
    let session = hang_up(&mut raw, &mock, &proxy).await;

    assert_eq!(appended_tags(&session), vec![(n, 0)]);
    let summary = finished_line(&proxy).await;
    let log = proxy.log();
    assert_eq!(log.matches("kind=\"not_json\"").count(), 5, "log:\n{log}");
    assert!(summary.contains("protocol_errors=50"), "{summary}");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_over_64_kib_closes_the_stream_with_1009_and_the_openai_leg_too() {
    let n = 21;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    let big = format!(
        "{{\"event\":\"media\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    raw.send_text(big.as_bytes()).await;
    assert_eq!(
        raw.until_closed(Duration::from_secs(3)).await,
        Some(1009),
        "log:\n{}",
        proxy.log()
    );
    let closed = closed_sessions(&mock, 1, Duration::from_secs(1)).await;
    assert_eq!(closed.len(), 1, "the OpenAI leg is closed");
    assert!(
        closed[0].close_reason.contains("client closed (1000)"),
        "{}",
        closed[0].close_reason
    );
    let summary = finished_line(&proxy).await;
    assert!(summary.contains("reason=\"twilio_closed\""), "{summary}");
    assert!(
        logged(&proxy, "websocket error (1009)").await,
        "{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmasked_client_frame_closes_the_stream_with_1002() {
    let n = 22;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    let payload = br#"{"event":"connected"}"#;
    let mut bytes = vec![0x81, payload.len() as u8];
    bytes.extend_from_slice(payload);
    raw.send_raw(&bytes).await;
    assert_eq!(
        raw.until_closed(Duration::from_secs(3)).await,
        Some(1002),
        "log:\n{}",
        proxy.log()
    );
    let closed = closed_sessions(&mock, 1, Duration::from_secs(1)).await;
    assert_eq!(closed.len(), 1, "the OpenAI leg is closed");
    assert!(
        logged(&proxy, "websocket error (1002)").await,
        "{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

/// A client frame masked with the all-zero key (so the payload goes out as is).
fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        len if len < 126 => f.push(0x80 | len as u8),
        len if len <= usize::from(u16::MAX) => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_message_split_into_fragments_is_reassembled_and_reaches_openai() {
    let n = 27;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    let sid = raw.stream_sid.clone();
    let text = media(&sid, 1, &frame(n, 0)).to_string();
    let (a, rest) = text.as_bytes().split_at(40);
    let (b, c) = rest.split_at(100);
    let mut bytes = masked_frame(false, 0x1, a);
    bytes.extend(masked_frame(false, 0x0, b));
    bytes.extend(masked_frame(true, 0x0, c));
    raw.send_raw(&bytes).await;
    raw.media(&frame(n, 1)).await;
    let session = hang_up(&mut raw, &mock, &proxy).await;

    assert_eq!(appended_tags(&session), vec![(n, 0), (n, 1)]);
    let summary = finished_line(&proxy).await;
    assert!(summary.contains("protocol_errors=0"), "{summary}");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_adding_up_to_over_64_kib_close_the_stream_with_1009() {
    let n = 28;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    let piece = vec![b'x'; 40 * 1024];
    let mut bytes = masked_frame(false, 0x1, &piece);
    bytes.extend(masked_frame(true, 0x0, &piece));
    raw.send_raw(&bytes).await;
    assert_eq!(
        raw.until_closed(Duration::from_secs(3)).await,
        Some(1009),
        "log:\n{}",
        proxy.log()
    );
    let closed = closed_sessions(&mock, 1, Duration::from_secs(1)).await;
    assert_eq!(closed.len(), 1, "the OpenAI leg is closed");
    assert!(
        logged(&proxy, "websocket error (1009)").await,
        "{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_silent_without_closing_is_hung_up_and_the_openai_leg_closed() {
    // Twilio sends a media frame every 20 ms for as long as the call is up, so a stream with no
    // frame at all for many seconds is a peer that vanished without a FIN (network partition,
    // crashed edge): TWILIO_IDLE_TIMEOUT_SECS (10 s by default, 1 s here) ends the call.
    let n = 29;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[("TWILIO_IDLE_TIMEOUT_SECS", "1")]);
    let mut raw = established(&mock, &proxy, n).await;
    raw.media(&frame(n, 0)).await;
    // Silence: the socket stays open, nothing is sent.
    assert!(
        raw.until_closed(Duration::from_secs(3)).await.is_some(),
        "log:\n{}",
        proxy.log()
    );
    let closed = closed_sessions(&mock, 1, Duration::from_secs(1)).await;
    assert_eq!(closed.len(), 1, "the OpenAI leg is closed");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_connection_that_drops_without_stop_closes_the_openai_leg_within_a_second() {
    let n = 23;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    raw.media(&frame(n, 0)).await;
    let dropped_at = Instant::now();
    drop(raw);
    let closed = closed_sessions(&mock, 1, Duration::from_secs(1)).await;
    assert_eq!(
        closed.len(),
        1,
        "OpenAI leg still open; log:\n{}",
        proxy.log()
    );
    assert!(closed[0].closed_at.unwrap() - dropped_at < Duration::from_secs(1));
    assert_eq!(appended_tags(&closed[0]), vec![(n, 0)]);
    assert!(
        logged(&proxy, "twilio socket closed without stop").await,
        "log:\n{}",
        proxy.log()
    );
    let summary = finished_line(&proxy).await;
    assert!(summary.contains("reason=\"twilio_closed\""), "{summary}");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_error_event_mid_call_is_logged_and_the_call_goes_on() {
    let n = 24;
    // The mock refuses the append of frame 1 with an `error` event, as the real API would
    // refuse a bad event; everything else passes the strict check.
    let refused = frame(n, 1);
    let mock = mock(|cfg| {
        let refused = refused.clone();
        cfg.session.validate_client = Arc::new(move |ev: &Value| {
            if ev["type"] == "input_audio_buffer.append" && ev["audio"] == refused.as_str() {
                return Err("test refuses this append".to_owned());
            }
            strict_client_check(ev)
        });
    })
    .await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    for seq in 0..3 {
        raw.media(&frame(n, seq)).await;
    }
    // The error event reached the proxy before the caller hangs up.
    assert!(
        eventually(Duration::from_secs(3), || proxy
            .log()
            .contains("openai error"))
        .await,
        "log:\n{}",
        proxy.log()
    );
    for seq in 3..5 {
        raw.media(&frame(n, seq)).await;
    }
    let session = hang_up(&mut raw, &mock, &proxy).await;

    assert_eq!(session.stats.errors.len(), 1, "{:?}", session.stats.errors);
    assert_eq!(
        appended_tags(&session),
        vec![(n, 0), (n, 2), (n, 3), (n, 4)]
    );
    let summary = finished_line(&proxy).await;
    let log = proxy.log();
    let line = log.lines().find(|l| l.contains("openai error")).unwrap();
    assert!(line.contains("test refuses this append"), "{line}");
    assert!(line.contains("invalid_value"), "{line}");
    assert!(summary.contains("reason=\"twilio_stop\""), "{summary}");
    assert!(proxy.is_running());
}

/// A TCP relay to `to` whose connections can all be cut at once (a peer vanishing).
struct Relay {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tasks2 = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut a, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    let mut b = TcpStream::connect(to).await.expect("relay connects");
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
                tasks2.lock().unwrap().push(task);
            }
        });
        Relay {
            addr,
            tasks,
            accept,
        }
    }

    /// Drops every relayed connection (both sides see the TCP connection end, no close frame).
    fn cut(&self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_connection_that_drops_mid_call_closes_the_stream_normally_and_after_stream_sends_the_caller_to_the_conference(
) {
    let n = 25;
    let mock = mock(|_| {}).await;
    let relay = Relay::start(mock.addr).await;
    let url = format!("ws://{}/v1/realtime?model=gpt-realtime", relay.addr);
    let mut proxy = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", url.as_str()),
        ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ("TWILIO_AUTH_TOKEN", common::AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    let mut raw = established(&mock, &proxy, n).await;
    raw.media(&frame(n, 0)).await;
    relay.cut();
    assert_eq!(
        raw.until_closed(Duration::from_secs(3)).await,
        Some(1000),
        "log:\n{}",
        proxy.log()
    );
    // EOF or a reset, depending on what the relay had not read yet.
    assert!(
        logged(&proxy, "openai closed the session: ").await,
        "log:\n{}",
        proxy.log()
    );
    let summary = finished_line(&proxy).await;
    assert!(summary.contains("reason=\"openai_closed\""), "{summary}");

    assert_eq!(after_stream_conference(proxy.addr, n).await, Some(room(n)));
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_session_that_the_server_closes_mid_call_closes_the_stream_normally_and_sends_the_caller_to_the_conference(
) {
    let n = 26;
    let mock = mock(|cfg| cfg.session.max_session_ms = Some(600)).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = established(&mock, &proxy, n).await;
    raw.media(&frame(n, 0)).await;
    assert_eq!(
        raw.until_closed(Duration::from_secs(3)).await,
        Some(1000),
        "log:\n{}",
        proxy.log()
    );
    let closed = closed_sessions(&mock, 1, Duration::from_secs(1)).await;
    assert_eq!(closed.len(), 1);
    assert!(
        closed[0].close_reason.contains("session expired"),
        "{}",
        closed[0].close_reason
    );
    let summary = finished_line(&proxy).await;
    assert!(summary.contains("reason=\"openai_closed\""), "{summary}");

    assert_eq!(after_stream_conference(proxy.addr, n).await, Some(room(n)));
    assert!(proxy.is_running());
}

// ---- HTTP ---------------------------------------------------------------------------------

/// A proxy with a mock that is never reached (HTTP tests).
async fn http_proxy(extra: &[(&str, &str)]) -> (MockServer, Proxy) {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, extra);
    (mock, proxy)
}

/// Sends `request` raw; returns the parsed answer, and how long until the server closed.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (HttpResponse, Duration) {
    let t0 = Instant::now();
    let raw = http_raw(addr, request, Duration::from_secs(3)).await;
    let took = t0.elapsed();
    let resp = parse_response(&raw, true)
        .expect("valid response")
        .expect("complete response");
    (resp, took)
}

/// Sends `request` raw; returns the answer as soon as it is complete (the server may keep the
/// connection open for the next request).
async fn raw_answer(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("a complete answer within 3 s")
            .expect("read");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(resp) = parse_response(&buf, n == 0).expect("valid response") {
            return resp;
        }
        assert!(n > 0, "closed before the answer was complete");
    }
}

/// Waits for the driver's "bad request" warning with `status`.
async fn bad_request_logged(proxy: &Proxy, status: u16) -> bool {
    let needle = format!("status={status}");
    eventually(Duration::from_secs(2), || {
        proxy
            .log()
            .lines()
            .any(|l| l.contains("bad request") && l.contains(&needle))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_gets_408_and_the_connection_closed_within_a_second() {
    let (_mock, mut proxy) = http_proxy(&[("HTTP_READ_TIMEOUT_SECS", "0.5")]).await;
    let head = format!(
        "POST /api/twilio/voice HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        proxy.addr
    );
    let (resp, took) = raw_exchange(proxy.addr, head.as_bytes()).await;
    assert_eq!(resp.status, 408);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    assert!(
        bad_request_logged(&proxy, 408).await,
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.log().contains("request not completed in time"));
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_gets_408_and_the_connection_closed_within_a_second()
{
    let (_mock, mut proxy) = http_proxy(&[("HTTP_READ_TIMEOUT_SECS", "0.5")]).await;
    let req = format!(
        "POST /api/twilio/voice HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nCallSid=CA1",
        proxy.addr
    );
    let (resp, took) = raw_exchange(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 408);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    assert!(
        bad_request_logged(&proxy, 408).await,
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_70_kb_form_body_gets_413() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let body = format!("CallSid=CA1&Pad={}", "a".repeat(70 * 1000));
    let mut req = Vec::new();
    webhook::write_request(
        &mut req,
        "POST",
        &proxy.addr.to_string(),
        "/api/twilio/voice",
        &[],
        body.as_bytes(),
    );
    let (resp, _) = raw_exchange(proxy.addr, &req).await;
    assert_eq!(resp.status, 413);
    assert!(
        bad_request_logged(&proxy, 413).await,
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_kb_header_gets_431() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let big = "b".repeat(20 * 1024);
    let mut req = Vec::new();
    webhook::write_request(
        &mut req,
        "GET",
        &proxy.addr.to_string(),
        "/healthz",
        &[("X-Big", &big)],
        b"",
    );
    let (resp, _) = raw_exchange(proxy.addr, &req).await;
    assert_eq!(resp.status, 431);
    assert!(
        bad_request_logged(&proxy, 431).await,
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_over_8_kb_gets_414() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let path = format!("/{}", "p".repeat(9 * 1024));
    let mut req = Vec::new();
    webhook::write_request(&mut req, "GET", &proxy.addr.to_string(), &path, &[], b"");
    let (resp, _) = raw_exchange(proxy.addr, &req).await;
    assert_eq!(resp.status, 414);
    assert!(
        bad_request_logged(&proxy, 414).await,
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_twilio_peer_that_reads_nothing_is_not_read_and_the_call_ends_stalled()
{
    let n = 43;
    let mock = mock(|_| {}).await;
    // A stall timeout longer than the flood takes to fill 32 MB without backpressure.
    let mut proxy = Proxy::with_mock(&mock, &[("WRITE_STALL_TIMEOUT_SECS", "5")]);
    let mut raw = established(&mock, &proxy, n).await;
    // Pings of the largest control payload, never reading a pong. Without backpressure the
    // proxy would read them all and queue a pong for each: memory without bound.
    let payload = [0x55u8; 125];
    let mut sent: usize = 0;
    let limit = 64 * 1024 * 1024;
    while sent < limit {
        match tokio::time::timeout(Duration::from_secs(3), raw.try_send_ping(&payload)).await {
            Ok(Ok(())) => sent += 131,
            // The proxy stopped reading (our send blocked), then ended the call (it failed).
            Err(_) | Ok(Err(_)) => break,
        }
    }
    assert!(
        sent < limit / 2,
        "{sent} bytes of pings went in without pushback"
    );
    let summary = finished_line_within(&proxy, Duration::from_secs(30)).await;
    assert!(summary.contains("reason=\"twilio_stalled\""), "{summary}");
    assert!(proxy.is_running());
}

/// A signed voice webhook for call `n` whose form body is sent chunked (as a proxy that
/// re-chunks bodies would), `pieces` bytes per chunk, with `extra` headers.
fn chunked_webhook(n: u32, pieces: usize, extra: &str) -> Vec<u8> {
    use callbridge_testkit::sim::webhook;
    let call = webhook::CallIdentity {
        call_sid: webhook::sid("CA", u128::from(n)),
        account_sid: webhook::sid("AC", 1),
        from: "+819012345678".into(),
        to: "+81501234567".into(),
        extra: vec![],
    };
    let params = webhook::voice_params(&call, "ringing");
    let url = format!("https://{}/api/twilio/voice", common::PUBLIC_HOST);
    let sig = webhook::signature(common::AUTH_TOKEN, &url, &params);
    let body = webhook::form_encode(&params);
    let mut req = format!(
        "POST /api/twilio/voice HTTP/1.1\r\nHost: {}\r\nX-Twilio-Signature: {sig}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n{extra}\r\n",
        common::PUBLIC_HOST
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(pieces) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_webhook_body_is_decoded_and_answered() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let req = chunked_webhook(51, 37, "Transfer-Encoding: chunked\r\n");
    let resp = raw_answer(proxy.addr, &req).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).unwrap();
    assert!(twiml.stream().is_some(), "the signed form was read whole");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_gets_400_and_other_codings_501() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let req = chunked_webhook(
        52,
        64,
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    );
    let (resp, _) = raw_exchange(proxy.addr, &req).await;
    assert_eq!(resp.status, 400);
    assert!(
        bad_request_logged(&proxy, 400).await,
        "log:\n{}",
        proxy.log()
    );
    let req = chunked_webhook(53, 64, "Transfer-Encoding: gzip, chunked\r\n");
    let (resp, _) = raw_exchange(proxy.addr, &req).await;
    assert_eq!(resp.status, 501);
    assert!(
        bad_request_logged(&proxy, 501).await,
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_headers_of_get_and_no_body() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let raw = http_raw(
        proxy.addr,
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert!(length > 0, "the length GET's body would have");
    assert_eq!(body, "", "no body after a HEAD");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_responses_is_dropped_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let (_mock, mut proxy) = http_proxy(&[("HTTP_WRITE_TIMEOUT_SECS", "1")]).await;
    // A small receive window, and scrape after pipelined scrape, none of them read: the
    // answers fill the socket and the proxy's next write cannot complete.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy.addr).await.expect("connect");
    let scrapes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2_000);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&scrapes)).await;
    assert!(
        eventually(Duration::from_secs(10), || proxy
            .log()
            .contains("http response not taken within HTTP_WRITE_TIMEOUT_SECS"))
        .await,
        "log:\n{}",
        proxy.log()
    );
    drop(stream);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_get_400() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let (resp, _) = raw_exchange(proxy.addr, b"\x00\x01\x02\xff garbage \x7f\r\n\r\n").await;
    assert_eq!(resp.status, 400);
    assert!(
        bad_request_logged(&proxy, 400).await,
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_gets_404() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let resp = http(proxy.addr, "GET", "/wp-admin/login.php", &[], b"").await;
    assert_eq!(resp.status, 404);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_the_voice_webhook_gets_405_allowing_post() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let resp = http(proxy.addr, "GET", "/api/twilio/voice", &[], b"").await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("Allow"), Some("POST"));
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_stream_request_without_upgrade_headers_gets_426_advising_version_13() {
    let (_mock, mut proxy) = http_proxy(&[]).await;
    let resp = webhook(proxy.addr, 31).await;
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).unwrap();
    let stream = twiml.stream().expect("a stream");
    let path = stream.path.clone();
    // Signed like Twilio's upgrade (else it is refused with 403 before anything else).
    let sig = callbridge_testkit::sim::webhook::signature(common::AUTH_TOKEN, &stream.url, &[]);
    let resp = http(
        proxy.addr,
        "GET",
        &path,
        &[("X-Twilio-Signature", sig.as_str())],
        b"",
    )
    .await;
    assert_eq!(resp.status, 426);
    assert_eq!(resp.header("Sec-WebSocket-Version"), Some("13"));
    assert!(proxy.is_running());
}

/// The call ends (within 30 s) because `leg`'s peer stopped reading (1 s stall timeout): the
/// summary and the log say so.
async fn assert_ended_as_stalled(proxy: &Proxy, leg: &str) {
    let summary = finished_line_within(proxy, Duration::from_secs(30)).await;
    assert!(
        summary.contains(&format!("reason=\"{leg}_stalled\"")),
        "{summary}"
    );
    let why = format!("{leg} peer stopped reading: no write progress for 1.0s");
    assert!(logged(proxy, &why).await, "log:\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_server_that_stops_reading_ends_the_call_after_the_stall_timeout_and_sends_the_caller_to_the_conference(
) {
    let n = 41;
    // The mock hangs after 10 frames of caller audio: the socket stays open, nothing is read.
    let mock = mock(|cfg| cfg.stop_reading_after_audio_bytes = Some(10 * 160)).await;
    let mut proxy = Proxy::with_mock(&mock, &[("WRITE_STALL_TIMEOUT_SECS", "1")]);
    let mut raw = established(&mock, &proxy, n).await;
    // The caller keeps talking as fast as the proxy takes it: the OpenAI leg's socket buffers
    // fill, then the proxy's own output buffer, then (backpressure) the proxy stops reading the
    // caller and a send here blocks.
    let mut sent = 0u32;
    loop {
        let payload = frame(n, sent);
        // A send blocked for 2 s means the proxy stopped reading us (backpressure), not a
        // scheduling hiccup of a loaded machine; it may have left a partial frame, so no more.
        match tokio::time::timeout(Duration::from_secs(2), raw.try_media(&payload)).await {
            Ok(Ok(())) => sent += 1,
            // Blocked (backpressure), or the proxy already ended the call and closed.
            Err(_) | Ok(Err(_)) => break,
        }
        assert!(sent < 1_000_000, "the proxy never pushed back");
    }
    assert_ended_as_stalled(&proxy, "openai").await;
    assert!(sent > 10, "only {sent} frames went out before the stall");
    // An AI leg that hangs is an AI failure: the caller goes to the conference, not to silence.
    assert_eq!(after_stream_conference(proxy.addr, n).await, Some(room(n)));
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_peer_that_stops_reading_ends_the_call_after_the_stall_timeout_and_closes_the_openai_session(
) {
    let n = 42;
    // One long answer, generated 200× faster than real time (~2 MB/s of media to Twilio).
    let mock = mock(|cfg| {
        cfg.session.energy_vad = false;
        cfg.session
            .scripted_speech
            .push(callbridge_testkit::mock::SpeechSpan {
                start_ms: 0,
                duration_ms: 100,
            });
        cfg.session.response_audio_ms = 600_000;
        cfg.session.delta_sizes_ms = vec![200];
        cfg.session.speedup = 200.0;
        cfg.session.first_delta_delay_ms = 0;
    })
    .await;
    let mut proxy = Proxy::with_mock(
        &mock,
        &[
            ("WRITE_STALL_TIMEOUT_SECS", "1"),
            // Not what ends this call: the caller goes quiet after its turn.
            ("TWILIO_IDLE_TIMEOUT_SECS", "60"),
        ],
    );
    let mut raw = established(&mock, &proxy, n).await;
    // The caller's turn (speech, then silence for the VAD to end it), then it reads nothing.
    for seq in 0..50 {
        raw.media(&frame(n, seq)).await;
    }
    assert_ended_as_stalled(&proxy, "twilio").await;
    // The OpenAI session is closed by the proxy, and the mock saw real audio go out first.
    let sessions = closed_sessions(&mock, 1, Duration::from_secs(5)).await;
    assert_eq!(sessions.len(), 1, "the OpenAI leg is closed");
    assert!(sessions[0].stats.responses_created >= 1);
    // Not a normal end either: should Twilio still follow the <Redirect>, the caller reaches a
    // person rather than being hung up on.
    assert_eq!(after_stream_conference(proxy.addr, n).await, Some(room(n)));
    assert!(proxy.is_running());
}
