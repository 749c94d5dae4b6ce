//! The playout ledger: what audio was sent to Twilio, which marks are outstanding, and from that
//! how much of the current assistant item the caller has actually heard (protocol.md section 6).
//!
//! # The rule
//! Every chunk of assistant audio sent to Twilio is followed by a mark named
//! `e={epoch};i={item_id};ms={cum_ms}`; Twilio echoes it when playout passes it, or when a
//! `clear` discards it. For the item that is playing (the item of the oldest outstanding mark):
//!
//! ```text
//! next_ms      = cum_ms of the oldest outstanding mark of this item
//! played       = min(acked_ms + (now − acked_at), next_ms)     // 1 ms of audio per 1 ms of time
//! audio_end_ms = clamp(played, 0, sent_ms)
//! ```
//!
//! `acked_ms`/`acked_at` are the last echoed mark of the item and when its echo arrived; before
//! the first echo, the moment the item's audio can have started playing (its first send when
//! nothing else was queued, or the echo of the previous item's last mark). When audio is sent while
//! nothing is outstanding (Twilio's buffer ran dry), playout restarts at that send.
//!
//! # On `speech_started` (protocol.md 6.2)
//! - Marks outstanding: audio is playing. `clear` first, then truncate the playing item at
//!   `audio_end_ms` and every item queued behind it (audio sent or only announced) at 0.
//! - Nothing outstanding, no response generating: everything sent was heard; nothing is sent.
//! - Nothing outstanding, a response still generating: no `clear` (Twilio plays nothing), but the
//!   server's item holds audio nobody heard (the deltas still being generated, dropped from now
//!   on). Its current item is truncated at `sent_ms` (every mark came back, so all of it was
//!   heard) and its items whose audio never started at 0.
//!
//! # Error bound
//! The caller's true position lies between the last echoed mark and the next unechoed one, so
//! `|audio_end_ms − heard| ≤ G + L`: `G` is the largest gap between consecutive marks
//! ([`MAX_CHUNK_BYTES`] = 100.1 ms, since longer deltas are split) and `L` the one-way latency
//! to Twilio plus the time Twilio takes to act on `clear`. Audio keeps playing until the `clear`
//! lands, so the caller may have heard up to `L` ms more than reported: underestimating is the safe
//! side (the model may repeat a word; it never believes it said what the caller did not hear).
//!
//! The ledger never reads a clock: `now` is always an argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// μ-law at 8 kHz: one byte per sample, 8 bytes per millisecond.
pub const BYTES_PER_MS: u64 = 8;

/// Longest piece of base64 sent as one Twilio `media` message: 1068 characters = at most 801
/// bytes = 100.1 ms (a 100 ms delta of 800 bytes, 1068 characters with its padding, stays whole). Cutting a base64 string at a multiple of 4 characters keeps every piece valid without
/// decoding; 100 ms between marks bounds the barge-in error (see the module docs).
pub const MAX_CHUNK_B64: usize = 1068;

/// Bytes of audio in a [`MAX_CHUNK_B64`] piece.
pub const MAX_CHUNK_BYTES: u64 = (MAX_CHUNK_B64 as u64 / 4) * 3;

/// Most marks kept outstanding. Twilio buffers at most 10 minutes of audio; at one mark per
/// 100 ms that is 6,000 marks. Past this bound a chunk is sent without its own mark (the next mark
/// covers it): accounting gets coarser, audio is never dropped.
pub const MAX_OUTSTANDING_MARKS: usize = 8192;

/// Assistant items whose audio is tracked at once (the playing one and those queued behind it).
/// Older, fully played items are forgotten; a response rarely has more than one audio item.
const MAX_TRACKED_ITEMS: usize = 64;

/// One assistant item whose audio was sent in the current epoch.
#[derive(Debug)]
struct ItemPlayout {
    /// OpenAI `item_id`.
    item_id: String,
    /// OpenAI `response_id` the item belongs to (to drop late deltas after a barge-in).
    response_id: String,
    /// Audio bytes sent to Twilio for this item (bytes, never rounded ms).
    sent_bytes: u64,
    /// Cumulative ms of the last echoed mark of this item.
    acked_ms: u64,
    /// When playout reached `acked_ms`; `None` while the item waits behind an earlier one.
    acked_at: Option<Instant>,
}

