use std::path::Path;

use super::*;
use crate::config::{Config, ConfigError};

fn yaml(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("bastion.yaml"), text)
}

#[test]
fn absent_sections_take_their_defaults() {
    let c = yaml("mcpServers:\n  a: {command: x}\n").unwrap();
    assert_eq!(c.guard, GuardConfig::default());
    assert_eq!(c.tools, ToolsConfig { pinning: Pinning::Auto, poisoning: Poisoning::Warn });
    assert_eq!(c.supply_chain, SupplyChain::Warn);
    let a = &c.servers["a"];
    assert_eq!(a.guard, GuardOverride::default());
    assert!(a.tools.is_empty() && a.pinning.is_none() && a.poisoning.is_none() && a.sha256.is_none());
}

/// The example of the configuration contract, as written.
#[test]
fn the_documented_shape_parses() {
    let digest = "a".repeat(64);
    let text = format!(
        r#"
guard:
  detectors:
    kr_rrn: {{ action: mask }}
    aws_access_key: {{ action: block, direction: inbound }}
    credit_card: {{ keep_suffix: 4 }}
  custom:
    - {{ name: employee_id, regex: "EMP-[0-9]{{6}}", action: mask }}
    - {{ name: card_ref, regex: "[0-9]{{16}}", keywords: [card], validator: luhn, direction: outbound, mask: partial }}
tools:
  pinning: auto
  poisoning: warn
supply_chain: warn
mcpServers:
  files:
    command: mcp-files
    guard: {{ detectors: {{ email: {{ action: mask }}, employee_id: {{ action: block }} }} }}
    tools:
      read_file: {{ guard: {{ detectors: {{ kr_rrn: {{ action: block, direction: outbound }} }} }} }}
    pinning: manual
    poisoning: quarantine
    sha256: {digest}
"#
    );
    let c = yaml(&text).unwrap();
    assert_eq!(c.guard.detectors["kr_rrn"].action, Some(GuardAction::Mask));
    let aws = &c.guard.detectors["aws_access_key"];
    assert_eq!((aws.action, aws.direction), (Some(GuardAction::Block), Some(GuardDirection::Inbound)));
    assert_eq!(c.guard.detectors["credit_card"].keep_suffix, Some(4));
    assert_eq!(c.guard.custom.len(), 2);
    let e = &c.guard.custom[0];
    assert_eq!((e.name.as_str(), e.regex.as_str()), ("employee_id", "EMP-[0-9]{6}"));
    assert_eq!((e.action, e.direction, e.validator), (GuardAction::Mask, GuardDirection::Both, Validator::None));
    let r = &c.guard.custom[1];
    assert_eq!(
        (r.validator, r.direction, r.mask),
        (Validator::Luhn, GuardDirection::Outbound, Some(MaskStyle::Partial))
    );
    let files = &c.servers["files"];
    assert_eq!(files.guard.detectors["email"].action, Some(GuardAction::Mask));
    assert_eq!(files.tools["read_file"].guard.detectors["kr_rrn"].direction, Some(GuardDirection::Outbound));
    assert_eq!((files.pinning, files.poisoning), (Some(Pinning::Manual), Some(Poisoning::Quarantine)));
    assert_eq!(files.sha256.as_deref(), Some(digest.as_str()));
    assert!(files.ignored.is_empty(), "{:?}", files.ignored);

    let c = yaml("tools: {pinning: off, poisoning: quarantine}\nsupply_chain: strict\n").unwrap();
    assert_eq!(c.tools, ToolsConfig { pinning: Pinning::Off, poisoning: Poisoning::Quarantine });
    assert_eq!(c.supply_chain, SupplyChain::Strict);
}

#[test]
fn json_files_take_the_same_keys() {
    let text = r#"{"mcpServers": {"a": {"command": "x", "guard": {"detectors": {"phone": {"action": "log"}}},
        "tools": {"t": {"guard": {"detectors": {}}}}}}, "guard": {"custom": [{"name": "x1", "regex": "X1-\\d+"}]}}"#;
    let c = Config::parse(Path::new("c.json"), text).unwrap();
    assert_eq!(c.servers["a"].guard.detectors["phone"].action, Some(GuardAction::Log));
    assert_eq!(c.guard.custom[0].action, GuardAction::Mask);
}

