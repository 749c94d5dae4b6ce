//! 50 calls at once through the real binary: every frame delivered once, in order, byte-exact,
//! both ways, on every call.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use callbridge_testkit::sim::caller::{run_call, CallOutcome, CallerConfig};
use callbridge_testkit::sim::script::Script;
use common::{assert_delivered_byte_exact, call_of, closed_sessions, mock, Proxy, AUTH_TOKEN};

const CALLS: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_deliver_every_frame_once_in_order_both_ways() {
    let mock = mock(|m| m.self_check = false).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let mut tasks = Vec::new();
    for n in 1..=CALLS {
        let mut caller = CallerConfig::new(proxy.addr, n, Script::hello_then_hang_up(4_500));
        caller.auth_token = Some(AUTH_TOKEN.into());
        caller.public_host = Some(common::PUBLIC_HOST.into());
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
    let mut seen = HashMap::new();
    for s in &sessions {
        assert!(s.stats.errors.is_empty(), "{:?}", s.stats.errors);
        let call = call_of(s);
        assert!(
            seen.insert(call, s.conn_no).is_none(),
            "call {call} reached OpenAI twice"
        );
        let stream = reports[&call].stream.as_ref().unwrap();
        assert!(
            stream.violations.is_empty(),
            "call {call}: {:?}",
            stream.violations
        );
        assert_delivered_byte_exact(call, s, stream);
    }
    assert_eq!(seen.len(), CALLS as usize);
}
