//! Access tokens from an OpenID Connect provider, end to end: the real
//! gateway, the test identity provider of `idp.rs` (real keys, real
//! signatures), one rule per test — what is accepted, what is refused and
//! why, the key set fetched at a bounded rate, failing closed, the OAuth
//! discovery a client starts from, secrets kept out of the log and away
//! from upstreams — and the MCP Python SDK logging in by itself.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Gateway, Mcp, Options, Reply, STATELESS, WAIT, eventually, fixture_echo, http, run_client, tool_text,
};
use crate::idp::{Idp, Login, Signer, SigningKey, mint, now};
use crate::mock_upstream::{Behaviour, MockUpstream};
use jsonwebtoken::Algorithm;

const VERSION: &str = "2025-11-25";

/// A gateway accepting the provider's tokens, with the fixture's echo
/// server, a group `team` holding it, and `users` giving the token users
/// a role.
struct Setup {
    idp: Idp,
    gw: Gateway,
    /// `auth.resource`: `http://127.0.0.1:PORT/mcp`.
    resource: String,
}

/// The issuer entry, with `extra` fields over the test defaults (no
/// leeway, keys refetched at most every 2 s).
fn issuer_entry(idp: &Idp, extra: Value) -> Value {
    let mut issuer = json!({
        "issuer": idp.issuer,
        "algorithms": ["RS256", "ES256"],
        "leeway": "0s",
        "jwks_min_refresh": "2s",
    });
    for (k, v) in extra.as_object().expect("an object") {
        issuer[k] = v.clone();
    }
    issuer
}

fn config(issuer: Value) -> Value {
    json!({
        "mcpServers": {"echo": fixture_echo("oidc-echo")},
        "groups": {"team": ["echo"]},
        "auth": {"resource": "http://127.0.0.1:{PORT}/mcp", "oidc": [issuer]},
        "users": {
            "alice": {"role": "admin"},
            "bob": {"role": "admin"},
            "carol": {"role": "admin"}
        }
    })
}

fn start_with(issuer_extra: Value, opts: Options) -> Setup {
    let idp = Idp::start();
    let gw = Gateway::start_with(config(issuer_entry(&idp, issuer_extra)), opts);
    let resource = gw.url("/mcp");
    Setup { idp, gw, resource }
}

fn start(issuer_extra: Value) -> Setup {
    start_with(issuer_extra, Options::default())
}

/// POSTs `initialize` with `token` (none when `None`).
async fn initialize(url: &str, token: Option<&str>) -> Reply {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": VERSION,
        "capabilities": {},
        "clientInfo": {"name": "bastion-it", "version": "0"}
    }});
    let mut b = http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    Reply::read(b.body(body.to_string()).send().await.expect("POST")).await
}

/// The `resource_metadata` URL of a challenge.
fn metadata_url(challenge: &str) -> Option<String> {
    let start = challenge.find("resource_metadata=\"")? + "resource_metadata=\"".len();
    let len = challenge[start..].find('"')?;
    Some(challenge[start..start + len].to_string())
}

