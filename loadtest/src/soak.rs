//! The soak: a long run with calls coming and going, sampling what a leak would grow.
//!
//! ```text
//!  N call slots ── each: a call of a random 30–180 s (the looping script: a turn every 10.5 s,
//!                  one barge-in each) ── when it ends, a new call takes the slot
//!  every 10 s   ── the proxy's RSS, fds, threads (/proc), DATA_DIR bytes (allocated and
//!                  apparent), logical bytes (the store's counter, else the admin export)
//!  at the end   ── every call's record read back from the export (final, complete, nothing
//!                  lost); Theil–Sen slopes over the late window; the verdict
//! ```
//!
//! Memory must be flat under churn, not only under steady calls: call state that is never freed
//! shows only when calls end, and per-call index entries only when new sids keep coming.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use callbridge_testkit::sim::caller::{run_call, CallOutcome, CallReport, CallerConfig};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::fit::{median, theil_sen};
use crate::procstat;
use crate::proxy_metrics::{self, http_get};
use crate::scenario;

/// The store's gauge of its logical bytes (what a full export would hold), when the proxy has it.
pub const LOGICAL_BYTES_METRIC: &str = "callbridge_store_logical_bytes";

/// A call may run this much past its planned end (closing handshakes, a slow proxy) before the
/// soak gives up on it and counts it failed.
const CALL_GRACE: Duration = Duration::from_secs(30);

/// After the last call ended, how long the proxy's store may take to show every record final
/// (its writer flushes every `STORE_FLUSH_MS`, 100 ms by default; the rest is slack for a busy
/// machine).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// No new call starts with less than this left: it would end before its first turn.
const MIN_CALL_LEFT: Duration = Duration::from_secs(5);

/// Export parts read at most per export: 8 MiB each, so 2 GiB of logical data (a soak
/// stores a few MB per minute).
const MAX_EXPORT_PARTS: usize = 256;

/// How long one export part (8 MiB at most) may take to arrive.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// fds or threads "flat": the fitted rise over the window is at most this plus
/// [`FLAT_RELATIVE`] of the median. A few come and go with the calls in flight at a sample
/// (each call holds ~2 sockets while it connects and closes) and the blocking pool's threads
/// (admin exports); a leak of one per call is hundreds over a soak.
const FLAT_ABSOLUTE: f64 = 8.0;

/// See [`FLAT_ABSOLUTE`].
const FLAT_RELATIVE: f64 = 0.05;

/// What one soak does.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSpec {
    /// Concurrent calls (slots).
    pub calls: u32,
    /// From the first call's start until no new call starts.
    pub duration_s: f64,
    /// The first calls start evenly over this.
    pub ramp_up_s: f64,
    /// Shortest call, s.
    pub call_min_s: f64,
    /// Longest call, s.
    pub call_max_s: f64,
    /// Sample interval, s.
    pub sample_every_s: f64,
    /// Progress line interval, s.
    pub print_every_s: f64,
    /// Seed of the call lengths.
    pub seed: u64,
    /// The verdict's limits.
    pub limits: Limits,
}

/// The limits a soak passes or fails on (README "Soak").
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// The slopes are fitted over samples from here to the end, s.
    pub slope_from_s: f64,
    /// RSS slope over that window, KiB/s.
    pub max_rss_slope_kib_s: f64,
    /// RSS at the end may exceed RSS at this time by at most [`Limits::max_rss_growth_mib`], s.
    pub rss_growth_from_s: f64,
    /// See [`Limits::rss_growth_from_s`].
    pub max_rss_growth_mib: f64,
    /// DATA_DIR bytes at the end over the logical bytes.
    pub max_disk_ratio: f64,
    /// DATA_DIR growth over the slope window, KiB/s (`None`: not judged; a soak with a short
    /// retention sets it to show the space is reused).
    pub max_disk_slope_kib_s: Option<f64>,
    /// The server's `RETENTION`, s (`None`: its default, 30 days: nothing is deleted).
    pub retention_s: Option<f64>,
}

/// One sample of the proxy.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Since the soak started, s.
    pub t_s: f64,
    /// Calls in flight.
    pub active_calls: u32,
    /// Calls started so far.
    pub calls_started: u32,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Open descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
    /// DATA_DIR, bytes allocated on disk (what `du` says).
    pub disk_bytes: u64,
    /// DATA_DIR, apparent bytes (file lengths; a sparse file counts its holes).
    pub disk_apparent_bytes: u64,
    /// What a full export of the store would hold, bytes.
    pub logical_bytes: u64,
}

