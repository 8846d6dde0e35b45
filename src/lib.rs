//! trackedge: a tracking edge for email opens, clicks, downloads and unsubscribes.
//!
//! # Layout
//! - [`config`]: TOML -> validated [`config::Config`]; [`shutdown`]: one stop signal.
//! - [`server`]: listeners (plain or [`tls`]), lifecycle; [`slots`]: connection caps;
//!   [`idle`]: the idle limit of a connection; [`reload`]: files re-read while running; [`admin`]: metrics and
//!   probes.
//! - [`route`]: the public request path; [`token`] and [`keys`]: signed URLs.
//! - [`enrich`]: client IP, user agent, GeoIP, class, first/duplicate.
//! - [`privacy`]: what may be stored; [`ratelimit`]: how much one network may
//!   record; [`event`]: the record; [`wire`]: its JSON line.
//! - [`spool`]: the hand-off and the durable log, kept in [`store`] (the only module
//!   that knows sled) as [`record`]s; [`forward`]: batches to the upstream sink.
//! - [`metrics`]: names and handles; [`health`]: readiness; [`secret_file`]: the
//!   secrets the edge generates for itself; [`memory`]: freed heap back to the
//!   kernel once a busy period is over.
//! - [`build_asn`]: `trackedge geoip build-asn`, an ASN database from free CSVs.
//!
//! # The life of a hit
//! This is the one written order of the stages; other docs point here.
//!
//! 1. **accept** ([`server`]): TCP -> connection caps ([`slots`]) -> idle limit
//!    ([`idle`]) -> rustls ([`tls`]) -> hyper (HTTP/1.1, HTTP/2).
//! 2. **route** ([`route::handle`]): URI length and `Host` checks, then the path
//!    picks the route.
//! 3. **token** ([`token::verify`] against the [`keys`] in force): a bad token still
//!    gets its route's answer (the pixel, the fallback page), and nothing is recorded.
//! 4. **privacy decision** ([`privacy`]): opt-out cookie, suppression, DNT/GPC,
//!    self-opens: may this hit be recorded? (An unsubscribe always is, with only its
//!    ids when tracking is refused.)
//! 5. **client address** ([`enrich`]): the address behind trusted proxies, and its
//!    network (ASN).
//! 6. **recording limit** ([`ratelimit`]): the client network's budget marks or
//!    drops the event; it runs before the rest so a dropped event leaves no mark.
//! 7. **describe** ([`enrich`]): user agent, place, human-or-machine verdict,
//!    first-or-repeat.
//! 8. **event** ([`event::Event`]): the claims and what privacy lets be kept of the
//!    address and user agent; queued with [`spool::EventSender::send`], which never
//!    waits.
//! 9. **respond**: the answer (a GIF, a 302 to the signed target, a page) from
//!    static parts.
//!
//! Stages 4 to 8 are `route::record`. Then, off the request path: the writer thread
//! in [`spool`] commits the event to the sled log in a group commit; [`forward`]
//! leases it, sends it upstream in a batch and deletes it once the sink
//! acknowledged. Nothing on the request path touches disk or network.
//!
//! # Minting URLs
//! Senders embed [`mint_url`] (or run `trackedge sign`):
//!
//! ```
//! use trackedge::{mint_url, Claims, Key, KeyRing, Kind};
//! let keys = KeyRing::new(vec![Key::new(1, b"a secret of at least thirty-two bytes")]).unwrap();
//! let claims = Claims {
//!     kind: Kind::Click,
//!     tenant: "acme".into(),
//!     campaign: "spring-sale".into(),
//!     message: "msg-42".into(),
//!     recipient: None,
//!     link: 1,
//!     target: Some("https://shop.example/spring".into()),
//!     expires_at: None,
//!     sent_at: None,
//! };
//! let url = mint_url("https://t.example.com", &keys, &claims).unwrap();
//! assert!(url.starts_with("https://t.example.com/c/"));
//! ```
// One documented exception: mapping a private copy of a GeoIP database
// (`enrich::mapped::map`, with its `// SAFETY:` argument).
#![deny(unsafe_code)]

pub mod admin;
pub mod build_asn;
pub mod config;
pub mod enrich;
pub mod event;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod hit;
pub mod idle;
pub mod keys;
pub mod memory;
pub mod metrics;
#[doc(hidden)]
pub mod mmdb_fixtures;
pub mod privacy;
pub mod ratelimit;
pub mod record;
pub mod reload;
pub mod route;
pub mod secret_file;
pub mod server;
pub mod shutdown;
pub mod slots;
pub mod spool;
pub mod store;
pub mod subjects;
pub mod suppression;
pub mod tls;
pub mod token;
pub mod wire;

pub use token::{mint_url, sign, verify, Claims, Key, KeyRing, Kind};
