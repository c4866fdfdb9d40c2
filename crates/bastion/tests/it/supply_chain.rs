//! The supply-chain policy: `config check` warns about launchers without an
//! exact version and fails on them with `--strict` or `supply_chain:
//! strict`; a strict gateway refuses such a server (never started, calls
//! answered with an error saying why) while serving the others; a `sha256`
//! pin lets its executable start only while the file matches, at every
//! start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{
    Gateway, Mcp, WAIT, bastion_bin, eventually, fixture_bin, fixture_echo, http, repo_root, run_bounded, tool_text,
};

/// The `server.refused` audit records, once there are at least `n`.
async fn refusals(gw: &Gateway, n: usize) -> Vec<Value> {
    eventually(WAIT, "server.refused audit records", || async {
        let out = gw.cli(&["audit", "export", "--kind", "server.refused"]);
        assert!(out.status.success(), "audit export: {}", String::from_utf8_lossy(&out.stderr));
        let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (records.len() >= n).then_some(records)
    })
    .await
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read the executable")))
}

/// `bastion config check ARGS… FILE`: exit success and stderr.
fn config_check(file: &Path, args: &[&str]) -> (bool, String) {
    let out = run_bounded(
        Command::new(bastion_bin())
            .args(["config", "check"])
            .args(args)
            .arg(file)
            .current_dir(file.parent().expect("a directory")),
        WAIT,
    );
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write_json(dir: &Path, name: &str, config: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(config).expect("json")).expect("write");
    p
}

/// npx (on PATH, as the gateway finds it), the directory where the
/// provisioning installed server-everything, and its exact version.
fn npx_and_everything_version() -> (PathBuf, PathBuf, String) {
    let npx = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("npx"))
        .find(|p| p.is_file())
        .expect("npx on PATH (Node.js and npm are installed by scripts/provision)");
    let npm_dir = repo_root().join(".tools/npm");
    let manifest = npm_dir.join("node_modules/@modelcontextprotocol/server-everything/package.json");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/provision first", manifest.display())),
    )
    .expect("package.json");
    (npx, npm_dir, manifest["version"].as_str().expect("a version").to_string())
}

#[test]
fn config_check_warns_about_unpinned_launchers_and_strict_refuses_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = json!({
        "loose": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything"]},
        "ranged": {"command": "/usr/local/bin/uvx", "args": ["mcp-server-time>=1.0"]},
        "latest": {"command": "docker", "args": ["run", "-i", "--rm", "-e", "TOKEN", "mcp/fetch:latest"]},
        "pinned": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything@2025.9.25"]},
        "digest": {"command": "docker", "args": ["run", "-i", "--rm", format!("mcp/fetch@sha256:{}", "ab".repeat(32))]},
        "plain": {"command": "mcp-server", "args": ["--stdio"]},
        "off": {"command": "npx", "args": ["unpinned-but-disabled"], "disabled": true}
    });
    let warn = write_json(dir.path(), "warn.json", &json!({"mcpServers": servers}));

    let (ok, err) = config_check(&warn, &[]);
    assert!(ok, "warnings only: {err}");
    assert!(
        err.contains(
            "warning: mcpServers.loose: npx runs `@modelcontextprotocol/server-everything`, which names no version"
        ) && err.contains("`@modelcontextprotocol/server-everything@X.Y.Z`"),
        "{err}"
    );
    assert!(
        err.contains("warning: mcpServers.ranged: uvx runs `mcp-server-time>=1.0`, which is not an exact version"),
        "{err}"
    );
    assert!(
        err.contains("warning: mcpServers.latest: docker run runs `mcp/fetch:latest`") && err.contains("@sha256:"),
        "{err}"
    );
    for quiet in ["mcpServers.pinned", "mcpServers.digest", "mcpServers.plain", "mcpServers.off"] {
        assert!(!err.contains(quiet), "{quiet} is not reported: {err}");
    }
    assert!(err.contains("valid (6 servers"), "{err}");

    // --strict: the same findings are errors, and the check fails.
    let (ok, err) = config_check(&warn, &["--strict"]);
    assert!(!ok, "--strict fails: {err}");
    for name in ["loose", "ranged", "latest"] {
        assert!(err.contains(&format!("error: mcpServers.{name}: ")), "{name}: {err}");
    }
    assert!(err.contains("(refused: --strict)"), "{err}");
    assert!(err.contains("3 supply-chain problems") && !err.contains("valid ("), "{err}");

    // `supply_chain: strict` in the file does the same without the flag.
    let strict = write_json(dir.path(), "strict.json", &json!({"supply_chain": "strict", "mcpServers": servers}));
    let (ok, err) = config_check(&strict, &[]);
    assert!(!ok && err.contains("error: mcpServers.loose: ") && err.contains("supply_chain: strict"), "{err}");

    // Only pinned launchers: strict passes.
    let pinned = write_json(
        dir.path(),
        "pinned.json",
        &json!({"supply_chain": "strict", "mcpServers": {"pinned": servers["pinned"], "digest": servers["digest"]}}),
    );
    let (ok, err) = config_check(&pinned, &["--strict"]);
    assert!(ok && !err.contains("warning") && err.contains("valid (2 servers"), "{err}");
}

