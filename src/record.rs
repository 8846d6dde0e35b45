//! The stored record: how an [`Event`] sits in the spool.
//!
//! Layout: 1 byte format version ([`RECORD_VERSION`]), 8 bytes big-endian event time
//! (unix ms, so age checks and forward latency need no JSON parsing), then the event
//! as JSON — exactly the line the sinks send, so forwarding never re-encodes.

use crate::event::Event;

pub const RECORD_VERSION: u8 = 1;
const HEADER_LEN: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is shorter than its header")]
    Truncated,
    #[error("record format version {0} is not supported")]
    UnsupportedVersion(u8),
}

/// A decoded view of record bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub ts_ms: u64,
    pub json: &'a [u8],
}

pub fn encode(event: &Event) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(512);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&event.ts.to_be_bytes());
    serde_json::to_writer(&mut out, event)?;
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::Truncated);
    }
    if bytes[0] != RECORD_VERSION {
        return Err(RecordError::UnsupportedVersion(bytes[0]));
    }
    let ts_ms = u64::from_be_bytes(bytes[1..HEADER_LEN].try_into().expect("8 bytes"));
    Ok(RecordRef {
        ts_ms,
        json: &bytes[HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, SCHEMA_VERSION};
    use crate::token::Kind;

    #[test]
    fn round_trips_time_and_json() {
        let event = Event {
            v: SCHEMA_VERSION,
            id: EventId(7),
            ts: 1_795_000_000_123,
            kind: Kind::Open,
            tenant: "t".into(),
            campaign: "c".into(),
            message: "m".into(),
            recipient: None,
            link: 0,
            target: None,
            ip: None,
            ua: None,
            dnt: false,
            gpc: false,
            head: false,
            node: "n".into(),
        };
        let bytes = encode(&event).unwrap();
        let record = decode(&bytes).unwrap();
        assert_eq!(record.ts_ms, 1_795_000_000_123);
        let json: serde_json::Value = serde_json::from_slice(record.json).unwrap();
        assert_eq!(json["id"], "00000000000000000000000007");
    }

    #[test]
    fn refuses_short_and_unknown_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(RecordError::Truncated));
        assert_eq!(decode(&[9; 20]), Err(RecordError::UnsupportedVersion(9)));
    }
}
