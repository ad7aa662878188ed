//! Rollups: de-identified daily aggregates of a raw table, written to
//! `<table>_rollup` before the raw rows expire, kept for the plan's longer
//! rollup period.
//!
//! # What a rollup row holds
//!
//! One row per UTC day and combination of the table's *non-identifying*
//! dimensions: the `level` envelope column and every `str` or `bool` field
//! the telemetry registry marks `pii = "no"`. Its columns:
//!
//! | column | meaning |
//! |---|---|
//! | `time` | the day (00:00 UTC) |
//! | `level`, the dimensions | the group |
//! | `events` | rows in the group |
//! | `hosts` | distinct hosts in the group (at least k) |
//! | `<m>_avg`, `<m>_p50`, `<m>_p90`, `<m>_p99` | for every `int` or `float` field marked `pii = "no"` |
//!
//! `host` and `message` are empty and `agent_id` is the nil id: nothing in a
//! rollup names a host. Groups with fewer than k distinct hosts
//! (`retention.rollup_min_hosts`, default 5) are left out (k-anonymity);
//! no minimum or maximum is kept, as those would be one host's value.
//! Percentiles are approximate (t-digest).
//!
//! # When
//!
//! Every sweeper pass rolls up each raw table's complete days
//! ([`roll_up_complete_days`]): whole UTC days that ended at least
//! [`ROLLUP_DELAY`] (a day) ago, from the table's rollup mark (the end of
//! the last day rolled up) on, reading the segments that overlap them. So
//! a day is normally rolled up about a day after it ends, long before its
//! rows expire, and the sweeper drops expired segments without reading
//! them. When a retention is shorter than that (or was just reduced), the
//! sweeper rolls the missing days up first ([`before_expiry`]): raw rows
//! never expire before their day is rolled up. The rollup segments (one per
//! day) and the new mark are committed in one catalog transaction, so a day
//! is rolled up exactly once.
//!
//! # Late rows
//!
//! Rows committed for a day after it was rolled up are recorded late by the
//! catalog, and every pass first rolls those days up again
//! ([`roll_up_late_days`]): from all their raw rows, replacing the day's
//! rollup segments, while none of the day's rows has expired; otherwise
//! the late rows on their own, added beside the day's rollup.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use custos_catalog::{RollupCommit, Segment, Workspace};
use custos_model::registry::Registry;
use custos_model::{AgentId, Event, Level, PiiClass, SegmentId, TableName, TimestampMicros, Value, ValueType};
use custos_store::purge::Predicate;
use custos_store::retention::{self as rules, DAY_MICROS};
use datafusion::catalog::TableProvider;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::query::SegmentTable;
use crate::{AppState, ServerError};

/// Percentiles kept for every measure.
const PERCENTILES: [(&str, f64); 3] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)];

fn day_floor(t: TimestampMicros) -> TimestampMicros {
    t.div_euclid(DAY_MICROS) * DAY_MICROS
}

