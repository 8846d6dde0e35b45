//! `GET|HEAD /c/{token}` and `/f/{token}`: a 302 to the target the token signs.
//!
//! The only locations this module ever sends are a verified token's target (checked
//! again here) and the configured fallback; nothing from the request can become one.
//! The click path also serves trap links (tokens of kind `trap`, which carry no
//! target): they are recorded (the verdict stage calls them `link_scanner:trap`) and
//! answered like a link that is not found, so nothing tells them apart from clicks.

use std::net::IpAddr;

use http::{HeaderValue, Request, Response, StatusCode};

use super::{record, require_get_or_head, response, verify_any, Edge, Hit, HttpError, RouteName};
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
    let (route, kinds): (_, &[Kind]) = if kind == Kind::Download {
        (RouteName::Download, &[Kind::Download])
    } else {
        (RouteName::Click, &[Kind::Click, Kind::Trap])
    };
    let hit = Hit {
        at_ms: now_ms(),
        peer,
        headers: request.headers(),
        head,
    };
    let location = verify_any(edge, route, token, kinds, hit.now_secs())
        .ok()
        .and_then(|claims| {
            if claims.kind == Kind::Trap {
                record(edge, claims, &hit);
                return None;
            }
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
