//! Unit tests of the spool: group commits, bounds, leases, erasure, the barrier.
use super::*;
use crate::config::{Durability, FullPolicy};
use crate::event::EventId;
use crate::health::Health;
use crate::record::SegmentWriter;
use std::num::NonZeroUsize;
use std::path::Path;

fn event(n: u128, ts: u64) -> Event {
    Event::sample(n, ts)
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.join("spool"),
        channel_capacity: NonZeroUsize::new(10_000).unwrap(),
        max_batch_events: NonZeroUsize::new(100).unwrap(),
        max_batch_bytes: 1 << 20,
        batch_delay: Duration::from_millis(1),
        durability: Durability::Interval(Duration::from_millis(20)),
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
        full_policy: FullPolicy::DropOldest,
        cache_bytes: 8 << 20,
        hold_back: Duration::ZERO,
    }
}

/// Bytes of a segment of `n` test events (all the same size).
fn segment_size(n: u128) -> u64 {
    let mut segment = SegmentWriter::new();
    for i in 0..n {
        segment.push(&event(10 + i, now_ms())).unwrap();
    }
    segment.finish().len() as u64
}

fn messages(spool: &Spool) -> Vec<String> {
    let mut out = Vec::new();
    for entry in spool.store.iter() {
        let (_, bytes) = entry.unwrap();
        let segment = record::decode(&bytes).unwrap();
        for record in segment.records().unwrap() {
            let json: serde_json::Value = serde_json::from_slice(record.json).unwrap();
            out.push(json["message"].as_str().unwrap().to_owned());
        }
    }
    out
}

async fn run(config: &SpoolConfig, events: impl IntoIterator<Item = Event>) -> Arc<Spool> {
    let health = Health::new();
    // A reopen may find sled still letting go of the directory lock: wait a bit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (sender, writer, spool) = loop {
        match start(config, health.register("w", Duration::from_secs(5))) {
            Ok(started) => break started,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(err) => panic!("cannot start the spool: {err}"),
        }
    };
    for event in events {
        sender.send(event).unwrap();
    }
    writer.finish().await;
    assert_eq!(sender.send(event(0, 0)), Err(DropReason::WriterStopped));
    spool
}

#[tokio::test]
async fn finish_commits_every_queued_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let now = now_ms();
    let spool = run(&config, (0..1000).map(|n| event(n, now))).await;
    assert_eq!(spool.records(), 1000);
    let kept = messages(&spool);
    assert_eq!(kept.len(), 1000);
    assert_eq!(kept[0], "m0");
    assert_eq!(kept[999], "m999");
    let segments = spool.store.iter().count();
    assert!(
        segments < 200,
        "group commits: {segments} segments for 1000 events"
    );
    drop(spool);
    // Reopened, the counts are found again and the numbering continues.
    let spool = run(&config, [event(5000, now)]).await;
    assert_eq!(spool.records(), 1001);
    assert_eq!(messages(&spool).last().unwrap(), "m5000");
}

#[tokio::test]
async fn drop_newest_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.full_policy = FullPolicy::DropNewest;
    config.max_bytes = segment_size(10) + 10;
    let spool = run(&config, (0..25).map(|n| event(n, now_ms()))).await;
    assert!(spool.snapshot().bytes <= config.max_bytes);
    // About ten fit: segments are compressed, and two committed apart take a little
    // more than one holding the same events.
    let kept = messages(&spool);
    assert!((8..=10).contains(&kept.len()), "{kept:?}");
    assert_eq!(spool.records(), kept.len() as u64);
    let oldest: Vec<String> = (0..kept.len()).map(|n| format!("m{n}")).collect();
    assert_eq!(kept, oldest, "the oldest are kept, in order");
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_batch_events = NonZeroUsize::new(1).unwrap();
    config.max_bytes = segment_size(1) * 10 + 10;
    let spool = run(&config, (0..25).map(|n| event(n, now_ms()))).await;
    assert_eq!(spool.records(), 10);
    assert!(spool.snapshot().bytes <= config.max_bytes);
    assert_eq!(messages(&spool)[0], "m15", "the newest are kept");
}

