//! `custos quickstart`: the whole path on one machine, with nothing to set
//! up. Initialises (or reuses) a data dir, starts the server, creates the
//! `demo` workspace and its owner principal `demo-owner` (service admins do
//! not read workspace data), enrolls an in-process agent, ships host
//! inventory and the sample logs from `examples/logs`, runs example queries
//! as the owner, shows the audit trail they left, and keeps serving until
//! Ctrl-C.

use crate::client::Client;
use crate::output::Output;
use anyhow::{Context, Result};
use custos_model::api::*;
use std::path::{Path, PathBuf};

/// Sample logs shipped with the binary (also in `examples/logs/`).
const SAMPLE_LOGS: &[(&str, &str)] = &[
    ("web-access.log", include_str!("../../../examples/logs/web-access.log")),
    ("platform.log", include_str!("../../../examples/logs/platform.log")),
];

/// Example queries the quickstart runs.
pub const EXAMPLE_QUERIES: &[(&str, &str)] = &[
    ("events per table", "SELECT 'logs' AS tbl, count(*) AS events FROM logs UNION ALL SELECT 'inventory', count(*) FROM inventory"),
    (
        "error lines per component (platform.log)",
        "SELECT regexp_match(message, '\\[([a-z-]+)\\]')[1] AS component, count(*) AS errors FROM logs WHERE message LIKE '%ERROR%' GROUP BY 1 ORDER BY 2 DESC",
    ),
    (
        "this host's inventory",
        "SELECT kind, message FROM inventory ORDER BY kind, message",
    ),
];

/// Quickstart options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Data directory (reused if it exists).
    #[arg(long, default_value = "custos-data")]
    data_dir: PathBuf,
    /// Listen address; if the port is taken a free one is used.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: String,
    /// Exit after showing the queries instead of serving until Ctrl-C.
    #[arg(long)]
    no_serve: bool,
}

fn agent_config(logs_dir: &Path) -> String {
    format!(
        "# Written by `custos quickstart`.\n[agent]\nbatch_max_events = 5000\n\n# The demo collects at level 3 (full): every sample line, whatever its\n# severity, and the host name in clear. The default is 2 (enhanced):\n# warning-and-above lines only, host names as keyed pseudonyms.\n[telemetry]\nlevel = \"full\"\n\n[[sources]]\ntype = \"file\"\npaths = [\"{}/*.log\"]\ntable = \"logs\"\n\n[[sources]]\ntype = \"inventory\"\n",
        logs_dir.display()
    )
}

