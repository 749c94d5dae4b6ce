//! Personal data stays out of the log at info level: phone numbers are masked to their last four
//! digits and what was said is never logged, unless `LOG_TRANSCRIPTS=true` asks for it (at
//! debug level).

mod common;

use std::time::Duration;

use callbridge_testkit::sim::script::Script;
use common::{closed_sessions, mock, run_signed_call, signed_caller, Proxy};

/// One whole call through `proxy`; returns the proxy's log once the call is finished.
async fn one_call(proxy: &Proxy, mock: &callbridge_testkit::mock::server::MockServer) -> String {
    let caller = signed_caller(proxy, 9, Script::hello_then_hang_up(4_500));
    run_signed_call(proxy, caller).await;
    closed_sessions(mock, 1, Duration::from_secs(5)).await;
    assert!(common::logged(proxy, "call finished").await);
    proxy.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_masked_and_transcripts_stay_out_of_the_log_by_default() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let log = one_call(&proxy, &mock).await;
    // The caller is +819012345678, the called number +81501234567.
    assert!(
        !log.contains("9012345678") && !log.contains("501234567"),
        "{log}"
    );
    assert!(
        log.contains("from=+…5678") && log.contains("to=+…4567"),
        "{log}"
    );
    assert!(
        !log.contains("check my order"),
        "a transcript in the log:\n{log}"
    );
    assert!(
        !log.contains("Certainly"),
        "a transcript in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_transcripts_puts_what_was_said_in_the_debug_log() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(
        &mock,
        &[
            ("LOG_TRANSCRIPTS", "true"),
            ("LOG_LEVEL", "info,callbridge::runtime=debug"),
        ],
    );
    let log = one_call(&proxy, &mock).await;
    let line = log
        .lines()
        .find(|l| l.contains("caller: Hello, I'd like to check my order."))
        .unwrap_or_else(|| panic!("no caller transcript:\n{log}"));
    assert!(line.contains("DEBUG"), "{line}");
    assert!(!log.contains("9012345678"), "numbers stay masked:\n{log}");
}
