//! The conformance suite every [`Catalog`] implementation must pass.
//!
//! A backend's tests open a fresh, empty catalog and call [`run_all`] with it
//! (as an `Arc<dyn Catalog>`, because [`concurrent_consumers_enroll_once`]
//! and the other concurrency checks share the catalog between tasks);
//! `run_all` returns how many checks ran, so a backend's test can assert
//! that none was skipped. Each check is also public, so a
//! failing one can be run alone. Checks create their own workspaces with
//! unique names and never assume the catalog is empty, so they may run in
//! any order against the same catalog. Every check panics (with a message
//! naming the behaviour) when the backend misbehaves.
//!
//! Concurrency checks spawn tokio tasks; call the suite from a multi-thread
//! runtime (`#[tokio::test(flavor = "multi_thread")]`) for real contention.
//!
//! Only compiled for this crate's tests and with the `conformance` feature.

use crate::{
    AccessFilter, AccessRequest, AccessState, Agent, ApiToken, Case, Catalog, CatalogError, ChangeState,
    ColumnDef, DeletionReason, EnrollmentKey, LateSegment, RollupCommit, Principal, PurgeJob, PurgeState, RedactionCount, RedactionKind, RedactionPolicy, Refusal,
    Result, RetentionChange, RoleBinding, Segment, Workspace, WorkspaceLock, WorkspacePolicy,
};
use custos_model::api::RefusalReason;
use custos_model::{
    AccessRequestId, AgentId, BatchId, CaseId, Category, ChangeId, JobId, Level, PrincipalId, Secret, SegmentId,
    ServiceRole, TableName, TimestampMicros, TokenId, ValueType, WorkspaceId, WorkspaceRole,
};
use std::collections::HashSet;
use std::sync::Arc;

/// A fixed clock for the checks (2024-01-01T00:00:00Z), so results do not
/// depend on the wall clock.
const T0: TimestampMicros = 1_704_067_200_000_000;

/// How many checks [`run_all`] runs.
pub const CHECKS: usize = 91;

/// Run every check against `cat`, which should start empty (but the checks
/// do not rely on it). Returns the number of checks run ([`CHECKS`]).
pub async fn run_all(cat: Arc<dyn Catalog>) -> usize {
    let c: &dyn Catalog = cat.as_ref();
    let mut ran = 0usize;
    macro_rules! run {
        ($($check:ident($arg:expr);)*) => {
            $(
                $check($arg).await;
                ran += 1;
            )*
        };
    }
    run! {
        workspaces_round_trip(c);
        workspace_names_are_unique(c);
        workspaces_are_listed_oldest_first(c);
        lockbox_round_trips_and_can_be_switched(c);
        set_lockbox_on_unknown_workspace_is_workspace_not_found(c);
        new_workspaces_store_everything_unless_created_with_a_policy(c);
        workspace_policy_round_trips_and_touches_no_other_workspace(c);
        policy_of_an_unknown_workspace_is_workspace_not_found(c);
        refusals_accumulate_per_agent_reason_and_category(c);
        refusals_never_cross_workspaces(c);
        refusals_need_an_existing_workspace_and_are_atomic(c);
        commit_ingest_counts_refusals_with_the_batch_all_or_nothing(c);
        refusals_of_zero_events_are_ignored(c);
        redaction_policy_is_the_default_until_set_and_counts_revisions(c);
        redaction_settings_of_an_unknown_workspace_are_workspace_not_found(c);
        redaction_key_is_stored_once_and_never_changes(cat.clone());
        redaction_counts_merge_per_table_kind_and_entity(c);
        redaction_counts_commit_with_their_batch_all_or_nothing(c);
        redaction_counts_never_cross_workspaces(c);
        enrollment_key_needs_existing_workspace(c);
        enrollment_key_is_single_use(c);
        expired_enrollment_key_is_refused(c);
        wrong_enrollment_key_is_refused(c);
        enrollment_keys_enroll_into_their_own_workspace(c);
        concurrent_consumers_enroll_once(cat.clone());
        agents_round_trip(c);
        duplicate_agent_is_refused(c);
        agent_needs_existing_workspace(c);
        agents_are_listed_per_workspace(c);
        renewal_makes_the_new_certificate_current_and_keeps_the_presented_one_until_it_expires(c);
        renewal_from_the_previous_certificate_works_until_it_expires(c);
        renewal_is_refused_for_other_certificates_revoked_and_unknown_agents(c);
        revoking_an_agent_keeps_the_first_time_and_needs_its_workspace(c);
        segments_round_trip(c);
        segments_never_cross_workspaces(c);
        batch_ids_are_per_workspace(c);
        recorded_batch_ids_are_ignored(c);
        stored_batches_handles_many_ids(c);
        commit_segments_is_atomic(c);
        duplicate_segment_is_refused(c);
        commit_segments_needs_existing_workspace(c);
        time_range_filters_segments(c);
        tables_are_listed_per_workspace(c);
        principals_round_trip(c);
        principal_names_are_unique(c);
        principals_are_listed_oldest_first(c);
        tokens_round_trip(c);
        token_lookup_by_hash_finds_it_and_revoke_keeps_the_first_time(c);
        revoking_an_unknown_token_is_token_not_found(c);
        token_needs_existing_principal(c);
        token_hashes_are_unique(c);
        role_grant_is_idempotent_and_revoke_returns_false_the_second_time(c);
        roles_of_only_returns_roles_in_that_workspace(c);
        bindings_are_listed_per_workspace_and_per_principal(c);
        bindings_need_an_existing_workspace_and_principal(c);
        cases_round_trip(c);
        case_needs_existing_workspace(c);
        list_cases_filters_by_workspace_newest_first(c);
        closing_a_closed_case_fails_with_case_closed(c);
        closing_an_unknown_case_is_case_not_found(c);
        concurrent_closers_close_once(cat.clone());
        access_requests_round_trip(c);
        access_request_needs_its_case_in_its_workspace(c);
        only_pending_access_requests_are_created(c);
        approval_stores_grant_expires_at(c);
        access_request_is_decided_only_once(c);
        deciding_an_unknown_request_is_not_found(c);
        malformed_decisions_are_refused_and_change_nothing(c);
        concurrent_deciders_decide_once(cat.clone());
        list_access_requests_filters_by_each_field(c);
        list_access_requests_is_newest_first(c);
        locks_round_trip_and_unlock_returns_the_lock(c);
        plan_and_lock_are_stored_with_the_workspace(c);
        retention_increase_applies_at_once_and_replaces_a_pending_reduction(c);
        pending_reduction_applies_at_its_effective_time(c);
        locked_workspace_refuses_reductions_and_defers_pending_ones(c);
        cancelling_without_a_pending_change_is_no_pending_change(c);
        deleting_segments_records_each_and_leaves_other_workspaces_alone(c);
        locked_workspace_refuses_segment_deletion(c);
        rollup_commits_its_segments_with_the_mark_and_only_forward(c);
        ingest_records_segments_with_rows_before_the_rollup_mark_as_late(c);
        a_rollup_records_raw_segments_committed_while_it_read_as_late(c);
        a_reroll_replaces_rollup_segments_with_deletion_records_unless_locked(c);
        rows_expired_within_sees_retention_deletions_only(c);
        a_purge_rewrite_carries_the_late_record(c);
        segment_indexes_are_kept_per_segment_and_go_with_it(c);
        purge_jobs_move_from_pending_to_running_to_completed(c);
        purge_jobs_are_cancelled_only_while_pending_and_never_created_while_locked(c);
        only_jobs_still_hiding_rows_are_listed_for_queries(c);
        purge_steps_replace_segments_atomically_and_refuse_while_locked(c);
        deleting_a_workspace_tombstones_it_revokes_its_agents_and_frees_its_name(c);
    }
    assert_eq!(ran, CHECKS, "CHECKS is out of date");
    ran
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
        lockbox: true,
        policy: WorkspacePolicy::default(),
        plan: "paid".into(),
        lock: None,
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
        prev_cert_sha256: None,
        prev_cert_not_after: None,
    }
}

/// A certificate hash shaped like a SHA-256 hex digest, unique.
fn cert_hash() -> String {
    format!("{:064x}", AgentId::new().as_uuid().as_u128())
}

fn segment(
    ws: WorkspaceId,
    tbl: &str,
    min_time: TimestampMicros,
    max_time: TimestampMicros,
) -> Segment {
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
            ColumnDef {
                name: "pid".into(),
                ty: ValueType::Int,
            },
            ColumnDef {
                name: "unit".into(),
                ty: ValueType::Str,
            },
        ],
        created_at: T0,
    }
}

fn ids(segs: &[Segment]) -> Vec<SegmentId> {
    segs.iter().map(|s| s.id).collect()
}

// ---------------------------------------------------------------- workspaces

/// A created workspace reads back identically (lockbox on or off, any
/// policy), by id and in the list; an unknown id reads as `None`.
pub async fn workspaces_round_trip(cat: &dyn Catalog) {
    let policies = [
        WorkspacePolicy::default(),
        WorkspacePolicy::with_categories(Level::Security, [Category::Security]),
    ];
    for (lockbox, policy) in [true, false].into_iter().zip(policies) {
        let ws = Workspace {
            id: WorkspaceId::new(),
            name: unique("round trip ünïcode"),
            region: "us-east".into(),
            retention_days: u32::MAX,
            created_at: T0 + 123,
            lockbox,
            policy,
            plan: "paid".into(),
            lock: None,
        };
        ok(cat.create_workspace(&ws).await, "create_workspace");
        assert_eq!(
            ok(cat.get_workspace(ws.id).await, "get_workspace"),
            Some(ws.clone())
        );
        let all = ok(cat.list_workspaces().await, "list_workspaces");
        assert_eq!(
            all.iter().filter(|w| **w == ws).count(),
            1,
            "workspace listed exactly once: {all:?}"
        );
    }
    assert_eq!(
        ok(
            cat.get_workspace(WorkspaceId::new()).await,
            "get_workspace(unknown)"
        ),
        None
    );
}

/// A second workspace with a taken name is refused with
/// `WorkspaceNameTaken`, and the first is left as it was.
pub async fn workspace_names_are_unique(cat: &dyn Catalog) {
    let first = new_workspace(cat, "unique", T0).await;
    let second = Workspace {
        id: WorkspaceId::new(),
        region: "elsewhere".into(),
        ..first.clone()
    };
    match cat.create_workspace(&second).await {
        Err(CatalogError::WorkspaceNameTaken(name)) => assert_eq!(name, first.name),
        other => panic!("duplicate workspace name: expected WorkspaceNameTaken, got {other:?}"),
    }
    assert_eq!(
        ok(cat.get_workspace(second.id).await, "get_workspace"),
        None,
        "refused workspace was stored"
    );
    assert_eq!(
        ok(cat.get_workspace(first.id).await, "get_workspace"),
        Some(first.clone())
    );
    let all = ok(cat.list_workspaces().await, "list_workspaces");
    assert_eq!(all.iter().filter(|w| w.name == first.name).count(), 1);
    // Names are compared exactly: another name still works.
    let other = Workspace {
        id: WorkspaceId::new(),
        name: format!("{}-2", first.name),
        ..first.clone()
    };
    ok(
        cat.create_workspace(&other).await,
        "create_workspace(different name)",
    );
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
    assert_eq!(
        ok(
            cat.consume_enrollment_key(&key.key_hash, T0 + 1).await,
            "first consume"
        ),
        ws.id
    );
    for now in [T0 + 2, T0 + 1] {
        match cat.consume_enrollment_key(&key.key_hash, now).await {
            Err(CatalogError::EnrollmentKeyUsed) => {}
            other => panic!("second use of a key: expected EnrollmentKeyUsed, got {other:?}"),
        }
    }
    // A used key stays used (and reads as used, not expired) after expiry.
    match cat
        .consume_enrollment_key(&key.key_hash, key.expires_at + 1)
        .await
    {
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
    assert_eq!(
        ok(
            cat.consume_enrollment_key(&key.key_hash, expires - 1).await,
            "consume just before expiry"
        ),
        ws.id
    );
}

/// An unknown key hash is `EnrollmentKeyInvalid`, including one that differs
/// from a stored key only by case or a prefix.
pub async fn wrong_enrollment_key_is_refused(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "wrong-key", T0).await;
    let key = enrollment_key(ws.id, T0 + 3_600_000_000);
    ok(cat.add_enrollment_key(&key).await, "add_enrollment_key");
    let upper = key.key_hash.to_uppercase();
    let prefix = &key.key_hash[..32];
    for wrong in [
        format!("{:064x}", 7u8),
        upper,
        prefix.to_string(),
        String::new(),
        "%".into(),
    ] {
        match cat.consume_enrollment_key(&wrong, T0).await {
            Err(CatalogError::EnrollmentKeyInvalid) => {}
            other => panic!("wrong key {wrong:?}: expected EnrollmentKeyInvalid, got {other:?}"),
        }
    }
    // The wrong attempts did not use up the real key.
    assert_eq!(
        ok(
            cat.consume_enrollment_key(&key.key_hash, T0).await,
            "consume real key"
        ),
        ws.id
    );
}

/// Each key enrolls into the workspace it was issued for.
pub async fn enrollment_keys_enroll_into_their_own_workspace(cat: &dyn Catalog) {
    let a = new_workspace(cat, "keys-a", T0).await;
    let b = new_workspace(cat, "keys-b", T0).await;
    let ka = enrollment_key(a.id, T0 + 1_000_000);
    let kb = enrollment_key(b.id, T0 + 1_000_000);
    ok(cat.add_enrollment_key(&ka).await, "add key a");
    ok(cat.add_enrollment_key(&kb).await, "add key b");
    assert_eq!(
        ok(
            cat.consume_enrollment_key(&kb.key_hash, T0).await,
            "consume b"
        ),
        b.id
    );
    assert_eq!(
        ok(
            cat.consume_enrollment_key(&ka.key_hash, T0).await,
            "consume a"
        ),
        a.id
    );
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
        assert_eq!(
            won, 1,
            "round {round}: {won} of {CONSUMERS} concurrent consumers enrolled"
        );
        assert_eq!(
            used,
            CONSUMERS - 1,
            "round {round}: the others must see EnrollmentKeyUsed"
        );
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
    earlier.prev_cert_sha256 = Some("cd".repeat(32));
    earlier.prev_cert_not_after = Some(T0 + 77);
    ok(cat.add_agent(&later).await, "add_agent");
    ok(cat.add_agent(&earlier).await, "add_agent");
    assert_eq!(
        ok(cat.get_agent(later.id).await, "get_agent"),
        Some(later.clone())
    );
    assert_eq!(
        ok(cat.get_agent(earlier.id).await, "get_agent"),
        Some(earlier.clone())
    );
    assert_eq!(
        ok(cat.get_agent(AgentId::new()).await, "get_agent(unknown)"),
        None
    );
    assert_eq!(
        ok(cat.list_agents(ws.id).await, "list_agents"),
        vec![earlier, later]
    );
}

/// Registering an agent id twice is `AgentExists`; the first stays.
pub async fn duplicate_agent_is_refused(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "dup-agent", T0).await;
    let other_ws = new_workspace(cat, "dup-agent-other", T0).await;
    let first = agent(ws.id, "first", T0);
    ok(cat.add_agent(&first).await, "add_agent");
    for dup in [
        Agent {
            hostname: "impostor".into(),
            ..first.clone()
        },
        Agent {
            workspace_id: other_ws.id,
            ..first.clone()
        },
    ] {
        match cat.add_agent(&dup).await {
            Err(CatalogError::AgentExists(id)) => assert_eq!(id, first.id),
            other => panic!("duplicate agent: expected AgentExists, got {other:?}"),
        }
    }
    assert_eq!(
        ok(cat.get_agent(first.id).await, "get_agent"),
        Some(first.clone())
    );
    assert_eq!(ok(cat.list_agents(ws.id).await, "list_agents"), vec![first]);
    assert_eq!(
        ok(cat.list_agents(other_ws.id).await, "list_agents"),
        vec![]
    );
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
    assert_eq!(
        ok(cat.list_agents(empty.id).await, "list_agents empty"),
        vec![]
    );
    assert_eq!(
        ok(
            cat.list_agents(WorkspaceId::new()).await,
            "list_agents unknown"
        ),
        vec![]
    );
}

