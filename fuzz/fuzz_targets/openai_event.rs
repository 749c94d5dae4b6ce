//! The OpenAI Realtime server event parser on arbitrary text frames: never panics.
#![no_main]

use callbridge_core::openai::events::ServerEventParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frame = data.to_vec();
    let _ = ServerEventParser::new().parse(&mut frame);
});
