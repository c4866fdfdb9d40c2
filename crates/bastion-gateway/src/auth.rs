//! Who is calling: API keys (here), access tokens from OIDC providers
//! ([`token`]) and client certificates ([`ClientCert`], from the TLS
//! listener).
//!
//! A bearer token with the shape of a Bastion key is hashed with the
//! pepper and looked up by hash. Validated keys are cached for a short TTL
//! (`auth.key_cache_ttl`, default 2 s) so the store is not asked on every
//! call; revocation takes effect within that TTL — for new requests, and
//! for what is already open (sessions and streams), which the gateway
//! closes when [`ApiKeyAuthenticator::ended_keys`] names their key. Usage counts are batched
//! and written every few seconds. When the store cannot answer, the request
//! is refused (fail closed) with 503, never let through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bastion_core::apikey::{self, Pepper};
use bastion_store::{KeyState, Store};
use chrono::Utc;
use dashmap::DashMap;
use http::HeaderMap;

pub mod token;
pub use token::TokenAuthenticator;

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ApiKey,
    /// A JWT access token from a configured OIDC issuer.
    Token,
    /// A client certificate (mTLS).
    Certificate,
    /// Authentication explicitly disabled (`--insecure-no-auth`).
    None,
}

/// An authenticated caller: who it is, by which credential, and what the
/// credential itself says about its role and groups (token claims). What
/// the caller may do is decided per request from the user's current entry
/// (config, store) and the policies, never cached on the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name: links keys, token subjects, certificates and `users`.
    pub user: Arc<str>,
    /// Which credential was used (a key id, a token or certificate
    /// fingerprint), for audit and for closing what it opened.
    pub credential: Arc<str>,
    pub method: Method,
    /// The role a token claims (when `claims.role` is configured).
    pub claimed_role: Option<bastion_core::access::Role>,
    /// The groups a token claims (when `claims.groups` is configured).
    pub claimed_groups: Option<Arc<[String]>>,
    /// Unix seconds at which the credential stops being valid, if it does
    /// on its own (token `exp`, certificate `notAfter`, key expiry).
    pub expires_at: Option<i64>,
    /// Where the request this principal was authenticated for came from.
    pub origin: Origin,
}

/// Where a request came from, as the edge saw it: what the audit trail
/// records beside the principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub client_ip: Option<std::net::IpAddr>,
    /// The request's `X-Request-Id` (the client's, or one Bastion made).
    pub request_id: Option<Arc<str>>,
    /// The W3C trace id of the request's `traceparent`, if it sent one;
    /// with tracing on, the trace id of the request's spans (the client's
    /// when its `traceparent` was valid, else a new one).
    pub trace_id: Option<Arc<str>>,
}

