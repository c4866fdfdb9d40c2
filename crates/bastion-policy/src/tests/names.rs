//! Names are compared byte for byte: a look-alike never gets what a policy
//! or a group grants the name it imitates.

use super::{NOW, engine, groups, topo};
use crate::*;

/// Spellings that look like (or nearly like) `s` and are not `s`.
fn look_alikes(s: &str) -> Vec<String> {
    let mut out = vec![
        s.to_uppercase(),
        format!("{s} "),
        format!(" {s}"),
        format!("{s}\u{200d}"),
        format!("\u{200b}{s}"),
        format!("{s}\n"),
        format!("{s}\u{0}"),
    ];
    let mut first_upper = s.to_string();
    if let Some(c) = first_upper.get_mut(0..1) {
        c.make_ascii_uppercase();
    }
    out.push(first_upper);
    // Cyrillic е, о, а, і for their Latin twins
    for (latin, cyrillic) in [('e', 'е'), ('o', 'о'), ('a', 'а'), ('i', 'і')] {
        if s.contains(latin) {
            out.push(s.replacen(latin, &cyrillic.to_string(), 1));
        }
    }
    // full-width letters
    out.push(
        s.chars()
            .map(|c| if c.is_ascii_lowercase() { char::from_u32(c as u32 + 0xFEE0).unwrap_or(c) } else { c })
            .collect(),
    );
    // a combining mark, and a precomposed letter
    out.push(format!("{s}\u{301}"));
    out.push(s.replacen('e', "é", 1));
    out.retain(|x| x != s);
    out
}

#[test]
fn look_alikes_are_different() {
    let l = look_alikes("time");
    assert!(l.contains(&"Time".to_string()));
    assert!(l.contains(&"tіme".to_string()));
    assert!(l.contains(&"ｔｉｍｅ".to_string()));
    assert!(l.iter().all(|x| x != "time"));
}

#[test]
fn tool_names() {
    let e = engine(
        r#"permit (principal == Bastion::User::"bob", action, resource == Bastion::Tool::"time__convert_time");
forbid (principal, action, resource == Bastion::Tool::"time__convert_time") when { principal.role == "admin" };"#,
    );
    let t = topo();
    let none: Vec<String> = vec![];
    let bob = who_("bob", None, &none);
    let root = who_("root", Some(Role::Admin), &none);
    let exact = Target { kind: Kind::Tool, server: "time", name: "convert_time" };
    assert!(e.decide(&t, &bob, Action::Call, &exact, None, NOW).allowed);
    assert!(!e.decide(&t, &root, Action::Call, &exact, None, NOW).allowed);
    for name in look_alikes("convert_time") {
        let x = Target { kind: Kind::Tool, server: "time", name: &name };
        assert!(!e.decide(&t, &bob, Action::Call, &x, None, NOW).allowed, "{name:?}");
        assert!(!e.visible(&t, &bob, &x, NOW), "{name:?}");
        // the forbid does not catch them either: they are other tools
        assert!(e.decide(&t, &root, Action::Call, &x, None, NOW).allowed, "{name:?}");
    }
    // the prefixed id is built from server and name: a look-alike server
    // does not give the same id
    for server in look_alikes("time") {
        let x = Target { kind: Kind::Tool, server: &server, name: "convert_time" };
        assert!(!e.decide(&t, &bob, Action::Call, &x, None, NOW).allowed, "{server:?}");
    }
}

fn who_<'a>(user: &'a str, role: Option<Role>, groups: &'a [String]) -> Subject<'a> {
    Subject { user, role, groups }
}

#[test]
fn group_grants() {
    let e = Engine::builtin();
    let t = topo();
    let dev = groups(&["dev"]);
    let u = who_("u", Some(Role::User), &dev);
    assert!(
        e.decide(&t, &u, Action::Call, &Target { kind: Kind::Tool, server: "time", name: "now" }, None, NOW).allowed
    );
    // a look-alike server is in no group
    for server in look_alikes("time") {
        let x = Target { kind: Kind::Tool, server: &server, name: "now" };
        assert!(!e.decide(&t, &u, Action::Call, &x, None, NOW).allowed, "{server:?}");
        assert!(!e.visible(&t, &u, &x, NOW), "{server:?}");
    }
    // a look-alike group holds nothing
    for group in look_alikes("dev") {
        let gs = vec![group.clone()];
        let u = who_("u", Some(Role::User), &gs);
        let x = Target { kind: Kind::Tool, server: "time", name: "now" };
        assert!(!e.decide(&t, &u, Action::Call, &x, None, NOW).allowed, "{group:?}");
        assert!(!e.visible(&t, &u, &x, NOW), "{group:?}");
    }
}

#[test]
fn user_names_and_groups_in_policies() {
    let e = engine(
        r#"permit (principal == Bastion::User::"alice", action, resource in Bastion::Server::"db");
permit (principal in Bastion::Group::"oncall", action, resource in Bastion::Server::"db");"#,
    );
    let t = topo();
    let none: Vec<String> = vec![];
    let x = Target { kind: Kind::Tool, server: "db", name: "q" };
    assert!(e.decide(&t, &who_("alice", None, &none), Action::Call, &x, None, NOW).allowed);
    for user in look_alikes("alice") {
        assert!(!e.decide(&t, &who_(&user, None, &none), Action::Call, &x, None, NOW).allowed, "{user:?}");
    }
    let oncall = groups(&["oncall"]);
    assert!(e.decide(&t, &who_("x", None, &oncall), Action::Call, &x, None, NOW).allowed);
    for group in look_alikes("oncall") {
        let gs = vec![group.clone()];
        assert!(!e.decide(&t, &who_("x", None, &gs), Action::Call, &x, None, NOW).allowed, "{group:?}");
    }
}

#[test]
fn resource_uris() {
    let e = engine(r#"permit (principal, action, resource == Bastion::Resource::"fs+file:///srv/readme");"#);
    let t = topo();
    let none: Vec<String> = vec![];
    let u = who_("u", None, &none);
    let exact = Target { kind: Kind::Resource, server: "fs", name: "file:///srv/readme" };
    assert!(e.decide(&t, &u, Action::Read, &exact, None, NOW).allowed);
    for uri in look_alikes("file:///srv/readme")
        .into_iter()
        .chain(["file:///srv/readme/".to_string(), "file:///srv//readme".to_string()])
    {
        let x = Target { kind: Kind::Resource, server: "fs", name: &uri };
        assert!(!e.decide(&t, &u, Action::Read, &x, None, NOW).allowed, "{uri:?}");
    }
}

#[test]
fn policy_strings_with_escapes_match_their_value_only() {
    // the policy names the tool with an escape: it is the same byte string
    let e = engine(r#"permit (principal, action, resource == Bastion::Tool::"time__\u{63}onvert");"#);
    let t = topo();
    let none: Vec<String> = vec![];
    let u = who_("u", None, &none);
    assert!(
        e.decide(&t, &u, Action::Call, &Target { kind: Kind::Tool, server: "time", name: "convert" }, None, NOW)
            .allowed
    );
    assert!(
        !e.decide(&t, &u, Action::Call, &Target { kind: Kind::Tool, server: "time", name: "Convert" }, None, NOW)
            .allowed
    );
}
