//! G.711 μ-law helpers, the mock's deterministic response audio, and its energy VAD.
//!
//! Audio here is always `audio/pcmu`: 8000 samples/s, one byte per sample, so 8 bytes = 1 ms.

/// μ-law bytes per millisecond (8 kHz, 1 byte per sample; protocol.md glossary).
pub const BYTES_PER_MS: u64 = 8;

/// Length of one VAD analysis window. 20 ms is the frame Twilio sends, and the window speech
/// detectors commonly use.
pub const VAD_WINDOW_MS: u64 = 20;

/// Bytes in one VAD window.
const VAD_WINDOW_BYTES: usize = (VAD_WINDOW_MS * BYTES_PER_MS) as usize;

/// Bytes per tag group of [`mock_audio`]: one 32-bit tag word, one bit per byte.
pub const MOCK_AUDIO_TAG_BYTES: usize = 32;

/// One period of the mock tone, 20 samples = 400 Hz at 8 kHz, amplitude 6000 (about −15 dBFS):
/// `round(6000 · sin(2πk/20))`. A fixed table (not `f64::sin`) so the bytes are identical on every
/// platform.
const TONE_PERIOD: [i16; 20] = [
    0, 1854, 3527, 4854, 5706, 6000, 5706, 4854, 3527, 1854, 0, -1854, -3527, -4854, -5706, -6000,
    -5706, -4854, -3527, -1854,
];

/// Bias added before μ-law encoding (ITU-T G.711).
const ULAW_BIAS: i32 = 0x84;

/// Largest magnitude μ-law can encode once the bias is added (ITU-T G.711).
const ULAW_CLIP: i32 = 32635;

/// Decodes one μ-law byte to a 16-bit linear sample (ITU-T G.711; `0xFF` and `0x7F` are silence).
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    let sample = if u & 0x80 != 0 { -magnitude } else { magnitude };
    // The magnitude is at most 32124, so the value always fits.
    i16::try_from(sample).unwrap_or(i16::MAX)
}

/// Encodes one 16-bit linear sample as μ-law (ITU-T G.711).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut x = i32::from(sample);
    let sign: u8 = if x < 0 { 0x80 } else { 0 };
    x = x.abs().min(ULAW_CLIP) + ULAW_BIAS;
    // x is in [0x84, 0x7FFF]: its top bit is bit 7..=14, giving exponent 0..=7.
    let top_bit = 31 - x.leading_zeros();
    let exponent = top_bit.saturating_sub(7).min(7);
    let mantissa = ((x >> (exponent + 3)) & 0x0F) as u8;
    !(sign | ((exponent as u8) << 4) | mantissa)
}

/// The audio of the mock's response number `response_seq`: `len` μ-law bytes starting at byte
/// `offset` of that response.
///
/// Each byte is a 400 Hz tone sample (so it sounds like a beep and trips an energy VAD) whose
/// least significant bit carries a tag: bytes `32g .. 32g+32` hold, most significant bit first,
/// the 32-bit word `(response_seq mod 256) << 24 | (g mod 2^24)`. A receiver can therefore check
/// delivery two ways: compare the concatenated bytes of a response with
/// `mock_audio(seq, 0, n)`, or read any 32-byte-aligned group with [`decode_mock_audio_tag`] to
/// learn which response and byte offset it belongs to. Changing the LSB of a μ-law byte moves the
/// sample by one quantisation step, which is inaudible next to the tone.
pub fn mock_audio(response_seq: u32, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset.saturating_add(len))
        .map(|at| mock_audio_byte(response_seq, at))
        .collect()
}

/// Byte `at` of response `response_seq` (see [`mock_audio`]).
fn mock_audio_byte(response_seq: u32, at: usize) -> u8 {
    let tone = linear_to_ulaw(TONE_PERIOD[at % TONE_PERIOD.len()]);
    let group = (at / MOCK_AUDIO_TAG_BYTES) as u32 & 0x00FF_FFFF;
    let word = ((response_seq & 0xFF) << 24) | group;
    let bit = (word >> (31 - (at % MOCK_AUDIO_TAG_BYTES))) & 1;
    (tone & !1) | bit as u8
}

/// Reads the tag of one 32-byte-aligned group of [`mock_audio`]: `(response_seq mod 256, byte
/// offset of the group)`. `None` if `group` is not exactly [`MOCK_AUDIO_TAG_BYTES`] long.
pub fn decode_mock_audio_tag(group: &[u8]) -> Option<(u32, usize)> {
    if group.len() != MOCK_AUDIO_TAG_BYTES {
        return None;
    }
    let word = group
        .iter()
        .fold(0u32, |acc, byte| (acc << 1) | u32::from(byte & 1));
    let offset = (word & 0x00FF_FFFF) as usize * MOCK_AUDIO_TAG_BYTES;
    Some((word >> 24, offset))
}

