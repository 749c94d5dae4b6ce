//! Simulated Twilio caller.
pub mod playout;
