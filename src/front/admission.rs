//! Who gets a call slot, and which stream ids have been used: the hard `MAX_CALLS` limit and
//! single-use streams, per instance.
//!
//! ```text
//!  webhook  ── reserve(call_id) ──▶ active + reserved < MAX_CALLS ? stream : conference
//!  upgrade  ── admit(call_id) ────▶ used before?            → 409 (single use)
//!                                   active < MAX_CALLS ?    → bridge (a slot, released on drop)
//!                                   else                    → accept, close 1000 (after-stream:
//!                                                             the conference)
//! ```
//!
//! - The webhook only guesses: a stream it minted may land on another instance, so its
//!   reservation holds a slot for `STREAM_RESERVE_SECS` (5 s by default) and then lapses by
//!   itself, never leaving a phantom call behind. The upgrade is the binding check.
//! - A stream id opens at most one stream on this instance: it is remembered until it expires
//!   (after that [`callbridge_core::twilio::stream_id`] refuses it anyway), so the memory it takes is
//!   bounded by the streams started within one `STREAM_TTL_SECS`, and by [`used_capacity`].
//!
//! Sans-IO: the times come in as arguments.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Most used stream ids remembered for `max_calls`: 64 streams per call slot within one stream
/// TTL (120 s by default: calls as short as 2 s at full load), at least 4,096. An id takes about
/// 150 bytes here, so 2,000 calls cap this at ~19 MB. When it is full, upgrades are refused
/// (503) rather than forgetting an unexpired id, which would make it reusable.
pub fn used_capacity(max_calls: usize) -> usize {
    max_calls.saturating_mul(64).max(4096)
}

/// The webhook's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// A slot is held for the stream until it upgrades or the reservation lapses.
    Reserved,
    /// Active calls and reservations fill `MAX_CALLS`: the caller goes to the fallback.
    Full,
}

/// The upgrade's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Bridge the call: it holds a slot until [`Admission::release`].
    Bridge,
    /// This stream id already opened a stream here (409).
    Reused,
    /// `MAX_CALLS` calls are active: accept and close at once (1000), so Twilio follows the
    /// `<Redirect>` and the caller reaches the fallback.
    Full,
    /// Too many unexpired stream ids are remembered ([`used_capacity`]): refused (503).
    TooManyStreams,
    /// The instance no longer bridges calls (draining): accept and close at once (1000), like
    /// [`Admit::Full`]. The id is used all the same.
    NotBridging,
}

/// The slot and stream-id bookkeeping of one instance.
#[derive(Debug)]
pub struct Admission {
    max_calls: usize,
    reserve_for: Duration,
    /// Calls holding a slot.
    active: usize,
    /// Streams minted and not yet upgraded, oldest first: (minted at, call id).
    reserved: VecDeque<(Instant, String)>,
    /// Stream ids that opened a stream here.
    used: HashSet<String>,
    /// The same ids with their expiry (unix seconds), in the order they were used: about the
    /// order they expire (ids are minted `STREAM_TTL_SECS` before they expire and used seconds
    /// later), so forgetting the expired ones looks only at the front.
    used_order: VecDeque<(u64, String)>,
    /// Most entries of `used`.
    used_capacity: usize,
}

impl Admission {
    /// Bookkeeping for `max_calls` slots, reservations lasting `reserve_for`.
    pub fn new(max_calls: usize, reserve_for: Duration) -> Admission {
        Admission {
            max_calls,
            reserve_for,
            active: 0,
            reserved: VecDeque::new(),
            used: HashSet::new(),
            used_order: VecDeque::new(),
            used_capacity: used_capacity(max_calls),
        }
    }

    /// Calls holding a slot.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Reservations still holding a slot at `now`.
    pub fn reserved(&mut self, now: Instant) -> usize {
        self.lapse(now);
        self.reserved.len()
    }

    /// Stream ids remembered as used.
    pub fn used_ids(&self) -> usize {
        self.used.len()
    }

    /// The webhook minted `call_id` at `now`: holds a slot for it, if one is free.
    pub fn reserve(&mut self, now: Instant, call_id: &str) -> Reserve {
        self.lapse(now);
        if self.active + self.reserved.len() >= self.max_calls {
            return Reserve::Full;
        }
        self.reserved.push_back((now, call_id.to_owned()));
        Reserve::Reserved
    }

    /// Gives back the reservation of `call_id` (the webhook did not send the stream after all).
    pub fn unreserve(&mut self, call_id: &str) {
        if let Some(pos) = self.reserved.iter().position(|(_, id)| id == call_id) {
            self.reserved.remove(pos);
        }
    }

    /// The upgrade of a verified stream `call_id` (valid through `expires_at_unix`) arrived;
    /// `bridging` is false while the instance drains past its accept window.
    pub fn admit(
        &mut self,
        now: Instant,
        now_unix: u64,
        call_id: &str,
        expires_at_unix: u64,
        bridging: bool,
    ) -> Admit {
        self.sweep(now_unix);
        self.lapse(now);
        if self.used.contains(call_id) {
            return Admit::Reused;
        }
        if self.used.len() >= self.used_capacity {
            return Admit::TooManyStreams;
        }
        self.used.insert(call_id.to_owned());
        self.used_order
            .push_back((expires_at_unix, call_id.to_owned()));
        self.unreserve(call_id);
        if !bridging {
            return Admit::NotBridging;
        }
        if self.active >= self.max_calls {
            return Admit::Full;
        }
        self.active += 1;
        Admit::Bridge
    }

