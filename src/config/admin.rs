//! `[admin]`: the admin listener (metrics, probes, the privacy API) and its token.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{invalid, non_empty, socket_addr, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) addr: String,
    bearer_token: String,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub bearer_token: Option<String>,
}

impl RawAdmin {
    /// `public_addr`: the admin listener must not take the public one's address.
    pub(super) fn validate(self, public_addr: SocketAddr) -> Result<AdminConfig, ConfigError> {
        let addr = socket_addr("admin.addr", &self.addr)?;
        let bearer_token = non_empty(self.bearer_token);
        if bearer_token.is_none() && !addr.ip().is_loopback() {
            return Err(invalid(
                "admin.bearer_token",
                format!("must be set when admin.addr ({addr}) is not a loopback address"),
            ));
        }
        if public_addr == addr && addr.port() != 0 {
            return Err(invalid("admin.addr", "must differ from public.addr"));
        }
        Ok(AdminConfig { addr, bearer_token })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};

    #[test]
    fn public_admin_without_token_is_refused() {
        let err = refused("[admin]\naddr = \"0.0.0.0:9090\"\n");
        assert!(err.contains("admin.bearer_token"), "{err}");
        parse("[admin]\naddr = \"0.0.0.0:9090\"\nbearer_token = \"s3cret\"\n").unwrap();
        let err = refused("[admin]\naddr = \"127.0.0.1:8080\"\n");
        assert!(err.contains("admin.addr"), "{err}");
    }
}