/// SQL for the UTC day (its start, microseconds) of a row's `time`,
/// rounding down before 1970 too.
fn day_sql() -> String {
    format!("(CAST(\"time\" AS BIGINT) - ((CAST(\"time\" AS BIGINT) % {DAY_MICROS}) + {DAY_MICROS}) % {DAY_MICROS})")
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The dimensions and measures of a table's rollup, among the columns
/// present in its segments.
fn shape(reg: &Registry, table: &TableName, present: &[String]) -> Option<(Vec<String>, Vec<String>, custos_model::Category)> {
    let def = reg.table(table.as_str()).or_else(|| reg.log_template())?;
    let has = |n: &str| present.iter().any(|p| p == n);
    let mut dims = vec!["level".to_string()];
    let mut measures = Vec::new();
    for f in &def.fields {
        if f.pii != PiiClass::No || !has(&f.name) {
            continue;
        }
        match f.value_type {
            ValueType::Str | ValueType::Bool => dims.push(f.name.clone()),
            ValueType::Int | ValueType::Float => measures.push(f.name.clone()),
        }
    }
    Some((dims, measures, def.category))
}

/// The SQL that aggregates `src` over `[start, end)`.
fn rollup_sql(dims: &[String], measures: &[String], start: TimestampMicros, end: TimestampMicros, k: u32) -> String {
    let mut cols = vec![format!("{} AS \"day\"", day_sql())];
    cols.extend(dims.iter().map(|d| quote(d)));
    cols.push("count(*) AS \"events\"".into());
    cols.push("count(DISTINCT \"host\") AS \"hosts\"".into());
    for m in measures {
        let x = format!("CAST({} AS DOUBLE)", quote(m));
        cols.push(format!("avg({x}) AS {}", quote(&format!("{m}_avg"))));
        for (name, p) in PERCENTILES {
            cols.push(format!("approx_percentile_cont({x}, {p}) AS {}", quote(&format!("{m}_{name}"))));
        }
    }
    let mut group = vec!["1".to_string()];
    group.extend(dims.iter().map(|d| quote(d)));
    format!(
        "SELECT {} FROM src WHERE CAST(\"time\" AS BIGINT) >= {start} AND CAST(\"time\" AS BIGINT) < {end} \
         GROUP BY {} HAVING count(DISTINCT \"host\") >= {k}",
        cols.join(", "),
        group.join(", ")
    )
}

/// Rows of the aggregate as rollup events.
fn to_events(batches: &[RecordBatch], table: &TableName, category: custos_model::Category) -> Result<Vec<Event>, ServerError> {
    let bad = |m: String| ServerError::Internal(format!("rollup of {table}: {m}"));
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        for row in 0..b.num_rows() {
            let mut ev = Event {
                table: table.clone(),
                time: 0,
                level: Level::Security,
                category,
                host: String::new(),
                message: String::new(),
                attrs: BTreeMap::new(),
            };
            for (i, field) in schema.fields().iter().enumerate() {
                let col = b.column(i);
                if col.is_null(row) {
                    continue;
                }
                let name = field.name().as_str();
                let v = match col.data_type() {
                    DataType::Int64 => Value::Int(col.as_primitive::<arrow::datatypes::Int64Type>().value(row)),
                    DataType::UInt8 => Value::Int(i64::from(col.as_primitive::<arrow::datatypes::UInt8Type>().value(row))),
                    DataType::Float64 => Value::Float(col.as_primitive::<arrow::datatypes::Float64Type>().value(row)),
                    DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
                    DataType::Utf8 => Value::Str(col.as_string::<i32>().value(row).to_string()),
                    DataType::Utf8View => Value::Str(col.as_string_view().value(row).to_string()),
                    other => return Err(bad(format!("unexpected column type {other} of {name}"))),
                };
                match (name, v) {
                    ("day", Value::Int(t)) => ev.time = t,
                    ("level", Value::Int(l)) => {
                        ev.level = u8::try_from(l).ok().and_then(|l| Level::try_from(l).ok()).ok_or_else(|| bad(format!("level {l}")))?
                    }
                    (_, v) => {
                        ev.attrs.insert(name.to_string(), v);
                    }
                }
            }
            out.push(ev);
        }
    }
    Ok(out)
}

/// Rolls up every complete day of `table` not rolled up yet: days that
/// ended at least [`ROLLUP_DELAY`] before `now` (late rows of a day still
/// arrive meanwhile), after rolling up again the days that late rows
/// reached ([`roll_up_late_days`]). Returns the rollup rows written.
pub async fn roll_up_complete_days(s: &Arc<AppState>, ws: &Workspace, table: &TableName, now: TimestampMicros) -> Result<u64, ServerError> {
    let again = roll_up_late_days(s, ws, table).await?;
    Ok(again + roll_up_until(s, ws, table, day_floor(now.saturating_sub(ROLLUP_DELAY))).await?)
}

/// Makes sure every day up to the end of the last day `expiring` reaches
/// is rolled up, late rows included, before those segments are dropped (it
/// already is unless the retention is shorter than [`ROLLUP_DELAY`] plus a
/// day, or was just reduced). Returns the rollup rows written.
pub async fn before_expiry(s: &Arc<AppState>, ws: &Workspace, table: &TableName, expiring: &[Segment]) -> Result<u64, ServerError> {
    let Some(last) = expiring.iter().map(|x| x.max_time).max() else { return Ok(0) };
    let again = roll_up_late_days(s, ws, table).await?;
    Ok(again + roll_up_until(s, ws, table, day_floor(last).saturating_add(DAY_MICROS)).await?)
}

/// How long after a day ends it is rolled up.
pub const ROLLUP_DELAY: TimestampMicros = DAY_MICROS;

