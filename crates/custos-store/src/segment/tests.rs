use super::*;
use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::Field;
use custos_model::{Category, Level};
use proptest::prelude::*;

fn table() -> TableName {
    TableName::new("logs").unwrap()
}

fn event(time: i64, message: &str, attrs: Vec<(&str, Value)>) -> Event {
    Event {
        table: table(),
        time,
        level: Level::Enhanced,
        category: Category::Logs,
        host: "host-1".into(),
        message: message.into(),
        attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// One decoded row: envelope fields and the non-null attributes.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    time: i64,
    level: u8,
    category: String,
    host: String,
    message: String,
    agent: String,
    attrs: BTreeMap<String, Value>,
}

fn strings(a: &ArrayRef) -> &StringArray {
    a.as_any().downcast_ref::<StringArray>().unwrap()
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        let time = b.column(0).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        let level = b.column(1).as_any().downcast_ref::<UInt8Array>().unwrap();
        for i in 0..b.num_rows() {
            let mut attrs = BTreeMap::new();
            for (f, col) in schema.fields().iter().zip(b.columns()).skip(ENVELOPE_COLUMNS.len()) {
                if col.is_null(i) {
                    continue;
                }
                let v = match col.data_type() {
                    DataType::Boolean => Value::Bool(col.as_any().downcast_ref::<BooleanArray>().unwrap().value(i)),
                    DataType::Int64 => Value::Int(col.as_any().downcast_ref::<Int64Array>().unwrap().value(i)),
                    DataType::Float64 => Value::Float(col.as_any().downcast_ref::<Float64Array>().unwrap().value(i)),
                    DataType::Utf8 => Value::Str(strings(col).value(i).to_string()),
                    other => panic!("unexpected attribute type {other}"),
                };
                attrs.insert(f.name().clone(), v);
            }
            out.push(Row {
                time: time.value(i),
                level: level.value(i),
                category: strings(b.column(2)).value(i).to_string(),
                host: strings(b.column(3)).value(i).to_string(),
                message: strings(b.column(4)).value(i).to_string(),
                agent: strings(b.column(5)).value(i).to_string(),
                attrs,
            });
        }
    }
    out
}

/// Arrow's string form of a float (what the cast to Utf8 writes).
fn float_str(f: f64) -> String {
    let a: ArrayRef = Arc::new(Float64Array::from(vec![f]));
    strings(&cast(&a, &DataType::Utf8).unwrap()).value(0).to_string()
}

fn convert(v: &Value, to: ValueType) -> Value {
    match (v, to) {
        (v, t) if v.value_type() == t => v.clone(),
        (Value::Int(i), ValueType::Float) => Value::Float(*i as f64),
        (Value::Bool(b), ValueType::Str) => Value::Str(b.to_string()),
        (Value::Int(i), ValueType::Str) => Value::Str(i.to_string()),
        (Value::Float(f), ValueType::Str) => Value::Str(float_str(*f)),
        (v, t) => panic!("no conversion of {v:?} to {t:?}"),
    }
}

/// What decoding should give: rows stably sorted by time, attributes
/// converted to each key's widened type.
fn expected_rows(events: &[(AgentId, Event)]) -> (Vec<Row>, Vec<(String, ValueType)>) {
    let mut types: BTreeMap<String, ValueType> = BTreeMap::new();
    for (_, e) in events {
        for (k, v) in &e.attrs {
            types.entry(k.clone()).and_modify(|t| *t = t.widen(v.value_type())).or_insert(v.value_type());
        }
    }
    let mut sorted: Vec<&(AgentId, Event)> = events.iter().collect();
    sorted.sort_by_key(|(_, e)| e.time);
    let rows = sorted
        .into_iter()
        .map(|(a, e)| Row {
            time: e.time,
            level: u8::from(e.level),
            category: e.category.name().to_string(),
            host: e.host.clone(),
            message: e.message.clone(),
            agent: a.to_string(),
            attrs: e.attrs.iter().map(|(k, v)| (k.clone(), convert(v, types[k]))).collect(),
        })
        .collect();
    (rows, types.into_iter().collect())
}

fn encode(events: &[(AgentId, Event)]) -> (WorkspaceId, SegmentId, EncodedSegment) {
    let ws = WorkspaceId::new();
    let id = SegmentId::new();
    let mut b = SegmentBuilder::new(ws, table());
    for (a, e) in events {
        b.push(*a, e);
    }
    assert_eq!(b.rows(), events.len());
    (ws, id, b.finish(id).unwrap())
}

