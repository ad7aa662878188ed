//! The telemetry registry: every table and field an agent can produce, with
//! its type, consent level, category, PII class and description.
//!
//! The registry is a data file in the repository, `registry/telemetry.toml`
//! (format version 1; its header documents every key), compiled into the
//! binary with `include_str!` so this crate stays free of I/O. It is the one
//! source of truth for what is collected at each consent level:
//!
//! - the agent collects a table or field only at or above its level, and
//!   a test fails if the agent can emit anything the registry lacks;
//! - the server computes each event's lowest admissible level with
//!   [`Registry::min_level`] and checks its shape with
//!   [`Registry::check_event`], so an agent cannot lower a level by declaring
//!   less;
//! - `custos telemetry catalog` and `docs/TELEMETRY.md` show
//!   [`Registry::rows`] / [`Registry::render_markdown`] (a test keeps the
//!   document equal to the rendering).
//!
//! Rules beyond the file's plain declarations:
//!
//! - **Log tables.** The table marked `log_template` (`logs`) is the schema of
//!   every log table: a table that is not declared but whose events have
//!   category `logs` (a file source's `table = "app_logs"`) has exactly the
//!   template's fields and rules.
//! - **Severity.** For a table with `level_by_severity`, a line of severity
//!   warning or worse is level 2 (enhanced); notice, info, debug, an unknown
//!   severity or none at all is level 3 (full). See [`Severity::level`].
//! - **Switches.** A table with `switch = "usage"` is governed by the usage
//!   switch, not by the consent level: [`Registry::min_level`] answers
//!   [`Level::Security`] for it and [`Registry::tables_at`] never lists it.
//! - **Field levels** default to the table's and may only raise it; an
//!   event's level is the highest of its table's and its present fields'.

use crate::{validate_column_name, Category, Event, Level, PiiClass, TableName, Value, ValueType, RESERVED_COLUMNS};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The registry format version this build reads.
pub const REGISTRY_FORMAT_VERSION: u32 = 1;

/// The registry compiled into this build.
const BUILTIN_TEXT: &str = include_str!("../../../registry/telemetry.toml");

/// The attribute the severity rule reads.
pub const SEVERITY_FIELD: &str = "severity";

/// A registry file that cannot be used. Messages name the table and field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// Not TOML, an unknown key, a missing key, or a value of the wrong TOML type.
    #[error("telemetry registry: {0}")]
    Syntax(String),
    /// A format version this build does not read.
    #[error("telemetry registry: format version {0} is not supported (this build reads version 1)")]
    Version(String),
    /// A declaration that breaks a rule.
    #[error("telemetry registry: {at}: {problem}")]
    Invalid {
        /// Where: `envelope.host`, `logs`, `logs.severity`.
        at: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(at: impl Into<String>, problem: impl Into<String>) -> RegistryError {
    RegistryError::Invalid { at: at.into(), problem: problem.into() }
}

/// An event that does not match the registry. Messages name the table and field.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryViolation {
    /// The table is not declared, and the event is not a log line (only
    /// category `logs` may use an undeclared table, as a log table).
    #[error("table {table} is not in the telemetry registry (an undeclared table is only allowed for category logs, this event has category {category})")]
    UnknownTable {
        /// The table.
        table: String,
        /// The event's category.
        category: Category,
    },
    /// The event's category is not the table's.
    #[error("table {table} has category {expected} in the telemetry registry, the event has category {found}")]
    CategoryMismatch {
        /// The table.
        table: String,
        /// Declared.
        expected: Category,
        /// Sent.
        found: Category,
    },
    /// An attribute the table does not declare.
    #[error("{table}.{field}: field is not in the telemetry registry")]
    UnknownField {
        /// The table.
        table: String,
        /// The attribute.
        field: String,
    },
    /// An attribute of another type than declared.
    #[error("{table}.{field}: the telemetry registry declares type {expected}, the event has {found}")]
    WrongType {
        /// The table.
        table: String,
        /// The attribute.
        field: String,
        /// Declared.
        expected: ValueType,
        /// Sent.
        found: ValueType,
    },
}

/// A switch that governs a table instead of the consent level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Usage (billing) reporting: `custos usage enable|disable`.
    Usage,
}

