//! `bastion policy`: check the access policies, and try a decision without
//! a client: `bastion policy test --user alice --server time --tool
//! convert_time --args '{…}'` prints the decision and the policies that
//! made it.

use std::path::Path;

use anyhow::Context;
use bastion_gateway::access::{Authorizer, load_engine};
use bastion_gateway::auth::Principal;
use bastion_policy::{Action, Kind, Target};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate the policy files of the configuration (and the built-in
    /// policies) against the schema.
    Check,
    /// Print the decision on one use of one item, and the policies that
    /// made it. Exits 0 when allowed, 1 when denied, 2 on bad input.
    Test(TestArgs),
    /// Print the Cedar schema policies are written against.
    Schema,
}

#[derive(Args)]
pub struct TestArgs {
    /// The user, as keys, tokens and `users` name it.
    #[arg(long)]
    user: String,
    /// The server, by its name in `mcpServers`.
    #[arg(long)]
    server: String,
    /// A tool, by the server's own name for it (not prefixed).
    #[arg(long, group = "item")]
    tool: Option<String>,
    /// A prompt, by the server's own name for it.
    #[arg(long, group = "item")]
    prompt: Option<String>,
    /// A resource URI (or URI template), as the server knows it.
    #[arg(long, group = "item")]
    resource: Option<String>,
    /// The action (`list`, `call`, `read`, `get`). Default: the one that
    /// uses the item (call a tool, get a prompt, read a resource).
    #[arg(long)]
    action: Option<String>,
    /// The call's arguments, a JSON object.
    #[arg(long)]
    args: Option<String>,
}

/// A problem with the command line or the configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(String);

pub async fn run(config_path: &Path, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Schema => {
            // With the configuration's files the schema includes the
            // argument attributes they examine.
            let engine = match bastion_core::config::Config::load(config_path) {
                Ok(config) => load_engine(&config, config_path)?,
                Err(_) => bastion_policy::Engine::builtin(),
            };
            print!("{}", engine.schema_text());
            Ok(())
        }
        PolicyCommand::Check => {
            let config = bastion_core::config::Config::load(config_path)?;
            load_engine(&config, config_path)?;
            eprintln!(
                "{}: policies valid (built-in{})",
                config_path.display(),
                if config.policy.files.is_empty() {
                    String::new()
                } else {
                    format!(" and {} file(s)", config.policy.files.len())
                }
            );
            Ok(())
        }
        PolicyCommand::Test(args) => test(config_path, args).await,
    }
}

async fn test(config_path: &Path, a: TestArgs) -> anyhow::Result<()> {
    let usage = |m: String| anyhow::Error::new(Usage(m));
    let (kind, name) = match (&a.tool, &a.prompt, &a.resource) {
        (Some(t), None, None) => (Kind::Tool, t.as_str()),
        (None, Some(p), None) => (Kind::Prompt, p.as_str()),
        (None, None, Some(r)) => (Kind::Resource, r.as_str()),
        _ => return Err(usage("name one item: --tool, --prompt or --resource".into())),
    };
    let action = match a.action.as_deref() {
        None => kind.use_action(),
        Some(s) => Action::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| usage(format!("unknown action {s:?}: list, call, read or get")))?,
    };
    let arguments: Option<Value> = match &a.args {
        None => None,
        Some(text) => {
            let v: Value = serde_json::from_str(text).map_err(|e| usage(format!("--args is not JSON: {e}")))?;
            if !v.is_object() {
                return Err(usage("--args must be a JSON object".into()));
            }
            Some(v)
        }
    };
    let (config, store, _) = crate::keys::open_store(config_path).await?;
    if !config.servers.contains_key(&a.server) {
        return Err(usage(format!("no server named {:?} in mcpServers", a.server)));
    }
    let engine = load_engine(&config, config_path).map_err(|e| usage(e.to_string()))?;
    let authorizer = Authorizer::new(&config, engine, store);
    let principal = Principal::from_key(&a.user, "policy-test", None);
    let access = authorizer.access(&config, &principal).await.context("reading the user from the store")?;
    let target = Target { kind, server: &a.server, name };
    let decision = authorizer.decide(&access, action, &target, arguments.as_ref());
    println!("{decision}");
    let role = access.role.map_or("none", |r| r.as_str());
    let source = format!("{:?}", access.source).to_lowercase();
    println!("user {}: role {role}, groups [{}] (from {source})", a.user, access.groups.join(", "));
    if !decision.allowed {
        return Err(Denied.into());
    }
    Ok(())
}

/// The decision was a denial: exit code 1, nothing more to print.
#[derive(Debug, thiserror::Error)]
#[error("denied")]
pub struct Denied;
