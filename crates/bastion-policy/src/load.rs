//! Policy files: read, parsed, named, typed and validated, with every
//! problem located by file, line and column.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, ValidationWarning, Validator};
use miette::Diagnostic;

use crate::Action;
use crate::args::Shape;
use crate::infer::infer;
use crate::schema;

/// The largest policy file read.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// How deeply a policy's expressions may nest, counted as brackets plus
/// operators in a row (`a && b && c` is 2 deep at its level). Cedar's parser
/// recurses once per level, so this bounds the stack it needs.
pub const MAX_NESTING: usize = 256;
/// Stack for parsing and validating: generous for [`MAX_NESTING`] levels
/// even in an unoptimised build (about 50 KiB a level there).
const LOADER_STACK: usize = 64 << 20;

/// Where the built-in policies come from, in [`Problem::file`].
pub(crate) const BUILTIN: &str = "builtin";

/// One thing wrong with the policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as it was given (`builtin` for the built-in policies).
    pub file: String,
    /// 1-based, when known.
    pub line: Option<usize>,
    /// 1-based, in characters, when known.
    pub column: Option<usize>,
    /// The id of the policy at fault, when there is one.
    pub policy: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Policy files that could not be loaded: nothing of them is in effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// Every problem found, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return f.write_str("the policies could not be loaded");
        }
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl LoadError {
    fn one(file: &str, message: String) -> LoadError {
        LoadError {
            problems: vec![Problem { file: file.to_string(), line: None, column: None, policy: None, message }],
        }
    }
}

/// A policy text and where it comes from.
pub(crate) struct Source {
    /// For policy ids: the file's name.
    pub name: String,
    /// For messages: the path as given.
    pub display: String,
    pub text: String,
}

/// Reads policy files, refusing what is too large or not UTF-8.
pub(crate) fn read_files(files: &[impl AsRef<Path>]) -> Result<Vec<Source>, LoadError> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let path = path.as_ref();
        let display = path.display().to_string();
        let name = path.file_name().map_or_else(|| display.clone(), |n| n.to_string_lossy().into_owned());
        let mut bytes = Vec::new();
        let read = std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read: {e}"));
        let problem = |line, message| Problem { file: display.clone(), line, column: None, policy: None, message };
        match read {
            Err(e) => problems.push(problem(None, e)),
            Ok(n) if n > MAX_FILE_BYTES => {
                problems.push(problem(None, format!("larger than {MAX_FILE_BYTES} bytes")));
            }
            Ok(_) => match String::from_utf8(bytes) {
                Ok(text) => sources.push(Source { name, display, text }),
                Err(e) => {
                    let at = e.utf8_error().valid_up_to();
                    let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
                    problems.push(problem(Some(line), "not valid UTF-8".to_string()));
                }
            },
        }
    }
    if problems.is_empty() { Ok(sources) } else { Err(LoadError { problems }) }
}

/// What loading produces.
pub(crate) struct Loaded {
    pub policies: PolicySet,
    pub ids: Vec<String>,
    pub fields: BTreeMap<String, Shape>,
    pub schema_text: String,
    pub warnings: Vec<Problem>,
}

/// Builds, on a thread with a stack large enough for any policy that passes
/// the nesting check, and catching a panic of the parser should one occur.
pub(crate) fn load(builtin: &str, sources: &[Source]) -> Result<Loaded, LoadError> {
    let work = || build(builtin, sources);
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("policy-loader".into())
            .stack_size(LOADER_STACK)
            .spawn_scoped(scope, work)
        {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(LoadError::one(BUILTIN, "the policy parser failed on this input".to_string()))),
            // no thread to be had: the nesting limit keeps the current stack
            // safe in an optimised build
            Err(_) => build(builtin, sources),
        }
    })
}

/// A statement of a policy file, as found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Statement {
    /// Byte offset of its `permit` or `forbid` (of its first token if none).
    offset: usize,
    /// How deeply it nests (see [`MAX_NESTING`]).
    depth: usize,
    /// Byte offset where it is deepest.
    deepest: usize,
}

