//! The conformance suite every [`Catalog`] implementation must pass.
//!
//! A backend's tests open a fresh, empty catalog and call [`run_all`] with it
//! (as an `Arc<dyn Catalog>`, because [`concurrent_consumers_enroll_once`]
//! shares the catalog between tasks). Each check is also public, so a
//! failing one can be run alone. Checks create their own workspaces with
//! unique names and never assume the catalog is empty, so they may run in
//! any order against the same catalog. Every check panics (with a message
//! naming the behaviour) when the backend misbehaves.
//!
//! Concurrency checks spawn tokio tasks; call the suite from a multi-thread
//! runtime (`#[tokio::test(flavor = "multi_thread")]`) for real contention.
//!
//! Only compiled for this crate's tests and with the `conformance` feature.

use crate::{Agent, Catalog, CatalogError, ColumnDef, EnrollmentKey, Result, Segment, Workspace};
use custos_model::{AgentId, BatchId, SegmentId, TableName, TimestampMicros, ValueType, WorkspaceId};
use std::collections::HashSet;
use std::sync::Arc;

/// A fixed clock for the checks (2024-01-01T00:00:00Z), so results do not
/// depend on the wall clock.
const T0: TimestampMicros = 1_704_067_200_000_000;

/// Run every check against `cat`, which should start empty (but the checks
/// do not rely on it).
pub async fn run_all(cat: Arc<dyn Catalog>) {
    let c: &dyn Catalog = cat.as_ref();
    workspaces_round_trip(c).await;
    workspace_names_are_unique(c).await;
    workspaces_are_listed_oldest_first(c).await;
    enrollment_key_needs_existing_workspace(c).await;
    enrollment_key_is_single_use(c).await;
    expired_enrollment_key_is_refused(c).await;
    wrong_enrollment_key_is_refused(c).await;
    enrollment_keys_enroll_into_their_own_workspace(c).await;
    concurrent_consumers_enroll_once(cat.clone()).await;
    agents_round_trip(c).await;
    duplicate_agent_is_refused(c).await;
    agent_needs_existing_workspace(c).await;
    agents_are_listed_per_workspace(c).await;
    segments_round_trip(c).await;
    segments_never_cross_workspaces(c).await;
    batch_ids_are_per_workspace(c).await;
    recorded_batch_ids_are_ignored(c).await;
    stored_batches_handles_many_ids(c).await;
    commit_segments_is_atomic(c).await;
    duplicate_segment_is_refused(c).await;
    commit_segments_needs_existing_workspace(c).await;
    time_range_filters_segments(c).await;
    tables_are_listed_per_workspace(c).await;
}

// ---------------------------------------------------------------- helpers

fn ok<T>(r: Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e} ({e:?})"),
    }
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", WorkspaceId::new())
}

fn table(name: &str) -> TableName {
    match TableName::new(name) {
        Ok(t) => t,
        Err(e) => panic!("bad table name in the suite: {e}"),
    }
}

/// Create a workspace with a unique name and creation time `created_at`.
async fn new_workspace(cat: &dyn Catalog, tag: &str, created_at: TimestampMicros) -> Workspace {
    let ws = Workspace {
        id: WorkspaceId::new(),
        name: unique(tag),
        region: "eu-central".into(),
        retention_days: 14,
        created_at,
    };
    ok(cat.create_workspace(&ws).await, "create_workspace");
    ws
}

fn enrollment_key(ws: WorkspaceId, expires_at: TimestampMicros) -> EnrollmentKey {
    EnrollmentKey {
        // Shaped like a SHA-256 hex digest, and unique.
        key_hash: format!("{:064x}", WorkspaceId::new().as_uuid().as_u128()),
        workspace_id: ws,
        created_at: T0,
        expires_at,
    }
}

