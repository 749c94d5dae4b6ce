//! The WebSocket frame codec (`callbridge_core::wire::ws`) checked against `tungstenite` as an
//! oracle, in both directions.
//!
//! The codec is hand-written (sans-IO, decoding in place, no allocation per frame), so nothing
//! but its own unit tests says it speaks the same RFC 6455 as everyone else. tungstenite is the
//! design card's WebSocket crate; here it plays the peer, as simd-json is the oracle for the JSON
//! fast path:
//!
//! 1. Our encoder → tungstenite: arbitrary message sequences (UTF-8 text of every length class,
//!    multibyte included; binary across the 7-, 16- and 64-bit length encodings; pings and pongs
//!    of up to 125 bytes; a final close with a code and a reason, which our encoder cuts to 123
//!    bytes at a character boundary) encoded by us as a client (masked) and as a server (plain)
//!    read back by tungstenite in the other role as the same messages. Unmasked (server) frames
//!    are also byte-identical to tungstenite's, and masked ones identical up to the key.
//! 2. tungstenite → our decoder: tungstenite writes the messages as client and as server,
//!    fragmenting data messages at arbitrary byte offsets (inside UTF-8 characters too, and with
//!    empty fragments) with pings and pongs interleaved between fragments; the byte stream is fed
//!    to our decoder in chunks split at random points (and one byte at a time), and the decoder
//!    must yield the same messages, leave no bytes behind and never touch an incomplete frame.
//! 3. Refusal parity: both sides refuse (our decoder with any [`WsError`], tungstenite with any
//!    error; the kinds are not compared) wrongly masked frames, control frames over 125 bytes or
//!    fragmented, invalid UTF-8 in text (whole or fragmented) and in close reasons, one-byte close
//!    payloads, reserved bits and opcodes, and broken fragment sequences, after decoding the same
//!    valid prefix. Close codes that may not be sent: we refuse with 1002, tungstenite answers the
//!    close with 1002. Size limits: with the same limit, both accept exactly the messages (whole
//!    or fragmented, control frames not counted) of at most that many bytes.
//!
//! Deterministic: a fixed proptest seed, no persistence file, everything in memory. Masking keys
//! are still random on both sides (our encoder seeds from the OS, tungstenite uses `rand`); no
//! property depends on them.

use std::io::{self, Read, Write};

use callbridge_core::wire::ws::{Decoder, Encoder, Message, Role, WsError};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;
use tungstenite::error::{Error as TError, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::{CloseFrame, Role as TRole, WebSocket, WebSocketConfig};
use tungstenite::{Bytes, Message as TMessage};

/// Limit for both decoders where size is not under test: above every generated message.
const MAX: usize = 1 << 20;

/// Cases per property: 7 properties × 256 cases run in about a second in debug mode.
const CASES: u32 = 256;

/// Largest control-frame payload (RFC 6455 5.5), and what is left for a close reason.
const MAX_CONTROL: usize = 125;
const MAX_CLOSE_REASON: usize = MAX_CONTROL - 2;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        rng_seed: RngSeed::Fixed(0x6361_6c6c_6272_6964), // "callbrid"
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// A common, owned view of a message, and conversions from and to both codecs.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// `None`: an empty close payload (no code).
    Close(Option<(u16, String)>),
}

fn from_ours(message: Message<'_>) -> Msg {
    match message {
        Message::Text(text) => {
            Msg::Text(String::from_utf8(text.to_vec()).expect("the decoder checked UTF-8"))
        }
        Message::Binary(bytes) => Msg::Binary(bytes.to_vec()),
        Message::Ping(bytes) => Msg::Ping(bytes.to_vec()),
        Message::Pong(bytes) => Msg::Pong(bytes.to_vec()),
        Message::Close { code: None, reason } => {
            assert_eq!(reason, "", "a close without a code has no reason");
            Msg::Close(None)
        }
        Message::Close {
            code: Some(code),
            reason,
        } => Msg::Close(Some((code, reason.to_owned()))),
    }
}

