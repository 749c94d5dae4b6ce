//! HTTP/1.1 requests in, responses out: a sans-IO layer over [`httparse`] with explicit limits.
//!
//! The driver owns the socket and an input buffer. After each read it calls [`parse_request`] on
//! the unconsumed bytes: [`Parsed::Partial`] means "read more", [`Parsed::Complete`] hands over
//! one request and says how many bytes it used, so a pipelined or keep-alive request that follows
//! stays in the buffer. Every limit is checked as early as the bytes allow, so a peer can never make
//! us buffer more than [`Limits`] says, even while the request is still incomplete.
//!
//! Bodies come with `Content-Length` (Twilio's webhooks always send one) or chunked (some
//! proxies re-chunk webhook bodies), within the same limit.

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
    /// A transfer coding other than `chunked` (alone).
    #[error("only the chunked transfer-encoding is supported")]
    TransferEncodingUnsupported,
    /// Both `Content-Length` and `Transfer-Encoding`: the framing is ambiguous (RFC 9112 6.3).
    #[error("content-length together with transfer-encoding")]
    LengthAndChunked,
    /// A chunked body that does not follow RFC 9112 7.1 (bad size line, missing CR LF).
    #[error("malformed chunked body")]
    BadChunk,
    /// An HTTP version other than 1.0 or 1.1.
    #[error("http version not supported")]
    VersionNotSupported,
}

impl HttpError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_)
            | HttpError::BadContentLength
            | HttpError::LengthAndChunked
            | HttpError::BadChunk => 400,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::RequestLineTooLong => 414,
            HttpError::HeadersTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::TransferEncodingUnsupported => 501,
            HttpError::VersionNotSupported => 505,
        }
    }
}

/// Parses one request from the start of `buf`, all at once (see [`RequestParser`], which the
/// driver keeps across reads).
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    RequestParser::default().parse(buf, limits)
}

/// Longest chunk-size line of a chunked body (`1a2b;ext=value\r\n`): sizes are a few hex digits;
/// extensions carry nothing we use, so a long one is refused rather than buffered.
pub const MAX_CHUNK_LINE: usize = 256;

/// An incremental request parser: it remembers where it stopped, so the bytes of a request are
/// each examined a bounded number of times however they are split over reads (a header section
/// arriving a byte per read costs linear time, not quadratic).
///
/// Call [`RequestParser::parse`] after every read with the whole unconsumed buffer (the bytes
/// passed before, plus the new ones); after [`Parsed::Complete`] or an error it starts over.
///
/// - Head: the request line and header lines are scanned as they arrive (limits checked, control
///   bytes in the request line refused at once); httparse checks the request line once it is
///   complete and parses the whole head once its empty line has arrived.
/// - Body: `Content-Length`, or `Transfer-Encoding: chunked` decoded as it arrives (httparse's
///   chunk-size parser), within the same body limit. Both at once are refused (RFC 9112 6.3).
#[derive(Debug, Default, Clone)]
pub struct RequestParser {
    head: HeadScan,
    body: Option<BodyState>,
    /// Bytes examined so far, over every request (tests bound the work with it).
    work: u64,
}

/// How far the head has been scanned.
#[derive(Debug, Default, Clone)]
struct HeadScan {
    /// Where the request line starts: after the leading CR/LF bytes (RFC 9112 2.2).
    start: Option<usize>,
    /// Index of the request line's `\n`, once seen.
    line_end: Option<usize>,
    /// Bytes scanned for line ends so far.
    scanned: usize,
    /// Where the header line being scanned starts.
    line_start: usize,
    /// Header lines seen so far.
    lines: usize,
}

/// The body being read, once the head is complete.
#[derive(Debug, Clone)]
struct BodyState {
    /// The parsed head (its body filled in at the end).
    request: Request,
    /// Where the body starts in the buffer.
    head_len: usize,
    kind: BodyKind,
}

#[derive(Debug, Clone)]
enum BodyKind {
    /// `Content-Length` bytes.
    Length(usize),
    /// A chunked body, decoded up to `pos` in the buffer.
    Chunked { pos: usize, phase: ChunkPhase },
}

