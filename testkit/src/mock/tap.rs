//! Observation hooks of the mock, for the load test: it sees every piece of caller audio the mock
//! accepts and may rewrite (tag) every piece of assistant audio before it is encoded, each with
//! the mock's `now`, so latencies are measured on the same clock as the simulated callers.
//!
//! ```text
//!  append ─▶ MockSession::on_append ─▶ tap.input_audio(now, bytes)      (uplink check)
//!  MockSession::send_delta ─▶ tap.output_audio(now, &mut bytes) ─▶ base64 ─▶ delta (downlink tag)
//!  VAD speech start ─▶ tap.speech_started(now)                           (barge-in clock)
//!  conversation.item.truncate ─▶ tap.truncated(item_id, audio_end_ms)    (truncation error)
//! ```
//!
//! The hooks are plain calls inside the sans-IO session: no IO, no clock of their own.

use std::sync::Arc;
use std::time::Instant;

/// Per-session observer; one is made by the [`MockTapFactory`] for every new session.
pub trait SessionTap: Send + std::fmt::Debug {
    /// Caller audio of one accepted `input_audio_buffer.append` (decoded μ-law), at `now`.
    fn input_audio(&mut self, now: Instant, audio: &[u8]);
    /// Assistant audio of one `response.output_audio.delta` about to be sent at `now`; the tap
    /// may rewrite the bytes in place (the length is fixed).
    fn output_audio(&mut self, now: Instant, audio: &mut [u8]);
    /// The VAD sent `input_audio_buffer.speech_started` at `now`.
    fn speech_started(&mut self, now: Instant);
    /// A `conversation.item.truncate` for `item_id` with `audio_end_ms` was accepted.
    fn truncated(&mut self, item_id: &str, audio_end_ms: u64);
}

/// Makes one [`SessionTap`] per mock session ([`super::MockConfig::tap`]).
pub type MockTapFactory = Arc<dyn Fn() -> Box<dyn SessionTap> + Send + Sync>;
