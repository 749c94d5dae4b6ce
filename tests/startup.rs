//! Starting `callbridge serve`: refused with a clear message when it cannot work.

use std::process::Command;

fn serve(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callbridge"));
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
