//! Base64 checks without decoding (temporary minimal version; replaced by the twilio-wire work).

/// Whether `b64` is padded standard base64.
pub fn is_valid(b64: &[u8]) -> bool {
    use base64::Engine;
    b64.len() % 4 == 0
        && base64::engine::general_purpose::STANDARD
            .decode(b64)
            .is_ok()
}

/// Decoded length of valid base64.
pub fn decoded_len(b64: &[u8]) -> usize {
    let pad = b64.iter().rev().take(2).filter(|&&b| b == b'=').count();
    b64.len() / 4 * 3 - pad
}
