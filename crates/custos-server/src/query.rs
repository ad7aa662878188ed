//! SQL over one workspace's segments, with Apache DataFusion.
//!
//! Each query gets a fresh `SessionContext` in which only the tables of the
//! caller's workspace are registered, each as a [`SegmentTable`] that reads
//! that workspace's segments through the storage trait. Nothing else is
//! reachable: DDL, DML and statements are refused, and there is no file or
//! URL table function. Isolation therefore does not depend on filtering rows:
//! another workspace's segments are never even listed.

use crate::{AppState, ServerError};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use custos_catalog::{Catalog, Segment};
use custos_model::api::QueryResponse;
use custos_model::{TableName, WorkspaceId};
use custos_store::{KeyProvider, Storage};
use datafusion::catalog::{Session, TableProvider};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tables every workspace has, even before any data arrives, so that a query
/// on an empty workspace returns no rows rather than "table not found":
/// every table of the telemetry registry (`registry/telemetry.toml`).
pub fn standard_tables() -> impl Iterator<Item = &'static TableName> {
    custos_model::registry::Registry::builtin().tables().iter().map(|t| &t.name)
}

/// What of a workspace's stored rows a query may see. The default sees
/// everything.
#[derive(Clone, Debug, Default)]
pub struct Visibility {
    /// The retention (and the time) that gives each table's cutoff: rows
    /// before it have expired and are hidden.
    retention: Option<(custos_store::retention::Retention, custos_model::TimestampMicros)>,
    /// Rows matching these are hidden (accepted purges): (tables, empty for
    /// every table; predicate).
    pub hidden: Vec<(Vec<TableName>, custos_store::purge::Predicate)>,
}

impl Visibility {
    /// Hide rows older than each table's retention at `now`.
    pub fn with_retention(r: custos_store::retention::Retention, now: custos_model::TimestampMicros) -> Self {
        Self { retention: Some((r, now)), hidden: Vec::new() }
    }

    /// Hide only the rows `hidden` matches (no retention cutoff).
    pub fn hiding(hidden: Vec<(Vec<TableName>, custos_store::purge::Predicate)>) -> Self {
        Self { retention: None, hidden }
    }

    /// The predicates hiding rows of `table`.
    pub fn hidden_in(&self, table: &TableName) -> Vec<custos_store::purge::Predicate> {
        self.hidden.iter().filter(|(t, _)| t.is_empty() || t.contains(table)).map(|(_, p)| p.clone()).collect()
    }

    /// The oldest visible time of `table` (None: no limit).
    pub fn cutoff(&self, table: &TableName) -> Option<custos_model::TimestampMicros> {
        self.retention.as_ref().map(|(r, now)| r.cutoff(table, *now))
    }
}

/// The tables a workspace's queries see: those with data, every standard
/// table, and the rollup table of each (empty ones return no rows rather
/// than "table not found").
pub fn queryable_tables(with_data: Vec<TableName>) -> Vec<TableName> {
    let mut all: std::collections::BTreeSet<TableName> = with_data.into_iter().collect();
    all.extend(standard_tables().cloned());
    let rollups: Vec<TableName> = all.iter().filter_map(custos_store::retention::rollup_table).collect();
    all.extend(rollups);
    all.into_iter().collect()
}

/// A table of one workspace, backed by its segments.
#[derive(Debug)]
pub struct SegmentTable {
    segments: Vec<Segment>,
    /// Rows before this time are hidden (expired).
    min_time: Option<custos_model::TimestampMicros>,
    /// Rows matching any of these are hidden (accepted purges).
    hidden: Arc<Vec<custos_store::purge::Predicate>>,
    schema: SchemaRef,
    storage: Arc<dyn Storage>,
    /// Opens the sealed segments.
    keys: Arc<dyn KeyProvider>,
    partitions: usize,
    /// Segments found damaged or failing authentication while scanning.
    incidents: Incidents,
}

/// A stored segment that failed its integrity checks during a query: the
/// caller records it (a data-loss incident for the workspace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incident {
    /// The segment.
    pub segment: custos_model::SegmentId,
    /// Its object path.
    pub path: String,
    /// The check that failed.
    pub reason: String,
}

/// Incidents gathered by the tables of one query.
pub type Incidents = Arc<std::sync::Mutex<Vec<Incident>>>;

impl Incident {
    /// The incident for `seg` if `e` is an integrity failure (a damaged or
    /// tampered segment), None for any other error.
    pub fn of(seg: &Segment, e: &custos_store::StoreError) -> Option<Incident> {
        matches!(e, custos_store::StoreError::Tampered { .. } | custos_store::StoreError::CorruptSegment(_))
            .then(|| Incident { segment: seg.id, path: seg.path.clone(), reason: e.to_string() })
    }
}

