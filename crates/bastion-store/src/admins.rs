//! Local administrator accounts (`bastion admin`): a password kept as an
//! Argon2id hash and a TOTP second factor (RFC 6238: HMAC-SHA-1, 6 digits,
//! 30-second steps, one step of clock drift either way).
//!
//! [`verify_login`] is the whole decision on one attempt, pure and
//! synchronous (it runs Argon2: call it off the async workers);
//! [`Store::admin_login`] reads the account, decides, and records the
//! outcome: failed attempts lead to a lockout with an exponential backoff,
//! and the time step of each accepted code is kept so that a code is
//! accepted once.
//!
//! The TOTP secret is stored as it is (base32) for now: whoever can read
//! the database can compute codes. It is never printed again after
//! enrolment and never appears in `Debug` output or error messages.
//!
//! Changes to an account (not the record of a login attempt) bump the
//! [`USERS`](crate::changes::USERS) topic of the change feed.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::changes::{BumpChange, USERS};
use crate::db::{Fields, on_pool};
use crate::store::{Store, StoreError, ts};

/// Argon2id memory cost in KiB (OWASP's first recommended setting).
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// Argon2id passes.
pub const ARGON2_ITERATIONS: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_PARALLELISM: u32 = 1;
/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password accepted, in bytes (hashing cost stays bounded).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// TOTP step, in seconds.
pub const TOTP_STEP_SECS: i64 = 30;
/// TOTP code length.
pub const TOTP_DIGITS: usize = 6;
/// Steps of clock drift accepted either way.
pub const TOTP_SKEW: i64 = 1;
/// The issuer named in enrolment URIs.
pub const TOTP_ISSUER: &str = "Bastion";
/// Failed attempts in a row before an account is locked.
pub const LOCKOUT_THRESHOLD: i64 = 5;
/// The first lockout; each further failure doubles it, up to
/// [`LOCKOUT_MAX_SECS`].
pub const LOCKOUT_BASE_SECS: i64 = 30;
/// The longest lockout.
pub const LOCKOUT_MAX_SECS: i64 = 3600;

/// The rule [`is_valid_admin_name`] checks, in words.
pub const ADMIN_NAME_RULE: &str = "invalid administrator name: 1 to 64 letters, digits and - _ . @";

/// Whether an administrator name is acceptable (it appears in the
/// enrolment URI's label, so it is kept simple).
pub fn is_valid_admin_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// A password refused by [`check_password_policy`], or a hashing failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("the password must have at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    #[error("the password must not contain control characters")]
    ControlCharacter,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Whether a new password is acceptable: at least 12 characters, at most
/// 1024 bytes, no control characters.
pub fn check_password_policy(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        Err(PasswordError::TooLong)
    } else if password.chars().count() < MIN_PASSWORD_CHARS {
        Err(PasswordError::TooShort)
    } else if password.chars().any(char::is_control) {
        Err(PasswordError::ControlCharacter)
    } else {
        Ok(())
    }
}

fn argon2() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_PARALLELISM, None)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password (after [`check_password_policy`]) with Argon2id and a
/// random 16-byte salt; returns the PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    check_password_policy(password)?;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let hash = argon2()?.hash_password(password.as_bytes(), &salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches a PHC string made by [`hash_password`] (its
/// own parameters are used, so hashes made with older settings still
/// verify). Anything but an Argon2id hash is refused. The comparison is
/// constant-time.
pub fn verify_password(phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != Algorithm::Argon2id.ident() || password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
}

/// Spends the time of one password verification, for a login attempt on a
/// name that has no account (so that the answer's timing does not tell).
pub fn verify_password_of_nobody(password: &str) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("an account that does not exist").ok());
    if let Some(d) = dummy {
        let _ = verify_password(d, password);
    }
}

/// A TOTP shared secret, base32 (RFC 4648, no padding), at least 128 bits.
/// Its `Debug` output hides it; the memory is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Zeroizing<String>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(…)")
    }
}

/// A base32 text that is not a usable TOTP secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TOTP secret: base32, at least 128 bits")]
pub struct InvalidTotpSecret;

