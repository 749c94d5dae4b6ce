//! Twilio's outbound playout buffer, modelled with a fake clock (protocol.md 4.1 `mark`, 4.2).
//!
//! ```text
//!   media(bytes) ─┐                       8 bytes of μ-law = 1 ms of real time
//!   mark(name)  ──┼─▶ [ audio | mark | audio | audio | mark ] ──▶ caller's ear
//!   clear       ──┘        ▲ head plays first; a mark at the head is echoed at once
//! ```
//!
//! What Twilio does, and this model with it:
//! - `media` is queued and played in the order received, at 8 bytes per ms of real time. Playout
//!   starts when audio is queued into an empty buffer; when the buffer runs dry the caller hears
//!   silence until more audio arrives (no catching up).
//! - a `mark` is echoed when all audio queued before it has played, or at once when no audio is
//!   buffered.
//! - `clear` discards every unplayed byte and echoes every pending mark, in the order sent.
//! - more than 10 minutes of buffered audio: further `media` is discarded (warning 31931).
//!
//! Per-item truth: the caller must say how many ms of an assistant item it *really* played, to
//! compare with callbridge's `conversation.item.truncate.audio_end_ms`. Each `media` message is a
//! chunk; a chunk belongs to the item of the first mark queued **after** it (callbridge sends
//! `media` then `mark` named `e={epoch};i={item_id};ms={cum}`). Only the item id is read from the
//! name; the ms are counted here from the bytes that actually played, never taken from `ms=`.
//! Audio never followed by a mark (or cut off by a `clear` before its mark arrived) stays
//! unattributed.
//!
//! Time is an argument (`now`); a `now` earlier than the last one is treated as the last one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// μ-law at 8 kHz: one byte per sample, so 8 bytes are 1 ms of audio.
pub const BYTES_PER_MS: u64 = 8;

/// Real time one byte takes to play (1 ms / 8), in nanoseconds. Keeping the clock in ns makes
/// the model exact: no ms rounding accumulates over a call.
const NANOS_PER_BYTE: u64 = 125_000;

/// Twilio buffers at most 10 minutes of outbound audio; past that, further audio is discarded
/// and warning 31931 ("Media Discarded") is logged (protocol.md 4.2).
pub const MAX_BUFFERED_BYTES: u64 = 10 * 60 * 1000 * BYTES_PER_MS;

/// Identifies one `media` message pushed into the [`Playout`] (its index, in push order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub usize);

/// One queued entry, in the order Twilio received it.
#[derive(Debug)]
enum Entry {
    /// Audio of a chunk, `remaining` bytes not yet played.
    Audio { chunk: ChunkId, remaining: u64 },
    /// A mark waiting for the audio before it to play.
    Mark { name: String },
}

/// Which assistant item a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// No mark has followed it yet.
    Pending,
    /// The item of the first mark that followed it (index into `Playout::items`).
    Item(usize),
    /// Cut off by a `clear`, or followed by a mark whose name has no item: never attributable.
    Orphan,
}

/// What happened to one `media` message.
#[derive(Debug)]
struct Chunk {
    /// Bytes in the message.
    len: u64,
    /// Bytes of it the caller heard.
    played: u64,
    /// Bytes of it a `clear` discarded.
    discarded: u64,
    /// Whether the whole message was refused because the buffer was over its cap.
    dropped: bool,
    /// The item it belongs to, once known.
    owner: Owner,
}

/// How much of one assistant item was queued and really played.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemPlayout {
    /// The `item_id` read from the marks that followed the item's audio.
    pub item_id: String,
    /// Bytes of the item's audio that reached the buffer (attributed so far).
    pub queued_bytes: u64,
    /// Bytes of the item's audio the caller heard.
    pub played_bytes: u64,
    /// Bytes of the item's audio discarded by `clear`.
    pub discarded_bytes: u64,
}

impl ItemPlayout {
    /// Milliseconds of the item the caller heard (whole ms, rounded down, as `audio_end_ms`).
    pub fn played_ms(&self) -> u64 {
        self.played_bytes / BYTES_PER_MS
    }
}

