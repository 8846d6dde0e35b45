//! The public request path: match the route, then run its stages in the order
//! written once in the crate docs ("The life of a hit", `src/lib.rs`).
//!
//! Input: a parsed request from `server` and the peer address. Output: a response
//! built from static bytes (see [`response`]) and at most one [`Event`] handed to
//! [`EventSender::send`], which never waits. Nothing here touches disk or network,
//! and a GET never changes state (link scanners fetch every URL in a mail).

mod click;
mod optout;
mod pixel;
mod request_metrics;
pub mod response;
mod unsubscribe;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{ALLOW, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};

use crate::config::Config;
use crate::enrich::Enricher;
use crate::event::{now_ms, Event, IdGenerator};
use crate::hit::Hit;
use crate::keys::Keys;
use crate::privacy::{Privacy, SkipReason};
use crate::ratelimit::{Decision, RecordLimiter};
use crate::spool::{EventSender, Relabel};
use crate::token::{self, Claims, Kind, TokenError};
use request_metrics::RequestMetrics;
use response::Body;

/// Everything the request path shares, built once at start.
pub struct Edge {
    pub keys: Arc<Keys>,
    pub events: EventSender,
    pub ids: IdGenerator,
    pub enrich: Arc<Enricher>,
    pub metrics: RequestMetrics,
    pub privacy: Privacy,
    /// Per-network cap on what is recorded (never on what is answered).
    pub limiter: RecordLimiter,
    pub node: Arc<str>,
    pub max_token_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// Where bad click tokens go instead of the 404 page; checked at config time.
    pub click_fallback: Option<HeaderValue>,
}

impl Edge {
    /// The request path's state: its limits, fallback and node id from `config`, and
    /// the stages the caller started (the server, or a bench or test without one).
    pub fn new(
        config: &Config,
        keys: Arc<Keys>,
        events: EventSender,
        enrich: Arc<Enricher>,
        privacy: Privacy,
    ) -> Edge {
        let public = &config.public;
        Edge {
            keys,
            events,
            ids: IdGenerator::new(),
            enrich,
            metrics: RequestMetrics::register(),
            privacy,
            limiter: RecordLimiter::new(config.rate_limit.clone(), now_ms()),
            node: config.node_id.as_str().into(),
            max_token_bytes: public.max_token_bytes,
            max_uri_bytes: public.max_uri_bytes,
            max_body_bytes: public.max_body_bytes,
            body_timeout: public.header_read_timeout,
            click_fallback: public
                .click_fallback_url
                .as_deref()
                .map(HeaderValue::from_str)
                .transpose()
                .expect("config validation admits only visible-ASCII fallback URLs"),
        }
    }
}

/// The routes of the public listener; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteName {
    Pixel,
    Click,
    Download,
    Unsubscribe,
    OptOut,
    Sender,
    Healthz,
    NotFound,
}

