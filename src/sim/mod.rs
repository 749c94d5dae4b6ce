//! Simulated Twilio caller.
pub mod playout;
pub mod script;
pub mod twiml;
pub mod webhook;
pub mod stream;
