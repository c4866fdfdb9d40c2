//! The engine: the policies in effect and the decisions made with them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, LazyLock};

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
use serde_json::Value as Json;

use crate::args::{self, Shape};
use crate::load::{self, LoadError, Problem, Source};
use crate::schema;
use crate::topology::{Server, Topology};
use crate::{Action, Decision, Denial, Kind, Subject, Target};

/// The policies always in effect. Extra policy files add to them; a `forbid`
/// in an extra file beats them.
pub const BUILTIN_POLICIES: &str = r#"// admin: everything.
@id("admin")
permit (principal, action, resource)
when { principal.role == "admin" };

// manager and user: everything on the servers of their groups.
@id("member")
permit (
  principal,
  action in [Bastion::Action::"list", Bastion::Action::"call", Bastion::Action::"read", Bastion::Action::"get"],
  resource
)
when {
  (principal.role == "manager" || principal.role == "user") &&
  principal in resource.server.groups
};

// viewer: list, read and get on the servers of its groups.
@id("viewer")
permit (
  principal,
  action in [Bastion::Action::"list", Bastion::Action::"read", Bastion::Action::"get"],
  resource
)
when { principal.role == "viewer" && principal in resource.server.groups };

// viewer: never a call, whatever else permits it.
@id("viewer-no-call")
forbid (principal, action == Bastion::Action::"call", resource)
when { principal.role == "viewer" };
"#;

/// Cedar names used on every decision, parsed once.
pub(crate) struct Names {
    user: EntityType,
    group: EntityType,
    server: EntityType,
    tool: EntityType,
    prompt: EntityType,
    resource: EntityType,
    actions: [EntityUID; 4],
}

impl Names {
    fn uid(ty: &EntityType, id: &str) -> EntityUID {
        EntityUID::from_components(ty.clone(), Eid::new(id), None)
    }
    pub(crate) fn group(&self, name: &str) -> EntityUID {
        Names::uid(&self.group, name)
    }
    pub(crate) fn server(&self, name: &str) -> EntityUID {
        Names::uid(&self.server, name)
    }
    fn user(&self, name: &str) -> EntityUID {
        Names::uid(&self.user, name)
    }
    fn action(&self, action: Action) -> &EntityUID {
        &self.actions[action as usize]
    }
    fn kind(&self, kind: Kind) -> &EntityType {
        match kind {
            Kind::Tool => &self.tool,
            Kind::Prompt => &self.prompt,
            Kind::Resource => &self.resource,
        }
    }
}

static NAMES: LazyLock<Names> = LazyLock::new(|| {
    // Constant, well-formed Cedar names: parsing them cannot fail (the
    // tests exercise every one of them on their first decision).
    #[allow(clippy::expect_used)]
    let ty = |s: &str| s.parse::<EntityType>().expect("a constant, valid entity type name");
    let action_type = ty("Bastion::Action");
    let action = |a: Action| Names::uid(&action_type, a.as_str());
    Names {
        user: ty("Bastion::User"),
        group: ty("Bastion::Group"),
        server: ty("Bastion::Server"),
        tool: ty("Bastion::Tool"),
        prompt: ty("Bastion::Prompt"),
        resource: ty("Bastion::Resource"),
        actions: Action::ALL.map(action),
    }
});

pub(crate) fn names() -> &'static Names {
    &NAMES
}

/// A scope constraint on the principal or the resource, checked before the
/// policy is evaluated: a policy whose scope cannot match is skipped.
enum Scope {
    Any,
    Eq(EntityUID),
    In(EntityUID),
    Is(EntityType),
    IsIn(EntityType, EntityUID),
}

impl Scope {
    /// The constraint, and whether it is checked exactly (`false` for a
    /// template slot, which loading refuses anyway: then it admits all and
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

    /// Cedar's `==`, `in`, `is` and `is … in` on an entity whose ancestors
    /// are all given.
    fn admits(&self, uid: &EntityUID, ancestors: &HashSet<EntityUID>) -> bool {
        match self {
            Scope::Any => true,
            Scope::Eq(x) => uid == x,
            Scope::In(x) => uid == x || ancestors.contains(x),
            Scope::Is(t) => uid.entity_type() == t,
            Scope::IsIn(t, x) => uid.entity_type() == t && (uid == x || ancestors.contains(x)),
        }
    }
}

/// A policy ready for evaluation.
struct Compiled {
    id: String,
    forbid: bool,
    principal: Scope,
    resource: Scope,
    /// What is left to evaluate once the scope admits the request: the
    /// `when`s and `unless`es (`None`: nothing, the policy applies), or the
    /// whole condition when the scope cannot be checked exactly here.
    condition: Option<cedar::Expr>,
}

