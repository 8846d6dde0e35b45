//! How events sit in the spool: one *segment* per group commit.
//!
//! A segment is one storage value holding a whole batch, so a commit of a thousand
//! events is one write to the engine, not a thousand.
//!
//! ```text
//! segment = version:u8 (= 1) | count:u32 | oldest_ts:u64 | newest_ts:u64 | record*
//! record  = len:u32 | ts:u64 | json[len - 8]
//! ```
//!
//! Integers are big-endian; `ts` is the event time in unix ms (age bounds and forward
//! latency need no JSON parsing); `json` is exactly the line the sinks send, so
//! forwarding never re-encodes.

use crate::event::Event;

pub const SEGMENT_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 8 + 8;
const RECORD_HEADER_LEN: usize = 4 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("segment is shorter than its header or a record runs past its end")]
    Truncated,
    #[error("segment format version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("segment says {said} records but holds {found}")]
    CountMismatch { said: u32, found: u32 },
}

/// Builds one segment, encoding events straight into its buffer.
pub struct SegmentWriter {
    buf: Vec<u8>,
    /// Where each record starts, to drop trailing records when a bound says so.
    starts: Vec<usize>,
    oldest: u64,
    newest: u64,
}

impl Default for SegmentWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SegmentWriter {
    pub fn new() -> SegmentWriter {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.resize(HEADER_LEN, 0);
        SegmentWriter {
            buf,
            starts: Vec::new(),
            oldest: u64::MAX,
            newest: 0,
        }
    }

    /// Encodes `event` ([`crate::wire`]) into the segment. (Infallible since the
    /// encoder is; the `Result` keeps the signature callers handle.)
    pub fn push(&mut self, event: &Event) -> Result<(), serde_json::Error> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&event.ts.to_be_bytes());
        crate::wire::write_event(event, &mut self.buf);
        let len = (self.buf.len() - start - 4) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        self.starts.push(start);
        self.oldest = self.oldest.min(event.ts);
        self.newest = self.newest.max(event.ts);
        Ok(())
    }

    /// Copies a record from another segment (erasure rewrites segments this way).
    pub fn push_raw(&mut self, record: RecordRef<'_>) {
        let start = self.buf.len();
        let len = (8 + record.json.len()) as u32;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(&record.ts_ms.to_be_bytes());
        self.buf.extend_from_slice(record.json);
        self.starts.push(start);
        self.oldest = self.oldest.min(record.ts_ms);
        self.newest = self.newest.max(record.ts_ms);
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Drops trailing records until the segment is at most `max_bytes`; returns how
    /// many were dropped. (Times stay those of the full batch: only used for ages.)
    pub fn truncate_to(&mut self, max_bytes: usize) -> usize {
        let mut dropped = 0;
        while self.buf.len() > max_bytes {
            let Some(start) = self.starts.pop() else {
                break;
            };
            self.buf.truncate(start);
            dropped += 1;
        }
        dropped
    }

    /// The finished segment bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let count = self.starts.len() as u32;
        let oldest = if count == 0 { 0 } else { self.oldest };
        self.buf[0] = SEGMENT_VERSION;
        self.buf[1..5].copy_from_slice(&count.to_be_bytes());
        self.buf[5..13].copy_from_slice(&oldest.to_be_bytes());
        self.buf[13..21].copy_from_slice(&self.newest.to_be_bytes());
        self.buf
    }
}

/// A decoded view of a segment.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub count: u32,
    pub oldest_ts: u64,
    pub newest_ts: u64,
    body: &'a [u8],
}

/// One event inside a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub ts_ms: u64,
    pub json: &'a [u8],
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"))
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// Reads a segment's header; [`Segment::records`] walks (and checks) the records.
pub fn decode(bytes: &[u8]) -> Result<Segment<'_>, RecordError> {
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::Truncated);
    }
    if bytes[0] != SEGMENT_VERSION {
        return Err(RecordError::UnsupportedVersion(bytes[0]));
    }
    Ok(Segment {
        count: be_u32(&bytes[1..]),
        oldest_ts: be_u64(&bytes[5..]),
        newest_ts: be_u64(&bytes[13..]),
        body: &bytes[HEADER_LEN..],
    })
}

impl<'a> Segment<'a> {
    /// Every record, or the first error; the count must match the header.
    pub fn records(&self) -> Result<Vec<RecordRef<'a>>, RecordError> {
        // The count comes from storage and may be damaged: reserve no more records
        // than the body has room for, or a bad header asks for gigabytes.
        let room = self.body.len() / RECORD_HEADER_LEN;
        let mut records = Vec::with_capacity((self.count as usize).min(room));
        let mut rest = self.body;
        while !rest.is_empty() {
            if rest.len() < RECORD_HEADER_LEN {
                return Err(RecordError::Truncated);
            }
            let len = be_u32(rest) as usize;
            if len < 8 || rest.len() < 4 + len {
                return Err(RecordError::Truncated);
            }
            records.push(RecordRef {
                ts_ms: be_u64(&rest[4..]),
                json: &rest[RECORD_HEADER_LEN..4 + len],
            });
            rest = &rest[4 + len..];
        }
        if records.len() != self.count as usize {
            return Err(RecordError::CountMismatch {
                said: self.count,
                found: records.len() as u32,
            });
        }
        Ok(records)
    }
}

/// What is left of a segment after [`filter`].
#[derive(Debug, PartialEq, Eq)]
pub enum Filtered {
    /// Every record was kept.
    Unchanged,
    /// No record was kept: the segment should go.
    Emptied { removed: u64 },
    /// Some were kept: the new segment, and how many records left.
    Rewritten { bytes: Vec<u8>, removed: u64 },
}

