//! Any bytes a client or server may send: if they are JSON, classifying them
//! never panics, and what is accepted is well formed and round-trips.
#![no_main]
#![forbid(unsafe_code)]

use bastion_core::jsonrpc::{Message, Notification, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let values = match value {
        // a batch: each element on its own
        Value::Array(items) => items,
        one => vec![one],
    };
    for v in values {
        let Ok(msg) = Message::from_value(v) else { continue };
        match &msg {
            Message::Request(r) => assert!(r.id.is_string() || r.id.is_i64() || r.id.is_u64()),
            Message::Response(r) => assert!(r.id.is_string() || r.id.is_i64() || r.id.is_u64() || r.id.is_null()),
            Message::Notification(_) => {}
        }
        if let Message::Request(Request { params: Some(p), .. })
        | Message::Notification(Notification { params: Some(p), .. }) = &msg
        {
            assert!(p.is_object() || p.is_array());
        }
        assert_eq!(Message::from_value(msg.to_value()).as_ref(), Ok(&msg));
    }
});
