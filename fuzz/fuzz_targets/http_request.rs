//! `parse_request` with the default limits: never panics, and a complete request never claims
//! more bytes than it was given.
#![no_main]

use callbridge::front::http::{parse_request, Limits, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete { request, consumed }) = parse_request(data, &Limits::default()) {
        assert!(consumed <= data.len());
        let _ = request.keep_alive();
        let _ = request.raw_target();
    }
});
