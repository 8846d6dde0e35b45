//! The per-request context the stages share: when the request was answered, who
//! sent it (the TCP peer) and what it said, beyond its token. Built by `route`,
//! read by `enrich` (and classify); it lives apart so neither imports the other.

use std::net::IpAddr;

use http::HeaderMap;

/// What one request tells beyond its token.
pub struct Hit<'a> {
    /// Unix milliseconds when the request was taken up.
    pub at_ms: u64,
    /// The TCP peer (the client address itself only without trusted proxies).
    pub peer: IpAddr,
    pub headers: &'a HeaderMap,
    /// A HEAD request.
    pub head: bool,
}

impl Hit<'_> {
    pub fn now_secs(&self) -> u64 {
        self.at_ms / 1000
    }
}
