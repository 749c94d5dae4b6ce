//! The store engines side by side, on what a long-lived instance needs (issue 13):
//!
//! - **disk use**: a soak-like workload written through the writer (calls of ten turns, each a
//!   caller and an assistant transcript, a barge-in and usage), then DATA_DIR's bytes over the
//!   logical bytes (what a full export holds);
//! - **start to listening**: `callbridge serve` (the release binary) on a store of
//!   `--calls` calls (default 1 million) of 5 items each, from spawn to its `listening on` line,
//!   after a clean shutdown (SIGTERM) and after kill -9 (redb then loads the allocator state its
//!   last durable commit saved; fjall replays its journal; sled reads its log), and on an empty
//!   store for reference.
//!
//! The 1-million-call fixture is built once per engine straight through the engine interface
//! into `$TMPDIR/callbridge-fixture-<calls>-<engine>` (not committed; several GB; delete it by
//! hand) and reused while its `.complete` marker is there. The servers run with `RETENTION=0` so
//! they never delete the fixture's calls.
//!
//! Run: `cargo bench -p callbridge --bench store_open` (with `--features engine-fjall` for fjall;
//! `-- --calls 100000` for a smaller fixture). It builds the `callbridge` binary it starts
//! (tests/common/bin.rs) with the same profile and features.

#[path = "../tests/common/bin.rs"]
mod bin;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbridge::store::engine::{self, Batch, EngineKind, EngineOptions, Table};
use callbridge::store::{
    item_key, time_key, CallRecord, CallStatus, ConversationItem, ItemKind, Op, RecordChange,
    Store, StoreOptions,
};

/// How long a server may take to print its address before the run counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes per engine batch while building a fixture.
const FIXTURE_BATCH: usize = 20_000;

/// Calls of the fixture left `in-progress` (recovery has something to do after every start).
const FIXTURE_OPEN_CALLS: u64 = 100;

/// Timed starts per case (the median is reported).
const STARTS: usize = 5;

/// Calls of the disk-use workload (~30 MB of logical data).
const DISK_CALLS: u64 = 3_000;

fn main() {
    let mut calls: u64 = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--calls" {
            calls = args.next().and_then(|n| n.parse().ok()).expect("--calls N");
        }
    }
    let bin = bin::callbridge_bin().to_path_buf();
    let mut engines = vec![EngineKind::Redb, EngineKind::Sled];
    if cfg!(feature = "engine-fjall") {
        engines.push(EngineKind::Fjall);
    }
    println!("engine | disk / logical (soak-like, {DISK_CALLS} calls) | fixture ({calls} calls × 5 items): logical / on disk | start → listening: empty store | after SIGTERM (median of {STARTS}) | after kill -9 (median of {STARTS})");
    for e in engines {
        let (disk, logical) = disk_use(e);
        let fixture = fixture(e, calls);
        let (f_disk, _) = dir_bytes(&fixture);
        let f_logical = {
            let s = Store::open(&fixture, opts(e)).expect("open the fixture");
            let b = s.logical_bytes();
            s.close();
            b
        };
        let empty_dir = temp(&format!("empty-{}", e.name()));
        let empty = median(
            &mut (0..STARTS)
                .map(|_| start(&bin, &empty_dir, e, false))
                .collect::<Vec<_>>(),
        );
        let clean = median(
            &mut (0..STARTS)
                .map(|_| start(&bin, &fixture, e, false))
                .collect::<Vec<_>>(),
        );
        let killed = median(
            &mut (0..STARTS)
                .map(|_| start(&bin, &fixture, e, true))
                .collect::<Vec<_>>(),
        );
        let _ = std::fs::remove_dir_all(&empty_dir);
        println!(
            "{} | {:.2}× ({:.1} MiB for {:.1} MiB) | {:.0} MiB / {:.0} MiB ({:.2}×) | {:.0} ms | {:.0} ms | {:.0} ms",
            e.name(),
            disk as f64 / logical as f64,
            mib(disk),
            mib(logical),
            mib(f_logical),
            mib(f_disk),
            f_disk as f64 / f_logical.max(1) as f64,
            ms(empty),
            ms(clean),
            ms(killed),
        );
    }
}