/// A mark sent to Twilio and not yet echoed (always of the current epoch).
#[derive(Debug, Clone, Copy)]
struct PendingMark {
    /// Sequence number of the item (index base + position in `items`).
    item_seq: u64,
    /// Cumulative ms of the item's audio sent when the mark was queued.
    cum_ms: u64,
}

/// What a mark echo turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkEcho {
    /// An outstanding mark of the current epoch: playout passed it.
    Played {
        /// The cumulative ms of the echoed mark.
        cum_ms: u64,
    },
    /// A mark of an earlier epoch: its audio was discarded by `clear`, it was not heard.
    Stale,
    /// A mark of the current epoch that is not outstanding (echoed already, or out of order).
    NotOutstanding,
    /// A name callbridge never produces.
    Unrecognised,
}

/// The decision on `speech_started`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BargeIn {
    /// Whether audio was still playing at Twilio: `clear` goes out first. `false`: nothing was
    /// playing but the response is still generating, so only the truncates are sent.
    pub clear: bool,
    /// The item that was playing (or, with nothing playing, the generating response's item whose
    /// audio was sent last).
    pub item_id: String,
    /// What the caller heard of it, ms, clamped to `[0, sent_ms]`.
    pub audio_end_ms: u64,
    /// Audio sent for it, ms.
    pub sent_ms: u64,
    /// How much the raw estimate exceeded `sent_ms` and was clamped away, ms.
    pub clamped_ms: u64,
    /// Items queued behind it whose audio never started (truncated at 0 ms).
    pub queued_item_ids: Vec<String>,
}

impl BargeIn {
    /// Every `conversation.item.truncate` to send, in order: `(item_id, audio_end_ms)`.
    pub fn truncates(&self) -> impl Iterator<Item = (&str, u64)> {
        std::iter::once((self.item_id.as_str(), self.audio_end_ms))
            .chain(self.queued_item_ids.iter().map(|id| (id.as_str(), 0)))
    }
}

/// Per-call playout accounting; see the module docs for the rule.
#[derive(Debug)]
pub struct Ledger {
    /// Incremented on every `clear`; part of every mark name.
    epoch: u32,
    /// Items with audio in this epoch, oldest first.
    items: VecDeque<ItemPlayout>,
    /// Sequence number of `items[0]`.
    first_item_seq: u64,
    /// Outstanding marks, oldest first.
    marks: VecDeque<PendingMark>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    /// An empty ledger at epoch 0.
    pub fn new() -> Self {
        Ledger {
            epoch: 0,
            items: VecDeque::new(),
            first_item_seq: 0,
            marks: VecDeque::new(),
        }
    }

    /// The current epoch (number of `clear`s sent so far).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Whether any mark of the current epoch is outstanding, i.e. something is still playing.
    pub fn is_playing(&self) -> bool {
        !self.marks.is_empty()
    }

    /// Number of outstanding marks.
    pub fn outstanding_marks(&self) -> usize {
        self.marks.len()
    }

    /// Records `bytes` of audio of `item_id` sent to Twilio at `now`. Returns the cumulative ms to
    /// put in the mark that follows, or `None` when no mark should be sent (the outstanding-mark
    /// bound is reached; the next mark covers this audio).
    pub fn on_audio_sent(
        &mut self,
        now: Instant,
        response_id: &str,
        item_id: &str,
        bytes: u64,
    ) -> Option<u64> {
        let nothing_outstanding = self.marks.is_empty();
        let seq = self.item_seq_for(response_id, item_id, now, nothing_outstanding);
        let idx = (seq - self.first_item_seq) as usize;
        let item = &mut self.items[idx];
        if nothing_outstanding {
            // Twilio's buffer is empty (or this is the first audio): playout of this item
            // (re)starts now, from what was already heard of it.
            item.acked_ms = item.sent_bytes / BYTES_PER_MS;
            item.acked_at = Some(now);
        }
        item.sent_bytes += bytes;
        let cum_ms = item.sent_bytes / BYTES_PER_MS;
        if self.marks.len() >= MAX_OUTSTANDING_MARKS {
            return None;
        }
        self.marks.push_back(PendingMark {
            item_seq: seq,
            cum_ms,
        });
        Some(cum_ms)
    }

    /// An assistant message item whose audio part was announced (`response.content_part.added`),
    /// before any of its audio: if the caller interrupts before its audio starts playing, it is
    /// truncated at 0 (the server may already hold audio for it that nobody will hear).
    pub fn on_item_added(&mut self, now: Instant, response_id: &str, item_id: &str) {
        if item_id.is_empty() {
            return;
        }
        // Created as queued (`acked_at: None`): its first audio sets when playout starts.
        self.item_seq_for(response_id, item_id, now, false);
    }

