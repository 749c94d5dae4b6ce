//! The audio hot path allocates nothing per frame, once its buffers have grown.
//!
//! A counting global allocator (`tests/common/counting_alloc.rs`) counts only on a thread that
//! switched counting on, so the test harness's own threads, and other tests of this binary, are
//! not counted.
//!
//! The main test drives one ready call the way the runtime does, bytes in → bytes out:
//!
//! ```text
//!  Twilio media  (masked)  ─▶ Decoder(Server) ─▶ Call ─▶ Encoder(Client) ─▶ append (masked)
//!  OpenAI delta  (plain)   ─▶ Decoder(Client) ─▶ Call ─▶ Encoder(Server) ─▶ media + mark
//!  Twilio mark echo        ─▶ Decoder(Server) ─▶ Call                     (every 25 deltas)
//! ```
//!
//! Allocation per *response* (the ledger keeps the item and response ids as `String`s) is
//! allowed; these tests use one response item throughout, so that cost is in the warm-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use callbridge_core::bridge::call::{Call, CallConfig, Leg};
use callbridge_core::openai::events::{ServerEvent, ServerEventParser};
use callbridge_core::openai::session::AgentSettings;
use callbridge_core::twilio::events::{encode_mark, encode_media, TwilioEvent, TwilioParser};
use callbridge_core::wire::ws::{Decoder, Encoder, Message, Role};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_in;

const CALL_SID: &str = "CA5c1d1e5f64d4a38d7cd0d1c8d9e1b2a3";
const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

/// Frames forwarded in each direction during the measured loop.
const FRAMES: usize = 10_000;

/// Deltas between two mark echoes (2.5 s of 100 ms deltas queued at Twilio).
const DELTAS_PER_ECHO: usize = 25;

/// Base64 of `ms` milliseconds of μ-law.
fn audio_b64(ms: usize) -> String {
    let audio: Vec<u8> = (0..ms * 8).map(|i| (i * 37 % 256) as u8).collect();
    STANDARD.encode(audio)
}

/// Twilio's 20 ms `media` message.
fn media_json() -> Vec<u8> {
    format!(
        r#"{{"event":"media","sequenceNumber":"5","media":{{"track":"inbound","chunk":"4","timestamp":"80","payload":"{}"}},"streamSid":"{STREAM_SID}"}}"#,
        audio_b64(20)
    )
    .into_bytes()
}

/// A GA audio delta of `ms` milliseconds.
fn delta_json(ms: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"response.output_audio.delta","event_id":"event_C3a9XkZb2QwErTy","response_id":"resp_CBxR1abcdEfGhIjK","item_id":"item_CBx2defGhIjKlMn","output_index":0,"content_index":0,"delta":"{}"}}"#,
        audio_b64(ms)
    )
    .into_bytes()
}

/// One ready call between its two WebSocket legs, with every buffer reused.
struct Bridge {
    call: Call,
    now: Instant,
    scratch: Vec<u8>,
    twilio_decoder: Decoder,
    twilio_encoder: Encoder,
    openai_decoder: Decoder,
    openai_encoder: Encoder,
    to_twilio: Vec<u8>,
    to_openai: Vec<u8>,
    /// Plays Twilio: masks the mark echoes.
    twilio_peer: Encoder,
    /// The echo being built: JSON, then its masked frame.
    echo_json: Vec<u8>,
    echo_frame: Vec<u8>,
}

