//! The event: one record per recorded request, the unit written and forwarded.
//!
//! Built by the route from verified claims and request facts, handed to the writer
//! through `spool`, serialized there (never on the request path) by [`crate::wire`],
//! which writes exactly what this type's `Serialize` writes. Schema version
//! [`SCHEMA_VERSION`]; fields are documented in the README. Ids are ULID-shaped
//! and unique across a fleet: see [`IdGenerator`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::enrich::geo::{Asn, Geo};
use crate::enrich::ua::Client;
use crate::enrich::verdict::{Certainty, Class};
use crate::token::{Claims, Kind};

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
    /// How sure the edge is of `class`: certain | probable.
    pub certainty: Certainty,
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
    /// Set on an unsubscribe recorded although tracking was refused, to say why
    /// (`opted_out`, `suppressed`, `do_not_track`, `self_open`): such an event keeps
    /// its ids and time only. Left out otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_tracked: Option<&'static str>,
    /// On a `reclassify` event only: the earlier events whose class is now `class`
    /// (for `class_reason`). Left out otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<EventId>,
    pub node: Arc<str>,
}

impl Event {
    /// The event of `claims` answered at `ts`, with nothing about the client yet
    /// (the request path adds what the privacy policy allows).
    pub fn of_claims(
        claims: Claims,
        id: EventId,
        ts: u64,
        class_reason: Arc<str>,
        node: Arc<str>,
    ) -> Event {
        Event {
            v: SCHEMA_VERSION,
            id,
            ts,
            kind: EventKind::Tracked(claims.kind),
            tenant: claims.tenant,
            campaign: claims.campaign,
            message: claims.message,
            recipient: claims.recipient,
            link: claims.link,
            target: claims.target,
            ip: None,
            geo: None,
            asn: None,
            ua: None,
            client: None,
            class: Class::HUMAN,
            class_reason,
            certainty: Certainty::Certain,
            first: false,
            dnt: false,
            gpc: false,
            head: false,
            self_open: false,
            rate_limited: false,
            not_tracked: None,
            ids: Vec::new(),
            node,
        }
    }

    /// The record that tells the upstream that events it may already have were a
    /// machine's: `ids` now carry `class` for `reason`.
    pub fn reclassify(
        id: EventId,
        ts: u64,
        of: &Event,
        ids: Vec<EventId>,
        class: Class,
        reason: Arc<str>,
        certainty: Certainty,
    ) -> Event {
        let claims = Claims {
            // Its subject is the events' own: erasure and export reach it too.
            recipient: of.recipient.clone(),
            ..Claims::new(
                Kind::Click,
                of.tenant.clone(),
                of.campaign.clone(),
                of.message.clone(),
            )
        };
        let mut event = Event::of_claims(claims, id, ts, reason, of.node.clone());
        event.kind = EventKind::Reclassify;
        event.class = class;
        event.certainty = certainty;
        event.ids = ids;
        event
    }

    /// The record that tells the upstream a recipient's data was erased here (not a
    /// hit: the class fields only keep the schema uniform).
    pub fn erasure(id: EventId, ts: u64, tenant: &str, recipient: &str, node: Arc<str>) -> Event {
        let mut event = Event::of_claims(
            Claims {
                recipient: Some(recipient.to_owned()),
                ..Claims::new(Kind::Open, tenant, "", "")
            },
            id,
            ts,
            Arc::from("erasure_record"),
            node,
        );
        event.kind = EventKind::Erasure;
        event
    }

