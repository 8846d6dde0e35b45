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
//! - [`metrics`]: names and handles; [`health`]: readiness.
//!
//! # The life of a hit
//! A request for `/c/{token}` is accepted by [`server`] (TCP or rustls), parsed by
//! hyper and handed to [`route::handle`], which matches the route, verifies the token
//! against the [`keys`] in force ([`token::verify`]), asks [`enrich`] who is behind
//! it (client address, device, place, human or machine, first or repeat), applies
//! [`privacy`] to the request's facts, checks the client network's recording budget
//! ([`ratelimit`]), builds an [`event::Event`] and queues it with
//! [`spool::EventSender::send`] (never waiting), then answers a 302 to the signed
//! target from static parts. The writer thread in [`spool`] commits the event to the
//! sled log in a group commit; [`forward`] reads it back in order, sends it upstream
//! in a batch and deletes it once the sink acknowledged. Nothing on the request path
//! touches disk or network.
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
pub mod config;
pub mod enrich;
pub mod event;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod idle;
pub mod keys;
pub mod metrics;
pub mod privacy;
pub mod ratelimit;
pub mod record;
pub mod reload;
pub mod route;
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
