use std::path::Path;

use bastion_core::config::Config;
use serde_json::json;

use super::*;

const RRN: &str = "900101-1234568";
const CARD: &str = "4111 1111 1111 1111";
const AWS: &str = "AKIAIOSFODNN7EXAMPLE";

fn guard(yaml: &str) -> Guard {
    let config = Config::parse(Path::new("bastion.yaml"), yaml).unwrap();
    Guard::compile(&config.guard, &config.servers).unwrap()
}

fn default_guard() -> Guard {
    guard("mcpServers: {}\n")
}

fn pass(v: Verdict) -> Vec<Hit> {
    match v {
        Verdict::Pass { hits } => hits,
        Verdict::Block { hit } => panic!("blocked: {hit:?}"),
    }
}

#[test]
fn defaults_follow_the_issue() {
    let g = default_guard();
    let s = Scope::server("any");
    for secret in [
        "aws_access_key",
        "aws_secret_key",
        "github_token",
        "gitlab_token",
        "slack_token",
        "openai_key",
        "jwt",
        "private_key",
        "bastion_key",
    ] {
        assert_eq!(g.action(s, secret, Direction::Inbound), Some(GuardAction::Block), "{secret}");
        assert_eq!(g.action(s, secret, Direction::Outbound), Some(GuardAction::Mask), "{secret}");
    }
    for pii in ["kr_rrn", "credit_card", "iban"] {
        assert_eq!(g.action(s, pii, Direction::Inbound), Some(GuardAction::Mask), "{pii}");
        assert_eq!(g.action(s, pii, Direction::Outbound), Some(GuardAction::Mask), "{pii}");
    }
    for off in ["email", "phone"] {
        assert_eq!(g.action(s, off, Direction::Inbound), Some(GuardAction::Off), "{off}");
        assert_eq!(g.action(s, off, Direction::Outbound), Some(GuardAction::Off), "{off}");
    }
    assert_eq!(g.action(s, "nope", Direction::Inbound), None);
}

#[test]
fn a_result_is_masked_where_mcp_puts_text() {
    let g = default_guard();
    let mut result = json!({
        "content": [
            {"type": "text", "text": format!("RRN {RRN}, card {CARD}")},
            {"type": "image", "data": format!("{RRN}"), "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///a", "text": format!("key {AWS}")}},
            {"type": "resource", "resource": {"uri": "file:///b", "blob": RRN}},
        ],
        "structuredContent": {"user": {"rrn": RRN, "age": 35, RRN: "key"}},
        "isError": false,
    });
    let hits = pass(g.inspect_message(Shape::CallResult, &mut result, Scope::tool("hr", "lookup")));
    assert_eq!(result["content"][0]["text"], "RRN [REDACTED:kr_rrn], card [REDACTED:credit_card]");
    assert_eq!(result["content"][1]["data"], RRN, "image data is not read");
    assert_eq!(result["content"][2]["resource"]["text"], "key [REDACTED:aws_access_key]");
    assert_eq!(result["content"][3]["resource"]["blob"], RRN, "blobs are not read");
    assert_eq!(result["structuredContent"]["user"]["rrn"], "[REDACTED:kr_rrn]");
    assert_eq!(result["structuredContent"]["user"]["age"], 35);
    assert!(result["structuredContent"]["user"].get(RRN).is_some(), "keys are not read");
    let paths: Vec<(&str, &str)> = hits.iter().map(|h| (h.detector.as_str(), h.path.as_str())).collect();
    assert_eq!(
        paths,
        [
            ("kr_rrn", "/content/0/text"),
            ("credit_card", "/content/0/text"),
            ("aws_access_key", "/content/2/resource/text"),
            ("kr_rrn", "/structuredContent/user/rrn"),
        ]
    );
    let h = &hits[0];
    assert_eq!((h.server.as_str(), h.tool.as_deref(), h.direction), ("hr", Some("lookup"), Direction::Outbound));
    assert_eq!(h.action, GuardAction::Mask);
}

