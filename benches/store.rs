//! The store under load, on a temporary directory.
//!
//! - `store/enqueue_append`: what a call's hot path pays for one conversation item: building the
//!   op and `Store::enqueue` (a `try_send` on the bounded queue). The writer runs meanwhile; the
//!   queue is drained between timed chunks so no op is dropped (asserted).
//! - `store/recorder_on_event`: the same through the driver's one call,
//!   `CallRecorder::on_event` (clones the transcript out of the event).
//! - `store/sustained_appends/ENGINE_cache_NMiB`: items per second through the writer to each
//!   engine in this build (redb with its default cache, 1 and 16 MiB; sled; fjall with
//!   `--features engine-fjall`), including the final flush:
//!   chunks are enqueued as fast as the queue takes them, then `Store::flush` waits until
//!   everything is written and durable.
//! - `store/sled_baseline_inserts`: the same items straight into a sled tree, no writer.
//!
//! Run: `cargo bench --bench store -- --measurement-time 3` (add `--features engine-fjall` for
//! the third engine). Open times and disk use per engine: `benches/store_open.rs`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbridge::store::engine::EngineKind;
use callbridge::store::sink::CallRecorder;
use callbridge::store::{
    item_key, ItemKind, Op, Store, StoreOptions, DEFAULT_CACHE_MB, QUEUE_CAPACITY,
};
use callbridge_core::bridge::{Call, CallConfig, CallEvent};
use callbridge_core::openai::session::AgentSettings;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Ops timed between two drains of the queue (well under its capacity).
const CHUNK: u64 = 10_000;

/// A transcript of about 200 bytes, the value size deps.md measured sled with.
fn text() -> String {
    let mut t = String::new();
    for c in "注文番号は12345です。お届けはいつになりますか。"
        .chars()
        .cycle()
    {
        if t.len() + c.len_utf8() > 200 {
            return t;
        }
        t.push(c);
    }
    t
}

fn temp_store(tag: &str, engine: EngineKind, cache_mb: u64) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "callbridge-bench-{tag}-{}-{}",
        std::process::id(),
        callbridge::store::unix_ms()
    ));
    let opts = StoreOptions {
        engine,
        cache_bytes: cache_mb << 20,
        ..StoreOptions::default()
    };
    let store = Store::open(&dir, opts).expect("open store");
    (store, dir)
}

/// The engines of this build with the page cache (MiB) each is measured with: redb with the
/// default and smaller and larger caches (what the cache buys), sled and fjall with 16 MiB
/// (sled's old default here).
fn engines() -> Vec<(EngineKind, u64)> {
    let mut e = vec![
        (EngineKind::Redb, DEFAULT_CACHE_MB),
        (EngineKind::Redb, 1),
        (EngineKind::Redb, 16),
        (EngineKind::Sled, 16),
    ];
    if cfg!(feature = "engine-fjall") {
        e.push((EngineKind::Fjall, 16));
    }
    e
}

fn drain(store: &Store) {
    while store.queue_len() > 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Times `iters` calls of `op` in chunks of [`CHUNK`], draining the queue (untimed) before each.
fn timed_in_chunks(store: &Store, iters: u64, mut op: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        drain(store);
        let start = Instant::now();
        for _ in 0..n {
            op();
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

fn bench_store(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    let text = text();
    let text = text.as_str();

    // Hot path: build one op and enqueue it.
    let (store, dir) = temp_store("enqueue", EngineKind::default(), DEFAULT_CACHE_MB);
    let sid: Arc<str> = Arc::from("CA5c1d1e5f64d4a38d7cd0d1c8d9e1b2a3");
    g.throughput(Throughput::Elements(1));
    g.bench_function("enqueue_append", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(&store, iters, || {
                let ok = store.enqueue(Op::Append {
                    call_sid: Arc::clone(&sid),
                    at_ms: 1,
                    kind: ItemKind::Dtmf {
                        digit: black_box("5").to_owned(),
                    },
                });
                assert!(ok, "no op may be dropped in the benchmark");
            })
        })
    });

    // The driver's call: CallRecorder::on_event for a caller transcript.
    let mut recorder = CallRecorder::new(Some(&store), &sid);
    let mut call = Call::new(
        CallConfig::new("gpt-realtime", Arc::new(AgentSettings::default()), &sid),
        Instant::now(),
    );
    let ev = CallEvent::CallerTranscript {
        item_id: "item_CBx2defGhIjKlMn".into(),
        text: text.to_owned(),
    };
    g.bench_function("recorder_on_event", |b| {
        b.iter_custom(|iters| {
            let total = timed_in_chunks(&store, iters, || {
                recorder.on_event(&mut call, black_box(&ev))
            });
            assert_eq!(recorder.lost(), 0, "no op may be dropped in the benchmark");
            total
        })
    });
    store.close();
    let _ = std::fs::remove_dir_all(&dir);

    // Sustained: 20,000 items of ~200 bytes over 100 calls, written and flushed, per engine.
    let sids: Vec<Arc<str>> = (0..100)
        .map(|i| Arc::from(format!("CA{i:032}").as_str()))
        .collect();
    const ITEMS: u64 = 20_000;
    g.throughput(Throughput::Elements(ITEMS));
    g.sample_size(10);
    for (engine, cache_mb) in engines() {
        let (store, dir) = temp_store("sustained", engine, cache_mb);
        let name = format!("sustained_appends/{}_cache_{cache_mb}MiB", engine.name());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for i in 0..ITEMS {
                        // Keep the queue under half full so nothing is dropped.
                        while store.queue_len() > QUEUE_CAPACITY / 2 {
                            std::thread::yield_now();
                        }
                        let ok = store.enqueue(Op::Append {
                            call_sid: Arc::clone(&sids[(i % 100) as usize]),
                            at_ms: i,
                            kind: ItemKind::CallerTranscript {
                                item_id: "item_CBx2defGhIjKlMn".into(),
                                text: text.to_owned(),
                            },
                        });
                        assert!(ok);
                    }
                    store.flush(Duration::from_secs(60)).expect("flush");
                }
                start.elapsed()
            })
        });
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Baseline: the same number of ~200-byte values inserted straight into a sled tree and
    // flushed, on this machine now (what the writer's own work adds is the difference).
    let dir = std::env::temp_dir().join(format!("callbridge-bench-sled-{}", std::process::id()));
    let db = sled::Config::new()
        .path(&dir)
        .flush_every_ms(None)
        .open()
        .expect("sled");
    let tree = db.open_tree("items").expect("tree");
    let value = serde_json::to_vec(&serde_json::json!({"seq": 1, "atMs": 1, "type": "caller_transcript", "itemId": "item_CBx2defGhIjKlMn", "text": text})).unwrap();
    let mut seq = 0u32;
    g.bench_function("sled_baseline_inserts", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for i in 0..ITEMS {
                    let key = item_key(&sids[(i % 100) as usize], seq);
                    seq += 1;
                    tree.insert(key, value.as_slice()).expect("insert");
                }
                db.flush().expect("flush");
            }
            start.elapsed()
        })
    });
    g.finish();
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
