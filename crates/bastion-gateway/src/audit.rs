//! The audit phase's machinery: the request path hands finished events to
//! an [`Auditor`], which only enqueues (a bounded queue); one writer task
//! appends them to the store's chain in batches (one transaction each).
//!
//! Nothing is dropped. When the queue is full, `audit.on_full` applies:
//! new requests are refused (the default: nothing happens unaudited) or
//! wait for room. When the store cannot be written, batches go to a spool
//! file in the data directory (JSON lines, mode 0600) and are replayed, in
//! order and before anything newer, once the store answers again. A batch
//! whose commit was lost in transit may be written twice; never not at all.
//!
//! Beside the store, every record can be streamed as a JSON line to
//! standard output or a file (`audit.stream`). A periodic task logs the
//! chain's head as a checkpoint (and appends it to `audit.checkpoint_file`)
//! and prunes records older than `audit.retention`, recording the prune in
//! the chain itself.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bastion_audit::{AuditKey, Checkpoint, Entry, Event, Fields, Outcome};
use bastion_core::config::{AuditConfig, Config, OnFull};
use bastion_store::Store;
use bastion_vault::KeySource;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How long the writer waits before trying the store again while records
/// are spooled.
const RETRY: Duration = Duration::from_secs(1);

/// How long the writer waits for more records before writing a batch.
/// Each commit costs whole pages, so a busy gateway's batches should be
/// large: at 10,000 calls/s this gathers the default 1000 records.
const LINGER: Duration = Duration::from_millis(100);

/// What derives the audit key from the key file's key.
const KEY_LABEL: &[u8] = b"bastion audit key v1";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit key: {0}")]
    Key(#[from] bastion_vault::KeyError),
    #[error("the audit spool {path}: {source}")]
    Spool { path: PathBuf, source: std::io::Error },
    #[error("the audit stream {path}: {source}")]
    Stream { path: String, source: std::io::Error },
}

/// The audit key's source for a configuration: `audit.key`, or the file
/// `audit.key` in the data directory.
pub fn key_source(config: &Config, config_path: &Path) -> KeySource {
    match &config.audit.key {
        Some(k) => crate::vault::source_of(k, config, config_path),
        None => KeySource::File(config.data_dir(config_path).join("audit.key")),
    }
}

/// Loads the audit key; with `create`, the default key file is made when
/// missing (its path is returned then).
pub fn load_key(config: &Config, config_path: &Path, create: bool) -> Result<(AuditKey, Option<PathBuf>), AuditError> {
    let source = key_source(config, config_path);
    let (key, created) = match (&source, create, config.audit.key.is_none()) {
        (KeySource::File(path), true, true) => {
            let (key, created) = bastion_vault::load_or_create_key_file(path)?;
            (key, created.then(|| path.clone()))
        }
        _ => (source.load()?, None),
    };
    Ok((AuditKey::from_bytes(&key.derive(KEY_LABEL)), created))
}

enum Msg {
    Record(Entry),
    /// Answered once everything sent before it is written or spooled.
    Flush(oneshot::Sender<()>),
}

/// The request path's side of the audit trail.
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    key: Arc<AuditKey>,
    on_full: OnFull,
    capacity: usize,
    /// The writer is woken early when this many records wait (a batch, or
    /// half the queue when that is less, so a small queue never fills
    /// while the writer lingers), rather than by every record.
    wake_at: usize,
    wake: Arc<Notify>,
    /// Anomaly signals, raised from the records as they pass.
    watch: Option<crate::anomaly::Watch>,
    counts: Arc<Counts>,
}

/// What the writer has done, for the metrics.
#[derive(Debug, Default)]
struct Counts {
    written: AtomicU64,
    spooled: AtomicU64,
}

