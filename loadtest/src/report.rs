//! The report of a run: what was measured, printed as a table or as JSON, and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::hist::Snapshot;
use crate::tags::FrameCounts;

/// Percentiles of one latency, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyStats {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl LatencyStats {
    /// From a histogram snapshot.
    pub fn of(s: &Snapshot) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        LatencyStats {
            count: s.count(),
            p50_ms: ms(s.quantile_ns(0.50)),
            p90_ms: ms(s.quantile_ns(0.90)),
            p99_ms: ms(s.quantile_ns(0.99)),
            max_ms: ms(s.max_ns()),
            mean_ms: ms(s.mean_ns()),
        }
    }
}

/// Latencies of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyReport {
    /// Caller frame produced → append read by the mock (through the proxy).
    pub uplink: LatencyStats,
    /// Mock delta produced → that audio read by the caller (per 20 ms block).
    pub downlink: LatencyStats,
    /// Mock `speech_started` produced → `clear` read by the caller.
    pub barge_in: LatencyStats,
    /// Webhook POST → TwiML answer.
    pub setup_webhook: LatencyStats,
    /// Stream upgrade request → `101`.
    pub setup_upgrade: LatencyStats,
    /// First caller frame → first caller audio at the mock (OpenAI connect and session setup).
    pub setup_first_audio: LatencyStats,
}

/// Frames, both ways.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FrameReport {
    /// Caller frames produced.
    pub uplink_sent: u64,
    /// Uplink check (at the mock).
    pub uplink: FrameCounts,
    /// Downlink 20 ms blocks the mock produced.
    pub downlink_sent: u64,
    /// Downlink check (at the callers).
    pub downlink: FrameCounts,
    /// Downlink blocks produced but not received before the caller hung up (answers still
    /// streaming at the end of the run; not an error).
    pub downlink_in_flight_at_hangup: u64,
    /// `media` messages the callers received (callbridge's pieces of ≤ 100 ms).
    pub downlink_media_messages: u64,
    /// Frames delivered so late their send time was forgotten (no latency sample).
    pub unmatched_latency: u64,
    /// Uplink frames produced before their call's first audio reached the mock (held by the
    /// proxy during session setup; not in the uplink latency, see `setup_first_audio`).
    pub uplink_held_at_setup: u64,
}

/// Barge-in truncation against what the caller really played.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TruncationReport {
    /// `clear`s received while audio was playing.
    pub clears: u64,
    /// Of those, with a matching accepted `conversation.item.truncate`.
    pub truncates: u64,
    /// `audio_end_ms` − ms the caller played of that item: median of |error|.
    pub abs_error_p50_ms: i64,
    /// 99th percentile of |error|.
    pub abs_error_p99_ms: i64,
    /// Most negative error (truncated before what was heard).
    pub min_error_ms: i64,
    /// Most positive error (truncated after what was heard).
    pub max_error_ms: i64,
}

/// The proxy process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyReport {
    /// Its pid.
    pub pid: u32,
    /// CPU seconds (user + system) during the run.
    pub cpu_s: f64,
    /// CPU share of one core during the run, %.
    pub cpu_pct: f64,
    /// Frames it forwarded: uplink appends + downlink `media` messages.
    pub forwarded_frames: u64,
    /// CPU µs per forwarded frame.
    pub cpu_us_per_frame: f64,
    /// RSS before the first call, MiB.
    pub rss_idle_mib: f64,
    /// Highest RSS seen during the run, MiB.
    pub rss_peak_mib: f64,
    /// (peak − idle) / calls, KiB.
    pub rss_per_call_kib: f64,
}

/// This process (callers + mock).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GeneratorReport {
    /// CPU seconds during the run.
    pub cpu_s: f64,
    /// CPU share of one core during the run, %.
    pub cpu_pct: f64,
}

