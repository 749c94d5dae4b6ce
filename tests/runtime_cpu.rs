//! A small side-by-side measurement of the two drivers (not the 1,000-call load test): N
//! concurrent simulated calls through the real binary, once per driver, reporting the proxy
//! process's CPU time per forwarded frame (whole process: setup, HTTP and logging included).
//!
//! Ignored by default (it takes ~20 s and wants a quiet machine). Run:
//! `cargo test --release --test runtime_cpu -- --ignored --nocapture` (`CPU_CALLS=200` for more,
//! `CPU_RUNTIMES=uring` for one driver).

mod common;

use std::time::{Duration, Instant};

use callbridge_testkit::sim::caller::{run_call, CallOutcome, CallerConfig};
use callbridge_testkit::sim::script::Script;
use common::{closed_sessions, mock, Proxy, AUTH_TOKEN};

/// User + system CPU time of `pid` so far (from /proc; USER_HZ is 100 on Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

struct Outcome {
    frames: u64,
    cpu: Duration,
    wall: Duration,
}

async fn measure(runtime: &str, calls: u32) -> Outcome {
    let mock = mock(|m| m.self_check = false).await;
    let proxy = Proxy::with_mock(&mock, &[("RUNTIME", runtime), ("LOG_LEVEL", "warn")]);
    let cpu_before = cpu_time(proxy.pid());
    let began = Instant::now();
    let mut tasks = Vec::new();
    for n in 1..=calls {
        let mut caller = CallerConfig::new(proxy.addr, n, Script::hello_then_hang_up(4_500));
        caller.auth_token = Some(AUTH_TOKEN.into());
        caller.public_host = Some(common::PUBLIC_HOST.into());
        tasks.push(tokio::spawn(async move {
            // Spread the starts over calls × 5 ms like real arrivals (the load's shape, not a
            // wait for anything).
            tokio::time::sleep(Duration::from_millis(u64::from(n) * 5)).await;
            run_call(caller).await
        }));
    }
    for t in tasks {
        let report = t.await.unwrap().expect("call ran");
        assert_eq!(report.outcome, CallOutcome::Completed, "{runtime}");
    }
    let sessions = closed_sessions(&mock, calls as usize, Duration::from_secs(5)).await;
    let wall = began.elapsed();
    let cpu = cpu_time(proxy.pid()) - cpu_before;
    let frames: u64 = sessions
        .iter()
        .map(|s| {
            s.stats.appends.len() as u64
                + s.stats
                    .audio_deltas
                    .iter()
                    .map(|a| a.deltas.len() as u64)
                    .sum::<u64>()
        })
        .sum();
    Outcome { frames, cpu, wall }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
async fn cpu_per_forwarded_frame_epoll_vs_uring() {
    let calls: u32 = std::env::var("CPU_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // `CPU_RUNTIMES=uring` measures one driver only (e.g. under `perf record`).
    let runtimes = std::env::var("CPU_RUNTIMES").unwrap_or_else(|_| "epoll,uring".to_owned());
    let mut rows = Vec::new();
    for runtime in runtimes.split(',') {
        let o = measure(runtime, calls).await;
        let per_frame = o.cpu.as_secs_f64() * 1e6 / o.frames.max(1) as f64;
        println!(
            "{runtime}: {calls} calls, {} frames forwarded in {:.1} s, proxy CPU {:.2} s = {per_frame:.1} us/frame",
            o.frames,
            o.wall.as_secs_f64(),
            o.cpu.as_secs_f64()
        );
        rows.push(per_frame);
    }
    if let [epoll, uring] = rows[..] {
        println!("uring / epoll CPU per frame: {:.2}", uring / epoll);
    }
}
