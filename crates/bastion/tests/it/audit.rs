//! The audit trail through the real binary: every request recorded (calls,
//! errors, denials, refused credentials) with a digest of its arguments
//! and never their values; `bastion audit export`'s contract; and
//! `bastion audit verify` failing at the right record for each way of
//! tampering with the stored chain.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, WAIT, audit_export as export, eventually, fixture_echo, run_bounded, tools};

const CANARY: &str = "canary-argument-Vq83Lp2Zx";

fn config(stream: &Path) -> Value {
    json!({
        "mcpServers": {"echo": fixture_echo("audit")},
        "groups": {"team": ["echo"]},
        "users": {
            "alice": {"role": "user", "groups": ["team"]},
            "carol": {"role": "viewer", "groups": ["team"]}
        },
        "audit": {"stream": stream}
    })
}

/// Waits until `export` (of `args`) has at least `n` records.
async fn records(gw: &Gateway, args: &[&str], n: usize) -> Vec<Value> {
    eventually(WAIT, "the records are written", || async {
        let got = export(gw, args);
        (got.len() >= n).then_some(got)
    })
    .await
}

/// `bastion audit verify [args]`: its exit code and what it printed.
fn verify(gw: &Gateway, args: &[&str]) -> (i32, String) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = gw.cli(&all);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs SQL on the gateway's SQLite store (Python's sqlite3: no extra tool).
fn sql(db: &Path, statements: &str) {
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.executescript(sys.argv[2])\nc.commit()\n";
    let out = run_bounded(Command::new(&tools().python).arg("-c").arg(script).arg(db).arg(statements), WAIT);
    assert!(out.status.success(), "{statements}: {}", String::from_utf8_lossy(&out.stderr));
}

fn db(gw: &Gateway) -> PathBuf {
    gw.dir().join("data").join("bastion.db")
}

