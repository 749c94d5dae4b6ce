//! `callbridge demo`: one whole call through the real proxy, with no keys and nothing to set up.
//!
//! ```text
//!  simulated caller ──webhook, Media Stream──▶ callbridge (the real server) ──▶ mock OpenAI
//!   (Twilio's side: 20 ms frames,                                             (energy VAD,
//!    playout, marks, clear)                                                    scripted replies)
//! ```
//!
//! The caller says a sentence, listens to the answer, interrupts it with a second sentence, and
//! listens to the second answer. The demo prints the conversation and the measured latencies,
//! and checks the barge-in: a `clear` reached the caller and the truncate's `audio_end_ms` is
//! within [`TRUNCATE_TOLERANCE_MS`] of what the caller really played.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::Value;

use crate::mock::server::{MockServer, MockServerConfig, SessionRecord};
use crate::sim::caller::{run_call, CallOutcome, CallReport, CallerConfig};
use crate::sim::script::{Clip, Script, Segment};
use callbridge::config::ServeArgs;
use callbridge::runtime::Server;

/// Largest accepted difference between the truncate's `audio_end_ms` and what the simulated
/// caller really played of the item (the issue's bound for loopback).
pub const TRUNCATE_TOLERANCE_MS: i64 = 40;

/// Auth token the demo's simulated Twilio signs with (the proxy checks it like the real one).
const DEMO_AUTH_TOKEN: &str = "demo-auth-token-0123456789abcdef";

/// The demo's `PUBLIC_HOST`: the simulated Twilio connects to the proxy's loopback address but
/// names and signs this host, as through a load balancer.
const DEMO_PUBLIC_HOST: &str = "demo.callbridge.invalid";

/// What the demo measured; also used by tests.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The simulated caller's report.
    pub report: CallReport,
    /// The mock's record of the OpenAI session.
    pub session: SessionRecord,
    /// The printed summary.
    pub text: String,
    /// Problems found (empty: success).
    pub problems: Vec<String>,
}

#[derive(Parser)]
struct DemoServeArgs {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The caller's script: hello, listen, interrupt the answer, listen, hang up (~10.5 s).
pub fn demo_script() -> Script {
    let hello = Clip::HELLO_EN.duration_ms();
    // The answer starts ~0.6 s after the caller stops (500 ms VAD silence + model latency);
    // interrupt it 1.3 s into its playout.
    let barge_in_at = hello + 1_900;
    Script::new(vec![
        Segment::Speak(Clip::HELLO_EN),
        Segment::BargeInAt {
            at_ms: barge_in_at,
            clip: Clip::WAIT_EN,
        },
        Segment::Silence { ms: 4_600 },
    ])
    .expect("the demo script is valid")
}

/// Starts the mock and the proxy on loopback, places one call, and checks it.
pub async fn run() -> anyhow::Result<DemoOutcome> {
    let mut mock_cfg = MockServerConfig {
        self_check: true,
        ..MockServerConfig::default()
    };
    mock_cfg.session.response_audio_ms = 3_500;
    let mock = MockServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), mock_cfg)
        .await
        .context("starting the mock OpenAI server")?;
    // The demo's store lives in a fresh temporary directory, removed at the end.
    let data_dir = std::env::temp_dir().join(format!(
        "callbridge-demo-{}-{}",
        std::process::id(),
        callbridge::store::unix_ms()
    ));
    let data_dir_arg = data_dir.display().to_string();
    let args = DemoServeArgs::try_parse_from([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--openai-url",
        &mock.url(),
        "--openai-api-key",
        "sk-demo-mock-key",
        "--twilio-auth-token",
        DEMO_AUTH_TOKEN,
        "--public-host",
        DEMO_PUBLIC_HOST,
        "--stream-secret",
        "demo-stream-secret-0123456789abcdef",
        "--use-openai-realtime",
        "true",
        "--data-dir",
        &data_dir_arg,
    ])
    .context("demo arguments")?;
    let cfg = args.serve.into_config()?;
    let server = Server::start(cfg).await.context("starting callbridge")?;

    let mut caller = CallerConfig::new(server.local_addr, 1, demo_script());
    caller.auth_token = Some(DEMO_AUTH_TOKEN.to_owned());
    caller.public_host = Some(DEMO_PUBLIC_HOST.to_owned());
    let report = run_call(caller)
        .await
        .context("running the simulated call")?;
    // Let the proxy close the OpenAI leg and the mock record it.
    let session = wait_for_session_end(&mock).await?;
    server.stop(Duration::from_secs(2)).await;
    mock.stop();
    let _ = std::fs::remove_dir_all(&data_dir);

    let problems = check(&report, &session);
    let text = summary(&report, &session, &problems);
    Ok(DemoOutcome {
        report,
        session,
        text,
        problems,
    })
}

