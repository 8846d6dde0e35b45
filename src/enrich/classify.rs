//! Classification: `human | proxy_open:<who> | prefetch:<who> | link_scanner:<who> |
//! bot`, with the reason that decided it.
//!
//! Input: the rules ([`super::rules`]: the operator's `classify.rules_file`, then the
//! built-in `config/classify-rules.toml`), the Apple MPP networks and the fast-click
//! window from config, and per request a [`Signals`] (kind, HEAD, client address,
//! ASN, seconds since send, and the rules that matched the user agent, computed once
//! per distinct agent by [`Classifier::match_user_agent`] and cached with it).
//! Output: a [`Verdict`]. Order, first match wins: rules (operator, built-in,
//! Apple MPP networks) -> woothee crawler -> no user agent -> HEAD -> fast click from a
//! data-centre ASN -> human. Rules run before woothee because woothee reads Gmail's
//! proxy as a desktop Firefox. Invariant: classification only labels; every event is
//! still recorded.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::cidr::CidrSet;
use super::rules::Rule;
pub use super::rules::{RuleSet, RulesError};
pub use super::verdict::{Class, ClassKind, Verdict};
use crate::token::Kind;

/// What the classifier needs to know about one request.
#[derive(Debug, Clone, Copy)]
pub struct Signals<'a> {
    pub kind: Kind,
    pub head: bool,
    pub ip: IpAddr,
    pub asn: Option<u32>,
    /// Seconds from the token's `sent_at` to now, when the token carries one.
    pub secs_since_sent: Option<u64>,
    pub ua: Option<&'a UaMatch>,
}

/// What the user agent alone says, computed once per distinct agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UaMatch {
    /// Indexes of the rules whose `ua_contains` matched, ascending.
    pub rules: Box<[u16]>,
    pub crawler: bool,
    pub empty: bool,
}

pub struct Classifier {
    rules: Vec<Rule>,
    datacenter_asns: HashSet<u32>,
    fast_click_secs: u64,
    reasons: Reasons,
}

struct Reasons {
    crawler: Arc<str>,
    no_user_agent: Arc<str>,
    head: Arc<str>,
    fast_click: Arc<str>,
    burst: Arc<str>,
    trap_link: Arc<str>,
    trap_network: Arc<str>,
    none: Arc<str>,
}

impl Classifier {
    /// `operator` rules run first, then the built-in set, then the Apple MPP networks
    /// (an agent that names itself, such as Gmail's proxy, beats the network).
    pub fn new(operator: Option<RuleSet>, apple_mpp: CidrSet, fast_click_secs: u64) -> Classifier {
        let built_in = RuleSet::built_in();
        let mut rules = Vec::new();
        let mut datacenter_asns: HashSet<u32> = built_in.datacenter_asns.iter().copied().collect();
        if let Some(operator) = operator {
            datacenter_asns.extend(operator.datacenter_asns);
            rules.extend(operator.rules);
        }
        rules.extend(built_in.rules);
        if !apple_mpp.is_empty() {
            rules.push(Rule {
                verdict: Verdict {
                    class: Class::new(ClassKind::Prefetch, "apple_mpp"),
                    reason: Arc::from("apple_mpp_range"),
                },
                ua_contains: Vec::new(),
                cidrs: apple_mpp,
                asns: Vec::new(),
                kinds: vec![Kind::Open],
            });
        }
        Classifier {
            rules,
            datacenter_asns,
            fast_click_secs,
            reasons: Reasons {
                crawler: Arc::from("ua_crawler"),
                no_user_agent: Arc::from("no_user_agent"),
                head: Arc::from("head_request"),
                fast_click: Arc::from("fast_click_from_datacenter"),
                burst: Arc::from("click_burst"),
                trap_link: Arc::from("trap_link"),
                trap_network: Arc::from("trap_network"),
                none: Arc::from("no_signal"),
            },
        }
    }

