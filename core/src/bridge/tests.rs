//! Deterministic tests of [`Call`]: JSON frames in, JSON frames out, time moved by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::call::{Call, CallConfig, CallEvent, EndReason, Leg};
use crate::openai::session::AgentSettings;
use crate::twilio::stream_id::{StartTokenCheck, StreamKey};

const CALL_SID: &str = "CA00000000000000000000000000000001";
const STREAM_SID: &str = "MZ00000000000000000000000000000001";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A call driven by hand: `now` only moves when a test says so.
struct Sim {
    call: Call,
    t0: Instant,
    now: Instant,
    twilio_out: Vec<Value>,
    openai_out: Vec<Value>,
    events: Vec<CallEvent>,
    buf: Vec<u8>,
}

impl Sim {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut CallConfig)) -> Self {
        let mut cfg = CallConfig::new("gpt-realtime", Arc::new(AgentSettings::default()), CALL_SID);
        cfg.start_token = Some(StartTokenCheck::new(Arc::new(test_key()), CALL_ID));
        tweak(&mut cfg);
        let t0 = Instant::now();
        Sim {
            call: Call::new(cfg, t0),
            t0,
            now: t0,
            twilio_out: vec![],
            openai_out: vec![],
            events: vec![],
            buf: vec![],
        }
    }

    fn at(&mut self, t_ms: u64) -> &mut Self {
        self.now = self.t0 + ms(t_ms);
        self
    }

    fn drain(&mut self) {
        while let Some(tx) = self.call.poll_transmit(&mut self.buf) {
            let v: Value = serde_json::from_slice(&self.buf[..tx.len]).expect("we send JSON");
            match tx.leg {
                Leg::Twilio => self.twilio_out.push(v),
                Leg::OpenAi => self.openai_out.push(v),
            }
        }
        while let Some(ev) = self.call.poll_event() {
            self.events.push(ev);
        }
    }

    fn twilio(&mut self, v: Value) -> &mut Self {
        let mut frame = serde_json::to_vec(&v).unwrap();
        self.call.handle_twilio_frame(self.now, &mut frame);
        self.drain();
        self
    }

    fn twilio_raw(&mut self, raw: &[u8]) -> &mut Self {
        let mut frame = raw.to_vec();
        self.call.handle_twilio_frame(self.now, &mut frame);
        self.drain();
        self
    }

    fn openai(&mut self, v: Value) -> &mut Self {
        let mut frame = serde_json::to_vec(&v).unwrap();
        self.call.handle_openai_frame(self.now, &mut frame);
        self.drain();
        self
    }

    fn start(&mut self) -> &mut Self {
        self.twilio(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}));
        self.twilio(start_msg(CALL_SID, &good_token()))
    }

    /// Start, session.created, session.updated: audio flows.
    fn ready() -> Self {
        let mut s = Sim::new();
        s.start();
        s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1", "type": "realtime"}}));
        s.openai(session_updated("audio/pcmu", "audio/pcmu"));
        assert!(s.call.is_ready());
        s.twilio_out.clear();
        s.openai_out.clear();
        s.events.clear();
        s
    }

    fn media(&mut self, payload: &str) -> &mut Self {
        self.twilio(
            json!({"event": "media", "sequenceNumber": "2", "streamSid": STREAM_SID,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": payload}}),
        )
    }

    fn delta(&mut self, resp: &str, item: &str, bytes: usize) -> &mut Self {
        let b64 = b64_of(bytes);
        self.openai(
            json!({"type": "response.output_audio.delta", "event_id": "ev", "response_id": resp,
            "item_id": item, "output_index": 0, "content_index": 0, "delta": b64}),
        )
    }

    fn echo(&mut self, name: &str) -> &mut Self {
        self.twilio(json!({"event": "mark", "sequenceNumber": "9", "streamSid": STREAM_SID, "mark": {"name": name}}))
    }

    fn speech_started(&mut self) -> &mut Self {
        self.openai(json!({"type": "input_audio_buffer.speech_started", "event_id": "ev", "audio_start_ms": 1000, "item_id": "item_U"}))
    }

    fn marks_sent(&self) -> Vec<String> {
        self.twilio_out
            .iter()
            .filter(|v| v["event"] == "mark")
            .map(|v| v["mark"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn truncates(&self) -> Vec<(String, u64)> {
        self.openai_out
            .iter()
            .filter(|v| v["type"] == "conversation.item.truncate")
            .map(|v| {
                (
                    v["item_id"].as_str().unwrap().to_owned(),
                    v["audio_end_ms"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    fn ended(&self) -> Option<&EndReason> {
        self.events.iter().find_map(|e| match e {
            CallEvent::Ended { reason } => Some(reason),
            _ => None,
        })
    }

    fn protocol_errors(&self) -> Vec<&'static str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                CallEvent::ProtocolError(error) => Some(error.label()),
                _ => None,
            })
            .collect()
    }
}

/// The `callId` of the test stream.
const CALL_ID: &str = "c1";

fn test_key() -> StreamKey {
    StreamKey::from_secret(b"test-stream-secret-0123456789").unwrap()
}

/// The start token the webhook would have issued for [`CALL_ID`].
fn good_token() -> String {
    test_key().start_token(CALL_ID)
}

fn start_msg(call_sid: &str, token: &str) -> Value {
    json!({"event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID,
        "start": {"accountSid": "AC00000000000000000000000000000001", "streamSid": STREAM_SID, "callSid": call_sid,
            "tracks": ["inbound"], "customParameters": {"callId": "c1", "agentId": "default", "token": token},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
}

fn session_updated(input: &str, output: &str) -> Value {
    json!({"type": "session.updated", "event_id": "e2", "session": {"id": "sess_1", "type": "realtime",
        "audio": {"input": {"format": {"type": input}}, "output": {"format": {"type": output}}}}})
}

/// Base64 of `bytes` bytes of μ-law silence.
fn b64_of(bytes: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(vec![0xffu8; bytes])
}

// ---- setup ---------------------------------------------------------------------------------

#[test]
fn session_update_waits_for_both_start_and_session_created() {
    let mut s = Sim::new();
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}}));
    assert!(
        s.openai_out.is_empty(),
        "no session.update before twilio start: the agent comes with it"
    );
    s.start();
    assert_eq!(s.openai_out.len(), 1);
    assert_eq!(s.openai_out[0]["type"], "session.update");
    assert_eq!(
        s.openai_out[0]["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    assert!(s.openai_out[0]["event_id"].is_string());
}

#[test]
fn caller_audio_before_session_updated_is_held_then_forwarded_in_order() {
    let mut s = Sim::new();
    s.start();
    s.media("AAAA").media("BBBB");
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}}));
    assert!(
        s.openai_out
            .iter()
            .all(|v| v["type"] != "input_audio_buffer.append"),
        "never append before session.updated"
    );
    s.openai(session_updated("audio/pcmu", "audio/pcmu"));
    let appends: Vec<_> = s
        .openai_out
        .iter()
        .filter(|v| v["type"] == "input_audio_buffer.append")
        .map(|v| v["audio"].clone())
        .collect();
    assert_eq!(appends, vec![json!("AAAA"), json!("BBBB")]);
    assert!(
        matches!(&s.events[..], [.., CallEvent::SessionReady { .. }])
            || s.events
                .iter()
                .any(|e| matches!(e, CallEvent::SessionReady { .. }))
    );
}

#[test]
fn held_audio_is_bounded_and_drops_the_oldest() {
    let mut s = Sim::with(|c| c.max_presession_audio_ms = 40);
    s.start();
    let frame = b64_of(160); // 20 ms
    for _ in 0..5 {
        s.media(&frame);
    }
    assert_eq!(s.call.stats().presession_audio_dropped, 3);
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}}));
    s.openai(session_updated("audio/pcmu", "audio/pcmu"));
    assert_eq!(
        s.openai_out
            .iter()
            .filter(|v| v["type"] == "input_audio_buffer.append")
            .count(),
        2
    );
}

