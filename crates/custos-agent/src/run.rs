//! The agent's main loop: poll each source, batch, compress, ship, and only
//! after the server's acknowledgement commit the source positions. A crash
//! at any point therefore re-reads at most the unacknowledged tail, and the
//! server's batch-id deduplication keeps a resent batch from being stored
//! twice.

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::identity;
use crate::ship::{RetryPolicy, Shipper};
use crate::sources::{build_sources, Source};
use custos_model::wire::{self, BatchPayload, Codec};
use custos_model::BatchId;
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
}

type Shared = Arc<Mutex<Box<dyn Source>>>;

/// Batches of one source on the wire at once.
const MAX_IN_FLIGHT: usize = 4;

type Shipped = Option<Result<(custos_model::api::IngestAck, u64, u64), AgentError>>;

/// Consume one finished send: count it and commit the position after it.
async fn finish(
    src: &Shared,
    done: (crate::sources::Checkpoint, Shipped),
    summary: &mut RunSummary,
    progress: Option<&watch::Sender<RunSummary>>,
) -> Result<(), AgentError> {
    let (cp, shipped) = done;
    if let Some(r) = shipped {
        let (ack, n, bytes) = r?;
        summary.batches += 1;
        summary.events += n;
        summary.bytes_sent += bytes;
        if ack.duplicate {
            summary.duplicate_batches += 1;
        }
        tracing::debug!(batch = %ack.batch_id, events = n, ack = %ack.ack_id, "batch acknowledged");
        if let Some(p) = progress {
            p.send_replace(summary.clone());
        }
    }
    blocking(src, move |s| s.commit(&cp)).await
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

/// Run the agent from an enrolled state dir until done (`once`) or until
/// `shutdown` flips; then finish the batch in flight and return.
pub async fn run(state_dir: &Path, cfg: &AgentConfig, opts: RunOptions, mut shutdown: watch::Receiver<bool>) -> Result<RunSummary, AgentError> {
    let (id, client) = identity::load(state_dir)?;
    let hostname = cfg.agent.resolve_hostname()?;
    let sources: Vec<Shared> = build_sources(cfg, state_dir, &hostname)?
        .into_iter()
        .map(|s| Arc::new(Mutex::new(s)))
        .collect();
    let shipper = Shipper::new(client, &id.server);
    let max_events = cfg.agent.batch_max_events;
    let max_bytes = cfg.agent.batch_max_bytes;
    let mut summary = RunSummary::default();
    tracing::info!(agent = %id.agent_id, server = %id.server, sources = sources.len(), once = opts.once, "agent running");
    'outer: loop {
        for src in &sources {
            // Up to `MAX_IN_FLIGHT` batches of this source travel at once;
            // acknowledgements are consumed in order, and a source's position
            // is committed only once every batch before it is acknowledged.
            let mut inflight = futures::stream::FuturesOrdered::new();
            let mut stop = false;
            loop {
                if *shutdown.borrow() {
                    // Finish what is on the wire (so its positions commit),
                    // read nothing more.
                    stop = true;
                }
                if inflight.len() >= MAX_IN_FLIGHT || (stop && !inflight.is_empty()) {
                    if let Some(done) = futures::StreamExt::next(&mut inflight).await {
                        finish(src, done, &mut summary, opts.progress.as_deref()).await?;
                    }
                    continue;
                }
                if stop {
                    break;
                }
                let drain = opts.once;
                let poll = blocking(src, move |s| s.poll(max_events, max_bytes, drain)).await?;
                let exhausted = poll.exhausted;
                if poll.events.is_empty() {
                    if inflight.is_empty() {
                        // Nothing pending: the position may advance (skipped
                        // empty lines, a rotation) right away.
                        let cp = poll.checkpoint;
                        blocking(src, move |s| s.commit(&cp)).await?;
                    } else {
                        inflight.push_back(futures::future::Either::Left(async move { (poll.checkpoint, None) }));
                    }
                } else {
                    let n = poll.events.len() as u64;
                    let payload = BatchPayload { batch_id: BatchId::new(), created: custos_model::now_micros(), events: poll.events };
                    let frame = tokio::task::spawn_blocking(move || wire::encode(&payload, Codec::Zstd))
                        .await
                        .map_err(|e| AgentError::Invalid(format!("encode task failed: {e}")))?;
                    let shipper = shipper.clone();
                    let retry = opts.retry.clone();
                    let mut shutdown = shutdown.clone();
                    let cp = poll.checkpoint;
                    inflight.push_back(futures::future::Either::Right(async move {
                        let r = shipper.send(&frame, &retry, &mut shutdown).await;
                        (cp, Some(r.map(|ack| (ack, n, frame.len() as u64))))
                    }));
                }
                if exhausted {
                    stop = true;
                }
            }
            if *shutdown.borrow() {
                break 'outer;
            }
        }
        if opts.once || *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.agent.flush_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!(batches = summary.batches, events = summary.events, "agent stopped");
    Ok(summary)
}
