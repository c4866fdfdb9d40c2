//! The gateway's shared state: the current configuration and the upstream
//! handles built from it, the sessions, what each principal holds, the
//! authenticator, the store, and the background tasks that keep them tidy
//! (notification fan-out, idle and lifetime reaping, closing what revoked
//! or expired keys opened, usage flushing, config reload).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bastion_core::config::Config;
use bastion_core::naming;
use bastion_store::Store;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::{ApiKeyAuthenticator, AuthError, ClientCert, Principal, TokenAuthenticator, bearer_token};
use crate::load::{Kind, LimitReached, PrincipalLoad, Slot};
use crate::outbox::{Budget, Coalesce};
use crate::session::{NewSession, Scope, Session, Sessions};
use crate::upstream::{Caller, ServerNotification, UpstreamHandle, is_broadcast, specs_from_config};
use dashmap::DashMap;

/// A configuration and the upstreams built from it.
pub struct Runtime {
    pub config: Config,
    pub upstreams: BTreeMap<String, Arc<UpstreamHandle>>,
}

/// The data guard of the current configuration, its detectors compiled
/// once; shared with the upstream connections, which relay servers'
/// requests to clients.
pub type GuardCell = Arc<ArcSwap<bastion_guard::Guard>>;

/// How callers are authenticated.
pub enum Authentication {
    ApiKeys(Arc<ApiKeyAuthenticator>),
    /// Only with an explicit flag, only on loopback.
    Disabled,
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// The data guard of the current configuration.
    pub guard: GuardCell,
    pub sessions: Sessions,
    /// Graceful shutdown of the request path.
    pub drain: crate::drain::Drain,
    /// Open descriptors against the open-file limit.
    pub descriptors: Arc<crate::descriptors::Descriptors>,
    /// Calls of stateless clients waiting for their input (multi round-trip).
    pub continuations: crate::mrtr::Continuations,
    /// What each principal holds, against `limits.per_principal`.
    pub load: PrincipalLoad,
    /// Credentials with stateless requests in flight, each with a token
    /// cancelled when the credential is revoked or expires.
    watched: Arc<DashMap<Arc<str>, (CancellationToken, usize)>>,
    pub authentication: Authentication,
    /// Users' current access and the policy engine.
    pub authorizer: crate::access::Authorizer,
    /// Access tokens of the configured identity providers; rebuilt when
    /// `auth` changes on reload.
    pub tokens: arc_swap::ArcSwapOption<TokenAuthenticator>,
    pub store: Store,
    spawn_permits: Arc<Semaphore>,
    /// How many permits `spawn_permits` has in all (it is resized on reload).
    spawn_permits_total: std::sync::Mutex<usize>,
    notifications: mpsc::UnboundedSender<ServerNotification>,
    config_path: PathBuf,
    base_dir: PathBuf,
    /// Secrets for servers' `env` and `headers`.
    pub vault: Arc<crate::vault::Vault>,
    /// The audit trail (`None` with `audit.enabled: false`).
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// What `/metrics` shows.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Pins of the tools and prompts servers list (`crate::pins`).
    pub pins: crate::pins::Pins,
    /// Rate limits, quotas, concurrency and lockdown (`crate::limit`).
    pub limits: Arc<crate::limit::Limits>,
    /// Woken when the store says another process changed something.
    pub changed: Changed,
}