/// A fitted trend over the slope window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Trends {
    /// RSS, KiB/s.
    pub rss_kib_s: f64,
    /// DATA_DIR allocated bytes, KiB/s.
    pub disk_kib_s: f64,
    /// Logical bytes, KiB/s.
    pub logical_kib_s: f64,
    /// Open descriptors, per minute.
    pub fds_per_min: f64,
    /// Threads, per minute.
    pub threads_per_min: f64,
}

/// What the records said at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecordCheck {
    /// Lines in the final export.
    pub exported: u64,
    /// Calls of this soak whose record was checked.
    pub checked: u64,
    /// Calls of this soak with no record, placed recently enough that retention kept it.
    pub missing: u64,
    /// Calls of this soak with no record that retention may have deleted (`--retention`).
    pub deleted: u64,
    /// Not `completed`, or no `endedAtMs`.
    pub not_final: u64,
    /// `items` differs from the conversation, a gap in its `seq`, or `interruptions` differs
    /// from the clears the caller got.
    pub incomplete: u64,
    /// Records with `itemsLost` > 0.
    pub with_items_lost: u64,
    /// Items in the checked conversations.
    pub items: u64,
    /// The first few problems, as text.
    pub examples: Vec<String>,
}

/// Examples of bad records kept in the report.
const MAX_EXAMPLES: usize = 10;

/// The soak's result.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// What was run.
    pub spec: SoakSpec,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Before the first call.
    pub idle: Option<Sample>,
    /// After every call ended and the records settled.
    pub last: Option<Sample>,
    /// Slopes over `limits.slope_from_s` … end.
    pub trends: Trends,
    /// RSS at the end of the load − RSS at `limits.rss_growth_from_s`, MiB.
    pub rss_growth_mib: f64,
    /// DATA_DIR bytes allocated / logical bytes, at the end.
    pub disk_ratio: f64,
    /// Memory per call in flight: (median RSS over the window − idle RSS) / calls, KiB.
    pub rss_per_call_kib: f64,
    /// Disk per call placed, at the end, KiB.
    pub disk_per_call_kib: f64,
    /// Logical bytes per call placed, at the end, KiB.
    pub logical_per_call_kib: f64,
    /// Calls placed.
    pub calls_started: u32,
    /// Calls the caller saw through to its hang-up.
    pub calls_completed: u32,
    /// Calls that failed, by reason.
    pub failures: BTreeMap<String, u32>,
    /// The records at the end.
    pub records: RecordCheck,
    /// Where the logical bytes came from: the store's gauge or the export.
    pub logical_source: &'static str,
    /// Why the soak failed (empty: passed).
    pub problems: Vec<String>,
}

impl SoakReport {
    /// A report of `spec` with nothing measured yet.
    pub fn new(spec: SoakSpec, logical_source: &'static str) -> SoakReport {
        SoakReport {
            spec,
            samples: Vec::new(),
            idle: None,
            last: None,
            trends: Trends::default(),
            rss_growth_mib: 0.0,
            disk_ratio: 0.0,
            rss_per_call_kib: 0.0,
            disk_per_call_kib: 0.0,
            logical_per_call_kib: 0.0,
            calls_started: 0,
            calls_completed: 0,
            failures: BTreeMap::new(),
            records: RecordCheck::default(),
            logical_source,
            problems: Vec::new(),
        }
    }

    /// Whether every limit held.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The spawned proxy as the soak sees it.
pub struct SoakTarget<'a> {
    /// Where callers connect.
    pub addr: SocketAddr,
    /// Its pid.
    pub pid: u32,
    /// Its DATA_DIR.
    pub data_dir: &'a Path,
    /// Its ADMIN_TOKEN.
    pub admin_token: &'a str,
    /// Twilio auth token the callers sign with.
    pub auth_token: Option<String>,
}

/// splitmix64: call lengths that a seed reproduces, without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]` (whole ms).
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        if hi <= lo {
            return Duration::from_millis(lo);
        }
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }
}

/// One finished call.
struct Ended {
    call_sid: String,
    result: Result<CallReport, String>,
}

/// What the soak remembers of a call for the record check.
struct Placed {
    /// When it was placed (its webhook).
    at: Instant,
    /// Clears the caller received: the record's `interruptions` must match.
    clears: usize,
}

/// Bytes of everything under `dir`: (allocated, apparent), like `du` and `du --apparent-size`.
pub fn dir_bytes(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let (mut alloc, mut apparent) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // A directory removed meanwhile (an engine's temporary) counts as empty.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                alloc += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    Ok((alloc, apparent))
}

