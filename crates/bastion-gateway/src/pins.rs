//! Tool pinning and the poisoning scan on the request path: which of the
//! tools and prompts a server lists are served.
//!
//! Every `tools/list` and `prompts/list` a server answers is screened once
//! ([`Pins::screen`], cached per list until the list or a pin changes):
//! each item's definition is hashed (`bastion_guard::pin`) and read for
//! poisoning (`bastion_guard::scan_tool`, and across servers for shadowing
//! and name collisions), and its pin in the store decides whether it is
//! served. Decisions that change a pin — first sight, a definition that
//! changed, a poisoned one — are written to the store by compare and set
//! and audited (`tool.pinned`, `tool.pending`, `tool.quarantined`;
//! `prompt.…` for prompts), and a poisoned description under `warn` is
//! logged and audited (`tool.poisoning`) once per definition.
//!
//! Pins are per server name: every user's instance of a server run once
//! per user is held to the same pins (a server whose definitions differ
//! between users is quarantined on the difference; turn its pinning off).
//!
//! Held items are left out of lists, and calls to them ([`admit`], on
//! `tools/call`, `prompts/get` and prompt completions, before anything
//! reaches the server) are refused with a JSON-RPC error saying why. With
//! pinning on, a call to a tool the server does not list is refused too:
//! nothing was pinned for it.
//!
//! Changes made elsewhere (`bastion tools approve|reject`, other replicas
//! on the same store) are read from the store as soon as its change feed
//! says pins changed, and every [`FOLLOW_INTERVAL`] besides; sessions that
//! can see a changed server are told its lists changed.
//! When the store cannot be read or written, an item whose pin would have
//! to be read or changed is not served (fail closed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bastion_audit::{Event, Outcome};
use bastion_core::config::{Config, Pinning, Poisoning};
use bastion_core::jsonrpc::{self, error_object};
use bastion_guard::pin::{self, Decision, PinState, PinView};
use bastion_guard::{Finding, FindingKind};
use bastion_store::{PinRecord, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::audit::Auditor;
use crate::gateway::Gateway;
use crate::upstream::UpstreamHandle;

/// How often each gateway reads the pins changed by others: the longest an
/// approval made with the CLI takes to be served.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// What a server lists that is pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    Tool,
    Prompt,
}

impl ItemKind {
    /// The kind a list method lists, if it is pinned.
    pub fn of_list(method: &str) -> Option<ItemKind> {
        match method {
            "tools/list" => Some(ItemKind::Tool),
            "prompts/list" => Some(ItemKind::Prompt),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Tool => "tool",
            ItemKind::Prompt => "prompt",
        }
    }

    fn list(self) -> (&'static str, &'static str) {
        match self {
            ItemKind::Tool => ("tools/list", "tools"),
            ItemKind::Prompt => ("prompts/list", "prompts"),
        }
    }
}

/// The pinning mode and the poisoning action of a server: its own, or the
/// global ones.
pub fn modes(config: &Config, server: &str) -> (Pinning, Poisoning) {
    let s = config.servers.get(server);
    (
        s.and_then(|s| s.pinning).unwrap_or(config.tools.pinning),
        s.and_then(|s| s.poisoning).unwrap_or(config.tools.poisoning),
    )
}

/// Why an item is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub state: PinState,
    pub reason: String,
}

/// What a screening made of one list.
pub struct Verdict {
    /// The list screened (kept so that its address names it).
    list: Arc<Vec<Value>>,
    generation: u64,
    catalog: u64,
    modes: (Pinning, Poisoning),
    /// Items not served, by name.
    held: HashMap<String, Held>,
    /// False when the store could not answer: not cached.
    complete: bool,
}

impl Verdict {
    /// Whether an item of the list is served.
    pub fn serves(&self, item: &Value) -> bool {
        item.get("name").and_then(Value::as_str).is_some_and(|n| !self.held.contains_key(n))
    }

    /// Why an item of that name is not served, if it is not.
    pub fn held(&self, name: &str) -> Option<&Held> {
        self.held.get(name)
    }
}

type PinKey = (String, ItemKind, String);

/// What the catalog (the tools of every server listed so far) shows that
/// no single server's list does: shadowing and name collisions.
#[derive(Default)]
struct Catalog {
    tools: BTreeMap<String, Arc<Vec<Value>>>,
    generation: u64,
    findings: HashMap<(String, String), Vec<Finding>>,
}

