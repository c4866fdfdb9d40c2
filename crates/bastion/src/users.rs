//! `bastion users`: users kept in the store (role and groups). The config
//! file's `users` win over the store's entries of the same name: listings
//! show both, with their source, and changes to a name the config holds
//! are made with a warning.

use std::path::Path;

use anyhow::bail;
use bastion_core::access::Role;
use bastion_core::config::{Config, USER_NAME_RULE, is_valid_user_name};
use bastion_store::{KeyState, NewUser, Store};
use chrono::Utc;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add a user to the store.
    Add {
        /// The user's name (the one `keys create --user` and tokens use).
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// admin, manager, user or viewer.
        #[arg(long)]
        role: String,
        /// A group (of the config's `groups`) whose servers the user may
        /// use; repeat for several.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Change a stored user's role or groups.
    Set {
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// The new role.
        #[arg(long)]
        role: Option<String>,
        /// The new groups, comma-separated (`--groups ""` for none).
        #[arg(long, value_name = "G,G…", conflicts_with_all = ["add_group", "remove_group"])]
        groups: Option<String>,
        /// Add a group; repeat for several.
        #[arg(long, value_name = "GROUP")]
        add_group: Vec<String>,
        /// Remove a group; repeat for several.
        #[arg(long, value_name = "GROUP")]
        remove_group: Vec<String>,
    },
    /// Remove a stored user. Its API keys are kept, but give no access
    /// unless the config names the user.
    Rm {
        #[arg(allow_hyphen_values = true)]
        name: String,
    },
    /// List the users of the config file and of the store.
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_role(role: &str) -> anyhow::Result<Role> {
    role.parse().map_err(|_| anyhow::anyhow!("unknown role {role:?}: expected admin, manager, user or viewer"))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if !is_valid_user_name(name) {
        bail!("{USER_NAME_RULE}");
    }
    Ok(())
}

/// Checks groups against the config's `groups`, dropping repeats.
fn check_groups(config: &Config, groups: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        if !config.groups.contains_key(g) {
            let known: Vec<&str> = config.groups.keys().map(String::as_str).collect();
            if known.is_empty() {
                bail!("unknown group {g:?}: the config file defines no `groups`");
            }
            bail!("unknown group {g:?}: the config file's `groups` are {}", known.join(", "));
        }
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    Ok(out)
}

fn warn_if_in_config(config: &Config, name: &str) {
    if config.users.contains_key(name) {
        eprintln!(
            "warning: {name:?} is also in the config file's `users`, whose entry wins: the store's entry has no effect while it is there"
        );
    }
}

fn groups_text(groups: &[String]) -> String {
    if groups.is_empty() { "-".into() } else { groups.join(",") }
}

pub async fn run(config_path: &Path, cmd: UsersCommand) -> anyhow::Result<()> {
    let (config, store, _pepper) = crate::keys::open_store(config_path).await?;
    let outcome = run_with(&config, config_path, &store, cmd).await;
    store.close().await;
    outcome
}

async fn run_with(config: &Config, config_path: &Path, store: &Store, cmd: UsersCommand) -> anyhow::Result<()> {
    match cmd {
        UsersCommand::Add { name, role, groups } => {
            check_name(&name)?;
            let role = parse_role(&role)?;
            let groups = check_groups(config, &groups)?;
            if !store.insert_user(&NewUser { name: name.clone(), role, groups: groups.clone() }).await? {
                bail!("user {name:?} already exists in the store (change it with `bastion users set`)");
            }
            warn_if_in_config(config, &name);
            let detail = serde_json::json!({"name": name, "role": role.to_string(), "groups": groups});
            crate::audit::record_change(config, config_path, store, "user.add", detail).await?;
            eprintln!("added user {name:?}: role {role}, groups {}", groups_text(&groups));
        }
        UsersCommand::Set { name, role, groups, add_group, remove_group } => {
            check_name(&name)?;
            if role.is_none() && groups.is_none() && add_group.is_empty() && remove_group.is_empty() {
                bail!("nothing to change: give --role, --groups, --add-group or --remove-group");
            }
            let role = role.as_deref().map(parse_role).transpose()?;
            let Some(current) = store.get_user(&name).await? else {
                if config.users.contains_key(&name) {
                    bail!("no user {name:?} in the store: it is in the config file, change it there");
                }
                bail!("no user {name:?} in the store (add it with `bastion users add`)");
            };
            let new_groups = if let Some(list) = groups {
                let list: Vec<String> =
                    list.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect();
                Some(check_groups(config, &list)?)
            } else if !add_group.is_empty() || !remove_group.is_empty() {
                let added = check_groups(config, &add_group)?;
                for g in remove_group.iter().filter(|g| !current.groups.contains(g)) {
                    eprintln!("warning: {name:?} is not in group {g:?}");
                }
                let mut gs: Vec<String> = current.groups.into_iter().filter(|g| !remove_group.contains(g)).collect();
                for g in added {
                    if !gs.contains(&g) {
                        gs.push(g);
                    }
                }
                Some(gs)
            } else {
                None
            };
            let Some(updated) = store.update_user(&name, role, new_groups).await? else {
                bail!("no user {name:?} in the store");
            };
            warn_if_in_config(config, &name);
            let detail = serde_json::json!({"name": name, "role": updated.role.to_string(), "groups": updated.groups});
            crate::audit::record_change(config, config_path, store, "user.set", detail).await?;
            eprintln!("user {name:?}: role {}, groups {}", updated.role, groups_text(&updated.groups));
        }
        UsersCommand::Rm { name } => {
            check_name(&name)?;
            if !store.delete_user(&name).await? {
                if config.users.contains_key(&name) {
                    bail!("no user {name:?} in the store: it is in the config file, remove it there");
                }
                bail!("no user {name:?} in the store");
            }
            crate::audit::record_change(config, config_path, store, "user.rm", serde_json::json!({"name": name}))
                .await?;
            eprintln!("removed user {name:?}");
            let now = Utc::now();
            let active =
                store.list_keys(Some(&name)).await?.iter().filter(|k| k.state(now) == KeyState::Active).count();
            if config.users.contains_key(&name) {
                eprintln!("{name:?} stays in the config file, whose entry gives its access");
            } else if active > 0 {
                eprintln!(
                    "{name:?} still has {active} active API key{}, kept: {} no access while the user has no role (revoke with `bastion keys revoke ID`)",
                    if active == 1 { "" } else { "s" },
                    if active == 1 { "it gives" } else { "they give" }
                );
            } else {
                eprintln!("{name:?} has no active API keys");
            }
        }
        UsersCommand::List { json } => list(config, store, json).await?,
    }
    Ok(())
}

/// One row of `users list`.
struct Row {
    name: String,
    role: Role,
    groups: Vec<String>,
    source: &'static str,
    shadowed: bool,
    updated: Option<chrono::DateTime<Utc>>,
}

async fn list(config: &Config, store: &Store, json: bool) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = config
        .users
        .iter()
        .map(|(name, u)| Row {
            name: name.clone(),
            role: u.role,
            groups: u.groups.clone(),
            source: "config",
            shadowed: false,
            updated: None,
        })
        .collect();
    for u in store.list_users().await? {
        rows.push(Row {
            shadowed: config.users.contains_key(&u.name),
            name: u.name,
            role: u.role,
            groups: u.groups,
            source: "store",
            updated: Some(u.updated_at),
        });
    }
    // By name; for one name, the config's entry (the one in force) first.
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.shadowed.cmp(&b.shadowed)));
    if json {
        for r in rows {
            let v = serde_json::json!({
                "name": r.name,
                "role": r.role,
                "groups": r.groups,
                "source": r.source,
                "shadowed": r.shadowed,
                "updated_at": r.updated,
            });
            println!("{v}");
        }
    } else {
        println!("{:<24} {:<8} {:<18} {:<17} GROUPS", "NAME", "ROLE", "SOURCE", "UPDATED");
        for r in rows {
            let source = if r.shadowed { "store (shadowed)" } else { r.source };
            println!(
                "{:<24} {:<8} {:<18} {:<17} {}",
                r.name,
                r.role.as_str(),
                source,
                r.updated.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into()),
                groups_text(&r.groups)
            );
        }
    }
    Ok(())
}
