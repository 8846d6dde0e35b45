//! Classification: who is behind a hit (`human | proxy_open:<who> | prefetch:<who> |
//! link_scanner:<who> | bot`), why, and how sure.
//!
//! Input: the compiled rules ([`RuleBook`]: the operator's `classify.rules_file`, the
//! shipped `config/classify-rules.toml`, the network catalogue and the operator's
//! `classify.networks_dir`), the user agent's cached facts ([`AgentFacts`] and
//! [`UaRules`], computed once per distinct agent), and per hit a [`Signals`].
//! Output: a [`Verdict`]. The order is fixed, first answer wins:
//!
//! 1. the operator's rules;
//! 2. self-declared bots: woothee's crawler category or a vendored crawler-user-agents
//!    pattern -> `bot` (certain); a machine's mark in an agent that names no crawler
//!    (a URL, a contact address, `compatible; ...bot`) -> `bot` (probable); except
//!    agents that a shipped `proxy_open` or `prefetch` rule recognises (Gmail's and
//!    Yahoo's image proxies are in the list);
//! 3. the shipped vendor catalogue;
//! 4. heuristics: a hit within `classify.fast_<kind>_secs` of the signed `sent_at` from
//!    a data-centre network -> `link_scanner:datacenter` (probable); HEAD -> `bot`
//!    (certain: no browser fetches a pixel or follows a link with HEAD); no agent ->
//!    `bot` (certain); oversized, non-ASCII, markup, garbage agents and HTTP libraries
//!    -> `bot` (probable);
//! 5. the positive client check: a browser, a mail client or a phone or desktop app's
//!    own HTTP stack -> `human` (probable);
//!    anything else -> `bot`, reason `unrecognised` (probable).
//!
//! Rules are compiled once at start and again when the rules file or the network
//! directory changes or on SIGHUP ([`crate::reload`]); a broken file keeps the rules
//! in force and is logged and counted. Invariant: classification only labels; every
//! event is still recorded.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use http::HeaderMap;
use metrics::{Counter, Gauge};

use super::agents::{AgentFacts, Agents, Oddity, PersonClient, SelfDeclared};
use super::networks::{dir_files, Catalogue};
use super::rulebook::{Part, RequestFacts, RuleBook, UaRules};
pub use super::rules::RulesError;
use super::rules::{Method, RuleFile};
pub use super::verdict::{Certainty, Class, ClassKind, Verdict};
use crate::config::ClassifyConfig;
use crate::metrics as m;
use crate::reload::{FileStamp, LastSeen};
use crate::token::Kind;

/// One compiled rule set and its generation (agent facts cached under an older
/// generation are recomputed).
pub struct Book {
    pub rules: RuleBook,
    pub generation: u64,
    /// What the rules make of a missing User-Agent header.
    pub no_ua: UaRules,
}

/// What the classifier needs to know about one hit.
#[derive(Debug, Clone, Copy)]
pub struct Signals<'a> {
    pub kind: Kind,
    pub method: Method,
    pub ip: IpAddr,
    pub asn: Option<u32>,
    /// Seconds from the token's signed `sent_at` to the hit, when it carries one.
    pub secs_since_sent: Option<u64>,
    pub headers: &'a HeaderMap,
    /// `None`: no User-Agent header.
    pub agent: Option<&'a AgentFacts>,
    /// The rules' view of the agent (the book's `no_ua` without one).
    pub ua_rules: &'a UaRules,
    /// Length of the User-Agent header before it was cut.
    pub ua_bytes: usize,
}

/// The engine's own verdicts, built (and their counters registered) once.
struct Engine {
    woothee_crawler: Verdict,
    crawler_list: Verdict,
    bot_marker: Verdict,
    fast_after_send: Verdict,
    head: Verdict,
    no_user_agent: Verdict,
    oversized: Verdict,
    non_ascii: Verdict,
    markup: Verdict,
    garbage: Verdict,
    http_library: Verdict,
    browser: Verdict,
    mail_client: Verdict,
    app: Verdict,
    unrecognised: Verdict,
    burst: Verdict,
    trap_link: Verdict,
    trap_network: Verdict,
}

