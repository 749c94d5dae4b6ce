//! The embedded store: agents, number routes, call records and conversation items, on one
//! storage engine (redb; [`engine`] keeps it behind one interface).
//!
//! ```text
//!  call path (worker threads) ──Store::enqueue──▶ bounded queue ──▶ writer thread ──▶ engine
//!                                                                  (+ retention, size cap)
//!  admin API / CLI ──────────── direct reads and (rare) writes ────────────────────▶ engine
//!  call start ──Store::agent_by_id / agent_for_number──▶ in-memory cache (never the disk)
//! ```
//!
//! # Tables (design.md "Storage")
//! - `agents`: agent id → [`Agent`] JSON.
//! - `numbers`: E.164 number (or `default`) → agent id.
//! - `calls`: callSid → [`CallRecord`] JSON.
//! - `items`: callSid ‖ `0x00` ‖ seq (big-endian u32) → [`ConversationItem`] JSON. The `0x00`
//!   separator (never part of a sid) keeps one sid's items apart from those of a longer sid that
//!   starts with it; big-endian keeps them in order.
//! - `calls_by_time`: startedAtMs (big-endian u64) ‖ callSid → empty: lists calls newest first
//!   with cursor pagination, and gives retention the oldest calls first.
//! - `calls_open`: callSid → empty, for every record `in-progress`: all that recovery reads at
//!   start, so start-up does not grow with the store.
//! - `meta`: `logical_bytes` → big-endian u64, see "Size" below.
//!
//! A record, its index entries and its items change in one atomic batch.
//!
//! # Full queue (design.md "Threads and queues")
//! The queue holds [`QUEUE_CAPACITY`] ops (checked at enqueue; its memory is allocated as it
//! fills, not up front). When it is full (the disk cannot keep up for seconds),
//! [`Store::enqueue`] drops the op and counts it in `callbridge_store_queue_full_total`; the
//! call's [`sink::CallRecorder`] counts its own drops and the record's `itemsLost` says how many
//! were lost. Every call in flight holds one slot of the queue for its final op
//! ([`Store::reserve_end`]): other ops are refused once the queue and those slots fill it, so
//! the `Ended` op, which carries `itemsLost`, always finds room. The call itself goes on: its
//! audio never passes through the store.
//!
//! # Size
//! - **Logical bytes**: what a full export (`/api/admin/calls.jsonl`) holds, kept exactly by
//!   the writer as it writes ([`call_line_bytes`]) and stored with the data
//!   (`callbridge_store_logical_bytes`).
//! - **Retention** (`RETENTION`, default 30 days): whole calls that started longer ago are
//!   deleted by the writer in bounded chunks ([`writer::MAX_DELETE_KEYS`] keys), between
//!   batches; **`STORE_MAX_BYTES`** deletes the oldest calls early when the logical bytes pass
//!   it. Both are counted in `callbridge_store_calls_deleted_total`. The engine reuses the freed
//!   pages: the file stops growing, it does not shrink.
//! - **A full disk** never reaches the call path: the writer keeps what it could not write and
//!   tries again every [`writer::RETRY_EVERY`], counting the failures
//!   (`callbridge_store_write_errors_total`); past [`writer::MAX_PENDING_ITEMS`] items waiting
//!   it drops further items and adds them to the call's `itemsLost`.
//!
//! # Layout
//! - [`engine`]: the engine interface and its implementations (redb, sled, fjall).
//! - [`model`]: the documents and their validation.
//! - [`writer`]: the writer thread (batches, flush interval, crash-loss bound, retention).
//! - [`sink`]: `CallEvent` → store ops, the one function the drivers call.
//! - [`migrate`]: copies a sled store (the engine before issue 13) into the current one.

pub mod engine;
pub mod migrate;
pub mod model;
pub mod sink;
pub mod writer;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

use callbridge_core::openai::session::AgentSettings;
use engine::{Batch, Engine, EngineError, EngineKind, EngineOptions, Scan, Table};
pub use model::{
    Agent, CallRecord, CallStatus, ConversationItem, ItemKind, ModelError, DEFAULT_ROUTE,
};
pub use writer::{Op, RecordChange};

