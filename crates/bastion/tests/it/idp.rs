//! A test identity provider inside the test process: an OpenID Connect /
//! OAuth 2.1 authorization server on 127.0.0.1 with real signing keys.
//!
//! - Discovery: `{issuer}/.well-known/openid-configuration` and
//!   `/.well-known/oauth-authorization-server{issuer path}` (RFC 8414, where
//!   the MCP SDKs look first). The issuer has a path, as Keycloak's do:
//!   `http://127.0.0.1:PORT/realms/bastion`.
//! - `{issuer}/jwks`: an RSA key (RS256) and a P-256 key (ES256), generated
//!   at start, each with its `kid`; fetches are counted, and the endpoint
//!   can be made to fail.
//! - `{issuer}/register`: dynamic client registration (RFC 7591), public
//!   clients (`none`) and clients with a secret (`client_secret_post`,
//!   `client_secret_basic`).
//! - `{issuer}/authorize`: the authorization code flow with PKCE, S256
//!   required. There is no login page: it logs in the user set in advance
//!   with [`Idp::log_in_as`], and redirects to the registered
//!   `redirect_uri` with `code`, `state` and `iss` (RFC 9207).
//! - `{issuer}/token`: checks the code (single use, 60 s), the client, the
//!   redirect URI and the PKCE verifier; the RFC 8707 `resource` becomes the
//!   token's `aud`. Issues a signed JWT access token with `iss`, `sub`,
//!   `aud`, `exp`, `iat`, `nbf`, `jti`, `client_id`, `scope` and the
//!   user's `role` and `groups` when set.
//! - [`Idp::mint`]: any header and claims, signed by any [`Signer`]: the
//!   provider's keys, a foreign key, HMAC with any secret, or nothing
//!   (`alg: none`), for the attack tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The path of the issuer on the provider's origin.
const REALM: &str = "/realms/bastion";
/// Scopes the provider knows.
pub const SCOPES: [&str; 4] = ["openid", "profile", "mcp:tools", "mcp:admin"];

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
}

/// A signing key pair with its public JWK.
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    pub jwk: Value,
    /// The public key, PEM (SubjectPublicKeyInfo), as a server would
    /// publish it: the "secret" of the HS256 confusion attack.
    pub public_pem: String,
}

impl SigningKey {
    /// A new key pair: RSA 2048 for `RS*`/`PS*`, P-256 for `ES256`,
    /// Ed25519 for `EdDSA`.
    pub fn generate(alg: Algorithm, kid: &str) -> SigningKey {
        let rc_alg = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => panic!("not an asymmetric algorithm: {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rc_alg).expect("generate a key pair");
        let raw = pair.public_key_raw().to_vec();
        let (encoding, mut jwk) = match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                let n = (raw.len() - 1) / 2;
                let jwk = json!({
                    "kty": "EC",
                    "crv": if n == 32 { "P-256" } else { "P-384" },
                    "x": URL_SAFE_NO_PAD.encode(&raw[1..1 + n]),
                    "y": URL_SAFE_NO_PAD.encode(&raw[1 + n..]),
                });
                (EncodingKey::from_ec_der(&pair.serialize_der()), jwk)
            }
            Algorithm::EdDSA => (
                EncodingKey::from_ed_der(&pair.serialize_der()),
                json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&raw)}),
            ),
            _ => {
                let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("RSA key");
                let jwk = serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).expect("RSA JWK")).expect("JWK");
                (encoding, jwk)
            }
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(alg_name(alg));
        SigningKey { alg, kid: kid.into(), encoding, jwk, public_pem: pair.public_key_pem() }
    }

    /// A signature of `message` with this key and its algorithm, base64url.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        jsonwebtoken::crypto::sign(message, &self.encoding, self.alg).expect("sign")
    }
}

/// The claims of a token, unverified.
pub fn claims_of(token: &str) -> Value {
    part_of(token, 1)
}

/// The header of a token, unverified.
pub fn header_of(token: &str) -> Value {
    part_of(token, 0)
}

