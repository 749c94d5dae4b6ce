//! Scenario tests of [`MockSession`] on a hand-moved clock.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::*;

/// A session, its fake clock, and every event it sent.
struct Harness {
    mock: MockSession,
    now: Instant,
    start: Instant,
    sent: Vec<(Duration, Value)>,
    /// Input-timeline position of the next appended byte (for the caller tone).
    caller_bytes: usize,
}

impl Harness {
    fn new(config: MockConfig) -> Self {
        let start = Instant::now();
        let mut harness = Harness {
            mock: MockSession::new(config, start),
            now: start,
            start,
            sent: Vec::new(),
            caller_bytes: 0,
        };
        let created = harness.drain();
        assert_eq!(types(&created), ["session.created"]);
        harness
    }

    /// A session that already accepted the GA `session.update` (with transcription).
    fn ready(config: MockConfig) -> Self {
        let mut harness = Harness::new(config);
        let answer = harness
            .send(json!({"type": "session.update", "event_id": "evt_s", "session": ga_session()}));
        assert_eq!(types(&answer), ["session.updated"]);
        harness
    }

    /// Every queued server event, parsed; each must have a string `type` and `event_id`.
    fn drain(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(text) = self.mock.poll_send() {
            let event: Value = serde_json::from_str(&text).expect("server event is JSON");
            assert!(event["type"].is_string(), "no type: {event}");
            assert!(event["event_id"].is_string(), "no event_id: {event}");
            self.sent.push((self.now - self.start, event.clone()));
            events.push(event);
        }
        events
    }

    fn send_text(&mut self, text: &str) -> Vec<Value> {
        self.mock.handle_client_text(self.now, text);
        self.drain()
    }

    fn send(&mut self, event: Value) -> Vec<Value> {
        self.send_text(&event.to_string())
    }

    /// Moves the clock by `ms`, firing every timer on the way in order.
    fn advance(&mut self, ms: u64) -> Vec<Value> {
        let until = self.now + Duration::from_millis(ms);
        let mut events = Vec::new();
        while let Some(at) = self.mock.poll_timeout().filter(|at| *at <= until) {
            self.now = self.now.max(at);
            self.mock.handle_timeout(self.now);
            events.extend(self.drain());
        }
        self.now = until;
        self.mock.handle_timeout(self.now);
        events.extend(self.drain());
        events
    }

    /// Appends `ms` of caller audio in 20 ms frames, 20 ms of clock apart: a tone if `loud`,
    /// else μ-law silence.
    fn speak(&mut self, ms: u64, loud: bool) -> Vec<Value> {
        let mut events = Vec::new();
        for _ in 0..ms / 20 {
            let frame = if loud {
                mock_audio(200, self.caller_bytes, 160)
            } else {
                vec![0xFF; 160]
            };
            self.caller_bytes += 160;
            events.extend(self.advance(20));
            let append =
                json!({"type": "input_audio_buffer.append", "audio": STANDARD.encode(frame)});
            events.extend(self.send(append));
        }
        events
    }

    /// Runs the clock until nothing is scheduled (bounded).
    fn run_idle(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        for _ in 0..10_000 {
            let Some(at) = self.mock.poll_timeout() else {
                return events;
            };
            self.now = self.now.max(at);
            self.mock.handle_timeout(self.now);
            events.extend(self.drain());
        }
        panic!("mock never went idle");
    }
}

/// The GA session of protocol.md 5.2 (trimmed).
fn ga_session() -> Value {
    json!({
        "type": "realtime",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "丁寧な日本語で、短く答えてください。",
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "noise_reduction": {"type": "near_field"},
                "transcription": {"model": "gpt-4o-transcribe", "language": "ja"},
                "turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                    "silence_duration_ms": 500, "create_response": true, "interrupt_response": true
                }
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}
        },
        "tools": [{
            "type": "function", "name": "lookup_order", "description": "注文番号から注文状況を調べる",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "注文番号"}},
                "required": ["order_id"]
            }
        }],
        "tool_choice": "auto"
    })
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?"))
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn only_error(events: &[Value]) -> &Value {
    assert_eq!(types(events), ["error"], "{events:?}");
    &events[0]["error"]
}

fn decoded_len(delta: &Value) -> usize {
    STANDARD
        .decode(delta["delta"].as_str().unwrap())
        .unwrap()
        .len()
}

/// A ready session that has heard one caller turn and started its first response.
/// The default mock whose first response is a `lookup_order` function call with `{}`.
fn function_call_on_first_response() -> MockConfig {
    MockConfig {
        function_call: Some(FunctionCallScript {
            name: "lookup_order".into(),
            arguments: "{}".into(),
            on_response: 1,
        }),
        ..MockConfig::default()
    }
}

