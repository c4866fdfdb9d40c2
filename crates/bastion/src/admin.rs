//! `bastion admin`: local administrator accounts, each with a password
//! (Argon2id) and a TOTP second factor.
//!
//! Passwords and codes are read from standard input: without echo from a
//! terminal, one line each from a pipe (for scripts). The TOTP secret is
//! printed once, at enrolment, on stdout; nothing secret is ever written
//! to stderr or an error message.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use bastion_store::Store;
use bastion_store::admins::{
    ADMIN_NAME_RULE, TotpSecret, check_password_policy, check_totp, hash_password, is_valid_admin_name,
};
use chrono::Utc;
use clap::Subcommand;
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Add an administrator. The password (at least 12 characters) is read
    /// from standard input: typed twice without echo on a terminal, one
    /// line from a pipe.
    Add { name: String },
    /// Enrol (or replace) an administrator's TOTP second factor: prints an
    /// otpauth:// URI and the base32 secret once, then reads a current code
    /// from standard input. The factor is kept only if the code is valid.
    Totp { name: String },
    /// Change an administrator's password (read as for `add`); lifts a
    /// lockout.
    Passwd { name: String },
    /// Remove an administrator.
    Rm { name: String },
    /// List administrators (never their secrets).
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a login as the admin API will: reads the password, then a
    /// current code, from standard input (one line each). A failure counts
    /// toward the account's lockout; a success uses up the code.
    Verify { name: String },
}

/// Attempts at a TOTP code during enrolment on a terminal (one from a pipe).
const ENROLMENT_ATTEMPTS: usize = 3;

fn check_name(name: &str) -> anyhow::Result<()> {
    if !is_valid_admin_name(name) {
        bail!("{ADMIN_NAME_RULE}");
    }
    Ok(())
}

/// One line of standard input, without its line ending.
fn read_stdin_line(what: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    let n = std::io::stdin().lock().read_line(&mut line).with_context(|| format!("reading the {what}"))?;
    if n == 0 {
        bail!("no {what} on standard input");
    }
    let trimmed = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed);
    Ok(line)
}

/// A secret typed without echo on a terminal, or one line from a pipe.
fn read_secret(prompt: &str, what: &str) -> anyhow::Result<Zeroizing<String>> {
    if std::io::stdin().is_terminal() {
        Ok(Zeroizing::new(rpassword::prompt_password(prompt).with_context(|| format!("reading the {what}"))?))
    } else {
        read_stdin_line(what)
    }
}

/// A new password: typed twice on a terminal, checked against the policy.
fn read_new_password() -> anyhow::Result<Zeroizing<String>> {
    let password = read_secret("New password: ", "password")?;
    check_password_policy(&password)?;
    if std::io::stdin().is_terminal() {
        let again = read_secret("Repeat the password: ", "password")?;
        if *again != *password {
            bail!("the passwords differ");
        }
    }
    Ok(password)
}

/// A TOTP code: one line, echoed (a code is used once).
fn read_code(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    read_stdin_line("code")
}

async fn existing(store: &Store, name: &str) -> anyhow::Result<bastion_store::AdminRecord> {
    check_name(name)?;
    match store.get_admin(name).await? {
        Some(a) => Ok(a),
        None => bail!("no administrator {name:?} (add one with `bastion admin add`)"),
    }
}

pub async fn run(config_path: &Path, cmd: AdminCommand) -> anyhow::Result<()> {
    let (config, store, _pepper) = crate::keys::open_store(config_path).await?;
    let outcome = run_with(&config, config_path, &store, cmd).await;
    store.close().await;
    outcome
}

