//! Who may use what: roles × groups for list, call, read and get, extra
//! Cedar policies, re-authorization of open sessions, look-alike names,
//! methods no rule covers, and `bastion policy test`.

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, eventually, fixture_bin};

const VERSION: &str = "2025-11-25";

fn everything() -> Value {
    json!({"command": fixture_bin(), "args": ["everything", "--stdio"]})
}

/// Two servers, each in its own group, and one user of each role in `dev`.
fn config() -> Value {
    json!({
        "mcpServers": {"inside": everything(), "outside": everything()},
        "groups": {"dev": ["inside"], "ops": ["outside"]},
        "users": {
            "carol": {"role": "viewer", "groups": ["dev"]},
            "alice": {"role": "user", "groups": ["dev"]},
            "mike": {"role": "manager", "groups": ["dev"]},
            "root": {"role": "admin"}
        }
    })
}

fn error_code(rpc: &Value) -> Option<i64> {
    rpc.get("error").and_then(|e| e.get("code")).and_then(Value::as_i64)
}

fn names(items: &[Value], field: &str) -> Vec<String> {
    let mut v: Vec<String> = items.iter().filter_map(|i| i[field].as_str().map(str::to_string)).collect();
    v.sort();
    v
}

/// What one user may do on one server, as seen through `/mcp`.
struct Seen {
    lists_tools: bool,
    lists_prompts: bool,
    lists_resources: bool,
    calls: bool,
    gets: bool,
    reads: bool,
}

async fn observe(mcp: &Mcp, server: &str) -> Seen {
    let prefix = format!("{server}__");
    let (tools, _) = mcp.list_all("tools/list", "tools").await;
    let (prompts, _) = mcp.list_all("prompts/list", "prompts").await;
    let (resources, _) = mcp.list_all("resources/list", "resources").await;
    let call = mcp.call_tool(&format!("{server}__test_simple_text"), json!({})).await;
    let get = mcp.call("prompts/get", json!({"name": format!("{server}__test_simple_prompt")})).await;
    let read = mcp.call("resources/read", json!({"uri": format!("{server}+test://static-text")})).await;
    for rpc in [&call, &get, &read] {
        if let Some(code) = error_code(rpc) {
            assert_eq!(code, -32003, "a refusal is FORBIDDEN, not another error: {rpc}");
        }
    }
    Seen {
        lists_tools: names(&tools, "name").iter().any(|n| n.starts_with(&prefix)),
        lists_prompts: names(&prompts, "name").iter().any(|n| n.starts_with(&prefix)),
        lists_resources: names(&resources, "uri").iter().any(|n| n.starts_with(&format!("{server}+"))),
        calls: call.get("result").is_some(),
        gets: get.get("result").is_some(),
        reads: read.get("result").is_some(),
    }
}

#[tokio::test]
async fn roles_and_groups_decide_list_call_read_and_get() {
    let gw = Gateway::start(config());
    // (user, in-group server, out-of-group server): lists, call, get, read.
    let expected = [
        ("carol", (true, false, true, true), (false, false, false, false)),
        ("alice", (true, true, true, true), (false, false, false, false)),
        ("mike", (true, true, true, true), (false, false, false, false)),
        ("root", (true, true, true, true), (true, true, true, true)),
    ];
    for (user, inside, outside) in expected {
        let key = gw.create_key(user, &[]);
        let mcp = Mcp::session(gw.url("/mcp"), &key, VERSION).await;
        for (server, (lists, calls, gets, reads)) in [("inside", inside), ("outside", outside)] {
            let seen = observe(&mcp, server).await;
            let what = format!("{user} on {server}");
            assert_eq!(seen.lists_tools, lists, "{what}: tools listed");
            assert_eq!(seen.lists_prompts, lists, "{what}: prompts listed");
            assert_eq!(seen.lists_resources, lists, "{what}: resources listed");
            assert_eq!(seen.calls, calls, "{what}: tool called");
            assert_eq!(seen.gets, gets, "{what}: prompt got");
            assert_eq!(seen.reads, reads, "{what}: resource read");
        }
    }
    // The endpoint of another group, or of a server outside its groups,
    // opens no session for a member of dev.
    let alice = gw.create_key("alice", &[]);
    for path in ["/mcp/ops", "/mcp/outside"] {
        let reply = initialize(&gw, path, &alice).await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.text);
        assert_eq!(error_code(&reply.rpc()), Some(-32003), "{path}: {}", reply.text);
    }
}

async fn initialize(gw: &Gateway, path: &str, key: &str) -> crate::harness::Reply {
    let mut raw = Mcp::with_session(gw.url(path), key, "");
    raw.session = None;
    raw.post(&json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    }))
    .await
}

