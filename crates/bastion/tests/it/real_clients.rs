//! The official Python SDK, in both protocol eras and over legacy SSE,
//! talking through Bastion to server-everything, mcp-server-time and the
//! fixture's everything server.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::harness::{Mcp, real, run_client, strings};

const SESSION: &str = "session_client.py";
const STATELESS: &str = "stateless_client.py";
const LEGACY: &str = "legacy_sse_client.py";

fn expected_version(script: &str) -> &'static str {
    if script == STATELESS { "2026-07-28" } else { "2025-11-25" }
}

fn assert_no_duplicates(items: &[String], what: &str) {
    let set: BTreeSet<&String> = items.iter().collect();
    assert_eq!(set.len(), items.len(), "{what} listed more than once: {items:?}");
}

#[tokio::test]
async fn tools_are_listed_prefixed_on_mcp_and_unprefixed_per_server() {
    let s = real();
    let all = s.gw.url("/mcp");
    let time = s.gw.url("/mcp/time");
    for script in [SESSION, STATELESS] {
        let (on_all, on_time) = tokio::join!(
            run_client(script, &all, &s.alice, &["--action", "list-tools"]),
            run_client(script, &time, &s.alice, &["--action", "list-tools"]),
        );
        let out = on_all.ok();
        assert_eq!(out["protocolVersion"], expected_version(script), "{script}");
        let tools = strings(out, "tools");
        for name in [
            "everything__echo",
            "everything__get-env",
            "everything__trigger-long-running-operation",
            "time__get_current_time",
            "time__convert_time",
            "echo__echo",
            "remote__test_simple_text",
        ] {
            assert!(tools.iter().any(|t| t == name), "{script}: {name} missing from /mcp tools: {tools:?}");
        }
        assert!(tools.iter().all(|t| t.contains("__")), "{script}: unprefixed tool on /mcp: {tools:?}");
        assert_no_duplicates(&tools, "tool");
        // server-everything asks for the roots when it starts: Bastion
        // answers from the config, it is not refused.
        let log = s.gw.log();
        assert!(
            !log.lines().any(|l| l.contains("refused") && l.contains("roots/list")),
            "a roots/list request was refused: {log}"
        );

        let mut tools = strings(on_time.ok(), "tools");
        tools.sort();
        assert_eq!(tools, ["convert_time", "get_current_time"], "{script}: tools of /mcp/time");
    }
}

#[tokio::test]
async fn small_pages_return_every_tool_exactly_once() {
    let s = real();
    let m = Mcp::session(s.gw.url("/mcp"), &s.alice, "2025-11-25").await;
    // Page by page: never more than `http.page_size` (3) items.
    let mut names = Vec::new();
    let mut cursor: Option<Value> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 200, "pagination does not end");
        let params = cursor.take().map(|c| json!({"cursor": c})).unwrap_or_else(|| json!({}));
        let rpc = m.call("tools/list", params).await;
        let page = rpc["result"]["tools"].as_array().unwrap_or_else(|| panic!("tools/list: {rpc}"));
        assert!(page.len() <= 3, "a page has {} items with page_size 3", page.len());
        names.extend(page.iter().map(|t| t["name"].as_str().expect("name").to_string()));
        match rpc["result"].get("nextCursor") {
            Some(c) if !c.is_null() => {
                assert_eq!(page.len(), 3, "a page before the last is not full");
                cursor = Some(c.clone());
            }
            _ => break,
        }
    }
    assert_no_duplicates(&names, "tool");

    // The same set as the servers' own lists, prefixed.
    let mut expected = BTreeSet::new();
    for server in ["everything", "sampler", "time", "echo", "remote"] {
        let own = Mcp::stateless(s.gw.url(&format!("/mcp/{server}")), &s.alice).tool_names().await;
        assert!(!own.is_empty(), "{server} has no tools");
        expected.extend(own.into_iter().map(|t| format!("{server}__{t}")));
    }
    let got: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(got, expected, "the merged list differs from the servers' lists");
    assert_eq!(pages, names.len().div_ceil(3));

    // A real client following the cursors sees the same list.
    let run = run_client(SESSION, &s.gw.url("/mcp"), &s.alice, &["--action", "list-tools"]).await;
    let out = run.ok();
    assert_eq!(strings(out, "tools"), names);
    assert_eq!(out["pages"], json!(pages));
}

