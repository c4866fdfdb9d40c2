//! The secrets vault through the real binary: `bastion secrets`, a
//! server's `${server.NAME}` and `${env.NAME}` reaching server-everything's
//! environment, each user's `${user.NAME}` reaching that user's own process
//! (or a remote server's headers for that user's calls), a missing secret
//! named to the caller, rotation of the master key while calls run, and no
//! value in any log, listing or file.

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

/// The processes of server-everything (not the guards Bastion starts them
/// under) whose environment holds `mark`, with the value of `var` in each
/// (`None` where it is not set).
fn processes_marked(mark: &str, var: &str) -> Vec<(u32, Option<String>)> {
    let mut found = Vec::new();
    let everything = tools().everything_js.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() < 2 || args[1] != everything.as_bytes() {
            continue;
        }
        let Ok(environ) = std::fs::read(e.path().join("environ")) else { continue };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if !vars.iter().any(|v| *v == format!("MARK={mark}").as_bytes()) {
            continue;
        }
        let prefix = format!("{var}=");
        let value = vars
            .iter()
            .find_map(|v| v.strip_prefix(prefix.as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        found.push((pid, value));
    }
    found.sort();
    found
}

/// Polls until `f` holds, for at most 20 seconds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn each_user_has_their_own_process_with_their_own_secret() {
    const ALICE: &str = "canary-alice-ghp-Q8sV2mT6xR1w";
    const BOB: &str = "canary-bob-ghp-L3kP9nZ5cY7d";
    let mark = format!("per-user-{}", std::process::id());
    let config = json!({
        "mcpServers": {
            "gh": everything(json!({
                "GITHUB_TOKEN": "${user.GITHUB_TOKEN}",
                "PROXY": "${env.BASTION_TEST_PROXY}",
                "MARK": mark
            })),
            "shared": everything(json!({"MARK": format!("{mark}-shared")}))
        },
        "upstream": {"restart_backoff": "100ms", "idle_timeout": "2s"}
    });
    let gw = Gateway::start_with(
        config,
        Options { env: vec![(GATEWAY_ONLY.0.into(), GATEWAY_ONLY.1.into())], ..Options::default() },
    );
    let mut keys = std::collections::BTreeMap::new();
    for user in ["alice", "bob", "carol"] {
        keys.insert(user, gw.create_key(user, &[]));
    }
    for (user, value) in [("alice", ALICE), ("bob", BOB)] {
        let out = cli_with_input(&gw, &["secrets", "set", "--user", user, "GITHUB_TOKEN"], &format!("{value}\n"));
        assert!(out.status.success(), "secrets set: {}", text(&out.stderr));
    }

    // Each sees their own token, in a session and statelessly, and never
    // the other's or anything of the gateway's own environment.
    let alice = Mcp::session(gw.url("/mcp"), &keys["alice"], "2025-11-25").await;
    let bob = Mcp::stateless(gw.url("/mcp"), &keys["bob"]);
    for _ in 0..3 {
        let (a, b) = tokio::join!(alice.call_tool("gh__get-env", json!({})), bob.call_tool("gh__get-env", json!({})));
        let (a_env, b_env) = (env_of(&a), env_of(&b));
        assert_eq!(a_env["GITHUB_TOKEN"], ALICE, "{a_env}");
        assert_eq!(b_env["GITHUB_TOKEN"], BOB, "{b_env}");
        assert!(!a.to_string().contains(BOB) && !b.to_string().contains(ALICE));
        for env in [&a_env, &b_env] {
            assert_eq!(env["PROXY"], GATEWAY_ONLY.1, "granted explicitly: {env}");
            assert!(env.get(GATEWAY_ONLY.0).is_none(), "the gateway's own variable is not inherited: {env}");
        }
    }
    assert!(alice.tool_names().await.iter().any(|t| t == "gh__get-env"));

    // One process per user for `gh`, one shared process for `shared`.
    let shared = Mcp::stateless(gw.url("/mcp"), &keys["carol"]);
    let rpc = shared.call_tool("shared__echo", json!({"message": "x"})).await;
    assert!(rpc.get("result").is_some(), "{rpc}");
    let rpc = alice.call_tool("shared__echo", json!({"message": "y"})).await;
    assert!(rpc.get("result").is_some(), "{rpc}");
    let gh = processes_marked(&mark, "GITHUB_TOKEN");
    let tokens: Vec<Option<String>> = gh.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(gh.len(), 2, "one process per user: {gh:?}");
    assert!(tokens.contains(&Some(ALICE.into())) && tokens.contains(&Some(BOB.into())), "{gh:?}");
    assert_eq!(processes_marked(&format!("{mark}-shared"), "GITHUB_TOKEN").len(), 1, "one shared process");

    // A user without the secret learns its name and nothing else, and no
    // process is started for them.
    let rpc = shared.call_tool("gh__get-env", json!({})).await;
    let message = rpc["error"]["message"].as_str().unwrap_or_else(|| panic!("an error: {rpc}")).to_string();
    assert!(message.contains("GITHUB_TOKEN") && message.contains("--user carol"), "{message}");
    for leak in [ALICE, BOB, GATEWAY_ONLY.1, "alice", "bob"] {
        assert!(!message.contains(leak), "{leak} in {message}");
    }
    assert_eq!(processes_marked(&mark, "GITHUB_TOKEN").len(), 2);
    // Set now, it works at once (no restart backoff for a missing secret).
    let out = cli_with_input(&gw, &["secrets", "set", "--user", "carol", "GITHUB_TOKEN"], "carol-token\n");
    assert!(out.status.success());
    assert_eq!(env_of(&shared.call_tool("gh__get-env", json!({})).await)["GITHUB_TOKEN"], "carol-token");

    // Idle processes are stopped, each on its own; the next call starts
    // the user's process again.
    eventually("the per-user processes stop when idle", || processes_marked(&mark, "GITHUB_TOKEN").is_empty()).await;
    assert_eq!(env_of(&bob.call_tool("gh__get-env", json!({})).await)["GITHUB_TOKEN"], BOB);
    assert_eq!(
        processes_marked(&mark, "GITHUB_TOKEN").iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
        vec![Some(BOB.to_string())]
    );

    // The values are nowhere in clear: not on disk, not in the log.
    let data = gw.dir().join("data");
    for canary in [ALICE, BOB] {
        assert_eq!(files_containing(&data, canary), Vec::<std::path::PathBuf>::new());
        assert!(!gw.log().contains(canary), "{canary} is in the gateway's log");
    }
}

