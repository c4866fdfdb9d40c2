//! The secrets vault through the real binary: `bastion secrets`, a
//! server's `${server.NAME}` and `${env.NAME}` reaching server-everything's
//! environment, a missing secret named to the caller, rotation of the
//! master key while calls run, and no value in any log, listing or file.

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, Options, tool_text, tools};
use crate::users_cli::cli_with_input;

const CANARY: &str = "canary-ghp-7Qm2xV9kLp4Rt8Ws";
const GATEWAY_ONLY: (&str, &str) = ("BASTION_TEST_PROXY", "http://proxy.internal:3128");

fn everything(env: Value) -> Value {
    let t = tools();
    json!({"command": t.node, "args": [t.everything_js, "stdio"], "env": env})
}

fn start() -> Gateway {
    let config = json!({
        "mcpServers": {
            "gh": everything(json!({
                "GH_TOKEN": "${server.GH_TOKEN}",
                "PROXY": "${env.BASTION_TEST_PROXY}",
                "PRICE": "$5 and $${literal}"
            })),
            "later": everything(json!({"GH_TOKEN": "${server.GH_TOKEN}"}))
        },
        "upstream": {"restart_backoff": "100ms"}
    });
    Gateway::start_with(
        config,
        Options { env: vec![(GATEWAY_ONLY.0.into(), GATEWAY_ONLY.1.into())], ..Options::default() },
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn env_of(rpc: &Value) -> Value {
    let t = tool_text(rpc);
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("get-env is not JSON ({e}): {rpc}"))
}

/// Every file under `dir`, searched for `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(p);
            }
        }
    }
    found
}

#[tokio::test]
async fn server_secrets_reach_the_server_and_nothing_else() {
    let gw = start();
    let key = gw.create_key("admin", &[]);
    let m = Mcp::stateless(gw.url("/mcp"), &key);

    // Not set yet: the caller learns which name to set, nothing more.
    let rpc = m.call_tool("gh__get-env", json!({})).await;
    let message = rpc["error"]["message"].as_str().unwrap_or_else(|| panic!("an error: {rpc}")).to_string();
    assert!(message.contains("GH_TOKEN") && message.contains("bastion secrets set --server gh GH_TOKEN"), "{message}");
    assert!(!message.contains(GATEWAY_ONLY.1), "{message}");

    // Set from standard input, never from the command line.
    let out = cli_with_input(&gw, &["secrets", "set", "--server", "gh", "GH_TOKEN"], &format!("{CANARY}\n"));
    assert!(out.status.success(), "secrets set: {}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(CANARY) && !text(&out.stderr).contains(CANARY));
    let out = cli_with_input(&gw, &["secrets", "set", "--server", "nope", "GH_TOKEN"], "x\n");
    assert!(!out.status.success() && text(&out.stderr).contains("no server named"), "{}", text(&out.stderr));
    let out = cli_with_input(&gw, &["secrets", "set", "--server", "gh", "1BAD"], "x\n");
    assert!(!out.status.success() && text(&out.stderr).contains("not a valid secret name"));

    // The server starts once it is set (no restart backoff for a missing
    // secret) and sees exactly what its config grants.
    let rpc = m.call_tool("gh__get-env", json!({})).await;
    let env = env_of(&rpc);
    assert_eq!(env["GH_TOKEN"], CANARY, "{env}");
    assert_eq!(env["PROXY"], GATEWAY_ONLY.1, "{env}");
    assert_eq!(env["PRICE"], "$5 and ${literal}", "{env}");
    assert!(env.get(GATEWAY_ONLY.0).is_none(), "the gateway's own variable is not inherited: {env}");

    // Listings show names only.
    let out = gw.cli(&["secrets", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0]["owner_kind"].as_str(), rows[0]["owner"].as_str()), (Some("server"), Some("gh")));
    assert_eq!(rows[0]["name"], "GH_TOKEN");
    let table = gw.cli(&["secrets", "list"]);
    assert!(text(&table.stdout).contains("GH_TOKEN") && !text(&table.stdout).contains(CANARY));

    // Rotation while calls run: every call succeeds; a server started
    // after it reads its re-wrapped value.
    let out = cli_with_input(&gw, &["secrets", "set", "--server", "later", "GH_TOKEN"], &format!("{CANARY}-later"));
    assert!(out.status.success(), "secrets set: {}", text(&out.stderr));
    let caller = {
        let m = Mcp::stateless(gw.url("/mcp"), &key);
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..40 {
                let rpc = m.call_tool("gh__echo", json!({"message": "x"})).await;
                if rpc.get("error").is_some() {
                    failures.push(rpc);
                }
            }
            failures
        })
    };
    let rotated = gw.cli(&["secrets", "rotate-master"]);
    assert!(rotated.status.success(), "rotate-master: {}", text(&rotated.stderr));
    assert!(text(&rotated.stderr).contains("2 re-wrapped"), "{}", text(&rotated.stderr));
    let failures = caller.await.unwrap();
    assert!(failures.is_empty(), "calls failed during the rotation: {failures:?}");
    let rpc = m.call_tool("later__get-env", json!({})).await;
    assert_eq!(env_of(&rpc)["GH_TOKEN"], format!("{CANARY}-later"), "a server started after the rotation: {rpc}");

    // Nothing on disk or in the log holds the value in clear.
    let data = gw.dir().join("data");
    assert!(data.join("master.key").exists());
    assert_eq!(files_containing(&data, CANARY), Vec::<std::path::PathBuf>::new());
    assert!(!gw.log().contains(CANARY), "the value is in the gateway's log");

    // Removal.
    let out = gw.cli(&["secrets", "rm", "--server", "gh", "GH_TOKEN"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = gw.cli(&["secrets", "rm", "--server", "gh", "GH_TOKEN"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn a_readable_master_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let gw = Gateway::start(json!({"mcpServers": {}}));
    let key_file = gw.dir().join("data").join("master.key");
    assert!(key_file.exists(), "the gateway made its master key at start");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = gw.cli(&["secrets", "list"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a world-readable key file was accepted");
    assert!(err.contains("master.key") && err.contains("644") && err.contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn references_outside_env_and_headers_are_refused() {
    let gw = Gateway::start(json!({"mcpServers": {}}));
    let bad = gw.dir().join("bad.json");
    std::fs::write(&bad, json!({"mcpServers": {"a": {"command": "x", "args": ["--token=${server.T}"]}}}).to_string())
        .unwrap();
    let out = gw.cli(&["config", "check", bad.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("mcpServers.a.args[0]") && err.contains("env"), "{err}");
}
