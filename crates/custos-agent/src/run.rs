//! The agent's main loop: poll each source, pass every event through the
//! consent gate, batch, record in the transparency ledger, compress, ship,
//! and only after the server's acknowledgement commit the source positions.
//! A crash at any point therefore re-reads at most the unacknowledged tail,
//! and the server's batch-id deduplication keeps a resent batch from being
//! stored twice.
//!
//! Around the loop run the settings ([`crate::settings`]: configuration,
//! local changes, managed policy), the policy watcher, and the control
//! socket ([`crate::control`]) through which `custos telemetry ...` changes
//! settings while the agent runs. A change takes effect at once:
//!
//! - events are gated at collection ([`crate::gate`]) with the settings of
//!   that moment, and again before every send attempt, so a batch waiting
//!   to be sent (the queue) loses its events above a lowered level, and all
//!   of its events when telemetry is disabled — they are deleted, counted
//!   by category, and never sent;
//! - while telemetry is disabled, no telemetry source is polled; when it is
//!   enabled again, every source first skips what accumulated meanwhile
//!   ([`Source::skip_to_end`]), so nothing written while disabled is
//!   collected;
//! - usage records follow the usage switch only.
//!
//! What a batch sends is written to the ledger (durably) before the first
//! attempt; a batch whose content changes while it waits (a purge, or a
//! level change that changes host pseudonymisation) gets a new batch id and
//! a new ledger record, so the ledger and the server always agree on what a
//! batch id holds.

use crate::config::AgentConfig;
use crate::control::{ControlServer, RuntimeStatus};
use crate::error::AgentError;
use crate::gate::{self, GateState};
use crate::identity;
use crate::installation::Installation;
use crate::internal::{Facts, InternalSource, SettingsSnapshot, Stats};
use crate::ledger::{Ledger, LedgerOptions};
use crate::security::{kind, SecurityNote, SecuritySink};
use crate::settings::{Effective, SettingsHandle};
use crate::ship::{Attempt, RetryPolicy, Shipper};
use crate::sources::usage::UsageSource;
use crate::sources::{build_sources, Checkpoint, Source};
use custos_model::registry::{Registry, Severity};
use custos_model::wire::{self, BatchPayload, Codec};
use custos_model::{BatchId, Event};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Drain every source (including a last line without a newline), ship
    /// everything, wait for the acknowledgements, and return.
    pub once: bool,
    /// Retry policy for each batch.
    pub retry: RetryPolicy,
    /// Receives the running totals after every acknowledged batch (for a
    /// progress display).
    pub progress: Option<Arc<watch::Sender<RunSummary>>>,
}

/// What a run shipped.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RunSummary {
    /// Batches acknowledged.
    pub batches: u64,
    /// Events acknowledged.
    pub events: u64,
    /// Batches the server already had (resent after a crash or retry).
    pub duplicate_batches: u64,
    /// Compressed bytes sent (acknowledged batches).
    pub bytes_sent: u64,
    /// Events not collected (above the effective level, or telemetry disabled).
    pub events_not_collected: u64,
    /// Queued events deleted because the level was lowered or telemetry disabled.
    pub events_purged: u64,
    /// Events the server refused (above the workspace's level or categories).
    pub events_refused: u64,
}

type Shared = Arc<Mutex<Box<dyn Source>>>;

/// Whether a source is governed by the telemetry settings or the usage switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Telemetry,
    Usage,
}

/// Batches of one source on the wire (or waiting to retry) at once.
const MAX_IN_FLIGHT: usize = 4;

/// The gate's view of the effective settings.
fn gate_state(e: &Effective) -> GateState {
    GateState { level: e.level.value, telemetry: e.enabled.value, usage: e.usage.value }
}

/// What one batch came to.
enum Outcome {
    /// Acknowledged: the ack, events sent, compressed bytes.
    Acked(custos_model::api::IngestAck, u64, u64),
    /// Every event was deleted before it could be sent.
    Purged,
    /// The agent is stopping: not acknowledged, so its position (and every
    /// later one of its source) is not committed and it is read again.
    Abandoned,
}