/// What other processes sharing the store (the CLI, replicas) changed, as
/// the store's change feed tells: each wakes the task that follows it, at
/// once rather than at its next round.
#[derive(Default)]
pub struct Changed {
    pub keys: tokio::sync::Notify,
    pub users: tokio::sync::Notify,
    pub pins: tokio::sync::Notify,
}

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Policy(#[from] crate::access::PolicyLoadError),
    #[error("the secrets vault: {0}")]
    Vault(#[from] crate::vault::VaultError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("the data guard: {0}")]
    Guard(#[from] bastion_guard::Error),
}

impl Gateway {
    /// Builds the gateway and starts its background tasks, which stop when
    /// `shutdown` is cancelled.
    pub fn start(
        config: Config,
        config_path: &Path,
        store: Store,
        authentication: Authentication,
        shutdown: CancellationToken,
    ) -> Result<Arc<Gateway>, StartError> {
        let engine = crate::access::load_engine(&config, config_path)?;
        let source = crate::vault::key_source(&config, config_path);
        let (vault, created) = crate::vault::Vault::open(store.clone(), source, true)?;
        if let Some(path) = created {
            tracing::warn!(
                path = %path.display(),
                "created a new master key for the secrets vault (mode 0600); back it up: without it no secret can be read"
            );
        }
        let vault = Arc::new(vault);
        let audit = if config.audit.enabled {
            let (key, created) = crate::audit::load_key(&config, config_path, true)?;
            if let Some(path) = created {
                tracing::warn!(
                    path = %path.display(),
                    "created a new audit key (mode 0600); back it up: without it the audit trail cannot be verified"
                );
            }
            let data_dir = config.data_dir(config_path);
            Some(crate::audit::Auditor::start(&config.audit, &data_dir, store.clone(), key, shutdown.clone())?)
        } else {
            None
        };
        let guard: GuardCell =
            Arc::new(ArcSwap::from_pointee(bastion_guard::Guard::compile(&config.guard, &config.servers)?));
        let (tx, rx) = mpsc::unbounded_channel();
        let base_dir =
            config_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let spawn_permits = Arc::new(Semaphore::new(config.upstream.max_concurrent_spawns));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let upstreams = build_upstreams(
            &config,
            &base_dir,
            &spawn_permits,
            &tx,
            &vault,
            &metrics,
            &guard,
            audit.as_ref(),
            &BTreeMap::new(),
        );
        let gw = Arc::new(Gateway {
            sessions: Sessions::new(Budget::new(config.http.stream_queue_bytes, config.http.stream_queue_total_bytes)),
            drain: Default::default(),
            descriptors: Default::default(),
            continuations: Default::default(),
            load: PrincipalLoad::default(),
            watched: Default::default(),
            spawn_permits_total: std::sync::Mutex::new(config.upstream.max_concurrent_spawns),
            tokens: arc_swap::ArcSwapOption::new(TokenAuthenticator::from_config(&config.auth)),
            pins: crate::pins::Pins::new(store.clone(), audit.clone()),
            limits: Arc::new(crate::limit::Limits::new(&config.limits)),
            changed: Changed::default(),
            authorizer: crate::access::Authorizer::new(&config, engine, store.clone()),
            runtime: ArcSwap::from_pointee(Runtime { config, upstreams }),
            guard,
            authentication,
            store,
            spawn_permits,
            notifications: tx,
            config_path: config_path.to_path_buf(),
            base_dir,
            vault,
            audit,
            metrics,
        });
        tokio::spawn(fan_out(gw.clone(), rx, shutdown.clone()));
        tokio::spawn(housekeeping(gw.clone(), shutdown.clone()));
        tokio::spawn(shed_slow_streams(gw.clone(), shutdown.clone()));
        tokio::spawn(close_ended_credentials(gw.clone(), shutdown.clone()));
        tokio::spawn(crate::pins::follow(gw.clone(), shutdown.clone()));
        tokio::spawn(follow_store_users(gw.clone(), shutdown.clone()));
        let redis_url = {
            let gw = Arc::downgrade(&gw);
            move || gw.upgrade().and_then(|gw| gw.runtime().config.limits.redis.clone())
        };
        tokio::spawn(gw.limits.clone().maintain(redis_url, shutdown.clone()));
        tokio::spawn(gw.limits.clone().flush_quotas(gw.store.clone(), shutdown.clone()));
        tokio::spawn(follow_changes(gw.clone(), shutdown));
        Ok(gw)
    }

    /// Takes one of the caller's slots of `kind`, under the live caps.
    pub fn acquire(&self, principal: &Principal, kind: Kind) -> Result<Slot, LimitReached> {
        let result = self.load.acquire(&principal.user, kind, &self.runtime().config.limits.per_principal);
        if let Err(e) = &result {
            self.metrics.denied(crate::metrics::Denial::Limit);
            // A refusal by a limit is a denial like any other: recorded
            // (off the caller's path, never dropped).
            if let Some(audit) = &self.audit {
                let mut event =
                    crate::audit::principal_event("limit.reached", bastion_audit::Outcome::Denied, principal);
                event.policy = Some(format!("limit:{}", kind.config_key()));
                event.reason = Some(e.to_string());
                event.error_code = Some(bastion_core::jsonrpc::LIMIT_REACHED);
                let audit = audit.clone();
                tokio::spawn(async move { audit.record(event).await });
            }
        }
        result
    }

    /// A token cancelled when the caller's credential is revoked or
    /// expires, for requests that belong to no session (stateless ones):
    /// a session's requests end with the session.
    pub fn watch_credential(&self, principal: &Principal) -> CredentialWatch {
        let mut entry =
            self.watched.entry(principal.credential.clone()).or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        CredentialWatch { map: self.watched.clone(), credential: principal.credential.clone(), token: entry.0.clone() }
    }

    /// Cancels what is in flight under credentials that ended.
    fn cancel_credentials(&self, ended: &[String]) -> usize {
        let mut n = 0;
        for key in ended {
            if let Some((_, (token, _))) = self.watched.remove(key.as_str()) {
                token.cancel();
                n += 1;
            }
        }
        n
    }

    /// Opens a session, under the principal's session cap (the internal
    /// session of a `subscriptions/listen` stream is under the stream caps).
    pub fn open_session(&self, s: NewSession) -> Result<Arc<Session>, LimitReached> {
        let slot = match s.listen {
            Some(_) => None,
            None => Some(self.acquire(&s.principal, Kind::Session)?),
        };
        Ok(self.sessions.create(s, slot))
    }

    /// Ends a client's session by id (DELETE, or its stream closing).
    pub fn close_session(&self, id: &str, principal: &Principal) -> bool {
        match self.sessions.remove(id, principal) {
            Some(s) => {
                self.release(&s);
                true
            }
            None => false,
        }
    }

    /// Gives back what ended sessions held upstream: a subscription the
    /// session was the last subscriber of is ended at its server.
    fn release(&self, session: &Session) {
        let uris: Vec<String> = session.subscriptions.lock().expect("poisoned").drain().collect();
        self.release_uris(session, uris);
    }

    /// Ends a session's subscriptions to `uris` at their servers (where it
    /// was the last subscriber).
    fn release_uris(&self, session: &Session, uris: Vec<String>) {
        for uri in uris {
            // By the server's name, not through the session's scope: a
            // group changed since must not keep the subscription alive.
            let (name, inner) = match &session.scope {
                Scope::Server(name) => (name.as_str(), uri.as_str()),
                _ => match naming::split_uri(&uri) {
                    Some(parts) => parts,
                    None => continue,
                },
            };
            let Some(server) = self.runtime().upstreams.get(name).cloned() else { continue };
            let server = server.for_user(&session.principal.user);
            let (inner, id) = (inner.to_string(), session.id.clone());
            tokio::spawn(async move {
                let subs = server.subscriptions();
                let _one_at_a_time = subs.changing().await;
                if subs.remove(&inner, &id) {
                    let params = serde_json::json!({"uri": inner});
                    if let Err(e) = server.call("resources/unsubscribe", Some(params), Caller::Gateway).await {
                        tracing::debug!(server = server.name(), error = %e, "unsubscribe after the session ended failed");
                    }
                }
            });
        }
    }

    /// Ends sessions picked by `pred`, releasing what they held.
    pub fn close_sessions_where(&self, pred: impl Fn(&Session) -> bool) -> usize {
        let ended = self.sessions.remove_where(pred);
        for s in &ended {
            self.release(s);
        }
        ended.len()
    }

    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Who is calling: the bearer token (an API key or an access token),
    /// else the connection's client certificate. When both are presented
    /// they must name the same user.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        cert: Option<&ClientCert>,
    ) -> Result<Principal, AuthError> {
        let Authentication::ApiKeys(keys) = &self.authentication else { return Ok(Principal::anonymous()) };
        let bearer = match bearer_token(headers) {
            Ok(t) => Some(t),
            Err(AuthError::Missing) => None,
            Err(e) => return Err(e),
        };
        let principal = match bearer {
            None => return cert.map(ClientCert::principal).ok_or(AuthError::Missing),
            Some(t) if bastion_core::apikey::looks_like_key(t) => keys.authenticate_key(t).await?,
            Some(t) if TokenAuthenticator::looks_like_jwt(t) => match self.tokens.load_full() {
                Some(tokens) => tokens.authenticate(t).await?,
                None => return Err(AuthError::InvalidToken("no identity provider is configured".into())),
            },
            Some(_) => return Err(AuthError::Invalid),
        };
        if let Some(c) = cert
            && c.user != principal.user
        {
            return Err(AuthError::Mismatch);
        }
        Ok(principal)
    }

    /// Whether a path segment names a group or a server.
    pub fn resolve_scope(&self, name: &str) -> Option<Scope> {
        let rt = self.runtime();
        if rt.config.groups.contains_key(name) {
            Some(Scope::Group(name.to_string()))
        } else if rt.upstreams.contains_key(name) {
            Some(Scope::Server(name.to_string()))
        } else {
            None
        }
    }

    /// The upstreams a scope exposes, in a stable order.
    pub fn servers_in(&self, scope: &Scope) -> Vec<Arc<UpstreamHandle>> {
        let rt = self.runtime();
        match scope {
            Scope::All => rt.upstreams.values().cloned().collect(),
            Scope::Group(g) => rt
                .config
                .groups
                .get(g)
                .map(|members| members.iter().filter_map(|m| rt.upstreams.get(m).cloned()).collect())
                .unwrap_or_default(),
            Scope::Server(s) => rt.upstreams.get(s).cloned().into_iter().collect(),
        }
    }

    pub fn scope_includes(&self, scope: &Scope, server: &str) -> bool {
        match scope {
            Scope::All => true,
            Scope::Server(s) => s == server,
            Scope::Group(g) => self.runtime().config.groups.get(g).is_some_and(|m| m.iter().any(|x| x == server)),
        }
    }

    /// Applies a new configuration. Servers whose definition did not change
    /// keep their handle — and so their process and cached lists; changed or
    /// removed ones are stopped. Every other setting applies at once, except
    /// those named in one warning as needing a restart.
    pub async fn apply_config(&self, config: Config) {
        let old = self.runtime.load_full();
        // A policy file that fails keeps the running policies; the rest of
        // the configuration still applies.
        // Policy files are read again on every reload, changed or not.
        // Parsing and validating policies is CPU work: off the async workers.
        let loaded = {
            let (config, path) = (config.clone(), self.config_path.clone());
            tokio::task::spawn_blocking(move || crate::access::load_engine(&config, &path))
                .await
                .unwrap_or_else(|e| Err(crate::access::PolicyLoadError(format!("policy loading failed: {e}"))))
        };
        let engine = match loaded {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!(error = %e, "policies not reloaded; the running policies are kept");
                None
            }
        };
        let access_changed = engine.is_some() || config.users != old.config.users || config.groups != old.config.groups;
        // A guard that cannot be built keeps the running one (the
        // configuration's checks make this rare: detectors are validated
        // when it is read).
        match bastion_guard::Guard::compile(&config.guard, &config.servers) {
            Ok(g) => self.guard.store(Arc::new(g)),
            Err(e) => tracing::error!(error = %e, "the data guard was not rebuilt; the running one is kept"),
        }
        let upstreams = build_upstreams(
            &config,
            &self.base_dir,
            &self.spawn_permits,
            &self.notifications,
            &self.vault,
            &self.metrics,
            &self.guard,
            self.audit.as_ref(),
            &old.upstreams,
        );
        let mut stopped = Vec::new();
        for (name, handle) in &old.upstreams {
            if !upstreams.get(name).is_some_and(|h| Arc::ptr_eq(h, handle)) {
                stopped.push(handle.clone());
            }
        }
        let added: Vec<String> = upstreams.keys().filter(|k| !old.upstreams.contains_key(*k)).cloned().collect();
        let kept = upstreams.len() - added.len();
        let (servers, replaced_or_removed) = (upstreams.len(), stopped.len());
        let restart = restart_required(&old.config, &config);
        if !restart.is_empty() {
            tracing::warn!(
                settings = %restart.join(", "),
                "these settings changed but take effect only after a restart; the running values stay"
            );
        }
        self.apply_live_settings(&config);
        let changed: Vec<String> = stopped.iter().map(|h| h.name().to_string()).chain(added).collect();
        let old_groups = old.config.groups.clone();
        let groups_changed = old_groups != config.groups;
        self.authorizer.apply(&config, engine);
        self.runtime.store(Arc::new(Runtime { config, upstreams }));
        tracing::info!(servers, replaced_or_removed, kept, "configuration applied");
        if access_changed {
            self.reauthorize_sessions(None).await;
        }
        // Sessions whose view changed are told their lists changed.
        for session in self.sessions.all() {
            let affected = match &session.scope {
                Scope::All => !changed.is_empty(),
                Scope::Server(s) => changed.contains(s),
                Scope::Group(g) => {
                    (groups_changed && old_groups.get(g) != self.runtime().config.groups.get(g))
                        || changed.iter().any(|c| {
                            self.scope_includes(&session.scope, c) || old_groups.get(g).is_some_and(|m| m.contains(c))
                        })
                }
            };
            if affected {
                for method in LIST_CHANGED {
                    deliver(&session, "", method, None);
                }
            }
        }
        // Replaced servers that were running start again at once; until
        // they are up, lists spanning servers show their previous lists,
        // and their sessions hear of the new lists when they are.
        for h in self.runtime().upstreams.values() {
            if h.stale_list("tools/list").is_some() {
                let (h, tx) = (h.clone(), self.notifications.clone());
                tokio::spawn(async move {
                    if h.warm_up().await {
                        for method in LIST_CHANGED {
                            let _ = tx.send(ServerNotification {
                                server: h.name().into(),
                                user: None,
                                method: method.into(),
                                params: None,
                            });
                        }
                    }
                });
            }
        }
        for h in stopped {
            h.shutdown().await;
        }
    }

    /// Tells the sessions that can see any of `servers` that their tool
    /// and prompt lists may have changed (pins changed elsewhere).
    pub(crate) fn announce_list_changes(&self, servers: &[String]) {
        for session in self.sessions.all() {
            if servers.iter().any(|s| self.scope_includes(&session.scope, s)) {
                for method in &LIST_CHANGED[..2] {
                    deliver(&session, "", method, None);
                }
            }
        }
    }

    /// Whether a caller may use anything behind `scope`: by its role and
    /// groups, or by a policy that lets it use an item listed there.
    pub fn can_reach(&self, access: &crate::access::Access, scope: &Scope) -> bool {
        if access.role.is_none() {
            return false;
        }
        let visible = self.authorizer.list_filter(access);
        self.servers_in(scope).iter().any(|s| {
            let s = s.for_user(&access.user);
            self.authorizer.in_groups(access, s.name())
                || crate::proxy::LIST_METHODS.iter().any(|(method, field, kind)| {
                    s.cached_list(method).is_some_and(|items| {
                        items.iter().any(|item| {
                            item.get(*field).and_then(Value::as_str).is_some_and(|name| {
                                visible(&bastion_policy::Target { kind: *kind, server: s.name(), name })
                            })
                        })
                    })
                })
        })
    }

    /// [`Gateway::can_reach`] for a new session: when only a policy file
    /// could let the caller use something behind `scope`, the lists of the
    /// servers concerned are fetched to find out.
    pub async fn may_enter(&self, access: &crate::access::Access, scope: &Scope) -> bool {
        if self.can_reach(access, scope) {
            return true;
        }
        if access.role.is_none() || !self.authorizer.has_extra_policies() {
            return false;
        }
        for s in self.servers_in(scope) {
            if !self.authorizer.in_groups(access, s.name()) {
                crate::proxy::fetch_lists(&s.for_user(&access.user)).await;
            }
        }
        self.can_reach(access, scope)
    }

    /// Decides again on open sessions (of `users`, or all): a session whose
    /// user may no longer use anything behind its endpoint is closed with
    /// its streams; the others are told their lists may have changed, and
    /// give up subscriptions to resources they may no longer read.
    pub async fn reauthorize_sessions(&self, users: Option<&[String]>) {
        let rt = self.runtime.load_full();
        let (mut closed, mut kept) = (0, 0);
        for session in self.sessions.all() {
            if users.is_some_and(|u| !u.iter().any(|x| *x == *session.principal.user)) {
                continue;
            }
            // A store that cannot answer: requests fail closed meanwhile,
            // and the next change retries.
            let Ok(access) = self.authorizer.access(&rt.config, &session.principal).await else { continue };
            if !self.can_reach(&access, &session.scope) {
                if let Some(s) = self.sessions.remove(&session.id, &session.principal) {
                    self.release(&s);
                    closed += 1;
                }
                continue;
            }
            kept += 1;
            for method in LIST_CHANGED {
                deliver(&session, "", method, None);
            }
            let unreadable: Vec<String> = session
                .subscriptions
                .lock()
                .expect("poisoned")
                .iter()
                .filter(|uri| !self.may_read(&access, &session.scope, uri))
                .cloned()
                .collect();
            if !unreadable.is_empty() {
                session.subscriptions.lock().expect("poisoned").retain(|u| !unreadable.contains(u));
                self.release_uris(&session, unreadable);
            }
        }
        if closed + kept > 0 {
            tracing::info!(closed, kept, "open sessions re-authorized after an access change");
        }
    }

    /// Whether a caller may read a resource URI as a session of `scope` sees it.
    fn may_read(&self, access: &crate::access::Access, scope: &Scope, uri: &str) -> bool {
        let Ok((server, inner)) = crate::proxy::resolve_uri(self, scope, uri) else { return false };
        let target =
            bastion_policy::Target { kind: bastion_policy::Kind::Resource, server: server.name(), name: inner };
        self.authorizer.decide(access, bastion_policy::Action::Read, &target, None).allowed
    }

    /// Settings held outside the config snapshot, brought up to date.
    fn apply_live_settings(&self, config: &Config) {
        self.sessions.budget.set_limits(config.http.stream_queue_bytes, config.http.stream_queue_total_bytes);
        self.limits.apply(&config.limits);
        if let Authentication::ApiKeys(a) = &self.authentication {
            a.set_ttl(config.auth.key_cache_ttl);
        }
        if self.runtime().config.auth != config.auth {
            self.tokens.store(TokenAuthenticator::from_config(&config.auth));
        }
        let mut total = self.spawn_permits_total.lock().expect("poisoned");
        let wanted = config.upstream.max_concurrent_spawns;
        if wanted > *total {
            self.spawn_permits.add_permits(wanted - *total);
        } else if wanted < *total {
            // Permits in use come back and are then forgotten.
            let forget = *total - wanted;
            let forgotten = self.spawn_permits.forget_permits(forget);
            if forgotten < forget {
                let permits = self.spawn_permits.clone();
                let rest = (forget - forgotten) as u32;
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many(rest).await {
                        p.forget();
                    }
                });
            }
        }
        *total = wanted;
    }

    /// Stops every upstream.
    pub async fn shutdown(&self) {
        let rt = self.runtime.load_full();
        futures::future::join_all(rt.upstreams.values().map(|h| h.shutdown())).await;
        if let Authentication::ApiKeys(a) = &self.authentication {
            a.flush_usage().await;
        }
    }

    /// What the gateway holds now, for a scrape of `/metrics`.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let budget = &self.sessions.budget;
        crate::metrics::Snapshot {
            sessions: self.sessions.len() as u64,
            calls_in_flight: self.drain.in_flight() as u64,
            stream_queue_bytes: budget.queued() as u64,
            audit_queue_depth: self.audit.as_ref().map(|a| a.depth() as u64),
            audit_written: self.audit.as_ref().map(|a| a.written()),
            audit_spooled: self.audit.as_ref().map(|a| a.spooled()),
            anomalies: self.audit.as_ref().and_then(|a| a.anomalies()),
            notifications_dropped: budget.dropped.load(Relaxed),
            streams_disconnected: budget.disconnected.load(Relaxed),
            connections_refused: self.descriptors.refused(),
        }
    }

    /// Whether the gateway can serve: config loaded and store reachable.
    pub async fn ready(&self) -> Result<(), String> {
        tokio::time::timeout(Duration::from_secs(2), self.store.ping())
            .await
            .map_err(|_| "store timed out".to_string())?
            .map_err(|_| "store unreachable".to_string())
    }
}

