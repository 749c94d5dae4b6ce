//! The one store writer thread: it takes [`Op`]s from the bounded queue, applies them in batches
//! and makes them durable every flush interval; between batches it deletes old calls.
//!
//! ```text
//!  call tasks ──Op──▶ [ bounded queue, QUEUE_CAPACITY ] ──▶ writer thread
//!                                                          apply ≤ MAX_BATCH ops to its state
//!                                                          stage: items as applied, records
//!                                                            once per batch, index entries,
//!                                                            the logical byte count
//!                                                          write: one atomic engine batch,
//!                                                            durable every flush interval
//!                                                          retention: ≤ MAX_DELETE_KEYS deletes
//! ```
//!
//! A record whose status, ids, usage or interruptions changed is written with its batch; one
//! that only gained items (its `items` count) is written at the next flush, so a busy call costs
//! one record write per flush interval rather than one per item.
//!
//! # Crash-loss bound
//! The writer applies what is queued at once (visible to readers) and makes it durable at most
//! one flush interval after the first write since the last durable one. So an op enqueued at `t`
//! is durable by `t + flush + apply time`; a kill -9 or a power loss loses at most the ops of the
//! last flush interval (plus the few ms a batch takes): the engine goes back to its last durable
//! commit, whole. `tests/store_crash.rs` checks it.
//!
//! # A write that fails
//! What could not be written stays staged and is tried again every [`RETRY_EVERY`] (after the
//! engine reopened its files: redb refuses everything after an i/o error until then), merged
//! with what comes meanwhile: a record is staged once whatever its changes, so the final records
//! of calls that ended during the outage land when the disk has room again. Items staged are
//! bounded by [`MAX_PENDING_ITEMS`]; past it new items are dropped, counted in
//! `callbridge_store_items_unwritten_total` and in their call's `itemsLost`. The call path never
//! notices: it only enqueues.
//!
//! Per call the writer keeps the open record, the next item sequence number and the last
//! assistant items (to mark them interrupted), so the call path only enqueues.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::engine::{prefix_end, Batch, Engine, EngineError, Scan, Table, Write};
use super::model::{CallRecord, CallStatus, ConversationItem, ItemKind};
use super::{item_key, items_prefix, time_key, unix_ms, LINE_OVERHEAD, META_LOGICAL};

/// Ops applied per batch at most: bounds the time a batch holds the writer (and the histogram
/// observation) to a few ms, while big enough that sustained appends amortise the batch cost.
pub const MAX_BATCH: usize = 4096;

/// Assistant items remembered per open call to mark them interrupted: a barge-in interrupts the
/// item playing now, which is among the last few.
const REMEMBERED_ASSISTANT_ITEMS: usize = 16;

/// Keys deleted per retention chunk at most: ~5 ms of engine work on the project's machine, so
/// the ops queued meanwhile wait no longer than a batch does. A backlog (retention switched on
/// for a big store) is worked off chunk after chunk while the queue is empty, and one chunk per
/// [`RETENTION_EVERY`] while it is not.
pub const MAX_DELETE_KEYS: usize = 1024;

/// Calls taken per retention chunk at most (the oldest first).
const MAX_DELETE_SCAN: usize = 256;

/// How often retention looks for calls to delete when there is no backlog.
pub const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// After a failed write, how long before the next try: a full disk is freed by people or by
/// log rotation, in seconds or minutes; trying every second costs nothing and loses no time.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Items staged at most while writes fail (~200 bytes each: a few MB): past it, new items are
/// dropped and counted (see the module docs). Records are always kept: one per call.
pub const MAX_PENDING_ITEMS: usize = 16_384;

/// Failed writes logged at most once per this interval (each is counted in the metric).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the call path asks the writer to do. Built on the caller's thread (its strings are the
/// call's own), applied on the writer thread.
#[derive(Debug)]
pub enum Op {
    /// Create or update a call record.
    Record {
        /// The call.
        call_sid: Arc<str>,
        /// When it happened, unix ms.
        at_ms: u64,
        /// The change.
        change: RecordChange,
    },
    /// Append a conversation item (the writer assigns its sequence number).
    Append {
        /// The call.
        call_sid: Arc<str>,
        /// When it happened, unix ms.
        at_ms: u64,
        /// The item.
        kind: ItemKind,
    },
    /// Apply everything queued before, flush, then signal (shutdown, tests, admin).
    Flush(Sender<()>),
    /// Mark the calls a dead process left in progress as failed, flush, and answer how many.
    Recover(Sender<Result<usize, EngineError>>),
    /// Flush and stop the writer.
    Stop,
}

