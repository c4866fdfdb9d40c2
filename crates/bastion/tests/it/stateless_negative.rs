//! The stateless version (2026-07-28), refused where it must be: routing
//! headers that disagree with the body (`Mcp-Method`, `Mcp-Name`,
//! `Mcp-Param-*`, plain, typed and base64-encoded), and pagination cursors
//! that Bastion did not hand out for this list (forged, out of range, from
//! another method or another endpoint). Each refusal is checked for its
//! exact HTTP status and JSON-RPC code, next to the request that passes.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, Options, Reply, STATELESS, fixture_bin, http, tool_text};
use crate::mock_upstream::{Behaviour, MockUpstream};

/// -32020: a header disagrees with the body (HTTP 400).
const HEADER_MISMATCH: i64 = -32020;
/// -32602: invalid params (HTTP 200 in this version).
const INVALID_PARAMS: i64 = -32602;

/// A gateway with the fixture's `everything` server over stdio (its
/// `test_header_param` mirrors `region` in `Mcp-Param-Region`) and a server
/// whose `typed` tool mirrors a string, an integer and a boolean — once
/// speaking only the session-based versions (`typed`, bridged), once
/// speaking 2026-07-28 too (`direct`, passed through); lists are paged two
/// items at a time.
struct Negatives {
    gw: Gateway,
    key: String,
    _typed: MockUpstream,
    direct: MockUpstream,
}

fn negatives() -> &'static Negatives {
    static SHARED: OnceLock<Negatives> = OnceLock::new();
    SHARED.get_or_init(|| {
        let typed = MockUpstream::start(false, Behaviour::Normal);
        let direct = MockUpstream::start(true, Behaviour::Normal);
        let gw = Gateway::start_with(
            json!({
                "mcpServers": {
                    "everything": {"command": fixture_bin(), "args": ["everything", "--stdio"]},
                    "typed": {"url": typed.url, "type": "streamable-http"},
                    // The data guard off: what it reads is never passed
                    // through unread.
                    "direct": {"url": direct.url, "type": "streamable-http", "guard": {"enabled": false}}
                },
                "http": {"page_size": 2}
            }),
            Options { shared: true, ..Options::default() },
        );
        let key = gw.create_key("negatives", &[]);
        Negatives { gw, key, _typed: typed, direct }
    })
}

