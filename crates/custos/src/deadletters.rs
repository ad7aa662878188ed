//! `custos agent dead-letters ...`: the batches the server refused for good
//! (a 4xx other than 408 and 429), kept encrypted in
//! `<state-dir>/dead-letters/` by the agent instead of being dropped (see
//! `custos_agent::deadletter`).
//!
//! `list` and `show` say what was refused and why; `resend` sends the
//! stored frame once more, as this agent, and removes the entry when the
//! server acknowledges it (the server deduplicates by batch id, so a batch
//! it already has is not stored twice); `delete` removes an entry.

use crate::output::{self, Output};
use crate::telemetry::DEFAULT_STATE_DIR;
use anyhow::{Context, Result};
use clap::Subcommand;
use custos_agent::deadletter::{dead_letter_dir, DeadLetterError, DeadLetters, Entry, EntryId, Summary};
use custos_agent::seal::SealKey;
use custos_agent::ship::{Attempt, Shipper};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `custos agent dead-letters`: where the store is, and what to do.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Agent state directory (holds dead-letters/ and the key that seals it).
    #[arg(long, default_value = DEFAULT_STATE_DIR, global = true)]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The dead-letter commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// List the refused batches, oldest first: id, when, status, events per
    /// category, source and the server's message. Damaged entries are
    /// listed apart, naming their file.
    List,
    /// Show one entry; with --events, also the events of its batch.
    Show {
        /// The entry id (from `list`).
        id: String,
        /// Also print every event of the batch.
        #[arg(long)]
        events: bool,
    },
    /// Send the stored batch once more, as this enrolled agent; on
    /// acknowledgement the entry is removed. A refusal keeps it.
    Resend {
        /// The entry id (from `list`).
        id: String,
    },
    /// Delete one entry (its batch is then gone from this host).
    Delete {
        /// The entry id (from `list`).
        id: String,
    },
}

/// Run a `custos agent dead-letters` command.
pub async fn run(out: Output, args: Args) -> Result<()> {
    let state_dir = args.state_dir.as_path();
    match args.cmd {
        Cmd::List => list(out, state_dir),
        Cmd::Show { id, events } => show(out, state_dir, &parse_id(&id)?, events),
        Cmd::Resend { id } => resend(out, state_dir, &parse_id(&id)?).await,
        Cmd::Delete { id } => delete(out, state_dir, &parse_id(&id)?),
    }
}

fn parse_id(id: &str) -> Result<EntryId> {
    Ok(id.parse::<EntryId>()?)
}

/// The store, or `None` when the agent never kept a dead letter (then no
/// key is created either).
fn open(state_dir: &Path) -> Result<Option<DeadLetters>> {
    if !dead_letter_dir(state_dir).exists() {
        return Ok(None);
    }
    let key = SealKey::load_or_create(state_dir).with_context(|| format!("opening the dead-letter key of {}", state_dir.display()))?;
    let max = custos_agent::config::DEFAULT_DEAD_LETTERS_MAX_BYTES;
    Ok(Some(DeadLetters::open(state_dir, Arc::new(key), max)?))
}

fn open_existing(state_dir: &Path, id: &EntryId) -> Result<DeadLetters> {
    match open(state_dir)? {
        Some(s) => Ok(s),
        None => Err(DeadLetterError::NotFound { id: *id, dir: dead_letter_dir(state_dir) }.into()),
    }
}

/// µs since the epoch as RFC 3339 (UTC), or the number if out of range.
fn time_text(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| us.to_string())
}

fn categories_text(s: &Summary) -> String {
    s.categories.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "id": s.id.to_string(),
        "batch_id": s.batch_id.to_string(),
        "refused_at": time_text(s.time),
        "status": s.status,
        "message": s.message,
        "events": s.events,
        "categories": s.categories,
        "source": s.source,
        "frame_bytes": s.frame_bytes,
        "file_bytes": s.file_bytes,
    })
}

fn list(out: Output, state_dir: &Path) -> Result<()> {
    let dir = dead_letter_dir(state_dir);
    let listing = match open(state_dir)? {
        Some(store) => store.list()?,
        None => Default::default(),
    };
    match out {
        Output::Json => {
            let v = json!({
                "dir": dir,
                "entries": listing.entries.iter().map(summary_json).collect::<Vec<_>>(),
                "damaged": listing.damaged.iter().map(|e| json!({"file": damaged_file(e), "error": e.to_string()})).collect::<Vec<_>>(),
                "total_bytes": listing.total_bytes,
            });
            print!("{}", output::records(Output::Json, &v));
        }
        Output::Table | Output::Csv => {
            let columns: Vec<String> =
                ["id", "refused_at", "status", "events", "categories", "source", "message"].iter().map(|c| c.to_string()).collect();
            let rows: Vec<Vec<Value>> = listing
                .entries
                .iter()
                .map(|s| {
                    vec![
                        json!(s.id.to_string()),
                        json!(time_text(s.time)),
                        json!(s.status),
                        json!(s.events),
                        json!(categories_text(s)),
                        json!(s.source),
                        json!(s.message),
                    ]
                })
                .collect();
            if out == Output::Csv {
                print!("{}", output::csv(&columns, &rows));
            } else if rows.is_empty() && listing.damaged.is_empty() {
                println!("no dead letters in {}", dir.display());
            } else {
                print!("{}", output::table(&columns, &rows));
                println!("({} entries, {} bytes in {})", rows.len(), listing.total_bytes, dir.display());
            }
            for e in &listing.damaged {
                println!("damaged: {e}");
            }
        }
    }
    Ok(())
}

