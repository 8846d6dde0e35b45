//! The `kafka` sink (cargo feature `kafka`): one Kafka message per event, keyed by the
//! event's `message` id so a recipient's events stay in order on one partition.
//!
//! The producer is idempotent with `acks=all`. Batches go out one at a time, in
//! spool order, retries included ([`Sink::keeps_order`]), so each key's events reach
//! their partition in the order they were answered. A batch is enqueued whole with
//! `send_result` (no await per message), then its delivery futures are awaited; the
//! batch is acknowledged to the spool only when every message was delivered. A
//! retried batch may publish some events twice: at least once, as for every sink.
//!
//! Recovery: an idempotent producer can lose its standing with the broker for good —
//! a fatal error (fencing, out-of-order sequence), or a broker that restarted without
//! its data and no longer knows the producer id (librdkafka then bumps the epoch
//! locally and retries forever, every message timing out). Either way the sink
//! builds a new producer, which asks the broker for a fresh id, and the failed batch
//! is sent again from the spool by the forwarder's retry. A timed-out batch counts
//! as "lost" only when the broker still answers a metadata request, so a broker that
//! is simply down does not cause rebuilds.
//!
//! Logs: librdkafka's own lines go to `debug` (it repeats a connection error every
//! retry). What the operator sees is one WARN per change of the sink's state
//! (unreachable, error, producer lost) and one INFO when deliveries resume, each
//! counted in `trackedge_forward_sink_state_changes_total{state}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};

use super::{Batch, BoxFuture, Failure, Outcome, Sink};
use crate::config::KafkaSinkConfig;
use crate::metrics as m;

#[derive(Debug, thiserror::Error)]
#[error("forward.kafka: cannot create the producer: {0}")]
pub struct KafkaSinkError(#[from] KafkaError);

/// The sink's state as the operator sees it; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkState {
    Ok,
    /// No broker answers (down, refused, unresolvable).
    Unreachable,
    /// Another client-level error (authentication, TLS, configuration).
    Error,
    /// The producer cannot deliver any more and was rebuilt.
    ProducerLost,
}

impl SinkState {
    pub const ALL: [SinkState; 4] = [
        SinkState::Ok,
        SinkState::Unreachable,
        SinkState::Error,
        SinkState::ProducerLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Ok => "ok",
            SinkState::Unreachable => "unreachable",
            SinkState::Error => "error",
            SinkState::ProducerLost => "producer_lost",
        }
    }
}

/// Remembers the last state logged so each change is logged (and counted) once.
#[derive(Debug)]
struct StateLog {
    current: Mutex<SinkState>,
}

impl StateLog {
    /// Moves to `state`; true (and logged, counted) only if it is a change.
    fn enter(&self, state: SinkState, detail: &str) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if *current == state {
            tracing::debug!(state = state.as_str(), detail, "kafka sink");
            return false;
        }
        *current = state;
        drop(current);
        metrics::counter!(m::FORWARD_SINK_STATE_CHANGES_TOTAL, "state" => state.as_str())
            .increment(1);
        match state {
            SinkState::Ok => tracing::info!("kafka sink is delivering again"),
            SinkState::Unreachable => tracing::warn!(
                detail,
                "kafka sink cannot reach a broker; events wait in the spool"
            ),
            SinkState::Error => tracing::warn!(detail, "kafka sink error; retrying"),
            SinkState::ProducerLost => tracing::warn!(
                detail,
                "kafka producer can no longer deliver; building a new one and resending from the spool"
            ),
        }
        true
    }
}

/// Routes librdkafka's callbacks into the state log instead of the default ERROR
/// lines.
struct Context {
    states: Arc<StateLog>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::warn!(target: "librdkafka", facility, "{line}")
            }
            _ => tracing::debug!(target: "librdkafka", facility, "{line}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let state = match error.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::BrokerNotAvailable,
            ) => SinkState::Unreachable,
            Some(RDKafkaErrorCode::Fatal) => SinkState::ProducerLost,
            _ => SinkState::Error,
        };
        let _ = self.states.enter(state, reason);
    }
}

type Client = FutureProducer<Context>;

pub struct KafkaSink {
    config: ClientConfig,
    states: Arc<StateLog>,
    /// The producer in use; replaced whole when it is lost.
    producer: Mutex<Arc<Client>>,
    topic: String,
    queue_wait: Duration,
    /// How long a metadata request may take when deciding whether a timeout means
    /// a lost producer (broker answers) or a lost broker (it does not).
    probe_timeout: Duration,
}

#[derive(serde::Deserialize)]
struct MessageKey<'a> {
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