/// One rollup of a raw table: what its steps share, read once.
struct Rollup<'a> {
    s: &'a Arc<AppState>,
    ws: &'a Workspace,
    /// The raw table.
    table: &'a TableName,
    /// Its rollup table.
    target: TableName,
    /// The predicates of accepted purges hiding rows of `table`: those
    /// rows are not aggregated either.
    hidden: Vec<Predicate>,
}

impl<'a> Rollup<'a> {
    /// `None` for a table that has no rollup table (a rollup table itself).
    async fn of(s: &'a Arc<AppState>, ws: &'a Workspace, table: &'a TableName) -> Result<Option<Self>, ServerError> {
        let Some(target) = rules::rollup_table(table) else { return Ok(None) };
        let hidden = crate::query::Visibility::hiding(crate::purge::hidden(s, ws.id).await?).hidden_in(table);
        Ok(Some(Self { s, ws, table, target, hidden }))
    }

    /// The rollup rows of `segments` over `[from, to)`, one per day and
    /// group (`None`: not a registry table, so nothing is known to be
    /// non-identifying). Damaged segments are recorded as data loss and
    /// fail the rollup.
    async fn aggregate(&self, segments: Vec<Segment>, from: TimestampMicros, to: TimestampMicros) -> Result<Option<Vec<Event>>, ServerError> {
        let (s, ws, table) = (self.s, self.ws, self.table);
        let incidents = crate::query::Incidents::default();
        let provider = SegmentTable::new(segments, s.storage.clone(), s.keys.clone(), 1)
            .with_hidden(self.hidden.clone())
            .with_incidents(incidents.clone());
        let present: Vec<String> = provider.schema().fields().iter().map(|f| f.name().clone()).collect();
        let Some((dims, measures, category)) = shape(Registry::builtin(), table, &present) else { return Ok(None) };
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        ctx.register_table("src", Arc::new(provider)).map_err(|e| ServerError::Internal(format!("rollup: {e}")))?;
        let sql = rollup_sql(&dims, &measures, from, to, s.config.retention.rollup_min_hosts);
        let batches = async { ctx.sql(&sql).await?.collect().await }.await;
        let found: Vec<crate::query::Incident> = incidents.lock().map(|v| v.clone()).unwrap_or_default();
        for i in found {
            crate::query::record_data_loss(s, ws.id, &i).await;
        }
        let batches = batches.map_err(|e| ServerError::Internal(format!("rollup of {table} in workspace {}: {e}", ws.id)))?;
        Ok(Some(to_events(&batches, &self.target, category)?))
    }

    /// Writes `events` (rollup rows) as sealed segments of the rollup
    /// table, one per day, so that a day rolled up again replaces its own
    /// segments only. Returns their catalog entries (not registered yet).
    async fn write_days(&self, events: Vec<Event>) -> Result<Vec<Segment>, ServerError> {
        let (s, ws, target) = (self.s, self.ws, &self.target);
        let nil: AgentId = "00000000-0000-0000-0000-000000000000"
            .parse()
            .map_err(|e| ServerError::Internal(format!("nil agent id: {e}")))?;
        let mut days: BTreeMap<TimestampMicros, Vec<Event>> = BTreeMap::new();
        for ev in events {
            days.entry(day_floor(ev.time)).or_default().push(ev);
        }
        let mut written = Vec::new();
        for (_, rows) in days {
            let mut builder = custos_store::SegmentBuilder::new(ws.id, target.clone());
            for ev in &rows {
                builder.push(nil, ev);
            }
            let id = SegmentId::new();
            let keys = s.keys.clone();
            let encoded = tokio::task::spawn_blocking(move || builder.finish_sealed(id, keys.as_ref()))
                .await
                .map_err(|e| ServerError::Internal(format!("rollup encode task: {e}")))??;
            let entry = crate::ingest::catalog_entry(ws.id, target.clone(), id, &encoded, s.clock.now());
            s.storage.put(&entry.path, encoded.bytes).await?;
            written.push(entry);
        }
        Ok(written)
    }
}

