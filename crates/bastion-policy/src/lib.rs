//! Who may list, call, read or get what: Bastion's access decisions, made
//! with the [Cedar](https://www.cedarpolicy.com) policy engine.
//!
//! The crate is pure: no network, no runtime, no clock (the caller passes the
//! time). The gateway builds a [`Topology`] from the configuration's groups, an
//! [`Engine`] from the built-in policies and the operator's policy files, and
//! asks [`Engine::decide`] before every call, read or get and
//! [`Engine::visible`] for every item of a list.
//!
//! # The model
//!
//! Everything lives in the Cedar namespace `Bastion` (see
//! [`Engine::schema_text`] and `docs/policy-schema.md`):
//!
//! - `Bastion::User` (the principal): id the user name, attribute `role`
//!   (`admin`, `manager`, `user`, `viewer`, or `none`), parents its groups.
//! - `Bastion::Group`: id the group name.
//! - `Bastion::Server`: id the server name, parents the groups holding it,
//!   attributes `name` and `groups`.
//! - `Bastion::Tool` and `Bastion::Prompt` (id `server__name`) and
//!   `Bastion::Resource` (id `server+uri`): parent their server, attributes
//!   `name` (or `uri`) as the server knows it and `server`.
//! - Actions `list`, `call` (tools), `read` (resources), `get` (prompts).
//! - Context `{ arguments, now }`: the call's arguments and the time in unix
//!   seconds.
//!
//! # Decisions
//!
//! Deny by default; a `forbid` beats every `permit`. A use (call, read, get)
//! is allowed when Cedar allows it *and* allows `list` on the same target, so
//! whatever is hidden cannot be used either. What a list shows is what its
//! reader could use with empty arguments; a viewer, who may call nothing, sees
//! what a `user` of the same groups could use (see [`Engine::visible`]).
//!
//! # Arguments
//!
//! Policies may examine `context.arguments`. A call's arguments are arbitrary
//! JSON while Cedar's strict validation needs to know the type of every
//! attribute a policy reads, so the engine reads the types off the policies
//! themselves (`context.arguments.path like "/tmp/*"` makes `path` a
//! `String`) and declares every argument attribute the policies mention as an
//! optional attribute of that type. At decision time only those attributes
//! are taken from the call's arguments, and only when the value has the
//! declared type; any other value is left out, as if the argument were
//! absent. Write `forbid` rules with `unless { context.arguments has path &&
//! … }` so that a missing or mistyped argument is denied. See
//! [`Engine::schema_text`].
//!
//! # Use
//!
//! ```
//! use bastion_policy::{Action, Engine, Kind, Role, Subject, Target, Topology};
//!
//! let topo = Topology::new([("dev", ["time", "fs"])]); // e.g. Topology::new(&config.groups)
//! let engine = Engine::from_sources(&[(
//!     "extra.cedar",
//!     r#"forbid (principal, action == Bastion::Action::"call", resource == Bastion::Tool::"fs__write_file")
//!        unless { context.arguments has path && context.arguments.path like "/tmp/*" };"#,
//! )])
//! .unwrap(); // or Engine::load(&paths), Engine::builtin()
//! let groups = vec!["dev".to_string()];
//! let alice = Subject { user: "alice", role: Some(Role::User), groups: &groups };
//! let write = Target { kind: Kind::Tool, server: "fs", name: "write_file" };
//! let args = serde_json::json!({"path": "/tmp/notes"});
//! let d = engine.decide(&topo, &alice, Action::Call, &write, Some(&args), 1_800_000_000);
//! assert!(d.allowed);
//! assert_eq!(d.to_string(), "allow (builtin.member)");
//! // not listed: its use with empty arguments is forbidden
//! assert!(!engine.visible(&topo, &alice, &write, 1_800_000_000));
//! ```
//!
//! [`Engine`] and [`Topology`] are immutable, `Send + Sync` and cheap to
//! clone; share them (`Arc`, `ArcSwap`) and build new ones when the
//! configuration or the policy files change. Loading parses and validates on
//! a thread of its own (Cedar's parser recurses deeply) and takes
//! milliseconds; a decision takes a few microseconds (see
//! `docs/policy-schema.md`).
#![forbid(unsafe_code)]

mod args;
mod engine;
mod fast;
mod infer;
mod load;
mod plan;
mod runtime;
mod schema;
mod topology;

#[cfg(test)]
mod tests;

use std::fmt;

pub use bastion_core::access::Role;

pub use engine::{BUILTIN_POLICIES, Engine};
pub use load::{LoadError, MAX_FILE_BYTES, MAX_NESTING, Problem};
pub use topology::Topology;

