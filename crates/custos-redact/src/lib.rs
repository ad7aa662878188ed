//! The redaction engine (issue 6): finds personal data and secrets in text
//! and reports them as byte spans with an entity type. Pure and
//! synchronous: no I/O (rule files are parsed from strings the caller
//! read), so it runs the same on the agent and on the server.
//!
//! Layers, each usable alone:
//!
//! - [`pii`]: hand-written detectors of personal data;
//! - [`secrets`]: gitleaks-format secret rules plus built-ins;
//! - [`policy`]: the operator chosen per entity, table, category and level
//!   (TOML, validated into typed structs);
//! - [`pseudonym`]: the keyed, format-preserving pseudonyms;
//! - [`engine`]: the [`Redactor`] that puts them together and rewrites
//!   text, JSON values and events;
//! - [`prefilter`]: the detectors' cheap triggers searched once over a
//!   block of many lines instead of line by line.
#![forbid(unsafe_code)]

pub mod engine;
pub mod pii;
pub mod policy;
pub mod prefilter;
pub mod pseudonym;
pub mod secrets;

pub use engine::{Context, Outcome, Redacted, Redactor, Session, Verdict};
pub use policy::{Operator, Policy, PolicyError};
pub use prefilter::{LineHints, LinePrefilter};
pub use pseudonym::{Pseudonymizer, PseudonymKey};

pub use pii::Detector as PiiDetector;

use serde::Serialize;

/// What was found. Names follow Presidio's entity names where they exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Entity {
    /// An e-mail address.
    #[serde(rename = "EMAIL_ADDRESS")]
    EmailAddress,
    /// An IPv4 or IPv6 address.
    #[serde(rename = "IP_ADDRESS")]
    IpAddress,
    /// A MAC address.
    #[serde(rename = "MAC_ADDRESS")]
    MacAddress,
    /// A payment card number (Luhn-valid).
    #[serde(rename = "CREDIT_CARD")]
    CreditCard,
    /// An IBAN (mod-97 valid).
    #[serde(rename = "IBAN_CODE")]
    IbanCode,
    /// A US social security number.
    #[serde(rename = "US_SSN")]
    UsSsn,
    /// A phone number.
    #[serde(rename = "PHONE_NUMBER")]
    PhoneNumber,
    /// A URL (one carrying credentials, or any URL when configured).
    #[serde(rename = "URL")]
    Url,
    /// A host or domain name.
    #[serde(rename = "DOMAIN_NAME")]
    DomainName,
    /// A user name in a log context.
    #[serde(rename = "USER_NAME")]
    UserName,
    /// A secret: key, token, password, private key.
    #[serde(rename = "SECRET")]
    Secret,
    /// A value matched by a custom keyword or regular expression of the
    /// policy; the span's `rule` is the custom entity's name.
    #[serde(rename = "CUSTOM")]
    Custom,
}

impl Entity {
    /// The entity's name as printed (`EMAIL_ADDRESS`, …).
    pub fn name(self) -> &'static str {
        match self {
            Entity::EmailAddress => "EMAIL_ADDRESS",
            Entity::IpAddress => "IP_ADDRESS",
            Entity::MacAddress => "MAC_ADDRESS",
            Entity::CreditCard => "CREDIT_CARD",
            Entity::IbanCode => "IBAN_CODE",
            Entity::UsSsn => "US_SSN",
            Entity::PhoneNumber => "PHONE_NUMBER",
            Entity::Url => "URL",
            Entity::DomainName => "DOMAIN_NAME",
            Entity::UserName => "USER_NAME",
            Entity::Secret => "SECRET",
            Entity::Custom => "CUSTOM",
        }
    }

    /// Every built-in entity (not [`Entity::Custom`]), in a fixed order.
    pub const BUILTIN: [Entity; 11] = [
        Entity::EmailAddress,
        Entity::IpAddress,
        Entity::MacAddress,
        Entity::CreditCard,
        Entity::IbanCode,
        Entity::UsSsn,
        Entity::PhoneNumber,
        Entity::Url,
        Entity::DomainName,
        Entity::UserName,
        Entity::Secret,
    ];

    /// The entity named `name` (`EMAIL_ADDRESS`, …), case-sensitive.
    pub fn from_name(name: &str) -> Option<Entity> {
        Entity::BUILTIN.into_iter().chain([Entity::Custom]).find(|e| e.name() == name)
    }

    /// Position in [`Entity::BUILTIN`] (custom entities come after).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A finding: bytes `start..end` of the input are an `entity`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// What it is.
    pub entity: Entity,
    /// For secrets: the rule that matched (a gitleaks rule id or a built-in
    /// name); for [`Entity::Custom`]: the custom entity's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl Span {
    /// The name printed for this span: the entity's name, or for a custom
    /// entity the name the policy gave it.
    pub fn entity_name(&self) -> &str {
        match (self.entity, &self.rule) {
            (Entity::Custom, Some(name)) => name,
            (e, _) => e.name(),
        }
    }
}