#[allow(clippy::too_many_arguments)]
fn build_upstreams(
    config: &Config,
    base_dir: &Path,
    permits: &Arc<Semaphore>,
    tx: &mpsc::UnboundedSender<ServerNotification>,
    vault: &Arc<crate::vault::Vault>,
    metrics: &crate::metrics::Metrics,
    guard: &GuardCell,
    audit: Option<&Arc<crate::audit::Auditor>>,
    previous: &BTreeMap<String, Arc<UpstreamHandle>>,
) -> BTreeMap<String, Arc<UpstreamHandle>> {
    let new = |name: &str, spec: crate::upstream::UpstreamSpec| {
        report_unpinned(name, &spec, audit);
        // A replaced server keeps counting in the same series.
        let m = previous.get(name).map_or_else(|| metrics.server(name), |h| h.metrics().clone());
        Arc::new(
            UpstreamHandle::new(name, spec, permits.clone(), tx.clone(), Some(vault.clone()), m)
                .guarded(guard.clone())
                .with_audit(audit.cloned()),
        )
    };
    specs_from_config(config, base_dir)
        .into_iter()
        .map(|(name, spec)| {
            let handle = match previous.get(&name) {
                Some(h) if h.spec() == &spec => h.clone(),
                Some(h) => {
                    let replacement = new(&name, spec);
                    if h.is_connected() {
                        replacement.inherit_lists(h);
                    }
                    replacement
                }
                None => new(&name, spec),
            };
            (name, handle)
        })
        .collect()
}

