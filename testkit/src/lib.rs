//! callbridge-testkit: what the tests, the demo and the load test call with.
//!
//! - [`mock`]: the scripted mock OpenAI Realtime server; it checks what it receives against the
//!   GA event schemas ([`schema`], the one user of `jsonschema`).
//! - [`sim`]: a simulated Twilio caller (webhook, TwiML, Media Stream), exact to protocol.md.
//! - [`demo`]: the demo scenario: one whole call through the real server against the mock.
#![warn(missing_docs, unreachable_pub)]

pub mod demo;
pub mod mock;
pub mod schema;
pub mod sim;
