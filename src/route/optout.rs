//! The recipient's and the sender's own switches, both cookies on the tracking domain:
//!
//! - `GET /optout` explains what is recorded and offers the choice; `POST /optout`
//!   sets the opt-out cookie, `POST /optin` clears it. With the cookie, every hit is
//!   answered as usual and nothing is recorded.
//! - `GET|POST /s/{token}` (a signed sender link the sender's app calls once) marks
//!   this browser as the sender's, so its opens count as self-opens.

use http::header::SET_COOKIE;
use http::{HeaderValue, Method, Request, Response, StatusCode};

use super::{response, verify, Edge, HttpError, RouteName};
use crate::event::now_ms;
use crate::privacy::cookie;
use crate::token::Kind;

const GET_HEAD_POST: &str = "GET, HEAD, POST";
const POST: &str = "POST";

pub(super) fn answer<B>(
    edge: &Edge,
    request: &Request<B>,
    which: &str,
) -> Result<Response<response::Body>, HttpError> {
    let privacy = edge.privacy.config();
    match (which, request.method()) {
        ("optout", &Method::GET | &Method::HEAD) => {
            let opted_out = cookie(request.headers(), &privacy.optout_cookie).is_some();
            Ok(response::html(
                StatusCode::OK,
                if opted_out {
                    response::OPTED_OUT_PAGE
                } else {
                    response::OPTOUT_PAGE
                },
            ))
        }
        ("optout", &Method::POST) => {
            let value = set_cookie(
                &privacy.optout_cookie,
                "1",
                privacy.optout_cookie_max_age.as_secs(),
                privacy.cookie_secure,
            )?;
            let mut answer = response::html(StatusCode::OK, response::OPTED_OUT_PAGE);
            answer.headers_mut().insert(SET_COOKIE, value);
            Ok(answer)
        }
        ("optin", &Method::POST) => {
            let value = set_cookie(&privacy.optout_cookie, "", 0, privacy.cookie_secure)?;
            let mut answer = response::html(StatusCode::OK, response::OPTED_IN_PAGE);
            answer.headers_mut().insert(SET_COOKIE, value);
            Ok(answer)
        }
        ("optin", _) => Err(HttpError::MethodNotAllowed(POST)),
        _ => Err(HttpError::MethodNotAllowed(GET_HEAD_POST)),
    }
}

pub(super) fn sender<B>(
    edge: &Edge,
    request: &Request<B>,
    token: &str,
) -> Result<Response<response::Body>, HttpError> {
    if !matches!(*request.method(), Method::GET | Method::HEAD | Method::POST) {
        return Err(HttpError::MethodNotAllowed(GET_HEAD_POST));
    }
    let now_secs = now_ms() / 1000;
    let Ok(claims) = verify(edge, RouteName::Sender, token, Kind::Sender, now_secs) else {
        return Ok(response::html(
            StatusCode::NOT_FOUND,
            response::LINK_NOT_FOUND_PAGE,
        ));
    };
    let privacy = edge.privacy.config();
    let tenants = edge
        .privacy
        .sender_cookie_value(request.headers(), &claims.tenant);
    let value = set_cookie(
        &privacy.sender_cookie,
        &tenants,
        privacy.sender_cookie_max_age.as_secs(),
        privacy.cookie_secure,
    )?;
    let mut answer = response::html(StatusCode::OK, response::SENDER_MARKED_PAGE);
    answer.headers_mut().insert(SET_COOKIE, value);
    Ok(answer)
}

fn set_cookie(
    name: &str,
    value: &str,
    max_age: u64,
    secure: bool,
) -> Result<HeaderValue, HttpError> {
    let secure = if secure { "; Secure" } else { "" };
    // Names are checked at config time and values are base64url or fixed: always valid.
    HeaderValue::from_str(&format!(
        "{name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"
    ))
    .map_err(|_| HttpError::NotFound)
}
