//! The WebSocket decoder in both roles, driven like the runtime does: decode until it needs more
//! bytes or fails. Never panics, never consumes more than it was given.
#![no_main]

use callbridge_core::wire::ws::{Decoder, Role};
use libfuzzer_sys::fuzz_target;

/// Small enough that the size checks are exercised, large enough for real frames.
const MAX_MESSAGE_BYTES: usize = 4096;

fn drive(role: Role, data: &[u8]) {
    let mut buf = data.to_vec();
    let mut decoder = Decoder::new(role, MAX_MESSAGE_BYTES);
    let mut start = 0;
    while let Ok(decoded) = decoder.decode(&mut buf[start..]) {
        if decoded.needs_more() {
            break;
        }
        assert!(decoded.consumed > 0, "a message always consumes its frame");
        start += decoded.consumed;
        assert!(start <= buf.len());
    }
}

fuzz_target!(|data: &[u8]| {
    drive(Role::Server, data);
    drive(Role::Client, data);
});
