//! Unit tables for the rule language and the evaluation order, on operator rules and
//! network sets written to a temp dir (the shipped catalogue is in force too, as in
//! production; these tests use documentation and private addresses it does not list).

use std::path::Path;

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::config::{Config, Overrides};
use crate::enrich::ua;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const OUTLOOK: &str = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17531; Pro)";
const HOME: &str = "198.51.100.7";

const SETS: &[(&str, &str)] = &[
    (
        "acme-scan",
        "name = \"acme-scan\"\nvendor = \"Acme\"\npurpose = \"scanning\"\ndatacenter = true\n\
         cidrs = [{ cidr = \"192.0.2.0/24\" }, { cidr = \"2001:db8:a::/48\" }]\nasns = [{ asn = 64511 }]\n",
    ),
    (
        "acme-proxy",
        "name = \"acme-proxy\"\nvendor = \"Acme\"\npurpose = \"image proxy\"\n\
         cidrs = [{ cidr = \"203.0.113.0/25\" }]\n",
    ),
];

struct Fixture {
    _dir: tempfile::TempDir,
    classifier: Classifier,
}

fn fixture_with(rules: &str, extra_config: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let nets = dir.path().join("nets");
    std::fs::create_dir(&nets).unwrap();
    for (name, text) in SETS {
        std::fs::write(nets.join(format!("{name}.toml")), text).unwrap();
    }
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let text = format!(
        "[classify]\nrules_file = {:?}\nnetworks_dir = {:?}\n{extra_config}",
        rules_path.display().to_string(),
        nets.display().to_string()
    );
    let config = Config::from_toml_str(&text, &Overrides::default()).unwrap();
    Fixture {
        classifier: Classifier::new(&config.classify).unwrap(),
        _dir: dir,
    }
}

fn fixture(rules: &str) -> Fixture {
    fixture_with(rules, "")
}

/// One hit, described as a test table row needs it.
#[derive(Clone)]
struct Hit {
    kind: Kind,
    method: Method,
    ip: &'static str,
    asn: Option<u32>,
    ua: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
    secs: Option<u64>,
}

fn hit(kind: Kind, ua: &str) -> Hit {
    Hit {
        kind,
        method: Method::Get,
        ip: HOME,
        asn: None,
        ua: Some(ua.to_owned()),
        headers: Vec::new(),
        secs: None,
    }
}

impl Hit {
    fn from(mut self, ip: &'static str) -> Hit {
        self.ip = ip;
        self
    }
    fn asn(mut self, asn: u32) -> Hit {
        self.asn = Some(asn);
        self
    }
    fn method(mut self, method: Method) -> Hit {
        self.method = method;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Hit {
        self.headers.push((name, value));
        self
    }
    fn after(mut self, secs: u64) -> Hit {
        self.secs = Some(secs);
        self
    }
    fn no_ua(mut self) -> Hit {
        self.ua = None;
        self
    }
}

impl Fixture {
    fn verdict(&self, hit: &Hit) -> Verdict {
        let book = self.classifier.book();
        let mut headers = HeaderMap::new();
        for (name, value) in &hit.headers {
            headers.append(*name, HeaderValue::from_static(value));
        }
        let facts = hit.ua.as_deref().map(|text| {
            let client = ua::parse(text);
            (
                self.classifier.agent_facts(text, &client),
                book.rules.ua_rules(Some(text)),
            )
        });
        self.classifier
            .classify(
                &book,
                &Signals {
                    kind: hit.kind,
                    method: hit.method,
                    ip: hit.ip.parse().unwrap(),
                    asn: hit.asn,
                    secs_since_sent: hit.secs,
                    headers: &headers,
                    agent: facts.as_ref().map(|(agent, _)| agent),
                    ua_rules: facts.as_ref().map_or(&book.no_ua, |(_, rules)| rules),
                    ua_bytes: hit.ua.as_ref().map_or(0, String::len),
                },
            )
            .clone()
    }