fn after_first_turn(config: MockConfig) -> (Harness, Vec<Value>) {
    let mut h = Harness::ready(config);
    let mut events = h.speak(1000, false);
    events.extend(h.speak(1000, true));
    // Exactly the silence that ends the turn: the response starts at `h.now`.
    events.extend(h.speak(500, false));
    (h, events)
}

#[test]
fn session_created_has_pcm_defaults_and_update_answers_the_full_session() {
    let mut h = Harness::new(MockConfig::default());
    let created = &h.sent[0].1;
    assert_eq!(created["session"]["type"], "realtime");
    assert_eq!(
        created["session"]["audio"]["input"]["format"]["type"],
        "audio/pcm"
    );
    assert_eq!(
        created["session"]["audio"]["input"]["format"]["rate"],
        24000
    );
    assert_eq!(
        created["session"]["audio"]["output"]["format"]["type"],
        "audio/pcm"
    );
    assert_eq!(created["event_id"], "event_M00001");

    let updated = h.send(json!({"type": "session.update", "session": ga_session()}));
    assert_eq!(types(&updated), ["session.updated"]);
    let session = &updated[0]["session"];
    assert_eq!(session["type"], "realtime");
    assert_eq!(
        session["audio"]["input"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(
        session["audio"]["output"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(session["audio"]["output"]["speed"], 1.0);
    assert_eq!(session["tool_choice"], "auto");
    assert_eq!(h.mock.stats().session_updates, vec![ga_session()]);
    assert_eq!(h.mock.stats().accepted_session.as_ref(), Some(session));
    assert_eq!(h.mock.session(), session);
}

#[test]
fn audio_before_session_updated_is_an_error_and_counted() {
    let mut h = Harness::new(MockConfig::default());
    let payload = STANDARD.encode([0xFFu8; 160]);
    let events = h.send(json!({"type": "input_audio_buffer.append", "audio": payload}));
    let error = only_error(&events);
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(
        error["message"],
        "callbridge must not send audio before session.updated"
    );
    let stats = h.mock.stats();
    assert_eq!(stats.appends_before_session_updated, 1);
    assert_eq!(stats.appends, vec![payload]);
    assert_eq!(stats.input_audio_bytes, 0);
    assert_eq!(
        stats.errors[0].rejection,
        MockRejection::AudioBeforeSessionUpdated
    );
}

#[test]
fn update_keeping_pcm_input_still_refuses_audio() {
    let mut h = Harness::new(MockConfig::default());
    h.send(json!({"type": "session.update", "session": {"type": "realtime", "instructions": "x"}}));
    let events = h.send(json!({"type": "input_audio_buffer.append", "audio": "//8="}));
    assert_eq!(only_error(&events)["code"], "invalid_value");
    assert_eq!(h.mock.stats().appends_before_session_updated, 0);
}

#[test]
fn energy_vad_turn_gives_transcript_then_a_faster_than_real_time_response() {
    let (mut h, events) = after_first_turn(MockConfig::default());
    assert_eq!(
        types(&events),
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
        ]
    );
    let started = &events[0];
    // Tone from 1000 ms, prefix padding 300 ms.
    assert_eq!(started["audio_start_ms"], 700);
    let user_item = started["item_id"].as_str().unwrap();
    assert_eq!(events[1]["audio_end_ms"], 2000);
    assert_eq!(events[1]["item_id"], user_item);
    assert_eq!(events[2]["item_id"], user_item);
    assert_eq!(
        events[5]["transcript"],
        "Hello, I'd like to check my order."
    );
    assert_eq!(events[6]["response"]["object"], "realtime.response");
    assert_eq!(events[6]["response"]["status"], "in_progress");
    let item = &events[7]["item"];
    assert_eq!(
        (item["type"].as_str(), item["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    let item_id = item["id"].as_str().unwrap().to_owned();
    assert_ne!(item_id, user_item);

    let response_started = h.now;
    let rest = h.run_idle();
    let deltas = of_type(&rest, "response.output_audio.delta");
    assert!(deltas.len() > 10);
    let sizes: Vec<usize> = deltas.iter().map(|d| decoded_len(d)).collect();
    assert_eq!(sizes[..6], [160, 320, 640, 960, 1600, 480]);
    assert_eq!(sizes.iter().sum::<usize>(), 3000 * 8);
    let audio: Vec<u8> = deltas
        .iter()
        .flat_map(|d| STANDARD.decode(d["delta"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(audio, mock_audio(1, 0, 24_000));
    for delta in &deltas {
        assert_eq!(delta["item_id"], item_id.as_str());
        assert_eq!(
            (
                delta["output_index"].as_u64(),
                delta["content_index"].as_u64()
            ),
            (Some(0), Some(0))
        );
    }
    // 3 s of audio at 4x, after a 100 ms first-delta delay: done well before real time.
    let elapsed = h.now - response_started;
    assert!(elapsed <= Duration::from_millis(100 + 750), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(100 + 600), "{elapsed:?}");

    let transcript: String = of_type(&rest, "response.output_audio_transcript.delta")
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(transcript, "Certainly. May I have your order number?");
    let tail: Vec<&str> = types(&rest)
        .into_iter()
        .filter(|t| !t.ends_with(".delta"))
        .collect();
    assert_eq!(
        tail,
        [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
    );
    let done = &rest.last().unwrap()["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["transcript"], transcript);
    assert_eq!(done["usage"]["output_token_details"]["audio_tokens"], 60);
    let usage = &done["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap())
    );
    let stats = h.mock.stats();
    assert_eq!(
        stats.deltas_for(&item_id).map(<[String]>::len),
        Some(deltas.len())
    );
    assert_eq!(stats.responses_completed, 1);
    assert_eq!(stats.appends.len(), 125);
    assert_eq!(stats.input_audio_bytes, 2500 * 8);
}

#[test]
fn deltas_are_paced_by_their_size_over_the_speedup() {
    let (mut h, _) = after_first_turn(MockConfig::default());
    let turn_end = h.now;
    h.run_idle();
    let times: Vec<Duration> = h
        .sent
        .iter()
        .filter(|(_, e)| e["type"] == "response.output_audio.delta")
        .map(|(at, _)| *at)
        .collect();
    let first = times[0];
    assert_eq!(first, (turn_end - h.start) + Duration::from_millis(100));
    // 20 ms of audio at 4x → the next delta 5 ms later; then 40 ms → 10 ms; 80 → 20.
    assert_eq!(times[1] - times[0], Duration::from_millis(5));
    assert_eq!(times[2] - times[1], Duration::from_millis(10));
    assert_eq!(times[3] - times[2], Duration::from_millis(20));
}

#[test]
fn second_turn_uses_the_japanese_lines() {
    let (mut h, _) = after_first_turn(MockConfig::default());
    h.run_idle();
    let mut events = h.speak(400, true);
    events.extend(h.speak(600, false));
    events.extend(h.run_idle());
    let user = of_type(
        &events,
        "conversation.item.input_audio_transcription.completed",
    );
    assert_eq!(user[0]["transcript"], "注文番号は12345です。");
    let assistant = of_type(&events, "response.output_audio_transcript.done");
    assert_eq!(
        assistant[0]["transcript"],
        "ご注文番号12345を確認いたします。少々お待ちください。"
    );
    let deltas = of_type(&events, "response.output_audio.delta");
    let first = STANDARD
        .decode(deltas[0]["delta"].as_str().unwrap())
        .unwrap();
    assert_eq!(decode_mock_audio_tag(&first[..32]), Some((2, 0)));
}

#[test]
fn barge_in_cancels_the_response_and_stops_its_deltas() {
    let (mut h, _) = after_first_turn(MockConfig::default());
    let before = h.advance(200);
    let deltas_before = of_type(&before, "response.output_audio.delta").len();
    assert!(deltas_before > 3);
    let mut events = Vec::new();
    for _ in 0..3 {
        events.extend(h.speak(20, true));
        if !of_type(&events, "response.done").is_empty() {
            break;
        }
    }
    let interesting: Vec<&str> = types(&events)
        .into_iter()
        .filter(|t| !t.ends_with(".delta"))
        .collect();
    assert_eq!(
        interesting,
        [
            "input_audio_buffer.speech_started",
            "response.output_item.done",
            "response.done"
        ]
    );
    let done = &of_type(&events, "response.done")[0]["response"];
    assert_eq!(done["status"], "cancelled");
    assert_eq!(
        done["status_details"],
        json!({"type": "cancelled", "reason": "turn_detected"})
    );
    assert_eq!(done["output"][0]["status"], "incomplete");

    let later = h.advance(5000);
    assert!(
        of_type(&later, "response.output_audio.delta").is_empty(),
        "{later:?}"
    );
    let stats = h.mock.stats();
    assert_eq!(stats.responses_cancelled, 1);
    assert_eq!(stats.responses_completed, 0);
    let sent: usize = stats.audio_deltas[0]
        .deltas
        .iter()
        .map(|d| STANDARD.decode(d).unwrap().len())
        .sum();
    assert!(sent < 3000 * 8);
}

#[test]
fn without_interrupt_response_speech_does_not_cancel() {
    let mut h = Harness::new(MockConfig::default());
    let mut session = ga_session();
    session["audio"]["input"]["turn_detection"]["interrupt_response"] = json!(false);
    h.send(json!({"type": "session.update", "session": session}));
    h.speak(400, true);
    h.speak(600, false);
    h.advance(200);
    let events = h.speak(100, true);
    assert_eq!(
        of_type(&events, "input_audio_buffer.speech_started").len(),
        1
    );
    assert!(of_type(&events, "response.done").is_empty());
    let rest = h.run_idle();
    assert_eq!(
        of_type(&rest, "response.done")[0]["response"]["status"],
        "completed"
    );
}

/// The first assistant item after the response finished, and its audio in ms.
fn finished_item(h: &mut Harness) -> String {
    h.run_idle();
    h.mock.stats().audio_deltas[0].item_id.clone()
}

#[test]
fn truncate_within_sent_audio_is_confirmed() {
    let (mut h, _) = after_first_turn(MockConfig::default());
    let item_id = finished_item(&mut h);
    let events = h.send(json!({
        "type": "conversation.item.truncate", "event_id": "evt_t1",
        "item_id": item_id, "content_index": 0, "audio_end_ms": 1240
    }));
    assert_eq!(types(&events), ["conversation.item.truncated"]);
    assert_eq!(events[0]["item_id"], item_id.as_str());
    assert_eq!(events[0]["content_index"], 0);
    assert_eq!(events[0]["audio_end_ms"], 1240);
    assert_eq!(
        h.mock.stats().truncates,
        vec![TruncateRecord {
            item_id,
            audio_end_ms: 1240,
            sent_ms: Some(3000),
            accepted: true
        }]
    );
}

#[test]
fn truncate_past_sent_audio_gets_the_protocol_error() {
    let (mut h, _) = after_first_turn(MockConfig::default());
    // Barge in early so the item has only part of its audio.
    h.advance(150);
    h.speak(20, true);
    let stats = h.mock.stats();
    let item_id = stats.audio_deltas[0].item_id.clone();
    let sent_bytes: usize = stats.audio_deltas[0]
        .deltas
        .iter()
        .map(|d| STANDARD.decode(d).unwrap().len())
        .sum();
    let sent_ms = (sent_bytes / 8) as u64;
    let events = h.send(json!({
        "type": "conversation.item.truncate", "event_id": "evt_client_17",
        "item_id": item_id, "content_index": 0, "audio_end_ms": sent_ms + 1
    }));
    let error = only_error(&events);
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "invalid_value");
    assert_eq!(
        error["message"],
        format!(
            "Audio content of {sent_ms}ms is already shorter than {}ms",
            sent_ms + 1
        )
    );
    assert_eq!(error["event_id"], "evt_client_17");
    let record = h.mock.stats().truncates[0].clone();
    assert_eq!(record.sent_ms, Some(sent_ms));
    assert!(!record.accepted);
    // Exactly the sent audio is fine.
    let ok = h.send(json!({
        "type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
        "audio_end_ms": sent_ms
    }));
    assert_eq!(types(&ok), ["conversation.item.truncated"]);
}

#[test]
fn a_second_truncate_cannot_go_past_the_first() {
    let (mut h, _) = after_first_turn(MockConfig::default());
    let item_id = finished_item(&mut h);
    let truncate = |ms: u64| {
        json!({
            "type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": ms
        })
    };
    assert_eq!(
        types(&h.send(truncate(500))),
        ["conversation.item.truncated"]
    );
    let error = h.send(truncate(800));
    assert_eq!(
        only_error(&error)["message"],
        "Audio content of 500ms is already shorter than 800ms"
    );
}

#[test]
fn truncate_to_zero_is_accepted() {
    let (mut h, _) = after_first_turn(MockConfig::default());
    let item_id = finished_item(&mut h);
    let events = h.send(json!({
        "type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 0
    }));
    assert_eq!(types(&events), ["conversation.item.truncated"]);
    assert_eq!(events[0]["audio_end_ms"], 0);
}

#[test]
fn truncate_of_unknown_or_user_items_or_bad_fields_is_rejected_and_recorded() {
    let (mut h, first) = after_first_turn(MockConfig::default());
    let user_item = first[0]["item_id"].as_str().unwrap().to_owned();
    let item_id = finished_item(&mut h);
    let cases = [
        (
            json!({"item_id": "item_nope", "content_index": 0, "audio_end_ms": 0}),
            "Item with item_id 'item_nope' not found.",
        ),
        (
            json!({"item_id": user_item, "content_index": 0, "audio_end_ms": 0}),
            "",
        ),
        (
            json!({"item_id": item_id, "content_index": 1, "audio_end_ms": 0}),
            "",
        ),
        (
            json!({"item_id": item_id, "content_index": 0, "audio_end_ms": -5}),
            "",
        ),
    ];
    for (mut fields, message) in cases {
        fields["type"] = json!("conversation.item.truncate");
        let events = h.send(fields);
        let error = only_error(&events);
        if !message.is_empty() {
            assert_eq!(error["message"], message);
        }
    }
    let missing = h.send(
        json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}),
    );
    assert_eq!(only_error(&missing)["code"], "missing_required_parameter");
    let truncates = &h.mock.stats().truncates;
    assert_eq!(truncates.len(), 4);
    assert!(truncates.iter().all(|t| !t.accepted));
    assert_eq!(truncates[0].sent_ms, None);
    assert_eq!(truncates[1].sent_ms, None);
    assert_eq!(truncates[2].sent_ms, Some(3000));
}

#[test]
fn beta_session_updates_are_rejected() {
    let mut h = Harness::new(MockConfig::default());
    let cases = [
        (
            json!({"type": "realtime", "modalities": ["text", "audio"]}),
            "session.modalities",
        ),
        (
            json!({"type": "realtime", "input_audio_format": "g711_ulaw"}),
            "session.input_audio_format",
        ),
        (
            json!({"type": "realtime", "voice": "marin"}),
            "session.voice",
        ),
        (
            json!({"type": "realtime", "turn_detection": {"type": "server_vad"}}),
            "session.turn_detection",
        ),
        (json!({"instructions": "hi"}), "session.type"),
    ];
    for (session, param) in cases {
        let events =
            h.send(json!({"type": "session.update", "event_id": "evt_beta", "session": session}));
        let error = only_error(&events);
        assert_eq!(error["param"], param);
        assert_eq!(error["event_id"], "evt_beta");
        assert!(error["message"].as_str().unwrap().contains(param));
    }
    assert!(h.mock.stats().session_updates.is_empty());
    assert_eq!(h.mock.stats().accepted_session, None);
}

#[test]
fn voice_change_after_audio_is_rejected() {
    let (mut h, _) = after_first_turn(MockConfig::default());
    h.run_idle();
    let mut session = ga_session();
    session["audio"]["output"]["voice"] = json!("cedar");
    let events = h.send(json!({"type": "session.update", "session": session}));
    assert_eq!(only_error(&events)["code"], "cannot_update_voice");
}

#[test]
fn bad_base64_append_is_rejected() {
    let mut h = Harness::ready(MockConfig::default());
    let events = h.send(
        json!({"type": "input_audio_buffer.append", "event_id": "evt_a", "audio": "not base64!"}),
    );
    let error = only_error(&events);
    assert_eq!(error["param"], "audio");
    assert_eq!(error["event_id"], "evt_a");
    assert_eq!(h.mock.stats().appends, vec!["not base64!".to_owned()]);
    assert_eq!(h.mock.stats().input_audio_bytes, 0);
    let missing = h.send(json!({"type": "input_audio_buffer.append"}));
    assert_eq!(only_error(&missing)["code"], "missing_required_parameter");
}

#[test]
fn unknown_event_type_is_rejected_like_the_real_server() {
    let mut h = Harness::ready(MockConfig::default());
    let events = h.send(json!({"type": "foo", "event_id": "evt_foo"}));
    let error = only_error(&events);
    assert_eq!(error["code"], "invalid_value");
    assert_eq!(error["param"], "type");
    assert_eq!(error["event_id"], "evt_foo");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid value: 'foo'."));
    let beta = h.send(json!({"type": "response.audio.delta"}));
    assert_eq!(only_error(&beta)["code"], "invalid_value");
    assert_eq!(
        h.mock.stats().client_event_types,
        ["session.update", "foo", "response.audio.delta"]
    );
}

#[test]
fn non_json_and_typeless_text_are_rejected() {
    let mut h = Harness::ready(MockConfig::default());
    let events = h.send_text("{not json");
    assert_eq!(only_error(&events)["code"], "invalid_json");
    let events = h.send_text("[1, 2]");
    assert_eq!(only_error(&events)["param"], "type");
    let events = h.send(json!({"event_id": "evt_x", "audio": ""}));
    let error = only_error(&events);
    assert_eq!(error["param"], "type");
    assert_eq!(error["event_id"], "evt_x");
    assert_eq!(h.mock.stats().errors.len(), 3);
}

#[test]
fn validation_hook_failure_becomes_an_error_with_the_echoed_event_id() {
    let config = MockConfig {
        validate_client: Arc::new(|event: &Value| {
            if event["type"] == "response.create"
                && event.get("response").is_some_and(|r| !r.is_object())
            {
                Err("'response' must be an object".to_owned())
            } else {
                basic_client_check(event)
            }
        }),
        ..MockConfig::default()
    };
    let mut h = Harness::ready(config);
    let events = h.send(json!({"type": "response.create", "event_id": "evt_r", "response": 5}));
    let error = only_error(&events);
    assert_eq!(error["code"], "invalid_value");
    assert_eq!(error["event_id"], "evt_r");
    assert_eq!(
        error["message"],
        "Invalid client event: 'response' must be an object"
    );
    assert_eq!(h.mock.stats().responses_created, 0);
}

#[test]
fn response_create_while_active_and_cancel_without_one_are_errors() {
    let mut h = Harness::ready(MockConfig::default());
    let first = h.send(json!({"type": "response.create", "event_id": "evt_g"}));
    assert_eq!(types(&first)[0], "response.created");
    let again = h.send(json!({"type": "response.create", "event_id": "evt_g2"}));
    let error = only_error(&again);
    assert_eq!(
        error["message"],
        "Conversation already has an active response in progress"
    );
    assert_eq!(error["event_id"], "evt_g2");

    let wrong = h.send(json!({"type": "response.cancel", "response_id": "resp_other"}));
    assert_eq!(
        only_error(&wrong)["message"],
        "Cancellation failed: no active response found"
    );
    h.advance(300);
    let cancelled = h.send(json!({"type": "response.cancel", "event_id": "evt_c"}));
    let done = &of_type(&cancelled, "response.done")[0]["response"];
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["status_details"]["reason"], "client_cancelled");
    let none = h.send(json!({"type": "response.cancel", "event_id": "evt_c2"}));
    let error = only_error(&none);
    assert_eq!(
        error["message"],
        "Cancellation failed: no active response found"
    );
    assert_eq!(error["event_id"], "evt_c2");
    assert!(h.advance(5000).is_empty());
}

#[test]
fn greeting_text_item_then_response_create_speaks_first() {
    let mut h = Harness::ready(MockConfig::default());
    let events = h.send(json!({
        "type": "conversation.item.create", "event_id": "evt_i",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "挨拶してください"}]}
    }));
    assert_eq!(
        types(&events),
        ["conversation.item.added", "conversation.item.done"]
    );
    assert_eq!(events[0]["item"]["id"], "item_M00001");
    assert_eq!(events[0]["previous_item_id"], Value::Null);
    h.send(json!({"type": "response.create"}));
    let rest = h.run_idle();
    assert_eq!(
        of_type(&rest, "response.done")[0]["response"]["status"],
        "completed"
    );
    let retrieved = h.send(json!({"type": "conversation.item.retrieve", "item_id": "item_M00001"}));
    assert_eq!(
        retrieved[0]["item"]["content"][0]["text"],
        "挨拶してください"
    );
    let bad = h.send(json!({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]}
    }));
    assert_eq!(only_error(&bad)["param"], "item.role");
}

#[test]
fn function_call_script_waits_for_the_output_then_answers_with_audio() {
    let config = MockConfig {
        function_call: Some(FunctionCallScript {
            name: "lookup_order".into(),
            arguments: "{\"order_id\":\"12345\"}".into(),
            on_response: 1,
        }),
        ..MockConfig::default()
    };
    let (mut h, events) = after_first_turn(config);
    let call_events: Vec<&str> = types(&events).into_iter().skip(6).collect();
    assert_eq!(
        call_events[..3],
        [
            "response.created",
            "response.output_item.added",
            "conversation.item.added"
        ]
    );
    assert_eq!(
        call_events[call_events.len() - 3..],
        [
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
        ]
    );
    // The response is still active until its `response.done`, a moment later: a
    // `response.create` sent on `…arguments.done` is refused, as by the real server.
    let too_soon = h.send(json!({"type": "response.create", "event_id": "evt_too_soon"}));
    assert_eq!(
        only_error(&too_soon)["code"],
        "conversation_already_has_active_response"
    );
    let later = h.advance(response::TOOL_RESPONSE_DONE_AFTER.as_millis() as u64);
    assert_eq!(types(&later), ["response.done"]);
    assert_eq!(later[0]["response"]["status"], "completed");
    let arg_deltas: String = of_type(&events, "response.function_call_arguments.delta")
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(arg_deltas, "{\"order_id\":\"12345\"}");
    let done = &of_type(&events, "response.function_call_arguments.done")[0];
    assert_eq!(done["name"], "lookup_order");
    assert_eq!(done["arguments"], "{\"order_id\":\"12345\"}");
    let call_id = done["call_id"].as_str().unwrap().to_owned();
    assert_eq!(call_id, "call_M00001");
    assert!(of_type(&events, "response.output_audio.delta").is_empty());
    assert!(h.mock.poll_timeout().is_none());

    let early = h.send(json!({"type": "response.create", "event_id": "evt_early"}));
    assert!(only_error(&early)["message"]
        .as_str()
        .unwrap()
        .contains(&call_id));
    let wrong = h.send(json!({
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_zzz", "output": "{}"}
    }));
    assert_eq!(only_error(&wrong)["param"], "item.call_id");

    let output = "{\"status\":\"shipped\"}";
    let added = h.send(json!({
        "type": "conversation.item.create", "event_id": "evt_out",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output}
    }));
    assert_eq!(
        types(&added),
        ["conversation.item.added", "conversation.item.done"]
    );
    h.send(json!({"type": "response.create", "event_id": "evt_after_tool"}));
    let rest = h.run_idle();
    let audio_done = of_type(&rest, "response.done");
    assert_eq!(audio_done[0]["response"]["status"], "completed");
    assert!(!of_type(&rest, "response.output_audio.delta").is_empty());
    let stats = h.mock.stats();
    assert_eq!(stats.function_calls, vec![call_id.clone()]);
    assert_eq!(
        stats.function_call_outputs,
        vec![(call_id, output.to_owned())]
    );
    assert_eq!(stats.responses_completed, 2);
}

#[test]
fn scripted_speech_starts_after_n_ms_of_silent_caller_audio() {
    let config = MockConfig {
        energy_vad: false,
        ..MockConfig::default().with_speech_at(1500, 800)
    };
    let mut h = Harness::ready(config);
    let events = h.speak(1480, true);
    assert!(of_type(&events, "input_audio_buffer.speech_started").is_empty());
    let events = h.speak(20, false);
    assert!(of_type(&events, "input_audio_buffer.speech_started").is_empty());
    let events = h.speak(20, false);
    let started = of_type(&events, "input_audio_buffer.speech_started");
    assert_eq!(started[0]["audio_start_ms"], 1200);
    let events = h.speak(1300, false);
    assert_eq!(
        of_type(&events, "input_audio_buffer.speech_stopped")[0]["audio_end_ms"],
        2300
    );
    assert_eq!(of_type(&events, "response.created").len(), 1);
}

#[test]
fn same_inputs_give_identical_output() {
    let run = || {
        let (mut h, _) = after_first_turn(MockConfig::default());
        h.run_idle();
        h.sent
            .into_iter()
            .map(|(at, e)| (at, e.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn manual_commit_and_clear_work_without_vad() {
    let mut h = Harness::new(MockConfig::default());
    let mut session = ga_session();
    session["audio"]["input"]["turn_detection"] = Value::Null;
    h.send(json!({"type": "session.update", "session": session}));
    let events = h.speak(600, true);
    assert!(events.is_empty(), "{events:?}");
    let committed = h.send(json!({"type": "input_audio_buffer.commit"}));
    assert_eq!(
        types(&committed)[..3],
        [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done"
        ]
    );
    let empty = h.send(json!({"type": "input_audio_buffer.commit"}));
    assert_eq!(
        only_error(&empty)["code"],
        "input_audio_buffer_commit_empty"
    );
    h.speak(200, true);
    assert_eq!(
        types(&h.send(json!({"type": "input_audio_buffer.clear"}))),
        ["input_audio_buffer.cleared"]
    );
    let empty = h.send(json!({"type": "input_audio_buffer.commit"}));
    assert_eq!(
        only_error(&empty)["code"],
        "input_audio_buffer_commit_empty"
    );
}

#[test]
fn session_expiry_sends_an_error_and_asks_to_close() {
    let config = MockConfig {
        max_session_ms: Some(60_000),
        ..MockConfig::default()
    };
    let mut h = Harness::new(config);
    assert_eq!(
        h.mock.poll_timeout(),
        Some(h.start + Duration::from_secs(60))
    );
    assert!(h.advance(59_999).is_empty());
    assert_eq!(h.mock.should_close(), None);
    let events = h.advance(1);
    assert_eq!(only_error(&events)["code"], "session_expired");
    assert_eq!(
        h.mock.should_close(),
        Some((1000, "session expired".to_owned()))
    );
    assert!(h.send(json!({"type": "response.create"})).is_empty());
    assert_eq!(h.mock.poll_timeout(), None);
}

#[test]
fn degenerate_config_is_sanitized_not_a_panic() {
    let config = MockConfig {
        delta_sizes_ms: vec![],
        speedup: f64::NAN,
        response_audio_ms: 0,
        assistant_transcripts: vec![],
        ..MockConfig::default()
    };
    let mut h = Harness::ready(config);
    h.send(json!({"type": "response.create"}));
    let rest = h.run_idle();
    assert!(of_type(&rest, "response.output_audio.delta").is_empty());
    assert_eq!(
        of_type(&rest, "response.done")[0]["response"]["status"],
        "completed"
    );
}

#[test]
fn a_clock_going_backwards_is_treated_as_the_latest_time() {
    let mut h = Harness::ready(MockConfig::default());
    h.send(json!({"type": "response.create"}));
    h.advance(1000);
    let past = h.now - Duration::from_millis(900);
    h.mock.handle_timeout(past);
    assert!(h.drain().is_empty());
}

#[test]
fn deleting_an_item_removes_it_from_the_conversation() {
    let mut h = Harness::ready(MockConfig::default());
    h.send(json!({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]}
    }));
    let deleted = h.send(json!({"type": "conversation.item.delete", "item_id": "item_M00001"}));
    assert_eq!(types(&deleted), ["conversation.item.deleted"]);
    assert_eq!(deleted[0]["item_id"], "item_M00001");
    let again = h.send(
        json!({"type": "conversation.item.delete", "event_id": "evt_d", "item_id": "item_M00001"}),
    );
    assert_eq!(only_error(&again)["event_id"], "evt_d");
    let gone = h.send(json!({"type": "conversation.item.retrieve", "item_id": "item_M00001"}));
    assert_eq!(only_error(&gone)["param"], "item_id");
}

/// What a test tap saw: input bytes, output deltas rewritten to 0x55, speech starts, truncates.
#[derive(Debug, Default)]
struct TapLog {
    input_bytes: usize,
    outputs: usize,
    speech_started: usize,
    truncated: Vec<(String, u64)>,
}

#[derive(Debug)]
struct TestTap(std::sync::Arc<std::sync::Mutex<TapLog>>);

impl tap::SessionTap for TestTap {
    fn input_audio(&mut self, _now: Instant, audio: &[u8]) {
        self.0.lock().unwrap().input_bytes += audio.len();
    }
    fn output_audio(&mut self, _now: Instant, audio: &mut [u8]) {
        audio.fill(0x55);
        self.0.lock().unwrap().outputs += 1;
    }
    fn speech_started(&mut self, _now: Instant) {
        self.0.lock().unwrap().speech_started += 1;
    }
    fn truncated(&mut self, item_id: &str, audio_end_ms: u64) {
        self.0
            .lock()
            .unwrap()
            .truncated
            .push((item_id.to_owned(), audio_end_ms));
    }
}

#[test]
fn a_tap_sees_caller_audio_speech_and_truncates_and_rewrites_deltas_without_records() {
    let log = std::sync::Arc::new(std::sync::Mutex::new(TapLog::default()));
    let log2 = std::sync::Arc::clone(&log);
    let config = MockConfig {
        keep_records: false,
        tap: Some(std::sync::Arc::new(move || {
            Box::new(TestTap(std::sync::Arc::clone(&log2))) as Box<dyn tap::SessionTap>
        })),
        ..MockConfig::default()
    };
    let (mut h, mut events) = after_first_turn(config);
    events.extend(h.advance(1000));
    let deltas = of_type(&events, "response.output_audio.delta");
    assert!(!deltas.is_empty());
    for d in &deltas {
        let bytes = STANDARD.decode(d["delta"].as_str().unwrap()).unwrap();
        assert!(bytes.iter().all(|&b| b == 0x55), "the tap's bytes are sent");
    }
    let item = deltas[0]["item_id"].as_str().unwrap().to_owned();
    let answer = h.send(
        json!({"type": "conversation.item.truncate", "item_id": item,
        "content_index": 0, "audio_end_ms": 100}),
    );
    assert_eq!(types(&answer), ["conversation.item.truncated"]);
    let log = log.lock().unwrap();
    assert_eq!(log.input_bytes, 2500 * 8, "every accepted append");
    assert_eq!(log.outputs, deltas.len());
    assert_eq!(log.speech_started, 1);
    assert_eq!(log.truncated, [(item, 100)]);
    let stats = h.mock.stats();
    assert!(stats.appends.is_empty() && stats.audio_deltas.is_empty());
    assert!(stats.client_event_types.is_empty());
    assert_eq!(stats.input_audio_bytes, 2500 * 8, "counters are still kept");
}

#[test]
fn caller_speech_cancels_an_open_function_call_response_and_the_turn_gets_its_own_answer() {
    let (mut h, events) = after_first_turn(function_call_on_first_response());
    assert_eq!(
        of_type(&events, "response.function_call_arguments.done").len(),
        1
    );
    assert!(of_type(&events, "response.done").is_empty(), "still open");
    // The caller speaks before the function-call response is done.
    let speech = h.speak(300, true);
    let done = of_type(&speech, "response.done");
    assert_eq!(done.len(), 1, "{:?}", types(&speech));
    assert_eq!(done[0]["response"]["status"], "cancelled");
    assert_eq!(
        done[0]["response"]["status_details"]["reason"],
        "turn_detected"
    );
    // No second `response.done` for it later; the end of the turn starts the next response.
    let rest = h.speak(600, false);
    assert_eq!(
        of_type(&rest, "response.created").len(),
        1,
        "{:?}",
        types(&rest)
    );
    assert!(of_type(&rest, "response.done")
        .iter()
        .all(|d| d["response"]["status"] != "cancelled"));
}

#[test]
fn response_cancel_ends_an_open_function_call_response_once() {
    let (mut h, events) = after_first_turn(function_call_on_first_response());
    let id = of_type(&events, "response.created")[0]["response"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong = h.send(json!({"type": "response.cancel", "response_id": "resp_nope"}));
    assert_eq!(only_error(&wrong)["code"], "response_cancel_not_active");
    let cancelled = h.send(json!({"type": "response.cancel", "response_id": id}));
    assert_eq!(types(&cancelled), ["response.done"]);
    assert_eq!(cancelled[0]["response"]["status"], "cancelled");
    assert_eq!(
        cancelled[0]["response"]["status_details"]["reason"],
        "client_cancelled"
    );
    // Its scheduled end does not send a second `response.done`.
    let later = h.advance(response::TOOL_RESPONSE_DONE_AFTER.as_millis() as u64 + 1);
    assert!(of_type(&later, "response.done").is_empty(), "{later:?}");
    assert_eq!(h.mock.stats().responses_cancelled, 1);
}