fn agent(ws: WorkspaceId, host: &str, enrolled_at: TimestampMicros) -> Agent {
    Agent {
        id: AgentId::new(),
        workspace_id: ws,
        hostname: host.into(),
        cert_sha256: "ab".repeat(32),
        cert_not_after: enrolled_at + 86_400_000_000 * 90,
        enrolled_at,
        revoked_at: None,
    }
}

fn segment(ws: WorkspaceId, tbl: &str, min_time: TimestampMicros, max_time: TimestampMicros) -> Segment {
    let id = SegmentId::new();
    Segment {
        id,
        workspace_id: ws,
        table: table(tbl),
        path: format!("{ws}/{tbl}/{id}.seg"),
        min_time,
        max_time,
        rows: 42,
        bytes: 4096,
        columns: vec![
            ColumnDef { name: "pid".into(), ty: ValueType::Int },
            ColumnDef { name: "unit".into(), ty: ValueType::Str },
        ],
        created_at: T0,
    }
}

fn ids(segs: &[Segment]) -> Vec<SegmentId> {
    segs.iter().map(|s| s.id).collect()
}

// ---------------------------------------------------------------- workspaces

/// A created workspace reads back identically, by id and in the list; an
/// unknown id reads as `None`.
pub async fn workspaces_round_trip(cat: &dyn Catalog) {
    let ws = Workspace {
        id: WorkspaceId::new(),
        name: unique("round trip ünïcode"),
        region: "us-east".into(),
        retention_days: u32::MAX,
        created_at: T0 + 123,
    };
    ok(cat.create_workspace(&ws).await, "create_workspace");
    assert_eq!(ok(cat.get_workspace(ws.id).await, "get_workspace"), Some(ws.clone()));
    assert_eq!(ok(cat.get_workspace(WorkspaceId::new()).await, "get_workspace(unknown)"), None);
    let all = ok(cat.list_workspaces().await, "list_workspaces");
    assert_eq!(all.iter().filter(|w| **w == ws).count(), 1, "workspace listed exactly once: {all:?}");
}

/// A second workspace with a taken name is refused with
/// `WorkspaceNameTaken`, and the first is left as it was.
pub async fn workspace_names_are_unique(cat: &dyn Catalog) {
    let first = new_workspace(cat, "unique", T0).await;
    let second = Workspace { id: WorkspaceId::new(), region: "elsewhere".into(), ..first.clone() };
    match cat.create_workspace(&second).await {
        Err(CatalogError::WorkspaceNameTaken(name)) => assert_eq!(name, first.name),
        other => panic!("duplicate workspace name: expected WorkspaceNameTaken, got {other:?}"),
    }
    assert_eq!(ok(cat.get_workspace(second.id).await, "get_workspace"), None, "refused workspace was stored");
    assert_eq!(ok(cat.get_workspace(first.id).await, "get_workspace"), Some(first.clone()));
    let all = ok(cat.list_workspaces().await, "list_workspaces");
    assert_eq!(all.iter().filter(|w| w.name == first.name).count(), 1);
    // Names are compared exactly: another name still works.
    let other = Workspace { id: WorkspaceId::new(), name: format!("{}-2", first.name), ..first.clone() };
    ok(cat.create_workspace(&other).await, "create_workspace(different name)");
}

/// `list_workspaces` orders by creation time, not by insertion order.
pub async fn workspaces_are_listed_oldest_first(cat: &dyn Catalog) {
    let newer = new_workspace(cat, "newer", T0 + 2_000).await;
    let older = new_workspace(cat, "older", T0 + 1_000).await;
    let all = ok(cat.list_workspaces().await, "list_workspaces");
    assert!(
        all.windows(2).all(|w| w[0].created_at <= w[1].created_at),
        "workspaces not sorted by created_at: {all:?}"
    );
    let pos = |id| all.iter().position(|w| w.id == id);
    match (pos(older.id), pos(newer.id)) {
        (Some(o), Some(n)) => assert!(o < n, "older workspace listed after newer"),
        _ => panic!("created workspaces missing from list_workspaces"),
    }
}

// ---------------------------------------------------------------- enrollment