fn from_tungstenite(message: TMessage) -> Msg {
    match message {
        TMessage::Text(text) => Msg::Text(text.as_str().to_owned()),
        TMessage::Binary(bytes) => Msg::Binary(bytes.to_vec()),
        TMessage::Ping(bytes) => Msg::Ping(bytes.to_vec()),
        TMessage::Pong(bytes) => Msg::Pong(bytes.to_vec()),
        TMessage::Close(None) => Msg::Close(None),
        TMessage::Close(Some(frame)) => Msg::Close(Some((
            u16::from(frame.code),
            frame.reason.as_str().to_owned(),
        ))),
        TMessage::Frame(_) => unreachable!("tungstenite never reads a raw frame"),
    }
}

fn to_tungstenite(msg: &Msg) -> TMessage {
    match msg {
        Msg::Text(text) => TMessage::text(text.clone()),
        Msg::Binary(bytes) => TMessage::Binary(Bytes::from(bytes.clone())),
        Msg::Ping(bytes) => TMessage::Ping(Bytes::from(bytes.clone())),
        Msg::Pong(bytes) => TMessage::Pong(Bytes::from(bytes.clone())),
        Msg::Close(None) => TMessage::Close(None),
        Msg::Close(Some((code, reason))) => TMessage::Close(Some(CloseFrame {
            code: CloseCode::from(*code),
            reason: reason.as_str().into(),
        })),
    }
}

fn encode_ours(encoder: &mut Encoder, out: &mut Vec<u8>, msg: &Msg) {
    match msg {
        Msg::Text(text) => encoder.text(out, text.as_bytes()),
        Msg::Binary(bytes) => encoder.binary(out, bytes),
        Msg::Ping(bytes) => encoder.ping(out, bytes),
        Msg::Pong(bytes) => encoder.pong(out, bytes),
        Msg::Close(Some((code, reason))) => encoder.close(out, *code, reason),
        Msg::Close(None) => unreachable!("our encoder always sends a close code"),
    }
}

/// The longest prefix of `reason` that fits a close frame (123 bytes) and ends on a character
/// boundary: what our encoder promises to send. Written here without the codec's helper.
fn fit_close_reason(reason: &str) -> String {
    let mut fitted = String::new();
    for c in reason.chars() {
        if fitted.len() + c.len_utf8() > MAX_CLOSE_REASON {
            break;
        }
        fitted.push(c);
    }
    fitted
}

/// The tungstenite role of the same end as `role`.
fn t_role(role: Role) -> TRole {
    match role {
        Role::Client => TRole::Client,
        Role::Server => TRole::Server,
    }
}

/// The other end of the connection.
fn peer(role: Role) -> Role {
    match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    }
}

// ---------------------------------------------------------------------------------------------
// Driving both codecs over in-memory bytes.
// ---------------------------------------------------------------------------------------------

/// An in-memory socket for tungstenite: reads come from `input`, writes (frames we ask it to
/// send, and the pongs and close replies it queues by itself) go to `output`.
#[derive(Debug)]
struct MemSocket {
    input: io::Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl MemSocket {
    fn new(input: Vec<u8>) -> Self {
        Self {
            input: io::Cursor::new(input),
            output: Vec::new(),
        }
    }
}

impl Read for MemSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for MemSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite with the same generous limit as our decoder (its defaults are 64 MiB messages and
/// 16 MiB frames), writing every frame straight through. A finite limit matters: a wrong length
/// in a frame header must fail the property, not abort the process in a huge allocation.
fn t_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX))
        .max_frame_size(Some(MAX))
        .write_buffer_size(0)
}

/// What tungstenite read from a byte stream: its messages, then `None` when the input ended
/// cleanly (between frames or after a close), or the error it refused the stream with.
#[derive(Debug, PartialEq, Eq)]
struct TheirsRead {
    msgs: Vec<Msg>,
    error: Option<String>,
}

