//! Relabelling events the edge still holds: a burst or a trap hit shows earlier
//! events of a message to be a machine's. Those still in the spool get their new
//! class before they leave (with `classify.hold_back_ms`, all of them); those that
//! may have left already (sent, or in a batch being sent) are named in a
//! `reclassify` event, which the upstream applies to what it has.
//!
//! Runs on the writer thread, after the events it names were committed (they were
//! queued before it). Looks at the newest segments first and stops at segments older
//! than the oldest id's time (ids start with their time).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Spool;
use crate::enrich::verdict::Class;
use crate::event::{Event, EventId};
use crate::metrics as m;
use crate::record;
use crate::store::StoreError;

/// Events to relabel, and the `reclassify` event for those that may have left.
#[derive(Debug)]
pub struct Relabel {
    pub ids: Vec<EventId>,
    pub class: Class,
    pub reason: Arc<str>,
    /// Sent with `ids` set to the events that may have left, if any did.
    pub reclassify: Event,
}

impl Spool {
    /// Relabels the listed events the spool holds; returns the `reclassify` event
    /// to append when some may have left already.
    pub(super) fn relabel(&self, relabel: &Relabel) -> Result<Option<Event>, StoreError> {
        let Some(oldest) = relabel.ids.iter().map(|id| id.timestamp_ms()).min() else {
            return Ok(None);
        };
        let class = relabel.class.to_string();
        let mut pending: BTreeSet<String> = relabel.ids.iter().map(EventId::to_string).collect();
        let mut may_have_left = Vec::new();
        let mut rewritten = 0;
        for entry in self.store.iter_newest_first() {
            if pending.is_empty() {
                break;
            }
            let (seq, bytes) = entry?;
            let Ok(segment) = record::decode(&bytes) else {
                continue;
            };
            if segment.newest_ts < oldest {
                break;
            }
            if !pending.iter().any(|id| contains(&bytes, id.as_bytes())) {
                continue;
            }
            let guard = self.guard();
            // Read again under the guard: a lease or an erasure may have changed it.
            let Some(current) = self.store.get(seq)? else {
                continue;
            };
            let mut found = Vec::new();
            let changed = record::rewrite(&current, |json| {
                let id = pending.iter().find(|id| contains(json, id.as_bytes()))?;
                let new = set_string_field(json, "class", &class)
                    .and_then(|json| set_string_field(&json, "class_reason", &relabel.reason))?;
                found.push(id.clone());
                Some(new)
            });
            let Ok(Some(new)) = changed else {
                continue;
            };
            let (old_len, new_len) = (current.len() as u64, new.len() as u64);
            if self.store.replace(seq, new)?.is_none() {
                continue;
            }
            self.counts.bytes.fetch_add(new_len, Ordering::Relaxed);
            self.counts.bytes.fetch_sub(old_len, Ordering::Relaxed);
            let leased = guard.leased.contains(&seq);
            if leased {
                // Its batch may be on the wire: the lease reads it again before a
                // retry, and the upstream hears of it either way.
                self.epoch.fetch_add(1, Ordering::Release);
            } else {
                rewritten += found.len() as u64;
            }
            for id in found {
                pending.remove(&id);
                if leased {
                    may_have_left.push(id);
                }
            }
        }
        may_have_left.extend(pending);
        metrics::counter!(m::CLASSIFY_RELABELLED_EVENTS_TOTAL, "outcome" => "relabelled")
            .increment(rewritten);
        if may_have_left.is_empty() {
            return Ok(None);
        }
        metrics::counter!(m::CLASSIFY_RELABELLED_EVENTS_TOTAL, "outcome" => "reclassify")
            .increment(may_have_left.len() as u64);
        let mut reclassify = relabel.reclassify.clone();
        reclassify.ids = relabel
            .ids
            .iter()
            .filter(|id| may_have_left.contains(&id.to_string()))
            .copied()
            .collect();
        Ok(Some(reclassify))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The JSON line with its top-level string field `key` set to `value`, every other
/// byte kept (field order and encoding as the writer made them); `None` if there is
/// no such field.
fn set_string_field(json: &[u8], key: &str, value: &str) -> Option<Vec<u8>> {
    let pattern = format!("\"{key}\":\"");
    let start = json
        .windows(pattern.len())
        .position(|window| window == pattern.as_bytes())?
        + pattern.len();
    let mut end = start;
    while end < json.len() {
        match json[end] {
            b'\\' => end += 2,
            b'"' => break,
            _ => end += 1,
        }
    }
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
}