impl Origin {
    /// Reads the request id and trace context from a request's headers.
    pub fn from_request(client_ip: Option<std::net::IpAddr>, headers: &http::HeaderMap) -> Origin {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let request_id = text("x-request-id").filter(|v| !v.is_empty() && v.len() <= 128).map(Arc::from);
        // traceparent: version-traceid-parentid-flags, the trace id 32 hex digits, not all zero.
        let trace_id = text("traceparent").and_then(|tp| {
            let id = tp.split('-').nth(1)?;
            (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
                .then(|| Arc::from(id.to_ascii_lowercase()))
        });
        Origin { client_ip, request_id, trace_id }
    }
}

/// The client's address: the TCP peer's, or, when the peer is one of the
/// `trusted` proxies (`http.trusted_proxies`), the last address of
/// `X-Forwarded-For` that is not itself a trusted proxy. Each proxy
/// appends the address it was reached from, so the list is read from the
/// right, and what stands left of the first untrusted hop is that hop's
/// own say, not believed. A hop that is not an address (`unknown`, an
/// obfuscated name, garbage) ends the walk at the last trusted one.
pub fn client_ip<B>(req: &http::Request<B>, trusted: &[bastion_core::config::IpNet]) -> Option<std::net::IpAddr> {
    forwarded_client(peer_ip(req)?, req.headers(), trusted)
}

/// The address of the connection's peer, as the server put it on the
/// request; never a header's.
pub fn peer_ip<B>(req: &http::Request<B>) -> Option<std::net::IpAddr> {
    req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// [`client_ip`] of a request from `peer` with `headers`.
fn forwarded_client(
    peer: std::net::IpAddr,
    headers: &http::HeaderMap,
    trusted: &[bastion_core::config::IpNet],
) -> Option<std::net::IpAddr> {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return Some(peer);
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").rsplit(','))
        .map(|hop| forwarded_address(hop.trim()));
    let mut client = peer;
    for hop in hops {
        match hop {
            Some(ip) if is_trusted(ip) => client = ip,
            Some(ip) => return Some(ip),
            None => break,
        }
    }
    Some(client)
}

/// A `X-Forwarded-For` entry's address: `192.0.2.7`, `2001:db8::1`, and the
/// forms some proxies write with a port (`192.0.2.7:4711`,
/// `[2001:db8::1]:4711`) or brackets.
fn forwarded_address(hop: &str) -> Option<std::net::IpAddr> {
    if let Ok(ip) = hop.parse::<std::net::IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    hop.strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| std::net::IpAddr::V6(ip).to_canonical())
}

impl Principal {
    /// The principal used when authentication is explicitly disabled.
    pub fn anonymous() -> Principal {
        Principal {
            user: "anonymous".into(),
            credential: "none".into(),
            method: Method::None,
            claimed_role: None,
            claimed_groups: None,
            expires_at: None,
            origin: Origin::default(),
        }
    }

    /// A principal authenticated by an API key.
    pub fn from_key(user: &str, key_id: &str, expires_at: Option<chrono::DateTime<Utc>>) -> Principal {
        Principal {
            user: user.into(),
            credential: key_id.into(),
            method: Method::ApiKey,
            claimed_role: None,
            claimed_groups: None,
            expires_at: expires_at.map(|t| t.timestamp()),
            origin: Origin::default(),
        }
    }
}

/// A verified client certificate, put on each request of its connection by
/// the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The user name taken from the certificate (`tls.client_user`).
    pub user: Arc<str>,
    /// SHA-256 of the certificate, hex: the credential id.
    pub fingerprint: Arc<str>,
    /// The certificate's `notAfter`, unix seconds.
    pub not_after: i64,
}

impl ClientCert {
    pub fn principal(&self) -> Principal {
        Principal {
            user: self.user.clone(),
            credential: format!("cert:{}", &self.fingerprint[..self.fingerprint.len().min(16)]).into(),
            method: Method::Certificate,
            claimed_role: None,
            claimed_groups: None,
            expires_at: Some(self.not_after),
            origin: Origin::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("invalid API key")]
    Invalid,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the API key has reached its usage limit")]
    Exhausted,
    /// A bearer token that is not a valid access token for this gateway;
    /// the reason is for the log and the client, never the token itself.
    #[error("invalid access token: {0}")]
    InvalidToken(String),
    /// A valid token without a scope this gateway requires: 403.
    #[error("the access token lacks a required scope")]
    InsufficientScope {
        /// The scopes required, space-separated, for the challenge.
        scope: String,
    },
    /// The bearer token and the client certificate name different users.
    #[error("the bearer token and the client certificate name different users")]
    Mismatch,
    /// The store (or an identity provider) could not answer: fail closed.
    #[error("authentication is temporarily unavailable")]
    Unavailable,
}

impl AuthError {
    /// The `error` parameter of the `WWW-Authenticate` challenge (RFC 6750).
    pub fn challenge_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing => None,
            AuthError::Malformed => Some("invalid_request"),
            AuthError::Unavailable => None,
            AuthError::InsufficientScope { .. } => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }
}

struct CachedKey {
    principal: Principal,
    key_id: String,
    checked_at: Instant,
    expires_at: Option<chrono::DateTime<Utc>>,
}

pub struct ApiKeyAuthenticator {
    store: Store,
    pepper: Pepper,
    /// `auth.key_cache_ttl` in milliseconds; changed by a reload.
    ttl_ms: AtomicU64,
    cache: DashMap<String, CachedKey>,
    usage: Mutex<HashMap<String, i64>>,
}

