//! The segment format: one immutable, self-describing, checksummed file of
//! columnar events for one (workspace, table).
//!
//! # File layout, format version 3 (written)
//!
//! All integers are little-endian.
//!
//! ```text
//! offset        size  field
//! 0             4     magic "CSEG"
//! 4             2     u16 format version, 3
//! 6             2     u16 flags: 0, or 1 (FLAG_SEALED) when the body is sealed
//! 8             4     u32 header length H
//! 12            H     header: UTF-8 JSON `SegmentHeader`
//! 12+H          B     body: a Parquet file (`PAR1` ... `PAR1`), or that file
//!                     sealed (see below)
//! 12+H+B        8     u64 total length of everything before this field (12+H+B)
//! 20+H+B        4     u32 CRC-32C (Castagnoli) of everything before the u64
//! 24+H+B        4     magic "CSEG"
//! ```
//!
//! The framing (leading magic, version field, the 16-byte trailer) is the
//! same in every version; versions change the header and body. A reader
//! therefore verifies the framing and checksum first, then refuses versions
//! (and flags) it does not know with a clear error.
//!
//! The Parquet body holds the columns of [the Arrow schema](#arrow-schema)
//! in that order, zstd-compressed, dictionary-encoded where Parquet's
//! writer finds it pays (low-cardinality strings such as `host`,
//! `severity`, `agent_id` become small integer codes), in row groups of at
//! most [`MAX_ROW_GROUP_ROWS`] rows, with column-chunk statistics and without
//! the embedded Arrow schema: the header's `columns` is the schema, and a
//! reader interprets the Parquet columns with it (never trusting the file's
//! own metadata for types). Before any page is decoded, the footer is
//! checked: every column chunk lies inside the body, declares at most
//! 1 GiB uncompressed, every row group holds at most [`MAX_ROW_GROUP_ROWS`]
//! rows, and the total equals the header's row count.
//!
//! Why Parquet rather than the Arrow IPC of versions 1 and 2: it is the
//! same columnar data at a sixth of the bytes (dictionary and run-length
//! encodings before zstd), and the decoder hands out strings as views into
//! the dictionary, so a scan decompresses and copies far less (see
//! `docs/PERFORMANCE.md`, the comparison with DuckDB).
//!
//! # Sealed bodies (flag 1)
//!
//! The header JSON carries a `seal` object:
//!
//! ```json
//! "seal":{"alg":"AES-256-GCM","key":{"key_id":"service","version":3},
//!         "wrapped_key":"<base64>","nonce":"<24 hex digits>"}
//! ```
//!
//! The body is the Parquet file encrypted with AES-256-GCM under the
//! segment's own random data key, followed by the 16-byte GCM tag; the
//! associated data is `custos-segment-v2\0` and the header as JSON with the
//! data key's wrapping (`seal.key`, `seal.wrapped_key`) blanked, so the
//! format version, row count, time range, ids and nonce are authenticated
//! too, and a rotation can rewrap the data key by rewriting the header
//! alone ([`rewrap_segment`]). The data key is stored only wrapped by the
//! workspace key the header names (see [`crate::keys`]). The CRC-32C still
//! covers the whole file and catches accidental damage first;
//! authentication catches the rest: a sealed segment decodes to exactly
//! what was written or not at all. A segment's flag and its header's `seal`
//! must agree.
//!
//! The header JSON looks like:
//!
//! ```json
//! {"format_version":3,"segment_id":"0190...","workspace_id":"0190...",
//!  "table":"logs","rows":3,"min_time":10,"max_time":30,
//!  "columns":[["pid","int"],["unit","str"]],"created_at":1718000000000000}
//! ```
//!
//! # Legacy versions 1 and 2 (read, no longer written)
//!
//! The same framing and header; the body is an Arrow IPC *file*
//! (`ARROW1` ... `ARROW1`) with zstd-compressed buffers (IPC metadata V5):
//! unsealed with version 1 and flags 0, sealed exactly as above with
//! version 2 and flags 1. Before Arrow decodes an IPC block, its message is
//! bounds-checked here (see `read_ipc`). Segments written by earlier
//! releases stay readable, purgeable and exportable; a purge rewrites the
//! segments it touches in version 3.
//!
//! # Arrow schema
//!
//! Envelope columns first ([`envelope_fields`]): `time`
//! Timestamp(µs, "UTC"), `level` UInt8, `category` Utf8, `host` Utf8,
//! `message` Utf8, `agent_id` Utf8 (hyphenated UUID), all non-null; then one
//! nullable column per attribute key, sorted by name ([`arrow_type`] maps
//! value types). A key seen with several value types in one segment gets the
//! [`ValueType::widen`]ed type and its values are converted with Arrow's cast
//! (int → float; anything → its string form), exactly as [`adapt_batch`]
//! converts whole columns across segments. Rows are sorted by time (stable:
//! equal times keep arrival order). Readers may ask for string columns as
//! Utf8View ([`DecodeOptions::string_views`], what queries use) instead of
//! Utf8; the values are the same.

use crate::keys::{DataKey, KeyError, KeyProvider, KeyRef};
use crate::StoreError;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use arrow::array::{
    new_null_array, Array, ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch,
    RecordBatchOptions, StringBuilder, TimestampMicrosecondArray, UInt64Array, UInt8Array,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, is_not_null, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use custos_model::{AgentId, Event, SegmentId, TableName, TimestampMicros, Value, ValueType, WorkspaceId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The segment file magic, at the start and at the very end.
pub const SEGMENT_MAGIC: &[u8; 4] = b"CSEG";
/// The segment format version written: a Parquet body, sealed or not (the
/// [`FLAG_SEALED`] flag says which).
pub const SEGMENT_FORMAT_VERSION: u16 = 3;
/// Legacy format version 1: an unsealed Arrow IPC body (still read, no
/// longer written).
pub const IPC_FORMAT_VERSION: u16 = 1;
/// Legacy format version 2: a sealed Arrow IPC body (still read, no longer
/// written).
pub const SEALED_IPC_FORMAT_VERSION: u16 = 2;
/// Preamble flag (versions 2 and 3): the body is sealed.
pub const FLAG_SEALED: u16 = 1;
/// File name extension of segment objects.
pub const SEGMENT_EXTENSION: &str = "cseg";
/// Most rows in one record batch of a segment.
pub const MAX_BATCH_ROWS: usize = 64 * 1024;
/// Most rows in one row group of a Parquet body (format version 3). Large,
/// so a segment is usually one row group: the Parquet reader sets up a
/// decompressor per column chunk, and that setup (zstd probes the CPU)
/// measured 18 % of a decode with two row groups per segment.
pub const MAX_ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Magic, version, flags, header length.
const PREAMBLE_LEN: usize = 12;
/// Total length, CRC, magic.
const TRAILER_LEN: usize = 16;

/// Names of the envelope columns, in schema order.
pub const ENVELOPE_COLUMNS: [&str; 6] = ["time", "level", "category", "host", "message", "agent_id"];

/// The JSON header of a segment (format version 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Format version; equals the version in the preamble.
    pub format_version: u16,
    /// The segment's id.
    pub segment_id: SegmentId,
    /// The workspace the events belong to.
    pub workspace_id: WorkspaceId,
    /// The table.
    pub table: TableName,
    /// Number of rows.
    pub rows: u64,
    /// Earliest event time (µs since the epoch).
    pub min_time: TimestampMicros,
    /// Latest event time (µs since the epoch).
    pub max_time: TimestampMicros,
    /// Attribute columns and their types, sorted by name.
    pub columns: Vec<(String, ValueType)>,
    /// When the segment was encoded (µs since the epoch).
    pub created_at: TimestampMicros,
    /// How the body is sealed (format version 2); absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<SealInfo>,
}

/// How a sealed segment's body is encrypted (format version 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealInfo {
    /// The cipher: `AES-256-GCM`.
    pub alg: String,
    /// The workspace key (and version) that wraps the data key.
    pub key: KeyRef,
    /// The segment's data key, wrapped by the provider (base64).
    pub wrapped_key: String,
    /// The 96-bit GCM nonce (hex).
    pub nonce: String,
}

