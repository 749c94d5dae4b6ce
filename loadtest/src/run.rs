//! One fixed-N run: N simulated callers started over the ramp-up, all hanging up when the
//! duration ends; the proxy and this process sampled meanwhile; the report built at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use callbridge_testkit::mock::server::MockServer;
use callbridge_testkit::sim::caller::{run_call, CallOutcome, CallReport, CallerConfig};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::hist::Histogram;
use crate::probe::{lock, CallState, Probe, Shared, SharedSlot};
use crate::procstat::{self, ProcSample};
use crate::proxy_metrics;
use crate::report::{
    truncation_stats, CallDetail, FrameReport, GeneratorReport, LatencyReport, LatencyStats,
    ProxyReport, Report, MAX_CALL_DETAILS,
};
use crate::scenario;
use crate::tags::{FrameCounts, UplinkExpect};

/// A call may run this much past the planned end (closing handshakes, a slow proxy) before it
/// is abandoned and counted failed.
const CALL_GRACE: Duration = Duration::from_secs(30);

/// How long the mock's sessions may take to close after the last caller hung up.
const MOCK_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Server and generator are sampled this often (RSS peak, progress).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What the callers talk to.
pub struct Target {
    /// Where callers connect (the proxy, or the direct-mode facade).
    pub addr: SocketAddr,
    /// The proxy's pid (`None` in direct mode: nothing to sample).
    pub proxy_pid: Option<u32>,
    /// The mock server (`None` in direct mode: the mock runs inside the facade).
    pub mock: Option<MockServer>,
    /// Where the mock's taps find the current run.
    pub slot: SharedSlot,
    /// Sign webhooks and upgrades with this Twilio auth token.
    pub auth_token: Option<String>,
    /// Next call number (unique over the whole process, so ramp steps never reuse a CallSid).
    pub next_call_no: u32,
    /// `proxy` or `direct`.
    pub mode: &'static str,
    /// The direct-mode facade (kept alive for the run).
    pub _facade: Option<crate::direct::Facade>,
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Concurrent calls.
    pub calls: u32,
    /// From the first call's start to everyone's hang-up.
    pub duration: Duration,
    /// Calls start evenly spread over this.
    pub ramp_up: Duration,
    /// Print a progress line this often (`None`: never).
    pub progress: Option<Duration>,
    /// A fault to inject once (self-test of the checkers).
    pub fault: Option<crate::probe::Fault>,
}

/// How one call went.
struct CallDone {
    call: Arc<CallState>,
    result: Result<CallReport, String>,
}