/// Records a data-loss incident when `e` is an integrity failure of `seg`
/// (any reader: purge, export, rollup).
pub async fn note_integrity(s: &AppState, seg: &Segment, e: &custos_store::StoreError) {
    if let Some(i) = Incident::of(seg, e) {
        record_data_loss(s, seg.workspace_id, &i).await;
    }
}

/// A stored segment failed its integrity checks: a data-loss incident for
/// the workspace, in its audit log (owners and auditors see it with
/// `custos audit log`), in the server log and in
/// `custos_segment_integrity_failures_total`.
pub async fn record_data_loss(s: &AppState, ws: WorkspaceId, i: &Incident) {
    tracing::error!(workspace = %ws, segment = %i.segment, path = %i.path, reason = %i.reason, "data-loss incident: a stored segment failed its integrity checks");
    s.ingest.stats.integrity_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut details = std::collections::BTreeMap::new();
    details.insert("segment".to_string(), i.segment.to_string());
    details.insert("reason".to_string(), i.reason.chars().take(300).collect());
    crate::retention::system_record(s, "data_loss.incident", "error", ws, i.path.clone(), details).await;
}


impl SegmentTable {
    /// Build the provider from the catalog's segment list.
    pub fn new(segments: Vec<Segment>, storage: Arc<dyn Storage>, keys: Arc<dyn KeyProvider>, partitions: usize) -> Self {
        let cols: Vec<Vec<(String, custos_model::ValueType)>> = segments
            .iter()
            .map(|s| s.columns.iter().map(|c| (c.name.clone(), c.ty)).collect())
            .collect();
        // Strings are scanned as views (see `custos_store::DecodeOptions`).
        let schema = custos_store::string_views(&custos_store::table_schema(cols.iter().map(|c| c.as_slice())));
        Self { segments, min_time: None, hidden: Arc::new(Vec::new()), schema, storage, keys, partitions: partitions.max(1), incidents: Incidents::default() }
    }

    /// Hides rows before `min_time` (segments wholly before it are not
    /// even read).
    pub fn with_min_time(mut self, min_time: Option<custos_model::TimestampMicros>) -> Self {
        if let Some(t) = min_time {
            self.segments.retain(|s| s.max_time >= t);
        }
        self.min_time = min_time;
        self
    }

    /// Hides rows matching any of `predicates`.
    pub fn with_hidden(mut self, predicates: Vec<custos_store::purge::Predicate>) -> Self {
        self.hidden = Arc::new(predicates);
        self
    }

    /// Reports integrity failures into `incidents`.
    pub fn with_incidents(mut self, incidents: Incidents) -> Self {
        self.incidents = incidents;
        self
    }
}

#[async_trait]
impl TableProvider for SegmentTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Decode only the columns the query needs (projection pushdown):
        // the other columns' pages are never decompressed.
        let target: SchemaRef = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let mut wanted: Vec<String> = target.fields().iter().map(|f| f.name().clone()).collect();
        if self.min_time.is_some() && !wanted.iter().any(|w| w == "time") {
            wanted.push("time".into());
        }
        for p in self.hidden.iter() {
            if !wanted.contains(&p.column) {
                wanted.push(p.column.clone());
            }
        }
        let spec = Arc::new(ScanSpec {
            storage: self.storage.clone(),
            keys: self.keys.clone(),
            incidents: self.incidents.clone(),
            wanted,
            min_time: self.min_time,
            hidden: self.hidden.clone(),
        });
        // Segments are dealt round-robin to one stream per core; each
        // streams its segments in order (fetching one ahead), so memory
        // holds a few segments' batches, not the table.
        let n = self.partitions.min(self.segments.len()).max(1);
        let mut parts: Vec<Vec<Segment>> = vec![Vec::new(); n];
        for (i, seg) in self.segments.iter().enumerate() {
            parts[i % n].push(seg.clone());
        }
        let partitions: Vec<Arc<dyn PartitionStream>> = parts
            .into_iter()
            .map(|segments| Arc::new(SegmentStream { segments, schema: target.clone(), spec: spec.clone() }) as Arc<dyn PartitionStream>)
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(target, partitions, None, Vec::new(), false, None)?))
    }
}

/// Rows per batch handed to DataFusion (its default batch size).
const SCAN_BATCH_ROWS: usize = 8192;

/// What every partition of one table scan shares.
#[derive(Debug)]
struct ScanSpec {
    storage: Arc<dyn Storage>,
    keys: Arc<dyn KeyProvider>,
    incidents: Incidents,
    /// Columns to decode.
    wanted: Vec<String>,
    min_time: Option<custos_model::TimestampMicros>,
    hidden: Arc<Vec<custos_store::purge::Predicate>>,
}

