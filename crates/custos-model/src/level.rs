use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Consent level. Levels are cumulative: an event of level `L` is collected
/// only when the effective level is `>= L`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Level {
    /// 0: settings and security events only.
    Security = 0,
    /// 1: inventory, agent health, quality, compatibility.
    Basic = 1,
    /// 2: performance samples, service usage, warning-and-above logs (the default).
    #[default]
    Enhanced = 2,
    /// 3: everything, including debug logs and crash reports.
    Full = 3,
}

impl Level {
    /// All levels, lowest first.
    pub const ALL: [Level; 4] = [Level::Security, Level::Basic, Level::Enhanced, Level::Full];

    /// The lowercase name of the level.
    pub fn name(self) -> &'static str {
        match self {
            Level::Security => "security",
            Level::Basic => "basic",
            Level::Enhanced => "enhanced",
            Level::Full => "full",
        }
    }
}

/// A level number or name that is not one of the four levels.
#[derive(Debug, thiserror::Error)]
#[error("invalid level {0:?}: expected 0-3 or security, basic, enhanced, full")]
pub struct LevelParseError(pub String);

impl TryFrom<u8> for Level {
    type Error = LevelParseError;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(Level::Security),
            1 => Ok(Level::Basic),
            2 => Ok(Level::Enhanced),
            3 => Ok(Level::Full),
            other => Err(LevelParseError(other.to_string())),
        }
    }
}

impl From<Level> for u8 {
    fn from(l: Level) -> u8 {
        l as u8
    }
}

impl FromStr for Level {
    type Err = LevelParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "security" => Ok(Level::Security),
            "1" | "basic" => Ok(Level::Basic),
            "2" | "enhanced" => Ok(Level::Enhanced),
            "3" | "full" => Ok(Level::Full),
            _ => Err(LevelParseError(s.chars().take(32).collect())),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of data an event is. Eviction order under pressure and
/// retention rules are decided per category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Security events: certificate renewals, authentication failures, key operations.
    Security,
    /// Agent and telemetry settings, consent and deletion records.
    Settings,
    /// Device inventory: hardware and operating system facts.
    Inventory,
    /// Agent health: upload share, drops, last upload.
    Health,
    /// Usage (billing) records.
    Usage,
    /// Log lines.
    Logs,
    /// Performance samples.
    Performance,
    /// Crash reports.
    Crash,
}

impl Category {
    /// All categories.
    pub const ALL: [Category; 8] = [
        Category::Security,
        Category::Settings,
        Category::Inventory,
        Category::Health,
        Category::Usage,
        Category::Logs,
        Category::Performance,
        Category::Crash,
    ];

    /// The snake_case name used on the wire and in storage.
    pub fn name(self) -> &'static str {
        match self {
            Category::Security => "security",
            Category::Settings => "settings",
            Category::Inventory => "inventory",
            Category::Health => "health",
            Category::Usage => "usage",
            Category::Logs => "logs",
            Category::Performance => "performance",
            Category::Crash => "crash",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Category {
    type Err = LevelParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| LevelParseError(format!("category {s}")))
    }
}

/// Whether a field may hold personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PiiClass {
    /// Holds personal data.
    Yes,
    /// May hold personal data.
    Maybe,
    /// Holds personal data only if the customer customised it (names, labels).
    IfCustomized,
    /// Never holds personal data.
    No,
}

impl PiiClass {
    /// All classes, most personal first.
    pub const ALL: [PiiClass; 4] = [PiiClass::Yes, PiiClass::Maybe, PiiClass::IfCustomized, PiiClass::No];

    /// The kebab-case name used in the registry and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            PiiClass::Yes => "yes",
            PiiClass::Maybe => "maybe",
            PiiClass::IfCustomized => "if-customized",
            PiiClass::No => "no",
        }
    }
}

impl fmt::Display for PiiClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_parse_by_number_or_name() {
        assert!(Level::Security < Level::Basic && Level::Enhanced < Level::Full);
        assert_eq!("2".parse::<Level>().unwrap(), Level::Enhanced);
        assert_eq!("FULL".parse::<Level>().unwrap(), Level::Full);
        assert!("4".parse::<Level>().is_err());
        assert_eq!(Level::default(), Level::Enhanced);
    }

    #[test]
    fn level_serialises_as_a_number() {
        assert_eq!(serde_json::to_string(&Level::Basic).unwrap(), "1");
        assert!(serde_json::from_str::<Level>("7").is_err());
    }
}
