//! An allocation-free scanner for the small, flat JSON objects of the audio hot path.
//!
//! Most frames on a call are audio: Twilio's `media` event and OpenAI's
//! `response.output_audio.delta`. Both are a top-level object of plain strings and counters, at
//! most one level deep. [`scan`] reads exactly that subset in one pass, with no allocation, and
//! records every field into a caller-provided [`FlatObject`]. It answers `false` for anything
//! outside the subset; the caller then hands the frame to a full JSON parser (simd-json). So the
//! scanner may decline valid JSON, but it must never accept text that is not valid JSON, and what
//! it records must be what a full parser would read.
//!
//! # The accepted subset
//!
//! ```text
//! document = ws object ws                       (nothing after it but JSON whitespace)
//! object   = "{" [ member *( "," member ) ] "}"
//! member   = ws string ws ":" ws value ws
//! value    = string                             (no backslash escapes)
//!          | uint                               (0 or [1-9][0-9]*, fits in u64; no sign, fraction, exponent)
//!          | object                             (top level only: one level of nesting)
//! ```
//!
//! Declined (the scanner returns `false`): escapes, arrays, `true`/`false`/`null`, negative or
//! fractional numbers, numbers above `u64::MAX`, deeper nesting, a duplicate key in the same
//! object, more than [`MAX_FIELDS`] recorded fields, trailing bytes other than whitespace, invalid
//! UTF-8 or raw control characters inside strings, and of course anything that is not JSON.
//!
//! # What is recorded
//!
//! One [`FlatField`] per member, in document order: `parent` is `None` for a top-level member and
//! `Some(key)` for a member of the nested object under `key`. A nested object itself is recorded
//! as a field with [`FlatValue::Object`] before its members, so `"media":{}` is distinguishable
//! from a missing `media`, and duplicate top-level keys are caught whatever their values.

use memchr::memchr2;

/// How many fields (nested objects and their members included) one object may have.
///
/// Twilio's `media` event has 9 (`event`, `sequenceNumber`, `media`, its four members,
/// `streamSid`, and room for one unknown field); OpenAI's audio delta has 7. 16 leaves headroom
/// for fields the vendors add later, while keeping the slot array (16 × 48 bytes) cheap to put on
/// the stack and the duplicate-key check (quadratic in the field count) trivial. Frames with more
/// fields go to the full parser.
pub const MAX_FIELDS: usize = 16;

/// Where a scanned string sits in its frame, so a parser can scan and build in two phases: the
/// scan borrows the frame only briefly and keeps spans; only if the fast path answers does the
/// parser give up its mutable borrow (simd-json would need it) and turn the spans back into
/// `&str`s of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span(std::ops::Range<usize>);

impl Span {
    /// The bytes `start..end` of a frame whose text there the caller has checked as UTF-8.
    pub fn new(start: usize, end: usize) -> Span {
        Span(start..end)
    }

    /// The span of `part`, a string [`scan`] handed out from `frame`.
    pub fn of(frame: &[u8], part: &str) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
        Span(start..start + part.len())
    }

    /// The text of the span in `frame` (the scan checked it as UTF-8; `None` only when `frame`
    /// is not the frame that was scanned).
    pub fn text<'a>(&self, frame: &'a [u8]) -> Option<&'a str> {
        frame
            .get(self.0.clone())
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
    }
}

/// The value of one recorded field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlatValue<'a> {
    /// A string without escapes, borrowed from the input (checked UTF-8).
    Str(&'a str),
    /// A non-negative integer that fits in `u64`.
    UInt(u64),
    /// A nested object; its members follow as fields whose `parent` is this field's key.
    Object,
}

/// One member of the scanned object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatField<'a> {
    /// The key of the enclosing nested object, or `None` for a top-level member.
    pub parent: Option<&'a str>,
    /// The member's key.
    pub key: &'a str,
    /// The member's value.
    pub value: FlatValue<'a>,
}

