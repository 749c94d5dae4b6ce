//! Whether OpenAI looks reachable, from how the last calls' AI legs went: a circuit breaker for
//! the webhook.
//!
//! When OpenAI is down, every call answered with `<Connect><Stream>` waits in silence until its
//! AI leg fails (a refused or timed-out connect, or no `session.updated` in time) before the
//! `<Redirect>` sends it to the conference. After [`TRIP_AFTER`] failed AI legs in a row the
//! breaker opens: for [`OPEN_FOR`] the webhook sends callers straight to the conference
//! (protocol.md 2.2: "OpenAI unavailable — do not open a stream at all"). Then one call streams
//! as a probe while the others still go to the conference; its session becoming ready closes the
//! breaker, its failure opens it again at once, and if it ends without either (the caller hung
//! up) the next call probes once the probe window has passed.
//!
//! What counts as a failure (it is everyone's problem, not one call's): a connect, TLS or
//! WebSocket handshake that fails or times out (a 401, 429 or 5xx answer, an unknown model), a
//! session that never gets ready once dialled, and the same failures of the pool's warming
//! connections. What does not: an `invalid_request_error` that answers one agent's
//! `session.update` (its settings are refused: the agent's fault,
//! [`callbridge_core::bridge::EndReason::AgentRejected`]), and a stream that never sent `start` (nothing was
//! dialled). What closes the breaker: a call whose session got ready (a warming connection's
//! handshake alone does not prove that sessions work).
//!
//! [`OpenAiHealth`] is sans-IO (the time comes in as an argument, so the rule is tested with a
//! fake clock); [`Breaker`] shares it between the webhook, the calls and the pools.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed AI legs in a row that open the breaker.
pub const TRIP_AFTER: u32 = 3;

/// How long an open breaker sends callers to the conference before a call probes again.
pub const OPEN_FOR: Duration = Duration::from_secs(15);

/// What the webhook should do with a new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Open the stream (normal, or as the probe).
    Stream,
    /// Send the caller to the conference: OpenAI looks down.
    Conference,
}

/// The breaker's state.
#[derive(Debug)]
pub struct OpenAiHealth {
    /// How long a probe call may take to show an outcome (connect + session timeouts).
    probe_window: Duration,
    /// AI legs that failed since the last one that became ready.
    failures_in_a_row: u32,
    /// Open until then; afterwards half-open (one probe at a time).
    open_until: Option<Instant>,
    /// A probe call is out until then.
    probe_until: Option<Instant>,
}

impl OpenAiHealth {
    /// A closed breaker whose probes get `probe_window` to show an outcome.
    pub fn new(probe_window: Duration) -> OpenAiHealth {
        OpenAiHealth {
            probe_window,
            failures_in_a_row: 0,
            open_until: None,
            probe_until: None,
        }
    }

    /// Decides for a new call at `now` (and, half-open, makes it the probe).
    pub fn admit(&mut self, now: Instant) -> Admit {
        let Some(open_until) = self.open_until else {
            return Admit::Stream;
        };
        if now < open_until || self.probe_until.is_some_and(|until| now < until) {
            return Admit::Conference;
        }
        self.probe_until = Some(now + self.probe_window);
        Admit::Stream
    }

    /// Notes how a call's AI leg went: `true` once its session is ready, `false` when it failed
    /// to connect or to set up. Returns `true` when this outcome opened the breaker (for the log).
    pub fn on_outcome(&mut self, ok: bool, now: Instant) -> bool {
        self.probe_until = None;
        if ok {
            self.failures_in_a_row = 0;
            self.open_until = None;
            return false;
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        if self.failures_in_a_row < TRIP_AFTER {
            return false;
        }
        let was_open = self.open_until.is_some_and(|until| now < until);
        self.open_until = Some(now + OPEN_FOR);
        !was_open
    }

    /// Failed AI legs since the last one that became ready.
    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row
    }
}