/// A key for a workspace that does not exist is refused with
/// `WorkspaceNotFound`, and cannot be consumed.
pub async fn enrollment_key_needs_existing_workspace(cat: &dyn Catalog) {
    let ghost = WorkspaceId::new();
    let key = enrollment_key(ghost, T0 + 1_000_000);
    match cat.add_enrollment_key(&key).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("key for unknown workspace: expected WorkspaceNotFound, got {other:?}"),
    }
    match cat.consume_enrollment_key(&key.key_hash, T0).await {
        Err(CatalogError::EnrollmentKeyInvalid) => {}
        other => panic!("refused key was stored: consume gave {other:?}"),
    }
}

/// A key enrolls once; the second use is `EnrollmentKeyUsed`.
pub async fn enrollment_key_is_single_use(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "single-use", T0).await;
    let key = enrollment_key(ws.id, T0 + 3_600_000_000);
    ok(cat.add_enrollment_key(&key).await, "add_enrollment_key");
    assert_eq!(ok(cat.consume_enrollment_key(&key.key_hash, T0 + 1).await, "first consume"), ws.id);
    for now in [T0 + 2, T0 + 1] {
        match cat.consume_enrollment_key(&key.key_hash, now).await {
            Err(CatalogError::EnrollmentKeyUsed) => {}
            other => panic!("second use of a key: expected EnrollmentKeyUsed, got {other:?}"),
        }
    }
    // A used key stays used (and reads as used, not expired) after expiry.
    match cat.consume_enrollment_key(&key.key_hash, key.expires_at + 1).await {
        Err(CatalogError::EnrollmentKeyUsed) => {}
        other => panic!("used key after expiry: expected EnrollmentKeyUsed, got {other:?}"),
    }
}

/// A key is valid while `now < expires_at`: at and after its expiry it is
/// refused with `EnrollmentKeyExpired`, one microsecond before it works.
pub async fn expired_enrollment_key_is_refused(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "expired", T0).await;
    let expires = T0 + 60_000_000;

    let key = enrollment_key(ws.id, expires);
    ok(cat.add_enrollment_key(&key).await, "add_enrollment_key");
    for now in [expires, expires + 1, expires + 86_400_000_000] {
        match cat.consume_enrollment_key(&key.key_hash, now).await {
            Err(CatalogError::EnrollmentKeyExpired) => {}
            other => panic!("key at/after expiry (now={now}, expires={expires}): expected EnrollmentKeyExpired, got {other:?}"),
        }
    }

    let key = enrollment_key(ws.id, expires);
    ok(cat.add_enrollment_key(&key).await, "add_enrollment_key");
    assert_eq!(ok(cat.consume_enrollment_key(&key.key_hash, expires - 1).await, "consume just before expiry"), ws.id);
}

/// An unknown key hash is `EnrollmentKeyInvalid`, including one that differs
/// from a stored key only by case or a prefix.
pub async fn wrong_enrollment_key_is_refused(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "wrong-key", T0).await;
    let key = enrollment_key(ws.id, T0 + 3_600_000_000);
    ok(cat.add_enrollment_key(&key).await, "add_enrollment_key");
    let upper = key.key_hash.to_uppercase();
    let prefix = &key.key_hash[..32];
    for wrong in [format!("{:064x}", 7u8), upper, prefix.to_string(), String::new(), "%".into()] {
        match cat.consume_enrollment_key(&wrong, T0).await {
            Err(CatalogError::EnrollmentKeyInvalid) => {}
            other => panic!("wrong key {wrong:?}: expected EnrollmentKeyInvalid, got {other:?}"),
        }
    }
    // The wrong attempts did not use up the real key.
    assert_eq!(ok(cat.consume_enrollment_key(&key.key_hash, T0).await, "consume real key"), ws.id);
}