/// Everything a batch needs on its way out.
struct ShipCtx {
    shipper: Shipper,
    registry: &'static Registry,
    installation: Installation,
    ledger: Arc<Mutex<LedgerSlot>>,
    stats: Arc<Stats>,
    retry: RetryPolicy,
    security: SecuritySink,
}

/// The ledger, reopened after a write error poisoned it (a full disk that
/// has space again): the reopen cuts any torn tail, so the chain stays
/// verifiable.
struct LedgerSlot {
    state_dir: std::path::PathBuf,
    opts: LedgerOptions,
    ledger: Option<Ledger>,
}

impl LedgerSlot {
    fn with<T>(&mut self, f: impl Fn(&mut Ledger) -> Result<T, crate::ledger::LedgerError>) -> Result<T, crate::ledger::LedgerError> {
        for _ in 0..2 {
            if self.ledger.is_none() {
                self.ledger = Some(Ledger::open(&self.state_dir, self.opts.clone())?);
            }
            let Some(l) = self.ledger.as_mut() else { continue };
            match f(l) {
                Err(crate::ledger::LedgerError::Poisoned { .. }) => {
                    tracing::warn!("transparency ledger poisoned by an earlier write error; reopening it");
                    // Dropping it releases its lock so it can be reopened.
                    self.ledger = None;
                }
                other => return other,
            }
        }
        Ledger::open(&self.state_dir, self.opts.clone()).and_then(|mut l| {
            let r = f(&mut l);
            self.ledger = Some(l);
            r
        })
    }
}

/// A batch encoded for one content: its id, frame, and whether host names
/// were left in clear.
struct Encoded {
    batch_id: BatchId,
    frame: Vec<u8>,
    clear_hosts: bool,
}

async fn blocking_io<T: Send + 'static>(f: impl FnOnce() -> Result<T, AgentError> + Send + 'static) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AgentError::Invalid(format!("blocking task failed: {e}")))?
}

/// Pseudonymise, serialise, record in the ledger (durably), and frame.
///
/// The events are moved into the blocking task and back rather than copied
/// (a batch of 5000 log lines is several MiB of `Event`s), with their host
/// names pseudonymised in place for the payload and restored afterwards.
/// Only if that task panics are they lost; then `events` is left empty and
/// the error says so (the caller must not take that for a purge).
async fn encode_and_record(ctx: &Arc<ShipCtx>, events: &mut Vec<Event>, st: &GateState) -> Result<Encoded, AgentError> {
    let real_hosts = gate::pseudonymise_hosts(events, st, &ctx.installation);
    let batch_id = BatchId::new();
    let payload = BatchPayload { batch_id, created: custos_model::now_micros(), events: std::mem::take(events) };
    let ledger = ctx.ledger.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let json = wire::payload_json(&payload);
        let recorded = {
            // The exact bytes, before they are compressed and sent.
            let mut ledger = crate::sources::lock(&ledger);
            let recorded = ledger.with(|l| l.append_batch(batch_id, &json, custos_model::now_micros()));
            if recorded.is_ok() {
                // Keep the ledger within its size bound at any event rate,
                // not only at the hourly prune (cheap: no reads).
                if let Err(e) = ledger.with(|l| l.prune(custos_model::now_micros())) {
                    tracing::warn!(error = %e, "ledger not pruned");
                }
            }
            recorded
        };
        let frame = recorded
            .map(|_| wire::encode_raw(&json, Codec::Zstd))
            .map_err(|e| AgentError::Invalid(format!("cannot record the batch in the transparency ledger, so it is not sent: {e}")));
        (payload.events, frame)
    })
    .await;
    let (back, frame) = joined.map_err(|e| AgentError::Invalid(format!("encoding a batch failed and its events were lost: {e}")))?;
    *events = back;
    gate::restore_hosts(events, real_hosts);
    Ok(Encoded { batch_id, frame: frame?, clear_hosts: st.clear_host_names() })
}