impl Switch {
    /// The name used in the registry.
    pub fn name(self) -> &'static str {
        match self {
            Switch::Usage => "usage",
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of an envelope column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Microseconds since the epoch, UTC, stored as a timestamp.
    Timestamp,
    /// Boolean.
    Bool,
    /// 64-bit integer.
    Int,
    /// 64-bit float.
    Float,
    /// String.
    Str,
}

impl ColumnType {
    /// The name used in the registry.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Timestamp => "timestamp",
            ColumnType::Bool => "bool",
            ColumnType::Int => "int",
            ColumnType::Float => "float",
            ColumnType::Str => "str",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Severity of a log line, syslog order (most severe first), plus `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// System is unusable.
    Emergency,
    /// Action must be taken immediately.
    Alert,
    /// Critical conditions.
    Critical,
    /// Error conditions.
    Error,
    /// Warning conditions.
    Warning,
    /// Normal but significant.
    Notice,
    /// Informational.
    Info,
    /// Debug messages.
    Debug,
    /// Not recognised, or not stated.
    Unknown,
}

impl Severity {
    /// All severities, most severe first, `Unknown` last.
    pub const ALL: [Severity; 9] = [
        Severity::Emergency,
        Severity::Alert,
        Severity::Critical,
        Severity::Error,
        Severity::Warning,
        Severity::Notice,
        Severity::Info,
        Severity::Debug,
        Severity::Unknown,
    ];

    /// The canonical lowercase name (the value of the `severity` field).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Emergency => "emergency",
            Severity::Alert => "alert",
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
            Severity::Info => "info",
            Severity::Debug => "debug",
            Severity::Unknown => "unknown",
        }
    }

    /// The consent level a line of this severity needs: warning and worse
    /// are [`Level::Enhanced`]; notice, info, debug and unknown are
    /// [`Level::Full`].
    pub fn level(self) -> Level {
        if self <= Severity::Warning {
            Level::Enhanced
        } else {
            Level::Full
        }
    }

    /// The severity a `severity` attribute value names; anything that is not
    /// a string naming one is [`Severity::Unknown`].
    pub fn of_value(v: Option<&Value>) -> Severity {
        match v {
            Some(Value::Str(s)) => s.parse().unwrap_or(Severity::Unknown),
            _ => Severity::Unknown,
        }
    }
}

/// A string that names no severity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid severity {0:?}: expected emergency, alert, critical, error, warning, notice, info, debug or unknown")]
pub struct SeverityParseError(pub String);

impl FromStr for Severity {
    type Err = SeverityParseError;
    /// The canonical names, case-insensitive, and the common short forms
    /// `emerg`, `crit`, `err` and `warn`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // No allocation: the server parses the severity of every log line.
        const ALIASES: [(&str, Severity); 4] = [
            ("emerg", Severity::Emergency),
            ("crit", Severity::Critical),
            ("err", Severity::Error),
            ("warn", Severity::Warning),
        ];
        let t = s.trim();
        Severity::ALL
            .into_iter()
            .map(|v| (v.name(), v))
            .chain(ALIASES)
            .find(|(name, _)| name.eq_ignore_ascii_case(t))
            .map(|(_, v)| v)
            .ok_or_else(|| SeverityParseError(s.chars().take(32).collect()))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A column every table has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvelopeField {
    /// Column name.
    pub name: String,
    /// Column type.
    pub column_type: ColumnType,
    /// Whether it may hold personal data.
    pub pii: PiiClass,
    /// What it holds.
    pub description: String,
}

/// One attribute (column) of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldDef {
    /// Attribute name.
    pub name: String,
    /// Declared type.
    pub value_type: ValueType,
    /// The lowest level at which the field is collected (at least the table's).
    pub level: Level,
    /// Whether it may hold personal data.
    pub pii: PiiClass,
    /// What it holds.
    pub description: String,
}

/// One table of the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableDef {
    /// Table name.
    pub name: TableName,
    /// Category of its events.
    pub category: Category,
    /// The lowest level at which the table is collected.
    pub level: Level,
    /// What it holds.
    pub description: String,
    /// The switch that governs it instead of the level, if any.
    pub switch: Option<Switch>,
    /// Whether this is the schema of every (undeclared) log table.
    pub log_template: bool,
    /// Whether a line's level also depends on its `severity` (see [`Severity::level`]).
    pub level_by_severity: bool,
    /// Its attributes, in declaration order.
    pub fields: Vec<FieldDef>,
}

impl TableDef {
    /// The declared field of this name.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// How the level of the table's events is decided, in words.
    pub fn level_text(&self) -> String {
        level_text(self.level, self.switch, self.level_by_severity)
    }
}

fn level_text(level: Level, switch: Option<Switch>, by_severity: bool) -> String {
    match (switch, by_severity) {
        (Some(s), _) => format!("{s} switch"),
        (None, true) => format!(
            "{} {} (severity warning and above), {} {} (other lines)",
            level as u8,
            level,
            Level::Full as u8,
            Level::Full
        ),
        (None, false) => format!("{} {}", level as u8, level),
    }
}

/// One row of the catalog (`custos telemetry catalog`): a field of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatalogRow {
    /// Table.
    pub table: String,
    /// Field.
    pub field: String,
    /// Type.
    #[serde(rename = "type")]
    pub value_type: ValueType,
    /// The lowest level at which the field is collected ([`Level::Security`]
    /// for a switch-governed table).
    pub level: Level,
    /// How the level is decided, in words (`2 enhanced`, `usage switch`, ...).
    pub level_text: String,
    /// Category.
    pub category: Category,
    /// PII class.
    pub pii: PiiClass,
    /// Description.
    pub description: String,
}

/// The parsed, validated registry.
#[derive(Clone, Debug)]
pub struct Registry {
    envelope: Vec<EnvelopeField>,
    tables: Vec<TableDef>,
    index: HashMap<String, usize>,
    log_template: Option<usize>,
}

// ---------------------------------------------------------------- raw file

#[derive(Deserialize)]
struct RawVersion {
    version: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[allow(dead_code)] // read (and checked) through `RawVersion`
    version: i64,
    #[serde(default)]
    envelope: Vec<RawEnvelope>,
    #[serde(default)]
    tables: Vec<RawTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    pii: String,
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    category: String,
    level: i64,
    description: String,
    #[serde(default)]
    switch: Option<String>,
    #[serde(default)]
    log_template: bool,
    #[serde(default)]
    level_by_severity: bool,
    #[serde(default)]
    fields: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    pii: String,
    #[serde(default)]
    level: Option<i64>,
    description: String,
}

fn parse_level(at: &str, v: i64) -> Result<Level, RegistryError> {
    u8::try_from(v)
        .ok()
        .and_then(|v| Level::try_from(v).ok())
        .ok_or_else(|| invalid(at, format!("level {v} is not a level (0 security, 1 basic, 2 enhanced, 3 full)")))
}

fn parse_pii(at: &str, s: &str) -> Result<PiiClass, RegistryError> {
    PiiClass::ALL
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| invalid(at, format!("unknown pii class {s:?} (expected yes, maybe, if-customized or no)")))
}

fn parse_value_type(at: &str, s: &str) -> Result<ValueType, RegistryError> {
    ValueType::ALL
        .into_iter()
        .find(|t| t.name() == s)
        .ok_or_else(|| invalid(at, format!("unknown type {s:?} (expected int, float, bool or str)")))
}

fn parse_column_type(at: &str, s: &str) -> Result<ColumnType, RegistryError> {
    [ColumnType::Timestamp, ColumnType::Bool, ColumnType::Int, ColumnType::Float, ColumnType::Str]
        .into_iter()
        .find(|t| t.name() == s)
        .ok_or_else(|| invalid(at, format!("unknown type {s:?} (expected timestamp, int, float, bool or str)")))
}

fn check_description(at: &str, s: &str) -> Result<String, RegistryError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(invalid(at, "description is empty"));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(at, "description contains a control character (write it on one line)"));
    }
    Ok(s.to_string())
}

impl Registry {
    /// The registry compiled into this build (`registry/telemetry.toml`),
    /// parsed once.
    pub fn builtin() -> &'static Registry {
        static BUILTIN: OnceLock<Registry> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            // Invariant: the embedded file is fixed at compile time and the
            // test `the_builtin_registry_parses_and_holds_the_decided_tables`
            // parses it, so a failure here cannot reach a released build.
            Registry::parse(BUILTIN_TEXT).expect("the embedded telemetry registry is valid")
        })
    }

    /// The text of the registry compiled into this build.
    pub fn builtin_text() -> &'static str {
        BUILTIN_TEXT
    }

    /// Parse and validate a registry file (format version 1).
    pub fn parse(text: &str) -> Result<Registry, RegistryError> {
        // The version first, so a future format is reported as such rather
        // than as unknown keys.
        let v: RawVersion = toml::from_str(text).map_err(|e| RegistryError::Syntax(e.to_string()))?;
        match v.version {
            Some(toml::Value::Integer(v)) if v == i64::from(REGISTRY_FORMAT_VERSION) => {}
            Some(other) => return Err(RegistryError::Version(other.to_string())),
            None => return Err(RegistryError::Syntax("missing key `version` (format version, 1)".into())),
        }
        let raw: RawRegistry = toml::from_str(text).map_err(|e| RegistryError::Syntax(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawRegistry) -> Result<Registry, RegistryError> {
        let mut envelope = Vec::with_capacity(raw.envelope.len());
        let mut envelope_names: HashSet<String> = HashSet::new();
        for e in raw.envelope {
            let at = format!("envelope.{}", e.name);
            if !RESERVED_COLUMNS.contains(&e.name.as_str()) {
                return Err(invalid(at, "not an envelope column of the server"));
            }
            if !envelope_names.insert(e.name.clone()) {
                return Err(invalid(at, "declared twice"));
            }
            envelope.push(EnvelopeField {
                column_type: parse_column_type(&at, &e.ty)?,
                pii: parse_pii(&at, &e.pii)?,
                description: check_description(&at, &e.description)?,
                name: e.name,
            });
        }
        if envelope.is_empty() {
            return Err(invalid("envelope", "no envelope columns declared"));
        }
        let mut tables = Vec::with_capacity(raw.tables.len());
        let mut index = HashMap::new();
        let mut log_template = None;
        for t in raw.tables {
            let at = t.name.clone();
            let name = TableName::new(t.name.clone()).map_err(|e| invalid(&at, e.to_string()))?;
            if index.contains_key(name.as_str()) {
                return Err(invalid(&at, "table declared twice"));
            }
            let category: Category =
                t.category.parse().map_err(|_| invalid(&at, format!("unknown category {:?}", t.category)))?;
            let level = parse_level(&at, t.level)?;
            let switch = match t.switch.as_deref() {
                None => None,
                Some("usage") => Some(Switch::Usage),
                Some(other) => return Err(invalid(&at, format!("unknown switch {other:?} (expected usage)"))),
            };
            let mut fields: Vec<FieldDef> = Vec::with_capacity(t.fields.len());
            for f in t.fields {
                let fat = format!("{at}.{}", f.name);
                if envelope_names.contains(&f.name) {
                    return Err(invalid(&fat, "field name is an envelope column"));
                }
                validate_column_name(&f.name).map_err(|e| invalid(&fat, e.to_string()))?;
                if fields.iter().any(|g| g.name == f.name) {
                    return Err(invalid(&fat, "field declared twice"));
                }
                let flevel = match f.level {
                    None => level,
                    Some(l) => parse_level(&fat, l)?,
                };
                if flevel < level {
                    return Err(invalid(
                        &fat,
                        format!("field level {} is below the table's level {} (a field level may only raise it)", flevel as u8, level as u8),
                    ));
                }
                fields.push(FieldDef {
                    value_type: parse_value_type(&fat, &f.ty)?,
                    level: flevel,
                    pii: parse_pii(&fat, &f.pii)?,
                    description: check_description(&fat, &f.description)?,
                    name: f.name,
                });
            }
            if t.log_template {
                if category != Category::Logs {
                    return Err(invalid(&at, "only a table of category logs can be the log template"));
                }
                if let Some(i) = log_template {
                    let other: &TableDef = &tables[i];
                    return Err(invalid(&at, format!("{} is already the log template", other.name)));
                }
                log_template = Some(tables.len());
            }
            if t.level_by_severity
                && !fields.iter().any(|f| f.name == SEVERITY_FIELD && f.value_type == ValueType::Str)
            {
                return Err(invalid(&at, "level_by_severity needs a field `severity` of type str"));
            }
            if switch.is_some() && (t.log_template || t.level_by_severity) {
                return Err(invalid(&at, "a switch-governed table cannot be a log table"));
            }
            index.insert(name.as_str().to_string(), tables.len());
            tables.push(TableDef {
                name,
                category,
                level,
                description: check_description(&at, &t.description)?,
                switch,
                log_template: t.log_template,
                level_by_severity: t.level_by_severity,
                fields,
            });
        }
        Ok(Registry { envelope, tables, index, log_template })
    }

    /// The envelope: columns every table has.
    pub fn envelope(&self) -> &[EnvelopeField] {
        &self.envelope
    }

    /// Every declared table, in declaration order.
    pub fn tables(&self) -> &[TableDef] {
        &self.tables
    }

    /// The declared table of this name.
    pub fn table(&self, name: &str) -> Option<&TableDef> {
        self.index.get(name).map(|&i| &self.tables[i])
    }

    /// The log table template (`logs`), if the registry has one.
    pub fn log_template(&self) -> Option<&TableDef> {
        self.log_template.map(|i| &self.tables[i])
    }

    /// The schema a log source writing to `name` gets: the template when
    /// `name` is the template itself or is not declared (a custom log table),
    /// `None` when `name` is a declared table that is not a log table (a
    /// source may not write there) or there is no template.
    pub fn log_table(&self, name: &str) -> Option<&TableDef> {
        match self.table(name) {
            Some(t) if t.log_template => Some(t),
            Some(_) => None,
            None => self.log_template(),
        }
    }

    /// The definition an event of `table` and `category` is checked against:
    /// the declared table, or for an undeclared table of category logs the
    /// log template.
    pub fn resolve(&self, table: &str, category: Category) -> Result<&TableDef, RegistryViolation> {
        if let Some(t) = self.table(table) {
            return Ok(t);
        }
        match (category, self.log_template()) {
            (Category::Logs, Some(t)) => Ok(t),
            _ => Err(RegistryViolation::UnknownTable { table: table.to_string(), category }),
        }
    }

    /// The tables with anything collected at `level` (levels are
    /// cumulative: every table whose level is at most `level`). Tables
    /// governed by a switch are never listed: the level does not govern them.
    pub fn tables_at(&self, level: Level) -> impl Iterator<Item = &TableDef> + '_ {
        self.tables.iter().filter(move |t| t.switch.is_none() && t.level <= level)
    }

    /// The fields of `table` collected at `level` (cumulative). An undeclared
    /// name is taken as a custom log table (the template's fields); a
    /// declared table's own fields otherwise. Empty if there is no such table.
    pub fn fields_at(&self, table: &str, level: Level) -> impl Iterator<Item = &FieldDef> + '_ {
        let def = match self.table(table) {
            Some(t) => Some(t),
            None => self.log_template(),
        };
        def.into_iter().flat_map(|t| t.fields.iter()).filter(move |f| f.level <= level)
    }

    /// The lowest level at which this event may be collected: the highest of
    /// its table's level, the levels of the fields it has, and for a log
    /// table the level of its severity (missing or unknown: [`Level::Full`]).
    /// A switch-governed table answers [`Level::Security`]. Fails on an
    /// unknown table or field (types are [`Registry::check_event`]'s job).
    pub fn min_level(&self, ev: &Event) -> Result<Level, RegistryViolation> {
        let t = self.resolve(ev.table.as_str(), ev.category)?;
        let mut level = t.level;
        for key in ev.attrs.keys() {
            let f = t.field(key).ok_or_else(|| RegistryViolation::UnknownField {
                table: ev.table.to_string(),
                field: key.clone(),
            })?;
            level = level.max(f.level);
        }
        if t.switch.is_some() {
            return Ok(Level::Security);
        }
        if t.level_by_severity {
            level = level.max(Severity::of_value(ev.attrs.get(SEVERITY_FIELD)).level());
        }
        Ok(level)
    }

    /// Check an event against the registry: its table is declared (or it is
    /// a log line in an undeclared log table), its category is the table's,
    /// and every attribute is declared with its type (an integer may stand
    /// where a float is declared).
    pub fn check_event(&self, ev: &Event) -> Result<(), RegistryViolation> {
        self.assess(ev).map(|_| ())
    }

    /// [`Registry::check_event`] and [`Registry::min_level`] in one pass
    /// over the event (what the server runs for every event it receives):
    /// the event's lowest admissible level if it matches the registry.
    pub fn assess(&self, ev: &Event) -> Result<Level, RegistryViolation> {
        let t = self.resolve(ev.table.as_str(), ev.category)?;
        if t.category != ev.category {
            return Err(RegistryViolation::CategoryMismatch {
                table: ev.table.to_string(),
                expected: t.category,
                found: ev.category,
            });
        }
        let mut level = t.level;
        for (key, value) in &ev.attrs {
            let f = t.field(key).ok_or_else(|| RegistryViolation::UnknownField {
                table: ev.table.to_string(),
                field: key.clone(),
            })?;
            let found = value.value_type();
            let fits = found == f.value_type || (found == ValueType::Int && f.value_type == ValueType::Float);
            if !fits {
                return Err(RegistryViolation::WrongType {
                    table: ev.table.to_string(),
                    field: key.clone(),
                    expected: f.value_type,
                    found,
                });
            }
            level = level.max(f.level);
        }
        if t.switch.is_some() {
            return Ok(Level::Security);
        }
        if t.level_by_severity {
            level = level.max(Severity::of_value(ev.attrs.get(SEVERITY_FIELD)).level());
        }
        Ok(level)
    }

    /// The catalog: every field of every table collected at `max` or below,
    /// in declaration order (switch-governed tables at every level).
    pub fn rows(&self, max: Level) -> Vec<CatalogRow> {
        let mut out = Vec::new();
        for t in &self.tables {
            for f in &t.fields {
                let level = if t.switch.is_some() { Level::Security } else { f.level };
                if level > max {
                    continue;
                }
                out.push(CatalogRow {
                    table: t.name.to_string(),
                    field: f.name.clone(),
                    value_type: f.value_type,
                    level,
                    level_text: level_text(f.level, t.switch, t.level_by_severity),
                    category: t.category,
                    pii: f.pii,
                    description: f.description.clone(),
                });
            }
        }
        out
    }

    /// The whole registry as Markdown: the envelope, the tables and every
    /// field (what `docs/TELEMETRY.md` shows between its registry markers).
    pub fn render_markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("### Envelope: the columns of every table\n\n");
        out.push_str("| column | type | pii | description |\n|---|---|---|---|\n");
        for e in &self.envelope {
            out.push_str(&format!("| `{}` | {} | {} | {} |\n", e.name, e.column_type, e.pii, md(&e.description)));
        }
        out.push_str("\n### Tables\n\n");
        out.push_str("| table | category | level | description |\n|---|---|---|---|\n");
        for t in &self.tables {
            let mut desc = md(&t.description);
            if t.log_template {
                desc.push_str(" *(log table template)*");
            }
            out.push_str(&format!("| `{}` | {} | {} | {} |\n", t.name, t.category, t.level_text(), desc));
        }
        out.push_str("\n### Fields\n\n");
        out.push_str("| table | field | type | level | category | pii | description |\n|---|---|---|---|---|---|---|\n");
        for r in self.rows(Level::Full) {
            out.push_str(&format!(
                "| `{}` | `{}` | {} | {} | {} | {} | {} |\n",
                r.table,
                r.field,
                r.value_type,
                r.level_text,
                r.category,
                r.pii,
                md(&r.description)
            ));
        }
        out
    }
}

/// Text safe in a Markdown table cell.
fn md(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn reg() -> &'static Registry {
        Registry::builtin()
    }

    fn ev(table: &str, category: Category, attrs: &[(&str, Value)]) -> Event {
        Event {
            table: TableName::new(table).unwrap(),
            time: 1,
            level: Level::Security,
            category,
            host: "h".into(),
            message: String::new(),
            attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }

    /// The decided table list (docs: notes for issue 4), spelled out so a
    /// change to the registry file is a deliberate change here too.
    const DECIDED: &[(&str, &str, u8, &[&str])] = &[
        ("agent_settings", "settings", 0, &["installation_id", "agent_version", "telemetry_enabled", "telemetry_level", "level_origin", "enabled_origin", "usage_enabled", "usage_origin"]),
        ("security_events", "security", 0, &["kind", "outcome", "detail"]),
        ("usage", "usage", 0, &["installation_id", "period_start", "period_end", "cores", "core_hours", "agents"]),
        ("inventory", "inventory", 1, &["kind", "os_name", "os_version", "kernel", "cpu_model", "cpu_cores", "memory_total_bytes", "boot_time", "vendor", "model", "nic_count", "disk_name", "disk_size_bytes", "disk_rotational", "disk_type", "disk_model", "nic_name", "nic_speed_mbps", "nic_operstate"]),
        ("agent_health", "health", 1, &["events_read", "events_uploaded", "upload_share", "events_not_collected", "last_upload_time", "dropped_logs", "dropped_performance", "dropped_usage", "dropped_inventory", "dropped_health", "dropped_crash", "dropped_security", "dropped_settings", "evicted_performance", "evicted_logs", "evicted_usage", "evicted_inventory", "evicted_health", "evicted_crash", "queued_events", "dead_letters"]),
        ("quality", "health", 1, &["critical_alerts", "window_secs"]),
        ("compatibility", "health", 1, &["agent_version", "os_name", "enabled_sources"]),
        ("performance", "performance", 2, &["interval_secs", "cpu_percent", "load1", "memory_used_bytes", "memory_total_bytes", "disk_read_bytes_per_sec", "disk_write_bytes_per_sec", "net_rx_bytes_per_sec", "net_tx_bytes_per_sec"]),
        ("service_usage", "performance", 2, &["service", "processes", "cpu_seconds", "memory_bytes"]),
        ("logs", "logs", 2, &["severity", "file", "source", "truncated"]),
        ("crash_reports", "crash", 3, &["program", "report_file", "size_bytes", "signal"]),
    ];

    #[test]
    fn the_builtin_registry_parses_and_holds_the_decided_tables() {
        let r = Registry::parse(Registry::builtin_text()).unwrap();
        let got: Vec<(String, String, u8, Vec<String>)> = r
            .tables()
            .iter()
            .map(|t| {
                (t.name.to_string(), t.category.to_string(), t.level as u8, t.fields.iter().map(|f| f.name.clone()).collect())
            })
            .collect();
        let want: Vec<(String, String, u8, Vec<String>)> = DECIDED
            .iter()
            .map(|(n, c, l, f)| (n.to_string(), c.to_string(), *l, f.iter().map(|s| s.to_string()).collect()))
            .collect();
        assert_eq!(got, want);
        let env: Vec<&str> = r.envelope().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["time", "level", "category", "host", "message", "agent_id"]);
        assert_eq!(r.table("usage").unwrap().switch, Some(Switch::Usage));
        assert_eq!(r.log_template().unwrap().name.as_str(), "logs");
        assert!(r.table("logs").unwrap().level_by_severity);
        assert_eq!(r.envelope()[3].pii, PiiClass::Yes, "host is personal data");
        assert_eq!(r.table("inventory").unwrap().field("nic_name").unwrap().pii, PiiClass::IfCustomized);
        assert_eq!(r.table("service_usage").unwrap().field("service").unwrap().pii, PiiClass::IfCustomized);
        assert_eq!(r.table("usage").unwrap().field("core_hours").unwrap().value_type, ValueType::Float);
        assert_eq!(Registry::builtin().tables().len(), DECIDED.len());
    }

    #[test]
    fn the_docs_show_exactly_the_rendered_registry() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/TELEMETRY.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let begin = "<!-- registry:begin -->";
        let start = doc.find(begin).expect("docs/TELEMETRY.md lacks the registry:begin marker") + begin.len();
        let end = doc.find("<!-- registry:end -->").expect("docs/TELEMETRY.md lacks the registry:end marker");
        let expected = Registry::builtin().render_markdown();
        assert_eq!(
            doc[start..end].trim(),
            expected.trim(),
            "docs/TELEMETRY.md's registry is stale; replace it with:\n{expected}"
        );
    }

    #[test]
    fn severities_parse_print_and_map_to_levels() {
        for s in Severity::ALL {
            assert_eq!(s.name().parse::<Severity>().unwrap(), s);
            assert_eq!(s.to_string(), s.name());
        }
        assert_eq!("WARN".parse::<Severity>().unwrap(), Severity::Warning);
        assert_eq!(" Err ".parse::<Severity>().unwrap(), Severity::Error);
        assert_eq!("crit".parse::<Severity>().unwrap(), Severity::Critical);
        assert_eq!("emerg".parse::<Severity>().unwrap(), Severity::Emergency);
        assert!("loud".parse::<Severity>().is_err());
        let enhanced = [Severity::Emergency, Severity::Alert, Severity::Critical, Severity::Error, Severity::Warning];
        for s in Severity::ALL {
            let want = if enhanced.contains(&s) { Level::Enhanced } else { Level::Full };
            assert_eq!(s.level(), want, "{s}");
        }
        assert_eq!(Severity::of_value(None), Severity::Unknown);
        assert_eq!(Severity::of_value(Some(&Value::Int(3))), Severity::Unknown);
        assert_eq!(Severity::of_value(Some(&Value::from("bogus"))), Severity::Unknown);
        assert_eq!(Severity::of_value(Some(&Value::from("error"))), Severity::Error);
    }

    #[test]
    fn log_lines_take_their_level_from_severity() {
        let r = reg();
        let line = |sev: Option<&str>| {
            let attrs: Vec<(&str, Value)> = sev.map(|s| vec![("severity", Value::from(s))]).unwrap_or_default();
            r.min_level(&ev("logs", Category::Logs, &attrs)).unwrap()
        };
        assert_eq!(line(Some("error")), Level::Enhanced);
        assert_eq!(line(Some("warning")), Level::Enhanced);
        assert_eq!(line(Some("notice")), Level::Full);
        assert_eq!(line(Some("info")), Level::Full);
        assert_eq!(line(Some("debug")), Level::Full);
        assert_eq!(line(Some("gibberish")), Level::Full);
        assert_eq!(line(None), Level::Full, "no severity is the most sensitive");
        // A custom log table follows the same rules.
        let custom = ev("app_logs", Category::Logs, &[("severity", Value::from("critical")), ("file", Value::from("/var/log/x"))]);
        assert_eq!(r.min_level(&custom).unwrap(), Level::Enhanced);
        assert!(r.check_event(&custom).is_ok());
        let custom_info = ev("app_logs", Category::Logs, &[("severity", Value::from("info"))]);
        assert_eq!(r.min_level(&custom_info).unwrap(), Level::Full);
    }

    #[test]
    fn min_level_is_the_table_level_for_plain_tables_and_security_for_usage() {
        let r = reg();
        assert_eq!(r.min_level(&ev("agent_settings", Category::Settings, &[("telemetry_level", Value::Int(2))])).unwrap(), Level::Security);
        assert_eq!(r.min_level(&ev("inventory", Category::Inventory, &[("kind", Value::from("host"))])).unwrap(), Level::Basic);
        assert_eq!(r.min_level(&ev("performance", Category::Performance, &[("cpu_percent", Value::Float(3.0))])).unwrap(), Level::Enhanced);
        assert_eq!(r.min_level(&ev("crash_reports", Category::Crash, &[])).unwrap(), Level::Full);
        assert_eq!(r.min_level(&ev("usage", Category::Usage, &[("cores", Value::Int(8))])).unwrap(), Level::Security);
    }

    #[test]
    fn field_levels_raise_the_event_level() {
        let text = Registry::builtin_text().replace(
            "name = \"disk_model\"\ntype = \"str\"\npii = \"no\"",
            "name = \"disk_model\"\ntype = \"str\"\npii = \"no\"\nlevel = 3",
        );
        let r = Registry::parse(&text).unwrap();
        assert_eq!(r.table("inventory").unwrap().field("disk_model").unwrap().level, Level::Full);
        let plain = ev("inventory", Category::Inventory, &[("disk_name", Value::from("sda"))]);
        let with = ev("inventory", Category::Inventory, &[("disk_name", Value::from("sda")), ("disk_model", Value::from("X"))]);
        assert_eq!(r.min_level(&plain).unwrap(), Level::Basic);
        assert_eq!(r.min_level(&with).unwrap(), Level::Full);
        assert_eq!(r.fields_at("inventory", Level::Basic).count(), 18);
        assert_eq!(r.fields_at("inventory", Level::Full).count(), 19);
        let rows = r.rows(Level::Enhanced);
        assert!(rows.iter().all(|row| row.field != "disk_model"));
    }

    #[test]
    fn events_outside_the_registry_are_named() {
        let r = reg();
        let e = r.check_event(&ev("inventory", Category::Inventory, &[("serial", Value::from("X1"))])).unwrap_err();
        assert_eq!(e, RegistryViolation::UnknownField { table: "inventory".into(), field: "serial".into() });
        assert_eq!(e.to_string(), "inventory.serial: field is not in the telemetry registry");
        assert!(r.min_level(&ev("inventory", Category::Inventory, &[("serial", Value::from("X1"))])).is_err());

        let e = r.check_event(&ev("gpu_stats", Category::Performance, &[])).unwrap_err();
        assert!(matches!(e, RegistryViolation::UnknownTable { .. }), "{e}");
        assert!(e.to_string().contains("gpu_stats"), "{e}");

        let e = r.check_event(&ev("inventory", Category::Logs, &[])).unwrap_err();
        assert_eq!(e, RegistryViolation::CategoryMismatch { table: "inventory".into(), expected: Category::Inventory, found: Category::Logs });

        let e = r.check_event(&ev("performance", Category::Performance, &[("memory_used_bytes", Value::Float(1.5))])).unwrap_err();
        assert_eq!(e.to_string(), "performance.memory_used_bytes: the telemetry registry declares type int, the event has float");
        // An integer may stand where a float is declared.
        assert!(r.check_event(&ev("performance", Category::Performance, &[("cpu_percent", Value::Int(3))])).is_ok());
        let e = r.check_event(&ev("logs", Category::Logs, &[("truncated", Value::from("yes"))])).unwrap_err();
        assert!(matches!(e, RegistryViolation::WrongType { .. }), "{e}");
        // A custom log table has exactly the template's fields.
        let e = r.check_event(&ev("app_logs", Category::Logs, &[("pid", Value::Int(1))])).unwrap_err();
        assert_eq!(e.to_string(), "app_logs.pid: field is not in the telemetry registry");
        // A log line sent to a declared non-log table is refused.
        assert!(r.check_event(&ev("security_events", Category::Logs, &[])).is_err());
    }

    #[test]
    fn tables_and_fields_at_a_level_are_cumulative() {
        let r = reg();
        let names = |l: Level| r.tables_at(l).map(|t| t.name.to_string()).collect::<Vec<_>>();
        assert_eq!(names(Level::Security), ["agent_settings", "security_events"]);
        assert_eq!(
            names(Level::Basic),
            ["agent_settings", "security_events", "inventory", "agent_health", "quality", "compatibility"]
        );
        assert!(names(Level::Enhanced).contains(&"logs".to_string()));
        assert!(!names(Level::Enhanced).contains(&"crash_reports".to_string()));
        assert_eq!(names(Level::Full).len(), DECIDED.len() - 1, "every table but usage");
        assert!(!names(Level::Full).contains(&"usage".to_string()), "usage follows its switch");
        for l in Level::ALL {
            for t in r.tables_at(l) {
                assert!(Level::ALL.iter().filter(|h| **h >= l).all(|h| r.tables_at(*h).any(|u| u.name == t.name)));
            }
        }
        assert_eq!(r.fields_at("quality", Level::Security).count(), 0);
        assert_eq!(r.fields_at("quality", Level::Basic).count(), 2);
        assert_eq!(r.fields_at("app_logs", Level::Enhanced).count(), 4, "custom log tables have the template's fields");
        assert!(r.log_table("app_logs").is_some());
        assert!(r.log_table("logs").is_some());
        assert!(r.log_table("inventory").is_none(), "a source may not write to a declared non-log table");
    }

    #[test]
    fn catalog_rows_filter_by_level_and_render_as_markdown() {
        let r = reg();
        let rows = r.rows(Level::Security);
        let tables: HashSet<&str> = rows.iter().map(|row| row.table.as_str()).collect();
        assert_eq!(tables, HashSet::from(["agent_settings", "security_events", "usage"]));
        let usage = rows.iter().find(|row| row.table == "usage").unwrap();
        assert_eq!(usage.level_text, "usage switch");
        let all = r.rows(Level::Full);
        assert_eq!(all.len(), DECIDED.iter().map(|d| d.3.len()).sum::<usize>());
        let sev = all.iter().find(|row| row.table == "logs" && row.field == "severity").unwrap();
        assert_eq!(sev.level, Level::Enhanced);
        assert!(sev.level_text.contains("3 full"), "{}", sev.level_text);
        assert!(r.rows(Level::Enhanced).iter().all(|row| row.table != "crash_reports"));
        assert!(r.rows(Level::Basic).iter().all(|row| row.level <= Level::Basic));
        let json = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(json["type"], "str");
        assert_eq!(json["level"], 0);

        let md = r.render_markdown();
        assert!(md.contains("| `host` | str | yes |"), "{md}");
        assert!(md.contains("| `logs` | logs | 2 enhanced (severity warning and above), 3 full (other lines) |"), "{md}");
        assert!(md.contains("| `inventory` | `nic_name` | str | 1 basic | inventory | if-customized |"), "{md}");
        assert_eq!(md.matches("\n| `").count(), r.envelope().len() + r.tables().len() + all.len());
    }