/// Each key enrolls into the workspace it was issued for.
pub async fn enrollment_keys_enroll_into_their_own_workspace(cat: &dyn Catalog) {
    let a = new_workspace(cat, "keys-a", T0).await;
    let b = new_workspace(cat, "keys-b", T0).await;
    let ka = enrollment_key(a.id, T0 + 1_000_000);
    let kb = enrollment_key(b.id, T0 + 1_000_000);
    ok(cat.add_enrollment_key(&ka).await, "add key a");
    ok(cat.add_enrollment_key(&kb).await, "add key b");
    assert_eq!(ok(cat.consume_enrollment_key(&kb.key_hash, T0).await, "consume b"), b.id);
    assert_eq!(ok(cat.consume_enrollment_key(&ka.key_hash, T0).await, "consume a"), a.id);
}

/// Many tasks consuming the same key at once: exactly one gets the
/// workspace, every other gets `EnrollmentKeyUsed`.
pub async fn concurrent_consumers_enroll_once(cat: Arc<dyn Catalog>) {
    const CONSUMERS: usize = 24;
    let ws = new_workspace(cat.as_ref(), "concurrent", T0).await;
    for round in 0..3 {
        let key = enrollment_key(ws.id, T0 + 1_000_000);
        ok(cat.add_enrollment_key(&key).await, "add_enrollment_key");
        let barrier = Arc::new(tokio::sync::Barrier::new(CONSUMERS));
        let mut tasks = Vec::with_capacity(CONSUMERS);
        for _ in 0..CONSUMERS {
            let cat = cat.clone();
            let barrier = barrier.clone();
            let hash = key.key_hash.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                cat.consume_enrollment_key(&hash, T0).await
            }));
        }
        let (mut won, mut used) = (0, 0);
        for task in tasks {
            match task.await {
                Ok(Ok(id)) => {
                    assert_eq!(id, ws.id, "consumer got the wrong workspace");
                    won += 1;
                }
                Ok(Err(CatalogError::EnrollmentKeyUsed)) => used += 1,
                Ok(Err(e)) => panic!("concurrent consumer (round {round}): unexpected error {e:?}"),
                Err(e) => panic!("concurrent consumer task failed: {e}"),
            }
        }
        assert_eq!(won, 1, "round {round}: {won} of {CONSUMERS} concurrent consumers enrolled");
        assert_eq!(used, CONSUMERS - 1, "round {round}: the others must see EnrollmentKeyUsed");
    }
}

// ---------------------------------------------------------------- agents

/// Agents read back identically (revoked or not), listed in their
/// workspace in enrollment order; an unknown id reads as `None`.
pub async fn agents_round_trip(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "agents", T0).await;
    let later = agent(ws.id, "db-02.example", T0 + 500);
    let mut earlier = agent(ws.id, "web-01.example", T0 + 100);
    earlier.revoked_at = Some(T0 + 9_999);
    ok(cat.add_agent(&later).await, "add_agent");
    ok(cat.add_agent(&earlier).await, "add_agent");
    assert_eq!(ok(cat.get_agent(later.id).await, "get_agent"), Some(later.clone()));
    assert_eq!(ok(cat.get_agent(earlier.id).await, "get_agent"), Some(earlier.clone()));
    assert_eq!(ok(cat.get_agent(AgentId::new()).await, "get_agent(unknown)"), None);
    assert_eq!(ok(cat.list_agents(ws.id).await, "list_agents"), vec![earlier, later]);
}

/// Registering an agent id twice is `AgentExists`; the first stays.
pub async fn duplicate_agent_is_refused(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "dup-agent", T0).await;
    let other_ws = new_workspace(cat, "dup-agent-other", T0).await;
    let first = agent(ws.id, "first", T0);
    ok(cat.add_agent(&first).await, "add_agent");
    for dup in [
        Agent { hostname: "impostor".into(), ..first.clone() },
        Agent { workspace_id: other_ws.id, ..first.clone() },
    ] {
        match cat.add_agent(&dup).await {
            Err(CatalogError::AgentExists(id)) => assert_eq!(id, first.id),
            other => panic!("duplicate agent: expected AgentExists, got {other:?}"),
        }
    }
    assert_eq!(ok(cat.get_agent(first.id).await, "get_agent"), Some(first.clone()));
    assert_eq!(ok(cat.list_agents(ws.id).await, "list_agents"), vec![first]);
    assert_eq!(ok(cat.list_agents(other_ws.id).await, "list_agents"), vec![]);
}