/// The cipher of sealed segments.
pub const SEAL_ALG: &str = "AES-256-GCM";

/// An encoded segment, ready to store, with the facts a catalog records.
#[derive(Clone)]
pub struct EncodedSegment {
    /// The file bytes (see the module docs for the layout).
    pub bytes: Bytes,
    /// Number of rows.
    pub rows: u64,
    /// Earliest event time.
    pub min_time: TimestampMicros,
    /// Latest event time.
    pub max_time: TimestampMicros,
    /// Attribute columns and their types, sorted by name.
    pub columns: Vec<(String, ValueType)>,
    /// Bloom filters of the identity columns' values (see
    /// [`crate::purge`]), for the catalog.
    pub index: BTreeMap<String, crate::purge::Bloom>,
}

impl EncodedSegment {
    /// The Bloom filters as the catalog stores them (JSON).
    pub fn index_json(&self) -> String {
        serde_json::to_string(&self.index).unwrap_or_else(|_| "{}".into())
    }
}

impl std::fmt::Debug for EncodedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedSegment")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("rows", &self.rows)
            .field("min_time", &self.min_time)
            .field("max_time", &self.max_time)
            .field("columns", &self.columns)
            .finish()
    }
}

/// A decoded, verified segment.
#[derive(Clone, Debug)]
pub struct DecodedSegment {
    /// The header.
    pub header: SegmentHeader,
    /// The Arrow schema (envelope columns, then attributes).
    pub schema: SchemaRef,
    /// The rows, sorted by time, in batches of at most [`MAX_BATCH_ROWS`].
    pub batches: Vec<RecordBatch>,
}

/// The Arrow type storing values of a [`ValueType`].
pub fn arrow_type(t: ValueType) -> DataType {
    match t {
        ValueType::Bool => DataType::Boolean,
        ValueType::Int => DataType::Int64,
        ValueType::Float => DataType::Float64,
        ValueType::Str => DataType::Utf8,
    }
}

/// The envelope columns every segment and table starts with.
pub fn envelope_fields() -> Vec<Field> {
    vec![
        Field::new("time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("level", DataType::UInt8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("host", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("agent_id", DataType::Utf8, false),
    ]
}

/// The schema of a table whose segments have the given attribute columns:
/// envelope columns first, then the union of attribute columns sorted by
/// name; a column with different types in different segments gets the
/// [`ValueType::widen`]ed type.
pub fn table_schema<'a>(segment_columns: impl IntoIterator<Item = &'a [(String, ValueType)]>) -> SchemaRef {
    let mut union: BTreeMap<&str, ValueType> = BTreeMap::new();
    for cols in segment_columns {
        for (name, ty) in cols {
            union.entry(name.as_str()).and_modify(|t| *t = t.widen(*ty)).or_insert(*ty);
        }
    }
    let mut fields = envelope_fields();
    fields.extend(union.into_iter().map(|(name, ty)| Field::new(name, arrow_type(ty), true)));
    Arc::new(Schema::new(fields))
}

