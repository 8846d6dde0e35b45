//! Accounting: did every answered, valid request become exactly one delivered
//! event? Pure arithmetic over what the client counted, what the edge's metrics
//! say, and what the receiver (or the interim event file) holds, so it is
//! unit-tested without a server.
//!
//! Expected losses are named: bad tokens (never recorded), requests that got no
//! answer (their fate is unknown), events the edge dropped and counted. What is left
//! is unexplained loss, and that fails the run.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::receiver::IngestCounts;
use crate::tally::KindCounts;

/// Counters scraped from the edge's admin /metrics (summed over labels).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct EdgeCounts {
    pub events_emitted: u64,
    pub token_failures: u64,
    pub events_dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Accounting {
    pub sent: u64,
    pub answered: u64,
    /// Answered valid requests: each must yield one event.
    pub expected_events: u64,
    pub recorded_by_edge: Option<u64>,
    pub delivered: u64,
    pub duplicates: u64,
    /// Not delivered, by reason; `unexplained` fails the run.
    pub lost: BTreeMap<&'static str, u64>,
    /// Delivered events no answered valid request explains (e.g. a bad token recorded).
    pub unexplained_extra: u64,
    pub unexpected_status: u64,
    pub problems: Vec<String>,
    pub ok: bool,
}

pub fn reconcile(
    client: &KindCounts,
    edge: Option<&EdgeCounts>,
    delivered: &IngestCounts,
) -> Accounting {
    let sent = client.sent_good + client.sent_bad;
    let answered = client.answered_good + client.answered_bad + client.unexpected_status;
    let expected = client.answered_good;
    let mut lost = BTreeMap::new();
    lost.insert("bad_token", client.answered_bad);
    lost.insert("unanswered", client.unanswered);
    let shortfall = expected.saturating_sub(delivered.unique);
    let dropped = edge.map_or(0, |e| e.events_dropped);
    let explained_drop = shortfall.min(dropped);
    lost.insert("dropped_by_edge", explained_drop);
    let unexplained = shortfall - explained_drop;
    lost.insert("unexplained", unexplained);
    // Extra events can come from requests whose answer we never saw.
    let extra = delivered.unique.saturating_sub(expected);
    let unexplained_extra = extra.saturating_sub(client.unanswered);
    let mut problems = Vec::new();
    if unexplained > 0 {
        problems.push(format!(
            "{unexplained} answered valid requests have no delivered event"
        ));
    }
    if unexplained_extra > 0 {
        problems.push(format!(
            "{unexplained_extra} delivered events match no answered valid request"
        ));
    }
    if client.unexpected_status > 0 {
        problems.push(format!(
            "{} requests got a status their route should not give",
            client.unexpected_status
        ));
    }
    if delivered.bad_lines > 0 {
        problems.push(format!(
            "{} delivered lines are not events with an id",
            delivered.bad_lines
        ));
    }
    if let Some(edge) = edge {
        if edge.token_failures < client.answered_bad {
            problems.push(format!(
                "the edge counted {} token failures for {} bad tokens answered",
                edge.token_failures, client.answered_bad
            ));
        }
        if edge.events_emitted < delivered.unique {
            problems.push(format!(
                "more events delivered ({}) than the edge says it emitted ({})",
                delivered.unique, edge.events_emitted
            ));
        }
    }
    Accounting {
        sent,
        answered,
        expected_events: expected,
        recorded_by_edge: edge.map(|e| e.events_emitted),
        delivered: delivered.unique,
        duplicates: delivered.duplicates,
        lost,
        unexplained_extra,
        unexpected_status: client.unexpected_status,
        ok: problems.is_empty(),
        problems,
    }
}

/// Sums every series of `name` in Prometheus text (any labels).
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name{...} v` or `name v`, not `name_suffix`.
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .map(|v| v as u64)
        .sum()
}

pub fn edge_counts(metrics: &str) -> EdgeCounts {
    EdgeCounts {
        events_emitted: metric_sum(metrics, "trackedge_events_emitted_total"),
        token_failures: metric_sum(metrics, "trackedge_token_failures_total"),
        events_dropped: metric_sum(metrics, "trackedge_events_dropped_total"),
    }
}

pub fn table(a: &Accounting) -> String {
    let lost: Vec<String> = a.lost.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let mut out = format!(
        "accounting: sent {} answered {} expected events {} recorded {} delivered {} duplicates {}\nnot delivered: {}\n",
        a.sent,
        a.answered,
        a.expected_events,
        a.recorded_by_edge.map_or("?".into(), |v| v.to_string()),
        a.delivered,
        a.duplicates,
        lost.join(", ")
    );
    for problem in &a.problems {
        out.push_str(&format!("PROBLEM: {problem}\n"));
    }
    out.push_str(if a.ok {
        "result: nothing lost\n"
    } else {
        "result: FAILED\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> KindCounts {
        KindCounts {
            sent_good: 1000,
            sent_bad: 20,
            answered_good: 990,
            answered_bad: 20,
            unexpected_status: 0,
            unanswered: 10,
        }
    }

    fn delivered(unique: u64) -> IngestCounts {
        IngestCounts {
            unique,
            lines: unique,
            ..IngestCounts::default()
        }
    }

    fn edge(emitted: u64, dropped: u64) -> EdgeCounts {
        EdgeCounts {
            events_emitted: emitted,
            token_failures: 20,
            events_dropped: dropped,
        }
    }

    #[test]
    fn everything_delivered_is_ok_and_bad_tokens_are_expected_loss() {
        let a = reconcile(&client(), Some(&edge(995, 0)), &delivered(995));
        assert!(a.ok, "{:?}", a.problems);
        assert_eq!(a.lost["bad_token"], 20);
        assert_eq!(a.lost["unanswered"], 10);
        assert_eq!(a.lost["unexplained"], 0);
        assert_eq!(a.sent, 1020);
    }

    #[test]
    fn drops_the_edge_counted_explain_loss_and_the_rest_fails() {
        let a = reconcile(&client(), Some(&edge(990, 5)), &delivered(985));
        assert!(a.ok, "{:?}", a.problems);
        assert_eq!(a.lost["dropped_by_edge"], 5);
        let a = reconcile(&client(), Some(&edge(990, 5)), &delivered(980));
        assert!(!a.ok);
        assert_eq!(a.lost["unexplained"], 5);
    }

    #[test]
    fn a_recorded_bad_token_is_a_failure() {
        let mut c = client();
        c.unanswered = 0;
        let a = reconcile(&c, None, &delivered(991));
        assert_eq!(a.unexplained_extra, 1);
        assert!(!a.ok);
    }

    #[test]
    fn metric_sums_cover_labels_and_skip_longer_names() {
        let text = "# HELP x\ntrackedge_events_emitted_total{kind=\"open\"} 7\ntrackedge_events_emitted_total{kind=\"click\"} 3\ntrackedge_events_emitted_total_other 100\ntrackedge_events_dropped_total 2\n";
        assert_eq!(metric_sum(text, "trackedge_events_emitted_total"), 10);
        assert_eq!(edge_counts(text).events_dropped, 2);
    }
}
