//! Helpers of the store tests: the admin API over HTTP and waiting for records.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http;

/// The admin token the store tests configure (`ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "admin-test-token-0123456789";

/// An admin API request with the right token: (status, JSON body or `Null`).
pub async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let resp = http(addr, method, path, &headers, body.as_bytes()).await;
    let value = if resp.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&resp.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&resp.body).into_owned()))
    };
    (resp.status, value)
}

/// Polls `GET /api/admin/calls/{sid}` until `done` holds for the record (at most `within`).
pub async fn wait_for_call(
    addr: SocketAddr,
    sid: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = admin(addr, "GET", &format!("/api/admin/calls/{sid}"), "").await;
        if status == 200 && done(&v) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("call {sid} not as expected within {within:?}: {status} {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `callbridge ARGS` (the real binary) with `DATA_DIR` and `env` and nothing else from the
/// environment.
pub fn cli(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(super::callbridge_bin());
    cmd.args(args)
        .env_clear()
        .env("DATA_DIR", data_dir)
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run callbridge")
}

/// The stdout of a command that must succeed (its output shown if it did not).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a command that must fail.
pub fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