/// A renewal presented with the current certificate makes the new one
/// current and the presented one previous, with its own expiry: both are
/// accepted until the previous one expires; the agent's other fields stay.
pub async fn renewal_makes_the_new_certificate_current_and_keeps_the_presented_one_until_it_expires(
    cat: &dyn Catalog,
) {
    let ws = new_workspace(cat, "renew", T0).await;
    let a = agent(ws.id, "renewing", T0);
    ok(cat.add_agent(&a).await, "add_agent");
    let new = cert_hash();
    let new_not_after = a.cert_not_after + 1_000;
    let renewed = ok(
        cat.renew_agent_cert(a.id, &a.cert_sha256, &new, new_not_after, T0 + 10)
            .await,
        "renew_agent_cert",
    );
    let expected = Agent {
        cert_sha256: new.clone(),
        cert_not_after: new_not_after,
        prev_cert_sha256: Some(a.cert_sha256.clone()),
        prev_cert_not_after: Some(a.cert_not_after),
        ..a.clone()
    };
    assert_eq!(renewed, expected, "renewal stored something else");
    assert_eq!(
        ok(cat.get_agent(a.id).await, "get_agent"),
        Some(expected.clone())
    );
    assert!(renewed.accepts(&new, T0 + 10), "new certificate refused");
    assert!(
        renewed.accepts(&a.cert_sha256, a.cert_not_after - 1),
        "previous certificate refused before its expiry"
    );
    assert!(
        !renewed.accepts(&a.cert_sha256, a.cert_not_after),
        "previous certificate accepted at its expiry"
    );
    // Renewing again from the new certificate drops the oldest one.
    let newer = cert_hash();
    let again = ok(
        cat.renew_agent_cert(a.id, &new, &newer, new_not_after + 1, T0 + 20)
            .await,
        "second renew_agent_cert",
    );
    assert_eq!(again.cert_sha256, newer);
    assert_eq!(again.prev_cert_sha256.as_deref(), Some(new.as_str()));
    assert_eq!(again.prev_cert_not_after, Some(new_not_after));
    assert!(!again.accepts(&a.cert_sha256, T0 + 20));
}

/// An agent that crashed after the server signed a new certificate but
/// before storing it still holds the previous one: renewing with it works
/// (until it expires) and the lost certificate is no longer accepted.
pub async fn renewal_from_the_previous_certificate_works_until_it_expires(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "renew-prev", T0).await;
    let a = agent(ws.id, "crashed", T0);
    ok(cat.add_agent(&a).await, "add_agent");
    let lost = cert_hash();
    ok(
        cat.renew_agent_cert(a.id, &a.cert_sha256, &lost, a.cert_not_after + 5, T0 + 1)
            .await,
        "first renewal",
    );
    let kept = cert_hash();
    let renewed = ok(
        cat.renew_agent_cert(a.id, &a.cert_sha256, &kept, a.cert_not_after + 9, T0 + 2)
            .await,
        "renewal from the previous certificate",
    );
    assert_eq!(renewed.cert_sha256, kept);
    assert_eq!(
        renewed.prev_cert_sha256.as_deref(),
        Some(a.cert_sha256.as_str())
    );
    assert_eq!(
        renewed.prev_cert_not_after,
        Some(a.cert_not_after),
        "the previous certificate's expiry must be its own, not the lost one's"
    );
    assert!(
        !renewed.accepts(&lost, T0 + 2),
        "the lost certificate is still accepted"
    );
    // At and after the previous certificate's expiry it cannot renew.
    let late = cert_hash();
    match cat
        .renew_agent_cert(a.id, &a.cert_sha256, &late, a.cert_not_after + 99, a.cert_not_after)
        .await
    {
        Err(CatalogError::AgentCertificateMismatch(id)) => assert_eq!(id, a.id),
        other => panic!("renewal with an expired previous certificate: expected AgentCertificateMismatch, got {other:?}"),
    }
    assert_eq!(ok(cat.get_agent(a.id).await, "get_agent"), Some(renewed));
}

/// A certificate that is neither current nor previous, a revoked agent and
/// an unknown agent cannot renew; nothing changes.
pub async fn renewal_is_refused_for_other_certificates_revoked_and_unknown_agents(
    cat: &dyn Catalog,
) {
    let ws = new_workspace(cat, "renew-refused", T0).await;
    let a = agent(ws.id, "renew-refused", T0);
    ok(cat.add_agent(&a).await, "add_agent");
    match cat
        .renew_agent_cert(a.id, &cert_hash(), &cert_hash(), T0 + 5, T0 + 1)
        .await
    {
        Err(CatalogError::AgentCertificateMismatch(id)) => assert_eq!(id, a.id),
        other => panic!(
            "renewal with a foreign certificate: expected AgentCertificateMismatch, got {other:?}"
        ),
    }
    assert_eq!(ok(cat.get_agent(a.id).await, "get_agent"), Some(a.clone()));
    let revoked = ok(cat.revoke_agent(ws.id, a.id, T0 + 2).await, "revoke_agent");
    match cat
        .renew_agent_cert(a.id, &a.cert_sha256, &cert_hash(), T0 + 5, T0 + 3)
        .await
    {
        Err(CatalogError::AgentRevoked(id)) => assert_eq!(id, a.id),
        other => panic!("renewal of a revoked agent: expected AgentRevoked, got {other:?}"),
    }
    assert_eq!(ok(cat.get_agent(a.id).await, "get_agent"), Some(revoked));
    let ghost = AgentId::new();
    match cat
        .renew_agent_cert(ghost, &a.cert_sha256, &cert_hash(), T0 + 5, T0 + 3)
        .await
    {
        Err(CatalogError::AgentNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("renewal of an unknown agent: expected AgentNotFound, got {other:?}"),
    }
}

/// Revocation is immediate ([`Agent::accepts`] refuses every certificate,
/// the previous one too), idempotent (the first time stays), and only
/// through the agent's own workspace: another workspace's id is
/// `AgentNotFound` and changes nothing.
pub async fn revoking_an_agent_keeps_the_first_time_and_needs_its_workspace(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "revoke", T0).await;
    let other = new_workspace(cat, "revoke-other", T0).await;
    let a = agent(ws.id, "to-revoke", T0);
    ok(cat.add_agent(&a).await, "add_agent");
    let renewed = ok(
        cat.renew_agent_cert(a.id, &a.cert_sha256, &cert_hash(), a.cert_not_after + 1, T0)
            .await,
        "renew_agent_cert",
    );
    match cat.revoke_agent(other.id, a.id, T0 + 1).await {
        Err(CatalogError::AgentNotFound(id)) => assert_eq!(id, a.id),
        other => panic!("revoke through another workspace: expected AgentNotFound, got {other:?}"),
    }
    assert_eq!(
        ok(cat.get_agent(a.id).await, "get_agent"),
        Some(renewed.clone()),
        "a refused revocation changed the agent"
    );
    let revoked = ok(cat.revoke_agent(ws.id, a.id, T0 + 5).await, "revoke_agent");
    assert_eq!(
        revoked,
        Agent {
            revoked_at: Some(T0 + 5),
            ..renewed.clone()
        }
    );
    assert!(!revoked.accepts(&renewed.cert_sha256, T0 + 6));
    assert!(
        !revoked.accepts(&a.cert_sha256, T0 + 6),
        "previous certificate accepted after revocation"
    );
    let again = ok(
        cat.revoke_agent(ws.id, a.id, T0 + 9).await,
        "revoke_agent again",
    );
    assert_eq!(
        again.revoked_at,
        Some(T0 + 5),
        "a second revocation moved the time"
    );
    assert_eq!(
        ok(cat.list_agents(ws.id).await, "list_agents"),
        vec![revoked]
    );
    let ghost = AgentId::new();
    match cat.revoke_agent(ws.id, ghost, T0).await {
        Err(CatalogError::AgentNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("revoke of an unknown agent: expected AgentNotFound, got {other:?}"),
    }
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
    s2.columns.push(ColumnDef {
        name: "ok".into(),
        ty: ValueType::Bool,
    });
    s2.columns.push(ColumnDef {
        name: "load".into(),
        ty: ValueType::Float,
    });
    let batches = [(ws.id, BatchId::new()), (ws.id, BatchId::new())];
    ok(
        cat.commit_segments(&[s2.clone(), s1.clone()], &batches, T0 + 20)
            .await,
        "commit_segments",
    );
    assert_eq!(
        ok(
            cat.list_segments(ws.id, &s1.table, None).await,
            "list_segments"
        ),
        vec![s1, s2]
    );
    let wanted: Vec<BatchId> = batches.iter().map(|b| b.1).collect();
    assert_eq!(
        ok(cat.stored_batches(ws.id, &wanted).await, "stored_batches"),
        wanted
    );
    // An empty commit is fine and changes nothing.
    ok(
        cat.commit_segments(&[], &[], T0).await,
        "empty commit_segments",
    );
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
    ok(
        cat.commit_segments(&[sa.clone(), sb.clone(), sb2.clone()], &[], T0)
            .await,
        "commit_segments",
    );
    let logs = table("logs");
    assert_eq!(
        ok(cat.list_segments(a.id, &logs, None).await, "list a"),
        vec![sa.clone()]
    );
    assert_eq!(
        ok(
            cat.list_segments(a.id, &logs, Some((0, 100))).await,
            "list a ranged"
        ),
        vec![sa]
    );
    assert_eq!(
        ok(cat.list_segments(b.id, &logs, None).await, "list b"),
        vec![sb]
    );
    assert_eq!(
        ok(
            cat.list_segments(a.id, &table("metrics"), None).await,
            "list a metrics"
        ),
        vec![]
    );
    assert_eq!(
        ok(
            cat.list_segments(WorkspaceId::new(), &logs, None).await,
            "list unknown"
        ),
        vec![]
    );
    assert_eq!(ok(cat.list_tables(a.id).await, "tables a"), vec![logs]);
}

/// A batch id recorded for one workspace is not "stored" for another, and
/// the same batch id may be recorded for both.
pub async fn batch_ids_are_per_workspace(cat: &dyn Catalog) {
    let a = new_workspace(cat, "batch-a", T0).await;
    let b = new_workspace(cat, "batch-b", T0).await;
    let (shared, only_a, never) = (BatchId::new(), BatchId::new(), BatchId::new());
    ok(
        cat.commit_segments(
            &[segment(a.id, "logs", 0, 1)],
            &[(a.id, shared), (a.id, only_a)],
            T0,
        )
        .await,
        "commit a",
    );
    assert_eq!(
        ok(
            cat.stored_batches(a.id, &[never, only_a, shared]).await,
            "stored a"
        ),
        vec![only_a, shared]
    );
    assert_eq!(
        ok(
            cat.stored_batches(b.id, &[shared, only_a, never]).await,
            "stored b"
        ),
        vec![]
    );
    ok(
        cat.commit_segments(&[], &[(b.id, shared)], T0).await,
        "commit b",
    );
    assert_eq!(
        ok(
            cat.stored_batches(b.id, &[shared, only_a]).await,
            "stored b"
        ),
        vec![shared]
    );
    assert_eq!(
        ok(cat.stored_batches(a.id, &[]).await, "stored a, no ids"),
        vec![]
    );
}

/// Committing a batch id that is already recorded is not an error, and
/// the segments of that commit are still registered.
pub async fn recorded_batch_ids_are_ignored(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "batch-replay", T0).await;
    let (old, new) = (BatchId::new(), BatchId::new());
    let s1 = segment(ws.id, "logs", 0, 10);
    ok(
        cat.commit_segments(std::slice::from_ref(&s1), &[(ws.id, old)], T0)
            .await,
        "first commit",
    );
    let s2 = segment(ws.id, "logs", 20, 30);
    ok(
        cat.commit_segments(
            std::slice::from_ref(&s2),
            &[(ws.id, old), (ws.id, new), (ws.id, new)],
            T0 + 1,
        )
        .await,
        "commit with an already recorded batch id",
    );
    assert_eq!(
        ok(cat.list_segments(ws.id, &table("logs"), None).await, "list"),
        vec![s1, s2]
    );
    assert_eq!(
        ok(cat.stored_batches(ws.id, &[old, new, old]).await, "stored"),
        vec![old, new]
    );
}

/// `stored_batches` answers exactly for many ids at once (more than fit one
/// bind list), returning the stored ones in the order asked.
pub async fn stored_batches_handles_many_ids(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "many-batches", T0).await;
    let all: Vec<BatchId> = (0..2_345).map(|_| BatchId::new()).collect();
    let stored: Vec<BatchId> = all
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(_, b)| b)
        .collect();
    let pairs: Vec<(WorkspaceId, BatchId)> = stored.iter().map(|b| (ws.id, *b)).collect();
    ok(
        cat.commit_segments(&[], &pairs, T0).await,
        "commit many batch ids",
    );
    let got = ok(cat.stored_batches(ws.id, &all).await, "stored_batches");
    assert_eq!(got.len(), stored.len());
    assert_eq!(
        got, stored,
        "stored_batches must return exactly the stored ids, in the order asked"
    );
    let mut reversed = all.clone();
    reversed.reverse();
    let got: HashSet<BatchId> = ok(cat.stored_batches(ws.id, &reversed).await, "stored_batches")
        .into_iter()
        .collect();
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
    let dup = Segment {
        path: "elsewhere.seg".into(),
        ..s1.clone()
    };
    let batch = BatchId::new();
    // A duplicate segment id inside the same commit, after other rows.
    match cat
        .commit_segments(
            &[s1.clone(), s2.clone(), s3.clone(), dup],
            &[(ws.id, batch)],
            T0,
        )
        .await
    {
        Err(CatalogError::SegmentExists(id)) => assert_eq!(id, s1.id),
        other => {
            panic!("commit with a duplicate segment id: expected SegmentExists, got {other:?}")
        }
    }
    assert_eq!(
        ok(cat.list_segments(ws.id, &logs, None).await, "list"),
        vec![],
        "partial segments left behind"
    );
    assert_eq!(
        ok(cat.list_tables(ws.id).await, "tables"),
        vec![],
        "partial segments left behind"
    );
    assert_eq!(
        ok(cat.stored_batches(ws.id, &[batch]).await, "stored"),
        vec![],
        "batch id of a failed commit recorded"
    );

    // A batch id for a workspace that does not exist, after good rows.
    let ghost = WorkspaceId::new();
    match cat
        .commit_segments(
            std::slice::from_ref(&s1),
            &[(ws.id, batch), (ghost, BatchId::new())],
            T0,
        )
        .await
    {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => {
            panic!("commit with an unknown workspace: expected WorkspaceNotFound, got {other:?}")
        }
    }
    assert_eq!(
        ok(cat.list_segments(ws.id, &logs, None).await, "list"),
        vec![],
        "partial segments left behind"
    );
    assert_eq!(
        ok(cat.stored_batches(ws.id, &[batch]).await, "stored"),
        vec![],
        "batch id of a failed commit recorded"
    );

    // The same commit without the bad rows then goes through.
    ok(
        cat.commit_segments(&[s1.clone(), s2.clone()], &[(ws.id, batch)], T0)
            .await,
        "retry",
    );
    assert_eq!(
        ok(cat.list_segments(ws.id, &logs, None).await, "list"),
        vec![s1, s2]
    );
    assert_eq!(
        ok(cat.stored_batches(ws.id, &[batch]).await, "stored"),
        vec![batch]
    );
}

/// A segment id already registered (by an earlier commit, in any
/// workspace) is `SegmentExists`, and the rest of that commit is dropped.
pub async fn duplicate_segment_is_refused(cat: &dyn Catalog) {
    let a = new_workspace(cat, "dup-seg-a", T0).await;
    let b = new_workspace(cat, "dup-seg-b", T0).await;
    let s1 = segment(a.id, "logs", 0, 10);
    ok(
        cat.commit_segments(std::slice::from_ref(&s1), &[], T0)
            .await,
        "commit",
    );
    let fresh = segment(a.id, "logs", 50, 60);
    let batch = BatchId::new();
    for again in [
        s1.clone(),
        Segment {
            workspace_id: b.id,
            ..s1.clone()
        },
    ] {
        match cat
            .commit_segments(&[fresh.clone(), again], &[(a.id, batch)], T0)
            .await
        {
            Err(CatalogError::SegmentExists(id)) => assert_eq!(id, s1.id),
            other => panic!("re-registering a segment: expected SegmentExists, got {other:?}"),
        }
    }
    assert_eq!(
        ok(
            cat.list_segments(a.id, &table("logs"), None).await,
            "list a"
        ),
        vec![s1]
    );
    assert_eq!(
        ok(
            cat.list_segments(b.id, &table("logs"), None).await,
            "list b"
        ),
        vec![]
    );
    assert_eq!(
        ok(cat.stored_batches(a.id, &[batch]).await, "stored"),
        vec![]
    );
}

