//! The client's address: the TCP peer, unless the peer is a trusted proxy (a CDN
//! edge in `client_ip.trusted_proxies`), in which case the address that proxy
//! reports in the configured header.
//!
//! Input: the peer address and the request headers. Output: a [`Resolved`] address
//! (IPv4-mapped IPv6 turned into IPv4) and whether a header value was malformed.
//! Invariants: headers from untrusted peers are never read, so a client cannot
//! choose its own address; in a list header (`X-Forwarded-For`, `Forwarded`) the
//! answer is the right-most address not in the trusted set, since everything left
//! of it was written by parties we do not trust; a malformed value is ignored (the
//! last trustworthy hop is used) and reported. The full address stays in memory:
//! only its truncated form is ever written.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName};

use super::cidr::CidrSet;

/// Where a trusted proxy puts the client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `X-Forwarded-For: client, proxy1, proxy2` (every header line, in order).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=192.0.2.1;proto=https, for="[2001:db8::1]:443"`.
    Forwarded,
    /// A header holding exactly one address (`CF-Connecting-IP`, `True-Client-IP`,
    /// `Fastly-Client-IP`, `X-Real-IP`).
    Single(HeaderName),
}

/// The header names accepted by `client_ip.header`, lower-case.
pub const HEADERS: [&str; 6] = [
    "x-forwarded-for",
    "forwarded",
    "cf-connecting-ip",
    "true-client-ip",
    "fastly-client-ip",
    "x-real-ip",
];

impl Source {
    /// `None` for a name outside [`HEADERS`].
    pub fn from_header_name(name: &str) -> Option<Source> {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "x-forwarded-for" => Some(Source::XForwardedFor),
            "forwarded" => Some(Source::Forwarded),
            other if HEADERS.contains(&other) => Some(Source::Single(
                HeaderName::from_bytes(other.as_bytes()).ok()?,
            )),
            _ => None,
        }
    }
}

/// Where the answer came from; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The TCP peer (no trusted proxy in front, or no usable header).
    Peer,
    /// The header a trusted proxy set.
    Header,
}

impl Origin {
    pub const ALL: [Origin; 2] = [Origin::Peer, Origin::Header];

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Peer => "peer",
            Origin::Header => "header",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub ip: IpAddr,
    pub origin: Origin,
    /// A header value (or one element of it) could not be read as an address.
    pub malformed: bool,
}

#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: CidrSet,
    source: Source,
}

impl ClientIp {
    pub fn new(trusted: CidrSet, source: Source) -> ClientIp {
        ClientIp { trusted, source }
    }

    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> Resolved {
        let peer = peer.to_canonical();
        let mut resolved = Resolved {
            ip: peer,
            origin: Origin::Peer,
            malformed: false,
        };
        if self.trusted.is_empty() || !self.trusted.contains(peer) {
            return resolved;
        }
        match &self.source {
            Source::Single(name) => {
                if let Some(value) = headers.get(name) {
                    match value.to_str().ok().and_then(parse_node) {
                        Some(ip) => {
                            resolved.ip = ip;
                            resolved.origin = Origin::Header;
                        }
                        None => resolved.malformed = true,
                    }
                }
            }
            Source::XForwardedFor => {
                self.walk(headers, "x-forwarded-for", parse_node, &mut resolved)
            }
            Source::Forwarded => self.walk(headers, "forwarded", forwarded_for, &mut resolved),
        }
        resolved
    }

    /// Right to left over every element of every line of a list header: skip
    /// trusted hops, stop at the first untrusted address or at a malformed element.
    fn walk(
        &self,
        headers: &HeaderMap,
        name: &'static str,
        element: fn(&str) -> Option<IpAddr>,
        resolved: &mut Resolved,
    ) {
        for line in headers.get_all(name).iter().rev() {
            let Ok(line) = line.to_str() else {
                resolved.malformed = true;
                return;
            };
            for item in line.rsplit(',') {
                if item.trim().is_empty() {
                    continue;
                }
                let Some(ip) = element(item) else {
                    resolved.malformed = true;
                    return;
                };
                resolved.ip = ip;
                resolved.origin = Origin::Header;
                if !self.trusted.contains(ip) {
                    return;
                }
            }
        }
    }
}

/// One address as proxies write it: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`, possibly quoted; IPv4-mapped -> IPv4.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if text.len() > 64 {
        return None;
    }
    let ip = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Ok(socket) = text.parse::<SocketAddr>() {
        socket.ip()
    } else {
        text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?
    };
    Some(ip.to_canonical())
}

