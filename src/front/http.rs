//! HTTP/1.1 requests in, responses out: a sans-IO layer over [`httparse`] with explicit limits.
//!
//! The driver owns the socket and an input buffer. After each read it calls [`parse_request`] on
//! the unconsumed bytes: [`Parsed::Partial`] means "read more", [`Parsed::Complete`] hands over
//! one request and says how many bytes it used, so a pipelined or keep-alive request that follows
//! stays in the buffer. Every limit is checked as early as the bytes allow, so a peer can never make
//! us buffer more than [`Limits`] says, even while the request is still incomplete.
//!
//! Only `Content-Length` bodies are supported: Twilio's webhooks always send one, and chunked
//! request bodies would be code with no caller (RFC 9112 section 6.1 lets a server answer 501).

use memchr::memchr;

/// Size bounds for one request. Each value is the largest input we accept before answering with an
/// error status, so memory per connection stays bounded whatever the peer sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (method, target, version; without the line break), else 414.
    pub max_request_line: usize,
    /// Most header fields, else 431. Also the size of httparse's header slot array.
    pub max_headers: usize,
    /// Longest header section (every byte after the request line up to and including the empty
    /// line), else 431.
    pub max_header_bytes: usize,
    /// Largest body announced by `Content-Length`, else 413.
    pub max_body: usize,
}

/// 8 KiB: RFC 9112 section 3 recommends accepting request lines of at least 8000 octets, and it
/// is the common server default (nginx's `large_client_header_buffers`). Twilio's URLs (a path with
/// a signed call token, a short query on callbacks) are a few hundred bytes.
pub const DEFAULT_MAX_REQUEST_LINE: usize = 8 * 1024;
/// 64 fields: Twilio sends about 15; a load balancer adds a handful of `X-Forwarded-*`. 64 leaves
/// ample room while keeping httparse's slot array small.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// 16 KiB: room for 64 ordinary headers (long `User-Agent`s, tracing headers, a bearer token on the
/// admin API) without letting a slow peer pin much memory.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// 64 KiB: a Twilio voice webhook form is 1-2 KB (about 30 short parameters); 64 KiB is a wide
/// margin for new parameters and admin JSON, yet bounds the buffer of every idle connection.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line: DEFAULT_MAX_REQUEST_LINE,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// One parsed request, owning its parts so the input buffer can be reused at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method as sent (`GET`, `POST`, ...). Methods are case-sensitive (RFC 9110 9.1).
    pub method: String,
    /// The raw path, still percent-encoded, without the query: what the router matches and what
    /// Twilio's signature covers.
    pub path: String,
    /// The raw query after `?`, exactly as sent (the signature covers the bytes as received, so it
    /// must never be re-encoded). `None` when the target has no `?`.
    pub query: Option<String>,
    /// Header fields in arrival order, names as sent (compare case-insensitively), values as bytes
    /// because HTTP allows non-UTF-8 (obs-text) in them.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, exactly `Content-Length` bytes (empty without that header).
    pub body: Vec<u8>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1: decides the keep-alive default.
    pub version_minor: u8,
}

impl Request {
    /// The value of the first header named `name` (ASCII case-insensitive), or `None` when it is
    /// absent or its value is not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Whether the connection stays open after the response: HTTP/1.1 unless a `Connection`
    /// header has the token `close`; HTTP/1.0 only with the token `keep-alive` (RFC 9112 9.3).
    pub fn keep_alive(&self) -> bool {
        if self.version_minor >= 1 {
            !self.has_token("connection", "close")
        } else {
            self.has_token("connection", "keep-alive")
        }
    }

    /// Whether any header named `name` lists `token` among its comma-separated values (both
    /// compared ASCII case-insensitively). Used for `Connection: keep-alive, Upgrade` and similar.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| list_contains_token(v, token))
    }

    /// The request target as received: path, then `?` and the query if there was one.
    pub fn raw_target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Whether a comma-separated header value contains `token` (ASCII case-insensitive, spaces and
/// tabs around each element ignored).
pub fn list_contains_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| trim_ows(item).eq_ignore_ascii_case(token.as_bytes()))
}

/// Strips optional whitespace (spaces and tabs, RFC 9110 5.6.3) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The outcome of [`parse_request`] when the bytes so far are acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The request is not complete yet: read more bytes and call again with all of them.
    Partial,
    /// One whole request (head and body).
    Complete {
        /// The request.
        request: Request,
        /// Bytes of `buf` it used; a pipelined request, if any, starts here.
        consumed: usize,
    },
}