#[test]
fn a_call_with_a_secret_is_refused_and_left_as_it_came() {
    let g = default_guard();
    let mut params = json!({"name": "deploy", "arguments": {"note": format!("for {RRN}"), "env": {"KEY": AWS}}});
    let before = params.clone();
    let verdict = g.inspect_message(Shape::CallRequest, &mut params, Scope::tool("ci", "deploy"));
    let Verdict::Block { hit } = verdict else { panic!("{verdict:?}") };
    assert_eq!((hit.detector.as_str(), hit.path.as_str()), ("aws_access_key", "/arguments/env/KEY"));
    assert_eq!(hit.action, GuardAction::Block);
    assert_eq!(params, before, "the RRN masked before the block is put back");
    let words = hit.refusal();
    assert!(words.contains("aws_access_key") && words.contains("/arguments/env/KEY"), "{words}");
    assert!(!words.contains(AWS));
    // The tool's name is not an argument.
    let mut params = json!({"name": AWS, "arguments": {}});
    assert!(pass(g.inspect_message(Shape::CallRequest, &mut params, Scope::server("ci"))).is_empty());
}

#[test]
fn secrets_are_masked_outbound() {
    let g = default_guard();
    let mut v = json!({"contents": [{"uri": "file:///.env", "text": format!("AWS_ACCESS_KEY_ID={AWS}\n")}, {"uri": "x", "blob": AWS}]});
    let hits = pass(g.inspect_message(Shape::ReadResult, &mut v, Scope::server("fs")));
    assert_eq!(v["contents"][0]["text"], "AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key]\n");
    assert_eq!(v["contents"][1]["blob"], AWS);
    assert_eq!(hits.len(), 1);
}

#[test]
fn prompts_sampling_and_elicitation() {
    let g = default_guard();
    let mut prompt = json!({
        "description": format!("about {RRN}"),
        "messages": [
            {"role": "user", "content": {"type": "text", "text": format!("card {CARD}")}},
            {"role": "user", "content": [{"type": "text", "text": RRN}, {"type": "image", "data": RRN}]},
        ]
    });
    let hits = pass(g.inspect_message(Shape::PromptResult, &mut prompt, Scope::server("p")));
    assert_eq!(prompt["description"], "about [REDACTED:kr_rrn]");
    assert_eq!(prompt["messages"][0]["content"]["text"], "card [REDACTED:credit_card]");
    assert_eq!(prompt["messages"][1]["content"][0]["text"], "[REDACTED:kr_rrn]");
    assert_eq!(prompt["messages"][1]["content"][1]["data"], RRN);
    assert_eq!(hits[1].path, "/messages/0/content/text");

    let mut sampling = json!({"systemPrompt": format!("key {AWS}"), "messages": [{"role": "user", "content": {"type": "text", "text": RRN}}], "maxTokens": 10});
    let hits = pass(g.inspect_message(Shape::SamplingRequest, &mut sampling, Scope::server("p")));
    assert_eq!(sampling["systemPrompt"], "key [REDACTED:aws_access_key]");
    assert_eq!(hits.len(), 2);

    let mut elicit = json!({"message": format!("confirm {RRN}?"), "requestedSchema": {"type": "object"}});
    pass(g.inspect_message(Shape::ElicitationRequest, &mut elicit, Scope::server("p")));
    assert_eq!(elicit["message"], "confirm [REDACTED:kr_rrn]?");

    // What the client answers goes to the server: inbound, so a secret blocks.
    let mut answer = json!({"action": "accept", "content": {"token": AWS}});
    assert!(g.inspect_message(Shape::ElicitationResult, &mut answer, Scope::server("p")).is_block());
    let mut answer = json!({"role": "assistant", "content": {"type": "text", "text": AWS}, "model": "m"});
    assert!(g.inspect_message(Shape::SamplingResult, &mut answer, Scope::server("p")).is_block());
}

#[test]
fn shapes_of_methods() {
    assert_eq!(Shape::of("tools/call", false), Some(Shape::CallRequest));
    assert_eq!(Shape::of("tools/call", true), Some(Shape::CallResult));
    assert_eq!(Shape::of("resources/read", true), Some(Shape::ReadResult));
    assert_eq!(Shape::of("prompts/get", true), Some(Shape::PromptResult));
    assert_eq!(Shape::of("sampling/createMessage", false).map(Shape::direction), Some(Direction::Outbound));
    assert_eq!(Shape::of("elicitation/create", true).map(Shape::direction), Some(Direction::Inbound));
    assert_eq!(Shape::of("tools/list", true), None);
    assert_eq!(Shape::of("resources/read", false), None);
}

