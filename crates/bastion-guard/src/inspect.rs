//! Messages inspected: which parts of which MCP messages are read, how a
//! value is masked, and what is reported.
//!
//! Only JSON string values are read, never keys or numbers, and never the
//! base64 of images, audio or binary resources (`data`, `blob`, `data:`
//! URIs). A masked value stays a string, so the message stays valid JSON
//! and `structuredContent` keeps the types its `outputSchema` gives. A
//! value is refused before anything is changed: a blocked message is left
//! as it came.

use std::collections::{BTreeMap, HashMap};

use bastion_core::config::{GuardAction, GuardConfig, ServerConfig};
use serde::Serialize;
use serde_json::Value;

use crate::Error;
use crate::detect::{Builtin, DetectorId, DetectorSet, Detectors, Match};
use crate::settings::{Mask, Table, default_keep};

/// Which way a message goes. Inbound: to a server (a call's arguments, a
/// client's answer to sampling or elicitation). Outbound: from a server
/// (results, resource contents, prompts, sampling and elicitation
/// requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound = 0,
    Outbound = 1,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Where a message belongs: its server and, for a tool call, the tool (as
/// the server names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    pub server: &'a str,
    pub tool: Option<&'a str>,
}

impl<'a> Scope<'a> {
    pub fn server(server: &'a str) -> Scope<'a> {
        Scope { server, tool: None }
    }
    pub fn tool(server: &'a str, tool: &'a str) -> Scope<'a> {
        Scope { server, tool: Some(tool) }
    }
}

/// One value found, ready for the audit trail: what kind, where, and what
/// was done. Never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// The detector's name (`kr_rrn`, `aws_access_key`, a custom name).
    pub detector: String,
    pub direction: Direction,
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// A JSON pointer (RFC 6901) to the string, from the inspected value:
    /// `/arguments/query`, `/content/0/text`.
    pub path: String,
    pub action: GuardAction,
}

impl Hit {
    /// The words of a refusal: the detector and the path, never the value.
    pub fn refusal(&self) -> String {
        let what = match self.direction {
            Direction::Inbound => "request",
            Direction::Outbound => "result",
        };
        format!("the {what} was refused by the data guard: {} at {}", self.detector, self.path)
    }
}

/// What an inspection decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The message may go on; values whose action is `mask` were masked in
    /// place. `hits` lists every value found (masked and logged).
    Pass { hits: Vec<Hit> },
    /// The message must be refused; it was left unchanged. `hit` is the
    /// first value whose action is `block`.
    Block { hit: Hit },
}

impl Verdict {
    /// Every hit, for the audit trail.
    pub fn hits(&self) -> &[Hit] {
        match self {
            Verdict::Pass { hits } => hits,
            Verdict::Block { hit } => std::slice::from_ref(hit),
        }
    }

    pub fn is_block(&self) -> bool {
        matches!(self, Verdict::Block { .. })
    }
}

/// The MCP messages the guard reads, and which of their parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `tools/call` params: `arguments`. Inbound.
    CallRequest,
    /// `tools/call` result: `content[].text`, `content[].resource.text`,
    /// `structuredContent`. Outbound.
    CallResult,
    /// `resources/read` result: `contents[].text`. Outbound.
    ReadResult,
    /// `prompts/get` result: `description`, `messages[].content`. Outbound.
    PromptResult,
    /// `sampling/createMessage` params, a server's request relayed to the
    /// client: `systemPrompt`, `messages[].content`. Outbound.
    SamplingRequest,
    /// The client's `sampling/createMessage` result: `content`. Inbound.
    SamplingResult,
    /// `elicitation/create` params: `message`. Outbound.
    ElicitationRequest,
    /// The client's `elicitation/create` result: `content`. Inbound.
    ElicitationResult,
}

impl Shape {
    /// The shape of a method's params (`result` false) or result, when the
    /// guard reads it.
    pub fn of(method: &str, result: bool) -> Option<Shape> {
        Some(match (method, result) {
            ("tools/call", false) => Shape::CallRequest,
            ("tools/call", true) => Shape::CallResult,
            ("resources/read", true) => Shape::ReadResult,
            ("prompts/get", true) => Shape::PromptResult,
            ("sampling/createMessage", false) => Shape::SamplingRequest,
            ("sampling/createMessage", true) => Shape::SamplingResult,
            ("elicitation/create", false) => Shape::ElicitationRequest,
            ("elicitation/create", true) => Shape::ElicitationResult,
            _ => return None,
        })
    }

