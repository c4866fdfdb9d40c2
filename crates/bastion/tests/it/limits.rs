//! Rate limits, concurrency per server, quotas and the emergency lockdown
//! (`limits.rules`, `limits.quotas`, `bastion lockdown`), through the real
//! binary.
//!
//! A request over a limit is refused before it reaches its server: HTTP 429
//! with `Retry-After`, `RateLimit` and `RateLimit-Policy`, and a JSON-RPC
//! error -32029 whose `data` names the rule (`limit:user[0]`,
//! `quota:user[0]/day`) and when to retry. Every scope has its own budget;
//! lists have theirs; a reload keeps the buckets of unchanged rules; quotas
//! outlive a restart; every refusal is audited as denied and counted in
//! `/metrics`. With `limits.redis`, replicas share one budget; when Redis
//! cannot be asked, requests are refused (503) or limited in the process,
//! as configured.
//!
//! Rates are chosen so that no refusal is a matter of timing: at `1/h`
//! with `burst: N`, exactly N requests pass and the next is refused,
//! however slow the machine. Calls are held in flight deterministically
//! with the scripted server's `hold` tool (it creates `started-GATE`, then
//! waits for `release-GATE`).
//!
//! The test of budgets shared through Redis needs a server:
//! `BASTION_TEST_REDIS_URL` (as `scripts/redis-throwaway start` prints).
//! Without it that test is skipped with a message, unless
//! `BASTION_REQUIRE_REDIS=1` (as `scripts/test` sets): then it fails.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Gates, Gateway, Mcp, Options, Reply, WAIT, audit_export as export, eventually, fixture_echo, http, run_bounded,
    scripted_stdio, tools,
};

const VERSION: &str = "2025-11-25";
const LIMIT_REACHED: i64 = -32029;
const UNAVAILABLE: i64 = -32000;
/// A denial: what the lockdown answers.
const FORBIDDEN: i64 = -32003;

/// The Redis of the shared-budget test.
const REDIS_VAR: &str = "BASTION_TEST_REDIS_URL";
/// Set to `1`, a missing Redis fails that test instead of skipping it.
const REQUIRE_REDIS_VAR: &str = "BASTION_REQUIRE_REDIS";

/// Two fixture echo servers, `a` and `b`, both in groups `g1` and `g2`;
/// `ann` and `ben` are in `g1`, `cat` in `g2`; and `limits`.
fn config(limits: Value) -> Value {
    json!({
        "mcpServers": {"a": fixture_echo("limits-a"), "b": fixture_echo("limits-b")},
        "groups": {"g1": ["a", "b"], "g2": ["a", "b"]},
        "users": {
            "ann": {"role": "user", "groups": ["g1"]},
            "ben": {"role": "user", "groups": ["g1"]},
            "cat": {"role": "user", "groups": ["g2"]}
        },
        "limits": limits
    })
}

/// One rule of `scope`: one per hour, `burst` at once.
fn hourly(scope: &str, matches: Option<&str>, burst: u32) -> Value {
    let mut rule = json!({"scope": scope, "rate": "1/h", "burst": burst});
    if let Some(m) = matches {
        rule["match"] = Value::from(m);
    }
    rule
}

/// The arguments of the fixture's tools.
fn args_for(tool: &str) -> Value {
    if tool.ends_with("__sleep") { json!({"ms": 0}) } else { json!({"text": "limited"}) }
}

/// `tools/call` of `tool`, the raw answer.
async fn call(m: &Mcp, tool: &str) -> Reply {
    m.request("tools/call", json!({"name": tool, "arguments": args_for(tool)})).await
}

/// Asserts `r` is an answered call.
fn assert_passed(r: &Reply, what: &str) {
    assert_eq!(r.status, 200, "{what}: expected 200, got HTTP {} {}", r.status, r.text);
    let rpc = r.rpc();
    assert!(rpc.get("result").is_some(), "{what}: {rpc}");
}