/// The playout buffer of one stream. See the module docs for the rules it models.
#[derive(Debug, Default)]
pub struct Playout {
    /// Entries not yet played or echoed; invariant after every `play_until`: empty or audio first.
    queue: VecDeque<Entry>,
    /// Sum of `remaining` over the queued audio.
    buffered_bytes: u64,
    /// The last `now` seen; `None` before the first call.
    last_now: Option<Instant>,
    /// Time already elapsed towards the next byte (< one byte's time), so playout stays exact.
    carry_ns: u64,
    /// Marks whose audio has played, not yet returned by [`Playout::advance`] or
    /// [`Playout::clear`].
    ready: VecDeque<String>,
    /// Every `media` message ever pushed, indexed by [`ChunkId`].
    chunks: Vec<Chunk>,
    /// Items in the order their first mark arrived.
    items: Vec<ItemPlayout>,
    /// Total bytes the caller heard.
    played_total: u64,
    /// Total bytes discarded by `clear`.
    discarded_total: u64,
    /// Total bytes refused because more than [`MAX_BUFFERED_BYTES`] were buffered.
    dropped_total: u64,
}

impl Playout {
    /// An empty buffer; the clock starts at the first call.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `bytes_len` bytes of audio received at `now` (one `media` message). Playout starts
    /// at `now` if the buffer was empty. Returns the chunk's id, to ask later which item it
    /// belonged to ([`Playout::chunk_item`]).
    pub fn push_media(&mut self, now: Instant, bytes_len: usize) -> ChunkId {
        self.play_until(now);
        let len = bytes_len as u64;
        let id = ChunkId(self.chunks.len());
        let dropped = self.buffered_bytes + len > MAX_BUFFERED_BYTES;
        self.chunks.push(Chunk {
            len,
            played: 0,
            discarded: 0,
            dropped,
            owner: Owner::Pending,
        });
        if dropped {
            self.dropped_total += len;
        } else if len > 0 {
            self.buffered_bytes += len;
            self.queue.push_back(Entry::Audio {
                chunk: id,
                remaining: len,
            });
        }
        id
    }

    /// Queues the mark `name` received at `now`. The unattributed audio before it becomes its
    /// item's. With no audio buffered it is ready at once (returned by the next
    /// [`Playout::advance`]).
    pub fn push_mark(&mut self, now: Instant, name: &str) {
        self.play_until(now);
        let owner = match mark_item_id(name) {
            Some(item_id) => Owner::Item(self.item_index(item_id)),
            None => Owner::Orphan,
        };
        self.settle_pending(owner);
        if self.queue.is_empty() {
            self.ready.push_back(name.to_owned());
        } else {
            self.queue.push_back(Entry::Mark {
                name: name.to_owned(),
            });
        }
    }

    /// Plays audio up to `now` and returns the marks to echo, in order: those whose preceding
    /// audio has fully played, and those queued with no audio before them.
    pub fn advance(&mut self, now: Instant) -> Vec<String> {
        self.play_until(now);
        self.ready.drain(..).collect()
    }

    /// Handles a `clear` received at `now`: plays what was due before it, discards every
    /// unplayed byte, and returns every mark to echo, in order (those that played before `now`,
    /// then the discarded ones). Audio pushed afterwards plays normally.
    pub fn clear(&mut self, now: Instant) -> Vec<String> {
        self.play_until(now);
        let mut echoed: Vec<String> = self.ready.drain(..).collect();
        for entry in self.queue.drain(..) {
            match entry {
                Entry::Audio { chunk, remaining } => {
                    let c = &mut self.chunks[chunk.0];
                    c.discarded += remaining;
                    if let Owner::Item(i) = c.owner {
                        self.items[i].discarded_bytes += remaining;
                    }
                    self.discarded_total += remaining;
                }
                Entry::Mark { name } => echoed.push(name),
            }
        }
        self.settle_pending(Owner::Orphan);
        self.buffered_bytes = 0;
        self.carry_ns = 0;
        echoed
    }

    /// When the oldest queued mark will be due (or `now` of the last call if one is already
    /// ready); `None` when no mark is waiting. Lets a driver sleep exactly until the next echo.
    pub fn next_mark_due(&self) -> Option<Instant> {
        let last = self.last_now?;
        if !self.ready.is_empty() {
            return Some(last);
        }
        let mut bytes_before = 0u64;
        for entry in &self.queue {
            match entry {
                Entry::Audio { remaining, .. } => bytes_before += remaining,
                Entry::Mark { .. } => {
                    let ns = (bytes_before * NANOS_PER_BYTE).saturating_sub(self.carry_ns);
                    return Some(last + Duration::from_nanos(ns));
                }
            }
        }
        None
    }