/// A 401 with an `invalid_token` challenge pointing at the metadata, whose
/// description holds `why`.
fn assert_refused(r: &Reply, why: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    let challenge = r.header("www-authenticate").unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{what}: {challenge}");
    assert!(metadata_url(challenge).is_some(), "{what}: no resource_metadata in {challenge}");
    let body = r.json();
    assert_eq!(body["error"], "invalid_token", "{what}: {body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(why), "{what}: expected {why:?} in {description:?}");
}

/// Refused with `why`, on the aggregate endpoint and on one server's.
async fn assert_token_refused(s: &Setup, token: &str, why: &str, what: &str) {
    for path in ["/mcp", "/mcp/echo", "/mcp/team"] {
        let r = initialize(&s.gw.url(path), Some(token)).await;
        assert_refused(&r, why, &format!("{what} at {path}"));
    }
}

/// A session with `token` that calls the echo tool (prefixed on the
/// aggregate and group endpoints).
async fn echo_with(url: String, token: &str, text: &str) {
    let m = Mcp::session(url, token, VERSION).await;
    let tool = if m.url.ends_with("/mcp/echo") { "echo" } else { "echo__echo" };
    let rpc = m.call_tool(tool, json!({"text": text})).await;
    assert_eq!(tool_text(&rpc), text);
}

// ---------------------------------------------------------------------------
// Accepted
// ---------------------------------------------------------------------------

/// A token the provider signed, for this gateway, opens sessions and calls
/// tools on every endpoint, with either of the provider's keys; the log
/// names the token's user.
#[tokio::test]
async fn a_providers_token_opens_sessions_on_every_endpoint() {
    let s = start(json!({}));
    let rsa = s.idp.token_for("alice", &s.resource);
    echo_with(s.gw.url("/mcp"), &rsa, "rs256 aggregate").await;
    echo_with(s.gw.url("/mcp/echo"), &rsa, "rs256 server").await;
    echo_with(s.gw.url("/mcp/team"), &rsa, "rs256 group").await;
    let ec = mint(&Idp::header(s.idp.ec()), &s.idp.claims("bob", &s.resource), Signer::Key(s.idp.ec()));
    echo_with(s.gw.url("/mcp"), &ec, "es256").await;
    // An audience array holding the resource is as good.
    let mut claims = s.idp.claims("carol", &s.resource);
    claims["aud"] = json!(["account", s.resource]);
    echo_with(s.gw.url("/mcp"), &s.idp.sign(&claims), "audience array").await;
    // The stateless version too.
    let m = Mcp::stateless(s.gw.url("/mcp/echo"), &rsa);
    let rpc = m.call_tool("echo", json!({"text": "stateless"})).await;
    assert_eq!(tool_text(&rpc), "stateless");
    let log = s.gw.log();
    for user in ["alice", "bob", "carol"] {
        assert!(log.contains(&format!("user={user}")), "the log names {user}:\n{log}");
    }
    assert_eq!(s.idp.jwks_fetches(), 1, "one fetch of the keys for all of it");
}

/// API keys keep working beside tokens, on the same endpoints.
#[tokio::test]
async fn api_keys_still_work_beside_tokens() {
    let s = start(json!({}));
    let key = s.gw.create_key("bob", &[]);
    echo_with(s.gw.url("/mcp"), &key, "with a key").await;
    echo_with(s.gw.url("/mcp"), &s.idp.token_for("alice", &s.resource), "with a token").await;
    echo_with(s.gw.url("/mcp/echo"), &key, "with a key again").await;
    // A session opened with a key is not the token user's.
    let keyed = Mcp::session(s.gw.url("/mcp"), &key, VERSION).await;
    let token = s.idp.token_for("alice", &s.resource);
    let stolen = Mcp::with_session(s.gw.url("/mcp"), &token, keyed.session.as_deref().expect("session id"));
    assert_eq!(stolen.request("tools/list", json!({})).await.status, 404, "another principal's session");
}

// ---------------------------------------------------------------------------
// Refused, one rule each
// ---------------------------------------------------------------------------

#[tokio::test]
async fn expired_tokens_are_refused() {
    let s = start(json!({}));
    let mut claims = s.idp.claims("alice", &s.resource);
    claims["iat"] = json!(now() - 600);
    claims["exp"] = json!(now() - 5);
    assert_token_refused(&s, &s.idp.sign(&claims), "expired", "expired 5 s ago").await;
}

#[tokio::test]
async fn tokens_not_valid_yet_are_refused() {
    let s = start(json!({}));
    let mut claims = s.idp.claims("alice", &s.resource);
    claims["nbf"] = json!(now() + 120);
    assert_token_refused(&s, &s.idp.sign(&claims), "not valid yet", "nbf in 2 minutes").await;
}

/// A token of another provider — properly signed by it — and a token
/// naming this provider but signed by another's key, are refused.
#[tokio::test]
async fn tokens_of_another_issuer_are_refused() {
    let s = start(json!({}));
    let other = Idp::start();
    let theirs = other.token_for("alice", &s.resource);
    assert_token_refused(&s, &theirs, "issuer is not accepted", "another provider's token").await;
    // Ours in `iss`, their key under our key id.
    let forged = mint(&Idp::header(s.idp.rsa()), &s.idp.claims("alice", &s.resource), Signer::Key(other.rsa()));
    assert_token_refused(&s, &forged, "signature is not valid", "our iss, their key").await;
    // The issuer spelled differently.
    let mut claims = s.idp.claims("alice", &s.resource);
    claims["iss"] = json!(format!("{}/", s.idp.issuer));
    assert_token_refused(&s, &s.idp.sign(&claims), "issuer is not accepted", "a trailing slash").await;
    assert_eq!(other.jwks_fetches(), 0, "another issuer's keys are never fetched");
}

#[tokio::test]
async fn tokens_for_another_audience_are_refused() {
    let s = start(json!({}));
    let port = s.gw.port;
    for (aud, what) in [
        (json!(format!("http://127.0.0.1:{port}/other")), "another resource"),
        (json!(format!("http://127.0.0.1:{port}")), "the origin only"),
        (json!(format!("http://127.0.0.1:{port}/mcp/echo")), "a longer path"),
        (json!("test-client"), "the client id"),
        (json!(["account", "https://elsewhere.example.com/mcp"]), "an array without the resource"),
    ] {
        let mut claims = s.idp.claims("alice", &s.resource);
        claims["aud"] = aud;
        assert_token_refused(&s, &s.idp.sign(&claims), "not issued for this resource", what).await;
    }
    let mut claims = s.idp.claims("alice", &s.resource);
    claims.as_object_mut().expect("claims").remove("aud");
    assert_token_refused(&s, &s.idp.sign(&claims), "not issued for this resource", "no aud").await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let s = start(json!({}));
    let claims = s.idp.claims("alice", &s.resource);
    for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "none", "kid": s.idp.rsa().kid})] {
        let token = mint(&header, &claims, Signer::Nothing);
        assert_token_refused(&s, &token, "algorithm is not accepted", "alg none").await;
    }
    // `none` with a real signature left on.
    let signed = s.idp.sign(&claims);
    let real_signature = signed.rsplit('.').next().expect("signature");
    let unsigned = mint(&json!({"alg": "none"}), &claims, Signer::Nothing);
    let token = format!("{unsigned}{real_signature}");
    assert_token_refused(&s, &token, "algorithm is not accepted", "alg none with a signature").await;
}

