//! Access tokens (JWTs) from OpenID Connect providers.
//!
//! A bearer value with the shape of a JWT is checked against the issuers of
//! `auth.oidc`:
//!
//! 1. The token's header and claims are read without trust only to choose
//!    the issuer (its `iss`, compared exactly) and the key (`kid`, `alg`).
//!    Header extensions (`crit`) and keys carried by the token itself
//!    (`jwk`, `jku`, `x5u`, `x5c`) are never used.
//! 2. The algorithm must be one of the issuer's `algorithms` (never `none`
//!    or an HMAC algorithm) and fit the key: RSA keys for `RS*`/`PS*`,
//!    P-256 for `ES256`, P-384 for `ES384`, Ed25519 for `EdDSA`, and the
//!    key's own `alg` when it names one. Symmetric keys of a key set are
//!    ignored.
//! 3. The signature is verified, then `iss` (exactly), `aud` (must contain
//!    `auth.resource`), `exp` (required), `nbf` (when present), with the
//!    issuer's leeway; then the required scopes (`scope` or `scp`), 403
//!    when one is missing.
//!
//! Keys come from the issuer's JWKS (found by discovery at
//! `{issuer}/.well-known/openid-configuration`, whose `issuer` must be the
//! configured one, or from `jwks_uri`), cached per issuer for
//! `jwks_cache_ttl`. A token naming a key not in the set fetches it again,
//! at most once per `jwks_min_refresh`; concurrent requests share one
//! fetch; a fetch is bounded in time and size. When no usable key can be
//! had because the provider cannot be reached, the request is refused with
//! 503 (fail closed), never let through.
//!
//! Validated tokens are remembered for a short time by their SHA-256, never
//! past their `exp`, so a session's requests do not verify a signature each.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bastion_core::access::Role;
use bastion_core::config::{AuthConfig, ClaimNames, OidcIssuer, is_valid_user_name};
use bastion_core::redact;
use dashmap::DashMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{AuthError, Method, Principal};

/// Longest bearer token looked at.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest a fetch of the keys (discovery and key set together) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery document or key set read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Most keys taken from one key set.
const MAX_KEYS: usize = 64;
/// After a failed fetch, the fewest seconds before the next one (or
/// `jwks_min_refresh` when shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How long a validated token is remembered (never past its `exp`).
const REMEMBER_SECS: i64 = 60;
/// Most validated tokens remembered at once.
const MAX_REMEMBERED: usize = 10_000;
/// Most groups taken from a token.
const MAX_GROUPS: usize = 256;
/// RSA moduli accepted: 2048 to 8192 bits.
const RSA_MIN_BYTES: usize = 256;
const RSA_MAX_BYTES: usize = 1024;

/// Validates bearer JWTs against the configured issuers.
pub struct TokenAuthenticator {
    /// `auth.resource`: every token's `aud` must contain it.
    resource: String,
    issuers: Vec<Issuer>,
    http: reqwest::Client,
    /// Bound of one fetch of an issuer's keys.
    fetch_timeout: Duration,
    /// Validated tokens by SHA-256.
    remembered: DashMap<[u8; 32], Remembered>,
}

struct Remembered {
    principal: Principal,
    /// Unix seconds: `min(exp, validated + REMEMBER_SECS)`.
    until: i64,
    issuer: usize,
    /// The issuer's key set generation it was verified with.
    generation: u64,
}

impl TokenAuthenticator {
    /// `None` when no issuer is configured.
    pub fn from_config(auth: &AuthConfig) -> Option<Arc<TokenAuthenticator>> {
        if auth.oidc.is_empty() {
            return None;
        }
        let Some(resource) = auth.resource.clone() else {
            // Refused by config validation; without it no token can be
            // checked, so none is accepted.
            tracing::error!("auth.oidc needs auth.resource; access tokens are refused");
            return None;
        };
        let http = match reqwest::Client::builder()
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client for identity providers; access tokens are refused");
                return None;
            }
        };
        for o in &auth.oidc {
            if o.jwks_uri.as_deref().is_some_and(|u| !fetchable(u)) {
                tracing::error!(
                    issuer = %redact::url(&o.issuer),
                    "jwks_uri must be https:// (http:// only on loopback); this issuer's tokens are refused"
                );
            }
        }
        let issuers = auth.oidc.iter().map(Issuer::new).collect();
        Some(Arc::new(TokenAuthenticator {
            resource,
            issuers,
            http,
            fetch_timeout: FETCH_TIMEOUT,
            remembered: DashMap::new(),
        }))
    }

    /// Whether a bearer value has the shape of a JWT: three base64url parts.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
            && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
    }

    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is too long"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_unix();
        if let Some(hit) = self.remembered.get(&digest) {
            let current = self.issuers.get(hit.issuer).is_some_and(|i| i.jwks.generation() == hit.generation);
            if now < hit.until && current {
                return Ok(hit.principal.clone());
            }
        }
        self.remembered.remove(&digest);
        let (principal, issuer, generation) = self.verify(token, &digest).await?;
        self.remember(digest, &principal, issuer, generation, now);
        Ok(principal)
    }

    fn remember(&self, digest: [u8; 32], principal: &Principal, issuer: usize, generation: u64, now: i64) {
        let until = principal.expires_at.map_or(now, |exp| exp.min(now.saturating_add(REMEMBER_SECS)));
        if until <= now {
            return;
        }
        if self.remembered.len() >= MAX_REMEMBERED {
            self.remembered.retain(|_, r| r.until > now);
            if self.remembered.len() >= MAX_REMEMBERED {
                return;
            }
        }
        self.remembered.insert(digest, Remembered { principal: principal.clone(), until, issuer, generation });
    }

    /// Full verification: the principal, the issuer's index and its key set
    /// generation.
    async fn verify(&self, token: &str, digest: &[u8; 32]) -> Result<(Principal, usize, u64), AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let header = decode_part(header)?;
        if header.contains_key("crit") {
            return Err(invalid("the token uses header extensions"));
        }
        let alg_name = header.get("alg").and_then(Value::as_str).ok_or_else(malformed)?;
        let alg = accepted_algorithm(alg_name).ok_or_else(|| invalid("the token's algorithm is not accepted"))?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(malformed()),
        };
        // Unverified: only to choose the issuer.
        let peek = decode_part(payload)?;
        let iss = peek.get("iss").and_then(Value::as_str).ok_or_else(|| invalid("the token names no issuer"))?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == iss)
            .ok_or_else(|| invalid("the token's issuer is not accepted"))?;
        if !issuer.algorithms.contains(&alg) {
            return Err(invalid("the token's algorithm is not accepted"));
        }
        let (key, generation) = issuer.key(&self.http, self.fetch_timeout, kid, alg).await?;

        let mut validation = Validation::new(alg);
        validation.leeway = issuer.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[issuer.issuer.as_str()]);
        validation.set_audience(&[self.resource.as_str()]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;

        // The library's checks, once more on the verified claims, strictly.
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
            return Err(invalid("the token's issuer is not accepted"));
        }
        let exp = claims.get("exp").and_then(numeric).ok_or_else(|| invalid("the token has no expiry"))?;
        // RFC 7519: valid only *before* `exp` (the library lets its second pass).
        if exp.saturating_add(issuer.leeway as i64) <= now_unix() {
            return Err(invalid("the token has expired"));
        }
        let for_us = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.resource,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(self.resource.as_str())),
            _ => false,
        };
        if !for_us {
            return Err(invalid("the token was not issued for this resource"));
        }

        let missing = {
            let have = scopes(&claims);
            issuer.scopes.iter().any(|s| !have.contains(&s.as_str()))
        };
        if missing {
            return Err(AuthError::InsufficientScope { scope: issuer.scopes.join(" ") });
        }

        let user = claim(&claims, &issuer.claims.user)
            .and_then(Value::as_str)
            .filter(|u| is_valid_user_name(u))
            .ok_or_else(|| invalid("the token's user claim is missing or not a valid user name"))?;
        let claimed_role = issuer.claims.role.as_deref().and_then(|name| role(&claims, name));
        let claimed_groups = issuer.claims.groups.as_deref().map(|name| groups(&claims, name));
        let principal = Principal {
            user: user.into(),
            credential: format!("token:{}", hex::encode(&digest[..8])).into(),
            method: Method::Token,
            claimed_role,
            claimed_groups,
            expires_at: Some(exp),
            origin: Default::default(),
        };
        Ok((principal, index, generation))
    }

    /// How many times the keys of `issuer` were fetched (or tried).
    #[cfg(test)]
    fn fetches(&self, issuer: usize) -> u64 {
        self.issuers[issuer].jwks.fetches.load(Ordering::Relaxed)
    }
}