#[test]
fn a_session_without_pcmu_ends_the_call_as_an_ai_failure() {
    let mut s = Sim::new();
    s.start();
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}}));
    s.openai(session_updated("audio/pcm", "audio/pcmu"));
    let reason = s.ended().expect("ended");
    assert!(reason.is_ai_failure(), "{reason}");
}

#[test]
fn an_error_during_setup_is_fatal_and_after_setup_is_not() {
    let mut s = Sim::new();
    s.start();
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}}));
    s.openai(json!({"type": "error", "event_id": "e3", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "bad voice", "param": null, "event_id": "cb_1"}}));
    assert!(s.ended().unwrap().is_ai_failure());

    let mut s = Sim::ready();
    s.openai(json!({"type": "error", "event_id": "e3", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Audio content of 980ms is already shorter than 1240ms", "param": null, "event_id": "cb_9"}}));
    assert!(s.ended().is_none());
    assert!(s
        .events
        .iter()
        .any(|e| matches!(e, CallEvent::OpenAiError { event_id: Some(id), .. } if id == "cb_9")));
}

/// The end reason of a call whose setup meets `error` right after its `session.update`.
fn setup_error_ends_as(error: Value) -> EndReason {
    let mut s = Sim::new();
    s.start();
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}}));
    let update = s.openai_out.last().expect("session.update sent").clone();
    assert_eq!(update["type"], "session.update");
    let mut error = error;
    if error["error"]["event_id"] == "OURS" {
        error["error"]["event_id"] = update["event_id"].clone();
    }
    s.openai(error);
    s.ended().cloned().expect("setup errors end the call")
}

#[test]
fn an_error_refusing_the_agents_settings_is_the_agents_fault_not_openais() {
    // It names our session.update's event_id.
    let r = setup_error_ends_as(
        json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Invalid value: 'robot'", "param": null, "event_id": "OURS"}}),
    );
    let EndReason::AgentRejected { agent_id, why } = &r else {
        panic!("{r:?}");
    };
    assert_eq!(agent_id, "default");
    assert!(why.contains("Invalid value"), "{why}");
    assert!(r.is_ai_failure() && !r.is_openai_unreachable());
    // Or it names a session parameter.
    let r = setup_error_ends_as(
        json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "bad", "param": "session.audio.output.voice"}}),
    );
    assert!(matches!(r, EndReason::AgentRejected { .. }), "{r:?}");
}

#[test]
fn setup_errors_that_are_not_the_agents_count_against_openai() {
    for error in [
        // The model is the server's configuration: everyone's problem.
        json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "code": "model_not_found", "message": "The model does not exist", "param": null, "event_id": "OURS"}}),
        json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "bad", "param": "session.model"}}),
        json!({"type": "error", "event_id": "e", "error": {"type": "server_error", "message": "boom"}}),
        // An outage or the account's quota, even when it answers our session.update.
        json!({"type": "error", "event_id": "e", "error": {"type": "server_error", "message": "boom", "event_id": "OURS"}}),
        json!({"type": "error", "event_id": "e", "error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "slow down", "event_id": "OURS"}}),
        // Another event's id, no parameter.
        json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "message": "x", "event_id": "cb_999"}}),
    ] {
        let r = setup_error_ends_as(error);
        assert!(matches!(r, EndReason::OpenAiSetupFailed(_)), "{r:?}");
        assert!(r.is_openai_unreachable());
    }
}

#[test]
fn no_session_updated_in_time_after_start_ends_the_call() {
    // The session timeout runs from `start` (when OpenAI is dialled), not from the upgrade.
    let mut s = Sim::with(|c| c.session_timeout = ms(2000));
    s.at(500).start();
    assert_eq!(s.call.poll_timeout(), Some(s.t0 + ms(2500)));
    s.at(2499);
    s.call.handle_timeout(s.now);
    s.drain();
    assert!(s.ended().is_none());
    s.at(2500);
    s.call.handle_timeout(s.now);
    s.drain();
    assert!(s.ended().unwrap().is_ai_failure());
    assert_eq!(s.call.poll_timeout(), None);
}

