//! Safe renderings of values that may carry secrets, for errors and logs.

/// A URL with what may carry a secret taken out: the user and password
/// (`user:password@`) are removed, and the query and fragment are replaced by
/// `?…` and `#…`. Scheme, host, port and path are kept, so the message still
/// says which server is meant.
///
/// Text that is not an absolute URL (`scheme://…`) is shown as `…` (after
/// its scheme, if it has one): a token pasted where a URL belongs must not
/// be echoed either.
pub fn url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return match text.split_once(':') {
            Some((scheme, _)) if is_scheme(scheme) => format!("{scheme}:…"),
            _ => "…".to_owned(),
        };
    };
    if !is_scheme(scheme) {
        return "…".to_owned();
    }
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((b, _)) => (b, true),
        None => (rest, false),
    };
    let (before_query, query) = match before_fragment.split_once('?') {
        Some((b, _)) => (b, true),
        None => (before_fragment, false),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if !is_host_port(host) {
        // Not a host: most likely a password holding `/`, `?` or `#` that
        // should have been escaped. Nothing after the scheme is shown.
        return format!("{scheme}://…");
    }
    let mut out = String::with_capacity(text.len());
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(host);
    out.push_str(path);
    if query {
        out.push_str("?…");
    }
    if fragment {
        out.push_str("#…");
    }
    out
}

/// What a masked value is shown as.
pub const MASK: &str = "[redacted]";

/// Request and response headers whose values are credentials, by name
/// (lowercase): never shown in a log line or a span attribute, whatever
/// the configuration says. `log.redact_headers` adds to them.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
];

/// Whether a header's value must be masked: one of the
/// [`CREDENTIAL_HEADERS`] or of `extra` (the operator's list), compared
/// without regard to case.
pub fn is_masked_header(name: &str, extra: &[String]) -> bool {
    CREDENTIAL_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
        || extra.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A header's value as it may be shown: [`MASK`] for a masked header (see
/// [`is_masked_header`]), the value itself otherwise.
pub fn header_value<'a>(name: &str, value: &'a str, extra: &[String]) -> &'a str {
    if is_masked_header(name, extra) { MASK } else { value }
}

/// A host name, IPv4 or bracketed IPv6 address, with an optional numeric
/// port; or nothing (`file:///…`).
fn is_host_port(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else { return false };
        if !ip.bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
            return false;
        }
        match after {
            "" => return true,
            _ => ("x", after.strip_prefix(':')),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, Some("")),
        }
    };
    let Some(port) = port else { return false };
    !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%'))
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn removes_userinfo_query_and_fragment() {
        assert_eq!(url("https://alice:s3cret@mcp.example.com:8443/mcp"), "https://mcp.example.com:8443/mcp");
        assert_eq!(url("https://token@mcp.example.com/mcp"), "https://mcp.example.com/mcp");
        assert_eq!(url("http://h/mcp?key=s3cret&x=1"), "http://h/mcp?…");
        assert_eq!(url("http://h/mcp#s3cret"), "http://h/mcp#…");
        assert_eq!(url("http://u:p@h?k=v#f"), "http://h?…#…");
        // an '@' in the path is not userinfo
        assert_eq!(url("http://h/a@b"), "http://h/a@b");
        // a password that itself holds '@' (should have been escaped) goes whole
        assert_eq!(url("http://u:p@ss@h/"), "http://h/");
        assert_eq!(url("http://[::1]:8080/mcp"), "http://[::1]:8080/mcp");
        assert_eq!(url("http://[::1]/mcp"), "http://[::1]/mcp");
        assert_eq!(url("http://h:/mcp"), "http://h:/mcp");
    }

    #[test]
    fn a_malformed_authority_is_not_echoed() {
        // passwords holding characters that end the authority
        assert_eq!(url("http://u:pa/ss@h/mcp"), "http://…");
        assert_eq!(url("http://u:pa?ss@h/mcp"), "http://…");
        assert_eq!(url("http://u:pa#ss@h/mcp"), "http://…");
        assert_eq!(url("http://h:99999999/"), "http://…");
        assert_eq!(url("http://[::1/"), "http://…");
        assert_eq!(url("http://:80/"), "http://…");
    }

    #[test]
    fn what_is_not_a_url_is_not_echoed() {
        assert_eq!(url("ghp_s3cret"), "…");
        assert_eq!(url("mailto:alice@example.com"), "mailto:…");
        assert_eq!(url("file:///etc/passwd"), "file:///etc/passwd");
        assert_eq!(url("://s3cret@h"), "…");
        assert_eq!(url("1http://s3cret@h"), "…");
        assert_eq!(url(""), "…");
    }

    #[test]
    fn credential_headers_are_masked_whatever_their_case() {
        let extra = vec!["X-Internal-Token".to_string()];
        for name in ["Authorization", "PROXY-AUTHORIZATION", "cookie", "Set-Cookie", "x-api-key", "Api-Key"] {
            assert!(is_masked_header(name, &[]), "{name}");
            assert_eq!(header_value(name, "s3cret", &[]), MASK);
        }
        assert!(is_masked_header("x-internal-token", &extra));
        assert_eq!(header_value("X-INTERNAL-TOKEN", "s3cret", &extra), MASK);
        assert!(!is_masked_header("x-internal-token", &[]));
        assert_eq!(header_value("user-agent", "curl/8", &extra), "curl/8");
        assert!(!is_masked_header("authorization-hint", &[]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn userinfo_and_query_never_survive(
            scheme in "[a-z][a-z0-9+.-]{0,8}",
            user in "[A-Za-z0-9._~%!$&'()*+,;=:-]{1,20}",
            host in "[a-z0-9.-]{1,20}",
            path in "(/[A-Za-z0-9._~-]{0,10}){0,3}",
            query in "[A-Za-z0-9=&._~-]{1,20}",
        ) {
            let secret_user = format!("SECRET{user}");
            let secret_query = format!("TOKEN{query}");
            let out = url(&format!("{scheme}://{secret_user}@{host}{path}?{secret_query}"));
            prop_assert!(!out.contains("SECRET"), "{}", out);
            prop_assert!(!out.contains("TOKEN"), "{}", out);
            prop_assert_eq!(out, format!("{scheme}://{host}{path}?…"));
        }

        #[test]
        fn never_panics(s in ".*") {
            let _ = url(&s);
        }
    }
}
