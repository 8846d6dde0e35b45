//! What one load driver counted: answers by kind and status, errors, latencies.
//! Each driver (a tokio connection task, or the whole open-loop thread) keeps its
//! own and they are merged once at the end, so nothing is shared on the hot path.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::histogram::Latencies;
use crate::traffic::Prepared;

/// Counts for one kind of request, split by whether its token was good.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct KindCounts {
    pub sent_good: u64,
    pub sent_bad: u64,
    /// Good-token requests answered with the route's success status (200 / 302).
    pub answered_good: u64,
    /// Bad-token requests answered (pixel 200, click 404 or fallback 302).
    pub answered_bad: u64,
    /// Answered with a status the route should not give (5xx, 4xx for a good token).
    pub unexpected_status: u64,
    /// No answer: connection error or timeout. Whether the server recorded it is unknown.
    pub unanswered: u64,
}

impl KindCounts {
    pub fn add(&mut self, other: &KindCounts) {
        self.sent_good += other.sent_good;
        self.sent_bad += other.sent_bad;
        self.answered_good += other.answered_good;
        self.answered_bad += other.answered_bad;
        self.unexpected_status += other.unexpected_status;
        self.unanswered += other.unanswered;
    }
}

pub const KIND_NAMES: [&str; 3] = ["open", "click", "download"];

fn kind_index(kind: trackedge::Kind) -> usize {
    match kind {
        trackedge::Kind::Open => 0,
        trackedge::Kind::Click => 1,
        // Unsubscribe, sender and trap links are not in the load mix; counted with
        // downloads if they ever are.
        trackedge::Kind::Download
        | trackedge::Kind::Unsubscribe
        | trackedge::Kind::Sender
        | trackedge::Kind::Trap => 2,
    }
}

/// Whether `status` is the right answer for this request.
fn expected(prepared: &Prepared, status: http::StatusCode) -> bool {
    match (prepared.kind, prepared.bad) {
        (trackedge::Kind::Open, _) => status == http::StatusCode::OK,
        (_, false) => status == http::StatusCode::FOUND,
        (_, true) => status == http::StatusCode::NOT_FOUND || status == http::StatusCode::FOUND,
    }
}

#[derive(Default)]
pub struct Tally {
    pub latencies: Latencies,
    pub kinds: [KindCounts; 3],
    pub status: BTreeMap<u16, u64>,
    pub errors: u64,
    pub timeouts: u64,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn sent(&mut self, prepared: &Prepared) {
        let counts = &mut self.kinds[kind_index(prepared.kind)];
        if prepared.bad {
            counts.sent_bad += 1;
        } else {
            counts.sent_good += 1;
        }
    }

    pub fn answered(&mut self, prepared: &Prepared, status: http::StatusCode) {
        *self.status.entry(status.as_u16()).or_insert(0) += 1;
        let counts = &mut self.kinds[kind_index(prepared.kind)];
        if !expected(prepared, status) {
            counts.unexpected_status += 1;
        } else if prepared.bad {
            counts.answered_bad += 1;
        } else {
            counts.answered_good += 1;
        }
    }

    pub fn failed(&mut self, prepared: &Prepared, error: impl FnOnce() -> String) {
        self.kinds[kind_index(prepared.kind)].unanswered += 1;
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error());
        }
    }

    pub fn timed_out(&mut self, prepared: &Prepared) {
        self.kinds[kind_index(prepared.kind)].unanswered += 1;
        self.timeouts += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.latencies.merge(&other.latencies);
        for (total, part) in self.kinds.iter_mut().zip(&other.kinds) {
            total.add(part);
        }
        for (code, count) in other.status {
            *self.status.entry(code).or_insert(0) += count;
        }
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// What a whole run counted, from either driver (the open-loop thread or the
/// task-per-connection one).
pub struct Run {
    pub tally: Tally,
    pub sent: u64,
    pub answered: u64,
    /// Open loop: slots that came due before the end (sent or missed).
    pub released: u64,
}
