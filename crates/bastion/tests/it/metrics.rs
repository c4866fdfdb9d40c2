//! `/metrics` through the real binary: what real calls (answered, failed,
//! denied, refused credentials) add up to; the output checked by
//! `promtool check metrics`; no argument, key or user name in it; served
//! only to the addresses `metrics.allow` admits, and only on
//! `metrics.listen` when that is set.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, Reply, WAIT, fixture_echo, wait_bounded};

const CANARY_ARG: &str = "canary-argument-Jw4Qx71Tz";
const CANARY_TOOL: &str = "echo__sk_live_canary_tool_9Hq2";

fn config() -> Value {
    json!({
        "mcpServers": {"echo": fixture_echo("metrics")},
        "groups": {"team": ["echo"]},
        "users": {
            "alice-metrics-user": {"role": "user", "groups": ["team"]},
            "carol-metrics-viewer": {"role": "viewer", "groups": ["team"]}
        }
    })
}

/// A client whose connections come from `from` (any loopback address).
fn client_from(from: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(from))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

async fn get(client: &reqwest::Client, url: &str, accept: Option<&str>) -> Reply {
    let mut b = client.get(url);
    if let Some(a) = accept {
        b = b.header("accept", a);
    }
    Reply::read(b.send().await.expect("GET")).await
}