impl Bridge {
    fn ready() -> Bridge {
        let cfg = CallConfig::new("gpt-realtime", Arc::new(AgentSettings::default()), CALL_SID);
        let now = Instant::now();
        let mut bridge = Bridge {
            call: Call::new(cfg, now),
            now,
            scratch: Vec::new(),
            twilio_decoder: Decoder::new(Role::Server, 1 << 20),
            twilio_encoder: Encoder::new(Role::Server),
            openai_decoder: Decoder::new(Role::Client, 1 << 20),
            openai_encoder: Encoder::new(Role::Client),
            to_twilio: Vec::new(),
            to_openai: Vec::new(),
            twilio_peer: Encoder::new(Role::Client),
            echo_json: Vec::new(),
            echo_frame: Vec::new(),
        };
        let start = format!(
            r#"{{"event":"start","sequenceNumber":"1","streamSid":"{STREAM_SID}","start":{{"accountSid":"AC00000000000000000000000000000001","streamSid":"{STREAM_SID}","callSid":"{CALL_SID}","tracks":["inbound"],"customParameters":{{}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
        );
        bridge
            .call
            .handle_twilio_frame(now, &mut start.into_bytes());
        bridge.call.handle_openai_frame(
            now,
            &mut br#"{"type":"session.created","event_id":"e1","session":{"id":"sess_1"}}"#
                .to_vec(),
        );
        bridge.call.handle_openai_frame(now, &mut br#"{"type":"session.updated","event_id":"e2","session":{"id":"sess_1","audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#.to_vec());
        while bridge.call.poll_transmit(&mut bridge.scratch).is_some() {}
        while bridge.call.poll_event().is_some() {}
        assert!(bridge.call.is_ready());
        bridge
    }

    /// Decodes one complete text frame from `input` and hands it to the call; then encodes
    /// everything the call wants to send.
    fn forward(&mut self, from: Leg, input: &mut [u8]) {
        let decoder = match from {
            Leg::Twilio => &mut self.twilio_decoder,
            Leg::OpenAi => &mut self.openai_decoder,
        };
        let len = input.len();
        let decoded = decoder.decode(input).expect("a valid frame");
        assert_eq!(decoded.consumed, len, "each input holds exactly one frame");
        let Some(Message::Text(text)) = decoded.message else {
            panic!("one complete text frame expected");
        };
        match from {
            Leg::Twilio => self.call.handle_twilio_frame(self.now, text),
            Leg::OpenAi => self.call.handle_openai_frame(self.now, text),
        }
        self.to_twilio.clear();
        self.to_openai.clear();
        while let Some(tx) = self.call.poll_transmit(&mut self.scratch) {
            let payload = &self.scratch[..tx.len];
            match tx.leg {
                Leg::Twilio => self.twilio_encoder.text(&mut self.to_twilio, payload),
                Leg::OpenAi => self.openai_encoder.text(&mut self.to_openai, payload),
            }
        }
    }

    /// Echoes the last mark found in `to_twilio`, as Twilio does when playout passes it.
    fn echo_last_mark(&mut self) {
        const KEY: &[u8] = br#""name":""#;
        let sent = &self.to_twilio;
        let start = sent
            .windows(KEY.len())
            .rposition(|w| w == KEY)
            .expect("a mark was sent")
            + KEY.len();
        let len = sent[start..].iter().position(|&b| b == b'"').unwrap();
        self.echo_json.clear();
        self.echo_json
            .extend_from_slice(br#"{"event":"mark","sequenceNumber":"9","streamSid":""#);
        self.echo_json.extend_from_slice(STREAM_SID.as_bytes());
        self.echo_json.extend_from_slice(br#"","mark":{"name":""#);
        self.echo_json.extend_from_slice(&sent[start..start + len]);
        self.echo_json.extend_from_slice(br#""}}"#);
        self.echo_frame.clear();
        self.twilio_peer.text(&mut self.echo_frame, &self.echo_json);
        let mut frame = std::mem::take(&mut self.echo_frame);
        self.forward(Leg::Twilio, &mut frame);
        self.echo_frame = frame;
    }
}

/// Forwards `rounds` × (5 media frames up, 1 delta of 100 ms down), echoing the last mark
/// every [`DELTAS_PER_ECHO`] deltas; the inputs are copied into reused buffers as a socket read
/// would put them there.
fn run(bridge: &mut Bridge, rounds: usize, media_frame: &[u8], delta_frame: &[u8]) {
    let mut media_in = media_frame.to_vec();
    let mut delta_in = delta_frame.to_vec();
    run_with(
        bridge,
        rounds,
        media_frame,
        delta_frame,
        &mut media_in,
        &mut delta_in,
    );
}

/// [`run`] with caller-provided input buffers (so the measured loop allocates none).
fn run_with(
    bridge: &mut Bridge,
    rounds: usize,
    media_frame: &[u8],
    delta_frame: &[u8],
    media_in: &mut [u8],
    delta_in: &mut [u8],
) {
    for round in 0..rounds {
        for _ in 0..5 {
            bridge.now += Duration::from_millis(20);
            media_in.copy_from_slice(media_frame);
            bridge.forward(Leg::Twilio, media_in);
            assert!(!bridge.to_openai.is_empty(), "each media becomes an append");
        }
        delta_in.copy_from_slice(delta_frame);
        bridge.forward(Leg::OpenAi, delta_in);
        assert!(
            !bridge.to_twilio.is_empty(),
            "each delta becomes media + mark"
        );
        if round % DELTAS_PER_ECHO == DELTAS_PER_ECHO - 1 {
            bridge.echo_last_mark();
        }
    }
}

#[test]
fn forwarding_audio_both_ways_allocates_nothing_per_frame() {
    let mut media = Vec::new();
    Encoder::new(Role::Client).text(&mut media, &media_json());
    let mut delta = Vec::new();
    Encoder::new(Role::Server).text(&mut delta, &delta_json(100));
    let mut bridge = Bridge::ready();
    run(&mut bridge, 4 * DELTAS_PER_ECHO, &media, &delta);
    let before = bridge.call.stats().clone();

    let mut media_in = media.clone();
    let mut delta_in = delta.clone();
    // FRAMES deltas down, and 5 × FRAMES media up (at least FRAMES, as required).
    let n = allocations_in(|| {
        run_with(
            &mut bridge,
            FRAMES,
            &media,
            &delta,
            &mut media_in,
            &mut delta_in,
        )
    });

    let stats = bridge.call.stats();
    assert_eq!(stats.protocol_errors, 0);
    assert_eq!(
        stats.audio_frames_up - before.audio_frames_up,
        5 * FRAMES as u64
    );
    assert_eq!(
        stats.audio_frames_down - before.audio_frames_down,
        FRAMES as u64
    );
    assert_eq!(stats.marks_sent - before.marks_sent, FRAMES as u64);
    assert_eq!(
        stats.marks_played - before.marks_played,
        (FRAMES / DELTAS_PER_ECHO) as u64
    );
    assert!(
        bridge.call.poll_event().is_none(),
        "no events on the audio path"
    );
    assert_eq!(
        n,
        0,
        "{n} allocations while forwarding {FRAMES} deltas and {} media frames",
        5 * FRAMES
    );
}

#[test]
fn parsers_and_encoders_of_the_hot_path_allocate_nothing_once_warm() {
    let media = media_json();
    let delta = delta_json(100);
    let payload = audio_b64(20);
    let mut twilio = TwilioParser::new();
    let mut openai = ServerEventParser::new();
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let mut step = || {
        buf.clear();
        buf.extend_from_slice(&media);
        assert!(matches!(twilio.parse(&mut buf), Ok(TwilioEvent::Media(_))));
        buf.clear();
        buf.extend_from_slice(&media);
        assert!(matches!(
            twilio.parse_full(&mut buf),
            Ok(TwilioEvent::Media(_))
        ));
        buf.clear();
        buf.extend_from_slice(&delta);
        assert!(matches!(
            openai.parse(&mut buf),
            Ok(ServerEvent::OutputAudioDelta { .. })
        ));
        out.clear();
        encode_media(&mut out, STREAM_SID, &payload);
        encode_mark(&mut out, STREAM_SID, "e=3;i=item_CBx1;ms=1240");
    };
    step();
    let n = allocations_in(|| (0..1000).for_each(|_| step()));
    assert_eq!(n, 0, "{n} allocations in 1000 parses and encodes");
}

/// Histogram samples per block of the exporter's lock-free sample buffer (metrics-util's
/// `AtomicBucket`, 64 on 64-bit targets): recording allocates one block per this many samples,
/// until upkeep drains them.
const SAMPLES_PER_BLOCK: u64 = 64;

#[test]
fn metric_work_per_frame_allocates_only_the_exporters_sample_blocks() {
    use callbridge::metrics::{self, CallMeter};
    use callbridge_core::bridge::CallStats;

    metrics::install().expect("recorder installs");
    let t0 = Instant::now();
    let mut meter = CallMeter::new(t0);
    let mut stats = CallStats::default();
    let mut frame = 0u64;
    let mut step = |meter: &mut CallMeter, frames: u64| {
        for _ in 0..frames {
            frame += 1;
            let at = t0 + Duration::from_millis(20 * frame);
            // Uplink: a Twilio read, its append queued, the loop's tick, the write to OpenAI.
            meter.on_read(Leg::Twilio, 400, at);
            stats.audio_frames_up += 1;
            meter.on_queued(&stats, 0, 420);
            meter.tick(at, 2);
            meter.on_written(Leg::OpenAi, 420, at + Duration::from_micros(40));
            // Downlink: an OpenAI read, media + mark queued, the write to Twilio.
            meter.on_read(Leg::OpenAi, 1200, at);
            stats.audio_frames_down += 1;
            meter.on_queued(&stats, 1300, 0);
            meter.tick(at, 3);
            meter.on_written(Leg::Twilio, 1300, at + Duration::from_micros(40));
        }
    };
    step(&mut meter, 1_000);
    let n = allocations_in(|| step(&mut meter, FRAMES as u64));
    // One latency sample per frame and direction; the counters and gauges allocate nothing.
    let samples = 2 * FRAMES as u64;
    assert!(
        n <= samples / SAMPLES_PER_BLOCK + 2,
        "{n} allocations for {samples} frames of metric work (sample blocks alone: {})",
        samples / SAMPLES_PER_BLOCK
    );
    eprintln!("{n} allocations for {samples} latency samples");
}
