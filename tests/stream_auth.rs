//! Who may open a stream, against the real binary: the webhook's signature and TwiML, the signed
//! expiring `callId` of the stream URL, the upgrade's signature, the `start` token and callSid,
//! and the legacy-conference paths (realtime off, overload, the AI leg failing).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbridge_core::wire::ws::{Encoder, Role};
use callbridge_testkit::mock::server::MockServer;
use callbridge_testkit::sim::twiml::{StreamVerb, Twiml, Verb};
use callbridge_testkit::sim::webhook::{self, CallIdentity, HttpResponse};
use common::{
    after_stream, closed_sessions, eventually, http, logged, mock, signed_post, webhook, Proxy,
    RawStream, AUTH_TOKEN, PUBLIC_HOST,
};
use serde_json::{json, Value};

/// The conference line said before joining (FALLBACK_SAY's default).
const FALLBACK_SAY: &str = "担当者におつなぎします。";

/// The identity of call `n` with caller `from`.
fn call(n: u32, from: &str) -> CallIdentity {
    CallIdentity {
        call_sid: webhook::sid("CA", u128::from(n)),
        account_sid: webhook::sid("AC", 1),
        from: from.into(),
        to: "+81501234567".into(),
        extra: vec![],
    }
}

fn twiml(resp: &HttpResponse) -> Twiml {
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    Twiml::parse(std::str::from_utf8(&resp.body).expect("utf-8")).expect("valid TwiML")
}

/// The stream of call `n`'s TwiML.
async fn stream_of(addr: SocketAddr, n: u32) -> StreamVerb {
    twiml(&webhook(addr, n).await)
        .stream()
        .expect("a <Connect><Stream>")
        .clone()
}

/// The `{callId}` of a stream URL.
fn call_id(stream: &StreamVerb) -> &str {
    stream
        .path
        .strip_prefix("/api/twilio/media-stream/")
        .expect("media-stream path")
}

/// Upgrades to `path` with an upgrade signature over `wss://PUBLIC_HOST{path}` made with
/// `token`.
async fn upgrade_signed(addr: SocketAddr, path: &str, token: &str) -> Result<RawStream, u16> {
    let sig = webhook::signature(token, &format!("wss://{PUBLIC_HOST}{path}"), &[]);
    RawStream::connect(addr, path, &[("x-twilio-signature", &sig)]).await
}

/// The conference TwiML for call `n`: the Japanese `<Say>`, then `support-{CallSid}`.
fn assert_conference(t: &Twiml, n: u32) {
    let room = common::room(n);
    assert_eq!(
        t.verbs,
        vec![
            Verb::Say {
                text: FALLBACK_SAY.into(),
                language: Some("ja-JP".into()),
            },
            Verb::Dial {
                conference: Some(room),
                number: None,
            },
        ]
    );
}

