//! The typed configuration of `callbridge serve`: environment variables and flags (a flag wins),
//! validated at start with messages that say what to set.
//!
//! Names follow the original Node backend where one existed (`PORT`, `USE_OPENAI_REALTIME`,
//! `OPENAI_REALTIME_API_KEY`, `LOG_EVENT_TYPES`, …).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use callbridge_core::openai::session::{AgentSettings, TurnDetection};

/// The real Realtime endpoint; `{model}` is replaced by `OPENAI_REALTIME_MODEL`.
pub const DEFAULT_OPENAI_URL: &str = "wss://api.openai.com/v1/realtime?model={model}";

/// OpenAI event types logged at info level when `LOG_EVENT_TYPES` is not set: the ones that
/// tell the story of a call without the per-frame audio events.
pub const DEFAULT_LOG_EVENT_TYPES: &str = "error,session.created,session.updated,input_audio_buffer.speech_started,\
input_audio_buffer.speech_stopped,input_audio_buffer.committed,response.done,conversation.item.truncated";

/// Default of `STREAM_RESERVE_SECS`: how long a minted stream holds a call slot before its
/// upgrade arrives. Twilio opens the stream within a second of our TwiML (milliseconds on
/// loopback; across the internet, hundreds of ms); 5 s covers a slow Twilio edge and a retried
/// handshake, and bounds how long a stream that landed on another instance holds a phantom slot.
pub const DEFAULT_STREAM_RESERVE_SECS: f64 = 5.0;

/// Default of `WRITE_STALL_TIMEOUT_SECS`: a leg with pending output and no send progress for this
/// long is a vanished peer.
pub const DEFAULT_WRITE_STALL_TIMEOUT_SECS: f64 = 10.0;