#[test]
fn config_check_reports_an_executable_that_does_not_match_its_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Found as the gateway finds it: relative to the server's `cwd`.
    std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
    let script = dir.path().join("bin/server.sh");
    write_server_script(&script, "checked");
    let digest = sha256_hex(&script);
    let entry = |sha256: &str| json!({"command": "./server.sh", "cwd": "bin", "sha256": sha256});

    let good = write_json(dir.path(), "good.json", &json!({"mcpServers": {"f": entry(&digest.to_ascii_uppercase())}}));
    let (ok, err) = config_check(&good, &["--strict"]);
    assert!(ok && !err.contains("sha256"), "a matching pin: {err}");

    // A mismatch is an error with or without --strict.
    let wrong = "0".repeat(64);
    let bad = write_json(dir.path(), "bad.json", &json!({"mcpServers": {"f": entry(&wrong)}}));
    let (ok, err) = config_check(&bad, &[]);
    assert!(!ok, "a mismatch fails: {err}");
    assert!(err.contains("error: mcpServers.f.sha256:") && err.contains("does not match its sha256 pin"), "{err}");
    assert!(err.contains(&digest), "the actual digest is shown, to pin it if the change is expected: {err}");

    // A command that is not here cannot be checked: a warning, an error
    // with --strict.
    let missing = write_json(
        dir.path(),
        "missing.json",
        &json!({"mcpServers": {"m": {"command": "no-such-command-here", "sha256": wrong}}}),
    );
    let (ok, err) = config_check(&missing, &[]);
    assert!(ok && err.contains("warning: mcpServers.m.sha256: cannot be checked here"), "{err}");
    let (ok, err) = config_check(&missing, &["--strict"]);
    assert!(!ok && err.contains("error: mcpServers.m.sha256: cannot be checked here"), "{err}");
}