/// Says, once per definition (at start-up, and on reload for a new or
/// changed server), that a server's launcher fetches what it runs without
/// an exact version: a warning, or under `supply_chain: strict` an error
/// and an audit record, the server being refused.
fn report_unpinned(name: &str, spec: &crate::upstream::UpstreamSpec, audit: Option<&Arc<crate::audit::Auditor>>) {
    let Some(unpinned) = &spec.unpinned else { return };
    if !unpinned.refused {
        tracing::warn!(server = name, problem = %unpinned.problem, "unpinned launcher: what the server runs may change at any restart");
        return;
    }
    tracing::error!(
        server = name,
        problem = %unpinned.problem,
        "server refused by the supply-chain policy (supply_chain: strict): it is not started and calls to it fail"
    );
    if let Some(audit) = audit {
        let mut event = bastion_audit::Event::new("server.refused", bastion_audit::Outcome::Denied);
        event.server = Some(name.to_string());
        event.policy = Some("supply_chain:unpinned".into());
        event.reason = Some(unpinned.problem.clone());
        let audit = audit.clone();
        tokio::spawn(async move { audit.record(event).await });
    }
}

/// Notifications taken from the upstreams at once; repeated
/// `list_changed` notifications of one server within them count once.
const FAN_OUT_BATCH: usize = 256;
/// Server notifications waiting for the fan-out beyond which some are dropped.
const FAN_OUT_BACKLOG: usize = 10_000;
/// Deliveries made before the fan-out lets other tasks run.
const FAN_OUT_SLICE: usize = 256;

