//! The run's shared measurement state, and the two hooks that feed it: the mock's tap (uplink
//! check and clock, downlink tagging, speech start, truncates) and the caller's probe (frame send
//! clock, downlink check and clock, clears). Both run in this process, so every latency is the
//! difference of two `Instant`s of one clock.
//!
//! ```text
//!  caller probe ── frame_sent(n, t) ─▶ CallState.up_sent ◀── tap.input_audio: latency = now − t
//!  tap.output_audio: tag blocks, ──────▶ CallState.down_sent ◀── probe.media_received: now − t
//!  tap.speech_started(t) ──────────────▶ CallState.speech_at ◀── probe.clear_received: now − t
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use callbridge_testkit::mock::tap::{MockTapFactory, SessionTap};
use callbridge_testkit::sim::probe::StreamProbe;
use callbridge_testkit::sim::script::{read_tag, FRAME_BYTES};

use crate::hist::Histogram;
use crate::tags::{downlink_block, BlockStream, SeqChecker, UplinkExpect};

/// Send times remembered per direction and call: 512 frames are 10 s of caller audio, or 2.5 s
/// of assistant audio at the mock's 4× pace; a frame not delivered within that is counted
/// without a latency ([`Counters::unmatched_latency`]).
const RING: usize = 512;

/// Locks, ignoring poisoning (a panicking task must not hide the others' results).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Send times by sequence number (a ring; see [`RING`]).
#[derive(Debug)]
struct SendTimes {
    slots: Vec<Option<(u32, Instant)>>,
}

impl SendTimes {
    fn new() -> Self {
        SendTimes {
            slots: vec![None; RING],
        }
    }
    fn put(&mut self, seq: u32, at: Instant) {
        self.slots[seq as usize % RING] = Some((seq, at));
    }
    fn get(&self, seq: u32) -> Option<Instant> {
        match self.slots[seq as usize % RING] {
            Some((s, at)) if s == seq => Some(at),
            _ => None,
        }
    }
}

/// Run-wide counters (relaxed atomics, read for the progress line and the report).
#[derive(Debug, Default)]
pub struct Counters {
    /// Caller frames produced.
    pub frames_sent: AtomicU64,
    /// Uplink frames that reached the mock and verified.
    pub uplink_ok: AtomicU64,
    /// Downlink `media` messages the callers received.
    pub media_received: AtomicU64,
    /// Downlink 20 ms blocks the mock sent.
    pub blocks_sent: AtomicU64,
    /// Downlink blocks that verified at a caller.
    pub downlink_ok: AtomicU64,
    /// Frames delivered whose send time had left the ring (no latency sample).
    pub unmatched_latency: AtomicU64,
    /// Uplink frames produced before the call's first audio reached the mock: held by the proxy
    /// while the OpenAI session was set up, their wait is the setup time (not in the uplink
    /// latency).
    pub uplink_held_at_setup: AtomicU64,
    /// Mock sessions whose first caller audio carried no tag of a known call.
    pub unattributed_sessions: AtomicU64,
    /// Calls currently in their stream.
    pub active: AtomicU64,
}

/// Latency histograms of the run.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Caller frame produced → its append read by the mock.
    pub uplink: Histogram,
    /// Mock delta produced → its audio read by the caller (per 20 ms block).
    pub downlink: Histogram,
    /// Mock `speech_started` produced → `clear` read by the caller.
    pub barge_in: Histogram,
    /// Webhook request → TwiML answer complete.
    pub webhook: Histogram,
    /// WebSocket upgrade request → `101`.
    pub upgrade: Histogram,
    /// Stream open (first caller frame) → first caller audio at the mock (OpenAI connect,
    /// `session.update`/`updated`, held audio forwarded).
    pub first_audio: Histogram,
}