/// Rolls up the days of `table` from its rollup mark (or its first row's
/// day) to `end` (exclusive, a day boundary); returns the rows written.
/// Rollup tables themselves are not rolled up.
async fn roll_up_until(s: &Arc<AppState>, ws: &Workspace, table: &TableName, end: TimestampMicros) -> Result<u64, ServerError> {
    if rules::rollup_table(table).is_none() {
        return Ok(0);
    }
    let start = match s.catalog.rollup_mark(ws.id, table).await? {
        Some(m) => m,
        None => match s.catalog.list_segments(ws.id, table, None).await?.iter().map(|x| x.min_time).min() {
            Some(first) => day_floor(first),
            None => return Ok(0),
        },
    };
    if start >= end {
        return Ok(0);
    }
    let Some(r) = Rollup::of(s, ws, table).await? else { return Ok(0) };
    let segments = s.catalog.list_segments(ws.id, table, Some((start, end - 1))).await?;
    let read: Vec<SegmentId> = segments.iter().map(|x| x.id).collect();
    let events = r.aggregate(segments, start, end).await?.unwrap_or_default();
    let rows = events.len() as u64;
    let written = r.write_days(events).await?;
    let commit = RollupCommit { segments: written, until: Some(end), read, ranges: vec![(start, end)], ..RollupCommit::default() };
    s.catalog.commit_rollup(ws.id, table, &commit, s.clock.now()).await?;
    tracing::info!(workspace = %ws.id, table = %table, rollup = %r.target, rows, from = start, to = end, "rolled up");
    Ok(rows)
}

/// Rolls up again the days that late rows reached: rows committed for a
/// day after it was rolled up (the catalog records their segments at
/// ingest, [`custos_catalog::Catalog::late_segments`]).
///
/// A day none of whose rows has expired yet is rolled up again from all
/// its raw rows, and its rollup segments are replaced in the same catalog
/// transaction: the result is exactly what rolling it up once, with the
/// late rows on time, would have given. A day some of whose rows already
/// expired cannot be recomputed; its late rows are rolled up on their own
/// and added beside the day's existing rollup rows (k-anonymity applies to
/// them alone). Either way the late records are cleared in that same
/// transaction, so a crash repeats the work and never adds rows twice.
/// Returns the rollup rows written.
pub async fn roll_up_late_days(s: &Arc<AppState>, ws: &Workspace, table: &TableName) -> Result<u64, ServerError> {
    let late = s.catalog.late_segments(ws.id, table).await?;
    if late.is_empty() {
        return Ok(0);
    }
    let late_done: Vec<SegmentId> = late.iter().map(|l| l.segment_id).collect();
    let (Some(r), Some(mark)) = (Rollup::of(s, ws, table).await?, s.catalog.rollup_mark(ws.id, table).await?) else {
        s.catalog.commit_rollup(ws.id, table, &RollupCommit { late_done, ..RollupCommit::default() }, s.clock.now()).await?;
        return Ok(0);
    };
    // The late segments still registered (a dropped one's rows are gone).
    let lo = late.iter().map(|l| l.min_time).min().unwrap_or(mark);
    let hi = late.iter().map(|l| l.max_time).max().unwrap_or(mark).min(mark - 1);
    let wanted: std::collections::HashSet<SegmentId> = late_done.iter().copied().collect();
    let late_segs: Vec<Segment> = if lo <= hi {
        s.catalog.list_segments(ws.id, table, Some((lo, hi))).await?.into_iter().filter(|x| wanted.contains(&x.id)).collect()
    } else {
        Vec::new()
    };
    let days = late_days(s, late_segs.clone(), mark).await?;
    let mut commit = RollupCommit { late_done, ..RollupCommit::default() };
    let mut events = Vec::new();
    let mut whole = Vec::new();
    for day in days {
        let next = day.saturating_add(DAY_MICROS);
        if s.catalog.rows_expired_within(ws.id, table, day, next).await? {
            let mine: Vec<Segment> = late_segs.iter().filter(|x| x.min_time < next && x.max_time >= day).cloned().collect();
            let added = r.aggregate(mine, day, next).await?.unwrap_or_default();
            tracing::info!(workspace = %ws.id, table = %table, day, rows = added.len(), "late rows of a partly expired day rolled up on their own");
            events.extend(added);
        } else {
            let segs = s.catalog.list_segments(ws.id, table, Some((day, next - 1))).await?;
            commit.read.extend(segs.iter().map(|x| x.id));
            commit.ranges.push((day, next));
            events.extend(r.aggregate(segs, day, next).await?.unwrap_or_default());
            whole.push((day, next));
        }
    }
    // The rollup segments of the days rolled up again are replaced; one
    // that also holds other days (written before rollups were per day)
    // is rewritten without these days.
    let mut old: BTreeMap<SegmentId, Segment> = BTreeMap::new();
    for &(day, next) in &whole {
        for x in s.catalog.list_segments(ws.id, &r.target, Some((day, next - 1))).await? {
            old.insert(x.id, x);
        }
    }
    for x in old.values() {
        commit.replaces.push(x.id);
        if whole.iter().any(|&(d, n)| x.min_time >= d && x.max_time < n) {
            continue;
        }
        let bytes = s.storage.get(&x.path).await?;
        let (keys, ranges, id) = (s.keys.clone(), whole.clone(), SegmentId::new());
        let outcome =
            tokio::task::spawn_blocking(move || custos_store::purge::remove_time_ranges(&bytes, &ranges, id, Some(keys.as_ref())))
                .await
                .map_err(|e| ServerError::Internal(format!("rollup rewrite task: {e}")))??;
        if let Some(enc) = outcome.replacement {
            let entry = crate::ingest::catalog_entry(ws.id, r.target.clone(), id, &enc, s.clock.now());
            s.storage.put(&entry.path, enc.bytes).await?;
            commit.segments.push(entry);
        }
    }
    let rows = events.len() as u64;
    commit.segments.extend(r.write_days(events).await?);
    s.catalog.commit_rollup(ws.id, table, &commit, s.clock.now()).await?;
    tracing::info!(workspace = %ws.id, table = %table, rollup = %r.target, rows, days = whole.len(), replaced = commit.replaces.len(), "late rows rolled up");
    Ok(rows)
}

