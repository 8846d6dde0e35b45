//! The event's wire form: its JSON line, written once, by hand, byte for byte what
//! `serde_json` writes for [`Event`] (the format the README documents and every sink
//! sends; the tests and the `segment_decode` fuzz check hold the two equal).
//!
//! Why by hand: the serde path escapes every key and value byte by byte through a
//! generic writer and formats the place's coordinates on every event; it was the
//! largest single cost of a hit (about 9,000 of 58,000 instructions, callgrind).
//! Here keys are literals, strings are scanned eight bytes at a time for the few
//! bytes JSON escapes, integers go through `itoa`, and the parts shared between
//! events (the place, the user agent and what it tells) are encoded once per
//! distinct value and kept in small per-thread caches keyed by the value's shared
//! allocation.

use std::cell::RefCell;
use std::sync::Arc;

use crate::enrich::classify::Class;
use crate::enrich::geo::{Asn, Geo};
use crate::enrich::ua::Client;
use crate::event::Event;

/// Appends `event`'s JSON (no newline) to `out`.
pub fn write_event(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"v\":");
    write_u64(out, u64::from(event.v));
    out.extend_from_slice(b",\"id\":\"");
    out.extend_from_slice(&event.id.to_bytes());
    out.extend_from_slice(b"\",\"ts\":");
    write_u64(out, event.ts);
    out.extend_from_slice(b",\"kind\":");
    write_str(out, event.kind.as_str());
    out.extend_from_slice(b",\"tenant\":");
    write_str(out, &event.tenant);
    out.extend_from_slice(b",\"campaign\":");
    write_str(out, &event.campaign);
    out.extend_from_slice(b",\"message\":");
    write_str(out, &event.message);
    if let Some(recipient) = &event.recipient {
        out.extend_from_slice(b",\"recipient\":");
        write_str(out, recipient);
    }
    out.extend_from_slice(b",\"link\":");
    write_u64(out, u64::from(event.link));
    if let Some(target) = &event.target {
        out.extend_from_slice(b",\"target\":");
        write_str(out, target);
    }
    out.extend_from_slice(b",\"ip\":");
    write_opt_str(out, event.ip.as_deref());
    if let Some(geo) = &event.geo {
        out.extend_from_slice(b",\"geo\":");
        GEO_JSON.with_borrow_mut(|cache| out.extend_from_slice(cache.get(geo)));
    }
    if let Some(asn) = &event.asn {
        out.extend_from_slice(b",\"asn\":");
        write_asn(out, asn);
    }
    out.extend_from_slice(b",\"ua\":");
    match &event.ua {
        Some(ua) => UA_JSON.with_borrow_mut(|cache| out.extend_from_slice(cache.get(ua))),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(client) = &event.client {
        out.extend_from_slice(b",\"client\":");
        CLIENT_JSON.with_borrow_mut(|cache| out.extend_from_slice(cache.get(client)));
    }
    out.extend_from_slice(b",\"class\":");
    write_class(out, &event.class);
    out.extend_from_slice(b",\"class_reason\":");
    write_str(out, &event.class_reason);
    out.extend_from_slice(b",\"certainty\":\"");
    out.extend_from_slice(event.certainty.as_str().as_bytes());
    out.push(b'"');
    out.extend_from_slice(b",\"first\":");
    write_bool(out, event.first);
    out.extend_from_slice(b",\"dnt\":");
    write_bool(out, event.dnt);
    out.extend_from_slice(b",\"gpc\":");
    write_bool(out, event.gpc);
    out.extend_from_slice(b",\"head\":");
    write_bool(out, event.head);
    out.extend_from_slice(b",\"self\":");
    write_bool(out, event.self_open);
    if event.rate_limited {
        out.extend_from_slice(b",\"rate_limited\":true");
    }
    if let Some(reason) = event.not_tracked {
        out.extend_from_slice(b",\"not_tracked\":");
        write_str(out, reason);
    }
    if let Some((first, rest)) = event.ids.split_first() {
        out.extend_from_slice(b",\"ids\":[\"");
        out.extend_from_slice(&first.to_bytes());
        for id in rest {
            out.extend_from_slice(b"\",\"");
            out.extend_from_slice(&id.to_bytes());
        }
        out.extend_from_slice(b"\"]");
    }
    out.extend_from_slice(b",\"node\":");
    write_str(out, &event.node);
    out.push(b'}');
}