    /// Finds or creates the ledger entry of `item_id`, returning its sequence number.
    fn item_seq_for(
        &mut self,
        response_id: &str,
        item_id: &str,
        now: Instant,
        nothing_outstanding: bool,
    ) -> u64 {
        if let Some(pos) = self.items.iter().rposition(|it| it.item_id == item_id) {
            return self.first_item_seq + pos as u64;
        }
        // Forget fully played items (no outstanding mark references them) beyond the bound.
        while self.items.len() >= MAX_TRACKED_ITEMS && self.oldest_item_is_done() {
            self.items.pop_front();
            self.first_item_seq += 1;
        }
        self.items.push_back(ItemPlayout {
            item_id: item_id.to_owned(),
            response_id: response_id.to_owned(),
            sent_bytes: 0,
            acked_ms: 0,
            acked_at: nothing_outstanding.then_some(now),
        });
        self.first_item_seq + self.items.len() as u64 - 1
    }

    fn oldest_item_is_done(&self) -> bool {
        match self.marks.front() {
            Some(m) => m.item_seq > self.first_item_seq,
            None => true,
        }
    }

    /// Writes the name of the mark for `item_id` at `cum_ms` into `out` (cleared first).
    pub fn write_mark_name(&self, out: &mut String, item_id: &str, cum_ms: u64) {
        use std::fmt::Write;
        out.clear();
        let _ = write!(out, "e={};i={};ms={}", self.epoch, item_id, cum_ms);
    }

    /// Handles a Twilio mark echo named `name` received at `now`.
    pub fn on_mark_echo(&mut self, now: Instant, name: &str) -> MarkEcho {
        let Some((epoch, item_id, cum_ms)) = parse_mark_name(name) else {
            return MarkEcho::Unrecognised;
        };
        if epoch != self.epoch {
            return MarkEcho::Stale;
        }
        let Some(pos) = self
            .marks
            .iter()
            .position(|m| m.cum_ms == cum_ms && self.item_id_of(m.item_seq) == Some(item_id))
        else {
            return MarkEcho::NotOutstanding;
        };
        // Echoes come in send order: everything queued before this mark has played too.
        let mark = self.marks[pos];
        self.marks.drain(..=pos);
        let idx = (mark.item_seq - self.first_item_seq) as usize;
        let item = &mut self.items[idx];
        item.acked_ms = mark.cum_ms;
        item.acked_at = Some(now);
        // If the next outstanding mark belongs to a later item, that item starts playing now.
        if let Some(next) = self.marks.front().copied() {
            if next.item_seq != mark.item_seq {
                let next_idx = (next.item_seq - self.first_item_seq) as usize;
                let next_item = &mut self.items[next_idx];
                if next_item.acked_at.is_none() {
                    next_item.acked_at = Some(now);
                }
            }
        }
        MarkEcho::Played { cum_ms }
    }

    fn item_id_of(&self, seq: u64) -> Option<&str> {
        let idx = seq.checked_sub(self.first_item_seq)? as usize;
        self.items.get(idx).map(|it| it.item_id.as_str())
    }

    /// The estimate of what the caller has heard of the playing item at `now`, with that item's
    /// id, or `None` when nothing is playing.
    pub fn heard(&self, now: Instant) -> Option<(&str, u64, u64)> {
        let oldest = self.marks.front()?;
        let idx = (oldest.item_seq - self.first_item_seq) as usize;
        let item = &self.items[idx];
        let sent_ms = item.sent_bytes / BYTES_PER_MS;
        let played = match item.acked_at {
            Some(at) => {
                let elapsed_ms = duration_ms(now.saturating_duration_since(at));
                (item.acked_ms + elapsed_ms).min(oldest.cum_ms)
            }
            None => item.acked_ms,
        };
        Some((item.item_id.as_str(), played, sent_ms))
    }

    /// Decides what a `speech_started` at `now` interrupts, given the response still being
    /// generated, if any (`response.created` seen, no `response.done` yet). `None`: nothing to
    /// clear or truncate. Otherwise the epoch advances and the ledger is reset; the caller sends
    /// `clear` (when [`BargeIn::clear`]), then the truncates. See the module docs for the rule.
    pub fn on_speech_started(&mut self, now: Instant, generating: Option<&str>) -> Option<BargeIn> {
        let barge_in = match self.marks.front() {
            Some(oldest) => self.interrupt_playout(now, oldest.item_seq),
            None => self.interrupt_generation(generating?)?,
        };
        self.reset();
        Some(barge_in)
    }