fn invalid(reason: &str) -> AuthError {
    AuthError::InvalidToken(reason.into())
}

fn malformed() -> AuthError {
    invalid("the token is malformed")
}

/// What a failure of the library's checks is called (never quoting the
/// token).
fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => invalid("the token has expired"),
        ErrorKind::ImmatureSignature => invalid("the token is not valid yet"),
        ErrorKind::InvalidAudience => invalid("the token was not issued for this resource"),
        ErrorKind::InvalidIssuer => invalid("the token's issuer is not accepted"),
        ErrorKind::InvalidSignature => invalid("the token's signature is not valid"),
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => invalid("the token has no expiry"),
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => invalid("the token was not issued for this resource"),
        ErrorKind::MissingRequiredClaim(_) => invalid("the token lacks a required claim"),
        ErrorKind::InvalidClaimFormat(_) => invalid("the token has a malformed claim"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat | ErrorKind::UnsupportedAlgorithm => {
            invalid("the token's algorithm does not fit its key")
        }
        _ => malformed(),
    }
}

/// One base64url JSON object of a token.
fn decode_part(part: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| malformed())?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed()),
    }
}

/// The asymmetric algorithms a token may be signed with.
fn accepted_algorithm(name: &str) -> Option<Algorithm> {
    let alg = Algorithm::from_str(name).ok()?;
    (alg.family() != AlgorithmFamily::Hmac).then_some(alg)
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A NumericDate (RFC 7519): a number of seconds, fractions allowed.
fn numeric(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    v.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f.floor() as i64)
}

/// A claim by name: a top-level claim of that exact name, else, for a
/// dotted name, the path through nested objects (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// The scopes a token carries: `scope` (space-separated), or `scp` (an
/// array, or a space-separated string).
fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(list)) => out.extend(list.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// The role a token claims: exactly one of the four names, else none.
fn role(claims: &Map<String, Value>, name: &str) -> Option<Role> {
    let value = claim(claims, name)?;
    let Some(s) = value.as_str() else {
        tracing::debug!(claim = name, "the token's role claim is not a string; no role taken from it");
        return None;
    };
    match Role::from_str(s) {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::debug!(claim = name, "the token's role claim names no known role; no role taken from it");
            None
        }
    }
}

/// The groups a token claims: an array of strings, or one string; at most
/// [`MAX_GROUPS`].
fn groups(claims: &Map<String, Value>, name: &str) -> Arc<[String]> {
    let mut out: Vec<String> = match claim(claims, name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).take(MAX_GROUPS + 1).map(String::from).collect()
        }
        _ => Vec::new(),
    };
    if out.len() > MAX_GROUPS {
        tracing::debug!(claim = name, "the token claims more than {MAX_GROUPS} groups; the first are taken");
        out.truncate(MAX_GROUPS);
    }
    out.into()
}

// ---------------------------------------------------------------------------
// Issuers and their keys
// ---------------------------------------------------------------------------

struct Issuer {
    issuer: String,
    jwks_uri: Option<String>,
    algorithms: Vec<Algorithm>,
    claims: ClaimNames,
    scopes: Vec<String>,
    leeway: u64,
    min_refresh: Duration,
    ttl: Duration,
    jwks: Jwks,
}

impl Issuer {
    fn new(c: &OidcIssuer) -> Issuer {
        Issuer {
            issuer: c.issuer.clone(),
            jwks_uri: c.jwks_uri.clone(),
            algorithms: c.algorithms.iter().filter_map(|a| accepted_algorithm(a)).collect(),
            claims: c.claims.clone(),
            scopes: c.scopes.clone(),
            leeway: c.leeway.as_secs().min(60),
            min_refresh: c.jwks_min_refresh,
            ttl: c.jwks_cache_ttl,
            jwks: Jwks::default(),
        }
    }

