//! How events sit in the spool: one *segment* per group commit.
//!
//! A segment is one storage value holding a whole batch, so a commit of a thousand
//! events is one write to the engine, not a thousand.
//!
//! ```text
//! segment = version:u8 | count:u32 | oldest_ts:u64 | newest_ts:u64 | body
//! body    = record*                               (version 1)
//!         | raw_len:u32 | lz4_block(record*)      (version 2: compressed)
//! record  = len:u32 | ts:u64 | json[len - 8]
//! ```
//!
//! Integers are big-endian; `ts` is the event time in unix ms (age bounds and forward
//! latency need no JSON parsing); `json` is exactly the line the sinks send, so
//! forwarding never re-encodes. The header stays uncompressed, so counts and ages
//! are read without decompressing.
//!
//! The writer stores version 2 (an LZ4 block, the format of `lz4_flex::block`)
//! whenever it is smaller. Events of one edge share most of their bytes (field
//! names, user agents, places), so a stored segment holds several times the events
//! it would plain, and the store does that many times fewer inserts, removes and
//! log writes per event. Version 1 segments, written before compression, are read
//! as ever.

use crate::event::Event;

pub const SEGMENT_VERSION: u8 = 1;
pub const COMPRESSED_SEGMENT_VERSION: u8 = 2;
const HEADER_LEN: usize = 1 + 4 + 8 + 8;
const RAW_LEN_LEN: usize = 4;
const RECORD_HEADER_LEN: usize = 4 + 8;
/// Bodies shorter than this are stored plain: too small to gain.
const MIN_COMPRESSED_BODY: usize = 256;
/// The largest body a compressed segment may claim: far above any the writer makes
/// (`spool.max_batch_bytes` caps a segment's records), and the bound on what a
/// damaged header can make a reader allocate.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("segment is shorter than its header or a record runs past its end")]
    Truncated,
    #[error("segment format version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("segment says {said} records but holds {found}")]
    CountMismatch { said: u32, found: u32 },
    #[error("compressed segment body is damaged")]
    Damaged,
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

    /// Plain (uncompressed) bytes so far, header included.
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

    /// The segment as stored: compressed when that is smaller. (The writer stays
    /// usable: a bound may truncate it and ask again.)
    pub fn finish(&self) -> Vec<u8> {
        self.finish_first(self.starts.len())
    }

    /// The first `count` records (at most all of them) as a stored segment.
    /// (Times stay those of the full batch: only used for ages.)
    pub fn finish_first(&self, count: usize) -> Vec<u8> {
        let count = count.min(self.starts.len());
        let end = self.starts.get(count).copied().unwrap_or(self.buf.len());
        let oldest = if count == 0 { 0 } else { self.oldest };
        let mut header = [0u8; HEADER_LEN];
        header[0] = SEGMENT_VERSION;
        header[1..5].copy_from_slice(&(count as u32).to_be_bytes());
        header[5..13].copy_from_slice(&oldest.to_be_bytes());
        header[13..21].copy_from_slice(&self.newest.to_be_bytes());
        let body = &self.buf[HEADER_LEN..end];
        if body.len() >= MIN_COMPRESSED_BODY && body.len() <= MAX_BODY_BYTES {
            if let Some(compressed) = compress(&header, body) {
                return compressed;
            }
        }
        let mut plain = Vec::with_capacity(HEADER_LEN + body.len());
        plain.extend_from_slice(&header);
        plain.extend_from_slice(body);
        plain
    }

    /// Keeps the most leading records whose stored segment takes at most
    /// `max_stored` bytes; returns how many were dropped. Compressed sizes do not
    /// grow in proportion to the records (the last ones may compress worse than the
    /// rest), so this searches: about log2(records) compressions.
    pub fn truncate_stored_to(&mut self, max_stored: usize) -> usize {
        let total = self.starts.len();
        if self.finish().len() <= max_stored {
            return 0;
        }
        // `fits` always fits (nothing is stored for no records), `too_many` never.
        let (mut fits, mut too_many) = (0, total);
        while too_many - fits > 1 {
            let middle = fits + (too_many - fits) / 2;
            if self.finish_first(middle).len() <= max_stored {
                fits = middle;
            } else {
                too_many = middle;
            }
        }
        let end = self.starts.get(fits).copied().unwrap_or(self.buf.len());
        self.buf.truncate(end);
        self.starts.truncate(fits);
        total - fits
    }
}

