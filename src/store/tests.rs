//! Store tests on a temporary directory: documents, routes, the writer, pagination.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use engine::{Batch, EngineKind, Scan, Table};

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "callbridge-store-{tag}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            unix_ms()
        ));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn agent(id: &str, voice: &str) -> Agent {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": format!("Agent {id}"), "voice": voice, "instructions": "be brief",
        "transcription": {"model": "gpt-4o-transcribe", "language": "ja"}
    }))
    .unwrap()
}

const WAIT: Duration = Duration::from_secs(10);

fn op_record(sid: &str, at_ms: u64, change: RecordChange) -> Op {
    Op::Record {
        call_sid: Arc::from(sid),
        at_ms,
        change,
    }
}

fn op_append(sid: &str, at_ms: u64, kind: ItemKind) -> Op {
    Op::Append {
        call_sid: Arc::from(sid),
        at_ms,
        kind,
    }
}

/// A store whose queue holds `capacity` ops.
fn small_queue_store(tag: &str, capacity: usize) -> (TempDir, Store) {
    let dir = TempDir::new(tag);
    let opts = StoreOptions {
        queue_capacity: capacity,
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.0, opts).unwrap();
    (dir, store)
}

/// A stuck disk: the writer blocks handing a flush's ack to a rendezvous channel that nobody
/// reads until the test reads the returned gate.
fn stick_writer(store: &Store) -> crossbeam_channel::Receiver<()> {
    let (gate_tx, gate) = crossbeam_channel::bounded::<()>(0);
    assert!(store.enqueue(Op::Flush(gate_tx)));
    wait_until("the writer took the flush", || store.queue_len() == 0);
    gate
}

/// A call and the recorder that stores its events.
fn recorded_call(store: &Store, sid: &str) -> (sink::CallRecorder, callbridge_core::bridge::Call) {
    let call = callbridge_core::bridge::Call::new(
        callbridge_core::bridge::CallConfig::new("m", Arc::new(Default::default()), sid),
        std::time::Instant::now(),
    );
    (sink::CallRecorder::new(Some(store), sid), call)
}

#[test]
fn agents_and_routes_survive_a_reopen_and_resolve_from_the_cache() {
    let dir = TempDir::new("agents");
    {
        let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
        assert!(store.put_agent(&agent("sales", "cedar")).unwrap());
        assert!(
            !store.put_agent(&agent("sales", "ash")).unwrap(),
            "replaced"
        );
        store.put_agent(&agent("support", "marin")).unwrap();
        store.put_number("+81501234567", "sales").unwrap();
        store.put_number(DEFAULT_ROUTE, "support").unwrap();
        let err = store.put_number("+81500000000", "nobody").unwrap_err();
        assert!(matches!(err, StoreError::UnknownAgent(_)), "{err}");
        let err = store.put_number("0312345678", "sales").unwrap_err();
        assert!(err.to_string().contains("E.164"), "{err}");
        store.close();
    }
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    assert_eq!(store.get_agent("sales").unwrap().voice, "ash");
    assert_eq!(store.agent_for_number("+81501234567").voice, "ash");
    assert_eq!(store.agent_for_number("+10000000000").id, "support");
    assert_eq!(
        store.agent_by_id("sales").unwrap().language.as_deref(),
        Some("ja")
    );
    assert!(store.agent_by_id("nobody").is_none());
    // The configuration's agent answers to its id, and is the default without a route.
    assert_eq!(store.agent_by_id("default").unwrap().id, "default");
    let err = store.delete_agent("sales").unwrap_err();
    assert!(err.to_string().contains("+81501234567"), "{err}");
    store.delete_number("+81501234567").unwrap();
    store.delete_agent("sales").unwrap();
    assert!(matches!(
        store.delete_agent("sales").unwrap_err(),
        StoreError::UnknownAgent(_)
    ));
    store.delete_number(DEFAULT_ROUTE).unwrap();
    assert_eq!(store.agent_for_number("+81501234567").id, "default");
}