fn check_round_trip(events: &[(AgentId, Event)]) {
    let (ws, id, enc) = encode(events);
    let (rows, columns) = expected_rows(events);
    let dec = decode_segment(&enc.bytes).unwrap();
    assert_eq!(enc.rows, events.len() as u64);
    assert_eq!(enc.columns, columns);
    assert_eq!(dec.header.columns, columns);
    assert_eq!(dec.header.segment_id, id);
    assert_eq!(dec.header.workspace_id, ws);
    assert_eq!(dec.header.table, table());
    assert_eq!(dec.header.rows, enc.rows);
    assert_eq!((dec.header.min_time, dec.header.max_time), (enc.min_time, enc.max_time));
    assert_eq!(enc.min_time, rows.first().unwrap().time);
    assert_eq!(enc.max_time, rows.last().unwrap().time);
    assert_eq!(dec.schema, table_schema([columns.as_slice()]));
    assert_eq!(rows_of(&dec.batches), rows);
}

fn sample_segment() -> EncodedSegment {
    let agent = AgentId::new();
    let events: Vec<_> = (0..40)
        .map(|i| {
            let attrs = vec![("pid", Value::Int(i)), ("unit", Value::Str(format!("u{}", i % 3)))];
            (agent, event(1000 - i * 7, &format!("line {i}"), attrs))
        })
        .collect();
    encode(&events).2
}

#[test]
fn round_trip_keeps_values_and_types_and_sorts_rows_by_time() {
    let (a1, a2) = (AgentId::new(), AgentId::new());
    let events = vec![
        (a1, event(30, "third", vec![("ok", Value::Bool(true)), ("pid", Value::Int(7))])),
        (a2, event(10, "first", vec![("ratio", Value::Float(0.25)), ("unit", "sshd.service".into())])),
        (a1, event(20, "second-a", vec![])),
        (a2, event(20, "second-b", vec![("pid", Value::Int(-3)), ("ok", Value::Bool(false))])),
        (a1, event(-5, "before the epoch", vec![("unit", "".into())])),
    ];
    check_round_trip(&events);
    let (_, _, enc) = encode(&events);
    let dec = decode_segment(&enc.bytes).unwrap();
    let messages: Vec<_> = rows_of(&dec.batches).into_iter().map(|r| r.message).collect();
    assert_eq!(messages, ["before the epoch", "first", "second-a", "second-b", "third"]);
    assert_eq!(
        enc.columns,
        vec![
            ("ok".to_string(), ValueType::Bool),
            ("pid".to_string(), ValueType::Int),
            ("ratio".to_string(), ValueType::Float),
            ("unit".to_string(), ValueType::Str),
        ]
    );
    let schema = dec.schema;
    assert_eq!(schema.field(0).data_type(), &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
    assert_eq!(schema.field_with_name("pid").unwrap().data_type(), &DataType::Int64);
    assert!(schema.field_with_name("pid").unwrap().is_nullable());
    assert!(!schema.field_with_name("message").unwrap().is_nullable());
}

#[test]
fn conflicting_types_within_a_segment_are_widened_and_values_converted() {
    let a = AgentId::new();
    let events = vec![
        (a, event(1, "m", vec![("n", Value::Int(5)), ("mixed", Value::Int(12)), ("flag", Value::Bool(true))])),
        (a, event(2, "m", vec![("n", Value::Float(2.5)), ("mixed", "text".into()), ("flag", Value::Int(3))])),
        (a, event(3, "m", vec![("mixed", Value::Float(1.5)), ("flag", Value::Bool(false))])),
    ];
    let (_, _, enc) = encode(&events);
    assert_eq!(
        enc.columns,
        vec![
            ("flag".to_string(), ValueType::Str),
            ("mixed".to_string(), ValueType::Str),
            ("n".to_string(), ValueType::Float),
        ]
    );
    let rows = rows_of(&decode_segment(&enc.bytes).unwrap().batches);
    assert_eq!(rows[0].attrs["n"], Value::Float(5.0));
    assert_eq!(rows[1].attrs["n"], Value::Float(2.5));
    assert!(!rows[2].attrs.contains_key("n"));
    assert_eq!(rows[0].attrs["mixed"], Value::Str("12".into()));
    assert_eq!(rows[1].attrs["mixed"], Value::Str("text".into()));
    assert_eq!(rows[2].attrs["mixed"], Value::Str("1.5".into()));
    assert_eq!(rows[0].attrs["flag"], Value::Str("true".into()));
    assert_eq!(rows[1].attrs["flag"], Value::Str("3".into()));
    assert_eq!(rows[2].attrs["flag"], Value::Str("false".into()));
    check_round_trip(&events);
}

#[test]
fn large_segments_are_split_into_batches_of_at_most_64k_rows() {
    let a = AgentId::new();
    let n = MAX_BATCH_ROWS * 2 + 123;
    // Reverse time order forces the sorting path.
    let events: Vec<_> = (0..n).map(|i| (a, event((n - i) as i64, "x", vec![("i", Value::Int(i as i64))]))).collect();
    let (_, _, enc) = encode(&events);
    let dec = decode_segment(&enc.bytes).unwrap();
    let sizes: Vec<_> = dec.batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(sizes, vec![MAX_BATCH_ROWS, MAX_BATCH_ROWS, 123]);
    let rows = rows_of(&dec.batches);
    assert!(rows.windows(2).all(|w| w[0].time <= w[1].time));
    assert_eq!(rows[0].attrs["i"], Value::Int(n as i64 - 1));
}

#[test]
fn an_empty_builder_refuses_to_finish() {
    let b = SegmentBuilder::new(WorkspaceId::new(), table());
    assert_eq!((b.rows(), b.approx_bytes()), (0, 0));
    let err = b.finish(SegmentId::new()).unwrap_err();
    assert!(matches!(err, StoreError::EmptySegment { .. }), "{err:?}");
    assert!(err.to_string().contains("no rows"));
}

#[test]
fn approx_bytes_grows_with_the_events_pushed() {
    let mut b = SegmentBuilder::new(WorkspaceId::new(), table());
    b.push(AgentId::new(), &event(1, &"x".repeat(1000), vec![]));
    assert!(b.approx_bytes() >= 1000);
}

#[test]
fn table_schema_is_the_union_of_segment_columns_with_conflicts_widened() {
    let s1 = vec![("pid".to_string(), ValueType::Int), ("unit".to_string(), ValueType::Str)];
    let s2 = vec![("pid".to_string(), ValueType::Float), ("ok".to_string(), ValueType::Bool)];
    let s3 = vec![("ok".to_string(), ValueType::Int), ("zeta".to_string(), ValueType::Int)];
    let schema = table_schema([s1.as_slice(), s2.as_slice(), s3.as_slice()]);
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["time", "level", "category", "host", "message", "agent_id", "ok", "pid", "unit", "zeta"]);
    let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
    assert_eq!(ty("ok"), DataType::Utf8);
    assert_eq!(ty("pid"), DataType::Float64);
    assert_eq!(ty("unit"), DataType::Utf8);
    assert_eq!(ty("zeta"), DataType::Int64);
    assert_eq!(table_schema(std::iter::empty()).fields().len(), ENVELOPE_COLUMNS.len());
}

