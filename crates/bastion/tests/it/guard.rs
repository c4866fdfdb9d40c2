//! The data guard on the request path: values found in a call's arguments
//! and in what servers answer are masked or refused, in both protocol eras
//! and on the stateless path; a refused call never reaches its server;
//! every value found is in the call's audit record, never the value.

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, WAIT, eventually, run_client, tools};
use crate::mock_upstream::{Behaviour, MockUpstream};

/// A resident registration number with a valid date and check digit.
const RRN: &str = "900101-1234568";
/// A card number passing Luhn's check.
const CARD: &str = "4111 1111 1111 1111";
/// An AWS access key id.
const AWS_KEY: &str = "AKIAZ7Q4M2XW3RT5LK6P";

fn message() -> String {
    format!("rrn {RRN} card {CARD} key {AWS_KEY}")
}

fn assert_no_raw_value(text: &str, what: &str) {
    for raw in [RRN, CARD, AWS_KEY] {
        assert!(!text.contains(raw), "{what}: {raw} came through: {text}");
    }
}

/// server-everything over stdio, with the guard only logging what comes in
/// (so the server echoes the values) and masking what goes out (the
/// defaults, for these detectors).
fn everything_logging_inbound() -> Value {
    let t = tools();
    let log_inbound = json!({"action": "log", "direction": "inbound"});
    json!({
        "mcpServers": {"everything": {"command": t.node, "args": [t.everything_js, "stdio"]}},
        "guard": {"detectors": {
            "kr_rrn": log_inbound, "credit_card": log_inbound, "aws_access_key": log_inbound
        }}
    })
}