/// The value of the sample `series` (name and labels, in the order Bastion
/// writes them).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether `promtool` must be there: in CI, or when asked to.
fn promtool_required() -> bool {
    std::env::var("BASTION_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `promtool check metrics` on `text`: fails on its complaints; without
/// promtool, fails when it is required and says it skipped otherwise.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                !promtool_required(),
                "promtool is not installed but is required here (CI or BASTION_REQUIRE_PROMTOOL=1); \
                 scripts/provision installs it"
            );
            eprintln!("skipped: promtool is not installed (scripts/provision installs it)");
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child.stdin.take().expect("piped").write_all(text.as_bytes()).expect("write to promtool");
    let out = wait_bounded(child, "promtool check metrics", WAIT);
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n--- the output ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn real_calls_are_counted_and_the_output_passes_promtool() {
    let gw = Gateway::start(config());
    let alice_key = gw.create_key("alice-metrics-user", &[]);
    let carol_key = gw.create_key("carol-metrics-viewer", &[]);
    let alice = Mcp::stateless(gw.url("/mcp"), &alice_key);
    let session = Mcp::session(gw.url("/mcp"), &alice_key, "2025-11-25").await;
    let carol = Mcp::stateless(gw.url("/mcp"), &carol_key);

    let args = json!({"text": CANARY_ARG});
    assert!(alice.call_tool("echo__echo", args.clone()).await.get("result").is_some());
    assert!(session.call_tool("echo__echo", args.clone()).await.get("result").is_some());
    assert!(alice.call_tool("echo__nothing", json!({})).await.get("error").is_some());
    assert!(session.call_tool(CANARY_TOOL, args.clone()).await.get("error").is_some());
    let denied = carol.call_tool("echo__echo", args.clone()).await;
    assert_eq!(denied["error"]["code"], -32003, "{denied}");
    let bad = Mcp::stateless(gw.url("/mcp"), "bst_notakeyatall0000000000000000000000");
    assert_eq!(bad.request("tools/list", json!({})).await.status, 401);

    // Prometheus asks for OpenMetrics.
    let open =
        get(&reqwest::Client::new(), &gw.url("/metrics"), Some("application/openmetrics-text;version=1.0.0")).await;
    assert_eq!(open.status, 200, "{}", open.text);
    assert_eq!(open.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(open.text.ends_with("# EOF\n"), "{}", open.text);
    let m = &open.text;
    for (series, at_least) in [
        ("bastion_mcp_requests_total{class=\"call\",outcome=\"ok\"}", 2.0),
        ("bastion_mcp_requests_total{class=\"call\",outcome=\"error\"}", 2.0),
        ("bastion_mcp_requests_total{class=\"call\",outcome=\"denied\"}", 1.0),
        ("bastion_tool_calls_total{server=\"echo\",tool=\"echo\",outcome=\"ok\"}", 2.0),
        ("bastion_tool_calls_total{server=\"echo\",tool=\"echo\",outcome=\"denied\"}", 1.0),
        ("bastion_tool_calls_total{server=\"echo\",tool=\"other\",outcome=\"error\"}", 2.0),
        ("bastion_denials_total{reason=\"auth\"}", 1.0),
        ("bastion_denials_total{reason=\"policy\"}", 1.0),
        ("bastion_http_requests_total{endpoint=\"mcp\",status=\"2xx\"}", 6.0),
        ("bastion_http_requests_total{endpoint=\"mcp\",status=\"4xx\"}", 1.0),
        ("bastion_upstream_call_duration_seconds_count{server=\"echo\"}", 2.0),
        ("bastion_mcp_request_duration_seconds_count{class=\"call\"}", 5.0),
        ("bastion_sessions", 1.0),
    ] {
        let got = value(m, series).unwrap_or_else(|| panic!("{series} missing in\n{m}"));
        assert!(got >= at_least, "{series} = {got}, expected at least {at_least}\n{m}");
    }
    // Exactly: each outcome is counted once.
    assert_eq!(value(m, "bastion_mcp_requests_total{class=\"call\",outcome=\"ok\"}"), Some(2.0), "{m}");
    assert_eq!(value(m, "bastion_mcp_requests_total{class=\"call\",outcome=\"denied\"}"), Some(1.0), "{m}");
    assert_eq!(value(m, "bastion_upstream_restarts_total{server=\"echo\"}"), Some(0.0), "{m}");
    assert!(value(m, "bastion_audit_queue_depth").is_some(), "{m}");
    assert!(value(m, "bastion_build_info{version=\"0.1.0\"}").is_some(), "{m}");

    // Whatever a caller sends or is never shows: arguments, keys, user
    // names, session ids, names of tools no server has.
    let session_id = session.session.clone().expect("session id");
    for secret in [
        CANARY_ARG,
        CANARY_TOOL,
        "sk_live_canary",
        "nothing",
        alice_key.as_str(),
        carol_key.as_str(),
        "bst_",
        "alice-metrics-user",
        "carol-metrics-viewer",
        session_id.as_str(),
    ] {
        assert!(!m.contains(secret), "{secret:?} appears in the metrics:\n{m}");
    }

    // A scraper that does not ask for OpenMetrics (or curl) gets the
    // Prometheus text format, which promtool reads.
    let text = get(&reqwest::Client::new(), &gw.url("/metrics"), None).await;
    assert_eq!(text.status, 200);
    assert_eq!(text.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(text.text.contains("# TYPE bastion_mcp_requests_total counter"), "{}", text.text);
    assert!(!text.text.contains(CANARY_ARG) && !text.text.contains(&alice_key));
    promtool_check(&text.text);
    // The scrape before this one is counted.
    assert!(value(&text.text, "bastion_http_requests_total{endpoint=\"metrics\",status=\"2xx\"}") >= Some(1.0));
}

#[tokio::test]
async fn only_allowed_addresses_see_it_and_others_get_a_plain_404() {
    let mut cfg = config();
    cfg["metrics"] = json!({"allow": ["127.0.0.2/32"]});
    let gw = Gateway::start(cfg);
    let outsider = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let scraper = client_from(Ipv4Addr::new(127, 0, 0, 2));

    let refused = get(&outsider, &gw.url("/metrics"), None).await;
    let missing = get(&outsider, &gw.url("/no-such-path"), None).await;
    assert_eq!(refused.status, 404, "{}", refused.text);
    assert_eq!(refused.text, missing.text, "indistinguishable from a path that does not exist");
    assert_eq!(refused.header("content-type"), missing.header("content-type"));
    // Whatever the method.
    let post = outsider.post(gw.url("/metrics")).send().await.expect("POST");
    assert_eq!(post.status(), 404);
    // No credential changes that: a key is not what admits a scraper.
    let key = gw.create_key("alice-metrics-user", &[]);
    let with_key = outsider.get(gw.url("/metrics")).bearer_auth(&key).send().await.expect("GET");
    assert_eq!(with_key.status(), 404);
    // Nor does a forwarded header.
    let forwarded = outsider.get(gw.url("/metrics")).header("x-forwarded-for", "127.0.0.2").send().await.expect("GET");
    assert_eq!(forwarded.status(), 404);

    let served = get(&scraper, &gw.url("/metrics"), None).await;
    assert_eq!(served.status, 200, "{}", served.text);
    assert!(served.text.contains("bastion_mcp_requests_total"), "{}", served.text);
    let post = scraper.post(gw.url("/metrics")).send().await.expect("POST");
    assert_eq!(post.status(), 405, "to an allowed scraper, the endpoint is there but only for GET");
    // The refusals above are in what the scraper sees.
    assert!(
        value(&served.text, "bastion_http_requests_total{endpoint=\"metrics\",status=\"4xx\"}") >= Some(4.0),
        "{}",
        served.text
    );
}

#[tokio::test]
async fn a_listener_of_its_own_serves_it_and_the_main_one_does_not() {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut cfg = config();
    cfg["metrics"] = json!({"listen": format!("127.0.0.1:{port}")});
    let gw = Gateway::start(cfg);
    let metrics_url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let client = reqwest::Client::builder().no_proxy().build().expect("client");

    let main = get(&client, &gw.url("/metrics"), None).await;
    assert_eq!(main.status, 404, "not on the main listener, even to an allowed address");
    let own = get(&client, &metrics_url("/metrics"), None).await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert!(own.text.contains("bastion_http_requests_total{endpoint=\"metrics\",status=\"4xx\"} 1"), "{}", own.text);
    promtool_check(&own.text);
    // Nothing else is served there.
    for path in ["/healthz", "/mcp", "/.well-known/oauth-protected-resource"] {
        assert_eq!(get(&client, &metrics_url(path), None).await.status, 404, "{path}");
    }
    // On loopback, a foreign Host name (DNS rebinding) is refused.
    let rebound = client.get(metrics_url("/metrics")).header("host", "evil.example").send().await.expect("GET");
    assert_eq!(rebound.status(), 403);
    assert!(gw.log().contains(&format!("metrics=http://127.0.0.1:{port}/metrics")), "{}", gw.log());

    // Still only to `metrics.allow`.
    let mut cfg = config();
    cfg["metrics"] = json!({"listen": format!("127.0.0.1:{port}"), "allow": ["127.0.0.2"]});
    gw.write_config(&cfg);
    gw.sighup();
    gw.wait_for_log("configuration applied").await;
    crate::harness::eventually(WAIT, "the new allow list applies", || async {
        (get(&client, &metrics_url("/metrics"), None).await.status == 404).then_some(())
    })
    .await;
    let scraper = client_from(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(get(&scraper, &metrics_url("/metrics"), None).await.status, 200);
}
