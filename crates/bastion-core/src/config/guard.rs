//! The `guard`, `tools` and `supply_chain` keys, and what a server entry
//! adds to them: the data guard (sensitive values in messages) and the
//! checks of what servers offer (tool descriptions, their pins, the
//! executable a server runs).
//!
//! ```yaml
//! guard:
//!   detectors:                        # built-in detectors, by name (see BUILTIN_DETECTORS)
//!     kr_rrn: { action: mask, mask: partial }            # 900101-1******
//!     aws_access_key: { action: block, direction: inbound }
//!     credit_card: { keep_suffix: 4 }                    # **** **** **** 1111
//!   custom:
//!     - { name: employee_id, regex: "EMP-[0-9]{6}", keywords: [EMP-], action: mask }
//! tools:
//!   pinning: auto                     # auto | manual | off
//!   poisoning: warn                   # warn | quarantine
//! supply_chain: warn                  # warn | strict
//! mcpServers:
//!   files:
//!     command: mcp-files
//!     guard: { detectors: { email: { action: mask } } }  # this server only
//!     tools:
//!       read_file: { guard: { detectors: { kr_rrn: { action: block } } } }
//!     pinning: manual
//!     poisoning: quarantine
//!     sha256: 3f…                     # the command's executable, hex
//! ```
//!
//! An entry sets the action for the directions it names (default both);
//! the other direction keeps what it had: the built-in default, or for a
//! server the global entry, or for a tool the server's. Absent: the
//! built-in defaults (secrets blocked inbound and masked outbound, resident
//! registration numbers, card numbers and IBANs masked both ways, e-mail
//! addresses and phone numbers not looked for).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The built-in detectors, by the names the configuration uses.
pub const BUILTIN_DETECTORS: &[&str] = &[
    "email",
    "phone",
    "kr_rrn",
    "credit_card",
    "iban",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "openai_key",
    "jwt",
    "private_key",
    "bastion_key",
];

/// Custom detectors, at most: each is one bit of a detector set.
pub const MAX_CUSTOM_DETECTORS: usize = 100;

/// Longest custom regex, in bytes.
const MAX_REGEX_LEN: usize = 1024;

/// The data guard: what is looked for in messages and what is done when it
/// is found.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// `false` turns every detector off (those named in `detectors` beside
    /// it excepted), for every server that does not turn it back on.
    /// Default `true`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Settings of detectors, built-in or custom, by name. Default: none
    /// (the built-in defaults apply).
    #[serde(default)]
    pub detectors: BTreeMap<String, DetectorConfig>,
    /// Detectors of the operator's own. Default none.
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
}

/// What a server entry, or one of its tools, changes for itself. Custom
/// detectors are defined once, under `guard.custom`; one meant for a single
/// server is defined there with `action: off` and turned on here.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuardOverride {
    /// `false` turns every detector off here (those named in `detectors`
    /// beside it excepted): what a trusted server sends and receives is
    /// not read. `true` starts again from the built-in defaults. Default:
    /// inherited.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Settings of detectors, by name, over the global ones. Default none.
    #[serde(default)]
    pub detectors: BTreeMap<String, DetectorConfig>,
}

/// The settings of one detector at one level (global, server or tool).
/// Every field is optional: what is not given is inherited.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// What a finding leads to. Default: inherited (for a built-in
    /// detector at the global level, its built-in default).
    #[serde(default)]
    pub action: Option<GuardAction>,
    /// Which messages `action` is for. Default `both`.
    #[serde(default)]
    pub direction: Option<GuardDirection>,
    /// How a masked value is written: `redact` (`[REDACTED:<kind>]`) or
    /// `partial` (the detector's usual letters and digits kept, the others
    /// replaced by `*`). Default: inherited; at the top `redact`, or
    /// `partial` when `keep_prefix` or `keep_suffix` is given.
    #[serde(default)]
    pub mask: Option<MaskStyle>,
    /// Partial masking: letters and digits kept at the start. Characters
    /// other than letters and digits (`-`, spaces) are always kept.
    #[serde(default)]
    pub keep_prefix: Option<u8>,
    /// Partial masking: letters and digits kept at the end.
    #[serde(default)]
    pub keep_suffix: Option<u8>,
}

