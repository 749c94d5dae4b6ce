//! `callbridge demo` and `callbridge mock-openai`: the test kit's demo scenario and mock OpenAI
//! Realtime server, on the command line.

use std::time::Duration;

use anyhow::Context as _;
use callbridge_testkit::mock::server::{MockServer, MockServerConfig};

use crate::signals::Signals;

/// Settings of `callbridge mock-openai`.
#[derive(clap::Args)]
pub(crate) struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: std::net::SocketAddr,
    /// Assistant audio per response, ms.
    #[arg(long, default_value_t = 3000)]
    response_audio_ms: u64,
    /// How much faster than real time audio is generated.
    #[arg(long, default_value_t = 4.0)]
    speedup: f64,
    /// Delay added to the handshake and to each frame the mock sends, ms (simulated network).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Validate every event the mock sends against the server schema.
    #[arg(long)]
    self_check: bool,
    /// Serve `wss://` with this PEM certificate chain (with --tls-key); point callbridge's
    /// OPENAI_EXTRA_CA_FILE at the CA that signed it.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

pub(crate) async fn mock_openai(args: MockArgs) -> anyhow::Result<()> {
    let mut cfg = MockServerConfig {
        self_check: args.self_check,
        latency: Duration::from_millis(args.latency_ms),
        ..MockServerConfig::default()
    };
    cfg.session.response_audio_ms = args.response_audio_ms;
    cfg.session.speedup = args.speedup;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        cfg.tls = Some(callbridge_testkit::mock::server::tls_config(
            &read(cert)?,
            &read(key)?,
        )?);
    }
    let mock = MockServer::start(args.listen, cfg)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %mock.addr, "mock OpenAI Realtime listening");
    println!("listening on {}", mock.addr);
    println!(
        "point callbridge at it: OPENAI_REALTIME_URL={} OPENAI_REALTIME_API_KEY=sk-mock{}",
        mock.url(),
        if args.tls_cert.is_some() {
            " OPENAI_EXTRA_CA_FILE=<the CA of --tls-cert>"
        } else {
            ""
        }
    );
    Signals::new()
        .context("installing the signal handlers")?
        .next()
        .await;
    Ok(())
}

pub(crate) async fn demo() -> anyhow::Result<()> {
    let outcome = callbridge_testkit::demo::run().await?;
    print!("{}", outcome.text);
    if outcome.problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "the demo call did not go as it should ({} problem(s) above)",
            outcome.problems.len()
        )
    }
}
