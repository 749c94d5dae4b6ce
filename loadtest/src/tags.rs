//! Frame tags and the checkers that find lost, duplicated, reordered and corrupt frames.
//!
//! Both directions carry 20 ms blocks (160 μ-law bytes) whose first 16 bytes are a tag written
//! by `callbridge_testkit::sim::script::tag_frame`: `(call number, sequence number)`.
//!
//! - **Uplink** (caller → proxy → mock): the simulated caller tags frame `n` of its script with
//!   `(call, n)`; the mock checks each `input_audio_buffer.append`: tag readable, the call's own,
//!   and the other 144 bytes exactly the script's frame `n` ([`UplinkExpect::frame`]).
//! - **Downlink** (mock → proxy → caller): the mock's tap rewrites each 160-byte block of every
//!   delta as `(call, k)` + a fixed tone body ([`downlink_block`]), `k` counting blocks per call.
//!   callbridge cuts deltas into pieces at multiples of 3 bytes (base64 quads), so the caller
//!   reassembles the byte stream ([`BlockStream`]) and checks each 160-byte block; a block that
//!   does not verify is counted corrupt and the stream resynchronises on the next valid block.
//!
//! [`SeqChecker`] turns the sequence numbers seen into counts: a number past the next expected
//! one leaves a gap (provisionally lost), a gap filled later is a reordered frame, a number seen
//! before is a duplicate.

use std::collections::BTreeSet;

use callbridge_testkit::sim::script::{read_tag, tag_frame, Script, FRAME_BYTES, TAG_BYTES};
use serde::Serialize;

/// Gaps remembered per stream for reorder detection; a stream missing more frames than this is
/// broken anyway (the excess is still counted lost, it just can no longer be told "reordered").
const MAX_TRACKED_GAPS: usize = 4096;

/// What a checker counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FrameCounts {
    /// Frames received that verified (first arrival of each sequence number).
    pub ok: u64,
    /// Sequence numbers never received (gaps, and frames sent but never received at the end).
    pub lost: u64,
    /// Of `lost`, those after the last frame received (the tail of a call).
    pub lost_at_end: u64,
    /// Sequence numbers received more than once (each extra copy).
    pub duplicated: u64,
    /// Frames that arrived after a later one (they filled a gap).
    pub reordered: u64,
    /// Blocks whose tag or content did not verify (another call's frame counts here too).
    pub corrupt: u64,
}

impl FrameCounts {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &FrameCounts) {
        self.ok += o.ok;
        self.lost += o.lost;
        self.lost_at_end += o.lost_at_end;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.corrupt += o.corrupt;
    }

    /// Whether anything went wrong.
    pub fn any_error(&self) -> bool {
        self.lost + self.duplicated + self.reordered + self.corrupt > 0
    }
}

/// Loss, duplication and reordering of one sequence (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct SeqChecker {
    /// One past the highest sequence number seen (`u64`: after `u32::MAX` it is 2^32).
    next: u64,
    /// Numbers below `next` not (yet) seen.
    gaps: BTreeSet<u32>,
    /// Gaps that could not be tracked.
    untracked_gaps: u64,
    /// Counts so far (`lost` is computed by [`SeqChecker::counts`]).
    counts: FrameCounts,
}

/// How a sequence number was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First arrival, in order or past a gap.
    InOrder,
    /// First arrival, late (it filled a gap).
    Reordered,
    /// Already seen.
    Duplicate,
}

impl SeqChecker {
    /// Records sequence number `seq`.
    pub fn observe(&mut self, seq: u32) -> Seen {
        let s = u64::from(seq);
        if s >= self.next {
            // A corrupt tag can jump billions ahead: track what fits, count the rest at once.
            let room = MAX_TRACKED_GAPS.saturating_sub(self.gaps.len()) as u64;
            let tracked_to = s.min(self.next + room);
            // Both ends are at most `seq`, so every gap fits a u32.
            self.gaps.extend((self.next..tracked_to).map(|g| g as u32));
            self.untracked_gaps += s - tracked_to;
            self.next = s + 1;
            self.counts.ok += 1;
            Seen::InOrder
        } else if self.gaps.remove(&seq) {
            self.counts.ok += 1;
            self.counts.reordered += 1;
            Seen::Reordered
        } else {
            self.counts.duplicated += 1;
            Seen::Duplicate
        }
    }

    /// Records a block that did not verify.
    pub fn corrupt(&mut self) {
        self.counts.corrupt += 1;
    }

