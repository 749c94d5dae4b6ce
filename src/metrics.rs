//! Metrics: the Prometheus recorder, every metric's name and description, and the per-call
//! meter the IO drivers feed with timestamps they already have.
//!
//! ```text
//!  driver (epoll / io_uring)                         metrics-exporter-prometheus
//!   read n bytes at t ──▶ CallMeter::on_read ─┐        (recorder, lock-free handles)
//!   pump frames       ──▶ CallMeter::on_queued├─ cached handles ─▶ counters, gauges, histograms
//!   wrote n bytes at t ─▶ CallMeter::on_written┘                         │
//!   CallEvent         ──▶ CallMeter::on_event                            ▼
//!                                          GET /metrics ──▶ render(): handle.render() + /proc/self
//! ```
//!
//! # Why it is shaped like this
//! - [`install`] installs the recorder once per process, with classic Prometheus histogram
//!   buckets for every latency (so the text output has `_bucket{le=…}` series, never summaries),
//!   describes every metric (`# HELP`), registers every fixed label set at zero (so a dashboard
//!   query has a series before the first event), and starts the upkeep thread.
//! - Upkeep: histogram samples sit in a lock-free buffer until `render()` or `run_upkeep()`
//!   drains them into buckets; with `install_recorder()` nothing drains automatically, so memory
//!   would grow without bound between scrapes (deps.md section 6). [`UPKEEP_INTERVAL`].
//! - The hot path uses [`CallMeter`]: handles resolved once ([`Handles`]), per-frame counters kept
//!   in plain integers and added to the shared atomics once per [`FLUSH_INTERVAL`], and one
//!   histogram record per forwarded audio frame. Timestamps are the ones the driver takes anyway
//!   (one `Instant` per socket read and per socket write), never one per byte or frame.
//! - Latency is measured by byte position: each leg's output is a queue of bytes, and the meter
//!   remembers, for the frames a read produced, the byte offset where they end in the other
//!   leg's output. When the writes pass that offset, the frames are on the wire: the latency is
//!   the write's time minus the read's time. [`LatencyQueue`].
//! - Process metrics (CPU, RSS, open file descriptors) are read from `/proc/self` at scrape time
//!   ([`render`]): the exporter has no process collector without its default features, and a
//!   scrape-time read is always current.
//!
//! The metric names are `pub const`s below; the dashboard (`dashboards/generate.py`) and the
//! alert rules (`dashboards/alerts.yml`) use the same names, and `tests/prometheus.rs` checks
//! that every name they use is exported and has data.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use callbridge_core::bridge::{CallEvent, CallStats, EndReason, Leg};

/// Calls bridged right now (gauge).
pub const ACTIVE_CALLS: &str = "callbridge_active_calls";
/// Calls by outcome: the end reason's label, or the fallback taken at the webhook (counter).
pub const CALLS: &str = "callbridge_calls_total";
/// Call setup time by phase (histogram, seconds).
pub const CALL_SETUP: &str = "callbridge_call_setup_seconds";
/// Twilio frame read → OpenAI `input_audio_buffer.append` written (histogram, seconds).
pub const UPLINK_LATENCY: &str = "callbridge_uplink_latency_seconds";
/// OpenAI audio delta read → Twilio `media` written (histogram, seconds).
pub const DOWNLINK_LATENCY: &str = "callbridge_downlink_latency_seconds";
/// `input_audio_buffer.speech_started` read → Twilio `clear` written (histogram, seconds).
pub const BARGE_IN_LATENCY: &str = "callbridge_barge_in_latency_seconds";
/// `audio_end_ms` sent in `conversation.item.truncate`, in seconds (histogram).
pub const TRUNCATION_AUDIO_END: &str = "callbridge_truncation_audio_end_seconds";
/// How much of the heard-audio estimate was clamped to the audio sent, in seconds (histogram).
pub const TRUNCATION_CLAMPED: &str = "callbridge_truncation_clamped_seconds";
/// Audio frames forwarded, by direction (`up`: caller → OpenAI, `down`: OpenAI → caller).
pub const FRAMES: &str = "callbridge_frames_total";
/// Socket bytes, by leg and direction (`rx`, `tx`), WebSocket framing and TLS included.
pub const BYTES: &str = "callbridge_bytes_total";
/// Marks sent to Twilio and not yet echoed, over all calls (gauge).
pub const MARKS_OUTSTANDING: &str = "callbridge_marks_outstanding";
/// OpenAI connection attempts by result (`ok`, `error`).
pub const OPENAI_CONNECTS: &str = "callbridge_openai_connects_total";
/// OpenAI `error` events, by `error.code`.
pub const OPENAI_ERRORS: &str = "callbridge_openai_errors_total";
/// Tokens used, from `response.done` usage, by kind (`input`, `output`).
pub const OPENAI_TOKENS: &str = "callbridge_openai_tokens_total";
/// Frames dropped for breaking the protocol, by leg and kind.
pub const PROTOCOL_ERRORS: &str = "callbridge_protocol_errors_total";
/// HTTP requests by route and status.
pub const HTTP_REQUESTS: &str = "callbridge_http_requests_total";
/// Store: items waiting for the writer thread (gauge; recorded by `store/`).
pub const STORE_QUEUE_DEPTH: &str = "callbridge_store_queue_depth";
/// Store: appends refused because the queue was full (counter; recorded by `store/`).
pub const STORE_QUEUE_FULL: &str = "callbridge_store_queue_full_total";
/// Store: items written by the writer thread (counter; recorded by `store/`).
pub const STORE_ITEMS_WRITTEN: &str = "callbridge_store_items_written_total";
/// Store: time of one batch write (histogram, seconds; recorded by `store/`).
pub const STORE_WRITE: &str = "callbridge_store_write_seconds";
/// Requests and connections refused by a safety check, by reason ([`Refusal`]).
pub const REFUSED: &str = "callbridge_refused_total";
/// Calls whose agent's settings OpenAI refused (an `error` answering its `session.update`), by
/// agent id.
pub const AGENT_ERRORS: &str = "callbridge_agent_errors_total";
/// 1 when the server runs without Twilio signatures (`ALLOW_UNSIGNED_WEBHOOKS=true`), else 0.
pub const UNSIGNED_WEBHOOKS: &str = "callbridge_unsigned_webhooks";
/// 1 while the instance drains (after SIGTERM), else 0.
pub const DRAINING: &str = "callbridge_draining";
/// Calls still up during a drain, set every second of it.
pub const DRAIN_CALLS_LEFT: &str = "callbridge_drain_calls_left";
/// Open HTTP connections, calls' streams included (gauge, set at scrape time).
pub const HTTP_CONNECTIONS: &str = "callbridge_http_connections";
/// Store: engine writes that failed, by `error` (`disk_full`, `io`, `other`); the writer keeps
/// what it could not write and tries again (counter; recorded by `store/`).
pub const STORE_WRITE_ERRORS: &str = "callbridge_store_write_errors_total";
/// Store: items dropped by the writer because writes kept failing (counter; recorded by
/// `store/`; each is also in its call's `itemsLost`).
pub const STORE_ITEMS_UNWRITTEN: &str = "callbridge_store_items_unwritten_total";
/// Store: whole calls deleted, by `reason` (`retention`, `max_bytes`) (counter).
pub const STORE_CALLS_DELETED: &str = "callbridge_store_calls_deleted_total";
/// Store: bytes a full export of the store holds (gauge; recorded by `store/`).
pub const STORE_LOGICAL_BYTES: &str = "callbridge_store_logical_bytes";
/// Process CPU time, user + system (counter, from `/proc/self/stat`).
pub const PROCESS_CPU: &str = "callbridge_process_cpu_seconds_total";
/// Process resident memory (gauge, from `/proc/self/status`).
pub const PROCESS_RSS: &str = "callbridge_process_resident_memory_bytes";
/// Process open file descriptors (gauge, from `/proc/self/fd`).
pub const PROCESS_OPEN_FDS: &str = "callbridge_process_open_fds";

