//! Micro-benchmarks of the pieces every proxied request goes through:
//! JSON-RPC parsing and classification, API key hashing, the authenticator
//! (cached key and store lookup), access tokens (validated before, and a
//! first validation), the policy decision on a call (built-in rules, and 50
//! more), and the routing of prefixed tool names.
//!
//! Run with `cargo bench -p bastion-bench --bench hotpath`.
#![forbid(unsafe_code)]

use bastion_core::apikey::{self, Pepper};
use bastion_core::jsonrpc::Message;
use bastion_core::naming::{prefix_name, split_name};
use divan::{Bencher, black_box};

fn main() {
    divan::main();
}

/// A typical `tools/call` body as a client sends it.
const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"github__search_issues","arguments":{"query":"is:open label:bug repo:example/project","per_page":20,"page":1},"_meta":{"progressToken":"p-42"}}}"#;

/// A `tools/call` result as a server answers it.
const TOOLS_RESULT: &str = r#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"Found 3 issues: #101 crash on start, #97 wrong total in report, #88 timeout on large input"}],"isError":false}}"#;

mod jsonrpc {
    use super::*;

    /// Bytes to a classified message: what the gateway does per request.
    #[divan::bench]
    fn parse_tools_call(b: Bencher) {
        b.counter(divan::counter::BytesCount::of_str(TOOLS_CALL)).bench(|| {
            let v: serde_json::Value = serde_json::from_str(black_box(TOOLS_CALL)).expect("json");
            Message::from_value(v).expect("valid")
        });
    }

    #[divan::bench]
    fn parse_tools_result(b: Bencher) {
        b.counter(divan::counter::BytesCount::of_str(TOOLS_RESULT)).bench(|| {
            let v: serde_json::Value = serde_json::from_str(black_box(TOOLS_RESULT)).expect("json");
            Message::from_value(v).expect("valid")
        });
    }

    /// Classification alone, from an already parsed value.
    #[divan::bench]
    fn classify_tools_call(b: Bencher) {
        let v: serde_json::Value = serde_json::from_str(TOOLS_CALL).expect("json");
        b.with_inputs(|| v.clone()).bench_values(|v| Message::from_value(v).expect("valid"));
    }

    /// A classified message back to bytes.
    #[divan::bench]
    fn serialize_tools_call(b: Bencher) {
        let m = Message::from_value(serde_json::from_str(TOOLS_CALL).expect("json")).expect("valid");
        b.bench(|| serde_json::to_vec(&black_box(&m).to_value()).expect("json"));
    }
}

mod apikey_hash {
    use super::*;

    /// HMAC-SHA256 of a presented key with the pepper: done on every
    /// request whose key is not in the cache.
    #[divan::bench]
    fn hash_key(b: Bencher) {
        let pepper = Pepper::generate();
        let key = apikey::generate(&pepper).plaintext.to_string();
        b.bench(|| apikey::hash_key(black_box(&pepper), black_box(&key)));
    }

    #[divan::bench]
    fn looks_like_key(b: Bencher) {
        let pepper = Pepper::generate();
        let key = apikey::generate(&pepper).plaintext.to_string();
        b.bench(|| apikey::looks_like_key(black_box(&key)));
    }
}

mod auth {
    use std::sync::Arc;
    use std::time::Duration;

    use bastion_gateway::auth::ApiKeyAuthenticator;
    use bastion_store::{NewApiKey, Store};

    use super::*;

    /// An authenticator over a real SQLite store holding one key, and the
    /// request headers presenting it.
    fn setup(
        rt: &tokio::runtime::Runtime,
        ttl: Duration,
    ) -> (tempfile::TempDir, Arc<ApiKeyAuthenticator>, http::HeaderMap) {
        let dir = tempfile::tempdir().expect("temp dir");
        let pepper = Pepper::generate();
        let key = apikey::generate(&pepper);
        let store = rt.block_on(async {
            let store = Store::open_sqlite(&dir.path().join("bastion.db")).await.expect("store");
            let record = NewApiKey {
                id: "k1".into(),
                user: "bench".into(),
                display_prefix: key.display_prefix.clone(),
                hash: key.hash.clone(),
                expires_at: None,
                max_uses: None,
                description: None,
            };
            store.insert_key(&record).await.expect("insert");
            store
        });
        let mut headers = http::HeaderMap::new();
        let value = format!("Bearer {}", &*key.plaintext).parse().expect("header");
        headers.insert(http::header::AUTHORIZATION, value);
        (dir, ApiKeyAuthenticator::new(store, pepper, ttl), headers)
    }

    fn token(headers: &http::HeaderMap) -> &str {
        bastion_gateway::auth::bearer_token(headers).expect("bearer")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// What almost every request costs: the key's hash found in the cache.
    #[divan::bench]
    fn cached_key(b: Bencher) {
        let rt = runtime();
        let (_dir, auth, headers) = setup(&rt, Duration::from_secs(3600));
        rt.block_on(auth.authenticate_key(token(&headers))).expect("valid");
        b.bench(|| rt.block_on(auth.authenticate_key(token(black_box(&headers)))).expect("valid"));
    }

    /// A key not cached (first use, or the cache TTL passed): a store lookup.
    #[divan::bench]
    fn store_lookup(b: Bencher) {
        let rt = runtime();
        let (_dir, auth, headers) = setup(&rt, Duration::ZERO);
        b.bench(|| rt.block_on(auth.authenticate_key(token(black_box(&headers)))).expect("valid"));
    }
}

/// The "authz on" contestant's identity provider and policy file.
#[path = "../src/authz.rs"]
// Its tests and the contestant's config are not used here.
#[allow(dead_code, unused_imports)]
mod idp;

mod authz {
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use bastion_core::config::AuthConfig;
    use bastion_gateway::auth::TokenAuthenticator;
    use bastion_policy::{Action, Engine, Kind, Role, Subject, Target, Topology};
    use serde_json::json;

