//! Relabelling events the edge still holds: a burst or a trap hit shows earlier
//! events of a message to be a machine's. Those still in the spool get their new
//! class before they leave (with `classify.hold_back_ms`, all of them); those that
//! may have left already (sent, or in a batch being sent) are named in a
//! `reclassify` event, which the upstream applies to what it has.
//!
//! Runs on the writer thread. Looks at the newest segments first, skips segments
//! whose time range holds none of the ids (ids start with their event's time), stops
//! at segments older than the oldest id, and reads at most [`MAX_SCAN_BYTES`]: what
//! it did not find is reported missing, never waited for.

use std::sync::atomic::Ordering;

use memchr::memmem;

use super::Spool;
use crate::event::{Event, EventId};
use crate::metrics as m;
use crate::record;
use crate::store::StoreError;

/// Spool bytes one relabel may read: a bound on the writer's time, however large
/// the backlog (an upstream outage, a long hold-back).
pub const MAX_SCAN_BYTES: u64 = 32 << 20;

/// Events to relabel, and the `reclassify` event for those that may have left.
#[derive(Debug)]
pub struct Relabel {
    pub ids: Vec<EventId>,
    /// Sent with `ids` set to the events that may have left, if any did; its
    /// `class`, `class_reason` and `certainty` are the new label.
    pub reclassify: Event,
}

/// Where a relabel's events were.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Rewritten in a leased segment: its batch may be on the wire.
    pub leased: Vec<EventId>,
    /// Not in the spool: forwarded already, never stored, not yet committed, or
    /// past the scan bound.
    pub missing: Vec<EventId>,
}

impl Spool {
    /// Relabels the listed events the spool holds, if they are still labelled
    /// `human` (the spool holds the newest label); says which may have left.
    pub(super) fn relabel(&self, relabel: &Relabel) -> Result<Found, StoreError> {
        let times = relabel.ids.iter().map(|id| id.timestamp_ms());
        let (Some(oldest), Some(newest)) = (times.clone().min(), times.max()) else {
            return Ok(Found::default());
        };
        let label = &relabel.reclassify;
        let class = label.class.to_string();
        let mut pending: Vec<(EventId, String)> =
            relabel.ids.iter().map(|id| (*id, id.to_string())).collect();
        let mut found = Found::default();
        let mut rewritten = 0;
        let mut scanned = 0;
        for entry in self.store.iter_newest_first() {
            if pending.is_empty() || scanned > MAX_SCAN_BYTES {
                break;
            }
            let (seq, bytes) = entry?;
            let Ok(segment) = record::decode(&bytes) else {
                continue;
            };
            if segment.newest_ts < oldest {
                break;
            }
            if segment.oldest_ts > newest {
                continue;
            }
            let Ok(body) = segment.body() else {
                continue;
            };
            scanned += body.len() as u64;
            if !pending
                .iter()
                .any(|(_, text)| memmem::find(body, text.as_bytes()).is_some())
            {
                continue;
            }
            let guard = self.guard();
            // Read again under the guard: a lease or an erasure may have changed it.
            let Some(current) = self.store.get(seq)? else {
                continue;
            };
            let mut here = Vec::new();
            let changed = record::rewrite(&current, |json| {
                let own = own_id(json)?;
                let index = pending
                    .iter()
                    .position(|(_, text)| text.as_bytes() == own)?;
                let (id, _) = pending.swap_remove(index);
                // Relabelled already (a burst, then a trap) or a machine's all along.
                if string_field(json, "class")? != b"human" {
                    return None;
                }
                let new = set_string_field(json, "class", &class)
                    .and_then(|json| set_string_field(&json, "class_reason", &label.class_reason))
                    .and_then(|json| {
                        set_string_field(&json, "certainty", label.certainty.as_str())
                    })?;
                here.push(id);
                Some(new)
            });
            let Ok(Some(new)) = changed else {
                continue;
            };
            let (old_len, new_len) = (current.len() as u64, new.len() as u64);
            if self.store.replace(seq, new)?.is_none() {
                // Gone meanwhile (forwarded, erased): those events may have left.
                found.missing.append(&mut here);
                continue;
            }
            self.counts.bytes.fetch_add(new_len, Ordering::Relaxed);
            self.counts.bytes.fetch_sub(old_len, Ordering::Relaxed);
            if guard.leased.contains(&seq) {
                // Its batch may be on the wire: the lease reads it again before a
                // retry, and the upstream hears of it either way.
                self.epoch.fetch_add(1, Ordering::Release);
                found.leased.append(&mut here);
            } else {
                rewritten += here.len() as u64;
            }
        }
        found.missing.extend(pending.into_iter().map(|(id, _)| id));
        metrics::counter!(m::CLASSIFY_RELABELLED_EVENTS_TOTAL, "outcome" => "relabelled")
            .increment(rewritten);
        Ok(found)
    }
}

