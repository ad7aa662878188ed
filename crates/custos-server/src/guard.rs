//! The one gate every route passes: authenticate, resolve the target,
//! check the route's declared permission, write the audit record, and only
//! then let the handler's answer out.
//!
//! A route is a [`RouteSpec`] (method, path, audit action, [`Access`],
//! whether it changes state) plus its handler; `api::router` builds the
//! router from that one table, wrapping every handler in [`guard`]. There
//! is no other way to add a route, and handlers can only learn who is
//! calling through [`Authorized`], which only the guard creates, so a route
//! without a permission check cannot serve anything (it fails closed with
//! 500).
//!
//! Audit, fail closed:
//! - a route that changes state writes a `started` record before the
//!   handler runs; if it cannot be made durable the request is refused with
//!   503 and nothing changes;
//! - every audited request writes its outcome record after the handler and
//!   before the response leaves; if that fails, the response is replaced by
//!   503 (a read's data never leaves unaudited).
//!
//! Refusals (401, 403, 404 from the permission check) are audited too.
//! `GET /v1/health` is the only unaudited route: it reveals no data.

use crate::api::ConnInfo;
use crate::authz::{self, Decision, Perm, Subject};
use crate::{lockbox, pki, AppState, ServerError};
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use custos_audit::AuditRecord;
use custos_catalog::{AccessFilter, AccessRequest, AccessState, ApiToken, Case, Principal, Workspace};
use custos_model::{AccessRequestId, AgentId, ServiceRole, WorkspaceId};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// How a route authenticates its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nobody needs to be known; the route reveals no data and is not audited.
    Public,
    /// The handler checks a single-use enrollment key in the body.
    EnrollmentKey,
    /// An enrolled agent's client certificate; the workspace comes from it.
    Agent,
    /// A principal's bearer token, holding this permission on the route's
    /// target (the `{ws}`, `{case}`, `{req}`, `{job}` or `{token}` in the path).
    Principal(Perm),
}

/// One route: what it is, who may call it, how it is audited.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: Method,
    /// Path pattern (axum syntax).
    pub path: &'static str,
    /// Audit action name.
    pub action: &'static str,
    /// Authentication and permission.
    pub access: Access,
    /// Whether the route changes state (never allowed through a lockbox
    /// grant; audited before and after).
    pub mutates: bool,
}

/// What a route's target is, from its path parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Nothing in particular.
    Service,
    /// `{ws}`: a workspace.
    Workspace,
    /// `{case}`: a case (and its workspace).
    Case,
    /// `{req}`: an access request (and its workspace).
    AccessRequest,
    /// `{token}`: a token (its owner or an admin).
    Token,
    /// `{job}`: a purge job (and its workspace).
    Job,
}

impl RouteSpec {
    /// The target kind, from the path's parameters.
    pub fn scope(&self) -> Scope {
        if self.path.contains("{ws}") {
            Scope::Workspace
        } else if self.path.contains("{case}") {
            Scope::Case
        } else if self.path.contains("{req}") {
            Scope::AccessRequest
        } else if self.path.contains("{token}") {
            Scope::Token
        } else if self.path.contains("{job}") {
            Scope::Job
        } else {
            Scope::Service
        }
    }
}

/// Who is calling.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Not authenticated (public and enrollment routes).
    Anonymous,
    /// An enrolled agent.
    Agent {
        /// The agent.
        agent: AgentId,
        /// Its workspace (from the verified certificate and the catalog).
        workspace: WorkspaceId,
    },
    /// A principal with a bearer token.
    Principal {
        /// The principal.
        principal: Principal,
        /// The token used.
        token: ApiToken,
    },
}

/// Proof that the guard let this request through, with everything it
/// resolved. Handlers take it as an extractor; only the guard makes one.
#[derive(Clone, Debug)]
pub struct Authorized {
    inner: Arc<AuthInner>,
}

