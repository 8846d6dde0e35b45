//! `[client_ip]`: which peers may tell the client address, and in which header.

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::enrich::cidr::CidrSet;
use crate::enrich::client_ip::{Source, HEADERS};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientIp {
    trusted_proxies: Vec<String>,
    header: String,
}

#[derive(Debug, Clone)]
pub struct ClientIpConfig {
    /// Peers whose client-address header is believed.
    pub trusted_proxies: CidrSet,
    pub source: Source,
}

impl RawClientIp {
    pub(super) fn validate(self) -> Result<ClientIpConfig, ConfigError> {
        let source = Source::from_header_name(&self.header).ok_or_else(|| {
            invalid(
                "client_ip.header",
                format!("{:?} is not one of {}", self.header, HEADERS.join(", ")),
            )
        })?;
        let trusted_proxies = CidrSet::parse(&self.trusted_proxies)
            .map_err(|e| invalid("client_ip.trusted_proxies", e.to_string()))?;
        Ok(ClientIpConfig {
            trusted_proxies,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};

    #[test]
    fn header_and_proxies_are_checked() {
        for (text, key) in [
            (
                "[client_ip]\nheader = \"x-client-ip\"\n",
                "client_ip.header",
            ),
            (
                "[client_ip]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                "client_ip.trusted_proxies",
            ),
        ] {
            let err = refused(text);
            assert!(err.contains(key), "{text}: {err}");
        }
        let config = parse(
            "[client_ip]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\nheader = \"CF-Connecting-IP\"\n",
        )
        .unwrap();
        assert_eq!(config.client_ip.trusted_proxies.len(), 2);
    }
}