/// Why a request was refused. Each variant maps to the status to answer with; after any of them
/// the driver answers and closes the connection (the framing can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// httparse rejected the bytes (bad token, bad header line, ...).
    #[error("malformed request: {0}")]
    Malformed(httparse::Error),
    /// The request line is longer than [`Limits::max_request_line`].
    #[error("request line too long")]
    RequestLineTooLong,
    /// The header section is larger than [`Limits::max_header_bytes`].
    #[error("header section too large")]
    HeadersTooLarge,
    /// More header fields than [`Limits::max_headers`].
    #[error("too many header fields")]
    TooManyHeaders,
    /// `Content-Length` is not a decimal number, or two of them disagree.
    #[error("invalid content-length")]
    BadContentLength,
    /// The announced body is larger than [`Limits::max_body`].
    #[error("body of {length} bytes exceeds the limit")]
    BodyTooLarge {
        /// The announced `Content-Length`.
        length: u64,
    },
    /// The request uses `Transfer-Encoding` (chunked bodies are not supported).
    #[error("transfer-encoding is not supported, send content-length")]
    TransferEncodingUnsupported,
    /// An HTTP version other than 1.0 or 1.1.
    #[error("http version not supported")]
    VersionNotSupported,
}

impl HttpError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::BadContentLength => 400,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::RequestLineTooLong => 414,
            HttpError::HeadersTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::TransferEncodingUnsupported => 501,
            HttpError::VersionNotSupported => 505,
        }
    }
}

/// Parses one request from the start of `buf`.
///
/// `buf` may hold part of a request, exactly one, or one plus the start of the next; see
/// [`Parsed`]. Limits are enforced on partial input too, so the driver can stop reading as soon as
/// an error is returned.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let status = match req.parse(buf) {
        Ok(status) => status,
        Err(e) => return Err(map_httparse_error(e, buf)),
    };
    let line_end = request_line_end(buf);
    check_request_line(buf, line_end, limits)?;
    let head_len = match status {
        httparse::Status::Partial => {
            check_header_bytes(buf.len(), line_end, limits)?;
            return Ok(Parsed::Partial);
        }
        httparse::Status::Complete(head_len) => head_len,
    };
    check_header_bytes(head_len, line_end, limits)?;
    let body_len = body_length(req.headers, limits)?;
    let Some(consumed) = head_len
        .checked_add(body_len)
        .filter(|&end| end <= buf.len())
    else {
        return Ok(Parsed::Partial);
    };
    let request = build_request(&req, &buf[head_len..consumed]);
    Ok(Parsed::Complete { request, consumed })
}

/// Maps an httparse error; a well-formed `HTTP/x.y` other than 1.0/1.1 becomes 505, not 400.
fn map_httparse_error(e: httparse::Error, buf: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version if looks_like_http_version(buf) => HttpError::VersionNotSupported,
        other => HttpError::Malformed(other),
    }
}

/// Whether the version field of the request line starts with `HTTP/` and a digit.
fn looks_like_http_version(buf: &[u8]) -> bool {
    let start = leading_empty_lines(buf);
    let line_end = memchr(b'\n', &buf[start..]).map_or(buf.len(), |i| start + i);
    let line = &buf[start..line_end];
    let version = match line.iter().rposition(|&b| b == b' ') {
        Some(space) => &line[space + 1..],
        None => return false,
    };
    matches!(version, [b'H', b'T', b'T', b'P', b'/', d, ..] if d.is_ascii_digit())
}

/// Number of CR/LF bytes before the request line (httparse skips them, RFC 9112 2.2 allows it).
fn leading_empty_lines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Where the request line ends: `(start, Some(index of its '\n'))`, or `None` for the newline
/// when it has not arrived yet.
fn request_line_end(buf: &[u8]) -> (usize, Option<usize>) {
    let start = leading_empty_lines(buf);
    (start, memchr(b'\n', &buf[start..]).map(|i| start + i))
}

/// 414 when the request line (without CR LF) is over the limit, finished or not.
fn check_request_line(
    buf: &[u8],
    (start, newline): (usize, Option<usize>),
    limits: &Limits,
) -> Result<(), HttpError> {
    let len = match newline {
        Some(nl) if nl > start && buf[nl - 1] == b'\r' => nl - 1 - start,
        Some(nl) => nl - start,
        None => buf.len() - start,
    };
    if len > limits.max_request_line {
        return Err(HttpError::RequestLineTooLong);
    }
    Ok(())
}

/// 431 when the bytes after the request line, up to `end`, are over the limit.
fn check_header_bytes(
    end: usize,
    (_, newline): (usize, Option<usize>),
    limits: &Limits,
) -> Result<(), HttpError> {
    let header_start = newline.map_or(end, |nl| nl + 1);
    if end.saturating_sub(header_start) > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    Ok(())
}

