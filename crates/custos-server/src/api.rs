//! HTTP routes. Every route states who may call it in the table below; the
//! checks live in [`Caller`] extractors so a handler cannot forget them.
//!
//! | route | who |
//! |---|---|
//! | `GET /v1/health` | anyone (no data) |
//! | `POST /v1/enroll` | holder of an enrollment key |
//! | `POST /v1/ingest` | an enrolled agent (client certificate) |
//! | `GET /metrics` | admin |
//! | `POST /v1/workspaces`, `GET /v1/workspaces` | admin |
//! | `GET /v1/workspaces/{id}` | admin |
//! | `POST /v1/workspaces/{id}/enrollment-keys` | admin |
//! | `GET /v1/workspaces/{id}/tables` | admin |
//! | `POST /v1/workspaces/{id}/query` | admin |

use crate::{pki, AppState, ServerError};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use custos_catalog::{Agent, EnrollmentKey, Workspace};
use custos_model::api::*;
use custos_model::{AgentId, WorkspaceId};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What the TLS layer learned about the connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Peer address.
    pub remote: std::net::SocketAddr,
    /// The verified client certificate (DER), if the client sent one.
    pub client_cert: Option<Arc<Vec<u8>>>,
}

/// Build the router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/enroll", post(enroll))
        .route("/v1/ingest", post(ingest))
        .route("/v1/workspaces", post(create_workspace).get(list_workspaces))
        .route("/v1/workspaces/{id}", get(show_workspace))
        .route("/v1/workspaces/{id}/enrollment-keys", post(new_enrollment_key))
        .route("/v1/workspaces/{id}/tables", get(list_tables))
        .route("/v1/workspaces/{id}/query", post(query))
        .fallback(|| async { ServerError::NotFound("no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// An authenticated administrator (bearer token).
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ServerError::Unauthorized("missing bearer token (Authorization: Bearer <token>)".into())
        })?;
        let hash = Sha256::digest(token.as_bytes());
        if subtle::ConstantTimeEq::ct_eq(&hash[..], &state.admin_token_hash[..]).into() {
            Ok(Admin)
        } else {
            Err(ServerError::Unauthorized("invalid token".into()))
        }
    }
}

/// An authenticated agent: identity from the verified client certificate,
/// checked against the catalog (exists, same workspace, same certificate,
/// not revoked). The workspace comes from here and nowhere else.
pub struct AgentCaller {
    /// The agent.
    pub agent: AgentId,
    /// Its workspace.
    pub workspace: WorkspaceId,
}

impl FromRequestParts<Arc<AppState>> for AgentCaller {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let conn = parts
            .extensions
            .get::<ConnInfo>()
            .ok_or_else(|| ServerError::Unauthorized("no connection information".into()))?;
        let der = conn.client_cert.as_ref().ok_or_else(|| {
            ServerError::Unauthorized("a client certificate is required: enroll the agent first".into())
        })?;
        let (agent, workspace) = pki::agent_identity(der)?;
        let record = state
            .catalog
            .get_agent(agent)
            .await?
            .ok_or_else(|| ServerError::Unauthorized(format!("agent {agent} is not enrolled")))?;
        if record.workspace_id != workspace || record.cert_sha256 != pki::der_sha256(der) {
            return Err(ServerError::Unauthorized("client certificate does not match the enrolled agent".into()));
        }
        if record.revoked_at.is_some() {
            return Err(ServerError::Unauthorized(format!("agent {agent} is revoked")));
        }
        Ok(AgentCaller { agent, workspace })
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn health(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "region": s.config.region}))
}