/// An agent of a workspace that does not exist is `WorkspaceNotFound`.
pub async fn agent_needs_existing_workspace(cat: &dyn Catalog) {
    let ghost = WorkspaceId::new();
    let a = agent(ghost, "orphan", T0);
    match cat.add_agent(&a).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("agent of unknown workspace: expected WorkspaceNotFound, got {other:?}"),
    }
    assert_eq!(ok(cat.get_agent(a.id).await, "get_agent"), None);
}

/// `list_agents` shows only that workspace's agents.
pub async fn agents_are_listed_per_workspace(cat: &dyn Catalog) {
    let a = new_workspace(cat, "agents-a", T0).await;
    let b = new_workspace(cat, "agents-b", T0).await;
    let empty = new_workspace(cat, "agents-empty", T0).await;
    let aa = agent(a.id, "same-host", T0);
    let ab = agent(b.id, "same-host", T0);
    ok(cat.add_agent(&aa).await, "add_agent");
    ok(cat.add_agent(&ab).await, "add_agent");
    assert_eq!(ok(cat.list_agents(a.id).await, "list_agents a"), vec![aa]);
    assert_eq!(ok(cat.list_agents(b.id).await, "list_agents b"), vec![ab]);
    assert_eq!(ok(cat.list_agents(empty.id).await, "list_agents empty"), vec![]);
    assert_eq!(ok(cat.list_agents(WorkspaceId::new()).await, "list_agents unknown"), vec![]);
}

// ---------------------------------------------------------------- segments

/// Committed segments read back identically (columns, sizes near the top of
/// the range, negative times), and their batch ids are recorded.
pub async fn segments_round_trip(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "segments", T0).await;
    let mut s1 = segment(ws.id, "logs", -5_000, -1_000);
    s1.rows = i64::MAX as u64;
    s1.bytes = 0;
    s1.columns = vec![];
    let mut s2 = segment(ws.id, "logs", T0, T0 + 10);
    s2.columns.push(ColumnDef { name: "ok".into(), ty: ValueType::Bool });
    s2.columns.push(ColumnDef { name: "load".into(), ty: ValueType::Float });
    let batches = [(ws.id, BatchId::new()), (ws.id, BatchId::new())];
    ok(cat.commit_segments(&[s2.clone(), s1.clone()], &batches, T0 + 20).await, "commit_segments");
    assert_eq!(ok(cat.list_segments(ws.id, &s1.table, None).await, "list_segments"), vec![s1, s2]);
    let wanted: Vec<BatchId> = batches.iter().map(|b| b.1).collect();
    assert_eq!(ok(cat.stored_batches(ws.id, &wanted).await, "stored_batches"), wanted);
    // An empty commit is fine and changes nothing.
    ok(cat.commit_segments(&[], &[], T0).await, "empty commit_segments");
}

/// Segments of one workspace never show up in another's listings, even for
/// the same table name and time range.
pub async fn segments_never_cross_workspaces(cat: &dyn Catalog) {
    let a = new_workspace(cat, "cross-a", T0).await;
    let b = new_workspace(cat, "cross-b", T0).await;
    let sa = segment(a.id, "logs", 0, 100);
    let sb = segment(b.id, "logs", 0, 100);
    let sb2 = segment(b.id, "metrics", 0, 100);
    // One commit spanning both workspaces.
    ok(cat.commit_segments(&[sa.clone(), sb.clone(), sb2.clone()], &[], T0).await, "commit_segments");
    let logs = table("logs");
    assert_eq!(ok(cat.list_segments(a.id, &logs, None).await, "list a"), vec![sa.clone()]);
    assert_eq!(ok(cat.list_segments(a.id, &logs, Some((0, 100))).await, "list a ranged"), vec![sa]);
    assert_eq!(ok(cat.list_segments(b.id, &logs, None).await, "list b"), vec![sb]);
    assert_eq!(ok(cat.list_segments(a.id, &table("metrics"), None).await, "list a metrics"), vec![]);
    assert_eq!(ok(cat.list_segments(WorkspaceId::new(), &logs, None).await, "list unknown"), vec![]);
    assert_eq!(ok(cat.list_tables(a.id).await, "tables a"), vec![logs]);
}