/// One partition of a table scan: its segments, fetched and decoded in
/// order (one ahead) and streamed as batches of the scan's schema.
#[derive(Debug)]
struct SegmentStream {
    segments: Vec<Segment>,
    schema: SchemaRef,
    spec: Arc<ScanSpec>,
}

impl PartitionStream for SegmentStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (spec, target) = (self.spec.clone(), self.schema.clone());
        let stream = futures::stream::iter(self.segments.clone())
            .map(move |seg| decode_for_scan(spec.clone(), target.clone(), seg))
            .buffered(2)
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// Fetches one segment and decodes the scan's columns (strings as views),
/// hiding expired and purged rows and shaping the batches to `target`. An
/// integrity failure is also reported as an incident.
async fn decode_for_scan(spec: Arc<ScanSpec>, target: SchemaRef, seg: Segment) -> DfResult<Vec<RecordBatch>> {
    let bytes = spec.storage.get(&seg.path).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
    // Decoded on the worker polling the stream, as DataFusion decodes its
    // own Parquet: a segment takes about a millisecond, and handing it to
    // the blocking pool instead measured 40-60 % slower queries (thread
    // hops, more runnable threads than cores).
    decode_scan_sync(&spec, &target, &seg, &bytes)
}

/// The CPU half of [`decode_for_scan`].
fn decode_scan_sync(spec: &ScanSpec, target: &SchemaRef, seg: &Segment, bytes: &[u8]) -> DfResult<Vec<RecordBatch>> {
    let opts = custos_store::DecodeOptions {
        columns: Some(&spec.wanted),
        keys: Some(spec.keys.as_ref()),
        string_views: true,
        batch_rows: SCAN_BATCH_ROWS,
    };
    let d = custos_store::decode_segment_opts(bytes, &opts).map_err(|e| {
        if let Some(i) = Incident::of(seg, &e) {
            if let Ok(mut v) = spec.incidents.lock() {
                v.push(i);
            }
        }
        DataFusionError::Execution(format!("segment {} ({}): {e}", seg.id, seg.path))
    })?;
    let mut out = Vec::with_capacity(d.batches.len());
    for b in &d.batches {
        let b = match spec.min_time {
            Some(t) if seg.min_time < t => drop_before(b, t)?,
            _ => b.clone(),
        };
        let b = project_to(&drop_hidden(&b, &spec.hidden)?, target)?;
        if b.num_rows() > 0 {
            out.push(b);
        }
    }
    Ok(out)
}

/// The rows of `batch` at or after `min_time` (its `time` column).
pub(crate) fn drop_before(batch: &RecordBatch, min_time: custos_model::TimestampMicros) -> DfResult<RecordBatch> {
    let Some(col) = batch.column_by_name("time") else {
        return Err(DataFusionError::Execution("segment batch without a time column".into()));
    };
    let times = col
        .as_any()
        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
        .ok_or_else(|| DataFusionError::Execution("segment time column is not Timestamp(µs)".into()))?;
    let keep: arrow::array::BooleanArray = times.iter().map(|t| Some(t.is_some_and(|t| t >= min_time))).collect();
    Ok(arrow::compute::filter_record_batch(batch, &keep)?)
}

/// The rows of `batch` no predicate of `hidden` matches.
pub(crate) fn drop_hidden(batch: &RecordBatch, hidden: &[custos_store::purge::Predicate]) -> DfResult<RecordBatch> {
    let mut b = batch.clone();
    for p in hidden {
        let m = p.matches(&b)?;
        if m.true_count() > 0 {
            b = arrow::compute::filter_record_batch(&b, &arrow::compute::not(&m)?)?;
        }
    }
    Ok(b)
}

/// Shape a decoded batch to `target`: drop columns it does not name, then
/// reorder, widen and null-fill with the store's adapter. A target with no
/// columns (as for `count(*)`) keeps only the row count.
fn project_to(batch: &RecordBatch, target: &SchemaRef) -> DfResult<RecordBatch> {
    if target.fields().is_empty() {
        let opts = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        return Ok(RecordBatch::try_new_with_options(target.clone(), vec![], &opts)?);
    }
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| target.field_with_name(f.name()).is_ok())
        .map(|(i, _)| i)
        .collect();
    let projected = batch.project(&keep)?;
    custos_store::adapt_batch(&projected, target).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// Run one SQL query over one workspace.