/// The days (before `mark`) on which `segments` hold rows, read from
/// their `time` column alone.
async fn late_days(s: &Arc<AppState>, segments: Vec<Segment>, mark: TimestampMicros) -> Result<Vec<TimestampMicros>, ServerError> {
    if segments.is_empty() {
        return Ok(Vec::new());
    }
    let provider = SegmentTable::new(segments, s.storage.clone(), s.keys.clone(), 1);
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.register_table("late", Arc::new(provider)).map_err(|e| ServerError::Internal(format!("late days: {e}")))?;
    let sql = format!(
        "SELECT DISTINCT {} AS \"day\" FROM late WHERE CAST(\"time\" AS BIGINT) < {mark} ORDER BY 1",
        day_sql()
    );
    let batches = async { ctx.sql(&sql).await?.collect().await }
        .await
        .map_err(|e| ServerError::Internal(format!("late days: {e}")))?;
    let mut days = Vec::new();
    for b in &batches {
        let col = b.column(0).as_primitive_opt::<arrow::datatypes::Int64Type>().ok_or_else(|| ServerError::Internal("late days: not integers".into()))?;
        days.extend(col.iter().flatten());
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn performance_rolls_up_by_level_with_its_measures_and_no_identifying_field() {
        let t = TableName::new("performance").unwrap();
        let present: Vec<String> = ["time", "level", "host", "cpu_percent", "load1", "interval_secs"].iter().map(|s| s.to_string()).collect();
        let (dims, measures, _) = shape(Registry::builtin(), &t, &present).unwrap();
        assert_eq!(dims, vec!["level"]);
        assert!(measures.contains(&"cpu_percent".to_string()) && measures.contains(&"load1".to_string()));
        assert!(!measures.iter().any(|m| m == "memory_used_bytes"), "only columns present in the segments");
    }

    #[test]
    fn log_tables_roll_up_by_their_non_identifying_fields_only() {
        let t = TableName::new("app_logs").unwrap();
        let present: Vec<String> = ["severity", "file", "source", "truncated"].iter().map(|s| s.to_string()).collect();
        let (dims, measures, category) = shape(Registry::builtin(), &t, &present).unwrap();
        assert_eq!(category, custos_model::Category::Logs);
        assert!(dims.contains(&"severity".to_string()));
        assert!(!dims.contains(&"file".to_string()), "file may hold personal data");
        assert!(measures.is_empty());
    }

    #[test]
    fn rollup_sql_keeps_only_groups_of_k_hosts() {
        let sql = rollup_sql(&["level".into()], &["cpu_percent".into()], 0, DAY_MICROS, 5);
        assert!(sql.contains("HAVING count(DISTINCT \"host\") >= 5"), "{sql}");
        assert!(!sql.contains("min(") && !sql.contains("max("), "{sql}");
    }
}