/// A segment of a workspace that does not exist is `WorkspaceNotFound`.
pub async fn commit_segments_needs_existing_workspace(cat: &dyn Catalog) {
    let ghost = WorkspaceId::new();
    let s = segment(ghost, "logs", 0, 1);
    match cat.commit_segments(std::slice::from_ref(&s), &[], T0).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("segment of unknown workspace: expected WorkspaceNotFound, got {other:?}"),
    }
    assert_eq!(
        ok(cat.list_segments(ghost, &table("logs"), None).await, "list"),
        vec![]
    );
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
    ok(
        cat.commit_segments(&[s_50_60.clone(), s_10_20.clone(), other_table], &[], T0)
            .await,
        "commit",
    );
    ok(
        cat.commit_segments(&[s_30_40.clone(), s_wide.clone(), s_0_10.clone()], &[], T0)
            .await,
        "commit",
    );
    let logs = table("logs");
    let list = |range| async move {
        ids(&ok(
            cat.list_segments(ws.id, &table("logs"), range).await,
            "list_segments",
        ))
    };

    assert_eq!(
        ids(&ok(cat.list_segments(ws.id, &logs, None).await, "list")),
        ids(&[
            s_wide.clone(),
            s_0_10.clone(),
            s_10_20.clone(),
            s_30_40.clone(),
            s_50_60.clone()
        ]),
        "no range: all, ordered by min_time"
    );
    // Touching both ends counts as overlapping.
    assert_eq!(
        list(Some((10, 30))).await,
        ids(&[
            s_wide.clone(),
            s_0_10.clone(),
            s_10_20.clone(),
            s_30_40.clone()
        ])
    );
    // Strictly inside one segment.
    assert_eq!(
        list(Some((12, 13))).await,
        ids(&[s_wide.clone(), s_10_20.clone()])
    );
    // A gap between segments.
    assert_eq!(list(Some((21, 29))).await, vec![s_wide.id]);
    // A single instant at a boundary.
    assert_eq!(
        list(Some((60, 60))).await,
        ids(&[s_wide.clone(), s_50_60.clone()])
    );
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
        vec![
            table("_internal"),
            table("audit"),
            table("auth_2"),
            table("syslog")
        ]
    );
    assert_eq!(
        ok(cat.list_tables(b.id).await, "tables b"),
        vec![table("metrics")]
    );
    assert_eq!(ok(cat.list_tables(empty.id).await, "tables empty"), vec![]);
    assert_eq!(
        ok(cat.list_tables(WorkspaceId::new()).await, "tables unknown"),
        vec![]
    );
}

// ---------------------------------------------------------------- lockbox

/// A workspace created with the lockbox on (the default callers use) reads
/// back on; `set_lockbox` switches it off and on again, idempotently, and
/// touches no other workspace.
pub async fn lockbox_round_trips_and_can_be_switched(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "lockbox", T0).await;
    let other = new_workspace(cat, "lockbox-other", T0).await;
    let lockbox_of = |id| async move {
        match ok(cat.get_workspace(id).await, "get_workspace") {
            Some(w) => w.lockbox,
            None => panic!("workspace {id} vanished"),
        }
    };
    assert!(
        lockbox_of(ws.id).await,
        "lockbox created on must read back on"
    );
    for on in [false, false, true, true, false] {
        ok(cat.set_lockbox(ws.id, on).await, "set_lockbox");
        assert_eq!(
            lockbox_of(ws.id).await,
            on,
            "set_lockbox({on}) did not stick"
        );
        let listed = ok(cat.list_workspaces().await, "list_workspaces");
        match listed.iter().find(|w| w.id == ws.id) {
            Some(w) => assert_eq!(
                w,
                &Workspace {
                    lockbox: on,
                    ..ws.clone()
                },
                "only lockbox may change"
            ),
            None => panic!("workspace missing from list_workspaces"),
        }
        assert!(
            lockbox_of(other.id).await,
            "set_lockbox changed another workspace"
        );
    }
}

/// `set_lockbox` on a workspace that does not exist is `WorkspaceNotFound`
/// (and creates nothing).
pub async fn set_lockbox_on_unknown_workspace_is_workspace_not_found(cat: &dyn Catalog) {
    let ghost = WorkspaceId::new();
    for on in [true, false] {
        match cat.set_lockbox(ghost, on).await {
            Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
            other => panic!(
                "set_lockbox on unknown workspace: expected WorkspaceNotFound, got {other:?}"
            ),
        }
    }
    assert_eq!(ok(cat.get_workspace(ghost).await, "get_workspace"), None);
}

// ---------------------------------------------------------------- ingest policy and refusals

fn policy_of(w: &Option<Workspace>) -> WorkspacePolicy {
    match w {
        Some(w) => w.policy.clone(),
        None => panic!("workspace vanished"),
    }
}

/// A workspace created with the default policy stores every level and
/// category; one created with a policy reads it back, by
/// `workspace_policy` and in `get_workspace`.
pub async fn new_workspaces_store_everything_unless_created_with_a_policy(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "policy-default", T0).await;
    let p = ok(cat.workspace_policy(ws.id).await, "workspace_policy");
    assert_eq!(p, WorkspacePolicy::default());
    assert_eq!(p.max_level, Level::Full);
    assert!(Category::ALL.iter().all(|c| p.allows_category(*c)));
    let strict = Workspace {
        id: WorkspaceId::new(),
        name: unique("policy-created"),
        policy: WorkspacePolicy::with_categories(Level::Basic, [Category::Health, Category::Inventory]),
        ..ws.clone()
    };
    ok(cat.create_workspace(&strict).await, "create_workspace(policy)");
    assert_eq!(ok(cat.workspace_policy(strict.id).await, "workspace_policy"), strict.policy);
    assert_eq!(policy_of(&ok(cat.get_workspace(strict.id).await, "get")), strict.policy);
}

/// `set_workspace_policy` replaces the policy (level, a subset of
/// categories, no category at all, back to all) and changes nothing else,
/// in no other workspace.
pub async fn workspace_policy_round_trips_and_touches_no_other_workspace(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "policy", T0).await;
    let other = new_workspace(cat, "policy-other", T0).await;
    let policies = [
        WorkspacePolicy::with_categories(Level::Enhanced, [Category::Logs, Category::Security]),
        WorkspacePolicy { max_level: Level::Security, categories: Some(Default::default()) },
        WorkspacePolicy::with_categories(Level::Basic, Category::ALL),
        WorkspacePolicy::with_categories(Level::Full, [Category::Crash]),
        WorkspacePolicy::default(),
    ];
    for p in policies {
        ok(cat.set_workspace_policy(ws.id, &p).await, "set_workspace_policy");
        assert_eq!(ok(cat.workspace_policy(ws.id).await, "workspace_policy"), p);
        assert_eq!(
            ok(cat.get_workspace(ws.id).await, "get_workspace"),
            Some(Workspace { policy: p.clone(), ..ws.clone() }),
            "only the policy may change"
        );
        assert_eq!(
            ok(cat.workspace_policy(other.id).await, "workspace_policy(other)"),
            WorkspacePolicy::default(),
            "set_workspace_policy changed another workspace"
        );
    }
    // Naming every category is "all".
    assert_eq!(WorkspacePolicy::with_categories(Level::Basic, Category::ALL).categories, None);
}

/// Reading or setting the policy of a workspace that does not exist is
/// `WorkspaceNotFound`, and creates nothing.
pub async fn policy_of_an_unknown_workspace_is_workspace_not_found(cat: &dyn Catalog) {
    let ghost = WorkspaceId::new();
    match cat.workspace_policy(ghost).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("workspace_policy(unknown): expected WorkspaceNotFound, got {other:?}"),
    }
    match cat.set_workspace_policy(ghost, &WorkspacePolicy::default()).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("set_workspace_policy(unknown): expected WorkspaceNotFound, got {other:?}"),
    }
    assert_eq!(ok(cat.get_workspace(ghost).await, "get_workspace"), None);
}

fn refusal(ws: WorkspaceId, agent: AgentId, reason: RefusalReason, category: Category, events: u64, at: TimestampMicros) -> Refusal {
    Refusal { workspace_id: ws, agent_id: agent, reason, category, events, first_at: at, last_at: at }
}

/// Refusals of the same (agent, reason, category) are summed, keeping the
/// earliest and latest times; different keys are counted apart; the list is
/// ordered by agent, reason and category.
pub async fn refusals_accumulate_per_agent_reason_and_category(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "refusals", T0).await;
    assert_eq!(ok(cat.list_refusals(ws.id).await, "list_refusals"), vec![]);
    let (a1, a2) = (AgentId::new(), AgentId::new());
    ok(
        cat.add_refusals(&[
            refusal(ws.id, a1, RefusalReason::Level, Category::Logs, 3, T0 + 50),
            refusal(ws.id, a1, RefusalReason::Category, Category::Crash, 1, T0 + 50),
            refusal(ws.id, a2, RefusalReason::Schema, Category::Performance, 2, T0 + 60),
        ])
        .await,
        "add_refusals",
    );
    // Later and earlier additions to the same key; the same key twice in one call.
    ok(
        cat.add_refusals(&[
            refusal(ws.id, a1, RefusalReason::Level, Category::Logs, 4, T0 + 90),
            refusal(ws.id, a1, RefusalReason::Level, Category::Logs, 1, T0 + 10),
        ])
        .await,
        "add_refusals",
    );
    let got = ok(cat.list_refusals(ws.id).await, "list_refusals");
    let mut want = vec![
        Refusal { events: 8, first_at: T0 + 10, last_at: T0 + 90, ..refusal(ws.id, a1, RefusalReason::Level, Category::Logs, 0, 0) },
        refusal(ws.id, a1, RefusalReason::Category, Category::Crash, 1, T0 + 50),
        refusal(ws.id, a2, RefusalReason::Schema, Category::Performance, 2, T0 + 60),
    ];
    want.sort_by_key(|r| (r.agent_id, r.reason, r.category));
    assert_eq!(got, want);
}

/// A workspace's refusals are never listed for another workspace.
pub async fn refusals_never_cross_workspaces(cat: &dyn Catalog) {
    let a = new_workspace(cat, "refusals-a", T0).await;
    let b = new_workspace(cat, "refusals-b", T0).await;
    let agent = AgentId::new();
    ok(cat.add_refusals(&[refusal(a.id, agent, RefusalReason::Level, Category::Logs, 5, T0)]).await, "add");
    assert_eq!(ok(cat.list_refusals(b.id).await, "list b"), vec![]);
    ok(cat.add_refusals(&[refusal(b.id, agent, RefusalReason::Level, Category::Logs, 2, T0)]).await, "add");
    let la = ok(cat.list_refusals(a.id).await, "list a");
    let lb = ok(cat.list_refusals(b.id).await, "list b");
    assert_eq!(la.len(), 1);
    assert_eq!(lb.len(), 1);
    assert_eq!((la[0].workspace_id, la[0].events), (a.id, 5));
    assert_eq!((lb[0].workspace_id, lb[0].events), (b.id, 2));
    assert_eq!(ok(cat.list_refusals(WorkspaceId::new()).await, "list ghost"), vec![]);
}

/// Refusals for a workspace that does not exist are `WorkspaceNotFound`,
/// and none of the same call is added.
pub async fn refusals_need_an_existing_workspace_and_are_atomic(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "refusals-atomic", T0).await;
    let ghost = WorkspaceId::new();
    let agent = AgentId::new();
    match cat
        .add_refusals(&[
            refusal(ws.id, agent, RefusalReason::Level, Category::Logs, 1, T0),
            refusal(ghost, agent, RefusalReason::Level, Category::Logs, 1, T0),
        ])
        .await
    {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("add_refusals(unknown workspace): expected WorkspaceNotFound, got {other:?}"),
    }
    assert_eq!(ok(cat.list_refusals(ws.id).await, "list"), vec![], "part of a failed call was added");
}

/// `commit_ingest` records segments, batch ids and refusals in one
/// transaction: a failing commit adds no refusal, a good one adds them
/// with its batch id.
pub async fn commit_ingest_counts_refusals_with_the_batch_all_or_nothing(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "commit-ingest", T0).await;
    let agent = AgentId::new();
    let s1 = segment(ws.id, "logs", 0, 10);
    let dup = Segment { path: "other.seg".into(), ..s1.clone() };
    let batch = BatchId::new();
    let r = refusal(ws.id, agent, RefusalReason::Category, Category::Crash, 7, T0);
    match cat.commit_ingest(&[s1.clone(), dup], &[(ws.id, batch)], std::slice::from_ref(&r), T0).await {
        Err(CatalogError::SegmentExists(id)) => assert_eq!(id, s1.id),
        other => panic!("commit_ingest with a duplicate segment: expected SegmentExists, got {other:?}"),
    }
    assert_eq!(ok(cat.list_refusals(ws.id).await, "list"), vec![], "refusals of a failed commit counted");
    assert_eq!(ok(cat.stored_batches(ws.id, &[batch]).await, "stored"), vec![]);
    ok(cat.commit_ingest(std::slice::from_ref(&s1), &[(ws.id, batch)], std::slice::from_ref(&r), T0).await, "commit_ingest");
    assert_eq!(ok(cat.list_refusals(ws.id).await, "list"), vec![r.clone()]);
    assert_eq!(ok(cat.stored_batches(ws.id, &[batch]).await, "stored"), vec![batch]);
    // A batch whose every event was refused: no segment, but its id and counts.
    let all_refused = BatchId::new();
    ok(cat.commit_ingest(&[], &[(ws.id, all_refused)], std::slice::from_ref(&r), T0 + 5).await, "commit_ingest(no segments)");
    assert_eq!(ok(cat.stored_batches(ws.id, &[all_refused]).await, "stored"), vec![all_refused]);
    let got = ok(cat.list_refusals(ws.id).await, "list");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].events, got[0].first_at, got[0].last_at), (14, T0, T0));
}

/// An entry of 0 events adds nothing (and is not an error).
pub async fn refusals_of_zero_events_are_ignored(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "refusals-zero", T0).await;
    ok(cat.add_refusals(&[refusal(ws.id, AgentId::new(), RefusalReason::Schema, Category::Logs, 0, T0)]).await, "add");
    assert_eq!(ok(cat.list_refusals(ws.id).await, "list"), vec![]);
    ok(cat.add_refusals(&[]).await, "add(nothing)");
}

// ---------------------------------------------------------------- redaction

fn redaction(ws: WorkspaceId, tbl: &str, kind: RedactionKind, entity: &str, count: u64, at: TimestampMicros) -> RedactionCount {
    RedactionCount { workspace_id: ws, table: table(tbl), kind, entity: entity.into(), count, first_at: at, last_at: at }
}

/// A new workspace has the default redaction policy (no text, revision 0);
/// each set stores the text (or `None`, back to the default) and increments
/// the revision; other workspaces are untouched.
pub async fn redaction_policy_is_the_default_until_set_and_counts_revisions(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "redaction-policy", T0).await;
    let other = new_workspace(cat, "redaction-policy-other", T0).await;
    assert_eq!(ok(cat.redaction_policy(ws.id).await, "redaction_policy"), RedactionPolicy::default());
    let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
    let text = "[operators]\nCREDIT_CARD = \"drop_event\"\n";
    let set = ok(cat.set_redaction_policy(ws.id, Some(text), alice, T0 + 1).await, "set");
    let want = RedactionPolicy { toml: Some(text.into()), revision: 1, updated_at: Some(T0 + 1), updated_by: Some(alice) };
    assert_eq!(set, want);
    assert_eq!(ok(cat.redaction_policy(ws.id).await, "redaction_policy"), want);
    let reset = ok(cat.set_redaction_policy(ws.id, None, bob, T0 + 2).await, "reset");
    assert_eq!(reset, RedactionPolicy { toml: None, revision: 2, updated_at: Some(T0 + 2), updated_by: Some(bob) });
    assert_eq!(ok(cat.redaction_policy(ws.id).await, "redaction_policy"), reset);
    assert_eq!(ok(cat.redaction_policy(other.id).await, "other"), RedactionPolicy::default());
    // Setting the key does not change the policy or its revision.
    ok(cat.redaction_key(ws.id, Secret::new([1; 32])).await, "redaction_key");
    assert_eq!(ok(cat.redaction_policy(ws.id).await, "redaction_policy"), reset);
}

/// Reading or setting the policy, the key or the counts of a workspace that
/// does not exist is `WorkspaceNotFound` (listing counts is empty).
pub async fn redaction_settings_of_an_unknown_workspace_are_workspace_not_found(cat: &dyn Catalog) {
    let ghost = WorkspaceId::new();
    match cat.redaction_policy(ghost).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("redaction_policy(ghost): expected WorkspaceNotFound, got {other:?}"),
    }
    match cat.set_redaction_policy(ghost, Some(""), PrincipalId::new(), T0).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("set_redaction_policy(ghost): expected WorkspaceNotFound, got {other:?}"),
    }
    match cat.redaction_key(ghost, Secret::new([2; 32])).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        Err(e) => panic!("redaction_key(ghost): expected WorkspaceNotFound, got {e:?}"),
        Ok(_) => panic!("redaction_key(ghost): expected WorkspaceNotFound, got a key"),
    }
    assert_eq!(ok(cat.list_redactions(ghost).await, "list ghost"), vec![]);
}