    /// One past the highest sequence number seen (0: none).
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The counts; `expected_total` (if known) also counts numbers never seen at the end.
    pub fn counts(&self, expected_total: Option<u32>) -> FrameCounts {
        let mut c = self.counts;
        c.lost = self.gaps.len() as u64 + self.untracked_gaps;
        if let Some(total) = expected_total {
            c.lost_at_end = u64::from(total).saturating_sub(self.next);
            c.lost += c.lost_at_end;
        }
        c
    }
}

/// The 144 bytes after the tag of every downlink block: a fixed 400 Hz tone (so it is audio,
/// not silence, for anyone listening).
fn downlink_body() -> &'static [u8; FRAME_BYTES] {
    static BODY: std::sync::OnceLock<[u8; FRAME_BYTES]> = std::sync::OnceLock::new();
    BODY.get_or_init(|| {
        let tone = callbridge_testkit::mock::mock_audio(1, 0, FRAME_BYTES);
        let mut b = [0u8; FRAME_BYTES];
        b.copy_from_slice(&tone);
        b
    })
}

/// Downlink block `seq` of call `call_no`: tag, then the fixed body.
pub fn downlink_block(call_no: u32, seq: u32) -> [u8; FRAME_BYTES] {
    let mut b = *downlink_body();
    tag_frame(call_no, seq, &mut b);
    b
}

/// The sequence number of a valid downlink block of `call_no`, or `None`.
fn verify_downlink(call_no: u32, block: &[u8]) -> Option<u32> {
    let (c, seq) = read_tag(block)?;
    (c == call_no && block[TAG_BYTES..] == downlink_body()[TAG_BYTES..]).then_some(seq)
}

/// What the uplink checker compares against: the call's script.
#[derive(Debug, Clone)]
pub struct UplinkExpect {
    /// The call number in the tags.
    pub call_no: u32,
    /// The script the caller plays.
    pub script: Script,
}

impl UplinkExpect {
    /// The exact bytes of caller frame `n`.
    pub fn frame(&self, n: u32) -> [u8; FRAME_BYTES] {
        let mut f = [0u8; FRAME_BYTES];
        self.script.fill_frame(n, &mut f);
        tag_frame(self.call_no, n, &mut f);
        f
    }

    /// Checks one append's audio (whole frames); returns the valid sequence numbers in order and
    /// counts into `seq`.
    pub fn check(&self, audio: &[u8], seq: &mut SeqChecker, valid: &mut Vec<u32>) {
        if audio.is_empty() || !audio.len().is_multiple_of(FRAME_BYTES) {
            seq.corrupt();
            return;
        }
        for block in audio.chunks_exact(FRAME_BYTES) {
            match read_tag(block) {
                Some((c, n)) if c == self.call_no && block == self.frame(n) => {
                    if seq.observe(n) != Seen::Duplicate {
                        valid.push(n);
                    }
                }
                _ => seq.corrupt(),
            }
        }
    }
}

/// The downlink byte stream of one call, cut back into blocks (see the module docs).
#[derive(Debug, Clone)]
pub struct BlockStream {
    /// The call number expected in every tag.
    call_no: u32,
    /// Bytes not yet forming a whole block.
    carry: Vec<u8>,
    /// Bytes skipped since the stream went out of step (0: in step).
    skipped: u64,
    /// The sequence check.
    pub seq: SeqChecker,
}

impl BlockStream {
    /// An empty stream for `call_no`.
    pub fn new(call_no: u32) -> Self {
        BlockStream {
            call_no,
            carry: Vec::with_capacity(4 * FRAME_BYTES),
            skipped: 0,
            seq: SeqChecker::default(),
        }
    }

    /// Feeds received bytes; pushes the sequence numbers of blocks that completed and verified
    /// (first arrivals only) to `valid`. Bytes that do not form a valid block are skipped up to
    /// the next block that verifies; each started 160 bytes skipped count one corrupt block.
    pub fn push(&mut self, bytes: &[u8], valid: &mut Vec<u32>) {
        self.carry.extend_from_slice(bytes);
        let mut at = 0;
        while self.carry.len() - at >= FRAME_BYTES {
            if let Some(n) = verify_downlink(self.call_no, &self.carry[at..at + FRAME_BYTES]) {
                self.end_skip();
                if self.seq.observe(n) != Seen::Duplicate {
                    valid.push(n);
                }
                at += FRAME_BYTES;
                continue;
            }
            let last_start = self.carry.len() - FRAME_BYTES;
            let resync = (at + 1..=last_start).find(|&k| {
                verify_downlink(self.call_no, &self.carry[k..k + FRAME_BYTES]).is_some()
            });
            let to = resync.unwrap_or(last_start + 1);
            self.skipped += (to - at) as u64;
            at = to;
        }
        self.carry.drain(..at);
    }

