//! The agent's durable queue: what a source read waits here, on disk and
//! encrypted, until the server acknowledges it.
//!
//! The queue is a [`custos_wal`] log in `<state_dir>/queue/` whose payloads
//! are described in [`format`]. Events of one poll become a *group* of
//! batch records, one per category, sealed with AES-256-GCM
//! ([`crate::seal`], key `<state_dir>/queue.key`, 0600).
//!
//! # The life of a group
//!
//! 1. [`Queue::append_group`] appends the group (after making room, see
//!    below). The last record (the *carrier*) holds the source checkpoint.
//! 2. [`Queue::sync`] makes it durable (the run loop batches syncs: group
//!    commit, at most `fsync_interval` apart).
//! 3. The caller commits the source position, then calls
//!    [`Queue::mark_committed`], which appends a committed record. Only
//!    committed groups are sent.
//! 4. [`Queue::take`] hands out the oldest ready record (read from disk,
//!    decrypted); [`Queue::finish`] records why it left (acknowledged,
//!    dead-lettered, purged), durably at the next sync.
//!
//! # Invariants
//!
//! * Every event whose source position was committed is in a durable
//!   batch record until a done entry for that record is durable.
//! * A source position is committed only after its group is durable; a
//!   crash between the two is repaired at [`Queue::open`]: the newest
//!   carrier of each source without a committed record is returned in
//!   [`Recovered::checkpoints`], and the caller commits it again (it is
//!   never older than the committed position: a source polls again only
//!   after marking its last group committed, and a committed record
//!   follows its group in the log).
//! * A group cut by a crash (fewer records than its length) is dropped:
//!   its source position was never committed, so the events are read again.
//! * A record may be sent more than once (a crash after the server's
//!   acknowledgement but before the done entry was durable); its batch id
//!   does not change, so the server stores it once.
//!
//! # Bound and eviction
//!
//! The log's files never exceed `max_bytes` by more than the record being
//! appended, except for records that are never evicted. To make room for an
//! append the queue, in this order:
//!
//! 1. deletes log segments holding only finished records;
//! 2. compacts, if the live records alone fit: copies the live records of
//!    the oldest segment to the end of the log when they fill at most three
//!    quarters of it, so the segment can be deleted (a security record
//!    waiting for a dead server must not pin gigabytes of delivered logs);
//! 3. evicts one ready record and tries again: least important category
//!    first ([`eviction_class`]: performance samples, then logs, then usage,
//!    then inventory, health and crash reports; security and settings
//!    records — consent and deletion — never), oldest first, and never from
//!    a class more important than the incoming record's: when only those
//!    are left, the incoming record is dropped instead.
//!
//! Every eviction and drop is counted per category.
//!
//! # Recovery
//!
//! [`Queue::open`] opens the log (which cuts a torn tail and skips damaged
//! records, see `custos_wal`), then streams every record once to rebuild
//! the in-memory index: a few dozen bytes per live record, never the
//! events. Payloads that do not decode are counted and skipped.

pub mod format;

use crate::seal::{SealError, SealKey};
use crate::sources::Checkpoint;
use custos_model::{BatchId, Category, Event, Level};
use custos_wal::{Lsn, Wal, WalError, WalOptions};
use format::{BatchHeader, DoneReason, Payload, BATCH_HEADER_LEN, FLAG_CARRIER, FLAG_COPIED};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The queue's directory inside the state directory.
pub const QUEUE_DIR: &str = "queue";

/// What went wrong in the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The log failed (I/O, a full disk, locked by another process).
    #[error("queue log: {0}")]
    Wal(#[from] WalError),
    /// The encryption key or a sealed record.
    #[error("queue record {lsn}: {source}")]
    Seal {
        /// The record.
        lsn: Lsn,
        /// What failed.
        source: SealError,
    },
    /// A record's body could not be decoded after it was authenticated.
    #[error("queue record {lsn} has an invalid body: {reason}")]
    Body {
        /// The record.
        lsn: Lsn,
        /// Why.
        reason: String,
    },
    /// Encoding a batch failed.
    #[error("cannot encode a queue record: {0}")]
    Encode(String),
}

/// How to open the queue.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// Bound on the log's files, in bytes.
    pub max_bytes: u64,
    /// Segment file size; `0` picks `max_bytes / 32`, between 1 MiB and 32 MiB.
    pub segment_bytes: u64,
}

impl QueueOptions {
    fn segment_bytes(&self) -> u64 {
        if self.segment_bytes > 0 {
            self.segment_bytes
        } else {
            (self.max_bytes / 32).clamp(1 << 20, 32 << 20)
        }
    }
}