#[test]
fn overrides_per_server_and_tool() {
    let g = guard(
        r#"
guard:
  detectors:
    email: { action: log }
    kr_rrn: { action: block, direction: inbound }
  custom:
    - { name: employee_id, regex: "EMP-[0-9]{6}", keywords: [emp-], action: off }
mcpServers:
  hr:
    command: x
    guard: { detectors: { email: { action: mask }, employee_id: { action: mask } } }
    tools:
      export: { guard: { detectors: { email: { action: block, direction: outbound }, kr_rrn: { action: off } } } }
"#,
    );
    let (hr, export, other) = (Scope::server("hr"), Scope::tool("hr", "export"), Scope::server("other"));
    let act = |s, d, dir| g.action(s, d, dir).unwrap();
    assert_eq!(act(other, "email", Direction::Outbound), GuardAction::Log);
    assert_eq!(act(other, "kr_rrn", Direction::Inbound), GuardAction::Block);
    assert_eq!(act(other, "kr_rrn", Direction::Outbound), GuardAction::Mask, "the other direction keeps its default");
    assert_eq!(act(other, "employee_id", Direction::Outbound), GuardAction::Off);
    assert_eq!(act(hr, "email", Direction::Outbound), GuardAction::Mask);
    assert_eq!(act(hr, "employee_id", Direction::Inbound), GuardAction::Mask);
    assert_eq!(act(Scope::tool("hr", "search"), "email", Direction::Inbound), GuardAction::Mask);
    assert_eq!(act(export, "email", Direction::Outbound), GuardAction::Block);
    assert_eq!(act(export, "email", Direction::Inbound), GuardAction::Mask);
    assert_eq!(act(export, "kr_rrn", Direction::Inbound), GuardAction::Off);
    assert_eq!(act(export, "employee_id", Direction::Outbound), GuardAction::Mask);

    let mut v = json!({"text": "mail kim@example.com about Emp-123456 and EMP-123456"});
    let hits = pass(g.inspect(&mut v, Direction::Outbound, hr));
    assert_eq!(v["text"], "mail [REDACTED:email] about Emp-123456 and [REDACTED:employee_id]");
    assert_eq!(hits.len(), 2);
    let mut v = json!({"text": "mail kim@example.com about EMP-123456"});
    let hits = pass(g.inspect(&mut v, Direction::Outbound, other));
    assert_eq!(v["text"], "mail kim@example.com about EMP-123456", "logged, not masked");
    assert_eq!((hits.len(), hits[0].action), (1, GuardAction::Log));
    let mut v = json!({"text": "kim@example.com"});
    assert!(g.inspect(&mut v, Direction::Outbound, export).is_block());
}

#[test]
fn enabled_false_turns_every_detector_off_at_its_level() {
    let g = guard(
        r#"
guard:
  detectors: { email: { action: mask } }
mcpServers:
  trusted: { command: x, guard: { enabled: false } }
  only_keys: { command: x, guard: { enabled: false, detectors: { aws_access_key: { action: block } } } }
  mixed:
    command: x
    guard: { enabled: false }
    tools:
      risky: { guard: { enabled: true } }
"#,
    );
    for d in [Direction::Inbound, Direction::Outbound] {
        assert!(!g.watches(Scope::server("trusted"), d), "nothing is read for a trusted server");
        assert!(!g.watches(Scope::tool("mixed", "other"), d));
        assert!(g.watches(Scope::server("elsewhere"), d));
    }
    let act = |s, d, dir| g.action(s, d, dir).unwrap();
    assert_eq!(act(Scope::server("only_keys"), "aws_access_key", Direction::Outbound), GuardAction::Block);
    assert_eq!(act(Scope::server("only_keys"), "kr_rrn", Direction::Outbound), GuardAction::Off);
    // `enabled: true` starts again from the built-in defaults.
    assert_eq!(act(Scope::tool("mixed", "risky"), "aws_access_key", Direction::Inbound), GuardAction::Block);
    assert_eq!(act(Scope::tool("mixed", "risky"), "email", Direction::Outbound), GuardAction::Off);

    let off = guard("guard: { enabled: false }\nmcpServers: { s: { command: x } }\n");
    assert!(!off.watches(Scope::server("s"), Direction::Inbound));
    let mut v = json!({"text": AWS});
    assert!(pass(off.inspect(&mut v, Direction::Inbound, Scope::server("s"))).is_empty());
}