#[tokio::test]
async fn a_users_secret_in_headers_reaches_a_remote_server_for_that_user_only() {
    const ALICE: &str = "canary-alice-api-5Tz8Kq2Vw";
    const BOB: &str = "canary-bob-api-9Hd4Lm7Px";
    let server = crate::upstream_transports::SseServer::start_with(&["--transport", "streamable-http"]);
    let gw = Gateway::start(json!({
        "mcpServers": {
            "api": {"url": server.url, "headers": {"X-Api-Key": "${user.API_KEY}", "X-Team": "platform"}}
        }
    }));
    let alice_key = gw.create_key("alice", &[]);
    let bob_key = gw.create_key("bob", &[]);
    for (user, value) in [("alice", ALICE), ("bob", BOB)] {
        let out = cli_with_input(&gw, &["secrets", "set", "--user", user, "API_KEY"], value);
        assert!(out.status.success(), "secrets set: {}", text(&out.stderr));
    }
    let alice = Mcp::stateless(gw.url("/mcp"), &alice_key);
    let bob = Mcp::session(gw.url("/mcp"), &bob_key, "2025-11-25").await;
    for _ in 0..3 {
        let (a, b) = tokio::join!(
            alice.call_tool("api__request_headers", json!({})),
            bob.call_tool("api__request_headers", json!({}))
        );
        let (a, b): (Value, Value) = (
            serde_json::from_str(&tool_text(&a)).unwrap_or_else(|_| panic!("{a}")),
            serde_json::from_str(&tool_text(&b)).unwrap_or_else(|_| panic!("{b}")),
        );
        assert_eq!((a["x-api-key"].as_str(), a["x-team"].as_str()), (Some(ALICE), Some("platform")), "{a}");
        assert_eq!(b["x-api-key"], BOB, "{b}");
        // the client's own credential never goes upstream
        for h in [&a, &b] {
            assert!(!h.to_string().contains(&alice_key) && !h.to_string().contains(&bob_key), "{h}");
        }
    }
    // A user with no value is refused with the name to set.
    let carol = Mcp::stateless(gw.url("/mcp"), &gw.create_key("carol", &[]));
    let rpc = carol.call_tool("api__request_headers", json!({})).await;
    let message = rpc["error"]["message"].as_str().unwrap_or_else(|| panic!("an error: {rpc}")).to_string();
    assert!(message.contains("API_KEY") && message.contains("--user carol"), "{message}");
    assert!(!gw.log().contains(ALICE) && !gw.log().contains(BOB));
}