#[derive(Debug)]
struct AuthInner {
    request_id: String,
    caller: Caller,
    workspace: Option<Workspace>,
    case: Option<Case>,
    purge: Option<custos_catalog::PurgeJob>,
    access_request: Option<AccessRequest>,
    token: Option<ApiToken>,
    role: &'static str,
    grant: Option<AccessRequestId>,
    agent_cert: Option<AgentCert>,
    notes: Mutex<BTreeMap<String, String>>,
    hmac: Arc<custos_audit::Hmacer>,
}

/// The client certificate an agent authenticated with (verified by the TLS
/// layer and accepted by the catalog record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCert {
    /// SHA-256 of the DER, hex.
    pub sha256: String,
    /// Pin of its public key (`sha256/<base64>` of the SubjectPublicKeyInfo).
    pub key_pin: String,
    /// Start of its validity.
    pub not_before: time::OffsetDateTime,
    /// End of its validity.
    pub not_after: time::OffsetDateTime,
}

impl AuthInner {
    /// Nobody yet: the starting point the guard fills in.
    fn anonymous(request_id: &str, state: &AppState) -> AuthInner {
        AuthInner {
            request_id: request_id.to_string(),
            caller: Caller::Anonymous,
            workspace: None,
            case: None,
            purge: None,
            access_request: None,
            token: None,
            role: "anonymous",
            grant: None,
            agent_cert: None,
            notes: Mutex::new(BTreeMap::new()),
            hmac: state.hmac.clone(),
        }
    }
}

impl Authorized {
    /// The request id (also in the `x-request-id` response header).
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }
    /// The caller.
    pub fn caller(&self) -> &Caller {
        &self.inner.caller
    }
    /// The principal, for principal routes.
    pub fn principal(&self) -> Result<&Principal, ServerError> {
        match &self.inner.caller {
            Caller::Principal { principal, .. } => Ok(principal),
            _ => Err(ServerError::Unauthorized("this route needs a principal's bearer token".into())),
        }
    }
    /// The token the principal used.
    pub fn used_token(&self) -> Option<&ApiToken> {
        match &self.inner.caller {
            Caller::Principal { token, .. } => Some(token),
            _ => None,
        }
    }
    /// The agent, for agent routes.
    pub fn agent(&self) -> Result<(AgentId, WorkspaceId), ServerError> {
        match &self.inner.caller {
            Caller::Agent { agent, workspace } => Ok((*agent, *workspace)),
            _ => Err(ServerError::Unauthorized("this route needs an agent client certificate".into())),
        }
    }
    /// The certificate the agent authenticated with, for agent routes.
    pub fn agent_cert(&self) -> Result<&AgentCert, ServerError> {
        self.inner
            .agent_cert
            .as_ref()
            .ok_or_else(|| ServerError::Unauthorized("this route needs an agent client certificate".into()))
    }
    /// The target workspace (checked).
    pub fn workspace(&self) -> Result<&Workspace, ServerError> {
        self.inner.workspace.as_ref().ok_or_else(|| ServerError::Internal("route has no workspace target".into()))
    }
    /// The target purge job (checked).
    pub fn purge(&self) -> Result<&custos_catalog::PurgeJob, ServerError> {
        self.inner.purge.as_ref().ok_or_else(|| ServerError::Internal("route has no purge job target".into()))
    }

    /// The target case (checked).
    pub fn case(&self) -> Result<&Case, ServerError> {
        self.inner.case.as_ref().ok_or_else(|| ServerError::Internal("route has no case target".into()))
    }
    /// The target access request (checked).
    pub fn access_request(&self) -> Result<&AccessRequest, ServerError> {
        self.inner
            .access_request
            .as_ref()
            .ok_or_else(|| ServerError::Internal("route has no access request target".into()))
    }
    /// The target token (checked).
    pub fn token(&self) -> Result<&ApiToken, ServerError> {
        self.inner.token.as_ref().ok_or_else(|| ServerError::Internal("route has no token target".into()))
    }
    /// The role the request acts under.
    pub fn role(&self) -> &'static str {
        self.inner.role
    }
    /// The lockbox grant that allowed the request, if any.
    pub fn grant(&self) -> Option<AccessRequestId> {
        self.inner.grant
    }
    /// Add a detail to the audit record. Only for values that are safe in
    /// plain text (ids, counts, names chosen by admins).
    pub fn note(&self, key: &str, value: impl ToString) {
        if let Ok(mut n) = self.inner.notes.lock() {
            n.insert(key.to_string(), value.to_string());
        }
    }
    /// Add a secret or payload value to the audit record, HMAC'd.
    pub fn note_hmac(&self, key: &str, value: &str) {
        self.note(key, self.inner.hmac.hmac(value));
    }
}