#[test]
fn a_stream_that_never_starts_ends_by_the_start_timeout_and_blames_nothing_on_openai() {
    // A session timeout shorter than the start timeout must not turn a stream that never sends
    // `start` (nothing was dialled) into an OpenAI failure the breaker would count.
    let mut s = Sim::with(|c| {
        c.session_timeout = ms(1000);
        c.start_timeout = ms(10_000);
    });
    assert_eq!(s.call.poll_timeout(), Some(s.t0 + ms(10_000)));
    s.at(5_000);
    s.call.handle_timeout(s.now);
    s.drain();
    assert!(s.ended().is_none());
    s.at(10_000);
    s.call.handle_timeout(s.now);
    s.drain();
    let r = s.ended().unwrap();
    assert_eq!(r, &EndReason::StartTimeout);
    assert!(!r.is_openai_unreachable() && !r.is_ai_failure());
}

#[test]
fn a_twilio_stream_that_goes_silent_ends_the_call_after_the_idle_timeout() {
    let mut s = Sim::with(|c| c.twilio_idle_timeout = ms(3000));
    s.start();
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}}));
    s.openai(session_updated("audio/pcmu", "audio/pcmu"));
    s.at(1000).media("AAAA");
    assert_eq!(s.call.poll_timeout(), Some(s.t0 + ms(4000)));
    s.at(3999);
    s.call.handle_timeout(s.now);
    s.drain();
    assert!(
        s.ended().is_none(),
        "frames from OpenAI do not count as Twilio being alive"
    );
    s.at(4000);
    s.call.handle_timeout(s.now);
    s.drain();
    assert_eq!(s.ended(), Some(&EndReason::TwilioSilent(ms(3000))));
    assert!(!s.ended().unwrap().is_ai_failure());
}

#[test]
fn no_start_in_time_ends_the_call() {
    let mut s = Sim::with(|c| c.start_timeout = ms(500));
    s.at(500);
    s.call.handle_timeout(s.now);
    s.drain();
    assert_eq!(s.ended(), Some(&EndReason::StartTimeout));
}

#[test]
fn a_start_for_another_call_or_with_a_wrong_token_is_refused() {
    let mut s = Sim::new();
    s.twilio(start_msg(
        "CA99999999999999999999999999999999",
        &good_token(),
    ));
    assert!(matches!(s.ended(), Some(EndReason::Unauthorized(_))));
    let mut s = Sim::new();
    s.twilio(start_msg(CALL_SID, "forged"));
    assert!(matches!(s.ended(), Some(EndReason::Unauthorized(_))));
    // The token of another stream id does not open this one.
    let mut s = Sim::new();
    s.twilio(start_msg(
        CALL_SID,
        &test_key().start_token("another-call-id"),
    ));
    assert!(matches!(s.ended(), Some(EndReason::Unauthorized(_))));
}

#[test]
fn a_media_format_other_than_mulaw_8k_mono_ends_the_call() {
    let mut s = Sim::new();
    let mut msg = start_msg(CALL_SID, &good_token());
    msg["start"]["mediaFormat"]["sampleRate"] = json!(16000);
    s.twilio(msg);
    assert!(matches!(s.ended(), Some(EndReason::BadMediaFormat(_))));
}

// ---- forwarding ----------------------------------------------------------------------------

#[test]
fn caller_audio_is_forwarded_unchanged_as_append() {
    let mut s = Sim::ready();
    let payload = b64_of(160);
    s.media(&payload);
    assert_eq!(
        s.openai_out,
        vec![json!({"type": "input_audio_buffer.append", "audio": payload})]
    );
}

#[test]
fn each_delta_becomes_media_then_a_mark_naming_item_and_cumulative_ms() {
    let mut s = Sim::ready();
    s.delta("resp_1", "item_A", 400)
        .delta("resp_1", "item_A", 240)
        .delta("resp_1", "item_A", 800);
    let kinds: Vec<_> = s
        .twilio_out
        .iter()
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["media", "mark", "media", "mark", "media", "mark"]);
    assert_eq!(s.twilio_out[0]["streamSid"], STREAM_SID);
    assert_eq!(s.twilio_out[0]["media"]["payload"], b64_of(400));
    assert_eq!(
        s.marks_sent(),
        [
            "e=0;i=item_A;ms=50",
            "e=0;i=item_A;ms=80",
            "e=0;i=item_A;ms=180"
        ]
    );
}

