//! Reaching OpenAI Realtime: the connection, the pool of warm ones, and whether OpenAI looks up.
//! (Its events and `session.update` are `callbridge_core::openai`.)
//!
//! - [`client`]: TCP + rustls + WebSocket handshake to the Realtime endpoint; [`client::Dial`].
//! - [`pool`]: pre-warmed connections (`session.created` already received).
//! - [`health`]: whether OpenAI looks reachable (the webhook's circuit breaker), fed by calls and
//!   the pool's warming.
pub mod client;
pub mod health;
pub mod pool;