    /// Counts a skipped stretch as corrupt blocks.
    fn end_skip(&mut self) {
        for _ in 0..self.skipped.div_ceil(FRAME_BYTES as u64) {
            self.seq.corrupt();
        }
        self.skipped = 0;
    }

    /// Ends the stream: a pending skipped stretch is counted; returns the bytes of a last block
    /// that never completed (the caller hung up in the middle of a piece: not an error).
    pub fn finish(&mut self) -> usize {
        if self.skipped > 0 {
            self.skipped += self.carry.len() as u64;
            self.carry.clear();
            self.end_skip();
        }
        std::mem::take(&mut self.carry).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callbridge_testkit::sim::script::{Clip, Segment};

    fn counts(seqs: &[u32], total: Option<u32>) -> FrameCounts {
        let mut c = SeqChecker::default();
        for &s in seqs {
            c.observe(s);
        }
        c.counts(total)
    }

    #[test]
    fn in_order_sequence_is_clean() {
        let c = counts(&[0, 1, 2, 3], Some(4));
        assert_eq!(c.ok, 4);
        assert!(!c.any_error());
    }

    #[test]
    fn a_missing_frame_is_lost_in_the_middle_and_at_the_end() {
        let c = counts(&[0, 1, 3, 4], Some(5));
        assert_eq!((c.ok, c.lost), (4, 1));
        let c = counts(&[0, 1, 2], Some(5));
        assert_eq!(c.lost, 2, "frames sent but never received at the end");
        assert_eq!(c.lost_at_end, 2);
    }

    #[test]
    fn a_repeated_frame_is_a_duplicate() {
        let c = counts(&[0, 1, 1, 2, 0], Some(3));
        assert_eq!((c.ok, c.duplicated, c.lost, c.reordered), (3, 2, 0, 0));
    }

    #[test]
    fn a_late_frame_is_reordered_not_lost() {
        let c = counts(&[0, 2, 1, 3], Some(4));
        assert_eq!((c.ok, c.reordered, c.lost, c.duplicated), (4, 1, 0, 0));
        // …and its second copy is a duplicate.
        let c = counts(&[0, 2, 1, 1, 3], Some(4));
        assert_eq!((c.reordered, c.duplicated), (1, 1));
    }

    #[test]
    fn a_far_jump_is_counted_lost_at_once_and_late_frames_still_reorder() {
        // One flipped nibble of a well-formed tag: sequence number 2 reads as 2 + 2^31.
        let far = 2 + (1 << 31);
        let t = std::time::Instant::now();
        let c = counts(&[0, 1, far, 2, 3], None);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "O(gap) walk"
        );
        assert_eq!((c.ok, c.reordered, c.duplicated), (5, 2, 0));
        assert_eq!(
            c.lost,
            u64::from(far) - 4,
            "every number skipped but 2 and 3"
        );
        // The gaps past the tracked ones are lost but can no longer be told reordered.
        let mut s = SeqChecker::default();
        s.observe(far);
        assert_eq!(s.observe(MAX_TRACKED_GAPS as u32 - 1), Seen::Reordered);
        assert_eq!(s.observe(MAX_TRACKED_GAPS as u32), Seen::Duplicate);
    }

    #[test]
    fn the_highest_sequence_number_seen_twice_is_a_duplicate() {
        // u32::MAX is a readable sequence number (only the tag (u32::MAX, u32::MAX) is not).
        let mut s = SeqChecker::default();
        assert_eq!(s.observe(u32::MAX - 1), Seen::InOrder);
        assert_eq!(s.observe(u32::MAX), Seen::InOrder);
        assert_eq!(s.observe(u32::MAX), Seen::Duplicate);
        assert_eq!(s.next(), 1 << 32);
        let c = s.counts(Some(u32::MAX));
        assert_eq!((c.ok, c.duplicated, c.lost_at_end), (2, 1, 0));
    }

    fn expect() -> UplinkExpect {
        let script = Script::new(vec![Segment::Speak(Clip::HELLO_EN)]).unwrap();
        UplinkExpect { call_no: 7, script }
    }

