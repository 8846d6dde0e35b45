//! `[geoip]`: the City and ASN databases and how often they are re-read.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{millis, non_empty, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGeoip {
    city_db: String,
    asn_db: String,
    reload_interval_ms: u64,
}

#[derive(Debug, Clone)]
pub struct GeoipConfig {
    pub city_db: Option<PathBuf>,
    pub asn_db: Option<PathBuf>,
    pub reload_interval: Duration,
}

impl RawGeoip {
    pub(super) fn validate(self) -> Result<GeoipConfig, ConfigError> {
        Ok(GeoipConfig {
            city_db: non_empty(self.city_db).map(PathBuf::from),
            asn_db: non_empty(self.asn_db).map(PathBuf::from),
            reload_interval: millis("geoip.reload_interval_ms", self.reload_interval_ms, 100)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};
    use std::path::PathBuf;

    #[test]
    fn files_and_interval() {
        let err = refused("[geoip]\nreload_interval_ms = 1\n");
        assert!(err.contains("geoip.reload_interval_ms"), "{err}");
        let err = refused("[geoip]\nmmap = true\n");
        assert!(err.contains("geoip.mmap"), "{err}");
        let config = parse("[geoip]\ncity_db = \"/x/city.mmdb\"\n").unwrap();
        assert_eq!(config.geoip.city_db, Some(PathBuf::from("/x/city.mmdb")));
        assert_eq!(config.geoip.asn_db, None);
    }
}