/// Delivers server notifications that belong to no call to the sessions
/// that can see that server, translated into their namespace. Each
/// notification is encoded once per namespace and shared by the sessions'
/// queues, which are bounded (see [`crate::outbox`]); the task yields
/// regularly so a burst to thousands of sessions does not hold a worker.
async fn fan_out(gw: Arc<Gateway>, mut rx: mpsc::UnboundedReceiver<ServerNotification>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(FAN_OUT_BATCH);
    loop {
        batch.clear();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            n = rx.recv_many(&mut batch, FAN_OUT_BATCH) => if n == 0 { return },
        }
        // A server flooding faster than the sessions can be served: what
        // waits beyond the backlog is dropped, except list changes.
        if rx.len() > FAN_OUT_BACKLOG {
            let mut dropped = 0u64;
            while rx.len() > FAN_OUT_BACKLOG / 2 {
                match rx.try_recv() {
                    Ok(n) if list_method(&n.method).is_some() => batch.push(n),
                    Ok(_) => dropped += 1,
                    Err(_) => break,
                }
            }
            gw.sessions.budget.dropped.fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                dropped,
                "server notifications dropped: upstream servers send them faster than they can be delivered"
            );
        }
        // (server, the user of a per-user instance, list method)
        let mut changed: std::collections::HashSet<ListChange> = Default::default();
        let mut notifications = Vec::with_capacity(batch.len());
        for n in batch.drain(..) {
            // Only what concerns every session is fanned out; anything else
            // about no call (log lines, progress) reaches nobody.
            if !is_broadcast(&n.method) {
                continue;
            }
            if let Some(method) = list_method(&n.method) {
                if !changed.insert((n.server.clone(), n.user.clone(), method)) {
                    continue;
                }
                if let Some(h) = gw.runtime().upstreams.get(&*n.server) {
                    // a user's own instance changed its list: that user's
                    let h = match &n.user {
                        Some(user) => h.for_user(user),
                        None => h.clone(),
                    };
                    h.invalidate_list(method);
                    if method == "resources/list" {
                        h.invalidate_list("resources/templates/list");
                    }
                }
            }
            notifications.push((n, Frames::default()));
        }
        if notifications.is_empty() {
            continue;
        }
        // Session by session, so that each stream is woken once for all
        // of the batch and writes it in one go.
        let mut work = 0;
        for session in gw.sessions.all() {
            for (n, frames) in &mut notifications {
                work += 1;
                if work % FAN_OUT_SLICE == 0 {
                    tokio::task::yield_now().await;
                }
                // what one user's instance says is for that user's sessions alone
                let for_session = n.user.as_deref().is_none_or(|u| *session.principal.user == *u);
                if for_session && gw.scope_includes(&session.scope, &n.server) {
                    deliver_shared(&session, &n.server, &n.method, n.params.as_ref(), frames);
                }
            }
        }
    }
}

