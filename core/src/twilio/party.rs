//! Callers and called parties as they may appear in logs: never whole.
//!
//! Twilio's `From` and `To` (protocol.md 1.1) are personal data. At info level callbridge logs
//! only enough to tell calls apart:
//!
//! | value | logged as |
//! | --- | --- |
//! | E.164 `+819012345678`, or other digits | `+…5678` / `…5678` (the last 4 digits) |
//! | `sip:alice@pbx.example.com;transport=tls` | `sip:…@pbx.example.com` (scheme and host) |
//! | `client:alice` | `client:…` |
//! | `anonymous` (and the other withheld markers) | as it is |
//! | anything else | `…` |

use std::fmt;

/// Digits of a number kept in the log.
pub const SHOWN_DIGITS: usize = 4;

/// Values carriers and Twilio use for a withheld caller id: nothing personal, and useful to see.
const WITHHELD: &[&str] = &[
    "anonymous",
    "restricted",
    "unknown",
    "unavailable",
    "private",
];

/// `From`/`To` masked for the log; see the module docs. Formats without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0.trim();
        if v.is_empty() {
            return Ok(());
        }
        if WITHHELD.iter().any(|w| v.eq_ignore_ascii_case(w)) {
            return f.write_str(v);
        }
        let (plus, digits) = match v.strip_prefix('+') {
            Some(rest) => ("+", rest),
            None => ("", v),
        };
        if digits.len() > SHOWN_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
            return write!(f, "{plus}…{}", &digits[digits.len() - SHOWN_DIGITS..]);
        }
        if let Some((scheme, rest)) = v.split_once(':') {
            if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
                // sip:user@host:port;params?headers → the host (and port) only.
                let host = rest
                    .rsplit_once('@')
                    .map_or(rest, |(_, h)| h)
                    .split([';', '?'])
                    .next()
                    .unwrap_or("");
                return write!(f, "{scheme}:…@{host}");
            }
            if scheme.eq_ignore_ascii_case("client") {
                return write!(f, "{scheme}:…");
            }
        }
        f.write_str("…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(v: &str) -> String {
        Masked(v).to_string()
    }

    #[test]
    fn numbers_keep_their_last_four_digits() {
        assert_eq!(shown("+819012345678"), "+…5678");
        assert_eq!(shown("+15005550006"), "+…0006");
        assert_eq!(shown("266696687"), "…6687");
        assert_eq!(shown("1234"), "…", "too short to show any of it");
    }

    #[test]
    fn sip_uris_keep_their_scheme_and_host_and_clients_their_scheme() {
        assert_eq!(
            shown("sip:alice@pbx.example.com;transport=tls"),
            "sip:…@pbx.example.com"
        );
        assert_eq!(shown("sips:+8190123@10.0.0.1:5061"), "sips:…@10.0.0.1:5061");
        assert_eq!(shown("client:alice"), "client:…");
    }

    #[test]
    fn withheld_markers_stay_and_anything_else_is_hidden() {
        assert_eq!(shown("anonymous"), "anonymous");
        assert_eq!(shown("Restricted"), "Restricted");
        assert_eq!(shown(""), "");
        assert_eq!(shown("Alice Smith"), "…");
        assert_eq!(shown("+81-90-1234-5678"), "…");
    }
}