/// Runs `spec` against `target` and reports.
pub async fn run(target: &mut Target, spec: &RunSpec) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        fault: spec.fault,
        ..Shared::default()
    });
    *lock(&target.slot) = Arc::clone(&shared);
    let proxy_pid = target.proxy_pid.map(|p| p.to_string());
    let proxy0 = proxy_pid.as_deref().map(procstat::sample).transpose()?;
    // The proxy's own latency histograms before the run (the run's share is the difference).
    let metrics0 = if target.mode == "proxy" {
        proxy_metrics::scrape_or_note(target.addr).await
    } else {
        None
    };
    let gen0 = procstat::sample("self")?;
    if let Some(mock) = &target.mock {
        mock.take_closed_sessions(); // a previous step's records
    }

    let t0 = Instant::now() + Duration::from_millis(50);
    let end_at = t0 + spec.duration;
    let n = spec.calls.max(1);
    let mut set = JoinSet::new();
    for i in 0..n {
        let call_no = target.next_call_no;
        target.next_call_no += 1;
        let start_at = t0 + spec.ramp_up.mul_f64(f64::from(i) / f64::from(n));
        let total_ms = u32::try_from(end_at.saturating_duration_since(start_at).as_millis())
            .unwrap_or(u32::MAX);
        let script = scenario::looping(total_ms);
        let call = Arc::new(CallState::new(UplinkExpect {
            call_no,
            script: script.clone(),
        }));
        shared.add_call(Arc::clone(&call));
        let mut cfg = CallerConfig::new(target.addr, call_no, script);
        cfg.frame_tag = Some(call_no);
        cfg.keep_payloads = false;
        cfg.auth_token = target.auth_token.clone();
        if cfg.auth_token.is_some() {
            cfg.public_host = Some(crate::proxy::PUBLIC_HOST.to_owned());
        }
        cfg.probe = Some(Arc::new(Probe {
            shared: Arc::clone(&shared),
            call: Arc::clone(&call),
        }));
        let shared = Arc::clone(&shared);
        set.spawn(async move {
            tokio::time::sleep_until(start_at).await;
            shared.counters.active.fetch_add(1, Ordering::Relaxed);
            let limit = end_at.saturating_duration_since(Instant::now()) + CALL_GRACE;
            let result = match tokio::time::timeout(limit, run_call(cfg)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(format!("simulator: {}", short(&e.to_string()))),
                Err(_) => Err("call did not end in time".to_owned()),
            };
            shared.counters.active.fetch_sub(1, Ordering::Relaxed);
            CallDone { call, result }
        });
    }

    // Wait for the calls, sampling the proxy (RSS peak) and printing progress.
    let mut done = Vec::with_capacity(n as usize);
    let mut rss_peak = proxy0.map_or(0, |s| s.rss_bytes);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut last_print = Instant::now();
    let mut last = (Instant::now(), proxy0, gen0, 0u64);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(d)) => done.push(d),
                Some(Err(e)) => anyhow::bail!("a caller task panicked: {e}"),
                None => break,
            },
            _ = tick.tick() => {
                let proxy_now = proxy_pid.as_deref().and_then(|p| procstat::sample(p).ok());
                if let Some(s) = proxy_now {
                    rss_peak = rss_peak.max(s.rss_bytes);
                }
                if let Some(every) = spec.progress {
                    if last_print.elapsed() >= every {
                        last_print = Instant::now();
                        let gen_now = procstat::sample("self").ok();
                        eprintln!("{}", progress_line(&shared, t0, n, &last, proxy_now, gen_now));
                        last = (Instant::now(), proxy_now, gen_now.unwrap_or(last.2), shared.counters.frames_sent.load(Ordering::Relaxed));
                    }
                }
            }
        }
    }
    let wall = t0.elapsed();

    // Let the mock's sessions see the proxy close, so every uplink frame is counted.
    let (mut mock_errors, mut mock_open) = (0, 0);
    if let Some(mock) = &target.mock {
        let deadline = Instant::now() + MOCK_DRAIN_TIMEOUT;
        while mock.open_sessions() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        mock_open = mock.open_sessions() as u64;
        mock_errors = mock
            .take_closed_sessions()
            .iter()
            .map(|s| s.stats.errors.len() as u64)
            .sum();
    }
    let proxy1 = proxy_pid.as_deref().map(procstat::sample).transpose()?;
    let proxy_latency = match &metrics0 {
        Some(before) => proxy_metrics::scrape_or_note(target.addr)
            .await
            .map(|after| proxy_metrics::over_run(before, &after)),
        None => None,
    };
    let gen1 = procstat::sample("self")?;

    let mut report = Report {
        mode: target.mode.to_owned(),
        calls: n,
        duration_s: spec.duration.as_secs_f64(),
        ramp_up_s: spec.ramp_up.as_secs_f64(),
        wall_s: wall.as_secs_f64(),
        mock_errors,
        mock_sessions_open_at_end: mock_open,
        unattributed_sessions: shared
            .counters
            .unattributed_sessions
            .load(Ordering::Relaxed),
        ..Report::default()
    };
    let mut frames = FrameReport {
        downlink_media_messages: shared.counters.media_received.load(Ordering::Relaxed),
        unmatched_latency: shared.counters.unmatched_latency.load(Ordering::Relaxed),
        uplink_held_at_setup: shared.counters.uplink_held_at_setup.load(Ordering::Relaxed),
        ..FrameReport::default()
    };
    let (mut clears, mut trunc_errors) = (0u64, Vec::new());
    for d in &done {
        let mut down = lock(&d.call.down_check);
        down.finish();
        let blocks_sent = d.call.blocks_sent.load(Ordering::Relaxed);
        frames.downlink_sent += blocks_sent;
        frames.downlink_in_flight_at_hangup += blocks_sent.saturating_sub(down.seq.next());
        let down_counts = down.seq.counts(None);
        drop(down);
        frames.downlink.add(&down_counts);
        let cr = match &d.result {
            Ok(r) => r,
            Err(why) => {
                *report.failures.entry(why.clone()).or_default() += 1;
                let up = lock(&d.call.up_check).counts(None);
                frames.uplink.add(&up);
                note_bad_call(&mut report, d, 0, up, down_counts, Some(why.clone()));
                continue;
            }
        };
        shared.lat.webhook.record(cr.webhook_latency);
        if let Some(u) = cr.upgrade_latency {
            shared.lat.upgrade.record(u);
        }
        let stream = cr.stream.as_ref();
        let sent = stream.map_or(0, |s| s.frames_sent);
        frames.uplink_sent += u64::from(sent);
        let up = lock(&d.call.up_check).counts(Some(sent));
        frames.uplink.add(&up);
        if let Some(s) = stream {
            for v in &s.violations {
                *report_entry(&mut report.violations, format!("{:?}", v.kind)) += 1;
            }
            let truncs = lock(&d.call.truncates);
            for c in s.clears.iter().filter(|c| c.was_playing) {
                clears += 1;
                let t = c
                    .item_id
                    .as_deref()
                    .and_then(|item| truncs.iter().find(|(i, _)| i == item));
                if let Some((_, end_ms)) = t {
                    trunc_errors.push(*end_ms as i64 - c.item_played_ms as i64);
                }
            }
        }
        let failed = failure(cr);
        if failed.is_some() || up.any_error() || down_counts.any_error() {
            note_bad_call(&mut report, d, sent, up, down_counts, failed.clone());
        }
        match failed {
            None => report.calls_completed += 1,
            Some(why) => *report.failures.entry(why).or_default() += 1,
        }
    }
    report.calls_failed = n - report.calls_completed;
    report.truncation = truncation_stats(clears, &trunc_errors);
    let l = &shared.lat;
    report.latency = LatencyReport {
        uplink: stats(&l.uplink),
        downlink: stats(&l.downlink),
        barge_in: stats(&l.barge_in),
        setup_webhook: stats(&l.webhook),
        setup_upgrade: stats(&l.upgrade),
        setup_first_audio: stats(&l.first_audio),
    };
    if let (Some(p0), Some(p1), Some(pid)) = (proxy0, proxy1, target.proxy_pid) {
        let cpu = p1.cpu.saturating_sub(p0.cpu).as_secs_f64();
        let forwarded = frames.uplink.ok + frames.downlink_media_messages;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        report.proxy = Some(ProxyReport {
            pid,
            cpu_s: cpu,
            cpu_pct: 100.0 * cpu / wall.as_secs_f64().max(1e-9),
            forwarded_frames: forwarded,
            cpu_us_per_frame: if forwarded == 0 {
                0.0
            } else {
                cpu * 1e6 / forwarded as f64
            },
            rss_idle_mib: mib(p0.rss_bytes),
            rss_peak_mib: mib(rss_peak.max(p1.rss_bytes)),
            rss_per_call_kib: rss_peak.max(p1.rss_bytes).saturating_sub(p0.rss_bytes) as f64
                / 1024.0
                / f64::from(n),
        });
    }
    let gcpu = gen1.cpu.saturating_sub(gen0.cpu).as_secs_f64();
    report.proxy_latency = proxy_latency;
    report.generator = GeneratorReport {
        cpu_s: gcpu,
        cpu_pct: 100.0 * gcpu / wall.as_secs_f64().max(1e-9),
    };
    report.frames = frames;
    Ok(report)
}

