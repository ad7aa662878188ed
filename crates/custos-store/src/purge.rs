//! Purge mechanics, pure: the predicate language of `custos purge create
//! --where`, matching rows of decoded segments, and the per-segment Bloom
//! filters that let a purge skip segments that cannot match.
//!
//! # The predicate language
//!
//! One column compared with one or more literals — all a data subject
//! request needs, and small enough to parse safely from untrusted input:
//!
//! ```text
//! predicate := column "=" literal | column "IN" "(" literal ("," literal)* ")"
//! column    := [A-Za-z_][A-Za-z0-9_]*            (case-sensitive, at most 64)
//! literal   := "'" (any char, '' for a quote)* "'"  |  integer  |  true | false
//! ```
//!
//! `IN` is case-insensitive; at most [`MAX_VALUES`] literals, each at most
//! [`MAX_LITERAL`] bytes. A row matches when its value in `column`,
//! compared as text (integers in decimal, booleans `true`/`false`), equals
//! one of the literals' text; a row whose value is null, or a segment
//! without the column, does not match. Text comparison makes a predicate
//! mean the same thing whatever type a column had in a given segment.
//!
//! # Bloom filters, version 1
//!
//! For the identity columns ([`INDEXED_COLUMNS`]) each segment's catalog
//! entry carries a Bloom filter of the column's values (as text):
//! `m` bits (a power of two, about 10 per distinct value, at least 64), `k`
//! = 7 probes by double hashing of two FNV-1a 64-bit hashes with different
//! offsets. Stored as `{"v":1,"k":7,"bits":"<base64 of m/8 bytes>"}`. A
//! filter never says "absent" for a present value; a purge reads only the
//! segments whose filter may contain one of its literals (for an indexed
//! column) and the others not at all.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Most literals in one predicate.
pub const MAX_VALUES: usize = 1000;
/// Longest literal, bytes.
pub const MAX_LITERAL: usize = 4096;
/// Columns that get a Bloom filter per segment.
pub const INDEXED_COLUMNS: [&str; 3] = ["host", "agent_id", "installation_id"];

/// A purge predicate that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("purge predicate: {reason} at byte {at}")]
pub struct PredicateError {
    /// What was wrong.
    pub reason: String,
    /// Where.
    pub at: usize,
}

/// `column = literal` or `column IN (literal, ...)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Predicate {
    /// The column.
    pub column: String,
    /// The literals, as text (see the module docs), deduplicated, sorted.
    pub values: Vec<String>,
}

impl Predicate {
    /// Parses the predicate language (module docs).
    pub fn parse(text: &str) -> Result<Predicate, PredicateError> {
        let mut p = Parser { s: text.as_bytes(), i: 0 };
        p.ws();
        let column = p.ident()?;
        p.ws();
        let mut values = Vec::new();
        if p.eat(b"=") {
            p.ws();
            values.push(p.literal()?);
        } else if p.eat_keyword("in") {
            p.ws();
            p.expect(b"(")?;
            loop {
                p.ws();
                values.push(p.literal()?);
                if values.len() > MAX_VALUES {
                    return Err(p.err(format!("more than {MAX_VALUES} values")));
                }
                p.ws();
                if p.eat(b",") {
                    continue;
                }
                p.expect(b")")?;
                break;
            }
        } else {
            return Err(p.err("expected = or IN after the column".into()));
        }
        p.ws();
        if p.i != p.s.len() {
            return Err(p.err("unexpected text after the predicate (one column, = or IN, literals)".into()));
        }
        values.sort();
        values.dedup();
        Ok(Predicate { column, values })
    }

    /// The predicate in the language, canonical: `col IN ('a', 'b')` or
    /// `col = 'a'` (every literal quoted).
    pub fn to_sql(&self) -> String {
        let q = |v: &String| format!("'{}'", v.replace('\'', "''"));
        match self.values.as_slice() {
            [one] => format!("{} = {}", self.column, q(one)),
            many => format!("{} IN ({})", self.column, many.iter().map(q).collect::<Vec<_>>().join(", ")),
        }
    }