/// The first caller's candidate becomes the workspace's key; later and
/// concurrent callers all get that one; each workspace has its own.
pub async fn redaction_key_is_stored_once_and_never_changes(cat: Arc<dyn Catalog>) {
    const CALLERS: u8 = 16;
    let ws = new_workspace(cat.as_ref(), "redaction-key", T0).await;
    let other = new_workspace(cat.as_ref(), "redaction-key-other", T0).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(usize::from(CALLERS)));
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let (cat, barrier) = (cat.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cat.redaction_key(ws.id, Secret::new([i + 1; 32])).await
        }));
    }
    let mut keys = HashSet::new();
    for t in tasks {
        let k = ok(t.await.unwrap_or_else(|e| panic!("redaction_key task: {e}")), "redaction_key");
        keys.insert(*k.expose());
    }
    assert_eq!(keys.len(), 1, "concurrent first callers got different keys");
    let key = keys.into_iter().next().unwrap_or_default();
    assert!((1..=CALLERS).any(|i| key == [i; 32]), "the key is not one of the candidates");
    let again = ok(cat.redaction_key(ws.id, Secret::new([0xee; 32])).await, "redaction_key again");
    assert_eq!(again.expose(), &key, "the key changed");
    ok(cat.set_redaction_policy(ws.id, Some("version = 1"), PrincipalId::new(), T0).await, "set policy");
    let after = ok(cat.redaction_key(ws.id, Secret::new([0xdd; 32])).await, "redaction_key after a policy change");
    assert_eq!(after.expose(), &key, "a policy change replaced the key");
    let theirs = ok(cat.redaction_key(other.id, Secret::new([0xcc; 32])).await, "other workspace");
    assert_eq!(theirs.expose(), &[0xcc; 32]);
}

/// Counts of the same (table, kind, entity) are summed, keeping the earliest
/// and latest times, within one call and across calls; counts of 0 are
/// ignored; the list is ordered by table, kind and entity.
pub async fn redaction_counts_merge_per_table_kind_and_entity(cat: &dyn Catalog) {
    use RedactionKind::*;
    let ws = new_workspace(cat, "redactions", T0).await;
    assert_eq!(ok(cat.list_redactions(ws.id).await, "list"), vec![]);
    ok(
        cat.commit_ingest_with(
            &[],
            &[(ws.id, BatchId::new())],
            &[],
            &[
                redaction(ws.id, "logs", Redacted, "EMAIL_ADDRESS", 3, T0 + 50),
                redaction(ws.id, "logs", Redacted, "EMAIL_ADDRESS", 2, T0 + 20),
                redaction(ws.id, "logs", Redacted, "CREDIT_CARD", 1, T0 + 50),
                redaction(ws.id, "logs", EventDropped, "", 4, T0 + 50),
                redaction(ws.id, "auth", Redacted, "EMAIL_ADDRESS", 1, T0 + 60),
                redaction(ws.id, "auth", FieldDropped, "", 0, T0 + 60),
            ],
            T0 + 60,
        )
        .await,
        "commit_ingest_with",
    );
    ok(
        cat.commit_ingest_with(&[], &[(ws.id, BatchId::new())], &[], &[redaction(ws.id, "logs", Redacted, "EMAIL_ADDRESS", 5, T0 + 90)], T0 + 90)
            .await,
        "commit_ingest_with",
    );
    let got = ok(cat.list_redactions(ws.id).await, "list");
    let want = vec![
        redaction(ws.id, "auth", Redacted, "EMAIL_ADDRESS", 1, T0 + 60),
        redaction(ws.id, "logs", Redacted, "CREDIT_CARD", 1, T0 + 50),
        RedactionCount { first_at: T0 + 20, last_at: T0 + 90, ..redaction(ws.id, "logs", Redacted, "EMAIL_ADDRESS", 10, 0) },
        redaction(ws.id, "logs", EventDropped, "", 4, T0 + 50),
    ];
    assert_eq!(got, want);
    // Many distinct keys in one commit (more than one statement's worth).
    let many: Vec<RedactionCount> =
        (0..250).map(|i| redaction(ws.id, &format!("t{i:03}"), Redacted, "SECRET", 1, T0)).collect();
    ok(cat.commit_ingest_with(&[], &[], &[], &many, T0).await, "commit many");
    assert_eq!(ok(cat.list_redactions(ws.id).await, "list").len(), 4 + 250);
}

/// Redaction counts are committed with their batch ids and segments, all or
/// nothing: a failed commit counts nothing; a workspace that does not exist
/// is `WorkspaceNotFound`; an entity name not valid for its kind is refused.
pub async fn redaction_counts_commit_with_their_batch_all_or_nothing(cat: &dyn Catalog) {
    use RedactionKind::*;
    let ws = new_workspace(cat, "redactions-atomic", T0).await;
    let s1 = segment(ws.id, "logs", 0, 10);
    let dup = Segment { path: "other.seg".into(), ..s1.clone() };
    let batch = BatchId::new();
    let r = redaction(ws.id, "logs", Redacted, "SECRET", 2, T0);
    match cat.commit_ingest_with(&[s1.clone(), dup], &[(ws.id, batch)], &[], std::slice::from_ref(&r), T0).await {
        Err(CatalogError::SegmentExists(id)) => assert_eq!(id, s1.id),
        other => panic!("commit with a duplicate segment: expected SegmentExists, got {other:?}"),
    }
    assert_eq!(ok(cat.list_redactions(ws.id).await, "list"), vec![], "counts of a failed commit were added");
    let ghost = WorkspaceId::new();
    match cat.commit_ingest_with(&[], &[(ws.id, batch)], &[], &[r.clone(), redaction(ghost, "logs", Redacted, "SECRET", 1, T0)], T0).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("counts of a ghost workspace: expected WorkspaceNotFound, got {other:?}"),
    }
    assert_eq!(ok(cat.list_redactions(ws.id).await, "list"), vec![], "counts of a failed commit were added");
    assert_eq!(ok(cat.stored_batches(ws.id, &[batch]).await, "stored"), vec![]);
    for bad in [
        redaction(ws.id, "logs", Redacted, "", 1, T0),
        redaction(ws.id, "logs", Redacted, &"X".repeat(65), 1, T0),
        redaction(ws.id, "logs", EventDropped, "SECRET", 1, T0),
    ] {
        match cat.commit_ingest_with(&[], &[(ws.id, batch)], &[], std::slice::from_ref(&bad), T0).await {
            Err(CatalogError::Database(m)) => assert!(m.contains("redaction count"), "{m}"),
            other => panic!("bad redaction count {bad:?}: expected a Database error, got {other:?}"),
        }
    }
    assert_eq!(ok(cat.stored_batches(ws.id, &[batch]).await, "stored"), vec![]);
    ok(cat.commit_ingest_with(std::slice::from_ref(&s1), &[(ws.id, batch)], &[], std::slice::from_ref(&r), T0).await, "commit");
    assert_eq!(ok(cat.list_redactions(ws.id).await, "list"), vec![r]);
    assert_eq!(ok(cat.stored_batches(ws.id, &[batch]).await, "stored"), vec![batch]);
    // commit_ingest is commit_ingest_with without counts.
    ok(cat.commit_ingest(&[], &[(ws.id, BatchId::new())], &[], T0).await, "commit_ingest");
    assert_eq!(ok(cat.list_redactions(ws.id).await, "list").len(), 1);
}

/// A workspace's counts are never listed for another workspace.
pub async fn redaction_counts_never_cross_workspaces(cat: &dyn Catalog) {
    use RedactionKind::*;
    let a = new_workspace(cat, "redactions-a", T0).await;
    let b = new_workspace(cat, "redactions-b", T0).await;
    ok(cat.commit_ingest_with(&[], &[], &[], &[redaction(a.id, "logs", Redacted, "EMAIL_ADDRESS", 5, T0)], T0).await, "a");
    assert_eq!(ok(cat.list_redactions(b.id).await, "list b"), vec![]);
    ok(cat.commit_ingest_with(&[], &[], &[], &[redaction(b.id, "logs", Redacted, "EMAIL_ADDRESS", 2, T0)], T0).await, "b");
    let (la, lb) = (ok(cat.list_redactions(a.id).await, "list a"), ok(cat.list_redactions(b.id).await, "list b"));
    assert_eq!((la.len(), la[0].workspace_id, la[0].count), (1, a.id, 5));
    assert_eq!((lb.len(), lb[0].workspace_id, lb[0].count), (1, b.id, 2));
}

// ---------------------------------------------------------------- principals

async fn new_principal(
    cat: &dyn Catalog,
    tag: &str,
    service_role: Option<ServiceRole>,
    created_at: TimestampMicros,
) -> Principal {
    let p = Principal {
        id: PrincipalId::new(),
        name: unique(tag),
        service_role,
        created_at,
    };
    ok(cat.create_principal(&p).await, "create_principal");
    p
}

/// Principals with and without a service role read back identically, by id,
/// by name and in the list; unknown ids and names read as `None`.
pub async fn principals_round_trip(cat: &dyn Catalog) {
    let plain = new_principal(cat, "ädmin ünïcode", None, T0 + 1).await;
    let admin = new_principal(cat, "admin", Some(ServiceRole::Admin), T0 + 2).await;
    let support = new_principal(cat, "support", Some(ServiceRole::Support), T0 + 3).await;
    let all = ok(cat.list_principals().await, "list_principals");
    for p in [&plain, &admin, &support] {
        assert_eq!(
            ok(cat.get_principal(p.id).await, "get_principal"),
            Some(p.clone())
        );
        assert_eq!(
            ok(
                cat.get_principal_by_name(&p.name).await,
                "get_principal_by_name"
            ),
            Some(p.clone())
        );
        assert_eq!(
            all.iter().filter(|q| *q == p).count(),
            1,
            "principal listed exactly once: {all:?}"
        );
    }
    assert_eq!(
        ok(
            cat.get_principal(PrincipalId::new()).await,
            "get_principal(unknown)"
        ),
        None
    );
    assert_eq!(
        ok(
            cat.get_principal_by_name(&unique("nobody")).await,
            "get_principal_by_name(unknown)"
        ),
        None
    );
    // Names are matched exactly, not by case or prefix or pattern.
    let upper = plain.name.to_uppercase();
    for wrong in [upper.as_str(), &plain.name[..plain.name.len() - 1], "%", ""] {
        assert_eq!(
            ok(
                cat.get_principal_by_name(wrong).await,
                "get_principal_by_name"
            ),
            None,
            "{wrong:?}"
        );
    }
}

/// A second principal with a taken name is `PrincipalNameTaken`; the first
/// is left as it was.
pub async fn principal_names_are_unique(cat: &dyn Catalog) {
    let first = new_principal(cat, "unique-principal", None, T0).await;
    let second = Principal {
        id: PrincipalId::new(),
        service_role: Some(ServiceRole::Admin),
        ..first.clone()
    };
    match cat.create_principal(&second).await {
        Err(CatalogError::PrincipalNameTaken(name)) => assert_eq!(name, first.name),
        other => panic!("duplicate principal name: expected PrincipalNameTaken, got {other:?}"),
    }
    assert_eq!(
        ok(cat.get_principal(second.id).await, "get_principal"),
        None,
        "refused principal was stored"
    );
    assert_eq!(
        ok(
            cat.get_principal_by_name(&first.name).await,
            "get_principal_by_name"
        ),
        Some(first.clone())
    );
    let all = ok(cat.list_principals().await, "list_principals");
    assert_eq!(all.iter().filter(|p| p.name == first.name).count(), 1);
}

/// `list_principals` orders by creation time, not by insertion order.
pub async fn principals_are_listed_oldest_first(cat: &dyn Catalog) {
    let newer = new_principal(cat, "newer", None, T0 + 2_000).await;
    let older = new_principal(cat, "older", None, T0 + 1_000).await;
    let all = ok(cat.list_principals().await, "list_principals");
    assert!(
        all.windows(2).all(|w| w[0].created_at <= w[1].created_at),
        "principals not sorted by created_at: {all:?}"
    );
    let pos = |id| all.iter().position(|p| p.id == id);
    match (pos(older.id), pos(newer.id)) {
        (Some(o), Some(n)) => assert!(o < n, "older principal listed after newer"),
        _ => panic!("created principals missing from list_principals"),
    }
}

// ---------------------------------------------------------------- tokens

fn token(principal: PrincipalId, created_at: TimestampMicros) -> ApiToken {
    ApiToken {
        id: TokenId::new(),
        principal_id: principal,
        // Shaped like a SHA-256 hex digest, and unique.
        token_hash: format!("{:064x}", TokenId::new().as_uuid().as_u128()),
        created_at,
        expires_at: None,
        revoked_at: None,
    }
}

/// Tokens read back identically (with and without expiry, revoked or not),
/// by id and by hash, and are listed per principal, oldest first.
pub async fn tokens_round_trip(cat: &dyn Catalog) {
    let p = new_principal(cat, "tokens", None, T0).await;
    let other = new_principal(cat, "tokens-other", None, T0).await;
    let mut later = token(p.id, T0 + 500);
    later.expires_at = Some(T0 + 86_400_000_000);
    let mut earlier = token(p.id, T0 + 100);
    earlier.revoked_at = Some(T0 + 200);
    let others = token(other.id, T0);
    for t in [&later, &earlier, &others] {
        ok(cat.add_token(t).await, "add_token");
    }
    for t in [&later, &earlier, &others] {
        assert_eq!(ok(cat.get_token(t.id).await, "get_token"), Some(t.clone()));
        assert_eq!(
            ok(
                cat.get_token_by_hash(&t.token_hash).await,
                "get_token_by_hash"
            ),
            Some(t.clone())
        );
    }
    assert_eq!(
        ok(cat.get_token(TokenId::new()).await, "get_token(unknown)"),
        None
    );
    assert_eq!(
        ok(cat.list_tokens(p.id).await, "list_tokens"),
        vec![earlier, later]
    );
    assert_eq!(
        ok(cat.list_tokens(other.id).await, "list_tokens other"),
        vec![others]
    );
    assert_eq!(
        ok(
            cat.list_tokens(PrincipalId::new()).await,
            "list_tokens unknown"
        ),
        vec![]
    );
}

/// A token is found by the hash of its secret, and only by exactly that
/// hash. Revoking it records the time; revoking again keeps the first time;
/// a revoked token is still found (the caller decides).
pub async fn token_lookup_by_hash_finds_it_and_revoke_keeps_the_first_time(cat: &dyn Catalog) {
    let p = new_principal(cat, "revoke", None, T0).await;
    let t = token(p.id, T0);
    let bystander = token(p.id, T0 + 1);
    ok(cat.add_token(&t).await, "add_token");
    ok(cat.add_token(&bystander).await, "add_token");
    assert_eq!(
        ok(
            cat.get_token_by_hash(&t.token_hash).await,
            "get_token_by_hash"
        ),
        Some(t.clone())
    );
    let upper = t.token_hash.to_uppercase();
    for wrong in [upper.as_str(), &t.token_hash[..32], "", "%"] {
        assert_eq!(
            ok(
                cat.get_token_by_hash(wrong).await,
                "get_token_by_hash(wrong)"
            ),
            None,
            "{wrong:?}"
        );
    }

    let revoked = ApiToken {
        revoked_at: Some(T0 + 10),
        ..t.clone()
    };
    assert_eq!(
        ok(cat.revoke_token(t.id, T0 + 10).await, "revoke_token"),
        revoked
    );
    for now in [T0 + 20, T0 + 5] {
        assert_eq!(
            ok(cat.revoke_token(t.id, now).await, "revoke_token again"),
            revoked,
            "a second revocation must keep the first time"
        );
    }
    assert_eq!(
        ok(
            cat.get_token_by_hash(&t.token_hash).await,
            "get_token_by_hash(revoked)"
        ),
        Some(revoked.clone())
    );
    assert_eq!(
        ok(cat.get_token(t.id).await, "get_token(revoked)"),
        Some(revoked)
    );
    assert_eq!(
        ok(cat.get_token(bystander.id).await, "get_token"),
        Some(bystander),
        "revoke touched another token"
    );
}