/// The policies as evaluated: for each action, those whose action scope
/// admits it.
struct Runtime {
    compiled: Vec<Compiled>,
    by_action: [Vec<usize>; 4],
}

impl Runtime {
    fn new(policies: &PolicySet) -> Runtime {
        let n = names();
        let set: &cedar::PolicySet = policies.as_ref();
        let mut compiled = Vec::new();
        let mut by_action: [Vec<usize>; 4] = Default::default();
        for p in set.policies() {
            let i = compiled.len();
            let mut exact = true;
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
                    by_action[a as usize].push(i);
                }
            }
            let (principal, p_exact) = Scope::of(p.principal_constraint().as_inner());
            let (resource, r_exact) = Scope::of(p.resource_constraint().as_inner());
            let condition =
                if exact && p_exact && r_exact { p.non_scope_constraints().cloned() } else { Some(p.condition()) };
            compiled.push(Compiled {
                id: AsRef::<str>::as_ref(p.id()).to_string(),
                forbid: p.effect() == Effect::Forbid,
                principal,
                resource,
                condition,
            });
        }
        Runtime { compiled, by_action }
    }
}

/// The result of evaluating the policies for one request.
#[derive(Default)]
struct Outcome {
    permits: Vec<usize>,
    forbids: Vec<usize>,
    errors: Vec<String>,
}

impl Outcome {
    fn allowed(&self) -> bool {
        self.forbids.is_empty() && !self.permits.is_empty()
    }
}

/// The policies in effect: the built-in ones and those of the extra files,
/// validated together against the schema. Immutable, `Send + Sync`: share it
/// (`Arc`) and swap in a new one when the files change.
#[derive(Clone)]
pub struct Engine {
    /// The policies as Cedar's public API has them (validation, tests).
    pub(crate) policies: PolicySet,
    runtime: Arc<Runtime>,
    ids: Vec<String>,
    /// The declared attributes of `context.arguments`.
    pub(crate) fields: BTreeMap<String, Shape>,
    schema_text: String,
    warnings: Vec<Problem>,
}

static BUILTIN_ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    // The built-in policies are constant and a test loads them; should they
    // ever fail, deny everything rather than fail to start.
    load::load(BUILTIN_POLICIES, &[]).map(Engine::from_loaded).unwrap_or_else(|_| Engine::deny_all())
});

impl Engine {
    /// The built-in policies alone.
    pub fn builtin() -> Engine {
        BUILTIN_ENGINE.clone()
    }

    /// The built-in policies and those of `files` (Cedar policy syntax, at
    /// most [`MAX_FILE_BYTES`](crate::MAX_FILE_BYTES) each). Each policy's id
    /// is `<file name>:<line>`, or `<file name>:<id>` with an `@id("<id>")`
    /// annotation. On any problem nothing is loaded and every problem found
    /// is returned, located by file, line and column.
    pub fn load(files: &[impl AsRef<Path>]) -> Result<Engine, LoadError> {
        let sources = load::read_files(files)?;
        load::load(BUILTIN_POLICIES, &sources).map(Engine::from_loaded)
    }

    /// Like [`Engine::load`], from texts: `(file name, policy text)`.
    pub fn from_sources(sources: &[(&str, &str)]) -> Result<Engine, LoadError> {
        let sources: Vec<Source> = sources
            .iter()
            .map(|(name, text)| Source { name: name.to_string(), display: name.to_string(), text: text.to_string() })
            .collect();
        load::load(BUILTIN_POLICIES, &sources).map(Engine::from_loaded)
    }

    fn from_loaded(l: load::Loaded) -> Engine {
        Engine {
            runtime: Arc::new(Runtime::new(&l.policies)),
            policies: l.policies,
            ids: l.ids,
            fields: l.fields,
            schema_text: l.schema_text,
            warnings: l.warnings,
        }
    }

    fn deny_all() -> Engine {
        Engine {
            policies: PolicySet::new(),
            runtime: Arc::new(Runtime { compiled: Vec::new(), by_action: Default::default() }),
            ids: Vec::new(),
            fields: BTreeMap::new(),
            schema_text: schema::render(&BTreeMap::new()),
            warnings: Vec::new(),
        }
    }

    /// The Cedar schema the policies were validated against, with
    /// `Arguments` holding the argument attributes these policies examine.
    pub fn schema_text(&self) -> &str {
        &self.schema_text
    }