/// The fields of one scanned object, in document order; filled by [`scan`].
///
/// Fixed arrays of [`MAX_FIELDS`] slots: create one on the stack per frame, it owns no heap
/// memory.
#[derive(Debug, Clone)]
pub struct FlatObject<'a> {
    /// Recorded fields; `fields[..len]` are `Some`. (`Option` rather than a placeholder value
    /// because an array of `None` is initialised with one store per slot, where a placeholder
    /// holding a `&str` is copied in from a template: that copy cost more than the whole scan
    /// of a typical frame.)
    fields: [Option<FlatField<'a>>; MAX_FIELDS],
    /// A cheap fingerprint of each field's parent and key, so that lookups and the duplicate
    /// check compare two integers instead of calling `memcmp` for every pair of keys.
    tags: [KeyTag; MAX_FIELDS],
    /// How many slots are filled.
    len: usize,
}

/// Fingerprint of a (parent, key) pair: equal pairs have equal tags; keys longer than
/// [`KeyTag::PREFIX`] bytes must still be compared in full when tags match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyTag {
    /// The key's first [`KeyTag::PREFIX`] bytes, zero-padded (keys never hold a raw NUL).
    prefix: u64,
    /// The key's length in the high bits; the parent's slot + 1 (0 for top level) in the low
    /// 8 bits.
    meta: u64,
}

impl KeyTag {
    /// Bytes of the key kept in the tag.
    const PREFIX: usize = 8;

    /// The tag of `key` under the parent coded `parent` (slot + 1, or 0 for top level).
    fn new(parent: usize, key: &str) -> KeyTag {
        let bytes = key.as_bytes();
        // One load for long keys; a shift loop for short ones (a variable-length copy into a
        // byte array would become a `memcpy` call, which costs more than the whole lookup).
        let prefix = match bytes.first_chunk::<{ Self::PREFIX }>() {
            Some(head) => u64::from_le_bytes(*head),
            None => bytes
                .iter()
                .enumerate()
                .fold(0u64, |acc, (i, &b)| acc | (u64::from(b) << (8 * i))),
        };
        KeyTag {
            prefix,
            meta: ((bytes.len() as u64) << 8) | parent as u64,
        }
    }

    /// Placeholder for unused slots (never equal to a real tag: real keys of length 0 have
    /// prefix 0 too, but unused slots are never compared).
    const EMPTY: KeyTag = KeyTag { prefix: 0, meta: 0 };
}

/// Parent code of top-level fields.
const TOP: usize = 0;

impl Default for FlatObject<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> FlatObject<'a> {
    /// An empty object.
    pub fn new() -> Self {
        FlatObject {
            fields: [None; MAX_FIELDS],
            tags: [KeyTag::EMPTY; MAX_FIELDS],
            len: 0,
        }
    }

    /// The recorded fields, in document order.
    pub fn fields(&self) -> impl Iterator<Item = FlatField<'a>> + '_ {
        self.fields[..self.len].iter().flatten().copied()
    }

    /// How many fields were recorded.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the object has no fields.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of the field `key` under `parent` (`None` for top level), if present.
    pub fn get(&self, parent: Option<&str>, key: &str) -> Option<FlatValue<'a>> {
        let parent = match parent {
            None => TOP,
            Some(p) => self.find(TOP, p)? + 1,
        };
        self.fields[self.find(parent, key)?].map(|f| f.value)
    }

    /// The slot of `key` under the parent coded `parent`.
    fn find(&self, parent: usize, key: &str) -> Option<usize> {
        let tag = KeyTag::new(parent, key);
        (0..self.len).find(|&i| {
            self.tags[i] == tag
                && (key.len() <= KeyTag::PREFIX || self.fields[i].is_some_and(|f| f.key == key))
        })
    }

    /// Records a field under the parent coded `parent` and returns its slot; `None` when the
    /// object is full or the key repeats within its parent.
    fn push(&mut self, parent: usize, field: FlatField<'a>) -> Option<usize> {
        if self.len == MAX_FIELDS || self.find(parent, field.key).is_some() {
            return None;
        }
        let slot = self.len;
        self.tags[slot] = KeyTag::new(parent, field.key);
        self.fields[slot] = Some(field);
        self.len += 1;
        Some(slot)
    }
}

