//! WebSocket (RFC 6455, version 13), sans-IO, both roles: the opening handshakes and the frame
//! codec.
//!
//! ```text
//!  Twilio ──masked frames──▶ Decoder(Server) ──▶ twilio::events      (we are the server)
//!  Twilio ◀──plain frames─── Encoder(Server)
//!  OpenAI ──plain frames───▶ Decoder(Client) ──▶ openai::events      (we are the client)
//!  OpenAI ◀──masked frames── Encoder(Client)
//! ```
//!
//! # Driving the decoder
//! The driver keeps one input buffer per connection and calls [`Decoder::decode`] on its
//! unconsumed bytes until it returns "need more" (`consumed == 0`, no message) or an error, then
//! drops the consumed prefix and reads again:
//!
//! ```
//! # use callbridge_core::wire::ws::{Decoder, Role, Message};
//! let mut input: Vec<u8> = vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
//! let mut decoder = Decoder::new(Role::Server, 64 * 1024);
//! let mut start = 0;
//! loop {
//!     let decoded = decoder.decode(&mut input[start..]).expect("a valid frame");
//!     if decoded.needs_more() {
//!         break; // read from the socket, then loop again
//!     }
//!     if let Some(Message::Text(text)) = decoded.message {
//!         assert_eq!(text, b"Hello");
//!     }
//!     start += decoded.consumed;
//! }
//! input.drain(..start);
//! ```
//!
//! On an error the driver sends a close frame with [`WsError::close_code`] and closes the socket:
//! the stream cannot be resynchronised after a framing error.
//!
//! Not supported, on purpose: extensions (permessage-deflate; we never offer it, and a server that
//! answers with one is refused) and subprotocols.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::http::{self, list_contains_token};

/// RFC 6455 section 1.3: the GUID appended to the client key before hashing.
const HANDSHAKE_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version defined (RFC 6455 section 4.1).
const WS_VERSION: &str = "13";

/// RFC 6455 section 5.5: control frames carry at most 125 payload bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// RFC 6455 section 5.5.1: a close reason fits in a control frame after the 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Largest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
const MAX_FRAME_HEADER: usize = 14;

/// Largest handshake response head we buffer from the upstream server (16 KiB, like
/// [`http::DEFAULT_MAX_HEADER_BYTES`]): a real 101 is a few hundred bytes, so anything larger is a
/// misbehaving peer, not a response to wait for.
const MAX_HANDSHAKE_HEAD: usize = 16 * 1024;

/// Header slots for the handshake response: OpenAI's 101 carries about 15 headers (CDN, request
/// ids, rate limits); 64 leaves room without a large stack array.
const MAX_HANDSHAKE_HEADERS: usize = 64;

/// How much of a refused handshake's body we keep for the error: enough for OpenAI's JSON error
/// message (e.g. an invalid API key), short enough for one log line.
const REJECTION_BODY_PREVIEW: usize = 200;

/// Opcodes (RFC 6455 section 5.2).
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

// ---------------------------------------------------------------------------------------------
// Handshake, server side (Twilio connects to us).
// ---------------------------------------------------------------------------------------------

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)) (RFC 6455 section 4.2.2).
pub fn accept_key(client_key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key.as_bytes());
    sha.update(HANDSHAKE_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Why an upgrade request was refused. [`UpgradeError::status`] and
/// [`UpgradeError::response_headers`] give the answer to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The method is not `GET`.
    #[error("websocket upgrade must use get")]
    MethodNotAllowed,
    /// HTTP/1.0 cannot upgrade (RFC 6455 section 4.1 requires HTTP/1.1 or later).
    #[error("websocket upgrade needs http/1.1")]
    Http10,
    /// `Upgrade: websocket` or the `Connection: upgrade` token is missing.
    #[error("not a websocket upgrade request")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("unsupported websocket version")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing, repeated, or not base64 of 16 bytes.
    #[error("invalid sec-websocket-key")]
    BadKey,
}

impl UpgradeError {
    /// The response status: 405, 426 (upgrade or version), or 400.
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::MethodNotAllowed => 405,
            UpgradeError::NotUpgrade | UpgradeError::UnsupportedVersion => 426,
            UpgradeError::Http10 | UpgradeError::BadKey => 400,
        }
    }

    /// Headers the error response must carry: `Allow` for 405; for 426 the protocol to upgrade to
    /// (RFC 9110 15.5.22) and the version we speak (RFC 6455 section 4.2.2).
    pub fn response_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status() {
            405 => &[("Allow", "GET")],
            426 => &[
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", WS_VERSION),
            ],
            _ => &[],
        }
    }
}

/// Checks an opening handshake (RFC 6455 section 4.2.1) and returns the `Sec-WebSocket-Accept`
/// value to answer with.
pub fn check_upgrade(req: &http::Request) -> Result<String, UpgradeError> {
    if req.method != "GET" {
        return Err(UpgradeError::MethodNotAllowed);
    }
    if req.version_minor < 1 {
        return Err(UpgradeError::Http10);
    }
    if !req.has_token("upgrade", "websocket") || !req.has_token("connection", "upgrade") {
        return Err(UpgradeError::NotUpgrade);
    }
    if req.header("sec-websocket-version").map(str::trim) != Some(WS_VERSION) {
        return Err(UpgradeError::UnsupportedVersion);
    }
    let mut keys = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"));
    let (Some((_, key)), None) = (keys.next(), keys.next()) else {
        return Err(UpgradeError::BadKey);
    };
    let key = std::str::from_utf8(key)
        .map_err(|_| UpgradeError::BadKey)?
        .trim();
    match BASE64.decode(key) {
        Ok(nonce) if nonce.len() == 16 => Ok(accept_key(key)),
        _ => Err(UpgradeError::BadKey),
    }
}

/// Appends the `101 Switching Protocols` response that completes a server handshake.
pub fn write_upgrade_response(out: &mut Vec<u8>, accept: &str) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.extend_from_slice(b"Connection: Upgrade\r\n");
    http::write_header(out, "Sec-WebSocket-Accept", accept);
    out.extend_from_slice(b"\r\n");
}

// ---------------------------------------------------------------------------------------------
// Handshake, client side (we connect to OpenAI).
// ---------------------------------------------------------------------------------------------

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes (RFC 6455 section 4.1).
pub fn new_client_key() -> String {
    let mut nonce = [0u8; 16];
    fill_random(&mut nonce);
    BASE64.encode(nonce)
}

