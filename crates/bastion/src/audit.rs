//! `bastion audit`: reading and checking the audit trail.
//!
//! - `verify` checks every chain (or one) record by record and exits 0
//!   only when all are intact; otherwise it names the first record where a
//!   chain was changed, cut, added to or reordered, and exits 1.
//! - `checkpoint` prints a chain's head as a JSON line, to keep elsewhere;
//!   `verify --checkpoints FILE` then proves the trail was not rewritten.
//! - `export`, `search` and `tail` print records (JSON lines with
//!   `--json`; `export` always), filtered by user, server, tool, outcome,
//!   kind and time.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bastion_audit::{Checkpoint, Head, Verifier};
use bastion_core::config::Config;
use bastion_store::{AuditFilter, AuditRow, Store};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::Value;

/// The chain is broken: the problem was printed; the exit status is 1.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail does not verify")]
pub struct Broken;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chains: exit 0 only if every record is intact.
    Verify {
        /// Only this chain.
        #[arg(long)]
        chain: Option<String>,
        /// Checkpoints kept elsewhere (JSON lines from `audit checkpoint`
        /// or `audit.checkpoint_file`): the chain must still agree.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
    },
    /// Print a chain's head as a checkpoint (a JSON line) to keep elsewhere.
    Checkpoint {
        /// The chain (default: the configured one).
        #[arg(long)]
        chain: Option<String>,
    },
    /// Every matching record as a JSON line, oldest first.
    Export(Filters),
    /// Matching records, oldest first, at most --limit.
    Search {
        #[command(flatten)]
        filters: Filters,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The last records (and, with --follow, those that come).
    Tail {
        #[command(flatten)]
        filters: Filters,
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Keep printing new records as they are written.
        #[arg(long)]
        follow: bool,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone, Default)]
pub struct Filters {
    #[arg(long, allow_hyphen_values = true)]
    user: Option<String>,
    #[arg(long)]
    server: Option<String>,
    #[arg(long)]
    tool: Option<String>,
    /// ok, error or denied.
    #[arg(long)]
    outcome: Option<String>,
    /// The kind of event (`mcp.request`, `auth.failure`, `key.create`…).
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    chain: Option<String>,
    /// From this time: RFC 3339 (`2026-12-01T00:00:00Z`) or a duration ago (`1h`).
    #[arg(long)]
    since: Option<String>,
    /// Before this time, in the same forms.
    #[arg(long)]
    until: Option<String>,
}

fn parse_time(flag: &str, s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc).timestamp_micros());
    }
    let ago = humantime::parse_duration(s)
        .with_context(|| format!("{flag} {s:?}: an RFC 3339 time or a duration such as 1h"))?;
    let ago = chrono::Duration::from_std(ago).context("the duration is too long")?;
    Ok((Utc::now() - ago).timestamp_micros())
}

impl Filters {
    fn to_filter(&self) -> anyhow::Result<AuditFilter> {
        if let Some(o) = &self.outcome {
            o.parse::<bastion_audit::Outcome>().map_err(anyhow::Error::msg)?;
        }
        Ok(AuditFilter {
            chain: self.chain.clone(),
            user: self.user.clone(),
            server: self.server.clone(),
            tool: self.tool.clone(),
            outcome: self.outcome.clone(),
            kind: self.kind.clone(),
            since: self.since.as_deref().map(|s| parse_time("--since", s)).transpose()?,
            until: self.until.as_deref().map(|s| parse_time("--until", s)).transpose()?,
            after: None,
        })
    }
}

/// A record as printed: its sealed text with its chain and number.
fn json_line(row: &AuditRow) -> String {
    let mut v: Value = serde_json::from_str(&row.record.body).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("chain".into(), row.chain.clone().into());
        m.insert("seq".into(), row.record.seq.into());
    }
    v.to_string()
}