async fn run_with(
    config: &bastion_core::config::Config,
    config_path: &Path,
    store: &Store,
    cmd: AdminCommand,
) -> anyhow::Result<()> {
    let record = async |kind: &str, name: &str| {
        crate::audit::record_change(config, config_path, store, kind, serde_json::json!({"name": name})).await
    };
    match cmd {
        AdminCommand::Add { name } => {
            check_name(&name)?;
            if store.get_admin(&name).await?.is_some() {
                bail!("administrator {name:?} already exists (change its password with `bastion admin passwd`)");
            }
            let password = read_new_password()?;
            let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
            if !store.create_admin(&name, &hash).await? {
                bail!("administrator {name:?} already exists");
            }
            record("admin.add", &name).await?;
            eprintln!(
                "added administrator {name:?}; enrol its second factor with `bastion admin totp {name}` (logins are refused until then)"
            );
        }
        AdminCommand::Totp { name } => {
            let admin = existing(store, &name).await?;
            let secret = TotpSecret::generate();
            let uri = Zeroizing::new(secret.otpauth_uri(&name)?);
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", *uri)?;
                writeln!(out, "{}", secret.base32())?;
                out.flush()?;
            }
            eprintln!(
                "Add this to an authenticator app (the URI printed above, or the secret under it typed by hand: SHA-1, 6 digits, 30 s); it is shown only this once."
            );
            if admin.totp_confirmed {
                eprintln!("The current second factor stays until the new one is confirmed.");
            }
            let attempts = if std::io::stdin().is_terminal() { ENROLMENT_ATTEMPTS } else { 1 };
            for attempt in 1..=attempts {
                let code = read_code("Current code: ")?;
                match check_totp(&secret, &code, Utc::now(), None) {
                    Ok(step) => {
                        if !store.set_admin_totp(&name, Some(&secret), Some(step)).await? {
                            bail!("no administrator {name:?}");
                        }
                        record("admin.totp", &name).await?;
                        eprintln!("second factor confirmed for {name:?}");
                        return Ok(());
                    }
                    Err(e) if attempt < attempts => eprintln!("{e}: try again"),
                    Err(e) => bail!("{e}: the second factor of {name:?} is not changed"),
                }
            }
        }
        AdminCommand::Passwd { name } => {
            existing(store, &name).await?;
            let password = read_new_password()?;
            let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
            if !store.set_admin_password(&name, &hash).await? {
                bail!("no administrator {name:?}");
            }
            record("admin.passwd", &name).await?;
            eprintln!("password changed for {name:?}");
        }
        AdminCommand::Rm { name } => {
            check_name(&name)?;
            if !store.delete_admin(&name).await? {
                bail!("no administrator {name:?}");
            }
            record("admin.rm", &name).await?;
            eprintln!("removed administrator {name:?}");
        }
        AdminCommand::List { json } => {
            let now = Utc::now();
            let admins = store.list_admins().await?;
            let totp = |a: &bastion_store::AdminRecord| match (&a.totp_secret, a.totp_confirmed) {
                (Some(_), true) => "confirmed",
                (Some(_), false) => "pending",
                (None, _) => "none",
            };
            let when = |t: Option<chrono::DateTime<Utc>>| {
                t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into())
            };
            if json {
                for a in &admins {
                    let mut v = serde_json::to_value(a)?;
                    v["totp"] = totp(a).into();
                    v["locked"] = a.locked_at(now).into();
                    println!("{v}");
                }
            } else {
                println!(
                    "{:<24} {:<10} {:>6} {:<17} {:<17} LAST LOGIN",
                    "NAME", "TOTP", "FAILED", "LOCKED UNTIL", "CREATED"
                );
                for a in &admins {
                    println!(
                        "{:<24} {:<10} {:>6} {:<17} {:<17} {}",
                        a.name,
                        totp(a),
                        a.failed_attempts,
                        when(a.locked_until.filter(|u| *u > now)),
                        when(Some(a.created_at)),
                        when(a.last_login_at)
                    );
                }
            }
        }
        AdminCommand::Verify { name } => {
            check_name(&name)?;
            let password = read_secret("Password: ", "password")?;
            let code = read_code("Code: ")?;
            match store.admin_login(&name, &password, &code, Utc::now()).await {
                Ok(_) => eprintln!("login accepted for {name:?}"),
                Err(e) => bail!("login refused: {e}"),
            }
        }
    }
    Ok(())
}
