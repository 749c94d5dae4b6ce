//! The proxy's own view of its latency: its `/metrics` histograms, read before and after a run.
//!
//! The load test's latencies are end to end (caller send → mock receive), so they include the
//! generator's own scheduling and both loopback hops. callbridge also measures the part it is
//! responsible for, socket read → socket write (`callbridge_uplink_latency_seconds`,
//! `callbridge_downlink_latency_seconds`, `callbridge_barge_in_latency_seconds`). Reading
//! those beside the end-to-end numbers shows where a tail comes from. The histograms are
//! cumulative since the server started, so the run's share is the difference of two scrapes.
//! Bucket bounds are coarse (50 µs … 5 s): a quantile is reported as the upper bound of the
//! bucket it falls in ("p99 ≤ 50 µs").

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use callbridge_testkit::sim::webhook::{write_request, HttpResponse};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The histograms read, by the name the report uses.
pub const HISTOGRAMS: [(&str, &str); 3] = [
    ("uplink", "callbridge_uplink_latency_seconds"),
    ("downlink", "callbridge_downlink_latency_seconds"),
    ("barge_in", "callbridge_barge_in_latency_seconds"),
];

/// Cumulative bucket counts of one histogram: (upper bound in s, count), `+Inf` last.
pub type Buckets = Vec<(f64, u64)>;

/// One scrape: the buckets of each of [`HISTOGRAMS`] (empty when the server has none yet).
pub type Scrape = Vec<Buckets>;

/// Quantile bounds of one histogram over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bounds {
    /// Samples in the run.
    pub samples: u64,
    /// Upper bound of the bucket holding the median, ms (`None`: beyond the last finite bucket).
    pub p50_le_ms: Option<f64>,
    /// Same for p99.
    pub p99_le_ms: Option<f64>,
    /// Same for p99.9.
    pub p999_le_ms: Option<f64>,
    /// Samples above 5 ms.
    pub over_5ms: u64,
}

/// The proxy's read → write latency over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyLatency {
    /// Twilio frame read → append written.
    pub uplink: Bounds,
    /// OpenAI delta read → Twilio media written.
    pub downlink: Bounds,
    /// `speech_started` read → `clear` written.
    pub barge_in: Bounds,
}

/// Reads `/metrics` from the server at `addr`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let text = get_metrics(addr).await?;
    Ok(HISTOGRAMS
        .iter()
        .map(|(_, name)| buckets(&text, name))
        .collect())
}

/// [`scrape`], or `None` with a note on stderr (an older server, a refused connection): the
/// run goes on without the proxy-side latency.
pub async fn scrape_or_note(addr: SocketAddr) -> Option<Scrape> {
    match scrape(addr).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("note: no proxy-side latency (GET /metrics: {e:#})");
            None
        }
    }
}

/// How long a `/metrics` scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /metrics` from the server at `addr`: the text exposition.
pub async fn get_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let resp = http_get(addr, "/metrics", &[], SCRAPE_TIMEOUT).await?;
    if resp.status != 200 {
        bail!("GET /metrics answered {}", resp.status);
    }
    String::from_utf8(resp.body).context("GET /metrics: not UTF-8")
}

/// Largest answer [`http_get`] reads: an admin export part is at most 8 MiB
/// (`EXPORT_MAX_BYTES`) plus the line that crossed it.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// One `GET path` to the server at `addr` (one request per connection, `Connection: close`),
/// within `timeout`. Bodies up to [`MAX_ANSWER_BYTES`] (the simulator's webhook client stops at
/// 1 MiB, too little for an export part).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    let mut req = Vec::new();
    write_request(&mut req, "GET", &addr.to_string(), path, headers, b"");
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&req).await?;
        let mut raw = Vec::new();
        (&mut s)
            .take(MAX_ANSWER_BYTES as u64 + 1)
            .read_to_end(&mut raw)
            .await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, fetch)
        .await
        .with_context(|| format!("GET {path} timed out after {timeout:?}"))??;
    if raw.len() > MAX_ANSWER_BYTES {
        bail!("GET {path}: the answer is larger than {MAX_ANSWER_BYTES} bytes");
    }
    parse_answer(raw).with_context(|| format!("GET {path}"))
}

/// Splits a whole `Connection: close` answer into status, headers and body (the body must be
/// as long as its `Content-Length`, when there is one).
fn parse_answer(raw: Vec<u8>) -> anyhow::Result<HttpResponse> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the head")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = raw[head_end + 4..].to_vec();
    let resp = HttpResponse {
        status,
        headers,
        body,
    };
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        if len != resp.body.len() {
            bail!("{} body bytes for Content-Length {len}", resp.body.len());
        }
    }
    Ok(resp)
}

