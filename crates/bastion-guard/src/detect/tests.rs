use std::path::Path;

use bastion_core::config::Config;

use super::*;

fn detectors(yaml: &str) -> Detectors {
    let config = Config::parse(Path::new("bastion.yaml"), yaml).unwrap();
    Detectors::new(&config.guard).unwrap()
}

fn found(d: &Detectors, text: &str) -> Vec<(String, String)> {
    d.find(text).iter().map(|m| (d.name(m.detector).to_string(), text[m.start..m.end].to_string())).collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn builtin_names_are_in_the_configuration_order() {
    let d = Detectors::new(&GuardConfig::default()).unwrap();
    assert_eq!(d.len(), BUILTIN_DETECTORS.len());
    for (i, b) in BUILTINS.iter().enumerate() {
        assert_eq!(d.name(b.id()), BUILTIN_DETECTORS[i]);
        assert_eq!(d.id(BUILTIN_DETECTORS[i]), Some(b.id()));
    }
}

#[test]
fn custom_detectors_with_and_without_keywords_and_validators() {
    let d = detectors(
        r#"
guard:
  custom:
    - { name: employee_id, regex: "EMP-[0-9]{6}", keywords: [emp-] }
    - { name: ticket, regex: "\\bTK[0-9]{5}\\b" }
    - { name: member_card, regex: "M[0-9]{16}", keywords: [M], validator: luhn }
    - { name: legacy_rrn, regex: "[0-9]{6}/[0-9]{7}", validator: kr_rrn }
    - { name: account, regex: "(?i)\\b[a-z]{2}[0-9]{2}(?: ?[a-z0-9]{4}){3,7}(?: ?[a-z0-9]{1,3})?\\b", validator: iban }
"#,
    );
    assert_eq!(
        found(&d, "EMP-123456 and emp-123456 and TK12345, TK123456"),
        [pair("employee_id", "EMP-123456"), pair("ticket", "TK12345")]
    );
    assert_eq!(found(&d, "M4111111111111111 M4111111111111112"), [pair("member_card", "M4111111111111111")]);
    assert_eq!(found(&d, "old 900101/1234568 900101/1234567"), [pair("legacy_rrn", "900101/1234568")]);
    assert_eq!(
        found(&d, "gb82 west 1234 5698 7654 32; gb82 west 1234 5698 7654 33"),
        [pair("account", "gb82 west 1234 5698 7654 32")]
    );
    // No keyword, no attempt: the set says the pattern cannot match.
    assert!(found(&d, "nothing here at all").is_empty());
}

#[test]
fn disabled_detectors_find_nothing() {
    let config = GuardConfig::default();
    let mut only = DetectorSet::default();
    only.insert(Builtin::KrRrn.id());
    let d = Detectors::build(&config, Some(only)).unwrap();
    let text = "AKIAIOSFODNN7EXAMPLE 900101-1234568 4111 1111 1111 1111";
    assert_eq!(found(&d, text), [pair("kr_rrn", "900101-1234568")]);
}

#[test]
fn values_in_running_text() {
    let d = Detectors::new(&GuardConfig::default()).unwrap();
    let text = "고객 홍길동(900101-1234568)의 카드 4111-1111-1111-1111, 연락처 010-1234-5678, \
                메일 hong@example.co.kr, 계좌 DE89 3704 0044 0532 0130 00.";
    assert_eq!(
        found(&d, text),
        [
            pair("kr_rrn", "900101-1234568"),
            pair("credit_card", "4111-1111-1111-1111"),
            pair("phone", "010-1234-5678"),
            pair("email", "hong@example.co.kr"),
            pair("iban", "DE89 3704 0044 0532 0130 00"),
        ]
    );
}

#[test]
fn matches_are_ordered_and_on_char_boundaries() {
    let d = Detectors::new(&GuardConfig::default()).unwrap();
    let text = "é4111111111111111é 한글AKIAIOSFODNN7EXAMPLE한글 900101-1234568";
    let ms = d.find(text);
    assert!(ms.windows(2).all(|w| w[0].start <= w[1].start));
    for m in &ms {
        assert!(text.is_char_boundary(m.start) && text.is_char_boundary(m.end));
    }
    // Letters of any script are not word characters for numbers and keys.
    assert_eq!(ms.len(), 3, "{:?}", found(&d, text));
}

#[test]
fn long_digit_lists_and_odd_input_do_not_break_the_scan() {
    let d = Detectors::new(&GuardConfig::default()).unwrap();
    let list: String = (0..200).map(|i| format!("{i} ")).collect();
    assert!(d.find(&list).is_empty());
    for text in ["", "@", "@@@@@@@", "-----BEGIN ", "eyJ.eyJ.", "sk-", "1-2-3-4-5-6-7-8-9", "+", "(((((((", "GB82"] {
        let _ = d.find(text);
    }
    let digits = "9".repeat(100_000);
    assert!(d.find(&digits).is_empty());
}