#[tokio::test]
async fn events_older_than_max_age_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_age = Duration::from_secs(60);
    let now = now_ms();
    let health = Health::new();
    let (sender, writer, spool) =
        start(&config, health.register("w", Duration::from_secs(5))).unwrap();
    for n in 0..5 {
        sender.send(event(n, now - 3_600_000)).unwrap();
    }
    // A segment goes when its newest event is too old: keep the fresh ones apart.
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool.store.iter().count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for n in 5..8 {
        sender.send(event(n, now)).unwrap();
    }
    // Housekeeping runs once a second; wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool.records() != 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.finish().await;
    assert_eq!(spool.records(), 3);
}

#[test]
fn rate_limited_log_reports_the_count_in_between() {
    let mut log = RateLimitedLog::default();
    assert_eq!(log.add(3), Some(3));
    assert_eq!(log.add(2), None);
    assert_eq!(log.add(4), None);
    log.last = Some(Instant::now() - Duration::from_secs(11));
    assert_eq!(log.add(1), Some(7));
}

#[test]
fn a_full_channel_drops_instead_of_waiting() {
    let (channel, _receiver) = sync_channel(1);
    let sender = EventSender {
        channel,
        depth: Arc::new(AtomicUsize::new(0)),
        dropped_full: Counter::noop(),
        dropped_stopped: Counter::noop(),
    };
    assert_eq!(sender.send(event(1, 0)), Ok(()));
    assert_eq!(sender.send(event(2, 0)), Err(DropReason::ChannelFull));
    assert_eq!(sender.depth.load(Ordering::Relaxed), 1);
}

/// A running spool for lease tests; events are committed one per segment.
async fn running(config: &SpoolConfig) -> (EventSender, Writer, Arc<Spool>, crate::health::Health) {
    let health = Health::new();
    let (sender, writer, spool) =
        start(config, health.register("w", Duration::from_secs(5))).unwrap();
    (sender, writer, spool, health)
}

async fn committed(sender: &EventSender, events: impl IntoIterator<Item = Event>) {
    for event in events {
        sender.send(event).unwrap();
    }
    sender.committed(Duration::from_secs(10)).await.unwrap();
}

fn lease_messages(lease: &Lease) -> Vec<String> {
    let mut out = Vec::new();
    lease.for_each_record(|record| {
        let json: serde_json::Value = serde_json::from_slice(record.json).unwrap();
        out.push(json["message"].as_str().unwrap().to_owned());
    });
    out
}

#[tokio::test]
async fn the_barrier_returns_once_everything_queued_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.batch_delay = Duration::from_millis(40);
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    committed(&sender, (0..100).map(|n| event(n, now))).await;
    assert_eq!(spool.records(), 100, "no event still in the channel");
    writer.finish().await;
    // A stopped writer drained everything first: the barrier holds at once.
    assert_eq!(sender.committed(Duration::from_secs(1)).await, Ok(()));
}

#[tokio::test]
async fn eviction_never_takes_a_leased_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_batch_events = NonZeroUsize::new(1).unwrap();
    config.max_bytes = segment_size(1) * 10 + 10;
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    committed(&sender, (0..5).map(|n| event(n, now))).await;
    let leased = spool.lease(0, 2, usize::MAX).unwrap();
    let lease = leased.lease.expect("segments to lease");
    assert_eq!(lease_messages(&lease), ["m0", "m1"]);
    committed(&sender, (5..30).map(|n| event(n, now))).await;
    // The oldest unleased went instead; the leased two are still there to deliver.
    let kept = messages(&spool);
    assert_eq!(&kept[..2], ["m0", "m1"]);
    assert_eq!(kept.len(), 10);
    assert_eq!(lease.acknowledge().unwrap(), 2);
    assert_eq!(spool.records(), 8);
    writer.finish().await;
}

#[tokio::test]
async fn an_erasure_reaches_a_leased_segment_and_the_lease_reads_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    committed(&sender, (0..10).map(|n| event(n, now))).await;
    let mut lease = spool.lease(0, 100, usize::MAX).unwrap().lease.unwrap();
    assert_eq!(lease.events(), 10);
    assert!(!lease.is_stale());
    let erased = spool
        .erase_where(|json| std::str::from_utf8(json).unwrap().contains("\"m3\""))
        .await
        .unwrap();
    assert_eq!(
        erased,
        Erased {
            events: 1,
            dead_letters: 0
        }
    );
    assert!(lease.is_stale());
    assert!(lease.refresh().unwrap());
    assert_eq!(lease.events(), 9);
    assert!(!lease_messages(&lease).contains(&"m3".to_owned()));
    assert_eq!(lease.acknowledge().unwrap(), 9);
    assert_eq!(spool.records(), 0);
    writer.finish().await;
}