fn damaged_file(e: &DeadLetterError) -> Option<String> {
    match e {
        DeadLetterError::Damaged { path, .. } | DeadLetterError::Io { path, .. } => Some(path.display().to_string()),
        _ => None,
    }
}

fn show(out: Output, state_dir: &Path, id: &EntryId, events: bool) -> Result<()> {
    let entry: Entry = open_existing(state_dir, id)?.get(id)?;
    let mut v = summary_json(&entry.summary);
    let decoded = events.then(|| entry.decode());
    if let Some(d) = &decoded {
        match d {
            Ok(p) => v["batch"] = serde_json::to_value(&p.events)?,
            Err(e) => v["decode_error"] = json!(format!("the stored frame does not decode: {e}")),
        }
    }
    match out {
        Output::Json => print!("{}", output::records(Output::Json, &v)),
        Output::Csv | Output::Table => {
            let mut head = v.clone();
            if let Some(o) = head.as_object_mut() {
                o.remove("batch");
                o.insert("categories".into(), json!(categories_text(&entry.summary)));
            }
            print!("{}", output::records(out, &head));
            if let Some(Ok(p)) = &decoded {
                println!();
                for e in &p.events {
                    println!("{}", serde_json::to_string(e)?);
                }
            }
        }
    }
    Ok(())
}

async fn resend(out: Output, state_dir: &Path, id: &EntryId) -> Result<()> {
    let store = open_existing(state_dir, id)?;
    let entry = store.get(id)?;
    let (ident, client) = custos_agent::identity::load(state_dir)?;
    let shipper = Shipper::new(client, &ident.server);
    match shipper.send_once(&entry.frame).await {
        Attempt::Acked(ack) => {
            store.remove(id).with_context(|| format!("dead letter {id} was delivered (ack {}) but could not be removed", ack.ack_id))?;
            crate::print_value(
                out,
                &json!({
                    "id": id.to_string(),
                    "batch_id": ack.batch_id.to_string(),
                    "resent": true,
                    "server": ident.server,
                    "accepted": ack.accepted,
                    "refused": ack.refused,
                    "duplicate": ack.duplicate,
                    "ack_id": ack.ack_id,
                    "removed": true,
                }),
            )
        }
        Attempt::Retry(e, retry_after) => {
            let wait = retry_after.map(|d| format!(" (the server asks to wait {} s)", d.as_secs())).unwrap_or_default();
            anyhow::bail!("dead letter {id} was not delivered: {e}{wait}; it is kept, try again later")
        }
        Attempt::Permanent(e) => {
            anyhow::bail!("the server refused dead letter {id} again: {e}; it is kept (fix the cause and resend it, or delete it)")
        }
    }
}

fn delete(out: Output, state_dir: &Path, id: &EntryId) -> Result<()> {
    open_existing(state_dir, id)?.remove(id)?;
    crate::print_value(out, &json!({"id": id.to_string(), "deleted": true}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_times_render_as_rfc3339() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_text(1_700_000_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_store_that_was_never_written_lists_empty_without_creating_a_key() {
        let d = tempfile::tempdir().unwrap();
        assert!(open(d.path()).unwrap().is_none());
        assert!(!d.path().join(custos_agent::seal::KEY_FILE).exists());
        let id: EntryId = "0190f5c2-0000-7000-8000-000000000000".parse().unwrap();
        let e = open_existing(d.path(), &id).unwrap_err().to_string();
        assert!(e.contains("no dead letter") && e.contains(&id.to_string()), "{e}");
    }

    #[test]
    fn ids_that_are_not_entry_ids_are_refused_before_any_file_is_touched() {
        for bad in ["../identity.json", "x", "0190f5c2-0000-7000-8000-00000000000"] {
            assert!(parse_id(bad).unwrap_err().to_string().contains("invalid dead-letter id"), "{bad}");
        }
    }

    #[test]
    fn the_state_dir_may_come_before_or_after_the_command() {
        use clap::Parser;
        for argv in [
            &["custos", "agent", "dead-letters", "--state-dir", "/s", "show", "ID", "--events"][..],
            &["custos", "agent", "dead-letters", "show", "ID", "--events", "--state-dir", "/s"][..],
        ] {
            let cli = crate::Cli::try_parse_from(argv).unwrap();
            let crate::Cmd::Agent(crate::AgentCmd::DeadLetters(a)) = cli.cmd else { panic!("not dead-letters") };
            assert_eq!(a.state_dir, PathBuf::from("/s"));
            assert!(matches!(a.cmd, Cmd::Show { ref id, events: true } if id == "ID"));
        }
        let cli = crate::Cli::try_parse_from(["custos", "agent", "dead-letters", "list"]).unwrap();
        let crate::Cmd::Agent(crate::AgentCmd::DeadLetters(a)) = cli.cmd else { panic!("not dead-letters") };
        assert_eq!(a.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }
}