/// Appends a client opening handshake for `path_and_query` on `host_header`, then
/// `extra_headers` (e.g. `Authorization: Bearer ...`). Headers containing CR or LF are skipped
/// (debug builds panic), as in [`http::write_response`].
pub fn write_client_handshake(
    out: &mut Vec<u8>,
    host_header: &str,
    path_and_query: &str,
    key: &str,
    extra_headers: &[(&str, &str)],
) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    http::write_header(out, "Host", host_header);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    http::write_header(out, "Sec-WebSocket-Key", key);
    http::write_header(out, "Sec-WebSocket-Version", WS_VERSION);
    for (name, value) in extra_headers {
        http::write_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Why the server's answer to our handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The response head is not valid HTTP.
    #[error("malformed handshake response: {0}")]
    Malformed(httparse::Error),
    /// The head is larger than we are willing to buffer.
    #[error("handshake response head too large")]
    HeadTooLarge,
    /// The server answered with something other than 101 (e.g. 401 for a bad API key).
    #[error("handshake refused with status {status}: {body}")]
    Rejected {
        /// The status code.
        status: u16,
        /// Up to 200 bytes of the body that followed the head (lossy UTF-8), for the log.
        body: String,
    },
    /// A 101 without `Upgrade: websocket` and `Connection: upgrade`.
    #[error("handshake response does not upgrade to websocket")]
    NotUpgrade,
    /// `Sec-WebSocket-Accept` is missing or does not match our key.
    #[error("handshake response has a wrong sec-websocket-accept")]
    BadAccept,
    /// The server chose an extension or subprotocol we never offered (RFC 6455 4.1 says fail).
    #[error("handshake response has unrequested {0}")]
    UnexpectedHeader(&'static str),
}

/// Parses the server's answer to our handshake (RFC 6455 section 4.1, client requirements).
///
/// `Ok(None)`: the head (or, for a refusal, the start of its body) is incomplete: read more.
/// `Ok(Some(n))`: the connection is upgraded; frames start at `buf[n..]`.
/// A non-101 answer is [`HandshakeError::Rejected`]; when it has a `Content-Length` we wait for
/// the first 200 bytes of its body before reporting it, so the error says why.
pub fn parse_handshake_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HANDSHAKE_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_HANDSHAKE_HEAD => {
            return Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(n)) if n > MAX_HANDSHAKE_HEAD => {
            return Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
        Err(e) => return Err(HandshakeError::Malformed(e)),
    };
    let status = resp.code.unwrap_or_default();
    if status != 101 {
        return rejection(status, resp.headers, &buf[head_len..]);
    }
    check_upgrade_response(resp.headers, key)?;
    Ok(Some(head_len))
}

/// The error for a refused handshake, or `Ok(None)` while its announced body is still arriving.
fn rejection(
    status: u16,
    headers: &[httparse::Header<'_>],
    rest: &[u8],
) -> Result<Option<usize>, HandshakeError> {
    let announced = find_header(headers, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let wanted = announced.map_or(0, |len| len.min(REJECTION_BODY_PREVIEW));
    if rest.len() < wanted {
        return Ok(None);
    }
    // Never show bytes past the announced body: they would belong to the next response.
    let shown_len = rest
        .len()
        .min(announced.unwrap_or(usize::MAX))
        .min(REJECTION_BODY_PREVIEW);
    let shown = &rest[..shown_len];
    Err(HandshakeError::Rejected {
        status,
        body: String::from_utf8_lossy(shown).into_owned(),
    })
}

/// Checks the headers of a 101 answer against our request.
fn check_upgrade_response(
    headers: &[httparse::Header<'_>],
    key: &str,
) -> Result<(), HandshakeError> {
    let has = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .any(|h| list_contains_token(h.value, token))
    };
    if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    let accept = find_header(headers, "sec-websocket-accept").map(|v| v.trim_ascii());
    if accept != Some(accept_key(key).as_bytes()) {
        return Err(HandshakeError::BadAccept);
    }
    for name in ["Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol"] {
        if find_header(headers, name).is_some() {
            return Err(HandshakeError::UnexpectedHeader(name));
        }
    }
    Ok(())
}

/// The value of the first header named `name` (ASCII case-insensitive).
fn find_header<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

// ---------------------------------------------------------------------------------------------
// Frames.
// ---------------------------------------------------------------------------------------------

/// Which end of the connection we are; it decides who masks (RFC 6455 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection (Twilio's leg): incoming frames must be masked, ours are not.
    Server,
    /// We opened the connection (OpenAI's leg): incoming frames must not be masked, ours are.
    Client,
}

/// A framing violation by the peer. After any of them, close with [`WsError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// A reserved bit is set (no extension was negotiated).
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A client sent an unmasked frame.
    #[error("unmasked frame from client")]
    UnmaskedFrame,
    /// A server sent a masked frame.
    #[error("masked frame from server")]
    MaskedFrame,
    /// A control frame without the FIN bit.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 payload bytes.
    #[error("control frame too long")]
    ControlTooLong,
    /// A continuation frame with no fragmented message in progress.
    #[error("continuation without a message")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open.
    #[error("new message before the last one ended")]
    UnfinishedMessage,
    /// A 64-bit payload length with its most significant bit set.
    #[error("payload length overflows")]
    LengthOverflow,
    /// The frame, or the message it belongs to, is larger than the decoder's limit.
    #[error("message exceeds {max} bytes")]
    MessageTooBig {
        /// The decoder's `max_message_bytes`.
        max: usize,
    },
    /// A text message or close reason that is not UTF-8.
    #[error("invalid utf-8 in text")]
    InvalidUtf8,
    /// A close frame with a 1-byte payload.
    #[error("close payload too short")]
    CloseTooShort,
    /// A close code that may not be sent on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
}

impl WsError {
    /// The close code to answer with (RFC 6455 section 7.4.1): 1007 for bad UTF-8, 1009 for a
    /// message too big, 1002 for every other protocol error.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::InvalidUtf8 => 1007,
            WsError::MessageTooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

/// One message. Complete unfragmented frames borrow the caller's buffer (unmasked in place);
/// fragmented messages borrow the decoder's reassembly buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, checked to be UTF-8; mutable so a JSON parser can work in place.
    Text(&'a mut [u8]),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong (an answer to our ping, or an unsolicited heartbeat).
    Pong(&'a [u8]),
    /// A close frame; answer with a close and then close the socket.
    Close {
        /// The status code, `None` when the frame had no payload (RFC 6455 reports 1005 then).
        code: Option<u16>,
        /// The reason, possibly empty.
        reason: &'a str,
    },
}

/// The result of one [`Decoder::decode`] call.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Decoded<'a> {
    /// Bytes of the input used. `0` with no message means: need more bytes.
    pub consumed: usize,
    /// The message completed by those bytes; `None` with `consumed > 0` means a fragment was
    /// absorbed: call again on the rest.
    pub message: Option<Message<'a>>,
}

impl Decoded<'_> {
    /// The "need more bytes" answer.
    const NEED_MORE: Self = Decoded {
        consumed: 0,
        message: None,
    };