/// The whole export (`/api/admin/calls.jsonl`, every part), concatenated.
pub async fn export_all(addr: SocketAddr, admin_token: &str) -> anyhow::Result<Vec<u8>> {
    let auth = format!("Bearer {admin_token}");
    let mut body = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_EXPORT_PARTS {
        let path = match &cursor {
            Some(c) => format!("/api/admin/calls.jsonl?cursor={c}"),
            None => "/api/admin/calls.jsonl".to_owned(),
        };
        let resp = http_get(addr, &path, &[("Authorization", &auth)], EXPORT_TIMEOUT).await?;
        if resp.status != 200 {
            bail!(
                "GET {path} answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        body.extend_from_slice(&resp.body);
        match resp.header("X-Next-Cursor") {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(body),
        }
    }
    bail!("the export has more than {MAX_EXPORT_PARTS} parts")
}

/// The value of the gauge `name` in a Prometheus text exposition.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix(' ').or_else(|| {
            // `name{labels} value`
            rest.strip_prefix('{')
                .and_then(|r| r.split_once("} ").map(|(_, v)| v))
        })?;
        rest.trim().parse().ok()
    })
}

/// Where the logical bytes are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogicalSource {
    /// [`LOGICAL_BYTES_METRIC`] on `/metrics`.
    Gauge,
    /// The size of a full export (a proxy without the gauge).
    Export,
}

impl LogicalSource {
    fn name(self) -> &'static str {
        match self {
            LogicalSource::Gauge => "store gauge (checked against the export at the end)",
            LogicalSource::Export => "admin export",
        }
    }
}

async fn logical_bytes(t: &SoakTarget<'_>, src: LogicalSource) -> anyhow::Result<u64> {
    match src {
        LogicalSource::Gauge => {
            let text = proxy_metrics::get_metrics(t.addr).await?;
            gauge(&text, LOGICAL_BYTES_METRIC)
                .map(|v| v as u64)
                .with_context(|| format!("no {LOGICAL_BYTES_METRIC} on /metrics"))
        }
        LogicalSource::Export => Ok(export_all(t.addr, t.admin_token).await?.len() as u64),
    }
}

