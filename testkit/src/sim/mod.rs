//! A simulated Twilio caller: places a call on callbridge exactly as Twilio would, and reports
//! what it heard. Used by the demo, the integration tests and the load test.
//!
//! ```text
//!  caller.rs (tokio IO shell)
//!    ├─ webhook.rs  voice webhook: parameters, form body, X-Twilio-Signature, HTTP client
//!    ├─ twiml.rs    strict TwiML reader: <Connect><Stream>, <Parameter>, <Redirect>, fallbacks
//!    └─ stream.rs   the Media Stream, Twilio's side: connected/start/media/dtmf/stop out,
//!         │         media/mark/clear in, protocol violations, the report
//!         ├─ script.rs   what the caller says, as 20 ms μ-law frames (assets/*.ulaw)
//!         └─ playout.rs  Twilio's playout buffer on a fake clock: mark echoes, clear, and
//!                        how many ms of each assistant item really played
//!  probe.rs  an optional observer of the stream (the load test's clocks and frame checks)
//! ```
//!
//! Everything but `caller.rs` is sans-IO and unit-tested with a fake clock.
pub mod caller;
pub mod playout;
pub mod probe;
pub mod script;
pub mod stream;
pub mod twiml;
pub mod webhook;
