//! Intent URNs and the local prohibited-intent guardrail.
//!
//! Implements PROTOCOL.md §2.2 (intent URN grammar) with the single validator recommended
//! by §19 T1 and DESIGN §4.11:
//!
//! ```text
//! urn:iicp:intent:<domain>(:<segment>)*:v<digits>
//! domain  = [a-z0-9_-]+  |  "x." [a-z0-9_.-]+        (custom vendor intents)
//! segment = [a-z0-9_/-]+
//! ```
//!
//! Zero further segments are allowed, so the registry's legacy two-segment URNs such as
//! `urn:iicp:intent:translate:v1` pass, and `/` is allowed after the domain
//! (`urn:iicp:intent:mcp:tools/call:v1`). Uppercase, `+modifier` suffixes, whitespace,
//! empty segments and a missing version are rejected. Matching is exact and
//! case-sensitive; [`Intent`] never normalises its input.
//!
//! The guardrail ([`check_intent_policy`], §2.2 "Local prohibited-intent guardrail") refuses
//! intents whose lowercased, trimmed URN contains a fragment of a `prohibited` or
//! `high_risk` rule of the shared taxonomy (`intent-risk-taxonomy.json`, vendored in this
//! crate), with code `IICP-POLICY-001`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

/// The fixed prefix of every intent URN.
pub const PREFIX: &str = "urn:iicp:intent:";

/// Longest intent URN accepted, in bytes. Real URNs are far shorter.
pub const MAX_LEN: usize = 256;

/// How much of a rejected input an [`IntentError`] quotes, in characters.
const QUOTE_CHARS: usize = 48;

/// Why a string is not a valid intent URN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntentError {
    /// The input was empty.
    #[error("intent URN is empty")]
    Empty,
    /// The input is longer than [`MAX_LEN`] bytes.
    #[error("intent URN is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit ([`MAX_LEN`]).
        max: usize,
    },
    /// The input does not start with `urn:iicp:intent:`.
    #[error("intent URN must start with `urn:iicp:intent:` (got `{quoted}`)")]
    MissingPrefix {
        /// The start of the input, truncated.
        quoted: String,
    },
    /// The input contains whitespace or a control character.
    #[error("intent URN contains whitespace or a control character at byte {position}")]
    Whitespace {
        /// Byte offset of the offending character.
        position: usize,
    },
    /// The input contains an uppercase letter; intent URNs are lowercase.
    #[error("intent URN contains an uppercase letter at byte {position}; URNs are lowercase")]
    Uppercase {
        /// Byte offset of the offending character.
        position: usize,
    },
    /// The input carries a deprecated `+modifier` suffix (§2.2, sem §1.5).
    #[error(
        "intent URN carries a `+` modifier; modifiers are not accepted (use a required profile)"
    )]
    Modifier,
    /// A `:`-separated segment is empty (e.g. `llm::chat`).
    #[error("intent URN has an empty segment (segment {index} after the prefix)")]
    EmptySegment {
        /// Zero-based index of the segment after the prefix.
        index: usize,
    },
    /// A character that is not allowed in that segment.
    #[error("intent URN has a character not allowed in segment {index}: `{ch}`")]
    InvalidChar {
        /// Zero-based index of the segment after the prefix.
        index: usize,
        /// The offending character.
        ch: char,
    },
    /// `x.` custom domain without a vendor label.
    #[error("custom intent domain `x.` needs a vendor label (e.g. `x.acme`)")]
    EmptyVendor,
    /// The last segment is not `v<digits>`.
    #[error("intent URN must end with `:v<N>` (a version such as `:v1`)")]
    MissingVersion,
    /// The version number does not fit in 32 bits.
    #[error("intent URN version number is out of range")]
    VersionOutOfRange,
}

