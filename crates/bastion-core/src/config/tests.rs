use super::*;

fn yaml(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("bastion.yaml"), text)
}

#[test]
fn defaults_are_secure() {
    let c = yaml("mcpServers: {}\n").unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.auth.default_key_expiry, Duration::from_secs(30 * 86400));
    assert_eq!(c.http.max_body_bytes, 4 * 1024 * 1024);
}

#[test]
fn accepts_claude_desktop_json_unchanged() {
    let text = r#"{
      "mcpServers": {
        "filesystem": {
          "command": "npx",
          "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
          "env": {"DEBUG": "1"},
          "autoApprove": ["read_file"],
          "disabled": false
        },
        "remote": { "url": "https://mcp.example.com/mcp", "headers": {"X-Team": "a"} }
      }
    }"#;
    let c = Config::parse(Path::new("claude_desktop_config.json"), text).unwrap();
    assert_eq!(c.servers.len(), 2);
    assert!(matches!(c.servers["filesystem"].transport(), Ok(Transport::Stdio { .. })));
    assert!(matches!(c.servers["remote"].transport(), Ok(Transport::Http { fallback_sse: true, .. })));
}

#[test]
fn yaml_with_groups_and_durations() {
    let c = yaml(
        "listen: 127.0.0.1:9000\nmcpServers:\n  a: {command: echo}\n  b: {url: 'http://127.0.0.1:1/mcp', type: sse}\ngroups:\n  dev: [a, b]\nupstream:\n  idle_timeout: 90s\n",
    )
    .unwrap();
    assert_eq!(c.groups["dev"], vec!["a", "b"]);
    assert_eq!(c.upstream.idle_timeout, Duration::from_secs(90));
    assert!(matches!(c.servers["b"].transport(), Ok(Transport::Sse { .. })));
}

