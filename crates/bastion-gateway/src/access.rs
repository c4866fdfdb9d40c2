//! What a caller may do: its user's current role and groups, and the
//! policy engine's decision for each list item, call, read and get.
//!
//! Nothing about access is kept on a session or a principal: every
//! request resolves its user again — from `users` in the config, else the
//! store (cached for `auth.key_cache_ttl`), else the role and groups its
//! token claims — so a changed role, a removed group or a new policy takes
//! effect at the next request. A store that cannot answer fails the
//! request closed (503).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bastion_core::access::Role;
use bastion_core::config::Config;
use bastion_policy::{Action, Decision, Engine, Kind, Subject, Target, Topology};
use bastion_store::{Store, UserRecord};
use dashmap::DashMap;
use serde_json::Value;

use crate::auth::{AuthError, Method, Principal};

/// Where a user's role and groups came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Store,
    /// The claims of the access token.
    Token,
    /// Authentication is disabled: the anonymous caller may do anything.
    Unauthenticated,
    /// No entry anywhere: no role, no access.
    Unknown,
}

/// A caller's access at the time of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub user: Arc<str>,
    pub role: Option<Role>,
    /// Groups that exist in the configuration.
    pub groups: Vec<String>,
    pub source: Source,
}

impl Access {
    fn subject(&self) -> Subject<'_> {
        Subject { user: &self.user, role: self.role, groups: &self.groups }
    }
}

/// The live policy engine, the topology it is applied to, and the users
/// kept in the store.
pub struct Authorizer {
    engine: ArcSwap<Engine>,
    topology: ArcSwap<Topology>,
    store: Store,
    /// Store users by name, with the time they were read.
    users: DashMap<Arc<str>, (Instant, Option<UserRecord>)>,
    /// `auth.key_cache_ttl` in milliseconds.
    ttl_ms: AtomicU64,
    /// Bumped whenever access may have changed (reload, policy, store
    /// users), so that derived caches can tell they are stale.
    epoch: AtomicU64,
}

/// Policy files that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyLoadError(pub String);

/// Loads the built-in policies and the config's policy files.
pub fn load_engine(config: &Config, config_path: &Path) -> Result<Engine, PolicyLoadError> {
    let files: Vec<_> = config.policy.files.iter().map(|f| config.resolve_path(config_path, f)).collect();
    Engine::load(&files).map_err(|e| PolicyLoadError(e.to_string()))
}

impl Authorizer {
    pub fn new(config: &Config, engine: Engine, store: Store) -> Authorizer {
        Authorizer {
            engine: ArcSwap::from_pointee(engine),
            topology: ArcSwap::from_pointee(Topology::new(&config.groups)),
            store,
            users: DashMap::new(),
            ttl_ms: AtomicU64::new(config.auth.key_cache_ttl.as_millis() as u64),
            epoch: AtomicU64::new(0),
        }
    }

    /// Applies a reloaded configuration whose policies loaded.
    pub fn apply(&self, config: &Config, engine: Option<Engine>) {
        if let Some(e) = engine {
            self.engine.store(Arc::new(e));
        }
        self.topology.store(Arc::new(Topology::new(&config.groups)));
        self.ttl_ms.store(config.auth.key_cache_ttl.as_millis() as u64, Ordering::Relaxed);
        self.bump();
    }

    /// Forgets what the store said about these users (they changed).
    pub fn forget_users(&self, names: &[String]) {
        for n in names {
            self.users.remove(n.as_str());
        }
        self.bump();
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes each time access may have changed.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// The caller's access now.
    pub async fn access(&self, config: &Config, p: &Principal) -> Result<Access, AuthError> {
        if p.method == Method::None {
            return Ok(Access {
                user: p.user.clone(),
                role: Some(Role::Admin),
                groups: vec![],
                source: Source::Unauthenticated,
            });
        }
        let known_groups = |gs: &[String]| gs.iter().filter(|g| config.groups.contains_key(*g)).cloned().collect();
        if let Some(u) = config.users.get(&*p.user) {
            return Ok(Access {
                user: p.user.clone(),
                role: Some(u.role),
                groups: known_groups(&u.groups),
                source: Source::Config,
            });
        }
        if let Some(u) = self.store_user(&p.user).await? {
            return Ok(Access {
                user: p.user.clone(),
                role: Some(u.role),
                groups: known_groups(&u.groups),
                source: Source::Store,
            });
        }
        if p.claimed_role.is_some() || p.claimed_groups.is_some() {
            let groups = p.claimed_groups.as_deref().map(known_groups).unwrap_or_default();
            return Ok(Access { user: p.user.clone(), role: p.claimed_role, groups, source: Source::Token });
        }
        Ok(Access { user: p.user.clone(), role: None, groups: vec![], source: Source::Unknown })
    }

    async fn store_user(&self, name: &Arc<str>) -> Result<Option<UserRecord>, AuthError> {
        if let Some(hit) = self.users.get(name)
            && hit.0.elapsed() < self.ttl()
        {
            return Ok(hit.1.clone());
        }
        let found = self.store.get_user(name).await.map_err(|e| {
            tracing::error!(error = %e, "user lookup failed; refusing the request");
            AuthError::Unavailable
        })?;
        self.users.insert(name.clone(), (Instant::now(), found.clone()));
        Ok(found)
    }

    /// The decision on one use of one item.
    pub fn decide(&self, access: &Access, action: Action, target: &Target<'_>, arguments: Option<&Value>) -> Decision {
        let now = chrono::Utc::now().timestamp();
        self.engine.load().decide(&self.topology.load(), &access.subject(), action, target, arguments, now)
    }

    /// Whether a list shows an item to the caller.
    pub fn visible(&self, access: &Access, target: &Target<'_>) -> bool {
        let now = chrono::Utc::now().timestamp();
        self.engine.load().visible(&self.topology.load(), &access.subject(), target, now)
    }

    /// A filter for one list: the engine and topology are loaded once.
    pub fn list_filter<'a>(&self, access: &'a Access) -> impl Fn(&Target<'_>) -> bool + 'a {
        let engine = self.engine.load_full();
        let topology = self.topology.load_full();
        let now = chrono::Utc::now().timestamp();
        move |t| engine.visible(&topology, &access.subject(), t, now)
    }

    /// Whether policy files beside the built-in policies are loaded (they
    /// may grant beyond roles and groups).
    pub fn has_extra_policies(&self) -> bool {
        self.engine.load().policy_ids().iter().any(|id| !id.starts_with("builtin."))
    }

    /// Whether the caller may use anything on `server` by its role and
    /// groups (an admin anything; others the servers of their groups).
    pub fn in_groups(&self, access: &Access, server: &str) -> bool {
        match access.role {
            Some(Role::Admin) => true,
            Some(_) => self.topology.load().groups_of(server).iter().any(|g| access.groups.iter().any(|m| m == g)),
            None => false,
        }
    }
}

/// The kind of item a list method lists.
pub fn list_kind(method: &str) -> Option<Kind> {
    match method {
        "tools/list" => Some(Kind::Tool),
        "prompts/list" => Some(Kind::Prompt),
        "resources/list" | "resources/templates/list" => Some(Kind::Resource),
        _ => None,
    }
}