/// Mean absolute linear amplitude of μ-law bytes (0 for an empty slice).
pub fn mean_abs_amplitude(ulaw: &[u8]) -> f64 {
    if ulaw.is_empty() {
        return 0.0;
    }
    let sum: u64 = ulaw
        .iter()
        .map(|&b| u64::from(ulaw_to_linear(b).unsigned_abs()))
        .sum();
    sum as f64 / ulaw.len() as f64
}

/// A span of caller audio the VAD treats as speech whatever its energy: from `start_ms` to
/// `start_ms + duration_ms` on the input timeline (ms of caller audio appended since the session
/// began). This is the "speech_started after N ms of caller audio" scripting mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechSpan {
    /// Input-timeline position where speech begins, ms.
    pub start_ms: u64,
    /// How long the scripted speech lasts, ms.
    pub duration_ms: u64,
}

impl SpeechSpan {
    /// Whether the window `[window_start_ms, window_start_ms + VAD_WINDOW_MS)` overlaps the span.
    fn overlaps(&self, window_start_ms: u64) -> bool {
        window_start_ms + VAD_WINDOW_MS > self.start_ms
            && window_start_ms < self.start_ms.saturating_add(self.duration_ms)
    }
}

/// The active VAD settings (from the session's `turn_detection`, and the mock's config).
#[derive(Debug, Clone)]
pub(super) struct VadParams {
    /// A window is speech when its mean absolute amplitude exceeds this.
    pub(super) amplitude_threshold: f64,
    /// `prefix_padding_ms`: subtracted from the detected start for `audio_start_ms`.
    pub(super) prefix_padding_ms: u64,
    /// `silence_duration_ms`: this much silence after speech ends the turn.
    pub(super) silence_duration_ms: u64,
    /// Whether energy counts at all (off: only scripted spans are speech).
    pub(super) energy: bool,
}

/// What the VAD saw in a batch of audio, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VadEvent {
    /// Speech began; `audio_start_ms` already has the prefix padding subtracted.
    SpeechStarted {
        /// Input-timeline ms.
        audio_start_ms: u64,
    },
    /// Enough silence followed speech.
    SpeechStopped {
        /// Input-timeline ms where the silence began.
        audio_end_ms: u64,
    },
}

/// Whether the VAD is inside a speech turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VadState {
    /// No speech turn open.
    Silence,
    /// Speech turn open; `silent_ms` of silence since the last speech window.
    Speech { silent_ms: u64 },
}

/// A window-by-window energy VAD over the input timeline.
#[derive(Debug)]
pub(super) struct Vad {
    /// Bytes of an incomplete window carried to the next append.
    pending: Vec<u8>,
    /// Input-timeline position of the next window to analyse, ms.
    position_ms: u64,
    /// Turn state.
    state: VadState,
}

impl Vad {
    /// A VAD at the start of the input timeline.
    pub(super) fn new() -> Self {
        Vad {
            pending: Vec::with_capacity(VAD_WINDOW_BYTES),
            position_ms: 0,
            state: VadState::Silence,
        }
    }

    /// Ends any open turn without an event (buffer cleared or committed by hand, VAD disabled).
    pub(super) fn reset_turn(&mut self) {
        self.state = VadState::Silence;
    }

