//! The request path's metrics: requests by route and status class, their duration,
//! token failures, refusals and events emitted. The handles are registered once at
//! start, only for the label pairs that can happen (so dashboards see zeros rather
//! than missing series, and no impossible pair is ever exported).

use std::time::Duration;

use metrics::{Counter, Histogram};

use super::{HttpError, RouteName};
use crate::metrics::{
    CLASSIFY_RELABELLED_EVENTS_TOTAL, EVENTS_EMITTED_TOTAL, HTTP_ERRORS_TOTAL, HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS, TOKEN_FAILURES_TOTAL,
};
use crate::token::{Kind, TokenError};

/// HTTP status classes used as the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl StatusClass {
    const ALL: [StatusClass; 4] = [
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: http::StatusCode) -> StatusClass {
        match status.as_u16() {
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            500.. => StatusClass::ServerError,
            _ => StatusClass::Success,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

struct RouteMetrics {
    /// Only the status classes the route can answer are registered (and so exported
    /// at zero); an answer outside them registers its series on first use.
    by_status: [Option<Counter>; 4],
    duration: Histogram,
    token_failures: [Option<Counter>; TokenError::ALL.len()],
}

/// Handles for everything the request path counts, registered once.
pub struct RequestMetrics {
    routes: Vec<RouteMetrics>,
    emitted: [Option<Counter>; Kind::ALL.len()],
    refused: [Counter; HttpError::ALL.len()],
    relabels_lost: Counter,
}

/// The status classes a route's answers fall in: what its handlers build (a bad
/// click token answers 404 or the fallback's 302; nothing on the path answers 5xx).
fn possible_statuses(route: RouteName) -> &'static [StatusClass] {
    use StatusClass::{ClientError, Redirect, Success};
    match route {
        RouteName::Click | RouteName::Download => &[Redirect, ClientError],
        RouteName::Pixel
        | RouteName::Unsubscribe
        | RouteName::OptOut
        | RouteName::Sender
        | RouteName::Healthz => &[Success, ClientError],
        RouteName::NotFound => &[ClientError],
    }
}

/// The token kind a route verifies, if it reads a token at all.
fn token_kind(route: RouteName) -> Option<Kind> {
    match route {
        RouteName::Pixel => Some(Kind::Open),
        RouteName::Click => Some(Kind::Click),
        RouteName::Download => Some(Kind::Download),
        RouteName::Unsubscribe => Some(Kind::Unsubscribe),
        RouteName::Sender => Some(Kind::Sender),
        RouteName::OptOut | RouteName::Healthz | RouteName::NotFound => None,
    }
}

/// Whether verifying a token on `route` can fail for `reason`: only routes that read
/// a token fail, and `bad_target` only where the token carries a target (a token of
/// another kind fails as `wrong_kind` before its target is looked at).
fn token_failure_possible(route: RouteName, reason: TokenError) -> bool {
    match token_kind(route) {
        None => false,
        Some(kind) => reason != TokenError::BadTarget || kind.has_target(),
    }
}

/// Kinds that become events: a sender link only sets a cookie.
fn recorded(kind: Kind) -> bool {
    kind != Kind::Sender
}

impl RequestMetrics {
    /// Registers (and so exports at zero) every series the request path can touch.
    pub fn register() -> RequestMetrics {
        let routes = RouteName::ALL
            .iter()
            .map(|&route| RouteMetrics {
                by_status: StatusClass::ALL.map(|class| {
                    possible_statuses(route)
                        .contains(&class)
                        .then(|| requests_counter(route, class))
                }),
                duration: metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route.as_str()),
                token_failures: TokenError::ALL.map(|reason| {
                    token_failure_possible(route, reason)
                        .then(|| token_failures_counter(route, reason))
                }),
            })
            .collect();
        RequestMetrics {
            routes,
            emitted: Kind::ALL.map(|kind| recorded(kind).then(|| emitted_counter(kind))),
            refused: HttpError::ALL
                .map(|error| metrics::counter!(HTTP_ERRORS_TOTAL, "reason" => error.as_str())),
            relabels_lost: {
                let lost = metrics::counter!(CLASSIFY_RELABELLED_EVENTS_TOTAL, "outcome" => "lost");
                lost.absolute(0);
                lost
            },
        }
    }

    /// A relabel found no room in the hand-off channel: its events keep their label.
    pub fn relabel_lost(&self) {
        self.relabels_lost.increment(1);
    }

    pub fn refused(&self, error: HttpError) {
        self.refused[error.index()].increment(1);
    }

    pub fn answered(&self, route: RouteName, status: http::StatusCode, elapsed: Duration) {
        let metrics = &self.routes[route.index()];
        let class = StatusClass::of(status);
        match &metrics.by_status[class.index()] {
            Some(counter) => counter.increment(1),
            None => requests_counter(route, class).increment(1),
        }
        metrics.duration.record(elapsed.as_secs_f64());
    }

    pub fn token_failed(&self, route: RouteName, reason: TokenError) {
        match &self.routes[route.index()].token_failures[reason.index()] {
            Some(counter) => counter.increment(1),
            None => token_failures_counter(route, reason).increment(1),
        }
    }

    pub fn emitted(&self, kind: Kind) {
        match &self.emitted[kind.index()] {
            Some(counter) => counter.increment(1),
            None => emitted_counter(kind).increment(1),
        }
    }
}

fn requests_counter(route: RouteName, class: StatusClass) -> Counter {
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.as_str(), "status" => class.as_str())
}

fn token_failures_counter(route: RouteName, reason: TokenError) -> Counter {
    metrics::counter!(TOKEN_FAILURES_TOTAL, "route" => route.as_str(), "reason" => reason.as_str())
}

fn emitted_counter(kind: Kind) -> Counter {
    metrics::counter!(EVENTS_EMITTED_TOTAL, "kind" => kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_possible_token_failures_are_registered() {
        let possible: Vec<(&str, &str)> = RouteName::ALL
            .iter()
            .flat_map(|&route| {
                TokenError::ALL
                    .iter()
                    .filter(move |&&reason| token_failure_possible(route, reason))
                    .map(move |reason| (route.as_str(), reason.as_str()))
            })
            .collect();
        // Five routes read a token, nine reasons each, bad_target on the two that
        // redirect.
        assert_eq!(possible.len(), 5 * 9 + 2);
        assert!(possible.contains(&("click", "bad_target")));
        assert!(!possible.contains(&("pixel", "bad_target")));
        assert!(!possible.iter().any(|(route, _)| *route == "healthz"));
    }

    #[test]
    fn http_error_indexes_match_their_list() {
        for (index, error) in HttpError::ALL.iter().enumerate() {
            assert_eq!(error.index(), index);
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(http::StatusCode::OK).as_str(), "2xx");
        assert_eq!(StatusClass::of(http::StatusCode::FOUND).as_str(), "3xx");
        assert_eq!(StatusClass::of(http::StatusCode::NOT_FOUND).as_str(), "4xx");
        assert_eq!(
            StatusClass::of(http::StatusCode::SERVICE_UNAVAILABLE).as_str(),
            "5xx"
        );
    }

    #[test]
    fn label_enums_index_their_place_in_all() {
        for (at, kind) in Kind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), at);
        }
        for (at, reason) in TokenError::ALL.iter().enumerate() {
            assert_eq!(reason.index(), at);
        }
        for (at, route) in RouteName::ALL.iter().enumerate() {
            assert_eq!(route.index(), at);
        }
    }
}