/// `bastion audit export`, as JSON objects, once at least `n` records of
/// `mcp.request` are there.
async fn request_records(gw: &Gateway, n: usize) -> Vec<Value> {
    eventually(WAIT, "the audit records are written", || async {
        let out = gw.cli(&["audit", "export", "--kind", "mcp.request"]);
        assert!(out.status.success(), "audit export: {}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (got.len() >= n).then_some(got)
    })
    .await
}

/// server-everything's `echo` of a message carrying a resident number, a
/// card number and an AWS key comes back masked, through the Python SDK
/// over Streamable HTTP and over the legacy HTTP+SSE transport; the audit
/// records name what was found and where, never the values.
#[tokio::test]
async fn an_echo_comes_back_masked_in_both_eras_and_the_audit_names_what_was_found() {
    let gw = Gateway::start(everything_logging_inbound());
    let key = gw.create_key("guarded", &[]);
    let args = json!({"message": message()}).to_string();
    for (script, path) in [("session_client.py", "/mcp"), ("legacy_sse_client.py", "/sse")] {
        let run = run_client(
            script,
            &gw.url(path),
            &key,
            &["--action", "call-tool", "--tool", "everything__echo", "--args", &args],
        )
        .await;
        let out = run.ok();
        let text = out["text"].as_str().unwrap_or_else(|| panic!("{script}: no text: {out}"));
        assert_no_raw_value(text, script);
        assert!(text.contains("[REDACTED:aws_access_key]"), "{script}: {text}");
        assert!(text.contains("rrn ") && text.contains("card ") && text.contains("key "), "{script}: {text}");
    }

    let records = request_records(&gw, 2).await;
    let calls: Vec<&Value> = records.iter().filter(|r| r["method"] == "tools/call").collect();
    assert_eq!(calls.len(), 2, "one record per call: {records:#?}");
    for r in &calls {
        let text = r.to_string();
        assert_no_raw_value(&text, "the audit record");
        let hits = r["detail"]["guard"].as_array().unwrap_or_else(|| panic!("no guard hits: {r}"));
        for (detector, direction, action) in [
            ("kr_rrn", "inbound", "log"),
            ("credit_card", "inbound", "log"),
            ("aws_access_key", "inbound", "log"),
            ("kr_rrn", "outbound", "mask"),
            ("credit_card", "outbound", "mask"),
            ("aws_access_key", "outbound", "mask"),
        ] {
            assert!(
                hits.iter().any(|h| h["detector"] == detector
                    && h["direction"] == direction
                    && h["action"] == action
                    && h["server"] == "everything"
                    && h["tool"] == "echo"),
                "no {direction} {detector} {action} hit in {r}"
            );
        }
        assert!(hits.iter().any(|h| h["path"] == "/arguments/message"), "{r}");
        assert_eq!(r["outcome"], "ok", "{r}");
    }
}

/// With the defaults, an AWS key in a call's arguments refuses the call:
/// the error names the detector and the argument, not the value, and the
/// server never hears of it — on the session era, on the aggregate
/// endpoint, and on the stateless path, where the server speaking the
/// stateless version itself is not passed the request unread.
#[tokio::test]
async fn a_secret_in_the_arguments_is_refused_and_never_reaches_the_server() {
    let mock = MockUpstream::start(true, Behaviour::Normal);
    let gw = Gateway::start(json!({"mcpServers": {"mock": {"url": mock.url, "type": "streamable-http"}}}));
    let key = gw.create_key("careless", &[]);
    let leaked = format!("deploy with {AWS_KEY} please");

    let session = Mcp::session(gw.url("/mcp"), &key, "2025-06-18").await;
    let stateless = Mcp::stateless(gw.url("/mcp/mock"), &key);
    for (what, rpc) in [
        ("session, /mcp", session.call_tool("mock__echo", json!({"text": leaked})).await),
        ("stateless, /mcp/mock", stateless.call_tool("echo", json!({"text": leaked})).await),
    ] {
        let error = rpc.get("error").unwrap_or_else(|| panic!("{what}: the call was not refused: {rpc}"));
        assert_eq!(error["code"], -32003, "{what}: {rpc}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("aws_access_key") && message.contains("/arguments/text"), "{what}: {message}");
        assert!(!rpc.to_string().contains(AWS_KEY), "{what}: the refusal repeats the value: {rpc}");
    }
    // A clean call gets through, on both paths, so the server was reachable.
    let rpc = session.call_tool("mock__echo", json!({"text": "nothing to see"})).await;
    assert!(rpc.get("result").is_some(), "{rpc}");
    let rpc = stateless.call_tool("echo", json!({"text": "nothing to see either"})).await;
    assert!(rpc.get("result").is_some(), "{rpc}");
    let seen = mock.requests();
    assert!(seen.iter().any(|r| r.body.contains("nothing to see either")), "{seen:#?}");
    assert!(!seen.iter().any(|r| r.body.contains(AWS_KEY)), "the key reached the server: {seen:#?}");

    let records = request_records(&gw, 4).await;
    let refused: Vec<&Value> = records.iter().filter(|r| r["outcome"] == "denied").collect();
    assert_eq!(refused.len(), 2, "{records:#?}");
    for r in refused {
        assert_eq!(r["policy"], "guard:aws_access_key", "{r}");
        assert_eq!(r["detail"]["guard"][0]["action"], "block", "{r}");
        assert!(!r.to_string().contains(AWS_KEY), "{r}");
    }
}

/// A result carrying a secret is masked on the way out, and with `block`
/// outbound it is refused whole (the server did its work; the caller gets
/// the refusal); what a server's tool returns is read whatever the
/// transport — here a server that speaks the stateless version, whose
/// answers are otherwise relayed as they are.
#[tokio::test]
async fn results_are_masked_or_refused_on_the_way_out() {
    let mock = MockUpstream::start(true, Behaviour::Normal);
    let gw = Gateway::start(json!({
        "guard": {"detectors": {"credit_card": {"action": "block"}}},
        "mcpServers": {
            "masked": {"url": mock.url, "type": "streamable-http",
                       "guard": {"detectors": {
                           "aws_access_key": {"action": "log", "direction": "inbound"},
                           "credit_card": {"action": "mask"}
                       }}},
            "blocked": {"url": mock.url, "type": "streamable-http",
                        "guard": {"detectors": {"credit_card": {"action": "log", "direction": "inbound"}}}}
        }
    }));
    let key = gw.create_key("reader", &[]);
    let masked = Mcp::stateless(gw.url("/mcp/masked"), &key);
    let rpc = masked.call_tool("echo", json!({"text": format!("the key is {AWS_KEY}")})).await;
    let text = rpc.to_string();
    assert!(!text.contains(AWS_KEY), "{rpc}");
    assert!(text.contains("[REDACTED:aws_access_key]"), "{rpc}");
    assert!(mock.requests().iter().any(|r| r.body.contains(AWS_KEY)), "logged inbound, so the server got it");

    // Cards: masked both ways on `masked` (the server gets the masked
    // text), logged in and blocked out on `blocked`.
    let session = Mcp::session(gw.url("/mcp"), &key, "2025-06-18").await;
    let rpc = session.call_tool("masked__echo", json!({"text": format!("card {CARD} masked")})).await;
    assert!(rpc.get("result").is_some() && !rpc.to_string().contains(CARD), "{rpc}");
    let seen = mock.requests();
    let got = seen.iter().find(|r| r.body.contains(" masked")).unwrap_or_else(|| panic!("{seen:#?}"));
    assert!(!got.body.contains(CARD), "masked inbound, yet the server got the card: {}", got.body);

    let rpc = session.call_tool("blocked__echo", json!({"text": format!("card {CARD} blocked")})).await;
    let error = rpc.get("error").unwrap_or_else(|| panic!("the result was not refused: {rpc}"));
    assert_eq!(error["code"], -32003, "{rpc}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("credit_card") && m.contains("result")), "{rpc}");
    assert!(!rpc.to_string().contains(CARD), "{rpc}");
    assert!(mock.requests().iter().any(|r| r.body.contains(" blocked")), "the server was called");
}

/// What a server asks of the client (sampling) is read on its way out, and
/// what the client answers (elicitation) on its way back to the server.
#[tokio::test]
async fn sampling_requests_and_elicitation_answers_are_read_too() {
    let t = tools();
    let gw = Gateway::start(json!({
        "mcpServers": {"sampler": {"command": t.node, "args": [t.everything_js, "stdio"]}},
        // The call's own arguments are only logged, so that the server has
        // the number to put in its request.
        "guard": {"detectors": {"kr_rrn": {"action": "log", "direction": "inbound"}}}
    }));
    let key = gw.create_key("sampled", &[]);
    let prompt = json!({"prompt": format!("summarise the file of {RRN}"), "maxTokens": 10}).to_string();
    let run = run_client(
        "session_client.py",
        &gw.url("/mcp"),
        &key,
        &["--action", "sampling-tool", "--tool", "sampler__trigger-sampling-request", "--args", &prompt],
    )
    .await;
    let out = run.ok();
    let requests = out["samplingRequests"].as_array().cloned().unwrap_or_default();
    assert_eq!(requests.len(), 1, "{out}");
    let seen = requests[0].to_string();
    assert!(seen.contains("summarise the file of") && !seen.contains(RRN), "the client saw: {seen}");
    assert!(seen.contains("900101-1") || seen.contains("REDACTED"), "masked, not dropped: {seen}");

    let answer = json!({"name": format!("card {CARD}")}).to_string();
    let run = run_client(
        "session_client.py",
        &gw.url("/mcp"),
        &key,
        &["--action", "sampling-tool", "--tool", "sampler__trigger-elicitation-request", "--elicit", &answer],
    )
    .await;
    let out = run.ok();
    let text = out["text"].as_str().unwrap_or_default();
    assert!(text.contains("card ") && !text.contains(CARD), "the server got the card: {out}");

    // Each finding is audited, in the name of the user whose call the
    // relayed message belongs to: where and what, never the value.
    let relayed = eventually(WAIT, "the relayed findings audited", || async {
        let records = crate::harness::audit_export(&gw, &["--user", "sampled"]);
        let relayed: Vec<Value> = records.into_iter().filter(|r| r["kind"] == "guard.relayed").collect();
        (relayed.len() >= 2).then_some(relayed)
    })
    .await;
    for (method, detector) in [("sampling/createMessage", "kr_rrn"), ("elicitation/create", "credit_card")] {
        let r = relayed.iter().find(|r| r["method"] == method).unwrap_or_else(|| panic!("{method}: {relayed:?}"));
        assert_eq!(r["server"], "sampler", "{r}");
        assert_eq!(r["outcome"], "ok", "masked, not refused: {r}");
        let hits = r["detail"]["guard"].as_array().unwrap_or_else(|| panic!("no hits: {r}"));
        assert!(hits.iter().any(|h| h["detector"] == detector && h["action"] == "mask"), "{r}");
    }
    let all = serde_json::to_string(&relayed).unwrap();
    assert!(!all.contains(RRN) && !all.contains(CARD), "a value in the audit trail: {all}");
}