/// `schema` with every Utf8 field typed Utf8View instead (what queries
/// scan: see [`DecodeOptions::string_views`]).
pub fn string_views(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Whether [`adapt_batch`] may convert a column of type `from` to `to`: the
/// conversions [`ValueType::widen`] implies, and strings to string views.
fn is_widening(from: &DataType, to: &DataType) -> bool {
    from == to
        || matches!(
            (from, to),
            (DataType::Int64, DataType::Float64)
                | (DataType::Boolean | DataType::Int64 | DataType::Float64, DataType::Utf8)
                | (DataType::Boolean | DataType::Int64 | DataType::Float64 | DataType::Utf8, DataType::Utf8View)
        )
}

/// Arrow's cast for the conversions [`is_widening`] allows (anything to a
/// string view goes through its Utf8 form).
fn widen(col: &ArrayRef, to: &DataType) -> Result<ArrayRef, arrow::error::ArrowError> {
    match (col.data_type(), to) {
        (DataType::Boolean | DataType::Int64 | DataType::Float64, DataType::Utf8View) => {
            cast(&cast(col, &DataType::Utf8)?, to)
        }
        _ => cast(col, to),
    }
}

/// Bring a segment's batch to a table schema (usually from [`table_schema`]):
/// columns reordered, widened (Int64 → Float64, anything → Utf8 or Utf8View,
/// via Arrow's cast), and missing nullable columns filled with nulls.
///
/// Refuses (rather than drop data) a batch column absent from `target`, a
/// narrowing or unrelated type change, and a missing non-nullable column.
pub fn adapt_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, StoreError> {
    let mismatch = |column: &str, reason: String| StoreError::SchemaMismatch { column: column.to_string(), reason };
    for f in batch.schema().fields() {
        if target.field_with_name(f.name()).is_err() {
            return Err(mismatch(f.name(), "the column is not in the target schema".into()));
        }
    }
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let to = field.data_type();
        let col = match batch.column_by_name(field.name()) {
            Some(col) if col.data_type() == to => Arc::clone(col),
            Some(col) if is_widening(col.data_type(), to) => {
                widen(col, to).map_err(|e| mismatch(field.name(), format!("cast from {} to {to}: {e}", col.data_type())))?
            }
            Some(col) => {
                return Err(mismatch(field.name(), format!("{} cannot be widened to {to}", col.data_type())))
            }
            None if field.is_nullable() => new_null_array(to, rows),
            None => return Err(mismatch(field.name(), "the non-nullable column is missing from the batch".into())),
        };
        columns.push(col);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(Arc::clone(target), columns, &options)
        .map_err(|e| mismatch("*", format!("building the adapted batch: {e}")))
}

/// The object path of a segment: `ws/<workspace>/<table>/<segment>.cseg`.
pub fn segment_path(workspace: WorkspaceId, table: &TableName, id: SegmentId) -> String {
    format!("{}{id}.{SEGMENT_EXTENSION}", table_prefix(workspace, table))
}

/// The prefix under which all segments of a table live:
/// `ws/<workspace>/<table>/`.
pub fn table_prefix(workspace: WorkspaceId, table: &TableName) -> String {
    format!("{}{table}/", workspace_prefix(workspace))
}

/// The storage prefix of every object of a workspace.
pub fn workspace_prefix(workspace: WorkspaceId) -> String {
    format!("ws/{workspace}/")
}

/// One attribute column while building: a builder per value type seen, each
/// padded with nulls up to its last value; merged at `finish`.
#[derive(Default)]
struct AttrColumn {
    bools: Option<BooleanBuilder>,
    ints: Option<Int64Builder>,
    floats: Option<Float64Builder>,
    strs: Option<StringBuilder>,
}

macro_rules! append_at {
    ($slot:expr, $new:expr, $row:expr, $v:expr) => {{
        let b = $slot.get_or_insert_with($new);
        if b.len() < $row {
            b.append_nulls($row - b.len());
        }
        b.append_value($v);
    }};
}

impl AttrColumn {
    fn push(&mut self, row: usize, v: &Value) {
        match v {
            Value::Bool(b) => append_at!(self.bools, BooleanBuilder::new, row, *b),
            Value::Int(i) => append_at!(self.ints, Int64Builder::new, row, *i),
            Value::Float(f) => append_at!(self.floats, Float64Builder::new, row, *f),
            Value::Str(s) => append_at!(self.strs, StringBuilder::new, row, s),
        }
    }

    fn value_type(&self) -> Option<ValueType> {
        [
            self.bools.as_ref().map(|_| ValueType::Bool),
            self.ints.as_ref().map(|_| ValueType::Int),
            self.floats.as_ref().map(|_| ValueType::Float),
            self.strs.as_ref().map(|_| ValueType::Str),
        ]
        .into_iter()
        .flatten()
        .reduce(ValueType::widen)
    }

    /// The column as one array of `rows` values of type `ty`.
    fn finish(self, rows: usize, ty: ValueType) -> Result<ArrayRef, arrow::error::ArrowError> {
        let mut parts: Vec<ArrayRef> = Vec::new();
        macro_rules! part {
            ($slot:expr) => {
                if let Some(mut b) = $slot {
                    let missing = rows - b.len();
                    b.append_nulls(missing);
                    parts.push(Arc::new(b.finish()));
                }
            };
        }
        part!(self.bools);
        part!(self.ints);
        part!(self.floats);
        part!(self.strs);
        let to = arrow_type(ty);
        let mut merged: Option<ArrayRef> = None;
        for part in parts {
            let part = if part.data_type() == &to { part } else { cast(&part, &to)? };
            merged = Some(match merged {
                None => part,
                // At most one part holds a value in any row.
                Some(acc) => zip(&is_not_null(&part)?, &part, &acc)?,
            });
        }
        Ok(merged.unwrap_or_else(|| new_null_array(&to, rows)))
    }
}

/// Accumulates the events of one (workspace, table) and encodes them as a
/// segment.
pub struct SegmentBuilder {
    workspace: WorkspaceId,
    table: TableName,
    times: Vec<TimestampMicros>,
    levels: Vec<u8>,
    categories: StringBuilder,
    hosts: StringBuilder,
    messages: StringBuilder,
    agents: StringBuilder,
    attrs: BTreeMap<String, AttrColumn>,
    approx_bytes: usize,
}

impl std::fmt::Debug for SegmentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBuilder")
            .field("workspace", &self.workspace)
            .field("table", &self.table)
            .field("rows", &self.rows())
            .field("approx_bytes", &self.approx_bytes)
            .finish()
    }
}

impl SegmentBuilder {
    /// An empty builder for events of `table` in `workspace`.
    pub fn new(workspace: WorkspaceId, table: TableName) -> Self {
        Self {
            workspace,
            table,
            times: Vec::new(),
            levels: Vec::new(),
            categories: StringBuilder::new(),
            hosts: StringBuilder::new(),
            messages: StringBuilder::new(),
            agents: StringBuilder::new(),
            attrs: BTreeMap::new(),
            approx_bytes: 0,
        }
    }

    /// Add one event from `agent`. The caller guarantees
    /// `event.table == table` (checked in debug builds).
    pub fn push(&mut self, agent: AgentId, event: &Event) {
        debug_assert_eq!(event.table, self.table, "event for another table pushed to a segment builder");
        let row = self.times.len();
        self.times.push(event.time);
        self.levels.push(u8::from(event.level));
        self.categories.append_value(event.category.name());
        self.hosts.append_value(&event.host);
        self.messages.append_value(&event.message);
        let mut buf = uuid::Uuid::encode_buffer();
        self.agents.append_value(agent.as_uuid().hyphenated().encode_lower(&mut buf));
        for (k, v) in &event.attrs {
            match self.attrs.get_mut(k) {
                Some(col) => col.push(row, v),
                None => self.attrs.entry(k.clone()).or_default().push(row, v),
            }
        }
        self.approx_bytes += event.approx_size() + 36;
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.times.len()
    }

    /// A rough in-memory size of the rows pushed, for flush thresholds.
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// Sort the rows by time and encode them as segment `id`, unsealed
    /// (format version 3, flags 0).
    ///
    /// Fails with [`StoreError::EmptySegment`] when no row was pushed.
    pub fn finish(self, id: SegmentId) -> Result<EncodedSegment, StoreError> {
        self.finish_with(id, None)
    }

    /// Like [`SegmentBuilder::finish`], sealed (format version 3, flag 1)
    /// under a fresh data key wrapped by the workspace's current key in
    /// `keys`.
    pub fn finish_sealed(self, id: SegmentId, keys: &dyn KeyProvider) -> Result<EncodedSegment, StoreError> {
        self.finish_with(id, Some(keys))
    }