fn part_of(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

pub fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

/// How a minted token is signed.
pub enum Signer<'a> {
    /// With a key, by its own algorithm (whatever the header says).
    Key(&'a SigningKey),
    /// HMAC-SHA256 with this secret.
    Hs256(&'a [u8]),
    /// No signature at all (the third part empty).
    Nothing,
}

/// A token: base64url of the header and claims, and the signature over them.
pub fn mint(header: &Value, claims: &Value, signer: Signer<'_>) -> String {
    let message =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = match signer {
        Signer::Key(k) => k.sign_bytes(message.as_bytes()),
        Signer::Hs256(secret) => {
            jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(secret), Algorithm::HS256)
                .expect("HMAC")
        }
        Signer::Nothing => String::new(),
    };
    format!("{message}.{signature}")
}

/// Who `/authorize` logs in.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub role: Option<String>,
    pub groups: Option<Vec<String>>,
}

struct Client {
    redirect_uris: Vec<String>,
    secret: Option<String>,
    auth_method: String,
}

struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    resource: Option<String>,
    scope: String,
    login: Login,
    expires: i64,
}

struct Inner {
    issuer: String,
    rsa: SigningKey,
    ec: SigningKey,
    /// Which key signs the access tokens `/token` issues.
    sign_with_ec: AtomicBool,
    /// Keys published beside the two (rotation).
    extra: Mutex<Vec<Value>>,
    clients: Mutex<HashMap<String, Client>>,
    codes: Mutex<HashMap<String, Grant>>,
    login: Mutex<Option<Login>>,
    lifetime: AtomicU64,
    jwks_down: AtomicBool,
    jwks_fetches: AtomicU64,
    registrations: AtomicU64,
    tokens_issued: AtomicU64,
    /// Every access token `/token` issued.
    issued: Mutex<Vec<String>>,
}

/// A running provider; stops when dropped.
pub struct Idp {
    /// `http://127.0.0.1:PORT/realms/bastion`.
    pub issuer: String,
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Idp {
    /// Starts a provider on a free loopback port, on a thread of its own
    /// (so it outlives any one test's runtime).
    pub fn start() -> Idp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the identity provider");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let port = listener.local_addr().expect("local_addr").port();
        let issuer = format!("http://127.0.0.1:{port}{REALM}");
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            rsa: SigningKey::generate(Algorithm::RS256, "idp-rsa-1"),
            ec: SigningKey::generate(Algorithm::ES256, "idp-ec-1"),
            sign_with_ec: AtomicBool::new(false),
            extra: Mutex::new(Vec::new()),
            clients: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
            login: Mutex::new(None),
            lifetime: AtomicU64::new(300),
            jwks_down: AtomicBool::new(false),
            jwks_fetches: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
            tokens_issued: AtomicU64::new(0),
            issued: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route(&format!("{REALM}/.well-known/openid-configuration"), get(metadata))
            .route(&format!("/.well-known/oauth-authorization-server{REALM}"), get(metadata))
            .route(&format!("{REALM}/jwks"), get(jwks))
            .route(&format!("{REALM}/register"), post(register))
            .route(&format!("{REALM}/authorize"), get(authorize))
            .route(&format!("{REALM}/token"), post(token))
            .with_state(inner.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("test-idp-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("idp runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .expect("spawn the identity provider thread");
        Idp { issuer, inner, stop: Some(stop_tx) }
    }

    /// The user `/authorize` logs in from now on.
    pub fn log_in_as(&self, login: Login) {
        *self.inner.login.lock().expect("poisoned") = Some(login);
    }

    /// Issued access tokens are signed with the EC key (ES256) instead of
    /// the RSA key.
    pub fn sign_with_ec(&self, ec: bool) {
        self.inner.sign_with_ec.store(ec, Ordering::SeqCst);
    }

    /// The JWKS endpoint answers 503 while `down`.
    pub fn set_jwks_down(&self, down: bool) {
        self.inner.jwks_down.store(down, Ordering::SeqCst);
    }

    /// Publishes one more key (as after a rotation).
    pub fn publish(&self, key: &SigningKey) {
        self.inner.extra.lock().expect("poisoned").push(key.jwk.clone());
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn registrations(&self) -> u64 {
        self.inner.registrations.load(Ordering::SeqCst)
    }

    pub fn tokens_issued(&self) -> u64 {
        self.inner.tokens_issued.load(Ordering::SeqCst)
    }

    /// Every access token `/token` issued, in order.
    pub fn issued(&self) -> Vec<String> {
        self.inner.issued.lock().expect("poisoned").clone()
    }

    pub fn rsa(&self) -> &SigningKey {
        &self.inner.rsa
    }

    pub fn ec(&self) -> &SigningKey {
        &self.inner.ec
    }

    /// Claims of a valid access token for `user` and `aud`, valid for 5
    /// minutes.
    pub fn claims(&self, user: &str, aud: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "sub": user,
            "aud": aud,
            "iat": now,
            "nbf": now - 1,
            "exp": now + 300,
            "jti": random_id(),
            "scope": "openid mcp:tools",
            "client_id": "test-client",
        })
    }

    /// The header the provider's `key` signs with.
    pub fn header(key: &SigningKey) -> Value {
        json!({"alg": alg_name(key.alg), "typ": "at+jwt", "kid": key.kid})
    }

    /// A token signed by the provider's RSA key with these claims.
    pub fn sign(&self, claims: &Value) -> String {
        mint(&Idp::header(&self.inner.rsa), claims, Signer::Key(&self.inner.rsa))
    }

    /// A valid RS256 access token for `user` and `aud`.
    pub fn token_for(&self, user: &str, aud: &str) -> String {
        self.sign(&self.claims(user, aud))
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({"error": error, "error_description": description}))).into_response()
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CACHE_CONTROL, "no-store".parse().expect("header value"));
    resp
}

