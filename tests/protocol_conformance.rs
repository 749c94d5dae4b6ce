//! Protocol conformance through the real binary, with literal frames copied from
//! `protocol.md`: Twilio's webhook requests and signatures (section 3.3), Twilio's Media Streams
//! messages exactly as Twilio writes them (section 4.1, pretty-printed, other field orders), and
//! a scripted OpenAI Realtime GA server that sends the section 5 events verbatim, plus events
//! callbridge does not use, and checks every client event against the GA JSON Schema.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use callbridge_core::wire::http::{parse_request, Limits, Parsed, Request};
use callbridge_core::wire::ws::{self, Decoder, Encoder, Message, Role};
use callbridge_testkit::schema::{beta_fields, SchemaValidator};
use callbridge_testkit::sim::twiml::Twiml;
use callbridge_testkit::sim::webhook::HttpResponse;
use common::{http, Proxy, RawStream};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// protocol.md 3.3: the auth token of examples 2 to 6.
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// protocol.md 3.3: the public host of examples 2 to 6.
const HOST: &str = "bridge.example.com";

const T: Duration = Duration::from_secs(5);

/// A server with the protocol.md examples' token and host (no OpenAI needed for webhooks).
fn example_proxy() -> Proxy {
    Proxy::spawn(&[
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("PUBLIC_HOST", HOST),
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
    ])
}

/// POSTs `body` (already form-encoded, as on the wire) to `target` with `signature`.
async fn post(addr: SocketAddr, target: &str, body: &str, signature: &str) -> HttpResponse {
    http(
        addr,
        "POST",
        target,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Twilio-Signature", signature),
        ],
        body.as_bytes(),
    )
    .await
}

/// protocol.md 3.3 example 2, as Twilio puts it on the wire.
const EXAMPLE_2_BODY: &str = "AccountSid=AC00000000000000000000000000000001&ApiVersion=2010-04-01\
&CallSid=CA00000000000000000000000000000001&CallStatus=ringing&Called=%2B81501234567\
&Caller=%2B819012345678&Direction=inbound&From=%2B819012345678&FromCountry=JP\
&To=%2B81501234567&ToCountry=JP";

