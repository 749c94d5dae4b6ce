//! `callbridge-loadtest`: many concurrent simulated Twilio callers against callbridge, with the
//! mock OpenAI Realtime server in this process, so both ends of every frame are timed on one
//! clock. See the README section "Load test".
//!
//! # Layout
//! - `scenario`: the looping conversation every caller follows.
//! - `tags`: frame tags and the lost/duplicated/reordered/corrupt checkers.
//! - `probe`: per-call shared state, the mock's tap and the caller's probe.
//! - `hist`: the lock-free latency histogram.
//! - `proxy`: spawning or attaching the proxy; loopback only.
//! - `procstat`: CPU and RSS from `/proc`.
//! - `run`: one fixed-N run; `report`: the report, its verdict, table and JSON.
//! - `soak`: calls coming and going for a long time; RSS, fds, threads and disk sampled, slopes
//!   fitted (`fit`, Theil–Sen) and judged.
//! - `direct`: the floor: callers against the mock with callbridge's core in-process, no proxy.
//! - `relay_floor`: the loopback relay floor: a minimal relay per IO model, no callbridge.

mod direct;
mod fit;
mod hist;
mod probe;
mod procstat;
mod proxy;
mod proxy_metrics;
mod relay_floor;
mod report;
mod run;
mod scenario;
mod soak;
mod tags;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use callbridge_testkit::mock::server::{MockServer, MockServerConfig};

use crate::probe::{tap_factory, Shared, SharedSlot};
use crate::proxy::{parse_env_pair, require_loopback, Proxy, SpawnSpec};
use crate::run::{RunSpec, Target};

/// Hard cap on concurrent calls (each holds ~4 descriptors across the processes and a task).
const MAX_CALLS: u32 = 20_000;

/// Hard cap on a run's duration.
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Hard cap on a soak's duration (a week: the point is to run long).
const MAX_SOAK_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Ramp steps at most.
const MAX_RAMP_STEPS: u32 = 100;