/// The breaker shared by the webhook (which asks [`Breaker::admit`]) and whatever learns about
/// OpenAI's reachability: calls' AI legs and the pools' warming connections
/// ([`Breaker::note`]).
#[derive(Debug, Clone)]
pub struct Breaker(Arc<Mutex<OpenAiHealth>>);

impl Breaker {
    /// A closed breaker whose probes get `probe_window` to show an outcome.
    pub fn new(probe_window: Duration) -> Breaker {
        Breaker(Arc::new(Mutex::new(OpenAiHealth::new(probe_window))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenAiHealth> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that OpenAI answered (`true`: a session got ready, a warming connection got
    /// `session.created`) or could not be reached (`false`); logs when this opens the breaker.
    pub fn note(&self, reachable: bool) {
        let mut h = self.lock();
        if h.on_outcome(reachable, Instant::now()) {
            tracing::error!(
                failures_in_a_row = h.failures_in_a_row(),
                "OpenAI unreachable: new calls go to the legacy conference for {OPEN_FOR:?}"
            );
        }
    }

    /// What the webhook does with a new call now.
    pub fn admit(&self) -> Admit {
        self.lock().admit(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: Duration = Duration::from_secs(15);

    #[test]
    fn opens_after_failures_in_a_row_then_lets_one_probe_through_at_a_time() {
        let t0 = Instant::now();
        let mut h = OpenAiHealth::new(PROBE);
        assert!(!h.on_outcome(false, t0));
        assert!(!h.on_outcome(false, t0));
        assert_eq!(h.admit(t0), Admit::Stream, "two failures are not an outage");
        assert!(h.on_outcome(false, t0), "the third opens it");
        assert_eq!(
            h.admit(t0 + OPEN_FOR - Duration::from_millis(1)),
            Admit::Conference
        );
        // Calls already streaming fail too: it stays open, and only the first opening is news.
        assert!(!h.on_outcome(false, t0 + Duration::from_secs(1)));
        // Half-open: one probe, the others still go to the conference.
        let later = t0 + Duration::from_secs(1) + OPEN_FOR;
        assert_eq!(h.admit(later), Admit::Stream, "the probe");
        assert_eq!(h.admit(later), Admit::Conference);
        assert_eq!(
            h.admit(later + PROBE - Duration::from_millis(1)),
            Admit::Conference
        );
        // The probe fails: open again at once.
        assert!(h.on_outcome(false, later + Duration::from_secs(2)));
        assert_eq!(h.admit(later + Duration::from_secs(3)), Admit::Conference);
        // Next probe; it works: closed, everyone streams.
        let again = later + Duration::from_secs(2) + OPEN_FOR;
        assert_eq!(h.admit(again), Admit::Stream);
        assert!(!h.on_outcome(true, again));
        assert_eq!(h.admit(again), Admit::Stream);
        assert_eq!(h.admit(again), Admit::Stream);
        assert_eq!(h.failures_in_a_row(), 0);
    }

    #[test]
    fn a_probe_that_shows_nothing_lets_the_next_call_probe_after_its_window() {
        let t0 = Instant::now();
        let mut h = OpenAiHealth::new(PROBE);
        (0..TRIP_AFTER).for_each(|_| {
            h.on_outcome(false, t0);
        });
        let half_open = t0 + OPEN_FOR;
        assert_eq!(h.admit(half_open), Admit::Stream);
        // The caller hangs up before the AI leg shows anything.
        assert_eq!(
            h.admit(half_open + PROBE - Duration::from_millis(1)),
            Admit::Conference
        );
        assert_eq!(h.admit(half_open + PROBE), Admit::Stream, "the next probe");
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let t0 = Instant::now();
        let mut h = OpenAiHealth::new(PROBE);
        h.on_outcome(false, t0);
        h.on_outcome(false, t0);
        h.on_outcome(true, t0);
        h.on_outcome(false, t0);
        h.on_outcome(false, t0);
        assert_eq!(h.admit(t0), Admit::Stream);
    }
}
