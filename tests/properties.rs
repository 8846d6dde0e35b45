//! Properties over generated inputs (proptest), without the network:
//!
//! - any claims within the documented limits sign and verify back to themselves,
//!   and any single flipped bit or truncation of the token is refused;
//! - no request makes `route::handle` redirect anywhere but the target of a token
//!   signed with the edge's key, or the configured click fallback: not with mutated
//!   or truncated tokens, tokens signed with another key, arbitrary `/c/`, `/f/` and
//!   `/d/` paths, query strings or headers that name other URLs.
//!
//! Case counts are bounded so the file runs in a few seconds.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::header::LOCATION;
use http::{Method, Request};
use http_body_util::Full;
use proptest::prelude::*;
use proptest::sample::Index;
use trackedge::config::{Config, Overrides};
use trackedge::health::Health;
use trackedge::keys::Keys;
use trackedge::route::{self, Edge};
use trackedge::spool::Writer;
use trackedge::token::{check_target, MAX_ID_BYTES, MAX_TARGET_BYTES};
use trackedge::{sign, verify, Claims, Key, KeyRing, Kind};

const SECRET: &str = "properties-test-secret-of-more-than-32-bytes";
/// The largest `public.max_token_bytes` there is: tokens at the documented limits fit.
const MAX_TOKEN_BYTES: usize = 16_384;
const FALLBACK: &str = "https://fallback.example/landing";

fn ring() -> KeyRing {
    KeyRing::new(vec![Key::new(1, SECRET.as_bytes())]).expect("one key")
}

/// 1 to 255 bytes without control characters (the signing rule).
fn id() -> impl Strategy<Value = String> {
    prop::collection::vec(
        any::<char>().prop_filter("control", |c| !c.is_control()),
        1..=255,
    )
    .prop_map(|chars| {
        let mut id = String::new();
        for c in chars {
            if id.len() + c.len_utf8() > MAX_ID_BYTES {
                break;
            }
            id.push(c);
        }
        id
    })
}

/// An http(s) URL of visible ASCII, up to the 2048-byte limit.
fn target() -> impl Strategy<Value = String> {
    (
        prop_oneof!["http://", "https://", "HTTPS://", "HttP://"],
        prop::option::of("[a-z0-9._~-]{1,8}@"),
        "[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?",
        prop::option::of(":[0-9]{1,5}"),
        prop_oneof!["", "[/?#][!-~]{0,80}", "/[!-~]{1900,2100}"],
    )
        .prop_map(|(scheme, user, host, port, rest)| {
            let mut url = format!(
                "{scheme}{}{host}{}{rest}",
                user.unwrap_or_default(),
                port.unwrap_or_default()
            );
            url.truncate(MAX_TARGET_BYTES);
            url
        })
        .prop_filter("the signing rule", |url| check_target(url).is_ok())
}

