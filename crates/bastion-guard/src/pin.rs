//! Tool pinning: what a definition's hash is, and what a definition seen
//! now makes of an item given its pin.
//!
//! # The hashed definition
//!
//! The whole item as its server lists it — name, title, description, input
//! and output schemas, annotations, icons, and any field a later protocol
//! version adds — except the top-level `_meta`, which servers use for
//! volatile data (timestamps, request ids) that the model does not read as
//! the tool's contract. Objects are written with their keys sorted and no
//! whitespace, so that a server reordering keys or reformatting does not
//! change the hash; any change of a value (a word, a schema type, an
//! annotation) does. Numbers keep their JSON form (`1` and `1.0` differ).
//!
//! # States
//!
//! - `pinned`: the definition seen is the approved one; served.
//! - `pending`: never approved (`manual` pinning); not served.
//! - `quarantined`: the definition changed since it was approved, or it is
//!   poisoned and the server's action is `quarantine`; not served.
//! - `rejected`: an operator refused the definition seen; not served.
//!
//! Only `pinned` is served. Held items stay held until an operator
//! approves (or a new definition is seen, which is held for review again);
//! a server going back to the approved definition does not release them.

use std::fmt;
use std::str::FromStr;

use bastion_core::config::Pinning;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Who approved a definition seen on first sight, in a pin's `approved_by`.
pub const AUTO: &str = "auto";

/// What a pin makes of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinState {
    Pinned,
    Pending,
    Quarantined,
    Rejected,
}

impl PinState {
    pub fn as_str(self) -> &'static str {
        match self {
            PinState::Pinned => "pinned",
            PinState::Pending => "pending",
            PinState::Quarantined => "quarantined",
            PinState::Rejected => "rejected",
        }
    }
}

impl fmt::Display for PinState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PinState {
    type Err = String;
    fn from_str(s: &str) -> Result<PinState, String> {
        match s {
            "pinned" => Ok(PinState::Pinned),
            "pending" => Ok(PinState::Pending),
            "quarantined" => Ok(PinState::Quarantined),
            "rejected" => Ok(PinState::Rejected),
            _ => Err(format!("unknown pin state {s:?}")),
        }
    }
}

/// The canonical text of a definition: `_meta` left out at the top, keys
/// sorted, no whitespace.
pub fn canonical(item: &Value) -> String {
    let mut out = String::new();
    match item {
        Value::Object(map) => {
            write_object(map.iter().filter(|(k, _)| k.as_str() != "_meta"), &mut out);
        }
        other => write_value(other, &mut out),
    }
    out
}

/// The SHA-256 (hex) of a definition's canonical text.
pub fn definition_hash(item: &Value) -> String {
    hash_canonical(&canonical(item))
}

/// The SHA-256 (hex) of a canonical text.
pub fn hash_canonical(canonical: &str) -> String {
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn write_object<'a>(entries: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut String) {
    let mut entries: Vec<(&String, &Value)> = entries.collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_value(&Value::String(k.clone()), out);
        out.push(':');
        write_value(v, out);
    }
    out.push('}');
}

fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => write_object(map.iter(), out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        // Scalars as serde_json writes them (strings escaped the same way
        // whatever the input's escapes were).
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// An item's pin as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinView<'a> {
    pub state: PinState,
    pub approved_hash: Option<&'a str>,
    /// Approved by an operator (not on first sight).
    pub by_operator: bool,
    pub seen_hash: &'a str,
}

/// What is to be done with an item seen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the item is listed and may be used.
    pub serve: bool,
    /// The pin to write, if it changes: its state, the reason, and whether
    /// the definition seen is approved by first sight (`auto`).
    pub write: Option<Write>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub state: PinState,
    pub reason: Option<String>,
    pub approve_auto: bool,
}

