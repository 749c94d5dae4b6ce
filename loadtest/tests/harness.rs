//! The load test binary end to end: a short run through the real `callbridge serve`, the
//! direct-mode floor, injected faults that must be caught, and refused targets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const LOADTEST: &str = env!("CARGO_BIN_EXE_callbridge-loadtest");

/// Builds the `callbridge` binary next to the load test (it spawns that one), once per test
/// run: always, not only when missing, so a stale binary from an older build is never tested.
/// It builds what `cargo test --workspace` builds (the binary comes with the integration tests of
/// its package), so under that command it is already fresh; a narrower build would resolve other
/// features and rebuild the server and its TLS stack on every alternation.
fn ensure_server_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(LOADTEST).parent().unwrap();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["test", "--workspace", "--no-run", "--quiet"]);
            // Without the variables cargo sets for a test run (ring's build script tracks
            // CARGO_MANIFEST_DIR, and a changed value rebuilds it); the user's own CARGO_*
            // settings (offline, registries, flags) stay.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                let set_by_cargo_for_tests = key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_MANIFEST_")
                    || key.starts_with("CARGO_BIN_")
                    || matches!(
                        key.as_ref(),
                        "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "CARGO_RUSTC_CURRENT_DIR"
                    );
                if set_by_cargo_for_tests {
                    cmd.env_remove(key.as_ref());
                }
            }
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("cargo build callbridge");
            assert!(st.success(), "building callbridge failed");
            let bin = dir.join("callbridge");
            assert!(bin.is_file(), "{} missing", bin.display());
            bin
        })
        .clone()
}

