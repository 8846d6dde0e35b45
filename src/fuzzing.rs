//! The checks behind the cargo-fuzz targets in `fuzz/`, kept in the library so the
//! fuzz targets and the seed-corpus replay test (`tests/fuzz_corpus.rs`) run the
//! very same code: plain `cargo test` exercises every entry point without nightly.
//!
//! Input: arbitrary bytes, read as a small description of what to try (a mode byte,
//! then the hostile text); no input is invalid, a short one just means zeros. Output:
//! nothing, or a panic naming the broken property. Each check returns whether the
//! input reached the check's deep branch (a token verified, an address came from a
//! header, an agent was recognised, a segment decoded), so the replay test can
//! insist that the seeds cover it. Not a stable API: hidden from the docs.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::enrich::cidr::CidrSet;
use crate::enrich::classify::{Certainty, Class, ClassKind, Classifier};
use crate::enrich::client_ip::{ClientIp, Origin, Source, HEADERS};
use crate::enrich::geo::{Asn, Geo};
use crate::enrich::ua::{Client, UaCache};
use crate::enrich::UaFacts;
use crate::event::{Event, EventId, EventKind, SCHEMA_VERSION};
use crate::record::{self, SegmentWriter};
use crate::token::{self, Key, KeyRing, Kind};

mod seeds;

pub use seeds::seeds;

/// The targets, as named under `fuzz/fuzz_targets/` and `fuzz/corpus/`.
pub const TARGETS: [&str; 4] = ["token_verify", "client_ip", "ua_cache", "segment_decode"];

/// Runs the check of the target called `name` (`None` for an unknown name).
pub fn check(name: &str, data: &[u8]) -> Option<bool> {
    Some(match name {
        "token_verify" => token_verify(data),
        "client_ip" => client_ip(data),
        "ua_cache" => ua_cache(data),
        "segment_decode" => segment_decode(data),
        _ => return None,
    })
}

/// Reads the fuzz input front to back; past its end every read gives zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&byte, rest)) => {
                self.0 = rest;
                byte
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(std::array::from_fn(|_| self.byte()))
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(std::array::from_fn(|_| self.byte()))
    }

    /// A length byte, then that many bytes as (lossy) UTF-8.
    fn text(&mut self) -> String {
        let len = usize::from(self.byte()).min(self.0.len());
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(text).into_owned()
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

// ---- token_verify ----------------------------------------------------------------

/// The longest token the checks accept (the `public.max_token_bytes` default).
pub const MAX_TOKEN_BYTES: usize = 4096;
const TIMES: [u64; 3] = [0, 1_800_000_000, u64::MAX];

/// Two keys, so tokens of the second (a rotation's old key) are tried too.
pub fn keys() -> &'static [Key; 2] {
    static KEYS: OnceLock<[Key; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            Key::new(1, b"trackedge fuzzing key one, 32+ bytes"),
            Key::new(2, b"trackedge fuzzing key two, 32+ bytes"),
        ]
    })
}

pub fn key_ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| KeyRing::new(keys().to_vec()).expect("two keys with distinct ids"))
}

/// `mode` bit 0: the rest is token text (0) or a payload to sign as it is (1);
/// bits 1-3: the expected kind; bits 4-5: the clock (0, 2027, the end of time, or
/// the next 8 bytes). A token that verifies must hold to its kind, expiry and target
/// rule, and its claims signed again must verify to the same claims.
pub fn token_verify(data: &[u8]) -> bool {
    let mut input = Input(data);
    let mode = input.byte();
    let kind = Kind::ALL[usize::from((mode >> 1) & 7) % Kind::ALL.len()];
    let now = match (mode >> 4) & 3 {
        3 => input.u64(),
        time => TIMES[usize::from(time)],
    };
    let rest = input.rest();
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // Signed with the key its own key-id byte names, so the field parser behind
        // the tag check sees arbitrary payloads.
        let key = keys()
            .iter()
            .find(|key| rest.get(1) == Some(&key.id()))
            .unwrap_or(&keys()[0]);
        token::seal(key, rest.to_vec())
    };
    let Ok(claims) = token::verify(key_ring(), &token, kind, now, MAX_TOKEN_BYTES) else {
        return false;
    };
    assert_eq!(claims.kind, kind, "a token verified as another kind");
    assert!(
        claims.expires_at.is_none_or(|at| now <= at),
        "an expired token verified: {claims:?} at {now}"
    );
    assert_eq!(claims.target.is_some(), kind.has_target(), "{claims:?}");
    if let Some(target) = &claims.target {
        assert_eq!(token::check_target(target), Ok(()), "{claims:?}");
    }
    let again = token::sign(key_ring().signing_key(), &claims)
        .unwrap_or_else(|err| panic!("verified claims cannot be signed again ({err}): {claims:?}"));
    assert_eq!(
        token::verify(key_ring(), &again, kind, now, MAX_TOKEN_BYTES),
        Ok(claims),
        "signed again, the claims verify differently"
    );
    true
}

