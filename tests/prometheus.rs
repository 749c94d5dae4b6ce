//! A real Prometheus against the real server: the alert rules pass `promtool`, a live scrape
//! passes `promtool check metrics`, and a Prometheus scraping callbridge every second during a
//! short load of calls with barge-ins evaluates every PromQL expression of the dashboard and the
//! alert rules, each naming only metrics the server exports and that have data.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package (`.ci/run` installs it).
//! Without them these tests print SKIP and pass, unless `CALLBRIDGE_REQUIRE_PROMETHEUS=1` (set by
//! `.ci/run`), which makes a missing tool a failure.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbridge_testkit::demo::demo_script;
use callbridge_testkit::sim::caller::CallerConfig;
use callbridge_testkit::sim::webhook;
use common::{mock, run_signed_call, Proxy};
use serde_json::Value;

/// Simulated calls of the load, all at once; each has one barge-in.
const CALLS: u32 = 3;

/// What `$__rate_interval` becomes when the test asks Prometheus directly (Grafana would pick it
/// from the scrape interval): long enough to cover the whole short load.
const RATE_INTERVAL: &str = "1m";

/// The repository's root (these tests run as part of `cli/`, the binary's package).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The path of `tool` on PATH, or `None` after printing SKIP (a panic when Prometheus is
/// required).
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("CALLBRIDGE_REQUIRE_PROMETHEUS").as_deref() == Ok("1") {
            panic!("{name} not found and CALLBRIDGE_REQUIRE_PROMETHEUS=1: install Debian's prometheus package (apt-get install prometheus)");
        }
        eprintln!("SKIP: {name} not installed (apt-get install prometheus); set CALLBRIDGE_REQUIRE_PROMETHEUS=1 to make this a failure");
    }
    found
}

/// Runs `cmd` (with `stdin` fed), returning exit code and combined output.
fn run(cmd: &mut Command, stdin: &[u8]) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

// ---------------------------------------------------------------------------------------------
// PromQL names: which metrics an expression uses, and whether the server exports them.

/// The metric names (`callbridge_…`) an expression uses, outside string literals.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_string: Option<char> = None;
    let mut token = String::new();
    let flush = |token: &mut String, names: &mut BTreeSet<String>| {
        if token.starts_with("callbridge_") {
            names.insert(std::mem::take(token));
        }
        token.clear();
    };
    let mut prev = ' ';
    for c in expr.chars() {
        match in_string {
            Some(q) => {
                if c == q && prev != '\\' {
                    in_string = None;
                }
            }
            None if c == '"' || c == '\'' || c == '`' => {
                flush(&mut token, &mut names);
                in_string = Some(c);
            }
            None if c.is_ascii_alphanumeric() || c == '_' || c == ':' => token.push(c),
            None => flush(&mut token, &mut names),
        }
        prev = c;
    }
    flush(&mut token, &mut names);
    names
}

/// The series names of a text-format scrape (`name{…} value` and `name value` lines).
fn exported_names(scrape: &str) -> HashSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Problems of `exprs` against the exported series names: each name an expression uses must be
/// exported (histograms by their `_bucket`/`_sum`/`_count` series).
fn unexported_names(exprs: &[String], exported: &HashSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for expr in exprs {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                problems.push(format!(
                    "{name} (in `{expr}`) is not exported by callbridge"
                ));
            }
        }
    }
    problems
}

/// Every PromQL expression of the dashboard: panel targets, and the instance variable's metric.
fn dashboard_exprs() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(repo().join("dashboards/callbridge.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let variables: Vec<String> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect();
    (exprs, variables)
}

/// An expression as Prometheus gets it from Grafana: the dashboard's variables filled in.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$instance", ".*")
}

#[test]
fn names_in_expressions_are_found_outside_strings() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(callbridge_uplink_latency_seconds_bucket{instance=~"callbridge_not_a_name"}[5m]))) / clamp_min(callbridge_active_calls, 1)"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "callbridge_active_calls",
            "callbridge_uplink_latency_seconds_bucket"
        ]
    );
}

#[test]
fn a_panel_naming_a_metric_the_server_does_not_export_fails_the_check() {
    let scrape = "# TYPE callbridge_active_calls gauge\ncallbridge_active_calls 2\n\
        callbridge_uplink_latency_seconds_bucket{le=\"0.001\"} 5\n\
        callbridge_store_queue_depth 0\n";
    let exported = exported_names(scrape);
    let good = vec![
        "sum(callbridge_active_calls)".to_owned(),
        "histogram_quantile(0.5, rate(callbridge_uplink_latency_seconds_bucket[1m]))".to_owned(),
    ];
    assert!(unexported_names(&good, &exported).is_empty());
    let bogus = vec!["sum(rate(callbridge_bogus_frames_total[1m]))".to_owned()];
    let problems = unexported_names(&bogus, &exported);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("callbridge_bogus_frames_total"));
    // A histogram is exported by its series, not by its base name alone.
    let base = vec!["callbridge_uplink_latency_seconds".to_owned()];
    assert_eq!(unexported_names(&base, &exported).len(), 1);
}

