//! One namespace for many servers.
//!
//! On the aggregate endpoint (`/mcp`) a tool or prompt `search` of server
//! `github` is shown as `github__search`, and a resource URI `file:///a` of
//! server `fs` as `fs+file:///a`. Server names may not contain `__` or `+`
//! (the config check enforces it), so both splits are unambiguous and
//! reversible. On a single-server endpoint names are shown unchanged.

/// Separator between server and tool or prompt name.
pub const NAME_SEPARATOR: &str = "__";
/// Separator between server name and the original resource URI.
pub const URI_SEPARATOR: char = '+';

pub fn prefix_name(server: &str, name: &str) -> String {
    let mut s = String::with_capacity(server.len() + NAME_SEPARATOR.len() + name.len());
    s.push_str(server);
    s.push_str(NAME_SEPARATOR);
    s.push_str(name);
    s
}

/// Splits `server__name` into its parts; `None` if there is no separator or
/// either side is empty.
pub fn split_name(prefixed: &str) -> Option<(&str, &str)> {
    let (server, name) = prefixed.split_once(NAME_SEPARATOR)?;
    (!server.is_empty() && !name.is_empty()).then_some((server, name))
}

pub fn prefix_uri(server: &str, uri: &str) -> String {
    let mut s = String::with_capacity(server.len() + 1 + uri.len());
    s.push_str(server);
    s.push(URI_SEPARATOR);
    s.push_str(uri);
    s
}

pub fn split_uri(prefixed: &str) -> Option<(&str, &str)> {
    let (server, uri) = prefixed.split_once(URI_SEPARATOR)?;
    (!server.is_empty() && !uri.is_empty()).then_some((server, uri))
}

/// Whether a server or group name is acceptable: ASCII letters, digits, `-`
/// and single `_`, starting with a letter or digit, at most 64 characters.
pub fn is_valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.contains(NAME_SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = prefix_name("github", "search_code");
        assert_eq!(p, "github__search_code");
        assert_eq!(split_name(&p), Some(("github", "search_code")));
        // a tool name that itself contains the separator stays whole
        assert_eq!(split_name("srv__a__b"), Some(("srv", "a__b")));
        assert_eq!(split_name("nosep"), None);
        assert_eq!(split_name("__x"), None);
    }

    #[test]
    fn uris_round_trip() {
        let p = prefix_uri("fs", "file:///tmp/a+b");
        assert_eq!(split_uri(&p), Some(("fs", "file:///tmp/a+b")));
        assert_eq!(split_uri("file:///x"), None);
    }

    #[test]
    fn server_names() {
        assert!(is_valid_server_name("everything"));
        assert!(is_valid_server_name("my-server_2"));
        for bad in ["", "a__b", "a+b", "-a", "a b", "é", &"x".repeat(65)] {
            assert!(!is_valid_server_name(bad), "{bad}");
        }
    }
}