fn write_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn write_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn write_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_asn(out: &mut Vec<u8>, asn: &Asn) {
    out.extend_from_slice(b"{\"number\":");
    write_u64(out, u64::from(asn.number));
    if let Some(org) = &asn.org {
        out.extend_from_slice(b",\"org\":");
        write_str(out, org);
    }
    out.push(b'}');
}

fn write_client(out: &mut Vec<u8>, client: &Client) {
    out.push(b'{');
    let mut first = true;
    for (key, value) in [
        (&b"\"browser\":"[..], &client.browser),
        (b"\"version\":", &client.version),
        (b"\"os\":", &client.os),
        (b"\"os_version\":", &client.os_version),
        (b"\"category\":", &client.category),
        (b"\"vendor\":", &client.vendor),
    ] {
        if value.is_empty() {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(key);
        write_str(out, value);
    }
    out.push(b'}');
}

fn write_class(out: &mut Vec<u8>, class: &Class) {
    out.push(b'"');
    write_str_contents(out, class.kind.as_str());
    if let Some(who) = &class.who {
        out.push(b':');
        write_str_contents(out, who);
    }
    out.push(b'"');
}

/// A JSON string: quoted, with `"`, `\` and control characters escaped as
/// `serde_json` does (short forms for \b \t \n \f \r, `\u00xx` with lower-case hex
/// for the rest); everything else, UTF-8 included, as it is.
pub fn write_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    write_str_contents(out, value);
    out.push(b'"');
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` is below 0x20, a `"` or a `\`. Each test is the
/// classic "has a byte less than n" bit trick (exact for n <= 128): a byte equal to
/// `c` is a zero byte of `word ^ c*LOW_BITS`.
fn needs_escape(word: u64) -> bool {
    let below = |w: u64, n: u64| w.wrapping_sub(LOW_BITS * n) & !w & HIGH_BITS;
    let control = below(word, 0x20);
    let quote = below(word ^ (LOW_BITS * u64::from(b'"')), 1);
    let backslash = below(word ^ (LOW_BITS * u64::from(b'\\')), 1);
    (control | quote | backslash) != 0
}

fn write_str_contents(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    // Skip whole words that need nothing; most strings never leave this loop.
    let mut clean = 0;
    while clean + 8 <= bytes.len() {
        let word = u64::from_le_bytes(
            bytes[clean..clean + 8]
                .try_into()
                .expect("a slice of eight bytes"),
        );
        if needs_escape(word) {
            break;
        }
        clean += 8;
    }
    let rest = &bytes[clean..];
    if rest.len() < 8 {
        // The tail as one word, padded with spaces (which need no escape).
        let mut word = [b' '; 8];
        word[..rest.len()].copy_from_slice(rest);
        if !needs_escape(u64::from_le_bytes(word)) {
            out.extend_from_slice(bytes);
            return;
        }
    }
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate().skip(clean) {
        let escape = ESCAPE[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..index]);
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// For each byte: 0 when it stands for itself, else the letter after the backslash
/// (`u` for the `\u00xx` form). The same table as `serde_json`'s.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Slots of each per-thread cache of encoded parts. Places come from the GeoIP
/// reader's record cache and agents from the user-agent cache, so a few hundred
/// distinct ones cover the hot set.
const CACHE_SLOTS: usize = 512;

thread_local! {
    static GEO_JSON: RefCell<FragmentCache<Geo>> =
        RefCell::new(FragmentCache::new(CACHE_SLOTS, |geo: &Geo| {
            serde_json::to_vec(geo).expect("serializing a plain struct into a Vec cannot fail")
        }));
    static UA_JSON: RefCell<FragmentCache<str>> =
        RefCell::new(FragmentCache::new(CACHE_SLOTS, |ua: &str| {
            let mut out = Vec::with_capacity(ua.len() + 2);
            write_str(&mut out, ua);
            out
        }));
    static CLIENT_JSON: RefCell<FragmentCache<Client>> =
        RefCell::new(FragmentCache::new(CACHE_SLOTS, |client: &Client| {
            let mut out = Vec::with_capacity(96);
            write_client(&mut out, client);
            out
        }));
}

/// A shared value and its JSON.
type Fragment<T> = (Arc<T>, Box<[u8]>);

/// A direct-mapped cache of the JSON of shared values, keyed by their allocation.
/// Each entry keeps a clone of the `Arc`, so the allocation cannot be freed and
/// reused for another value while the entry exists: a pointer match is a match.
struct FragmentCache<T: ?Sized> {
    slots: Vec<Option<Fragment<T>>>,
    encode: fn(&T) -> Vec<u8>,
}

impl<T: ?Sized> FragmentCache<T> {
    fn new(slots: usize, encode: fn(&T) -> Vec<u8>) -> FragmentCache<T> {
        FragmentCache {
            slots: (0..slots).map(|_| None).collect(),
            encode,
        }
    }

    fn get(&mut self, value: &Arc<T>) -> &[u8] {
        // Fibonacci hashing of the address; allocations are 16-byte aligned.
        let address = Arc::as_ptr(value).cast::<u8>() as usize as u64;
        let index =
            ((address >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % self.slots.len();
        let slot = &mut self.slots[index];
        let hit = matches!(slot, Some((cached, _)) if Arc::ptr_eq(cached, value));
        if !hit {
            let json = (self.encode)(value);
            *slot = Some((value.clone(), json.into_boxed_slice()));
        }
        match slot {
            Some((_, json)) => json,
            None => unreachable!("the slot was just filled"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::classify::ClassKind;
    use crate::enrich::verdict::Certainty;
    use crate::event::{EventId, EventKind, SCHEMA_VERSION};
    use crate::token::{Claims, Kind};
    use proptest::prelude::*;

    fn event(text: &str, lat: f64, present: bool) -> Event {
        Event {
            v: SCHEMA_VERSION,
            id: EventId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            ts: 1_795_435_650_917,
            kind: EventKind::Tracked(Kind::Click),
            tenant: text.into(),
            campaign: format!("c{text}"),
            message: "msg-42".into(),
            recipient: present.then(|| text.to_owned()),
            link: 7,
            target: present.then(|| format!("https://shop.example/{text}")),
            ip: present.then(|| "81.2.69.0".into()),
            geo: present.then(|| {
                Arc::new(Geo {
                    country: Some("CH".into()),
                    region: Some(text.into()),
                    city: Some("Zürich".into()),
                    lat: Some(lat),
                    lon: Some(-lat),
                    tz: None,
                })
            }),
            asn: present.then(|| {
                Arc::new(Asn {
                    number: 64_500,
                    org: Some(text.into()),
                })
            }),
            ua: present.then(|| Arc::from(text)),
            client: present.then(|| {
                Arc::new(Client {
                    browser: "Webview".into(),
                    os: text.into(),
                    ..Client::default()
                })
            }),
            class: Class::new(ClassKind::LinkScanner, text),
            class_reason: text.into(),
            certainty: if present {
                Certainty::Certain
            } else {
                Certainty::Probable
            },
            first: present,
            dnt: !present,
            gpc: present,
            head: false,
            self_open: true,
            rate_limited: present,
            not_tracked: None,
            ids: Vec::new(),
            node: "edge-1".into(),
        }
    }

    fn same_as_serde(event: &Event) {
        let mut ours = Vec::new();
        write_event(event, &mut ours);
        let theirs = serde_json::to_vec(event).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }

    #[test]
    fn events_encode_exactly_as_serde_json_does() {
        for text in [
            "",
            "acme",
            "quote\" backslash\\ tab\t nl\n cr\r bs\u{8} ff\u{c} nul\u{0} esc\u{1b} del\u{7f}",
            "Zürich 東京 🦀 and a long tail of plain ASCII to cross several words",
            "\u{1f}\u{1}\"\\12345678\"\"\"\"\"\"\"\"",
        ] {
            for present in [true, false] {
                same_as_serde(&event(text, 47.4, present));
            }
        }
        // An escape at every position of strings around the word size.
        for len in 0..20 {
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{1}'] {
                    let mut text: Vec<char> = std::iter::repeat_n('a', len).collect();
                    text[at] = special;
                    same_as_serde(&event(&text.into_iter().collect::<String>(), 1.0, true));
                }
            }
        }
        for lat in [0.0, -0.0, 1e-7, 1e300, f64::NAN, f64::INFINITY, 47.0] {
            same_as_serde(&event("x", lat, true));
        }
    }

    #[test]
    fn every_kind_and_its_minimal_forms_encode_as_serde_json_does() {
        let node: Arc<str> = Arc::from("edge-1");
        for kind in Kind::ALL {
            let mut tracked = event("acme", 47.4, true);
            tracked.kind = EventKind::Tracked(kind);
            same_as_serde(&tracked);
        }
        // A trap hit: the client's facts, no recipient or target.
        let trap = Event::of_claims(
            Claims::new(Kind::Trap, "t", "c", "m"),
            EventId(1),
            2,
            Arc::from("trap_link"),
            node.clone(),
        );
        same_as_serde(&trap);
        // An unsubscribe whose tracking was refused: ids, time and the reason only.
        for reason in ["opted_out", "suppressed", "do_not_track", "self_open"] {
            let mut untracked = Event::of_claims(
                Claims {
                    recipient: Some("r\"1".into()),
                    ..Claims::new(Kind::Unsubscribe, "t", "c", "m")
                },
                EventId(u128::MAX),
                0,
                Arc::from("not_tracked"),
                node.clone(),
            );
            untracked.not_tracked = Some(reason);
            untracked.head = true;
            same_as_serde(&untracked);
        }
        // Reclassify events name one or several earlier ids.
        let of = event("acme", 1.0, true);
        for count in [1, 2, 17] {
            let ids = (0..count)
                .map(|n| EventId(n * 0x1234_5678_9abc_def0))
                .collect();
            let reclassify = Event::reclassify(
                EventId(9),
                3,
                &of,
                ids,
                Class::new(ClassKind::LinkScanner, "burst"),
                Arc::from("burst"),
                Certainty::Probable,
            );
            same_as_serde(&reclassify);
        }
        same_as_serde(&Event::erasure(EventId(5), 6, "t", "r@x", node));
    }

    #[test]
    fn a_cached_place_is_the_same_record_not_an_equal_address() {
        let mut cache = FragmentCache::new(1, |geo: &Geo| serde_json::to_vec(geo).unwrap());
        let a = Arc::new(Geo {
            city: Some("A".into()),
            ..Geo::default()
        });
        assert_eq!(cache.get(&a), br#"{"city":"A"}"#);
        let b = Arc::new(Geo {
            city: Some("B".into()),
            ..Geo::default()
        });
        // One slot: B replaces A, and A is encoded again when it comes back.
        assert_eq!(cache.get(&b), br#"{"city":"B"}"#);
        assert_eq!(cache.get(&a), br#"{"city":"A"}"#);
    }

    proptest! {
        #[test]
        fn any_text_encodes_as_serde_json_does(
            text in any::<String>(),
            lat in any::<f64>(),
            present: bool,
            ids in proptest::collection::vec(any::<u128>(), 0..4),
        ) {
            let mut event = event(&text, lat, present);
            event.not_tracked = present.then_some("opted_out");
            event.ids = ids.into_iter().map(EventId).collect();
            let mut ours = Vec::new();
            write_event(&event, &mut ours);
            prop_assert_eq!(ours, serde_json::to_vec(&event).unwrap());
        }

        #[test]
        fn the_word_test_finds_exactly_the_bytes_to_escape(word in any::<u64>()) {
            let bytes = word.to_le_bytes();
            prop_assert_eq!(
                needs_escape(word),
                bytes.iter().any(|b| ESCAPE[usize::from(*b)] != 0)
            );
        }
    }
}