/// The `NAME_bucket{le="…"} N` lines of `name` in a Prometheus text exposition.
pub fn buckets(text: &str, name: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{");
    let mut out: Buckets = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (labels, value) = rest.split_once("} ")?;
            let le = labels
                .split(',')
                .find_map(|l| l.strip_prefix("le=\""))?
                .trim_end_matches('"');
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `after − before`, bucket by bucket (a histogram missing before counts as zero).
pub fn difference(after: &Buckets, before: &Buckets) -> Buckets {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|(l, _)| *l == le).map_or(0, |&(_, c)| c);
            (le, n.saturating_sub(was))
        })
        .collect()
}

/// Quantile bounds of cumulative `buckets`.
pub fn bounds(buckets: &Buckets) -> Bounds {
    let total = buckets.last().map_or(0, |&(_, n)| n);
    let le_of = |q: f64| -> Option<f64> {
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        buckets
            .iter()
            .find(|&&(_, n)| n >= want)
            .map(|&(le, _)| le * 1000.0)
            .filter(|ms| ms.is_finite())
    };
    let within_5ms = buckets
        .iter()
        .find(|&&(le, _)| (le - 0.005).abs() < 1e-12)
        .map_or(total, |&(_, n)| n);
    Bounds {
        samples: total,
        p50_le_ms: le_of(0.5),
        p99_le_ms: le_of(0.99),
        p999_le_ms: le_of(0.999),
        over_5ms: total.saturating_sub(within_5ms),
    }
}

/// The run's latency from two scrapes.
pub fn over_run(before: &Scrape, after: &Scrape) -> ProxyLatency {
    let b = |i: usize| {
        let empty = Vec::new();
        bounds(&difference(&after[i], before.get(i).unwrap_or(&empty)))
    };
    ProxyLatency {
        uplink: b(0),
        downlink: b(1),
        barge_in: b(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP callbridge_uplink_latency_seconds x\n\
        callbridge_uplink_latency_seconds_bucket{le=\"0.00005\"} 90\n\
        callbridge_uplink_latency_seconds_bucket{le=\"0.0001\"} 99\n\
        callbridge_uplink_latency_seconds_bucket{le=\"0.005\"} 100\n\
        callbridge_uplink_latency_seconds_bucket{le=\"+Inf\"} 101\n\
        callbridge_uplink_latency_seconds_sum 0.1\n\
        callbridge_uplink_latency_seconds_count 101\n\
        callbridge_downlink_latency_seconds_bucket{le=\"0.00005\"} 3\n";

    #[test]
    fn buckets_are_read_by_name_in_order() {
        let b = buckets(TEXT, "callbridge_uplink_latency_seconds");
        assert_eq!(
            b,
            vec![
                (0.00005, 90),
                (0.0001, 99),
                (0.005, 100),
                (f64::INFINITY, 101)
            ]
        );
        assert_eq!(
            buckets(TEXT, "callbridge_downlink_latency_seconds").len(),
            1
        );
        assert!(buckets(TEXT, "callbridge_barge_in_latency_seconds").is_empty());
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds_and_the_tail_is_counted() {
        let b = bounds(&buckets(TEXT, "callbridge_uplink_latency_seconds"));
        assert_eq!(b.samples, 101);
        assert_eq!(b.p50_le_ms, Some(0.05));
        // 99% of 101 = 99.99 → the 100th sample, in the 5 ms bucket.
        assert_eq!(b.p99_le_ms, Some(5.0));
        // The 101st is beyond every finite bucket.
        assert_eq!(b.p999_le_ms, None);
        assert_eq!(b.over_5ms, 1);
        assert_eq!(bounds(&Vec::new()).p99_le_ms, None);
    }

    #[test]
    fn answers_split_into_status_headers_and_a_body_of_its_length() {
        let raw =
            b"HTTP/1.1 200 OK\r\nX-Next-Cursor: ab12\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        let r = parse_answer(raw).unwrap();
        assert_eq!((r.status, r.header("x-next-cursor")), (200, Some("ab12")));
        assert_eq!(r.body, b"hello");
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello".to_vec();
        assert!(parse_answer(short).is_err(), "a cut answer is an error");
        assert!(parse_answer(b"HTTP/1.1 200".to_vec()).is_err());
    }

    #[test]
    fn a_run_is_the_difference_of_two_scrapes() {
        let before = vec![(0.00005, 80), (0.0001, 80), (f64::INFINITY, 80)];
        let after = vec![(0.00005, 90), (0.0001, 99), (f64::INFINITY, 100)];
        let d = difference(&after, &before);
        assert_eq!(d, vec![(0.00005, 10), (0.0001, 19), (f64::INFINITY, 20)]);
        let b = bounds(&d);
        assert_eq!(b.samples, 20);
        // The 10th of 20 is in the first bucket; the 20th only under +Inf.
        assert_eq!(b.p50_le_ms, Some(0.05));
        assert_eq!(b.p99_le_ms, None);
    }
}
