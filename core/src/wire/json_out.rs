//! Writing JSON text by hand into reused buffers: the outbound events of the hot path are a
//! handful of fixed shapes, so they are written directly instead of going through serde.

/// Appends `s` as a JSON string literal (with quotes), escaping `"`, `\` and control characters.
///
/// Everything else, including non-ASCII UTF-8, is copied unchanged (JSON allows it).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends the decimal digits of `n`.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(u64_digits(n, &mut digits));
}

/// Appends `x` as a JSON number, written as serde_json writes it (with its formatter, zmij:
/// the shortest form that reads back the same); `null` when it is not finite, which JSON cannot
/// carry.
pub fn write_f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends `true` or `false`.
pub fn write_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// Writes the decimal digits of `n` at the end of `buf` and returns them (no allocation).
pub fn u64_digits(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(input: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, input);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        for x in [0.0, 0.5, 1.0, 0.25, 1.5, 1e-7, 123456.789, -3.0, f64::MAX] {
            let mut out = Vec::new();
            write_f64(&mut out, x);
            assert_eq!(out, serde_json::to_vec(&x).unwrap(), "{x}");
        }
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut out = Vec::new();
            write_f64(&mut out, x);
            assert_eq!(out, b"null");
            assert_eq!(serde_json::to_vec(&x).unwrap(), b"null");
        }
    }

    #[test]
    fn escapes_what_json_requires_and_round_trips() {
        for input in [
            "plain",
            "a\"b\\c",
            "tab\tnl\ncr\r",
            "\u{1}\u{1f}",
            "日本語です",
            "",
        ] {
            let text = s(input);
            let back: String = serde_json::from_str(&text).unwrap();
            assert_eq!(back, input);
        }
        assert_eq!(s("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn writes_numbers() {
        for n in [0u64, 7, 10, 1240, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}
