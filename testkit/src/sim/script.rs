//! The simulated caller's audio script: what the caller says, when, and when it hangs up.
//!
//! A [`Script`] is compiled from a list of [`Segment`]s into a timeline of utterances on the
//! inbound stream clock (byte 0 = the first sample of the first `media` frame). Frames of 20 ms
//! (160 bytes of μ-law) are produced on demand by index, so a driver on a real clock asks for
//! frame `n` at `t0 + n × 20 ms` and nothing is rendered ahead of time.
//!
//! ```text
//!  Speak(HELLO)  Silence{3000}        BargeInAt{4000, WAIT}   HangUpAt{9000}
//!  |== hello ==|.....................|==== wait ====|........|  → `stop`
//!  0         2367                  4000           5880      9000 ms
//! ```
//!
//! Frames can carry a tag (call number and sequence number) in their first 16 bytes, so a
//! receiver (the mock OpenAI server) can check that no caller frame was lost, duplicated or
//! reordered on the way: see [`tag_frame`] and [`read_tag`].

use std::borrow::Cow;

/// Samples per second of Twilio's μ-law stream; one byte per sample.
pub const SAMPLE_RATE: u32 = 8000;

/// Bytes per ms of μ-law at 8 kHz.
const BYTES_PER_MS: u64 = 8;

/// Duration of one inbound frame: Twilio sends 20 ms per `media` message in practice
/// (protocol.md 4.1).
pub const FRAME_MS: u32 = 20;

/// Bytes in one inbound frame (20 ms × 8 bytes/ms).
pub const FRAME_BYTES: usize = 160;

/// μ-law digital silence (the code for a zero sample); fills every byte no utterance covers.
pub const SILENCE: u8 = 0xFF;

/// Bytes at the start of a frame that carry a tag: 64 bits (call number, sequence number), one
/// nibble per byte.
pub const TAG_BYTES: usize = 16;

/// Longest script accepted: one hour. Keeps every position comfortably inside `u32` frames and
/// catches a unit mistake (seconds given as ms × 1000) early.
pub const MAX_SCRIPT_MS: u32 = 60 * 60 * 1000;

/// A recorded utterance: raw μ-law, 8 kHz, mono, no header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    /// The audio bytes.
    bytes: Cow<'static, [u8]>,
}

impl Clip {
    /// "Hello, I would like to check the status of my order." (2.367 s, eSpeak NG; see
    /// `assets/README.md`).
    pub const HELLO_EN: Clip = Clip::from_static(include_bytes!("../../assets/caller-en.ulaw"));

    /// "Wait, sorry, one more question." (1.88 s), the barge-in utterance.
    pub const WAIT_EN: Clip =
        Clip::from_static(include_bytes!("../../assets/caller-barge-in-en.ulaw"));

    /// A clip over static bytes.
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Clip {
            bytes: Cow::Borrowed(bytes),
        }
    }

    /// A clip over owned bytes (e.g. generated in a test).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Clip {
            bytes: Cow::Owned(bytes),
        }
    }

    /// The μ-law bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in whole ms (rounded up: a partial ms still takes time to say).
    pub fn duration_ms(&self) -> u32 {
        u32::try_from((self.bytes.len() as u64).div_ceil(BYTES_PER_MS)).unwrap_or(u32::MAX)
    }
}

