//! The privacy stage: whether a hit may be recorded at all, and what of the client
//! address and user agent may be kept.
//!
//! Runs on the request path after the token is verified and before anything is built
//! for storage. Nothing here writes: a refusal only counts its reason
//! (`trackedge_privacy_not_recorded_total{reason}`) and logs nothing that identifies
//! the recipient. The full client address is used in memory only (GeoIP); what leaves
//! this module is truncated, hashed, full or nothing, as `privacy.ip_mode` says.

use std::net::IpAddr;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::COOKIE;
use http::HeaderMap;
use metrics::Counter;
use sha2::Sha256;

use crate::config::{IpMode, PrivacyConfig, SignalPolicy, UaMode};
use crate::enrich::cidr::truncate_ip;
use crate::metrics as m;
use crate::suppression::Suppressions;
use crate::token::{Claims, Kind};

/// How many tenants one sender cookie remembers.
const MAX_SENDER_TENANTS: usize = 8;

/// Why a verified hit is answered but not recorded. `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    OptedOut,
    Suppressed,
    DoNotTrack,
    SelfOpen,
}

impl SkipReason {
    pub const ALL: [SkipReason; 4] = [
        SkipReason::OptedOut,
        SkipReason::Suppressed,
        SkipReason::DoNotTrack,
        SkipReason::SelfOpen,
    ];

    /// The position in [`SkipReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::OptedOut => "opted_out",
            SkipReason::Suppressed => "suppressed",
            SkipReason::DoNotTrack => "do_not_track",
            SkipReason::SelfOpen => "self_open",
        }
    }
}

/// What a recorded hit is marked with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    pub dnt: bool,
    pub gpc: bool,
    pub self_open: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("cannot read or create the IP hash key {path}: {source}")]
    HashKey {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub struct Privacy {
    config: PrivacyConfig,
    ip_hash: Option<Hmac<Sha256>>,
    pub suppressions: Suppressions,
    skipped: [Counter; SkipReason::ALL.len()],
}

impl Privacy {
    pub fn new(
        config: &PrivacyConfig,
        data_dir: &Path,
        suppressions: Suppressions,
    ) -> Result<Privacy, PrivacyError> {
        let ip_hash = match config.ip_mode {
            IpMode::Hash => Some(hash_key(&data_dir.join("ip-hash.key"))?),
            _ => None,
        };
        Ok(Privacy {
            config: config.clone(),
            ip_hash,
            suppressions,
            skipped: SkipReason::ALL.map(|reason| {
                metrics::counter!(m::PRIVACY_NOT_RECORDED_TOTAL, "reason" => reason.as_str())
            }),
        })
    }

    pub fn config(&self) -> &PrivacyConfig {
        &self.config
    }

    /// Decides whether a verified hit is recorded, and with which marks. A refusal
    /// is counted, except for an unsubscribe, which is recorded anyway (with only
    /// its ids).
    pub fn decide(
        &self,
        claims: &Claims,
        headers: &HeaderMap,
        now_secs: u64,
    ) -> Result<Marks, SkipReason> {
        let result = self.decide_uncounted(claims, headers, now_secs);
        if let Err(reason) = result {
            if claims.kind != Kind::Unsubscribe {
                self.skipped[reason.index()].increment(1);
            }
        }
        result
    }

    fn decide_uncounted(
        &self,
        claims: &Claims,
        headers: &HeaderMap,
        now_secs: u64,
    ) -> Result<Marks, SkipReason> {
        if cookie(headers, &self.config.optout_cookie).is_some() {
            return Err(SkipReason::OptedOut);
        }
        let subject = claims.recipient.as_deref().unwrap_or(&claims.message);
        if self.suppressions.contains(&claims.tenant, subject) {
            return Err(SkipReason::Suppressed);
        }
        let (dnt, gpc) = match self.config.dnt_policy {
            SignalPolicy::Ignore => (false, false),
            SignalPolicy::Flag | SignalPolicy::Drop => (
                header_is_one(headers, "dnt"),
                header_is_one(headers, "sec-gpc"),
            ),
        };
        if self.config.dnt_policy == SignalPolicy::Drop && (dnt || gpc) {
            return Err(SkipReason::DoNotTrack);
        }
        let self_open = self.is_self_open(claims, headers, now_secs);
        if self_open && self.config.self_open_policy == SignalPolicy::Drop {
            return Err(SkipReason::SelfOpen);
        }
        Ok(Marks {
            dnt,
            gpc,
            self_open,
        })
    }

    fn is_self_open(&self, claims: &Claims, headers: &HeaderMap, now_secs: u64) -> bool {
        if claims.kind == Kind::Unsubscribe {
            return false;
        }
        let by_cookie = cookie(headers, &self.config.sender_cookie)
            .is_some_and(|value| sender_tenants(value).any(|t| t == claims.tenant.as_bytes()));
        let by_window = claims.kind == Kind::Open
            && match (self.config.self_open_window, claims.sent_at) {
                (Some(window), Some(sent_at)) => {
                    now_secs >= sent_at && now_secs - sent_at <= window.as_secs()
                }
                _ => false,
            };
        by_cookie || by_window
    }

    /// The client address as it may be stored.
    pub fn ip(&self, ip: IpAddr, now_secs: u64) -> Option<String> {
        let ip = ip.to_canonical();
        match self.config.ip_mode {
            IpMode::Truncate {
                ipv4_prefix,
                ipv6_prefix,
            } => Some(address_text(truncate_ip(ip, ipv4_prefix, ipv6_prefix))),
            IpMode::Full => Some(address_text(ip)),
            IpMode::None => None,
            IpMode::Hash => self.ip_hash.as_ref().map(|key| {
                let mut mac = key.clone();
                // The UTC day is the rotating salt: one address hashes alike within a
                // day and unlinkably across days.
                mac.update(&(now_secs / 86_400).to_be_bytes());
                match ip {
                    IpAddr::V4(v4) => mac.update(&v4.octets()),
                    IpAddr::V6(v6) => mac.update(&v6.octets()),
                }
                let digest = mac.finalize().into_bytes();
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut text = String::with_capacity(32);
                for byte in &digest[..16] {
                    text.push(char::from(HEX[usize::from(byte >> 4)]));
                    text.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
                text
            }),
        }
    }

    /// The user agent as it may be stored (already cut by enrichment).
    pub fn ua(&self, ua: Option<std::sync::Arc<str>>) -> Option<std::sync::Arc<str>> {
        match self.config.ua_mode {
            UaMode::ParsedOnly => None,
            UaMode::Full => ua,
        }
    }

    /// The sender cookie value after adding `tenant` to what `headers` carried.
    pub fn sender_cookie_value(&self, headers: &HeaderMap, tenant: &str) -> String {
        let encoded = URL_SAFE_NO_PAD.encode(tenant);
        let mut tenants: Vec<String> = cookie(headers, &self.config.sender_cookie)
            .map(|value| {
                sender_tenants(value)
                    .map(|t| URL_SAFE_NO_PAD.encode(t))
                    .filter(|t| *t != encoded)
                    .collect()
            })
            .unwrap_or_default();
        tenants.truncate(MAX_SENDER_TENANTS - 1);
        tenants.insert(0, encoded);
        tenants.join(".")
    }
}

fn sender_tenants(value: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    value
        .split(|&b| b == b'.')
        .filter_map(|part| URL_SAFE_NO_PAD.decode(part).ok())
}

/// The value of cookie `name` in any `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|header| {
        header.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|&b| b == b'=')?;
            (&pair[..at] == name.as_bytes()).then(|| &pair[at + 1..])
        })
    })
}

