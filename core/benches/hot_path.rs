//! The per-frame hot path of one call, bytes in → bytes out, with reused buffers.
//!
//! ```text
//!  uplink:   Twilio media (masked ws frame) ─▶ Decoder(Server) ─▶ Call ─▶ Encoder(Client) ─▶ append (masked)
//!  downlink: OpenAI delta (plain ws frame)  ─▶ Decoder(Client) ─▶ Call ─▶ Encoder(Server) ─▶ media + mark
//! ```
//!
//! Each direction is measured twice: `core` (frame payload → `handle_*_frame` → `poll_transmit`
//! until `None`) and `wire` (the same between the WebSocket decoder and encoder, as the runtime
//! does it). Every iteration first copies the incoming bytes into the input buffer, as a socket
//! read would (the decoder unmasks in place); `copy_only` measures that copy alone.
//!
//! # Steady state on the downlink
//! Every delta adds an outstanding mark to the call's ledger. Left alone, the ledger would grow
//! to its bound (`MAX_OUTSTANDING_MARKS`) and then stop sending marks, and the echo search would
//! get slower as it grew: not the state of a real call. So downlink benchmarks time deltas in
//! batches of [`DELTAS_PER_ECHO`] and, between batches and outside the timed region, echo the last
//! mark sent (as Twilio does when playout passes it; one echo retires the whole batch). The
//! ledger thus cycles between 0 and [`DELTAS_PER_ECHO`] outstanding marks, like a call with a few
//! seconds of audio queued at Twilio, and every batch costs the same.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use callbridge_core::bridge::call::{Call, CallConfig, Leg};
use callbridge_core::openai::events::{ServerEvent, ServerEventParser};
use callbridge_core::openai::session::AgentSettings;
use callbridge_core::wire::ws::{Decoder, Encoder, Message, Role};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

const CALL_SID: &str = "CA5c1d1e5f64d4a38d7cd0d1c8d9e1b2a3";
const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";
const RESPONSE_ID: &str = "resp_CBxR1abcdEfGhIjK";
const ITEM_ID: &str = "item_CBx2defGhIjKlMn";

/// Largest WebSocket message accepted (as in the runtime: far above any real frame).
const MAX_MESSAGE: usize = 1 << 20;

/// Deltas sent between two mark echoes: 25 deltas of 100 ms = 2.5 s of audio queued at Twilio.
const DELTAS_PER_ECHO: u64 = 25;

/// μ-law bytes per millisecond (8 kHz, one byte per sample).
const BYTES_PER_MS: usize = 8;

/// Base64 of `ms` milliseconds of μ-law (varied bytes, not silence).
fn audio_b64(ms: usize) -> String {
    let audio: Vec<u8> = (0..ms * BYTES_PER_MS)
        .map(|i| (i * 37 % 256) as u8)
        .collect();
    STANDARD.encode(audio)
}

/// The 373-byte Twilio `media` message of deps.md section 3 (20 ms, 216 base64 characters).
fn media_json() -> Vec<u8> {
    let payload = audio_b64(20);
    format!(
        r#"{{"event":"media","sequenceNumber":"5","media":{{"track":"inbound","chunk":"4","timestamp":"80","payload":"{payload}"}},"streamSid":"{STREAM_SID}"}}"#
    )
    .into_bytes()
}

/// A GA `response.output_audio.delta` carrying `ms` milliseconds of audio.
fn delta_json(ms: usize) -> Vec<u8> {
    let delta = audio_b64(ms);
    format!(
        r#"{{"type":"response.output_audio.delta","event_id":"event_C3a9XkZb2QwErTy","response_id":"{RESPONSE_ID}","item_id":"{ITEM_ID}","output_index":0,"content_index":0,"delta":"{delta}"}}"#
    )
    .into_bytes()
}