/// A batch id recorded for one workspace is not "stored" for another, and
/// the same batch id may be recorded for both.
pub async fn batch_ids_are_per_workspace(cat: &dyn Catalog) {
    let a = new_workspace(cat, "batch-a", T0).await;
    let b = new_workspace(cat, "batch-b", T0).await;
    let (shared, only_a, never) = (BatchId::new(), BatchId::new(), BatchId::new());
    ok(cat.commit_segments(&[segment(a.id, "logs", 0, 1)], &[(a.id, shared), (a.id, only_a)], T0).await, "commit a");
    assert_eq!(ok(cat.stored_batches(a.id, &[never, only_a, shared]).await, "stored a"), vec![only_a, shared]);
    assert_eq!(ok(cat.stored_batches(b.id, &[shared, only_a, never]).await, "stored b"), vec![]);
    ok(cat.commit_segments(&[], &[(b.id, shared)], T0).await, "commit b");
    assert_eq!(ok(cat.stored_batches(b.id, &[shared, only_a]).await, "stored b"), vec![shared]);
    assert_eq!(ok(cat.stored_batches(a.id, &[]).await, "stored a, no ids"), vec![]);
}

/// Committing a batch id that is already recorded is not an error, and
/// the segments of that commit are still registered.
pub async fn recorded_batch_ids_are_ignored(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "batch-replay", T0).await;
    let (old, new) = (BatchId::new(), BatchId::new());
    let s1 = segment(ws.id, "logs", 0, 10);
    ok(cat.commit_segments(std::slice::from_ref(&s1), &[(ws.id, old)], T0).await, "first commit");
    let s2 = segment(ws.id, "logs", 20, 30);
    ok(
        cat.commit_segments(std::slice::from_ref(&s2), &[(ws.id, old), (ws.id, new), (ws.id, new)], T0 + 1).await,
        "commit with an already recorded batch id",
    );
    assert_eq!(ok(cat.list_segments(ws.id, &table("logs"), None).await, "list"), vec![s1, s2]);
    assert_eq!(ok(cat.stored_batches(ws.id, &[old, new, old]).await, "stored"), vec![old, new]);
}

/// `stored_batches` answers exactly for many ids at once (more than fit one
/// bind list), returning the stored ones in the order asked.
pub async fn stored_batches_handles_many_ids(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "many-batches", T0).await;
    let all: Vec<BatchId> = (0..2_345).map(|_| BatchId::new()).collect();
    let stored: Vec<BatchId> = all.iter().copied().enumerate().filter(|(i, _)| i % 3 != 1).map(|(_, b)| b).collect();
    let pairs: Vec<(WorkspaceId, BatchId)> = stored.iter().map(|b| (ws.id, *b)).collect();
    ok(cat.commit_segments(&[], &pairs, T0).await, "commit many batch ids");
    let got = ok(cat.stored_batches(ws.id, &all).await, "stored_batches");
    assert_eq!(got.len(), stored.len());
    assert_eq!(got, stored, "stored_batches must return exactly the stored ids, in the order asked");
    let mut reversed = all.clone();
    reversed.reverse();
    let got: HashSet<BatchId> = ok(cat.stored_batches(ws.id, &reversed).await, "stored_batches").into_iter().collect();
    assert_eq!(got, stored.iter().copied().collect::<HashSet<_>>());
}