/// One call's shared state.
#[derive(Debug)]
pub struct CallState {
    /// What its uplink frames must be.
    pub expect: UplinkExpect,
    up_sent: Mutex<SendTimes>,
    down_sent: Mutex<SendTimes>,
    /// The uplink check (fed by the mock's tap).
    pub up_check: Mutex<SeqChecker>,
    /// The downlink check (fed by the caller's probe).
    pub down_check: Mutex<BlockStream>,
    /// Last `speech_started` not yet answered by a clear.
    speech_at: Mutex<Option<Instant>>,
    /// When the first frame was produced.
    first_frame_at: Mutex<Option<Instant>>,
    /// When the first caller audio reached the mock.
    first_audio_at: Mutex<Option<Instant>>,
    /// Accepted truncates: `(item_id, audio_end_ms)`.
    pub truncates: Mutex<Vec<(String, u64)>>,
    /// Downlink blocks the mock tagged for this call.
    pub blocks_sent: AtomicU64,
}

impl CallState {
    /// A call numbered `expect.call_no`.
    pub fn new(expect: UplinkExpect) -> Self {
        let call_no = expect.call_no;
        CallState {
            expect,
            up_sent: Mutex::new(SendTimes::new()),
            down_sent: Mutex::new(SendTimes::new()),
            up_check: Mutex::new(SeqChecker::default()),
            down_check: Mutex::new(BlockStream::new(call_no)),
            speech_at: Mutex::new(None),
            first_frame_at: Mutex::new(None),
            first_audio_at: Mutex::new(None),
            truncates: Mutex::new(Vec::new()),
            blocks_sent: AtomicU64::new(0),
        }
    }
}

/// A fault the mock's tap injects once per run, to prove the checkers catch it end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// The mock ignores one caller frame (as if the proxy lost it).
    DropUplink,
    /// One caller frame arrives with a flipped bit.
    CorruptUplink,
    /// One assistant block number is skipped (a gap: lost).
    DropDownlink,
    /// One assistant block goes out with a flipped bit.
    CorruptDownlink,
    /// One assistant block number is sent twice.
    DuplicateDownlink,
}

/// Frames to let through before injecting (past the session setup).
const FAULT_AFTER_FRAMES: u32 = 50;

/// Everything the hooks write into, for one run (or one ramp step).
#[derive(Debug, Default)]
pub struct Shared {
    /// The fault to inject (once), if any.
    pub fault: Option<Fault>,
    /// Whether it was injected.
    pub fault_done: std::sync::atomic::AtomicBool,
    /// Calls by number.
    pub calls: Mutex<HashMap<u32, Arc<CallState>>>,
    /// Latencies.
    pub lat: Latencies,
    /// Counters.
    pub counters: Counters,
}

impl Shared {
    /// Whether to inject `f` now (true once per run).
    fn inject(&self, f: Fault) -> bool {
        self.fault == Some(f) && !self.fault_done.swap(true, Ordering::Relaxed)
    }

    /// Registers a call before it starts.
    pub fn add_call(&self, call: Arc<CallState>) {
        lock(&self.calls).insert(call.expect.call_no, call);
    }

    fn call(&self, call_no: u32) -> Option<Arc<CallState>> {
        lock(&self.calls).get(&call_no).cloned()
    }
}

/// The run (or ramp step) the mock's new sessions report to.
pub type SharedSlot = Arc<Mutex<Arc<Shared>>>;

/// The mock tap factory for [`callbridge_testkit::mock::MockConfig::tap`]: each new session
/// reports to the run that holds its call, looked up when its first tagged caller frame arrives
/// (not when the session starts: the proxy's OpenAI pool opens sessions ahead of calls, even
/// before the run, or in the previous ramp step).
pub fn tap_factory(slot: SharedSlot) -> MockTapFactory {
    Arc::new(move || {
        Box::new(Tap {
            shared: Arc::clone(&lock(&slot)),
            slot: Arc::clone(&slot),
            call: None,
            valid: Vec::new(),
            next_block: 0,
        }) as Box<dyn SessionTap>
    })
}

