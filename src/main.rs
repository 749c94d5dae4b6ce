//! `callbridge`: the command line. Thin: parse arguments, set up logging, call the library.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use callbridge::config::ServeArgs;
use callbridge::openai::mock::server::{MockServer, MockServerConfig};
use callbridge::runtime::Server;

/// callbridge: a Twilio Media Streams ⇄ OpenAI Realtime edge proxy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log filter (`info`, `debug`, `callbridge=debug,warn`, …); RUST_LOG also works.
    #[arg(long, global = true, env = "LOG_LEVEL", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Twilio webhook and media streams.
    Serve(Box<ServeArgs>),
    /// Run the scripted mock OpenAI Realtime server (for tests, demos and load tests).
    MockOpenai(MockArgs),
    /// Run one whole simulated call through the real proxy against the bundled mock.
    Demo,
    /// Agents in the store: list, get, put FILE, delete ID.
    Agents(callbridge::admin_cli::AgentsArgs),
    /// Number routes: list, put NUMBER AGENT, delete NUMBER.
    Numbers(callbridge::admin_cli::NumbersArgs),
    /// Call records: list [filters], show CALLSID [--json].
    Calls(callbridge::admin_cli::CallsArgs),
    /// The store itself: migrate --from-sled DIR.
    Store(callbridge::admin_cli::StoreArgs),
}

/// Settings of `callbridge mock-openai`.
#[derive(clap::Args)]
struct MockArgs {
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

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own report; keep the proxy's logs to warnings unless asked.
    let log = match (&cli.command, cli.log.as_str()) {
        (Command::Demo, "info") => "warn",
        (_, log) => log,
    };
    init_logging(log);
    // The store commands are synchronous and need no runtime.
    let command = match cli.command {
        Command::Agents(a) => return callbridge::admin_cli::agents(a),
        Command::Numbers(a) => return callbridge::admin_cli::numbers(a),
        Command::Calls(a) => return callbridge::admin_cli::calls(a),
        Command::Store(a) => return callbridge::admin_cli::store(a),
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::MockOpenai(args) => runtime.block_on(mock_openai(args)),
        Command::Demo => runtime.block_on(demo()),
        Command::Agents(_) | Command::Numbers(_) | Command::Calls(_) | Command::Store(_) => {
            unreachable!("handled above")
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    // Two sockets per call: lift the open-file soft limit to the hard one before accepting.
    match callbridge::limits::raise_nofile_limit() {
        Ok(l) => tracing::info!(
            before = l.before,
            now = l.now,
            hard = l.hard,
            "RLIMIT_NOFILE"
        ),
        Err(e) => tracing::warn!("could not raise RLIMIT_NOFILE: {e}"),
    }
    let realtime = cfg.use_openai_realtime;
    let url = format!(
        "{}://{}:{}{}",
        if cfg.openai_url.tls { "wss" } else { "ws" },
        cfg.openai_url.host,
        cfg.openai_url.port,
        cfg.openai_url.path_and_query
    );
    let server = Server::start(cfg).await?;
    tracing::info!(addr = %server.local_addr, realtime, openai = %url, "callbridge listening");
    // Tests and scripts read this line to find the port.
    println!("listening on {}", server.local_addr);
    shutdown_signal().await;
    tracing::info!(
        active_calls = server.app.active_calls(),
        "shutting down: no new calls, waiting for active ones (30 s at most)"
    );
    server.stop(Duration::from_secs(30)).await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

async fn mock_openai(args: MockArgs) -> anyhow::Result<()> {
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
        cfg.tls = Some(callbridge::openai::mock::server::tls_config(
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
    shutdown_signal().await;
    Ok(())
}

async fn demo() -> anyhow::Result<()> {
    let outcome = callbridge::demo::run().await?;
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
