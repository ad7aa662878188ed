//! Access-control and audit commands: principals, tokens, roles, support
//! cases, the lockbox, and the audit log (read over the API; verified and
//! proven offline from the log files and the public key alone). Also the
//! TLS lifecycle commands: server key rotation (offline, on the data dir),
//! an agent's identity refresh, and listing and revoking agents; and a
//! workspace's server-side redaction policy and counts.

use crate::client::{Client, ConnArgs};
use crate::output::Output;
use crate::{enc, print_value};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use custos_model::api::*;
use custos_model::{ServiceRole, WorkspaceRole};
use std::path::PathBuf;

/// `custos principal ...`
#[derive(Subcommand, Debug)]
pub enum PrincipalCmd {
    /// Create a principal; prints its `id` and its first `token` (shown once).
    Create {
        /// Unique name.
        name: String,
        /// Service role for the service's own staff.
        #[arg(long, value_parser = parse_service_role)]
        service_role: Option<ServiceRole>,
        /// Lifetime of the token (e.g. 90d, 12h); default: no expiry.
        #[arg(long, value_parser = parse_duration_secs)]
        token_expires_in: Option<u64>,
    },
    /// List principals (service admins).
    List,
}

/// `custos token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token for yourself, or (admins) for `--principal`; prints its `id` and `token`.
    Create {
        /// Principal id or name (service admins only).
        #[arg(long)]
        principal: Option<String>,
        /// Lifetime (e.g. 30d, 8h); default: no expiry.
        #[arg(long, value_parser = parse_duration_secs)]
        expires_in: Option<u64>,
    },
    /// List your tokens (never the secrets).
    List,
    /// Revoke a token by id (yours, or any as a service admin).
    Revoke {
        /// Token id.
        id: String,
    },
}

