//! Prefixed names: splitting never panics; a split whose server part is a
//! valid server name gives back exactly what was joined; and joining any
//! valid server name with any name splits back to the two.
#![no_main]
#![forbid(unsafe_code)]

use bastion_core::naming::{is_valid_server_name, prefix_name, prefix_uri, split_name, split_uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };

    if let Some((server, name)) = split_name(text)
        && is_valid_server_name(server)
    {
        assert_eq!(prefix_name(server, name), text);
    }
    if let Some((server, uri)) = split_uri(text)
        && is_valid_server_name(server)
    {
        assert_eq!(prefix_uri(server, uri), text);
    }

    // The first byte chooses where the text is cut into server and name.
    if let Some((&cut, rest)) = data.split_first()
        && let Ok(rest) = std::str::from_utf8(rest)
    {
        let cut = usize::from(cut).min(rest.len());
        if rest.is_char_boundary(cut) {
            let (server, name) = rest.split_at(cut);
            if is_valid_server_name(server) && !name.is_empty() {
                assert_eq!(split_name(&prefix_name(server, name)), Some((server, name)));
                assert_eq!(split_uri(&prefix_uri(server, name)), Some((server, name)));
            }
        }
    }
});