/// Eviction class of a category: lower classes are evicted first; `None`
/// is never evicted.
pub fn eviction_class(c: Category) -> Option<u8> {
    match c {
        Category::Performance => Some(0),
        Category::Logs => Some(1),
        Category::Usage => Some(2),
        Category::Inventory | Category::Health | Category::Crash => Some(3),
        Category::Security | Category::Settings => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Appended; its source position is not committed yet.
    Pending,
    /// Committed, waiting to be sent.
    Ready,
    /// Handed out by [`Queue::take`].
    Taken,
}

#[derive(Clone, Copy, Debug)]
/// What the index keeps per record: 24 bytes, so a large backlog costs
/// little memory (the batch id and the source are read back from the record
/// when it is taken).
struct Meta {
    /// The group id.
    group: u64,
    /// Bytes in the log (payload plus the log's 20-byte framing).
    bytes: u32,
    /// Events in the record.
    events: u32,
    category: Category,
    max_level: Level,
    /// Moved by compaction or a filtered copy (`FLAG_COPIED`).
    copied: bool,
    state: State,
}

impl Meta {
    fn new(h: &BatchHeader, payload_len: usize, state: State) -> Self {
        Meta {
            group: h.group,
            bytes: u32::try_from(payload_len as u64 + WAL_FRAMING).unwrap_or(u32::MAX),
            events: h.events,
            category: h.category,
            max_level: h.max_level,
            copied: h.flags & FLAG_COPIED != 0,
            state,
        }
    }
}

/// Counters kept since the queue was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounters {
    /// Events evicted to keep the bound, by category name.
    pub evicted_events: BTreeMap<String, u64>,
    /// Batch records evicted.
    pub evicted_records: u64,
    /// Bytes copied by compaction.
    pub compacted_bytes: u64,
    /// Records appended.
    pub appended_records: u64,
    /// Payloads that did not decode or authenticate (skipped).
    pub corrupt_records: u64,
}

/// What the queue holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Batch records not yet finished.
    pub records: u64,
    /// Events in them.
    pub events: u64,
    /// Their bytes in the log.
    pub bytes: u64,
    /// Events by category name.
    pub events_by_category: BTreeMap<String, u64>,
    /// Bytes of the log's files.
    pub disk_bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// Counters since the agent started.
    pub counters: QueueCounters,
}

/// What [`Queue::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The log's own recovery report.
    pub wal: custos_wal::RecoveryReport,
    /// Batch records waiting to be sent.
    pub records: u64,
    /// Records of groups cut by a crash, dropped (read again by their source).
    pub incomplete_records: u64,
    /// Checkpoints to commit again (their groups were durable but the
    /// commit may not have happened): `(group, checkpoint)`; call
    /// [`Queue::mark_committed`] after committing each.
    pub checkpoints: Vec<(u64, Checkpoint)>,
}

/// A record handed out by [`Queue::take`].
#[derive(Debug)]
pub struct Taken {
    /// Its position; pass it to [`Queue::finish`].
    pub lsn: Lsn,
    /// Its batch id.
    pub batch_id: BatchId,
    /// Its category.
    pub category: Category,
    /// Its source.
    pub source: String,
    /// The events.
    pub events: Vec<Event>,
}

/// The outcome of [`Queue::append_group`].
#[derive(Debug, Default)]
pub struct Appended {
    /// The group id (pass to [`Queue::mark_committed`] after the sync and the source commit).
    pub group: u64,
    /// The lsn of its last record: durable once a sync returns after it.
    pub last_lsn: Lsn,
    /// Events of this poll that did not fit (evicted at once), by category.
    pub dropped: BTreeMap<Category, u64>,
    /// Events of older records evicted to make room, by category.
    pub evicted: BTreeMap<Category, u64>,
}

/// A poll's events encoded for the queue (JSON, zstd), not yet sealed or
/// appended: [`Queue::encode_group`], then [`Queue::append_encoded`].
#[derive(Debug)]
pub struct EncodedGroup {
    source: String,
    checkpoint: Checkpoint,
    /// Per category: category, highest level, event count, compressed body.
    records: Vec<(Category, Level, u32, Vec<u8>)>,
}

/// A record handed out by [`Queue::take_raw`]: still sealed and compressed;
/// [`Queue::decode_raw`] opens it without the queue.
#[derive(Debug)]
pub struct RawRecord {
    /// Its position.
    pub lsn: Lsn,
    /// Its category.
    pub category: Category,
    payload: Vec<u8>,
}

#[derive(Serialize)]
struct BodyOut<'a, E: Serialize> {
    source: &'a str,
    checkpoint: Option<&'a Checkpoint>,
    events: &'a [E],
}

