//! The one store writer thread: it takes [`Op`]s from the bounded queue, applies them in batches
//! and makes them durable every flush interval.
//!
//! ```text
//!  call tasks ──try_send(Op)──▶ [ bounded queue, QUEUE_CAPACITY ] ──▶ writer thread
//!                                                                   apply ≤ MAX_BATCH ops
//!                                                                   items: inserted as applied
//!                                                                   records: once per batch
//!                                                                   flush every flush interval
//! ```
//!
//! A record whose status, ids, usage or interruptions changed is written with its batch; one
//! that only gained items (its `items` count) is written at the next flush, so a busy call costs
//! one record write per flush interval rather than one per item (this doubled the sustained
//! append rate).
//!
//! # Crash-loss bound
//! The writer applies what is queued at once and flushes (fsync) at most one flush interval after
//! the first unflushed write. So an op enqueued at `t` is durable by `t + flush + apply time`;
//! a kill -9 loses at most the ops of the last flush interval (plus the few ms a batch takes).
//! `tests/store_crash.rs` checks it.
//!
//! Per call the writer keeps the open record, the next item sequence number and the last
//! assistant items (to mark them interrupted), so the call path only enqueues.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::model::{CallRecord, CallStatus, ConversationItem, ItemKind};
use super::{item_key, items_prefix, time_key, Trees};

/// Ops applied per batch at most: bounds the time a batch holds the writer (and the histogram
/// observation) to a few ms, while big enough that sustained appends amortise the batch cost.
pub const MAX_BATCH: usize = 4096;

/// Assistant items remembered per open call to mark them interrupted: a barge-in interrupts the
/// item playing now, which is among the last few.
const REMEMBERED_ASSISTANT_ITEMS: usize = 16;

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

/// The state of a call with a started stream, kept until it ends.
struct OpenCall {
    record: CallRecord,
    next_seq: u32,
    /// Last assistant transcripts: (item id, the stored item).
    assistant: Vec<ConversationItem>,
    /// Interruptions whose assistant transcript has not arrived yet: (item id, heard ms).
    pending_interrupts: Vec<(String, u64)>,
}

/// Writer counters and handles (cached: the macros look up the registry on each call).
pub(crate) struct WriterMetrics {
    pub(crate) depth: metrics::Gauge,
    pub(crate) written: metrics::Counter,
    pub(crate) write_seconds: metrics::Histogram,
}

impl WriterMetrics {
    pub(crate) fn new() -> Self {
        WriterMetrics {
            depth: metrics::gauge!(crate::metrics::STORE_QUEUE_DEPTH),
            written: metrics::counter!(crate::metrics::STORE_ITEMS_WRITTEN),
            write_seconds: metrics::histogram!(crate::metrics::STORE_WRITE),
        }
    }
}

