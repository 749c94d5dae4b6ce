//! `X-Twilio-Signature` validation (protocol.md section 3), matching Twilio's official
//! `RequestValidator` (the `twilio` Python package).
//!
//! The signed string is the full URL Twilio requested, followed by every form parameter as
//! `name` + `value`, sorted by name (byte order); the signature is the base64 HMAC-SHA1 of it,
//! keyed with the account's Auth Token.
//!
//! Form decoding and URL reconstruction (public origin + raw path and query) belong to the HTTP
//! layer; this module takes decoded parameters and the URL as Twilio knows it.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// HMAC-SHA1, Twilio's default webhook signature algorithm.
type HmacSha1 = Hmac<Sha1>;

/// Bytes of an HMAC-SHA1 digest; the header carries them as 28 base64 characters.
const DIGEST_LEN: usize = 20;

/// The signature Twilio would send for a request to `url` with the form parameters `params`
/// (decoded names and values, in any order, repeats allowed): base64 of the HMAC-SHA1, keyed
/// with `auth_token`, of `url` followed by the sorted `name`+`value` pairs.
///
/// Sorting follows the official validator: names in byte order (`CallSid` < `CallStatus` <
/// `Called`); a repeated name contributes one pair per **distinct** value, values sorted; empty
/// values still contribute their name.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let pairs = sorted_pairs(params);
    STANDARD.encode(mac_over(auth_token, url, &pairs).finalize().into_bytes())
}

/// True when `signature` (the `X-Twilio-Signature` header value) is Twilio's signature of this
/// request.
///
/// Like the official validator, the signature is accepted over either form of the URL: without
/// a port, or with the port (`url`'s own if it has one, else the default: `:443` for `https`
/// and `wss`, `:80` otherwise), because Twilio is not consistent about which one it signs.
/// The comparison is constant-time.
///
/// Unlike the Python validator, the URL is not normalised by a URL parser (Python's `urlparse`
/// lower-cases the scheme and drops an empty `?`); pass it exactly as Twilio requested it.
pub fn validate(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let mut expected = [0u8; DIGEST_LEN];
    if STANDARD.decode_slice(signature, &mut expected) != Ok(DIGEST_LEN) {
        return false;
    }
    let pairs = sorted_pairs(params);
    let matches = |url: &str| {
        mac_over(auth_token, url, &pairs)
            .verify_slice(&expected)
            .is_ok()
    };
    // Both candidates are always computed, so the time taken does not say which one matched.
    let without = matches(&url_without_port(url));
    let with = matches(&url_with_port(url));
    without | with
}

/// The parameters as the signature orders them: by name then value, identical pairs once.
fn sorted_pairs(params: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    pairs.sort_unstable_by(|a, b| {
        (a.0.as_bytes(), a.1.as_bytes()).cmp(&(b.0.as_bytes(), b.1.as_bytes()))
    });
    pairs.dedup();
    pairs
}

