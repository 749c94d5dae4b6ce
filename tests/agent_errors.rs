//! One agent with a setting OpenAI refuses (an `error` answering its `session.update`) is the
//! agent's problem, not everyone's: each of its calls falls back to the conference, an error
//! line names the agent and `callbridge_agent_errors_total{agent}` counts it, and the OpenAI
//! circuit breaker stays closed, so callers of the other agents keep streaming.

mod common;

use std::sync::Arc;

use callbridge_testkit::sim::caller::{run_call, CallOutcome};
use callbridge_testkit::sim::script::Script;
use callbridge_testkit::sim::twiml::Twiml;
use common::store::{admin, ADMIN_TOKEN};
use common::{http, logged, mock, run_signed_call, signed_caller, Proxy};
use serde_json::{json, Value};

/// The number routed to the broken agent.
const BROKEN_NUMBER: &str = "+815099990000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_settings_openai_refuses_falls_back_without_opening_the_breaker() {
    let mock = mock(|cfg| {
        // The server refuses these instructions (as it would a policy violation): an `error`
        // that names the client event, session.update.
        let strict = Arc::clone(&cfg.session.validate_client);
        cfg.session.validate_client = Arc::new(move |ev: &Value| {
            let forbidden = ev["type"] == "session.update"
                && ev["session"]["instructions"]
                    .as_str()
                    .is_some_and(|i| i.contains("FORBIDDEN"));
            if forbidden {
                return Err("instructions refused".into());
            }
            strict(ev)
        });
    })
    .await;
    let proxy = Proxy::with_mock(&mock, &[("ADMIN_TOKEN", ADMIN_TOKEN)]);
    let agent = json!({"name": "broken", "voice": "marin", "instructions": "FORBIDDEN words"});
    let (status, body) = admin(
        proxy.addr,
        "PUT",
        "/api/admin/agents/broken",
        &agent.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin(
        proxy.addr,
        "PUT",
        "/api/admin/numbers/%2B815099990000",
        r#"{"agentId": "broken"}"#,
    )
    .await;
    assert!(status == 201 || status == 200, "{body}");

    // More calls than it takes to open the breaker (3 in a row).
    for n in 0..4 {
        let mut caller = signed_caller(&proxy, 300 + n, Script::hello_then_hang_up(2_000));
        caller.to = BROKEN_NUMBER.into();
        let report = run_call(caller).await.expect("the call ran");
        assert_eq!(
            report.outcome,
            CallOutcome::ProxyClosed { code: Some(1000) },
            "log:\n{}",
            proxy.log()
        );
        let after = report.after_stream.expect("Twilio followed the <Redirect>");
        let conference = Twiml::parse(&after.twiml)
            .unwrap()
            .conference()
            .map(str::to_owned);
        assert_eq!(conference, Some(format!("support-{}", report.call_sid)));
    }
    assert!(
        logged(
            &proxy,
            "the agent's settings were refused; check this agent"
        )
        .await
    );
    assert!(proxy.log().contains("agent=broken"), "{}", proxy.log());

    // The breaker is closed: a caller of the default agent streams and talks.
    let report = run_signed_call(
        &proxy,
        signed_caller(&proxy, 310, Script::hello_then_hang_up(2_000)),
    )
    .await;
    assert!(report.stream_url.is_some(), "{}", report.twiml);

    let metrics = http(proxy.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("callbridge_agent_errors_total{agent=\"broken\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("callbridge_calls_total{outcome=\"agent_rejected\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("callbridge_calls_total{outcome=\"fallback_openai_down\"} 0"),
        "{text}"
    );
}