impl Engine {
    fn new() -> Engine {
        use Certainty::{Certain, Probable};
        let bot = |reason, certainty| Verdict::new(Class::BOT, reason, certainty);
        let scanner = |who, reason, certainty| {
            Verdict::new(Class::new(ClassKind::LinkScanner, who), reason, certainty)
        };
        Engine {
            woothee_crawler: bot("ua_crawler", Certain),
            crawler_list: bot("crawler_list", Certain),
            bot_marker: bot("ua_bot_marker", Probable),
            fast_after_send: scanner("datacenter", "fast_after_send", Probable),
            head: bot("head_request", Certain),
            no_user_agent: bot("no_user_agent", Certain),
            oversized: bot("ua_oversized", Probable),
            non_ascii: bot("ua_non_ascii", Probable),
            markup: bot("ua_markup", Probable),
            garbage: bot("ua_garbage", Probable),
            http_library: bot("http_library", Probable),
            browser: Verdict::new(Class::HUMAN, "browser", Probable),
            mail_client: Verdict::new(Class::HUMAN, "mail_client", Probable),
            app: Verdict::new(Class::HUMAN, "app", Probable),
            unrecognised: bot("unrecognised", Probable),
            burst: scanner("burst", "click_burst", Probable),
            // No person follows a link they cannot see.
            trap_link: scanner("trap", "trap_link", Certain),
            // The trap's network may also carry a person's clicks (a shared NAT).
            trap_network: scanner("trap", "trap_network", Probable),
        }
    }

    fn all(&self) -> [&Verdict; 18] {
        [
            &self.woothee_crawler,
            &self.crawler_list,
            &self.bot_marker,
            &self.app,
            &self.fast_after_send,
            &self.head,
            &self.no_user_agent,
            &self.oversized,
            &self.non_ascii,
            &self.markup,
            &self.garbage,
            &self.http_library,
            &self.browser,
            &self.mail_client,
            &self.unrecognised,
            &self.burst,
            &self.trap_link,
            &self.trap_network,
        ]
    }
}

/// The files behind the operator's part of the rules, and their stamps as last read.
struct Sources {
    rules_file: Option<PathBuf>,
    networks_dir: Option<PathBuf>,
    last_seen: LastSeen<Stamps>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamps {
    rules_file: Option<FileStamp>,
    dir: Option<FileStamp>,
    dir_files: Vec<(PathBuf, Option<FileStamp>)>,
}

impl Sources {
    fn stamps(&self) -> Stamps {
        let dir = self.networks_dir.as_deref();
        Stamps {
            rules_file: self.rules_file.as_deref().and_then(FileStamp::of),
            dir: dir.and_then(FileStamp::of),
            dir_files: dir
                .and_then(|dir| dir_files(dir).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|path| {
                    let stamp = FileStamp::of(&path);
                    (path, stamp)
                })
                .collect(),
        }
    }

    fn configured(&self) -> bool {
        self.rules_file.is_some() || self.networks_dir.is_some()
    }
}

struct ClassifyMetrics {
    /// `[family][certainty]`.
    classified: [[Counter; 2]; 5],
    reloads_ok: Counter,
    reloads_error: Counter,
    rules: [Gauge; 2],
    network_sets: [Gauge; 2],
}

impl ClassifyMetrics {
    fn register() -> ClassifyMetrics {
        let zero = |counter: Counter| {
            counter.increment(0);
            counter
        };
        let by_source = |name: &'static str| {
            ["operator", "shipped"].map(|source| metrics::gauge!(name, "source" => source))
        };
        ClassifyMetrics {
            classified: ClassKind::ALL.map(|class| {
                Certainty::ALL.map(|certainty| {
                    zero(metrics::counter!(m::ENRICH_CLASSIFIED_TOTAL, "class" => class.as_str(), "certainty" => certainty.as_str()))
                })
            }),
            reloads_ok: zero(metrics::counter!(m::CLASSIFY_RELOADS_TOTAL, "result" => "ok")),
            reloads_error: zero(metrics::counter!(m::CLASSIFY_RELOADS_TOTAL, "result" => "error")),
            rules: by_source(m::CLASSIFY_RULES),
            network_sets: by_source(m::CLASSIFY_NETWORK_SETS),
        }
    }
}

