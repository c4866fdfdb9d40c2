//! Cursors from clients: decoding never panics, and the only strings
//! accepted are the ones the gateway itself would have made.
#![no_main]
#![forbid(unsafe_code)]

use bastion_core::cursor::{self, CursorKey, MAX_OFFSET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // A fixed key, so that the fuzzer can learn from coverage; forging a
    // tag under it is still out of reach.
    let key = CursorKey::from_bytes([7; 32]);
    for (method, scope) in [("tools/list", "All"), ("resources/list", "Server(\"a\")"), ("", "")] {
        if let Some(offset) = cursor::decode(&key, text, method, scope) {
            assert!(offset <= MAX_OFFSET);
            assert_eq!(cursor::encode(&key, method, scope, offset), text);
        }
    }
});