    /// `class reason certainty`, as one string for compact tables.
    fn says(&self, hit: &Hit) -> String {
        let v = self.verdict(hit);
        format!("{} {} {}", v.class, v.reason, v.certainty.as_str())
    }
}

fn check(f: &Fixture, table: &[(&str, Hit, &str)]) {
    for (what, hit, want) in table {
        assert_eq!(f.says(hit), *want, "{what}");
    }
}

const AND_ANY: &str = r#"
[[rule]]
name = "acme-browser-from-scanner"
class = "link_scanner"
who = "acme"
certainty = "certain"
kinds = ["click", "download"]
ua_contains = ["Chrome/"]
ua_exact = ["AcmeScan"]
networks = ["acme-scan"]
cidrs = ["10.9.0.0/16"]
"#;

#[test]
fn conditions_are_anded_across_types_and_ored_within_one() {
    let f = fixture(AND_ANY);
    let scanner = "link_scanner:acme acme-browser-from-scanner certain";
    check(
        &f,
        &[
            (
                "UA and set",
                hit(Kind::Click, CHROME).from("192.0.2.9"),
                scanner,
            ),
            (
                "the other UA entry (exact)",
                hit(Kind::Click, "AcmeScan").from("192.0.2.9"),
                scanner,
            ),
            (
                "exact means exact",
                hit(Kind::Click, "AcmeScan/2").from("192.0.2.9"),
                "bot unrecognised probable",
            ),
            (
                "the other origin entry (inline CIDR)",
                hit(Kind::Download, CHROME).from("10.9.1.1"),
                scanner,
            ),
            (
                "the set's ASN",
                hit(Kind::Click, CHROME).from(HOME).asn(64511),
                scanner,
            ),
            (
                "the set's IPv6 range",
                hit(Kind::Click, CHROME).from("2001:db8:a::1"),
                scanner,
            ),
            (
                "IPv4-mapped",
                hit(Kind::Click, CHROME).from("::ffff:192.0.2.9"),
                scanner,
            ),
            (
                "UA alone is not enough",
                hit(Kind::Click, CHROME),
                "human browser probable",
            ),
            (
                "network alone is not enough",
                hit(Kind::Click, OUTLOOK).from("192.0.2.9"),
                "human mail_client probable",
            ),
            (
                "scope: not on opens",
                hit(Kind::Open, CHROME).from("192.0.2.9"),
                "human browser probable",
            ),
        ],
    );
}

#[test]
fn methods_headers_and_timing_are_conditions_too() {
    let f = fixture(
        r#"
[[rule]]
name = "prefetch-header"
class = "prefetch"
who = "browser"
certainty = "certain"
headers = [{ name = "sec-purpose", contains = "prefetch" }, { name = "x-moz", contains = "prefetch" }, { name = "purpose", contains = "prefetch" }]

[[rule]]
name = "safe-links-referer"
class = "link_scanner"
who = "microsoft"
certainty = "probable"
kinds = ["click"]
headers = [{ name = "referer", contains = "safelinks.protection.outlook.com" }]

[[rule]]
name = "head-from-proxy"
class = "bot"
certainty = "certain"
methods = ["HEAD"]
networks = ["acme-proxy"]

[[rule]]
name = "quick-from-proxy"
class = "link_scanner"
who = "acme"
certainty = "probable"
networks = ["acme-proxy"]
within_secs_of_send = 10
"#,
    );
    check(
        &f,
        &[
            (
                "Sec-Purpose",
                hit(Kind::Open, CHROME).header("Sec-Purpose", "prefetch;anonymous-client-ip"),
                "prefetch:browser prefetch-header certain",
            ),
            (
                "X-Moz, any case",
                hit(Kind::Click, CHROME).header("X-Moz", "Prefetch"),
                "prefetch:browser prefetch-header certain",
            ),
            (
                "Purpose",
                hit(Kind::Click, CHROME).header("Purpose", "prefetch"),
                "prefetch:browser prefetch-header certain",
            ),
            (
                "a header without the value",
                hit(Kind::Click, CHROME).header("Sec-Purpose", "prerender"),
                "human browser probable",
            ),
            (
                "a Safe Links referer",
                hit(Kind::Click, CHROME).header(
                    "referer",
                    "https://nam02.safelinks.protection.outlook.com/?url=x",
                ),
                "link_scanner:microsoft safe-links-referer probable",
            ),
            (
                "HEAD from the set",
                hit(Kind::Open, CHROME)
                    .from("203.0.113.5")
                    .method(Method::Head),
                "bot head-from-proxy certain",
            ),
            (
                "soon after the send",
                hit(Kind::Open, CHROME).from("203.0.113.5").after(3),
                "link_scanner:acme quick-from-proxy probable",
            ),
            (
                "exactly at the limit",
                hit(Kind::Open, CHROME).from("203.0.113.5").after(10),
                "link_scanner:acme quick-from-proxy probable",
            ),
            (
                "too late",
                hit(Kind::Open, CHROME).from("203.0.113.5").after(11),
                "human browser probable",
            ),
            (
                "no signed send time",
                hit(Kind::Open, CHROME).from("203.0.113.5"),
                "human browser probable",
            ),
            (
                "outside the /25",
                hit(Kind::Open, CHROME).from("203.0.113.200").after(3),
                "human browser probable",
            ),
        ],
    );
}

#[test]
fn evaluation_order_operator_then_crawlers_then_catalogue_then_heuristics_then_clients() {
    let f = fixture(
        r#"
[[rule]]
name = "office"
class = "human"
certainty = "certain"
cidrs = ["10.1.0.0/16"]
"#,
    );
    let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let gmail =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    check(
        &f,
        &[
            (
                "operator rules beat everything",
                hit(Kind::Click, googlebot)
                    .from("10.1.2.3")
                    .method(Method::Head),
                "human office certain",
            ),
            (
                "a self-declared crawler (woothee)",
                hit(Kind::Open, googlebot),
                "bot ua_crawler certain",
            ),
            (
                "a self-declared crawler (vendored list)",
                hit(Kind::Open, "python-requests/2.31.0"),
                "bot crawler_list certain",
            ),
            (
                "a known image proxy passes the crawler step",
                hit(Kind::Open, gmail),
                "proxy_open:gmail gmail-image-proxy-ua probable",
            ),
            (
                "HEAD on a click",
                hit(Kind::Click, CHROME).method(Method::Head),
                "bot head_request certain",
            ),
            (
                "HEAD on an open",
                hit(Kind::Open, CHROME).method(Method::Head),
                "bot head_request certain",
            ),
            (
                "no agent",
                hit(Kind::Open, CHROME).no_ua(),
                "bot no_user_agent certain",
            ),
            (
                "a blank agent",
                hit(Kind::Open, "   "),
                "bot no_user_agent certain",
            ),
            (
                "markup",
                hit(Kind::Click, "<script>alert(1)</script>"),
                "bot ua_markup probable",
            ),
            (
                "non-ASCII",
                hit(Kind::Click, "Mozilla/5.0 (Windows NT 10.0) \u{2603}"),
                "bot ua_non_ascii probable",
            ),
            ("garbage", hit(Kind::Click, "-"), "bot ua_garbage probable"),
            (
                "an HTTP library",
                hit(Kind::Click, "lua-resty-http/0.16.1 (Lua) ngx_lua/10021"),
                "bot http_library probable",
            ),
            (
                "a browser",
                hit(Kind::Click, CHROME),
                "human browser probable",
            ),
            (
                "a mail client",
                hit(Kind::Open, OUTLOOK),
                "human mail_client probable",
            ),
            (
                "anything else",
                hit(Kind::Open, "Mozilla/5.0 (Windows NT 10.0)"),
                "bot unrecognised probable",
            ),
        ],
    );
    let long = format!("{CHROME} {}", "x".repeat(2000));
    assert_eq!(f.says(&hit(Kind::Open, &long)), "bot ua_oversized probable");
}

#[test]
fn timing_flags_data_centre_hits_per_kind() {
    let f = fixture_with("", "fast_open_secs = 5\nfast_download_secs = 0\n");
    let scanner = "link_scanner:datacenter fast_after_send probable";
    check(
        &f,
        &[
            (
                "a click soon after the send",
                hit(Kind::Click, CHROME).from("192.0.2.1").after(59),
                scanner,
            ),
            (
                "a click a minute later",
                hit(Kind::Click, CHROME).from("192.0.2.1").after(61),
                "human browser probable",
            ),
            (
                "by the set's ASN",
                hit(Kind::Click, CHROME).asn(64511).after(1),
                scanner,
            ),
            (
                "an open within its own window",
                hit(Kind::Open, CHROME).from("192.0.2.1").after(5),
                scanner,
            ),
            (
                "an open after it",
                hit(Kind::Open, CHROME).from("192.0.2.1").after(6),
                "human browser probable",
            ),
            (
                "off for downloads",
                hit(Kind::Download, CHROME).from("192.0.2.1").after(1),
                "human browser probable",
            ),
            (
                "not a data-centre set",
                hit(Kind::Click, CHROME).from("203.0.113.1").after(1),
                "human browser probable",
            ),
            (
                "a home network",
                hit(Kind::Click, CHROME).after(1),
                "human browser probable",
            ),
        ],
    );
}

#[test]
fn rules_and_sets_that_do_not_fit_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| {
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let config = |path: &Path| {
        Config::from_toml_str(
            &format!(
                "[classify]\nrules_file = {:?}\n",
                path.display().to_string()
            ),
            &Overrides::default(),
        )
        .unwrap()
    };
    for (text, needle) in [
        ("[[rule]]\nname = \"x\"\nclass = \"bot\"\ncertainty = \"certain\"\nnetworks = [\"nope\"]\n", "no network set is named \"nope\""),
        ("[[rule]]\nname = \"gmail-image-proxy\"\nclass = \"bot\"\ncertainty = \"certain\"\nasns = [1]\n", "also used in <built-in>"),
    ] {
        let path = write(text);
        let err = Classifier::new(&config(&path).classify).err().unwrap().to_string();
        assert!(err.contains(needle) && err.contains("rules.toml"), "{err}");
    }
}

#[test]
fn a_reload_swaps_the_rules_and_a_broken_file_keeps_them() {
    let f = fixture(AND_ANY);
    let scanned = hit(Kind::Click, CHROME).from("192.0.2.9");
    assert_eq!(
        f.verdict(&scanned).reason.as_ref(),
        "acme-browser-from-scanner"
    );
    let generation = f.classifier.book().generation;
    let rules = f.classifier.sources.rules_file.clone().unwrap();
    std::fs::write(
        &rules,
        AND_ANY.replace("acme-browser-from-scanner", "renamed"),
    )
    .unwrap();
    crate::reload::Reloadable::reload_changed(&f.classifier);
    assert_eq!(f.verdict(&scanned).reason.as_ref(), "renamed");
    assert!(f.classifier.book().generation > generation);
    // Unchanged: nothing is compiled.
    let generation = f.classifier.book().generation;
    crate::reload::Reloadable::reload_changed(&f.classifier);
    assert_eq!(f.classifier.book().generation, generation);
    for broken in ["[[rule]]\nname = \"x\"\n", "not toml at all ["] {
        std::fs::write(&rules, broken).unwrap();
        assert!(f.classifier.reload().is_err());
        assert_eq!(f.verdict(&scanned).reason.as_ref(), "renamed", "{broken}");
    }
    // A new set in the network directory is picked up by a change too.
    std::fs::write(&rules, AND_ANY.replace("acme-scan", "acme-new")).unwrap();
    let nets = f.classifier.sources.networks_dir.clone().unwrap();
    std::fs::write(
        nets.join("acme-new.toml"),
        "name = \"acme-new\"\nvendor = \"Acme\"\npurpose = \"new\"\ncidrs = [{ cidr = \"192.0.2.128/25\" }]\n",
    )
    .unwrap();
    crate::reload::Reloadable::reload_changed(&f.classifier);
    assert_eq!(
        f.verdict(&scanned).reason.as_ref(),
        "browser",
        "192.0.2.9 is not in the new set"
    );
    assert_eq!(
        f.verdict(&hit(Kind::Click, CHROME).from("192.0.2.200"))
            .reason
            .as_ref(),
        "acme-browser-from-scanner"
    );
}

#[test]
fn the_bursts_verdict_and_counting() {
    let f = fixture("");
    let burst = f.classifier.burst().clone();
    assert_eq!(
        (
            burst.class.to_string(),
            burst.reason.as_ref(),
            burst.certainty
        ),
        (
            "link_scanner:burst".to_owned(),
            "click_burst",
            Certainty::Probable
        )
    );
    f.classifier.count(&burst);
}

#[test]
fn first_match_in_file_order_and_the_operator_before_the_catalogue() {
    let f = fixture(
        r#"
[[rule]]
name = "acme-probable"
class = "link_scanner"
who = "acme"
certainty = "probable"
cidrs = ["10.7.0.0/16"]

[[rule]]
name = "acme-certain"
class = "link_scanner"
who = "acme"
certainty = "certain"
cidrs = ["10.7.1.0/24"]
ua_contains = ["Chrome/"]

[[rule]]
name = "our-proxy-is-a-person"
class = "human"
certainty = "certain"
ua_contains = ["GoogleImageProxy"]
cidrs = ["10.8.0.0/16"]
"#,
    );
    let gmail =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    check(
        &f,
        &[
            (
                "both hold: the earlier rule wins, with its certainty",
                hit(Kind::Click, CHROME).from("10.7.1.1"),
                "link_scanner:acme acme-probable probable",
            ),
            (
                "an operator rule overrides a shipped one",
                hit(Kind::Open, gmail).from("10.8.0.1"),
                "human our-proxy-is-a-person certain",
            ),
            (
                "the shipped rule where the operator's does not hold",
                hit(Kind::Open, gmail),
                "proxy_open:gmail gmail-image-proxy-ua probable",
            ),
            (
                "a catalogue network rule (Microsoft's mail filtering)",
                hit(Kind::Click, CHROME).from("40.92.1.1"),
                "link_scanner:microsoft microsoft-eop probable",
            ),
            (
                "a self-declared crawler from that network stays a crawler",
                hit(Kind::Click, googlebot).from("40.92.1.1"),
                "bot ua_crawler certain",
            ),
            (
                "a machine's mark in a browser agent",
                hit(
                    Kind::Click,
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 cl0q-crawler/1.0 (+https://cl0q.com/bot)",
                ),
                "bot ua_bot_marker probable",
            ),
            (
                "a phone's own HTTP stack",
                hit(
                    Kind::Open,
                    "Dalvik/2.1.0 (Linux; U; Android 11; SM-A325N Build/RP1A.200720.012)",
                ),
                "human app probable",
            ),
            (
                "Outlook for iOS is no woothee browser, and a person",
                hit(Kind::Open, "Outlook-iOS/709.2189947.prod.iphone (4.71.0)"),
                "human mail_client probable",
            ),
        ],
    );
}

#[test]
fn every_engine_reason_is_reserved_from_rule_names() {
    let engine = Engine::new();
    let mut given: Vec<&str> = engine.all().iter().map(|v| &*v.reason).collect();
    let mut reserved = crate::enrich::rules::ENGINE_REASONS.to_vec();
    given.sort_unstable();
    reserved.sort_unstable();
    assert_eq!(given, reserved);
}

/// Agents from matomo-org/device-detector's Tests/fixtures/bots.yml (commit 3856a28692).
#[test]
fn regional_webmail_proxies_keep_their_names() {
    let f = fixture("");
    let ukrnet = "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/55.0.2883.87 Safari/537.36 (via secureurl.fwdcdn.com - mail.ukr.net proxy)";
    check(
        &f,
        &[
            (
                "Seznam",
                hit(Kind::Open, "Mozilla/5.0 SeznamEmailProxy/2.0.174"),
                "proxy_open:seznam seznam-email-proxy probable",
            ),
            (
                "Rambler",
                hit(Kind::Open, "RamblerMail/6.0 (incompatible; ImageProxy/6.0)"),
                "proxy_open:rambler rambler-mail-image-proxy probable",
            ),
            (
                "ukr.net: a browser agent with the proxy's note",
                hit(Kind::Open, ukrnet),
                "proxy_open:ukrnet ukrnet-mail-proxy probable",
            ),
            (
                "ukr.net on a link is no person's click",
                hit(Kind::Click, ukrnet),
                "prefetch:ukrnet ukrnet-mail-proxy-link probable",
            ),
        ],
    );
}