#[tokio::test]
async fn every_request_is_recorded_without_its_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = dir.path().join("audit.jsonl");
    let gw = Gateway::start(config(&stream));
    let alice_key = gw.create_key("alice", &[]);
    let alice = Mcp::stateless(gw.url("/mcp"), &alice_key);
    let session = Mcp::session(gw.url("/mcp"), &alice_key, "2025-11-25").await;
    let carol = Mcp::stateless(gw.url("/mcp"), &gw.create_key("carol", &[]));

    let args = json!({"text": CANARY});
    assert!(alice.call_tool("echo__echo", args.clone()).await.get("result").is_some());
    assert!(session.call_tool("echo__echo", args.clone()).await.get("result").is_some());
    assert!(alice.call_tool("echo__nothing", json!({})).await.get("error").is_some());
    let denied = carol.call_tool("echo__echo", args.clone()).await;
    assert_eq!(denied["error"]["code"], -32003, "{denied}");
    let bad = Mcp::stateless(gw.url("/mcp"), "bst_notakeyatall0000000000000000000000");
    assert_eq!(bad.request("tools/list", json!({})).await.status, 401);

    let calls = records(&gw, &["--kind", "mcp.request", "--tool", "echo"], 3).await;
    for r in &calls {
        for field in ["ts", "user", "server", "tool", "outcome", "method", "args_digest", "duration_us", "request_id"] {
            assert!(r.get(field).is_some(), "{field} in {r}");
        }
        assert_eq!((r["server"].as_str(), r["method"].as_str()), (Some("echo"), Some("tools/call")), "{r}");
    }
    let by = |user: &str| calls.iter().filter(|r| r["user"] == user).collect::<Vec<_>>();
    let (alice_calls, carol_calls) = (by("alice"), by("carol"));
    assert_eq!(alice_calls.len(), 2, "{calls:?}");
    assert!(alice_calls.iter().all(|r| r["outcome"] == "ok" && r["auth"] == "api_key"));
    assert_eq!(alice_calls[0]["args_digest"], alice_calls[1]["args_digest"], "equal arguments, equal digests");
    assert_eq!(alice_calls[0]["args_digest"].as_str().map(str::len), Some(32));
    assert!(alice_calls.iter().any(|r| r.get("session").is_some()), "the session's call names its session");
    assert_eq!(carol_calls.len(), 1);
    assert_eq!(
        (carol_calls[0]["outcome"].as_str(), carol_calls[0]["error_code"].as_i64()),
        (Some("denied"), Some(-32003))
    );
    assert!(carol_calls[0]["policy"].as_str().is_some_and(|p| p.starts_with("deny")), "{}", carol_calls[0]);

    let errors = records(&gw, &["--outcome", "error", "--user", "alice"], 1).await;
    assert!(errors.iter().any(|r| r["tool"] == "nothing" && r["error_code"] == -32602), "{errors:?}");
    let failures = records(&gw, &["--kind", "auth.failure"], 1).await;
    assert_eq!(failures[0]["outcome"], "denied");
    assert!(failures[0]["client_ip"].as_str().is_some_and(|ip| ip == "127.0.0.1"), "{}", failures[0]);
    assert!(failures[0].get("user").is_none());
    // Refused at the edge, before authentication (a DNS-rebinding page, a
    // foreign site's script): denied, with the address and Bastion's
    // reason, never the host or origin that was sent.
    let edge = |name: &'static str, value: &'static str| {
        reqwest::Client::new()
            .post(gw.url("/mcp"))
            .bearer_auth(&alice_key)
            .header(name, value)
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let host = edge("host", "rebind-canary-h7.example").await.expect("POST").status();
    let origin = edge("origin", "http://origin-canary-o7.example").await.expect("POST").status();
    assert_eq!((host.as_u16(), origin.as_u16()), (403, 403));
    let refused = records(&gw, &["--kind", "http.refused"], 2).await;
    let mut reasons: Vec<&str> = refused.iter().filter_map(|r| r["reason"].as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["Host not allowed", "Origin not allowed"], "{refused:?}");
    assert!(
        refused.iter().all(|r| r["outcome"] == "denied" && r["client_ip"] == "127.0.0.1" && r.get("user").is_none()),
        "{refused:?}"
    );
    let text = serde_json::to_string(&refused).unwrap();
    assert!(!text.contains("canary-h7") && !text.contains("canary-o7"), "{text}");

    // The argument's value is nowhere: not in the records, the stream, the
    // database file or the log.
    let everything = export(&gw, &[]);
    assert!(!serde_json::to_string(&everything).unwrap().contains(CANARY));
    let streamed = std::fs::read_to_string(&stream).expect("the stream file");
    let by_gateway = everything.iter().filter(|r| r["auth"] != "cli").count();
    assert!(streamed.lines().count() >= by_gateway, "every record the gateway made is streamed too");
    assert!(streamed.contains("\"kind\":\"auth.failure\"") && !streamed.contains(CANARY));
    for f in std::fs::read_dir(gw.dir().join("data")).expect("data dir").flatten() {
        let bytes = std::fs::read(f.path()).unwrap_or_default();
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "{} holds the argument",
            f.path().display()
        );
    }
    assert!(!gw.log().contains(CANARY));

    // Filters: by user and by time.
    assert!(export(&gw, &["--user", "carol"]).iter().all(|r| r["user"] == "carol"));
    assert!(export(&gw, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let (code, text) = verify(&gw, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact"), "{text}");
}

/// Behind a reverse proxy named in `http.trusted_proxies`, the trail
/// records the client the proxy saw (the last `X-Forwarded-For` hop that is
/// not a trusted proxy), for calls, refused credentials and requests
/// refused at the edge alike; what a client wrote into the header itself
/// is not believed, and a peer that is not a trusted proxy cannot choose
/// the address it is recorded under.
#[tokio::test]
async fn the_client_behind_a_trusted_proxy_is_recorded_and_nobody_else_picks_an_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "echo__echo", "arguments": {"text": "through a proxy"}}});
    let mut proxied = config(&dir.path().join("a.jsonl"));
    proxied["http"] = json!({"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]});
    let gw = Gateway::start(proxied);
    let key = gw.create_key("alice", &[]);
    let alice = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let ok = alice.post_with(&call, &[("x-forwarded-for", "203.0.113.66, 198.51.100.7, 10.1.2.3")]).await;
    assert!(ok.status == 200 && ok.rpc().get("result").is_some(), "{}", ok.text);
    let forged = Mcp::stateless(gw.url("/mcp"), "bst_notakeyatall0000000000000000000000");
    assert_eq!(forged.post_with(&call, &[("x-forwarded-for", "198.51.100.8")]).await.status, 401);
    let foreign =
        alice.post_with(&call, &[("x-forwarded-for", "198.51.100.9"), ("origin", "http://elsewhere.example")]).await;
    assert_eq!(foreign.status, 403);
    // Without the header, the proxy is the client.
    assert_eq!(alice.post_with(&call, &[]).await.status, 200);
    let calls = records(&gw, &["--kind", "mcp.request", "--tool", "echo"], 2).await;
    let mut addresses: Vec<&str> = calls.iter().filter_map(|r| r["client_ip"].as_str()).collect();
    addresses.sort_unstable();
    assert_eq!(addresses, ["127.0.0.1", "198.51.100.7"], "{calls:?}");
    let failures = records(&gw, &["--kind", "auth.failure"], 1).await;
    assert_eq!(failures[0]["client_ip"], "198.51.100.8", "{failures:?}");
    let refused = records(&gw, &["--kind", "http.refused"], 1).await;
    assert_eq!(refused[0]["client_ip"], "198.51.100.9", "{refused:?}");

    // The same request from a peer that is not a trusted proxy.
    let mut direct = config(&dir.path().join("b.jsonl"));
    direct["http"] = json!({"trusted_proxies": ["10.0.0.0/8"]});
    let gw = Gateway::start(direct);
    let alice = Mcp::session(gw.url("/mcp"), &gw.create_key("alice", &[]), "2025-11-25").await;
    let ok = alice.post_with(&call, &[("x-forwarded-for", "198.51.100.7")]).await;
    assert!(ok.status == 200 && ok.rpc().get("result").is_some(), "{}", ok.text);
    let calls = records(&gw, &["--kind", "mcp.request", "--tool", "echo"], 1).await;
    assert_eq!(calls[0]["client_ip"], "127.0.0.1", "{calls:?}");
}

/// Another principal's session id gets the 404 of a session that does not
/// exist, and is audited as a denial; a made-up one as an error. So are
/// messages refused before any phase ran: not JSON, not JSON-RPC, or
/// without a session.
#[tokio::test]
async fn another_principal_s_session_is_refused_as_missing_and_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(config(&dir.path().join("audit.jsonl")));
    let alice = Mcp::session(gw.url("/mcp"), &gw.create_key("alice", &[]), "2025-11-25").await;
    let sid = alice.session.as_deref().expect("a session id");
    let carol_key = gw.create_key("carol", &[]);
    let stolen = Mcp::with_session(gw.url("/mcp"), &carol_key, sid);
    let made_up = Mcp::with_session(gw.url("/mcp"), &carol_key, "made-up-session-id-0000000000000000");
    let refused = stolen.request("tools/list", json!({})).await;
    let missing = made_up.request("tools/list", json!({})).await;
    assert_eq!((refused.status, missing.status), (404, 404));
    assert_eq!(refused.text, missing.text, "the answer does not tell a foreign session from a missing one");
    let deleted = reqwest::Client::new()
        .delete(gw.url("/mcp"))
        .bearer_auth(&carol_key)
        .header("mcp-session-id", sid)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 404);
    assert!(alice.call_tool("echo__echo", json!({"text": "still alice's"})).await.get("result").is_some());

    let denied = records(&gw, &["--user", "carol", "--outcome", "denied"], 2).await;
    assert!(denied.iter().all(|r| r["policy"] == "session of another principal"), "{denied:?}");
    assert_eq!(denied.iter().filter(|r| r["method"] == "tools/list").count(), 1, "{denied:?}");
    assert!(denied.iter().all(|r| r.get("session").is_none()), "alice's session id is not in carol's records");

    // Refused before any phase: each an error with Bastion's reason, and
    // nothing of what was sent.
    let post = |body: &'static str, session: Option<&str>| {
        let mut rq = reqwest::Client::new()
            .post(gw.url("/mcp"))
            .bearer_auth(&carol_key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(s) = session {
            rq = rq.header("mcp-session-id", s);
        }
        rq.send()
    };
    let statuses = [
        post("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"tools/list\", canary-Qx7", None)
            .await
            .expect("POST")
            .status(),
        post("{\"jsonrpc\": \"1.0\", \"canary\": \"canary-Qx7\"}", None).await.expect("POST").status(),
        post("{\"jsonrpc\": \"2.0\", \"id\": 2, \"method\": \"tools/list\"}", None).await.expect("POST").status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [400, 400, 400]);
    let plain = reqwest::Client::new()
        .post(gw.url("/mcp"))
        .bearer_auth(&carol_key)
        .header("content-type", "text/plain")
        .header("accept", "application/json, text/event-stream")
        .body("canary-Qx7")
        .send()
        .await
        .expect("POST");
    assert_eq!(plain.status(), 415);
    let errors = records(&gw, &["--user", "carol", "--outcome", "error"], 5).await;
    let reasons: Vec<&str> = errors.iter().filter_map(|r| r["reason"].as_str()).collect();
    for reason in [
        "unknown or ended session",
        "request body is not JSON",
        "not a JSON-RPC message",
        "no session id",
        "request body is not application/json",
    ] {
        assert!(reasons.contains(&reason), "{reason} in {errors:?}");
    }
    assert!(errors.iter().all(|r| r["kind"] == "mcp.request" && r["error_code"].is_i64()), "{errors:?}");
    assert!(!serde_json::to_string(&errors).unwrap().contains("canary-Qx7"), "nothing sent is recorded");
}

