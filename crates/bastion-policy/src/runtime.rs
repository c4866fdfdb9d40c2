//! Evaluation: the loaded policies indexed by action and principal, checked
//! by scope, and only then evaluated by Cedar's evaluator.
//!
//! What makes a decision take microseconds rather than tens of them:
//!
//! - entities are built from values, not re-evaluated expressions, with
//!   their hierarchy given (a tool's ancestors are its server and the
//!   server's groups), so Cedar computes no closure; a server's entity is
//!   built once per [`Topology`] and shared;
//! - policies are indexed by action and by the user or group their scope
//!   names, and their scope is checked here, exactly as Cedar would, so that
//!   only the `when` and `unless` conditions of the policies that can apply
//!   are evaluated;
//! - the built-in policies are evaluated natively, with the same result as
//!   their Cedar text (the tests compare both with Cedar's own authorizer on
//!   random requests and policy sets);
//! - all of that, and every condition that reads no context, is worked out
//!   once per principal and target ([`Runtime::plan`], kept by
//!   [`crate::plan`]); a request evaluates what the plan left open.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use bastion_core::access::Role;
use bastion_core::naming::{prefix_name, prefix_uri};
use cedar_policy::PolicySet;
use cedar_policy_core::ast::{
    self as cedar, ActionConstraint, Context, Effect, Eid, Entity, EntityReference, EntityType, EntityUID,
    EntityUIDEntry, PartialValue, PrincipalOrResourceConstraint, Request, SlotEnv, Value, ValueKind,
};
use cedar_policy_core::entities::{Entities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use crate::engine::names;
use crate::fast;
use crate::topology::{Server, Topology};
use crate::{Action, Kind, Subject, Target};

/// A scope constraint on the principal or the resource.
enum Scope {
    Any,
    Eq(EntityUID),
    In(EntityUID),
    Is(EntityType),
    IsIn(EntityType, EntityUID),
}

impl Scope {
    /// The constraint, and whether it is checked exactly here (not for a
    /// template slot, which loading refuses anyway: it then admits all and
    /// Cedar checks it).
    fn of(c: &PrincipalOrResourceConstraint) -> (Scope, bool) {
        let uid = |r: &EntityReference| match r {
            EntityReference::EUID(uid) => Some(uid.as_ref().clone()),
            EntityReference::Slot(_) => None,
        };
        match c {
            PrincipalOrResourceConstraint::Any => (Scope::Any, true),
            PrincipalOrResourceConstraint::Eq(r) => uid(r).map_or((Scope::Any, false), |u| (Scope::Eq(u), true)),
            PrincipalOrResourceConstraint::In(r) => uid(r).map_or((Scope::Any, false), |u| (Scope::In(u), true)),
            PrincipalOrResourceConstraint::Is(t) => (Scope::Is(t.as_ref().clone()), true),
            PrincipalOrResourceConstraint::IsIn(t, r) => match uid(r) {
                Some(u) => (Scope::IsIn(t.as_ref().clone(), u), true),
                None => (Scope::Is(t.as_ref().clone()), false),
            },
        }
    }

    /// Cedar's `==`, `in`, `is` and `is … in`, on an entity whose every
    /// ancestor is recorded in it.
    fn admits(&self, entity: &Entity) -> bool {
        let uid = entity.uid();
        match self {
            Scope::Any => true,
            Scope::Eq(x) => uid == x,
            Scope::In(x) => uid == x || entity.is_descendant_of(x),
            Scope::Is(t) => uid.entity_type() == t,
            Scope::IsIn(t, x) => uid.entity_type() == t && (uid == x || entity.is_descendant_of(x)),
        }
    }
}

/// The built-in policies, evaluated natively.
#[derive(Clone, Copy)]
enum Builtin {
    /// `principal.role == "admin"`
    Admin,
    /// `(principal.role == "manager" || principal.role == "user") && principal in resource.server.groups`
    Member,
    /// `principal.role == "viewer" && principal in resource.server.groups`
    Viewer,
    /// `principal.role == "viewer"`
    ViewerNoCall,
}

impl Builtin {
    fn of(id: &str) -> Option<Builtin> {
        match id {
            "builtin.admin" => Some(Builtin::Admin),
            "builtin.member" => Some(Builtin::Member),
            "builtin.viewer" => Some(Builtin::Viewer),
            "builtin.viewer-no-call" => Some(Builtin::ViewerNoCall),
            _ => None,
        }
    }

    fn holds(self, principal: &Principal, target: &Prepared) -> bool {
        // a user is in a server's group when one of its groups holds the
        // server
        let in_group = || principal.groups.iter().any(|g| target.server.group_uids.contains(g));
        match self {
            Builtin::Admin => principal.role == Role::Admin.as_str(),
            Builtin::Member => {
                (principal.role == Role::Manager.as_str() || principal.role == Role::User.as_str()) && in_group()
            }
            Builtin::Viewer => principal.role == Role::Viewer.as_str() && in_group(),
            Builtin::ViewerNoCall => principal.role == Role::Viewer.as_str(),
        }
    }
}

/// What is left to evaluate once the scope admits a request.
enum Condition {
    /// Nothing: the policy applies.
    Always,
    /// The `when`s and `unless`es, or the whole condition when the scope
    /// cannot be checked exactly here.
    Cedar(cedar::Expr),
    Builtin(Builtin),
}

/// A policy ready for evaluation.
struct Compiled {
    id: String,
    forbid: bool,
    principal: Scope,
    resource: Scope,
    condition: Condition,
}

/// The policies one action may meet, by what their principal scope names.
#[derive(Default)]
struct Index {
    /// Any principal, or any user.
    any: Vec<usize>,
    /// `principal == Bastion::User::"x"` or `principal in …` the same.
    by_user: HashMap<String, Vec<usize>>,
    /// `principal in Bastion::Group::"g"` (with or without `is`).
    by_group: HashMap<String, Vec<usize>>,
    /// Whatever else (a scope no user can meet, checked all the same).
    other: Vec<usize>,
}

impl Index {
    fn add(&mut self, i: usize, scope: &Scope) {
        let n = names();
        let (user, group) = (n.user_type(), n.group_type());
        match scope {
            Scope::Any => self.any.push(i),
            Scope::Is(t) if t == user => self.any.push(i),
            Scope::Eq(x) | Scope::In(x) if x.entity_type() == user => self.by_user.entry(eid(x)).or_default().push(i),
            Scope::IsIn(t, x) if t == user && x.entity_type() == user => {
                self.by_user.entry(eid(x)).or_default().push(i)
            }
            Scope::In(x) if x.entity_type() == group => self.by_group.entry(eid(x)).or_default().push(i),
            Scope::IsIn(t, x) if t == user && x.entity_type() == group => {
                self.by_group.entry(eid(x)).or_default().push(i)
            }
            _ => self.other.push(i),
        }
    }

    /// The policies whose principal scope may admit `who`, in load order.
    fn candidates(&self, who: &Subject) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.any.len() + self.other.len() + 4);
        out.extend_from_slice(&self.any);
        out.extend_from_slice(&self.other);
        if let Some(v) = self.by_user.get(who.user) {
            out.extend_from_slice(v);
        }
        for g in who.groups {
            if let Some(v) = self.by_group.get(g.as_str()) {
                out.extend_from_slice(v);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn eid(uid: &EntityUID) -> String {
    <Eid as AsRef<str>>::as_ref(uid.eid()).to_string()
}

/// The policies as evaluated.
pub(crate) struct Runtime {
    compiled: Vec<Compiled>,
    by_action: [Index; 4],
    /// Conditions evaluated by [`fast`] first (off: by Cedar alone, to
    /// compare the two).
    pub fast: bool,
}

/// The result of evaluating the policies for one request.
#[derive(Default)]
pub(crate) struct Outcome {
    pub permits: Vec<usize>,
    pub forbids: Vec<usize>,
    pub errors: Vec<String>,
    /// How many conditions Cedar's evaluator evaluated (those the fast
    /// path left to it).
    pub by_cedar: u32,
}

impl Outcome {
    pub fn allowed(&self) -> bool {
        self.forbids.is_empty() && !self.permits.is_empty()
    }
}

impl Runtime {
    pub fn empty() -> Runtime {
        Runtime { compiled: Vec::new(), by_action: Default::default(), fast: true }
    }

    pub fn new(policies: &PolicySet) -> Runtime {
        let n = names();
        let set: &cedar::PolicySet = policies.as_ref();
        let mut rt = Runtime::empty();
        for p in set.policies() {
            let i = rt.compiled.len();
            let id = AsRef::<str>::as_ref(p.id()).to_string();
            let (principal, p_exact) = Scope::of(p.principal_constraint().as_inner());
            let (resource, r_exact) = Scope::of(p.resource_constraint().as_inner());
            let mut exact = p_exact && r_exact;
            for a in Action::ALL {
                let admits = match p.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(x) => x.as_ref() == n.action(a),
                    ActionConstraint::In(xs) => xs.iter().any(|x| x.as_ref() == n.action(a)),
                    // whatever a later Cedar may add: Cedar checks it
                    #[allow(unreachable_patterns)]
                    _ => {
                        exact = false;
                        true
                    }
                };
                if admits {
                    rt.by_action[a as usize].add(i, &principal);
                }
            }
            let condition = match (Builtin::of(&id), exact, p.non_scope_constraints()) {
                (Some(b), true, _) => Condition::Builtin(b),
                (None, true, None) => Condition::Always,
                (None, true, Some(e)) => Condition::Cedar(e.clone()),
                (_, false, _) => Condition::Cedar(p.condition()),
            };
            rt.compiled.push(Compiled { id, forbid: p.effect() == Effect::Forbid, principal, resource, condition });
        }
        rt
    }

    pub fn id(&self, i: usize) -> &str {
        self.compiled.get(i).map_or("", |p| p.id.as_str())
    }

    /// The policies that can apply to `principal` doing `action` on
    /// `target`, in load order: those whose scopes admit both, each with
    /// the value of its condition when that does not depend on the
    /// request's context (arguments, time). Policies whose condition is
    /// false whatever the context are left out.
    pub fn plan(&self, action: Action, who: &Subject, principal: &Principal, target: &Prepared) -> Vec<Step> {
        let Some(index) = self.by_action.get(action as usize) else { return Vec::new() };
        let env = fast::Env {
            principal: &principal.entity,
            action: names().action(action),
            resource: &target.target,
            server: &target.server.entity,
            context: None,
        };
        let mut steps = Vec::new();
        for i in index.candidates(who) {
            let Some(p) = self.compiled.get(i) else { continue };
            if !p.principal.admits(&principal.entity) || !p.resource.admits(&target.target) {
                continue;
            }
            let known = match &p.condition {
                Condition::Always => Some(true),
                Condition::Builtin(b) => Some(b.holds(principal, target)),
                Condition::Cedar(expr) if self.fast => fast::eval(expr, &env),
                Condition::Cedar(_) => None,
            };
            if known != Some(false) {
                steps.push(Step { policy: i, known });
            }
        }
        steps
    }

    /// Evaluates the policies that can apply to the request. With
    /// `complete` false, stops at the first `forbid` that applies and does
    /// not word errors (only whether it allows is wanted).
    #[cfg(test)]
    pub fn run(
        &self,
        action: Action,
        who: &Subject,
        principal: &Principal,
        target: &Prepared,
        context: Context,
        complete: bool,
    ) -> Outcome {
        let steps = self.plan(action, who, principal, target);
        self.run_plan(action, &steps, principal, target, context, complete)
    }

    /// Evaluates a plan of [`Runtime::plan`] for the request's context:
    /// the conditions it left open, and those it found true.
    pub fn run_plan<'a>(
        &self,
        action: Action,
        steps: &[Step],
        principal: &'a Principal,
        target: &Prepared,
        context: Context,
        complete: bool,
    ) -> Outcome {
        let mut out = Outcome::default();
        // Cedar's evaluator and the entities it reads, made when a condition
        // first needs them
        let mut evaluator: Option<Evaluator<'a>> = None;
        let env = fast::Env {
            principal: &principal.entity,
            action: names().action(action),
            resource: &target.target,
            server: &target.server.entity,
            context: Some(&context),
        };
        let mut context = Some(context.clone());
        let slots = SlotEnv::new();
        for step in steps {
            let i = step.policy;
            let Some(p) = self.compiled.get(i) else { continue };
            let holds = match (step.known, &p.condition) {
                (Some(b), _) => Ok(b),
                (None, Condition::Always) => Ok(true),
                (None, Condition::Builtin(b)) => Ok(b.holds(principal, target)),
                (None, Condition::Cedar(expr)) => match self.fast.then(|| fast::eval(expr, &env)).flatten() {
                    Some(b) => Ok(b),
                    None => {
                        out.by_cedar += 1;
                        if evaluator.is_none() {
                            match principal.entities.get_or_init(|| target.entities(principal)) {
                                Ok(store) => {
                                    let n = names();
                                    let request = Request::new_unchecked(
                                        EntityUIDEntry::known(principal.uid.clone(), None),
                                        EntityUIDEntry::known(n.action(action).clone(), None),
                                        EntityUIDEntry::known(target.uid.clone(), None),
                                        context.take(),
                                    );
                                    evaluator = Some(Evaluator::new(request, store, Extensions::all_available()));
                                }
                                Err(e) => out.errors.push(e.clone()),
                            }
                        }
                        match &evaluator {
                            Some(ev) => match ev.interpret(expr, &slots) {
                                Ok(Value { value: ValueKind::Lit(cedar::Literal::Bool(b)), .. }) => Ok(b),
                                // validation makes it impossible; Cedar's own
                                // authorizer counts it an error
                                Ok(other) => Err(format!("the condition gave {other}, not a boolean")),
                                Err(e) => Err(e.to_string()),
                            },
                            None => Err("no entities to evaluate with".to_string()),
                        }
                    }
                },
            };
            match holds {
                Ok(true) if p.forbid => {
                    out.forbids.push(i);
                    if !complete {
                        break;
                    }
                }
                Ok(true) => out.permits.push(i),
                Ok(false) => {}
                Err(e) => {
                    if complete {
                        out.errors.push(format!("while evaluating policy `{}`: {e}", p.id));
                    }
                }
            }
        }
        out
    }
}

/// One policy of a plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    policy: usize,
    /// Its condition's value whatever the context, when known.
    known: Option<bool>,
}