/// A client acting as `demo-owner`, the owner of the demo workspace: created
/// (with its token saved 0600) on first run, reused afterwards.
async fn owner_client(admin: &Client, info: &custos_server::ServerInfo, ws: custos_model::WorkspaceId, token_file: &Path) -> Result<Client> {
    let principals: Vec<PrincipalInfo> = admin.get("/v1/principals").await?;
    let token = match principals.iter().find(|p| p.name == "demo-owner") {
        Some(_) if token_file.exists() => std::fs::read_to_string(token_file)?.trim().to_string(),
        Some(p) => admin.post::<_, CreateTokenResponse>(&format!("/v1/principals/{}/tokens", p.id), &CreateTokenRequest::default()).await?.token,
        None => {
            admin
                .post::<_, CreatePrincipalResponse>(
                    "/v1/principals",
                    &CreatePrincipalRequest { name: "demo-owner".into(), service_role: None, token_expires_in_secs: None },
                )
                .await?
                .token
        }
    };
    custos_server::pki::write_private(token_file, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {}", token_file.display()))?;
    let _: RoleBindingInfo = admin
        .post(&format!("/v1/workspaces/{ws}/roles"), &GrantRoleRequest { principal: "demo-owner".into(), role: custos_model::WorkspaceRole::Owner })
        .await?;
    Client::new(&info.url, Some(Path::new(&info.ca)), token)
}

pub async fn run(a: Args, out: Output) -> Result<()> {
    let data_dir = std::path::absolute(&a.data_dir)?;
    let step = |s: &str| {
        if out != Output::Json {
            println!("==> {s}");
        }
    };
    step(&format!("starting the server in {}", data_dir.display()));
    let mut cfg = custos_server::ServerConfig { data_dir: data_dir.clone(), listen: a.listen.clone(), ..Default::default() };
    cfg.ingest.flush_interval_ms = 1000;
    let server = match custos_server::Server::start(cfg.clone()).await {
        Ok(s) => s,
        Err(custos_server::ServerError::Io { context, .. }) if context.starts_with("cannot listen") => {
            cfg.listen = "127.0.0.1:0".into();
            custos_server::Server::start(cfg).await?
        }
        Err(e) => return Err(e.into()),
    };
    let info = server.info().clone();
    let token = std::fs::read_to_string(&info.admin_token_file)?.trim().to_string();
    let client = Client::new(&info.url, Some(Path::new(&info.ca)), token)?;

    let workspaces: Vec<WorkspaceInfo> = client.get("/v1/workspaces").await?;
    let agent_dir = data_dir.join("quickstart-agent");
    let ws_id = match workspaces.iter().find(|w| w.name == "demo") {
        Some(w) => {
            step(&format!("reusing workspace demo ({})", w.id));
            w.id
        }
        None => {
            let r: CreateWorkspaceResponse = client
                .post("/v1/workspaces", &CreateWorkspaceRequest { name: "demo".into(), region: info.region.clone(), retention_days: None, plan: None })
                .await?;
            step(&format!("created workspace demo ({}) in region {}", r.id, r.region));
            let _ = std::fs::remove_dir_all(&agent_dir);
            r.id
        }
    };
    let owner_token_file = data_dir.join("demo-owner.token");
    let owner = owner_client(&client, &info, ws_id, &owner_token_file).await?;
    step(&format!("workspace owner demo-owner (token in {})", owner_token_file.display()));
    if !agent_dir.join("identity.json").exists() {
        let k: EnrollmentKeyResponse = client.post(&format!("/v1/workspaces/{ws_id}/enrollment-keys"), &serde_json::json!({})).await?;
        let inst = custos_agent::installation::Installation::load_or_create(&agent_dir)?;
        let host = inst.host_pseudonym(&custos_agent::config::system_hostname().unwrap_or_else(|_| "quickstart-host".into()));
        let id = custos_agent::identity::enroll(&info.url, &k.enrollment_key, &info.pin, &agent_dir, &host).await?;
        step(&format!("enrolled agent {} (mutual TLS, server pinned by {})", id.agent_id, info.pin));
    } else {
        // The server may listen on another port than last time.
        custos_agent::identity::set_server(&agent_dir, &info.url)?;
        step("reusing the enrolled agent");
    }
    let logs_dir = data_dir.join("quickstart-logs");
    std::fs::create_dir_all(&logs_dir)?;
    for (name, text) in SAMPLE_LOGS {
        let p = logs_dir.join(name);
        if !p.exists() {
            std::fs::write(&p, text)?;
        }
    }
    let cfg_path = data_dir.join("quickstart-agent.toml");
    std::fs::write(&cfg_path, agent_config(&logs_dir))?;
    let agent_cfg = custos_agent::config::AgentConfig::from_path(&cfg_path)?;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let mut opts = custos_agent::run::RunOptions { once: true, ..Default::default() };
    opts.give_up_after = Some(std::time::Duration::from_secs(60));
    let summary = custos_agent::run::run(&agent_dir, &agent_cfg, opts, rx).await.context("quickstart agent")?;
    step(&format!(
        "agent shipped {} events in {} batches ({} bytes compressed); already-shipped lines are not sent again",
        summary.events, summary.batches, summary.bytes_sent
    ));
    let ledger = custos_agent::ledger::verify(&agent_dir)?;
    step(&format!(
        "the agent's transparency ledger ({}) holds {} batches exactly as sent, {} acknowledged; hash chain verified",
        custos_agent::ledger::ledger_dir(&agent_dir).display(),
        ledger.batches,
        ledger.acks
    ));

    let mut results = Vec::new();
    for (title, sql) in EXAMPLE_QUERIES {
        let r: QueryResponse = owner.post(&format!("/v1/workspaces/{ws_id}/query"), &QueryRequest { sql: sql.to_string() }).await?;
        if out == Output::Json {
            results.push(serde_json::json!({"title": title, "sql": sql, "rows": crate::output::json_rows(&r.columns, &r.rows)}));
        } else {
            println!("\n-- {title}\n{sql}\n");
            crate::print_query(out, &r);
        }
    }
    let audit: Vec<AuditEntry> = owner.get(&format!("/v1/workspaces/{ws_id}/audit?limit=100000")).await?;
    let queries = audit.iter().filter(|e| e.action == "data.query" && e.outcome == "ok").count();
    let batches = audit.iter().filter(|e| e.action == "ingest.batch" && e.outcome == "ok").count();
    step(&format!(
        "the workspace's audit log holds {} records ({queries} queries, {batches} ingested batches), hash-chained and signed",
        audit.len()
    ));
    if out == Output::Json {
        let v = serde_json::json!({
            "server": info, "workspace": ws_id, "owner_token_file": owner_token_file, "agent": summary,
            "queries": results, "audit_records": audit.len(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "custos".into());
        println!(
            "\nThe server is at {url}. Point the CLI at it from another terminal, as the workspace owner:\n\n  export CUSTOS_SERVER={url} CUSTOS_CA={ca} CUSTOS_TOKEN_FILE={tok}\n  {exe} workspace list\n  {exe} query --workspace {ws_id} \"SELECT host, count(*) FROM logs GROUP BY host\"\n  {exe} audit log --workspace {ws_id}\n  {exe} audit verify --dir {audit}\n\nOn the host, what left it and what is collected:\n\n  {exe} telemetry sent --state-dir {agent}\n  {exe} telemetry catalog --level 2\n\n(the service admin's token is {admin}; admins manage, they do not read workspace data)\n",
            url = info.url,
            ca = info.ca,
            tok = owner_token_file.display(),
            audit = data_dir.join("audit").display(),
            agent = agent_dir.display(),
            admin = info.admin_token_file
        );
    }
    if a.no_serve {
        server.shutdown().await?;
        return Ok(());
    }
    if out != Output::Json {
        println!("Serving; press Ctrl-C to stop.");
    }
    crate::shutdown_signal().await;
    server.shutdown().await?;
    Ok(())
}