    pub fn direction(self) -> Direction {
        match self {
            Shape::CallRequest | Shape::SamplingResult | Shape::ElicitationResult => Direction::Inbound,
            _ => Direction::Outbound,
        }
    }
}

/// The data guard of one configuration: the detectors, compiled once, and
/// what each does on each server and tool.
#[derive(Debug)]
pub struct Guard {
    detectors: Detectors,
    global: Table,
    servers: HashMap<String, ServerTables>,
}

#[derive(Debug)]
struct ServerTables {
    table: Table,
    tools: HashMap<String, Table>,
}

impl Guard {
    /// Builds the guard of a configuration's `guard` section and its
    /// servers' settings. Only detectors some server or tool uses are
    /// compiled.
    pub fn compile(config: &GuardConfig, servers: &BTreeMap<String, ServerConfig>) -> Result<Guard, Error> {
        let defaults = Table::defaults(config);
        let mut global = defaults.clone();
        if !config.enabled {
            global.disable();
        }
        global.apply(config, &config.detectors)?;
        let mut used = global.used();
        let mut tables = HashMap::with_capacity(servers.len());
        for (name, server) in servers {
            let mut table = match server.guard.enabled {
                Some(true) => defaults.clone(),
                _ => global.clone(),
            };
            if server.guard.enabled == Some(false) {
                table.disable();
            }
            table.apply(config, &server.guard.detectors)?;
            used.0 |= table.used().0;
            let mut tools = HashMap::new();
            for (tool, t) in &server.tools {
                if t.guard.detectors.is_empty() && t.guard.enabled.is_none() {
                    continue;
                }
                let mut tool_table = match t.guard.enabled {
                    Some(true) => defaults.clone(),
                    _ => table.clone(),
                };
                if t.guard.enabled == Some(false) {
                    tool_table.disable();
                }
                tool_table.apply(config, &t.guard.detectors)?;
                used.0 |= tool_table.used().0;
                tools.insert(tool.clone(), tool_table);
            }
            tables.insert(name.clone(), ServerTables { table, tools });
        }
        Ok(Guard { detectors: Detectors::build(config, Some(used))?, global, servers: tables })
    }

    /// The compiled detectors.
    pub fn detectors(&self) -> &Detectors {
        &self.detectors
    }

    fn table(&self, scope: Scope<'_>) -> &Table {
        match self.servers.get(scope.server) {
            Some(s) => scope.tool.and_then(|t| s.tools.get(t)).unwrap_or(&s.table),
            None => &self.global,
        }
    }

    /// What a detector does in a scope and direction; `None` for an
    /// unknown detector.
    pub fn action(&self, scope: Scope<'_>, detector: &str, direction: Direction) -> Option<GuardAction> {
        let id = self.detectors.id(detector)?;
        Some(self.table(scope).action(id, direction))
    }

    /// Whether any detector acts (masks, blocks or logs) in a scope and
    /// direction: when none does, there is nothing to inspect.
    pub fn watches(&self, scope: Scope<'_>, direction: Direction) -> bool {
        !self.table(scope).active(direction).is_empty()
    }

    /// Inspects every string of `value` (arguments, structured content, any
    /// JSON), masking in place; a block leaves `value` unchanged.
    pub fn inspect(&self, value: &mut Value, direction: Direction, scope: Scope<'_>) -> Verdict {
        self.run(value, direction, scope, |w, v, path| w.any(v, path))
    }

    /// Inspects the parts of an MCP message that `shape` names: `value` is
    /// a request's `params` or a response's `result`.
    pub fn inspect_message(&self, shape: Shape, value: &mut Value, scope: Scope<'_>) -> Verdict {
        self.run(value, shape.direction(), scope, |w, v, path| w.shape(shape, v, path))
    }

    fn run(
        &self,
        value: &mut Value,
        direction: Direction,
        scope: Scope<'_>,
        walk: impl for<'v> FnOnce(&mut Walk<'_>, &'v mut Value, &mut Vec<Seg<'v>>),
    ) -> Verdict {
        let table = self.table(scope);
        let active = table.active(direction);
        if active.is_empty() {
            return Verdict::Pass { hits: Vec::new() };
        }
        let mut w = Walk {
            guard: self,
            table,
            direction,
            active,
            scope,
            matches: Vec::new(),
            hits: Vec::new(),
            originals: Vec::new(),
            blocked: None,
        };
        walk(&mut w, &mut *value, &mut Vec::new());
        let Walk { hits, originals, blocked, .. } = w;
        match blocked {
            Some(hit) => {
                // Strings masked before the value that blocks are put back.
                for (at, original) in originals.into_iter().rev() {
                    if let Some(Value::String(s)) = value.pointer_mut(&at) {
                        *s = original;
                    }
                }
                Verdict::Block { hit: *hit }
            }
            None => Verdict::Pass { hits },
        }
    }
}