/// Asserts `r` is the refusal of a request over the limit `policy`: 429,
/// `Retry-After` of at least a second, `RateLimit` and `RateLimit-Policy`
/// naming the policy, and -32029 with `retryAfter` and `policy`. Returns
/// the seconds to wait and the quota and window the policy states.
fn assert_limited(r: &Reply, policy: &str, what: &str) -> (u64, u64, u64) {
    assert_eq!(r.status, 429, "{what}: expected 429, got HTTP {} {}", r.status, r.text);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: Retry-After in whole seconds; headers {:?}", r.headers));
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    assert_eq!(r.header("ratelimit"), Some(format!("\"{policy}\";r=0;t={retry}").as_str()), "{what}: RateLimit");
    let stated = r.header("ratelimit-policy").unwrap_or_else(|| panic!("{what}: no RateLimit-Policy"));
    let (quota, window) = stated
        .strip_prefix(&format!("\"{policy}\";q="))
        .and_then(|rest| rest.split_once(";w="))
        .and_then(|(q, w)| Some((q.parse().ok()?, w.parse().ok()?)))
        .unwrap_or_else(|| panic!("{what}: RateLimit-Policy {stated:?} for {policy}"));
    let body = r.json();
    assert_eq!(body["error"]["code"], json!(LIMIT_REACHED), "{what}: {body}");
    assert_eq!(body["error"]["data"]["retryAfter"], json!(retry), "{what}: {body}");
    assert_eq!(body["error"]["data"]["policy"], json!(policy), "{what}: {body}");
    (retry, quota, window)
}

/// The value of the sample `series` in a /metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics_text(gw: &Gateway) -> String {
    let r = Reply::read(http().get(gw.url("/metrics")).send().await.expect("GET /metrics")).await;
    assert_eq!(r.status, 200, "/metrics: {}", r.text);
    r.text
}

/// Waits until the audit trail has a record of `kind` matching `pred`.
async fn audited(gw: &Gateway, kind: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(WAIT, what, || async { export(gw, &["--kind", kind]).into_iter().find(|r| pred(r)) }).await
}

/// Replaces the config and waits until the gateway applied it (the file
/// is behind a symlink: only the SIGHUP makes it read again).
async fn reload_by_sighup(gw: &Gateway, cfg: &Value) {
    let before = gw.log().matches("configuration applied").count();
    gw.write_config(cfg);
    gw.sighup();
    eventually(WAIT, "the reload to be applied", || async {
        (gw.log().matches("configuration applied").count() > before).then_some(())
    })
    .await;
}

