//! Where a server is in its life (design.md "Life of an instance"): what the drivers and the
//! OpenAI pools watch to know when to stop warming, and when to close.

use tokio::sync::watch;

/// Where a server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting.
    Running,
    /// Draining (`Server::drain`): still accepting (webhooks, after-stream and callbacks are
    /// answered throughout); the OpenAI pools stop warming.
    Draining,
    /// The listeners close (taking what is queued on them first) and the connections left end.
    Closed,
}

/// Waits for the next phase change (cancel-safe, as `watch::Receiver::changed`); a dropped
/// sender reads as [`Phase::Closed`].
pub async fn next_phase(phase: &mut watch::Receiver<Phase>) -> Phase {
    match phase.changed().await {
        Ok(()) => *phase.borrow(),
        Err(_) => Phase::Closed,
    }
}