fn read_tungstenite(role: TRole, config: WebSocketConfig, wire: Vec<u8>) -> TheirsRead {
    let mut ws = WebSocket::from_raw_socket(MemSocket::new(wire), role, Some(config));
    let mut msgs = Vec::new();
    loop {
        match ws.read() {
            Ok(message) => msgs.push(from_tungstenite(message)),
            // The input ran out with no close (tungstenite calls that a reset), or it ended after
            // a close: either way, not a refusal.
            Err(
                TError::ConnectionClosed
                | TError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            ) => return TheirsRead { msgs, error: None },
            Err(e) => {
                return TheirsRead {
                    msgs,
                    error: Some(e.to_string()),
                }
            }
        }
    }
}

/// A tungstenite endpoint in `role` that writes into memory.
fn t_writer(role: TRole) -> WebSocket<MemSocket> {
    WebSocket::from_raw_socket(MemSocket::new(Vec::new()), role, Some(t_config()))
}

fn t_send(ws: &mut WebSocket<MemSocket>, message: TMessage) {
    ws.send(message).expect("tungstenite writes into memory");
}

/// Sends one raw frame; tungstenite masks it when it is the client.
fn t_send_frame(ws: &mut WebSocket<MemSocket>, frame: Frame) {
    t_send(ws, TMessage::Frame(frame));
}

fn t_written(ws: WebSocket<MemSocket>) -> Vec<u8> {
    ws.into_inner().output
}

/// What our decoder made of a byte stream fed in chunks: its messages, then the number of bytes
/// left undecoded at the end, or its error.
#[derive(Debug, PartialEq, Eq)]
struct OursRead {
    msgs: Vec<Msg>,
    outcome: Result<usize, WsError>,
}

/// Feeds `wire` to a fresh decoder as a driver would: chunks end at `cuts` (sorted), each appended
/// to the unconsumed rest, then decoded until "need more". Checks on the way that "need more"
/// leaves the input untouched, as the decoder promises.
fn decode_ours(role: Role, max: usize, wire: &[u8], cuts: &[usize]) -> OursRead {
    let mut decoder = Decoder::new(role, max);
    let mut buf: Vec<u8> = Vec::new();
    let mut msgs = Vec::new();
    let mut from = 0;
    for end in cuts.iter().copied().chain([wire.len()]) {
        buf.extend_from_slice(&wire[from..end]);
        from = end;
        let mut start = 0;
        loop {
            let before = buf[start..].to_vec();
            let (consumed, message) = match decoder.decode(&mut buf[start..]) {
                Ok(decoded) => (decoded.consumed, decoded.message.map(from_ours)),
                Err(e) => {
                    return OursRead {
                        msgs,
                        outcome: Err(e),
                    }
                }
            };
            if consumed == 0 && message.is_none() {
                assert_eq!(
                    buf[start..],
                    before[..],
                    "need more must not touch the input"
                );
                break;
            }
            msgs.extend(message);
            start += consumed;
        }
        buf.drain(..start);
    }
    OursRead {
        msgs,
        outcome: Ok(buf.len()),
    }
}

/// Sorted cut points into `len` bytes.
fn cut_points(cuts: &[Index], len: usize) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
    points.sort_unstable();
    points
}

// ---------------------------------------------------------------------------------------------
// Writing with tungstenite, fragments included.
// ---------------------------------------------------------------------------------------------

/// One thing for tungstenite to write.
#[derive(Debug, Clone)]
enum Item {
    /// A whole message (for data messages: one frame).
    Whole(Msg),
    /// A text or binary message cut at `cuts` (byte offsets, duplicates giving empty fragments;
    /// no cut: one frame), with `interleaved[i]` (a ping or pong) sent after fragment `i`.
    Fragmented {
        msg: Msg,
        cuts: Vec<Index>,
        interleaved: Vec<Msg>,
    },
}

