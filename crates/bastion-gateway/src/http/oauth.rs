//! OAuth 2.0 Protected Resource Metadata (RFC 9728) and the
//! `WWW-Authenticate` challenges that point clients at it.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderValue, StatusCode};
use serde_json::json;

use super::json_response;
use crate::auth::AuthError;
use crate::gateway::Gateway;

/// The metadata document, at the root and at its path-suffixed forms.
pub(super) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/.well-known/oauth-protected-resource", get(metadata))
        .route("/.well-known/oauth-protected-resource/{*rest}", get(metadata))
}

async fn metadata(State(gw): State<Arc<Gateway>>) -> Response {
    let rt = gw.runtime();
    let auth = &rt.config.auth;
    let Some(resource) = &auth.resource else {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    };
    let servers: Vec<&str> = auth.oidc.iter().map(|o| o.issuer.as_str()).collect();
    let mut scopes: Vec<&str> = auth.oidc.iter().flat_map(|o| o.scopes.iter().map(String::as_str)).collect();
    scopes.sort_unstable();
    scopes.dedup();
    json_response(
        StatusCode::OK,
        &json!({
            "resource": resource,
            "authorization_servers": servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
        }),
    )
}

/// Where the metadata of `resource` is: the well-known path inserted
/// between the host and the resource's path (RFC 9728, section 3.1).
pub(crate) fn metadata_url(resource: &str) -> Option<String> {
    let (scheme, rest) = resource.split_once("://")?;
    let (host, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let path = path.trim_end_matches('/');
    Some(format!("{scheme}://{host}/.well-known/oauth-protected-resource{path}"))
}

/// The `WWW-Authenticate` value for a failed authentication.
pub(super) fn challenge(gw: &Gateway, e: &AuthError) -> Option<HeaderValue> {
    let mut c = String::from("Bearer realm=\"bastion\"");
    if let Some(url) = gw.runtime().config.auth.resource.as_deref().and_then(metadata_url) {
        c.push_str(&format!(", resource_metadata=\"{url}\""));
    }
    if let Some(err) = e.challenge_error() {
        c.push_str(&format!(", error=\"{err}\", error_description=\"{e}\""));
    }
    if let AuthError::InsufficientScope { scope } = e {
        c.push_str(&format!(", scope=\"{scope}\""));
    }
    HeaderValue::from_str(&c).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