/// A validated intent URN such as `urn:iicp:intent:llm:chat:v1`.
///
/// Construct with [`str::parse`], [`Intent::new`] or [`TryFrom<String>`]; serde
/// deserialisation validates too. The URN is kept byte-for-byte as given.
///
/// ```
/// use iicp_proto::intent::Intent;
/// let chat: Intent = "urn:iicp:intent:llm:chat:v1".parse()?;
/// assert_eq!(chat.domain(), "llm");
/// assert_eq!(chat.action(), Some("chat"));
/// assert_eq!(chat.version(), 1);
/// assert!("urn:iicp:intent:LLM:chat:v1".parse::<Intent>().is_err());
/// # Ok::<(), iicp_proto::intent::IntentError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Intent {
    urn: String,
    /// Byte offset (in `urn`) of the end of the domain.
    domain_end: usize,
    /// Byte offset (in `urn`) of the `:` before the version segment.
    version_colon: usize,
    version: u32,
}

/// Offsets found by [`validate`].
struct Parsed {
    domain_end: usize,
    version_colon: usize,
    version: u32,
}

fn quote(input: &str) -> String {
    let mut out: String = input.chars().take(QUOTE_CHARS).collect();
    if input.chars().count() > QUOTE_CHARS {
        out.push('…');
    }
    out
}

/// Checks `input` against the intent grammar without allocating.
fn validate(input: &str) -> Result<Parsed, IntentError> {
    if input.is_empty() {
        return Err(IntentError::Empty);
    }
    if input.len() > MAX_LEN {
        return Err(IntentError::TooLong {
            len: input.len(),
            max: MAX_LEN,
        });
    }
    // Whole-string checks first so the most helpful error wins.
    if input.is_ascii() {
        // the same rule for ASCII, byte by byte: whitespace and controls are C0, space
        // and DEL
        for (position, b) in input.bytes().enumerate() {
            match b {
                0..=0x20 | 0x7f => return Err(IntentError::Whitespace { position }),
                b'A'..=b'Z' => return Err(IntentError::Uppercase { position }),
                _ => {}
            }
        }
    } else {
        for (position, ch) in input.char_indices() {
            if ch.is_whitespace() || ch.is_control() {
                return Err(IntentError::Whitespace { position });
            }
            if ch.is_uppercase() {
                return Err(IntentError::Uppercase { position });
            }
        }
    }
    let Some(rest) = input.strip_prefix(PREFIX) else {
        return Err(IntentError::MissingPrefix {
            quoted: quote(input),
        });
    };
    if rest.contains('+') {
        return Err(IntentError::Modifier);
    }
    let segments: Vec<&str> = rest.split(':').collect();
    if let Some(index) = segments.iter().position(|s| s.is_empty()) {
        return Err(IntentError::EmptySegment { index });
    }
    if segments.len() < 2 {
        return Err(IntentError::MissingVersion);
    }
    let last = segments.len() - 1;

    // Domain.
    let domain = segments[0];
    if let Some(vendor) = domain.strip_prefix("x.") {
        if vendor.is_empty() {
            return Err(IntentError::EmptyVendor);
        }
        if let Some(ch) = vendor.chars().find(|c| !is_vendor_char(*c)) {
            return Err(IntentError::InvalidChar { index: 0, ch });
        }
    } else if let Some(ch) = domain.chars().find(|c| !is_domain_char(*c)) {
        return Err(IntentError::InvalidChar { index: 0, ch });
    }

    // Further segments.
    for (index, seg) in segments.iter().enumerate().take(last).skip(1) {
        if let Some(ch) = seg.chars().find(|c| !is_segment_char(*c)) {
            return Err(IntentError::InvalidChar { index, ch });
        }
    }

    // Version.
    let digits = segments[last]
        .strip_prefix('v')
        .ok_or(IntentError::MissingVersion)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IntentError::MissingVersion);
    }
    let version: u32 = digits.parse().map_err(|_| IntentError::VersionOutOfRange)?;

    let domain_end = PREFIX.len() + domain.len();
    let version_colon = input.len() - segments[last].len() - 1;
    Ok(Parsed {
        domain_end,
        version_colon,
        version,
    })
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