    // ------------------------------------------------------------ parse errors

    const MINI: &str = r#"
version = 1
[[envelope]]
name = "time"
type = "timestamp"
pii = "no"
description = "When."
[[tables]]
name = "t"
category = "health"
level = 1
description = "A table."
[[tables.fields]]
name = "a"
type = "int"
pii = "no"
description = "A field."
"#;

    fn err(text: &str) -> String {
        Registry::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_registry_parses() {
        let r = Registry::parse(MINI).unwrap();
        assert_eq!(r.tables().len(), 1);
        assert_eq!(r.table("t").unwrap().fields[0].level, Level::Basic);
        assert!(r.log_template().is_none());
        // Without a template an undeclared table is unknown even for logs.
        assert!(r.check_event(&ev("x", Category::Logs, &[])).is_err());
    }

    #[test]
    fn malformed_registries_are_refused_naming_table_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("version = 1", "version = 2", "format version 2 is not supported"),
            ("version = 1", "", "missing key `version`"),
            ("version = 1", "version = 1\nextra = 3", "unknown field `extra`"),
            ("description = \"A field.\"", "description = \"A field.\"\nunit = \"s\"", "unknown field `unit`"),
            ("type = \"int\"", "type = \"integer\"", "t.a: unknown type \"integer\""),
            ("category = \"health\"", "category = \"metrics\"", "t: unknown category \"metrics\""),
            ("level = 1", "level = 4", "t: level 4 is not a level"),
            ("level = 1", "level = -1", "t: level -1 is not a level"),
            ("pii = \"no\"\ndescription = \"A field.\"", "pii = \"perhaps\"\ndescription = \"A field.\"", "t.a: unknown pii class \"perhaps\""),
            ("name = \"a\"", "name = \"A-b\"", "t.A-b: column name \"A-b\" is not a lowercase SQL identifier"),
            ("name = \"a\"", "name = \"host\"", "t.host: column name \"host\" is reserved"),
            ("name = \"a\"", "name = \"time\"", "t.time: field name is an envelope column"),
            ("name = \"a\"", "name = \"workspace_id\"", "t.workspace_id: column name \"workspace_id\" is reserved"),
            ("name = \"t\"", "name = \"T t\"", "T t: table name"),
            ("name = \"time\"", "name = \"clock\"", "envelope.clock: not an envelope column"),
            ("type = \"timestamp\"", "type = \"date\"", "envelope.time: unknown type \"date\""),
            ("description = \"A table.\"", "description = \" \"", "t: description is empty"),
            ("level = 1\ndescription", "level = 1\nswitch = \"billing\"\ndescription", "t: unknown switch \"billing\""),
            ("level = 1\ndescription", "level = 1\nlog_template = true\ndescription", "t: only a table of category logs"),
            ("level = 1\ndescription", "level = 1\nlevel_by_severity = true\ndescription", "t: level_by_severity needs a field `severity`"),
            ("pii = \"no\"\ndescription = \"A field.\"", "pii = \"no\"\nlevel = 0\ndescription = \"A field.\"", "t.a: field level 0 is below the table's level 1"),
            ("version = 1", "version = \"1\"", "format version \"1\" is not supported"),
            ("[[tables]]", "[tables]", "invalid type"),
        ];
        for (from, to, want) in cases {
            assert!(MINI.contains(from), "case {from:?} does not apply");
            let text = MINI.replacen(from, to, 1);
            let got = err(&text);
            assert!(got.contains(want), "{from:?} -> {to:?}: {got}");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let field = "[[tables.fields]]\nname = \"a\"\ntype = \"int\"\npii = \"no\"\ndescription = \"Again.\"\n";
        assert!(err(&format!("{MINI}{field}")).contains("t.a: field declared twice"));
        let table = "[[tables]]\nname = \"t\"\ncategory = \"health\"\nlevel = 1\ndescription = \"Again.\"\n";
        assert!(err(&format!("{MINI}{table}")).contains("t: table declared twice"));
        let env = MINI.replacen("[[tables]]", "[[envelope]]\nname = \"time\"\ntype = \"int\"\npii = \"no\"\ndescription = \"x\"\n[[tables]]", 1);
        assert!(err(&env).contains("envelope.time: declared twice"), "{}", err(&env));
        let two = format!(
            "{MINI}[[tables]]\nname = \"l1\"\ncategory = \"logs\"\nlevel = 2\nlog_template = true\ndescription = \"x\"\n\
             [[tables]]\nname = \"l2\"\ncategory = \"logs\"\nlevel = 2\nlog_template = true\ndescription = \"x\"\n"
        );
        assert!(err(&two).contains("l2: l1 is already the log template"), "{}", err(&two));
    }