/// How one publish attempt failed, beyond its outcome.
enum Trouble {
    None,
    /// The producer reported a fatal error: it will never deliver again.
    Fatal(String),
    /// Messages timed out: a lost producer if the broker still answers.
    TimedOut,
    Other,
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
        let states = Arc::new(StateLog {
            current: Mutex::new(SinkState::Ok),
        });
        for state in SinkState::ALL {
            metrics::counter!(m::FORWARD_SINK_STATE_CHANGES_TOTAL, "state" => state.as_str())
                .absolute(0);
        }
        let producer = build(&client, &states)?;
        Ok(KafkaSink {
            config: client,
            states,
            producer: Mutex::new(Arc::new(producer)),
            topic: config.topic.clone(),
            queue_wait: Duration::from_millis(50),
            probe_timeout: config.message_timeout.min(Duration::from_secs(5)),
        })
    }

    fn current(&self) -> Arc<Client> {
        self.producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn publish(&self, batch: &Batch) -> Outcome {
        let producer = self.current();
        let (outcome, failure) = self.publish_with(&producer, batch).await;
        let failure = match failure {
            Trouble::None => {
                let _ = self.states.enter(SinkState::Ok, "delivered");
                return outcome;
            }
            failure => failure,
        };
        // A fatal error may also surface only as failed deliveries.
        let failure = match producer.client().fatal_error() {
            Some((code, reason)) => Trouble::Fatal(format!("{code}: {reason}")),
            None => failure,
        };
        let lost = match failure {
            Trouble::Fatal(reason) => Some(reason),
            Trouble::TimedOut if self.broker_answers(&producer).await => Some(
                "deliveries time out while the broker answers (it may have lost the producer id)"
                    .to_owned(),
            ),
            _ => None,
        };
        if let Some(reason) = lost {
            let _ = self.states.enter(SinkState::ProducerLost, &reason);
            self.rebuild(&producer);
        }
        outcome
    }

    async fn publish_with(&self, producer: &Client, batch: &Batch) -> (Outcome, Trouble) {
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
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    // The local queue is full: let librdkafka drain it, then go on.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(self.queue_wait).await;
                    }
                    Err((err, _)) => return (outcome_of(&err), failure_of(&err)),
                }
            }
        }
        let mut outcome = Outcome::Delivered;
        let mut failure = Trouble::None;
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => {
                    // Keep awaiting the rest so no delivery report is left dangling.
                    if outcome == Outcome::Delivered {
                        outcome = outcome_of(&err);
                        failure = failure_of(&err);
                    }
                }
                // The producer was purged (rebuilt by another lane): send again.
                Err(_) => {
                    if outcome == Outcome::Delivered {
                        outcome = Outcome::Retry {
                            reason: Failure::Io,
                            after: None,
                        };
                        failure = Trouble::Other;
                    }
                }
            }
        }
        (outcome, failure)
    }

    /// Whether the broker answers a metadata request for the topic (on the blocking
    /// pool: librdkafka waits for the answer on the calling thread).
    async fn broker_answers(&self, producer: &Arc<Client>) -> bool {
        let producer = producer.clone();
        let topic = self.topic.clone();
        let timeout = self.probe_timeout;
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .is_ok_and(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == topic && t.error().is_none())
                })
        })
        .await
        .unwrap_or(false)
    }

    /// Replaces `lost` with a new producer, unless another lane already did.
    fn rebuild(&self, lost: &Arc<Client>) {
        let mut current = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, lost) {
            return;
        }
        match build(&self.config, &self.states) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                drop(current);
                // Whatever the old producer still holds fails at once; those
                // batches are sent again through the new one.
                old.purge(PurgeConfig::default().queue().inflight());
            }
            Err(err) => tracing::warn!(error = %err, "cannot build a new kafka producer yet"),
        }
    }
}

fn build(config: &ClientConfig, states: &Arc<StateLog>) -> Result<Client, KafkaError> {
    config.create_with_context(Context {
        states: states.clone(),
    })
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

fn failure_of(err: &KafkaError) -> Trouble {
    use RDKafkaErrorCode as Code;
    match err.rdkafka_error_code() {
        Some(Code::Fatal) => Trouble::Fatal(err.to_string()),
        Some(Code::MessageTimedOut) => Trouble::TimedOut,
        _ => Trouble::Other,
    }
}

impl Sink for KafkaSink {
    /// Keys are message ids and consumers read a partition in order: batches in
    /// parallel (or a retry overtaken by the next batch) would reorder them.
    fn keeps_order(&self) -> bool {
        true
    }

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
        let _ = self.current().flush(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_logged_when_it_changes_not_on_every_retry() {
        let states = StateLog {
            current: Mutex::new(SinkState::Ok),
        };
        let changes: Vec<bool> = [
            SinkState::Ok,
            SinkState::Unreachable,
            SinkState::Unreachable,
            SinkState::Unreachable,
            SinkState::ProducerLost,
            SinkState::Ok,
            SinkState::Ok,
        ]
        .into_iter()
        .map(|state| states.enter(state, "test"))
        .collect();
        assert_eq!(changes, [false, true, false, false, true, true, false]);
    }

    #[test]
    fn fatal_and_timed_out_deliveries_are_told_apart() {
        let fatal = KafkaError::MessageProduction(RDKafkaErrorCode::Fatal);
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let full = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(failure_of(&fatal), Trouble::Fatal(_)));
        assert!(matches!(failure_of(&timed_out), Trouble::TimedOut));
        assert!(matches!(failure_of(&full), Trouble::Other));
        assert_eq!(
            outcome_of(&timed_out),
            Outcome::Retry {
                reason: Failure::Timeout,
                after: None
            }
        );
        assert_eq!(
            outcome_of(&full),
            Outcome::Rejected {
                reason: Failure::KafkaRejected
            }
        );
    }
}