/// Default flush interval, ms: what a crash (kill -9, power loss) may lose at most (plus one
/// batch).
pub const DEFAULT_FLUSH_MS: u64 = 100;

/// Default `STORE_CACHE_MB`: the engine's page cache. redb's own default is 1 GiB, which an
/// edge proxy never needs: the store is written far more than it is read (agents are cached by
/// the server anyway). The cache fills with the pages written (a copy-on-write B-tree writes new
/// ones all the time) up to this size and then stays there, so it is memory the instance takes
/// for good, and how long it takes to fill is how long RSS climbs after a start: 16 MiB took
/// 8 minutes at 200 calls. 2 MiB holds the leaves 200 calls write to; the sustained append rate
/// is within a few percent of 16 MiB's (README "Storage", `cargo bench --bench store`).
pub const DEFAULT_CACHE_MB: u64 = 2;

/// Largest accepted `STORE_CACHE_MB`.
pub const MAX_CACHE_MB: u64 = 64 * 1024;

/// Checks a `STORE_CACHE_MB` value and gives the cache size in bytes.
pub fn cache_bytes(mb: u64) -> Result<u64, String> {
    if (1..=MAX_CACHE_MB).contains(&mb) {
        Ok(mb * 1024 * 1024)
    } else {
        Err(format!("{mb} is not a number of MiB in 1..={MAX_CACHE_MB}"))
    }
}

/// Largest accepted `STORE_FLUSH_MS`: the issue caps the default at 200 ms; longer intervals
/// are allowed for bulk tests but bounded so a crash cannot lose minutes.
pub const MAX_FLUSH_MS: u64 = 10_000;

/// Ops the queue holds. A call produces a few ops per turn; 65,536 is minutes of traffic at
/// thousands of calls, so a full queue means the disk is stuck, not that traffic peaked.
pub const QUEUE_CAPACITY: usize = 65_536;

/// Calls returned per page at most.
pub const MAX_PAGE: usize = 1000;

/// Records a listing examines per page at most. A filter that matches rarely (a status or an
/// agent with few calls among millions) would otherwise read the whole index in one request,
/// seconds of disk and CPU; the page then ends early with a cursor to go on from. ~5 ms of work.
pub const MAX_SCAN: usize = 5_000;

/// Default `RETENTION`: a month of calls, the usual window for reviewing conversations.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest `RETENTION` accepted (ten years); `0` keeps everything.
pub const MAX_RETENTION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Smallest `STORE_MAX_BYTES` accepted: 1 MiB holds a few hundred calls; less is a typo.
pub const MIN_MAX_BYTES: u64 = 1024 * 1024;

/// Checks `STORE_FLUSH_MS`.
pub fn flush_interval(ms: u64) -> Result<Duration, String> {
    if (1..=MAX_FLUSH_MS).contains(&ms) {
        Ok(Duration::from_millis(ms))
    } else {
        Err(format!("{ms} is not a number of ms in 1..={MAX_FLUSH_MS}"))
    }
}

/// Parses `RETENTION`: `0` (keep everything: `None`) or a number with a unit `s`, `m`, `h` or
/// `d` (`30d`, `90m`), at most [`MAX_RETENTION`].
pub fn parse_retention(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration such as 30d, 12h, 90m or 0 (keep everything)")
    })?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        "" => {
            return Err(format!(
                "{s:?} has no unit: write 30d, 12h, 90m or 45s (or 0 to keep everything)"
            ))
        }
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    match secs.map(Duration::from_secs) {
        Some(d) if d.is_zero() => Err(format!(
            "{s:?} deletes calls at once: use 0 to keep everything, or a positive duration"
        )),
        Some(d) if d <= MAX_RETENTION => Ok(Some(d)),
        _ => Err(format!(
            "{s:?} is longer than the largest retention, 10 years (use 0 to keep everything)"
        )),
    }
}

