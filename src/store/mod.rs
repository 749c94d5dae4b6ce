//! The embedded store (sled): agents, number routes, call records and conversation items.
//!
//! ```text
//!  call path (worker threads) ──Store::enqueue──▶ bounded queue ──▶ writer thread ──▶ sled
//!  admin API / CLI ──────────── direct reads and (rare) writes ───────────────────────▶ sled
//!  call start ──Store::agent_by_id / agent_for_number──▶ in-memory cache (never the disk)
//! ```
//!
//! # Trees (design.md "Storage")
//! - `agents`: agent id → [`Agent`] JSON.
//! - `numbers`: E.164 number (or `default`) → agent id.
//! - `calls`: callSid → [`CallRecord`] JSON.
//! - `items`: callSid ‖ `0x00` ‖ seq (big-endian u32) → [`ConversationItem`] JSON. The `0x00`
//!   separator (never part of a sid) keeps one sid's items apart from those of a longer sid that
//!   starts with it; big-endian keeps them in order.
//! - `calls_by_time`: startedAtMs (big-endian u64) ‖ callSid → empty: the index that lists calls
//!   newest first with cursor pagination.
//!
//! # Full queue (design.md "Threads and queues")
//! The queue holds [`QUEUE_CAPACITY`] ops (checked at enqueue; its memory is allocated as it
//! fills, not up front). When it is full (the disk cannot keep up for seconds),
//! [`Store::enqueue`] drops the op and counts it in `callbridge_store_queue_full_total`; the
//! call's [`sink::CallRecorder`] counts its own drops and the record's `itemsLost` says how many
//! were lost. The call itself goes on: its audio never passes through the store.
//!
//! # Layout
//! - [`model`]: the documents and their validation.
//! - [`writer`]: the writer thread (batches, flush interval, crash-loss bound).
//! - [`sink`]: `CallEvent` → store ops, the one function the drivers call.

pub mod model;
pub mod sink;
pub mod writer;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

use callbridge_core::openai::session::AgentSettings;
pub use model::{
    Agent, CallRecord, CallStatus, ConversationItem, ItemKind, ModelError, DEFAULT_ROUTE,
};
pub use writer::{Op, RecordChange};

/// Default flush interval, ms: what a crash may lose at most (plus one batch).
pub const DEFAULT_FLUSH_MS: u64 = 100;

/// Default `STORE_CACHE_MB`: sled's in-memory page cache. sled's own default is 1 GiB, which an
/// edge proxy never needs: the store is written far more than it is read (agents are cached by
/// the server anyway), and with the default the cache grows with every item written, ~70 KB/s
/// at 300 calls (heaptrack: nodes cloned by the writer's inserts), until it reaches 1 GiB.
pub const DEFAULT_CACHE_MB: u64 = 16;

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

/// Checks `STORE_FLUSH_MS`.
pub fn flush_interval(ms: u64) -> Result<Duration, String> {
    if (1..=MAX_FLUSH_MS).contains(&ms) {
        Ok(Duration::from_millis(ms))
    } else {
        Err(format!("{ms} is not a number of ms in 1..={MAX_FLUSH_MS}"))
    }
}

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the store (sled allows one process per directory).
    #[error("the store at {0} is locked by another process (a running callbridge?): stop it, or use its admin API (--server URL with ADMIN_TOKEN)")]
    Locked(PathBuf),
    /// The store cannot be opened.
    #[error("cannot open the store at {dir}: {why}")]
    Open {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        why: String,
    },
    /// A read or write failed.
    #[error("store i/o failed: {0}")]
    Io(#[from] sled::Error),
    /// A stored document does not parse.
    #[error("stored {what} {key:?} is unreadable: {why}")]
    Corrupt {
        /// Which tree.
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

/// The sled trees.
#[derive(Clone)]
pub(crate) struct Trees {
    pub(crate) db: sled::Db,
    pub(crate) agents: sled::Tree,
    pub(crate) numbers: sled::Tree,
    pub(crate) calls: sled::Tree,
    pub(crate) items: sled::Tree,
    pub(crate) by_time: sled::Tree,
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
    /// Bytes of sled's page cache (`STORE_CACHE_MB`).
    pub cache_bytes: u64,
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
            config_agent: Arc::new(AgentSettings::default()),
            queue_capacity: QUEUE_CAPACITY,
        }
    }
}