#[test]
fn long_deltas_are_split_into_valid_pieces_of_at_most_100_ms() {
    let mut s = Sim::ready();
    s.delta("resp_1", "item_A", 2000); // 250 ms
    let media: Vec<String> = s
        .twilio_out
        .iter()
        .filter(|v| v["event"] == "media")
        .map(|v| v["media"]["payload"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(media.len(), 3, "the fewest pieces of at most ~100 ms");
    assert_eq!(
        media.concat(),
        b64_of(2000),
        "pieces concatenate to the original, byte-exact"
    );
    assert!(media.iter().all(|m| m.len() % 4 == 0 && m.len() <= 1068));
    let lens: Vec<usize> = media.iter().map(String::len).collect();
    assert_eq!(lens, [892, 888, 888], "even pieces, no sliver at the end");
    assert_eq!(
        s.marks_sent(),
        [
            "e=0;i=item_A;ms=83",
            "e=0;i=item_A;ms=166",
            "e=0;i=item_A;ms=250"
        ]
    );
}

#[test]
fn many_deltas_of_varying_size_are_accounted_in_bytes() {
    let mut s = Sim::ready();
    let sizes = [3usize, 160, 7, 1200, 1, 333, 8000, 5];
    for sz in sizes {
        s.delta("resp_1", "item_A", sz);
    }
    let total: usize = sizes.iter().sum();
    let last = s.marks_sent().last().cloned().unwrap();
    assert_eq!(last, format!("e=0;i=item_A;ms={}", total / 8));
}

// ---- barge-in ------------------------------------------------------------------------------

#[test]
fn speech_with_nothing_playing_sends_neither_clear_nor_truncate() {
    let mut s = Sim::ready();
    s.speech_started();
    assert!(s.twilio_out.is_empty());
    assert!(s.openai_out.is_empty());
    assert_eq!(s.call.stats().speech_without_playback, 1);
}

#[test]
fn interrupt_mid_response_clears_first_then_truncates_what_was_heard() {
    let mut s = Sim::ready();
    // protocol.md 6.3 example A; the 2400-byte delta arrives as three of 800 bytes (a longer one
    // would be split, moving the marks).
    s.at(1000)
        .delta("resp_1", "item_X", 400)
        .delta("resp_1", "item_X", 800)
        .delta("resp_1", "item_X", 800)
        .delta("resp_1", "item_X", 800)
        .delta("resp_1", "item_X", 800);
    s.at(1080).echo("e=0;i=item_X;ms=50");
    s.twilio_out.clear();
    s.at(1180).speech_started();
    assert_eq!(
        s.twilio_out,
        vec![json!({"event": "clear", "streamSid": STREAM_SID})]
    );
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 150)]);
    assert_eq!(s.openai_out[0]["content_index"], 0);
    assert!(s.openai_out[0]["event_id"].is_string());
    assert!(s.events.iter().any(|e| matches!(
        e,
        CallEvent::Interrupted {
            audio_end_ms: 150,
            sent_ms: 450,
            ..
        }
    )));
}

#[test]
fn speech_after_the_last_delta_but_before_playout_ends_truncates() {
    let mut s = Sim::ready();
    s.at(0).delta("resp_1", "item_X", 800); // 100 ms
    s.openai(json!({"type": "response.output_audio.done", "event_id": "e", "response_id": "resp_1", "item_id": "item_X", "output_index": 0, "content_index": 0}));
    s.at(60).speech_started();
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 60)]);
}

#[test]
fn response_done_before_playback_ends_still_truncates() {
    let mut s = Sim::ready();
    s.at(0).delta("resp_1", "item_X", 1600); // 200 ms, two pieces
    s.openai(json!({"type": "response.done", "event_id": "e", "response": {"id": "resp_1", "object": "realtime.response", "status": "completed", "output": []}}));
    s.at(120).echo("e=0;i=item_X;ms=100");
    s.at(150).speech_started();
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 130)]);
}

#[test]
fn everything_echoed_means_the_item_was_heard_and_nothing_is_truncated() {
    let mut s = Sim::ready();
    s.at(0).delta("resp_1", "item_X", 400);
    s.at(50).echo("e=0;i=item_X;ms=50");
    s.twilio_out.clear();
    s.at(70).speech_started();
    assert!(s.twilio_out.is_empty() && s.truncates().is_empty());
}

#[test]
fn two_speech_started_in_a_row_interrupt_once() {
    let mut s = Sim::ready();
    s.at(0).delta("resp_1", "item_X", 800);
    s.at(30).speech_started();
    s.at(40).speech_started();
    assert_eq!(s.truncates().len(), 1);
    assert_eq!(
        s.twilio_out
            .iter()
            .filter(|v| v["event"] == "clear")
            .count(),
        1
    );
}

#[test]
fn echoes_of_marks_cleared_by_clear_are_ignored() {
    let mut s = Sim::ready();
    s.at(0)
        .delta("resp_1", "item_X", 800)
        .delta("resp_1", "item_X", 800);
    s.at(30).speech_started();
    // Twilio echoes every pending mark after the clear.
    s.at(35)
        .echo("e=0;i=item_X;ms=100")
        .echo("e=0;i=item_X;ms=200");
    assert_eq!(s.call.stats().marks_stale, 2);
    assert!(s.protocol_errors().is_empty());
}

#[test]
fn late_deltas_of_the_interrupted_response_are_dropped() {
    let mut s = Sim::ready();
    s.at(0).delta("resp_1", "item_X", 800);
    s.at(30).speech_started();
    s.twilio_out.clear();
    s.delta("resp_1", "item_X", 800);
    assert!(
        s.twilio_out.is_empty(),
        "late audio after the clear would play after the barge-in"
    );
    assert_eq!(s.call.stats().late_deltas_dropped, 1);
}

#[test]
fn a_new_response_after_an_interrupted_one_is_accounted_from_zero_in_a_new_epoch() {
    let mut s = Sim::ready();
    s.at(0).delta("resp_1", "item_X", 800);
    s.at(30).speech_started();
    s.at(35).echo("e=0;i=item_X;ms=100");
    s.twilio_out.clear();
    s.at(2000).delta("resp_2", "item_Y", 400);
    assert_eq!(s.marks_sent(), ["e=1;i=item_Y;ms=50"]);
    s.at(2020).speech_started();
    assert_eq!(s.truncates().last().unwrap(), &("item_Y".to_owned(), 20));
}

#[test]
fn late_and_out_of_order_echoes_never_move_playout_backwards() {
    let mut s = Sim::ready();
    s.at(0)
        .delta("r", "item_X", 400)
        .delta("r", "item_X", 400)
        .delta("r", "item_X", 400);
    s.at(100).echo("e=0;i=item_X;ms=100");
    s.at(101).echo("e=0;i=item_X;ms=50"); // late, already implied
    s.at(120).speech_started();
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 120)]);
    assert_eq!(s.call.stats().marks_unknown, 1);
    assert!(
        s.protocol_errors().is_empty(),
        "a late echo of a real mark is not a protocol error"
    );
}

#[test]
fn gaps_in_twilio_timestamps_do_not_affect_the_playout_estimate() {
    // The estimate uses our clock and the marks, not the inbound media timestamps.
    let mut s = Sim::ready();
    s.at(0).delta("r", "item_X", 1600);
    for ts in ["20", "40", "5000", "5020"] {
        s.twilio(
            json!({"event": "media", "sequenceNumber": "3", "streamSid": STREAM_SID,
            "media": {"track": "inbound", "chunk": "2", "timestamp": ts, "payload": "AAAA"}}),
        );
    }
    s.at(90).speech_started();
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 90)]);
}