    fn finish_with(self, id: SegmentId, keys: Option<&dyn KeyProvider>) -> Result<EncodedSegment, StoreError> {
        let rows = self.times.len();
        let encode_err = |e: arrow::error::ArrowError| StoreError::Encode { segment: id.to_string(), reason: e.to_string() };
        let (Some(&min_time), Some(&max_time)) = (self.times.iter().min(), self.times.iter().max()) else {
            return Err(StoreError::EmptySegment {
                segment: id.to_string(),
                table: self.table.to_string(),
                workspace: self.workspace.to_string(),
            });
        };

        let mut columns_meta = Vec::with_capacity(self.attrs.len());
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(ENVELOPE_COLUMNS.len() + self.attrs.len());
        let sorted = self.times.windows(2).all(|w| w[0] <= w[1]);
        let permutation: Option<Vec<u64>> = (!sorted).then(|| {
            let mut idx: Vec<u64> = (0..rows as u64).collect();
            // `sort_by_key` is stable: equal times keep arrival order.
            idx.sort_by_key(|&i| self.times[i as usize]);
            idx
        });
        let mut categories = self.categories;
        let mut hosts = self.hosts;
        let mut messages = self.messages;
        let mut agents = self.agents;
        arrays.push(Arc::new(TimestampMicrosecondArray::from(self.times).with_timezone("UTC")));
        arrays.push(Arc::new(UInt8Array::from(self.levels)));
        arrays.push(Arc::new(categories.finish()));
        arrays.push(Arc::new(hosts.finish()));
        arrays.push(Arc::new(messages.finish()));
        arrays.push(Arc::new(agents.finish()));
        for (name, col) in self.attrs {
            // Every stored column has at least one value, so a type.
            let ty = col.value_type().unwrap_or(ValueType::Str);
            arrays.push(col.finish(rows, ty).map_err(encode_err)?);
            columns_meta.push((name, ty));
        }
        let schema = table_schema([columns_meta.as_slice()]);

        let header = SegmentHeader {
            format_version: SEGMENT_FORMAT_VERSION,
            segment_id: id,
            workspace_id: self.workspace,
            table: self.table,
            rows: rows as u64,
            min_time,
            max_time,
            columns: columns_meta.clone(),
            created_at: custos_model::now_micros(),
            seal: None,
        };

        let batches = (0..rows.div_ceil(MAX_BATCH_ROWS)).map(|i| {
            let start = i * MAX_BATCH_ROWS;
            let len = MAX_BATCH_ROWS.min(rows - start);
            let cols = match &permutation {
                None => arrays.iter().map(|a| a.slice(start, len)).collect::<Vec<_>>(),
                Some(perm) => {
                    let idx = UInt64Array::from(perm[start..start + len].to_vec());
                    arrays.iter().map(|a| take(a, &idx, None)).collect::<Result<Vec<_>, _>>().map_err(encode_err)?
                }
            };
            RecordBatch::try_new(Arc::clone(&schema), cols).map_err(encode_err)
        });
        let (body, index) = write_parquet_body(id, &schema, batches)?;
        frame(header, body, index, keys)
    }
}

/// Encodes rows already decoded from a segment of `workspace` and `table`
/// (sorted by time, in the segment's own schema, as [`decode_segment_with`]
/// returns them) as a new segment `id`: what a purge writes after dropping
/// rows. The values are the decoded ones, unchanged. Sealed when `keys` is
/// given. Fails with [`StoreError::EmptySegment`] when no row is left.
pub fn encode_batches(
    workspace: WorkspaceId,
    table: TableName,
    id: SegmentId,
    columns: Vec<(String, ValueType)>,
    batches: &[RecordBatch],
    keys: Option<&dyn KeyProvider>,
) -> Result<EncodedSegment, StoreError> {
    let encode_err = |e: arrow::error::ArrowError| StoreError::Encode { segment: id.to_string(), reason: e.to_string() };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let (mut min_time, mut max_time) = (i64::MAX, i64::MIN);
    for b in batches {
        let times = b
            .column_by_name("time")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(|| StoreError::Encode { segment: id.to_string(), reason: "rows without a time column".into() })?;
        for t in times.iter().flatten() {
            min_time = min_time.min(t);
            max_time = max_time.max(t);
        }
    }
    if rows == 0 {
        return Err(StoreError::EmptySegment { segment: id.to_string(), table: table.to_string(), workspace: workspace.to_string() });
    }
    let schema = table_schema([columns.as_slice()]);
    let header = SegmentHeader {
        format_version: SEGMENT_FORMAT_VERSION,
        segment_id: id,
        workspace_id: workspace,
        table,
        rows: rows as u64,
        min_time,
        max_time,
        columns,
        created_at: custos_model::now_micros(),
        seal: None,
    };
    let batches = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| RecordBatch::try_new(Arc::clone(&schema), b.columns().to_vec()).map_err(encode_err));
    let (body, index) = write_parquet_body(id, &schema, batches)?;
    frame(header, body, index, keys)
}