/// Every metric name callbridge exports (those the store records included).
pub const ALL_METRICS: &[&str] = &[
    ACTIVE_CALLS,
    CALLS,
    CALL_SETUP,
    UPLINK_LATENCY,
    DOWNLINK_LATENCY,
    BARGE_IN_LATENCY,
    TRUNCATION_AUDIO_END,
    TRUNCATION_CLAMPED,
    FRAMES,
    BYTES,
    MARKS_OUTSTANDING,
    OPENAI_CONNECTS,
    OPENAI_ERRORS,
    OPENAI_TOKENS,
    PROTOCOL_ERRORS,
    HTTP_REQUESTS,
    STORE_QUEUE_DEPTH,
    STORE_QUEUE_FULL,
    STORE_ITEMS_WRITTEN,
    STORE_WRITE,
    REFUSED,
    AGENT_ERRORS,
    UNSIGNED_WEBHOOKS,
    HTTP_CONNECTIONS,
    DRAINING,
    DRAIN_CALLS_LEFT,
    STORE_WRITE_ERRORS,
    STORE_ITEMS_UNWRITTEN,
    STORE_CALLS_DELETED,
    STORE_LOGICAL_BYTES,
    PROCESS_CPU,
    PROCESS_RSS,
    PROCESS_OPEN_FDS,
];

/// Why a request or connection was refused: the `reason` label of [`REFUSED`]. Each refusal also
/// has its status or close code and a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A Twilio webhook (voice, status, after-stream) whose signature is missing or wrong: 403.
    WebhookSignature,
    /// A media stream upgrade whose signature is missing or wrong: 403 before 101.
    UpgradeSignature,
    /// A media stream upgrade for a stream id that is not ours or has expired: 403.
    StreamId,
    /// A second upgrade of a stream id on this instance: 409.
    StreamReused,
    /// An upgrade past `MAX_CALLS`: accepted and closed at once with 1000 (the caller reaches
    /// the fallback through after-stream).
    MaxCalls,
    /// Too many unexpired stream ids remembered: 503.
    TooManyStreams,
    /// An upgrade after the drain's accept window: accepted and closed at once with 1000.
    Draining,
    /// A connection past `MAX_CONNECTIONS`: closed at once.
    MaxConnections,
}

impl Refusal {
    /// Every reason, for registering the series at zero.
    pub const ALL: [Refusal; 8] = [
        Refusal::Draining,
        Refusal::WebhookSignature,
        Refusal::UpgradeSignature,
        Refusal::StreamId,
        Refusal::StreamReused,
        Refusal::MaxCalls,
        Refusal::TooManyStreams,
        Refusal::MaxConnections,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::WebhookSignature => "webhook_signature",
            Refusal::UpgradeSignature => "upgrade_signature",
            Refusal::StreamId => "stream_id",
            Refusal::StreamReused => "stream_reused",
            Refusal::MaxCalls => "max_calls",
            Refusal::TooManyStreams => "too_many_streams",
            Refusal::MaxConnections => "max_connections",
            Refusal::Draining => "draining",
        }
    }
}

/// Counts a refusal.
pub fn refused(reason: Refusal) {
    counter!(REFUSED, "reason" => reason.label()).increment(1);
}

/// Counts a call whose agent's settings OpenAI refused. `agent` is a stored agent's id (the
/// store validates ids, so the label set is the operator's agents).
pub fn agent_error(agent: &str) {
    counter!(AGENT_ERRORS, "agent" => agent.to_owned()).increment(1);
}

/// Sets [`UNSIGNED_WEBHOOKS`] (once, at start).
pub fn set_unsigned_webhooks(unsigned: bool) {
    gauge!(UNSIGNED_WEBHOOKS).set(if unsigned { 1.0 } else { 0.0 });
}

/// Sets [`DRAINING`] and [`DRAIN_CALLS_LEFT`].
pub fn set_drain(draining: bool, calls_left: usize) {
    gauge!(DRAINING).set(if draining { 1.0 } else { 0.0 });
    gauge!(DRAIN_CALLS_LEFT).set(calls_left as f64);
}

/// Sets [`HTTP_CONNECTIONS`] (at scrape time).
pub fn set_http_connections(open: usize) {
    gauge!(HTTP_CONNECTIONS).set(open as f64);
}

/// Buckets of every latency histogram, seconds: 50 µs to 5 s, about three per decade. The low
/// end resolves the proxy's own forwarding time on loopback (tens of µs); the high end covers a
/// slow OpenAI connect or a stalled peer. Anything past 5 s lands in `+Inf` and is still counted.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Buckets of the truncation histograms, seconds of audio: 0 (nothing heard / nothing clamped)
/// to a minute (a long answer interrupted near its end).
pub const TRUNCATION_BUCKETS: &[f64] = &[
    0.0, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// Latency histograms (all get [`LATENCY_BUCKETS`]).
const LATENCY_HISTOGRAMS: &[&str] = &[
    CALL_SETUP,
    UPLINK_LATENCY,
    DOWNLINK_LATENCY,
    BARGE_IN_LATENCY,
    STORE_WRITE,
];

/// How often the upkeep thread drains histogram samples into buckets. Between two drains the
/// samples of every histogram sit in memory (8 bytes each, in 64-sample blocks): at 1,000 calls
/// × 50 frames/s × 2 directions that is 100k samples/s, 0.8 MB per second between drains. Each
/// drain is ~1 ms of work per 100k samples, the same work whenever it is done, so draining
/// every second costs nothing extra and keeps a fifth of the memory a 5 s interval kept
/// (heaptrack at 300 calls: 2.8 KiB per call of sample blocks with 5 s).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often a call adds its locally counted frames and bytes to the shared counters. A second
/// is well under any scrape interval, and makes the shared atomics cost nothing per frame.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Frames batches a leg remembers until they are written (per call). A batch is one socket read's
/// worth of frames; more than this many unwritten batches only happens when a peer stops reading,
/// and then the newest batches are merged into the last slot (their latency is then measured from
/// an earlier read, an overestimate, never an underestimate).
pub const LATENCY_QUEUE_SLOTS: usize = 8;

/// Distinct OpenAI error codes given their own label value; later new codes count as `other`, so
/// a peer inventing codes cannot grow the metric without bound.
pub const MAX_ERROR_CODES: usize = 32;

/// Webhook answers remembered for the webhook → stream-start time (a few minutes of heavy
/// traffic); past it the oldest half is forgotten (those calls are then not timed).
const MAX_PENDING_WEBHOOKS: usize = 16_384;

/// Errors of [`install`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The exporter refused the configuration, or another recorder is installed already.
    #[error("installing the prometheus recorder: {0}")]
    Install(#[from] BuildError),
}

/// The installed recorder, its render handle, and the hot path's cached handles.
pub struct Metrics {
    handle: PrometheusHandle,
    handles: Handles,
}

static INSTALLED: OnceLock<Result<Metrics, MetricsError>> = OnceLock::new();

/// Installs the recorder (once per process; later calls return the same one, or the same
/// error) and starts the upkeep thread. Call before any metric is recorded: handles taken
/// before it record nothing.
pub fn install() -> Result<&'static Metrics, &'static MetricsError> {
    INSTALLED.get_or_init(build).as_ref()
}

/// The exporter's configuration: bucketed histograms for every histogram callbridge records.
fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for name in LATENCY_HISTOGRAMS {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).into()), LATENCY_BUCKETS)?;
    }
    for name in [TRUNCATION_AUDIO_END, TRUNCATION_CLAMPED] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), TRUNCATION_BUCKETS)?;
    }
    Ok(builder)
}