/// Parses `STORE_MAX_BYTES`: `0` or `off` (no cap: `None`), or bytes with an optional `k`, `M`,
/// `G` (powers of 1024) suffix, at least [`MIN_MAX_BYTES`].
pub fn parse_max_bytes(s: &str) -> Result<Option<u64>, String> {
    let s = s.trim();
    if s == "0" || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'M')) => (&s[..i], 1 << 20),
        Some((i, 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 20G, 512M or 0 (no cap)"))?;
    match n.checked_mul(mul) {
        Some(b) if b >= MIN_MAX_BYTES => Ok(Some(b)),
        Some(_) => Err(format!(
            "{s:?} is below the smallest cap, 1M (use 0 for no cap)"
        )),
        None => Err(format!("{s:?} is too large")),
    }
}

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Bytes a call adds to a full export besides its record and items: the line is the record's
/// JSON with `,"realtimeConversation":[` … `]` spliced before its closing brace, then `\n`.
pub const LINE_OVERHEAD: u64 = 27;

/// The bytes of a call's export line: its record's JSON length, the JSON lengths of its items
/// summed, and how many items (one comma between two).
pub fn call_line_bytes(record_len: u64, items_bytes: u64, items: u64) -> u64 {
    record_len + LINE_OVERHEAD + items_bytes + items.saturating_sub(1)
}

/// The `meta` key of the logical byte count.
const META_LOGICAL: &[u8] = b"logical_bytes";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the store (one process per directory).
    #[error("the store at {0} is locked by another process (a running callbridge?): stop it, or use its admin API (--server URL with ADMIN_TOKEN)")]
    Locked(PathBuf),
    /// The directory holds a sled store (callbridge before issue 13), which this engine cannot
    /// read.
    #[error("{0} holds a store in the old sled format: copy it into the current engine with `callbridge store migrate --from-sled {0} --data-dir NEW_DIR` (NEW_DIR may be {0} itself), then start with DATA_DIR=NEW_DIR")]
    SledStore(PathBuf),
    /// The store cannot be opened.
    #[error("cannot open the store at {dir}: {why}")]
    Open {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        why: String,
    },
    /// A read or write failed.
    #[error("store {0}")]
    Engine(#[from] EngineError),
    /// A stored document does not parse.
    #[error("stored {what} {key:?} is unreadable: {why}")]
    Corrupt {
        /// Which table.
        what: &'static str,
        /// The key.
        key: String,
        /// The parse error.
        why: String,
    },
    /// The document is invalid.
    #[error(transparent)]
    Invalid(#[from] ModelError),
    /// No agent has this id.
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
    /// The agent is still routed to.
    #[error("agent {id:?} is still used by number(s) {numbers}: delete or re-route them first")]
    AgentInUse {
        /// The agent.
        id: String,
        /// The numbers routed to it.
        numbers: String,
    },
    /// No route for this number.
    #[error("unknown number {0:?}")]
    UnknownNumber(String),
    /// No record for this callSid.
    #[error("unknown call {0:?}")]
    UnknownCall(String),
    /// A pagination cursor that this store did not hand out.
    #[error("bad cursor {0:?}: pass the nextCursor of the previous page as it was")]
    BadCursor(String),
    /// The writer thread is gone.
    #[error("the store writer has stopped")]
    Closed,
}

/// The prefix of all of `sid`'s item keys: sid ‖ 0x00.
pub fn items_prefix(sid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(sid.len() + 5);
    k.extend_from_slice(sid.as_bytes());
    k.push(0);
    k
}

/// The key of item `seq` of `sid`: sid ‖ 0x00 ‖ seq (big-endian).
pub fn item_key(sid: &str, seq: u32) -> Vec<u8> {
    let mut k = items_prefix(sid);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The time-index key: startedAtMs (big-endian) ‖ sid.
pub fn time_key(at_ms: u64, sid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + sid.len());
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(sid.as_bytes());
    k
}

/// Filters of a call listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFilter {
    /// Calls started at or after this, unix ms.
    pub since_ms: Option<u64>,
    /// Calls started before this, unix ms.
    pub until_ms: Option<u64>,
    /// Only this status.
    pub status: Option<CallStatus>,
    /// Only this agent.
    pub agent_id: Option<String>,
}

/// One page of calls, newest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallPage {
    /// The calls.
    pub calls: Vec<CallRecord>,
    /// Pass as `cursor` for the next page; `None`: this was the last one. A page can hold fewer
    /// than `limit` calls (even none) and still have a next one: a filtered listing examines
    /// at most [`MAX_SCAN`] records per page.
    pub next_cursor: Option<String>,
}

