//! `application/x-www-form-urlencoded` bodies (the WHATWG URL standard's parser, strict on escapes).
//!
//! Twilio signs the **decoded** parameter values (protocol.md section 3), so decoding must be
//! exact: every pair is kept in order, repeated keys included, empty values included, and a bad
//! `%` escape or invalid UTF-8 is an error rather than a silent replacement character (which would
//! make a valid signature fail for reasons nobody could see).

/// Why a form body or a percent-encoded string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent escape at byte {offset}")]
    BadEscape {
        /// Offset of the `%` in the input that was being decoded.
        offset: usize,
    },
    /// The decoded bytes are not UTF-8.
    #[error("decoded text is not utf-8")]
    InvalidUtf8,
}

/// The pairs of a form body in arrival order, with a lookup helper.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// Parses a body; see [`parse_form`].
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        parse_form(body).map(Form)
    }

    /// The first value for `name` (exact, case-sensitive match, as Twilio's names are).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in arrival order (what the signature check needs).
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Parses `application/x-www-form-urlencoded` bytes into decoded `(key, value)` pairs.
///
/// Pairs are split on `&`; empty pieces (`a=1&&b=2`, a trailing `&`) are skipped as the WHATWG
/// parser does. A piece without `=` is a key with an empty value; only the first `=` splits, so
/// values may contain `=`. Keys and values are decoded with `+` as space.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut pairs = Vec::new();
    let mut start = 0;
    for piece in body.split(|&b| b == b'&') {
        let offset = start;
        start += piece.len() + 1;
        if piece.is_empty() {
            continue;
        }
        let (key, value, value_offset) = match memchr::memchr(b'=', piece) {
            Some(eq) => (&piece[..eq], &piece[eq + 1..], offset + eq + 1),
            None => (piece, &piece[piece.len()..], offset + piece.len()),
        };
        let key = percent_decode(key, true).map_err(|e| shift(e, offset))?;
        let value = percent_decode(value, true).map_err(|e| shift(e, value_offset))?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Makes an escape offset relative to the whole body instead of one key or value.
fn shift(e: FormError, by: usize) -> FormError {
    match e {
        FormError::BadEscape { offset } => FormError::BadEscape {
            offset: offset + by,
        },
        other => other,
    }
}

/// Percent-encodes `s` for a URL path segment or query value: RFC 3986's unreserved characters
/// (`A–Z a–z 0–9 - . _ ~`) stay, every other byte becomes `%XX`. [`percent_decode`] undoes it.
pub fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes `%XX` escapes (either hex case) and, when `plus_as_space`, `+` as a space, then checks
/// the result is UTF-8. Use `plus_as_space = false` for URL paths, where `+` is literal.
pub fn percent_decode(input: &[u8], plus_as_space: bool) -> Result<String, FormError> {
    let needs_work = |b: &u8| *b == b'%' || (plus_as_space && *b == b'+');
    if !input.iter().any(needs_work) {
        let text = std::str::from_utf8(input).map_err(|_| FormError::InvalidUtf8)?;
        return Ok(text.to_owned());
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let byte = input
                    .get(i + 1..i + 3)
                    .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?))
                    .ok_or(FormError::BadEscape { offset: i })?;
                out.push(byte);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| FormError::InvalidUtf8)
}

/// The value of one hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn percent_encode_keeps_unreserved_bytes_and_decode_undoes_it() {
        assert_eq!(percent_encode("gpt-realtime_2.0~x"), "gpt-realtime_2.0~x");
        assert_eq!(percent_encode("+81 50/1?&="), "%2B81%2050%2F1%3F%26%3D");
        for s in ["+819012345678", "a b/c", "注文", "%41"] {
            assert_eq!(
                percent_decode(percent_encode(s).as_bytes(), false).unwrap(),
                s
            );
        }
    }

    #[test]
    fn a_twilio_body_keeps_order_and_decodes_plus_and_escapes() {
        let body =
            b"CallSid=CA1&From=%2B819012345678&CallerName=%E5%B1%B1%E7%94%B0+%E5%A4%AA%E9%83%8E";
        assert_eq!(
            parse_form(body).unwrap(),
            pairs(&[
                ("CallSid", "CA1"),
                ("From", "+819012345678"),
                ("CallerName", "山田 太郎")
            ])
        );
    }

    #[test]
    fn repeated_keys_are_all_kept_in_order() {
        assert_eq!(
            parse_form(b"Tag=b&Tag=a").unwrap(),
            pairs(&[("Tag", "b"), ("Tag", "a")])
        );
    }

    #[test]
    fn empty_values_and_bare_keys_give_empty_strings() {
        assert_eq!(
            parse_form(b"a=&b&c=1").unwrap(),
            pairs(&[("a", ""), ("b", ""), ("c", "1")])
        );
    }

    #[test]
    fn empty_pieces_are_skipped_and_only_the_first_equals_splits() {
        assert_eq!(
            parse_form(b"&a=1&&b=x=y&").unwrap(),
            pairs(&[("a", "1"), ("b", "x=y")])
        );
        assert_eq!(parse_form(b"").unwrap(), pairs(&[]));
        assert_eq!(parse_form(b"=v").unwrap(), pairs(&[("", "v")]));
    }

    #[test]
    fn keys_are_decoded_too() {
        assert_eq!(parse_form(b"a%20b+c=1").unwrap(), pairs(&[("a b c", "1")]));
    }

    #[test]
    fn an_encoded_ampersand_or_plus_stays_inside_the_value() {
        assert_eq!(
            parse_form(b"q=a%26b%3Dc%2B").unwrap(),
            pairs(&[("q", "a&b=c+")])
        );
    }

    #[test]
    fn bad_escapes_are_errors_with_their_body_offset() {
        assert_eq!(
            parse_form(b"a=1&b=%zz"),
            Err(FormError::BadEscape { offset: 6 })
        );
        assert_eq!(parse_form(b"a=%4"), Err(FormError::BadEscape { offset: 2 }));
        assert_eq!(parse_form(b"a%=1"), Err(FormError::BadEscape { offset: 1 }));
        assert_eq!(
            percent_decode(b"%", true),
            Err(FormError::BadEscape { offset: 0 })
        );
    }

    #[test]
    fn invalid_utf8_after_decoding_is_an_error() {
        assert_eq!(parse_form(b"a=%FF"), Err(FormError::InvalidUtf8));
        assert_eq!(parse_form(b"a=%E5%B1"), Err(FormError::InvalidUtf8));
        assert_eq!(parse_form(b"a=\xff"), Err(FormError::InvalidUtf8));
    }

    #[test]
    fn plus_is_literal_when_not_decoding_a_form() {
        assert_eq!(percent_decode(b"a+b%2b", false).unwrap(), "a+b+");
        assert_eq!(percent_decode(b"a+b%2b", true).unwrap(), "a b+");
    }

    #[test]
    fn form_get_returns_the_first_value() {
        let form = Form::parse(b"Tag=b&Tag=a&Empty=").unwrap();
        assert_eq!(form.get("Tag"), Some("b"));
        assert_eq!(form.get("Empty"), Some(""));
        assert_eq!(form.get("tag"), None);
        assert_eq!(form.pairs().len(), 3);
    }
}
