//! callbridge-core: the protocols and the per-call state machine, with no IO.
//!
//! No tokio, no sockets, no clock reads, no store, no metrics: everything here takes bytes and
//! times as arguments and returns bytes and decisions, so it is tested deterministically and
//! fuzzed directly.
//!
//! ```text
//!  wire      base64 length, one JSON fast path (flat_json, simd-json as fallback and oracle),
//!            one JSON writer (json_out), the WebSocket codec, the HTTP/1.1 request parser, forms
//!  twilio    Media Streams events, TwiML, request signatures, signed single-use stream ids
//!  openai    Realtime GA events, the agent's settings and its session.update
//!  bridge    Call: the per-call state machine, and its playout ledger (barge-in accounting)
//! ```
//!
//! Each module depends only on those above it in this list (`tests/architecture.rs` checks).
#![warn(missing_docs, unreachable_pub)]

pub mod bridge;
pub mod openai;
pub mod twilio;
pub mod wire;