impl ApiKeyAuthenticator {
    pub fn new(store: Store, pepper: Pepper, ttl: Duration) -> Arc<Self> {
        Arc::new(ApiKeyAuthenticator {
            store,
            pepper,
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            cache: DashMap::new(),
            usage: Mutex::new(HashMap::new()),
        })
    }

    /// How long a validated key is trusted without asking the store.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    /// Keys revoked or expired between `since` and `now`; they are dropped
    /// from the cache at once, so requests presenting them are refused.
    pub async fn ended_keys(
        &self,
        since: chrono::DateTime<Utc>,
        now: chrono::DateTime<Utc>,
    ) -> Result<Vec<String>, AuthError> {
        let ended = self.store.keys_ended_between(since, now).await.map_err(|e| {
            tracing::warn!(error = %e, "could not check for revoked keys");
            AuthError::Unavailable
        })?;
        if !ended.is_empty() {
            self.cache.retain(|_, c| !ended.contains(&c.key_id));
        }
        Ok(ended)
    }

    #[cfg(test)]
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        self.authenticate_key(bearer_token(headers)?).await
    }

    /// The principal of an API key presented as a bearer token.
    pub async fn authenticate_key(&self, token: &str) -> Result<Principal, AuthError> {
        if !apikey::looks_like_key(token) {
            return Err(AuthError::Invalid);
        }
        let hash = apikey::hash_key(&self.pepper, token);
        if let Some(hit) = self.cache.get(&hash) {
            let fresh = hit.checked_at.elapsed() < self.ttl();
            let unexpired = hit.expires_at.is_none_or(|e| e > Utc::now());
            if fresh && unexpired {
                self.count_use(&hit.key_id);
                return Ok(hit.principal.clone());
            }
        }
        let record = self.store.find_key_by_hash(&hash).await.map_err(|e| {
            tracing::error!(error = %e, "key lookup failed; refusing the request");
            AuthError::Unavailable
        })?;
        let Some(record) = record else {
            self.cache.remove(&hash);
            return Err(AuthError::Invalid);
        };
        if !apikey::hashes_equal(&record.hash, &hash) {
            return Err(AuthError::Invalid);
        }
        let pending_uses = self.usage.lock().expect("poisoned").get(&record.id).copied().unwrap_or(0);
        let mut effective = record.clone();
        effective.use_count += pending_uses;
        match effective.state(Utc::now()) {
            KeyState::Active => {}
            KeyState::Expired => return Err(AuthError::Expired),
            KeyState::Revoked => {
                self.cache.remove(&hash);
                return Err(AuthError::Revoked);
            }
            KeyState::Exhausted => return Err(AuthError::Exhausted),
        }
        let principal = Principal::from_key(&record.user, &record.id, record.expires_at);
        // Keys with a usage limit are checked against the store every time.
        if record.max_uses.is_none() {
            self.cache.insert(
                hash,
                CachedKey {
                    principal: principal.clone(),
                    key_id: record.id.clone(),
                    checked_at: Instant::now(),
                    expires_at: record.expires_at,
                },
            );
        }
        self.count_use(&record.id);
        Ok(principal)
    }

    fn count_use(&self, key_id: &str) {
        let mut usage = self.usage.lock().expect("poisoned");
        match usage.get_mut(key_id) {
            Some(n) => *n += 1,
            None => {
                usage.insert(key_id.to_string(), 1);
            }
        }
    }

    /// Writes batched usage counts to the store.
    pub async fn flush_usage(&self) {
        let batch: Vec<(String, i64)> = self.usage.lock().expect("poisoned").drain().collect();
        let now = Utc::now();
        for (id, n) in batch {
            if let Err(e) = self.store.record_key_use(&id, n, now).await {
                tracing::warn!(error = %e, "could not record key usage");
                self.usage.lock().expect("poisoned").entry(id).and_modify(|m| *m += n).or_insert(n);
            }
        }
    }
}

/// The token of an `Authorization: Bearer …` header.
/// What the API key pepper is derived from when `auth.key_pepper` names
/// its source.
const PEPPER_LABEL: &[u8] = b"bastion api-key pepper v1";

