//! Store tests on a temporary directory: documents, routes, the writer, pagination.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

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
    let dir = TempDir::new("stuck");
    let opts = StoreOptions {
        queue_capacity: CAPACITY,
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.0, opts).unwrap();
    let sid = "CA9";
    let webhook = RecordChange::Webhook {
        from: "+819012345678".into(),
        to: "+81501234567".into(),
        agent_id: None,
        fallback: None,
    };
    assert!(store.enqueue(op_record(sid, 1000, webhook)));
    store.flush(WAIT).unwrap();
    // A stuck disk: the writer blocks handing this flush's ack to a rendezvous channel that
    // nobody reads until the test says so.
    let (gate_tx, gate) = crossbeam_channel::bounded::<()>(0);
    assert!(store.enqueue(Op::Flush(gate_tx)));
    let t0 = std::time::Instant::now();
    while store.queue_len() > 0 {
        assert!(t0.elapsed() < WAIT, "the writer never took the flush");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut rec = sink::CallRecorder::new(Some(&store), sid);
    let mut call = callbridge_core::bridge::Call::new(
        callbridge_core::bridge::CallConfig::new("m", Arc::new(Default::default()), sid),
        std::time::Instant::now(),
    );
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
    assert!(store.queue_len() >= CAPACITY);
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
    let mut rec = sink::CallRecorder::new(Some(&store), "CA1");
    let mut call = callbridge_core::bridge::Call::new(
        callbridge_core::bridge::CallConfig::new("m", Arc::new(Default::default()), "CA1"),
        std::time::Instant::now(),
    );
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