/// Deliver one batch: gate it again before every attempt, record it in the
/// ledger before its first attempt, retry per the policy.
async fn deliver(
    ctx: Arc<ShipCtx>,
    mut events: Vec<Event>,
    mut settings: watch::Receiver<Effective>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Outcome, AgentError> {
    let n0 = events.len() as u64;
    ctx.stats.update(|c| {
        c.queued_batches += 1;
        c.queued_events += n0;
    });
    let result = deliver_inner(&ctx, &mut events, &mut settings, &mut shutdown).await;
    let left = events.len() as u64;
    ctx.stats.update(|c| {
        c.queued_batches = c.queued_batches.saturating_sub(1);
        c.queued_events = c.queued_events.saturating_sub(left);
    });
    result
}

async fn deliver_inner(
    ctx: &Arc<ShipCtx>,
    events: &mut Vec<Event>,
    settings: &mut watch::Receiver<Effective>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Outcome, AgentError> {
    let started = Instant::now();
    let mut delay = ctx.retry.initial;
    let mut attempts = 0u32;
    let mut encoded: Option<Encoded> = None;
    loop {
        let st = gate_state(&settings.borrow_and_update());
        // The queue's purge: events the settings no longer allow are deleted.
        let mut purged: BTreeMap<String, u64> = BTreeMap::new();
        events.retain(|e| {
            let keep = gate::allowed(ctx.registry, e, &st);
            if !keep {
                *purged.entry(e.category.name().to_string()).or_default() += 1;
            }
            keep
        });
        if !purged.is_empty() {
            let total: u64 = purged.values().sum();
            tracing::info!(events = total, level = %st.level, telemetry = st.telemetry, "deleted queued events the settings no longer allow");
            ctx.stats.update(|c| {
                c.queued_events = c.queued_events.saturating_sub(total);
                for (cat, n) in &purged {
                    *c.dropped_by_category.entry(cat.clone()).or_default() += n;
                }
            });
            encoded = None;
        }
        if events.is_empty() {
            return Ok(Outcome::Purged);
        }
        if encoded.as_ref().is_none_or(|x| x.clear_hosts != st.clear_host_names()) {
            match encode_and_record(ctx, events, &st).await {
                Ok(x) => encoded = Some(x),
                // The events went with a failed task: not a purge, so
                // fail rather than commit the position past them.
                Err(e) if events.is_empty() => return Err(e),
                Err(e) => {
                    // Fail closed: nothing leaves the host unrecorded. Wait and try again.
                    tracing::error!(error = %e, "transparency ledger unavailable; not sending");
                    if ctx.retry.give_up_after.is_some_and(|g| started.elapsed() >= g) {
                        return Err(e);
                    }
                    if wait(ctx.retry.max_delay.min(Duration::from_secs(5)), settings, shutdown).await {
                        return Ok(Outcome::Abandoned);
                    }
                    continue;
                }
            }
        }
        let Some(enc) = encoded.as_ref() else { continue };
        attempts += 1;
        let (err, retry_after) = match ctx.shipper.send_once(&enc.frame).await {
            Attempt::Acked(ack) => {
                let sent = events.len() as u64;
                let ledger = ctx.ledger.clone();
                let (bid, aid, acc, refd) = (enc.batch_id, ack.ack_id.clone(), ack.accepted, ack.refused);
                blocking_io(move || {
                    crate::sources::lock(&ledger)
                        .with(|l| l.append_ack(bid, &aid, acc, refd, custos_model::now_micros()))
                        .map_err(|e| AgentError::Invalid(format!("recording the acknowledgement in the ledger: {e}")))
                })
                .await
                .map(|_| ())
                .unwrap_or_else(|e| tracing::error!(error = %e, batch = %bid, "acknowledged batch not recorded in the ledger"));
                let now = custos_model::now_micros();
                ctx.stats.update(|c| {
                    c.events_uploaded += sent.saturating_sub(ack.refused);
                    c.refused_by_server += ack.refused;
                    c.last_upload_time = Some(now);
                });
                return Ok(Outcome::Acked(ack, sent, enc.frame.len() as u64));
            }
            Attempt::Permanent(e) => {
                if let AgentError::Refused { status: 401 | 403, message } = &e {
                    (ctx.security)(SecurityNote { kind: kind::AUTH_FAILURE, outcome: "refused".into(), detail: message.clone() });
                }
                return Err(e);
            }
            Attempt::Retry(e, ra) => (e, ra),
        };
        if err.to_string().contains("does not match the pinned key") {
            (ctx.security)(SecurityNote { kind: kind::PIN_MISMATCH, outcome: "refused".into(), detail: err.to_string() });
        }
        if ctx.retry.give_up_after.is_some_and(|g| started.elapsed() >= g) {
            return Err(AgentError::GaveUp { attempts, last: err.to_string() });
        }
        let pause = ctx.retry.pause(delay, retry_after);
        tracing::warn!(error = %err, attempt = attempts, retry_in_ms = pause.as_millis() as u64, "batch not delivered; will retry");
        if wait(pause, settings, shutdown).await {
            tracing::warn!(error = %err, "stopping; batch not delivered, it is read again at the next start");
            return Ok(Outcome::Abandoned);
        }
        delay = ctx.retry.next_delay(delay);
    }
}

/// Sleep for `d`, or until the settings change (then return false at once,
/// so the batch is gated again), or until shutdown (return true).
async fn wait(d: Duration, settings: &mut watch::Receiver<Effective>, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = settings.changed() => {
            if r.is_err() {
                tokio::time::sleep(d).await;
            }
            false
        }
        _ = shutdown.changed() => true,
    }
}

/// One batch of a source, in order: its checkpoint and its delivery task
/// (`None` when the poll gave nothing to send).
type Pending = (Checkpoint, Option<tokio::task::JoinHandle<Result<Outcome, AgentError>>>);

/// A source and the batches it has on the way.
struct SourceState {
    src: Shared,
    kind: Kind,
    inflight: std::collections::VecDeque<Pending>,
    /// Polled until it had nothing more (`--once`), or abandoned at shutdown.
    done: bool,
}

/// Consume the finished batches at the front of a source's queue, in order,
/// committing the position after each; with `all`, wait for every batch.
async fn finish(st: &mut SourceState, all: bool, summary: &mut RunSummary, progress: Option<&watch::Sender<RunSummary>>) -> Result<(), AgentError> {
    while let Some((_, h)) = st.inflight.front() {
        if !all && h.as_ref().is_some_and(|h| !h.is_finished()) {
            break;
        }
        let Some((cp, h)) = st.inflight.pop_front() else { break };
        if let Some(h) = h {
            let outcome = h.await.map_err(|e| AgentError::Invalid(format!("delivery task failed: {e}")))??;
            match outcome {
                Outcome::Acked(ack, n, bytes) => {
                    summary.batches += 1;
                    summary.events += n.saturating_sub(ack.refused);
                    summary.events_refused += ack.refused;
                    summary.bytes_sent += bytes;
                    if ack.duplicate {
                        summary.duplicate_batches += 1;
                    }
                    tracing::debug!(batch = %ack.batch_id, events = n, ack = %ack.ack_id, "batch acknowledged");
                }
                Outcome::Purged => {}
                Outcome::Abandoned => {
                    // Nothing after it may commit either (checkpoints are cumulative).
                    for (_, rest) in st.inflight.drain(..) {
                        if let Some(r) = rest {
                            let _ = r.await;
                        }
                    }
                    st.done = true;
                    return Ok(());
                }
            }
            if let Some(p) = progress {
                p.send_replace(summary.clone());
            }
        }
        blocking(&st.src, move |s| s.commit(&cp)).await?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    src: &Shared,
    f: impl FnOnce(&mut dyn Source) -> Result<T, crate::sources::SourceError> + Send + 'static,
) -> Result<T, AgentError> {
    let src = src.clone();
    tokio::task::spawn_blocking(move || {
        // A poisoned lock means a poll panicked; the source state is still
        // the last committed one, so continuing is safe.
        let mut guard = src.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.as_mut())
    })
    .await
    .map_err(|e| AgentError::Invalid(format!("source task failed: {e}")))?
    .map_err(AgentError::from)
}

/// Classify and gate one poll's events: returns those to send.
/// Filters in place: the kept events are not moved when none is dropped.
fn gate_events(reg: &Registry, mut events: Vec<Event>, st: &GateState, stats: &Stats) -> Vec<Event> {
    let read = events.len() as u64;
    let (mut not_collected, mut invalid, mut alerts) = (0u64, 0u64, 0u64);
    events.retain_mut(|e| {
        if let Err(v) = gate::classify(reg, e) {
            // A source produced something the registry does not declare:
            // a bug, never shipped.
            invalid += 1;
            tracing::error!(table = %e.table.as_str(), violation = %v, "event not in the registry; not collected");
            return false;
        }
        if reg.table(e.table.as_str()).is_none_or(|t| t.level_by_severity)
            && Severity::of_value(e.attrs.get(custos_model::registry::SEVERITY_FIELD)) <= Severity::Critical
        {
            alerts += 1;
        }
        let keep = gate::allowed(reg, e, st);
        if !keep {
            not_collected += 1;
        }
        keep
    });
    stats.update(|c| {
        c.events_read += read;
        c.events_not_collected += not_collected;
        c.events_invalid += invalid;
        c.critical_alerts += alerts;
    });
    events
}

fn runtime_status(stats: &Stats) -> RuntimeStatus {
    let c = stats.snapshot();
    RuntimeStatus {
        queued_events: c.queued_events,
        queued_batches: c.queued_batches,
        events_read: c.events_read,
        events_uploaded: c.events_uploaded,
        events_not_collected: c.events_not_collected,
        events_purged: c.dropped_by_category.values().sum(),
        dropped_by_category: c.dropped_by_category,
        refused_by_server: c.refused_by_server,
        last_upload_time: c.last_upload_time,
    }
}

fn snapshot(e: &Effective) -> SettingsSnapshot {
    SettingsSnapshot {
        enabled: (e.enabled.value, e.enabled.origin.to_string()),
        level: (e.level.value, e.level.origin.to_string()),
        usage: (e.usage.value, e.usage.origin.to_string()),
    }
}

/// The file that records that this enrollment's security events were queued.
const ENROLLMENT_NOTED_FILE: &str = "enrollment-noted";

/// Queue `enrolled` and `key_generated` once per enrollment.
fn note_enrollment(state_dir: &Path, id: &identity::Identity, stats: &Stats) {
    let marker = state_dir.join(ENROLLMENT_NOTED_FILE);
    let tag = format!("{}\n", id.agent_id);
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(tag.as_str()) {
        return;
    }
    stats.note_security(SecurityNote { kind: kind::KEY_GENERATED, outcome: "ok".into(), detail: "agent key pair generated at enrollment; the private key never leaves the host".into() });
    stats.note_security(SecurityNote {
        kind: kind::ENROLLED,
        outcome: "ok".into(),
        detail: format!("enrolled as agent {}; certificate valid until {}", id.agent_id, id.cert_not_after),
    });
    if let Err(e) = crate::fsutil::write_atomic(&marker, tag.as_bytes(), 0o600) {
        tracing::warn!(error = %e, "cannot record that the enrollment was reported");
    }
}

/// Run the agent from an enrolled state dir until done (`once`) or until
/// `shutdown` flips; then finish the batch in flight and return.
pub async fn run(state_dir: &Path, cfg: &AgentConfig, opts: RunOptions, shutdown: watch::Receiver<bool>) -> Result<RunSummary, AgentError> {
    let (id, client) = identity::load(state_dir)?;
    let installation = Installation::load_or_create(state_dir)?;
    let hostname = cfg.agent.resolve_hostname()?;
    let registry = Registry::builtin();
    let stats = Arc::new(Stats::default());
    let sink: SecuritySink = {
        let stats = stats.clone();
        Arc::new(move |n| stats.note_security(n))
    };
    note_enrollment(state_dir, &id, &stats);

    let tcfg = &cfg.telemetry;
    let settings = SettingsHandle::open(state_dir, tcfg).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let policy_task = tokio::spawn(crate::settings::watch_policy(settings.clone(), tcfg.policy_reload));
    let control = {
        let stats = stats.clone();
        let status: Arc<dyn crate::control::StatusSource> = Arc::new(move || runtime_status(&stats));
        ControlServer::start(&tcfg.control_socket_path(state_dir), settings.clone(), status, sink.clone())
            .await
            .map_err(|e| AgentError::Invalid(format!("control socket: {e}")))?
    };
    let ledger_opts = LedgerOptions { max_bytes: tcfg.ledger_max_bytes, max_age: tcfg.ledger_max_age, ..LedgerOptions::default() };
    let ledger = Ledger::open(state_dir, ledger_opts.clone()).map_err(|e| {
        AgentError::Invalid(format!(
            "transparency ledger in {}: {e} (nothing is sent without it; if it is damaged, move it aside and keep it as evidence)",
            crate::ledger::ledger_dir(state_dir).display()
        ))
    })?;
    let ledger = Arc::new(Mutex::new(LedgerSlot { state_dir: state_dir.to_path_buf(), opts: ledger_opts, ledger: Some(ledger) }));

    let result = run_loop(state_dir, cfg, opts, shutdown, RunParts { id, client, installation, hostname, registry, stats, sink, settings, ledger }).await;
    control.shutdown().await;
    policy_task.abort();
    result
}

struct RunParts {
    id: identity::Identity,
    client: reqwest::Client,
    installation: Installation,
    hostname: String,
    registry: &'static Registry,
    stats: Arc<Stats>,
    sink: SecuritySink,
    settings: SettingsHandle,
    ledger: Arc<Mutex<LedgerSlot>>,
}

async fn run_loop(state_dir: &Path, cfg: &AgentConfig, opts: RunOptions, mut shutdown: watch::Receiver<bool>, p: RunParts) -> Result<RunSummary, AgentError> {
    let RunParts { id, client, installation, hostname, registry, stats, sink, settings, ledger } = p;
    let tcfg = &cfg.telemetry;
    let mut sources: Vec<(Shared, Kind)> = Vec::new();
    let facts = Facts {
        installation_id: installation.id.to_string(),
        hostname: hostname.clone(),
        os_name: crate::sources::inventory::os_name(),
        source_types: {
            let mut t: Vec<String> = cfg.sources.iter().map(|s| s.type_name().to_string()).collect();
            t.sort();
            t.dedup();
            t
        },
    };
    {
        let h = settings.clone();
        let internal = InternalSource::new(facts, stats.clone(), Box::new(move || snapshot(&h.effective())), tcfg.health_interval);
        sources.push((Arc::new(Mutex::new(Box::new(internal))), Kind::Telemetry));
    }
    for s in build_sources(cfg, state_dir, &hostname)? {
        sources.push((Arc::new(Mutex::new(s)), Kind::Telemetry));
    }
    let usage = UsageSource::new(&installation.id.to_string(), &hostname, crate::sources::usage::system_clock())
        .with_state_dir(state_dir)?
        .with_period(tcfg.usage_period);
    sources.push((Arc::new(Mutex::new(Box::new(usage))), Kind::Usage));

    let mut eff_rx = settings.subscribe();
    let ctx = Arc::new(ShipCtx {
        shipper: Shipper::new(client, &id.server),
        registry,
        installation,
        ledger: ledger.clone(),
        stats: stats.clone(),
        retry: opts.retry.clone(),
        security: sink.clone(),
    });
    let max_events = cfg.agent.batch_max_events;
    let max_bytes = cfg.agent.batch_max_bytes;
    let mut summary = RunSummary::default();
    let mut was_enabled = eff_rx.borrow().enabled.value;
    let mut last_policy_error: Option<String> = None;
    let mut last_prune = Instant::now();
    let mut states: Vec<SourceState> =
        sources.into_iter().map(|(src, kind)| SourceState { src, kind, inflight: Default::default(), done: false }).collect();
    // Woken by every finished delivery, so positions commit promptly.
    let delivered = Arc::new(tokio::sync::Notify::new());
    tracing::info!(agent = %id.agent_id, server = %id.server, sources = states.len(), once = opts.once, "agent running");
    loop {
        let eff = eff_rx.borrow_and_update().clone();
        if eff.policy_error != last_policy_error {
            if let Some(why) = &eff.policy_error {
                sink(SecurityNote { kind: kind::POLICY_INVALID, outcome: "disabled".into(), detail: why.clone() });
            }
            last_policy_error = eff.policy_error.clone();
        }
        if eff.enabled.value && !was_enabled {
            // Enabled again: what accumulated while disabled is not collected.
            for st in &states {
                if st.kind == Kind::Telemetry {
                    blocking(&st.src, |s| s.skip_to_end()).await?;
                }
            }
            tracing::info!("telemetry enabled; sources resume from now");
        }
        was_enabled = eff.enabled.value;
        let stopping = *shutdown.borrow();
        for st in &mut states {
            finish(st, stopping, &mut summary, opts.progress.as_deref()).await?;
            if stopping || st.done {
                continue;
            }
            let gs = gate_state(&eff_rx.borrow());
            let active = match st.kind {
                Kind::Telemetry => gs.telemetry,
                Kind::Usage => gs.usage,
            };
            if !active {
                if opts.once {
                    st.done = true;
                }
                continue;
            }
            // Up to `MAX_IN_FLIGHT` batches of each source wait or travel at
            // once (a dead server does not stop the other sources); their
            // positions commit in order, each only once every batch before
            // it is acknowledged.
            while st.inflight.len() < MAX_IN_FLIGHT {
                let drain = opts.once;
                let poll = blocking(&st.src, move |s| s.poll(max_events, max_bytes, drain)).await?;
                let exhausted = poll.exhausted;
                let gs = gate_state(&eff_rx.borrow());
                let events = gate_events(registry, poll.events, &gs, &stats);
                if events.is_empty() {
                    if st.inflight.is_empty() {
                        // Nothing pending: the position may advance (skipped
                        // empty lines, a rotation, events not collected) right away.
                        let cp = poll.checkpoint;
                        blocking(&st.src, move |s| s.commit(&cp)).await?;
                    } else {
                        st.inflight.push_back((poll.checkpoint, None));
                    }
                } else {
                    let fut = deliver(ctx.clone(), events, eff_rx.clone(), shutdown.clone());
                    let notify = delivered.clone();
                    let h = tokio::spawn(async move {
                        let r = fut.await;
                        notify.notify_one();
                        r
                    });
                    st.inflight.push_back((poll.checkpoint, Some(h)));
                }
                if exhausted {
                    if opts.once {
                        st.done = true;
                    }
                    break;
                }
            }
        }
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            last_prune = Instant::now();
            let l = ledger.clone();
            let pruned = blocking_io(move || {
                crate::sources::lock(&l).with(|l| l.prune(custos_model::now_micros())).map_err(|e| AgentError::Invalid(format!("pruning the ledger: {e}")))
            })
            .await;
            if let Err(e) = pruned {
                tracing::warn!(error = %e, "ledger not pruned");
            }
        }
        if stopping {
            break;
        }
        if opts.once && states.iter().all(|st| st.done) {
            for st in &mut states {
                finish(st, true, &mut summary, opts.progress.as_deref()).await?;
            }
            break;
        }
        let busy = states.iter().any(|st| st.inflight.len() >= MAX_IN_FLIGHT);
        let pause = if opts.once { Duration::from_millis(20) } else { cfg.agent.flush_interval };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
            _ = eff_rx.changed() => {}
            _ = delivered.notified(), if busy || opts.once => {}
        }
    }
    let c = stats.snapshot();
    summary.events_not_collected = c.events_not_collected;
    summary.events_purged = c.dropped_by_category.values().sum();
    tracing::info!(batches = summary.batches, events = summary.events, not_collected = summary.events_not_collected, purged = summary.events_purged, "agent stopped");
    Ok(summary)
}
