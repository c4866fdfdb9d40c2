//! Which groups hold which servers, with the Cedar entities that depend on
//! nothing else, built once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cedar_policy_core::ast::{Entity, EntityUID, PartialValue, Value};

use crate::engine::names;

/// Server name → the groups holding it, from the configuration's
/// `groups: {group: [server, …]}`. Cheap to clone (shared); build a new one
/// when the configuration changes.
#[derive(Clone, Default)]
pub struct Topology {
    inner: Arc<HashMap<String, Arc<Server>>>,
    /// Unique to each [`Topology::new`] (0: the empty default), so that
    /// what was worked out under one topology is never used under another.
    id: u64,
}

/// The id of the next topology.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A server, as every decision about its tools, prompts and resources needs
/// it.
pub(crate) struct Server {
    pub groups: Vec<String>,
    pub uid: EntityUID,
    /// The uids of its groups: its ancestors.
    pub group_uids: HashSet<EntityUID>,
    /// `Bastion::Server::"<name>"`: attributes `name` and `groups`, parents
    /// its groups.
    pub entity: Arc<Entity>,
}

impl Server {
    pub(crate) fn new(name: &str, groups: Vec<String>) -> Server {
        let n = names();
        let uid = n.server(name);
        let group_uids: HashSet<EntityUID> = groups.iter().map(|g| n.group(g)).collect();
        let set = Value::set(group_uids.iter().map(|g| Value::from(g.clone())), None);
        let attrs =
            [("name".into(), PartialValue::from(Value::from(name))), ("groups".into(), PartialValue::from(set))];
        let entity = Entity::new_with_attr_partial_value(uid.clone(), attrs, HashSet::new(), group_uids.clone(), []);
        Server { groups, uid, group_uids, entity: Arc::new(entity) }
    }
}

impl Topology {
    /// From groups and their servers, e.g. `Topology::new(&config.groups)`.
    /// Names are kept byte for byte; a server listed twice in a group counts
    /// once.
    pub fn new<G, S, I>(groups: impl IntoIterator<Item = (G, I)>) -> Topology
    where
        G: AsRef<str>,
        S: AsRef<str>,
        I: IntoIterator<Item = S>,
    {
        let mut by_server: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (group, servers) in groups {
            for server in servers {
                by_server.entry(server.as_ref().to_string()).or_default().insert(group.as_ref().to_string());
            }
        }
        let inner = by_server
            .into_iter()
            .map(|(name, groups)| {
                let server = Server::new(&name, groups.into_iter().collect());
                (name, Arc::new(server))
            })
            .collect();
        Topology { inner: Arc::new(inner), id: NEXT_ID.fetch_add(1, Ordering::Relaxed) }
    }

    /// The groups holding `server`, sorted; empty for a server in no group.
    pub fn groups_of(&self, server: &str) -> &[String] {
        self.inner.get(server).map_or(&[], |s| s.groups.as_slice())
    }

    /// The servers in at least one group, in no particular order.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.inner.keys().map(String::as_str)
    }

    /// This topology's identity (its clones share it).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.inner.get(name)
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        let mut servers: Vec<_> = self.inner.iter().collect();
        servers.sort_by(|a, b| a.0.cmp(b.0));
        for (name, server) in servers {
            m.entry(name, &server.groups);
        }
        m.finish()
    }
}