/// Decides on an item whose definition hashes to `seen`, given its pin
/// (`None`: never seen), whether it is poisoned with the server's action
/// `quarantine` (`poisoning` names what was found), and the server's
/// pinning mode.
pub fn decide(pin: Option<&PinView<'_>>, seen: &str, poisoning: Option<&str>, mode: Pinning) -> Decision {
    let hold = |state: PinState, reason: String| Decision {
        serve: false,
        write: Some(Write { state, reason: Some(reason), approve_auto: false }),
    };
    let keep = |serve: bool| Decision { serve, write: None };
    if mode == Pinning::Off {
        return keep(poisoning.is_none());
    }
    let Some(pin) = pin else {
        return match (mode, poisoning) {
            (Pinning::Manual, _) => hold(PinState::Pending, "new: waiting for approval".into()),
            (_, Some(p)) => hold(PinState::Quarantined, format!("poisoning: {p}")),
            _ => Decision {
                serve: true,
                write: Some(Write { state: PinState::Pinned, reason: None, approve_auto: true }),
            },
        };
    };
    let same_seen = pin.seen_hash == seen;
    match pin.state {
        PinState::Pinned if pin.approved_hash == Some(seen) => match poisoning {
            Some(p) if !pin.by_operator => hold(PinState::Quarantined, format!("poisoning: {p}")),
            _ => keep(true),
        },
        PinState::Pinned => hold(PinState::Quarantined, "changed since it was approved".into()),
        // The definition refused is still the one listed.
        PinState::Rejected if same_seen => keep(false),
        PinState::Rejected => hold(PinState::Quarantined, "changed since it was rejected".into()),
        PinState::Pending | PinState::Quarantined if same_seen => keep(false),
        // Held, and changed again: the newest definition is the one to review.
        state @ (PinState::Pending | PinState::Quarantined) => {
            Decision { serve: false, write: Some(Write { state, reason: None, approve_auto: false }) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_hash_ignores_key_order_whitespace_and_meta() {
        let a: Value = serde_json::from_str(
            r#"{"name":"read","description":"Reads a file","inputSchema":{"type":"object","properties":{"path":{"type":"string"}}}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "inputSchema" : { "properties": {"path": {"type": "string"}}, "type": "object" },
                 "description": "Reads a file", "name": "read", "_meta": {"at": 12} }"#,
        )
        .unwrap();
        assert_eq!(definition_hash(&a), definition_hash(&b));
        assert_eq!(
            canonical(&b),
            r#"{"description":"Reads a file","inputSchema":{"properties":{"path":{"type":"string"}},"type":"object"},"name":"read"}"#
        );
        // Any change of a value counts, nested `_meta` included.
        for changed in [
            json!({"name":"read","description":"Reads a file.","inputSchema":a["inputSchema"]}),
            json!({"name":"read","description":"Reads a file","inputSchema":{"type":"object","properties":{"path":{"type":"integer"}}}}),
            json!({"name":"read","description":"Reads a file","inputSchema":a["inputSchema"],"annotations":{"readOnlyHint":true}}),
            json!({"name":"read","description":"Reads a file","inputSchema":{"type":"object","_meta":1,"properties":{"path":{"type":"string"}}}}),
        ] {
            assert_ne!(definition_hash(&a), definition_hash(&changed), "{changed}");
        }
        // Escapes are normalised: the same string written two ways.
        let e1: Value = serde_json::from_str(r#"{"d":"\u0041"}"#).unwrap();
        let e2: Value = serde_json::from_str(r#"{"d":"A"}"#).unwrap();
        assert_eq!(definition_hash(&e1), definition_hash(&e2));
    }

    fn view(
        state: PinState,
        approved: Option<&'static str>,
        by_operator: bool,
        seen: &'static str,
    ) -> PinView<'static> {
        PinView { state, approved_hash: approved, by_operator, seen_hash: seen }
    }

    #[test]
    fn first_sight_depends_on_the_mode() {
        let d = decide(None, "a", None, Pinning::Auto);
        assert!(d.serve && d.write.as_ref().is_some_and(|w| w.state == PinState::Pinned && w.approve_auto));
        let d = decide(None, "a", None, Pinning::Manual);
        assert!(!d.serve && d.write.is_some_and(|w| w.state == PinState::Pending));
        let d = decide(None, "a", Some("shadowing"), Pinning::Auto);
        assert!(!d.serve && d.write.is_some_and(|w| w.state == PinState::Quarantined));
        assert_eq!(decide(None, "a", None, Pinning::Off), Decision { serve: true, write: None });
        assert_eq!(decide(None, "a", Some("x"), Pinning::Off), Decision { serve: false, write: None });
    }

    #[test]
    fn a_change_quarantines_until_approved() {
        let pinned = view(PinState::Pinned, Some("a"), false, "a");
        assert_eq!(decide(Some(&pinned), "a", None, Pinning::Auto), Decision { serve: true, write: None });
        let d = decide(Some(&pinned), "b", None, Pinning::Auto);
        assert!(!d.serve && d.write.is_some_and(|w| w.state == PinState::Quarantined));
        // Held: no write while the same definition is seen; the newest one
        // is recorded when it changes again; going back does not release.
        let held = view(PinState::Quarantined, Some("a"), false, "b");
        assert_eq!(decide(Some(&held), "b", None, Pinning::Auto), Decision { serve: false, write: None });
        let d = decide(Some(&held), "c", None, Pinning::Auto);
        assert!(!d.serve && d.write.is_some_and(|w| w.state == PinState::Quarantined));
        assert!(!decide(Some(&held), "a", None, Pinning::Auto).serve);
        // Rejected stays hidden; a new definition is held for review.
        let rejected = view(PinState::Rejected, Some("a"), true, "b");
        assert_eq!(decide(Some(&rejected), "b", None, Pinning::Auto), Decision { serve: false, write: None });
        assert!(
            decide(Some(&rejected), "c", None, Pinning::Auto).write.is_some_and(|w| w.state == PinState::Quarantined)
        );
        let pending = view(PinState::Pending, None, false, "a");
        assert_eq!(decide(Some(&pending), "a", None, Pinning::Auto), Decision { serve: false, write: None });
    }

    #[test]
    fn poisoning_quarantines_unless_an_operator_approved() {
        let auto = view(PinState::Pinned, Some("a"), false, "a");
        let d = decide(Some(&auto), "a", Some("hidden_instruction"), Pinning::Auto);
        assert!(!d.serve && d.write.is_some_and(|w| w.state == PinState::Quarantined));
        let operator = view(PinState::Pinned, Some("a"), true, "a");
        assert!(decide(Some(&operator), "a", Some("hidden_instruction"), Pinning::Auto).serve);
    }
}
