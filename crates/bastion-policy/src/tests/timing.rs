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

/// The best of 5 rounds: the machine may be busy with other work, and the
/// best round is the closest to the cost itself.
fn per_op(label: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let mut best = std::time::Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..n / 5 {
            f();
        }
        best = best.min(start.elapsed() / (n / 5).max(1));
    }
    println!("{label}: {best:?} per operation");
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

#[test]
#[ignore = "prints timings of the parts of a decision; run in release"]
fn timings_of_parts() {
    use cedar_policy::*;
    use std::str::FromStr;
    let e = super::engine(&fifty_rules());
    let uid = |s: &str| EntityUid::from_str(s).unwrap();
    let user = uid(r#"Bastion::User::"alice""#);
    let tool = uid(r#"Bastion::Tool::"server3__write_file""#);
    let server = uid(r#"Bastion::Server::"server3""#);
    let g = uid(r#"Bastion::Group::"group0""#);
    let call = uid(r#"Bastion::Action::"call""#);
    let n = 20_000;
    let mk_entities = || {
        let p = Entity::new(
            user.clone(),
            [("role".to_string(), RestrictedExpression::new_string("user".into()))].into_iter().collect(),
            [g.clone()].into_iter().collect(),
        )
        .unwrap();
        let t = Entity::new(
            tool.clone(),
            [
                ("name".to_string(), RestrictedExpression::new_string("write_file".into())),
                ("server".to_string(), RestrictedExpression::new_entity_uid(server.clone())),
            ]
            .into_iter()
            .collect(),
            [server.clone()].into_iter().collect(),
        )
        .unwrap();
        let s = Entity::new(
            server.clone(),
            [
                ("name".to_string(), RestrictedExpression::new_string("server3".into())),
                (
                    "groups".to_string(),
                    RestrictedExpression::new_set([RestrictedExpression::new_entity_uid(g.clone())]),
                ),
            ]
            .into_iter()
            .collect(),
            [g.clone()].into_iter().collect(),
        )
        .unwrap();
        (p, t, s)
    };
    per_op("3 Entity::new", n, || {
        black_box(mk_entities());
    });
    let (p, t, s) = mk_entities();
    per_op("Entities::from_entities(3)", n, || {
        black_box(Entities::from_entities([p.clone(), t.clone(), s.clone()], None).unwrap());
    });
    let entities = Entities::from_entities([p, t, s], None).unwrap();
    let ctx = || {
        Context::from_pairs([
            ("arguments".to_string(), RestrictedExpression::new_record([]).unwrap()),
            ("now".to_string(), RestrictedExpression::new_long(NOW)),
        ])
        .unwrap()
    };
    per_op("Context::from_pairs", n, || {
        black_box(ctx());
    });
    per_op("Request::new", n, || {
        black_box(Request::new(user.clone(), call.clone(), tool.clone(), ctx(), None).unwrap());
    });
    let req = Request::new(user.clone(), call.clone(), tool.clone(), ctx(), None).unwrap();
    let auth = Authorizer::new();
    per_op("is_authorized (54 policies)", n, || {
        black_box(auth.is_authorized(&req, &e.policies, &entities));
    });
    let builtin = Engine::builtin();
    per_op("is_authorized (4 built-in)", n, || {
        black_box(auth.is_authorized(&req, &builtin.policies, &entities));
    });
    let one = PolicySet::from_str(r#"permit (principal, action, resource);"#).unwrap();
    per_op("is_authorized (1 trivial)", n, || {
        black_box(auth.is_authorized(&req, &one, &entities));
    });
    let blocked = PolicySet::from_str(r#"forbid (principal == Bastion::User::"x", action, resource);"#).unwrap();
    per_op("is_authorized (1 scope miss)", n, || {
        black_box(auth.is_authorized(&req, &blocked, &entities));
    });
    let empty = PolicySet::new();
    per_op("is_authorized (empty)", n, || {
        black_box(auth.is_authorized(&req, &empty, &entities));
    });
}