pub async fn run(
    catalog: &dyn Catalog,
    storage: Arc<dyn Storage>,
    keys: Arc<dyn KeyProvider>,
    ws: WorkspaceId,
    sql: &str,
    max_rows: usize,
    timeout: Duration,
) -> Result<QueryResponse, ServerError> {
    run_with_incidents(catalog, storage, keys, ws, sql, max_rows, timeout, &Incidents::default(), &Visibility::default()).await
}

/// [`run`], reporting every segment that fails its integrity checks into
/// `incidents` (whether or not the query fails because of it), and
/// showing only what `visibility` allows (expired rows hidden).
#[allow(clippy::too_many_arguments)]
pub async fn run_with_incidents(
    catalog: &dyn Catalog,
    storage: Arc<dyn Storage>,
    keys: Arc<dyn KeyProvider>,
    ws: WorkspaceId,
    sql: &str,
    max_rows: usize,
    timeout: Duration,
    incidents: &Incidents,
    visibility: &Visibility,
) -> Result<QueryResponse, ServerError> {
    let started = Instant::now();
    let partitions = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let config = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    let tables = queryable_tables(catalog.list_tables(ws).await?);
    for table in tables {
        let segments = catalog.list_segments(ws, &table, None).await?;
        let provider = SegmentTable::new(segments, storage.clone(), keys.clone(), partitions)
            .with_incidents(incidents.clone())
            .with_min_time(visibility.cutoff(&table))
            .with_hidden(visibility.hidden_in(&table));
        ctx.register_table(table.as_str(), Arc::new(provider))
            .map_err(|e| ServerError::Query(e.to_string()))?;
    }
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let work = async {
        let df = ctx.sql_with_options(sql, options).await?;
        let df = df.limit(0, Some(max_rows + 1))?;
        df.collect().await
    };
    let batches = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map_err(|e| ServerError::Query(e.to_string()))?,
        Err(_) => return Err(ServerError::Query(format!("query exceeded the {} s time limit", timeout.as_secs()))),
    };
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if total > max_rows {
        return Err(ServerError::Query(format!(
            "query returns more than {max_rows} rows; add a LIMIT or aggregate"
        )));
    }
    let mut resp = batches_to_response(&batches)?;
    resp.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(resp)
}

/// Convert record batches to the API's row-major JSON form.
pub fn batches_to_response(batches: &[RecordBatch]) -> Result<QueryResponse, ServerError> {
    let Some(first) = batches.first() else {
        return Ok(QueryResponse { columns: vec![], types: vec![], rows: vec![], elapsed_ms: 0 });
    };
    let schema = first.schema();
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    let types = schema.fields().iter().map(|f| f.data_type().to_string()).collect();
    let mut rows = Vec::new();
    for batch in batches {
        let cols: Vec<Box<dyn Fn(usize) -> serde_json::Value + '_>> =
            batch.columns().iter().map(column_to_json).collect::<Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            rows.push(cols.iter().map(|f| f(i)).collect());
        }
    }
    Ok(QueryResponse { columns, types, rows, elapsed_ms: 0 })
}

fn column_to_json(col: &ArrayRef) -> Result<Box<dyn Fn(usize) -> serde_json::Value + '_>, ServerError> {
    use arrow::datatypes::*;
    use serde_json::Value as J;
    let col = col.as_ref();
    macro_rules! prim {
        ($t:ty) => {{
            let a = col.as_primitive::<$t>();
            Box::new(move |i| if a.is_null(i) { J::Null } else { J::from(a.value(i)) })
        }};
    }
    macro_rules! float {
        ($t:ty) => {{
            let a = col.as_primitive::<$t>();
            Box::new(move |i| {
                if a.is_null(i) {
                    J::Null
                } else {
                    serde_json::Number::from_f64(a.value(i) as f64).map(J::Number).unwrap_or(J::Null)
                }
            })
        }};
    }
    Ok(match col.data_type() {
        DataType::Null => Box::new(|_| J::Null),
        DataType::Boolean => {
            let a = col.as_boolean();
            Box::new(move |i| if a.is_null(i) { J::Null } else { J::Bool(a.value(i)) })
        }
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => float!(Float32Type),
        DataType::Float64 => float!(Float64Type),
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            Box::new(move |i| if a.is_null(i) { J::Null } else { J::String(a.value(i).to_string()) })
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            Box::new(move |i| if a.is_null(i) { J::Null } else { J::String(a.value(i).to_string()) })
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            Box::new(move |i| if a.is_null(i) { J::Null } else { J::String(a.value(i).to_string()) })
        }
        _ => {
            let opts = FormatOptions::default();
            let f = ArrayFormatter::try_new(col, &opts).map_err(|e| ServerError::Query(e.to_string()))?;
            Box::new(move |i| if col.is_null(i) { J::Null } else { J::String(f.value(i).to_string()) })
        }
    })
}
