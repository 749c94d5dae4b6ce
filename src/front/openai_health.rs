//! Whether OpenAI looks reachable, from how the last connects went: a circuit breaker for the
//! webhook.
//!
//! When OpenAI is down, every call answered with `<Connect><Stream>` waits in silence until its
//! connect fails (up to `OPENAI_CONNECT_TIMEOUT_SECS`) before the `<Redirect>` sends it to the
//! conference. After [`TRIP_AFTER`] failed connects in a row the breaker opens: for [`OPEN_FOR`]
//! the webhook sends callers straight to the conference (protocol.md 2.2: "OpenAI unavailable —
//! do not open a stream at all"). Then the next call streams again as a probe: one success
//! closes the breaker, one more failure opens it again at once.
//!
//! Sans-IO: the time comes in as an argument, so the rule is tested with a fake clock.

use std::time::{Duration, Instant};

/// Failed connects in a row that open the breaker.
pub const TRIP_AFTER: u32 = 3;

/// How long an open breaker sends callers to the conference before a call probes again.
pub const OPEN_FOR: Duration = Duration::from_secs(15);

/// The breaker's state.
#[derive(Debug, Default)]
pub struct OpenAiHealth {
    /// Connects that failed since the last one that worked.
    failures_in_a_row: u32,
    /// Open until then.
    open_until: Option<Instant>,
}

impl OpenAiHealth {
    /// Notes how a connect to OpenAI went (TCP, TLS and the WebSocket handshake). Returns `true`
    /// when this outcome opened the breaker (for the log).
    pub fn on_connect(&mut self, ok: bool, now: Instant) -> bool {
        if ok {
            self.failures_in_a_row = 0;
            self.open_until = None;
            return false;
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let was_open = self.is_open(now);
        if self.failures_in_a_row >= TRIP_AFTER {
            self.open_until = Some(now + OPEN_FOR);
        }
        !was_open && self.is_open(now)
    }

    /// Whether calls should skip the AI at `now`.
    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }

    /// Failed connects since the last one that worked.
    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_probes_after_a_while_and_closes_on_success() {
        let t0 = Instant::now();
        let mut h = OpenAiHealth::default();
        assert!(!h.on_connect(false, t0));
        assert!(!h.on_connect(false, t0));
        assert!(!h.is_open(t0), "two failures are not an outage");
        assert!(h.on_connect(false, t0), "the third opens it");
        assert!(h.is_open(t0 + OPEN_FOR - Duration::from_millis(1)));
        // Calls already streaming fail too: it stays open, and only the first opening is news.
        assert!(!h.on_connect(false, t0 + Duration::from_secs(1)));
        // Time for a probe.
        let later = t0 + Duration::from_secs(1) + OPEN_FOR;
        assert!(!h.is_open(later));
        // The probe fails: open again at once.
        assert!(h.on_connect(false, later));
        assert!(h.is_open(later));
        // A success (a call that was already connecting) closes it.
        assert!(!h.on_connect(true, later));
        assert!(!h.is_open(later));
        assert_eq!(h.failures_in_a_row(), 0);
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let t0 = Instant::now();
        let mut h = OpenAiHealth::default();
        h.on_connect(false, t0);
        h.on_connect(false, t0);
        h.on_connect(true, t0);
        h.on_connect(false, t0);
        h.on_connect(false, t0);
        assert!(!h.is_open(t0));
    }
}