/// A commit that fails part-way leaves nothing behind: no segment and no
/// batch id of it is recorded.
pub async fn commit_segments_is_atomic(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "atomic", T0).await;
    let logs = table("logs");
    let s1 = segment(ws.id, "logs", 0, 10);
    let s2 = segment(ws.id, "logs", 20, 30);
    let s3 = segment(ws.id, "audit", 0, 10);
    let dup = Segment { path: "elsewhere.seg".into(), ..s1.clone() };
    let batch = BatchId::new();
    // A duplicate segment id inside the same commit, after other rows.
    match cat.commit_segments(&[s1.clone(), s2.clone(), s3.clone(), dup], &[(ws.id, batch)], T0).await {
        Err(CatalogError::SegmentExists(id)) => assert_eq!(id, s1.id),
        other => panic!("commit with a duplicate segment id: expected SegmentExists, got {other:?}"),
    }
    assert_eq!(ok(cat.list_segments(ws.id, &logs, None).await, "list"), vec![], "partial segments left behind");
    assert_eq!(ok(cat.list_tables(ws.id).await, "tables"), vec![], "partial segments left behind");
    assert_eq!(ok(cat.stored_batches(ws.id, &[batch]).await, "stored"), vec![], "batch id of a failed commit recorded");

    // A batch id for a workspace that does not exist, after good rows.
    let ghost = WorkspaceId::new();
    match cat.commit_segments(std::slice::from_ref(&s1), &[(ws.id, batch), (ghost, BatchId::new())], T0).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("commit with an unknown workspace: expected WorkspaceNotFound, got {other:?}"),
    }
    assert_eq!(ok(cat.list_segments(ws.id, &logs, None).await, "list"), vec![], "partial segments left behind");
    assert_eq!(ok(cat.stored_batches(ws.id, &[batch]).await, "stored"), vec![], "batch id of a failed commit recorded");

    // The same commit without the bad rows then goes through.
    ok(cat.commit_segments(&[s1.clone(), s2.clone()], &[(ws.id, batch)], T0).await, "retry");
    assert_eq!(ok(cat.list_segments(ws.id, &logs, None).await, "list"), vec![s1, s2]);
    assert_eq!(ok(cat.stored_batches(ws.id, &[batch]).await, "stored"), vec![batch]);
}

/// A segment id already registered (by an earlier commit, in any
/// workspace) is `SegmentExists`, and the rest of that commit is dropped.
pub async fn duplicate_segment_is_refused(cat: &dyn Catalog) {
    let a = new_workspace(cat, "dup-seg-a", T0).await;
    let b = new_workspace(cat, "dup-seg-b", T0).await;
    let s1 = segment(a.id, "logs", 0, 10);
    ok(cat.commit_segments(std::slice::from_ref(&s1), &[], T0).await, "commit");
    let fresh = segment(a.id, "logs", 50, 60);
    let batch = BatchId::new();
    for again in [s1.clone(), Segment { workspace_id: b.id, ..s1.clone() }] {
        match cat.commit_segments(&[fresh.clone(), again], &[(a.id, batch)], T0).await {
            Err(CatalogError::SegmentExists(id)) => assert_eq!(id, s1.id),
            other => panic!("re-registering a segment: expected SegmentExists, got {other:?}"),
        }
    }
    assert_eq!(ok(cat.list_segments(a.id, &table("logs"), None).await, "list a"), vec![s1]);
    assert_eq!(ok(cat.list_segments(b.id, &table("logs"), None).await, "list b"), vec![]);
    assert_eq!(ok(cat.stored_batches(a.id, &[batch]).await, "stored"), vec![]);
}

