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
    assert!(err.contains("soon"), "{err}");
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