#[tokio::test]
async fn a_strict_gateway_refuses_an_unpinned_launcher_and_serves_the_others() {
    let (npx, npm_dir, version) = npx_and_everything_version();
    let gw = Gateway::start(json!({
        "supply_chain": "strict",
        "mcpServers": {
            // Never started: no network is needed for it.
            "loose": {"command": npx, "args": ["-y", "@modelcontextprotocol/server-everything", "stdio"]},
            // The installed release, by its exact version (offline).
            "pinned": {
                "command": npx,
                "args": ["--offline", "-y", format!("@modelcontextprotocol/server-everything@{version}"), "stdio"],
                "cwd": npm_dir
            },
            "plain": fixture_echo("plain")
        }
    }));
    gw.wait_for_log("server refused by the supply-chain policy").await;
    let log = gw.log();
    assert!(log.contains("loose") && log.contains("names no version"), "{log}");
    let key = gw.create_key("operator", &[]);

    // Calls to the refused server get an error saying why.
    let loose = Mcp::stateless(gw.url("/mcp/loose"), &key);
    for method in ["tools/list", "tools/call"] {
        let rpc = loose.request(method, json!({"name": "echo", "arguments": {}})).await.rpc();
        let message = rpc["error"]["message"].as_str().unwrap_or_else(|| panic!("{method}: an error: {rpc}"));
        assert!(
            message.contains("refused by the supply-chain policy") && message.contains("names no version"),
            "{method}: {rpc}"
        );
    }

    // The others are served.
    let plain = Mcp::stateless(gw.url("/mcp/plain"), &key);
    assert_eq!(tool_text(&plain.call_tool("echo", json!({"text": "hi"})).await), "hi");
    let pinned = Mcp::stateless(gw.url("/mcp/pinned"), &key);
    let names = pinned.tool_names().await;
    assert!(names.iter().any(|n| n == "echo"), "server-everything's tools: {names:?}");

    // The refused server never ran; the gateway stays ready, as with any
    // server that cannot start.
    let children = gw.children();
    assert!(!children.iter().any(|p| p.cmdline.contains("server-everything stdio")), "{children:?}");
    let ready = http().get(gw.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);

    // Recorded once, when the configuration was applied.
    let records = refusals(&gw, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["server"], "loose");
    assert_eq!(records[0]["outcome"], "denied");
    assert_eq!(records[0]["policy"], "supply_chain:unpinned");
}

/// A fixture behind a wrapper named `npx` (in `dir`): an unpinned
/// launcher to the check, a local server to run.
fn fake_npx_server(dir: &Path, tag: &str) -> Value {
    let wrapper = dir.join("npx");
    std::fs::write(&wrapper, format!("#!/bin/sh\nshift 2\nexec {:?} \"$@\"\n", fixture_bin())).expect("write");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    json!({"command": wrapper, "args": ["-y", "some-server", "echo", "--stdio"], "env": {"BASTION_IT_SERVER": tag}})
}

#[tokio::test]
async fn a_warning_gateway_logs_an_unpinned_launcher_and_starts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(json!({"mcpServers": {"loose": fake_npx_server(dir.path(), "loose")}}));
    gw.wait_for_log("unpinned launcher").await;
    assert!(gw.log().contains("`some-server`, which names no version"), "{}", gw.log());
    let key = gw.create_key("operator", &[]);
    let m = Mcp::stateless(gw.url("/mcp/loose"), &key);
    assert_eq!(tool_text(&m.call_tool("echo", json!({"text": "runs"})).await), "runs");
}

#[tokio::test]
async fn a_reload_to_strict_stops_and_refuses_an_unpinned_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = json!({"loose": fake_npx_server(dir.path(), "loose"), "plain": fixture_echo("plain")});
    let gw = Gateway::start(json!({"mcpServers": servers}));
    let key = gw.create_key("operator", &[]);
    let loose = Mcp::stateless(gw.url("/mcp/loose"), &key);
    let plain = Mcp::stateless(gw.url("/mcp/plain"), &key);
    assert_eq!(tool_text(&loose.call_tool("echo", json!({"text": "warned"})).await), "warned");
    assert_eq!(tool_text(&plain.call_tool("echo", json!({"text": "a"})).await), "a");
    let plain_before = gw.child_tagged("plain").expect("plain runs");

    gw.write_config(&json!({"supply_chain": "strict", "mcpServers": servers}));
    let rpc = eventually(WAIT, "the unpinned server to be refused", || async {
        let rpc = loose.call_tool("echo", json!({"text": "x"})).await;
        rpc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused by the supply-chain policy"))
            .then_some(rpc)
    })
    .await;
    assert!(rpc["error"]["message"].as_str().unwrap().contains("supply_chain: strict"), "{rpc}");
    eventually(WAIT, "the refused server's process to exit", || async {
        gw.child_tagged("loose").is_none().then_some(())
    })
    .await;
    // The pinned one kept its process.
    assert_eq!(tool_text(&plain.call_tool("echo", json!({"text": "b"})).await), "b");
    assert_eq!(gw.child_tagged("plain").map(|p| p.pid), Some(plain_before.pid));

    // Back to warn: it runs again.
    gw.write_config(&json!({"supply_chain": "warn", "mcpServers": servers}));
    eventually(WAIT, "the server to run again", || async {
        let rpc = loose.call_tool("echo", json!({"text": "again"})).await;
        (rpc["result"]["content"][0]["text"] == "again").then_some(())
    })
    .await;
}

