//! The request parser with the default limits: never panics, a complete request never claims
//! more bytes than it was given, and feeding the same bytes over several reads (split where the
//! first byte says) gives the same answer as one read.
#![no_main]

use callbridge_core::wire::http::{parse_request, Limits, Parsed, RequestParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let whole = parse_request(data, &Limits::default());
    if let Ok(Parsed::Complete { request, consumed }) = &whole {
        assert!(*consumed <= data.len());
        let _ = request.keep_alive();
        let _ = request.raw_target();
    }
    // The same bytes, `step` (1..=256) at a time, through one parser.
    let step = usize::from(step) + 1;
    let mut parser = RequestParser::default();
    let mut end = 0;
    let split = loop {
        end = (end + step).min(data.len());
        let r = parser.parse(&data[..end], &Limits::default());
        if r != Ok(Parsed::Partial) || end == data.len() {
            break r;
        }
    };
    // Complete answers are identical. Errors may differ in kind: a parse in pieces checks the
    // limits as bytes arrive, so it can stop at an error (an over-long request line: 414) that the
    // whole buffer reports as another one found first (a control byte in that line: 400). Both
    // refuse the request.
    match (&whole, &split) {
        (Ok(Parsed::Complete { .. }), _) | (_, Ok(Parsed::Complete { .. })) => {
            assert_eq!(whole, split)
        }
        _ => {}
    }
});