/// The classic key confusion: HS256, with the provider's RSA public key
/// as the HMAC secret, naming the RSA key. It must fail whatever the
/// form of the public key.
#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let s = start(json!({}));
    let claims = s.idp.claims("alice", &s.resource);
    let rsa = s.idp.rsa();
    let secrets = [
        rsa.public_pem.clone().into_bytes(),
        rsa.public_pem.trim_end().as_bytes().to_vec(),
        rsa.jwk.to_string().into_bytes(),
    ];
    for secret in &secrets {
        for header in [json!({"alg": "HS256", "typ": "JWT", "kid": rsa.kid}), json!({"alg": "HS256", "typ": "JWT"})] {
            let token = mint(&header, &claims, Signer::Hs256(secret));
            assert_token_refused(&s, &token, "algorithm is not accepted", "HS256 with the public key").await;
        }
    }
    // An issuer allowing only RS256 refuses ES256 even from its own key.
    let strict = Gateway::start(config(issuer_entry(&s.idp, json!({"algorithms": ["RS256"]}))));
    let resource = strict.url("/mcp");
    let ec = mint(&Idp::header(s.idp.ec()), &s.idp.claims("alice", &resource), Signer::Key(s.idp.ec()));
    let r = initialize(&strict.url("/mcp"), Some(&ec)).await;
    assert_refused(&r, "algorithm is not accepted", "ES256 where only RS256 is allowed");
    // A header naming the EC key while signing RS256 with the RSA key.
    let crossed = mint(
        &json!({"alg": "RS256", "kid": s.idp.ec().kid}),
        &s.idp.claims("alice", &s.resource),
        Signer::Key(s.idp.rsa()),
    );
    assert_token_refused(&s, &crossed, "does not fit its key", "RS256 naming the EC key").await;
}

