//! The proxy under test: spawned (`callbridge serve`, optionally pinned with `taskset`) or an
//! already running one given by address and pid. Only loopback addresses are accepted.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::probe::lock;

/// Servers spawned by this process (names their scratch directories).
static SPAWNED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How long a spawned server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a spawned server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Log lines of the server kept for the report of a failure.
const LOG_TAIL_LINES: usize = 40;

/// The `PUBLIC_HOST` of a signed load test: callers connect to the server's loopback address but
/// name (and sign) this host, as Twilio does through a load balancer. An attached `--target`
/// that checks signatures must be started with it.
pub const PUBLIC_HOST: &str = "loadtest.callbridge.invalid";

/// How to start the server.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The `callbridge` binary.
    pub bin: PathBuf,
    /// `taskset -c` CPU list, if any.
    pub cpus: Option<String>,
    /// The mock's `ws://` URL (`OPENAI_REALTIME_URL`).
    pub openai_url: String,
    /// `TWILIO_AUTH_TOKEN`, if the callers sign.
    pub auth_token: Option<String>,
    /// `MAX_CALLS` (above the run's concurrency so no caller gets the fallback).
    pub max_calls: u32,
    /// `ADMIN_TOKEN`, if the load test reads the admin API (the soak's export).
    pub admin_token: Option<String>,
    /// Extra `KEY=VALUE` environment (e.g. `RUNTIME=uring`), applied last.
    pub extra_env: Vec<(String, String)>,
}

/// A server the load test talks to.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its pid (for `/proc`).
    pub pid: u32,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
    /// The spawned server's `DATA_DIR`, removed when it has stopped.
    data_dir: Option<PathBuf>,
}

/// Refuses anything but a loopback address: the load test never sends traffic off the machine.
pub fn require_loopback(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("{what} {addr} is not a loopback address: the load test only connects to 127.0.0.0/8 or ::1");
    }
    Ok(())
}

/// The `callbridge` binary next to this one (same target directory), if it exists.
pub fn sibling_server_bin() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?;
    let bin = dir.join("callbridge");
    bin.is_file().then_some(bin)
}

/// Parses `KEY=VALUE`.
pub fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl Proxy {
    /// Starts `callbridge serve` on 127.0.0.1 (an ephemeral port) and waits for its address.
    pub fn spawn(spec: &SpawnSpec) -> anyhow::Result<Proxy> {
        if !spec.bin.is_file() {
            bail!(
                "server binary {} not found (build it with `cargo build --release`, or pass --server-bin)",
                spec.bin.display()
            );
        }
        let data_dir = std::env::temp_dir().join(format!(
            "callbridge-loadtest-{}-{}",
            std::process::id(),
            SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut cmd = match &spec.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&spec.bin);
                c
            }
            None => Command::new(&spec.bin),
        };
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LISTEN", "127.0.0.1:0")
            .env("OPENAI_REALTIME_URL", &spec.openai_url)
            .env("OPENAI_REALTIME_API_KEY", "sk-loadtest-mock")
            .env("LOG_LEVEL", "warn")
            .env("NO_COLOR", "1")
            .env("MAX_CALLS", spec.max_calls.to_string())
            .env("STREAM_SECRET", "loadtest-stream-secret-0123456789")
            // Stopped with SIGTERM once the calls are done: without an accept window (10 s by
            // default, longer than STOP_TIMEOUT) its drain ends at once, a clean shutdown.
            .env("DRAIN_ACCEPT_SECS", "0")
            // The store (when present) writes into a scratch directory removed afterwards.
            .env("DATA_DIR", &data_dir);
        match &spec.auth_token {
            Some(token) => {
                cmd.env("TWILIO_AUTH_TOKEN", token)
                    .env("PUBLIC_HOST", PUBLIC_HOST);
            }
            // Callers that do not sign need the server's explicit override.
            None => {
                cmd.env("ALLOW_UNSIGNED_WEBHOOKS", "true");
            }
        }
        if let Some(token) = &spec.admin_token {
            cmd.env("ADMIN_TOKEN", token);
        }
        for (k, v) in &spec.extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| match &spec.cpus {
            Some(cpus) => format!(
                "starting taskset -c {cpus} {} (taskset is in util-linux)",
                spec.bin.display()
            ),
            None => format!("starting {}", spec.bin.display()),
        })?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr.take().context("server stderr")?;
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = lock(&log2);
                if l.len() == LOG_TAIL_LINES {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            for line in lines.by_ref() {
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.trim().to_owned());
                    break;
                }
            }
            for _ in lines {} // keep draining so the server never blocks on stdout
        });
        let mut proxy = Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            child: Some(child),
            log,
            data_dir: Some(data_dir),
        };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(100)) {
                break a;
            }
            let exited = proxy
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                std::thread::sleep(Duration::from_millis(100)); // let the log reader catch up
                bail!(
                    "the server exited at start ({status}); its log:\n{}",
                    proxy.log_tail()
                );
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "the server did not print its address within {START_TIMEOUT:?}; its log:\n{}",
                    proxy.log_tail()
                );
            }
        };
        proxy.addr = addr
            .parse()
            .with_context(|| format!("server address {addr:?}"))?;
        require_loopback(proxy.addr, "server address")?;
        Ok(proxy)
    }

    /// An already running server.
    pub fn attach(addr: SocketAddr, pid: u32) -> anyhow::Result<Proxy> {
        require_loopback(addr, "--target")?;
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("--server-pid {pid}: no such process");
        }
        Ok(Proxy {
            addr,
            pid,
            child: None,
            log: Arc::default(),
            data_dir: None,
        })
    }

    /// The spawned server's `DATA_DIR` (`None` for an attached one).
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// Whether a spawned server is still running (an attached one is assumed to be).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => Path::new(&format!("/proc/{}", self.pid)).exists(),
        }
    }

    /// The last lines the spawned server logged (warnings and errors).
    pub fn log_tail(&self) -> String {
        lock(&self.log).iter().fold(String::new(), |mut s, l| {
            s.push_str(l);
            s.push('\n');
            s
        })
    }
}

impl Drop for Proxy {
    /// A spawned server gets SIGTERM (a clean shutdown), then SIGKILL after [`STOP_TIMEOUT`].
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(require_loopback("127.0.0.1:80".parse().unwrap(), "t").is_ok());
        assert!(require_loopback("[::1]:80".parse().unwrap(), "t").is_ok());
        let err = require_loopback("10.0.0.1:80".parse().unwrap(), "--target").unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
    }

    #[test]
    fn env_pairs() {
        assert_eq!(
            parse_env_pair("RUNTIME=uring"),
            Ok(("RUNTIME".into(), "uring".into()))
        );
        assert_eq!(parse_env_pair("A="), Ok(("A".into(), String::new())));
        assert!(parse_env_pair("nope").is_err());
        assert!(parse_env_pair("=x").is_err());
    }
}