/// The store: cheap to clone, shared by the server's threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    trees: Trees,
    tx: Sender<Op>,
    /// [`StoreOptions::queue_capacity`].
    capacity: usize,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    queue_full: metrics::Counter,
    /// Agent id → settings, for call starts (never the disk on the call path).
    agents: RwLock<HashMap<String, Arc<AgentSettings>>>,
    /// Number → agent id.
    numbers: RwLock<HashMap<String, String>>,
    config_agent: Arc<AgentSettings>,
    /// Serialises admin writes that check one tree against another (routes vs agents).
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

impl Store {
    /// Opens (or creates) the store in `dir` and starts its writer thread. Another process
    /// holding `dir` gives [`StoreError::Locked`].
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.to_owned(),
            why: e.to_string(),
        })?;
        let db = sled::Config::new()
            .path(dir)
            // The writer flushes on its own interval (the crash-loss bound); sled's background
            // flusher would only add fsyncs.
            .flush_every_ms(None)
            .cache_capacity(opts.cache_bytes)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked(dir.to_owned())
                }
                other => StoreError::Open {
                    dir: dir.to_owned(),
                    why: other.to_string(),
                },
            })?;
        let trees = Trees {
            agents: db.open_tree("agents")?,
            numbers: db.open_tree("numbers")?,
            calls: db.open_tree("calls")?,
            items: db.open_tree("items")?,
            by_time: db.open_tree("calls_by_time")?,
            db,
        };
        // Unbounded channel, bounded at enqueue: crossbeam's bounded (array) channel allocates
        // and stamps every slot up front, 65,536 × ~136-byte ops = 8.9 MB resident before the
        // first call (heaptrack: most of the idle RSS the store added). The list flavour
        // allocates 31-slot blocks as ops arrive and frees them as the writer takes them.
        let (tx, rx) = crossbeam_channel::unbounded();
        let store = Store {
            inner: Arc::new(Inner {
                trees: trees.clone(),
                tx,
                capacity: opts.queue_capacity,
                writer: Mutex::new(None),
                queue_full: metrics::counter!(crate::metrics::STORE_QUEUE_FULL),
                agents: RwLock::new(HashMap::new()),
                numbers: RwLock::new(HashMap::new()),
                config_agent: opts.config_agent,
                admin: Mutex::new(()),
            }),
        };
        store.reload_caches()?;
        let m = writer::WriterMetrics::new();
        let flush_every = opts.flush_every;
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run(trees, rx, flush_every, m))
            .map_err(|e| StoreError::Open {
                dir: dir.to_owned(),
                why: format!("starting the writer thread: {e}"),
            })?;
        *store.inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(store)
    }

    /// Hands an op to the writer without waiting: `false` when it was dropped (queue full,
    /// counted in `callbridge_store_queue_full_total`, or the writer stopped). This is all the
    /// call path ever does with the store.
    #[inline]
    pub fn enqueue(&self, op: Op) -> bool {
        // Concurrent callers may overshoot the capacity by at most one op each: harmless, the
        // bound is there to stop unbounded growth when the disk is stuck.
        if self.inner.tx.len() >= self.inner.capacity {
            self.inner.queue_full.increment(1);
            return false;
        }
        self.inner.tx.send(op).is_ok()
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
    /// `failed` (with their item count recounted), and index entries a crash lost are restored.
    pub fn recover(&self) -> Result<usize, StoreError> {
        let t = &self.inner.trees;
        let mut fixed = 0;
        for entry in t.calls.iter() {
            let (key, value) = entry?;
            let Ok(mut r) = serde_json::from_slice::<CallRecord>(&value) else {
                continue;
            };
            let tk = time_key(r.started_at_ms, &r.call_sid);
            if !t.by_time.contains_key(&tk)? {
                t.by_time.insert(tk, &[][..])?;
            }
            if r.status == CallStatus::InProgress {
                // The item count is written once per flush interval: recount what is there.
                r.items = t
                    .items
                    .scan_prefix(items_prefix(&r.call_sid))
                    .keys()
                    .count() as u32;
                r.status = CallStatus::Failed;
                r.end_reason =
                    Some("callbridge stopped before the call ended (crash or kill)".into());
                let bytes = serde_json::to_vec(&r).map_err(|e| StoreError::Corrupt {
                    what: "call",
                    key: String::from_utf8_lossy(&key).into_owned(),
                    why: e.to_string(),
                })?;
                t.calls.insert(key, bytes)?;
                fixed += 1;
            }
        }
        t.db.flush()?;
        Ok(fixed)
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

    // ---- agents -------------------------------------------------------------------------------

    /// Every agent, by id.
    pub fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.trees.agents.iter() {
            let (k, v) = entry?;
            out.push(parse_doc("agent", &k, &v)?);
        }
        Ok(out)
    }

    /// One agent.
    pub fn get_agent(&self, id: &str) -> Result<Agent, StoreError> {
        match self.inner.trees.agents.get(id.as_bytes())? {
            Some(v) => parse_doc("agent", id.as_bytes(), &v),
            None => Err(StoreError::UnknownAgent(id.to_owned())),
        }
    }

    /// Creates or replaces an agent (validated); `true` when it was new. Durable on return.
    pub fn put_agent(&self, agent: &Agent) -> Result<bool, StoreError> {
        agent.validate()?;
        let _g = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = serde_json::to_vec(agent).expect("an agent serializes");
        let old = self.inner.trees.agents.insert(agent.id.as_bytes(), bytes)?;
        self.inner.trees.db.flush()?;
        self.inner
            .agents
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(agent.id.clone(), Arc::new(agent.to_settings()));
        Ok(old.is_none())
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
        if self.inner.trees.agents.remove(id.as_bytes())?.is_none() {
            return Err(StoreError::UnknownAgent(id.to_owned()));
        }
        self.inner.trees.db.flush()?;
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
        let mut out = Vec::new();
        for entry in self.inner.trees.numbers.iter() {
            let (k, v) = entry?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        Ok(out)
    }

    /// Routes `number` (E.164 or `default`) to an existing agent. Durable on return.
    pub fn put_number(&self, number: &str, agent_id: &str) -> Result<bool, StoreError> {
        model::validate_number(number)?;
        let _g = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
        let known = self.inner.trees.agents.contains_key(agent_id.as_bytes())?
            || agent_id == self.inner.config_agent.id;
        if !known {
            return Err(StoreError::UnknownAgent(agent_id.to_owned()));
        }
        let old = self
            .inner
            .trees
            .numbers
            .insert(number.as_bytes(), agent_id.as_bytes())?;
        self.inner.trees.db.flush()?;
        self.inner
            .numbers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number.to_owned(), agent_id.to_owned());
        Ok(old.is_none())
    }

    /// Removes a route.
    pub fn delete_number(&self, number: &str) -> Result<(), StoreError> {
        let _g = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .inner
            .trees
            .numbers
            .remove(number.as_bytes())?
            .is_none()
        {
            return Err(StoreError::UnknownNumber(number.to_owned()));
        }
        self.inner.trees.db.flush()?;
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
        match self.inner.trees.calls.get(sid.as_bytes())? {
            Some(v) => parse_doc("call", sid.as_bytes(), &v),
            None => Err(StoreError::UnknownCall(sid.to_owned())),
        }
    }

    /// A call's conversation, in order.
    pub fn call_items(&self, sid: &str) -> Result<Vec<ConversationItem>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.trees.items.scan_prefix(items_prefix(sid)) {
            let (k, v) = entry?;
            out.push(parse_doc("item", &k, &v)?);
        }
        Ok(out)
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
            let mut examined: Option<sled::IVec> = None;
            for (scanned, entry) in self
                .inner
                .trees
                .by_time
                .range(lower..upper)
                .rev()
                .enumerate()
            {
                let (k, _) = entry?;
                if scanned == MAX_SCAN {
                    // Out of budget, and more entries exist (this one): the next page goes on
                    // below the last record examined.
                    last_key = examined.map(|e| e.to_vec());
                    break;
                }
                examined = Some(k.clone());
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
                        last_key = Some(k.to_vec());
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
    if c.len() < 18 || c.len() % 2 != 0 || c.len() > 2 * (8 + 64) {
        return None;
    }
    (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;