/// A change to a call record.
#[derive(Debug, Clone)]
pub enum RecordChange {
    /// The webhook answered (status `ringing`), or sent the call to the fallback.
    Webhook {
        /// Caller.
        from: String,
        /// Called number.
        to: String,
        /// The agent picked by `To`.
        agent_id: Option<String>,
        /// `Some(reason)`: the call went to the legacy conference.
        fallback: Option<String>,
    },
    /// The media stream started (status `in-progress`): creates the record if this instance
    /// did not answer the webhook.
    StreamStarted {
        /// `streamSid`.
        stream_sid: String,
        /// Caller (from the `<Parameter>`s).
        from: String,
        /// Called number.
        to: String,
        /// The agent serving the call.
        agent_id: String,
    },
    /// OpenAI session id.
    Session {
        /// `session.id`.
        session_id: String,
    },
    /// Usage of one `response.done`.
    Usage {
        /// `input_tokens`.
        input: u64,
        /// `output_tokens`.
        output: u64,
        /// `total_tokens`.
        total: u64,
    },
    /// A barge-in: counted, and the interrupted assistant item is marked.
    Interrupted {
        /// The assistant item.
        item_id: String,
        /// Heard, ms.
        heard_ms: u64,
    },
    /// The call ended.
    Ended {
        /// Final status.
        status: CallStatus,
        /// Why.
        reason: String,
        /// Items this call could not enqueue (queue full).
        items_lost: u64,
    },
    /// `after-stream` sent the caller to the conference because the AI leg failed.
    FallbackAfterStream,
    /// A Twilio status callback with a final `CallStatus` (`completed`, `busy`, `failed`,
    /// `no-answer`, `canceled`; protocol.md 1.3): closes a known record whose stream never
    /// started (still `ringing`). A stream in progress or already ended keeps its own outcome.
    StatusCallback {
        /// Twilio's `CallStatus`.
        call_status: String,
    },
}

/// What the writer's settings are (from [`super::StoreOptions`]).
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Durable at least this often.
    pub flush_every: Duration,
    /// Delete calls that started longer ago than this.
    pub retention: Option<Duration>,
    /// Delete the oldest calls while the logical bytes exceed this.
    pub max_bytes: Option<u64>,
}

/// A record and what of it is stored (or staged).
struct Known {
    record: CallRecord,
    /// `None`: never written.
    stored: Option<Stored>,
}

/// The stored form of a record, for the byte count and the open-calls index.
#[derive(Debug, Clone, Copy)]
struct Stored {
    /// Its JSON length.
    len: u64,
    /// Whether `calls_open` lists it.
    open: bool,
}

/// The state of a call with a started stream, kept until it ends.
struct OpenCall {
    known: Known,
    next_seq: u32,
    /// Last assistant transcripts: the stored item and its JSON length.
    assistant: Vec<(ConversationItem, u64)>,
    /// Interruptions whose assistant transcript has not arrived yet: (item id, heard ms).
    pending_interrupts: Vec<(String, u64)>,
}

/// Writes staged for the next engine batch: the last write of each key, and what they change
/// in the logical byte count.
#[derive(Default)]
struct Staged {
    writes: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
    /// Item puts among them.
    items: usize,
    /// Change of the logical bytes once they are written.
    delta: i64,
}

impl Staged {
    fn put(&mut self, t: Table, k: Vec<u8>, v: Vec<u8>) {
        let was = self.writes.insert((t, k), Some(v));
        if t == Table::Items && !matches!(was, Some(Some(_))) {
            self.items += 1;
        }
    }

    fn delete(&mut self, t: Table, k: Vec<u8>) {
        if let Some(Some(_)) = self.writes.insert((t, k), None) {
            if t == Table::Items {
                self.items -= 1;
            }
        }
    }