#[derive(Deserialize)]
struct BodyIn {
    source: String,
    checkpoint: Option<Checkpoint>,
    events: Vec<Event>,
}

/// Bytes the log adds to each payload.
const WAL_FRAMING: u64 = 20;
/// zstd level for record bodies: fast, and JSON still shrinks 5-10×.
const ZSTD_LEVEL: i32 = 1;

/// The durable queue. Not thread-safe by itself: the run loop holds it in a
/// mutex and calls it from blocking tasks.
pub struct Queue {
    dir: PathBuf,
    opts: QueueOptions,
    key: Arc<SealKey>,
    wal: Wal,
    /// Batch records not finished, by lsn.
    live: BTreeMap<Lsn, Meta>,
    /// Finished records whose done entry is not yet written.
    unwritten_done: Vec<(Lsn, DoneReason)>,
    /// Committed records not yet written (after a failed write).
    unwritten_committed: Vec<u64>,
    /// Records moved by compaction while taken: old lsn → new lsn.
    moved: HashMap<Lsn, Lsn>,
    /// Sum of `live` bytes.
    live_bytes: u64,
    /// Events in `live`, by category.
    live_events: BTreeMap<Category, u64>,
    counters: QueueCounters,
    /// A sequential reader reused by `take` while it moves forward.
    cursor: Option<(custos_wal::WalReader, Lsn)>,
    /// Bytes appended since the last sync.
    unsynced: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("dir", &self.dir).field("records", &self.live.len()).finish_non_exhaustive()
    }
}

/// The index as the recovery pass finds it, record by record.
#[derive(Default)]
struct Indexer {
    live: BTreeMap<Lsn, Meta>,
    done: HashMap<Lsn, DoneReason>,
    committed: BTreeSet<u64>,
    /// group → (length, records seen), counting original records only.
    groups: HashMap<u64, (u16, u16)>,
    /// source key → (newest group with a carrier, the carrier's lsn).
    newest: HashMap<u64, (u64, Lsn)>,
    corrupt: u64,
}

impl Indexer {
    fn visit(&mut self, lsn: Lsn, payload: &[u8]) {
        match format::decode(payload) {
            Ok(Payload::Batch(h, _)) => {
                if h.flags & FLAG_COPIED == 0 {
                    let g = self.groups.entry(h.group).or_insert((h.group_len, 0));
                    g.1 = g.1.saturating_add(1);
                    if h.flags & FLAG_CARRIER != 0 && self.newest.get(&h.source).is_none_or(|(ng, _)| h.group > *ng) {
                        self.newest.insert(h.source, (h.group, lsn));
                    }
                }
                self.live.insert(lsn, Meta::new(&h, payload.len(), State::Ready));
            }
            Ok(Payload::Done(entries)) => self.done.extend(entries),
            Ok(Payload::Committed(g)) => {
                self.committed.insert(g);
            }
            Err(why) => {
                self.corrupt += 1;
                tracing::warn!(lsn, reason = %why, "queue record skipped");
            }
        }
    }
}

/// A record's body: JSON, then zstd (sealed by the caller).
fn encode_body<E: Serialize>(source: &str, checkpoint: Option<&Checkpoint>, events: &[E]) -> Result<Vec<u8>, QueueError> {
    let json = serde_json::to_vec(&BodyOut { source, checkpoint, events }).map_err(|e| QueueError::Encode(e.to_string()))?;
    zstd::bulk::compress(&json, ZSTD_LEVEL).map_err(|e| QueueError::Encode(e.to_string()))
}

/// Authenticate, decrypt, decompress and parse a batch record's payload.
fn decode_payload(key: &SealKey, lsn: Lsn, payload: &[u8]) -> Result<(BatchHeader, BodyIn), QueueError> {
    let (h, sealed) = match format::decode(payload) {
        Ok(Payload::Batch(h, s)) => (h, s),
        Ok(_) => return Err(QueueError::Body { lsn, reason: "not a batch record".into() }),
        Err(reason) => return Err(QueueError::Body { lsn, reason }),
    };
    let hb = format::encode_batch_header(&h);
    let z = key.open(&format::batch_aad(&hb), sealed).map_err(|source| QueueError::Seal { lsn, source })?;
    let json = zstd::bulk::decompress(&z, 256 << 20).map_err(|e| QueueError::Body { lsn, reason: format!("zstd: {e}") })?;
    let body = serde_json::from_slice(&json).map_err(|e| QueueError::Body { lsn, reason: e.to_string() })?;
    Ok((h, body))
}

fn level_max(events: &[Event]) -> Level {
    events.iter().map(|e| e.level).max().unwrap_or(Level::Security)
}

