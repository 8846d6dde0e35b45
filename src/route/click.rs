//! `GET|HEAD /c/{token}` and `/f/{token}`: a 302 to the target the token signs.
//!
//! The only locations this module ever sends are a verified token's target (checked
//! again here) and the configured fallback; nothing from the request can become one.

use std::net::IpAddr;

use http::{HeaderValue, Request, Response, StatusCode};

use super::{record, require_get_or_head, response, verify, Edge, Hit, HttpError, RouteName};
use crate::event::now_ms;
use crate::token::Kind;

pub(super) fn answer<B>(
    edge: &Edge,
    request: &Request<B>,
    token: &str,
    peer: IpAddr,
    kind: Kind,
) -> Result<Response<response::Body>, HttpError> {
    let head = require_get_or_head(request)?;
    let route = if kind == Kind::Download {
        RouteName::Download
    } else {
        RouteName::Click
    };
    let hit = Hit {
        at_ms: now_ms(),
        peer,
        headers: request.headers(),
        head,
    };
    let location = verify(edge, route, token, kind, hit.now_secs())
        .ok()
        .and_then(|claims| {
            let location = claims
                .target
                .as_deref()
                .and_then(|target| HeaderValue::from_str(target).ok())?;
            record(edge, claims, &hit);
            Some(location)
        });
    Ok(match (location, &edge.click_fallback) {
        (Some(location), _) => response::redirect(location),
        (None, Some(fallback)) => response::redirect(fallback.clone()),
        (None, None) => response::html(StatusCode::NOT_FOUND, response::LINK_NOT_FOUND_PAGE),
    })
}