fn build() -> Result<Metrics, MetricsError> {
    let handle = builder()?.install_recorder()?;
    describe_all();
    let handles = Handles::register();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        // Scrapes still drain the samples; only an unscraped process grows.
        tracing::warn!("metrics upkeep thread not started: {e}");
    }
    Ok(Metrics { handle, handles })
}

impl Metrics {
    /// Drains pending histogram samples into their buckets now (the upkeep thread does this
    /// every [`UPKEEP_INTERVAL`]; benches call it between timed batches).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// The hot path's handles: the installed recorder's, or no-ops when it is not installed (unit
/// tests, benches of other code).
pub fn handles() -> &'static Handles {
    static NOOP: OnceLock<Handles> = OnceLock::new();
    match INSTALLED.get() {
        Some(Ok(m)) => &m.handles,
        _ => NOOP.get_or_init(Handles::noop),
    }
}

/// The `/metrics` body: the recorder's text output followed by the process metrics. Installs
/// the recorder if nothing did yet.
pub fn render() -> String {
    let mut out = match install() {
        Ok(m) => m.handle.render(),
        Err(e) => format!("# callbridge metrics unavailable: {e}\n"),
    };
    render_process(&mut out);
    out
}

/// `Content-Type` of [`render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe_all() {
    describe_gauge!(ACTIVE_CALLS, Unit::Count, "Calls bridged right now.");
    describe_counter!(
        CALLS,
        Unit::Count,
        "Calls by outcome: why the bridged call ended (twilio_stop is a normal hang-up), or fallback_* when the webhook sent the caller to the legacy conference."
    );
    describe_histogram!(
        CALL_SETUP,
        Unit::Seconds,
        "Call setup time by phase: webhook_to_start (webhook answered to Twilio start, same instance only), start_to_session (Twilio start to session.updated), openai_connect (TCP+TLS+WebSocket handshake to OpenAI)."
    );
    describe_histogram!(
        UPLINK_LATENCY,
        Unit::Seconds,
        "Caller audio through the proxy: Twilio frame read to OpenAI append written to the socket."
    );
    describe_histogram!(
        DOWNLINK_LATENCY,
        Unit::Seconds,
        "Assistant audio through the proxy: OpenAI delta read to Twilio media written to the socket."
    );
    describe_histogram!(
        BARGE_IN_LATENCY,
        Unit::Seconds,
        "Barge-in reaction: input_audio_buffer.speech_started read to Twilio clear written."
    );
    describe_histogram!(
        TRUNCATION_AUDIO_END,
        Unit::Seconds,
        "audio_end_ms sent in conversation.item.truncate (what the caller heard of the interrupted item)."
    );
    describe_histogram!(
        TRUNCATION_CLAMPED,
        Unit::Seconds,
        "Heard-audio estimate beyond the audio sent, clamped away at a barge-in (0 when the estimate was within bounds)."
    );
    describe_counter!(
        FRAMES,
        Unit::Count,
        "Audio frames forwarded: up = Twilio media to OpenAI append, down = OpenAI delta chunks to Twilio media."
    );
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Socket bytes by leg (twilio, openai) and direction (rx, tx), framing and TLS included."
    );
    describe_gauge!(
        MARKS_OUTSTANDING,
        Unit::Count,
        "Marks sent to Twilio and not yet echoed, over all calls (assistant audio queued at Twilio)."
    );
    describe_counter!(
        OPENAI_CONNECTS,
        Unit::Count,
        "OpenAI Realtime connection attempts by result (ok, error)."
    );
    describe_counter!(
        OPENAI_ERRORS,
        Unit::Count,
        "OpenAI error events by error.code (none when absent, other past the first distinct codes)."
    );
    describe_counter!(
        OPENAI_TOKENS,
        Unit::Count,
        "Tokens used, summed from response.done usage, by kind (input, output)."
    );
    describe_counter!(
        PROTOCOL_ERRORS,
        Unit::Count,
        "Frames dropped for breaking the protocol, by leg (twilio, openai) and kind."
    );
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests by route and status (101 for media stream upgrades)."
    );
    describe_counter!(
        REFUSED,
        Unit::Count,
        "Requests and connections refused by a safety check, by reason (webhook_signature, upgrade_signature, stream_id, stream_reused, max_calls, too_many_streams, max_connections, draining)."
    );
    describe_counter!(
        AGENT_ERRORS,
        Unit::Count,
        "Calls that fell back because OpenAI refused their agent's session settings, by agent id."
    );
    describe_gauge!(
        UNSIGNED_WEBHOOKS,
        Unit::Count,
        "1 when Twilio signatures are not checked (ALLOW_UNSIGNED_WEBHOOKS=true): anyone can place calls."
    );
    describe_gauge!(
        DRAINING,
        Unit::Count,
        "1 while the instance drains after SIGTERM (/readyz answers 503), else 0."
    );
    describe_gauge!(
        DRAIN_CALLS_LEFT,
        Unit::Count,
        "Calls still up during a drain, updated every second of it."
    );
    describe_gauge!(
        HTTP_CONNECTIONS,
        Unit::Count,
        "Open HTTP connections, media streams included (bounded by MAX_CONNECTIONS)."
    );
    describe_gauge!(
        STORE_QUEUE_DEPTH,
        Unit::Count,
        "Store writes waiting in the bounded queue for the writer thread."
    );
    describe_counter!(
        STORE_QUEUE_FULL,
        Unit::Count,
        "Store writes refused because the queue was full."
    );
    describe_counter!(
        STORE_ITEMS_WRITTEN,
        Unit::Count,
        "Conversation items written by the store writer thread."
    );
    describe_histogram!(
        STORE_WRITE,
        Unit::Seconds,
        "Time the store writer took for one batch."
    );
    describe_counter!(
        STORE_WRITE_ERRORS,
        Unit::Count,
        "Store writes that failed, by error (disk_full, io, other); the writer keeps them and retries every second."
    );
    describe_counter!(
        STORE_ITEMS_UNWRITTEN,
        Unit::Count,
        "Conversation items the store writer dropped because writes kept failing (also in the calls' itemsLost)."
    );
    describe_counter!(
        STORE_CALLS_DELETED,
        Unit::Count,
        "Whole calls deleted from the store, by reason (retention, max_bytes)."
    );
    describe_gauge!(
        STORE_LOGICAL_BYTES,
        Unit::Bytes,
        "Bytes a full export of the store (/api/admin/calls.jsonl) holds."
    );
}

