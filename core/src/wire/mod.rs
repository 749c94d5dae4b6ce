//! Codecs for untrusted bytes, shared by the Twilio and OpenAI layers and the front end.
//!
//! - [`b64`]: cheap validity check and decoded length of base64 text, without decoding it.
//! - [`flat_json`]: an allocation-free scanner for the small, flat JSON objects of the audio hot
//!   path; anything it does not fully understand is left to simd-json.
//! - [`json_out`]: writing JSON by hand into reused buffers (and, for tests, `json_render`:
//!   JSON written many ways for the parsers' property tests).
//! - [`json_scratch`]: simd-json's scratch space, one per thread, for every parser.
//! - [`http`]: HTTP/1.1 request parsing with limits, and response writing.
//! - [`form`]: `application/x-www-form-urlencoded` bodies.
//! - [`ws`]: the sans-IO WebSocket codec (server side for Twilio, client side for OpenAI) and
//!   the opening handshakes.
pub mod b64;
pub mod flat_json;
pub mod form;
pub mod http;
pub mod json_out;
#[cfg(test)]
pub(crate) mod json_render;
pub mod json_scratch;
pub mod ws;