impl Queue {
    /// Open (or create) the queue in `<state_dir>/queue` and recover it.
    pub fn open(state_dir: &Path, opts: QueueOptions, key: Arc<SealKey>) -> Result<(Queue, Recovered), QueueError> {
        let dir = state_dir.join(QUEUE_DIR);
        let wal_opts = WalOptions::new(&dir).with_segment_bytes(opts.segment_bytes());
        // One pass: the log's recovery reads every record anyway; the index
        // is built from that pass, never from a second read of the log.
        let mut ix = Indexer::default();
        let (wal, report) = Wal::open_with(wal_opts, &mut |lsn, payload| ix.visit(lsn, payload))?;
        let mut q = Queue {
            dir,
            opts,
            key,
            wal,
            live: BTreeMap::new(),
            unwritten_done: Vec::new(),
            unwritten_committed: Vec::new(),
            moved: HashMap::new(),
            live_bytes: 0,
            live_events: BTreeMap::new(),
            counters: QueueCounters::default(),
            cursor: None,
            unsynced: false,
        };
        let mut rec = q.rebuild(ix)?;
        rec.wal = report;
        Ok((q, rec))
    }

    /// Build the index from what the log's recovery pass visited.
    fn rebuild(&mut self, ix: Indexer) -> Result<Recovered, QueueError> {
        let Indexer { mut live, mut done, committed, groups, newest, mut corrupt } = ix;
        let mut rec = Recovered::default();
        // Groups cut by a crash: drop their records (the source reads them again).
        // A group whose first record is below the ack position lost its
        // head to a segment deletion, not to a crash: it is not incomplete.
        let acked = self.wal.acked_lsn();
        let incomplete: BTreeSet<u64> =
            groups.iter().filter(|(g, (len, seen))| **g >= acked && seen < len).map(|(g, _)| *g).collect();
        let mut reapply: Vec<(u64, Lsn)> = Vec::new();
        for (g, carrier) in newest.values() {
            if !committed.contains(g) && !incomplete.contains(g) {
                reapply.push((*g, *carrier));
            }
        }
        let pending: BTreeSet<u64> = reapply.iter().map(|(g, _)| *g).collect();
        for (lsn, meta) in &mut live {
            if incomplete.contains(&meta.group) && !meta.copied && !done.contains_key(lsn) {
                done.insert(*lsn, DoneReason::Incomplete);
                self.unwritten_done.push((*lsn, DoneReason::Incomplete));
                rec.incomplete_records += 1;
            }
            if pending.contains(&meta.group) && !meta.copied {
                meta.state = State::Pending;
            }
        }
        // Read the checkpoints to apply again (the carrier may be finished
        // already; it is still in the log).
        for (g, carrier) in reapply {
            match self.read_body(carrier) {
                Ok((_, body)) => match body.checkpoint {
                    Some(cp) => rec.checkpoints.push((g, cp)),
                    None => self.unwritten_committed.push(g),
                },
                Err(e) => {
                    // Unreadable: its group's records stay (they were durable);
                    // the source reads from its older position (duplicates, not loss).
                    tracing::warn!(error = %e, group = g, "checkpoint of an uncommitted group unreadable");
                    corrupt += 1;
                    self.unwritten_committed.push(g);
                }
            }
        }
        for l in done.keys() {
            live.remove(l);
        }
        // Pending groups that were not re-applied cannot be pending any more.
        let reapplied: BTreeSet<u64> = rec.checkpoints.iter().map(|(g, _)| *g).collect();
        for m in live.values_mut() {
            if m.state == State::Pending && !reapplied.contains(&m.group) {
                m.state = State::Ready;
            }
        }
        self.live_bytes = live.values().map(|m| u64::from(m.bytes)).sum();
        self.live_events.clear();
        for m in live.values() {
            *self.live_events.entry(m.category).or_default() += u64::from(m.events);
        }
        self.live = live;
        self.counters.corrupt_records += corrupt;
        rec.records = self.live.len() as u64;
        rec.checkpoints.sort_by_key(|(g, _)| *g);
        Ok(rec)
    }

    /// Append one poll's events as a group (one record per category),
    /// making room first. Not durable until [`Queue::sync`].
    pub fn append_group(&mut self, source: &str, events: &[Event], checkpoint: &Checkpoint) -> Result<Appended, QueueError> {
        let g = Self::encode_group(source, events, checkpoint)?;
        self.append_encoded(g)
    }