async fn sample(
    t: &SoakTarget<'_>,
    src: LogicalSource,
    t_s: f64,
    active_calls: u32,
    calls_started: u32,
) -> anyhow::Result<Sample> {
    let pid = t.pid.to_string();
    let p = procstat::sample(&pid)?;
    let h = procstat::handles(&pid)?;
    let (disk_bytes, disk_apparent_bytes) =
        dir_bytes(t.data_dir).with_context(|| format!("measuring {}", t.data_dir.display()))?;
    Ok(Sample {
        t_s,
        active_calls,
        calls_started,
        rss_bytes: p.rss_bytes,
        fds: h.fds,
        threads: h.threads,
        disk_bytes,
        disk_apparent_bytes,
        logical_bytes: logical_bytes(t, src).await?,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// `[ 10m] calls 200 (1234 placed) | rss 31.2 MiB | fds 812 | threads 9 | disk 12.1 MiB | logical 6.0 MiB (2.0×)`.
fn progress_line(s: &Sample) -> String {
    format!(
        "[{:>3.0}m{:02.0}s] calls {} ({} placed) | rss {:.1} MiB | fds {} | threads {} | disk {:.1} MiB (apparent {:.1}) | logical {:.1} MiB ({:.2}×)",
        (s.t_s / 60.0).floor(),
        s.t_s % 60.0,
        s.active_calls,
        s.calls_started,
        mib(s.rss_bytes),
        s.fds,
        s.threads,
        mib(s.disk_bytes),
        mib(s.disk_apparent_bytes),
        mib(s.logical_bytes),
        ratio(s.disk_bytes, s.logical_bytes),
    )
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::INFINITY
    } else {
        a as f64 / b as f64
    }
}

/// Places one call of `length` on slot `call_no`.
fn place(
    set: &mut JoinSet<Ended>,
    t: &SoakTarget<'_>,
    call_no: u32,
    start_at: Instant,
    length: Duration,
) -> String {
    let ms = u32::try_from(length.as_millis()).unwrap_or(u32::MAX);
    let mut cfg = CallerConfig::new(t.addr, call_no, scenario::looping(ms));
    cfg.keep_payloads = false;
    cfg.auth_token = t.auth_token.clone();
    let call_sid = cfg.call_sid.clone();
    let sid = call_sid.clone();
    set.spawn(async move {
        tokio::time::sleep_until(start_at).await;
        let limit = length + CALL_GRACE;
        let result = match tokio::time::timeout(limit, run_call(cfg)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("simulator: {e}")),
            Err(_) => Err("call did not end in time".to_owned()),
        };
        Ended {
            call_sid: sid,
            result,
        }
    });
    call_sid
}

/// Why a call the caller ran counts as failed, if it does.
fn failure(r: &CallReport) -> Option<String> {
    match &r.outcome {
        CallOutcome::Completed => match &r.stream {
            Some(s) if !s.violations.is_empty() => Some("protocol violations".to_owned()),
            Some(s) if !s.stop_sent => Some("hung up without stop".to_owned()),
            Some(_) => None,
            None => Some("no stream".to_owned()),
        },
        other => Some(format!("{other:?}").chars().take(80).collect()),
    }
}

/// Runs the soak against a spawned proxy.
pub async fn soak(t: &SoakTarget<'_>, spec: &SoakSpec) -> anyhow::Result<SoakReport> {
    let metrics = proxy_metrics::get_metrics(t.addr).await.unwrap_or_default();
    let src = if gauge(&metrics, LOGICAL_BYTES_METRIC).is_some() {
        LogicalSource::Gauge
    } else {
        eprintln!(
            "note: the proxy has no {LOGICAL_BYTES_METRIC}: logical bytes come from the export"
        );
        LogicalSource::Export
    };
    let idle = sample(t, src, 0.0, 0, 0).await?;
    eprintln!("idle: {}", progress_line(&idle));

    let duration = Duration::from_secs_f64(spec.duration_s);
    let (call_min, call_max) = (
        Duration::from_secs_f64(spec.call_min_s),
        Duration::from_secs_f64(spec.call_max_s),
    );
    let mut rng = Rng::new(spec.seed);
    let t0 = Instant::now() + Duration::from_millis(50);
    let end_at = t0 + duration;
    let mut set = JoinSet::new();
    let mut placed: HashMap<String, Placed> = HashMap::new();
    let mut next_no = 1u32;
    let n = spec.calls.max(1);
    for i in 0..n {
        let start_at = t0 + Duration::from_secs_f64(spec.ramp_up_s * f64::from(i) / f64::from(n));
        let length = rng
            .duration(call_min, call_max)
            .min(end_at.saturating_duration_since(start_at));
        let sid = place(&mut set, t, next_no, start_at, length);
        placed.insert(
            sid,
            Placed {
                at: start_at,
                clears: 0,
            },
        );
        next_no += 1;
    }

    let mut report = SoakReport::new(spec.clone(), src.name());
    report.idle = Some(idle);
    let mut tick = tokio::time::interval_at(
        t0 + Duration::from_secs_f64(spec.sample_every_s),
        Duration::from_secs_f64(spec.sample_every_s),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_print = t0;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(done)) => {
                    match &done.result {
                        Ok(r) => match failure(r) {
                            None => {
                                report.calls_completed += 1;
                                if let Some(p) = placed.get_mut(&done.call_sid) {
                                    p.clears = r.stream.as_ref().map_or(0, |s| s.clears.len());
                                }
                            }
                            Some(why) => *report.failures.entry(why).or_default() += 1,
                        },
                        Err(why) => *report.failures.entry(why.clone()).or_default() += 1,
                    }
                    let now = Instant::now();
                    if end_at.saturating_duration_since(now) >= MIN_CALL_LEFT {
                        let length = rng.duration(call_min, call_max).min(end_at - now);
                        let sid = place(&mut set, t, next_no, now, length);
                        placed.insert(sid, Placed { at: now, clears: 0 });
                        next_no += 1;
                    }
                }
                Some(Err(e)) => bail!("a caller task panicked: {e}"),
                None => break,
            },
            at = tick.tick() => {
                if at > end_at {
                    continue;
                }
                let t_s = at.saturating_duration_since(t0).as_secs_f64();
                let s = sample(t, src, t_s, set.len() as u32, next_no - 1).await?;
                if at.saturating_duration_since(last_print).as_secs_f64() + 1e-3 >= spec.print_every_s {
                    last_print = at;
                    eprintln!("{}", progress_line(&s));
                }
                report.samples.push(s);
            }
        }
    }
    report.calls_started = next_no - 1;

    // The records settle: every call of this soak final in the store.
    let settle_deadline = Instant::now() + SETTLE_TIMEOUT;
    let export = loop {
        let export = export_all(t.addr, t.admin_token).await?;
        let open = open_records(&export, &placed);
        if open == 0 || Instant::now() >= settle_deadline {
            break export;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut last = sample(
        t,
        LogicalSource::Export,
        t0.elapsed().as_secs_f64(),
        0,
        report.calls_started,
    )
    .await?;
    last.logical_bytes = export.len() as u64;
    if src == LogicalSource::Gauge {
        let text = proxy_metrics::get_metrics(t.addr).await?;
        let g = gauge(&text, LOGICAL_BYTES_METRIC).unwrap_or(-1.0);
        if g != export.len() as f64 {
            report.problems.push(format!(
                "the store's {LOGICAL_BYTES_METRIC} is {g} but the export holds {} bytes",
                export.len()
            ));
        }
    }
    report.last = Some(last);
    // With a retention, the server may have deleted the calls placed longer ago than it (a
    // second of slack for the webhook's own clock).
    let deletable = spec.limits.retention_s.map(|r| {
        let keep = Duration::from_secs_f64(r).saturating_sub(Duration::from_secs(1));
        Instant::now().checked_sub(keep).unwrap_or(t0)
    });
    report.records = check_records(&export, &placed, deletable);
    judge(&mut report, &idle, &last);
    Ok(report)
}

/// Records of `placed` calls still `ringing` or `in-progress` in `export`.
fn open_records(export: &[u8], placed: &HashMap<String, Placed>) -> usize {
    export
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["callSid"]
                .as_str()
                .is_some_and(|s| placed.contains_key(s))
                && matches!(v["status"].as_str(), Some("ringing" | "in-progress"))
        })
        .count()
}

