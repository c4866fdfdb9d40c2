//! Policy files: ids, and problems located by file, line and column.

use std::io::Write;

use crate::*;

fn problems(text: &str) -> Vec<Problem> {
    match Engine::from_sources(&[("extra.cedar", text)]) {
        Ok(_) => panic!("loaded:\n{text}"),
        Err(e) => {
            assert!(!e.problems.is_empty());
            e.problems
        }
    }
}

/// The single problem of a text, as `file:line:column: message`.
fn problem(text: &str) -> String {
    let p = problems(text);
    p[0].to_string()
}

#[test]
fn ids_from_lines_and_annotations() {
    let e = Engine::from_sources(&[
        (
            "a.cedar",
            "// header\n\npermit (principal == Bastion::User::\"x\", action, resource);\n\
             @id(\"named\")\n@advice(\"y\")\nforbid (principal == Bastion::User::\"y\", action, resource);\n\
             @advice(\"z\") permit (principal == Bastion::User::\"z\", action, resource);",
        ),
        ("b.cedar", "@id(\"named\")\npermit (principal == Bastion::User::\"w\", action, resource);"),
    ]);
    let e = match e {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(e.policy_ids()[4..], ["a.cedar:3", "a.cedar:named", "a.cedar:7", "b.cedar:named"]);
}

#[test]
fn two_policies_on_one_line_collide() {
    let p = problems(
        "permit (principal == Bastion::User::\"z\", action, resource); permit (principal == Bastion::User::\"q\", action, resource);",
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("already used"), "{}", p[0]);
    assert_eq!(p[0].policy.as_deref(), Some("extra.cedar:1"));
}

#[test]
fn duplicate_annotated_ids() {
    let p = problems(
        "@id(\"a\")\npermit (principal, action, resource) when { principal.role == \"x\" };\n@id(\"a\")\nforbid (principal, action, resource) when { principal.role == \"y\" };",
    );
    assert_eq!(p[0].line, Some(4));
    assert!(p[0].message.contains("already used at extra.cedar:2"), "{}", p[0]);
}

#[test]
fn syntax_errors_are_located() {
    let s = problem(
        "permit (principal, action, resource);\n\nforbid (principal, action, resource) when { principal.role == };\n",
    );
    assert!(s.starts_with("extra.cedar:3:63: unexpected token `}`"), "{s}");
    let s = problem("permit (principal, action, resource)\n");
    assert!(s.starts_with("extra.cedar:1:37: unexpected end of input"), "{s}");
    let s = problem("permit (principal, action, resource) when { \"é\" == 1 } garbage;");
    assert!(s.starts_with("extra.cedar:1:"), "{s}");
}

#[test]
fn unknown_attributes_are_located() {
    let s = problem("\n\npermit (principal, action, resource)\n  when { principal.rol == \"admin\" };");
    assert!(s.starts_with("extra.cedar:4:10: attribute `rol` on entity type `Bastion::User` not found"), "{s}");
    assert!(s.contains("did you mean `role`?"), "{s}");
    let p = problems("permit (principal, action, resource) when { resource.owner == \"a\" };");
    assert_eq!(p[0].policy.as_deref(), Some("extra.cedar:1"));
    assert_eq!((p[0].line, p[0].column), (Some(1), Some(45)));
}

#[test]
fn wrong_action_names_are_located() {
    let p = problems("permit (principal, action == Bastion::Action::\"delete\", resource);");
    assert!(
        p[0].to_string().starts_with("extra.cedar:1:30: unrecognized action `Bastion::Action::\"delete\"`"),
        "{}",
        p[0]
    );
    // an action without the namespace is not Bastion's
    let p = problems("permit (principal, action == Action::\"call\", resource);");
    assert!(p[0].to_string().starts_with("extra.cedar:1:"), "{}", p[0]);
}

#[test]
fn unknown_entity_types_and_type_errors() {
    let s = problem("permit (principal == Bastion::Admin::\"x\", action, resource);");
    assert!(s.contains("Bastion::Admin"), "{s}");
    let s = problem("permit (principal, action, resource) when { principal.role == 3 };");
    assert!(s.starts_with("extra.cedar:1:"), "{s}");
    let s = problem("permit (principal, action, resource) when { principal.role };");
    assert!(s.starts_with("extra.cedar:1:45: unexpected type: expected Bool but saw String"), "{s}");
    // without the namespace, User is not an entity type of the schema
    let s = problem("permit (principal == User::\"x\", action, resource);");
    assert!(s.contains("User"), "{s}");
}

#[test]
fn policies_that_can_never_apply_are_refused() {
    let s = problem("forbid (principal, action == Bastion::Action::\"call\", resource is Bastion::Prompt);");
    assert!(s.contains("unable to find an applicable action"), "{s}");
    let s = problem("forbid (principal, action, resource) when { false };");
    assert!(s.contains("impossible"), "{s}");
}

#[test]
fn templates_are_refused() {
    let s = problem("permit (principal, action, resource);\npermit (principal == ?principal, action, resource);");
    assert!(s.starts_with("extra.cedar:2:1: templates"), "{s}");
}

#[test]
fn argument_types_must_agree() {
    let p = problems(
        "forbid (principal, action, resource) when { context.arguments has n && context.arguments.n like \"a\" };\n\
         forbid (principal, action, resource) when { context.arguments has n && context.arguments.n > 3 };",
    );
    assert_eq!(p[0].line, Some(2));
    assert!(
        p[0].message.contains("context.arguments.n is used as a Long here and as a String in extra.cedar:1"),
        "{}",
        p[0]
    );
    let s = problem("forbid (principal, action, resource) when { context.arguments.a == context.arguments.b };");
    assert!(s.contains("cannot tell the type of context.arguments.a"), "{s}");
    let s = problem("forbid (principal, action, resource) when { context.arguments == {} };");
    assert!(s.contains("not as a whole"), "{s}");
    let s = problem(
        "forbid (principal, action, resource) when { context.arguments has o && context.arguments.o has p && \
         context.arguments.o == context.arguments.o };",
    );
    assert!(s.contains("only its attributes can be examined"), "{s}");
    // an optional attribute must be guarded
    let s = problem("forbid (principal, action, resource) when { context.arguments.path like \"/a\" };");
    assert!(s.contains("context.arguments.path") || s.contains("arguments.path"), "{s}");
    assert!(s.starts_with("extra.cedar:1:45"), "{s}");
    // types told through another argument
    assert!(
        Engine::from_sources(&[(
            "x",
            "forbid (principal, action, resource) when { context.arguments has a && context.arguments has b && \
             context.arguments.a == context.arguments.b && context.arguments.b like \"x*\" };"
        )])
        .is_ok()
    );
    let deep = format!("forbid (principal, action, resource) when {{ context.arguments{} == 1 }};", ".a".repeat(40));
    assert!(problems(&deep).iter().any(|p| p.message.contains("deeper than 32")));
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    for body in [
        format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000)),
        format!("true{}", " && true".repeat(100_000)),
        format!("principal{} == 1", ".a".repeat(100_000)),
        format!("{}1{}.isEmpty()", "[".repeat(100_000), "]".repeat(100_000)),
        format!("{}true{}", "if true then ".repeat(100_000), " else false".repeat(100_000)),
    ] {
        let text = format!("permit (principal, action, resource) when {{ {body} }};");
        let p = problems(&text);
        assert!(p[0].message.contains("nested too deeply"), "{}", p[0]);
        assert_eq!(p[0].line, Some(1));
    }
    // just under the limit is fine
    let ok = format!(
        "permit (principal, action, resource) when {{ principal.role == \"a\"{} }};",
        " || principal.role == \"a\"".repeat(60)
    );
    assert!(Engine::from_sources(&[("x", &ok)]).is_ok());
}