#[tokio::test]
async fn a_user_without_a_role_is_refused_everything() {
    let gw = Gateway::start(config());
    let key = gw.create_bare_key("nobody", &[]);
    let reply = initialize(&gw, "/mcp", &key).await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(error_code(&reply.rpc()), Some(-32003), "{}", reply.text);
    // The refused session is a denial in the audit trail.
    crate::harness::eventually(crate::harness::WAIT, "the refused initialize audited", || async {
        crate::harness::audit_export(&gw, &["--user", "nobody"])
            .iter()
            .any(|r| r["method"] == "initialize" && r["outcome"] == "denied" && r["error_code"] == -32003)
            .then_some(())
    })
    .await;
    // Stateless requests too.
    let mcp = Mcp::stateless(gw.url("/mcp"), &key);
    for (method, params) in
        [("tools/list", json!({})), ("tools/call", json!({"name": "inside__test_simple_text", "arguments": {}}))]
    {
        let reply = mcp.request(method, params).await;
        assert_eq!(error_code(&reply.rpc()), Some(-32003), "{method}: {}", reply.text);
    }
}

#[tokio::test]
async fn names_are_matched_exactly() {
    let gw = Gateway::start(config());
    let key = gw.create_key("alice", &[]);
    let mcp = Mcp::session(gw.url("/mcp"), &key, VERSION).await;
    assert!(tool_text_ok(&mcp.call_tool("inside__test_simple_text", json!({})).await));
    for look_alike in [
        "Inside__test_simple_text",
        "INSIDE__test_simple_text",
        "inside__Test_simple_text",
        "\u{0456}nside__test_simple_text", // Cyrillic і
        "inside__test_simple_t\u{0435}xt", // Cyrillic е
        "\u{ff49}nside__test_simple_text", // full-width i
        "inside\u{200d}__test_simple_text",
        "inside__test_simple_text ",
        " inside__test_simple_text",
        "outside__test_simple_text",
        "inside___test_simple_text",
    ] {
        let rpc = mcp.call_tool(look_alike, json!({})).await;
        assert!(rpc.get("result").is_none_or(|r| r["isError"] == true), "{look_alike:?} reached a tool: {rpc}");
        assert!(rpc.get("error").is_some() || rpc["result"]["isError"] == true, "{look_alike:?}: {rpc}");
    }
}

fn tool_text_ok(rpc: &Value) -> bool {
    rpc.get("result").is_some_and(|r| r["isError"] != true)
}

#[tokio::test]
async fn methods_no_rule_covers_are_refused_not_passed_through() {
    let gw = Gateway::start(config());
    let key = gw.create_key("root", &[]);
    // On one server's endpoint, unknown methods used to pass through.
    let mcp = Mcp::session(gw.url("/mcp/inside"), &key, VERSION).await;
    for method in ["tasks/list", "tools/execute", "Tools/call", "admin/shutdown", "x"] {
        let rpc = mcp.call(method, json!({})).await;
        assert_eq!(error_code(&rpc), Some(-32601), "{method}: {rpc}");
    }
    assert!(mcp.call("ping", json!({})).await.get("result").is_some());
}

#[tokio::test]
async fn extra_policies_add_conditions_on_arguments_and_grants() {
    let gw = Gateway::start(config());
    std::fs::write(
        gw.dir().join("extra.cedar"),
        r#"
// Nobody calls the logging tool.
forbid(principal, action == Bastion::Action::"call", resource == Bastion::Tool::"inside__test_tool_with_logging");
// bob has no group, but may use the outside server.
permit(principal == Bastion::User::"bob", action, resource in Bastion::Server::"outside");
// echo-like calls only with short arguments.
forbid(principal, action == Bastion::Action::"call", resource == Bastion::Tool::"inside__test_sampling")
  unless { context.arguments has prompt && context.arguments.prompt like "ok*" };
"#,
    )
    .expect("policy file");
    let mut cfg = config();
    cfg["policy"] = json!({"files": ["extra.cedar"]});
    cfg["users"]["bob"] = json!({"role": "user"});
    gw.write_config(&cfg);
    gw.wait_for_log("configuration applied").await;

    // bob's grant is a policy's: his first session, before any list was
    // fetched, already opens.
    let bob = Mcp::session(gw.url("/mcp"), &gw.create_key("bob", &[]), VERSION).await;
    let tools = bob.tool_names().await;
    assert!(tools.iter().all(|t| t.starts_with("outside__")) && !tools.is_empty(), "{tools:?}");
    assert!(tool_text_ok(&bob.call_tool("outside__test_simple_text", json!({})).await));

    let alice = Mcp::session(gw.url("/mcp"), &gw.create_key("alice", &[]), VERSION).await;
    let tools = alice.tool_names().await;
    assert!(
        !tools.contains(&"inside__test_tool_with_logging".to_string()),
        "forbidden tools are not listed: {tools:?}"
    );
    assert!(tools.contains(&"inside__test_simple_text".to_string()));
    let rpc = alice.call_tool("inside__test_tool_with_logging", json!({})).await;
    assert_eq!(error_code(&rpc), Some(-32003), "{rpc}");
    // An argument condition: denied without the right argument.
    let rpc = alice.call_tool("inside__test_sampling", json!({"prompt": "no"})).await;
    assert_eq!(error_code(&rpc), Some(-32003), "{rpc}");

    // Editing a policy file alone reloads it.
    std::fs::write(
        gw.dir().join("extra.cedar"),
        std::fs::read_to_string(gw.dir().join("extra.cedar")).expect("policy file")
            + "forbid(principal == Bastion::User::\"bob\", action, resource == Bastion::Tool::\"outside__test_simple_text\");\n",
    )
    .expect("policy file");
    eventually(std::time::Duration::from_secs(10), "the edited policy file to apply", || async {
        (error_code(&bob.call_tool("outside__test_simple_text", json!({})).await) == Some(-32003)).then_some(())
    })
    .await;

    // A broken policy file on reload keeps the running policies.
    std::fs::write(gw.dir().join("extra.cedar"), "permit(principal, action, resource) when { principal.nope };")
        .expect("policy file");
    gw.sighup();
    gw.wait_for_log("policies not reloaded").await;
    let log = gw.log();
    assert!(log.contains("extra.cedar"), "the error names the file: {log}");
    for check in [&["config", "check"][..], &["policy", "check"][..]] {
        let out = gw.cli(check);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("extra.cedar:1:"), "{check:?} names file and line: {err}");
    }
    let rpc = alice.call_tool("inside__test_tool_with_logging", json!({})).await;
    assert_eq!(error_code(&rpc), Some(-32003), "the old forbid still holds: {rpc}");
}