fn is_vendor_char(c: char) -> bool {
    is_domain_char(c) || c == '.'
}

fn is_segment_char(c: char) -> bool {
    is_domain_char(c) || c == '/'
}

impl Intent {
    /// Validates `urn` and wraps it.
    pub fn new(urn: impl Into<String>) -> Result<Self, IntentError> {
        let urn = urn.into();
        let parsed = validate(&urn)?;
        Ok(Self {
            urn,
            domain_end: parsed.domain_end,
            version_colon: parsed.version_colon,
            version: parsed.version,
        })
    }

    /// Returns `Ok(())` when `urn` is a valid intent URN, without allocating.
    pub fn check(urn: &str) -> Result<(), IntentError> {
        validate(urn).map(|_| ())
    }

    /// The URN as given.
    pub fn as_str(&self) -> &str {
        &self.urn
    }

    /// Consumes the intent and returns the URN.
    pub fn into_string(self) -> String {
        self.urn
    }

    /// The domain segment: `llm` for `urn:iicp:intent:llm:chat:v1`, `x.acme` for a
    /// custom intent.
    pub fn domain(&self) -> &str {
        &self.urn[PREFIX.len()..self.domain_end]
    }

    /// The vendor label of a custom `x.` intent (`acme` for `x.acme`).
    pub fn vendor(&self) -> Option<&str> {
        self.domain().strip_prefix("x.")
    }

    /// True for a custom (`x.<vendor>`) intent, which needs no registry approval.
    pub fn is_custom(&self) -> bool {
        self.vendor().is_some()
    }

    /// Everything between the domain and the version (`chat`, `tools/call`, or
    /// `a:b` for deeper URNs); `None` for legacy two-segment URNs like
    /// `urn:iicp:intent:translate:v1`.
    pub fn action(&self) -> Option<&str> {
        if self.version_colon > self.domain_end {
            Some(&self.urn[self.domain_end + 1..self.version_colon])
        } else {
            None
        }
    }

    /// The version number (`1` for `:v1`).
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.urn)
    }
}

impl fmt::Debug for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Intent").field(&self.urn).finish()
    }
}

impl AsRef<str> for Intent {
    fn as_ref(&self) -> &str {
        &self.urn
    }
}

impl FromStr for Intent {
    type Err = IntentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Intent {
    type Error = IntentError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for Intent {
    type Error = IntentError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Intent> for String {
    fn from(value: Intent) -> Self {
        value.urn
    }
}

impl PartialEq<str> for Intent {
    fn eq(&self, other: &str) -> bool {
        self.urn == other
    }
}

impl PartialEq<&str> for Intent {
    fn eq(&self, other: &&str) -> bool {
        self.urn == *other
    }
}

impl Serialize for Intent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.urn)
    }
}

impl<'de> Deserialize<'de> for Intent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Intent::new(s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Prohibited-intent guardrail
// ---------------------------------------------------------------------------

/// The taxonomy shipped with this crate (spec commit `c658bfc`,
/// `spec/intent-risk-taxonomy.json`).
const BUILTIN_TAXONOMY: &str = include_str!("data/intent-risk-taxonomy.json");

/// Risk category of a taxonomy rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskCategory {
    /// Refused everywhere (`prohibited`).
    Prohibited,
    /// Refused on the public mesh without a private compliance profile (`high_risk`).
    HighRisk,
    /// Allowed with notice metadata (`transparency_risk`).
    TransparencyRisk,
    /// Allowed (`minimal_or_general`).
    MinimalOrGeneral,
    /// A category this crate does not know; never refused.
    #[serde(other)]
    Unknown,
}