#[tokio::test]
async fn tool_calls_return_the_servers_results() {
    let s = real();
    let all = s.gw.url("/mcp");
    let time = s.gw.url("/mcp/time");
    let everything = s.gw.url("/mcp/everything");
    let (echo, now, convert, sum, remote) = tokio::join!(
        run_client(
            SESSION,
            &all,
            &s.alice,
            &[
                "--action",
                "call-tool",
                "--tool",
                "everything__echo",
                "--args",
                r#"{"message":"hello through bastion"}"#
            ],
        ),
        run_client(
            STATELESS,
            &all,
            &s.alice,
            &["--action", "call-tool", "--tool", "time__get_current_time", "--args", r#"{"timezone":"Asia/Tokyo"}"#],
        ),
        run_client(
            SESSION,
            &time,
            &s.alice,
            &[
                "--action",
                "call-tool",
                "--tool",
                "convert_time",
                "--args",
                r#"{"source_timezone":"Etc/UTC","time":"12:00","target_timezone":"Asia/Tokyo"}"#,
            ],
        ),
        run_client(
            STATELESS,
            &everything,
            &s.alice,
            &["--action", "call-tool", "--tool", "get-sum", "--args", r#"{"a":2,"b":40}"#],
        ),
        run_client(SESSION, &all, &s.alice, &["--action", "call-tool", "--tool", "remote__test_simple_text"]),
    );
    assert_eq!(echo.ok()["text"], "Echo: hello through bastion");

    let now = now.ok();
    assert_eq!(now["protocolVersion"], "2026-07-28");
    assert_eq!(now["result"]["structuredContent"]["timezone"], "Asia/Tokyo", "{now}");
    assert!(now["result"]["isError"] != json!(true), "{now}");

    let convert = convert.ok();
    let target = convert["result"]["structuredContent"]["target"]["datetime"].as_str().unwrap_or_default();
    assert!(target.ends_with("T21:00:00+09:00"), "12:00 UTC in Tokyo: {convert}");

    let sum = sum.ok();
    assert!(sum["text"].as_str().unwrap_or_default().contains("42"), "2 + 40: {sum}");

    assert_eq!(remote.ok()["text"], "This is a simple text response for testing.");
}

#[tokio::test]
async fn progress_notifications_are_relayed_in_both_eras() {
    let s = real();
    let all = s.gw.url("/mcp");
    let args = [
        "--action",
        "call-tool",
        "--tool",
        "everything__trigger-long-running-operation",
        "--args",
        r#"{"duration":0.3,"steps":3}"#,
        "--progress",
    ];
    let remote_args = ["--action", "call-tool", "--tool", "remote__test_tool_with_progress", "--progress"];
    let (session, stateless, remote) = tokio::join!(
        run_client(SESSION, &all, &s.alice, &args),
        run_client(STATELESS, &all, &s.alice, &args),
        run_client(SESSION, &all, &s.alice, &remote_args),
    );
    for (era, run) in [("session", &session), ("stateless", &stateless)] {
        let out = run.ok();
        let progress: Vec<(f64, f64)> = out["progress"]
            .as_array()
            .unwrap_or_else(|| panic!("{era}: no progress: {out}"))
            .iter()
            .map(|p| (p["progress"].as_f64().unwrap_or(-1.0), p["total"].as_f64().unwrap_or(-1.0)))
            .collect();
        assert_eq!(progress, [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)], "{era}: progress relayed: {out}");
        assert!(out["text"].as_str().unwrap_or_default().contains("completed"), "{era}: {out}");
    }
    // Over a Streamable HTTP upstream too.
    let out = remote.ok();
    let steps = out["progress"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(steps, 3, "progress from the HTTP upstream: {out}");
}

#[tokio::test]
async fn sampling_and_elicitation_are_relayed_to_the_client() {
    // One call at a time on the `sampler` server: which call a stdio
    // server's request belongs to is then unambiguous.
    let s = real();
    let all = s.gw.url("/mcp");
    let sse = s.gw.url("/sse");
    let sampling = run_client(
        SESSION,
        &all,
        &s.alice,
        &[
            "--action",
            "sampling-tool",
            "--tool",
            "sampler__trigger-sampling-request",
            "--args",
            r#"{"prompt":"bastion relays sampling","maxTokens":10}"#,
        ],
    )
    .await;
    let legacy_sampling = run_client(
        LEGACY,
        &sse,
        &s.alice,
        &[
            "--action",
            "sampling-tool",
            "--tool",
            "sampler__trigger-sampling-request",
            "--args",
            r#"{"prompt":"sampling over sse","maxTokens":10}"#,
        ],
    )
    .await;
    for (what, run, prompt) in
        [("session", &sampling, "bastion relays sampling"), ("legacy SSE", &legacy_sampling, "sampling over sse")]
    {
        let out = run.ok();
        let requests = out["samplingRequests"].as_array().cloned().unwrap_or_default();
        assert_eq!(requests.len(), 1, "{what}: one sampling request reaches the client: {out}");
        assert!(requests[0].to_string().contains(prompt), "{what}: the request carries the prompt: {out}");
        assert!(
            out["text"].as_str().unwrap_or_default().contains("sampled-by-client"),
            "{what}: the client's answer reaches the server: {out}"
        );
    }

    let accept = run_client(
        SESSION,
        &all,
        &s.alice,
        &[
            "--action",
            "sampling-tool",
            "--tool",
            "sampler__trigger-elicitation-request",
            "--elicit",
            r#"{"name":"Ada Lovelace"}"#,
        ],
    )
    .await;
    let out = accept.ok();
    assert_eq!(out["elicitationRequests"].as_array().map(Vec::len), Some(1), "{out}");
    let text = out["text"].as_str().unwrap_or_default();
    assert!(text.contains("Ada Lovelace") && text.contains("accept"), "accepted elicitation: {out}");

    let decline = run_client(
        SESSION,
        &all,
        &s.alice,
        &["--action", "sampling-tool", "--tool", "sampler__trigger-elicitation-request"],
    )
    .await;
    let out = decline.ok();
    assert!(out["text"].as_str().unwrap_or_default().contains("declined"), "declined elicitation: {out}");
}

/// A stdio MCP server whose `ask` tool sends a sampling request with a
/// prompt naming the call's `tag`, after the event `wait_for` (set when a
/// call with another tag has started or finished): it makes two users'
/// calls overlap deterministically.
const CROSSTALK: &str = r#"
import json, sys, threading
lock = threading.Lock()
write_lock = threading.Lock()
events, pending, counter = {}, {}, [0]

def event(name):
    with lock:
        return events.setdefault(name, threading.Event())

def send(msg):
    with write_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

def sample(text):
    with lock:
        counter[0] += 1
        rid = "srv-%d" % counter[0]
        pending[rid] = (threading.Event(), [])
    send({"jsonrpc": "2.0", "id": rid, "method": "sampling/createMessage", "params": {
        "messages": [{"role": "user", "content": {"type": "text", "text": text}}], "maxTokens": 10}})
    done, answer = pending[rid]
    done.wait(30)
    return answer[0] if answer else None

def call(mid, args):
    tag = args["tag"]
    event("started-" + tag).set()
    event(args["wait_for"]).wait(30)
    answer = sample("prompt-for-" + tag)
    # The result goes out before the other call may go on, so the gateway
    # reads this call's end before the other call's request.
    send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": json.dumps(answer)}]}})
    event("done-" + tag).set()

for line in sys.stdin:
    if not line.strip():
        continue
    msg = json.loads(line)
    if "method" not in msg:
        with lock:
            p = pending.get(msg.get("id"))
        if p:
            p[1].append(msg.get("result", msg.get("error")))
            p[0].set()
        continue
    if "id" not in msg:
        continue
    m = msg["method"]
    if m == "initialize":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": msg["params"]["protocolVersion"],
              "capabilities": {"tools": {}}, "serverInfo": {"name": "crosstalk", "version": "1"}}})
    elif m == "tools/list":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": [{"name": "ask", "inputSchema": {
              "type": "object", "properties": {"tag": {"type": "string"}, "wait_for": {"type": "string"}}}}]}})
    elif m == "tools/call":
        threading.Thread(target=call, args=(msg["id"], msg["params"]["arguments"]), daemon=True).start()
    else:
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
"#;

