//! `relay-floor`: what the cheapest possible user-space relay costs on this machine, per IO
//! model, with the load test's traffic shape. See the README, "Load test" → "The loopback relay
//! floor".
//!
//! ```text
//!  generator thread (CPU 0)                relay thread (CPU 1)            generator thread
//!  caller socket ── UP frame (381 B) ─────▶ one recv, one send ─ 271 B ──▶ upstream socket
//!  caller socket ◀──── 1024 B ───────────── one recv, one send ◀ DOWN 1024 B ── upstream socket
//!  caller socket ── ECHO (96 B) ──────────▶ one recv, consumed
//! ```
//!
//! Every call is two loopback TCP connections (`TCP_NODELAY`) through the relay. The relay does
//! the least a proxy must: find frame boundaries in the byte stream (a kind byte gives each
//! frame's length), forward the first `out` bytes of an UP or DOWN frame to the other socket,
//! count and drop ECHO frames. No JSON, no WebSocket framing, no base64.
//!
//! Every frame carries (kind, call, sequence number) and a pattern derived from them; the
//! generator checks every byte that arrives and counts lost, duplicated and corrupt frames. The
//! relay thread's CPU is read like the load test reads the proxy's: utime + stime from `/proc`
//! (its own task, plus any io_uring worker threads), over a window after the ramp-up.
//!
//! The relay runs as a thread of this process pinned with `taskset -p` (as the load test pins
//! its processes); the kernel charges a softirq to whatever task is running when it runs, so
//! the loopback receive work a `send` triggers lands in the sender's stime, as it does for the
//! proxy (this kernel has `CONFIG_IRQ_TIME_ACCOUNTING` off; the report also gives each CPU's
//! softirq time from `/proc/stat`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

/// Frame kinds (byte 0 of every frame).
pub const KIND_UP: u8 = 1;
/// Downlink frame (upstream → relay → caller).
pub const KIND_DOWN: u8 = 2;
/// Mark echo (caller → relay, consumed).
pub const KIND_ECHO: u8 = 3;

/// Kind (1) + call (4) + sequence number (8).
pub const HEADER: usize = 13;

/// Largest frame accepted (the relay's receive buffers are four times this).
pub const MAX_FRAME: usize = 4096;

/// Relay receive buffer per socket.
const RBUF: usize = 4 * MAX_FRAME;

/// How long the generator waits for frames in flight after it stops sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the relay may take to see every socket close after the generator is done.
const RELAY_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay loops wake at least this often to check for the stop flag.
const WAKE_EVERY: Duration = Duration::from_millis(100);

/// Most calls (each holds four descriptors in this process).
pub const MAX_CALLS: u32 = 10_000;

/// The relay's IO model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoModel {
    /// Hand-written mio loop (edge-triggered epoll), one recv and one send per frame.
    Epoll,
    /// One tokio task per call on a current-thread runtime, `select!` over both sockets.
    Tokio,
    /// Raw io_uring loop: one recv in flight per socket, sends batched, one
    /// `submit_and_wait` per loop turn; ring set up with SINGLE_ISSUER + DEFER_TASKRUN.
    Uring,
    /// The same io_uring loop with a plain ring (no SINGLE_ISSUER / DEFER_TASKRUN), as
    /// tokio-uring sets it up.
    UringPlain,
    /// The `uring` loop with one multishot recv per socket into a ring of provided buffers
    /// (no re-arm per frame; one copy out of the provided buffer).
    UringMultishot,
}

/// A fault the relay injects once (self-test of the generator's checker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Flip one payload byte of call 0's 10th uplink frame.
    CorruptUplink,
    /// Do not forward call 0's 10th uplink frame.
    DropUplink,
}

/// Frame sizes, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Uplink frame the caller sends (a Twilio `media` WebSocket frame).
    pub up_in: usize,
    /// What the relay forwards of it (an `input_audio_buffer.append` WebSocket frame).
    pub up_out: usize,
    /// Downlink frame upstream sends (an audio delta).
    pub down_in: usize,
    /// What the relay forwards of it to the caller.
    pub down_out: usize,
    /// The caller's answer to each downlink frame (a `mark` echo), consumed by the relay.
    pub echo: usize,
}

impl Shape {
    /// Checks the sizes: `HEADER ≤ out ≤ in ≤ MAX_FRAME`.
    pub fn validate(&self) -> Result<(), String> {
        for (what, inn, out) in [
            ("uplink", self.up_in, self.up_out),
            ("downlink", self.down_in, self.down_out),
            ("echo", self.echo, self.echo),
        ] {
            if out < HEADER || inn > MAX_FRAME || out > inn {
                return Err(format!(
                    "{what} sizes {inn} in / {out} out: need {HEADER} ≤ out ≤ in ≤ {MAX_FRAME}"
                ));
            }
        }
        Ok(())
    }

    /// Length on the wire into the relay of a frame of `kind`.
    fn in_len(&self, kind: u8) -> Option<usize> {
        match kind {
            KIND_UP => Some(self.up_in),
            KIND_DOWN => Some(self.down_in),
            KIND_ECHO => Some(self.echo),
            _ => None,
        }
    }
}

/// Byte `i` (≥ [`HEADER`]) of frame (`kind`, `call`, `seq`).
fn pattern_byte(kind: u8, call: u32, seq: u64, i: usize) -> u8 {
    (u64::from(call)
        .wrapping_mul(131)
        .wrapping_add(seq.wrapping_mul(29))
        .wrapping_add(i as u64 * 7)
        ^ u64::from(kind)) as u8
}

/// Appends frame (`kind`, `call`, `seq`) of `len` bytes to `out`.
pub fn write_frame(out: &mut Vec<u8>, kind: u8, call: u32, seq: u64, len: usize) {
    out.push(kind);
    out.extend_from_slice(&call.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend((HEADER..len).map(|i| pattern_byte(kind, call, seq, i)));
}

/// Frames counted by the relay (updated as it goes; read by the measuring thread).
#[derive(Debug, Default)]
pub struct Tally {
    /// Uplink frames forwarded.
    pub up: AtomicU64,
    /// Downlink frames forwarded.
    pub down: AtomicU64,
    /// Echo frames consumed.
    pub echo: AtomicU64,
}

/// A snapshot of [`Tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TallySnap {
    /// Uplink frames forwarded.
    pub up: u64,
    /// Downlink frames forwarded.
    pub down: u64,
    /// Echo frames consumed.
    pub echo: u64,
}

impl Tally {
    fn snap(&self) -> TallySnap {
        TallySnap {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            echo: self.echo.load(Ordering::Relaxed),
        }
    }
}

/// Which socket of a call bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller (UP and ECHO frames).
    Caller,
    /// Upstream (DOWN frames).
    Upstream,
}

impl Side {
    /// The side of a call's leg by its index (0: the caller's socket, 1: upstream's).
    fn of_leg(leg: usize) -> Side {
        if leg == 0 {
            Side::Caller
        } else {
            Side::Upstream
        }
    }
}

/// A call's two legs as (the one `side` receives on, the other one, where its frames go).
fn receiving_and_sending<L>(legs: &mut [L; 2], side: usize) -> (&mut L, &mut L) {
    let [a, b] = legs;
    if side == 0 {
        (a, b)
    } else {
        (b, a)
    }
}

/// Why the relay gave up on a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// A frame kind this side never sends.
    #[error("unexpected frame kind {kind} from the {from:?} side")]
    BadKind {
        /// The kind byte.
        kind: u8,
        /// Which side.
        from: Side,
    },
}

/// A fault still to inject on one call.
#[derive(Debug, Clone, Copy)]
pub struct PendingFault {
    fault: Fault,
    /// Uplink frames of this call still to pass before it.
    after: u32,
}

/// Relays the complete frames in `rbuf[..*rlen]` into `out` ([`relay_frames`]) and moves what
/// is left (the start of a frame) to the front of `rbuf`.
fn relay_buffered(
    shape: &Shape,
    from: Side,
    rbuf: &mut [u8],
    rlen: &mut usize,
    out: &mut Vec<u8>,
    tally: &Tally,
    fault: &mut Option<PendingFault>,
) -> Result<(), RelayError> {
    let used = relay_frames(shape, from, &rbuf[..*rlen], out, tally, fault)?;
    rbuf.copy_within(used..*rlen, 0);
    *rlen -= used;
    Ok(())
}

/// The relay's whole per-frame logic (sans-IO, shared by every IO model): takes the complete
/// frames at the start of `input`, appends the forwarded part of each UP/DOWN frame to `out`,
/// counts ECHO frames, and returns how many bytes it consumed (a partial frame stays).
pub fn relay_frames(
    shape: &Shape,
    from: Side,
    input: &[u8],
    out: &mut Vec<u8>,
    tally: &Tally,
    fault: &mut Option<PendingFault>,
) -> Result<usize, RelayError> {
    let mut at = 0;
    while at < input.len() {
        let kind = input[at];
        let ok = matches!(
            (from, kind),
            (Side::Caller, KIND_UP) | (Side::Caller, KIND_ECHO) | (Side::Upstream, KIND_DOWN)
        );
        let len = match shape.in_len(kind) {
            Some(l) if ok => l,
            _ => return Err(RelayError::BadKind { kind, from }),
        };
        if input.len() - at < len {
            break;
        }
        let frame = &input[at..at + len];
        match kind {
            KIND_UP => {
                let mut skip = false;
                if let Some(f) = fault {
                    if f.after == 0 {
                        let start = out.len();
                        match f.fault {
                            Fault::CorruptUplink => {
                                out.extend_from_slice(&frame[..shape.up_out]);
                                out[start + HEADER] ^= 0x5a;
                            }
                            Fault::DropUplink => skip = true,
                        }
                        *fault = None;
                        if !skip {
                            tally.up.fetch_add(1, Ordering::Relaxed);
                        }
                        at += len;
                        continue;
                    }
                    f.after -= 1;
                }
                out.extend_from_slice(&frame[..shape.up_out]);
                tally.up.fetch_add(1, Ordering::Relaxed);
            }
            KIND_DOWN => {
                out.extend_from_slice(&frame[..shape.down_out]);
                tally.down.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tally.echo.fetch_add(1, Ordering::Relaxed);
            }
        }
        at += len;
    }
    Ok(at)
}

