//! The engine: the policies in effect and the decisions made with them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use bastion_core::access::Role;
use bastion_core::naming::{prefix_name, prefix_uri};
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request, Response,
    RestrictedExpression,
};
use serde_json::Value;

use crate::args::{self, Shape};
use crate::load::{self, LoadError, Problem, Source};
use crate::schema;
use crate::topology::{Topology, server_entity};
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
    user: EntityTypeName,
    group: EntityTypeName,
    server: EntityTypeName,
    tool: EntityTypeName,
    prompt: EntityTypeName,
    resource: EntityTypeName,
    actions: [EntityUid; 4],
}

impl Names {
    fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }
    pub(crate) fn group(&self, name: &str) -> EntityUid {
        Names::uid(&self.group, name)
    }
    pub(crate) fn server(&self, name: &str) -> EntityUid {
        Names::uid(&self.server, name)
    }
    fn user(&self, name: &str) -> EntityUid {
        Names::uid(&self.user, name)
    }
    fn action(&self, action: Action) -> &EntityUid {
        &self.actions[action as usize]
    }
    fn kind(&self, kind: Kind) -> &EntityTypeName {
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
    let ty = |s: &str| s.parse::<EntityTypeName>().expect("a constant, valid entity type name");
    let action_type = ty("Bastion::Action");
    let action = |a: Action| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str()));
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