/// `header` and `body` as a version 2 segment, if that is smaller than plain.
fn compress(header: &[u8; HEADER_LEN], body: &[u8]) -> Option<Vec<u8>> {
    let prefix = HEADER_LEN + RAW_LEN_LEN;
    let mut out = vec![0u8; prefix + lz4_flex::block::get_maximum_output_size(body.len())];
    let written = lz4_flex::block::compress_into(body, &mut out[prefix..]).ok()?;
    if prefix + written >= HEADER_LEN + body.len() {
        return None;
    }
    out.truncate(prefix + written);
    out[..HEADER_LEN].copy_from_slice(header);
    out[0] = COMPRESSED_SEGMENT_VERSION;
    out[HEADER_LEN..prefix].copy_from_slice(&(body.len() as u32).to_be_bytes());
    Some(out)
}

/// A decoded view of a segment: the header at once, the body when first asked.
#[derive(Debug)]
pub struct Segment<'a> {
    pub count: u32,
    pub oldest_ts: u64,
    pub newest_ts: u64,
    body: Body<'a>,
}

#[derive(Debug)]
enum Body<'a> {
    Plain(&'a [u8]),
    Compressed {
        raw_len: usize,
        block: &'a [u8],
        raw: std::cell::OnceCell<Option<Vec<u8>>>,
    },
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
    let body = match bytes[0] {
        SEGMENT_VERSION => Body::Plain(&bytes[HEADER_LEN..]),
        COMPRESSED_SEGMENT_VERSION => {
            if bytes.len() < HEADER_LEN + RAW_LEN_LEN {
                return Err(RecordError::Truncated);
            }
            let raw_len = be_u32(&bytes[HEADER_LEN..]) as usize;
            let block_len = bytes.len() - HEADER_LEN - RAW_LEN_LEN;
            // LZ4 expands a block at most about 255 times: a damaged length cannot
            // make a reader allocate more than that, nor more than any writer wrote.
            if raw_len > MAX_BODY_BYTES || raw_len > block_len.saturating_mul(255) + 16 {
                return Err(RecordError::Damaged);
            }
            Body::Compressed {
                raw_len,
                block: &bytes[HEADER_LEN + RAW_LEN_LEN..],
                raw: std::cell::OnceCell::new(),
            }
        }
        other => return Err(RecordError::UnsupportedVersion(other)),
    };
    Ok(Segment {
        count: be_u32(&bytes[1..]),
        oldest_ts: be_u64(&bytes[5..]),
        newest_ts: be_u64(&bytes[13..]),
        body,
    })
}

impl Segment<'_> {
    /// The records' bytes (decompressed once, on the first call).
    pub fn body(&self) -> Result<&[u8], RecordError> {
        match &self.body {
            Body::Plain(body) => Ok(body),
            Body::Compressed {
                raw_len,
                block,
                raw,
            } => raw
                .get_or_init(|| {
                    let mut out = vec![0u8; *raw_len];
                    match lz4_flex::block::decompress_into(block, &mut out) {
                        Ok(len) if len == *raw_len => Some(out),
                        _ => None,
                    }
                })
                .as_deref()
                .ok_or(RecordError::Damaged),
        }
    }

    /// The records' size uncompressed (from the header: nothing is decompressed).
    pub fn plain_len(&self) -> usize {
        match &self.body {
            Body::Plain(body) => body.len(),
            Body::Compressed { raw_len, .. } => *raw_len,
        }
    }

    /// Every record, or the first error; the count must match the header.
    pub fn records(&self) -> Result<Vec<RecordRef<'_>>, RecordError> {
        let body = self.body()?;
        // The count comes from storage and may be damaged: reserve no more records
        // than the body has room for, or a bad header asks for gigabytes.
        let room = body.len() / RECORD_HEADER_LEN;
        let mut records = Vec::with_capacity((self.count as usize).min(room));
        let mut rest = body;
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
    let segment = decode(bytes)?;
    let records = segment.records()?;
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
    let segment = decode(bytes)?;
    let records = segment.records()?;
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

