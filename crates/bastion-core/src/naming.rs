//! One namespace for many servers.
//!
//! On the aggregate endpoint (`/mcp`) a tool or prompt `search` of server
//! `github` is shown as `github__search`, and a resource URI `file:///a` of
//! server `fs` as `fs+file:///a`. Server names may not contain `__` or `+`,
//! nor end with `_` (the config check enforces it): the first `__` of a
//! prefixed name is then always the separator, whatever the tool's own name
//! holds (`a_` and `_b` would both read `a___b`), so both splits are
//! unambiguous and reversible. On a single-server endpoint names are shown
//! unchanged.

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

/// The rule [`is_valid_server_name`] checks, in words, for error messages.
pub const NAME_RULE: &str = "ASCII letters, digits, '-' and '_', starting with a letter or digit, \
     not ending with '_', without '__', at most 64 characters";

/// Whether a server or group name is acceptable: ASCII letters, digits, `-`
/// and `_`, starting with a letter or digit, not ending with `_`, without
/// `__`, at most 64 characters.
pub fn is_valid_server_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 64
                && first.is_ascii_alphanumeric()
                && *last != b'_'
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
                && !name.contains(NAME_SEPARATOR)
        }
        _ => false,
    }
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
        assert!(is_valid_server_name("a-"));
        assert!(is_valid_server_name(&"x".repeat(64)));
        for bad in ["", "a__b", "a+b", "-a", "_a", "a_", "a b", "é", "a.b", "a/b", &"x".repeat(65)] {
            assert!(!is_valid_server_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_trailing_underscore_would_be_ambiguous() {
        // why `a_` is refused: its tool `b` and server `a`'s tool `_b` collide
        assert_eq!(prefix_name("a_", "b"), prefix_name("a", "_b"));
        assert_eq!(split_name("a___b"), Some(("a", "_b")));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Valid names, built from the rule rather than filtered.
        fn valid_name() -> impl Strategy<Value = String> {
            "[A-Za-z0-9]([A-Za-z0-9-]|_[A-Za-z0-9-]){0,31}"
        }

        /// Names close to valid ones: the same alphabet plus the separators,
        /// so many are valid and many are not.
        fn near_name() -> impl Strategy<Value = String> {
            "[a-c0-9_+-]{0,8}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn generated_names_are_valid(s in valid_name()) {
                prop_assert!(is_valid_server_name(&s), "{}", s);
            }

            #[test]
            fn names_split_back(s in valid_name(), n in ".+") {
                let p = prefix_name(&s, &n);
                prop_assert_eq!(split_name(&p), Some((s.as_str(), n.as_str())));
            }

            #[test]
            fn uris_split_back(s in valid_name(), u in ".+") {
                let p = prefix_uri(&s, &u);
                prop_assert_eq!(split_uri(&p), Some((s.as_str(), u.as_str())));
            }

            /// Whatever passes the check splits back, with tool names that
            /// start or end with separators too.
            #[test]
            fn whatever_is_valid_splits_back(s in near_name(), n in "[a-c_+]{1,6}") {
                if is_valid_server_name(&s) {
                    let p = prefix_name(&s, &n);
                    prop_assert_eq!(split_name(&p), Some((s.as_str(), n.as_str())));
                    let p = prefix_uri(&s, &n);
                    prop_assert_eq!(split_uri(&p), Some((s.as_str(), n.as_str())));
                }
            }

            #[test]
            fn invalid_names_are_refused(
                s in "[A-Za-z0-9]([A-Za-z0-9-]|_[A-Za-z0-9-]){0,10}",
                bad in prop_oneof![
                    Just("_".to_string()),
                    Just("-".to_string()),
                    Just("__".to_string()),
                    Just("+".to_string()),
                    "[^A-Za-z0-9_-]",
                ],
                at in 0usize..3,
            ) {
                let name = match at {
                    0 => format!("{bad}{s}"),
                    1 => format!("{s}{bad}"),
                    _ => format!("{s}{bad}{s}"),
                };
                // a '-' may end a name or stand inside it, '_' inside it
                let allowed = (bad == "-" && at != 0) || (bad == "_" && at == 2);
                prop_assert_eq!(is_valid_server_name(&name), allowed, "{}", name);
            }

            #[test]
            fn long_names_are_refused(s in "[a-z]{65,100}") {
                prop_assert!(!is_valid_server_name(&s));
            }
        }
    }
}