/// Lists a call in [`Report::bad_calls`] (the first few only).
fn note_bad_call(
    report: &mut Report,
    d: &CallDone,
    sent: u32,
    uplink: FrameCounts,
    downlink: FrameCounts,
    failure: Option<String>,
) {
    if report.bad_calls.len() < MAX_CALL_DETAILS {
        report.bad_calls.push(CallDetail {
            call_sid: callbridge_testkit::sim::webhook::sid(
                "CA",
                u128::from(d.call.expect.call_no),
            ),
            uplink_sent: u64::from(sent),
            uplink,
            downlink,
            failure,
        });
    }
}

fn report_entry(map: &mut BTreeMap<String, u32>, key: String) -> &mut u32 {
    map.entry(key).or_default()
}

fn stats(h: &Histogram) -> LatencyStats {
    LatencyStats::of(&h.snapshot())
}

/// Why a call that ran counts as failed, if it does.
fn failure(r: &CallReport) -> Option<String> {
    let why = match &r.outcome {
        CallOutcome::Completed => {
            let s = r.stream.as_ref()?;
            if !s.violations.is_empty() {
                "protocol violations".to_owned()
            } else if !s.stop_sent {
                "hung up without stop".to_owned()
            } else {
                return None;
            }
        }
        CallOutcome::ProxyClosed { code } => format!("proxy closed the stream ({code:?})"),
        CallOutcome::StreamLost => "stream lost without a close".to_owned(),
        CallOutcome::WsProtocolError { reason } => format!("websocket error: {}", short(reason)),
        CallOutcome::Fallback => "fallback TwiML (no stream)".to_owned(),
        CallOutcome::WebhookRefused { status } => format!("webhook answered {status}"),
        CallOutcome::InvalidTwiml { reason } => format!("invalid TwiML: {}", short(reason)),
        CallOutcome::UpgradeRefused { status } => format!("upgrade refused ({status})"),
    };
    Some(why)
}