/// A list that changed: its server, the user whose instance it is (for a
/// server run once per user), and its method.
type ListChange = (Arc<str>, Option<Arc<str>>, &'static str);

/// The list a `list_changed` notification is about.
fn list_method(method: &str) -> Option<&'static str> {
    match method {
        "notifications/tools/list_changed" => Some("tools/list"),
        "notifications/prompts/list_changed" => Some("prompts/list"),
        "notifications/resources/list_changed" => Some("resources/list"),
        _ => None,
    }
}

/// One notification, encoded for sessions with prefixed names and for
/// sessions on one server's endpoint, on first use.
#[derive(Default)]
struct Frames {
    prefixed: Option<Option<axum::body::Bytes>>,
    plain: Option<Option<axum::body::Bytes>>,
}

/// [`deliver`] for the fan-out: the encoded message is shared between
/// sessions that see it alike (all but `subscriptions/listen` streams,
/// whose messages carry their own subscription id).
fn deliver_shared(session: &Session, server: &str, method: &str, params: Option<&Value>, frames: &mut Frames) {
    if session.listen.is_some() {
        deliver(session, server, method, params.cloned());
        return;
    }
    if !session.has_stream() {
        return;
    }
    let prefixed = session.scope.prefixed();
    if method == "notifications/resources/updated" && subscribed_uri(session, server, params).is_none() {
        return;
    }
    let slot = if prefixed { &mut frames.prefixed } else { &mut frames.plain };
    let frame = slot.get_or_insert_with(|| encode(server, prefixed, method, params.cloned()));
    if let Some(frame) = frame {
        session.push_frame(frame.clone(), Coalesce::of(method));
    }
}