    /// Whether this is the "need more bytes" answer: nothing consumed, no message.
    pub fn needs_more(&self) -> bool {
        self.consumed == 0 && self.message.is_none()
    }
}

/// The kind of the data message being reassembled from fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// A parsed and validated frame header.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

/// Frame decoder for one connection and role. See the module docs for the driving loop.
#[derive(Debug)]
pub struct Decoder {
    /// Decides which masking the peer must use.
    role: Role,
    /// Largest frame or reassembled message accepted; checked from headers before payloads arrive.
    max_message_bytes: usize,
    /// Reassembly buffer for fragmented messages, kept between messages to reuse its capacity.
    fragments: Vec<u8>,
    /// The kind of the fragmented message in progress, if any.
    fragmented: Option<DataKind>,
}

impl Decoder {
    /// A decoder for our `role`, refusing frames and messages over `max_message_bytes`.
    pub fn new(role: Role, max_message_bytes: usize) -> Self {
        Self {
            role,
            max_message_bytes,
            fragments: Vec::new(),
            fragmented: None,
        }
    }

    /// Decodes at most one frame from the start of `buf`; see [`Decoded`] for the outcomes.
    ///
    /// A complete frame's payload is unmasked in place inside `buf`. Nothing is changed (in `buf`
    /// or in the decoder) when the frame is incomplete, so the driver can simply call again with
    /// more bytes. Violations are detected as early as the bytes allow: a too-big frame is refused
    /// from its header alone.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Decoded<'a>, WsError> {
        let Some(head) = self.parse_head(buf)? else {
            return Ok(Decoded::NEED_MORE);
        };
        let end = head
            .header_len
            .checked_add(head.payload_len)
            .ok_or(WsError::MessageTooBig {
                max: self.max_message_bytes,
            })?;
        let Some(payload) = buf.get_mut(head.header_len..end) else {
            return Ok(Decoded::NEED_MORE);
        };
        if let Some(mask) = head.mask {
            apply_mask(payload, mask);
        }
        let message = match head.opcode {
            OP_PING => Some(Message::Ping(payload)),
            OP_PONG => Some(Message::Pong(payload)),
            OP_CLOSE => Some(parse_close(payload)?),
            _ => self.data_frame(&head, payload)?,
        };
        Ok(Decoded {
            consumed: end,
            message,
        })
    }

    /// Parses and validates the frame header, `Ok(None)` when it is incomplete. Checks that need
    /// only the first bytes run before the rest of the header arrives.
    fn parse_head(&self, buf: &[u8]) -> Result<Option<FrameHead>, WsError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        if b0 & 0x70 != 0 {
            return Err(WsError::ReservedBits);
        }
        let is_control = match opcode {
            OP_CLOSE | OP_PING | OP_PONG => true,
            OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
            other => return Err(WsError::UnknownOpcode(other)),
        };
        self.check_sequence(opcode)?;
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(WsError::UnmaskedFrame),
            (Role::Client, true) => return Err(WsError::MaskedFrame),
            _ => {}
        }
        let len7 = b1 & 0x7F;
        if is_control && !fin {
            return Err(WsError::FragmentedControl);
        }
        if is_control && usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(WsError::ControlTooLong);
        }
        let Some((payload_len, len_end)) = payload_length(buf, len7)? else {
            return Ok(None);
        };
        if !is_control {
            self.check_size(payload_len)?;
        }
        let (mask, header_len) = if masked {
            let Some(key) = buf.get(len_end..len_end + 4) else {
                return Ok(None);
            };
            (Some([key[0], key[1], key[2], key[3]]), len_end + 4)
        } else {
            (None, len_end)
        };
        // check_size (or the 125 limit for control frames) guarantees this fits in usize.
        let payload_len = usize::try_from(payload_len).map_err(|_| self.too_big())?;
        Ok(Some(FrameHead {
            fin,
            opcode,
            mask,
            header_len,
            payload_len,
        }))
    }

    /// Continuations need an open message, and new data frames need none (RFC 6455 5.4).
    fn check_sequence(&self, opcode: u8) -> Result<(), WsError> {
        match (opcode, self.fragmented) {
            (OP_CONTINUATION, None) => Err(WsError::UnexpectedContinuation),
            (OP_TEXT | OP_BINARY, Some(_)) => Err(WsError::UnfinishedMessage),
            _ => Ok(()),
        }
    }

    /// Refuses a data frame whose payload, added to what is already reassembled, passes the limit.
    fn check_size(&self, payload_len: u64) -> Result<(), WsError> {
        let buffered = if self.fragmented.is_some() {
            self.fragments.len()
        } else {
            0
        };
        let total = (buffered as u64).saturating_add(payload_len);
        if total > self.max_message_bytes as u64 {
            return Err(self.too_big());
        }
        Ok(())
    }

    /// The error for a message over the limit.
    fn too_big(&self) -> WsError {
        WsError::MessageTooBig {
            max: self.max_message_bytes,
        }
    }

    /// Handles a complete text, binary or continuation frame (already unmasked).
    fn data_frame<'a>(
        &'a mut self,
        head: &FrameHead,
        payload: &'a mut [u8],
    ) -> Result<Option<Message<'a>>, WsError> {
        let kind = match head.opcode {
            OP_TEXT => DataKind::Text,
            OP_BINARY => DataKind::Binary,
            // A continuation: parse_head checked that a message is open.
            _ => {
                self.fragments.extend_from_slice(payload);
                if !head.fin {
                    return Ok(None);
                }
                let kind = self
                    .fragmented
                    .take()
                    .ok_or(WsError::UnexpectedContinuation)?;
                return finish_message(kind, &mut self.fragments);
            }
        };
        if head.fin {
            return finish_message(kind, payload);
        }
        self.fragments.clear();
        self.fragments.extend_from_slice(payload);
        self.fragmented = Some(kind);
        Ok(None)
    }
}