/// The `for=` parameter of one RFC 7239 element; obfuscated or `unknown` nodes
/// carry no address and count as malformed.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn resolver(header: &str) -> ClientIp {
        ClientIp::new(
            CidrSet::parse(&["10.0.0.0/8", "2001:db8:cafe::/48", "127.0.0.1"]).unwrap(),
            Source::from_header_name(header).unwrap(),
        )
    }

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let xff = resolver("x-forwarded-for");
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let got = xff.resolve(ip("198.51.100.7"), &h);
        assert_eq!((got.ip, got.origin), (ip("198.51.100.7"), Origin::Peer));
        let cf = resolver("cf-connecting-ip");
        let got = cf.resolve(
            ip("198.51.100.7"),
            &headers(&[("cf-connecting-ip", "1.2.3.4")]),
        );
        assert_eq!(got.ip, ip("198.51.100.7"));
    }

    #[test]
    fn trusted_peer_chain_gives_the_rightmost_untrusted_address() {
        let xff = resolver("x-forwarded-for");
        // The left-most entry is whatever the client sent: never believed.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")]);
        let got = xff.resolve(ip("10.0.0.2"), &h);
        assert_eq!((got.ip, got.origin), (ip("203.0.113.9"), Origin::Header));
        assert!(!got.malformed);
        // Several header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-for", "10.9.9.9"),
        ]);
        assert_eq!(xff.resolve(ip("10.0.0.2"), &h).ip, ip("203.0.113.9"));
        // All hops trusted: the left-most is the best we know.
        let h = headers(&[("x-forwarded-for", "10.3.3.3, 10.2.2.2")]);
        assert_eq!(xff.resolve(ip("10.0.0.2"), &h).ip, ip("10.3.3.3"));
        // No header: the peer.
        let got = xff.resolve(ip("10.0.0.2"), &HeaderMap::new());
        assert_eq!((got.ip, got.origin), (ip("10.0.0.2"), Origin::Peer));
    }

    #[test]
    fn malformed_elements_stop_the_walk_and_are_reported() {
        let xff = resolver("x-forwarded-for");
        let h = headers(&[("x-forwarded-for", "203.0.113.9, garbage, 10.1.1.1")]);
        let got = xff.resolve(ip("10.0.0.2"), &h);
        assert_eq!(got.ip, ip("10.1.1.1"), "the last trustworthy hop");
        assert!(got.malformed);
        let h = headers(&[("x-forwarded-for", "999.1.1.1")]);
        let got = xff.resolve(ip("10.0.0.2"), &h);
        assert_eq!((got.ip, got.malformed), (ip("10.0.0.2"), true));
        let cf = resolver("true-client-ip");
        let got = cf.resolve(
            ip("127.0.0.1"),
            &headers(&[("true-client-ip", "not an ip")]),
        );
        assert_eq!(
            (got.ip, got.origin, got.malformed),
            (ip("127.0.0.1"), Origin::Peer, true)
        );
        let long = "1".repeat(100);
        assert!(parse_node(&long).is_none());
    }

    #[test]
    fn ipv6_ports_brackets_and_mapped_addresses() {
        let xff = resolver("x-forwarded-for");
        for (value, want) in [
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:8443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("203.0.113.9:51234", "203.0.113.9"),
            ("::ffff:203.0.113.9", "203.0.113.9"),
        ] {
            let got = xff.resolve(ip("10.0.0.2"), &headers(&[("x-forwarded-for", value)]));
            assert_eq!(got.ip, ip(want), "{value}");
        }
        // An IPv6 peer inside a trusted IPv6 range, and a mapped IPv4 peer.
        let h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(
            xff.resolve(ip("2001:db8:cafe::9"), &h).ip,
            ip("198.51.100.1")
        );
        assert_eq!(
            xff.resolve(ip("::ffff:10.0.0.2"), &h).ip,
            ip("198.51.100.1")
        );
        let got = xff.resolve(ip("::ffff:198.51.100.3"), &h);
        assert_eq!(got.ip, ip("198.51.100.3"), "peer canonicalised");
    }

    #[test]
    fn rfc7239_forwarded() {
        let fwd = resolver("forwarded");
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::17]:4711\";proto=https, For=10.1.1.1;by=10.0.0.1",
        )]);
        let got = fwd.resolve(ip("10.0.0.2"), &h);
        assert_eq!((got.ip, got.malformed), (ip("2001:db8::17"), false));
        let h = headers(&[("forwarded", "for=_hidden, for=10.1.1.1")]);
        let got = fwd.resolve(ip("10.0.0.2"), &h);
        assert_eq!((got.ip, got.malformed), (ip("10.1.1.1"), true));
        let h = headers(&[("forwarded", "proto=https;by=10.0.0.1")]);
        assert!(fwd.resolve(ip("10.0.0.2"), &h).malformed);
    }

    #[test]
    fn only_known_headers_are_accepted() {
        for name in HEADERS {
            assert!(Source::from_header_name(name).is_some(), "{name}");
        }
        assert!(Source::from_header_name("CF-Connecting-IP").is_some());
        assert!(Source::from_header_name("x-client-ip").is_none());
    }

    #[test]
    fn no_trusted_proxies_means_peer_always() {
        let none = ClientIp::new(CidrSet::default(), Source::XForwardedFor);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(none.resolve(ip("127.0.0.1"), &h).ip, ip("127.0.0.1"));
    }
}