    /// `Some(value)` (`None` inside: a delete) when `key` is staged.
    fn get(&self, t: Table, k: &[u8]) -> Option<Option<&[u8]>> {
        self.writes.get(&(t, k.to_vec())).map(|v| v.as_deref())
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    fn take_batch(&mut self) -> Batch {
        let writes = std::mem::take(&mut self.writes)
            .into_iter()
            .map(|((t, k), v)| match v {
                Some(v) => Write::Put(t, k, v),
                None => Write::Delete(t, k),
            })
            .collect();
        Batch { writes }
    }

    /// Puts back a batch that could not be written (nothing was staged since it was taken).
    fn restore(&mut self, batch: Batch) {
        for w in batch.writes {
            match w {
                Write::Put(t, k, v) => self.writes.insert((t, k), Some(v)),
                Write::Delete(t, k) => self.writes.insert((t, k), None),
            };
        }
    }
}

/// The `error` labels of `callbridge_store_write_errors_total`.
const WRITE_ERROR_KINDS: [&str; 3] = ["disk_full", "io", "other"];

/// Writer counters and handles (cached: the macros look up the registry on each call).
struct WriterMetrics {
    depth: metrics::Gauge,
    written: metrics::Counter,
    write_seconds: metrics::Histogram,
    logical: metrics::Gauge,
    unwritten: metrics::Counter,
    deleted_retention: metrics::Counter,
    deleted_size: metrics::Counter,
}

impl WriterMetrics {
    fn new() -> Self {
        use crate::metrics as m;
        // Every series at zero from the start, so alerts on increase() see the first error.
        for kind in WRITE_ERROR_KINDS {
            metrics::counter!(m::STORE_WRITE_ERRORS, "error" => kind).increment(0);
        }
        WriterMetrics {
            depth: metrics::gauge!(m::STORE_QUEUE_DEPTH),
            written: metrics::counter!(m::STORE_ITEMS_WRITTEN),
            write_seconds: metrics::histogram!(m::STORE_WRITE),
            logical: metrics::gauge!(m::STORE_LOGICAL_BYTES),
            unwritten: counter_at_zero(metrics::counter!(m::STORE_ITEMS_UNWRITTEN)),
            deleted_retention: counter_at_zero(metrics::counter!(
                m::STORE_CALLS_DELETED,
                "reason" => "retention"
            )),
            deleted_size: counter_at_zero(metrics::counter!(
                m::STORE_CALLS_DELETED,
                "reason" => "max_bytes"
            )),
        }
    }

    fn write_error(e: &EngineError) {
        let kind = match e {
            EngineError::DiskFull(_) => WRITE_ERROR_KINDS[0],
            EngineError::Io(_) | EngineError::NeedsReopen => WRITE_ERROR_KINDS[1],
            _ => WRITE_ERROR_KINDS[2],
        };
        metrics::counter!(crate::metrics::STORE_WRITE_ERRORS, "error" => kind).increment(1);
    }
}

fn counter_at_zero(c: metrics::Counter) -> metrics::Counter {
    c.increment(0);
    c
}

/// The writer loop; returns when it gets [`Op::Stop`] or every sender is gone.
pub(crate) fn run(
    engine: Arc<dyn Engine>,
    rx: Receiver<Op>,
    cfg: WriterConfig,
    logical: Arc<AtomicU64>,
) {
    let m = WriterMetrics::new();
    m.logical.set(logical.load(Ordering::Acquire) as f64);
    let mut w = Writer {
        engine,
        cfg,
        open: HashMap::new(),
        dirty: HashSet::new(),
        counted: HashSet::new(),
        touched: HashMap::new(),
        recent_seq: HashMap::new(),
        staged: Staged::default(),
        committed: logical,
        appended: 0,
        failing: None,
        last_error_log: None,
        last_retention: Instant::now(),
        retention_backlog: false,
        m,
    };
    let mut pending: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut flush_due: Option<Instant> = None;
    loop {
        // While writes fail, only the next try is due: the flush that failed stays due, and
        // waking for it would spin.
        let wake = match w.failing {
            Some(retry_at) => Some(retry_at),
            None => [flush_due, w.retention_due()].into_iter().flatten().min(),
        };
        let first = match wake {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut stop = false;
        match first {
            Ok(op) => pending.push(op),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stop = true,
        }
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => pending.push(op),
                Err(_) => break,
            }
        }
        w.m.depth.set(rx.len() as f64);
        let started = Instant::now();
        let mut acks = Vec::new();
        let mut recovers = Vec::new();
        let mut wrote = false;
        for op in pending.drain(..) {
            match op {
                Op::Flush(ack) => acks.push(ack),
                Op::Recover(ack) => recovers.push(ack),
                Op::Stop => stop = true,
                other => {
                    w.apply(other);
                    wrote = true;
                }
            }
        }
        let mut recovered = Ok(0);
        if !recovers.is_empty() {
            recovered = w.recover();
            wrote = true;
        }
        if wrote {
            flush_due.get_or_insert(started + w.cfg.flush_every);
        }
        let must_flush = stop
            || !acks.is_empty()
            || !recovers.is_empty()
            || flush_due.is_some_and(|due| Instant::now() >= due);
        w.stage(must_flush);
        if w.failing.is_none()
            && w.retention_due().is_some_and(|at| Instant::now() >= at)
            && (rx.is_empty() || w.last_retention.elapsed() >= RETENTION_EVERY)
        {
            w.retention_chunk(unix_ms());
            // Deletions are made durable like any write: redb reuses the freed pages only
            // after a durable commit.
            if !w.staged.is_empty() {
                flush_due.get_or_insert(started + w.cfg.flush_every);
            }
        }
        let durable = must_flush && flush_due.is_some();
        let written = if !w.staged.is_empty() || durable {
            let ok = w.write(durable);
            w.m.write_seconds.record(started.elapsed().as_secs_f64());
            ok
        } else {
            true
        };
        if written && durable {
            flush_due = None;
        }
        for ack in recovers {
            let answer = match (&recovered, written) {
                (Ok(n), true) => Ok(*n),
                (Ok(_), false) => Err(EngineError::Other(
                    "writing the recovered records failed".into(),
                )),
                (Err(e), _) => Err(EngineError::Other(e.to_string())),
            };
            let _ = ack.send(answer);
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if stop {
            if !w.staged.is_empty() {
                tracing::error!(
                    writes = w.staged.writes.len(),
                    "store closed with writes it could not make (the disk is full or failing): they are lost"
                );
            }
            return;
        }
    }
}

struct Writer {
    engine: Arc<dyn Engine>,
    cfg: WriterConfig,
    open: HashMap<Arc<str>, OpenCall>,
    /// Open calls whose record changed in this batch.
    dirty: HashSet<Arc<str>>,
    /// Open calls with new items since their record was last written.
    counted: HashSet<Arc<str>>,
    /// Records changed in this batch that are not open (ringing, ended): staged at commit.
    touched: HashMap<Arc<str>, Known>,
    /// Next item sequence number of calls that ended since the last successful write (their
    /// items may still be staged, not in the engine).
    recent_seq: HashMap<Arc<str>, u32>,
    staged: Staged,
    /// Logical bytes durable or applied in the engine (shared with [`super::Store`]).
    committed: Arc<AtomicU64>,
    appended: u64,
    /// `Some(next try)` while writes fail.
    failing: Option<Instant>,
    last_error_log: Option<Instant>,
    last_retention: Instant,
    /// The last chunk stopped at its bound: more is due at once.
    retention_backlog: bool,
    m: WriterMetrics,
}

impl Writer {
    /// The value of `key` as it will be once the staged writes land.
    fn current(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        match self.staged.get(t, key) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None => self.engine.get(t, key),
        }
    }