fn opts(engine: EngineKind) -> StoreOptions {
    StoreOptions {
        engine,
        ..StoreOptions::default()
    }
}

fn temp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "callbridge-bench-open-{tag}-{}",
        std::process::id()
    ))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Bytes allocated under `dir` (what `du` says), and apparent bytes.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let (mut alloc, mut apparent) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                alloc += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    (alloc, apparent)
}

/// A transcript of `len` bytes or a little less, Japanese.
fn text(len: usize) -> String {
    let mut t = String::new();
    for c in "注文番号は12345です。お届けはいつになりますか。"
        .chars()
        .cycle()
    {
        if t.len() + c.len_utf8() > len {
            return t;
        }
        t.push(c);
    }
    t
}

/// The soak's traffic through the writer: (DATA_DIR bytes, logical bytes) at the end.
fn disk_use(engine: EngineKind) -> (u64, u64) {
    let dir = temp(&format!("disk-{}", engine.name()));
    let store = Store::open(&dir, opts(engine)).expect("open");
    let caller = text(60);
    let assistant = text(150);
    let now = callbridge::store::unix_ms();
    for c in 0..DISK_CALLS {
        let sid: Arc<str> = Arc::from(format!("CA{c:032x}").as_str());
        let at = now + c;
        let rec = |change| Op::Record {
            call_sid: Arc::clone(&sid),
            at_ms: at,
            change,
        };
        let app = |kind| Op::Append {
            call_sid: Arc::clone(&sid),
            at_ms: at,
            kind,
        };
        let mut ops = vec![
            rec(RecordChange::Webhook {
                from: "+819012345678".into(),
                to: "+81501234567".into(),
                agent_id: Some("default".into()),
                fallback: None,
            }),
            rec(RecordChange::StreamStarted {
                stream_sid: format!("MZ{c:032x}"),
                from: String::new(),
                to: String::new(),
                agent_id: "default".into(),
            }),
        ];
        for t in 0..10 {
            ops.push(app(ItemKind::CallerTranscript {
                item_id: format!("item_u{t}"),
                text: caller.clone(),
            }));
            ops.push(app(ItemKind::AssistantTranscript {
                item_id: format!("item_a{t}"),
                text: assistant.clone(),
                interrupted: false,
                heard_ms: None,
            }));
            ops.push(app(ItemKind::Interruption {
                item_id: format!("item_a{t}"),
                heard_ms: 1500,
                sent_ms: 3000,
            }));
            ops.push(rec(RecordChange::Interrupted {
                item_id: format!("item_a{t}"),
                heard_ms: 1500,
            }));
            ops.push(rec(RecordChange::Usage {
                input: 100,
                output: 200,
                total: 300,
            }));
        }
        ops.push(rec(RecordChange::Ended {
            status: CallStatus::Completed,
            reason: "twilio sent stop".into(),
            items_lost: 0,
        }));
        for op in ops {
            assert!(store.enqueue(op));
        }
        if c % 100 == 99 {
            // The soak's pace: the writer flushes every interval, not once at the end.
            store.flush(Duration::from_secs(60)).expect("flush");
        }
    }
    store.flush(Duration::from_secs(60)).expect("flush");
    let logical = store.logical_bytes();
    store.close();
    drop(store);
    let (alloc, apparent) = dir_bytes(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    (alloc.max(apparent), logical)
}

/// The fixture of `calls` calls × 5 items for `engine`, built once.
fn fixture(engine: EngineKind, calls: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("callbridge-fixture-{calls}-{}", engine.name()));
    let marker = dir.join(".complete");
    if marker.is_file() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("building {} (once)…", dir.display());
    let t0 = Instant::now();
    let e = engine::open(
        &dir,
        EngineOptions {
            kind: engine,
            cache_bytes: 16 << 20,
        },
    )
    .expect("open the engine");
    let caller = text(60);
    let assistant = text(150);
    let start_ms = callbridge::store::unix_ms() - calls * 1000;
    let mut b = Batch::default();
    for c in 0..calls {
        let sid = format!("CA{c:032x}");
        let at = start_ms + c * 1000;
        let open = c >= calls - FIXTURE_OPEN_CALLS;
        let mut r = CallRecord::new(&sid, CallStatus::InProgress, at);
        r.stream_sid = Some(format!("MZ{c:032x}"));
        r.from = "+819012345678".into();
        r.to = "+81501234567".into();
        r.agent_id = Some("default".into());
        r.answered_at_ms = Some(at + 300);
        r.realtime_session_id = Some(format!("sess_{c:020x}"));
        r.items = 5;
        if !open {
            r.status = CallStatus::Completed;
            r.ended_at_ms = Some(at + 60_000);
            r.end_reason = Some("twilio sent stop".into());
        }
        for seq in 0..5u32 {
            let kind = if seq % 2 == 0 {
                ItemKind::CallerTranscript {
                    item_id: format!("item_u{seq}"),
                    text: caller.clone(),
                }
            } else {
                ItemKind::AssistantTranscript {
                    item_id: format!("item_a{seq}"),
                    text: assistant.clone(),
                    interrupted: false,
                    heard_ms: None,
                }
            };
            let item = ConversationItem {
                seq,
                at_ms: at + u64::from(seq) * 5_000,
                kind,
            };
            b.put(
                Table::Items,
                item_key(&sid, seq),
                serde_json::to_vec(&item).expect("item"),
            );
        }
        b.put(Table::ByTime, time_key(at, &sid), Vec::new());
        if open {
            b.put(Table::Open, sid.as_bytes().to_vec(), Vec::new());
        }
        b.put(
            Table::Calls,
            sid.into_bytes(),
            serde_json::to_vec(&r).expect("record"),
        );
        if b.writes.len() >= FIXTURE_BATCH {
            e.apply(&b, false).expect("write");
            b = Batch::default();
        }
    }
    e.apply(&b, true).expect("write");
    drop(e);
    // The first open counts the logical bytes (a store without the count) and stores them.
    let s = Store::open(&dir, opts(engine)).expect("open the fixture");
    eprintln!(
        "built {} in {:.0} s: {:.0} MiB logical",
        dir.display(),
        t0.elapsed().as_secs_f64(),
        mib(s.logical_bytes())
    );
    s.close();
    drop(s);
    std::fs::write(&marker, b"").expect("marker");
    dir
}

