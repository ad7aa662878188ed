use serde::{Deserialize, Serialize};
use std::fmt;

/// A name that is not a valid lowercase SQL identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Empty name.
    #[error("{kind} name is empty")]
    Empty {
        /// "table" or "column".
        kind: &'static str,
    },
    /// Longer than 63 bytes.
    #[error("{kind} name {name:?} is longer than 63 characters")]
    TooLong {
        /// "table" or "column".
        kind: &'static str,
        /// The first characters of the offending name.
        name: String,
    },
    /// Not `[a-z_][a-z0-9_]*`.
    #[error("{kind} name {name:?} is not a lowercase SQL identifier ([a-z_][a-z0-9_]*)")]
    Invalid {
        /// "table" or "column".
        kind: &'static str,
        /// The first characters of the offending name.
        name: String,
    },
    /// A column name reserved for the event envelope.
    #[error("column name {0:?} is reserved")]
    Reserved(String),
}

fn check_identifier(kind: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if s.len() > 63 {
        return Err(NameError::TooLong { kind, name: s.chars().take(64).collect() });
    }
    let mut bytes = s.bytes();
    let first_ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'_'));
    if !first_ok || !bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_')) {
        return Err(NameError::Invalid { kind, name: s.chars().take(64).collect() });
    }
    Ok(())
}

/// Check that `s` may be used as an attribute (column) name: a lowercase SQL
/// identifier that is not one of [`crate::RESERVED_COLUMNS`].
pub fn validate_column_name(s: &str) -> Result<(), NameError> {
    check_identifier("column", s)?;
    if crate::RESERVED_COLUMNS.contains(&s) {
        return Err(NameError::Reserved(s.to_string()));
    }
    Ok(())
}

/// A table name: a lowercase SQL identifier (`[a-z_][a-z0-9_]*`, at most 63
/// bytes). Construction validates, so a `TableName` is always safe to put in a
/// path or a SQL statement.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TableName(String);

impl TableName {
    /// Validate and wrap a table name.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        check_identifier("table", &s)?;
        Ok(Self(s))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TableName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TableName::new(s)
    }
}

impl From<TableName> for String {
    fn from(t: TableName) -> String {
        t.0
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableName({})", self.0)
    }
}

impl std::str::FromStr for TableName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TableName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_lowercase_identifiers() {
        assert!(TableName::new("logs").is_ok());
        assert!(TableName::new("_x1").is_ok());
        assert!(TableName::new("Logs").is_err());
        assert!(TableName::new("1logs").is_err());
        assert!(TableName::new("lo gs").is_err());
        assert!(TableName::new("../etc").is_err());
        assert!(TableName::new("").is_err());
        assert!(TableName::new("a".repeat(64)).is_err());
    }

    #[test]
    fn reserved_columns_are_refused_as_attributes() {
        assert_eq!(validate_column_name("time"), Err(NameError::Reserved("time".into())));
        assert!(validate_column_name("pid").is_ok());
    }
}