/// The pins, as the store holds them and as this gateway decided them.
pub struct Pins {
    store: Store,
    audit: Option<Arc<Auditor>>,
    rows: RwLock<HashMap<PinKey, PinRecord>>,
    loaded: AtomicBool,
    load_lock: tokio::sync::Mutex<()>,
    /// Bumped whenever a pin changes: every cached verdict is stale.
    generation: AtomicU64,
    /// Verdicts by server, kind and the list's address.
    verdicts: Mutex<HashMap<(String, ItemKind, usize), Arc<Verdict>>>,
    catalog: Mutex<Catalog>,
    /// Poisoning warnings already given, by server, kind, name and hash.
    warned: Mutex<Seen>,
    /// One decision at a time in this process, so that two lists of one
    /// server do not race each other to the store.
    deciding: tokio::sync::Mutex<()>,
}

/// What has been seen once, kept as keyed 64-bit hashes (a server names its
/// items: the names are not kept) and at most [`Seen::MAX`] of them: a
/// server that lists a new poisoned definition on every list cannot grow
/// the gateway's memory. When full it starts again, so a warning may be
/// given again, never withheld.
#[derive(Default)]
struct Seen {
    hasher: std::hash::RandomState,
    keys: HashSet<u64>,
}

impl Seen {
    const MAX: usize = 65_536;

    /// Whether `key` is seen for the first time (since the last start
    /// over).
    fn first(&mut self, key: &impl std::hash::Hash) -> bool {
        use std::hash::BuildHasher as _;
        if self.keys.len() >= Self::MAX {
            self.keys.clear();
        }
        self.keys.insert(self.hasher.hash_one(key))
    }
}

impl Pins {
    pub fn new(store: Store, audit: Option<Arc<Auditor>>) -> Pins {
        Pins {
            store,
            audit,
            rows: Default::default(),
            loaded: AtomicBool::new(false),
            load_lock: Default::default(),
            generation: AtomicU64::new(0),
            verdicts: Default::default(),
            catalog: Default::default(),
            warned: Default::default(),
            deciding: Default::default(),
        }
    }

    /// Whether anything a server lists may be held: pinning on, or
    /// poisoned items quarantined.
    pub fn may_hold(config: &Config, server: &str) -> bool {
        modes(config, server) != (Pinning::Off, Poisoning::Warn)
    }

    /// Reads every pin once.
    async fn ensure_loaded(&self) -> bool {
        if self.loaded.load(Ordering::Acquire) {
            return true;
        }
        let _one = self.load_lock.lock().await;
        if self.loaded.load(Ordering::Acquire) {
            return true;
        }
        match self.store.list_pins(None).await {
            Ok(rows) => {
                let mut map = self.rows.write().expect("poisoned");
                for r in rows {
                    if let Some(kind) = kind_of(&r.kind) {
                        map.insert((r.server.clone(), kind, r.name.clone()), r);
                    }
                }
                self.loaded.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the pins cannot be read; pinned items are not served until they can");
                false
            }
        }
    }

    /// Records a server's tools for the checks across servers (the
    /// catalog's findings are computed again when they changed).
    pub fn note_tools(&self, server: &str, tools: &Arc<Vec<Value>>) {
        let mut catalog = self.catalog.lock().expect("poisoned");
        if catalog.tools.get(server).is_some_and(|t| Arc::ptr_eq(t, tools) || **t == **tools) {
            return;
        }
        catalog.tools.insert(server.to_string(), tools.clone());
        catalog.generation += 1;
        let lists: Vec<(&str, &[Value])> = catalog.tools.iter().map(|(s, t)| (s.as_str(), t.as_slice())).collect();
        let mut findings: HashMap<(String, String), Vec<Finding>> = HashMap::new();
        for f in bastion_guard::scan_catalog(lists) {
            if matches!(f.kind, FindingKind::Shadowing | FindingKind::NameCollision) {
                findings.entry((f.server.clone(), f.item.clone())).or_default().push(f);
            }
        }
        catalog.findings = findings;
    }