/// Reads the payload length after the first two bytes: `(length, offset after it)`, `None` when
/// the extended length has not fully arrived. RFC 6455 5.2: the 64-bit form's top bit must be 0.
fn payload_length(buf: &[u8], len7: u8) -> Result<Option<(u64, usize)>, WsError> {
    Ok(match len7 {
        126 => buf
            .get(2..4)
            .map(|b| (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)),
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if len >> 63 != 0 {
                    return Err(WsError::LengthOverflow);
                }
                Some((len, 10))
            }
            None => None,
        },
        n => Some((u64::from(n), 2)),
    })
}

/// Turns a complete data message into a [`Message`], checking text is UTF-8.
fn finish_message(kind: DataKind, bytes: &mut [u8]) -> Result<Option<Message<'_>>, WsError> {
    Ok(Some(match kind {
        DataKind::Text => {
            std::str::from_utf8(bytes).map_err(|_| WsError::InvalidUtf8)?;
            Message::Text(bytes)
        }
        DataKind::Binary => Message::Binary(bytes),
    }))
}

/// Parses a close payload: empty, or a valid 2-byte code and a UTF-8 reason (RFC 6455 5.5.1).
fn parse_close(payload: &[u8]) -> Result<Message<'_>, WsError> {
    match payload {
        [] => Ok(Message::Close {
            code: None,
            reason: "",
        }),
        [_] => Err(WsError::CloseTooShort),
        [hi, lo, rest @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(rest).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Message::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

/// Codes allowed on the wire: the defined ones (1000-1003, 1007-1014, per RFC 6455 7.4.1 and the
/// IANA registry) and the application/private ranges 3000-4999. 1004 is reserved; 1005, 1006 and
/// 1015 are for reporting only and must never be sent.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The 4-byte mask repeated over a u64, so masking runs 8 bytes at a time.
fn wide_mask(mask: [u8; 4]) -> u64 {
    let [a, b, c, d] = mask;
    u64::from_ne_bytes([a, b, c, d, a, b, c, d])
}

/// XORs `payload` with the repeating `mask`, in place, starting at mask byte 0 (RFC 6455 5.3).
fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = wide_mask(mask);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Chunks are 8 bytes, a multiple of 4: the remainder starts at mask byte 0.
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// Appends `payload` XORed with `mask` to `out`: copy and mask in one pass.
fn extend_masked(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    let wide = wide_mask(mask);
    let mut chunks = payload.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        out.extend_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, m) in chunks.remainder().iter().zip(mask.iter().cycle()) {
        out.push(byte ^ m);
    }
}

/// Frame encoder for one connection and role: server frames are plain, client frames masked
/// with a fresh key each.
#[derive(Debug)]
pub struct Encoder {
    /// Decides whether frames are masked.
    role: Role,
    /// xorshift64 state for masking keys (never 0). RFC 6455 10.3 wants keys a browser script
    /// cannot predict, against cache poisoning of intermediaries; we are not a browser and the
    /// upstream leg is TLS, so a fast PRNG seeded once from the OS is enough.
    rng: u64,
}

impl Encoder {
    /// An encoder for our `role`.
    pub fn new(role: Role) -> Self {
        let mut seed = [0u8; 8];
        fill_random(&mut seed);
        Self {
            role,
            rng: u64::from_ne_bytes(seed) | 1,
        }
    }

    /// Appends a text frame. `payload` must be UTF-8 (the peer closes with 1007 otherwise).
    pub fn text(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        self.frame(out, OP_TEXT, payload);
    }

    /// Appends a binary frame.
    pub fn binary(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        self.frame(out, OP_BINARY, payload);
    }

    /// Appends a ping; a payload over 125 bytes is cut to 125 (the control-frame limit).
    pub fn ping(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        self.frame(
            out,
            OP_PING,
            &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
        );
    }

    /// Appends a pong; a payload over 125 bytes is cut to 125 (decoded pings never are).
    pub fn pong(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        self.frame(
            out,
            OP_PONG,
            &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
        );
    }

    /// Appends a close frame with `code` and `reason`, the reason cut at a character boundary to
    /// fit the 123 bytes left in a control frame. `code` must be one that may be sent (1000-1003,
    /// 1007-1014, 3000-4999); use 1000 for a normal end.
    pub fn close(&mut self, out: &mut Vec<u8>, code: u16, reason: &str) {
        let reason = truncate_at_char(reason, MAX_CLOSE_REASON);
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
        self.frame(out, OP_CLOSE, &payload[..2 + reason.len()]);
    }

    /// Appends one final (unfragmented) frame: header, then the payload, masked if we are client.
    fn frame(&mut self, out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
        let mask = match self.role {
            Role::Client => Some(self.next_mask()),
            Role::Server => None,
        };
        out.reserve(MAX_FRAME_HEADER + payload.len());
        write_frame_header(out, opcode, payload.len(), mask);
        match mask {
            Some(mask) => extend_masked(out, payload, mask),
            None => out.extend_from_slice(payload),
        }
    }

    /// The next masking key (xorshift64, Marsaglia 2003).
    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        // The high half of xorshift64 output is the better-mixed half.
        ((x >> 32) as u32).to_ne_bytes()
    }
}