    /// The key a token names, fetching the key set when it is missing,
    /// stale, or lacks the key (within the refresh bounds). Also the key
    /// set's generation.
    async fn key(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(Arc<Key>, u64), AuthError> {
        let (seen, stale) = match self.decide(kid, alg, true) {
            Decision::Use(k, generation) => return Ok((k, generation)),
            Decision::Refuse(e) => return Err(e),
            Decision::Fetch(seen, stale) => (seen, stale),
        };
        {
            let _one_fetch = match (self.jwks.fetching.try_lock(), stale) {
                (Ok(guard), _) => guard,
                // Keys past their TTL are being fetched again: meanwhile
                // the ones in hand still verify.
                (Err(_), Some(stale)) => return Ok(stale),
                (Err(_), None) => self.jwks.fetching.lock().await,
            };
            // Another request may have fetched while this one waited.
            let attempted = self.jwks.state.lock().unwrap_or_else(|p| p.into_inner()).last_attempt;
            if attempted == seen {
                self.refresh(http, timeout).await;
            }
        }
        match self.decide(kid, alg, false) {
            Decision::Use(k, generation) => Ok((k, generation)),
            Decision::Refuse(e) => Err(e),
            // Not reached: no fetch is asked for when none may be made.
            Decision::Fetch(..) => Err(AuthError::Unavailable),
        }
    }

    /// What to do for a token naming `kid` with `alg`, given the cached
    /// key set.
    fn decide(&self, kid: Option<&str>, alg: Algorithm, may_fetch: bool) -> Decision {
        let state = self.jwks.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let fresh = state.fetched_at.is_some_and(|t| now.duration_since(t) < self.ttl);
        let found = state.keys.as_ref().map_or(Lookup::Missing, |set| set.find(kid, alg));
        let gap = if state.last_failed { self.min_refresh.min(RETRY_AFTER_FAILURE) } else { self.min_refresh };
        let fetch_allowed = may_fetch && state.last_attempt.is_none_or(|t| now.duration_since(t) >= gap);
        match found {
            Lookup::Found(k) if fresh => Decision::Use(k, state.generation),
            Lookup::WrongKind => Decision::Refuse(invalid("the token's algorithm does not fit its key")),
            Lookup::Ambiguous => Decision::Refuse(invalid("the token names no key and the issuer has several")),
            Lookup::Found(k) if fetch_allowed => Decision::Fetch(state.last_attempt, Some((k, state.generation))),
            _ if fetch_allowed => Decision::Fetch(state.last_attempt, None),
            // Stale, and the provider cannot be asked again yet: the keys
            // last fetched still count.
            Lookup::Found(k) => Decision::Use(k, state.generation),
            Lookup::Missing if state.keys.is_some() && !state.last_failed => {
                Decision::Refuse(invalid("the token's signing key is not known"))
            }
            Lookup::Missing => {
                tracing::debug!(
                    issuer = %redact::url(&self.issuer),
                    "no signing key of the identity provider can be used; refusing the token"
                );
                Decision::Refuse(AuthError::Unavailable)
            }
        }
    }

    /// Fetches the key set and records the outcome.
    async fn refresh(&self, http: &reqwest::Client, timeout: Duration) {
        self.jwks.fetches.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.fetch(http)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        };
        let mut state = self.jwks.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last_attempt = Some(Instant::now());
        match outcome {
            Ok(set) => {
                tracing::debug!(issuer = %redact::url(&self.issuer), keys = set.keys.len(), elapsed = ?started.elapsed(), "fetched the signing keys");
                if state.keys.as_ref().is_none_or(|old| old.fingerprint != set.fingerprint) {
                    state.generation += 1;
                    self.jwks.generation.store(state.generation, Ordering::Relaxed);
                }
                state.keys = Some(Arc::new(set));
                state.fetched_at = state.last_attempt;
                state.last_failed = false;
            }
            Err(e) => {
                tracing::warn!(issuer = %redact::url(&self.issuer), error = %e, "cannot fetch the identity provider's signing keys");
                state.last_failed = true;
            }
        }
    }

    /// Discovery (unless `jwks_uri` is configured), then the key set.
    async fn fetch(&self, http: &reqwest::Client) -> Result<KeySet, String> {
        let jwks_uri = match &self.jwks_uri {
            // Keys over plain HTTP from another host could be anyone's.
            Some(u) if !fetchable(u) => return Err("jwks_uri must be https:// (http:// only on loopback)".into()),
            Some(u) => u.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
                let doc = get_json(http, &url).await.map_err(|e| format!("discovery: {e}"))?;
                if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
                    return Err("discovery: the document names another issuer".into());
                }
                let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or("discovery: no jwks_uri")?;
                if !fetchable(uri) {
                    return Err("discovery: jwks_uri must be https:// (http:// only on loopback)".into());
                }
                uri.to_string()
            }
        };
        let set = get_json(http, &jwks_uri).await.map_err(|e| format!("key set: {e}"))?;
        KeySet::parse(&set)
    }
}

enum Decision {
    Use(Arc<Key>, u64),
    Refuse(AuthError),
    /// Fetch; the last attempt seen when deciding, and the key found in
    /// the stale set, if any.
    Fetch(Option<Instant>, Option<(Arc<Key>, u64)>),
}

#[derive(Default)]
struct Jwks {
    state: Mutex<JwksState>,
    /// Held while fetching: concurrent misses share one fetch.
    fetching: tokio::sync::Mutex<()>,
    /// `state.generation`, readable without the lock.
    generation: AtomicU64,
    fetches: AtomicU64,
}

impl Jwks {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct JwksState {
    /// The last key set fetched.
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_failed: bool,
    /// Grows whenever the key set changes.
    generation: u64,
}

/// An `https://` URL, or `http://` on loopback.
fn fetchable(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return true;
    }
    let Some(rest) = lower.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or_else(|| host.rsplit_once(':').map_or(host, |(h, _)| h), |(h, _)| h);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// GETs a JSON object, bounded in size.
async fn get_json(http: &reqwest::Client, url: &str) -> Result<Map<String, Value>, String> {
    let mut resp = http
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "timed out".to_string() } else { "cannot connect".to_string() })?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    if resp.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
        return Err("the document is too large".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| "the answer was cut off".to_string())? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err("the document is too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err("not a JSON object".into()),
    }
}

/// The kinds of key a token may be verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

struct Key {
    kid: Option<String>,
    kind: KeyKind,
    /// The key's own `alg`, when the set names one.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// One JWK; `None` for keys that are not signature keys of a kind
    /// accepted (symmetric keys included).
    fn parse(jwk: &Map<String, Value>) -> Option<Key> {
        let text = |name: &str| jwk.get(name).and_then(Value::as_str);
        if jwk.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
            return None;
        }
        if let Some(ops) = jwk.get("key_ops")
            && !ops.as_array().is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")))
        {
            return None;
        }
        let b64 = |name: &str| text(name).and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok());
        let (kind, decoding) = match (text("kty")?, text("crv")) {
            ("RSA", _) => {
                let n = b64("n")?;
                let e = b64("e")?;
                let significant = n.iter().position(|b| *b != 0).map_or(0, |i| n.len() - i);
                if !(RSA_MIN_BYTES..=RSA_MAX_BYTES).contains(&significant) || e.is_empty() || e.len() > 8 {
                    return None;
                }
                (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (kind, len) = if crv == "P-256" { (KeyKind::P256, 32) } else { (KeyKind::P384, 48) };
                let (x, y) = (b64("x")?, b64("y")?);
                if x.len() != len || y.len() != len {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (kind, DecodingKey::from_ec_der(&point))
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64("x")?;
                if x.len() != 32 {
                    return None;
                }
                (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
            }
            _ => return None,
        };
        let alg = match text("alg") {
            None => None,
            Some(a) => Some(accepted_algorithm(a).filter(|a| kind.fits(*a))?),
        };
        let kid = match jwk.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return None,
        };
        Some(Key { kid, kind, alg, decoding })
    }
}