/// A segment of a workspace that does not exist is `WorkspaceNotFound`.
pub async fn commit_segments_needs_existing_workspace(cat: &dyn Catalog) {
    let ghost = WorkspaceId::new();
    let s = segment(ghost, "logs", 0, 1);
    match cat.commit_segments(std::slice::from_ref(&s), &[], T0).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("segment of unknown workspace: expected WorkspaceNotFound, got {other:?}"),
    }
    assert_eq!(ok(cat.list_segments(ghost, &table("logs"), None).await, "list"), vec![]);
}

/// With a time range, `list_segments` returns the segments overlapping
/// `[min, max]` (both ends inclusive), ordered by `min_time`.
pub async fn time_range_filters_segments(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "time-range", T0).await;
    let s_0_10 = segment(ws.id, "logs", 0, 10);
    let s_10_20 = segment(ws.id, "logs", 10, 20);
    let s_30_40 = segment(ws.id, "logs", 30, 40);
    let s_50_60 = segment(ws.id, "logs", 50, 60);
    let s_wide = segment(ws.id, "logs", -100, 1_000);
    let other_table = segment(ws.id, "audit", 0, 1_000);
    // Committed out of order, across two commits.
    ok(cat.commit_segments(&[s_50_60.clone(), s_10_20.clone(), other_table], &[], T0).await, "commit");
    ok(cat.commit_segments(&[s_30_40.clone(), s_wide.clone(), s_0_10.clone()], &[], T0).await, "commit");
    let logs = table("logs");
    let list = |range| async move { ids(&ok(cat.list_segments(ws.id, &table("logs"), range).await, "list_segments")) };

    assert_eq!(
        ids(&ok(cat.list_segments(ws.id, &logs, None).await, "list")),
        ids(&[s_wide.clone(), s_0_10.clone(), s_10_20.clone(), s_30_40.clone(), s_50_60.clone()]),
        "no range: all, ordered by min_time"
    );
    // Touching both ends counts as overlapping.
    assert_eq!(
        list(Some((10, 30))).await,
        ids(&[s_wide.clone(), s_0_10.clone(), s_10_20.clone(), s_30_40.clone()])
    );
    // Strictly inside one segment.
    assert_eq!(list(Some((12, 13))).await, ids(&[s_wide.clone(), s_10_20.clone()]));
    // A gap between segments.
    assert_eq!(list(Some((21, 29))).await, vec![s_wide.id]);
    // A single instant at a boundary.
    assert_eq!(list(Some((60, 60))).await, ids(&[s_wide.clone(), s_50_60.clone()]));
    // Entirely before and after everything.
    assert_eq!(list(Some((-1_000, -101))).await, vec![]);
    assert_eq!(list(Some((1_001, 2_000))).await, vec![]);
    // A range covering everything.
    assert_eq!(list(Some((i64::MIN, i64::MAX))).await.len(), 5);
}

/// `list_tables` gives each table with a segment once, sorted, and only for
/// that workspace; a workspace without segments has none.
pub async fn tables_are_listed_per_workspace(cat: &dyn Catalog) {
    let a = new_workspace(cat, "tables-a", T0).await;
    let b = new_workspace(cat, "tables-b", T0).await;
    let empty = new_workspace(cat, "tables-empty", T0).await;
    ok(
        cat.commit_segments(
            &[
                segment(a.id, "syslog", 0, 1),
                segment(a.id, "audit", 0, 1),
                segment(a.id, "syslog", 2, 3),
                segment(a.id, "_internal", 0, 1),
                segment(a.id, "auth_2", 0, 1),
                segment(b.id, "metrics", 0, 1),
            ],
            &[],
            T0,
        )
        .await,
        "commit_segments",
    );
    assert_eq!(
        ok(cat.list_tables(a.id).await, "tables a"),
        vec![table("_internal"), table("audit"), table("auth_2"), table("syslog")]
    );
    assert_eq!(ok(cat.list_tables(b.id).await, "tables b"), vec![table("metrics")]);
    assert_eq!(ok(cat.list_tables(empty.id).await, "tables empty"), vec![]);
    assert_eq!(ok(cat.list_tables(WorkspaceId::new()).await, "tables unknown"), vec![]);
}
