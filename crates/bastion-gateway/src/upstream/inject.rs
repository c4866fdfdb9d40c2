//! References in a server's `env` and `headers` resolved when its process
//! starts or its connection is made: `${server.NAME}` and, for one user's
//! instance of a server run once per user, `${user.NAME}` from the vault;
//! `${env.NAME}` from the gateway's own environment (see
//! [`bastion_core::template`]). The values live only in the map handed to
//! the process or the client, which is zeroized when dropped.

use std::collections::BTreeMap;

use bastion_core::template::{Source, Template};
use bastion_store::OwnerKind;
use secrecy::ExposeSecret;
use zeroize::{Zeroize, Zeroizing};

use super::CallError;
use crate::vault::Vault;

/// Rendered values, zeroized on drop.
pub(crate) struct Rendered(pub BTreeMap<String, String>);

impl Drop for Rendered {
    fn drop(&mut self) {
        for v in self.0.values_mut() {
            v.zeroize();
        }
    }
}

/// Resolves every reference of `map` for server `server` (and the `user`
/// whose instance it is).
pub(crate) async fn render(
    server: &str,
    user: Option<&str>,
    map: &BTreeMap<String, String>,
    vault: Option<&Vault>,
) -> Result<Rendered, CallError> {
    let mut out = Rendered(BTreeMap::new());
    for (key, value) in map {
        // Checked when the configuration was loaded.
        let template = Template::parse(value).map_err(|e| CallError::Unavailable(format!("{key}: {e}")))?;
        let mut values = Vec::new();
        for r in template.refs() {
            values.push(lookup(server, user, r.source, &r.name, vault).await?);
        }
        let mut values = values.into_iter();
        let rendered = template
            .render(|_| values.next().ok_or(()))
            .map_err(|()| CallError::Unavailable(format!("{key}: a reference could not be resolved")))?;
        out.0.insert(key.clone(), rendered.to_string());
    }
    Ok(out)
}

async fn lookup(
    server: &str,
    user: Option<&str>,
    source: Source,
    name: &str,
    vault: Option<&Vault>,
) -> Result<Zeroizing<String>, CallError> {
    match source {
        Source::Env => std::env::var(name).map(Zeroizing::new).map_err(|_| {
            CallError::MissingSecret(format!(
                "the gateway's environment has no {name} (named by `${{env.{name}}}` in this server's configuration)"
            ))
        }),
        Source::Server => {
            let vault = vault.ok_or_else(|| CallError::Unavailable("the secrets vault is not open".into()))?;
            match vault.get(OwnerKind::Server, server, name).await {
                Ok(Some(v)) => Ok(Zeroizing::new(v.expose_secret().to_string())),
                Ok(None) => Err(CallError::MissingSecret(format!(
                    "secret {name} is not set for this server; an administrator sets it with \
                     `bastion secrets set --server {server} {name}`"
                ))),
                Err(e) => {
                    tracing::error!(server, secret = name, error = %e, "a server secret could not be read; the server is not started");
                    Err(CallError::Unavailable("its secrets cannot be read right now".into()))
                }
            }
        }
        Source::User => {
            // A server naming a user's secret only ever starts for a user.
            let user = user.ok_or_else(|| CallError::Unavailable("this server runs once per user".into()))?;
            let vault = vault.ok_or_else(|| CallError::Unavailable("the secrets vault is not open".into()))?;
            match vault.get(OwnerKind::User, user, name).await {
                Ok(Some(v)) => Ok(Zeroizing::new(v.expose_secret().to_string())),
                Ok(None) => Err(CallError::MissingSecret(format!(
                    "your secret {name} is not set; this server needs it to act for you. An administrator sets \
                     it with `bastion secrets set --user {user} {name}`"
                ))),
                Err(e) => {
                    tracing::error!(server, user, secret = name, error = %e, "a user's secret could not be read; the server is not started for them");
                    Err(CallError::Unavailable("your secrets cannot be read right now".into()))
                }
            }
        }
    }
}