/// Asks `keep` about every record of a segment; an unreadable segment is an error
/// (the caller decides whether it is left alone or moved aside).
pub fn filter(
    bytes: &[u8],
    mut keep: impl FnMut(&RecordRef<'_>) -> bool,
) -> Result<Filtered, RecordError> {
    let records = decode(bytes)?.records()?;
    let kept: Vec<RecordRef<'_>> = records.iter().copied().filter(|r| keep(r)).collect();
    let removed = (records.len() - kept.len()) as u64;
    if removed == 0 {
        return Ok(Filtered::Unchanged);
    }
    if kept.is_empty() {
        return Ok(Filtered::Emptied { removed });
    }
    let mut writer = SegmentWriter::new();
    for record in kept {
        writer.push_raw(record);
    }
    Ok(Filtered::Rewritten {
        bytes: writer.finish(),
        removed,
    })
}

/// The segment with some records replaced: `replace` returns a record's new JSON,
/// or `None` to keep it. `Ok(None)` when nothing was replaced.
pub fn rewrite(
    bytes: &[u8],
    mut replace: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, RecordError> {
    let records = decode(bytes)?.records()?;
    let mut writer = SegmentWriter::new();
    let mut changed = false;
    for record in records {
        match replace(record.json) {
            Some(json) => {
                changed = true;
                writer.push_raw(RecordRef {
                    ts_ms: record.ts_ms,
                    json: &json,
                });
            }
            None => writer.push_raw(record),
        }
    }
    Ok(changed.then(|| writer.finish()))
}

/// Events in a stored segment (0 if unreadable: it is counted as it is removed).
pub fn count_of(bytes: &[u8]) -> u64 {
    decode(bytes).map_or(0, |segment| u64::from(segment.count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u128, ts: u64) -> Event {
        Event::sample(n, ts)
    }

    #[test]
    fn a_segment_round_trips_times_and_json() {
        let mut writer = SegmentWriter::new();
        writer.push(&event(1, 300)).unwrap();
        writer.push(&event(2, 100)).unwrap();
        writer.push(&event(3, 200)).unwrap();
        let bytes = writer.finish();
        let segment = decode(&bytes).unwrap();
        assert_eq!(
            (segment.count, segment.oldest_ts, segment.newest_ts),
            (3, 100, 300)
        );
        let records = segment.records().unwrap();
        assert_eq!(
            records.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
            vec![300, 100, 200]
        );
        let json: serde_json::Value = serde_json::from_slice(records[1].json).unwrap();
        assert_eq!(json["message"], "m2");
        assert_eq!(count_of(&bytes), 3);
    }

    #[test]
    fn truncation_drops_whole_trailing_records() {
        let mut writer = SegmentWriter::new();
        for n in 0..10 {
            writer.push(&event(n, 1)).unwrap();
        }
        let one = (writer.bytes() - HEADER_LEN) / 10;
        assert_eq!(writer.truncate_to(HEADER_LEN + one * 4 + 1), 6);
        let bytes = writer.finish();
        assert_eq!(decode(&bytes).unwrap().records().unwrap().len(), 4);
    }

    #[test]
    fn damaged_segments_are_refused() {
        let mut writer = SegmentWriter::new();
        writer.push(&event(1, 1)).unwrap();
        let bytes = writer.finish();
        assert!(matches!(decode(&bytes[..5]), Err(RecordError::Truncated)));
        assert!(decode(&bytes[..bytes.len() - 1])
            .unwrap()
            .records()
            .is_err());
        let mut wrong_count = bytes.clone();
        wrong_count[4] = 2;
        assert!(matches!(
            decode(&wrong_count).unwrap().records(),
            Err(RecordError::CountMismatch { said: 2, found: 1 })
        ));
        let mut version = bytes;
        version[0] = 9;
        assert!(matches!(
            decode(&version),
            Err(RecordError::UnsupportedVersion(9))
        ));
        assert_eq!(count_of(&version), 0);
    }

    #[test]
    fn a_damaged_count_does_not_reserve_memory_for_it() {
        // The header of the fuzz input that made `records` ask for 7.5 GB
        // (segment_decode, oom-39b23498), and the largest count there is: before the
        // fix, the second aborted the process with a failed allocation.
        for count in [[0x12, 0x94, 0x6f, 0x5f], [0xff; 4]] {
            let mut bytes = vec![SEGMENT_VERSION];
            bytes.extend_from_slice(&count);
            bytes.extend_from_slice(b"si35650917,\"kind");
            let segment = decode(&bytes).unwrap();
            assert_eq!(
                segment.records(),
                Err(RecordError::CountMismatch {
                    said: u32::from_be_bytes(count),
                    found: 0
                })
            );
        }
    }

    #[test]
    fn filter_keeps_rewrites_or_empties_a_segment() {
        let mut writer = SegmentWriter::new();
        for (n, ts) in [(1, 100), (2, 200), (3, 300)] {
            writer.push(&event(n, ts)).unwrap();
        }
        let bytes = writer.finish();
        assert_eq!(filter(&bytes, |_| true).unwrap(), Filtered::Unchanged);
        assert_eq!(
            filter(&bytes, |_| false).unwrap(),
            Filtered::Emptied { removed: 3 }
        );
        let Filtered::Rewritten {
            bytes: rest,
            removed,
        } = filter(&bytes, |r| r.ts_ms >= 200).unwrap()
        else {
            panic!("two of three records stay");
        };
        assert_eq!(removed, 1);
        let segment = decode(&rest).unwrap();
        assert_eq!(
            (segment.count, segment.oldest_ts, segment.newest_ts),
            (2, 200, 300)
        );
        assert!(
            filter(&bytes[..10], |_| true).is_err(),
            "unreadable segments are errors"
        );
    }
}