    /// The item whose audio is at the head of the buffer (being played) now, if its mark has
    /// arrived; `None` when the buffer is empty or the head audio is not attributed yet.
    pub fn playing_item(&self) -> Option<&str> {
        let Some(Entry::Audio { chunk, .. }) = self.queue.front() else {
            return None;
        };
        self.chunk_item(*chunk)
    }

    /// The item a chunk belongs to, once a mark followed it.
    pub fn chunk_item(&self, chunk: ChunkId) -> Option<&str> {
        match self.chunks.get(chunk.0)?.owner {
            Owner::Item(i) => Some(&self.items[i].item_id),
            Owner::Pending | Owner::Orphan => None,
        }
    }

    /// Bytes of a chunk the caller heard so far.
    pub fn chunk_played_bytes(&self, chunk: ChunkId) -> u64 {
        self.chunks.get(chunk.0).map_or(0, |c| c.played)
    }

    /// Whether a chunk was refused because the buffer was over [`MAX_BUFFERED_BYTES`].
    pub fn chunk_dropped(&self, chunk: ChunkId) -> bool {
        self.chunks.get(chunk.0).is_some_and(|c| c.dropped)
    }

    /// Per-item accounting, in the order each item's first mark arrived.
    pub fn items(&self) -> &[ItemPlayout] {
        &self.items
    }

    /// Accounting of one item, if any of its marks arrived.
    pub fn item(&self, item_id: &str) -> Option<&ItemPlayout> {
        self.items.iter().find(|i| i.item_id == item_id)
    }

    /// Bytes of `item_id` the caller heard (0 for an unknown item).
    pub fn played_bytes_of(&self, item_id: &str) -> u64 {
        self.item(item_id).map_or(0, |i| i.played_bytes)
    }

    /// Whole ms of `item_id` the caller heard, comparable to `audio_end_ms`.
    pub fn played_ms_of(&self, item_id: &str) -> u64 {
        self.played_bytes_of(item_id) / BYTES_PER_MS
    }

    /// Total whole ms of audio the caller heard.
    pub fn played_ms_total(&self) -> u64 {
        self.played_total / BYTES_PER_MS
    }

    /// Total bytes of audio the caller heard.
    pub fn played_bytes_total(&self) -> u64 {
        self.played_total
    }

    /// Bytes played that no mark ever attributed to an item.
    pub fn unattributed_played_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| !matches!(c.owner, Owner::Item(_)))
            .map(|c| c.played)
            .sum()
    }

    /// Total bytes discarded by `clear`.
    pub fn discarded_bytes_total(&self) -> u64 {
        self.discarded_total
    }

    /// Total bytes refused because the buffer was full.
    pub fn dropped_bytes_total(&self) -> u64 {
        self.dropped_total
    }

    /// Bytes queued and not yet played.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_bytes
    }

    /// Whether audio is playing (the buffer is not empty).
    pub fn is_playing(&self) -> bool {
        self.buffered_bytes > 0
    }

    /// Index of `item_id` in `items`, added if new.
    fn item_index(&mut self, item_id: &str) -> usize {
        if let Some(i) = self.items.iter().position(|i| i.item_id == item_id) {
            return i;
        }
        self.items.push(ItemPlayout {
            item_id: item_id.to_owned(),
            queued_bytes: 0,
            played_bytes: 0,
            discarded_bytes: 0,
        });
        self.items.len() - 1
    }

    /// Gives every chunk pushed since the last mark (or clear) to `owner`.
    fn settle_pending(&mut self, owner: Owner) {
        for c in self.chunks.iter_mut().rev() {
            if c.owner != Owner::Pending {
                break;
            }
            c.owner = owner;
            if let Owner::Item(i) = owner {
                let item = &mut self.items[i];
                if !c.dropped {
                    item.queued_bytes += c.len;
                }
                item.played_bytes += c.played;
                item.discarded_bytes += c.discarded;
            }
        }
    }

    /// Plays the buffer from the last `now` up to `now`: 8 bytes per ms, marks at the head move
    /// to `ready`, and time with nothing buffered is silence (not credited to later audio).
    fn play_until(&mut self, now: Instant) {
        let last = match self.last_now {
            Some(last) if now > last => last,
            Some(_) => return,
            None => {
                self.last_now = Some(now);
                return;
            }
        };
        self.last_now = Some(now);
        let elapsed = u64::try_from((now - last).as_nanos()).unwrap_or(u64::MAX);
        let mut budget = self.carry_ns.saturating_add(elapsed);
        while let Some(entry) = self.queue.front_mut() {
            match entry {
                Entry::Mark { .. } => {
                    if let Some(Entry::Mark { name }) = self.queue.pop_front() {
                        self.ready.push_back(name);
                    }
                }
                Entry::Audio { chunk, remaining } => {
                    let bytes = (*remaining).min(budget / NANOS_PER_BYTE);
                    *remaining -= bytes;
                    budget -= bytes * NANOS_PER_BYTE;
                    let (chunk, done) = (*chunk, *remaining == 0);
                    self.credit_played(chunk, bytes);
                    if !done {
                        break;
                    }
                    self.queue.pop_front();
                }
            }
        }
        self.carry_ns = if self.queue.is_empty() { 0 } else { budget };
    }

    /// Records that `bytes` of `chunk` were heard.
    fn credit_played(&mut self, chunk: ChunkId, bytes: u64) {
        let c = &mut self.chunks[chunk.0];
        c.played += bytes;
        if let Owner::Item(i) = c.owner {
            self.items[i].played_bytes += bytes;
        }
        self.buffered_bytes -= bytes;
        self.played_total += bytes;
    }
}

