//! Tests of the engine as a whole: the role matrix, extra policies,
//! arguments, time, names, files.

mod docs;
mod fast;
mod files;
mod names;
mod plans;
mod props;
pub(crate) mod timing;

use serde_json::json;

use crate::*;

/// `dev` holds `time` and `fs`, `ops` holds `db`; `lone` is in no group.
pub(crate) fn topo() -> Topology {
    Topology::new([("dev", vec!["time", "fs"]), ("ops", vec!["db"])])
}

pub(crate) fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn who<'a>(user: &'a str, role: Option<Role>, groups: &'a [String]) -> Subject<'a> {
    Subject { user, role, groups }
}

pub(crate) fn target(kind: Kind, server: &'static str, name: &'static str) -> Target<'static> {
    Target { kind, server, name }
}

pub(crate) fn engine(text: &str) -> Engine {
    match Engine::from_sources(&[("extra.cedar", text)]) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

pub(crate) const NOW: i64 = 1_800_000_000;

/// Every role, in and out of the target's group, every action on every kind.
#[test]
fn role_matrix() {
    let e = Engine::builtin();
    let t = topo();
    let roles = [Some(Role::Admin), Some(Role::Manager), Some(Role::User), Some(Role::Viewer), None];
    let dev = groups(&["dev"]);
    let ops = groups(&["ops"]);
    for role in roles {
        for (gs, in_group) in [(&dev, true), (&ops, false)] {
            let s = who("alice", role, gs);
            for kind in Kind::ALL {
                let x = Target { kind, server: "time", name: "thing" };
                for action in Action::ALL {
                    let d = e.decide(&t, &s, action, &x, None, NOW);
                    let expected = action.applies_to(kind)
                        && match role {
                            Some(Role::Admin) => true,
                            Some(Role::Manager | Role::User) => in_group,
                            Some(Role::Viewer) => in_group && action != Action::Call,
                            None => false,
                        };
                    assert_eq!(d.allowed, expected, "{role:?} in_group={in_group} {action} {kind}: {d}");
                    assert!(d.errors.is_empty(), "{d}");
                    assert_eq!(d.allowed, d.denial.is_none());
                }
                let visible = e.visible(&t, &s, &x, NOW);
                let expected = match role {
                    Some(Role::Admin) => true,
                    Some(_) => in_group,
                    None => false,
                };
                assert_eq!(visible, expected, "{role:?} in_group={in_group} visible {kind}");
            }
        }
    }
}

#[test]
fn explanations() {
    let e = engine(
        r#"@id("no-db")
forbid (principal, action, resource in Bastion::Server::"db");
"#,
    );
    let t = topo();
    let dev = groups(&["dev"]);
    let user = who("alice", Some(Role::User), &dev);
    let d = e.decide(&t, &user, Action::Call, &target(Kind::Tool, "time", "now"), None, NOW);
    assert_eq!(d.to_string(), "allow (builtin.member)");
    let d = e.decide(&t, &user, Action::Call, &target(Kind::Tool, "fs", "x"), None, NOW);
    assert_eq!(explain(&d), "allow (builtin.member)");
    let admin = who("root", Some(Role::Admin), &[]);
    let d = e.decide(&t, &admin, Action::Call, &target(Kind::Tool, "db", "q"), None, NOW);
    assert_eq!(d.to_string(), "deny (extra.cedar:no-db)");
    assert_eq!(d.denial, Some(Denial::Forbidden(Action::Call)));
    let d = e.decide(&t, &user, Action::Call, &target(Kind::Tool, "lone", "q"), None, NOW);
    assert_eq!(d.to_string(), "deny (no policy permits call)");
    let d = e.decide(&t, &user, Action::Call, &target(Kind::Prompt, "time", "p"), None, NOW);
    assert_eq!(d.to_string(), "deny (call does not apply to a prompt)");
    let viewer = who("v", Some(Role::Viewer), &dev);
    let d = e.decide(&t, &viewer, Action::Call, &target(Kind::Tool, "time", "now"), None, NOW);
    assert_eq!(d.to_string(), "deny (builtin.viewer-no-call)");
}

#[test]
fn hidden_means_unusable() {
    let e =
        engine(r#"forbid (principal, action == Bastion::Action::"list", resource == Bastion::Tool::"time__secret");"#);
    let t = topo();
    let dev = groups(&["dev"]);
    let user = who("alice", Some(Role::User), &dev);
    let secret = target(Kind::Tool, "time", "secret");
    assert!(!e.visible(&t, &user, &secret, NOW));
    let d = e.decide(&t, &user, Action::Call, &secret, None, NOW);
    assert!(!d.allowed);
    assert_eq!(d.denial, Some(Denial::Forbidden(Action::List)));
    assert_eq!(d.to_string(), "deny (extra.cedar:1 forbids list)");
    // the others stay
    assert!(e.decide(&t, &user, Action::Call, &target(Kind::Tool, "time", "now"), None, NOW).allowed);
}

#[test]
fn forbid_beats_permit() {
    let e = engine(
        r#"permit (principal == Bastion::User::"bob", action, resource in Bastion::Server::"db");
forbid (principal == Bastion::User::"bob", action == Bastion::Action::"call", resource == Bastion::Tool::"db__drop");
"#,
    );
    let t = topo();
    let none: Vec<String> = vec![];
    let bob = who("bob", None, &none);
    let query = target(Kind::Tool, "db", "query");
    let drop = target(Kind::Tool, "db", "drop");
    let d = e.decide(&t, &bob, Action::Call, &query, None, NOW);
    assert!(d.allowed, "{d}");
    assert_eq!(d.reasons, vec!["extra.cedar:1"]);
    let d = e.decide(&t, &bob, Action::Call, &drop, None, NOW);
    assert!(!d.allowed);
    assert_eq!(d.reasons, vec!["extra.cedar:2"]);
    // still listed: only the call is forbidden, so it is hidden from lists
    // (what cannot be used is not shown) but `list` itself is allowed
    assert!(e.decide(&t, &bob, Action::List, &drop, None, NOW).allowed);
    assert!(!e.visible(&t, &bob, &drop, NOW));
    assert!(e.visible(&t, &bob, &query, NOW));
    // an admin is forbidden too
    let root = who("root", Some(Role::Admin), &none);
    let e = engine(r#"forbid (principal, action, resource in Bastion::Server::"db");"#);
    assert!(!e.decide(&t, &root, Action::Call, &query, None, NOW).allowed);
    assert!(!e.visible(&t, &root, &query, NOW));
}

#[test]
fn the_examples_of_the_contract() {
    let e = engine(
        r#"forbid(principal, action == Bastion::Action::"call", resource == Bastion::Tool::"fs__write_file")
  unless { context.arguments has path && context.arguments.path like "/tmp/*" };
permit(principal == Bastion::User::"bob", action, resource in Bastion::Server::"time");
forbid(principal, action, resource) when { context.now > 1900000000 };
"#,
    );
    let t = topo();
    let dev = groups(&["dev"]);
    let none: Vec<String> = vec![];
    let alice = who("alice", Some(Role::User), &dev);
    let write = target(Kind::Tool, "fs", "write_file");
    let call = |args: serde_json::Value| e.decide(&t, &alice, Action::Call, &write, Some(&args), NOW);
    assert!(call(json!({"path": "/tmp/a", "content": "x"})).allowed);
    assert!(call(json!({"path": "/tmp/dir/b"})).allowed);
    assert!(!call(json!({"path": "/etc/passwd"})).allowed);
    assert!(!call(json!({"path": "/tmpx/a"})).allowed);
    assert!(!call(json!({})).allowed);
    assert!(!e.decide(&t, &alice, Action::Call, &write, None, NOW).allowed);
    // a path that is not a string is left out: absent, so forbidden
    let d = call(json!({"path": 5}));
    assert!(!d.allowed);
    assert_eq!(d.omitted, vec!["context.arguments.path: expected a string, got an integer"]);
    let d = call(json!({"path": ["/tmp/a"]}));
    assert!(!d.allowed);
    // not visible: its use with empty arguments is forbidden
    assert!(!e.visible(&t, &alice, &write, NOW));
    // other tools are not concerned
    assert!(e.decide(&t, &alice, Action::Call, &target(Kind::Tool, "fs", "read_file"), None, NOW).allowed);

    // bob, no role, no group: the time server only
    let bob = who("bob", None, &none);
    assert!(e.decide(&t, &bob, Action::Call, &target(Kind::Tool, "time", "now"), None, NOW).allowed);
    assert!(e.visible(&t, &bob, &target(Kind::Prompt, "time", "p"), NOW));
    assert!(!e.decide(&t, &bob, Action::Call, &target(Kind::Tool, "fs", "read_file"), None, NOW).allowed);

    // after the date, nothing for anyone
    let later = 1_900_000_001;
    assert!(!e.decide(&t, &bob, Action::Call, &target(Kind::Tool, "time", "now"), None, later).allowed);
    assert!(!e.visible(&t, &alice, &target(Kind::Tool, "fs", "read_file"), later));
    let root = who("root", Some(Role::Admin), &none);
    assert!(!e.decide(&t, &root, Action::List, &target(Kind::Resource, "db", "db://x"), None, later).allowed);
    assert!(e.decide(&t, &root, Action::List, &target(Kind::Resource, "db", "db://x"), None, 1_900_000_000).allowed);
}

#[test]
fn argument_conditions() {
    let e = engine(
        r#"// small queries only, on the tables listed
forbid (principal, action == Bastion::Action::"call", resource == Bastion::Tool::"db__query")
unless {
  context.arguments has limit && context.arguments.limit <= 100 &&
  context.arguments has table && ["users", "orders"].contains(context.arguments.table)
};
// no recursive deletes, whatever the spelling
forbid (principal, action == Bastion::Action::"call", resource in Bastion::Server::"fs")
when { context.arguments has options && context.arguments.options has recursive &&
       context.arguments.options.recursive };
// no tag "secret"
forbid (principal, action, resource)
when { context.arguments has tags && context.arguments.tags.contains("secret") };
// a flag present at all
forbid (principal, action, resource) when { context.arguments has dry_run_disabled };
"#,
    );
    let t = topo();
    let ops = groups(&["ops", "dev"]);
    let u = who("u", Some(Role::User), &ops);
    let q = target(Kind::Tool, "db", "query");
    let call = |x: &Target, args: serde_json::Value| e.decide(&t, &u, Action::Call, x, Some(&args), NOW);
    assert!(call(&q, json!({"limit": 10, "table": "users"})).allowed);
    assert!(call(&q, json!({"limit": 100, "table": "orders", "other": [1, 2]})).allowed);
    assert!(!call(&q, json!({"limit": 101, "table": "users"})).allowed);
    assert!(!call(&q, json!({"limit": 10, "table": "passwords"})).allowed);
    assert!(!call(&q, json!({"limit": 10.5, "table": "users"})).allowed);
    assert!(!call(&q, json!({"limit": 10.0, "table": "users"})).allowed);
    assert!(!call(&q, json!({"limit": "10", "table": "users"})).allowed);
    assert!(!call(&q, json!({"limit": 10, "table": null})).allowed);
    assert!(!call(&q, json!({"limit": u64::MAX, "table": "users"})).allowed);
    assert!(call(&q, json!({"limit": i64::MIN, "table": "users"})).allowed);

    let rm = target(Kind::Tool, "fs", "remove");
    assert!(call(&rm, json!({"path": "/x"})).allowed);
    assert!(call(&rm, json!({"options": {"recursive": false}})).allowed);
    assert!(!call(&rm, json!({"options": {"recursive": true}})).allowed);
    // "true" is not a boolean: left out, so this `when` forbid does not
    // apply; write such rules as `unless` (see the documentation)
    let d = call(&rm, json!({"options": {"recursive": "true"}}));
    assert!(d.allowed);
    assert_eq!(d.omitted, vec!["context.arguments.options.recursive: expected a boolean, got a string"]);

    let now = target(Kind::Tool, "time", "now");
    assert!(call(&now, json!({"tags": ["a", "b"]})).allowed);
    assert!(!call(&now, json!({"tags": ["a", "secret"]})).allowed);
    assert!(call(&now, json!({"tags": []})).allowed);
    assert!(!call(&now, json!({"dry_run_disabled": 0})).allowed);
    assert!(!call(&now, json!({"dry_run_disabled": {"deep": [1, {"x": null}]}})).allowed);
    assert!(call(&now, json!({"dry_run_disabled": null})).allowed);
    // arguments that are not an object: no attribute at all
    assert!(!call(&q, json!([1, 2])).allowed);
    assert!(call(&now, json!("text")).allowed);

    // reads and lists never see arguments
    let e = engine(r#"forbid (principal, action, resource) when { context.arguments has x };"#);
    let r = target(Kind::Resource, "time", "time://zones");
    assert!(e.decide(&t, &u, Action::Read, &r, Some(&json!({"x": 1})), NOW).allowed);
    assert!(!e.decide(&t, &u, Action::Get, &target(Kind::Prompt, "time", "p"), Some(&json!({"x": 1})), NOW).allowed);
}

#[test]
fn prompts_and_resources() {
    let e = engine(
        r#"forbid (principal, action == Bastion::Action::"read", resource)
when { resource.uri like "file:///etc/*" };
forbid (principal, action == Bastion::Action::"get", resource is Bastion::Prompt)
when { resource.name == "admin_only" && principal.role != "admin" };
"#,
    );
    let t = topo();
    let dev = groups(&["dev"]);
    let u = who("u", Some(Role::User), &dev);
    assert!(!e.decide(&t, &u, Action::Read, &target(Kind::Resource, "fs", "file:///etc/passwd"), None, NOW).allowed);
    assert!(e.decide(&t, &u, Action::Read, &target(Kind::Resource, "fs", "file:///home/a"), None, NOW).allowed);
    // a resource template, by its URI template
    assert!(!e.visible(&t, &u, &target(Kind::Resource, "fs", "file:///etc/{name}"), NOW));
    assert!(!e.decide(&t, &u, Action::Get, &target(Kind::Prompt, "time", "admin_only"), None, NOW).allowed);
    let root = who("root", Some(Role::Admin), &dev);
    assert!(e.decide(&t, &root, Action::Get, &target(Kind::Prompt, "time", "admin_only"), None, NOW).allowed);
}

#[test]
fn group_and_server_conditions() {
    let e = engine(
        r#"// the on-call group may use the database, tools only
permit (principal in Bastion::Group::"oncall", action, resource is Bastion::Tool in Bastion::Group::"ops");
// nobody outside ops reads ops' resources even if another group holds the server
forbid (principal, action == Bastion::Action::"read", resource in Bastion::Group::"ops")
unless { principal in Bastion::Group::"ops" };
// a server attribute
forbid (principal, action, resource) when { resource.server.name == "fs" && principal.role == "manager" };
"#,
    );
    let t = Topology::new([("dev", vec!["time", "fs", "db"]), ("ops", vec!["db"])]);
    let oncall = groups(&["oncall"]);
    let o = who("o", None, &oncall);
    assert!(e.decide(&t, &o, Action::Call, &target(Kind::Tool, "db", "query"), None, NOW).allowed);
    assert!(!e.decide(&t, &o, Action::Call, &target(Kind::Tool, "time", "now"), None, NOW).allowed);
    assert!(!e.decide(&t, &o, Action::Get, &target(Kind::Prompt, "db", "p"), None, NOW).allowed);
    let dev = groups(&["dev"]);
    let d = who("d", Some(Role::User), &dev);
    assert!(e.decide(&t, &d, Action::Call, &target(Kind::Tool, "db", "query"), None, NOW).allowed);
    assert!(!e.decide(&t, &d, Action::Read, &target(Kind::Resource, "db", "db://t"), None, NOW).allowed);
    let m = who("m", Some(Role::Manager), &dev);
    assert!(!e.decide(&t, &m, Action::Call, &target(Kind::Tool, "fs", "x"), None, NOW).allowed);
    assert!(e.decide(&t, &m, Action::Call, &target(Kind::Tool, "time", "x"), None, NOW).allowed);
    assert_eq!(t.groups_of("db"), ["dev", "ops"]);
    assert!(t.groups_of("nowhere").is_empty());
}

#[test]
fn viewers_see_what_users_could_use() {
    let e = engine(
        r#"forbid (principal, action == Bastion::Action::"call", resource == Bastion::Tool::"time__stop")
when { principal.role == "user" };
"#,
    );
    let t = topo();
    let dev = groups(&["dev"]);
    let v = who("v", Some(Role::Viewer), &dev);
    let u = who("v", Some(Role::User), &dev);
    for name in ["now", "stop"] {
        let x = Target { kind: Kind::Tool, server: "time", name };
        assert_eq!(e.visible(&t, &v, &x, NOW), e.decide(&t, &u, Action::Call, &x, None, NOW).allowed, "{name}");
        assert!(!e.decide(&t, &v, Action::Call, &x, None, NOW).allowed);
    }
    assert!(e.visible(&t, &v, &target(Kind::Tool, "time", "now"), NOW));
    assert!(!e.visible(&t, &v, &target(Kind::Tool, "time", "stop"), NOW));
    // an explicit permit does not let a viewer call
    let e = engine(r#"permit (principal == Bastion::User::"v", action, resource);"#);
    let d = e.decide(&t, &v, Action::Call, &target(Kind::Tool, "db", "q"), None, NOW);
    assert!(!d.allowed);
    assert_eq!(d.reasons, vec!["builtin.viewer-no-call"]);
    assert!(e.visible(&t, &v, &target(Kind::Tool, "db", "q"), NOW));
}

#[test]
fn evaluation_errors_are_reported_and_the_policy_does_not_apply() {
    // overflow: the forbid errors, so it does not apply
    let e = engine(
        r#"forbid (principal, action == Bastion::Action::"call", resource)
when { context.arguments has n && context.arguments.n * 1000000000000 > 5 };
"#,
    );
    let t = topo();
    let dev = groups(&["dev"]);
    let u = who("u", Some(Role::User), &dev);
    let x = target(Kind::Tool, "time", "now");
    let d = e.decide(&t, &u, Action::Call, &x, Some(&json!({"n": 10_000_000_000i64})), NOW);
    assert!(d.allowed, "{d}");
    assert_eq!(d.errors.len(), 1, "{d}");
    assert!(d.errors[0].contains("extra.cedar:1"), "{d}");
    assert!(d.to_string().contains("[errors: "), "{d}");
    assert!(!e.decide(&t, &u, Action::Call, &x, Some(&json!({"n": 1})), NOW).allowed);
}

#[test]
fn builtin_engine_and_schema() {
    let e = Engine::builtin();
    assert_eq!(e.policy_ids(), ["builtin.admin", "builtin.member", "builtin.viewer", "builtin.viewer-no-call"]);
    assert!(e.warnings().is_empty());
    assert_eq!(e.schema_text(), Engine::base_schema_text());
    assert!(e.schema_text().contains("type Arguments = {};"));
    let e = engine(
        r#"permit (principal, action, resource) when {
  context.arguments has path && context.arguments.path like "/a*" &&
  context.arguments has "odd key" && context.arguments["odd key"] == 3 &&
  context.arguments has o && context.arguments.o has "" && context.arguments.o[""].isEmpty() &&
  context.arguments has flag
};"#,
    );
    let s = e.schema_text();
    for line in [
        r#""path"?: String"#,
        r#""odd key"?: Long"#,
        r#""flag"?: {}, // tested with `has` only"#,
        r#""o"?: {"#,
        r#"""?: Set<String>"#,
    ] {
        assert!(s.contains(line), "{line} not in\n{s}");
    }
    // the schema text is a valid schema
    assert!(cedar_policy::Schema::from_cedarschema_str(s).is_ok());
    assert_eq!(e.policy_ids().last().map(String::as_str), Some("extra.cedar:1"));
}

#[test]
fn engines_are_shared_across_threads() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<Engine>();
    shared::<Topology>();
    let e = std::sync::Arc::new(Engine::builtin());
    let t = topo();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (e, t) = (e.clone(), t.clone());
            std::thread::spawn(move || {
                let dev = groups(&["dev"]);
                let u = who("u", Some(Role::User), &dev);
                e.decide(&t, &u, Action::Call, &target(Kind::Tool, "time", "now"), None, NOW).allowed
            })
        })
        .collect();
    for h in handles {
        assert!(matches!(h.join(), Ok(true)));
    }
}

#[test]
fn topologies_from_the_configuration_shape() {
    let mut config: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    config.insert("dev".into(), vec!["time".into(), "fs".into(), "time".into()]);
    config.insert("ops".into(), vec!["fs".into()]);
    let t = Topology::new(&config);
    assert_eq!(t.groups_of("time"), ["dev"]);
    assert_eq!(t.groups_of("fs"), ["dev", "ops"]);
    let mut servers: Vec<&str> = t.servers().collect();
    servers.sort();
    assert_eq!(servers, ["fs", "time"]);
    assert_eq!(format!("{t:?}"), r#"{"fs": ["dev", "ops"], "time": ["dev"]}"#);
    let empty = Topology::default();
    assert!(empty.groups_of("time").is_empty());
    // no file: the built-in policies alone
    let none: [&str; 0] = [];
    assert_eq!(Engine::load(&none).map(|e| e.policy_ids().to_vec()), Ok(Engine::builtin().policy_ids().to_vec()));
    assert!(Engine::builtin().policy_text("builtin.admin").is_some_and(|t| t.contains("principal.role == \"admin\"")));
    assert_eq!(Engine::builtin().policy_text("nope"), None);
}