#[tokio::test]
async fn verify_finds_each_kind_of_tampering_where_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(config(&dir.path().join("audit.jsonl")));
    let alice = Mcp::stateless(gw.url("/mcp"), &gw.create_key("alice", &[]));
    for i in 0..6 {
        assert!(alice.call_tool("echo__echo", json!({"text": format!("call {i}")})).await.get("result").is_some());
    }
    // The calls' records come last (the tools' pins are recorded at the
    // first call's list fetch, before it): once they are written, all is.
    records(&gw, &["--kind", "mcp.request"], 6).await;
    let all = export(&gw, &[]);
    let last = all.iter().filter_map(|r| r["seq"].as_u64()).max().expect("numbered");
    assert_eq!(verify(&gw, &[]).0, 0);
    let checkpoint = gw.cli(&["audit", "checkpoint"]);
    assert!(checkpoint.status.success(), "{}", String::from_utf8_lossy(&checkpoint.stderr));
    let kept = dir.path().join("checkpoints.jsonl");
    std::fs::write(&kept, &checkpoint.stdout).expect("write the checkpoint");
    let db = db(&gw);
    // Each case changes the store as someone who can write it but lacks
    // the key would (keeping each batch's bounds true to its records), is
    // found at its record, and is undone.
    sql(
        &db,
        "CREATE TABLE saved AS SELECT * FROM audit_batches; CREATE TABLE saved_heads AS SELECT * FROM audit_heads;",
    );
    let restore = "DELETE FROM audit_batches; INSERT INTO audit_batches SELECT * FROM saved;
                   DELETE FROM audit_heads; INSERT INTO audit_heads SELECT * FROM saved_heads;";
    // Where each is found: at the record, or (for a batch's bounds) at
    // the first or the last record of its batch.
    let (first, end) = batch_of(&db, 4);
    let cases: [(&str, &str, u64, u64, &str); 7] = [
        ("a changed record", "change", 3, 3, "MAC"),
        ("a deleted record", "delete", 2, 2, "missing"),
        ("an inserted record", "insert", 3, 3, "MAC"),
        ("reordered records", "swap", 2, 2, "MAC"),
        ("a cut tail", "cut", last, last, "checkpoint"),
        ("a batch's changed times", "times", 4, first, "times"),
        ("a batch's changed end", "end", 4, end, "past the end"),
    ];
    let with_checkpoints = ["--checkpoints", kept.to_str().expect("utf-8 path")];
    for (what, how, seq, at, says) in cases {
        tamper(&db, how, seq);
        let (code, text) = verify(&gw, &with_checkpoints);
        assert_eq!(code, 1, "{what}: {text}");
        assert!(text.contains(&format!("record {at}:")) && text.contains(says), "{what} found at record {at}: {text}");
        sql(&db, restore);
        let (code, text) = verify(&gw, &with_checkpoints);
        assert_eq!(code, 0, "{what} undone: {text}");
    }
    // A row with a forged record, wherever it is put, is read and found.
    sql(
        &db,
        "INSERT INTO audit_batches SELECT chain, first_seq + 100000, last_seq, ts_min, ts_max, records FROM saved LIMIT 1",
    );
    let (code, text) = verify(&gw, &[]);
    assert!(code == 1 && text.contains("again"), "{text}");
    sql(&db, restore);
    // Without the checkpoint, a cut tail with its head set back is not
    // visible: that is what checkpoints kept elsewhere are for.
    tamper(&db, "cut", last);
    assert_eq!(verify(&gw, &[]).0, 0);
    assert_eq!(verify(&gw, &with_checkpoints).0, 1);
}