async fn metadata(State(idp): State<Arc<Inner>>) -> Response {
    let i = &idp.issuer;
    axum::Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "registration_endpoint": format!("{i}/register"),
        "jwks_uri": format!("{i}/jwks"),
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

async fn jwks(State(idp): State<Arc<Inner>>) -> Response {
    idp.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if idp.jwks_down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "the key service is down").into_response();
    }
    let mut keys = vec![idp.rsa.jwk.clone(), idp.ec.jwk.clone()];
    keys.extend(idp.extra.lock().expect("poisoned").iter().cloned());
    axum::Json(json!({ "keys": keys })).into_response()
}

async fn register(State(idp): State<Arc<Inner>>, body: Bytes) -> Response {
    let Ok(Value::Object(meta)) = serde_json::from_slice::<Value>(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", "the body is not a JSON object");
    };
    let redirect_uris: Vec<String> = match meta.get("redirect_uris").and_then(Value::as_array) {
        Some(list) if !list.is_empty() && list.iter().all(Value::is_string) => {
            list.iter().filter_map(Value::as_str).map(String::from).collect()
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", "redirect_uris is required"),
    };
    if redirect_uris.iter().any(|u| !(u.starts_with("http://127.0.0.1") || u.starts_with("http://localhost"))) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", "loopback redirect URIs only");
    }
    let auth_method = meta.get("token_endpoint_auth_method").and_then(Value::as_str).unwrap_or("none").to_string();
    let secret = match auth_method.as_str() {
        "none" => None,
        "client_secret_post" | "client_secret_basic" => Some(random_id()),
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                "unsupported token_endpoint_auth_method",
            );
        }
    };
    let client_id = random_id();
    idp.registrations.fetch_add(1, Ordering::SeqCst);
    let mut answer = json!({
        "client_id": client_id,
        "client_id_issued_at": now(),
        "redirect_uris": redirect_uris,
        "token_endpoint_auth_method": auth_method,
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    });
    for field in ["client_name", "scope"] {
        if let Some(v) = meta.get(field) {
            answer[field] = v.clone();
        }
    }
    if let Some(s) = &secret {
        answer["client_secret"] = json!(s);
        answer["client_secret_expires_at"] = json!(0);
    }
    idp.clients.lock().expect("poisoned").insert(client_id, Client { redirect_uris, secret, auth_method });
    no_store((StatusCode::CREATED, axum::Json(answer)).into_response())
}