/// The writer settings of Parquet bodies (see the module docs).
fn parquet_properties() -> parquet::file::properties::WriterProperties {
    use parquet::basic::{Compression, Encoding, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::schema::types::ColumnPath;
    let time = ColumnPath::from("time");
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        // Sorted timestamps: deltas, not a dictionary of distinct values.
        .set_column_dictionary_enabled(time.clone(), false)
        .set_column_encoding(time, Encoding::DELTA_BINARY_PACKED)
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("custos {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Writes `batches` (in `schema`) as a Parquet body (format version 3) and
/// builds the segment's identity-column index from them.
fn write_parquet_body(
    id: SegmentId,
    schema: &SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch, StoreError>>,
) -> Result<(Vec<u8>, BTreeMap<String, crate::purge::Bloom>), StoreError> {
    use parquet::arrow::arrow_writer::{ArrowWriter, ArrowWriterOptions};
    let encode_err = |e: &dyn std::fmt::Display| StoreError::Encode { segment: id.to_string(), reason: e.to_string() };
    let mut body = Vec::new();
    let options = ArrowWriterOptions::new().with_properties(parquet_properties()).with_skip_arrow_metadata(true);
    let mut writer = ArrowWriter::try_new_with_options(&mut body, Arc::clone(schema), options).map_err(|e| encode_err(&e))?;
    let mut index = crate::purge::IndexBuilder::default();
    for batch in batches {
        let batch = batch?;
        index.add(&batch).map_err(|e| encode_err(&e))?;
        writer.write(&batch).map_err(|e| encode_err(&e))?;
    }
    writer.close().map_err(|e| encode_err(&e))?;
    Ok((body, index.finish()))
}

/// Writes `batches` as a legacy Arrow IPC body (format versions 1 and 2),
/// for the tests that prove old segments stay readable.
#[cfg(test)]
pub(crate) fn write_ipc_body(
    id: SegmentId,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(Vec<u8>, BTreeMap<String, crate::purge::Bloom>), StoreError> {
    use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
    use arrow::ipc::CompressionType;
    let encode_err = |e: arrow::error::ArrowError| StoreError::Encode { segment: id.to_string(), reason: e.to_string() };
    let mut body = Vec::new();
    let options = IpcWriteOptions::default().try_with_compression(Some(CompressionType::ZSTD)).map_err(encode_err)?;
    let mut writer = FileWriter::try_new_with_options(&mut body, schema, options).map_err(encode_err)?;
    let mut index = crate::purge::IndexBuilder::default();
    for batch in batches {
        index.add(batch).map_err(encode_err)?;
        writer.write(batch).map_err(encode_err)?;
    }
    writer.finish().map_err(encode_err)?;
    drop(writer);
    Ok((body, index.finish()))
}

/// Seals `body` when `keys` is given and frames it with `header` (whose
/// row count, times and format version the caller set).
fn frame(
    mut header: SegmentHeader,
    mut body: Vec<u8>,
    index: BTreeMap<String, crate::purge::Bloom>,
    keys: Option<&dyn KeyProvider>,
) -> Result<EncodedSegment, StoreError> {
    let id = header.segment_id;
    let (rows, min_time, max_time, columns_meta) = (header.rows, header.min_time, header.max_time, header.columns.clone());
    let mut sealing = None;
    if let Some(keys) = keys {
        let key_err = |source| StoreError::Key { segment: id.to_string(), source };
        let key = keys.current(header.workspace_id).map_err(key_err)?;
        let dek = DataKey::generate().map_err(key_err)?;
        let wrapped = keys.wrap(header.workspace_id, &key, &dek).map_err(key_err)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| key_err(KeyError::Random))?;
        if header.format_version == IPC_FORMAT_VERSION {
            header.format_version = SEALED_IPC_FORMAT_VERSION;
        }
        header.seal = Some(SealInfo {
            alg: SEAL_ALG.to_string(),
            key,
            wrapped_key: base64::engine::general_purpose::STANDARD.encode(wrapped),
            nonce: hex::encode(nonce),
        });
        sealing = Some((dek, nonce));
    }
    let header_json = serde_json::to_vec(&header)
        .map_err(|e| StoreError::Encode { segment: id.to_string(), reason: format!("header json: {e}") })?;
    let header_len = u32::try_from(header_json.len())
        .map_err(|_| StoreError::Encode { segment: id.to_string(), reason: "header longer than 4 GiB".into() })?;

    let mut out = Vec::with_capacity(PREAMBLE_LEN + header_json.len() + body.len() + 16 + TRAILER_LEN);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&header.format_version.to_le_bytes());
    let flags = if sealing.is_some() { FLAG_SEALED } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header_json);
    if let Some((dek, nonce)) = sealing {
        // The header (but for the wrapping of the data key) is the
        // associated data: the row count, time range, ids and nonce
        // cannot change.
        let aad = seal_aad(&header)?;
        aead(&dek)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| StoreError::Encode { segment: id.to_string(), reason: "sealing failed".into() })?;
    }
    out.extend_from_slice(&body);

    let total = out.len() as u64;
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(SEGMENT_MAGIC);
    Ok(EncodedSegment { bytes: Bytes::from(out), rows, min_time, max_time, columns: columns_meta, index })
}

/// The associated data of a sealed body: a label, then the header as JSON
/// with the data key's wrapping blanked (`seal.key` and `seal.wrapped_key`),
/// so a rotation can rewrap the data key ([`rewrap_segment`]) without
/// touching the body. The wrapping needs no binding here: a wrapped key is
/// authenticated under the workspace key, and any other data key fails to
/// open the body.
fn seal_aad(header: &SegmentHeader) -> Result<Vec<u8>, StoreError> {
    let mut h = header.clone();
    if let Some(seal) = h.seal.as_mut() {
        seal.key = KeyRef { key_id: String::new(), version: 0 };
        seal.wrapped_key = String::new();
    }
    let mut aad = b"custos-segment-v2\0".to_vec();
    serde_json::to_writer(&mut aad, &h).map_err(|e| corrupt(format!("segment {}: header json: {e}", header.segment_id)))?;
    Ok(aad)
}

/// Rewraps a sealed segment's data key under the workspace's current key
/// in `keys` (after a rotation): the header is rewritten, the sealed body
/// is copied unchanged (never decrypted). Returns `None` when the segment
/// already uses the current key. The whole segment is verified first: a
/// damaged one is reported, never rewrapped.
pub fn rewrap_segment(bytes: &[u8], keys: &dyn KeyProvider) -> Result<Option<Bytes>, StoreError> {
    let decoded = decode_segment_with(bytes, Some(&[]), Some(keys))?;
    let mut header = decoded.header;
    let seg = header.segment_id.to_string();
    let key_err = |source| StoreError::Key { segment: seg.clone(), source };
    let Some(seal) = header.seal.as_mut() else { return Ok(None) };
    let current = keys.current(header.workspace_id).map_err(key_err)?;
    if seal.key == current {
        return Ok(None);
    }
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(&seal.wrapped_key)
        .map_err(|_| corrupt(format!("segment {seg}: bad wrapped key")))?;
    let dek = keys.unwrap(header.workspace_id, &seal.key, &wrapped).map_err(key_err)?;
    let rewrapped = keys.wrap(header.workspace_id, &current, &dek).map_err(key_err)?;
    seal.key = current;
    seal.wrapped_key = base64::engine::general_purpose::STANDARD.encode(rewrapped);
    let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let body = &bytes[PREAMBLE_LEN + header_len..bytes.len() - TRAILER_LEN];
    let header_json = serde_json::to_vec(&header).map_err(|e| corrupt(format!("segment {seg}: header json: {e}")))?;
    let new_len = u32::try_from(header_json.len()).map_err(|_| corrupt(format!("segment {seg}: header too long")))?;
    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.extend_from_slice(&bytes[..8]);
    out.extend_from_slice(&new_len.to_le_bytes());
    out.extend_from_slice(&header_json);
    out.extend_from_slice(body);
    let total = out.len() as u64;
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(SEGMENT_MAGIC);
    Ok(Some(Bytes::from(out)))
}

fn aead(key: &DataKey) -> LessSafeKey {
    // Invariant: a `DataKey` is 32 bytes, a valid AES-256 key.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.expose()).expect("a 32-byte AES-256 key"))
}