#[test]
fn a_second_open_of_the_same_directory_is_locked() {
    let dir = TempDir::new("lock");
    let _store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    match Store::open(&dir.0, StoreOptions::default()) {
        Err(StoreError::Locked(p)) => assert_eq!(p, dir.0),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened twice"),
    }
}

#[test]
fn the_writer_records_a_call_in_order_with_interruptions_and_usage() {
    let dir = TempDir::new("call");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let sid = "CA1";
    let webhook = RecordChange::Webhook {
        from: "+819012345678".into(),
        to: "+81501234567".into(),
        agent_id: Some("default".into()),
        fallback: None,
    };
    assert!(store.enqueue(op_record(sid, 1000, webhook)));
    store.flush(WAIT).unwrap();
    assert_eq!(store.get_call(sid).unwrap().status, CallStatus::Ringing);
    let started = RecordChange::StreamStarted {
        stream_sid: "MZ1".into(),
        from: String::new(),
        to: String::new(),
        agent_id: "default".into(),
    };
    store.enqueue(op_record(sid, 1100, started));
    store.enqueue(op_append(
        sid,
        1200,
        ItemKind::CallerTranscript {
            item_id: "u1".into(),
            text: "注文を確認したいです".into(),
        },
    ));
    store.enqueue(op_append(
        sid,
        1300,
        ItemKind::AssistantTranscript {
            item_id: "a1".into(),
            text: "かしこまりました".into(),
            interrupted: false,
            heard_ms: None,
        },
    ));
    store.enqueue(op_record(
        sid,
        1400,
        RecordChange::Interrupted {
            item_id: "a1".into(),
            heard_ms: 640,
        },
    ));
    // An interruption of an item whose transcript comes later.
    store.enqueue(op_record(
        sid,
        1500,
        RecordChange::Interrupted {
            item_id: "a2".into(),
            heard_ms: 80,
        },
    ));
    for (i, total) in [(1, 100), (2, 50)] {
        store.enqueue(op_record(
            sid,
            1500 + i,
            RecordChange::Usage {
                input: total / 2,
                output: total / 2,
                total,
            },
        ));
    }
    store.enqueue(op_append(
        sid,
        1600,
        ItemKind::AssistantTranscript {
            item_id: "a2".into(),
            text: "Sure".into(),
            interrupted: false,
            heard_ms: None,
        },
    ));
    store.enqueue(op_record(
        sid,
        1700,
        RecordChange::Ended {
            status: CallStatus::Completed,
            reason: "twilio sent stop".into(),
            items_lost: 2,
        },
    ));
    store.flush(WAIT).unwrap();
    let c = store.call_with_conversation(sid).unwrap();
    let r = &c.record;
    assert_eq!(r.status, CallStatus::Completed);
    assert_eq!(r.from, "+819012345678");
    assert_eq!(r.stream_sid.as_deref(), Some("MZ1"));
    assert_eq!(
        (r.started_at_ms, r.answered_at_ms, r.ended_at_ms),
        (1000, Some(1100), Some(1700))
    );
    assert_eq!(r.interruptions, 2);
    assert_eq!(r.usage.total_tokens, 150);
    assert_eq!(r.usage.responses, 2);
    assert_eq!(r.items_lost, 2);
    assert_eq!(r.items, 3);
    let items = &c.realtime_conversation;
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(
        matches!(&items[0].kind, ItemKind::CallerTranscript { text, .. } if text == "注文を確認したいです")
    );
    assert!(matches!(
        &items[1].kind,
        ItemKind::AssistantTranscript {
            interrupted: true,
            heard_ms: Some(640),
            ..
        }
    ));
    assert!(matches!(
        &items[2].kind,
        ItemKind::AssistantTranscript {
            interrupted: true,
            heard_ms: Some(80),
            ..
        }
    ));

    // A second stream of the same call (another instance, a reconnect) appends after them.
    store.enqueue(op_append(sid, 1800, ItemKind::Dtmf { digit: "5".into() }));
    store.flush(WAIT).unwrap();
    assert_eq!(store.call_items(sid).unwrap()[3].seq, 3);
    // A sid that starts with another's does not mix their items.
    store.enqueue(op_append(
        "CA10",
        1900,
        ItemKind::Dtmf { digit: "1".into() },
    ));
    store.flush(WAIT).unwrap();
    assert_eq!(store.call_items(sid).unwrap().len(), 4);
    assert_eq!(store.call_items("CA10").unwrap().len(), 1);
}

