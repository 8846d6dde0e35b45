//! Data-subject requests over what the edge still holds: erase or export one
//! recipient's events, in the spool (not yet forwarded) and in the dead letters.
//!
//! A recipient is matched by tenant and by the event's `recipient`, or its `message`
//! when the token carried no recipient (the suppression rule). Segments are rewritten
//! without the matched records, or removed when nothing else is left; counts stay
//! exact because every store call reports what was really there. Runs on the
//! blocking pool (called from the admin API), never on the request path.

use serde::Deserialize;

use crate::record::{self, RecordRef, SegmentWriter};
use crate::spool::Spool;
use crate::store::StoreError;

#[derive(Deserialize)]
struct SubjectFields<'a> {
    #[serde(borrow)]
    tenant: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    recipient: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    message: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    kind: std::borrow::Cow<'a, str>,
}

/// Whether an event JSON line belongs to the subject. Erasure records themselves
/// are kept: they must reach the upstream.
fn belongs(json: &[u8], tenant: &str, recipient: &str) -> bool {
    let Ok(fields) = serde_json::from_slice::<SubjectFields>(json) else {
        return false;
    };
    fields.kind != "erasure"
        && fields.tenant == tenant
        && match &fields.recipient {
            Some(r) => r == recipient,
            None => fields.message == recipient,
        }
}

/// What an erasure removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub events: u64,
    pub dead_letters: u64,
}

/// The segment without the subject's records: `None` if none matched, `Some(None)`
/// if nothing is left, `Some(Some(bytes))` otherwise. Unreadable segments are left.
fn without(segment: &[u8], tenant: &str, recipient: &str) -> Option<Option<Vec<u8>>> {
    let records = record::decode(segment).and_then(|s| s.records()).ok()?;
    let keep: Vec<RecordRef> = records
        .iter()
        .copied()
        .filter(|r| !belongs(r.json, tenant, recipient))
        .collect();
    if keep.len() == records.len() {
        return None;
    }
    if keep.is_empty() {
        return Some(None);
    }
    let mut writer = SegmentWriter::new();
    for record in keep {
        writer.push_raw(record);
    }
    Some(Some(writer.finish()))
}

/// Removes every event of the subject from the spool and the dead letters.
pub fn erase(spool: &Spool, tenant: &str, recipient: &str) -> Result<Erased, StoreError> {
    let store = &spool.store;
    let mut erased = Erased::default();
    for entry in store.iter() {
        let (seq, segment) = entry?;
        match without(&segment, tenant, recipient) {
            None => {}
            Some(None) => {
                let removed = store.remove(&[seq])?;
                erased.events += spool.note_removed(&removed);
            }
            Some(Some(rest)) => {
                let new_len = record::count_of(&rest);
                if let Some(old) = store.replace(seq, rest.clone())? {
                    erased.events += record::count_of(&old).saturating_sub(new_len);
                    spool.note_rewritten(&old, &rest);
                }
            }
        }
    }
    for entry in store.dead_letters() {
        let (seq, segment) = entry?;
        match without(&segment, tenant, recipient) {
            None => {}
            Some(None) => {
                let removed = store.remove_dead_letters(&[seq])?;
                let events: u64 = removed.iter().map(|v| record::count_of(v)).sum();
                spool.note_dead_letters_removed(events);
                erased.dead_letters += events;
            }
            Some(Some(rest)) => {
                let new_len = record::count_of(&rest);
                if let Some(old) = store.replace_dead_letter(seq, rest)? {
                    let events = record::count_of(&old).saturating_sub(new_len);
                    spool.note_dead_letters_removed(events);
                    erased.dead_letters += events;
                }
            }
        }
    }
    store.flush()?;
    Ok(erased)
}

/// Hands the subject's events, as NDJSON chunks, to `emit` (oldest first, spool then
/// dead letters); stops early when `emit` returns false. Returns the event count.
pub fn export(
    spool: &Spool,
    tenant: &str,
    recipient: &str,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<u64, StoreError> {
    let mut exported = 0;
    let segments = spool.store.iter().chain(spool.store.dead_letters());
    for entry in segments {
        let (_, segment) = entry?;
        let Ok(records) = record::decode(&segment).and_then(|s| s.records()) else {
            continue;
        };
        let mut chunk = Vec::new();
        for record in records {
            if belongs(record.json, tenant, recipient) {
                chunk.extend_from_slice(record.json);
                chunk.push(b'\n');
                exported += 1;
            }
        }
        if !chunk.is_empty() && !emit(chunk) {
            break;
        }
    }
    Ok(exported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_by_recipient_or_else_message() {
        let line = br#"{"kind":"open","tenant":"acme","recipient":"r1","message":"m1"}"#;
        assert!(belongs(line, "acme", "r1"));
        assert!(
            !belongs(line, "acme", "m1"),
            "a recipient id wins over the message id"
        );
        assert!(!belongs(line, "other", "r1"));
        let no_recipient = br#"{"kind":"open","tenant":"acme","message":"m1"}"#;
        assert!(belongs(no_recipient, "acme", "m1"));
        let erasure = br#"{"kind":"erasure","tenant":"acme","recipient":"r1","message":""}"#;
        assert!(!belongs(erasure, "acme", "r1"), "erasure records travel on");
        assert!(!belongs(b"not json", "acme", "r1"));
    }
}
