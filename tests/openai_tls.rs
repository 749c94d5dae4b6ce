//! The OpenAI leg over TLS, end to end: the mock serves `wss://` with a certificate from a test
//! CA, callbridge trusts that CA through `OPENAI_EXTRA_CA_FILE`, and a whole call goes through
//! rustls on the driver under test (CI runs this file on both). Without the CA the handshake is
//! refused and the call takes the fallback, with the certificate error in the log.

mod common;

use std::time::Duration;

use callbridge_testkit::mock::server::tls_config;
use callbridge_testkit::sim::caller::CallerConfig;
use callbridge_testkit::sim::script::Script;
use common::{
    assert_delivered_byte_exact, closed_sessions, mock, run_signed_call, Proxy, RawStream,
};

/// A self-signed certificate for 127.0.0.1 (the mock's URL names the IP) and its key, as PEM.
fn certificate() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])
        .expect("generate a certificate");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_runs_over_wss_with_the_extra_ca() {
    let (cert, key) = certificate();
    let tls = tls_config(cert.as_bytes(), key.as_bytes()).expect("TLS config");
    let mock = mock(move |c| c.tls = Some(tls)).await;
    assert!(mock.url().starts_with("wss://127.0.0.1:"), "{}", mock.url());
    let ca_file = common::temp_data_dir("ca").with_extension("pem");
    std::fs::write(&ca_file, &cert).unwrap();
    let ca = ca_file.display().to_string();
    let proxy = Proxy::with_mock(&mock, &[("OPENAI_EXTRA_CA_FILE", ca.as_str())]);

    let mut caller = CallerConfig::new(proxy.addr, 3, Script::hello_then_hang_up(4_500));
    caller.frame_tag = Some(3);
    let report = run_signed_call(&proxy, caller).await;
    let stream = report.stream.as_ref().expect("the stream ran");
    assert!(stream.violations.is_empty(), "{:?}", stream.violations);
    let sessions = closed_sessions(&mock, 1, Duration::from_secs(2)).await;
    assert_eq!(sessions.len(), 1, "log:\n{}", proxy.log());
    let s = &sessions[0];
    assert!(s.stats.errors.is_empty(), "{:?}", s.stats.errors);
    assert!(
        s.stats.responses_completed > 0,
        "the assistant answered over TLS"
    );
    assert_delivered_byte_exact(3, s, stream);
    let _ = std::fs::remove_file(&ca_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_and_the_call_falls_back() {
    let (cert, key) = certificate();
    let tls = tls_config(cert.as_bytes(), key.as_bytes()).expect("TLS config");
    let mock = mock(move |c| c.tls = Some(tls)).await;
    // No OPENAI_EXTRA_CA_FILE: only the public roots, which did not sign the mock's certificate.
    let proxy = Proxy::with_mock(&mock, &[]);
    // The OpenAI leg is dialled once `start` checked out, and fails within milliseconds.
    let mut call = RawStream::open(proxy.addr, 4).await;
    call.start().await;
    // The AI leg failed: the stream is closed and Twilio's after-stream fetch gets the fallback.
    let _ = call.until_closed(Duration::from_secs(5)).await;
    assert_eq!(
        common::after_stream_conference(proxy.addr, 4).await,
        Some(common::room(4))
    );
    assert!(
        common::logged(&proxy, "invalid peer certificate: UnknownIssuer").await
            && proxy.log().contains("openai connect failed"),
        "the log names the certificate problem:\n{}",
        proxy.log()
    );
    assert!(mock.sessions().is_empty(), "no session was opened");
}

#[test]
fn bad_pem_is_refused_with_what_is_wrong() {
    let (cert, key) = certificate();
    let err = tls_config(b"not a pem", key.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    let err = tls_config(cert.as_bytes(), b"").unwrap_err();
    assert!(err.to_string().contains("no PEM private key"), "{err}");
    let (_, other_key) = certificate();
    let err = tls_config(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("TLS configuration"), "{err}");
}