impl TotpSecret {
    /// A new random secret of 160 bits (RFC 4226's recommendation).
    pub fn generate() -> TotpSecret {
        let encoded = totp_rs::Secret::generate_secret().to_encoded();
        match &encoded {
            totp_rs::Secret::Encoded(s) => TotpSecret(Zeroizing::new(s.clone())),
            // `to_encoded` always returns the encoded form.
            totp_rs::Secret::Raw(_) => unreachable!("to_encoded returned raw bytes"),
        }
    }

    /// A secret from its base32 text (case and spaces ignored).
    pub fn from_base32(text: &str) -> Result<TotpSecret, InvalidTotpSecret> {
        let cleaned: Zeroizing<String> = Zeroizing::new(
            text.chars().filter(|c| !c.is_whitespace() && *c != '=').map(|c| c.to_ascii_uppercase()).collect(),
        );
        let s = TotpSecret(cleaned);
        s.totp(String::new()).map(|_| s)
    }

    /// The base32 text, for enrolment only.
    pub fn base32(&self) -> &str {
        &self.0
    }

    fn totp(&self, account: String) -> Result<totp_rs::TOTP, InvalidTotpSecret> {
        let bytes = totp_rs::Secret::Encoded(self.0.to_string()).to_bytes().map_err(|_| InvalidTotpSecret)?;
        totp_rs::TOTP::new(
            totp_rs::Algorithm::SHA1,
            TOTP_DIGITS,
            TOTP_SKEW as u8,
            TOTP_STEP_SECS as u64,
            bytes,
            Some(TOTP_ISSUER.to_string()),
            account,
        )
        .map_err(|_| InvalidTotpSecret)
    }

    /// The `otpauth://totp/Bastion:NAME?secret=…&issuer=Bastion` URI an
    /// authenticator app enrols from.
    pub fn otpauth_uri(&self, account: &str) -> Result<String, InvalidTotpSecret> {
        Ok(self.totp(account.to_string())?.get_url())
    }

    /// The code of a time step.
    pub fn code_at_step(&self, step: i64) -> Result<String, InvalidTotpSecret> {
        let t = u64::try_from(step.saturating_mul(TOTP_STEP_SECS)).map_err(|_| InvalidTotpSecret)?;
        Ok(self.totp(String::new())?.generate(t))
    }
}

/// The TOTP time step of an instant.
pub fn totp_step(now: DateTime<Utc>) -> i64 {
    now.timestamp().div_euclid(TOTP_STEP_SECS)
}

/// Why a TOTP code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("the code is wrong or expired")]
    Wrong,
    #[error("the code was already used")]
    Replayed,
}

/// Checks a code against the steps around `now` (one either way), without
/// telling by its timing which step matched. A code of a step at or before
/// `last_step` (the last one accepted) is refused as replayed. Returns the
/// step matched, which the caller keeps as the new last step.
pub fn check_totp(
    secret: &TotpSecret,
    code: &str,
    now: DateTime<Utc>,
    last_step: Option<i64>,
) -> Result<i64, TotpError> {
    let code = code.trim();
    let well_formed = code.len() == TOTP_DIGITS && code.bytes().all(|b| b.is_ascii_digit());
    let current = totp_step(now);
    let mut fresh = None;
    let mut replayed = false;
    for step in current - TOTP_SKEW..=current + TOTP_SKEW {
        let Ok(expected) = secret.code_at_step(step) else {
            return Err(TotpError::Wrong);
        };
        let expected = Zeroizing::new(expected);
        let matches: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
        if matches && well_formed {
            if last_step.is_some_and(|l| step <= l) {
                replayed = true;
            } else if fresh.is_none() {
                fresh = Some(step);
            }
        }
    }
    match fresh {
        Some(step) => Ok(step),
        None if replayed => Err(TotpError::Replayed),
        None => Err(TotpError::Wrong),
    }
}

/// How long an account is locked after `failures` failed attempts in a
/// row: not before [`LOCKOUT_THRESHOLD`], then 30 s doubling with each
/// further failure, at most an hour.
pub fn lockout_after(failures: i64) -> Option<chrono::Duration> {
    if failures < LOCKOUT_THRESHOLD {
        return None;
    }
    let doublings = u32::try_from((failures - LOCKOUT_THRESHOLD).min(16)).unwrap_or(16);
    let secs = LOCKOUT_BASE_SECS.saturating_mul(1i64 << doublings).min(LOCKOUT_MAX_SECS);
    Some(chrono::Duration::seconds(secs))
}