impl Auditor {
    /// Starts the writer (and the checkpoint and retention task, stopped by
    /// `shutdown`).
    pub fn start(
        config: &AuditConfig,
        data_dir: &Path,
        store: Store,
        key: AuditKey,
        shutdown: CancellationToken,
    ) -> Result<Arc<Auditor>, AuditError> {
        let key = Arc::new(key);
        let spool = Spool::open(data_dir.join("audit-spool.jsonl"))?;
        let stream = match config.stream.as_deref() {
            None => None,
            Some("stdout") => Some(Stream::Stdout),
            Some(path) => Some(Stream::File(
                open_private_append(Path::new(path))
                    .map_err(|source| AuditError::Stream { path: path.to_string(), source })?,
            )),
        };
        let (tx, rx) = mpsc::channel(config.queue);
        let counts = Arc::new(Counts::default());
        let wake = Arc::new(Notify::new());
        let writer = Writer {
            wake: wake.clone(),
            counts: counts.clone(),
            store: store.clone(),
            key: key.clone(),
            chain: config.chain.clone(),
            batch: config.batch.max(1),
            spool,
            stream,
            warned: false,
        };
        tokio::spawn(writer.run(rx));
        let watch = config.anomaly.enabled.then(|| crate::anomaly::Watch::new(config.anomaly.clone()));
        let auditor = Arc::new(Auditor {
            tx,
            key: key.clone(),
            on_full: config.on_full,
            capacity: config.queue,
            wake_at: config.batch.min(config.queue / 2).max(1),
            wake,
            watch,
            counts,
        });
        tokio::spawn(housekeeping(auditor.clone(), store, config.clone(), shutdown));
        Ok(auditor)
    }

    /// Whether a new request may start: with `on_full: refuse`, not while
    /// the queue is full.
    pub fn admits(&self) -> bool {
        self.on_full == OnFull::Wait || self.tx.capacity() > 0
    }

    /// Records waiting to be written.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Enqueues an event, waiting for room when the queue is full (a
    /// request admitted while there was room is always recorded). The
    /// event is written as its text here, on the request's thread, so that
    /// one string goes to the writer rather than the event's many.
    pub async fn record(&self, event: Event) {
        let (entry, signals) = self.text_of(&event.fields());
        self.enqueue_all(entry, signals).await;
    }

    /// A record's text, and the anomaly signals it raises.
    fn text_of(&self, fields: &Fields<'_>) -> (Entry, Vec<Event>) {
        let signals = match &self.watch {
            Some(w) => w.observe(fields, std::time::Instant::now()),
            None => Vec::new(),
        };
        (fields.entry(), signals)
    }

    async fn enqueue_all(&self, entry: Entry, signals: Vec<Event>) {
        self.enqueue(entry).await;
        for signal in signals {
            self.enqueue(signal.entry()).await;
        }
    }

    /// Records written to the store so far.
    pub fn written(&self) -> u64 {
        self.counts.written.load(Ordering::Relaxed)
    }

    /// Records written to the spool so far.
    pub fn spooled(&self) -> u64 {
        self.counts.spooled.load(Ordering::Relaxed)
    }

    /// Anomaly signals raised so far, by kind.
    pub fn anomalies(&self) -> Option<[(crate::anomaly::Signal, u64); 3]> {
        self.watch.as_ref().map(|w| w.raised())
    }

    async fn enqueue(&self, entry: Entry) {
        match self.tx.try_send(Msg::Record(entry)) {
            Ok(()) => {
                if self.depth() >= self.wake_at {
                    self.wake.notify_one();
                }
            }
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.wake.notify_one();
                if self.tx.send(msg).await.is_err() {
                    tracing::error!("the audit writer has stopped; a record was not written");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the audit writer has stopped; a record was not written");
            }
        }
    }

    /// Waits until everything enqueued before is written to the store or
    /// spooled.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            self.wake.notify_one();
            let _ = rx.await;
        }
    }
}

/// How a principal was authenticated, as the audit trail names it.
pub fn auth_name(method: crate::auth::Method) -> &'static str {
    match method {
        crate::auth::Method::ApiKey => "api_key",
        crate::auth::Method::Token => "oidc",
        crate::auth::Method::Certificate => "mtls",
        crate::auth::Method::None => "none",
    }
}

/// An event about a request from `origin`, with no principal (refused
/// before one was known).
pub fn origin_event(kind: &str, outcome: Outcome, origin: &crate::auth::Origin) -> Event {
    let ip = origin.client_ip.map(IpText::new);
    origin_fields(kind, outcome, origin, ip.as_ref()).to_event()
}

/// An event about `principal`, with where its request came from.
pub fn principal_event(kind: &str, outcome: Outcome, principal: &crate::auth::Principal) -> Event {
    let ip = principal.origin.client_ip.map(IpText::new);
    principal_fields(kind, outcome, principal, ip.as_ref()).to_event()
}