/// A token naming a key the provider does not have is refused (401); the
/// key set is fetched again for it at most once per `jwks_min_refresh`,
/// once for many concurrent requests, and a key the provider rotates in is
/// picked up.
#[tokio::test]
async fn an_unknown_kid_is_refused_and_refetches_the_keys_at_a_bounded_rate() {
    let s = start(json!({"jwks_min_refresh": "3s"}));
    echo_with(s.gw.url("/mcp"), &s.idp.token_for("alice", &s.resource), "warm").await;
    assert_eq!(s.idp.jwks_fetches(), 1);
    let stranger = SigningKey::generate(Algorithm::RS256, "never-published");
    let claims = s.idp.claims("alice", &s.resource);
    let token = mint(&Idp::header(&stranger), &claims, Signer::Key(&stranger));
    for _ in 0..10 {
        let r = initialize(&s.gw.url("/mcp"), Some(&token)).await;
        assert_refused(&r, "signing key is not known", "unknown kid");
    }
    assert!(s.idp.jwks_fetches() <= 2, "ten unknown kids within 3 s: {} fetches", s.idp.jwks_fetches());
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let before = s.idp.jwks_fetches();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = s.gw.url("/mcp");
        let mut c = claims.clone();
        c["jti"] = json!(format!("concurrent-{i}"));
        let t = mint(&Idp::header(&stranger), &c, Signer::Key(&stranger));
        tasks.push(tokio::spawn(async move { initialize(&url, Some(&t)).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 401);
    }
    assert_eq!(s.idp.jwks_fetches(), before + 1, "twenty concurrent unknown kids, one fetch");

    // The provider rotates a new key in: its tokens are accepted once the
    // refresh interval allows a fetch.
    let rotated = SigningKey::generate(Algorithm::ES256, "rotated-2");
    s.idp.publish(&rotated);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let token = mint(&Idp::header(&rotated), &s.idp.claims("bob", &s.resource), Signer::Key(&rotated));
    echo_with(s.gw.url("/mcp"), &token, "rotated").await;
    assert_eq!(s.idp.jwks_fetches(), before + 2);
}

#[tokio::test]
async fn tampered_signatures_are_refused() {
    let s = start(json!({}));
    for (token, what) in [
        (s.idp.token_for("alice", &s.resource), "RS256"),
        (mint(&Idp::header(s.idp.ec()), &s.idp.claims("alice", &s.resource), Signer::Key(s.idp.ec())), "ES256"),
    ] {
        let (message, signature) = token.rsplit_once('.').expect("three parts");
        let mut bytes = base64_decode(signature);
        bytes[10] ^= 0x01;
        let flipped = format!("{message}.{}", base64_encode(&bytes));
        assert_token_refused(&s, &flipped, "signature is not valid", &format!("{what}, one bit flipped")).await;
        let truncated = format!("{message}.{}", base64_encode(&bytes[..bytes.len() - 1]));
        assert_token_refused(&s, &truncated, "signature is not valid", &format!("{what}, truncated")).await;
        let stripped = format!("{message}.");
        let r = initialize(&s.gw.url("/mcp"), Some(&stripped)).await;
        assert_eq!(r.status, 401, "{what}, no signature: {}", r.text);
    }
}

/// The payload changed under a valid signature: another user, a role, a
/// later expiry.
#[tokio::test]
async fn tampered_payloads_are_refused() {
    let s = start(json!({"claims": {"role": "role"}}));
    let claims = s.idp.claims("carol", &s.resource);
    let token = s.idp.sign(&claims);
    let parts: Vec<&str> = token.split('.').collect();
    for (change, what) in [
        (json!({"sub": "alice"}), "another user"),
        (json!({"role": "admin"}), "a role"),
        (json!({"exp": now() + 86_400}), "a later expiry"),
        (json!({"aud": "http://elsewhere"}), "another audience"),
    ] {
        let mut changed = claims.clone();
        for (k, v) in change.as_object().expect("object") {
            changed[k] = v.clone();
        }
        let tampered = format!("{}.{}.{}", parts[0], base64_encode(changed.to_string().as_bytes()), parts[2]);
        assert_token_refused(&s, &tampered, "signature is not valid", what).await;
    }
    // The header changed: another key id.
    let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": s.idp.ec().kid});
    let tampered = format!("{}.{}.{}", base64_encode(header.to_string().as_bytes()), parts[1], parts[2]);
    assert_token_refused(&s, &tampered, "does not fit its key", "header naming another key").await;
    // The untouched token still works.
    echo_with(s.gw.url("/mcp"), &token, "untouched").await;
}

#[tokio::test]
async fn tokens_without_exp_are_refused() {
    let s = start(json!({}));
    let mut claims = s.idp.claims("alice", &s.resource);
    claims.as_object_mut().expect("claims").remove("exp");
    assert_token_refused(&s, &s.idp.sign(&claims), "no expiry", "no exp").await;
    claims["exp"] = json!("tomorrow");
    assert_token_refused(&s, &s.idp.sign(&claims), "no expiry", "exp not a number").await;
}

/// A valid token without a scope the gateway requires gets 403 with
/// `error="insufficient_scope"` and the scopes it needs; with them, it
/// passes. `scp` counts like `scope`.
#[tokio::test]
async fn a_missing_required_scope_gets_403_insufficient_scope() {
    let s = start(json!({"scopes": ["mcp:tools"]}));
    let mut claims = s.idp.claims("alice", &s.resource);
    claims["scope"] = json!("openid profile");
    for path in ["/mcp", "/mcp/echo"] {
        let r = initialize(&s.gw.url(path), Some(&s.idp.sign(&claims))).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        let challenge = r.header("www-authenticate").expect("a challenge");
        assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
        assert!(challenge.contains("scope=\"mcp:tools\""), "{challenge}");
        assert!(metadata_url(challenge).is_some(), "{challenge}");
        assert_eq!(r.json()["error"], "insufficient_scope");
    }
    // The 401 of a client without a token names the scopes too.
    let r = initialize(&s.gw.url("/mcp"), None).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|c| c.contains("scope=\"mcp:tools\"")), "{:?}", r.headers);
    claims["scope"] = json!("openid mcp:tools");
    echo_with(s.gw.url("/mcp"), &s.idp.sign(&claims), "scoped").await;
    claims.as_object_mut().expect("claims").remove("scope");
    claims["scp"] = json!(["mcp:tools"]);
    echo_with(s.gw.url("/mcp"), &s.idp.sign(&claims), "scp").await;
}