/// Load test for callbridge: simulated Twilio callers ⇄ callbridge ⇄ mock OpenAI, on loopback.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N concurrent calls for a duration.
    Run(RunArgs),
    /// Raise N step by step until the p99 budget breaks; report the largest N within it.
    Ramp(RampArgs),
    /// Calls coming and going for a long time (each a random 30–180 s, replaced when it ends):
    /// samples the server's RSS, fds, threads and DATA_DIR every 10 s, fits the slopes and fails
    /// past the limits (README "Soak").
    Soak(SoakArgs),
    /// The loopback relay floor: what a minimal relay (epoll, tokio, io_uring) costs per frame
    /// with this traffic shape (README "The loopback relay floor").
    RelayFloor(relay_floor::FloorArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Concurrent calls.
    #[arg(long, default_value_t = 100)]
    calls: u32,
    /// Run length (e.g. 60s, 2m, 500ms; a bare number is seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Calls start evenly spread over this (default: min(5 s, duration / 4)).
    #[arg(long, value_parser = parse_duration)]
    ramp_up: Option<Duration>,
    /// Fail if the uplink or downlink p99 exceeds this many ms.
    #[arg(long)]
    fail_p99_ms: Option<f64>,
    /// Self-test: inject one fault (after the first 50 frames of a call) to show the checkers
    /// catch it; the run must then fail.
    #[arg(long, value_enum)]
    inject_fault: Option<crate::probe::Fault>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct RampArgs {
    /// First step's concurrent calls.
    #[arg(long, default_value_t = 100)]
    start: u32,
    /// Calls added per step.
    #[arg(long, default_value_t = 100)]
    step: u32,
    /// Largest N tried.
    #[arg(long, default_value_t = 3000)]
    max: u32,
    /// Length of each step.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    step_duration: Duration,
    /// Ramp-up within each step (default: min(5 s, step duration / 4)).
    #[arg(long, value_parser = parse_duration)]
    ramp_up: Option<Duration>,
    /// The p99 budget (uplink and downlink), ms.
    #[arg(long, default_value_t = 20.0)]
    budget_ms: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SoakArgs {
    /// Concurrent calls (each slot gets a new call when its call ends).
    #[arg(long, default_value_t = 200)]
    calls: u32,
    /// How long new calls keep coming (e.g. 30m); the last ones end by then.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Shortest call.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    call_min: Duration,
    /// Longest call.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    call_max: Duration,
    /// The first calls start evenly spread over this (default: min(10 s, duration / 10)).
    #[arg(long, value_parser = parse_duration)]
    ramp_up: Option<Duration>,
    /// Sample interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Progress line interval.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    print_every: Duration,
    /// Seed of the call lengths.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fit the slopes from this time to the end (default: the second half).
    #[arg(long, value_parser = parse_duration)]
    slope_from: Option<Duration>,
    /// Fail when RSS grows faster than this over the slope window, KiB/s.
    #[arg(long, default_value_t = 0.5)]
    max_rss_slope_kib_s: f64,
    /// Compare RSS at the end with RSS at this time (default: a third of the duration).
    #[arg(long, value_parser = parse_duration)]
    rss_growth_from: Option<Duration>,
    /// Fail when RSS at the end exceeds RSS at --rss-growth-from by more than this, MiB.
    #[arg(long, default_value_t = 3.0)]
    max_rss_growth_mib: f64,
    /// Fail when DATA_DIR holds more than this many times the logical bytes at the end.
    #[arg(long, default_value_t = 3.0)]
    max_disk_ratio: f64,
    /// Fail when DATA_DIR grows faster than this over the slope window, KiB/s (off by default:
    /// without a retention the store grows with the data).
    #[arg(long)]
    max_disk_slope_kib_s: Option<f64>,
    /// The server's RETENTION (e.g. 2m): passed to it, and calls placed longer ago may be
    /// missing from the records at the end.
    #[arg(long, value_parser = parse_duration)]
    retention: Option<Duration>,
    #[command(flatten)]
    common: Common,
}

impl SoakArgs {
    /// The spec, with defaults filled in and every bound checked.
    fn spec(&self) -> anyhow::Result<soak::SoakSpec> {
        let d = self.duration;
        if d < Duration::from_secs(60) || d > MAX_SOAK_DURATION {
            bail!("--duration must be between 1 min and {MAX_SOAK_DURATION:?}");
        }
        if self.call_min < Duration::from_secs(1)
            || self.call_min > self.call_max
            || self.call_max > MAX_DURATION
        {
            bail!("need 1 s ≤ --call-min ≤ --call-max ≤ {MAX_DURATION:?}");
        }
        if self.sample_every < Duration::from_secs(1) || self.sample_every > d / 4 {
            bail!("--sample-every must be between 1 s and a quarter of --duration");
        }
        let ramp_up = self
            .ramp_up
            .unwrap_or_else(|| Duration::from_secs(10).min(d / 10));
        if ramp_up > d / 2 {
            bail!("--ramp-up must be at most half of --duration");
        }
        let slope_from = self.slope_from.unwrap_or(d / 2);
        let growth_from = self.rss_growth_from.unwrap_or(d / 3);
        if slope_from + 4 * self.sample_every > d || growth_from >= d {
            bail!("--slope-from and --rss-growth-from must leave samples before the end of --duration");
        }
        if self.retention.is_some_and(|r| r < Duration::from_secs(1)) {
            bail!("--retention must be at least 1 s");
        }
        for (name, v) in [
            ("--max-rss-slope-kib-s", self.max_rss_slope_kib_s),
            ("--max-rss-growth-mib", self.max_rss_growth_mib),
            ("--max-disk-ratio", self.max_disk_ratio),
            (
                "--max-disk-slope-kib-s",
                self.max_disk_slope_kib_s.unwrap_or(0.0),
            ),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("{name} must be a number ≥ 0");
            }
        }
        Ok(soak::SoakSpec {
            calls: self.calls,
            duration_s: d.as_secs_f64(),
            ramp_up_s: ramp_up.as_secs_f64(),
            call_min_s: self.call_min.as_secs_f64(),
            call_max_s: self.call_max.as_secs_f64(),
            sample_every_s: self.sample_every.as_secs_f64(),
            print_every_s: self.print_every.as_secs_f64(),
            seed: self.seed,
            limits: soak::Limits {
                slope_from_s: slope_from.as_secs_f64(),
                max_rss_slope_kib_s: self.max_rss_slope_kib_s,
                rss_growth_from_s: growth_from.as_secs_f64(),
                max_rss_growth_mib: self.max_rss_growth_mib,
                max_disk_ratio: self.max_disk_ratio,
                max_disk_slope_kib_s: self.max_disk_slope_kib_s,
                retention_s: self.retention.map(|r| r.as_secs_f64()),
            },
        })
    }
}

#[derive(Args, Clone)]
struct Common {
    /// The callbridge binary to spawn (default: `callbridge` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Pin the spawned server with `taskset -c LIST` (e.g. `1`).
    #[arg(long)]
    server_cpus: Option<String>,
    /// Pin this process (callers + mock) to `LIST` (e.g. `0`).
    #[arg(long)]
    generator_cpus: Option<String>,
    /// Extra environment for the spawned server, `KEY=VALUE` (repeatable), e.g. RUNTIME=uring.
    #[arg(long = "server-env", value_parser = parse_env_pair)]
    server_env: Vec<(String, String)>,
    /// Use an already running server at this loopback address instead of spawning one (its
    /// OPENAI_REALTIME_URL must point at --mock-listen).
    #[arg(long, requires = "server_pid", requires = "mock_listen")]
    target: Option<SocketAddr>,
    /// The pid of the --target server (for CPU and RSS).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Where the mock OpenAI server listens (loopback).
    #[arg(long)]
    mock_listen: Option<SocketAddr>,
    /// Sign webhooks and upgrades like Twilio with this auth token (the spawned server gets it
    /// as TWILIO_AUTH_TOKEN, with PUBLIC_HOST=loadtest.callbridge.invalid; an attached one must
    /// have the same). Without it the spawned server runs with ALLOW_UNSIGNED_WEBHOOKS=true.
    #[arg(long)]
    auth_token: Option<String>,
    /// The floor: no proxy; callers talk to callbridge's core and the mock inside this process.
    #[arg(long, conflicts_with_all = ["target", "server_bin", "server_cpus", "server_env"])]
    direct: bool,
    /// The OpenAI leg over TLS, as in production: the mock serves `wss://` with a throw-away
    /// certificate and the spawned server trusts it (OPENAI_EXTRA_CA_FILE).
    #[arg(long, conflicts_with_all = ["direct", "target"])]
    openai_tls: bool,
    /// Simulated network delay of the OpenAI leg, ms: the mock answers the handshake and sends
    /// each frame this much later (`mock-openai --latency-ms`). Shows what the connection pool
    /// (`--server-env OPENAI_POOL_MAX=N`) saves at call setup; downlink latencies grow by it.
    #[arg(long, default_value_t = 0, conflicts_with = "direct")]
    openai_latency_ms: u64,
    /// Print the report as JSON on stdout (the progress and the table go to stderr).
    #[arg(long)]
    json: bool,
    /// Progress line interval (0: none).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    progress: Duration,
    /// Generator worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    workers: Option<usize>,
}

/// `60s`, `1.5s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 60s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::RelayFloor(a) => relay_floor::main(a),
        _ => real_main(cli),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("callbridge-loadtest: {e:#}");
            std::process::exit(2);
        }
    }
}

