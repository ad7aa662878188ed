//! `custos telemetry ...` and `custos usage ...`: the host operator's
//! consent controls.
//!
//! When an agent is running (its control socket answers) a change goes
//! through the socket and takes effect at once. When none is running, the
//! change is checked against the managed policy and saved to
//! `<state-dir>/settings.json`; it takes effect when the agent starts.
//! Pass the agent's `--config` so the CLI finds the same control socket and
//! policy file as the agent, and can show values set in the config file.

use crate::output::{self, Output};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use custos_agent::config::{AgentConfig, TelemetrySettings};
use custos_agent::control::{self, ControlError, Request, Status};
use custos_agent::settings::{Effective, SettingsHandle, Sourced};
use custos_model::Level;
use serde_json::{json, Value};
use std::path::PathBuf;

/// The state directory used when `--state-dir` is not given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/custos-agent";

/// Where to find the agent: its state directory, socket and configuration.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Agent state directory (holds settings.json and, by default, the control socket).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The running agent's control socket (default: telemetry.control_socket
    /// of --config, else <state-dir>/control/control.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The agent's configuration file: its [telemetry] section gives the
    /// control socket, the policy file and the configured values.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `custos telemetry ...`.
#[derive(Subcommand, Debug)]
pub enum TelemetryCmd {
    /// Show each effective setting and where it comes from (default,
    /// config, local, policy), the policy file, and the running agent's
    /// counters.
    Status(LocalArgs),
    /// Set the consent level: 0 security, 1 basic, 2 enhanced, 3 full (or
    /// the names). Lowering it deletes queued events above the new level.
    Level {
        /// The level: 0-3 or security, basic, enhanced, full.
        level: Level,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// Stop collecting and uploading telemetry, and delete what is queued.
    Disable(LocalArgs),
    /// Collect and upload telemetry again.
    Enable(LocalArgs),
    /// What is collected: every table and field of the registry, with its
    /// type, level, category, PII class and description.
    Catalog {
        /// Only what is collected at this level (cumulative): 0-3 or a name.
        #[arg(long)]
        level: Option<Level>,
    },
    /// The transparency ledger: every batch that left this host, exactly as
    /// sent, with the server's acknowledgement.
    Sent {
        /// Only batches sent since this time: RFC 3339 (2026-11-29T10:00:00Z)
        /// or a duration ago (90s, 30m, 8h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many batches (the oldest that match).
        #[arg(long)]
        limit: Option<usize>,
        /// Also print every event of each batch (always included with --output json).
        #[arg(long)]
        events: bool,
        /// Agent state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Check the transparency ledger's hash chain; names the first bad record.
    VerifyLedger {
        /// Agent state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// `custos usage ...`: usage (billing) reporting, independent of telemetry.
#[derive(Subcommand, Debug)]
pub enum UsageCmd {
    /// Report hourly usage records.
    Enable(LocalArgs),
    /// Stop reporting usage records.
    Disable(LocalArgs),
}

/// Run a `custos telemetry` command.
pub async fn telemetry(out: Output, cmd: TelemetryCmd) -> Result<()> {
    match cmd {
        TelemetryCmd::Status(a) => status(out, &a).await,
        TelemetryCmd::Level { level, local } => change(out, &local, Request::SetLevel(level)).await,
        TelemetryCmd::Disable(a) => change(out, &a, Request::SetEnabled(false)).await,
        TelemetryCmd::Enable(a) => change(out, &a, Request::SetEnabled(true)).await,
        TelemetryCmd::Catalog { level } => catalog(out, level),
        TelemetryCmd::Sent { since, limit, events, state_dir } => sent(out, &state_dir, since.as_deref(), limit, events),
        TelemetryCmd::VerifyLedger { state_dir } => verify_ledger(out, &state_dir),
    }
}

/// Run a `custos usage` command.
pub async fn usage(out: Output, cmd: UsageCmd) -> Result<()> {
    match cmd {
        UsageCmd::Enable(a) => change(out, &a, Request::SetUsage(true)).await,
        UsageCmd::Disable(a) => change(out, &a, Request::SetUsage(false)).await,
    }
}

struct Target {
    args: LocalArgs,
    socket: PathBuf,
    telemetry: TelemetrySettings,
}

fn target(a: &LocalArgs) -> Result<Target> {
    let telemetry = match &a.config {
        Some(p) => AgentConfig::from_path(p)?.telemetry,
        None => TelemetrySettings::default(),
    };
    let socket = a.socket.clone().unwrap_or_else(|| telemetry.control_socket_path(&a.state_dir));
    Ok(Target { args: a.clone(), socket, telemetry })
}

/// Ask the running agent; `None` when no agent listens on the socket.
async fn ask(t: &Target, req: &Request) -> Result<Option<Status>> {
    match control::request(&t.socket, req).await {
        Ok(resp) => Ok(Some(resp.into_status()?)),
        Err(ControlError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot talk to the agent on {}", t.socket.display())),
    }
}

fn open_offline(t: &Target) -> Result<SettingsHandle> {
    Ok(SettingsHandle::open(&t.args.state_dir, &t.telemetry)?)
}

async fn status(out: Output, a: &LocalArgs) -> Result<()> {
    let t = target(a)?;
    let (status, running) = match ask(&t, &Request::Status).await? {
        Some(s) => (s, true),
        None => (Status { settings: open_offline(&t)?.effective(), runtime: None }, false),
    };
    print_status(out, &t, &status, running, None);
    Ok(())
}

fn describe(req: &Request) -> (&'static str, Value, String) {
    match *req {
        Request::SetLevel(l) => ("level", json!(u8::from(l)), format!("telemetry level set to {}", level_text(l))),
        Request::SetEnabled(true) => ("enabled", json!(true), "telemetry enabled".into()),
        Request::SetEnabled(false) => ("enabled", json!(false), "telemetry disabled".into()),
        Request::SetUsage(true) => ("usage", json!(true), "usage reporting enabled".into()),
        Request::SetUsage(false) => ("usage", json!(false), "usage reporting disabled".into()),
        Request::Status => ("status", Value::Null, String::new()),
    }
}

async fn change(out: Output, a: &LocalArgs, req: Request) -> Result<()> {
    let t = target(a)?;
    if let Some(status) = ask(&t, &req).await? {
        print_status(out, &t, &status, true, Some((req, "now")));
        return Ok(());
    }
    let handle = open_offline(&t)?;
    let settings = match req {
        Request::SetLevel(l) => handle.set_level(l).await?,
        Request::SetEnabled(b) => handle.set_enabled(b).await?,
        Request::SetUsage(b) => handle.set_usage(b).await?,
        Request::Status => handle.effective(),
    };
    print_status(out, &t, &Status { settings, runtime: None }, false, Some((req, "when the agent starts")));
    Ok(())
}

fn level_text(l: Level) -> String {
    format!("{} ({l})", u8::from(l))
}

fn sourced_json<T: serde::Serialize>(s: &Sourced<T>) -> Value {
    json!({"value": s.value, "origin": s.origin})
}

fn status_json(t: &Target, s: &Status, running: bool, change: Option<(Request, &str)>) -> Value {
    let e: &Effective = &s.settings;
    let mut v = json!({
        "agent_running": running,
        "socket": t.socket,
        "state_dir": t.args.state_dir,
        "config_file": t.args.config,
        "level": {"value": u8::from(e.level.value), "name": e.level.value.name(), "origin": e.level.origin},
        "enabled": sourced_json(&e.enabled),
        "usage": sourced_json(&e.usage),
        "policy_file": e.policy_file,
        "policy_error": e.policy_error,
        "runtime": s.runtime,
    });
    if let Some((req, applied)) = change {
        let (setting, value, _) = describe(&req);
        v["change"] = json!({"setting": setting, "value": value, "applied": applied});
    }
    v
}

fn print_status(out: Output, t: &Target, s: &Status, running: bool, change: Option<(Request, &str)>) {
    let e = &s.settings;
    let rows = vec![
        vec![json!("level"), json!(level_text(e.level.value)), json!(e.level.origin)],
        vec![json!("enabled"), json!(e.enabled.value), json!(e.enabled.origin)],
        vec![json!("usage"), json!(e.usage.value), json!(e.usage.origin)],
    ];
    let columns = ["setting".to_string(), "value".into(), "origin".into()];
    match out {
        Output::Json => print!("{}", output::records(Output::Json, &status_json(t, s, running, change))),
        Output::Csv => print!("{}", output::csv(&columns, &rows)),
        Output::Table => {
            let mut text = String::new();
            if let Some((req, applied)) = change {
                let (_, _, what) = describe(&req);
                if running {
                    text.push_str(&format!("{what}: in effect {applied}\n\n"));
                } else {
                    text.push_str(&format!(
                        "{what} in {}: no agent is running, so it takes effect {applied}\n\n",
                        custos_agent::settings::settings_path(&t.args.state_dir).display()
                    ));
                }
            }
            text.push_str(&output::table(&columns, &rows));
            text.push('\n');
            let mut kv: Vec<(&str, String)> = vec![("policy file", e.policy_file.display().to_string())];
            if let Some(err) = &e.policy_error {
                kv.push(("policy error", format!("{err} (telemetry is disabled until the file is fixed or removed)")));
            }
            kv.push((
                "agent",
                if running {
                    format!("running (control socket {})", t.socket.display())
                } else {
                    format!("not running (nothing answers on {})", t.socket.display())
                },
            ));
            if t.args.config.is_none() {
                kv.push((
                    "config",
                    "not given: values set in the agent's config file are not shown (pass --config FILE)".into(),
                ));
            }
            if let Some(rt) = &s.runtime {
                let by_cat = |m: &std::collections::BTreeMap<String, u64>| -> String {
                    if m.is_empty() {
                        "0".into()
                    } else {
                        m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
                    }
                };
                let dropped: Vec<String> = rt.dropped_by_category.iter().map(|(k, v)| format!("{k}={v}")).collect();
                kv.extend([
                    ("queued events", format!("{} ({})", rt.queued_events, by_cat(&rt.queued_by_category))),
                    ("queued batches", rt.queued_batches.to_string()),
                    ("queue size", format!("{} of {} bytes on disk ({} bytes of records)", rt.queue_disk_bytes, rt.queue_max_bytes, rt.queue_bytes)),
                    ("evicted (queue full)", by_cat(&rt.evicted_by_category)),
                    ("dead letters", format!("{} (oldest removed when full: {})", rt.dead_letters, rt.dead_letters_evicted)),
                    ("failed attempts", rt.delivery_failures.to_string()),
                    ("queue write failures", rt.queue_write_failures.to_string()),
                    ("redacted on host", by_cat(&rt.redacted_by_entity)),
                    ("redaction drops", format!("{} fields, {} events", rt.redaction_fields_dropped, rt.redaction_events_dropped)),
                    ("events read", rt.events_read.to_string()),
                    ("events uploaded", rt.events_uploaded.to_string()),
                    ("events not collected", rt.events_not_collected.to_string()),
                    ("events purged", rt.events_purged.to_string()),
                    ("dropped", if dropped.is_empty() { "0".into() } else { dropped.join(", ") }),
                    ("refused by server", rt.refused_by_server.to_string()),
                    ("last upload", rt.last_upload_time.map(micros_text).unwrap_or_else(|| "never".into())),
                ]);
            }
            let w = kv.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in kv {
                text.push_str(&format!("{k:<w$}  {v}\n"));
            }
            print!("{text}");
        }
    }
}

fn catalog(out: Output, level: Option<Level>) -> Result<()> {
    let reg = custos_model::registry::Registry::builtin();
    let rows = reg.rows(level.unwrap_or(Level::Full));
    crate::print_value(out, &rows)
}

/// `--since`: RFC 3339, or a duration before now.
fn parse_since(s: &str) -> Result<i64> {
    if let Ok(secs) = crate::admin::parse_duration_secs(s) {
        let ago = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        return Ok(custos_model::now_micros().saturating_sub(ago));
    }
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--since {s:?} is neither RFC 3339 (2026-11-29T10:00:00Z) nor a duration (90s, 30m, 8h, 7d)"))?;
    Ok(i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX))
}

fn sent(out: Output, state_dir: &std::path::Path, since: Option<&str>, limit: Option<usize>, events: bool) -> Result<()> {
    use custos_agent::ledger::{Filter, LedgerReader};
    let since = since.map(parse_since).transpose()?;
    let reader = LedgerReader::open(state_dir).with_context(|| format!("reading the transparency ledger of {}", state_dir.display()))?;
    let batches = reader.list(&Filter { since, limit, ..Filter::default() })?;
    let mut rows = Vec::with_capacity(batches.len());
    for b in &batches {
        let payload = b.decode()?;
        let mut tables: Vec<&str> = payload.events.iter().map(|e| e.table.as_str()).collect();
        tables.sort_unstable();
        tables.dedup();
        let mut row = json!({
            "seq": b.seq,
            "sent": micros_text(b.time),
            "batch_id": b.batch_id.to_string(),
            "events": payload.events.len(),
            "bytes": b.payload.len(),
            "tables": tables.join(","),
            "ack_id": b.ack.as_ref().map(|a| a.ack_id.clone()),
            "accepted": b.ack.as_ref().map(|a| a.accepted),
            "refused": b.ack.as_ref().map(|a| a.refused),
        });
        if events || out == Output::Json {
            row["payload"] = serde_json::to_value(&payload.events)?;
        }
        rows.push(row);
    }
    if out != Output::Json && events {
        for r in &rows {
            println!("batch {} (seq {}) sent {} ack {}", r["batch_id"].as_str().unwrap_or_default(), r["seq"], r["sent"].as_str().unwrap_or_default(), r["ack_id"].as_str().unwrap_or("none"));
            for e in r["payload"].as_array().into_iter().flatten() {
                println!("  {e}");
            }
        }
        return Ok(());
    }
    crate::print_value(out, &rows)
}

fn verify_ledger(out: Output, state_dir: &std::path::Path) -> Result<()> {
    let report = custos_agent::ledger::verify(state_dir)
        .with_context(|| format!("the transparency ledger of {} failed verification", state_dir.display()))?;
    crate::print_value(
        out,
        &json!({
            "ok": true,
            "records": report.records,
            "batches": report.batches,
            "acks": report.acks,
            "unacknowledged_batches": report.unacknowledged_batches,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "head": report.head,
            "segments": report.segments,
            "bytes": report.bytes,
            "torn_tail": report.torn_tail.as_ref().map(|t| format!("{t:?}")),
        }),
    )
}

/// µs since the epoch as RFC 3339 (UTC), or the number if out of range.
fn micros_text(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if !(0..=9999).contains(&y) {
        return us.to_string();
    }
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_render_as_utc_timestamps() {
        assert_eq!(micros_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(micros_text(1_700_000_000_123_456), "2023-11-14T22:13:20Z");
        assert_eq!(micros_text(951_782_400_000_000), "2000-02-29T00:00:00Z");
    }
}