/// The fields of a record about a request from `origin`; `ip` is its
/// address's text.
fn origin_fields<'a>(
    kind: &'a str,
    outcome: Outcome,
    origin: &'a crate::auth::Origin,
    ip: Option<&'a IpText>,
) -> Fields<'a> {
    let mut f = Fields::new(kind, outcome);
    f.client_ip = ip.map(IpText::as_str);
    f.request_id = origin.request_id.as_deref();
    f.trace_id = origin.trace_id.as_deref();
    f
}

/// The fields of a record about `principal`'s request.
fn principal_fields<'a>(
    kind: &'a str,
    outcome: Outcome,
    principal: &'a crate::auth::Principal,
    ip: Option<&'a IpText>,
) -> Fields<'a> {
    let mut f = origin_fields(kind, outcome, &principal.origin, ip);
    f.user = Some(&principal.user);
    f.auth = Some(auth_name(principal.method));
    f
}

/// Bytes of a value's compact JSON text (as serde_json writes it), counted
/// from the value without writing it: each string is read once for what
/// it escapes, and most escape nothing.
fn json_len(v: &Value) -> u64 {
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => number_len(n),
        Value::String(s) => string_len(s),
        Value::Array(items) => 2 + items.len().saturating_sub(1) as u64 + items.iter().map(json_len).sum::<u64>(),
        Value::Object(members) => {
            2 + members.len().saturating_sub(1) as u64
                + members.iter().map(|(k, v)| string_len(k) + 1 + json_len(v)).sum::<u64>()
        }
    }
}

/// A string's length as JSON: quoted, with `"`, `\\` and the control
/// characters escaped as serde_json escapes them.
fn string_len(s: &str) -> u64 {
    let escaped = s.bytes().fold(0u64, |n, b| {
        n + match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        }
    });
    2 + s.len() as u64 + escaped
}

fn number_len(n: &serde_json::Number) -> u64 {
    fn digits(mut u: u64) -> u64 {
        let mut d = 1;
        while u >= 10 {
            u /= 10;
            d += 1;
        }
        d
    }
    if let Some(u) = n.as_u64() {
        digits(u)
    } else if let Some(i) = n.as_i64() {
        1 + digits(i.unsigned_abs())
    } else {
        n.to_string().len() as u64
    }
}

/// Records one MCP request and its outcome: who asked what, how it
/// ended, what decided a denial, a keyed digest of the arguments, what the
/// data guard found, sizes (`size_out`, when the answer's length is known
/// from the wire, else the result's) and duration. Written from borrowed
/// fields: nothing is copied into an event of its own first.
#[allow(clippy::too_many_arguments)]
pub async fn record_request(
    auditor: &Auditor,
    principal: &crate::auth::Principal,
    scope: &crate::session::Scope,
    session: Option<&crate::session::Session>,
    req: &bastion_core::jsonrpc::Request,
    outcome: &Result<Value, Value>,
    notes: crate::proxy::Notes,
    started: std::time::Instant,
    size_out: Option<u64>,
) {
    let (entry, signals) = {
        let (result, code) = match outcome {
            Ok(_) => (Outcome::Ok, None),
            Err(e) => {
                let code = e.get("code").and_then(Value::as_i64);
                let denied =
                    matches!(code, Some(bastion_core::jsonrpc::FORBIDDEN) | Some(bastion_core::jsonrpc::LIMIT_REACHED));
                (if denied { Outcome::Denied } else { Outcome::Error }, code)
            }
        };
        let ip = principal.origin.client_ip.map(IpText::new);
        let params = req.params.as_ref();
        let digest = params.and_then(|p| p.get("arguments")).map(|args| auditor.key.arguments_digest(args));
        let detail = (!notes.guard.is_empty()).then(|| serde_json::json!({ "guard": notes.guard }));
        let mut f = principal_fields("mcp.request", result, principal, ip.as_ref());
        f.method = Some(&req.method);
        f.session = session.filter(|s| s.is_client_session()).map(|s| crate::http::short(&s.id));
        let named = match req.method.as_str() {
            "tools/call" | "prompts/get" => {
                params.and_then(|p| p.get("name")).and_then(Value::as_str).map(|n| (n, false))
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                params.and_then(|p| p.get("uri")).and_then(Value::as_str).map(|u| (u, true))
            }
            _ => None,
        };
        match (scope, named) {
            (crate::session::Scope::Server(server), named) => {
                f.server = Some(server);
                f.tool = named.map(|(n, _)| n);
            }
            (_, Some((name, is_uri))) => {
                let split =
                    if is_uri { bastion_core::naming::split_uri(name) } else { bastion_core::naming::split_name(name) };
                match split {
                    Some((server, inner)) => {
                        f.server = Some(server);
                        f.tool = Some(inner);
                    }
                    None => f.tool = Some(name),
                }
            }
            _ => {}
        }
        f.args_digest = digest.as_ref().map(bastion_audit::ArgumentsDigest::as_str);
        f.policy = notes.policy.as_deref();
        f.detail = detail.as_ref();
        f.error_code = code;
        f.bytes_in = Some(params.map_or(0, json_len));
        f.bytes_out = Some(size_out.unwrap_or_else(|| match outcome {
            Ok(v) | Err(v) => json_len(v),
        }));
        f.duration_us = Some(started.elapsed().as_micros() as u64);
        auditor.text_of(&f)
    };
    auditor.enqueue_all(entry, signals).await;
}