    /// Screens one list of a server: which items are served. Cached until
    /// the list, a pin or the catalog changes.
    pub async fn screen(
        &self,
        server: &str,
        kind: ItemKind,
        list: &Arc<Vec<Value>>,
        modes: (Pinning, Poisoning),
    ) -> Arc<Verdict> {
        if kind == ItemKind::Tool {
            self.note_tools(server, list);
        }
        let key = (server.to_string(), kind, Arc::as_ptr(list) as usize);
        let catalog_gen = self.catalog.lock().expect("poisoned").generation;
        if let Some(v) = self.verdicts.lock().expect("poisoned").get(&key)
            && v.generation == self.generation.load(Ordering::Acquire)
            && v.catalog == catalog_gen
            && v.modes == modes
        {
            return v.clone();
        }
        // Boxed: deciding reads and writes the store, a large future that
        // would otherwise be held (and copied) in every call's.
        let verdict = Arc::new(Box::pin(self.decide_list(server, kind, list, modes, catalog_gen)).await);
        if verdict.complete {
            let mut verdicts = self.verdicts.lock().expect("poisoned");
            // Lists no handle holds any more are forgotten.
            verdicts.retain(|_, v| Arc::strong_count(&v.list) > 1);
            verdicts.insert(key, verdict.clone());
        }
        verdict
    }

    async fn decide_list(
        &self,
        server: &str,
        kind: ItemKind,
        list: &Arc<Vec<Value>>,
        modes: (Pinning, Poisoning),
        catalog_gen: u64,
    ) -> Verdict {
        let _one = self.deciding.lock().await;
        let generation = self.generation.load(Ordering::Acquire);
        let (pinning, poisoning) = modes;
        let loaded = pinning == Pinning::Off || self.ensure_loaded().await;
        let mut held = HashMap::new();
        let mut complete = loaded;
        let mut seen_names = HashSet::new();
        let catalog_findings = self.catalog.lock().expect("poisoned").findings.clone();
        for item in list.iter() {
            let Some(name) = item.get("name").and_then(Value::as_str) else { continue };
            if !seen_names.insert(name) {
                // Two definitions under one name: which one a call reaches
                // is the server's choice, so neither is served.
                held.insert(
                    name.to_string(),
                    Held { state: PinState::Quarantined, reason: "listed more than once".into() },
                );
                continue;
            }
            let mut findings = match kind {
                ItemKind::Tool => bastion_guard::scan_tool(server, item),
                ItemKind::Prompt => bastion_guard::scan_prompt(server, item),
            };
            if let Some(more) = catalog_findings.get(&(server.to_string(), name.to_string())) {
                findings.extend(more.iter().cloned());
            }
            let canonical = pin::canonical(item);
            let hash = pin::hash_canonical(&canonical);
            let poisoned = (!findings.is_empty()).then(|| summary(&findings));
            if let Some(p) = &poisoned
                && poisoning == Poisoning::Warn
            {
                self.note_poisoning(server, kind, name, &hash, p, &findings, false).await;
            }
            let quarantine = poisoned.as_deref().filter(|_| poisoning == Poisoning::Quarantine);
            if pinning == Pinning::Off {
                if let Some(p) = quarantine {
                    self.note_poisoning(server, kind, name, &hash, p, &findings, true).await;
                    held.insert(
                        name.to_string(),
                        Held { state: PinState::Quarantined, reason: format!("poisoning: {p}") },
                    );
                }
                continue;
            }
            if !loaded {
                held.insert(
                    name.to_string(),
                    Held { state: PinState::Pending, reason: "the pins cannot be read right now".into() },
                );
                continue;
            }
            match self.decide_item(server, kind, name, &canonical, &hash, quarantine, pinning, &findings).await {
                Ok(None) => {}
                Ok(Some(h)) => {
                    held.insert(name.to_string(), h);
                }
                Err(h) => {
                    complete = false;
                    held.insert(name.to_string(), h);
                }
            }
        }
        Verdict { list: list.clone(), generation, catalog: catalog_gen, modes, held, complete }
    }