/// Settings of `callbridge serve` (also used by `demo`).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides PORT's 0.0.0.0:PORT).
    #[arg(long, env = "LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Port to listen on, on all interfaces.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Bridge calls to OpenAI Realtime; `false` answers every call with the legacy conference.
    #[arg(long, env = "USE_OPENAI_REALTIME", default_value_t = true, action = clap::ArgAction::Set)]
    pub use_openai_realtime: bool,
    /// OpenAI API key (also read from OPENAI_API_KEY).
    #[arg(long, env = "OPENAI_REALTIME_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// Realtime model.
    #[arg(long, env = "OPENAI_REALTIME_MODEL", default_value = "gpt-realtime")]
    pub openai_model: String,
    /// Realtime WebSocket URL (`ws://` allowed for a local mock); `{model}` is substituted, and a
    /// URL without a `model` query parameter gets `model=OPENAI_REALTIME_MODEL` appended.
    #[arg(long, env = "OPENAI_REALTIME_URL", default_value = DEFAULT_OPENAI_URL)]
    pub openai_url: String,
    /// Extra CA certificates (PEM) trusted for the OpenAI connection, besides the webpki roots.
    #[arg(long, env = "OPENAI_EXTRA_CA_FILE")]
    pub openai_extra_ca_file: Option<PathBuf>,
    /// Seconds allowed for TCP + TLS + WebSocket handshake to OpenAI.
    #[arg(long, env = "OPENAI_CONNECT_TIMEOUT_SECS", default_value_t = 5.0)]
    pub openai_connect_timeout_secs: f64,
    /// Seconds from the Twilio upgrade until `session.updated` must have arrived.
    #[arg(long, env = "OPENAI_SESSION_TIMEOUT_SECS", default_value_t = 10.0)]
    pub openai_session_timeout_secs: f64,
    /// Public host name Twilio reaches us at: every stream URL and every signed URL is built from
    /// it (required when signatures are checked; unsigned, the Host header stands in).
    #[arg(long, env = "PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Twilio auth token: webhook and upgrade signatures are checked with it. Required unless
    /// ALLOW_UNSIGNED_WEBHOOKS=true.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
    /// A second auth token also accepted, for rotating the primary one.
    #[arg(long, env = "TWILIO_AUTH_TOKEN_SECONDARY", hide_env_values = true)]
    pub twilio_auth_token_secondary: Option<String>,
    /// Serve without TWILIO_AUTH_TOKEN: nothing is authenticated, anyone who reaches the port can
    /// open Realtime sessions billed to you. For local tests and demos only.
    #[arg(long, env = "ALLOW_UNSIGNED_WEBHOOKS")]
    pub allow_unsigned_webhooks: bool,
    /// Enforce the signature of the media stream's WebSocket upgrade (403 before 101 when it does
    /// not verify). `false`: only the signed stream id and the start token are checked.
    #[arg(long, env = "TWILIO_VERIFY_UPGRADE", default_value_t = true, action = clap::ArgAction::Set)]
    pub twilio_verify_upgrade: bool,
    /// Secret that signs stream URLs; share it between instances. Random per process when unset.
    #[arg(long, env = "STREAM_SECRET", hide_env_values = true)]
    pub stream_secret: Option<String>,
    /// Seconds a minted stream URL stays valid.
    #[arg(long, env = "STREAM_TTL_SECS", default_value_t = 120)]
    pub stream_ttl_secs: u64,
    /// Most concurrent calls; past it callers get the legacy conference.
    #[arg(long, env = "MAX_CALLS", default_value_t = 2000)]
    pub max_calls: usize,
    /// Seconds a stream minted by the webhook holds a call slot while its upgrade has not come.
    #[arg(long, env = "STREAM_RESERVE_SECS", default_value_t = DEFAULT_STREAM_RESERVE_SECS)]
    pub stream_reserve_secs: f64,
    /// Most open HTTP connections (calls' streams included); past it a new connection is closed
    /// at once. Default: 2 × MAX_CALLS + 256.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Conference room of the legacy path; `{CallSid}` is replaced by the call's sid.
    #[arg(long, env = "CONFERENCE_NAME", default_value = "support-{CallSid}")]
    pub conference_name: String,
    /// Text said before joining the conference (empty: say nothing).
    #[arg(long, env = "FALLBACK_SAY", default_value = "担当者におつなぎします。")]
    pub fallback_say: String,
    /// Language of FALLBACK_SAY.
    #[arg(long, env = "FALLBACK_SAY_LANGUAGE", default_value = "ja-JP")]
    pub fallback_say_language: String,
    /// OpenAI event types logged at info, comma-separated (`all` logs every type).
    #[arg(long, env = "LOG_EVENT_TYPES", default_value = DEFAULT_LOG_EVENT_TYPES)]
    pub log_event_types: String,
    /// Directory of the embedded store.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// How often the store writer makes buffered writes durable, ms (1–200): the most a crash
    /// can lose (README "Storage").
    #[arg(long, env = "STORE_FLUSH_MS", default_value_t = crate::store::DEFAULT_FLUSH_MS)]
    pub store_flush_ms: u64,
    /// MiB of memory the store may use to cache what it wrote or read (the engine's page cache).
    #[arg(long, env = "STORE_CACHE_MB", default_value_t = crate::store::DEFAULT_CACHE_MB)]
    pub store_cache_mb: u64,
    /// How long call records are kept: `30d`, `12h`, `90m`, `45s`; `0` keeps everything.
    #[arg(long, env = "RETENTION", default_value = "30d")]
    pub retention: String,
    /// Delete the oldest calls early once the store holds this much data (`20G`, `512M`, bytes;
    /// `0`: no cap).
    #[arg(long, env = "STORE_MAX_BYTES", default_value = "0")]
    pub store_max_bytes: String,
    /// The store's engine: `redb` (default) or `sled` (the engine before issue 13, kept for
    /// comparisons); `fjall` in builds with the `engine-fjall` feature.
    #[arg(long, env = "STORE_ENGINE", default_value = "redb")]
    pub store_engine: String,
    /// Bearer token of the admin API (`/api/admin/…`); unset: the admin API answers 404.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Seconds without any frame from Twilio after which a stream is taken for dead.
    #[arg(long, env = "TWILIO_IDLE_TIMEOUT_SECS", default_value_t = 10.0)]
    pub twilio_idle_timeout_secs: f64,
    /// Seconds a call's output to a peer (Twilio or OpenAI) may make no progress before the
    /// peer counts as gone and the call ends.
    #[arg(long, env = "WRITE_STALL_TIMEOUT_SECS", default_value_t = DEFAULT_WRITE_STALL_TIMEOUT_SECS)]
    pub write_stall_timeout_secs: f64,
    /// Seconds to wait for a complete HTTP request head and body.
    #[arg(long, env = "HTTP_READ_TIMEOUT_SECS", default_value_t = 10.0)]
    pub http_read_timeout_secs: f64,
    /// Seconds after SIGTERM during which media-stream upgrades are still bridged (their TwiML
    /// is out, and load balancers take time to notice /readyz); later ones are accepted and
    /// closed at once, so the caller reaches the fallback.
    #[arg(long, env = "DRAIN_ACCEPT_SECS", default_value_t = 10.0)]
    pub drain_accept_secs: f64,
    /// Seconds calls in flight may run on after SIGTERM; past it they are closed (the caller
    /// reaches the fallback, the record says `drained`).
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 900.0)]
    pub drain_timeout_secs: f64,
    /// Seconds the HTTP listener stays open after the last call of a drain ended, for Twilio's
    /// after-stream and status callbacks.
    #[arg(long, env = "DRAIN_HTTP_GRACE_SECS", default_value_t = 5.0)]
    pub drain_http_grace_secs: f64,
    /// Seconds a peer may take to read one HTTP response before the connection is dropped.
    #[arg(long, env = "HTTP_WRITE_TIMEOUT_SECS", default_value_t = 10.0)]
    pub http_write_timeout_secs: f64,
    /// Log what the caller and the assistant said (at debug level). Off: transcripts go to the
    /// store only, never to the log.
    #[arg(long, env = "LOG_TRANSCRIPTS")]
    pub log_transcripts: bool,
    /// Agent id announced in the stream parameters.
    #[arg(long, env = "AGENT_ID", default_value = "default")]
    pub agent_id: String,
    /// Agent voice.
    #[arg(long, env = "AGENT_VOICE", default_value = "marin")]
    pub agent_voice: String,
    /// Agent instructions (system prompt).
    #[arg(
        long,
        env = "AGENT_INSTRUCTIONS",
        default_value = "You are a friendly phone receptionist. Answer briefly and politely."
    )]
    pub agent_instructions: String,
    /// What the agent says first, if anything.
    #[arg(long, env = "AGENT_GREETING")]
    pub agent_greeting: Option<String>,
    /// Caller language (ISO-639-1, e.g. `ja`) for transcription.
    #[arg(long, env = "AGENT_LANGUAGE")]
    pub agent_language: Option<String>,
    /// Input transcription model (empty: no caller transcripts).
    #[arg(long, env = "TRANSCRIPTION_MODEL", default_value = "gpt-4o-transcribe")]
    pub transcription_model: String,
    /// Server VAD threshold (0.0–1.0).
    #[arg(long, env = "VAD_THRESHOLD", default_value_t = 0.5)]
    pub vad_threshold: f64,
    /// Server VAD prefix padding, ms.
    #[arg(long, env = "VAD_PREFIX_PADDING_MS", default_value_t = 300)]
    pub vad_prefix_padding_ms: u32,
    /// Server VAD silence that ends a turn, ms.
    #[arg(long, env = "VAD_SILENCE_DURATION_MS", default_value_t = 500)]
    pub vad_silence_duration_ms: u32,
    /// JSON file with a list of OpenAI function tool definitions.
    #[arg(long, env = "AGENT_TOOLS_FILE")]
    pub agent_tools_file: Option<PathBuf>,
    /// IO driver: `epoll` (tokio), `uring` (io_uring, thread per core), or `auto` (io_uring when
    /// this machine allows it, else epoll; the log says which and why). epoll is the default
    /// while it costs less CPU per frame (README, Runtimes).
    #[arg(long, env = "RUNTIME", value_enum, default_value_t = RuntimeChoice::Epoll)]
    pub runtime: RuntimeChoice,
    /// Worker threads of the io_uring driver, each with its own ring and listening socket
    /// (default: the number of cores).
    #[arg(long, env = "WORKERS")]
    pub workers: Option<usize>,
    /// Most pre-warmed OpenAI connections kept per worker (0: no pool, every call connects).
    #[arg(long, env = "OPENAI_POOL_MAX", default_value_t = 0)]
    pub openai_pool_max: usize,
    /// Seconds a pre-warmed connection may sit idle before it is closed (keep it under the
    /// server's own idle and session limits).
    #[arg(long, env = "OPENAI_POOL_MAX_IDLE_SECS", default_value_t = 300.0)]
    pub openai_pool_max_idle_secs: f64,
}

