//! The local control socket: how `custos telemetry ...` and `custos usage
//! ...` talk to a running agent, so a change takes effect at once.
//!
//! # Where and who
//!
//! The socket is `telemetry.control_socket`, by default
//! `<state_dir>/control/control.sock` ([`default_socket_path`]). Its
//! directory must be private: it is created with mode 0700 when missing, and
//! an existing one must be a real directory owned by the agent's user with
//! no group or other permissions (it is never chmod-ed, so pointing the
//! socket at a shared directory such as `/tmp` fails instead of changing
//! it). The socket file itself is made 0600 right after it is bound; as the
//! directory is private there is no moment when others can reach it.
//!
//! A socket file left by an agent that died is replaced; if another agent
//! still answers on it, start fails with [`ControlError::AlreadyRunning`].
//!
//! Every connection's peer is identified by its kernel credentials
//! (`SO_PEERCRED`): only the agent's own uid and root are served. Anyone
//! else gets one error line, the connection is closed, and a
//! [`SecurityNote`] of kind `control_refused` goes to the run loop.
//!
//! # Protocol, version 1
//!
//! One JSON object per line (`\n`-terminated, UTF-8) each way; a connection
//! may carry any number of requests, each answered by exactly one response
//! line, in order. A request line is at most [`MAX_REQUEST_BYTES`] bytes; a
//! longer one is answered with an error and the connection is closed. A
//! connection idle for [`IDLE_TIMEOUT`] is closed.
//!
//! Requests (`v` and `op` are required; any other field is refused):
//!
//! ```json
//! {"v":1,"op":"status"}
//! {"v":1,"op":"set_level","level":1}          // 0-3, or a name: "basic"
//! {"v":1,"op":"set_enabled","enabled":false}  // telemetry on/off
//! {"v":1,"op":"set_usage","enabled":true}     // usage reporting on/off
//! ```
//!
//! Responses:
//!
//! ```json
//! {"v":1,"ok":true,"status":{...}}
//! {"v":1,"ok":false,"error":"refused by policy: ..."}
//! ```
//!
//! Every successful response (of a change too) carries the full [`Status`]
//! after the request: `level`, `enabled`, `usage` (each
//! `{"value":...,"origin":"default|config|local|policy"}`, the level as its
//! number), `policy_file`, `policy_error` (null when none) and `runtime`
//! ([`RuntimeStatus`], counters supplied by the run loop). A request that
//! cannot be parsed (bad JSON, unknown op or field, wrong version) gets an
//! error response naming what is wrong; the connection stays usable.

use crate::security::{self, SecurityNote, SecuritySink};
use crate::settings::{Effective, SettingsError, SettingsHandle};
use custos_model::Level;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// The protocol version spoken here.
pub const PROTOCOL_VERSION: u64 = 1;
/// The longest request line accepted (without its newline).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest response line a client accepts.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`request`] waits for the whole exchange.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are turned away.
const MAX_CONNECTIONS: usize = 32;
/// How long a response write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The directory of the default socket, inside the state directory.
pub const CONTROL_DIR: &str = "control";
/// The file name of the default socket.
pub const SOCKET_NAME: &str = "control.sock";

/// The default control socket of a state directory:
/// `<state_dir>/control/control.sock`.
pub fn default_socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_DIR).join(SOCKET_NAME)
}

/// Errors of the control socket, its protocol and its client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A request line that is not a valid request (the text says why).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The socket or its directory cannot be set up safely.
    #[error("control socket {}: {reason}", .path.display())]
    Setup {
        /// The socket or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another agent answers on the socket.
    #[error(
        "another agent is running with this control socket ({}): stop it first, or give this one another state dir or telemetry.control_socket",
        .path.display()
    )]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// No agent listens on the socket (it does not exist or nobody accepts).
    #[error("no agent is running (nothing answers on {}): {source}", .path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// An I/O error while setting up or talking over the socket.
    #[error("control socket {}: {action}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The socket or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The agent did not answer in time.
    #[error("the agent did not answer on {} within {} s", .path.display(), .after.as_secs_f64())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The time limit.
        after: Duration,
    },
    /// The agent's answer is not a valid response.
    #[error("invalid response from the agent: {0}")]
    BadResponse(String),
    /// The agent answered with an error.
    #[error("{0}")]
    Refused(String),
}

// ---------------------------------------------------------------------------
// Requests.