/// The segment in its plain form (version 1, as edges stored it before
/// compression): for tests and fuzz seeds of the older format.
pub fn to_plain(bytes: &[u8]) -> Result<Vec<u8>, RecordError> {
    let segment = decode(bytes)?;
    let mut plain = bytes[..HEADER_LEN].to_vec();
    plain[0] = SEGMENT_VERSION;
    plain.extend_from_slice(segment.body()?);
    Ok(plain)
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

    fn plain(writer: &SegmentWriter) -> Vec<u8> {
        to_plain(&writer.finish()).unwrap()
    }

    #[test]
    fn similar_events_are_stored_compressed_and_read_back_the_same() {
        let mut writer = SegmentWriter::new();
        for n in 0..50 {
            writer.push(&event(n, 1_000 + n as u64)).unwrap();
        }
        let stored = writer.finish();
        assert_eq!(stored[0], COMPRESSED_SEGMENT_VERSION);
        let old = plain(&writer);
        assert!(
            stored.len() * 4 < old.len(),
            "{} stored bytes for {} plain",
            stored.len(),
            old.len()
        );
        let (new, old) = (decode(&stored).unwrap(), decode(&old).unwrap());
        assert_eq!(
            (new.count, new.oldest_ts, new.newest_ts),
            (50, 1_000, 1_049)
        );
        assert_eq!(count_of(&stored), 50);
        assert_eq!(new.records().unwrap(), old.records().unwrap());
        assert_eq!(new.body().unwrap(), old.body().unwrap());
    }

    #[test]
    fn plain_segments_of_older_edges_still_read() {
        let mut writer = SegmentWriter::new();
        for n in 0..5 {
            writer.push(&event(n, 7)).unwrap();
        }
        let old = plain(&writer);
        assert_eq!(decode(&old).unwrap().records().unwrap().len(), 5);
        let kept = filter(&old, |r| r.json.windows(4).any(|w| w == b"\"m3\"")).unwrap();
        let Filtered::Rewritten { bytes, removed: 4 } = kept else {
            panic!("{kept:?}");
        };
        assert_eq!(decode(&bytes).unwrap().records().unwrap().len(), 1);
    }

    #[test]
    fn what_does_not_compress_is_stored_plain() {
        let mut writer = SegmentWriter::new();
        let noise: Vec<u8> = (0..4000).map(|_| rand::random::<u8>()).collect();
        writer.push_raw(RecordRef {
            ts_ms: 1,
            json: &noise,
        });
        let stored = writer.finish();
        assert_eq!(stored[0], SEGMENT_VERSION);
        assert_eq!(
            decode(&stored).unwrap().records().unwrap()[0].json,
            &noise[..]
        );
        let mut small = SegmentWriter::new();
        small.push_raw(RecordRef {
            ts_ms: 1,
            json: b"{}",
        });
        assert_eq!(small.finish()[0], SEGMENT_VERSION);
    }

    #[test]
    fn damaged_compressed_segments_are_errors_not_panics() {
        let mut writer = SegmentWriter::new();
        for n in 0..20 {
            writer.push(&event(n, 1)).unwrap();
        }
        let stored = writer.finish();
        assert_eq!(stored[0], COMPRESSED_SEGMENT_VERSION);
        let raw_len = HEADER_LEN..HEADER_LEN + RAW_LEN_LEN;
        let mut huge = stored.clone();
        huge[raw_len.clone()].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge).unwrap_err(), RecordError::Damaged);
        let mut longer = stored.clone();
        let claimed = be_u32(&stored[HEADER_LEN..]) + 1;
        longer[raw_len].copy_from_slice(&claimed.to_be_bytes());
        assert_eq!(
            decode(&longer).unwrap().records(),
            Err(RecordError::Damaged)
        );
        for cut in [
            HEADER_LEN,
            HEADER_LEN + 2,
            HEADER_LEN + RAW_LEN_LEN,
            stored.len() - 1,
        ] {
            let result = decode(&stored[..cut]).and_then(|s| s.records().map(|r| r.len()));
            assert!(result.is_err(), "cut at {cut}: {result:?}");
        }
        for at in HEADER_LEN + RAW_LEN_LEN..stored.len() {
            let mut flipped = stored.clone();
            flipped[at] ^= 0x55;
            // Either an error or some records; never a panic or a huge allocation.
            let _ = decode(&flipped).map(|s| s.records().map(|r| r.len()));
        }
    }

    #[test]
    fn stored_truncation_keeps_the_most_records_that_fit_when_the_last_compress_worse() {
        let mut writer = SegmentWriter::new();
        for n in 0..60 {
            writer.push(&event(n, 1)).unwrap();
        }
        for _ in 0..3 {
            let noise: Vec<u8> = (0..1500).map(|_| rand::random::<u8>()).collect();
            writer.push_raw(RecordRef {
                ts_ms: 1,
                json: &noise,
            });
        }
        let all = writer.len();
        for room in [0, 40, 600, 1500, 2500, 4000, writer.finish().len() - 1] {
            let mut cut = SegmentWriter::new();
            for record in decode(&writer.finish()).unwrap().records().unwrap() {
                cut.push_raw(record);
            }
            let dropped = cut.truncate_stored_to(room);
            let kept = cut.len();
            assert_eq!(kept + dropped, all);
            assert!(kept == 0 || cut.finish().len() <= room, "room {room}");
            // One more would not have fitted (the search takes the longest prefix).
            assert!(
                writer.finish_first(kept + 1).len() > room,
                "room {room}: kept {kept}"
            );
        }
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
