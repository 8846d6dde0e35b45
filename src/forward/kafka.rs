//! The `kafka` sink (cargo feature `kafka`): one Kafka message per event, keyed by the
//! event's `message` id so a recipient's events stay in order on one partition.
//!
//! The producer is idempotent with `acks=all`. A batch is enqueued whole with
//! `send_result` (no await per message), then its delivery futures are awaited; the
//! batch is acknowledged to the spool only when every message was delivered. A
//! retried batch may publish some events twice: at least once, as for every sink.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Batch, BoxFuture, Failure, Outcome, Sink};
use crate::config::KafkaSinkConfig;

#[derive(Debug, thiserror::Error)]
#[error("forward.kafka: cannot create the producer: {0}")]
pub struct KafkaSinkError(#[from] KafkaError);

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    queue_wait: Duration,
}

#[derive(serde::Deserialize)]
struct MessageKey<'a> {
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

impl KafkaSink {
    pub fn new(config: &KafkaSinkConfig) -> Result<KafkaSink, KafkaSinkError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", &config.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                config.message_timeout.as_millis().to_string(),
            )
            .set("compression.type", "lz4");
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        Ok(KafkaSink {
            producer: client.create()?,
            topic: config.topic.clone(),
            queue_wait: Duration::from_millis(50),
        })
    }

    async fn publish(&self, batch: &Batch) -> Outcome {
        let mut deliveries = Vec::with_capacity(batch.event_ts.len());
        for line in batch
            .ndjson
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let key = serde_json::from_slice::<MessageKey>(line)
                .map(|k| k.message.into_owned())
                .unwrap_or_default();
            let mut record = FutureRecord::to(&self.topic).key(&key).payload(line);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    // The local queue is full: let librdkafka drain it, then go on.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(self.queue_wait).await;
                    }
                    Err((err, _)) => return outcome_of(&err),
                }
            }
        }
        let mut outcome = Outcome::Delivered;
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => {
                    // Keep awaiting the rest so no delivery report is left dangling.
                    if outcome == Outcome::Delivered {
                        outcome = outcome_of(&err);
                    }
                }
                Err(_) => {
                    outcome = Outcome::Retry {
                        reason: Failure::Io,
                        after: None,
                    }
                }
            }
        }
        outcome
    }
}

/// Errors that no retry will fix dead-letter the batch; the rest are retried.
fn outcome_of(err: &KafkaError) -> Outcome {
    use RDKafkaErrorCode as Code;
    match err.rdkafka_error_code() {
        Some(
            Code::MessageSizeTooLarge
            | Code::InvalidMessage
            | Code::InvalidMessageSize
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::InvalidRecord
            | Code::InvalidTopic,
        ) => Outcome::Rejected {
            reason: Failure::KafkaRejected,
        },
        Some(Code::MessageTimedOut | Code::RequestTimedOut) => Outcome::Retry {
            reason: Failure::Timeout,
            after: None,
        },
        _ => Outcome::Retry {
            reason: Failure::KafkaError,
            after: None,
        },
    }
}

impl Sink for KafkaSink {
    fn failure_reasons(&self) -> &'static [Failure] {
        &[
            Failure::Io,
            Failure::KafkaRejected,
            Failure::Timeout,
            Failure::KafkaError,
        ]
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Outcome> {
        Box::pin(self.publish(batch))
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Delivery reports still in flight are lost with the producer; their batches
        // were not acknowledged, so they stay in the spool.
        let _ = self.producer.flush(Duration::from_secs(1));
    }
}
