//! The rule language (v2): TOML `[[rule]]` entries, each a verdict and the conditions
//! under which it applies.
//!
//! Input: the text of the shipped `config/classify-rules.toml` (compiled in) or of the
//! operator's `classify.rules_file`. Output: checked [`Rule`]s in file order, which
//! [`super::rulebook`] compiles into matchers. Six condition types, all of which a
//! rule lists must hold (AND), any entry within one sufficing (ANY): the user agent
//! (`ua_contains`, `ua_regex`, `ua_exact`, `ua_empty`), the origin (`networks`,
//! `cidrs`, `asns`), `kinds`, `methods`, `headers`, `within_secs_of_send`.
//! Invariants: every rule has a unique name that is a bounded label, a valid class,
//! `who` and certainty, and at least one condition besides `kinds`; every regex
//! compiles; errors name the file and the rule; a file over 1 MiB is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use http::HeaderName;
use serde::Deserialize;

use super::cidr::Cidr;
use super::verdict::{valid_name, Certainty, Class, ClassKind, Verdict};
use crate::token::Kind;

pub const SHIPPED_RULES: &str = include_str!("../../config/classify-rules.toml");
const MAX_RULES_FILE_BYTES: u64 = 1 << 20;
/// Bounds the `reason` label set and the per-request scan.
pub const MAX_RULES: usize = 4096;
/// Compiled size limit of one `ua_regex` (the regex crate's default is 10 MiB).
const MAX_REGEX_BYTES: usize = 1 << 20;

/// Reasons the engine gives itself; rules may not take them.
pub const ENGINE_REASONS: &[&str] = &[
    "ua_crawler",
    "crawler_list",
    "ua_bot_marker",
    "fast_after_send",
    "head_request",
    "no_user_agent",
    "ua_garbage",
    "ua_markup",
    "ua_oversized",
    "ua_non_ascii",
    "http_library",
    "browser",
    "mail_client",
    "app",
    "unrecognised",
    "click_burst",
    "trap_link",
    "trap_network",
];

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
    #[error(transparent)]
    Networks(#[from] super::networks::NetworksError),
}

/// The request method, as far as a recorded hit can have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Get, Method::Head, Method::Post];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    class: String,
    who: Option<String>,
    certainty: String,
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    ua_contains: Vec<String>,
    #[serde(default)]
    ua_regex: Vec<String>,
    #[serde(default)]
    ua_exact: Vec<String>,
    ua_empty: Option<bool>,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    cidrs: Vec<String>,
    #[serde(default)]
    asns: Vec<u32>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<RawHeader>,
    within_secs_of_send: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    #[serde(default)]
    contains: String,
}

/// The user-agent condition: any entry of any list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UaCondition {
    /// Matched ASCII case-insensitively.
    pub contains: Vec<String>,
    /// Rust `regex` syntax, case-sensitive unless `(?i)`.
    pub regex: Vec<String>,
    /// The whole agent, trimmed, case-sensitive.
    pub exact: Vec<String>,
    /// The agent is missing or blank.
    pub empty: bool,
}

impl UaCondition {
    pub fn is_empty(&self) -> bool {
        self.contains.is_empty() && self.regex.is_empty() && self.exact.is_empty() && !self.empty
    }
}

/// The origin condition: the address is in a set or CIDR, or its ASN is listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginCondition {
    pub networks: Vec<String>,
    pub cidrs: Vec<Cidr>,
    pub asns: Vec<u32>,
}

impl OriginCondition {
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.cidrs.is_empty() && self.asns.is_empty()
    }
}

/// A header that must be present and contain `contains` (ASCII case-insensitive;
/// empty: presence suffices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCondition {
    pub name: HeaderName,
    /// Lower-case.
    pub contains: Box<[u8]>,
}

/// One checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub verdict: Verdict,
    pub ua: UaCondition,
    pub origin: OriginCondition,
    /// Bit `i` set: `Kind::ALL[i]` applies. 0: every kind.
    pub kinds: u8,
    /// Bit `i` set: `Method::ALL[i]` applies. 0: every method.
    pub methods: u8,
    pub headers: Vec<HeaderCondition>,
    pub within_secs_of_send: Option<u64>,
}

impl Rule {
    pub fn name(&self) -> &str {
        &self.verdict.reason
    }

    pub fn applies_to_kind(&self, kind: Kind) -> bool {
        self.kinds == 0 || self.kinds & kind_bit(kind) != 0
    }