/// A stored administrator account. `Debug` hides the password hash and the
/// TOTP secret; serialising leaves them out.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdminRecord {
    pub name: String,
    /// PHC string (Argon2id).
    #[serde(skip)]
    pub password_hash: String,
    #[serde(skip)]
    pub totp_secret: Option<TotpSecret>,
    /// Whether the second factor was confirmed with a valid code.
    pub totp_confirmed: bool,
    /// The time step of the last code accepted.
    #[serde(skip)]
    pub totp_last_step: Option<i64>,
    /// Failed attempts since the last successful login.
    pub failed_attempts: i64,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for AdminRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRecord")
            .field("name", &self.name)
            .field("totp_enrolled", &self.totp_secret.is_some())
            .field("totp_confirmed", &self.totp_confirmed)
            .field("failed_attempts", &self.failed_attempts)
            .field("locked_until", &self.locked_until)
            .field("created_at", &self.created_at)
            .field("last_login_at", &self.last_login_at)
            .finish_non_exhaustive()
    }
}

impl AdminRecord {
    /// Whether a login would be refused now without looking at the
    /// credentials.
    pub fn locked_at(&self, now: DateTime<Utc>) -> bool {
        self.locked_until.is_some_and(|u| u > now)
    }
}

/// Why a login was refused. The `Display` text tells the operator; what a
/// login form shows is [`LoginError::public_message`], the same for a wrong
/// name, password or code.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("no such administrator")]
    UnknownAdmin,
    #[error("the account is locked until {}", .until.format("%Y-%m-%d %H:%M:%S UTC"))]
    Locked { until: DateTime<Utc> },
    #[error("the password is wrong")]
    WrongPassword,
    #[error("no confirmed second factor: run `bastion admin totp NAME`")]
    NoSecondFactor,
    #[error("the code is wrong or expired")]
    WrongCode,
    #[error("the code was already used")]
    ReplayedCode,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LoginError {
    /// What to tell the person logging in.
    pub fn public_message(&self) -> &'static str {
        match self {
            LoginError::Locked { .. } => "too many failed attempts: try again later",
            LoginError::Store(_) => "login is unavailable",
            _ => "invalid name, password or code",
        }
    }

    /// Whether the attempt counts toward a lockout.
    pub fn counts_as_failure(&self) -> bool {
        matches!(
            self,
            LoginError::WrongPassword | LoginError::NoSecondFactor | LoginError::WrongCode | LoginError::ReplayedCode
        )
    }
}

/// Decides one login attempt: refused while locked (the password is then
/// not even checked), then the password (Argon2id, constant-time), then a
/// confirmed second factor and its code (see [`check_totp`]). Returns the
/// code's time step, to keep with [`Store::record_login`].
pub fn verify_login(
    admin: &AdminRecord,
    password: &str,
    totp_code: &str,
    now: DateTime<Utc>,
) -> Result<i64, LoginError> {
    if let Some(until) = admin.locked_until.filter(|u| *u > now) {
        return Err(LoginError::Locked { until });
    }
    if !verify_password(&admin.password_hash, password) {
        return Err(LoginError::WrongPassword);
    }
    let secret = match &admin.totp_secret {
        Some(s) if admin.totp_confirmed => s,
        _ => return Err(LoginError::NoSecondFactor),
    };
    check_totp(secret, totp_code, now, admin.totp_last_step).map_err(|e| match e {
        TotpError::Wrong => LoginError::WrongCode,
        TotpError::Replayed => LoginError::ReplayedCode,
    })
}

/// What [`Store::record_login`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// Credentials verified, with the code of this time step.
    Success {
        totp_step: i64,
    },
    Failure,
}

/// What [`Store::record_login`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRecorded {
    /// The login stands: counters cleared, the step kept.
    Accepted,
    /// Counted as a failure (a success whose step was used meanwhile by a
    /// concurrent login counts as one too).
    Refused { failed_attempts: i64, locked_until: Option<DateTime<Utc>> },
    /// There is no such account.
    NoSuchAdmin,
}