fn common(cli: &Cli) -> &Common {
    match &cli.command {
        Command::Run(a) => &a.common,
        Command::Ramp(a) => &a.common,
        Command::Soak(a) => &a.common,
        Command::RelayFloor(_) => unreachable!("relay-floor has no common options"),
    }
}

fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let c = common(&cli);
    if let Some(cpus) = &c.generator_cpus {
        pin_self(cpus)?;
    }
    match callbridge::limits::raise_nofile_limit() {
        Ok(l) => eprintln!(
            "RLIMIT_NOFILE: soft {} → {} (hard {})",
            l.before, l.now, l.hard
        ),
        Err(e) => eprintln!("warning: could not raise RLIMIT_NOFILE: {e}"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(w) = c.workers {
        rt.worker_threads(w.max(1));
    }
    let rt = rt.build().context("starting the tokio runtime")?;
    rt.block_on(async_main(cli))
}

/// `taskset -a -p -c LIST <own pid>`, before any other thread exists (threads inherit it).
fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset -c {cpus} failed for the generator");
    }
    eprintln!("generator pinned to CPUs {cpus}");
    Ok(())
}

async fn async_main(cli: Cli) -> anyhow::Result<bool> {
    let c = common(&cli);
    let max_calls = match &cli.command {
        Command::Run(a) => a.calls,
        Command::Ramp(a) => a.max,
        Command::Soak(a) => a.calls,
        Command::RelayFloor(_) => unreachable!("handled in main"),
    };
    if max_calls == 0 || max_calls > MAX_CALLS {
        bail!("calls must be between 1 and {MAX_CALLS}");
    }
    if let Command::Soak(a) = &cli.command {
        return soak_main(a).await;
    }
    let slot: SharedSlot = Arc::new(Mutex::new(Arc::new(Shared::default())));
    let opts = SetupOptions {
        max_calls,
        tap: true,
        admin_token: None,
    };
    let (mut target, mut proxy) = setup(c, &slot, &opts).await?;
    let progress = (!c.progress.is_zero()).then_some(c.progress);
    let json = c.json;
    match cli.command {
        Command::Run(a) => {
            check_duration(a.duration)?;
            let spec = RunSpec {
                calls: a.calls,
                duration: a.duration,
                ramp_up: ramp_up(a.ramp_up, a.duration)?,
                progress,
                fault: a.inject_fault,
            };
            eprintln!(
                "running {} calls for {:?} (ramp-up {:?}) against {} ({} mode)",
                spec.calls, spec.duration, spec.ramp_up, target.addr, target.mode
            );
            let mut report = run::run(&mut target, &spec).await?;
            report.judge(a.fail_p99_ms);
            if let Some(p) = proxy.as_mut() {
                if !p.is_running() {
                    report
                        .problems
                        .push("the server exited during the run".to_owned());
                }
            }
            if let (false, Some(p)) = (report.passed(), &proxy) {
                let tail = p.log_tail();
                if !tail.is_empty() {
                    eprintln!("the server's last log lines (warnings and errors):\n{tail}");
                }
            }
            print_report(&report.table(), &report, json)?;
            Ok(report.passed())
        }
        Command::Ramp(a) => ramp(&mut target, &a, progress, json).await,
        Command::Soak(_) => unreachable!("handled above"),
        Command::RelayFloor(_) => unreachable!("handled in main"),
    }
}