/// The URI of a resource update as `session` sees it, if it subscribed to it.
fn subscribed_uri(session: &Session, server: &str, params: Option<&Value>) -> Option<String> {
    let uri = params?.get("uri")?.as_str()?;
    let seen = if session.scope.prefixed() { naming::prefix_uri(server, uri) } else { uri.to_string() };
    session.subscriptions.lock().expect("poisoned").contains(&seen).then_some(seen)
}

/// The message a session sees for a server notification, as an SSE frame.
fn encode(server: &str, prefixed: bool, method: &str, mut params: Option<Value>) -> Option<axum::body::Bytes> {
    if method == "notifications/resources/updated" && prefixed {
        let uri = params.as_ref()?.get("uri")?.as_str()?;
        let seen = naming::prefix_uri(server, uri);
        params.as_mut()?["uri"] = Value::from(seen);
    }
    let mut msg = json!({"jsonrpc": "2.0", "method": method});
    if let Some(p) = params {
        msg["params"] = p;
    }
    Some(crate::outbox::sse_frame(&msg))
}

/// Sends one server notification to one session, in its namespace: resource
/// updates only for subscribed URIs, and on a `subscriptions/listen` stream
/// only what it asked for, tagged with its subscription id.
fn deliver(session: &Session, server: &str, method: &str, mut params: Option<Value>) {
    if session.listen.as_ref().is_some_and(|f| !f.wants(method)) {
        return;
    }
    if method == "notifications/resources/updated" {
        let Some(seen) = subscribed_uri(session, server, params.as_ref()) else { return };
        if let Some(p) = params.as_mut() {
            p["uri"] = Value::from(seen);
        }
    }
    if let Some(f) = &session.listen {
        let p = params.get_or_insert_with(|| json!({}));
        if let Some(obj) = p.as_object_mut() {
            let meta = obj.entry("_meta").or_insert_with(|| json!({}));
            meta[bastion_core::protocol::meta::SUBSCRIPTION_ID] = f.subscription_id.clone();
        }
    }
    let mut msg = json!({"jsonrpc": "2.0", "method": method});
    if let Some(p) = params {
        msg["params"] = p;
    }
    session.push(msg);
}

/// Ends the slowest streams whenever the stream queues together are over
/// their total (see [`Budget::shed`]).
async fn shed_slow_streams(gw: Arc<Gateway>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = gw.sessions.budget.exceeded() => {}
        }
        gw.sessions.budget.shed(gw.sessions.outboxes());
    }
}

/// The notifications that tell a session its lists may have changed.
const LIST_CHANGED: [&str; 3] =
    ["notifications/tools/list_changed", "notifications/prompts/list_changed", "notifications/resources/list_changed"];

/// Follows changes to the users kept in the store (`bastion users …`): a
/// changed user's cached entry is dropped and its open sessions are
/// decided on again, within `auth.key_cache_ttl`.
async fn follow_store_users(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let mut since = chrono::Utc::now() - chrono::Duration::seconds(2);
    loop {
        let ttl = gw.runtime().config.auth.key_cache_ttl;
        let interval = (ttl / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = gw.changed.users.notified() => {}
        }
        let now = chrono::Utc::now();
        // Store times have one-second resolution: look back a little.
        let changed = match gw.store.users_changed_since(since - chrono::Duration::seconds(2)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "could not check for changed users");
                continue;
            }
        };
        since = now;
        if changed.is_empty() {
            continue;
        }
        gw.authorizer.forget_users(&changed);
        gw.reauthorize_sessions(Some(&changed)).await;
    }
}

