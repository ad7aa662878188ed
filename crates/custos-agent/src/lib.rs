//! The custos agent: collects events on a host and ships them to the
//! service. It links only the model (and later redact and wal): never the
//! store, catalog or server crates (a test checks this).
//!
//! The path of an event on the host: a source ([`sources`]) reads it, the
//! run loop ([`run`]) batches and compresses it into a wire frame, the
//! shipper ([`ship`]) sends it over mutual TLS to a server trusted by its
//! key pin ([`tls`]), and only after the server's acknowledgement does the
//! source's position advance.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod control;
pub mod deadletter;
mod error;
mod fsutil;
pub mod identity;
pub mod installation;
pub mod internal;
pub mod ledger;
pub mod metrics;
pub mod pseudomap;
pub mod gate;
pub mod queue;
pub mod redaction;
pub mod run;
pub mod seal;
pub mod security;
pub mod settings;
pub mod ship;
pub mod sources;
pub mod tls;

pub use error::{error_chain, AgentError};
