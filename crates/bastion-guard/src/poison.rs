//! Poisoned descriptions: what a server lists (tools, prompts) read for
//! what a model would obey but a person would not see or expect.
//!
//! - hidden-instruction markers: `<IMPORTANT>`-style tags, prompt-format
//!   markers, "ignore previous instructions", "do not tell the user";
//! - references to files that hold credentials (`~/.ssh`, `id_rsa`,
//!   `.env`, `~/.aws/credentials`, …);
//! - invisible or deceptive characters: zero-width, bidirectional
//!   overrides, the tag block (U+E0000–E007F, text invisible on screen but
//!   read by a model), variation selectors used to smuggle bytes, Hangul
//!   fillers, other control characters;
//! - ANSI escape sequences (a terminal would hide or rewrite text);
//! - across servers: a description naming another server's tool
//!   (shadowing: "when `send_email` is called, also …"), and tool names
//!   that differ from another server's only in case or `-`/`_`.
//!
//! Every string of an item is read — name, title, description, and every
//! string and property name of its schemas and annotations — except
//! `icons` and `_meta`. A finding says what and where, with at most a
//! few words of the text.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::RegexSet;
use serde::Serialize;
use serde_json::Value;

/// What kind of poisoning a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Tags, markers or sentences that address the model rather than
    /// describe the tool.
    HiddenInstruction,
    /// A file that holds credentials is named.
    SensitiveFile,
    /// Characters a person does not see: zero-width, bidirectional
    /// controls, tag characters, control characters.
    InvisibleCharacter,
    /// A terminal escape sequence.
    AnsiEscape,
    /// Another server's tool is named.
    Shadowing,
    /// The name differs from another server's tool only in case (or `-`
    /// and `_`).
    NameCollision,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::HiddenInstruction => "hidden_instruction",
            FindingKind::SensitiveFile => "sensitive_file",
            FindingKind::InvisibleCharacter => "invisible_character",
            FindingKind::AnsiEscape => "ansi_escape",
            FindingKind::Shadowing => "shadowing",
            FindingKind::NameCollision => "name_collision",
        }
    }
}

/// One problem with one item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub server: String,
    /// The tool or prompt, as its server names it.
    pub item: String,
    /// A JSON pointer into the item: `/description`,
    /// `/inputSchema/properties/path/description`.
    pub field: String,
    /// A short reason, for people.
    pub reason: String,
}

/// Reads one tool of a server's `tools/list`.
pub fn scan_tool(server: &str, tool: &Value) -> Vec<Finding> {
    scan_item(server, tool)
}

/// Reads one prompt of a server's `prompts/list`.
pub fn scan_prompt(server: &str, prompt: &Value) -> Vec<Finding> {
    scan_item(server, prompt)
}

fn scan_item(server: &str, item: &Value) -> Vec<Finding> {
    let name = item.get("name").and_then(Value::as_str).unwrap_or("");
    let mut out = Vec::new();
    let mut report = |kind, field: &str, reason: String| {
        out.push(Finding { kind, server: server.to_string(), item: name.to_string(), field: field.to_string(), reason })
    };
    strings(item, &mut String::new(), &mut |field, text, is_key| {
        check_text(text, is_key, &mut |k, r| report(k, field, r))
    });
    dedup(out)
}

/// Reads every server's tools, and what only the whole catalog shows:
/// shadowing and names colliding after case folding. `servers` gives each
/// server's name and its listed tools.
pub fn scan_catalog<'a>(servers: impl IntoIterator<Item = (&'a str, &'a [Value])>) -> Vec<Finding> {
    let servers: Vec<(&str, &[Value])> = servers.into_iter().collect();
    let mut out = Vec::new();
    // Tool names, by server.
    let mut owners: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (server, tools) in &servers {
        for t in tools.iter() {
            out.extend(scan_tool(server, t));
            if let Some(name) = t.get("name").and_then(Value::as_str) {
                owners.entry(name).or_default().insert(server);
            }
        }
    }
    collisions(&servers, &mut out);
    shadowing(&servers, &owners, &mut out);
    dedup(out)
}

fn dedup(mut out: Vec<Finding>) -> Vec<Finding> {
    out.sort();
    out.dedup();
    out
}