/// Writes `items`, then `close`, as a tungstenite endpoint in `role`; returns the bytes and the
/// messages a reader must see, in order (interleaved control messages before the data message
/// they interrupt).
fn write_tungstenite(role: TRole, items: &[Item], close: Option<&Msg>) -> (Vec<u8>, Vec<Msg>) {
    let mut ws = t_writer(role);
    let mut expected = Vec::new();
    for item in items {
        match item {
            Item::Whole(msg) => {
                t_send(&mut ws, to_tungstenite(msg));
                expected.push(msg.clone());
            }
            Item::Fragmented {
                msg,
                cuts,
                interleaved,
            } => {
                let (payload, opcode) = match msg {
                    Msg::Text(text) => (text.as_bytes(), OpData::Text),
                    Msg::Binary(bytes) => (bytes.as_slice(), OpData::Binary),
                    other => unreachable!("only data messages are fragmented, not {other:?}"),
                };
                let mut bounds = vec![0];
                bounds.extend(cut_points(cuts, payload.len()));
                bounds.push(payload.len());
                let fragments = bounds.len() - 1;
                for (i, pair) in bounds.windows(2).enumerate() {
                    let op = if i == 0 { opcode } else { OpData::Continue };
                    let fin = i + 1 == fragments;
                    let part = Bytes::copy_from_slice(&payload[pair[0]..pair[1]]);
                    t_send_frame(&mut ws, Frame::message(part, OpCode::Data(op), fin));
                    if let (false, Some(control)) = (fin, interleaved.get(i)) {
                        t_send(&mut ws, to_tungstenite(control));
                        expected.push(control.clone());
                    }
                }
                expected.push(msg.clone());
            }
        }
    }
    if let Some(close) = close {
        t_send(&mut ws, to_tungstenite(close));
        expected.push(close.clone());
    }
    (t_written(ws), expected)
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Server)]
}

/// Any Unicode scalar value (1 to 4 bytes of UTF-8), with printable ASCII mixed in.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![2 => any::<char>(), 1 => proptest::char::range(' ', '~')]
}

fn text_of(chars: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    vec(any_char(), chars).prop_map(String::from_iter)
}

/// Text in every length encoding: 7-bit, 16-bit (126 to 65535 bytes) and 64-bit.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => text_of(0..40),
        3 => text_of(40..400),
        1 => (text_of(1..16), 0usize..64).prop_map(|(unit, extra)| {
            unit.repeat((0xFFFF / unit.len()) + 1 + extra)
        }),
    ]
}

/// `len` bytes of xorshift64 from `seed`: big payloads without a big proptest vector.
fn filled((len, seed): (usize, u64)) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Binary in every length encoding, with the 125/126 and 65535/65536 boundaries covered.
fn binary() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..300),
        1 => (0xFFF8usize..0x1_0008, any::<u64>()).prop_map(filled),
        1 => (0x1_0008usize..80_000, any::<u64>()).prop_map(filled),
    ]
}

fn data_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![text().prop_map(Msg::Text), binary().prop_map(Msg::Binary)]
}

/// Small data messages, for byte-at-a-time feeding and size limits.
fn small_data_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        text_of(0..100).prop_map(Msg::Text),
        vec(any::<u8>(), 0..400).prop_map(Msg::Binary),
    ]
}

/// A ping or pong; control payloads are at most 125 bytes (RFC 6455 5.5).
fn ping_pong() -> impl Strategy<Value = Msg> {
    let payload = || vec(any::<u8>(), 0..=MAX_CONTROL);
    prop_oneof![payload().prop_map(Msg::Ping), payload().prop_map(Msg::Pong)]
}

/// The close codes that may be sent (RFC 6455 7.4.1 and the IANA registry), except 1014: we
/// accept 1014 (Bad Gateway, registered with IANA after RFC 6455), tungstenite 0.28 has no
/// variant for it and treats it as a bad code (answering 1002). RFC 6455 7.4.2 leaves 1000-2999
/// to the protocol and its registry, so both readings are defensible; the generators avoid it.
fn sendable_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        proptest::sample::select(vec![
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013
        ]),
        3000u16..=4999,
    ]
}

fn is_sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close reason that fits a close frame (at most 123 bytes).
fn fitting_reason() -> impl Strategy<Value = String> {
    text_of(0..50).prop_map(|reason| fit_close_reason(&reason))
}

