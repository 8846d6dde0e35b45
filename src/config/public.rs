//! `[public]`: the tracking listener, its limits for hostile clients, and TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, millis, non_empty, socket_addr, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublic {
    pub(super) addr: String,
    base_url: String,
    http2: bool,
    header_read_timeout_ms: u64,
    max_body_bytes: usize,
    max_token_bytes: usize,
    click_fallback_url: String,
    max_uri_bytes: usize,
    max_header_bytes: usize,
    max_headers: usize,
    max_connections: usize,
    max_connections_per_peer: usize,
    h2_max_concurrent_streams: u32,
    h2_max_pending_reset_streams: usize,
    h2_max_local_error_reset_streams: usize,
    idle_timeout_ms: u64,
    tls_reload_interval_ms: u64,
    /// Commented out in the default file: no TLS unless listed.
    #[serde(default)]
    tls: Vec<RawTlsCert>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsCert {
    cert_path: String,
    key_path: String,
    #[serde(default)]
    server_names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PublicConfig {
    pub addr: SocketAddr,
    pub base_url: String,
    pub http2: bool,
    pub header_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_token_bytes: usize,
    /// Already checked to be a safe http(s) URL.
    pub click_fallback_url: Option<String>,
    /// Longer request targets get 414 before any routing.
    pub max_uri_bytes: usize,
    /// HTTP/1 read buffer: a request head larger than this is refused (431).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Connections past this are closed at once.
    pub max_connections: usize,
    /// Connections one peer (IPv4 address, IPv6 /64) may hold; 0 = no such cap.
    pub max_connections_per_peer: usize,
    pub h2_max_concurrent_streams: u32,
    /// Reset-flood protection (HTTP/2 rapid reset).
    pub h2_max_pending_reset_streams: usize,
    /// Streams the edge may reset for a client's protocol errors before it closes
    /// the connection (the other half of reset-flood protection).
    pub h2_max_local_error_reset_streams: usize,
    /// No byte moved for this long: the connection is closed (see `crate::idle`).
    pub idle_timeout: Duration,
    /// How often the certificate and key files are checked for changes.
    pub tls_reload_interval: Duration,
    pub tls: Vec<TlsCertConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsCertConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Lower-cased; may start with `*.`.
    pub server_names: Vec<String>,
}

/// `value` must lie in `range`, or the key's error says where it may lie.
fn within<T>(key: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    super::in_range(key, value, *range.start(), *range.end())
}

impl RawPublic {
    pub(super) fn validate(self) -> Result<PublicConfig, ConfigError> {
        let addr = socket_addr("public.addr", &self.addr)?;
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        crate::token::check_target(&base_url)
            .map_err(|e| invalid("public.base_url", format!("{e} ({base_url:?})")))?;
        let click_fallback_url = match non_empty(self.click_fallback_url) {
            None => None,
            Some(url) => {
                crate::token::check_target(&url)
                    .map_err(|e| invalid("public.click_fallback_url", format!("{e} ({url:?})")))?;
                Some(url)
            }
        };
        let max_body_bytes = within("public.max_body_bytes", self.max_body_bytes, 64..=1 << 20)?;
        let max_token_bytes = within("public.max_token_bytes", self.max_token_bytes, 64..=16_384)?;
        let max_uri_bytes = within("public.max_uri_bytes", self.max_uri_bytes, 256..=65_536)?;
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        let max_header_bytes = within(
            "public.max_header_bytes",
            self.max_header_bytes,
            8192..=1 << 20,
        )?;
        let max_headers = within("public.max_headers", self.max_headers, 16..=1000)?;
        if self.max_connections == 0 {
            return Err(invalid("public.max_connections", "must be at least 1"));
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err(invalid(
                "public.h2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.h2_max_local_error_reset_streams == 0 {
            return Err(invalid(
                "public.h2_max_local_error_reset_streams",
                "must be at least 1",
            ));
        }
        let tls = self
            .tls
            .into_iter()
            .enumerate()
            .map(|(index, cert)| cert.validate(index))
            .collect::<Result<_, _>>()?;
        Ok(PublicConfig {
            addr,
            base_url,
            http2: self.http2,
            header_read_timeout: millis(
                "public.header_read_timeout_ms",
                self.header_read_timeout_ms,
                1,
            )?,
            max_body_bytes,
            max_token_bytes,
            click_fallback_url,
            max_uri_bytes,
            max_header_bytes,
            max_headers,
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            h2_max_concurrent_streams: self.h2_max_concurrent_streams,
            h2_max_pending_reset_streams: self.h2_max_pending_reset_streams,
            h2_max_local_error_reset_streams: self.h2_max_local_error_reset_streams,
            idle_timeout: millis("public.idle_timeout_ms", self.idle_timeout_ms, 100)?,
            tls_reload_interval: millis(
                "public.tls_reload_interval_ms",
                self.tls_reload_interval_ms,
                100,
            )?,
            tls,
        })
    }
}

impl RawTlsCert {
    fn validate(self, index: usize) -> Result<TlsCertConfig, ConfigError> {
        if self.cert_path.is_empty() || self.key_path.is_empty() {
            return Err(invalid(
                &format!("public.tls[{index}]"),
                "every certificate needs cert_path and key_path",
            ));
        }
        let mut server_names = Vec::with_capacity(self.server_names.len());
        for name in self.server_names {
            let name = name.to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            if bare.is_empty()
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(invalid(
                    &format!("public.tls[{index}].server_names"),
                    format!("{name:?} is not a DNS name (or *.domain wildcard)"),
                ));
            }
            server_names.push(name);
        }
        Ok(TlsCertConfig {
            cert_path: PathBuf::from(self.cert_path),
            key_path: PathBuf::from(self.key_path),
            server_names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};

    #[test]
    fn bad_address_names_the_key() {
        let err = refused("[public]\naddr = \"nowhere\"\n");
        assert!(err.contains("public.addr"), "{err}");
    }

    #[test]
    fn fallback_url_must_be_http() {
        let err = refused("[public]\nclick_fallback_url = \"javascript:alert(1)\"\n");
        assert!(err.contains("public.click_fallback_url"), "{err}");
    }

    #[test]
    fn limits_are_checked_by_name() {
        for (text, key) in [
            ("[public]\nmax_body_bytes = 1\n", "public.max_body_bytes"),
            (
                "[public]\nmax_header_bytes = 100\n",
                "public.max_header_bytes",
            ),
            ("[public]\nmax_connections = 0\n", "public.max_connections"),
            (
                "[[public.tls]]\ncert_path = \"c\"\nkey_path = \"k\"\nserver_names = [\"a b\"]\n",
                "public.tls[0].server_names",
            ),
        ] {
            let err = refused(text);
            assert!(err.contains(key), "{text}: {err}");
        }
        let config =
            parse("[[public.tls]]\ncert_path = \"c\"\nkey_path = \"k\"\nserver_names = [\"*.Example.com\"]\n")
                .unwrap();
        assert_eq!(config.public.tls[0].server_names, ["*.example.com"]);
    }
}