    /// The user-agent part of classification; the caller caches it per agent.
    pub fn match_user_agent(&self, ua: &str, crawler: bool) -> UaMatch {
        let lower = ua.to_lowercase();
        let rules = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.ua_contains.iter().any(|s| lower.contains(&**s)))
            .filter_map(|(index, _)| u16::try_from(index).ok())
            .collect();
        UaMatch {
            rules,
            crawler,
            empty: ua.trim().is_empty(),
        }
    }

    pub fn is_datacenter(&self, asn: u32) -> bool {
        self.datacenter_asns.contains(&asn)
    }

    pub fn classify(&self, s: &Signals) -> Verdict {
        let ua_rules: &[u16] = s.ua.map_or(&[], |m| &m.rules);
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.applies_to(s.kind) {
                continue;
            }
            let by_ua = ua_rules.binary_search(&(index as u16)).is_ok();
            let by_ip = !rule.cidrs.is_empty() && rule.cidrs.contains(s.ip);
            let by_asn = s.asn.is_some_and(|asn| rule.asns.contains(&asn));
            if by_ua || by_ip || by_asn {
                return rule.verdict.clone();
            }
        }
        let is_link = matches!(s.kind, Kind::Click | Kind::Download);
        let verdict = |class: Class, reason: &Arc<str>| Verdict {
            class,
            reason: reason.clone(),
        };
        if s.ua.is_some_and(|m| m.crawler) {
            return verdict(Class::BOT, &self.reasons.crawler);
        }
        if s.ua.is_none_or(|m| m.empty) {
            return verdict(Class::BOT, &self.reasons.no_user_agent);
        }
        if s.head {
            return match is_link {
                true => verdict(
                    Class::new(ClassKind::LinkScanner, "head"),
                    &self.reasons.head,
                ),
                false => verdict(Class::BOT, &self.reasons.head),
            };
        }
        if is_link
            && s.secs_since_sent
                .is_some_and(|secs| secs <= self.fast_click_secs)
            && s.asn.is_some_and(|asn| self.is_datacenter(asn))
        {
            return verdict(
                Class::new(ClassKind::LinkScanner, "datacenter"),
                &self.reasons.fast_click,
            );
        }
        verdict(Class::HUMAN, &self.reasons.none)
    }

    /// The verdict for a click that completed a burst of clicks on one message.
    pub fn burst(&self) -> Verdict {
        Verdict {
            class: Class::new(ClassKind::LinkScanner, "burst"),
            reason: self.reasons.burst.clone(),
        }
    }

    /// The verdict for a hit on a trap link: no person follows one.
    pub fn trap_link(&self) -> Verdict {
        Verdict {
            class: Class::new(ClassKind::LinkScanner, "trap"),
            reason: self.reasons.trap_link.clone(),
        }
    }

    /// The verdict for a click from the network that followed the message's trap.
    pub fn trap_network(&self) -> Verdict {
        Verdict {
            class: Class::new(ClassKind::LinkScanner, "trap"),
            reason: self.reasons.trap_network.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn classifier() -> Classifier {
        Classifier::new(None, CidrSet::parse(&["17.0.0.0/8"]).unwrap(), 60)
    }

    fn signals<'a>(kind: Kind, ua: Option<&'a UaMatch>) -> Signals<'a> {
        Signals {
            kind,
            head: false,
            ip: "198.51.100.7".parse().unwrap(),
            asn: None,
            secs_since_sent: None,
            ua,
        }
    }

    fn class_of(c: &Classifier, kind: Kind, ua: &str) -> String {
        let crawler = super::super::ua::parse(ua).is_crawler();
        let m = c.match_user_agent(ua, crawler);
        c.classify(&signals(kind, Some(&m))).class.to_string()
    }

    #[test]
    fn image_proxies_are_recognised_before_woothee() {
        let c = classifier();
        let gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
        assert_eq!(class_of(&c, Kind::Open, gmail), "proxy_open:gmail");
        assert_eq!(
            class_of(
                &c,
                Kind::Open,
                "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
            ),
            "proxy_open:yahoo"
        );
    }

    #[test]
    fn network_rules_depend_on_kind() {
        let c = classifier();
        let m = c.match_user_agent("Mozilla/5.0 (Windows NT 10.0)", false);
        let mut s = signals(Kind::Open, Some(&m));
        s.asn = Some(8075);
        assert_eq!(c.classify(&s).class.to_string(), "proxy_open:outlook");
        s.kind = Kind::Click;
        assert_eq!(c.classify(&s).class.to_string(), "link_scanner:microsoft");
        s.asn = None;
        s.ip = "17.58.1.2".parse().unwrap();
        assert_eq!(
            c.classify(&s).class.to_string(),
            "human",
            "Apple MPP is for opens"
        );
        s.kind = Kind::Open;
        let v = c.classify(&s);
        assert_eq!(
            (v.class.to_string().as_str(), &*v.reason),
            ("prefetch:apple_mpp", "apple_mpp_range")
        );
    }

    #[test]
    fn head_empty_crawler_and_fast_clicks() {
        let c = classifier();
        assert_eq!(
            class_of(
                &c,
                Kind::Open,
                "Googlebot/2.1 (+http://www.google.com/bot.html)"
            ),
            "bot"
        );
        assert_eq!(
            c.classify(&signals(Kind::Click, None)).reason.as_ref(),
            "no_user_agent"
        );
        let m = c.match_user_agent("Mozilla/5.0 (Macintosh)", false);
        let mut s = signals(Kind::Click, Some(&m));
        s.head = true;
        assert_eq!(c.classify(&s).class.to_string(), "link_scanner:head");
        s.kind = Kind::Open;
        assert_eq!(c.classify(&s).class.to_string(), "bot");
        let mut s = signals(Kind::Click, Some(&m));
        s.asn = Some(16509);
        s.secs_since_sent = Some(5);
        assert_eq!(c.classify(&s).class.to_string(), "link_scanner:datacenter");
        s.secs_since_sent = Some(3600);
        assert_eq!(
            c.classify(&s).class.to_string(),
            "human",
            "late clicks are people on VPNs"
        );
        s.secs_since_sent = Some(5);
        s.asn = Some(64_500);
        assert_eq!(c.classify(&s).class.to_string(), "human");
    }

    #[test]
    fn operator_rules_run_first_and_are_checked() {
        let text = r#"
            datacenter_asns = [64500]
            [[rule]]
            class = "human"
            reason = "our_office"
            cidrs = ["17.1.0.0/16"]
            [[rule]]
            class = "link_scanner:acme-gw"
            ua_contains = ["AcmeScan"]
            kinds = ["click"]
        "#;
        let ops = RuleSet::parse(Path::new("ops.toml"), text).unwrap();
        let c = Classifier::new(Some(ops), CidrSet::parse(&["17.0.0.0/8"]).unwrap(), 60);
        let m = c.match_user_agent("Mozilla/5.0 acmescan/2", false);
        let mut s = signals(Kind::Open, Some(&m));
        s.ip = "17.1.2.3".parse().unwrap();
        assert_eq!(&*c.classify(&s).reason, "our_office");
        s.ip = "198.51.100.1".parse().unwrap();
        assert_eq!(
            c.classify(&s).class.to_string(),
            "human",
            "kinds limit the rule"
        );
        s.kind = Kind::Click;
        let v = c.classify(&s);
        assert_eq!(
            (v.class.to_string().as_str(), &*v.reason),
            ("link_scanner:acme-gw", "rule:link_scanner:acme-gw")
        );
        assert!(c.is_datacenter(64_500) && c.is_datacenter(16_509));
    }

    #[test]
    fn classes_print_and_parse() {
        for text in [
            "human",
            "bot",
            "bot:spider",
            "proxy_open:gmail",
            "link_scanner:a.b-c_1",
        ] {
            assert_eq!(text.parse::<Class>().unwrap().to_string(), text);
        }
        assert!("human:x".parse::<Class>().is_err());
    }
}