/// Where a chunked body's decoding is (RFC 9112 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkPhase {
    /// At a chunk-size line, this many of its bytes scanned for its line break.
    Size(usize),
    /// Inside a chunk's data, with this many bytes left.
    Data(usize),
    /// After a chunk's data: its CR LF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers {
        /// Bytes of complete trailer lines so far.
        seen: usize,
        /// Bytes of the current line scanned for its line break.
        scanned: usize,
    },
}

impl RequestParser {
    /// Bytes examined since this parser was made: a request that arrives in N pieces costs
    /// about its length, not N times it.
    pub fn work(&self) -> u64 {
        self.work
    }

    /// Continues parsing `buf` (everything unconsumed: what was passed before, plus new bytes).
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
        let result = self.parse_inner(buf, limits);
        if !matches!(result, Ok(Parsed::Partial)) {
            // The next request (or, after an error, nothing) starts from scratch.
            self.head = HeadScan::default();
            self.body = None;
        }
        result
    }

    fn parse_inner(&mut self, buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
        if self.body.is_none() {
            let Some(head_len) = self.scan_head(buf, limits)? else {
                return Ok(Parsed::Partial);
            };
            self.body = Some(self.parse_head(&buf[..head_len], limits)?);
        }
        let body = self.body.as_mut().expect("set above");
        match &mut body.kind {
            BodyKind::Length(len) => {
                let Some(end) = body
                    .head_len
                    .checked_add(*len)
                    .filter(|&end| end <= buf.len())
                else {
                    return Ok(Parsed::Partial);
                };
                self.work += *len as u64;
                let mut request = std::mem::replace(&mut body.request, empty_request());
                request.body = buf[body.head_len..end].to_vec();
                Ok(Parsed::Complete {
                    request,
                    consumed: end,
                })
            }
            BodyKind::Chunked { pos, phase } => {
                let before = *pos;
                let done = decode_chunks(
                    buf,
                    body.head_len,
                    pos,
                    phase,
                    &mut body.request.body,
                    limits,
                );
                self.work += (*pos - before) as u64;
                if !done? {
                    return Ok(Parsed::Partial);
                }
                Ok(Parsed::Complete {
                    request: std::mem::replace(&mut body.request, empty_request()),
                    consumed: *pos,
                })
            }
        }
    }

    /// Scans the bytes of the head not scanned yet: `Ok(Some(len))` once its empty line has
    /// arrived, `Ok(None)` while it has not.
    fn scan_head(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
        let h = &mut self.head;
        let start = match h.start {
            Some(start) => start,
            None => {
                // Leading empty lines, scanned from where the last read left off.
                let from = h.scanned;
                let start = from + leading_empty_lines(&buf[from..]);
                self.work += (start - from) as u64;
                h.scanned = start;
                if start == buf.len() {
                    // Only empty lines so far.
                    if start > limits.max_request_line {
                        return Err(HttpError::RequestLineTooLong);
                    }
                    return Ok(None);
                }
                h.start = Some(start);
                start
            }
        };
        if h.line_end.is_none() {
            let from = h.scanned;
            let newline = memchr(b'\n', &buf[from..]).map(|i| from + i);
            let upto = newline.unwrap_or(buf.len());
            self.work += (upto - from) as u64;
            // Binary garbage is answered at once, not when a line break happens to come.
            if buf[from..upto]
                .iter()
                .any(|&b| (b < 0x20 && b != b'\r' && b != b'\t') || b == 0x7f)
            {
                return Err(HttpError::Malformed(httparse::Error::Token));
            }
            check_request_line(buf, (start, newline), limits)?;
            let Some(newline) = newline else {
                h.scanned = buf.len();
                return Ok(None);
            };
            // The request line on its own: a bad method, target or version is refused now.
            let mut no_slots: [httparse::Header<'_>; 0] = [];
            match httparse::Request::new(&mut no_slots).parse(&buf[..=newline]) {
                Ok(_) | Err(httparse::Error::TooManyHeaders) => {}
                Err(e) => return Err(map_httparse_error(e, buf)),
            }
            self.work += (newline + 1 - start) as u64;
            h.line_end = Some(newline);
            h.scanned = newline + 1;
            h.line_start = newline + 1;
        }
        let line_end = h.line_end;
        loop {
            let from = h.scanned;
            let Some(newline) = memchr(b'\n', &buf[from..]).map(|i| from + i) else {
                self.work += (buf.len() - from) as u64;
                h.scanned = buf.len();
                check_header_bytes(buf.len(), (start, line_end), limits)?;
                return Ok(None);
            };
            self.work += (newline + 1 - from) as u64;
            h.scanned = newline + 1;
            check_header_bytes(newline + 1, (start, line_end), limits)?;
            let line = &buf[h.line_start..newline];
            h.line_start = newline + 1;
            if matches!(line, [] | [b'\r']) {
                return Ok(Some(newline + 1));
            }
            h.lines += 1;
            if h.lines > limits.max_headers {
                return Err(HttpError::TooManyHeaders);
            }
        }
    }

    /// Parses a complete head (once) and decides how its body is framed.
    fn parse_head(&mut self, head: &[u8], limits: &Limits) -> Result<BodyState, HttpError> {
        let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut req = httparse::Request::new(&mut slots);
        self.work += head.len() as u64;
        match req.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            // A head our scan saw end that httparse does not: its line breaks are not valid.
            Ok(_) => return Err(HttpError::Malformed(httparse::Error::NewLine)),
            Err(e) => return Err(map_httparse_error(e, head)),
        }
        let kind = match body_framing(req.headers, limits)? {
            Framing::Length(len) => BodyKind::Length(len),
            Framing::Chunked => BodyKind::Chunked {
                pos: head.len(),
                phase: ChunkPhase::Size(0),
            },
        };
        Ok(BodyState {
            request: build_request(&req, &[]),
            head_len: head.len(),
            kind,
        })
    }
}