/// A stdio server script that runs the echo fixture; `marker` changes its
/// bytes.
fn write_server_script(path: &Path, marker: &str) {
    let text = format!("#!/bin/sh\n# {marker}\nexec {:?} echo --stdio\n", fixture_bin());
    std::fs::write(path, text).expect("write the server script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test]
async fn a_sha256_pin_starts_only_the_pinned_file_at_every_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("server.sh");
    write_server_script(&script, "first");
    let digest = sha256_hex(&script);
    let gw = Gateway::start(json!({
        "upstream": {"restart_backoff": "10ms", "restart_backoff_max": "20ms"},
        "mcpServers": {
            "pinned": {"command": script, "sha256": digest, "env": {"BASTION_IT_SERVER": "pinned"}},
            "tampered": {"command": script, "sha256": "0".repeat(64), "env": {"BASTION_IT_SERVER": "tampered"}}
        }
    }));
    let key = gw.create_key("operator", &[]);

    // The matching pin starts.
    let pinned = Mcp::stateless(gw.url("/mcp/pinned"), &key);
    assert_eq!(tool_text(&pinned.call_tool("echo", json!({"text": "one"})).await), "one");

    // The mismatching one is refused, with a clear error and nothing secret.
    let tampered = Mcp::stateless(gw.url("/mcp/tampered"), &key);
    let rpc = tampered.call_tool("echo", json!({"text": "x"})).await;
    let message = rpc["error"]["message"].as_str().unwrap_or_else(|| panic!("an error: {rpc}"));
    assert!(
        message.contains("refused by the supply-chain policy") && message.contains("does not match its sha256 pin"),
        "{rpc}"
    );
    assert!(!message.contains(&digest) && !message.contains(script.to_str().unwrap()), "{rpc}");
    assert!(gw.child_tagged("tampered").is_none(), "never started");
    gw.wait_for_log("executable refused by its sha256 pin").await;
    let records = refusals(&gw, 1).await;
    assert_eq!((&records[0]["server"], &records[0]["policy"]), (&json!("tampered"), &json!("supply_chain:sha256")));

    // The file changes while the pinned server runs: its next start (after
    // it stopped) is refused.
    write_server_script(&script, "second");
    let guard = gw.child_tagged("pinned").expect("the pinned server runs");
    kill(Pid::from_raw(guard.pid as i32), Signal::SIGTERM).expect("stop the server's guard");
    let rpc = eventually(WAIT, "the restart to be refused", || async {
        let rpc = pinned.call_tool("echo", json!({"text": "two"})).await;
        rpc["error"]["message"].as_str().is_some_and(|m| m.contains("does not match its sha256 pin")).then_some(rpc)
    })
    .await;
    assert!(rpc["error"]["message"].as_str().unwrap().contains("refused by the supply-chain policy"), "{rpc}");
    assert!(gw.child_tagged("pinned").is_none(), "not started again");

    // Pinning the new digest (a reload) lets it start again.
    gw.write_config(&json!({
        "upstream": {"restart_backoff": "10ms", "restart_backoff_max": "20ms"},
        "mcpServers": {
            "pinned": {"command": script, "sha256": sha256_hex(&script), "env": {"BASTION_IT_SERVER": "pinned"}}
        }
    }));
    eventually(WAIT, "the newly pinned file to start", || async {
        let rpc = pinned.call_tool("echo", json!({"text": "three"})).await;
        (rpc["result"]["content"][0]["text"] == "three").then_some(())
    })
    .await;
}