/// Why the API key pepper could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    #[error("auth.key_pepper: {0}")]
    Source(#[from] bastion_vault::KeyError),
    #[error(transparent)]
    Store(#[from] bastion_store::StoreError),
}

/// The secret API keys are hashed with: from `auth.key_pepper` (a key of
/// 32 bytes, the pepper derived from it), or the file `api-key.pepper` in
/// the data directory, made the first time.
pub fn load_pepper(
    config: &bastion_core::config::Config,
    config_path: &std::path::Path,
) -> Result<Pepper, PepperError> {
    match &config.auth.key_pepper {
        Some(k) => {
            let key = crate::vault::source_of(k, config, config_path).load()?;
            let bytes = key.derive(PEPPER_LABEL);
            Ok(Pepper::new(bytes.to_vec()).expect("a derived key is 32 bytes"))
        }
        None => Ok(bastion_store::pepper::load_or_create(&config.data_dir(config_path))?),
    }
}

pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(AuthError::Missing) };
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_store::NewApiKey;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_first_untrusted_hop() {
        use bastion_core::config::IpNet;
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap(), IpNet::parse("::1").unwrap()];
        let proxy = Some(ip("10.0.0.2"));
        let client = |peer: Option<std::net::IpAddr>, h: &HeaderMap, t: &[IpNet]| {
            peer.and_then(|p| forwarded_client(p, h, t)).map(|a| a.to_string())
        };
        // No proxy trusted: the peer, whatever the header says.
        assert_eq!(client(Some(ip("192.0.2.9")), &xff(&["198.51.100.1"]), &[]).unwrap(), "192.0.2.9");
        // A peer that is not a trusted proxy cannot name another client.
        assert_eq!(client(Some(ip("192.0.2.9")), &xff(&["198.51.100.1"]), &trusted).unwrap(), "192.0.2.9");
        // Through one proxy; through two (the inner hop trusted too).
        assert_eq!(client(proxy, &xff(&["198.51.100.1"]), &trusted).unwrap(), "198.51.100.1");
        assert_eq!(client(proxy, &xff(&["198.51.100.1, 10.1.1.1"]), &trusted).unwrap(), "198.51.100.1");
        // What a client wrote itself stands left of its own address: not believed.
        assert_eq!(client(proxy, &xff(&["203.0.113.66, 198.51.100.1"]), &trusted).unwrap(), "198.51.100.1");
        // Several headers are one list, in order.
        assert_eq!(client(proxy, &xff(&["203.0.113.66", "198.51.100.1,10.0.0.3"]), &trusted).unwrap(), "198.51.100.1");
        // Ports and brackets; an IPv4 client in IPv6 form; IPv6.
        assert_eq!(client(proxy, &xff(&["198.51.100.1:4711"]), &trusted).unwrap(), "198.51.100.1");
        assert_eq!(client(proxy, &xff(&["[2001:db8::7]:4711"]), &trusted).unwrap(), "2001:db8::7");
        assert_eq!(client(proxy, &xff(&["[2001:db8::7]"]), &trusted).unwrap(), "2001:db8::7");
        assert_eq!(client(proxy, &xff(&["::ffff:198.51.100.1"]), &trusted).unwrap(), "198.51.100.1");
        assert_eq!(client(Some(ip("::1")), &xff(&["2001:db8::7"]), &trusted).unwrap(), "2001:db8::7");
        // No header, an empty one, garbage, `unknown`: the last trusted hop.
        assert_eq!(client(proxy, &HeaderMap::new(), &trusted).unwrap(), "10.0.0.2");
        assert_eq!(client(proxy, &xff(&[""]), &trusted).unwrap(), "10.0.0.2");
        assert_eq!(client(proxy, &xff(&["198.51.100.1, unknown"]), &trusted).unwrap(), "10.0.0.2");
        assert_eq!(client(proxy, &xff(&["198.51.100.1, garbage, 10.0.0.5"]), &trusted).unwrap(), "10.0.0.5");
        let mut bytes = HeaderMap::new();
        bytes.insert("x-forwarded-for", http::HeaderValue::from_bytes(b"198.51.100.1\xff").unwrap());
        assert_eq!(client(proxy, &bytes, &trusted).unwrap(), "10.0.0.2");
        // Every hop a trusted proxy: the first of them.
        assert_eq!(client(proxy, &xff(&["10.9.9.9, 10.0.0.3"]), &trusted).unwrap(), "10.9.9.9");
        assert_eq!(client(None, &xff(&["198.51.100.1"]), &trusted), None);
    }

    #[test]
    fn parses_bearer_headers() {
        assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(bearer_token(&headers("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&headers("Bearer ")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&headers("bearer tok")), Ok("tok"));
    }

    #[test]
    fn a_configured_pepper_is_the_same_in_every_data_directory() {
        use std::os::unix::fs::PermissionsExt;
        let shared = tempfile::tempdir().unwrap();
        let key_file = shared.path().join("pepper.key");
        std::fs::write(&key_file, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let load = |pepper: Option<&std::path::Path>| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bastion.yaml");
            let mut text = format!("data_dir: {}\n", dir.path().join("data").display());
            if let Some(p) = pepper {
                text.push_str(&format!("auth: {{key_pepper: {{file: {}}}}}\n", p.display()));
            }
            std::fs::write(&path, text).unwrap();
            let config = bastion_core::config::Config::load(&path).unwrap();
            let pepper = load_pepper(&config, &path).unwrap();
            (pepper.as_bytes().to_vec(), dir)
        };
        let (a, _da) = load(Some(&key_file));
        let (b, _db) = load(Some(&key_file));
        assert_eq!(a, b, "replicas with one key_pepper hash keys alike");
        assert_ne!(&a[..], &std::fs::read(&key_file).unwrap()[..], "the pepper is derived, not the key itself");
        let (c, dc) = load(None);
        let (d, _dd) = load(None);
        assert_ne!(c, d, "without key_pepper each data directory makes its own");
        assert!(dc.path().join("data").join("api-key.pepper").exists());
    }

    async fn setup(max_uses: Option<i64>) -> (tempfile::TempDir, Arc<ApiKeyAuthenticator>, String, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let pepper = Pepper::generate();
        let key = apikey::generate(&pepper);
        store
            .insert_key(&NewApiKey {
                id: "k1".into(),
                user: "alice".into(),
                display_prefix: key.display_prefix.clone(),
                hash: key.hash.clone(),
                expires_at: None,
                max_uses,
                description: None,
            })
            .await
            .unwrap();
        let auth = ApiKeyAuthenticator::new(store.clone(), pepper, Duration::from_millis(0));
        (dir, auth, key.plaintext.to_string(), store)
    }

    #[tokio::test]
    async fn valid_key_then_revoked() {
        let (_d, auth, key, store) = setup(None).await;
        let p = auth.authenticate(&headers(&format!("Bearer {key}"))).await.unwrap();
        assert_eq!(&*p.user, "alice");
        store.revoke_key("k1").await.unwrap();
        assert_eq!(auth.authenticate(&headers(&format!("Bearer {key}"))).await, Err(AuthError::Revoked));
    }

    #[tokio::test]
    async fn unknown_and_foreign_tokens() {
        let (_d, auth, _key, _s) = setup(None).await;
        let other = apikey::generate(&Pepper::generate());
        assert_eq!(
            auth.authenticate(&headers(&format!("Bearer {}", &*other.plaintext))).await,
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.authenticate(&headers("Bearer eyJhbGciOi.x.y")).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn usage_limit_counts_unflushed_uses() {
        let (_d, auth, key, _s) = setup(Some(2)).await;
        let h = headers(&format!("Bearer {key}"));
        auth.authenticate(&h).await.unwrap();
        auth.authenticate(&h).await.unwrap();
        assert_eq!(auth.authenticate(&h).await, Err(AuthError::Exhausted));
        auth.flush_usage().await;
        assert_eq!(auth.authenticate(&h).await, Err(AuthError::Exhausted));
    }

    #[tokio::test]
    async fn store_failure_fails_closed() {
        let (_d, auth, key, store) = setup(None).await;
        store.close().await;
        assert_eq!(auth.authenticate(&headers(&format!("Bearer {key}"))).await, Err(AuthError::Unavailable));
    }
}
