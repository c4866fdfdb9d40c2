//! Properties over random users, roles, groups, topologies, targets and
//! policy sets: what lists show is what may be used.

use proptest::prelude::*;
use serde_json::Value;

use super::NOW;
use crate::*;

const ROLES: [Option<Role>; 5] = [Some(Role::Admin), Some(Role::Manager), Some(Role::User), Some(Role::Viewer), None];
const ROLE_NAMES: [&str; 5] = ["admin", "manager", "user", "viewer", "none"];

fn entity(kind: Kind, server: usize, name: usize) -> String {
    match kind {
        Kind::Tool => format!("Bastion::Tool::\"s{server}__t{name}\""),
        Kind::Prompt => format!("Bastion::Prompt::\"s{server}__t{name}\""),
        Kind::Resource => format!("Bastion::Resource::\"s{server}+t{name}\""),
    }
}

fn kind_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Tool => "Bastion::Tool",
        Kind::Prompt => "Bastion::Prompt",
        Kind::Resource => "Bastion::Resource",
    }
}

fn action(a: Action) -> String {
    format!("Bastion::Action::\"{a}\"")
}

/// One permit or forbid on principal, group, server, tool, action, time
/// and (unless `role_blind`) role; always valid against the schema.
fn rule(role_blind: bool) -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0..3usize,
        0..3usize,
        0..6usize,
        0..3usize,
        0..2usize,
        0..3usize,
        0..3usize,
        0..4usize,
        0..6usize,
        0..5usize,
    )
        .prop_map(move |(permit, pk, pi, rk, ri, ni, ki, ak, ai, ck, ci)| {
            let principal = match pk {
                0 => "principal".to_string(),
                1 => format!("principal == Bastion::User::\"u{pi}\""),
                _ => format!("principal in Bastion::Group::\"g{pi}\""),
            };
            let kind = Kind::ALL[ki];
            let resource = match rk {
                0 => "resource".to_string(),
                1 => format!("resource in Bastion::Server::\"s{ri}\""),
                2 => format!("resource in Bastion::Group::\"g{ri}\""),
                3 => format!("resource == {}", entity(kind, ri, ni)),
                4 => format!("resource is {}", kind_type(kind)),
                _ => format!("resource is {} in Bastion::Server::\"s{ri}\"", kind_type(kind)),
            };
            let (x, y) = if rk >= 3 {
                let pair = [Action::List, kind.use_action()];
                (pair[ai % 2], pair[(ai + 1) % 2])
            } else {
                (Action::ALL[ai], Action::ALL[(ai + 1) % 4])
            };
            let act = match ak {
                0 => "action".to_string(),
                1 => format!("action == {}", action(x)),
                _ => format!("action in [{}, {}]", action(x), action(y)),
            };
            let cond = match ck {
                1 if !role_blind => format!(" when {{ principal.role == \"{}\" }}", ROLE_NAMES[ci]),
                2 => format!(" when {{ resource.server.name == \"s{}\" }}", ci % 3),
                3 => format!(" when {{ context.now > {} }}", NOW - 2 + ci as i64),
                4 => " unless { principal in resource.server.groups }".to_string(),
                5 => format!(" when {{ principal in Bastion::Group::\"g{}\" }}", ci % 3),
                _ => String::new(),
            };
            let effect = if permit { "permit" } else { "forbid" };
            format!("{effect} ({principal}, {act}, {resource}){cond};")
        })
}

fn rules(role_blind: bool) -> impl Strategy<Value = String> {
    prop::collection::vec(rule(role_blind), 0..8).prop_map(|r| r.join("\n"))
}

/// group gi holds server sj when bit 3i+j is set; `s3` is in no group.
fn topology(mask: u16) -> Topology {
    let groups: Vec<(String, Vec<String>)> = (0..3)
        .map(|g| {
            (format!("g{g}"), (0..3).filter(|s| mask & (1 << (3 * g + s)) != 0).map(|s| format!("s{s}")).collect())
        })
        .collect();
    Topology::new(groups)
}

#[derive(Debug, Clone)]
struct Who {
    user: String,
    role: Option<Role>,
    groups: Vec<String>,
}

