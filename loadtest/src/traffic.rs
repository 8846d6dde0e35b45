//! The request mix: opens, clicks and downloads minted with trackedge's own signing
//! API and the server's key file, sent with real-world user agents and client
//! addresses (IPv4 and IPv6) in `X-Forwarded-For`, plus a share of bad tokens.
//!
//! Requests are prepared once before the run (signing on the client's hot path would
//! make the client the bottleneck) and picked by slot index, so a run is the same
//! sequence every time for a given seed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{bail, Context};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trackedge::{mint_url, Claims, KeyRing, Kind};

/// Where the forwarding header is sent; the server trusts it from 127.0.0.1 once
/// the enrichment stage reads it.
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Real-world user agents by who sends them; weights follow a typical B2C list where
/// Apple Mail Privacy Protection and Gmail's proxy fetch most pixels.
pub const USER_AGENTS: &[(u32, &str, &str)] = &[
    // Apple Mail Privacy Protection prefetch: a bare, generic agent.
    (22, "apple_mpp", "Mozilla/5.0"),
    (14, "gmail_proxy", "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"),
    (4, "yahoo_proxy", "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"),
    (8, "apple_mail", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"),
    (9, "ios_mail", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"),
    (7, "outlook_desktop", "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"),
    (3, "outlook_new", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0 OneOutlook/1.2024.516.100"),
    (2, "thunderbird", "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.11.0"),
    (8, "chrome_webmail", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36"),
    (4, "firefox_webmail", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0"),
    (5, "android_gmail", "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.113 Mobile Safari/537.36"),
    (3, "samsung_email", "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"),
    (2, "safari_ios", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"),
    (3, "ms_defender_scanner", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0.4844.51 Safari/537.36 Edg/99.0.1150.39 (compatible; MSOffice/16.0; Microsoft Defender for Office 365)"),
    (2, "barracuda_scanner", "Barracuda Sentinel (EE)"),
    (2, "mimecast_scanner", "Mozilla/5.0 (compatible; Mimecast URL Protect)"),
    (1, "proofpoint_scanner", "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko Proofpoint"),
    (1, "curl_bot", "curl/8.5.0"),
];

/// Shares of opens, clicks and downloads, e.g. `open=70,click=25,download=5`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    pub open: u32,
    pub click: u32,
    pub download: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            open: 70,
            click: 25,
            download: 5,
        }
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Mix> {
        let mut mix = Mix {
            open: 0,
            click: 0,
            download: 0,
        };
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .with_context(|| format!("{part:?}: expected kind=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .with_context(|| format!("{part:?}: weight is not a whole number"))?;
            match name.trim() {
                "open" => mix.open = weight,
                "click" => mix.click = weight,
                "download" => mix.download = weight,
                other => bail!("unknown kind {other:?} in the mix (open, click, download)"),
            }
        }
        if mix.open + mix.click + mix.download == 0 {
            bail!("the mix {text:?} has no weight");
        }
        Ok(mix)
    }
}

impl Mix {
    fn pick(&self, rng: &mut StdRng) -> Kind {
        let roll = rng.random_range(0..self.open + self.click + self.download);
        if roll < self.open {
            Kind::Open
        } else if roll < self.open + self.click {
            Kind::Click
        } else {
            Kind::Download
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrafficSpec {
    pub mix: Mix,
    /// Share of requests whose token was tampered with (0.0-1.0).
    pub bad_share: f64,
    /// Distinct prepared requests cycled through.
    pub distinct: usize,
    pub seed: u64,
    /// Networks of the GeoIP database; most client addresses are drawn from them so
    /// lookups hit real records. Empty: addresses are drawn at random.
    pub networks: Vec<IpNet>,
}

/// One request ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub kind: Kind,
    pub bad: bool,
    pub method: Method,
    /// Origin-form for HTTP/1.1 (with a Host header).
    pub uri_h1: Uri,
    /// Absolute form for HTTP/2 (the authority becomes `:authority`).
    pub uri_h2: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

const HOST: &str = "t.example";

/// Mints `spec.distinct` requests with `keys`' signing key.
pub fn prepare(keys: &KeyRing, spec: &TrafficSpec) -> anyhow::Result<Vec<Prepared>> {
    if !(0.0..=1.0).contains(&spec.bad_share) {
        bail!("the bad-token share must be between 0 and 1");
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let ua_total: u32 = USER_AGENTS.iter().map(|(w, _, _)| w).sum();
    let mut out = Vec::with_capacity(spec.distinct.max(1));
    for n in 0..spec.distinct.max(1) {
        let kind = spec.mix.pick(&mut rng);
        let claims = Claims {
            kind,
            tenant: format!("tenant-{}", n % 7),
            campaign: format!("campaign-{}", n % 31),
            message: format!("msg-{:08x}-{n}", spec.seed as u32),
            recipient: Some(format!("rcpt-{}", n % 5003)),
            link: if kind == Kind::Open {
                0
            } else {
                1 + (n % 9) as u32
            },
            target: (kind != Kind::Open)
                .then(|| format!("https://shop.example/landing/{}?utm_source=mail", n % 97)),
            expires_at: None,
            sent_at: None,
        };
        let url = mint_url("http://x", keys, &claims).context("cannot mint a URL")?;
        let mut path = url.trim_start_matches("http://x").to_owned();
        let bad = rng.random_bool(spec.bad_share);
        if bad {
            path = tamper(&path, &mut rng);
        }
        let mut roll = rng.random_range(0..ua_total);
        let ua = USER_AGENTS
            .iter()
            .find(|(weight, _, _)| {
                let hit = roll < *weight;
                roll = roll.saturating_sub(*weight);
                hit
            })
            .map_or(USER_AGENTS[0].2, |(_, _, ua)| ua);
        let ip = client_ip(&spec.networks, &mut rng);
        let mut headers = vec![
            (http::header::USER_AGENT, HeaderValue::from_static(ua)),
            (
                http::header::ACCEPT,
                HeaderValue::from_static(if kind == Kind::Open {
                    "image/avif,image/webp,image/png,image/*;q=0.8,*/*;q=0.5"
                } else {
                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
                }),
            ),
            (
                http::header::ACCEPT_LANGUAGE,
                HeaderValue::from_static("en-US,en;q=0.9"),
            ),
            (
                FORWARDED_FOR,
                HeaderValue::from_str(&ip.to_string()).context("address header")?,
            ),
        ];
        if rng.random_bool(0.04) {
            headers.push((
                HeaderName::from_static("dnt"),
                HeaderValue::from_static("1"),
            ));
        }
        if rng.random_bool(0.02) {
            headers.push((
                HeaderName::from_static("sec-gpc"),
                HeaderValue::from_static("1"),
            ));
        }
        out.push(prepared(kind, bad, &path, headers)?);
    }
    Ok(out)
}

/// The iPhone Mail user agent (iOS 17), the most common pixel fetcher without a proxy.
pub const IOS_MAIL_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";

/// The headers of the one realistic pixel request (`--traffic pixel`): what iPhone
/// Mail sends for an image, behind a CDN at 127.0.0.1 that adds the client's
/// address. 81.2.69.142 is in the published GeoLite2 test networks (London, GB), so
/// a real City file finds it.
pub const PIXEL_HEADERS: &[(&str, &str)] = &[
    ("user-agent", IOS_MAIL_UA),
    (
        "accept",
        "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    ),
    ("accept-language", "en-GB,en;q=0.9"),
    ("accept-encoding", "gzip, deflate"),
    ("x-forwarded-for", "81.2.69.142"),
];

/// One good open pixel request with [`PIXEL_HEADERS`], signed with `keys`.
pub fn pixel(keys: &KeyRing) -> anyhow::Result<Prepared> {
    let claims = Claims {
        recipient: Some("rcpt-4242".into()),
        ..Claims::new(Kind::Open, "acme", "spring-sale", "msg-00042")
    };
    let url = mint_url("http://x", keys, &claims).context("cannot mint a URL")?;
    let path = url.trim_start_matches("http://x").to_owned();
    let headers = PIXEL_HEADERS
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect();
    prepared(Kind::Open, false, &path, headers)
}

/// A GET of the minted `path`, addressed for HTTP/1.1 and HTTP/2.
fn prepared(
    kind: Kind,
    bad: bool,
    path: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> anyhow::Result<Prepared> {
    Ok(Prepared {
        kind,
        bad,
        method: Method::GET,
        uri_h1: path.parse().context("minted path is not a URI")?,
        uri_h2: format!("http://{HOST}{path}")
            .parse()
            .context("minted URL is not a URI")?,
        headers,
    })
}

/// The `Host` header value for HTTP/1.1.
pub fn host() -> HeaderValue {
    HeaderValue::from_static(HOST)
}

/// Damages a token the way the wild does: a flipped character (bad signature) or
/// a cut-off URL (malformed). The route prefix stays so the request still reaches
/// the token check.
fn tamper(path: &str, rng: &mut StdRng) -> String {
    let (stem, suffix) = match path.strip_suffix(".gif") {
        Some(stem) => (stem, ".gif"),
        None => (path, ""),
    };
    let prefix_len = 3; // "/o/", "/c/", "/f/"
    let token = &stem[prefix_len..];
    if token.len() < 8 {
        return format!("{stem}x{suffix}");
    }
    if rng.random_bool(0.5) {
        let at = rng.random_range(0..token.len());
        let mut bytes = token.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let token = String::from_utf8(bytes).expect("base64url stays ASCII");
        format!("{}{token}{suffix}", &stem[..prefix_len])
    } else {
        format!("{}{suffix}", &stem[..stem.len() - token.len() / 3])
    }
}

/// 80% of addresses come from the GeoIP networks (when given), the rest anywhere;
/// about a third are IPv6, as on a large consumer list.
fn client_ip(networks: &[IpNet], rng: &mut StdRng) -> IpAddr {
    if !networks.is_empty() && rng.random_bool(0.8) {
        let net = networks[rng.random_range(0..networks.len())];
        return address_in(net, rng);
    }
    if rng.random_bool(0.3) {
        // Global unicast 2000::/3.
        let high = 0x2000_u128 << 112 | u128::from(rng.random::<u64>()) << 48;
        IpAddr::V6(Ipv6Addr::from(high | u128::from(rng.random::<u32>())))
    } else {
        // Skip 0/8, 10/8, 127/8 and 224/3 so the address looks like a client.
        let first = loop {
            let first = rng.random_range(1u8..224);
            if first != 10 && first != 127 {
                break first;
            }
        };
        IpAddr::V4(Ipv4Addr::new(
            first,
            rng.random(),
            rng.random(),
            rng.random(),
        ))
    }
}

fn address_in(net: IpNet, rng: &mut StdRng) -> IpAddr {
    match net {
        IpNet::V4(net) => {
            let host_bits = 32 - u32::from(net.prefix_len());
            let mask = if host_bits == 0 {
                0
            } else {
                u32::MAX >> (32 - host_bits)
            };
            let base = u32::from(net.network());
            IpAddr::V4(Ipv4Addr::from(base | (rng.random::<u32>() & mask)))
        }
        IpNet::V6(net) => {
            let host_bits = 128 - u32::from(net.prefix_len());
            let mask = if host_bits == 0 {
                0
            } else {
                u128::MAX >> (128 - host_bits)
            };
            let base = u128::from(net.network());
            IpAddr::V6(Ipv6Addr::from(base | (rng.random::<u128>() & mask)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackedge::Key;

    fn ring() -> KeyRing {
        KeyRing::new(vec![Key::new(3, b"loadtest unit-test key of 32+ bytes")]).unwrap()
    }

    fn spec(bad_share: f64) -> TrafficSpec {
        TrafficSpec {
            mix: Mix::default(),
            bad_share,
            distinct: 2000,
            seed: 7,
            networks: vec![
                "81.2.69.0/24".parse().unwrap(),
                "2a02:c7f::/48".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn good_tokens_verify_and_bad_ones_do_not() {
        let ring = ring();
        let requests = prepare(&ring, &spec(0.1)).unwrap();
        let mut bad = 0;
        for r in &requests {
            let path = r.uri_h1.path();
            let token = path[3..].trim_end_matches(".gif");
            let verified = trackedge::verify(&ring, token, r.kind, 0, 4096).is_ok();
            assert_eq!(verified, !r.bad, "{path}");
            bad += usize::from(r.bad);
        }
        assert!((120..=280).contains(&bad), "bad {bad} of 2000");
    }

    #[test]
    fn the_mix_and_the_headers_look_like_mail_traffic() {
        let requests = prepare(&ring(), &spec(0.0)).unwrap();
        let opens = requests.iter().filter(|r| r.kind == Kind::Open).count();
        assert!((1200..=1600).contains(&opens), "opens {opens}");
        let v6 = requests
            .iter()
            .filter(|r| {
                r.headers
                    .iter()
                    .any(|(n, v)| *n == FORWARDED_FOR && v.to_str().is_ok_and(|v| v.contains(':')))
            })
            .count();
        assert!(v6 > 200 && v6 < 1500, "ipv6 {v6}");
        let uas: std::collections::HashSet<_> = requests
            .iter()
            .filter_map(|r| {
                r.headers
                    .iter()
                    .find(|(n, _)| n == http::header::USER_AGENT)
            })
            .map(|(_, v)| v.clone())
            .collect();
        assert!(uas.len() > 12);
        assert!(requests[0]
            .uri_h2
            .to_string()
            .starts_with("http://t.example/"));
    }

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        assert_eq!(
            "open=1,click=2".parse::<Mix>().unwrap(),
            Mix {
                open: 1,
                click: 2,
                download: 0
            }
        );
        assert!("open=0".parse::<Mix>().is_err());
        assert!("unsubscribe=3".parse::<Mix>().is_err());
        assert!("open".parse::<Mix>().is_err());
    }

    #[test]
    fn the_pixel_request_verifies_and_carries_the_realistic_headers() {
        let ring = ring();
        let pixel = pixel(&ring).unwrap();
        let token = pixel.uri_h1.path()[3..].trim_end_matches(".gif");
        assert!(trackedge::verify(&ring, token, Kind::Open, 0, 4096).is_ok());
        let header = |name: &str| {
            pixel
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(header("x-forwarded-for").as_deref(), Some("81.2.69.142"));
        assert!(header("user-agent").unwrap().contains("iPhone"));
        assert!(header("accept").unwrap().starts_with("image/"));
    }

    #[test]
    fn addresses_fall_inside_their_network() {
        let mut rng = StdRng::seed_from_u64(1);
        let net: IpNet = "192.0.2.0/24".parse().unwrap();
        for _ in 0..100 {
            assert!(net.contains(&address_in(net, &mut rng)));
        }
        let net: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(net.contains(&address_in(net, &mut rng)));
    }
}