/// Counts of one direction at one receiving socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CheckCounts {
    /// Frames received intact and in order.
    pub ok: u64,
    /// Frames never received (sequence gaps, and frames sent but not received by the end).
    pub lost: u64,
    /// Frames received twice or out of order.
    pub duplicated: u64,
    /// Frames whose kind, call or bytes did not match.
    pub corrupt: u64,
}

impl CheckCounts {
    fn add(&mut self, o: &CheckCounts) {
        self.ok += o.ok;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.corrupt += o.corrupt;
    }

    /// Any lost, duplicated or corrupt frame.
    pub fn any_error(&self) -> bool {
        self.lost + self.duplicated + self.corrupt > 0
    }
}

/// Checks the frames of one kind arriving on one socket, byte for byte.
#[derive(Debug)]
pub struct FrameChecker {
    kind: u8,
    len: usize,
    call: u32,
    next_seq: u64,
    partial: Vec<u8>,
    /// What was seen so far.
    pub counts: CheckCounts,
}

impl FrameChecker {
    /// Frames of `kind`, `len` bytes each, of call `call`, numbered from 0.
    pub fn new(kind: u8, len: usize, call: u32) -> FrameChecker {
        FrameChecker {
            kind,
            len,
            call,
            next_seq: 0,
            partial: Vec::with_capacity(2 * len),
            counts: CheckCounts::default(),
        }
    }

    /// Feeds received bytes; `on_frame` is called for every complete frame (intact or not).
    pub fn feed(&mut self, bytes: &[u8], mut on_frame: impl FnMut()) {
        self.partial.extend_from_slice(bytes);
        let mut at = 0;
        while self.partial.len() - at >= self.len {
            let f = &self.partial[at..at + self.len];
            at += self.len;
            on_frame();
            let call = u32::from_le_bytes(f[1..5].try_into().expect("4 bytes"));
            let seq = u64::from_le_bytes(f[5..13].try_into().expect("8 bytes"));
            if f[0] != self.kind || call != self.call {
                self.counts.corrupt += 1;
                continue;
            }
            if seq < self.next_seq {
                self.counts.duplicated += 1;
                continue;
            }
            self.counts.lost += seq - self.next_seq;
            self.next_seq = seq + 1;
            let intact = f[HEADER..]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(self.kind, call, seq, i + HEADER));
            if intact {
                self.counts.ok += 1;
            } else {
                self.counts.corrupt += 1;
            }
        }
        self.partial.drain(..at);
    }

    /// Frames received so far (complete ones, intact or not).
    fn received(&self) -> u64 {
        self.counts.ok + self.counts.duplicated + self.counts.corrupt
    }

    /// The final counts, given how many frames were sent: the ones after the last one seen
    /// are lost, and leftover bytes of a partial frame count as one corrupt frame.
    pub fn finish(&self, sent: u64) -> CheckCounts {
        let mut c = self.counts;
        c.lost += sent.saturating_sub(self.next_seq);
        if !self.partial.is_empty() {
            c.corrupt += 1;
        }
        c
    }
}

/// One relay-floor run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Concurrent calls.
    pub calls: u32,
    /// The relay's IO model.
    pub io: IoModel,
    /// Calls start evenly spread over this; the measurement starts after it.
    pub ramp_up: Duration,
    /// The measurement window.
    pub duration: Duration,
    /// Uplink frame interval per call.
    pub up_interval: Duration,
    /// Downlink frame interval per call.
    pub down_interval: Duration,
    /// Frame sizes.
    pub shape: Shape,
    /// Pin the relay thread to this CPU (`None`: no pinning).
    pub relay_cpu: Option<usize>,
    /// Pin the generator (and the measuring thread) to this CPU.
    pub generator_cpu: Option<usize>,
    /// A fault to inject once (the run must then fail).
    pub fault: Option<Fault>,
}

/// CPU of one thread (or a group of threads) over the window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuReport {
    /// utime + stime from `/proc/self/task/TID/stat` (10 ms ticks), seconds.
    pub cpu_s: f64,
    /// The same as a share of one core over the window, %.
    pub cpu_pct: f64,
    /// Of which user time, seconds.
    pub user_s: f64,
    /// Of which system time (incl. softirq run in the thread's context), seconds.
    pub system_s: f64,
    /// `sum_exec_runtime` from `/proc/self/task/TID/schedstat` (ns resolution), seconds.
    pub sched_cpu_s: f64,
    /// Voluntary context switches in the window.
    pub voluntary_ctxt_switches: u64,
    /// Involuntary context switches in the window.
    pub nonvoluntary_ctxt_switches: u64,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    /// `relay-floor`.
    pub mode: &'static str,
    /// The relay's IO model.
    pub io: IoModel,
    /// Concurrent calls.
    pub calls: u32,
    /// Measurement window, s.
    pub duration_s: f64,
    /// Ramp-up before the window, s.
    pub ramp_up_s: f64,
    /// Uplink interval per call, ms.
    pub up_interval_ms: f64,
    /// Downlink interval per call, ms.
    pub down_interval_ms: f64,
    /// Frame sizes.
    pub shape: Shape,
    /// Pinning.
    pub relay_cpu: Option<usize>,
    /// Pinning.
    pub generator_cpu: Option<usize>,
    /// Injected fault, if any.
    pub fault: Option<Fault>,
    /// Frames the relay handled in the window.
    pub window: TallySnap,
    /// Uplink + downlink frames forwarded in the window (the load test's "forwarded frames").
    pub forwarded_frames: u64,
    /// The relay thread (+ io_uring workers): CPU in the window.
    pub relay: CpuReport,
    /// io_uring worker threads (`iou-*`) seen at the end of the window, and their CPU (s, in
    /// `relay.cpu_s` already).
    pub io_worker_threads: u32,
    /// CPU of the io_uring workers, s.
    pub io_worker_cpu_s: f64,
    /// Relay utime + stime per forwarded frame, µs (the load test's `cpu_us_per_frame`).
    pub relay_cpu_us_per_frame: f64,
    /// The same from `schedstat` (ns resolution), µs.
    pub relay_sched_us_per_frame: f64,
    /// The generator thread in the window.
    pub generator: CpuReport,
    /// `/proc/stat` softirq time of the relay's CPU in the window, s (charged to whatever ran).
    pub relay_cpu_softirq_s: Option<f64>,
    /// `/proc/stat` softirq time of the generator's CPU in the window, s.
    pub generator_cpu_softirq_s: Option<f64>,
    /// Whole run: frames sent by the generator.
    pub sent: TallySnap,
    /// Whole run: frames the relay forwarded / consumed.
    pub relayed: TallySnap,
    /// Whole run: uplink frames checked at the upstream sockets.
    pub uplink: CheckCounts,
    /// Whole run: downlink frames checked at the caller sockets.
    pub downlink: CheckCounts,
    /// Everything that went wrong (empty: passed).
    pub problems: Vec<String>,
}

