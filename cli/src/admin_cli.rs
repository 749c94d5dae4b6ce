//! `callbridge agents …`, `callbridge numbers …`, `callbridge calls …`: the store from the
//! command line, whether or not the server runs.
//!
//! Every command is an admin API request (method, path, body). With `--server URL` it goes to
//! the running server over HTTP (with `ADMIN_TOKEN`); without, the store in `DATA_DIR` is opened
//! directly and the same request is answered in-process by [`callbridge::front::admin::route`], so
//! both modes give the same answers and the same error messages. The engine allows one process
//! per store: when a server holds it, the direct mode says to use `--server`.
//!
//! `callbridge store migrate --from-sled DIR` copies a store of the engine callbridge used
//! before issue 13 (sled) into the current one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;

use callbridge::store::{Store, StoreError, StoreOptions};
use callbridge_core::wire::form::percent_encode;
use callbridge_core::wire::http::Request;

/// Where the commands go.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Store directory, opened directly when no --server is given.
    #[arg(long, global = true, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// A running callbridge (`http://HOST:PORT`): use its admin API instead of the store files.
    #[arg(long, global = true, env = "CALLBRIDGE_SERVER")]
    pub server: Option<String>,
    /// Admin API token (with --server).
    #[arg(long, global = true, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The store's engine, opened directly when no --server is given (as `serve` has it).
    #[arg(long, global = true, env = "STORE_ENGINE", default_value = "redb")]
    pub store_engine: String,
}

/// `callbridge store …`
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    #[command(subcommand)]
    cmd: StoreCmd,
}

#[derive(clap::Subcommand, Debug)]
enum StoreCmd {
    /// Copy a sled store (callbridge before issue 13) into the current engine in --data-dir.
    Migrate {
        /// The sled store's directory (the old DATA_DIR).
        #[arg(long)]
        from_sled: PathBuf,
        /// Where the new store goes: an empty directory, or the sled directory itself.
        #[arg(long, env = "DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

/// `callbridge store migrate --from-sled DIR`: copies the old store and prints what it copied.
pub fn store(args: StoreArgs) -> anyhow::Result<()> {
    match args.cmd {
        StoreCmd::Migrate {
            from_sled,
            data_dir,
        } => {
            let kind = callbridge::store::engine::EngineKind::default();
            let m = callbridge::store::migrate::from_sled(
                &from_sled,
                &data_dir,
                kind,
                callbridge::store::DEFAULT_CACHE_MB * 1024 * 1024,
            )
            .with_context(|| {
                format!(
                    "migrating {} into {}",
                    from_sled.display(),
                    data_dir.display()
                )
            })?;
            println!(
                "copied {} agents, {} numbers, {} calls ({} in progress), {} items ({} bytes of export) from {} (sled) into {} ({})",
                m.agents,
                m.numbers,
                m.calls,
                m.in_progress,
                m.items,
                m.logical_bytes,
                from_sled.display(),
                data_dir.display(),
                kind.name()
            );
            Ok(())
        }
    }
}

/// `callbridge agents …`
#[derive(clap::Args, Debug)]
pub struct AgentsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: AgentsCmd,
}

#[derive(clap::Subcommand, Debug)]
enum AgentsCmd {
    /// List the agents.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one agent as JSON.
    Get {
        /// Agent id.
        id: String,
    },
    /// Create or replace an agent from a JSON file (`-`: standard input).
    Put {
        /// The agent document.
        file: PathBuf,
    },
    /// Delete an agent (no number may route to it).
    Delete {
        /// Agent id.
        id: String,
    },
}

/// `callbridge numbers …`
#[derive(clap::Args, Debug)]
pub struct NumbersArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: NumbersCmd,
}

#[derive(clap::Subcommand, Debug)]
enum NumbersCmd {
    /// List the number routes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Route a number (E.164, or `default`) to an agent.
    Put {
        /// The number.
        number: String,
        /// The agent id.
        agent: String,
    },
    /// Remove a route.
    Delete {
        /// The number.
        number: String,
    },
}