/// A token expiring during a session: the session's next request after
/// `exp` gets 401.
#[tokio::test]
async fn a_token_expiring_during_a_session_ends_its_use() {
    let s = start(json!({}));
    let mut claims = s.idp.claims("alice", &s.resource);
    let exp = now() + 3;
    claims["exp"] = json!(exp);
    let token = s.idp.sign(&claims);
    let m = Mcp::session(s.gw.url("/mcp"), &token, VERSION).await;
    let rpc = m.call_tool("echo__echo", json!({"text": "before"})).await;
    assert_eq!(tool_text(&rpc), "before");
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = m.request("tools/call", json!({"name": "echo__echo", "arguments": {"text": "after"}})).await;
    assert_refused(&r, "expired", "the session's request after exp");
    // A fresh token of the same user carries on.
    let renewed = s.idp.token_for("alice", &s.resource);
    let again = Mcp::session(s.gw.url("/mcp"), &renewed, VERSION).await;
    assert_eq!(tool_text(&again.call_tool("echo__echo", json!({"text": "renewed"})).await), "renewed");
}

/// When the provider's keys cannot be fetched and none is cached, a token
/// gets 503 — never accepted; when the provider is back, it passes.
#[tokio::test]
async fn the_provider_being_down_fails_closed() {
    let s = start(json!({"jwks_min_refresh": "1s"}));
    s.idp.set_jwks_down(true);
    let token = s.idp.token_for("alice", &s.resource);
    let r = initialize(&s.gw.url("/mcp"), Some(&token)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    // Even a token the provider never signed gets no further than that.
    let forged = mint(&json!({"alg": "HS256"}), &s.idp.claims("alice", &s.resource), Signer::Hs256(b"x"));
    assert_eq!(initialize(&s.gw.url("/mcp"), Some(&forged)).await.status, 401, "HS256 is refused before any fetch");
    s.idp.set_jwks_down(false);
    eventually(WAIT, "the token accepted once the provider is back", || async {
        (initialize(&s.gw.url("/mcp"), Some(&token)).await.status == 200).then_some(())
    })
    .await;
    assert!(s.gw.log().contains("cannot fetch the identity provider's signing keys"), "{}", s.gw.log());
}

// ---------------------------------------------------------------------------
// OAuth discovery
// ---------------------------------------------------------------------------

/// Every 401 — no credentials, a bad key, a bad token, a malformed header —
/// carries `WWW-Authenticate: Bearer resource_metadata="…"`, and that URL
/// serves the metadata naming this resource and the provider.
#[tokio::test]
async fn every_401_points_at_metadata_that_is_served() {
    let s = start(json!({}));
    let expired = {
        let mut c = s.idp.claims("alice", &s.resource);
        c["exp"] = json!(now() - 100);
        s.idp.sign(&c)
    };
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "no credentials"),
        (Some("bst_not-a-real-key".into()), "an unknown key"),
        (Some(expired), "an expired token"),
        (Some("abc.def.ghi".into()), "a token that is not JSON"),
        (Some("garbage".into()), "garbage"),
    ];
    let expected = format!("http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp", s.gw.port);
    for path in ["/mcp", "/mcp/echo", "/mcp/team", "/mcp/unknown-name"] {
        for (token, what) in &cases {
            let r = initialize(&s.gw.url(path), token.as_deref()).await;
            assert_eq!(r.status, 401, "{what} at {path}: {}", r.text);
            let challenge = r.header("www-authenticate").expect("a challenge");
            assert_eq!(metadata_url(challenge).as_deref(), Some(expected.as_str()), "{what} at {path}: {challenge}");
        }
    }
    let r = Reply::read(http().get(s.gw.url("/sse")).send().await.expect("GET /sse")).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").and_then(metadata_url).as_deref() == Some(expected.as_str()));
    let doc = Reply::read(http().get(&expected).send().await.expect("GET metadata")).await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let doc = doc.json();
    assert_eq!(doc["resource"], s.resource);
    assert_eq!(doc["authorization_servers"], json!([s.idp.issuer]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
}

/// The metadata at `/.well-known/oauth-protected-resource`, its `/mcp` and
/// `/mcp/{name}` forms (a server, a group, any valid name), all naming the
/// one resource; other suffixes 404; nothing without an issuer.
#[tokio::test]
async fn metadata_is_served_at_the_root_and_the_mcp_endpoints() {
    let s = start(json!({"scopes": ["mcp:tools"]}));
    let base = s.gw.url("/.well-known/oauth-protected-resource");
    for suffix in ["", "/mcp", "/mcp/echo", "/mcp/team", "/mcp/not-configured"] {
        let r = Reply::read(http().get(format!("{base}{suffix}")).send().await.expect("GET")).await;
        assert_eq!(r.status, 200, "{suffix}: {}", r.text);
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")));
        let doc = r.json();
        assert_eq!(doc["resource"], s.resource, "{suffix}");
        assert_eq!(doc["authorization_servers"], json!([s.idp.issuer]), "{suffix}");
        assert_eq!(doc["scopes_supported"], json!(["mcp:tools"]), "{suffix}");
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]), "{suffix}");
    }
    for suffix in ["/sse", "/other", "/mcp/a/b", "/mcp/bad__name", "/healthz"] {
        let r = Reply::read(http().get(format!("{base}{suffix}")).send().await.expect("GET")).await;
        assert_eq!(r.status, 404, "{suffix}: {}", r.text);
    }
    // A gateway without an identity provider has no metadata and points at none.
    let plain = Gateway::start(json!({"mcpServers": {"echo": fixture_echo("oidc-plain")}}));
    let r =
        Reply::read(http().get(plain.url("/.well-known/oauth-protected-resource")).send().await.expect("GET")).await;
    assert_eq!(r.status, 404);
    let r = initialize(&plain.url("/mcp"), None).await;
    assert_eq!(r.status, 401);
    assert!(!r.header("www-authenticate").unwrap_or_default().contains("resource_metadata"), "{:?}", r.headers);
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// No token — accepted, expired, forged — nor any part of one reaches the
/// log, even at debug level.
#[tokio::test]
async fn no_token_reaches_the_log() {
    let s = start_with(json!({}), Options { env: vec![("BASTION_LOG".into(), "debug".into())], ..Options::default() });
    let good = s.idp.token_for("alice", &s.resource);
    let mut c = s.idp.claims("alice", &s.resource);
    c["exp"] = json!(now() - 100);
    let expired = s.idp.sign(&c);
    let forged = mint(
        &json!({"alg": "HS256", "kid": s.idp.rsa().kid}),
        &s.idp.claims("alice", &s.resource),
        Signer::Hs256(s.idp.rsa().public_pem.as_bytes()),
    );
    let stranger = SigningKey::generate(Algorithm::ES256, "stranger");
    let unknown = mint(&Idp::header(&stranger), &s.idp.claims("alice", &s.resource), Signer::Key(&stranger));
    echo_with(s.gw.url("/mcp"), &good, "logged?").await;
    for t in [&expired, &forged, &unknown] {
        assert_eq!(initialize(&s.gw.url("/mcp"), Some(t)).await.status, 401);
    }
    let key = s.gw.create_key("bob", &[]);
    echo_with(s.gw.url("/mcp"), &key, "key").await;
    let log = s.gw.log();
    assert!(log.contains("authentication failed"), "debug logging is on:\n{log}");
    for t in [&good, &expired, &forged, &unknown, &key] {
        for part in t.split('.').filter(|p| p.len() >= 16) {
            assert!(!log.contains(part), "a token part is in the log:\n{log}");
        }
        assert!(!log.contains(&t[t.len() - 12..]), "the end of a token is in the log");
    }
}

