//! The engine: the policies in effect and the decisions made with them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use bastion_core::access::Role;
use cedar_policy::PolicySet;
use cedar_policy_core::ast::{Context, Eid, EntityType, EntityUID, Value};
use serde_json::Value as Json;

use crate::args::{self, Shape};
use crate::load::{self, LoadError, Problem, Source};
use crate::plan::Plans;
use crate::runtime::{Outcome, Runtime};
#[cfg(test)]
use crate::runtime::{Prepared, Principal};
use crate::schema;
use crate::topology::Topology;
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
    pub(crate) fn user(&self, name: &str) -> EntityUID {
        Names::uid(&self.user, name)
    }
    pub(crate) fn user_type(&self) -> &EntityType {
        &self.user
    }
    pub(crate) fn group_type(&self) -> &EntityType {
        &self.group
    }
    pub(crate) fn action(&self, action: Action) -> &EntityUID {
        &self.actions[action as usize]
    }
    pub(crate) fn kind(&self, kind: Kind) -> &EntityType {
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

/// The policies in effect: the built-in ones and those of the extra files,
/// validated together against the schema. Immutable, `Send + Sync`: share it
/// (`Arc`) and swap in a new one when the files change.
#[derive(Clone)]
pub struct Engine {
    /// The policies as Cedar's public API has them (validation, tests).
    pub(crate) policies: PolicySet,
    runtime: Arc<Runtime>,
    /// What decisions worked out for a principal and a target, kept.
    plans: Arc<Plans>,
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
            plans: Arc::default(),
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
            runtime: Arc::new(Runtime::empty()),
            plans: Arc::default(),
            ids: Vec::new(),
            fields: BTreeMap::new(),
            schema_text: schema::render(&BTreeMap::new()),
            warnings: Vec::new(),
        }
    }

    /// The same policies with no plan kept: every decision works out
    /// everything afresh (to compare with decisions made from kept plans).
    #[cfg(test)]
    pub(crate) fn without_plans(&self) -> Engine {
        Engine { plans: Arc::default(), ..self.clone() }
    }

    /// How many plans are kept.
    #[cfg(test)]
    pub(crate) fn plans_kept(&self) -> usize {
        self.plans.len()
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
        let plan = self.plans.get(&self.runtime, topo, who, who.role, what);
        let context = match action {
            Action::Call | Action::Get => {
                let converted = args::convert(&self.fields, arguments);
                d.omitted = converted.omitted;
                make_context(converted.record, now)
            }
            Action::List | Action::Read => empty_context(now),
        };
        let run = |action, context| {
            self.runtime.run_plan(action, plan.steps(action), &plan.principal, &plan.target, context, true)
        };
        if !self.record(&mut d, action, run(action, context)) {
            return d;
        }
        if action != Action::List {
            let listed = run(Action::List, empty_context(now));
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
        let allows = |action, role| {
            let plan = self.plans.get(&self.runtime, topo, who, role, what);
            let steps = plan.steps(action);
            self.runtime.run_plan(action, steps, &plan.principal, &plan.target, empty_context(now), false).allowed()
        };
        if !allows(Action::List, who.role) {
            return false;
        }
        let use_action = what.kind.use_action();
        if who.role == Some(Role::Viewer) {
            // what a user of the same name and groups could use: its use and
            // its list allowed
            allows(use_action, Some(Role::User)) && allows(Action::List, Some(Role::User))
        } else {
            allows(use_action, who.role)
        }
    }

    /// Takes one evaluation into the decision; whether it allowed.
    fn record(&self, d: &mut Decision, stage: Action, outcome: Outcome) -> bool {
        d.errors.extend(outcome.errors);
        if !outcome.forbids.is_empty() {
            d.reasons = outcome.forbids.iter().map(|i| self.runtime.id(*i).to_string()).collect();
            d.denial = Some(Denial::Forbidden(stage));
            return false;
        }
        if outcome.permits.is_empty() {
            d.reasons.clear();
            d.denial = Some(Denial::NotPermitted(stage));
            return false;
        }
        for i in &outcome.permits {
            let id = self.runtime.id(*i);
            if !d.reasons.iter().any(|r| r == id) {
                d.reasons.push(id.to_string());
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

#[cfg(test)]
mod timing {
    use super::*;
    use std::hint::black_box;
    use std::time::Instant;

    fn best(label: &str, n: u32, mut f: impl FnMut()) {
        let mut best = std::time::Duration::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            best = best.min(start.elapsed() / n);
        }
        println!("{label}: {best:?}");
    }

    #[test]
    #[ignore = "prints the cost of each step of a decision; run in release"]
    fn timings_of_steps() {
        let e = crate::tests::engine(&crate::tests::timing::fifty_rules());
        let t = Topology::new([("dev", vec!["time", "fs", "server3"])]);
        let groups = vec!["dev".to_string(), "other".to_string()];
        let who = Subject { user: "alice", role: Some(Role::User), groups: &groups };
        let what = Target { kind: Kind::Tool, server: "server3", name: "write_file" };
        let n = 20_000;
        best("Prepared::new", n, || {
            black_box(Prepared::new(&t, &what));
        });
        best("Principal::new", n, || {
            black_box(Principal::new(&who, who.role));
        });
        let prepared = Prepared::new(&t, &what);
        let principal = Principal::new(&who, who.role);
        best("Entities", n, || {
            black_box(prepared.entities(&principal).is_ok());
        });
        best("empty_context", n, || {
            black_box(empty_context(1));
        });
        best("run(list)", n, || {
            black_box(e.runtime.run(Action::List, &who, &principal, &prepared, empty_context(1), true));
        });
        best("run(call)", n, || {
            black_box(e.runtime.run(Action::Call, &who, &principal, &prepared, empty_context(1), true));
        });
        let builtin = Engine::builtin();
        best("run(call) built-in only", n, || {
            black_box(builtin.runtime.run(Action::Call, &who, &principal, &prepared, empty_context(1), true));
        });
        best("decide", n, || {
            black_box(e.decide(&t, &who, Action::Call, &what, None, 1));
        });
    }
}