/// The principal's side of a decision.
pub(crate) struct Principal {
    pub uid: EntityUID,
    /// Its groups: its ancestors.
    pub groups: HashSet<EntityUID>,
    /// `role` as given (`None`: "none").
    pub role: &'static str,
    pub entity: Arc<Entity>,
    /// The entities of the decision (the principal's, the target's, its
    /// server's), made when a condition first needs them. A principal is
    /// made for one target.
    pub entities: OnceLock<Result<Entities, String>>,
}

impl Principal {
    pub fn new(who: &Subject, role: Option<Role>) -> Principal {
        let n = names();
        let uid = n.user(who.user);
        let groups: HashSet<EntityUID> = who.groups.iter().map(|g| n.group(g)).collect();
        let role = role.map_or("none", Role::as_str);
        let attrs = [("role".into(), PartialValue::from(Value::from(role)))];
        let entity = Entity::new_with_attr_partial_value(uid.clone(), attrs, HashSet::new(), groups.clone(), []);
        Principal { uid, groups, role, entity: Arc::new(entity), entities: OnceLock::new() }
    }
}

/// The target's side of a decision: its entity and its server's.
pub(crate) struct Prepared {
    pub uid: EntityUID,
    pub server: Arc<Server>,
    pub target: Arc<Entity>,
}

