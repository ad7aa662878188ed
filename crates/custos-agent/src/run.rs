//! The agent's main loop. Each source has a collector task: poll, pass
//! every event through the consent gate, append the events to the durable
//! queue ([`crate::queue`]) and, once they are durable, commit the source's
//! position. One shipper task takes records from the queue, gates them
//! again, records them in the transparency ledger, compresses and sends
//! them, and removes them from the queue only after the server's
//! acknowledgement. A crash at any point loses nothing that was committed:
//! the queue holds it, and the server's batch-id deduplication keeps a
//! resent batch from being stored twice.
//!
//! Around the loop run the settings ([`crate::settings`]: configuration,
//! local changes, managed policy), the policy watcher, and the control
//! socket ([`crate::control`]) through which `custos telemetry ...` changes
//! settings while the agent runs. A change takes effect at once:
//!
//! - events are gated at collection ([`crate::gate`]) with the settings of
//!   that moment, and again before every send attempt;
//! - the queue is purged at once: disabling telemetry deletes every queued
//!   record but usage, disabling usage the usage records, and lowering the
//!   level rewrites the records holding events above it (a filtered copy
//!   under a derived batch id). Deleted events are counted by category and
//!   never sent;
//! - while telemetry is disabled, no telemetry source is polled; when it is
//!   enabled again, every source first skips what accumulated meanwhile
//!   ([`Source::skip_to_end`]), so nothing written while disabled is
//!   collected;
//! - usage records follow the usage switch only.
//!
//! The batch id sent for a queued record is derived from the record's id
//! and whether host names travel in clear ([`queue::format::derived_batch_id`]),
//! so the same content always travels under the same id. What a batch
//! sends is written to the ledger (durably) before its first attempt.
//!
//! Retries follow [`RetrySchedule`]: one failed attempt puts the shipper in
//! an outage in which only one batch at a time probes the server, at the
//! schedule's times (or the server's Retry-After); the first success ends
//! it. A permanent refusal moves the batch to the dead-letter store
//! ([`crate::deadletter`]).

use crate::config::AgentConfig;
use crate::control::{ControlServer, RuntimeStatus};
use crate::deadletter::{categories_of, DeadLetters, NewDeadLetter};
use crate::error::AgentError;
use crate::gate::{self, GateState};
use crate::identity;
use crate::installation::Installation;
use crate::internal::{Facts, InternalSource, SettingsSnapshot, Stats};
use crate::ledger::{Ledger, LedgerOptions};
use crate::queue::format::{derived_batch_id, DoneReason};
use crate::queue::{Queue, QueueError, QueueOptions, QueueStatus, Taken};
use crate::redaction::{self, HostRedaction};
use custos_redact::Session;
use crate::seal::SealKey;
use crate::security::{kind, SecurityNote, SecuritySink};
use crate::settings::{Effective, SettingsHandle};
use crate::ship::{Attempt, RetrySchedule, Shipper};
use crate::sources::usage::UsageSource;
use crate::sources::{build_sources, Checkpoint, Source};
use custos_model::registry::{Registry, Severity};
use custos_model::wire::{self, BatchPayload, Codec};
use custos_model::{BatchId, Category, Event};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Drain every source (including a last line without a newline), ship
    /// everything, wait for the acknowledgements, and return.
    pub once: bool,
    /// Give up (an error) when the server has not acknowledged anything for
    /// this long; overrides `[retry] give_up_after_secs`.
    pub give_up_after: Option<Duration>,
    /// Receives the running totals after every acknowledged batch (for a
    /// progress display).
    pub progress: Option<Arc<watch::Sender<RunSummary>>>,
    /// The clock of the retry schedule (default: the system clock). Tests
    /// pass a [`crate::clock::ManualClock`] to run hours of outage at once.
    pub clock: Option<Arc<dyn crate::clock::Clock>>,
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
    /// Events evicted from the full queue.
    pub events_evicted: u64,
    /// Batches moved to the dead-letter store.
    pub dead_letters: u64,
    /// Findings redacted on the host, by entity.
    pub redacted_by_entity: BTreeMap<String, u64>,
    /// Events dropped by the redaction policy.
    pub events_dropped_by_redaction: u64,
}

type Shared = Arc<Mutex<Box<dyn Source>>>;

/// Whether a source is governed by the telemetry settings or the usage switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Telemetry,
    Usage,
}

/// Batches on the wire at once while the server answers.
const MAX_IN_FLIGHT: usize = 4;

/// The gate's view of the effective settings.
fn gate_state(e: &Effective) -> GateState {
    GateState { level: e.level.value, telemetry: e.enabled.value, usage: e.usage.value }
}

/// The ledger, reopened after a write error poisoned it (a full disk that
/// has space again): the reopen cuts any torn tail, so the chain stays
/// verifiable.
struct LedgerSlot {
    state_dir: PathBuf,
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

async fn blocking_io<T: Send + 'static>(f: impl FnOnce() -> Result<T, AgentError> + Send + 'static) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AgentError::Invalid(format!("blocking task failed: {e}")))?
}

// ---- the queue, shared ----

/// Durability of what was appended: everything below `durable` is synced,
/// unless `epoch` changed since the append (a failed sync reopened the
/// queue, and the append may be lost).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Synced {
    durable: u64,
    epoch: u64,
}

/// The queue shared by collectors, the syncer and the shipper. Queue calls
/// run on blocking threads; a write error drops the queue and the next call
/// reopens it (which cuts a torn tail).
struct QueueHandle {
    state_dir: PathBuf,
    opts: QueueOptions,
    key: Arc<SealKey>,
    queue: Mutex<Option<Queue>>,
    synced: watch::Sender<Synced>,
    /// Appends waiting for a sync.
    dirty: Notify,
    /// Records became ready to send.
    ready: Notify,
    /// Groups between their append and their commit (kept pending across a reopen).
    appending: Mutex<HashSet<u64>>,
    /// The last status, for the control socket (which must not block).
    status: Mutex<QueueStatus>,
    stats: Arc<Stats>,
}