/// A request with nothing in it (what a finished parser leaves behind).
fn empty_request() -> Request {
    Request {
        method: String::new(),
        path: String::new(),
        query: None,
        headers: Vec::new(),
        body: Vec::new(),
        version_minor: 1,
    }
}

/// Decodes chunks from `buf[*pos..]` into `body` (RFC 9112 7.1); `Ok(true)` once the last chunk
/// and its trailers are in. Bounds: the decoded body by `max_body`, the whole chunked body on the
/// wire (sizes, extensions, trailers) by twice that, each size line by [`MAX_CHUNK_LINE`], the
/// trailers by `max_header_bytes`. Each byte is looked at a bounded number of times however the
/// body is split over reads: a line is parsed once its line break has arrived.
fn decode_chunks(
    buf: &[u8],
    body_start: usize,
    pos: &mut usize,
    phase: &mut ChunkPhase,
    body: &mut Vec<u8>,
    limits: &Limits,
) -> Result<bool, HttpError> {
    let wire_limit = limits.max_body.saturating_mul(2);
    loop {
        if *pos - body_start > wire_limit {
            return Err(HttpError::BodyTooLarge {
                length: (*pos - body_start) as u64,
            });
        }
        let rest = &buf[*pos..];
        match *phase {
            ChunkPhase::Size(scanned) => {
                let Some(newline) = memchr(b'\n', &rest[scanned..]).map(|i| scanned + i) else {
                    if rest.len() > MAX_CHUNK_LINE {
                        return Err(HttpError::BadChunk);
                    }
                    *phase = ChunkPhase::Size(rest.len());
                    return Ok(false);
                };
                // `chunk-size = 1*HEXDIG` (httparse would read an empty line as size 0: the end).
                if !rest.first().is_some_and(u8::is_ascii_hexdigit) {
                    return Err(HttpError::BadChunk);
                }
                let Ok(httparse::Status::Complete((used, size))) =
                    httparse::parse_chunk_size(&rest[..=newline])
                else {
                    return Err(HttpError::BadChunk);
                };
                if used > MAX_CHUNK_LINE {
                    return Err(HttpError::BadChunk);
                }
                let total = (body.len() as u64).saturating_add(size);
                if total > limits.max_body as u64 {
                    return Err(HttpError::BodyTooLarge { length: total });
                }
                *pos += used;
                *phase = match size {
                    0 => ChunkPhase::Trailers {
                        seen: 0,
                        scanned: 0,
                    },
                    n => ChunkPhase::Data(n as usize),
                };
            }
            ChunkPhase::Data(left) => {
                if rest.is_empty() {
                    return Ok(false);
                }
                let take = left.min(rest.len());
                body.extend_from_slice(&rest[..take]);
                *pos += take;
                *phase = match left - take {
                    0 => ChunkPhase::DataEnd,
                    n => ChunkPhase::Data(n),
                };
            }
            // Chunk data ends with CR LF exactly (RFC 9112 7.1).
            ChunkPhase::DataEnd => match rest {
                [b'\r', b'\n', ..] => {
                    *pos += 2;
                    *phase = ChunkPhase::Size(0);
                }
                [] | [b'\r'] => return Ok(false),
                _ => return Err(HttpError::BadChunk),
            },
            ChunkPhase::Trailers { seen, scanned } => {
                let Some(newline) = memchr(b'\n', &rest[scanned..]).map(|i| scanned + i) else {
                    if seen + rest.len() > limits.max_header_bytes {
                        return Err(HttpError::HeadersTooLarge);
                    }
                    *phase = ChunkPhase::Trailers {
                        seen,
                        scanned: rest.len(),
                    };
                    return Ok(false);
                };
                *pos += newline + 1;
                if matches!(&rest[..newline], [] | [b'\r']) {
                    return Ok(true);
                }
                // Trailer fields are read past and dropped: nothing here needs them.
                let seen = seen + newline + 1;
                if seen > limits.max_header_bytes {
                    return Err(HttpError::HeadersTooLarge);
                }
                *phase = ChunkPhase::Trailers { seen, scanned: 0 };
            }
        }
    }
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

/// How a request's body is framed.
enum Framing {
    /// `Content-Length` bytes (0 without the header).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The body framing from the headers: `Content-Length` (0 without it), or chunked. Refuses a
/// transfer coding other than `chunked`, both headers at once (RFC 9112 6.3: a request smuggling
/// vector), unparsable or conflicting lengths, and lengths over the limit (before the body is
/// read).
fn body_framing(headers: &[httparse::Header<'_>], limits: &Limits) -> Result<Framing, HttpError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::TransferEncodingUnsupported);
            }
            chunked = true;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(h.value)?;
            if length.is_some_and(|prev| prev != value) {
                return Err(HttpError::BadContentLength);
            }
            length = Some(value);
        }
    }
    if chunked {
        return match length {
            Some(_) => Err(HttpError::LengthAndChunked),
            None => Ok(Framing::Chunked),
        };
    }
    let length = length.unwrap_or(0);
    match usize::try_from(length) {
        Ok(len) if len <= limits.max_body => Ok(Framing::Length(len)),
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

    const CHUNKED: &[u8] =
        b"POST /api/twilio/voice HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
        7\r\nCallSid\r\n\
        4;ext=1\r\n=CA1\r\n\
        0\r\nX-Trailer: t\r\n\r\n";

    #[test]
    fn a_chunked_body_is_decoded_and_its_trailers_are_read_past() {
        let mut buf = CHUNKED.to_vec();
        buf.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let (req, consumed) = complete(&buf);
        assert_eq!(req.body, b"CallSid=CA1");
        assert_eq!(consumed, CHUNKED.len(), "the pipelined request stays");
        for end in 0..CHUNKED.len() {
            assert_eq!(parse(&CHUNKED[..end]), Ok(Parsed::Partial), "prefix {end}");
        }
    }

    #[test]
    fn a_chunked_body_is_bounded_by_the_body_limit() {
        let limits = Limits {
            max_body: 10,
            ..Limits::default()
        };
        assert_eq!(
            parse_request(CHUNKED, &limits),
            Err(HttpError::BodyTooLarge { length: 11 })
        );
        // A huge announced chunk is refused before any of it arrives.
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n";
        assert_eq!(status_of(raw, &Limits::default()), 413);
    }

    #[test]
    fn length_with_chunked_is_400_and_other_codings_501() {
        let both =
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(parse(both), Err(HttpError::LengthAndChunked));
        assert_eq!(HttpError::LengthAndChunked.status(), 400);
        for raw in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse(raw), Err(HttpError::TransferEncodingUnsupported));
            assert_eq!(status_of(raw, &Limits::default()), 501);
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_400() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for body in [
            &b"zz\r\n"[..],
            b"3\r\nabcX",
            b"3\r\nabc\rX",
            b"3\r\nabc\n0\r\n\r\n",
            b"\r\n",
            b";ext\r\n",
            &[b'1'; MAX_CHUNK_LINE + 1],
        ] {
            let mut raw = head.clone();
            raw.extend_from_slice(body);
            assert_eq!(
                parse(&raw),
                Err(HttpError::BadChunk),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Framing is bounded too: endless chunk extensions around one-byte chunks.
        let mut raw = head.clone();
        for _ in 0..2_000 {
            raw.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(200)).as_bytes());
        }
        assert!(matches!(parse(&raw), Err(HttpError::BodyTooLarge { .. })));
        // Trailers are bounded like a header section.
        let limits = Limits {
            max_header_bytes: 16,
            ..Limits::default()
        };
        let mut raw = head.clone();
        raw.extend_from_slice(b"0\r\nX-Long-Trailer: 1234567890\r\n\r\n");
        assert_eq!(status_of(&raw, &limits), 431);
    }

    /// Feeds `raw` to one parser `step` bytes at a time, as reads would; the answer and the work.
    fn parse_in_steps(raw: &[u8], step: usize) -> (Result<Parsed, HttpError>, u64) {
        let mut parser = RequestParser::default();
        let mut end = 0;
        loop {
            end = (end + step).min(raw.len());
            let r = parser.parse(&raw[..end], &Limits::default());
            if r != Ok(Parsed::Partial) || end == raw.len() {
                return (r, parser.work());
            }
        }
    }

    #[test]
    fn a_request_split_over_reads_parses_as_a_whole_one() {
        for raw in [WEBHOOK, CHUNKED, b"\r\nGET / HTTP/1.1\r\nA: 1\r\n\r\n"] {
            for step in [1, 2, 3, 7, 64, raw.len()] {
                assert_eq!(parse_in_steps(raw, step).0, parse(raw), "step {step}");
            }
        }
    }

    #[test]
    fn leading_empty_lines_arriving_a_byte_per_read_cost_linear_work() {
        let mut raw = b"\r\n".repeat(2_000);
        raw.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (r, work) = parse_in_steps(&raw, 1);
        assert!(matches!(r, Ok(Parsed::Complete { .. })), "{r:?}");
        assert!(work <= 4 * raw.len() as u64, "{work} byte visits");
    }

    #[test]
    fn a_header_section_arriving_a_byte_per_read_costs_linear_work() {
        // 15 KiB of headers (just under the limit), one byte per read: the parser must look at
        // each byte a bounded number of times. A parse from the start on every read would do
        // ~n²/2 = 115 million byte visits here.
        let mut raw = b"POST /api/twilio/voice HTTP/1.1\r\n".to_vec();
        for i in 0..60 {
            raw.extend_from_slice(format!("X-Filler-{i:02}: {}\r\n", "a".repeat(240)).as_bytes());
        }
        raw.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert!(raw.len() > 15_000);
        let (r, work) = parse_in_steps(&raw, 1);
        assert!(matches!(r, Ok(Parsed::Complete { .. })), "{r:?}");
        assert!(
            work <= 4 * raw.len() as u64,
            "{work} byte visits for {} bytes",
            raw.len()
        );
        // The same holds for a body arriving byte by byte.
        let (r, work) = parse_in_steps(CHUNKED, 1);
        assert!(matches!(r, Ok(Parsed::Complete { .. })), "{r:?}");
        assert!(work <= 4 * CHUNKED.len() as u64, "{work}");
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
        assert_eq!(status_of(b"GET / HTTP/3\r\n", &Limits::default()), 505);
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
