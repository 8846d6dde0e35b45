//! Rules compiled for matching: the operator's and the shipped [`RuleFile`]s and the
//! network [`Catalogue`] turned into one Aho-Corasick automaton (every `ua_contains`),
//! one `RegexSet` (every `ua_regex`), one map of exact agents, one [`OriginIndex`]
//! (every network, CIDR and ASN) and per-kind and per-method masks.
//!
//! Input: checked rules and sets. Output: a [`RuleBook`] that answers, per distinct
//! user agent, the rules whose agent condition holds ([`RuleBook::ua_rules`], cached
//! with the agent), and per hit the first rule, in file order, of the operator or the
//! shipped file whose every condition holds ([`RuleBook::first_match`]). Rules are
//! bits in a set (operator rules first), so a hit is a few word-wide ANDs, a binary
//! search over address ranges and the header and timing checks of the candidates:
//! nothing is allocated per hit. Invariants: rule names are unique across both files;
//! every network a rule names exists; matching depends only on the compiled book and
//! the hit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use http::HeaderMap;
use regex::{RegexSet, RegexSetBuilder};

use super::networks::Catalogue;
use super::origin::{Label, Origin, OriginIndex};
use super::rules::{HeaderCondition, Method, Rule, RuleFile, RulesError, MAX_RULES};
use super::verdict::{ClassKind, Verdict};
use crate::token::Kind;

/// Compiled size limit of all `ua_regex` together.
const MAX_REGEX_SET_BYTES: usize = 64 << 20;

/// What a rule needs checked per hit beyond the masks.
#[derive(Debug)]
struct Compiled {
    verdict: Verdict,
    headers: Vec<HeaderCondition>,
    within_secs_of_send: Option<u64>,
}

/// The per-hit facts the rules read (besides the agent and the origin).
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub kind: Kind,
    pub method: Method,
    /// Seconds from the token's signed `sent_at` to the hit, when it carries one.
    pub secs_since_sent: Option<u64>,
    pub headers: &'a HeaderMap,
}

/// What the rules make of one user agent; cached with the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaRules {
    /// Bit `i`: rule `i` has no agent condition, or its agent condition holds.
    pub ok: Box<[u64]>,
    /// A shipped proxy_open or prefetch rule recognises this agent, so the
    /// self-declared-bot step lets it through to the catalogue.
    pub known_proxy: bool,
}

/// Which file a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Operator,
    Shipped,
}

pub struct RuleBook {
    rules: Vec<Compiled>,
    operator: usize,
    words: usize,
    contains: Option<AhoCorasick>,
    /// Pattern of `contains` -> the rules listing it.
    contains_rules: Vec<Vec<u32>>,
    regexes: Option<RegexSet>,
    /// Pattern of `regexes` -> its rule.
    regex_rules: Vec<u32>,
    exact: HashMap<Box<str>, Vec<u32>>,
    empty_rules: Box<[u64]>,
    no_ua_condition: Box<[u64]>,
    proxy_ua_rules: Box<[u64]>,
    origins: OriginIndex,
    no_origin_condition: Box<[u64]>,
    /// `[kind][method]`: rules whose kinds and methods admit the pair.
    admitted: Vec<Box<[u64]>>,
    /// Rules or data-centre sets that match on ASNs (they need `geoip.asn_db`).
    pub asn_users: Vec<String>,
    pub shipped_sets: usize,
    pub operator_sets: usize,
}

fn bits(words: usize) -> Box<[u64]> {
    vec![0; words].into()
}

fn set(bits: &mut [u64], index: usize) {
    bits[index / 64] |= 1 << (index % 64);
}