/// The policies in effect: the built-in ones and those of the extra files,
/// validated together against the schema. Immutable, `Send + Sync`: share it
/// (`Arc`) and swap in a new one when the files change.
#[derive(Clone)]
pub struct Engine {
    policies: PolicySet,
    authorizer: Authorizer,
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
            policies: l.policies,
            authorizer: Authorizer::new(),
            ids: l.ids,
            fields: l.fields,
            schema_text: l.schema_text,
            warnings: l.warnings,
        }
    }

    fn deny_all() -> Engine {
        Engine {
            policies: PolicySet::new(),
            authorizer: Authorizer::new(),
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
        arguments: Option<&Value>,
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
        let prepared = match Prepared::new(topo, what) {
            Ok(p) => p,
            Err(e) => {
                d.errors.push(e);
                return d;
            }
        };
        let (principal, entities) = match prepared.with_principal(who, who.role) {
            Ok(x) => x,
            Err(e) => {
                d.errors.push(e);
                return d;
            }
        };
        let empty = empty_context(now);
        let context = match action {
            Action::Call | Action::Get => {
                let converted = args::convert(&self.fields, arguments);
                d.omitted = converted.omitted;
                make_context(converted.record, now)
            }
            Action::List | Action::Read => empty.clone(),
        };
        let (empty, context) = match (empty, context) {
            (Ok(e), Ok(c)) => (e, c),
            (Err(e), _) | (_, Err(e)) => {
                d.errors.push(e);
                return d;
            }
        };
        let used = self.evaluate(&principal, action, &prepared.uid, context, &entities);
        if !record(&mut d, action, &used) {
            return d;
        }
        if action != Action::List {
            let listed = self.evaluate(&principal, Action::List, &prepared.uid, empty, &entities);
            if !record(&mut d, Action::List, &listed) {
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
    /// `decide(use of x, no arguments).allowed` (for policies that do not
    /// look at the arguments).
    ///
    /// A viewer may call nothing but sees what it could use were it a
    /// `user`: Cedar must allow `list` to the viewer itself, and
    /// [`decide`](Engine::decide) must allow the use to the same user name
    /// and groups with role `user` (use and `list`). For policies that do not
    /// treat viewers and users apart in `list`, a viewer's `visible(x)` is
    /// exactly the user's `decide(use of x).allowed`.
    pub fn visible(&self, topo: &Topology, who: &Subject, what: &Target, now: i64) -> bool {
        let Ok(prepared) = Prepared::new(topo, what) else { return false };
        let Ok(context) = empty_context(now) else { return false };
        let Ok((principal, entities)) = prepared.with_principal(who, who.role) else { return false };
        if !self.allows(&principal, Action::List, &prepared.uid, context.clone(), &entities) {
            return false;
        }
        let use_action = what.kind.use_action();
        if who.role == Some(Role::Viewer) {
            // what a user of the same name and groups could use: its use and
            // its list allowed
            let Ok((principal, entities)) = prepared.with_principal(who, Some(Role::User)) else { return false };
            self.allows(&principal, use_action, &prepared.uid, context.clone(), &entities)
                && self.allows(&principal, Action::List, &prepared.uid, context, &entities)
        } else {
            self.allows(&principal, use_action, &prepared.uid, context, &entities)
        }
    }

    fn evaluate(
        &self,
        principal: &EntityUid,
        action: Action,
        resource: &EntityUid,
        context: Context,
        entities: &Entities,
    ) -> Result<Response, String> {
        let request = Request::new(principal.clone(), names().action(action).clone(), resource.clone(), context, None)
            .map_err(|e| format!("request: {e}"))?;
        Ok(self.authorizer.is_authorized(&request, &self.policies, entities))
    }

    fn allows(
        &self,
        principal: &EntityUid,
        action: Action,
        resource: &EntityUid,
        context: Context,
        e: &Entities,
    ) -> bool {
        self.evaluate(principal, action, resource, context, e)
            .is_ok_and(|r| r.decision() == cedar_policy::Decision::Allow)
    }
}

/// Takes one evaluation into the decision; whether it allowed.
fn record(d: &mut Decision, stage: Action, response: &Result<Response, String>) -> bool {
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            d.errors.push(e.clone());
            d.denial = Some(Denial::NotPermitted(stage));
            return false;
        }
    };
    let diagnostics = response.diagnostics();
    d.errors.extend(diagnostics.errors().map(|e| e.to_string()));
    let mut ids: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
    ids.sort();
    match response.decision() {
        cedar_policy::Decision::Allow => {
            for id in ids {
                if !d.reasons.contains(&id) {
                    d.reasons.push(id);
                }
            }
            true
        }
        cedar_policy::Decision::Deny => {
            d.denial = Some(if ids.is_empty() { Denial::NotPermitted(stage) } else { Denial::Forbidden(stage) });
            d.reasons = ids;
            false
        }
    }
}

fn make_context(arguments: RestrictedExpression, now: i64) -> Result<Context, String> {
    Context::from_pairs([
        ("arguments".to_string(), arguments),
        ("now".to_string(), RestrictedExpression::new_long(now)),
    ])
    .map_err(|e| format!("context: {e}"))
}

fn empty_context(now: i64) -> Result<Context, String> {
    make_context(args::empty_record(), now)
}

/// The target's side of a decision: its entity and its server's.
struct Prepared {
    uid: EntityUid,
    entities: [Entity; 2],
}

impl Prepared {
    fn new(topo: &Topology, what: &Target) -> Result<Prepared, String> {
        let n = names();
        let server = match topo.server(what.server) {
            Some(s) => s.entity.clone()?,
            None => server_entity(what.server, &[])?,
        };
        let server_uid = n.server(what.server);
        let (id, attr) = match what.kind {
            Kind::Tool | Kind::Prompt => (prefix_name(what.server, what.name), "name"),
            Kind::Resource => (prefix_uri(what.server, what.name), "uri"),
        };
        let uid = EntityUid::from_type_name_and_id(n.kind(what.kind).clone(), EntityId::new(id));
        let attrs = [
            (attr.to_string(), RestrictedExpression::new_string(what.name.to_string())),
            ("server".to_string(), RestrictedExpression::new_entity_uid(server_uid.clone())),
        ];
        let target =
            Entity::new_with_tags(uid.clone(), attrs, [server_uid], []).map_err(|e| format!("{}: {e}", what.kind))?;
        Ok(Prepared { uid, entities: [target, server] })
    }

    /// The principal's entity added: `role` as given (`None`: "none").
    fn with_principal(&self, who: &Subject, role: Option<Role>) -> Result<(EntityUid, Entities), String> {
        let n = names();
        let uid = n.user(who.user);
        let role = role.map_or("none", Role::as_str);
        let attrs = [("role".to_string(), RestrictedExpression::new_string(role.to_string()))];
        let parents: Vec<EntityUid> = who.groups.iter().map(|g| n.group(g)).collect();
        let principal = Entity::new_with_tags(uid.clone(), attrs, parents, []).map_err(|e| format!("user: {e}"))?;
        let [target, server] = self.entities.clone();
        let entities =
            Entities::from_entities([principal, target, server], None).map_err(|e| format!("entities: {e}"))?;
        Ok((uid, entities))
    }
}