#[test]
fn nothing_is_loaded_from_a_bad_set_and_all_problems_are_told() {
    let e = Engine::from_sources(&[
        ("good.cedar", "permit (principal == Bastion::User::\"a\", action, resource);"),
        (
            "bad.cedar",
            "permit (principal, action, resource) when { principal.nope };\nforbid (principal, action, resource) when { resource.nope };",
        ),
    ]);
    let Err(e) = e else { panic!("loaded") };
    assert_eq!(e.problems.len(), 2, "{e}");
    assert!(e.problems.iter().all(|p| p.file == "bad.cedar"));
    assert_eq!(e.problems[0].line, Some(1));
    assert_eq!(e.problems[1].line, Some(2));
    assert!(e.to_string().contains('\n'));
}

#[test]
fn files_on_disk() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        path
    };
    let good = write("rules.cedar", b"forbid (principal, action, resource in Bastion::Server::\"db\");\n");
    let e = Engine::load(&[&good]).unwrap();
    assert!(e.policy_ids().contains(&"rules.cedar:1".to_string()));

    let bad = write("bad.cedar", b"permit (principal, action, resource) when { resource.x };");
    let err = Engine::load(&[&good, &bad]).err().unwrap();
    assert_eq!(err.problems[0].file, bad.display().to_string());
    assert!(err.to_string().starts_with(&format!("{}:1:", bad.display())), "{err}");

    let missing = dir.path().join("missing.cedar");
    let err = Engine::load(&[&missing]).err().unwrap();
    assert!(err.problems[0].message.starts_with("cannot read"), "{err}");

    let latin1 = write("latin1.cedar", b"// caf\xe9\npermit (principal, action, resource);");
    let err = Engine::load(&[&latin1]).err().unwrap();
    assert_eq!(err.problems[0].line, Some(1));
    assert!(err.problems[0].message.contains("UTF-8"));

    let big = write("big.cedar", &vec![b' '; MAX_FILE_BYTES + 1]);
    let err = Engine::load(&[&big]).err().unwrap();
    assert!(err.problems[0].message.contains("larger than"));

    let empty = write("empty.cedar", b"// nothing yet\n");
    assert_eq!(Engine::load(&[&empty]).unwrap().policy_ids().len(), 4);
}

