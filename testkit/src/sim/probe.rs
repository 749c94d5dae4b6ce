//! Observation hook of a simulated caller's stream, for the load test: every caller frame sent,
//! every `media` and `clear` received, each with the driver's `now`, so that latencies are
//! measured on one clock with the mock (which has its own hook, `openai::mock::tap`).
//!
//! The hook is called from inside the sans-IO [`super::stream::StreamSession`]; it does no IO.

use std::time::Instant;

/// Observes one stream. Shared (`Arc`) between the caller's config and the session, hence
/// `&self`; implementations keep their state behind a lock or atomics.
pub trait StreamProbe: Send + Sync + std::fmt::Debug {
    /// Caller frame `index` (0-based, the tag's sequence number) was produced at `now`.
    fn frame_sent(&self, now: Instant, index: u32);
    /// A `media` message from the proxy arrived at `now`; `audio` is its decoded payload.
    fn media_received(&self, now: Instant, audio: &[u8]);
    /// A `clear` from the proxy arrived at `now`.
    fn clear_received(&self, now: Instant);
}