    /// Decides on one item and writes its pin if it changes. `Ok(None)`:
    /// served; `Ok(Some)`: held; `Err`: held because the store failed.
    #[allow(clippy::too_many_arguments)]
    async fn decide_item(
        &self,
        server: &str,
        kind: ItemKind,
        name: &str,
        canonical: &str,
        hash: &str,
        poisoning: Option<&str>,
        mode: Pinning,
        findings: &[Finding],
    ) -> Result<Option<Held>, Held> {
        let key = (server.to_string(), kind, name.to_string());
        let store_failed =
            |what: &str| Held { state: PinState::Pending, reason: format!("the pin store cannot be {what} right now") };
        // A writer that lost a race reads the row again and decides again.
        for _attempt in 0..3 {
            let prior = self.rows.read().expect("poisoned").get(&key).cloned();
            let state = match &prior {
                Some(p) => match p.state.parse::<PinState>() {
                    Ok(s) => Some(s),
                    Err(_) => return Ok(Some(Held { state: PinState::Quarantined, reason: "corrupt pin".into() })),
                },
                None => None,
            };
            let view = prior.as_ref().zip(state).map(|(p, state)| PinView {
                state,
                approved_hash: p.approved_hash.as_deref(),
                by_operator: p.approved_by.as_deref().is_some_and(|b| b != pin::AUTO),
                seen_hash: &p.seen_hash,
            });
            let Decision { serve, write } = pin::decide(view.as_ref(), hash, poisoning, mode);
            let held_now = |reason: Option<&str>, state: PinState| Held {
                state,
                reason: reason.map(str::to_string).unwrap_or_else(|| "waiting for an administrator".into()),
            };
            let Some(w) = write else {
                return Ok((!serve).then(|| {
                    let p = prior.as_ref();
                    held_now(p.and_then(|p| p.reason.as_deref()), state.unwrap_or(PinState::Pending))
                }));
            };
            let now = chrono::Utc::now();
            let mut record = prior.clone().unwrap_or_else(|| PinRecord {
                server: server.to_string(),
                kind: kind.as_str().to_string(),
                name: name.to_string(),
                state: String::new(),
                reason: None,
                approved_hash: None,
                approved_definition: None,
                approved_by: None,
                seen_hash: String::new(),
                seen_definition: String::new(),
                version: 0,
                created_at: now,
                updated_at: now,
            });
            record.state = w.state.as_str().to_string();
            if w.reason.is_some() || w.state == PinState::Pinned {
                record.reason = w.reason.clone();
            }
            record.seen_hash = hash.to_string();
            record.seen_definition = canonical.to_string();
            if w.approve_auto {
                record.approved_hash = Some(hash.to_string());
                record.approved_definition = Some(canonical.to_string());
                record.approved_by = Some(pin::AUTO.to_string());
            }
            match self.store.write_pin(&record, prior.as_ref().map(|p| p.version)).await {
                Ok(Some(written)) => {
                    self.rows.write().expect("poisoned").insert(key.clone(), written.clone());
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.record_transition(prior.as_ref(), &written, findings).await;
                    return Ok((!serve).then(|| held_now(written.reason.as_deref(), w.state)));
                }
                Ok(None) => match self.store.get_pin(server, kind.as_str(), name).await {
                    Ok(Some(fresh)) => {
                        self.rows.write().expect("poisoned").insert(key.clone(), fresh);
                    }
                    Ok(None) => {
                        self.rows.write().expect("poisoned").remove(&key);
                    }
                    Err(e) => {
                        tracing::warn!(server, item = name, error = %e, "a pin cannot be read; the item is not served");
                        return Err(store_failed("read"));
                    }
                },
                Err(e) => {
                    tracing::warn!(server, item = name, error = %e, "a pin cannot be written; the item is not served");
                    return Err(store_failed("written"));
                }
            }
        }
        Err(store_failed("agreed on"))
    }

    /// Logs and audits a pin this gateway changed.
    async fn record_transition(&self, prior: Option<&PinRecord>, now: &PinRecord, findings: &[Finding]) {
        let what = match now.state.as_str() {
            "pinned" => "pinned",
            "pending" => "pending",
            _ => "quarantined",
        };
        let kind = format!("{}.{what}", now.kind);
        match what {
            "pinned" => {
                tracing::info!(server = %now.server, item = %now.name, kind = %now.kind, "pinned on first sight")
            }
            _ => tracing::warn!(
                server = %now.server,
                item = %now.name,
                kind = %now.kind,
                state = %now.state,
                reason = now.reason.as_deref().unwrap_or(""),
                "not served until an administrator approves it (bastion tools diff/approve)"
            ),
        }
        let mut detail = json!({
            "kind": now.kind,
            "state": now.state,
            "hash": now.seen_hash,
            "approved_hash": now.approved_hash,
            "previous_state": prior.map(|p| p.state.as_str()),
        });
        if !findings.is_empty() {
            detail["findings"] = findings_detail(findings);
        }
        self.audit(&kind, &now.server, &now.name, now.reason.clone(), detail).await;
    }