#[tokio::test]
async fn access_changes_take_effect_on_open_sessions() {
    let gw = Gateway::start(config());
    // alice lives in the store this time.
    let mut cfg = config();
    cfg["users"].as_object_mut().expect("users").remove("alice");
    gw.write_config(&cfg);
    gw.wait_for_log("configuration applied").await;
    let out = gw.cli(&["users", "add", "alice", "--role", "user", "--group", "dev"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = gw.create_bare_key("alice", &[]);
    let mcp = Mcp::session(gw.url("/mcp/dev"), &key, VERSION).await;
    assert!(tool_text_ok(&mcp.call_tool("inside__test_simple_text", json!({})).await));

    // Role changed to viewer: the next call is refused.
    let out = gw.cli(&["users", "set", "alice", "--role", "viewer"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(std::time::Duration::from_secs(10), "the role change to apply", || async {
        (error_code(&mcp.call_tool("inside__test_simple_text", json!({})).await) == Some(-32003)).then_some(())
    })
    .await;
    assert!(mcp.call("resources/read", json!({"uri": "inside+test://static-text"})).await.get("result").is_some());

    // Group removed: the open stream of the session is closed, and the
    // session with it.
    let (seen, reader) = mcp.open_stream().await;
    let out = gw.cli(&["users", "set", "alice", "--groups", ""]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::timeout(std::time::Duration::from_secs(10), reader)
        .await
        .expect("the stream of a user who lost access is closed")
        .expect("reader");
    let _ = seen;
    let reply = mcp.request("tools/list", json!({})).await;
    assert_eq!(reply.status, 404, "the session is gone: {}", reply.text);
}

#[tokio::test]
async fn a_config_reload_that_removes_a_group_closes_streams() {
    let gw = Gateway::start(config());
    let key = gw.create_key("alice", &[]);
    let mcp = Mcp::session(gw.url("/mcp/dev"), &key, VERSION).await;
    let (_seen, reader) = mcp.open_stream().await;
    let mut cfg = config();
    cfg["users"]["alice"]["groups"] = json!([]);
    gw.write_config(&cfg);
    tokio::time::timeout(std::time::Duration::from_secs(10), reader)
        .await
        .expect("the stream of a user who lost access is closed")
        .expect("reader");
    let reply = initialize(&gw, "/mcp", &key).await;
    assert_eq!(reply.status, 403, "{}", reply.text);
}

#[tokio::test]
async fn policy_test_prints_the_decision_and_its_policies() {
    let gw = Gateway::start(config());
    let run = |args: &[&str]| {
        let mut all = vec!["policy", "test"];
        all.extend_from_slice(args);
        let out = gw.cli(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) =
        run(&["--user", "alice", "--server", "inside", "--tool", "test_simple_text", "--args", "{}"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("allow"), "{out}");
    assert!(out.contains("builtin"), "names the deciding policy: {out}");
    let (code, out, _) = run(&["--user", "carol", "--server", "inside", "--tool", "test_simple_text"]);
    assert_eq!(code, Some(1), "a denial exits 1: {out}");
    assert!(out.starts_with("deny"), "{out}");
    let (code, out, _) = run(&["--user", "alice", "--server", "outside", "--tool", "test_simple_text"]);
    assert_eq!(code, Some(1), "{out}");
    let (code, _, err) = run(&["--user", "alice", "--server", "inside", "--tool", "x", "--args", "{not json"]);
    assert_eq!(code, Some(2), "bad input is a usage error: {err}");
}