fn corrupt(msg: impl Into<String>) -> StoreError {
    StoreError::CorruptSegment(msg.into())
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    // Callers check `b.len() >= at + 2`.
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Decode and verify segment bytes (see the module docs for the layout).
///
/// Checks, in order: the minimum length, both magics, the trailer's length,
/// the CRC-32C, the format version and flags, the header length and JSON,
/// then reads the body (Parquet, or the Arrow IPC of legacy versions) and
/// checks its schema, row count and time range against the header. Any
/// damaged or truncated byte gives [`StoreError::CorruptSegment`] naming the
/// check that failed; an intact segment of another version gives
/// [`StoreError::UnsupportedSegmentVersion`].
pub fn decode_segment(bytes: &[u8]) -> Result<DecodedSegment, StoreError> {
    decode_segment_columns(bytes, None)
}

/// Like [`decode_segment`], but decompresses and decodes only the named
/// columns; columns the segment lacks are ignored. `time` is decoded too
/// when nothing else is (a batch needs a column to carry its row count),
/// and always for legacy IPC bodies; otherwise the body's time range is
/// checked against the Parquet footer's statistics instead. The whole file
/// is still checksummed (and authenticated, when sealed). The returned
/// schema and batches hold only the decoded columns, in segment order.
pub fn decode_segment_columns(bytes: &[u8], columns: Option<&[String]>) -> Result<DecodedSegment, StoreError> {
    decode_segment_with(bytes, columns, None)
}

/// Like [`decode_segment_columns`], opening sealed segments with `keys`:
/// the data key is unwrapped by the provider and the body authenticated
/// (with the preamble and header) before anything in it is read. A sealed
/// segment without `keys` gives [`StoreError::Sealed`]; one that fails
/// authentication (a changed byte whose checksum was forged, another
/// workspace's segment, a wrong key) gives [`StoreError::Tampered`] naming
/// it; a key the provider refuses (revoked, unknown) gives
/// [`StoreError::Key`].
pub fn decode_segment_with(
    bytes: &[u8],
    columns: Option<&[String]>,
    keys: Option<&dyn KeyProvider>,
) -> Result<DecodedSegment, StoreError> {
    decode_segment_opts(bytes, &DecodeOptions { columns, keys, ..DecodeOptions::default() })
}

/// How [`decode_segment_opts`] decodes a segment.
#[derive(Clone, Copy, Default)]
pub struct DecodeOptions<'a> {
    /// Decode only these columns (plus `time`); `None` decodes all.
    pub columns: Option<&'a [String]>,
    /// Opens sealed segments; without it a sealed segment gives
    /// [`StoreError::Sealed`].
    pub keys: Option<&'a dyn KeyProvider>,
    /// Type string columns Utf8View instead of Utf8 (the same values): what
    /// DataFusion hashes and compares fastest, and, for Parquet bodies,
    /// views into the decoded dictionary rather than copies.
    pub string_views: bool,
    /// Most rows per returned batch; 0 means [`MAX_BATCH_ROWS`].
    pub batch_rows: usize,
}

impl std::fmt::Debug for DecodeOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeOptions")
            .field("columns", &self.columns)
            .field("keys", &self.keys.map(|_| "<provider>"))
            .field("string_views", &self.string_views)
            .field("batch_rows", &self.batch_rows)
            .finish()
    }
}

/// The body encodings, by format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Ipc,
    Parquet,
}

