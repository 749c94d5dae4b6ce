//! The HTTP/1.1 and WebSocket front end: bytes in, requests and messages out.
//!
//! - [`http`]: request parsing with limits (httparse) and response writing.
//! - [`form`]: `application/x-www-form-urlencoded` bodies.
//! - [`admission`]: call slots (`MAX_CALLS`, reservations) and single-use stream ids.
//! - [`routes`]: the routes (webhook, after-stream, media-stream upgrade, health), sans-IO.
//! - [`ws`]: the sans-IO WebSocket codec (server side for Twilio, client side for OpenAI) and
//!   the opening handshakes.
pub mod admin;
pub mod admission;
pub mod form;
pub mod http;
pub mod routes;
pub mod ws;