    /// The CPU-heavy half of [`Queue::append_group`] (JSON and zstd), which
    /// needs no queue: the run loop calls it before taking the queue's lock.
    pub fn encode_group(source: &str, events: &[Event], checkpoint: &Checkpoint) -> Result<EncodedGroup, QueueError> {
        let mut by_cat: BTreeMap<u8, (Category, Vec<&Event>)> = BTreeMap::new();
        for e in events {
            let code = Category::ALL.iter().position(|c| *c == e.category).unwrap_or(0) as u8;
            by_cat.entry(code).or_insert_with(|| (e.category, Vec::new())).1.push(e);
        }
        let n = by_cat.len();
        let mut records = Vec::with_capacity(n);
        for (i, (_, (cat, evs))) in by_cat.into_iter().enumerate() {
            let carrier = i + 1 == n;
            let level = evs.iter().map(|e| e.level).max().unwrap_or(Level::Security);
            records.push((cat, level, evs.len() as u32, encode_body(source, carrier.then_some(checkpoint), &evs)?));
        }
        Ok(EncodedGroup { source: source.to_string(), checkpoint: checkpoint.clone(), records })
    }

    /// The I/O half of [`Queue::append_group`]: make room, seal, append.
    pub fn append_encoded(&mut self, g: EncodedGroup) -> Result<Appended, QueueError> {
        let EncodedGroup { source, checkpoint, records: bodies } = g;
        // The checkpoint alone, for when the carrier's events do not fit
        // (rare: encoded only then).
        let carrier_only = || encode_body::<Event>(&source, Some(&checkpoint), &[]);
        let mut out = Appended::default();
        // Make room per record; a record that does not fit is dropped, but
        // the carrier must be written (it holds the checkpoint): if its
        // events do not fit, the checkpoint is written without them.
        let mut keep: Vec<(Category, Level, u32, Vec<u8>)> = Vec::new();
        let last = bodies.len().saturating_sub(1);
        for (i, (cat, lvl, count, z)) in bodies.into_iter().enumerate() {
            let need = (BATCH_HEADER_LEN + z.len() + crate::seal::OVERHEAD) as u64 + WAL_FRAMING;
            if self.make_room(need, cat, &mut out.evicted)? {
                keep.push((cat, lvl, count, z));
            } else {
                *out.dropped.entry(cat).or_default() += u64::from(count);
                *self.counters.evicted_events.entry(cat.name().to_string()).or_default() += u64::from(count);
                self.counters.evicted_records += 1;
                if i == last {
                    keep.push((cat, Level::Security, 0, carrier_only()?));
                }
            }
        }
        if keep.is_empty() {
            // No events at all: a carrier alone keeps the checkpoint logic uniform.
            keep.push((Category::Settings, Level::Security, 0, carrier_only()?));
        }
        let group = self.wal.next_lsn();
        let glen = keep.len() as u16;
        let kn = keep.len();
        for (i, (cat, lvl, count, z)) in keep.into_iter().enumerate() {
            let h = BatchHeader {
                category: cat,
                max_level: lvl,
                flags: if i + 1 == kn { FLAG_CARRIER } else { 0 },
                group_len: glen,
                group,
                source: format::source_key(&source),
                events: count,
                batch_id: BatchId::new(),
            };
            let lsn = self.append_batch(&h, &z)?;
            out.last_lsn = lsn;
        }
        out.group = group;
        Ok(out)
    }

    fn append_batch(&mut self, h: &BatchHeader, compressed: &[u8]) -> Result<Lsn, QueueError> {
        let hb = format::encode_batch_header(h);
        let mut payload = Vec::with_capacity(BATCH_HEADER_LEN + compressed.len() + crate::seal::OVERHEAD);
        payload.extend_from_slice(&hb);
        self.key
            .seal_into(&format::batch_aad(&hb), compressed, &mut payload)
            .map_err(|source| QueueError::Seal { lsn: self.wal.next_lsn(), source })?;
        let lsn = self.wal.append(&payload)?;
        self.unsynced = true;
        self.counters.appended_records += 1;
        let bytes = payload.len() as u64 + WAL_FRAMING;
        self.live.insert(lsn, Meta::new(h, payload.len(), State::Pending));
        self.live_bytes += bytes;
        *self.live_events.entry(h.category).or_default() += u64::from(h.events);
        Ok(lsn)
    }

