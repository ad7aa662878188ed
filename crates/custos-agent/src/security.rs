//! Security notes: things the agent noticed that belong in the
//! `security_events` table (level 0, category security).
//!
//! Components that notice such a thing (the control socket refusing a peer,
//! the managed policy becoming invalid, ...) do not write events
//! themselves: they hand a [`SecurityNote`] to a [`SecuritySink`] supplied
//! by the run loop, which turns it into an event.

use std::sync::Arc;

/// The `kind` values of the `security_events` table (the registry lists the
/// same names).
pub mod kind {
    /// The agent enrolled with a server.
    pub const ENROLLED: &str = "enrolled";
    /// The agent generated a key pair.
    pub const KEY_GENERATED: &str = "key_generated";
    /// The agent's certificate was renewed.
    pub const CERTIFICATE_RENEWED: &str = "certificate_renewed";
    /// The server refused the agent's credentials.
    pub const AUTH_FAILURE: &str = "auth_failure";
    /// The server's key did not match the pin.
    pub const PIN_MISMATCH: &str = "pin_mismatch";
    /// A process of another user tried the local control socket.
    pub const CONTROL_REFUSED: &str = "control_refused";
    /// The managed policy file exists but cannot be used (telemetry is
    /// disabled until it is fixed).
    pub const POLICY_INVALID: &str = "policy_invalid";
    /// The durable queue could not be written (a full disk); collection
    /// waits until it can.
    pub const QUEUE_WRITE_FAILED: &str = "queue_write_failed";
    /// A batch the server refused for good was moved to the dead-letter store.
    pub const DEAD_LETTER: &str = "dead_letter";
    /// The server's published key pins were learned (a key rotation ahead).
    pub const PINS_UPDATED: &str = "pins_updated";
}

/// One security-relevant observation, to be recorded as a `security_events`
/// event (`kind`, `outcome`, `detail` are the table's fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityNote {
    /// What happened: one of the names in [`kind`].
    pub kind: &'static str,
    /// How it ended, e.g. `"refused"`, `"ok"`, `"failed"`.
    pub outcome: String,
    /// A human-readable account (may name a uid, pid or path; PII class
    /// "maybe").
    pub detail: String,
}

/// Where security notes go (the run loop records them as events). Called
/// from async tasks: it must not block.
pub type SecuritySink = Arc<dyn Fn(SecurityNote) + Send + Sync>;

/// A sink that drops every note (for tools and tests that record nothing).
pub fn discard() -> SecuritySink {
    Arc::new(|_| {})
}