async fn authorize(State(idp): State<Arc<Inner>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let param = |k: &str| q.get(k).map(String::as_str);
    // Errors about the client or its redirect URI are never redirected.
    let Some(client_id) = param("client_id") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "client_id is required");
    };
    let redirect_uri = {
        let clients = idp.clients.lock().expect("poisoned");
        let Some(client) = clients.get(client_id) else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "unknown client");
        };
        match param("redirect_uri") {
            Some(r) if client.redirect_uris.iter().any(|u| u == r) => r.to_string(),
            None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            _ => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is not registered"),
        }
    };
    let state = param("state").map(String::from);
    let back = |params: &[(&str, &str)]| -> Response {
        let mut all: Vec<(&str, &str)> = params.to_vec();
        if let Some(s) = &state {
            all.push(("state", s));
        }
        all.push(("iss", &idp.issuer));
        let query: Vec<String> = all.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let sep = if redirect_uri.contains('?') { '&' } else { '?' };
        let location = format!("{redirect_uri}{sep}{}", query.join("&"));
        (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
    };
    if param("response_type") != Some("code") {
        return back(&[("error", "unsupported_response_type")]);
    }
    let challenge = match (param("code_challenge"), param("code_challenge_method")) {
        (Some(c), Some("S256")) if c.len() == 43 && URL_SAFE_NO_PAD.decode(c).is_ok() => c.to_string(),
        _ => return back(&[("error", "invalid_request"), ("error_description", "PKCE with S256 is required")]),
    };
    let scope = param("scope").unwrap_or("openid");
    if scope.split(' ').any(|s| !SCOPES.contains(&s)) {
        return back(&[("error", "invalid_scope")]);
    }
    let Some(login) = idp.login.lock().expect("poisoned").clone() else {
        return back(&[("error", "login_required")]);
    };
    let code = random_id();
    idp.codes.lock().expect("poisoned").insert(
        code.clone(),
        Grant {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.clone(),
            challenge,
            resource: param("resource").map(String::from),
            scope: scope.to_string(),
            login,
            expires: now() + 60,
        },
    );
    back(&[("code", &code)])
}

/// Percent-encoding of a query parameter value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An `application/x-www-form-urlencoded` body.
fn form(body: &[u8]) -> Option<HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    let uri: Uri = format!("/?{text}").parse().ok()?;
    Query::<HashMap<String, String>>::try_from_uri(&uri).ok().map(|q| q.0)
}

async fn token(State(idp): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(f) = form(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "not a form");
    };
    let param = |k: &str| f.get(k).map(String::as_str);
    if param("grant_type") != Some("authorization_code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "authorization_code only");
    }
    // Client authentication: HTTP Basic, or the form's client_id (and
    // client_secret).
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(i, p)| (i.to_string(), p.to_string())));
    let (client_id, secret) = match (&basic, param("client_id")) {
        (Some((id, secret)), _) => (id.clone(), Some(secret.clone())),
        (None, Some(id)) => (id.to_string(), param("client_secret").map(String::from)),
        (None, None) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "no client"),
    };
    {
        let clients = idp.clients.lock().expect("poisoned");
        let Some(client) = clients.get(&client_id) else {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
        };
        let authenticated = match (&client.secret, &secret) {
            (None, _) => client.auth_method == "none",
            (Some(expected), Some(given)) => expected == given,
            (Some(_), None) => false,
        };
        if !authenticated {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed");
        }
    }
    let Some(code) = param("code") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "code is required");
    };
    // A code is used once, whatever happens next.
    let Some(grant) = idp.codes.lock().expect("poisoned").remove(code) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown or used code");
    };
    if grant.expires < now() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the code has expired");
    }
    if grant.client_id != client_id {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the code was issued to another client");
    }
    if param("redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri differs");
    }
    let Some(verifier) = param("code_verifier") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "code_verifier is required");
    };
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed || URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != grant.challenge {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "PKCE verification failed");
    }
    // RFC 8707: the resource of the token request must be one the
    // authorization request named; it becomes the audience.
    let resource = match (param("resource"), &grant.resource) {
        (Some(r), Some(g)) if r == g => r.to_string(),
        (Some(_), Some(_)) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_target", "another resource"),
        (Some(r), None) => r.to_string(),
        (None, Some(g)) => g.clone(),
        (None, None) => client_id.clone(),
    };
    let lifetime = idp.lifetime.load(Ordering::SeqCst) as i64;
    let now = now();
    let mut claims = json!({
        "iss": idp.issuer,
        "sub": grant.login.user,
        "aud": resource,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": random_id(),
        "client_id": client_id,
        "scope": grant.scope,
    });
    if let Some(role) = &grant.login.role {
        claims["role"] = json!(role);
    }
    if let Some(groups) = &grant.login.groups {
        claims["groups"] = json!(groups);
    }
    let key = if idp.sign_with_ec.load(Ordering::SeqCst) { &idp.ec } else { &idp.rsa };
    let access_token = mint(&Idp::header(key), &claims, Signer::Key(key));
    idp.tokens_issued.fetch_add(1, Ordering::SeqCst);
    idp.issued.lock().expect("poisoned").push(access_token.clone());
    no_store(
        axum::Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": grant.scope,
        }))
        .into_response(),
    )
}