    pub fn applies_to_method(&self, method: Method) -> bool {
        self.methods == 0 || self.methods & (1 << method.index()) != 0
    }
}

pub fn kind_bit(kind: Kind) -> u8 {
    let index = Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("ALL lists every kind");
    1 << index
}

/// The rules of one file, in order.
#[derive(Debug, Clone)]
pub struct RuleFile {
    pub path: PathBuf,
    pub rules: Vec<Rule>,
}

impl RuleFile {
    pub fn parse(path: &Path, text: &str) -> Result<RuleFile, RulesError> {
        let invalid = |message: String| RulesError::Invalid {
            path: path.to_owned(),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if raw.rule.len() > MAX_RULES {
            return Err(invalid(format!("more than {MAX_RULES} rules")));
        }
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for (index, raw) in raw.rule.into_iter().enumerate() {
            let label = format!("rule {} ({:?})", index + 1, raw.name);
            let rule = check(raw).map_err(|message| invalid(format!("{label}: {message}")))?;
            if !names.insert(rule.name().to_owned()) {
                return Err(invalid(format!("{label}: the name is used twice")));
            }
            rules.push(rule);
        }
        Ok(RuleFile {
            path: path.to_owned(),
            rules,
        })
    }

    pub fn load(path: &Path) -> Result<RuleFile, RulesError> {
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

    pub fn shipped() -> Result<RuleFile, RulesError> {
        Self::parse(Path::new("<built-in>/classify-rules.toml"), SHIPPED_RULES)
    }
}

fn check(raw: RawRule) -> Result<Rule, String> {
    if !valid_name(&raw.name, 64) {
        return Err("name must be 1-64 characters of a-z, 0-9, _ - .".into());
    }
    if ENGINE_REASONS.contains(&raw.name.as_str()) {
        return Err("the name is one of the engine's own reasons".into());
    }
    let kind = ClassKind::parse(&raw.class).ok_or_else(|| {
        format!(
            "unknown class {:?} (human, proxy_open, prefetch, link_scanner, bot; the `who` goes in its own key)",
            raw.class
        )
    })?;
    let class = Class::checked(kind, raw.who.as_deref())?;
    let certainty = Certainty::parse(&raw.certainty)
        .ok_or_else(|| format!("certainty {:?} must be certain or probable", raw.certainty))?;
    let mut kinds = 0;
    for name in &raw.kinds {
        let kind = Kind::parse(name).ok_or_else(|| format!("unknown kind {name:?}"))?;
        kinds |= kind_bit(kind);
    }
    let mut methods = 0;
    for name in &raw.methods {
        let method = Method::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("method {name:?} must be GET, HEAD or POST"))?;
        methods |= 1 << method.index();
    }
    if raw
        .ua_contains
        .iter()
        .chain(&raw.ua_exact)
        .any(|s| s.trim().is_empty())
    {
        return Err("ua_contains and ua_exact entries must not be blank".into());
    }
    for pattern in &raw.ua_regex {
        regex::RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|e| format!("ua_regex {pattern:?}: {e}"))?;
    }
    let empty = match raw.ua_empty {
        None => false,
        Some(true) => true,
        Some(false) => return Err("ua_empty takes only true (leave it out otherwise)".into()),
    };
    let cidrs = raw
        .cidrs
        .iter()
        .map(|c| c.parse::<Cidr>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut headers = Vec::with_capacity(raw.headers.len());
    for header in &raw.headers {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| format!("header name {:?} is not valid", header.name))?;
        headers.push(HeaderCondition {
            name,
            contains: header.contains.to_ascii_lowercase().into_bytes().into(),
        });
    }
    let rule = Rule {
        verdict: Verdict::new(class, &raw.name, certainty),
        ua: UaCondition {
            contains: raw.ua_contains,
            regex: raw.ua_regex,
            exact: raw.ua_exact.iter().map(|s| s.trim().to_owned()).collect(),
            empty,
        },
        origin: OriginCondition {
            networks: raw.networks,
            cidrs,
            asns: raw.asns,
        },
        kinds,
        methods,
        headers,
        within_secs_of_send: raw.within_secs_of_send,
    };
    if rule.ua.is_empty()
        && rule.origin.is_empty()
        && rule.methods == 0
        && rule.headers.is_empty()
        && rule.within_secs_of_send.is_none()
    {
        return Err("needs a condition besides kinds (ua_*, networks, cidrs, asns, methods, headers or within_secs_of_send)".into());
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuleFile, String> {
        RuleFile::parse(Path::new("ops.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_rules_parse() {
        let file = RuleFile::shipped().unwrap();
        assert!(!file.rules.is_empty());
    }

    #[test]
    fn a_rule_with_every_condition() {
        let file = parse(
            r#"
            [[rule]]
            name = "acme-gw"
            class = "link_scanner"
            who = "acme"
            certainty = "probable"
            kinds = ["click", "download"]
            ua_contains = ["AcmeScan"]
            ua_regex = ["^Acme/[0-9]+"]
            ua_exact = [" Mozilla/5.0 "]
            ua_empty = true
            networks = ["acme-scan"]
            cidrs = ["198.51.100.0/24"]
            asns = [64511]
            methods = ["head", "GET"]
            headers = [{ name = "Sec-Purpose", contains = "Prefetch" }, { name = "x-acme" }]
            within_secs_of_send = 30
            "#,
        )
        .unwrap();
        let rule = &file.rules[0];
        assert_eq!(rule.name(), "acme-gw");
        assert_eq!(rule.verdict.class.to_string(), "link_scanner:acme");
        assert_eq!(rule.verdict.certainty, Certainty::Probable);
        assert!(rule.applies_to_kind(Kind::Click) && !rule.applies_to_kind(Kind::Open));
        assert!(rule.applies_to_method(Method::Head) && !rule.applies_to_method(Method::Post));
        assert_eq!(rule.ua.exact, ["Mozilla/5.0"]);
        assert!(rule.ua.empty);
        assert_eq!(rule.headers[0].name, "sec-purpose");
        assert_eq!(&*rule.headers[0].contains, b"prefetch");
        assert!(rule.headers[1].contains.is_empty());
        assert_eq!(rule.within_secs_of_send, Some(30));
    }

    #[test]
    fn errors_name_the_file_the_rule_and_the_problem() {
        let base = "[[rule]]\nname = \"r\"\nclass = \"bot\"\ncertainty = \"certain\"\n";
        for (extra, needle) in [
            ("asns = [1]\nwho = \"Big Co\"\n", "a-z"),
            ("asns = [1]\n", ""),
            ("", "needs a condition"),
            ("kinds = [\"open\"]\n", "needs a condition"),
            ("asns = [1]\nkinds = [\"view\"]\n", "unknown kind"),
            ("cidrs = [\"1.2.3.4/40\"]\n", "1.2.3.4/40"),
            ("ua_regex = [\"(unclosed\"]\n", "ua_regex"),
            ("ua_empty = false\n", "only true"),
            ("ua_contains = [\" \"]\n", "blank"),
            ("methods = [\"PUT\"]\n", "GET, HEAD or POST"),
            ("headers = [{ name = \"bad name\" }]\n", "header name"),
            ("asn = [1]\n", "unknown field"),
        ] {
            let result = parse(&format!("{base}{extra}"));
            if needle.is_empty() {
                assert!(result.is_ok(), "{extra}: {result:?}");
                continue;
            }
            let err = result.unwrap_err();
            assert!(
                err.contains(needle) && err.contains("ops.toml"),
                "{extra}: {err}"
            );
        }
        for (text, needle) in [
            (
                base.replace("bot", "proxy_open") + "asns = [1]\n",
                "needs a `who`",
            ),
            (
                base.replace("\"bot\"", "\"proxy_open:gmail\"") + "asns = [1]\n",
                "unknown class",
            ),
            (
                base.replace("\"bot\"", "\"human\"\nwho = \"x\"") + "asns = [1]\n",
                "takes no `who`",
            ),
            (
                base.replace("\"certain\"", "\"sure\"") + "asns = [1]\n",
                "certain or probable",
            ),
            (
                base.replace("\"r\"", "\"browser\"") + "asns = [1]\n",
                "engine's own",
            ),
            (
                base.replace("\"r\"", "\"Big\"") + "asns = [1]\n",
                "name must be",
            ),
            (
                format!("{base}asns = [1]\n{base}asns = [2]\n"),
                "rule 2 (\"r\"): the name is used twice",
            ),
            (
                "[[rule]]\nname = \"r\"\nclass = \"bot\"\nasns = [1]\n".into(),
                "certainty",
            ),
            ("datacenter_asns = [1]\n".into(), "unknown field"),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