/// One step of the path to a string.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn pointer(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        out.push('/');
        match seg {
            Seg::Key(k) => {
                for c in k.chars() {
                    match c {
                        '~' => out.push_str("~0"),
                        '/' => out.push_str("~1"),
                        c => out.push(c),
                    }
                }
            }
            Seg::Index(i) => out.push_str(&i.to_string()),
        }
    }
    out
}

struct Walk<'g> {
    guard: &'g Guard,
    table: &'g Table,
    direction: Direction,
    active: DetectorSet,
    scope: Scope<'g>,
    matches: Vec<Match>,
    hits: Vec<Hit>,
    /// Strings masked so far, by pointer, with their original text.
    originals: Vec<(String, String)>,
    blocked: Option<Box<Hit>>,
}

impl Walk<'_> {
    fn any<'v>(&mut self, v: &'v mut Value, path: &mut Vec<Seg<'v>>) {
        if self.blocked.is_some() {
            return;
        }
        match v {
            Value::String(s) => self.string(s, path),
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(Seg::Index(i));
                    self.any(item, path);
                    path.pop();
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    path.push(Seg::Key(k));
                    self.any(item, path);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// The named string fields of an object, and `any` for the `deep` ones.
    fn fields<'v>(&mut self, v: &'v mut Value, path: &mut Vec<Seg<'v>>, strings: &[&str], deep: &[&str]) {
        let Value::Object(map) = v else { return };
        for (k, item) in map.iter_mut() {
            if strings.contains(&k.as_str()) {
                if let Value::String(s) = item {
                    path.push(Seg::Key(k));
                    self.string(s, path);
                    path.pop();
                }
            } else if deep.contains(&k.as_str()) {
                path.push(Seg::Key(k));
                self.any(item, path);
                path.pop();
            }
        }
    }

    /// Each element of an array field (or the field itself when it is one
    /// object), with `each`.
    fn each<'v>(
        &mut self,
        v: &'v mut Value,
        path: &mut Vec<Seg<'v>>,
        field: &'static str,
        each: fn(&mut Self, &'v mut Value, &mut Vec<Seg<'v>>),
    ) {
        let Some(item) = v.get_mut(field) else { return };
        path.push(Seg::Key(field));
        match item {
            Value::Array(items) => {
                for (i, x) in items.iter_mut().enumerate() {
                    path.push(Seg::Index(i));
                    each(self, x, path);
                    path.pop();
                }
            }
            x @ Value::Object(_) => each(self, x, path),
            _ => {}
        }
        path.pop();
    }

    /// A content block: text, or an embedded resource's text. Images,
    /// audio, blobs and links carry nothing read here.
    fn content<'v>(&mut self, v: &'v mut Value, path: &mut Vec<Seg<'v>>) {
        match v.get("type").and_then(Value::as_str) {
            Some("text") | None => self.fields(v, path, &["text"], &[]),
            Some("resource") => {
                if let Some(r) = v.get_mut("resource") {
                    path.push(Seg::Key("resource"));
                    self.fields(r, path, &["text"], &[]);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// A message of a prompt or of sampling: its content, one block or
    /// several.
    fn message<'v>(&mut self, v: &'v mut Value, path: &mut Vec<Seg<'v>>) {
        self.each(v, path, "content", Self::content);
    }

    fn shape<'v>(&mut self, shape: Shape, v: &'v mut Value, path: &mut Vec<Seg<'v>>) {
        match shape {
            Shape::CallRequest => self.fields(v, path, &[], &["arguments"]),
            Shape::CallResult => {
                // `content` and `structuredContent` are siblings: walk the
                // object once.
                let Value::Object(map) = v else { return };
                for (k, item) in map.iter_mut() {
                    match k.as_str() {
                        "structuredContent" => {
                            path.push(Seg::Key(k));
                            self.any(item, path);
                            path.pop();
                        }
                        "content" => {
                            path.push(Seg::Key(k));
                            if let Value::Array(items) = item {
                                for (i, x) in items.iter_mut().enumerate() {
                                    path.push(Seg::Index(i));
                                    self.content(x, path);
                                    path.pop();
                                }
                            }
                            path.pop();
                        }
                        _ => {}
                    }
                }
            }
            Shape::ReadResult => self.each(v, path, "contents", |w, x, p| w.fields(x, p, &["text"], &[])),
            Shape::PromptResult => {
                if let Some(Value::String(s)) = v.get_mut("description") {
                    path.push(Seg::Key("description"));
                    self.string(s, path);
                    path.pop();
                }
                self.each(v, path, "messages", Self::message);
            }
            Shape::SamplingRequest => {
                if let Some(Value::String(s)) = v.get_mut("systemPrompt") {
                    path.push(Seg::Key("systemPrompt"));
                    self.string(s, path);
                    path.pop();
                }
                self.each(v, path, "messages", Self::message);
            }
            Shape::SamplingResult => self.message(v, path),
            Shape::ElicitationRequest => self.fields(v, path, &["message"], &[]),
            Shape::ElicitationResult => self.fields(v, path, &[], &["content"]),
        }
    }

    fn string(&mut self, s: &mut String, path: &[Seg<'_>]) {
        if self.blocked.is_some() || skipped(s) {
            return;
        }
        let mut matches = std::mem::take(&mut self.matches);
        self.guard.detectors.find_into(s, self.active, &mut matches);
        if !matches.is_empty() {
            self.found(s, &matches, path);
        }
        self.matches = matches;
    }

    fn found(&mut self, s: &mut String, matches: &[Match], path: &[Seg<'_>]) {
        let at = pointer(path);
        let hit = |w: &Self, m: &Match, action| Hit {
            detector: w.guard.detectors.name(m.detector).to_string(),
            direction: w.direction,
            server: w.scope.server.to_string(),
            tool: w.scope.tool.map(str::to_string),
            path: at.clone(),
            action,
        };
        if let Some(m) = matches.iter().find(|m| self.table.action(m.detector, self.direction) == GuardAction::Block) {
            self.blocked = Some(Box::new(hit(self, m, GuardAction::Block)));
            return;
        }
        let mut masked = String::new();
        let (mut copied, mut covered) = (0, 0);
        for m in matches {
            let action = self.table.action(m.detector, self.direction);
            self.hits.push(hit(self, m, action));
            // Overlaps: the earliest value wins, then the longest.
            if action == GuardAction::Mask && m.start >= covered {
                masked.push_str(&s[copied..m.start]);
                self.mask(&mut masked, &s[m.start..m.end], m.detector);
                copied = m.end;
                covered = m.end;
            }
        }
        if copied > 0 {
            masked.push_str(&s[copied..]);
            let original = std::mem::replace(s, masked);
            self.originals.push((at, original));
        }
    }

    fn mask(&self, out: &mut String, value: &str, id: DetectorId) {
        let mask = self.table.mask(id);
        if mask.partial {
            partial(out, value, id, mask);
        } else {
            out.push_str("[REDACTED:");
            out.push_str(self.guard.detectors.name(id));
            out.push(']');
        }
    }
}

/// Letters and digits replaced by `*` but for the first and last ones kept;
/// other characters (`-`, spaces, `@`) kept. When the kept ones would be
/// all of them, none is kept.
fn partial(out: &mut String, value: &str, id: DetectorId, mask: Mask) {
    let total = value.chars().filter(|c| c.is_alphanumeric()).count();
    let (prefix, suffix) = match (mask.keep_prefix, mask.keep_suffix) {
        (None, None) if Builtin::from_id(id) == Some(Builtin::Email) => {
            // The first character of the local part, and the domain.
            let domain = value.rsplit_once('@').map_or(0, |(_, d)| d.chars().filter(|c| c.is_alphanumeric()).count());
            (1, domain)
        }
        (None, None) => default_keep(id),
        (p, s) => (usize::from(p.unwrap_or(0)), usize::from(s.unwrap_or(0))),
    };
    let (prefix, suffix) = if prefix + suffix >= total { (0, 0) } else { (prefix, suffix) };
    let mut i = 0;
    for c in value.chars() {
        if c.is_alphanumeric() {
            out.push(if i < prefix || i >= total - suffix { c } else { '*' });
            i += 1;
        } else {
            out.push(c);
        }
    }
}

/// Strings not read: too short to hold anything a detector finds, or the
/// base64 of an image, audio or file as a `data:` URI.
fn skipped(s: &str) -> bool {
    s.len() < 6 || s.starts_with("data:") && s.get(..s.len().min(128)).is_some_and(|head| head.contains(";base64,"))
}

#[cfg(test)]
mod tests;