/// Which IO driver serves (`RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeChoice {
    /// io_uring (tokio-uring), one thread and ring per core; refuses to start without io_uring.
    Uring,
    /// tokio's multi-threaded runtime (epoll).
    Epoll,
    /// io_uring if a probe at start succeeds, else epoll.
    Auto,
}

/// The bearer token sent to a loopback OpenAI endpoint (a mock) when no key is configured.
pub const LOCAL_PLACEHOLDER_API_KEY: &str = "sk-callbridge-local-placeholder";

/// `url` with a `model` query parameter: the one it has, else `model` appended. The Realtime
/// endpoint selects the model from the URL (protocol.md 5.1), so a URL configured without it
/// (`ws://127.0.0.1:9100/v1/realtime`) would be refused by the server.
fn with_model_param(url: &str, model: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q);
    let has_model =
        query.is_some_and(|q| q.split('&').any(|kv| kv.split('=').next() == Some("model")));
    if has_model {
        return url.to_owned();
    }
    let sep = match query {
        None => "?",
        Some("") => "",
        Some(_) => "&",
    };
    let model = callbridge_core::wire::form::percent_encode(model);
    format!("{url}{sep}model={model}")
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The real OpenAI endpoint needs a key.
    #[error(
        "no OpenAI API key: set OPENAI_REALTIME_API_KEY (or OPENAI_API_KEY), or point OPENAI_REALTIME_URL \
         at a local mock (ws://127.0.0.1:PORT/...), or set USE_OPENAI_REALTIME=false"
    )]
    MissingApiKey,
    /// The OpenAI URL is not usable.
    #[error("OPENAI_REALTIME_URL {url:?}: {why}")]
    BadOpenAiUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A value is out of range.
    #[error("{name}: {why}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        why: String,
    },
    /// No `TWILIO_AUTH_TOKEN`, and running unsigned was not asked for.
    #[error(
        "TWILIO_AUTH_TOKEN is not set: without it anyone who reaches this port can place calls billed to \
         you. Set TWILIO_AUTH_TOKEN (and PUBLIC_HOST), or, for local tests only, \
         ALLOW_UNSIGNED_WEBHOOKS=true (flag --allow-unsigned-webhooks)"
    )]
    Unsigned,
    /// The tools file cannot be used.
    #[error("AGENT_TOOLS_FILE {path}: {why}")]
    ToolsFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// TLS (`wss`) or not.
    pub tls: bool,
    /// Host name or address (no brackets for IPv6).
    pub host: String,
    /// Port (default 443 / 80).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

impl WsUrl {
    /// Parses `ws://host[:port]/path?query` or `wss://…`.
    pub fn parse(url: &str) -> Result<Self, &'static str> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err("must start with ws:// or wss://");
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path_and_query = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            let (h, after) = stripped.split_once(']').ok_or("unclosed [ in host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| "bad port")?,
                None if after.is_empty() => default_port,
                None => return Err("garbage after ]"),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| "bad port")?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err("no host");
        }
        Ok(WsUrl {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// The `Host` header value (port only when not the default).
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Whether the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

/// How long each part of a drain may take (`DRAIN_*`; README "Deploying").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainConfig {
    /// Upgrades are still bridged this long after the signal.
    pub accept: Duration,
    /// Calls in flight run on at most this long.
    pub timeout: Duration,
    /// The listener stays open this long after the last call, for after-stream and callbacks.
    pub http_grace: Duration,
}

/// Shortest accepted `ADMIN_TOKEN`: 16 characters (with letters and digits, ~95 bits), beyond
/// guessing over the network.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// How Twilio's requests are authenticated (protocol.md section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioAuth {
    /// `X-Twilio-Signature` is required on every Twilio route and must verify under one of the
    /// tokens.
    Signed {
        /// Auth tokens, the primary first (`TWILIO_AUTH_TOKEN`, `TWILIO_AUTH_TOKEN_SECONDARY`).
        tokens: Vec<String>,
        /// The host Twilio reaches us at (`PUBLIC_HOST`): every URL we emit and every signed
        /// string is built from it, never from the request's `Host` header.
        public_host: String,
        /// Whether the upgrade's own signature is enforced (`TWILIO_VERIFY_UPGRADE`).
        verify_upgrade: bool,
    },
    /// `ALLOW_UNSIGNED_WEBHOOKS=true`: nothing is checked.
    Unsigned {
        /// `PUBLIC_HOST`, if set; else URLs are built from the request's `Host`.
        public_host: Option<String>,
    },
}

