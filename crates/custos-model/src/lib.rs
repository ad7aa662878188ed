//! The shared vocabulary of custos: events and their typed values, consent
//! levels, categories, PII classes, identifiers, the telemetry registry (what
//! is collected at each level), the versioned wire format agents use to ship
//! batches, and the JSON types of the HTTP API.
//!
//! This crate does no I/O and depends on nothing else of ours, so every other
//! crate (the agent included) can link it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
mod event;
mod ids;
mod level;
mod names;
pub mod registry;
mod secret;
pub mod roles;
pub mod wire;

pub use event::{Event, Value, ValueType, RESERVED_COLUMNS};
pub use ids::{AccessRequestId, AgentId, BatchId, CaseId, ChangeId, JobId, IdParseError, PrincipalId, SegmentId, TokenId, WorkspaceId};
pub use level::{Category, Level, LevelParseError, PiiClass};
pub use names::{validate_column_name, NameError, TableName};
pub use registry::{
    CatalogRow, FieldDef, Registry, RegistryError, RegistryViolation, Severity, SeverityParseError, Switch, TableDef,
};
pub use roles::{RoleParseError, ServiceRole, WorkspaceRole};
pub use secret::Secret;

/// Microseconds since the Unix epoch, UTC. All event times use this unit.
pub type TimestampMicros = i64;

/// The current time in microseconds since the Unix epoch.
///
/// A clock before 1970 reads as 0; this is the only place the model crate
/// looks at the system clock, so callers that need an injected clock pass
/// times explicitly instead.
pub fn now_micros() -> TimestampMicros {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}