// ---- client_ip -------------------------------------------------------------------

/// The trusted proxies of the check: IPv4, IPv6 and a single address.
pub const TRUSTED: [&str; 4] = ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32", "::1"];
/// Peers to choose from: trusted ones (one IPv4-mapped) and untrusted ones.
pub const PEERS: [&str; 6] = [
    "10.1.2.3",
    "192.0.2.77",
    "2001:db8::5",
    "::ffff:10.0.0.9",
    "198.51.100.1",
    "2001:db9::1",
];

/// Byte 0 picks the configured header ([`HEADERS`]), byte 1 the peer ([`PEERS`]);
/// the rest is lines of a header-name byte (into [`HEADERS`]) and a value. The
/// answer must be the peer, or an address written in the configured header (and
/// then only behind a trusted peer), always canonical (IPv4-mapped -> IPv4).
pub fn client_ip(data: &[u8]) -> bool {
    let mut input = Input(data);
    let configured = HEADERS[usize::from(input.byte()) % HEADERS.len()];
    let peer: IpAddr = PEERS[usize::from(input.byte()) % PEERS.len()]
        .parse()
        .expect("the peers are addresses");
    let trusted = CidrSet::parse(&TRUSTED).expect("the trusted networks parse");
    let peer_trusted = trusted.contains(peer);
    let source = Source::from_header_name(configured).expect("a known header name");
    let resolver = ClientIp::new(trusted, source);

    let mut headers = HeaderMap::new();
    for line in input.rest().split(|b| *b == b'\n') {
        let Some((name, value)) = line.split_first() else {
            continue;
        };
        // Values hyper would refuse (CR, LF, NUL) never reach the resolver.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            let name = HEADERS[usize::from(*name) % HEADERS.len()];
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let resolved = resolver.resolve(peer, &headers);
    assert_eq!(resolved.ip, resolved.ip.to_canonical(), "not canonical");
    match resolved.origin {
        Origin::Peer => assert_eq!(resolved.ip, peer.to_canonical()),
        Origin::Header => {
            assert!(peer_trusted, "an untrusted peer chose its address");
            let written = addresses_in(headers.get_all(configured).iter());
            assert!(
                written.contains(&resolved.ip),
                "{} was not written in {configured}: {headers:?}",
                resolved.ip
            );
        }
    }
    resolved.origin == Origin::Header
}

/// Every address that could be read out of `values`, found without knowing the
/// header syntax: each run of the characters an address (with port, brackets or
/// zone) is made of, read as an address, a socket address or a bracketed address.
fn addresses_in<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Vec<IpAddr> {
    let address_byte = |b: &u8| b.is_ascii_hexdigit() || b":.[]%".contains(b);
    values
        .flat_map(|value| value.as_bytes().split(|b| !address_byte(b)))
        .filter_map(|run| std::str::from_utf8(run).ok())
        .filter_map(|text| {
            text.parse::<IpAddr>()
                .ok()
                .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
                .or_else(|| {
                    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
                    inner.parse().ok()
                })
        })
        .map(|ip| ip.to_canonical())
        .collect()
}

// ---- ua_cache --------------------------------------------------------------------

/// A tiny cache, so that every few agents rotate a generation out.
pub const UA_CACHE_ENTRIES: usize = 4;

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| {
        let config = crate::config::Config::from_toml_str("", &Default::default())
            .expect("the default config is valid");
        Classifier::new(&config.classify).expect("the shipped rules compile")
    })
}

