//! `bastion keys` and `bastion config check`, without a running gateway.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{WAIT, bastion_bin, run_bounded};

fn bastion(config: &Path, args: &[&str]) -> std::process::Output {
    run_bounded(
        Command::new(bastion_bin()).arg("--config").arg(config).args(args).current_dir(config.parent().expect("dir")),
        WAIT,
    )
}

fn is_key(s: &str) -> bool {
    s.strip_prefix("bst_").is_some_and(|rest| {
        rest.len() == 43 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn keys_create_prints_the_key_alone_and_stores_only_a_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bastion.yaml");
    std::fs::write(&config, "listen: 127.0.0.1:8080\n").expect("write config");

    let out = bastion(&config, &["keys", "create", "--user", "dave", "--description", "integration test"]);
    assert!(out.status.success(), "keys create: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let key = lines[0];
    assert!(is_key(key), "the key has the form bst_ + 43 base64url characters: {key:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(key), "the key is not repeated on stderr");

    // A second key differs.
    let out = bastion(&config, &["keys", "create", "--user", "dave"]);
    let second = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert!(is_key(&second) && second != key, "{second:?}");

    // The store holds no plaintext key, in any of its files.
    let data = dir.path().join("data");
    let mut files = 0;
    for entry in std::fs::read_dir(&data).expect("data dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        files += 1;
        for k in [key, second.as_str()] {
            let secret = &k[4..];
            assert!(
                !contains(&bytes, k.as_bytes()) && !contains(&bytes, secret.as_bytes()),
                "{} contains a plaintext key",
                path.display()
            );
        }
    }
    assert!(data.join("bastion.db").is_file(), "the store is in data/bastion.db");
    assert!(files >= 2, "store and pepper files exist");

    // The pepper is private.
    let pepper = std::fs::read_dir(&data)
        .expect("data dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("pepper")))
        .expect("a pepper file in the data dir");
    let mode = std::fs::metadata(&pepper).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", pepper.display());

    // Listing shows the keys but never their values.
    let out = bastion(&config, &["keys", "list", "--json"]);
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).expect("utf-8");
    assert!(!listing.contains(&key[4..]) && !listing.contains(&second[4..]), "a listing shows a key: {listing}");
    let rows: Vec<Value> = listing.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(rows.len(), 2, "{listing}");
    assert!(rows.iter().all(|r| r["user"] == "dave" && r["state"] == "active"), "{listing}");
    assert!(rows.iter().any(|r| r["description"] == "integration test"), "{listing}");
    let table = bastion(&config, &["keys", "list"]);
    assert!(table.status.success());
    assert!(!String::from_utf8_lossy(&table.stdout).contains(&key[4..]));
}

#[test]
fn keys_create_rejects_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bastion.yaml");
    std::fs::write(&config, "listen: 127.0.0.1:8080\n").expect("write config");
    for args in [
        &["keys", "create", "--user", "bad user"][..],
        &["keys", "create", "--user", ""][..],
        &["keys", "create", "--user", "eve", "--expires", "soonish"][..],
        &["keys", "create", "--user", "eve", "--max-uses", "0"][..],
        &["keys", "revoke", "no-such-id"][..],
    ] {
        let out = bastion(&config, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout: {}", String::from_utf8_lossy(&out.stdout));
        assert!(!out.stderr.is_empty(), "{args:?} gave no message");
    }
}

#[test]
fn config_check_accepts_a_valid_file_and_names_the_offending_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let check = |file: &Path| {
        run_bounded(Command::new(bastion_bin()).args(["config", "check"]).arg(file).current_dir(dir.path()), WAIT)
    };

    let valid = write(
        "valid.yaml",
        "listen: 127.0.0.1:9000\nmcpServers:\n  fs:\n    command: npx\n    args: [\"-y\", \"some-server\"]\n    autoApprove: []\n  web:\n    url: https://mcp.example.com/mcp\ngroups:\n  dev: [fs, web]\nhttp:\n  page_size: 3\n",
    );
    let out = check(&valid);
    assert!(out.status.success(), "a valid YAML file: {}", String::from_utf8_lossy(&out.stderr));
    let valid_json = write("valid.json", &json!({"mcpServers": {"t": {"command": "x"}}}).to_string());
    let out = check(&valid_json);
    assert!(out.status.success(), "a valid JSON file: {}", String::from_utf8_lossy(&out.stderr));

    for (name, text, key) in [
        ("page.yaml", "http:\n  page_size: 0\n", "http.page_size"),
        ("unknown.yaml", "listen: 127.0.0.1:9000\nbogus_setting: 1\n", "bogus_setting"),
        ("nested.yaml", "upstream:\n  idle_timeot: 1s\n", "idle_timeot"),
        ("server.yaml", "mcpServers:\n  broken:\n    args: [x]\n", "mcpServers.broken"),
        ("both.json", r#"{"mcpServers": {"dual": {"command": "x", "url": "http://h/"}}}"#, "mcpServers.dual"),
        ("group.yaml", "mcpServers:\n  a:\n    command: x\ngroups:\n  g: [a, nope]\n", "groups.g"),
        ("duration.yaml", "upstream:\n  call_timeout: forever\n", "call_timeout"),
    ] {
        let file = write(name, text);
        let out = check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(stderr.contains(key), "{name}: the message names {key:?}: {stderr}");
    }
}

/// Key ids are base64url and may begin with `-`: `keys revoke` takes such an
/// id as the id, not as an option.
#[test]
fn keys_revoke_takes_an_id_that_begins_with_a_dash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bastion.yaml");
    std::fs::write(&config, "listen: 127.0.0.1:8080\n").expect("write config");
    let out = bastion(&config, &["keys", "revoke", "-oXYZ"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no active key with id \"-oXYZ\""), "the id was not taken as an id: {stderr}");
}