impl Prepared {
    pub fn new(topo: &Topology, what: &Target) -> Prepared {
        let n = names();
        let server = match topo.server(what.server) {
            Some(s) => s.clone(),
            None => Arc::new(Server::new(what.server, Vec::new())),
        };
        let (id, attr) = match what.kind {
            Kind::Tool | Kind::Prompt => (prefix_name(what.server, what.name), "name"),
            Kind::Resource => (prefix_uri(what.server, what.name), "uri"),
        };
        let uid = EntityUID::from_components(n.kind(what.kind).clone(), Eid::new(id), None);
        let attrs = [
            (attr.into(), PartialValue::from(Value::from(what.name))),
            ("server".into(), PartialValue::from(Value::from(server.uid.clone()))),
        ];
        // the hierarchy is known: the server is the parent, its groups the
        // other ancestors (no closure to compute)
        let target = Entity::new_with_attr_partial_value(
            uid.clone(),
            attrs,
            server.group_uids.clone(),
            HashSet::from([server.uid.clone()]),
            [],
        );
        Prepared { uid, server, target: Arc::new(target) }
    }

    pub fn entities(&self, principal: &Principal) -> Result<Entities, String> {
        Entities::new()
            .add_entities(
                [principal.entity.clone(), self.target.clone(), self.server.entity.clone()],
                None::<&NoEntitiesSchema>,
                TCComputation::AssumeAlreadyComputed,
                Extensions::all_available(),
            )
            .map_err(|e| format!("entities: {e}"))
    }
}