    #[test]
    fn uplink_frames_verify_byte_exact() {
        let e = expect();
        let (mut seq, mut valid) = (SeqChecker::default(), Vec::new());
        for n in 0..5 {
            e.check(&e.frame(n), &mut seq, &mut valid);
        }
        assert_eq!(valid, [0, 1, 2, 3, 4]);
        assert!(!seq.counts(Some(5)).any_error());
    }

    #[test]
    fn uplink_corruption_is_detected_in_the_tag_the_body_and_the_call() {
        let e = expect();
        let (mut seq, mut valid) = (SeqChecker::default(), Vec::new());
        let mut f = e.frame(0);
        f[100] ^= 0x01; // one bit of audio
        e.check(&f, &mut seq, &mut valid);
        let mut f = e.frame(1);
        f[3] = 0x00; // the tag
        e.check(&f, &mut seq, &mut valid);
        let other = UplinkExpect {
            call_no: 8,
            script: e.script.clone(),
        };
        e.check(&other.frame(2), &mut seq, &mut valid); // another call's frame
        e.check(&e.frame(3)[..100], &mut seq, &mut valid); // a short append
        assert!(valid.is_empty());
        assert_eq!(seq.counts(None).corrupt, 4);
    }

    #[test]
    fn uplink_two_frames_in_one_append_both_count() {
        let e = expect();
        let (mut seq, mut valid) = (SeqChecker::default(), Vec::new());
        let mut two = e.frame(0).to_vec();
        two.extend_from_slice(&e.frame(1));
        e.check(&two, &mut seq, &mut valid);
        assert_eq!(valid, [0, 1]);
    }

    fn stream_of(call: u32, seqs: std::ops::Range<u32>) -> Vec<u8> {
        seqs.flat_map(|k| downlink_block(call, k)).collect()
    }

    #[test]
    fn downlink_blocks_survive_any_cut_into_pieces() {
        let bytes = stream_of(3, 0..20);
        for piece in [1, 3, 7, 159, 160, 161, 801, 3200] {
            let (mut s, mut valid) = (BlockStream::new(3), Vec::new());
            for chunk in bytes.chunks(piece) {
                s.push(chunk, &mut valid);
            }
            assert_eq!(valid, (0..20).collect::<Vec<_>>(), "pieces of {piece}");
            assert_eq!(s.finish(), 0);
            assert!(!s.seq.counts(None).any_error());
        }
    }

    #[test]
    fn downlink_lost_piece_is_corrupt_then_lost_and_the_stream_resyncs() {
        let bytes = stream_of(3, 0..10);
        let (mut s, mut valid) = (BlockStream::new(3), Vec::new());
        // Drop bytes 400..900 (a piece cut at multiples of 3 bytes, as callbridge cuts).
        s.push(&bytes[..400], &mut valid);
        s.push(&bytes[900..], &mut valid);
        assert_eq!(s.finish(), 0);
        let c = s.seq.counts(None);
        assert_eq!(c.corrupt, 1, "{c:?}");
        assert_eq!(valid, [0, 1, 6, 7, 8, 9]);
        assert_eq!(c.lost, 4);
    }

    #[test]
    fn downlink_garbage_at_the_end_is_corrupt() {
        let (mut s, mut valid) = (BlockStream::new(3), Vec::new());
        s.push(&stream_of(3, 0..1), &mut valid);
        s.push(&[0x11; 400], &mut valid);
        s.finish();
        assert_eq!(s.seq.counts(None).corrupt, 3);
    }

    #[test]
    fn downlink_duplicate_reorder_and_flip_are_detected() {
        let (mut s, mut valid) = (BlockStream::new(3), Vec::new());
        s.push(&stream_of(3, 0..2), &mut valid);
        s.push(&stream_of(3, 1..2), &mut valid); // duplicate of 1
        s.push(&stream_of(3, 3..4), &mut valid);
        s.push(&stream_of(3, 2..3), &mut valid); // late
        let mut flipped = downlink_block(3, 4);
        flipped[50] ^= 0x80;
        s.push(&flipped, &mut valid);
        s.push(&downlink_block(9, 5), &mut valid); // another call's audio
        s.push(&stream_of(3, 6..7), &mut valid);
        s.push(&downlink_block(3, 7)[..100], &mut valid); // hung up mid-block
        assert_eq!(s.finish(), 100);
        let c = s.seq.counts(None);
        assert_eq!(
            (c.duplicated, c.reordered, c.corrupt, c.lost),
            (1, 1, 2, 2),
            "{c:?}"
        );
        assert_eq!(valid, [0, 1, 3, 2, 6]);
    }
}