async fn wait_for_session_end(mock: &MockServer) -> anyhow::Result<SessionRecord> {
    for _ in 0..200 {
        if let Some(s) = mock.sessions().into_iter().find(|s| s.closed_at.is_some()) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match mock.sessions().into_iter().next() {
        Some(_) => bail!("the OpenAI session was not closed within 2 s of the call's end"),
        None => bail!("callbridge never connected to the mock OpenAI server"),
    }
}

/// Events of `ty` the mock sent.
fn sent_of<'a>(session: &'a SessionRecord, ty: &'a str) -> impl Iterator<Item = Value> + 'a {
    session
        .sent_events
        .iter()
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter(move |v| v["type"] == ty)
}

/// Truncate accuracy: `(item, audio_end_ms sent, ms the caller really played)` per barge-in.
pub fn truncate_accuracy(report: &CallReport, session: &SessionRecord) -> Vec<(String, i64, u64)> {
    let clears = report
        .stream
        .as_ref()
        .map(|s| s.clears.clone())
        .unwrap_or_default();
    session
        .stats
        .truncates
        .iter()
        .filter(|t| {
            t.audio_end_ms > 0
                || clears
                    .iter()
                    .any(|c| c.item_id.as_deref() == Some(&t.item_id))
        })
        .filter_map(|t| {
            let clear = clears
                .iter()
                .find(|c| c.item_id.as_deref() == Some(t.item_id.as_str()))?;
            Some((t.item_id.clone(), t.audio_end_ms, clear.item_played_ms))
        })
        .collect()
}

fn check(report: &CallReport, session: &SessionRecord) -> Vec<String> {
    let mut problems = Vec::new();
    if report.outcome != CallOutcome::Completed {
        problems.push(format!(
            "the call did not complete normally: {:?}",
            report.outcome
        ));
    }
    let Some(stream) = &report.stream else {
        problems.push("no media stream was opened".into());
        return problems;
    };
    if stream.clears.is_empty() {
        problems.push("the barge-in sent no clear to the caller".into());
    }
    let accuracy = truncate_accuracy(report, session);
    if accuracy.is_empty() {
        problems.push("no truncate matched a clear".into());
    }
    for (item, sent, played) in &accuracy {
        if (sent - *played as i64).abs() > TRUNCATE_TOLERANCE_MS {
            problems.push(format!(
                "truncate of {item}: audio_end_ms {sent} but the caller played {played} ms"
            ));
        }
    }
    if session.stats.truncates.iter().any(|t| !t.accepted) {
        problems.push("the mock refused a truncate".into());
    }
    for v in &stream.violations {
        problems.push(format!(
            "twilio protocol violation by callbridge: {:?} {}",
            v.kind, v.detail
        ));
    }
    for e in &session.stats.errors {
        problems.push(format!("the mock OpenAI answered an error: {e:?}"));
    }
    for v in &session.schema_violations {
        problems.push(format!("mock sent a schema-invalid event: {v}"));
    }
    problems
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn summary(report: &CallReport, session: &SessionRecord, problems: &[String]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "callbridge demo: one call through the real proxy against the mock OpenAI Realtime server\n");
    let _ = writeln!(t, "Conversation:");
    let users: Vec<String> = sent_of(
        session,
        "conversation.item.input_audio_transcription.completed",
    )
    .map(|v| v["transcript"].as_str().unwrap_or("").to_owned())
    .collect();
    let assistants: Vec<(String, String)> =
        sent_of(session, "response.output_audio_transcript.done")
            .map(|v| {
                (
                    v["item_id"].as_str().unwrap_or("").to_owned(),
                    v["transcript"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
    let truncated: Vec<(String, i64)> = session
        .stats
        .truncates
        .iter()
        .map(|x| (x.item_id.clone(), x.audio_end_ms))
        .collect();
    for (i, user) in users.iter().enumerate() {
        let _ = writeln!(t, "  caller:    {user}");
        if let Some((item, line)) = assistants.get(i) {
            match truncated.iter().find(|(id, _)| id == item) {
                Some((_, heard)) => {
                    let _ = writeln!(t, "  assistant: {line}  [interrupted after {heard} ms]");
                }
                None => {
                    let _ = writeln!(t, "  assistant: {line}");
                }
            }
        }
    }
    let _ = writeln!(
        t,
        "\nLatencies (measured by the simulated caller on one clock):"
    );
    let _ = writeln!(
        t,
        "  webhook answered in           {}",
        ms(report.webhook_latency)
    );
    if let Some(up) = report.upgrade_latency {
        let _ = writeln!(t, "  WebSocket upgrade in          {}", ms(up));
    }
    if let Some(stream) = &report.stream {
        for u in &stream.utterances {
            if let Some(first) = u.first_audio_after_end {
                let _ = writeln!(t, "  end of caller speech → first assistant audio: {} (includes 500 ms of VAD silence and the model's latency)", ms(first));
            }
            if let Some(clear) = u.clear_after_start {
                let _ = writeln!(t, "  start of barge-in speech → clear received:    {} (includes the VAD's detection)", ms(clear));
            }
        }
        let _ = writeln!(
            t,
            "  frames sent {}, assistant audio played {} ms, discarded by clear {} ms",
            stream.frames_sent,
            stream.played_ms_total,
            stream.discarded_bytes / 8
        );
    }
    for (item, sent, played) in truncate_accuracy(report, session) {
        let _ = writeln!(t, "  truncate {item}: audio_end_ms {sent}, caller really played {played} ms (error {} ms)", sent - played as i64);
    }
    if let Some(after) = &report.after_stream {
        let _ = writeln!(
            t,
            "\nAfter the stream Twilio fetched {} → {}",
            after.url,
            after.twiml.replace('\n', "")
        );
    }
    if problems.is_empty() {
        let _ = writeln!(
            t,
            "\nOK: the call completed, the barge-in cleared playout and truncated what was heard."
        );
    } else {
        let _ = writeln!(t, "\nPROBLEMS:");
        for p in problems {
            let _ = writeln!(t, "  - {p}");
        }
    }
    t
}