#[tokio::test]
async fn sampling_requests_never_reach_another_users_client() {
    let t = crate::harness::tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("crosstalk.py");
    std::fs::write(&script, CROSSTALK).expect("write script");
    let gw = crate::harness::Gateway::start(json!({"mcpServers": {"x": {"command": t.python, "args": [script]}}}));
    let alice = gw.create_key("alice", &[]);
    let bob = gw.create_key("bob", &[]);
    let url = gw.url("/mcp");
    // Alice's request is sent while Bob's later call is in flight; Bob's
    // after Alice's call has finished. Neither client lists the tools after
    // its call (the SDK does so to check output schemas): Bastion's own
    // fetch of the list, in flight beside Bob's call, would make Bob's
    // request ambiguous too, and be refused.
    let (a, b) = tokio::join!(
        run_client(
            SESSION,
            &url,
            &alice,
            &[
                "--action",
                "sampling-tool",
                "--tool",
                "x__ask",
                "--args",
                r#"{"tag":"alice","wait_for":"started-bob"}"#,
                "--no-output-validation",
            ],
        ),
        run_client(
            SESSION,
            &url,
            &bob,
            &[
                "--action",
                "sampling-tool",
                "--tool",
                "x__ask",
                "--args",
                r#"{"tag":"bob","wait_for":"done-alice"}"#,
                "--no-output-validation",
            ],
        ),
    );
    let (a, b) = (a.ok(), b.ok());
    let seen_by = |out: &Value| out["samplingRequests"].to_string();
    assert!(!seen_by(b).contains("prompt-for-alice"), "Bob's client received Alice's sampling request: {b}");
    assert!(!seen_by(a).contains("prompt-for-bob"), "Alice's client received Bob's sampling request: {a}");
    assert_eq!(b["samplingRequests"].as_array().map(Vec::len), Some(1), "Bob gets exactly his own request: {b}");
}

