//! `custos`: the server, the agent, and every admin and operator command in
//! one binary.
#![forbid(unsafe_code)]

mod admin;
mod client;
mod deadletters;
mod output;
mod quickstart;
mod redact;
mod telemetry;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use client::{Client, ConnArgs};
use custos_model::api::*;
use output::Output;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "custos", version, about = "Governed telemetry and diagnostic logs: server, agent and admin CLI")]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the service (HTTPS API, ingest, query).
    Server(ServerArgs),
    /// Start a server, a demo workspace and an in-process agent, ship sample
    /// data, show example queries, and keep serving.
    Quickstart(quickstart::Args),
    /// Manage workspaces.
    #[command(subcommand)]
    Workspace(WorkspaceCmd),
    /// Run SQL over one workspace's tables.
    Query {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
        /// One SQL query.
        sql: String,
    },
    /// The host agent.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Principals (people and service accounts) and their first tokens.
    #[command(subcommand)]
    Principal(admin::PrincipalCmd),
    /// Your API tokens (admins: anyone's).
    #[command(subcommand)]
    Token(admin::TokenCmd),
    /// Workspace roles.
    #[command(subcommand)]
    Role(admin::RoleCmd),
    /// Support cases.
    #[command(subcommand)]
    Case(admin::CaseCmd),
    /// Case-scoped support access (the customer lockbox).
    #[command(subcommand)]
    Access(admin::AccessCmd),
    /// The audit log: read, verify, prove.
    #[command(subcommand)]
    Audit(admin::AuditCmd),
    /// A workspace's encryption keys: status, rotate, revoke, restore.
    #[command(subcommand)]
    Key(admin::KeyCmd),
    /// Retention: periods per workspace and table, reductions with a grace
    /// period, deletion records, the sweeper.
    #[command(subcommand)]
    Retention(admin::RetentionCmd),
    /// Purge: remove rows matching a predicate (data subject requests), with
    /// a dry run, a cancel window and a signed receipt.
    #[command(subcommand)]
    Purge(admin::PurgeCmd),
    /// Export one table as segment files and a signed manifest of their
    /// hashes (`--workspace ID --table T --to DIR`), or check one
    /// (`custos export verify DIR`).
    Export(admin::ExportArgs),
    /// Who the token belongs to, and its roles.
    Whoami,
    /// This host's telemetry consent: status, level, enable, disable.
    #[command(subcommand)]
    Telemetry(telemetry::TelemetryCmd),
    /// This host's usage (billing) reporting, independent of telemetry.
    #[command(subcommand)]
    Usage(telemetry::UsageCmd),
    /// Redact personal data and secrets from standard input (text or JSON
    /// lines), print findings (--spans), or look up a pseudonym.
    Redact(redact::Args),
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Data directory (created and initialised on first start).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address (host:port); port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// Region this server stores data in.
    #[arg(long)]
    region: Option<String>,
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<ServerCmd>,
}

#[derive(Subcommand, Debug)]
enum ServerCmd {
    /// Rotate the server's TLS key without losing agents: `stage` a next key
    /// (running servers publish its pin to agents), `activate` it once agents
    /// learned it (effective at the next server start), `status`. See docs/TLS.md.
    RotateKey(admin::RotateKeyArgs),
}

