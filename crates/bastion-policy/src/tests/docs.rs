//! `docs/policy-schema.md` says what the engine does: its schema, its
//! built-in policies, and its examples, which load and decide as told.

use serde_json::json;

use super::{NOW, groups};
use crate::*;

const DOC: &str = include_str!("../../../../docs/policy-schema.md");

/// The fenced blocks of a language.
fn blocks(lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = DOC;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let Some(end) = body.find("```") else { break };
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

#[test]
fn the_schema_and_the_builtin_policies_are_the_engines() {
    let schemas = blocks("cedarschema");
    assert_eq!(schemas[0].trim_end(), Engine::base_schema_text().trim_end());
    let cedar = blocks("cedar");
    assert_eq!(cedar[0].trim_end(), BUILTIN_POLICIES.trim_end());
}

#[test]
fn every_example_loads() {
    for block in blocks("cedar") {
        if let Err(e) = Engine::from_sources(&[("policies.cedar", &block)]) {
            panic!("{e}\n{block}");
        }
    }
}

#[test]
fn the_examples_do_what_they_say() {
    let cedar = blocks("cedar");
    let examples = cedar.iter().find(|b| b.contains("fs-writes-in-tmp") && b.contains("vault")).unwrap();
    let e = Engine::from_sources(&[("policies.cedar", examples)]).unwrap();
    // the Arguments shown
    let schemas = blocks("cedarschema");
    assert!(e.schema_text().contains(schemas[1].trim()), "{}", e.schema_text());

    let t = Topology::new([("dev", vec!["fs", "time", "legacy", "vault"]), ("ops", vec!["db"])]);
    let dev = groups(&["dev"]);
    let alice = Subject { user: "alice", role: Some(Role::User), groups: &dev };
    let call = |who: &Subject, server, name, args: serde_json::Value, now| {
        e.decide(&t, who, Action::Call, &Target { kind: Kind::Tool, server, name }, Some(&args), now)
    };
    // 1
    let write = Target { kind: Kind::Tool, server: "fs", name: "write_file" };
    assert!(call(&alice, "fs", "write_file", json!({"path": "/tmp/x"}), NOW).allowed);
    for args in [json!({}), json!({"path": 5}), json!({"path": "/etc/passwd"})] {
        let d = call(&alice, "fs", "write_file", args, NOW);
        assert_eq!(d.to_string().split(" [").next(), Some("deny (policies.cedar:fs-writes-in-tmp)"));
    }
    let d = call(&alice, "fs", "write_file", json!({"path": 5}), NOW);
    assert_eq!(
        d.to_string(),
        "deny (policies.cedar:fs-writes-in-tmp) [left out: context.arguments.path: expected a string, got an integer]"
    );
    assert!(!e.visible(&t, &alice, &write, NOW));
    // 2
    let none: Vec<String> = vec![];
    let bob = Subject { user: "bob", role: None, groups: &none };
    let d = call(&bob, "time", "now", json!({}), NOW);
    assert_eq!(d.to_string(), "allow (policies.cedar:bob-time)");
    assert!(e.visible(&t, &bob, &Target { kind: Kind::Prompt, server: "time", name: "p" }, NOW));
    assert!(!call(&bob, "fs", "read_file", json!({}), NOW).allowed);
    // 3
    let root = Subject { user: "root", role: Some(Role::Admin), groups: &none };
    assert!(call(&root, "legacy", "x", json!({}), 1_899_999_999).allowed);
    assert!(!call(&root, "legacy", "x", json!({}), 1_900_000_000).allowed);
    assert!(!e.visible(&t, &alice, &Target { kind: Kind::Tool, server: "legacy", name: "x" }, 1_900_000_000));
    // 4
    let oncall = groups(&["oncall"]);
    for role in [None, Some(Role::User), Some(Role::Manager), Some(Role::Viewer)] {
        let o = Subject { user: "o", role, groups: &oncall };
        let q = Target { kind: Kind::Tool, server: "db", name: "inspect" };
        assert!(e.visible(&t, &o, &q, NOW), "{role:?}");
        assert_eq!(call(&o, "db", "inspect", json!({}), NOW).allowed, role != Some(Role::Viewer), "{role:?}");
        let r = Target { kind: Kind::Resource, server: "db", name: "db://t" };
        assert!(!e.decide(&t, &o, Action::Read, &r, None, NOW).allowed);
    }
    // 5
    let ops = groups(&["ops"]);
    let u = Subject { user: "u", role: Some(Role::User), groups: &ops };
    assert!(call(&u, "db", "query", json!({"limit": 10, "table": "users"}), NOW).allowed);
    for args in [
        json!({"limit": 10.0, "table": "users"}),
        json!({"limit": "10", "table": "users"}),
        json!({"limit": 500, "table": "users"}),
        json!({"limit": 10, "table": "secrets"}),
    ] {
        assert!(!call(&u, "db", "query", args, NOW).allowed);
    }
    // 6
    let secret = Target { kind: Kind::Resource, server: "vault", name: "vault://db/password" };
    assert!(!e.visible(&t, &alice, &secret, NOW));
    assert!(!e.decide(&t, &alice, Action::Read, &secret, None, NOW).allowed);
    assert!(e.visible(&t, &root, &secret, NOW));
    assert!(e.decide(&t, &root, Action::Read, &secret, None, NOW).allowed);
}

#[test]
fn the_decision_lines_shown_are_the_engines() {
    let lines = blocks("text");
    let shown = lines.iter().find(|b| b.starts_with("allow (builtin.member)")).unwrap();
    let e = Engine::from_sources(&[(
        "extra.cedar",
        r#"@id("no-secrets")
forbid (principal, action, resource in Bastion::Server::"vault");
"#,
    )])
    .unwrap();
    let t = Topology::new([("dev", vec!["time", "vault"])]);
    let dev = groups(&["dev"]);
    let alice = Subject { user: "alice", role: Some(Role::User), groups: &dev };
    let d = e.decide(&t, &alice, Action::Call, &Target { kind: Kind::Tool, server: "time", name: "now" }, None, NOW);
    assert!(shown.contains(&d.to_string()));
    let d = e.decide(&t, &alice, Action::Call, &Target { kind: Kind::Tool, server: "vault", name: "x" }, None, NOW);
    assert!(shown.contains(&d.to_string()), "{d}");
    let d = e.decide(&t, &alice, Action::Call, &Target { kind: Kind::Prompt, server: "time", name: "p" }, None, NOW);
    assert!(shown.contains(&d.to_string()), "{d}");
    let d = e.decide(&t, &alice, Action::Call, &Target { kind: Kind::Tool, server: "other", name: "p" }, None, NOW);
    assert!(shown.contains(&d.to_string()), "{d}");
}