impl FromRequestParts<Arc<AppState>> for Authorized {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        // Fail closed: a handler reached without the guard serves nothing.
        parts
            .extensions
            .get::<Authorized>()
            .cloned()
            .ok_or_else(|| ServerError::Internal("route is not guarded; refusing".into()))
    }
}

/// The middleware. See the module documentation.
pub async fn guard(state: Arc<AppState>, spec: Arc<RouteSpec>, req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::now_v7().to_string();
    let (mut parts, body) = req.into_parts();
    let client = parts.extensions.get::<ConnInfo>().map(|c| c.remote.to_string()).unwrap_or_default();
    let params: BTreeMap<String, String> = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(p) => p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        Err(_) => BTreeMap::new(),
    };
    let mut rec = AuditRecord {
        time: state.clock.now(),
        principal: None,
        role: "anonymous".into(),
        action: spec.action.to_string(),
        target: parts.uri.path().chars().take(512).collect(),
        workspace: None,
        outcome: "started".into(),
        status: 0,
        request_id: request_id.clone(),
        client,
        grant: None,
        details: BTreeMap::new(),
    };
    if spec.access == Access::Public {
        parts.extensions.insert(Authorized { inner: Arc::new(AuthInner::anonymous(&request_id, &state)) });
        return with_request_id(next.run(Request::from_parts(parts, body)).await, &request_id);
    }
    let auth = match authorize(&state, &spec, &parts, &params, &request_id, &mut rec).await {
        Ok(a) => a,
        Err(e) => {
            let resp = e.into_response();
            rec.outcome = "denied".into();
            rec.status = resp.status().as_u16();
            return finish(&state, rec, resp, &request_id).await;
        }
    };
    if spec.mutates {
        if let Err(e) = state.audit.append(rec.clone()).await {
            return audit_failed(&e, &request_id);
        }
    }
    parts.extensions.insert(auth.clone());
    let resp = next.run(Request::from_parts(parts, body)).await;
    rec.time = state.clock.now();
    rec.status = resp.status().as_u16();
    rec.outcome = match resp.status().as_u16() {
        200..=399 => "ok",
        401 | 403 | 404 => "denied",
        _ => "error",
    }
    .into();
    if let Ok(mut notes) = auth.inner.notes.lock() {
        if let Some(ws) = notes.remove("workspace") {
            rec.workspace = Some(ws);
        }
        rec.details.append(&mut notes);
    }
    finish(&state, rec, resp, &request_id).await
}

async fn finish(state: &AppState, rec: AuditRecord, resp: Response, request_id: &str) -> Response {
    match state.audit.append(rec).await {
        Ok(_) => with_request_id(resp, request_id),
        Err(e) => audit_failed(&e, request_id),
    }
}

fn audit_failed(e: &custos_audit::AuditError, request_id: &str) -> Response {
    tracing::error!(error = %e, request_id, "audit record could not be written; refusing the request");
    state_unavailable(request_id)
}

fn state_unavailable(request_id: &str) -> Response {
    let resp =
        ServerError::Unavailable("the audit log cannot be written, so the request is refused".into()).into_response();
    with_request_id(resp, request_id)
}

