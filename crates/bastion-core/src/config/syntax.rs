//! Parse errors that say where and what, never the text.
//!
//! A configuration file holds secrets (`env`, `headers`, URLs with
//! passwords). The parsers' own error messages quote what they found — YAML
//! errors even print the surrounding lines — so a broken file would leak a
//! token into a terminal, a log or a CI transcript. Messages are built here
//! from the errors' structured parts instead: the key path, the line and
//! column, and the kind of problem with any quoted value taken out.

use serde::de::DeserializeOwned;
use serde_saphyr::Error as YamlError;

/// What went wrong, where: the pieces of [`super::ConfigError::Syntax`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    /// Dotted key path (`mcpServers.a.env`); `None` at the top level.
    pub key: Option<String>,
    /// 1-based line and column, when the parser knows them.
    pub position: Option<(u64, u64)>,
    /// The kind of problem, free of values from the file.
    pub message: String,
}

/// The path as `a.b[0].c`, without the `?` serde_path_to_error writes for a
/// key it has not read yet.
fn key_of(path: &serde_path_to_error::Path) -> Option<String> {
    let key = path.to_string();
    let mut key = key.as_str();
    while let Some(parent) = key.strip_suffix(".?") {
        key = parent;
    }
    (key != "." && key != "?").then(|| printable(key))
}

/// Control characters escaped, so that a key read from the file cannot
/// break a log line or a terminal.
pub(super) fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A field name worth repeating: the shape of the schema's own names. An
/// unknown key of another shape is more likely a value in the wrong place.
fn field_name(field: &str) -> Option<&str> {
    (!field.is_empty()
        && field.len() <= 64
        && field.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    .then_some(field)
}

fn unknown_field(field: &str, expected: &str) -> String {
    match field_name(field) {
        Some(f) => format!("unknown field `{f}`, expected {expected}"),
        None => format!("unknown field, expected {expected}"),
    }
}

pub(super) fn json<T: DeserializeOwned>(text: &str) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = key_of(e.path());
        let inner = e.inner();
        let position = (inner.line() > 0).then(|| (inner.line() as u64, inner.column() as u64));
        let message = scrub(strip_position(&inner.to_string()));
        Problem { key, position, message }
    })
}

pub(super) fn yaml<T: DeserializeOwned>(text: &str) -> Result<T, Problem> {
    let mut options = serde_saphyr::Options::default();
    // The snippet would print lines of the file.
    options.with_snippet = false;
    let mut key = None;
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            key = key_of(e.path());
            e.into_inner()
        })
    })
    .map_err(|e| {
        let position = e.location().filter(|l| l.line() > 0).map(|l| (l.line(), l.column()));
        Problem { key, position, message: yaml_message(&e) }
    })
}

/// The kind of a YAML error, from its variant; values it carries are left out.
fn yaml_message(e: &YamlError) -> String {
    match e {
        YamlError::WithSnippet { error, .. } => yaml_message(error),
        YamlError::AliasError { error, .. } => yaml_message(error),
        YamlError::SerdeInvalidType { unexpected, expected, .. } => {
            format!("invalid type: {}, expected {expected}", kind_of(unexpected))
        }
        YamlError::SerdeInvalidValue { unexpected, expected, .. } => {
            format!("invalid value: {}, expected {expected}", kind_of(unexpected))
        }
        YamlError::SerdeInvalidLength { len, expected, .. } => format!("invalid length {len}, expected {expected}"),
        YamlError::SerdeUnknownVariant { expected, .. } => format!("unknown variant, expected {}", one_of(expected)),
        YamlError::SerdeUnknownField { field, expected, .. } => unknown_field(field, &one_of(expected)),
        YamlError::SerdeMissingField { field, .. } => format!("missing field `{field}`"),
        YamlError::DuplicateMappingKey { .. } => "duplicate key".into(),
        YamlError::NonFiniteFloat { .. } => "a number that is not finite".into(),
        YamlError::QuotingRequired { .. } => "a value that must be quoted".into(),
        YamlError::TaggedEnumMismatch { .. } => "a tag that does not match the expected kind".into(),
        YamlError::UnknownAnchor { .. } => "an alias to an unknown anchor".into(),
        YamlError::Eof { .. } => "unexpected end of the file".into(),
        YamlError::MultipleDocuments { .. } => "more than one YAML document".into(),
        YamlError::Budget { .. } => "the document exceeds the parser's limits (aliases, depth or size)".into(),
        YamlError::InvalidUtf8Input => "the file is not UTF-8".into(),
        YamlError::Message { msg, .. }
        | YamlError::ExternalMessage { msg, .. }
        | YamlError::HookError { msg, .. }
        | YamlError::SerdeVariantId { msg, .. } => scrub(msg),
        // Everything else renders a fixed text; its position is stripped
        // (the caller reports it) and any quoted part taken out all the same.
        other => scrub(strip_position(&other.to_string())),
    }
}