/// Revoking a token id that does not exist is `TokenNotFound`.
pub async fn revoking_an_unknown_token_is_token_not_found(cat: &dyn Catalog) {
    let ghost = TokenId::new();
    match cat.revoke_token(ghost, T0).await {
        Err(CatalogError::TokenNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("revoking unknown token: expected TokenNotFound, got {other:?}"),
    }
    assert_eq!(ok(cat.get_token(ghost).await, "get_token"), None);
}

/// A token of a principal that does not exist is `PrincipalNotFound`.
pub async fn token_needs_existing_principal(cat: &dyn Catalog) {
    let ghost = PrincipalId::new();
    let t = token(ghost, T0);
    match cat.add_token(&t).await {
        Err(CatalogError::PrincipalNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("token of unknown principal: expected PrincipalNotFound, got {other:?}"),
    }
    assert_eq!(
        ok(
            cat.get_token_by_hash(&t.token_hash).await,
            "get_token_by_hash"
        ),
        None
    );
}

/// A second token with a hash already stored is refused (with some error),
/// so a hash always names exactly one token; the first is left as it was.
pub async fn token_hashes_are_unique(cat: &dyn Catalog) {
    let p = new_principal(cat, "dup-hash", None, T0).await;
    let q = new_principal(cat, "dup-hash-other", None, T0).await;
    let first = token(p.id, T0);
    ok(cat.add_token(&first).await, "add_token");
    let dup = ApiToken {
        id: TokenId::new(),
        principal_id: q.id,
        ..first.clone()
    };
    if let Ok(()) = cat.add_token(&dup).await {
        panic!("a second token with the same hash was accepted");
    }
    assert_eq!(
        ok(cat.get_token(dup.id).await, "get_token"),
        None,
        "refused token was stored"
    );
    assert_eq!(
        ok(
            cat.get_token_by_hash(&first.token_hash).await,
            "get_token_by_hash"
        ),
        Some(first)
    );
    assert_eq!(ok(cat.list_tokens(q.id).await, "list_tokens"), vec![]);
}

// ---------------------------------------------------------------- role bindings

fn binding(
    ws: WorkspaceId,
    p: PrincipalId,
    role: WorkspaceRole,
    granted_at: TimestampMicros,
) -> RoleBinding {
    RoleBinding {
        workspace_id: ws,
        principal_id: p,
        role,
        granted_at,
        granted_by: PrincipalId::new(),
    }
}

/// Granting a binding that exists returns false and keeps the original
/// (time and grantor); revoking returns true once, then false.
pub async fn role_grant_is_idempotent_and_revoke_returns_false_the_second_time(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "grant", T0).await;
    let p = new_principal(cat, "grantee", None, T0).await;
    let b = binding(ws.id, p.id, WorkspaceRole::Reader, T0 + 1);
    assert!(
        ok(cat.grant_role(&b).await, "grant_role"),
        "first grant must return true"
    );
    let again = binding(ws.id, p.id, WorkspaceRole::Reader, T0 + 2);
    assert!(
        !ok(cat.grant_role(&again).await, "grant_role again"),
        "repeated grant must return false"
    );
    assert!(
        !ok(cat.grant_role(&b).await, "grant_role again"),
        "repeated grant must return false"
    );
    assert_eq!(
        ok(cat.list_role_bindings(ws.id).await, "list_role_bindings"),
        vec![b.clone()],
        "original kept"
    );
    assert_eq!(
        ok(cat.roles_of(p.id, ws.id).await, "roles_of"),
        vec![WorkspaceRole::Reader]
    );

    // Revoking a role the principal does not hold changes nothing.
    assert!(!ok(
        cat.revoke_role(ws.id, p.id, WorkspaceRole::Owner).await,
        "revoke_role(not held)"
    ));
    assert!(
        ok(
            cat.revoke_role(ws.id, p.id, WorkspaceRole::Reader).await,
            "revoke_role"
        ),
        "first revoke: true"
    );
    assert!(
        !ok(
            cat.revoke_role(ws.id, p.id, WorkspaceRole::Reader).await,
            "revoke_role"
        ),
        "second revoke: false"
    );
    assert_eq!(ok(cat.roles_of(p.id, ws.id).await, "roles_of"), vec![]);
    assert_eq!(
        ok(cat.list_role_bindings(ws.id).await, "list_role_bindings"),
        vec![]
    );
    // Unknown workspace or principal: nothing to revoke, not an error.
    assert!(!ok(
        cat.revoke_role(WorkspaceId::new(), p.id, WorkspaceRole::Reader)
            .await,
        "revoke_role(ghost ws)"
    ));
    assert!(!ok(
        cat.revoke_role(ws.id, PrincipalId::new(), WorkspaceRole::Reader)
            .await,
        "revoke_role(ghost p)"
    ));
    // After a revoke the same binding can be granted again.
    assert!(ok(cat.grant_role(&again).await, "grant_role after revoke"));
    assert_eq!(
        ok(cat.list_role_bindings(ws.id).await, "list_role_bindings"),
        vec![again]
    );
}

/// `roles_of` returns the principal's roles in that workspace only: a
/// binding in another workspace, or another principal's binding in the same
/// workspace, does not leak. Revoking one role leaves the others.
pub async fn roles_of_only_returns_roles_in_that_workspace(cat: &dyn Catalog) {
    let a = new_workspace(cat, "roles-a", T0).await;
    let b = new_workspace(cat, "roles-b", T0).await;
    let c = new_workspace(cat, "roles-c", T0).await;
    let p = new_principal(cat, "roles-p", None, T0).await;
    let q = new_principal(cat, "roles-q", None, T0).await;
    for bnd in [
        binding(a.id, p.id, WorkspaceRole::Reader, T0),
        binding(a.id, p.id, WorkspaceRole::Owner, T0 + 1),
        binding(b.id, p.id, WorkspaceRole::Auditor, T0),
        binding(c.id, q.id, WorkspaceRole::Owner, T0),
        binding(a.id, q.id, WorkspaceRole::Contributor, T0),
    ] {
        assert!(ok(cat.grant_role(&bnd).await, "grant_role"));
    }
    let mut in_a = ok(cat.roles_of(p.id, a.id).await, "roles_of(p, a)");
    in_a.sort();
    assert_eq!(in_a, vec![WorkspaceRole::Owner, WorkspaceRole::Reader]);
    assert_eq!(
        ok(cat.roles_of(p.id, b.id).await, "roles_of(p, b)"),
        vec![WorkspaceRole::Auditor]
    );
    assert_eq!(
        ok(cat.roles_of(p.id, c.id).await, "roles_of(p, c)"),
        vec![],
        "q's binding leaked to p"
    );
    assert_eq!(
        ok(cat.roles_of(q.id, a.id).await, "roles_of(q, a)"),
        vec![WorkspaceRole::Contributor]
    );
    assert_eq!(ok(cat.roles_of(q.id, b.id).await, "roles_of(q, b)"), vec![]);
    assert_eq!(
        ok(
            cat.roles_of(p.id, WorkspaceId::new()).await,
            "roles_of(unknown ws)"
        ),
        vec![]
    );
    assert_eq!(
        ok(
            cat.roles_of(PrincipalId::new(), a.id).await,
            "roles_of(unknown p)"
        ),
        vec![]
    );

    assert!(ok(
        cat.revoke_role(a.id, p.id, WorkspaceRole::Owner).await,
        "revoke_role"
    ));
    assert_eq!(
        ok(cat.roles_of(p.id, a.id).await, "roles_of(p, a)"),
        vec![WorkspaceRole::Reader]
    );
    assert_eq!(
        ok(cat.roles_of(p.id, b.id).await, "roles_of(p, b)"),
        vec![WorkspaceRole::Auditor]
    );
    assert_eq!(
        ok(cat.roles_of(q.id, a.id).await, "roles_of(q, a)"),
        vec![WorkspaceRole::Contributor]
    );
}

/// `list_role_bindings` shows one workspace's bindings (every principal);
/// `bindings_of` one principal's (every workspace). Both read back exactly.
pub async fn bindings_are_listed_per_workspace_and_per_principal(cat: &dyn Catalog) {
    let a = new_workspace(cat, "bindings-a", T0).await;
    let b = new_workspace(cat, "bindings-b", T0).await;
    let empty = new_workspace(cat, "bindings-empty", T0).await;
    let p = new_principal(cat, "bindings-p", None, T0).await;
    let q = new_principal(cat, "bindings-q", Some(ServiceRole::Support), T0).await;
    let lonely = new_principal(cat, "bindings-lonely", None, T0).await;
    let pa = binding(a.id, p.id, WorkspaceRole::Owner, T0 + 10);
    let pb = binding(b.id, p.id, WorkspaceRole::Reader, T0 + 20);
    let qa = binding(a.id, q.id, WorkspaceRole::Auditor, T0 + 30);
    for bnd in [&qa, &pb, &pa] {
        assert!(ok(cat.grant_role(bnd).await, "grant_role"));
    }
    let sorted = |mut v: Vec<RoleBinding>| {
        v.sort_by_key(|b| (b.workspace_id, b.principal_id, b.role));
        v
    };
    assert_eq!(
        sorted(ok(
            cat.list_role_bindings(a.id).await,
            "list_role_bindings(a)"
        )),
        sorted(vec![pa.clone(), qa.clone()])
    );
    assert_eq!(
        ok(cat.list_role_bindings(b.id).await, "list_role_bindings(b)"),
        vec![pb.clone()]
    );
    assert_eq!(
        ok(
            cat.list_role_bindings(empty.id).await,
            "list_role_bindings(empty)"
        ),
        vec![]
    );
    assert_eq!(
        ok(
            cat.list_role_bindings(WorkspaceId::new()).await,
            "list_role_bindings(unknown)"
        ),
        vec![]
    );
    assert_eq!(
        sorted(ok(cat.bindings_of(p.id).await, "bindings_of(p)")),
        sorted(vec![pa, pb])
    );
    assert_eq!(ok(cat.bindings_of(q.id).await, "bindings_of(q)"), vec![qa]);
    assert_eq!(
        ok(cat.bindings_of(lonely.id).await, "bindings_of(lonely)"),
        vec![]
    );
    assert_eq!(
        ok(
            cat.bindings_of(PrincipalId::new()).await,
            "bindings_of(unknown)"
        ),
        vec![]
    );
}

/// A binding in a workspace that does not exist is `WorkspaceNotFound`; of a
/// principal that does not exist, `PrincipalNotFound`. Nothing is stored.
pub async fn bindings_need_an_existing_workspace_and_principal(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "binding-fk", T0).await;
    let p = new_principal(cat, "binding-fk", None, T0).await;
    let (ghost_ws, ghost_p) = (WorkspaceId::new(), PrincipalId::new());
    match cat
        .grant_role(&binding(ghost_ws, p.id, WorkspaceRole::Owner, T0))
        .await
    {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost_ws),
        other => panic!("binding in unknown workspace: expected WorkspaceNotFound, got {other:?}"),
    }
    match cat
        .grant_role(&binding(ws.id, ghost_p, WorkspaceRole::Owner, T0))
        .await
    {
        Err(CatalogError::PrincipalNotFound(id)) => assert_eq!(id, ghost_p),
        other => panic!("binding of unknown principal: expected PrincipalNotFound, got {other:?}"),
    }
    match cat
        .grant_role(&binding(ghost_ws, ghost_p, WorkspaceRole::Owner, T0))
        .await
    {
        Err(CatalogError::WorkspaceNotFound(_) | CatalogError::PrincipalNotFound(_)) => {}
        other => panic!("binding of unknown principal in unknown workspace: got {other:?}"),
    }
    assert_eq!(
        ok(cat.list_role_bindings(ws.id).await, "list_role_bindings"),
        vec![]
    );
    assert_eq!(ok(cat.bindings_of(p.id).await, "bindings_of"), vec![]);
    assert_eq!(ok(cat.roles_of(p.id, ghost_ws).await, "roles_of"), vec![]);
}

// ---------------------------------------------------------------- cases

fn case(ws: WorkspaceId, opened_at: TimestampMicros) -> Case {
    Case {
        id: CaseId::new(),
        workspace_id: ws,
        title: "Ingest stalls after upgrade — ünïcode".into(),
        opened_by: PrincipalId::new(),
        opened_at,
        closed_at: None,
        closed_by: None,
    }
}

async fn new_case(cat: &dyn Catalog, ws: WorkspaceId, opened_at: TimestampMicros) -> Case {
    let c = case(ws, opened_at);
    ok(cat.create_case(&c).await, "create_case");
    c
}

/// Cases (open, and created closed) read back identically; an unknown id
/// reads as `None`.
pub async fn cases_round_trip(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "cases", T0).await;
    let open = new_case(cat, ws.id, T0 + 1).await;
    let closed = Case {
        closed_at: Some(T0 + 50),
        closed_by: Some(PrincipalId::new()),
        ..case(ws.id, T0 + 2)
    };
    ok(cat.create_case(&closed).await, "create_case(closed)");
    assert_eq!(
        ok(cat.get_case(open.id).await, "get_case"),
        Some(open.clone())
    );
    assert_eq!(
        ok(cat.get_case(closed.id).await, "get_case"),
        Some(closed.clone())
    );
    assert_eq!(
        ok(cat.get_case(CaseId::new()).await, "get_case(unknown)"),
        None
    );
}

/// A case on a workspace that does not exist is `WorkspaceNotFound`.
pub async fn case_needs_existing_workspace(cat: &dyn Catalog) {
    let ghost = WorkspaceId::new();
    let c = case(ghost, T0);
    match cat.create_case(&c).await {
        Err(CatalogError::WorkspaceNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("case on unknown workspace: expected WorkspaceNotFound, got {other:?}"),
    }
    assert_eq!(ok(cat.get_case(c.id).await, "get_case"), None);
    assert_eq!(ok(cat.list_cases(Some(ghost)).await, "list_cases"), vec![]);
}

/// `list_cases(Some(ws))` shows only that workspace's cases, newest first;
/// `list_cases(None)` shows every workspace's, newest first.
pub async fn list_cases_filters_by_workspace_newest_first(cat: &dyn Catalog) {
    let a = new_workspace(cat, "cases-a", T0).await;
    let b = new_workspace(cat, "cases-b", T0).await;
    let empty = new_workspace(cat, "cases-empty", T0).await;
    let a_mid = new_case(cat, a.id, T0 + 200).await;
    let a_old = new_case(cat, a.id, T0 + 100).await;
    let b_only = new_case(cat, b.id, T0 + 150).await;
    let a_new = new_case(cat, a.id, T0 + 300).await;
    assert_eq!(
        ok(cat.list_cases(Some(a.id)).await, "list_cases(a)"),
        vec![a_new.clone(), a_mid.clone(), a_old.clone()]
    );
    assert_eq!(
        ok(cat.list_cases(Some(b.id)).await, "list_cases(b)"),
        vec![b_only.clone()]
    );
    assert_eq!(
        ok(cat.list_cases(Some(empty.id)).await, "list_cases(empty)"),
        vec![]
    );
    assert_eq!(
        ok(
            cat.list_cases(Some(WorkspaceId::new())).await,
            "list_cases(unknown)"
        ),
        vec![]
    );
    let all = ok(cat.list_cases(None).await, "list_cases(None)");
    assert!(
        all.windows(2).all(|w| w[0].opened_at >= w[1].opened_at),
        "not newest first: {all:?}"
    );
    let ours: Vec<CaseId> = all
        .iter()
        .map(|c| c.id)
        .filter(|id| [a_old.id, a_mid.id, a_new.id, b_only.id].contains(id))
        .collect();
    assert_eq!(
        ours,
        vec![a_new.id, a_mid.id, b_only.id, a_old.id],
        "list_cases(None) must list every workspace's"
    );
}

/// Closing an open case records who and when; closing it again fails with
/// `CaseClosed` and keeps the first closing.
pub async fn closing_a_closed_case_fails_with_case_closed(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "close", T0).await;
    let c = new_case(cat, ws.id, T0).await;
    let other = new_case(cat, ws.id, T0).await;
    let (closer, late) = (PrincipalId::new(), PrincipalId::new());
    let closed = Case {
        closed_at: Some(T0 + 10),
        closed_by: Some(closer),
        ..c.clone()
    };
    assert_eq!(
        ok(cat.close_case(c.id, closer, T0 + 10).await, "close_case"),
        closed
    );
    assert_eq!(
        ok(cat.get_case(c.id).await, "get_case"),
        Some(closed.clone())
    );
    for now in [T0 + 20, T0 + 5] {
        match cat.close_case(c.id, late, now).await {
            Err(CatalogError::CaseClosed(id)) => assert_eq!(id, c.id),
            other => panic!("closing a closed case: expected CaseClosed, got {other:?}"),
        }
    }
    assert_eq!(
        ok(cat.get_case(c.id).await, "get_case"),
        Some(closed),
        "a second close changed the case"
    );
    assert_eq!(
        ok(cat.get_case(other.id).await, "get_case"),
        Some(other),
        "close_case touched another case"
    );
}

/// Closing a case that does not exist is `CaseNotFound`.
pub async fn closing_an_unknown_case_is_case_not_found(cat: &dyn Catalog) {
    let ghost = CaseId::new();
    match cat.close_case(ghost, PrincipalId::new(), T0).await {
        Err(CatalogError::CaseNotFound(id)) => assert_eq!(id, ghost),
        other => panic!("closing unknown case: expected CaseNotFound, got {other:?}"),
    }
}

/// Many tasks closing the same case at once: exactly one closes it, every
/// other gets `CaseClosed`, and the stored case is the winner's.
pub async fn concurrent_closers_close_once(cat: Arc<dyn Catalog>) {
    const CLOSERS: usize = 8;
    let ws = new_workspace(cat.as_ref(), "concurrent-close", T0).await;
    let c = new_case(cat.as_ref(), ws.id, T0).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(CLOSERS));
    let mut tasks = Vec::with_capacity(CLOSERS);
    for i in 0..CLOSERS {
        let cat = cat.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cat.close_case(c.id, PrincipalId::new(), T0 + 1 + i as i64)
                .await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(closed)) => winners.push(closed),
            Ok(Err(CatalogError::CaseClosed(id))) => assert_eq!(id, c.id),
            Ok(Err(e)) => panic!("concurrent closer: unexpected error {e:?}"),
            Err(e) => panic!("concurrent closer task failed: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{} of {CLOSERS} concurrent closers closed the case",
        winners.len()
    );
    assert_eq!(
        ok(cat.get_case(c.id).await, "get_case"),
        winners.pop(),
        "stored case is not the winner's"
    );
}