fn spawn(bin: &Path, dir: &Path, engine: EngineKind) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(bin)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LISTEN", "127.0.0.1:0")
        .env("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime")
        .env("TWILIO_AUTH_TOKEN", "bench-token")
        .env("PUBLIC_HOST", "127.0.0.1")
        .env("LOG_LEVEL", "warn")
        .env("NO_COLOR", "1")
        .env("DATA_DIR", dir)
        .env("STORE_ENGINE", engine.name())
        .env("RETENTION", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn callbridge serve");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_listening(rx: &std::sync::mpsc::Receiver<String>) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("listening on ") => return,
            Ok(_) => {}
            Err(_) => panic!("the server did not listen within {START_TIMEOUT:?}"),
        }
    }
}

/// One timed start on `dir`; when `after_kill`, the server before it is killed with SIGKILL
/// (kill -9) once it listens, else stopped with SIGTERM.
fn start(bin: &Path, dir: &Path, engine: EngineKind, after_kill: bool) -> Duration {
    let (mut prev, rx) = spawn(bin, dir, engine);
    wait_listening(&rx);
    if after_kill {
        prev.kill().expect("kill -9");
    } else {
        let _ = Command::new("kill")
            .args(["-TERM", &prev.id().to_string()])
            .status();
    }
    let _ = prev.wait();
    let t0 = Instant::now();
    let (mut next, rx) = spawn(bin, dir, engine);
    wait_listening(&rx);
    let took = t0.elapsed();
    let _ = Command::new("kill")
        .args(["-TERM", &next.id().to_string()])
        .status();
    let _ = next.wait();
    took
}