/// Splits a policy text into statements and measures their nesting, without
/// parsing: strings and `//` comments are skipped, `;` outside brackets ends
/// a statement. Never fails; what it cannot make sense of, Cedar's parser
/// reports.
fn scan(text: &str) -> Vec<Statement> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut current: Option<Statement> = None;
    let mut effect_seen = false;
    // operators seen at each bracket level since its start or last comma
    let mut levels: Vec<usize> = Vec::new();
    let mut sum = 0usize;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let stmt = current.get_or_insert_with(|| {
            effect_seen = false;
            levels.clear();
            levels.push(0);
            sum = 0;
            Statement { offset: i, depth: 1, deepest: i }
        });
        let start = i;
        let mut op = false;
        match c {
            b'"' => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                levels.push(0);
                i += 1;
            }
            b')' | b']' | b'}' => {
                if levels.len() > 1 {
                    sum -= levels.pop().unwrap_or(0);
                }
                i += 1;
            }
            b',' => {
                if let Some(top) = levels.last_mut() {
                    sum -= *top;
                    *top = 0;
                }
                i += 1;
            }
            b';' if levels.len() <= 1 => {
                out.push(*stmt);
                current = None;
                i += 1;
                continue;
            }
            b':' if b.get(i + 1) == Some(&b':') => i += 2,
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' => {
                op = true;
                i += if matches!(b.get(i + 1), Some(b'&' | b'|' | b'=')) { 2 } else { 1 };
            }
            b'+' | b'-' | b'*' | b'.' => {
                op = true;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &text[start..i];
                let annotation = start > 0 && b[start - 1] == b'@';
                if !effect_seen && !annotation && levels.len() <= 1 && (word == "permit" || word == "forbid") {
                    effect_seen = true;
                    stmt.offset = start;
                }
                op = matches!(word, "in" | "has" | "like" | "is" | "if" | "then" | "else");
            }
            _ => i += 1,
        }
        if op && let Some(top) = levels.last_mut() {
            *top += 1;
            sum += 1;
        }
        let depth = levels.len() + sum;
        if depth > stmt.depth {
            stmt.depth = depth;
            stmt.deepest = start;
        }
    }
    out.extend(current);
    out
}

fn id_str(id: &PolicyId) -> &str {
    id.as_ref()
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A policy and where it came from.
struct Origin {
    /// Index in the sources; `None` for the built-in policies.
    source: Option<usize>,
    /// Byte offset of its statement.
    offset: usize,
}

struct Builder<'a> {
    builtin: &'a str,
    sources: &'a [Source],
    problems: Vec<Problem>,
}

