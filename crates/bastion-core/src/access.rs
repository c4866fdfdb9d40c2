//! Who may do what, in the terms the configuration uses: the four roles.
//! The decisions themselves are the policy engine's (`bastion-policy`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A user's role. Roles do not nest groups: what a `user`, `manager` or
/// `viewer` may touch is limited to the servers of its groups; an `admin`
/// may use every server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything: every server, every tool, and the administration.
    Admin,
    /// A `user` who also manages keys and groups.
    Manager,
    /// Lists, reads, gets and calls within its groups.
    User,
    /// Lists and reads within its groups; calls no tool.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Manager, Role::User, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::User => "user",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role: expected admin, manager, user or viewer")]
pub struct UnknownRole;

impl FromStr for Role {
    type Err = UnknownRole;
    /// Exact, lower-case names only: `Admin` or `ADMIN` is not a role, so a
    /// claim cannot reach a role by a spelling the configuration never used.
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or(UnknownRole)
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::invalid_value(serde::de::Unexpected::Str(&s), &"admin, manager, user or viewer")
        })
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_exact() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!("admin ".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
    }
}
