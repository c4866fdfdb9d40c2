//! Decisions made from kept plans are those made afresh: for another
//! topology, another role or groups of the same user, other arguments and
//! another time.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{NOW, engine, groups, topo, who};
use crate::plan::MAX_PLANS;
use crate::*;

/// Rules whose conditions read the principal, the target, the arguments
/// and the time, alone and together.
const RULES: &str = r#"
forbid (principal, action == Bastion::Action::"call", resource)
when { context.arguments has path && context.arguments.path like "*/.ssh/*" };
forbid (principal, action == Bastion::Action::"call", resource)
when { principal.role != "admin" && resource.name like "admin_*" };
forbid (principal, action, resource in Bastion::Server::"db")
when { context.now > 1800000500 };
permit (
  principal in Bastion::Group::"ops",
  action in [Bastion::Action::"list", Bastion::Action::"call"],
  resource is Bastion::Tool
)
when { resource.name == "lone_tool" && !(context.arguments has n && context.arguments.n > 10) };
forbid (principal == Bastion::User::"mallory", action, resource);
forbid (principal, action == Bastion::Action::"call", resource == Bastion::Tool::"fs__write")
unless { context.arguments has path && context.arguments.path like "/srv/*" };
"#;

#[test]
fn a_plan_follows_the_topology() {
    let e = Engine::builtin();
    let dev = groups(&["dev"]);
    let alice = who("alice", Some(Role::User), &dev);
    let x = Target { kind: Kind::Tool, server: "time", name: "now" };
    let holds_time = Topology::new([("dev", vec!["time"])]);
    let holds_fs = Topology::new([("dev", vec!["fs"])]);
    assert!(e.decide(&holds_time, &alice, Action::Call, &x, None, NOW).allowed);
    assert!(!e.decide(&holds_fs, &alice, Action::Call, &x, None, NOW).allowed);
    assert!(!e.visible(&holds_fs, &alice, &x, NOW));
    assert!(e.decide(&holds_time, &alice, Action::Call, &x, None, NOW).allowed);
    // a clone is the same topology
    assert!(e.visible(&holds_time.clone(), &alice, &x, NOW));
}

#[test]
fn a_plan_is_per_principal() {
    let e = engine(RULES);
    let t = topo();
    let x = Target { kind: Kind::Tool, server: "time", name: "now" };
    let dev = groups(&["dev"]);
    let ops = groups(&["ops"]);
    let decide = |s: &Subject| e.decide(&t, s, Action::Call, &x, None, NOW);
    assert!(decide(&who("alice", Some(Role::User), &dev)).allowed);
    // the same name with another role, other groups, no role
    assert!(!decide(&who("alice", Some(Role::Viewer), &dev)).allowed);
    assert!(!decide(&who("alice", Some(Role::User), &ops)).allowed);
    assert!(!decide(&who("alice", None, &dev)).allowed);
    // another name with the same role and groups
    assert!(!decide(&who("mallory", Some(Role::User), &dev)).allowed);
    assert!(decide(&who("alice", Some(Role::User), &dev)).allowed);
    // a viewer sees what a user of its groups could use, and calls none of it
    let viewer = who("carol", Some(Role::Viewer), &dev);
    assert!(e.visible(&t, &viewer, &x, NOW));
    assert!(!decide(&viewer).allowed);
    assert!(!e.visible(&t, &who("carol", Some(Role::Viewer), &ops), &x, NOW));
}

#[test]
fn the_context_is_read_on_every_decision() {
    let e = engine(RULES);
    let t = topo();
    let dev = groups(&["dev"]);
    let alice = who("alice", Some(Role::User), &dev);
    let write = Target { kind: Kind::Tool, server: "fs", name: "write" };
    let call = |args: Value, now| e.decide(&t, &alice, Action::Call, &write, Some(&args), now);
    assert!(call(json!({"path": "/srv/a"}), NOW).allowed);
    assert!(!call(json!({"path": "/etc/a"}), NOW).allowed);
    assert!(!call(json!({"path": "/srv/x/.ssh/id"}), NOW).allowed);
    assert!(!call(json!({}), NOW).allowed);
    assert!(call(json!({"path": "/srv/b"}), NOW).allowed);
    let ops = groups(&["ops"]);
    let bob = who("bob", Some(Role::User), &ops);
    let db = Target { kind: Kind::Tool, server: "db", name: "query" };
    assert!(e.decide(&t, &bob, Action::Call, &db, None, NOW).allowed);
    assert!(!e.decide(&t, &bob, Action::Call, &db, None, NOW + 1000).allowed);
    assert!(e.decide(&t, &bob, Action::Call, &db, None, NOW).allowed);
}

#[test]
fn plans_kept_are_bounded() {
    let e = Engine::builtin().without_plans();
    let t = topo();
    let dev = groups(&["dev"]);
    let alice = who("alice", Some(Role::User), &dev);
    for i in 0..MAX_PLANS + 100 {
        let name = format!("tool{i}");
        let x = Target { kind: Kind::Tool, server: "time", name: &name };
        assert!(e.decide(&t, &alice, Action::Call, &x, None, NOW).allowed);
        assert!(e.plans_kept() <= MAX_PLANS);
    }
    assert!(e.plans_kept() > 0);
}

fn args() -> impl Strategy<Value = Value> {
    let path = prop_oneof![Just("/srv/a"), Just("/srv/.ssh/k"), Just("/etc/x"), Just("")];
    (prop::option::of(path), prop::option::of(0i64..20)).prop_map(|(p, n)| {
        let mut m = serde_json::Map::new();
        if let Some(p) = p {
            m.insert("path".into(), json!(p));
        }
        if let Some(n) = n {
            m.insert("n".into(), json!(n));
        }
        Value::Object(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A run of decisions, each made from a kept plan where there is one,
    /// is the run an engine that keeps none makes.
    #[test]
    fn kept_plans_decide_as_fresh_ones(
        asks in prop::collection::vec(
            (0..3usize, 0..5usize, 0..4usize, 0..6usize, args(), 0..2i64),
            1..40,
        ),
    ) {
        let kept = engine(RULES);
        let fresh = kept.without_plans();
        let t = topo();
        let users = ["alice", "mallory", "carol"];
        let roles = [Some(Role::Admin), Some(Role::Manager), Some(Role::User), Some(Role::Viewer), None];
        let group_sets = [groups(&["dev"]), groups(&["ops"]), groups(&["dev", "ops"]), groups(&[])];
        let targets = [
            (Kind::Tool, "time", "now"),
            (Kind::Tool, "fs", "write"),
            (Kind::Tool, "db", "admin_drop"),
            (Kind::Tool, "lone", "lone_tool"),
            (Kind::Resource, "db", "db://t"),
            (Kind::Prompt, "fs", "p"),
        ];
        for (u, r, g, x, a, later) in asks {
            let s = who(users[u], roles[r], &group_sets[g]);
            let (kind, server, name) = targets[x];
            let what = Target { kind, server, name };
            let now = NOW + later * 1000;
            for action in Action::ALL {
                let d1 = kept.decide(&t, &s, action, &what, Some(&a), now);
                let d2 = fresh.without_plans().decide(&t, &s, action, &what, Some(&a), now);
                prop_assert_eq!(&d1, &d2);
            }
            prop_assert_eq!(kept.visible(&t, &s, &what, now), fresh.without_plans().visible(&t, &s, &what, now));
        }
    }
}