impl Builder<'_> {
    fn text(&self, source: Option<usize>) -> &str {
        match source {
            None => self.builtin,
            Some(i) => self.sources.get(i).map_or("", |s| s.text.as_str()),
        }
    }

    fn file(&self, source: Option<usize>) -> String {
        match source {
            None => BUILTIN.to_string(),
            Some(i) => self.sources.get(i).map_or_else(String::new, |s| s.display.clone()),
        }
    }

    fn problem(&self, source: Option<usize>, offset: Option<usize>, policy: Option<&str>, message: String) -> Problem {
        let (line, column) = match offset {
            Some(o) => {
                let (l, c) = line_col(self.text(source), o);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Problem { file: self.file(source), line, column, policy: policy.map(str::to_string), message }
    }

    fn push(&mut self, source: Option<usize>, offset: Option<usize>, policy: Option<&str>, message: String) {
        let p = self.problem(source, offset, policy, message);
        self.problems.push(p);
    }
}

/// The first label's offset of a diagnostic, and its text.
fn first_label(d: &dyn Diagnostic) -> (Option<usize>, Option<String>) {
    match d.labels().and_then(|mut l| l.next()) {
        Some(l) => (Some(l.offset()), l.label().map(str::to_string)),
        None => (None, None),
    }
}

fn with_help(message: String, d: &dyn Diagnostic) -> String {
    match d.help() {
        Some(h) => format!("{message} ({h})"),
        None => message,
    }
}

/// A validation message without what [`Problem`] already says (the policy)
/// and without the action it was found under (the same problem is found
/// once per action).
fn clean(message: &str, id: &str) -> String {
    let prefix = format!("for policy `{id}`, ");
    let mut m = message.strip_prefix(&prefix).unwrap_or(message).to_string();
    for a in Action::ALL {
        m = m.replace(&format!(" for Bastion::Action::\"{a}\""), "");
    }
    m
}

fn build(builtin: &str, sources: &[Source]) -> Result<Loaded, LoadError> {
    let mut b = Builder { builtin, sources, problems: Vec::new() };
    let mut policies: Vec<Policy> = Vec::new();
    let mut origins: Vec<Origin> = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();

    let texts =
        std::iter::once((None, builtin)).chain(sources.iter().enumerate().map(|(i, s)| (Some(i), s.text.as_str())));
    for (source, text) in texts {
        let statements = scan(text);
        let mut too_deep = false;
        for st in &statements {
            if st.depth > MAX_NESTING {
                too_deep = true;
                let msg = format!("expression nested too deeply ({} levels, at most {MAX_NESTING})", st.depth);
                b.push(source, Some(st.deepest), None, msg);
            }
        }
        if too_deep {
            continue;
        }
        let set = match PolicySet::from_str(text) {
            Ok(set) => set,
            Err(errors) => {
                for e in errors.iter() {
                    let (offset, label) = first_label(e);
                    let msg = match label {
                        Some(l) => format!("{e}: {l}"),
                        None => e.to_string(),
                    };
                    b.push(source, offset, None, with_help(msg, e));
                }
                continue;
            }
        };
        let position = |id: &PolicyId| -> Option<usize> {
            let n: usize = id.to_string().strip_prefix("policy")?.parse().ok()?;
            statements.get(n).map(|s| s.offset)
        };
        for t in set.templates() {
            let msg = "templates (`?principal`, `?resource`) are not supported: write the entities out".to_string();
            b.push(source, position(t.id()), None, msg);
        }
        let mut ps: Vec<&Policy> = set.policies().collect();
        ps.sort_by_key(|p| position(p.id()));
        for p in ps {
            let offset = position(p.id()).unwrap_or(0);
            let (line, _) = line_col(text, offset);
            let id = match (source, p.annotation("id")) {
                (None, Some(a)) => format!("builtin.{a}"),
                (None, None) => format!("builtin:{line}"),
                (Some(i), annotation) => {
                    let name = sources.get(i).map_or("", |s| s.name.as_str());
                    match annotation {
                        Some(a) if a.is_empty() || a.chars().any(char::is_control) => {
                            b.push(source, Some(offset), None, "@id must be a non-empty line of text".to_string());
                            continue;
                        }
                        Some(a) => format!("{name}:{a}"),
                        None => format!("{name}:{line}"),
                    }
                }
            };
            if let Some(&other) = ids.get(&id) {
                let first = b.problem(origins[other].source, Some(origins[other].offset), None, String::new());
                let at = match first.line {
                    Some(l) => format!("{}:{l}", first.file),
                    None => first.file,
                };
                b.push(source, Some(offset), Some(&id), format!("policy id {id:?} is already used at {at}"));
                continue;
            }
            ids.insert(id.clone(), policies.len());
            policies.push(p.new_id(PolicyId::new(&id)));
            origins.push(Origin { source, offset });
        }
    }

    let id_list: Vec<String> = policies.iter().map(|p| id_str(p.id()).to_string()).collect();
    let psts: Vec<_> = policies.iter().map(|p| p.to_pst().ok()).collect();
    let inferred = infer(&psts, &id_list);
    for (i, msg) in inferred.errors {
        if let (Some(o), Some(id)) = (origins.get(i), id_list.get(i)) {
            b.push(o.source, Some(o.offset), Some(id), msg);
        }
    }

    let schema_text = schema::render(&inferred.fields);
    let schema = match Schema::from_cedarschema_str(&schema_text) {
        Ok((schema, _)) => Some(schema),
        Err(e) => {
            b.problems.push(Problem {
                file: "schema".to_string(),
                line: None,
                column: None,
                policy: None,
                message: format!("the schema the policies need is not valid: {e}"),
            });
            None
        }
    };

    let mut set = PolicySet::new();
    for p in &policies {
        if let Err(e) = set.add(p.clone()) {
            b.problems.push(Problem {
                file: BUILTIN.to_string(),
                line: None,
                column: None,
                policy: Some(id_str(p.id()).to_string()),
                message: e.to_string(),
            });
        }
    }

    let mut warnings = Vec::new();
    if let Some(schema) = schema {
        let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
        let mut seen = std::collections::HashSet::new();
        let locate = |id: &PolicyId| ids.get(id_str(id)).and_then(|i| origins.get(*i));
        for e in result.validation_errors() {
            let id = e.policy_id();
            let Some(o) = locate(id) else { continue };
            let (offset, _) = first_label(e);
            let msg = with_help(clean(&e.to_string(), id_str(id)), e);
            // one problem per place: the same expression is checked once per
            // action and per kind of target, with much the same message
            if seen.insert((id_str(id).to_string(), offset)) {
                b.push(o.source, offset.or(Some(o.offset)), Some(id_str(id)), msg);
            }
        }
        let failed: std::collections::HashSet<String> =
            result.validation_errors().map(|e| id_str(e.policy_id()).to_string()).collect();
        for w in result.validation_warnings() {
            let id = w.policy_id();
            let Some(o) = locate(id) else { continue };
            // a policy with errors is refused already; what follows from
            // them (it applies to nothing) would only bury the cause
            if failed.contains(id_str(id)) {
                continue;
            }
            let (offset, _) = first_label(w);
            let msg = with_help(clean(&w.to_string(), id_str(id)), w);
            if !seen.insert((id_str(id).to_string(), offset)) {
                continue;
            }
            // A policy that can never apply is a mistake (a forbid that
            // protects nothing); bidirectional controls hide what a policy
            // says. Both refuse the file; the rest only warns.
            let fatal = matches!(
                w,
                ValidationWarning::ImpossiblePolicy(_)
                    | ValidationWarning::InvalidActionApplication(_)
                    | ValidationWarning::BidiCharsInString(_)
                    | ValidationWarning::BidiCharsInIdentifier(_)
            );
            let p = b.problem(o.source, offset.or(Some(o.offset)), Some(id_str(id)), msg);
            if fatal { b.problems.push(p) } else { warnings.push(p) }
        }
    }

    if !b.problems.is_empty() {
        let mut problems = b.problems;
        let order: HashMap<String, usize> = std::iter::once(BUILTIN.to_string())
            .chain(sources.iter().map(|s| s.display.clone()))
            .enumerate()
            .map(|(i, f)| (f, i))
            .collect();
        problems.sort_by_key(|p| (order.get(&p.file).copied().unwrap_or(usize::MAX), p.line, p.column));
        return Err(LoadError { problems });
    }
    Ok(Loaded { policies: set, ids: id_list, fields: inferred.fields, schema_text, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_and_lines() {
        let text = "// a comment; with (brackets\npermit(principal, action, resource);\n@id(\"x;\")\n\
                    forbid(principal, action, resource) when { \"a;b\" == \"c\" };";
        let st = scan(text);
        assert_eq!(st.len(), 2);
        assert_eq!(line_col(text, st[0].offset), (2, 1));
        assert_eq!(line_col(text, st[1].offset), (4, 1));
    }

    #[test]
    fn nesting_is_measured() {
        let chain = |n: usize| format!("permit(principal, action, resource) when {{ true{} }};", " && true".repeat(n));
        assert!(scan(&chain(10))[0].depth < 20);
        assert!(scan(&chain(1000))[0].depth > 1000);
        let parens =
            format!("permit(principal, action, resource) when {{ {}true{} }};", "(".repeat(300), ")".repeat(300));
        assert!(scan(&parens)[0].depth > 300);
        // commas reset: a long list is not deep
        let list = format!("permit(principal, action, resource) when {{ [{}].contains(1) }};", "1 + 1, ".repeat(2000));
        assert!(scan(&list)[0].depth < 10);
        // strings do not count
        let s = format!("permit(principal, action, resource) when {{ \"{}\" == \"\" }};", "((((&&".repeat(1000));
        assert!(scan(&s)[0].depth < 10);
    }

    #[test]
    fn scanning_never_fails() {
        for text in ["", "\"", "\"\\", ")))", ";;;", "é(", "//", "permit(", "@", "a::", "\u{0}"] {
            let _ = scan(text);
        }
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_col("ab\nçd", 5), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
        // inside a character: the start of it
        assert_eq!(line_col("é", 1), (1, 1));
    }
}