pub struct Classifier {
    book: ArcSwap<Book>,
    generation: AtomicU64,
    sources: Sources,
    agents: Agents,
    engine: Engine,
    fast_secs: [u64; Kind::ALL.len()],
    oversized_ua_bytes: usize,
    metrics: ClassifyMetrics,
}

fn compile(sources: &Sources, generation: u64) -> Result<Book, RulesError> {
    let operator = sources
        .rules_file
        .as_deref()
        .map(RuleFile::load)
        .transpose()?;
    let shipped = RuleFile::shipped()?;
    let catalogue = Catalogue::with_dir(sources.networks_dir.as_deref())?;
    let rules = RuleBook::compile(operator.as_ref(), &shipped, &catalogue)?;
    for verdict in rules.verdicts() {
        // Exported from the start, and never reset by a reload.
        verdict.hits.increment(0);
    }
    Ok(Book {
        no_ua: rules.ua_rules(None),
        rules,
        generation,
    })
}

impl Classifier {
    /// Compiles the rules: the shipped ones and the operator's files named in
    /// `config`. A file that cannot be loaded is an error.
    pub fn new(config: &ClassifyConfig) -> Result<Classifier, RulesError> {
        let sources = Sources {
            rules_file: config.rules_file.clone(),
            networks_dir: config.networks_dir.clone(),
            last_seen: LastSeen::new(Stamps {
                rules_file: None,
                dir: None,
                dir_files: Vec::new(),
            }),
        };
        // Stamps before the read, so a change made while reading is seen next time.
        sources.last_seen.changed(sources.stamps());
        let book = compile(&sources, 0)?;
        let engine = Engine::new();
        for verdict in engine.all() {
            verdict.hits.increment(0);
        }
        let classifier = Classifier {
            book: ArcSwap::from_pointee(book),
            generation: AtomicU64::new(0),
            sources,
            agents: Agents::new(),
            engine,
            fast_secs: config.fast_secs,
            oversized_ua_bytes: config.oversized_ua_bytes,
            metrics: ClassifyMetrics::register(),
        };
        classifier.publish();
        Ok(classifier)
    }

    fn publish(&self) {
        let book = self.book.load();
        let rules = &book.rules;
        self.metrics.rules[0].set(rules.operator_rules() as f64);
        self.metrics.rules[1].set(rules.shipped_rules() as f64);
        self.metrics.network_sets[0].set(rules.operator_sets as f64);
        self.metrics.network_sets[1].set(rules.shipped_sets as f64);
        tracing::info!(
            operator_rules = rules.operator_rules(),
            shipped_rules = rules.shipped_rules(),
            operator_network_sets = rules.operator_sets,
            shipped_network_sets = rules.shipped_sets,
            crawler_patterns = self.agents.crawler_patterns(),
            "classification rules compiled"
        );
    }

    /// The rules in force; hold the guard for one hit.
    pub fn book(&self) -> Guard<Arc<Book>> {
        self.book.load()
    }

    /// The rule book's description of things that need an ASN database.
    pub fn asn_users(&self) -> Vec<String> {
        self.book.load().rules.asn_users.clone()
    }

    /// Whether an operator file or directory is configured (and so worth watching).
    pub fn has_operator_sources(&self) -> bool {
        self.sources.configured()
    }

    /// What the agent alone says (cached per agent by the caller).
    pub fn agent_facts(&self, ua: &str, client: &super::ua::Client) -> AgentFacts {
        self.agents.inspect(ua, client)
    }

