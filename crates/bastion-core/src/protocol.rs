//! MCP protocol versions and the two eras of the Streamable HTTP transport.

/// Versions that use the `initialize` handshake and `Mcp-Session-Id`.
pub const SESSION_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The newest session-based version: what Bastion offers when a client asks
/// for a version it does not know, and what it speaks to upstream servers.
pub const LATEST_SESSION_VERSION: &str = "2025-11-25";

/// The stateless version: no handshake, protocol version and client
/// capabilities in every request's `_meta`.
pub const STATELESS_VERSION: &str = "2026-07-28";

/// Every version Bastion serves, oldest first.
pub const ALL_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];

/// `_meta` keys of the stateless era.
pub mod meta {
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
}

/// Picks the version to answer an `initialize` with: the client's own when
/// Bastion speaks it, else the newest session-based one (the client then
/// decides whether it can continue).
pub fn negotiate_session_version(requested: Option<&str>) -> &'static str {
    requested.and_then(|r| SESSION_VERSIONS.iter().find(|v| **v == r).copied()).unwrap_or(LATEST_SESSION_VERSION)
}

/// Whether JSON-RPC batches are allowed: only 2025-03-26 had them.
pub fn allows_batches(version: &str) -> bool {
    version == "2025-03-26"
}

/// Whether a version is one of the session-based ones.
pub fn is_session_version(version: &str) -> bool {
    SESSION_VERSIONS.contains(&version)
}

/// What a client's method does, for authorization. Every method is
/// classified before it is authorized; a method Bastion does not know is
/// not classified, and is refused rather than passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodClass {
    /// Lists of tools, prompts, resources, templates: filtered per caller.
    List,
    /// `tools/call`.
    Call,
    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe`.
    Read,
    /// `prompts/get`.
    Get,
    /// A client's notification (`notifications/…`).
    Notification,
    /// The protocol's own methods (`initialize`, `ping`,
    /// `logging/setLevel`, `completion/complete` — authorized by what it
    /// completes —, `server/discover`, `subscriptions/listen`).
    Other,
}

/// The class of a client method, `None` for a method Bastion does not know.
pub fn classify(method: &str) -> Option<MethodClass> {
    Some(match method {
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => MethodClass::List,
        "tools/call" => MethodClass::Call,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => MethodClass::Read,
        "prompts/get" => MethodClass::Get,
        "initialize"
        | "ping"
        | "logging/setLevel"
        | "completion/complete"
        | "server/discover"
        | "subscriptions/listen" => MethodClass::Other,
        m if m.starts_with("notifications/") => MethodClass::Notification,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_classified_exactly() {
        assert_eq!(classify("tools/call"), Some(MethodClass::Call));
        assert_eq!(classify("resources/subscribe"), Some(MethodClass::Read));
        assert_eq!(classify("notifications/cancelled"), Some(MethodClass::Notification));
        for unknown in ["Tools/call", "tools/call ", "tools/execute", "tasks/get", "", "notifications"] {
            assert_eq!(classify(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn negotiation_keeps_known_and_replaces_unknown() {
        assert_eq!(negotiate_session_version(Some("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate_session_version(Some("1999-01-01")), LATEST_SESSION_VERSION);
        assert_eq!(negotiate_session_version(Some(STATELESS_VERSION)), LATEST_SESSION_VERSION);
        assert_eq!(negotiate_session_version(None), LATEST_SESSION_VERSION);
    }

    #[test]
    fn batches_only_in_2025_03_26() {
        assert!(allows_batches("2025-03-26"));
        assert!(!allows_batches("2025-06-18"));
        assert!(!allows_batches("2025-11-25"));
    }
}
