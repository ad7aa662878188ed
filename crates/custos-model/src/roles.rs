//! Roles of principals. Service roles belong to the service's own staff;
//! workspace roles are granted per workspace. What each role may do is
//! decided in one place, the server's `authz` module.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A role name that is not known.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} role {value:?} (expected one of: {expected})")]
pub struct RoleParseError {
    kind: &'static str,
    value: String,
    expected: &'static str,
}

/// A role of the service's own staff. It grants no standing access to any
/// workspace's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceRole {
    /// The service's operators: workspaces, principals, role bindings,
    /// metrics. Not workspace data.
    Admin,
    /// Support engineers: open cases and request case-scoped, time-bound,
    /// customer-approved read access.
    Support,
}

/// A role within one workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceRole {
    /// The customer's administrators: everything in the workspace, including
    /// role grants, lockbox decisions and the audit log.
    Owner,
    /// Reads data and enrolls agents.
    Contributor,
    /// Reads data; changes nothing.
    Reader,
    /// Reads the workspace's audit log and access requests; no data.
    Auditor,
}

impl ServiceRole {
    /// All service roles.
    pub const ALL: [ServiceRole; 2] = [ServiceRole::Admin, ServiceRole::Support];
    /// The name used in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceRole::Admin => "admin",
            ServiceRole::Support => "support",
        }
    }
}

impl WorkspaceRole {
    /// All workspace roles.
    pub const ALL: [WorkspaceRole; 4] =
        [WorkspaceRole::Owner, WorkspaceRole::Contributor, WorkspaceRole::Reader, WorkspaceRole::Auditor];
    /// The name used in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceRole::Owner => "owner",
            WorkspaceRole::Contributor => "contributor",
            WorkspaceRole::Reader => "reader",
            WorkspaceRole::Auditor => "auditor",
        }
    }
}

impl fmt::Display for ServiceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for WorkspaceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceRole {
    type Err = RoleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceRole::ALL.into_iter().find(|r| r.as_str() == s.trim()).ok_or_else(|| RoleParseError {
            kind: "service",
            value: s.chars().take(64).collect(),
            expected: "admin, support",
        })
    }
}

impl FromStr for WorkspaceRole {
    type Err = RoleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkspaceRole::ALL.into_iter().find(|r| r.as_str() == s.trim()).ok_or_else(|| RoleParseError {
            kind: "workspace",
            value: s.chars().take(64).collect(),
            expected: "owner, contributor, reader, auditor",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for r in ServiceRole::ALL {
            assert_eq!(r.as_str().parse::<ServiceRole>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        for r in WorkspaceRole::ALL {
            assert_eq!(r.as_str().parse::<WorkspaceRole>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
    }

    #[test]
    fn unknown_role_names_the_value_and_the_choices() {
        let e = "root".parse::<WorkspaceRole>().unwrap_err().to_string();
        assert!(e.contains("root") && e.contains("auditor"), "{e}");
    }
}
