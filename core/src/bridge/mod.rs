//! The per-call state machine (sans-IO): Twilio events and OpenAI events in, frames out.
//!
//! - [`call`]: [`Call`], the state machine, with its run-loop contract.
//! - [`ledger`]: playout accounting and the barge-in rule (protocol.md section 6).
pub mod call;
pub mod ledger;

pub use call::{
    Call, CallConfig, CallEvent, CallStats, EndReason, Leg, OpenAiFault, ProtocolError, Transmit,
    TwilioFault,
};

#[cfg(test)]
mod tests;