/// The event's own id: its second field, right after the schema version (an id
/// anywhere else, such as in a `reclassify` event's `ids` or in a user agent, is
/// another event's or a coincidence).
fn own_id(json: &[u8]) -> Option<&[u8]> {
    let comma = memchr::memchr(b',', json)?;
    json.get(comma..)?.strip_prefix(br#","id":""#)?.get(..26)
}

/// The raw (still escaped) value of the top-level string field `key`.
fn string_field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let (start, end) = string_span(json, key)?;
    json.get(start..end)
}

/// Where the value of string field `key` lies (between its quotes); the first match,
/// which the callers check is the top-level field.
fn string_span(json: &[u8], key: &str) -> Option<(usize, usize)> {
    let pattern = format!("\"{key}\":\"");
    let start = memmem::find(json, pattern.as_bytes())? + pattern.len();
    let mut end = start;
    while end < json.len() {
        match json[end] {
            b'\\' => end += 2,
            b'"' => return Some((start, end)),
            _ => end += 1,
        }
    }
    None
}

/// The JSON line with its top-level string field `key` set to `value`, every other
/// byte kept (field order and encoding as the writer made them); `None` if there is
/// no such field.
fn set_string_field(json: &[u8], key: &str, value: &str) -> Option<Vec<u8>> {
    let (start, end) = string_span(json, key)?;
    let encoded = serde_json::to_string(value).ok()?;
    let mut out = Vec::with_capacity(json.len() + encoded.len());
    out.extend_from_slice(&json[..start - 1]);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(json.get(end + 1..)?);
    // The first match must have been the top-level field (nested objects of the
    // event have no such key; checked rather than assumed).
    let check: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&out).ok()?;
    (check.get(key)?.as_str()? == value).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_field_is_replaced_and_nothing_else() {
        let line = br#"{"v":1,"id":"X","class":"human","class_reason":"no_signal","ua":"a \"q\" b","first":true}"#;
        let out = set_string_field(line, "class", "link_scanner:burst").unwrap();
        let out = set_string_field(&out, "class_reason", "click_burst").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"v":1,"id":"X","class":"link_scanner:burst","class_reason":"click_burst","ua":"a \"q\" b","first":true}"#
        );
        assert_eq!(set_string_field(line, "missing", "x"), None);
        assert_eq!(set_string_field(br#"{"first":true}"#, "first", "x"), None);
    }

    #[test]
    fn the_own_id_is_the_second_field_only() {
        let id = "01M844VQV5ABCDEFGHJKMNPQRS";
        let event = format!(r#"{{"v":1,"id":"{id}","ids":["01M844VQV5ABCDEFGHJKMNPQRT"]}}"#);
        assert_eq!(own_id(event.as_bytes()), Some(id.as_bytes()));
        let elsewhere = format!(r#"{{"v":1,"ua":"{id}","id":"x"}}"#);
        assert_eq!(own_id(elsewhere.as_bytes()), None);
        assert_eq!(own_id(br#"{"v":1,"id":"short"}"#), None);
        assert_eq!(
            string_field(br#"{"class":"bot","x":1}"#, "class"),
            Some(&b"bot"[..])
        );
    }
}