// ---------------------------------------------------------------- access requests

fn request(c: &Case, requester: PrincipalId, requested_at: TimestampMicros) -> AccessRequest {
    AccessRequest {
        id: AccessRequestId::new(),
        case_id: c.id,
        workspace_id: c.workspace_id,
        requester,
        reason: "read the agent logs of host db-02 — ünïcode".into(),
        duration: 4 * 3_600_000_000,
        requested_at,
        state: AccessState::Pending,
        decided_at: None,
        decided_by: None,
        grant_expires_at: None,
    }
}

async fn new_request(
    cat: &dyn Catalog,
    c: &Case,
    requester: PrincipalId,
    at: TimestampMicros,
) -> AccessRequest {
    let r = request(c, requester, at);
    ok(cat.create_access_request(&r).await, "create_access_request");
    r
}

/// A pending request reads back identically; an unknown id reads as `None`.
pub async fn access_requests_round_trip(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "requests", T0).await;
    let c = new_case(cat, ws.id, T0).await;
    let r = new_request(cat, &c, PrincipalId::new(), T0 + 1).await;
    let mut long = request(&c, PrincipalId::new(), T0 + 2);
    long.duration = i64::MAX;
    long.reason = String::new();
    ok(
        cat.create_access_request(&long).await,
        "create_access_request",
    );
    assert_eq!(
        ok(cat.get_access_request(r.id).await, "get_access_request"),
        Some(r)
    );
    assert_eq!(
        ok(cat.get_access_request(long.id).await, "get_access_request"),
        Some(long)
    );
    assert_eq!(
        ok(
            cat.get_access_request(AccessRequestId::new()).await,
            "get_access_request(unknown)"
        ),
        None
    );
}

/// A request for a case that does not exist, or that belongs to another
/// workspace than the request names, is `CaseNotFound`; nothing is stored.
pub async fn access_request_needs_its_case_in_its_workspace(cat: &dyn Catalog) {
    let a = new_workspace(cat, "request-fk-a", T0).await;
    let b = new_workspace(cat, "request-fk-b", T0).await;
    let ca = new_case(cat, a.id, T0).await;
    let ghost_case = case(a.id, T0);
    let mut wrong_ws = request(&ca, PrincipalId::new(), T0);
    wrong_ws.workspace_id = b.id;
    let mut ghost_ws = request(&ca, PrincipalId::new(), T0);
    ghost_ws.workspace_id = WorkspaceId::new();
    for (what, r) in [
        ("unknown case", request(&ghost_case, PrincipalId::new(), T0)),
        ("case of another workspace", wrong_ws),
        ("unknown workspace", ghost_ws),
    ] {
        match cat.create_access_request(&r).await {
            Err(CatalogError::CaseNotFound(id)) => assert_eq!(id, r.case_id),
            other => panic!("request for {what}: expected CaseNotFound, got {other:?}"),
        }
        assert_eq!(
            ok(cat.get_access_request(r.id).await, "get_access_request"),
            None,
            "{what}: stored"
        );
    }
    let filter = AccessFilter {
        workspace: Some(b.id),
        ..AccessFilter::default()
    };
    assert_eq!(
        ok(
            cat.list_access_requests(&filter).await,
            "list_access_requests"
        ),
        vec![]
    );
}

/// Only a pending request can be created; an already decided one is
/// refused with `AccessRequestNotPending` naming its state.
pub async fn only_pending_access_requests_are_created(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "request-pending", T0).await;
    let c = new_case(cat, ws.id, T0).await;
    let approved = AccessRequest {
        state: AccessState::Approved,
        decided_at: Some(T0 + 1),
        decided_by: Some(PrincipalId::new()),
        grant_expires_at: Some(T0 + 100),
        ..request(&c, PrincipalId::new(), T0)
    };
    let denied = AccessRequest {
        state: AccessState::Denied,
        decided_at: Some(T0 + 1),
        decided_by: Some(PrincipalId::new()),
        ..request(&c, PrincipalId::new(), T0)
    };
    for r in [approved, denied] {
        match cat.create_access_request(&r).await {
            Err(CatalogError::AccessRequestNotPending { id, state }) => {
                assert_eq!(id, r.id);
                assert_eq!(state, r.state);
            }
            other => panic!(
                "creating a {} request: expected AccessRequestNotPending, got {other:?}",
                r.state
            ),
        }
        assert_eq!(
            ok(cat.get_access_request(r.id).await, "get_access_request"),
            None
        );
    }
}

/// Approving stores the decision, who made it, when, and the end of the
/// grant; denying stores no grant end.
pub async fn approval_stores_grant_expires_at(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "approve", T0).await;
    let c = new_case(cat, ws.id, T0).await;
    let owner = PrincipalId::new();
    let r = new_request(cat, &c, PrincipalId::new(), T0).await;
    let approved = AccessRequest {
        state: AccessState::Approved,
        decided_at: Some(T0 + 10),
        decided_by: Some(owner),
        grant_expires_at: Some(T0 + 10 + r.duration),
        ..r.clone()
    };
    assert_eq!(
        ok(
            cat.decide_access_request(
                r.id,
                AccessState::Approved,
                owner,
                T0 + 10,
                Some(T0 + 10 + r.duration)
            )
            .await,
            "approve"
        ),
        approved
    );
    assert_eq!(
        ok(cat.get_access_request(r.id).await, "get_access_request"),
        Some(approved)
    );

    let d = new_request(cat, &c, PrincipalId::new(), T0).await;
    let denied = AccessRequest {
        state: AccessState::Denied,
        decided_at: Some(T0 + 20),
        decided_by: Some(owner),
        grant_expires_at: None,
        ..d.clone()
    };
    assert_eq!(
        ok(
            cat.decide_access_request(d.id, AccessState::Denied, owner, T0 + 20, None)
                .await,
            "deny"
        ),
        denied
    );
    assert_eq!(
        ok(cat.get_access_request(d.id).await, "get_access_request"),
        Some(denied)
    );
}

/// A request is decided once: any second decision is
/// `AccessRequestNotPending` carrying the state it was decided to, and the
/// first decision stays.
pub async fn access_request_is_decided_only_once(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "decide-once", T0).await;
    let c = new_case(cat, ws.id, T0).await;
    for first in [AccessState::Approved, AccessState::Denied] {
        let r = new_request(cat, &c, PrincipalId::new(), T0).await;
        let grant = |s: AccessState| (s == AccessState::Approved).then_some(T0 + 1_000);
        let decided = ok(
            cat.decide_access_request(r.id, first, PrincipalId::new(), T0 + 1, grant(first))
                .await,
            "first decision",
        );
        assert_eq!(decided.state, first);
        for second in [AccessState::Approved, AccessState::Denied] {
            match cat
                .decide_access_request(r.id, second, PrincipalId::new(), T0 + 2, grant(second))
                .await
            {
                Err(CatalogError::AccessRequestNotPending { id, state }) => {
                    assert_eq!(id, r.id);
                    assert_eq!(
                        state, first,
                        "the error must name the state the request is in"
                    );
                }
                other => panic!(
                    "{second} after {first}: expected AccessRequestNotPending, got {other:?}"
                ),
            }
        }
        assert_eq!(
            ok(cat.get_access_request(r.id).await, "get_access_request"),
            Some(decided)
        );
    }
}

/// Deciding a request that does not exist is `AccessRequestNotFound`.
pub async fn deciding_an_unknown_request_is_not_found(cat: &dyn Catalog) {
    let ghost = AccessRequestId::new();
    for (decision, grant) in [
        (AccessState::Approved, Some(T0 + 1)),
        (AccessState::Denied, None),
    ] {
        match cat
            .decide_access_request(ghost, decision, PrincipalId::new(), T0, grant)
            .await
        {
            Err(CatalogError::AccessRequestNotFound(id)) => assert_eq!(id, ghost),
            other => {
                panic!("deciding unknown request: expected AccessRequestNotFound, got {other:?}")
            }
        }
    }
}

/// An approval without a grant end, a denial with one, or a "decision" to
/// pending is refused (with some error) and leaves the request pending.
pub async fn malformed_decisions_are_refused_and_change_nothing(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "bad-decision", T0).await;
    let c = new_case(cat, ws.id, T0).await;
    let r = new_request(cat, &c, PrincipalId::new(), T0).await;
    for (decision, grant) in [
        (AccessState::Approved, None),
        (AccessState::Denied, Some(T0 + 100)),
        (AccessState::Pending, None),
        (AccessState::Pending, Some(T0 + 100)),
    ] {
        if let Ok(got) = cat
            .decide_access_request(r.id, decision, PrincipalId::new(), T0 + 1, grant)
            .await
        {
            panic!("malformed decision ({decision}, grant {grant:?}) was accepted: {got:?}");
        }
        assert_eq!(
            ok(cat.get_access_request(r.id).await, "get_access_request"),
            Some(r.clone())
        );
    }
    // It can still be decided properly.
    let approved = ok(
        cat.decide_access_request(
            r.id,
            AccessState::Approved,
            PrincipalId::new(),
            T0 + 2,
            Some(T0 + 3),
        )
        .await,
        "approve",
    );
    assert_eq!(approved.state, AccessState::Approved);
}

/// Many owners deciding the same request at once (some approving, some
/// denying): exactly one decision wins, every other gets
/// `AccessRequestNotPending` with the winner's state, and the stored request
/// is the winner's.
pub async fn concurrent_deciders_decide_once(cat: Arc<dyn Catalog>) {
    const DECIDERS: usize = 8;
    let ws = new_workspace(cat.as_ref(), "concurrent-decide", T0).await;
    let c = new_case(cat.as_ref(), ws.id, T0).await;
    for round in 0..3 {
        let r = new_request(cat.as_ref(), &c, PrincipalId::new(), T0).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(DECIDERS));
        let mut tasks = Vec::with_capacity(DECIDERS);
        for i in 0..DECIDERS {
            let cat = cat.clone();
            let barrier = barrier.clone();
            let (decision, grant) = if i % 2 == 0 {
                (AccessState::Approved, Some(T0 + 1_000 + i as i64))
            } else {
                (AccessState::Denied, None)
            };
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                cat.decide_access_request(r.id, decision, PrincipalId::new(), T0 + i as i64, grant)
                    .await
            }));
        }
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok(decided)) => winners.push(decided),
                Ok(Err(CatalogError::AccessRequestNotPending { id, state })) => {
                    assert_eq!(id, r.id);
                    losers.push(state);
                }
                Ok(Err(e)) => panic!("concurrent decider (round {round}): unexpected error {e:?}"),
                Err(e) => panic!("concurrent decider task failed: {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} of {DECIDERS} concurrent decisions won",
            winners.len()
        );
        let winner = winners.remove(0);
        assert!(
            losers.iter().all(|s| *s == winner.state),
            "round {round}: losers saw {losers:?}, winner {winner:?}"
        );
        assert_eq!(
            ok(cat.get_access_request(r.id).await, "get_access_request"),
            Some(winner)
        );
    }
}

/// `list_access_requests` applies every field that is set: workspace, case,
/// requester, and their combinations.
pub async fn list_access_requests_filters_by_each_field(cat: &dyn Catalog) {
    let a = new_workspace(cat, "filter-a", T0).await;
    let b = new_workspace(cat, "filter-b", T0).await;
    let a1 = new_case(cat, a.id, T0).await;
    let a2 = new_case(cat, a.id, T0).await;
    let b1 = new_case(cat, b.id, T0).await;
    let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
    let r_a1_alice = new_request(cat, &a1, alice, T0 + 1).await;
    let r_a1_bob = new_request(cat, &a1, bob, T0 + 2).await;
    let r_a2_alice = new_request(cat, &a2, alice, T0 + 3).await;
    let r_b1_alice = new_request(cat, &b1, alice, T0 + 4).await;
    // A decided request is listed like the others.
    let r_b1_bob = new_request(cat, &b1, bob, T0 + 5).await;
    let r_b1_bob = ok(
        cat.decide_access_request(r_b1_bob.id, AccessState::Denied, alice, T0 + 6, None)
            .await,
        "deny",
    );

    let ids = |filter: AccessFilter| async move {
        let mut got: Vec<AccessRequestId> = ok(
            cat.list_access_requests(&filter).await,
            "list_access_requests",
        )
        .iter()
        .map(|r| r.id)
        .collect();
        got.sort();
        got
    };
    let expect = |rs: &[&AccessRequest]| {
        let mut v: Vec<AccessRequestId> = rs.iter().map(|r| r.id).collect();
        v.sort();
        v
    };
    let f = |workspace, case, requester| AccessFilter {
        workspace,
        case,
        requester,
    };

    assert_eq!(
        ids(f(Some(a.id), None, None)).await,
        expect(&[&r_a1_alice, &r_a1_bob, &r_a2_alice])
    );
    assert_eq!(
        ids(f(Some(b.id), None, None)).await,
        expect(&[&r_b1_alice, &r_b1_bob])
    );
    assert_eq!(
        ids(f(None, Some(a1.id), None)).await,
        expect(&[&r_a1_alice, &r_a1_bob])
    );
    assert_eq!(
        ids(f(None, Some(a2.id), None)).await,
        expect(&[&r_a2_alice])
    );
    assert_eq!(
        ids(f(None, None, Some(alice))).await,
        expect(&[&r_a1_alice, &r_a2_alice, &r_b1_alice])
    );
    assert_eq!(
        ids(f(None, None, Some(bob))).await,
        expect(&[&r_a1_bob, &r_b1_bob])
    );
    assert_eq!(
        ids(f(Some(a.id), None, Some(alice))).await,
        expect(&[&r_a1_alice, &r_a2_alice])
    );
    assert_eq!(
        ids(f(Some(a.id), Some(a1.id), Some(bob))).await,
        expect(&[&r_a1_bob])
    );
    assert_eq!(ids(f(None, Some(a2.id), Some(bob))).await, expect(&[]));
    // Contradictory filters match nothing.
    assert_eq!(ids(f(Some(b.id), Some(a1.id), None)).await, expect(&[]));
    assert_eq!(
        ids(f(Some(WorkspaceId::new()), None, None)).await,
        expect(&[])
    );
    assert_eq!(ids(f(None, Some(CaseId::new()), None)).await, expect(&[]));
    assert_eq!(
        ids(f(None, None, Some(PrincipalId::new()))).await,
        expect(&[])
    );
    // No filter: every request, ours among them.
    let all = ids(AccessFilter::default()).await;
    for r in [&r_a1_alice, &r_a1_bob, &r_a2_alice, &r_b1_alice, &r_b1_bob] {
        assert!(all.contains(&r.id), "unfiltered list misses {:?}", r.id);
    }
    // Listed requests read back exactly as stored.
    assert_eq!(
        ok(
            cat.list_access_requests(&f(None, Some(b1.id), Some(bob)))
                .await,
            "list_access_requests"
        ),
        vec![r_b1_bob]
    );
}

/// `list_access_requests` orders by request time, newest first, whatever
/// the insertion order.
pub async fn list_access_requests_is_newest_first(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "requests-order", T0).await;
    let c = new_case(cat, ws.id, T0).await;
    let someone = PrincipalId::new();
    let mid = new_request(cat, &c, someone, T0 + 20).await;
    let old = new_request(cat, &c, someone, T0 + 10).await;
    let new = new_request(cat, &c, someone, T0 + 30).await;
    let filter = AccessFilter {
        case: Some(c.id),
        ..AccessFilter::default()
    };
    assert_eq!(
        ok(
            cat.list_access_requests(&filter).await,
            "list_access_requests"
        ),
        vec![new, mid, old]
    );
    let all = ok(
        cat.list_access_requests(&AccessFilter::default()).await,
        "list_access_requests",
    );
    assert!(
        all.windows(2)
            .all(|w| w[0].requested_at >= w[1].requested_at),
        "not newest first"
    );
}

// ------------------------------------------------- locks, retention, deletion

const DAY: TimestampMicros = 86_400_000_000;

fn lock(reason: &str) -> WorkspaceLock {
    WorkspaceLock { reason: reason.into(), locked_at: T0 + 5, locked_by: Some(PrincipalId::new()) }
}

fn change(ws: WorkspaceId, tbl: Option<&str>, from: u32, to: u32, state: ChangeState, effective_at: TimestampMicros) -> RetentionChange {
    RetentionChange {
        id: ChangeId::new(),
        workspace_id: ws,
        table: tbl.map(table),
        from_days: from,
        to_days: to,
        requested_at: T0,
        effective_at,
        requested_by: Some(PrincipalId::new()),
        state,
        decided_at: None,
    }
}

