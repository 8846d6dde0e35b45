//! Data-subject requests over what the edge still holds: erase or export one
//! recipient's events, in the spool (not yet forwarded) and in the dead letters.
//!
//! A recipient is matched by tenant and by the event's `recipient`, or its `message`
//! when the token carried no recipient (the suppression rule). The spool rewrites its
//! segments without the matched records and keeps its counts; this module only knows
//! who the subject is. Called from the admin API, never on the request path.

use std::sync::Arc;

use serde::Deserialize;

use crate::spool::{Erased, Spool};
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

/// Removes every event of the subject from the spool (in-flight batches included)
/// and the dead letters; see [`Spool::erase_where`] for the ordering it guarantees.
pub async fn erase(
    spool: &Arc<Spool>,
    tenant: &str,
    recipient: &str,
) -> Result<Erased, StoreError> {
    let (tenant, recipient) = (tenant.to_owned(), recipient.to_owned());
    spool
        .erase_where(move |json| belongs(json, &tenant, &recipient))
        .await
}

/// Hands the subject's events, as NDJSON chunks, to `emit` (oldest first, spool then
/// dead letters); stops early when `emit` returns false. Returns the event count.
/// Blocking I/O.
pub fn export(
    spool: &Spool,
    tenant: &str,
    recipient: &str,
    emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<u64, StoreError> {
    spool.export_where(|json| belongs(json, tenant, recipient), emit)
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