#[derive(Subcommand, Debug)]
enum WorkspaceCmd {
    /// Create a workspace; prints its id, region and a single-use enrollment key.
    Create {
        /// Workspace name (unique).
        name: String,
        /// Region; must be the server's region.
        #[arg(long)]
        region: String,
        /// Default retention in days (the plan's default when absent).
        #[arg(long)]
        retention_days: Option<u32>,
        /// The plan (retention limits; the server's default plan when absent).
        #[arg(long)]
        plan: Option<String>,
    },
    /// Lock the workspace (owners): purge, table deletion and retention
    /// reductions are refused, and nothing of it is deleted, until unlocked.
    Lock {
        /// Workspace id.
        id: String,
        /// Why (shown in every refusal).
        #[arg(long)]
        reason: String,
    },
    /// Remove the workspace's lock (owners).
    Unlock {
        /// Workspace id.
        id: String,
    },
    /// Delete one table's data (owners): every segment, each recorded as a
    /// deletion. Refused while the workspace is locked.
    DeleteTable {
        /// Workspace id.
        id: String,
        /// The table.
        table: String,
        /// The table's name again, to confirm.
        #[arg(long)]
        confirm: String,
    },
    /// Delete the workspace (owners, service admins): its keys are destroyed
    /// first (nothing readable from then on), then every byte; prints what
    /// was removed. Refused while locked.
    Delete {
        /// Workspace id.
        id: String,
        /// The workspace's name, to confirm.
        #[arg(long)]
        confirm: String,
    },
    /// List workspaces.
    List,
    /// Show one workspace.
    Show {
        /// Workspace id.
        id: String,
    },
    /// Issue another single-use enrollment key.
    EnrollmentKey {
        /// Workspace id.
        id: String,
    },
    /// List a workspace's tables with rows and bytes stored.
    Tables {
        /// Workspace id.
        id: String,
    },
    /// Turn the customer lockbox on or off (workspace owners).
    Lockbox {
        /// Workspace id.
        id: String,
        /// `on` or `off`.
        state: String,
    },
    /// Set what the workspace stores (workspace owners): events above the
    /// maximum level or outside the categories are refused at ingest, never
    /// stored, and counted per agent. Prints the new policy.
    Set {
        /// Workspace id.
        id: String,
        /// Highest consent level stored: 0-3 or security, basic, enhanced, full.
        #[arg(long, value_parser = parse_level)]
        max_level: Option<custos_model::Level>,
        /// Categories stored, comma-separated (security, settings, inventory,
        /// health, usage, logs, performance, crash), or `all`.
        #[arg(long)]
        categories: Option<String>,
    },
    /// Events the server refused, per agent, reason and category (owners and auditors).
    Refusals {
        /// Workspace id.
        id: String,
    },
    /// The workspace's server-side redaction policy: show (owners, auditors,
    /// service admins) or set (owners). See docs/REDACTION.md.
    #[command(subcommand)]
    RedactionPolicy(admin::RedactionPolicyCmd),
    /// What the server's redaction backstop removed before storage, per
    /// table, kind and entity (owners, auditors, service admins).
    Redactions {
        /// Workspace id.
        id: String,
    },
}

fn parse_level(s: &str) -> Result<custos_model::Level, String> {
    s.parse().map_err(|e: custos_model::LevelParseError| e.to_string())
}

/// `--categories a,b,c` (or `all`) as categories, naming an unknown one.
fn parse_categories(s: &str) -> Result<Vec<custos_model::Category>> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(custos_model::Category::ALL.to_vec());
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let c = part.to_ascii_lowercase().parse::<custos_model::Category>().map_err(|_| {
            anyhow::anyhow!(
                "--categories: unknown category {part:?} (expected security, settings, inventory, health, usage, logs, performance, crash or all)"
            )
        })?;
        out.push(c);
    }
    if out.is_empty() {
        anyhow::bail!("--categories: name at least one category (or all)");
    }
    Ok(out)
}