    /// Make `need` bytes of room for a record of `cat`. Returns false when
    /// the record must be dropped instead.
    fn make_room(&mut self, need: u64, cat: Category, evicted: &mut BTreeMap<Category, u64>) -> Result<bool, QueueError> {
        let incoming = eviction_class(cat);
        loop {
            self.reclaim()?;
            if self.wal.disk_bytes() + need <= self.opts.max_bytes {
                return Ok(true);
            }
            // Dead bytes first: compaction loses nothing.
            if self.live_bytes + need <= self.opts.max_bytes && self.compact_head()? {
                continue;
            }
            let victim = self
                .live
                .iter()
                .filter(|(_, m)| m.state == State::Ready)
                .filter_map(|(l, m)| eviction_class(m.category).map(|c| (c, *l, m.events)))
                .filter(|(c, _, _)| incoming.is_none_or(|i| *c <= i))
                .min_by_key(|(c, l, _)| (*c, *l));
            match victim {
                Some((_, lsn, n)) => {
                    let c = self.live[&lsn].category;
                    self.finish_inner(lsn, DoneReason::Evicted);
                    *evicted.entry(c).or_default() += u64::from(n);
                    *self.counters.evicted_events.entry(c.name().to_string()).or_default() += u64::from(n);
                    self.counters.evicted_records += 1;
                }
                None if incoming.is_none() => {
                    tracing::warn!(category = cat.name(), "queue over its bound: a record that is never evicted is kept anyway");
                    return Ok(true);
                }
                None => return Ok(false),
            }
        }
    }

    /// Delete log segments that hold only finished records (and metadata).
    fn reclaim(&mut self) -> Result<(), QueueError> {
        let low = self.live.keys().next().copied().unwrap_or(self.wal.next_lsn());
        let segs = self.wal.segments();
        // Only when a whole segment is freed (an ack costs three fsyncs).
        if segs.len() > 1 && segs[1].first_lsn <= low && low > self.wal.acked_lsn() {
            // Done entries below `low` need not be written: the ack covers them.
            self.unwritten_done.retain(|(l, _)| *l >= low);
            self.flush_metadata()?;
            self.wal.sync()?;
            self.wal.ack(low)?;
            self.cursor = None;
        }
        Ok(())
    }

    /// Copy the live records of the oldest segment to the end of the log if
    /// they fill less than half of it. Returns whether anything was freed.
    fn compact_head(&mut self) -> Result<bool, QueueError> {
        let segs = self.wal.segments();
        if segs.len() < 2 {
            return Ok(false);
        }
        let (start, end, size) = (segs[0].first_lsn, segs[1].first_lsn, segs[0].bytes);
        let lsns: Vec<Lsn> = self.live.range(start..end).filter(|(_, m)| m.state != State::Pending).map(|(l, _)| *l).collect();
        let in_seg: u64 = self.live.range(start..end).map(|(_, m)| u64::from(m.bytes)).sum();
        // Copy only when it frees at least a quarter of the segment.
        if in_seg * 4 > size * 3 || self.live.range(start..end).any(|(_, m)| m.state == State::Pending) {
            return Ok(false);
        }
        for old in lsns {
            let payload = self.read_payload(old)?;
            let Ok(Payload::Batch(h, sealed)) = format::decode(&payload) else {
                self.finish_inner(old, DoneReason::Corrupt);
                self.counters.corrupt_records += 1;
                continue;
            };
            let nh = BatchHeader { flags: FLAG_COPIED, group_len: 1, ..h };
            let mut p = format::encode_batch_header(&nh).to_vec();
            p.extend_from_slice(sealed);
            let new = self.wal.append(&p)?;
            self.unsynced = true;
            self.counters.compacted_bytes += p.len() as u64;
            let Some(meta) = self.live.remove(&old) else { continue };
            self.live.insert(new, Meta { copied: true, ..meta });
            if meta.state == State::Taken {
                self.moved.insert(old, new);
            }
            self.unwritten_done.push((old, DoneReason::Moved));
        }
        self.flush_metadata()?;
        self.wal.sync()?;
        self.unsynced = false;
        let before = self.wal.segment_count();
        self.reclaim()?;
        Ok(self.wal.segment_count() < before)
    }

    fn flush_metadata(&mut self) -> Result<(), QueueError> {
        if !self.unwritten_committed.is_empty() {
            for g in std::mem::take(&mut self.unwritten_committed) {
                self.wal.append(&format::encode_committed(g))?;
            }
            self.unsynced = true;
        }
        if !self.unwritten_done.is_empty() {
            let entries = std::mem::take(&mut self.unwritten_done);
            for chunk in entries.chunks(4096) {
                self.wal.append(&format::encode_done(chunk))?;
            }
            self.unsynced = true;
        }
        Ok(())
    }

    /// Make everything appended durable (and the done and committed entries
    /// recorded so far). Returns the lsn below which everything is durable.
    pub fn sync(&mut self) -> Result<Lsn, QueueError> {
        self.flush_metadata()?;
        if self.unsynced {
            self.wal.sync()?;
            self.unsynced = false;
        }
        Ok(self.wal.next_lsn())
    }

