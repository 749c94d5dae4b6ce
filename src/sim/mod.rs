//! Simulated Twilio caller.
pub mod playout;
pub mod script;