/// An operator's detector: a regular expression, optionally gated by
/// keywords and confirmed by a checksum.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    /// Its name in findings, masks (`[REDACTED:<name>]`) and settings:
    /// lower-case letters, digits and `_`, not a built-in name.
    pub name: String,
    /// The pattern (Rust `regex` syntax; no look-around or backreferences,
    /// so matching stays linear). It must not match the empty string.
    pub regex: String,
    /// Words (any case) of which at least one must occur in a value for the
    /// pattern to be tried. Default none: tried on every value, which costs
    /// more; give keywords when the pattern has a fixed part.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// A check a match must pass: `none`, `luhn` (its digits), `kr_rrn` (a
    /// resident registration number's date and check digit) or `iban`
    /// (country length and mod-97). Default `none`.
    #[serde(default)]
    pub validator: Validator,
    /// Default `mask`.
    #[serde(default = "default_custom_action")]
    pub action: GuardAction,
    /// Which messages `action` is for; the other direction is `off`.
    /// Default `both`.
    #[serde(default)]
    pub direction: GuardDirection,
    /// As for a built-in detector. Default `redact`.
    #[serde(default)]
    pub mask: Option<MaskStyle>,
    #[serde(default)]
    pub keep_prefix: Option<u8>,
    #[serde(default)]
    pub keep_suffix: Option<u8>,
}

fn default_custom_action() -> GuardAction {
    GuardAction::Mask
}

/// What a finding leads to.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    /// Not looked for.
    Off,
    /// Recorded only.
    Log,
    /// Replaced in the message, and recorded.
    Mask,
    /// The message is refused, and the refusal recorded.
    Block,
}

/// Which messages a setting is for. Inbound: what goes to a server (a
/// call's arguments, a client's answers to sampling and elicitation).
/// Outbound: what comes from a server (results, resource contents, prompt
/// messages, sampling and elicitation requests).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum GuardDirection {
    Inbound,
    Outbound,
    #[default]
    Both,
}

impl GuardDirection {
    /// Whether the setting covers inbound, outbound messages.
    pub fn covers(self) -> (bool, bool) {
        match self {
            GuardDirection::Inbound => (true, false),
            GuardDirection::Outbound => (false, true),
            GuardDirection::Both => (true, true),
        }
    }
}

/// How a masked value is written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MaskStyle {
    /// `[REDACTED:<kind>]`.
    #[default]
    Redact,
    /// Some letters and digits kept (`keep_prefix`, `keep_suffix`, or the
    /// detector's usual ones), the others `*`; the length is unchanged.
    Partial,
}

/// A check a custom detector's match must pass.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    #[default]
    None,
    Luhn,
    KrRrn,
    Iban,
}

/// The top-level `tools` key: how what servers list is checked.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Tool definitions pinned on first sight (`auto`), only by an operator
    /// (`manual`), or not at all (`off`). Default `auto`.
    #[serde(default)]
    pub pinning: Pinning,
    /// A description or schema with hidden instructions, invisible
    /// characters or another server's tool names: `warn` (logged and
    /// audited) or `quarantine` (the item is not served). Default `warn`.
    #[serde(default)]
    pub poisoning: Poisoning,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Pinning {
    #[default]
    Auto,
    Manual,
    Off,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Poisoning {
    #[default]
    Warn,
    Quarantine,
}

/// What is done with a stdio server whose launcher (`npx`, `uvx`,
/// `pipx run`, `docker run`…) fetches what it runs without an exact
/// version (see [`crate::supply_chain`]). An executable that does not match
/// its server's `sha256` is refused whatever this says: a pin written down
/// is always enforced.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SupplyChain {
    /// Logged at start-up and on reload, and reported by `config check`;
    /// the server runs.
    #[default]
    Warn,
    /// The server is not started: calls to it are answered with an error
    /// saying why, and `config check` fails.
    Strict,
}

/// Per-tool settings under a server's `tools`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// The data guard for this tool, over the server's settings. Default:
    /// the server's.
    #[serde(default)]
    pub guard: GuardOverride,
}

/// Whether a detector name is acceptable for a custom detector.
fn valid_custom_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase()
}