fn body(id: i64, method: &str, params: Value) -> Value {
    let mut params = params;
    params["_meta"]["io.modelcontextprotocol/protocolVersion"] = Value::from(STATELESS);
    params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = json!({});
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn tool_call(name: &str, args: Value) -> Value {
    body(1, "tools/call", json!({"name": name, "arguments": args}))
}

/// POSTs `body` to `path` with the version header and exactly the other
/// headers given (raw bytes allowed in values).
async fn send(path: &str, headers: &[(&str, &[u8])], body: &Value) -> Reply {
    let n = negatives();
    let mut b = http()
        .post(n.gw.url(path))
        .bearer_auth(&n.key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", STATELESS);
    for (name, value) in headers {
        let value = reqwest::header::HeaderValue::from_bytes(value).expect("a header value");
        b = b.header(*name, value);
    }
    Reply::read(b.body(body.to_string()).send().await.expect("POST")).await
}

/// `tools/call` of `tool` on `/mcp` with its method and name headers and
/// the given `Mcp-Param-*` headers.
async fn call_with_params(tool: &str, args: Value, params: &[(&str, &str)]) -> Reply {
    let mut headers: Vec<(&str, &[u8])> = vec![("mcp-method", b"tools/call"), ("mcp-name", tool.as_bytes())];
    headers.extend(params.iter().map(|(n, v)| (*n, v.as_bytes())));
    send("/mcp", &headers, &tool_call(tool, args)).await
}

fn assert_refused(r: &Reply, status: u16, code: i64, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    let rpc = r.json();
    assert_eq!(rpc["jsonrpc"], "2.0", "{what}: {rpc}");
    assert_eq!(rpc["id"], 1, "{what}: the request's id: {rpc}");
    assert_eq!(rpc["error"]["code"], code, "{what}: {rpc}");
    assert!(rpc.get("result").is_none(), "{what}: {rpc}");
}

fn assert_mismatch(r: &Reply, what: &str) {
    assert_refused(r, 400, HEADER_MISMATCH, what);
}

fn assert_text(r: &Reply, expected: &str, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text);
    assert_eq!(tool_text(&r.rpc()), expected, "{what}");
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sentinel(bytes: &[u8]) -> String {
    format!("=?base64?{}?=", b64(bytes))
}

// ---------------------------------------------------------------------------
// Mcp-Param-*
// ---------------------------------------------------------------------------

const REGION_TOOL: &str = "everything__test_header_param";

#[tokio::test]
async fn a_param_header_that_matches_passes() {
    let r = call_with_params(REGION_TOOL, json!({"region": "us-west1"}), &[("mcp-param-region", "us-west1")]).await;
    assert_text(&r, "region: us-west1", "the plain value");
    let encoded = sentinel(b"us-west1");
    let r = call_with_params(REGION_TOOL, json!({"region": "us-west1"}), &[("mcp-param-region", &encoded)]).await;
    assert_text(&r, "region: us-west1", "the same value base64-encoded");
    // A value that cannot travel as plain ASCII travels encoded.
    let encoded = sentinel("zürich-1".as_bytes());
    let r = call_with_params(REGION_TOOL, json!({"region": "zürich-1"}), &[("mcp-param-region", &encoded)]).await;
    assert_text(&r, "region: zürich-1", "a non-ASCII value, encoded");
}

#[tokio::test]
async fn a_param_header_that_differs_is_32020() {
    let args = json!({"region": "us-west1"});
    for sent in ["eu-central1", "US-WEST1", "us-west", "us-west1x"] {
        let r = call_with_params(REGION_TOOL, args.clone(), &[("mcp-param-region", sent)]).await;
        assert_mismatch(&r, &format!("Mcp-Param-Region: {sent}"));
    }
}

#[tokio::test]
async fn a_missing_param_header_is_32020() {
    let r = call_with_params(REGION_TOOL, json!({"region": "us-west1"}), &[]).await;
    assert_mismatch(&r, "no Mcp-Param-Region for a region in the body");
    // Another tool's header does not stand in for it.
    let r = call_with_params(REGION_TOOL, json!({"region": "us-west1"}), &[("mcp-param-zone", "us-west1")]).await;
    assert_mismatch(&r, "Mcp-Param-Zone instead of Mcp-Param-Region");
}

#[tokio::test]
async fn base64_param_headers_are_decoded_and_bad_ones_refused() {
    let args = json!({"region": "us-west1"});
    let cases = [
        (sentinel(b"eu-central1"), "another value, encoded"),
        ("=?base64?!!!not-base64!!!?=".to_string(), "a payload that is not base64"),
        (sentinel(&[0xff, 0xfe, 0x75, 0x73]), "a payload that is not UTF-8"),
        ("=?base64?dXMtd2VzdDE=".to_string(), "an unterminated sentinel, taken literally"),
    ];
    for (sent, what) in cases {
        let r = call_with_params(REGION_TOOL, args.clone(), &[("mcp-param-region", &sent)]).await;
        assert_mismatch(&r, &format!("{what}: {sent}"));
    }
    // Bytes a header value may carry but that are not text.
    let mut headers: Vec<(&str, &[u8])> = vec![("mcp-method", b"tools/call"), ("mcp-name", REGION_TOOL.as_bytes())];
    headers.push(("mcp-param-region", b"us-west1\xe9"));
    let r = send("/mcp", &headers, &tool_call(REGION_TOOL, args.clone())).await;
    assert_mismatch(&r, "a header value that is not visible ASCII");
}

const TYPED_TOOL: &str = "typed__typed";

#[tokio::test]
async fn typed_param_headers_compare_by_type() {
    let args = json!({"region": "eu", "count": 42, "flag": true});
    let ok = |count: &'static str, flag: &'static str| {
        [("mcp-param-region", "eu"), ("mcp-param-count", count), ("mcp-param-flag", flag)]
    };
    for (count, flag, what) in [
        ("42", "true", "exact"),
        ("42.0", "true", "an integer compares numerically"),
        ("=?base64?NDI=?=", "true", "encoded"),
    ] {
        let r = call_with_params(TYPED_TOOL, args.clone(), &ok(count, flag)).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        let echoed: Value = serde_json::from_str(&tool_text(&r.rpc())).expect("the arguments");
        assert_eq!(echoed, args, "{what}");
    }
    for (count, flag, what) in [
        ("43", "true", "another number"),
        ("forty-two", "true", "not a number"),
        ("", "true", "an empty number"),
        ("0x2a", "true", "a number in another notation"),
        ("42", "false", "the other boolean"),
        ("42", "True", "a boolean spelled otherwise"),
        ("42", "1", "a boolean as a number"),
        ("42", "", "an empty boolean"),
    ] {
        let r = call_with_params(TYPED_TOOL, args.clone(), &ok(count, flag)).await;
        assert_mismatch(&r, &format!("{what}: Count {count:?}, Flag {flag:?}"));
    }
    // One header missing while its argument is in the body.
    let r = call_with_params(TYPED_TOOL, args.clone(), &[("mcp-param-region", "eu"), ("mcp-param-count", "42")]).await;
    assert_mismatch(&r, "no Mcp-Param-Flag");
    // Absent and null arguments expect no header.
    let r = call_with_params(TYPED_TOOL, json!({"region": "eu"}), &[("mcp-param-region", "eu")]).await;
    assert_eq!(r.status, 200, "absent arguments: {}", r.text);
    assert!(r.rpc().get("result").is_some(), "{}", r.text);
    let r = call_with_params(
        TYPED_TOOL,
        json!({"region": "eu", "count": null, "flag": null}),
        &[("mcp-param-region", "eu")],
    )
    .await;
    assert_eq!(r.status, 200, "null arguments: {}", r.text);
    assert!(r.rpc().get("result").is_some(), "{}", r.text);
}

/// On a single-server endpoint whose server speaks this version itself,
/// requests are passed through — but only once their headers agree with
/// the body: a mismatch is refused by Bastion and never reaches the server.
#[tokio::test]
async fn a_mismatch_for_a_passed_through_server_never_reaches_it() {
    let n = negatives();
    let args = |marker: &str| json!({"region": marker, "count": 7, "flag": false});
    let call = |marker: &str| tool_call("typed", args(marker));
    let sent = |marker: &str| n.direct.requests().into_iter().filter(|r| r.body.contains(marker)).count();
    let send_direct = |marker: &'static str, headers: Vec<(&'static str, &'static [u8])>| async move {
        send("/mcp/direct", &headers, &call(marker)).await
    };
    let base = |marker: &'static str| -> Vec<(&'static str, &'static [u8])> {
        vec![("mcp-method", b"tools/call"), ("mcp-name", b"typed"), ("mcp-param-region", marker.as_bytes())]
    };

    let mut good = base("direct-agreeing");
    good.extend([("mcp-param-count", &b"7"[..]), ("mcp-param-flag", b"false")]);
    let r = send_direct("direct-agreeing", good).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.rpc().get("result").is_some(), "{}", r.text);
    let forwarded =
        n.direct.requests().into_iter().find(|r| r.body.contains("direct-agreeing")).expect("passed through");
    assert_eq!(forwarded.header("mcp-param-count"), Some("7"), "the headers travel with it: {}", forwarded.raw());

    let mut wrong_count = base("direct-wrong-count");
    wrong_count.extend([("mcp-param-count", &b"8"[..]), ("mcp-param-flag", b"false")]);
    let mut no_flag = base("direct-no-flag");
    no_flag.push(("mcp-param-count", b"7"));
    let mut wrong_name = base("direct-wrong-name");
    wrong_name[1] = ("mcp-name", b"echo");
    wrong_name.extend([("mcp-param-count", &b"7"[..]), ("mcp-param-flag", b"false")]);
    let mut no_method = base("direct-no-method");
    no_method.remove(0);
    no_method.extend([("mcp-param-count", &b"7"[..]), ("mcp-param-flag", b"false")]);
    for (marker, headers) in [
        ("direct-wrong-count", wrong_count),
        ("direct-no-flag", no_flag),
        ("direct-wrong-name", wrong_name),
        ("direct-no-method", no_method),
    ] {
        let r = send_direct(marker, headers).await;
        assert_mismatch(&r, marker);
        assert_eq!(sent(marker), 0, "{marker}: the refused request reached the server");
    }
}

