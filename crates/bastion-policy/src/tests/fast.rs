//! The fast path decides as Cedar's evaluator does: random conditions —
//! well-typed or not, with missing attributes, overflows, sets of anything,
//! extension functions — over random arguments, evaluated with the fast path
//! and by Cedar alone, give the same permits, forbids and errors.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy_core::ast::{Context, Value};
use proptest::prelude::*;

use super::NOW;
use crate::engine::names;
use crate::runtime::{Outcome, Prepared, Principal, Runtime};
use crate::*;

/// An expression that reads the request or is a constant.
fn leaf() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "true",
        "false",
        "0",
        "1",
        "-3",
        "9223372036854775807",
        "\"x\"",
        "\"/srv/a\"",
        "\"\"",
        "Bastion::Group::\"g0\"",
        "Bastion::Group::\"g1\"",
        "Bastion::User::\"u0\"",
        "Bastion::Server::\"s0\"",
        "Bastion::Action::\"call\"",
        "principal",
        "resource",
        "action",
        "context",
        "context.now",
        "context.arguments",
        "context.arguments.a",
        "context.arguments.b",
        "context.arguments.s",
        "context.arguments.n",
        "context.arguments.flags",
        "context.arguments.ents",
        "context.arguments.rec",
        "context.arguments.rec.x",
        "principal.role",
        "principal.nope",
        "resource.name",
        "resource.server",
        "resource.server.name",
        "resource.server.groups",
        "Bastion::Group::\"g0\".name",
        "[]",
        "[1, \"x\"]",
        "[Bastion::Group::\"g0\", Bastion::Group::\"g2\"]",
        "{a: 1}",
        "decimal(\"1.5\")",
        "ip(\"127.0.0.1\")",
    ])
    .prop_map(str::to_string)
}

fn expr() -> impl Strategy<Value = String> {
    leaf().prop_recursive(4, 40, 3, |e| {
        let attr = prop::sample::select(vec!["a", "b", "s", "n", "flags", "rec", "x", "role", "name", "groups"]);
        let pattern = prop::sample::select(vec!["*", "x", "*x*", "/srv/*", "", "\\*"]);
        prop_oneof![
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            e.clone().prop_map(|a| format!("(!{a})")),
            e.clone().prop_map(|a| format!("(-({a}))")),
            (e.clone(), e.clone(), 0..10usize).prop_map(|(a, b, op)| {
                let op = ["==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "in"][op];
                format!("({a} {op} {b})")
            }),
            (e.clone(), e.clone(), 0..3usize).prop_map(|(a, b, m)| {
                let m = ["contains", "containsAll", "containsAny"][m];
                format!("({a}).{m}({b})")
            }),
            e.clone().prop_map(|a| format!("({a}).isEmpty()")),
            (e.clone(), attr.clone()).prop_map(|(a, x)| format!("({a} has {x})")),
            (e.clone(), attr).prop_map(|(a, x)| format!("({a}).{x}")),
            (e.clone(), pattern).prop_map(|(a, p)| format!("({a} like \"{p}\")")),
            e.clone().prop_map(|a| format!("({a} is Bastion::Group)")),
            e.clone().prop_map(|a| format!("({a} is Bastion::User)")),
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("[{a}, {b}]")),
            (e.clone(), e.clone(), e).prop_map(|(a, b, c)| format!("(if {a} then {b} else {c})")),
        ]
    })
}

/// Arguments of any shape: present or not, of any type.
fn arguments() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        any::<bool>().prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -3, i64::MAX, i64::MIN]).prop_map(Value::from),
        prop::sample::select(vec!["", "x", "/srv/a", "a*b"]).prop_map(Value::from),
    ];
    let any_value = scalar.prop_recursive(2, 8, 3, |v| {
        prop_oneof![
            prop::collection::vec(v.clone(), 0..3).prop_map(|xs| Value::set(xs, None)),
            prop::collection::vec((prop::sample::select(vec!["x", "y"]), v), 0..2)
                .prop_map(|kv| Value::record(kv, None)),
        ]
    });
    let ents = prop::collection::vec(0..3usize, 0..3)
        .prop_map(|gs| Value::set(gs.into_iter().map(|g| Value::from(names().group(&format!("g{g}")))), None));
    (
        prop::collection::vec((prop::sample::select(vec!["a", "b", "s", "n", "flags", "rec"]), any_value), 0..4),
        prop::option::of(ents),
    )
        .prop_map(|(mut kv, ents)| {
            let mut fields: BTreeMap<String, Value> = kv.drain(..).map(|(k, v)| (k.to_string(), v)).collect();
            if let Some(e) = ents {
                fields.insert("ents".into(), e);
            }
            Value::record(fields, None)
        })
}