/// One mock session's tap; it learns its call (and the run) from the first tagged caller frame.
#[derive(Debug)]
struct Tap {
    /// The run reported to: the one current when the session started, until the call is known,
    /// then the one holding the call.
    shared: Arc<Shared>,
    /// Where the current run is found.
    slot: SharedSlot,
    call: Option<Arc<CallState>>,
    /// Reused list of verified sequence numbers.
    valid: Vec<u32>,
    /// Next downlink block number.
    next_block: u32,
}

impl SessionTap for Tap {
    fn input_audio(&mut self, now: Instant, audio: &[u8]) {
        if self.call.is_none() {
            // The run current now first (a pooled session may have started before it), then
            // the one current at the session's start.
            let current = Arc::clone(&lock(&self.slot));
            let tag = read_tag(audio).map(|(c, _)| c);
            let found = tag.and_then(|c| {
                current
                    .call(c)
                    .map(|call| (Arc::clone(&current), call))
                    .or_else(|| {
                        self.shared
                            .call(c)
                            .map(|call| (Arc::clone(&self.shared), call))
                    })
            });
            let Some((shared, call)) = found else {
                current
                    .counters
                    .unattributed_sessions
                    .fetch_add(1, Ordering::Relaxed);
                return;
            };
            self.shared = shared;
            self.call = Some(call);
        }
        let Some(call) = &self.call else { return };
        self.valid.clear();
        let late = read_tag(audio).is_some_and(|(_, n)| n >= FAULT_AFTER_FRAMES);
        if late && self.shared.inject(Fault::DropUplink) {
            return;
        }
        let mut copy;
        let mut audio = audio;
        if late && self.shared.inject(Fault::CorruptUplink) {
            copy = audio.to_vec();
            copy[FRAME_BYTES / 2] ^= 0x01;
            audio = &copy;
        }
        call.expect
            .check(audio, &mut lock(&call.up_check), &mut self.valid);
        let c = &self.shared.counters;
        c.uplink_ok
            .fetch_add(self.valid.len() as u64, Ordering::Relaxed);
        let sent = lock(&call.up_sent);
        if let Some(first) = *lock(&call.first_frame_at) {
            if self.valid.first() == Some(&0) {
                self.shared.lat.first_audio.record(now - first);
            }
        }
        let first_audio = *lock(&call.first_audio_at).get_or_insert(now);
        for &n in &self.valid {
            match sent.get(n) {
                Some(t) if t < first_audio => {
                    c.uplink_held_at_setup.fetch_add(1, Ordering::Relaxed);
                }
                Some(t) => self
                    .shared
                    .lat
                    .uplink
                    .record(now.saturating_duration_since(t)),
                None => {
                    c.unmatched_latency.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn output_audio(&mut self, now: Instant, audio: &mut [u8]) {
        let Some(call) = &self.call else { return };
        let call_no = call.expect.call_no;
        let mut sent = lock(&call.down_sent);
        let mut blocks = 0;
        for block in audio.chunks_exact_mut(FRAME_BYTES) {
            let late = self.next_block >= FAULT_AFTER_FRAMES;
            if late && self.shared.inject(Fault::DropDownlink) {
                self.next_block += 1;
            }
            block.copy_from_slice(&downlink_block(call_no, self.next_block));
            if late && self.shared.inject(Fault::CorruptDownlink) {
                block[FRAME_BYTES / 2] ^= 0x01;
            }
            sent.put(self.next_block, now);
            if !(late && self.shared.inject(Fault::DuplicateDownlink)) {
                self.next_block += 1;
            }
            blocks += 1;
        }
        call.blocks_sent.fetch_add(blocks, Ordering::Relaxed);
        self.shared
            .counters
            .blocks_sent
            .fetch_add(blocks, Ordering::Relaxed);
    }

    fn speech_started(&mut self, now: Instant) {
        if let Some(call) = &self.call {
            *lock(&call.speech_at) = Some(now);
        }
    }

    fn truncated(&mut self, item_id: &str, audio_end_ms: u64) {
        if let Some(call) = &self.call {
            lock(&call.truncates).push((item_id.to_owned(), audio_end_ms));
        }
    }
}

/// The caller side's hook for one call.
#[derive(Debug)]
pub struct Probe {
    /// The run.
    pub shared: Arc<Shared>,
    /// The call.
    pub call: Arc<CallState>,
}

impl StreamProbe for Probe {
    fn frame_sent(&self, now: Instant, index: u32) {
        if index == 0 {
            *lock(&self.call.first_frame_at) = Some(now);
        }
        lock(&self.call.up_sent).put(index, now);
        self.shared
            .counters
            .frames_sent
            .fetch_add(1, Ordering::Relaxed);
    }

    fn media_received(&self, now: Instant, audio: &[u8]) {
        let mut valid = Vec::new();
        lock(&self.call.down_check).push(audio, &mut valid);
        let c = &self.shared.counters;
        c.media_received.fetch_add(1, Ordering::Relaxed);
        c.downlink_ok
            .fetch_add(valid.len() as u64, Ordering::Relaxed);
        let sent = lock(&self.call.down_sent);
        for k in valid {
            match sent.get(k) {
                Some(t) => self
                    .shared
                    .lat
                    .downlink
                    .record(now.saturating_duration_since(t)),
                None => {
                    c.unmatched_latency.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn clear_received(&self, now: Instant) {
        if let Some(t) = lock(&self.call.speech_at).take() {
            self.shared
                .lat
                .barge_in
                .record(now.saturating_duration_since(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callbridge_testkit::sim::script::{Clip, Script, Segment};

    fn call(call_no: u32) -> Arc<CallState> {
        let script = Script::new(vec![Segment::Speak(Clip::HELLO_EN)]).unwrap();
        Arc::new(CallState::new(UplinkExpect { call_no, script }))
    }

    /// A pooled session starts before the run (or in the previous step) and meets its call
    /// later: it must report to the run that holds the call. (Before the fix the tap kept the
    /// run current at session start, so the call's uplink was never counted and its downlink
    /// went out untagged: 1500 frames lost, 900 blocks corrupt with `OPENAI_POOL_MAX=16`.)
    #[test]
    fn a_session_opened_before_the_run_is_attributed_to_its_call() {
        let slot: SharedSlot = Arc::new(Mutex::new(Arc::new(Shared::default())));
        let mut early = tap_factory(Arc::clone(&slot))(); // the pool's warm session
        let run = Arc::new(Shared::default());
        let c = call(1);
        run.add_call(Arc::clone(&c));
        *lock(&slot) = Arc::clone(&run);

        let now = Instant::now();
        early.input_audio(now, &c.expect.frame(0));
        early.input_audio(now, &c.expect.frame(1));
        assert_eq!(run.counters.uplink_ok.load(Ordering::Relaxed), 2);
        assert_eq!(
            run.counters.unattributed_sessions.load(Ordering::Relaxed),
            0
        );
        let mut out = [0u8; FRAME_BYTES];
        early.output_audio(now, &mut out);
        assert_eq!(out, downlink_block(1, 0), "downlink tagged for the call");
        assert_eq!(c.blocks_sent.load(Ordering::Relaxed), 1);
    }

    /// A session that started in one step and meets a call of that step after the slot moved
    /// on still finds it; an untagged first frame is unattributed in the current run.
    #[test]
    fn a_call_of_the_previous_step_and_an_unknown_tag() {
        let step1 = Arc::new(Shared::default());
        let c = call(5);
        step1.add_call(Arc::clone(&c));
        let slot: SharedSlot = Arc::new(Mutex::new(Arc::clone(&step1)));
        let mut tap = tap_factory(Arc::clone(&slot))();
        let mut stray = tap_factory(Arc::clone(&slot))();
        let step2 = Arc::new(Shared::default());
        *lock(&slot) = Arc::clone(&step2);

        tap.input_audio(Instant::now(), &c.expect.frame(0));
        assert_eq!(step1.counters.uplink_ok.load(Ordering::Relaxed), 1);
        stray.input_audio(Instant::now(), &[0u8; FRAME_BYTES]);
        assert_eq!(
            step2.counters.unattributed_sessions.load(Ordering::Relaxed),
            1
        );
    }
}
