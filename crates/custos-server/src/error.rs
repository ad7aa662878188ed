use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use custos_model::api::ErrorBody;

/// Errors of the server crate. Each maps to one HTTP status and a stable
/// machine-readable code; the message is specific and safe to show.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or invalid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The target does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// A conflicting state (name taken, key already used).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The query failed.
    #[error("query failed: {0}")]
    Query(String),
    /// Certificates and keys.
    #[error("pki error: {0}")]
    Pki(String),
    /// Configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory or another local file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] custos_catalog::CatalogError),
    /// Segment storage failed.
    #[error(transparent)]
    Store(#[from] custos_store::StoreError),
    /// The ingest log failed.
    #[error("ingest log: {0}")]
    Wal(#[from] custos_wal::WalError),
    /// A bug or broken invariant inside the server.
    #[error("internal error: {0}")]
    Internal(String),
    /// The audit log failed.
    #[error("audit log: {0}")]
    Audit(#[from] custos_audit::AuditError),
    /// The server is shutting down or a worker died.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl ServerError {
    /// Wrap an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServerError::Io { context: context.into(), source }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use custos_catalog::CatalogError as C;
        match self {
            ServerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServerError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ServerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServerError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ServerError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ServerError::Query(_) => (StatusCode::BAD_REQUEST, "query_error"),
            ServerError::Catalog(C::WorkspaceNotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            ServerError::Catalog(C::WorkspaceLocked { .. }) => (StatusCode::CONFLICT, "workspace_locked"),
            ServerError::Catalog(C::WorkspaceNameTaken(_))
            | ServerError::Catalog(C::NoPendingChange { .. })
            | ServerError::Catalog(C::PurgeState { .. })
            | ServerError::Catalog(C::PrincipalNameTaken(_))
            | ServerError::Catalog(C::CaseClosed(_))
            | ServerError::Catalog(C::AccessRequestNotPending { .. }) => (StatusCode::CONFLICT, "conflict"),
            ServerError::Catalog(C::PrincipalNotFound(_))
            | ServerError::Catalog(C::TokenNotFound(_))
            | ServerError::Catalog(C::CaseNotFound(_))
            | ServerError::Catalog(C::PurgeNotFound(_))
            | ServerError::Catalog(C::AccessRequestNotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            ServerError::Catalog(C::EnrollmentKeyInvalid)
            | ServerError::Catalog(C::EnrollmentKeyUsed)
            | ServerError::Catalog(C::EnrollmentKeyExpired) => (StatusCode::UNAUTHORIZED, "enrollment_refused"),
            ServerError::Unavailable(_) | ServerError::Audit(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request refused");
        }
        let body = ErrorBody { code: code.to_string(), error: self.to_string() };
        (status, axum::Json(body)).into_response()
    }
}