impl RiskCategory {
    /// The wire spelling (`prohibited`, `high_risk`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            RiskCategory::Prohibited => "prohibited",
            RiskCategory::HighRisk => "high_risk",
            RiskCategory::TransparencyRisk => "transparency_risk",
            RiskCategory::MinimalOrGeneral => "minimal_or_general",
            RiskCategory::Unknown => "unknown",
        }
    }

    /// True for the categories official clients refuse before discovery.
    pub fn is_refused(&self) -> bool {
        matches!(self, RiskCategory::Prohibited | RiskCategory::HighRisk)
    }
}

/// One rule of the intent risk taxonomy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskRule {
    /// Category of the rule.
    pub category: RiskCategory,
    /// Stable rule identifier (e.g. `eu-ai-act-social-scoring`).
    pub rule_id: String,
    /// Human-readable label.
    #[serde(default)]
    pub label: String,
    /// Lowercase URN fragments; a URN containing one matches the rule.
    #[serde(default)]
    pub fragments: Vec<String>,
}

/// The intent risk taxonomy: a list of rules with URN fragments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskTaxonomy {
    /// Taxonomy version string.
    #[serde(default)]
    pub version: String,
    /// The rules, in file order.
    #[serde(default)]
    pub rules: Vec<RiskRule>,
}

/// A refusal by the prohibited-intent guardrail (`IICP-POLICY-001`, terminal, never
/// retried). It names the rule, never the URN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "intent refused by local IICP policy before discovery: {label} ({rule_id}, {})",
    category.as_str()
)]
pub struct PolicyRefusal {
    /// The matching rule id.
    pub rule_id: String,
    /// The matching rule's label.
    pub label: String,
    /// The matching rule's category.
    pub category: RiskCategory,
}

impl PolicyRefusal {
    /// Always [`ErrorCode::PolicyRefused`] (`IICP-POLICY-001`).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::PolicyRefused
    }
}

impl RiskTaxonomy {
    /// Parses a taxonomy document (the JSON shape of `intent-risk-taxonomy.json`).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The taxonomy vendored in this crate, parsed once.
    ///
    /// Returns `None` only if the embedded file were unparsable, which the crate's tests
    /// rule out; [`check_intent_policy`] then refuses everything (fails closed).
    pub fn builtin() -> Option<&'static RiskTaxonomy> {
        static CELL: OnceLock<Option<RiskTaxonomy>> = OnceLock::new();
        CELL.get_or_init(|| RiskTaxonomy::from_json(BUILTIN_TAXONOMY).ok())
            .as_ref()
    }

    /// Finds the first refused (`prohibited` or `high_risk`) rule whose fragment occurs in
    /// the lowercased, trimmed `urn`.
    pub fn check(&self, urn: &str) -> Result<(), PolicyRefusal> {
        let needle = urn.trim().to_lowercase();
        for rule in self.rules.iter().filter(|r| r.category.is_refused()) {
            if rule
                .fragments
                .iter()
                .any(|f| !f.is_empty() && needle.contains(&f.to_lowercase()))
            {
                return Err(PolicyRefusal {
                    rule_id: rule.rule_id.clone(),
                    label: rule.label.clone(),
                    category: rule.category.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The local prohibited-intent guardrail of §2.2 over the vendored taxonomy: clients call
/// it before any discovery. Takes the raw string so it also covers URNs that fail
/// [`Intent`] validation.
///
/// ```
/// use iicp_proto::intent::check_intent_policy;
/// assert!(check_intent_policy("urn:iicp:intent:llm:chat:v1").is_ok());
/// let refusal = check_intent_policy("urn:iicp:intent:credit:decision:v1").unwrap_err();
/// assert_eq!(refusal.code().as_str(), "IICP-POLICY-001");
/// ```
pub fn check_intent_policy(urn: &str) -> Result<(), PolicyRefusal> {
    match RiskTaxonomy::builtin() {
        Some(taxonomy) => taxonomy.check(urn),
        None => Err(PolicyRefusal {
            rule_id: "builtin-taxonomy-unavailable".to_owned(),
            label: "the built-in intent risk taxonomy could not be loaded".to_owned(),
            category: RiskCategory::Prohibited,
        }),
    }
}
