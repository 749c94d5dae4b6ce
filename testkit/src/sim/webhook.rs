//! Twilio's side of the voice webhook, sans-IO: the form parameters of an inbound call
//! (protocol.md 1.1), their encoding, the `X-Twilio-Signature` (protocol.md 3), and a tiny
//! HTTP/1.1 client (request writer, response parser).
//!
//! The signature is computed here independently of `twilio::signature`: the simulator is the
//! test oracle for callbridge's validator, so it must not share its code (a shared bug would
//! pass every test). It is checked against the worked examples of protocol.md 3.3.

use base64::Engine;
use hmac::{Hmac, Mac};

/// Largest response head accepted; callbridge's heads are a few hundred bytes.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Largest response body accepted; TwiML documents are well under 4 KB.
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// Headers parsed in a response head; callbridge sends fewer than 10.
const MAX_RESPONSE_HEADERS: usize = 32;

/// What Twilio knows about the call when it asks for TwiML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallIdentity {
    /// `CallSid`, `CA` + 32 hex.
    pub call_sid: String,
    /// `AccountSid`, `AC` + 32 hex.
    pub account_sid: String,
    /// `From`: the caller (E.164, `client:…`, SIP URI or an anonymous marker).
    pub from: String,
    /// `To`: our number.
    pub to: String,
    /// Extra parameters appended as sent (e.g. `CallerName`, or unknown keys Twilio may add):
    /// callbridge must keep and sign them all.
    pub extra: Vec<(String, String)>,
}

/// A Twilio SID: `prefix` + 32 lower-case hex digits of `n` (e.g. `sid("CA", 1)`), so
/// simulated calls are reproducible.
pub fn sid(prefix: &str, n: u128) -> String {
    format!("{prefix}{n:032x}")
}

/// The parameters of a voice request for an inbound call in state `call_status` (`ringing` for
/// the first webhook, `in-progress` for a `<Redirect>`), as Twilio sends them (protocol.md 1.1):
/// geographic fields present but empty except the country, legacy duplicates included.
pub fn voice_params(call: &CallIdentity, call_status: &str) -> Vec<(String, String)> {
    let (from_country, to_country) = (country_of(&call.from), country_of(&call.to));
    let mut p: Vec<(String, String)> = [
        ("AccountSid", call.account_sid.as_str()),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call.call_sid.as_str()),
        ("CallStatus", call_status),
        (
            "CallToken",
            "{\"parentCallInfoToken\":\"sim\",\"identityHeaderTokens\":[]}",
        ),
        ("Called", call.to.as_str()),
        ("CalledCity", ""),
        ("CalledCountry", to_country),
        ("CalledState", ""),
        ("CalledZip", ""),
        ("Caller", call.from.as_str()),
        ("CallerCity", ""),
        ("CallerCountry", from_country),
        ("CallerState", ""),
        ("CallerZip", ""),
        ("Direction", "inbound"),
        ("From", call.from.as_str()),
        ("FromCity", ""),
        ("FromCountry", from_country),
        ("FromState", ""),
        ("FromZip", ""),
        ("To", call.to.as_str()),
        ("ToCity", ""),
        ("ToCountry", to_country),
        ("ToState", ""),
        ("ToZip", ""),
    ]
    .iter()
    .map(|&(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    p.extend(call.extra.iter().cloned());
    p
}

/// ISO country of an E.164 number for the few prefixes the tests use; empty otherwise (Twilio
/// sends empty strings when it does not know).
fn country_of(number: &str) -> &'static str {
    match number {
        n if n.starts_with("+81") => "JP",
        n if n.starts_with("+1") => "US",
        n if n.starts_with("+44") => "GB",
        _ => "",
    }
}

/// `application/x-www-form-urlencoded` body: unreserved bytes as is, space as `+`, the rest
/// `%XX` (upper-case hex, as Twilio sends).
pub fn form_encode(params: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(&mut out, k);
        out.push('=');
        encode_component(&mut out, v);
    }
    out
}

/// Percent-encodes one name or value.
fn encode_component(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xF)] as char);
            }
        }
    }
}