    /// A small first open of message `m{n}` for tests and benches.
    #[doc(hidden)]
    pub fn sample(n: u128, ts: u64) -> Event {
        let claims = Claims {
            kind: Kind::Open,
            tenant: "t".into(),
            campaign: "c".into(),
            message: format!("m{n}"),
            recipient: None,
            link: 0,
            target: None,
            expires_at: None,
            sent_at: None,
        };
        let mut event = Event::of_claims(
            claims,
            EventId(n),
            ts,
            Arc::from("no_signal"),
            Arc::from("n"),
        );
        event.first = true;
        event
    }
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
    /// Earlier events (`ids`) were a machine's: the receiver should relabel them.
    Reclassify,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Tracked(kind) => kind.as_str(),
            EventKind::Erasure => "erasure",
            EventKind::Reclassify => "reclassify",
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
    /// The unix milliseconds the id was made at (its leading 48 bits).
    pub fn timestamp_ms(self) -> u64 {
        (self.0 >> LOW_BITS) as u64
    }

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

/// Bits of an id below the millisecond time.
const LOW_BITS: u32 = 80;
const LOW_MASK: u128 = (1 << LOW_BITS) - 1;

/// Hands out [`EventId`]s for one process: 48 bits of unix milliseconds, then 80 bits
/// that are `offset + sequence` modulo 2^80, where `offset` is drawn when the process
/// starts (rand's thread-local CSPRNG, seeded by the operating system) and `sequence` counts the
/// ids this process handed out.
///
/// Within a process the low 80 bits never repeat (2^80 ids would take 38 million
/// years at a billion a second), so ids are unique whatever the clock does. Two
/// processes can only produce the same low bits when their ranges
/// `[offset, offset + count)` overlap, which for random offsets has probability at
/// most `(count_a + count_b) / 2^80`; summed over every pair of `P` process starts
/// that handed out `N` ids in all, a collision anywhere in the fleet has probability
/// at most `(P - 1) * N / 2^80` (README, "The event"), before even asking that the
/// two ids fall in the same millisecond. The counter is one atomic add: no lock on
/// the request path.
#[derive(Debug)]
pub struct IdGenerator {
    offset: u128,
    sequence: AtomicU64,
}

impl IdGenerator {
    pub fn new() -> IdGenerator {
        IdGenerator::with_offset(rand::random::<u128>())
    }

    /// A generator whose low bits start at `offset` (tests pick it to reach the wrap).
    pub fn with_offset(offset: u128) -> IdGenerator {
        IdGenerator {
            offset: offset & LOW_MASK,
            sequence: AtomicU64::new(0),
        }
    }

    pub fn next(&self, ts_ms: u64) -> EventId {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let low = self.offset.wrapping_add(u128::from(sequence)) & LOW_MASK;
        EventId((u128::from(ts_ms & 0xffff_ffff_ffff) << LOW_BITS) | low)
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
        let ids = IdGenerator::with_offset(7);
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
    fn ids_keep_the_time_in_front_and_wrap_the_low_bits_without_touching_it() {
        let ids = IdGenerator::with_offset(LOW_MASK - 1);
        let last = ids.next(42);
        let wrapped = ids.next(42);
        assert_eq!(last.0 >> LOW_BITS, 42);
        assert_eq!(
            wrapped.0 >> LOW_BITS,
            42,
            "the wrap never carries into the time"
        );
        assert_eq!(last.0 & LOW_MASK, LOW_MASK - 1);
        assert_eq!(wrapped.0 & LOW_MASK, LOW_MASK);
        assert_eq!(ids.next(42).0 & LOW_MASK, 0);
        let later = ids.next(43);
        assert!(
            later > last && later > wrapped,
            "a later millisecond sorts after"
        );
        assert_eq!(later.to_string().len(), 26);
    }

    #[test]
    fn two_processes_draw_different_offsets() {
        // 80 random bits each: equal offsets would be a 2^-80 event, or a broken RNG.
        let (a, b) = (IdGenerator::new(), IdGenerator::new());
        assert_ne!(a.offset, b.offset);
        assert!(a.offset <= LOW_MASK && b.offset <= LOW_MASK);
        let (x, y) = (a.next(5), b.next(5));
        assert_ne!(x, y);
        assert_eq!(x.0 >> LOW_BITS, 5);
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
            certainty: Certainty::Certain,
            first: true,
            dnt: false,
            gpc: true,
            head: false,
            self_open: false,
            rate_limited: false,
            not_tracked: None,
            ids: Vec::new(),
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
        assert_eq!(json["certainty"], "certain");
        assert_eq!(json["first"], true);
    }
}