#[tokio::test]
async fn voice_webhook_example_2_is_accepted_with_either_port_form_and_answers_twiml() {
    let proxy = example_proxy();
    for sig in [
        "DBGkIL/deAPzeQrqy7FeC/dD7II=",
        "SSB96hVnynFx1zZBk+1C8HUWsV8=",
    ] {
        let resp = post(proxy.addr, "/api/twilio/voice", EXAMPLE_2_BODY, sig).await;
        assert_eq!(
            resp.status,
            200,
            "{sig}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.header("content-type"), Some("text/xml; charset=utf-8"));
        let body = std::str::from_utf8(&resp.body).unwrap();
        assert!(body.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://bridge.example.com/api/twilio/media-stream/"#), "{body}");
        let twiml = Twiml::parse(body).expect("valid twiml");
        let stream = twiml.stream().expect("<Connect><Stream>");
        assert!(!stream.url.contains('?'), "no query string in <Stream url>");
        let names: Vec<&str> = stream.parameters.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"callId") && names.contains(&"token"),
            "{names:?}"
        );
        for (name, value) in &stream.parameters {
            assert!(name.len() + value.len() < 500, "parameter {name} too long");
        }
        assert!(body.contains(r#"</Connect><Redirect method="POST">https://bridge.example.com/api/twilio/after-stream"#), "{body}");
    }
    // A changed From, and the https:// signature of another URL, are refused.
    let tampered = EXAMPLE_2_BODY.replace("From=%2B819012345678", "From=%2B819012345679");
    let resp = post(
        proxy.addr,
        "/api/twilio/voice",
        &tampered,
        "DBGkIL/deAPzeQrqy7FeC/dD7II=",
    )
    .await;
    assert_eq!(resp.status, 403);
}

#[tokio::test]
async fn voice_webhook_example_3_percent_encoded_unicode_is_accepted() {
    let proxy = example_proxy();
    let body = "CallSid=CA00000000000000000000000000000002\
&CallerName=%E5%B1%B1%E7%94%B0+%E5%A4%AA%E9%83%8E&From=%2B819012345678\
&FromCity=%E6%9D%B1%E4%BA%AC&To=%2B81501234567";
    let resp = post(
        proxy.addr,
        "/api/twilio/voice",
        body,
        "MGl1857CXI5JgYMrgBT92lxoSRI=",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
}

#[tokio::test]
async fn after_stream_example_4_with_call_id_path_and_query_is_answered() {
    // protocol.md 2.1 / 3.3 example 4: the <Redirect> target may carry the callId in the path
    // and a query string; both are signed as requested.
    let proxy = example_proxy();
    let body = "CallSid=CA00000000000000000000000000000003&CallStatus=in-progress\
&From=%2B819012345678&To=%2B81501234567";
    let resp = post(
        proxy.addr,
        "/api/twilio/after-stream/c_7f3a9e?reason=hangup&n=2",
        body,
        "O5H+V/T9kRFXjP9vBGz+oxi//ZA=",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some("text/xml; charset=utf-8"));
    // This instance knows nothing of the call: the caller goes to the conference, never
    // hung up on (design.md "Many instances").
    let body = std::str::from_utf8(&resp.body).unwrap();
    assert!(
        body.contains("<Response>")
            && body.contains("<Conference>support-CA00000000000000000000000000000003</Conference>"),
        "{body}"
    );
    // The same request with the signature of the URL without its query is refused.
    let resp = post(
        proxy.addr,
        "/api/twilio/after-stream/c_7f3a9e?reason=hangup&n=3",
        "CallSid=CA00000000000000000000000000000003&CallStatus=in-progress&From=%2B819012345678&To=%2B81501234567",
        "O5H+V/T9kRFXjP9vBGz+oxi//ZA=",
    )
    .await;
    assert_eq!(resp.status, 403);
}

#[tokio::test]
async fn status_callback_example_6_with_repeated_keys_is_204() {
    let proxy = example_proxy();
    let body = "CallSid=CA00000000000000000000000000000004&Tag=b&Tag=a&To=%2B81501234567";
    let resp = post(
        proxy.addr,
        "/api/twilio/status",
        body,
        "GDeyi3yq756jYwZh9Q6oR4C4UsA=",
    )
    .await;
    assert_eq!(resp.status, 204, "{}", String::from_utf8_lossy(&resp.body));
    assert!(resp.body.is_empty());
}

// ---- a scripted OpenAI Realtime GA server ------------------------------------------------------

/// One accepted connection of the scripted server.
struct FakeOpenAi {
    stream: TcpStream,
    request: Request,
    dec: Decoder,
    enc: Encoder,
    input: Vec<u8>,
    /// Every client event received, in order.
    received: Vec<Value>,
}

impl FakeOpenAi {
    /// Accepts one WebSocket client on `listener` and completes the handshake.
    async fn accept(listener: &TcpListener) -> FakeOpenAi {
        let (mut stream, _) = tokio::time::timeout(T, listener.accept())
            .await
            .expect("callbridge connects to openai")
            .unwrap();
        let mut buf = Vec::new();
        let (request, consumed) = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            match parse_request(&buf, &Limits::default()).unwrap() {
                Parsed::Complete { request, consumed } => break (request, consumed),
                Parsed::Partial => {}
            }
        };
        let accept = ws::check_upgrade(&request).expect("a valid websocket upgrade");
        let mut out = Vec::new();
        ws::write_upgrade_response(&mut out, &accept);
        stream.write_all(&out).await.unwrap();
        FakeOpenAi {
            stream,
            request,
            dec: Decoder::new(Role::Server, 1 << 24),
            enc: Encoder::new(Role::Server),
            input: buf.split_off(consumed),
            received: Vec::new(),
        }
    }

    /// Sends one server event, as text exactly.
    async fn send(&mut self, text: &str) {
        let value: Value = serde_json::from_str(text).expect("test frame is json");
        SchemaValidator::server()
            .validate(&value)
            .unwrap_or_else(|e| panic!("test frame is not a valid GA server event: {e}\n{text}"));
        let mut out = Vec::new();
        self.enc.text(&mut out, text.as_bytes());
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next client event (checked against the GA client schema, no beta fields);
    /// `None` on timeout, panics when the socket closed.
    async fn recv(&mut self, within: Duration) -> Option<Value> {
        match self.next(within).await {
            Ok(v) => v,
            Err(code) => panic!("callbridge closed the openai socket ({code:?})"),
        }
    }

    /// `Ok(Some(event))`, `Ok(None)` on timeout, `Err(close code)` when closed.
    async fn next(&mut self, within: Duration) -> Result<Option<Value>, Option<u16>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let decoded = self.dec.decode(&mut self.input).expect("valid frames");
            let consumed = decoded.consumed;
            let msg = match decoded.message {
                Some(Message::Text(t)) => Some(Ok(
                    serde_json::from_slice::<Value>(t).expect("client events are json")
                )),
                Some(Message::Close { code, .. }) => Some(Err(code)),
                Some(Message::Binary(_)) => panic!("binary frame to openai"),
                _ => None,
            };
            self.input.drain(..consumed);
            match msg {
                Some(Ok(v)) => {
                    SchemaValidator::client()
                        .validate(&v)
                        .unwrap_or_else(|e| panic!("invalid GA client event: {e}\n{v}"));
                    assert_eq!(beta_fields(&v), Vec::<String>::new(), "{v}");
                    self.received.push(v.clone());
                    return Ok(Some(v));
                }
                Some(Err(code)) => return Err(code),
                None if consumed > 0 => continue,
                None => {}
            }
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(None),
                Ok(Ok(n)) => self.input.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next client event of type `ty`, skipping appends; panics on another type.
    async fn expect(&mut self, ty: &str) -> Value {
        loop {
            let v = self
                .recv(T)
                .await
                .unwrap_or_else(|| panic!("no {ty} within {T:?}"));
            if v["type"] == "input_audio_buffer.append" && ty != v["type"] {
                continue;
            }
            assert_eq!(v["type"], ty, "{v}");
            return v;
        }
    }
}

/// A callbridge pointed at a scripted OpenAI server on `listener`.
fn proxy_for(listener: &TcpListener) -> Proxy {
    let url = format!(
        "ws://{}/v1/realtime?model={{model}}",
        listener.local_addr().unwrap()
    );
    Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", url.as_str()),
        ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ("TWILIO_AUTH_TOKEN", common::AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ])
}

/// Twilio's next message that is not a `mark`/`media` we skip through `filter`.
async fn twilio_next(raw: &mut RawStream) -> Value {
    raw.recv(T)
        .await
        .expect("twilio socket open")
        .expect("a message to twilio in time")
}

/// protocol.md 5.4: a `session.created` with the GA defaults (24 kHz PCM).
const SESSION_CREATED: &str = r#"{"type": "session.created", "event_id": "event_A1", "session": {"type": "realtime", "object": "realtime.session", "id": "sess_C9", "model": "gpt-realtime-2025-08-28", "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": null, "prompt": null, "expires_at": 1756324625, "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": null, "noise_reduction": null, "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200, "idle_timeout_ms": null, "create_response": true, "interrupt_response": true}}, "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0}}, "include": null}}"#;

/// `session.updated` with the full effective configuration, including fields callbridge never
/// set.
const SESSION_UPDATED: &str = r#"{"type": "session.updated", "event_id": "event_A2", "session": {"type": "realtime", "object": "realtime.session", "id": "sess_C9", "model": "gpt-realtime-2025-08-28", "output_modalities": ["audio"], "instructions": "x", "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": null, "prompt": null, "expires_at": 1756324625, "audio": {"input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "gpt-4o-transcribe"}, "noise_reduction": {"type": "near_field"}, "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500, "idle_timeout_ms": null, "create_response": true, "interrupt_response": true}}, "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0}}, "include": null}}"#;

/// One assistant turn in the order of protocol.md 5.4, with every event callbridge may ignore.
fn typical_turn(resp: &str, item: &str, delta: &str) -> Vec<String> {
    let r = |s: &str| {
        s.replace("resp_R1", resp)
            .replace("item_CBx2", item)
            .replace("DELTA", delta)
    };
    [
        r#"{"type": "rate_limits.updated", "event_id": "event_R0", "rate_limits": [{"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06}, {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 1.2}]}"#,
        r#"{"type": "input_audio_buffer.speech_stopped", "event_id": "event_B2", "audio_end_ms": 2100, "item_id": "item_U7"}"#,
        r#"{"type": "input_audio_buffer.committed", "event_id": "event_B3", "previous_item_id": null, "item_id": "item_U7"}"#,
        r#"{"type": "conversation.item.added", "event_id": "event_B4", "previous_item_id": null, "item": {"id": "item_U7", "object": "realtime.item", "type": "message", "status": "completed", "role": "user", "content": [{"type": "input_audio", "transcript": null}]}}"#,
        r#"{"type": "conversation.item.done", "event_id": "event_B5", "previous_item_id": null, "item": {"id": "item_U7", "object": "realtime.item", "type": "message", "status": "completed", "role": "user", "content": [{"type": "input_audio", "transcript": null}]}}"#,
        r#"{"type": "response.created", "event_id": "event_C1", "response": {"id": "resp_R1", "object": "realtime.response", "status": "in_progress", "status_details": null, "output": [], "conversation_id": "conv_1", "output_modalities": ["audio"], "max_output_tokens": "inf", "audio": {"output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}, "usage": null, "metadata": null}}"#,
        r#"{"type": "response.output_item.added", "event_id": "event_C2", "response_id": "resp_R1", "output_index": 0, "item": {"id": "item_CBx2", "object": "realtime.item", "type": "message", "status": "in_progress", "role": "assistant", "content": []}}"#,
        r#"{"type": "conversation.item.added", "event_id": "event_C2b", "previous_item_id": "item_U7", "item": {"id": "item_CBx2", "object": "realtime.item", "type": "message", "status": "in_progress", "role": "assistant", "content": []}}"#,
        r#"{"type": "response.content_part.added", "event_id": "event_C2c", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0, "part": {"type": "audio", "transcript": ""}}"#,
        r#"{"type": "conversation.item.input_audio_transcription.delta", "event_id": "event_T1", "item_id": "item_U7", "content_index": 0, "delta": "注文"}"#,
        r#"{"type": "response.output_audio.delta", "event_id": "event_C3", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0, "delta": "DELTA"}"#,
        r#"{"type": "response.output_audio_transcript.delta", "event_id": "event_C4", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0, "delta": "はい"}"#,
        r#"{"type": "conversation.item.input_audio_transcription.completed", "event_id": "event_T2", "item_id": "item_U7", "content_index": 0, "transcript": "注文番号は12345です。", "usage": {"type": "duration", "seconds": 2.1}}"#,
        r#"{"type": "response.output_audio.done", "event_id": "event_C5", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0}"#,
        r#"{"type": "response.output_audio_transcript.done", "event_id": "event_C6", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0, "transcript": "はい。"}"#,
        r#"{"type": "response.content_part.done", "event_id": "event_C6b", "response_id": "resp_R1", "item_id": "item_CBx2", "output_index": 0, "content_index": 0, "part": {"type": "audio", "transcript": "はい。"}}"#,
        r#"{"type": "response.output_item.done", "event_id": "event_C7", "response_id": "resp_R1", "output_index": 0, "item": {"id": "item_CBx2", "object": "realtime.item", "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_audio", "transcript": "はい。"}]}}"#,
        r#"{"type": "conversation.item.done", "event_id": "event_C7b", "previous_item_id": "item_U7", "item": {"id": "item_CBx2", "object": "realtime.item", "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_audio", "transcript": "はい。"}]}}"#,
        r#"{"type": "response.done", "event_id": "event_C9", "response": {"id": "resp_R1", "object": "realtime.response", "status": "completed", "status_details": null, "output": [], "usage": {"total_tokens": 412, "input_tokens": 301, "output_tokens": 111, "input_token_details": {"text_tokens": 120, "audio_tokens": 181, "cached_tokens": 0}, "output_token_details": {"text_tokens": 25, "audio_tokens": 86}}}}"#,
    ]
    .iter()
    .map(|s| r(s))
    .collect()
}

/// Asserts callbridge dropped no frame and logged no protocol error.
fn assert_no_protocol_errors(proxy: &Proxy) {
    let log = proxy.log();
    assert!(
        !log.contains("dropped frame"),
        "callbridge dropped a frame:\n{log}"
    );
}

#[tokio::test]
async fn a_call_with_literal_twilio_frames_and_every_ga_event_bridges_cleanly() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = proxy_for(&listener);
    let mut twilio = RawStream::open(proxy.addr, 1).await;
    let sid = twilio.stream_sid.clone();
    let call_sid = twilio.call_sid.clone();

    // protocol.md 4.1: `connected`, then `start` pretty-printed as in the document.
    twilio
        .send_text(br#"{"event": "connected", "protocol": "Call", "version": "1.0.0"}"#)
        .await;
    let params: serde_json::Map<String, Value> = twilio
        .params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let start = format!(
        r#"{{
  "event": "start",
  "sequenceNumber": "1",
  "start": {{
    "accountSid": "AC00000000000000000000000000000001",
    "streamSid": "{sid}",
    "callSid": "{call_sid}",
    "tracks": ["inbound"],
    "customParameters": {params},
    "mediaFormat": {{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
  }},
  "streamSid": "{sid}"
}}"#,
        params = Value::Object(params)
    );
    twilio.send_text(start.as_bytes()).await;

    // protocol.md 5.1: the handshake.
    let mut oa = FakeOpenAi::accept(&listener).await;
    assert_eq!(oa.request.method, "GET");
    assert_eq!(oa.request.raw_target(), "/v1/realtime?model=gpt-realtime");
    assert_eq!(oa.request.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(oa.request.header("openai-beta"), None, "no beta header");

    // Caller audio before session.updated must not be appended (protocol.md 5.1); pretty-printed
    // media frame exactly as in 4.1.
    let media = |seq: u32, payload: &str| {
        format!(
            r#"{{
  "event": "media",
  "sequenceNumber": "{seq}",
  "media": {{"track": "inbound", "chunk": "{chunk}", "timestamp": "{ts}", "payload": "{payload}"}},
  "streamSid": "{sid}"
}}"#,
            chunk = seq - 1,
            ts = (seq - 2) * 20
        )
    };
    twilio
        .send_text(media(2, "/////39/fn5+fn5+/////w==").as_bytes())
        .await;

    oa.send(SESSION_CREATED).await;
    let update = oa.expect("session.update").await;
    let session = &update["session"];
    assert_eq!(session["type"], "realtime");
    assert_eq!(session["output_modalities"], json!(["audio"]));
    assert_eq!(
        session["audio"]["input"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(
        session["audio"]["output"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(
        session["audio"]["input"]["turn_detection"]["type"],
        "server_vad"
    );
    assert!(update["event_id"].is_string());
    // Nothing but the session.update before session.updated.
    assert_eq!(oa.recv(Duration::from_millis(200)).await, None);

    oa.send(SESSION_UPDATED).await;
    let append = oa.expect("input_audio_buffer.append").await;
    assert_eq!(
        append,
        json!({"type": "input_audio_buffer.append", "audio": "/////39/fn5+fn5+/////w=="})
    );
    // Media with the fields in another order and white space between them.
    twilio
        .send_text(
            format!(
                r#"{{"streamSid":"{sid}", "media":{{"payload":"AAAA","timestamp":"20","chunk":"2","track":"inbound"}}, "event":"media", "sequenceNumber":"3"}}"#
            )
            .as_bytes(),
        )
        .await;
    let append = oa.expect("input_audio_buffer.append").await;
    assert_eq!(append["audio"], "AAAA");

    // A barge-in with nothing playing (protocol.md 6.2 step 1): no clear, no truncate.
    oa.send(r#"{"type": "input_audio_buffer.speech_started", "event_id": "event_B1", "audio_start_ms": 15320, "item_id": "item_U7"}"#).await;
    // A key press and an unknown Twilio event are accepted.
    twilio
        .send_text(
            format!(
                r#"{{"event": "dtmf", "streamSid": "{sid}", "sequenceNumber": "57",
 "dtmf": {{"track": "inbound_track", "digit": "1"}}}}"#
            )
            .as_bytes(),
        )
        .await;

    // A whole turn in protocol order, every event verbatim.
    for frame in typical_turn("resp_R1", "item_CBx2", "/////39/fn5+fn5+/////w==") {
        oa.send(&frame).await;
    }
    // Twilio gets the delta unchanged (protocol.md 4.2: no track/chunk/timestamp), then a mark.
    let m = twilio_next(&mut twilio).await;
    assert_eq!(
        m,
        json!({"event": "media", "streamSid": sid, "media": {"payload": "/////39/fn5+fn5+/////w=="}})
    );
    let mark = twilio_next(&mut twilio).await;
    assert_eq!(mark["event"], "mark");
    assert_eq!(mark["streamSid"], sid.as_str());
    assert_eq!(mark.as_object().unwrap().len(), 3, "{mark}");
    assert_eq!(mark["mark"].as_object().unwrap().len(), 1, "{mark}");
    let name = mark["mark"]["name"].as_str().unwrap().to_owned();
    assert_eq!(name, "e=0;i=item_CBx2;ms=2");
    // Twilio echoes it (protocol.md 4.1 field order).
    twilio
        .send_text(
            format!(
                r#"{{"event": "mark", "sequenceNumber": "58", "streamSid": "{sid}",
 "mark": {{"name": "{name}"}}}}"#
            )
            .as_bytes(),
        )
        .await;

    // An error after setup is benign (protocol.md 5.5): the call goes on.
    oa.send(r#"{"type": "error", "event_id": "event_A3", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Audio content of 980ms is already shorter than 1240ms", "param": null, "event_id": "evt_client_17"}}"#).await;

    // Second turn: 300 ms of audio, then the caller speaks before any echo.
    let audio = base64_of(2400);
    for frame in typical_turn("resp_R2", "item_CBx3", &audio)
        .into_iter()
        .filter(|f| !f.contains("\"response.done\""))
    {
        oa.send(&frame).await;
    }
    let mut sent_media = 0;
    let mut last_mark = String::new();
    while last_mark != "e=0;i=item_CBx3;ms=300" {
        let v = twilio_next(&mut twilio).await;
        match v["event"].as_str() {
            Some("media") => {
                assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
                sent_media += 1;
            }
            Some("mark") => last_mark = v["mark"]["name"].as_str().unwrap().to_owned(),
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(
        sent_media >= 3,
        "a 300 ms delta is split into <=100 ms pieces"
    );
    oa.send(r#"{"type": "input_audio_buffer.speech_started", "event_id": "event_B9", "audio_start_ms": 25320, "item_id": "item_U8"}"#).await;
    assert_eq!(
        twilio_next(&mut twilio).await,
        json!({"event": "clear", "streamSid": sid})
    );
    let truncate = oa.expect("conversation.item.truncate").await;
    assert_eq!(truncate["item_id"], "item_CBx3");
    assert_eq!(truncate["content_index"], 0);
    assert!(truncate["event_id"].is_string());
    assert!(truncate["audio_end_ms"].as_u64().unwrap() <= 300);
    oa.send(&format!(r#"{{"type": "conversation.item.truncated", "event_id": "event_D1", "item_id": "item_CBx3", "content_index": 0, "audio_end_ms": {}}}"#, truncate["audio_end_ms"])).await;
    oa.send(r#"{"type": "response.done", "event_id": "event_E1", "response": {"id": "resp_R2", "object": "realtime.response", "status": "cancelled", "status_details": {"type": "cancelled", "reason": "turn_detected"}, "output": []}}"#).await;
    // A late delta of the cancelled response is dropped (protocol.md 6.1 flaw 6).
    oa.send(&format!(r#"{{"type": "response.output_audio.delta", "event_id": "event_C3x", "response_id": "resp_R2", "item_id": "item_CBx3", "output_index": 0, "content_index": 0, "delta": "{audio}"}}"#)).await;

    // Twilio's `stop` (protocol.md 4.1) ends the call: both sockets close.
    twilio
        .send_text(
            format!(
                r#"{{"event": "stop", "sequenceNumber": "512",
 "stop": {{"accountSid": "AC00000000000000000000000000000001", "callSid": "{call_sid}"}},
 "streamSid": "{sid}"}}"#
            )
            .as_bytes(),
        )
        .await;
    // Nothing more is sent to Twilio (the late delta was dropped); the socket closes normally.
    match twilio.recv(T).await {
        Ok(Some(v)) => panic!("sent to twilio after the clear: {v}"),
        Ok(None) => panic!("twilio socket not closed after stop"),
        Err(code) => assert_eq!(code, Some(1000), "normal close"),
    }
    loop {
        match oa.next(T).await {
            Ok(Some(v)) => assert_eq!(v["type"], "input_audio_buffer.append", "{v}"),
            Ok(None) => panic!("openai socket not closed after stop"),
            Err(_) => break,
        }
    }
    assert_no_protocol_errors(&proxy);
}

/// Base64 of `n` bytes of μ-law silence (0xff).
fn base64_of(n: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(vec![0xffu8; n])
}

#[tokio::test]
async fn greeting_and_tool_call_follow_section_5_3() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tools = common::temp_data_dir("tools");
    std::fs::write(
        &tools,
        r#"[{"type": "function", "name": "lookup_order", "description": "注文番号から注文状況を調べる",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "description": "注文番号"}}, "required": ["order_id"]}}]"#,
    )
    .unwrap();
    let url = format!(
        "ws://{}/v1/realtime?model={{model}}",
        listener.local_addr().unwrap()
    );
    let proxy = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", url.as_str()),
        ("OPENAI_REALTIME_API_KEY", "sk-test"),
        ("TWILIO_AUTH_TOKEN", common::AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
        ("AGENT_GREETING", "お電話ありがとうございます。"),
        ("AGENT_TOOLS_FILE", tools.to_str().unwrap()),
    ]);
    let mut twilio = RawStream::open(proxy.addr, 2).await;
    twilio.start().await;
    let mut oa = FakeOpenAi::accept(&listener).await;
    oa.send(SESSION_CREATED).await;
    let update = oa.expect("session.update").await;
    assert_eq!(update["session"]["tools"][0]["name"], "lookup_order");
    assert_eq!(update["session"]["tool_choice"], "auto");
    oa.send(SESSION_UPDATED).await;
    // The greeting: a response.create (with instructions) right after session.updated.
    let create = oa.expect("response.create").await;
    assert!(create["event_id"].is_string());
    assert!(create["response"]["instructions"]
        .as_str()
        .unwrap()
        .contains("お電話ありがとうございます。"));
    // protocol.md 5.4: a tool call, verbatim, inside its response; the answer
    // (function_call_output + response.create) waits for that response's `response.done`: a
    // `response.create` while it is active would be refused (5.5).
    oa.send(r#"{"type": "response.created", "event_id": "event_C7", "response": {"id": "resp_R1", "object": "realtime.response", "status": "in_progress", "output": []}}"#).await;
    oa.send(r#"{"type": "response.function_call_arguments.done", "event_id": "event_C8", "response_id": "resp_R1", "item_id": "item_F3", "output_index": 1, "call_id": "call_Q2f8", "name": "lookup_order", "arguments": "{\"order_id\":\"12345\"}"}"#).await;
    while let Ok(Some(v)) = oa.next(Duration::from_millis(300)).await {
        assert_eq!(
            v["type"], "input_audio_buffer.append",
            "nothing but audio before response.done: {v}"
        );
    }
    oa.send(r#"{"type": "response.done", "event_id": "event_C9", "response": {"id": "resp_R1", "object": "realtime.response", "status": "completed", "output": [{"id": "item_F3", "type": "function_call", "status": "completed", "name": "lookup_order", "call_id": "call_Q2f8", "arguments": "{\"order_id\":\"12345\"}"}]}}"#).await;
    let item = oa.expect("conversation.item.create").await;
    assert_eq!(item["item"]["type"], "function_call_output");
    assert_eq!(item["item"]["call_id"], "call_Q2f8");
    let output: Value = serde_json::from_str(item["item"]["output"].as_str().unwrap())
        .expect("output is JSON text");
    assert!(output.is_object());
    let create = oa.expect("response.create").await;
    assert!(create["event_id"].is_string());
    assert_ne!(create["event_id"], item["event_id"], "event ids are unique");
    twilio.stop().await;
    let _ = std::fs::remove_file(&tools);
    assert_no_protocol_errors(&proxy);
}

#[tokio::test]
async fn an_error_during_setup_ends_the_call_and_twilio_gets_the_fallback() {
    // protocol.md 5.4: `error` is fatal only before session.updated. The stream closes normally
    // (1000) and after-stream sends the caller to the humans instead of hanging up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = proxy_for(&listener);
    let mut twilio = RawStream::open(proxy.addr, 3).await;
    twilio.start().await;
    let mut oa = FakeOpenAi::accept(&listener).await;
    oa.send(SESSION_CREATED).await;
    let update = oa.expect("session.update").await;
    let error = format!(
        r#"{{"type": "error", "event_id": "event_A9", "error": {{"type": "invalid_request_error", "code": "invalid_value", "message": "Invalid value: 'nova'.", "param": "session.audio.output.voice", "event_id": {}}}}}"#,
        update["event_id"]
    );
    oa.send(&error).await;
    assert_eq!(twilio.until_closed(T).await, Some(1000));
    let resp = common::after_stream(proxy.addr, 3).await;
    assert_eq!(resp.status, 200);
    let body = std::str::from_utf8(&resp.body).unwrap();
    assert!(body.contains("<Dial><Conference>"), "{body}");
}

#[tokio::test]
async fn a_long_sip_from_does_not_break_the_parameter_limit() {
    // protocol.md 1.1: `From` may be a SIP URI; 2.1: a <Parameter>'s name and value together
    // stay under 500 characters, or Twilio refuses the TwiML and the caller hears an error.
    let proxy = Proxy::spawn(&[
        ("TWILIO_AUTH_TOKEN", common::AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
    ]);
    let from = format!("sip:{}@pbx.example.com;transport=tls", "x".repeat(700));
    let params: Vec<(String, String)> = [
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("CallSid", "CA00000000000000000000000000000009"),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", from.as_str()),
        ("To", "+81501234567"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let resp = common::signed_post(proxy.addr, "/api/twilio/voice", &params).await;
    assert_eq!(resp.status, 200);
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).expect("twiml");
    let stream = twiml.stream().expect("<Connect><Stream>");
    // The loop below passes on no parameters at all: the clipped `From` must be there.
    assert!(
        stream
            .parameters
            .iter()
            .any(|(name, value)| name == "from" && value.starts_with("sip:xxx")),
        "no clipped from parameter: {:?}",
        stream.parameters
    );
    for (name, value) in &stream.parameters {
        assert!(
            name.chars().count() + value.chars().count() < 500,
            "{name}: {} characters",
            value.chars().count()
        );
    }
}

#[tokio::test]
async fn a_final_status_callback_closes_a_call_whose_stream_never_started() {
    // protocol.md 1.3: the status callback closes the CallRecord if the stream never started.
    let proxy = Proxy::spawn(&[
        ("TWILIO_AUTH_TOKEN", common::AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
        ("ADMIN_TOKEN", common::store::ADMIN_TOKEN),
    ]);
    assert_eq!(common::webhook(proxy.addr, 11).await.status, 200);
    let sid = callbridge_testkit::sim::webhook::sid("CA", 11);
    common::store::wait_for_call(proxy.addr, &sid, T, |v| v["status"] == "ringing").await;
    let params: Vec<(String, String)> = [
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("CallSid", sid.as_str()),
        ("CallStatus", "no-answer"),
        ("CallDuration", "0"),
        ("Timestamp", "Mon, 30 Nov 2026 09:00:00 +0000"),
        ("SequenceNumber", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let resp = common::signed_post(proxy.addr, "/api/twilio/status", &params).await;
    assert_eq!(resp.status, 204);
    let call =
        common::store::wait_for_call(proxy.addr, &sid, T, |v| v["status"] != "ringing").await;
    assert_eq!(call["status"], "failed", "{call}");
    // A callback for a call this instance never saw creates nothing.
    let mut other = params.clone();
    other[1].1 = callbridge_testkit::sim::webhook::sid("CA", 12);
    assert_eq!(
        common::signed_post(proxy.addr, "/api/twilio/status", &other)
            .await
            .status,
        204
    );
    // The store applies records in the order they were handed over: once a record handed over
    // after that callback is visible, whatever the callback would have written is too.
    assert_eq!(common::webhook(proxy.addr, 13).await.status, 200);
    let later = callbridge_testkit::sim::webhook::sid("CA", 13);
    common::store::wait_for_call(proxy.addr, &later, T, |v| v["status"] == "ringing").await;
    let (status, _) = common::store::admin(
        proxy.addr,
        "GET",
        &format!("/api/admin/calls/{}", other[1].1),
        "",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn pings_from_either_peer_are_answered_with_the_same_payload() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = proxy_for(&listener);
    let mut twilio = RawStream::open(proxy.addr, 4).await;
    twilio.start().await;
    let mut oa = FakeOpenAi::accept(&listener).await;
    // OpenAI side.
    let mut out = Vec::new();
    oa.enc.ping(&mut out, b"oa-ping");
    oa.stream.write_all(&out).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    'openai: loop {
        let decoded = oa.dec.decode(&mut oa.input).expect("valid frames");
        let consumed = decoded.consumed;
        if let Some(Message::Pong(p)) = decoded.message {
            assert_eq!(p, b"oa-ping");
            break 'openai;
        }
        oa.input.drain(..consumed);
        if consumed == 0 {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, oa.stream.read(&mut chunk))
                .await
                .expect("a pong to openai in time")
                .unwrap();
            assert!(n > 0, "closed");
            oa.input.extend_from_slice(&chunk[..n]);
        }
    }
    // Twilio side: a masked ping frame, hand-made (FIN + ping, masked, 5 bytes).
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x89, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"tping".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    twilio.send_raw(&frame).await;
    assert_eq!(twilio.expect_pong(T).await, b"tping");
    // And the call goes on: a media frame still reaches OpenAI after the session is ready.
    oa.send(SESSION_CREATED).await;
    oa.expect("session.update").await;
    oa.send(SESSION_UPDATED).await;
    twilio.media("/////w==").await;
    assert_eq!(
        oa.expect("input_audio_buffer.append").await["audio"],
        "/////w=="
    );
    assert_no_protocol_errors(&proxy);
}

#[tokio::test]
async fn a_public_host_written_as_a_url_still_validates_twilio_signatures() {
    // An operator may write PUBLIC_HOST as a URL: the scheme and slash are removed at start, so
    // the webhooks still validate (else every one would answer 400 and Twilio would play its
    // application error).
    let proxy = Proxy::spawn(&[
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("PUBLIC_HOST", "https://bridge.example.com/"),
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
    ]);
    let resp = post(
        proxy.addr,
        "/api/twilio/voice",
        EXAMPLE_2_BODY,
        "DBGkIL/deAPzeQrqy7FeC/dD7II=",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let body = std::str::from_utf8(&resp.body).unwrap();
    assert!(
        body.contains(r#"<Stream url="wss://bridge.example.com/api/twilio/media-stream/"#),
        "{body}"
    );
}

#[tokio::test]
async fn an_upgrade_offering_compression_and_a_subprotocol_gets_neither() {
    // Whatever else the upgrade carries (lower-case header names, an offered extension or
    // subprotocol), the 101 must not choose anything: Media Streams frames are plain JSON text.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = proxy_for(&listener);
    let resp = common::webhook(proxy.addr, 5).await;
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).unwrap();
    let url = twiml.stream().unwrap().url.clone();
    let (_, path) = callbridge_testkit::sim::twiml::split_wss_url(&url).unwrap();
    let sig = callbridge_testkit::sim::webhook::signature(common::AUTH_TOKEN, &url, &[]);
    let raw = RawStream::connect(
        proxy.addr,
        path,
        &[
            ("x-twilio-signature", &sig),
            ("user-agent", "Twilio.TmeWs/1.0"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            ("sec-websocket-protocol", "audio"),
        ],
    )
    .await;
    // `connect` refuses a 101 that picks an extension or subprotocol we did not expect.
    assert!(raw.is_ok(), "upgrade refused: {:?}", raw.err());
}