/// The client's token never reaches an upstream: not through Bastion's own
/// session with the server, not through the stateless bridge, not through
/// the stateless pass-through; the configured headers do.
#[tokio::test]
async fn the_clients_token_never_reaches_an_upstream() {
    let pass = MockUpstream::start(true, Behaviour::Normal);
    let bridged = MockUpstream::start(false, Behaviour::Normal);
    let idp = Idp::start();
    let mut cfg = config(issuer_entry(&idp, json!({})));
    cfg["mcpServers"] = json!({
        // The data guard off: what it reads is never passed through unread.
        "pass": {"url": pass.url, "type": "streamable-http", "headers": {"Authorization": "Bearer configured-for-pass"},
                 "guard": {"enabled": false}},
        "bridged": {"url": bridged.url, "type": "streamable-http", "headers": {"Authorization": "Bearer configured-for-bridged"}}
    });
    cfg["groups"] = json!({});
    let gw = Gateway::start(cfg);
    let token = idp.token_for("alice", &gw.url("/mcp"));

    let m = Mcp::session(gw.url("/mcp"), &token, VERSION).await;
    assert_eq!(tool_text(&m.call_tool("pass__echo", json!({"text": "s1"})).await), "s1");
    assert_eq!(tool_text(&m.call_tool("bridged__echo", json!({"text": "s2"})).await), "s2");
    let one = Mcp::session(gw.url("/mcp/pass"), &token, VERSION).await;
    assert_eq!(tool_text(&one.call_tool("echo", json!({"text": "s3"})).await), "s3");
    let stateless = Mcp::stateless(gw.url("/mcp/pass"), &token);
    assert_eq!(tool_text(&stateless.call_tool("echo", json!({"text": "passed-through"})).await), "passed-through");
    let stateless = Mcp::stateless(gw.url("/mcp/bridged"), &token);
    assert_eq!(tool_text(&stateless.call_tool("echo", json!({"text": "bridged"})).await), "bridged");

    assert!(
        pass.requests()
            .iter()
            .any(|r| r.body.contains("passed-through") && r.header("mcp-protocol-version") == Some(STATELESS)),
        "the stateless call was passed through"
    );
    let signature = token.rsplit('.').next().expect("signature");
    for (name, mock) in [("pass", &pass), ("bridged", &bridged)] {
        let seen = mock.requests();
        assert!(seen.len() >= 4, "{name}: {seen:#?}");
        for r in &seen {
            let raw = r.raw();
            assert!(!raw.contains(&token) && !raw.contains(signature), "{name}: the client's token reached it:\n{raw}");
            assert_eq!(r.header("authorization"), Some(format!("Bearer configured-for-{name}").as_str()), "{raw}");
        }
    }
}