    use super::idp::{self, Issuer};
    use super::*;

    const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

    /// A token authenticator for the issuer, which serves its key set on
    /// loopback from `rt`.
    fn setup(rt: &tokio::runtime::Runtime) -> (Issuer, Arc<TokenAuthenticator>) {
        let issuer = rt.block_on(Issuer::start()).expect("issuer");
        let auth: AuthConfig = serde_json::from_value(issuer.config(RESOURCE, "echo")["auth"].clone()).expect("auth");
        let tokens = TokenAuthenticator::from_config(&auth).expect("an issuer");
        (issuer, tokens)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
    }

    /// What almost every request with a token costs: a token validated
    /// before (within a minute, and before its `exp`).
    #[divan::bench]
    fn token_validated_before(b: Bencher) {
        let rt = runtime();
        let (issuer, tokens) = setup(&rt);
        let token = issuer.token(idp::USER, RESOURCE).expect("token");
        rt.block_on(tokens.authenticate(&token)).expect("valid");
        b.bench(|| rt.block_on(tokens.authenticate(black_box(&token))).expect("valid"));
    }

    /// A token seen for the first time (or again after a minute): RS256
    /// signature and claims, keys already fetched.
    #[divan::bench(sample_count = 20, sample_size = 10)]
    fn token_first_validation(b: Bencher) {
        let rt = runtime();
        let (issuer, tokens) = setup(&rt);
        let first = issuer.token(idp::USER, RESOURCE).expect("token");
        rt.block_on(tokens.authenticate(&first)).expect("valid");
        b.with_inputs(|| issuer.token(idp::USER, RESOURCE).expect("token"))
            .bench_refs(|t| rt.block_on(tokens.authenticate(t)).expect("valid"));
    }

    fn now() -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }

    /// The decision on the benchmark's call with the built-in rules alone,
    /// for an admin (the API key contestant's user).
    #[divan::bench]
    fn decide_builtin_admin(b: Bencher) {
        let engine = Engine::builtin();
        let topo = Topology::new([(idp::GROUP, ["echo"])]);
        let who = Subject { user: idp::USER, role: Some(Role::Admin), groups: &[] };
        let what = Target { kind: Kind::Tool, server: "echo", name: "echo" };
        let args = json!({"text": "hello from bastion-bench"});
        let now = now();
        b.bench(|| {
            let d = engine.decide(&topo, &who, Action::Call, black_box(&what), Some(black_box(&args)), now);
            assert!(d.allowed);
        });
    }

    /// The decision with the built-in rules alone, for a user of the group
    /// holding the server.
    #[divan::bench]
    fn decide_builtin_user(b: Bencher) {
        let engine = Engine::builtin();
        let topo = Topology::new([(idp::GROUP, ["echo"])]);
        let groups = [idp::GROUP.to_string()];
        let who = Subject { user: idp::USER, role: Some(Role::User), groups: &groups };
        let what = Target { kind: Kind::Tool, server: "echo", name: "echo" };
        let args = json!({"text": "hello from bastion-bench"});
        let now = now();
        b.bench(|| {
            let d = engine.decide(&topo, &who, Action::Call, black_box(&what), Some(black_box(&args)), now);
            assert!(d.allowed);
        });
    }

    /// The same call with the 50 rules, for a user of the group holding
    /// the server (the authz contestant's user).
    #[divan::bench]
    fn decide_50_rules_user(b: Bencher) {
        let engine = Engine::from_sources(&[(idp::POLICY_FILE, idp::POLICY)]).expect("policies");
        let topo = Topology::new([(idp::GROUP, ["echo"])]);
        let groups = [idp::GROUP.to_string()];
        let who = Subject { user: idp::USER, role: Some(Role::User), groups: &groups };
        let what = Target { kind: Kind::Tool, server: "echo", name: "echo" };
        let args = json!({"text": "hello from bastion-bench"});
        let now = now();
        b.bench(|| {
            let d = engine.decide(&topo, &who, Action::Call, black_box(&what), Some(black_box(&args)), now);
            assert!(d.allowed);
        });
    }
}

mod naming {
    use super::*;

    #[divan::bench]
    fn split(b: Bencher) {
        b.bench(|| split_name(black_box("github__search_issues")));
    }

    #[divan::bench]
    fn prefix(b: Bencher) {
        b.bench(|| prefix_name(black_box("github"), black_box("search_issues")));
    }

    /// Prefixing a whole `tools/list` page of 100 names.
    #[divan::bench]
    fn prefix_page_of_100(b: Bencher) {
        let names: Vec<String> = (0..100).map(|i| format!("tool_number_{i}")).collect();
        b.bench(|| names.iter().map(|n| prefix_name(black_box("github"), n)).collect::<Vec<_>>());
    }
}