/// Scans `input` into `out` (cleared first). Returns `false`, leaving `out` unspecified, when
/// `input` is not exactly one object of the accepted subset (see the module doc).
#[must_use]
pub fn scan<'a>(input: &'a [u8], out: &mut FlatObject<'a>) -> bool {
    out.len = 0;
    // One UTF-8 check of the whole input (invalid UTF-8 anywhere is not JSON) instead of one
    // per string; strings are then sliced out of the checked text.
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let mut scanner = Scanner { text, pos: 0 };
    scanner.document(out).is_some()
}

/// Bytes of a string examined word by word before switching to `memchr`: most keys and short
/// values end within them, and `memchr`'s setup costs more than the whole search on those.
const SHORT_STRING: usize = 32;

/// Bytes per block of [`has_control_char`]'s vectorizable loop (one AVX2 register).
const BLOCK: usize = 32;

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_le_bytes([0x01; 8]);

/// `0x80` in every byte of a word.
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// The index of the first byte of `bytes` that is a quote, a backslash or a control character
/// (below 0x20): where a string without escapes must end. `None` when there is none.
fn first_special(bytes: &[u8]) -> Option<usize> {
    let short = &bytes[..bytes.len().min(SHORT_STRING)];
    let mut words = short.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let mask = special_mask(u64::from_le_bytes(word.try_into().ok()?));
        if mask != 0 {
            return Some(offset + mask.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    if let Some(i) = words.remainder().iter().position(|&b| is_special(b)) {
        return Some(offset + i);
    }
    if bytes.len() <= SHORT_STRING {
        return None;
    }
    // A long string (the base64 payload): memchr finds the quote at SIMD speed, then one
    // vectorized pass checks there was no control character before it.
    let long = &bytes[SHORT_STRING..];
    let end = memchr2(b'"', b'\\', long).unwrap_or(long.len());
    if has_control_char(&long[..end]) {
        return long
            .iter()
            .position(|&b| b < 0x20)
            .map(|i| SHORT_STRING + i);
    }
    (end < long.len()).then_some(SHORT_STRING + end)
}

/// Whether `b` can end (or spoil) a string without escapes.
fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// A word whose lowest set bit lies in the first byte of `word` (little-endian) that is a
/// quote, a backslash or a control character; 0 when there is none.
///
/// The classic "has zero byte" trick, `(x - 0x01..) & !x & 0x80..`, applied to `word ^ '"'`,
/// `word ^ '\\'` and (as "has byte less than 0x20") to `word`. Its false positives only occur
/// above a true one, so the lowest set bit is exact.
fn special_mask(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x;
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (zero_in(quote) | zero_in(backslash) | control) & HIGHS
}

/// True when `bytes` holds a raw control character (below U+0020), which JSON strings may not.
///
/// Accumulates without early exit over fixed-size blocks so the compiler vectorizes it.
fn has_control_char(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(BLOCK);
    let mut bad = 0u8;
    for block in &mut blocks {
        let mut block_bad = 0u8;
        for &b in block {
            block_bad |= u8::from(b < 0x20);
        }
        bad |= block_bad;
    }
    for &b in blocks.remainder() {
        bad |= u8::from(b < 0x20);
    }
    bad != 0
}

/// Cursor over the input. Every method returns `None` as soon as the input leaves the subset.
struct Scanner<'a> {
    /// The whole document, already checked to be UTF-8.
    text: &'a str,
    /// The next byte to read.
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// `ws object ws` and the end of input.
    fn document(&mut self, out: &mut FlatObject<'a>) -> Option<()> {
        self.skip_ws();
        self.object(None, out)?;
        self.skip_ws();
        (self.pos == self.text.len()).then_some(())
    }

    /// An object whose members are recorded under `parent` (its key and slot). A nested
    /// object is only allowed when `parent` is `None`.
    fn object(&mut self, parent: Option<(&'a str, usize)>, out: &mut FlatObject<'a>) -> Option<()> {
        let parent_key = parent.map(|(key, _)| key);
        let parent_code = parent.map_or(TOP, |(_, slot)| slot + 1);
        self.expect(b'{')?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.skip_ws();
            self.expect(b'"')?;
            let key = self.string_body()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let field = |value| FlatField {
                parent: parent_key,
                key,
                value,
            };
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    let value = FlatValue::Str(self.string_body()?);
                    out.push(parent_code, field(value))?;
                }
                b'0'..=b'9' => {
                    let value = FlatValue::UInt(self.uint()?);
                    out.push(parent_code, field(value))?;
                }
                b'{' if parent.is_none() => {
                    let slot = out.push(parent_code, field(FlatValue::Object))?;
                    self.object(Some((key, slot)), out)?;
                }
                _ => return None,
            }
            self.skip_ws();
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The rest of a string after its opening quote, up to and including the closing quote.
    /// Declines escapes and raw control characters.
    fn string_body(&mut self) -> Option<&'a str> {
        let rest = &self.text.as_bytes()[self.pos..];
        // Without escapes the string ends at the first quote, and must hold no backslash or
        // control character before it: find the first byte that is any of those.
        let end = first_special(rest)?;
        if rest[end] != b'"' {
            return None;
        }
        // Both ends are ASCII quotes, hence character boundaries: `get` cannot fail.
        let text = self.text.get(self.pos..self.pos + end)?;
        self.pos += end + 1;
        Some(text)
    }

    /// A JSON integer without sign, fraction or exponent that fits in `u64`.
    fn uint(&mut self) -> Option<u64> {
        let rest = &self.text.as_bytes()[self.pos..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let text = &rest[..digits];
        if text.len() > 1 && text[0] == b'0' {
            return None; // a leading zero is not JSON
        }
        let mut value: u64 = 0;
        for &d in text {
            value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.pos += digits;
        match self.peek() {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(value),
        }
    }

    /// Skips JSON whitespace (space, tab, LF, CR; nothing else).
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The next byte, without consuming it.
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Consumes and returns the next byte.
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// Consumes `want` or declines.
    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn scanned(text: &str) -> Option<Vec<FlatField<'_>>> {
        let mut obj = FlatObject::new();
        scan(text.as_bytes(), &mut obj).then(|| obj.fields().collect())
    }

    fn top<'a>(key: &'a str, value: FlatValue<'a>) -> FlatField<'a> {
        FlatField {
            parent: None,
            key,
            value,
        }
    }

    #[test]
    fn records_a_twilio_media_event_in_document_order() {
        let text = r#"{"event":"media","sequenceNumber":"5","media":{"track":"inbound","chunk":"4","timestamp":"80","payload":"/////w=="},"streamSid":"MZ1"}"#;
        let mut obj = FlatObject::new();
        assert!(scan(text.as_bytes(), &mut obj));
        let fields: Vec<_> = obj.fields().collect();
        assert_eq!(obj.len(), 8);
        assert_eq!(fields.len(), 8);
        assert_eq!(fields[0], top("event", FlatValue::Str("media")));
        assert_eq!(fields[2], top("media", FlatValue::Object));
        assert_eq!(
            obj.get(Some("media"), "payload"),
            Some(FlatValue::Str("/////w=="))
        );
        assert_eq!(obj.get(None, "payload"), None);
        assert_eq!(obj.get(None, "streamSid"), Some(FlatValue::Str("MZ1")));
    }

    #[test]
    fn records_integers_whitespace_and_empty_objects() {
        let text = " {\n\t\"a\" : 0 , \"b\":18446744073709551615,\"o\":{ },\"s\":\"\"}\r\n ";
        assert_eq!(
            scanned(text).unwrap(),
            vec![
                top("a", FlatValue::UInt(0)),
                top("b", FlatValue::UInt(u64::MAX)),
                top("o", FlatValue::Object),
                top("s", FlatValue::Str("")),
            ]
        );
        assert_eq!(scanned("{}").unwrap(), vec![]);
    }

    #[test]
    fn keeps_unicode_strings() {
        let fields = scanned(r#"{"名前":"山田 太郎","e":"😀"}"#).unwrap();
        assert_eq!(fields[0], top("名前", FlatValue::Str("山田 太郎")));
        assert_eq!(fields[1], top("e", FlatValue::Str("😀")));
    }

    #[test]
    fn declines_everything_outside_the_subset() {
        let declined = [
            "",
            " ",
            "[]",
            "\"s\"",
            "1",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,\"a\":1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":\"x\\\"y\"}",
            "{\"a\\n\":1}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":\"nl\nhere\"}",
            "{\"a\":[1]}",
            "{\"a\":true}",
            "{\"a\":null}",
            "{\"a\":-1}",
            "{\"a\":1.5}",
            "{\"a\":1e3}",
            "{\"a\":01}",
            "{\"a\":18446744073709551616}",
            "{\"a\":{\"b\":{}}}",
            "{\"a\":1,\"a\":2}",
            "{\"a\":{},\"a\":1}",
            "{\"o\":{\"k\":1,\"k\":2}}",
            "{\"a\":1}x",
            "{\"a\":1}{}",
            "{\"a\":1}\u{a0}",
            "\u{feff}{}",
            "{'a':1}",
            "{a:1}",
            "{\"a\":\"unterminated}",
        ];
        for text in declined {
            assert!(scanned(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn declines_invalid_utf8_in_strings() {
        let mut obj = FlatObject::new();
        assert!(!scan(b"{\"a\":\"\xff\"}", &mut obj));
        assert!(!scan(b"{\"\xc3\":1}", &mut obj));
    }

    #[test]
    fn same_key_under_different_parents_is_not_a_duplicate() {
        let fields = scanned(r#"{"k":1,"o":{"k":2},"p":{"k":3}}"#).unwrap();
        assert_eq!(fields.len(), 5);
    }

    #[test]
    fn long_keys_sharing_a_prefix_are_told_apart() {
        let mut obj = FlatObject::new();
        let text =
            br#"{"sequenceNumber":1,"sequenceNumbeR":2,"sequence":3,"o":{"sequenceNumber":4}}"#;
        assert!(scan(text, &mut obj));
        assert_eq!(obj.get(None, "sequenceNumber"), Some(FlatValue::UInt(1)));
        assert_eq!(obj.get(None, "sequenceNumbeR"), Some(FlatValue::UInt(2)));
        assert_eq!(obj.get(None, "sequence"), Some(FlatValue::UInt(3)));
        assert_eq!(obj.get(None, "sequenceNumberX"), None);
        assert_eq!(
            obj.get(Some("o"), "sequenceNumber"),
            Some(FlatValue::UInt(4))
        );
        assert_eq!(obj.get(Some("sequence"), "sequenceNumber"), None);
        assert!(!scan(
            br#"{"sequenceNumber":1,"sequenceNumber":2}"#,
            &mut obj
        ));
        assert!(!scan(
            br#"{"o":{"sequenceNumber":1,"sequenceNumber":2}}"#,
            &mut obj
        ));
    }

    #[test]
    fn first_special_finds_the_first_quote_backslash_or_control_byte() {
        let reference = |b: &[u8]| b.iter().position(|&c| is_special(c));
        let mut cases: Vec<Vec<u8>> = vec![b"".to_vec(), b"abc".to_vec(), b"\"".to_vec()];
        for len in [0usize, 1, 7, 8, 9, 31, 32, 33, 40, 100, 300] {
            for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                for at in [0, len / 2, len.saturating_sub(1)] {
                    let mut v = vec![b'A'; len];
                    v.extend_from_slice("é日".as_bytes());
                    if at < v.len() {
                        v[at] = special;
                    }
                    cases.push(v);
                }
            }
        }
        for case in cases {
            assert_eq!(first_special(&case), reference(&case), "{case:?}");
        }
    }

    #[test]
    fn declines_more_than_max_fields() {
        let members = |n: usize| {
            let body: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", body.join(","))
        };
        assert!(scanned(&members(MAX_FIELDS)).is_some());
        assert!(scanned(&members(MAX_FIELDS + 1)).is_none());
    }

    /// Converts the recorded fields to the `serde_json::Value` a full parser builds.
    fn to_value<'a>(fields: impl Iterator<Item = FlatField<'a>>) -> Value {
        let mut root = serde_json::Map::new();
        for f in fields {
            let value = match f.value {
                FlatValue::Str(s) => Value::from(s),
                FlatValue::UInt(n) => Value::from(n),
                FlatValue::Object => Value::Object(serde_json::Map::new()),
            };
            match f.parent {
                None => {
                    root.insert(f.key.to_owned(), value);
                }
                Some(p) => {
                    root[p]
                        .as_object_mut()
                        .unwrap()
                        .insert(f.key.to_owned(), value);
                }
            }
        }
        Value::Object(root)
    }

    /// A JSON-ish token soup: mostly structural bytes and short keys, so that random inputs
    /// regularly form accepted objects, plus arbitrary bytes.
    fn token_soup() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(b"{".to_vec()),
            Just(b"}".to_vec()),
            Just(b"\"".to_vec()),
            Just(b":".to_vec()),
            Just(b",".to_vec()),
            Just(b" ".to_vec()),
            Just(b"\"a\"".to_vec()),
            Just(b"\"b\"".to_vec()),
            Just(b"\"\\n\"".to_vec()),
            Just(b"0".to_vec()),
            Just(b"12".to_vec()),
            Just(b"-".to_vec()),
            Just(b".5".to_vec()),
            Just(b"[]".to_vec()),
            Just("é".as_bytes().to_vec()),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        proptest::collection::vec(token, 0..24).prop_map(|t| t.concat())
    }

    /// A JSON value of the accepted subset, sometimes with a feature that is not.
    fn arb_value(depth: u32) -> BoxedStrategy<Value> {
        let leaf = prop_oneof![
            "[a-z0-9+/= \u{3042}\u{1F600}\"\\\\\n]{0,8}".prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            Just(Value::Null),
            Just(Value::from(-3)),
            Just(Value::from(1.5)),
        ];
        if depth == 0 {
            return leaf.boxed();
        }
        prop_oneof![
            4 => leaf,
            1 => proptest::collection::btree_map("[a-c]{1,2}", arb_value(depth - 1), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn anything_accepted_is_json_with_the_same_fields(input in token_soup()) {
            let mut obj = FlatObject::new();
            if scan(&input, &mut obj) {
                let parsed: Value = serde_json::from_slice(&input)
                    .map_err(|e| TestCaseError::fail(format!("accepted non-json: {e}")))?;
                prop_assert_eq!(parsed, to_value(obj.fields()));
            }
        }

        #[test]
        fn valid_json_is_accepted_exactly_when_in_the_subset(
            members in proptest::collection::btree_map("[a-d]{1,2}", arb_value(2), 0..6),
            pretty in any::<bool>(),
        ) {
            let value = Value::Object(members.into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let mut obj = FlatObject::new();
            let accepted = scan(text.as_bytes(), &mut obj);
            prop_assert_eq!(accepted, in_subset(&value, 0, &mut 0), "{}", text);
            if accepted {
                prop_assert_eq!(to_value(obj.fields()), value);
            }
        }

        #[test]
        fn mutated_frames_never_accept_non_json(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let good = br#"{"event":"media","media":{"chunk":"4","payload":"/////w=="},"n":12}"#;
            let mut flipped = good.to_vec();
            flipped[at.index(good.len())] = byte;
            let truncated = &good[..cut.index(good.len())];
            for input in [&flipped[..], truncated] {
                let mut obj = FlatObject::new();
                if scan(input, &mut obj) {
                    let parsed: Value = serde_json::from_slice(input)
                        .map_err(|e| TestCaseError::fail(format!("accepted non-json: {e}")))?;
                    prop_assert_eq!(parsed, to_value(obj.fields()));
                }
            }
        }
    }

    /// Whether the scanner should accept `value` (serialized by serde_json, so no duplicates).
    fn in_subset(value: &Value, depth: u32, count: &mut usize) -> bool {
        let Value::Object(map) = value else {
            return false;
        };
        map.values().all(|v| {
            *count += 1;
            let ok = match v {
                Value::String(s) => !s.contains(['"', '\\']) && !s.chars().any(|c| c < ' '),
                Value::Number(n) => n.is_u64(),
                Value::Object(_) => depth == 0 && in_subset(v, depth + 1, count),
                _ => false,
            };
            ok && *count <= MAX_FIELDS
        })
    }
}
