use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An identifier that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind} id {value:?}: expected a UUID")]
pub struct IdParseError {
    kind: &'static str,
    value: String,
}

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A new random (time-ordered, v7) identifier.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
            /// The underlying UUID.
            pub fn as_uuid(&self) -> &uuid::Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s.trim()).map(Self).map_err(|_| IdParseError {
                    kind: $kind,
                    value: s.chars().take(64).collect(),
                })
            }
        }
    };
}

uuid_id!(
    /// A workspace (tenant). Always taken from the authenticated identity,
    /// never from a payload.
    WorkspaceId,
    "workspace"
);
uuid_id!(
    /// An enrolled agent (one installation on one host).
    AgentId,
    "agent"
);
uuid_id!(
    /// A batch of events sent by an agent; the server deduplicates on it.
    BatchId,
    "batch"
);
uuid_id!(
    /// A stored columnar segment.
    SegmentId,
    "segment"
);

uuid_id!(
    /// A principal: a person or service account that calls the API with
    /// bearer tokens.
    PrincipalId,
    "principal"
);
uuid_id!(
    /// An API token of a principal (the secret itself is never stored).
    TokenId,
    "token"
);
uuid_id!(
    /// A support case on one workspace.
    CaseId,
    "case"
);
uuid_id!(
    /// A support engineer's request for access to a case's workspace; once
    /// approved, the same id names the grant.
    AccessRequestId,
    "access request"
);
uuid_id!(
    /// A requested change of a retention period (applied at once, or after
    /// the grace period for a reduction).
    ChangeId,
    "retention change"
);
uuid_id!(
    /// A background job of a workspace (a purge).
    JobId,
    "job"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_display_and_parse() {
        let id = WorkspaceId::new();
        let back: WorkspaceId = id.to_string().parse().unwrap();
        assert_eq!(id, back);
    }

    #[test]
    fn bad_id_names_the_kind_and_value() {
        let err = "nope".parse::<AgentId>().unwrap_err().to_string();
        assert!(err.contains("agent") && err.contains("nope"), "{err}");
    }
}