/// One request of protocol version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `{"v":1,"op":"status"}`.
    Status,
    /// `{"v":1,"op":"set_level","level":N}`.
    SetLevel(Level),
    /// `{"v":1,"op":"set_enabled","enabled":B}`: telemetry on or off.
    SetEnabled(bool),
    /// `{"v":1,"op":"set_usage","enabled":B}`: usage reporting on or off.
    SetUsage(bool),
}

impl Request {
    /// The `op` name.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::SetLevel(_) => "set_level",
            Request::SetEnabled(_) => "set_enabled",
            Request::SetUsage(_) => "set_usage",
        }
    }

    /// The request as a JSON object.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("v".into(), Value::from(PROTOCOL_VERSION));
        m.insert("op".into(), Value::from(self.op()));
        match *self {
            Request::Status => {}
            Request::SetLevel(l) => {
                m.insert("level".into(), Value::from(u8::from(l)));
            }
            Request::SetEnabled(b) | Request::SetUsage(b) => {
                m.insert("enabled".into(), Value::from(b));
            }
        }
        Value::Object(m)
    }

    /// The request line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = self.to_json().to_string();
        s.push('\n');
        s
    }
}

/// At most 64 characters of an untrusted string, quoted and escaped.
fn shown(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    if short.len() < s.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

/// Parse one request line (with or without its trailing newline). Pure;
/// never panics, whatever the bytes.
pub fn parse_request(line: &[u8]) -> Result<Request, ControlError> {
    let bad = |m: String| ControlError::BadRequest(m);
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_REQUEST_BYTES {
        return Err(bad(format!("request is longer than {MAX_REQUEST_BYTES} bytes")));
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(r#"empty request: send one JSON object per line, e.g. {"v":1,"op":"status"}"#.into()));
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| bad(format!("request is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(bad("request must be a JSON object".into()));
    };
    match map.get("v") {
        None => return Err(bad("missing field `v` (the protocol version, 1)".into())),
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(bad(format!(
                "unsupported protocol version {} (this agent speaks version {PROTOCOL_VERSION})",
                shown(&v.to_string())
            )))
        }
    }
    let op = match map.get("op") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad("field `op` must be a string".into())),
        None => return Err(bad("missing field `op` (status, set_level, set_enabled or set_usage)".into())),
    };
    let allowed: &[&str] = match op {
        "status" => &[],
        "set_level" => &["level"],
        "set_enabled" | "set_usage" => &["enabled"],
        other => {
            return Err(bad(format!(
                "unknown op {}: expected status, set_level, set_enabled or set_usage",
                shown(other)
            )))
        }
    };
    if let Some(k) = map.keys().find(|k| *k != "v" && *k != "op" && !allowed.contains(&k.as_str())) {
        return Err(bad(format!("unknown field {} for op {op}", shown(k))));
    }
    let enabled = || match map.get("enabled") {
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("field `enabled` of {op} must be true or false"))),
        None => Err(bad(format!("{op} needs field `enabled` (true or false)"))),
    };
    match op {
        "status" => Ok(Request::Status),
        "set_enabled" => Ok(Request::SetEnabled(enabled()?)),
        "set_usage" => Ok(Request::SetUsage(enabled()?)),
        _ => {
            let level = match map.get("level") {
                None => {
                    return Err(bad("set_level needs field `level` (0-3 or security, basic, enhanced, full)".into()))
                }
                Some(Value::Number(n)) => {
                    n.as_u64().and_then(|n| u8::try_from(n).ok()).and_then(|n| Level::try_from(n).ok()).ok_or_else(
                        || {
                            bad(format!(
                                "invalid level {}: expected 0-3 or security, basic, enhanced, full",
                                shown(&n.to_string())
                            ))
                        },
                    )?
                }
                Some(Value::String(s)) => s.parse::<Level>().map_err(|_| {
                    bad(format!("invalid level {}: expected 0-3 or security, basic, enhanced, full", shown(s)))
                })?,
                Some(_) => return Err(bad("field `level` must be a number 0-3 or a level name".into())),
            };
            Ok(Request::SetLevel(level))
        }
    }
}

// ---------------------------------------------------------------------------
// Responses.