macro_rules! admin_columns {
    () => {
        "name, password_hash, totp_secret, totp_confirmed, totp_last_step, failed_attempts, locked_until, \
         created_at, last_login_at"
    };
}

fn row_to_admin(row: &impl Fields) -> Result<AdminRecord, StoreError> {
    let name = row.text("name")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("administrator {name:?}: {what}"));
    let secret = Zeroizing::new(row.opt_text("totp_secret")?);
    let totp_secret = match secret.as_deref() {
        Some(s) => Some(TotpSecret::from_base32(s).map_err(|_| corrupt("totp_secret"))?),
        None => None,
    };
    Ok(AdminRecord {
        password_hash: row.text("password_hash")?,
        totp_secret,
        totp_confirmed: row.int("totp_confirmed")? != 0,
        totp_last_step: row.opt_int("totp_last_step")?,
        failed_attempts: row.int("failed_attempts")?,
        locked_until: ts(row.opt_int("locked_until")?),
        created_at: ts(Some(row.int("created_at")?)).ok_or_else(|| corrupt("created_at"))?,
        last_login_at: ts(row.opt_int("last_login_at")?),
        name,
    })
}

impl Store {
    /// Adds an administrator with a password hash (see [`hash_password`])
    /// and no second factor yet. Returns false when the name is taken.
    pub async fn create_admin(&self, name: &str, password_hash: &str) -> Result<bool, StoreError> {
        if !is_valid_admin_name(name) {
            return Err(StoreError::Invalid(ADMIN_NAME_RULE.into()));
        }
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let changed = sqlx::query(
                "INSERT INTO admins (name, password_hash, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(password_hash)
            .bind(Utc::now().timestamp())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if changed {
                tx.bump_change(USERS).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    pub async fn get_admin(&self, name: &str) -> Result<Option<AdminRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let row = sqlx::query(concat!("SELECT ", admin_columns!(), " FROM admins WHERE name = $1"))
                .bind(name)
                .fetch_optional(p)
                .await?;
            row.as_ref().map(row_to_admin).transpose()
        })
    }

