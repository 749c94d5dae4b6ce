//! callbridge against Twilio's own signatures: every signature here is computed by the official
//! `twilio` Python package (`tests/twilio_sign.py`, `RequestValidator.compute_signature`), and the
//! real binary must accept exactly the requests Twilio would sign for it: the voice webhook, the
//! status callback and after-stream (with a query string), the media stream upgrade (`wss://`
//! and `https://`, with and without `:443`); Unicode and repeated parameters; and it must refuse
//! a changed or added parameter, another host, `http://`, another token and a missing header.
//!
//! `.ci/run` installs the package with pip and sets `CALLBRIDGE_REQUIRE_TWILIO_PY=1`, so there a
//! missing package fails the test instead of skipping it.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use callbridge_testkit::sim::twiml::Twiml;
use callbridge_testkit::sim::webhook::{form_encode, sid};
use common::{http, Proxy, RawStream};
use serde_json::{json, Value};

/// The primary and secondary auth tokens of the server under test.
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const SECONDARY: &str = "fedcba9876543210fedcba9876543210";
/// Its PUBLIC_HOST.
const HOST: &str = "bridge.example.com";

/// One request to sign: the URL Twilio would request and its form parameters (repeats allowed).
struct ToSign<'a> {
    token: &'a str,
    url: String,
    params: Vec<(String, String)>,
}