#[test]
fn never_panics_on_odd_texts() {
    for text in [
        "",
        ";",
        "\"",
        "@id(\"\")\npermit (principal, action, resource);",
        "@id(\"a\nb\")\npermit (principal, action, resource);",
        "permit (principal, action, resource) when { context.arguments[\"\\u{0}\"] == 1 };",
        "permit (principal, action, resource) when { context has arguments && context.arguments has \"\" };",
        "permit (principal, action, resource) when { [context.arguments.x] == [] };",
        "permit (principal, action, resource) when { {a: context.arguments} == {} };",
        "permit (principal, action, resource) when { context.arguments has a.b.c };",
        "permit (principal, action, resource) when { context.arguments has a && context.arguments.a in principal };",
        "permit (principal, action, resource) when { context.arguments has a && context.arguments.a.isEmpty() };",
        "permit (principal, action, resource) when { context.arguments has a && ip(context.arguments.a).isLoopback() };",
        "permit (principal, action, resource) when { context.arguments has a && context.arguments.a.hasTag(\"x\") };",
        "permit (principal, action, resource) when { context.arguments has a && (if context.arguments.a then 1 else 2) == 1 };",
        "permit (principal, action, resource) when { context.arguments has a && context.arguments.a.containsAll([1]) };",
        "\u{feff}permit (principal, action, resource);",
        "permit (principal, action, resource) when { \"\u{202e}\" == \"x\" };",
    ] {
        let _ = Engine::from_sources(&[("odd.cedar", text)]);
    }
}
