//! The detector corpus: true positives and near misses per detector, in
//! `tests/corpus/<detector>.txt`, and ordinary text in `clean.txt`.
//!
//! A line `+ text` holds one or more values marked `[[…]]` that its file's
//! detector must find, exactly there; `- text` holds a near miss it must
//! not find. In `clean.txt` no detector may find anything. In the text,
//! `\n` is a line break and `\\` a backslash. Prints precision and recall
//! per detector (`--nocapture`) and asserts that nothing is missed and
//! nothing is found wrongly.

use std::collections::BTreeMap;
use std::path::Path;

use bastion_core::config::{BUILTIN_DETECTORS, GuardConfig};
use bastion_guard::Detectors;

#[derive(Default)]
struct Score {
    positives: usize,
    negatives: usize,
    tp: usize,
    fp: usize,
    fn_: usize,
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A line of the corpus: the text without its marks, the spans marked
/// `[[…]]`, and those marked `{{detector|…}}` (values of another detector,
/// expected there).
type Marked = (String, Vec<(usize, usize)>, Vec<(String, usize, usize)>);

fn marked(line: &str) -> Marked {
    let mut text = String::new();
    let (mut spans, mut others) = (Vec::new(), Vec::new());
    let mut rest = line;
    loop {
        let next = [rest.find("[["), rest.find("{{")].into_iter().flatten().min();
        let Some(open) = next else { break };
        text.push_str(&rest[..open]);
        let other = rest[open..].starts_with("{{");
        let after = &rest[open + 2..];
        let close = after.find(if other { "}}" } else { "]]" }).expect("a mark is closed");
        let mut inner = &after[..close];
        let mut detector = String::new();
        if other {
            let (d, v) = inner.split_once('|').expect("{{detector|value}}");
            detector = d.to_string();
            inner = v;
        }
        let start = text.len();
        text.push_str(inner);
        if other {
            others.push((detector, start, text.len()));
        } else {
            spans.push((start, text.len()));
        }
        rest = &after[close + 2..];
    }
    text.push_str(rest);
    (text, spans, others)
}

#[test]
fn corpus_precision_and_recall() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let detectors = Detectors::new(&GuardConfig::default()).unwrap();
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut clean_lines = 0;
    for name in BUILTIN_DETECTORS.iter().copied().chain(["clean"]) {
        let text = std::fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap();
        for raw in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (sign, body) = raw.split_at(2);
            let (line, spans, others) = marked(&unescape(body));
            let found = detectors.find(&line);
            for m in &found {
                let detector = detectors.name(m.detector).to_string();
                let expected = detector == name && spans.contains(&(m.start, m.end))
                    || others.contains(&(detector.clone(), m.start, m.end));
                if !expected {
                    scores.entry(detector.clone()).or_default().fp += 1;
                    failures.push(format!("{detector} found {:?} in {name}: {raw}", &line[m.start..m.end]));
                }
            }
            if name == "clean" {
                clean_lines += 1;
                continue;
            }
            let score = scores.entry(name.to_string()).or_default();
            match sign {
                "+ " => {
                    assert!(!spans.is_empty(), "a positive without a mark: {raw}");
                    for span in &spans {
                        score.positives += 1;
                        let hit = found.iter().any(|m| detectors.name(m.detector) == name && (m.start, m.end) == *span);
                        if hit {
                            score.tp += 1;
                        } else {
                            score.fn_ += 1;
                            failures.push(format!("{name} missed {:?}: {raw}", &line[span.0..span.1]));
                        }
                    }
                }
                "- " => score.negatives += 1,
                _ => panic!("a line starts with `+ ` or `- `: {raw}"),
            }
        }
    }
    println!("| detector | positives | near misses | precision | recall |");
    println!("|---|---:|---:|---:|---:|");
    for (name, s) in &scores {
        let precision = if s.tp + s.fp == 0 { 1.0 } else { s.tp as f64 / (s.tp + s.fp) as f64 };
        let recall = if s.positives == 0 { 1.0 } else { s.tp as f64 / s.positives as f64 };
        println!("| {name} | {} | {} | {precision:.2} | {recall:.2} |", s.positives, s.negatives);
    }
    println!("({clean_lines} lines of ordinary text, on which every detector runs)");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for name in BUILTIN_DETECTORS {
        let s = &scores[*name];
        assert!(s.positives >= 4 && s.negatives >= 4, "{name}: too few cases");
    }
}
