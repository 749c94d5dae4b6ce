//! JSON text for the parsers' property tests: values whose member order, spacing and string
//! escapes the test controls, so the fast paths and simd-json can be fed the same value written
//! many ways, and damaged (used by `twilio::events` and `openai::events`).

use proptest::prelude::*;

/// A JSON value whose member order and string escaping the test controls.
#[derive(Debug, Clone)]
pub(crate) enum J {
    /// A string, written with escapes when the frame is rendered escaped.
    Str(String),
    /// Literal JSON text (numbers, `true`, `null`, …).
    Raw(&'static str),
    /// An integer.
    Int(u64),
    /// An array.
    Arr(Vec<J>),
    /// An object, members in this order.
    Obj(Vec<(String, J)>),
}

/// Writes `s` as a JSON string; with `escape`, some characters are written as escapes that
/// decode to the same text.
fn render_str(out: &mut String, s: &str, escape: bool) {
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '/' if escape => out.push_str("\\/"),
            c if escape && i % 3 == 0 && (c as u32) < 0x10000 => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes `value` as JSON; with `escape`, strings use escapes that decode to the same text; with
/// `space`, a space follows each `,` and `:`.
pub(crate) fn render(out: &mut String, value: &J, escape: bool, space: bool) {
    let sep = if space { ", " } else { "," };
    match value {
        J::Str(s) => render_str(out, s, escape),
        J::Raw(r) => out.push_str(r),
        J::Int(n) => out.push_str(&n.to_string()),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                render(out, item, escape, space);
            }
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                render_str(out, k, escape);
                out.push_str(if space { ": " } else { ":" });
                render(out, v, escape, space);
            }
            out.push('}');
        }
    }
}

/// One damage done to a rendered frame: a byte replaced, the frame cut, a byte inserted.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, u8),
}

/// A random [`Mutation`], biased to JSON's structural bytes.
pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    let structural = proptest::sample::select(b"{}[]\":,\\ 0-.e\x7f\xff\x01".to_vec());
    let byte = prop_oneof![structural, any::<u8>()];
    prop_oneof![
        (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

/// Applies `m` to `frame`.
pub(crate) fn mutate(frame: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip(i, b) if !frame.is_empty() => {
            let i = i.index(frame.len());
            frame[i] = *b;
        }
        Mutation::Truncate(i) => frame.truncate(i.index(frame.len() + 1)),
        Mutation::Insert(i, b) => frame.insert(i.index(frame.len() + 1), *b),
        Mutation::Flip(..) => {}
    }
}