fn table_line(row: &AuditRow) -> String {
    let v: Value = serde_json::from_str(&row.record.body).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let target = match (v.get("server").and_then(Value::as_str), v.get("tool").and_then(Value::as_str)) {
        (Some(server), Some(tool)) => format!("{server}/{tool}"),
        (Some(server), None) => server.to_string(),
        (None, Some(tool)) => tool.to_string(),
        (None, None) => "-".into(),
    };
    format!(
        "{:<27} {:>7} {:<14} {:<16} {:<8} {:<18} {}",
        s("ts"),
        row.record.seq,
        s("kind"),
        s("user"),
        s("outcome"),
        s("method"),
        target
    )
}

fn print_rows(rows: &[AuditRow], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for r in rows {
        let line = if json { json_line(r) } else { table_line(r) };
        if writeln!(out, "{line}").is_err() {
            // a closed pipe (`| head`) ends the listing quietly
            return Ok(());
        }
    }
    Ok(())
}

pub async fn run(config_path: &Path, cmd: AuditCommand) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let store = crate::migrate::open_store(&config, config_path).await?;
    let result = match cmd {
        AuditCommand::Verify { chain, checkpoints } => verify(&config, config_path, &store, chain, checkpoints).await,
        AuditCommand::Checkpoint { chain } => {
            let chain = chain.unwrap_or_else(|| config.audit.chain.clone());
            let head = store.audit_head(&chain).await?.with_context(|| format!("no audit chain {chain:?}"))?;
            let cp = Checkpoint {
                chain,
                seq: head.seq,
                mac: hex::encode(head.mac),
                ts: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            };
            println!("{}", serde_json::to_string(&cp)?);
            Ok(())
        }
        AuditCommand::Export(filters) => {
            let mut filter = filters.to_filter()?;
            loop {
                let page = store.search_audit(&filter, 1000, false).await?;
                let Some(last) = page.last() else { break };
                filter.after = Some((last.record.ts, last.chain.clone(), last.record.seq));
                print_rows(&page, true)?;
            }
            Ok(())
        }
        AuditCommand::Search { filters, limit, json } => {
            let rows = store.search_audit(&filters.to_filter()?, limit, false).await?;
            print_rows(&rows, json)
        }
        AuditCommand::Tail { filters, lines, follow, json } => {
            let mut filter = filters.to_filter()?;
            let rows = store.search_audit(&filter, lines, true).await?;
            print_rows(&rows, json)?;
            if follow {
                if let Some(last) = rows.last() {
                    filter.after = Some((last.record.ts, last.chain.clone(), last.record.seq));
                } else if filter.since.is_none() {
                    filter.since = Some(Utc::now().timestamp_micros());
                }
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                        _ = tokio::signal::ctrl_c() => break,
                    }
                    let page = store.search_audit(&filter, 1000, false).await?;
                    if let Some(last) = page.last() {
                        filter.after = Some((last.record.ts, last.chain.clone(), last.record.seq));
                        print_rows(&page, json)?;
                    }
                }
            }
            Ok(())
        }
    };
    store.close().await;
    result
}

async fn verify(
    config: &Config,
    config_path: &Path,
    store: &Store,
    only: Option<String>,
    checkpoints: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (key, _) = bastion_gateway::audit::load_key(config, config_path, false)
        .context("the audit key is needed to verify the trail")?;
    let kept: Vec<Checkpoint> = match &checkpoints {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .enumerate()
                .map(|(i, l)| {
                    serde_json::from_str(l)
                        .with_context(|| format!("{} line {}: not a checkpoint", path.display(), i + 1))
                })
                .collect::<anyhow::Result<_>>()?
        }
    };
    let chains = match only {
        Some(c) => vec![c],
        None => {
            let mut all = store.audit_chains().await?;
            for cp in &kept {
                if !all.contains(&cp.chain) {
                    all.push(cp.chain.clone());
                }
            }
            all
        }
    };
    let mut broken = false;
    for chain in &chains {
        let Some(head) = store.audit_head(chain).await? else {
            if kept.iter().any(|cp| &cp.chain == chain) {
                eprintln!("chain {chain}: missing from the store, but a checkpoint names it (the trail was removed)");
                broken = true;
                continue;
            }
            bail!("no audit chain {chain:?}");
        };
        match verify_chain(&key, store, chain, &head, &kept).await? {
            Ok(summary) => eprintln!("chain {chain}: {summary}"),
            Err(problem) => {
                println!("chain {chain}: {problem}");
                broken = true;
            }
        }
    }
    if broken {
        return Err(Broken.into());
    }
    if chains.is_empty() {
        eprintln!("no audit records yet");
    }
    Ok(())
}