#[test]
fn adapt_batch_reorders_casts_and_fills_missing_columns_with_nulls() {
    let a = AgentId::new();
    let events = vec![
        (a, event(1, "a", vec![("pid", Value::Int(4)), ("ok", Value::Bool(true))])),
        (a, event(2, "b", vec![("pid", Value::Int(5))])),
    ];
    let (_, _, enc) = encode(&events);
    let dec = decode_segment(&enc.bytes).unwrap();
    let other = vec![
        ("pid".to_string(), ValueType::Float),
        ("ok".to_string(), ValueType::Str),
        ("unit".to_string(), ValueType::Str),
    ];
    let target = table_schema([enc.columns.as_slice(), other.as_slice()]);
    let adapted = adapt_batch(&dec.batches[0], &target).unwrap();
    assert_eq!(adapted.schema(), target);
    let rows = rows_of(&[adapted]);
    assert_eq!(rows[0].attrs["pid"], Value::Float(4.0));
    assert_eq!(rows[0].attrs["ok"], Value::Str("true".into()));
    assert!(!rows[1].attrs.contains_key("ok"));
    assert!(rows.iter().all(|r| !r.attrs.contains_key("unit")));
    assert_eq!(rows[1].message, "b");
}

#[test]
fn adapt_batch_refuses_narrowing_unknown_and_missing_required_columns() {
    let a = AgentId::new();
    let (_, _, enc) = encode(&[(a, event(1, "a", vec![("pid", Value::Float(1.5))]))]);
    let batch = &decode_segment(&enc.bytes).unwrap().batches[0];
    let narrower = table_schema([[("pid".to_string(), ValueType::Int)].as_slice()]);
    let err = adapt_batch(batch, &narrower).unwrap_err();
    assert!(matches!(&err, StoreError::SchemaMismatch { column, .. } if column == "pid"), "{err:?}");
    let without_pid = table_schema(std::iter::empty());
    assert!(matches!(adapt_batch(batch, &without_pid), Err(StoreError::SchemaMismatch { .. })));
    let full = table_schema([[("pid".to_string(), ValueType::Float)].as_slice()]);
    let err = adapt_batch(&batch.project(&[0, 1, 2, 4, 5, 6]).unwrap(), &full).unwrap_err();
    assert!(matches!(&err, StoreError::SchemaMismatch { column, .. } if column == "host"), "{err:?}");
}

