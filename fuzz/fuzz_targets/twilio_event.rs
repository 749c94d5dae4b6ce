//! The Twilio Media Streams event parser on arbitrary text frames: never panics.
#![no_main]

use callbridge_core::twilio::events::TwilioParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frame = data.to_vec();
    let _ = TwilioParser::new().parse(&mut frame);
});
