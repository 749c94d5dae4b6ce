//! Choosing the IO driver (`RUNTIME`, `WORKERS`) and stopping a server on either driver.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callbridge::config::ServeArgs;
use callbridge::front::routes::Readiness;
use callbridge::runtime::Server;
use clap::Parser;
use common::{closed_sessions, http, logged, mock, uring_usable, Proxy, RawStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_probes_io_uring_and_logs_the_driver_and_why() {
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(&mock, &[("RUNTIME", "auto")]);
    let resp = http(proxy.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(resp.status, 200);
    logged(&proxy, "io driver").await;
    let log = proxy.log();
    assert!(log.contains("RUNTIME=auto"), "log:\n{log}");
    if uring_usable() {
        assert!(
            log.contains("io driver: uring")
                && log.contains("probe (ring setup + a no-op) succeeded"),
            "io_uring is allowed here, so auto picks it; log:\n{log}"
        );
    } else {
        assert!(
            log.contains("io driver: epoll") && log.contains("io_uring unusable"),
            "log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_runtimes_are_used_and_workers_share_the_port() {
    let mock = mock(|_| {}).await;
    let epoll = Proxy::with_mock(&mock, &[("RUNTIME", "epoll")]);
    logged(&epoll, "io driver").await;
    let log = epoll.log();
    assert!(
        log.contains("io driver: epoll (RUNTIME=epoll)"),
        "log:\n{log}"
    );
    if !uring_usable() {
        return;
    }
    let uring = Proxy::with_mock(&mock, &[("RUNTIME", "uring"), ("WORKERS", "3")]);
    logged(&uring, "io driver").await;
    let log = uring.log();
    assert!(
        log.contains("io driver: uring, 3 worker thread(s) (RUNTIME=uring)"),
        "log:\n{log}"
    );
    // Many short connections land on the three SO_REUSEPORT listeners; every one is served.
    for _ in 0..30 {
        let resp = http(uring.addr, "GET", "/healthz", &[], b"").await;
        assert_eq!(resp.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_workers_value_refuses_to_start() {
    let out = std::process::Command::new(common::callbridge_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "0"])
        .env_clear()
        .env("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime")
        .env("ALLOW_UNSIGNED_WEBHOOKS", "true")
        .output()
        .expect("run callbridge");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WORKERS"), "{err}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// `Server::stop` with no grace closes a live call on both legs and ends the driver.
async fn stop_closes_a_live_call(runtime: &str) {
    let mock = mock(|_| {}).await;
    let url = mock.url();
    let data_dir = common::temp_data_dir("stop");
    let cfg = Cli::try_parse_from([
        "callbridge",
        "--data-dir",
        data_dir.to_str().expect("utf-8 temp path"),
        "--listen",
        "127.0.0.1:0",
        "--openai-url",
        url.as_str(),
        "--openai-api-key",
        "sk-test",
        "--runtime",
        runtime,
        "--workers",
        "2",
        "--twilio-auth-token",
        common::AUTH_TOKEN,
        "--public-host",
        common::PUBLIC_HOST,
    ])
    .expect("flags")
    .serve
    .into_config()
    .expect("config");
    let server = Server::start(cfg).await.expect("start");
    assert_eq!(server.driver.name(), runtime);
    let addr: SocketAddr = server.local_addr;
    let mut raw = RawStream::open(addr, 41).await;
    raw.start().await;
    let silence = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xffu8; 160]);
    for _ in 0..10 {
        raw.media(&silence).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.sessions().len(), 1);
    assert_eq!(server.app.active_calls(), 1);
    let app = std::sync::Arc::clone(&server.app);
    let started = Instant::now();
    let stopping = tokio::spawn(server.stop(Duration::from_secs(1)));
    // `stop` runs in its own task: the drain has begun once the app says so.
    assert!(
        common::eventually(Duration::from_secs(2), || app.readiness()
            == Readiness::Draining)
        .await,
        "the drain did not begin"
    );
    // While draining: /readyz says so on every worker, requests are still answered, and the
    // live call goes on.
    for _ in 0..10 {
        let resp = http(addr, "GET", "/readyz", &[], b"").await;
        assert_eq!(resp.status, 503);
        assert_eq!(resp.body, b"draining\n");
    }
    assert_eq!(
        app.active_calls(),
        1,
        "the call goes on during the grace period"
    );
    raw.media(&silence).await;
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        started.elapsed()
    );
    assert_eq!(app.active_calls(), 0, "no call is left running");
    // The call outlived the grace: its stream is closed normally (Twilio then follows the
    // <Redirect> to the fallback), and the OpenAI socket too.
    assert_eq!(raw.until_closed(Duration::from_secs(2)).await, Some(1000));
    let sessions = closed_sessions(&mock, 1, Duration::from_secs(2)).await;
    assert_eq!(sessions.len(), 1, "the OpenAI socket is closed by stop");
    // And nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_everything_on_epoll() {
    stop_closes_a_live_call("epoll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_everything_on_uring() {
    if !uring_usable() {
        return;
    }
    stop_closes_a_live_call("uring").await;
}
