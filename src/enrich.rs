//! The enrich stage: who, where and what device is behind a recorded hit, and
//! whether it is a person at all.
//!
//! Input: the request's [`Hit`] (peer, headers, HEAD) and its verified [`Claims`].
//! Output: an [`Enrichment`] that `route::record` puts into the event. The parts, in
//! order: [`client_ip`] (trusted proxy headers) -> [`ua`] (woothee, cached, with
//! everything classification reads from the agent alone: [`agents`] and the rules'
//! agent conditions) -> [`geo`] (City and ASN databases) -> [`dedup`]
//! (first/duplicate, bursts) -> [`classify`] (over [`rules`] compiled into a
//! [`rulebook`] with the [`networks`] catalogue). Invariants: everything is in memory,
//! nothing waits on disk or a lock held across I/O (databases and rules are swapped
//! in by [`crate::reload::watch`] from a blocking thread); the full client address
//! leaves this stage only inside the `Enrichment`, and `route` writes just its
//! truncated form.

pub mod agents;
pub mod cidr;
pub mod classify;
pub mod client_ip;
pub mod dedup;
pub mod geo;
mod mapped;
pub mod networks;
pub mod origin;
pub mod rulebook;
pub mod rules;
pub(crate) mod twogen;
pub mod ua;
pub mod verdict;

/// One key per client network (IPv4 /24, IPv6 /48): the hits a trap exposes share it.
/// A /24 fills the low 24 bits and a /48 the low 48, with a family tag above them,
/// so no two networks share a key.
fn network_key(ip: IpAddr) -> u64 {
    match cidr::truncate_ip(ip, 24, 48) {
        IpAddr::V4(v4) => u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => 1 << 56 | (u128::from(v6) >> 80) as u64,
    }
}

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::header::USER_AGENT;
use metrics::Counter;

use crate::config::Config;
use crate::event::EventId;
use crate::hit::Hit;
use crate::metrics as m;
use crate::token::{Claims, Kind};
use agents::AgentFacts;
use classify::{Book, ClassKind, Classifier, RulesError, Signals, Verdict};
use client_ip::{ClientIp, Origin};
use dedup::{Dedup, RelabelCause};
use geo::{Asn, Db, DbKind, Geo, GeoError};
use rulebook::UaRules;
use rules::Method;
use ua::{Client, UaCache};

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error(transparent)]
    Geo(#[from] GeoError),
    #[error(transparent)]
    Rules(#[from] RulesError),
}

impl EnrichError {
    pub fn as_str(&self) -> &'static str {
        match self {
            EnrichError::Geo(err) => err.as_str(),
            EnrichError::Rules(_) => "rules",
        }
    }
}

/// What one distinct user agent tells, cached with it: woothee's reading, what the
/// agent says by itself, and which rules' agent conditions it meets under the rules
/// of `generation`.
#[derive(Debug)]
pub struct UaFacts {
    /// `None` when woothee recognised nothing.
    pub client: Option<Arc<Client>>,
    pub agent: AgentFacts,
    pub rules: UaRules,
    pub generation: u64,
}

impl UaFacts {
    /// What the cache stores for one (already cut) agent string.
    pub fn derive(classifier: &Classifier, book: &Book, ua: &str) -> UaFacts {
        let client = ua::parse(ua);
        UaFacts {
            agent: classifier.agent_facts(ua, &client),
            rules: book.rules.ua_rules(Some(ua)),
            generation: book.generation,
            client: (client != Client::default()).then(|| Arc::new(client)),
        }
    }
}

/// Who is behind a hit: what the recording limit needs before the rest of the stage.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// The full client address: in memory only, like [`Enrichment::ip`].
    pub ip: IpAddr,
    pub asn: Option<Arc<Asn>>,
}

/// The result of the stage for one hit.
#[derive(Debug, Clone)]
pub struct Enrichment {
    /// The full client address: in memory only, truncated before it is written.
    pub ip: IpAddr,
    /// The User-Agent cut to `user_agent.max_bytes`.
    pub ua: Option<Arc<str>>,
    pub client: Option<Arc<Client>>,
    pub geo: Option<Arc<Geo>>,
    pub asn: Option<Arc<Asn>>,
    pub verdict: Verdict,
    pub first: bool,
    /// Earlier events of the message this hit shows to be a machine's, and what
    /// they are (the first clicks of a burst, the clicks a trap hit exposes).
    pub relabel: Option<Relabel>,
}

/// Events to relabel, by id.
#[derive(Debug, Clone)]
pub struct Relabel {
    pub ids: Vec<EventId>,
    pub verdict: Verdict,
}