/// The soak: spawns the server (it measures its DATA_DIR and reads its admin export), runs,
/// prints the report, and passes or fails.
async fn soak_main(a: &SoakArgs) -> anyhow::Result<bool> {
    let c = &a.common;
    if c.direct || c.target.is_some() {
        bail!("soak needs a server it spawns: it measures the server's DATA_DIR and reads its admin export (drop --direct / --target)");
    }
    let spec = a.spec()?;
    let admin_token = format!("soak-admin-{}", std::process::id());
    let mut c = c.clone();
    if let Some(r) = a.retention {
        c.server_env
            .push(("RETENTION".to_owned(), format!("{}s", r.as_secs().max(1))));
    }
    let c = &c;
    let slot: SharedSlot = Arc::new(Mutex::new(Arc::new(Shared::default())));
    let opts = SetupOptions {
        max_calls: a.calls,
        tap: false,
        admin_token: Some(admin_token.clone()),
    };
    let (target, proxy) = setup(c, &slot, &opts).await?;
    let mut proxy = proxy.context("the soak spawns its server")?;
    let data_dir = proxy
        .data_dir()
        .context("the spawned server has a DATA_DIR")?
        .to_path_buf();
    let t = soak::SoakTarget {
        addr: target.addr,
        pid: proxy.pid,
        data_dir: &data_dir,
        admin_token: &admin_token,
        auth_token: target.auth_token.clone(),
    };
    eprintln!(
        "soak: {} concurrent calls of {:.0}–{:.0} s for {:.0} s, sampled every {:.0} s",
        spec.calls, spec.call_min_s, spec.call_max_s, spec.duration_s, spec.sample_every_s
    );
    let mut report = soak::soak(&t, &spec).await?;
    if !proxy.is_running() {
        report
            .problems
            .push("the server exited during the soak".to_owned());
    }
    if !report.passed() {
        let tail = proxy.log_tail();
        if !tail.is_empty() {
            eprintln!("the server's last log lines (warnings and errors):\n{tail}");
        }
    }
    print_report(&report.table(), &report, c.json)?;
    Ok(report.passed())
}

fn check_duration(d: Duration) -> anyhow::Result<()> {
    if d < Duration::from_secs(1) || d > MAX_DURATION {
        bail!("duration must be between 1 s and {MAX_DURATION:?}");
    }
    Ok(())
}

fn ramp_up(given: Option<Duration>, duration: Duration) -> anyhow::Result<Duration> {
    let r = given.unwrap_or_else(|| Duration::from_secs(5).min(duration / 4));
    if r > duration / 2 {
        bail!("ramp-up {r:?} must be at most half the duration {duration:?}");
    }
    Ok(r)
}