fn claims_of(kinds: &'static [Kind]) -> impl Strategy<Value = Claims> {
    (
        prop::sample::select(kinds),
        (id(), id(), id(), prop::option::of(id())),
        any::<u32>(),
        target(),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(
            |(kind, (tenant, campaign, message, recipient), link, target, expires_at, sent_at)| {
                Claims {
                    kind,
                    tenant,
                    campaign,
                    message,
                    recipient,
                    link,
                    target: kind.has_target().then_some(target),
                    expires_at,
                    sent_at,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn signed_claims_verify_to_themselves_and_no_flipped_bit_or_cut_verifies(
        claims in claims_of(&Kind::ALL),
        clock in any::<u64>(),
        at in any::<Index>(),
        bit in 0..8u32,
        cut in any::<Index>(),
    ) {
        let ring = ring();
        let token = sign(ring.signing_key(), &claims).expect("claims within the limits sign");
        let kind = claims.kind;
        // Any time up to the expiry.
        let now = claims.expires_at.map_or(clock, |at| clock.min(at));
        prop_assert_eq!(verify(&ring, &token, kind, now, MAX_TOKEN_BYTES), Ok(claims));

        let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        let flipped = at.index(bytes.len());
        bytes[flipped] ^= 1 << bit;
        let tampered = URL_SAFE_NO_PAD.encode(&bytes);
        prop_assert!(verify(&ring, &tampered, kind, now, MAX_TOKEN_BYTES).is_err());

        // In the text too (bits 0-6 keep it ASCII): a different character, or one
        // outside the alphabet, or the same bytes with other trailing bits.
        let mut text = token.clone().into_bytes();
        let flipped = at.index(text.len());
        text[flipped] ^= 1 << (bit % 7);
        let text = String::from_utf8(text).expect("ASCII");
        prop_assert!(verify(&ring, &text, kind, now, MAX_TOKEN_BYTES).is_err(), "{}", text);

        let short = &token[..cut.index(token.len())];
        prop_assert!(verify(&ring, short, kind, now, MAX_TOKEN_BYTES).is_err());
    }
}

/// Builds the request path's shared state the way `server` does (and
/// `benches/hot_path.rs`), on the default config with a spool under `dir`. The one
/// place this test builds an `Edge`.
fn edge(dir: &Path, click_fallback: Option<&'static str>) -> (Edge, Writer) {
    let overrides = Overrides {
        data_dir: Some(dir.display().to_string()),
        ..Overrides::default()
    };
    let mut config = Config::from_toml_str("", &overrides).expect("default config");
    config.public.max_token_bytes = MAX_TOKEN_BYTES;
    config.public.max_uri_bytes = 3 * MAX_TOKEN_BYTES;
    config.public.header_read_timeout = Duration::from_secs(1);
    config.public.click_fallback_url = click_fallback.map(str::to_owned);
    let key_file = dir.join("keys.txt");
    std::fs::write(&key_file, format!("1:{SECRET}\n")).expect("key file");
    let keys = Arc::new(Keys::open(key_file, false).expect("keys"));
    let health = Health::new();
    let (events, writer, spool) = trackedge::spool::start(
        &config.spool,
        health.register("writer", Duration::from_secs(3600)),
    )
    .expect("spool");
    let privacy = trackedge::privacy::Privacy::new(
        &config.privacy,
        dir,
        spool.suppressions().expect("suppressions"),
    )
    .expect("privacy");
    let edge = Edge::new(
        &config,
        keys,
        events,
        Arc::new(trackedge::enrich::Enricher::new(&config, 0).expect("enricher")),
        privacy,
    );
    (edge, writer)
}

/// Both edges (with and without a click fallback) and a runtime to drive them.
struct Edges {
    plain: Edge,
    with_fallback: Edge,
    writers: Vec<Writer>,
    runtime: tokio::runtime::Runtime,
    _dirs: [tempfile::TempDir; 2],
}

impl Edges {
    fn new() -> Edges {
        let dirs = [(); 2].map(|()| tempfile::tempdir().expect("temp dir"));
        let (plain, plain_writer) = edge(dirs[0].path(), None);
        let (with_fallback, fallback_writer) = edge(dirs[1].path(), Some(FALLBACK));
        Edges {
            plain,
            with_fallback,
            writers: vec![plain_writer, fallback_writer],
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            _dirs: dirs,
        }
    }

    /// The `Location` of the answer when it is a redirect.
    fn redirect(&self, edge: &Edge, method: &Method, uri: &str) -> Option<String> {
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("host", "t.example.com")
            .header("user-agent", "Mozilla/5.0 (properties)")
            // Headers naming other places: none may become a location.
            .header("referer", "https://referer.example/")
            .header("x-original-url", "https://header.example/")
            .header("forwarded", "for=192.0.2.1;host=forwarded.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"List-Unsubscribe=One-Click")))
            .unwrap_or_else(|err| panic!("{uri:?} is not a request URI: {err}"));
        let peer: IpAddr = [203, 0, 113, 7].into();
        let response = self.runtime.block_on(route::handle(edge, request, peer));
        response.status().is_redirection().then(|| {
            let location = response
                .headers()
                .get(LOCATION)
                .expect("a redirect has a Location");
            location.to_str().expect("visible ASCII").to_owned()
        })
    }
}

impl Drop for Edges {
    fn drop(&mut self) {
        for writer in self.writers.drain(..) {
            self.runtime.block_on(writer.finish());
        }
    }
}

/// A signed token changed the way a client, a proxy or an attacker might.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    Truncate(Index),
    Replace(Index, char),
    Insert(Index, char),
    Append(String),
    FlipBit(Index, u32),
    /// The token signed with another key (same key id, or another id).
    ForeignKey(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token_char = prop_oneof![
        prop::char::ranges(vec!['A'..='Z', 'a'..='z', '0'..='9'].into()),
        prop::sample::select(vec!['-', '_', '=', '+', '/', '%', '.', '~']),
    ];
    prop_oneof![
        Just(Mutation::None),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), token_char.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        (any::<Index>(), token_char).prop_map(|(i, c)| Mutation::Insert(i, c)),
        "[A-Za-z0-9_-]{1,12}".prop_map(Mutation::Append),
        (any::<Index>(), 0..8u32).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        prop_oneof![Just(1u8), Just(2u8)].prop_map(Mutation::ForeignKey),
    ]
}

/// Query strings and suffixes that name other URLs.
fn suffix() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("?url=https://evil.example/".to_owned()),
        Just("?target=https%3A%2F%2Fevil.example%2F&next=//evil.example".to_owned()),
        Just("/https://evil.example/".to_owned()),
        "\\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,60}",
    ]
}

/// Where a token (or an arbitrary segment) is put: the click and download routes,
/// `/d/` (not a route: must be a 404) and the others.
fn route_prefix() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/c/", "/c/", "/c/", "/f/", "/f/", "/f/", "/d/", "/o/", "/u/", "/s/", "//c/", "/c//",
    ])
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::OPTIONS,
    ])
}