    /// Which rows of `batch` match (true = to remove). A batch without the
    /// column matches nothing.
    pub fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray, arrow::error::ArrowError> {
        let rows = batch.num_rows();
        let Some(col) = batch.column_by_name(&self.column) else {
            return Ok(BooleanArray::from(vec![false; rows]));
        };
        let set: std::collections::HashSet<&str> = self.values.iter().map(String::as_str).collect();
        let mut out = Vec::with_capacity(rows);
        let text = text_of(col.as_ref())?;
        for i in 0..rows {
            out.push(!col.is_null(i) && set.contains(text(i).as_ref()));
        }
        Ok(BooleanArray::from(out))
    }

    /// Whether a segment whose Bloom filters are `index` may hold a matching
    /// row. True unless the column is indexed there and the filter rules
    /// every literal out. A segment without the column has no filter for
    /// it; its absence from `columns` (the segment's attribute columns)
    /// rules it out too.
    pub fn may_match(&self, index: &BTreeMap<String, Bloom>, columns: &[String]) -> bool {
        let envelope = crate::ENVELOPE_COLUMNS.contains(&self.column.as_str());
        if !envelope && !columns.iter().any(|c| c == &self.column) {
            return false;
        }
        match index.get(&self.column) {
            Some(bloom) => self.values.iter().any(|v| bloom.may_contain(v)),
            None => true,
        }
    }
}

/// The text form of row `i` of a column (see the module docs).
fn text_of<'a>(col: &'a dyn Array) -> Result<Box<dyn Fn(usize) -> std::borrow::Cow<'a, str> + 'a>, arrow::error::ArrowError> {
    use std::borrow::Cow;
    Ok(match col.data_type() {
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            Box::new(move |i| Cow::Borrowed(a.value(i)))
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            Box::new(move |i| Cow::Borrowed(a.value(i)))
        }
        DataType::Int64 => {
            let a = col.as_primitive::<arrow::datatypes::Int64Type>();
            Box::new(move |i| Cow::Owned(a.value(i).to_string()))
        }
        DataType::UInt8 => {
            let a = col.as_primitive::<arrow::datatypes::UInt8Type>();
            Box::new(move |i| Cow::Owned(a.value(i).to_string()))
        }
        DataType::Boolean => {
            let a = col.as_boolean();
            Box::new(move |i| Cow::Borrowed(if a.value(i) { "true" } else { "false" }))
        }
        DataType::Float64 => {
            let a = col.as_primitive::<arrow::datatypes::Float64Type>();
            Box::new(move |i| Cow::Owned(a.value(i).to_string()))
        }
        DataType::Timestamp(_, _) => {
            let a = col.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            Box::new(move |i| Cow::Owned(a.value(i).to_string()))
        }
        other => {
            return Err(arrow::error::ArrowError::InvalidArgumentError(format!("a purge cannot compare a {other} column")))
        }
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, reason: String) -> PredicateError {
        PredicateError { reason, at: self.i }
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, t: &[u8]) -> bool {
        if self.s[self.i..].starts_with(t) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: &[u8]) -> Result<(), PredicateError> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.err(format!("expected {:?}", String::from_utf8_lossy(t))))
        }
    }
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let end = self.i + kw.len();
        let Some(w) = self.s.get(self.i..end) else { return false };
        let boundary = self.s.get(end).is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
        if w.eq_ignore_ascii_case(kw.as_bytes()) && boundary {
            self.i = end;
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Result<String, PredicateError> {
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
            self.i += 1;
        }
        let id = &self.s[start..self.i];
        if id.is_empty() || id[0].is_ascii_digit() {
            return Err(PredicateError { reason: "expected a column name".into(), at: start });
        }
        if id.len() > 64 {
            return Err(PredicateError { reason: "column name longer than 64".into(), at: start });
        }
        // Only ASCII bytes were taken.
        Ok(String::from_utf8_lossy(id).into_owned())
    }
    fn literal(&mut self) -> Result<String, PredicateError> {
        let start = self.i;
        let v = if self.eat(b"'") {
            let mut out = Vec::new();
            loop {
                match self.s.get(self.i) {
                    None => return Err(PredicateError { reason: "unterminated string".into(), at: start }),
                    Some(b'\'') if self.s.get(self.i + 1) == Some(&b'\'') => {
                        out.push(b'\'');
                        self.i += 2;
                    }
                    Some(b'\'') => {
                        self.i += 1;
                        break;
                    }
                    Some(c) => {
                        out.push(*c);
                        self.i += 1;
                    }
                }
            }
            // The input is a &str and quotes are ASCII: the bytes between
            // them are valid UTF-8.
            String::from_utf8(out).map_err(|_| PredicateError { reason: "string is not UTF-8".into(), at: start })?
        } else if self.eat_keyword("true") {
            "true".into()
        } else if self.eat_keyword("false") {
            "false".into()
        } else {
            let neg = self.eat(b"-");
            let ds = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if self.i == ds {
                return Err(PredicateError { reason: "expected a literal ('text', an integer, true or false)".into(), at: start });
            }
            let digits = String::from_utf8_lossy(&self.s[ds..self.i]).into_owned();
            let n: i64 = format!("{}{digits}", if neg { "-" } else { "" })
                .parse()
                .map_err(|_| PredicateError { reason: "integer out of range".into(), at: start })?;
            n.to_string()
        };
        if v.len() > MAX_LITERAL {
            return Err(PredicateError { reason: format!("literal longer than {MAX_LITERAL} bytes"), at: start });
        }
        Ok(v)
    }
}