// ---------------------------------------------------------------------------
// Mcp-Method and Mcp-Name
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_or_different_mcp_method_is_32020() {
    let list = body(1, "tools/list", json!({}));
    let r = send("/mcp", &[], &list).await;
    assert_mismatch(&r, "tools/list without Mcp-Method");
    let r = send("/mcp", &[("mcp-method", b"tools/list")], &list).await;
    assert_eq!(r.status, 200, "with it: {}", r.text);

    let call = tool_call("everything__test_simple_text", json!({}));
    let name: &[u8] = b"everything__test_simple_text";
    let r = send("/mcp", &[("mcp-name", name)], &call).await;
    assert_mismatch(&r, "tools/call without Mcp-Method");
    for sent in [&b"tools/list"[..], b"TOOLS/CALL", b"tools/calls", b"prompts/get"] {
        let r = send("/mcp", &[("mcp-method", sent), ("mcp-name", name)], &call).await;
        assert_mismatch(&r, &format!("Mcp-Method {:?} for tools/call", String::from_utf8_lossy(sent)));
    }
    let r = send("/mcp", &[("mcp-method", b"tools/call"), ("mcp-name", name)], &call).await;
    assert_eq!(r.status, 200, "with it: {}", r.text);
    assert!(r.rpc().get("result").is_some(), "{}", r.text);
}