struct StageMetrics {
    origin: [Counter; 2],
    malformed: Counter,
}

impl StageMetrics {
    fn register() -> StageMetrics {
        let zero = |counter: Counter| {
            counter.absolute(0);
            counter
        };
        StageMetrics {
            origin: Origin::ALL.map(|origin| {
                zero(metrics::counter!(m::ENRICH_CLIENT_IP_TOTAL, "source" => origin.as_str()))
            }),
            malformed: zero(metrics::counter!(m::ENRICH_CLIENT_IP_MALFORMED_TOTAL)),
        }
    }
}

pub struct Enricher {
    client_ip: ClientIp,
    ua: UaCache<UaFacts>,
    city: Option<Db>,
    asn: Option<Db>,
    classifier: Arc<Classifier>,
    dedup: Dedup,
    metrics: StageMetrics,
}

impl Enricher {
    /// Builds the stage from config: opens the GeoIP databases and the rules file.
    /// A configured file that cannot be loaded is an error; no database is a warning.
    pub fn new(config: &Config, now_ms: u64) -> Result<Enricher, EnrichError> {
        geo::register_metrics();
        let open = |kind, path: &Option<PathBuf>| {
            path.clone()
                .map(|path| Db::open(kind, path, config.data_dir.clone()))
                .transpose()
        };
        let city = open(DbKind::City, &config.geoip.city_db)?;
        let asn = open(DbKind::Asn, &config.geoip.asn_db)?;
        if city.is_none() {
            tracing::warn!(
                "no GeoIP database configured (geoip.city_db): events carry no geo fields"
            );
        }
        let classifier = Classifier::new(&config.classify)?;
        warn_without_asn_db(config, &classifier);
        Ok(Enricher {
            client_ip: ClientIp::new(
                config.client_ip.trusted_proxies.clone(),
                config.client_ip.source.clone(),
            ),
            ua: UaCache::new(
                config.user_agent.cache_entries.get(),
                config.user_agent.max_bytes,
            ),
            city,
            asn,
            classifier: Arc::new(classifier),
            dedup: Dedup::new(config.dedup, now_ms),
            metrics: StageMetrics::register(),
        })
    }

    /// The first half of the stage: the client address (from trusted proxy headers
    /// only) and its network. The route's recording limit runs between the halves,
    /// so an event it drops leaves no trace in the first-seen set or the counters.
    pub fn client_addr(&self, hit: &Hit) -> ClientAddr {
        let resolved = self.client_ip.resolve(hit.peer, hit.headers);
        self.metrics.origin[resolved.origin as usize].increment(1);
        if resolved.malformed {
            self.metrics.malformed.increment(1);
        }
        let ip = resolved.ip;
        ClientAddr {
            ip,
            asn: self.asn.as_ref().and_then(|db| db.asn(ip)),
        }
    }

    /// The second half: device, place, first/duplicate and class. `id` is the id
    /// the hit's event will carry (a later burst or trap hit may relabel it).
    pub fn describe(
        &self,
        hit: &Hit,
        claims: &Claims,
        client: ClientAddr,
        id: EventId,
    ) -> Enrichment {
        let ClientAddr { ip, asn } = client;
        let book = self.classifier.book();
        let raw_ua = hit.headers.get(USER_AGENT);
        let parsed = raw_ua.map(|raw| {
            self.ua.get_current(
                raw.as_bytes(),
                |facts| facts.generation == book.generation,
                |ua| UaFacts::derive(&self.classifier, &book, ua),
            )
        });
        let geo = self.city.as_ref().and_then(|db| db.city(ip));
        let mut verdict = self.classifier.classify(
            &book,
            &Signals {
                kind: claims.kind,
                // Recorded unsubscribes are always the RFC 8058 POST; other kinds
                // record GET and HEAD.
                method: match (hit.head, claims.kind) {
                    (true, _) => Method::Head,
                    (false, Kind::Unsubscribe) => Method::Post,
                    (false, _) => Method::Get,
                },
                ip,
                asn: asn.as_ref().map(|a| a.number),
                secs_since_sent: claims
                    .sent_at
                    .map(|sent| (hit.at_ms / 1000).saturating_sub(sent)),
                headers: hit.headers,
                agent: parsed.as_ref().map(|p| &p.facts.agent),
                ua_rules: parsed.as_ref().map_or(&book.no_ua, |p| &p.facts.rules),
                ua_bytes: raw_ua.map_or(0, |raw| raw.len()),
            },
        );
        let human = verdict.class.kind == ClassKind::Human;
        let seen = self
            .dedup
            .observe(claims, hit.at_ms, id, network_key(ip), human);
        // A trap hit is a machine whatever it looks like; a burst or a trap only
        // relabels what looked like a person (a vendor's verdict says more).
        if claims.kind == Kind::Trap {
            verdict = self.classifier.trap_link();
        } else if human && seen.trapped {
            verdict = self.classifier.trap_network();
        } else if human && seen.burst {
            verdict = self.classifier.burst();
        }
        let relabel = (!seen.relabel.is_empty()).then(|| Relabel {
            verdict: match seen.cause {
                RelabelCause::Burst => self.classifier.burst(),
                RelabelCause::Trap => self.classifier.trap_network(),
            }
            .clone(),
            ids: seen.relabel,
        });
        self.classifier.count(verdict);
        Enrichment {
            ip,
            ua: parsed.as_ref().map(|p| p.ua.clone()),
            client: parsed.and_then(|p| p.facts.client.clone()),
            geo,
            asn,
            verdict: verdict.clone(),
            first: seen.first,
            relabel,
        }
    }