/// Reads every line of the export and checks the records of the soak's calls. Calls placed
/// before `deletable` may be missing (the server's retention deleted them).
fn check_records(
    export: &[u8],
    placed: &HashMap<String, Placed>,
    deletable: Option<Instant>,
) -> RecordCheck {
    let mut c = RecordCheck::default();
    let mut seen = std::collections::HashSet::new();
    let note = |c: &mut RecordCheck, s: String| {
        if c.examples.len() < MAX_EXAMPLES {
            c.examples.push(s);
        }
    };
    for line in export.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        c.exported += 1;
        let v: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                c.incomplete += 1;
                note(&mut c, format!("an export line does not parse: {e}"));
                continue;
            }
        };
        let Some(sid) = v["callSid"].as_str() else {
            continue;
        };
        let Some(p) = placed.get(sid) else { continue };
        seen.insert(sid.to_owned());
        c.checked += 1;
        if v["status"] != "completed" || !v["endedAtMs"].is_u64() {
            c.not_final += 1;
            note(
                &mut c,
                format!(
                    "{sid}: status {} endedAtMs {} ({})",
                    v["status"], v["endedAtMs"], v["endReason"]
                ),
            );
        }
        let items = v["realtimeConversation"].as_array().map_or(&[][..], |a| a);
        c.items += items.len() as u64;
        let gap_free = items
            .iter()
            .enumerate()
            .all(|(i, it)| it["seq"].as_u64() == Some(i as u64));
        let interruptions = v["interruptions"].as_u64().unwrap_or(u64::MAX);
        if v["items"].as_u64() != Some(items.len() as u64)
            || !gap_free
            || interruptions != p.clears as u64
        {
            c.incomplete += 1;
            note(
                &mut c,
                format!(
                    "{sid}: items {} for {} stored (gap-free {gap_free}), interruptions {interruptions} for {} clears",
                    v["items"],
                    items.len(),
                    p.clears
                ),
            );
        }
        if v["itemsLost"].as_u64() != Some(0) {
            c.with_items_lost += 1;
            note(&mut c, format!("{sid}: itemsLost {}", v["itemsLost"]));
        }
    }
    for (sid, p) in placed {
        if seen.contains(sid) {
            continue;
        }
        if deletable.is_some_and(|d| p.at < d) {
            c.deleted += 1;
        } else {
            c.missing += 1;
            note(&mut c, format!("{sid}: no record"));
        }
    }
    c
}

/// A problem when a count that should stay put rose by more than [`FLAT_ABSOLUTE`] +
/// [`FLAT_RELATIVE`] of its median over `span_s` at `per_min`.
fn not_flat(what: &str, per_min: f64, mut values: Vec<f64>, span_s: f64) -> Option<String> {
    let typical = median(&mut values).unwrap_or(0.0);
    let rise = per_min * span_s / 60.0;
    (rise > FLAT_ABSOLUTE + FLAT_RELATIVE * typical).then(|| {
        format!("{what} are not flat: +{rise:.1} over the window ({per_min:.2}/min, typical {typical:.0})")
    })
}