/// A close for tungstenite to send: with or without a code.
fn t_close() -> impl Strategy<Value = Msg> {
    prop_oneof![
        1 => Just(Msg::Close(None)),
        4 => (sendable_code(), fitting_reason()).prop_map(|c| Msg::Close(Some(c))),
    ]
}

fn item(data: BoxedStrategy<Msg>) -> impl Strategy<Value = Item> {
    prop_oneof![
        1 => ping_pong().prop_map(Item::Whole),
        1 => data.clone().prop_map(Item::Whole),
        3 => (data, vec(any::<Index>(), 0..5), vec(ping_pong(), 0..3)).prop_map(
            |(msg, cuts, interleaved)| Item::Fragmented { msg, cuts, interleaved }
        ),
    ]
}

/// A message size limit for both decoders.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The message's length plus this: the boundary, where an off-by-one would show.
    Near(isize),
    /// Any limit.
    Absolute(usize),
}

/// Bytes that are not UTF-8: a known bad sequence (or random bytes) between valid text.
fn invalid_utf8() -> impl Strategy<Value = Vec<u8>> {
    let bad = prop_oneof![
        Just(vec![0xFF]),
        Just(vec![0x80]),                   // a lone continuation byte
        Just(vec![0xC0, 0xAF]),             // an overlong '/'
        Just(vec![0xED, 0xA0, 0x80]),       // a UTF-16 surrogate
        Just(vec![0xF4, 0x90, 0x80, 0x80]), // past U+10FFFF
        Just(vec![0xE5, 0xB1]),             // a truncated '山'
        vec(any::<u8>(), 1..16),
    ];
    (text_of(0..20), bad, text_of(0..20))
        .prop_map(|(head, bad, tail)| [head.as_bytes(), &bad, tail.as_bytes()].concat())
        .prop_filter("must not be UTF-8", |b| std::str::from_utf8(b).is_err())
}

// ---------------------------------------------------------------------------------------------
// Violations, for refusal parity.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Violation {
    /// Frames masked the way the reader itself would send them: masked to a client, plain to a
    /// server (encoded by our encoder in the reader's role).
    WrongMasking(Msg),
    /// A ping, pong (`opcode` 9, 10) or close (8, with a valid code) of 126 or more bytes.
    LongControl { opcode: u8, len: usize },
    /// A control frame without FIN.
    FragmentedControl { opcode: u8 },
    /// A text message that is not UTF-8, cut into fragments at `cuts`.
    BadUtf8Text { payload: Vec<u8>, cuts: Vec<Index> },
    /// A close reason that is not UTF-8.
    BadUtf8Reason { code: u16, reason: Vec<u8> },
    /// A close payload of one byte (half a code).
    OneByteClose(u8),
    /// A binary frame with some of RSV1-3 set (`bits` in 1..=7) and no extension negotiated.
    ReservedBits { bits: u8 },
    /// A frame with a reserved opcode (3-7, 11-15).
    ReservedOpcode(u8),
    /// A continuation with no message open.
    OrphanContinuation { fin: bool },
    /// A new data frame while a fragmented message is open.
    NestedData { first: OpData, second: OpData },
}

fn violation() -> impl Strategy<Value = Violation> {
    let control_op = || prop_oneof![Just(0x8u8), Just(0x9), Just(0xA)];
    let data_op = || prop_oneof![Just(OpData::Text), Just(OpData::Binary)];
    let direction1 = prop_oneof![
        3 => prop_oneof![text_of(0..40).prop_map(Msg::Text), vec(any::<u8>(), 0..300).prop_map(Msg::Binary)],
        1 => ping_pong(),
        1 => (sendable_code(), fitting_reason()).prop_map(|c| Msg::Close(Some(c))),
    ];
    prop_oneof![
        direction1.prop_map(Violation::WrongMasking),
        (control_op(), 126usize..400)
            .prop_map(|(opcode, len)| Violation::LongControl { opcode, len }),
        control_op().prop_map(|opcode| Violation::FragmentedControl { opcode }),
        (invalid_utf8(), vec(any::<Index>(), 0..4))
            .prop_map(|(payload, cuts)| Violation::BadUtf8Text { payload, cuts }),
        (sendable_code(), invalid_utf8())
            .prop_filter("fits a control frame", |(_, r)| r.len() <= MAX_CLOSE_REASON)
            .prop_map(|(code, reason)| Violation::BadUtf8Reason { code, reason }),
        any::<u8>().prop_map(Violation::OneByteClose),
        (1u8..=7).prop_map(|bits| Violation::ReservedBits { bits }),
        prop_oneof![3u8..=7, 11u8..=15].prop_map(Violation::ReservedOpcode),
        any::<bool>().prop_map(|fin| Violation::OrphanContinuation { fin }),
        (data_op(), data_op()).prop_map(|(first, second)| Violation::NestedData { first, second }),
    ]
}