/// The first 80 characters (failure reasons are grouped by text).
fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// `[ 12s] calls 300/300 | up 45012 fr p99 1.20 ms | down … | proxy 38% 41 MiB | gen 45%`.
fn progress_line(
    shared: &Shared,
    t0: Instant,
    n: u32,
    last: &(Instant, Option<ProcSample>, ProcSample, u64),
    proxy_now: Option<ProcSample>,
    gen_now: Option<ProcSample>,
) -> String {
    let c = &shared.counters;
    let dt = last.0.elapsed().as_secs_f64().max(1e-9);
    let pct = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) => format!(
            "{:.0}%",
            100.0 * b.cpu.saturating_sub(a.cpu).as_secs_f64() / dt
        ),
        _ => "-".to_owned(),
    };
    let p99 = |h: &Histogram| h.snapshot().quantile_ns(0.99) as f64 / 1e6;
    let up = c.uplink_ok.load(Ordering::Relaxed);
    let down = c.downlink_ok.load(Ordering::Relaxed);
    let fps = (c.frames_sent.load(Ordering::Relaxed).saturating_sub(last.3)) as f64 / dt;
    format!(
        "[{:>4.0}s] calls {}/{} | sent {:.0} fr/s | up {} ok, p99 {:.2} ms | down {} ok, p99 {:.2} ms | barge-ins {} | proxy cpu {} rss {} | generator cpu {}",
        t0.elapsed().as_secs_f64(),
        c.active.load(Ordering::Relaxed),
        n,
        fps,
        up,
        p99(&shared.lat.uplink),
        down,
        p99(&shared.lat.downlink),
        shared.lat.barge_in.count(),
        pct(last.1, proxy_now),
        proxy_now.map_or("-".to_owned(), |s| format!("{:.1} MiB", s.rss_bytes as f64 / 1048576.0)),
        pct(Some(last.2), gen_now),
    )
}

/// Counts of one direction summed (used by the ramp's step summary).
pub fn frame_errors(r: &Report) -> u64 {
    let e = |c: &FrameCounts| c.lost + c.duplicated + c.reordered + c.corrupt;
    e(&r.frames.uplink) + e(&r.frames.downlink)
}