/// One step of a script. Relative segments start at the cursor (the end of the previous one);
/// absolute ones (`*At`) start at a stream time and must not start before the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Say `clip` at the cursor; the cursor moves to its end.
    Speak(Clip),
    /// Stay silent for `ms`; the cursor moves on by `ms`.
    Silence {
        /// How long.
        ms: u32,
    },
    /// Say `clip` starting at `at_ms`; the cursor moves to its end.
    SpeakAt {
        /// Stream time of the first sample.
        at_ms: u32,
        /// What to say.
        clip: Clip,
    },
    /// Like [`Segment::SpeakAt`], flagged as a barge-in: the caller expects to interrupt the
    /// assistant, and the report measures the time from its start to the `clear`.
    BargeInAt {
        /// Stream time of the first sample.
        at_ms: u32,
        /// What to say.
        clip: Clip,
    },
    /// Press a key at the cursor (takes no time): a `dtmf` message before that frame.
    Dtmf {
        /// `0`-`9`, `*` or `#`.
        digit: char,
    },
    /// Press a key at stream time `at_ms`, independent of the cursor (a key can be pressed
    /// while speaking); the cursor does not move.
    DtmfAt {
        /// Stream time of the key press.
        at_ms: u32,
        /// `0`-`9`, `*` or `#`.
        digit: char,
    },
    /// Hang up at `at_ms`, even in the middle of an utterance (what comes later is dropped).
    /// Must be the last segment. Without it the call hangs up at the end of the last segment.
    HangUpAt {
        /// Stream time of the hang-up: the `stop` follows the last frame before it.
        at_ms: u32,
    },
}

/// Why a list of segments is not a valid script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    /// An absolute segment starts before the previous one ended.
    #[error(
        "segment {index} starts at {at_ms} ms, before the previous one ends at {cursor_ms} ms"
    )]
    Overlap {
        /// Index of the segment.
        index: usize,
        /// Its start.
        at_ms: u32,
        /// Where the previous segment ended (rounded down).
        cursor_ms: u32,
    },
    /// `HangUpAt` is not the last segment.
    #[error("hang-up must be the last segment (found at {index})")]
    HangUpNotLast {
        /// Index of the segment.
        index: usize,
    },
    /// A DTMF digit outside `0-9*#`.
    #[error("invalid dtmf digit {digit:?} in segment {index}")]
    BadDigit {
        /// Index of the segment.
        index: usize,
        /// The digit.
        digit: char,
    },
    /// A clip with no audio.
    #[error("segment {index} speaks an empty clip")]
    EmptyClip {
        /// Index of the segment.
        index: usize,
    },
    /// The script is longer than [`MAX_SCRIPT_MS`].
    #[error("script longer than {MAX_SCRIPT_MS} ms")]
    TooLong,
}

/// One utterance of the compiled timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utterance {
    /// Index of the segment that produced it.
    pub segment: usize,
    /// Whether it is a scripted barge-in.
    pub barge_in: bool,
    /// Stream byte of its first sample.
    pub start_byte: u64,
    /// Stream byte just after its last sample (cut at the hang-up if the caller hangs up
    /// mid-sentence).
    pub end_byte: u64,
    /// The audio.
    clip: Clip,
}

impl Utterance {
    /// Stream time of its first sample, in ms (rounded down).
    pub fn start_ms(&self) -> u64 {
        self.start_byte / BYTES_PER_MS
    }

    /// Stream time just after its last sample, in ms (rounded up).
    pub fn end_ms(&self) -> u64 {
        self.end_byte.div_ceil(BYTES_PER_MS)
    }

    /// Index of the frame holding its first sample.
    pub fn first_frame(&self) -> u32 {
        frame_of(self.start_byte)
    }

    /// Index of the frame holding its last sample: once that frame is sent the utterance has
    /// fully left the caller.
    pub fn last_frame(&self) -> u32 {
        frame_of(self.end_byte.saturating_sub(1).max(self.start_byte))
    }
}

/// A compiled script. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Utterances in time order, not overlapping.
    utterances: Vec<Utterance>,
    /// `(stream byte, digit)` in time order.
    dtmf: Vec<(u64, char)>,
    /// Stream byte of the hang-up: frames cover `[0, end_byte)`.
    end_byte: u64,
}