    /// Audio is playing: the playing item at what was heard, the items behind it at 0.
    fn interrupt_playout(&self, now: Instant, playing_seq: u64) -> BargeIn {
        let (item_id, played, sent_ms) = self.heard(now).expect("a mark is outstanding");
        let audio_end_ms = played.min(sent_ms);
        BargeIn {
            clear: true,
            item_id: item_id.to_owned(),
            audio_end_ms,
            sent_ms,
            clamped_ms: played - audio_end_ms,
            queued_item_ids: self
                .items
                .iter()
                .enumerate()
                .filter(|(i, _)| self.first_item_seq + *i as u64 > playing_seq)
                .map(|(_, it)| it.item_id.clone())
                .collect(),
        }
    }

    /// Nothing is playing but `response_id` is still generating: its item whose audio was sent
    /// last at `sent_ms` (all of it was heard), its items whose audio never started at 0. `None`
    /// when the response has no item yet.
    fn interrupt_generation(&self, response_id: &str) -> Option<BargeIn> {
        let of_response = || self.items.iter().filter(|it| it.response_id == response_id);
        let current = of_response().rfind(|it| it.sent_bytes > 0);
        let mut unstarted = of_response()
            .filter(|it| it.sent_bytes == 0)
            .map(|it| it.item_id.clone());
        let (item_id, sent_ms) = match current {
            Some(it) => (it.item_id.clone(), it.sent_bytes / BYTES_PER_MS),
            None => (unstarted.next()?, 0),
        };
        Some(BargeIn {
            clear: false,
            item_id,
            audio_end_ms: sent_ms,
            sent_ms,
            clamped_ms: 0,
            queued_item_ids: unstarted.collect(),
        })
    }

    /// Response ids of every item tracked in this epoch (the playing one and those behind it).
    pub fn response_ids(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|it| it.response_id.as_str())
    }

    /// Clears the ledger and starts a new epoch (after a `clear` was sent).
    fn reset(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.first_item_seq += self.items.len() as u64;
        self.items.clear();
        self.marks.clear();
    }
}

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Parses `e={epoch};i={item_id};ms={cum_ms}`. The item id may itself contain `;`, so the epoch is
/// taken from the front and the ms from the back.
pub fn parse_mark_name(name: &str) -> Option<(u32, &str, u64)> {
    let rest = name.strip_prefix("e=")?;
    let (epoch, rest) = rest.split_once(";i=")?;
    let (item_id, ms) = rest.rsplit_once(";ms=")?;
    let epoch = u32::try_from(parse_digits(epoch)?).ok()?;
    Some((epoch, item_id, parse_digits(ms)?))
}

fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The setup of protocol.md 6.3: item_X, deltas of 400, 2400 and 800 bytes (marks at 50, 350,
    /// 450 ms), first audio sent at t = 1000 ms with nothing else playing.
    fn worked_example() -> (Ledger, Instant) {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        let at = t0 + ms(1000);
        assert_eq!(l.on_audio_sent(at, "resp_R1", "item_X", 400), Some(50));
        assert_eq!(l.on_audio_sent(at, "resp_R1", "item_X", 2400), Some(350));
        assert_eq!(l.on_audio_sent(at, "resp_R1", "item_X", 800), Some(450));
        (l, t0)
    }

    #[test]
    fn example_a_interrupt_after_first_echo() {
        let (mut l, t0) = worked_example();
        assert_eq!(
            l.on_mark_echo(t0 + ms(1080), "e=0;i=item_X;ms=50"),
            MarkEcho::Played { cum_ms: 50 }
        );
        let b = l.on_speech_started(t0 + ms(1180), None).unwrap();
        assert!(b.clear);
        assert_eq!(b.item_id, "item_X");
        assert_eq!(b.audio_end_ms, 150);
        assert_eq!(b.sent_ms, 450);
        assert!(b.queued_item_ids.is_empty());
        assert!(!l.is_playing());
        assert_eq!(l.epoch(), 1);
    }

    #[test]
    fn example_b_estimate_is_capped_by_next_mark_and_sent_audio() {
        let (mut l, t0) = worked_example();
        l.on_mark_echo(t0 + ms(1050), "e=0;i=item_X;ms=50");
        l.on_mark_echo(t0 + ms(1360), "e=0;i=item_X;ms=350");
        let b = l.on_speech_started(t0 + ms(1600), None).unwrap();
        assert_eq!(b.audio_end_ms, 450);
    }

    #[test]
    fn example_b_with_every_mark_echoed_and_the_response_done_sends_nothing() {
        let (mut l, t0) = worked_example();
        l.on_mark_echo(t0 + ms(1050), "e=0;i=item_X;ms=50");
        l.on_mark_echo(t0 + ms(1360), "e=0;i=item_X;ms=350");
        l.on_mark_echo(t0 + ms(1460), "e=0;i=item_X;ms=450");
        assert_eq!(l.on_speech_started(t0 + ms(1600), None), None);
        assert_eq!(l.epoch(), 0, "nothing interrupted, so no new epoch");
    }

    #[test]
    fn example_b_with_every_mark_echoed_and_the_response_generating_truncates_at_sent_ms() {
        // protocol.md 6.3 example B, amended: resp_R1 is still generating, so its item holds
        // audio nobody heard. Everything sent came back, so the truncate is at sent_ms, and no
        // clear goes out (nothing plays).
        let (mut l, t0) = worked_example();
        l.on_mark_echo(t0 + ms(1050), "e=0;i=item_X;ms=50");
        l.on_mark_echo(t0 + ms(1360), "e=0;i=item_X;ms=350");
        l.on_mark_echo(t0 + ms(1460), "e=0;i=item_X;ms=450");
        let b = l.on_speech_started(t0 + ms(1600), Some("resp_R1")).unwrap();
        assert!(!b.clear);
        assert_eq!((b.item_id.as_str(), b.audio_end_ms), ("item_X", 450));
        assert_eq!(b.truncates().collect::<Vec<_>>(), [("item_X", 450)]);
        assert_eq!(l.epoch(), 1);
        assert!(!l.is_playing());
        // A second speech_started of the same turn has nothing left to truncate.
        assert_eq!(l.on_speech_started(t0 + ms(1610), Some("resp_R1")), None);
    }

    #[test]
    fn a_generating_response_truncates_its_last_sent_item_and_its_unstarted_ones_at_zero() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        // An earlier, finished response's item, heard completely.
        l.on_audio_sent(t0, "resp_0", "item_O", 800);
        l.on_mark_echo(t0 + ms(100), "e=0;i=item_O;ms=100");
        // resp_1: item_A heard completely, item_B announced with no audio yet.
        l.on_item_added(t0 + ms(200), "resp_1", "item_A");
        l.on_audio_sent(t0 + ms(210), "resp_1", "item_A", 400);
        l.on_mark_echo(t0 + ms(260), "e=0;i=item_A;ms=50");
        l.on_item_added(t0 + ms(270), "resp_1", "item_B");
        let b = l.on_speech_started(t0 + ms(300), Some("resp_1")).unwrap();
        assert!(!b.clear);
        assert_eq!(
            b.truncates().collect::<Vec<_>>(),
            [("item_A", 50), ("item_B", 0)],
            "resp_0's item is not the generating response's"
        );
    }

    #[test]
    fn a_generating_response_with_only_announced_items_truncates_them_at_zero() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        l.on_item_added(t0, "resp_1", "item_A");
        let b = l.on_speech_started(t0 + ms(5), Some("resp_1")).unwrap();
        assert_eq!(b.truncates().collect::<Vec<_>>(), [("item_A", 0)]);
        // A generating response with no item at all: nothing to truncate.
        assert_eq!(l.on_speech_started(t0 + ms(9), Some("resp_2")), None);
    }

    #[test]
    fn an_announced_item_queued_behind_the_playing_one_is_truncated_at_zero() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        l.on_audio_sent(t0, "r", "item_A", 800);
        l.on_item_added(t0 + ms(5), "r", "item_B");
        let b = l.on_speech_started(t0 + ms(30), Some("r")).unwrap();
        assert!(b.clear);
        assert_eq!(
            b.truncates().collect::<Vec<_>>(),
            [("item_A", 30), ("item_B", 0)]
        );
    }

    #[test]
    fn an_announced_item_starts_playing_at_its_first_audio_or_behind_the_playing_one() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        l.on_item_added(t0, "r", "item_A");
        // Announced at 0, first audio at 500 with nothing playing: playout starts at 500.
        l.on_audio_sent(t0 + ms(500), "r", "item_A", 800);
        let (_, played, _) = l.heard(t0 + ms(540)).unwrap();
        assert_eq!(played, 40);
        // item_B announced now, its audio queued behind item_A's: it starts at A's last echo.
        l.on_item_added(t0 + ms(550), "r", "item_B");
        l.on_audio_sent(t0 + ms(560), "r", "item_B", 800);
        l.on_mark_echo(t0 + ms(600), "e=0;i=item_A;ms=100");
        let (item, played, _) = l.heard(t0 + ms(620)).unwrap();
        assert_eq!((item, played), ("item_B", 20));
    }

    #[test]
    fn example_c_no_echo_yet() {
        let (mut l, t0) = worked_example();
        let b = l.on_speech_started(t0 + ms(1030), None).unwrap();
        assert_eq!(b.audio_end_ms, 30);
    }

    #[test]
    fn nothing_sent_means_nothing_playing() {
        let mut l = Ledger::new();
        assert_eq!(l.on_speech_started(Instant::now(), None), None);
    }

    #[test]
    fn estimate_never_exceeds_audio_sent_even_long_after() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        l.on_audio_sent(t0, "r", "i", 800); // 100 ms, never echoed
        let b = l.on_speech_started(t0 + ms(60_000), None).unwrap();
        assert_eq!(b.audio_end_ms, 100);
        assert_eq!(b.clamped_ms, 0, "capped by the next mark before the clamp");
    }

    #[test]
    fn stale_mark_after_clear_is_ignored() {
        let (mut l, t0) = worked_example();
        l.on_speech_started(t0 + ms(1030), None).unwrap();
        // Twilio echoes the discarded marks after the clear.
        assert_eq!(
            l.on_mark_echo(t0 + ms(1040), "e=0;i=item_X;ms=50"),
            MarkEcho::Stale
        );
        assert_eq!(
            l.on_mark_echo(t0 + ms(1040), "e=0;i=item_X;ms=350"),
            MarkEcho::Stale
        );
        // A new response after the interruption is accounted from scratch.
        assert_eq!(
            l.on_audio_sent(t0 + ms(2000), "resp_R2", "item_Y", 160),
            Some(20)
        );
        assert!(l.is_playing());
        let mut name = String::new();
        l.write_mark_name(&mut name, "item_Y", 20);
        assert_eq!(name, "e=1;i=item_Y;ms=20");
        assert_eq!(
            l.on_mark_echo(t0 + ms(2020), &name),
            MarkEcho::Played { cum_ms: 20 }
        );
        assert!(!l.is_playing());
    }

    #[test]
    fn out_of_order_and_repeated_echoes_do_not_move_playout_backwards() {
        let (mut l, t0) = worked_example();
        assert_eq!(
            l.on_mark_echo(t0 + ms(1350), "e=0;i=item_X;ms=350"),
            MarkEcho::Played { cum_ms: 350 }
        );
        // The echo of 50 arrives late: 350 already implied it.
        assert_eq!(
            l.on_mark_echo(t0 + ms(1360), "e=0;i=item_X;ms=50"),
            MarkEcho::NotOutstanding
        );
        assert_eq!(
            l.on_mark_echo(t0 + ms(1361), "e=0;i=item_X;ms=350"),
            MarkEcho::NotOutstanding
        );
        let (_, played, _) = l.heard(t0 + ms(1400)).unwrap();
        assert_eq!(played, 400);
    }

    #[test]
    fn marks_never_sent_are_recognised_as_such() {
        let (mut l, t0) = worked_example();
        let now = t0 + ms(1100);
        assert_eq!(l.on_mark_echo(now, "responsePart"), MarkEcho::Unrecognised);
        assert_eq!(
            l.on_mark_echo(now, "e=x;i=item_X;ms=50"),
            MarkEcho::Unrecognised
        );
        assert_eq!(
            l.on_mark_echo(now, "e=0;i=item_X;ms="),
            MarkEcho::Unrecognised
        );
        assert_eq!(
            l.on_mark_echo(now, "e=99999999999;i=item_X;ms=50"),
            MarkEcho::Unrecognised
        );
        assert_eq!(
            l.on_mark_echo(now, "e=0;i=item_Z;ms=50"),
            MarkEcho::NotOutstanding
        );
        assert_eq!(
            l.on_mark_echo(now, "e=0;i=item_X;ms=51"),
            MarkEcho::NotOutstanding
        );
        assert_eq!(l.outstanding_marks(), 3);
    }

    #[test]
    fn item_ids_with_separators_round_trip() {
        assert_eq!(
            parse_mark_name("e=3;i=it;ms=5;x;ms=1240"),
            Some((3, "it;ms=5;x", 1240))
        );
        assert_eq!(parse_mark_name("e=3;i=;ms=0"), Some((3, "", 0)));
    }

    #[test]
    fn many_small_and_large_deltas_accumulate_bytes_not_rounded_ms() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        // 3 bytes each: rounded ms per delta would be 0 and lose all of it.
        let mut last = None;
        for _ in 0..80 {
            last = l.on_audio_sent(t0, "r", "i", 3);
        }
        assert_eq!(last, Some(30)); // 240 bytes = 30 ms
        let (_, _, sent) = l.heard(t0).unwrap();
        assert_eq!(sent, 30);
    }

    #[test]
    fn buffer_underrun_restarts_playout_at_the_next_send() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        l.on_audio_sent(t0, "r", "i", 400); // 50 ms
        l.on_mark_echo(t0 + ms(50), "e=0;i=i;ms=50");
        // OpenAI stalls for 450 ms; Twilio's buffer is empty, the caller hears silence.
        l.on_audio_sent(t0 + ms(500), "r", "i", 800); // up to 150 ms
        let b = l.on_speech_started(t0 + ms(540), None).unwrap();
        assert_eq!(
            b.audio_end_ms, 90,
            "50 heard before the stall + 40 since the restart"
        );
    }

    #[test]
    fn response_done_before_playout_ends_still_counts_as_playing() {
        // The ledger knows nothing of response.done: outstanding marks are what matters.
        let (mut l, t0) = worked_example();
        assert!(l.is_playing());
        let b = l.on_speech_started(t0 + ms(1200), None).unwrap();
        assert_eq!(b.audio_end_ms, 50, "capped by the first unechoed mark");
    }

    #[test]
    fn second_item_starts_when_the_first_items_last_mark_is_echoed() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        l.on_audio_sent(t0, "r", "item_A", 800); // A: 100 ms
        l.on_audio_sent(t0 + ms(5), "r", "item_B", 1600); // B: 200 ms, queued behind A
        l.on_mark_echo(t0 + ms(110), "e=0;i=item_A;ms=100");
        let b = l.on_speech_started(t0 + ms(170), None).unwrap();
        assert_eq!(b.item_id, "item_B");
        assert_eq!(b.audio_end_ms, 60);
        assert!(b.queued_item_ids.is_empty());
    }

    #[test]
    fn items_queued_behind_the_playing_one_are_reported_for_zero_truncation() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        l.on_audio_sent(t0, "r", "item_A", 800);
        l.on_audio_sent(t0, "r", "item_B", 800);
        let b = l.on_speech_started(t0 + ms(30), None).unwrap();
        assert_eq!(b.item_id, "item_A");
        assert_eq!(b.audio_end_ms, 30);
        assert_eq!(b.queued_item_ids, vec!["item_B".to_string()]);
    }

    #[test]
    fn two_speech_started_in_a_row_interrupt_once() {
        let (mut l, t0) = worked_example();
        assert!(l.on_speech_started(t0 + ms(1100), None).is_some());
        assert_eq!(l.on_speech_started(t0 + ms(1120), None), None);
    }

    #[test]
    fn time_going_backwards_is_treated_as_no_time_passing() {
        let (mut l, t0) = worked_example();
        l.on_mark_echo(t0 + ms(1080), "e=0;i=item_X;ms=50");
        let b = l.on_speech_started(t0 + ms(1000), None).unwrap();
        assert_eq!(b.audio_end_ms, 50);
    }

    #[test]
    fn outstanding_marks_are_bounded_but_audio_is_still_counted() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        for _ in 0..MAX_OUTSTANDING_MARKS {
            assert!(l.on_audio_sent(t0, "r", "i", 8).is_some());
        }
        assert_eq!(l.on_audio_sent(t0, "r", "i", 8), None);
        assert_eq!(l.outstanding_marks(), MAX_OUTSTANDING_MARKS);
        let (_, _, sent) = l.heard(t0).unwrap();
        assert_eq!(sent, MAX_OUTSTANDING_MARKS as u64 + 1);
    }
}