fn with_request_id(mut resp: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// SHA-256 of a secret, hex: how tokens and keys are stored.
pub fn hash_secret(s: &str) -> String {
    hex::encode(Sha256::digest(s.trim().as_bytes()))
}

/// Authenticate an agent by its verified client certificate, checked
/// against the catalog: the agent exists, is not revoked, is bound to the
/// certificate's workspace, and the certificate is its current one or the
/// one it renewed from before that one's expiry (`Agent::accepts`).
async fn authenticate_agent(state: &AppState, parts: &Parts) -> Result<(AgentId, WorkspaceId, AgentCert), ServerError> {
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
    if let Some(at) = record.revoked_at {
        return Err(ServerError::Unauthorized(format!(
            "agent {agent} was revoked at {}: its certificates are no longer accepted (enroll the host again if it should report)",
            crate::api::rfc3339(at)
        )));
    }
    let sha256 = pki::der_sha256(der);
    let now = state.clock.now();
    if record.workspace_id != workspace || !record.accepts(&sha256, now) {
        if record.workspace_id == workspace && record.prev_cert_sha256.as_deref() == Some(sha256.as_str()) {
            return Err(ServerError::Unauthorized(format!(
                "this certificate of agent {agent} was replaced by a renewal and is no longer accepted since {}",
                record.prev_cert_not_after.map(crate::api::rfc3339).unwrap_or_default()
            )));
        }
        return Err(ServerError::Unauthorized("client certificate does not match the enrolled agent".into()));
    }
    let (not_before, not_after) = pki::cert_validity(der)?;
    Ok((agent, workspace, AgentCert { sha256, key_pin: pki::spki_pin(der)?, not_before, not_after }))
}

/// Authenticate a principal by bearer token.
async fn authenticate_principal(state: &AppState, parts: &Parts) -> Result<(Principal, ApiToken), ServerError> {
    let token = bearer(parts)
        .ok_or_else(|| ServerError::Unauthorized("missing bearer token (Authorization: Bearer <token>)".into()))?;
    let stored = state
        .catalog
        .get_token_by_hash(&hash_secret(token))
        .await?
        .ok_or_else(|| ServerError::Unauthorized("invalid token".into()))?;
    let now = state.clock.now();
    if stored.revoked_at.is_some() {
        return Err(ServerError::Unauthorized(format!("token {} has been revoked", stored.id)));
    }
    if stored.expires_at.is_some_and(|t| t <= now) {
        return Err(ServerError::Unauthorized(format!("token {} has expired", stored.id)));
    }
    let principal = state
        .catalog
        .get_principal(stored.principal_id)
        .await?
        .ok_or_else(|| ServerError::Unauthorized("invalid token".into()))?;
    Ok((principal, stored))
}

/// The live grant a support engineer holds on `ws`, if any.
async fn live_grant(state: &AppState, principal: &Principal, ws: WorkspaceId) -> Result<Option<AccessRequestId>, ServerError> {
    if principal.service_role != Some(ServiceRole::Support) {
        return Ok(None);
    }
    let now = state.clock.now();
    let filter = AccessFilter { workspace: Some(ws), requester: Some(principal.id), case: None };
    for req in state.catalog.list_access_requests(&filter).await? {
        if req.state != AccessState::Approved {
            continue;
        }
        let Some(case) = state.catalog.get_case(req.case_id).await? else { continue };
        if lockbox::status(&req, &case, now) == lockbox::Status::Active {
            return Ok(Some(req.id));
        }
    }
    Ok(None)
}

fn param<'a>(params: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, ServerError> {
    params
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| ServerError::Internal(format!("route is missing its {{{name}}} parameter")))
}

fn parse_id<T: std::str::FromStr<Err = custos_model::IdParseError>>(s: &str) -> Result<T, ServerError> {
    s.parse().map_err(|e: custos_model::IdParseError| ServerError::BadRequest(e.to_string()))
}

