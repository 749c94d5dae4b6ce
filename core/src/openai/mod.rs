//! OpenAI Realtime (GA interface), sans-IO.
//!
//! - [`events`]: parse server events (borrowing), encode client events into reused buffers.
//! - [`session`]: the agent's settings and the `session.update` built from them.
pub mod events;
pub mod session;