/// A name no other run of these tests uses (budgets in a shared Redis are
/// keyed by user).
fn unique_user(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------
// Rates
// ---------------------------------------------------------------------------

/// A user's budget: the burst passes, the next call is refused with every
/// header and field, in the session era and stateless alike (they share
/// the budget); another user is not affected.
#[tokio::test]
async fn a_user_over_the_rate_gets_429_with_the_rate_limit_headers() {
    let gw = Gateway::start(config(json!({"rules": [hourly("user", None, 3)]})));
    let ann = gw.create_key("ann", &[]);
    let ben = gw.create_key("ben", &[]);
    let url = gw.url("/mcp");
    let session = Mcp::session(url.clone(), &ann, VERSION).await;
    let stateless = Mcp::stateless(url.clone(), &ann);

    assert_passed(&call(&session, "a__echo").await, "ann's first call");
    assert_passed(&call(&stateless, "a__echo").await, "ann's second call, stateless");
    assert_passed(&call(&session, "b__echo").await, "ann's third call, another server");

    let r = call(&session, "a__echo").await;
    let (retry, quota, window) = assert_limited(&r, "limit:user[0]", "ann's fourth call");
    // One an hour: the next token comes in about an hour.
    assert!((3000..=3600).contains(&retry), "Retry-After {retry}");
    assert_eq!((quota, window), (3, 3 * 3600), "the policy: 3 per 3 hours");
    let body = r.json();
    assert_eq!(body["id"], json!(4), "the refusal answers the request: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("rate limit"), "{body}");
    assert_limited(&call(&stateless, "b__echo").await, "limit:user[0]", "ann's stateless call");
    // Lists are not limited by a call rule; the session is still usable.
    assert!(!session.tool_names().await.is_empty(), "tools/list");

    let other = Mcp::session(url.clone(), &ben, VERSION).await;
    for i in 0..3 {
        assert_passed(&call(&other, "a__echo").await, &format!("ben's call {i}"));
    }
    assert_limited(&call(&other, "a__echo").await, "limit:user[0]", "ben's fourth call");
}

/// Per-tool budgets are for the tools a server lists: names a client makes
/// up share one budget, so they cannot make buckets without bound.
#[tokio::test]
async fn made_up_tool_names_share_one_budget() {
    let gw = Gateway::start(config(json!({"rules": [hourly("tool", None, 1)]})));
    let ann = gw.create_key("ann", &[]);
    let m = Mcp::session(gw.url("/mcp"), &ann, VERSION).await;
    assert!(m.tool_names().await.iter().any(|t| t == "a__echo"), "a's tools are listed");
    assert_passed(&call(&m, "a__echo").await, "a listed tool");
    assert_limited(&call(&m, "a__echo").await, "limit:tool[0]", "the same tool again");
    let first = call(&m, "a__no_such_tool_1").await;
    assert_ne!(first.status, 429, "the first made-up name has the shared budget: {}", first.text);
    assert_limited(&call(&m, "a__no_such_tool_2").await, "limit:tool[0]", "another made-up name");
    assert_passed(&call(&m, "a__sleep").await, "another listed tool keeps its own budget");
}

/// Each scope counts by what it names; a rule with `match` limits only
/// what it matches (a trailing `*`: a prefix).
#[tokio::test]
async fn every_scope_counts_by_what_it_names() {
    // (rule, then calls in order: user, tool, whether it passes).
    type Step = (&'static str, &'static str, bool);
    let cases: Vec<(Value, &str, Vec<Step>)> = vec![
        (
            hourly("tool", Some("a__echo"), 2),
            "limit:tool[0]=a__echo",
            vec![
                ("ann", "a__echo", true),
                ("ben", "a__echo", true),
                ("cat", "a__echo", false),
                ("ann", "a__sleep", true),
                ("ann", "b__echo", true),
                ("ann", "b__echo", true),
                ("ann", "b__echo", true),
            ],
        ),
        (
            hourly("tool", Some("b__*"), 2),
            "limit:tool[0]=b__*",
            vec![
                ("ann", "b__echo", true),
                ("ben", "b__echo", true),
                ("cat", "b__echo", false),
                ("cat", "a__echo", true),
                ("cat", "a__echo", true),
                ("cat", "a__echo", true),
                // Each tool it matches has its own budget.
                ("cat", "b__sleep", true),
            ],
        ),
        (
            hourly("user_tool", None, 2),
            "limit:user_tool[0]",
            vec![
                ("ann", "a__echo", true),
                ("ann", "a__echo", true),
                ("ann", "a__echo", false),
                ("ann", "a__sleep", true),
                ("ann", "b__echo", true),
                ("ben", "a__echo", true),
            ],
        ),
        (
            hourly("global", None, 2),
            "limit:global[0]",
            vec![("ann", "a__echo", true), ("ben", "b__sleep", true), ("cat", "a__echo", false)],
        ),
        (
            hourly("group", None, 2),
            "limit:group[0]",
            vec![
                ("ann", "a__echo", true),
                ("ben", "b__echo", true),
                ("ann", "a__sleep", false),
                ("cat", "a__echo", true),
                ("cat", "a__echo", true),
                ("cat", "a__echo", false),
            ],
        ),
        (
            hourly("group", Some("g2"), 1),
            "limit:group[0]=g2",
            vec![
                ("cat", "a__echo", true),
                ("cat", "b__echo", false),
                ("ann", "a__echo", true),
                ("ann", "a__echo", true),
            ],
        ),
        (
            hourly("server", Some("a"), 2),
            "limit:server[0]=a",
            vec![
                ("ann", "a__echo", true),
                ("ben", "a__sleep", true),
                ("cat", "a__echo", false),
                ("cat", "b__echo", true),
                ("cat", "b__echo", true),
                ("cat", "b__echo", true),
            ],
        ),
    ];
    for (rule, policy, steps) in cases {
        let gw = Gateway::start(config(json!({"rules": [rule]})));
        let url = gw.url("/mcp");
        let mut clients = std::collections::HashMap::new();
        for user in ["ann", "ben", "cat"] {
            clients.insert(user, Mcp::stateless(url.clone(), &gw.create_key(user, &[])));
        }
        for (i, (user, tool, passes)) in steps.into_iter().enumerate() {
            let what = format!("{policy}, step {i}: {user} calls {tool}");
            let r = call(&clients[user], tool).await;
            if passes {
                assert_passed(&r, &what);
            } else {
                assert_limited(&r, policy, &what);
            }
        }
    }
}

/// A call rule does not limit lists; a rule `on: [list]` does, and only
/// lists.
#[tokio::test]
async fn lists_have_their_own_budget() {
    let mut lists = hourly("user", None, 2);
    lists["on"] = json!(["list"]);
    let gw = Gateway::start(config(json!({"rules": [hourly("user", None, 1), lists]})));
    let url = gw.url("/mcp");
    let ann = Mcp::session(url.clone(), &gw.create_key("ann", &[]), VERSION).await;
    let ben = Mcp::stateless(url.clone(), &gw.create_key("ben", &[]));

    assert_passed(&call(&ann, "a__echo").await, "ann's call");
    assert_limited(&call(&ann, "a__echo").await, "limit:user[0]", "ann's second call");
    for i in 0..2 {
        let r = ann.request("tools/list", json!({})).await;
        assert_eq!(r.status, 200, "ann's tools/list {i} after her calls ran out: {}", r.text);
        assert!(r.rpc()["result"]["tools"].is_array(), "{}", r.text);
    }
    assert_limited(&ann.request("tools/list", json!({})).await, "limit:user[1]", "ann's third list");

    for i in 0..2 {
        let r = ben.request("tools/list", json!({})).await;
        assert_eq!(r.status, 200, "ben's tools/list {i}: {}", r.text);
    }
    assert_limited(&ben.request("tools/list", json!({})).await, "limit:user[1]", "ben's third list");
    // Out of lists, a call still passes: the list rule does not limit it.
    assert_passed(&call(&ben, "a__echo").await, "ben's call after his lists ran out");
}

/// Calls in flight per server: past `concurrency`, a call waits `wait` for
/// a slot, then is refused; a slot given back lets the next one through.
#[tokio::test]
async fn a_server_takes_only_so_many_calls_at_once() {
    let gates = Gates::new();
    let gw = Gateway::start(json!({
        "mcpServers": {"s": scripted_stdio(&gates), "e": fixture_echo("limits-e")},
        "limits": {"rules": [{"scope": "server", "match": "s", "concurrency": 1, "wait": "200ms"}]}
    }));
    let alice = gw.create_key("alice", &[]);
    let bob = gw.create_key("bob", &[]);
    let url = gw.url("/mcp");

    let held = {
        let m = Mcp::stateless(url.clone(), &alice);
        tokio::spawn(
            async move { m.request("tools/call", json!({"name": "s__hold", "arguments": {"gate": "one"}})).await },
        )
    };
    gates.wait("started", "one").await;

    // Another caller's call to the same server: refused after the wait.
    let b = Mcp::stateless(url.clone(), &bob);
    let probe = || b.request("tools/call", json!({"name": "s__current_level", "arguments": {}}));
    let r = probe().await;
    let (retry, quota, _) = assert_limited(&r, "limit:server[0]=s", "a second call to s");
    assert_eq!((retry, quota), (1, 1), "a slot is expected soon; one at a time");
    assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("in flight")), "{}", r.text);
    // Another server is not affected.
    assert_passed(&call(&b, "e__echo").await, "a call to e");

    gates.release("one");
    let r = tokio::time::timeout(WAIT, held).await.expect("the held call to end").expect("task");
    assert_eq!(r.status, 200, "the held call: {}", r.text);
    assert!(r.rpc().get("result").is_some(), "{}", r.text);
    // Its slot went back when it was answered.
    let r = probe().await;
    assert_eq!(r.status, 200, "a call after the held one ended: {}", r.text);
    assert!(r.rpc().get("result").is_some(), "{}", r.text);
}

