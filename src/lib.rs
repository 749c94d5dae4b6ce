//! callbridge: an edge proxy that puts an OpenAI Realtime voice agent on a Twilio phone call.
//!
//! ```text
//!  caller ─ PSTN ─ Twilio ──(Media Streams, WebSocket, JSON + base64 μ-law)──▶ callbridge
//!                                                                               │
//!         front/ (HTTP + WebSocket codec) ─▶ twilio/ (events) ─▶ bridge::Call ◀─ openai/ (events)
//!                                                                               │
//!                                   OpenAI Realtime ◀──(WebSocket, GA events, audio/pcmu)──┘
//! ```
//!
//! The per-call logic lives in a sans-IO state machine ([`bridge::Call`]): drivers feed it parsed
//! events and the current time through `handle_*`, and drain what to send through `poll_*`.
//! Protocol modules never touch a socket or the clock; `runtime/` moves bytes.
//!
//! # Layout
//! - [`admin_cli`]: `callbridge agents|numbers|calls …` (store directly, or a server's admin API).
//! - [`config`]: the typed configuration (environment variables and flags).
//! - [`wire`]: small shared codecs for untrusted bytes: base64 checks, a flat JSON scanner.
//! - [`front`]: HTTP/1.1 request parsing (httparse), form bodies, the WebSocket codec, routes.
//! - [`twilio`]: Media Streams events, TwiML, request signatures, signed stream ids.
//! - [`openai`]: Realtime GA events, `session.update`, the client connection, the mock server.
//! - [`bridge`]: the per-call state machine and its playout ledger (barge-in accounting).
//! - [`metrics`]: the Prometheus recorder, metric names, and the per-call meter drivers feed.
//! - [`runtime`]: the IO drivers (tokio/epoll, and io_uring thread per core), sharing one call loop.
//! - [`limits`]: process limits raised at start (open files).
//! - [`store`]: agents, number routes, call records and conversations in redb (one writer thread,
//!   retention, a size cap).
//! - [`sim`]: a simulated Twilio caller, used by the demo, the tests and the load test.
#![warn(missing_docs, unreachable_pub)]

pub mod admin_cli;
pub mod bridge;
pub mod config;
pub mod demo;
pub mod front;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod twilio;
pub mod wire;
