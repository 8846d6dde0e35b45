//! The enrich stage piece by piece and whole, on the fixture GeoIP databases.
//!
//! Run: `cargo bench --bench enrich -- --warm-up-time 1 --measurement-time 3`.
//! Targets on the 2-core dev VM: cached user agent < 100 ns, classification of a
//! cached agent (cache hit + verdict, `classify/cached_ua_*`) < 200 ns, GeoIP lookup
//! < 1 µs, whole enrichment < 2 µs (medians). `classify/verdict_human_open` is the
//! verdict alone (agent facts in hand): what classification adds to `ua/cached`, the
//! floor to compare against on a loaded machine.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use trackedge::config::{Config, Overrides};
use trackedge::enrich::cidr::CidrSet;
use trackedge::enrich::classify::{Classifier, Signals};
use trackedge::enrich::client_ip::{ClientIp, Source};
use trackedge::enrich::geo::{Db, DbKind};
use trackedge::enrich::rules::Method;
use trackedge::enrich::ua::{self, UaCache};
use trackedge::enrich::Enricher;
use trackedge::enrich::UaFacts;
use trackedge::event::EventId;
use trackedge::hit::Hit;
use trackedge::mmdb_fixtures as mmdb;
use trackedge::{Claims, Kind};

const UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";

fn config(dir: &Path) -> Config {
    let text = format!(
        "[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8:cafe::/48\"]\n\
         [geoip]\ncity_db = {:?}\nasn_db = {:?}\n",
        mmdb::write_city(dir, "a").display().to_string(),
        mmdb::write_asn(dir).display().to_string(),
    );
    Config::from_toml_str(&text, &Overrides::default()).expect("bench config")
}

fn enrich(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    let ip: IpAddr = "81.2.69.160".parse().expect("ip");

    c.bench_function("ua/parse_cold", |b| b.iter(|| ua::parse(black_box(UA))));
    let cache: UaCache<ua::Client> = UaCache::new(10_000, 512);
    cache.get(UA.as_bytes(), ua::parse);
    c.bench_function("ua/cached", |b| {
        b.iter(|| cache.get(black_box(UA.as_bytes()), ua::parse))
    });

    let copies = dir.path().join("copies");
    let city =
        Db::open(DbKind::City, dir.path().join("city.mmdb"), copies.clone()).expect("city db");
    let asn = Db::open(DbKind::Asn, dir.path().join("asn.mmdb"), copies).expect("asn db");
    c.bench_function("geoip/city", |b| b.iter(|| city.city(black_box(ip))));
    c.bench_function("geoip/asn", |b| b.iter(|| asn.asn(black_box(ip))));

    let resolver = ClientIp::new(
        CidrSet::parse(&["10.0.0.0/8", "2001:db8:cafe::/48"]).expect("cidrs"),
        Source::XForwardedFor,
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("6.6.6.6, 81.2.69.160, 10.1.2.3"),
    );
    headers.insert("user-agent", HeaderValue::from_static(UA));
    let peer: IpAddr = "10.0.0.2".parse().expect("peer");
    c.bench_function("client_ip/x_forwarded_for", |b| {
        b.iter(|| resolver.resolve(black_box(peer), &headers))
    });

    // Classification as the enrich stage runs it: the agent's facts come from the UA
    // cache (derived once per distinct agent), then the verdict for the hit.
    let classifier = Classifier::new(&config.classify).expect("rules compile");
    let book = classifier.book();
    let facts: UaCache<UaFacts> = UaCache::new(10_000, 512);
    let empty = HeaderMap::new();
    let home: IpAddr = "81.2.69.160".parse().expect("ip");
    let relay: IpAddr = "104.28.28.1".parse().expect("ip");
    for (name, ua, ip) in [
        ("classify/cached_ua_human_open", UA, home),
        ("classify/cached_ua_mpp_open", "Mozilla/5.0", relay),
    ] {
        facts.get(ua.as_bytes(), |text| {
            UaFacts::derive(&classifier, &book, text)
        });
        c.bench_function(name, |b| {
            b.iter(|| {
                let parsed = facts.get_current(
                    black_box(ua.as_bytes()),
                    |f| f.generation == book.generation,
                    |text| UaFacts::derive(&classifier, &book, text),
                );
                classifier.classify(
                    &book,
                    black_box(&Signals {
                        kind: Kind::Open,
                        method: Method::Get,
                        ip,
                        asn: Some(64_500),
                        secs_since_sent: Some(3600),
                        headers: &empty,
                        agent: Some(&parsed.facts.agent),
                        ua_rules: &parsed.facts.rules,
                        ua_bytes: ua.len(),
                    }),
                )
            })
        });
    }
    // The verdict alone, the agent's facts already in hand: what classification adds
    // to the UA cache lookup above.
    let parsed = facts.get_current(
        UA.as_bytes(),
        |f| f.generation == book.generation,
        |text| UaFacts::derive(&classifier, &book, text),
    );
    c.bench_function("classify/verdict_human_open", |b| {
        b.iter(|| {
            classifier.classify(
                &book,
                black_box(&Signals {
                    kind: Kind::Open,
                    method: Method::Get,
                    ip: home,
                    asn: Some(64_500),
                    secs_since_sent: Some(3600),
                    headers: &empty,
                    agent: Some(&parsed.facts.agent),
                    ua_rules: &parsed.facts.rules,
                    ua_bytes: UA.len(),
                }),
            )
        })
    });
    c.bench_function("classify/ua_miss", |b| {
        b.iter(|| UaFacts::derive(&classifier, &book, black_box(UA)))
    });
    let mut slow = c.benchmark_group("classify_compile");
    slow.sample_size(10);
    slow.bench_function("classify/compile", |b| {
        b.iter(|| Classifier::new(black_box(&config.classify)).expect("rules compile"))
    });
    slow.finish();

    let enricher = Enricher::new(&config, 0).expect("enricher");
    let claims = Claims {
        recipient: Some("r-8f14e45f".into()),
        sent_at: Some(1_795_000_000),
        ..Claims::new(
            Kind::Open,
            "acme",
            "spring-2026",
            "01J9Z3W6Q8K2M4N6P8R0S2T4V6",
        )
    };
    let hit = Hit {
        at_ms: 1_795_000_100_000,
        peer,
        headers: &headers,
        head: false,
    };
    c.bench_function("enrich/whole_open", |b| {
        b.iter(|| {
            let hit = black_box(&hit);
            enricher.describe(hit, &claims, enricher.client_addr(hit), EventId(1))
        })
    });
}

criterion_group!(benches, enrich);
criterion_main!(benches);