    fn databases(&self) -> impl Iterator<Item = &Db> {
        self.city.iter().chain(self.asn.iter())
    }

    /// The GeoIP databases to watch for changes, if any are configured.
    pub fn has_databases(&self) -> bool {
        self.databases().next().is_some()
    }

    /// The classifier, to watch its operator files for changes, if any are configured.
    pub fn operator_rules(&self) -> Option<Arc<Classifier>> {
        self.classifier
            .has_operator_sources()
            .then(|| self.classifier.clone())
    }

    /// The rules in force, for `check-config`.
    pub fn rules_summary(&self) -> String {
        let book = self.classifier.book();
        let rules = &book.rules;
        format!(
            "rules {} operator + {} shipped, network sets {} operator + {} shipped",
            rules.operator_rules(),
            rules.shipped_rules(),
            rules.operator_sets,
            rules.shipped_sets
        )
    }

    /// Whether an ASN database is loaded (for `check-config`).
    pub fn has_asn_db(&self) -> bool {
        self.asn.is_some()
    }
}

/// ASN conditions and exemptions do nothing without an ASN database: say so once.
fn warn_without_asn_db(config: &Config, classifier: &Classifier) {
    if config.geoip.asn_db.is_some() {
        return;
    }
    let users = classifier.asn_users();
    let exempt = &config.rate_limit.exempt_asns;
    if users.is_empty() && exempt.is_empty() {
        return;
    }
    tracing::warn!(
        classify_asn_users = users.len(),
        examples = %users.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        rate_limit_exempt_asns = exempt.len(),
        "geoip.asn_db is not set: ASN conditions of classification rules and network sets, and rate_limit.exempt_asns, match nothing (CIDRs still do); build one with `trackedge geoip build-asn`"
    );
}

impl crate::reload::Reloadable for Enricher {
    fn reload_changed(&self) {
        self.databases().for_each(Db::reload_if_changed);
    }