#[tokio::test]
async fn a_lease_drops_its_records_past_retention_before_a_send() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_age = Duration::from_secs(1);
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    committed(&sender, [event(1, now - 700), event(2, now)]).await;
    let mut lease = spool.lease(0, 100, usize::MAX).unwrap().lease.unwrap();
    assert_eq!(lease.events(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lease.is_stale() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(lease.refresh().unwrap());
    assert_eq!(
        lease_messages(&lease),
        ["m2"],
        "the older one expired first"
    );
    assert_eq!(spool.records(), 1);
    drop(lease);
    // Released: the spool's own housekeeping may now take the rest when it expires.
    assert!(spool.guard().leased.is_empty());
    writer.finish().await;
}

#[test]
fn drop_reasons_index_their_place_in_all() {
    for (at, reason) in DropReason::ALL.iter().enumerate() {
        assert_eq!(reason.index(), at);
    }
}

#[tokio::test]
async fn hold_back_keeps_young_segments_from_the_forwarder() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.hold_back = Duration::from_secs(60);
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    committed(&sender, [event(1, now - 120_000)]).await;
    committed(&sender, [event(2, now)]).await;
    let lease = spool.lease(0, 100, usize::MAX).unwrap().lease.unwrap();
    assert_eq!(lease_messages(&lease), ["m1"], "the young one waits");
    drop(lease);
    writer.finish().await;
}

#[tokio::test]
async fn plain_segments_an_older_edge_left_are_leased_then_follow_compressed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let now = now_ms();
    {
        let store = crate::store::Store::open(&config.dir, config.cache_bytes).unwrap();
        let mut segment = SegmentWriter::new();
        for n in 0..30 {
            segment.push(&event(n, now)).unwrap();
        }
        store
            .append(0, record::to_plain(&segment.finish()).unwrap())
            .unwrap();
        store.flush().unwrap();
    }
    let (sender, writer, spool, _health) = running(&config).await;
    assert_eq!(spool.records(), 30);
    committed(&sender, (30..90).map(|n| event(n, now))).await;
    let mut stored_versions = Vec::new();
    for entry in spool.store.iter() {
        stored_versions.push(entry.unwrap().1[0]);
    }
    assert_eq!(stored_versions[0], record::SEGMENT_VERSION);
    assert!(stored_versions[1..].contains(&record::COMPRESSED_SEGMENT_VERSION));
    let lease = spool.lease(0, 1000, usize::MAX).unwrap().lease.unwrap();
    let expected: Vec<String> = (0..90).map(|n| format!("m{n}")).collect();
    assert_eq!(lease_messages(&lease), expected);
    assert_eq!(lease.acknowledge().unwrap(), 90);
    assert_eq!(spool.records(), 0);
    writer.finish().await;
}

/// Each stored segment's size as stored and its records' size uncompressed.
fn stored_and_plain(spool: &Spool) -> Vec<(usize, usize)> {
    spool
        .store
        .iter()
        .map(|entry| {
            let (_, bytes) = entry.unwrap();
            (bytes.len(), record::decode(&bytes).unwrap().plain_len())
        })
        .collect()
}

#[tokio::test]
async fn a_lease_budgets_the_batch_in_plain_bytes_not_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_batch_events = NonZeroUsize::new(20).unwrap();
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    committed(&sender, (0..100).map(|n| event(n, now))).await;
    let sizes = stored_and_plain(&spool);
    let stored: usize = sizes.iter().map(|(stored, _)| stored).sum();
    let plain: usize = sizes.iter().map(|(_, plain)| plain).sum();
    assert!(
        stored * 3 < plain,
        "{stored} stored bytes for {plain} plain"
    );
    // Everything fits the stored size, but a batch that large would send `plain`.
    let lease = spool.lease(0, 1000, stored).unwrap().lease.unwrap();
    assert!(lease.events() < 100, "{} events", lease.events());
    let mut sent = 0;
    lease.for_each_record(|record| sent += record.json.len() + 12);
    assert!(sent <= stored || lease.seqs().len() == 1);
    drop(lease);
    let lease = spool.lease(0, 1000, plain).unwrap().lease.unwrap();
    assert_eq!(lease.events(), 100);
    drop(lease);
    writer.finish().await;
}