    /// The schema with no argument attributes (as for the built-in policies
    /// alone).
    pub fn base_schema_text() -> String {
        schema::render(&BTreeMap::new())
    }

    /// The ids of the policies in effect: built-in first, then file by file.
    pub fn policy_ids(&self) -> &[String] {
        &self.ids
    }

    /// The text of a policy in effect, as written (for `bastion policy`
    /// commands that show why).
    pub fn policy_text(&self, id: &str) -> Option<String> {
        self.policies.policy(&cedar_policy::PolicyId::new(id)).and_then(|p| p.to_cedar())
    }

    /// What validation found suspicious without refusing it (strings or
    /// identifiers mixing scripts, confusable identifiers).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// May `who` do `action` on `what`?
    ///
    /// For `call`, `read` and `get`: when Cedar allows that action *and*
    /// `list` on the same target (what is hidden cannot be used). For `list`:
    /// when Cedar allows `list`. An action that does not fit the target's
    /// kind is denied without evaluating anything. `arguments` (JSON, an
    /// object) are those of a call or get; they are ignored for `list` and
    /// `read`, whose `context.arguments` is empty. `now` is the time in unix
    /// seconds.
    pub fn decide(
        &self,
        topo: &Topology,
        who: &Subject,
        action: Action,
        what: &Target,
        arguments: Option<&Json>,
        now: i64,
    ) -> Decision {
        if !action.applies_to(what.kind) {
            return Decision::not_applicable(action, what.kind);
        }
        let mut d = Decision {
            action,
            allowed: false,
            reasons: Vec::new(),
            errors: Vec::new(),
            omitted: Vec::new(),
            denial: Some(Denial::NotPermitted(action)),
        };
        let prepared = Prepared::new(topo, what);
        let principal = Principal::new(who, who.role);
        let entities = match prepared.entities(&principal) {
            Ok(e) => e,
            Err(e) => {
                d.errors.push(e);
                return d;
            }
        };
        let context = match action {
            Action::Call | Action::Get => {
                let converted = args::convert(&self.fields, arguments);
                d.omitted = converted.omitted;
                make_context(converted.record, now)
            }
            Action::List | Action::Read => make_context(args::empty_record(), now),
        };
        let used = self.run(action, &principal, &prepared, context, &entities, true);
        if !self.record(&mut d, action, used) {
            return d;
        }
        if action != Action::List {
            let listed = self.run(Action::List, &principal, &prepared, empty_context(now), &entities, true);
            if !self.record(&mut d, Action::List, listed) {
                return d;
            }
        }
        d.allowed = true;
        d.denial = None;
        d
    }

    /// Does a list show `what` to `who`? When Cedar allows `list` on it and
    /// allows its use (`call`, `read`, `get`) with empty arguments: for every
    /// principal but a viewer, `visible(x)` is exactly
    /// `decide(use of x, no arguments).allowed`.
    ///
    /// A viewer may call nothing but sees what it could use were it a
    /// `user`: Cedar must allow `list` to the viewer itself, and
    /// [`decide`](Engine::decide) must allow the use to the same user name
    /// and groups with role `user` (use and `list`). For policies that do not
    /// treat viewers and users apart in `list`, a viewer's `visible(x)` is
    /// exactly the user's `decide(use of x).allowed`.
    pub fn visible(&self, topo: &Topology, who: &Subject, what: &Target, now: i64) -> bool {
        let prepared = Prepared::new(topo, what);
        let principal = Principal::new(who, who.role);
        let Ok(entities) = prepared.entities(&principal) else { return false };
        let allows = |action, principal: &Principal, entities: &Entities| {
            self.run(action, principal, &prepared, empty_context(now), entities, false).allowed()
        };
        if !allows(Action::List, &principal, &entities) {
            return false;
        }
        let use_action = what.kind.use_action();
        if who.role == Some(Role::Viewer) {
            // what a user of the same name and groups could use: its use and
            // its list allowed
            let user = Principal::new(who, Some(Role::User));
            let Ok(entities) = prepared.entities(&user) else { return false };
            allows(use_action, &user, &entities) && allows(Action::List, &user, &entities)
        } else {
            allows(use_action, &principal, &entities)
        }
    }