/// Every end-reason label ([`callbridge_core::bridge::EndReason::label`]) and webhook fallback, registered at zero.
pub const OUTCOMES: &[&str] = &[
    "twilio_stop",
    "twilio_closed",
    "start_timeout",
    "twilio_silent",
    "unauthorized",
    "bad_media_format",
    "openai_connect_failed",
    "openai_setup_failed",
    "agent_rejected",
    "drained",
    "openai_closed",
    "twilio_stalled",
    "openai_stalled",
    "fallback_realtime_off",
    "fallback_overloaded",
    "fallback_openai_down",
    "fallback_draining",
];

/// Call setup phases, the `phase` label of [`CALL_SETUP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupPhase {
    /// Webhook answered → Twilio `start` (only when both reach the same instance).
    WebhookToStart,
    /// Twilio `start` → `session.updated`.
    StartToSession,
    /// OpenAI TCP + TLS + WebSocket handshake.
    OpenAiConnect,
}

impl SetupPhase {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            SetupPhase::WebhookToStart => "webhook_to_start",
            SetupPhase::StartToSession => "start_to_session",
            SetupPhase::OpenAiConnect => "openai_connect",
        }
    }

    const ALL: [SetupPhase; 3] = [
        SetupPhase::WebhookToStart,
        SetupPhase::StartToSession,
        SetupPhase::OpenAiConnect,
    ];
}

/// Handles resolved once, so the hot path never looks a metric up by name.
pub struct Handles {
    active_calls: Gauge,
    marks_outstanding: Gauge,
    frames_up: Counter,
    frames_down: Counter,
    /// `[leg][rx, tx]`, leg 0 = Twilio, 1 = OpenAI.
    bytes: [[Counter; 2]; 2],
    uplink: Histogram,
    downlink: Histogram,
    barge_in: Histogram,
    setup: [Histogram; 3],
    truncation_audio_end: Histogram,
    truncation_clamped: Histogram,
    tokens_input: Counter,
    tokens_output: Counter,
    connects_ok: Counter,
    connects_error: Counter,
    outcomes: Vec<(&'static str, Counter)>,
}

impl Handles {
    /// Registers every handle (and so every fixed series, at zero) with the current recorder.
    fn register() -> Self {
        let bytes = |leg: &'static str| {
            [
                counter!(BYTES, "leg" => leg, "direction" => "rx"),
                counter!(BYTES, "leg" => leg, "direction" => "tx"),
            ]
        };
        let h = Handles {
            active_calls: gauge!(ACTIVE_CALLS),
            marks_outstanding: gauge!(MARKS_OUTSTANDING),
            frames_up: counter!(FRAMES, "direction" => "up"),
            frames_down: counter!(FRAMES, "direction" => "down"),
            bytes: [bytes("twilio"), bytes("openai")],
            uplink: histogram!(UPLINK_LATENCY),
            downlink: histogram!(DOWNLINK_LATENCY),
            barge_in: histogram!(BARGE_IN_LATENCY),
            setup: SetupPhase::ALL.map(|p| histogram!(CALL_SETUP, "phase" => p.label())),
            truncation_audio_end: histogram!(TRUNCATION_AUDIO_END),
            truncation_clamped: histogram!(TRUNCATION_CLAMPED),
            tokens_input: counter!(OPENAI_TOKENS, "kind" => "input"),
            tokens_output: counter!(OPENAI_TOKENS, "kind" => "output"),
            connects_ok: counter!(OPENAI_CONNECTS, "result" => "ok"),
            connects_error: counter!(OPENAI_CONNECTS, "result" => "error"),
            outcomes: OUTCOMES
                .iter()
                .map(|o| (*o, counter!(CALLS, "outcome" => *o)))
                .collect(),
        };
        // Series that exist before their first event, so rate() and the dashboard have them.
        h.active_calls.increment(0.0);
        h.marks_outstanding.increment(0.0);
        for c in [
            &h.frames_up,
            &h.frames_down,
            &h.tokens_input,
            &h.tokens_output,
            &h.connects_ok,
            &h.connects_error,
        ] {
            c.increment(0);
        }
        for c in h.bytes.iter().flatten() {
            c.increment(0);
        }
        for (_, c) in &h.outcomes {
            c.increment(0);
        }
        counter!(OPENAI_ERRORS, "code" => "none").increment(0);
        for r in Refusal::ALL {
            counter!(REFUSED, "reason" => r.label()).increment(0);
        }
        gauge!(HTTP_CONNECTIONS).increment(0.0);
        gauge!(DRAINING).increment(0.0);
        gauge!(DRAIN_CALLS_LEFT).increment(0.0);
        for leg in ["twilio", "openai"] {
            counter!(PROTOCOL_ERRORS, "leg" => leg, "kind" => "other").increment(0);
        }
        h
    }

    fn noop() -> Self {
        let c = Counter::noop;
        let hi = Histogram::noop;
        Handles {
            active_calls: Gauge::noop(),
            marks_outstanding: Gauge::noop(),
            frames_up: c(),
            frames_down: c(),
            bytes: [[c(), c()], [c(), c()]],
            uplink: hi(),
            downlink: hi(),
            barge_in: hi(),
            setup: [hi(), hi(), hi()],
            truncation_audio_end: hi(),
            truncation_clamped: hi(),
            tokens_input: c(),
            tokens_output: c(),
            connects_ok: c(),
            connects_error: c(),
            outcomes: Vec::new(),
        }
    }

    /// Counts a call outcome, an [`OUTCOMES`] label (every end reason's label is one:
    /// `every_end_reason_label_is_a_registered_outcome`).
    pub fn call_outcome(&self, outcome: &str) {
        match self.outcomes.iter().find(|(o, _)| *o == outcome) {
            Some((_, c)) => c.increment(1),
            None => tracing::warn!(outcome, "call outcome without a registered label"),
        }
    }