    // ------------------------------------------------------------ properties

    use proptest::prelude::*;

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            "[a-z]{0,8}".prop_map(Value::Str),
            prop::sample::select(Severity::ALL.to_vec()).prop_map(|s| Value::Str(s.to_string())),
        ]
    }

    fn any_table() -> impl Strategy<Value = String> {
        let declared: Vec<String> = Registry::builtin().tables().iter().map(|t| t.name.to_string()).collect();
        prop_oneof![prop::sample::select(declared), "[a-z_][a-z0-9_]{0,10}"]
    }

    fn any_field() -> impl Strategy<Value = String> {
        let mut names: Vec<String> =
            Registry::builtin().tables().iter().flat_map(|t| t.fields.iter().map(|f| f.name.clone())).collect();
        names.sort();
        names.dedup();
        prop_oneof![prop::sample::select(names), "[a-z_][a-z0-9_]{0,10}"]
    }

    fn any_event() -> impl Strategy<Value = Event> {
        (
            any_table(),
            prop::sample::select(Category::ALL.to_vec()),
            prop::sample::select(Level::ALL.to_vec()),
            prop::collection::btree_map(any_field(), any_value(), 0..6),
        )
            .prop_map(|(table, category, level, attrs)| Event {
                table: TableName::new(table).unwrap(),
                time: 0,
                level,
                category,
                host: "h".into(),
                message: String::new(),
                attrs,
            })
    }

    /// A valid event of a declared table: attributes drawn from its fields
    /// (never `severity`), values of the declared type.
    fn valid_event_with_extra() -> impl Strategy<Value = (Event, String, Value)> {
        let tables: Vec<TableDef> = Registry::builtin().tables().to_vec();
        prop::sample::select(tables).prop_flat_map(|t| {
            let fields: Vec<FieldDef> = t.fields.iter().filter(|f| f.name != SEVERITY_FIELD).cloned().collect();
            let n = fields.len();
            (Just(t), prop::sample::subsequence(fields.clone(), 0..=n), prop::sample::select(fields))
                .prop_map(|(t, present, extra)| {
                    let value = |f: &FieldDef| match f.value_type {
                        ValueType::Bool => Value::Bool(true),
                        ValueType::Int => Value::Int(1),
                        ValueType::Float => Value::Float(1.0),
                        ValueType::Str => Value::from("x"),
                    };
                    let attrs: BTreeMap<String, Value> = present.iter().map(|f| (f.name.clone(), value(f))).collect();
                    let e = Event {
                        table: t.name.clone(),
                        time: 0,
                        level: Level::Security,
                        category: t.category,
                        host: "h".into(),
                        message: String::new(),
                        attrs,
                    };
                    (e, extra.name.clone(), value(&extra))
                })
        })
    }

    proptest! {
        #[test]
        fn random_events_never_panic_the_checks(e in any_event()) {
            let r = Registry::builtin();
            let checked = r.check_event(&e);
            let level = r.min_level(&e);
            // A valid event always has a level; a level is never below the table's.
            if checked.is_ok() {
                let l = level.clone().unwrap();
                let t = r.resolve(e.table.as_str(), e.category).unwrap();
                if t.switch.is_none() {
                    prop_assert!(l >= t.level);
                }
            }
            if let Err(v) = &level {
                prop_assert!(!v.to_string().is_empty());
            }
            // The one-pass assessment agrees with the two checks.
            match r.assess(&e) {
                Ok(l) => {
                    prop_assert!(checked.is_ok());
                    prop_assert_eq!(Ok(l), level);
                }
                Err(v) => prop_assert_eq!(Err(v), checked),
            }
        }

        #[test]
        fn adding_a_field_never_lowers_the_level((e, field, value) in valid_event_with_extra()) {
            let r = Registry::builtin();
            prop_assert!(r.check_event(&e).is_ok());
            let before = r.min_level(&e).unwrap();
            let mut more = e.clone();
            more.attrs.insert(field, value);
            prop_assert!(r.check_event(&more).is_ok());
            prop_assert!(r.min_level(&more).unwrap() >= before);
        }
    }

    #[test]
    fn only_a_severity_can_lower_a_log_line_below_full() {
        // The one exception to monotonicity, by design: a line without a
        // severity is treated as the most sensitive kind.
        let r = reg();
        let bare = ev("logs", Category::Logs, &[("source", Value::from("file"))]);
        let stated = ev("logs", Category::Logs, &[("source", Value::from("file")), ("severity", Value::from("error"))]);
        assert_eq!(r.min_level(&bare).unwrap(), Level::Full);
        assert_eq!(r.min_level(&stated).unwrap(), Level::Enhanced);
    }
}