/// Names equal once case is folded and `-` read as `_`, but not equal.
fn collisions(servers: &[(&str, &[Value])], out: &mut Vec<Finding>) {
    let fold = |s: &str| s.to_lowercase().replace('-', "_");
    let mut by_fold: BTreeMap<String, Vec<(&str, &str)>> = BTreeMap::new();
    for (server, tools) in servers {
        for name in tools.iter().filter_map(|t| t.get("name").and_then(Value::as_str)) {
            by_fold.entry(fold(name)).or_default().push((server, name));
        }
    }
    for group in by_fold.values() {
        for (server, name) in group {
            if let Some((other_server, other)) = group.iter().find(|(s, n)| s != server && n != name) {
                out.push(Finding {
                    kind: FindingKind::NameCollision,
                    server: server.to_string(),
                    item: name.to_string(),
                    field: "/name".into(),
                    reason: format!(
                        "differs only in case or `-`/`_` from `{}` of server `{other_server}`",
                        short(other)
                    ),
                });
            }
        }
    }
}

/// Descriptions naming a tool of another server (one the describing server
/// does not have itself). A name that is a plain word (`search`, `fetch`)
/// counts only quoted or followed by "tool"; a name with `_`, `-`, digits
/// or capitals counts anywhere as a whole word.
fn shadowing(servers: &[(&str, &[Value])], owners: &BTreeMap<&str, BTreeSet<&str>>, out: &mut Vec<Finding>) {
    let names: Vec<&str> = owners.keys().copied().filter(|n| n.len() >= 3).collect();
    if names.is_empty() {
        return;
    }
    let Ok(ac) = AhoCorasick::builder().match_kind(MatchKind::Standard).build(&names) else {
        return;
    };
    for (server, tools) in servers {
        for t in tools.iter() {
            let item = t.get("name").and_then(Value::as_str).unwrap_or("");
            strings(t, &mut String::new(), &mut |field, text, is_key| {
                if is_key || field == "/name" {
                    return;
                }
                for m in ac.find_overlapping_iter(text) {
                    let name = names[m.pattern().as_usize()];
                    let who = &owners[name];
                    if who.contains(server) || !mentioned(text, m.start(), m.end(), name) {
                        continue;
                    }
                    let other = who.iter().next().copied().unwrap_or("");
                    out.push(Finding {
                        kind: FindingKind::Shadowing,
                        server: server.to_string(),
                        item: item.to_string(),
                        field: field.to_string(),
                        reason: format!("names `{}`, a tool of server `{other}`", short(name)),
                    });
                }
            });
        }
    }
}

/// Whether `name` at `text[s..e]` is a mention of the tool, not part of a
/// word or a plain word used as one.
fn mentioned(text: &str, s: usize, e: usize, name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    let before = text[..s].chars().next_back();
    let after = text[e..].chars().next();
    if before.is_some_and(word) || after.is_some_and(word) {
        return false;
    }
    let plain = name.chars().all(|c| c.is_ascii_lowercase());
    if !plain {
        return true;
    }
    let quote = |c: Option<char>| matches!(c, Some('`' | '"' | '\'' | '“' | '”' | '‘' | '’'));
    quote(before) && quote(after) || text[e..].trim_start().to_ascii_lowercase().starts_with("tool")
}

