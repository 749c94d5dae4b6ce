//! callbridge: the server. An edge proxy that puts an OpenAI Realtime voice agent on a Twilio
//! phone call.
//!
//! ```text
//!  caller ─ PSTN ─ Twilio ──(Media Streams, WebSocket, JSON + base64 μ-law)──▶ callbridge
//!                                                                               │
//!    runtime (sockets, time) ─▶ core: wire ─▶ twilio ─▶ bridge::Call ◀─ openai ◀─ wire
//!                                                                               │
//!                                   OpenAI Realtime ◀──(WebSocket, GA events, audio/pcmu)──┘
//! ```
//!
//! The protocols and the per-call state machine are `callbridge_core`, with no IO. This crate
//! holds what touches the world, each module above those it uses:
//!
//! - [`config`]: the typed configuration (environment variables and flags).
//! - [`lifecycle`]: where the server is in its life (running, draining, closed).
//! - [`limits`]: process limits raised at start (open files).
//! - [`metrics`]: the Prometheus recorder, metric names, and the per-call meter drivers feed.
//! - [`store`]: agents, number routes, call records and conversations in redb (one writer
//!   thread, retention, a size cap).
//! - [`openai`]: the Realtime connection, the pool of warm ones, the breaker.
//! - [`front`]: the routes (webhooks, media-stream upgrades, health, admin), sans-IO.
//! - [`runtime`]: the IO drivers (tokio/epoll, and io_uring thread per core) under one
//!   connection handler and one call loop; [`runtime::Server`].
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod front;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod runtime;
pub mod store;