#[tokio::test]
async fn a_missing_or_different_mcp_name_is_32020() {
    let cases = [
        (
            "tools/call",
            json!({"name": "everything__test_simple_text", "arguments": {}}),
            "everything__test_simple_text",
        ),
        ("prompts/get", json!({"name": "everything__test_simple_prompt"}), "everything__test_simple_prompt"),
        ("resources/read", json!({"uri": "everything+test://static-text"}), "everything+test://static-text"),
    ];
    for (method, params, name) in cases {
        let b = body(1, method, params);
        let m = method.as_bytes();
        let r = send("/mcp", &[("mcp-method", m)], &b).await;
        assert_mismatch(&r, &format!("{method} without Mcp-Name"));
        let other = format!("{name}x");
        let upper = name.to_uppercase();
        for sent in [other.as_str(), upper.as_str(), "everything__test_image_content"] {
            let r = send("/mcp", &[("mcp-method", m), ("mcp-name", sent.as_bytes())], &b).await;
            assert_mismatch(&r, &format!("{method} with Mcp-Name {sent:?}"));
        }
        let wrong = sentinel(b"everything__test_image_content");
        let r = send("/mcp", &[("mcp-method", m), ("mcp-name", wrong.as_bytes())], &b).await;
        assert_mismatch(&r, &format!("{method} with another name, encoded"));
        let r = send("/mcp", &[("mcp-method", m), ("mcp-name", b"=?base64?%%%?=")], &b).await;
        assert_mismatch(&r, &format!("{method} with an Mcp-Name that is not base64"));
        for sent in [name.to_string(), sentinel(name.as_bytes())] {
            let r = send("/mcp", &[("mcp-method", m), ("mcp-name", sent.as_bytes())], &b).await;
            assert_eq!(r.status, 200, "{method} with Mcp-Name {sent:?}: {}", r.text);
            assert!(r.rpc().get("result").is_some(), "{method} with Mcp-Name {sent:?}: {}", r.text);
        }
    }
}

// ---------------------------------------------------------------------------
// Pagination cursors
// ---------------------------------------------------------------------------

/// One page of `method` at `path`, with `cursor` when given.
async fn page(path: &str, method: &str, cursor: Option<Value>) -> Reply {
    let params = match cursor {
        Some(c) => json!({"cursor": c}),
        None => json!({}),
    };
    send(path, &[("mcp-method", method.as_bytes())], &body(1, method, params)).await
}

/// The `nextCursor` of the first page of `method` at `path`.
async fn first_cursor(path: &str, method: &str) -> Value {
    let r = page(path, method, None).await;
    assert_eq!(r.status, 200, "{method}: {}", r.text);
    let rpc = r.rpc();
    let c = rpc["result"]["nextCursor"].clone();
    assert!(c.is_string(), "{method} at {path} has a second page: {rpc}");
    c
}