    /// The open call for `sid`, loaded from the store (or created) when not in memory.
    fn open_call(&mut self, sid: &Arc<str>, at_ms: u64) -> &mut OpenCall {
        if !self.open.contains_key(sid) {
            let known = match self.touched.remove(sid) {
                Some(k) => k,
                None => self.load_or_new(sid, at_ms),
            };
            let next_seq = match self.recent_seq.remove(sid) {
                Some(n) => n,
                None => self.next_seq(sid),
            };
            self.open.insert(
                Arc::clone(sid),
                OpenCall {
                    known,
                    next_seq,
                    assistant: Vec::new(),
                    pending_interrupts: Vec::new(),
                },
            );
        }
        self.open.get_mut(sid).expect("inserted above")
    }

    fn load_or_new(&mut self, sid: &str, at_ms: u64) -> Known {
        match self.current(Table::Calls, sid.as_bytes()) {
            Ok(Some(bytes)) => match serde_json::from_slice::<CallRecord>(&bytes) {
                Ok(record) => {
                    let open = record.status == CallStatus::InProgress;
                    return Known {
                        record,
                        stored: Some(Stored {
                            len: bytes.len() as u64,
                            open,
                        }),
                    };
                }
                Err(e) => tracing::error!(
                    call_sid = sid,
                    "stored call record unreadable, replacing it: {e}"
                ),
            },
            Ok(None) => {}
            Err(e) => tracing::error!(call_sid = sid, "reading call record: {e}"),
        }
        Known {
            record: CallRecord::new(sid, CallStatus::Ringing, at_ms),
            stored: None,
        }
    }

    /// The next sequence number of `sid`'s items: one past the last stored one.
    fn next_seq(&self, sid: &str) -> u32 {
        let prefix = items_prefix(sid);
        let upper = prefix_end(&prefix);
        let mut last = None;
        let found = self.engine.scan(
            Table::Items,
            Scan::prefix(&prefix, &upper).rev(),
            &mut |k, _| {
                last = k
                    .get(k.len().saturating_sub(4)..)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(u32::from_be_bytes);
                false
            },
        );
        if let Err(e) = found {
            tracing::error!(call_sid = sid, "reading the last item: {e}");
        }
        last.map_or(0, |s| s.saturating_add(1))
    }

