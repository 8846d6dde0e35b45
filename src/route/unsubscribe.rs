//! `GET|HEAD|POST /u/{token}`: RFC 8058 one-click unsubscribe.
//!
//! A GET shows a confirmation page and records nothing (link scanners fetch every
//! URL in a mail); a POST whose body says `List-Unsubscribe=One-Click` is recorded,
//! always (see `route::record`). Mail providers send the body as
//! `application/x-www-form-urlencoded` (most) or `multipart/form-data`; both are
//! accepted, anything else is not a one-click request. The body is read with a size
//! limit and a deadline; a declared length over the limit is refused at once.

use std::net::IpAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};

use super::{record, response, verify, Edge, Hit, HttpError, RouteName};
use crate::event::now_ms;
use crate::token::Kind;

const GET_HEAD_POST: &str = "GET, HEAD, POST";

pub(super) async fn answer<B>(
    edge: &Edge,
    request: Request<B>,
    token: &str,
    peer: IpAddr,
) -> Result<Response<response::Body>, HttpError>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let post = match *request.method() {
        Method::GET | Method::HEAD => false,
        Method::POST => true,
        _ => return Err(HttpError::MethodNotAllowed(GET_HEAD_POST)),
    };
    let (parts, body) = request.into_parts();
    let hit = Hit {
        at_ms: now_ms(),
        peer,
        headers: &parts.headers,
        head: parts.method == Method::HEAD,
    };
    let claims = match verify(
        edge,
        RouteName::Unsubscribe,
        token,
        Kind::Unsubscribe,
        hit.now_secs(),
    ) {
        Ok(claims) => claims,
        Err(_) => {
            return Ok(response::html(
                StatusCode::NOT_FOUND,
                response::LINK_NOT_FOUND_PAGE,
            ))
        }
    };
    if !post {
        return Ok(response::html(
            StatusCode::OK,
            response::UNSUBSCRIBE_CONFIRM_PAGE,
        ));
    }
    let body = read_body(body, edge.max_body_bytes, edge.body_timeout).await?;
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !is_one_click(content_type, &body) {
        return Err(HttpError::NotOneClick);
    }
    record(edge, claims, &hit);
    Ok(response::html(StatusCode::OK, response::UNSUBSCRIBED_PAGE))
}

async fn read_body<B>(body: B, limit: usize, timeout: Duration) -> Result<bytes::Bytes, HttpError>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    // A declared length over the limit is refused at once, not after waiting for
    // a body the client may never send.
    if body.size_hint().lower() > limit as u64 {
        return Err(HttpError::BodyTooLarge);
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            Err(HttpError::BodyTooLarge)
        }
        Ok(Err(_)) | Err(_) => Err(HttpError::BodyUnreadable),
    }
}

/// True when `body` (of the given Content-Type) carries `List-Unsubscribe=One-Click`.
pub fn is_one_click(content_type: Option<&str>, body: &[u8]) -> bool {
    let content_type = content_type.unwrap_or("application/x-www-form-urlencoded");
    let (mime, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    let mime = mime.trim();
    if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return form_urlencoded_has(body);
    }
    if mime.eq_ignore_ascii_case("multipart/form-data") {
        return boundary(params).is_some_and(|boundary| multipart_has(body, boundary.as_bytes()));
    }
    false
}

fn form_urlencoded_has(body: &[u8]) -> bool {
    body.split(|&b| b == b'&').any(|pair| {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        percent_decode(name).as_deref() == Some(b"List-Unsubscribe")
            && percent_decode(value).as_deref() == Some(b"One-Click")
    })
}

/// Form decoding: `+` is a space, `%XX` a byte; `None` for a broken escape.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let high = hex(*bytes.next()?)?;
                let low = hex(*bytes.next()?)?;
                out.push(high << 4 | low);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|d| d as u8)
}

fn boundary(params: &str) -> Option<String> {
    params.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

fn multipart_has(body: &[u8], boundary: &[u8]) -> bool {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let found = split_on(body, &delimiter).any(|part| {
        let Some(at) = find(part, b"\r\n\r\n") else {
            return false;
        };
        let (head, value) = (&part[..at], &part[at + 4..]);
        let value = value.strip_suffix(b"\r\n").unwrap_or(value);
        let names_field = head.split(|&b| b == b'\n').any(|line| {
            let line = String::from_utf8_lossy(line).to_ascii_lowercase();
            line.starts_with("content-disposition:")
                && line.contains("form-data")
                && line.contains("name=\"list-unsubscribe\"")
        });
        names_field && value == b"One-Click"
    });
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn split_on<'a>(mut body: &'a [u8], delimiter: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        match find(body, delimiter) {
            Some(at) => {
                let part = &body[..at];
                body = &body[at + delimiter.len()..];
                Some(part)
            }
            None => Some(std::mem::take(&mut body)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn urlencoded_one_click_is_accepted() {
        assert!(is_one_click(FORM, b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(FORM, b"a=b&List-Unsubscribe=One-Click"));
        assert!(is_one_click(FORM, b"List-Unsubscribe=One%2DClick"));
        assert!(is_one_click(None, b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(
            Some("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
            b"List-Unsubscribe=One-Click"
        ));
    }

    #[test]
    fn anything_else_is_refused() {
        for body in [
            &b""[..],
            b"List-Unsubscribe=one-click",
            b"List-Unsubscribe",
            b"List-Unsubscribe=One-Click%",
            b"List-Unsubscribe=One-Clickx",
            b"x=List-Unsubscribe=One-Click",
        ] {
            assert!(!is_one_click(FORM, body), "{body:?}");
        }
        assert!(!is_one_click(
            Some("application/json"),
            b"List-Unsubscribe=One-Click"
        ));
    }

    #[test]
    fn multipart_one_click_is_accepted() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        assert!(is_one_click(
            Some("multipart/form-data; boundary=XyZ"),
            body
        ));
        assert!(is_one_click(
            Some("multipart/form-data; boundary=\"XyZ\""),
            body
        ));
        assert!(!is_one_click(Some("multipart/form-data"), body));
        let other = b"--XyZ\r\nContent-Disposition: form-data; name=\"Other\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        assert!(!is_one_click(
            Some("multipart/form-data; boundary=XyZ"),
            other
        ));
    }
}