#[tokio::test]
async fn resources_are_listed_and_read_with_prefixed_uris() {
    let s = real();
    let all = s.gw.url("/mcp");
    let everything = s.gw.url("/mcp/everything");
    const DOC: &str = "everything+demo://resource/static/document/features.md";
    for script in [SESSION, STATELESS] {
        let (list, templates, read, dynamic, own) = tokio::join!(
            run_client(script, &all, &s.alice, &["--action", "list-resources"]),
            run_client(script, &all, &s.alice, &["--action", "list-resource-templates"]),
            run_client(script, &all, &s.alice, &["--action", "read-resource", "--uri", DOC]),
            run_client(
                script,
                &all,
                &s.alice,
                &["--action", "read-resource", "--uri", "everything+demo://resource/dynamic/text/7"]
            ),
            run_client(script, &everything, &s.alice, &["--action", "list-resources"]),
        );
        let resources = strings(list.ok(), "resources");
        assert!(resources.iter().any(|r| r == DOC), "{script}: {DOC} not listed: {resources:?}");
        assert!(
            resources.iter().all(|r| ["everything+", "sampler+", "remote+"].iter().any(|p| r.starts_with(p))),
            "{script}: unprefixed resource URI on /mcp: {resources:?}"
        );
        assert_no_duplicates(&resources, "resource");

        let templates = strings(templates.ok(), "resourceTemplates");
        assert!(
            templates.iter().any(|t| t == "everything+demo://resource/dynamic/text/{resourceId}"),
            "{script}: templates: {templates:?}"
        );

        let read = read.ok();
        let contents = &read["result"]["contents"][0];
        assert_eq!(contents["uri"], DOC, "{script}: read result carries the prefixed URI: {read}");
        assert!(contents["text"].as_str().unwrap_or_default().contains("Features"), "{script}: {read}");

        let dynamic = dynamic.ok();
        assert!(dynamic["result"]["contents"][0]["text"].as_str().unwrap_or_default().contains("Resource 7"));

        let own = strings(own.ok(), "resources");
        assert!(
            own.iter().any(|r| r == "demo://resource/static/document/features.md"),
            "{script}: /mcp/everything lists the server's own URIs: {own:?}"
        );
    }
}