/// The cursor that continues a listing right after `record` (for a caller that uses only part of
/// a page, like the byte-bounded export): its key in the time index.
pub fn cursor_after(record: &CallRecord) -> String {
    encode_cursor(&time_key(record.started_at_ms, &record.call_sid))
}

/// A call with its whole conversation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallWithConversation {
    /// The record.
    #[serde(flatten)]
    pub record: CallRecord,
    /// The items in order (the backend's `realtimeConversation`).
    pub realtime_conversation: Vec<ConversationItem>,
}

/// Settings of [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Flush interval of the writer.
    pub flush_every: Duration,
    /// Bytes of the engine's page cache (`STORE_CACHE_MB`).
    pub cache_bytes: u64,
    /// The engine (`STORE_ENGINE`).
    pub engine: EngineKind,
    /// Calls that started longer ago are deleted (`RETENTION`; the server's default is
    /// [`DEFAULT_RETENTION`]); `None`, the default here, keeps everything.
    pub retention: Option<Duration>,
    /// The oldest calls are deleted while the logical bytes exceed this (`STORE_MAX_BYTES`).
    pub max_bytes: Option<u64>,
    /// The agent from the configuration (`AGENT_*`): the default when no route names one.
    pub config_agent: Arc<AgentSettings>,
    /// Ops the queue holds before [`Store::enqueue`] drops ([`QUEUE_CAPACITY`]; lowered by tests
    /// to make a stuck writer fill it).
    pub queue_capacity: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            flush_every: Duration::from_millis(DEFAULT_FLUSH_MS),
            cache_bytes: DEFAULT_CACHE_MB * 1024 * 1024,
            engine: EngineKind::default(),
            retention: None,
            max_bytes: None,
            config_agent: Arc::new(AgentSettings::default()),
            queue_capacity: QUEUE_CAPACITY,
        }
    }
}

/// A key and its value.
type Entry = (Vec<u8>, Vec<u8>);

/// The store: cheap to clone, shared by the server's threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn Engine>,
    tx: Sender<Op>,
    /// [`StoreOptions::queue_capacity`].
    capacity: usize,
    /// Queue slots held for the `Ended` op of each call in flight ([`Store::reserve_end`]).
    reserved: AtomicUsize,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    queue_full: metrics::Counter,
    /// The logical bytes durable in the store (the writer updates it after each write).
    logical: Arc<AtomicU64>,
    /// Agent id → settings, for call starts (never the disk on the call path).
    agents: RwLock<HashMap<String, Arc<AgentSettings>>>,
    /// Number → agent id.
    numbers: RwLock<HashMap<String, String>>,
    config_agent: Arc<AgentSettings>,
    /// Serialises admin writes that check one table against another (routes vs agents).
    admin: Mutex<()>,
}

