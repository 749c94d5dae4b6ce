//! What every simulated caller says: a conversation that loops until the run ends.
//!
//! ```text
//!  cycle (10.5 s):  HELLO (2.4 s) … VAD end … answer plays (3 s) … WAIT barge-in at 4.5 s
//!                   (clear + truncate ~1.5 s into the answer) … second answer plays in full
//!  0 ─────── 2.4 ── ~3.0 ─────────── 4.5 ─── 6.4 ── ~7.0 ───────────── ~10.0 ── 10.5 → next cycle
//! ```
//!
//! The timing follows the mock's defaults (3 s answers at 4× real time, 100 ms to the first
//! delta) and callbridge's default VAD silence (500 ms): the barge-in lands while the first
//! answer is still playing at the caller, and the second answer ends before the next cycle.

use callbridge_testkit::sim::script::{Clip, Script, Segment, FRAME_MS};

/// Length of one conversation cycle, ms.
pub const CYCLE_MS: u32 = 10_500;

/// Where in a cycle the barge-in starts, ms.
pub const BARGE_IN_AT_MS: u32 = 4_500;

/// The looping script of a call that lasts `total_ms` (rounded down to whole frames; at least
/// one frame): cycles of speech, answer, barge-in, answer; the caller hangs up at the end.
pub fn looping(total_ms: u32) -> Script {
    let total_ms = (total_ms / FRAME_MS * FRAME_MS).max(FRAME_MS);
    let mut segments = Vec::new();
    let mut at = 0;
    while at < total_ms {
        segments.push(Segment::SpeakAt {
            at_ms: at,
            clip: Clip::HELLO_EN,
        });
        segments.push(Segment::BargeInAt {
            at_ms: at + BARGE_IN_AT_MS,
            clip: Clip::WAIT_EN,
        });
        at += CYCLE_MS;
    }
    segments.push(Segment::HangUpAt { at_ms: total_ms });
    Script::new(segments).expect("the cycle's segments never overlap")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_repeat_and_the_call_ends_on_time() {
        let s = looping(25_000);
        assert_eq!(s.duration_ms(), 25_000);
        let starts: Vec<u64> = s.utterances().iter().map(|u| u.start_ms()).collect();
        assert_eq!(starts, [0, 4_500, 10_500, 15_000, 21_000]);
        assert_eq!(
            s.utterances().iter().filter(|u| u.barge_in).count(),
            2,
            "the third cycle's barge-in falls after the hang-up"
        );
    }

    #[test]
    fn the_longest_run_allowed_makes_a_valid_script() {
        // `--duration` is capped (main.rs MAX_DURATION); that call must still get its script.
        let ms = u32::try_from(crate::MAX_DURATION.as_millis()).unwrap();
        assert_eq!(looping(ms).duration_ms(), u64::from(ms));
    }

    #[test]
    fn tiny_and_odd_lengths_are_whole_frames() {
        assert_eq!(looping(0).frame_count(), 1);
        assert_eq!(looping(1_019).duration_ms(), 1_000);
    }
}
