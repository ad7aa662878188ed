//! HTTP routes. The table in [`routes`] is the only place a route is
//! added: each names its method, path, audit action, who may call it
//! ([`Access`]: public, enrollment key, agent certificate, or a principal
//! holding a [`Perm`] on the route's target) and whether it changes state.
//! [`router`] wraps every handler in [`guard::guard`], which authenticates,
//! checks the permission, and audits (see `guard` and `authz`).
//!
//! The route table, with permissions, is in `docs/ACCESS.md` (a test keeps
//! it equal to [`route_table_markdown`]).

use crate::authz::Perm;
use crate::guard::{self, Access, Authorized, RouteSpec};
use crate::{lockbox, pki, AppState, ServerError};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::IntoResponse;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use custos_catalog::{
    AccessFilter, AccessRequest, AccessState, Agent, ApiToken, Case, EnrollmentKey, Principal, RoleBinding, Workspace,
    WorkspacePolicy,
};
use custos_model::api::*;
use custos_model::{AccessRequestId, AgentId, PrincipalId, TokenId, WorkspaceId, WorkspaceRole};
use std::sync::Arc;

/// What the TLS layer learned about the connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Peer address.
    pub remote: std::net::SocketAddr,
    /// The verified client certificate (DER), if the client sent one.
    pub client_cert: Option<Arc<Vec<u8>>>,
}

macro_rules! route {
    ($m:ident $path:literal, $action:literal, $access:expr, $mutates:expr, $h:expr) => {
        (
            RouteSpec { method: Method::$m, path: $path, action: $action, access: $access, mutates: $mutates },
            on(MethodFilter::$m, $h),
        )
    };
}

/// Every route: its declaration and its handler.
pub fn routes() -> Vec<(RouteSpec, MethodRouter<Arc<AppState>>)> {
    use Access::{Agent as AgentCert, EnrollmentKey as Key, Principal as P, Public};
    const R: bool = false; // reads
    const W: bool = true; // changes state
    vec![
        route!(GET "/v1/health", "health", Public, R, health),
        route!(POST "/v1/enroll", "agent.enroll", Key, W, enroll),
        route!(POST "/v1/ingest", "ingest.batch", AgentCert, W, ingest),
        route!(GET "/v1/agent/identity", "agent.identity", AgentCert, R, agent_identity),
        route!(POST "/v1/agent/renew", "agent.renew", AgentCert, W, renew_agent_cert),
        route!(GET "/metrics", "metrics.read", P(Perm::ServiceAdmin), R, metrics),
        route!(GET "/v1/whoami", "principal.whoami", P(Perm::Authenticated), R, whoami),
        route!(POST "/v1/principals", "principal.create", P(Perm::ServiceAdmin), W, create_principal),
        route!(GET "/v1/principals", "principal.list", P(Perm::ServiceAdmin), R, list_principals),
        route!(POST "/v1/principals/{principal}/tokens", "token.create", P(Perm::ServiceAdmin), W, create_token_for),
        route!(POST "/v1/tokens", "token.create", P(Perm::Authenticated), W, create_own_token),
        route!(GET "/v1/tokens", "token.list", P(Perm::Authenticated), R, list_own_tokens),
        route!(DELETE "/v1/tokens/{token}", "token.revoke", P(Perm::TokenRevoke), W, revoke_token),
        route!(POST "/v1/workspaces", "workspace.create", P(Perm::ServiceAdmin), W, create_workspace),
        route!(GET "/v1/workspaces", "workspace.list", P(Perm::Authenticated), R, list_workspaces),
        route!(GET "/v1/workspaces/{ws}", "workspace.show", P(Perm::WorkspaceView), R, show_workspace),
        route!(DELETE "/v1/workspaces/{ws}", "workspace.delete", P(Perm::WorkspaceDelete), W, delete_workspace),
        route!(PUT "/v1/workspaces/{ws}/lockbox", "workspace.lockbox", P(Perm::PolicyManage), W, set_lockbox),
        route!(PUT "/v1/workspaces/{ws}/policy", "workspace.policy", P(Perm::PolicyManage), W, set_policy),
        route!(GET "/v1/workspaces/{ws}/refusals", "workspace.refusals", P(Perm::AuditRead), R, list_refusals),
        route!(GET "/v1/workspaces/{ws}/redaction-policy", "workspace.redaction_policy.show", P(Perm::AuditRead), R, show_redaction_policy),
        route!(PUT "/v1/workspaces/{ws}/redaction-policy", "workspace.redaction_policy", P(Perm::PolicyManage), W, set_redaction_policy),
        route!(GET "/v1/workspaces/{ws}/redactions", "workspace.redactions", P(Perm::AuditRead), R, list_redactions),
        route!(GET "/v1/workspaces/{ws}/keys", "workspace.keys.show", P(Perm::AuditRead), R, show_keys),
        route!(POST "/v1/workspaces/{ws}/keys/rotate", "workspace.keys.rotate", P(Perm::PolicyManage), W, rotate_keys),
        route!(POST "/v1/workspaces/{ws}/keys/revoke", "workspace.keys.revoke", P(Perm::PolicyManage), W, revoke_keys),
        route!(POST "/v1/workspaces/{ws}/keys/restore", "workspace.keys.restore", P(Perm::PolicyManage), W, restore_keys),
        route!(GET "/v1/workspaces/{ws}/retention", "workspace.retention.show", P(Perm::WorkspaceView), R, show_retention),
        route!(PUT "/v1/workspaces/{ws}/retention", "workspace.retention", P(Perm::PolicyManage), W, set_retention),
        route!(POST "/v1/workspaces/{ws}/retention/cancel", "workspace.retention.cancel", P(Perm::PolicyManage), W, cancel_retention),
        route!(GET "/v1/workspaces/{ws}/deletions", "workspace.deletions", P(Perm::AuditRead), R, list_deletions),
        route!(POST "/v1/workspaces/{ws}/lock", "workspace.lock", P(Perm::PolicyManage), W, lock_workspace),
        route!(POST "/v1/workspaces/{ws}/unlock", "workspace.unlock", P(Perm::PolicyManage), W, unlock_workspace),
        route!(POST "/v1/workspaces/{ws}/purges", "purge.create", P(Perm::PolicyManage), W, create_purge),
        route!(GET "/v1/workspaces/{ws}/purges", "purge.list", P(Perm::AuditRead), R, list_purges),
        route!(GET "/v1/purges/{job}", "purge.show", P(Perm::AuditRead), R, show_purge),
        route!(POST "/v1/purges/{job}/cancel", "purge.cancel", P(Perm::PolicyManage), W, cancel_purge),
        route!(POST "/v1/purges/{job}/retry", "purge.retry", P(Perm::PolicyManage), W, retry_purge),
        route!(POST "/v1/workspaces/{ws}/exports", "export.create", P(Perm::PolicyManage), W, create_export),
        route!(GET "/v1/workspaces/{ws}/exports/{export}/files/{name}", "export.file", P(Perm::PolicyManage), R, export_file),
        route!(POST "/v1/retention/sweep", "retention.sweep", P(Perm::ServiceAdmin), W, sweep_now),
        route!(POST "/v1/workspaces/{ws}/enrollment-keys", "enrollment_key.create", P(Perm::AgentEnroll), W, new_enrollment_key),
        route!(GET "/v1/workspaces/{ws}/agents", "agent.list", P(Perm::AgentManage), R, list_agents),
        route!(POST "/v1/workspaces/{ws}/agents/{agent}/revoke", "agent.revoke", P(Perm::AgentManage), W, revoke_agent),
        route!(GET "/v1/workspaces/{ws}/tables", "data.tables", P(Perm::DataRead), R, list_tables),
        route!(DELETE "/v1/workspaces/{ws}/tables/{table}", "data.table.delete", P(Perm::PolicyManage), W, delete_table),
        route!(POST "/v1/workspaces/{ws}/query", "data.query", P(Perm::DataRead), R, query),
        route!(GET "/v1/workspaces/{ws}/roles", "role.list", P(Perm::RoleManage), R, list_roles),
        route!(POST "/v1/workspaces/{ws}/roles", "role.grant", P(Perm::RoleManage), W, grant_role),
        route!(DELETE "/v1/workspaces/{ws}/roles/{principal}/{role}", "role.revoke", P(Perm::RoleManage), W, revoke_role),
        route!(POST "/v1/workspaces/{ws}/cases", "case.open", P(Perm::CaseOpen), W, open_case),
        route!(GET "/v1/workspaces/{ws}/access-requests", "access.list", P(Perm::AccessView), R, list_access_requests),
        route!(GET "/v1/workspaces/{ws}/audit", "audit.read", P(Perm::AuditRead), R, read_audit),
        route!(GET "/v1/cases", "case.list", P(Perm::Authenticated), R, list_cases),
        route!(GET "/v1/cases/{case}", "case.show", P(Perm::CaseView), R, show_case),
        route!(POST "/v1/cases/{case}/close", "case.close", P(Perm::CaseClose), W, close_case),
        route!(POST "/v1/cases/{case}/access-requests", "access.request", P(Perm::AccessRequest), W, request_access),
        route!(GET "/v1/access-requests/{req}", "access.show", P(Perm::AccessView), R, show_access_request),
        route!(POST "/v1/access-requests/{req}/approve", "access.approve", P(Perm::AccessDecide), W, approve_access),
        route!(POST "/v1/access-requests/{req}/deny", "access.deny", P(Perm::AccessDecide), W, deny_access),
    ]
}

