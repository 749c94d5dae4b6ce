//! 50 calls at once through the real binary: every frame delivered once, in order, byte-exact,
//! both ways, on every call.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use callbridge::sim::caller::{run_call, CallOutcome, CallerConfig};
use callbridge::sim::script::{read_tag, Script};
use common::{closed_sessions, mock, Proxy, AUTH_TOKEN};

const CALLS: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_deliver_every_frame_once_in_order_both_ways() {
    let mock = mock(|m| m.self_check = false).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let mut tasks = Vec::new();
    for n in 1..=CALLS {
        let mut caller = CallerConfig::new(proxy.addr, n, Script::hello_then_hang_up(4_500));
        caller.auth_token = Some(AUTH_TOKEN.into());
        caller.frame_tag = Some(n);
        tasks.push(tokio::spawn(async move {
            // Spread the starts over 250 ms like real arrivals.
            tokio::time::sleep(Duration::from_millis(u64::from(n) * 5)).await;
            run_call(caller).await
        }));
    }
    let mut reports = HashMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let report = t.await.unwrap().expect("call ran");
        assert_eq!(
            report.outcome,
            CallOutcome::Completed,
            "call {}: log:\n{}",
            i + 1,
            proxy.log()
        );
        reports.insert(i as u32 + 1, report);
    }
    let sessions = closed_sessions(&mock, CALLS as usize, Duration::from_secs(5)).await;
    assert_eq!(sessions.len(), CALLS as usize, "every OpenAI leg closed");
    let engine = base64::engine::general_purpose::STANDARD;
    let mut seen = HashMap::new();
    for s in &sessions {
        assert!(s.stats.errors.is_empty(), "{:?}", s.stats.errors);
        let tags: Vec<(u32, u32)> = s
            .stats
            .appends
            .iter()
            .map(|a| read_tag(&engine.decode(a).unwrap()).expect("tagged"))
            .collect();
        let call = tags[0].0;
        assert!(
            seen.insert(call, s.conn_no).is_none(),
            "call {call} reached OpenAI twice"
        );
        // Uplink: once, in order, from this call only.
        for (i, (c, seq)) in tags.iter().enumerate() {
            assert_eq!(
                (*c, *seq),
                (call, i as u32),
                "call {call}: uplink frame {i} is {c}/{seq}"
            );
        }
        let report = &reports[&call];
        let stream = report.stream.as_ref().unwrap();
        assert!(
            stream.violations.is_empty(),
            "call {call}: {:?}",
            stream.violations
        );
        assert!(
            tags.len() as u32 + 5 >= stream.frames_sent,
            "call {call}: {} of {} frames",
            tags.len(),
            stream.frames_sent
        );
        // Downlink: byte-exact and in order.
        let sent: Vec<u8> = s
            .stats
            .audio_deltas
            .iter()
            .flat_map(|i| i.deltas.iter())
            .flat_map(|d| engine.decode(d).unwrap())
            .collect();
        let received: Vec<u8> = stream
            .media
            .iter()
            .flat_map(|m| engine.decode(&m.payload_b64).unwrap())
            .collect();
        assert!(!sent.is_empty());
        assert!(
            received == sent,
            "call {call}: downlink differs ({} vs {} bytes)",
            received.len(),
            sent.len()
        );
    }
    assert_eq!(seen.len(), CALLS as usize);
}
