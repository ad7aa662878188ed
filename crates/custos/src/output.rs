//! Rendering for `--output table|json|csv`.

use clap::ValueEnum;
use std::fmt::Write;

/// Output format of every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
    /// Comma-separated values (query results).
    Csv,
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Aligned text table.
pub fn table(columns: &[String], rows: &[Vec<serde_json::Value>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|v| cell(v).replace(['\n', '\r', '\t'], " ")).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count().min(120));
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, vals: &[String]| {
        let parts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let v: String = if v.chars().count() > 120 { v.chars().take(117).collect::<String>() + "..." } else { v.clone() };
                format!("{v:<w$}", w = widths.get(i).copied().unwrap_or(0))
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut out, columns);
    let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &sep);
    for r in &cells {
        line(&mut out, r);
    }
    out
}

/// RFC 4180 CSV.
pub fn csv(columns: &[String], rows: &[Vec<serde_json::Value>]) -> String {
    fn q(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "{}", columns.iter().map(|c| q(c)).collect::<Vec<_>>().join(","));
    for r in rows {
        let _ = writeln!(out, "{}", r.iter().map(|v| q(&cell(v))).collect::<Vec<_>>().join(","));
    }
    out
}

/// Rows as an array of objects, one per row, keys in column order.
pub fn json_rows(columns: &[String], rows: &[Vec<serde_json::Value>]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                for (c, v) in columns.iter().zip(r) {
                    m.insert(c.clone(), v.clone());
                }
                serde_json::Value::Object(m)
            })
            .collect(),
    )
}

/// Render key/value records (one object or a list of objects) in a format.
pub fn records(out: Output, value: &serde_json::Value) -> String {
    match out {
        Output::Json => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        Output::Table | Output::Csv => {
            let list: Vec<&serde_json::Map<String, serde_json::Value>> = match value {
                serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_object()).collect(),
                serde_json::Value::Object(o) => vec![o],
                _ => vec![],
            };
            let mut columns: Vec<String> = Vec::new();
            for o in &list {
                for k in o.keys() {
                    if !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
            }
            let rows: Vec<Vec<serde_json::Value>> = list
                .iter()
                .map(|o| columns.iter().map(|c| o.get(c).cloned().unwrap_or(serde_json::Value::Null)).collect())
                .collect();
            if out == Output::Csv {
                csv(&columns, &rows)
            } else if let (serde_json::Value::Object(o), true) = (value, list.len() == 1) {
                // A single record reads better vertically.
                let w = o.keys().map(|k| k.len()).max().unwrap_or(0);
                o.iter().map(|(k, v)| format!("{k:<w$}  {}\n", cell(v))).collect()
            } else {
                table(&columns, &rows)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let s = csv(&["a".into(), "b".into()], &[vec![json!("x,y"), json!("say \"hi\"")], vec![json!(1), json!(null)]]);
        assert_eq!(s, "a,b\n\"x,y\",\"say \"\"hi\"\"\"\n1,\n");
    }

    #[test]
    fn json_rows_keep_column_names() {
        let v = json_rows(&["n".into()], &[vec![json!(5)]]);
        assert_eq!(v, json!([{"n": 5}]));
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["name".into(), "n".into()], &[vec![json!("a"), json!(10)]]);
        assert_eq!(t, "name  n\n----  --\na     10\n");
    }
}