// ---------------------------------------------------------------------------
// A real client logs in by itself
// ---------------------------------------------------------------------------

/// The MCP Python SDK, given only the gateway's URL: it gets 401, reads the
/// protected resource metadata, finds the provider, registers, logs in
/// with PKCE, gets a token for this resource, then lists tools and calls
/// one. The gateway's log names the user the provider logged in.
#[tokio::test]
async fn the_python_sdk_logs_in_by_itself() {
    let s = start(json!({"scopes": ["mcp:tools"], "claims": {"role": "role", "groups": "groups"}}));
    s.idp.log_in_as(Login { user: "carol".into(), role: Some("admin".into()), groups: Some(vec!["team".into()]) });
    s.idp.sign_with_ec(true);
    let run = run_client(
        "oauth_login.py",
        &s.gw.url("/mcp"),
        "",
        &["--tool", "echo__echo", "--args", r#"{"text": "logged in by itself"}"#],
    )
    .await;
    let out = run.ok();
    assert_eq!(out["text"], "logged in by itself", "{out}");
    assert!(out["tools"].as_array().is_some_and(|t| t.iter().any(|n| n == "echo__echo")), "{out}");
    assert_eq!(out["statuses"][0], 401, "the first request had no credentials: {out}");
    assert_eq!(out["authorizationServer"], s.idp.issuer, "{out}");
    assert_eq!(out["resource"], s.resource, "{out}");
    assert_eq!(out["scope"], "mcp:tools", "{out}");
    assert_eq!((s.idp.registrations(), s.idp.tokens_issued()), (1, 1), "one registration, one token");
    let issued = s.idp.issued();
    let claims = crate::idp::claims_of(&issued[0]);
    assert_eq!(claims["aud"], s.resource, "RFC 8707: the token is for this resource");
    assert_eq!(claims["sub"], "carol");
    let log = s.gw.log();
    assert!(log.contains("user=carol"), "the gateway log names the token user:\n{log}");
    let signature = issued[0].rsplit('.').next().expect("signature");
    assert!(!log.contains(signature), "the token is not in the log");
    assert_eq!(claims["scope"], "mcp:tools", "the scope the gateway's challenge named");
    assert_eq!(crate::idp::header_of(&issued[0])["alg"], "ES256");
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).expect("base64url")
}
