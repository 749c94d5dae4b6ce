//! Pre-warmed OpenAI connections (`OPENAI_POOL_MAX`): a call takes one and only sends
//! `session.update`; one that died while idle is replaced without failing the call; and the
//! setup time (stream start → `session.updated`) with and without the pool, against a mock with
//! 50 ms of simulated network delay. Runs on the driver `RUNTIME` picks (see tests/common).

mod common;

use std::time::{Duration, Instant};

use callbridge_testkit::sim::caller::{run_call, CallOutcome, CallerConfig};
use callbridge_testkit::sim::script::Script;
use common::{closed_sessions, eventually, mock, run_signed_call, Proxy, RawStream, AUTH_TOKEN};

/// The log filter that shows the pool's lines (`openai pool: warming ended idle=…`, `openai
/// pool: checkout idle=…`), which [`pool_ready`] reads.
const POOL_LOG: (&str, &str) = ("LOG_LEVEL", "info,callbridge::openai::pool=debug");

/// The idle connections in the pool's latest line (`None` before the first). The proxy writes
/// these lines under the pool's lock, so the latest one is the pool now (as long as its 1 s tick
/// has retired or discarded nothing since: these tests keep connections younger than
/// `OPENAI_POOL_MAX_IDLE_SECS` and alive while they rely on this).
fn pool_idle(proxy: &Proxy) -> Option<usize> {
    let log = proxy.log();
    log.lines()
        .rfind(|l| l.contains("openai pool: warming ended") || l.contains("openai pool: checkout"))
        .and_then(|l| l.split("idle=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Waits until the pool holds a warm connection (the proxy has read its `session.created`). The
/// proxy must run with [`POOL_LOG`].
async fn pool_ready(proxy: &Proxy) {
    let ready = eventually(Duration::from_secs(10), || {
        pool_idle(proxy).is_some_and(|idle| idle >= 1)
    })
    .await;
    assert!(ready, "the pool did not warm; log:\n{}", proxy.log());
}

/// Waits until the mock has seen `n` connections (at most 5 s).
async fn connections(mock: &callbridge_testkit::mock::server::MockServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.sessions().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} connections",
            mock.sessions().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_takes_a_pre_warmed_connection() {
    let mock = mock(|_| {}).await;
    // One worker, so the call lands where the pool is.
    let proxy = Proxy::with_mock(
        &mock,
        &[("OPENAI_POOL_MAX", "2"), ("WORKERS", "1"), POOL_LOG],
    );
    pool_ready(&proxy).await;
    let call_started = Instant::now();
    run_signed_call(
        &proxy,
        CallerConfig::new(proxy.addr, 3, Script::hello_then_hang_up(2_000)),
    )
    .await;
    let used = closed_sessions(&mock, 1, Duration::from_secs(2)).await;
    let used = used
        .iter()
        .find(|s| !s.stats.session_updates.is_empty())
        .expect("the call's session");
    assert!(
        used.opened_at < call_started,
        "the call used a connection opened before it started"
    );
    assert_eq!(used.stats.errors.len(), 0, "{:?}", used.stats.errors);
    // The pool refills behind the call.
    connections(&mock, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_that_died_while_idle_is_replaced_without_failing_the_call() {
    // The first connection (the pool's) is closed by the server 150 ms after it opens.
    let mock = mock(|c| c.short_sessions = Some((1, 150))).await;
    let proxy = Proxy::with_mock(&mock, &[("OPENAI_POOL_MAX", "1"), ("WORKERS", "1")]);
    connections(&mock, 1).await;
    assert!(
        eventually(Duration::from_secs(5), || mock.sessions()[0]
            .closed_at
            .is_some())
        .await,
        "the first connection died"
    );
    run_signed_call(
        &proxy,
        CallerConfig::new(proxy.addr, 4, Script::hello_then_hang_up(2_000)),
    )
    .await;
    let log = proxy.log();
    assert!(log.contains("died while idle"), "log:\n{log}");
    assert!(
        !log.contains("reason=openai"),
        "the call did not fail on the AI leg:\n{log}"
    );
    let used = closed_sessions(&mock, 2, Duration::from_secs(2))
        .await
        .into_iter()
        .find(|s| !s.stats.session_updates.is_empty())
        .expect("the call's session");
    assert!(
        used.conn_no >= 2,
        "the call did not use the dead connection"
    );
}

/// Stream start → `session.updated` as the proxy measured it (its `session ready` log line).
async fn setup_ms(pool: &str, n: u32) -> Vec<u64> {
    let mock = mock(|c| c.latency = Duration::from_millis(50)).await;
    let proxy = Proxy::with_mock(
        &mock,
        &[
            ("OPENAI_POOL_MAX", pool),
            ("WORKERS", "1"),
            (
                "LOG_LEVEL",
                "info,callbridge::runtime=debug,callbridge::openai::pool=debug",
            ),
        ],
    );
    // Without the pool the proxy is ready when it says it listens (`Proxy::with_mock` waited).
    if pool != "0" {
        pool_ready(&proxy).await;
    }
    let mut out = Vec::new();
    for i in 0..n {
        let mut raw = RawStream::open(proxy.addr, 100 + i).await;
        raw.start().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let ms = loop {
            let log = proxy.log();
            let found = log
                .lines()
                .filter(|l| l.contains("session ready"))
                .nth(i as usize)
                .and_then(|l| l.split("setup_ms=").nth(1))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(ms) = found {
                break ms;
            }
            assert!(Instant::now() < deadline, "no session ready line:\n{log}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        out.push(ms);
        if std::env::var("POOL_DEBUG").is_ok() {
            eprintln!("{}", proxy.log());
        }
        raw.stop().await;
        let _ = raw.until_closed(Duration::from_secs(2)).await;
        // The pool has refilled before the next call.
        if pool != "0" {
            pool_ready(&proxy).await;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_cuts_setup_time_against_a_50_ms_network() {
    let without = setup_ms("0", 3).await;
    let with = setup_ms("2", 3).await;
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!(
        "runtime={} mock latency 50 ms: stream start -> session.updated, pool off {:?} ms (median {}), pool on {:?} ms (median {})",
        common::runtime(),
        without,
        median(&without),
        with,
        median(&with)
    );
    // Without the pool: handshake, session.created and session.updated each wait 50 ms.
    assert!(median(&without) >= 150, "{without:?}");
    // With it only session.updated does.
    assert!(
        median(&with) + 75 < median(&without),
        "{with:?} vs {without:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_retired_politely_and_replaced() {
    let mock = mock(|_| {}).await;
    let _proxy = Proxy::with_mock(
        &mock,
        &[
            ("OPENAI_POOL_MAX", "1"),
            ("OPENAI_POOL_MAX_IDLE_SECS", "0.3"),
            ("WORKERS", "1"),
        ],
    );
    // Warmed at ~0 s, retired at the 1 s tick, replaced, retired again at 2 s…
    connections(&mock, 3).await;
    let closed = closed_sessions(&mock, 2, Duration::from_secs(3)).await;
    assert!(closed.len() >= 2);
    for s in &closed {
        assert!(
            s.close_reason.contains("client closed (1000)"),
            "retired with a close frame: {}",
            s.close_reason
        );
        assert!(s.stats.session_updates.is_empty(), "no call used it");
    }
}

/// Records, per mock session, the call numbers in the tags of the caller audio it received.
#[derive(Debug)]
struct TagTap(std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>);

impl callbridge_testkit::mock::tap::SessionTap for TagTap {
    fn input_audio(&mut self, _now: Instant, audio: &[u8]) {
        let mut seen = self.0.lock().unwrap();
        for frame in audio.chunks_exact(callbridge_testkit::sim::script::FRAME_BYTES) {
            if let Some((call, _)) = callbridge_testkit::sim::script::read_tag(frame) {
                seen.insert(call);
            }
        }
    }
    fn output_audio(&mut self, _now: Instant, _audio: &mut [u8]) {}
    fn speech_started(&mut self, _now: Instant) {}
    fn truncated(&mut self, _item_id: &str, _audio_end_ms: u64) {}
}

/// Many overlapping calls through a small pool (checkouts racing the refill and the 1 s tick):
/// every mock session that received caller audio received it from exactly one call, and every
/// call's audio reached exactly one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pool_every_session_serves_exactly_one_call() {
    type Seen = std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>;
    // (when the session opened, the calls whose audio it received)
    let sessions: std::sync::Arc<std::sync::Mutex<Vec<(Instant, Seen)>>> = Default::default();
    let factory_sessions = std::sync::Arc::clone(&sessions);
    let mock = mock(move |c| {
        c.session.tap = Some(std::sync::Arc::new(move || {
            let seen = Seen::default();
            factory_sessions
                .lock()
                .unwrap()
                .push((Instant::now(), std::sync::Arc::clone(&seen)));
            Box::new(TagTap(seen)) as Box<dyn callbridge_testkit::mock::tap::SessionTap>
        }))
    })
    .await;
    let proxy = Proxy::with_mock(&mock, &[("OPENAI_POOL_MAX", "4"), POOL_LOG]);
    pool_ready(&proxy).await;
    const CALLS: u32 = 24;
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    let start_of = move |call_no: u32| t0 + Duration::from_millis(u64::from(call_no) * 50);
    for call_no in 1..=CALLS {
        let mut caller = CallerConfig::new(proxy.addr, call_no, Script::hello_then_hang_up(1_500));
        caller.auth_token = Some(AUTH_TOKEN.into());
        caller.public_host = Some(common::PUBLIC_HOST.into());
        caller.frame_tag = Some(call_no);
        set.spawn(async move {
            // Staggered over 1.2 s: some calls find the pool full, some empty, some mid-refill.
            tokio::time::sleep_until(start_of(call_no).into()).await;
            run_call(caller).await
        });
    }
    while let Some(done) = set.join_next().await {
        let report = done.expect("task").expect("call ran");
        assert_eq!(
            report.outcome,
            CallOutcome::Completed,
            "log:\n{}",
            proxy.log()
        );
    }
    let seen: Vec<(Instant, std::collections::BTreeSet<u32>)> = sessions
        .lock()
        .unwrap()
        .iter()
        .map(|(opened, s)| (*opened, s.lock().unwrap().clone()))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    for (_, s) in &seen {
        assert_eq!(s.len(), 1, "one session got audio of calls {s:?}");
    }
    let pooled = seen
        .iter()
        .filter(|(opened, s)| s.iter().all(|&c| *opened < start_of(c)))
        .count();
    assert!(pooled > 0, "no call used a pre-warmed connection");
    let seen: Vec<std::collections::BTreeSet<u32>> = seen.into_iter().map(|(_, s)| s).collect();
    let mut calls: Vec<u32> = seen.iter().flatten().copied().collect();
    calls.sort_unstable();
    assert_eq!(
        calls,
        (1..=CALLS).collect::<Vec<_>>(),
        "each call's audio in exactly one session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_start_token_is_wrong_takes_nothing_from_the_pool() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(
        &mock,
        &[("OPENAI_POOL_MAX", "1"), ("WORKERS", "1"), POOL_LOG],
    );
    pool_ready(&proxy).await;
    let mut raw = RawStream::open(proxy.addr, 9).await;
    raw.params
        .iter_mut()
        .find(|(k, _)| k == "token")
        .expect("a token parameter")
        .1 = "AAAAAAAAAAAAAAAA".into();
    raw.start().await;
    assert_eq!(raw.until_closed(Duration::from_secs(5)).await, Some(1000));
    assert!(common::logged(&proxy, "stream refused: start token missing or wrong").await);
    assert!(common::logged(&proxy, "call finished").await);
    // The warm connection is still idle: no session.update reached it, and none other opened.
    let sessions = mock.sessions();
    assert_eq!(sessions.len(), 1, "one connection: the pool's");
    assert!(
        sessions[0].closed_at.is_none(),
        "the pooled connection is still open"
    );
    assert!(
        sessions[0].stats.session_updates.is_empty(),
        "nobody used it"
    );
}