/// A Bloom filter of one column's values in one segment (version 1, see
/// the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bloom {
    /// Format version, 1.
    pub v: u8,
    /// Probes per value.
    pub k: u8,
    /// The bit array, base64.
    pub bits: String,
}

fn fnv1a(offset: u64, data: &[u8]) -> u64 {
    let mut h = offset;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn probes(value: &str, m: u64, k: u8) -> impl Iterator<Item = u64> {
    let h1 = fnv1a(0xcbf2_9ce4_8422_2325, value.as_bytes());
    let h2 = fnv1a(0x84222325_cbf29ce4, value.as_bytes()) | 1;
    (0..u64::from(k)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & (m - 1))
}

impl Bloom {
    /// Probes per value.
    pub const K: u8 = 7;

    /// A filter holding `values`.
    pub fn build<'a>(values: impl IntoIterator<Item = &'a str>) -> Bloom {
        let distinct: std::collections::BTreeSet<&str> = values.into_iter().collect();
        let m = ((distinct.len() as u64) * 10).next_power_of_two().max(64);
        let mut bits = vec![0u8; (m / 8) as usize];
        for v in distinct {
            for p in probes(v, m, Self::K) {
                bits[(p / 8) as usize] |= 1 << (p % 8);
            }
        }
        Bloom { v: 1, k: Self::K, bits: base64::engine::general_purpose::STANDARD.encode(bits) }
    }

    /// False only if `value` is certainly not in the filter. A filter that
    /// cannot be read answers true (it can only cost a read).
    pub fn may_contain(&self, value: &str) -> bool {
        let Ok(bits) = base64::engine::general_purpose::STANDARD.decode(&self.bits) else { return true };
        let m = bits.len() as u64 * 8;
        if self.v != 1 || self.k == 0 || m == 0 || !m.is_power_of_two() {
            return true;
        }
        probes(value, m, self.k).all(|p| bits[(p / 8) as usize] & (1 << (p % 8)) != 0)
    }

    /// The filters of the indexed columns of decoded rows.
    pub fn index(batches: &[RecordBatch]) -> Result<BTreeMap<String, Bloom>, arrow::error::ArrowError> {
        let mut b = IndexBuilder::default();
        for batch in batches {
            b.add(batch)?;
        }
        Ok(b.finish())
    }
}

/// What [`purge_segment`] did to one segment.
#[derive(Debug)]
pub struct PurgeOutcome {
    /// Rows the segment held.
    pub rows_before: u64,
    /// Rows removed (0: the segment is unchanged, nothing was written).
    pub rows_removed: u64,
    /// The segment holding the rows left, when rows were removed and some
    /// are left.
    pub replacement: Option<crate::EncodedSegment>,
}

/// Removes the rows matching `p` from the segment `bytes`: decodes it
/// (verifying it; sealed ones with `keys`), and if any row matches encodes
/// the others, values and order unchanged, as segment `new_id` (sealed when
/// `keys` is given). Pure: the caller stores and registers the result.
pub fn purge_segment(
    bytes: &[u8],
    p: &Predicate,
    new_id: custos_model::SegmentId,
    keys: Option<&dyn crate::KeyProvider>,
) -> Result<PurgeOutcome, crate::StoreError> {
    remove_rows(bytes, new_id, keys, "purge", |b| p.matches(b))
}