/// An IP address's text, kept in place.
struct IpText {
    text: [u8; 45],
    len: usize,
}

impl IpText {
    fn new(ip: std::net::IpAddr) -> IpText {
        let mut t = IpText { text: [0; 45], len: 0 };
        match ip {
            // The common case, digit by digit rather than through `fmt`.
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            // The longest form (IPv6 with an embedded IPv4 address) is 45
            // bytes.
            std::net::IpAddr::V6(_) => {
                let _ = std::fmt::Write::write_fmt(&mut t, format_args!("{ip}"));
            }
        }
        t
    }

    /// One byte more; an IPv4 address's 15 at most always fit.
    fn push(&mut self, b: u8) {
        self.text[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len]).expect("an address's text is ASCII")
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dest = self.text.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dest.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The periodic work: a checkpoint of the chain's head, and pruning.
async fn housekeeping(auditor: Arc<Auditor>, store: Store, config: AuditConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(config.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let retention = chrono::Duration::from_std(config.retention).unwrap_or(chrono::Duration::MAX);
        let before = (chrono::Utc::now() - retention).timestamp_micros();
        match store.prune_audit(&config.chain, before).await {
            Ok(0) => {}
            Ok(removed) => {
                let through = store.audit_head(&config.chain).await.ok().flatten().map(|h| h.anchor_seq);
                tracing::info!(chain = %config.chain, removed, ?through, "audit records past their retention pruned");
                let mut e = Event::new("audit.prune", Outcome::Ok);
                e.detail = Some(json!({"removed": removed, "through": through, "chain": config.chain}));
                auditor.record(e).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not prune the audit trail"),
        }
        match store.audit_head(&config.chain).await {
            Ok(Some(head)) if head.seq > 0 => {
                let cp = Checkpoint {
                    chain: config.chain.clone(),
                    seq: head.seq,
                    mac: hex::encode(head.mac),
                    ts: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                };
                tracing::info!(chain = %cp.chain, seq = cp.seq, mac = %cp.mac, "audit checkpoint");
                if let Some(path) = &config.checkpoint_file {
                    let line = serde_json::to_string(&cp).expect("serializes");
                    if let Err(e) = open_private_append(path).and_then(|mut f| writeln!(f, "{line}")) {
                        tracing::warn!(path = %path.display(), error = %e, "could not write the audit checkpoint");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the audit chain's head"),
        }
    }
}

/// Opens a file for appending, created with mode 0600.
fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

enum Stream {
    Stdout,
    File(std::fs::File),
}

impl Stream {
    fn write(&mut self, entries: &[Entry]) {
        let text = lines(entries);
        let result = match self {
            Stream::Stdout => std::io::stdout().lock().write_all(text.as_bytes()),
            Stream::File(f) => f.write_all(text.as_bytes()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not write to the audit stream");
        }
    }
}

/// Entries as JSON lines.
fn lines(entries: &[Entry]) -> String {
    let mut text = String::with_capacity(entries.iter().map(|e| e.body.len() + 1).sum());
    for e in entries {
        text.push_str(&e.body);
        text.push('\n');
    }
    text
}

/// Records kept on local disk while the store cannot be written.
struct Spool {
    path: PathBuf,
    /// How many records it holds (0: the file is empty or absent).
    len: usize,
}

impl Spool {
    fn open(path: PathBuf) -> Result<Spool, AuditError> {
        let len = match std::fs::read_to_string(&path) {
            Ok(text) => text.lines().filter(|l| !l.trim().is_empty()).count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(AuditError::Spool { path, source }),
        };
        if len > 0 {
            tracing::warn!(path = %path.display(), records = len, "audit records spooled earlier will be written to the store");
        }
        Ok(Spool { path, len })
    }

    fn append(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let text = lines(entries);
        let mut f = open_private_append(&self.path)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        self.len += entries.len();
        Ok(())
    }

    /// The spooled records, each read as an event and written again (so a
    /// line is sealed as the event it holds, not as whatever text it is).
    fn read(&self) -> std::io::Result<Vec<Entry>> {
        let text = std::fs::read_to_string(&self.path)?;
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match Event::from_body(l) {
                Ok(e) => Some(e.entry()),
                Err(e) => {
                    tracing::error!(error = %e, "an unreadable line in the audit spool was skipped");
                    None
                }
            })
            .collect())
    }

    /// Keeps only `rest` (replaces the file whole).
    fn keep(&mut self, rest: &[Entry]) -> std::io::Result<()> {
        if rest.is_empty() {
            std::fs::remove_file(&self.path)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
            self.len = 0;
            return Ok(());
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut spool = Spool { path: tmp.clone(), len: 0 };
        spool.append(rest)?;
        std::fs::rename(&tmp, &self.path)?;
        self.len = rest.len();
        Ok(())
    }
}

struct Writer {
    counts: Arc<Counts>,
    store: Store,
    key: Arc<AuditKey>,
    chain: String,
    batch: usize,
    spool: Spool,
    stream: Option<Stream>,
    /// Whether the store's failure was logged (once per outage).
    warned: bool,
    /// Rung when a batch is waiting, or a flush.
    wake: Arc<Notify>,
}

/// Seals a batch of records on a blocking thread. Sealing hashes every
/// record, a thousand of them in a busy gateway's batch: on the runtime's
/// thread that half a millisecond would be taken from answering requests,
/// and the runtime's threads are what limit a gateway's rate. Only the
/// batch crosses, once each way. Should the blocking thread not run (the
/// runtime shutting down), the batch is sealed here.
async fn seal_aside(
    key: Arc<AuditKey>,
    chain: String,
    first: u64,
    prev: bastion_audit::Mac,
    events: Arc<Vec<Entry>>,
) -> (Vec<bastion_audit::Batch>, bastion_audit::Mac) {
    let (k, c, e) = (key.clone(), chain.clone(), events.clone());
    match tokio::task::spawn_blocking(move || k.seal_batches(&c, first, prev, &e)).await {
        Ok(sealed) => sealed,
        Err(_) => key.seal_batches(&chain, first, prev, &events),
    }
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut events: Vec<Entry> = Vec::with_capacity(self.batch);
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let first = if self.spool.len == 0 {
                rx.recv().await
            } else {
                match tokio::time::timeout(RETRY, rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        self.replay().await;
                        continue;
                    }
                }
            };
            let Some(first) = first else { break };
            // Gather a batch: what is queued, then what arrives within the
            // linger, until the batch is full or a flush is asked for. One
            // transaction per batch is what keeps a busy gateway's writes
            // cheap; an idle one writes each record within the linger.
            // While it lingers the writer sleeps, woken by the request path
            // only once a batch waits (or for a flush), not by each record.
            let deadline = tokio::time::Instant::now() + LINGER;
            let mut next = Some(first);
            let mut lingered = false;
            loop {
                while let Some(msg) = next.take() {
                    match msg {
                        Msg::Record(e) => events.push(e),
                        Msg::Flush(done) => flushes.push(done),
                    }
                    if events.len() >= self.batch || !flushes.is_empty() {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
                let open = !rx.is_closed() || !rx.is_empty();
                if events.len() >= self.batch || !flushes.is_empty() || !open || lingered {
                    break;
                }
                // Once the linger is over, what came meanwhile still joins
                // the batch (the drain above), and then it is written.
                lingered = tokio::time::timeout_at(deadline, self.wake.notified()).await.is_err();
                next = rx.try_recv().ok();
            }
            if let Some(s) = &mut self.stream {
                s.write(&events);
            }
            self.write(&mut events).await;
            events.clear();
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Writes a batch after whatever is spooled, or spools it. The
    /// records are sealed on a blocking thread (see [`seal_aside`]) and
    /// given back in `events`.
    async fn write(&mut self, events: &mut Vec<Entry>) {
        if self.spool.len > 0 {
            self.replay().await;
        }
        if events.is_empty() {
            return;
        }
        if self.spool.len == 0 {
            let shared = Arc::new(std::mem::take(events));
            let seal = |first, prev| seal_aside(self.key.clone(), self.chain.clone(), first, prev, shared.clone());
            let written = self.store.append_audit_sealed(&self.chain, shared.len(), seal).await;
            // Every other holder is done with the records once the
            // append has returned.
            *events = Arc::try_unwrap(shared).unwrap_or_else(|s| s.as_ref().clone());
            match written {
                Ok(_) => {
                    self.counts.written.fetch_add(events.len() as u64, Ordering::Relaxed);
                    if self.warned {
                        tracing::info!("the audit trail is written to the store again");
                        self.warned = false;
                    }
                    return;
                }
                Err(e) => self.note_failure(&e),
            }
        }
        match self.spool.append(events.as_slice()) {
            Ok(()) => {
                self.counts.spooled.fetch_add(events.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // Neither the store nor the disk: say so loudly, every time.
                tracing::error!(error = %e, records = events.len(), path = %self.spool.path.display(),
                "audit records could be written neither to the store nor to the spool");
            }
        }
    }

    fn note_failure(&mut self, e: &bastion_store::StoreError) {
        if !self.warned {
            tracing::warn!(error = %e, path = %self.spool.path.display(),
                "the audit trail cannot be written to the store; records are spooled until it can");
            self.warned = true;
        }
    }

    /// Writes the spooled records to the store, in order, batch by batch;
    /// what could not be written stays spooled.
    async fn replay(&mut self) {
        let spooled = match self.spool.read() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit spool");
                return;
            }
        };
        let mut done = 0;
        for chunk in spooled.chunks(self.batch) {
            match self.store.append_audit(&self.key, &self.chain, chunk).await {
                Ok(_) => {
                    done += chunk.len();
                    self.counts.written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.note_failure(&e);
                    break;
                }
            }
        }
        if done > 0 {
            tracing::info!(records = done, "spooled audit records written to the store");
            if let Err(e) = self.spool.keep(&spooled[done..]) {
                tracing::error!(error = %e, "cannot rewrite the audit spool");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_keeps_order_and_empties() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path().join("s.jsonl")).unwrap();
        let events: Vec<Entry> = (0..5)
            .map(|i| {
                let mut e = Event::new("mcp.request", Outcome::Ok);
                e.tool = Some(i.to_string());
                e.entry()
            })
            .collect();
        spool.append(&events[..3]).unwrap();
        spool.append(&events[3..]).unwrap();
        assert_eq!(Spool::open(dir.path().join("s.jsonl")).unwrap().len, 5, "found again after a restart");
        let read = spool.read().unwrap();
        assert_eq!(read, events);
        spool.keep(&read[2..]).unwrap();
        assert_eq!(spool.read().unwrap(), events[2..]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("s.jsonl")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        spool.keep(&[]).unwrap();
        assert_eq!(spool.len, 0);
        assert!(!dir.path().join("s.jsonl").exists());
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "(?s).{0,16}".prop_map(Value::from),
            "[\"\\\\\u{0}-\u{1f}\u{7f}é😀a]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                proptest::collection::btree_map("(?s).{0,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in ["127.0.0.1", "255.255.255.255", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:192.0.2.1"]
        {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_address_is_written_as_display_writes_it(octets in proptest::prelude::any::<[u8; 4]>(), v6 in proptest::prelude::any::<[u16; 8]>()) {
            for ip in [std::net::IpAddr::from(octets), std::net::IpAddr::from(v6)] {
                let text = IpText::new(ip);
                proptest::prop_assert_eq!(text.as_str(), ip.to_string());
            }
        }

        #[test]
        fn json_len_is_the_length_serde_writes(v in any_json()) {
            proptest::prop_assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len() as u64);
        }
    }
}