/// [`decode_segment_with`] with every option (see [`DecodeOptions`]).
pub fn decode_segment_opts(bytes: &[u8], opts: &DecodeOptions<'_>) -> Result<DecodedSegment, StoreError> {
    let (columns, keys) = (opts.columns, opts.keys);
    let batch_rows = if opts.batch_rows == 0 { MAX_BATCH_ROWS } else { opts.batch_rows.min(MAX_BATCH_ROWS) };
    let len = bytes.len();
    if len < PREAMBLE_LEN + TRAILER_LEN {
        return Err(corrupt(format!(
            "truncated: {len} bytes is shorter than the {} bytes of preamble and trailer",
            PREAMBLE_LEN + TRAILER_LEN
        )));
    }
    if &bytes[..4] != SEGMENT_MAGIC {
        return Err(corrupt("bad leading magic: not a custos segment"));
    }
    if &bytes[len - 4..] != SEGMENT_MAGIC {
        return Err(corrupt("bad trailing magic: truncated, or not a custos segment"));
    }
    let body_end = len - TRAILER_LEN;
    let trailer = &bytes[body_end..];
    let mut total = [0u8; 8];
    total.copy_from_slice(&trailer[..8]);
    let declared = u64::from_le_bytes(total);
    if declared != body_end as u64 {
        return Err(corrupt(format!(
            "length mismatch: the trailer declares {declared} bytes before it, found {body_end}"
        )));
    }
    let expected_crc = u32::from_le_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]);
    let actual_crc = crc32c::crc32c(&bytes[..body_end]);
    let version = le_u16(bytes, 4);
    let known = [IPC_FORMAT_VERSION, SEALED_IPC_FORMAT_VERSION, SEGMENT_FORMAT_VERSION].contains(&version);
    if expected_crc != actual_crc {
        let note = if known { String::new() } else { format!(" (the preamble declares format version {version})") };
        return Err(corrupt(format!(
            "checksum mismatch: the trailer says crc32c {expected_crc:#010x}, the bytes give {actual_crc:#010x}{note}"
        )));
    }
    let flags = le_u16(bytes, 6);
    let (body_kind, sealed) = match (version, flags) {
        (IPC_FORMAT_VERSION, 0) => (Body::Ipc, false),
        (SEALED_IPC_FORMAT_VERSION, FLAG_SEALED) => (Body::Ipc, true),
        (SEGMENT_FORMAT_VERSION, 0) => (Body::Parquet, false),
        (SEGMENT_FORMAT_VERSION, FLAG_SEALED) => (Body::Parquet, true),
        _ if known => return Err(StoreError::UnsupportedSegmentFlags { flags }),
        _ => return Err(StoreError::UnsupportedSegmentVersion { version, supported: SEGMENT_FORMAT_VERSION }),
    };
    let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if header_len > body_end - PREAMBLE_LEN {
        return Err(corrupt(format!(
            "header length {header_len} runs past the {} bytes available",
            body_end - PREAMBLE_LEN
        )));
    }
    let header_end = PREAMBLE_LEN + header_len;
    let header: SegmentHeader = serde_json::from_slice(&bytes[PREAMBLE_LEN..header_end])
        .map_err(|e| corrupt(format!("header is not a valid segment header: {e}")))?;
    let seg = header.segment_id;
    if header.format_version != version {
        return Err(corrupt(format!(
            "segment {seg}: header declares format version {} but the preamble {version}",
            header.format_version
        )));
    }
    if !header.columns.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err(corrupt(format!("segment {seg}: header columns are not sorted and unique")));
    }

    let stored = table_schema([header.columns.as_slice()]);
    let expected = if opts.string_views { string_views(&stored) } else { Arc::clone(&stored) };
    // The body as one owned buffer the reader decodes from (a sealed body
    // is decrypted into it, with no further copy).
    let plain: Vec<u8> = match (&header.seal, sealed) {
        (None, false) => bytes[header_end..body_end].to_vec(),
        (Some(seal), true) => {
            let Some(keys) = keys else { return Err(StoreError::Sealed { segment: seg.to_string() }) };
            open_body(bytes, header_end, body_end, &header, seal, keys)?
        }
        _ => {
            return Err(corrupt(format!(
                "segment {seg}: the flags ({flags}) and the header's seal disagree"
            )))
        }
    };
    // Legacy IPC bodies always decode `time` (their time-range check needs
    // it); Parquet bodies only when asked or when nothing else is (a batch
    // needs a column to carry its rows), checking the time range against
    // the footer's statistics otherwise.
    let projection: Option<Vec<usize>> = columns.map(|cols| {
        let asked = |f: &Field| cols.iter().any(|c| c == f.name());
        let mut p: Vec<usize> = stored
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, f)| (*i == 0 && body_kind == Body::Ipc) || asked(f))
            .map(|(i, _)| i)
            .collect();
        if p.is_empty() {
            p.push(0);
        }
        p
    });
    let time_decoded = projection.as_ref().is_none_or(|p| p.first() == Some(&0));
    // The readers trust sizes inside the body; `read_ipc` and
    // `read_parquet` bound them first, and any panic left in Arrow or
    // Parquet on crafted input becomes an error.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match body_kind {
        Body::Ipc => read_ipc(plain, &stored, projection.clone()).and_then(|batches| {
            if opts.string_views {
                let target = match &projection {
                    Some(p) => Arc::new(expected.project(p).map_err(|e| e.to_string())?),
                    None => Arc::clone(&expected),
                };
                let views = batches.iter().map(|b| adapt_batch(b, &target).map_err(|e| e.to_string()));
                Ok((views.collect::<Result<Vec<_>, _>>()?, None))
            } else {
                Ok((batches, None))
            }
        }),
        Body::Parquet => read_parquet(plain, &expected, header.rows, projection.clone(), batch_rows),
    }));
    let what = match body_kind {
        Body::Ipc => "arrow ipc body",
        Body::Parquet => "parquet body",
    };
    let (batches, footer_times) = match read {
        Ok(r) => r.map_err(|e| corrupt(format!("segment {seg}: {what}: {e}")))?,
        Err(_) => return Err(corrupt(format!("segment {seg}: {what}: the reader panicked"))),
    };
    let mut rows = 0u64;
    let mut times: Option<(i64, i64)> = None;
    for batch in &batches {
        rows += batch.num_rows() as u64;
        let time = if time_decoded { batch.columns().first() } else { None };
        if let Some(t) = time.and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>()) {
            if let (Some(lo), Some(hi)) = (arrow::compute::min(t), arrow::compute::max(t)) {
                times = Some(match times {
                    None => (lo, hi),
                    Some((a, b)) => (a.min(lo), b.max(hi)),
                });
            }
        }
    }
    if rows != header.rows {
        return Err(corrupt(format!("segment {seg}: the header declares {} rows, the body holds {rows}", header.rows)));
    }
    if !time_decoded {
        times = footer_times;
    }
    if rows > 0 && times != Some((header.min_time, header.max_time)) {
        return Err(corrupt(format!("segment {seg}: the body's time range does not match the header's")));
    }
    let schema = match &projection {
        Some(p) => Arc::new(expected.project(p).map_err(|e| corrupt(format!("segment {seg}: projection: {e}")))?),
        None => expected,
    };
    Ok(DecodedSegment { header, schema, batches })
}

/// The batches read from a body, and the time range its footer's
/// statistics give (Parquet bodies only).
type BodyRows = (Vec<RecordBatch>, Option<(i64, i64)>);