/// Removes the rows whose time is in one of the `ranges` (`[from, to)`)
/// from the segment `bytes`, as [`purge_segment`] does for a predicate:
/// what rolling days up again does to an older rollup segment that spans
/// more days than those.
pub fn remove_time_ranges(
    bytes: &[u8],
    ranges: &[(custos_model::TimestampMicros, custos_model::TimestampMicros)],
    new_id: custos_model::SegmentId,
    keys: Option<&dyn crate::KeyProvider>,
) -> Result<PurgeOutcome, crate::StoreError> {
    remove_rows(bytes, new_id, keys, "time range", |b| {
        let time = b
            .column_by_name("time")
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::TimestampMicrosecondArray>())
            .ok_or_else(|| arrow::error::ArrowError::SchemaError("rows without a time column".into()))?;
        Ok(time.iter().map(|t| Some(t.is_some_and(|t| ranges.iter().any(|&(from, to)| t >= from && t < to)))).collect())
    })
}

/// Removes the rows `matches` selects (see [`purge_segment`]).
fn remove_rows(
    bytes: &[u8],
    new_id: custos_model::SegmentId,
    keys: Option<&dyn crate::KeyProvider>,
    what: &str,
    mut matches: impl FnMut(&RecordBatch) -> Result<BooleanArray, arrow::error::ArrowError>,
) -> Result<PurgeOutcome, crate::StoreError> {
    let d = crate::decode_segment_with(bytes, None, keys)?;
    let seg = d.header.segment_id.to_string();
    let err = |e: arrow::error::ArrowError| crate::StoreError::Encode { segment: seg.clone(), reason: format!("{what}: {e}") };
    let mut kept = Vec::with_capacity(d.batches.len());
    let mut removed = 0u64;
    for b in &d.batches {
        let m = matches(b).map_err(err)?;
        removed += m.true_count() as u64;
        let k = arrow::compute::filter_record_batch(b, &arrow::compute::not(&m).map_err(err)?).map_err(err)?;
        if k.num_rows() > 0 {
            kept.push(k);
        }
    }
    let rows_before = d.header.rows;
    if removed == 0 {
        return Ok(PurgeOutcome { rows_before, rows_removed: 0, replacement: None });
    }
    let replacement = if kept.is_empty() {
        None
    } else {
        Some(crate::encode_batches(d.header.workspace_id, d.header.table.clone(), new_id, d.header.columns.clone(), &kept, keys)?)
    };
    Ok(PurgeOutcome { rows_before, rows_removed: removed, replacement })
}

/// Collects the distinct values of the indexed columns batch by batch.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    sets: BTreeMap<&'static str, std::collections::HashSet<String>>,
}

