//! `GET|HEAD /o/{token}.gif`: always the GIF (a broken image in a mail is worse than
//! a lost open); an event only for a valid open token.

use std::net::IpAddr;

use http::{Request, Response};

use super::{record, require_get_or_head, response, verify, Edge, Hit, HttpError, RouteName};
use crate::event::now_ms;
use crate::token::Kind;

pub(super) fn answer<B>(
    edge: &Edge,
    request: &Request<B>,
    token: &str,
    peer: IpAddr,
) -> Result<Response<response::Body>, HttpError> {
    let head = require_get_or_head(request)?;
    let hit = Hit {
        at_ms: now_ms(),
        peer,
        headers: request.headers(),
        head,
    };
    if let Ok(claims) = verify(edge, RouteName::Pixel, token, Kind::Open, hit.now_secs()) {
        record(edge, claims, &hit);
    }
    Ok(response::pixel())
}