fn assert_invalid_cursor(r: &Reply, what: &str) {
    assert_refused(r, 200, INVALID_PARAMS, what);
}

#[tokio::test]
async fn cursors_page_through_every_list() {
    let n = negatives();
    for path in ["/mcp", "/mcp/everything"] {
        let m = Mcp::stateless(n.gw.url(path), &n.key);
        for (method, field) in [("tools/list", "tools"), ("prompts/list", "prompts"), ("resources/list", "resources")] {
            let (items, pages) = m.list_all(method, field).await;
            assert!(pages > 1, "{method} at {path} takes several pages of two: {pages}");
            assert!(items.len() > 2 && items.len() <= 2 * pages, "{method} at {path}: {} items", items.len());
            let mut names: Vec<String> = items.iter().map(|i| i.to_string()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), items.len(), "{method} at {path}: each item once");
        }
    }
}

#[tokio::test]
async fn a_cursor_from_another_method_is_invalid_params() {
    let tools = first_cursor("/mcp", "tools/list").await;
    for method in ["prompts/list", "resources/list", "resources/templates/list"] {
        let r = page("/mcp", method, Some(tools.clone())).await;
        assert_invalid_cursor(&r, &format!("a tools/list cursor sent to {method}"));
    }
    let prompts = first_cursor("/mcp", "prompts/list").await;
    let r = page("/mcp", "tools/list", Some(prompts)).await;
    assert_invalid_cursor(&r, "a prompts/list cursor sent to tools/list");
    // The cursor is good for its own method.
    let r = page("/mcp", "tools/list", Some(tools)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.rpc()["result"]["tools"].is_array(), "{}", r.text);
}

#[tokio::test]
async fn a_cursor_from_another_endpoint_is_invalid_params() {
    let all = first_cursor("/mcp", "tools/list").await;
    let r = page("/mcp/everything", "tools/list", Some(all)).await;
    assert_invalid_cursor(&r, "a cursor of /mcp sent to /mcp/everything");
    let one = first_cursor("/mcp/everything", "tools/list").await;
    let r = page("/mcp", "tools/list", Some(one)).await;
    assert_invalid_cursor(&r, "a cursor of /mcp/everything sent to /mcp");
}

/// Cursors made by hand in the shape Bastion's cursors once had (base64 of
/// `o:<offset>`), and a real cursor with one character changed.
#[tokio::test]
async fn a_forged_cursor_is_invalid_params() {
    let url_safe = |s: &str| b64(s.as_bytes()).trim_end_matches('=').replace('+', "-").replace('/', "_");
    for forged in [url_safe("o:2"), url_safe("o:0"), url_safe("o:4"), b64(b"o:10")] {
        let r = page("/mcp", "tools/list", Some(Value::from(forged.clone()))).await;
        assert_invalid_cursor(&r, &format!("the hand-made cursor {forged:?}"));
    }
    let real = first_cursor("/mcp", "tools/list").await;
    let real = real.as_str().expect("a string cursor");
    let mut chars: Vec<char> = real.chars().collect();
    for i in [0, chars.len() / 2, chars.len() - 1] {
        let original = chars[i];
        chars[i] = if original == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.iter().collect();
        chars[i] = original;
        let r = page("/mcp", "tools/list", Some(Value::from(tampered.clone()))).await;
        assert_invalid_cursor(&r, &format!("a real cursor changed at {i}: {tampered:?}"));
    }
}

/// Cursors that are not cursors at all, or point past the end.
#[tokio::test]
async fn a_malformed_or_out_of_range_cursor_is_invalid_params() {
    let url_safe = |s: &str| b64(s.as_bytes()).trim_end_matches('=').replace('+', "-").replace('/', "_");
    let cases = [
        Value::from(url_safe("o:99999")),
        Value::from(url_safe("o:-1")),
        Value::from("not a cursor!"),
        Value::from(""),
        json!(2),
        json!({"offset": 2}),
        json!(["o:2"]),
    ];
    for c in cases {
        let r = page("/mcp", "tools/list", Some(c.clone())).await;
        assert_invalid_cursor(&r, &format!("the cursor {c}"));
        let r = page("/mcp/everything", "prompts/list", Some(c.clone())).await;
        assert_invalid_cursor(&r, &format!("the cursor {c} on /mcp/everything"));
    }
}
