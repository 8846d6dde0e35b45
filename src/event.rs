//! The event: one record per recorded request, the unit written and forwarded.
//!
//! Built by the route from verified claims and request facts, handed to the writer
//! through `spool`, serialized there (never on the request path) by
//! [`crate::wire`], which writes exactly what this type's `Serialize` writes. Schema version
//! [`SCHEMA_VERSION`]; fields are documented in the README. Ids are ULID-shaped:
//! 48 bits of milliseconds, 16 bits chosen at random when the process starts and a
//! 64-bit sequence, so they sort by time and never repeat on one edge node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::enrich::classify::Class;
use crate::enrich::geo::{Asn, Geo};
use crate::enrich::ua::Client;
use crate::token::Kind;

pub const SCHEMA_VERSION: u8 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub v: u8,
    pub id: EventId,
    /// Unix milliseconds when the request was answered.
    pub ts: u64,
    pub kind: EventKind,
    pub tenant: String,
    pub campaign: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    pub link: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// As the privacy policy allows: truncated (default), hashed, full or absent.
    pub ip: Option<String>,
    /// Where the full address is, per the GeoIP database (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo: Option<Arc<Geo>>,
    /// Who announces the full address (absent without an ASN database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<Arc<Asn>>,
    /// The User-Agent header, cut to `user_agent.max_bytes` (absent in
    /// `privacy.ua_mode = "parsed_only"`).
    pub ua: Option<Arc<str>>,
    /// What the user agent says (absent when nothing was recognised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Arc<Client>>,
    /// human | proxy_open:<who> | prefetch:<who> | link_scanner:<who> | bot
    pub class: Class,
    /// What decided `class`.
    pub class_reason: Arc<str>,
    /// First hit for this message (and link) on this node within `dedup.window_secs`.
    pub first: bool,
    pub dnt: bool,
    pub gpc: bool,
    /// True for HEAD requests, which link scanners favour.
    pub head: bool,
    /// The sender's own open (sender cookie or within the window after sending).
    #[serde(rename = "self")]
    pub self_open: bool,
    /// Over the per-network recording limit (`rate_limit.action = "mark"`); the
    /// field is left out when false.
    #[serde(skip_serializing_if = "is_false")]
    pub rate_limited: bool,
    pub node: Arc<str>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// What an event records: a tracked request, or an erasure to apply downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Tracked(Kind),
    /// All of a recipient's data was erased here; the receiver should erase its own.
    Erasure,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Tracked(kind) => kind.as_str(),
            EventKind::Erasure => "erasure",
        }
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A time-ordered, node-unique event id; prints as 26 Crockford base32 characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u128);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl EventId {
    /// The 26 characters of the id's text.
    pub fn to_bytes(&self) -> [u8; 26] {
        let mut out = [0u8; 26];
        for (index, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (25 - index);
            *slot = CROCKFORD[((self.0 >> shift) & 0x1f) as usize];
        }
        out
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.to_bytes()).expect("alphabet is ASCII"))
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Hands out [`EventId`]s for one process.
#[derive(Debug)]
pub struct IdGenerator {
    boot_nonce: u16,
    sequence: AtomicU64,
}

impl IdGenerator {
    pub fn new() -> IdGenerator {
        IdGenerator {
            boot_nonce: rand::random(),
            sequence: AtomicU64::new(0),
        }
    }

    pub fn next(&self, ts_ms: u64) -> EventId {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        EventId(
            (u128::from(ts_ms & 0xffff_ffff_ffff) << 80)
                | (u128::from(self.boot_nonce) << 64)
                | u128::from(sequence),
        )
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

/// Unix milliseconds now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_then_sequence_and_never_repeat() {
        let ids = IdGenerator::new();
        let a = ids.next(1_000);
        let b = ids.next(1_000);
        let c = ids.next(999_999);
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(ids.next(5)));
        }
    }

    #[test]
    fn id_text_is_26_crockford_characters() {
        assert_eq!(EventId(0).to_string(), "00000000000000000000000000");
        assert_eq!(EventId(u128::MAX).to_string(), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        assert_eq!(EventId(32).to_string(), "00000000000000000000000010");
    }

    #[test]
    fn event_serializes_to_the_documented_shape() {
        let event = Event {
            v: SCHEMA_VERSION,
            id: EventId(1),
            ts: 1_700_000_000_000,
            kind: EventKind::Tracked(Kind::Click),
            tenant: "acme".into(),
            campaign: "c".into(),
            message: "m".into(),
            recipient: None,
            link: 2,
            target: Some("https://example.com/".into()),
            ip: Some("203.0.113.0".into()),
            geo: None,
            asn: Some(Arc::new(Asn {
                number: 64_500,
                org: Some("Example".into()),
            })),
            ua: Some("Mozilla/5.0".into()),
            client: None,
            class: "proxy_open:gmail".parse().unwrap(),
            class_reason: "google_image_proxy".into(),
            first: true,
            dnt: false,
            gpc: true,
            head: false,
            self_open: false,
            rate_limited: false,
            node: "edge-1".into(),
        };
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "click");
        assert_eq!(json["id"], "00000000000000000000000001");
        assert_eq!(json["ip"], "203.0.113.0");
        assert_eq!(json["link"], 2);
        assert!(json.get("recipient").is_none());
        assert_eq!(json["self"], false);
        assert!(json.get("geo").is_none() && json.get("client").is_none());
        assert_eq!(
            json["asn"],
            serde_json::json!({"number": 64500, "org": "Example"})
        );
        assert_eq!(json["class"], "proxy_open:gmail");
        assert_eq!(json["class_reason"], "google_image_proxy");
        assert_eq!(json["first"], true);
    }
}