    /// Analyses `bytes` (appended caller audio). With `params` `None` (turn detection off) the
    /// timeline still advances but nothing is detected.
    pub(super) fn push(
        &mut self,
        bytes: &[u8],
        params: Option<&VadParams>,
        script: &[SpeechSpan],
        out: &mut Vec<VadEvent>,
    ) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = (VAD_WINDOW_BYTES - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == VAD_WINDOW_BYTES {
                let window = std::mem::take(&mut self.pending);
                self.analyse_window(&window, params, script, out);
                self.pending = window;
                self.pending.clear();
            }
        }
    }

    /// Classifies one full window and advances the turn state.
    fn analyse_window(
        &mut self,
        window: &[u8],
        params: Option<&VadParams>,
        script: &[SpeechSpan],
        out: &mut Vec<VadEvent>,
    ) {
        let start_ms = self.position_ms;
        self.position_ms += VAD_WINDOW_MS;
        let Some(params) = params else {
            self.state = VadState::Silence;
            return;
        };
        let scripted = script.iter().any(|span| span.overlaps(start_ms));
        let loud = params.energy && mean_abs_amplitude(window) > params.amplitude_threshold;
        let speech = scripted || loud;
        match (self.state, speech) {
            (VadState::Silence, true) => {
                self.state = VadState::Speech { silent_ms: 0 };
                out.push(VadEvent::SpeechStarted {
                    audio_start_ms: start_ms.saturating_sub(params.prefix_padding_ms),
                });
            }
            (VadState::Speech { .. }, true) => self.state = VadState::Speech { silent_ms: 0 },
            (VadState::Speech { silent_ms }, false) => {
                let silent_ms = silent_ms + VAD_WINDOW_MS;
                if silent_ms >= params.silence_duration_ms {
                    self.state = VadState::Silence;
                    out.push(VadEvent::SpeechStopped {
                        audio_end_ms: self.position_ms - silent_ms,
                    });
                } else {
                    self.state = VadState::Speech { silent_ms };
                }
            }
            (VadState::Silence, false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_silence_decodes_to_zero_and_round_trips() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        for byte in 0..=255u8 {
            let linear = ulaw_to_linear(byte);
            let again = linear_to_ulaw(linear);
            assert_eq!(ulaw_to_linear(again), linear, "byte {byte:#04x}");
        }
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
    }

    #[test]
    fn mock_audio_is_deterministic_and_sliceable() {
        let whole = mock_audio(3, 0, 1000);
        assert_eq!(whole.len(), 1000);
        assert_eq!(mock_audio(3, 200, 300), whole[200..500].to_vec());
        assert_ne!(mock_audio(4, 0, 1000), whole);
    }

    #[test]
    fn mock_audio_tags_name_the_response_and_offset() {
        let bytes = mock_audio(7, 0, 4000);
        for (index, group) in bytes.chunks(MOCK_AUDIO_TAG_BYTES).enumerate() {
            assert_eq!(
                decode_mock_audio_tag(group),
                Some((7, index * MOCK_AUDIO_TAG_BYTES))
            );
        }
        assert_eq!(decode_mock_audio_tag(&bytes[..31]), None);
    }

    #[test]
    fn mock_audio_is_loud_enough_to_be_speech() {
        let amplitude = mean_abs_amplitude(&mock_audio(1, 0, 160));
        assert!(amplitude > 3000.0, "{amplitude}");
        assert_eq!(mean_abs_amplitude(&[0xFF; 160]), 0.0);
        assert_eq!(mean_abs_amplitude(&[]), 0.0);
    }

    fn params() -> VadParams {
        VadParams {
            amplitude_threshold: 500.0,
            prefix_padding_ms: 300,
            silence_duration_ms: 100,
            energy: true,
        }
    }

    #[test]
    fn vad_reports_speech_start_with_prefix_and_stop_after_silence() {
        let mut vad = Vad::new();
        let mut events = Vec::new();
        vad.push(&[0xFF; 8 * 1000], Some(&params()), &[], &mut events);
        assert!(events.is_empty());
        vad.push(
            &mock_audio(1, 0, 8 * 400),
            Some(&params()),
            &[],
            &mut events,
        );
        assert_eq!(
            events,
            vec![VadEvent::SpeechStarted {
                audio_start_ms: 700
            }]
        );
        events.clear();
        vad.push(&[0xFF; 8 * 80], Some(&params()), &[], &mut events);
        assert!(events.is_empty());
        vad.push(&[0xFF; 8 * 20], Some(&params()), &[], &mut events);
        assert_eq!(events, vec![VadEvent::SpeechStopped { audio_end_ms: 1400 }]);
    }

    #[test]
    fn vad_joins_windows_split_across_appends() {
        let mut vad = Vad::new();
        let mut events = Vec::new();
        let tone = mock_audio(1, 0, 160);
        vad.push(&tone[..100], Some(&params()), &[], &mut events);
        assert!(events.is_empty());
        vad.push(&tone[100..], Some(&params()), &[], &mut events);
        assert_eq!(events, vec![VadEvent::SpeechStarted { audio_start_ms: 0 }]);
    }

    #[test]
    fn vad_scripted_span_is_speech_even_when_silent() {
        let mut vad = Vad::new();
        let mut events = Vec::new();
        let script = [SpeechSpan {
            start_ms: 500,
            duration_ms: 200,
        }];
        let quiet = VadParams {
            energy: false,
            ..params()
        };
        vad.push(
            &mock_audio(1, 0, 8 * 1000),
            Some(&quiet),
            &script,
            &mut events,
        );
        assert_eq!(
            events,
            vec![
                VadEvent::SpeechStarted {
                    audio_start_ms: 200
                },
                VadEvent::SpeechStopped { audio_end_ms: 700 },
            ]
        );
    }

    #[test]
    fn vad_without_params_detects_nothing_but_keeps_the_timeline() {
        let mut vad = Vad::new();
        let mut events = Vec::new();
        vad.push(&mock_audio(1, 0, 8 * 100), None, &[], &mut events);
        assert!(events.is_empty());
        vad.push(&mock_audio(1, 0, 160), Some(&params()), &[], &mut events);
        assert_eq!(events, vec![VadEvent::SpeechStarted { audio_start_ms: 0 }]);
    }
}