/// A lock is stored with the workspace; unlocking returns it and clears it;
/// locking an unknown workspace is WorkspaceNotFound.
pub async fn locks_round_trip_and_unlock_returns_the_lock(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "lock", T0).await;
    let l = lock("litigation hold 2024-17");
    ok(cat.lock_workspace(ws.id, &l).await, "lock_workspace");
    assert_eq!(ok(cat.get_workspace(ws.id).await, "get_workspace").map(|w| w.lock), Some(Some(l.clone())));
    assert_eq!(ok(cat.unlock_workspace(ws.id).await, "unlock_workspace"), Some(l));
    assert_eq!(ok(cat.unlock_workspace(ws.id).await, "second unlock"), None);
    assert_eq!(ok(cat.get_workspace(ws.id).await, "get_workspace").map(|w| w.lock), Some(None));
    let missing = WorkspaceId::new();
    assert!(matches!(cat.lock_workspace(missing, &lock("x")).await, Err(CatalogError::WorkspaceNotFound(id)) if id == missing));
    assert!(matches!(cat.unlock_workspace(missing).await, Err(CatalogError::WorkspaceNotFound(_))));
}

/// The plan and a lock given at creation are stored and listed.
pub async fn plan_and_lock_are_stored_with_the_workspace(cat: &dyn Catalog) {
    let ws = Workspace {
        id: WorkspaceId::new(),
        name: unique("plan"),
        region: "eu-central".into(),
        retention_days: 7,
        created_at: T0,
        lockbox: true,
        policy: WorkspacePolicy::default(),
        plan: "free".into(),
        lock: Some(lock("created locked")),
    };
    ok(cat.create_workspace(&ws).await, "create_workspace");
    assert_eq!(ok(cat.get_workspace(ws.id).await, "get_workspace"), Some(ws.clone()));
    assert!(ok(cat.list_workspaces().await, "list_workspaces").contains(&ws));
}

/// An applied change sets the period at once and cancels a pending change
/// of the same scope; other scopes keep theirs.
pub async fn retention_increase_applies_at_once_and_replaces_a_pending_reduction(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "ret-inc", T0).await;
    let reduce = change(ws.id, None, 14, 7, ChangeState::Pending, T0 + 30 * DAY);
    ok(cat.change_retention(&reduce).await, "pending reduction");
    let reduce_t = change(ws.id, Some("logs"), 14, 3, ChangeState::Pending, T0 + 30 * DAY);
    ok(cat.change_retention(&reduce_t).await, "pending table reduction");
    let r = ok(cat.retention(ws.id).await, "retention");
    assert_eq!(r.default_days, 14, "a pending reduction changes nothing yet");
    assert_eq!(r.pending.len(), 2);
    let inc = change(ws.id, None, 14, 60, ChangeState::Applied, T0);
    ok(cat.change_retention(&inc).await, "applied increase");
    let r = ok(cat.retention(ws.id).await, "retention");
    assert_eq!(r.default_days, 60);
    assert_eq!(r.pending, vec![reduce_t.clone()], "the default's pending reduction was replaced; the table's stays");
    let over = change(ws.id, Some("metrics"), 60, 400, ChangeState::Applied, T0);
    ok(cat.change_retention(&over).await, "table override");
    let r = ok(cat.retention(ws.id).await, "retention");
    assert_eq!(r.tables.get(&table("metrics")), Some(&400));
    assert_eq!(r.tables.get(&table("logs")), None);
    assert!(matches!(
        cat.change_retention(&change(WorkspaceId::new(), None, 1, 2, ChangeState::Applied, T0)).await,
        Err(CatalogError::WorkspaceNotFound(_))
    ));
    assert!(matches!(cat.retention(WorkspaceId::new()).await, Err(CatalogError::WorkspaceNotFound(_))));
}

/// A pending reduction applies when its effective time has come, not before.
pub async fn pending_reduction_applies_at_its_effective_time(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "ret-due", T0).await;
    // Far in the future so other checks' sweeps at their own times never see it due.
    let at = T0 + 10_000 * DAY;
    let c = change(ws.id, Some("logs"), 14, 2, ChangeState::Pending, at);
    ok(cat.change_retention(&c).await, "pending reduction");
    let early = ok(cat.apply_due_retention_changes(at - 1).await, "apply early");
    assert!(early.iter().all(|x| x.id != c.id), "applied before its time");
    let applied = ok(cat.apply_due_retention_changes(at).await, "apply due");
    let mine: Vec<_> = applied.iter().filter(|x| x.id == c.id).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].state, ChangeState::Applied);
    assert_eq!(mine[0].decided_at, Some(at));
    let r = ok(cat.retention(ws.id).await, "retention");
    assert_eq!(r.tables.get(&table("logs")), Some(&2));
    assert!(r.pending.is_empty());
    let again = ok(cat.apply_due_retention_changes(at + DAY).await, "apply again");
    assert!(again.iter().all(|x| x.id != c.id), "applied twice");
}

/// A locked workspace refuses reductions (naming the lock), accepts
/// increases, and keeps an earlier pending reduction waiting until unlocked.
pub async fn locked_workspace_refuses_reductions_and_defers_pending_ones(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "ret-lock", T0).await;
    let at = T0 + 20_000 * DAY;
    let pending = change(ws.id, None, 14, 7, ChangeState::Pending, at);
    ok(cat.change_retention(&pending).await, "pending reduction");
    ok(cat.lock_workspace(ws.id, &lock("audit 7")).await, "lock");
    for c in [
        change(ws.id, None, 14, 7, ChangeState::Applied, T0),
        change(ws.id, Some("logs"), 14, 1, ChangeState::Pending, at),
    ] {
        match cat.change_retention(&c).await {
            Err(CatalogError::WorkspaceLocked { id, reason }) => {
                assert_eq!(id, ws.id);
                assert_eq!(reason, "audit 7");
            }
            other => panic!("reduction of a locked workspace: expected WorkspaceLocked, got {other:?}"),
        }
    }
    ok(cat.change_retention(&change(ws.id, Some("logs"), 14, 90, ChangeState::Applied, T0)).await, "increase while locked");
    let applied = ok(cat.apply_due_retention_changes(at).await, "apply while locked");
    assert!(applied.iter().all(|x| x.workspace_id != ws.id), "a locked workspace's reduction took effect");
    assert_eq!(ok(cat.retention(ws.id).await, "retention").default_days, 14);
    ok(cat.unlock_workspace(ws.id).await, "unlock");
    let applied = ok(cat.apply_due_retention_changes(at).await, "apply after unlock");
    assert!(applied.iter().any(|x| x.id == pending.id));
    assert_eq!(ok(cat.retention(ws.id).await, "retention").default_days, 7);
}

/// Cancelling returns the cancelled change; with nothing pending it is
/// NoPendingChange naming the scope.
pub async fn cancelling_without_a_pending_change_is_no_pending_change(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "ret-cancel", T0).await;
    let c = change(ws.id, Some("logs"), 14, 7, ChangeState::Pending, T0 + 30 * DAY);
    ok(cat.change_retention(&c).await, "pending reduction");
    assert!(matches!(cat.cancel_retention_change(ws.id, None, T0 + 1).await, Err(CatalogError::NoPendingChange { .. })));
    let cancelled = ok(cat.cancel_retention_change(ws.id, Some(&table("logs")), T0 + 2).await, "cancel");
    assert_eq!(cancelled.id, c.id);
    assert_eq!(cancelled.state, ChangeState::Cancelled);
    assert_eq!(cancelled.decided_at, Some(T0 + 2));
    match cat.cancel_retention_change(ws.id, Some(&table("logs")), T0 + 3).await {
        Err(e @ CatalogError::NoPendingChange { .. }) => assert!(e.to_string().contains("table logs"), "{e}"),
        other => panic!("second cancel: expected NoPendingChange, got {other:?}"),
    }
    assert!(ok(cat.retention(ws.id).await, "retention").pending.is_empty());
    assert!(matches!(
        cat.cancel_retention_change(WorkspaceId::new(), None, T0).await,
        Err(CatalogError::WorkspaceNotFound(_))
    ));
}

/// Deleting segments removes them from listings, records each deletion with
/// its counts, skips ids of other workspaces, and tracks object removal.
pub async fn deleting_segments_records_each_and_leaves_other_workspaces_alone(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "del", T0).await;
    let other = new_workspace(cat, "del-other", T0).await;
    let (a, b) = (segment(ws.id, "logs", 1, 2), segment(ws.id, "logs", 3, 4));
    let o = segment(other.id, "logs", 1, 2);
    ok(cat.commit_segments(&[a.clone(), b.clone(), o.clone()], &[], T0).await, "commit");
    let dels = ok(cat.delete_segments(ws.id, &[a.id, o.id, SegmentId::new()], DeletionReason::Retention, T0 + 9).await, "delete");
    assert_eq!(dels.len(), 1, "only the workspace's own, existing segment is deleted");
    let d = &dels[0];
    assert_eq!((d.segment_id, d.workspace_id, d.rows, d.bytes, d.min_time, d.max_time), (a.id, ws.id, a.rows, a.bytes, 1, 2));
    assert_eq!((d.reason, d.deleted_at, d.object_deleted_at, d.path.as_str()), (DeletionReason::Retention, T0 + 9, None, a.path.as_str()));
    assert_eq!(ok(cat.list_segments(ws.id, &table("logs"), None).await, "list"), vec![b.clone()]);
    assert_eq!(ok(cat.list_segments(other.id, &table("logs"), None).await, "list other"), vec![o]);
    assert_eq!(ok(cat.list_deletions(ws.id, 10).await, "list_deletions"), dels);
    assert!(ok(cat.list_deletions(other.id, 10).await, "list other deletions").is_empty());
    let pending = ok(cat.pending_object_deletions(100_000).await, "pending objects");
    assert!(pending.iter().any(|p| p.seq == d.seq));
    ok(cat.mark_objects_deleted(&[d.seq], T0 + 10).await, "mark");
    let pending = ok(cat.pending_object_deletions(100_000).await, "pending objects");
    assert!(pending.iter().all(|p| p.seq != d.seq));
    assert_eq!(ok(cat.list_deletions(ws.id, 10).await, "list_deletions")[0].object_deleted_at, Some(T0 + 10));
    let d2 = ok(cat.delete_segments(ws.id, &[b.id], DeletionReason::Purge, T0 + 11).await, "delete b");
    let listed = ok(cat.list_deletions(ws.id, 10).await, "list_deletions");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].seq, d2[0].seq, "newest first");
    assert!(listed[0].seq > listed[1].seq);
    assert_eq!(ok(cat.list_deletions(ws.id, 1).await, "limit").len(), 1);
}

/// A locked workspace's segments cannot be deleted; nothing is removed.
pub async fn locked_workspace_refuses_segment_deletion(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "del-lock", T0).await;
    let a = segment(ws.id, "logs", 1, 2);
    ok(cat.commit_segments(std::slice::from_ref(&a), &[], T0).await, "commit");
    ok(cat.lock_workspace(ws.id, &lock("hold")).await, "lock");
    assert!(matches!(
        cat.delete_segments(ws.id, &[a.id], DeletionReason::Retention, T0).await,
        Err(CatalogError::WorkspaceLocked { .. })
    ));
    assert_eq!(ok(cat.list_segments(ws.id, &table("logs"), None).await, "list"), vec![a]);
    assert!(ok(cat.list_deletions(ws.id, 10).await, "deletions").is_empty());
}

fn rollup_to(segments: &[Segment], until: TimestampMicros) -> RollupCommit {
    RollupCommit { segments: segments.to_vec(), until: Some(until), ..RollupCommit::default() }
}

/// A rollup commit registers its segments and moves the mark in one step;
/// a mark that would not move forward is refused and registers nothing.
pub async fn rollup_commits_its_segments_with_the_mark_and_only_forward(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "rollup", T0).await;
    let raw = table("performance");
    assert_eq!(ok(cat.rollup_mark(ws.id, &raw).await, "mark"), None);
    let a = segment(ws.id, "performance_rollup", T0, T0);
    ok(cat.commit_rollup(ws.id, &raw, &rollup_to(std::slice::from_ref(&a), T0 + DAY), T0).await, "commit_rollup");
    assert_eq!(ok(cat.rollup_mark(ws.id, &raw).await, "mark"), Some(T0 + DAY));
    assert_eq!(ok(cat.list_segments(ws.id, &table("performance_rollup"), None).await, "list"), vec![a]);
    let b = segment(ws.id, "performance_rollup", T0, T0);
    assert!(cat.commit_rollup(ws.id, &raw, &rollup_to(std::slice::from_ref(&b), T0 + DAY), T0).await.is_err(), "the mark did not move");
    assert_eq!(ok(cat.list_segments(ws.id, &table("performance_rollup"), None).await, "list").len(), 1);
    ok(cat.commit_rollup(ws.id, &raw, &rollup_to(&[], T0 + 2 * DAY), T0).await, "an empty rollup still moves the mark");
    assert_eq!(ok(cat.rollup_mark(ws.id, &raw).await, "mark"), Some(T0 + 2 * DAY));
    assert_eq!(ok(cat.rollup_mark(ws.id, &table("logs")).await, "other table"), None);
}

fn late(s: &Segment) -> LateSegment {
    LateSegment { segment_id: s.id, min_time: s.min_time, max_time: s.max_time }
}

/// An ingest commit records, in its own transaction, each segment with
/// rows before its table's rollup mark; a rollup that aggregated them
/// clears the records.
pub async fn ingest_records_segments_with_rows_before_the_rollup_mark_as_late(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "late", T0).await;
    let other = new_workspace(cat, "late-other", T0).await;
    let raw = table("performance");
    let before = segment(ws.id, "performance", T0, T0 + 5);
    ok(cat.commit_segments(std::slice::from_ref(&before), &[], T0).await, "before any mark");
    ok(cat.commit_rollup(ws.id, &raw, &rollup_to(&[], T0 + DAY), T0).await, "mark");
    let spanning = segment(ws.id, "performance", T0 + DAY - 1, T0 + 2 * DAY);
    let current = segment(ws.id, "performance", T0 + DAY, T0 + DAY + 5);
    let other_table = segment(ws.id, "logs", T0, T0 + 1);
    let other_ws = segment(other.id, "performance", T0, T0 + 1);
    ok(cat.commit_segments(&[spanning.clone(), current.clone(), other_table, other_ws], &[], T0 + DAY).await, "commit");
    assert_eq!(ok(cat.late_segments(ws.id, &raw).await, "late"), vec![late(&spanning)]);
    assert!(ok(cat.late_segments(other.id, &raw).await, "other workspace").is_empty());
    assert!(ok(cat.late_segments(ws.id, &table("logs")).await, "no mark").is_empty());
    let oldest = segment(ws.id, "performance", T0 - DAY, T0 - DAY);
    ok(cat.commit_segments(std::slice::from_ref(&oldest), &[], T0 + DAY + 1).await, "commit");
    assert_eq!(ok(cat.late_segments(ws.id, &raw).await, "late, oldest record first"), vec![late(&spanning), late(&oldest)]);
    let done = RollupCommit { late_done: vec![spanning.id], ..RollupCommit::default() };
    ok(cat.commit_rollup(ws.id, &raw, &done, T0 + DAY + 2).await, "re-roll");
    assert_eq!(ok(cat.late_segments(ws.id, &raw).await, "late"), vec![late(&oldest)]);
    assert_eq!(ok(cat.rollup_mark(ws.id, &raw).await, "mark unchanged"), Some(T0 + DAY));
}

/// A raw segment committed while a rollup read its range (so not in what
/// it read) is recorded late by the rollup's commit: no row is skipped.
pub async fn a_rollup_records_raw_segments_committed_while_it_read_as_late(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "late-race", T0).await;
    let raw = table("performance");
    let read = segment(ws.id, "performance", T0, T0 + 1);
    let meanwhile = segment(ws.id, "performance", T0 + 2, T0 + 3);
    let next_day = segment(ws.id, "performance", T0 + DAY, T0 + DAY);
    ok(cat.commit_segments(&[read.clone(), meanwhile.clone(), next_day], &[], T0).await, "commit");
    let c = RollupCommit { until: Some(T0 + DAY), read: vec![read.id], ranges: vec![(T0, T0 + DAY)], ..RollupCommit::default() };
    ok(cat.commit_rollup(ws.id, &raw, &c, T0 + 1).await, "rollup");
    assert_eq!(ok(cat.late_segments(ws.id, &raw).await, "late"), vec![late(&meanwhile)]);
}