/// The `item_id` of a callbridge mark name `e={epoch};i={item_id};ms={cum_ms}` (protocol.md 6.2).
/// The item id may contain `;`, so the epoch is read from the front and the ms from the back.
/// `None` for any other shape.
pub fn mark_item_id(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("e=")?;
    let (epoch, rest) = rest.split_once(";i=")?;
    let (item_id, ms) = rest.rsplit_once(";ms=")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(epoch) && digits(ms) && !item_id.is_empty()).then_some(item_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn mark(item: &str, cum_ms: u64) -> String {
        format!("e=0;i={item};ms={cum_ms}")
    }

    #[test]
    fn audio_plays_at_eight_bytes_per_ms() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 1600);
        p.advance(t0 + ms(30));
        assert_eq!(p.played_bytes_total(), 240);
        assert_eq!(p.buffered_bytes(), 1360);
        p.advance(t0 + ms(200));
        assert_eq!(p.played_bytes_total(), 1600);
        assert_eq!(p.played_ms_total(), 200);
        assert!(!p.is_playing());
    }

    #[test]
    fn sub_millisecond_steps_lose_no_time() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 800);
        // 1000 steps of 100 µs: each is less than one byte's time (125 µs) on its own.
        for k in 1..=1000 {
            p.advance(t0 + us(100 * k));
        }
        assert_eq!(p.played_bytes_total(), 800);
    }

    #[test]
    fn mark_is_echoed_only_after_its_audio_played() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 400); // 50 ms
        p.push_mark(t0, &mark("item_A", 50));
        assert!(p.advance(t0 + ms(49)).is_empty());
        assert_eq!(p.next_mark_due(), Some(t0 + ms(50)));
        assert_eq!(p.advance(t0 + ms(50)), vec![mark("item_A", 50)]);
        assert!(p.advance(t0 + ms(100)).is_empty());
    }

    #[test]
    fn mark_on_an_empty_buffer_is_echoed_at_once() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_mark(t0, "first");
        assert_eq!(p.next_mark_due(), Some(t0));
        assert_eq!(p.advance(t0), vec!["first".to_owned()]);
        // Also after earlier audio has fully played.
        p.push_media(t0, 80);
        p.push_mark(t0 + ms(500), "late");
        assert_eq!(p.advance(t0 + ms(500)), vec!["late".to_owned()]);
    }

    #[test]
    fn several_marks_are_echoed_in_order_as_playout_passes_them() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        // protocol.md 6.3: deltas of 400, 2400, 800 bytes, marks at 50, 350, 450 ms.
        for (bytes, cum) in [(400, 50), (2400, 350), (800, 450)] {
            p.push_media(t0, bytes);
            p.push_mark(t0, &mark("item_X", cum));
        }
        assert_eq!(p.advance(t0 + ms(60)), vec![mark("item_X", 50)]);
        assert_eq!(p.next_mark_due(), Some(t0 + ms(350)));
        assert_eq!(
            p.advance(t0 + ms(1000)),
            vec![mark("item_X", 350), mark("item_X", 450)]
        );
        assert_eq!(p.played_ms_of("item_X"), 450);
    }

    #[test]
    fn consecutive_marks_with_no_audio_between_are_echoed_together() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 160);
        p.push_mark(t0, "a");
        p.push_mark(t0, "b");
        assert_eq!(p.advance(t0 + ms(20)), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn clear_discards_unplayed_audio_and_echoes_pending_marks_in_order() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        for (bytes, cum) in [(400, 50), (2400, 350), (800, 450)] {
            p.push_media(t0, bytes);
            p.push_mark(t0, &mark("item_X", cum));
        }
        assert_eq!(p.advance(t0 + ms(100)), vec![mark("item_X", 50)]);
        assert_eq!(p.playing_item(), Some("item_X"));
        let echoed = p.clear(t0 + ms(180));
        assert_eq!(echoed, vec![mark("item_X", 350), mark("item_X", 450)]);
        assert_eq!(p.played_ms_of("item_X"), 180);
        assert_eq!(p.discarded_bytes_total(), 3600 - 1440);
        assert_eq!(p.item("item_X").unwrap().discarded_bytes, 2160);
        assert!(!p.is_playing());
        assert!(p.advance(t0 + ms(5000)).is_empty());
        assert_eq!(p.played_ms_total(), 180);
    }

    #[test]
    fn clear_first_returns_marks_that_played_before_it() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 80);
        p.push_mark(t0, "played");
        p.push_media(t0, 800);
        p.push_mark(t0, "discarded");
        // No advance between: the clear at 50 ms must still see "played" as played first.
        assert_eq!(
            p.clear(t0 + ms(50)),
            vec!["played".to_owned(), "discarded".to_owned()]
        );
        assert_eq!(p.played_bytes_total(), 80 + 320);
    }

    #[test]
    fn audio_after_a_clear_plays_from_the_moment_it_arrives() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 8000);
        p.clear(t0 + ms(100));
        p.push_media(t0 + ms(300), 160);
        p.push_mark(t0 + ms(300), &mark("item_B", 20));
        assert!(p.advance(t0 + ms(319)).is_empty());
        assert_eq!(p.advance(t0 + ms(320)), vec![mark("item_B", 20)]);
        assert_eq!(p.played_ms_total(), 120);
    }

    #[test]
    fn a_dry_buffer_leaves_a_silence_gap_and_does_not_catch_up() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 160); // plays 0..20 ms
        p.push_mark(t0, "a");
        // Next audio arrives at 100 ms: silence 20..100, then 100..120.
        p.push_media(t0 + ms(100), 160);
        p.push_mark(t0 + ms(100), "b");
        assert_eq!(p.advance(t0 + ms(100)), vec!["a".to_owned()]);
        assert!(p.advance(t0 + ms(119)).is_empty());
        assert_eq!(p.next_mark_due(), Some(t0 + ms(120)));
        assert_eq!(p.advance(t0 + ms(120)), vec!["b".to_owned()]);
    }

    #[test]
    fn dry_buffer_gap_is_found_even_without_intermediate_calls() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 160);
        // Nothing between 0 and 1000 ms; the buffer ran dry at 20 ms.
        p.push_media(t0 + ms(1000), 160);
        p.push_mark(t0 + ms(1000), "b");
        assert!(p.advance(t0 + ms(1010)).is_empty());
        assert_eq!(p.played_bytes_total(), 160 + 80);
    }

    #[test]
    fn audio_arriving_while_playing_is_appended_without_a_gap() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 160);
        p.push_media(t0 + ms(10), 160);
        p.push_mark(t0 + ms(10), "end");
        assert!(p.advance(t0 + ms(39)).is_empty());
        assert_eq!(p.advance(t0 + ms(40)), vec!["end".to_owned()]);
    }

    #[test]
    fn audio_belongs_to_the_item_of_the_mark_that_follows_it() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        let a1 = p.push_media(t0, 400);
        let a2 = p.push_media(t0, 400);
        assert_eq!(p.chunk_item(a1), None, "no mark yet");
        p.push_mark(t0, &mark("item_A", 100));
        let b1 = p.push_media(t0, 800);
        p.push_mark(t0, &mark("item_B", 100));
        assert_eq!(p.chunk_item(a1), Some("item_A"));
        assert_eq!(p.chunk_item(a2), Some("item_A"));
        assert_eq!(p.chunk_item(b1), Some("item_B"));
        p.advance(t0 + ms(150));
        assert_eq!(p.played_ms_of("item_A"), 100);
        assert_eq!(p.played_ms_of("item_B"), 50);
        assert_eq!(p.playing_item(), Some("item_B"));
        let items = p.items();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].queued_bytes, 800);
        assert_eq!(items[1].queued_bytes, 800);
    }

    #[test]
    fn audio_played_before_its_mark_arrived_is_credited_when_it_arrives() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 800);
        // The mark is delayed by 30 ms: 240 bytes already played.
        p.push_mark(t0 + ms(30), &mark("item_A", 100));
        assert_eq!(p.played_bytes_of("item_A"), 240);
        p.advance(t0 + ms(100));
        assert_eq!(p.played_ms_of("item_A"), 100);
    }

    #[test]
    fn item_ms_ignore_the_cumulative_ms_written_in_the_mark_name() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 800);
        p.push_mark(t0, &mark("item_A", 9999));
        p.advance(t0 + ms(1000));
        assert_eq!(p.played_ms_of("item_A"), 100);
    }

    #[test]
    fn audio_cut_off_by_a_clear_before_its_mark_stays_unattributed() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        let c = p.push_media(t0, 800);
        p.clear(t0 + ms(10));
        p.push_media(t0 + ms(20), 160);
        p.push_mark(t0 + ms(20), &mark("item_B", 20));
        assert_eq!(p.chunk_item(c), None);
        assert_eq!(p.item("item_B").unwrap().queued_bytes, 160);
        p.advance(t0 + ms(100));
        assert_eq!(p.unattributed_played_bytes(), 80);
        assert_eq!(p.played_ms_of("item_B"), 20);
    }

    #[test]
    fn a_mark_with_a_foreign_name_is_echoed_but_attributes_nothing() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        let c = p.push_media(t0, 160);
        p.push_mark(t0, "responsePart");
        assert_eq!(p.advance(t0 + ms(20)), vec!["responsePart".to_owned()]);
        assert_eq!(p.chunk_item(c), None);
        assert!(p.items().is_empty());
    }

    #[test]
    fn playing_item_is_none_when_nothing_plays() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        assert_eq!(p.playing_item(), None);
        p.push_media(t0, 160);
        p.push_mark(t0, &mark("item_A", 20));
        p.advance(t0 + ms(20));
        assert_eq!(p.playing_item(), None);
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let t0 = Instant::now() + ms(1000);
        let mut p = Playout::new();
        p.push_media(t0, 800);
        p.advance(t0 + ms(50));
        p.advance(t0 + ms(10));
        assert_eq!(p.played_bytes_total(), 400);
        p.advance(t0 + ms(60));
        assert_eq!(p.played_bytes_total(), 480);
    }

    #[test]
    fn audio_beyond_ten_minutes_of_buffer_is_dropped() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, MAX_BUFFERED_BYTES as usize - 80);
        let over = p.push_media(t0, 160);
        assert!(p.chunk_dropped(over));
        assert_eq!(p.dropped_bytes_total(), 160);
        let fits = p.push_media(t0, 80);
        assert!(!p.chunk_dropped(fits));
        assert_eq!(p.buffered_bytes(), MAX_BUFFERED_BYTES);
    }

    #[test]
    fn empty_media_changes_nothing() {
        let t0 = Instant::now();
        let mut p = Playout::new();
        p.push_media(t0, 0);
        p.push_mark(t0, "m");
        assert_eq!(p.advance(t0), vec!["m".to_owned()]);
        assert!(!p.is_playing());
    }

    #[test]
    fn mark_item_id_reads_callbridge_names_only() {
        assert_eq!(mark_item_id("e=3;i=item_CBx1;ms=1240"), Some("item_CBx1"));
        assert_eq!(mark_item_id("e=0;i=a;b;ms=x;ms=5"), Some("a;b;ms=x"));
        assert_eq!(mark_item_id("e=;i=item;ms=5"), None);
        assert_eq!(mark_item_id("e=1;i=;ms=5"), None);
        assert_eq!(mark_item_id("e=1;i=item;ms="), None);
        assert_eq!(mark_item_id("e=x;i=item;ms=5"), None);
        assert_eq!(mark_item_id("responsePart"), None);
        assert_eq!(mark_item_id(""), None);
    }
}