/// The body length from the headers: 0 without `Content-Length`. Rejects `Transfer-Encoding`,
/// unparsable or conflicting lengths, and lengths over the limit (before the body is read).
fn body_length(headers: &[httparse::Header<'_>], limits: &Limits) -> Result<usize, HttpError> {
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncodingUnsupported);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(h.value)?;
            if length.is_some_and(|prev| prev != value) {
                return Err(HttpError::BadContentLength);
            }
            length = Some(value);
        }
    }
    let length = length.unwrap_or(0);
    match usize::try_from(length) {
        Ok(len) if len <= limits.max_body => Ok(len),
        _ => Err(HttpError::BodyTooLarge { length }),
    }
}

/// `Content-Length = 1*DIGIT` (RFC 9110 8.6), surrounding whitespace allowed.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let digits = trim_ows(value);
    if digits.is_empty() {
        return Err(HttpError::BadContentLength);
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(HttpError::BadContentLength);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            // Larger than u64: certainly over any body limit.
            .ok_or(HttpError::BodyTooLarge { length: u64::MAX })
    })
}

/// Copies the parsed head and the body into an owned [`Request`].
fn build_request(req: &httparse::Request<'_, '_>, body: &[u8]) -> Request {
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    Request {
        method: req.method.unwrap_or_default().to_owned(),
        path,
        query,
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        body: body.to_vec(),
        version_minor: req.version.unwrap_or(1),
    }
}