/// Appends a FIN frame header with the shortest length encoding (RFC 6455 5.2).
fn write_frame_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let mut head = [0u8; MAX_FRAME_HEADER];
    head[0] = 0x80 | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = match len {
        0..=125 => {
            head[1] = mask_bit | len as u8;
            2
        }
        126..=0xFFFF => {
            head[1] = mask_bit | 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            head[1] = mask_bit | 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        head[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    out.extend_from_slice(&head[..n]);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

/// Fills `buf` from the OS random source. If that ever fails (it does not on Linux once booted),
/// falls back to a splitmix64 stream over a process counter and a stack address (ASLR): these
/// bytes are nonces and masking keys, which need to differ, not to be secret (see [`Encoder`]).
fn fill_random(buf: &mut [u8]) {
    if getrandom::getrandom(buf).is_ok() {
        return;
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let local = 0u8;
    let base = std::ptr::addr_of!(local) as u64;
    for chunk in buf.chunks_mut(8) {
        let n = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ base;
        let mut z = n;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_ne_bytes()[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::{parse_request, Limits, Parsed, Request};

    /// Generous limit for tests that are not about size.
    const MAX: usize = 1 << 20;

    /// An owned copy of a [`Message`], for comparisons after the borrow ends.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn own(m: Message<'_>) -> Owned {
        match m {
            Message::Text(t) => Owned::Text(String::from_utf8(t.to_vec()).unwrap()),
            Message::Binary(b) => Owned::Binary(b.to_vec()),
            Message::Ping(b) => Owned::Ping(b.to_vec()),
            Message::Pong(b) => Owned::Pong(b.to_vec()),
            Message::Close { code, reason } => Owned::Close(code, reason.to_owned()),
        }
    }

    /// Runs the driver loop over `input`; returns the messages and the unconsumed byte count.
    fn decode_all(dec: &mut Decoder, input: &[u8]) -> Result<(Vec<Owned>, usize), WsError> {
        let mut buf = input.to_vec();
        let mut start = 0;
        let mut out = Vec::new();
        loop {
            let d = dec.decode(&mut buf[start..])?;
            if d.needs_more() {
                return Ok((out, buf.len() - start));
            }
            start += d.consumed;
            out.extend(d.message.map(own));
        }
    }

    fn decode_err(role: Role, max: usize, input: &[u8]) -> WsError {
        decode_all(&mut Decoder::new(role, max), input).unwrap_err()
    }

    fn text(s: &str) -> Owned {
        Owned::Text(s.to_owned())
    }

    /// Builds a frame by hand: `first` is FIN/RSV/opcode, the payload is masked with `mask`.
    fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![first];
        let bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => out.push(bit | n as u8),
            n @ 126..=0xFFFF => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(m) => {
                out.extend_from_slice(&m);
                extend_masked(&mut out, payload, m);
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// A frame as the peer of `role` would send it (masked towards a server).
    fn peer_frame(role: Role, first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = (role == Role::Server).then_some([0x37, 0xfa, 0x21, 0x3d]);
        raw_frame(first, payload, mask)
    }

    const RFC_MASKED_HELLO: [u8; 11] = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    const RFC_UNMASKED_HELLO: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];

    fn upgrade_request(extra: &str) -> Request {
        let raw = format!(
            "GET /api/twilio/media-stream/c_7f3a9e HTTP/1.1\r\nhost: bridge.example.com\r\n\
             upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        );
        match parse_request(raw.as_bytes(), &Limits::default()) {
            Ok(Parsed::Complete { request, .. }) => request,
            other => panic!("{other:?}"),
        }
    }

    fn with_header(name: &str, value: &str) -> Request {
        let mut req = upgrade_request("sec-websocket-version: 13\r\n");
        req.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if !value.is_empty() {
            req.headers
                .push((name.to_owned(), value.as_bytes().to_vec()));
        }
        req
    }

    // ----- handshake, server side -----

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_twilio_style_upgrade_is_accepted() {
        let req = upgrade_request("sec-websocket-version: 13\r\n");
        assert_eq!(check_upgrade(&req).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_non_get_upgrade_is_405_with_allow() {
        let mut req = upgrade_request("sec-websocket-version: 13\r\n");
        req.method = "POST".into();
        let err = check_upgrade(&req).unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (UpgradeError::MethodNotAllowed, 405)
        );
        assert_eq!(err.response_headers(), &[("Allow", "GET")]);
    }

    #[test]
    fn a_missing_upgrade_or_connection_token_is_426() {
        for (name, value) in [
            ("upgrade", ""),
            ("upgrade", "h2c"),
            ("connection", "keep-alive"),
        ] {
            let err = check_upgrade(&with_header(name, value)).unwrap_err();
            assert_eq!(err, UpgradeError::NotUpgrade, "{name}: {value}");
            assert_eq!(err.status(), 426);
            assert!(err.response_headers().contains(&("Upgrade", "websocket")));
        }
    }

    #[test]
    fn a_missing_or_wrong_version_is_426_advising_version_13() {
        for value in ["", "8", "13x"] {
            let err = check_upgrade(&with_header("sec-websocket-version", value)).unwrap_err();
            assert_eq!(err, UpgradeError::UnsupportedVersion, "{value:?}");
            assert_eq!(err.status(), 426);
            assert!(err
                .response_headers()
                .contains(&("Sec-WebSocket-Version", "13")));
        }
    }

    #[test]
    fn a_bad_key_is_400() {
        for value in [
            "",
            "not base64!",
            "AAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        ] {
            let err = check_upgrade(&with_header("sec-websocket-key", value)).unwrap_err();
            assert_eq!(err, UpgradeError::BadKey, "{value:?}");
            assert_eq!(err.status(), 400);
        }
        let twice = upgrade_request(
            "sec-websocket-version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
        );
        assert_eq!(check_upgrade(&twice), Err(UpgradeError::BadKey));
    }

    #[test]
    fn an_http10_upgrade_is_400() {
        let mut req = upgrade_request("sec-websocket-version: 13\r\n");
        req.version_minor = 0;
        assert_eq!(check_upgrade(&req).map_err(|e| e.status()), Err(400));
    }

    #[test]
    fn the_upgrade_response_is_byte_exact() {
        let mut out = Vec::new();
        write_upgrade_response(&mut out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    // ----- handshake, client side -----

    #[test]
    fn client_keys_are_base64_of_16_fresh_bytes() {
        let (a, b) = (new_client_key(), new_client_key());
        assert_eq!(BASE64.decode(&a).unwrap().len(), 16);
        assert_ne!(a, b);
    }

    #[test]
    fn our_client_handshake_passes_our_server_check() {
        let key = new_client_key();
        let mut out = Vec::new();
        let auth = [("Authorization", "Bearer sk-test")];
        write_client_handshake(
            &mut out,
            "api.openai.com",
            "/v1/realtime?model=gpt-realtime",
            &key,
            &auth,
        );
        let Ok(Parsed::Complete { request, consumed }) = parse_request(&out, &Limits::default())
        else {
            panic!("unparsable handshake");
        };
        assert_eq!(consumed, out.len());
        assert_eq!(request.raw_target(), "/v1/realtime?model=gpt-realtime");
        assert_eq!(request.header("host"), Some("api.openai.com"));
        assert_eq!(request.header("authorization"), Some("Bearer sk-test"));
        assert_eq!(check_upgrade(&request), Ok(accept_key(&key)));
    }

    fn switching(accept: &str, extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn a_good_101_returns_the_head_length_leaving_frames_behind() {
        let mut buf = switching(ACCEPT, "x-request-id: 1\r\n");
        let head = buf.len();
        buf.extend_from_slice(&RFC_UNMASKED_HELLO);
        assert_eq!(parse_handshake_response(&buf, KEY), Ok(Some(head)));
        for end in 0..head {
            assert_eq!(
                parse_handshake_response(&buf[..end], KEY),
                Ok(None),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn a_101_with_a_wrong_accept_or_no_upgrade_is_refused() {
        assert_eq!(
            parse_handshake_response(&switching("AAAA", ""), KEY),
            Err(HandshakeError::BadAccept)
        );
        let no_upgrade = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        );
        assert_eq!(
            parse_handshake_response(no_upgrade.as_bytes(), KEY),
            Err(HandshakeError::NotUpgrade)
        );
    }

    #[test]
    fn a_101_choosing_an_extension_or_protocol_is_refused() {
        let ext = switching(ACCEPT, "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert_eq!(
            parse_handshake_response(&ext, KEY),
            Err(HandshakeError::UnexpectedHeader("Sec-WebSocket-Extensions"))
        );
        let proto = switching(ACCEPT, "Sec-WebSocket-Protocol: chat\r\n");
        assert!(matches!(
            parse_handshake_response(&proto, KEY),
            Err(HandshakeError::UnexpectedHeader(_))
        ));
    }

    #[test]
    fn a_401_waits_for_its_body_then_reports_it() {
        let body = r#"{"error":{"type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let head = format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let full = format!("{head}{body}");
        assert_eq!(parse_handshake_response(head.as_bytes(), KEY), Ok(None));
        assert_eq!(
            parse_handshake_response(&full.as_bytes()[..full.len() - 1], KEY),
            Ok(None)
        );
        assert_eq!(
            parse_handshake_response(full.as_bytes(), KEY),
            Err(HandshakeError::Rejected {
                status: 401,
                body: body.to_owned()
            })
        );
    }

    #[test]
    fn a_long_rejection_body_is_cut_to_200_bytes() {
        let body = "x".repeat(1000);
        let raw = format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1000\r\n\r\n{}",
            &body[..300]
        );
        let Err(HandshakeError::Rejected { status, body }) =
            parse_handshake_response(raw.as_bytes(), KEY)
        else {
            panic!("expected a rejection");
        };
        assert_eq!((status, body.len()), (500, 200));
    }

    #[test]
    fn a_rejection_without_content_length_is_reported_at_once() {
        let raw = b"HTTP/1.1 403 Forbidden\r\n\r\n";
        assert_eq!(
            parse_handshake_response(raw, KEY),
            Err(HandshakeError::Rejected {
                status: 403,
                body: String::new()
            })
        );
    }

    #[test]
    fn a_huge_or_malformed_handshake_response_is_refused() {
        let mut huge = b"HTTP/1.1 101 Switching Protocols\r\nX: ".to_vec();
        huge.resize(MAX_HANDSHAKE_HEAD + 1, b'a');
        assert_eq!(
            parse_handshake_response(&huge, KEY),
            Err(HandshakeError::HeadTooLarge)
        );
        assert!(matches!(
            parse_handshake_response(b"HTTP/1.1 abc\r\n\r\n", KEY),
            Err(HandshakeError::Malformed(_))
        ));
        let many: String = (0..=MAX_HANDSHAKE_HEADERS)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let raw = format!("HTTP/1.1 101 Switching Protocols\r\n{many}\r\n");
        assert_eq!(
            parse_handshake_response(raw.as_bytes(), KEY),
            Err(HandshakeError::HeadTooLarge)
        );
    }

    // ----- frames: RFC 6455 section 5.7 examples -----

    #[test]
    fn the_rfc_masked_hello_decodes_in_place_on_the_server() {
        let mut buf = RFC_MASKED_HELLO.to_vec();
        let range = buf.as_ptr_range();
        let mut dec = Decoder::new(Role::Server, MAX);
        let d = dec.decode(&mut buf).unwrap();
        assert_eq!(d.consumed, 11);
        let Some(Message::Text(t)) = d.message else {
            panic!("not text")
        };
        assert_eq!(t, b"Hello");
        assert!(
            range.contains(&t.as_ptr()),
            "zero copy: the text lives in the input buffer"
        );
        t[0] = b'J'; // mutable for in-place JSON parsing
        assert_eq!(&buf[6..], b"Jello");
    }

    #[test]
    fn the_rfc_unmasked_hello_decodes_on_the_client() {
        let mut dec = Decoder::new(Role::Client, MAX);
        assert_eq!(
            decode_all(&mut dec, &RFC_UNMASKED_HELLO),
            Ok((vec![text("Hello")], 0))
        );
    }

    #[test]
    fn the_server_encoder_writes_the_rfc_unmasked_hello() {
        let mut out = Vec::new();
        Encoder::new(Role::Server).text(&mut out, b"Hello");
        assert_eq!(out, RFC_UNMASKED_HELLO);
    }

    #[test]
    fn the_rfc_fragmented_hello_with_an_interleaved_ping_is_reassembled() {
        // 0x01 0x03 "Hel", ping "Hello" (masked example in 5.7 is unmasked here), 0x80 0x02 "lo".
        let mut input = vec![0x01, 0x03, 0x48, 0x65, 0x6c];
        input.extend_from_slice(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        input.extend_from_slice(&[0x80, 0x02, 0x6c, 0x6f]);
        let mut dec = Decoder::new(Role::Client, MAX);
        assert_eq!(
            decode_all(&mut dec, &input),
            Ok((vec![Owned::Ping(b"Hello".to_vec()), text("Hello")], 0))
        );
        // The decoder is reusable afterwards, for single frames and new fragmented messages.
        input.extend_from_slice(&RFC_UNMASKED_HELLO);
        assert_eq!(
            decode_all(&mut dec, &input),
            Ok((
                vec![Owned::Ping(b"Hello".to_vec()), text("Hello"), text("Hello")],
                0
            ))
        );
    }

    #[test]
    fn absorbing_a_fragment_consumes_it_without_a_message() {
        let mut buf = vec![0x01, 0x03, 0x48, 0x65, 0x6c];
        let mut dec = Decoder::new(Role::Client, MAX);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Decoded {
                consumed: 5,
                message: None
            })
        );
    }

    #[test]
    fn sixteen_and_sixty_four_bit_lengths_decode_in_both_roles() {
        for role in [Role::Server, Role::Client] {
            for len in [126, 256, 0xFFFF, 0x1_0000, 70_000] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let frame = peer_frame(role, 0x82, &payload);
                let expected_header = match (len, role) {
                    (0..=0xFFFF, Role::Server) => 8,
                    (0..=0xFFFF, Role::Client) => 4,
                    (_, Role::Server) => 14,
                    (_, Role::Client) => 10,
                };
                assert_eq!(frame.len(), expected_header + len);
                let mut dec = Decoder::new(role, MAX);
                assert_eq!(
                    decode_all(&mut dec, &frame),
                    Ok((vec![Owned::Binary(payload)], 0))
                );
            }
        }
    }

    #[test]
    fn the_rfc_256_and_65536_byte_headers_are_produced() {
        let mut out = Vec::new();
        let mut enc = Encoder::new(Role::Server);
        enc.binary(&mut out, &[0; 256]);
        assert_eq!(&out[..4], &[0x82, 0x7E, 0x01, 0x00]);
        out.clear();
        enc.binary(&mut out, &[0; 65536]);
        assert_eq!(&out[..10], &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(out.len(), 10 + 65536);
    }

    #[test]
    fn every_split_point_of_a_frame_needs_more_without_consuming() {
        let frames = |role| {
            vec![
                peer_frame(role, 0x81, b"Hello"),
                peer_frame(role, 0x82, &[7; 300]),
                peer_frame(role, 0x82, &[9; 70_000]),
                peer_frame(role, 0x88, &[0x03, 0xE8, b'b', b'y', b'e']),
                peer_frame(role, 0x89, b""),
            ]
        };
        for role in [Role::Server, Role::Client] {
            for frame in frames(role) {
                let mut dec = Decoder::new(role, MAX);
                for end in 0..frame.len() {
                    let mut partial = frame[..end].to_vec();
                    let d = dec.decode(&mut partial).unwrap();
                    assert_eq!(d, Decoded::NEED_MORE, "{role:?} split at {end}");
                    assert_eq!(partial, frame[..end], "partial input must stay untouched");
                }
                let (msgs, left) = decode_all(&mut dec, &frame).unwrap();
                assert_eq!((msgs.len(), left), (1, 0));
            }
        }
    }

    #[test]
    fn a_split_continuation_leaves_the_reassembly_state_unchanged() {
        let first = peer_frame(Role::Server, 0x01, b"Hel");
        let last = peer_frame(Role::Server, 0x80, b"lo");
        let mut dec = Decoder::new(Role::Server, MAX);
        let mut buf = first.clone();
        assert_eq!(dec.decode(&mut buf).unwrap().consumed, first.len());
        for end in 0..last.len() {
            let mut partial = last[..end].to_vec();
            assert_eq!(dec.decode(&mut partial).unwrap(), Decoded::NEED_MORE);
        }
        assert_eq!(decode_all(&mut dec, &last), Ok((vec![text("Hello")], 0)));
    }

    // ----- frames: round trips -----

    #[test]
    fn every_message_kind_round_trips_in_both_directions() {
        for (ours, theirs) in [(Role::Server, Role::Client), (Role::Client, Role::Server)] {
            let mut enc = Encoder::new(ours);
            let mut wire = Vec::new();
            enc.text(&mut wire, "山田 太郎 {\"event\":\"media\"}".as_bytes());
            enc.binary(&mut wire, &[0, 1, 2, 255]);
            enc.ping(&mut wire, b"p");
            enc.pong(&mut wire, b"");
            enc.text(&mut wire, b"");
            enc.close(&mut wire, 1000, "done");
            let mut dec = Decoder::new(theirs, MAX);
            assert_eq!(
                decode_all(&mut dec, &wire),
                Ok((
                    vec![
                        text("山田 太郎 {\"event\":\"media\"}"),
                        Owned::Binary(vec![0, 1, 2, 255]),
                        Owned::Ping(b"p".to_vec()),
                        Owned::Pong(vec![]),
                        text(""),
                        Owned::Close(Some(1000), "done".into()),
                    ],
                    0
                ))
            );
        }
    }

    #[test]
    fn masking_is_correct_for_every_length_around_the_word_size() {
        let mut enc = Encoder::new(Role::Client);
        for len in 0..40 {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            enc.binary(&mut wire, &payload);
            let mut dec = Decoder::new(Role::Server, MAX);
            assert_eq!(
                decode_all(&mut dec, &wire),
                Ok((vec![Owned::Binary(payload)], 0))
            );
        }
    }

    #[test]
    fn client_frames_are_masked_with_a_fresh_key_each() {
        let mut enc = Encoder::new(Role::Client);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        enc.text(&mut a, b"same");
        enc.text(&mut b, b"same");
        assert_eq!(a[1], 0x80 | 4);
        assert_ne!(a[2..6], b[2..6]);
        assert_ne!(&a[6..], b"same");
    }

    #[test]
    fn a_hot_path_text_frame_allocates_only_by_growing_out() {
        let mut enc = Encoder::new(Role::Client);
        let payload = vec![b'a'; 5000];
        let mut out = Vec::with_capacity(5000 + MAX_FRAME_HEADER);
        let before = out.as_ptr();
        enc.text(&mut out, &payload);
        assert_eq!(
            out.as_ptr(),
            before,
            "out had room, so it must not reallocate"
        );
        assert_eq!(out.len(), 5000 + 8);
    }

    #[test]
    fn ping_and_close_payloads_are_cut_to_fit_a_control_frame() {
        let mut enc = Encoder::new(Role::Server);
        let mut wire = Vec::new();
        enc.ping(&mut wire, &[1; 200]);
        // 61 three-byte characters = 183 bytes; 41 of them (123 bytes) fit after the code.
        enc.close(&mut wire, 1001, &"山".repeat(61));
        let mut dec = Decoder::new(Role::Client, MAX);
        let (msgs, _) = decode_all(&mut dec, &wire).unwrap();
        assert_eq!(msgs[0], Owned::Ping(vec![1; 125]));
        assert_eq!(msgs[1], Owned::Close(Some(1001), "山".repeat(41)));
    }

    #[test]
    fn an_empty_close_has_no_code() {
        let mut dec = Decoder::new(Role::Client, MAX);
        assert_eq!(
            decode_all(&mut dec, &[0x88, 0x00]),
            Ok((vec![Owned::Close(None, String::new())], 0))
        );
    }

    #[test]
    fn valid_close_codes_are_accepted() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            let frame = raw_frame(0x88, &u16::to_be_bytes(code), None);
            let mut dec = Decoder::new(Role::Client, MAX);
            assert_eq!(
                decode_all(&mut dec, &frame),
                Ok((vec![Owned::Close(Some(code), String::new())], 0))
            );
        }
    }

    // ----- frames: errors -----

    #[test]
    fn reserved_bits_are_a_protocol_error() {
        for first in [0xC1, 0xA1, 0x91] {
            let err = decode_err(Role::Client, MAX, &[first, 0x00]);
            assert_eq!(
                (err.clone(), err.close_code()),
                (WsError::ReservedBits, 1002)
            );
        }
    }

    #[test]
    fn unknown_opcodes_are_a_protocol_error() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let err = decode_err(Role::Client, MAX, &[0x80 | op]);
            assert_eq!(
                (err.clone(), err.close_code()),
                (WsError::UnknownOpcode(op), 1002)
            );
        }
    }

    #[test]
    fn a_server_refuses_unmasked_frames_and_a_client_masked_ones() {
        assert_eq!(
            decode_err(Role::Server, MAX, &RFC_UNMASKED_HELLO),
            WsError::UnmaskedFrame
        );
        assert_eq!(
            decode_err(Role::Client, MAX, &RFC_MASKED_HELLO),
            WsError::MaskedFrame
        );
    }

    #[test]
    fn control_frames_must_be_final_and_short() {
        assert_eq!(
            decode_err(Role::Client, MAX, &[0x09, 0x00]),
            WsError::FragmentedControl
        );
        let long_ping = raw_frame(0x89, &[0; 126], None);
        assert_eq!(
            decode_err(Role::Client, MAX, &long_ping[..2]),
            WsError::ControlTooLong
        );
        // Exactly 125 is allowed.
        let ping = raw_frame(0x89, &[0; 125], None);
        assert!(decode_all(&mut Decoder::new(Role::Client, MAX), &ping).is_ok());
    }

    #[test]
    fn a_continuation_without_a_start_is_a_protocol_error() {
        assert_eq!(
            decode_err(Role::Client, MAX, &[0x80, 0x00]),
            WsError::UnexpectedContinuation
        );
        assert_eq!(
            decode_err(Role::Client, MAX, &[0x00]),
            WsError::UnexpectedContinuation
        );
    }

    #[test]
    fn a_new_data_frame_inside_a_fragmented_message_is_a_protocol_error() {
        let mut input = raw_frame(0x01, b"Hel", None);
        input.extend_from_slice(&RFC_UNMASKED_HELLO);
        assert_eq!(
            decode_err(Role::Client, MAX, &input),
            WsError::UnfinishedMessage
        );
        let mut input = raw_frame(0x02, b"ab", None);
        input.extend_from_slice(&raw_frame(0x02, b"cd", None));
        assert_eq!(
            decode_err(Role::Client, MAX, &input),
            WsError::UnfinishedMessage
        );
    }

    #[test]
    fn invalid_utf8_text_is_1007_whole_or_fragmented() {
        let err = decode_err(
            Role::Server,
            MAX,
            &peer_frame(Role::Server, 0x81, b"\xff\xfe"),
        );
        assert_eq!(
            (err.clone(), err.close_code()),
            (WsError::InvalidUtf8, 1007)
        );
        // A character split across fragments is fine; an incomplete one at the end is not.
        let mut split = raw_frame(0x01, "山".as_bytes().get(..2).unwrap(), None);
        split.extend_from_slice(&raw_frame(0x80, &"山".as_bytes()[2..], None));
        assert_eq!(
            decode_all(&mut Decoder::new(Role::Client, MAX), &split),
            Ok((vec![text("山")], 0))
        );
        let mut cut = raw_frame(0x01, b"ok", None);
        cut.extend_from_slice(&raw_frame(0x80, &"山".as_bytes()[..2], None));
        assert_eq!(decode_err(Role::Client, MAX, &cut), WsError::InvalidUtf8);
    }

    #[test]
    fn binary_frames_are_not_checked_for_utf8() {
        let frame = raw_frame(0x82, b"\xff", None);
        assert!(decode_all(&mut Decoder::new(Role::Client, MAX), &frame).is_ok());
    }

    #[test]
    fn a_too_big_frame_is_1009_from_its_header_alone() {
        let frame = peer_frame(Role::Server, 0x81, &[b'a'; 101]);
        // Only the 2 + 2 length bytes (no mask, no payload) have arrived.
        let err = decode_err(Role::Server, 100, &frame[..4]);
        assert_eq!(
            (err.clone(), err.close_code()),
            (WsError::MessageTooBig { max: 100 }, 1009)
        );
        // Exactly at the limit passes.
        let ok = peer_frame(Role::Server, 0x81, &[b'a'; 100]);
        assert!(decode_all(&mut Decoder::new(Role::Server, 100), &ok).is_ok());
    }

    #[test]
    fn a_too_big_fragmented_message_is_1009_from_the_last_header() {
        let mut input = raw_frame(0x02, &[0; 60], None);
        input.extend_from_slice(&raw_frame(0x89, b"interleaved", None));
        input.extend_from_slice(&[0x80, 41]); // a 41-byte continuation: 101 in total
        assert_eq!(
            decode_err(Role::Client, 100, &input),
            WsError::MessageTooBig { max: 100 }
        );
    }

    #[test]
    fn control_frames_do_not_count_towards_the_message_limit() {
        let ping = raw_frame(0x89, &[0; 20], None);
        assert!(decode_all(&mut Decoder::new(Role::Client, 10), &ping).is_ok());
    }

    #[test]
    fn a_64_bit_length_with_the_top_bit_set_is_a_protocol_error() {
        let frame = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            decode_err(Role::Client, usize::MAX, &frame),
            WsError::LengthOverflow
        );
        // Just below the top bit with an unlimited decoder: too big for memory, still no panic.
        let frame = [0x82, 0x7F, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        let d = Decoder::new(Role::Client, usize::MAX)
            .decode(&mut frame.clone())
            .map(|d| d.consumed);
        assert!(matches!(d, Ok(0) | Err(WsError::MessageTooBig { .. })));
    }

    #[test]
    fn a_one_byte_close_payload_is_a_protocol_error() {
        let frame = raw_frame(0x88, &[0x03], None);
        assert_eq!(
            decode_err(Role::Client, MAX, &frame),
            WsError::CloseTooShort
        );
    }

    #[test]
    fn invalid_close_codes_are_a_protocol_error() {
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let frame = raw_frame(0x88, &u16::to_be_bytes(code), None);
            let err = decode_err(Role::Client, MAX, &frame);
            assert_eq!(
                (err.clone(), err.close_code()),
                (WsError::InvalidCloseCode(code), 1002)
            );
        }
    }

    #[test]
    fn a_close_reason_that_is_not_utf8_is_1007() {
        let frame = raw_frame(0x88, &[0x03, 0xE8, 0xFF], None);
        assert_eq!(decode_err(Role::Client, MAX, &frame).close_code(), 1007);
    }

    #[test]
    fn an_empty_buffer_needs_more() {
        assert_eq!(
            Decoder::new(Role::Server, MAX).decode(&mut []),
            Ok(Decoded::NEED_MORE)
        );
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_at_char("abc", 5), "abc");
        assert_eq!(truncate_at_char("山田", 4), "山");
        assert_eq!(truncate_at_char("山", 2), "");
    }
}