impl RouteName {
    pub const ALL: [RouteName; 8] = [
        RouteName::Pixel,
        RouteName::Click,
        RouteName::Download,
        RouteName::Unsubscribe,
        RouteName::OptOut,
        RouteName::Sender,
        RouteName::Healthz,
        RouteName::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteName::Pixel => "pixel",
            RouteName::Click => "click",
            RouteName::Download => "download",
            RouteName::Unsubscribe => "unsubscribe",
            RouteName::OptOut => "optout",
            RouteName::Sender => "sender",
            RouteName::Healthz => "healthz",
            RouteName::NotFound => "not_found",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a request was refused before or instead of its route's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    NotFound,
    MethodNotAllowed(&'static str),
    BodyTooLarge,
    BodyUnreadable,
    NotOneClick,
    UriTooLong,
    /// An HTTP/1.1 request without `Host` (RFC 9112 section 3.2 asks for a 400).
    MissingHost,
}

impl HttpError {
    pub const ALL: [HttpError; 7] = [
        HttpError::NotFound,
        HttpError::MethodNotAllowed(""),
        HttpError::BodyTooLarge,
        HttpError::BodyUnreadable,
        HttpError::NotOneClick,
        HttpError::UriTooLong,
        HttpError::MissingHost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpError::NotFound => "not_found",
            HttpError::MethodNotAllowed(_) => "method_not_allowed",
            HttpError::BodyTooLarge => "body_too_large",
            HttpError::BodyUnreadable => "body_unreadable",
            HttpError::NotOneClick => "not_one_click",
            HttpError::UriTooLong => "uri_too_long",
            HttpError::MissingHost => "missing_host",
        }
    }

    pub fn index(self) -> usize {
        match self {
            HttpError::NotFound => 0,
            HttpError::MethodNotAllowed(_) => 1,
            HttpError::BodyTooLarge => 2,
            HttpError::BodyUnreadable => 3,
            HttpError::NotOneClick => 4,
            HttpError::UriTooLong => 5,
            HttpError::MissingHost => 6,
        }
    }

    fn respond(self) -> Response<Body> {
        match self {
            HttpError::NotFound => response::text(StatusCode::NOT_FOUND, "not found\n"),
            HttpError::MethodNotAllowed(allow) => {
                let mut response =
                    response::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                response
            }
            HttpError::BodyTooLarge => {
                response::text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")
            }
            HttpError::BodyUnreadable => {
                response::text(StatusCode::BAD_REQUEST, "body could not be read\n")
            }
            HttpError::NotOneClick => {
                response::html(StatusCode::BAD_REQUEST, response::BAD_UNSUBSCRIBE_PAGE)
            }
            HttpError::UriTooLong => response::text(StatusCode::URI_TOO_LONG, "uri too long\n"),
            HttpError::MissingHost => {
                response::text(StatusCode::BAD_REQUEST, "missing Host header\n")
            }
        }
    }
}

const GET_HEAD: &str = "GET, HEAD";

/// Answers one public request.
pub async fn handle<B>(edge: &Edge, request: Request<B>, peer: IpAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let uri = request.uri();
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let refused = if uri_len > edge.max_uri_bytes {
        Some(HttpError::UriTooLong)
    } else if request.version() == Version::HTTP_11 && !request.headers().contains_key(HOST) {
        Some(HttpError::MissingHost)
    } else {
        None
    };
    if let Some(error) = refused {
        edge.metrics.refused(error);
        let response = error.respond();
        edge.metrics
            .answered(RouteName::NotFound, response.status(), started.elapsed());
        return response;
    }
    let (route, token) = match_path(request.uri().path());
    let result = match route {
        RouteName::Pixel => pixel::answer(edge, &request, token, peer),
        RouteName::Click => click::answer(edge, &request, token, peer, Kind::Click),
        RouteName::Download => click::answer(edge, &request, token, peer, Kind::Download),
        RouteName::Unsubscribe => {
            let token = token.to_owned();
            unsubscribe::answer(edge, request, &token, peer).await
        }
        RouteName::OptOut => optout::answer(edge, &request, token),
        RouteName::Sender => optout::sender(edge, &request, token),
        RouteName::Healthz => match *request.method() {
            Method::GET | Method::HEAD => Ok(response::text(StatusCode::OK, "ok\n")),
            _ => Err(HttpError::MethodNotAllowed(GET_HEAD)),
        },
        RouteName::NotFound => Err(HttpError::NotFound),
    };
    let response = result.unwrap_or_else(|error| {
        edge.metrics.refused(error);
        error.respond()
    });
    edge.metrics
        .answered(route, response.status(), started.elapsed());
    response
}

fn match_path(path: &str) -> (RouteName, &str) {
    let matched = if let Some(rest) = path.strip_prefix("/o/") {
        rest.strip_suffix(".gif")
            .map(|token| (RouteName::Pixel, token))
    } else if let Some(token) = path.strip_prefix("/c/") {
        Some((RouteName::Click, token))
    } else if let Some(token) = path.strip_prefix("/f/") {
        Some((RouteName::Download, token))
    } else if let Some(token) = path.strip_prefix("/u/") {
        Some((RouteName::Unsubscribe, token))
    } else if let Some(token) = path.strip_prefix("/s/") {
        Some((RouteName::Sender, token))
    } else if path == "/healthz" {
        Some((RouteName::Healthz, ""))
    } else if path == "/optout" || path == "/optin" {
        // The "token" tells the two apart; neither carries a real one.
        Some((RouteName::OptOut, &path[1..]))
    } else {
        None
    };
    match matched {
        Some((route @ (RouteName::Healthz | RouteName::OptOut), token)) => (route, token),
        Some((route, token)) if is_token_shaped(token) => (route, token),
        _ => (RouteName::NotFound, ""),
    }
}

/// A token is one non-empty path segment, or two (a routing key, then the token);
/// their content is the verifier's business.
fn is_token_shaped(token: &str) -> bool {
    token::routing_split(token).is_some()
}

fn require_get_or_head<B>(request: &Request<B>) -> Result<bool, HttpError> {
    match *request.method() {
        Method::GET => Ok(false),
        Method::HEAD => Ok(true),
        _ => Err(HttpError::MethodNotAllowed(GET_HEAD)),
    }
}

/// Verifies a token at `now_secs` against the keys in force; a failure is counted
/// for `route`.
fn verify(
    edge: &Edge,
    route: RouteName,
    token: &str,
    kind: Kind,
    now_secs: u64,
) -> Result<Claims, TokenError> {
    verify_any(edge, route, token, &[kind], now_secs)
}

/// [`verify`] on a path that serves several kinds.
fn verify_any(
    edge: &Edge,
    route: RouteName,
    token: &str,
    kinds: &[Kind],
    now_secs: u64,
) -> Result<Claims, TokenError> {
    let keys = edge.keys.ring();
    token::verify_any(&keys, token, kinds, now_secs, edge.max_token_bytes).inspect_err(|reason| {
        edge.metrics.token_failed(route, *reason);
    })
}

/// The privacy stage, the client's address, the per-network recording limit, the
/// rest of enrichment, then the event: built from verified claims and the request's
/// facts as the privacy policy allows, and queued without waiting. The limit keys on
/// the address the enrich stage resolved from trusted proxy headers, and runs before
/// the rest so that a dropped event leaves no first-seen mark behind.
///
/// An unsubscribe is the recipient's own request and the sender's legal duty: it is
/// always recorded. Where tracking is refused it is recorded without anything about
/// the request ([`record_untracked`]); the recording limit only ever marks it.
fn record(edge: &Edge, claims: Claims, hit: &Hit) {
    let now_secs = hit.now_secs();
    let unsubscribe = claims.kind == Kind::Unsubscribe;
    let marks = match edge.privacy.decide(&claims, hit.headers, now_secs) {
        Ok(marks) => marks,
        Err(reason) if unsubscribe => return record_untracked(edge, claims, hit, reason),
        Err(_) => return,
    };
    let kind = claims.kind;
    let client = edge.enrich.client_addr(hit);
    let rate_limited = match edge.limiter.check(
        client.ip,
        client.asn.as_ref().map(|asn| asn.number),
        hit.at_ms,
    ) {
        Decision::Record => false,
        Decision::Mark => true,
        Decision::Drop if unsubscribe => true,
        Decision::Drop => return,
    };
    let id = edge.ids.next(hit.at_ms);
    let enriched = edge.enrich.describe(hit, &claims, client, id);
    let mut event = Event::of_claims(
        claims,
        id,
        hit.at_ms,
        enriched.verdict.reason,
        edge.node.clone(),
    );
    event.ip = edge.privacy.ip(enriched.ip, now_secs);
    event.geo = enriched.geo;
    event.asn = enriched.asn;
    event.ua = edge.privacy.ua(enriched.ua);
    event.client = enriched.client;
    event.class = enriched.verdict.class;
    event.certainty = enriched.verdict.certainty;
    event.first = enriched.first;
    event.dnt = marks.dnt;
    event.gpc = marks.gpc;
    event.head = hit.head;
    event.self_open = marks.self_open;
    event.rate_limited = rate_limited;
    // Rare (a burst's third click, a trap hit), so built only then.
    let relabel = enriched.relabel.map(|relabel| Relabel {
        reclassify: Event::reclassify(
            edge.ids.next(hit.at_ms),
            hit.at_ms,
            &event,
            Vec::new(),
            relabel.verdict.class,
            relabel.verdict.reason,
            relabel.verdict.certainty,
        ),
        ids: relabel.ids,
    });
    if edge.events.send(event).is_ok() {
        edge.metrics.emitted(kind);
    }
    if let Some(relabel) = relabel {
        let named = relabel.ids.len() as u64;
        if !edge.events.relabel(relabel) {
            edge.metrics.relabel_lost(named);
        }
    }
}

/// An unsubscribe whose tracking was refused (`reason`): its ids, time and the
/// reason, nothing about the client; its class is not assessed.
fn record_untracked(edge: &Edge, claims: Claims, hit: &Hit, reason: SkipReason) {
    let kind = claims.kind;
    let id = edge.ids.next(hit.at_ms);
    let mut event = Event::of_claims(
        claims,
        id,
        hit.at_ms,
        Arc::from("not_tracked"),
        edge.node.clone(),
    );
    event.head = hit.head;
    event.not_tracked = Some(reason.as_str());
    if edge.events.send(event).is_ok() {
        edge.metrics.emitted(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_routes() {
        assert_eq!(match_path("/o/abc.gif"), (RouteName::Pixel, "abc"));
        assert_eq!(match_path("/c/abc"), (RouteName::Click, "abc"));
        assert_eq!(match_path("/f/abc"), (RouteName::Download, "abc"));
        assert_eq!(match_path("/u/abc"), (RouteName::Unsubscribe, "abc"));
        assert_eq!(match_path("/healthz"), (RouteName::Healthz, ""));
        assert_eq!(match_path("/optout"), (RouteName::OptOut, "optout"));
        assert_eq!(match_path("/optin"), (RouteName::OptOut, "optin"));
        assert_eq!(match_path("/s/abc"), (RouteName::Sender, "abc"));
        assert_eq!(match_path("/o/rk/abc.gif"), (RouteName::Pixel, "rk/abc"));
        assert_eq!(match_path("/c/rk/abc"), (RouteName::Click, "rk/abc"));
        for path in [
            "/",
            "/o/abc",
            "/o/.gif",
            "/c/",
            "/c/a/b/c",
            "/c//b",
            "/c/a/",
            "/o/rk/.gif",
            "/x",
            "/healthz/",
            "//c/abc",
        ] {
            assert_eq!(match_path(path).0, RouteName::NotFound, "{path}");
        }
    }
}