struct KeySet {
    keys: Vec<Arc<Key>>,
    /// What the usable keys are, to tell a changed set from the same one.
    fingerprint: [u8; 32],
}

enum Lookup {
    Found(Arc<Key>),
    /// The key named exists but is not for this algorithm.
    WrongKind,
    /// No `kid` and several keys would fit.
    Ambiguous,
    Missing,
}

impl KeySet {
    fn parse(doc: &Map<String, Value>) -> Result<KeySet, String> {
        let list = doc.get("keys").and_then(Value::as_array).ok_or("no keys array")?;
        let mut keys = Vec::new();
        let mut fingerprint = Sha256::new();
        let mut kids = HashSet::new();
        for jwk in list.iter().take(MAX_KEYS) {
            let Some(obj) = jwk.as_object() else { continue };
            let Some(key) = Key::parse(obj) else { continue };
            if let Some(kid) = &key.kid
                && !kids.insert(kid.clone())
            {
                continue; // the first key of an id wins
            }
            fingerprint.update(jwk.to_string().as_bytes());
            fingerprint.update([0]);
            keys.push(Arc::new(key));
        }
        if keys.is_empty() {
            return Err("the key set holds no usable signing key".into());
        }
        Ok(KeySet { keys, fingerprint: fingerprint.finalize().into() })
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(k) if k.fits(alg) => Lookup::Found(k.clone()),
                Some(_) => Lookup::WrongKind,
                None => Lookup::Missing,
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Lookup::Found(k.clone()),
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                    _ => Lookup::Missing,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::State;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use jsonwebtoken::EncodingKey;
    use jsonwebtoken::jwk::Jwk;
    use serde_json::json;

    const RESOURCE: &str = "https://gw.example.com/mcp";

    /// A signing key of the test: its private half and its public JWK.
    struct TestKey {
        alg: Algorithm,
        kid: String,
        encoding: EncodingKey,
        jwk: Value,
        /// The public key as PEM (SubjectPublicKeyInfo).
        public_pem: String,
    }

    impl TestKey {
        fn new(alg: Algorithm, kid: &str) -> TestKey {
            let (rc_alg, encoding) = match alg {
                Algorithm::RS256 | Algorithm::PS256 => (&rcgen::PKCS_RSA_SHA256, None),
                Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, None),
                Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, None),
                Algorithm::EdDSA => (&rcgen::PKCS_ED25519, None::<EncodingKey>),
                other => panic!("no test key for {other:?}"),
            };
            let pair = rcgen::KeyPair::generate_for(rc_alg).unwrap();
            let encoding = encoding.unwrap_or_else(|| match alg.family() {
                AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap(),
                AlgorithmFamily::Ec => EncodingKey::from_ec_der(&pair.serialize_der()),
                _ => EncodingKey::from_ed_der(&pair.serialize_der()),
            });
            let raw = pair.public_key_raw();
            let mut jwk = match alg.family() {
                AlgorithmFamily::Rsa => serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap(),
                AlgorithmFamily::Ec => {
                    let n = (raw.len() - 1) / 2;
                    json!({
                        "kty": "EC",
                        "crv": if n == 32 { "P-256" } else { "P-384" },
                        "x": URL_SAFE_NO_PAD.encode(&raw[1..1 + n]),
                        "y": URL_SAFE_NO_PAD.encode(&raw[1 + n..]),
                    })
                }
                _ => json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(raw)}),
            };
            jwk["kid"] = json!(kid);
            jwk["use"] = json!("sig");
            jwk["alg"] = json!(format!("{alg:?}"));
            TestKey { alg, kid: kid.into(), encoding, jwk, public_pem: pair.public_key_pem() }
        }

        fn sign(&self, claims: &Value) -> String {
            sign_with(&json!({"alg": format!("{:?}", self.alg), "typ": "JWT", "kid": self.kid}), claims, |m| {
                jsonwebtoken::crypto::sign(m, &self.encoding, self.alg).unwrap()
            })
        }
    }

    /// A token with any header, its signature made by `signer` over the
    /// first two parts.
    fn sign_with(header: &Value, claims: &Value, signer: impl FnOnce(&[u8]) -> String) -> String {
        let message =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = signer(message.as_bytes());
        format!("{message}.{signature}")
    }

    fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
        sign_with(header, claims, |m| {
            jsonwebtoken::crypto::sign(m, &EncodingKey::from_secret(secret), Algorithm::HS256).unwrap()
        })
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        Normal,
        Fail,
        Huge,
        Slow,
        WrongIssuer,
    }

    /// A provider serving discovery and a key set, counting fetches.
    struct Provider {
        issuer: Mutex<String>,
        keys: Mutex<Vec<Value>>,
        mode: Mutex<Mode>,
        jwks_fetches: AtomicU64,
    }

    impl Provider {
        async fn start(keys: &[&TestKey]) -> Arc<Provider> {
            let provider = Arc::new(Provider {
                issuer: Mutex::new(String::new()),
                keys: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
                mode: Mutex::new(Mode::Normal),
                jwks_fetches: AtomicU64::new(0),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            *provider.issuer.lock().unwrap() = format!("http://{}/realms/test", listener.local_addr().unwrap());
            let app = Router::new()
                .route("/realms/test/.well-known/openid-configuration", get(discovery))
                .route("/realms/test/jwks", get(jwks))
                .with_state(provider.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            provider
        }

        fn issuer(&self) -> String {
            self.issuer.lock().unwrap().clone()
        }

        fn set_mode(&self, m: Mode) {
            *self.mode.lock().unwrap() = m;
        }

        fn fetches(&self) -> u64 {
            self.jwks_fetches.load(Ordering::SeqCst)
        }
    }

    async fn discovery(State(p): State<Arc<Provider>>) -> Response {
        let issuer = p.issuer();
        let named =
            if *p.mode.lock().unwrap() == Mode::WrongIssuer { format!("{issuer}/other") } else { issuer.clone() };
        axum::Json(json!({"issuer": named, "jwks_uri": format!("{issuer}/jwks")})).into_response()
    }

    async fn jwks(State(p): State<Arc<Provider>>) -> Response {
        p.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        let mode = *p.mode.lock().unwrap();
        match mode {
            Mode::Fail => (http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
            Mode::Huge => {
                let mut keys = p.keys.lock().unwrap().clone();
                keys.push(json!({"kty": "oct", "k": "A".repeat(MAX_DOCUMENT_BYTES)}));
                axum::Json(json!({ "keys": keys })).into_response()
            }
            Mode::Slow => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                axum::Json(json!({"keys": *p.keys.lock().unwrap()})).into_response()
            }
            _ => axum::Json(json!({"keys": *p.keys.lock().unwrap()})).into_response(),
        }
    }

    fn authenticator(issuer: Value) -> Arc<TokenAuthenticator> {
        let auth: AuthConfig = serde_json::from_value(json!({"resource": RESOURCE, "oidc": [issuer]})).unwrap();
        TokenAuthenticator::from_config(&auth).unwrap()
    }

    fn claims(issuer: &str, user: &str) -> Value {
        let now = now_unix();
        json!({"iss": issuer, "sub": user, "aud": RESOURCE, "iat": now, "exp": now + 300, "scope": "mcp openid"})
    }

    fn reason(r: Result<Principal, AuthError>) -> String {
        match r {
            Err(AuthError::InvalidToken(why)) => why,
            other => panic!("expected an invalid token, got {other:?}"),
        }
    }

    struct Setup {
        rsa: TestKey,
        ec: TestKey,
        ed: TestKey,
        provider: Arc<Provider>,
        auth: Arc<TokenAuthenticator>,
    }

    async fn setup(extra: Value) -> Setup {
        let rsa = TestKey::new(Algorithm::RS256, "rsa-1");
        let ec = TestKey::new(Algorithm::ES256, "ec-1");
        let ed = TestKey::new(Algorithm::EdDSA, "ed-1");
        let provider = Provider::start(&[&rsa, &ec, &ed]).await;
        let mut issuer = json!({
            "issuer": provider.issuer(),
            "algorithms": ["RS256", "ES256", "EdDSA"],
            "leeway": "0s",
            "jwks_min_refresh": "2s",
        });
        for (k, v) in extra.as_object().unwrap() {
            issuer[k] = v.clone();
        }
        let auth = authenticator(issuer);
        Setup { rsa, ec, ed, provider, auth }
    }

    #[tokio::test]
    async fn tokens_signed_with_each_kind_of_key_are_accepted() {
        let s = setup(json!({"claims": {"role": "role", "groups": "groups"}})).await;
        let iss = s.provider.issuer();
        for (key, user) in [(&s.rsa, "alice"), (&s.ec, "bob"), (&s.ed, "carol")] {
            let mut c = claims(&iss, user);
            c["role"] = json!("user");
            c["groups"] = json!(["eng", "ops"]);
            let token = key.sign(&c);
            let p = s.auth.authenticate(&token).await.unwrap_or_else(|e| panic!("{:?}: {e:?}", key.alg));
            assert_eq!(&*p.user, user);
            assert_eq!(p.method, Method::Token);
            assert_eq!(p.claimed_role, Some(Role::User));
            assert_eq!(p.claimed_groups.as_deref(), Some(&["eng".to_string(), "ops".to_string()][..]));
            assert_eq!(p.expires_at, c["exp"].as_i64());
            assert!(p.credential.starts_with("token:") && p.credential.len() == "token:".len() + 16);
            assert!(!token.contains(&p.credential[6..]), "the credential is not a piece of the token");
        }
        assert_eq!(s.provider.fetches(), 1, "one fetch for every key of the set");
    }

    #[tokio::test]
    async fn none_and_hmac_algorithms_are_refused() {
        let s = setup(json!({})).await;
        let c = claims(&s.provider.issuer(), "mallory");
        let none = sign_with(&json!({"alg": "none", "typ": "JWT"}), &c, |_| String::new());
        assert_eq!(reason(s.auth.authenticate(&none).await), "the token's algorithm is not accepted");
        let none_kid = sign_with(&json!({"alg": "none", "kid": "rsa-1"}), &c, |_| String::new());
        assert_eq!(reason(s.auth.authenticate(&none_kid).await), "the token's algorithm is not accepted");
        // The classic confusion: HS256 with the RSA public key (PEM, or the
        // JWK's modulus) as the HMAC secret, naming the RSA key.
        for secret in [s.rsa.public_pem.as_bytes().to_vec(), s.rsa.jwk.to_string().into_bytes()] {
            for header in [json!({"alg": "HS256", "kid": "rsa-1"}), json!({"alg": "HS256"})] {
                let forged = hs256(&secret, &header, &c);
                assert_eq!(reason(s.auth.authenticate(&forged).await), "the token's algorithm is not accepted");
            }
        }
        for alg in ["HS384", "HS512", "RS1", "ES512", "", "NONE", "None"] {
            let t = sign_with(&json!({"alg": alg, "kid": "rsa-1"}), &c, |_| "c2ln".into());
            assert_eq!(reason(s.auth.authenticate(&t).await), "the token's algorithm is not accepted", "{alg}");
        }
    }

    #[tokio::test]
    async fn an_algorithm_must_be_the_issuers_and_fit_the_key() {
        let rsa = TestKey::new(Algorithm::RS256, "rsa-1");
        let ec = TestKey::new(Algorithm::ES256, "ec-1");
        let provider = Provider::start(&[&rsa, &ec]).await;
        let only_rsa = authenticator(json!({"issuer": provider.issuer(), "algorithms": ["RS256"]}));
        let c = claims(&provider.issuer(), "alice");
        assert_eq!(reason(only_rsa.authenticate(&ec.sign(&c)).await), "the token's algorithm is not accepted");
        assert!(only_rsa.authenticate(&rsa.sign(&c)).await.is_ok());

        let both = authenticator(json!({"issuer": provider.issuer(), "algorithms": ["RS256", "ES256", "PS256"]}));
        // An ES256 token naming the RSA key, an RS256 token naming the EC key.
        let ec_as_rsa = sign_with(&json!({"alg": "ES256", "kid": "rsa-1"}), &c, |m| {
            jsonwebtoken::crypto::sign(m, &ec.encoding, Algorithm::ES256).unwrap()
        });
        assert_eq!(reason(both.authenticate(&ec_as_rsa).await), "the token's algorithm does not fit its key");
        let rsa_as_ec = sign_with(&json!({"alg": "RS256", "kid": "ec-1"}), &c, |m| {
            jsonwebtoken::crypto::sign(m, &rsa.encoding, Algorithm::RS256).unwrap()
        });
        assert_eq!(reason(both.authenticate(&rsa_as_ec).await), "the token's algorithm does not fit its key");
        // PS256 with a key whose JWK says RS256.
        let ps = sign_with(&json!({"alg": "PS256", "kid": "rsa-1"}), &c, |m| {
            jsonwebtoken::crypto::sign(m, &rsa.encoding, Algorithm::PS256).unwrap()
        });
        assert_eq!(reason(both.authenticate(&ps).await), "the token's algorithm does not fit its key");
        // Keys a token carries itself are never used.
        let attacker = TestKey::new(Algorithm::ES256, "rsa-1");
        let embedded = sign_with(&json!({"alg": "ES256", "kid": "ec-1", "jwk": attacker.jwk}), &c, |m| {
            jsonwebtoken::crypto::sign(m, &attacker.encoding, Algorithm::ES256).unwrap()
        });
        assert_eq!(reason(both.authenticate(&embedded).await), "the token's signature is not valid");
        let crit = sign_with(&json!({"alg": "ES256", "kid": "ec-1", "crit": ["b64"], "b64": false}), &c, |m| {
            jsonwebtoken::crypto::sign(m, &ec.encoding, Algorithm::ES256).unwrap()
        });
        assert_eq!(reason(both.authenticate(&crit).await), "the token uses header extensions");
    }

    type Change = Box<dyn Fn(&mut Value)>;

    #[tokio::test]
    async fn claims_are_checked() {
        let s = setup(json!({})).await;
        let iss = s.provider.issuer();
        let now = now_unix();
        let cases: Vec<(&str, Change, &str)> = vec![
            ("expired", Box::new(move |c| c["exp"] = json!(now - 5)), "the token has expired"),
            ("not yet valid", Box::new(move |c| c["nbf"] = json!(now + 120)), "the token is not valid yet"),
            ("no exp", Box::new(|c| drop(c.as_object_mut().unwrap().remove("exp"))), "the token has no expiry"),
            ("exp a string", Box::new(move |c| c["exp"] = json!((now + 60).to_string())), "the token has no expiry"),
            ("expiring now", Box::new(move |c| c["exp"] = json!(now)), "the token has expired"),
            (
                "another audience",
                Box::new(|c| c["aud"] = json!("https://other.example.com/mcp")),
                "the token was not issued for this resource",
            ),
            (
                "a prefix of the audience",
                Box::new(|c| c["aud"] = json!("https://gw.example.com")),
                "the token was not issued for this resource",
            ),
            (
                "no audience",
                Box::new(|c| drop(c.as_object_mut().unwrap().remove("aud"))),
                "the token was not issued for this resource",
            ),
            (
                "unknown issuer",
                Box::new(|c| c["iss"] = json!("https://evil.example.com")),
                "the token's issuer is not accepted",
            ),
            (
                "issuer with a slash",
                Box::new(|c| c["iss"] = json!(format!("{}/", c["iss"].as_str().unwrap()))),
                "the token's issuer is not accepted",
            ),
            ("issuer array", Box::new(|c| c["iss"] = json!([c["iss"].clone()])), "the token names no issuer"),
            (
                "no user",
                Box::new(|c| drop(c.as_object_mut().unwrap().remove("sub"))),
                "the token's user claim is missing or not a valid user name",
            ),
            (
                "empty user",
                Box::new(|c| c["sub"] = json!("")),
                "the token's user claim is missing or not a valid user name",
            ),
            (
                "control characters",
                Box::new(|c| c["sub"] = json!("al\nice")),
                "the token's user claim is missing or not a valid user name",
            ),
            (
                "numeric user",
                Box::new(|c| c["sub"] = json!(42)),
                "the token's user claim is missing or not a valid user name",
            ),
        ];
        for (what, change, why) in cases {
            let mut c = claims(&iss, "alice");
            change(&mut c);
            assert_eq!(reason(s.auth.authenticate(&s.rsa.sign(&c)).await), why, "{what}");
        }
        // An audience array holding the resource is accepted.
        let mut c = claims(&iss, "alice");
        c["aud"] = json!(["account", RESOURCE]);
        assert!(s.auth.authenticate(&s.rsa.sign(&c)).await.is_ok());
        // nbf in the past is fine.
        let mut c = claims(&iss, "alice");
        c["nbf"] = json!(now - 10);
        assert!(s.auth.authenticate(&s.ec.sign(&c)).await.is_ok());
    }

    #[tokio::test]
    async fn leeway_applies_to_exp_and_nbf() {
        let s = setup(json!({"leeway": "30s"})).await;
        let now = now_unix();
        let mut c = claims(&s.provider.issuer(), "alice");
        c["exp"] = json!(now - 10);
        assert!(s.auth.authenticate(&s.rsa.sign(&c)).await.is_ok(), "expired 10 s ago, within 30 s");
        c["exp"] = json!(now - 40);
        assert_eq!(reason(s.auth.authenticate(&s.rsa.sign(&c)).await), "the token has expired");
        let mut c = claims(&s.provider.issuer(), "alice");
        c["nbf"] = json!(now + 20);
        assert!(s.auth.authenticate(&s.rsa.sign(&c)).await.is_ok());
        c["nbf"] = json!(now + 40);
        assert_eq!(reason(s.auth.authenticate(&s.rsa.sign(&c)).await), "the token is not valid yet");
    }

    #[tokio::test]
    async fn tampered_tokens_are_refused() {
        let s = setup(json!({})).await;
        let c = claims(&s.provider.issuer(), "alice");
        for key in [&s.rsa, &s.ec, &s.ed] {
            let token = key.sign(&c);
            let parts: Vec<&str> = token.split('.').collect();
            // Another user in the payload, the signature kept.
            let mut other = c.clone();
            other["sub"] = json!("admin");
            let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(other.to_string()), parts[2]);
            assert_eq!(reason(s.auth.authenticate(&tampered).await), "the token's signature is not valid");
            // One bit of the signature flipped.
            let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            sig[5] ^= 1;
            let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
            assert_eq!(reason(s.auth.authenticate(&flipped).await), "the token's signature is not valid");
            // No signature at all.
            let stripped = format!("{}.{}.", parts[0], parts[1]);
            assert!(s.auth.authenticate(&stripped).await.is_err());
        }
        for junk in ["a.b.c", "..", "e30.e30.", "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "W10.W10.c2ln"] {
            assert_eq!(reason(s.auth.authenticate(junk).await), "the token is malformed", "{junk}");
        }
        let long = format!("{}.{}.c2ln", "a".repeat(MAX_TOKEN_BYTES), "b");
        assert_eq!(reason(s.auth.authenticate(&long).await), "the token is too long");
    }

    #[tokio::test]
    async fn required_scopes_come_from_scope_or_scp() {
        let s = setup(json!({"scopes": ["mcp:tools", "mcp:read"]})).await;
        let iss = s.provider.issuer();
        let mut c = claims(&iss, "alice");
        c["scope"] = json!("openid mcp:read");
        match s.auth.authenticate(&s.rsa.sign(&c)).await {
            Err(AuthError::InsufficientScope { scope }) => assert_eq!(scope, "mcp:tools mcp:read"),
            other => panic!("expected insufficient scope, got {other:?}"),
        }
        c["scope"] = json!("mcp:read openid mcp:tools");
        assert!(s.auth.authenticate(&s.rsa.sign(&c)).await.is_ok());
        let mut c = claims(&iss, "bob");
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["mcp:tools", "mcp:read"]);
        assert!(s.auth.authenticate(&s.rsa.sign(&c)).await.is_ok());
        c["scp"] = json!("mcp:tools mcp:read");
        assert!(s.auth.authenticate(&s.ec.sign(&c)).await.is_ok());
        // A forged token never gets as far as the scope check.
        c["scp"] = json!("mcp:tools");
        let forged = hs256(b"secret", &json!({"alg": "HS256"}), &c);
        assert!(matches!(s.auth.authenticate(&forged).await, Err(AuthError::InvalidToken(_))));
    }

    #[tokio::test]
    async fn roles_and_groups_are_read_only_when_named_and_exactly() {
        let s =
            setup(json!({"claims": {"user": "preferred_username", "role": "realm_access.role", "groups": "groups"}}))
                .await;
        let iss = s.provider.issuer();
        let mut c = claims(&iss, "sub-1234");
        c["preferred_username"] = json!("alice@example.com");
        c["realm_access"] = json!({"role": "admin"});
        c["groups"] = json!("eng");
        let p = s.auth.authenticate(&s.rsa.sign(&c)).await.unwrap();
        assert_eq!(&*p.user, "alice@example.com");
        assert_eq!(p.claimed_role, Some(Role::Admin));
        assert_eq!(p.claimed_groups.as_deref(), Some(&["eng".to_string()][..]));
        for odd in [json!("Admin"), json!("ADMIN"), json!("superuser"), json!(["admin"]), json!(1)] {
            c["realm_access"] = json!({"role": odd});
            c["jti"] = json!(odd.to_string());
            let p = s.auth.authenticate(&s.rsa.sign(&c)).await.unwrap();
            assert_eq!(p.claimed_role, None, "{odd}");
        }
        let many: Vec<String> = (0..1000).map(|i| format!("g{i}")).collect();
        c["groups"] = json!(many);
        let p = s.auth.authenticate(&s.rsa.sign(&c)).await.unwrap();
        assert_eq!(p.claimed_groups.as_ref().map(|g| g.len()), Some(MAX_GROUPS));

        // Without claim names, the same token claims nothing.
        let plain = authenticator(json!({"issuer": iss, "algorithms": ["RS256"]}));
        let p = plain.authenticate(&s.rsa.sign(&c)).await.unwrap();
        assert_eq!(&*p.user, "sub-1234");
        assert_eq!((p.claimed_role, p.claimed_groups), (None, None));
    }

    #[tokio::test]
    async fn an_unknown_key_is_fetched_at_a_bounded_rate_and_concurrent_misses_share_a_fetch() {
        let s = setup(json!({"jwks_min_refresh": "1s"})).await;
        let iss = s.provider.issuer();
        let c = claims(&iss, "alice");
        s.auth.authenticate(&s.rsa.sign(&c)).await.unwrap();
        assert_eq!(s.provider.fetches(), 1);

        // A key the provider does not have: one refetch, then none for a while.
        let stranger = TestKey::new(Algorithm::ES256, "unknown-kid");
        for _ in 0..20 {
            assert_eq!(reason(s.auth.authenticate(&stranger.sign(&c)).await), "the token's signing key is not known");
        }
        assert_eq!(s.provider.fetches(), 1, "the first unknown kid comes within 1 s of the first fetch");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut tasks = Vec::new();
        for i in 0..16 {
            let auth = s.auth.clone();
            let mut c = c.clone();
            c["jti"] = json!(i);
            let t = stranger.sign(&c);
            tasks.push(tokio::spawn(async move { auth.authenticate(&t).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(s.provider.fetches(), 2, "sixteen concurrent misses, one fetch");

        // The provider rotates its keys: the new key is fetched on first sight.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let rotated = TestKey::new(Algorithm::RS256, "rsa-2");
        s.provider.keys.lock().unwrap().push(rotated.jwk.clone());
        let p = s.auth.authenticate(&rotated.sign(&claims(&iss, "dave"))).await.unwrap();
        assert_eq!(&*p.user, "dave");
        assert_eq!(s.provider.fetches(), 3);
        assert_eq!(s.auth.fetches(0), 3);
    }

    #[tokio::test]
    async fn without_usable_keys_the_provider_being_down_fails_closed() {
        let s = setup(json!({})).await;
        let token = s.rsa.sign(&claims(&s.provider.issuer(), "alice"));
        for mode in [Mode::Fail, Mode::Huge, Mode::WrongIssuer] {
            let auth = authenticator(json!({"issuer": s.provider.issuer(), "algorithms": ["RS256"]}));
            s.provider.set_mode(mode);
            assert_eq!(auth.authenticate(&token).await, Err(AuthError::Unavailable), "{mode:?}");
            // Retried no sooner than the failure gap: still refused, no new fetch.
            let before = s.provider.fetches();
            assert_eq!(auth.authenticate(&token).await, Err(AuthError::Unavailable), "{mode:?}");
            assert_eq!(s.provider.fetches(), before, "{mode:?}");
        }
        // A fetch that takes too long.
        s.provider.set_mode(Mode::Slow);
        let mut slow = authenticator(json!({"issuer": s.provider.issuer(), "algorithms": ["RS256"]}));
        Arc::get_mut(&mut slow).unwrap().fetch_timeout = Duration::from_millis(300);
        let started = Instant::now();
        assert_eq!(slow.authenticate(&token).await, Err(AuthError::Unavailable));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        // An unreachable provider.
        let gone = authenticator(json!({"issuer": "http://127.0.0.1:9/realms/test", "algorithms": ["RS256"]}));
        let mut c = claims("http://127.0.0.1:9/realms/test", "alice");
        c["iss"] = json!("http://127.0.0.1:9/realms/test");
        assert_eq!(gone.authenticate(&s.rsa.sign(&c)).await, Err(AuthError::Unavailable));
        // Back to normal: accepted.
        s.provider.set_mode(Mode::Normal);
        let fresh = authenticator(json!({"issuer": s.provider.issuer(), "algorithms": ["RS256"]}));
        assert!(fresh.authenticate(&token).await.is_ok());
    }

    #[tokio::test]
    async fn keys_already_fetched_outlive_a_provider_outage() {
        let s = setup(json!({"jwks_cache_ttl": "1s", "jwks_min_refresh": "1s"})).await;
        let iss = s.provider.issuer();
        assert!(s.auth.authenticate(&s.rsa.sign(&claims(&iss, "alice"))).await.is_ok());
        s.provider.set_mode(Mode::Fail);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Stale keys, and the provider down: the known key still verifies.
        assert!(s.auth.authenticate(&s.ec.sign(&claims(&iss, "bob"))).await.is_ok());
        assert_eq!(s.provider.fetches(), 2);
        // A key never seen cannot be checked: 503.
        let stranger = TestKey::new(Algorithm::ES256, "new-kid");
        assert_eq!(s.auth.authenticate(&stranger.sign(&claims(&iss, "eve"))).await, Err(AuthError::Unavailable));
    }

    #[tokio::test]
    async fn keys_over_plain_http_from_another_host_are_never_fetched() {
        let s = setup(json!({})).await;
        let iss = s.provider.issuer();
        let auth =
            authenticator(json!({"issuer": iss, "jwks_uri": "http://keys.example.com/jwks", "algorithms": ["RS256"]}));
        assert_eq!(auth.authenticate(&s.rsa.sign(&claims(&iss, "alice"))).await, Err(AuthError::Unavailable));
    }

    #[tokio::test]
    async fn a_refresh_in_flight_holds_no_token_whose_key_is_known() {
        let s = setup(json!({"jwks_cache_ttl": "1s", "jwks_min_refresh": "1s"})).await;
        let iss = s.provider.issuer();
        assert!(s.auth.authenticate(&s.rsa.sign(&claims(&iss, "alice"))).await.is_ok());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        s.provider.set_mode(Mode::Slow);
        let auth = s.auth.clone();
        let first = s.ec.sign(&claims(&iss, "bob"));
        let refreshing = tokio::spawn(async move { auth.authenticate(&first).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        assert!(s.auth.authenticate(&s.ed.sign(&claims(&iss, "carol"))).await.is_ok());
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(refreshing.await.unwrap().is_ok(), "the request that fetched gets its answer too");
        assert_eq!(s.provider.fetches(), 2);
    }

    #[tokio::test]
    async fn explicit_jwks_uri_skips_discovery() {
        let s = setup(json!({})).await;
        let iss = s.provider.issuer();
        s.provider.set_mode(Mode::WrongIssuer); // discovery would be refused
        let auth = authenticator(json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks"), "algorithms": ["RS256"]}));
        assert!(auth.authenticate(&s.rsa.sign(&claims(&iss, "alice"))).await.is_ok());
    }

    #[tokio::test]
    async fn validated_tokens_are_remembered_until_their_expiry_at_most() {
        let s = setup(json!({})).await;
        let iss = s.provider.issuer();
        let mut c = claims(&iss, "alice");
        c["exp"] = json!(now_unix() + 2);
        let token = s.rsa.sign(&c);
        assert!(s.auth.authenticate(&token).await.is_ok());
        assert_eq!(s.auth.remembered.len(), 1);
        assert!(s.auth.authenticate(&token).await.is_ok());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(reason(s.auth.authenticate(&token).await), "the token has expired");
        assert_eq!(s.auth.remembered.len(), 0);
        // A changed key set forgets what was verified with the old one.
        let token = s.rsa.sign(&claims(&iss, "bob"));
        assert!(s.auth.authenticate(&token).await.is_ok());
        let hit = *s.auth.remembered.iter().next().map(|r| r.generation).as_ref().unwrap();
        s.provider.keys.lock().unwrap().retain(|k| k["kid"] != "rsa-1");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let stranger = TestKey::new(Algorithm::ES256, "trigger-refetch");
        assert!(s.auth.authenticate(&stranger.sign(&claims(&iss, "x"))).await.is_err());
        assert_ne!(s.auth.issuers[0].jwks.generation(), hit);
        assert_eq!(reason(s.auth.authenticate(&token).await), "the token's signing key is not known");
    }

    #[test]
    fn jwks_parsing_keeps_only_signature_keys_of_accepted_kinds() {
        let rsa = TestKey::new(Algorithm::RS256, "r");
        let ec = TestKey::new(Algorithm::ES256, "e");
        let mut enc = rsa.jwk.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut no_alg = ec.jwk.clone();
        no_alg.as_object_mut().unwrap().remove("alg");
        no_alg["kid"] = json!("no-alg");
        let mut wrong_alg = ec.jwk.clone();
        wrong_alg["alg"] = json!("RS256");
        wrong_alg["kid"] = json!("wrong-alg");
        let mut small = rsa.jwk.clone();
        small["n"] = json!(URL_SAFE_NO_PAD.encode([0xffu8; 128]));
        small["kid"] = json!("small");
        let mut dup = ec.jwk.clone();
        dup["kid"] = json!("r");
        let doc = json!({"keys": [
            rsa.jwk, ec.jwk, enc, no_alg, wrong_alg, small, dup,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not an object"
        ]});
        let set = KeySet::parse(doc.as_object().unwrap()).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["r", "e", "no-alg"]);
        assert!(matches!(set.find(Some("r"), Algorithm::RS256), Lookup::Found(_)));
        assert!(matches!(set.find(Some("r"), Algorithm::PS256), Lookup::WrongKind), "the key says RS256");
        assert!(matches!(set.find(Some("no-alg"), Algorithm::ES256), Lookup::Found(_)));
        assert!(matches!(set.find(Some("no-alg"), Algorithm::ES384), Lookup::WrongKind));
        assert!(matches!(set.find(Some("hmac"), Algorithm::RS256), Lookup::Missing));
        assert!(matches!(set.find(None, Algorithm::RS256), Lookup::Found(_)));
        assert!(matches!(set.find(None, Algorithm::ES256), Lookup::Ambiguous));
        assert!(KeySet::parse(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).as_object().unwrap()).is_err());
        assert!(KeySet::parse(json!({"nokeys": []}).as_object().unwrap()).is_err());
    }

    #[test]
    fn fetchable_urls_are_https_or_loopback() {
        for ok in
            ["https://idp.example.com/jwks", "http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:9/k"]
        {
            assert!(fetchable(ok), "{ok}");
        }
        for bad in [
            "http://idp.example.com/jwks",
            "http://127.0.0.1.evil.com/jwks",
            "http://localhost.evil.com/",
            "file:///etc/passwd",
            "ftp://x/",
        ] {
            assert!(!fetchable(bad), "{bad}");
        }
    }

    #[test]
    fn jwt_shape() {
        assert!(TokenAuthenticator::looks_like_jwt("eyJ.eyJ.sig"));
        assert!(TokenAuthenticator::looks_like_jwt("eyJ.eyJ."));
        assert!(!TokenAuthenticator::looks_like_jwt("bst_abc"));
        assert!(!TokenAuthenticator::looks_like_jwt("a.b.c.d"));
        assert!(!TokenAuthenticator::looks_like_jwt("a b.c.d"));
    }

    /// The cost of validating a token: cold (signature verified) and
    /// remembered. `cargo test --release -p bastion-gateway token_cost -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn token_cost() {
        let s = setup(json!({})).await;
        let iss = s.provider.issuer();
        for key in [&s.rsa, &s.ec, &s.ed] {
            let tokens: Vec<String> = (0..500)
                .map(|i| {
                    let mut c = claims(&iss, "alice");
                    c["jti"] = json!(i);
                    key.sign(&c)
                })
                .collect();
            s.auth.authenticate(&tokens[0]).await.unwrap();
            let started = Instant::now();
            for t in &tokens[1..] {
                s.auth.authenticate(t).await.unwrap();
            }
            let cold = started.elapsed() / (tokens.len() as u32 - 1);
            let started = Instant::now();
            for _ in 0..10 {
                for t in &tokens[1..] {
                    s.auth.authenticate(t).await.unwrap();
                }
            }
            let warm = started.elapsed() / (10 * (tokens.len() as u32 - 1));
            println!("{:?}: verified {cold:?}, remembered {warm:?}", key.alg);
        }
    }
}