impl FloorReport {
    /// No lost, duplicated or corrupt frame, all counts equal, no error.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let io = serde_json::to_value(self.io).unwrap_or_default();
        s += &format!(
            "relay floor, io {}: {} calls, window {:.1} s after {:.1} s ramp-up\n",
            io.as_str().unwrap_or("?"),
            self.calls,
            self.duration_s,
            self.ramp_up_s
        );
        s += &format!(
            "  window: {} uplink + {} downlink forwarded ({:.0}/s), {} echoes consumed\n",
            self.window.up,
            self.window.down,
            self.forwarded_frames as f64 / self.duration_s.max(1e-9),
            self.window.echo
        );
        s += &format!(
            "  relay CPU: {:.2} s ({:.1}% of a core; user {:.2} s, system {:.2} s; schedstat {:.3} s), {} voluntary / {} involuntary context switches\n",
            self.relay.cpu_s, self.relay.cpu_pct, self.relay.user_s, self.relay.system_s,
            self.relay.sched_cpu_s, self.relay.voluntary_ctxt_switches, self.relay.nonvoluntary_ctxt_switches
        );
        if self.io_worker_threads > 0 {
            s += &format!(
                "  io_uring workers: {} threads, {:.2} s (included above)\n",
                self.io_worker_threads, self.io_worker_cpu_s
            );
        }
        s += &format!(
            "  relay µs CPU per forwarded frame: {:.2} (utime+stime), {:.2} (schedstat)\n",
            self.relay_cpu_us_per_frame, self.relay_sched_us_per_frame
        );
        s += &format!(
            "  generator CPU: {:.2} s ({:.1}% of a core)\n",
            self.generator.cpu_s, self.generator.cpu_pct
        );
        if let (Some(r), Some(g)) = (self.relay_cpu_softirq_s, self.generator_cpu_softirq_s) {
            s += &format!("  softirq (/proc/stat): relay CPU {r:.2} s, generator CPU {g:.2} s\n");
        }
        s += &format!(
            "  whole run: uplink sent {} relayed {} ok {} lost {} dup {} corrupt {}; downlink sent {} relayed {} ok {} lost {} dup {} corrupt {}; echoes sent {} consumed {}\n",
            self.sent.up, self.relayed.up, self.uplink.ok, self.uplink.lost, self.uplink.duplicated, self.uplink.corrupt,
            self.sent.down, self.relayed.down, self.downlink.ok, self.downlink.lost, self.downlink.duplicated, self.downlink.corrupt,
            self.sent.echo, self.relayed.echo
        );
        if self.problems.is_empty() {
            s += "  PASSED: every frame arrived once, in order, byte-exact\n";
        } else {
            for p in &self.problems {
                s += &format!("  FAILED: {p}\n");
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The command line

/// `callbridge-loadtest relay-floor`: a minimal relay per IO model, the load test's traffic.
#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// Concurrent calls (two loopback TCP connections each, through the relay).
    #[arg(long, default_value_t = 300)]
    calls: u32,
    /// The relay's IO model.
    #[arg(long, value_enum, default_value = "epoll")]
    io: IoModel,
    /// Measurement window (after the ramp-up).
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Calls start evenly spread over this; the window starts after it.
    #[arg(long, default_value = "3s", value_parser = crate::parse_duration)]
    ramp_up: Duration,
    /// Pin the relay thread to this CPU.
    #[arg(long, default_value_t = 1)]
    relay_cpu: usize,
    /// Pin the generator (callers + upstream, one thread) to this CPU.
    #[arg(long, default_value_t = 0)]
    generator_cpu: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Uplink frame interval per call.
    #[arg(long, default_value = "20ms", value_parser = crate::parse_duration)]
    up_interval: Duration,
    /// Downlink frame interval per call (default: downlink ≈ 15% of forwarded frames, as in
    /// the load test).
    #[arg(long, default_value = "113ms", value_parser = crate::parse_duration)]
    down_interval: Duration,
    /// Uplink frame into the relay, bytes (a Twilio `media` WebSocket frame).
    #[arg(long, default_value_t = 381)]
    up_in_bytes: usize,
    /// Uplink frame out of the relay, bytes (an `input_audio_buffer.append` WebSocket frame).
    #[arg(long, default_value_t = 271)]
    up_out_bytes: usize,
    /// Downlink frame into the relay, bytes.
    #[arg(long, default_value_t = 1024)]
    down_in_bytes: usize,
    /// Downlink frame out of the relay, bytes.
    #[arg(long, default_value_t = 1024)]
    down_out_bytes: usize,
    /// The caller's echo per downlink frame, bytes (consumed by the relay).
    #[arg(long, default_value_t = 96)]
    echo_bytes: usize,
    /// Self-test: inject one fault in the relay; the run must then fail.
    #[arg(long, value_enum)]
    inject_fault: Option<Fault>,
    /// Print the report as JSON on stdout (the summary goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand; `Ok(false)` when the run failed its checks.
pub fn main(a: &FloorArgs) -> anyhow::Result<bool> {
    if a.duration < Duration::from_secs(1) || a.duration > Duration::from_secs(600) {
        bail!("--duration must be between 1 s and 10 min");
    }
    if a.ramp_up > Duration::from_secs(60) {
        bail!("--ramp-up must be at most 60 s");
    }
    let spec = Spec {
        calls: a.calls,
        io: a.io,
        ramp_up: a.ramp_up,
        duration: a.duration,
        up_interval: a.up_interval,
        down_interval: a.down_interval,
        shape: Shape {
            up_in: a.up_in_bytes,
            up_out: a.up_out_bytes,
            down_in: a.down_in_bytes,
            down_out: a.down_out_bytes,
            echo: a.echo_bytes,
        },
        relay_cpu: (!a.no_pin).then_some(a.relay_cpu),
        generator_cpu: (!a.no_pin).then_some(a.generator_cpu),
        fault: a.inject_fault,
    };
    if let Err(e) = callbridge::limits::raise_nofile_limit() {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
    eprintln!(
        "relay floor: {} calls, io {:?}, ramp-up {:?}, window {:?}, relay CPU {:?}, generator CPU {:?}",
        spec.calls, spec.io, spec.ramp_up, spec.duration, spec.relay_cpu, spec.generator_cpu
    );
    let report = run(&spec)?;
    if a.json {
        eprint!("{}", report.table());
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(report.passed())
}

// ---------------------------------------------------------------------------------------------
// /proc parsing

/// utime and stime ticks (fields 14, 15) of a `/proc/…/stat` line (fields counted after the
/// last `)`, the command name may contain spaces).
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let utime = f.nth(11)?.parse().ok()?;
    let stime = f.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The command name (field 2) of a `/proc/…/stat` line.
pub fn parse_stat_comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// `sum_exec_runtime` (ns, first field) of a `/proc/…/schedstat` line.
pub fn parse_schedstat_ns(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` of a `/proc/…/status`.
pub fn parse_ctxt_switches(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .parse()
            .ok()
    };
    Some((
        field("voluntary_ctxt_switches:")?,
        field("nonvoluntary_ctxt_switches:")?,
    ))
}

/// The softirq ticks (7th value) of line `cpuN` of `/proc/stat`.
pub fn parse_proc_stat_softirq(stat: &str, cpu: usize) -> Option<u64> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    line.split_whitespace().nth(7)?.parse().ok()
}

/// Kernel ticks per second in `/proc` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// One reading of one thread.
#[derive(Debug, Clone, Copy, Default)]
struct TaskSample {
    utime: u64,
    stime: u64,
    sched_ns: u64,
    vol: u64,
    nonvol: u64,
}

impl TaskSample {
    fn read(tid: u32) -> anyhow::Result<TaskSample> {
        let base = format!("/proc/self/task/{tid}");
        let stat = std::fs::read_to_string(format!("{base}/stat"))
            .with_context(|| format!("reading {base}/stat"))?;
        let (utime, stime) =
            parse_stat_ticks(&stat).with_context(|| format!("parsing {base}/stat"))?;
        let sched_ns = std::fs::read_to_string(format!("{base}/schedstat"))
            .ok()
            .and_then(|s| parse_schedstat_ns(&s))
            .unwrap_or(0);
        let status = std::fs::read_to_string(format!("{base}/status"))
            .with_context(|| format!("reading {base}/status"))?;
        let (vol, nonvol) =
            parse_ctxt_switches(&status).with_context(|| format!("parsing {base}/status"))?;
        Ok(TaskSample {
            utime,
            stime,
            sched_ns,
            vol,
            nonvol,
        })
    }

    fn plus(self, o: TaskSample) -> TaskSample {
        TaskSample {
            utime: self.utime + o.utime,
            stime: self.stime + o.stime,
            sched_ns: self.sched_ns + o.sched_ns,
            vol: self.vol + o.vol,
            nonvol: self.nonvol + o.nonvol,
        }
    }

    fn delta(self, before: TaskSample, window_s: f64) -> CpuReport {
        let user_s = self.utime.saturating_sub(before.utime) as f64 / USER_HZ;
        let system_s = self.stime.saturating_sub(before.stime) as f64 / USER_HZ;
        CpuReport {
            cpu_s: user_s + system_s,
            cpu_pct: 100.0 * (user_s + system_s) / window_s.max(1e-9),
            user_s,
            system_s,
            sched_cpu_s: self.sched_ns.saturating_sub(before.sched_ns) as f64 / 1e9,
            voluntary_ctxt_switches: self.vol.saturating_sub(before.vol),
            nonvoluntary_ctxt_switches: self.nonvol.saturating_sub(before.nonvol),
        }
    }
}

/// io_uring worker threads of this process (`iou-wrk-*`, `iou-sqp-*`): their tids.
fn io_worker_tids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        parse_stat_comm(&stat)?.starts_with("iou-").then_some(tid)
    })
    .collect()
}

/// The calling thread's id (from `/proc/thread-self` → `PID/task/TID`).
fn current_tid() -> anyhow::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("odd /proc/thread-self link {}", link.display()))
}

/// Pins thread `tid` to `cpu` with `taskset -p -c` (the load test pins its processes the same
/// way).
fn pin_thread(tid: u32, cpu: usize) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset -p -c {cpu} {tid} failed");
    }
    Ok(())
}

/// Reading of everything sampled at the window's edges.
struct Edge {
    at: Instant,
    relay: TaskSample,
    workers: TaskSample,
    worker_count: u32,
    generator: TaskSample,
    proc_stat: Option<String>,
    tally: TallySnap,
}

fn sample_edge(relay_tid: u32, gen_tid: u32, tally: &Tally) -> anyhow::Result<Edge> {
    let tally = tally.snap();
    let relay = TaskSample::read(relay_tid)?;
    let tids = io_worker_tids();
    let workers = tids
        .iter()
        .filter_map(|&t| TaskSample::read(t).ok())
        .fold(TaskSample::default(), TaskSample::plus);
    let generator = TaskSample::read(gen_tid)?;
    Ok(Edge {
        at: Instant::now(),
        relay,
        workers,
        worker_count: tids.len() as u32,
        generator,
        proc_stat: std::fs::read_to_string("/proc/stat").ok(),
        tally,
    })
}

// ---------------------------------------------------------------------------------------------
// Setup

/// The relay's end of one call.
struct RelayCall {
    caller: StdStream,
    upstream: StdStream,
}

/// The generator's end of one call.
struct GenCall {
    caller: StdStream,
    upstream: StdStream,
}

/// Opens `n` calls: caller → relay listener, relay → upstream listener, all on loopback with
/// `TCP_NODELAY`, blocking (each IO model sets what it needs).
fn connect_calls(n: u32) -> anyhow::Result<(Vec<RelayCall>, Vec<GenCall>)> {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let relay_l = TcpListener::bind(lo).context("binding the relay's listener")?;
    let up_l = TcpListener::bind(lo).context("binding the upstream listener")?;
    let (relay_addr, up_addr) = (relay_l.local_addr()?, up_l.local_addr()?);
    let mut relay = Vec::with_capacity(n as usize);
    let mut gen = Vec::with_capacity(n as usize);
    for i in 0..n {
        let caller = StdStream::connect(relay_addr)
            .with_context(|| format!("call {i}: connect to the relay"))?;
        let (r_caller, _) = relay_l.accept().context("relay accept")?;
        let r_up =
            StdStream::connect(up_addr).with_context(|| format!("call {i}: connect upstream"))?;
        let (upstream, _) = up_l.accept().context("upstream accept")?;
        for s in [&caller, &r_caller, &r_up, &upstream] {
            s.set_nodelay(true).context("TCP_NODELAY")?;
        }
        relay.push(RelayCall {
            caller: r_caller,
            upstream: r_up,
        });
        gen.push(GenCall { caller, upstream });
    }
    Ok((relay, gen))
}

// ---------------------------------------------------------------------------------------------
// The run

/// Runs `spec` and reports (problems in [`FloorReport::problems`]; `Err` only on a setup or
/// IO failure).
pub fn run(spec: &Spec) -> anyhow::Result<FloorReport> {
    spec.shape.validate().map_err(anyhow::Error::msg)?;
    if spec.calls == 0 || spec.calls > MAX_CALLS {
        bail!("calls must be between 1 and {MAX_CALLS}");
    }
    if spec.up_interval.is_zero() || spec.down_interval.is_zero() {
        bail!("frame intervals must be positive");
    }
    if let Some(cpu) = spec.generator_cpu {
        pin_thread(current_tid()?, cpu)?;
    }
    let (relay_calls, gen_calls) = connect_calls(spec.calls)?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    // The relay thread.
    let (tid_tx, tid_rx) = mpsc::channel();
    let (relay_done_tx, relay_done_rx) = mpsc::channel();
    let relay_thread = {
        let (tally, stop, spec) = (Arc::clone(&tally), Arc::clone(&stop), spec.clone());
        std::thread::Builder::new()
            .name("relay".to_owned())
            .spawn(move || {
                let r = (|| -> anyhow::Result<()> {
                    let tid = current_tid()?;
                    if let Some(cpu) = spec.relay_cpu {
                        pin_thread(tid, cpu)?;
                    }
                    let _ = tid_tx.send(tid);
                    relay(&spec, relay_calls, &tally, &stop)
                })();
                let _ = relay_done_tx.send(());
                r
            })
            .context("spawning the relay thread")?
    };
    let relay_tid = tid_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the relay thread did not start")?;

    // The generator thread.
    let t0 = Instant::now() + Duration::from_millis(100);
    let window_start = t0 + spec.ramp_up;
    let window_end = window_start + spec.duration;
    let stop_sending = window_end + Duration::from_millis(300);
    let (gtid_tx, gtid_rx) = mpsc::channel();
    let gen_thread = {
        let spec = spec.clone();
        std::thread::Builder::new()
            .name("generator".to_owned())
            .spawn(move || -> anyhow::Result<GenResult> {
                let tid = current_tid()?;
                if let Some(cpu) = spec.generator_cpu {
                    pin_thread(tid, cpu)?;
                }
                let _ = gtid_tx.send(tid);
                generate(&spec, gen_calls, t0, stop_sending)
            })
            .context("spawning the generator thread")?
    };
    let gen_tid = gtid_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the generator thread did not start")?;

    std::thread::sleep(window_start.saturating_duration_since(Instant::now()));
    let e0 = sample_edge(relay_tid, gen_tid, &tally)?;
    std::thread::sleep(window_end.saturating_duration_since(Instant::now()));
    let e1 = sample_edge(relay_tid, gen_tid, &tally)?;

    let mut problems = Vec::new();
    let gen = match gen_thread.join() {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            stop.store(true, Ordering::Relaxed);
            return Err(e.context("generator"));
        }
        Err(_) => bail!("the generator thread panicked"),
    };
    // The generator closed its sockets: the relay sees every call end. Bounded wait.
    if relay_done_rx.recv_timeout(RELAY_STOP_TIMEOUT).is_err() {
        problems.push(format!(
            "the relay did not finish within {RELAY_STOP_TIMEOUT:?} of the generator closing"
        ));
        stop.store(true, Ordering::Relaxed);
        if relay_done_rx.recv_timeout(Duration::from_secs(2)).is_err() {
            bail!("the relay thread does not stop");
        }
    }
    match relay_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("relay: {e:#}")),
        Err(_) => problems.push("the relay thread panicked".to_owned()),
    }

    let window_s = e1.at.duration_since(e0.at).as_secs_f64();
    let relay_cpu = e1
        .relay
        .plus(e1.workers)
        .delta(e0.relay.plus(e0.workers), window_s);
    let worker_cpu = e1.workers.delta(e0.workers, window_s);
    let generator = e1.generator.delta(e0.generator, window_s);
    let window = TallySnap {
        up: e1.tally.up - e0.tally.up,
        down: e1.tally.down - e0.tally.down,
        echo: e1.tally.echo - e0.tally.echo,
    };
    let forwarded = window.up + window.down;
    let per_frame = |s: f64| {
        if forwarded == 0 {
            0.0
        } else {
            s * 1e6 / forwarded as f64
        }
    };
    let softirq = |cpu: Option<usize>| -> Option<f64> {
        let cpu = cpu?;
        let a = parse_proc_stat_softirq(e0.proc_stat.as_deref()?, cpu)?;
        let b = parse_proc_stat_softirq(e1.proc_stat.as_deref()?, cpu)?;
        Some(b.saturating_sub(a) as f64 / USER_HZ)
    };
    let relayed = tally.snap();
    if gen.uplink.any_error() {
        problems.push(format!("uplink frames: {:?}", gen.uplink));
    }
    if gen.downlink.any_error() {
        problems.push(format!("downlink frames: {:?}", gen.downlink));
    }
    if gen.sent.up != gen.uplink.ok || relayed.up != gen.sent.up {
        problems.push(format!(
            "uplink: {} sent, {} relayed, {} arrived intact",
            gen.sent.up, relayed.up, gen.uplink.ok
        ));
    }
    if gen.sent.down != gen.downlink.ok || relayed.down != gen.sent.down {
        problems.push(format!(
            "downlink: {} sent, {} relayed, {} arrived intact",
            gen.sent.down, relayed.down, gen.downlink.ok
        ));
    }
    if relayed.echo != gen.sent.echo || gen.sent.echo != gen.downlink.ok {
        problems.push(format!(
            "echoes: {} sent (for {} downlink frames), {} consumed by the relay",
            gen.sent.echo, gen.downlink.ok, relayed.echo
        ));
    }
    if !gen.drained {
        problems.push(format!(
            "frames still in flight {DRAIN_TIMEOUT:?} after the generator stopped sending"
        ));
    }
    if forwarded == 0 {
        problems.push("no frame forwarded in the window".to_owned());
    }
    Ok(FloorReport {
        mode: "relay-floor",
        io: spec.io,
        calls: spec.calls,
        duration_s: window_s,
        ramp_up_s: spec.ramp_up.as_secs_f64(),
        up_interval_ms: spec.up_interval.as_secs_f64() * 1e3,
        down_interval_ms: spec.down_interval.as_secs_f64() * 1e3,
        shape: spec.shape,
        relay_cpu: spec.relay_cpu,
        generator_cpu: spec.generator_cpu,
        fault: spec.fault,
        window,
        forwarded_frames: forwarded,
        relay_cpu_us_per_frame: per_frame(relay_cpu.cpu_s),
        relay_sched_us_per_frame: per_frame(relay_cpu.sched_cpu_s),
        relay: relay_cpu,
        io_worker_threads: e1.worker_count,
        io_worker_cpu_s: worker_cpu.cpu_s,
        generator,
        relay_cpu_softirq_s: softirq(spec.relay_cpu),
        generator_cpu_softirq_s: softirq(spec.generator_cpu),
        sent: gen.sent,
        relayed,
        uplink: gen.uplink,
        downlink: gen.downlink,
        problems,
    })
}

// ---------------------------------------------------------------------------------------------
// The generator: callers and upstream, one mio loop.

/// What the generator saw.
struct GenResult {
    sent: TallySnap,
    uplink: CheckCounts,
    downlink: CheckCounts,
    drained: bool,
}

/// A scheduled send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    call: u32,
    up: bool,
}

struct GenConn {
    caller: mio::net::TcpStream,
    upstream: mio::net::TcpStream,
    caller_out: Vec<u8>,
    upstream_out: Vec<u8>,
    up_seq: u64,
    down_seq: u64,
    echo_seq: u64,
    up_check: FrameChecker,
    down_check: FrameChecker,
}

/// Writes `bytes` now if nothing is queued, queuing what the socket does not take.
fn gen_send(
    sock: &mut mio::net::TcpStream,
    queue: &mut Vec<u8>,
    bytes: &[u8],
) -> anyhow::Result<()> {
    if !queue.is_empty() {
        queue.extend_from_slice(bytes);
        return Ok(());
    }
    let at = write_until_blocked(sock, bytes, "generator send")?;
    queue.extend_from_slice(&bytes[at..]);
    Ok(())
}

/// Writes `bytes` to a non-blocking socket until it is all written or the socket would block;
/// returns how much was written. `what` names the side for errors.
fn write_until_blocked(
    sock: &mut impl Write,
    bytes: &[u8],
    what: &'static str,
) -> anyhow::Result<usize> {
    let mut at = 0;
    while at < bytes.len() {
        match sock.write(&bytes[at..]) {
            Ok(0) => bail!("{what}: the peer closed the socket (wrote nothing)"),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context(what),
        }
    }
    Ok(at)
}

/// Sends what is queued, as far as the socket takes it.
fn gen_flush(sock: &mut mio::net::TcpStream, queue: &mut Vec<u8>) -> anyhow::Result<()> {
    let at = write_until_blocked(sock, queue, "generator send")?;
    queue.drain(..at);
    Ok(())
}

/// Reads everything readable; `Ok(false)` on EOF.
fn gen_read(
    sock: &mut mio::net::TcpStream,
    buf: &mut [u8],
    mut got: impl FnMut(&[u8]),
) -> anyhow::Result<bool> {
    loop {
        match sock.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => got(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("generator recv"),
        }
    }
}

fn generate(
    spec: &Spec,
    calls: Vec<GenCall>,
    t0: Instant,
    stop_sending: Instant,
) -> anyhow::Result<GenResult> {
    use mio::{Events, Interest, Poll, Token};
    let shape = spec.shape;
    let mut poll = Poll::new().context("generator poll")?;
    let mut conns = Vec::with_capacity(calls.len());
    let n = calls.len() as u32;
    let mut heap = BinaryHeap::with_capacity(2 * calls.len());
    for (i, c) in calls.into_iter().enumerate() {
        let i = i as u32;
        c.caller.set_nonblocking(true)?;
        c.upstream.set_nonblocking(true)?;
        let mut caller = mio::net::TcpStream::from_std(c.caller);
        let mut upstream = mio::net::TcpStream::from_std(c.upstream);
        let both = Interest::READABLE | Interest::WRITABLE;
        poll.registry()
            .register(&mut caller, Token(2 * i as usize), both)?;
        poll.registry()
            .register(&mut upstream, Token(2 * i as usize + 1), both)?;
        conns.push(GenConn {
            caller,
            upstream,
            caller_out: Vec::new(),
            upstream_out: Vec::new(),
            up_seq: 0,
            down_seq: 0,
            echo_seq: 0,
            up_check: FrameChecker::new(KIND_UP, shape.up_out, i),
            down_check: FrameChecker::new(KIND_DOWN, shape.down_out, i),
        });
        let start = t0 + spec.ramp_up.mul_f64(f64::from(i) / f64::from(n));
        heap.push(Reverse(Due {
            at: start,
            call: i,
            up: true,
        }));
        // Downlink phases spread over one interval, independent of the uplink's.
        let down_phase = spec
            .down_interval
            .mul_f64(f64::from((i * 7919) % n) / f64::from(n));
        heap.push(Reverse(Due {
            at: start + down_phase,
            call: i,
            up: false,
        }));
    }
    let mut events = Events::with_capacity(1024);
    let mut frame = Vec::with_capacity(MAX_FRAME);
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut sent = TallySnap::default();
    let hard_end = stop_sending + DRAIN_TIMEOUT;
    let mut drained = false;
    loop {
        let now = Instant::now();
        let sending = now < stop_sending;
        if sending {
            while let Some(Reverse(d)) = heap.peek().copied() {
                if d.at > now {
                    break;
                }
                heap.pop();
                let c = &mut conns[d.call as usize];
                frame.clear();
                if d.up {
                    write_frame(&mut frame, KIND_UP, d.call, c.up_seq, shape.up_in);
                    c.up_seq += 1;
                    sent.up += 1;
                    gen_send(&mut c.caller, &mut c.caller_out, &frame)?;
                    heap.push(Reverse(Due {
                        at: d.at + spec.up_interval,
                        ..d
                    }));
                } else {
                    write_frame(&mut frame, KIND_DOWN, d.call, c.down_seq, shape.down_in);
                    c.down_seq += 1;
                    sent.down += 1;
                    gen_send(&mut c.upstream, &mut c.upstream_out, &frame)?;
                    heap.push(Reverse(Due {
                        at: d.at + spec.down_interval,
                        ..d
                    }));
                }
            }
        } else {
            let all_in = conns.iter().all(|c| {
                c.up_check.received() + c.up_check.counts.lost >= c.up_seq
                    && c.down_check.received() + c.down_check.counts.lost >= c.down_seq
                    && c.caller_out.is_empty()
                    && c.upstream_out.is_empty()
            });
            if all_in {
                drained = true;
                break;
            }
            if now >= hard_end {
                break;
            }
        }
        let timeout = if sending {
            heap.peek()
                .map_or(WAKE_EVERY, |Reverse(d)| d.at.saturating_duration_since(now))
                .min(stop_sending.saturating_duration_since(now))
        } else {
            Duration::from_millis(20)
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("generator poll"),
        }
        for ev in events.iter() {
            let i = ev.token().0 / 2;
            let c = &mut conns[i];
            if ev.token().0 % 2 == 0 {
                // Caller: downlink frames in, an echo out for each.
                if ev.is_writable() {
                    gen_flush(&mut c.caller, &mut c.caller_out)?;
                }
                if ev.is_readable() {
                    let mut new = 0u64;
                    let check = &mut c.down_check;
                    let open = gen_read(&mut c.caller, &mut rbuf, |b| check.feed(b, || new += 1))?;
                    for _ in 0..new {
                        frame.clear();
                        write_frame(&mut frame, KIND_ECHO, i as u32, c.echo_seq, shape.echo);
                        c.echo_seq += 1;
                        sent.echo += 1;
                        gen_send(&mut c.caller, &mut c.caller_out, &frame)?;
                    }
                    if !open {
                        bail!("the relay closed call {i}'s caller socket");
                    }
                }
            } else {
                if ev.is_writable() {
                    gen_flush(&mut c.upstream, &mut c.upstream_out)?;
                }
                if ev.is_readable() {
                    let check = &mut c.up_check;
                    if !gen_read(&mut c.upstream, &mut rbuf, |b| check.feed(b, || {}))? {
                        bail!("the relay closed call {i}'s upstream socket");
                    }
                }
            }
        }
    }
    let mut uplink = CheckCounts::default();
    let mut downlink = CheckCounts::default();
    for c in &conns {
        uplink.add(&c.up_check.finish(c.up_seq));
        downlink.add(&c.down_check.finish(c.down_seq));
    }
    // Closing both ends of every call (FIN) tells the relay the run is over.
    drop(conns);
    Ok(GenResult {
        sent,
        uplink,
        downlink,
        drained,
    })
}

// ---------------------------------------------------------------------------------------------
// The relays

fn relay(
    spec: &Spec,
    calls: Vec<RelayCall>,
    tally: &Arc<Tally>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    match spec.io {
        IoModel::Epoll => relay_epoll(spec, calls, tally, stop),
        IoModel::Tokio => relay_tokio(spec, calls, tally, stop),
        IoModel::Uring => uring::relay(
            spec,
            calls,
            tally,
            stop,
            uring::Mode {
                defer: true,
                multishot: false,
            },
        ),
        IoModel::UringPlain => uring::relay(
            spec,
            calls,
            tally,
            stop,
            uring::Mode {
                defer: false,
                multishot: false,
            },
        ),
        IoModel::UringMultishot => uring::relay(
            spec,
            calls,
            tally,
            stop,
            uring::Mode {
                defer: true,
                multishot: true,
            },
        ),
    }
}

/// The fault for call `i`, if any.
fn fault_for(spec: &Spec, i: usize) -> Option<PendingFault> {
    (i == 0)
        .then_some(spec.fault)
        .flatten()
        .map(|fault| PendingFault { fault, after: 9 })
}

/// One receiving side of a call in the epoll relay.
struct Leg {
    sock: mio::net::TcpStream,
    rbuf: Box<[u8]>,
    rlen: usize,
    /// Bytes for this socket the kernel has not taken yet.
    out: Vec<u8>,
    eof: bool,
    writable_armed: bool,
}

struct EpollCall {
    legs: [Leg; 2],
    fault: Option<PendingFault>,
    open: bool,
}

/// Reads side `side` of call `c` until a short read (on a TCP socket that means its receive
/// queue is empty, and edge-triggered epoll reports any later arrival), relays the frames and
/// queues them for the other side. When the event also reported the peer's FIN
/// (`read_closed`), reads on to the EOF: that edge will not be reported again.
fn epoll_readable(
    shape: &Shape,
    c: &mut EpollCall,
    side: usize,
    read_closed: bool,
    tally: &Tally,
) -> anyhow::Result<()> {
    let from = Side::of_leg(side);
    let (rx, tx) = receiving_and_sending(&mut c.legs, side);
    loop {
        let space = rx.rbuf.len() - rx.rlen;
        match rx.sock.read(&mut rx.rbuf[rx.rlen..]) {
            Ok(0) => {
                rx.eof = true;
                break;
            }
            Ok(n) => {
                rx.rlen += n;
                relay_buffered(
                    shape,
                    from,
                    &mut rx.rbuf,
                    &mut rx.rlen,
                    &mut tx.out,
                    tally,
                    &mut c.fault,
                )?;
                if n < space && !read_closed {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("relay recv"),
        }
    }
    Ok(())
}

/// Sends what is queued for leg `tx`; `Ok(true)` when it all went.
fn epoll_flush(tx: &mut Leg) -> anyhow::Result<bool> {
    let at = write_until_blocked(&mut tx.sock, &tx.out, "relay send")?;
    tx.out.drain(..at);
    Ok(tx.out.is_empty())
}

fn relay_epoll(
    spec: &Spec,
    calls: Vec<RelayCall>,
    tally: &Tally,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().context("relay poll")?;
    let mut conns = Vec::with_capacity(calls.len());
    for (i, c) in calls.into_iter().enumerate() {
        let mut legs = [c.caller, c.upstream].map(|s| {
            s.set_nonblocking(true)
                .expect("set_nonblocking on a connected socket");
            Leg {
                sock: mio::net::TcpStream::from_std(s),
                rbuf: vec![0u8; RBUF].into_boxed_slice(),
                rlen: 0,
                out: Vec::with_capacity(RBUF),
                eof: false,
                writable_armed: false,
            }
        });
        for (side, leg) in legs.iter_mut().enumerate() {
            poll.registry()
                .register(&mut leg.sock, Token(2 * i + side), Interest::READABLE)?;
        }
        conns.push(EpollCall {
            legs,
            fault: fault_for(spec, i),
            open: true,
        });
    }
    let mut open = conns.len();
    let mut events = Events::with_capacity(1024);
    while open > 0 && !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(WAKE_EVERY)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("relay poll"),
        }
        for ev in events.iter() {
            let (i, side) = (ev.token().0 / 2, ev.token().0 % 2);
            let c = &mut conns[i];
            if !c.open {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() {
                epoll_readable(&spec.shape, c, side, ev.is_read_closed(), tally)?;
                // What came in goes out on the other leg now.
                let tx = &mut c.legs[1 - side];
                if !tx.out.is_empty() && !tx.writable_armed && !epoll_flush(tx)? {
                    tx.writable_armed = true;
                    poll.registry().reregister(
                        &mut tx.sock,
                        Token(2 * i + 1 - side),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                }
            }
            if ev.is_writable() {
                let tx = &mut c.legs[side];
                if epoll_flush(tx)? && tx.writable_armed {
                    tx.writable_armed = false;
                    poll.registry().reregister(
                        &mut tx.sock,
                        Token(2 * i + side),
                        Interest::READABLE,
                    )?;
                }
            }
            if c.legs[0].eof && c.legs[1].eof {
                c.open = false;
                open -= 1;
                for leg in &mut c.legs {
                    let _ = poll.registry().deregister(&mut leg.sock);
                }
            }
        }
    }
    Ok(())
}

fn relay_tokio(
    spec: &Spec,
    calls: Vec<RelayCall>,
    tally: &Arc<Tally>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("building the relay's tokio runtime")?;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in calls.into_iter().enumerate() {
            c.caller.set_nonblocking(true)?;
            c.upstream.set_nonblocking(true)?;
            let caller = tokio::net::TcpStream::from_std(c.caller)?;
            let upstream = tokio::net::TcpStream::from_std(c.upstream)?;
            let (shape, tally, fault) = (spec.shape, Arc::clone(tally), fault_for(spec, i));
            set.spawn(tokio_call(shape, caller, upstream, tally, fault));
        }
        let mut wake = tokio::time::interval(WAKE_EVERY);
        loop {
            tokio::select! {
                j = set.join_next() => match j {
                    None => return Ok(()),
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(e)) => bail!("a relay task failed: {e}"),
                },
                _ = wake.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        set.abort_all();
                        return Ok(());
                    }
                }
            }
        }
    })
}

/// One call in the tokio relay: one task owns both sockets and `select!`s over their reads,
/// like callbridge's epoll driver.
async fn tokio_call(
    shape: Shape,
    mut caller: tokio::net::TcpStream,
    mut upstream: tokio::net::TcpStream,
    tally: Arc<Tally>,
    mut fault: Option<PendingFault>,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cbuf, mut ubuf) = (vec![0u8; RBUF], vec![0u8; RBUF]);
    let (mut clen, mut ulen) = (0usize, 0usize);
    let (mut c_eof, mut u_eof) = (false, false);
    let mut out = Vec::with_capacity(RBUF);
    while !(c_eof && u_eof) {
        tokio::select! {
            r = caller.read(&mut cbuf[clen..]), if !c_eof => {
                let n = r.context("relay recv")?;
                if n == 0 {
                    c_eof = true;
                    continue;
                }
                clen += n;
                let used = relay_frames(&shape, Side::Caller, &cbuf[..clen], &mut out, &tally, &mut fault)?;
                cbuf.copy_within(used..clen, 0);
                clen -= used;
                if !out.is_empty() {
                    upstream.write_all(&out).await.context("relay send")?;
                    out.clear();
                }
            }
            r = upstream.read(&mut ubuf[ulen..]), if !u_eof => {
                let n = r.context("relay recv")?;
                if n == 0 {
                    u_eof = true;
                    continue;
                }
                ulen += n;
                let used = relay_frames(&shape, Side::Upstream, &ubuf[..ulen], &mut out, &tally, &mut fault)?;
                ubuf.copy_within(used..ulen, 0);
                ulen -= used;
                if !out.is_empty() {
                    caller.write_all(&out).await.context("relay send")?;
                    out.clear();
                }
            }
        }
    }
    Ok(())
}

mod uring {
    //! The io_uring relays: one `submit_with_args` (submit + wait for at least one completion,
    //! 100 ms timeout) per loop turn, sends queued per socket (one in flight at a time), and
    //! either one recv in flight per socket re-armed on completion, or one multishot recv per
    //! socket into a registered ring of provided buffers.

    use super::*;
    use io_uring::{cqueue, opcode, squeue, types, IoUring};
    use std::alloc::Layout;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::AtomicU16;

    /// How the ring is set up and read.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Mode {
        /// SINGLE_ISSUER + DEFER_TASKRUN.
        pub(super) defer: bool,
        /// Multishot recv with a provided-buffer ring.
        pub(super) multishot: bool,
    }

    struct ULeg {
        sock: StdStream,
        rbuf: Box<[u8]>,
        rlen: usize,
        recv_inflight: bool,
        /// Bytes the send in flight reads (not touched until it completes).
        sending: Vec<u8>,
        send_off: usize,
        send_inflight: bool,
        /// Bytes for the next send.
        queued: Vec<u8>,
        eof: bool,
    }

    struct UCall {
        legs: [ULeg; 2],
        fault: Option<PendingFault>,
        open: bool,
    }

    const OP_RECV: u64 = 0;
    const OP_SEND: u64 = 1;

    /// The provided-buffer group of the multishot recvs.
    const BGID: u16 = 7;

    /// Size of one provided buffer.
    const PBUF: usize = 2048;

    fn ud(call: usize, side: usize, op: u64) -> u64 {
        ((call as u64) << 2) | ((side as u64) << 1) | op
    }

    /// A ring of provided buffers (`IORING_REGISTER_PBUF_RING`): the entries (page-aligned, as
    /// the kernel requires) and the buffers they point at.
    struct BufRing {
        entries: *mut types::BufRingEntry,
        layout: Layout,
        count: u16,
        tail: u16,
        bufs: Vec<u8>,
    }

    impl BufRing {
        fn new(count: u16) -> anyhow::Result<BufRing> {
            assert!(count.is_power_of_two());
            let layout = Layout::from_size_align(
                usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
                4096,
            )?;
            // SAFETY: a non-zero-sized layout; freed in Drop with the same layout.
            let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
            if entries.is_null() {
                bail!("allocating the buffer ring");
            }
            let mut r = BufRing {
                entries,
                layout,
                count,
                tail: 0,
                bufs: vec![0u8; usize::from(count) * PBUF],
            };
            for bid in 0..count {
                r.give_back(bid);
            }
            r.publish();
            Ok(r)
        }

        /// Puts buffer `bid` back in the ring (visible to the kernel at [`Self::publish`]).
        fn give_back(&mut self, bid: u16) {
            let idx = usize::from(self.tail & (self.count - 1));
            // SAFETY: `idx < count`, inside the allocation; the kernel only reads entries
            // between its head and our published tail, and this one is past the tail.
            let e = unsafe { &mut *self.entries.add(idx) };
            e.set_addr(self.bufs[usize::from(bid) * PBUF..].as_ptr() as u64);
            e.set_len(PBUF as u32);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
        }

        /// Publishes the tail (release: the entries written before it are visible first).
        fn publish(&self) {
            // SAFETY: the tail is the `resv` field of entry 0, a u16 inside the allocation,
            // aligned to 2; the kernel only reads it.
            let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
            tail.store(self.tail, Ordering::Release);
        }

        fn buf(&self, bid: u16, len: usize) -> &[u8] {
            &self.bufs[usize::from(bid) * PBUF..][..len]
        }
    }

    impl Drop for BufRing {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout. Dropped after the ring (see relay).
            unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) };
        }
    }

    /// Pushes `e`, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Every buffer `e` points at must stay valid and untouched until its completion.
    unsafe fn push(ring: &mut IoUring, e: &squeue::Entry) -> anyhow::Result<()> {
        loop {
            // SAFETY: forwarded to the caller (the entry's buffers).
            if unsafe { ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            ring.submit().context("io_uring submit (queue full)")?;
        }
    }

    /// Arms a recv on leg `side` unless one is in flight or it saw EOF.
    fn arm_recv(
        ring: &mut IoUring,
        mode: Mode,
        c: &mut UCall,
        i: usize,
        side: usize,
        inflight: &mut usize,
    ) -> anyhow::Result<()> {
        let leg = &mut c.legs[side];
        if leg.recv_inflight || leg.eof {
            return Ok(());
        }
        let fd = types::Fd(leg.sock.as_raw_fd());
        if mode.multishot {
            let e = opcode::RecvMulti::new(fd, BGID)
                .build()
                .user_data(ud(i, side, OP_RECV));
            // SAFETY: the kernel writes into buffers of the registered BufRing, which is
            // dropped after the ring (and leaked if an op is still in flight at the end);
            // a buffer is only read after its completion and given back after that.
            unsafe { push(ring, &e)? };
        } else {
            let space = &mut leg.rbuf[leg.rlen..];
            let e = opcode::Recv::new(fd, space.as_mut_ptr(), space.len() as u32)
                .build()
                .user_data(ud(i, side, OP_RECV));
            // SAFETY: the kernel writes into `leg.rbuf[rlen..]`, a boxed slice owned by
            // `calls`, which is dropped after the ring (and leaked if an op is still in
            // flight at the end); `rbuf` is not touched while `recv_inflight` is set.
            unsafe { push(ring, &e)? };
        }
        leg.recv_inflight = true;
        *inflight += 1;
        Ok(())
    }

    /// Sends the rest of `sending`, or what is queued, unless a send is in flight.
    fn start_send(
        ring: &mut IoUring,
        c: &mut UCall,
        i: usize,
        side: usize,
        inflight: &mut usize,
    ) -> anyhow::Result<()> {
        let leg = &mut c.legs[side];
        if leg.send_inflight {
            return Ok(());
        }
        if leg.send_off >= leg.sending.len() {
            if leg.queued.is_empty() {
                return Ok(());
            }
            std::mem::swap(&mut leg.sending, &mut leg.queued);
            leg.queued.clear();
            leg.send_off = 0;
        }
        let rest = &leg.sending[leg.send_off..];
        let e = opcode::Send::new(
            types::Fd(leg.sock.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .build()
        .user_data(ud(i, side, OP_SEND));
        // SAFETY: the kernel reads `leg.sending[send_off..]`, a heap buffer owned by `calls`
        // (dropped after the ring, leaked if an op is still in flight at the end); `sending`
        // is not modified, swapped or dropped while `send_inflight` is set (new bytes go to
        // `queued`).
        unsafe { push(ring, &e)? };
        leg.send_inflight = true;
        *inflight += 1;
        Ok(())
    }

    pub(super) fn relay(
        spec: &Spec,
        calls: Vec<RelayCall>,
        tally: &Tally,
        stop: &AtomicBool,
        mode: Mode,
    ) -> anyhow::Result<()> {
        // Declared before the ring: dropped after it.
        let mut calls: Vec<UCall> = calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| UCall {
                legs: [c.caller, c.upstream].map(|sock| ULeg {
                    sock,
                    rbuf: vec![0u8; RBUF].into_boxed_slice(),
                    rlen: 0,
                    recv_inflight: false,
                    sending: Vec::with_capacity(RBUF),
                    send_off: 0,
                    send_inflight: false,
                    queued: Vec::with_capacity(RBUF),
                    eof: false,
                }),
                fault: fault_for(spec, i),
                open: true,
            })
            .collect();
        let entries = (4 * calls.len()).next_power_of_two().clamp(64, 32768) as u32;
        let mut bufring = if mode.multishot {
            Some(BufRing::new(
                (2 * calls.len()).next_power_of_two().clamp(64, 32768) as u16,
            )?)
        } else {
            None
        };
        let mut b = IoUring::builder();
        if mode.defer {
            b.setup_single_issuer().setup_defer_taskrun();
        }
        b.setup_cqsize(2 * entries);
        let mut ring = b.build(entries).context("creating the io_uring")?;
        if let Some(br) = &bufring {
            // SAFETY: the entries stay allocated until `bufring` drops, after the ring.
            unsafe {
                ring.submitter()
                    .register_buf_ring(br.entries as u64, br.count, BGID)
                    .context("registering the provided-buffer ring")?
            };
        }
        let mut inflight = 0usize;
        for (i, c) in calls.iter_mut().enumerate() {
            for side in 0..2 {
                arm_recv(&mut ring, mode, c, i, side, &mut inflight)?;
            }
        }
        let mut open = calls.len();
        let ts = types::Timespec::from(WAKE_EVERY);
        let args = types::SubmitArgs::new().timespec(&ts);
        let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(entries as usize * 2);
        let mut result = Ok(());
        while open > 0 && !stop.load(Ordering::Relaxed) {
            match ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::ETIME)
                        || e.raw_os_error() == Some(libc::EBUSY)
                        || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(anyhow::Error::new(e).context("io_uring submit_and_wait"));
                    break;
                }
            }
            done.clear();
            done.extend(
                ring.completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let mut turn = Turn {
                ring: &mut ring,
                mode,
                bufring: bufring.as_mut(),
                inflight: &mut inflight,
                open: &mut open,
            };
            if let Err(e) = turn.handle(spec, &mut calls, &done, tally) {
                result = Err(e);
                break;
            }
            if let Some(br) = &bufring {
                br.publish();
            }
        }
        // Nothing may be in flight when the buffers go: shut the sockets down (recvs complete
        // with 0) and reap, bounded; if something is still in flight, leak the buffers.
        for c in &calls {
            for l in &c.legs {
                let _ = l.sock.shutdown(std::net::Shutdown::Both);
            }
        }
        let until = Instant::now() + Duration::from_secs(2);
        while inflight > 0 && Instant::now() < until {
            let _ = ring.submitter().submit_with_args(1, &args);
            let n = ring
                .completion()
                .filter(|c| !cqueue::more(c.flags()))
                .count();
            inflight = inflight.saturating_sub(n);
        }
        drop(ring);
        if inflight > 0 {
            std::mem::forget(calls);
            std::mem::forget(bufring);
        }
        result
    }

    /// What one loop turn's completions work on.
    struct Turn<'a> {
        ring: &'a mut IoUring,
        mode: Mode,
        bufring: Option<&'a mut BufRing>,
        inflight: &'a mut usize,
        open: &'a mut usize,
    }

    impl Turn<'_> {
        fn handle(
            &mut self,
            spec: &Spec,
            calls: &mut [UCall],
            done: &[(u64, i32, u32)],
            tally: &Tally,
        ) -> anyhow::Result<()> {
            for &(user_data, res, flags) in done {
                let more = cqueue::more(flags);
                if !more {
                    *self.inflight -= 1;
                }
                let (i, side, op) = (
                    (user_data >> 2) as usize,
                    ((user_data >> 1) & 1) as usize,
                    user_data & 1,
                );
                let c = &mut calls[i];
                if op == OP_RECV {
                    if !more {
                        c.legs[side].recv_inflight = false;
                    }
                    if res == -libc::ENOBUFS && self.mode.multishot {
                        // Out of provided buffers: re-armed below, after this turn's give-backs.
                    } else if res < 0 {
                        bail!("relay recv: {}", std::io::Error::from_raw_os_error(-res));
                    } else if res == 0 {
                        c.legs[side].eof = true;
                    } else {
                        let n = res as usize;
                        let from = Side::of_leg(side);
                        let (rx, tx) = receiving_and_sending(&mut c.legs, side);
                        if let Some(br) = self.bufring.as_deref_mut() {
                            let bid = cqueue::buffer_select(flags)
                                .context("a multishot recv completion without a buffer")?;
                            if rx.rlen + n > rx.rbuf.len() {
                                bail!("relay receive buffer overflow");
                            }
                            rx.rbuf[rx.rlen..rx.rlen + n].copy_from_slice(br.buf(bid, n));
                            br.give_back(bid);
                        }
                        rx.rlen += n;
                        relay_buffered(
                            &spec.shape,
                            from,
                            &mut rx.rbuf,
                            &mut rx.rlen,
                            &mut tx.queued,
                            tally,
                            &mut c.fault,
                        )?;
                        start_send(self.ring, c, i, 1 - side, self.inflight)?;
                    }
                    arm_recv(self.ring, self.mode, c, i, side, self.inflight)?;
                } else {
                    let leg = &mut c.legs[side];
                    leg.send_inflight = false;
                    if res < 0 {
                        bail!("relay send: {}", std::io::Error::from_raw_os_error(-res));
                    }
                    leg.send_off += res as usize;
                    start_send(self.ring, c, i, side, self.inflight)?;
                }
                if c.open
                    && c.legs
                        .iter()
                        .all(|l| l.eof && !l.recv_inflight && !l.send_inflight)
                {
                    c.open = false;
                    *self.open -= 1;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            up_in: 381,
            up_out: 271,
            down_in: 1024,
            down_out: 1024,
            echo: 96,
        }
    }

    fn frames(kind: u8, call: u32, seqs: std::ops::Range<u64>, len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for s in seqs {
            write_frame(&mut v, kind, call, s, len);
        }
        v
    }

    #[test]
    fn the_checker_accepts_intact_frames_split_anywhere() {
        let bytes = frames(KIND_UP, 7, 0..5, 271);
        let mut c = FrameChecker::new(KIND_UP, 271, 7);
        let mut seen = 0;
        for chunk in bytes.chunks(100) {
            c.feed(chunk, || seen += 1);
        }
        assert_eq!(seen, 5);
        assert_eq!(
            c.finish(5),
            CheckCounts {
                ok: 5,
                ..CheckCounts::default()
            }
        );
    }

    #[test]
    fn the_checker_finds_corrupt_lost_duplicated_and_wrong_call() {
        let mut bytes = frames(KIND_DOWN, 3, 0..4, 100);
        bytes[2 * 100 + 50] ^= 1; // frame 2's payload
        let mut c = FrameChecker::new(KIND_DOWN, 100, 3);
        c.feed(&bytes, || {});
        assert_eq!(c.counts.corrupt, 1);
        assert_eq!(c.counts.ok, 3);

        let mut c = FrameChecker::new(KIND_DOWN, 100, 3);
        let mut b = frames(KIND_DOWN, 3, 0..1, 100);
        b.extend(frames(KIND_DOWN, 3, 2..3, 100)); // 1 missing
        b.extend(frames(KIND_DOWN, 3, 2..3, 100)); // 2 again
        b.extend(frames(KIND_DOWN, 4, 3..4, 100)); // another call's
        c.feed(&b, || {});
        let f = c.finish(5);
        assert_eq!(f.ok, 2);
        assert_eq!(f.duplicated, 1);
        assert_eq!(f.corrupt, 1);
        assert_eq!(f.lost, 1 + 2, "seq 1, then 3 and 4 never arrived intact");
    }

    #[test]
    fn a_trailing_partial_frame_counts_corrupt() {
        let bytes = frames(KIND_UP, 0, 0..2, 50);
        let mut c = FrameChecker::new(KIND_UP, 50, 0);
        c.feed(&bytes[..70], || {});
        assert_eq!(c.finish(2).corrupt, 1);
        assert_eq!(c.finish(2).lost, 1);
    }

    #[test]
    fn the_relay_forwards_truncated_frames_consumes_echoes_and_keeps_partials() {
        let s = shape();
        let mut input = frames(KIND_UP, 1, 0..2, s.up_in);
        input.extend(frames(KIND_ECHO, 1, 0..1, s.echo));
        input.extend(&frames(KIND_UP, 1, 2..3, s.up_in)[..100]);
        let tally = Tally::default();
        let mut out = Vec::new();
        let used = relay_frames(&s, Side::Caller, &input, &mut out, &tally, &mut None).unwrap();
        assert_eq!(used, 2 * s.up_in + s.echo);
        assert_eq!(out.len(), 2 * s.up_out);
        assert_eq!(
            tally.snap(),
            TallySnap {
                up: 2,
                down: 0,
                echo: 1
            }
        );
        let mut c = FrameChecker::new(KIND_UP, s.up_out, 1);
        c.feed(&out, || {});
        assert_eq!(
            c.finish(2),
            CheckCounts {
                ok: 2,
                ..CheckCounts::default()
            }
        );
    }

    #[test]
    fn the_relay_refuses_a_kind_from_the_wrong_side() {
        let s = shape();
        let input = frames(KIND_DOWN, 1, 0..1, s.down_in);
        let err = relay_frames(
            &s,
            Side::Caller,
            &input,
            &mut Vec::new(),
            &Tally::default(),
            &mut None,
        );
        assert_eq!(
            err,
            Err(RelayError::BadKind {
                kind: KIND_DOWN,
                from: Side::Caller
            })
        );
        let input = [9u8; 400];
        assert!(relay_frames(
            &s,
            Side::Upstream,
            &input,
            &mut Vec::new(),
            &Tally::default(),
            &mut None
        )
        .is_err());
    }

    #[test]
    fn an_injected_corruption_is_caught_by_the_checker() {
        let s = shape();
        let input = frames(KIND_UP, 0, 0..12, s.up_in);
        let mut fault = Some(PendingFault {
            fault: Fault::CorruptUplink,
            after: 9,
        });
        let mut out = Vec::new();
        relay_frames(
            &s,
            Side::Caller,
            &input,
            &mut out,
            &Tally::default(),
            &mut fault,
        )
        .unwrap();
        assert!(fault.is_none());
        let mut c = FrameChecker::new(KIND_UP, s.up_out, 0);
        c.feed(&out, || {});
        assert_eq!(
            c.finish(12),
            CheckCounts {
                ok: 11,
                corrupt: 1,
                ..CheckCounts::default()
            }
        );
    }

    #[test]
    fn shapes_are_validated() {
        assert!(shape().validate().is_ok());
        let bad = Shape {
            up_out: 400,
            ..shape()
        };
        assert!(bad.validate().is_err());
        let bad = Shape { echo: 5, ..shape() };
        assert!(bad.validate().is_err());
        let bad = Shape {
            down_in: MAX_FRAME + 1,
            ..shape()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn proc_parsing() {
        let line =
            "1234 (relay (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_stat_ticks(line), Some((250, 75)));
        assert_eq!(parse_stat_comm(line), Some("relay (x)"));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(
            parse_schedstat_ns("32469483 8129474 125\n"),
            Some(32_469_483)
        );
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t4\n";
        assert_eq!(parse_ctxt_switches(status), Some((17, 4)));
        assert_eq!(parse_ctxt_switches("Name: x\n"), None);
        let stat =
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 0 0 0 0 31 0 0 0\ncpu1 10 0 0 0 0 0 42 0 0 0\n";
        assert_eq!(parse_proc_stat_softirq(stat, 1), Some(42));
        assert_eq!(parse_proc_stat_softirq(stat, 0), Some(31));
        assert_eq!(parse_proc_stat_softirq(stat, 2), None);
    }

    #[test]
    fn this_thread_can_be_sampled() {
        // schedstat's runtime is brought up to date when the thread is switched out.
        std::thread::sleep(Duration::from_millis(5));
        let s = TaskSample::read(current_tid().unwrap()).unwrap();
        assert!(s.sched_ns > 0);
    }

    /// Data and the FIN arriving before the relay's first wait make one edge: every relay
    /// must still see the EOF and finish the call (the epoll relay once stopped at the short
    /// read and hung).
    #[test]
    fn data_and_fin_in_one_edge_end_the_call() {
        for io in [
            IoModel::Epoll,
            IoModel::Tokio,
            IoModel::Uring,
            IoModel::UringMultishot,
        ] {
            let (relay_calls, gen_calls) = connect_calls(1).unwrap();
            let g = &gen_calls[0];
            let mut frame = Vec::new();
            write_frame(&mut frame, KIND_UP, 0, 0, shape().up_in);
            (&g.caller).write_all(&frame).unwrap();
            g.caller.shutdown(std::net::Shutdown::Write).unwrap();
            g.upstream.shutdown(std::net::Shutdown::Write).unwrap();
            let spec = Spec {
                calls: 1,
                io,
                ramp_up: Duration::ZERO,
                duration: Duration::from_secs(1),
                up_interval: Duration::from_millis(20),
                down_interval: Duration::from_millis(113),
                shape: shape(),
                relay_cpu: None,
                generator_cpu: None,
                fault: None,
            };
            let tally = Arc::new(Tally::default());
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = mpsc::channel();
            let (t, st) = (Arc::clone(&tally), Arc::clone(&stop));
            std::thread::spawn(move || {
                let _ = tx.send(relay(&spec, relay_calls, &t, &st).map_err(|e| e.to_string()));
            });
            let r = rx.recv_timeout(Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
            assert_eq!(r, Ok(Ok(())), "{io:?}: the relay did not finish the call");
            assert_eq!(tally.snap().up, 1, "{io:?}");
            let mut got = Vec::new();
            (&g.upstream).read_to_end(&mut got).unwrap();
            assert_eq!(got, frame[..shape().up_out], "{io:?}");
        }
    }

    fn short(io: IoModel, fault: Option<Fault>) -> FloorReport {
        let spec = Spec {
            calls: 20,
            io,
            ramp_up: Duration::from_millis(200),
            duration: Duration::from_secs(1),
            up_interval: Duration::from_millis(20),
            down_interval: Duration::from_millis(113),
            shape: shape(),
            relay_cpu: None,
            generator_cpu: None,
            fault,
        };
        run(&spec).unwrap()
    }

    fn assert_clean(r: &FloorReport) {
        assert!(r.passed(), "{}", r.table());
        assert!(r.forwarded_frames > 800, "{}", r.table());
        assert!(r.relay.sched_cpu_s > 0.0, "{}", r.table());
        assert!(r.relay_sched_us_per_frame > 0.0);
        assert_eq!(r.sent.up, r.uplink.ok);
        assert_eq!(r.sent.down, r.downlink.ok);
        assert!(r.sent.down > 0 && r.sent.echo == r.sent.down);
    }

    #[test]
    fn short_run_epoll() {
        assert_clean(&short(IoModel::Epoll, None));
    }

    #[test]
    fn short_run_tokio() {
        assert_clean(&short(IoModel::Tokio, None));
    }

    #[test]
    fn short_run_uring() {
        assert_clean(&short(IoModel::Uring, None));
    }

    #[test]
    fn short_run_uring_plain() {
        assert_clean(&short(IoModel::UringPlain, None));
    }

    #[test]
    fn short_run_uring_multishot() {
        assert_clean(&short(IoModel::UringMultishot, None));
    }

    #[test]
    fn injected_faults_fail_the_run() {
        let r = short(IoModel::Epoll, Some(Fault::CorruptUplink));
        assert!(!r.passed());
        assert_eq!(r.uplink.corrupt, 1, "{}", r.table());
        let r = short(IoModel::Uring, Some(Fault::DropUplink));
        assert!(!r.passed());
        assert_eq!(r.uplink.lost, 1, "{}", r.table());
    }
}
