//! `[privacy]`: what may be stored of the client, and which signals stop recording.

use std::time::Duration;

use serde::Deserialize;

use super::{in_range, invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrivacy {
    ip_mode: IpModeName,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    ua_mode: UaMode,
    dnt_policy: SignalPolicy,
    optout_cookie: String,
    optout_cookie_days: u32,
    cookie_secure: bool,
    sender_cookie: String,
    sender_cookie_days: u32,
    self_open_window_secs: u64,
    self_open_policy: SignalPolicy,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum IpModeName {
    Truncate,
    Full,
    Hash,
    None,
}

/// What is kept of the client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpMode {
    Truncate { ipv4_prefix: u8, ipv6_prefix: u8 },
    Full,
    Hash,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UaMode {
    Full,
    ParsedOnly,
}

/// What `DNT: 1` / `Sec-GPC: 1` do, and what a self-open does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalPolicy {
    Ignore,
    Flag,
    Drop,
}

#[derive(Debug, Clone)]
pub struct PrivacyConfig {
    pub ip_mode: IpMode,
    pub ua_mode: UaMode,
    pub dnt_policy: SignalPolicy,
    pub optout_cookie: String,
    pub optout_cookie_max_age: Duration,
    pub cookie_secure: bool,
    pub sender_cookie: String,
    pub sender_cookie_max_age: Duration,
    /// `None`: self-opens are only known by the sender cookie.
    pub self_open_window: Option<Duration>,
    /// `Flag` or `Drop` (never `Ignore`).
    pub self_open_policy: SignalPolicy,
}

fn cookie_name(key: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(invalid(key, format!("{name:?} is not a cookie name")));
    }
    Ok(name.to_owned())
}

fn days(value: u32) -> Duration {
    Duration::from_secs(u64::from(value.max(1)) * 86_400)
}

impl RawPrivacy {
    pub(super) fn validate(self) -> Result<PrivacyConfig, ConfigError> {
        let ip_mode = match self.ip_mode {
            IpModeName::Truncate => IpMode::Truncate {
                ipv4_prefix: in_range("privacy.ipv4_prefix", self.ipv4_prefix, 8, 32)?,
                ipv6_prefix: in_range("privacy.ipv6_prefix", self.ipv6_prefix, 16, 128)?,
            },
            IpModeName::Full => IpMode::Full,
            IpModeName::Hash => IpMode::Hash,
            IpModeName::None => IpMode::None,
        };
        if self.self_open_policy == SignalPolicy::Ignore {
            return Err(invalid(
                "privacy.self_open_policy",
                "must be \"flag\" or \"drop\" (set self_open_window_secs = 0 to stop the window)",
            ));
        }
        let optout_cookie = cookie_name("privacy.optout_cookie", &self.optout_cookie)?;
        let sender_cookie = cookie_name("privacy.sender_cookie", &self.sender_cookie)?;
        if optout_cookie == sender_cookie {
            return Err(invalid(
                "privacy.sender_cookie",
                "must differ from privacy.optout_cookie",
            ));
        }
        Ok(PrivacyConfig {
            ip_mode,
            ua_mode: self.ua_mode,
            dnt_policy: self.dnt_policy,
            optout_cookie,
            optout_cookie_max_age: days(self.optout_cookie_days),
            cookie_secure: self.cookie_secure,
            sender_cookie,
            sender_cookie_max_age: days(self.sender_cookie_days),
            self_open_window: (self.self_open_window_secs > 0)
                .then(|| Duration::from_secs(self.self_open_window_secs)),
            self_open_policy: self.self_open_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};
    use super::*;

    #[test]
    fn privacy_modes_are_validated() {
        let config = parse("[privacy]\nip_mode = \"truncate\"\nipv4_prefix = 16\n").unwrap();
        assert_eq!(
            config.privacy.ip_mode,
            IpMode::Truncate {
                ipv4_prefix: 16,
                ipv6_prefix: 48
            }
        );
        for (text, key) in [
            ("[privacy]\nip_mode = \"blur\"\n", "privacy.ip_mode"),
            ("[privacy]\nipv4_prefix = 40\n", "privacy.ipv4_prefix"),
            ("[privacy]\ndnt_policy = \"maybe\"\n", "privacy.dnt_policy"),
            (
                "[privacy]\noptout_cookie = \"a b\"\n",
                "privacy.optout_cookie",
            ),
            (
                "[privacy]\nself_open_policy = \"ignore\"\n",
                "privacy.self_open_policy",
            ),
            ("[privacy]\nua_mode = \"some\"\n", "privacy.ua_mode"),
        ] {
            let err = refused(text);
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