/// One call in the ready state with both WebSocket legs, as the runtime holds them.
struct Bridge {
    call: Call,
    now: Instant,
    /// `poll_transmit`'s buffer.
    scratch: Vec<u8>,
    /// Frames from Twilio (masked: we are its server).
    twilio_decoder: Decoder,
    /// Frames to Twilio (plain).
    twilio_encoder: Encoder,
    /// Frames from OpenAI (plain: we are its client).
    openai_decoder: Decoder,
    /// Frames to OpenAI (masked).
    openai_encoder: Encoder,
    /// Bytes queued for Twilio's socket.
    to_twilio: Vec<u8>,
    /// Bytes queued for OpenAI's socket.
    to_openai: Vec<u8>,
    /// Plays Twilio when echoing marks: masks frames as a client does.
    twilio_peer: Encoder,
    /// The echo being built (JSON, then its masked frame).
    echo_json: Vec<u8>,
    echo_frame: Vec<u8>,
}

impl Bridge {
    /// Drives a call through `connected`, `start`, `session.created` and `session.updated`.
    fn ready() -> Bridge {
        let cfg = CallConfig::new("gpt-realtime", Arc::new(AgentSettings::default()), CALL_SID);
        let now = Instant::now();
        let mut bridge = Bridge {
            call: Call::new(cfg, now),
            now,
            scratch: Vec::with_capacity(4096),
            twilio_decoder: Decoder::new(Role::Server, MAX_MESSAGE),
            twilio_encoder: Encoder::new(Role::Server),
            openai_decoder: Decoder::new(Role::Client, MAX_MESSAGE),
            openai_encoder: Encoder::new(Role::Client),
            to_twilio: Vec::with_capacity(8192),
            to_openai: Vec::with_capacity(8192),
            twilio_peer: Encoder::new(Role::Client),
            echo_json: Vec::with_capacity(256),
            echo_frame: Vec::with_capacity(256),
        };
        let setup: [(Leg, String); 4] = [
            (Leg::Twilio, r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.into()),
            (Leg::Twilio, format!(
                r#"{{"event":"start","sequenceNumber":"1","streamSid":"{STREAM_SID}","start":{{"accountSid":"AC00000000000000000000000000000001","streamSid":"{STREAM_SID}","callSid":"{CALL_SID}","tracks":["inbound"],"customParameters":{{}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
            )),
            (Leg::OpenAi, r#"{"type":"session.created","event_id":"e1","session":{"id":"sess_1","type":"realtime"}}"#.into()),
            (Leg::OpenAi, r#"{"type":"session.updated","event_id":"e2","session":{"id":"sess_1","type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#.into()),
        ];
        for (leg, text) in setup {
            let mut frame = text.into_bytes();
            match leg {
                Leg::Twilio => bridge.call.handle_twilio_frame(now, &mut frame),
                Leg::OpenAi => bridge.call.handle_openai_frame(now, &mut frame),
            }
            while bridge.call.poll_transmit(&mut bridge.scratch).is_some() {}
        }
        while bridge.call.poll_event().is_some() {}
        assert!(
            bridge.call.is_ready(),
            "the setup frames must make the call ready"
        );
        bridge
    }

    /// Twilio JSON in, OpenAI JSON out. Returns the bytes produced.
    fn uplink_core(&mut self, frame: &mut [u8]) -> usize {
        self.now += Duration::from_millis(20);
        self.call.handle_twilio_frame(self.now, frame);
        self.drain_core()
    }

    /// OpenAI JSON in, Twilio JSON out. Returns the bytes produced.
    fn downlink_core(&mut self, frame: &mut [u8]) -> usize {
        self.call.handle_openai_frame(self.now, frame);
        self.drain_core()
    }

    /// `poll_transmit` until `None`; the bytes polled.
    fn drain_core(&mut self) -> usize {
        let mut total = 0;
        while let Some(tx) = self.call.poll_transmit(&mut self.scratch) {
            total += tx.len;
        }
        total
    }

    /// A masked Twilio frame in, masked OpenAI frames out (in `to_openai`).
    fn uplink_wire(&mut self, input: &mut [u8]) -> usize {
        self.now += Duration::from_millis(20);
        let decoded = self.twilio_decoder.decode(input).expect("a valid frame");
        let Some(Message::Text(text)) = decoded.message else {
            panic!("the input must be one complete text frame");
        };
        self.call.handle_twilio_frame(self.now, text);
        self.drain_wire()
    }

    /// A plain OpenAI frame in, plain Twilio frames out (in `to_twilio`).
    fn downlink_wire(&mut self, input: &mut [u8]) -> usize {
        let decoded = self.openai_decoder.decode(input).expect("a valid frame");
        let Some(Message::Text(text)) = decoded.message else {
            panic!("the input must be one complete text frame");
        };
        self.call.handle_openai_frame(self.now, text);
        self.drain_wire()
    }

    /// `poll_transmit` until `None`, each frame encoded for its leg; the bytes encoded.
    fn drain_wire(&mut self) -> usize {
        self.to_twilio.clear();
        self.to_openai.clear();
        while let Some(tx) = self.call.poll_transmit(&mut self.scratch) {
            let payload = &self.scratch[..tx.len];
            match tx.leg {
                Leg::Twilio => self.twilio_encoder.text(&mut self.to_twilio, payload),
                Leg::OpenAi => self.openai_encoder.text(&mut self.to_openai, payload),
            }
        }
        self.to_twilio.len() + self.to_openai.len()
    }

    /// Echoes the last mark the call sent (found in `scratch` after a core drain, or in
    /// `to_twilio` after a wire drain), through the wire path, as Twilio does when playout
    /// passes it. Retires every outstanding mark up to it.
    fn echo_last_mark(&mut self, after_wire: bool) {
        let sent = if after_wire {
            &self.to_twilio
        } else {
            &self.scratch
        };
        let name = last_mark_name(sent).expect("the last frame sent is a mark");
        self.echo_json.clear();
        self.echo_json
            .extend_from_slice(br#"{"event":"mark","sequenceNumber":"9","streamSid":""#);
        self.echo_json.extend_from_slice(STREAM_SID.as_bytes());
        self.echo_json.extend_from_slice(br#"","mark":{"name":""#);
        self.echo_json.extend_from_slice(name);
        self.echo_json.extend_from_slice(br#""}}"#);
        self.echo_frame.clear();
        self.twilio_peer.text(&mut self.echo_frame, &self.echo_json);
        let decoded = self
            .twilio_decoder
            .decode(&mut self.echo_frame)
            .expect("a valid frame");
        let Some(Message::Text(text)) = decoded.message else {
            panic!("the echo must be one complete text frame");
        };
        self.call.handle_twilio_frame(self.now, text);
        while self.call.poll_transmit(&mut self.scratch).is_some() {}
    }
}

/// The name in the last `"name":"…"` of `sent` (mark names never need JSON escapes).
fn last_mark_name(sent: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = br#""name":""#;
    let start = sent.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let len = sent[start..].iter().position(|&b| b == b'"')?;
    Some(&sent[start..start + len])
}

/// Times `step` over fresh copies of `input`, echoing the last mark every
/// [`DELTAS_PER_ECHO`] steps outside the timed region (see the module docs).
fn bench_downlink(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    input: &[u8],
    wire: bool,
) {
    let mut bridge = Bridge::ready();
    let mut buf = input.to_vec();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(DELTAS_PER_ECHO);
                let start = Instant::now();
                for _ in 0..batch {
                    buf.copy_from_slice(input);
                    let out = if wire {
                        bridge.downlink_wire(black_box(&mut buf))
                    } else {
                        bridge.downlink_core(black_box(&mut buf))
                    };
                    black_box(out);
                }
                total += start.elapsed();
                bridge.echo_last_mark(wire);
                left -= batch;
            }
            total
        })
    });
    // (When a filter skips this benchmark nothing ran, and these hold trivially.)
    let stats = bridge.call.stats();
    assert_eq!(
        stats.protocol_errors, 0,
        "every benchmark frame must be accepted"
    );
    assert_eq!(
        stats.marks_unknown, 0,
        "every echo must retire outstanding marks"
    );
    assert_eq!(stats.late_deltas_dropped, 0);
    // Steady state: at most one batch (of up to two marks per delta) was ever outstanding.
    assert!(stats.marks_sent <= (stats.marks_played + 1) * DELTAS_PER_ECHO * 2);
}

