//! The "authz on" contestant's identity provider and policies: Bastion with
//! access tokens (JWTs validated against a key set) and 50 Cedar rules, to be
//! set against the same load with API keys alone.
//!
//! The benchmark is its own identity provider: at start it makes an RSA key,
//! serves its public half as a JWKS on 127.0.0.1 (`GET /jwks`), and signs one
//! RS256 access token for the benchmark's user, as an OpenID Connect
//! provider would for a client: `sub` the user, `aud` the gateway's
//! resource, a day's `exp`, and the scope the gateway requires.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The policy file: 50 rules, none of which denies the benchmark's call.
pub const POLICY: &str = include_str!("authz.cedar");
/// Its name in the contestant's directory (`policy.files`).
pub const POLICY_FILE: &str = "authz.cedar";
/// The user the token names (`sub`), as the API key's.
pub const USER: &str = "bench";
/// The group that holds the benchmarked server.
pub const GROUP: &str = "tools";
/// The scope the gateway requires of tokens.
pub const SCOPE: &str = "mcp:tools";
/// How long the token is valid.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// A running identity provider: its key set served on loopback, and a token.
pub struct Issuer {
    /// The issuer's identifier (`iss`), its base URL.
    pub issuer: String,
    /// Where its key set is served.
    pub jwks_uri: String,
    /// `kid` of the signing key.
    kid: String,
    encoding: EncodingKey,
    fetches: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Issuer {
    /// Makes a 2048-bit RSA key and serves its JWKS on 127.0.0.1.
    pub async fn start() -> anyhow::Result<Issuer> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).context("generating an RSA key")?;
        let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).context("loading the RSA key")?;
        let kid = format!("bench-{}", &bastion_core::apikey::random_token(8));
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::RS256)?)?;
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!("RS256");
        let set = Arc::new(json!({ "keys": [jwk] }));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the key set server")?;
        let addr = listener.local_addr()?;
        let fetches = Arc::new(AtomicU64::new(0));
        let counted = fetches.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let set = set.clone();
                counted.fetch_add(1, Ordering::Relaxed);
                async move { axum::Json((*set).clone()) }
            }),
        );
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("bench: the key set server stopped: {e}");
            }
        });
        let base = format!("http://{addr}");
        Ok(Issuer { jwks_uri: format!("{base}/jwks"), issuer: base, kid, encoding, fetches, server })
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// An access token for `user` and the gateway at `resource`.
    pub fn token(&self, user: &str, resource: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = json!({
            "iss": self.issuer,
            "sub": user,
            "aud": [resource],
            "azp": "bench-client",
            "iat": now,
            "nbf": now - 5,
            "exp": now + TOKEN_LIFETIME_SECS,
            "jti": bastion_core::apikey::random_token(16),
            "scope": format!("openid {SCOPE}"),
            "email": format!("{user}@example.com"),
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// What the contestant's config adds to the API key one: this issuer,
    /// the user in the group holding `server`, and the policy file.
    pub fn config(&self, resource: &str, server: &str) -> Value {
        json!({
            "auth": {
                "resource": resource,
                "oidc": [{
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_uri,
                    "algorithms": ["RS256"],
                    "claims": {"user": "sub"},
                    "scopes": [SCOPE],
                }],
            },
            "groups": {GROUP: [server]},
            "users": {USER: {"role": "user", "groups": [GROUP]}},
            "policy": {"files": [POLICY_FILE]},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_policy::{Action, Engine, Kind, Role, Subject, Target, Topology};
    use jsonwebtoken::{DecodingKey, Validation};

    fn engine() -> Engine {
        Engine::from_sources(&[(POLICY_FILE, POLICY)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decide(e: &Engine, user: &str, role: Role, groups: &[String], server: &str, tool: &str, args: Value) -> bool {
        let topo = Topology::new([(GROUP, ["echo"])]);
        let who = Subject { user, role: Some(role), groups };
        let what = Target { kind: Kind::Tool, server, name: tool };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let d = e.decide(&topo, &who, Action::Call, &what, Some(&args), now);
        assert!(d.errors.is_empty(), "{d}");
        d.allowed
    }

    #[test]
    fn fifty_rules_and_the_benchmarked_call_is_allowed() {
        let e = engine();
        let builtin = Engine::builtin().policy_ids().len();
        assert_eq!(e.policy_ids().len() - builtin, 50);
        let groups = [GROUP.to_string()];
        let args = json!({"text": "hello from bastion-bench"});
        assert!(decide(&e, USER, Role::User, &groups, "echo", "echo", args.clone()));
        // The rules do bite: the same user, other arguments or other places.
        let secret = json!({"text": "key: -----BEGIN RSA PRIVATE KEY----- …"});
        assert!(!decide(&e, USER, Role::User, &groups, "echo", "echo", secret));
        assert!(!decide(&e, USER, Role::User, &groups, "echo", "echo", json!({"path": "/home/x/.ssh/id_rsa"})));
        assert!(!decide(&e, USER, Role::User, &groups, "echo", "echo", json!({"url": "file:///etc/passwd"})));
        assert!(!decide(&e, USER, Role::User, &groups, "echo", "admin_reset", json!({})));
        assert!(!decide(&e, "mallory", Role::User, &groups, "echo", "echo", args.clone()));
        assert!(!decide(&e, USER, Role::User, &groups, "github", "create_issue", json!({})));
        assert!(decide(&e, USER, Role::User, &groups, "search", "web_search", json!({"max_results": 10})));
        assert!(!decide(&e, USER, Role::User, &groups, "search", "web_search", json!({"max_results": 500})));
    }

    #[tokio::test]
    async fn the_token_verifies_against_the_served_key_set() {
        let issuer = Issuer::start().await.unwrap();
        let resource = "http://127.0.0.1:1/mcp";
        let token = issuer.token(USER, resource).unwrap();
        let set: jsonwebtoken::jwk::JwkSet = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(&issuer.jwks_uri)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(issuer.fetches(), 1);
        let jwk = set.find(&issuer.kid).unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[resource]);
        v.set_issuer(&[&issuer.issuer]);
        let data = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v).unwrap();
        assert_eq!(data.claims["sub"], USER);
        assert_eq!(data.claims["scope"], "openid mcp:tools");
        let c = issuer.config(resource, "echo");
        assert_eq!(c["auth"]["oidc"][0]["jwks_uri"], json!(issuer.jwks_uri));
    }
}