    /// A poisoned item under `warn` (served), or of a server without
    /// pinning under `quarantine` (not served): logged and audited once per
    /// definition.
    #[allow(clippy::too_many_arguments)]
    async fn note_poisoning(
        &self,
        server: &str,
        kind: ItemKind,
        name: &str,
        hash: &str,
        summary: &str,
        findings: &[Finding],
        quarantine: bool,
    ) {
        if !self.warned.lock().expect("poisoned").first(&(server, kind.as_str(), name, hash)) {
            return;
        }
        let (action, event, message, reason) = if quarantine {
            (
                "quarantine",
                "quarantined",
                "poisoned description not served (poisoning: quarantine)",
                format!("poisoning: {summary}"),
            )
        } else {
            ("warn", "poisoning", "poisoned description served (poisoning: warn)", summary.to_string())
        };
        tracing::warn!(server, item = name, kind = kind.as_str(), findings = summary, "{message}");
        let detail =
            json!({"kind": kind.as_str(), "hash": hash, "action": action, "findings": findings_detail(findings)});
        self.audit(&format!("{}.{event}", kind.as_str()), server, name, Some(reason), detail).await;
    }

    async fn audit(&self, kind: &str, server: &str, name: &str, reason: Option<String>, detail: Value) {
        let Some(audit) = &self.audit else { return };
        let mut e = Event::new(kind, Outcome::Ok);
        e.server = Some(server.to_string());
        e.tool = Some(name.to_string());
        e.reason = reason;
        e.detail = Some(detail);
        audit.record(e).await;
    }

    /// Takes in pins changed elsewhere; returns the servers whose pins
    /// changed.
    fn merge(&self, changed: Vec<PinRecord>) -> Vec<String> {
        let mut servers = Vec::new();
        let mut rows = self.rows.write().expect("poisoned");
        for r in changed {
            let Some(kind) = kind_of(&r.kind) else { continue };
            let key = (r.server.clone(), kind, r.name.clone());
            if rows.get(&key).is_some_and(|mine| mine.version >= r.version) {
                continue;
            }
            if !servers.contains(&r.server) {
                servers.push(r.server.clone());
            }
            rows.insert(key, r);
        }
        drop(rows);
        if !servers.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        servers
    }

    /// Pins removed elsewhere (`bastion tools forget`) are noticed on a
    /// full read: every [`FULL_READ_EVERY`] rounds.
    fn replace_all(&self, all: Vec<PinRecord>) -> Vec<String> {
        let mut fresh = HashMap::new();
        for r in all {
            if let Some(kind) = kind_of(&r.kind) {
                fresh.insert((r.server.clone(), kind, r.name.clone()), r);
            }
        }
        let mut rows = self.rows.write().expect("poisoned");
        let mut servers: Vec<String> = rows
            .iter()
            .filter(|(k, v)| fresh.get(*k).is_none_or(|f| f.version != v.version))
            .map(|(k, _)| k.0.clone())
            .chain(fresh.keys().filter(|k| !rows.contains_key(*k)).map(|k| k.0.clone()))
            .collect();
        servers.sort();
        servers.dedup();
        *rows = fresh;
        drop(rows);
        if !servers.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        servers
    }
}

/// Rounds of [`follow`] between full reads of the pins.
const FULL_READ_EVERY: u64 = 30;

fn kind_of(s: &str) -> Option<ItemKind> {
    match s {
        "tool" => Some(ItemKind::Tool),
        "prompt" => Some(ItemKind::Prompt),
        _ => None,
    }
}

/// What was found, for a log line or a reason: kinds and where.
fn summary(findings: &[Finding]) -> String {
    let mut parts: Vec<String> = findings.iter().map(|f| format!("{} at {}", f.kind.as_str(), f.field)).collect();
    parts.dedup();
    parts.truncate(5);
    parts.join(", ")
}

