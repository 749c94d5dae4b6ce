//! Base64 checks without decoding.
//!
//! Audio travels as base64 text in both directions (Twilio `media.payload`, OpenAI
//! `response.output_audio.delta`) and callbridge passes it through untouched. It only has to know
//! that the text is well-formed, so the far side can decode it, and how many bytes it carries
//! (the playout ledger counts milliseconds as bytes / 8). Decoding it would cost a copy per frame
//! for nothing.
//!
//! # What "valid" means here
//!
//! The standard alphabet (`A-Z a-z 0-9 + /`), a length that is a multiple of 4, and `=` padding
//! only as the last one or two characters (the empty string is valid). Line breaks, whitespace and
//! the URL-safe alphabet are rejected.
//!
//! **Non-zero trailing bits are accepted.** In `xx==` the last four bits of the second character,
//! and in `xxx=` the last two bits of the third, carry no data; a canonical encoder sets them to
//! zero and the `base64` crate's `STANDARD` engine rejects text where they are not. Twilio and
//! OpenAI only send canonical text, and every decoder we hand the audio to (Twilio's, OpenAI's)
//! ignores those bits, so rejecting such a frame would drop playable audio for no gain. The check
//! therefore equals `base64`'s `STANDARD` alphabet with
//! `GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true)` (tested below).

/// Bytes checked per block of the vectorizable loop. 32 bytes fill one AVX2 register; the
/// compiler unrolls the fixed-size inner loop into a few vector compares and one reduction.
const BLOCK: usize = 32;

/// The padding character.
const PAD: u8 = b'=';

/// True when `b` is one of the 64 characters of the standard alphabet.
///
/// Written as range compares combined with `|` (no table lookup, no early exit), so a loop over
/// it vectorizes.
#[inline(always)]
fn is_b64_char(b: u8) -> bool {
    let upper = b.wrapping_sub(b'A') < 26;
    let lower = b.wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    upper | lower | digit | (b == b'+') | (b == b'/')
}

/// True when every byte of `bytes` is an alphabet character (no padding).
#[inline]
fn all_b64_chars(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(BLOCK);
    let mut ok = true;
    for block in &mut blocks {
        let mut block_ok = true;
        for &b in block {
            block_ok &= is_b64_char(b);
        }
        ok &= block_ok;
    }
    for &b in blocks.remainder() {
        ok &= is_b64_char(b);
    }
    ok
}

/// True when `b64` is well-formed standard base64 with canonical `=` padding (see the module
/// doc; non-zero trailing bits are accepted). Does not decode.
pub fn is_valid(b64: &[u8]) -> bool {
    if !b64.len().is_multiple_of(4) {
        return false;
    }
    let Some((body, last)) = b64.split_last_chunk::<4>() else {
        return true; // empty
    };
    let [a, b, c, d] = *last;
    let tail_ok = match (c == PAD, d == PAD) {
        (false, false) => is_b64_char(c) & is_b64_char(d),
        (false, true) => is_b64_char(c),
        (true, true) => true,
        (true, false) => false,
    };
    tail_ok & is_b64_char(a) & is_b64_char(b) & all_b64_chars(body)
}

/// The number of bytes `b64` decodes to: `len / 4 * 3` minus one per trailing `=` (at most two).
///
/// Meant for text that passed [`is_valid`]; for other text it returns the same formula without
/// failing (a length that is not a multiple of 4 is rounded down to whole groups).
pub fn decoded_len(b64: &[u8]) -> usize {
    let padding = b64.iter().rev().take(2).take_while(|&&b| b == PAD).count();
    (b64.len() / 4 * 3).saturating_sub(padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::alphabet::STANDARD as STANDARD_ALPHABET;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
    use base64::Engine as _;
    use proptest::prelude::*;

    /// `STANDARD`, but accepting non-zero trailing bits: the reference for [`is_valid`].
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &STANDARD_ALPHABET,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );

    #[test]
    fn accepts_canonical_encodings_of_every_padding_length() {
        for text in [
            "",
            "AA==",
            "AAA=",
            "AAAA",
            "/////39/fn5+fn5+/////w==",
            "+/+/",
        ] {
            assert!(is_valid(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn rejects_bad_lengths_padding_and_alphabets() {
        for text in [
            "A", "AA", "AAA", "AAAAA", "====", "A===", "AA=A", "A=AA", "=AAA", "AA==AAAA",
            "AAA=AAAA", "AA-_", "AA A", "AA\nA", "AAA\0", "AAé=", "AAAA====",
        ] {
            assert!(!is_valid(text.as_bytes()), "{text:?}");
        }
    }

    #[test]
    fn accepts_non_zero_trailing_bits_as_documented() {
        // "AB==" has bits set in the unused low bits of 'B'; STANDARD rejects it, we do not.
        assert!(STANDARD.decode("AB==").is_err());
        assert!(is_valid(b"AB=="));
        assert!(is_valid(b"AAB="));
    }

    #[test]
    fn rejects_a_bad_byte_in_every_position_of_a_long_text() {
        let good = STANDARD.encode([0x5au8; 4800]);
        assert!(is_valid(good.as_bytes()));
        for i in 0..good.len() {
            let mut bad = good.clone().into_bytes();
            bad[i] = b'*';
            assert!(!is_valid(&bad), "position {i}");
        }
    }

    #[test]
    fn decoded_len_counts_padding() {
        assert_eq!(decoded_len(b""), 0);
        assert_eq!(decoded_len(b"AA=="), 1);
        assert_eq!(decoded_len(b"AAA="), 2);
        assert_eq!(decoded_len(b"AAAA"), 3);
        assert_eq!(decoded_len(b"=="), 0);
        assert_eq!(decoded_len(STANDARD.encode([0u8; 160]).as_bytes()), 160);
    }

    /// Base64-looking text: mostly alphabet characters, some padding, some foreign bytes.
    fn b64ish() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            20 => proptest::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".to_vec()
            ),
            2 => Just(b'='),
            1 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..80)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn agrees_with_the_lenient_base64_engine(text in b64ish()) {
            prop_assert_eq!(is_valid(&text), LENIENT.decode(&text).is_ok());
        }

        #[test]
        fn canonical_encodings_are_valid_and_agree_with_standard(
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let text = STANDARD.encode(&data);
            prop_assert!(is_valid(text.as_bytes()));
            prop_assert!(STANDARD.decode(&text).is_ok());
            prop_assert_eq!(decoded_len(text.as_bytes()), data.len());
        }

        #[test]
        fn mutated_encodings_agree_with_the_lenient_engine(
            data in proptest::collection::vec(any::<u8>(), 1..200),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut text = STANDARD.encode(&data).into_bytes();
            let i = at.index(text.len());
            text[i] = byte;
            prop_assert_eq!(is_valid(&text), LENIENT.decode(&text).is_ok());
            if is_valid(&text) {
                prop_assert_eq!(decoded_len(&text), LENIENT.decode(&text).unwrap().len());
            }
        }
    }
}