    fn reload_all(&self) {
        for db in self.databases() {
            // Logged and counted inside; the previous reader stays in force.
            let _ = db.reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use crate::mmdb_fixtures as fixtures;
    use crate::token::Kind;
    use http::{HeaderMap, HeaderValue};

    fn enricher(extra: &str) -> Enricher {
        let config = Config::from_toml_str(extra, &Overrides::default()).unwrap();
        Enricher::new(&config, 0).unwrap()
    }

    fn claims(kind: Kind, message: &str) -> Claims {
        Claims {
            kind,
            tenant: "acme".into(),
            campaign: "c".into(),
            message: message.into(),
            recipient: None,
            link: 1,
            target: kind.has_target().then(|| "https://x.example/".into()),
            expires_at: None,
            sent_at: None,
        }
    }

    fn run(e: &Enricher, kind: Kind, ua: Option<&[u8]>, peer: &str) -> Enrichment {
        let mut headers = HeaderMap::new();
        if let Some(ua) = ua {
            headers.insert(USER_AGENT, HeaderValue::from_bytes(ua).unwrap());
        }
        let hit = Hit {
            at_ms: 1_795_000_000_000,
            peer: peer.parse().unwrap(),
            headers: &headers,
            head: false,
        };
        e.describe(&hit, &claims(kind, "m"), e.client_addr(&hit), EventId(1))
    }

    /// Real-world agents: (agent, browser, os, category, class of an open from a home
    /// network, class of an open from iCloud Private Relay's egress, which Mail Privacy
    /// Protection loads images through: only its bare "Mozilla/5.0" is MPP, a browser
    /// there is a person on Private Relay).
    const AGENTS: &[(&str, &str, &str, &str, &str, &str)] = &[
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", "Chrome", "Windows 10", "pc", "human", "human"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)", "", "Mac OSX", "pc", "human", "human"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148", "Webview", "iPhone", "smartphone", "human", "human"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36", "Chrome", "Android", "smartphone", "human", "human"),
        ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17531; Pro)", "", "Windows 10", "pc", "human", "human"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.10.1", "", "Windows 10", "pc", "human", "human"),
        ("Mozilla/5.0", "", "", "", "bot", "prefetch:apple_mpp"),
        // Gmail's proxy: woothee sees Firefox 11 on Windows XP; the rules know better.
        ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", "Firefox", "Windows XP", "pc", "proxy_open:gmail", "proxy_open:gmail"),
        ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", "", "", "", "proxy_open:yahoo", "proxy_open:yahoo"),
        // A crawler to woothee, but the catalogue knows it as a link previewer.
        ("Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b", "BingPreview", "", "crawler", "prefetch:microsoft", "prefetch:microsoft"),
        ("Microsoft Office Existence Discovery", "", "", "", "prefetch:microsoft_office", "prefetch:microsoft_office"),
        ("Barracuda Sentinel (EE)", "", "", "", "link_scanner:barracuda", "link_scanner:barracuda"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot", "", "crawler", "bot", "bot"),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bingbot", "", "crawler", "bot", "bot"),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36", "Chrome", "Linux", "pc", "bot", "bot"),
        ("python-requests/2.31.0", "", "", "", "bot", "bot"),
        ("curl/8.5.0", "HTTP Library", "", "misc", "bot", "bot"),
        ("\u{2603} garbage %%% ;;", "", "", "", "bot", "bot"),
        ("", "", "", "", "bot", "bot"),
    ];

    #[test]
    fn real_world_agents_parse_and_classify() {
        let e = enricher("");
        for &(ua, browser, os, category, home, relay) in AGENTS {
            let got = run(&e, Kind::Open, Some(ua.as_bytes()), "198.51.100.7");
            let client = got.client.as_deref().cloned().unwrap_or_default();
            assert_eq!(
                (&*client.browser, &*client.os, &*client.category),
                (browser, os, category),
                "{ua}"
            );
            assert_eq!(got.verdict.class.to_string(), home, "{ua} from home");
            assert_eq!(got.ua.as_deref(), Some(ua));
            let got = run(&e, Kind::Open, Some(ua.as_bytes()), "104.28.28.1");
            assert_eq!(
                got.verdict.class.to_string(),
                relay,
                "{ua} from Private Relay"
            );
        }
    }

    #[test]
    fn missing_and_64k_agents() {
        let e = enricher("");
        let none = run(&e, Kind::Click, None, "198.51.100.7");
        assert_eq!((none.ua, none.client), (None, None));
        assert_eq!(&*none.verdict.reason, "no_user_agent");
        let mut huge = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0 ".to_vec();
        huge.resize(64 * 1024, b'x');
        let got = run(&e, Kind::Open, Some(&huge), "198.51.100.7");
        assert_eq!(got.ua.as_deref().map(str::len), Some(512));
        assert_eq!(got.client.unwrap().os.as_ref(), "Windows 10");
        assert!(e.ua.len() <= 2);
    }

    #[test]
    fn the_first_hit_is_first_and_no_database_means_no_geo() {
        let e = enricher("");
        let first = run(&e, Kind::Open, Some(b"Mozilla/5.0"), "81.2.69.160");
        assert!(first.first && first.geo.is_none() && first.asn.is_none());
        assert!(!run(&e, Kind::Open, Some(b"Mozilla/5.0"), "81.2.69.160").first);
    }

    #[test]
    fn geo_and_asn_come_from_the_full_address() {
        let dir = tempfile::tempdir().unwrap();
        let city = fixtures::write_city(dir.path(), "a");
        let asn = fixtures::write_asn(dir.path());
        let e = enricher(&format!(
            "[geoip]\ncity_db = {:?}\nasn_db = {:?}\n",
            city.display().to_string(),
            asn.display().to_string()
        ));
        let got = run(
            &e,
            Kind::Open,
            Some(b"Mozilla/5.0 (Windows NT 10.0)"),
            "203.0.113.9",
        );
        let geo = got.geo.unwrap();
        assert_eq!(
            (
                geo.country.as_deref(),
                geo.region.as_deref(),
                geo.city.as_deref()
            ),
            (Some("RU"), Some("MOW"), Some("Москва"))
        );
        assert_eq!(got.asn.unwrap().number, 16_509);
        assert_eq!(got.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }
}