    /// The group's source position is committed: its records may be sent.
    /// Durable at the next sync (a crash before it re-applies the same
    /// checkpoint, which is harmless).
    pub fn mark_committed(&mut self, group: u64) {
        // A group's records are contiguous, from the lsn that is its id:
        // cost proportional to the group, not to the backlog.
        let mut empty: Vec<Lsn> = Vec::new();
        for (l, m) in self.live.range_mut(group..) {
            if m.group != group {
                break;
            }
            if m.state == State::Pending {
                m.state = State::Ready;
            }
            if m.events == 0 {
                empty.push(*l);
            }
        }
        self.unwritten_committed.push(group);
        // Carrier-only records (no events) have nothing to send.
        for l in empty {
            self.finish_inner(l, DoneReason::Acked);
        }
    }

    /// Hand out the oldest ready record, read from disk and decrypted.
    /// `Ok(None)` when nothing is ready. A record that cannot be read is
    /// finished as corrupt, counted, and skipped.
    pub fn take(&mut self) -> Result<Option<Taken>, QueueError> {
        loop {
            let Some(raw) = self.take_raw()? else { return Ok(None) };
            let lsn = raw.lsn;
            match Self::decode_raw(&self.key, raw) {
                Ok(t) => return Ok(Some(t)),
                Err(e) => self.finish_unreadable(lsn, &e),
            }
        }
    }

    /// [`Queue::take`] without the decoding: the oldest ready record's bytes,
    /// marked taken. The run loop decodes ([`Queue::decode_raw`]) after
    /// releasing the queue's lock. A record whose bytes cannot be read from
    /// the log is finished as corrupt and skipped.
    pub fn take_raw(&mut self) -> Result<Option<RawRecord>, QueueError> {
        loop {
            let Some((lsn, category)) = self.live.iter().find(|(_, m)| m.state == State::Ready).map(|(l, m)| (*l, m.category)) else {
                return Ok(None);
            };
            match self.read_payload(lsn) {
                Ok(payload) => {
                    if let Some(m) = self.live.get_mut(&lsn) {
                        m.state = State::Taken;
                    }
                    return Ok(Some(RawRecord { lsn, category, payload }));
                }
                Err(QueueError::Wal(e)) if !matches!(e, WalError::CorruptRecord { .. }) => return Err(QueueError::Wal(e)),
                Err(e) => self.finish_unreadable(lsn, &e),
            }
        }
    }

    /// Open, decompress and parse a record from [`Queue::take_raw`].
    pub fn decode_raw(key: &SealKey, raw: RawRecord) -> Result<Taken, QueueError> {
        let lsn = raw.lsn;
        let (h, body) = decode_payload(key, lsn, &raw.payload)?;
        Ok(Taken { lsn, batch_id: h.batch_id, category: raw.category, source: body.source, events: body.events })
    }

    /// A taken record could not be decoded: finish it as corrupt, counted.
    pub fn finish_unreadable(&mut self, lsn: Lsn, why: &QueueError) {
        tracing::error!(error = %why, lsn, "queue record unreadable; skipped");
        self.counters.corrupt_records += 1;
        let lsn = self.moved.remove(&lsn).unwrap_or(lsn);
        self.finish_inner(lsn, DoneReason::Corrupt);
    }

    /// Put a taken record back (to be taken again later, e.g. after the agent
    /// decided to stop before sending it).
    pub fn untake(&mut self, lsn: Lsn) {
        let lsn = self.moved.remove(&lsn).unwrap_or(lsn);
        if let Some(m) = self.live.get_mut(&lsn) {
            if m.state == State::Taken {
                m.state = State::Ready;
            }
        }
    }

    /// A taken record left the queue for `reason`; durable at the next sync.
    pub fn finish(&mut self, lsn: Lsn, reason: DoneReason) {
        let lsn = self.moved.remove(&lsn).unwrap_or(lsn);
        self.finish_inner(lsn, reason);
    }

    fn finish_inner(&mut self, lsn: Lsn, reason: DoneReason) {
        if let Some(m) = self.live.remove(&lsn) {
            self.live_bytes = self.live_bytes.saturating_sub(u64::from(m.bytes));
            if let Some(n) = self.live_events.get_mut(&m.category) {
                *n = n.saturating_sub(u64::from(m.events));
                if *n == 0 {
                    self.live_events.remove(&m.category);
                }
            }
            self.unwritten_done.push((lsn, reason));
        }
    }