#[test]
fn partial_masks() {
    let g = guard(
        r#"
guard:
  detectors:
    kr_rrn: { mask: partial }
    credit_card: { keep_suffix: 4 }
    email: { action: mask, mask: partial }
    phone: { action: mask, mask: partial }
    iban: { keep_prefix: 2, keep_suffix: 0 }
  custom:
    - { name: ticket, regex: "T-[0-9]{8}", keywords: ["T-"], keep_prefix: 2 }
"#,
    );
    let mut v = json!([
        RRN,
        "9001011234568",
        CARD,
        "4111-1111-1111-1111",
        "kim.minsu@example.com",
        "010-1234-5678",
        "GB82 WEST 1234 5698 7654 32",
        "ticket T-12345678"
    ]);
    pass(g.inspect(&mut v, Direction::Outbound, Scope::server("s")));
    assert_eq!(
        v,
        json!([
            "900101-1******",
            "9001011******",
            "**** **** **** 1111",
            "****-****-****-1111",
            "k**.*****@example.com",
            "***-****-5678",
            "GB** **** **** **** **** **",
            "ticket T-1*******"
        ])
    );
}

#[test]
fn overlapping_values_earliest_then_longest() {
    let g = guard("guard: {custom: [{name: long_num, regex: '[0-9]{6}-[0-9]{7}', keywords: ['-']}]}\n");
    let mut v = json!(format!("a {RRN} b"));
    let hits = pass(g.inspect(&mut v, Direction::Outbound, Scope::server("s")));
    // Both found, one mask: same start and length, the built-in first.
    assert_eq!(v, json!("a [REDACTED:kr_rrn] b"));
    assert_eq!(hits.len(), 2);
}

#[test]
fn data_uris_and_short_strings_are_skipped() {
    let g = default_guard();
    let mut v = json!({"img": format!("data:image/png;base64,{AWS}"), "short": "AKIA"});
    assert!(pass(g.inspect(&mut v, Direction::Inbound, Scope::server("s"))).is_empty());
}

#[test]
fn json_pointers_escape_keys() {
    let g = default_guard();
    let mut v = json!({"a/b": {"c~d": [RRN]}});
    let hits = pass(g.inspect(&mut v, Direction::Outbound, Scope::server("s")));
    assert_eq!(hits[0].path, "/a~1b/c~0d/0");
    assert!(v.pointer(&hits[0].path).is_some());
}

#[test]
fn nothing_active_means_nothing_read() {
    let g = guard(
        "guard: {detectors: {kr_rrn: {action: off}, credit_card: {action: off}, iban: {action: off}, \
         aws_access_key: {action: off}, aws_secret_key: {action: off}, github_token: {action: off}, \
         gitlab_token: {action: off}, slack_token: {action: off}, openai_key: {action: off}, jwt: {action: off}, \
         private_key: {action: off}, bastion_key: {action: off}}}\n",
    );
    let mut v = json!([RRN, AWS]);
    assert!(pass(g.inspect(&mut v, Direction::Inbound, Scope::server("s"))).is_empty());
    assert_eq!(v, json!([RRN, AWS]));
}

#[test]
fn hits_serialize_without_values() {
    let g = default_guard();
    let mut v = json!({"x": format!("{RRN}")});
    let hits = pass(g.inspect(&mut v, Direction::Outbound, Scope::server("s")));
    let text = serde_json::to_string(&hits).unwrap();
    assert_eq!(text, r#"[{"detector":"kr_rrn","direction":"outbound","server":"s","path":"/x","action":"mask"}]"#);
}