/// Read the record batches of a Parquet body (format version 3),
/// interpreting its columns with `schema` (the header's; the file's own
/// metadata is not trusted for types).
///
/// Before a page is decoded, the footer is checked: `rows` rows in all, row
/// groups of at most [`MAX_ROW_GROUP_ROWS`] rows, one column chunk per schema
/// column, each lying inside the body and declaring at most
/// [`MAX_DECODED_BUFFER_BYTES`] uncompressed. Also returns the time range
/// the footer's statistics of `time` give.
fn read_parquet(
    body: Vec<u8>,
    schema: &SchemaRef,
    rows: u64,
    projection: Option<Vec<usize>>,
    batch_rows: usize,
) -> Result<BodyRows, String> {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::statistics::Statistics;
    use parquet::arrow::ProjectionMask;
    let len = body.len() as u64;
    let options = ArrowReaderOptions::new().with_schema(Arc::clone(schema));
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(Bytes::from(body), options).map_err(|e| e.to_string())?;
    let meta = builder.metadata();
    let mut total: u64 = 0;
    // The time range by the footer's statistics of `time` (column 0).
    let mut times: Option<(i64, i64)> = None;
    for (i, rg) in meta.row_groups().iter().enumerate() {
        let bad = |what: String| format!("row group {i}: {what}");
        let n = u64::try_from(rg.num_rows()).map_err(|_| bad("a negative row count".into()))?;
        if n > MAX_ROW_GROUP_ROWS as u64 {
            return Err(bad(format!("{n} rows is more than {MAX_ROW_GROUP_ROWS}")));
        }
        total += n;
        if rg.columns().len() != schema.fields().len() {
            return Err(bad(format!("{} column chunks for {} columns", rg.columns().len(), schema.fields().len())));
        }
        if let Some(Statistics::Int64(st)) = rg.column(0).statistics() {
            if let (Some(lo), Some(hi)) = (st.min_opt(), st.max_opt()) {
                times = Some(times.map_or((*lo, *hi), |(a, b)| (a.min(*lo), b.max(*hi))));
            }
        }
        for c in rg.columns() {
            let (start, clen) = c.byte_range();
            if start.checked_add(clen).is_none_or(|end| end > len) {
                return Err(bad(format!("a column chunk at {start}+{clen} lies outside the {len}-byte body")));
            }
            if !(0..=MAX_DECODED_BUFFER_BYTES).contains(&c.uncompressed_size()) {
                return Err(bad(format!("a column chunk declares {} uncompressed bytes", c.uncompressed_size())));
            }
        }
    }
    if total != rows {
        return Err(format!("the footer declares {total} rows, the header {rows}"));
    }
    let mask = match projection {
        Some(p) => ProjectionMask::roots(builder.parquet_schema(), p),
        None => ProjectionMask::all(),
    };
    let reader = builder.with_projection(mask).with_batch_size(batch_rows).build().map_err(|e| e.to_string())?;
    let batches = reader.map(|b| b.map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
    Ok((batches, times))
}

/// Unwraps the data key of a sealed segment and opens its body.
fn open_body(
    bytes: &[u8],
    header_end: usize,
    body_end: usize,
    header: &SegmentHeader,
    seal: &SealInfo,
    keys: &dyn KeyProvider,
) -> Result<Vec<u8>, StoreError> {
    let seg = header.segment_id.to_string();
    let tampered = |reason: &str| StoreError::Tampered { segment: seg.clone(), reason: reason.to_string() };
    if seal.alg != SEAL_ALG {
        return Err(corrupt(format!("segment {seg}: unknown cipher {:?}", seal.alg)));
    }
    let nonce: [u8; NONCE_LEN] = hex::decode(&seal.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| corrupt(format!("segment {seg}: bad nonce")))?;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(&seal.wrapped_key)
        .map_err(|_| corrupt(format!("segment {seg}: bad wrapped key")))?;
    let dek = keys.unwrap(header.workspace_id, &seal.key, &wrapped).map_err(|source| match source {
        KeyError::Unwrap { .. } => tampered("its data key does not unwrap under the key its header names"),
        source => StoreError::Key { segment: seg.clone(), source },
    })?;
    let mut body = bytes[header_end..body_end].to_vec();
    let plain_len = aead(&dek)
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(seal_aad(header)?), &mut body)
        .map_err(|_| tampered("the body fails authentication"))?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

/// Largest decompressed size accepted for one Arrow buffer or Parquet
/// column chunk (1 GiB); larger declared sizes are treated as corruption
/// instead of being allocated.
const MAX_DECODED_BUFFER_BYTES: i64 = 1 << 30;

/// Read the record batches of a legacy Arrow IPC body (format versions 1
/// and 2), interpreting them with the schema the header
/// implies (the file's own schema message is not trusted).
///
/// Before Arrow decodes a block, its message is parsed here and checked:
/// the block lies inside the file, it is a record batch of at most
/// [`MAX_BATCH_ROWS`] rows, every buffer lies inside the body, and every
/// compressed buffer declares at most [`MAX_DECODED_BUFFER_BYTES`].
fn read_ipc(owned: Vec<u8>, schema: &SchemaRef, projection: Option<Vec<usize>>) -> Result<Vec<RecordBatch>, String> {
    use arrow::ipc::reader::{read_footer_length, FileDecoder};
    const ARROW_TRAILER: usize = 10; // i32 footer length + "ARROW1"
    let len = owned.len();
    if len < 8 + ARROW_TRAILER {
        return Err(format!("{len} bytes is too short for an arrow ipc file"));
    }
    let buffer = arrow::buffer::Buffer::from_vec(owned);
    let ipc: &[u8] = buffer.as_slice();
    let len = ipc.len();
    let trailer_start = len - ARROW_TRAILER;
    let mut tail = [0u8; ARROW_TRAILER];
    tail.copy_from_slice(&ipc[trailer_start..]);
    let footer_len = read_footer_length(tail).map_err(|e| e.to_string())?;
    let footer_start = trailer_start
        .checked_sub(footer_len)
        .ok_or_else(|| format!("footer length {footer_len} runs past the start of the file"))?;
    let footer = arrow::ipc::root_as_footer(&ipc[footer_start..trailer_start]).map_err(|e| format!("footer: {e}"))?;
    if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
        return Err("unexpected dictionary blocks".into());
    }
    let blocks = footer.recordBatches().ok_or("the footer lists no record batches")?;
    let mut decoder = FileDecoder::new(Arc::clone(schema), footer.version());
    if let Some(p) = projection {
        decoder = decoder.with_projection(p);
    }
    let mut batches = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let bad = |what: String| format!("record batch {i}: {what}");
        let offset = usize::try_from(block.offset()).map_err(|_| bad("negative offset".into()))?;
        let meta = usize::try_from(block.metaDataLength()).map_err(|_| bad("negative metadata length".into()))?;
        let body = usize::try_from(block.bodyLength()).map_err(|_| bad("negative body length".into()))?;
        let end = offset.checked_add(meta).and_then(|x| x.checked_add(body));
        if end.is_none_or(|end| end > footer_start) || meta < 8 {
            return Err(bad("block lies outside the file".into()));
        }
        check_block(&ipc[offset..offset + meta], &ipc[offset + meta..offset + meta + body]).map_err(bad)?;
        let data = buffer.slice_with_length(offset, meta + body);
        match decoder.read_record_batch(block, &data) {
            Ok(Some(batch)) => batches.push(batch),
            Ok(None) => return Err(bad("empty message".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
    }
    Ok(batches)
}

/// Bounds-check one record-batch block before Arrow decodes it.
fn check_block(meta: &[u8], body: &[u8]) -> Result<(), String> {
    // Message framing: 0xFFFFFFFF continuation marker, i32 length, flatbuffer
    // (or the pre-0.15 form without the marker).
    let fb = if meta[..4] == [0xff; 4] { &meta[8..] } else { &meta[4..] };
    let message = arrow::ipc::root_as_message(fb).map_err(|e| format!("message: {e}"))?;
    let batch = message.header_as_record_batch().ok_or("the message is not a record batch")?;
    let rows = batch.length();
    if !(0..=MAX_BATCH_ROWS as i64).contains(&rows) {
        return Err(format!("{rows} rows is outside 0..={MAX_BATCH_ROWS}"));
    }
    if batch.nodes().is_some_and(|nodes| nodes.iter().any(|n| n.length() != rows || !(0..=rows).contains(&n.null_count()))) {
        return Err("a column's length or null count disagrees with the batch".into());
    }
    let compressed = batch.compression().is_some();
    for buf in batch.buffers().iter().flatten() {
        let (start, len) = (buf.offset(), buf.length());
        let inside = start >= 0 && len >= 0 && start.checked_add(len).is_some_and(|e| e <= body.len() as i64);
        if !inside {
            return Err(format!("buffer {start}+{len} lies outside the {}-byte body", body.len()));
        }
        if compressed && len >= 8 {
            let at = start as usize;
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&body[at..at + 8]);
            let declared = i64::from_le_bytes(prefix);
            if !(-1..=MAX_DECODED_BUFFER_BYTES).contains(&declared) {
                return Err(format!("a compressed buffer declares {declared} decompressed bytes"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