#[test]
fn dashboard_json_is_the_generators_output() {
    let Some(python) = ["python3", "python"].iter().find_map(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| *p)
    }) else {
        eprintln!("SKIP: no python3 to run dashboards/generate.py --check");
        return;
    };
    let (code, out) = run(
        Command::new(python)
            .arg(repo().join("dashboards/generate.py"))
            .arg("--check"),
        b"",
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn dashboard_has_the_rows_and_variables_operators_expect() {
    let text = std::fs::read_to_string(repo().join("dashboards/callbridge.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let rows: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Traffic",
            "Latency",
            "Barge-in and truncation",
            "OpenAI health",
            "Safety and lifecycle",
            "Store",
            "Process"
        ]
    );
    let vars: Vec<(&str, &str)> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    assert_eq!(vars, [("datasource", "datasource"), ("instance", "query")]);
    let (exprs, _) = dashboard_exprs();
    for e in &exprs {
        assert!(
            e.contains(r#"instance=~"$instance""#),
            "not filtered by instance: {e}"
        );
        if e.contains("histogram_quantile") {
            assert!(e.contains("_bucket{"), "quantile not from buckets: {e}");
        }
    }
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let (code, out) = run(
        Command::new(promtool)
            .args(["check", "rules"])
            .arg(repo().join("dashboards/alerts.yml")),
        b"",
    );
    assert_eq!(code, 0, "{out}");
    let alerts = std::fs::read_to_string(repo().join("dashboards/alerts.yml")).unwrap();
    let n = alerts.matches("- alert:").count();
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
    assert_eq!(
        alerts.matches("runbook:").count(),
        n,
        "every alert has a runbook line"
    );
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let (code, out) = run(
        Command::new(promtool)
            .args(["test", "rules"])
            .arg(repo().join("dashboards/alerts.test.yml")),
        b"",
    );
    assert_eq!(code, 0, "{out}");
}

// ---------------------------------------------------------------------------------------------
// The live test.

/// A blocking HTTP/1.0 GET (the server closes after the answer): status and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A Prometheus server in a temporary directory, killed (and its directory removed) on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = common::temp_data_dir("prometheus");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let rules = repo().join("dashboards/alerts.yml");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: callbridge\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        // A free loopback port (closed again at once; Prometheus binds it right after).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                let mut err = String::new();
                let _ = p.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("prometheus exited ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /api/v1/…`: the `data` of a successful answer, or the error.
    fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) =
            http_get(self.addr, path_and_query).map_err(|e| format!("request failed: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!("HTTP {status}: {} {}", v["errorType"], v["error"]))
        }
    }

    /// Waits until Prometheus holds a scrape of the target taken at `after` or later (at most
    /// `within`): `timestamp(up)` is the time of its latest scrape.
    fn wait_for_scrape_after(&self, after: SystemTime, within: Duration) {
        let after_s = after.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let deadline = Instant::now() + within;
        loop {
            let latest = self.query("timestamp(up)").ok().and_then(|r| {
                r.first()
                    .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            });
            if latest.is_some_and(|t| t >= after_s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no scrape since {after_s} within {within:?} (latest: {latest:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An instant query: its result vector.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!(
            "/api/v1/query?{}",
            webhook::form_encode(&[("query".into(), expr.into())])
        ))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the sample `line_prefix` (a series name with labels, as rendered) in a scrape.
fn sample(scrape: &str, line_prefix: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_live_server_and_answers_every_dashboard_and_alert_query() {
    let (Some(promtool), Some(prometheus)) = (tool("promtool"), tool("prometheus")) else {
        return;
    };
    let mock = mock(|m| m.session.response_audio_ms = 3_500).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let prom = Prometheus::start(&prometheus, proxy.addr);

    // A short load: a few concurrent calls, each with a barge-in, while Prometheus scrapes.
    futures_util::future::join_all((0..CALLS).map(|n| {
        run_signed_call(
            &proxy,
            CallerConfig::new(proxy.addr, 700 + n, demo_script()),
        )
    }))
    .await;
    // One refused request, so an error status is in the HTTP counts too.
    let _ = http_get(proxy.addr, "/no-such-route");

    // The live scrape: promtool's linter finds nothing (every metric described, names fine).
    // The callers are done when they hang up; the proxy then closes the OpenAI leg (a close
    // handshake, up to its close timeout) before a call stops counting as active.
    let deadline = Instant::now() + Duration::from_secs(5);
    let scrape = loop {
        let (status, scrape) = http_get(proxy.addr, "/metrics").unwrap();
        assert_eq!(status, 200);
        if sample(&scrape, "callbridge_active_calls") == Some(0.0) || Instant::now() > deadline {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let scraped_at = SystemTime::now();
    let (code, out) = run(
        Command::new(&promtool).args(["check", "metrics"]),
        scrape.as_bytes(),
    );
    assert_eq!(code, 0, "promtool check metrics:\n{out}\nscrape:\n{scrape}");

    // The load really produced observations (not just zero series).
    for series in [
        "callbridge_uplink_latency_seconds_count",
        "callbridge_downlink_latency_seconds_count",
        "callbridge_barge_in_latency_seconds_count",
        "callbridge_truncation_audio_end_seconds_count",
        "callbridge_call_setup_seconds_count{phase=\"webhook_to_start\"}",
        "callbridge_call_setup_seconds_count{phase=\"start_to_session\"}",
        "callbridge_call_setup_seconds_count{phase=\"openai_connect\"}",
        "callbridge_frames_total{direction=\"up\"}",
        "callbridge_frames_total{direction=\"down\"}",
        "callbridge_openai_tokens_total{kind=\"output\"}",
        "callbridge_calls_total{outcome=\"twilio_stop\"}",
        "callbridge_http_requests_total{route=\"voice\",status=\"200\"}",
        "callbridge_http_requests_total{route=\"media_stream\",status=\"101\"}",
        "callbridge_http_requests_total{route=\"other\",status=\"404\"}",
        "callbridge_process_cpu_seconds_total",
        "callbridge_process_resident_memory_bytes",
    ] {
        let v = sample(&scrape, series).unwrap_or(0.0);
        assert!(v > 0.0, "{series} = {v} after the load\n{scrape}");
    }
    assert_eq!(
        sample(&scrape, "callbridge_barge_in_latency_seconds_count"),
        Some(f64::from(CALLS)),
        "one barge-in per call"
    );
    assert_eq!(sample(&scrape, "callbridge_active_calls"), Some(0.0));
    for (what, series) in [
        ("uplink", "callbridge_uplink_latency_seconds"),
        ("downlink", "callbridge_downlink_latency_seconds"),
        ("barge-in", "callbridge_barge_in_latency_seconds"),
    ] {
        let sum = sample(&scrape, &format!("{series}_sum")).unwrap_or(0.0);
        let count = sample(&scrape, &format!("{series}_count")).unwrap_or(0.0);
        eprintln!(
            "{what}: {count} samples, mean {:.1} µs",
            sum / count.max(1.0) * 1e6
        );
    }

    // Prometheus has scraped the load (the last scrape after the calls ended, too).
    prom.wait_for_scrape_after(scraped_at, Duration::from_secs(10));
    let up = prom.query("up").unwrap();
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1", "the scrape target is up: {up:?}");

    // Every expression of the dashboard and of the rules, as Prometheus parsed them.
    let (panel_exprs, variable_defs) = dashboard_exprs();
    let rules = prom.api("/api/v1/rules").unwrap();
    let mut rule_exprs = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            rule_exprs.push((
                rule["name"].as_str().unwrap().to_owned(),
                rule["query"].as_str().unwrap().to_owned(),
                rule["health"].as_str().unwrap_or("").to_owned(),
                rule["lastError"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    let alerts_yml = std::fs::read_to_string(repo().join("dashboards/alerts.yml")).unwrap();
    assert_eq!(
        rule_exprs.len(),
        alerts_yml.matches("- alert:").count(),
        "prometheus loaded every rule"
    );
    let mut problems = Vec::new();
    for (name, _, health, err) in &rule_exprs {
        if health != "ok" {
            problems.push(format!("rule {name}: health {health:?} {err}"));
        }
    }
    let all_exprs: Vec<String> = panel_exprs
        .iter()
        .map(|e| substitute(e))
        .chain(rule_exprs.iter().map(|(_, q, _, _)| q.clone()))
        .collect();
    for expr in &all_exprs {
        if let Err(e) = prom.query(expr) {
            problems.push(format!("`{expr}` does not evaluate: {e}"));
        }
    }

    // Each metric named is exported by the server, and Prometheus has data for it.
    let exported = exported_names(&scrape);
    let named: Vec<String> = all_exprs.iter().chain(&variable_defs).cloned().collect();
    problems.extend(unexported_names(&named, &exported));
    let mut names: BTreeSet<String> = named.iter().flat_map(|e| metric_names(e)).collect();
    names.retain(|n| exported.contains(n));
    for name in &names {
        match prom.query(&format!("count({name})")) {
            Ok(r) if !r.is_empty() => {}
            Ok(_) => problems.push(format!("{name}: Prometheus has no data")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The check has teeth against the real server: a bogus panel is reported.
    let bogus = vec!["sum(rate(callbridge_bogus_frames_total[1m]))".to_owned()];
    assert_eq!(unexported_names(&bogus, &exported).len(), 1);
    assert!(prom
        .query("count(callbridge_bogus_frames_total)")
        .unwrap()
        .is_empty());

    // Quantiles from the real buckets are real numbers.
    let p99 = prom
        .query(&substitute(
            r#"histogram_quantile(0.99, sum by (le) (rate(callbridge_uplink_latency_seconds_bucket[$__rate_interval])))"#,
        ))
        .unwrap();
    let v: f64 = p99[0]["value"][1].as_str().unwrap().parse().unwrap();
    eprintln!("uplink p99 from Prometheus: {:.1} µs", v * 1e6);
    assert!(v > 0.0 && v < 0.5, "uplink p99 {v} s on loopback");
}