#[test]
fn every_flipped_byte_is_detected_as_corruption() {
    let enc = sample_segment();
    for pos in 0..enc.bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut b = enc.bytes.to_vec();
            b[pos] ^= mask;
            match decode_segment(&b) {
                Err(StoreError::CorruptSegment(_)) => {}
                other => panic!("flipping byte {pos} with {mask:#x} gave {other:?}"),
            }
        }
    }
}

#[test]
fn every_truncation_and_extension_is_detected_as_corruption() {
    let enc = sample_segment();
    for cut in 0..enc.bytes.len() {
        let err = decode_segment(&enc.bytes[..cut]).unwrap_err();
        assert!(matches!(err, StoreError::CorruptSegment(_)), "cut at {cut}: {err:?}");
    }
    let mut longer = enc.bytes.to_vec();
    longer.push(0);
    assert!(matches!(decode_segment(&longer), Err(StoreError::CorruptSegment(_))));
    let mut prefixed = vec![0u8];
    prefixed.extend_from_slice(&enc.bytes);
    assert!(matches!(decode_segment(&prefixed), Err(StoreError::CorruptSegment(_))));
}

#[test]
fn corruption_errors_name_the_failed_check() {
    let enc = sample_segment();
    let msg = |b: &[u8]| decode_segment(b).unwrap_err().to_string();
    assert!(msg(&enc.bytes[..10]).contains("truncated"));
    assert!(msg(&enc.bytes[..enc.bytes.len() - 1]).contains("trailing magic"));
    let mut b = enc.bytes.to_vec();
    b[100] ^= 1;
    assert!(msg(&b).contains("checksum mismatch"), "{}", msg(&b));
    b[0] = b'X';
    assert!(msg(&b).contains("leading magic"));
}

/// Rewrite the trailer so the checksum matches the (modified) bytes.
fn reseal(bytes: &mut [u8]) {
    let end = bytes.len() - TRAILER_LEN;
    let crc = crc32c::crc32c(&bytes[..end]);
    bytes[end + 8..end + 12].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn intact_segments_of_unknown_versions_or_flags_are_refused_clearly() {
    let enc = sample_segment();
    let mut b = enc.bytes.to_vec();
    b[4..6].copy_from_slice(&4u16.to_le_bytes());
    reseal(&mut b);
    let err = decode_segment(&b).unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedSegmentVersion { version: 4, supported: 3 }), "{err:?}");
    assert!(err.to_string().contains("version 4"));
    let mut b = enc.bytes.to_vec();
    b[6..8].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(decode_segment(&b), Err(StoreError::UnsupportedSegmentFlags { flags: 2 })));
    // The sealed flag on an unsealed header is refused, not misread.
    let mut b = enc.bytes.to_vec();
    b[6..8].copy_from_slice(&FLAG_SEALED.to_le_bytes());
    reseal(&mut b);
    let err = decode_segment(&b).unwrap_err();
    assert!(err.to_string().contains("seal disagree"), "{err}");
    // Legacy version 2 is only valid sealed, version 1 only unsealed.
    let legacy = legacy_segment(&enc, IPC_FORMAT_VERSION, None);
    let mut b = legacy.bytes.to_vec();
    b[4..6].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(decode_segment(&b), Err(StoreError::UnsupportedSegmentFlags { flags: 0 })));
    let mut b = legacy.bytes.to_vec();
    b[6..8].copy_from_slice(&1u16.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(decode_segment(&b), Err(StoreError::UnsupportedSegmentFlags { flags: 1 })));
}

/// A segment in a legacy format (an Arrow IPC body, version 1; sealed when
/// `keys` is given, version 2), of the sample's rows.
fn legacy_segment(current: &EncodedSegment, version: u16, keys: Option<&dyn KeyProvider>) -> EncodedSegment {
    let d = decode_segment(&current.bytes).unwrap();
    let mut header = d.header.clone();
    header.format_version = version;
    let (body, index) = write_ipc_body(header.segment_id, &d.schema, &d.batches).unwrap();
    frame(header, body, index, keys).unwrap()
}