impl Script {
    /// Compiles `segments`; see [`Segment`] for the rules.
    pub fn new(segments: Vec<Segment>) -> Result<Self, ScriptError> {
        let mut utterances = Vec::new();
        let mut dtmf = Vec::new();
        let mut cursor = 0u64;
        let mut hang_up = None;
        let last = segments.len().saturating_sub(1);
        for (index, segment) in segments.into_iter().enumerate() {
            let start_abs = |at_ms: u32| -> Result<u64, ScriptError> {
                let at = u64::from(at_ms) * BYTES_PER_MS;
                if at < cursor {
                    return Err(ScriptError::Overlap {
                        index,
                        at_ms,
                        cursor_ms: ms_of(cursor),
                    });
                }
                Ok(at)
            };
            let (start, clip, barge_in) = match segment {
                Segment::Speak(clip) => (cursor, clip, false),
                Segment::SpeakAt { at_ms, clip } => (start_abs(at_ms)?, clip, false),
                Segment::BargeInAt { at_ms, clip } => (start_abs(at_ms)?, clip, true),
                Segment::Silence { ms } => {
                    cursor += u64::from(ms) * BYTES_PER_MS;
                    check_length(cursor)?;
                    continue;
                }
                Segment::Dtmf { digit } => {
                    dtmf.push((cursor, check_digit(index, digit)?));
                    continue;
                }
                Segment::DtmfAt { at_ms, digit } => {
                    let at = u64::from(at_ms) * BYTES_PER_MS;
                    check_length(at)?;
                    dtmf.push((at, check_digit(index, digit)?));
                    continue;
                }
                Segment::HangUpAt { at_ms } => {
                    if index != last {
                        return Err(ScriptError::HangUpNotLast { index });
                    }
                    hang_up = Some(u64::from(at_ms) * BYTES_PER_MS);
                    continue;
                }
            };
            if clip.bytes().is_empty() {
                return Err(ScriptError::EmptyClip { index });
            }
            cursor = start + clip.bytes().len() as u64;
            check_length(cursor)?;
            utterances.push(Utterance {
                segment: index,
                barge_in,
                start_byte: start,
                end_byte: cursor,
                clip,
            });
        }
        let end_byte = hang_up.unwrap_or(cursor);
        check_length(end_byte)?;
        utterances.retain(|u| u.start_byte < end_byte);
        for u in &mut utterances {
            u.end_byte = u.end_byte.min(end_byte);
        }
        dtmf.retain(|&(at, _)| at < end_byte);
        dtmf.sort_by_key(|&(at, _)| at);
        Ok(Script {
            utterances,
            dtmf,
            end_byte,
        })
    }

    /// The usual single-turn call: say [`Clip::HELLO_EN`], then listen for `listen_ms` and hang up.
    pub fn hello_then_hang_up(listen_ms: u32) -> Self {
        Self::new(vec![
            Segment::Speak(Clip::HELLO_EN),
            Segment::Silence { ms: listen_ms },
        ])
        .expect("a valid built-in script")
    }

    /// Say [`Clip::HELLO_EN`], interrupt the answer with [`Clip::WAIT_EN`] at `barge_in_at_ms`,
    /// hang up at `hang_up_at_ms` (clamped to after the barge-in utterance).
    pub fn hello_then_barge_in(barge_in_at_ms: u32, hang_up_at_ms: u32) -> Self {
        let barge_in_at_ms = barge_in_at_ms.max(Clip::HELLO_EN.duration_ms());
        let hang_up_at_ms = hang_up_at_ms.max(barge_in_at_ms + Clip::WAIT_EN.duration_ms());
        Self::new(vec![
            Segment::Speak(Clip::HELLO_EN),
            Segment::BargeInAt {
                at_ms: barge_in_at_ms,
                clip: Clip::WAIT_EN,
            },
            Segment::HangUpAt {
                at_ms: hang_up_at_ms,
            },
        ])
        .expect("a valid built-in script")
    }

    /// Number of frames before the hang-up (the last one may be partly past it; it is sent
    /// whole, padded with silence).
    pub fn frame_count(&self) -> u32 {
        u32::try_from(self.end_byte.div_ceil(FRAME_BYTES as u64)).unwrap_or(u32::MAX)
    }

    /// Stream time of the hang-up in ms (rounded up).
    pub fn duration_ms(&self) -> u64 {
        self.end_byte.div_ceil(BYTES_PER_MS)
    }