impl TwilioAuth {
    /// `PUBLIC_HOST`, when configured.
    pub fn public_host(&self) -> Option<&str> {
        match self {
            TwilioAuth::Signed { public_host, .. } => Some(public_host),
            TwilioAuth::Unsigned { public_host } => public_host.as_deref(),
        }
    }

    /// Whether signatures are checked.
    pub fn is_signed(&self) -> bool {
        matches!(self, TwilioAuth::Signed { .. })
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Realtime mode on.
    pub use_openai_realtime: bool,
    /// API key, if any.
    pub openai_api_key: Option<String>,
    /// Model.
    pub openai_model: String,
    /// Endpoint.
    pub openai_url: WsUrl,
    /// Extra CA file.
    pub openai_extra_ca_file: Option<PathBuf>,
    /// Connect timeout.
    pub openai_connect_timeout: Duration,
    /// Setup timeout (upgrade → session.updated).
    pub openai_session_timeout: Duration,
    /// How Twilio's requests are authenticated, and the public host URLs are built from.
    pub twilio: TwilioAuth,
    /// Stream URL secret (random when not configured).
    pub stream_secret: Vec<u8>,
    /// Whether `STREAM_SECRET` was configured (a random one is per process: instances refuse
    /// each other's streams).
    pub stream_secret_shared: bool,
    /// Stream URL lifetime.
    pub stream_ttl: Duration,
    /// Concurrent call bound.
    pub max_calls: usize,
    /// How long a minted stream reserves a call slot before its upgrade.
    pub stream_reserve: Duration,
    /// Open HTTP connection bound.
    pub max_connections: usize,
    /// Conference name template.
    pub conference_name: String,
    /// Fallback `<Say>` (language, text), if any.
    pub fallback_say: Option<(String, String)>,
    /// Event types to log.
    pub log_event_types: Arc<[String]>,
    /// Store directory.
    pub data_dir: PathBuf,
    /// Store flush interval (`STORE_FLUSH_MS`).
    pub store_flush: Duration,
    /// Store page cache size in bytes (`STORE_CACHE_MB`).
    pub store_cache_bytes: u64,
    /// Calls kept this long (`RETENTION`); `None`: forever.
    pub retention: Option<Duration>,
    /// Cap on the store's logical bytes (`STORE_MAX_BYTES`); `None`: no cap.
    pub store_max_bytes: Option<u64>,
    /// The store's engine (`STORE_ENGINE`).
    pub store_engine: crate::store::engine::EngineKind,
    /// Admin API token (`ADMIN_TOKEN`); `None` disables the admin API.
    pub admin_token: Option<String>,
    /// HTTP read timeout.
    pub http_read_timeout: Duration,
    /// HTTP response write timeout.
    pub http_write_timeout: Duration,
    /// How the instance drains on SIGTERM.
    pub drain: DrainConfig,
    /// Transcripts in the log at debug level (`LOG_TRANSCRIPTS`).
    pub log_transcripts: bool,
    /// A started Twilio stream silent for this long is dead.
    pub twilio_idle_timeout: Duration,
    /// A peer whose queued output makes no progress for this long is gone.
    pub write_stall_timeout: Duration,
    /// The agent (until the store provides agents).
    pub agent: Arc<AgentSettings>,
    /// IO driver choice.
    pub runtime: RuntimeChoice,
    /// io_uring worker threads (at least 1).
    pub workers: usize,
    /// Pre-warmed OpenAI connections per worker (0: off).
    pub openai_pool_max: usize,
    /// Idle age after which a pre-warmed connection is closed.
    pub openai_pool_max_idle: Duration,
}

impl ServeArgs {
    /// Validates the arguments into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let api_key = self
            .openai_api_key
            .clone()
            .or_else(|| std::env::var("OPENAI_API_KEY").ok())
            .filter(|k| !k.is_empty());
        let url_text = with_model_param(
            &self.openai_url.replace("{model}", &self.openai_model),
            &self.openai_model,
        );
        let openai_url = WsUrl::parse(&url_text).map_err(|why| ConfigError::BadOpenAiUrl {
            url: url_text.clone(),
            why,
        })?;
        if self.use_openai_realtime && api_key.is_none() && !openai_url.is_loopback() {
            return Err(ConfigError::MissingApiKey);
        }
        // A local endpoint without a key still gets an `Authorization` header: protocol.md 5.1
        // requires one on every upgrade, and a strict server refuses the upgrade without it.
        let api_key = api_key.or_else(|| {
            openai_url
                .is_loopback()
                .then(|| LOCAL_PLACEHOLDER_API_KEY.to_owned())
        });
        let agent = self.agent()?;
        agent.validate().map_err(|e| ConfigError::Invalid {
            name: "AGENT_*",
            why: e.to_string(),
        })?;
        let secs = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 3600.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(ConfigError::Invalid {
                    name,
                    why: format!("{v} is not a number of seconds in (0, 3600)"),
                })
            }
        };
        if self.max_calls == 0 {
            return Err(ConfigError::Invalid {
                name: "MAX_CALLS",
                why: "must be at least 1".into(),
            });
        }
        let twilio = self.twilio_auth()?;
        let admin_token = self.admin_token.clone().filter(|t| !t.is_empty());
        if admin_token
            .as_ref()
            .is_some_and(|t| t.chars().count() < MIN_ADMIN_TOKEN_LEN)
        {
            return Err(ConfigError::Invalid {
                name: "ADMIN_TOKEN",
                why: format!("use at least {MIN_ADMIN_TOKEN_LEN} characters"),
            });
        }
        let max_connections = self
            .max_connections
            .unwrap_or_else(|| default_max_connections(self.max_calls));
        if max_connections < self.max_calls {
            return Err(ConfigError::Invalid {
                name: "MAX_CONNECTIONS",
                why: format!(
                    "{max_connections} is below MAX_CALLS={}: every call holds a connection",
                    self.max_calls
                ),
            });
        }
        let stream_secret = match &self.stream_secret {
            Some(s) if s.len() >= 16 => s.as_bytes().to_vec(),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "STREAM_SECRET",
                    why: "use at least 16 characters".into(),
                })
            }
            None => {
                let mut key = vec![0u8; 32];
                getrandom::getrandom(&mut key).map_err(|e| ConfigError::Invalid {
                    name: "STREAM_SECRET",
                    why: e.to_string(),
                })?;
                key
            }
        };
        let workers = match self.workers {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    name: "WORKERS",
                    why: "must be at least 1".into(),
                })
            }
            Some(n) if n > 1024 => {
                return Err(ConfigError::Invalid {
                    name: "WORKERS",
                    why: format!("{n} threads is more than 1024"),
                })
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let log_event_types: Vec<String> = self
            .log_event_types
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Config {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port))),
            use_openai_realtime: self.use_openai_realtime,
            openai_api_key: api_key,
            openai_model: self.openai_model.clone(),
            openai_url,
            openai_extra_ca_file: self.openai_extra_ca_file.clone(),
            openai_connect_timeout: secs(
                "OPENAI_CONNECT_TIMEOUT_SECS",
                self.openai_connect_timeout_secs,
            )?,
            openai_session_timeout: secs(
                "OPENAI_SESSION_TIMEOUT_SECS",
                self.openai_session_timeout_secs,
            )?,
            twilio,
            stream_secret,
            stream_secret_shared: self.stream_secret.is_some(),
            stream_ttl: Duration::from_secs(self.stream_ttl_secs.max(1)),
            max_calls: self.max_calls,
            stream_reserve: secs("STREAM_RESERVE_SECS", self.stream_reserve_secs)?,
            max_connections,
            conference_name: self.conference_name.clone(),
            fallback_say: (!self.fallback_say.is_empty()).then(|| {
                (
                    self.fallback_say_language.clone(),
                    self.fallback_say.clone(),
                )
            }),
            log_event_types: Arc::from(log_event_types),
            data_dir: self.data_dir.clone(),
            store_flush: crate::store::flush_interval(self.store_flush_ms).map_err(|why| {
                ConfigError::Invalid {
                    name: "STORE_FLUSH_MS",
                    why,
                }
            })?,
            store_cache_bytes: crate::store::cache_bytes(self.store_cache_mb).map_err(|why| {
                ConfigError::Invalid {
                    name: "STORE_CACHE_MB",
                    why,
                }
            })?,
            retention: crate::store::parse_retention(&self.retention).map_err(|why| {
                ConfigError::Invalid {
                    name: "RETENTION",
                    why,
                }
            })?,
            store_max_bytes: crate::store::parse_max_bytes(&self.store_max_bytes).map_err(
                |why| ConfigError::Invalid {
                    name: "STORE_MAX_BYTES",
                    why,
                },
            )?,
            store_engine: crate::store::engine::EngineKind::parse(&self.store_engine).map_err(
                |why| ConfigError::Invalid {
                    name: "STORE_ENGINE",
                    why,
                },
            )?,
            admin_token,
            http_read_timeout: secs("HTTP_READ_TIMEOUT_SECS", self.http_read_timeout_secs)?,
            http_write_timeout: secs("HTTP_WRITE_TIMEOUT_SECS", self.http_write_timeout_secs)?,
            drain: self.drain()?,
            log_transcripts: self.log_transcripts,
            twilio_idle_timeout: secs("TWILIO_IDLE_TIMEOUT_SECS", self.twilio_idle_timeout_secs)?,
            write_stall_timeout: secs("WRITE_STALL_TIMEOUT_SECS", self.write_stall_timeout_secs)?,
            agent: Arc::new(agent),
            runtime: self.runtime,
            workers,
            openai_pool_max: if self.openai_pool_max > 1024 {
                return Err(ConfigError::Invalid {
                    name: "OPENAI_POOL_MAX",
                    why: format!(
                        "{} connections per worker is more than 1024",
                        self.openai_pool_max
                    ),
                });
            } else {
                self.openai_pool_max
            },
            openai_pool_max_idle: secs(
                "OPENAI_POOL_MAX_IDLE_SECS",
                self.openai_pool_max_idle_secs,
            )?,
        })
    }

    /// The drain's timings; the accept window cannot outlast the drain.
    fn drain(&self) -> Result<DrainConfig, ConfigError> {
        let drain = DrainConfig {
            accept: secs_or_zero("DRAIN_ACCEPT_SECS", self.drain_accept_secs)?,
            timeout: secs_or_zero("DRAIN_TIMEOUT_SECS", self.drain_timeout_secs)?,
            http_grace: secs_or_zero("DRAIN_HTTP_GRACE_SECS", self.drain_http_grace_secs)?,
        };
        if drain.accept > drain.timeout {
            return Err(ConfigError::Invalid {
                name: "DRAIN_ACCEPT_SECS",
                why: format!(
                    "{} s is longer than DRAIN_TIMEOUT_SECS ({} s): calls bridged in the window would be cut",
                    self.drain_accept_secs, self.drain_timeout_secs
                ),
            });
        }
        Ok(drain)
    }

    /// The Twilio authentication: signed with the configured tokens (then `PUBLIC_HOST` is
    /// required), or unsigned only when asked for explicitly.
    fn twilio_auth(&self) -> Result<TwilioAuth, ConfigError> {
        let nonempty = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        let public_host = public_host(self.public_host.as_deref())?;
        let (primary, secondary) = (
            nonempty(&self.twilio_auth_token),
            nonempty(&self.twilio_auth_token_secondary),
        );
        let Some(primary) = primary else {
            if secondary.is_some() {
                return Err(ConfigError::Invalid {
                    name: "TWILIO_AUTH_TOKEN_SECONDARY",
                    why:
                        "set only with TWILIO_AUTH_TOKEN (it is the token being rotated to or from)"
                            .into(),
                });
            }
            if !self.allow_unsigned_webhooks {
                return Err(ConfigError::Unsigned);
            }
            return Ok(TwilioAuth::Unsigned { public_host });
        };
        let Some(public_host) = public_host else {
            return Err(ConfigError::Invalid {
                name: "PUBLIC_HOST",
                why: "required with TWILIO_AUTH_TOKEN: signatures cover the URL Twilio requested, \
                      which must never be built from the request's Host header (set the host name \
                      Twilio reaches you at, e.g. bridge.example.com)"
                    .into(),
            });
        };
        Ok(TwilioAuth::Signed {
            tokens: std::iter::once(primary).chain(secondary).collect(),
            public_host,
            verify_upgrade: self.twilio_verify_upgrade,
        })
    }

    fn agent(&self) -> Result<AgentSettings, ConfigError> {
        let tools = match &self.agent_tools_file {
            None => Vec::new(),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ToolsFile {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
                serde_json::from_str::<Vec<serde_json::Value>>(&text).map_err(|e| {
                    ConfigError::ToolsFile {
                        path: shown,
                        why: format!("not a JSON list of tools: {e}"),
                    }
                })?
            }
        };
        Ok(AgentSettings {
            id: self.agent_id.clone(),
            voice: self.agent_voice.clone(),
            instructions: self.agent_instructions.clone(),
            greeting: self.agent_greeting.clone().filter(|g| !g.is_empty()),
            transcription_model: Some(self.transcription_model.clone()).filter(|m| !m.is_empty()),
            language: self.agent_language.clone().filter(|l| !l.is_empty()),
            turn_detection: TurnDetection {
                threshold: self.vad_threshold,
                prefix_padding_ms: self.vad_prefix_padding_ms,
                silence_duration_ms: self.vad_silence_duration_ms,
            },
            tools,
            speed: None,
            noise_reduction: Some("near_field".to_owned()),
        })
    }
}