#[tokio::test]
async fn prompts_are_listed_and_rendered() {
    let s = real();
    let all = s.gw.url("/mcp");
    for script in [SESSION, STATELESS] {
        let (list, get) = tokio::join!(
            run_client(script, &all, &s.alice, &["--action", "list-prompts"]),
            run_client(
                script,
                &all,
                &s.alice,
                &["--action", "get-prompt", "--name", "everything__args-prompt", "--args", r#"{"city":"Paris"}"#]
            ),
        );
        let prompts = strings(list.ok(), "prompts");
        for p in ["everything__simple-prompt", "everything__args-prompt"] {
            assert!(prompts.iter().any(|x| x == p), "{script}: {p} not listed: {prompts:?}");
        }
        assert!(prompts.iter().all(|p| p.contains("__")), "{script}: {prompts:?}");
        let get = get.ok();
        let text = get["result"]["messages"][0]["content"]["text"].as_str().unwrap_or_default();
        assert!(text.contains("Paris"), "{script}: rendered prompt: {get}");
    }
}

#[tokio::test]
async fn legacy_sse_clients_are_served() {
    let s = real();
    let sse = s.gw.url("/sse");
    let sse_time = s.gw.url("/sse/time");
    let (list, call, time) = tokio::join!(
        run_client(LEGACY, &sse, &s.alice, &["--action", "list-tools"]),
        run_client(
            LEGACY,
            &sse,
            &s.alice,
            &["--action", "call-tool", "--tool", "everything__echo", "--args", r#"{"message":"over sse"}"#],
        ),
        run_client(LEGACY, &sse_time, &s.alice, &["--action", "list-tools"]),
    );
    let out = list.ok();
    let tools = strings(out, "tools");
    for name in ["everything__echo", "time__get_current_time", "echo__echo"] {
        assert!(tools.iter().any(|t| t == name), "{name} missing over legacy SSE: {tools:?}");
    }
    assert!(out["endpoint"].as_str().unwrap_or_default().starts_with("/messages"), "{out}");
    assert_eq!(call.ok()["text"], "Echo: over sse");
    let mut tools = strings(time.ok(), "tools");
    tools.sort();
    assert_eq!(tools, ["convert_time", "get_current_time"]);
}

#[tokio::test]
async fn concurrent_sessions_never_mix_results() {
    let s = real();
    let all = s.gw.url("/mcp");
    let echo = s.gw.url("/mcp/echo");
    let (node, fixture, stateless) = tokio::join!(
        run_client(
            "concurrent_calls.py",
            &all,
            &s.alice,
            &[
                "--sessions",
                "4",
                "--calls",
                "8",
                "--tool",
                "everything__echo",
                "--text-field",
                "message",
                "--expect-prefix",
                "Echo: ",
            ],
        ),
        run_client("concurrent_calls.py", &echo, &s.bob, &["--sessions", "4", "--calls", "8", "--tool", "echo"]),
        run_client(
            "concurrent_calls.py",
            &all,
            &s.alice,
            &["--era", "stateless", "--sessions", "4", "--calls", "8", "--tool", "echo__echo"],
        ),
    );
    for (what, run, sessions) in [("session era, server-everything", &node, 4), ("session era, fixture", &fixture, 4)] {
        let out = run.ok();
        assert_eq!(out["successes"], 32, "{what}: {out}");
        assert_eq!(out["allMatched"], true, "{what}: {out}");
        assert_eq!(out["crossSessionMismatches"], 0, "{what}: {out}");
        assert_eq!(out["distinctSessionIds"], sessions, "{what}: {out}");
    }
    let out = stateless.ok();
    assert_eq!(out["successes"], 32, "stateless: {out}");
    assert_eq!(out["allMatched"], true, "stateless: {out}");
}

/// `resources/subscribe` through Bastion, then server-everything's simulated
/// updates: a subscribed session hears about its resource (prefixed), over
/// the session-era GET stream and over legacy SSE alike.
#[tokio::test]
async fn resource_updates_reach_subscribed_sessions_in_both_transports() {
    use crate::harness::{Gateway, collect, http, tools};
    let t = tools();
    // A gateway of its own: the updates, once toggled on, run every 5 s for
    // every client of the process.
    let gw = Gateway::start(json!({
        "mcpServers": {"everything": {"command": t.node, "args": [t.everything_js, "stdio"]}}
    }));
    let key = gw.create_key("subscriber", &[]);
    let uri = "everything+demo://resource/static/document/architecture.md";

    // Session era: subscribe, then listen on the GET stream.
    let m = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let rpc = m.call("resources/subscribe", json!({"uri": uri})).await;
    assert!(rpc.get("result").is_some(), "subscribe: {rpc}");
    let (session_seen, session_reader) = m.open_stream().await;

    // Legacy SSE: the stream first, then initialize and subscribe by POST.
    let stream = http()
        .get(gw.url("/sse"))
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(stream.status(), 200);
    let (legacy_seen, legacy_reader) = collect(stream);
    let endpoint = crate::harness::eventually(crate::harness::WAIT, "the legacy endpoint event", || async {
        let seen = legacy_seen.lock().expect("poisoned").clone();
        seen.lines().find_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string())
    })
    .await;
    let post = |body: Value| {
        let url = gw.url(&endpoint);
        let key = key.clone();
        async move {
            let r = http()
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("POST /messages");
            assert_eq!(r.status(), 202, "legacy POST {body}");
        }
    };
    let client_info = json!({"name": "subscriber", "version": "1"});
    post(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": client_info}}))
    .await;
    post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    post(json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": uri}})).await;
    crate::harness::eventually(crate::harness::WAIT, "the legacy subscribe answer", || async {
        legacy_seen.lock().expect("poisoned").contains("\"id\":2").then_some(())
    })
    .await;

    // Updates start at once and repeat every 5 s.
    let rpc = m.call_tool("everything__toggle-subscriber-updates", json!({})).await;
    assert!(rpc.get("result").is_some(), "toggle: {rpc}");
    for (name, seen) in [("session-era GET stream", &session_seen), ("legacy SSE stream", &legacy_seen)] {
        crate::harness::eventually(crate::harness::WAIT, &format!("a resource update on the {name}"), || async {
            let text = seen.lock().expect("poisoned").clone();
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|v| v["method"] == "notifications/resources/updated" && v["params"]["uri"] == uri)
        })
        .await;
    }
    session_reader.abort();
    legacy_reader.abort();
}

/// The MCP Inspector's command line, a second official client, through
/// Bastion: lists the prefixed tools, calls one, and is refused without a
/// valid key (page size 3 on this gateway: the inspector follows cursors).
#[tokio::test]
async fn the_mcp_inspector_lists_and_calls_tools_through_bastion() {
    use crate::harness::run_inspector;
    let s = real();
    let url = s.gw.url("/mcp");

    let (status, out, err) = run_inspector(&url, &s.alice, &["--method", "tools/list"]).await;
    assert!(status.success(), "inspector tools/list failed: {out}\n{err}");
    let listed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let names: Vec<&str> =
        listed["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    for name in ["everything__get-sum", "time__get_current_time", "echo__echo"] {
        assert!(names.contains(&name), "{name} missing from the inspector's list: {names:?}");
    }

    let args =
        ["--method", "tools/call", "--tool-name", "everything__get-sum", "--tool-arg", "a=2", "--tool-arg", "b=3"];
    let (status, out, err) = run_inspector(&url, &s.alice, &args).await;
    assert!(status.success(), "inspector tools/call failed: {out}\n{err}");
    let result: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(result["content"][0]["text"], "The sum of 2 and 3 is 5.", "{result}");

    let (status, out, err) = run_inspector(&url, "bst_not-a-key", &["--method", "tools/list"]).await;
    assert!(!status.success(), "a wrong key must fail: {out}");
    // The 401 with its Bearer challenge reads to the inspector as "log in first".
    let said = format!("{out}{err}");
    assert!(said.contains("auth_required") || said.contains("401"), "an authentication failure: {said}");
}