/// Byte 0 sets `user_agent.max_bytes` (1-64, so agents are cut); the rest is agents,
/// one a line, through one [`UaCache`] as the enrich stage uses it. Every answer must
/// be the agent cut to at most `max_bytes` (for UTF-8 input: its longest prefix on a
/// character boundary) with the facts of that string, not of another cached one; the
/// cache must stay within its size.
pub fn ua_cache(data: &[u8]) -> bool {
    let mut input = Input(data);
    let max_bytes = 1 + usize::from(input.byte() % 64);
    let cache: UaCache<UaFacts> = UaCache::new(UA_CACHE_ENTRIES, max_bytes);
    let mut recognised = false;
    for raw in input.rest().split(|b| *b == b'\n') {
        let book = classifier().book();
        let parsed = cache.get(raw, |ua| UaFacts::derive(classifier(), &book, ua));
        assert!(
            parsed.ua.len() <= max_bytes,
            "{:?} is over {max_bytes} bytes",
            parsed.ua
        );
        if let Ok(text) = std::str::from_utf8(raw) {
            let end = (0..=max_bytes.min(text.len()))
                .rev()
                .find(|end| text.is_char_boundary(*end))
                .expect("0 is a boundary");
            assert_eq!(&*parsed.ua, &text[..end]);
        }
        let fresh = UaFacts::derive(classifier(), &book, &parsed.ua);
        assert_eq!(parsed.facts.client, fresh.client, "facts of another agent");
        assert_eq!(
            (&parsed.facts.agent, &parsed.facts.rules),
            (&fresh.agent, &fresh.rules),
            "facts of another agent"
        );
        assert!(
            cache.len() <= UA_CACHE_ENTRIES,
            "{} entries in a cache of {UA_CACHE_ENTRIES}",
            cache.len()
        );
        recognised |= fresh.client.is_some();
    }
    recognised
}

// ---- segment_decode --------------------------------------------------------------

/// The most events one input describes, to keep each run short.
const MAX_EVENTS: usize = 32;

/// The input as a stored segment: decoding must not panic, and what decodes must
/// be exactly the records the bytes hold. Then the input as a description of events:
/// written with [`SegmentWriter`], they must decode to their own times and JSON
/// lines, and a size bound must cut whole trailing records only.
pub fn segment_decode(data: &[u8]) -> bool {
    let decoded = decode_stored(data);
    round_trip(data);
    decoded
}

fn decode_stored(data: &[u8]) -> bool {
    let Ok(segment) = record::decode(data) else {
        assert_eq!(record::count_of(data), 0);
        return false;
    };
    assert_eq!(record::count_of(data), u64::from(segment.count));
    let Ok(records) = segment.records() else {
        return false;
    };
    assert_eq!(records.len(), segment.count as usize);
    // The records cover the whole body: the walk read every byte.
    let covered: usize = records.iter().map(|r| 12 + r.json.len()).sum();
    assert_eq!(
        Ok(covered),
        segment.body().map(<[u8]>::len),
        "the records do not cover the segment"
    );
    // Written again (compressed or not), they read back the same.
    let mut copy = SegmentWriter::new();
    for record in &records {
        copy.push_raw(*record);
    }
    let copy = copy.finish();
    let again = record::decode(&copy).expect("a written segment decodes");
    assert_eq!(again.records(), Ok(records));
    true
}