impl QueueHandle {
    /// Run `f` on the queue on a blocking thread, reopening it first if an
    /// earlier error dropped it.
    async fn call<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static) -> Result<T, AgentError> {
        let me = self.clone();
        blocking_io(move || me.call_blocking(f)).await
    }

    fn call_blocking<T>(&self, f: impl FnOnce(&mut Queue) -> Result<T, QueueError>) -> Result<T, AgentError> {
        let mut guard = crate::sources::lock(&self.queue);
        if guard.is_none() {
            let (mut q, rec) = Queue::open(&self.state_dir, self.opts.clone(), self.key.clone())
                .map_err(|e| AgentError::Invalid(format!("reopening the queue: {e}")))?;
            tracing::warn!(records = rec.records, torn_bytes = rec.wal.torn_tail_bytes, "queue reopened after a write error");
            // Groups this process committed but whose committed record was
            // lost: commit them again. Groups still being appended stay
            // pending for their collector to find.
            let appending = crate::sources::lock(&self.appending).clone();
            for (g, _) in rec.checkpoints {
                if !appending.contains(&g) {
                    q.mark_committed(g);
                }
            }
            self.synced.send_modify(|s| s.epoch += 1);
            *guard = Some(q);
        }
        let Some(q) = guard.as_mut() else { return Err(AgentError::Invalid("queue unavailable".into())) };
        let r = f(q);
        let st = q.status();
        self.stats.update(|c| {
            c.queued_events = st.events;
            c.queued_batches = st.records;
        });
        *crate::sources::lock(&self.status) = st;
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                if matches!(e, QueueError::Wal(_)) {
                    tracing::error!(error = %e, "queue write failed; it is reopened at the next use");
                    *guard = None;
                    self.synced.send_modify(|s| s.epoch += 1);
                }
                Err(AgentError::Invalid(format!("queue: {e}")))
            }
        }
    }

    /// Wait until everything below `lsn + 1` is durable. `Err` when a sync
    /// failed in between (the records may be lost: check and append again).
    async fn wait_durable(&self, last_lsn: u64, epoch: u64, shutdown: &mut watch::Receiver<bool>) -> Result<(), AgentError> {
        let mut rx = self.synced.subscribe();
        loop {
            {
                let s = *rx.borrow_and_update();
                if s.epoch != epoch {
                    return Err(AgentError::Invalid("queue sync failed".into()));
                }
                if s.durable > last_lsn {
                    return Ok(());
                }
            }
            self.dirty.notify_one();
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(AgentError::Invalid("queue closed".into())) },
                _ = shutdown.changed() => {
                    // Give the syncer one more chance, then stop waiting.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let s = *rx.borrow();
                    return if s.epoch == epoch && s.durable > last_lsn { Ok(()) } else { Err(AgentError::Invalid("stopping".into())) };
                }
            }
        }
    }
}