#[test]
fn an_item_queued_behind_the_playing_one_is_truncated_at_zero() {
    let mut s = Sim::ready();
    s.at(0).delta("r", "item_A", 800).delta("r", "item_B", 800);
    s.at(40).speech_started();
    assert_eq!(
        s.truncates(),
        vec![("item_A".to_owned(), 40), ("item_B".to_owned(), 0)]
    );
}

// ---- bad input -----------------------------------------------------------------------------

#[test]
fn bad_frames_are_counted_and_dropped_and_the_call_goes_on() {
    let mut s = Sim::ready();
    s.twilio_raw(b"not json at all");
    s.twilio_raw(b"{\"event\":\"media\",\"streamSid\":\"MZ00000000000000000000000000000001\",\"media\":{\"payload\":\"@@@@\"}}");
    s.twilio(json!({"event": "media", "streamSid": "MZ_other", "media": {"payload": "AAAA"}}));
    s.twilio(json!({"event": "somethingNew", "streamSid": STREAM_SID}));
    s.echo("responsePart");
    s.call.handle_twilio_binary(s.now);
    s.drain();
    assert_eq!(
        s.protocol_errors(),
        [
            "not_json",
            "bad_base64",
            "unknown_stream_sid",
            "unknown_mark",
            "binary_frame"
        ]
    );
    assert!(s.ended().is_none());
    s.media("AAAA");
    assert_eq!(s.openai_out.len(), 1, "audio still flows");
}

#[test]
fn media_before_start_is_dropped() {
    let mut s = Sim::new();
    s.media("AAAA");
    assert_eq!(s.protocol_errors(), ["media_before_start"]);
}

#[test]
fn bad_openai_frames_are_counted_and_dropped() {
    let mut s = Sim::ready();
    let mut frame = b"{\"type\":".to_vec();
    s.call.handle_openai_frame(s.now, &mut frame);
    s.drain();
    s.openai(json!({"type": "response.output_audio.delta", "event_id": "e", "response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0, "delta": "not base64!"}));
    s.openai(json!({"type": "some.future.event", "event_id": "e"}));
    assert_eq!(s.protocol_errors(), ["not_json", "bad_base64"]);
    assert!(s.twilio_out.is_empty());
    assert!(s.ended().is_none());
}

// ---- ending --------------------------------------------------------------------------------

#[test]
fn twilio_stop_ends_the_call() {
    let mut s = Sim::ready();
    s.twilio(json!({"event": "stop", "sequenceNumber": "5", "streamSid": STREAM_SID, "stop": {"accountSid": "AC1", "callSid": CALL_SID}}));
    assert_eq!(s.ended(), Some(&EndReason::TwilioStop));
    assert!(s.call.is_ended());
    s.media("AAAA");
    assert!(
        s.openai_out.is_empty(),
        "nothing is forwarded after the end"
    );
}

#[test]
fn the_openai_socket_closing_ends_the_call_as_an_ai_failure() {
    let mut s = Sim::ready();
    s.call.handle_openai_closed(s.now, "close 1011");
    s.drain();
    assert!(matches!(s.ended(), Some(EndReason::OpenAiClosed(_))));
    assert_eq!(
        s.events
            .iter()
            .filter(|e| matches!(e, CallEvent::Ended { .. }))
            .count(),
        1
    );
}

#[test]
fn transcripts_dtmf_usage_and_tool_calls_become_events() {
    let mut s = Sim::ready();
    s.openai(json!({"type": "conversation.item.input_audio_transcription.completed", "event_id": "e", "item_id": "item_U", "content_index": 0, "transcript": "注文番号は12345です。"}));
    s.openai(json!({"type": "response.output_audio_transcript.done", "event_id": "e", "response_id": "r", "item_id": "item_A", "output_index": 0, "content_index": 0, "transcript": "Sure."}));
    s.twilio(json!({"event": "dtmf", "streamSid": STREAM_SID, "sequenceNumber": "57", "dtmf": {"track": "inbound_track", "digit": "1"}}));
    s.openai(json!({"type": "response.function_call_arguments.done", "event_id": "e", "response_id": "r", "item_id": "item_F", "output_index": 1, "call_id": "call_1", "name": "lookup_order", "arguments": "{\"order_id\":\"1\"}"}));
    s.openai(json!({"type": "response.done", "event_id": "e", "response": {"id": "r", "object": "realtime.response", "status": "completed", "output": [], "usage": {"total_tokens": 10, "input_tokens": 6, "output_tokens": 4}}}));
    assert!(s.events.iter().any(
        |e| matches!(e, CallEvent::CallerTranscript { text, .. } if text == "注文番号は12345です。")
    ));
    assert!(s
        .events
        .iter()
        .any(|e| matches!(e, CallEvent::AssistantTranscript { text, .. } if text == "Sure.")));
    assert!(s
        .events
        .iter()
        .any(|e| matches!(e, CallEvent::Dtmf { digit } if digit == "1")));
    assert!(s
        .events
        .iter()
        .any(|e| matches!(e, CallEvent::ToolCall { name, .. } if name == "lookup_order")));
    assert!(s.events.iter().any(
        |e| matches!(e, CallEvent::ResponseDone { usage: Some(u), .. } if u.total_tokens == 10)
    ));
    let types: Vec<_> = s
        .openai_out
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["conversation.item.create", "response.create"],
        "a tool with no executor gets an error output so the model speaks"
    );
    assert_eq!(s.openai_out[0]["item"]["call_id"], "call_1");
}

#[test]
fn session_update_waits_for_the_agent_the_driver_hands_over() {
    let mut s = Sim::with(|c| c.wait_for_agent = true);
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1", "type": "realtime"}}));
    s.start();
    assert!(
        s.openai_out.is_empty(),
        "no session.update before the agent is known: {:?}",
        s.openai_out
    );
    let agent = AgentSettings {
        id: "sales-ja".into(),
        voice: "cedar".into(),
        instructions: "丁寧に".into(),
        ..AgentSettings::default()
    };
    s.call.set_agent(Arc::new(agent));
    s.drain();
    assert_eq!(s.openai_out.len(), 1);
    assert_eq!(s.openai_out[0]["type"], "session.update");
    assert_eq!(
        s.openai_out[0]["session"]["audio"]["output"]["voice"],
        "cedar"
    );
    assert_eq!(s.openai_out[0]["session"]["instructions"], "丁寧に");
    // A second hand-over after session.update changes nothing.
    s.call.set_agent(Arc::new(AgentSettings::default()));
    s.drain();
    assert_eq!(s.openai_out.len(), 1);
}

#[test]
fn an_agent_handed_over_before_session_created_is_used_when_it_arrives() {
    let mut s = Sim::with(|c| c.wait_for_agent = true);
    s.start();
    let agent = AgentSettings {
        voice: "ash".into(),
        ..AgentSettings::default()
    };
    s.call.set_agent(Arc::new(agent));
    s.drain();
    assert!(s.openai_out.is_empty());
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1", "type": "realtime"}}));
    assert_eq!(s.openai_out.len(), 1);
    assert_eq!(
        s.openai_out[0]["session"]["audio"]["output"]["voice"],
        "ash"
    );
}

// ---- protocol.md 6.3, the worked examples exactly ------------------------------------------

/// protocol.md 6.3: item_X, deltas of 400, 2400 and 800 bytes sent at t = 1000 ms with nothing
/// playing. The 2400-byte delta arrives whole and is split into pieces of at most 100 ms, which
/// adds marks at 150 and 250 ms but leaves the document's marks (50, 350, 450) and every answer
/// unchanged.
fn worked_example() -> Sim {
    let mut s = Sim::ready();
    s.at(1000)
        .delta("resp_R1", "item_X", 400)
        .delta("resp_R1", "item_X", 2400)
        .delta("resp_R1", "item_X", 800);
    assert_eq!(
        s.marks_sent(),
        [
            "e=0;i=item_X;ms=50",
            "e=0;i=item_X;ms=150",
            "e=0;i=item_X;ms=250",
            "e=0;i=item_X;ms=350",
            "e=0;i=item_X;ms=450"
        ]
    );
    s.twilio_out.clear();
    s
}

#[test]
fn worked_example_a_gives_150() {
    let mut s = worked_example();
    s.at(1080).echo("e=0;i=item_X;ms=50");
    s.at(1180).speech_started();
    assert_eq!(
        s.twilio_out,
        vec![json!({"event": "clear", "streamSid": STREAM_SID})]
    );
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 150)]);
}