    /// The record of a call that is not open (for changes that do not open a call).
    fn closed_record(&mut self, sid: &Arc<str>, at_ms: u64) -> &mut CallRecord {
        if !self.touched.contains_key(sid) {
            let k = self.load_or_new(sid, at_ms);
            self.touched.insert(Arc::clone(sid), k);
        }
        &mut self.touched.get_mut(sid).expect("inserted above").record
    }

    fn apply(&mut self, op: Op) {
        // A record change is written with this batch; an append only bumps the record's item
        // count, which is written at the next flush (one record write per call per flush
        // interval instead of one per item).
        let set = match &op {
            Op::Record { call_sid, .. } => Some((&mut self.dirty, call_sid)),
            Op::Append { call_sid, .. } => Some((&mut self.counted, call_sid)),
            _ => None,
        };
        if let Some((set, sid)) = set {
            if !set.contains(sid) {
                set.insert(Arc::clone(sid));
            }
        }
        match op {
            Op::Record {
                call_sid,
                at_ms,
                change,
            } => self.apply_change(&call_sid, at_ms, change),
            Op::Append {
                call_sid,
                at_ms,
                kind,
            } => self.append(&call_sid, at_ms, kind),
            Op::Flush(_) | Op::Recover(_) | Op::Stop => {}
        }
    }

    fn apply_change(&mut self, sid: &Arc<str>, at_ms: u64, change: RecordChange) {
        match change {
            RecordChange::Webhook {
                from,
                to,
                agent_id,
                fallback,
            } => {
                let r = match self.open.get_mut(sid) {
                    Some(c) => &mut c.known.record,
                    None => self.closed_record(sid, at_ms),
                };
                r.from = from;
                r.to = to;
                if r.agent_id.is_none() {
                    r.agent_id = agent_id;
                }
                if let Some(reason) = fallback {
                    r.status = CallStatus::Fallback;
                    r.end_reason = Some(reason);
                    r.ended_at_ms = Some(at_ms);
                }
            }
            RecordChange::StreamStarted {
                stream_sid,
                from,
                to,
                agent_id,
            } => {
                let c = self.open_call(sid, at_ms);
                let r = &mut c.known.record;
                r.stream_sid = Some(stream_sid);
                if !from.is_empty() {
                    r.from = from;
                }
                if !to.is_empty() {
                    r.to = to;
                }
                r.agent_id = Some(agent_id);
                r.status = CallStatus::InProgress;
                r.answered_at_ms = Some(at_ms);
            }
            RecordChange::Session { session_id } => {
                self.open_call(sid, at_ms).known.record.realtime_session_id = Some(session_id);
            }
            RecordChange::Usage {
                input,
                output,
                total,
            } => {
                let u = &mut self.open_call(sid, at_ms).known.record.usage;
                u.responses += 1;
                u.input_tokens += input;
                u.output_tokens += output;
                u.total_tokens += total;
            }
            RecordChange::Interrupted { item_id, heard_ms } => {
                self.open_call(sid, at_ms);
                let c = self.open.get_mut(sid).expect("opened above");
                c.known.record.interruptions += 1;
                let found = c.assistant.iter_mut().rev().find(|(i, _)| {
                    matches!(&i.kind, ItemKind::AssistantTranscript { item_id: id, .. } if *id == item_id)
                });
                match found {
                    Some((item, len)) => {
                        if let ItemKind::AssistantTranscript {
                            interrupted,
                            heard_ms: heard,
                            ..
                        } = &mut item.kind
                        {
                            *interrupted = true;
                            *heard = Some(heard_ms);
                        }
                        let old = *len;
                        if let Some(new) = stage_item(&mut self.staged, sid, item, Some(old)) {
                            *len = new;
                        }
                    }
                    None => {
                        c.pending_interrupts.push((item_id, heard_ms));
                        if c.pending_interrupts.len() > REMEMBERED_ASSISTANT_ITEMS {
                            c.pending_interrupts.remove(0);
                        }
                    }
                }
            }
            RecordChange::Ended {
                status,
                reason,
                items_lost,
            } => {
                let mut c = match self.open.remove(sid) {
                    Some(c) => c,
                    None => {
                        self.open_call(sid, at_ms);
                        self.open.remove(sid).expect("just opened")
                    }
                };
                let r = &mut c.known.record;
                // A fallback recorded by after-stream before the stream ended stays a fallback.
                if r.status != CallStatus::Fallback {
                    r.status = status;
                }
                r.end_reason = Some(reason);
                r.ended_at_ms = Some(at_ms);
                r.items_lost += items_lost;
                self.recent_seq.insert(Arc::clone(sid), c.next_seq);
                self.touched.insert(Arc::clone(sid), c.known);
            }
            RecordChange::StatusCallback { call_status } => {
                if self.open.contains_key(sid) {
                    return;
                }
                let known = self.touched.contains_key(sid)
                    || matches!(self.current(Table::Calls, sid.as_bytes()), Ok(Some(_)));
                if !known {
                    return;
                }
                let r = self.closed_record(sid, at_ms);
                if r.status == CallStatus::Ringing {
                    r.status = if call_status == "completed" {
                        CallStatus::Completed
                    } else {
                        CallStatus::Failed
                    };
                    r.end_reason = Some(format!(
                        "status callback CallStatus={call_status}, no stream on this instance"
                    ));
                    r.ended_at_ms = Some(at_ms);
                }
            }
            RecordChange::FallbackAfterStream => {
                let r = match self.open.get_mut(sid) {
                    Some(c) => &mut c.known.record,
                    None => self.closed_record(sid, at_ms),
                };
                r.status = CallStatus::Fallback;
                if r.end_reason.is_none() {
                    r.end_reason =
                        Some("the stream did not end normally: after-stream sent the caller to the conference".into());
                }
            }
        }
    }