fn round_trip(data: &[u8]) {
    let mut input = Input(data);
    let mut events = Vec::new();
    while !input.0.is_empty() && events.len() < MAX_EVENTS {
        events.push(event(&mut input));
    }
    let write = |events: &[Event]| {
        let mut writer = SegmentWriter::new();
        for event in events {
            writer.push(event).expect("every event serializes");
        }
        writer
    };
    let bytes = write(&events).finish();
    let segment = record::decode(&bytes).expect("a written segment decodes");
    let records = segment
        .records()
        .expect("a written segment has its records");
    assert_eq!(records.len(), events.len());
    if let (Some(oldest), Some(newest)) = (
        events.iter().map(|e| e.ts).min(),
        events.iter().map(|e| e.ts).max(),
    ) {
        assert_eq!((segment.oldest_ts, segment.newest_ts), (oldest, newest));
    }
    for (record, event) in records.iter().zip(&events) {
        assert_eq!(record.ts_ms, event.ts);
        let line = serde_json::to_vec(event).expect("every event serializes");
        assert_eq!(record.json, line.as_slice());
        let json: serde_json::Value = serde_json::from_slice(record.json).expect("valid JSON");
        assert_eq!(json["id"], event.id.to_string());
        assert_eq!(json["tenant"], event.tenant);
        assert_eq!(json["message"], event.message);
        assert_eq!(json["target"].as_str(), event.target.as_deref());
    }

    let bound = bytes.len() * usize::from(data.first().copied().unwrap_or(0)) / 255;
    let mut cut = write(&events);
    let dropped = cut.truncate_to(bound);
    let cut = cut.finish();
    let cut_segment = record::decode(&cut).expect("a cut segment decodes");
    let kept = cut_segment
        .records()
        .expect("a cut segment has its records");
    assert_eq!(kept.as_slice(), &records[..records.len() - dropped]);
    assert!(
        cut.len() <= bound || kept.is_empty(),
        "{} bytes over a bound of {bound}",
        cut.len()
    );
}

/// One event, every field drawn from the input (including ones no real request
/// produces: the writer must store whatever it is handed).
fn event(input: &mut Input) -> Event {
    let present = input.byte();
    let flags = input.byte();
    let has = |bit: u8| present & (1 << bit) != 0;
    // Every kind, tracked or not, from a byte of its own.
    let kinds = Kind::ALL.len() + 2;
    let kind = match usize::from(input.byte()) % kinds {
        index if index < Kind::ALL.len() => EventKind::Tracked(Kind::ALL[index]),
        index if index == Kind::ALL.len() => EventKind::Erasure,
        _ => EventKind::Reclassify,
    };
    let id = EventId(u128::from(input.u64()) << 64 | u128::from(input.u64()));
    let ts = input.u64();
    let (tenant, campaign, message) = (input.text(), input.text(), input.text());
    let recipient = has(0).then(|| input.text());
    let link = input.u32();
    let target = has(1).then(|| input.text());
    let ip = has(2).then(|| input.text());
    let geo = has(3).then(|| {
        Arc::new(Geo {
            country: Some(input.text().into()),
            region: Some(input.text().into()),
            city: Some(input.text().into()),
            // Any bits, NaN and infinities included.
            lat: Some(f64::from_bits(input.u64())),
            lon: Some(f64::from_bits(input.u64())),
            tz: Some(input.text().into()),
        })
    });
    let asn = has(4).then(|| {
        Arc::new(Asn {
            number: input.u32(),
            org: Some(input.text().into()),
        })
    });
    let ua = has(5).then(|| Arc::from(input.text()));
    let client = has(6).then(|| {
        Arc::new(Client {
            browser: input.text().into(),
            version: input.text().into(),
            os: input.text().into(),
            os_version: input.text().into(),
            category: input.text().into(),
            vendor: input.text().into(),
        })
    });
    let class_kind = ClassKind::ALL[usize::from(input.byte()) % ClassKind::ALL.len()];
    let class = match class_kind {
        ClassKind::Human => Class::HUMAN,
        ClassKind::Bot => Class::BOT,
        kind => Class::new(kind, &input.text()),
    };
    Event {
        v: SCHEMA_VERSION,
        id,
        ts,
        kind,
        tenant,
        campaign,
        message,
        recipient,
        link,
        target,
        ip,
        geo,
        asn,
        ua,
        client,
        class,
        class_reason: Arc::from(input.text()),
        certainty: match flags & 128 {
            0 => Certainty::Certain,
            _ => Certainty::Probable,
        },
        first: has(7),
        dnt: flags & 1 != 0,
        gpc: flags & 2 != 0,
        head: flags & 4 != 0,
        self_open: flags & 8 != 0,
        rate_limited: flags & 16 != 0,
        not_tracked: (flags & 32 != 0).then_some("opted_out"),
        ids: if flags & 64 != 0 {
            vec![id]
        } else {
            Vec::new()
        },
        node: Arc::from(input.text()),
    }
}