    /// Replace a taken record by one with fewer events (a purge) under a
    /// derived batch id; returns the new record's lsn (already taken).
    /// An empty `events` just finishes the record as purged.
    pub fn replace(&mut self, lsn: Lsn, events: Vec<Event>, batch_id: BatchId, source: &str) -> Result<Option<Lsn>, QueueError> {
        let lsn = self.moved.remove(&lsn).unwrap_or(lsn);
        let Some(meta) = self.live.get(&lsn).copied() else { return Ok(None) };
        if events.is_empty() {
            self.finish_inner(lsn, DoneReason::Purged);
            return Ok(None);
        }
        let z = encode_body(source, None, &events)?;
        let h = BatchHeader {
            category: meta.category,
            max_level: level_max(&events),
            flags: FLAG_COPIED,
            group_len: 1,
            group: meta.group,
            source: 0,
            events: events.len() as u32,
            batch_id,
        };
        let new = self.append_batch(&h, &z)?;
        if let Some(m) = self.live.get_mut(&new) {
            m.state = State::Taken;
        }
        self.finish_inner(lsn, DoneReason::Moved);
        Ok(Some(new))
    }

    /// Finish every ready record for which `purge(category, max_level)` is
    /// true without reading it; returns the events removed, by category.
    pub fn purge_where(&mut self, purge: impl Fn(Category, Level) -> bool) -> BTreeMap<Category, u64> {
        let victims: Vec<(Lsn, Category, u32)> = self
            .live
            .iter()
            .filter(|(_, m)| m.state == State::Ready && purge(m.category, m.max_level))
            .map(|(l, m)| (*l, m.category, m.events))
            .collect();
        let mut out = BTreeMap::new();
        for (l, c, n) in victims {
            self.finish_inner(l, DoneReason::Purged);
            *out.entry(c).or_default() += u64::from(n);
        }
        out
    }

    /// Ready records whose events may be above `level`: their lsns (for a
    /// purge that must read them).
    pub fn ready_above(&self, level: Level) -> Vec<Lsn> {
        self.live.iter().filter(|(_, m)| m.state == State::Ready && m.max_level > level).map(|(l, _)| *l).collect()
    }

    /// Take a specific ready record (for a purge that rewrites it).
    pub fn take_lsn(&mut self, lsn: Lsn) -> Result<Option<Taken>, QueueError> {
        if self.live.get(&lsn).is_none_or(|m| m.state != State::Ready) {
            return Ok(None);
        }
        let (h, body) = self.read_body(lsn)?;
        let Some(m) = self.live.get_mut(&lsn) else { return Ok(None) };
        m.state = State::Taken;
        Ok(Some(Taken { lsn, batch_id: h.batch_id, category: m.category, source: body.source, events: body.events }))
    }

    /// What the queue holds (cheap: kept up to date as records come and go).
    pub fn status(&self) -> QueueStatus {
        QueueStatus {
            records: self.live.len() as u64,
            events: self.live_events.values().sum(),
            bytes: self.live_bytes,
            events_by_category: self.live_events.iter().map(|(c, n)| (c.name().to_string(), *n)).collect(),
            disk_bytes: self.wal.disk_bytes(),
            max_bytes: self.opts.max_bytes,
            counters: self.counters.clone(),
        }
    }

    /// Whether a group appended by [`Queue::append_group`] is still in the
    /// queue, pending its commit (after a reopen: it was durable).
    pub fn has_pending_group(&self, group: u64) -> bool {
        self.live.range(group..).take_while(|(_, m)| m.group == group).any(|(_, m)| m.state == State::Pending)
    }


    fn read_payload(&mut self, lsn: Lsn) -> Result<Vec<u8>, QueueError> {
        // Reuse the sequential reader while it moves forward.
        if let Some((reader, last)) = self.cursor.as_mut() {
            if *last < lsn {
                for item in reader.by_ref() {
                    match item {
                        Ok((l, p)) if l == lsn => {
                            *last = l;
                            return Ok(p);
                        }
                        Ok((l, _)) if l < lsn => *last = l,
                        Ok(_) => break,
                        Err(_) => break,
                    }
                }
            }
            self.cursor = None;
        }
        let mut reader = self.wal.read_from(lsn)?;
        for item in reader.by_ref() {
            match item {
                Ok((l, p)) if l == lsn => {
                    self.cursor = Some((reader, l));
                    return Ok(p);
                }
                Ok((l, _)) if l > lsn => break,
                Ok(_) => {}
                Err(e @ WalError::CorruptRecord { .. }) => return Err(e.into()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(QueueError::Body { lsn, reason: "not found in the log (damaged or not yet durable)".into() })
    }

    fn read_body(&mut self, lsn: Lsn) -> Result<(BatchHeader, BodyIn), QueueError> {
        let payload = self.read_payload(lsn)?;
        decode_payload(&self.key, lsn, &payload)
    }

    /// The key records are sealed with (for [`Queue::decode_raw`]).
    pub fn key(&self) -> Arc<SealKey> {
        self.key.clone()
    }

}

#[cfg(test)]
mod tests;