/// The report's `table` on stdout, or with `json` the report as JSON on stdout and the table on
/// stderr.
fn print_report(table: &str, report: &impl serde::Serialize, json: bool) -> anyhow::Result<()> {
    if json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// A self-signed certificate for 127.0.0.1 and its key (PEM), for `--openai-tls`.
fn throwaway_certificate() -> anyhow::Result<(String, String)> {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .context("generating a certificate")?;
    Ok((c.cert.pem(), c.signing_key.serialize_pem()))
}

/// What [`setup`] starts besides the common options.
struct SetupOptions {
    /// Calls the run may have at once (the spawned server's `MAX_CALLS` is above it).
    max_calls: u32,
    /// Install the frame-checking tap in the mock (the soak checks records, not frames).
    tap: bool,
    /// `ADMIN_TOKEN` of the spawned server, when the run reads its admin API.
    admin_token: Option<String>,
}

/// Starts the mock (and the proxy, or the direct facade) and describes the target. The one
/// place that spawns the server and decides how callers sign.
async fn setup(
    c: &Common,
    slot: &SharedSlot,
    opts: &SetupOptions,
) -> anyhow::Result<(Target, Option<Proxy>)> {
    let max_calls = opts.max_calls;
    let mock_listen = c
        .mock_listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    require_loopback(mock_listen, "--mock-listen")?;
    let mut mock_cfg = MockServerConfig {
        keep_sent_events: false,
        latency: Duration::from_millis(c.openai_latency_ms),
        ..MockServerConfig::default()
    };
    // The load test measures the proxy, not the schema validator: the cheap structural check
    // (the integration tests run the strict one).
    mock_cfg.session.validate_client = Arc::new(callbridge_testkit::mock::basic_client_check);
    mock_cfg.session.keep_records = false;
    mock_cfg.session.tap = opts.tap.then(|| tap_factory(Arc::clone(slot)));
    if c.direct {
        let facade = direct::Facade::start(mock_cfg.session.clone()).await?;
        let target = Target {
            addr: facade.addr,
            proxy_pid: None,
            mock: None,
            slot: Arc::clone(slot),
            auth_token: None,
            next_call_no: 1,
            mode: "direct",
            _facade: Some(facade),
        };
        return Ok((target, None));
    }
    let mut server_env = c.server_env.clone();
    let ca = if c.openai_tls {
        let (cert, key) = throwaway_certificate()?;
        mock_cfg.tls = Some(
            callbridge_testkit::mock::server::tls_config(cert.as_bytes(), key.as_bytes())
                .context("the mock's TLS configuration")?,
        );
        let path =
            std::env::temp_dir().join(format!("callbridge-loadtest-ca-{}.pem", std::process::id()));
        server_env.push((
            "OPENAI_EXTRA_CA_FILE".to_owned(),
            path.display().to_string(),
        ));
        Some((path, cert))
    } else {
        None
    };
    let mock = MockServer::start(mock_listen, mock_cfg)
        .await
        .with_context(|| format!("starting the mock on {mock_listen}"))?;
    // Written once the mock is up (a failed start leaves no file behind); removed once the
    // server has read it.
    let ca_file = match ca {
        Some((path, cert)) => {
            std::fs::write(&path, cert).with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let proxy = match (c.target, c.server_pid) {
        (Some(addr), Some(pid)) => Proxy::attach(addr, pid)?,
        _ => {
            let bin = match &c.server_bin {
                Some(b) => b.clone(),
                None => proxy::sibling_server_bin().context(
                    "no `callbridge` binary next to this one: build it (cargo build --release -p callbridge-cli) or pass --server-bin",
                )?,
            };
            let spec = SpawnSpec {
                bin,
                cpus: c.server_cpus.clone(),
                openai_url: mock.url(),
                auth_token: c.auth_token.clone(),
                admin_token: opts.admin_token.clone(),
                max_calls: max_calls.saturating_add(100).max(2000),
                extra_env: server_env,
            };
            let p = Proxy::spawn(&spec);
            // The server has read the CA file at start (or failed).
            if let Some(path) = &ca_file {
                let _ = std::fs::remove_file(path);
            }
            let p = p?;
            eprintln!(
                "spawned {} (pid {}) on {}, OpenAI at {}{}{}",
                spec.bin.display(),
                p.pid,
                p.addr,
                spec.openai_url,
                spec.cpus
                    .as_deref()
                    .map_or(String::new(), |c| format!(", CPUs {c}")),
                if spec.extra_env.is_empty() {
                    String::new()
                } else {
                    format!(", env {:?}", spec.extra_env)
                }
            );
            p
        }
    };
    // Let the server settle so its idle RSS is a baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = Target {
        addr: proxy.addr,
        proxy_pid: Some(proxy.pid),
        mock: Some(mock),
        slot: Arc::clone(slot),
        auth_token: c.auth_token.clone(),
        next_call_no: 1,
        mode: "proxy",
        _facade: None,
    };
    Ok((target, Some(proxy)))
}

/// The ramp: steps of `start`, `start + step`, … calls, each a fresh run of `step_duration`,
/// until a step's uplink or downlink p99 exceeds the budget, a step has a failure, or `max`.
async fn ramp(
    target: &mut Target,
    a: &RampArgs,
    progress: Option<Duration>,
    json: bool,
) -> anyhow::Result<bool> {
    check_duration(a.step_duration)?;
    if a.start == 0 || a.step == 0 || a.start > a.max {
        bail!("ramp needs 1 ≤ --start ≤ --max and --step ≥ 1");
    }
    let mut steps = Vec::new();
    let mut best: Option<u32> = None;
    let mut n = a.start;
    let mut broke = None;
    for _ in 0..MAX_RAMP_STEPS {
        let spec = RunSpec {
            calls: n,
            duration: a.step_duration,
            ramp_up: ramp_up(a.ramp_up, a.step_duration)?,
            progress,
            fault: None,
        };
        eprintln!("ramp step: {n} calls for {:?}", spec.duration);
        let mut r = run::run(target, &spec).await?;
        r.judge(Some(a.budget_ms));
        let p99 = r.latency.uplink.p99_ms.max(r.latency.downlink.p99_ms);
        eprintln!(
            "ramp step {n}: uplink p99 {:.3} ms, downlink p99 {:.3} ms, barge-in p99 {:.3} ms, failed {}, frame errors {}, proxy {:.2} µs/frame{}",
            r.latency.uplink.p99_ms,
            r.latency.downlink.p99_ms,
            r.latency.barge_in.p99_ms,
            r.calls_failed,
            run::frame_errors(&r),
            r.proxy.as_ref().map_or(0.0, |p| p.cpu_us_per_frame),
            if r.passed() { "" } else { " → over budget or failed" }
        );
        let passed = r.passed();
        steps.push(serde_json::json!({
            "calls": n, "uplink_p99_ms": r.latency.uplink.p99_ms,
            "downlink_p99_ms": r.latency.downlink.p99_ms, "barge_in_p99_ms": r.latency.barge_in.p99_ms,
            "max_p99_ms": p99, "calls_failed": r.calls_failed, "frame_errors": run::frame_errors(&r),
            "proxy_cpu_us_per_frame": r.proxy.as_ref().map(|p| p.cpu_us_per_frame),
            "proxy_rss_per_call_kib": r.proxy.as_ref().map(|p| p.rss_per_call_kib),
            "proxy_latency": r.proxy_latency,
            "generator_cpu_pct": r.generator.cpu_pct, "problems": r.problems,
        }));
        if !passed {
            broke = Some(n);
            break;
        }
        best = Some(n);
        if n >= a.max {
            break;
        }
        n = (n + a.step).min(a.max);
        // Let the previous step's connections close before the next one.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let summary = serde_json::json!({
        "mode": target.mode, "budget_ms": a.budget_ms, "largest_calls_within_budget": best,
        "first_failing_calls": broke, "steps": steps,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    match best {
        Some(b) => eprintln!(
            "ramp: largest N within the {} ms p99 budget: {b}{}",
            a.budget_ms,
            broke.map_or(format!(" (reached --max {})", a.max), |f| format!(
                " (broke at {f})"
            ))
        ),
        None => eprintln!(
            "ramp: even the first step ({} calls) broke the {} ms budget",
            a.start, a.budget_ms
        ),
    }
    Ok(best.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn ramp_up_defaults_and_bounds() {
        assert_eq!(
            ramp_up(None, Duration::from_secs(60)).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            ramp_up(None, Duration::from_secs(8)).unwrap(),
            Duration::from_secs(2)
        );
        assert!(ramp_up(Some(Duration::from_secs(10)), Duration::from_secs(15)).is_err());
    }
}