fn mutate(token: &str, claims: &Claims, mutation: &Mutation) -> String {
    let mut text = token.to_owned();
    match mutation {
        Mutation::None => {}
        Mutation::Truncate(at) => text.truncate(at.index(text.len())),
        Mutation::Replace(at, c) => {
            let at = at.index(text.len());
            text.replace_range(at..at + 1, c.encode_utf8(&mut [0; 4]));
        }
        Mutation::Insert(at, c) => text.insert(at.index(text.len() + 1), *c),
        Mutation::Append(tail) => text.push_str(tail),
        Mutation::FlipBit(at, bit) => {
            let mut bytes = URL_SAFE_NO_PAD.decode(token).expect("base64url");
            let flipped = at.index(bytes.len());
            bytes[flipped] ^= 1 << bit;
            text = URL_SAFE_NO_PAD.encode(bytes);
        }
        Mutation::ForeignKey(id) => {
            let other = Key::new(*id, b"an attacker's own key, 32 bytes long");
            let evil = Claims {
                target: claims
                    .kind
                    .has_target()
                    .then(|| "https://evil.example/".to_owned()),
                ..claims.clone()
            };
            text = sign(&other, &evil).expect("the attacker can sign");
        }
    }
    text
}

fn uri_safe(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Up to 6 signed (then mutated) tokens under any route prefix, and up to 3
/// arbitrary `/c/`, `/f/`, `/d/` paths, per case.
fn requests() -> impl Strategy<Value = (Claims, Claims, Vec<Request_>, Vec<String>)> {
    (
        claims_of(&[Kind::Click, Kind::Download]),
        claims_of(&Kind::ALL),
        prop::collection::vec(
            (
                method(),
                route_prefix(),
                mutation(),
                suffix(),
                any::<bool>(),
            ),
            1..=6,
        ),
        prop::collection::vec(
            (
                prop::sample::select(vec!["/c/", "/f/", "/d/"]),
                "[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,120}",
            )
                .prop_map(|(prefix, rest)| format!("{prefix}{rest}")),
            0..=3,
        ),
    )
}

type Request_ = (Method, &'static str, Mutation, String, bool);

#[test]
fn no_request_redirects_to_a_target_that_was_not_signed() {
    // One pair of edges for all cases (each opens a sled store), finished at the end.
    let edges = Edges::new();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(192));
    let result = runner.run(&requests(), |(claims, other, requests, arbitrary)| {
        let mut signed = HashSet::new();
        let mut tokens = Vec::new();
        for claims in [claims, other] {
            // No expiry: the route verifies against the wall clock.
            let claims = Claims {
                expires_at: None,
                ..claims
            };
            let token = sign(ring().signing_key(), &claims).expect("sign");
            signed.extend(claims.target.clone());
            tokens.push((token, claims));
        }
        let allowed = |has_fallback: bool, location: &str| {
            signed.contains(location) || (has_fallback && location == FALLBACK)
        };

        // The signed token on its own route redirects to its target; the same claims
        // with another target, signed with an attacker's key, go on the same route.
        let (token, claims) = &tokens[0];
        let own = if claims.kind == Kind::Click {
            "/c/"
        } else {
            "/f/"
        };
        for edge in [&edges.plain, &edges.with_fallback] {
            let location = edges.redirect(edge, &Method::GET, &format!("{own}{token}"));
            prop_assert_eq!(location.as_deref(), claims.target.as_deref());
        }
        let mut uris = Vec::new();
        for id in [1, 2] {
            let forged = mutate(token, claims, &Mutation::ForeignKey(id));
            uris.push((Method::GET, format!("{own}{forged}")));
        }
        for (method, prefix, mutation, suffix, use_other) in &requests {
            let (token, claims) = &tokens[usize::from(*use_other)];
            let path = uri_safe(&mutate(token, claims, mutation));
            uris.push((method.clone(), format!("{prefix}{path}{suffix}")));
        }
        uris.extend(arbitrary.into_iter().map(|uri| (Method::GET, uri)));
        for (method, uri) in &uris {
            for (edge, has_fallback) in [(&edges.plain, false), (&edges.with_fallback, true)] {
                if let Some(location) = edges.redirect(edge, method, uri) {
                    prop_assert!(
                        allowed(has_fallback, &location),
                        "{} {} redirected to {:?}; signed: {:?}",
                        method,
                        uri,
                        location,
                        signed
                    );
                }
            }
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}
