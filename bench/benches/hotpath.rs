//! Micro-benchmarks of the pieces every proxied request goes through:
//! JSON-RPC parsing and classification, API key hashing, the authenticator
//! (cached key and store lookup), and the routing of prefixed tool names.
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