fn loadtest(args: &[&str]) -> Output {
    ensure_server_bin();
    Command::new(LOADTEST)
        .args(args)
        .output()
        .expect("run callbridge-loadtest")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn errors(frames: &Value) -> u64 {
    ["lost", "duplicated", "reordered", "corrupt"]
        .iter()
        .map(|k| frames[k].as_u64().unwrap())
        .sum()
}

#[test]
fn ten_calls_through_the_proxy_deliver_every_frame_and_barge_in() {
    let out = loadtest(&[
        "run",
        "--calls",
        "10",
        "--duration",
        "7s",
        "--ramp-up",
        "1s",
        "--json",
        "--progress",
        "0",
    ]);
    let r = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(r["mode"], "proxy");
    assert_eq!(r["calls_completed"], 10, "{stderr}");
    assert_eq!(r["calls_failed"], 0);
    let f = &r["frames"];
    let sent = f["uplink_sent"].as_u64().unwrap();
    assert!(sent >= 10 * 250, "7 s calls send ≥ 300 frames each: {sent}");
    assert_eq!(f["uplink"]["ok"].as_u64().unwrap(), sent);
    assert_eq!(errors(&f["uplink"]), 0);
    assert_eq!(errors(&f["downlink"]), 0);
    assert!(f["downlink"]["ok"].as_u64().unwrap() >= 10 * 150, "{f}");
    assert!(f["downlink_media_messages"].as_u64().unwrap() > 0);
    let l = &r["latency"];
    let held = f["uplink_held_at_setup"].as_u64().unwrap();
    assert!(
        (10..=10 * 10).contains(&held),
        "at least each call's first frame: {held}"
    );
    assert_eq!(l["uplink"]["count"].as_u64().unwrap() + held, sent);
    assert!(l["uplink"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(l["downlink"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(l["barge_in"]["count"], 10, "one barge-in per call at 4.5 s");
    assert_eq!(l["setup_webhook"]["count"], 10);
    let t = &r["truncation"];
    assert_eq!(
        (t["clears"].as_u64(), t["truncates"].as_u64()),
        (Some(10), Some(10))
    );
    assert!(t["abs_error_p99_ms"].as_i64().unwrap() <= 100, "{t}");
    let p = &r["proxy"];
    assert!(p["cpu_s"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["forwarded_frames"].as_u64().unwrap() > sent);
    assert!(p["rss_peak_mib"].as_f64().unwrap() >= p["rss_idle_mib"].as_f64().unwrap());
    assert!(r["problems"].as_array().unwrap().is_empty());
    // The proxy's own read → write view, from its /metrics: a sample per forwarded uplink frame
    // (frames held during session setup leave together, a few per sample).
    let own = &r["proxy_latency"];
    let samples = own["uplink"]["samples"].as_u64().unwrap();
    assert!(
        (l["uplink"]["count"].as_u64().unwrap()..=sent).contains(&samples),
        "{own}"
    );
    assert!(own["uplink"]["p99_le_ms"].as_f64().unwrap() > 0.0, "{own}");
    assert_eq!(own["barge_in"]["samples"], 10, "{own}");
}

#[test]
fn the_openai_leg_runs_over_tls_with_every_frame_delivered() {
    let out = loadtest(&[
        "run",
        "--calls",
        "4",
        "--duration",
        "6s",
        "--ramp-up",
        "1s",
        "--openai-tls",
        "--json",
        "--progress",
        "0",
    ]);
    let r = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("OPENAI_EXTRA_CA_FILE"), "{stderr}");
    // The mock really served TLS, and the server was pointed at it.
    assert!(stderr.contains("OpenAI at wss://127.0.0.1:"), "{stderr}");
    assert_eq!(r["calls_completed"], 4, "{stderr}");
    let f = &r["frames"];
    assert!(f["uplink"]["ok"].as_u64().unwrap() > 0);
    assert_eq!(f["uplink"]["ok"], f["uplink_sent"]);
    assert_eq!(errors(&f["uplink"]), 0);
    assert_eq!(errors(&f["downlink"]), 0);
    assert!(f["downlink"]["ok"].as_u64().unwrap() > 0);
}

#[test]
fn the_direct_floor_runs_the_same_callers_without_the_proxy() {
    let out = loadtest(&[
        "run",
        "--direct",
        "--calls",
        "5",
        "--duration",
        "3s",
        "--json",
        "--progress",
        "0",
    ]);
    let r = json(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["mode"], "direct");
    assert_eq!(r["calls_completed"], 5);
    assert!(r["proxy"].is_null());
    assert!(r["frames"]["uplink"]["ok"].as_u64().unwrap() > 0);
}

/// Runs with one injected fault: the run must fail (exit 1) and the report must count it.
fn injected(fault: &str) -> Value {
    let out = loadtest(&[
        "run",
        "--calls",
        "2",
        "--duration",
        "4s",
        "--json",
        "--progress",
        "0",
        "--inject-fault",
        fault,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{fault}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert!(!r["problems"].as_array().unwrap().is_empty());
    r["frames"].clone()
}

#[test]
fn a_dropped_or_corrupted_uplink_frame_is_detected() {
    let f = injected("drop-uplink");
    assert_eq!(f["uplink"]["lost"], 1, "{f}");
    let f = injected("corrupt-uplink");
    assert_eq!(f["uplink"]["corrupt"], 1, "{f}");
}

#[test]
fn a_dropped_corrupted_or_duplicated_downlink_block_is_detected() {
    let f = injected("drop-downlink");
    assert_eq!(
        (
            f["downlink"]["lost"].as_u64(),
            f["downlink"]["corrupt"].as_u64()
        ),
        (Some(1), Some(0)),
        "{f}"
    );
    let f = injected("corrupt-downlink");
    assert_eq!(f["downlink"]["corrupt"], 1, "{f}");
    let f = injected("duplicate-downlink");
    assert_eq!(f["downlink"]["duplicated"], 1, "{f}");
}

#[test]
fn non_loopback_targets_and_bad_arguments_are_refused() {
    let out = loadtest(&[
        "run",
        "--target",
        "10.1.2.3:8080",
        "--server-pid",
        "1",
        "--mock-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    let out = loadtest(&["run", "--mock-listen", "192.168.1.1:9100"]);
    assert_eq!(out.status.code(), Some(2));
    let out = loadtest(&["run", "--calls", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = loadtest(&["run", "--duration", "10s", "--ramp-up", "8s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ramp-up"));
    let out = loadtest(&[
        "run",
        "--server-bin",
        "/nonexistent/callbridge",
        "--calls",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = loadtest(&["run", "--calls", "1", "--server-env", "MAX_CALLS=0"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited at start") && stderr.contains("MAX_CALLS"),
        "{stderr}"
    );
}