/// Appends a complete HTTP/1.1 response to `out`.
///
/// Writes `Content-Length` (except for 1xx and 204, where RFC 9110 8.6 forbids it), a
/// `Content-Type` unless `content_type` is empty, `Connection: close` when `keep_alive` is false,
/// then `extra_headers`. An extra header whose name or value contains CR or LF is skipped (it would
/// let the value inject headers); it is a bug in the caller, so debug builds panic.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    if !content_type.is_empty() {
        write_header(out, "Content-Type", content_type);
    }
    if status >= 200 && status != 204 {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    if !keep_alive {
        write_header(out, "Connection", "close");
    }
    for (name, value) in extra_headers {
        write_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends `name: value\r\n`, refusing CR/LF inside either part (see [`write_response`]).
pub(crate) fn write_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let injects = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
    if injects(name) || injects(value) {
        debug_assert!(false, "CR/LF in response header {name:?}");
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The standard reason phrase for `status` (RFC 9110 section 15), `"Unknown"` for others.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEBHOOK: &[u8] = b"POST /api/twilio/voice?x=1%202&y HTTP/1.1\r\n\
        Host: bridge.example.com\r\n\
        X-Twilio-Signature: abc=\r\n\
        Content-Type: application/x-www-form-urlencoded\r\n\
        Content-Length: 11\r\n\
        \r\n\
        CallSid=CA1";

    fn parse(buf: &[u8]) -> Result<Parsed, HttpError> {
        parse_request(buf, &Limits::default())
    }

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn status_of(buf: &[u8], limits: &Limits) -> u16 {
        match parse_request(buf, limits) {
            Err(e) => e.status(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_webhook_post_parses_into_its_parts() {
        let (req, consumed) = complete(WEBHOOK);
        assert_eq!(consumed, WEBHOOK.len());
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/api/twilio/voice");
        assert_eq!(req.query.as_deref(), Some("x=1%202&y"));
        assert_eq!(req.raw_target(), "/api/twilio/voice?x=1%202&y");
        assert_eq!(req.body, b"CallSid=CA1");
        assert_eq!(req.version_minor, 1);
        assert_eq!(req.headers.len(), 4);
        assert_eq!(req.header("x-twilio-signature"), Some("abc="));
        assert_eq!(req.header("HOST"), Some("bridge.example.com"));
        assert_eq!(req.header("missing"), None);
    }

    #[test]
    fn every_proper_prefix_of_a_request_is_partial() {
        for end in 0..WEBHOOK.len() {
            assert_eq!(parse(&WEBHOOK[..end]), Ok(Parsed::Partial), "prefix {end}");
        }
    }

    #[test]
    fn a_pipelined_request_is_left_in_the_buffer() {
        let mut buf = WEBHOOK.to_vec();
        buf.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
        let (_, consumed) = complete(&buf);
        assert_eq!(consumed, WEBHOOK.len());
        let (next, used) = complete(&buf[consumed..]);
        assert_eq!(next.path, "/health");
        assert_eq!(next.query, None);
        assert_eq!(used, buf.len() - consumed);
    }

    #[test]
    fn an_empty_query_is_kept_as_an_empty_string() {
        let (req, _) = complete(b"GET /a? HTTP/1.1\r\n\r\n");
        assert_eq!(req.query.as_deref(), Some(""));
        assert_eq!(req.raw_target(), "/a?");
    }

    #[test]
    fn header_lookup_returns_the_first_match_and_none_for_non_utf8() {
        let (req, _) = complete(b"GET / HTTP/1.1\r\nA: 1\r\nB: \xff\r\na: 2\r\n\r\n");
        assert_eq!(req.header("a"), Some("1"));
        assert_eq!(req.header("b"), None);
        assert_eq!(req.headers[1].1, b"\xff");
    }

    #[test]
    fn keep_alive_follows_the_version_default_and_connection_tokens() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n", false),
        ];
        for (raw, expected) in cases {
            let (req, _) = complete(raw);
            assert_eq!(
                req.keep_alive(),
                *expected,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let (req, consumed) = complete(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/");
        assert_eq!(consumed, 22);
    }

    #[test]
    fn a_long_request_line_is_414_even_before_it_ends() {
        let limits = Limits {
            max_request_line: 20,
            ..Limits::default()
        };
        assert_eq!(
            status_of(b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", &limits),
            414
        );
        assert_eq!(
            status_of(b"GET /aaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n", &limits),
            414
        );
        assert_eq!(status_of(b"GET /aaaaaaa HTTP/1.1\r\n\r\n", &limits), 414); // 21 bytes
                                                                               // Exactly at the limit (20 bytes without CR LF) passes.
        assert!(matches!(
            parse_request(b"GET /aaaaaa HTTP/1.1\r\n\r\n", &limits),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn a_large_header_section_is_431_even_before_it_ends() {
        let limits = Limits {
            max_header_bytes: 32,
            ..Limits::default()
        };
        let mut partial = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        partial.extend_from_slice(&[b'a'; 40]);
        assert_eq!(status_of(&partial, &limits), 431);
        partial.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&partial, &limits), 431);
        // 30 bytes of header section (including the final empty line) is fine.
        let ok = b"GET / HTTP/1.1\r\nX: 12345678901234567890\r\n\r\n";
        assert!(matches!(
            parse_request(ok, &limits),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn too_many_headers_is_431() {
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        assert_eq!(
            status_of(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n", &limits),
            431
        );
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", &limits),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn a_large_content_length_is_413_before_the_body_arrives() {
        let limits = Limits {
            max_body: 10,
            ..Limits::default()
        };
        let head = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(
            parse_request(head, &limits),
            Err(HttpError::BodyTooLarge { length: 11 })
        );
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(status_of(huge, &limits), 413);
    }

    #[test]
    fn bad_or_conflicting_content_length_is_400() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ] {
            assert_eq!(
                parse(raw),
                Err(HttpError::BadContentLength),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn repeated_equal_content_lengths_are_accepted() {
        let (req, _) =
            complete(b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab");
        assert_eq!(req.body, b"ab");
    }

    #[test]
    fn transfer_encoding_is_501() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let err = parse(raw).unwrap_err();
        assert_eq!(err, HttpError::TransferEncodingUnsupported);
        assert_eq!(err.status(), 501);
        assert!(err.to_string().contains("content-length"));
    }

    #[test]
    fn other_http_versions_are_505_and_garbage_versions_400() {
        assert_eq!(
            status_of(b"GET / HTTP/2.0\r\n\r\n", &Limits::default()),
            505
        );
        assert_eq!(
            status_of(b"GET / HTTP/1.2\r\n\r\n", &Limits::default()),
            505
        );
        assert_eq!(status_of(b"GET / HTTP/3", &Limits::default()), 505);
        assert_eq!(status_of(b"GET / FTP/1.1\r\n\r\n", &Limits::default()), 400);
    }

    #[test]
    fn malformed_requests_are_400() {
        for raw in [
            &b"GET\r\n\r\n"[..],
            b"G@T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: novalue\r\n\r\n",
            b"\x00\x01\x02",
        ] {
            let err = parse(raw).unwrap_err();
            assert!(matches!(err, HttpError::Malformed(_)), "{err:?}");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn a_response_has_content_length_and_close_when_asked() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            200,
            "text/xml",
            b"<Response/>",
            false,
            &[("X-A", "b")],
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 11\r\n\
              Connection: close\r\nX-A: b\r\n\r\n<Response/>"
        );
        out.clear();
        write_response(&mut out, 404, "", b"", true, &[]);
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn a_204_response_carries_no_content_length() {
        let mut out = Vec::new();
        write_response(&mut out, 204, "", b"", true, &[]);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn every_status_we_send_has_a_reason_phrase() {
        for s in [
            101, 200, 204, 400, 401, 403, 404, 405, 411, 413, 414, 426, 431, 500, 501, 503, 505,
        ] {
            assert_ne!(reason_phrase(s), "Unknown", "{s}");
        }
        assert_eq!(reason_phrase(599), "Unknown");
    }

    #[test]
    fn a_response_round_trips_through_httparse() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            503,
            "text/plain",
            b"busy",
            true,
            &[("Retry-After", "1")],
        );
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let head = resp.parse(&out).unwrap().unwrap();
        assert_eq!(resp.code, Some(503));
        assert_eq!(&out[head..], b"busy");
    }
}