/// The signatures Twilio's package computes for `cases`; `None` when Python or the package is
/// missing and the test may skip.
fn twilio_signatures(cases: &[ToSign<'_>]) -> Option<Vec<String>> {
    let input: Vec<Value> = cases
        .iter()
        .map(|c| json!({"token": c.token, "url": c.url, "params": c.params}))
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/twilio_sign.py");
    let required = std::env::var("CALLBRIDGE_REQUIRE_TWILIO_PY").is_ok_and(|v| v == "1");
    let child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if !required => {
            eprintln!("skipped: no python3 ({e})");
            return None;
        }
        Err(e) => panic!("python3: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "twilio_sign.py: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if let Some(err) = answer["error"].as_str() {
        assert!(!required, "{err} (pip install twilio)");
        eprintln!("skipped: {err}");
        return None;
    }
    Some(
        answer["signatures"]
            .as_array()
            .expect("signatures")
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect(),
    )
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A call's webhook parameters, with Unicode and a repeated name.
fn voice_params(n: u128, status: &str) -> Vec<(String, String)> {
    let call_sid = sid("CA", n);
    pairs(&[
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", &call_sid),
        ("CallStatus", status),
        ("CallerName", "山田 太郎"),
        ("Direction", "inbound"),
        ("From", "+819012345678"),
        ("FromCity", "東京"),
        ("To", "+81501234567"),
        ("Tag", "b"),
        ("Tag", "a"),
        ("Tag", "b"),
    ])
}

/// POSTs `params` form-encoded to `target` with `signature` (none: no header); the status.
async fn post(proxy: &Proxy, target: &str, params: &[(String, String)], sig: Option<&str>) -> u16 {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(s) = sig {
        headers.push(("X-Twilio-Signature", s));
    }
    http(
        proxy.addr,
        "POST",
        target,
        &headers,
        form_encode(params).as_bytes(),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbridge_accepts_exactly_what_twilios_validator_signs() {
    let mock = common::mock(|_| {}).await;
    let url = mock.url();
    let proxy = Proxy::spawn(&[
        ("OPENAI_REALTIME_URL", url.as_str()),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_AUTH_TOKEN_SECONDARY", SECONDARY),
        ("PUBLIC_HOST", HOST),
    ]);
    let voice = format!("https://{HOST}/api/twilio/voice");
    let status = format!("https://{HOST}/api/twilio/status");
    let after_target = "/api/twilio/after-stream/c_7f3a9e?reason=hangup&n=2";
    let after = format!("https://{HOST}{after_target}");
    let webhook = voice_params(1, "ringing");
    let mut changed = webhook.clone();
    changed[6].1 = "+819099999999".into();
    let mut added = webhook.clone();
    added.push(("Extra".into(), "x".into()));
    let cases = [
        (
            ToSign {
                token: TOKEN,
                url: voice.clone(),
                params: webhook.clone(),
            },
            "/api/twilio/voice",
            &webhook,
            200,
            "the voice webhook",
        ),
        (
            ToSign {
                token: SECONDARY,
                url: voice.clone(),
                params: webhook.clone(),
            },
            "/api/twilio/voice",
            &webhook,
            200,
            "the secondary token (rotation)",
        ),
        (
            ToSign {
                token: TOKEN,
                url: format!("https://{HOST}:443/api/twilio/voice"),
                params: webhook.clone(),
            },
            "/api/twilio/voice",
            &webhook,
            200,
            "the URL with :443",
        ),
        (
            ToSign {
                token: TOKEN,
                url: status.clone(),
                params: voice_params(2, "completed"),
            },
            "/api/twilio/status",
            &voice_params(2, "completed"),
            204,
            "the status callback",
        ),
        (
            ToSign {
                token: TOKEN,
                url: after.clone(),
                params: voice_params(3, "in-progress"),
            },
            after_target,
            &voice_params(3, "in-progress"),
            200,
            "after-stream with a query string",
        ),
        (
            ToSign {
                token: TOKEN,
                url: voice.clone(),
                params: webhook.clone(),
            },
            "/api/twilio/voice",
            &changed,
            403,
            "a changed parameter",
        ),
        (
            ToSign {
                token: TOKEN,
                url: voice.clone(),
                params: webhook.clone(),
            },
            "/api/twilio/voice",
            &added,
            403,
            "an added parameter",
        ),
        (
            ToSign {
                token: TOKEN,
                url: "https://evil.example.com/api/twilio/voice".to_owned(),
                params: webhook.clone(),
            },
            "/api/twilio/voice",
            &webhook,
            403,
            "another host",
        ),
        (
            ToSign {
                token: TOKEN,
                url: format!("http://{HOST}/api/twilio/voice"),
                params: webhook.clone(),
            },
            "/api/twilio/voice",
            &webhook,
            403,
            "http://",
        ),
        (
            ToSign {
                token: "another-accounts-token",
                url: voice.clone(),
                params: webhook.clone(),
            },
            "/api/twilio/voice",
            &webhook,
            403,
            "another token",
        ),
        (
            ToSign {
                token: TOKEN,
                url: format!("{after}&x=1"),
                params: voice_params(3, "in-progress"),
            },
            after_target,
            &voice_params(3, "in-progress"),
            403,
            "a query string that differs",
        ),
    ];
    let to_sign: Vec<ToSign<'_>> = cases
        .iter()
        .map(|(s, ..)| ToSign {
            token: s.token,
            url: s.url.clone(),
            params: s.params.clone(),
        })
        .collect();
    let Some(sigs) = twilio_signatures(&to_sign) else {
        return;
    };
    for ((_, target, sent, expected, what), sig) in cases.iter().zip(&sigs) {
        let got = post(&proxy, target, sent, Some(sig)).await;
        assert_eq!(got, *expected, "{what}: log:\n{}", proxy.log());
    }
    assert_eq!(
        post(&proxy, "/api/twilio/voice", &webhook, None).await,
        403,
        "a missing header"
    );

    // The upgrade: the stream URL of a call, signed by Twilio's package in each form.
    let mut streams = Vec::new();
    for n in 10..16u128 {
        let params = voice_params(n, "ringing");
        let sig = &twilio_signatures(&[ToSign {
            token: TOKEN,
            url: voice.clone(),
            params: params.clone(),
        }])
        .unwrap()[0];
        let resp = http(
            proxy.addr,
            "POST",
            "/api/twilio/voice",
            &[("X-Twilio-Signature", sig.as_str())],
            form_encode(&params).as_bytes(),
        )
        .await;
        let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).expect("TwiML");
        streams.push(twiml.stream().expect("a stream").clone());
    }
    let forms = [
        ("wss://{h}{p}", TOKEN, true),
        ("wss://{h}:443{p}", TOKEN, true),
        ("https://{h}{p}", TOKEN, true),
        ("wss://{h}{p}", SECONDARY, true),
        ("wss://evil.example.com{p}", TOKEN, false),
        ("wss://{h}{p}", "another-accounts-token", false),
    ];
    let to_sign: Vec<ToSign<'_>> = forms
        .iter()
        .zip(&streams)
        .map(|((form, token, _), s)| ToSign {
            token,
            url: form.replace("{h}", HOST).replace("{p}", &s.path),
            params: vec![],
        })
        .collect();
    let sigs = twilio_signatures(&to_sign).unwrap();
    for (((form, _, ok), s), sig) in forms.iter().zip(&streams).zip(&sigs) {
        let got = RawStream::connect(proxy.addr, &s.path, &[("x-twilio-signature", sig)]).await;
        match ok {
            true => assert!(got.is_ok(), "{form}: {:?}", got.err()),
            false => assert_eq!(got.err(), Some(403), "{form}"),
        }
    }
}