/// Everything about one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `proxy` (through callbridge) or `direct` (the generator's floor, no proxy).
    pub mode: String,
    /// Concurrent calls.
    pub calls: u32,
    /// Planned duration, s.
    pub duration_s: f64,
    /// Ramp-up, s.
    pub ramp_up_s: f64,
    /// Wall time from the first call's start to the last call's end, s.
    pub wall_s: f64,
    /// Calls that ran their script and hung up normally with no protocol violation.
    pub calls_completed: u32,
    /// Calls that did not.
    pub calls_failed: u32,
    /// Failed calls by reason.
    pub failures: BTreeMap<String, u32>,
    /// Protocol violations the callers saw, by kind.
    pub violations: BTreeMap<String, u32>,
    /// `error` events the mock sent (refused client events).
    pub mock_errors: u64,
    /// Mock sessions whose caller audio named no known call.
    pub unattributed_sessions: u64,
    /// Mock sessions the proxy had not closed when the report was made (their last frames
    /// may be missing from the counts).
    pub mock_sessions_open_at_end: u64,
    /// Latencies.
    pub latency: LatencyReport,
    /// Frames.
    pub frames: FrameReport,
    /// Truncation accuracy.
    pub truncation: TruncationReport,
    /// The proxy (absent in direct mode).
    pub proxy: Option<ProxyReport>,
    /// The proxy's own read → write latency over the run, from its `/metrics` (proxy mode).
    pub proxy_latency: Option<crate::proxy_metrics::ProxyLatency>,
    /// The generator.
    pub generator: GeneratorReport,
    /// The first calls with frame errors or a failure (at most [`MAX_CALL_DETAILS`]), to start
    /// an investigation from.
    pub bad_calls: Vec<CallDetail>,
    /// Why the run fails (empty: it passes).
    pub problems: Vec<String>,
}

/// Calls listed in [`Report::bad_calls`] at most.
pub const MAX_CALL_DETAILS: usize = 10;

/// One call with something wrong.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallDetail {
    /// Its `CallSid`.
    pub call_sid: String,
    /// Caller frames sent.
    pub uplink_sent: u64,
    /// Its uplink check.
    pub uplink: FrameCounts,
    /// Its downlink check.
    pub downlink: FrameCounts,
    /// The failure, if the call failed.
    pub failure: Option<String>,
}