    /// Compiles the operator's files again; on error the rules in force stay.
    pub fn reload(&self) -> Result<(), RulesError> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        match compile(&self.sources, generation) {
            Ok(book) => {
                self.book.store(Arc::new(book));
                self.metrics.reloads_ok.increment(1);
                self.publish();
                Ok(())
            }
            Err(err) => {
                self.metrics.reloads_error.increment(1);
                tracing::warn!(error = %err, "classification rules reload failed; the rules in force stay");
                Err(err)
            }
        }
    }

    /// The verdict for one hit, in the documented order: a rule's or the engine's own,
    /// borrowed (the caller clones what it keeps).
    pub fn classify<'a>(&'a self, book: &'a Book, s: &Signals<'_>) -> &'a Verdict {
        let rules = &book.rules;
        let origin = rules.origin(s.ip, s.asn);
        let request = RequestFacts {
            kind: s.kind,
            method: s.method,
            secs_since_sent: s.secs_since_sent,
            headers: s.headers,
        };
        if let Some(verdict) = rules.first_match(Part::Operator, s.ua_rules, &origin, &request) {
            return verdict;
        }
        let engine = &self.engine;
        if let Some(declared) = s.agent.and_then(|a| a.self_declared) {
            if !s.ua_rules.known_proxy {
                return match declared {
                    SelfDeclared::Woothee => &engine.woothee_crawler,
                    SelfDeclared::CrawlerList => &engine.crawler_list,
                    SelfDeclared::Marker => &engine.bot_marker,
                };
            }
        }
        if let Some(verdict) = rules.first_match(Part::Shipped, s.ua_rules, &origin, &request) {
            return verdict;
        }
        let fast = Kind::ALL
            .iter()
            .position(|k| *k == s.kind)
            .map_or(0, |index| self.fast_secs[index]);
        if fast > 0 && s.secs_since_sent.is_some_and(|secs| secs <= fast) && origin.datacenter() {
            return &engine.fast_after_send;
        }
        if s.method == Method::Head {
            return &engine.head;
        }
        let Some(agent) = s.agent.filter(|a| !a.blank) else {
            return &engine.no_user_agent;
        };
        if s.ua_bytes > self.oversized_ua_bytes {
            return &engine.oversized;
        }
        if let Some(oddity) = agent.oddity {
            return match oddity {
                Oddity::NonAscii => &engine.non_ascii,
                Oddity::Markup => &engine.markup,
                Oddity::Garbage => &engine.garbage,
                Oddity::HttpLibrary => &engine.http_library,
            };
        }
        match agent.person {
            Some(PersonClient::Browser) => &engine.browser,
            Some(PersonClient::MailClient) => &engine.mail_client,
            Some(PersonClient::App) => &engine.app,
            None => &engine.unrecognised,
        }
    }

    /// The verdict for a click that completed a burst of clicks on one message.
    pub fn burst(&self) -> &Verdict {
        &self.engine.burst
    }

    /// The verdict for a hit on a trap link.
    pub fn trap_link(&self) -> &Verdict {
        &self.engine.trap_link
    }

    /// The verdict for a click from the network that followed the message's trap.
    pub fn trap_network(&self) -> &Verdict {
        &self.engine.trap_network
    }

    /// Counts the verdict an event carries (after any relabel).
    pub fn count(&self, verdict: &Verdict) {
        verdict.hits.increment(1);
        self.metrics.classified[verdict.class.kind.index()][verdict.certainty.index()].increment(1);
    }

    /// The path named in log lines about the operator's rules.
    pub fn rules_file(&self) -> Option<&Path> {
        self.sources.rules_file.as_deref()
    }
}

impl crate::reload::Reloadable for Classifier {
    fn reload_changed(&self) {
        if self.sources.last_seen.changed(self.sources.stamps()) {
            // Logged and counted inside; the rules in force stay on error.
            let _ = self.reload();
        }
    }

    fn reload_all(&self) {
        self.sources.last_seen.changed(self.sources.stamps());
        let _ = self.reload();
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