fn one_of(expected: &[&str]) -> String {
    match expected {
        [] => "nothing here".into(),
        [one] => format!("`{one}`"),
        many => format!("one of {}", many.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ")),
    }
}

/// Serde's text for an unexpected value (`string "x"`, `integer `5``, `map`)
/// reduced to the kind alone.
fn kind_of(unexpected: &str) -> &'static str {
    const KINDS: &[&str] = &[
        "boolean",
        "integer",
        "floating point",
        "character",
        "string",
        "byte array",
        "unit value",
        "Option value",
        "newtype struct",
        "sequence",
        "map",
        "enum",
        "unit variant",
        "newtype variant",
        "tuple variant",
        "struct variant",
        "null",
    ];
    let head = unexpected.split(['`', '"']).next().unwrap_or("").trim();
    KINDS.iter().find(|k| **k == head).copied().unwrap_or("a value of another type")
}

/// Serde's messages, with anything quoted from the input taken out.
///
/// `invalid type: string "x", expected …` keeps the kind (`string`);
/// `unknown variant `x`, expected …` loses the variant; any other double-
/// quoted part becomes `"…"`. Backquoted names (fields, expected variants)
/// come from the schema and stay.
pub(super) fn scrub(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((unexpected, expected)) = rest.rsplit_once(", expected ")
        {
            return format!("{prefix}{}, expected {}", kind_of(unexpected), quoted_out(expected));
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ")
        && let Some((_, expected)) = rest.rsplit_once(", expected ")
    {
        return format!("unknown variant, expected {}", quoted_out(expected));
    }
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.rsplit_once("`, expected ")
    {
        return unknown_field(field, &quoted_out(expected));
    }
    printable(&quoted_out(msg))
}

/// Every `"…"` span (backslash escapes honoured; an unclosed quote runs to
/// the end) replaced by `"…"`.
fn quoted_out(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push_str("…\"");
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
        }
    }
    out
}

/// Serde's messages end in ` at line L column C` (JSON) or
/// ` at line L, column C` (YAML); the position is reported separately.
fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scrubs_serde_messages() {
        assert_eq!(
            scrub(r#"invalid type: string "ghp_s3cret", expected a sequence"#),
            "invalid type: string, expected a sequence"
        );
        assert_eq!(scrub("invalid type: integer `5`, expected a string"), "invalid type: integer, expected a string");
        assert_eq!(
            scrub("invalid value: string \"a, expected b\", expected a duration"),
            "invalid value: string, expected a duration"
        );
        assert_eq!(
            scrub("unknown variant `ghp_s3cret`, expected one of `stdio`, `sse`"),
            "unknown variant, expected one of `stdio`, `sse`"
        );
        assert_eq!(scrub("missing field `command`"), "missing field `command`");
        assert_eq!(
            scrub("unknown field `listen_typo`, expected one of `listen`"),
            "unknown field `listen_typo`, expected one of `listen`"
        );
        assert_eq!(scrub("unknown field `ghp s3cret!`, expected `a`"), "unknown field, expected `a`");
        assert_eq!(scrub("a\nb\u{1b}"), "a\\nb\\u{1b}");
        assert_eq!(scrub(r#"odd "ghp_s3cret" here "and"#), r#"odd "…" here "…""#);
        assert_eq!(scrub(r#"odd "a\"s3cret\\" here"#), r#"odd "…" here"#);
    }

    #[test]
    fn kinds_only() {
        assert_eq!(kind_of(r#"string "x""#), "string");
        assert_eq!(kind_of("map"), "map");
        assert_eq!(kind_of("ghp_s3cret"), "a value of another type");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A value serde quotes never survives scrubbing.
        #[test]
        fn quoted_values_never_survive(secret in "[A-Za-z0-9_]{8,40}", expected in "[a-z ]{1,20}") {
            let secret = format!("SECRET{secret}");
            for msg in [
                format!("invalid type: string {secret:?}, expected {expected}"),
                format!("invalid value: string {secret:?}, expected {expected}"),
                format!("unknown variant `{secret}`, expected {expected}"),
                format!("something about {secret:?} went wrong"),
                format!("something about {:?} went wrong", format!("a\"{secret}\\")),
            ] {
                let out = scrub(&msg);
                prop_assert!(!out.contains(&secret), "{}", out);
            }
        }
    }
}
