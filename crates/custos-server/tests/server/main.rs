//! The server's integration tests, in one test binary: each links the whole
//! server (DataFusion included), so one binary instead of nine saves about
//! 2 GB of disk and eight links per build.

// Helpers shared by the modules; each module uses only some of them.
#[allow(dead_code)]
mod common;

mod access;
mod agent_tls;
mod deletion;
mod enforcement;
mod keys;
mod purge;
mod query;
mod redaction;
mod retention;