    /// A call admitted with [`Admit::Bridge`] ended: its slot is free.
    pub fn release(&mut self) {
        debug_assert!(self.active > 0, "a slot released twice");
        self.active = self.active.saturating_sub(1);
    }

    /// Drops the reservations that lapsed by `now` (the oldest are at the front).
    fn lapse(&mut self, now: Instant) {
        while let Some((at, _)) = self.reserved.front() {
            if now.saturating_duration_since(*at) < self.reserve_for {
                break;
            }
            self.reserved.pop_front();
        }
    }

    /// Forgets the used ids that expired before `now_unix`, from the front of the use order
    /// (an id behind one that expires later waits for it: at most a few seconds longer).
    fn sweep(&mut self, now_unix: u64) {
        while let Some((expires, _)) = self.used_order.front() {
            if *expires >= now_unix {
                break;
            }
            if let Some((_, id)) = self.used_order.pop_front() {
                self.used.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESERVE: Duration = Duration::from_secs(5);

    #[test]
    fn reservations_and_active_calls_share_the_limit_and_reservations_lapse() {
        let t0 = Instant::now();
        let mut a = Admission::new(2, RESERVE);
        assert_eq!(a.reserve(t0, "c1"), Reserve::Reserved);
        assert_eq!(a.reserve(t0, "c2"), Reserve::Reserved);
        assert_eq!(a.reserve(t0, "c3"), Reserve::Full);
        // c1 upgrades: its reservation becomes an active call, still two slots used.
        assert_eq!(a.admit(t0, 100, "c1", 200, true), Admit::Bridge);
        assert_eq!((a.active(), a.reserved(t0)), (1, 1));
        assert_eq!(a.reserve(t0, "c3"), Reserve::Full);
        // c2's stream went to another instance: its reservation lapses, no phantom call.
        let later = t0 + RESERVE;
        assert_eq!(a.reserved(later), 0);
        assert_eq!(a.reserve(later, "c3"), Reserve::Reserved);
    }

    #[test]
    fn the_upgrade_is_the_binding_check() {
        let t0 = Instant::now();
        let mut a = Admission::new(1, RESERVE);
        // Two webhooks on other instances minted these; both upgrades land here.
        assert_eq!(a.admit(t0, 100, "c1", 200, true), Admit::Bridge);
        assert_eq!(a.admit(t0, 100, "c2", 200, true), Admit::Full);
        a.release();
        assert_eq!(a.active(), 0);
        assert_eq!(a.admit(t0, 100, "c3", 200, true), Admit::Bridge);
    }

    #[test]
    fn a_stream_id_opens_one_stream_until_it_expires_and_is_then_forgotten() {
        let t0 = Instant::now();
        let mut a = Admission::new(10, RESERVE);
        assert_eq!(a.admit(t0, 100, "c1", 120, true), Admit::Bridge);
        assert_eq!(a.admit(t0, 100, "c1", 120, true), Admit::Reused);
        a.release();
        assert_eq!(
            a.admit(t0, 120, "c1", 120, true),
            Admit::Reused,
            "still valid at its expiry second"
        );
        // Past its expiry the id would not verify anyway: it is forgotten.
        assert_eq!(a.admit(t0, 121, "c2", 300, true), Admit::Bridge);
        assert_eq!(a.used_ids(), 1);
    }

    #[test]
    fn a_refused_full_upgrade_still_uses_its_id() {
        let t0 = Instant::now();
        let mut a = Admission::new(1, RESERVE);
        assert_eq!(a.admit(t0, 100, "c1", 200, true), Admit::Bridge);
        assert_eq!(a.admit(t0, 100, "c2", 200, true), Admit::Full);
        a.release();
        assert_eq!(a.admit(t0, 100, "c2", 200, true), Admit::Reused);
    }

    #[test]
    fn a_draining_instance_uses_the_id_but_bridges_nothing() {
        let t0 = Instant::now();
        let mut a = Admission::new(10, RESERVE);
        assert_eq!(a.reserve(t0, "c1"), Reserve::Reserved);
        assert_eq!(a.admit(t0, 100, "c1", 200, false), Admit::NotBridging);
        assert_eq!((a.active(), a.reserved(t0)), (0, 0));
        assert_eq!(a.admit(t0, 100, "c1", 200, false), Admit::Reused);
    }

    #[test]
    fn used_ids_are_bounded_and_never_forgotten_before_they_expire() {
        let t0 = Instant::now();
        let mut a = Admission::new(1, RESERVE);
        let cap = used_capacity(1);
        for i in 0..cap {
            a.admit(t0, 100, &format!("c{i}"), 200, true);
            a.release();
        }
        assert_eq!(
            a.admit(t0, 100, "one-more", 200, true),
            Admit::TooManyStreams
        );
        assert_eq!(a.admit(t0, 100, "c0", 200, true), Admit::Reused);
        assert_eq!(a.admit(t0, 201, "one-more", 300, true), Admit::Bridge);
    }
}