/// The run loop's counters, shown by `custos telemetry status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeStatus {
    /// Events waiting in the queue.
    pub queued_events: u64,
    /// Batches waiting in the queue.
    pub queued_batches: u64,
    /// Events read from the sources since start.
    pub events_read: u64,
    /// Events acknowledged by the server since start.
    pub events_uploaded: u64,
    /// Events not collected (above the level, or telemetry disabled).
    pub events_not_collected: u64,
    /// Queued events deleted by disabling telemetry or lowering the level.
    pub events_purged: u64,
    /// Events dropped under pressure, by category name.
    pub dropped_by_category: BTreeMap<String, u64>,
    /// Events the server refused (above the workspace's level or categories).
    pub refused_by_server: u64,
    /// Time of the last acknowledged upload, µs since the Unix epoch.
    pub last_upload_time: Option<i64>,
    /// Events evicted from the full queue (least important first), by category name.
    #[serde(default)]
    pub evicted_by_category: BTreeMap<String, u64>,
    /// Events waiting in the queue, by category name.
    #[serde(default)]
    pub queued_by_category: BTreeMap<String, u64>,
    /// Bytes of the records waiting in the queue.
    #[serde(default)]
    pub queue_bytes: u64,
    /// Bytes of the queue's files on disk.
    #[serde(default)]
    pub queue_disk_bytes: u64,
    /// The queue's bound.
    #[serde(default)]
    pub queue_max_bytes: u64,
    /// Batches moved to the dead-letter store since start.
    #[serde(default)]
    pub dead_letters: u64,
    /// Dead letters removed because the store was full, since start.
    #[serde(default)]
    pub dead_letters_evicted: u64,
    /// Delivery attempts that failed and will be retried, since start.
    #[serde(default)]
    pub delivery_failures: u64,
    /// Queue appends that failed (a full disk) and were retried, since start.
    #[serde(default)]
    pub queue_write_failures: u64,
    /// Findings redacted on the host since start, by entity name.
    #[serde(default)]
    pub redacted_by_entity: BTreeMap<String, u64>,
    /// Fields removed by the redaction policy since start.
    #[serde(default)]
    pub redaction_fields_dropped: u64,
    /// Events dropped by the redaction policy since start.
    #[serde(default)]
    pub redaction_events_dropped: u64,
}

/// Supplies the runtime part of the status (implemented by the run loop;
/// closures `Fn() -> RuntimeStatus` qualify). Called from async tasks: it
/// must return quickly and not block.
pub trait StatusSource: Send + Sync {
    /// The counters now.
    fn runtime_status(&self) -> RuntimeStatus;
}

impl<F: Fn() -> RuntimeStatus + Send + Sync> StatusSource for F {
    fn runtime_status(&self) -> RuntimeStatus {
        self()
    }
}

/// The status of an agent: the effective settings (flattened) and the
/// runtime counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The effective settings with their origins, the policy file and error.
    #[serde(flatten)]
    pub settings: Effective,
    /// The run loop's counters (`None` when no agent runs).
    #[serde(default)]
    pub runtime: Option<RuntimeStatus>,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version (1).
    pub v: u64,
    /// Whether the request succeeded.
    pub ok: bool,
    /// The status after the request (when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// What went wrong (when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying the status.
    pub fn ok(status: Status) -> Response {
        Response { v: PROTOCOL_VERSION, ok: true, status: Some(status), error: None }
    }

    /// A failure with a message.
    pub fn error(message: impl Into<String>) -> Response {
        Response { v: PROTOCOL_VERSION, ok: false, status: None, error: Some(message.into()) }
    }

    /// The status of a success, or the agent's error as
    /// [`ControlError::Refused`].
    pub fn into_status(self) -> Result<Status, ControlError> {
        match (self.ok, self.status, self.error) {
            (true, Some(s), _) => Ok(s),
            (true, None, _) => Err(ControlError::BadResponse("a success without a status".into())),
            (false, _, e) => Err(ControlError::Refused(e.unwrap_or_else(|| "the agent refused the request".into()))),
        }
    }

    fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self)
            .unwrap_or_else(|_| br#"{"v":1,"ok":false,"error":"internal error: cannot encode the response"}"#.to_vec());
        v.push(b'\n');
        v
    }
}

