//! Classification rules: the built-in `config/classify-rules.toml` (compiled in) and
//! the operator's `classify.rules_file`, parsed into [`RuleSet`]s.
//!
//! Input: TOML text (format documented at the top of the built-in file). Output:
//! rules in file order and the data-centre ASNs, for [`super::classify`].
//! Invariants: every rule has a valid class, at least one signal and a bounded
//! reason; errors name the file and the rule; a file over 1 MiB is refused.
//! User-agent substrings are stored lower-case (matching is case-insensitive).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::cidr::CidrSet;
use super::verdict::{Class, Verdict};
use crate::token::Kind;

pub const BUILT_IN_RULES: &str = include_str!("../../config/classify-rules.toml");
const MAX_RULES_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rules file {path} is larger than 1 MiB")]
    TooLarge { path: PathBuf },
    #[error("rules file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    datacenter_asns: Vec<u32>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    class: String,
    reason: Option<String>,
    #[serde(default)]
    ua_contains: Vec<String>,
    #[serde(default)]
    cidrs: Vec<String>,
    #[serde(default)]
    asns: Vec<u32>,
    #[serde(default)]
    kinds: Vec<String>,
}

#[derive(Debug)]
pub(super) struct Rule {
    pub(super) verdict: Verdict,
    /// Lower-case; matched against the lower-cased agent once per distinct agent.
    pub(super) ua_contains: Vec<Box<str>>,
    pub(super) cidrs: CidrSet,
    pub(super) asns: Vec<u32>,
    /// Empty: every kind.
    pub(super) kinds: Vec<Kind>,
}

impl Rule {
    pub(super) fn applies_to(&self, kind: Kind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

/// Parsed rules text: the rules in order and the data-centre ASNs.
pub struct RuleSet {
    pub(super) rules: Vec<Rule>,
    pub(super) datacenter_asns: Vec<u32>,
}

impl RuleSet {
    pub fn parse(path: &Path, text: &str) -> Result<RuleSet, RulesError> {
        let invalid = |message: String| RulesError::Invalid {
            path: path.to_owned(),
            message,
        };
        let raw: RawRules = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut rules = Vec::with_capacity(raw.rule.len());
        for (index, rule) in raw.rule.into_iter().enumerate() {
            let at = |message: String| invalid(format!("rule {}: {message}", index + 1));
            let class: Class = rule.class.parse().map_err(at)?;
            if rule.ua_contains.is_empty() && rule.cidrs.is_empty() && rule.asns.is_empty() {
                return Err(at("needs ua_contains, cidrs or asns".into()));
            }
            if rule.ua_contains.iter().any(|s| s.is_empty()) {
                return Err(at("ua_contains entries must not be empty".into()));
            }
            let cidrs = CidrSet::parse(&rule.cidrs).map_err(|e| at(e.to_string()))?;
            let kinds = rule
                .kinds
                .iter()
                .map(|k| Kind::parse(k).ok_or_else(|| at(format!("unknown kind {k:?}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let reason = rule.reason.unwrap_or_else(|| format!("rule:{class}"));
            if reason.is_empty() || reason.len() > 64 {
                return Err(at("reason must be 1-64 characters".into()));
            }
            rules.push(Rule {
                verdict: Verdict {
                    class,
                    reason: Arc::from(reason),
                },
                ua_contains: rule
                    .ua_contains
                    .iter()
                    .map(|s| Box::from(s.to_lowercase()))
                    .collect(),
                cidrs,
                asns: rule.asns,
                kinds,
            });
        }
        Ok(RuleSet {
            rules,
            datacenter_asns: raw.datacenter_asns,
        })
    }

    pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
        let read_err = |source| RulesError::Read {
            path: path.to_owned(),
            source,
        };
        if std::fs::metadata(path).map_err(read_err)?.len() > MAX_RULES_FILE_BYTES {
            return Err(RulesError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::parse(path, &std::fs::read_to_string(path).map_err(read_err)?)
    }

    pub fn built_in() -> RuleSet {
        Self::parse(Path::new("<built-in>"), BUILT_IN_RULES)
            .expect("the built-in rules are checked by a unit test")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_rules_parse() {
        let set = RuleSet::built_in();
        assert!(set.rules.len() >= 8);
        assert!(set.datacenter_asns.contains(&16509));
    }

    #[test]
    fn rule_file_errors_name_the_file_and_the_rule() {
        for (bad, needle) in [
            (
                "[[rule]]\nclass = \"proxy_open\"\nasns = [1]\n",
                "needs a `:<who>`",
            ),
            ("[[rule]]\nclass = \"robot\"\nasns = [1]\n", "unknown class"),
            ("[[rule]]\nclass = \"bot\"\n", "needs ua_contains"),
            (
                "[[rule]]\nclass = \"bot\"\ncidrs = [\"1.2.3.4/40\"]\n",
                "rule 1",
            ),
            (
                "[[rule]]\nclass = \"bot\"\nasns = [1]\nkinds = [\"view\"]\n",
                "unknown kind",
            ),
            ("[[rule]]\nclass = \"prefetch:Big Co\"\nasns = [1]\n", "a-z"),
            ("[[rule]]\nclass = \"bot\"\nasn = [1]\n", "unknown field"),
        ] {
            let err = RuleSet::parse(Path::new("ops.toml"), bad)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains(needle) && err.contains("ops.toml"),
                "{bad}: {err}"
            );
        }
    }
}