impl RuleBook {
    pub fn compile(
        operator: Option<&RuleFile>,
        shipped: &RuleFile,
        catalogue: &Catalogue,
    ) -> Result<RuleBook, RulesError> {
        let files: Vec<&RuleFile> = operator.into_iter().chain([shipped]).collect();
        let all: Vec<(&RuleFile, &Rule)> = files
            .iter()
            .flat_map(|file| file.rules.iter().map(move |rule| (*file, rule)))
            .collect();
        let invalid = |file: &RuleFile, rule: &Rule, message: String| RulesError::Invalid {
            path: file.path.clone(),
            message: format!("rule {:?}: {message}", rule.name()),
        };
        if all.len() > MAX_RULES {
            return Err(RulesError::Invalid {
                path: shipped.path.clone(),
                message: format!("more than {MAX_RULES} rules with the operator's"),
            });
        }
        // A clash is reported in the operator's file: that is where it can be fixed.
        let mut names: HashMap<&str, &RuleFile> = HashMap::new();
        for (file, rule) in &all {
            if let Some(first) = names.get(rule.name()) {
                return Err(invalid(
                    first,
                    rule,
                    format!("the name is also used in {}", file.path.display()),
                ));
            }
            names.insert(rule.name(), file);
        }
        let n = all.len();
        let words = n.div_ceil(64).max(1);

        let mut patterns: Vec<String> = Vec::new();
        let mut contains_rules: Vec<Vec<u32>> = Vec::new();
        let mut pattern_ids: HashMap<String, usize> = HashMap::new();
        let mut regex_patterns: Vec<&str> = Vec::new();
        let mut regex_rules = Vec::new();
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut empty_rules = bits(words);
        let mut no_ua_condition = bits(words);
        let mut proxy_ua_rules = bits(words);
        let mut no_origin_condition = bits(words);
        let mut set_users: Vec<Box<[u64]>> = vec![bits(words); catalogue.sets.len()];
        let mut inline = Vec::new();
        let mut asns: Vec<(u32, Label)> = Vec::new();
        let mut asn_users = Vec::new();
        let mut admitted = vec![bits(words); Kind::ALL.len() * Method::ALL.len()];
        let mut rules = Vec::with_capacity(n);
        for (index, (file, rule)) in all.iter().enumerate() {
            let id = u32::try_from(index).expect("at most MAX_RULES rules");
            for pattern in &rule.ua.contains {
                let lower = pattern.to_ascii_lowercase();
                let at = *pattern_ids.entry(lower.clone()).or_insert_with(|| {
                    patterns.push(lower);
                    contains_rules.push(Vec::new());
                    patterns.len() - 1
                });
                contains_rules[at].push(id);
            }
            for pattern in &rule.ua.regex {
                regex_patterns.push(pattern);
                regex_rules.push(id);
            }
            for agent in &rule.ua.exact {
                exact.entry(Box::from(agent.as_str())).or_default().push(id);
            }
            if rule.ua.empty {
                set(&mut empty_rules, index);
            }
            if rule.ua.is_empty() {
                set(&mut no_ua_condition, index);
            } else if std::ptr::eq(*file, shipped)
                && matches!(
                    rule.verdict.class.kind,
                    ClassKind::ProxyOpen | ClassKind::Prefetch
                )
            {
                set(&mut proxy_ua_rules, index);
            }
            if rule.origin.is_empty() {
                set(&mut no_origin_condition, index);
            }
            for name in &rule.origin.networks {
                let at = catalogue.index_of(name).ok_or_else(|| {
                    invalid(file, rule, format!("no network set is named {name:?}"))
                })?;
                set(&mut set_users[at], index);
                if !catalogue.sets[at].asns.is_empty() {
                    asn_users.push(format!("rule {} (set {name})", rule.name()));
                }
            }
            for cidr in &rule.origin.cidrs {
                let mut label = Label::empty(words);
                set(&mut label.rules, index);
                inline.push((*cidr, label));
            }
            for asn in &rule.origin.asns {
                let mut label = Label::empty(words);
                set(&mut label.rules, index);
                asns.push((*asn, label));
            }
            if !rule.origin.asns.is_empty() {
                asn_users.push(format!("rule {}", rule.name()));
            }
            for (k, kind) in Kind::ALL.iter().enumerate() {
                for (m, method) in Method::ALL.iter().enumerate() {
                    if rule.applies_to_kind(*kind) && rule.applies_to_method(*method) {
                        set(&mut admitted[k * Method::ALL.len() + m], index);
                    }
                }
            }
            rules.push(Compiled {
                verdict: rule.verdict.clone(),
                headers: rule.headers.clone(),
                within_secs_of_send: rule.within_secs_of_send,
            });
        }

        let mut networks = inline;
        for (at, network_set) in catalogue.sets.iter().enumerate() {
            let label = Label {
                rules: set_users[at].clone(),
                datacenter: network_set.datacenter,
            };
            if label == Label::empty(words) {
                continue;
            }
            networks.extend(network_set.cidrs.iter().map(|cidr| (*cidr, label.clone())));
            asns.extend(network_set.asns.iter().map(|asn| (*asn, label.clone())));
            if network_set.datacenter && !network_set.asns.is_empty() {
                asn_users.push(format!("data-centre set {}", network_set.name));
            }
        }
        asn_users.dedup();

        let contains = match patterns.is_empty() {
            true => None,
            false => Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .map_err(|e| RulesError::Invalid {
                        path: shipped.path.clone(),
                        message: format!("ua_contains patterns: {e}"),
                    })?,
            ),
        };
        let regexes = match regex_patterns.is_empty() {
            true => None,
            false => Some(
                RegexSetBuilder::new(&regex_patterns)
                    .size_limit(MAX_REGEX_SET_BYTES)
                    .build()
                    .map_err(|e| RulesError::Invalid {
                        path: shipped.path.clone(),
                        message: format!("ua_regex patterns together: {e}"),
                    })?,
            ),
        };
        Ok(RuleBook {
            rules,
            operator: operator.map_or(0, |file| file.rules.len()),
            words,
            contains,
            contains_rules,
            regexes,
            regex_rules,
            exact,
            empty_rules,
            no_ua_condition,
            proxy_ua_rules,
            origins: OriginIndex::build(networks, asns, words),
            no_origin_condition,
            admitted,
            asn_users,
            shipped_sets: catalogue.shipped,
            operator_sets: catalogue.sets.len() - catalogue.shipped,
        })
    }

    pub fn operator_rules(&self) -> usize {
        self.operator
    }

    pub fn shipped_rules(&self) -> usize {
        self.rules.len() - self.operator
    }

    /// Every rule's verdict, operator rules first (for registering their counters).
    pub fn verdicts(&self) -> impl Iterator<Item = &Verdict> {
        self.rules.iter().map(|rule| &rule.verdict)
    }

    /// The rules whose agent condition `ua` meets (`None`: no User-Agent header).
    /// Called once per distinct agent; the result is cached with it.
    pub fn ua_rules(&self, ua: Option<&str>) -> UaRules {
        let mut ok = self.no_ua_condition.clone();
        let mut matched = bits(self.words);
        let ua = ua.unwrap_or("");
        let trimmed = ua.trim();
        if trimmed.is_empty() {
            for (m, e) in matched.iter_mut().zip(self.empty_rules.iter()) {
                *m |= e;
            }
        }
        if let Some(contains) = &self.contains {
            for found in contains.find_overlapping_iter(ua) {
                for &rule in &self.contains_rules[found.pattern().as_usize()] {
                    set(&mut matched, rule as usize);
                }
            }
        }
        if let Some(regexes) = &self.regexes {
            for pattern in regexes.matches(ua).iter() {
                set(&mut matched, self.regex_rules[pattern] as usize);
            }
        }
        if let Some(rules) = self.exact.get(trimmed) {
            for &rule in rules {
                set(&mut matched, rule as usize);
            }
        }
        let mut known_proxy = false;
        for w in 0..self.words {
            ok[w] |= matched[w];
            known_proxy |= matched[w] & self.proxy_ua_rules[w] != 0;
        }
        UaRules { ok, known_proxy }
    }

    /// The labels of an address and its ASN.
    pub fn origin(&self, ip: IpAddr, asn: Option<u32>) -> Origin<'_> {
        self.origins.lookup(ip, asn)
    }

    /// The first rule of `part`, in file order, whose every condition holds.
    pub fn first_match(
        &self,
        part: Part,
        ua: &UaRules,
        origin: &Origin<'_>,
        request: &RequestFacts<'_>,
    ) -> Option<&Verdict> {
        let range = match part {
            Part::Operator => 0..self.operator,
            Part::Shipped => self.operator..self.rules.len(),
        };
        if range.is_empty() {
            return None;
        }
        let kind = Kind::ALL
            .iter()
            .position(|k| *k == request.kind)
            .expect("ALL lists every kind");
        let admitted = &self.admitted[kind * Method::ALL.len() + request.method.index()];
        for w in range.start / 64..range.end.div_ceil(64) {
            let mut candidates = ua.ok[w]
                & admitted[w]
                & (self.no_origin_condition[w] | origin.word(w))
                & word_mask(&range, w);
            while candidates != 0 {
                let bit = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                let rule = &self.rules[w * 64 + bit];
                if rule.holds_for(request) {
                    return Some(&rule.verdict);
                }
            }
        }
        None
    }
}