fn header_is_one(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|value| value.as_bytes().trim_ascii() == b"1")
}

fn hash_key(path: &Path) -> Result<Hmac<Sha256>, PrivacyError> {
    let io = |source| PrivacyError::HashKey {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        crate::secret_file::create(path, str::to_owned).map_err(io)?;
    }
    let secret = std::fs::read_to_string(path).map_err(io)?;
    Ok(
        Hmac::<Sha256>::new_from_slice(secret.trim().as_bytes())
            .expect("HMAC takes any key length"),
    )
}

/// `ip` as text, as its `Display` writes it, in one allocation of the right size:
/// IPv4 digit by digit (the formatting machinery cost more than the rest of this
/// stage), IPv6 through `Display` (its zero-run rules are not worth repeating).
fn address_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
            text
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let mut text = String::with_capacity(39);
            write!(text, "{v6}").expect("writing into a String cannot fail");
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn skip_reasons_index_their_place_in_all() {
        for (at, reason) in SkipReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), at);
        }
    }

    #[test]
    fn address_text_is_what_display_writes() {
        use std::net::Ipv4Addr;
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "81.2.69.0",
            "::",
            "2001:db8::1",
            "2001:db8:1:0:0:0:0:1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(address_text(ip), ip.to_string());
        }
        for n in (0..=u32::MAX).step_by(65_537) {
            let ip = IpAddr::V4(Ipv4Addr::from(n));
            assert_eq!(address_text(ip), ip.to_string());
        }
    }

    fn t(ip: &str) -> String {
        truncate_ip(ip.parse().unwrap(), 24, 48).to_string()
    }

    #[test]
    fn truncation_keeps_only_the_network() {
        assert_eq!(t("203.0.113.77"), "203.0.113.0");
        assert_eq!(t("2001:db8:abcd:12:1:2:3:4"), "2001:db8:abcd::");
        assert_eq!(t("::ffff:198.51.100.9"), "198.51.100.0");
        assert_eq!(t("::1"), "::");
        assert_eq!(
            truncate_ip("203.0.113.77".parse().unwrap(), 16, 48).to_string(),
            "203.0.0.0"
        );
        assert_eq!(
            truncate_ip("203.0.113.77".parse().unwrap(), 32, 128).to_string(),
            "203.0.113.77"
        );
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; te_optout=1"));
        headers.append(COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, "te_optout"), Some(&b"1"[..]));
        assert_eq!(cookie(&headers, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&headers, "te_opt"), None);
        assert_eq!(cookie(&headers, "c"), None);
    }
}
