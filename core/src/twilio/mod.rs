//! Twilio: Media Streams events, TwiML answers, request signatures and signed stream ids.
//!
//! - [`events`]: parse inbound Media Streams messages (borrowing), encode outbound ones.
//! - [`twiml`]: the TwiML documents callbridge answers, XML-escaped.
//! - [`signature`]: `X-Twilio-Signature` validation (HMAC-SHA1).
//! - [`stream_id`]: the signed, expiring `{callId}` of the stream URL.
//! - [`party`]: `From`/`To` masked for the log.
pub mod events;
pub mod party;
pub mod signature;
pub mod stream_id;
pub mod twiml;