/// `callbridge calls …`
#[derive(clap::Args, Debug)]
pub struct CallsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: CallsCmd,
}

#[derive(clap::Subcommand, Debug)]
enum CallsCmd {
    /// List calls, newest first.
    List {
        /// Started at or after (unix ms).
        #[arg(long)]
        since: Option<u64>,
        /// Started before (unix ms).
        #[arg(long)]
        until: Option<u64>,
        /// ringing, in-progress, completed, failed or fallback.
        #[arg(long)]
        status: Option<String>,
        /// Agent id.
        #[arg(long)]
        agent: Option<String>,
        /// Calls per page (1–1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The `next page` cursor printed by the previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One call with its conversation.
    Show {
        /// The callSid.
        call_sid: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// An admin API request.
struct Call {
    method: &'static str,
    path: String,
    query: Option<String>,
    body: Vec<u8>,
}

impl Call {
    fn new(method: &'static str, path: String, body: Vec<u8>) -> Call {
        Call {
            method,
            path,
            query: None,
            body,
        }
    }

    fn get(path: String) -> Call {
        Call::new("GET", path, vec![])
    }
}

/// Sends `call` to the server or answers it from the store; returns the JSON answer of a 2xx,
/// or the API's error message as an error.
fn send(target: &Target, call: Call) -> anyhow::Result<Value> {
    let (status, body) = match &target.server {
        Some(url) => over_http(url, target.admin_token.as_deref(), &call)?,
        None => direct(target, &call)?,
    };
    let value: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let msg = value["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    bail!("{msg} (HTTP {status})")
}

fn direct(target: &Target, call: &Call) -> anyhow::Result<(u16, Vec<u8>)> {
    let engine = callbridge::store::engine::EngineKind::parse(&target.store_engine)
        .map_err(|why| anyhow::anyhow!("STORE_ENGINE: {why}"))?;
    // Reads and admin writes only: no retention from here (the server deletes old calls).
    let opts = StoreOptions {
        engine,
        retention: None,
        ..StoreOptions::default()
    };
    let store = match Store::open(&target.data_dir, opts) {
        Ok(s) => s,
        Err(StoreError::Locked(dir)) => bail!(
            "the store at {} is locked by a running callbridge: use its admin API with --server http://HOST:PORT (or CALLBRIDGE_SERVER) and ADMIN_TOKEN",
            dir.display()
        ),
        Err(e) => return Err(e).context("opening the store (set --data-dir or DATA_DIR)"),
    };
    const LOCAL: &str = "local-cli";
    let req = Request {
        method: call.method.to_owned(),
        path: call.path.clone(),
        query: call.query.clone(),
        headers: vec![(
            "authorization".into(),
            format!("Bearer {LOCAL}").into_bytes(),
        )],
        body: call.body.clone(),
        version_minor: 1,
    };
    let resp = callbridge::front::admin::route(Some(&store), Some(LOCAL), &req);
    store.close();
    Ok((resp.status, resp.body))
}

fn over_http(url: &str, token: Option<&str>, call: &Call) -> anyhow::Result<(u16, Vec<u8>)> {
    let Some(token) = token else {
        bail!("--server needs the admin token: set ADMIN_TOKEN (or --admin-token)");
    };
    let Some(hostport) = url.strip_prefix("http://") else {
        bail!("--server {url:?}: use http://HOST:PORT (the admin API is plain HTTP; put TLS in front of it for remote use)");
    };
    let hostport = hostport.trim_end_matches('/');
    let mut stream = TcpStream::connect(hostport).with_context(|| {
        format!("connecting to {hostport} (is callbridge serve running there?)")
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let target = match &call.query {
        Some(q) => format!("{}?{q}", call.path),
        None => call.path.clone(),
    };
    let mut req = format!(
        "{} {target} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nContent-Length: {}\r\n",
        call.method,
        call.body.len()
    );
    if !call.body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(&call.body)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {hostport}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => bail!("{hostport} did not answer with HTTP"),
    };
    Ok((resp.code.unwrap_or(0), raw[head..].to_vec()))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Runs `callbridge agents …`.
pub fn agents(args: AgentsArgs) -> anyhow::Result<()> {
    let t = &args.target;
    match args.cmd {
        AgentsCmd::List { json } => {
            let v = send(t, Call::get("/api/admin/agents".into()))?;
            if json {
                print_json(&v);
            } else {
                let list = v["agents"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no agents (calls use the agent of the configuration, AGENT_*)");
                }
                for a in list {
                    println!(
                        "{:<24} {:<8} {}",
                        a["id"].as_str().unwrap_or(""),
                        a["voice"].as_str().unwrap_or(""),
                        a["name"].as_str().unwrap_or("")
                    );
                }
            }
        }
        AgentsCmd::Get { id } => print_json(&send(
            t,
            Call::get(format!("/api/admin/agents/{}", percent_encode(&id))),
        )?),
        AgentsCmd::Put { file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let doc: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let Some(id) = doc["id"].as_str() else {
                bail!("{}: the agent needs an \"id\"", file.display());
            };
            let path = format!("/api/admin/agents/{}", percent_encode(id));
            let v = send(t, Call::new("PUT", path, text.into_bytes()))?;
            println!("stored agent {}", v["id"].as_str().unwrap_or(id));
        }
        AgentsCmd::Delete { id } => {
            send(
                t,
                Call::new(
                    "DELETE",
                    format!("/api/admin/agents/{}", percent_encode(&id)),
                    vec![],
                ),
            )?;
            println!("deleted agent {id}");
        }
    }
    Ok(())
}

/// Runs `callbridge numbers …`.
pub fn numbers(args: NumbersArgs) -> anyhow::Result<()> {
    let t = &args.target;
    match args.cmd {
        NumbersCmd::List { json } => {
            let v = send(t, Call::get("/api/admin/numbers".into()))?;
            if json {
                print_json(&v);
            } else {
                for n in v["numbers"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<18} -> {}",
                        n["number"].as_str().unwrap_or(""),
                        n["agentId"].as_str().unwrap_or("")
                    );
                }
            }
        }
        NumbersCmd::Put { number, agent } => {
            let body = serde_json::to_vec(&serde_json::json!({ "agentId": agent }))?;
            send(
                t,
                Call::new(
                    "PUT",
                    format!("/api/admin/numbers/{}", percent_encode(&number)),
                    body,
                ),
            )?;
            println!("{number} -> {agent}");
        }
        NumbersCmd::Delete { number } => {
            send(
                t,
                Call::new(
                    "DELETE",
                    format!("/api/admin/numbers/{}", percent_encode(&number)),
                    vec![],
                ),
            )?;
            println!("deleted route {number}");
        }
    }
    Ok(())
}

/// Most listing requests one `calls list` makes to fill its page.
const CLI_MAX_PAGES: usize = 50;

/// Runs `callbridge calls …`.
pub fn calls(args: CallsArgs) -> anyhow::Result<()> {
    let t = &args.target;
    match args.cmd {
        CallsCmd::List {
            since,
            until,
            status,
            agent,
            limit,
            cursor,
            json,
        } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(s) = since {
                q.push(format!("since={s}"));
            }
            if let Some(u) = until {
                q.push(format!("until={u}"));
            }
            if let Some(s) = status {
                q.push(format!("status={}", percent_encode(&s)));
            }
            if let Some(a) = agent {
                q.push(format!("agent={}", percent_encode(&a)));
            }
            // A filtered page can come back short (the server examines a bounded number of
            // records per page): ask on until `limit` calls are here or the listing ends.
            let mut calls = Vec::new();
            let mut cursor = cursor;
            for _ in 0..CLI_MAX_PAGES {
                let mut page_q = q.clone();
                page_q[0] = format!("limit={}", limit - calls.len());
                if let Some(c) = &cursor {
                    page_q.push(format!("cursor={}", percent_encode(c)));
                }
                let mut call = Call::get("/api/admin/calls".into());
                call.query = Some(page_q.join("&"));
                let page = send(t, call)?;
                calls.extend(page["calls"].as_array().cloned().unwrap_or_default());
                cursor = page["nextCursor"].as_str().map(str::to_owned);
                if cursor.is_none() || calls.len() >= limit {
                    break;
                }
            }
            let v = serde_json::json!({"calls": calls, "nextCursor": cursor});
            if json {
                print_json(&v);
                return Ok(());
            }
            for c in v["calls"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{:<36} {:<12} {} {} -> {} agent={} items={}",
                    c["callSid"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or(""),
                    utc(c["startedAtMs"].as_u64().unwrap_or(0)),
                    c["from"].as_str().unwrap_or(""),
                    c["to"].as_str().unwrap_or(""),
                    c["agentId"].as_str().unwrap_or("-"),
                    c["items"].as_u64().unwrap_or(0),
                );
            }
            if let Some(next) = v["nextCursor"].as_str() {
                println!("next page: --cursor {next}");
            }
        }
        CallsCmd::Show { call_sid, json } => {
            let v = send(
                t,
                Call::get(format!("/api/admin/calls/{}", percent_encode(&call_sid))),
            )?;
            if json {
                print_json(&v);
            } else {
                print!("{}", render_call(&v));
            }
        }
    }
    Ok(())
}

/// A call and its conversation as text.
pub fn render_call(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let _ = writeln!(out, "call {}  {}", s("callSid"), s("status"));
    let _ = writeln!(
        out,
        "  from {} to {}  agent {}",
        s("from"),
        s("to"),
        s("agentId")
    );
    let _ = writeln!(
        out,
        "  started {}  answered {}  ended {}",
        utc(v["startedAtMs"].as_u64().unwrap_or(0)),
        v["answeredAtMs"].as_u64().map_or("-".into(), utc),
        v["endedAtMs"].as_u64().map_or("-".into(), utc)
    );
    let u = &v["usage"];
    let _ = writeln!(
        out,
        "  openai session {}  tokens {} (in {}, out {}) over {} responses  interruptions {}",
        s("realtimeSessionId"),
        u["totalTokens"],
        u["inputTokens"],
        u["outputTokens"],
        u["responses"],
        v["interruptions"]
    );
    if let Some(r) = v["endReason"].as_str() {
        let _ = writeln!(out, "  end: {r}");
    }
    if v["itemsLost"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(out, "  items lost (store queue full): {}", v["itemsLost"]);
    }
    let start = v["startedAtMs"].as_u64().unwrap_or(0);
    for item in v["realtimeConversation"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let at = item["atMs"].as_u64().unwrap_or(start).saturating_sub(start);
        let text = |k: &str| item[k].as_str().unwrap_or("").to_owned();
        let line = match item["type"].as_str().unwrap_or("") {
            "caller_transcript" => format!("caller:    {}", text("text")),
            "assistant_transcript" => {
                let mut l = format!("assistant: {}", text("text"));
                if item["interrupted"].as_bool() == Some(true) {
                    let _ = write!(l, "  [interrupted, heard {} ms]", item["heardMs"]);
                }
                l
            }
            "interruption" => format!(
                "-- barge-in: caller heard {} of {} ms of {}",
                item["heardMs"],
                item["sentMs"],
                text("itemId")
            ),
            "tool_call" => format!("tool call: {}({})", text("name"), text("arguments")),
            "tool_result" => format!("tool result: {}", text("output")),
            "dtmf" => format!("dtmf:      {}", text("digit")),
            "error" => format!("error ({}): {}", text("source"), text("message")),
            other => format!("{other}: {item}"),
        };
        let _ = writeln!(out, "  [{:>3}] +{:>6} ms  {line}", item["seq"], at);
    }
    out
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_796_025_281_000), "2026-11-30T07:54:41.000Z");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(percent_encode("+81501234567"), "%2B81501234567");
        assert_eq!(percent_encode("sales-ja"), "sales-ja");
    }
}