/// A frame with any opcode (reserved ones included), built from a tungstenite header.
fn raw_frame(opcode: u8, payload: Vec<u8>, fin: bool) -> Frame {
    let header = FrameHeader {
        is_final: fin,
        opcode: OpCode::from(opcode),
        ..FrameHeader::default()
    };
    Frame::from_payload(header, Bytes::from(payload))
}

/// The bytes of `violation` as they would reach a `reader`: written by a tungstenite peer (so
/// masked when the reader is a server), except wrong masking, written by our encoder.
fn violation_bytes(reader: Role, violation: &Violation) -> Vec<u8> {
    let mut ws = t_writer(t_role(peer(reader)));
    match violation {
        Violation::WrongMasking(msg) => {
            let mut out = Vec::new();
            encode_ours(&mut Encoder::new(reader), &mut out, msg);
            return out;
        }
        Violation::LongControl { opcode, len } => {
            let payload = if *opcode == 0x8 {
                [&1000u16.to_be_bytes()[..], &vec![b'x'; len - 2]].concat()
            } else {
                filled((*len, *len as u64))
            };
            t_send_frame(&mut ws, raw_frame(*opcode, payload, true));
        }
        Violation::FragmentedControl { opcode } => {
            let payload = if *opcode == 0x8 {
                1000u16.to_be_bytes().to_vec()
            } else {
                b"hi".to_vec()
            };
            t_send_frame(&mut ws, raw_frame(*opcode, payload, false));
        }
        Violation::BadUtf8Text { payload, cuts } => {
            let mut bounds = vec![0];
            bounds.extend(cut_points(cuts, payload.len()));
            bounds.push(payload.len());
            let last = bounds.len() - 2;
            for (i, pair) in bounds.windows(2).enumerate() {
                let op = if i == 0 {
                    OpData::Text
                } else {
                    OpData::Continue
                };
                let part = Bytes::copy_from_slice(&payload[pair[0]..pair[1]]);
                t_send_frame(&mut ws, Frame::message(part, OpCode::Data(op), i == last));
            }
        }
        Violation::BadUtf8Reason { code, reason } => {
            let payload = [&code.to_be_bytes()[..], reason].concat();
            t_send_frame(&mut ws, raw_frame(0x8, payload, true));
        }
        Violation::OneByteClose(byte) => {
            t_send_frame(&mut ws, raw_frame(0x8, vec![*byte], true));
        }
        Violation::ReservedBits { bits } => {
            let mut frame = Frame::message(
                Bytes::from_static(b"abc"),
                OpCode::Data(OpData::Binary),
                true,
            );
            let header = frame.header_mut();
            header.rsv1 = bits & 4 != 0;
            header.rsv2 = bits & 2 != 0;
            header.rsv3 = bits & 1 != 0;
            t_send_frame(&mut ws, frame);
        }
        Violation::ReservedOpcode(opcode) => {
            t_send_frame(&mut ws, raw_frame(*opcode, b"abc".to_vec(), true));
        }
        Violation::OrphanContinuation { fin } => {
            let frame = Frame::message(
                Bytes::from_static(b"abc"),
                OpCode::Data(OpData::Continue),
                *fin,
            );
            t_send_frame(&mut ws, frame);
        }
        Violation::NestedData { first, second } => {
            let open = Frame::message(Bytes::from_static(b"ab"), OpCode::Data(*first), false);
            t_send_frame(&mut ws, open);
            let nested = Frame::message(Bytes::from_static(b"cd"), OpCode::Data(*second), true);
            t_send_frame(&mut ws, nested);
        }
    }
    t_written(ws)
}

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Direction 1: what our encoder writes, tungstenite (the other end) reads back unchanged.
    #[test]
    fn tungstenite_reads_what_we_encode(
        ours in role(),
        msgs in vec(prop_oneof![3 => data_msg(), 1 => ping_pong()], 0..6),
        close in proptest::option::of((sendable_code(), text_of(0..60))),
    ) {
        let mut encoder = Encoder::new(ours);
        let mut wire = Vec::new();
        let mut expected = msgs.clone();
        for msg in &msgs {
            encode_ours(&mut encoder, &mut wire, msg);
        }
        if let Some((code, reason)) = close {
            // Reasons past 123 bytes are cut at a character boundary by the encoder.
            encoder.close(&mut wire, code, &reason);
            expected.push(Msg::Close(Some((code, fit_close_reason(&reason)))));
        }
        let theirs = read_tungstenite(t_role(peer(ours)), t_config(), wire);
        prop_assert_eq!(theirs, TheirsRead { msgs: expected, error: None });
    }

    /// Direction 1, bytes: a server's frames are exactly tungstenite's (plain, shortest length
    /// encoding); a client's differ only in the masking key and the masked payload.
    #[test]
    fn our_frames_match_tungstenite_byte_for_byte(
        ours in role(),
        msg in prop_oneof![
            3 => data_msg(),
            1 => ping_pong(),
            1 => (sendable_code(), fitting_reason()).prop_map(|c| Msg::Close(Some(c))),
        ],
    ) {
        let mut mine = Vec::new();
        encode_ours(&mut Encoder::new(ours), &mut mine, &msg);
        let (theirs, _) = write_tungstenite(t_role(ours), &[Item::Whole(msg.clone())], None);
        match ours {
            Role::Server => prop_assert_eq!(mine, theirs),
            Role::Client => {
                let payload_len = match &msg {
                    Msg::Text(text) => text.len(),
                    Msg::Binary(b) | Msg::Ping(b) | Msg::Pong(b) => b.len(),
                    Msg::Close(Some((_, reason))) => 2 + reason.len(),
                    Msg::Close(None) => 0,
                };
                let extended = match payload_len {
                    0..=125 => 0,
                    126..=0xFFFF => 2,
                    _ => 8,
                };
                let before_key = 2 + extended;
                prop_assert_eq!(mine.len(), before_key + 4 + payload_len);
                prop_assert_eq!(mine.len(), theirs.len());
                prop_assert_eq!(&mine[..before_key], &theirs[..before_key]);
                prop_assert!(mine[1] & 0x80 != 0, "client frames are masked");
            }
        }
    }

    /// Direction 2: what tungstenite writes (fragmented, with control frames between fragments),
    /// fed to our decoder in random chunks, decodes to the same messages with nothing left over.
    #[test]
    fn we_decode_what_tungstenite_writes(
        ours in role(),
        items in vec(item(data_msg().boxed()), 0..6),
        close in proptest::option::of(t_close()),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let (wire, expected) = write_tungstenite(t_role(peer(ours)), &items, close.as_ref());
        let decoded = decode_ours(ours, MAX, &wire, &cut_points(&cuts, wire.len()));
        prop_assert_eq!(decoded, OursRead { msgs: expected, outcome: Ok(0) });
    }

    /// Direction 2, one byte at a time: every split point of every frame header and payload.
    #[test]
    fn we_decode_what_tungstenite_writes_byte_by_byte(
        ours in role(),
        items in vec(item(small_data_msg().boxed()), 0..4),
        close in proptest::option::of(t_close()),
    ) {
        let (wire, expected) = write_tungstenite(t_role(peer(ours)), &items, close.as_ref());
        let every_byte: Vec<usize> = (1..wire.len()).collect();
        let decoded = decode_ours(ours, MAX, &wire, &every_byte);
        prop_assert_eq!(decoded, OursRead { msgs: expected, outcome: Ok(0) });
    }

    /// Refusal parity: after the same valid prefix, both refuse a protocol violation.
    #[test]
    fn both_refuse_protocol_violations(
        reader in role(),
        prefix in vec(prop_oneof![small_data_msg(), ping_pong()], 0..3),
        violation in violation(),
        cuts in vec(any::<Index>(), 0..4),
    ) {
        let items: Vec<Item> = prefix.iter().cloned().map(Item::Whole).collect();
        let (mut wire, expected) = write_tungstenite(t_role(peer(reader)), &items, None);
        wire.extend(violation_bytes(reader, &violation));

        let decoded = decode_ours(reader, MAX, &wire, &cut_points(&cuts, wire.len()));
        prop_assert_eq!(&decoded.msgs, &expected);
        prop_assert!(decoded.outcome.is_err(), "we accepted {:?}: {:?}", violation, decoded);

        let theirs = read_tungstenite(t_role(reader), t_config(), wire);
        prop_assert_eq!(&theirs.msgs, &expected);
        prop_assert!(theirs.error.is_some(), "tungstenite accepted {:?}: {:?}", violation, theirs);
    }

    /// Close codes that may not be sent: we refuse the frame with 1002; tungstenite reports the
    /// close as a 1002 (the code it answers with) instead of the code on the wire.
    #[test]
    fn both_answer_unsendable_close_codes_with_1002(
        reader in role(),
        code in prop_oneof![any::<u16>(), 0u16..3100]
            .prop_filter("unsendable, and not 1014 (see sendable_code)", |&c| !is_sendable(c)),
        reason in fitting_reason(),
    ) {
        let mut ws = t_writer(t_role(peer(reader)));
        let payload = [&code.to_be_bytes()[..], reason.as_bytes()].concat();
        t_send_frame(&mut ws, raw_frame(0x8, payload, true));
        let wire = t_written(ws);

        let decoded = decode_ours(reader, MAX, &wire, &[]);
        prop_assert_eq!(decoded.outcome.map_err(|e| e.close_code()), Err(1002));

        let theirs = read_tungstenite(t_role(reader), t_config(), wire);
        match (theirs.msgs.as_slice(), &theirs.error) {
            ([Msg::Close(Some((1002, _)))], _) | ([], Some(_)) => {}
            other => prop_assert!(false, "tungstenite took close code {}: {:?}", code, other),
        }
    }

    /// Size limits: with the same limit, both accept exactly the messages of at most that many
    /// bytes, whole or fragmented; interleaved control frames do not count.
    #[test]
    fn both_enforce_the_same_message_size_limit(
        reader in role(),
        limit in prop_oneof![
            (-2isize..=2).prop_map(Limit::Near),
            (0usize..300).prop_map(Limit::Absolute),
        ],
        msg in small_data_msg(),
        cuts in vec(any::<Index>(), 0..4),
        interleaved in vec(ping_pong(), 0..3),
    ) {
        let len = match &msg {
            Msg::Text(text) => text.len(),
            Msg::Binary(bytes) => bytes.len(),
            _ => unreachable!(),
        };
        let limit = match limit {
            Limit::Near(offset) => len.saturating_add_signed(offset),
            Limit::Absolute(limit) => limit,
        };
        let item = Item::Fragmented { msg, cuts, interleaved };
        let (wire, _) = write_tungstenite(t_role(peer(reader)), &[item], None);
        let fits = len <= limit;

        let decoded = decode_ours(reader, limit, &wire, &[]);
        prop_assert_eq!(decoded.outcome.is_ok(), fits, "ours, {} bytes, limit {}", len, limit);
        if !fits {
            prop_assert_eq!(decoded.outcome.map_err(|e| e.close_code()), Err(1009));
        }

        let config = t_config().max_message_size(Some(limit));
        let theirs = read_tungstenite(t_role(reader), config, wire);
        prop_assert_eq!(theirs.error.is_none(), fits, "tungstenite, {} bytes, limit {}", len, limit);
    }
}