/// Calls `f(field, text, is_key)` for every string of `v` and every key of
/// its objects, with the JSON pointer of where it is; `icons` and `_meta`
/// are left out.
fn strings(v: &Value, at: &mut String, f: &mut dyn FnMut(&str, &str, bool)) {
    match v {
        Value::String(s) => f(at, s, false),
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                strings(x, at, f);
                at.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, x) in map {
                if at.is_empty() && (k == "icons" || k == "_meta") {
                    continue;
                }
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                f(at, k, true);
                strings(x, at, f);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// A few characters of `s`, printable, for a reason.
fn short(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(40)
        .map(|c| if c.is_control() || invisible(c, None, None).is_some() { '?' } else { c })
        .collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

/// Why a character is invisible or deceptive, if it is. A zero-width
/// joiner between two non-ASCII characters (an emoji sequence) is not.
fn invisible(c: char, before: Option<char>, after: Option<char>) -> Option<&'static str> {
    Some(match c {
        '\u{200D}' if before.is_some_and(|b| !b.is_ascii()) && after.is_some_and(|a| !a.is_ascii()) => return None,
        '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' => "a zero-width character",
        '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
            "a bidirectional control character"
        }
        '\u{E0000}'..='\u{E007F}' => "Unicode tag characters (text hidden from view)",
        '\u{E0100}'..='\u{E01EF}' | '\u{180B}'..='\u{180D}' | '\u{180F}' => "variation selectors (hidden bytes)",
        '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{3164}' | '\u{FFA0}' => {
            "an invisible filler character"
        }
        '\u{206A}'..='\u{206F}' | '\u{FFF9}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}' => {
            "an invisible format character"
        }
        _ => return None,
    })
}

struct Markers {
    set: RegexSet,
    kinds: Vec<(FindingKind, &'static str)>,
    regexes: Vec<regex::Regex>,
}

fn markers() -> &'static Markers {
    static MARKERS: OnceLock<Markers> = OnceLock::new();
    MARKERS.get_or_init(|| {
        use FindingKind::*;
        let table: &[(FindingKind, &str, &str)] = &[
            (
                HiddenInstruction,
                "an instruction tag",
                r"(?i)<\s*/?\s*(important|system|instructions?|secret|hidden|admin|critical|override|assistant)\s*>",
            ),
            (HiddenInstruction, "a prompt-format marker", r"(?i)\[/?(inst|system)\]|<\|im_(start|end)\|>|<\|(system|user|assistant)\|>"),
            (
                HiddenInstruction,
                "tells the model to ignore earlier instructions",
                r"(?i)\b(ignore|disregard|forget|override)\s+(all\s+|any\s+|the\s+|your\s+)*(previous|prior|above|earlier|preceding|former|other|original|system)\s+(instructions?|prompts?|rules|directions|guidelines|messages)",
            ),
            (
                HiddenInstruction,
                "tells the model to keep something from the user",
                r"(?i)\b(do\s+not|don'?t|never|must\s+not)\s+(tell|inform|mention|reveal|show|notify|alert|disclose|let)\b[^.\n]{0,40}\b(user|human|operator)s?\b",
            ),
            (
                HiddenInstruction,
                "tells the model to keep something from the user",
                r"(?i)\bwithout\s+(telling|informing|notifying|alerting|asking|showing)\s+(the\s+)?(user|human)|\b(hide|conceal)\b[^.\n]{0,30}\bfrom\s+the\s+(user|human)",
            ),
            (
                SensitiveFile,
                "names a file holding credentials",
                r"(?i)~/\.ssh|\.ssh/|\bid_(rsa|dsa|ecdsa|ed25519)\b|(^|[^\w.])\.env\b|~/\.aws|\.aws/credentials|/etc/(passwd|shadow)\b|\.netrc\b|\.npmrc\b|\.pypirc\b|\.git-credentials\b|\.docker/config\.json|\.kube/config|\bmcp\.json\b|claude_desktop_config|~/\.cursor|\.gnupg\b|wallet\.dat",
            ),
        ];
        Markers {
            set: RegexSet::new(table.iter().map(|(_, _, re)| *re)).expect("the markers compile"),
            kinds: table.iter().map(|(k, why, _)| (*k, *why)).collect(),
            regexes: table.iter().map(|(_, _, re)| regex::Regex::new(re).expect("the markers compile")).collect(),
        }
    })
}

/// The checks of one string.
fn check_text(text: &str, is_key: bool, report: &mut dyn FnMut(FindingKind, String)) {
    let place = if is_key { " in a property name" } else { "" };
    let mut prev = None;
    let mut chars = text.chars().peekable();
    let (mut invisible_seen, mut escape_seen) = (false, false);
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        if c == '\u{1B}' || c == '\u{9B}' {
            if !escape_seen {
                report(FindingKind::AnsiEscape, format!("an ANSI escape sequence{place}"));
                escape_seen = true;
            }
        } else if !invisible_seen {
            let why = invisible(c, prev, next)
                .or_else(|| (c.is_control() && !matches!(c, '\n' | '\r' | '\t')).then_some("a control character"));
            if let Some(why) = why {
                report(FindingKind::InvisibleCharacter, format!("{why} (U+{:04X}){place}", c as u32));
                invisible_seen = true;
            }
        }
        prev = Some(c);
    }
    let m = markers();
    for i in m.set.matches(text).iter() {
        let (kind, why) = m.kinds[i];
        let found = m.regexes[i].find(text).map(|f| short(f.as_str().trim())).unwrap_or_default();
        report(kind, format!("{why}: \"{found}\"{place}"));
    }
}

#[cfg(test)]
mod tests;