    /// Records one setup phase.
    pub fn setup(&self, phase: SetupPhase, took: Duration) {
        let i = match phase {
            SetupPhase::WebhookToStart => 0,
            SetupPhase::StartToSession => 1,
            SetupPhase::OpenAiConnect => 2,
        };
        self.setup[i].record(took.as_secs_f64());
    }
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::Twilio => 0,
        Leg::OpenAi => 1,
    }
}

/// One batch of frames waiting in a leg's output: where it ends, when its input was read, and
/// how many audio frames it holds.
#[derive(Debug, Clone, Copy)]
struct Pending {
    end: u64,
    read_at: Instant,
    frames: u32,
}

/// The frames queued on one leg and not yet written, oldest first, in a fixed ring (no
/// allocation). Positions are absolute byte offsets into the leg's output stream.
#[derive(Debug)]
pub struct LatencyQueue {
    slots: [Pending; LATENCY_QUEUE_SLOTS],
    head: usize,
    len: usize,
}

impl LatencyQueue {
    /// An empty queue (`now` only fills the unused slots).
    pub fn new(now: Instant) -> Self {
        LatencyQueue {
            slots: [Pending {
                end: 0,
                read_at: now,
                frames: 0,
            }; LATENCY_QUEUE_SLOTS],
            head: 0,
            len: 0,
        }
    }

    /// Remembers `frames` frames ending at byte `end`, produced by a read at `read_at`. When the
    /// ring is full they join the newest batch (see [`LATENCY_QUEUE_SLOTS`]).
    pub fn push(&mut self, end: u64, read_at: Instant, frames: u32) {
        if self.len == LATENCY_QUEUE_SLOTS {
            let last = &mut self.slots[(self.head + self.len - 1) % LATENCY_QUEUE_SLOTS];
            last.end = end;
            last.frames = last.frames.saturating_add(frames);
            return;
        }
        self.slots[(self.head + self.len) % LATENCY_QUEUE_SLOTS] = Pending {
            end,
            read_at,
            frames,
        };
        self.len += 1;
    }

