//! `callbridge`: the command line. Thin: parse arguments, set up logging, call the library.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use callbridge::config::ServeArgs;
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
    Serve(ServeArgs),
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    let realtime = cfg.use_openai_realtime;
    let url = format!("{}://{}:{}{}", if cfg.openai_url.tls { "wss" } else { "ws" }, cfg.openai_url.host, cfg.openai_url.port, cfg.openai_url.path_and_query);
    let server = Server::start(cfg).await?;
    tracing::info!(addr = %server.local_addr, realtime, openai = %url, "callbridge listening");
    // Tests and scripts read this line to find the port.
    println!("listening on {}", server.local_addr);
    shutdown_signal().await;
    tracing::info!(active_calls = server.app.active_calls(), "shutting down: no new calls, waiting for active ones (30 s at most)");
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
