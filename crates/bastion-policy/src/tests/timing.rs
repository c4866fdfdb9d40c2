//! What a decision costs, with the built-in policies and 50 extra rules.
//! Not a timed assertion: run
//! `cargo test --release -p bastion-policy -- --ignored --nocapture timings`
//! to print the figures.

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;

use super::NOW;
use crate::*;

/// 50 rules of the kinds operators write: per user, per group, per server,
/// per tool, on arguments and on time.
pub(crate) fn fifty_rules() -> String {
    let mut out = String::new();
    for i in 0..10 {
        out.push_str(&format!("forbid (principal == Bastion::User::\"blocked{i}\", action, resource);\n"));
        out.push_str(&format!(
            "permit (principal in Bastion::Group::\"team{i}\", action, resource in Bastion::Server::\"srv{i}\");\n"
        ));
        out.push_str(&format!(
            "forbid (principal, action == Bastion::Action::\"call\", resource == Bastion::Tool::\"srv{i}__danger\")\n  \
             unless {{ context.arguments has path && context.arguments.path like \"/tmp/*\" }};\n"
        ));
        out.push_str(&format!(
            "forbid (principal, action, resource in Bastion::Server::\"legacy{i}\") when {{ context.now > {} }};\n",
            NOW + 1000 + i
        ));
        out.push_str(&format!(
            "forbid (principal, action == Bastion::Action::\"read\", resource) when {{ resource.uri like \"secret{i}://*\" }};\n"
        ));
    }
    out
}

fn per_op(label: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let each = start.elapsed() / n;
    println!("{label}: {each:?} per operation");
}

#[test]
fn fifty_rules_load_and_decide() {
    let e = super::engine(&fifty_rules());
    assert_eq!(e.policy_ids().len(), 54);
    let t = Topology::new([("dev", vec!["time", "fs", "srv1"])]);
    let dev = vec!["dev".to_string()];
    let u = Subject { user: "alice", role: Some(Role::User), groups: &dev };
    let x = Target { kind: Kind::Tool, server: "srv1", name: "danger" };
    assert!(e.decide(&t, &u, Action::Call, &x, Some(&json!({"path": "/tmp/x"})), NOW).allowed);
    assert!(!e.decide(&t, &u, Action::Call, &x, Some(&json!({"path": "/etc/x"})), NOW).allowed);
    assert!(!e.visible(&t, &u, &x, NOW));
}

#[test]
#[ignore = "prints timings; run in release"]
fn timings() {
    let e = super::engine(&fifty_rules());
    let builtin = Engine::builtin();
    let t = Topology::new((0..20).map(|g| (format!("group{g}"), (0..10).map(move |s| format!("server{}", g * 5 + s)))));
    let groups: Vec<String> = (0..3).map(|g| format!("group{g}")).collect();
    let u = Subject { user: "alice", role: Some(Role::User), groups: &groups };
    let v = Subject { role: Some(Role::Viewer), ..u };
    let x = Target { kind: Kind::Tool, server: "server3", name: "write_file" };
    let args = json!({"path": "/tmp/a", "content": "hello", "mode": 420, "flags": ["a", "b"]});
    assert!(e.decide(&t, &u, Action::Call, &x, Some(&args), NOW).allowed);
    let n = 20_000;
    println!("built-in policies only:");
    per_op("  decide(call)", n, || {
        black_box(builtin.decide(&t, &u, Action::Call, &x, Some(&args), NOW));
    });
    per_op("  visible", n, || {
        black_box(builtin.visible(&t, &u, &x, NOW));
    });
    println!("built-in + 50 rules:");
    per_op("  decide(call) with arguments", n, || {
        black_box(e.decide(&t, &u, Action::Call, &x, Some(&args), NOW));
    });
    per_op("  decide(call) denied (out of group)", n, || {
        let y = Target { kind: Kind::Tool, server: "server99", name: "x" };
        black_box(e.decide(&t, &u, Action::Call, &y, None, NOW));
    });
    per_op("  visible (user)", n, || {
        black_box(e.visible(&t, &u, &x, NOW));
    });
    per_op("  visible (viewer)", n, || {
        black_box(e.visible(&t, &v, &x, NOW));
    });
    per_op("  Topology::new (20 groups x 10 servers)", 200, || {
        black_box(Topology::new(
            (0..20).map(|g| (format!("group{g}"), (0..10).map(move |s| format!("server{}", g * 5 + s)))),
        ));
    });
    let text = fifty_rules();
    per_op("  Engine::from_sources (50 rules)", 20, || {
        black_box(Engine::from_sources(&[("extra.cedar", &text)]).is_ok());
    });
}