#[tokio::test]
async fn segments_grow_with_what_they_compress_to_and_stay_inline() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_batch_events = NonZeroUsize::new(1024).unwrap();
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    committed(&sender, (0..3000).map(|n| event(n, now))).await;
    let inline = crate::store::MAX_INLINE_VALUE_BYTES;
    let sizes = stored_and_plain(&spool);
    // One event may overshoot the bound; sample events are under 1 KiB.
    assert!(
        sizes.iter().all(|(stored, _)| *stored <= inline + 1024),
        "{sizes:?}"
    );
    let largest_plain = sizes.iter().map(|(_, plain)| *plain).max().unwrap_or(0);
    assert!(
        largest_plain > 2 * inline,
        "no segment held more than {largest_plain} plain bytes"
    );
    assert_eq!(spool.records(), 3000);
    writer.finish().await;
}

use crate::enrich::verdict::Certainty;
use relabel::Found;

/// Event `n` recorded at `ts`, its id made at that time (as the request path does).
fn timed(n: u128, ts: u64) -> Event {
    let mut event = event(n, ts);
    event.id = timed_id(n, ts);
    event
}

fn timed_id(n: u128, ts: u64) -> EventId {
    EventId(u128::from(ts) << 80 | n)
}

fn relabel_of(ts: u64, ids: &[u128]) -> Relabel {
    Relabel {
        ids: ids.iter().map(|&n| timed_id(n, ts)).collect(),
        reclassify: Event::reclassify(
            EventId(1 << 100),
            now_ms(),
            &event(0, 0),
            Vec::new(),
            "link_scanner:burst".parse().unwrap(),
            "click_burst".into(),
            Certainty::Probable,
        ),
    }
}

fn classes(spool: &Spool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in spool.store.iter() {
        let (_, bytes) = entry.unwrap();
        let segment = record::decode(&bytes).unwrap();
        for record in segment.records().unwrap() {
            let json: serde_json::Value = serde_json::from_slice(record.json).unwrap();
            out.push((
                json["message"].as_str().unwrap().to_owned(),
                json["class"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

fn classes_of(spool: &Spool, message: &str) -> String {
    classes(spool)
        .into_iter()
        .find(|(m, _)| m == message)
        .map(|(_, class)| class)
        .unwrap()
}

#[tokio::test]
async fn a_relabel_rewrites_held_events_and_names_the_ones_that_may_have_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_batch_events = NonZeroUsize::new(1).unwrap();
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    committed(&sender, (1..=4).map(|n| timed(n, now))).await;
    let lease = spool.lease(0, 1, usize::MAX).unwrap().lease.unwrap();
    assert_eq!(lease_messages(&lease), ["m1"]);
    // 1 is in flight, 2 and 3 are held, 99 is gone.
    let found = spool.relabel(&relabel_of(now, &[1, 2, 3, 99])).unwrap();
    assert_eq!(found.leased, [timed_id(1, now)]);
    assert_eq!(found.missing, [timed_id(99, now)]);
    let classes = classes(&spool);
    assert_eq!(classes[0], ("m1".into(), "link_scanner:burst".into()));
    assert_eq!(classes[1], ("m2".into(), "link_scanner:burst".into()));
    assert_eq!(classes[2], ("m3".into(), "link_scanner:burst".into()));
    assert_eq!(classes[3], ("m4".into(), "human".into()));
    assert!(lease.is_stale(), "the lease reads its segment again");
    assert_eq!(
        spool.relabel(&relabel_of(now, &[4])).unwrap(),
        Found::default(),
        "all held"
    );
    // Relabelled already: a second relabel (a trap after the burst) keeps the first.
    let mut trap = relabel_of(now, &[2]);
    trap.reclassify.class = "link_scanner:trap".parse().unwrap();
    assert_eq!(spool.relabel(&trap).unwrap(), Found::default());
    assert_eq!(classes_of(&spool, "m2"), "link_scanner:burst");
    drop(lease);
    writer.finish().await;
}

#[tokio::test]
async fn a_relabel_that_overtakes_its_event_still_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.hold_back = Duration::from_secs(60);
    let (sender, writer, spool, _health) = running(&config).await;
    let now = now_ms();
    // The burst's last click queued its relabel before the first click's request
    // queued that click's event.
    assert!(sender.relabel(relabel_of(now, &[1])));
    sender.send(timed(1, now)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while classes(&spool) != [("m1".to_owned(), "link_scanner:burst".to_owned())]
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        classes(&spool),
        [("m1".to_owned(), "link_scanner:burst".to_owned())],
        "relabelled in place, no reclassify event"
    );
    writer.finish().await;
}
