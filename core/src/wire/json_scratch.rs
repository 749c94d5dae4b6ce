//! simd-json's scratch space, one per thread, shared by every parser of untrusted frames.
//!
//! simd-json needs [`Buffers`] (a padded copy of the input, structural indexes, a string buffer)
//! and a tape's node list for each parse. Both keep their capacity from frame to frame, so a
//! steady stream of frames parses without allocating, but both grow to the largest frame seen:
//! kept per call (as the Twilio parser once did) that was ~6 KiB of every call's memory for a
//! `start` frame parsed once (heaptrack, 300 calls). Parsing never yields, so a thread's scratch
//! serves one parse at a time, whichever call it belongs to.

use std::cell::RefCell;

use simd_json::{tape::Value, Buffers, Tape};

/// The scratch space and the emptied tape of the previous parse, kept for its allocation.
#[derive(Default)]
struct Scratch {
    buffers: Buffers,
    /// `None` only before the first parse (the tape is taken out while a frame is parsed).
    tape: Option<Tape<'static>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Parses `frame` (modified in place: strings are unescaped inside it) into a tape with this
/// thread's scratch space and hands its root to `read`, whose answer may borrow the frame. A
/// frame that is not JSON gives simd-json's error, and `read` is not called.
pub fn parse_tape<'a, T>(
    frame: &'a mut [u8],
    read: impl for<'t> FnOnce(Value<'t, 'a>) -> T,
) -> Result<T, simd_json::Error> {
    SCRATCH.with(|cell| {
        let scratch = &mut *cell.borrow_mut();
        let mut tape: Tape<'a> = scratch
            .tape
            .take()
            .map_or_else(|| Tape(Vec::new()), Tape::reset);
        let result = simd_json::fill_tape(frame, &mut scratch.buffers, &mut tape)
            .map(|()| read(tape.as_value()));
        scratch.tape = Some(tape.reset());
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    #[test]
    fn parses_unescaped_strings_and_reuses_the_scratch() {
        let mut a = br#"{"event":"start","n":"x\u00e9"}"#.to_vec();
        let got = parse_tape(&mut a, |root| {
            let obj = root.as_object().expect("an object");
            obj.get("n").and_then(|v| v.as_str().map(str::to_owned))
        })
        .expect("valid JSON");
        assert_eq!(got.as_deref(), Some("xé"));
        // A second, different frame on the same thread parses with the same scratch.
        let mut b = br#"[1,2,3]"#.to_vec();
        let len = parse_tape(&mut b, |root| root.as_array().map(|a| a.len())).unwrap();
        assert_eq!(len, Some(3));
    }

    #[test]
    fn not_json_is_an_error_and_read_is_not_called() {
        let mut frame = b"{\"event\": ".to_vec();
        let mut called = false;
        let err = parse_tape(&mut frame, |_| called = true);
        assert!(err.is_err());
        assert!(!called);
        // The scratch survives an error: the next frame parses.
        let mut ok = b"{}".to_vec();
        assert!(parse_tape(&mut ok, |root| root.as_object().is_some()).unwrap());
    }
}