    fn append(&mut self, sid: &Arc<str>, at_ms: u64, mut kind: ItemKind) {
        self.open_call(sid, at_ms);
        let c = self.open.get_mut(sid).expect("opened above");
        if self.staged.items >= MAX_PENDING_ITEMS {
            // Writes have been failing for a while: keep the record, drop the item, say so.
            c.known.record.items_lost += 1;
            self.m.unwritten.increment(1);
            self.dirty.insert(Arc::clone(sid));
            return;
        }
        if let ItemKind::AssistantTranscript {
            item_id,
            interrupted,
            heard_ms,
            ..
        } = &mut kind
        {
            if let Some(pos) = c.pending_interrupts.iter().position(|(i, _)| i == item_id) {
                let (_, heard) = c.pending_interrupts.remove(pos);
                *interrupted = true;
                *heard_ms = Some(heard);
            }
        }
        let item = ConversationItem {
            seq: c.next_seq,
            at_ms,
            kind,
        };
        let Some(len) = stage_item(&mut self.staged, sid, &item, None) else {
            return;
        };
        // One comma between two items of the export line.
        if c.known.record.items > 0 {
            self.staged.delta += 1;
        }
        c.next_seq = c.next_seq.saturating_add(1);
        c.known.record.items = c.known.record.items.saturating_add(1);
        if matches!(item.kind, ItemKind::AssistantTranscript { .. }) {
            c.assistant.push((item, len));
            if c.assistant.len() > REMEMBERED_ASSISTANT_ITEMS {
                c.assistant.remove(0);
            }
        }
        self.appended += 1;
    }

    /// Stages the changed records (and, when `flushing`, those whose item count changed).
    fn stage(&mut self, flushing: bool) {
        if flushing {
            self.dirty.extend(self.counted.drain());
        }
        for sid in self.dirty.drain() {
            self.counted.remove(&sid);
            if let Some(c) = self.open.get_mut(&sid) {
                stage_record(&mut self.staged, &mut c.known);
            }
        }
        for (_, mut k) in self.touched.drain() {
            stage_record(&mut self.staged, &mut k);
        }
    }

