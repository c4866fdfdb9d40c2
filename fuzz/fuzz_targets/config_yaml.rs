//! Config files in YAML: parsing and validating never panics, and an error
//! is one printable line (no line of the file, no control character).
#![no_main]
#![forbid(unsafe_code)]

use std::path::Path;

use bastion_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::parse(Path::new("fuzz.yaml"), text) {
        let shown = e.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
});