/// The MAC state after feeding the string to sign, ready to finalize or verify.
fn mac_over(auth_token: &str, url: &str, sorted: &[(&str, &str)]) -> HmacSha1 {
    // HMAC takes keys of any length (RFC 2104 hashes long ones), so this never fails.
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("hmac accepts any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Where the port of `url` is: the byte range of `:port` inside the authority (empty, at the
/// end of the authority, when there is none), and the scheme. `None` when `url` has no `://`.
fn port_span(url: &str) -> Option<(&str, std::ops::Range<usize>)> {
    let scheme_end = url.find("://")?;
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    // The last `:` starts the port unless it belongs to an IPv6 literal (`[::1]`).
    let port = authority
        .rfind(':')
        .filter(|&colon| !authority[colon..].contains(']'))
        .filter(|&colon| authority[colon + 1..].bytes().all(|b| b.is_ascii_digit()));
    let span = match port {
        Some(colon) => authority_start + colon..authority_end,
        None => authority_end..authority_end,
    };
    Some((&url[..scheme_end], span))
}

/// `url` without its port (unchanged when it has none).
fn url_without_port(url: &str) -> Cow<'_, str> {
    match port_span(url) {
        Some((_, span)) if !span.is_empty() => {
            Cow::Owned(format!("{}{}", &url[..span.start], &url[span.end..]))
        }
        _ => Cow::Borrowed(url),
    }
}

/// `url` with a port: its own, or the scheme's default inserted.
fn url_with_port(url: &str) -> Cow<'_, str> {
    match port_span(url) {
        Some((scheme, span)) if span.is_empty() => {
            let secure = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss");
            let port = if secure { ":443" } else { ":80" };
            Cow::Owned(format!(
                "{}{port}{}",
                &url[..span.start],
                &url[span.start..]
            ))
        }
        _ => Cow::Borrowed(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn example_2() -> Vec<(String, String)> {
        params(&[
            ("AccountSid", "AC00000000000000000000000000000001"),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", "CA00000000000000000000000000000001"),
            ("CallStatus", "ringing"),
            ("Called", "+81501234567"),
            ("Caller", "+819012345678"),
            ("Direction", "inbound"),
            ("From", "+819012345678"),
            ("FromCountry", "JP"),
            ("To", "+81501234567"),
            ("ToCountry", "JP"),
        ])
    }

    const VOICE_URL: &str = "https://bridge.example.com/api/twilio/voice";

    /// Test-only decoding of an `application/x-www-form-urlencoded` value (the real one lives in
    /// the HTTP layer).
    fn form_decode(s: &str) -> String {
        let mut out = Vec::new();
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn example_1_is_twilios_published_signature() {
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(compute("12345", url, &p), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(validate("12345", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    }

    #[test]
    fn example_2_sorts_upper_case_before_lower_case() {
        let mut p = example_2();
        p.reverse(); // order of arrival does not matter
        assert_eq!(
            compute(TOKEN, VOICE_URL, &p),
            "DBGkIL/deAPzeQrqy7FeC/dD7II="
        );
        assert!(validate(
            TOKEN,
            VOICE_URL,
            &p,
            "DBGkIL/deAPzeQrqy7FeC/dD7II="
        ));
    }

    #[test]
    fn example_3_signs_the_decoded_unicode_values() {
        let body = "CallSid=CA00000000000000000000000000000002&CallerName=%E5%B1%B1%E7%94%B0+%E5%A4%AA%E9%83%8E&From=%2B819012345678&FromCity=%E6%9D%B1%E4%BA%AC&To=%2B81501234567";
        let decoded: Vec<(String, String)> = body
            .split('&')
            .map(|pair| {
                let (n, v) = pair.split_once('=').unwrap();
                (form_decode(n), form_decode(v))
            })
            .collect();
        assert_eq!(decoded[1].1, "山田 太郎");
        assert_eq!(
            compute(TOKEN, VOICE_URL, &decoded),
            "MGl1857CXI5JgYMrgBT92lxoSRI="
        );
        assert!(validate(
            TOKEN,
            VOICE_URL,
            &decoded,
            "MGl1857CXI5JgYMrgBT92lxoSRI="
        ));
        // Signing the still-encoded values gives something else.
        let raw: Vec<(String, String)> = body
            .split('&')
            .map(|pair| {
                let (n, v) = pair.split_once('=').unwrap();
                (n.to_owned(), v.to_owned())
            })
            .collect();
        assert!(!validate(
            TOKEN,
            VOICE_URL,
            &raw,
            "MGl1857CXI5JgYMrgBT92lxoSRI="
        ));
    }

    #[test]
    fn example_4_keeps_the_query_string_in_the_url() {
        let p = params(&[
            ("CallSid", "CA00000000000000000000000000000003"),
            ("CallStatus", "in-progress"),
            ("From", "+819012345678"),
            ("To", "+81501234567"),
        ]);
        let url = "https://bridge.example.com/api/twilio/after-stream/c_7f3a9e?reason=hangup&n=2";
        assert_eq!(compute(TOKEN, url, &p), "O5H+V/T9kRFXjP9vBGz+oxi//ZA=");
        assert!(validate(TOKEN, url, &p, "O5H+V/T9kRFXjP9vBGz+oxi//ZA="));
    }

    #[test]
    fn example_5_websocket_upgrade_signs_the_wss_url_only() {
        let url = "wss://bridge.example.com/api/twilio/media-stream/c_7f3a9e";
        assert_eq!(compute(TOKEN, url, &[]), "eosMwI7ikrYizmIKkK8C5oIgIg8=");
        assert!(validate(TOKEN, url, &[], "eosMwI7ikrYizmIKkK8C5oIgIg8="));
        let https = "https://bridge.example.com/api/twilio/media-stream/c_7f3a9e";
        assert!(!validate(TOKEN, https, &[], "eosMwI7ikrYizmIKkK8C5oIgIg8="));
        // wss takes :443 as its default port, not :80.
        let with_port = "wss://bridge.example.com:443/api/twilio/media-stream/c_7f3a9e";
        assert!(validate(
            TOKEN,
            with_port,
            &[],
            "eosMwI7ikrYizmIKkK8C5oIgIg8="
        ));
        let sig_443 = compute(TOKEN, with_port, &[]);
        assert!(validate(TOKEN, url, &[], &sig_443));
        let sig_80 = compute(
            TOKEN,
            "wss://bridge.example.com:80/api/twilio/media-stream/c_7f3a9e",
            &[],
        );
        assert!(!validate(TOKEN, url, &[], &sig_80));
    }

    #[test]
    fn example_6_repeated_keys_give_one_pair_per_distinct_sorted_value() {
        let p = params(&[
            ("CallSid", "CA00000000000000000000000000000004"),
            ("Tag", "b"),
            ("Tag", "a"),
            ("To", "+81501234567"),
        ]);
        let url = "https://bridge.example.com/api/twilio/status";
        assert_eq!(compute(TOKEN, url, &p), "GDeyi3yq756jYwZh9Q6oR4C4UsA=");
        assert!(validate(TOKEN, url, &p, "GDeyi3yq756jYwZh9Q6oR4C4UsA="));
        // An identical duplicate pair is collapsed into one.
        let mut dup = p.clone();
        dup.push(("Tag".into(), "a".into()));
        assert_eq!(compute(TOKEN, url, &dup), "GDeyi3yq756jYwZh9Q6oR4C4UsA=");
    }

    #[test]
    fn the_443_port_is_accepted_both_ways() {
        let p = example_2();
        let with_port = "https://bridge.example.com:443/api/twilio/voice";
        assert_eq!(
            compute(TOKEN, with_port, &p),
            "SSB96hVnynFx1zZBk+1C8HUWsV8="
        );
        assert!(validate(
            TOKEN,
            VOICE_URL,
            &p,
            "SSB96hVnynFx1zZBk+1C8HUWsV8="
        ));
        assert!(validate(
            TOKEN,
            with_port,
            &p,
            "DBGkIL/deAPzeQrqy7FeC/dD7II="
        ));
        assert!(validate(
            TOKEN,
            with_port,
            &p,
            "SSB96hVnynFx1zZBk+1C8HUWsV8="
        ));
    }

    #[test]
    fn a_wrong_token_or_a_changed_parameter_is_rejected() {
        let p = example_2();
        let sig = "DBGkIL/deAPzeQrqy7FeC/dD7II=";
        assert!(!validate(
            "0123456789abcdef0123456789abcdeF",
            VOICE_URL,
            &p,
            sig
        ));
        let mut changed = p.clone();
        changed[7].1 = "+819012345679".into(); // From
        assert!(!validate(TOKEN, VOICE_URL, &changed, sig));
        let mut added = p.clone();
        added.push(("Extra".into(), String::new())); // empty values still count
        assert!(!validate(TOKEN, VOICE_URL, &added, sig));
        assert!(!validate(
            TOKEN,
            "https://bridge.example.com/api/twilio/voice/",
            &p,
            sig
        ));
    }

    #[test]
    fn malformed_signature_headers_are_rejected() {
        let p = example_2();
        for sig in [
            "",
            "DBGkIL/deAPzeQrqy7FeC/dD7II",
            "DBGkIL/deAPzeQrqy7FeC/dD7II==",
            "DBGkIL/deAPzeQrqy7FeC/dD7II=AAAA",
            "DBGkIL_deAPzeQrqy7FeC_dD7II=",
            " DBGkIL/deAPzeQrqy7FeC/dD7II=",
            "not base64 at all!!",
        ] {
            assert!(!validate(TOKEN, VOICE_URL, &p, sig), "{sig:?}");
        }
    }

    #[test]
    fn port_forms_of_urls() {
        let cases = [
            ("https://h/x", "https://h/x", "https://h:443/x"),
            (
                "https://h:443/x?a=1",
                "https://h/x?a=1",
                "https://h:443/x?a=1",
            ),
            ("http://h", "http://h", "http://h:80"),
            ("wss://h?q", "wss://h?q", "wss://h:443?q"),
            ("HTTPS://h/x", "HTTPS://h/x", "HTTPS://h:443/x"),
            ("https://h:8443/x", "https://h/x", "https://h:8443/x"),
            ("https://[::1]/x", "https://[::1]/x", "https://[::1]:443/x"),
            (
                "https://[::1]:8443/x",
                "https://[::1]/x",
                "https://[::1]:8443/x",
            ),
            ("no-scheme/x", "no-scheme/x", "no-scheme/x"),
        ];
        for (url, without, with) in cases {
            assert_eq!(url_without_port(url), without, "{url}");
            assert_eq!(url_with_port(url), with, "{url}");
        }
    }
}