/// `custos role ...`
#[derive(Subcommand, Debug)]
pub enum RoleCmd {
    /// Grant a workspace role (owner, contributor, reader, auditor).
    Grant {
        /// Principal id or name.
        principal: String,
        /// Role.
        #[arg(value_parser = parse_workspace_role)]
        role: WorkspaceRole,
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// Revoke a workspace role.
    Revoke {
        /// Principal id or name.
        principal: String,
        /// Role.
        #[arg(value_parser = parse_workspace_role)]
        role: WorkspaceRole,
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// List a workspace's role bindings.
    List {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
}

/// `custos case ...`
#[derive(Subcommand, Debug)]
pub enum CaseCmd {
    /// Open a support case on a workspace (owner or support); prints its `id`.
    Open {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
        /// Title.
        #[arg(long)]
        title: String,
    },
    /// Close a case; every access grant on it ends.
    Close {
        /// Case id.
        id: String,
    },
    /// List the cases you can see.
    List {
        /// Only this workspace.
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Show one case.
    Show {
        /// Case id.
        id: String,
    },
}

/// `custos access ...`
#[derive(Subcommand, Debug)]
pub enum AccessCmd {
    /// Ask for read access to a case's workspace (support); prints the request `id`.
    Request {
        /// Case id.
        #[arg(long)]
        case: String,
        /// How long (default 8h, at most 7d).
        #[arg(long, value_parser = parse_duration_secs)]
        duration: Option<u64>,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// List a workspace's access requests and grants.
    List {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// Show one request.
    Show {
        /// Request id.
        id: String,
    },
    /// Approve a pending request (workspace owners).
    Approve {
        /// Request id.
        id: String,
    },
    /// Deny a pending request (workspace owners).
    Deny {
        /// Request id.
        id: String,
    },
}

/// `custos workspace redaction-policy ...`
#[derive(Subcommand, Debug)]
pub enum RedactionPolicyCmd {
    /// Show the workspace's server-side redaction policy (owners, auditors,
    /// service admins). As a table: the policy's TOML, with what it is in
    /// comments (so the output can be edited and set again).
    Show {
        /// Workspace id.
        id: String,
    },
    /// Replace it (workspace owners): the TOML from --file (or standard
    /// input), checked by the server with the redaction engine; a policy it
    /// refuses is not stored and the engine's message is printed. Applies to
    /// every batch received afterwards. Prints the new policy's record.
    Set {
        /// Workspace id.
        id: String,
        /// Policy file (TOML, see docs/REDACTION.md); `-` or absent: standard input.
        #[arg(long, conflicts_with = "default")]
        file: Option<PathBuf>,
        /// Go back to the default policy.
        #[arg(long)]
        default: bool,
    },
}

/// `custos key ...`
#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// The workspace's key versions and the segments still to rewrap.
    Status {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// Make a new key version current (owners); older segments are
    /// rewrapped in the background, old versions kept until then.
    Rotate {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// Revoke the workspace's keys (owners): its data is unreadable and
    /// ingest refused at once, until `restore`.
    Revoke {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// Restore revoked keys (owners).
    Restore {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
}

pub async fn key(conn: &ConnArgs, out: Output, cmd: KeyCmd) -> Result<()> {
    let c = client(conn)?;
    let r: KeyStatus = match cmd {
        KeyCmd::Status { workspace } => c.get(&format!("/v1/workspaces/{}/keys", enc(&workspace))).await?,
        KeyCmd::Rotate { workspace } => c.post(&format!("/v1/workspaces/{}/keys/rotate", enc(&workspace)), &serde_json::json!({})).await?,
        KeyCmd::Revoke { workspace } => c.post(&format!("/v1/workspaces/{}/keys/revoke", enc(&workspace)), &serde_json::json!({})).await?,
        KeyCmd::Restore { workspace } => c.post(&format!("/v1/workspaces/{}/keys/restore", enc(&workspace)), &serde_json::json!({})).await?,
    };
    match out {
        Output::Json => print_value(out, &r),
        _ => {
            println!("workspace {}: {}", r.workspace_id, r.provider);
            for v in &r.versions {
                println!("  {} v{}  {:<8} {}", v.key_id, v.version, v.state, v.created_at.as_deref().unwrap_or("-"));
            }
            println!("  segments: {}, waiting for a rewrap under the active key: {}", r.segments, r.segments_pending_rewrap);
            Ok(())
        }
    }
}

/// `custos retention ...`
#[derive(Subcommand, Debug)]
pub enum RetentionCmd {
    /// The periods in force per table, the plan, the lock and pending
    /// reductions.
    Show {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// Change the workspace default (or, with --table, one table's period)
    /// (owners). A lengthening applies at once; a reduction after the grace
    /// period (cancellable) unless --now. Locked workspaces refuse reductions.
    Set {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
        /// The table; absent for the workspace default.
        #[arg(long)]
        table: Option<String>,
        /// The new period, days.
        #[arg(long)]
        days: u32,
        /// Apply a reduction at once, without the grace period.
        #[arg(long)]
        now: bool,
    },
    /// Cancel a pending reduction (owners).
    Cancel {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
        /// The table; absent for the workspace default.
        #[arg(long)]
        table: Option<String>,
    },
    /// The workspace's deleted segments, newest first (owners, auditors).
    Deletions {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
        /// Most records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Run the sweeper now (service admins): apply due reductions, roll up
    /// and drop expired segments.
    Sweep,
}

pub async fn retention(conn: &ConnArgs, out: Output, cmd: RetentionCmd) -> Result<()> {
    let c = client(conn)?;
    match cmd {
        RetentionCmd::Show { workspace } => {
            let r: RetentionInfo = c.get(&format!("/v1/workspaces/{}/retention", enc(&workspace))).await?;
            if out == Output::Json {
                return print_value(out, &r);
            }
            println!(
                "workspace {}: plan {} (at most {} days; rollups {} days), default {} days, reductions wait {} days",
                r.workspace_id, r.plan, r.max_days, r.rollup_days, r.default_days, r.grace_days
            );
            if let Some(l) = &r.lock {
                println!("LOCKED since {}: {} (nothing is deleted while locked)", l.locked_at, l.reason);
            }
            println!("{:<28} {:>6}  {:<9} keeps rows since", "table", "days", "from");
            for t in &r.tables {
                println!("{:<28} {:>6}  {:<9} {}", t.table, t.days, t.source, t.keeps_since);
            }
            for p in &r.pending {
                println!(
                    "pending: {} {} -> {} days on {} (change {}; cancel with `custos retention cancel`)",
                    p.table.as_deref().unwrap_or("default"),
                    p.from_days,
                    p.to_days,
                    p.effective_at,
                    p.id
                );
            }
            Ok(())
        }
        RetentionCmd::Set { workspace, table, days, now } => {
            let r: RetentionChangeInfo = c
                .put(&format!("/v1/workspaces/{}/retention", enc(&workspace)), &RetentionRequest { table, days, now })
                .await?;
            print_change(out, &r)
        }
        RetentionCmd::Cancel { workspace, table } => {
            let r: RetentionChangeInfo = c
                .post(&format!("/v1/workspaces/{}/retention/cancel", enc(&workspace)), &RetentionCancelRequest { table })
                .await?;
            print_change(out, &r)
        }
        RetentionCmd::Deletions { workspace, limit } => {
            let r: Vec<DeletionInfo> = c.get(&format!("/v1/workspaces/{}/deletions?limit={limit}", enc(&workspace))).await?;
            if out == Output::Json {
                return print_value(out, &r);
            }
            println!("{:<6} {:<24} {:<10} {:>10} {:>12}  {:<26} {:<26} object removed", "seq", "table", "reason", "rows", "bytes", "rows from", "deleted at");
            for d in &r {
                println!(
                    "{:<6} {:<24} {:<10} {:>10} {:>12}  {:<26} {:<26} {}",
                    d.seq, d.table, d.reason, d.rows, d.bytes, d.min_time, d.deleted_at, d.object_deleted_at.as_deref().unwrap_or("pending")
                );
            }
            Ok(())
        }
        RetentionCmd::Sweep => {
            let r: SweepReport = c.post("/v1/retention/sweep", &serde_json::json!({})).await?;
            if out == Output::Json {
                return print_value(out, &r);
            }
            println!(
                "{} segments ({} rows, {} bytes) dropped in {} workspaces ({} locked, left alone); {} changes applied; {} rollup rows; {} objects removed, {} failed; {} ms",
                r.segments_deleted, r.rows_deleted, r.bytes_deleted, r.workspaces, r.workspaces_locked, r.changes_applied, r.rollup_rows, r.objects_removed, r.object_errors, r.elapsed_ms
            );
            Ok(())
        }
    }
}

fn print_change(out: Output, r: &RetentionChangeInfo) -> Result<()> {
    if out == Output::Json {
        return print_value(out, r);
    }
    let scope = r.table.as_deref().unwrap_or("default");
    match r.state.as_str() {
        "pending" => println!(
            "{scope}: {} -> {} days takes effect on {} (change {}; `custos retention cancel` until then)",
            r.from_days, r.to_days, r.effective_at, r.id
        ),
        state => println!("{scope}: {} -> {} days {state} ({})", r.from_days, r.to_days, r.effective_at),
    }
    Ok(())
}

/// `custos purge ...`
#[derive(Subcommand, Debug)]
pub enum PurgeCmd {
    /// Remove the rows matching a predicate (owners). Prints the job id;
    /// the rows leave every query at once and storage when the job runs
    /// (after the cancel window, default 24 h, unless --now).
    Create {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
        /// A table (repeat for several); none: every table.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// `COLUMN = 'v'` or `COLUMN IN ('a', 'b')`.
        #[arg(long = "where", conflicts_with_all = ["host", "installation_id"])]
        predicate: Option<String>,
        /// Shorthand: `host = 'H'` in every table.
        #[arg(long, conflicts_with = "installation_id")]
        host: Option<String>,
        /// Shorthand: `installation_id = 'X'` in every table.
        #[arg(long)]
        installation_id: Option<String>,
        /// Print how many rows would be removed, per table; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run at once (no cancel window).
        #[arg(long)]
        now: bool,
    },
    /// A job's state, and its signed receipt once completed.
    Status {
        /// Job id.
        job: String,
        /// Also write the signed receipt to this file (for `custos purge verify`).
        #[arg(long)]
        receipt: Option<std::path::PathBuf>,
    },
    /// A workspace's purge jobs, newest first (owners, auditors).
    List {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// Cancel a pending job (owners): its rows are visible again.
    Cancel {
        /// Job id.
        job: String,
    },
    /// Run a failed job again, at once (owners).
    Retry {
        /// Job id.
        job: String,
    },
    /// Check a signed receipt offline against the server's public key.
    Verify {
        /// The receipt file (`custos purge status JOB --receipt FILE`).
        file: std::path::PathBuf,
        /// The server's `audit.pub` (or 64 hex digits of the key).
        #[arg(long)]
        public_key: std::path::PathBuf,
    },
}

fn quote_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

pub async fn purge(conn: &ConnArgs, out: Output, cmd: PurgeCmd) -> Result<()> {
    if let PurgeCmd::Verify { file, public_key } = &cmd {
        return verify_receipt(out, file, public_key);
    }
    let c = client(conn)?;
    match cmd {
        PurgeCmd::Create { workspace, tables, predicate, host, installation_id, dry_run, now } => {
            let (tables, predicate) = match (predicate, host, installation_id) {
                (Some(p), None, None) => (tables, p),
                (None, Some(h), None) if tables.is_empty() => (vec![], format!("host = {}", quote_literal(&h))),
                (None, None, Some(i)) if tables.is_empty() => (vec![], format!("installation_id = {}", quote_literal(&i))),
                (None, _, _) if !tables.is_empty() => anyhow::bail!("--host and --installation-id cover every table; use --where with --table"),
                _ => anyhow::bail!("say what to purge: --where \"COLUMN = 'v'\", --host H or --installation-id X"),
            };
            let path = format!("/v1/workspaces/{}/purges", enc(&workspace));
            let req = PurgeRequest { tables, predicate, dry_run, now };
            if dry_run {
                let r: PurgeDryRun = c.post(&path, &req).await?;
                if out == Output::Json {
                    return print_value(out, &r);
                }
                println!("{} (dry run: nothing changed)", r.predicate);
                println!("{:<28} {:>12} {:>10} {:>10} {:>10}", "table", "rows", "segments", "read", "skipped");
                for t in &r.tables {
                    println!("{:<28} {:>12} {:>10} {:>10} {:>10}", t.table, t.rows, t.segments, t.segments_read, t.segments_skipped);
                }
                println!("total rows that would be removed: {}", r.rows);
                return Ok(());
            }
            let r: PurgeInfo = c.post(&path, &req).await?;
            print_purge(out, &r)
        }
        PurgeCmd::Status { job, receipt } => {
            let r: PurgeInfo = c.get(&format!("/v1/purges/{}", enc(&job))).await?;
            if let Some(path) = receipt {
                let Some(signed) = &r.receipt else { anyhow::bail!("purge job {} is {}: it has no receipt yet", r.id, r.state) };
                std::fs::write(&path, serde_json::to_vec_pretty(signed)?)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
            print_purge(out, &r)
        }
        PurgeCmd::List { workspace } => {
            let r: Vec<PurgeInfo> = c.get(&format!("/v1/workspaces/{}/purges", enc(&workspace))).await?;
            if out == Output::Json {
                return print_value(out, &r);
            }
            for j in &r {
                println!("{}  {:<9}  {}  {}", j.id, j.state, j.created_at, j.predicate);
            }
            Ok(())
        }
        PurgeCmd::Cancel { job } => {
            let r: PurgeInfo = c.post(&format!("/v1/purges/{}/cancel", enc(&job)), &serde_json::json!({})).await?;
            print_purge(out, &r)
        }
        PurgeCmd::Retry { job } => {
            let r: PurgeInfo = c.post(&format!("/v1/purges/{}/retry", enc(&job)), &serde_json::json!({})).await?;
            print_purge(out, &r)
        }
        PurgeCmd::Verify { .. } => Ok(()),
    }
}

fn print_purge(out: Output, r: &PurgeInfo) -> Result<()> {
    if out == Output::Json {
        return print_value(out, r);
    }
    let scope = if r.tables.is_empty() { "every table".to_string() } else { r.tables.join(", ") };
    println!("purge {} ({}): {} in {}", r.id, r.state, r.predicate, scope);
    println!("  accepted {}; runs at {}", r.created_at, r.not_before);
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
    if let Some(s) = &r.receipt {
        let x = &s.receipt;
        println!(
            "  completed {}: {} rows removed; {} segments rewritten, {} deleted; {} read, {} ruled out by their index",
            x.completed_at, x.rows_removed, x.segments_rewritten, x.segments_deleted, x.segments_read, x.segments_skipped
        );
        for e in &x.segments {
            println!(
                "  {} {}: {} of {} rows removed, {} -> {}",
                e.table,
                e.segment,
                e.rows_removed,
                e.rows_before,
                &e.old_sha256[..16.min(e.old_sha256.len())],
                e.new_sha256.as_deref().map_or("(deleted)", |h| &h[..16.min(h.len())])
            );
        }
        println!("  signed by {}", s.public_key);
    }
    Ok(())
}

fn verify_receipt(out: Output, file: &std::path::Path, public_key: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let signed: SignedReceipt =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a signed purge receipt: {e}", file.display()))?;
    let key = custos_audit::read_public_key(public_key)?;
    custos_server::purge::verify(&signed, &key).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let r = &signed.receipt;
    if out == Output::Json {
        return print_value(out, &serde_json::json!({"valid": true, "job": r.job, "rows_removed": r.rows_removed, "segments": r.segments.len()}));
    }
    println!(
        "receipt valid: purge {} of workspace {} ({}) removed {} rows from {} segments, completed {}",
        r.job,
        r.workspace_id,
        r.predicate,
        r.rows_removed,
        r.segments.len(),
        r.completed_at
    );
    Ok(())
}

/// `custos export ...`
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub cmd: Option<ExportCmd>,
    /// Workspace id.
    #[arg(long)]
    pub workspace: Option<String>,
    /// The table.
    #[arg(long)]
    pub table: Option<String>,
    /// The directory to write (created; must be empty if it exists).
    #[arg(long)]
    pub to: Option<std::path::PathBuf>,
}

/// `custos export verify DIR`.
#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// Check an export directory: the manifest's signature, every file's
    /// hash and size, nothing missing or added, every segment readable.
    Verify {
        /// The export directory.
        dir: std::path::PathBuf,
        /// The server's `audit.pub` (or 64 hex digits); without it only the
        /// key the manifest names is checked.
        #[arg(long)]
        public_key: Option<std::path::PathBuf>,
    },
}

pub async fn export(conn: &ConnArgs, out: Output, a: ExportArgs) -> Result<()> {
    if let Some(ExportCmd::Verify { dir, public_key }) = a.cmd {
        return verify_export(out, &dir, public_key.as_deref());
    }
    let (Some(workspace), Some(table), Some(to)) = (a.workspace, a.table, a.to) else {
        anyhow::bail!("custos export needs --workspace, --table and --to (or `custos export verify DIR`)");
    };
    if to.exists() && std::fs::read_dir(&to).map(|mut d| d.next().is_some()).unwrap_or(true) {
        anyhow::bail!("{} exists and is not an empty directory", to.display());
    }
    std::fs::create_dir_all(&to).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", to.display()))?;
    let c = client(conn)?;
    let m: SignedManifest = c.post(&format!("/v1/workspaces/{}/exports", enc(&workspace)), &ExportRequest { table }).await?;
    let bar = indicatif::ProgressBar::new(m.manifest.files.len() as u64 + 1);
    if out == Output::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let names = m.manifest.files.iter().map(|f| f.name.clone()).chain(std::iter::once("manifest.json".to_string()));
    for name in names {
        let bytes = c
            .get_bytes(&format!("/v1/workspaces/{}/exports/{}/files/{}", enc(&workspace), enc(&m.manifest.export), enc(&name)))
            .await?;
        let p = to.join(&name);
        std::fs::write(&p, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    verify_export(out, &to, None)
}

fn verify_export(out: Output, dir: &std::path::Path, public_key: Option<&std::path::Path>) -> Result<()> {
    let key = public_key.map(custos_audit::read_public_key).transpose()?;
    let v = custos_server::export::verify_dir(dir, key.as_ref()).map_err(|e| anyhow::anyhow!("export verification failed: {e}"))?;
    let m = &v.manifest;
    if out == Output::Json {
        return print_value(
            out,
            &serde_json::json!({"valid": true, "export": m.export, "table": m.table, "files": m.files.len(), "rows": m.rows, "key_checked": v.key_checked}),
        );
    }
    println!(
        "export {} of {} (workspace {}): {} files, {} rows, every hash matches, signature valid{}",
        m.export,
        m.table,
        m.workspace_id,
        m.files.len(),
        m.rows,
        if v.key_checked { "" } else { " (under the key the manifest names: pass --public-key DATA_DIR/audit.pub to check it is the server's)" }
    );
    Ok(())
}

/// `custos workspace lock ID --reason T`.
pub async fn lock(conn: &ConnArgs, out: Output, id: &str, reason: Option<String>) -> Result<()> {
    let c = client(conn)?;
    let r: WorkspaceInfo = match reason {
        Some(reason) => c.post(&format!("/v1/workspaces/{}/lock", enc(id)), &LockRequest { reason }).await?,
        None => c.post(&format!("/v1/workspaces/{}/unlock", enc(id)), &serde_json::json!({})).await?,
    };
    if out == Output::Json {
        return print_value(out, &r);
    }
    match &r.lock {
        Some(l) => println!("workspace {} locked: {} (since {})", r.id, l.reason, l.locked_at),
        None => println!("workspace {} unlocked", r.id),
    }
    Ok(())
}

/// `custos audit ...`
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// A workspace's audit records (owners, auditors, service admins).
    Log {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
        /// Only records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Most records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Verify the whole log offline: chain, every checkpoint's signature and
    /// Merkle root. Names the first bad record on tampering.
    Verify(OfflineArgs),
    /// Inclusion proof of record SEQ in a signed checkpoint.
    Proof {
        /// Record sequence number.
        seq: u64,
        /// Tree size of a signed checkpoint; default: the latest checkpoint.
        #[arg(long)]
        size: Option<u64>,
        #[command(flatten)]
        offline: OfflineArgs,
    },
    /// Consistency proof between two signed checkpoints, by size (the older
    /// log is a prefix of the newer).
    Consistency {
        /// Older tree size.
        old: u64,
        /// Newer tree size.
        new: u64,
        #[command(flatten)]
        offline: OfflineArgs,
    },
}

/// Where the audit log and its public key are.
#[derive(clap::Args, Debug)]
pub struct OfflineArgs {
    /// Audit log directory (default: ./custos-data/audit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The server's audit public key (default: the log directory's parent /audit.pub).
    #[arg(long)]
    pub public_key: Option<PathBuf>,
}

impl OfflineArgs {
    fn resolve(&self) -> (PathBuf, PathBuf) {
        let dir = self.dir.clone().unwrap_or_else(|| PathBuf::from("custos-data/audit"));
        let key = self.public_key.clone().unwrap_or_else(|| {
            dir.parent().map(|p| p.join(custos_audit::PUBLIC_KEY_FILE)).unwrap_or_else(|| PathBuf::from(custos_audit::PUBLIC_KEY_FILE))
        });
        (dir, key)
    }
}

/// The signed checkpoint of `size` (the latest when None), its signature
/// checked with the public key: proofs are checked against its root, never
/// against a root recomputed from the same (possibly altered) files.
fn signed_checkpoint(dir: &std::path::Path, size: Option<u64>, key: &custos_audit::VerifyingKey) -> Result<custos_audit::Checkpoint> {
    let cp = match size {
        None => custos_audit::latest_checkpoint(dir)?.context("the audit log has no checkpoint yet")?,
        Some(n) => custos_audit::find_checkpoint(dir, n)?
            .with_context(|| format!("no checkpoint of size {n}: proofs are given against signed checkpoint sizes (see `custos audit verify`)"))?,
    };
    if !cp.verify(key) {
        bail!("the checkpoint of size {} has an invalid signature", cp.size);
    }
    Ok(cp)
}

/// `custos server rotate-key ...`
#[derive(clap::Args, Debug)]
pub struct RotateKeyArgs {
    /// The server's data directory (default: the configuration's, else ./custos-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Server configuration file (TOML) naming the data directory.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub action: RotateAction,
}

/// What `rotate-key` does.
#[derive(Subcommand, Debug)]
pub enum RotateAction {
    /// Create the next key and certificate (server.next.key, 0600, and
    /// server.next.crt); a running server publishes the new pin to its agents
    /// at once. Prints the pins.
    Stage {
        /// Discard a next key that is already staged (agents that learned
        /// its pin must then learn the new one before activation).
        #[arg(long)]
        replace: bool,
    },
    /// Make the staged key current (the old pair is kept as server.prev.*).
    /// Takes effect when the server next starts; until then it keeps serving
    /// the old key. Prints the pins.
    Activate,
    /// Show the pins of the current, next and previous keys.
    Status,
}

/// `custos server rotate-key`: works on the data directory, with or without
/// a running server.
pub fn rotate_key(out: Output, args: RotateKeyArgs) -> Result<()> {
    let dir = match (&args.data_dir, &args.config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => custos_server::ServerConfig::from_path(c)?.data_dir,
        (None, None) => custos_server::ServerConfig::default().data_dir,
    };
    let r = match args.action {
        RotateAction::Stage { replace } => custos_server::rotate_key_stage(&dir, replace),
        RotateAction::Activate => custos_server::rotate_key_activate(&dir),
        RotateAction::Status => custos_server::rotate_key_status(&dir),
    }
    .with_context(|| format!("rotate-key on data dir {}", dir.display()))?;
    print_value(out, &r)
}

/// `custos agent refresh-identity`: [`custos_agent::identity::maintain`] once.
pub async fn refresh_identity(out: Output, state_dir: &std::path::Path) -> Result<()> {
    use custos_agent::identity;
    let (id, client) = identity::load(state_dir).with_context(|| format!("agent state dir {}", state_dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let m = identity::maintain(state_dir, &id, &client, now)
        .await
        .with_context(|| format!("refreshing the identity of agent {} at {}", id.agent_id, id.server))?;
    let renew_after =
        identity::renew_after(&m.identity).and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
    let v = serde_json::json!({
        "agent_id": m.identity.agent_id,
        "server": m.identity.server,
        "pins_changed": m.pins_changed,
        "renewed": m.renewed,
        "pins": m.identity.pins,
        "cert_not_before": m.identity.cert_not_before,
        "cert_not_after": m.identity.cert_not_after,
        "renew_after": renew_after,
        "pins_ignored": m.pins_ignored,
        "renewal_error": m.renewal_error,
    });
    print_value(out, &v)?;
    if let Some(e) = m.renewal_error {
        bail!("the certificate renewal failed (the current certificate stays in use): {e}");
    }
    Ok(())
}

/// `custos agent list --workspace ID`.
pub async fn list_agents(conn: &ConnArgs, out: Output, workspace: &str) -> Result<()> {
    print_value(out, &client(conn)?.get::<Vec<AgentInfo>>(&format!("/v1/workspaces/{}/agents", enc(workspace))).await?)
}

/// `custos agent revoke --workspace ID AGENT_ID`.
pub async fn revoke_agent(conn: &ConnArgs, out: Output, workspace: &str, agent: &str) -> Result<()> {
    let r: AgentInfo = client(conn)?
        .post(&format!("/v1/workspaces/{}/agents/{}/revoke", enc(workspace), enc(agent)), &serde_json::json!({}))
        .await?;
    print_value(out, &r)
}

fn parse_service_role(s: &str) -> Result<ServiceRole, String> {
    s.parse().map_err(|e: custos_model::RoleParseError| e.to_string())
}

fn parse_workspace_role(s: &str) -> Result<WorkspaceRole, String> {
    s.parse().map_err(|e: custos_model::RoleParseError| e.to_string())
}

/// `90`, `90s`, `30m`, `8h`, `7d` → seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (examples: 90s, 30m, 8h, 7d)"))?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("duration {s:?} must be positive and not absurdly long"))
}

fn client(conn: &ConnArgs) -> Result<Client> {
    Client::from_args(conn)
}

pub async fn principal(conn: &ConnArgs, out: Output, cmd: PrincipalCmd) -> Result<()> {
    let c = client(conn)?;
    match cmd {
        PrincipalCmd::Create { name, service_role, token_expires_in } => {
            let r: CreatePrincipalResponse = c
                .post("/v1/principals", &CreatePrincipalRequest { name, service_role, token_expires_in_secs: token_expires_in })
                .await?;
            print_value(out, &r)
        }
        PrincipalCmd::List => print_value(out, &c.get::<Vec<PrincipalInfo>>("/v1/principals").await?),
    }
}

pub async fn whoami(conn: &ConnArgs, out: Output) -> Result<()> {
    print_value(out, &client(conn)?.get::<WhoAmI>("/v1/whoami").await?)
}

pub async fn token(conn: &ConnArgs, out: Output, cmd: TokenCmd) -> Result<()> {
    let c = client(conn)?;
    match cmd {
        TokenCmd::Create { principal, expires_in } => {
            let body = CreateTokenRequest { expires_in_secs: expires_in };
            let path = match principal {
                Some(p) => format!("/v1/principals/{}/tokens", enc(&p)),
                None => "/v1/tokens".to_string(),
            };
            print_value(out, &c.post::<_, CreateTokenResponse>(&path, &body).await?)
        }
        TokenCmd::List => print_value(out, &c.get::<Vec<TokenInfo>>("/v1/tokens").await?),
        TokenCmd::Revoke { id } => print_value(out, &c.delete::<TokenInfo>(&format!("/v1/tokens/{}", enc(&id))).await?),
    }
}

pub async fn role(conn: &ConnArgs, out: Output, cmd: RoleCmd) -> Result<()> {
    let c = client(conn)?;
    match cmd {
        RoleCmd::Grant { principal, role, workspace } => {
            let r: RoleBindingInfo =
                c.post(&format!("/v1/workspaces/{}/roles", enc(&workspace)), &GrantRoleRequest { principal, role }).await?;
            print_value(out, &r)
        }
        RoleCmd::Revoke { principal, role, workspace } => {
            let r: serde_json::Value =
                c.delete(&format!("/v1/workspaces/{}/roles/{}/{}", enc(&workspace), enc(&principal), role)).await?;
            print_value(out, &r)
        }
        RoleCmd::List { workspace } => {
            print_value(out, &c.get::<Vec<RoleBindingInfo>>(&format!("/v1/workspaces/{}/roles", enc(&workspace))).await?)
        }
    }
}

pub async fn case(conn: &ConnArgs, out: Output, cmd: CaseCmd) -> Result<()> {
    let c = client(conn)?;
    match cmd {
        CaseCmd::Open { workspace, title } => {
            let r: CaseInfo = c.post(&format!("/v1/workspaces/{}/cases", enc(&workspace)), &OpenCaseRequest { title }).await?;
            print_value(out, &r)
        }
        CaseCmd::Close { id } => {
            print_value(out, &c.post::<_, CaseInfo>(&format!("/v1/cases/{}/close", enc(&id)), &serde_json::json!({})).await?)
        }
        CaseCmd::List { workspace } => {
            let path = match workspace {
                Some(w) => format!("/v1/cases?workspace={}", enc(&w)),
                None => "/v1/cases".into(),
            };
            print_value(out, &c.get::<Vec<CaseInfo>>(&path).await?)
        }
        CaseCmd::Show { id } => print_value(out, &c.get::<CaseInfo>(&format!("/v1/cases/{}", enc(&id))).await?),
    }
}

pub async fn access(conn: &ConnArgs, out: Output, cmd: AccessCmd) -> Result<()> {
    let c = client(conn)?;
    match cmd {
        AccessCmd::Request { case, duration, reason } => {
            let r: AccessRequestInfo = c
                .post(
                    &format!("/v1/cases/{}/access-requests", enc(&case)),
                    &AccessRequestRequest { duration_secs: duration, reason },
                )
                .await?;
            print_value(out, &r)
        }
        AccessCmd::List { workspace } => print_value(
            out,
            &c.get::<Vec<AccessRequestInfo>>(&format!("/v1/workspaces/{}/access-requests", enc(&workspace))).await?,
        ),
        AccessCmd::Show { id } => {
            print_value(out, &c.get::<AccessRequestInfo>(&format!("/v1/access-requests/{}", enc(&id))).await?)
        }
        AccessCmd::Approve { id } => print_value(
            out,
            &c.post::<_, AccessRequestInfo>(&format!("/v1/access-requests/{}/approve", enc(&id)), &serde_json::json!({})).await?,
        ),
        AccessCmd::Deny { id } => print_value(
            out,
            &c.post::<_, AccessRequestInfo>(&format!("/v1/access-requests/{}/deny", enc(&id)), &serde_json::json!({})).await?,
        ),
    }
}

pub async fn lockbox(conn: &ConnArgs, out: Output, workspace: &str, state: &str) -> Result<()> {
    let enabled = match state {
        "on" => true,
        "off" => false,
        other => bail!("lockbox state must be on or off, not {other:?}"),
    };
    let r: WorkspaceInfo = client(conn)?.put(&format!("/v1/workspaces/{}/lockbox", enc(workspace)), &LockboxRequest { enabled }).await?;
    print_value(out, &r)
}

/// What the default redaction policy does (the engine's own summary).
const DEFAULT_POLICY_SUMMARY: &str = "# The default policy: no card number, password, secret or e-mail address is stored.\n\
# Card numbers, IBANs, SSNs, phone numbers, secrets and URLs with credentials become tags\n\
# (<CREDIT_CARD>); e-mail, IP and MAC addresses, host names and user names become keyed\n\
# pseudonyms. Set a policy to change it (docs/REDACTION.md).\n";

/// The policy as a people-readable text: comments, then the TOML.
fn redaction_policy_text(p: &RedactionPolicyInfo) -> String {
    let mut out = match (&p.updated_at, &p.updated_by) {
        (Some(at), Some(by)) => format!(
            "# workspace {}: {} redaction policy, revision {}, set {at} by {by}\n",
            p.workspace_id, p.source, p.revision
        ),
        _ => format!("# workspace {}: {} redaction policy, revision {}\n", p.workspace_id, p.source, p.revision),
    };
    match &p.policy {
        Some(text) => {
            out.push_str(text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        None => out.push_str(DEFAULT_POLICY_SUMMARY),
    }
    out
}

pub async fn redaction_policy(conn: &ConnArgs, out: Output, cmd: RedactionPolicyCmd) -> Result<()> {
    let r: RedactionPolicyInfo = match cmd {
        RedactionPolicyCmd::Show { id } => client(conn)?.get(&format!("/v1/workspaces/{}/redaction-policy", enc(&id))).await?,
        RedactionPolicyCmd::Set { id, file, default } => {
            let policy = if default {
                None
            } else {
                Some(match file.as_deref() {
                    Some(f) if f != std::path::Path::new("-") => {
                        std::fs::read_to_string(f).with_context(|| format!("cannot read policy file {}", f.display()))?
                    }
                    _ => {
                        use std::io::Read;
                        let mut text = String::new();
                        std::io::stdin().read_to_string(&mut text).context("cannot read the policy from standard input")?;
                        text
                    }
                })
            };
            let req = RedactionPolicyRequest { policy };
            client(conn)?.put(&format!("/v1/workspaces/{}/redaction-policy", enc(&id)), &req).await?
        }
    };
    match out {
        Output::Table => {
            print!("{}", redaction_policy_text(&r));
            Ok(())
        }
        _ => print_value(out, &r),
    }
}

pub async fn redactions(conn: &ConnArgs, out: Output, workspace: &str) -> Result<()> {
    let r: Vec<RedactionCountInfo> = client(conn)?.get(&format!("/v1/workspaces/{}/redactions", enc(workspace))).await?;
    print_value(out, &r)
}

pub async fn audit(conn: &ConnArgs, out: Output, cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::Log { workspace, since, limit } => {
            let mut path = format!("/v1/workspaces/{}/audit?limit={limit}", enc(&workspace));
            if let Some(s) = since {
                path.push_str(&format!("&since={}", enc(&s)));
            }
            let r: Vec<AuditEntry> = client(conn)?.get(&path).await?;
            print_value(out, &r)
        }
        AuditCmd::Verify(o) => {
            let (dir, key) = o.resolve();
            let key = custos_audit::read_public_key(&key).with_context(|| format!("audit public key {}", key.display()))?;
            let shown = dir.display().to_string();
            let r = tokio::task::spawn_blocking(move || custos_audit::verify(&dir, &key)).await??;
            let v = serde_json::json!({
                "dir": shown,
                "ok": true,
                "records": r.records_checked,
                "first_seq": r.first_seq,
                "last_seq": r.last_seq,
                "segments": r.segments_checked,
                "checkpoints": r.checkpoints_checked,
                "checkpoints_signature_only": r.checkpoints_signature_only,
                "last_checkpoint_size": r.last_checkpoint.as_ref().map(|c| c.size),
                "last_checkpoint_root": r.last_checkpoint.as_ref().map(|c| hex::encode(c.root)),
                "unsigned_records": r.unsigned_records,
                "incomplete_tail": r.incomplete_tail,
            });
            print_value(out, &v)
        }
        AuditCmd::Proof { seq, size, offline } => {
            let (dir, key) = offline.resolve();
            let key = custos_audit::read_public_key(&key).with_context(|| format!("audit public key {}", key.display()))?;
            let v = tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
                let cp = signed_checkpoint(&dir, size, &key)?;
                let proof = custos_audit::inclusion_proof(&dir, seq, Some(cp.size))?;
                if !custos_audit::verify_inclusion(&proof, &proof.leaf_hash, &cp.root) {
                    bail!("record {seq} is not included in the signed checkpoint of size {}: the log was altered", cp.size);
                }
                let mut v = serde_json::to_value(&proof)?;
                v["root"] = serde_json::json!(hex::encode(cp.root));
                v["checkpoint_time"] = serde_json::json!(cp.time);
                v["hashes"] = serde_json::json!(proof.path.len());
                v["verified"] = serde_json::json!(true);
                Ok(v)
            })
            .await??;
            print_value(out, &v)
        }
        AuditCmd::Consistency { old, new, offline } => {
            let (dir, key) = offline.resolve();
            let key = custos_audit::read_public_key(&key).with_context(|| format!("audit public key {}", key.display()))?;
            let v = tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
                let old_cp = signed_checkpoint(&dir, Some(old), &key)?;
                let new_cp = signed_checkpoint(&dir, Some(new), &key)?;
                let proof = custos_audit::consistency_proof(&dir, old, new)?;
                if !custos_audit::verify_consistency(&proof, &old_cp.root, &new_cp.root) {
                    bail!("the signed checkpoints of sizes {old} and {new} are not consistent: the log was rewritten");
                }
                let mut v = serde_json::to_value(&proof)?;
                v["old_root"] = serde_json::json!(hex::encode(old_cp.root));
                v["new_root"] = serde_json::json!(hex::encode(new_cp.root));
                v["hashes"] = serde_json::json!(proof.path.len());
                v["verified"] = serde_json::json!(true);
                Ok(v)
            })
            .await??;
            print_value(out, &v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("8h"), Ok(8 * 3600));
        assert_eq!(parse_duration_secs("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert!(parse_duration_secs("0h").is_err());
        assert!(parse_duration_secs("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn a_shown_redaction_policy_is_valid_toml_that_says_what_it_is() {
        let ws = custos_model::WorkspaceId::new();
        let default = RedactionPolicyInfo {
            workspace_id: ws,
            source: "default".into(),
            policy: None,
            revision: 0,
            updated_at: None,
            updated_by: None,
        };
        let text = redaction_policy_text(&default);
        assert!(text.starts_with(&format!("# workspace {ws}: default redaction policy, revision 0\n")), "{text}");
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
        let by = custos_model::PrincipalId::new();
        let custom = RedactionPolicyInfo {
            source: "custom".into(),
            policy: Some("[operators]\nCREDIT_CARD = \"drop_event\"".into()),
            revision: 3,
            updated_at: Some("2026-11-30T09:00:00Z".into()),
            updated_by: Some(by),
            ..default
        };
        let text = redaction_policy_text(&custom);
        assert!(text.contains(&format!("revision 3, set 2026-11-30T09:00:00Z by {by}")), "{text}");
        assert!(text.ends_with("CREDIT_CARD = \"drop_event\"\n"), "{text}");
        custos_redact::Policy::from_toml(&text).unwrap();
        custos_redact::Policy::from_toml(&redaction_policy_text(&RedactionPolicyInfo { policy: None, ..custom })).unwrap();
    }
}