impl Inner {
    /// Stops the writer (it writes and flushes what is queued first) and waits for it; once.
    fn stop_writer(&self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = self.tx.send(Op::Stop);
            let _ = h.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// A queue slot held for one call's final op: [`Store::end`] uses it, dropping it gives it back.
pub struct EndSlot {
    store: Store,
    used: bool,
}

impl Drop for EndSlot {
    fn drop(&mut self) {
        if !self.used {
            self.store.inner.reserved.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How long [`Store::recover`] waits for the writer: it rewrites only the calls left in
/// progress, a few thousand at most.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(120);

impl Store {
    /// Opens (or creates) the store in `dir` and starts its writer thread. Another process
    /// holding `dir` gives [`StoreError::Locked`]; a directory with only an old sled store in it
    /// gives [`StoreError::SledStore`].
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let engine = open_engine(dir, opts.engine, opts.cache_bytes)?;
        Store::start(dir, Arc::from(engine), opts)
    }

    /// Starts the store on an engine already open (tests put a failing engine in).
    pub(crate) fn start(
        dir: &Path,
        engine: Arc<dyn Engine>,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        let logical = match engine.get(Table::Meta, META_LOGICAL)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.try_into().expect("8 bytes")),
            _ => {
                // A store without the count (created before it existed): count it once.
                let n = count_logical_bytes(engine.as_ref())?;
                let mut b = Batch::default();
                b.put(Table::Meta, META_LOGICAL.to_vec(), n.to_be_bytes().to_vec());
                engine.apply(&b, true)?;
                n
            }
        };
        let logical = Arc::new(AtomicU64::new(logical));
        // Unbounded channel, bounded at enqueue: crossbeam's bounded (array) channel allocates
        // and stamps every slot up front, 65,536 × ~136-byte ops = 8.9 MB resident before the
        // first call (heaptrack: most of the idle RSS the store added). The list flavour
        // allocates 31-slot blocks as ops arrive and frees them as the writer takes them.
        let (tx, rx) = crossbeam_channel::unbounded();
        let store = Store {
            inner: Arc::new(Inner {
                engine: Arc::clone(&engine),
                tx,
                capacity: opts.queue_capacity,
                reserved: AtomicUsize::new(0),
                writer: Mutex::new(None),
                queue_full: metrics::counter!(crate::metrics::STORE_QUEUE_FULL),
                logical: Arc::clone(&logical),
                agents: RwLock::new(HashMap::new()),
                numbers: RwLock::new(HashMap::new()),
                config_agent: opts.config_agent,
                admin: Mutex::new(()),
            }),
        };
        store.reload_caches()?;
        let cfg = writer::WriterConfig {
            flush_every: opts.flush_every,
            retention: opts.retention,
            max_bytes: opts.max_bytes,
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run(engine, rx, cfg, logical))
            .map_err(|e| StoreError::Open {
                dir: dir.to_owned(),
                why: format!("starting the writer thread: {e}"),
            })?;
        *store.inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(store)
    }

    /// Hands an op to the writer without waiting: `false` when it was dropped (queue full,
    /// counted in `callbridge_store_queue_full_total`, or the writer stopped). The slots held
    /// for calls' final ops ([`Store::reserve_end`]) count as taken. This is all the call path
    /// ever does with the store.
    #[inline]
    pub fn enqueue(&self, op: Op) -> bool {
        // Concurrent callers may overshoot the capacity by at most one op each: harmless, the
        // bound is there to stop unbounded growth when the disk is stuck.
        let taken = self.inner.tx.len() + self.inner.reserved.load(Ordering::Acquire);
        if taken >= self.inner.capacity {
            self.inner.queue_full.increment(1);
            return false;
        }
        self.inner.tx.send(op).is_ok()
    }

    /// Holds one queue slot for a call's final op, until [`Store::end`] uses it or the slot is
    /// dropped.
    pub fn reserve_end(&self) -> EndSlot {
        self.inner.reserved.fetch_add(1, Ordering::AcqRel);
        EndSlot {
            store: self.clone(),
            used: false,
        }
    }

    /// Enqueues a call's final op in its held slot: never refused for a full queue (only when
    /// the writer has stopped).
    pub fn end(&self, mut slot: EndSlot, op: Op) -> bool {
        slot.used = true;
        // Sent before the slot is given back, so the queue never counts fewer than it holds.
        let sent = self.inner.tx.send(op).is_ok();
        self.inner.reserved.fetch_sub(1, Ordering::AcqRel);
        sent
    }

    /// Enqueues a change of `call_sid`'s record, stamped now (see [`Store::enqueue`]).
    pub fn record(&self, call_sid: Arc<str>, change: RecordChange) -> bool {
        self.enqueue(Op::Record {
            call_sid,
            at_ms: unix_ms(),
            change,
        })
    }

    /// Whether the store takes writes: its writer thread runs. `/readyz` answers 503
    /// (`store unavailable`) otherwise, so new calls go to an instance whose records will be
    /// kept. (A queue that is full for a moment is not unavailability: it would make the
    /// readiness flap under a burst.)
    pub fn is_available(&self) -> bool {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// Ops waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.inner.tx.len()
    }

    /// What a full export holds now, bytes (durable; the writer updates it after each write).
    pub fn logical_bytes(&self) -> u64 {
        self.inner.logical.load(Ordering::Acquire)
    }

    /// Which engine holds the store.
    pub fn engine_kind(&self) -> EngineKind {
        self.inner.engine.kind()
    }

    /// Waits until everything enqueued before is written and flushed (at most `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), StoreError> {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        self.inner
            .tx
            .send_timeout(Op::Flush(ack_tx), timeout)
            .map_err(|_| StoreError::Closed)?;
        ack_rx.recv_timeout(timeout).map_err(|_| StoreError::Closed)
    }

    /// Writes and flushes everything queued, then stops the writer. Later enqueues are dropped.
    pub fn close(&self) {
        self.inner.stop_writer();
    }

    /// At server start: records left `in-progress` by a previous process that died are marked
    /// `failed` (with their item count recounted). Reads only the `calls_open` index, so it takes
    /// the same time whatever the size of the store. Returns how many it marked.
    pub fn recover(&self) -> Result<usize, StoreError> {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        self.inner
            .tx
            .send(Op::Recover(ack_tx))
            .map_err(|_| StoreError::Closed)?;
        ack_rx
            .recv_timeout(RECOVER_TIMEOUT)
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::from)
    }