/// Rolling a day up again replaces its rollup segments: each removed with
/// a deletion record (reason rollup) in the same transaction; refused
/// while locked, and refused whole when a segment to replace is gone.
pub async fn a_reroll_replaces_rollup_segments_with_deletion_records_unless_locked(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "reroll", T0).await;
    let raw = table("performance");
    let old = segment(ws.id, "performance_rollup", T0, T0);
    ok(cat.commit_rollup(ws.id, &raw, &rollup_to(std::slice::from_ref(&old), T0 + DAY), T0).await, "rollup");
    let new = segment(ws.id, "performance_rollup", T0, T0);
    let c = RollupCommit { segments: vec![new.clone()], replaces: vec![old.id], ..RollupCommit::default() };
    ok(cat.lock_workspace(ws.id, &lock("hold")).await, "lock");
    assert!(matches!(cat.commit_rollup(ws.id, &raw, &c, T0 + 1).await, Err(CatalogError::WorkspaceLocked { .. })));
    assert_eq!(ok(cat.list_segments(ws.id, &table("performance_rollup"), None).await, "unchanged"), vec![old.clone()]);
    ok(cat.unlock_workspace(ws.id).await, "unlock");
    let gone = RollupCommit { segments: vec![segment(ws.id, "performance_rollup", T0, T0)], replaces: vec![SegmentId::new()], ..RollupCommit::default() };
    assert!(cat.commit_rollup(ws.id, &raw, &gone, T0 + 1).await.is_err(), "a segment to replace is not registered");
    let dels = ok(cat.commit_rollup(ws.id, &raw, &c, T0 + 2).await, "re-roll");
    assert_eq!(dels.len(), 1);
    assert_eq!((dels[0].reason, dels[0].segment_id, dels[0].deleted_at, dels[0].object_deleted_at), (DeletionReason::Rollup, old.id, T0 + 2, None));
    assert_eq!(ok(cat.list_segments(ws.id, &table("performance_rollup"), None).await, "replaced"), vec![new]);
    assert_eq!(ok(cat.pending_object_deletions(1000).await, "pending").iter().filter(|d| d.segment_id == old.id).count(), 1);
    assert_eq!(ok(cat.rollup_mark(ws.id, &raw).await, "mark unchanged"), Some(T0 + DAY));
}

/// A day whose rows were removed for retention (or with their table or
/// workspace) is seen as such; a purge's removal is not.
pub async fn rows_expired_within_sees_retention_deletions_only(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "expired-within", T0).await;
    let raw = table("performance");
    let a = segment(ws.id, "performance", T0 + 10, T0 + 20);
    let b = segment(ws.id, "performance", T0 + 2 * DAY, T0 + 2 * DAY);
    ok(cat.commit_segments(&[a.clone(), b.clone()], &[], T0).await, "commit");
    assert!(!ok(cat.rows_expired_within(ws.id, &raw, T0, T0 + DAY).await, "nothing deleted"));
    ok(cat.delete_segments(ws.id, &[a.id], DeletionReason::Retention, T0).await, "expire a");
    ok(cat.delete_segments(ws.id, &[b.id], DeletionReason::Purge, T0).await, "purge b");
    assert!(ok(cat.rows_expired_within(ws.id, &raw, T0, T0 + DAY).await, "a's day"));
    assert!(ok(cat.rows_expired_within(ws.id, &raw, T0 + 20, T0 + 21).await, "a's last row"));
    assert!(!ok(cat.rows_expired_within(ws.id, &raw, T0 + 21, T0 + DAY).await, "after a"));
    assert!(!ok(cat.rows_expired_within(ws.id, &raw, T0 + 2 * DAY, T0 + 3 * DAY).await, "purged, not expired"));
    assert!(!ok(cat.rows_expired_within(ws.id, &table("logs"), T0, T0 + DAY).await, "another table"));
}

/// A purge that rewrites a late segment moves its record to the rewrite.
pub async fn a_purge_rewrite_carries_the_late_record(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "late-purge", T0).await;
    let raw = table("logs");
    ok(cat.commit_rollup(ws.id, &raw, &rollup_to(&[], T0 + DAY), T0).await, "mark");
    let a = segment(ws.id, "logs", T0, T0 + 5);
    ok(cat.commit_segments(std::slice::from_ref(&a), &[], T0).await, "late commit");
    let j = purge_job(ws.id, T0);
    ok(cat.create_purge(&j).await, "create");
    ok(cat.claim_purges(T0).await, "claim");
    let rewrite = segment(ws.id, "logs", T0, T0 + 5);
    ok(cat.purge_segment(j.id, a.id, Some(&rewrite), "{}", T0 + 1).await, "rewrite");
    let recs = ok(cat.late_segments(ws.id, &raw).await, "late");
    assert_eq!(recs.iter().map(|r| r.segment_id).collect::<Vec<_>>(), vec![rewrite.id]);
}

// ------------------------------------------------------------------- purge

fn purge_job(ws: WorkspaceId, not_before: TimestampMicros) -> PurgeJob {
    PurgeJob {
        id: JobId::new(),
        workspace_id: ws,
        tables: vec![table("logs")],
        predicate: "host = 'h1'".into(),
        state: PurgeState::Pending,
        created_at: T0,
        created_by: Some(PrincipalId::new()),
        not_before,
        started_at: None,
        finished_at: None,
        error: None,
        receipt: None,
    }
}

/// Indexes are stored for registered segments of the workspace only,
/// listed per table, and deleted with their segment.
pub async fn segment_indexes_are_kept_per_segment_and_go_with_it(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "idx", T0).await;
    let other = new_workspace(cat, "idx-other", T0).await;
    let (a, b) = (segment(ws.id, "logs", 1, 2), segment(ws.id, "metrics", 1, 2));
    let o = segment(other.id, "logs", 1, 2);
    ok(cat.commit_segments(&[a.clone(), b.clone(), o.clone()], &[], T0).await, "commit");
    ok(
        cat.put_segment_indexes(ws.id, &[(a.id, "{\"host\":1}".into()), (b.id, "{}".into()), (o.id, "x".into()), (SegmentId::new(), "y".into())]).await,
        "put",
    );
    let got = ok(cat.segment_indexes(ws.id, &table("logs")).await, "indexes");
    assert_eq!(got.len(), 1);
    assert_eq!(got.get(&a.id).map(String::as_str), Some("{\"host\":1}"));
    assert!(ok(cat.segment_indexes(other.id, &table("logs")).await, "other").is_empty(), "another workspace's segment got an index");
    ok(cat.delete_segments(ws.id, &[a.id], DeletionReason::Retention, T0).await, "delete");
    assert!(ok(cat.segment_indexes(ws.id, &table("logs")).await, "indexes").is_empty());
}

/// pending → running (only once due, not while locked) → completed with
/// its receipt; listing is newest first.
pub async fn purge_jobs_move_from_pending_to_running_to_completed(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "purge", T0).await;
    let at = T0 + 30_000 * DAY;
    let j = purge_job(ws.id, at);
    ok(cat.create_purge(&j).await, "create_purge");
    assert_eq!(ok(cat.get_purge(j.id).await, "get"), Some(j.clone()));
    let early = ok(cat.claim_purges(at - 1).await, "claim early");
    assert!(early.iter().all(|x| x.id != j.id), "claimed before not_before");
    ok(cat.lock_workspace(ws.id, &lock("hold")).await, "lock");
    assert!(ok(cat.claim_purges(at).await, "claim locked").iter().all(|x| x.id != j.id), "claimed while locked");
    ok(cat.unlock_workspace(ws.id).await, "unlock");
    let claimed = ok(cat.claim_purges(at).await, "claim");
    let mine = claimed.iter().find(|x| x.id == j.id).expect("the due job is claimed");
    assert_eq!((mine.state, mine.started_at), (PurgeState::Running, Some(at)));
    // A running job is returned again (a crash resumes it).
    assert!(ok(cat.claim_purges(at + 1).await, "claim again").iter().any(|x| x.id == j.id));
    let done = ok(cat.finish_purge(j.id, Ok("{\"receipt\":1}".into()), at + 2).await, "finish");
    assert_eq!((done.state, done.receipt.as_deref(), done.finished_at), (PurgeState::Completed, Some("{\"receipt\":1}"), Some(at + 2)));
    assert!(matches!(cat.finish_purge(j.id, Err("x".into()), at + 3).await, Err(CatalogError::PurgeState { state: PurgeState::Completed, .. })));
    let mut j2 = purge_job(ws.id, at);
    j2.created_at = T0 + 1;
    j2.tables = vec![];
    ok(cat.create_purge(&j2).await, "create second");
    let listed = ok(cat.list_purges(ws.id).await, "list");
    assert_eq!(listed.iter().map(|x| x.id).collect::<Vec<_>>(), vec![j2.id, j.id]);
    assert_eq!(listed[0].tables, Vec::<TableName>::new());
    assert!(matches!(cat.get_purge(JobId::new()).await, Ok(None)));
}

/// The jobs queries read are the pending, running and failed ones of the
/// workspace, oldest first: completed and cancelled jobs hide nothing.
pub async fn only_jobs_still_hiding_rows_are_listed_for_queries(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "purge-hiding", T0).await;
    let other = new_workspace(cat, "purge-hiding-other", T0).await;
    let at = T0 + 60_000 * DAY;
    let job = |n: i64, not_before: TimestampMicros| {
        let mut j = purge_job(ws.id, not_before);
        j.created_at = T0 + n;
        j
    };
    let (done, failed, running, cancelled, pending) = (job(1, at), job(2, at), job(3, at), job(4, at + DAY), job(5, at + DAY));
    for j in [&done, &failed, &running, &cancelled, &pending] {
        ok(cat.create_purge(j).await, "create");
    }
    ok(cat.create_purge(&purge_job(other.id, at + DAY)).await, "other workspace");
    ok(cat.claim_purges(at).await, "claim");
    ok(cat.finish_purge(done.id, Ok("{}".into()), at + 1).await, "complete");
    ok(cat.finish_purge(failed.id, Err("disk on fire".into()), at + 1).await, "fail");
    ok(cat.cancel_purge(cancelled.id, at + 1).await, "cancel");
    let got = ok(cat.hiding_purges(ws.id).await, "hiding");
    let got: Vec<(JobId, PurgeState)> = got.iter().map(|j| (j.id, j.state)).collect();
    assert_eq!(got, vec![(failed.id, PurgeState::Failed), (running.id, PurgeState::Running), (pending.id, PurgeState::Pending)]);
    assert_eq!(ok(cat.list_purges(ws.id).await, "all").len(), 5);
}

/// Cancel works on a pending job only; a locked workspace accepts no job.
pub async fn purge_jobs_are_cancelled_only_while_pending_and_never_created_while_locked(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "purge-cancel", T0).await;
    let j = purge_job(ws.id, T0 + 40_000 * DAY);
    ok(cat.create_purge(&j).await, "create");
    let c = ok(cat.cancel_purge(j.id, T0 + 5).await, "cancel");
    assert_eq!((c.state, c.finished_at), (PurgeState::Cancelled, Some(T0 + 5)));
    match cat.cancel_purge(j.id, T0 + 6).await {
        Err(e @ CatalogError::PurgeState { .. }) => assert!(e.to_string().contains("is cancelled"), "{e}"),
        other => panic!("second cancel: {other:?}"),
    }
    assert!(matches!(cat.cancel_purge(JobId::new(), T0).await, Err(CatalogError::PurgeNotFound(_))));
    ok(cat.lock_workspace(ws.id, &lock("hold 9")).await, "lock");
    match cat.create_purge(&purge_job(ws.id, T0)).await {
        Err(CatalogError::WorkspaceLocked { reason, .. }) => assert_eq!(reason, "hold 9"),
        other => panic!("purge of a locked workspace: {other:?}"),
    }
    assert!(matches!(cat.create_purge(&purge_job(WorkspaceId::new(), T0)).await, Err(CatalogError::WorkspaceNotFound(_))));
}

/// A purge step removes the old segment (recorded, reason purge), registers
/// its replacement and appends the receipt line, all at once; only for a
/// running job, never while locked.
pub async fn purge_steps_replace_segments_atomically_and_refuse_while_locked(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "purge-step", T0).await;
    let (a, b) = (segment(ws.id, "logs", 1, 2), segment(ws.id, "logs", 3, 4));
    ok(cat.commit_segments(&[a.clone(), b.clone()], &[], T0).await, "commit");
    let j = purge_job(ws.id, T0);
    ok(cat.create_purge(&j).await, "create");
    let new_a = segment(ws.id, "logs", 1, 2);
    assert!(matches!(cat.purge_segment(j.id, a.id, Some(&new_a), "{}", T0).await, Err(CatalogError::PurgeState { .. })), "pending job");
    ok(cat.claim_purges(T0).await, "claim");
    let d = ok(cat.purge_segment(j.id, a.id, Some(&new_a), "{\"n\":1}", T0 + 1).await, "step 1");
    assert_eq!((d.reason, d.segment_id), (DeletionReason::Purge, a.id));
    ok(cat.lock_workspace(ws.id, &lock("hold")).await, "lock");
    assert!(matches!(cat.purge_segment(j.id, b.id, None, "{}", T0).await, Err(CatalogError::WorkspaceLocked { .. })));
    ok(cat.unlock_workspace(ws.id).await, "unlock");
    let other_table = segment(ws.id, "metrics", 1, 2);
    assert!(cat.purge_segment(j.id, b.id, Some(&other_table), "{}", T0).await.is_err(), "a replacement in another table");
    assert!(cat.purge_segment(j.id, a.id, None, "{}", T0).await.is_err(), "a segment already gone");
    ok(cat.purge_segment(j.id, b.id, None, "{\"n\":2}", T0 + 2).await, "step 2: emptied");
    let mut listed = ok(cat.list_segments(ws.id, &table("logs"), None).await, "list");
    listed.sort_by_key(|s| s.id);
    assert_eq!(listed, vec![new_a]);
    assert_eq!(ok(cat.purge_entries(j.id).await, "entries"), vec!["{\"n\":1}".to_string(), "{\"n\":2}".to_string()]);
    assert_eq!(ok(cat.list_deletions(ws.id, 10).await, "deletions").len(), 2);
    let f = ok(cat.finish_purge(j.id, Err("disk on fire".into()), T0 + 3).await, "fail");
    assert_eq!((f.state, f.error.as_deref()), (PurgeState::Failed, Some("disk on fire")));
    // A failed job can run again; its receipt lines stay.
    ok(cat.lock_workspace(ws.id, &lock("hold")).await, "lock");
    assert!(matches!(cat.retry_purge(j.id, T0 + 4).await, Err(CatalogError::WorkspaceLocked { .. })));
    ok(cat.unlock_workspace(ws.id).await, "unlock");
    let r = ok(cat.retry_purge(j.id, T0 + 4).await, "retry");
    assert_eq!((r.state, r.not_before, r.error.as_deref(), r.started_at), (PurgeState::Pending, T0 + 4, None, None));
    assert!(matches!(cat.retry_purge(j.id, T0 + 5).await, Err(CatalogError::PurgeState { state: PurgeState::Pending, .. })));
    assert_eq!(ok(cat.purge_entries(j.id).await, "entries").len(), 2);
    assert!(matches!(cat.retry_purge(JobId::new(), T0).await, Err(CatalogError::PurgeNotFound(_))));
}

/// A deleted workspace is gone from every lookup, its agents are revoked,
/// its pending work cancelled, its name free; its segments stay until the
/// caller removes them; a locked one is refused.
pub async fn deleting_a_workspace_tombstones_it_revokes_its_agents_and_frees_its_name(cat: &dyn Catalog) {
    let ws = new_workspace(cat, "doomed", T0).await;
    let a = agent(ws.id, "host-1", T0);
    ok(cat.add_agent(&a).await, "add_agent");
    let seg = segment(ws.id, "logs", 1, 2);
    ok(cat.commit_segments(std::slice::from_ref(&seg), &[], T0).await, "commit");
    let j = purge_job(ws.id, T0 + 50_000 * DAY);
    ok(cat.create_purge(&j).await, "purge");
    ok(cat.lock_workspace(ws.id, &lock("keep")).await, "lock");
    assert!(matches!(cat.delete_workspace(ws.id, T0 + 1).await, Err(CatalogError::WorkspaceLocked { .. })));
    assert!(ok(cat.get_workspace(ws.id).await, "get").is_some());
    ok(cat.unlock_workspace(ws.id).await, "unlock");
    ok(cat.delete_workspace(ws.id, T0 + 2).await, "delete_workspace");
    assert_eq!(ok(cat.get_workspace(ws.id).await, "get"), None);
    assert!(ok(cat.list_workspaces().await, "list").iter().all(|w| w.id != ws.id));
    assert!(ok(cat.deleted_workspaces().await, "deleted").contains(&(ws.id, T0 + 2)));
    let got = ok(cat.get_agent(a.id).await, "get_agent").expect("the agent record stays");
    assert_eq!(got.revoked_at, Some(T0 + 2));
    assert_eq!(ok(cat.get_purge(j.id).await, "get_purge").map(|j| j.state), Some(PurgeState::Cancelled));
    assert_eq!(ok(cat.list_segments(ws.id, &table("logs"), None).await, "segments"), vec![seg.clone()], "bytes are the caller's to remove");
    ok(cat.delete_segments(ws.id, &[seg.id], DeletionReason::Workspace, T0 + 3).await, "remove its segments");
    assert!(matches!(cat.delete_workspace(ws.id, T0 + 4).await, Err(CatalogError::WorkspaceNotFound(_))), "deleted twice");
    // The name is free again.
    let again = Workspace { id: WorkspaceId::new(), name: ws.name.clone(), ..ws.clone() };
    ok(cat.create_workspace(&again).await, "the name is reusable");
}