impl GuardConfig {
    /// The names a detector setting may use: the built-in ones and the
    /// custom ones.
    pub fn detector_names(&self) -> BTreeSet<&str> {
        BUILTIN_DETECTORS.iter().copied().chain(self.custom.iter().map(|c| c.name.as_str())).collect()
    }

    /// What is wrong with the section: the key (below `guard`) and a message.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        if self.custom.len() > MAX_CUSTOM_DETECTORS {
            return Err(("custom".into(), format!("at most {MAX_CUSTOM_DETECTORS} custom detectors")));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.custom.iter().enumerate() {
            let key = |k: &str| format!("custom[{i}].{k}");
            if !valid_custom_name(&c.name) {
                return Err((key("name"), "1 to 64 lower-case letters, digits or `_`, starting with a letter".into()));
            }
            if BUILTIN_DETECTORS.contains(&c.name.as_str()) {
                return Err((key("name"), format!("{:?} is the name of a built-in detector", c.name)));
            }
            if !seen.insert(c.name.as_str()) {
                return Err((key("name"), format!("{:?} is defined twice", c.name)));
            }
            check_regex(&c.regex).map_err(|m| (key("regex"), m))?;
            for (j, k) in c.keywords.iter().enumerate() {
                if k.trim().is_empty() || k.len() > 64 {
                    return Err((format!("custom[{i}].keywords[{j}]"), "1 to 64 characters, not blank".into()));
                }
            }
            check_keep(c.keep_prefix, c.keep_suffix).map_err(|(k, m)| (key(k), m))?;
        }
        let names = self.detector_names();
        check_detectors(&self.detectors, &names).map_err(|(k, m)| (format!("detectors.{k}"), m))
    }
}

/// Checks the settings of one level against the known detector names.
/// The key returned is below `detectors`.
pub(super) fn check_detectors(
    detectors: &BTreeMap<String, DetectorConfig>,
    names: &BTreeSet<&str>,
) -> Result<(), (String, String)> {
    for (name, d) in detectors {
        if !names.contains(name.as_str()) {
            let shown = if name.len() <= 64 { super::syntax::printable(name) } else { "(long name)".into() };
            return Err((
                shown,
                format!(
                    "unknown detector; the built-in ones are {}, and custom ones are defined under guard.custom",
                    BUILTIN_DETECTORS.join(", ")
                ),
            ));
        }
        check_keep(d.keep_prefix, d.keep_suffix).map_err(|(k, m)| (format!("{name}.{k}"), m))?;
        if d.direction.is_some() && d.action.is_none() {
            return Err((format!("{name}.direction"), "says which messages `action` is for: give an action".into()));
        }
    }
    Ok(())
}

fn check_keep(prefix: Option<u8>, suffix: Option<u8>) -> Result<(), (&'static str, String)> {
    for (k, v) in [("keep_prefix", prefix), ("keep_suffix", suffix)] {
        if v.is_some_and(|v| v > 32) {
            return Err((k, "must be at most 32".into()));
        }
    }
    Ok(())
}

/// Whether a custom pattern compiles, stays small and finds something.
/// The message names the kind of problem, never the pattern: it may have
/// been written around a real value.
fn check_regex(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("must not be empty".into());
    }
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!("at most {MAX_REGEX_LEN} bytes"));
    }
    let re = regex::RegexBuilder::new(pattern).size_limit(1 << 20).build().map_err(|e| match e {
        regex::Error::CompiledTooBig(_) => "the pattern is too large once compiled".to_string(),
        regex::Error::Syntax(s) => {
            // The syntax error's last line says what is wrong; the lines
            // above it quote the pattern.
            let what = s.lines().rev().find(|l| l.starts_with("error:")).unwrap_or("error: invalid syntax");
            format!("not a valid regular expression ({what})")
        }
        _ => "not a valid regular expression".to_string(),
    })?;
    if re.is_match("") {
        return Err("matches the empty string".into());
    }
    Ok(())
}

/// Whether a pin of an executable is well formed: 64 hex digits.
pub(super) fn check_sha256(s: &str) -> Result<(), String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("must be 64 hexadecimal digits (a SHA-256 digest)".into())
    }
}

#[cfg(test)]
mod tests;

fn default_true() -> bool {
    true
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig { enabled: true, detectors: BTreeMap::new(), custom: Vec::new() }
    }
}