/// Changes the stored chain `main` at record `seq` as someone who can
/// write the database but lacks the key would: the records' lines are
/// edited, and each batch's bounds set to what its records now say (or,
/// for `times` and `end`, only a bound is changed).
fn tamper(db: &Path, how: &str, seq: u64) {
    const SCRIPT: &str = r#"
import sqlite3, sys, json, datetime
db, how, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db)
batches = []
for first, records in c.execute("SELECT first_seq, records FROM audit_batches WHERE chain = 'main' ORDER BY first_seq"):
    lines = []
    for line in records.split("\n"):
        s, rest = line.split(" ", 1)
        body, mac = rest.rsplit(" ", 1)
        lines.append([int(s), body, mac])
    batches.append(lines)
where = {l[0]: (b, i) for b, lines in enumerate(batches) for i, l in enumerate(lines)}
b, i = where[n]
line = batches[b][i]
bound = None
if how == "change":
    line[1] = line[1].replace('"outcome":"ok"', '"outcome":"error"')
elif how == "delete":
    del batches[b][i]
elif how == "insert":
    for lines in batches:
        for l in lines:
            if l[0] >= n:
                l[0] += 1
    prev = batches[where[n - 1][0]][where[n - 1][1]]
    batches[b].insert(i, [n, prev[1], prev[2]])
    c.execute("UPDATE audit_heads SET seq = seq + 1 WHERE chain = 'main'")