async fn metrics(_: Admin, State(s): State<Arc<AppState>>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &s.ingest.stats;
    let body = format!(
        "# TYPE custos_ingest_batches_total counter\ncustos_ingest_batches_total {}\n\
         # TYPE custos_ingest_events_total counter\ncustos_ingest_events_total {}\n\
         # TYPE custos_ingest_duplicate_batches_total counter\ncustos_ingest_duplicate_batches_total {}\n\
         # TYPE custos_ingest_frame_bytes_total counter\ncustos_ingest_frame_bytes_total {}\n\
         # TYPE custos_segments_written_total counter\ncustos_segments_written_total {}\n\
         # TYPE custos_segment_flush_failures_total counter\ncustos_segment_flush_failures_total {}\n",
        st.batches.load(Relaxed),
        st.events.load(Relaxed),
        st.duplicates.load(Relaxed),
        st.frame_bytes.load(Relaxed),
        st.segments.load(Relaxed),
        st.flush_failures.load(Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn info(ws: &Workspace) -> WorkspaceInfo {
    WorkspaceInfo {
        id: ws.id,
        name: ws.name.clone(),
        region: ws.region.clone(),
        retention_days: ws.retention_days,
        created_at: rfc3339(ws.created_at),
    }
}

/// Parse JSON with a specific error.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ServerError> {
    serde_json::from_slice(body).map_err(|e| ServerError::BadRequest(format!("invalid {what}: {e}")))
}

async fn read_body(body: axum::body::Body, limit: usize, what: &str) -> Result<bytes::Bytes, ServerError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ServerError::PayloadTooLarge(format!("{what} larger than {limit} bytes (or the connection failed while reading it)")))
}

fn new_secret(prefix: &str) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

fn hash_secret(s: &str) -> String {
    hex::encode(Sha256::digest(s.trim().as_bytes()))
}

async fn issue_enrollment_key(s: &AppState, ws: WorkspaceId) -> Result<(String, i64), ServerError> {
    let key = new_secret("cek_");
    let now = custos_model::now_micros();
    let expires_at = now + i64::from(s.config.enrollment_key_ttl_hours) * 3_600_000_000;
    s.catalog
        .add_enrollment_key(&EnrollmentKey { key_hash: hash_secret(&key), workspace_id: ws, created_at: now, expires_at })
        .await?;
    Ok((key, expires_at))
}

async fn create_workspace(_: Admin, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let body = read_body(body, 64 << 10, "request").await?;
    let req: CreateWorkspaceRequest = parse_json(&body, "workspace request")?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ServerError::BadRequest("workspace name must be 1-128 printable characters".into()));
    }
    if req.region != s.config.region {
        return Err(ServerError::BadRequest(format!(
            "region {:?} is not served here: this server stores data in region {:?}",
            req.region, s.config.region
        )));
    }
    let retention_days = req.retention_days.unwrap_or(s.config.default_retention_days);
    if !(1..=3650).contains(&retention_days) {
        return Err(ServerError::BadRequest(format!("retention_days {retention_days} must be between 1 and 3650")));
    }
    let ws = Workspace {
        id: WorkspaceId::new(),
        name: name.to_string(),
        region: req.region,
        retention_days,
        created_at: custos_model::now_micros(),
    };
    s.catalog.create_workspace(&ws).await?;
    let (key, expires) = issue_enrollment_key(&s, ws.id).await?;
    tracing::info!(workspace = %ws.id, name = %ws.name, "workspace created");
    Ok((
        axum::http::StatusCode::CREATED,
        Json(CreateWorkspaceResponse {
            id: ws.id,
            name: ws.name,
            region: ws.region,
            retention_days,
            enrollment_key: key,
            enrollment_key_expires_at: rfc3339(expires),
        }),
    ))
}

async fn list_workspaces(_: Admin, State(s): State<Arc<AppState>>) -> Result<Json<Vec<WorkspaceInfo>>, ServerError> {
    Ok(Json(s.catalog.list_workspaces().await?.iter().map(info).collect()))
}

fn parse_ws(id: &str) -> Result<WorkspaceId, ServerError> {
    id.parse().map_err(|e: custos_model::IdParseError| ServerError::BadRequest(e.to_string()))
}

async fn get_ws(s: &AppState, id: &str) -> Result<Workspace, ServerError> {
    let id = parse_ws(id)?;
    s.catalog.get_workspace(id).await?.ok_or_else(|| ServerError::NotFound(format!("workspace {id} not found")))
}