/// Parse one response line (checks the version).
pub fn parse_response(line: &[u8]) -> Result<Response, ControlError> {
    let r: Response = serde_json::from_slice(line)
        .map_err(|e| ControlError::BadResponse(format!("not a version-1 response: {e}")))?;
    if r.v != PROTOCOL_VERSION {
        return Err(ControlError::BadResponse(format!(
            "protocol version {} (this client speaks version {PROTOCOL_VERSION})",
            r.v
        )));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// The server.

/// Whether a peer may use the socket: the agent's own uid, or root.
pub fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

struct Ctx {
    settings: SettingsHandle,
    status: Arc<dyn StatusSource>,
    security: SecuritySink,
    own_uid: u32,
    allow: fn(u32, u32) -> bool,
}

/// A running control socket. Dropping it (or [`ControlServer::shutdown`])
/// stops serving and removes the socket file (if it is still this one).
pub struct ControlServer {
    path: PathBuf,
    ident: (u64, u64),
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer").field("path", &self.path).finish()
    }
}

/// The uid of this process: the credentials the kernel reports for one end
/// of a socket pair made here.
async fn own_uid() -> std::io::Result<u32> {
    let (a, _b) = UnixStream::pair()?;
    Ok(a.peer_cred()?.uid())
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ControlError {
    let path = path.to_path_buf();
    move |source| ControlError::Io { action, path, source }
}

fn setup_err(path: &Path, reason: impl Into<String>) -> ControlError {
    ControlError::Setup { path: path.to_path_buf(), reason: reason.into() }
}

/// Make sure the socket's directory exists and is private to `uid`.
fn prepare_dir(dir: &Path, uid: u32) -> Result<(), ControlError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating the socket directory", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting the socket directory's mode", dir))?;
        }
        Err(e) => return Err(io_err("inspecting the socket directory", dir)(e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(io_err("inspecting the socket directory", dir))?;
    if m.file_type().is_symlink() {
        return Err(setup_err(dir, "the socket directory is a symbolic link; use a real directory"));
    }
    if !m.is_dir() {
        return Err(setup_err(dir, "the socket's parent is not a directory"));
    }
    if m.uid() != uid {
        return Err(setup_err(
            dir,
            format!("the socket directory is owned by uid {}, not the agent's uid {uid}; use a directory of the agent's user", m.uid()),
        ));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(setup_err(
            dir,
            format!(
                "the socket directory is accessible to other users (mode {mode:04o}); the control socket needs a private \
                 directory: chmod 700 it, or set telemetry.control_socket to a path in a dedicated directory (created with mode 0700)"
            ),
        ));
    }
    Ok(())
}

/// Remove a socket file left by a dead agent; fail if a live one answers.
async fn remove_stale(path: &Path) -> Result<(), ControlError> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspecting the existing socket", path)(e)),
    };
    if !m.file_type().is_socket() {
        return Err(setup_err(path, "exists and is not a socket; refusing to replace it"));
    }
    match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await {
        Ok(Ok(_)) | Err(_) => Err(ControlError::AlreadyRunning { path: path.to_path_buf() }),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing the control socket of an agent that is no longer running");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing the stale socket", path)(e)),
                _ => Ok(()),
            }
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(Err(e)) => Err(io_err("checking the existing socket", path)(e)),
    }
}

fn file_ident(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl ControlServer {
    /// Bind the control socket at `path` and serve it in a background task
    /// (call within a tokio runtime). `status` supplies the runtime part of
    /// every status; `security` receives a note for each refused peer.
    pub async fn start(
        path: &Path,
        settings: SettingsHandle,
        status: Arc<dyn StatusSource>,
        security: SecuritySink,
    ) -> Result<ControlServer, ControlError> {
        Self::start_with(path, settings, status, security, peer_allowed).await
    }

    async fn start_with(
        path: &Path,
        settings: SettingsHandle,
        status: Arc<dyn StatusSource>,
        security: SecuritySink,
        allow: fn(u32, u32) -> bool,
    ) -> Result<ControlServer, ControlError> {
        let own_uid = own_uid().await.map_err(io_err("reading the agent's uid", path))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            Some(_) => Path::new("."),
            None => return Err(setup_err(path, "not a socket file path")),
        };
        if path.as_os_str().len() > crate::config::MAX_SOCKET_PATH_BYTES {
            return Err(setup_err(
                path,
                format!(
                    "the path is longer than {} bytes, the limit of a socket address; set telemetry.control_socket to a shorter path",
                    crate::config::MAX_SOCKET_PATH_BYTES
                ),
            ));
        }
        prepare_dir(dir, own_uid)?;
        remove_stale(path).await?;
        let listener = UnixListener::bind(path).map_err(|e| match e.kind() {
            // Another agent bound it between our check and now.
            std::io::ErrorKind::AddrInUse => ControlError::AlreadyRunning { path: path.to_path_buf() },
            _ => io_err("binding", path)(e),
        })?;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(path);
            return Err(io_err("setting the socket's mode", path)(e));
        }
        let ident = file_ident(path).unwrap_or_default();
        let ctx = Arc::new(Ctx { settings, status, security, own_uid, allow });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, ctx, stop_rx));
        tracing::info!(socket = %path.display(), "control socket listening");
        Ok(ControlServer { path: path.to_path_buf(), ident, stop, task: Some(task) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, close open connections, and remove the socket file.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        // Drop removes the file.
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
        // Only our own socket: a newer agent may have replaced it.
        if file_ident(&self.path) == Some(self.ident) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn accept_loop(listener: UnixListener, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        let _ = stream.try_write(&Response::error("too many control connections; try again").to_line());
                        continue;
                    };
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        serve_conn(stream, &ctx).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    conns.abort_all();
}

async fn write_line(w: &mut (impl AsyncWriteExt + Unpin), r: &Response) -> bool {
    matches!(tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&r.to_line())).await, Ok(Ok(())))
}