#[test]
fn worked_example_b_gives_450_and_nothing_once_every_mark_echoed() {
    let mut s = worked_example();
    // The sample's inputs (responseStartTimestampTwilio = 40000, latestMediaTimestamp = 41600,
    // which would give 1600 ms) are inbound stream time and do not move the estimate.
    let media = |ts: &str| {
        json!({"event": "media", "sequenceNumber": "3", "streamSid": STREAM_SID,
        "media": {"track": "inbound", "chunk": "2", "timestamp": ts, "payload": "/////w=="}})
    };
    s.at(1000).twilio(media("40000"));
    s.at(1050).echo("e=0;i=item_X;ms=50");
    s.at(1360).echo("e=0;i=item_X;ms=350");
    s.at(1600).twilio(media("41600"));
    s.speech_started();
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 450)]);

    // Mark 450 echoed too, and the response done: nothing outstanding, nothing sent.
    let mut s = worked_example();
    s.openai(response_done("resp_R1", "completed"));
    s.at(1050).echo("e=0;i=item_X;ms=50");
    s.at(1360).echo("e=0;i=item_X;ms=350");
    s.at(1450).echo("e=0;i=item_X;ms=450");
    s.at(1600).speech_started();
    assert!(s.twilio_out.is_empty(), "no clear: {:?}", s.twilio_out);
    assert!(s.truncates().is_empty(), "no truncate");
}

#[test]
fn worked_example_b_amended_truncates_at_450_without_a_clear_while_still_generating() {
    // protocol.md 6.3 example B, amended step 1: every mark echoed, but resp_R1 is still
    // generating (response.created, no response.done): only the truncate at 450 goes out.
    let mut s = Sim::ready();
    s.openai(response_created("resp_R1"));
    s.at(1000)
        .delta("resp_R1", "item_X", 400)
        .delta("resp_R1", "item_X", 2400)
        .delta("resp_R1", "item_X", 800);
    for (at, ms) in [
        (1050, 50),
        (1150, 150),
        (1250, 250),
        (1360, 350),
        (1450, 450),
    ] {
        s.at(at).echo(&format!("e=0;i=item_X;ms={ms}"));
    }
    s.twilio_out.clear();
    s.at(1600).speech_started();
    assert!(s.twilio_out.is_empty(), "no clear: {:?}", s.twilio_out);
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 450)]);
    assert!(s.events.iter().any(|e| matches!(
        e,
        CallEvent::Interrupted {
            audio_end_ms: 450,
            cleared: false,
            ..
        }
    )));
    // The deltas it was still generating are dropped.
    s.at(1610).delta("resp_R1", "item_X", 800);
    assert!(s.twilio_out.is_empty());
}

