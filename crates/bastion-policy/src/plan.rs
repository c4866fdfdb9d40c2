//! Plans: what a decision works out before it looks at the request's
//! arguments and time, kept between requests.
//!
//! For one principal (user, role, groups) and one target (kind, server,
//! name) under one topology, everything but the context is fixed: the
//! entities of both, which policies' scopes admit them, and the value of
//! every condition that reads no context (`principal.role != "admin"`,
//! `resource.name like "admin_*"`, the built-in rules). A plan holds that
//! for the target's two actions, `list` and its use, so that a request only
//! evaluates the conditions left open, over its own context.
//!
//! Plans are kept per engine (a reloaded policy starts afresh) and keyed by
//! the topology's identity, so a changed configuration never meets a plan
//! made for another. The store is bounded: when full it is emptied.

use std::hash::BuildHasher;
use std::sync::Arc;

use bastion_core::access::Role;
use dashmap::DashMap;

use crate::runtime::{Prepared, Principal, Runtime, Step};
use crate::topology::Topology;
use crate::{Action, Kind, Subject, Target};

/// How many plans an engine keeps before it starts again.
pub(crate) const MAX_PLANS: usize = 8192;

/// A principal and a target, ready for decisions.
pub(crate) struct Plan {
    key: Key,
    pub principal: Principal,
    pub target: Prepared,
    /// The policies of `list`.
    pub list: Vec<Step>,
    /// The policies of the target's use (`call`, `get` or `read`).
    pub used: Vec<Step>,
}

impl Plan {
    /// The steps of an action that applies to the target's kind.
    pub fn steps(&self, action: Action) -> &[Step] {
        if action == Action::List { &self.list } else { &self.used }
    }
}

/// What a plan was made for, owned.
struct Key {
    topology: u64,
    user: Box<str>,
    role: Option<Role>,
    groups: Box<[String]>,
    kind: Kind,
    server: Box<str>,
    name: Box<str>,
}

impl Key {
    fn matches(&self, topology: u64, who: &Subject, role: Option<Role>, what: &Target) -> bool {
        self.topology == topology
            && self.role == role
            && self.kind == what.kind
            && *self.user == *who.user
            && *self.server == *what.server
            && *self.name == *what.name
            && *self.groups == *who.groups
    }
}

/// The plans of one engine.
#[derive(Default)]
pub(crate) struct Plans {
    map: DashMap<u64, Arc<Plan>, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
}

impl Plans {
    /// The plan for `who` (with `role`) and `what`: kept, or made now and
    /// kept.
    pub fn get(&self, rt: &Runtime, topo: &Topology, who: &Subject, role: Option<Role>, what: &Target) -> Arc<Plan> {
        let hash = self.hasher.hash_one((topo.id(), who.user, role, who.groups, what.kind, what.server, what.name));
        if let Some(plan) = self.map.get(&hash)
            && plan.key.matches(topo.id(), who, role, what)
        {
            return plan.clone();
        }
        let plan = Arc::new(make(rt, topo, who, role, what));
        if self.map.len() >= MAX_PLANS {
            self.map.clear();
        }
        // a different key with the same hash is replaced: both stay right
        self.map.insert(hash, plan.clone());
        plan
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

fn make(rt: &Runtime, topo: &Topology, who: &Subject, role: Option<Role>, what: &Target) -> Plan {
    let principal = Principal::new(who, role);
    let target = Prepared::new(topo, what);
    let as_planned = Subject { role, ..*who };
    let list = rt.plan(Action::List, &as_planned, &principal, &target);
    let used = rt.plan(what.kind.use_action(), &as_planned, &principal, &target);
    Plan {
        key: Key {
            topology: topo.id(),
            user: who.user.into(),
            role,
            groups: who.groups.into(),
            kind: what.kind,
            server: what.server.into(),
            name: what.name.into(),
        },
        principal,
        target,
        list,
        used,
    }
}