async fn authorize(
    state: &AppState,
    spec: &RouteSpec,
    parts: &Parts,
    params: &BTreeMap<String, String>,
    request_id: &str,
    rec: &mut AuditRecord,
) -> Result<Authorized, ServerError> {
    let mut inner = AuthInner::anonymous(request_id, state);
    let perm = match spec.access {
        Access::Public => unreachable_public(),
        Access::EnrollmentKey => {
            inner.role = "enrollment";
            rec.role = "enrollment".into();
            return Ok(Authorized { inner: Arc::new(inner) });
        }
        Access::Agent => {
            let (agent, workspace, cert) = authenticate_agent(state, parts).await?;
            rec.principal = Some(format!("agent:{agent}"));
            rec.role = "agent".into();
            rec.workspace = Some(workspace.to_string());
            inner.caller = Caller::Agent { agent, workspace };
            inner.agent_cert = Some(cert);
            inner.role = "agent";
            return Ok(Authorized { inner: Arc::new(inner) });
        }
        Access::Principal(perm) => perm,
    };
    let (principal, token) = authenticate_principal(state, parts).await?;
    rec.principal = Some(principal.id.to_string());
    rec.role = principal.service_role.map_or("principal", ServiceRole::as_str).into();
    let mut subject = Subject { service_role: principal.service_role, ..Default::default() };
    // Resolve the target; an unknown target and a hidden one give the same answer.
    let scope = spec.scope();
    let (ws_id, hidden): (Option<WorkspaceId>, String) = match scope {
        Scope::Service => (None, String::new()),
        Scope::Workspace => {
            let raw = param(params, "ws")?;
            let id: WorkspaceId = parse_id(raw)?;
            (Some(id), format!("workspace {id} not found"))
        }
        Scope::Case => {
            let id = parse_id(param(params, "case")?)?;
            let hidden = format!("case {id} not found");
            let case = state.catalog.get_case(id).await?.ok_or_else(|| ServerError::NotFound(hidden.clone()))?;
            let ws = case.workspace_id;
            inner.case = Some(case);
            (Some(ws), hidden)
        }
        Scope::AccessRequest => {
            let id = parse_id(param(params, "req")?)?;
            let hidden = format!("access request {id} not found");
            let req =
                state.catalog.get_access_request(id).await?.ok_or_else(|| ServerError::NotFound(hidden.clone()))?;
            let ws = req.workspace_id;
            if let Some(case) = state.catalog.get_case(req.case_id).await? {
                inner.case = Some(case);
            }
            inner.access_request = Some(req);
            (Some(ws), hidden)
        }
        Scope::Job => {
            let id = parse_id(param(params, "job")?)?;
            let hidden = format!("purge job {id} not found");
            let job = state.catalog.get_purge(id).await?.ok_or_else(|| ServerError::NotFound(hidden.clone()))?;
            let ws = job.workspace_id;
            inner.purge = Some(job);
            (Some(ws), hidden)
        }
        Scope::Token => {
            let id = parse_id(param(params, "token")?)?;
            let hidden = format!("token {id} not found");
            let t = state.catalog.get_token(id).await?.ok_or_else(|| ServerError::NotFound(hidden.clone()))?;
            let own = t.principal_id == principal.id;
            inner.token = Some(t);
            if own {
                inner.role = "self";
                rec.role = "self".into();
                inner.caller = Caller::Principal { principal, token };
                return Ok(Authorized { inner: Arc::new(inner) });
            }
            (None, hidden)
        }
    };
    if let Some(ws) = ws_id {
        let hidden_err = || ServerError::NotFound(hidden.clone());
        let workspace = state.catalog.get_workspace(ws).await?.ok_or_else(hidden_err)?;
        subject.roles = state.catalog.roles_of(principal.id, ws).await?;
        subject.live_grant = live_grant(state, &principal, ws).await?;
        rec.workspace = Some(ws.to_string());
        inner.workspace = Some(workspace);
    }
    match authz::decide(&subject, perm, spec.mutates) {
        Decision::Allow { role, grant } => {
            inner.role = role;
            inner.grant = grant;
            rec.role = role.into();
            rec.grant = grant.map(|g| g.to_string());
            inner.caller = Caller::Principal { principal, token };
            Ok(Authorized { inner: Arc::new(inner) })
        }
        // A token that is not yours is as invisible as one that does not exist.
        Decision::Forbidden(_) if scope == Scope::Token => Err(ServerError::NotFound(hidden)),
        Decision::Forbidden(why) => Err(ServerError::Forbidden(why.to_string())),
        // The record keeps the probed workspace: its owners see the attempt.
        Decision::Hidden => Err(ServerError::NotFound(hidden)),
    }
}

/// Public routes never reach `authorize` (the guard serves them first).
fn unreachable_public() -> Perm {
    // Treat as the strictest permission if it ever happens: fail closed.
    Perm::ServiceAdmin
}