async fn verify_chain(
    key: &bastion_audit::AuditKey,
    store: &Store,
    chain: &str,
    head: &Head,
    kept: &[Checkpoint],
) -> anyhow::Result<Result<String, bastion_audit::Problem>> {
    let mut v = Verifier::new(key, chain, head);
    for cp in kept.iter().filter(|cp| cp.chain == chain) {
        if let Err(what) = v.expect(cp) {
            return Ok(Err(bastion_audit::Problem { seq: cp.seq, what }));
        }
    }
    // A pruned chain must say, in a record, that it was pruned that far.
    let mut pruned_through = Vec::new();
    // Every stored batch is read, in order, whatever its bounds say.
    let mut after = None;
    loop {
        let page = store.audit_batches(chain, after, 64).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.first);
        for b in &page {
            if let Err(problem) = v.batch(b.first, b.last, b.ts_min, b.ts_max, &b.records) {
                return Ok(Err(problem));
            }
            for r in b.records.iter().filter(|r| r.kind == "audit.prune") {
                if let Ok(e) = bastion_audit::Event::from_body(&r.body)
                    && let Some(through) = e.detail.as_ref().and_then(|d| d.get("through")).and_then(Value::as_u64)
                {
                    pruned_through.push(through);
                }
            }
        }
    }
    let verified = match v.finish(head) {
        Ok(v) => v,
        Err(problem) => return Ok(Err(problem)),
    };
    if head.anchor_seq > 0 && !pruned_through.contains(&head.anchor_seq) {
        return Ok(Err(bastion_audit::Problem {
            seq: head.anchor_seq + 1,
            what: format!("records up to {} are gone, and no prune record says they were pruned", head.anchor_seq),
        }));
    }
    let mut summary = format!("{} records intact ({} to {})", verified.records, verified.first, verified.last);
    if verified.checkpoints > 0 {
        summary.push_str(&format!(", {} checkpoints agree", verified.checkpoints));
    }
    if verified.pruned_checkpoints > 0 {
        summary.push_str(&format!(", {} checkpoints older than the records kept", verified.pruned_checkpoints));
    }
    Ok(Ok(summary))
}

/// Who runs this command: the operating-system user.
pub(crate) fn operator() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()))
}

/// Records a change made by an administration command (`key.create`,
/// `secret.set`, `user.rm`…) in the audit trail, after it was made: the
/// operator, the command's target in `detail`, never a secret value. A
/// change that cannot be recorded is reported as an error (the command then
/// exits non-zero), though it was made.
pub async fn record_change(
    config: &Config,
    config_path: &Path,
    store: &Store,
    kind: &str,
    detail: Value,
) -> anyhow::Result<()> {
    if !config.audit.enabled {
        return Ok(());
    }
    let (key, created) = bastion_gateway::audit::load_key(config, config_path, true)
        .context("the change was made, but the audit key cannot be read to record it")?;
    if let Some(path) = created {
        eprintln!("created a new audit key in {} (mode 0600); back it up", path.display());
    }
    let mut event = bastion_audit::Event::new(kind, bastion_audit::Outcome::Ok);
    event.user = Some(operator());
    event.auth = Some("cli".into());
    event.detail = Some(detail);
    store
        .append_audit(&key, &config.audit.chain, &[event])
        .await
        .context("the change was made, but could not be recorded in the audit trail")?;
    Ok(())
}