/// The writer loop; returns when it gets [`Op::Stop`] or every sender is gone.
pub(crate) fn run(trees: Trees, rx: Receiver<Op>, flush_every: Duration, m: WriterMetrics) {
    let mut w = Writer {
        trees,
        open: HashMap::new(),
        dirty: HashSet::new(),
        counted: HashSet::new(),
        touched: HashMap::new(),
        records: Vec::new(),
        index: Vec::new(),
        appended: 0,
    };
    let mut pending: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut flush_due: Option<Instant> = None;
    loop {
        let first = match flush_due {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
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
        m.depth.set(rx.len() as f64);
        let started = Instant::now();
        let mut acks = Vec::new();
        let mut wrote = false;
        for op in pending.drain(..) {
            match op {
                Op::Flush(ack) => acks.push(ack),
                Op::Stop => stop = true,
                other => {
                    w.apply(other);
                    wrote = true;
                }
            }
        }
        if wrote {
            flush_due.get_or_insert(started + flush_every);
        }
        let must_flush =
            stop || !acks.is_empty() || flush_due.is_some_and(|due| Instant::now() >= due);
        if wrote || must_flush {
            if let Err(e) = w.commit(must_flush) {
                tracing::error!("store write failed: {e}");
            }
            m.written.increment(w.appended);
            w.appended = 0;
        }
        if must_flush && flush_due.is_some() {
            if let Err(e) = w.trees.db.flush() {
                tracing::error!("store flush failed: {e}");
            }
            flush_due = None;
        }
        if wrote || must_flush {
            m.write_seconds.record(started.elapsed().as_secs_f64());
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if stop {
            return;
        }
    }
}

struct Writer {
    trees: Trees,
    open: HashMap<Arc<str>, OpenCall>,
    /// Open calls whose record changed in this batch.
    dirty: HashSet<Arc<str>>,
    /// Open calls with new items since their record was last written.
    counted: HashSet<Arc<str>>,
    /// Records changed in this batch that are not open (ringing, ended): written at commit.
    touched: HashMap<Arc<str>, CallRecord>,
    /// Records to write at commit, in order (a later write of a key wins).
    ///
    /// Plain inserts, not `sled::Batch`: sled 0.34's `apply_batch` pins the log for atomicity,
    /// which rolls the io buffer twice and writes it out with a `sync_file_range` even for an
    /// empty batch, so two batches per writer wake-up cost four small disk writes and wake
    /// every sled io thread (profiled: ~18% of the proxy's CPU under 300 calls). Nothing needs
    /// the atomicity: each record is independent, and the flush makes them durable together.
    records: Vec<(Vec<u8>, Vec<u8>)>,
    /// `calls_by_time` keys to insert at commit.
    index: Vec<Vec<u8>>,
    appended: u64,
}

impl Writer {
    /// The open call for `sid`, loaded from the store (or created) when not in memory.
    fn open_call(&mut self, sid: &Arc<str>, at_ms: u64) -> &mut OpenCall {
        if !self.open.contains_key(sid) {
            let record = match self.touched.remove(sid) {
                Some(r) => r,
                None => self.load_or_new(sid, at_ms),
            };
            let next_seq = self.next_seq(sid);
            self.open.insert(
                Arc::clone(sid),
                OpenCall {
                    record,
                    next_seq,
                    assistant: Vec::new(),
                    pending_interrupts: Vec::new(),
                },
            );
        }
        self.open.get_mut(sid).expect("inserted above")
    }

    fn load_or_new(&mut self, sid: &str, at_ms: u64) -> CallRecord {
        match self.trees.calls.get(sid.as_bytes()) {
            Ok(Some(bytes)) => match serde_json::from_slice::<CallRecord>(&bytes) {
                Ok(r) => return r,
                Err(e) => tracing::error!(
                    call_sid = sid,
                    "stored call record unreadable, replacing it: {e}"
                ),
            },
            Ok(None) => {}
            Err(e) => tracing::error!(call_sid = sid, "reading call record: {e}"),
        }
        self.index.push(time_key(at_ms, sid));
        CallRecord::new(sid, CallStatus::Ringing, at_ms)
    }

    /// The next sequence number of `sid`'s items: one past the last stored one.
    fn next_seq(&self, sid: &str) -> u32 {
        match self
            .trees
            .items
            .scan_prefix(items_prefix(sid))
            .keys()
            .next_back()
        {
            Some(Ok(key)) if key.len() >= 4 => {
                let seq = u32::from_be_bytes(key[key.len() - 4..].try_into().expect("4 bytes"));
                seq.saturating_add(1)
            }
            _ => 0,
        }
    }

    /// The record of a call that is not open (for changes that do not open a call).
    fn closed_record(&mut self, sid: &Arc<str>, at_ms: u64) -> &mut CallRecord {
        if !self.touched.contains_key(sid) {
            let r = self.load_or_new(sid, at_ms);
            self.touched.insert(Arc::clone(sid), r);
        }
        self.touched.get_mut(sid).expect("inserted above")
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
            Op::Flush(_) | Op::Stop => {}
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
                let in_open = self.open.contains_key(sid);
                let r = if in_open {
                    &mut self.open.get_mut(sid).expect("checked").record
                } else {
                    self.closed_record(sid, at_ms)
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
                let r = &mut c.record;
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
                self.open_call(sid, at_ms).record.realtime_session_id = Some(session_id);
            }
            RecordChange::Usage {
                input,
                output,
                total,
            } => {
                let u = &mut self.open_call(sid, at_ms).record.usage;
                u.responses += 1;
                u.input_tokens += input;
                u.output_tokens += output;
                u.total_tokens += total;
            }
            RecordChange::Interrupted { item_id, heard_ms } => {
                let c = self.open_call(sid, at_ms);
                c.record.interruptions += 1;
                let found = c.assistant.iter_mut().rev().find(|i| {
                    matches!(&i.kind, ItemKind::AssistantTranscript { item_id: id, .. } if *id == item_id)
                });
                match found {
                    Some(item) => {
                        if let ItemKind::AssistantTranscript {
                            interrupted,
                            heard_ms: heard,
                            ..
                        } = &mut item.kind
                        {
                            *interrupted = true;
                            *heard = Some(heard_ms);
                        }
                        let item = item.clone();
                        self.put_item(sid, &item);
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
                // A fallback recorded by after-stream before the stream ended stays a fallback.
                if c.record.status != CallStatus::Fallback {
                    c.record.status = status;
                }
                c.record.end_reason = Some(reason);
                c.record.ended_at_ms = Some(at_ms);
                c.record.items_lost += items_lost;
                self.touched.insert(Arc::clone(sid), c.record);
            }
            RecordChange::StatusCallback { call_status } => {
                if self.open.contains_key(sid) {
                    return;
                }
                let known = self.touched.contains_key(sid)
                    || matches!(self.trees.calls.get(sid.as_bytes()), Ok(Some(_)));
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
                    Some(c) => &mut c.record,
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
        let c = self.open_call(sid, at_ms);
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
        c.next_seq = c.next_seq.saturating_add(1);
        c.record.items = c.record.items.saturating_add(1);
        if matches!(item.kind, ItemKind::AssistantTranscript { .. }) {
            c.assistant.push(item.clone());
            if c.assistant.len() > REMEMBERED_ASSISTANT_ITEMS {
                c.assistant.remove(0);
            }
        }
        self.put_item(sid, &item);
        self.appended += 1;
    }

    fn put_item(&mut self, sid: &str, item: &ConversationItem) {
        match serde_json::to_vec(item) {
            Ok(bytes) => {
                if let Err(e) = self.trees.items.insert(item_key(sid, item.seq), bytes) {
                    tracing::error!(call_sid = sid, "writing an item: {e}");
                }
            }
            Err(e) => tracing::error!(call_sid = sid, "serializing an item: {e}"),
        }
    }

    /// Writes the batch: the changed records (and, when `flushing`, those whose item count
    /// changed), then the time index. Items were inserted as they were applied.
    fn commit(&mut self, flushing: bool) -> sled::Result<()> {
        if flushing {
            self.dirty.extend(self.counted.drain());
        }
        for sid in self.dirty.drain() {
            self.counted.remove(&sid);
            if let Some(c) = self.open.get(&sid) {
                put_record(&mut self.records, &c.record);
            }
        }
        for (_, r) in self.touched.drain() {
            put_record(&mut self.records, &r);
        }
        for (key, value) in self.records.drain(..) {
            self.trees.calls.insert(key, value)?;
        }
        for key in self.index.drain(..) {
            self.trees.by_time.insert(key, &[][..])?;
        }
        Ok(())
    }
}

fn put_record(records: &mut Vec<(Vec<u8>, Vec<u8>)>, r: &CallRecord) {
    match serde_json::to_vec(r) {
        Ok(bytes) => records.push((r.call_sid.as_bytes().to_vec(), bytes)),
        Err(e) => tracing::error!(call_sid = %r.call_sid, "serializing a record: {e}"),
    }
}