/// Checks what one frame of each direction produces, so the benchmarks measure real work.
fn check_outputs(media: &[u8], delta_100ms: &[u8]) {
    let mut bridge = Bridge::ready();
    let out = bridge.uplink_core(&mut media.to_vec());
    assert!(bridge
        .scratch
        .starts_with(br#"{"type":"input_audio_buffer.append""#));
    assert_eq!(out, bridge.scratch.len());
    bridge.downlink_core(&mut delta_100ms.to_vec());
    assert!(last_mark_name(&bridge.scratch).is_some());
    assert_eq!(bridge.call.stats().audio_frames_down, 1);
    assert_eq!(bridge.call.stats().marks_sent, 1);
    assert_eq!(bridge.call.stats().protocol_errors, 0);
}

fn uplink(c: &mut Criterion) {
    let media = media_json();
    assert_eq!(media.len(), 373);
    let mut masked = Vec::new();
    Encoder::new(Role::Client).text(&mut masked, &media);

    let mut group = c.benchmark_group("uplink_media_20ms");
    group.throughput(Throughput::Bytes(media.len() as u64));
    let mut bridge = Bridge::ready();
    let mut buf = media.clone();
    group.bench_function("core", |b| {
        b.iter(|| {
            buf.copy_from_slice(&media);
            black_box(bridge.uplink_core(black_box(&mut buf)))
        })
    });
    let mut buf = masked.clone();
    group.bench_function("wire", |b| {
        b.iter(|| {
            buf.copy_from_slice(&masked);
            black_box(bridge.uplink_wire(black_box(&mut buf)))
        })
    });
    group.bench_function("copy_only", |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&masked));
            black_box(buf[0])
        })
    });
    assert_eq!(bridge.call.stats().protocol_errors, 0);
    group.finish();
}