#[test]
fn a_stuck_writer_fills_the_queue_then_ops_are_dropped_counted_and_the_record_says_so() {
    const CAPACITY: usize = 8;
    let (_dir, store) = small_queue_store("stuck", CAPACITY);
    let sid = "CA9";
    let webhook = RecordChange::Webhook {
        from: "+819012345678".into(),
        to: "+81501234567".into(),
        agent_id: None,
        fallback: None,
    };
    assert!(store.enqueue(op_record(sid, 1000, webhook)));
    store.flush(WAIT).unwrap();
    let gate = stick_writer(&store);
    let (mut rec, mut call) = recorded_call(&store, sid);
    // The call goes on recording; once the queue holds CAPACITY ops, each further one is
    // dropped at once (the call path never waits) and counted by the recorder. The writer may
    // still take a batch in the turn it got stuck in, so up to MAX_BATCH more go in first.
    let mut accepted = 0;
    while rec.lost() == 0 {
        assert!(
            accepted <= CAPACITY + writer::MAX_BATCH,
            "the queue never filled"
        );
        let digit = char::from(b'0' + (accepted % 10) as u8).to_string();
        rec.on_event(
            &mut call,
            &callbridge_core::bridge::CallEvent::Dtmf { digit },
        );
        accepted += usize::from(rec.lost() == 0);
    }
    // The recorder holds one slot for its final op.
    assert!(store.queue_len() >= CAPACITY - 1);
    for _ in 0..4 {
        rec.on_event(
            &mut call,
            &callbridge_core::bridge::CallEvent::Dtmf { digit: "#".into() },
        );
    }
    assert_eq!(rec.lost(), 5);
    // The disk recovers: everything accepted is written, in order; nothing dropped shows up.
    gate.recv_timeout(WAIT)
        .expect("the writer is stuck on the gate");
    store.flush(WAIT).unwrap();
    let items = store.call_items(sid).unwrap();
    assert_eq!(items.len(), accepted);
    assert!(items
        .iter()
        .all(|i| !matches!(&i.kind, ItemKind::Dtmf { digit } if digit == "#")));
    // The end of the call records how many items were lost.
    rec.on_event(
        &mut call,
        &callbridge_core::bridge::CallEvent::Ended {
            reason: callbridge_core::bridge::EndReason::TwilioStop,
        },
    );
    store.flush(WAIT).unwrap();
    let record = store.get_call(sid).unwrap();
    assert_eq!(record.items_lost, 5);
    assert_eq!(record.status, CallStatus::Completed);
}

#[test]
fn a_stopped_writer_drops_and_counts_instead_of_waiting() {
    let dir = TempDir::new("full");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    // Stop the writer: nothing drains the queue any more.
    store.close();
    assert!(!store.enqueue(op_append("CA1", 1, ItemKind::Dtmf { digit: "1".into() })));
    let (mut rec, mut call) = recorded_call(&store, "CA1");
    rec.on_event(
        &mut call,
        &callbridge_core::bridge::CallEvent::Dtmf { digit: "1".into() },
    );
    assert_eq!(rec.lost(), 1);
}