/// Group commit: at most one sync per `interval`; an append after a quiet
/// spell is synced at once, appends that follow within the interval wait
/// for the next sync together.
async fn syncer(qh: Arc<QueueHandle>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut last = Instant::now().checked_sub(interval).unwrap_or_else(Instant::now);
    loop {
        tokio::select! {
            _ = qh.dirty.notified() => {}
            _ = stop.changed() => {}
        }
        let stopping = *stop.borrow();
        if !stopping {
            tokio::time::sleep_until(last + interval).await;
        }
        last = Instant::now();
        let epoch = qh.synced.borrow().epoch;
        match qh.call(|q| q.sync()).await {
            Ok(durable) => {
                qh.synced.send_modify(|s| {
                    if s.epoch == epoch {
                        s.durable = s.durable.max(durable);
                    } else {
                        s.durable = durable;
                    }
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "queue sync failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                qh.dirty.notify_one();
            }
        }
        if stopping {
            return;
        }
    }
}

// ---- collectors ----

/// What a collector shares with the rest of the run.
struct CollectCtx {
    registry: &'static Registry,
    stats: Arc<Stats>,
    queue: Arc<QueueHandle>,
    security: SecuritySink,
    max_events: usize,
    max_bytes: usize,
    flush_interval: Duration,
    once: bool,
    redaction: HostRedaction,
}

/// Redact one poll's events off the async threads (see [`crate::redaction`]).
async fn redact(ctx: &Arc<CollectCtx>, state: &mut Option<(Session, Vec<(String, String)>)>, mut events: Vec<Event>) -> Result<Vec<Event>, AgentError> {
    let (mut session, mut pending) = match state.take() {
        Some(s) => s,
        None => (Session::new(ctx.redaction.redactor.clone()), Vec::new()),
    };
    let (map, stats) = (ctx.redaction.map.clone(), ctx.stats.clone());
    let (session, pending, events) = tokio::task::spawn_blocking(move || {
        redaction::redact_events(&mut session, &mut events, &map, &mut pending, &stats);
        (session, pending, events)
    })
    .await
    .map_err(|e| AgentError::Invalid(format!("redaction task failed: {e}")))?;
    *state = Some((session, pending));
    Ok(events)
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

/// Poll one source until it is exhausted (`once`) or the agent stops.
async fn collect(
    ctx: Arc<CollectCtx>,
    src: Shared,
    kind: Kind,
    mut settings: watch::Receiver<Effective>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let name = crate::sources::lock(&src).name();
    let mut was_active = true;
    let mut redaction_state = None;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let gs = gate_state(&settings.borrow_and_update());
        let active = match kind {
            Kind::Telemetry => gs.telemetry,
            Kind::Usage => gs.usage,
        };
        if !active {
            was_active = false;
            if ctx.once {
                return Ok(());
            }
            tokio::select! {
                _ = settings.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        if !was_active && kind == Kind::Telemetry {
            // Enabled again: what accumulated while disabled is not collected.
            blocking(&src, |s| s.skip_to_end()).await?;
            tracing::info!(source = %name, "telemetry enabled; the source resumes from now");
        }
        was_active = true;
        let (max_events, max_bytes, drain) = (ctx.max_events, ctx.max_bytes, ctx.once);
        let poll = blocking(&src, move |s| s.poll(max_events, max_bytes, drain)).await?;
        let exhausted = poll.exhausted;
        let gs = gate_state(&settings.borrow());
        let mut events = gate_events(ctx.registry, poll.events, &gs, &ctx.stats);
        if !events.is_empty() {
            events = redact(&ctx, &mut redaction_state, events).await?;
        }
        if events.is_empty() {
            // Every earlier poll of this source is committed already.
            if !commit_retrying(&src, &name, poll.checkpoint, &mut shutdown).await {
                return Ok(());
            }
        } else if !enqueue(&ctx, &src, &name, events, poll.checkpoint, &mut shutdown).await? {
            return Ok(());
        }
        if exhausted {
            if ctx.once {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(ctx.flush_interval) => {}
                _ = settings.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Commit a source position, retrying with backoff (up to 30 s) when the
/// state file cannot be written (a full disk): the source is not polled
/// meanwhile. Returns false when the agent stops first.
async fn commit_retrying(src: &Shared, name: &str, cp: Checkpoint, shutdown: &mut watch::Receiver<bool>) -> bool {
    let cp = Arc::new(cp);
    let mut delay = Duration::from_millis(250);
    loop {
        let c = cp.clone();
        match blocking(src, move |s| s.commit(&c)).await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, source = name, retry_in_ms = delay.as_millis() as u64, "cannot commit the source position; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return false,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Append one poll's events to the queue, wait until they are durable,
/// commit the source's position, and mark the group committed. A failed
/// write (a full disk) is retried with the same events until it succeeds;
/// the source is not polled meanwhile. Returns false when the agent stops
/// before the events were durable (the position is then not committed and
/// they are read again at the next start).
async fn enqueue(
    ctx: &Arc<CollectCtx>,
    src: &Shared,
    name: &str,
    events: Vec<Event>,
    cp: Checkpoint,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, AgentError> {
    let events = Arc::new(events);
    let cp = Arc::new(cp);
    let mut delay = Duration::from_millis(250);
    let mut reported = false;
    loop {
        let epoch = ctx.queue.synced.borrow().epoch;
        let (evs, c, n) = (events.clone(), cp.clone(), name.to_string());
        // Encode (JSON, zstd) before taking the queue's lock.
        let encoded = blocking_io(move || Queue::encode_group(&n, &evs, &c).map_err(|e| AgentError::Invalid(format!("queue: {e}")))).await?;
        let appended = ctx.queue.call(move |q| q.append_encoded(encoded)).await;
        let outcome = match appended {
            Ok(a) => {
                crate::sources::lock(&ctx.queue.appending).insert(a.group);
                let durable = ctx.queue.wait_durable(a.last_lsn, epoch, shutdown).await;
                let durable = match durable {
                    Ok(()) => Ok(()),
                    Err(e) if *shutdown.borrow() => Err(e),
                    // The sync failed: the group may still have reached the disk.
                    Err(e) => match ctx.queue.call(move |q| Ok(q.has_pending_group(a.group))).await {
                        Ok(true) => Ok(()),
                        _ => Err(e),
                    },
                };
                Some((a, durable))
            }
            Err(e) => {
                tracing::warn!(error = %e, source = name, "cannot append to the queue");
                None
            }
        };
        match outcome {
            Some((a, Ok(()))) => {
                let evicted: u64 = a.evicted.values().sum::<u64>() + a.dropped.values().sum::<u64>();
                if evicted > 0 {
                    ctx.stats.update(|c| {
                        for (cat, n) in a.evicted.iter().chain(a.dropped.iter()) {
                            *c.evicted_by_category.entry(cat.name().to_string()).or_default() += n;
                        }
                    });
                    tracing::warn!(events = evicted, "queue full: least important events evicted");
                }
                if !commit_retrying(src, name, (*cp).clone(), shutdown).await {
                    // Stopping: the group stays pending in the queue and its
                    // checkpoint is committed at the next start.
                    crate::sources::lock(&ctx.queue.appending).remove(&a.group);
                    return Ok(false);
                }
                let g = a.group;
                ctx.queue.call(move |q| {
                    q.mark_committed(g);
                    Ok(())
                })
                .await?;
                crate::sources::lock(&ctx.queue.appending).remove(&g);
                ctx.queue.dirty.notify_one();
                ctx.queue.ready.notify_one();
                if reported {
                    tracing::info!(source = name, "queue writable again");
                }
                return Ok(true);
            }
            Some((a, Err(e))) => {
                crate::sources::lock(&ctx.queue.appending).remove(&a.group);
                if *shutdown.borrow() {
                    return Ok(false);
                }
                tracing::warn!(error = %e, source = name, "queued events were not made durable; appending them again");
            }
            None => {}
        }
        ctx.stats.update(|c| c.queue_write_failures += 1);
        if !reported {
            reported = true;
            (ctx.security)(SecurityNote {
                kind: kind::QUEUE_WRITE_FAILED,
                outcome: "retrying".into(),
                detail: format!("the durable queue cannot be written (a full disk?); source {name} waits until it can"),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return Ok(false),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

// ---- the shipper ----

/// Everything a delivery needs.
struct ShipCtx {
    shipper: std::sync::RwLock<Shipper>,
    registry: &'static Registry,
    installation: Installation,
    ledger: Arc<Mutex<LedgerSlot>>,
    stats: Arc<Stats>,
    schedule: RetrySchedule,
    security: SecuritySink,
    queue: Arc<QueueHandle>,
    dead_letters: DeadLetters,
    /// Batch ids already written to the ledger by this process.
    recorded: Mutex<HashSet<BatchId>>,
}

/// The result of one delivery attempt of a queued record.
enum Delivery {
    /// Acknowledged: the ack, events sent, compressed bytes.
    Acked(custos_model::api::IngestAck, u64, u64),
    /// Every event was purged by the gate before it could be sent.
    Purged,
    /// Refused for good and moved to the dead-letter store.
    DeadLettered,
    /// Not delivered; try again later (the server's Retry-After, if any).
    Retry(AgentError, Option<Duration>),
}

/// Count purged events by category.
fn count_purged(stats: &Stats, purged: &BTreeMap<Category, u64>) {
    if purged.is_empty() {
        return;
    }
    let total: u64 = purged.values().sum();
    tracing::info!(events = total, "deleted queued events the settings no longer allow");
    stats.update(|c| {
        for (cat, n) in purged {
            *c.dropped_by_category.entry(cat.name().to_string()).or_default() += n;
        }
    });
}

/// Pseudonymise, serialise, record in the ledger (durably, once per batch
/// id), and frame.
fn encode_and_record(ctx: &ShipCtx, events: &mut Vec<Event>, st: &GateState, batch_id: BatchId) -> Result<Vec<u8>, AgentError> {
    let real_hosts = gate::pseudonymise_hosts(events, st, &ctx.installation);
    let payload = BatchPayload { batch_id, created: custos_model::now_micros(), events: std::mem::take(events) };
    let json = wire::payload_json(&payload);
    *events = payload.events;
    gate::restore_hosts(events, real_hosts);
    let first = !crate::sources::lock(&ctx.recorded).contains(&batch_id);
    if first {
        // The exact bytes, before they are compressed and sent.
        let mut ledger = crate::sources::lock(&ctx.ledger);
        ledger
            .with(|l| l.append_batch(batch_id, &json, custos_model::now_micros()))
            .map_err(|e| AgentError::Invalid(format!("cannot record the batch in the transparency ledger, so it is not sent: {e}")))?;
        // Keep the ledger within its size bound at any event rate (cheap: no reads).
        if let Err(e) = ledger.with(|l| l.prune(custos_model::now_micros())) {
            tracing::warn!(error = %e, "ledger not pruned");
        }
        crate::sources::lock(&ctx.recorded).insert(batch_id);
    }
    Ok(wire::encode_raw(&json, Codec::Zstd))
}

/// Gate a taken record again: events the settings no longer allow are
/// deleted (counted), and the record is replaced in the queue by a filtered
/// copy under a derived batch id (or finished as purged when nothing is
/// left). Returns whether any event is left.
async fn regate(ctx: &Arc<ShipCtx>, t: &mut Taken, st: &GateState) -> Result<bool, AgentError> {
    let before = t.events.len();
    let mut purged: BTreeMap<Category, u64> = BTreeMap::new();
    t.events.retain(|e| {
        let keep = gate::allowed(ctx.registry, e, st);
        if !keep {
            *purged.entry(e.category).or_default() += 1;
        }
        keep
    });
    if t.events.len() == before {
        return Ok(true);
    }
    count_purged(&ctx.stats, &purged);
    let tag = format!("purged:{}:{}:{}:{}", st.level, st.telemetry, st.usage, t.events.len());
    let new_id = derived_batch_id(t.batch_id, tag.as_bytes());
    let (lsn, kept, src) = (t.lsn, t.events.clone(), t.source.clone());
    match ctx.queue.call(move |q| q.replace(lsn, kept, new_id, &src)).await? {
        Some(new_lsn) => {
            t.lsn = new_lsn;
            t.batch_id = new_id;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Gate a taken record again and make one attempt to deliver it.
async fn deliver(ctx: Arc<ShipCtx>, mut t: Taken, st: GateState) -> (Taken, Delivery) {
    match regate(&ctx, &mut t, &st).await {
        Ok(true) => {}
        Ok(false) => return (t, Delivery::Purged),
        Err(e) => return (t, Delivery::Retry(e, None)),
    }
    let sent_id = derived_batch_id(t.batch_id, if st.clear_host_names() { b"hosts:clear" } else { b"hosts:pseudonymous" });
    let (ctx2, mut events) = (ctx.clone(), std::mem::take(&mut t.events));
    let joined = tokio::task::spawn_blocking(move || {
        let frame = encode_and_record(&ctx2, &mut events, &st, sent_id);
        (events, frame)
    })
    .await;
    let frame = match joined {
        Ok((events, frame)) => {
            t.events = events;
            match frame {
                Ok(f) => f,
                Err(e) => {
                    // Fail closed: nothing leaves the host unrecorded.
                    tracing::error!(error = %e, "transparency ledger unavailable; not sending");
                    return (t, Delivery::Retry(e, None));
                }
            }
        }
        Err(e) => return (t, Delivery::Retry(AgentError::Invalid(format!("encoding a batch failed: {e}")), None)),
    };
    let shipper = ctx.shipper.read().unwrap_or_else(|p| p.into_inner()).clone();
    match shipper.send_once(&frame).await {
        Attempt::Acked(ack) => {
            let sent = t.events.len() as u64;
            let ledger = ctx.ledger.clone();
            let (aid, acc, refd) = (ack.ack_id.clone(), ack.accepted, ack.refused);
            let recorded = blocking_io(move || {
                crate::sources::lock(&ledger)
                    .with(|l| l.append_ack(sent_id, &aid, acc, refd, custos_model::now_micros()))
                    .map_err(|e| AgentError::Invalid(format!("recording the acknowledgement in the ledger: {e}")))
            })
            .await;
            if let Err(e) = recorded {
                tracing::error!(error = %e, batch = %sent_id, "acknowledged batch not recorded in the ledger");
            }
            crate::sources::lock(&ctx.recorded).remove(&sent_id);
            (t, Delivery::Acked(ack, sent, frame.len() as u64))
        }
        Attempt::Permanent(e) => {
            if let AgentError::Refused { status: 401 | 403, message } = &e {
                (ctx.security)(SecurityNote { kind: kind::AUTH_FAILURE, outcome: "refused".into(), detail: message.clone() });
            }
            let status = match &e {
                AgentError::Refused { status, .. } => *status,
                _ => 400,
            };
            if !crate::ship::refuses_the_batch(status) {
                // About the agent (its certificate, revoked) or the address,
                // not the batch: it stays queued until the agent is fixed.
                return (t, Delivery::Retry(e, None));
            }
            let letter = NewDeadLetter {
                batch_id: sent_id,
                frame,
                status,
                message: e.to_string(),
                time: custos_model::now_micros(),
                events: t.events.len() as u64,
                categories: categories_of(&t.events),
                source: t.source.clone(),
            };
            let ctx2 = ctx.clone();
            let put = tokio::task::spawn_blocking(move || ctx2.dead_letters.put(letter)).await;
            match put {
                Ok(Ok(put)) => {
                    tracing::error!(error = %e, batch = %sent_id, entry = %put.id, "batch refused for good; moved to the dead-letter store");
                    (ctx.security)(SecurityNote {
                        kind: kind::DEAD_LETTER,
                        outcome: "stored".into(),
                        detail: format!("batch {sent_id} refused with status {status}; kept as dead letter {}", put.id),
                    });
                    if !put.evicted.is_empty() {
                        let n = put.evicted.len() as u64;
                        tracing::warn!(entries = n, "dead-letter store full: oldest entries removed");
                        ctx.stats.update(|c| c.dead_letters_evicted += n);
                    }
                    ctx.stats.update(|c| c.dead_letters += 1);
                    (t, Delivery::DeadLettered)
                }
                Ok(Err(de @ crate::deadletter::DeadLetterError::TooLarge { .. })) => {
                    // It can never fit: dropped, counted and reported, not retried forever.
                    tracing::error!(error = %e, batch = %sent_id, reason = %de, "batch refused for good and too large for the dead-letter store; dropped");
                    (ctx.security)(SecurityNote {
                        kind: kind::DEAD_LETTER,
                        outcome: "dropped".into(),
                        detail: format!("batch {sent_id} refused with status {status} and too large to keep: {de}"),
                    });
                    ctx.stats.update(|c| c.dead_letters_evicted += 1);
                    (t, Delivery::DeadLettered)
                }
                Ok(Err(de)) => (t, Delivery::Retry(AgentError::Invalid(format!("refused ({e}) and the dead-letter store failed: {de}")), None)),
                Err(je) => (t, Delivery::Retry(AgentError::Invalid(format!("dead-letter task failed: {je}")), None)),
            }
        }
        Attempt::Retry(e, ra) => {
            if e.to_string().contains("does not match the pinned key") {
                (ctx.security)(SecurityNote { kind: kind::PIN_MISMATCH, outcome: "refused".into(), detail: e.to_string() });
            }
            (t, Delivery::Retry(e, ra))
        }
    }
}

/// The server is not answering: only one batch probes it, at `next`.
#[derive(Debug)]
struct Outage {
    failures: u32,
    since: Instant,
    next: Instant,
}

/// How often the agent asks the server for its pins and certificate times.
const IDENTITY_CHECK: Duration = Duration::from_secs(3600);

/// Keep the identity current: learn the server's published pins (a key
/// rotation ahead) and renew the certificate at two thirds of its life
/// ([`identity::maintain`]), at start and then hourly (sooner when the
/// renewal falls due). The shipper switches to the new client at once.
async fn maintain_identity(state_dir: PathBuf, mut id: identity::Identity, ctx: Arc<ShipCtx>, sink: SecuritySink, mut shutdown: watch::Receiver<bool>) {
    loop {
        let client = ctx.shipper.read().unwrap_or_else(|p| p.into_inner()).client().clone();
        match identity::maintain(&state_dir, &id, &client, time::OffsetDateTime::now_utc()).await {
            Ok(m) => {
                if let Some(why) = &m.pins_ignored {
                    tracing::warn!(reason = %why, "published server pins not adopted");
                }
                if let Some(why) = &m.renewal_error {
                    tracing::warn!(reason = %why, "certificate renewal failed; retried later");
                }
                if m.pins_changed {
                    sink(SecurityNote { kind: kind::PINS_UPDATED, outcome: "ok".into(), detail: format!("server pins now {}", m.identity.pins.join(", ")) });
                }
                if m.renewed {
                    sink(SecurityNote {
                        kind: kind::CERTIFICATE_RENEWED,
                        outcome: "ok".into(),
                        detail: format!("new key pair and certificate, valid until {}", m.identity.cert_not_after),
                    });
                }
                if m.changed() {
                    let sd = state_dir.clone();
                    match blocking_io(move || identity::load(&sd)).await {
                        Ok((nid, nclient)) => {
                            *ctx.shipper.write().unwrap_or_else(|p| p.into_inner()) = Shipper::new(nclient, &nid.server);
                            id = nid;
                            tracing::info!(pins = ?id.pins, cert_not_after = %id.cert_not_after, "identity updated");
                        }
                        Err(e) => tracing::error!(error = %e, "cannot load the updated identity"),
                    }
                } else {
                    id = m.identity;
                }
            }
            Err(e) => tracing::info!(error = %e, "identity check failed; retried later"),
        }
        let due = identity::renew_after(&id)
            .map(|t| (t - time::OffsetDateTime::now_utc()).whole_seconds().max(10) as u64)
            .map(Duration::from_secs)
            .unwrap_or(IDENTITY_CHECK);
        tokio::select! {
            _ = tokio::time::sleep(due.min(IDENTITY_CHECK)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The oldest ready record, decoded after the queue's lock is released
/// (so collectors append while it is decrypted and parsed).
async fn take_next(qh: &Arc<QueueHandle>) -> Result<Option<Taken>, AgentError> {
    loop {
        let Some(raw) = qh.call(|q| q.take_raw()).await? else { return Ok(None) };
        let (lsn, key) = (raw.lsn, qh.key.clone());
        match blocking_io(move || Ok(Queue::decode_raw(&key, raw))).await? {
            Ok(t) => return Ok(Some(t)),
            Err(e) => {
                qh.call(move |q| {
                    q.finish_unreadable(lsn, &e);
                    Ok(())
                })
                .await?
            }
        }
    }
}

/// Apply a settings change to the queue at once (see the module docs).
async fn purge_queue(ctx: &Arc<ShipCtx>, st: GateState, retry: &mut VecDeque<Taken>) -> Result<(), AgentError> {
    let purged = ctx
        .queue
        .call(move |q| {
            let mut purged = q.purge_where(|c, _| {
                let usage = c == Category::Usage;
                (usage && !st.usage) || (!usage && !st.telemetry)
            });
            // Records holding events above the level: rewrite them filtered.
            for lsn in q.ready_above(st.level) {
                let Some(t) = q.take_lsn(lsn)? else { continue };
                let before = t.events.len();
                let kept: Vec<Event> = t.events.into_iter().filter(|e| e.level <= st.level).collect();
                for _ in kept.len()..before {
                    *purged.entry(t.category).or_default() += 1;
                }
                let tag = format!("purged:{}:{}:{}:{}", st.level, st.telemetry, st.usage, kept.len());
                let id = derived_batch_id(t.batch_id, tag.as_bytes());
                if let Some(new) = q.replace(t.lsn, kept, id, &t.source)? {
                    q.untake(new);
                }
            }
            Ok(purged)
        })
        .await?;
    count_purged(&ctx.stats, &purged);
    // Batches waiting to retry are gated now too.
    let mut keep = VecDeque::new();
    for mut t in retry.drain(..) {
        if regate(ctx, &mut t, &st).await? {
            keep.push_back(t);
        }
    }
    *retry = keep;
    ctx.queue.dirty.notify_one();
    Ok(())
}

/// Ship until stopped, or (`once`) until the sources are done and the
/// queue is empty.
async fn ship_loop(
    ctx: Arc<ShipCtx>,
    opts: &RunOptions,
    mut settings: watch::Receiver<Effective>,
    mut shutdown: watch::Receiver<bool>,
    mut sources_done: watch::Receiver<bool>,
) -> Result<RunSummary, AgentError> {
    let mut summary = RunSummary::default();
    let mut inflight: tokio::task::JoinSet<(Taken, Delivery)> = tokio::task::JoinSet::new();
    let mut retry: VecDeque<Taken> = VecDeque::new();
    let mut outage: Option<Outage> = None;
    let mut queue_empty = false;
    let give_up = opts.give_up_after.or(ctx.schedule.give_up_after);
    let clock: Arc<dyn crate::clock::Clock> = opts.clock.clone().unwrap_or_else(|| Arc::new(crate::clock::SystemClock));
    loop {
        let stopping = *shutdown.borrow();
        if stopping {
            break;
        }
        // Fill the wire: all slots while the server answers, one probe in an outage.
        let now = clock.now();
        let (cap, may) = match &outage {
            None => (MAX_IN_FLIGHT, true),
            Some(o) => (1, now >= o.next),
        };
        while may && inflight.len() < cap {
            let t = match retry.pop_front() {
                Some(t) => Some(t),
                None => take_next(&ctx.queue).await?,
            };
            let Some(t) = t else {
                queue_empty = true;
                break;
            };
            queue_empty = false;
            let st = gate_state(&settings.borrow());
            inflight.spawn(deliver(ctx.clone(), t, st));
        }
        if opts.once && *sources_done.borrow() && inflight.is_empty() && retry.is_empty() && queue_empty {
            break;
        }
        let wake = clock.sleep_until(outage.as_ref().map(|o| o.next).unwrap_or_else(|| now + Duration::from_secs(3600)));
        tokio::select! {
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                let (t, d) = joined.map_err(|e| AgentError::Invalid(format!("delivery task failed: {e}")))?;
                let lsn = t.lsn;
                match d {
                    Delivery::Acked(ack, n, bytes) => {
                        outage = None;
                        ctx.queue.call(move |q| { q.finish(lsn, DoneReason::Acked); Ok(()) }).await?;
                        let now_us = custos_model::now_micros();
                        ctx.stats.update(|c| {
                            c.events_uploaded += n.saturating_sub(ack.refused);
                            c.refused_by_server += ack.refused;
                            c.last_upload_time = Some(now_us);
                        });
                        summary.batches += 1;
                        summary.events += n.saturating_sub(ack.refused);
                        summary.events_refused += ack.refused;
                        summary.bytes_sent += bytes;
                        if ack.duplicate {
                            summary.duplicate_batches += 1;
                        }
                        tracing::debug!(batch = %ack.batch_id, events = n, ack = %ack.ack_id, "batch acknowledged");
                        if let Some(p) = &opts.progress {
                            p.send_replace(summary.clone());
                        }
                    }
                    Delivery::Purged => {
                        ctx.queue.call(move |q| { q.finish(lsn, DoneReason::Purged); Ok(()) }).await?;
                    }
                    Delivery::DeadLettered => {
                        outage = None;
                        summary.dead_letters += 1;
                        ctx.queue.call(move |q| { q.finish(lsn, DoneReason::DeadLetter); Ok(()) }).await?;
                    }
                    Delivery::Retry(err, ra) => {
                        // The settings may have changed while it was on the
                        // wire (a purge skips in-flight records): gate it
                        // now, not only at its next attempt.
                        let mut t = t;
                        let st = gate_state(&settings.borrow());
                        if regate(&ctx, &mut t, &st).await? {
                            retry.push_back(t);
                        }
                        ctx.stats.update(|c| c.delivery_failures += 1);
                        let now = clock.now();
                        let o = outage.get_or_insert(Outage { failures: 0, since: now, next: now });
                        o.failures += 1;
                        let since = now.duration_since(o.since);
                        if give_up.is_some_and(|g| since >= g) {
                            return Err(AgentError::GaveUp { attempts: o.failures, last: err.to_string() });
                        }
                        let pause = ctx.schedule.pause(o.failures, since, ra, &mut rand::thread_rng());
                        o.next = now + pause;
                        tracing::warn!(error = %err, failures = o.failures, retry_in_ms = pause.as_millis() as u64, "batch not delivered; will retry");
                    }
                }
                ctx.queue.dirty.notify_one();
            }
            _ = ctx.queue.ready.notified() => {}
            // Only while the probe's time has not come (else it would be ready at once: a busy loop).
            _ = wake, if !may => {}
            r = settings.changed() => {
                if r.is_ok() {
                    let st = gate_state(&settings.borrow_and_update());
                    purge_queue(&ctx, st, &mut retry).await?;
                }
            }
            _ = shutdown.changed() => {}
            r = sources_done.changed(), if opts.once && !*sources_done.borrow() => { let _ = r; }
            _ = tokio::time::sleep(Duration::from_millis(50)), if opts.once && *sources_done.borrow() => {}
        }
    }
    // Stopping: what is on the wire is abandoned; it stays in the queue and
    // is sent again at the next start (the server deduplicates).
    inflight.abort_all();
    while inflight.join_next().await.is_some() {}
    Ok(summary)
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


fn runtime_status(stats: &Stats, queue: &Mutex<QueueStatus>) -> RuntimeStatus {
    let c = stats.snapshot();
    let q = crate::sources::lock(queue).clone();
    RuntimeStatus {
        queued_events: q.events,
        queued_batches: q.records,
        events_read: c.events_read,
        events_uploaded: c.events_uploaded,
        events_not_collected: c.events_not_collected,
        events_purged: c.dropped_by_category.values().sum(),
        dropped_by_category: c.dropped_by_category,
        refused_by_server: c.refused_by_server,
        last_upload_time: c.last_upload_time,
        evicted_by_category: c.evicted_by_category,
        queue_bytes: q.bytes,
        queue_disk_bytes: q.disk_bytes,
        queue_max_bytes: q.max_bytes,
        queued_by_category: q.events_by_category,
        dead_letters: c.dead_letters,
        dead_letters_evicted: c.dead_letters_evicted,
        delivery_failures: c.delivery_failures,
        queue_write_failures: c.queue_write_failures,
        redacted_by_entity: c.redacted_by_entity,
        redaction_fields_dropped: c.redaction_fields_dropped,
        redaction_events_dropped: c.redaction_events_dropped,
    }
}

/// Every source of a configuration, in order: the agent's own, the
/// configured ones, usage last.
fn all_sources(cfg: &AgentConfig, state_dir: &Path, hostname: &str, installation: &Installation, internal: InternalSource) -> Result<Vec<(Shared, Kind)>, AgentError> {
    let tcfg = &cfg.telemetry;
    let mut sources: Vec<(Shared, Kind)> = vec![(Arc::new(Mutex::new(Box::new(internal))), Kind::Telemetry)];
    for s in build_sources(cfg, state_dir, hostname)? {
        sources.push((Arc::new(Mutex::new(s)), Kind::Telemetry));
    }
    let usage = UsageSource::new(&installation.id.to_string(), hostname, crate::sources::usage::system_clock())
        .with_state_dir(state_dir)?
        .with_period(tcfg.usage_period);
    sources.push((Arc::new(Mutex::new(Box::new(usage))), Kind::Usage));
    Ok(sources)
}

/// Run the agent from an enrolled state dir until done (`once`) or until
/// `shutdown` flips.
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

    let redaction = HostRedaction::open(state_dir, &cfg.redaction)?;
    let key = Arc::new(SealKey::load_or_create(state_dir).map_err(|e| AgentError::Invalid(e.to_string()))?);
    let qopts = QueueOptions { max_bytes: cfg.queue.max_bytes, segment_bytes: cfg.queue.segment_bytes };
    let opened = {
        let (sd, qo, k) = (state_dir.to_path_buf(), qopts.clone(), key.clone());
        blocking_io(move || Queue::open(&sd, qo, k).map_err(|e| AgentError::Invalid(format!("opening the queue: {e}")))).await?
    };
    let (queue, recovered) = opened;
    let rec_report = &recovered.wal;
    if rec_report.torn_tail_bytes > 0 || rec_report.corrupt_records > 0 || recovered.incomplete_records > 0 {
        tracing::warn!(
            torn_tail_bytes = rec_report.torn_tail_bytes,
            corrupt_records = rec_report.corrupt_records,
            incomplete_records = recovered.incomplete_records,
            "queue recovered after a crash"
        );
    }
    tracing::info!(records = recovered.records, "queue opened");
    let qstatus = queue.status();
    let qh = Arc::new(QueueHandle {
        state_dir: state_dir.to_path_buf(),
        opts: qopts,
        key: key.clone(),
        queue: Mutex::new(Some(queue)),
        synced: watch::channel(Synced::default()).0,
        dirty: Notify::new(),
        ready: Notify::new(),
        appending: Mutex::new(HashSet::new()),
        status: Mutex::new(qstatus),
        stats: stats.clone(),
    });
    let dead_letters = DeadLetters::open(state_dir, key, cfg.dead_letters.max_bytes).map_err(|e| AgentError::Invalid(format!("dead-letter store: {e}")))?;

    let tcfg = &cfg.telemetry;
    let settings = SettingsHandle::open(state_dir, tcfg).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let policy_task = tokio::spawn(crate::settings::watch_policy(settings.clone(), tcfg.policy_reload));
    let status: Arc<dyn crate::control::StatusSource> = {
        let (stats, qs) = (stats.clone(), qh.clone());
        Arc::new(move || runtime_status(&stats, &qs.status))
    };
    let control = ControlServer::start(&tcfg.control_socket_path(state_dir), settings.clone(), status.clone(), sink.clone())
        .await
        .map_err(|e| AgentError::Invalid(format!("control socket: {e}")))?;
    let metrics_task = match cfg.agent.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| AgentError::io(format!("cannot listen for metrics on {addr}"), e))?;
            tracing::info!(%addr, "serving Prometheus metrics on /metrics");
            Some(tokio::spawn(crate::metrics::serve(listener, status, shutdown.clone())))
        }
        None => None,
    };
    let ledger_opts = LedgerOptions { max_bytes: tcfg.ledger_max_bytes, max_age: tcfg.ledger_max_age, ..LedgerOptions::default() };
    let ledger = Ledger::open(state_dir, ledger_opts.clone()).map_err(|e| {
        AgentError::Invalid(format!(
            "transparency ledger in {}: {e} (nothing is sent without it; if it is damaged, move it aside and keep it as evidence)",
            crate::ledger::ledger_dir(state_dir).display()
        ))
    })?;
    let ledger = Arc::new(Mutex::new(LedgerSlot { state_dir: state_dir.to_path_buf(), opts: ledger_opts, ledger: Some(ledger) }));

    let parts = RunParts { id, client, installation, hostname, registry, stats, sink, settings, ledger, queue: qh, dead_letters, recovered: recovered.checkpoints, redaction };
    let result = run_loop(state_dir, cfg, opts, shutdown, parts).await;
    if let Some(t) = metrics_task {
        t.abort();
    }
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
    queue: Arc<QueueHandle>,
    dead_letters: DeadLetters,
    recovered: Vec<(u64, Checkpoint)>,
    redaction: HostRedaction,
}

async fn run_loop(state_dir: &Path, cfg: &AgentConfig, opts: RunOptions, shutdown: watch::Receiver<bool>, p: RunParts) -> Result<RunSummary, AgentError> {
    let RunParts { id, client, installation, hostname, registry, stats, sink, settings, ledger, queue, dead_letters, recovered, redaction } = p;
    let tcfg = &cfg.telemetry;
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
    let internal = || {
        let h = settings.clone();
        InternalSource::new(facts.clone(), stats.clone(), Box::new(move || snapshot(&h.effective())), tcfg.health_interval)
    };
    let mut sources = all_sources(cfg, state_dir, &hostname, &installation, internal())?;
    if !recovered.is_empty() {
        // Groups that reached the queue before a crash, whose source
        // positions may not have been committed: commit them now, then
        // build the sources again so they start from there.
        for (group, cp) in &recovered {
            if let Some((src, _)) = sources.iter().find(|(s, _)| crate::sources::lock(s).name() == cp.source_name()) {
                let c = cp.clone();
                blocking(src, move |s| s.commit(&c)).await?;
            } else {
                tracing::warn!(source = cp.source_name(), "queued events of a source no longer configured; its position is not restored");
            }
            let g = *group;
            queue.call(move |q| {
                q.mark_committed(g);
                Ok(())
            })
            .await?;
        }
        tracing::info!(groups = recovered.len(), "source positions restored from the queue");
        drop(sources);
        sources = all_sources(cfg, state_dir, &hostname, &installation, internal())?;
    }

    let eff_rx = settings.subscribe();
    let (stop_tx, stop_rx) = watch::channel(false);
    let syncer_task = tokio::spawn(syncer(queue.clone(), cfg.queue.fsync_interval, stop_rx.clone()));
    let cctx = Arc::new(CollectCtx {
        registry,
        stats: stats.clone(),
        queue: queue.clone(),
        security: sink.clone(),
        max_events: cfg.agent.batch_max_events,
        max_bytes: cfg.agent.batch_max_bytes,
        flush_interval: cfg.agent.flush_interval,
        once: opts.once,
        redaction,
    });
    // Collectors stop on the agent's shutdown.
    let mut collectors = tokio::task::JoinSet::new();
    let n_sources = sources.len();
    for (src, kind) in sources {
        collectors.spawn(collect(cctx.clone(), src, kind, eff_rx.clone(), shutdown.clone()));
    }
    let (done_tx, done_rx) = watch::channel(false);
    let collectors_task = tokio::spawn(async move {
        let mut first_err = None;
        while let Some(r) = collectors.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "a source stopped with an error");
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(AgentError::Invalid(format!("source task failed: {e}")));
                }
            }
        }
        let _ = done_tx.send(true);
        first_err
    });
    // Policy errors become security events.
    let policy_notes = {
        let mut rx = settings.subscribe();
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut last: Option<String> = None;
            loop {
                let e = rx.borrow_and_update().policy_error.clone();
                if e != last {
                    if let Some(why) = &e {
                        sink(SecurityNote { kind: kind::POLICY_INVALID, outcome: "disabled".into(), detail: why.clone() });
                    }
                    last = e;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    let sctx = Arc::new(ShipCtx {
        shipper: std::sync::RwLock::new(Shipper::new(client, &id.server)),
        registry,
        installation,
        ledger,
        stats: stats.clone(),
        schedule: cfg.retry.clone(),
        security: sink.clone(),
        queue: queue.clone(),
        dead_letters,
        recorded: Mutex::new(HashSet::new()),
    });
    tracing::info!(agent = %id.agent_id, server = %id.server, sources = n_sources, once = opts.once, "agent running");
    let maintenance = tokio::spawn(maintain_identity(state_dir.to_path_buf(), id.clone(), sctx.clone(), sink.clone(), shutdown.clone()));
    let shipped = ship_loop(sctx, &opts, eff_rx.clone(), shutdown.clone(), done_rx).await;
    maintenance.abort();

    // Stop: collectors see the shutdown (or are done), then the last sync.
    let collect_err = if opts.once && shipped.is_ok() {
        collectors_task.await.ok().flatten()
    } else {
        // Give a collector between its append and its commit a moment to finish.
        match tokio::time::timeout(Duration::from_secs(2), collectors_task).await {
            Ok(r) => r.ok().flatten().filter(|_| shipped.is_ok() && !*shutdown.borrow()),
            Err(_) => None,
        }
    };
    let _ = stop_tx.send(true);
    let _ = syncer_task.await;
    if let Err(e) = queue.call(|q| q.sync()).await {
        tracing::warn!(error = %e, "last queue sync failed");
    }
    policy_notes.abort();
    let mut summary = shipped?;
    if let Some(e) = collect_err {
        return Err(e);
    }
    let c = stats.snapshot();
    summary.events_not_collected = c.events_not_collected;
    summary.events_purged = c.dropped_by_category.values().sum();
    summary.events_evicted = c.evicted_by_category.values().sum();
    summary.redacted_by_entity = c.redacted_by_entity;
    summary.events_dropped_by_redaction = c.redaction_events_dropped;
    tracing::info!(batches = summary.batches, events = summary.events, not_collected = summary.events_not_collected, purged = summary.events_purged, evicted = summary.events_evicted, "agent stopped");
    Ok(summary)
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