fn who() -> impl Strategy<Value = Who> {
    (0..3usize, 0..5usize, 0..16u8).prop_map(|(u, r, g)| Who {
        user: format!("u{u}"),
        role: ROLES[r],
        // g3 holds nothing
        groups: (0..4).filter(|i| g & (1 << i) != 0).map(|i| format!("g{i}")).collect(),
    })
}

fn targets() -> Vec<(Kind, String, String)> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        for s in 0..4 {
            for n in 0..2 {
                out.push((kind, format!("s{s}"), format!("t{n}")));
            }
        }
    }
    out
}

fn build(text: &str) -> Result<Engine, TestCaseError> {
    Engine::from_sources(&[("p.cedar", text)]).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))
}

/// The same question asked of Cedar's own authorizer, through its public
/// API only: entities with the hierarchy computed by Cedar, every policy
/// evaluated.
fn cedar_allows(e: &Engine, t: &Topology, who: &Subject, action: Action, what: &Target) -> bool {
    use cedar_policy::{Authorizer, Context, Entities, Entity, EntityUid, Request, RestrictedExpression};
    use std::str::FromStr;
    let uid = |ty: &str, id: &str| EntityUid::from_str(&format!("Bastion::{ty}::{id:?}")).map_err(|e| e.to_string());
    let run = || -> Result<bool, String> {
        let e_str = |e: &dyn std::fmt::Display| e.to_string();
        let principal = uid("User", who.user)?;
        let groups: Vec<EntityUid> = who.groups.iter().map(|g| uid("Group", g)).collect::<Result<_, _>>()?;
        let server = uid("Server", what.server)?;
        let server_groups: Vec<EntityUid> = t
            .groups_of(what.server)
            .iter()
            .map(|g| uid("Group", g))
            .collect::<Result<_, _>>()
            .map_err(|e| e_str(&e))?;
        let (ty, id, attr) = match what.kind {
            Kind::Tool => ("Tool", format!("{}__{}", what.server, what.name), "name"),
            Kind::Prompt => ("Prompt", format!("{}__{}", what.server, what.name), "name"),
            Kind::Resource => ("Resource", format!("{}+{}", what.server, what.name), "uri"),
        };
        let resource = uid(ty, &id).map_err(|e| e_str(&e))?;
        let role = who.role.map_or("none", Role::as_str);
        let entities = [
            Entity::new(
                principal.clone(),
                [("role".to_string(), RestrictedExpression::new_string(role.to_string()))].into_iter().collect(),
                groups.into_iter().collect(),
            ),
            Entity::new(
                server.clone(),
                [
                    ("name".to_string(), RestrictedExpression::new_string(what.server.to_string())),
                    (
                        "groups".to_string(),
                        RestrictedExpression::new_set(
                            server_groups.iter().cloned().map(RestrictedExpression::new_entity_uid),
                        ),
                    ),
                ]
                .into_iter()
                .collect(),
                server_groups.into_iter().collect(),
            ),
            Entity::new(
                resource.clone(),
                [
                    (attr.to_string(), RestrictedExpression::new_string(what.name.to_string())),
                    ("server".to_string(), RestrictedExpression::new_entity_uid(server.clone())),
                ]
                .into_iter()
                .collect(),
                [server].into_iter().collect(),
            ),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e_str(&e))?;
        let entities = Entities::from_entities(entities, None).map_err(|e| e_str(&e))?;
        let context = Context::from_pairs([
            ("arguments".to_string(), RestrictedExpression::new_record([]).map_err(|e| e_str(&e))?),
            ("now".to_string(), RestrictedExpression::new_long(NOW)),
        ])
        .map_err(|e| e_str(&e))?;
        let action = uid("Action", action.as_str()).map_err(|e| e_str(&e))?;
        let request = Request::new(principal, action, resource, context, None).map_err(|e| e_str(&e))?;
        let response = Authorizer::new().is_authorized(&request, &e.policies, &entities);
        Ok(response.decision() == cedar_policy::Decision::Allow)
    };
    match run() {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The engine's evaluation (scopes checked first, only the policies
    /// that can match evaluated) decides as Cedar's own authorizer does.
    #[test]
    fn decides_as_cedar_does(text in rules(false), mask in any::<u16>(), subjects in prop::collection::vec(who(), 4)) {
        let e = build(&text)?;
        let t = topology(mask);
        for w in &subjects {
            let s = Subject { user: &w.user, role: w.role, groups: &w.groups };
            for (kind, server, name) in targets() {
                let x = Target { kind, server: &server, name: &name };
                let listed = cedar_allows(&e, &t, &s, Action::List, &x);
                prop_assert_eq!(e.decide(&t, &s, Action::List, &x, None, NOW).allowed, listed);
                let used = cedar_allows(&e, &t, &s, kind.use_action(), &x);
                prop_assert_eq!(e.decide(&t, &s, kind.use_action(), &x, None, NOW).allowed, used && listed, "{:?} {:?}\n{}", w, x, text);
            }
        }
    }

    /// For everyone but a viewer: shown in a list ⇔ usable with no
    /// arguments; usable ⇒ listable; the wrong action for a kind is denied.
    #[test]
    fn visible_is_usable(text in rules(false), mask in any::<u16>(), subjects in prop::collection::vec(who(), 6)) {
        let e = build(&text)?;
        let t = topology(mask);
        for w in &subjects {
            let s = Subject { user: &w.user, role: w.role, groups: &w.groups };
            for (kind, server, name) in targets() {
                let x = Target { kind, server: &server, name: &name };
                let used = e.decide(&t, &s, kind.use_action(), &x, None, NOW);
                let listed = e.decide(&t, &s, Action::List, &x, None, NOW);
                prop_assert!(used.errors.is_empty() && listed.errors.is_empty());
                if used.allowed {
                    prop_assert!(listed.allowed);
                }
                if w.role != Some(Role::Viewer) {
                    prop_assert_eq!(e.visible(&t, &s, &x, NOW), used.allowed, "{:?} {:?} {}\n{}", w, x, used, text);
                }
                for a in Action::ALL {
                    if !a.applies_to(kind) {
                        prop_assert!(!e.decide(&t, &s, a, &x, None, NOW).allowed);
                    }
                }
            }
        }
    }

    /// A viewer sees what a user with its name and groups could use, and
    /// calls nothing, whatever permits it.
    #[test]
    fn viewers_see_what_users_use(text in rules(true), mask in any::<u16>(), subjects in prop::collection::vec(who(), 6)) {
        let e = build(&text)?;
        let t = topology(mask);
        for w in &subjects {
            let viewer = Subject { user: &w.user, role: Some(Role::Viewer), groups: &w.groups };
            let user = Subject { role: Some(Role::User), ..viewer };
            for (kind, server, name) in targets() {
                let x = Target { kind, server: &server, name: &name };
                let used = e.decide(&t, &user, kind.use_action(), &x, None, NOW);
                prop_assert_eq!(e.visible(&t, &viewer, &x, NOW), used.allowed, "{:?} {:?}\n{}", w, x, text);
                if kind == Kind::Tool {
                    prop_assert!(!e.decide(&t, &viewer, Action::Call, &x, None, NOW).allowed);
                }
            }
        }
    }

    /// With rules on roles too: a viewer sees what it may list and a user
    /// of the same groups may use.
    #[test]
    fn viewers_with_role_rules(text in rules(false), mask in any::<u16>(), subjects in prop::collection::vec(who(), 4)) {
        let e = build(&text)?;
        let t = topology(mask);
        for w in &subjects {
            let viewer = Subject { user: &w.user, role: Some(Role::Viewer), groups: &w.groups };
            let user = Subject { role: Some(Role::User), ..viewer };
            for (kind, server, name) in targets() {
                let x = Target { kind, server: &server, name: &name };
                let expected = e.decide(&t, &user, kind.use_action(), &x, None, NOW).allowed
                    && e.decide(&t, &viewer, Action::List, &x, None, NOW).allowed;
                prop_assert_eq!(e.visible(&t, &viewer, &x, NOW), expected);
                if kind == Kind::Tool {
                    prop_assert!(!e.decide(&t, &viewer, Action::Call, &x, None, NOW).allowed);
                }
            }
        }
    }

    /// Deny by default: with no extra policies, someone without a role
    /// gets nothing and a non-admin nothing outside its groups.
    #[test]
    fn deny_by_default(mask in any::<u16>(), w in who()) {
        let e = Engine::builtin();
        let t = topology(mask);
        let s = Subject { user: &w.user, role: w.role, groups: &w.groups };
        for (kind, server, name) in targets() {
            let x = Target { kind, server: &server, name: &name };
            let in_group = t.groups_of(&server).iter().any(|g| w.groups.contains(g));
            let visible = e.visible(&t, &s, &x, NOW);
            match w.role {
                Some(Role::Admin) => prop_assert!(visible),
                None => prop_assert!(!visible),
                Some(_) => prop_assert_eq!(visible, in_group),
            }
        }
    }
}

/// Policies examining arguments of every shape, for the conversion
/// properties.
const ARGUMENT_POLICIES: &str = r#"
forbid (principal, action, resource) when {
  context.arguments has s && context.arguments.s like "*x*" &&
  context.arguments has n && context.arguments.n > 3 &&
  context.arguments has b && context.arguments.b &&
  context.arguments has l && context.arguments.l.contains("q") &&
  context.arguments has m && context.arguments.m.contains(7) &&
  context.arguments has o && context.arguments.o has p && context.arguments.o.p == "z" &&
  context.arguments.o has q && context.arguments.o.q has r && context.arguments.o.q.r == true &&
  context.arguments has "" && context.arguments[""] == 1 &&
  context.arguments has "a b" && context.arguments has present
};
"#;

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z qx]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just(String::new()), "[a-z ]{0,3}", Just("o".to_string())],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arguments() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("s".to_string()),
        Just("n".to_string()),
        Just("b".to_string()),
        Just("l".to_string()),
        Just("m".to_string()),
        Just("o".to_string()),
        Just("".to_string()),
        Just("a b".to_string()),
        Just("present".to_string()),
        "[a-z]{1,3}",
    ];
    prop::collection::btree_map(key, json(), 0..10).prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the arguments, the context conforms to the schema the
    /// policies were validated against, and deciding never errs.
    #[test]
    fn arguments_conform_to_the_schema(args in prop_oneof![arguments(), json()]) {
        use cedar_policy::{EntityUid, Schema};
        use cedar_policy_core::ast::{Context, EntityUID, Request};
        use cedar_policy_core::extensions::Extensions;
        use cedar_policy_core::validator::ValidatorSchema;
        use std::collections::BTreeMap;
        use std::str::FromStr;
        use std::sync::Arc;
        static ENGINE: std::sync::LazyLock<Engine> = std::sync::LazyLock::new(|| super::engine(ARGUMENT_POLICIES));
        let e = &*ENGINE;
        let schema = Schema::from_cedarschema_str(e.schema_text()).map_err(|e| TestCaseError::fail(e.to_string()))?.0;
        let converted = crate::args::convert(&e.fields, Some(&args));
        let context = Context::Value(Arc::new(BTreeMap::from([
            ("arguments".into(), converted.record),
            ("now".into(), cedar_policy_core::ast::Value::from(NOW)),
        ])));
        let uid = |s: &str| -> Result<EntityUID, TestCaseError> {
            EntityUid::from_str(s).map(EntityUID::from).map_err(|e| TestCaseError::fail(e.to_string()))
        };
        let validator_schema: &ValidatorSchema = schema.as_ref();
        let request = Request::new(
            (uid(r#"Bastion::User::"u""#)?, None),
            (uid(r#"Bastion::Action::"call""#)?, None),
            (uid(r#"Bastion::Tool::"s__t""#)?, None),
            context,
            Some(validator_schema),
            Extensions::all_available(),
        );
        prop_assert!(request.is_ok(), "{:?}\n{}", request.err(), args);
        let groups = vec!["g".to_string()];
        let t = Topology::new([("g", ["s"])]);
        let s = Subject { user: "u", role: Some(Role::User), groups: &groups };
        let d = e.decide(&t, &s, Action::Call, &Target { kind: Kind::Tool, server: "s", name: "t" }, Some(&args), NOW);
        prop_assert!(d.errors.is_empty(), "{}", d);
    }
}