#[tokio::test]
async fn a_user_refused_a_server_never_starts_an_instance_of_it() {
    let mark = format!("refused-{}", std::process::id());
    let gw = Gateway::start(json!({
        "mcpServers": {
            "gh": everything(json!({"GITHUB_TOKEN": "${user.GITHUB_TOKEN}", "MARK": mark})),
            "time": everything(json!({}))
        },
        "groups": {"team": ["gh"], "others": ["time"]},
        "users": {"dave": {"role": "user", "groups": ["others"]}, "erin": {"role": "viewer", "groups": ["team"]}}
    }));
    for user in ["dave", "erin"] {
        let out = cli_with_input(&gw, &["secrets", "set", "--user", user, "GITHUB_TOKEN"], "a-token\n");
        assert!(out.status.success(), "secrets set: {}", text(&out.stderr));
    }
    // Outside the server's group, and a viewer inside it: both refused
    // before anything about the tool is looked up, in either era.
    for user in ["dave", "erin"] {
        let key = gw.create_key(user, &[]);
        let stateless = Mcp::stateless(gw.url("/mcp"), &key);
        let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
        for rpc in
            [stateless.call_tool("gh__get-env", json!({})).await, session.call_tool("gh__get-env", json!({})).await]
        {
            assert!(rpc.get("error").is_some(), "{user} is refused: {rpc}");
        }
    }
    assert_eq!(processes_marked(&mark, "GITHUB_TOKEN"), vec![], "no instance started for a refused user");
}

#[tokio::test]
async fn users_instances_beyond_the_cap_take_the_place_of_idle_ones() {
    let mark = format!("capped-{}", std::process::id());
    let gw = Gateway::start(json!({
        "mcpServers": {"gh": everything(json!({"GITHUB_TOKEN": "${user.GITHUB_TOKEN}", "MARK": mark}))},
        "upstream": {"max_user_instances": 1}
    }));
    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let out = cli_with_input(&gw, &["secrets", "set", "--user", user, "GITHUB_TOKEN"], &format!("{user}-token\n"));
        assert!(out.status.success(), "secrets set: {}", text(&out.stderr));
        clients.push((user, Mcp::stateless(gw.url("/mcp"), &gw.create_key(user, &[]))));
    }
    for round in 0..2 {
        for (user, client) in &clients {
            let env = env_of(&client.call_tool("gh__get-env", json!({})).await);
            assert_eq!(env["GITHUB_TOKEN"], format!("{user}-token"), "round {round}");
            // Only the last user's process runs: the other one's was
            // stopped to make room.
            let running = processes_marked(&mark, "GITHUB_TOKEN");
            eventually("one process at a time", || processes_marked(&mark, "GITHUB_TOKEN").len() == 1).await;
            assert!(running.iter().any(|(_, t)| t.as_deref() == Some(&format!("{user}-token"))), "{running:?}");
        }
    }
    assert!(gw.log().contains("stopping a user's idle instance to make room"));
}