#[test]
fn mistakes_are_refused_with_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("guard: {detectors: {emial: {action: mask}}}\n", "guard.detectors.emial", "unknown detector"),
        ("guard: {detectors: {email: {action: hide}}}\n", "guard.detectors.email.action", "unknown variant"),
        ("guard: {detectors: {email: {direction: up}}}\n", "guard.detectors.email.direction", "unknown variant"),
        ("guard: {detectors: {email: {direction: inbound}}}\n", "guard.detectors.email.direction", "give an action"),
        ("guard: {detectors: {email: {acton: mask}}}\n", "guard.detectors.email", "acton"),
        ("guard: {detectors: {kr_rrn: {keep_prefix: 99}}}\n", "guard.detectors.kr_rrn.keep_prefix", "at most 32"),
        ("guard: {custom: [{name: jwt, regex: 'x+'}]}\n", "guard.custom[0].name", "built-in"),
        ("guard: {custom: [{name: a, regex: 'x+'}, {name: a, regex: 'y+'}]}\n", "guard.custom[1].name", "twice"),
        ("guard: {custom: [{name: Bad-Name, regex: 'x+'}]}\n", "guard.custom[0].name", "lower-case"),
        ("guard: {custom: [{name: a, regex: 'EMP-[0-9'}]}\n", "guard.custom[0].regex", "unclosed character class"),
        ("guard: {custom: [{name: a, regex: '(?=x)'}]}\n", "guard.custom[0].regex", "not a valid regular expression"),
        ("guard: {custom: [{name: a, regex: 'x*'}]}\n", "guard.custom[0].regex", "empty string"),
        ("guard: {custom: [{name: a, regex: ''}]}\n", "guard.custom[0].regex", "empty"),
        ("guard: {custom: [{name: a, regex: 'x', keywords: ['  ']}]}\n", "guard.custom[0].keywords[0]", "blank"),
        ("guard: {custom: [{name: a, regex: 'x', validator: crc}]}\n", "guard.custom[0].validator", "unknown variant"),
        ("guard: {custom: [{name: a}]}\n", "guard.custom[0]", "regex"),
        ("guard: {scan: all}\n", "guard", "scan"),
        ("tools: {pinning: always}\n", "tools.pinning", "unknown variant"),
        ("supply_chain: lax\n", "supply_chain", "unknown variant"),
        (
            "mcpServers: {a: {command: x, guard: {detectors: {nope: {action: mask}}}}}\n",
            "mcpServers.a.guard.detectors.nope",
            "unknown detector",
        ),
        (
            "mcpServers: {a: {command: x, tools: {t: {guard: {detectors: {nope: {}}}}}}}\n",
            "mcpServers.a.tools.t.guard.detectors.nope",
            "unknown detector",
        ),
        ("mcpServers: {a: {command: x, sha256: abc}}\n", "mcpServers.a.sha256", "64 hexadecimal"),
        (
            &"mcpServers: {a: {url: 'https://h/mcp', sha256: SHA}}\n".replace("SHA", &"0".repeat(64)),
            "mcpServers.a.sha256",
            "stdio",
        ),
    ];
    for (text, key, what) in cases {
        let err = yaml(text).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(what), "{text}: {err}");
    }
}

/// A custom detector's name may be used in a server's settings; a custom
/// pattern's text never appears in an error.
#[test]
fn custom_names_are_known_everywhere_and_patterns_stay_private() {
    let c = yaml(
        "guard: {custom: [{name: ticket, regex: 'T-[0-9]+', action: off}]}\n\
         mcpServers: {a: {command: x, guard: {detectors: {ticket: {action: mask}}}}}\n",
    )
    .unwrap();
    assert_eq!(c.servers["a"].guard.detectors["ticket"].action, Some(GuardAction::Mask));
    let err = yaml("guard: {custom: [{name: a, regex: 'SECRET-VALUE-[0-9'}]}\n").unwrap_err().to_string();
    assert!(!err.contains("SECRET-VALUE"), "{err}");
}

#[test]
fn too_many_custom_detectors() {
    let mut text = String::from("guard:\n  custom:\n");
    for i in 0..=MAX_CUSTOM_DETECTORS {
        text.push_str(&format!("    - {{name: d{i}, regex: 'D{i}-[0-9]+'}}\n"));
    }
    let err = yaml(&text).unwrap_err().to_string();
    assert!(err.contains("guard.custom") && err.contains("at most"), "{err}");
}