fn downlink(c: &mut Criterion) {
    for ms in [20, 100, 200] {
        let delta = delta_json(ms);
        let mut plain = Vec::new();
        Encoder::new(Role::Server).text(&mut plain, &delta);
        let mut group = c.benchmark_group(format!("downlink_delta_{ms}ms"));
        group.throughput(Throughput::Bytes(delta.len() as u64));
        bench_downlink(&mut group, "core", &delta, false);
        bench_downlink(&mut group, "wire", &plain, true);
        let mut buf = plain.clone();
        group.bench_function("copy_only", |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&plain));
                black_box(buf[0])
            })
        });
        group.finish();
    }
}

/// The parse of a delta alone: the flat fast path (`parse`) against the simd-json tape
/// (`parse_full`).
fn delta_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("openai_delta_parse");
    let mut parser = ServerEventParser::new();
    for ms in [20, 100, 200] {
        let delta = delta_json(ms);
        let mut buf = delta.clone();
        group.throughput(Throughput::Bytes(delta.len() as u64));
        group.bench_function(format!("fast_{ms}ms"), |b| {
            b.iter(|| {
                buf.copy_from_slice(&delta);
                let ev = parser.parse(black_box(&mut buf));
                black_box(matches!(ev, Ok(ServerEvent::OutputAudioDelta { .. })))
            })
        });
        group.bench_function(format!("full_{ms}ms"), |b| {
            b.iter(|| {
                buf.copy_from_slice(&delta);
                let ev = parser.parse_full(black_box(&mut buf));
                black_box(matches!(ev, Ok(ServerEvent::OutputAudioDelta { .. })))
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    check_outputs(&media_json(), &delta_json(100));
    uplink(c);
    downlink(c);
    delta_parse(c);
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