impl Report {
    /// Fills [`Report::problems`]: any lost, duplicated, reordered or corrupt frame, any failed
    /// call, any mock error, and (if given) an uplink/downlink p99 above `fail_p99_ms`.
    pub fn judge(&mut self, fail_p99_ms: Option<f64>) {
        let mut p = Vec::new();
        if self.calls_failed > 0 {
            p.push(format!(
                "{} failed call(s): {:?}",
                self.calls_failed, self.failures
            ));
        }
        for (dir, c) in [
            ("uplink", &self.frames.uplink),
            ("downlink", &self.frames.downlink),
        ] {
            if c.any_error() {
                p.push(format!(
                    "{dir} frames: {} lost ({} of them at the end of a call), {} duplicated, {} reordered, {} corrupt",
                    c.lost, c.lost_at_end, c.duplicated, c.reordered, c.corrupt
                ));
            }
        }
        if !self.violations.is_empty() {
            p.push(format!("protocol violations: {:?}", self.violations));
        }
        if self.mock_errors > 0 {
            p.push(format!(
                "the mock refused {} client event(s)",
                self.mock_errors
            ));
        }
        if self.unattributed_sessions > 0 {
            p.push(format!(
                "{} OpenAI session(s) carried audio of no known call",
                self.unattributed_sessions
            ));
        }
        if self.frames.uplink.ok == 0 {
            p.push("no uplink frame arrived".to_owned());
        }
        if let Some(limit) = fail_p99_ms {
            for (dir, l) in [
                ("uplink", &self.latency.uplink),
                ("downlink", &self.latency.downlink),
            ] {
                if l.p99_ms > limit {
                    p.push(format!("{dir} p99 {:.3} ms > {limit} ms", l.p99_ms));
                }
            }
        }
        self.problems = p;
    }

    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "callbridge load test: {} mode, {} calls, {:.0} s (ramp-up {:.1} s), wall {:.1} s",
            self.mode, self.calls, self.duration_s, self.ramp_up_s, self.wall_s
        );
        let _ = writeln!(
            s,
            "calls: {} completed, {} failed{}",
            self.calls_completed,
            self.calls_failed,
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.failures)
            }
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "samples", "p50", "p90", "p99", "max"
        );
        let l = &self.latency;
        for (name, v) in [
            ("uplink  (caller → mock)", &l.uplink),
            ("downlink (mock → caller)", &l.downlink),
            ("barge-in (speech_started → clear)", &l.barge_in),
            ("setup: webhook answer", &l.setup_webhook),
            ("setup: websocket upgrade", &l.setup_upgrade),
            ("setup: first audio at OpenAI", &l.setup_first_audio),
        ] {
            let _ = writeln!(
                s,
                "{:<34} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, v.count, v.p50_ms, v.p90_ms, v.p99_ms, v.max_ms
            );
        }
        let _ = writeln!(s);
        let f = &self.frames;
        let _ = writeln!(
            s,
            "{:<10} {:>10} {:>10} {:>6} {:>6} {:>6} {:>6}",
            "frames", "sent", "ok", "lost", "dup", "reord", "corrupt"
        );
        for (name, sent, c) in [
            ("uplink", f.uplink_sent, &f.uplink),
            ("downlink", f.downlink_sent, &f.downlink),
        ] {
            let _ = writeln!(
                s,
                "{:<10} {:>10} {:>10} {:>6} {:>6} {:>6} {:>6}",
                name, sent, c.ok, c.lost, c.duplicated, c.reordered, c.corrupt
            );
        }
        let _ = writeln!(
            s,
            "(downlink: 20 ms blocks in {} media messages, {} in flight at hang-up; uplink: {} held during session setup; {} frames without a latency sample)",
            f.downlink_media_messages, f.downlink_in_flight_at_hangup, f.uplink_held_at_setup, f.unmatched_latency
        );
        let t = &self.truncation;
        let _ = writeln!(
            s,
            "barge-ins: {} clears, {} truncates; audio_end_ms − played: |p50| {} ms, |p99| {} ms, min {} ms, max {} ms",
            t.clears, t.truncates, t.abs_error_p50_ms, t.abs_error_p99_ms, t.min_error_ms, t.max_error_ms
        );
        let _ = writeln!(s);
        if let Some(p) = &self.proxy {
            let _ = writeln!(
                s,
                "proxy (pid {}): {:.2} CPU s ({:.0}% of a core), {:.2} µs CPU per forwarded frame ({} frames), RSS idle {:.1} MiB, peak {:.1} MiB, {:.1} KiB per call",
                p.pid, p.cpu_s, p.cpu_pct, p.cpu_us_per_frame, p.forwarded_frames, p.rss_idle_mib, p.rss_peak_mib, p.rss_per_call_kib
            );
        }
        if let Some(l) = &self.proxy_latency {
            let ms = |v: Option<f64>| v.map_or("> 5000".to_owned(), |v| format!("{v}"));
            for (name, b) in [
                ("uplink", &l.uplink),
                ("downlink", &l.downlink),
                ("barge-in", &l.barge_in),
            ] {
                if b.samples == 0 {
                    // `None` quantiles mean "past the last bucket" only when there are samples.
                    let _ = writeln!(
                        s,
                        "proxy read → write ({name}, its /metrics buckets): no samples"
                    );
                    continue;
                }
                let _ = writeln!(
                    s,
                    "proxy read → write ({name}, its /metrics buckets): {} samples, p50 ≤ {} ms, p99 ≤ {} ms, p99.9 ≤ {} ms, {} over 5 ms",
                    b.samples, ms(b.p50_le_ms), ms(b.p99_le_ms), ms(b.p999_le_ms), b.over_5ms
                );
            }
        }
        let _ = writeln!(
            s,
            "generator (callers + mock): {:.2} CPU s ({:.0}% of a core)",
            self.generator.cpu_s, self.generator.cpu_pct
        );
        if self.mock_errors + self.unattributed_sessions + self.mock_sessions_open_at_end > 0
            || !self.violations.is_empty()
        {
            let _ = writeln!(
                s,
                "mock errors {}, unattributed sessions {}, mock sessions still open {}, violations {:?}",
                self.mock_errors, self.unattributed_sessions, self.mock_sessions_open_at_end, self.violations
            );
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "PASS");
        } else {
            for p in &self.problems {
                let _ = writeln!(s, "FAIL: {p}");
            }
        }
        s
    }
}