/// Findings for the audit trail: kind, where and the short reason (never
/// the definition).
fn findings_detail(findings: &[Finding]) -> Value {
    Value::Array(
        findings
            .iter()
            .take(20)
            .map(|f| json!({"kind": f.kind.as_str(), "field": f.field, "reason": f.reason}))
            .collect(),
    )
}

/// The JSON-RPC error of a call to an item that is not served.
fn held_error(kind: ItemKind, server: &str, name: &str, held: &Held) -> Value {
    let mut e = error_object(
        jsonrpc::FORBIDDEN,
        format!(
            "{} {name:?} of server {server:?} is {}: {}; an administrator must review it (bastion tools diff/approve)",
            kind.as_str(),
            held.state,
            held.reason
        ),
    );
    e["data"] = json!({"bastion": {"pin": held.state.as_str(), "server": server, kind.as_str(): name}});
    e
}

/// Before a call reaches `server`: refused when the tool (or prompt) is
/// not served. `method` is the request's (`tools/call`, `prompts/get`,
/// `completion/complete` for a prompt reference).
pub async fn admit(gw: &Gateway, server: &UpstreamHandle, kind: ItemKind, name: &str) -> Result<(), Value> {
    let modes = modes(&gw.runtime().config, server.name());
    if modes == (Pinning::Off, Poisoning::Warn) {
        return Ok(());
    }
    let (method, field) = kind.list();
    let list =
        server.list_all(method, field).await.map_err(|e| crate::proxy::log_call_error(server.name(), method, e))?;
    let verdict = gw.pins.screen(server.name(), kind, &list, modes).await;
    if let Some(h) = verdict.held(name) {
        tracing::info!(server = server.name(), item = name, state = %h.state, "call to an item not served refused");
        return Err(held_error(kind, server.name(), name, h));
    }
    if modes.0 != Pinning::Off && !list.iter().any(|i| i.get("name").and_then(Value::as_str) == Some(name)) {
        return Err(error_object(
            jsonrpc::INVALID_PARAMS,
            format!("Unknown {}: server {:?} does not list {name:?}", kind.as_str(), server.name()),
        ));
    }
    Ok(())
}

/// Follows the pins changed by others (the CLI, replicas): every
/// [`FOLLOW_INTERVAL`], the pins written since the last round; sessions
/// that can see a server whose pins changed are told its lists changed.
pub(crate) async fn follow(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let mut since = chrono::Utc::now() - chrono::Duration::seconds(2);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = gw.changed.pins.notified() => {}
        }
        if !gw.pins.loaded.load(Ordering::Acquire) {
            continue;
        }
        round += 1;
        let now = chrono::Utc::now();
        let servers = if round.is_multiple_of(FULL_READ_EVERY) {
            match gw.store.list_pins(None).await {
                Ok(all) => gw.pins.replace_all(all),
                Err(e) => {
                    tracing::debug!(error = %e, "could not read the pins");
                    continue;
                }
            }
        } else {
            // Store times have one-second resolution: look back a little.
            match gw.store.pins_changed_since(since - chrono::Duration::seconds(2)).await {
                Ok(changed) => gw.pins.merge(changed),
                Err(e) => {
                    tracing::debug!(error = %e, "could not check for changed pins");
                    continue;
                }
            }
        };
        since = now;
        if !servers.is_empty() {
            tracing::info!(servers = %servers.join(", "), "pins changed; lists are screened again");
            gw.announce_list_changes(&servers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_seen_is_bounded_and_seen_once() {
        let mut seen = Seen::default();
        assert!(seen.first(&("s", "tool", "a", "h1")));
        assert!(!seen.first(&("s", "tool", "a", "h1")));
        assert!(seen.first(&("s", "tool", "a", "h2")), "a new definition of the same name");
        assert!(seen.first(&("s", "prompt", "a", "h1")));
        for i in 0..Seen::MAX * 2 {
            seen.first(&("s", "tool", "flood", i));
            assert!(seen.keys.len() <= Seen::MAX);
        }
        // After starting over a warning may come again.
        assert!(seen.first(&("s", "tool", "a", "h1")));
    }
}