/// Fits the trends and applies the limits.
fn judge(r: &mut SoakReport, idle: &Sample, last: &Sample) {
    let l = r.spec.limits.clone();
    let window: Vec<&Sample> = r
        .samples
        .iter()
        .filter(|s| s.t_s >= l.slope_from_s)
        .collect();
    let fit = |f: &dyn Fn(&Sample) -> f64| {
        let pts: Vec<(f64, f64)> = window.iter().map(|s| (s.t_s, f(s))).collect();
        theil_sen(&pts)
    };
    let kib = |b: u64| b as f64 / 1024.0;
    let span = window
        .last()
        .zip(window.first())
        .map_or(0.0, |(b, a)| b.t_s - a.t_s);
    match fit(&|s| kib(s.rss_bytes)) {
        Some(slope) => {
            r.trends = Trends {
                rss_kib_s: slope,
                disk_kib_s: fit(&|s| kib(s.disk_bytes)).unwrap_or(0.0),
                logical_kib_s: fit(&|s| kib(s.logical_bytes)).unwrap_or(0.0),
                fds_per_min: fit(&|s| s.fds as f64).unwrap_or(0.0) * 60.0,
                threads_per_min: fit(&|s| s.threads as f64).unwrap_or(0.0) * 60.0,
            };
        }
        None => r.problems.push(format!(
            "too few samples after {:.0} s to fit a slope ({} samples): run longer",
            l.slope_from_s,
            window.len()
        )),
    }
    let tr = r.trends;
    if let Some(max) = l.max_disk_slope_kib_s {
        if tr.disk_kib_s > max {
            r.problems.push(format!(
                "DATA_DIR grows {:.2} KiB/s after {:.0} s (limit {max} KiB/s)",
                tr.disk_kib_s, l.slope_from_s
            ));
        }
    }
    if tr.rss_kib_s > l.max_rss_slope_kib_s {
        r.problems.push(format!(
            "RSS grows {:.3} KiB/s after {:.0} s (limit {} KiB/s)",
            tr.rss_kib_s, l.slope_from_s, l.max_rss_slope_kib_s
        ));
    }
    let fds: Vec<f64> = window.iter().map(|s| s.fds as f64).collect();
    let threads: Vec<f64> = window.iter().map(|s| s.threads as f64).collect();
    for (what, per_min, values) in [
        ("open fds", tr.fds_per_min, fds),
        ("threads", tr.threads_per_min, threads),
    ] {
        if let Some(p) = not_flat(what, per_min, values, span) {
            r.problems.push(p);
        }
    }
    if let (Some(from), Some(end)) = (
        r.samples.iter().find(|s| s.t_s >= l.rss_growth_from_s),
        r.samples.last(),
    ) {
        r.rss_growth_mib = mib(end.rss_bytes) - mib(from.rss_bytes);
        if r.rss_growth_mib > l.max_rss_growth_mib {
            r.problems.push(format!(
                "RSS at {:.0} s ({:.1} MiB) is {:.2} MiB above RSS at {:.0} s ({:.1} MiB) (limit {} MiB)",
                end.t_s,
                mib(end.rss_bytes),
                r.rss_growth_mib,
                from.t_s,
                mib(from.rss_bytes),
                l.max_rss_growth_mib
            ));
        }
    }
    // The disk a store takes is what its files have allocated (`du`); an engine that grows its
    // file with ftruncate (redb) has holes that count in the file length but take no disk.
    let disk = last.disk_bytes;
    r.disk_ratio = ratio(disk, last.logical_bytes);
    if r.disk_ratio > l.max_disk_ratio {
        r.problems.push(format!(
            "DATA_DIR holds {:.1} MiB (apparent {:.1}) for {:.1} MiB of data: {:.2}× (limit {}×)",
            mib(disk),
            mib(last.disk_apparent_bytes),
            mib(last.logical_bytes),
            r.disk_ratio,
            l.max_disk_ratio
        ));
    }
    let mut rss: Vec<f64> = window.iter().map(|s| s.rss_bytes as f64).collect();
    if let Some(m) = median(&mut rss) {
        r.rss_per_call_kib =
            (m - idle.rss_bytes as f64).max(0.0) / 1024.0 / f64::from(r.spec.calls.max(1));
    }
    let placed = f64::from(r.calls_started.max(1));
    r.disk_per_call_kib = kib(disk) / placed;
    r.logical_per_call_kib = kib(last.logical_bytes) / placed;
    let failed: u32 = r.failures.values().sum();
    if failed > 0 {
        r.problems
            .push(format!("{failed} call(s) failed: {:?}", r.failures));
    }
    let c = &r.records;
    if c.missing + c.not_final + c.incomplete + c.with_items_lost > 0 {
        r.problems.push(format!(
            "records: {} missing, {} not final, {} incomplete, {} with itemsLost (of {}): {:?}",
            c.missing, c.not_final, c.incomplete, c.with_items_lost, c.checked, c.examples
        ));
    }
}

