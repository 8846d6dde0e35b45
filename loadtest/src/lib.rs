//! trackedge-loadtest: the load generator, the accounting check and the
//! side-by-side comparison runner for trackedge.
//!
//! # Layout
//! - [`load`]: drives a phase; [`openloop`]: the single-threaded open-loop
//!   HTTP/1.1 client of fixed-rate runs; [`client`]: keep-alive HTTP/1.1 and h2c
//!   connections for closed-loop and HTTP/2 runs, paced by [`schedule`];
//!   [`tally`]: what a driver counted; [`histogram`]: HDR latency with
//!   coordinated-omission correction; [`progress`], [`report`] and [`plot`]: the
//!   progress line, tables and PNG.
//! - [`traffic`]: the realistic request mix; [`geodb`]: a GeoIP2-City-shaped
//!   database of realistic size.
//! - [`process`], [`edge`], [`floor`], [`nginx`]: the servers under test.
//! - [`receiver`] and [`accounting`]: the upstream that proves nothing is lost.
//! - [`compare`]: floor vs trackedge vs nginx, alternating, pinned, CPU per request;
//!   [`phase`]: one measured phase (fixed rate, saturation, TLS handshakes and
//!   keep-alive, HTTP/2); its clients [`wrk`], [`h2load`] and [`tlsclient`]
//!   (rustls); [`certs`]: the ECDSA P-256 certificate they all serve.
//! - [`procstat`]: CPU time, RSS and the hypervisor's steal time from /proc.
#![forbid(unsafe_code)]

pub mod account;
pub mod accounting;
pub mod certs;
pub mod cli;
pub mod client;
pub mod compare;
pub mod edge;
pub mod floor;
pub mod geodb;
pub mod h2load;
pub mod histogram;
pub mod load;
pub mod nginx;
pub mod openloop;
pub mod phase;
pub mod plot;
pub mod process;
pub mod procstat;
pub mod progress;
pub mod receiver;
pub mod report;
pub mod schedule;
pub mod tally;
pub mod tlsclient;
pub mod traffic;
pub mod wrk;