/// A number of seconds in `[0, 1 day]` (a drain may be told to take no time, or a long time).
fn secs_or_zero(name: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && (0.0..=86_400.0).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError::Invalid {
            name,
            why: format!("{v} is not a number of seconds in [0, 86400]"),
        })
    }
}

/// `MAX_CONNECTIONS` when not set: every call holds one connection (its stream), webhooks and
/// status callbacks come and go beside them (about one per call start and end), and 256 more
/// leave room for admin, scrapes and probes.
pub fn default_max_connections(max_calls: usize) -> usize {
    max_calls.saturating_mul(2).saturating_add(256)
}

/// `PUBLIC_HOST` as the bare `host[:port]` the stream URLs and signature checks are built from.
///
/// A leading `https://` or `wss://` and a trailing `/` are tolerated and removed (a common way to
/// write it); anything else that cannot be a host (a path, a query, spaces, another scheme) is
/// refused at start: it would otherwise make every webhook fail (protocol.md 3.1).
fn public_host(value: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(raw) = value.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let host = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("wss://"))
        .unwrap_or(raw);
    let host = host.strip_suffix('/').unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        });
    if !ok {
        return Err(ConfigError::Invalid {
            name: "PUBLIC_HOST",
            why: format!("{raw:?} is not a host name (write it as bridge.example.com[:port])"),
        });
    }
    Ok(Some(host.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn public_host_tolerates_a_scheme_and_a_slash_and_refuses_paths() {
        assert_eq!(public_host(None).unwrap(), None);
        assert_eq!(public_host(Some(" ")).unwrap(), None);
        for ok in [
            "bridge.example.com",
            "https://bridge.example.com",
            "wss://bridge.example.com/",
            "bridge.example.com/",
        ] {
            assert_eq!(
                public_host(Some(ok)).unwrap().as_deref(),
                Some("bridge.example.com"),
                "{ok}"
            );
        }
        assert_eq!(
            public_host(Some("bridge.example.com:8443"))
                .unwrap()
                .as_deref(),
            Some("bridge.example.com:8443")
        );
        for bad in [
            "http://bridge.example.com",
            "bridge.example.com/api",
            "bridge.example.com?x=1",
            "bridge example.com",
            "https://",
        ] {
            let err = public_host(Some(bad)).unwrap_err();
            assert!(err.to_string().starts_with("PUBLIC_HOST: "), "{bad}: {err}");
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// Parses `args` as given.
    fn parse_exact(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["callbridge"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full)
            .expect("flags parse")
            .serve
            .into_config()
    }

    /// Parses `args`, unsigned unless they set a token (most tests are about something else).
    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = args.to_vec();
        if !args.iter().any(|a| a.starts_with("--twilio-auth-token")) {
            full.push("--allow-unsigned-webhooks");
        }
        parse_exact(&full)
    }

    const LOCAL: [&str; 2] = ["--openai-url", "ws://127.0.0.1:9/"];

    #[test]
    fn env_example_lists_every_setting_with_its_default() {
        use clap::CommandFactory;
        let text = include_str!("../.env.example");
        // `NAME=value` lines, commented out or not.
        let listed: std::collections::HashMap<&str, &str> = text
            .lines()
            .map(|l| l.trim_start_matches('#').trim_start())
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            })
            .collect();
        let mut settings = vec!["LOG_LEVEL"];
        let command = Cli::command();
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let name = env.to_str().unwrap();
            settings.push(name);
            let value = listed
                .get(name)
                .unwrap_or_else(|| panic!("{name} is missing from .env.example"));
            if let [default] = arg.get_default_values() {
                assert_eq!(
                    *value,
                    default.to_str().unwrap(),
                    "{name}: .env.example shows another default"
                );
            }
        }
        for name in listed.keys() {
            assert!(
                settings.contains(name),
                "{name} in .env.example is no setting"
            );
        }
    }

    #[test]
    fn serve_refuses_to_run_unsigned_unless_asked_and_says_how() {
        let err = parse_exact(&LOCAL).unwrap_err().to_string();
        assert!(
            err.contains("TWILIO_AUTH_TOKEN")
                && err.contains("ALLOW_UNSIGNED_WEBHOOKS")
                && err.contains("--allow-unsigned-webhooks"),
            "{err}"
        );
        let cfg = parse_exact(&[LOCAL[0], LOCAL[1], "--allow-unsigned-webhooks"]).unwrap();
        assert_eq!(cfg.twilio, TwilioAuth::Unsigned { public_host: None });
    }

    #[test]
    fn signatures_need_public_host_and_accept_a_secondary_token() {
        let err = parse(&[LOCAL[0], LOCAL[1], "--twilio-auth-token", "tok"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("PUBLIC_HOST: "), "{err}");
        let cfg = parse(&[
            LOCAL[0],
            LOCAL[1],
            "--twilio-auth-token",
            "tok1",
            "--twilio-auth-token-secondary",
            "tok2",
            "--public-host",
            "https://bridge.example.com/",
        ])
        .unwrap();
        assert_eq!(
            cfg.twilio,
            TwilioAuth::Signed {
                tokens: vec!["tok1".into(), "tok2".into()],
                public_host: "bridge.example.com".into(),
                verify_upgrade: true,
            }
        );
        let cfg = parse(&[
            LOCAL[0],
            LOCAL[1],
            "--twilio-auth-token",
            "tok1",
            "--public-host",
            "h",
            "--twilio-verify-upgrade",
            "false",
        ])
        .unwrap();
        assert!(matches!(
            cfg.twilio,
            TwilioAuth::Signed {
                verify_upgrade: false,
                ..
            }
        ));
        let err = parse(&[LOCAL[0], LOCAL[1], "--twilio-auth-token-secondary", "t"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("TWILIO_AUTH_TOKEN_SECONDARY: "), "{err}");
    }

    #[test]
    fn limits_default_from_max_calls_and_too_few_connections_are_refused() {
        let cfg = parse(&[LOCAL[0], LOCAL[1], "--max-calls", "10"]).unwrap();
        assert_eq!(cfg.max_connections, 2 * 10 + 256);
        assert_eq!(cfg.stream_reserve, Duration::from_secs(5));
        assert_eq!(cfg.http_write_timeout, Duration::from_secs(10));
        let err = parse(&[
            LOCAL[0],
            LOCAL[1],
            "--max-calls",
            "10",
            "--max-connections",
            "9",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("MAX_CONNECTIONS: "), "{err}");
    }

    #[test]
    fn the_openai_url_always_names_the_model() {
        assert_eq!(
            with_model_param("ws://127.0.0.1:9100/v1/realtime", "gpt-realtime"),
            "ws://127.0.0.1:9100/v1/realtime?model=gpt-realtime"
        );
        assert_eq!(
            with_model_param("ws://h/v1/realtime?foo=1", "gpt-realtime-2025-08-28"),
            "ws://h/v1/realtime?foo=1&model=gpt-realtime-2025-08-28"
        );
        assert_eq!(with_model_param("ws://h/r?", "m"), "ws://h/r?model=m");
        assert_eq!(
            with_model_param("ws://h/r?model=x", "m"),
            "ws://h/r?model=x"
        );
        assert_eq!(
            with_model_param("ws://h/r?a=1&model=x", "m"),
            "ws://h/r?a=1&model=x"
        );
        // `models=` is another parameter; odd bytes are escaped.
        assert_eq!(
            with_model_param("ws://h/r?models=x", "a b/c"),
            "ws://h/r?models=x&model=a%20b%2Fc"
        );
        let cfg = parse(&["--openai-url", "ws://127.0.0.1:9/v1/realtime"]).unwrap();
        assert_eq!(
            cfg.openai_url.path_and_query,
            "/v1/realtime?model=gpt-realtime"
        );
    }

    #[test]
    fn a_local_endpoint_without_a_key_gets_a_placeholder_bearer_token_and_only_it() {
        let cfg = parse(&["--openai-url", "ws://127.0.0.1:9/v1/realtime?model=m"]).unwrap();
        assert_eq!(
            cfg.openai_api_key.as_deref(),
            Some(LOCAL_PLACEHOLDER_API_KEY)
        );
        // The real endpoint never gets it (realtime off: no key needed, none sent).
        let cfg = parse(&["--use-openai-realtime", "false", "--openai-pool-max", "4"]).unwrap();
        assert_eq!(cfg.openai_api_key, None);
    }

    #[test]
    fn ws_urls_parse_with_default_and_explicit_ports() {
        let u = WsUrl::parse("wss://api.openai.com/v1/realtime?model=gpt-realtime").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path_and_query.as_str()),
            (
                true,
                "api.openai.com",
                443,
                "/v1/realtime?model=gpt-realtime"
            )
        );
        assert_eq!(u.host_header(), "api.openai.com");
        let u = WsUrl::parse("ws://127.0.0.1:9000").unwrap();
        assert_eq!(
            (u.tls, u.port, u.path_and_query.as_str()),
            (false, 9000, "/")
        );
        assert_eq!(u.host_header(), "127.0.0.1:9000");
        assert!(u.is_loopback());
        let u = WsUrl::parse("ws://[::1]:9000/x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.host_header().as_str()),
            ("::1", "[::1]:9000")
        );
        for bad in ["http://x", "ws://", "ws://h:port/", "wss://[::1/x"] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_real_endpoint_without_a_key_is_refused_with_what_to_set() {
        let err = parse(&[
            "--openai-url",
            "wss://api.openai.com/v1/realtime?model={model}",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("OPENAI_REALTIME_API_KEY"), "{err}");
    }

    #[test]
    fn a_loopback_mock_needs_no_key_and_the_model_is_substituted() {
        let cfg = parse(&[
            "--openai-url",
            "ws://127.0.0.1:9/v1/realtime?model={model}",
            "--openai-model",
            "gpt-realtime-2025-08-28",
        ])
        .unwrap();
        assert_eq!(
            cfg.openai_url.path_and_query,
            "/v1/realtime?model=gpt-realtime-2025-08-28"
        );
        assert_eq!(cfg.stream_secret.len(), 32);
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let base = ["--openai-url", "ws://127.0.0.1:9/"];
        let cases: [(&[&str], &str); 24] = [
            (
                &["--drain-accept-secs", "30", "--drain-timeout-secs", "20"],
                "DRAIN_ACCEPT_SECS",
            ),
            (&["--drain-timeout-secs=-1"], "DRAIN_TIMEOUT_SECS"),
            (&["--drain-accept-secs", "NaN"], "DRAIN_ACCEPT_SECS"),
            (&["--admin-token", "short-token"], "ADMIN_TOKEN"),
            (&["--stream-reserve-secs", "0"], "STREAM_RESERVE_SECS"),
            (
                &["--http-write-timeout-secs", "0"],
                "HTTP_WRITE_TIMEOUT_SECS",
            ),
            (&["--store-cache-mb", "0"], "STORE_CACHE_MB"),
            (&["--retention", "30"], "RETENTION"),
            (&["--retention", "2w"], "RETENTION"),
            (&["--retention", "0m"], "RETENTION"),
            (&["--retention", "99999d"], "RETENTION"),
            (&["--store-max-bytes", "12X"], "STORE_MAX_BYTES"),
            (&["--store-max-bytes", "1000"], "STORE_MAX_BYTES"),
            (&["--store-engine", "rocksdb"], "STORE_ENGINE"),
            (&["--store-cache-mb", "100000"], "STORE_CACHE_MB"),
            (&["--store-flush-ms", "0"], "STORE_FLUSH_MS"),
            (&["--openai-pool-max", "5000"], "OPENAI_POOL_MAX"),
            (
                &["--openai-pool-max-idle-secs", "0"],
                "OPENAI_POOL_MAX_IDLE_SECS",
            ),
            (&["--workers", "0"], "WORKERS"),
            (&["--workers", "5000"], "WORKERS"),
            (&["--max-calls", "0"], "MAX_CALLS"),
            (&["--stream-secret", "short"], "STREAM_SECRET"),
            (
                &["--openai-connect-timeout-secs=-1"],
                "OPENAI_CONNECT_TIMEOUT_SECS",
            ),
            (&["--agent-voice", "robot"], "AGENT_"),
        ];
        for (extra, name) in cases {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn runtime_and_workers_parse_and_default_to_epoll_and_the_core_count() {
        let cfg = parse(&["--openai-url", "ws://127.0.0.1:9/"]).unwrap();
        assert_eq!(cfg.runtime, RuntimeChoice::Epoll);
        assert_eq!(
            cfg.store_cache_bytes,
            crate::store::DEFAULT_CACHE_MB * 1024 * 1024
        );
        assert_eq!(cfg.retention, Some(crate::store::DEFAULT_RETENTION));
        assert_eq!(cfg.store_max_bytes, None);
        assert_eq!(cfg.store_engine, crate::store::engine::EngineKind::Redb);
        assert!(cfg.workers >= 1);
        let cfg = parse(&[
            "--openai-url",
            "ws://127.0.0.1:9/",
            "--runtime",
            "uring",
            "--workers",
            "3",
        ])
        .unwrap();
        assert_eq!((cfg.runtime, cfg.workers), (RuntimeChoice::Uring, 3));
        let cli = Cli::try_parse_from(["callbridge", "--runtime", "kqueue"]);
        assert!(cli.is_err(), "an unknown driver is refused");
    }

    #[test]
    fn log_event_types_are_split_and_trimmed() {
        let cfg = parse(&[
            "--openai-url",
            "ws://127.0.0.1:9/",
            "--log-event-types",
            " error , response.done,,",
        ])
        .unwrap();
        assert_eq!(
            &*cfg.log_event_types,
            &["error".to_string(), "response.done".to_string()]
        );
    }
}