/// `X-Twilio-Signature` of a request to `url` with form `params` (protocol.md 3.1): HMAC-SHA1,
/// keyed with the auth token, over the URL followed by every `name value` pair sorted by name
/// then value (byte order), identical pairs once; base64 with padding.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).expect("hmac takes any key");
    mac.update(url.as_bytes());
    for (k, v) in pairs {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Appends an HTTP/1.1 request like Twilio's webhook requests: `Host`, Twilio's `User-Agent`,
/// `extra_headers` (e.g. `X-Twilio-Signature`), a form `Content-Type` (unless `extra_headers`
/// name one) and `Content-Length` when there is a body, `Connection: close` (one request per connection keeps the client trivial).
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: TwilioProxy/1.1\r\nAccept: */*\r\n"
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let typed = extra_headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !body.is_empty() || method == "POST" {
        if !typed {
            head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order (names as sent).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpClientError {
    /// The head is not valid HTTP.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// The head is larger than [`MAX_RESPONSE_HEAD`].
    #[error("response head too large")]
    HeadTooLarge,
    /// The body is larger than [`MAX_RESPONSE_BODY`].
    #[error("response body too large")]
    BodyTooLarge,
    /// `Content-Length` is not a number, or given twice with different values.
    #[error("bad content-length")]
    BadContentLength,
    /// `Transfer-Encoding` (chunked) is not supported by this client.
    #[error("transfer-encoding not supported")]
    TransferEncoding,
    /// The connection closed before the response was complete.
    #[error("connection closed before the response was complete")]
    Truncated,
}

/// Parses a response from everything read so far; `eof` says the peer closed. `Ok(None)`: read
/// more. Without `Content-Length` the body runs to the end of the connection.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<HttpResponse>, HttpClientError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf).map_err(HttpClientError::Malformed)? {
        httparse::Status::Complete(n) if n <= MAX_RESPONSE_HEAD => n,
        httparse::Status::Complete(_) => return Err(HttpClientError::HeadTooLarge),
        httparse::Status::Partial if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(HttpClientError::HeadTooLarge)
        }
        httparse::Status::Partial if eof => return Err(HttpClientError::Truncated),
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    if headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(HttpClientError::TransferEncoding);
    }
    let rest = &buf[head_len..];
    let body = match content_length(&headers)? {
        Some(n) if n > MAX_RESPONSE_BODY => return Err(HttpClientError::BodyTooLarge),
        Some(n) if rest.len() >= n => &rest[..n],
        Some(_) if eof => return Err(HttpClientError::Truncated),
        Some(_) => return Ok(None),
        None if rest.len() > MAX_RESPONSE_BODY => return Err(HttpClientError::BodyTooLarge),
        None if eof => rest,
        None => return Ok(None),
    };
    Ok(Some(HttpResponse {
        status,
        headers,
        body: body.to_vec(),
    }))
}

/// The `Content-Length`, if any; several headers must agree.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, HttpClientError> {
    let mut found = None;
    for (_, v) in headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpClientError::BadContentLength);
        }
        let n: usize = v.parse().map_err(|_| HttpClientError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(HttpClientError::BadContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn signatures_match_the_worked_examples_of_protocol_3_3() {
        let ex1 = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &ex1),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        // Given out of order on purpose: the signature sorts.
        let ex2 = params(&[
            ("To", "+81501234567"),
            ("AccountSid", "AC00000000000000000000000000000001"),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", "CA00000000000000000000000000000001"),
            ("CallStatus", "ringing"),
            ("Called", "+81501234567"),
            ("Caller", "+819012345678"),
            ("Direction", "inbound"),
            ("From", "+819012345678"),
            ("FromCountry", "JP"),
            ("ToCountry", "JP"),
        ]);
        let voice = "https://bridge.example.com/api/twilio/voice";
        assert_eq!(
            signature(TOKEN, voice, &ex2),
            "DBGkIL/deAPzeQrqy7FeC/dD7II="
        );
        assert_eq!(
            signature(
                TOKEN,
                "https://bridge.example.com:443/api/twilio/voice",
                &ex2
            ),
            "SSB96hVnynFx1zZBk+1C8HUWsV8="
        );
        let ex3 = params(&[
            ("CallSid", "CA00000000000000000000000000000002"),
            ("CallerName", "山田 太郎"),
            ("From", "+819012345678"),
            ("FromCity", "東京"),
            ("To", "+81501234567"),
        ]);
        assert_eq!(
            signature(TOKEN, voice, &ex3),
            "MGl1857CXI5JgYMrgBT92lxoSRI="
        );
        let ex4 = params(&[
            ("CallSid", "CA00000000000000000000000000000003"),
            ("CallStatus", "in-progress"),
            ("From", "+819012345678"),
            ("To", "+81501234567"),
        ]);
        assert_eq!(
            signature(
                TOKEN,
                "https://bridge.example.com/api/twilio/after-stream/c_7f3a9e?reason=hangup&n=2",
                &ex4
            ),
            "O5H+V/T9kRFXjP9vBGz+oxi//ZA="
        );
        assert_eq!(
            signature(
                TOKEN,
                "wss://bridge.example.com/api/twilio/media-stream/c_7f3a9e",
                &[]
            ),
            "eosMwI7ikrYizmIKkK8C5oIgIg8="
        );
        let ex6 = params(&[
            ("CallSid", "CA00000000000000000000000000000004"),
            ("Tag", "b"),
            ("Tag", "a"),
            ("Tag", "b"),
            ("To", "+81501234567"),
        ]);
        assert_eq!(
            signature(TOKEN, "https://bridge.example.com/api/twilio/status", &ex6),
            "GDeyi3yq756jYwZh9Q6oR4C4UsA="
        );
    }

    #[test]
    fn a_different_token_or_value_changes_the_signature() {
        let p = params(&[("From", "+819012345678")]);
        let url = "https://h.example/api/twilio/voice";
        let base = signature(TOKEN, url, &p);
        assert_ne!(signature("other", url, &p), base);
        assert_ne!(
            signature(TOKEN, url, &params(&[("From", "+819012345679")])),
            base
        );
    }

    #[test]
    fn form_encoding_matches_twilios_wire_form() {
        let p = params(&[
            ("CallerName", "山田 太郎"),
            ("From", "+81 9"),
            ("a&b", "c=d"),
        ]);
        assert_eq!(
            form_encode(&p),
            "CallerName=%E5%B1%B1%E7%94%B0+%E5%A4%AA%E9%83%8E&From=%2B81+9&a%26b=c%3Dd"
        );
        assert_eq!(form_encode(&[]), "");
    }

    #[test]
    fn voice_params_carry_every_field_of_an_inbound_call() {
        let call = CallIdentity {
            call_sid: sid("CA", 1),
            account_sid: sid("AC", 1),
            from: "+819012345678".to_owned(),
            to: "+81501234567".to_owned(),
            extra: params(&[("CallerName", "山田 太郎")]),
        };
        let p = voice_params(&call, "ringing");
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CallSid"), Some("CA00000000000000000000000000000001"));
        assert_eq!(get("AccountSid").map(str::len), Some(34));
        assert_eq!(get("CallStatus"), Some("ringing"));
        assert_eq!(get("Direction"), Some("inbound"));
        assert_eq!(get("ApiVersion"), Some("2010-04-01"));
        assert_eq!(get("Caller"), get("From"));
        assert_eq!(get("Called"), get("To"));
        assert_eq!(get("FromCountry"), Some("JP"));
        assert_eq!(get("FromCity"), Some(""), "empty values are still sent");
        assert_eq!(get("CallerName"), Some("山田 太郎"));
        assert_eq!(p.len(), 27);
    }

    #[test]
    fn request_has_twilio_headers_and_the_form_body() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "POST",
            "bridge.example.com",
            "/api/twilio/voice",
            &[("X-Twilio-Signature", "abc=")],
            b"a=1",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /api/twilio/voice HTTP/1.1\r\nHost: bridge.example.com\r\n"));
        assert!(text.contains("\r\nX-Twilio-Signature: abc=\r\n"));
        assert!(text.contains("\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
        assert!(text.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\na=1"));
    }

    #[test]
    fn a_named_content_type_is_the_only_one() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "PUT",
            "h",
            "/x",
            &[("Content-Type", "application/json")],
            b"{}",
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("Content-Type:").count(), 1, "{text}");
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
    }

    #[test]
    fn response_with_content_length_waits_for_its_body() {
        let full =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 11\r\n\r\n<Response/>";
        for cut in [10, 60, full.len() - 1] {
            assert_eq!(parse_response(&full[..cut], false), Ok(None), "cut {cut}");
        }
        let r = parse_response(full, false).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/xml"));
        assert_eq!(r.body, b"<Response/>");
        assert_eq!(
            parse_response(&full[..60], true),
            Err(HttpClientError::Truncated)
        );
    }

    #[test]
    fn response_without_content_length_runs_to_eof() {
        let r = b"HTTP/1.1 403 Forbidden\r\n\r\nno";
        assert_eq!(parse_response(r, false), Ok(None));
        let r = parse_response(r, true).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (403, &b"no"[..]));
    }

    #[test]
    fn malformed_responses_are_refused_with_a_reason() {
        assert!(matches!(
            parse_response(b"HTTX/1.1 200 OK\r\n\r\n", false),
            Err(HttpClientError::Malformed(_))
        ));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false),
            Err(HttpClientError::BadContentLength)
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                false
            ),
            Err(HttpClientError::BadContentLength)
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Err(HttpClientError::TransferEncoding)
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
                false
            ),
            Err(HttpClientError::BodyTooLarge)
        );
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_RESPONSE_HEAD + 1, b'a');
        assert_eq!(
            parse_response(&huge, false),
            Err(HttpClientError::HeadTooLarge)
        );
        assert_eq!(parse_response(b"", true), Err(HttpClientError::Truncated));
    }
}