/// The declarations alone (for documentation and the route-walking test).
pub fn route_specs() -> Vec<RouteSpec> {
    routes().into_iter().map(|(s, _)| s).collect()
}

/// The route table as Markdown (what `docs/ACCESS.md` shows).
pub fn route_table_markdown() -> String {
    let mut out = String::from("| method | path | action | who | changes state |\n|---|---|---|---|---|\n");
    for s in route_specs() {
        let who = match s.access {
            Access::Public => "anyone (not audited)".to_string(),
            Access::EnrollmentKey => "holder of an enrollment key".to_string(),
            Access::Agent => "enrolled agent (client certificate)".to_string(),
            Access::Principal(p) => format!("principal with `{p:?}`"),
        };
        out.push_str(&format!(
            "| {} | `{}` | `{}` | {} | {} |\n",
            s.method,
            s.path,
            s.action,
            who,
            if s.mutates { "yes" } else { "no" }
        ));
    }
    out
}

/// Build the router: every route from [`routes`], each behind the guard.
pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for (spec, handler) in routes() {
        let spec = Arc::new(spec);
        let path = spec.path;
        let st = state.clone();
        let guarded = handler.route_layer(axum::middleware::from_fn(move |req, next| {
            guard::guard(st.clone(), spec.clone(), req, next)
        }));
        router = router.route(path, guarded);
    }
    router
        .fallback(|| async { ServerError::NotFound("no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn health(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "region": s.config.region}))
}

async fn metrics(_: Authorized, State(s): State<Arc<AppState>>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &s.ingest.stats;
    let audit = s.audit.stats();
    let body = format!(
        "# TYPE custos_ingest_batches_total counter\ncustos_ingest_batches_total {}\n\
         # TYPE custos_ingest_events_total counter\ncustos_ingest_events_total {}\n\
         # TYPE custos_ingest_duplicate_batches_total counter\ncustos_ingest_duplicate_batches_total {}\n\
         # TYPE custos_ingest_refused_events_total counter\ncustos_ingest_refused_events_total {}\n\
         # TYPE custos_ingest_frame_bytes_total counter\ncustos_ingest_frame_bytes_total {}\n\
         # TYPE custos_segments_written_total counter\ncustos_segments_written_total {}\n\
         # TYPE custos_segment_flush_failures_total counter\ncustos_segment_flush_failures_total {}\n\
         # HELP custos_ingest_overloaded_total Batches answered 429 (nothing stored), by overload measure.\n\
         # TYPE custos_ingest_overloaded_total counter\n\
         custos_ingest_overloaded_total{{reason=\"concurrency\"}} {}\n\
         custos_ingest_overloaded_total{{reason=\"backlog\"}} {}\n\
         # TYPE custos_ingest_active_batches gauge\ncustos_ingest_active_batches {}\n\
         # TYPE custos_ingest_backlog_bytes gauge\ncustos_ingest_backlog_bytes {}\n\
         {}\
         # TYPE custos_audit_next_seq gauge\ncustos_audit_next_seq {}\n\
         # TYPE custos_audit_records_total counter\ncustos_audit_records_total {}\n\
         # TYPE custos_audit_commits_total counter\ncustos_audit_commits_total {}\n\
         # TYPE custos_audit_fsyncs_total counter\ncustos_audit_fsyncs_total {}\n\
         # TYPE custos_audit_checkpoints_total counter\ncustos_audit_checkpoints_total {}\n\
         # TYPE custos_retention_sweeps_total counter\ncustos_retention_sweeps_total {}\n\
         # HELP custos_retention_segments_deleted_total Segments dropped because every row expired.\n\
         # TYPE custos_retention_segments_deleted_total counter\ncustos_retention_segments_deleted_total {}\n\
         # TYPE custos_retention_rows_deleted_total counter\ncustos_retention_rows_deleted_total {}\n\
         # TYPE custos_rollup_rows_written_total counter\ncustos_rollup_rows_written_total {}\n\
         # TYPE custos_object_removal_failures_total counter\ncustos_object_removal_failures_total {}\n\
         # TYPE custos_purge_jobs_total counter\n\
         custos_purge_jobs_total{{outcome=\"completed\"}} {}\n\
         custos_purge_jobs_total{{outcome=\"failed\"}} {}\n\
         # TYPE custos_purge_rows_removed_total counter\ncustos_purge_rows_removed_total {}\n\
         # TYPE custos_workspaces_deleted_total counter\ncustos_workspaces_deleted_total {}\n",
        st.batches.load(Relaxed),
        st.events.load(Relaxed),
        st.duplicates.load(Relaxed),
        st.refused_events.load(Relaxed),
        st.frame_bytes.load(Relaxed),
        st.segments.load(Relaxed),
        st.flush_failures.load(Relaxed),
        st.overloaded_concurrency.load(Relaxed),
        st.overloaded_backlog.load(Relaxed),
        st.active.load(Relaxed),
        st.backlog_bytes.load(Relaxed),
        redaction_metrics(st),
        s.audit.next_seq(),
        audit.records,
        audit.commits,
        audit.fsyncs,
        audit.checkpoints,
        s.governance.sweeps.load(Relaxed),
        s.governance.retention_segments.load(Relaxed),
        s.governance.retention_rows.load(Relaxed),
        s.governance.rollup_rows.load(Relaxed),
        s.governance.object_removal_failures.load(Relaxed),
        s.governance.purges_completed.load(Relaxed),
        s.governance.purges_failed.load(Relaxed),
        s.governance.purge_rows.load(Relaxed),
        s.governance.workspaces_deleted.load(Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// The redaction backstop's counters: findings by entity (every built-in
/// entity, 0 until seen, and `CUSTOM`), fields and events dropped.
fn redaction_metrics(st: &crate::ingest::IngestStats) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let seen = st.redacted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut out = String::from(
        "# HELP custos_redactions_total Findings the server's redaction backstop removed before storage, by entity.\n\
         # TYPE custos_redactions_total counter\n",
    );
    for e in custos_redact::Entity::BUILTIN.iter().map(|e| e.name()).chain(["CUSTOM"]) {
        let _ = writeln!(out, "custos_redactions_total{{entity=\"{e}\"}} {}", seen.get(e).copied().unwrap_or(0));
    }
    let _ = write!(
        out,
        "# HELP custos_redaction_fields_dropped_total Fields the redaction backstop removed (drop_field).\n\
         # TYPE custos_redaction_fields_dropped_total counter\ncustos_redaction_fields_dropped_total {}\n\
         # HELP custos_redaction_events_dropped_total Events the redaction backstop dropped (drop_event).\n\
         # TYPE custos_redaction_events_dropped_total counter\ncustos_redaction_events_dropped_total {}\n",
        st.redaction_fields_dropped.load(Relaxed),
        st.redaction_events_dropped.load(Relaxed),
    );
    let _ = write!(
        out,
        "# HELP custos_segment_integrity_failures_total Stored segments that failed their integrity checks when read (data-loss incidents).\n\
         # TYPE custos_segment_integrity_failures_total counter\ncustos_segment_integrity_failures_total {}\n",
        st.integrity_failures.load(Relaxed),
    );
    out
}

/// RFC 3339 text of a time in microseconds.
pub fn rfc3339(micros: i64) -> String {
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
        lockbox: ws.lockbox,
        max_level: ws.policy.max_level,
        categories: ws.policy.categories(),
        plan: ws.plan.clone(),
        lock: ws.lock.as_ref().map(crate::retention::lock_info),
    }
}

fn policy_info(ws: WorkspaceId, p: &WorkspacePolicy) -> WorkspacePolicyInfo {
    WorkspacePolicyInfo { workspace_id: ws, max_level: p.max_level, categories: p.categories() }
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

async fn read_json<T: serde::de::DeserializeOwned>(body: axum::body::Body, what: &str) -> Result<T, ServerError> {
    let bytes = read_body(body, 64 << 10, what).await?;
    parse_json(&bytes, what)
}

fn new_secret(prefix: &str) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

fn check_name(what: &str, name: &str, max: usize) -> Result<String, ServerError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > max || name.chars().any(char::is_control) {
        return Err(ServerError::BadRequest(format!("{what} must be 1-{max} printable characters")));
    }
    Ok(name.to_string())
}

fn created<T: serde::Serialize>(body: T) -> (axum::http::StatusCode, Json<T>) {
    (axum::http::StatusCode::CREATED, Json(body))
}

async fn issue_enrollment_key(s: &AppState, ws: WorkspaceId) -> Result<(String, i64), ServerError> {
    let key = new_secret("cek_");
    let now = s.clock.now();
    let expires_at = now + i64::from(s.config.enrollment_key_ttl_hours) * lockbox::HOUR;
    s.catalog
        .add_enrollment_key(&EnrollmentKey { key_hash: guard::hash_secret(&key), workspace_id: ws, created_at: now, expires_at })
        .await?;
    Ok((key, expires_at))
}

/// Issue a token for `principal`; returns the secret (shown once) and the record.
pub async fn issue_token(s: &AppState, principal: PrincipalId, expires_in_secs: Option<u64>) -> Result<(String, ApiToken), ServerError> {
    let now = s.clock.now();
    let expires_at = match expires_in_secs {
        None => None,
        Some(0) => return Err(ServerError::BadRequest("token lifetime must be positive".into())),
        Some(secs) => Some(
            i64::try_from(secs)
                .ok()
                .and_then(|v| v.checked_mul(1_000_000))
                .and_then(|v| v.checked_add(now))
                .ok_or_else(|| ServerError::BadRequest(format!("token lifetime of {secs} seconds is too long")))?,
        ),
    };
    let secret = new_secret("cst_");
    let token = ApiToken {
        id: TokenId::new(),
        principal_id: principal,
        token_hash: guard::hash_secret(&secret),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    s.catalog.add_token(&token).await?;
    Ok((secret, token))
}

fn token_info(t: &ApiToken) -> TokenInfo {
    TokenInfo {
        id: t.id,
        principal_id: t.principal_id,
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        revoked_at: t.revoked_at.map(rfc3339),
    }
}

fn principal_info(p: &Principal) -> PrincipalInfo {
    PrincipalInfo { id: p.id, name: p.name.clone(), service_role: p.service_role, created_at: rfc3339(p.created_at) }
}

fn binding_info(b: &RoleBinding) -> RoleBindingInfo {
    RoleBindingInfo {
        workspace_id: b.workspace_id,
        principal_id: b.principal_id,
        role: b.role,
        granted_at: rfc3339(b.granted_at),
        granted_by: b.granted_by,
    }
}

fn case_info(c: &Case) -> CaseInfo {
    CaseInfo {
        id: c.id,
        workspace_id: c.workspace_id,
        title: c.title.clone(),
        state: if c.closed_at.is_some() { "closed" } else { "open" }.into(),
        opened_by: c.opened_by,
        opened_at: rfc3339(c.opened_at),
        closed_at: c.closed_at.map(rfc3339),
    }
}

fn access_info(r: &AccessRequest, case: Option<&Case>, now: i64) -> AccessRequestInfo {
    let status = match case {
        Some(c) => lockbox::status(r, c, now).as_str(),
        None => "ended",
    };
    AccessRequestInfo {
        id: r.id,
        case_id: r.case_id,
        workspace_id: r.workspace_id,
        requester: r.requester,
        reason: r.reason.clone(),
        duration_secs: u64::try_from(r.duration / 1_000_000).unwrap_or(0),
        requested_at: rfc3339(r.requested_at),
        status: status.into(),
        decided_by: r.decided_by,
        decided_at: r.decided_at.map(rfc3339),
        grant_expires_at: r.grant_expires_at.map(rfc3339),
    }
}

// ---- principals and tokens ----

async fn whoami(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<WhoAmI>, ServerError> {
    let p = auth.principal()?;
    let roles = s.catalog.bindings_of(p.id).await?;
    Ok(Json(WhoAmI { id: p.id, name: p.name.clone(), service_role: p.service_role, roles: roles.iter().map(binding_info).collect() }))
}

async fn create_principal(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let req: CreatePrincipalRequest = read_json(body, "principal request").await?;
    let name = check_name("principal name", &req.name, 128)?;
    let p = Principal { id: PrincipalId::new(), name, service_role: req.service_role, created_at: s.clock.now() };
    s.catalog.create_principal(&p).await?;
    let (secret, token) = issue_token(&s, p.id, req.token_expires_in_secs).await?;
    auth.note("principal", p.id);
    auth.note("name", &p.name);
    auth.note("service_role", p.service_role.map_or("none", |r| r.as_str()));
    auth.note("token_id", token.id);
    tracing::info!(principal = %p.id, name = %p.name, "principal created");
    Ok(created(CreatePrincipalResponse {
        id: p.id,
        name: p.name,
        service_role: p.service_role,
        token_id: token.id,
        token: secret,
        token_expires_at: token.expires_at.map(rfc3339),
    }))
}

async fn list_principals(_: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<PrincipalInfo>>, ServerError> {
    Ok(Json(s.catalog.list_principals().await?.iter().map(principal_info).collect()))
}

async fn find_principal(s: &AppState, key: &str) -> Result<Principal, ServerError> {
    let found = match key.parse::<PrincipalId>() {
        Ok(id) => s.catalog.get_principal(id).await?,
        Err(_) => s.catalog.get_principal_by_name(key.trim()).await?,
    };
    found.ok_or_else(|| ServerError::NotFound(format!("principal {key:?} not found")))
}

async fn mint_token(auth: &Authorized, s: &AppState, principal: PrincipalId, body: axum::body::Body) -> Result<CreateTokenResponse, ServerError> {
    let bytes = read_body(body, 64 << 10, "token request").await?;
    let req: CreateTokenRequest = if bytes.is_empty() { CreateTokenRequest::default() } else { parse_json(&bytes, "token request")? };
    let (secret, token) = issue_token(s, principal, req.expires_in_secs).await?;
    auth.note("principal", principal);
    auth.note("token_id", token.id);
    Ok(CreateTokenResponse { id: token.id, principal_id: principal, token: secret, expires_at: token.expires_at.map(rfc3339) })
}

async fn create_token_for(auth: Authorized, State(s): State<Arc<AppState>>, Path(principal): Path<String>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let p = find_principal(&s, &principal).await?;
    Ok(created(mint_token(&auth, &s, p.id, body).await?))
}

async fn create_own_token(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let me = auth.principal()?.id;
    Ok(created(mint_token(&auth, &s, me, body).await?))
}

async fn list_own_tokens(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<TokenInfo>>, ServerError> {
    let me = auth.principal()?.id;
    Ok(Json(s.catalog.list_tokens(me).await?.iter().map(token_info).collect()))
}

async fn revoke_token(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<TokenInfo>, ServerError> {
    let t = auth.token()?;
    let revoked = s.catalog.revoke_token(t.id, s.clock.now()).await?;
    auth.note("token_id", t.id);
    auth.note("principal", t.principal_id);
    Ok(Json(token_info(&revoked)))
}

// ---- workspaces ----

async fn create_workspace(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let req: CreateWorkspaceRequest = read_json(body, "workspace request").await?;
    let name = check_name("workspace name", &req.name, 128)?;
    if req.region != s.config.region {
        return Err(ServerError::BadRequest(format!(
            "region {:?} is not served here: this server stores data in region {:?}",
            req.region, s.config.region
        )));
    }
    let plan = s.config.retention.plan(req.plan.as_deref().unwrap_or(&s.config.retention.default_plan))?;
    let retention_days = req.retention_days.unwrap_or(plan.default_days);
    plan.check(None, retention_days).map_err(|e| ServerError::BadRequest(e.to_string()))?;
    let ws = Workspace {
        id: WorkspaceId::new(),
        name,
        region: req.region,
        retention_days,
        created_at: s.clock.now(),
        lockbox: true,
        policy: WorkspacePolicy::default(),
        plan: plan.name.clone(),
        lock: None,
    };
    s.catalog.create_workspace(&ws).await?;
    let (key, expires) = issue_enrollment_key(&s, ws.id).await?;
    auth.note("workspace", ws.id);
    auth.note("name", &ws.name);
    tracing::info!(workspace = %ws.id, name = %ws.name, "workspace created");
    Ok(created(CreateWorkspaceResponse {
        id: ws.id,
        name: ws.name,
        region: ws.region,
        retention_days,
        plan: plan.name,
        enrollment_key: key,
        enrollment_key_expires_at: rfc3339(expires),
    }))
}

async fn list_workspaces(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<WorkspaceInfo>>, ServerError> {
    let p = auth.principal()?;
    let all = s.catalog.list_workspaces().await?;
    if p.service_role == Some(custos_model::ServiceRole::Admin) {
        return Ok(Json(all.iter().map(info).collect()));
    }
    let mine: std::collections::HashSet<WorkspaceId> = s.catalog.bindings_of(p.id).await?.iter().map(|b| b.workspace_id).collect();
    Ok(Json(all.iter().filter(|w| mine.contains(&w.id)).map(info).collect()))
}

/// Delete the workspace (owners, service admins): keys first, then bytes.
async fn delete_workspace(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<WorkspaceDeletionReport>, ServerError> {
    let req: DeleteWorkspaceRequest = read_json(body, "delete request").await?;
    let ws = auth.workspace()?;
    if req.confirm != ws.name {
        return Err(ServerError::BadRequest(format!(
            "confirm must be the workspace's name ({:?}) to delete workspace {}",
            ws.name, ws.id
        )));
    }
    let r = crate::shred::delete_workspace(&s, ws.id).await?;
    auth.note("segments", r.segments_deleted);
    auth.note("keys_destroyed_at", &r.keys_destroyed_at);
    Ok(Json(r))
}

async fn show_workspace(auth: Authorized) -> Result<Json<WorkspaceInfo>, ServerError> {
    Ok(Json(info(auth.workspace()?)))
}

async fn set_lockbox(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<WorkspaceInfo>, ServerError> {
    let req: LockboxRequest = read_json(body, "lockbox request").await?;
    let ws = auth.workspace()?;
    s.catalog.set_lockbox(ws.id, req.enabled).await?;
    auth.note("lockbox", req.enabled);
    let mut updated = ws.clone();
    updated.lockbox = req.enabled;
    Ok(Json(info(&updated)))
}

/// Change what the workspace stores. Applies to every batch received after
/// the answer; batches already acknowledged keep the decision made when they
/// arrived (see `ingest`).
async fn set_policy(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<WorkspacePolicyInfo>, ServerError> {
    let req: WorkspacePolicyRequest = read_json(body, "policy request").await?;
    let ws = auth.workspace()?;
    let current = s.catalog.workspace_policy(ws.id).await?;
    let max_level = req.max_level.unwrap_or(current.max_level);
    let policy = match req.categories {
        None => WorkspacePolicy { max_level, categories: current.categories },
        Some(list) if list.is_empty() => {
            return Err(ServerError::BadRequest(
                "categories must name at least one category (security, settings, inventory, health, usage, logs, performance, crash)".into(),
            ))
        }
        Some(list) => WorkspacePolicy::with_categories(max_level, list),
    };
    s.catalog.set_workspace_policy(ws.id, &policy).await?;
    let categories: Vec<&str> = policy.categories().iter().map(|c| c.name()).collect();
    auth.note("max_level", u8::from(policy.max_level));
    auth.note("categories", categories.join(","));
    tracing::info!(workspace = %ws.id, max_level = %policy.max_level, categories = %categories.join(","), "workspace policy changed");
    Ok(Json(policy_info(ws.id, &policy)))
}

/// Events refused at ingest, per agent, reason and category.
async fn list_refusals(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<RefusalInfo>>, ServerError> {
    let ws = auth.workspace()?;
    // Counts are committed with their batches: make everything acknowledged visible.
    s.ingest.flush().await?;
    let hosts: std::collections::HashMap<AgentId, String> =
        s.catalog.list_agents(ws.id).await?.into_iter().map(|a| (a.id, a.hostname)).collect();
    let out: Vec<RefusalInfo> = s
        .catalog
        .list_refusals(ws.id)
        .await?
        .into_iter()
        .map(|r| RefusalInfo {
            agent_id: r.agent_id,
            hostname: hosts.get(&r.agent_id).cloned(),
            reason: r.reason,
            category: r.category,
            events: r.events,
            first_refused_at: rfc3339(r.first_at),
            last_refused_at: rfc3339(r.last_at),
        })
        .collect();
    auth.note("rows", out.len());
    Ok(Json(out))
}

fn redaction_policy_info(ws: WorkspaceId, p: &custos_catalog::RedactionPolicy) -> RedactionPolicyInfo {
    RedactionPolicyInfo {
        workspace_id: ws,
        source: if p.toml.is_some() { "custom" } else { "default" }.into(),
        policy: p.toml.clone(),
        revision: p.revision,
        updated_at: p.updated_at.map(rfc3339),
        updated_by: p.updated_by,
    }
}

/// The workspace's redaction policy (owners, auditors, service admins: a
/// policy may name the customer's own keywords, so it is not shown to
/// every reader).
async fn show_redaction_policy(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<RedactionPolicyInfo>, ServerError> {
    let ws = auth.workspace()?;
    let p = s.catalog.redaction_policy(ws.id).await?;
    auth.note("revision", p.revision);
    Ok(Json(redaction_policy_info(ws.id, &p)))
}

/// Replace the workspace's redaction policy (owners). The text is validated
/// by the engine first: a policy it refuses is answered 400 with its
/// message and nothing changes. Applies to every batch received after the
/// answer (see `redaction`).
async fn set_redaction_policy(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<RedactionPolicyInfo>, ServerError> {
    let req: RedactionPolicyRequest = read_json(body, "redaction policy request").await?;
    let ws = auth.workspace()?;
    if let Some(text) = &req.policy {
        crate::redaction::validate(text).map_err(ServerError::BadRequest)?;
    }
    let by = auth.principal()?.id;
    let stored = s.catalog.set_redaction_policy(ws.id, req.policy.as_deref(), by, s.clock.now()).await?;
    s.ingest.backstop().invalidate(ws.id);
    // The text may hold the customer's own keywords: the audit record keeps
    // its HMAC, which proves which policy was set without showing it.
    auth.note("revision", stored.revision);
    match &stored.toml {
        Some(text) => auth.note_hmac("policy", text),
        None => auth.note("policy", "default"),
    }
    tracing::info!(workspace = %ws.id, revision = stored.revision, custom = stored.toml.is_some(), "workspace redaction policy changed");
    Ok(Json(redaction_policy_info(ws.id, &stored)))
}


/// The workspace's keys: versions, states, segments awaiting a rewrap.
async fn show_keys(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<KeyStatus>, ServerError> {
    let ws = auth.workspace()?;
    Ok(Json(crate::keys::status(&s, ws.id).await?))
}

/// Rotate the workspace key (owners): new data at once, older segments
/// rewrapped in the background.
async fn rotate_keys(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<KeyStatus>, ServerError> {
    let ws = auth.workspace()?;
    let st = crate::keys::rotate(&s, ws.id).await?;
    auth.note("version", st.versions.last().map_or(0, |v| v.version));
    Ok(Json(st))
}

/// Revoke the workspace's keys (owners): its data is unreadable at once.
async fn revoke_keys(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<KeyStatus>, ServerError> {
    let ws = auth.workspace()?;
    Ok(Json(crate::keys::set_revoked(&s, ws.id, true).await?))
}

/// Restore revoked keys (owners).
async fn restore_keys(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<KeyStatus>, ServerError> {
    let ws = auth.workspace()?;
    Ok(Json(crate::keys::set_revoked(&s, ws.id, false).await?))
}

/// The periods in force, the plan, the lock and pending reductions.
async fn show_retention(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<RetentionInfo>, ServerError> {
    Ok(Json(crate::retention::status(&s, auth.workspace()?).await?))
}

fn table_arg(t: Option<&str>) -> Result<Option<custos_model::TableName>, ServerError> {
    t.map(|t| custos_model::TableName::new(t).map_err(|e| ServerError::BadRequest(format!("table {t:?}: {e}"))))
        .transpose()
}

/// Change the default or one table's period (owners).
async fn set_retention(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let req: RetentionRequest = read_json(body, "retention request").await?;
    let ws = auth.workspace()?;
    let table = table_arg(req.table.as_deref())?;
    let by = auth.principal().ok().map(|p| p.id);
    let c = crate::retention::change(&s, ws, table, req.days, req.now, by).await?;
    auth.note("table", c.table.as_ref().map_or("default", |t| t.as_str()));
    auth.note("from_days", c.from_days);
    auth.note("to_days", c.to_days);
    auth.note("state", c.state.as_str());
    Ok(Json(crate::retention::change_info(&c)))
}

/// Cancel a pending reduction (owners).
async fn cancel_retention(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<RetentionChangeInfo>, ServerError> {
    let body = read_body(body, 64 << 10, "retention cancel request").await?;
    let req: RetentionCancelRequest = if body.is_empty() { Default::default() } else { parse_json(&body, "retention cancel request")? };
    let ws = auth.workspace()?;
    let table = table_arg(req.table.as_deref())?;
    let c = s.catalog.cancel_retention_change(ws.id, table.as_ref(), s.clock.now()).await?;
    auth.note("change", c.id);
    Ok(Json(crate::retention::change_info(&c)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeletionQuery {
    limit: Option<u32>,
}

/// The workspace's deleted segments, newest first.
async fn list_deletions(auth: Authorized, State(s): State<Arc<AppState>>, Query(q): Query<DeletionQuery>) -> Result<Json<Vec<DeletionInfo>>, ServerError> {
    let ws = auth.workspace()?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    Ok(Json(s.catalog.list_deletions(ws.id, limit).await?.iter().map(crate::retention::deletion_info).collect()))
}

/// Lock the workspace (owners): nothing of it is deleted until unlocked.
async fn lock_workspace(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<WorkspaceInfo>, ServerError> {
    let req: LockRequest = read_json(body, "lock request").await?;
    let ws = auth.workspace()?;
    let by = auth.principal().ok().map(|p| p.id);
    let l = crate::retention::lock(&s, ws.id, &req.reason, by).await?;
    auth.note("reason", &l.reason);
    let mut updated = ws.clone();
    updated.lock = Some(l);
    Ok(Json(info(&updated)))
}

/// Unlock the workspace (owners).
async fn unlock_workspace(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<WorkspaceInfo>, ServerError> {
    let ws = auth.workspace()?;
    let was = s.catalog.unlock_workspace(ws.id).await?;
    if let Some(l) = &was {
        auth.note("reason", &l.reason);
        tracing::warn!(workspace = %ws.id, reason = %l.reason, "workspace unlocked");
    }
    let mut updated = ws.clone();
    updated.lock = None;
    Ok(Json(info(&updated)))
}

/// Accept a purge, or count it (`dry_run`) (owners).
async fn create_purge(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<axum::response::Response, ServerError> {
    let req: PurgeRequest = read_json(body, "purge request").await?;
    let ws = auth.workspace()?;
    auth.note_hmac("where", &req.predicate);
    // Everything acknowledged is in segments: counted by a dry run, covered
    // by the job.
    s.ingest.flush().await?;
    if req.dry_run {
        let r = crate::purge::dry_run(&s, ws.id, &req.tables, &req.predicate).await?;
        auth.note("dry_run", true);
        auth.note("rows", r.rows);
        return Ok(Json(r).into_response());
    }
    let by = auth.principal().ok().map(|p| p.id);
    let job = crate::purge::create(&s, ws.id, &req.tables, &req.predicate, req.now, by).await?;
    auth.note("job", job.id);
    Ok(created(crate::purge::info(&job)).into_response())
}

/// A workspace's purge jobs, newest first.
async fn list_purges(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<PurgeInfo>>, ServerError> {
    let ws = auth.workspace()?;
    Ok(Json(s.catalog.list_purges(ws.id).await?.iter().map(crate::purge::info).collect()))
}

/// One purge job, with its receipt once completed.
async fn show_purge(auth: Authorized) -> Result<Json<PurgeInfo>, ServerError> {
    Ok(Json(crate::purge::info(auth.purge()?)))
}

/// Run a failed purge again (owners), at once.
async fn retry_purge(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<PurgeInfo>, ServerError> {
    let job = auth.purge()?;
    let j = s.catalog.retry_purge(job.id, s.clock.now()).await?;
    auth.note("job", j.id);
    s.purge_kick.notify_one();
    Ok(Json(crate::purge::info(&j)))
}

/// Cancel a pending purge (owners): its rows are visible again.
async fn cancel_purge(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<PurgeInfo>, ServerError> {
    let job = auth.purge()?;
    let j = s.catalog.cancel_purge(job.id, s.clock.now()).await?;
    auth.note("job", j.id);
    Ok(Json(crate::purge::info(&j)))
}

/// Stage an export of one table (owners): segment files and a signed
/// manifest.
async fn create_export(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let req: ExportRequest = read_json(body, "export request").await?;
    let ws = auth.workspace()?;
    let table = table_arg(Some(&req.table))?.ok_or_else(|| ServerError::BadRequest("table is required".into()))?;
    s.ingest.flush().await?;
    let m = crate::export::create(&s, ws, &table).await?;
    auth.note("export", &m.manifest.export);
    auth.note("table", table.as_str());
    auth.note("rows", m.manifest.rows);
    Ok(created(m))
}

/// One file of a staged export.
async fn export_file(auth: Authorized, State(s): State<Arc<AppState>>, Path((_, export, name)): Path<(String, String, String)>) -> Result<axum::response::Response, ServerError> {
    let ws = auth.workspace()?;
    if !crate::export::valid_file_name(&name) {
        return Err(ServerError::NotFound(format!("export file {name:?} not found")));
    }
    let path = crate::export::staged_dir(&s, ws.id, &export)?.join(&name);
    let bytes = tokio::fs::read(&path).await.map_err(|_| ServerError::NotFound(format!("export {export} has no file {name:?} (staged exports last a day)")))?;
    auth.note("file", &name);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Run the retention sweeper now (service admins).
async fn sweep_now(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<SweepReport>, ServerError> {
    // Everything acknowledged is in segments before the pass decides.
    s.ingest.flush().await?;
    let r = crate::retention::sweep(&s).await?;
    auth.note("segments", r.segments_deleted);
    auth.note("rows", r.rows_deleted);
    Ok(Json(r))
}

/// What the redaction backstop removed, per table, kind and entity.
async fn list_redactions(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<RedactionCountInfo>>, ServerError> {
    let ws = auth.workspace()?;
    // Counts are committed with their batches: make everything acknowledged visible.
    s.ingest.flush().await?;
    let out: Vec<RedactionCountInfo> = s
        .catalog
        .list_redactions(ws.id)
        .await?
        .into_iter()
        .map(|r| RedactionCountInfo {
            table: r.table.to_string(),
            kind: r.kind,
            entity: (!r.entity.is_empty()).then_some(r.entity),
            count: r.count,
            first_at: rfc3339(r.first_at),
            last_at: rfc3339(r.last_at),
        })
        .collect();
    auth.note("rows", out.len());
    Ok(Json(out))
}

async fn new_enrollment_key(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<impl IntoResponse, ServerError> {
    let ws = auth.workspace()?;
    let (key, expires) = issue_enrollment_key(&s, ws.id).await?;
    auth.note_hmac("enrollment_key", &key);
    Ok(created(EnrollmentKeyResponse { workspace_id: ws.id, enrollment_key: key, expires_at: rfc3339(expires) }))
}

/// Delete a table's data (owners): every segment, recorded, then its
/// objects. Refused while the workspace is locked.
async fn delete_table(auth: Authorized, State(s): State<Arc<AppState>>, Path((_, table)): Path<(String, String)>, body: axum::body::Body) -> Result<Json<TableDeletionReport>, ServerError> {
    let req: DeleteTableRequest = read_json(body, "delete request").await?;
    let ws = auth.workspace()?;
    let name = table_arg(Some(&table))?.ok_or_else(|| ServerError::BadRequest("table is required".into()))?;
    if req.confirm != name.as_str() {
        return Err(ServerError::BadRequest(format!("confirm must be the table's name ({name}) to delete it")));
    }
    // What was acknowledged goes too.
    s.ingest.flush().await?;
    let ids: Vec<_> = s.catalog.list_segments(ws.id, &name, None).await?.into_iter().map(|x| x.id).collect();
    let dels = s.catalog.delete_segments(ws.id, &ids, custos_catalog::DeletionReason::Table, s.clock.now()).await?;
    crate::retention::remove_objects(&s).await?;
    let r = TableDeletionReport {
        workspace_id: ws.id,
        table: name.as_str().into(),
        segments_deleted: dels.len() as u64,
        rows_deleted: dels.iter().map(|d| d.rows).sum(),
        bytes_deleted: dels.iter().map(|d| d.bytes).sum(),
    };
    auth.note("table", name.as_str());
    auth.note("rows", r.rows_deleted);
    tracing::warn!(workspace = %ws.id, table = %name, rows = r.rows_deleted, "table deleted");
    Ok(Json(r))
}

async fn list_tables(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<TableInfo>>, ServerError> {
    let ws = auth.workspace()?;
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
    auth.note("tables", out.len());
    Ok(Json(out))
}

async fn query(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<QueryResponse>, ServerError> {
    let ws = auth.workspace()?;
    let body = read_body(body, 1 << 20, "query").await?;
    let req: QueryRequest = parse_json(&body, "query request")?;
    auth.note_hmac("sql", &req.sql);
    // Read-your-writes: everything acknowledged so far becomes queryable.
    s.ingest.flush().await?;
    let incidents = crate::query::Incidents::default();
    let resp = crate::query::run_with_incidents(
        s.catalog.as_ref(),
        s.storage.clone(),
        s.keys.clone(),
        ws.id,
        &req.sql,
        s.config.query.max_rows,
        std::time::Duration::from_secs(s.config.query.timeout_secs),
        &incidents,
        &crate::retention::visibility(&s, ws, s.clock.now()).await?,
    )
    .await;
    let found: Vec<crate::query::Incident> = incidents.lock().map(|v| v.clone()).unwrap_or_default();
    for i in found {
        crate::query::record_data_loss(&s, ws.id, &i).await;
    }
    let resp = resp?;
    auth.note("rows", resp.rows.len());
    tracing::info!(workspace = %ws.id, rows = resp.rows.len(), elapsed_ms = resp.elapsed_ms, role = auth.role(), "query");
    Ok(Json(resp))
}

// ---- roles ----

async fn list_roles(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<RoleBindingInfo>>, ServerError> {
    let ws = auth.workspace()?;
    Ok(Json(s.catalog.list_role_bindings(ws.id).await?.iter().map(binding_info).collect()))
}

async fn grant_role(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let req: GrantRoleRequest = read_json(body, "role grant").await?;
    let ws = auth.workspace()?;
    let target = find_principal(&s, &req.principal).await?;
    let binding = RoleBinding {
        workspace_id: ws.id,
        principal_id: target.id,
        role: req.role,
        granted_at: s.clock.now(),
        granted_by: auth.principal()?.id,
    };
    let new = s.catalog.grant_role(&binding).await?;
    auth.note("principal", target.id);
    auth.note("role", req.role);
    auth.note("new", new);
    Ok((if new { axum::http::StatusCode::CREATED } else { axum::http::StatusCode::OK }, Json(binding_info(&binding))))
}

async fn revoke_role(auth: Authorized, State(s): State<Arc<AppState>>, Path((_, principal, role)): Path<(String, String, String)>) -> Result<impl IntoResponse, ServerError> {
    let ws = auth.workspace()?;
    let role: WorkspaceRole = role.parse().map_err(|e: custos_model::RoleParseError| ServerError::BadRequest(e.to_string()))?;
    let target = find_principal(&s, &principal).await?;
    let removed = s.catalog.revoke_role(ws.id, target.id, role).await?;
    auth.note("principal", target.id);
    auth.note("role", role);
    if !removed {
        return Err(ServerError::NotFound(format!("principal {} has no {role} role in workspace {}", target.id, ws.id)));
    }
    Ok(Json(serde_json::json!({"workspace_id": ws.id, "principal_id": target.id, "role": role, "revoked": true})))
}

// ---- cases and the lockbox ----

async fn open_case(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let req: OpenCaseRequest = read_json(body, "case").await?;
    let title = check_name("case title", &req.title, 256)?;
    let ws = auth.workspace()?;
    let case = Case {
        id: custos_model::CaseId::new(),
        workspace_id: ws.id,
        title,
        opened_by: auth.principal()?.id,
        opened_at: s.clock.now(),
        closed_at: None,
        closed_by: None,
    };
    s.catalog.create_case(&case).await?;
    auth.note("case", case.id);
    Ok(created(case_info(&case)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseListQuery {
    workspace: Option<String>,
}

async fn list_cases(auth: Authorized, State(s): State<Arc<AppState>>, Query(q): Query<CaseListQuery>) -> Result<Json<Vec<CaseInfo>>, ServerError> {
    let p = auth.principal()?;
    let filter = match q.workspace.as_deref() {
        Some(w) => Some(w.parse::<WorkspaceId>().map_err(|e| ServerError::BadRequest(e.to_string()))?),
        None => None,
    };
    let cases = s.catalog.list_cases(filter).await?;
    if p.service_role.is_some() {
        // Admins and support see every case (cases hold no workspace data).
        return Ok(Json(cases.iter().map(case_info).collect()));
    }
    let bindings = s.catalog.bindings_of(p.id).await?;
    let visible = |ws: WorkspaceId| {
        bindings.iter().any(|b| b.workspace_id == ws && crate::authz::role_allows(b.role, Perm::CaseView))
    };
    Ok(Json(cases.iter().filter(|c| visible(c.workspace_id)).map(case_info).collect()))
}

async fn show_case(auth: Authorized) -> Result<Json<CaseInfo>, ServerError> {
    Ok(Json(case_info(auth.case()?)))
}

async fn close_case(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<CaseInfo>, ServerError> {
    let case = auth.case()?;
    let closed = s.catalog.close_case(case.id, auth.principal()?.id, s.clock.now()).await?;
    auth.note("case", case.id);
    Ok(Json(case_info(&closed)))
}

async fn request_access(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let req: AccessRequestRequest = read_json(body, "access request").await?;
    let case = auth.case()?;
    let ws = auth.workspace()?;
    if case.closed_at.is_some() {
        return Err(ServerError::Conflict(format!("case {} is closed; access can only be requested on an open case", case.id)));
    }
    let reason = check_name("reason", &req.reason, 1024)?;
    let duration = lockbox::grant_duration(req.duration_secs).map_err(|e| ServerError::BadRequest(e.to_string()))?;
    let now = s.clock.now();
    let mut r = AccessRequest {
        id: AccessRequestId::new(),
        case_id: case.id,
        workspace_id: ws.id,
        requester: auth.principal()?.id,
        reason,
        duration,
        requested_at: now,
        state: AccessState::Pending,
        decided_at: None,
        decided_by: None,
        grant_expires_at: None,
    };
    s.catalog.create_access_request(&r).await?;
    auth.note("access_request", r.id);
    auth.note("case", case.id);
    auth.note("duration_secs", duration / 1_000_000);
    if !ws.lockbox {
        // Lockbox off: the request is approved at once. Still case-scoped,
        // read-only, time-bound and audited.
        r = s
            .catalog
            .decide_access_request(r.id, AccessState::Approved, r.requester, now, Some(lockbox::grant_end(now, duration)))
            .await?;
        auth.note("auto_approved", "lockbox off");
    }
    Ok(created(access_info(&r, Some(case), now)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessListQuery {
    all: Option<bool>,
}

async fn list_access_requests(auth: Authorized, State(s): State<Arc<AppState>>, Query(q): Query<AccessListQuery>) -> Result<Json<Vec<AccessRequestInfo>>, ServerError> {
    let ws = auth.workspace()?;
    let now = s.clock.now();
    let mut out = Vec::new();
    for r in s.catalog.list_access_requests(&AccessFilter { workspace: Some(ws.id), ..Default::default() }).await? {
        let case = s.catalog.get_case(r.case_id).await?;
        let i = access_info(&r, case.as_ref(), now);
        if q.all.unwrap_or(true) || i.status == "pending" || i.status == "active" {
            out.push(i);
        }
    }
    Ok(Json(out))
}

async fn show_access_request(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<AccessRequestInfo>, ServerError> {
    Ok(Json(access_info(auth.access_request()?, auth.case().ok(), s.clock.now())))
}

async fn decide(auth: Authorized, s: &AppState, approve: bool) -> Result<Json<AccessRequestInfo>, ServerError> {
    let r = auth.access_request()?;
    let case = auth.case()?;
    let now = s.clock.now();
    auth.note("access_request", r.id);
    auth.note("case", r.case_id);
    auth.note("requester", r.requester);
    let status = lockbox::status(r, case, now);
    if status != lockbox::Status::Pending {
        return Err(ServerError::Conflict(format!("access request {} is {}, not pending", r.id, status.as_str())));
    }
    if approve && case.closed_at.is_some() {
        return Err(ServerError::Conflict(format!("case {} is closed", case.id)));
    }
    let (state, end) = if approve {
        (AccessState::Approved, Some(lockbox::grant_end(now, r.duration)))
    } else {
        (AccessState::Denied, None)
    };
    let decided = s.catalog.decide_access_request(r.id, state, auth.principal()?.id, now, end).await?;
    auth.note("decision", state);
    Ok(Json(access_info(&decided, Some(case), now)))
}

async fn approve_access(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<AccessRequestInfo>, ServerError> {
    decide(auth, &s, true).await
}

async fn deny_access(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<AccessRequestInfo>, ServerError> {
    decide(auth, &s, false).await
}

// ---- audit ----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// RFC 3339 time or microseconds since the epoch.
    since: Option<String>,
    limit: Option<usize>,
}

fn parse_time(s: &str) -> Result<i64, ServerError> {
    if let Ok(v) = s.parse::<i64>() {
        return Ok(v);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .map_err(|_| ServerError::BadRequest(format!("since: {s:?} is not an RFC 3339 time or microseconds since the epoch")))
}

async fn read_audit(auth: Authorized, State(s): State<Arc<AppState>>, Query(q): Query<AuditQuery>) -> Result<Json<Vec<AuditEntry>>, ServerError> {
    let ws = auth.workspace()?.id.to_string();
    let since = q.since.as_deref().map(parse_time).transpose()?;
    let limit = q.limit.unwrap_or(10_000).clamp(1, 100_000);
    let dir = s.audit_dir.clone();
    let filter = custos_audit::RecordFilter { workspace: Some(ws), since, limit: Some(limit), ..Default::default() };
    let records = tokio::task::spawn_blocking(move || custos_audit::AuditReader::open(&dir)?.list(&filter))
        .await
        .map_err(|e| ServerError::Internal(format!("audit reader task failed: {e}")))?
        .map_err(|e| ServerError::Unavailable(format!("audit log: {e}")))?;
    auth.note("records", records.len());
    Ok(Json(
        records
            .into_iter()
            .map(|r| AuditEntry {
                seq: r.seq,
                time: rfc3339(r.record.time),
                principal: r.record.principal,
                role: r.record.role,
                action: r.record.action,
                target: r.record.target,
                workspace: r.record.workspace,
                outcome: r.record.outcome,
                status: r.record.status,
                request_id: r.record.request_id,
                client: r.record.client,
                grant: r.record.grant,
                details: r.record.details,
                hash: hex::encode(r.hash),
            })
            .collect(),
    ))
}

// ---- agents ----

async fn enroll(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<impl IntoResponse, ServerError> {
    let body = read_body(body, 64 << 10, "enrollment request").await?;
    let req: EnrollRequest = parse_json(&body, "enrollment request")?;
    auth.note_hmac("enrollment_key", req.enrollment_key.trim());
    // Check the CSR before spending the single-use key on it.
    pki::check_csr(&req.csr_pem)?;
    let now = s.clock.now();
    let ws = s.catalog.consume_enrollment_key(&guard::hash_secret(&req.enrollment_key), now).await?;
    auth.note("workspace", ws);
    let agent = AgentId::new();
    let issued = s.ca.sign_agent_csr(&req.csr_pem, agent, ws, s.config.agent_cert_validity())?;
    let hostname: String = req.hostname.chars().filter(|c| !c.is_control()).take(255).collect();
    s.catalog
        .add_agent(&Agent {
            id: agent,
            workspace_id: ws,
            hostname,
            cert_sha256: pki::der_sha256(&issued.der),
            cert_not_after: pki::micros(issued.not_after),
            enrolled_at: now,
            revoked_at: None,
            prev_cert_sha256: None,
            prev_cert_not_after: None,
        })
        .await?;
    auth.note("agent", agent);
    tracing::info!(agent = %agent, workspace = %ws, "agent enrolled");
    Ok(created(EnrollResponse {
        agent_id: agent,
        workspace_id: ws,
        certificate_pem: issued.pem,
        ca_pem: s.ca.cert_pem.clone(),
        not_after: pki::rfc3339(issued.not_after),
    }))
}

/// `GET /v1/agent/identity`: the pins to trust and the presented
/// certificate's validity. Cheap (a `stat` of two files, see
/// [`pki::ServerPins`]), so agents may ask often.
async fn agent_identity(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<AgentIdentityResponse>, ServerError> {
    let (agent, workspace) = auth.agent()?;
    let cert = auth.agent_cert()?;
    let pins = s.pins.pins();
    auth.note("pins", pins.len());
    Ok(Json(AgentIdentityResponse {
        agent_id: agent,
        workspace_id: workspace,
        pins,
        cert_not_before: pki::rfc3339(cert.not_before),
        cert_not_after: pki::rfc3339(cert.not_after),
        renew_after: pki::rfc3339(pki::renew_after(cert.not_before, cert.not_after)),
    }))
}

/// `POST /v1/agent/renew`: sign a CSR for a new key pair of the calling
/// agent with the configured validity. The catalog then accepts the new
/// certificate and keeps accepting the presented one until it expires.
async fn renew_agent_cert(auth: Authorized, State(s): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<RenewResponse>, ServerError> {
    use custos_catalog::CatalogError as C;
    let (agent, workspace) = auth.agent()?;
    let presented = auth.agent_cert()?.clone();
    let req: RenewRequest = read_json(body, "renewal request").await?;
    if pki::csr_key_pin(&req.csr_pem)? == presented.key_pin {
        return Err(ServerError::BadRequest("a renewal needs a new key pair: the CSR is for the key of the current certificate".into()));
    }
    let issued = s.ca.sign_agent_csr(&req.csr_pem, agent, workspace, s.config.agent_cert_validity())?;
    let new_sha256 = pki::der_sha256(&issued.der);
    s.catalog
        .renew_agent_cert(agent, &presented.sha256, &new_sha256, pki::micros(issued.not_after), s.clock.now())
        .await
        .map_err(|e| match e {
            C::AgentRevoked(_) => ServerError::Unauthorized(format!("agent {agent} was revoked: it cannot renew its certificate")),
            C::AgentNotFound(_) => ServerError::Unauthorized(format!("agent {agent} is not enrolled")),
            C::AgentCertificateMismatch(_) => {
                ServerError::Unauthorized("client certificate does not match the enrolled agent".into())
            }
            other => other.into(),
        })?;
    auth.note("agent", agent);
    auth.note("cert_sha256", &new_sha256);
    auth.note("not_after", pki::rfc3339(issued.not_after));
    tracing::info!(agent = %agent, workspace = %workspace, not_after = %pki::rfc3339(issued.not_after), "agent certificate renewed");
    Ok(Json(RenewResponse {
        certificate_pem: issued.pem,
        not_before: pki::rfc3339(issued.not_before),
        not_after: pki::rfc3339(issued.not_after),
        renew_after: pki::rfc3339(pki::renew_after(issued.not_before, issued.not_after)),
    }))
}

fn agent_info(a: &Agent, now: i64) -> AgentInfo {
    let status = if a.revoked_at.is_some() {
        "revoked"
    } else if a.cert_not_after <= now {
        "expired"
    } else {
        "active"
    };
    AgentInfo {
        id: a.id,
        hostname: a.hostname.clone(),
        status: status.into(),
        enrolled_at: rfc3339(a.enrolled_at),
        cert_not_after: rfc3339(a.cert_not_after),
        prev_cert_not_after: a.prev_cert_not_after.filter(|t| *t > now).map(rfc3339),
        revoked_at: a.revoked_at.map(rfc3339),
    }
}

async fn list_agents(auth: Authorized, State(s): State<Arc<AppState>>) -> Result<Json<Vec<AgentInfo>>, ServerError> {
    let ws = auth.workspace()?;
    let now = s.clock.now();
    let out: Vec<AgentInfo> = s.catalog.list_agents(ws.id).await?.iter().map(|a| agent_info(a, now)).collect();
    auth.note("agents", out.len());
    Ok(Json(out))
}

/// Revoke an agent of the path's workspace: refused at once on every agent
/// route. An agent of another workspace is answered as absent (404).
async fn revoke_agent(auth: Authorized, State(s): State<Arc<AppState>>, Path((_, agent)): Path<(String, String)>) -> Result<Json<AgentInfo>, ServerError> {
    let ws = auth.workspace()?;
    let not_found = || ServerError::NotFound(format!("agent {agent} not found in workspace {}", ws.id));
    let id: AgentId = agent.parse().map_err(|_| not_found())?;
    auth.note("agent", id);
    let now = s.clock.now();
    let revoked = match s.catalog.revoke_agent(ws.id, id, now).await {
        Ok(a) => a,
        Err(custos_catalog::CatalogError::AgentNotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(agent = %id, workspace = %ws.id, "agent revoked");
    Ok(Json(agent_info(&revoked, now)))
}

/// `POST /v1/ingest`: one batch frame from an enrolled agent. Refused with
/// 413 above the frame limit; with 429 and `Retry-After` when the server is
/// overloaded (`ingest::Ingest::admit`), before anything of the batch is
/// decoded or stored; otherwise acknowledged once durable.
async fn ingest(auth: Authorized, State(s): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Body) -> Result<axum::response::Response, ServerError> {
    let (agent, workspace) = auth.agent()?;
    crate::keys::check_writable(&s, workspace)?;
    let limit = s.ingest.limits().max_frame_bytes;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        if len > limit {
            return Err(ServerError::PayloadTooLarge(format!("batch of {len} bytes exceeds the limit of {limit} bytes")));
        }
    }
    // Held until the answer is ready: the batch counts as being accepted.
    let _admission = match s.ingest.admit(&crate::ingest::OverloadLimits::from(&s.config.ingest)) {
        Ok(a) => a,
        Err(over) => {
            auth.note("overloaded", over.reason.as_str());
            auth.note("retry_after_secs", over.retry_after_secs);
            tracing::warn!(agent = %agent, workspace = %workspace, reason = over.reason.as_str(), retry_after_secs = over.retry_after_secs, "batch refused: server overloaded");
            discard_body(body, limit).await;
            return Ok(overloaded(&over));
        }
    };
    let body = read_body(body, limit, "batch").await?;
    auth.note("bytes", body.len());
    let ack = s.ingest.accept(workspace, agent, body).await?;
    auth.note("batch", ack.batch_id);
    auth.note("events", ack.accepted);
    auth.note("refused", ack.refused);
    auth.note("duplicate", ack.duplicate);
    tracing::debug!(agent = %agent, workspace = %workspace, batch = %ack.batch_id, events = ack.accepted, refused = ack.refused, duplicate = ack.duplicate, "batch acknowledged");
    Ok(Json(ack).into_response())
}

/// 429 Too Many Requests with `Retry-After` (seconds) and the JSON error body.
fn overloaded(over: &crate::ingest::Overloaded) -> axum::response::Response {
    let body = ErrorBody { code: "overloaded".into(), error: over.to_string() };
    (
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, over.retry_after_secs.to_string())],
        Json(body),
    )
        .into_response()
}

/// Read and drop a refused request's body (at most `limit` bytes), so the
/// client reads the answer instead of a connection reset; nothing is kept.
async fn discard_body(body: axum::body::Body, limit: usize) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            break;
        }
    }
}