/// The bits of word `w` that lie inside `range`.
fn word_mask(range: &Range<usize>, w: usize) -> u64 {
    let low = range.start.saturating_sub(w * 64).min(64);
    let high = (range.end - w * 64).min(64);
    let upto = |n: usize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    upto(high) & !upto(low)
}

impl Compiled {
    fn holds_for(&self, request: &RequestFacts<'_>) -> bool {
        if let Some(limit) = self.within_secs_of_send {
            if request.secs_since_sent.is_none_or(|secs| secs > limit) {
                return false;
            }
        }
        self.headers.is_empty()
            || self.headers.iter().any(|condition| {
                request
                    .headers
                    .get_all(&condition.name)
                    .iter()
                    .any(|value| contains_ignore_case(value.as_bytes(), &condition.contains))
            })
    }
}

/// `needle` is lower-case ASCII; empty matches any value.
fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_masks_cut_ranges_at_word_edges() {
        assert_eq!(word_mask(&(0..3), 0), 0b111);
        assert_eq!(word_mask(&(2..3), 0), 0b100);
        assert_eq!(word_mask(&(0..64), 0), u64::MAX);
        assert_eq!(word_mask(&(60..70), 0), 0xf << 60);
        assert_eq!(word_mask(&(60..70), 1), 0b11_1111);
        assert_eq!(word_mask(&(64..128), 1), u64::MAX);
    }

    #[test]
    fn header_values_match_case_insensitively() {
        assert!(contains_ignore_case(
            b"Prefetch;anonymous-client-ip",
            b"prefetch"
        ));
        assert!(contains_ignore_case(b"anything", b""));
        assert!(!contains_ignore_case(b"pre", b"prefetch"));
    }
}
