//! The Kafka sink against librdkafka's built-in mock cluster: no broker needed.
#![cfg(feature = "kafka")]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{claims, get, TestServer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use trackedge::Kind;

const TOPIC: &str = "trackedge-events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_mock_cluster_once_it_accepts() {
    let cluster = MockCluster::new(3).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 3).expect("topic");
    // The first produce requests fail: the sink must retry until the cluster accepts.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10],
    );
    let config = format!(
        "[spool]\nbatch_delay_ms = 1\n[forward]\nsink = \"kafka\"\nmax_batch_events = 40\n\
         backoff_initial_ms = 10\nbackoff_max_ms = 200\n\
         [forward.kafka]\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\nmessage_timeout_ms = 5000\n",
        cluster.bootstrap_servers()
    );
    let server = TestServer::start(&config);
    let mut sent = HashSet::new();
    for n in 0..200 {
        let message = format!("k-{n}");
        let path = server.path_for(&claims(Kind::Open, &message));
        assert_eq!(get(server.public, &path).await.status(), 200);
        sent.insert(message);
    }

    let bootstrap = cluster.bootstrap_servers();
    let received = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "trackedge-test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        // Every partition from its first offset, without group rebalances.
        let mut partitions = TopicPartitionList::new();
        for partition in 0..3 {
            partitions
                .add_partition_offset(TOPIC, partition, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&partitions).expect("assign");
        let mut messages = HashSet::new();
        let mut keys_match = true;
        let deadline = Instant::now() + Duration::from_secs(60);
        while messages.len() < 200 && Instant::now() < deadline {
            let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let event: serde_json::Value =
                serde_json::from_slice(record.payload().unwrap_or_default()).expect("JSON event");
            let message = event["message"].as_str().unwrap_or_default().to_owned();
            keys_match &= record.key() == Some(message.as_bytes());
            messages.insert(message);
        }
        (messages, keys_match)
    })
    .await
    .unwrap();
    let (messages, keys_match) = received;
    let missing: Vec<&String> = sent.difference(&messages).collect();
    let delivered = server.metric("trackedge_forward_events_total").await;
    assert!(
        missing.is_empty(),
        "missing {missing:?}; the edge reports {delivered} delivered\n{}",
        server.stderr()
    );
    assert_eq!(messages, sent, "every event arrives");
    assert!(keys_match, "each message is keyed by its message id");
    // The Kafka sink's own metric (the compliance test in tests/metrics.rs runs an
    // http sink): exported with its HELP.
    let text = server.metrics().await;
    assert!(
        text.contains("# HELP trackedge_forward_sink_state_changes_total")
            && text.contains("trackedge_forward_sink_state_changes_total{state=\"ok\"}"),
        "{text}"
    );
    drop(cluster);
}