fn outcome(rt: &Runtime, action: Action, who: &Subject, what: &Target, args: &Value) -> Outcome {
    let topo = Topology::new([("g0", vec!["s0"]), ("g1", vec!["s0", "s1"])]);
    let prepared = Prepared::new(&topo, what);
    let principal = Principal::new(who, who.role);
    let context = Context::Value(Arc::new(BTreeMap::from([
        ("arguments".into(), args.clone()),
        ("now".into(), Value::from(NOW)),
    ])));
    rt.run(action, who, &principal, &prepared, context, true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn fast_path_decides_as_cedar(
        conditions in prop::collection::vec((any::<bool>(), expr()), 1..4),
        args in arguments(),
        groups in prop::collection::vec(0..3usize, 0..3),
        role in 0..5usize,
        server in 0..3usize,
        action in 0..4usize,
    ) {
        let text: String = conditions
            .iter()
            .map(|(permit, c)| format!("{} (principal, action, resource) when {{ {c} }};\n", if *permit { "permit" } else { "forbid" }))
            .collect();
        // unvalidated: ill-typed conditions are what errors come from
        let Ok(set) = cedar_policy::PolicySet::from_str(&text) else {
            return Err(TestCaseError::reject("does not parse"));
        };
        let fast = Runtime::new(&set);
        let mut slow = Runtime::new(&set);
        slow.fast = false;
        let groups: Vec<String> = groups.into_iter().map(|g| format!("g{g}")).collect();
        let roles = [None, Some(Role::Admin), Some(Role::Manager), Some(Role::User), Some(Role::Viewer)];
        let who = Subject { user: "u0", role: roles[role], groups: &groups };
        let server = format!("s{server}");
        let what = Target { kind: Kind::Tool, server: &server, name: "x" };
        let a = Action::ALL[action];
        let f = outcome(&fast, a, &who, &what, &args);
        let s = outcome(&slow, a, &who, &what, &args);
        prop_assert_eq!(&f.permits, &s.permits, "{}", text);
        prop_assert_eq!(&f.forbids, &s.forbids, "{}", text);
        prop_assert_eq!(&f.errors, &s.errors, "{}", text);
    }
}

/// The conditions of the benchmark's kind never need Cedar's evaluator.
#[test]
fn common_conditions_take_the_fast_path() {
    let text = r#"
        forbid (principal, action, resource) when { context.arguments has s && context.arguments.s like "*x*" };
        forbid (principal, action, resource) when { principal.role != "admin" && (resource.name like "admin_*") };
        forbid (principal, action, resource) unless { principal in resource.server.groups || principal in Bastion::Group::"g1" };
        permit (principal, action, resource) when { context.now > 5 && !(context.arguments has n && context.arguments.n > 100) };
        forbid (principal, action, resource) when { context.arguments has flags && context.arguments.flags.contains("f") };
        forbid (principal, action, resource) when { resource.server.name == "s9" || action == Bastion::Action::"read" };
    "#;
    let set = match cedar_policy::PolicySet::from_str(text) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let groups = vec!["g0".to_string()];
    let who = Subject { user: "u0", role: Some(Role::User), groups: &groups };
    let what = Target { kind: Kind::Tool, server: "s0", name: "x" };
    let args = Value::record([("s", Value::from("abc"))], None);
    let mut rt = Runtime::new(&set);
    let fast = outcome(&rt, Action::Call, &who, &what, &args);
    assert_eq!(fast.permits, vec![3]);
    assert!(fast.forbids.is_empty() && fast.errors.is_empty());
    assert_eq!(fast.by_cedar, 0);
    rt.fast = false;
    let slow = outcome(&rt, Action::Call, &who, &what, &args);
    assert_eq!((slow.permits, slow.by_cedar), (vec![3], 6));
}