    fn reload_caches(&self) -> Result<(), StoreError> {
        let mut agents = HashMap::new();
        for a in self.list_agents()? {
            agents.insert(a.id.clone(), Arc::new(a.to_settings()));
        }
        let mut numbers = HashMap::new();
        for (n, a) in self.list_numbers()? {
            numbers.insert(n, a);
        }
        *self.inner.agents.write().unwrap_or_else(|e| e.into_inner()) = agents;
        *self
            .inner
            .numbers
            .write()
            .unwrap_or_else(|e| e.into_inner()) = numbers;
        Ok(())
    }

    /// Every (key, value) of `table`, in key order.
    fn all(&self, table: Table) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        self.inner.engine.scan(table, Scan::all(), &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Applies an admin write and makes it durable before returning.
    fn write_now(&self, batch: &Batch) -> Result<(), StoreError> {
        Ok(self.inner.engine.apply(batch, true)?)
    }

    // ---- agents -------------------------------------------------------------------------------

    /// Every agent, by id.
    pub fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        self.all(Table::Agents)?
            .iter()
            .map(|(k, v)| parse_doc("agent", k, v))
            .collect()
    }

    /// One agent.
    pub fn get_agent(&self, id: &str) -> Result<Agent, StoreError> {
        match self.inner.engine.get(Table::Agents, id.as_bytes())? {
            Some(v) => parse_doc("agent", id.as_bytes(), &v),
            None => Err(StoreError::UnknownAgent(id.to_owned())),
        }
    }

    /// Creates or replaces an agent (validated); `true` when it was new. Durable on return.
    pub fn put_agent(&self, agent: &Agent) -> Result<bool, StoreError> {
        agent.validate()?;
        let _g = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = serde_json::to_vec(agent).expect("an agent serializes");
        let existed = self
            .inner
            .engine
            .get(Table::Agents, agent.id.as_bytes())?
            .is_some();
        let mut b = Batch::default();
        b.put(Table::Agents, agent.id.as_bytes().to_vec(), bytes);
        self.write_now(&b)?;
        self.inner
            .agents
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(agent.id.clone(), Arc::new(agent.to_settings()));
        Ok(!existed)
    }