    /// Every administrator, by name.
    pub async fn list_admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(concat!("SELECT ", admin_columns!(), " FROM admins ORDER BY name"))
                .fetch_all(p)
                .await?;
            rows.iter().map(row_to_admin).collect()
        })
    }

    /// Removes an administrator account. Returns false when there is no
    /// such account.
    pub async fn delete_admin(&self, name: &str) -> Result<bool, StoreError> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let changed = sqlx::query("DELETE FROM admins WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if changed {
                tx.bump_change(USERS).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Replaces an administrator's password hash, and lifts a lockout (the
    /// password was set by someone with access to the store). Returns false
    /// when there is no such account.
    pub async fn set_admin_password(&self, name: &str, password_hash: &str) -> Result<bool, StoreError> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let changed = sqlx::query(
                "UPDATE admins SET password_hash = $1, failed_attempts = 0, locked_until = NULL WHERE name = $2"
            )
            .bind(password_hash)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if changed {
                tx.bump_change(USERS).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Sets (or with `None` removes) an administrator's TOTP secret. With
    /// `confirmed_step`, the secret is confirmed by a valid code of that
    /// step, which is then kept as used; without, it awaits confirmation
    /// ([`Store::confirm_admin_totp`]) and logins are refused meanwhile.
    /// Returns false when there is no such account.
    pub async fn set_admin_totp(
        &self,
        name: &str,
        secret: Option<&TotpSecret>,
        confirmed_step: Option<i64>,
    ) -> Result<bool, StoreError> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let changed = sqlx::query(
                "UPDATE admins SET totp_secret = $1, totp_confirmed = $2, totp_last_step = $3 WHERE name = $4"
            )
            .bind(secret.map(TotpSecret::base32))
            .bind(i64::from(secret.is_some() && confirmed_step.is_some()))
            .bind(confirmed_step)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if changed {
                tx.bump_change(USERS).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Confirms a stored, unconfirmed secret with the step of a valid code
    /// (checked by the caller with [`check_totp`]). Returns false when
    /// there is no such account or no secret to confirm.
    pub async fn confirm_admin_totp(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let changed = sqlx::query(
                "UPDATE admins SET totp_confirmed = 1, totp_last_step = $1
                 WHERE name = $2 AND totp_secret IS NOT NULL AND totp_confirmed = 0",
            )
            .bind(step)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if changed {
                tx.bump_change(USERS).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Records a login attempt. A success clears the failure count and the
    /// lockout, stamps the login and keeps the code's step, but only if no
    /// other login took that step (or a later one) meanwhile: otherwise it
    /// counts as a failure. A failure adds one to the count and, from
    /// [`LOCKOUT_THRESHOLD`] on, locks the account for [`lockout_after`].
    pub async fn record_login(
        &self,
        name: &str,
        attempt: LoginAttempt,
        now: DateTime<Utc>,
    ) -> Result<LoginRecorded, StoreError> {
        if let LoginAttempt::Success { totp_step } = attempt {
            let n = on_pool!(&self.pool, p => sqlx::query(
                "UPDATE admins SET failed_attempts = 0, locked_until = NULL, last_login_at = $1, totp_last_step = $2
                 WHERE name = $3 AND (totp_last_step IS NULL OR totp_last_step < $2)",
            )
            .bind(now.timestamp())
            .bind(totp_step)
            .bind(name)
            .execute(p)
            .await?
            .rows_affected());
            if n == 1 {
                return Ok(LoginRecorded::Accepted);
            }
        }
        let failed_attempts = on_pool!(&self.pool, p => {
            let row = sqlx::query(
                "UPDATE admins SET failed_attempts = failed_attempts + 1 WHERE name = $1 RETURNING failed_attempts",
            )
            .bind(name)
            .fetch_optional(p)
            .await?;
            row.as_ref().map(|r| r.int("failed_attempts")).transpose()?
        });
        let Some(failed_attempts) = failed_attempts else {
            return Ok(LoginRecorded::NoSuchAdmin);
        };
        let locked_until = lockout_after(failed_attempts).map(|d| now + d);
        if let Some(until) = locked_until {
            on_pool!(&self.pool, p => sqlx::query(
                "UPDATE admins SET locked_until = CASE WHEN COALESCE(locked_until, 0) > $1 THEN locked_until ELSE $1 END
                 WHERE name = $2",
            )
            .bind(until.timestamp())
            .bind(name)
            .execute(p)
            .await.map(|_| ())?);
        }
        Ok(LoginRecorded::Refused { failed_attempts, locked_until })
    }

    /// One whole login: reads the account, runs [`verify_login`] off the
    /// async workers, and records the outcome ([`Store::record_login`]).
    /// A name without an account costs the same hashing time.
    pub async fn admin_login(
        &self,
        name: &str,
        password: &str,
        totp_code: &str,
        now: DateTime<Utc>,
    ) -> Result<AdminRecord, LoginError> {
        let admin = self.get_admin(name).await?;
        let password = Zeroizing::new(password.to_string());
        let code = Zeroizing::new(totp_code.to_string());
        let (admin, verdict) = tokio::task::spawn_blocking(move || match admin {
            None => {
                verify_password_of_nobody(&password);
                (None, Err(LoginError::UnknownAdmin))
            }
            Some(a) => {
                let v = verify_login(&a, &password, &code, now);
                (Some(a), v)
            }
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("login check failed: {e}")))?;
        let Some(admin) = admin else {
            return Err(verdict.err().unwrap_or(LoginError::UnknownAdmin));
        };
        match verdict {
            Ok(totp_step) => match self.record_login(name, LoginAttempt::Success { totp_step }, now).await? {
                LoginRecorded::Accepted => Ok(self.get_admin(name).await?.unwrap_or(admin)),
                LoginRecorded::NoSuchAdmin => Err(LoginError::UnknownAdmin),
                LoginRecorded::Refused { .. } => Err(LoginError::ReplayedCode),
            },
            Err(e) => {
                if e.counts_as_failure() {
                    self.record_login(name, LoginAttempt::Failure, now).await?;
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::on_both;

    const PASSWORD: &str = "correct horse battery";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    /// An account with a confirmed second factor, its secret, and a time
    /// in the middle of a step.
    async fn enrolled(s: &Store, name: &str) -> (TotpSecret, DateTime<Utc>) {
        assert!(s.create_admin(name, &hash_password(PASSWORD).unwrap()).await.unwrap());
        let secret = TotpSecret::generate();
        assert!(s.set_admin_totp(name, Some(&secret), Some(1)).await.unwrap());
        (secret, at(1_700_000_010))
    }

    /// A well-formed code that no step around `step` has.
    fn wrong_code(secret: &TotpSecret, step: i64) -> String {
        let near: Vec<String> = (step - 1..=step + 1).map(|s| secret.code_at_step(s).unwrap()).collect();
        (0..4).map(|i| format!("{i:06}")).find(|c| !near.contains(c)).unwrap()
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let phc = hash_password(PASSWORD).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains(PASSWORD));
        assert!(verify_password(&phc, PASSWORD));
        assert!(!verify_password(&phc, "correct horse battery "));
        assert!(!verify_password(&phc, ""));
        assert!(!verify_password("not a hash", PASSWORD));
        assert_ne!(phc, hash_password(PASSWORD).unwrap(), "salted");
        assert_eq!(hash_password("short"), Err(PasswordError::TooShort));
        assert!(hash_password("twelve chars").is_ok(), "12 characters are enough");
        assert!(hash_password("ünïcödé chàr").is_ok(), "characters, not bytes");
        assert_eq!(hash_password("twelve\tchars"), Err(PasswordError::ControlCharacter));
        assert_eq!(hash_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)), Err(PasswordError::TooLong));
    }

    #[test]
    fn totp_codes_match_rfc_6238() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", last 6 digits.
        let secret = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        for (t, code) in
            [(59, "287082"), (1_111_111_109, "081804"), (1_234_567_890, "005924"), (2_000_000_000, "279037")]
        {
            assert_eq!(secret.code_at_step(t / TOTP_STEP_SECS).unwrap(), code, "T = {t}");
            assert_eq!(check_totp(&secret, code, at(t), None), Ok(t / TOTP_STEP_SECS));
        }
        assert!(TotpSecret::from_base32("GEZDGNBV").is_err(), "too short");
        assert!(TotpSecret::from_base32("not base32!").is_err());
        let uri = secret.otpauth_uri("alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/Bastion:alice?secret=GEZDGNBV"), "{uri}");
        assert!(uri.contains("issuer=Bastion"), "{uri}");
        assert!(!format!("{secret:?}").contains("GEZ"), "Debug hides the secret");
    }

    #[test]
    fn totp_accepts_one_step_of_drift_and_refuses_replays() {
        let secret = TotpSecret::generate();
        let now = at(1_700_000_010);
        let step = totp_step(now);
        let code = |s: i64| secret.code_at_step(s).unwrap();
        assert_eq!(check_totp(&secret, &code(step), now, None), Ok(step));
        assert_eq!(check_totp(&secret, &code(step - 1), now, None), Ok(step - 1));
        assert_eq!(check_totp(&secret, &code(step + 1), now, None), Ok(step + 1));
        assert_eq!(check_totp(&secret, &format!(" {} ", code(step)), now, None), Ok(step), "spaces around");
        // Expired and future steps.
        assert_eq!(check_totp(&secret, &code(step - 2), now, None), Err(TotpError::Wrong));
        assert_eq!(check_totp(&secret, &code(step + 2), now, None), Err(TotpError::Wrong));
        // Replays: the step accepted last, or an earlier one.
        assert_eq!(check_totp(&secret, &code(step), now, Some(step)), Err(TotpError::Replayed));
        assert_eq!(check_totp(&secret, &code(step - 1), now, Some(step)), Err(TotpError::Replayed));
        assert_eq!(check_totp(&secret, &code(step + 1), now, Some(step)), Ok(step + 1));
        // Malformed codes.
        for bad in ["", "12345", "1234567", "abcdef"] {
            assert_eq!(check_totp(&secret, bad, now, None), Err(TotpError::Wrong), "{bad:?}");
        }
    }

    #[test]
    fn lockout_backs_off_exponentially() {
        assert_eq!(lockout_after(LOCKOUT_THRESHOLD - 1), None);
        assert_eq!(lockout_after(LOCKOUT_THRESHOLD), Some(chrono::Duration::seconds(30)));
        assert_eq!(lockout_after(LOCKOUT_THRESHOLD + 1), Some(chrono::Duration::seconds(60)));
        assert_eq!(lockout_after(LOCKOUT_THRESHOLD + 3), Some(chrono::Duration::seconds(240)));
        assert_eq!(lockout_after(1_000), Some(chrono::Duration::seconds(LOCKOUT_MAX_SECS)));
    }

    #[tokio::test]
    async fn admin_accounts_are_stored_without_secrets_in_debug() {
        on_both(async |s: Store| {
            assert!(s.create_admin("root", &hash_password(PASSWORD).unwrap()).await.unwrap());
            assert!(!s.create_admin("root", &hash_password(PASSWORD).unwrap()).await.unwrap(), "the name is taken");
            assert!(matches!(s.create_admin("bad name", "x").await, Err(StoreError::Invalid(_))));
            let a = s.get_admin("root").await.unwrap().unwrap();
            assert!(a.totp_secret.is_none() && !a.totp_confirmed && a.failed_attempts == 0);
            assert!(s.get_admin("nobody").await.unwrap().is_none());

            let secret = TotpSecret::generate();
            assert!(s.set_admin_totp("root", Some(&secret), None).await.unwrap());
            let a = s.get_admin("root").await.unwrap().unwrap();
            assert_eq!(a.totp_secret.as_ref(), Some(&secret));
            assert!(!a.totp_confirmed, "awaits confirmation");
            assert!(s.confirm_admin_totp("root", 7).await.unwrap());
            assert!(!s.confirm_admin_totp("root", 8).await.unwrap(), "already confirmed");
            let a = s.get_admin("root").await.unwrap().unwrap();
            assert!(a.totp_confirmed);
            assert_eq!(a.totp_last_step, Some(7));
            let debug = format!("{a:?}");
            assert!(!debug.contains(secret.base32()) && !debug.contains("argon2"), "{debug}");
            let json = serde_json::to_string(&a).unwrap();
            assert!(!json.contains(secret.base32()) && !json.contains("argon2"), "{json}");
            assert_eq!(s.list_admins().await.unwrap().len(), 1);
            assert!(!s.set_admin_password("nobody", "x").await.unwrap());
            assert!(!s.set_admin_totp("nobody", None, None).await.unwrap());
            assert!(s.delete_admin("root").await.unwrap());
            assert!(!s.delete_admin("root").await.unwrap());
            assert!(s.list_admins().await.unwrap().is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn login_right_wrong_and_replayed() {
        on_both(async |s: Store| {
            let (secret, now) = enrolled(&s, "root").await;
            let step = totp_step(now);
            let code = secret.code_at_step(step).unwrap();

            let e = s.admin_login("root", "wrong password!", &code, now).await.unwrap_err();
            assert!(matches!(e, LoginError::WrongPassword), "{e}");
            assert_eq!(e.public_message(), "invalid name, password or code");
            let e = s.admin_login("root", PASSWORD, &wrong_code(&secret, step), now).await.unwrap_err();
            assert!(matches!(e, LoginError::WrongCode), "{e}");
            let e = s.admin_login("nobody", PASSWORD, &code, now).await.unwrap_err();
            assert!(matches!(e, LoginError::UnknownAdmin), "{e}");
            assert_eq!(e.public_message(), "invalid name, password or code");
            assert_eq!(s.get_admin("root").await.unwrap().unwrap().failed_attempts, 2);

            let a = s.admin_login("root", PASSWORD, &code, now).await.unwrap();
            assert_eq!(a.failed_attempts, 0, "a success clears the count");
            assert_eq!(a.last_login_at, Some(now));
            assert_eq!(a.totp_last_step, Some(step));

            // The same code again, even within its step: refused.
            let e = s.admin_login("root", PASSWORD, &code, now).await.unwrap_err();
            assert!(matches!(e, LoginError::ReplayedCode), "{e}");
            // An expired code (two steps back) is wrong; the next step's is fine.
            let old = secret.code_at_step(step - 2).unwrap();
            if !(step - 1..=step + 1).any(|s| secret.code_at_step(s).unwrap() == old) {
                let e = s.admin_login("root", PASSWORD, &old, now).await.unwrap_err();
                assert!(matches!(e, LoginError::WrongCode), "{e}");
            }
            let later = now + chrono::Duration::seconds(TOTP_STEP_SECS);
            s.admin_login("root", PASSWORD, &secret.code_at_step(step + 1).unwrap(), later).await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn no_login_without_a_confirmed_second_factor() {
        on_both(async |s: Store| {
            s.create_admin("root", &hash_password(PASSWORD).unwrap()).await.unwrap();
            let now = at(1_700_000_010);
            let e = s.admin_login("root", PASSWORD, "123456", now).await.unwrap_err();
            assert!(matches!(e, LoginError::NoSecondFactor), "{e}");
            let secret = TotpSecret::generate();
            s.set_admin_totp("root", Some(&secret), None).await.unwrap();
            let code = secret.code_at_step(totp_step(now)).unwrap();
            let e = s.admin_login("root", PASSWORD, &code, now).await.unwrap_err();
            assert!(matches!(e, LoginError::NoSecondFactor), "unconfirmed: {e}");
        })
        .await;
    }

    #[tokio::test]
    async fn repeated_failures_lock_the_account() {
        on_both(async |s: Store| {
            let (secret, now) = enrolled(&s, "root").await;
            for i in 1..LOCKOUT_THRESHOLD {
                let r = s.record_login("root", LoginAttempt::Failure, now).await.unwrap();
                assert_eq!(r, LoginRecorded::Refused { failed_attempts: i, locked_until: None });
            }
            let code = secret.code_at_step(totp_step(now)).unwrap();
            let e = s.admin_login("root", "wrong password!", &code, now).await.unwrap_err();
            assert!(matches!(e, LoginError::WrongPassword), "{e}");
            let a = s.get_admin("root").await.unwrap().unwrap();
            assert_eq!(a.failed_attempts, LOCKOUT_THRESHOLD);
            assert_eq!(a.locked_until, Some(now + chrono::Duration::seconds(LOCKOUT_BASE_SECS)));
            assert!(a.locked_at(now));

            // Locked: even the right credentials are refused, and not counted.
            let e = s.admin_login("root", PASSWORD, &code, now).await.unwrap_err();
            assert!(matches!(e, LoginError::Locked { .. }), "{e}");
            assert_eq!(e.public_message(), "too many failed attempts: try again later");
            assert_eq!(s.get_admin("root").await.unwrap().unwrap().failed_attempts, LOCKOUT_THRESHOLD);

            // Once the lockout is over, one more failure locks for twice as long.
            let after = now + chrono::Duration::seconds(LOCKOUT_BASE_SECS + 1);
            let r = s.record_login("root", LoginAttempt::Failure, after).await.unwrap();
            assert_eq!(
                r,
                LoginRecorded::Refused {
                    failed_attempts: LOCKOUT_THRESHOLD + 1,
                    locked_until: Some(after + chrono::Duration::seconds(2 * LOCKOUT_BASE_SECS))
                }
            );

            // A new password lifts the lockout; a success clears the count.
            s.set_admin_password("root", &hash_password("another long password").unwrap()).await.unwrap();
            let a = s.admin_login("root", "another long password", &code, after).await.unwrap();
            assert_eq!((a.failed_attempts, a.locked_until), (0, None));
            assert_eq!(s.record_login("nobody", LoginAttempt::Failure, now).await.unwrap(), LoginRecorded::NoSuchAdmin);
        })
        .await;
    }

    #[tokio::test]
    async fn a_step_taken_by_a_concurrent_login_is_refused() {
        on_both(async |s: Store| {
            let (_secret, now) = enrolled(&s, "root").await;
            let step = totp_step(now);
            assert_eq!(
                s.record_login("root", LoginAttempt::Success { totp_step: step }, now).await.unwrap(),
                LoginRecorded::Accepted
            );
            let r = s.record_login("root", LoginAttempt::Success { totp_step: step }, now).await.unwrap();
            assert!(matches!(r, LoginRecorded::Refused { failed_attempts: 1, .. }), "{r:?}");
        })
        .await;
    }
}