#[test]
fn an_announced_item_of_the_generating_response_is_truncated_at_zero() {
    // resp_1's first item was heard completely; its second item's audio part was announced but
    // none of its audio reached us before the caller spoke.
    let mut s = Sim::ready();
    s.openai(response_created("resp_1"));
    s.openai(json!({"type": "response.output_item.added", "event_id": "e", "response_id": "resp_1", "output_index": 0,
        "item": {"id": "item_A", "object": "realtime.item", "type": "message", "role": "assistant", "status": "in_progress", "content": []}}));
    s.at(0).delta("resp_1", "item_A", 400);
    s.at(50).echo("e=0;i=item_A;ms=50");
    s.openai(json!({"type": "response.output_item.added", "event_id": "e", "response_id": "resp_1", "output_index": 1,
        "item": {"id": "item_B", "object": "realtime.item", "type": "message", "role": "assistant", "status": "in_progress", "content": []}}));
    // item_C is announced with no audio part yet: nothing of it can be truncated.
    s.openai(json!({"type": "response.output_item.added", "event_id": "e", "response_id": "resp_1", "output_index": 3,
        "item": {"id": "item_C", "object": "realtime.item", "type": "message", "role": "assistant", "status": "in_progress", "content": []}}));
    s.openai(json!({"type": "response.content_part.added", "event_id": "e", "response_id": "resp_1", "item_id": "item_B",
        "output_index": 1, "content_index": 0, "part": {"type": "audio", "transcript": ""}}));
    s.openai(json!({"type": "response.output_item.added", "event_id": "e", "response_id": "resp_1", "output_index": 2,
        "item": {"id": "item_F", "object": "realtime.item", "type": "function_call", "status": "in_progress", "call_id": "c", "name": "f", "arguments": ""}}));
    s.twilio_out.clear();
    s.at(80).speech_started();
    assert!(s.twilio_out.is_empty());
    assert_eq!(
        s.truncates(),
        vec![("item_A".to_owned(), 50), ("item_B".to_owned(), 0)],
        "a function call item is never truncated"
    );
}

#[test]
fn worked_example_c_gives_30() {
    let mut s = worked_example();
    s.at(1030).speech_started();
    assert_eq!(
        s.twilio_out,
        vec![json!({"event": "clear", "streamSid": STREAM_SID})]
    );
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 30)]);
}

#[test]
fn a_response_cancelled_while_nothing_played_is_truncated_at_what_was_sent_and_its_late_deltas_dropped(
) {
    // The first delta was heard completely (its mark echoed), the model is still generating;
    // the caller speaks, the server cancels the response (interrupt_response), and a delta it
    // had already emitted arrives after speech_started: it must not play (protocol.md 6.1
    // flaw 6, 7 common mistake 7).
    let mut s = Sim::ready();
    s.openai(json!({"type": "response.created", "event_id": "e", "response": {"id": "resp_1", "object": "realtime.response", "status": "in_progress", "output": []}}));
    s.at(0).delta("resp_1", "item_X", 400);
    s.at(60).echo("e=0;i=item_X;ms=50");
    s.twilio_out.clear();
    s.at(100).speech_started();
    assert!(s.twilio_out.is_empty(), "nothing playing: no clear");
    // protocol.md 6.2 step 1: the server's item holds what it is still generating, which nobody
    // will hear; everything sent was heard (its mark came back), so the truncate is at sent_ms.
    assert_eq!(s.truncates(), vec![("item_X".to_owned(), 50)]);
    assert_eq!(s.call.stats().generation_truncations, 1);
    assert_eq!(s.call.stats().barge_ins, 0, "no clear was sent");
    s.at(110).delta("resp_1", "item_X", 800);
    assert!(
        s.twilio_out.is_empty(),
        "late delta forwarded: {:?}",
        s.twilio_out
    );
    assert_eq!(s.call.stats().late_deltas_dropped, 1);
    s.openai(json!({"type": "response.done", "event_id": "e", "response": {"id": "resp_1", "object": "realtime.response", "status": "cancelled", "status_details": {"type": "cancelled", "reason": "turn_detected"}, "output": []}}));
    // The next response plays normally.
    s.openai(json!({"type": "response.created", "event_id": "e", "response": {"id": "resp_2", "object": "realtime.response", "status": "in_progress", "output": []}}));
    s.at(900).delta("resp_2", "item_Y", 400);
    assert_eq!(s.twilio_out.len(), 2, "media and mark of the new response");
}

#[test]
fn speech_after_a_finished_response_does_not_drop_the_next_one() {
    let mut s = Sim::ready();
    s.openai(json!({"type": "response.created", "event_id": "e", "response": {"id": "resp_1", "object": "realtime.response", "status": "in_progress", "output": []}}));
    s.at(0).delta("resp_1", "item_X", 400);
    s.openai(json!({"type": "response.done", "event_id": "e", "response": {"id": "resp_1", "object": "realtime.response", "status": "completed", "output": []}}));
    s.at(60).echo("e=0;i=item_X;ms=50");
    s.at(100).speech_started();
    s.twilio_out.clear();
    s.at(900).delta("resp_2", "item_Y", 400);
    assert_eq!(s.twilio_out.len(), 2);
    // `response.done` ended resp_1, so the speech did not mark it interrupted: a delta still
    // naming it (as a stale active response would make the bridge drop) is forwarded.
    s.at(950).delta("resp_1", "item_Z", 400);
    assert_eq!(s.twilio_out.len(), 4, "{:?}", s.twilio_out);
    assert_eq!(s.call.stats().late_deltas_dropped, 0);
}

#[test]
fn responses_cancelled_while_nothing_played_are_remembered_within_the_bound() {
    // Each speech_started with nothing playing still marks the active response interrupted;
    // the list must stay within MAX_INTERRUPTED (16) like the playing path's, or a long call
    // grows it by one id per turn. The oldest id falls out, so its delta plays again.
    let mut s = Sim::ready();
    for i in 0..=16 {
        s.openai(json!({"type": "response.created", "event_id": "e", "response": {"id": format!("resp_{i}"), "object": "realtime.response", "status": "in_progress", "output": []}}));
        s.speech_started();
    }
    s.twilio_out.clear();
    s.at(100).delta("resp_1", "item_B", 400);
    assert!(s.twilio_out.is_empty(), "resp_1 is still remembered");
    s.at(200).delta("resp_0", "item_A", 400);
    assert_eq!(
        s.twilio_out.len(),
        2,
        "resp_0 fell out of the bounded list: {:?}",
        s.twilio_out
    );
}