    /// Evaluates the policies whose scope admits the request. With
    /// `complete` false, stops at the first `forbid` that applies and does
    /// not word errors (only whether it allows is wanted).
    fn run(
        &self,
        action: Action,
        principal: &Principal,
        target: &Prepared,
        context: Context,
        entities: &Entities,
        complete: bool,
    ) -> Outcome {
        let n = names();
        let request = Request::new_unchecked(
            EntityUIDEntry::known(principal.uid.clone(), None),
            EntityUIDEntry::known(n.action(action).clone(), None),
            EntityUIDEntry::known(target.uid.clone(), None),
            Some(context),
        );
        let evaluator = Evaluator::new(request, entities, Extensions::all_available());
        let slots = SlotEnv::new();
        let mut out = Outcome::default();
        for &i in &self.runtime.by_action[action as usize] {
            let Some(p) = self.runtime.compiled.get(i) else { continue };
            if !p.principal.admits(&principal.uid, &principal.groups)
                || !p.resource.admits(&target.uid, &target.ancestors)
            {
                continue;
            }
            let result = match &p.condition {
                Some(condition) => evaluator.interpret(condition, &slots),
                None => Ok(Value::from(true)),
            };
            match result.as_ref().map(|v| &v.value) {
                Ok(ValueKind::Lit(cedar::Literal::Bool(true))) => {
                    if p.forbid {
                        out.forbids.push(i);
                        if !complete {
                            break;
                        }
                    } else {
                        out.permits.push(i);
                    }
                }
                Ok(ValueKind::Lit(cedar::Literal::Bool(false))) => {}
                // a condition that is not a boolean: an error, as Cedar's own
                // authorizer has it (validation makes it impossible)
                Ok(other) => {
                    if complete {
                        out.errors.push(format!("while evaluating policy `{}`: not a boolean: {other:?}", p.id));
                    }
                }
                Err(e) => {
                    if complete {
                        out.errors.push(format!("while evaluating policy `{}`: {e}", p.id));
                    }
                }
            }
        }
        out
    }

    /// Takes one evaluation into the decision; whether it allowed.
    fn record(&self, d: &mut Decision, stage: Action, outcome: Outcome) -> bool {
        let id = |i: &usize| self.runtime.compiled.get(*i).map_or_else(String::new, |p| p.id.clone());
        d.errors.extend(outcome.errors.iter().cloned());
        if !outcome.forbids.is_empty() {
            d.reasons = outcome.forbids.iter().map(id).collect();
            d.denial = Some(Denial::Forbidden(stage));
            return false;
        }
        if outcome.permits.is_empty() {
            d.reasons.clear();
            d.denial = Some(Denial::NotPermitted(stage));
            return false;
        }
        for i in &outcome.permits {
            let id = id(i);
            if !d.reasons.contains(&id) {
                d.reasons.push(id);
            }
        }
        true
    }
}

fn make_context(arguments: Value, now: i64) -> Context {
    Context::Value(Arc::new(BTreeMap::from([("arguments".into(), arguments), ("now".into(), Value::from(now))])))
}

fn empty_context(now: i64) -> Context {
    make_context(args::empty_record(), now)
}

/// The principal's side of a decision.
struct Principal {
    uid: EntityUID,
    /// Its groups: its ancestors.
    groups: HashSet<EntityUID>,
    /// `role` as given (`None`: "none").
    role: &'static str,
}

impl Principal {
    fn new(who: &Subject, role: Option<Role>) -> Principal {
        let n = names();
        Principal {
            uid: n.user(who.user),
            groups: who.groups.iter().map(|g| n.group(g)).collect(),
            role: role.map_or("none", Role::as_str),
        }
    }

    fn entity(&self) -> Entity {
        let attrs = [("role".into(), PartialValue::from(Value::from(self.role)))];
        Entity::new_with_attr_partial_value(self.uid.clone(), attrs, HashSet::new(), self.groups.clone(), [])
    }
}

/// The target's side of a decision: its entity and its server's.
struct Prepared {
    uid: EntityUID,
    /// Its server and the server's groups.
    ancestors: HashSet<EntityUID>,
    target: Entity,
    server: Entity,
}

impl Prepared {
    fn new(topo: &Topology, what: &Target) -> Prepared {
        let n = names();
        let built;
        let server: &Server = match topo.server(what.server) {
            Some(s) => s,
            None => {
                built = Server::new(what.server, Vec::new());
                &built
            }
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
        let mut ancestors = server.group_uids.clone();
        ancestors.insert(server.uid.clone());
        Prepared { uid, ancestors, target, server: server.entity.clone() }
    }

    fn entities(&self, principal: &Principal) -> Result<Entities, String> {
        Entities::from_entities(
            [principal.entity(), self.target.clone(), self.server.clone()],
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .map_err(|e| format!("entities: {e}"))
    }
}
