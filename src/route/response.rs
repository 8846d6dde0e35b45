//! Every answer the public listener gives, built from static bytes and header maps
//! built once, so that building one costs a copy of its headers and nothing else.
//!
//! Every answer carries [`tracking_headers`]: a cached pixel or redirect would hide
//! opens and clicks, so neither the browser nor any CDN in front may store one
//! (`Cache-Control` for browsers and shared caches, `CDN-Cache-Control` and
//! `Surrogate-Control` for CDNs that prefer their own header, `Pragma`/`Expires` for
//! HTTP/1.0 proxies), and `nosniff` keeps a browser from reading a body as anything
//! but its declared type. hyper adds no `Server` header and neither does this module:
//! no version banner for scanners.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, EXPIRES, LOCATION, PRAGMA,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

pub type Body = Full<Bytes>;

/// A 1x1 transparent GIF89a, 43 bytes.
pub const PIXEL_GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00\
!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

const NO_STORE: HeaderValue =
    HeaderValue::from_static("no-store, no-cache, must-revalidate, private");
/// The pages have no scripts, styles or images: nothing may load, forms post only
/// here, and no other site may frame them (clickjacking an opt-out button).
const HTML_CSP: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
);
const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

fn tracking_headers(headers: &mut HeaderMap) {
    headers.insert(CACHE_CONTROL, NO_STORE);
    headers.insert(CDN_CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(SURROGATE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(EXPIRES, HeaderValue::from_static("0"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// The headers of one kind of answer, built once: cloning a finished map is two
/// allocations and copies, where inserting seven headers hashes each and grows the
/// map on the way (measured in `benches/alloc_per_hit.rs` and with callgrind).
fn headers(build: impl FnOnce(&mut HeaderMap)) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(10);
    build(&mut headers);
    tracking_headers(&mut headers);
    headers
}

static PIXEL_HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| {
    headers(|h| {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    })
});

/// `Location` comes first, as a placeholder its real value replaces in place.
static REDIRECT_HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| {
    headers(|h| {
        h.insert(LOCATION, HeaderValue::from_static("/"));
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    })
});

static HTML_HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| {
    headers(|h| {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(CONTENT_SECURITY_POLICY, HTML_CSP);
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    })
});

static TEXT_HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| {
    headers(|h| {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    })
});

fn answer(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    response
}

pub fn pixel() -> Response<Body> {
    answer(
        StatusCode::OK,
        &PIXEL_HEADERS,
        Bytes::from_static(PIXEL_GIF),
    )
}

/// A 302 to a location that was signed (or configured), never one from the request.
pub fn redirect(location: HeaderValue) -> Response<Body> {
    let mut response = answer(StatusCode::FOUND, &REDIRECT_HEADERS, Bytes::new());
    response.headers_mut().insert(LOCATION, location);
    response
}

pub fn html(status: StatusCode, page: &'static str) -> Response<Body> {
    answer(status, &HTML_HEADERS, Bytes::from_static(page.as_bytes()))
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    answer(status, &TEXT_HEADERS, Bytes::from_static(body.as_bytes()))
}

pub const LINK_NOT_FOUND_PAGE: &str =
    "<!doctype html><meta charset=utf-8><title>Link not found</title>\
<p>This link is not valid or has expired.</p>\n";

pub const UNSUBSCRIBE_CONFIRM_PAGE: &str =
    "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>\
<form method=post><input type=hidden name=List-Unsubscribe value=One-Click>\
<p>Stop receiving these emails?</p><button type=submit>Unsubscribe</button></form>\n";

pub const UNSUBSCRIBED_PAGE: &str =
    "<!doctype html><meta charset=utf-8><title>Unsubscribed</title>\
<p>You have been unsubscribed.</p>\n";

pub const BAD_UNSUBSCRIBE_PAGE: &str =
    "<!doctype html><meta charset=utf-8><title>Bad request</title>\
<p>An unsubscribe request must carry List-Unsubscribe=One-Click.</p>\n";

pub const OPTOUT_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Email tracking</title>\
<h1>Email tracking on this domain</h1>\
<p>Senders use this domain to learn whether their emails were opened and which links were \
clicked: the time, the kind of device and mail app, and an approximate location derived \
from a shortened network address. Message contents never pass through here.</p>\
<form method=post action=/optout><button type=submit>Stop recording me</button></form>\
<p>This sets a cookie on this domain in this browser; emails still display and links still work.</p>\n";

pub const OPTED_OUT_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Opted out</title>\
<p>Nothing is recorded from this browser any more.</p>\
<form method=post action=/optin><button type=submit>Record me again</button></form>\n";

pub const OPTED_IN_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Opted in</title>\
<p>Opens and clicks from this browser are recorded again.</p>\n";

pub const SENDER_MARKED_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Sender</title>\
<p>This browser is marked as the sender's: its own opens are not counted as recipients'.</p>\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_forbids_caching_and_sniffing_and_names_no_server() {
        let location = HeaderValue::from_static("https://shop.example/");
        for response in [
            pixel(),
            redirect(location),
            html(StatusCode::OK, OPTOUT_PAGE),
            text(StatusCode::NOT_FOUND, "not found\n"),
        ] {
            let headers = response.headers();
            assert_eq!(headers[CACHE_CONTROL], NO_STORE);
            assert_eq!(headers[CDN_CACHE_CONTROL], "no-store");
            assert_eq!(headers[SURROGATE_CONTROL], "no-store");
            assert_eq!(headers[PRAGMA], "no-cache");
            assert_eq!(headers[EXPIRES], "0");
            assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(!headers.contains_key(http::header::SERVER));
        }
    }

    #[test]
    fn answers_carry_their_own_headers_in_a_stable_order() {
        let response = redirect(HeaderValue::from_static("https://shop.example/a"));
        assert_eq!(response.status(), StatusCode::FOUND);
        let names: Vec<&str> = response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(&names[..2], ["location", "referrer-policy"]);
        assert_eq!(response.headers()[LOCATION], "https://shop.example/a");
        assert_eq!(response.headers().len(), 8);
        let pixel = pixel();
        assert_eq!(pixel.headers()[CONTENT_TYPE], "image/gif");
        assert_eq!(pixel.headers().len(), 7);
        let page = html(StatusCode::NOT_FOUND, LINK_NOT_FOUND_PAGE);
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        assert_eq!(page.headers()[CONTENT_SECURITY_POLICY], HTML_CSP);
        assert_eq!(
            text(StatusCode::OK, "ok\n").headers()[CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn pixel_is_a_43_byte_gif() {
        assert_eq!(PIXEL_GIF.len(), 43);
        assert!(PIXEL_GIF.starts_with(b"GIF89a"));
        assert_eq!(PIXEL_GIF[42], b';');
    }
}