    /// Writes what is staged as one engine batch (`durable`: and makes it durable). While
    /// writes fail it tries only every [`RETRY_EVERY`], reopening the engine first.
    fn write(&mut self, durable: bool) -> bool {
        if let Some(retry_at) = self.failing {
            if Instant::now() < retry_at {
                return false;
            }
            if let Err(e) = self.engine.reopen() {
                return self.failed(e);
            }
        }
        let committed = self.committed.load(Ordering::Acquire);
        let total = committed.saturating_add_signed(self.staged.delta);
        if self.staged.delta != 0 {
            self.staged.put(
                Table::Meta,
                META_LOGICAL.to_vec(),
                total.to_be_bytes().to_vec(),
            );
        }
        let result = if self.staged.is_empty() {
            self.engine.persist()
        } else {
            let batch = self.staged.take_batch();
            let r = self.engine.apply(&batch, durable);
            if r.is_err() {
                self.staged.restore(batch);
            }
            r
        };
        match result {
            Ok(()) => {
                if self.failing.take().is_some() {
                    tracing::warn!("store writes succeed again");
                }
                self.committed.store(total, Ordering::Release);
                self.m.logical.set(total as f64);
                self.staged.delta = 0;
                self.staged.items = 0;
                self.recent_seq.clear();
                self.m.written.increment(self.appended);
                self.appended = 0;
                true
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, e: EngineError) -> bool {
        WriterMetrics::write_error(&e);
        self.failing = Some(Instant::now() + RETRY_EVERY);
        let log = self
            .last_error_log
            .is_none_or(|at| at.elapsed() >= ERROR_LOG_EVERY);
        if log {
            self.last_error_log = Some(Instant::now());
            tracing::error!(
                staged_items = self.staged.items,
                "store write failed (kept, retrying every {RETRY_EVERY:?}; calls go on): {e}"
            );
        }
        false
    }

    /// Marks the records the `calls_open` index lists as failed (a process died during them),
    /// with their items recounted, and stages them.
    fn recover(&mut self) -> Result<usize, EngineError> {
        let mut sids = Vec::new();
        self.engine.scan(Table::Open, Scan::all(), &mut |k, _| {
            sids.push(String::from_utf8_lossy(k).into_owned());
            true
        })?;
        let mut fixed = 0;
        for sid in sids {
            let sid: Arc<str> = Arc::from(sid.as_str());
            if self.open.contains_key(&sid) {
                continue;
            }
            let mut known = self.load_or_new(&sid, 0);
            if known.stored.is_none() {
                // An index entry without its record: drop the entry.
                self.staged.delete(Table::Open, sid.as_bytes().to_vec());
                continue;
            }
            let r = &mut known.record;
            if r.status == CallStatus::InProgress {
                // The item count is written once per flush interval: recount what is there.
                r.items = self.count_items(&sid)?;
                r.status = CallStatus::Failed;
                r.end_reason =
                    Some("callbridge stopped before the call ended (crash or kill)".into());
                fixed += 1;
            }
            self.touched.insert(sid, known);
        }
        self.stage(false);
        Ok(fixed)
    }

    fn count_items(&self, sid: &str) -> Result<u32, EngineError> {
        let prefix = items_prefix(sid);
        let upper = prefix_end(&prefix);
        let mut n = 0u32;
        self.engine
            .scan(Table::Items, Scan::prefix(&prefix, &upper), &mut |_, _| {
                n = n.saturating_add(1);
                true
            })?;
        Ok(n)
    }

    /// When the next retention chunk is due (`None`: neither retention nor a size cap is set).
    fn retention_due(&self) -> Option<Instant> {
        if self.cfg.retention.is_none() && self.cfg.max_bytes.is_none() {
            return None;
        }
        Some(if self.retention_backlog {
            self.last_retention
        } else {
            self.last_retention + RETENTION_EVERY
        })
    }

    /// Logical bytes once the staged writes land.
    fn logical_now(&self) -> u64 {
        self.committed
            .load(Ordering::Acquire)
            .saturating_add_signed(self.staged.delta)
    }

    /// Stages the deletion of the oldest calls that are past the retention or over the size
    /// cap: at most [`MAX_DELETE_KEYS`] keys, calls in progress or changed in this batch
    /// skipped.
    fn retention_chunk(&mut self, now_ms: u64) {
        self.last_retention = Instant::now();
        self.retention_backlog = false;
        let cutoff = self
            .cfg
            .retention
            .map(|r| now_ms.saturating_sub(u64::try_from(r.as_millis()).unwrap_or(u64::MAX)));
        // The oldest calls first, skipping those this writer has in hand (open, or changed
        // since the last write), so a crowd of them never stalls retention behind them.
        let over = self.cfg.max_bytes.is_some_and(|m| self.logical_now() > m);
        let mut oldest: Vec<(Vec<u8>, u64, String)> = Vec::new();
        let scanned = self.engine.scan(Table::ByTime, Scan::all(), &mut |k, _| {
            let Some(at) = k
                .get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            else {
                return true;
            };
            if !over && cutoff.is_none_or(|c| at >= c) {
                return false;
            }
            let sid = String::from_utf8_lossy(&k[8..]).into_owned();
            let busy = self.open.contains_key(sid.as_str())
                || self.recent_seq.contains_key(sid.as_str())
                || self.staged.get(Table::Calls, sid.as_bytes()).is_some();
            if !busy {
                oldest.push((k.to_vec(), at, sid));
            }
            oldest.len() < MAX_DELETE_SCAN
        });
        if let Err(e) = scanned {
            tracing::error!("retention: reading the time index: {e}");
            return;
        }
        // A full list means there may be more past it: go on at once.
        let more = oldest.len() == MAX_DELETE_SCAN;
        let mut budget = MAX_DELETE_KEYS;
        for (tkey, at, sid) in oldest {
            let first = budget == MAX_DELETE_KEYS;
            let expired = cutoff.is_some_and(|c| at < c);
            let over = self.cfg.max_bytes.is_some_and(|m| self.logical_now() > m);
            if !expired && !over {
                return;
            }
            match self.delete_call(&tkey, &sid, &mut budget, first) {
                Ok(Some(true)) if expired => self.m.deleted_retention.increment(1),
                Ok(Some(true)) => self.m.deleted_size.increment(1),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(call_sid = sid, "retention: deleting a call: {e}");
                    return;
                }
            }
            if budget == 0 {
                self.retention_backlog = true;
                return;
            }
        }
        self.retention_backlog = more;
    }

    /// Stages the deletion of one call (its items, its record and index entries) within
    /// `budget` keys, in one batch: readers see it whole or gone. A call that does not fit what
    /// is left of the budget waits for the next chunk (`budget` is spent), unless it is the
    /// `first` of its chunk: one with more items than a chunk deletes loses them over several
    /// chunks, its record last. `Some(true)`: the whole call went; `Some(false)`: only some or
    /// none of it; `None`: it is in progress, left alone.
    fn delete_call(
        &mut self,
        tkey: &[u8],
        sid: &str,
        budget: &mut usize,
        first: bool,
    ) -> Result<Option<bool>, EngineError> {
        let record = self.engine.get(Table::Calls, sid.as_bytes())?;
        if let Some(bytes) = &record {
            if matches!(serde_json::from_slice::<CallRecord>(bytes), Ok(r) if r.status == CallStatus::InProgress)
            {
                return Ok(None);
            }
        }
        let prefix = items_prefix(sid);
        let upper = prefix_end(&prefix);
        let mut items: Vec<(Vec<u8>, u64)> = Vec::new();
        let room = budget.saturating_sub(3);
        self.engine
            .scan(Table::Items, Scan::prefix(&prefix, &upper), &mut |k, v| {
                items.push((k.to_vec(), v.len() as u64));
                items.len() <= room
            })?;
        let whole = items.len() <= room;
        if !whole && !first {
            *budget = 0;
            return Ok(Some(false));
        }
        if !whole {
            items.truncate(room);
        }
        let k = items.len() as u64;
        let bytes: u64 = items.iter().map(|(_, l)| l).sum();
        *budget -= items.len();
        for (key, _) in items {
            self.staged.delete(Table::Items, key);
        }
        let freed = if whole {
            self.staged.delete(Table::Calls, sid.as_bytes().to_vec());
            self.staged.delete(Table::ByTime, tkey.to_vec());
            self.staged.delete(Table::Open, sid.as_bytes().to_vec());
            *budget = budget.saturating_sub(3);
            match &record {
                Some(r) => super::call_line_bytes(r.len() as u64, bytes, k),
                // Items without a record were never in the export.
                None => 0,
            }
        } else {
            bytes + k
        };
        self.staged.delta -= i64::try_from(freed).unwrap_or(i64::MAX);
        Ok(Some(whole))
    }
}

/// Stages `item` of `sid`; its JSON length replaces `old_len` (a rewrite) or is new. `None`
/// when it does not serialize (logged).
fn stage_item(
    staged: &mut Staged,
    sid: &str,
    item: &ConversationItem,
    old_len: Option<u64>,
) -> Option<u64> {
    match serde_json::to_vec(item) {
        Ok(bytes) => {
            let len = bytes.len() as u64;
            staged.delta += len as i64 - old_len.unwrap_or(0) as i64;
            staged.put(Table::Items, item_key(sid, item.seq), bytes);
            Some(len)
        }
        Err(e) => {
            tracing::error!(call_sid = sid, "serializing an item: {e}");
            None
        }
    }
}

/// Stages a record with its index entries, and what it changes in the logical bytes.
fn stage_record(staged: &mut Staged, k: &mut Known) {
    let r = &k.record;
    let bytes = match serde_json::to_vec(r) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(call_sid = %r.call_sid, "serializing a record: {e}");
            return;
        }
    };
    let len = bytes.len() as u64;
    let open = r.status == CallStatus::InProgress;
    let sid = r.call_sid.as_bytes();
    match k.stored {
        Some(s) => staged.delta += len as i64 - s.len as i64,
        None => {
            staged.delta += (len + LINE_OVERHEAD) as i64;
            staged.put(
                Table::ByTime,
                time_key(r.started_at_ms, &r.call_sid),
                Vec::new(),
            );
        }
    }
    let was_open = k.stored.is_some_and(|s| s.open);
    if open && !was_open {
        staged.put(Table::Open, sid.to_vec(), Vec::new());
    } else if was_open && !open {
        staged.delete(Table::Open, sid.to_vec());
    }
    staged.put(Table::Calls, sid.to_vec(), bytes);
    k.stored = Some(Stored { len, open });
}