#[test]
fn ten_thousand_calls_list_newest_first_and_paginate_with_filters() {
    let dir = TempDir::new("page");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let n = 10_000u64;
    for i in 0..n {
        let sid = format!("CA{i:05}");
        let agent = if i % 2 == 0 { "even" } else { "odd" };
        store.enqueue(op_record(
            &sid,
            1_000_000 + i * 10,
            RecordChange::Webhook {
                from: "+1".into(),
                to: "+2".into(),
                agent_id: Some(agent.into()),
                fallback: (i % 5 == 0).then(|| "realtime off".to_owned()),
            },
        ));
        if i % 1000 == 999 {
            store.flush(WAIT).unwrap();
        }
    }
    store.flush(WAIT).unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_calls(&CallFilter::default(), cursor.as_deref(), 777)
            .unwrap();
        seen.extend(page.calls.iter().map(|c| c.call_sid.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let want: Vec<String> = (0..n).rev().map(|i| format!("CA{i:05}")).collect();
    assert_eq!(seen, want, "every call once, newest first");

    let filter = CallFilter {
        since_ms: Some(1_000_000 + 1000 * 10),
        until_ms: Some(1_000_000 + 2000 * 10),
        status: Some(CallStatus::Fallback),
        agent_id: Some("even".into()),
    };
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_calls(&filter, cursor.as_deref(), 30).unwrap();
        got.extend(page.calls.iter().map(|c| c.call_sid.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let want: Vec<String> = (1000..2000)
        .rev()
        .filter(|i| i % 10 == 0)
        .map(|i| format!("CA{i:05}"))
        .collect();
    assert_eq!(got, want);

    for bad in ["xyz", "00", "zz00000000000000000000", &"ab".repeat(100)] {
        assert!(matches!(
            store.list_calls(&CallFilter::default(), Some(bad), 10),
            Err(StoreError::BadCursor(_))
        ));
    }
}

#[test]
fn recover_marks_calls_a_dead_process_left_in_progress_as_failed() {
    let dir = TempDir::new("recover");
    {
        let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
        store.enqueue(op_record(
            "CA1",
            5,
            RecordChange::StreamStarted {
                stream_sid: "MZ1".into(),
                from: "+1".into(),
                to: "+2".into(),
                agent_id: "default".into(),
            },
        ));
        store.flush(WAIT).unwrap();
    }
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    assert_eq!(store.recover().unwrap(), 1);
    let r = store.get_call("CA1").unwrap();
    assert_eq!(r.status, CallStatus::Failed);
    assert!(r
        .end_reason
        .unwrap()
        .contains("stopped before the call ended"));
}

/// What a full export holds: every call with its conversation, one JSON line each, the way
/// `/api/admin/calls.jsonl` writes them.
pub(crate) fn export_bytes(store: &Store) -> u64 {
    let mut total = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_calls(&CallFilter::default(), cursor.as_deref(), MAX_PAGE)
            .unwrap();
        for record in page.calls {
            let sid = record.call_sid.clone();
            let line = CallWithConversation {
                record,
                realtime_conversation: store.call_items(&sid).unwrap(),
            };
            total += serde_json::to_vec(&line).unwrap().len() as u64 + 1;
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return total,
        }
    }
}

/// The ops of one whole call that started at `at_ms`: webhook, stream, `n` turns of a Japanese
/// caller transcript, an assistant transcript interrupted by a barge-in, usage; then its end.
fn a_call(sid: &str, at_ms: u64, n: u32, end: bool) -> Vec<Op> {
    let mut ops = vec![
        op_record(
            sid,
            at_ms,
            RecordChange::Webhook {
                from: "+819012345678".into(),
                to: "+81501234567".into(),
                agent_id: Some("default".into()),
                fallback: None,
            },
        ),
        op_record(
            sid,
            at_ms + 1,
            RecordChange::StreamStarted {
                stream_sid: format!("MZ{sid}"),
                from: String::new(),
                to: String::new(),
                agent_id: "default".into(),
            },
        ),
    ];
    for t in 0..n {
        let at = at_ms + 10 + u64::from(t) * 10;
        ops.push(op_append(
            sid,
            at,
            ItemKind::CallerTranscript {
                item_id: format!("u{t}"),
                text: format!("注文番号は{t}です。\"引用\"と\\も"),
            },
        ));
        ops.push(op_append(
            sid,
            at + 1,
            ItemKind::AssistantTranscript {
                item_id: format!("a{t}"),
                text: "かしこまりました。少々お待ちください。".into(),
                interrupted: false,
                heard_ms: None,
            },
        ));
        ops.push(op_record(
            sid,
            at + 2,
            RecordChange::Interrupted {
                item_id: format!("a{t}"),
                heard_ms: 640 + u64::from(t),
            },
        ));
        ops.push(op_record(
            sid,
            at + 3,
            RecordChange::Usage {
                input: 10,
                output: 20,
                total: 30,
            },
        ));
    }
    if end {
        ops.push(op_record(
            sid,
            at_ms + 10_000,
            RecordChange::Ended {
                status: CallStatus::Completed,
                reason: "twilio sent stop".into(),
                items_lost: 0,
            },
        ));
    }
    ops
}

fn enqueue_all(store: &Store, ops: Vec<Op>) {
    for op in ops {
        assert!(store.enqueue(op));
    }
}

/// Waits (at most [`WAIT`]) until `cond` holds, polling the store.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_logical_byte_count_equals_the_export_through_writes_rewrites_and_a_reopen() {
    let dir = TempDir::new("logical");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    assert_eq!(store.logical_bytes(), 0);
    // A ringing call that never streams, a fallback, calls with items and interruptions, one
    // still in progress, and a status callback closing the ringing one.
    enqueue_all(&store, a_call("CA1", 1_000, 3, true));
    enqueue_all(&store, a_call("CA2", 2_000, 1, false));
    store.enqueue(op_record(
        "CA3",
        3_000,
        RecordChange::Webhook {
            from: "+1".into(),
            to: "+2".into(),
            agent_id: None,
            fallback: Some("realtime off".into()),
        },
    ));
    store.enqueue(op_record(
        "CA4",
        4_000,
        RecordChange::Webhook {
            from: "+1".into(),
            to: "+2".into(),
            agent_id: None,
            fallback: None,
        },
    ));
    store.flush(WAIT).unwrap();
    assert_eq!(store.logical_bytes(), export_bytes(&store));
    store.enqueue(op_record(
        "CA4",
        5_000,
        RecordChange::StatusCallback {
            call_status: "no-answer".into(),
        },
    ));
    // An item after the call ended (a second stream of the same call) goes after the others.
    store.enqueue(op_append(
        "CA1",
        6_000,
        ItemKind::Dtmf { digit: "#".into() },
    ));
    store.flush(WAIT).unwrap();
    let items = store.call_items("CA1").unwrap();
    assert_eq!(items.last().unwrap().seq, 6, "{items:?}");
    let bytes = store.logical_bytes();
    assert!(bytes > 1_000, "{bytes}");
    assert_eq!(bytes, export_bytes(&store));
    store.close();
    drop(store);
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    assert_eq!(
        store.logical_bytes(),
        bytes,
        "the count is stored with the data"
    );
    assert_eq!(store.recover().unwrap(), 1, "CA2 was left in progress");
    assert_eq!(store.logical_bytes(), export_bytes(&store));
    assert_eq!(
        store.recover().unwrap(),
        0,
        "the open-calls index is empty now"
    );
}

#[test]
fn the_final_op_finds_room_in_a_full_queue_and_items_lost_lands() {
    const CAPACITY: usize = 8;
    let (_dir, store) = small_queue_store("end-slot", CAPACITY);
    let sid = "CA7";
    let (mut rec, mut call) = recorded_call(&store, sid);
    let gate = stick_writer(&store);
    while rec.lost() < 3 {
        assert!(
            store.queue_len() < CAPACITY,
            "ordinary ops stop before the held slot"
        );
        rec.on_event(
            &mut call,
            &callbridge_core::bridge::CallEvent::Dtmf { digit: "1".into() },
        );
    }
    // Another call starting now holds a slot too: the queue refuses ordinary ops earlier.
    let other = store.reserve_end();
    assert!(!store.enqueue(op_append("CA8", 1, ItemKind::Dtmf { digit: "2".into() })));
    drop(other);
    let before = store.queue_len();
    assert_eq!(before, CAPACITY - 1, "one slot held for the end");
    // The end of a call that ended badly: its error item is dropped (the queue is full) but
    // its final record takes the held slot.
    rec.on_event(
        &mut call,
        &callbridge_core::bridge::CallEvent::Ended {
            reason: callbridge_core::bridge::EndReason::TwilioClosed,
        },
    );
    assert_eq!(store.queue_len(), CAPACITY, "the Ended op went in");
    let lost = rec.lost();
    assert_eq!(lost, 4, "three digits and the error item");
    gate.recv_timeout(WAIT).unwrap();
    store.flush(WAIT).unwrap();
    let r = store.get_call(sid).unwrap();
    assert_eq!(r.status, CallStatus::Failed);
    assert_eq!(r.items_lost, lost);
    assert_eq!(r.items as usize, CAPACITY - 1);
}

#[test]
fn retention_deletes_whole_old_calls_in_chunks_and_keeps_calls_in_progress() {
    let dir = TempDir::new("retention");
    let opts = StoreOptions {
        retention: Some(Duration::from_secs(3600)),
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.0, opts).unwrap();
    let now = unix_ms();
    let old = now - 2 * 3600 * 1000;
    enqueue_all(&store, a_call("CAold", old, 3, true));
    enqueue_all(&store, a_call("CAopen", old + 1, 2, false));
    enqueue_all(&store, a_call("CAnew", now, 2, true));
    // An old call with more items than one chunk deletes.
    enqueue_all(&store, a_call("CAbig", old + 2, 0, false));
    for i in 0..(2 * writer::MAX_DELETE_KEYS + 7) {
        let digit = (i % 10).to_string();
        store.enqueue(op_append("CAbig", old + 3, ItemKind::Dtmf { digit }));
    }
    store.enqueue(op_record(
        "CAbig",
        old + 4,
        RecordChange::Ended {
            status: CallStatus::Completed,
            reason: "stop".into(),
            items_lost: 0,
        },
    ));
    store.flush(WAIT).unwrap();
    wait_until("the old calls are deleted", || {
        matches!(store.get_call("CAbig"), Err(StoreError::UnknownCall(_)))
            && matches!(store.get_call("CAold"), Err(StoreError::UnknownCall(_)))
    });
    store.flush(WAIT).unwrap();
    for gone in ["CAold", "CAbig"] {
        assert!(store.call_items(gone).unwrap().is_empty(), "{gone}'s items");
    }
    let listed: Vec<String> = store
        .list_calls(&CallFilter::default(), None, 10)
        .unwrap()
        .calls
        .into_iter()
        .map(|c| c.call_sid)
        .collect();
    assert_eq!(
        listed,
        ["CAnew", "CAopen"],
        "the index lost the deleted calls"
    );
    assert_eq!(
        store.call_items("CAopen").unwrap().len(),
        4,
        "in progress: kept"
    );
    assert_eq!(store.logical_bytes(), export_bytes(&store));
}

#[test]
fn a_size_cap_deletes_the_oldest_calls_until_the_store_fits() {
    let dir = TempDir::new("max-bytes");
    let cap = MIN_MAX_BYTES;
    let opts = StoreOptions {
        max_bytes: Some(cap),
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.0, opts).unwrap();
    // ~4 KB per call, 600 calls: more than twice the cap.
    for i in 0..600u64 {
        enqueue_all(
            &store,
            a_call(&format!("CA{i:05}"), 1_000 + i * 100, 6, true),
        );
        if i % 100 == 99 {
            store.flush(WAIT).unwrap();
        }
    }
    store.flush(WAIT).unwrap();
    wait_until("the store fits its cap", || store.logical_bytes() <= cap);
    store.flush(WAIT).unwrap();
    let page = store
        .list_calls(&CallFilter::default(), None, MAX_PAGE)
        .unwrap();
    let kept: Vec<&str> = page.calls.iter().map(|c| c.call_sid.as_str()).collect();
    assert!(kept.len() > 100 && kept.len() < 600, "{}", kept.len());
    assert_eq!(kept[0], "CA00599", "the newest stay");
    assert!(
        matches!(store.get_call("CA00000"), Err(StoreError::UnknownCall(_))),
        "the oldest went first"
    );
    assert_eq!(store.logical_bytes(), export_bytes(&store));
}

/// An engine whose disk can be made full: writes fail with ENOSPC, and after one failed write
/// every write fails until it is reopened (as redb does).
struct DiskThatFills {
    inner: Box<dyn engine::Engine>,
    full: Arc<std::sync::atomic::AtomicBool>,
    latched: std::sync::atomic::AtomicBool,
    failed_writes: AtomicU32,
}

impl DiskThatFills {
    fn check(&self) -> Result<(), engine::EngineError> {
        if self.full.load(Ordering::SeqCst) {
            self.latched.store(true, Ordering::SeqCst);
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(engine::EngineError::from_io(
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        if self.latched.load(Ordering::SeqCst) {
            return Err(engine::EngineError::NeedsReopen);
        }
        Ok(())
    }
}

impl engine::Engine for DiskThatFills {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }
    fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>, engine::EngineError> {
        self.inner.get(t, k)
    }
    fn scan(
        &self,
        t: Table,
        s: Scan<'_>,
        v: &mut engine::Visit<'_>,
    ) -> Result<(), engine::EngineError> {
        self.inner.scan(t, s, v)
    }
    fn apply(&self, b: &Batch, durable: bool) -> Result<(), engine::EngineError> {
        self.check()?;
        self.inner.apply(b, durable)
    }
    fn persist(&self) -> Result<(), engine::EngineError> {
        self.check()?;
        self.inner.persist()
    }
    fn reopen(&self) -> Result<(), engine::EngineError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(engine::EngineError::from_io(
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        self.latched.store(false, Ordering::SeqCst);
        self.inner.reopen()
    }
}

#[test]
fn a_full_disk_never_blocks_calls_and_the_final_records_land_once_it_has_room() {
    let dir = TempDir::new("disk-full");
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let disk = Arc::new(DiskThatFills {
        inner: engine::open(
            &dir.0,
            engine::EngineOptions {
                kind: EngineKind::Redb,
                cache_bytes: 1 << 20,
            },
        )
        .unwrap(),
        full: Arc::clone(&full),
        latched: std::sync::atomic::AtomicBool::new(false),
        failed_writes: AtomicU32::new(0),
    });
    let store = Store::start(&dir.0, disk.clone(), StoreOptions::default()).unwrap();
    enqueue_all(&store, a_call("CA1", 1_000, 1, false));
    store.flush(WAIT).unwrap();
    let stored_before = store.call_items("CA1").unwrap().len();
    full.store(true, Ordering::SeqCst);
    // The call goes on while nothing can be written: every op is taken at once, more items
    // than the writer keeps, then the end.
    let extra = writer::MAX_PENDING_ITEMS + 50;
    let t0 = std::time::Instant::now();
    for i in 0..extra {
        if store.queue_len() > QUEUE_CAPACITY / 2 {
            std::thread::yield_now();
        }
        let digit = (i % 10).to_string();
        assert!(store.enqueue(op_append("CA1", 2_000, ItemKind::Dtmf { digit })));
    }
    store.enqueue(op_record(
        "CA1",
        3_000,
        RecordChange::Ended {
            status: CallStatus::Completed,
            reason: "twilio sent stop".into(),
            items_lost: 0,
        },
    ));
    store.flush(WAIT).unwrap();
    assert!(
        t0.elapsed() < WAIT,
        "the call path never waited on the disk"
    );
    assert!(disk.failed_writes.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        store.get_call("CA1").unwrap().status,
        CallStatus::InProgress,
        "nothing written while the disk is full"
    );
    // Room again: the writer's next try (every RETRY_EVERY) writes what it kept.
    full.store(false, Ordering::SeqCst);
    wait_until("the final record lands", || {
        store
            .get_call("CA1")
            .is_ok_and(|r| r.status == CallStatus::Completed)
    });
    store.flush(WAIT).unwrap();
    let r = store.get_call("CA1").unwrap();
    let items = store.call_items("CA1").unwrap();
    assert_eq!(items.len(), stored_before + writer::MAX_PENDING_ITEMS);
    assert_eq!(r.items as usize, items.len());
    assert_eq!(r.items_lost, 50, "the items dropped are in the record");
    assert!(
        items.iter().enumerate().all(|(i, it)| it.seq as usize == i),
        "no gap: dropped items took no sequence number"
    );
    assert_eq!(store.logical_bytes(), export_bytes(&store));
}

#[test]
fn retention_and_size_settings_parse_with_clear_errors() {
    assert_eq!(parse_retention("0"), Ok(None));
    assert_eq!(
        parse_retention("30d"),
        Ok(Some(Duration::from_secs(30 * 86_400)))
    );
    assert_eq!(parse_retention("90m"), Ok(Some(Duration::from_secs(5_400))));
    assert_eq!(parse_retention("45s"), Ok(Some(Duration::from_secs(45))));
    for (bad, says) in [
        ("30", "no unit"),
        ("2w", "unit must be"),
        ("0h", "use 0 to keep everything"),
        ("-1d", "not a duration"),
        ("4000d", "longer than"),
        ("", "not a duration"),
    ] {
        let err = parse_retention(bad).unwrap_err();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    assert_eq!(parse_max_bytes("0"), Ok(None));
    assert_eq!(parse_max_bytes("off"), Ok(None));
    assert_eq!(parse_max_bytes("20G"), Ok(Some(20 << 30)));
    assert_eq!(parse_max_bytes("512M"), Ok(Some(512 << 20)));
    assert_eq!(parse_max_bytes("2097152"), Ok(Some(2 << 20)));
    for (bad, says) in [
        ("1k", "below"),
        ("12X", "not a size"),
        ("99999999999G", "too large"),
    ] {
        let err = parse_max_bytes(bad).unwrap_err();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}

#[test]
fn a_sled_store_migrates_whole_and_then_opens_in_the_new_engine() {
    let old = TempDir::new("sled-old");
    let sled_opts = StoreOptions {
        engine: EngineKind::Sled,
        ..StoreOptions::default()
    };
    {
        let store = Store::open(&old.0, sled_opts.clone()).unwrap();
        store.put_agent(&agent("sales", "cedar")).unwrap();
        store.put_number("+81501234567", "sales").unwrap();
        enqueue_all(&store, a_call("CA1", 1_000, 3, true));
        enqueue_all(&store, a_call("CA2", 2_000, 2, false));
        store.close();
    }
    let sled = Store::open(&old.0, sled_opts).unwrap();
    let want: Vec<CallWithConversation> = ["CA1", "CA2"]
        .iter()
        .map(|s| sled.call_with_conversation(s).unwrap())
        .collect();
    drop(sled);
    // Bad sources and destinations are refused with the reason.
    let empty = TempDir::new("not-sled");
    std::fs::create_dir_all(&empty.0).unwrap();
    let err = migrate::from_sled(&empty.0, &empty.0, EngineKind::Redb, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("no sled store here"), "{err}");
    let err = migrate::from_sled(&old.0, &empty.0, EngineKind::Sled, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("nothing to migrate"), "{err}");
    // The default engine refuses the old directory with the command to run.
    let err = Store::open(&old.0, StoreOptions::default())
        .err()
        .expect("an old sled store is not opened as an empty new store");
    assert!(
        err.to_string().contains("store migrate --from-sled"),
        "{err}"
    );

    for into_itself in [false, true] {
        let new = TempDir::new("sled-new");
        let to = if into_itself { &old.0 } else { &new.0 };
        let m = migrate::from_sled(&old.0, to, EngineKind::Redb, 1 << 20).unwrap();
        assert_eq!(
            (m.agents, m.numbers, m.calls, m.in_progress, m.items),
            (1, 1, 2, 1, 10)
        );
        let store = Store::open(to, StoreOptions::default()).unwrap();
        assert_eq!(store.engine_kind(), EngineKind::Redb);
        assert_eq!(store.agent_for_number("+81501234567").voice, "cedar");
        for w in &want {
            assert_eq!(
                &store.call_with_conversation(&w.record.call_sid).unwrap(),
                w
            );
        }
        assert_eq!(store.logical_bytes(), m.logical_bytes);
        assert_eq!(store.logical_bytes(), export_bytes(&store));
        assert_eq!(store.recover().unwrap(), 1, "CA2 was in progress");
        store.close();
        drop(store);
        let again = migrate::from_sled(&old.0, to, EngineKind::Redb, 1 << 20).unwrap_err();
        assert!(
            again.to_string().contains("migrate into an empty"),
            "{again}"
        );
    }
}
