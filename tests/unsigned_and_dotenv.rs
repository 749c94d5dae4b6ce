//! Running without signatures is loud (an error line, `callbridge_unsigned_webhooks 1`, and a
//! warning without STREAM_SECRET), and `serve` reads `./.env`, with the real environment winning.

mod common;

use callbridge_testkit::sim::twiml::Twiml;
use common::{http, logged, Proxy};

async fn scrape(proxy: &Proxy) -> String {
    String::from_utf8(http(proxy.addr, "GET", "/metrics", &[], b"").await.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_serving_logs_an_error_and_sets_the_gauge() {
    let proxy = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
        ("ALLOW_UNSIGNED_WEBHOOKS", "true"),
    ]);
    assert!(
        logged(
            &proxy,
            "ALLOW_UNSIGNED_WEBHOOKS=true: Twilio signatures are NOT checked"
        )
        .await
    );
    assert!(proxy.log().contains("ERROR"), "{}", proxy.log());
    assert!(logged(&proxy, "STREAM_SECRET is not set").await);
    assert!(scrape(&proxy)
        .await
        .contains("callbridge_unsigned_webhooks 1"));

    let signed = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
        ("STREAM_SECRET", "a-shared-secret-0123456789"),
        ("TWILIO_AUTH_TOKEN", common::AUTH_TOKEN),
        ("PUBLIC_HOST", common::PUBLIC_HOST),
    ]);
    assert!(scrape(&signed)
        .await
        .contains("callbridge_unsigned_webhooks 0"));
    assert!(
        !signed.log().contains("STREAM_SECRET is not set"),
        "{}",
        signed.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_dot_env_and_the_environment_wins() {
    let dir = common::temp_data_dir("dotenv");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "# from the file\nUSE_OPENAI_REALTIME=false\nALLOW_UNSIGNED_WEBHOOKS=true\n\
         CONFERENCE_NAME=from-dotenv-{CallSid}\nFALLBACK_SAY=dotenv\n",
    )
    .unwrap();
    let proxy = Proxy::spawn_in(&dir, &[("FALLBACK_SAY", "from-the-environment")]);
    assert!(logged(&proxy, "settings read from .env").await);
    let resp = common::webhook(proxy.addr, 5).await;
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).unwrap();
    let room = format!(
        "from-dotenv-{}",
        callbridge_testkit::sim::webhook::sid("CA", 5)
    );
    assert_eq!(
        twiml.conference(),
        Some(room.as_str()),
        "CONFERENCE_NAME from .env"
    );
    let body = String::from_utf8_lossy(&resp.body);
    assert!(
        body.contains("from-the-environment"),
        "the environment wins: {body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