impl IndexBuilder {
    /// Adds a batch's values.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<(), arrow::error::ArrowError> {
        for name in INDEXED_COLUMNS {
            let Some(col) = batch.column_by_name(name) else { continue };
            let values = self.sets.entry(name).or_default();
            let text = text_of(col.as_ref())?;
            for i in 0..batch.num_rows() {
                if !col.is_null(i) {
                    let t = text(i);
                    if !values.contains(t.as_ref()) {
                        values.insert(t.into_owned());
                    }
                }
            }
        }
        Ok(())
    }

    /// One filter per indexed column seen.
    pub fn finish(self) -> BTreeMap<String, Bloom> {
        self.sets.into_iter().map(|(k, v)| (k.to_string(), Bloom::build(v.iter().map(String::as_str)))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn equality_and_in_lists_parse_to_sorted_text_values() {
        assert_eq!(Predicate::parse("host = 'web-1'").unwrap(), Predicate { column: "host".into(), values: vec!["web-1".into()] });
        let p = Predicate::parse("  user_id in ( 'b', 'a''s', 42 , -7, true, 'b' ) ").unwrap();
        assert_eq!(p.column, "user_id");
        assert_eq!(p.values, vec!["-7", "42", "a's", "b", "true"]);
        assert_eq!(Predicate::parse(&p.to_sql()).unwrap(), p, "to_sql round-trips");
        assert_eq!(Predicate::parse("x IN ('only')").unwrap().to_sql(), "x = 'only'");
    }

    #[test]
    fn bad_predicates_say_what_and_where() {
        for (text, reason) in [
            ("", "expected a column name"),
            ("1x = 'a'", "expected a column name"),
            ("host", "expected = or IN"),
            ("host = ", "expected a literal"),
            ("host = 'a", "unterminated string"),
            ("host = 'a' OR 1=1", "unexpected text after the predicate"),
            ("host IN ('a' 'b')", "expected \")\""),
            ("host = 99999999999999999999", "integer out of range"),
            ("host INx ('a')", "expected = or IN"),
            ("host = 'a'; DROP TABLE logs", "unexpected text"),
        ] {
            let e = Predicate::parse(text).unwrap_err();
            assert!(e.to_string().contains(reason), "{text:?}: {e}");
        }
        let many = format!("h IN ({})", vec!["1"; MAX_VALUES + 1].join(","));
        assert!(Predicate::parse(&many).unwrap_err().reason.contains("more than"));
    }

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![Field::new("host", DataType::Utf8, true), Field::new("uid", DataType::Int64, true)]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), None, Some("a")])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(42)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_match_by_text_and_nulls_or_missing_columns_never_match() {
        let b = batch();
        let m = Predicate::parse("host = 'a'").unwrap().matches(&b).unwrap();
        assert_eq!(m, BooleanArray::from(vec![true, false, false, true]));
        let m = Predicate::parse("uid IN (42, '3')").unwrap().matches(&b).unwrap();
        assert_eq!(m, BooleanArray::from(vec![false, false, true, true]));
        let m = Predicate::parse("nope = 'a'").unwrap().matches(&b).unwrap();
        assert_eq!(m.true_count(), 0);
    }

    #[test]
    fn a_segment_without_the_column_or_the_value_is_ruled_out() {
        let index: BTreeMap<String, Bloom> = [("host".to_string(), Bloom::build(["web-1", "web-2"]))].into();
        let p = Predicate::parse("host = 'web-1'").unwrap();
        assert!(p.may_match(&index, &[]));
        assert!(!Predicate::parse("user = 'x'").unwrap().may_match(&index, &["other".into()]));
        assert!(Predicate::parse("user = 'x'").unwrap().may_match(&index, &["user".into()]));
        assert!(Predicate::parse("message = 'x'").unwrap().may_match(&BTreeMap::new(), &[]));
    }

    fn events(rows: &[(u8, i64, Option<i64>)]) -> Vec<custos_model::Event> {
        rows.iter()
            .enumerate()
            .map(|(i, (host, t, uid))| {
                let mut attrs = std::collections::BTreeMap::new();
                if let Some(u) = uid {
                    attrs.insert("uid".to_string(), custos_model::Value::Int(*u));
                }
                attrs.insert("n".to_string(), custos_model::Value::Str(format!("row {i}")));
                custos_model::Event {
                    table: custos_model::TableName::new("logs").unwrap(),
                    time: *t,
                    level: custos_model::Level::Enhanced,
                    category: custos_model::Category::Logs,
                    host: format!("h{host}"),
                    message: format!("message {i} of h{host}"),
                    attrs,
                }
            })
            .collect()
    }

    fn concat(batches: &[RecordBatch]) -> RecordBatch {
        arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
    }

    #[test]
    fn removing_time_ranges_keeps_every_row_outside_it_unchanged() {
        let rows: Vec<(u8, i64, Option<i64>)> = (0..100).map(|i| ((i % 3) as u8, i * 10, None)).collect();
        let mut b = crate::SegmentBuilder::new(custos_model::WorkspaceId::new(), custos_model::TableName::new("logs").unwrap());
        let agent = custos_model::AgentId::new();
        for e in &events(&rows) {
            b.push(agent, e);
        }
        let enc = b.finish(custos_model::SegmentId::new()).unwrap();
        let all = concat(&crate::decode_segment(&enc.bytes).unwrap().batches);
        let out = remove_time_ranges(&enc.bytes, &[(200, 500), (900, 910)], custos_model::SegmentId::new(), None).unwrap();
        assert_eq!((out.rows_before, out.rows_removed), (100, 31));
        let got = concat(&crate::decode_segment(&out.replacement.unwrap().bytes).unwrap().batches);
        let keep: BooleanArray = (0..100).map(|i| Some(!(20..50).contains(&i) && i != 90)).collect();
        assert_eq!(got, arrow::compute::filter_record_batch(&all, &keep).unwrap());
        let none = remove_time_ranges(&enc.bytes, &[(2000, 3000)], custos_model::SegmentId::new(), None).unwrap();
        assert!(none.rows_removed == 0 && none.replacement.is_none());
        let whole = remove_time_ranges(&enc.bytes, &[(0, 1000)], custos_model::SegmentId::new(), None).unwrap();
        assert!(whole.rows_removed == 100 && whole.replacement.is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// After a purge no row matches, and every other row is exactly as
        /// it was (values, types and order), in a segment that decodes and
        /// whose Bloom filters still hold every value left.
        #[test]
        fn after_a_purge_no_row_matches_and_every_other_row_is_intact(
            rows in proptest::collection::vec((0u8..6, 0i64..1000, proptest::option::of(0i64..5)), 1..300),
            hosts in proptest::collection::btree_set(0u8..8, 1..4),
            by_uid in any::<bool>(),
            uid in 0i64..5,
        ) {
            let ws = custos_model::WorkspaceId::new();
            let mut b = crate::SegmentBuilder::new(ws, custos_model::TableName::new("logs").unwrap());
            let evs = events(&rows);
            let agent = custos_model::AgentId::new();
            for e in &evs {
                b.push(agent, e);
            }
            let enc = b.finish(custos_model::SegmentId::new()).unwrap();
            let p = if by_uid {
                Predicate::parse(&format!("uid = {uid}")).unwrap()
            } else {
                Predicate::parse(&format!("host IN ({})", hosts.iter().map(|h| format!("'h{h}'")).collect::<Vec<_>>().join(", "))).unwrap()
            };
            let before = crate::decode_segment(&enc.bytes).unwrap();
            let all = concat(&before.batches);
            let m = p.matches(&all).unwrap();
            let expected = arrow::compute::filter_record_batch(&all, &arrow::compute::not(&m).unwrap()).unwrap();
            let out = purge_segment(&enc.bytes, &p, custos_model::SegmentId::new(), None).unwrap();
            prop_assert_eq!(out.rows_before, rows.len() as u64);
            prop_assert_eq!(out.rows_removed, m.true_count() as u64);
            match out.replacement {
                None => prop_assert!(out.rows_removed == 0 || expected.num_rows() == 0),
                Some(new) => {
                    let after = crate::decode_segment(&new.bytes).unwrap();
                    let got = concat(&after.batches);
                    prop_assert_eq!(p.matches(&got).unwrap().true_count(), 0);
                    prop_assert_eq!(&got, &expected);
                    prop_assert_eq!(after.header.columns, before.header.columns.clone());
                    for name in ["host", "agent_id"] {
                        let bloom = &new.index[name];
                        let col = got.column_by_name(name).unwrap().as_string::<i32>();
                        for v in col.iter().flatten() {
                            prop_assert!(bloom.may_contain(v));
                        }
                    }
                }
            }
        }

        /// A Bloom filter never rules out a value it holds, and rules out
        /// most it does not.
        #[test]
        fn bloom_filters_have_no_false_negatives(values in proptest::collection::btree_set("[a-z0-9-]{1,12}", 1..200)) {
            let b = Bloom::build(values.iter().map(String::as_str));
            for v in &values {
                prop_assert!(b.may_contain(v));
            }
            let json = serde_json::to_string(&b).unwrap();
            let back: Bloom = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &b);
            let absent = (0..1000).filter(|i| !values.contains(&format!("absent-{i}"))).filter(|i| b.may_contain(&format!("absent-{i}"))).count();
            prop_assert!(absent < 60, "false positive rate {absent}/1000");
        }

        /// Parsing never panics, and what parses prints back to itself.
        #[test]
        fn parsing_never_panics_and_round_trips(text in ".{0,80}") {
            if let Ok(p) = Predicate::parse(&text) {
                prop_assert_eq!(Predicate::parse(&p.to_sql()).unwrap(), p);
            }
        }
    }
}