#[test]
fn errors_name_the_offending_key() {
    let err = yaml("mcpServers:\n  a: {command: x, url: 'http://h'}\n").unwrap_err().to_string();
    assert!(err.contains("mcpServers.a.url"), "{err}");

    let err = yaml("mcpServers:\n  a: {command: x}\ngroups:\n  g: [a, nope]\n").unwrap_err().to_string();
    assert!(err.contains("groups.g[1]") && err.contains("nope"), "{err}");

    let err = yaml("mcpServers:\n  'a__b': {command: x}\n").unwrap_err().to_string();
    assert!(err.contains("mcpServers.a__b"), "{err}");

    let err = yaml("listen: 127.0.0.1:1\nlisten_typo: 1\n").unwrap_err().to_string();
    assert!(err.contains("listen_typo"), "{err}");

    let err = Config::parse(Path::new("c.json"), r#"{"mcpServers": {"a": {"command": 5}}}"#).unwrap_err().to_string();
    assert!(err.contains("mcpServers.a.command"), "{err}");

    let err = yaml("upstream:\n  idle_timeout: soon\n").unwrap_err().to_string();
    assert!(err.contains("upstream.idle_timeout") && err.contains("a duration"), "{err}");
    assert!(!err.contains("soon"), "{err}");
}

const TOKEN: &str = "ghp_0123456789abcdefSECRET";

/// Broken files with a token nearby: each error names the key, line and
/// column, and never the token (nor any other text of the file).
#[test]
fn parse_errors_never_quote_the_file() {
    let cases: &[(&str, &str, &str, (u64, u64))] = &[
        // a token where a map belongs
        (
            "bastion.yaml",
            "mcpServers:\n  gh:\n    command: npx\n    env: ghp_0123456789abcdefSECRET\n",
            "mcpServers.gh.env",
            (4, 10),
        ),
        // a token where a list belongs
        (
            "bastion.yaml",
            "mcpServers:\n  gh:\n    command: npx\n    args: ghp_0123456789abcdefSECRET\n",
            "mcpServers.gh.args",
            (4, 11),
        ),
        // a token as an unknown transport
        (
            "bastion.yaml",
            "mcpServers:\n  gh:\n    url: http://h/\n    type: ghp_0123456789abcdefSECRET\n",
            "mcpServers.gh.type",
            (4, 11),
        ),
        // a token as a duration (YAML points at the key)
        ("bastion.yaml", "upstream:\n  call_timeout: ghp_0123456789abcdefSECRET\n", "upstream.call_timeout", (2, 3)),
        // a token as a number
        ("bastion.yaml", "http:\n  page_size: ghp_0123456789abcdefSECRET\n", "http.page_size", (2, 14)),
        // a token as an address
        ("bastion.yaml", "listen: ghp_0123456789abcdefSECRET\n", "listen", (1, 9)),
        // JSON: a token where a list belongs, as a number, a transport, a duration
        (
            "c.json",
            r#"{"mcpServers": {"gh": {"command": "npx", "args": "ghp_0123456789abcdefSECRET"}}}"#,
            "mcpServers.gh.args",
            (1, 77),
        ),
        ("c.json", r#"{"http": {"page_size": "ghp_0123456789abcdefSECRET"}}"#, "http.page_size", (1, 51)),
        (
            "c.json",
            r#"{"mcpServers": {"gh": {"url": "http://h/", "type": "ghp_0123456789abcdefSECRET"}}}"#,
            "mcpServers.gh.type",
            (1, 79),
        ),
        ("c.json", r#"{"upstream": {"call_timeout": "ghp_0123456789abcdefSECRET"}}"#, "upstream.call_timeout", (1, 59)),
    ];
    for (file, text, key, (line, column)) in cases {
        let err = Config::parse(Path::new(file), text).unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains(TOKEN) && !shown.contains("SECRET"), "{shown}");
        assert!(!format!("{err:?}").contains("SECRET"), "{err:?}");
        let ConfigError::Syntax { key: Some(k), position: Some(p), .. } = &err else { panic!("{err:?}") };
        assert_eq!(k, key, "{shown}");
        assert_eq!(*p, (*line, *column), "{shown}");
        assert!(shown.contains(&format!("{key} (line {line}, column {column}): ")), "{shown}");
    }
}

/// Syntax errors next to a secret: the YAML parser's own message would
/// print the surrounding lines.
#[test]
fn syntax_errors_never_print_lines() {
    let cases: &[(&str, &str, (u64, u64))] = &[
        ("bastion.yaml", "mcpServers:\n  gh:\n    env: {TOKEN: ghp_0123456789abcdefSECRET\n    command: x\n", (4, 12)),
        ("bastion.yaml", "mcpServers:\n  gh:\n    env:\n      TOKEN: \"ghp_0123456789abcdefSECRET\n", (5, 1)),
        (
            "bastion.yaml",
            "mcpServers:\n  gh:\n    env:\n      TOKEN: ghp_0123456789abcdefSECRET\n     bad: [\n",
            (5, 6),
        ),
        ("c.json", "{\"mcpServers\": {\"gh\": {\"env\": {\"T\": \"ghp_0123456789abcdefSECRET\" \"x\"}}}}", (1, 66)),
        ("c.json", "{\"mcpServers\": {\"gh\": {\"env\": {\"T\": \"ghp_0123456789abcdefSECRET", (1, 63)),
    ];
    for (file, text, position) in cases {
        let err = Config::parse(Path::new(file), text).unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains("SECRET") && !shown.contains("TOKEN:") && !shown.contains('\n'), "{shown}");
        let ConfigError::Syntax { position: Some(p), .. } = &err else { panic!("{err:?}") };
        assert_eq!(p, position, "{shown}");
        assert!(shown.contains("line "), "{shown}");
    }
}

#[test]
fn keys_from_the_file_are_printable() {
    let err = yaml("\"list\\nen\": 1\n").unwrap_err().to_string();
    assert!(!err.chars().any(char::is_control) && err.contains("unknown field,"), "{err}");
    let err = yaml("mcpServers:\n  a:\n    command: x\n    env:\n      \"A\\nB\": [1]\n").unwrap_err().to_string();
    assert!(!err.chars().any(char::is_control) && err.contains("mcpServers.a.env.A\\nB"), "{err}");
    let err = yaml("mcpServers:\n  \"a\\nb\": {command: x}\n").unwrap_err().to_string();
    assert!(!err.chars().any(char::is_control) && err.contains("mcpServers.a\\nb"), "{err}");
}

#[test]
fn validation_errors_redact_urls() {
    let err = yaml("mcpServers:\n  a: {url: 'ftp://alice:s3cret@h/x?token=t0ken'}\n").unwrap_err().to_string();
    assert!(err.contains("mcpServers.a.url") && err.contains("ftp://h/x?…"), "{err}");
    assert!(!err.contains("s3cret") && !err.contains("t0ken"), "{err}");
}

#[test]
fn names_must_split_unambiguously() {
    for bad in ["a_", "_a", "-a", "a__b", "a+b"] {
        let err = yaml(&format!("mcpServers:\n  '{bad}': {{command: x}}\n")).unwrap_err().to_string();
        assert!(err.contains(&format!("mcpServers.{bad}")) && err.contains("not ending with '_'"), "{err}");
        let err =
            yaml(&format!("mcpServers:\n  a: {{command: x}}\ngroups:\n  '{bad}': [a]\n")).unwrap_err().to_string();
        assert!(err.contains(&format!("groups.{bad}")) && err.contains("invalid group name"), "{err}");
    }
    assert!(yaml("mcpServers:\n  a-: {command: x}\n  b_c: {command: x}\n").is_ok());
}

#[test]
fn headers_are_checked_like_the_http_crate_does() {
    assert!(!http_header_invalid("X-Team", "a b\tc ü"));
    assert!(!http_header_invalid("x!#$%&'*+-.^_`|~9", ""));
    for (name, value) in [
        ("", "v"),
        ("X A", "v"),
        ("X:A", "v"),
        ("Ü", "v"),
        ("X", "a\rb"),
        ("X", "a\nb"),
        ("X", "\0"),
        ("X", "\x7f"),
        ("X", "\x1b[31m"),
    ] {
        assert!(http_header_invalid(name, value), "{name:?}: {value:?}");
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The check agrees with the `http` crate's rules: token names,
        /// values of visible characters, space, tab and non-ASCII.
        #[test]
        fn header_check_matches_the_http_rules(name in ".{0,12}", value in ".{0,12}") {
            let name_ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            let value_ok = value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
            prop_assert_eq!(http_header_invalid(&name, &value), !(name_ok && value_ok));
        }

        #[test]
        fn token_names_and_visible_values_pass(name in "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", value in "[ -~\t]{0,40}") {
            prop_assert!(!http_header_invalid(&name, &value));
        }

        #[test]
        fn a_line_break_anywhere_in_a_value_is_refused(a in "[ -~]{0,10}", b in "[ -~]{0,10}", brk in prop_oneof![Just("\r"), Just("\n"), Just("\0")]) {
            let value = format!("{a}{brk}{b}");
            prop_assert!(http_header_invalid("X-A", &value));
        }

        /// Whatever a broken file holds, its error does not quote it.
        #[test]
        fn errors_never_quote_a_value(secret in "[A-Za-z0-9]{12,30}", slot in 0usize..6) {
            let secret = format!("SECRET{secret}");
            let text = match slot {
                0 => format!("mcpServers:\n  a:\n    command: x\n    env: {secret}\n"),
                1 => format!("mcpServers:\n  a:\n    command: x\n    args: {{{secret}\n"),
                2 => format!("listen: {secret}\n"),
                3 => format!("upstream:\n  idle_timeout: \"{secret}\"\n"),
                4 => format!("mcpServers:\n  a: {{url: 'http://h', type: {secret}}}\n"),
                _ => format!("mcpServers:\n  a:\n    env:\n      T: '{secret}\n"),
            };
            let err = yaml(&text).unwrap_err().to_string();
            prop_assert!(!err.contains(&secret), "{}", err);
            let json = match slot {
                0 => format!(r#"{{"mcpServers": {{"a": {{"command": "x", "env": "{secret}"}}}}}}"#),
                1 => format!(r#"{{"mcpServers": {{"a": {{"command": "x", "args": {secret}}}}}}}"#),
                2 => format!(r#"{{"listen": "{secret}"}}"#),
                3 => format!(r#"{{"upstream": {{"idle_timeout": "{secret}"}}}}"#),
                4 => format!(r#"{{"mcpServers": {{"a": {{"url": "http://h", "type": "{secret}"}}}}}}"#),
                _ => format!(r#"{{"mcpServers": {{"a": {{"env": {{"T": "{secret}"#),
            };
            let err = Config::parse(Path::new("c.json"), &json).unwrap_err().to_string();
            prop_assert!(!err.contains(&secret), "{}", err);
        }
    }
}

#[test]
fn rejects_bad_urls_and_headers() {
    assert!(yaml("mcpServers:\n  a: {url: 'file:///etc/passwd'}\n").is_err());
    assert!(yaml("mcpServers:\n  a: {url: 'http://h', headers: {'X-A': \"v\\r\\nEvil: 1\"}}\n").is_err());
}

#[test]
fn group_may_not_shadow_a_server() {
    let err = yaml("mcpServers:\n  a: {command: x}\ngroups:\n  a: [a]\n").unwrap_err().to_string();
    assert!(err.contains("groups.a"), "{err}");
}

#[test]
fn empty_yaml_is_an_error() {
    assert!(yaml("").is_err());
}

#[test]
fn data_dir_is_relative_to_the_config_file() {
    let c = yaml("data_dir: state\n").unwrap();
    assert_eq!(c.data_dir(Path::new("/etc/bastion/bastion.yaml")), PathBuf::from("/etc/bastion/state"));
    let c = yaml("{}\n").unwrap();
    assert_eq!(c.data_dir(Path::new("bastion.yaml")), PathBuf::from("./data"));
}

#[test]
fn the_access_contract_parses() {
    let c = yaml(
        r#"
mcpServers:
  time: {command: echo}
groups:
  dev: [time]
auth:
  resource: https://gw.example.com/mcp
  oidc:
    - issuer: https://login.example.com
      algorithms: [RS256, ES256]
      claims: { user: sub, role: role, groups: groups }
      scopes: [mcp]
users:
  alice: { role: user, groups: [dev] }
  carol: { role: viewer, groups: [dev] }
  root:  { role: admin }
policy:
  files: [policies/extra.cedar]
"#,
    )
    .unwrap();
    assert_eq!(c.users["alice"], UserConfig { role: Role::User, groups: vec!["dev".into()] });
    assert_eq!(c.users["root"].role, Role::Admin);
    let o = &c.auth.oidc[0];
    assert_eq!(o.algorithms, ["RS256", "ES256"]);
    assert_eq!(o.claims.role.as_deref(), Some("role"));
    assert_eq!(o.leeway, Duration::from_secs(60));
    assert_eq!(c.policy.files, [PathBuf::from("policies/extra.cedar")]);
    assert_eq!(
        c.resolve_path(Path::new("/etc/bastion/b.yaml"), &c.policy.files[0]),
        Path::new("/etc/bastion/policies/extra.cedar")
    );
}

#[test]
fn access_mistakes_are_refused() {
    let base = "mcpServers: {time: {command: echo}}\ngroups: {dev: [time]}\n";
    let cases = [
        ("users: {alice: {role: Admin}}", "users.alice.role"),
        ("users: {alice: {role: user, groups: [ops]}}", "users.alice.groups[0]"),
        ("users: {' alice': {role: user}}", "users"),
        ("auth: {oidc: [{issuer: 'https://idp.example.com'}]}", "auth.resource"),
        (
            "auth: {resource: 'https://gw/mcp', oidc: [{issuer: 'https://idp', algorithms: [HS256]}]}",
            "auth.oidc[0].algorithms",
        ),
        (
            "auth: {resource: 'https://gw/mcp', oidc: [{issuer: 'https://idp', algorithms: [none]}]}",
            "auth.oidc[0].algorithms",
        ),
        ("auth: {resource: 'https://gw/mcp', oidc: [{issuer: 'http://idp.example.com'}]}", "auth.oidc[0].issuer"),
        ("auth: {resource: 'https://gw/mcp', oidc: [{issuer: 'https://idp', leeway: 5m}]}", "auth.oidc[0].leeway"),
        ("auth: {resource: 'https://gw/mcp#x'}", "auth.resource"),
        (
            "auth: {resource: 'https://gw/mcp', oidc: [{issuer: 'https://idp', jwks_uri: 'http://idp.example.com/jwks'}]}",
            "auth.oidc[0].jwks_uri",
        ),
        ("tls: {cert: a.pem, key: k.pem, min_version: '1.1'}", "tls.min_version"),
        ("tls: {cert: a.pem, key: k.pem, client_auth: maybe}", "tls.client_auth"),
    ];
    for (extra, key) in cases {
        let err = yaml(&format!("{base}{extra}\n")).expect_err(extra).to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
    // http issuers are fine on loopback (tests, local identity providers).
    yaml(&format!(
        "{base}auth: {{resource: 'http://127.0.0.1:8080/mcp', oidc: [{{issuer: 'http://127.0.0.1:9/'}}]}}\n"
    ))
    .unwrap();
}