    /// Pops every batch that ends at or before `written` and passes its latency at `now` and its
    /// frame count to `record`.
    pub fn written(&mut self, written: u64, now: Instant, mut record: impl FnMut(f64, u32)) {
        while self.len > 0 {
            let p = self.slots[self.head];
            if p.end > written {
                break;
            }
            record(
                now.saturating_duration_since(p.read_at).as_secs_f64(),
                p.frames,
            );
            self.head = (self.head + 1) % LATENCY_QUEUE_SLOTS;
            self.len -= 1;
        }
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a call already added to the shared counters.
#[derive(Debug, Default, Clone, Copy)]
struct Reported {
    frames_up: u64,
    frames_down: u64,
    bytes: [[u64; 2]; 2],
    marks: u64,
}

/// One call's metrics, fed by the driver. Single-threaded, allocation-free after creation.
///
/// # Driver contract (the same for every driver)
/// 1. [`CallMeter::on_read`] after each socket read of a leg, with the read's time.
/// 2. [`CallMeter::on_queued`] after draining `poll_transmit` into the legs' output buffers,
///    with the bytes now pending in each.
/// 3. [`CallMeter::on_event`] for each `poll_event`.
/// 4. [`CallMeter::on_written`] after each socket write, with the bytes taken and its time.
/// 5. [`CallMeter::tick`] once per loop turn with a current time and the outstanding marks.
/// 6. [`CallMeter::on_openai_connect`] when the OpenAI connect finishes.
///
/// Dropping the meter adds what is left to the shared counters and takes the call out of the
/// active-calls and marks-outstanding gauges.
pub struct CallMeter {
    h: &'static Handles,
    /// Frames bound for OpenAI (uplink) / Twilio (downlink).
    up: LatencyQueue,
    down: LatencyQueue,
    /// Bytes written so far per leg: the write cursor's absolute position.
    written: [u64; 2],
    /// Bytes read so far per leg.
    read: [u64; 2],
    /// The leg of the read whose frames the next [`CallMeter::on_queued`] attributes.
    batch: Option<Leg>,
    /// The last read's time: the time of that batch's frames and of its events.
    last_read_at: Instant,
    /// Where Twilio's output ended after the last pump (a `clear` queued in it is before this).
    twilio_end: u64,
    /// A `clear` in flight: its end offset in Twilio's output and its `speech_started` read time.
    barge_in: Option<(u64, Instant)>,
    /// When Twilio `start` was handled.
    stream_started_at: Option<Instant>,
    /// Audio frame counters of the call seen so far.
    seen_up: u64,
    seen_down: u64,
    /// Outstanding marks at the last tick.
    marks: u64,
    reported: Reported,
    last_flush: Instant,
    outcome_counted: bool,
}

impl CallMeter {
    /// A meter for a call accepted at `now`; counts the call as active.
    pub fn new(now: Instant) -> Self {
        Self::with_handles(handles(), now)
    }

    /// A meter recording through `h` (tests use handles of a local recorder).
    pub fn with_handles(h: &'static Handles, now: Instant) -> Self {
        h.active_calls.increment(1.0);
        CallMeter {
            h,
            up: LatencyQueue::new(now),
            down: LatencyQueue::new(now),
            written: [0; 2],
            read: [0; 2],
            batch: None,
            last_read_at: now,
            twilio_end: 0,
            barge_in: None,
            stream_started_at: None,
            seen_up: 0,
            seen_down: 0,
            marks: 0,
            reported: Reported::default(),
            last_flush: now,
            outcome_counted: false,
        }
    }

    /// `n` bytes were read from `leg` at `now` (one timestamp per read, for all its frames).
    #[inline]
    pub fn on_read(&mut self, leg: Leg, n: usize, now: Instant) {
        self.read[leg_index(leg)] += n as u64;
        self.batch = Some(leg);
        self.last_read_at = now;
    }

    /// The call's frames were moved into the legs' output buffers, which now hold
    /// `twilio_pending` and `openai_pending` unwritten bytes. Frames the last read produced are
    /// remembered with that read's time: caller audio (`stats.audio_frames_up`) after a Twilio
    /// read, assistant audio (`stats.audio_frames_down`) after an OpenAI read. Frames queued by
    /// anything else (buffered caller audio released by `session.updated`, timers) are counted
    /// but not timed: their delay is setup, not forwarding.
    #[inline]
    pub fn on_queued(&mut self, stats: &CallStats, twilio_pending: usize, openai_pending: usize) {
        let up = stats.audio_frames_up.saturating_sub(self.seen_up);
        let down = stats.audio_frames_down.saturating_sub(self.seen_down);
        self.seen_up = stats.audio_frames_up;
        self.seen_down = stats.audio_frames_down;
        self.twilio_end = self.written[0] + twilio_pending as u64;
        let at = self.last_read_at;
        match self.batch.take() {
            Some(Leg::Twilio) if up > 0 => {
                let end = self.written[1] + openai_pending as u64;
                self.up.push(end, at, up.min(u64::from(u32::MAX)) as u32);
            }
            Some(Leg::OpenAi) if down > 0 => {
                self.down
                    .push(self.twilio_end, at, down.min(u64::from(u32::MAX)) as u32);
            }
            _ => {}
        }
    }

    /// `n` bytes of `leg`'s output were written at `now`: frames now on the wire get their
    /// latency recorded.
    #[inline]
    pub fn on_written(&mut self, leg: Leg, n: usize, now: Instant) {
        let i = leg_index(leg);
        self.written[i] += n as u64;
        let written = self.written[i];
        let h = self.h;
        match leg {
            Leg::OpenAi => self.up.written(written, now, |secs, frames| {
                h.uplink.record_many(secs, frames as usize)
            }),
            Leg::Twilio => {
                self.down.written(written, now, |secs, frames| {
                    h.downlink.record_many(secs, frames as usize)
                });
                if let Some((end, at)) = self.barge_in {
                    if end <= written {
                        h.barge_in
                            .record(now.saturating_duration_since(at).as_secs_f64());
                        self.barge_in = None;
                    }
                }
            }
        }
    }

    /// Once per loop turn: remembers the outstanding marks and, once per [`FLUSH_INTERVAL`], adds
    /// the call's counts to the shared counters.
    #[inline]
    pub fn tick(&mut self, now: Instant, outstanding_marks: usize) {
        self.marks = outstanding_marks as u64;
        if now.saturating_duration_since(self.last_flush) >= FLUSH_INTERVAL {
            self.last_flush = now;
            self.flush();
        }
    }

    /// The OpenAI connect finished after `took`.
    pub fn on_openai_connect(&mut self, took: Duration, ok: bool) {
        if ok {
            self.h.connects_ok.increment(1);
            self.h.setup(SetupPhase::OpenAiConnect, took);
        } else {
            self.h.connects_error.increment(1);
        }
    }

    /// Records what an event says (setup times, barge-in, tokens, errors, the outcome).
    pub fn on_event(&mut self, ev: &CallEvent) {
        let at = self.last_read_at;
        match ev {
            CallEvent::StreamStarted { call_sid, .. } => {
                self.stream_started_at = Some(at);
                if let Some(answered) = take_webhook(call_sid) {
                    self.h.setup(
                        SetupPhase::WebhookToStart,
                        at.saturating_duration_since(answered),
                    );
                }
            }
            CallEvent::SessionReady { .. } => {
                if let Some(start) = self.stream_started_at {
                    self.h.setup(
                        SetupPhase::StartToSession,
                        at.saturating_duration_since(start),
                    );
                }
            }
            CallEvent::Interrupted {
                audio_end_ms,
                clamped_ms,
                cleared,
                ..
            } => {
                self.h
                    .truncation_audio_end
                    .record(*audio_end_ms as f64 / 1000.0);
                self.h
                    .truncation_clamped
                    .record(*clamped_ms as f64 / 1000.0);
                // The `clear` was queued by the pump of this batch, so it ends at or before
                // `twilio_end`; the read of `speech_started` is the batch's read. Without a
                // `clear` (nothing played) there is no barge-in latency to measure.
                if *cleared {
                    self.barge_in = Some((self.twilio_end, at));
                }
            }
            CallEvent::ResponseDone {
                usage: Some(usage), ..
            } => {
                self.h.tokens_input.increment(usage.input_tokens);
                self.h.tokens_output.increment(usage.output_tokens);
            }
            CallEvent::OpenAiError { code, .. } => openai_error(code.as_deref()),
            CallEvent::ProtocolError(error) => protocol_error(error.leg(), error.label()),
            CallEvent::Ended { reason } if !self.outcome_counted => {
                self.outcome_counted = true;
                self.h.call_outcome(reason.label());
                if let EndReason::AgentRejected { agent_id, .. } = reason {
                    agent_error(agent_id);
                }
            }
            _ => {}
        }
    }

    /// Adds what the call counted since the last flush to the shared counters and gauges.
    fn flush(&mut self) {
        let h = self.h;
        let r = &mut self.reported;
        h.frames_up.increment(self.seen_up - r.frames_up);
        h.frames_down.increment(self.seen_down - r.frames_down);
        r.frames_up = self.seen_up;
        r.frames_down = self.seen_down;
        for leg in 0..2 {
            h.bytes[leg][0].increment(self.read[leg] - r.bytes[leg][0]);
            h.bytes[leg][1].increment(self.written[leg] - r.bytes[leg][1]);
            r.bytes[leg] = [self.read[leg], self.written[leg]];
        }
        if self.marks != r.marks {
            h.marks_outstanding
                .increment(self.marks as f64 - r.marks as f64);
            r.marks = self.marks;
        }
    }
}

impl Drop for CallMeter {
    fn drop(&mut self) {
        self.marks = 0;
        self.flush();
        self.h.active_calls.decrement(1.0);
    }
}

/// Counts an HTTP request: its route label (one of a bounded set, the front end's
/// `route_label`) and status.
pub fn http_request(route: &'static str, status: u16) {
    counter!(HTTP_REQUESTS, "route" => route, "status" => status_label(status)).increment(1);
}

fn status_label(status: u16) -> &'static str {
    /// The statuses the front end sends, each its own label value.
    const KNOWN: &[(u16, &str)] = &[
        (101, "101"),
        (200, "200"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (413, "413"),
        (414, "414"),
        (426, "426"),
        (431, "431"),
        (500, "500"),
        (501, "501"),
        (503, "503"),
    ];
    if let Some((_, label)) = KNOWN.iter().find(|(s, _)| *s == status) {
        return label;
    }
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Counts a call outcome that no call meter sees: the webhook's own fallbacks (an
/// [`OUTCOMES`] label).
pub fn call_outcome(outcome: &str) {
    handles().call_outcome(outcome);
}

/// Counts an OpenAI `error` event by code, with the label set bounded ([`MAX_ERROR_CODES`]).
pub fn openai_error(code: Option<&str>) {
    static SEEN: Mutex<ErrorCodes> = Mutex::new(ErrorCodes(Vec::new()));
    let label = SEEN.lock().unwrap_or_else(|e| e.into_inner()).label(code);
    counter!(OPENAI_ERRORS, "code" => label).increment(1);
}

/// The error codes given their own label so far (at most [`MAX_ERROR_CODES`]).
struct ErrorCodes(Vec<String>);

impl ErrorCodes {
    /// The label of `code`: itself if it looks like a code and is among the first
    /// [`MAX_ERROR_CODES`] distinct ones, `none` when absent, `other` otherwise.
    fn label(&mut self, code: Option<&str>) -> String {
        match code {
            None | Some("") => "none".to_owned(),
            Some(c) if !is_label_safe(c) => "other".to_owned(),
            Some(c) if self.0.iter().any(|s| s == c) => c.to_owned(),
            Some(c) if self.0.len() < MAX_ERROR_CODES => {
                self.0.push(c.to_owned());
                c.to_owned()
            }
            Some(_) => "other".to_owned(),
        }
    }
}

/// Error codes are identifiers (`invalid_value`, `rate_limit_exceeded`): anything else from the
/// peer is not used as a label.
fn is_label_safe(s: &str) -> bool {
    s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Counts a frame dropped for breaking the protocol (`kind` is one of the call's fixed labels).
pub fn protocol_error(leg: Leg, kind: &'static str) {
    counter!(PROTOCOL_ERRORS, "leg" => leg.label(), "kind" => kind).increment(1);
}

/// Webhook answers with a stream, by callSid: when they were answered.
static WEBHOOKS: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// The webhook answered `call_sid` with a stream at `now`: its `start` is timed from here when
/// it reaches this instance.
pub fn webhook_streamed(call_sid: &str, now: Instant) {
    let mut map = WEBHOOKS.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_PENDING_WEBHOOKS {
        // Streams that never came (or went to another instance): forget the oldest half.
        let mut ages: Vec<Instant> = map.values().copied().collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 2];
        map.retain(|_, at| *at > cutoff);
    }
    map.insert(call_sid.to_owned(), now);
}

/// When the webhook answered `call_sid`, if this instance did (forgotten once taken).
fn take_webhook(call_sid: &str) -> Option<Instant> {
    let mut map = WEBHOOKS.lock().unwrap_or_else(|e| e.into_inner());
    map.as_mut()?.remove(call_sid)
}

/// Process metrics read from `/proc/self`, appended in the text format. Missing files (not
/// Linux) leave the metric out.
pub fn render_process(out: &mut String) {
    if let Some(cpu) = process_cpu_seconds() {
        let _ = write!(
            out,
            "# HELP {PROCESS_CPU} CPU time of the process, user plus system.\n# TYPE {PROCESS_CPU} counter\n{PROCESS_CPU} {cpu}\n\n"
        );
    }
    if let Some(rss) = process_rss_bytes() {
        let _ = write!(
            out,
            "# HELP {PROCESS_RSS} Resident memory of the process.\n# TYPE {PROCESS_RSS} gauge\n{PROCESS_RSS} {rss}\n\n"
        );
    }
    if let Some(fds) = process_open_fds() {
        let _ = write!(
            out,
            "# HELP {PROCESS_OPEN_FDS} Open file descriptors of the process.\n# TYPE {PROCESS_OPEN_FDS} gauge\n{PROCESS_OPEN_FDS} {fds}\n\n"
        );
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, which Linux fixes at 100 for
/// the user ABI on x86 and arm (it is not the kernel's `HZ`).
const USER_HZ: f64 = 100.0;

/// utime + stime from `/proc/self/stat`, seconds.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses: fields are counted
/// after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; utime is field 14, the 12th after it.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` from `/proc/self/status`, bytes.
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_rss_bytes(&status)
}

/// The `VmRSS:  1234 kB` line of a `/proc/<pid>/status`, in bytes.
pub fn parse_status_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(n * 1024),
        _ => None,
    }
}

/// Entries of `/proc/self/fd` (the directory handle used to list it is not counted).
pub fn process_open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    #[test]
    fn every_end_reason_label_is_a_registered_outcome() {
        use callbridge_core::bridge::{EndReason, Leg};
        let s = || "x".to_owned();
        // A new variant must be added here (the match below stops compiling without it).
        let all = [
            EndReason::TwilioStop,
            EndReason::TwilioClosed,
            EndReason::StartTimeout,
            EndReason::TwilioSilent(Duration::from_secs(1)),
            EndReason::Unauthorized("x"),
            EndReason::BadMediaFormat(s()),
            EndReason::OpenAiConnectFailed(s()),
            EndReason::OpenAiSetupFailed(s()),
            EndReason::OpenAiClosed(s()),
            EndReason::PeerStalled {
                leg: Leg::Twilio,
                after: Duration::from_secs(1),
            },
            EndReason::PeerStalled {
                leg: Leg::OpenAi,
                after: Duration::from_secs(1),
            },
            EndReason::AgentRejected {
                agent_id: s(),
                why: s(),
            },
            EndReason::Drained,
        ];
        for r in &all {
            match r {
                EndReason::TwilioStop
                | EndReason::TwilioClosed
                | EndReason::StartTimeout
                | EndReason::TwilioSilent(_)
                | EndReason::Unauthorized(_)
                | EndReason::BadMediaFormat(_)
                | EndReason::OpenAiConnectFailed(_)
                | EndReason::OpenAiSetupFailed(_)
                | EndReason::OpenAiClosed(_)
                | EndReason::PeerStalled { .. }
                | EndReason::AgentRejected { .. }
                | EndReason::Drained => {}
            }
            assert!(
                OUTCOMES.contains(&r.label()),
                "{} is not in OUTCOMES",
                r.label()
            );
            // What the breaker counts is a subset of what sends the caller to the fallback.
            assert!(!r.is_openai_unreachable() || r.is_ai_failure(), "{r:?}");
        }
        let labels: std::collections::HashSet<_> = all.iter().map(EndReason::label).collect();
        assert_eq!(labels.len(), all.len(), "labels are distinct");
        // A hung OpenAI leg sends the caller to the fallback; a caller that stopped reading does not.
        assert!(all[10].is_ai_failure() && !all[9].is_ai_failure());
        // One agent's refused settings send its caller to the fallback, but are not OpenAI's
        // fault: the breaker does not count them.
        assert!(all[11].is_ai_failure() && !all[11].is_openai_unreachable());
    }

    #[test]
    fn latency_is_recorded_when_the_write_passes_the_batch_end() {
        let t0 = Instant::now();
        let mut q = LatencyQueue::new(t0);
        q.push(100, at(t0, 0), 1);
        q.push(250, at(t0, 10), 2);
        let mut got = Vec::new();
        q.written(99, at(t0, 50), |s, n| got.push((s, n)));
        assert!(got.is_empty(), "a partly written batch is not on the wire");
        q.written(100, at(t0, 60), |s, n| got.push((s, n)));
        assert_eq!(got, vec![(0.000_06, 1)]);
        q.written(400, at(t0, 110), |s, n| got.push((s, n)));
        assert_eq!(got[1], (0.000_1, 2));
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_latency_queue_merges_into_its_newest_batch() {
        let t0 = Instant::now();
        let mut q = LatencyQueue::new(t0);
        for i in 0..LATENCY_QUEUE_SLOTS as u64 + 5 {
            q.push((i + 1) * 10, at(t0, i), 1);
        }
        assert_eq!(q.len(), LATENCY_QUEUE_SLOTS);
        let mut frames = 0;
        let mut last = 0.0;
        q.written(u64::MAX, at(t0, 1000), |s, n| {
            frames += n;
            last = s;
        });
        assert_eq!(frames, LATENCY_QUEUE_SLOTS as u32 + 5, "no frame is lost");
        // The merged ones are timed from the newest slot's read: an overestimate.
        let expected = 0.001 - (LATENCY_QUEUE_SLOTS as f64 - 1.0) * 1e-6;
        assert!((last - expected).abs() < 1e-9, "{last} vs {expected}");
    }

    #[test]
    fn stat_cpu_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (call (bridge) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 9 0 100 2000000 500";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_rss_is_read_in_bytes() {
        let status = "Name:\tcallbridge\nVmPeak:\t  9000 kB\nVmRSS:\t  5120 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_bytes(status), Some(5120 * 1024));
        assert_eq!(parse_status_rss_bytes("VmRSS: 12 pages\n"), None);
        assert_eq!(parse_status_rss_bytes("Name: x\n"), None);
    }

    #[test]
    fn this_process_has_cpu_memory_and_fds() {
        assert!(process_rss_bytes().unwrap() > 0);
        assert!(process_open_fds().unwrap() >= 3);
        assert!(process_cpu_seconds().is_some());
    }

    #[test]
    fn statuses_map_to_a_bounded_label_set() {
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(200), "200");
    }

    #[test]
    fn error_codes_from_the_peer_are_labels_only_when_they_look_like_codes() {
        assert!(is_label_safe("invalid_value"));
        assert!(!is_label_safe("Invalid Value"));
        assert!(!is_label_safe("a\"}b"));
        assert!(!is_label_safe(&"x".repeat(65)));
    }

    #[test]
    fn error_code_labels_are_bounded() {
        let mut codes = ErrorCodes(Vec::new());
        assert_eq!(codes.label(None), "none");
        assert_eq!(codes.label(Some("Not A Code")), "other");
        for i in 0..MAX_ERROR_CODES {
            assert_eq!(codes.label(Some(&format!("code_{i}"))), format!("code_{i}"));
        }
        assert_eq!(codes.label(Some("one_too_many")), "other");
        assert_eq!(
            codes.label(Some("code_3")),
            "code_3",
            "known codes keep theirs"
        );
    }

    /// Handles of a recorder of this test alone, and its renderer.
    fn local_recorder() -> (PrometheusHandle, &'static Handles) {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        let h = metrics::with_local_recorder(&recorder, Handles::register);
        (handle, Box::leak(Box::new(h)))
    }

    /// The value of the series `series` (name and labels as rendered) in `text`.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn the_meter_times_frames_from_their_read_to_the_write_that_passes_them() {
        let (render, h) = local_recorder();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_micros(n);
        let mut meter = CallMeter::with_handles(h, t0);
        let mut stats = CallStats::default();
        assert_eq!(value(&render.render(), ACTIVE_CALLS), 1.0);

        // Uplink: one frame read at 1000 µs, its append (420 bytes) written in two parts.
        meter.on_read(Leg::Twilio, 400, ms(1_000));
        stats.audio_frames_up = 1;
        meter.on_queued(&stats, 0, 420);
        meter.on_written(Leg::OpenAi, 200, ms(1_020));
        meter.on_written(Leg::OpenAi, 220, ms(1_040));
        // Downlink: a delta split into two media frames, written at once 300 µs later.
        meter.on_read(Leg::OpenAi, 1_000, ms(2_000));
        stats.audio_frames_down = 2;
        meter.on_queued(&stats, 1_500, 0);
        meter.on_written(Leg::Twilio, 1_500, ms(2_300));
        // Barge-in: speech_started read at 3000 µs, the clear (60 bytes) written 100 µs later.
        meter.on_read(Leg::OpenAi, 100, ms(3_000));
        meter.on_queued(&stats, 60, 0);
        meter.on_event(&CallEvent::Interrupted {
            item_id: "item_1".into(),
            audio_end_ms: 1_200,
            sent_ms: 1_500,
            clamped_ms: 0,
            cleared: true,
        });
        meter.on_written(Leg::Twilio, 30, ms(3_050));
        meter.on_written(Leg::Twilio, 30, ms(3_100));
        // Buffered caller audio released without a Twilio read: counted, not timed.
        stats.audio_frames_up = 6;
        meter.on_queued(&stats, 0, 2_000);
        meter.on_written(Leg::OpenAi, 2_000, ms(3_500));
        // The call ends (the event may be seen twice; it counts once).
        let end = CallEvent::Ended {
            reason: callbridge_core::bridge::EndReason::TwilioStop,
        };
        meter.on_event(&end);
        meter.on_event(&end);

        let text = render.render();
        let up = UPLINK_LATENCY;
        assert_eq!(value(&text, &format!("{up}_count")), 1.0);
        assert_eq!(value(&text, &format!("{up}_bucket{{le=\"0.00005\"}}")), 1.0);
        let sum = value(&text, &format!("{up}_sum"));
        assert!((sum - 0.000_04).abs() < 1e-9, "{sum}");
        let down = DOWNLINK_LATENCY;
        assert_eq!(value(&text, &format!("{down}_count")), 2.0);
        assert_eq!(
            value(&text, &format!("{down}_bucket{{le=\"0.00025\"}}")),
            0.0
        );
        assert_eq!(
            value(&text, &format!("{down}_bucket{{le=\"0.0005\"}}")),
            2.0
        );
        let b = BARGE_IN_LATENCY;
        assert_eq!(value(&text, &format!("{b}_count")), 1.0);
        assert_eq!(value(&text, &format!("{b}_bucket{{le=\"0.00005\"}}")), 0.0);
        assert_eq!(value(&text, &format!("{b}_bucket{{le=\"0.0001\"}}")), 1.0);
        let audio_end = value(&text, &format!("{TRUNCATION_AUDIO_END}_sum"));
        assert!((audio_end - 1.2).abs() < 1e-9);
        assert_eq!(
            value(&text, &format!("{CALLS}{{outcome=\"twilio_stop\"}}")),
            1.0
        );
        // Counts reach the shared counters at the flush: not yet.
        assert_eq!(value(&text, &format!("{FRAMES}{{direction=\"up\"}}")), 0.0);

        meter.tick(ms(999_000), 4);
        meter.tick(ms(1_001_000), 4);
        let text = render.render();
        assert_eq!(value(&text, &format!("{FRAMES}{{direction=\"up\"}}")), 6.0);
        assert_eq!(
            value(&text, &format!("{FRAMES}{{direction=\"down\"}}")),
            2.0
        );
        assert_eq!(
            value(
                &text,
                &format!("{BYTES}{{leg=\"twilio\",direction=\"rx\"}}")
            ),
            400.0
        );
        assert_eq!(
            value(
                &text,
                &format!("{BYTES}{{leg=\"openai\",direction=\"tx\"}}")
            ),
            2_420.0
        );
        assert_eq!(value(&text, MARKS_OUTSTANDING), 4.0);

        drop(meter);
        let text = render.render();
        assert_eq!(value(&text, ACTIVE_CALLS), 0.0);
        assert_eq!(value(&text, MARKS_OUTSTANDING), 0.0);
        assert_eq!(
            value(
                &text,
                &format!("{BYTES}{{leg=\"twilio\",direction=\"tx\"}}")
            ),
            1_560.0
        );
    }

    #[test]
    fn webhook_times_are_taken_once() {
        let t = Instant::now();
        webhook_streamed("CAtest_taken_once", t);
        assert_eq!(take_webhook("CAtest_taken_once"), Some(t));
        assert_eq!(take_webhook("CAtest_taken_once"), None);
        assert_eq!(take_webhook("CAnever"), None);
    }
}