impl SoakReport {
    /// The summary printed at the end.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let sp = &self.spec;
        let _ = writeln!(
            s,
            "callbridge soak: {} concurrent calls of {:.0}–{:.0} s for {:.0} s (seed {}); {} calls placed, {} completed",
            sp.calls, sp.call_min_s, sp.call_max_s, sp.duration_s, sp.seed, self.calls_started, self.calls_completed
        );
        if let (Some(i), Some(l)) = (&self.idle, &self.last) {
            let _ = writeln!(s, "idle:  {}", progress_line(i));
            let _ = writeln!(s, "end:   {}", progress_line(l));
        }
        let t = &self.trends;
        let _ = writeln!(
            s,
            "Theil–Sen slopes after {:.0} s: RSS {:.3} KiB/s ({:.1} MiB/h) | disk {:.2} KiB/s ({:.1} MiB/h) | logical {:.2} KiB/s ({:.1} MiB/h) | fds {:.2}/min | threads {:.2}/min",
            sp.limits.slope_from_s,
            t.rss_kib_s,
            t.rss_kib_s * 3600.0 / 1024.0,
            t.disk_kib_s,
            t.disk_kib_s * 3600.0 / 1024.0,
            t.logical_kib_s,
            t.logical_kib_s * 3600.0 / 1024.0,
            t.fds_per_min,
            t.threads_per_min
        );
        let _ = writeln!(
            s,
            "RSS growth since {:.0} s: {:.2} MiB | disk / logical at the end: {:.2}× | per call in flight: {:.0} KiB RSS | per call placed: {:.1} KiB disk, {:.1} KiB logical",
            sp.limits.rss_growth_from_s,
            self.rss_growth_mib,
            self.disk_ratio,
            self.rss_per_call_kib,
            self.disk_per_call_kib,
            self.logical_per_call_kib
        );
        let c = &self.records;
        let _ = writeln!(
            s,
            "records: {} exported, {} checked, {} items; {} missing, {} not final, {} incomplete, {} with itemsLost; {} deleted by retention",
            c.exported, c.checked, c.items, c.missing, c.not_final, c.incomplete, c.with_items_lost, c.deleted
        );
        let _ = writeln!(s, "logical bytes from: {}", self.logical_source);
        if self.passed() {
            let _ = writeln!(s, "PASS");
        } else {
            for p in &self.problems {
                let _ = writeln!(s, "FAIL: {p}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_kib: u64) -> Sample {
        Sample {
            t_s,
            active_calls: 10,
            calls_started: 10,
            rss_bytes: rss_kib * 1024,
            fds: 40,
            threads: 6,
            disk_bytes: 3 << 20,
            disk_apparent_bytes: 3 << 20,
            logical_bytes: 2 << 20,
        }
    }

    fn report(samples: Vec<Sample>) -> SoakReport {
        let spec = SoakSpec {
            calls: 10,
            duration_s: 300.0,
            ramp_up_s: 5.0,
            call_min_s: 30.0,
            call_max_s: 180.0,
            sample_every_s: 10.0,
            print_every_s: 60.0,
            seed: 1,
            limits: Limits {
                slope_from_s: 120.0,
                max_rss_slope_kib_s: 5.0,
                rss_growth_from_s: 120.0,
                max_rss_growth_mib: 3.0,
                max_disk_ratio: 3.0,
                max_disk_slope_kib_s: None,
                retention_s: None,
            },
        };
        let mut r = SoakReport::new(spec, "test");
        r.samples = samples;
        r.calls_started = 40;
        r.calls_completed = 40;
        r
    }

    #[test]
    fn a_flat_soak_passes_and_a_climbing_one_fails_with_its_slope() {
        let idle = sample(0.0, 8_000);
        let flat: Vec<Sample> = (1..=30).map(|i| sample(i as f64 * 10.0, 20_000)).collect();
        let mut r = report(flat.clone());
        judge(&mut r, &idle, flat.last().unwrap());
        assert!(r.passed(), "{:?}", r.problems);
        assert_eq!(r.trends.rss_kib_s, 0.0);
        assert!((r.disk_ratio - 1.5).abs() < 1e-9);
        assert!((r.rss_per_call_kib - 1_200.0).abs() < 1e-9);

        // 50 KiB/s, the issue's sled measurement.
        let climbing: Vec<Sample> = (1..=30)
            .map(|i| sample(i as f64 * 10.0, 20_000 + 500 * i))
            .collect();
        let mut r = report(climbing.clone());
        judge(&mut r, &idle, climbing.last().unwrap());
        assert!((r.trends.rss_kib_s - 50.0).abs() < 1e-9, "{:?}", r.trends);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("RSS grows 50.000 KiB/s")),
            "{:?}",
            r.problems
        );
        assert!(r
            .problems
            .iter()
            .any(|p| p.contains("MiB above RSS at 120 s")));
    }

