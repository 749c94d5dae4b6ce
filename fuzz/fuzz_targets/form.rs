//! `parse_form`: never panics; what it accepts decodes the same way twice.
#![no_main]

use callbridge_core::wire::form::parse_form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = parse_form(data) {
        assert_eq!(parse_form(data), Ok(pairs));
    }
});