/// What a principal asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// See the item in a list (`tools/list`, `prompts/list`, `resources/list`,
    /// `resources/templates/list`).
    List,
    /// Call a tool.
    Call,
    /// Read a resource.
    Read,
    /// Get a prompt.
    Get,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::List, Action::Call, Action::Read, Action::Get];

    /// The Cedar action id: `Bastion::Action::"<this>"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::Call => "call",
            Action::Read => "read",
            Action::Get => "get",
        }
    }

    /// Whether the action can be asked of a target of this kind: `list` of
    /// any, `call` of tools, `read` of resources, `get` of prompts.
    pub fn applies_to(self, kind: Kind) -> bool {
        self == Action::List || self == kind.use_action()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of thing a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Tool,
    Prompt,
    /// A resource or a resource template.
    Resource,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Tool, Kind::Prompt, Kind::Resource];

    /// The action that uses a target of this kind: tools are called,
    /// prompts got, resources read.
    pub fn use_action(self) -> Action {
        match self {
            Kind::Tool => Action::Call,
            Kind::Prompt => Action::Get,
            Kind::Resource => Action::Read,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asks: the principal of a decision.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The user name: the id of `Bastion::User`, compared byte for byte.
    pub user: &'a str,
    /// `None` for a user without a role (`principal.role == "none"`).
    pub role: Option<Role>,
    /// The user's groups: the parents of its `Bastion::User` entity.
    pub groups: &'a [String],
}

/// What is asked about.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub kind: Kind,
    /// The server's name.
    pub server: &'a str,
    /// The tool's or prompt's name, or the resource's URI (or URI template),
    /// as the server knows it: not prefixed.
    pub name: &'a str,
}

/// Why a decision denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A `forbid` policy applied to this action (its id is in
    /// [`Decision::reasons`]). The action is `list` when a use was denied
    /// because the target is hidden.
    Forbidden(Action),
    /// No `permit` policy applied to this action (`list` when the target is
    /// hidden).
    NotPermitted(Action),
    /// The action cannot be asked of this kind of target (a call of a prompt,
    /// a read of a tool…). No policy was evaluated.
    NotApplicable(Action, Kind),
}

/// The answer to [`Engine::decide`].
///
/// `Display` gives one line for `bastion policy test`, e.g.
/// `allow (builtin.member)`, `deny (extra.cedar:3)`,
/// `deny (no policy permits call)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The action that was decided.
    pub action: Action,
    pub allowed: bool,
    /// The ids of the policies that decided: for an allow, the `permit`s
    /// that applied (to the action and to `list`); for a deny, the `forbid`s
    /// that applied, or none when nothing permitted.
    pub reasons: Vec<String>,
    /// Errors met while evaluating policies, each naming its policy. A policy
    /// whose condition fails to evaluate does not apply (Cedar's rule), be it
    /// a `permit` or a `forbid`.
    pub errors: Vec<String>,
    /// Arguments the policies examine whose value was left out, with why (a
    /// value of another type than the policies use, a float, a number beyond
    /// 64 bits, a list too long…). To the policies they are absent.
    pub omitted: Vec<String>,
    /// Why it denies; `None` when allowed.
    pub denial: Option<Denial>,
}

impl Decision {
    fn not_applicable(action: Action, kind: Kind) -> Decision {
        Decision {
            action,
            allowed: false,
            reasons: Vec::new(),
            errors: Vec::new(),
            omitted: Vec::new(),
            denial: Some(Denial::NotApplicable(action, kind)),
        }
    }
}

/// The one-line explanation of a decision; the same as its `Display`.
pub fn explain(decision: &Decision) -> String {
    decision.to_string()
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = self.reasons.join(", ");
        match self.denial {
            None if ids.is_empty() => f.write_str("allow")?,
            None => write!(f, "allow ({ids})")?,
            Some(Denial::Forbidden(stage)) if stage == self.action => write!(f, "deny ({ids})")?,
            Some(Denial::Forbidden(stage)) => write!(f, "deny ({ids} forbids {stage})")?,
            Some(Denial::NotPermitted(stage)) => write!(f, "deny (no policy permits {stage})")?,
            Some(Denial::NotApplicable(action, kind)) => write!(f, "deny ({action} does not apply to a {kind})")?,
        }
        if !self.errors.is_empty() {
            write!(f, " [errors: {}]", self.errors.join("; "))?;
        }
        if !self.omitted.is_empty() {
            write!(f, " [left out: {}]", self.omitted.join("; "))?;
        }
        Ok(())
    }
}