    /// Deletes an agent no number routes to.
    pub fn delete_agent(&self, id: &str) -> Result<(), StoreError> {
        let _g = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
        let users: Vec<String> = self
            .list_numbers()?
            .into_iter()
            .filter(|(_, a)| a == id)
            .map(|(n, _)| n)
            .collect();
        if !users.is_empty() {
            return Err(StoreError::AgentInUse {
                id: id.to_owned(),
                numbers: users.join(", "),
            });
        }
        if self
            .inner
            .engine
            .get(Table::Agents, id.as_bytes())?
            .is_none()
        {
            return Err(StoreError::UnknownAgent(id.to_owned()));
        }
        let mut b = Batch::default();
        b.delete(Table::Agents, id.as_bytes().to_vec());
        self.write_now(&b)?;
        self.inner
            .agents
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    // ---- numbers ------------------------------------------------------------------------------

    /// Every route: (number, agent id), `default` included.
    pub fn list_numbers(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .all(Table::Numbers)?
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    /// Routes `number` (E.164 or `default`) to an existing agent. Durable on return.
    pub fn put_number(&self, number: &str, agent_id: &str) -> Result<bool, StoreError> {
        model::validate_number(number)?;
        let _g = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
        let e = &self.inner.engine;
        let known = e.get(Table::Agents, agent_id.as_bytes())?.is_some()
            || agent_id == self.inner.config_agent.id;
        if !known {
            return Err(StoreError::UnknownAgent(agent_id.to_owned()));
        }
        let existed = e.get(Table::Numbers, number.as_bytes())?.is_some();
        let mut b = Batch::default();
        b.put(
            Table::Numbers,
            number.as_bytes().to_vec(),
            agent_id.as_bytes().to_vec(),
        );
        self.write_now(&b)?;
        self.inner
            .numbers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number.to_owned(), agent_id.to_owned());
        Ok(!existed)
    }

    /// Removes a route.
    pub fn delete_number(&self, number: &str) -> Result<(), StoreError> {
        let _g = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .inner
            .engine
            .get(Table::Numbers, number.as_bytes())?
            .is_none()
        {
            return Err(StoreError::UnknownNumber(number.to_owned()));
        }
        let mut b = Batch::default();
        b.delete(Table::Numbers, number.as_bytes().to_vec());
        self.write_now(&b)?;
        self.inner
            .numbers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(number);
        Ok(())
    }

    // ---- resolution (call path: memory only) ---------------------------------------------------

    /// The agent with this id, from the cache (the configuration's agent if its id matches).
    pub fn agent_by_id(&self, id: &str) -> Option<Arc<AgentSettings>> {
        let cached = self
            .inner
            .agents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        cached.or_else(|| {
            (id == self.inner.config_agent.id).then(|| Arc::clone(&self.inner.config_agent))
        })
    }

    /// The default agent: the one routed from `default`, else the configuration's.
    pub fn default_agent(&self) -> Arc<AgentSettings> {
        let id = self
            .inner
            .numbers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(DEFAULT_ROUTE)
            .cloned();
        id.and_then(|id| self.agent_by_id(&id))
            .unwrap_or_else(|| Arc::clone(&self.inner.config_agent))
    }

    /// The agent for a call to `to`: its route, else the default agent.
    pub fn agent_for_number(&self, to: &str) -> Arc<AgentSettings> {
        let id = self
            .inner
            .numbers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(to)
            .cloned();
        match id.and_then(|id| self.agent_by_id(&id)) {
            Some(a) => a,
            None => self.default_agent(),
        }
    }

    // ---- calls --------------------------------------------------------------------------------

    /// One call record.
    pub fn get_call(&self, sid: &str) -> Result<CallRecord, StoreError> {
        match self.inner.engine.get(Table::Calls, sid.as_bytes())? {
            Some(v) => parse_doc("call", sid.as_bytes(), &v),
            None => Err(StoreError::UnknownCall(sid.to_owned())),
        }
    }

    /// A call's conversation, in order.
    pub fn call_items(&self, sid: &str) -> Result<Vec<ConversationItem>, StoreError> {
        let prefix = items_prefix(sid);
        let upper = engine::prefix_end(&prefix);
        let mut out = Vec::new();
        let mut bad = None;
        self.inner
            .engine
            .scan(Table::Items, Scan::prefix(&prefix, &upper), &mut |k, v| {
                match parse_doc("item", k, v) {
                    Ok(item) => out.push(item),
                    Err(e) => bad = Some(e),
                }
                bad.is_none()
            })?;
        match bad {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A call with its conversation.
    pub fn call_with_conversation(&self, sid: &str) -> Result<CallWithConversation, StoreError> {
        Ok(CallWithConversation {
            record: self.get_call(sid)?,
            realtime_conversation: self.call_items(sid)?,
        })
    }

    /// A page of calls, newest first: at most `limit` (1..=[`MAX_PAGE`]) matching `filter`,
    /// after `cursor` (the previous page's `nextCursor`).
    pub fn list_calls(
        &self,
        filter: &CallFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<CallPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let lower = filter.since_ms.unwrap_or(0).to_be_bytes().to_vec();
        let mut upper = match filter.until_ms {
            Some(u) => u.to_be_bytes().to_vec(),
            None => vec![0xff; 9],
        };
        if let Some(c) = cursor {
            let key = decode_cursor(c).ok_or_else(|| StoreError::BadCursor(c.to_owned()))?;
            if key < upper {
                upper = key;
            }
        }
        let mut calls = Vec::new();
        let mut last_key = None;
        if lower < upper {
            // The index keys of this page, newest first: one more than the scan budget tells
            // whether the budget ran out with entries left.
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let scan = Scan {
                lo: Bound::Included(&lower),
                hi: Bound::Excluded(&upper),
                rev: true,
            };
            self.inner.engine.scan(Table::ByTime, scan, &mut |k, _| {
                keys.push(k.to_vec());
                keys.len() <= MAX_SCAN
            })?;
            let mut examined: Option<&Vec<u8>> = None;
            for (scanned, k) in keys.iter().enumerate() {
                if scanned == MAX_SCAN {
                    // Out of budget, and more entries exist (this one): the next page goes on
                    // below the last record examined.
                    last_key = examined.cloned();
                    break;
                }
                examined = Some(k);
                let sid = String::from_utf8_lossy(&k[8.min(k.len())..]).into_owned();
                let record = match self.get_call(&sid) {
                    Ok(r) => r,
                    Err(StoreError::UnknownCall(_)) => continue,
                    Err(e) => return Err(e),
                };
                let keep = filter.status.is_none_or(|s| s == record.status)
                    && filter
                        .agent_id
                        .as_deref()
                        .is_none_or(|a| record.agent_id.as_deref() == Some(a));
                if keep {
                    calls.push(record);
                    if calls.len() == limit {
                        last_key = Some(k.clone());
                        break;
                    }
                }
            }
        }
        Ok(CallPage {
            calls,
            next_cursor: last_key.map(|k| encode_cursor(&k)),
        })
    }
}

/// Opens the engine in `dir`, refusing a directory that only holds an old sled store (unless
/// the sled engine itself is asked for).
fn open_engine(
    dir: &Path,
    kind: EngineKind,
    cache_bytes: u64,
) -> Result<Box<dyn Engine>, StoreError> {
    if kind != EngineKind::Sled && engine::holds_sled_store(dir) && !engine::holds_store(kind, dir)
    {
        return Err(StoreError::SledStore(dir.to_owned()));
    }
    engine::open(dir, EngineOptions { kind, cache_bytes }).map_err(|e| open_error(dir, e))
}

/// An engine's open failure as the store reports it: [`StoreError::Locked`] or
/// [`StoreError::Open`].
fn open_error(dir: &Path, e: EngineError) -> StoreError {
    match e {
        EngineError::Locked => StoreError::Locked(dir.to_owned()),
        other => StoreError::Open {
            dir: dir.to_owned(),
            why: other.to_string(),
        },
    }
}

/// The logical bytes of everything stored, counted from the tables (once, for a store that has
/// no count yet: one pass over the calls and their items).
pub fn count_logical_bytes(engine: &dyn Engine) -> Result<u64, StoreError> {
    let mut sids: Vec<(Vec<u8>, u64)> = Vec::new();
    engine.scan(Table::Calls, Scan::all(), &mut |k, v| {
        sids.push((k.to_vec(), v.len() as u64));
        true
    })?;
    let mut total = 0;
    for (sid, record_len) in sids {
        let mut prefix = sid;
        prefix.push(0);
        let upper = engine::prefix_end(&prefix);
        let (mut bytes, mut n) = (0u64, 0u64);
        engine.scan(Table::Items, Scan::prefix(&prefix, &upper), &mut |_, v| {
            bytes += v.len() as u64;
            n += 1;
            true
        })?;
        total += call_line_bytes(record_len, bytes, n);
    }
    Ok(total)
}

fn parse_doc<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        why: e.to_string(),
    })
}

/// A cursor is the hex of the last index key handed out (the next page lists what is below it).
fn encode_cursor(key: &[u8]) -> String {
    let mut hex = String::with_capacity(2 * key.len());
    for b in key {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

fn decode_cursor(c: &str) -> Option<Vec<u8>> {
    if c.len() < 18 || !c.len().is_multiple_of(2) || c.len() > 2 * (8 + 64) {
        return None;
    }
    (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;
