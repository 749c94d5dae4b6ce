//! The metric work the driver does per forwarded audio frame, with the real recorder installed.
//!
//! ```text
//!  read (one Instant) ─▶ CallMeter::on_read ─▶ on_queued ─▶ tick ─▶ on_written (one Instant)
//!                                                                  └─▶ latency histogram record
//! ```
//!
//! One iteration is one frame of one direction: a socket read that produced one audio frame,
//! the pump that queued it, the loop's tick, and the socket write that put it on the wire (one
//! histogram sample). The per-call counters are plain integers flushed to the shared atomics
//! once a second ([`callbridge::metrics::FLUSH_INTERVAL`]), which the iterations include as it
//! happens: the benchmark's clock advances 20 ms per frame, as a call's does.
//!
//! Histogram samples are buffered until upkeep drains them; the bench drains between timed
//! batches (outside the timing) so memory stays flat, as the upkeep thread does in the server.
//!
//! Run: `cargo bench --bench metrics` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use callbridge::metrics::{self, CallMeter};
use callbridge_core::bridge::{CallStats, Leg};
use criterion::{criterion_group, criterion_main, Criterion};

/// Frames timed between two upkeep drains.
const BATCH: u64 = 10_000;

/// Bytes of one Twilio `media` frame on the wire, and of the append it becomes.
const FRAME_IN: usize = 400;
const FRAME_OUT: usize = 420;

fn one_direction(c: &mut Criterion, name: &str, from: Leg, to: Leg) {
    let installed = metrics::install().expect("recorder installs");
    let base = Instant::now();
    let mut meter = CallMeter::new(base);
    let mut stats = CallStats::default();
    let mut frame: u64 = 0;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH);
                left -= n;
                let start = Instant::now();
                for _ in 0..n {
                    frame += 1;
                    // The driver's own timestamps: the read's and the write's.
                    let read_at = base + Duration::from_millis(20 * frame);
                    let written_at = read_at + Duration::from_micros(30);
                    meter.on_read(from, FRAME_IN, read_at);
                    match from {
                        Leg::Twilio => stats.audio_frames_up += 1,
                        Leg::OpenAi => stats.audio_frames_down += 1,
                    }
                    let (tw, oa) = match to {
                        Leg::Twilio => (FRAME_OUT, 0),
                        Leg::OpenAi => (0, FRAME_OUT),
                    };
                    meter.on_queued(black_box(&stats), tw, oa);
                    meter.tick(read_at, black_box(3));
                    meter.on_written(to, FRAME_OUT, written_at);
                }
                total += start.elapsed();
                installed.run_upkeep();
            }
            total
        })
    });
}

fn benches(c: &mut Criterion) {
    one_direction(c, "metrics_per_frame/uplink", Leg::Twilio, Leg::OpenAi);
    one_direction(c, "metrics_per_frame/downlink", Leg::OpenAi, Leg::Twilio);
}

criterion_group!(metrics_bench, benches);
criterion_main!(metrics_bench);