elif how == "swap":
    m = max(where)
    other = batches[where[m][0]][where[m][1]] if m != n else None
    line[1], line[2], other[1], other[2] = other[1], other[2], line[1], line[2]
elif how == "cut":
    del batches[b][i]
    prev = batches[where[n - 1][0]][where[n - 1][1]]
    c.execute("UPDATE audit_heads SET seq = ?, mac = ? WHERE chain = 'main'", (n - 1, bytes.fromhex(prev[2])))
else:
    bound = (b, how)
def micros(body):
    t = datetime.datetime.fromisoformat(json.loads(body)["ts"].replace("Z", "+00:00"))
    return (t - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // datetime.timedelta(microseconds=1)
c.execute("DELETE FROM audit_batches WHERE chain = 'main'")
for k, lines in enumerate(batches):
    if not lines:
        continue
    ts = [micros(l[1]) for l in lines]
    first, last, lo, hi = lines[0][0], lines[-1][0], min(ts), max(ts)
    if bound == (k, "times"):
        hi += 1
    if bound == (k, "end"):
        last -= 1
    text = "\n".join("%d %s %s" % (l[0], l[1], l[2]) for l in lines)
    c.execute("INSERT INTO audit_batches VALUES ('main', ?, ?, ?, ?, ?)", (first, last, lo, hi, text))
c.commit()
"#;
    let out =
        run_bounded(Command::new(&tools().python).arg("-c").arg(SCRIPT).arg(db).arg(how).arg(seq.to_string()), WAIT);
    assert!(out.status.success(), "{how} {seq}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The first and last record of the stored batch holding record `seq` of
/// `main`.
fn batch_of(db: &Path, seq: u64) -> (u64, u64) {
    const SCRIPT: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
q = "SELECT first_seq, last_seq FROM audit_batches WHERE chain = 'main' AND first_seq <= ? ORDER BY first_seq DESC LIMIT 1"
print("%d %d" % c.execute(q, (int(sys.argv[2]),)).fetchone())
"#;
    let out = run_bounded(Command::new(&tools().python).arg("-c").arg(SCRIPT).arg(db).arg(seq.to_string()), WAIT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (first, last) = text.trim().split_once(' ').expect("two numbers");
    (first.parse().expect("a number"), last.parse().expect("a number"))
}

#[tokio::test]
async fn administration_changes_are_recorded_without_values() {
    const SECRET: &str = "canary-audit-secret-P4wQ9z";
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(config(&dir.path().join("audit.jsonl")));
    let key = gw.create_key("alice", &[]);
    let out = crate::users_cli::cli_with_input(&gw, &["secrets", "set", "--user", "alice", "TOKEN"], SECRET);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = gw.cli(&["users", "add", "dave", "--role", "viewer"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = gw.cli(&["keys", "list", "--json", "--user", "alice"]);
    let id = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok()?["id"].as_str().map(str::to_string))
        .expect("a key id");
    assert!(gw.cli(&["keys", "revoke", &id]).status.success());

    let changes: Vec<Value> =
        export(&gw, &[]).into_iter().filter(|r| r["kind"] != "mcp.request" && r["kind"] != "auth.failure").collect();
    let kinds: Vec<&str> = changes.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds, ["key.create", "secret.set", "user.add", "key.revoke"], "{changes:?}");
    for r in &changes {
        assert_eq!((r["auth"].as_str(), r["outcome"].as_str()), (Some("cli"), Some("ok")), "{r}");
        assert!(r["user"].as_str().is_some_and(|u| !u.is_empty()), "the operator: {r}");
    }
    assert_eq!(changes[0]["detail"]["for_user"], "alice");
    assert_eq!(
        (changes[1]["detail"]["owner"].as_str(), changes[1]["detail"]["name"].as_str()),
        (Some("alice"), Some("TOKEN"))
    );
    assert_eq!(changes[3]["detail"]["key_id"], id.as_str());
    let text = serde_json::to_string(&changes).expect("json");
    assert!(!text.contains(SECRET) && !text.contains(&key), "no secret and no key in the trail");
    assert_eq!(verify(&gw, &[]).0, 0, "the gateway's and the commands' records form one chain");
}

#[tokio::test]
async fn anomalies_and_limit_refusals_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir.path().join("audit.jsonl"));
    cfg["audit"]["anomaly"] = json!({
        "call_rate": {"calls": 5, "window": "1m"},
        "denials": {"count": 3, "window": "1m"},
        "response_bytes": 2000
    });
    cfg["limits"] = json!({"per_principal": {"sessions": 1}});
    let gw = Gateway::start(cfg);
    let alice_key = gw.create_key("alice", &[]);
    let alice = Mcp::stateless(gw.url("/mcp"), &alice_key);

    // A burst of calls over the rate: one signal, not one per call.
    for i in 0..8 {
        let r = alice.call_tool("echo__echo", json!({"text": format!("{CANARY}-{i}")})).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    // One response far larger than usual.
    let big = alice.call_tool("echo__echo", json!({"text": "x".repeat(5000)})).await;
    assert!(big.get("result").is_some());
    // Someone trying keys from one address.
    for _ in 0..5 {
        let bad = Mcp::stateless(gw.url("/mcp"), "bst_notakeyatall0000000000000000000000");
        assert_eq!(bad.request("tools/list", json!({})).await.status, 401);
    }
    // A cap reached: refused with 429, and recorded.
    let _first = Mcp::session(gw.url("/mcp"), &alice_key, "2025-11-25").await;
    let second = crate::harness::http()
        .post(gw.url("/mcp"))
        .bearer_auth(&alice_key)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bastion-it", "version": "0"}
        }}))
        .send()
        .await
        .expect("initialize");
    assert_eq!(second.status(), 429);

    let rate = records(&gw, &["--kind", "anomaly.call_rate"], 1).await;
    assert_eq!(rate.len(), 1, "one signal within the cooldown: {rate:?}");
    assert_eq!((rate[0]["user"].as_str(), rate[0]["detail"]["threshold"].as_u64()), (Some("alice"), Some(5)));
    let large = records(&gw, &["--kind", "anomaly.large_response"], 1).await;
    assert_eq!((large[0]["server"].as_str(), large[0]["tool"].as_str()), (Some("echo"), Some("echo")), "{large:?}");
    assert!(large[0]["bytes_out"].as_u64().is_some_and(|b| b > 2000));
    let probing = records(&gw, &["--kind", "anomaly.denials"], 1).await;
    assert_eq!(probing[0]["client_ip"], "127.0.0.1", "{probing:?}");
    assert!(probing[0].get("user").is_none());
    let limited = records(&gw, &["--kind", "limit.reached"], 1).await;
    assert_eq!(
        (limited[0]["user"].as_str(), limited[0]["outcome"].as_str(), limited[0]["policy"].as_str()),
        (Some("alice"), Some("denied"), Some("limit:sessions")),
        "{limited:?}"
    );
    let metrics = crate::harness::http().get(gw.url("/metrics")).send().await.expect("/metrics");
    let metrics = metrics.text().await.expect("text");
    for signal in ["call_rate", "large_response", "denials"] {
        let line = format!("bastion_anomalies_total{{kind=\"{signal}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(metrics.lines().any(|l| l.starts_with("bastion_audit_records_written_total ")), "{metrics}");
    let log = gw.log();
    for signal in ["call_rate", "large_response", "denials"] {
        assert!(log.contains("anomaly") && log.contains(signal), "a warning for {signal}");
    }
    assert!(!log.contains(CANARY));
    let (code, text) = verify(&gw, &[]);
    assert_eq!(code, 0, "{text}");
}