/// `response.function_call_arguments.done` of response `resp` for call `call_id`.
fn arguments_done(resp: &str, call_id: &str) -> Value {
    json!({"type": "response.function_call_arguments.done", "event_id": "e", "response_id": resp, "item_id": format!("item_{call_id}"), "output_index": 0, "call_id": call_id, "name": "lookup_order", "arguments": "{}"})
}

fn response_created(resp: &str) -> Value {
    json!({"type": "response.created", "event_id": "e", "response": {"id": resp, "object": "realtime.response", "status": "in_progress", "output": []}})
}

fn response_done(resp: &str, status: &str) -> Value {
    json!({"type": "response.done", "event_id": "e", "response": {"id": resp, "object": "realtime.response", "status": status, "output": []}})
}

/// The OpenAI event types sent so far, and the `call_id`s of the function outputs among them.
fn openai_types_and_outputs(s: &Sim) -> (Vec<String>, Vec<String>) {
    let types = s
        .openai_out
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect();
    let outputs = s
        .openai_out
        .iter()
        .filter(|v| v["item"]["type"] == "function_call_output")
        .map(|v| v["item"]["call_id"].as_str().unwrap().to_owned())
        .collect();
    (types, outputs)
}

/// A ready call in which response `resp_T` has started (nothing sent to OpenAI so far).
fn with_response_t() -> Sim {
    let mut s = Sim::ready();
    s.openai_out.clear();
    s.openai(response_created("resp_T"));
    s
}

/// Only `call_1`'s function output went to OpenAI: no `response.create` of ours.
fn assert_only_the_output_of_call_1(s: &Sim) {
    let (types, outputs) = openai_types_and_outputs(s);
    assert_eq!(types, ["conversation.item.create"]);
    assert_eq!(outputs, ["call_1"]);
}

#[test]
fn tool_results_wait_for_the_end_of_their_response_then_one_response_create_asks_for_the_answer() {
    let mut s = with_response_t();
    // Two calls in one response (parallel tool calls).
    s.openai(arguments_done("resp_T", "call_1"));
    s.openai(arguments_done("resp_T", "call_2"));
    assert!(
        s.openai_out.is_empty(),
        "nothing while the response is active: {:?}",
        s.openai_out
    );
    s.openai(response_done("resp_T", "completed"));
    let (types, outputs) = openai_types_and_outputs(&s);
    assert_eq!(
        types,
        [
            "conversation.item.create",
            "conversation.item.create",
            "response.create"
        ]
    );
    assert_eq!(outputs, ["call_1", "call_2"]);
}

#[test]
fn tool_results_of_a_response_the_caller_cut_short_go_out_without_a_response_create() {
    let mut s = with_response_t();
    s.openai(arguments_done("resp_T", "call_1"));
    s.openai(response_done("resp_T", "cancelled"));
    // Server VAD answers the caller's new turn by itself (and sees the output).
    assert_only_the_output_of_call_1(&s);
}

#[test]
fn hanging_up_mid_response_sends_no_cancel_the_close_ends_the_session() {
    // Deliberate (README "Protocol conformance"): the close frame that follows ends the session
    // and its generation; a `response.cancel` would race the response's own end and draw a
    // `response_cancel_not_active` error (the load test saw 13 in 1,000 calls).
    let mut s = Sim::ready();
    s.openai_out.clear();
    s.openai(response_created("resp_R"));
    s.twilio(json!({"event": "stop", "sequenceNumber": "9", "streamSid": STREAM_SID, "stop": {"accountSid": "AC1", "callSid": CALL_SID}}));
    assert_eq!(s.ended(), Some(&EndReason::TwilioStop));
    assert!(s.openai_out.is_empty(), "{:?}", s.openai_out);
}

#[test]
fn the_greeting_is_asked_for_before_the_held_caller_audio_goes_out() {
    let agent = AgentSettings {
        greeting: Some("Thank you for calling.".into()),
        ..AgentSettings::default()
    };
    let mut s = Sim::with(|cfg| cfg.agent = Arc::new(agent));
    s.start();
    s.media("AAAA").media("BBBB");
    s.openai(json!({"type": "session.created", "event_id": "e1", "session": {"id": "sess_1"}}));
    s.openai_out.clear();
    s.openai(session_updated("audio/pcmu", "audio/pcmu"));
    let (types, _) = openai_types_and_outputs(&s);
    // Held audio holding a whole turn would otherwise start the server's own response first,
    // and the greeting's `response.create` would be refused.
    assert_eq!(
        types,
        [
            "response.create",
            "input_audio_buffer.append",
            "input_audio_buffer.append"
        ]
    );
    assert!(s.openai_out[0]["response"]["instructions"]
        .as_str()
        .unwrap()
        .contains("Thank you for calling."));
}

#[test]
fn tool_results_wait_for_their_own_response_even_after_a_barge_in_cleared_the_active_one() {
    let mut s = with_response_t();
    // The caller starts speaking (the server cancels resp_T), then the call's arguments arrive.
    s.speech_started();
    s.openai(arguments_done("resp_T", "call_1"));
    assert!(
        s.openai_out.is_empty(),
        "nothing before resp_T is done: {:?}",
        s.openai_out
    );
    s.openai(json!({"type": "input_audio_buffer.speech_stopped", "event_id": "e", "audio_end_ms": 900, "item_id": "item_U2"}));
    s.openai(response_done("resp_T", "cancelled"));
    // Server VAD answers the caller's turn and sees the output: no response.create of ours.
    assert_only_the_output_of_call_1(&s);
}

#[test]
fn tool_results_of_a_completed_response_ask_for_nothing_while_the_caller_speaks() {
    let mut s = with_response_t();
    s.openai(arguments_done("resp_T", "call_1"));
    s.speech_started();
    s.openai(response_done("resp_T", "completed"));
    assert_only_the_output_of_call_1(&s);
}