#[derive(Subcommand, Debug)]
enum AgentCmd {
    /// Enroll this host: make a key pair, present the enrollment key to a
    /// server whose key matches the pin, and store the signed certificate.
    /// The server URL is the global `--server` (or CUSTOS_SERVER).
    Enroll {
        /// Single-use enrollment key from `custos workspace create`.
        #[arg(long)]
        enrollment_key: String,
        /// The server's key pin (sha256/...), from server.json.
        #[arg(long)]
        pin: String,
        /// Agent state directory.
        #[arg(long, default_value = telemetry::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Host name to register with the server (default: the keyed pseudonym
        /// of the system host name, see `custos_agent::installation`).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Collect and ship.
    Run {
        /// Agent state directory (enrolled).
        #[arg(long, default_value = telemetry::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Agent configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Drain every source, ship, wait for acknowledgements, exit.
        #[arg(long)]
        once: bool,
        /// With --once: give up if the server cannot be reached for this many seconds.
        #[arg(long, default_value_t = 300)]
        give_up_after_secs: u64,
    },
    /// Batches the server refused for good, kept on this host: list, show,
    /// resend, delete.
    DeadLetters(deadletters::Args),
    /// Ask the server for the key pins it publishes (adopting them) and renew
    /// the certificate if it is two thirds through its life; prints what changed.
    RefreshIdentity {
        /// Agent state directory (enrolled).
        #[arg(long, default_value = telemetry::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// List a workspace's enrolled agents with their status and certificate
    /// expiry (workspace owners and service admins).
    List {
        /// Workspace id.
        #[arg(long)]
        workspace: String,
    },
    /// Revoke an agent: every request with its certificates is refused at
    /// once (workspace owners and service admins).
    Revoke {
        /// Workspace id (the agent's own).
        #[arg(long)]
        workspace: String,
        /// Agent id.
        agent_id: String,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUSTOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub(crate) fn print_value<T: serde::Serialize>(out: Output, v: &T) -> Result<()> {
    let v = serde_json::to_value(v)?;
    print!("{}", output::records(out, &v));
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    let out = cli.output;
    match cli.cmd {
        Cmd::Server(a) => {
            if let Some(ServerCmd::RotateKey(r)) = a.cmd {
                init_logging("warn");
                return admin::rotate_key(out, r);
            }
            init_logging("info");
            let mut cfg = match &a.config {
                Some(p) => custos_server::ServerConfig::from_path(p)?,
                None => custos_server::ServerConfig::default(),
            };
            if let Some(d) = a.data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = a.listen {
                cfg.listen = l;
            }
            if let Some(r) = a.region {
                cfg.region = r;
            }
            let server = custos_server::Server::start(cfg).await?;
            print_value(out, server.info())?;
            shutdown_signal().await;
            tracing::info!("shutting down");
            server.shutdown().await?;
            Ok(())
        }
        Cmd::Quickstart(a) => {
            init_logging("warn");
            quickstart::run(a, out).await
        }
        Cmd::Workspace(w) => {
            init_logging("warn");
            let c = Client::from_args(&cli.conn)?;
            match w {
                WorkspaceCmd::Create { name, region, retention_days, plan } => {
                    let r: CreateWorkspaceResponse =
                        c.post("/v1/workspaces", &CreateWorkspaceRequest { name, region, retention_days, plan }).await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::Lock { id, reason } => admin::lock(&cli.conn, out, &id, Some(reason)).await,
                WorkspaceCmd::Unlock { id } => admin::lock(&cli.conn, out, &id, None).await,
                WorkspaceCmd::DeleteTable { id, table, confirm } => {
                    let r: TableDeletionReport = c
                        .delete_json(&format!("/v1/workspaces/{}/tables/{}", enc(&id), enc(&table)), &DeleteTableRequest { confirm })
                        .await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::Delete { id, confirm } => {
                    let r: WorkspaceDeletionReport =
                        c.delete_json(&format!("/v1/workspaces/{}", enc(&id)), &DeleteWorkspaceRequest { confirm }).await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::List => {
                    let r: Vec<WorkspaceInfo> = c.get("/v1/workspaces").await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::Show { id } => {
                    let r: WorkspaceInfo = c.get(&format!("/v1/workspaces/{}", enc(&id))).await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::EnrollmentKey { id } => {
                    let r: EnrollmentKeyResponse =
                        c.post(&format!("/v1/workspaces/{}/enrollment-keys", enc(&id)), &serde_json::json!({})).await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::Tables { id } => {
                    let r: Vec<TableInfo> = c.get(&format!("/v1/workspaces/{}/tables", enc(&id))).await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::Lockbox { id, state } => admin::lockbox(&cli.conn, out, &id, &state).await,
                WorkspaceCmd::Set { id, max_level, categories } => {
                    if max_level.is_none() && categories.is_none() {
                        anyhow::bail!("nothing to set: give --max-level and/or --categories");
                    }
                    let categories = categories.as_deref().map(parse_categories).transpose()?;
                    let r: WorkspacePolicyInfo = c
                        .put(&format!("/v1/workspaces/{}/policy", enc(&id)), &WorkspacePolicyRequest { max_level, categories })
                        .await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::Refusals { id } => {
                    let r: Vec<RefusalInfo> = c.get(&format!("/v1/workspaces/{}/refusals", enc(&id))).await?;
                    print_value(out, &r)
                }
                WorkspaceCmd::RedactionPolicy(cmd) => admin::redaction_policy(&cli.conn, out, cmd).await,
                WorkspaceCmd::Redactions { id } => admin::redactions(&cli.conn, out, &id).await,
            }
        }
        Cmd::Query { workspace, sql } => {
            init_logging("warn");
            let c = Client::from_args(&cli.conn)?;
            let r: QueryResponse = c.post(&format!("/v1/workspaces/{}/query", enc(&workspace)), &QueryRequest { sql }).await?;
            print_query(out, &r);
            Ok(())
        }
        Cmd::Principal(c) => {
            init_logging("warn");
            admin::principal(&cli.conn, out, c).await
        }
        Cmd::Token(c) => {
            init_logging("warn");
            admin::token(&cli.conn, out, c).await
        }
        Cmd::Role(c) => {
            init_logging("warn");
            admin::role(&cli.conn, out, c).await
        }
        Cmd::Case(c) => {
            init_logging("warn");
            admin::case(&cli.conn, out, c).await
        }
        Cmd::Access(c) => {
            init_logging("warn");
            admin::access(&cli.conn, out, c).await
        }
        Cmd::Audit(c) => {
            init_logging("warn");
            admin::audit(&cli.conn, out, c).await
        }
        Cmd::Key(c) => {
            init_logging("warn");
            admin::key(&cli.conn, out, c).await
        }
        Cmd::Retention(c) => {
            init_logging("warn");
            admin::retention(&cli.conn, out, c).await
        }
        Cmd::Purge(c) => {
            init_logging("warn");
            admin::purge(&cli.conn, out, c).await
        }
        Cmd::Export(a) => {
            init_logging("warn");
            admin::export(&cli.conn, out, a).await
        }
        Cmd::Telemetry(c) => {
            init_logging("warn");
            telemetry::telemetry(out, c).await
        }
        Cmd::Usage(c) => {
            init_logging("warn");
            telemetry::usage(out, c).await
        }
        Cmd::Redact(a) => {
            init_logging("warn");
            tokio::task::spawn_blocking(move || redact::run(out, a)).await?
        }
        Cmd::Whoami => {
            init_logging("warn");
            admin::whoami(&cli.conn, out).await
        }
        Cmd::Agent(AgentCmd::Enroll { enrollment_key, pin, state_dir, hostname }) => {
            init_logging("warn");
            let server = cli
                .conn
                .server
                .clone()
                .context("agent enroll needs --server URL (or CUSTOS_SERVER)")?;
            let hostname = match hostname {
                Some(h) => h,
                // The server learns the host only by its keyed pseudonym.
                None => {
                    let inst = custos_agent::installation::Installation::load_or_create(&state_dir)?;
                    inst.host_pseudonym(&custos_agent::config::system_hostname().unwrap_or_else(|_| "unknown".into()))
                }
            };
            let id = custos_agent::identity::enroll(&server, &enrollment_key, &pin, &state_dir, &hostname).await?;
            print_value(out, &id)
        }
        Cmd::Agent(AgentCmd::DeadLetters(a)) => {
            init_logging("warn");
            deadletters::run(out, a).await
        }
        Cmd::Agent(AgentCmd::Run { state_dir, config, once, give_up_after_secs }) => {
            init_logging("info");
            let cfg = custos_agent::config::AgentConfig::from_path(&config)?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = tx.send(true);
            });
            let mut opts = custos_agent::run::RunOptions { once, ..Default::default() };
            if once {
                opts.give_up_after = Some(std::time::Duration::from_secs(give_up_after_secs));
            }
            let bar = progress_bar(&mut opts);
            let result = custos_agent::run::run(&state_dir, &cfg, opts, rx).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let summary = result.with_context(|| format!("agent run with state dir {}", state_dir.display()))?;
            print_value(out, &summary)
        }
        Cmd::Agent(AgentCmd::RefreshIdentity { state_dir }) => {
            init_logging("warn");
            admin::refresh_identity(out, &state_dir).await
        }
        Cmd::Agent(AgentCmd::List { workspace }) => {
            init_logging("warn");
            admin::list_agents(&cli.conn, out, &workspace).await
        }
        Cmd::Agent(AgentCmd::Revoke { workspace, agent_id }) => {
            init_logging("warn");
            admin::revoke_agent(&cli.conn, out, &workspace, &agent_id).await
        }
    }
}

/// A spinner with the running totals when stderr is a terminal.
fn progress_bar(opts: &mut custos_agent::run::RunOptions) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let (tx, mut rx) = tokio::sync::watch::channel(custos_agent::run::RunSummary::default());
    opts.progress = Some(std::sync::Arc::new(tx));
    let b = bar.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            b.set_message(format!(
                "shipped {} events in {} batches ({:.1} MiB compressed)",
                s.events,
                s.batches,
                s.bytes_sent as f64 / 1048576.0
            ));
        }
    });
    Some(bar)
}

/// Percent-encode a path segment (ids are UUIDs; anything else is sent
/// encoded and refused by the server with a clear error).
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

pub(crate) fn print_query(out: Output, r: &QueryResponse) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&output::json_rows(&r.columns, &r.rows)).unwrap_or_default()),
        Output::Csv => print!("{}", output::csv(&r.columns, &r.rows)),
        Output::Table => {
            print!("{}", output::table(&r.columns, &r.rows));
            println!("({} rows, {} ms)", r.rows.len(), r.elapsed_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn tls_lifecycle_commands_parse_as_documented() {
        let cli = Cli::try_parse_from(["custos", "server", "rotate-key", "--data-dir", "D", "stage", "--replace"]).unwrap();
        let Cmd::Server(ServerArgs { cmd: Some(ServerCmd::RotateKey(r)), .. }) = cli.cmd else { panic!("not rotate-key") };
        assert_eq!(r.data_dir.as_deref(), Some(std::path::Path::new("D")));
        assert!(matches!(r.action, admin::RotateAction::Stage { replace: true }));
        let cli = Cli::try_parse_from(["custos", "server", "rotate-key", "activate"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Server(ServerArgs { cmd: Some(ServerCmd::RotateKey(admin::RotateKeyArgs { action: admin::RotateAction::Activate, .. })), .. })));
        // Plain `custos server` still runs the server.
        let cli = Cli::try_parse_from(["custos", "server", "--data-dir", "D"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Server(ServerArgs { cmd: None, .. })));
        let cli = Cli::try_parse_from(["custos", "agent", "revoke", "--workspace", "WS", "AGENT"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Agent(AgentCmd::Revoke { ref workspace, ref agent_id }) if workspace == "WS" && agent_id == "AGENT"));
        let cli = Cli::try_parse_from(["custos", "agent", "refresh-identity", "--state-dir", "S"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Agent(AgentCmd::RefreshIdentity { .. })));
        assert!(Cli::try_parse_from(["custos", "server", "rotate-key", "spin"]).is_err());
    }

    #[test]
    fn workspace_set_reads_level_names_and_category_lists() {
        use custos_model::{Category, Level};
        let cli = Cli::try_parse_from(["custos", "workspace", "set", "WS", "--max-level", "enhanced", "--categories", "logs, security"]).unwrap();
        let Cmd::Workspace(WorkspaceCmd::Set { max_level, categories, .. }) = cli.cmd else { panic!("not workspace set") };
        assert_eq!(max_level, Some(Level::Enhanced));
        assert_eq!(parse_categories(&categories.unwrap()).unwrap(), vec![Category::Logs, Category::Security]);
        assert_eq!(parse_categories("all").unwrap(), Category::ALL.to_vec());
        assert!(parse_categories("logs,metrics").unwrap_err().to_string().contains("\"metrics\""));
        assert!(parse_categories(" , ").is_err());
        assert!(Cli::try_parse_from(["custos", "workspace", "set", "WS", "--max-level", "5"]).is_err());
    }
}