#[test]
fn segments_in_the_legacy_ipc_formats_stay_readable() {
    let sample = sample_segment();
    let current = decode_segment(&sample.bytes).unwrap();
    let v1 = legacy_segment(&sample, IPC_FORMAT_VERSION, None);
    assert_eq!((le_u16(&v1.bytes, 4), le_u16(&v1.bytes, 6)), (1, 0));
    let h = u32::from_le_bytes(v1.bytes[8..12].try_into().unwrap()) as usize;
    assert_eq!(&v1.bytes[12 + h..12 + h + 6], b"ARROW1");
    let d1 = decode_segment(&v1.bytes).unwrap();
    assert_eq!(rows_of(&d1.batches), rows_of(&current.batches));
    let (_d, ks) = keystore();
    let v2 = legacy_segment(&sample, IPC_FORMAT_VERSION, Some(&ks));
    assert_eq!((le_u16(&v2.bytes, 4), le_u16(&v2.bytes, 6)), (SEALED_IPC_FORMAT_VERSION, FLAG_SEALED));
    assert!(matches!(decode_segment(&v2.bytes), Err(StoreError::Sealed { .. })));
    let d2 = decode_segment_with(&v2.bytes, None, Some(&ks)).unwrap();
    assert_eq!(rows_of(&d2.batches), rows_of(&current.batches));
    // Damage in a legacy body is still caught by the checksum, and the
    // IPC block checks still run on a forged one.
    let mut b = v1.bytes.to_vec();
    let at = 12 + h + 40;
    b[at] ^= 0xff;
    assert!(matches!(decode_segment(&b), Err(StoreError::CorruptSegment(_))));
    // String views work on legacy bodies too.
    let opts = DecodeOptions { string_views: true, ..DecodeOptions::default() };
    let v = decode_segment_opts(&v1.bytes, &opts).unwrap();
    assert_eq!(v.schema.field_with_name("host").unwrap().data_type(), &DataType::Utf8View);
    assert_eq!(rows_of(&views_to_strings(&v.batches)), rows_of(&current.batches));
}

/// The batches with Utf8View columns cast back to Utf8.
fn views_to_strings(batches: &[RecordBatch]) -> Vec<RecordBatch> {
    batches
        .iter()
        .map(|b| {
            let cols: Vec<ArrayRef> = b
                .columns()
                .iter()
                .map(|c| if c.data_type() == &DataType::Utf8View { cast(c, &DataType::Utf8).unwrap() } else { c.clone() })
                .collect();
            let fields: Vec<Field> = b
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    let f = f.as_ref().clone();
                    if f.data_type() == &DataType::Utf8View { f.with_data_type(DataType::Utf8) } else { f }
                })
                .collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
        })
        .collect()
}

#[test]
fn string_views_and_small_batches_decode_the_same_rows() {
    let a = AgentId::new();
    let events: Vec<_> = (0..1000)
        .map(|i| (a, event(i, &format!("message {}", i % 7), vec![("unit", Value::Str(format!("u{}", i % 3))), ("n", Value::Int(i))])))
        .collect();
    let (_, _, enc) = encode(&events);
    let plain = decode_segment(&enc.bytes).unwrap();
    let opts = DecodeOptions { string_views: true, batch_rows: 128, ..DecodeOptions::default() };
    let views = decode_segment_opts(&enc.bytes, &opts).unwrap();
    assert_eq!(views.schema, string_views(&plain.schema));
    assert!(views.batches.iter().all(|b| b.num_rows() <= 128));
    assert_eq!(views.batches.len(), 1000usize.div_ceil(128));
    assert_eq!(rows_of(&views_to_strings(&views.batches)), rows_of(&plain.batches));
}

#[test]
fn file_starts_with_the_documented_preamble() {
    let enc = sample_segment();
    let b = &enc.bytes;
    assert_eq!(&b[..4], b"CSEG");
    assert_eq!(u16::from_le_bytes([b[4], b[5]]), 3);
    assert_eq!(u16::from_le_bytes([b[6], b[7]]), 0);
    let h = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[12..12 + h]).unwrap();
    assert_eq!(header["format_version"], 3);
    assert_eq!(header["columns"][0], serde_json::json!(["pid", "int"]));
    let n = b.len();
    assert_eq!(&b[12 + h..12 + h + 4], b"PAR1");
    assert_eq!(&b[n - 20..n - 16], b"PAR1");
    assert_eq!(&b[n - 4..], b"CSEG");
    assert_eq!(u64::from_le_bytes(b[n - 16..n - 8].try_into().unwrap()), (n - 16) as u64);
}