// ---------------------------------------------------------------------------
// Quotas
// ---------------------------------------------------------------------------

/// Calls `user` has in the store's counts for `period` (every window).
fn stored_quota(db: &Path, user: &str, period: &str) -> u64 {
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n\
                  r = c.execute(\"SELECT COALESCE(SUM(calls), 0) FROM quota_usage WHERE user_name = ? AND period = ?\", \
                  (sys.argv[2], sys.argv[3])).fetchone()\nprint(r[0])\n";
    let out = run_bounded(Command::new(&tools().python).arg("-c").arg(script).arg(db).arg(user).arg(period), WAIT);
    assert!(out.status.success(), "reading quota_usage: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
}

/// A daily quota: the calls pass, the next is refused and names the quota;
/// the counts reach the store, so a restarted gateway refuses too. Another
/// user has a quota of their own.
#[tokio::test]
async fn a_quota_is_counted_in_the_store_and_outlives_a_restart() {
    let data = tempfile::Builder::new().prefix("bastion-limits-data-").tempdir().expect("tempdir");
    let cfg = json!({
        "data_dir": data.path(),
        "mcpServers": {"a": fixture_echo("limits-quota")},
        "limits": {"quotas": [{"scope": "user", "per": "day", "calls": 3}]}
    });
    let mut gw = Gateway::start(cfg.clone());
    let alice = gw.create_key("alice", &[]);
    let bob = gw.create_key("bob", &[]);
    let m = Mcp::stateless(gw.url("/mcp"), &alice);
    for i in 0..3 {
        assert_passed(&call(&m, "a__echo").await, &format!("alice's call {i}"));
    }
    let r = call(&m, "a__echo").await;
    let (retry, quota, window) = assert_limited(&r, "quota:user[0]/day", "alice's fourth call");
    assert!(retry <= 86_400, "at most until the end of the day: {retry}");
    assert_eq!((quota, window), (3, 86_400));
    assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("quota")), "{}", r.text);
    assert_passed(&call(&Mcp::stateless(gw.url("/mcp"), &bob), "a__echo").await, "bob's call");

    // The counts reach the store within moments; refusals count nothing.
    let db = data.path().join("bastion.db");
    eventually(WAIT, "alice's three calls in the store", || async {
        (stored_quota(&db, "alice", "day") == 3).then_some(())
    })
    .await;
    eventually(WAIT, "bob's call in the store", || async { (stored_quota(&db, "bob", "day") == 1).then_some(()) })
        .await;

    gw.stop();
    drop(gw);
    let gw = Gateway::start(cfg);
    let m = Mcp::stateless(gw.url("/mcp"), &alice);
    assert_limited(&call(&m, "a__echo").await, "quota:user[0]/day", "alice's call after the restart");
    let b = Mcp::stateless(gw.url("/mcp"), &bob);
    assert_passed(&call(&b, "a__echo").await, "bob's second call after the restart");
    assert_passed(&call(&b, "a__echo").await, "bob's third call after the restart");
    assert_limited(&call(&b, "a__echo").await, "quota:user[0]/day", "bob's fourth call");
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

/// A reload keeps the buckets of unchanged rules, even moved to another
/// place in the list; a rule whose rate changed starts a fresh bucket.
#[tokio::test]
async fn a_reload_keeps_the_buckets_of_unchanged_rules() {
    let cfg = |rules: Value| config(json!({"rules": rules}));
    let gw = Gateway::start_with(
        cfg(json!([hourly("user", None, 2)])),
        Options { config_via_symlink: true, ..Options::default() },
    );
    let pid = gw.pid();
    let m = Mcp::stateless(gw.url("/mcp"), &gw.create_key("ann", &[]));
    assert_passed(&call(&m, "a__echo").await, "ann's first call");
    assert_passed(&call(&m, "a__echo").await, "ann's second call");
    assert_limited(&call(&m, "a__echo").await, "limit:user[0]", "ann's third call");

    // An unrelated rule added before it: still refused, by the same rule.
    let unrelated = hourly("tool", Some("b__sleep"), 5);
    reload_by_sighup(&gw, &cfg(json!([unrelated, hourly("user", None, 2)]))).await;
    assert_limited(&call(&m, "a__echo").await, "limit:user[1]", "ann's call after an unrelated change");

    // Its rate changed: a fresh bucket.
    let changed = json!({"scope": "user", "rate": "2/h", "burst": 2});
    reload_by_sighup(&gw, &cfg(json!([unrelated, changed]))).await;
    assert_passed(&call(&m, "a__echo").await, "ann's call under the changed rate");
    assert_passed(&call(&m, "a__echo").await, "ann's second call under the changed rate");
    assert_limited(&call(&m, "a__echo").await, "limit:user[1]", "ann's third call under the changed rate");
    assert_eq!(gw.pid(), pid, "no restart");
    assert!(gw.log().contains("SIGHUP"), "reloaded by the signal");
}

// ---------------------------------------------------------------------------
// Audit and metrics
// ---------------------------------------------------------------------------

/// A refusal is audited as denied with the policy that refused it, and
/// counted by reason in `/metrics`.
#[tokio::test]
async fn refusals_are_audited_and_counted_by_reason() {
    let gw = Gateway::start(config(json!({
        "rules": [hourly("user", Some("ann"), 1)],
        "quotas": [{"scope": "user", "match": "ben", "per": "day", "calls": 1}]
    })));
    let ann = Mcp::stateless(gw.url("/mcp"), &gw.create_key("ann", &[]));
    let ben = Mcp::stateless(gw.url("/mcp"), &gw.create_key("ben", &[]));
    assert_passed(&call(&ann, "a__echo").await, "ann's call");
    assert_limited(&call(&ann, "a__echo").await, "limit:user[0]=ann", "ann's second call");
    assert_passed(&call(&ben, "b__echo").await, "ben's call");
    assert_limited(&call(&ben, "b__echo").await, "quota:user[0]/day", "ben's second call");

    for (user, server, policy) in [("ann", "a", "limit:user[0]=ann"), ("ben", "b", "quota:user[0]/day")] {
        let denied = audited(&gw, "mcp.request", &format!("{user}'s refusal in the audit trail"), |r| {
            r["user"] == user && r["outcome"] == "denied"
        })
        .await;
        assert_eq!(denied["policy"], json!(policy), "{denied}");
        assert_eq!(denied["error_code"], json!(LIMIT_REACHED), "{denied}");
        assert_eq!((denied["server"].as_str(), denied["tool"].as_str()), (Some(server), Some("echo")), "{denied}");
        let searched = export(&gw, &["--outcome", "denied", "--user", user]);
        assert_eq!(searched.len(), 1, "one denial of {user}: {searched:?}");
        let ok = export(&gw, &["--outcome", "ok", "--user", user, "--kind", "mcp.request"]);
        assert_eq!(ok.len(), 1, "one answered call of {user}: {ok:?}");
    }

    let text = metrics_text(&gw).await;
    for (reason, n) in [("rate_limit", 1.0), ("quota", 1.0), ("concurrency", 0.0), ("lockdown", 0.0)] {
        let series = format!("bastion_denials_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), Some(n), "{series} in\n{text}");
    }
    assert_eq!(metric(&text, "bastion_mcp_requests_total{class=\"call\",outcome=\"denied\"}"), Some(2.0), "{text}");
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// The Redis of the shared-budget test, or `None` (after saying so) when
/// the tests run without one. Panics when one is required and missing.
fn test_redis() -> Option<String> {
    match std::env::var(REDIS_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
        _ if std::env::var(REQUIRE_REDIS_VAR).is_ok_and(|v| v == "1") => panic!(
            "{REQUIRE_REDIS_VAR}=1 but {REDIS_VAR} is not set: the shared rate-limit test cannot run \
             (scripts/redis-throwaway start runs a throwaway server and prints its URL)"
        ),
        _ => {
            eprintln!("skipped: {REDIS_VAR} is not set (scripts/redis-throwaway start runs a throwaway Redis)");
            None
        }
    }
}

/// Two gateways, each with its own store, sharing one Redis: one budget
/// for both.
#[tokio::test]
async fn replicas_sharing_redis_share_one_budget() {
    let Some(redis) = test_redis() else { return };
    let user = unique_user("shared");
    let cfg = json!({
        "mcpServers": {"a": fixture_echo("limits-redis")},
        "limits": {"redis": redis, "rules": [hourly("user", None, 4)]}
    });
    let one = Gateway::start(cfg.clone());
    let two = Gateway::start(cfg);
    // Until a gateway reaches Redis it refuses (fail closed): wait for both.
    for gw in [&one, &two] {
        gw.wait_for_log("rate limits kept in Redis").await;
    }
    let clients = [
        Mcp::stateless(one.url("/mcp"), &one.create_key(&user, &[])),
        Mcp::stateless(two.url("/mcp"), &two.create_key(&user, &[])),
    ];
    for i in 0..4 {
        assert_passed(&call(&clients[i % 2], "a__echo").await, &format!("call {i}, on gateway {}", i % 2 + 1));
    }
    for (i, m) in clients.iter().enumerate() {
        assert_limited(&call(m, "a__echo").await, "limit:user[0]", &format!("the fifth call, on gateway {}", i + 1));
    }
    // Another user has a budget of their own.
    let other = unique_user("shared-other");
    let m = Mcp::stateless(two.url("/mcp"), &two.create_key(&other, &[]));
    assert_passed(&call(&m, "a__echo").await, "another user's call");
}

/// Redis cannot be reached: with `on_redis_error: refuse` (the default)
/// every limited call is refused with 503; with `local`, calls pass and
/// are limited by this process alone.
#[tokio::test]
async fn without_redis_calls_are_refused_or_limited_locally() {
    let unreachable = "redis://127.0.0.1:1/0";
    let gw = Gateway::start(config(json!({
        "redis": unreachable, "on_redis_error": "refuse", "rules": [hourly("user", None, 2)]
    })));
    let m = Mcp::stateless(gw.url("/mcp"), &gw.create_key("ann", &[]));
    for i in 0..3 {
        let r = call(&m, "a__echo").await;
        assert_eq!(r.status, 503, "call {i}: expected 503, got HTTP {} {}", r.status, r.text);
        assert!(r.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1), "{r:?}");
        let body = r.json();
        assert_eq!(body["error"]["code"], json!(UNAVAILABLE), "{body}");
    }
    // Lists are not under a call rule: they do not need Redis.
    let r = m.request("tools/list", json!({})).await;
    assert_eq!(r.status, 200, "tools/list: {}", r.text);
    drop(gw);

    let gw = Gateway::start(config(json!({
        "redis": unreachable, "on_redis_error": "local", "rules": [hourly("user", None, 2)]
    })));
    let m = Mcp::stateless(gw.url("/mcp"), &gw.create_key("ann", &[]));
    assert_passed(&call(&m, "a__echo").await, "the first call, limited locally");
    assert_passed(&call(&m, "a__echo").await, "the second call, limited locally");
    assert_limited(&call(&m, "a__echo").await, "limit:user[0]", "the third call, limited locally");
    assert!(gw.log().contains("rate limits checked in this process only"), "a warning in the log");
}

// ---------------------------------------------------------------------------
// Lockdown
// ---------------------------------------------------------------------------

/// `bastion lockdown` with `args`, which must succeed; its stdout.
fn lockdown(gw: &Gateway, args: &[&str]) -> String {
    let mut all = vec!["lockdown"];
    all.extend_from_slice(args);
    let out = gw.cli(&all);
    assert!(out.status.success(), "lockdown {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The lockdowns in force, by `lockdown status --json`: (scope, reason).
fn lockdowns(gw: &Gateway) -> Vec<(String, Option<String>)> {
    let listed: Value = serde_json::from_str(&lockdown(gw, &["status", "--json"])).expect("a JSON array");
    let mut out: Vec<(String, Option<String>)> = listed
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {listed}"))
        .iter()
        .map(|l| (l["scope"].as_str().expect("scope").to_string(), l["reason"].as_str().map(str::to_string)))
        .collect();
    out.sort();
    out
}

/// How soon a running gateway follows `bastion lockdown` (it is told by
/// the store's change feed: within moments).
const LOCKDOWN_WAIT: Duration = Duration::from_secs(5);

/// Whether `r` is the lockdown's refusal.
fn is_lockdown(r: &Reply) -> bool {
    let rpc = r.rpc();
    rpc["error"]["code"] == json!(FORBIDDEN)
        && rpc["error"]["data"]["lockdown"] == json!(true)
        && rpc["error"]["message"].as_str().is_some_and(|m| m.contains("lockdown"))
}

/// Waits until a call of `tool` is refused by the lockdown (`true`) or
/// answered (`false`); returns the answer.
async fn until_locked(m: &Mcp, tool: &str, locked: bool) -> Reply {
    let what = format!("{tool} to be {}", if locked { "refused by the lockdown" } else { "answered again" });
    eventually(LOCKDOWN_WAIT, &what, || async {
        let r = call(m, tool).await;
        let answered = r.status == 200 && r.rpc().get("result").is_some();
        (if locked { is_lockdown(&r) } else { answered }).then_some(r)
    })
    .await
}

/// A lockdown of every server, then of one: calls are refused within
/// moments of the command, in every era, and answered again once it is
/// lifted; setting and lifting are audited, refusals counted.
#[tokio::test]
async fn a_lockdown_refuses_calls_until_it_is_lifted() {
    let gw = Gateway::start(config(json!({})));
    let key = gw.create_key("ann", &[]);
    let url = gw.url("/mcp");
    let session = Mcp::session(url.clone(), &key, VERSION).await;
    let stateless = Mcp::stateless(url.clone(), &key);
    assert_passed(&call(&stateless, "a__echo").await, "a call before the lockdown");
    assert!(lockdowns(&gw).is_empty(), "no lockdown yet");

    lockdown(&gw, &["on", "--reason", "incident"]);
    let r = until_locked(&stateless, "a__echo", true).await;
    assert!(r.rpc()["error"]["message"].as_str().is_some_and(|m| m.contains("incident")), "the reason: {}", r.text);
    assert!(is_lockdown(&call(&session, "b__echo").await), "the session's call to another server");
    assert_eq!(lockdowns(&gw), [("*".to_string(), Some("incident".to_string()))]);

    lockdown(&gw, &["off"]);
    until_locked(&stateless, "a__echo", false).await;
    assert_passed(&call(&session, "b__echo").await, "the session's call after the lockdown");
    assert!(lockdowns(&gw).is_empty(), "lifted");

    // One server: only its calls are refused.
    lockdown(&gw, &["on", "--server", "a"]);
    until_locked(&session, "a__echo", true).await;
    assert_passed(&call(&session, "b__echo").await, "a call to the other server");
    assert!(!session.tool_names().await.is_empty(), "lists go on");
    assert_eq!(lockdowns(&gw), [("a".to_string(), None)]);
    lockdown(&gw, &["off", "--server", "a"]);
    until_locked(&stateless, "a__echo", false).await;
    // Nothing left to lift.
    assert!(!gw.cli(&["lockdown", "off"]).status.success(), "off without a lockdown fails");

    let on = audited(&gw, "lockdown.on", "the lockdown in the audit trail", |r| r["detail"]["scope"] == "*").await;
    assert_eq!(on["detail"]["reason"], "incident", "{on}");
    audited(&gw, "lockdown.off", "its lifting in the audit trail", |r| r["detail"]["scope"] == "*").await;
    audited(&gw, "lockdown.on", "the server's lockdown in the audit trail", |r| r["detail"]["scope"] == "a").await;
    audited(&gw, "lockdown.off", "its lifting in the audit trail", |r| r["detail"]["scope"] == "a").await;
    let refused = audited(&gw, "mcp.request", "a refused call in the audit trail", |r| {
        r["policy"].as_str().is_some_and(|p| p.starts_with("lockdown"))
    })
    .await;
    assert_eq!(refused["user"], "ann", "{refused}");
    let text = metrics_text(&gw).await;
    let counted = metric(&text, "bastion_denials_total{reason=\"lockdown\"}").unwrap_or(0.0);
    assert!(counted >= 3.0, "lockdown refusals counted: {counted}\n{text}");
}
