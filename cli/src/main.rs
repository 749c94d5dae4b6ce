//! `callbridge`: the command line. Thin: parse arguments, set up logging, call the libraries.
//!
//! `serve` and the store commands come from the server library; `demo` and `mock-openai` from
//! the test kit, behind the default-on `demo` feature (without it, the binary carries no mock
//! and no `jsonschema`).

mod admin_cli;
#[cfg(feature = "demo")]
mod demo;
mod signals;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use callbridge::config::ServeArgs;
use callbridge::runtime::Server;
use signals::Signals;

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
    #[cfg(feature = "demo")]
    MockOpenai(demo::MockArgs),
    /// Run one whole simulated call through the real proxy against the bundled mock.
    #[cfg(feature = "demo")]
    Demo,
    /// Agents in the store: list, get, put FILE, delete ID.
    Agents(admin_cli::AgentsArgs),
    /// Number routes: list, put NUMBER AGENT, delete NUMBER.
    Numbers(admin_cli::NumbersArgs),
    /// Call records: list [filters], show CALLSID [--json].
    Calls(admin_cli::CallsArgs),
    /// The store itself: migrate --from-sled DIR.
    Store(admin_cli::StoreArgs),
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
    let mut cli = Cli::parse();
    // `serve` also reads ./.env when there is one; a variable already in the environment wins.
    // (Only ./.env: not a parent directory's, which would be a surprise.)
    let dotenv = std::path::Path::new(".env");
    let dotenv = match cli.command {
        Command::Serve(_) if dotenv.is_file() => {
            dotenvy::from_path(dotenv).context("reading ./.env")?;
            cli = Cli::parse();
            Some(dotenv)
        }
        _ => None,
    };
    // The demo prints its own report; keep the proxy's logs to warnings unless asked.
    let log = match (&cli.command, cli.log.as_str()) {
        #[cfg(feature = "demo")]
        (Command::Demo, "info") => "warn",
        (_, log) => log,
    };
    init_logging(log);
    if let Some(path) = dotenv {
        tracing::info!(path = %path.display(), "settings read from .env (the environment wins)");
    }
    // The store commands are synchronous and need no runtime.
    let command = match cli.command {
        Command::Agents(a) => return admin_cli::agents(a),
        Command::Numbers(a) => return admin_cli::numbers(a),
        Command::Calls(a) => return admin_cli::calls(a),
        Command::Store(a) => return admin_cli::store(a),
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        #[cfg(feature = "demo")]
        Command::MockOpenai(args) => runtime.block_on(demo::mock_openai(args)),
        #[cfg(feature = "demo")]
        Command::Demo => runtime.block_on(demo::demo()),
        Command::Agents(_) | Command::Numbers(_) | Command::Calls(_) | Command::Store(_) => {
            unreachable!("handled above")
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    // Two sockets per call: lift the open-file soft limit to the hard one before accepting, and
    // refuse to start when even the hard one is too low for MAX_CALLS.
    match callbridge::limits::raise_nofile_limit() {
        Ok(l) => {
            tracing::info!(
                before = l.before,
                now = l.now,
                hard = l.hard,
                "RLIMIT_NOFILE"
            );
            let pooled = cfg.openai_pool_max * cfg.workers;
            let needed =
                callbridge::limits::descriptors_needed(cfg.max_connections, cfg.max_calls, pooled);
            callbridge::limits::check_nofile(l.hard, needed).map_err(anyhow::Error::msg)?;
        }
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
    // Installed before the server starts: a signal that comes while it starts is a drain too.
    let mut signals = Signals::new().context("installing the signal handlers")?;
    let server = Server::start(cfg).await?;
    tracing::info!(addr = %server.local_addr, realtime, openai = %url, "callbridge listening");
    // Tests and scripts read this line to find the port.
    println!("listening on {}", server.local_addr);
    // SIGTERM or SIGINT drains (README "Deploying"); a second one ends the drain at once.
    signals.next().await;
    let drain = server.app.config().drain;
    tracing::info!(
        active_calls = server.app.active_calls(),
        accept_secs = drain.accept.as_secs_f64(),
        timeout_secs = drain.timeout.as_secs_f64(),
        "signal: draining (/readyz 503; calls in flight run on; a second signal exits at once)"
    );
    server
        .drain(async move {
            signals.next().await;
        })
        .await;
    tracing::info!("drained: exiting");
    Ok(())
}
