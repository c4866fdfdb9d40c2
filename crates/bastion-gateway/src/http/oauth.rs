//! OAuth 2.0 Protected Resource Metadata (RFC 9728) and the
//! `WWW-Authenticate` challenges that point clients at it.
//!
//! The metadata is served when `auth.resource` and at least one issuer of
//! `auth.oidc` are configured: at `/.well-known/oauth-protected-resource`
//! and at that path followed by an MCP endpoint's path (`/mcp`,
//! `/mcp/{name}`, or the path of `auth.resource` and below it, for a
//! gateway published under a path prefix). Every form names the same
//! resource, `auth.resource`: the one audience tokens must carry, a prefix
//! of every MCP endpoint's URL. Other suffixes get 404. Whether a server or
//! group of a given name exists is not revealed: any valid name is served.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use bastion_core::config::AuthConfig;
use bastion_core::naming::is_valid_server_name;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::json_response;
use crate::auth::AuthError;
use crate::gateway::Gateway;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata document, at the root and at its path-suffixed forms.
pub(super) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route(WELL_KNOWN, get(metadata_at_root))
        .route(&format!("{WELL_KNOWN}/{{*rest}}"), get(metadata_at_path))
}

async fn metadata_at_root(State(gw): State<Arc<Gateway>>) -> Response {
    respond(document(&gw.runtime().config.auth))
}

async fn metadata_at_path(State(gw): State<Arc<Gateway>>, Path(rest): Path<String>) -> Response {
    let rt = gw.runtime();
    let auth = &rt.config.auth;
    if !is_endpoint_path(auth, &rest) {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    }
    respond(document(auth))
}

fn respond(doc: Option<Value>) -> Response {
    match doc {
        Some(doc) => {
            let mut resp = json_response(StatusCode::OK, &doc);
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
            resp
        }
        None => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
    }
}

/// Whether a path suffix of the metadata names an MCP endpoint: `mcp`,
/// `mcp/{name}`, or the resource's own path and one name below it.
fn is_endpoint_path(auth: &AuthConfig, rest: &str) -> bool {
    let rest = rest.trim_end_matches('/');
    let resource_path = auth.resource.as_deref().and_then(path_of).unwrap_or("").trim_matches('/');
    let mut bases = vec!["mcp"];
    if !resource_path.is_empty() && resource_path != "mcp" {
        bases.push(resource_path);
    }
    bases.iter().any(|base| match rest.strip_prefix(base) {
        Some("") => true,
        Some(tail) => tail.strip_prefix('/').is_some_and(is_valid_server_name),
        None => false,
    })
}

/// The path of an absolute URL (`/` when it has none), without query.
fn path_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// The metadata, when there is any to serve: a resource and at least one
/// authorization server.
fn document(auth: &AuthConfig) -> Option<Value> {
    let resource = auth.resource.as_deref()?;
    if auth.oidc.is_empty() {
        return None;
    }
    let servers: Vec<&str> = auth.oidc.iter().map(|o| o.issuer.as_str()).collect();
    let mut doc = json!({
        "resource": resource,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "Bastion MCP gateway",
    });
    let scopes = required_scopes(auth);
    if !scopes.is_empty() {
        doc["scopes_supported"] = json!(scopes);
    }
    Some(doc)
}

/// The scopes the issuers require, each a valid scope token (RFC 6749,
/// section 3.3), without repeats.
fn required_scopes(auth: &AuthConfig) -> Vec<&str> {
    let mut scopes: Vec<&str> = Vec::new();
    for s in auth.oidc.iter().flat_map(|o| o.scopes.iter()) {
        if is_scope_token(s) && !scopes.contains(&s.as_str()) {
            scopes.push(s);
        }
    }
    scopes
}

fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Where the metadata of `resource` is: the well-known path inserted
/// between the host and the resource's path (RFC 9728, section 3.1).
pub(crate) fn metadata_url(resource: &str) -> Option<String> {
    let (scheme, rest) = resource.split_once("://")?;
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (host, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let path = path.trim_end_matches('/');
    Some(format!("{scheme}://{host}{WELL_KNOWN}{path}"))
}

/// Text fit for a quoted-string of a header: printable ASCII, without `"`
/// and `\`.
fn quotable(s: &str) -> String {
    s.chars().filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\').collect()
}

/// The `WWW-Authenticate` value for a failed authentication: the metadata
/// (when it is served), the error (RFC 6750) and the scopes required.
pub(super) fn challenge(gw: &Gateway, e: &AuthError) -> Option<HeaderValue> {
    let rt = gw.runtime();
    let auth = &rt.config.auth;
    let mut c = String::from("Bearer realm=\"bastion\"");
    if document(auth).is_some()
        && let Some(url) = auth.resource.as_deref().and_then(metadata_url)
    {
        c.push_str(&format!(", resource_metadata=\"{}\"", quotable(&url)));
    }
    if let Some(err) = e.challenge_error() {
        c.push_str(&format!(", error=\"{err}\", error_description=\"{}\"", quotable(&e.to_string())));
    }
    let scope = match e {
        AuthError::InsufficientScope { scope } => {
            scope.split_whitespace().filter(|s| is_scope_token(s)).collect::<Vec<_>>().join(" ")
        }
        _ => required_scopes(auth).join(" "),
    };
    if !scope.is_empty() {
        c.push_str(&format!(", scope=\"{scope}\""));
    }
    HeaderValue::from_str(&c).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(v: Value) -> AuthConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn metadata_urls_insert_the_well_known_path() {
        assert_eq!(
            metadata_url("https://gw.example.com/mcp").as_deref(),
            Some("https://gw.example.com/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(
            metadata_url("https://gw.example.com").as_deref(),
            Some("https://gw.example.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(
            metadata_url("https://gw.example.com/").as_deref(),
            Some("https://gw.example.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080/team/mcp").as_deref(),
            Some("http://127.0.0.1:8080/.well-known/oauth-protected-resource/team/mcp")
        );
    }

    #[test]
    fn metadata_is_served_at_mcp_endpoint_paths_only() {
        let a = auth(
            json!({"resource": "https://gw.example.com/team/mcp", "oidc": [{"issuer": "https://idp.example.com"}]}),
        );
        for ok in ["mcp", "mcp/", "mcp/github", "mcp/eng-tools", "team/mcp", "team/mcp/github"] {
            assert!(is_endpoint_path(&a, ok), "{ok}");
        }
        for bad in ["", "sse", "mcpx", "mcp/a/b", "mcp/_x", "mcp/a__b", "mcp/a+b", "team", "team/mcpx", "healthz"] {
            assert!(!is_endpoint_path(&a, bad), "{bad}");
        }
    }

    #[test]
    fn the_document_names_the_resource_issuers_and_scopes() {
        let a = auth(json!({
            "resource": "https://gw.example.com/mcp",
            "oidc": [
                {"issuer": "https://idp.example.com/realms/a", "scopes": ["mcp:tools", "bad\"scope"], "algorithms": ["RS256", "ES256"]},
                {"issuer": "https://login.example.org/v2.0", "scopes": ["mcp:tools", "openid"]}
            ]
        }));
        let doc = document(&a).unwrap();
        assert_eq!(doc["resource"], "https://gw.example.com/mcp");
        assert_eq!(
            doc["authorization_servers"],
            json!(["https://idp.example.com/realms/a", "https://login.example.org/v2.0"])
        );
        assert_eq!(doc["scopes_supported"], json!(["mcp:tools", "openid"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        // Without an issuer there is nothing to discover.
        assert_eq!(document(&auth(json!({"resource": "https://gw.example.com/mcp"}))), None);
        assert_eq!(document(&auth(json!({}))), None);
        // No scopes required: none advertised.
        let plain =
            auth(json!({"resource": "https://gw.example.com/mcp", "oidc": [{"issuer": "https://idp.example.com"}]}));
        assert!(document(&plain).unwrap().get("scopes_supported").is_none());
    }

    #[test]
    fn quoted_values_stay_within_their_quotes() {
        assert_eq!(quotable("a \"b\" \\c\nd é"), "a b cd ");
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token("a b"));
        assert!(is_scope_token("mcp:tools"));
    }
}