/// Summary statistics of signed truncation errors.
pub fn truncation_stats(clears: u64, errors: &[i64]) -> TruncationReport {
    let mut abs: Vec<i64> = errors.iter().map(|e| e.abs()).collect();
    abs.sort_unstable();
    let q = |q: f64| -> i64 {
        if abs.is_empty() {
            return 0;
        }
        let rank = ((q * abs.len() as f64).ceil() as usize).clamp(1, abs.len());
        abs[rank - 1]
    };
    TruncationReport {
        clears,
        truncates: errors.len() as u64,
        abs_error_p50_ms: q(0.5),
        abs_error_p99_ms: q(0.99),
        min_error_ms: errors.iter().copied().min().unwrap_or(0),
        max_error_ms: errors.iter().copied().max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_passes_and_any_bad_frame_fails_it() {
        let mut r = Report {
            frames: FrameReport {
                uplink: FrameCounts {
                    ok: 10,
                    ..FrameCounts::default()
                },
                ..FrameReport::default()
            },
            ..Report::default()
        };
        r.judge(None);
        assert!(r.passed(), "{:?}", r.problems);
        r.frames.downlink.lost = 1;
        r.judge(None);
        assert!(!r.passed());
        r.frames.downlink.lost = 0;
        r.calls_failed = 1;
        r.judge(None);
        assert!(!r.passed());
        r.calls_failed = 0;
        r.latency.uplink.p99_ms = 7.0;
        r.judge(Some(5.0));
        assert!(!r.passed());
        r.judge(Some(10.0));
        assert!(r.passed());
        assert!(r.table().contains("PASS"));
    }

    #[test]
    fn a_proxy_histogram_without_samples_says_so_instead_of_past_the_last_bucket() {
        use crate::proxy_metrics::{over_run, Bounds, ProxyLatency};
        let empty: crate::proxy_metrics::Scrape = vec![Vec::new(); 3];
        let mut r = Report {
            proxy_latency: Some(over_run(&empty, &empty)),
            ..Report::default()
        };
        let text = r.table();
        assert!(
            text.contains("(barge-in, its /metrics buckets): no samples"),
            "{text}"
        );
        assert!(!text.contains("> 5000"), "{text}");
        // With samples past the last bucket, the bound is shown as such.
        r.proxy_latency = Some(ProxyLatency {
            uplink: Bounds {
                samples: 1,
                ..Bounds::default()
            },
            ..ProxyLatency::default()
        });
        assert!(r.table().contains("p50 ≤ > 5000 ms"));
    }

    #[test]
    fn truncation_errors_summarise_by_magnitude_and_sign() {
        let t = truncation_stats(4, &[-3, 5, 1, -40]);
        assert_eq!((t.clears, t.truncates), (4, 4));
        assert_eq!((t.min_error_ms, t.max_error_ms), (-40, 5));
        assert_eq!(t.abs_error_p50_ms, 3);
        assert_eq!(t.abs_error_p99_ms, 40);
    }
}
