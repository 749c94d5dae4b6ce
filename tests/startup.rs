//! Starting `callbridge serve`: refused with a clear message when it cannot work.

use std::process::Command;

#[path = "common/bin.rs"]
mod common;

fn serve(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(common::callbridge_bin());
    cmd.arg("serve").env_clear().env("LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run callbridge")
}

#[test]
fn the_real_endpoint_without_an_api_key_refuses_to_start_and_says_what_to_set() {
    let out = serve(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OPENAI_REALTIME_API_KEY"), "{err}");
}

#[test]
fn an_invalid_setting_refuses_to_start_naming_it() {
    let out = serve(&[
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
        ("AGENT_VOICE", "robot"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("robot"), "{err}");
    let out = serve(&[("OPENAI_REALTIME_URL", "http://example.com")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENAI_REALTIME_URL"));
}

#[test]
fn serve_without_a_twilio_auth_token_refuses_to_start_and_names_both_ways_out() {
    let out = serve(&[("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for name in [
        "TWILIO_AUTH_TOKEN",
        "ALLOW_UNSIGNED_WEBHOOKS",
        "--allow-unsigned-webhooks",
    ] {
        assert!(err.contains(name), "{name}: {err}");
    }
}

#[test]
fn a_token_without_public_host_or_a_short_admin_token_refuses_to_start() {
    let out = serve(&[
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
        ("TWILIO_AUTH_TOKEN", "tok"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PUBLIC_HOST"));
    let out = serve(&[
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
        ("ALLOW_UNSIGNED_WEBHOOKS", "true"),
        ("ADMIN_TOKEN", "0123456789"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ADMIN_TOKEN") && err.contains("16"), "{err}");
}

#[test]
fn a_hard_descriptor_limit_too_low_for_max_calls_refuses_to_start_naming_both() {
    // `ulimit -n` lowers the soft and hard limits for the shell and what it execs.
    let bin = common::callbridge_bin().display();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 512 && exec '{bin}' serve"))
        .env_clear()
        .env("LISTEN", "127.0.0.1:0")
        .env("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime")
        .env("ALLOW_UNSIGNED_WEBHOOKS", "true")
        .env("MAX_CALLS", "2000")
        .output()
        .expect("run callbridge under sh");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("512") && err.contains("6320") && err.contains("MAX_CALLS"),
        "{err}"
    );
}
