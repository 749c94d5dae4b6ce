//! The per-call state machine (sans-IO): Twilio events and OpenAI events in, frames out.
//!
//! - [`ledger`]: playout accounting and the barge-in rule (protocol.md section 6).
pub mod ledger;