    #[test]
    fn disk_fds_threads_and_records_each_fail_the_soak() {
        let idle = sample(0.0, 8_000);
        let mut samples: Vec<Sample> = (1..=30).map(|i| sample(i as f64 * 10.0, 20_000)).collect();
        for (i, s) in samples.iter_mut().enumerate() {
            s.fds += 2 * i as u64; // a leak of 12 per minute
        }
        let mut last = *samples.last().unwrap();
        last.disk_bytes = 10 << 20;
        last.disk_apparent_bytes = 20 << 20; // holes in a sparse file take no disk
        for (i, s) in samples.iter_mut().enumerate() {
            s.disk_bytes += 10_240 * i as u64; // 1 KiB/s
        }
        let mut r = report(samples);
        r.records.missing = 1;
        r.failures.insert("stream lost".into(), 2);
        r.spec.limits.max_disk_slope_kib_s = Some(0.5);
        judge(&mut r, &idle, &last);
        let all = r.problems.join("\n");
        assert!(all.contains("DATA_DIR grows 1.00 KiB/s"), "{all}");
        assert!(all.contains("open fds are not flat"), "{all}");
        assert!(!all.contains("threads are not flat"), "{all}");
        assert!(all.contains("5.00× (limit 3×)"), "{all}");
        assert!(all.contains("1 missing"), "{all}");
        assert!(all.contains("2 call(s) failed"), "{all}");
    }

    #[test]
    fn records_are_checked_against_what_the_callers_saw() {
        let t0 = Instant::now();
        let mut placed = HashMap::new();
        for (i, (sid, clears)) in [("CA1", 1), ("CA2", 0), ("CA3", 2), ("CA4", 0), ("CA5", 0)]
            .into_iter()
            .enumerate()
        {
            let at = t0 + Duration::from_secs(i as u64 * 60);
            placed.insert(sid.to_owned(), Placed { at, clears });
        }
        let export = concat!(
            r#"{"callSid":"CA1","status":"completed","endedAtMs":5,"items":2,"itemsLost":0,"interruptions":1,"realtimeConversation":[{"seq":0},{"seq":1}]}"#,
            "\n",
            r#"{"callSid":"CA2","status":"in-progress","items":0,"itemsLost":0,"interruptions":0,"realtimeConversation":[]}"#,
            "\n",
            r#"{"callSid":"CA3","status":"completed","endedAtMs":5,"items":2,"itemsLost":3,"interruptions":2,"realtimeConversation":[{"seq":0},{"seq":2}]}"#,
            "\n",
            r#"{"callSid":"CX9","status":"failed"}"#,
            "\n"
        );
        assert_eq!(open_records(export.as_bytes(), &placed), 1);
        let c = check_records(export.as_bytes(), &placed, None);
        assert_eq!(
            (
                c.exported,
                c.checked,
                c.missing,
                c.not_final,
                c.incomplete,
                c.with_items_lost
            ),
            (4, 3, 2, 1, 1, 1),
            "{c:?}"
        );
        assert_eq!(c.items, 4);
        // With a retention that may have deleted the calls placed before minute 3.5, CA4 may
        // be gone, not CA5.
        let c = check_records(
            export.as_bytes(),
            &placed,
            Some(t0 + Duration::from_secs(210)),
        );
        assert_eq!((c.missing, c.deleted), (1, 1), "{c:?}");
        assert!(c.examples.iter().any(|e| e.contains("CA5: no record")));
    }

    #[test]
    fn call_lengths_are_reproducible_and_in_range() {
        let (lo, hi) = (Duration::from_secs(30), Duration::from_secs(180));
        let a: Vec<Duration> = {
            let mut r = Rng::new(7);
            (0..1000).map(|_| r.duration(lo, hi)).collect()
        };
        let mut r = Rng::new(7);
        assert!(a.iter().all(|d| *d == r.duration(lo, hi)));
        assert!(a.iter().all(|d| (lo..=hi).contains(d)));
        let mean = a.iter().map(Duration::as_secs_f64).sum::<f64>() / a.len() as f64;
        assert!((95.0..115.0).contains(&mean), "uniform: mean {mean}");
    }

    #[test]
    fn gauges_are_read_with_or_without_labels() {
        let text = "# TYPE callbridge_store_logical_bytes gauge\ncallbridge_store_logical_bytes 1234\ncallbridge_store_logical_bytes_x 9\nother{a=\"b\"} 5\n";
        assert_eq!(gauge(text, LOGICAL_BYTES_METRIC), Some(1234.0));
        assert_eq!(gauge(text, "other"), Some(5.0));
        assert_eq!(gauge(text, "missing"), None);
    }

    #[test]
    fn directory_bytes_count_nested_files() {
        let dir = std::env::temp_dir().join(format!("soak-dir-bytes-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), vec![1u8; 5000]).unwrap();
        std::fs::write(dir.join("sub/b"), vec![1u8; 3000]).unwrap();
        let (alloc, apparent) = dir_bytes(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(apparent, 8000);
        assert!(alloc >= 8000, "{alloc}");
    }
}
