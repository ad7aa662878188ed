use crate::config::ConfigError;
use crate::sources::SourceError;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A state-dir file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The agent is not enrolled (no identity in the state dir).
    #[error("agent is not enrolled: {0} (run `custos agent enroll` first)")]
    NotEnrolled(String),
    /// Invalid argument (pin, url...).
    #[error("{0}")]
    Invalid(String),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The server could not be reached or the connection failed.
    #[error("cannot reach server {url}: {reason}")]
    Unreachable {
        /// Server URL.
        url: String,
        /// The underlying error chain.
        reason: String,
    },
    /// The server refused the request.
    #[error("server refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// Shipping gave up after the retry budget.
    #[error("gave up shipping after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

impl AgentError {
    /// Wrap an I/O error.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io { context: context.into(), source }
    }
}

/// Render an error and its sources on one line ("a: b: c").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