#[test]
fn segment_paths_are_valid_object_paths_under_the_table_prefix() {
    let (ws, id) = (WorkspaceId::new(), SegmentId::new());
    let p = segment_path(ws, &table(), id);
    assert_eq!(p, format!("ws/{ws}/logs/{id}.cseg"));
    crate::validate_object_path(&p).unwrap();
    assert!(p.starts_with(&table_prefix(ws, &table())));
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-1e12f64..1e12).prop_map(Value::Float),
        "[a-z0-9 ]{0,12}".prop_map(Value::Str),
    ]
}

fn arb_event() -> impl Strategy<Value = (u8, Event)> {
    (
        0u8..3,
        -5i64..5,
        0usize..4,
        0usize..8,
        "[ -~]{0,40}",
        "[a-z]{1,8}",
        proptest::collection::btree_map("(pid|unit|ok|n|mixed)", arb_value(), 0..4),
    )
        .prop_map(|(agent, time, level, cat, message, host, attrs)| {
            (
                agent,
                Event {
                    table: table(),
                    time: time * 1_000_000,
                    level: Level::ALL[level],
                    category: Category::ALL[cat],
                    host,
                    message,
                    attrs,
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_events_round_trip(events in proptest::collection::vec(arb_event(), 1..60)) {
        let agents = [AgentId::new(), AgentId::new(), AgentId::new()];
        let events: Vec<_> = events.into_iter().map(|(a, e)| (agents[a as usize], e)).collect();
        check_round_trip(&events);
    }

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_segment(&bytes);
        // Random bytes in a well-formed frame, too.
        let mut framed = Vec::new();
        framed.extend_from_slice(SEGMENT_MAGIC);
        framed.extend_from_slice(&1u16.to_le_bytes());
        framed.extend_from_slice(&0u16.to_le_bytes());
        framed.extend_from_slice(&(bytes.len().min(8) as u32).to_le_bytes());
        framed.extend_from_slice(&bytes);
        let total = framed.len() as u64;
        let crc = crc32c::crc32c(&framed);
        framed.extend_from_slice(&total.to_le_bytes());
        framed.extend_from_slice(&crc.to_le_bytes());
        framed.extend_from_slice(SEGMENT_MAGIC);
        prop_assert!(decode_segment(&framed).is_err());
    }
}

static SAMPLE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| sample_segment().bytes.to_vec());

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Damage that slips past the checksum (a deliberate forgery, or a future
    /// bug) still never panics: the header and Arrow IPC readers validate.
    #[test]
    fn decode_never_panics_on_resealed_mutations(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let mut b = SAMPLE.clone();
        let body = b.len() - TRAILER_LEN;
        for (pos, byte) in edits {
            b[pos % body] = byte;
        }
        reseal(&mut b);
        let _ = decode_segment(&b);
    }
}

#[test]
fn projected_decode_returns_only_the_named_columns() {
    let a = AgentId::new();
    let mut b = SegmentBuilder::new(WorkspaceId::new(), TableName::new("logs").unwrap());
    for i in 0..100 {
        b.push(a, &event(i, "msg", vec![("pid", Value::Int(i)), ("unit", "x".into())]));
    }
    let enc = b.finish(SegmentId::new()).unwrap();
    let names = |d: &DecodedSegment| d.schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
    let d = decode_segment_columns(&enc.bytes, Some(&["pid".to_string(), "absent".to_string()])).unwrap();
    assert_eq!(names(&d), vec!["pid"]);
    assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    assert!(d.batches.iter().all(|b| b.num_columns() == 1));
    // Asking for nothing decodes `time`, which carries the row count.
    let d = decode_segment_columns(&enc.bytes, Some(&[])).unwrap();
    assert_eq!(names(&d), vec!["time"]);
    assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    // Corruption is still caught when only some columns are decoded.
    let mut bad = enc.bytes.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    assert!(decode_segment_columns(&bad, Some(&["pid".to_string()])).is_err());
    // Legacy IPC bodies always decode `time` with the asked columns.
    let legacy = legacy_segment(&enc, IPC_FORMAT_VERSION, None);
    let d = decode_segment_columns(&legacy.bytes, Some(&["pid".to_string()])).unwrap();
    assert_eq!(names(&d), vec!["time", "pid"]);
}

#[test]
fn a_header_time_range_the_body_disagrees_with_is_caught_without_decoding_time() {
    let a = AgentId::new();
    let mut b = SegmentBuilder::new(WorkspaceId::new(), table());
    for i in 0..50 {
        b.push(a, &event(1_000 + i, "m", vec![("pid", Value::Int(i))]));
    }
    let enc = b.finish(SegmentId::new()).unwrap();
    // Forge the header's max_time (same length), and the checksum.
    let text = enc.bytes.to_vec();
    let at = text.windows(15).position(|w| w == b"\"max_time\":1049").unwrap();
    let mut forged = text.clone();
    forged[at + 14] = b'8';
    reseal(&mut forged);
    for cols in [Some(vec!["pid".to_string()]), Some(vec![]), None] {
        let err = decode_segment_columns(&forged, cols.as_deref()).unwrap_err();
        assert!(err.to_string().contains("time range"), "{cols:?}: {err}");
    }
    assert!(decode_segment_columns(&text, Some(&["pid".to_string()])).is_ok());
}

fn sealed_sample(keys: &dyn KeyProvider, ws: WorkspaceId) -> (SegmentId, EncodedSegment) {
    let mut b = SegmentBuilder::new(ws, table());
    let agent = AgentId::new();
    for i in 0..500 {
        b.push(agent, &event(1_000 + i, &format!("secret message {i}"), vec![("user", Value::Str(format!("user{i}")))]));
    }
    let id = SegmentId::new();
    (id, b.finish_sealed(id, keys).unwrap())
}

fn keystore() -> (tempfile::TempDir, crate::ServiceKeystore) {
    let d = tempfile::tempdir().unwrap();
    let ks = crate::ServiceKeystore::open(&d.path().join("keystore.json"), DataKey::generate().unwrap()).unwrap();
    (d, ks)
}

#[test]
fn a_sealed_segment_round_trips_and_hides_its_rows() {
    let (_d, ks) = keystore();
    let ws = WorkspaceId::new();
    let (id, enc) = sealed_sample(&ks, ws);
    assert_eq!(le_u16(&enc.bytes, 4), SEGMENT_FORMAT_VERSION);
    assert_eq!(le_u16(&enc.bytes, 6), FLAG_SEALED);
    let raw = String::from_utf8_lossy(&enc.bytes);
    assert!(!raw.contains("secret message") && !raw.contains("user42"), "no row text in clear");
    let d = decode_segment_with(&enc.bytes, None, Some(&ks)).unwrap();
    assert_eq!(d.header.segment_id, id);
    assert_eq!(d.header.seal.as_ref().unwrap().key.version, 1);
    assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 500);
    let plain = SegmentBuilder::new(ws, table());
    let _ = plain; // the unsealed path is covered by the round-trip tests above
    let cols = ["message".to_string()];
    let d = decode_segment_with(&enc.bytes, Some(&cols), Some(&ks)).unwrap();
    assert_eq!(d.schema.fields().len(), 1, "projection works on sealed segments");
    // Without keys: a clear error, not garbage.
    let e = decode_segment(&enc.bytes).unwrap_err();
    assert!(matches!(e, StoreError::Sealed { .. }) && e.to_string().contains(&id.to_string()), "{e}");
}

#[test]
fn any_changed_byte_of_a_sealed_segment_is_detected_even_with_a_forged_checksum() {
    let (_d, ks) = keystore();
    let ws = WorkspaceId::new();
    let (id, enc) = sealed_sample(&ks, ws);
    let len = enc.bytes.len();
    let header_end = PREAMBLE_LEN + u32::from_le_bytes(enc.bytes[8..12].try_into().unwrap()) as usize;
    // Every byte of the body and tag, and a spread of header bytes.
    let positions: Vec<usize> = (PREAMBLE_LEN..header_end).step_by(7).chain(header_end..len - TRAILER_LEN).collect();
    for p in positions {
        let mut bad = enc.bytes.to_vec();
        bad[p] ^= 0x01;
        let plain_err = decode_segment_with(&bad, None, Some(&ks)).unwrap_err();
        assert!(matches!(plain_err, StoreError::CorruptSegment(_)), "byte {p}: crc catches it first: {plain_err}");
        reseal(&mut bad);
        // With the checksum forged, only authentication can catch it.
        match decode_segment_with(&bad, None, Some(&ks)) {
            Err(StoreError::Tampered { segment, .. }) if p >= header_end => assert_eq!(segment, id.to_string()),
            // A header byte may be the segment id itself.
            Err(StoreError::Tampered { .. }) => {}
            // A flipped header byte may break the JSON or a field first.
            Err(StoreError::CorruptSegment(_) | StoreError::Key { .. } | StoreError::UnsupportedSegmentFlags { .. }) if p < header_end => {}
            other => panic!("byte {p}: {other:?}"),
        }
    }
    // Truncated, with the framing rebuilt around what is left.
    let mut cut = enc.bytes[..len - TRAILER_LEN - 100].to_vec();
    let total = cut.len() as u64;
    let crc = crc32c::crc32c(&cut);
    cut.extend_from_slice(&total.to_le_bytes());
    cut.extend_from_slice(&crc.to_le_bytes());
    cut.extend_from_slice(SEGMENT_MAGIC);
    assert!(matches!(decode_segment_with(&cut, None, Some(&ks)), Err(StoreError::Tampered { .. })));
}

#[test]
fn a_segment_moved_to_another_workspace_or_read_after_revocation_is_refused() {
    let (_d, ks) = keystore();
    let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
    let (_, enc) = sealed_sample(&ks, a);
    ks.current(b).unwrap();
    // Relabel the header's workspace (and fix the checksum): the data key was
    // wrapped for `a`, so it does not unwrap for `b`.
    let text = enc.bytes.to_vec();
    let (from, to) = (a.to_string(), b.to_string());
    let at = text.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
    let mut moved = text.clone();
    moved[at..at + to.len()].copy_from_slice(to.as_bytes());
    reseal(&mut moved);
    assert!(matches!(decode_segment_with(&moved, None, Some(&ks)), Err(StoreError::Tampered { .. })));

    ks.set_revoked(a, true).unwrap();
    let e = decode_segment_with(&enc.bytes, None, Some(&ks)).unwrap_err();
    assert!(matches!(e, StoreError::Key { source: KeyError::Revoked { .. }, .. }), "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
    ks.set_revoked(a, false).unwrap();
    assert!(decode_segment_with(&enc.bytes, None, Some(&ks)).is_ok());
}

#[test]
fn old_data_stays_readable_after_rotation_and_new_data_uses_the_new_version() {
    let (_d, ks) = keystore();
    let ws = WorkspaceId::new();
    let (_, old) = sealed_sample(&ks, ws);
    ks.rotate(ws).unwrap();
    let (_, new) = sealed_sample(&ks, ws);
    let d_old = decode_segment_with(&old.bytes, None, Some(&ks)).unwrap();
    let d_new = decode_segment_with(&new.bytes, None, Some(&ks)).unwrap();
    assert_eq!(d_old.header.seal.unwrap().key.version, 1);
    assert_eq!(d_new.header.seal.unwrap().key.version, 2);
}

#[test]
fn a_rotation_rewraps_the_data_key_without_touching_the_sealed_body() {
    let (_d, ks) = keystore();
    let ws = WorkspaceId::new();
    let (_, enc) = sealed_sample(&ks, ws);
    assert!(rewrap_segment(&enc.bytes, &ks).unwrap().is_none(), "already under the current key");
    ks.rotate(ws).unwrap();
    let new = rewrap_segment(&enc.bytes, &ks).unwrap().expect("rewrapped");
    let before = decode_segment_with(&enc.bytes, None, Some(&ks)).unwrap();
    let after = decode_segment_with(&new, None, Some(&ks)).unwrap();
    assert_eq!(after.header.seal.as_ref().unwrap().key.version, 2);
    assert_eq!(before.batches, after.batches, "same rows");
    // The sealed body (and its tag) are the same bytes.
    let body = |b: &[u8]| {
        let h = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
        b[PREAMBLE_LEN + h..b.len() - TRAILER_LEN].to_vec()
    };
    assert_eq!(body(&enc.bytes), body(&new));
    assert!(rewrap_segment(&new, &ks).unwrap().is_none());
    // Swapping in another segment's wrapped key fails authentication.
    let (_, other) = sealed_sample(&ks, ws);
    let other_hdr = decode_segment_with(&other.bytes, Some(&[]), Some(&ks)).unwrap().header;
    let text = new.to_vec();
    let mine = after.header.seal.as_ref().unwrap().wrapped_key.clone();
    let theirs = other_hdr.seal.as_ref().unwrap().wrapped_key.clone();
    assert_eq!(mine.len(), theirs.len());
    let at = text.windows(mine.len()).position(|w| w == mine.as_bytes()).unwrap();
    let mut swapped = text.clone();
    swapped[at..at + mine.len()].copy_from_slice(theirs.as_bytes());
    reseal(&mut swapped);
    assert!(matches!(decode_segment_with(&swapped, None, Some(&ks)), Err(StoreError::Tampered { .. })));
}

#[test]
fn an_unsealed_body_is_a_plain_parquet_file_any_reader_opens() {
    let enc = sample_segment();
    let b = &enc.bytes;
    let h = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
    let body = Bytes::copy_from_slice(&b[12 + h..b.len() - TRAILER_LEN]);
    // No custos schema given: the reader goes by the Parquet file alone.
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 40);
    let names: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["time", "level", "category", "host", "message", "agent_id", "pid", "unit"]);
    let decoded = decode_segment(b).unwrap();
    assert_eq!(rows_of(&batches), rows_of(&decoded.batches));
}