    /// The utterances, in time order.
    pub fn utterances(&self) -> &[Utterance] {
        &self.utterances
    }

    /// Writes frame `n` (stream bytes `[160 n, 160 n + 160)`) into `out`: the utterance audio
    /// covering it, silence elsewhere. Frames at or past [`Script::frame_count`] are silence.
    pub fn fill_frame(&self, n: u32, out: &mut [u8; FRAME_BYTES]) {
        out.fill(SILENCE);
        let from = u64::from(n) * FRAME_BYTES as u64;
        let to = (from + FRAME_BYTES as u64).min(self.end_byte);
        for u in &self.utterances {
            let (lo, hi) = (u.start_byte.max(from), u.end_byte.min(to));
            if lo >= hi {
                continue;
            }
            let src = &u.clip.bytes()[(lo - u.start_byte) as usize..(hi - u.start_byte) as usize];
            out[(lo - from) as usize..(hi - from) as usize].copy_from_slice(src);
        }
    }

    /// DTMF digits pressed during frame `n`, in order: sent just before that frame's `media`.
    pub fn dtmf_in_frame(&self, n: u32) -> impl Iterator<Item = char> + '_ {
        self.dtmf
            .iter()
            .filter(move |&&(at, _)| frame_of(at) == n)
            .map(|&(_, d)| d)
    }
}

/// Writes the tag `(call_no, seq)` into the first [`TAG_BYTES`] bytes of `frame`: the 64-bit
/// value `call_no << 32 | seq`, most significant nibble first, one nibble per byte as
/// `0xF0 | nibble`. μ-law `0xF0`–`0xFF` are the quietest positive codes (|sample| < 0.1 % of full
/// scale), so an energy VAD does not hear the tag.
pub fn tag_frame(call_no: u32, seq: u32, frame: &mut [u8; FRAME_BYTES]) {
    let value = (u64::from(call_no) << 32) | u64::from(seq);
    for (i, byte) in frame[..TAG_BYTES].iter_mut().enumerate() {
        let shift = 60 - 4 * i;
        *byte = 0xF0 | ((value >> shift) & 0xF) as u8;
    }
}

/// Reads a tag written by [`tag_frame`]: `None` if `frame` is shorter than [`TAG_BYTES`], a byte
/// is not of the form `0xF_`, or all 16 bytes are `0xFF` (that is plain μ-law silence, so the tag
/// `(u32::MAX, u32::MAX)` is reserved and never read back).
pub fn read_tag(frame: &[u8]) -> Option<(u32, u32)> {
    let head = frame.get(..TAG_BYTES)?;
    if head.iter().any(|&b| b & 0xF0 != 0xF0) || head.iter().all(|&b| b == 0xFF) {
        return None;
    }
    let value = head
        .iter()
        .fold(0u64, |acc, &b| (acc << 4) | u64::from(b & 0x0F));
    Some(((value >> 32) as u32, value as u32))
}

/// Index of the frame holding stream byte `byte`.
fn frame_of(byte: u64) -> u32 {
    u32::try_from(byte / FRAME_BYTES as u64).unwrap_or(u32::MAX)
}

/// Whole ms of a stream byte position (rounded down), for error messages.
fn ms_of(byte: u64) -> u32 {
    u32::try_from(byte / BYTES_PER_MS).unwrap_or(u32::MAX)
}

/// Refuses positions past [`MAX_SCRIPT_MS`].
fn check_length(byte: u64) -> Result<(), ScriptError> {
    if byte > u64::from(MAX_SCRIPT_MS) * BYTES_PER_MS {
        return Err(ScriptError::TooLong);
    }
    Ok(())
}