/// Follows the store's change feed: reads the lockdown state first (calls
/// are refused until it is known), then again whenever it changes, and
/// wakes the tasks following keys, users and pins when theirs change.
async fn follow_changes(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let mut feed = None;
    // Whether the lockdown state may be behind the store: at first, after
    // (re)subscribing, after a change, and after a failed read.
    let mut stale = true;
    let mut wait = Duration::from_millis(50);
    loop {
        if feed.is_none() {
            match gw.store.watch_changes().await {
                Ok(f) => {
                    feed = Some(f);
                    stale = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot follow the store's changes; retrying"),
            }
        }
        if stale {
            match gw.limits.refresh_lockdown(&gw.store).await {
                Ok(()) => stale = false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the lockdown state; calls are refused until it can be");
                    gw.limits.forget_lockdown();
                }
            }
        }
        let Some(f) = feed.as_mut().filter(|_| !stale) else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(1));
            continue;
        };
        wait = Duration::from_millis(50);
        let topic = tokio::select! {
            _ = shutdown.cancelled() => return,
            t = f.recv() => t,
        };
        match topic.as_deref() {
            None => feed = None,
            Some("lockdown") => stale = true,
            Some("keys") => gw.changed.keys.notify_one(),
            Some("users") => gw.changed.users.notify_one(),
            Some("pins") => gw.changed.pins.notify_one(),
            Some(_) => {}
        }
    }
}

/// Periodic chores: idle upstreams, idle sessions, usage counters.
async fn housekeeping(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let upstreams: Vec<_> = gw.runtime().upstreams.values().cloned().collect();
        for h in upstreams {
            h.stop_if_idle().await;
        }
        let (idle, lifetime) = {
            let rt = gw.runtime();
            (rt.config.http.session_idle_timeout, rt.config.http.session_max_lifetime)
        };
        let mut expired = gw.sessions.expire(idle, lifetime);
        // Sessions whose every credential (token, certificate) expired.
        let now = chrono::Utc::now().timestamp();
        expired.extend(gw.sessions.remove_where(|s| s.credential_expired(now)));
        for s in &expired {
            gw.release(s);
        }
        if !expired.is_empty() {
            tracing::info!(expired = expired.len(), "idle or expired sessions closed");
        }
        if n.is_multiple_of(10) {
            let abandoned = gw.continuations.expire();
            if abandoned > 0 {
                tracing::info!(abandoned, "calls waiting for client input expired");
            }
            gw.load.prune();
        }
        if n.is_multiple_of(5)
            && let Authentication::ApiKeys(a) = &gw.authentication
        {
            a.flush_usage().await;
        }
    }
}

/// Watches one credential for a request in flight; see
/// [`Gateway::watch_credential`].
pub struct CredentialWatch {
    map: Arc<DashMap<Arc<str>, (CancellationToken, usize)>>,
    credential: Arc<str>,
    /// Cancelled when the credential is revoked or expires.
    pub token: CancellationToken,
}

impl Drop for CredentialWatch {
    fn drop(&mut self) {
        self.map.remove_if_mut(&self.credential, |_, (token, n)| {
            // Only this watch's entry: a cancelled one was already removed.
            if !token.is_cancelled() && *n > 0 {
                *n -= 1;
            }
            *n == 0
        });
    }
}

/// Closes what revoked and expired keys opened — sessions, their streams
/// and requests, parked stateless calls — within `auth.key_cache_ttl`.
/// Each round asks the store once for the keys that ended since the last
/// round, however many sessions are open. When the store cannot answer,
/// the round is retried (requests meanwhile fail closed at authentication).
async fn close_ended_credentials(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let Authentication::ApiKeys(auth) = &gw.authentication else { return };
    let mut since = chrono::Utc::now() - chrono::Duration::seconds(2);
    loop {
        let interval = (auth.ttl() / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = gw.changed.keys.notified() => {}
        }
        let now = chrono::Utc::now();
        // Store times have one-second resolution: look back a little.
        let ended = match auth.ended_keys(since - chrono::Duration::seconds(2), now).await {
            Ok(ended) => ended,
            Err(_) => continue,
        };
        since = now;
        if ended.is_empty() {
            continue;
        }
        let closed = gw.close_sessions_where(|s| ended.iter().any(|k| *k == *s.principal.credential));
        let parked = gw.continuations.drop_credentials(&ended);
        let stateless = gw.cancel_credentials(&ended);
        if closed + parked + stateless > 0 {
            tracing::info!(
                sessions = closed,
                parked_calls = parked,
                stateless_keys = stateless,
                "closed what revoked or expired keys had open"
            );
        }
    }
}

/// Settings read once at start: a reload that changes them says so.
fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.data_dir != new.data_dir {
        changed.push("data_dir");
    }
    if old.log != new.log {
        changed.push("log");
    }
    if old.metrics.enabled != new.metrics.enabled {
        changed.push("metrics.enabled");
    }
    if old.metrics.listen != new.metrics.listen {
        changed.push("metrics.listen");
    }
    changed
}