async fn serve_conn(stream: UnixStream, ctx: &Ctx) {
    let (peer_uid, peer_pid) = match stream.peer_cred() {
        Ok(c) => (Some(c.uid()), c.pid()),
        Err(_) => (None, None),
    };
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    let allowed = peer_uid.is_some_and(|u| (ctx.allow)(u, ctx.own_uid));
    if !allowed {
        // Read (and ignore) the first request, briefly, so the refusal is
        // the answer to it rather than a reset of a half-written request.
        let mut first = (&mut rd).take(MAX_REQUEST_BYTES as u64 + 1);
        let _ = tokio::time::timeout(Duration::from_secs(1), first.read_until(b'\n', &mut line)).await;
        let who = match peer_uid {
            Some(u) => format!("uid {u}{}", peer_pid.map(|p| format!(" (pid {p})")).unwrap_or_default()),
            None => "a peer whose credentials cannot be read".to_string(),
        };
        let detail =
            format!("control socket connection from {who} refused: only uid {} and root may use it", ctx.own_uid);
        tracing::warn!("{detail}");
        let _ = write_line(
            &mut wr,
            &Response::error(format!(
                "permission denied: only uid {} and root may use this control socket",
                ctx.own_uid
            )),
        )
        .await;
        (ctx.security)(SecurityNote { kind: security::kind::CONTROL_REFUSED, outcome: "refused".into(), detail });
        return;
    }
    loop {
        line.clear();
        let limit = MAX_REQUEST_BYTES as u64 + 1;
        let read = tokio::time::timeout(IDLE_TIMEOUT, (&mut rd).take(limit).read_until(b'\n', &mut line)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        let complete = line.ends_with(b"\n");
        if !complete && line.len() > MAX_REQUEST_BYTES {
            let _ = write_line(
                &mut wr,
                &Response::error(format!("bad request: request line longer than {MAX_REQUEST_BYTES} bytes; closing")),
            )
            .await;
            return;
        }
        let response = handle(ctx, &line, peer_uid).await;
        if !write_line(&mut wr, &response).await || !complete {
            return;
        }
    }
}

async fn handle(ctx: &Ctx, line: &[u8], peer_uid: Option<u32>) -> Response {
    let req = match parse_request(line) {
        Ok(r) => r,
        Err(e) => return Response::error(e.to_string()),
    };
    let result: Result<Effective, SettingsError> = match req {
        Request::Status => Ok(ctx.settings.reload_policy().await),
        Request::SetLevel(l) => ctx.settings.set_level(l).await,
        Request::SetEnabled(b) => ctx.settings.set_enabled(b).await,
        Request::SetUsage(b) => ctx.settings.set_usage(b).await,
    };
    if req != Request::Status {
        match &result {
            Ok(_) => tracing::info!(op = req.op(), request = ?req, peer_uid, "control: setting changed"),
            Err(e) => tracing::info!(op = req.op(), request = ?req, peer_uid, error = %e, "control: change refused"),
        }
    }
    match result {
        Ok(settings) => Response::ok(Status { settings, runtime: Some(ctx.status.runtime_status()) }),
        Err(e) => Response::error(e.to_string()),
    }
}

// ---------------------------------------------------------------------------
// The client.

/// Send one request to the agent on `socket` and read its response, within
/// [`DEFAULT_CLIENT_TIMEOUT`]. An error response is returned as `Ok` (see
/// [`Response::into_status`]); [`ControlError::NotRunning`] means no agent
/// listens there.
pub async fn request(socket: &Path, req: &Request) -> Result<Response, ControlError> {
    request_with_timeout(socket, req, DEFAULT_CLIENT_TIMEOUT).await
}

/// [`request`] with a chosen time limit.
pub async fn request_with_timeout(socket: &Path, req: &Request, limit: Duration) -> Result<Response, ControlError> {
    let exchange = async {
        let stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ControlError::NotRunning { path: socket.to_path_buf(), source: e }
            }
            _ => ControlError::Io { action: "connecting", path: socket.to_path_buf(), source: e },
        })?;
        let (rd, mut wr) = stream.into_split();
        // If sending fails the agent may still have answered (a refusal):
        // prefer its answer to the write error.
        let sent = wr.write_all(req.to_line().as_bytes()).await;
        let mut rd = BufReader::new(rd).take(MAX_RESPONSE_BYTES as u64 + 1);
        let mut line = Vec::new();
        let read = rd.read_until(b'\n', &mut line).await;
        if line.is_empty() {
            sent.map_err(io_err("sending the request", socket))?;
            read.map_err(io_err("reading the response", socket))?;
            return Err(ControlError::BadResponse("the agent closed the connection without answering".into()));
        }
        if !line.ends_with(b"\n") && line.len() > MAX_RESPONSE_BYTES {
            return Err(ControlError::BadResponse(format!("response longer than {MAX_RESPONSE_BYTES} bytes")));
        }
        parse_response(&line)
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| ControlError::Timeout { path: socket.to_path_buf(), after: limit })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TelemetrySettings;
    use crate::settings::{Origin, Sourced};
    use proptest::prelude::*;
    use std::sync::Mutex;

    struct Fixture {
        _dir: tempfile::TempDir,
        state: PathBuf,
        telemetry: TelemetrySettings,
        socket: PathBuf,
        settings: SettingsHandle,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let telemetry =
            TelemetrySettings { policy_file: dir.path().join("policy.toml"), ..TelemetrySettings::default() };
        let socket = default_socket_path(&state);
        let settings = SettingsHandle::open(&state, &telemetry).unwrap();
        Fixture { _dir: dir, state, telemetry, socket, settings }
    }

    fn runtime() -> Arc<dyn StatusSource> {
        Arc::new(|| RuntimeStatus {
            queued_events: 7,
            events_read: 42,
            last_upload_time: Some(1),
            ..Default::default()
        })
    }

    async fn start(f: &Fixture) -> ControlServer {
        ControlServer::start(&f.socket, f.settings.clone(), runtime(), security::discard()).await.unwrap()
    }

    /// A raw connection for line-level tests.
    struct Conn {
        rd: BufReader<tokio::net::unix::OwnedReadHalf>,
        wr: tokio::net::unix::OwnedWriteHalf,
    }

    impl Conn {
        async fn open(path: &Path) -> Conn {
            let (rd, wr) = UnixStream::connect(path).await.unwrap().into_split();
            Conn { rd: BufReader::new(rd), wr }
        }
        async fn send(&mut self, bytes: &[u8]) -> Option<Response> {
            self.wr.write_all(bytes).await.unwrap();
            self.recv().await
        }
        async fn recv(&mut self) -> Option<Response> {
            let mut line = Vec::new();
            // EOF or a reset (the server closed with input unread) both end it.
            let n = tokio::time::timeout(Duration::from_secs(10), self.rd.read_until(b'\n', &mut line))
                .await
                .unwrap()
                .unwrap_or(0);
            (n > 0).then(|| parse_response(&line).unwrap())
        }
    }

    #[tokio::test]
    async fn socket_is_owner_only_in_a_private_directory() {
        let f = fixture();
        let server = start(&f).await;
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f.socket), 0o600);
        assert_eq!(mode(f.socket.parent().unwrap()), 0o700);
        assert!(std::fs::symlink_metadata(&f.socket).unwrap().file_type().is_socket());
        server.shutdown().await;
        assert!(!f.socket.exists(), "shutdown removes the socket file");
    }

    #[tokio::test]
    async fn status_round_trip_shows_settings_origins_and_runtime() {
        let f = fixture();
        let _server = start(&f).await;
        let status = request(&f.socket, &Request::Status).await.unwrap().into_status().unwrap();
        assert_eq!(status.settings.level, Sourced { value: Level::Enhanced, origin: Origin::Default });
        assert_eq!(status.settings.enabled, Sourced { value: true, origin: Origin::Default });
        assert_eq!(status.settings.policy_file, f.telemetry.policy_file);
        assert_eq!(status.settings.policy_error, None);
        let rt = status.runtime.unwrap();
        assert_eq!((rt.queued_events, rt.events_read, rt.last_upload_time), (7, 42, Some(1)));
    }

    #[tokio::test]
    async fn set_level_through_the_socket_is_saved_and_published() {
        let f = fixture();
        let mut rx = f.settings.subscribe();
        let _server = start(&f).await;
        let status = request(&f.socket, &Request::SetLevel(Level::Basic)).await.unwrap().into_status().unwrap();
        assert_eq!(status.settings.level, Sourced { value: Level::Basic, origin: Origin::Local });
        assert!(rx.has_changed().unwrap(), "the run loop sees the change at once");
        assert_eq!(rx.borrow_and_update().level.value, Level::Basic);
        let saved = crate::settings::load_local(&crate::settings::settings_path(&f.state)).unwrap();
        assert_eq!(saved.level, Some(Level::Basic));
        let s = request(&f.socket, &Request::SetEnabled(false)).await.unwrap().into_status().unwrap();
        assert_eq!(s.settings.enabled, Sourced { value: false, origin: Origin::Local });
        let s = request(&f.socket, &Request::SetUsage(false)).await.unwrap().into_status().unwrap();
        assert_eq!(s.settings.usage, Sourced { value: false, origin: Origin::Local });
    }

    #[tokio::test]
    async fn change_refused_by_policy_is_answered_with_the_reason() {
        let f = fixture();
        std::fs::write(&f.telemetry.policy_file, "[telemetry]\nenabled = true\n").unwrap();
        let mut rx = f.settings.subscribe();
        let _server = start(&f).await;
        let r = request(&f.socket, &Request::SetEnabled(false)).await.unwrap();
        assert!(!r.ok);
        let e = r.into_status().unwrap_err().to_string();
        assert!(e.contains("refused by policy") && e.contains("`enabled`") && e.contains("policy.toml"), "{e}");
        // The policy appeared after open: the change re-read it and published it.
        assert_eq!(rx.borrow_and_update().enabled, Sourced { value: true, origin: Origin::Policy });
    }

    #[tokio::test]
    async fn malformed_requests_get_errors_and_the_server_keeps_serving() {
        let f = fixture();
        let _server = start(&f).await;
        let mut c = Conn::open(&f.socket).await;
        for (bad, expect) in [
            (&b"not json\n"[..], "not valid JSON"),
            (b"\n", "empty request"),
            (b"[1,2]\n", "JSON object"),
            (b"{\"op\":\"status\"}\n", "missing field `v`"),
            (b"{\"v\":2,\"op\":\"status\"}\n", "version"),
            (b"{\"v\":1,\"op\":\"reboot\"}\n", "unknown op \"reboot\""),
            (b"{\"v\":1,\"op\":\"status\",\"x\":1}\n", "unknown field \"x\""),
            (b"{\"v\":1,\"op\":\"set_level\",\"level\":9}\n", "invalid level"),
            (b"{\"v\":1,\"op\":\"set_enabled\"}\n", "needs field `enabled`"),
            (b"\xff\xfe\n", "not valid JSON"),
        ] {
            let r = c.send(bad).await.unwrap();
            assert!(!r.ok);
            let e = r.error.unwrap();
            assert!(e.contains(expect), "{:?}: {e}", String::from_utf8_lossy(bad));
        }
        // Same connection still works.
        let r = c.send(b"{\"v\":1,\"op\":\"status\"}\n").await.unwrap();
        assert!(r.ok);
        // A line over the limit is refused and that connection closed...
        let mut long = vec![b' '; MAX_REQUEST_BYTES + 10];
        long.push(b'\n');
        let r = c.send(&long).await.unwrap();
        assert!(r.error.unwrap().contains("longer than"));
        assert!(c.recv().await.is_none(), "connection closed after an oversized line");
        // ...but the server serves the next one.
        assert!(request(&f.socket, &Request::Status).await.unwrap().ok);
    }

    #[tokio::test]
    async fn stale_socket_of_a_dead_agent_is_replaced() {
        let f = fixture();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(f.socket.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&f.socket).unwrap());
        assert!(f.socket.exists(), "the dead listener left its socket file");
        assert!(matches!(request(&f.socket, &Request::Status).await, Err(ControlError::NotRunning { .. })));
        let _server = start(&f).await;
        assert!(request(&f.socket, &Request::Status).await.unwrap().ok);
    }

    #[tokio::test]
    async fn a_live_agent_on_the_socket_makes_start_fail() {
        let f = fixture();
        let _first = start(&f).await;
        let e = ControlServer::start(&f.socket, f.settings.clone(), runtime(), security::discard()).await.unwrap_err();
        assert!(matches!(e, ControlError::AlreadyRunning { .. }), "{e:?}");
        assert!(e.to_string().contains("another agent is running"), "{e}");
        assert!(request(&f.socket, &Request::Status).await.unwrap().ok, "the first one still serves");
    }

    #[tokio::test]
    async fn a_shared_directory_or_a_non_socket_file_is_refused() {
        let f = fixture();
        let dir = f.socket.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ControlServer::start(&f.socket, f.settings.clone(), runtime(), security::discard()).await.unwrap_err();
        assert!(e.to_string().contains("accessible to other users (mode 0755)"), "{e}");
        assert_eq!(
            std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
            0o755,
            "an existing directory is never chmod-ed"
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(&f.socket, "not a socket").unwrap();
        let e = ControlServer::start(&f.socket, f.settings.clone(), runtime(), security::discard()).await.unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&f.socket).unwrap(), "not a socket");
    }

    #[tokio::test]
    async fn refused_peer_gets_an_error_and_a_security_note() {
        let f = fixture();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink: SecuritySink = {
            let notes = notes.clone();
            Arc::new(move |n| notes.lock().unwrap().push(n))
        };
        // The tests may run as root, whom the real check admits: deny all.
        let _server =
            ControlServer::start_with(&f.socket, f.settings.clone(), runtime(), sink, |_, _| false).await.unwrap();
        let r = request(&f.socket, &Request::SetLevel(Level::Full)).await.unwrap();
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("permission denied"));
        let notes = notes.lock().unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].kind, "control_refused");
        assert_eq!(notes[0].outcome, "refused");
        assert!(notes[0].detail.contains("uid"), "{}", notes[0].detail);
        assert_eq!(f.settings.effective().level.value, Level::Enhanced, "nothing changed");
    }

    #[test]
    fn only_the_same_uid_or_root_is_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }

    #[test]
    fn requests_round_trip_and_accept_level_names() {
        for r in [Request::Status, Request::SetLevel(Level::Full), Request::SetEnabled(false), Request::SetUsage(true)]
        {
            assert_eq!(parse_request(r.to_line().as_bytes()).unwrap(), r);
        }
        assert_eq!(Request::SetLevel(Level::Basic).to_line(), "{\"v\":1,\"op\":\"set_level\",\"level\":1}\n");
        assert_eq!(
            parse_request(br#"{"v":1,"op":"set_level","level":"security"}"#).unwrap(),
            Request::SetLevel(Level::Security)
        );
        assert_eq!(parse_request(b"{\"op\":\"status\",\"v\":1}\r\n").unwrap(), Request::Status);
    }

    #[test]
    fn responses_serialise_as_documented() {
        let e = Response::error("nope");
        assert_eq!(String::from_utf8(e.to_line()).unwrap(), "{\"v\":1,\"ok\":false,\"error\":\"nope\"}\n");
        let dir = tempfile::tempdir().unwrap();
        let t = TelemetrySettings { policy_file: dir.path().join("p.toml"), ..Default::default() };
        let settings = SettingsHandle::open(dir.path(), &t).unwrap().effective();
        let ok = Response::ok(Status { settings, runtime: Some(RuntimeStatus::default()) });
        let v: Value = serde_json::from_slice(&ok.to_line()).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["status"]["level"], serde_json::json!({"value": 2, "origin": "default"}));
        assert_eq!(v["status"]["policy_error"], Value::Null);
        assert_eq!(v["status"]["runtime"]["queued_events"], 0);
        assert_eq!(parse_response(&ok.to_line()).unwrap(), ok);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_request_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn json_like_requests_never_panic_the_parser(
            v in prop_oneof![Just("1".to_string()), Just("2".to_string()), Just("\"1\"".to_string()), Just("1.0".to_string()), Just("-1".to_string())],
            op in prop_oneof![Just("status"), Just("set_level"), Just("set_enabled"), Just("set_usage"), Just("x")],
            key in "[a-z]{0,8}",
            val in prop_oneof![Just("0".to_string()), Just("4".to_string()), Just("true".to_string()), Just("\"full\"".to_string()), Just("null".to_string()), Just("1e999".to_string()), Just("[[[]]]".to_string()), Just("18446744073709551616".to_string())],
        ) {
            let line = format!("{{\"v\":{v},\"op\":\"{op}\",\"{key}\":{val}}}");
            let _ = parse_request(line.as_bytes());
        }
    }
}
