//! OpenAI Realtime (GA interface): events, `session.update`, the client, the mock server.
//!
//! - [`events`]: parse server events (borrowing), encode client events into reused buffers.
//! - [`client`]: TCP + rustls + WebSocket handshake to the Realtime endpoint.
//! - [`schema`]: the GA event JSON Schemas, for the mock and the tests.
//! - [`mock`]: the scripted mock Realtime server.
//! - [`session`]: the agent's settings and the `session.update` built from them.
//! - [`pool`]: pre-warmed connections (`session.created` already received).
//! - [`health`]: whether OpenAI looks reachable (the webhook's circuit breaker), fed by calls and
//!   the pool's warming.
pub mod client;
pub mod events;
pub mod health;
pub mod mock;
pub mod pool;
pub mod schema;
pub mod session;