/// `connected`, `start` (with `params` and `call_sid`) and one `media` frame, in ONE write: the
/// proxy reads them together, so nothing is left unread when it closes (no reset) and the media
/// frame is certainly seen right after `start`.
async fn start_and_media_in_one_write(
    raw: &mut RawStream,
    call_sid: &str,
    params: &[(String, String)],
) {
    let params: serde_json::Map<String, Value> = params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let sid = raw.stream_sid.clone();
    let frames = [
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        json!({"event": "start", "sequenceNumber": "1", "streamSid": sid,
            "start": {"accountSid": webhook::sid("AC", 1), "streamSid": sid, "callSid": call_sid,
                "tracks": ["inbound"], "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}),
        json!({"event": "media", "sequenceNumber": "2", "streamSid": sid,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                "payload": "/////////////////////w=="}}),
    ];
    let mut enc = Encoder::new(Role::Client);
    let mut bytes = Vec::new();
    for f in frames {
        enc.text(&mut bytes, f.to_string().as_bytes());
    }
    raw.send_raw(&bytes).await;
}

/// Waits until the mock has confirmed a session (sent `session.updated`), then lets the proxy
/// read it: audio sent from now on is forwarded (audio still buffered when a call ends is not).
async fn wait_session_ready(mock: &MockServer) {
    let ready = eventually(Duration::from_secs(10), || {
        mock.sessions().iter().any(|s| {
            s.sent_events
                .iter()
                .any(|e| e.contains("\"session.updated\""))
        })
    })
    .await;
    assert!(ready, "no session.updated");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Once the proxy has finished the call: no OpenAI session was ever opened for it (a stream
/// whose `start` does not check out dials nothing, and takes nothing from the pool).
async fn assert_no_openai_session(proxy: &Proxy, mock: &MockServer) {
    assert!(
        logged(proxy, "call finished").await,
        "log:\n{}",
        proxy.log()
    );
    assert!(mock.sessions().is_empty(), "an OpenAI session was opened");
}

// ---- the webhook ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_a_wrong_signature_is_refused_with_403() {
    let mut proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    let params = webhook::voice_params(&call(1, "+819012345678"), "ringing");
    let url = format!("https://{PUBLIC_HOST}/api/twilio/voice");
    let sig = webhook::signature("another-accounts-token", &url, &params);
    let body = webhook::form_encode(&params);
    let resp = http(
        proxy.addr,
        "POST",
        "/api/twilio/voice",
        &[("X-Twilio-Signature", &sig)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 403);
    assert!(logged(&proxy, "X-Twilio-Signature missing or wrong").await);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_whose_signed_parameters_were_changed_is_refused_with_403() {
    let mut proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    let mut params = webhook::voice_params(&call(1, "+819012345678"), "ringing");
    let url = format!("https://{PUBLIC_HOST}/api/twilio/voice");
    let sig = webhook::signature(AUTH_TOKEN, &url, &params);
    params.iter_mut().find(|(k, _)| k == "From").unwrap().1 = "+819099999999".into();
    let body = webhook::form_encode(&params);
    let resp = http(
        proxy.addr,
        "POST",
        "/api/twilio/voice",
        &[("X-Twilio-Signature", &sig)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 403);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_without_a_signature_is_refused_with_403() {
    let mut proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    let params = webhook::voice_params(&call(1, "+819012345678"), "ringing");
    let body = webhook::form_encode(&params);
    let resp = http(
        proxy.addr,
        "POST",
        "/api/twilio/voice",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 403);
    assert!(logged(&proxy, "X-Twilio-Signature missing or wrong").await);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_answers_a_stream_with_the_call_parameters_and_a_redirect_after_it() {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let addr = proxy.addr;
    let resp = webhook(addr, 2).await;
    assert!(
        resp.header("Content-Type")
            .is_some_and(|c| c.starts_with("text/xml")),
        "{:?}",
        resp.headers
    );
    let t = twiml(&resp);
    assert_eq!(t.verbs.len(), 2, "{:?}", t.verbs);
    let stream = t.stream().expect("<Connect><Stream>");
    let id = call_id(stream);
    // Built from PUBLIC_HOST, never from the Host header (the request named the proxy's
    // loopback address).
    assert_eq!(
        stream.url,
        format!("wss://{PUBLIC_HOST}/api/twilio/media-stream/{id}")
    );
    assert!(
        id.starts_with(&format!("{}.", webhook::sid("CA", 2))),
        "{id}"
    );
    let names: Vec<&str> = stream.parameters.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["callId", "agentId", "from", "to", "token"]);
    let value = |k: &str| {
        stream
            .parameters
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap()
    };
    assert_eq!(value("callId"), id);
    assert_eq!(value("agentId"), "default");
    assert_eq!(value("from"), "+819012345678");
    assert_eq!(value("to"), "+81501234567");
    assert_eq!(value("token").len(), 16, "a 96-bit base64url token");
    let redirect = t
        .redirect_after_stream()
        .expect("<Redirect> after <Connect>");
    assert_eq!(
        redirect.url,
        format!("https://{PUBLIC_HOST}/api/twilio/after-stream")
    );
    assert_eq!(redirect.method, "POST");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_caller_id_is_xml_escaped_in_the_twiml() {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let hostile = "<script>&\"'</Parameter></Stream>";
    let params = webhook::voice_params(&call(3, hostile), "ringing");
    let resp = signed_post(proxy.addr, "/api/twilio/voice", &params).await;
    let body = String::from_utf8(resp.body.clone()).unwrap();
    assert!(!body.contains("<script>"), "{body}");
    assert!(body.contains("&lt;script&gt;&amp;&quot;"), "{body}");
    let t = twiml(&resp);
    let stream = t.stream().expect("a stream");
    assert!(
        stream
            .parameters
            .contains(&("from".to_owned(), hostile.to_owned())),
        "{:?}",
        stream.parameters
    );
    assert_eq!(stream.parameters.len(), 5);
    assert!(proxy.is_running());
}

// ---- the stream URL and the upgrade -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_call_id_is_refused_with_403_before_the_upgrade() {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let path = format!(
        "/api/twilio/media-stream/{}.9999999999.AAAA",
        webhook::sid("CA", 4)
    );
    assert_eq!(
        RawStream::connect(proxy.addr, &path, &[]).await.err(),
        Some(403)
    );
    assert!(logged(&proxy, "refused media stream: malformed stream id").await);
    assert!(
        mock.sessions().is_empty(),
        "no OpenAI session for a refused stream"
    );
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_call_id_signed_with_another_secret_is_refused_with_403() {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let path = format!(
        "/api/twilio/media-stream/{}.9999999999.{}",
        webhook::sid("CA", 4),
        "Q2xhdWRlIHdhcyBoZXJlIQ"
    );
    let refused = upgrade_signed(proxy.addr, &path, AUTH_TOKEN).await;
    assert_eq!(refused.err(), Some(403));
    assert!(logged(&proxy, "refused media stream: stream id signature mismatch").await);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_call_id_with_one_character_of_its_tag_changed_is_refused_with_403() {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let stream = stream_of(proxy.addr, 5).await;
    let mut id = call_id(&stream).as_bytes().to_vec();
    let i = id.len() - 10; // inside the 22-character tag
    id[i] = if id[i] == b'A' { b'B' } else { b'A' };
    let path = format!(
        "/api/twilio/media-stream/{}",
        String::from_utf8(id).unwrap()
    );
    let refused = upgrade_signed(proxy.addr, &path, AUTH_TOKEN).await;
    assert_eq!(refused.err(), Some(403));
    assert!(logged(&proxy, "refused media stream: stream id signature mismatch").await);
    assert!(mock.sessions().is_empty());
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_call_id_with_its_expiry_pushed_back_is_refused_with_403() {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let stream = stream_of(proxy.addr, 6).await;
    let id = call_id(&stream);
    let (sid, rest) = id.split_once('.').unwrap();
    let (expiry, tag) = rest.split_once('.').unwrap();
    let later: u64 = expiry.parse::<u64>().unwrap() + 3600;
    let path = format!("/api/twilio/media-stream/{sid}.{later}.{tag}");
    let refused = upgrade_signed(proxy.addr, &path, AUTH_TOKEN).await;
    assert_eq!(refused.err(), Some(403));
    assert!(logged(&proxy, "refused media stream: stream id signature mismatch").await);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_call_id_is_refused_with_403() {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[("STREAM_TTL_SECS", "1")]);
    let stream = stream_of(proxy.addr, 7).await;
    // The protocol's clock has to pass: a stream id is valid through the unix second its expiry
    // names (`{sid}.{expiry}.{tag}`, whole seconds; 1 s is the smallest STREAM_TTL_SECS), so the
    // test waits until that second is over, 1 to 2 s after the webhook.
    let expiry: u64 = call_id(&stream).split('.').nth(1).unwrap().parse().unwrap();
    let expired_at = UNIX_EPOCH + Duration::from_secs(expiry + 1);
    while let Ok(left) = expired_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let refused = upgrade_signed(proxy.addr, &stream.path, AUTH_TOKEN).await;
    assert_eq!(refused.err(), Some(403));
    assert!(logged(&proxy, "refused media stream: stream id expired").await);
    assert!(mock.sessions().is_empty());
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_a_wrong_or_missing_signature_is_refused_with_403_before_101() {
    let n = 8;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let stream = stream_of(proxy.addr, n).await;
    let refused = upgrade_signed(proxy.addr, &stream.path, "another-accounts-token").await;
    assert_eq!(refused.err(), Some(403));
    assert_eq!(
        RawStream::connect(proxy.addr, &stream.path, &[])
            .await
            .err(),
        Some(403)
    );
    // Signed over the Host the request named instead of PUBLIC_HOST: refused too.
    let sig = webhook::signature(
        AUTH_TOKEN,
        &format!("wss://{}{}", proxy.addr, stream.path),
        &[],
    );
    assert_eq!(
        RawStream::connect(proxy.addr, &stream.path, &[("x-twilio-signature", &sig)])
            .await
            .err(),
        Some(403)
    );
    assert!(
        logged(
            &proxy,
            "refused media stream: x-twilio-signature missing or wrong"
        )
        .await
    );
    let metrics =
        String::from_utf8(http(proxy.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(
        metrics.contains("callbridge_refused_total{reason=\"upgrade_signature\"} 3"),
        "{metrics}"
    );
    assert!(mock.sessions().is_empty());
    // The refusals did not use the stream id: the real upgrade still works.
    let raw = upgrade_signed(proxy.addr, &stream.path, AUTH_TOKEN)
        .await
        .expect("the signed upgrade");
    call_works(raw, &stream, n, &mock, &mut proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_signature_is_accepted_over_the_wss_and_https_forms_with_and_without_443() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    for (i, form) in [
        "wss://{h}{p}",
        "wss://{h}:443{p}",
        "https://{h}{p}",
        "https://{h}:443{p}",
    ]
    .iter()
    .enumerate()
    {
        let stream = stream_of(proxy.addr, 80 + i as u32).await;
        let url = form
            .replace("{h}", PUBLIC_HOST)
            .replace("{p}", &stream.path);
        let sig = webhook::signature(AUTH_TOKEN, &url, &[]);
        let raw =
            RawStream::connect(proxy.addr, &stream.path, &[("x-twilio-signature", &sig)]).await;
        assert!(raw.is_ok(), "{url}: {:?}", raw.err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_upgrade_verification_off_a_bad_signature_is_left_to_the_start_token() {
    // TWILIO_VERIFY_UPGRADE=false: protocol.md 3.2's fallback, for a proxy that rewrites what
    // Twilio signed. The stream is closed only if the start token does not pass either.
    let n = 28;
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[("TWILIO_VERIFY_UPGRADE", "false")]);
    let stream = stream_of(proxy.addr, n).await;

    // Wrong signature and wrong token: closed before anything reaches OpenAI.
    let mut raw = upgrade_signed(proxy.addr, &stream.path, "another-accounts-token")
        .await
        .expect("the upgrade is left to the start token");
    let mut params = stream.parameters.clone();
    params.iter_mut().find(|(k, _)| k == "token").unwrap().1 = "AAAAAAAAAAAAAAAA".into();
    let call_sid = webhook::sid("CA", u128::from(n));
    raw.stream_sid = webhook::sid("MZ", u128::from(n));
    start_and_media_in_one_write(&mut raw, &call_sid, &params).await;
    assert_eq!(raw.until_closed(Duration::from_secs(3)).await, Some(1000));
    assert!(
        logged(
            &proxy,
            "TWILIO_VERIFY_UPGRADE=false: the start token decides"
        )
        .await
    );
    assert!(logged(&proxy, "stream refused: start token missing or wrong").await);
    assert_no_openai_session(&proxy, &mock).await;

    // No signature at all, right token: the call works.
    let n = 29;
    let mock = self::mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[("TWILIO_VERIFY_UPGRADE", "false")]);
    let stream = stream_of(proxy.addr, n).await;
    let raw = RawStream::connect(proxy.addr, &stream.path, &[])
        .await
        .expect("accepted without x-twilio-signature");
    call_works(raw, &stream, n, &mock, &mut proxy).await;
}

/// Plays call `n` over an accepted upgrade `raw` of `stream`: start, one media frame, stop.
/// The stream closes normally, the frame reaches OpenAI and the proxy keeps running.
async fn call_works(
    mut raw: RawStream,
    stream: &StreamVerb,
    n: u32,
    mock: &MockServer,
    proxy: &mut Proxy,
) {
    raw.params = stream.parameters.clone();
    raw.call_sid = webhook::sid("CA", u128::from(n));
    raw.stream_sid = webhook::sid("MZ", u128::from(n));
    raw.start().await;
    wait_session_ready(mock).await;
    raw.media("/////////////////////w==").await;
    raw.stop().await;
    assert_eq!(raw.until_closed(Duration::from_secs(3)).await, Some(1000));
    let closed = closed_sessions(mock, 1, Duration::from_secs(2)).await;
    assert_eq!(closed.len(), 1);
    assert_eq!(
        closed[0].stats.appends,
        vec!["/////////////////////w==".to_owned()]
    );
    assert!(proxy.is_running());
}

// ---- the start message -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_wrong_token_closes_the_stream_and_no_audio_reaches_openai() {
    let n = 10;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = RawStream::open(proxy.addr, n).await;
    let mut params = raw.params.clone();
    params.iter_mut().find(|(k, _)| k == "token").unwrap().1 = "AAAAAAAAAAAAAAAA".into();
    let call_sid = raw.call_sid.clone();
    start_and_media_in_one_write(&mut raw, &call_sid, &params).await;
    assert_eq!(raw.until_closed(Duration::from_secs(3)).await, Some(1000));
    assert!(
        logged(&proxy, "stream refused: start token missing or wrong").await,
        "log:\n{}",
        proxy.log()
    );
    assert_no_openai_session(&proxy, &mock).await;
    assert!(logged(&proxy, "reason=\"unauthorized\"").await);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_a_token_closes_the_stream_and_no_audio_reaches_openai() {
    let n = 11;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = RawStream::open(proxy.addr, n).await;
    let params: Vec<_> = raw
        .params
        .iter()
        .filter(|(k, _)| k != "token")
        .cloned()
        .collect();
    let call_sid = raw.call_sid.clone();
    start_and_media_in_one_write(&mut raw, &call_sid, &params).await;
    assert_eq!(raw.until_closed(Duration::from_secs(3)).await, Some(1000));
    assert!(logged(&proxy, "stream refused: start token missing or wrong").await);
    assert_no_openai_session(&proxy, &mock).await;
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_for_another_call_sid_than_the_signed_one_closes_the_stream_and_no_audio_reaches_openai(
) {
    let n = 12;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = RawStream::open(proxy.addr, n).await;
    let params = raw.params.clone();
    let other = webhook::sid("CA", 9999);
    start_and_media_in_one_write(&mut raw, &other, &params).await;
    assert_eq!(raw.until_closed(Duration::from_secs(3)).await, Some(1000));
    assert!(
        logged(
            &proxy,
            "stream refused: start.callSid does not match the stream url"
        )
        .await,
        "log:\n{}",
        proxy.log()
    );
    assert_no_openai_session(&proxy, &mock).await;
    assert!(proxy.is_running());
}

// ---- the legacy conference ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_realtime_off_the_webhook_answers_the_conference_and_no_stream() {
    let mut proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    let t = twiml(&webhook(proxy.addr, 13).await);
    assert!(t.stream().is_none());
    assert_conference(&t, 13);
    assert!(logged(&proxy, "realtime mode off: legacy conference").await);
    assert!(proxy.is_running());
}

/// `active_calls` from `/healthz`.
async fn active_calls(addr: SocketAddr) -> u64 {
    let resp = http(addr, "GET", "/healthz", &[], b"").await;
    let v: Value = serde_json::from_slice(&resp.body).expect("healthz json");
    v["active_calls"].as_u64().expect("active_calls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_calls_reached_the_next_webhook_answers_the_conference_until_a_call_ends() {
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[("MAX_CALLS", "1")]);
    let addr = proxy.addr;
    let mut first = RawStream::open(addr, 14).await;
    first.start().await;
    assert_eq!(active_calls(addr).await, 1);

    let t = twiml(&webhook(addr, 15).await);
    assert!(t.stream().is_none());
    assert_conference(&t, 15);
    assert!(
        logged(
            &proxy,
            "overloaded (active calls and streams just minted fill MAX_CALLS)"
        )
        .await
    );

    first.stop().await;
    assert_eq!(first.until_closed(Duration::from_secs(3)).await, Some(1000));
    let mut calls = 1;
    for _ in 0..100 {
        calls = active_calls(addr).await;
        if calls == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls, 0);
    let t = twiml(&webhook(addr, 16).await);
    assert!(t.stream().is_some(), "streams again once a call ended");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_openai_unreachable_the_stream_is_closed_normally_and_after_stream_answers_the_conference(
) {
    let n = 17;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime");
    let mut proxy = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", url.as_str()),
        ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    let addr = proxy.addr;
    let t = twiml(&webhook(addr, n).await);
    let stream = t.stream().expect("a stream").clone();
    let redirect = t.redirect_after_stream().expect("a redirect").clone();
    assert_eq!(
        redirect.url,
        format!("https://{PUBLIC_HOST}/api/twilio/after-stream")
    );
    let t0 = Instant::now();
    let mut raw = upgrade_signed(addr, &stream.path, AUTH_TOKEN)
        .await
        .expect("upgrade accepted");
    // OpenAI is dialled once `start` checked out; nothing else is sent (a frame the proxy never
    // reads would turn its close into a reset).
    raw.params = stream.parameters.clone();
    raw.call_sid = webhook::sid("CA", u128::from(n));
    raw.stream_sid = webhook::sid("MZ", u128::from(n));
    raw.start().await;
    assert_eq!(
        raw.until_closed(Duration::from_secs(5)).await,
        Some(1000),
        "log:\n{}",
        proxy.log()
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(
        logged(&proxy, "openai connect failed").await,
        "log:\n{}",
        proxy.log()
    );

    // Twilio follows the <Redirect>: the AI leg failed, so the caller reaches a human.
    let after = twiml(&after_stream(addr, n).await);
    assert_conference(&after, n);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_call_that_ended_normally_after_stream_answers_hangup() {
    let n = 18;
    let mock = mock(|_| {}).await;
    let mut proxy = Proxy::with_mock(&mock, &[]);
    let mut raw = RawStream::open(proxy.addr, n).await;
    raw.start().await;
    raw.media("/////////////////////w==").await;
    raw.stop().await;
    assert_eq!(raw.until_closed(Duration::from_secs(3)).await, Some(1000));
    let after = twiml(&after_stream(proxy.addr, n).await);
    assert_eq!(after.verbs, vec![Verb::Hangup]);
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_after_stream_request_with_a_wrong_signature_is_refused_with_403() {
    let mut proxy = Proxy::spawn(&[
        ("USE_OPENAI_REALTIME", "false"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    let params = webhook::voice_params(&call(19, "+819012345678"), "in-progress");
    let url = format!("https://{PUBLIC_HOST}/api/twilio/after-stream");
    let sig = webhook::signature("another-accounts-token", &url, &params);
    let body = webhook::form_encode(&params);
    let resp = http(
        proxy.addr,
        "POST",
        "/api/twilio/after-stream",
        &[("X-Twilio-Signature", &sig)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 403);
    assert!(proxy.is_running());
}