async fn show_workspace(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<WorkspaceInfo>, ServerError> {
    Ok(Json(info(&get_ws(&s, &id).await?)))
}

async fn new_enrollment_key(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<impl IntoResponse, ServerError> {
    let ws = get_ws(&s, &id).await?;
    let (key, expires) = issue_enrollment_key(&s, ws.id).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(EnrollmentKeyResponse { workspace_id: ws.id, enrollment_key: key, expires_at: rfc3339(expires) }),
    ))
}

async fn list_tables(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Vec<TableInfo>>, ServerError> {
    let ws = get_ws(&s, &id).await?;
    s.ingest.flush().await?;
    let mut out = Vec::new();
    for t in s.catalog.list_tables(ws.id).await? {
        let segs = s.catalog.list_segments(ws.id, &t, None).await?;
        out.push(TableInfo {
            name: t.to_string(),
            rows: segs.iter().map(|s| s.rows).sum(),
            bytes: segs.iter().map(|s| s.bytes).sum(),
            segments: segs.len() as u64,
            min_time: segs.iter().map(|s| s.min_time).min().unwrap_or(0),
            max_time: segs.iter().map(|s| s.max_time).max().unwrap_or(0),
        });
    }
    Ok(Json(out))
}

async fn query(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>, body: axum::body::Body) -> Result<Json<QueryResponse>, ServerError> {
    let ws = get_ws(&s, &id).await?;
    let body = read_body(body, 1 << 20, "query").await?;
    let req: QueryRequest = parse_json(&body, "query request")?;
    // Read-your-writes: everything acknowledged so far becomes queryable.
    s.ingest.flush().await?;
    let resp = crate::query::run(
        s.catalog.as_ref(),
        s.storage.clone(),
        ws.id,
        &req.sql,
        s.config.query.max_rows,
        std::time::Duration::from_secs(s.config.query.timeout_secs),
    )
    .await?;
    tracing::info!(workspace = %ws.id, rows = resp.rows.len(), elapsed_ms = resp.elapsed_ms, "query");
    Ok(Json(resp))
}

async fn enroll(State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let body = read_body(body, 64 << 10, "enrollment request").await?;
    let req: EnrollRequest = parse_json(&body, "enrollment request")?;
    // Check the CSR before spending the single-use key on it.
    pki::check_csr(&req.csr_pem)?;
    let ws = s.catalog.consume_enrollment_key(&hash_secret(&req.enrollment_key), custos_model::now_micros()).await?;
    let agent = AgentId::new();
    let validity = time::Duration::days(i64::from(s.config.agent_cert_days));
    let (cert_pem, cert_der, not_after) = s.ca.sign_agent_csr(&req.csr_pem, agent, ws, validity)?;
    let hostname: String = req.hostname.chars().filter(|c| !c.is_control()).take(255).collect();
    s.catalog
        .add_agent(&Agent {
            id: agent,
            workspace_id: ws,
            hostname,
            cert_sha256: pki::der_sha256(&cert_der),
            cert_not_after: (not_after.unix_timestamp_nanos() / 1000) as i64,
            enrolled_at: custos_model::now_micros(),
            revoked_at: None,
        })
        .await?;
    tracing::info!(agent = %agent, workspace = %ws, "agent enrolled");
    Ok((
        axum::http::StatusCode::CREATED,
        Json(EnrollResponse {
            agent_id: agent,
            workspace_id: ws,
            certificate_pem: cert_pem,
            ca_pem: s.ca.cert_pem.clone(),
            not_after: not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        }),
    ))
}

async fn ingest(caller: AgentCaller, State(s): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Body) -> Result<Json<IngestAck>, ServerError> {
    let limit = s.ingest.limits().max_frame_bytes;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        if len > limit {
            return Err(ServerError::PayloadTooLarge(format!("batch of {len} bytes exceeds the limit of {limit} bytes")));
        }
    }
    let body = read_body(body, limit, "batch").await?;
    let ack = s.ingest.accept(caller.workspace, caller.agent, body).await?;
    tracing::debug!(agent = %caller.agent, workspace = %caller.workspace, batch = %ack.batch_id, events = ack.accepted, duplicate = ack.duplicate, "batch acknowledged");
    Ok(Json(ack))
}