/// Accepts the keys of a phone keypad.
fn check_digit(index: usize, digit: char) -> Result<char, ScriptError> {
    if digit.is_ascii_digit() || digit == '*' || digit == '#' {
        Ok(digit)
    } else {
        Err(ScriptError::BadDigit { index, digit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(len: usize, byte: u8) -> Clip {
        Clip::from_vec(vec![byte; len])
    }

    fn frame(s: &Script, n: u32) -> [u8; FRAME_BYTES] {
        let mut f = [0u8; FRAME_BYTES];
        s.fill_frame(n, &mut f);
        f
    }

    #[test]
    fn built_in_clips_are_real_speech_of_the_documented_length() {
        assert_eq!(Clip::HELLO_EN.bytes().len(), 18_936);
        assert_eq!(Clip::HELLO_EN.duration_ms(), 2367);
        assert_eq!(Clip::WAIT_EN.bytes().len(), 15_036);
        assert_eq!(Clip::WAIT_EN.duration_ms(), 1880);
        // Speech, not silence: most bytes are away from the quiet codes around 0xFF / 0x7F.
        let loud = Clip::HELLO_EN
            .bytes()
            .iter()
            .filter(|&&b| (b & 0x7F) < 0x60)
            .count();
        assert!(loud > 18_936 / 4, "only {loud} loud samples");
    }

    #[test]
    fn speak_then_silence_produces_audio_then_silence_frames() {
        let s = Script::new(vec![
            Segment::Speak(clip(200, 0x10)),
            Segment::Silence { ms: 100 },
        ])
        .unwrap();
        // 200 bytes + 800 bytes = 1000 bytes → 7 frames (the last one padded).
        assert_eq!(s.frame_count(), 7);
        assert_eq!(s.duration_ms(), 125);
        assert!(frame(&s, 0).iter().all(|&b| b == 0x10));
        let f1 = frame(&s, 1);
        assert!(f1[..40].iter().all(|&b| b == 0x10));
        assert!(f1[40..].iter().all(|&b| b == SILENCE));
        assert!(frame(&s, 6).iter().all(|&b| b == SILENCE));
    }

    #[test]
    fn frames_reassemble_the_clip_byte_for_byte() {
        let s = Script::new(vec![
            Segment::Silence { ms: 7 },
            Segment::Speak(Clip::HELLO_EN),
        ])
        .unwrap();
        let mut all = Vec::new();
        for n in 0..s.frame_count() {
            all.extend_from_slice(&frame(&s, n));
        }
        assert_eq!(&all[56..56 + 18_936], Clip::HELLO_EN.bytes());
        assert!(all[..56]
            .iter()
            .chain(&all[56 + 18_936..])
            .all(|&b| b == SILENCE));
    }

    #[test]
    fn barge_in_starts_at_its_absolute_time_and_is_flagged() {
        let s = Script::new(vec![
            Segment::Speak(clip(160, 0x10)),
            Segment::BargeInAt {
                at_ms: 1000,
                clip: clip(320, 0x20),
            },
            Segment::HangUpAt { at_ms: 2000 },
        ])
        .unwrap();
        let u = s.utterances();
        assert_eq!(u.len(), 2);
        assert!(!u[0].barge_in && u[1].barge_in);
        assert_eq!((u[1].start_ms(), u[1].end_ms()), (1000, 1040));
        assert_eq!((u[1].first_frame(), u[1].last_frame()), (50, 51));
        assert!(frame(&s, 49).iter().all(|&b| b == SILENCE));
        assert!(frame(&s, 50).iter().all(|&b| b == 0x20));
        assert_eq!(s.frame_count(), 100);
    }

    #[test]
    fn hang_up_mid_utterance_cuts_it_and_drops_what_follows() {
        let s = Script::new(vec![
            Segment::Speak(clip(1600, 0x10)),
            Segment::Speak(clip(1600, 0x20)),
            Segment::HangUpAt { at_ms: 150 },
        ])
        .unwrap();
        assert_eq!(s.utterances().len(), 1);
        assert_eq!(s.utterances()[0].end_byte, 1200);
        assert_eq!(s.frame_count(), 8);
        let last = frame(&s, 7);
        assert!(last[..80].iter().all(|&b| b == 0x10));
        assert!(last[80..].iter().all(|&b| b == SILENCE));
    }

    #[test]
    fn hang_up_at_zero_sends_no_frame() {
        let s = Script::new(vec![
            Segment::Speak(clip(160, 1)),
            Segment::HangUpAt { at_ms: 0 },
        ])
        .unwrap();
        assert_eq!(s.frame_count(), 0);
        assert!(s.utterances().is_empty());
    }

    #[test]
    fn dtmf_is_reported_in_the_frame_of_its_time() {
        let s = Script::new(vec![
            Segment::Silence { ms: 30 },
            Segment::Dtmf { digit: '1' },
            Segment::DtmfAt {
                at_ms: 39,
                digit: '#',
            },
            Segment::Silence { ms: 100 },
        ])
        .unwrap();
        assert_eq!(s.dtmf_in_frame(0).count(), 0);
        assert_eq!(s.dtmf_in_frame(1).collect::<String>(), "1#");
        assert_eq!(s.dtmf_in_frame(2).count(), 0);
    }

    #[test]
    fn malformed_scripts_are_refused_with_a_reason() {
        let overlap = Script::new(vec![
            Segment::Speak(clip(800, 1)),
            Segment::SpeakAt {
                at_ms: 50,
                clip: clip(8, 1),
            },
        ]);
        assert_eq!(
            overlap,
            Err(ScriptError::Overlap {
                index: 1,
                at_ms: 50,
                cursor_ms: 100
            })
        );
        let not_last = Script::new(vec![
            Segment::HangUpAt { at_ms: 10 },
            Segment::Silence { ms: 10 },
        ]);
        assert_eq!(not_last, Err(ScriptError::HangUpNotLast { index: 0 }));
        assert_eq!(
            Script::new(vec![Segment::Dtmf { digit: 'x' }]),
            Err(ScriptError::BadDigit {
                index: 0,
                digit: 'x'
            })
        );
        assert_eq!(
            Script::new(vec![Segment::Speak(Clip::from_vec(Vec::new()))]),
            Err(ScriptError::EmptyClip { index: 0 })
        );
        assert_eq!(
            Script::new(vec![Segment::Silence {
                ms: MAX_SCRIPT_MS + 1
            }]),
            Err(ScriptError::TooLong)
        );
    }

    #[test]
    fn built_in_scripts_place_the_barge_in_after_the_greeting() {
        let s = Script::hello_then_barge_in(0, 0);
        let u = s.utterances();
        assert_eq!(u.len(), 2);
        assert!(u[1].barge_in);
        assert!(u[1].start_byte >= u[0].end_byte);
        assert_eq!(s.duration_ms(), u[1].end_ms());
        let single = Script::hello_then_hang_up(5000);
        assert_eq!(single.duration_ms(), 2367 + 5000);
    }

    #[test]
    fn tag_round_trips_and_uses_only_quiet_codes() {
        let mut f = [0x42u8; FRAME_BYTES];
        tag_frame(7, 123_456, &mut f);
        assert!(f[..TAG_BYTES].iter().all(|&b| b >= 0xF0));
        assert!(f[TAG_BYTES..].iter().all(|&b| b == 0x42));
        assert_eq!(read_tag(&f), Some((7, 123_456)));
        tag_frame(u32::MAX, 0, &mut f);
        assert_eq!(read_tag(&f), Some((u32::MAX, 0)));
        tag_frame(0, 0, &mut f);
        assert_eq!(f[..TAG_BYTES], [0xF0; TAG_BYTES]);
        assert_eq!(read_tag(&f), Some((0, 0)));
    }

    #[test]
    fn untagged_frames_read_no_tag() {
        assert_eq!(read_tag(&[SILENCE; FRAME_BYTES]), None);
        assert_eq!(read_tag(&[0xF1; 15]), None, "too short");
        let mut f = [0xF3u8; FRAME_BYTES];
        f[15] = 0x7F;
        assert_eq!(read_tag(&f), None);
        let speech: [u8; FRAME_BYTES] = Clip::HELLO_EN.bytes()[8000..8160].try_into().unwrap();
        assert_eq!(read_tag(&speech), None);
    }
}
