//! Twilio Media Streams hot path: parsing a 20 ms `media` frame (fast path and simd-json path),
//! checking base64 payloads, and encoding `media` + `mark` into a reused buffer.
//!
//! That these allocate nothing in the steady state is checked by `tests/no_alloc_per_frame.rs`
//! (the one counting allocator of the crate).
//!
//! Run: `cargo bench --bench twilio_parse` (add `-- --quick` for a short run).

use std::hint::black_box;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use callbridge_core::twilio::events::{encode_mark, encode_media, TwilioParser};
use callbridge_core::wire::b64;
use callbridge_core::wire::flat_json::{self, FlatObject};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

/// 20 ms of μ-law (160 bytes) as base64: 216 characters.
fn payload_20ms() -> String {
    let audio: Vec<u8> = (0..160u32).map(|i| (i * 37 % 256) as u8).collect();
    STANDARD.encode(audio)
}

/// The 373-byte media message of deps.md section 3.
fn media_frame(payload: &str) -> Vec<u8> {
    format!(
        r#"{{"event":"media","sequenceNumber":"5","media":{{"track":"inbound","chunk":"4","timestamp":"80","payload":"{payload}"}},"streamSid":"{STREAM_SID}"}}"#
    )
    .into_bytes()
}

fn benches(c: &mut Criterion) {
    let payload = payload_20ms();
    assert_eq!(payload.len(), 216);
    let frame = media_frame(&payload);
    assert_eq!(frame.len(), 373);

    let mut group = c.benchmark_group("twilio_media_parse");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    let mut parser = TwilioParser::new();
    let mut buf = frame.clone();
    group.bench_function("parse_fast_path", |b| {
        b.iter(|| {
            buf.copy_from_slice(&frame);
            let ev = parser.parse(black_box(&mut buf));
            black_box(ev.is_ok())
        })
    });
    group.bench_function("parse_simd_json_path", |b| {
        b.iter(|| {
            buf.copy_from_slice(&frame);
            let ev = parser.parse_full(black_box(&mut buf));
            black_box(ev.is_ok())
        })
    });
    group.bench_function("flat_json_scan_only", |b| {
        b.iter(|| {
            let mut obj = FlatObject::new();
            black_box(flat_json::scan(black_box(&frame), &mut obj))
        })
    });
    group.bench_function("copy_only_baseline", |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&frame));
            black_box(buf[0])
        })
    });
    group.finish();

    let mut group = c.benchmark_group("b64_is_valid");
    let long = STANDARD.encode(vec![0x5au8; 4800]);
    assert_eq!(long.len(), 6400);
    for text in [&payload, &long] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("{}_chars", text.len()), |b| {
            b.iter(|| b64::is_valid(black_box(text.as_bytes())))
        });
    }
    group.finish();

    let mut out = Vec::with_capacity(1024);
    c.bench_function("encode_media_and_mark", |b| {
        b.iter(|| {
            out.clear();
            encode_media(&mut out, black_box(STREAM_SID), black_box(&payload));
            encode_mark(
                &mut out,
                black_box(STREAM_SID),
                black_box("e=3;i=item_CBx1;ms=1240"),
            );
            black_box(out.len())
        })
    });
}

criterion_group!(twilio_parse, benches);
criterion_main!(twilio_parse);
