//! GeoIP: MaxMind DB readers (GeoIP2/GeoLite2 City or Country schema, optional ASN
//! schema; DB-IP's compatible files work too) held in memory and looked up per event.
//!
//! Input: the full client address (never written anywhere). Output: a [`Geo`]
//! (country ISO code, first subdivision's ISO code, English city name, latitude and
//! longitude rounded to one decimal, time zone) and an [`Asn`] (number and
//! organisation). Invariants: each database is copied into the edge's own directory
//! and memory-mapped ([`super::mapped`]: a private, unlinked copy, so rewriting the
//! source in place cannot change what a reader sees), parsed and verified before it
//! is used; lookups read the mapping (page cache, touched pages only, no private
//! copy of the file); a reload builds a new reader off the request path and swaps
//! it in atomically (`arc-swap`), the old mapping going with its last reader; a
//! file that fails to load keeps the previous reader in force, is logged and
//! counted.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use maxminddb::{MaxMindDbError, Reader};
use memmap2::Mmap;
use metrics::Counter;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::mapped;
use super::twogen::TwoGen;
use crate::metrics as m;
use crate::reload::{FileStamp, LastSeen};

/// Larger files are refused: each is copied and mapped whole.
pub const MAX_DB_BYTES: u64 = 1 << 30;
/// Decoded records kept per database. Many addresses share one record (a city, a
/// network owner), so the hot ones are decoded once rather than per event.
const RECORD_CACHE_ENTRIES: usize = 65_536;

/// Which of the two databases; `as_str` is the `db` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    City,
    Asn,
}

impl DbKind {
    pub const ALL: [DbKind; 2] = [DbKind::City, DbKind::Asn];

    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::City => "city",
            DbKind::Asn => "asn",
        }
    }

    /// The config key that names this database's file, for error messages.
    pub fn config_key(self) -> &'static str {
        match self {
            DbKind::City => "geoip.city_db",
            DbKind::Asn => "geoip.asn_db",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("config key `{key}`: cannot read the GeoIP database {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `{key}`: the GeoIP database {path} is larger than 1 GiB")]
    TooLarge { key: &'static str, path: PathBuf },
    #[error("config key `{key}`: {path} is not a valid MaxMind DB: {source}")]
    Invalid {
        key: &'static str,
        path: PathBuf,
        source: MaxMindDbError,
    },
    #[error("config key `{key}`: {path} is a {found:?} database; expected a {want} database")]
    WrongType {
        key: &'static str,
        path: PathBuf,
        found: String,
        want: &'static str,
    },
}

impl GeoError {
    pub const LABELS: [&'static str; 4] = ["read", "too_large", "invalid", "wrong_type"];

    pub fn as_str(&self) -> &'static str {
        match self {
            GeoError::Read { .. } => "read",
            GeoError::TooLarge { .. } => "too_large",
            GeoError::Invalid { .. } => "invalid",
            GeoError::WrongType { .. } => "wrong_type",
        }
    }
}

/// Where an address is. Every field may be missing; an all-empty answer is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Geo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<Box<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Box<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<Box<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tz: Option<Box<str>>,
}

/// The network that announces an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Asn {
    pub number: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<Box<str>>,
}

// The slice of the City/Country schema we read. Borrowed, so decoding allocates only
// for the strings we keep; every other field is skipped by the decoder.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
    #[serde(borrow, default)]
    location: Option<Location<'a>>,
    #[serde(borrow, default, deserialize_with = "first_subdivision")]
    subdivisions: Option<IsoCode<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    names: Option<English<'a>>,
}

#[derive(Deserialize)]
struct English<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Location<'a> {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    #[serde(borrow, default)]
    time_zone: Option<&'a str>,
}

/// Keeps the first (largest) subdivision and skips the rest without allocating.
fn first_subdivision<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IsoCode<'de>>, D::Error> {
    struct First;
    impl<'de> Visitor<'de> for First {
        type Value = Option<IsoCode<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of subdivisions")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let first = seq.next_element::<IsoCode<'de>>()?;
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }
    d.deserialize_seq(First)
}

fn coarse(degrees: f64) -> f64 {
    (degrees * 10.0).round() / 10.0
}

fn owned(text: Option<&str>) -> Option<Box<str>> {
    text.filter(|t| !t.is_empty()).map(Box::from)
}

/// A reader and its decoded records, keyed by data-section offset; swapped together
/// so a cached record always belongs to the reader in force.
struct Loaded {
    reader: Reader<Mmap>,
    cities: TwoGen<usize, Option<Arc<Geo>>>,
    networks: TwoGen<usize, Arc<Asn>>,
}

impl Loaded {
    fn new(reader: Reader<Mmap>) -> Loaded {
        Loaded {
            reader,
            cities: TwoGen::new(RECORD_CACHE_ENTRIES, None, 0),
            networks: TwoGen::new(RECORD_CACHE_ENTRIES, None, 0),
        }
    }
}

/// One database file and the reader in force for it.
pub struct Db {
    kind: DbKind,
    path: PathBuf,
    /// Where private copies of the file are made (see [`super::mapped`]).
    copies: PathBuf,
    loaded: ArcSwap<Loaded>,
    last_seen: LastSeen<Option<FileStamp>>,
    found: Counter,
    not_found: Counter,
    errors: Counter,
}

/// Copies, maps, parses and verifies one database file; `copies` is the directory
/// for the private copy (the edge's data dir).
pub fn load(kind: DbKind, path: &Path, copies: &Path) -> Result<Reader<Mmap>, GeoError> {
    let key = kind.config_key();
    let read_err = |source| GeoError::Read {
        key,
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    if len > MAX_DB_BYTES {
        return Err(GeoError::TooLarge {
            key,
            path: path.to_owned(),
        });
    }
    let copy = mapped::private_copy(&mut file, copies).map_err(|source| GeoError::Read {
        key,
        path: copies.to_owned(),
        source,
    })?;
    let invalid = |source| GeoError::Invalid {
        key,
        path: path.to_owned(),
        source,
    };
    let map = || mapped::map(&copy).map_err(read_err);
    let reader = Reader::from_source(map()?).map_err(invalid)?;
    // A truncated or corrupt data section would otherwise only show at lookup time.
    reader.verify().map_err(invalid)?;
    let found = reader.metadata().database_type.to_ascii_lowercase();
    let is_asn = found.contains("asn");
    let (ok, want) = match kind {
        DbKind::City => (!is_asn, "City or Country"),
        DbKind::Asn => (is_asn, "ASN"),
    };
    if !ok {
        return Err(GeoError::WrongType {
            key,
            path: path.to_owned(),
            found: reader.metadata().database_type.clone(),
            want,
        });
    }
    // Verifying read every page into this mapping; a fresh one of the same copy
    // starts with none, so the process holds only what lookups touch.
    drop(reader);
    Reader::from_source(map()?).map_err(invalid)
}

impl Db {
    /// Loads `path`, copying it into `copies` (see [`load`]).
    pub fn open(kind: DbKind, path: PathBuf, copies: PathBuf) -> Result<Db, GeoError> {
        let stamp = FileStamp::of(&path);
        let reader = load(kind, &path, &copies)?;
        let lookups = |result: &'static str| metrics::counter!(m::GEOIP_LOOKUPS_TOTAL, "db" => kind.as_str(), "result" => result);
        let db = Db {
            kind,
            path,
            copies,
            loaded: ArcSwap::from_pointee(Loaded::new(reader)),
            last_seen: LastSeen::new(stamp),
            found: lookups("found"),
            not_found: lookups("not_found"),
            errors: lookups("error"),
        };
        db.publish();
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn publish(&self) {
        let loaded = self.loaded.load();
        let meta = loaded.reader.metadata();
        metrics::gauge!(m::GEOIP_DATABASE_BUILD_TIMESTAMP_SECONDS, "db" => self.kind.as_str())
            .set(meta.build_epoch as f64);
        tracing::info!(db = self.kind.as_str(), path = %self.path.display(), database_type = %meta.database_type, build_epoch = meta.build_epoch, "GeoIP database loaded");
    }

    /// Loads the file again; on error the previous reader stays in force.
    pub fn reload(&self) -> Result<(), GeoError> {
        let db = self.kind.as_str();
        match load(self.kind, &self.path, &self.copies) {
            Ok(reader) => {
                self.loaded.store(Arc::new(Loaded::new(reader)));
                metrics::counter!(m::GEOIP_RELOADS_TOTAL, "db" => db, "result" => "ok")
                    .increment(1);
                self.publish();
                Ok(())
            }
            Err(err) => {
                metrics::counter!(m::GEOIP_RELOADS_TOTAL, "db" => db, "result" => err.as_str())
                    .increment(1);
                tracing::warn!(db, error = %err, "GeoIP reload failed; the previous database stays in force");
                Err(err)
            }
        }
    }

    /// Reloads when the file changed since last seen ([`FileStamp`]).
    pub fn reload_if_changed(&self) {
        let now = FileStamp::of(&self.path);
        let changed = self.last_seen.changed(now);
        if changed && now.is_some() {
            // Logged and counted inside; the old reader keeps serving.
            let _ = self.reload();
        }
    }

    /// The record for `ip` from the cache, or decoded with `decode` and cached.
    fn record<T: Clone>(
        &self,
        ip: IpAddr,
        cache: impl Fn(&Loaded) -> &TwoGen<usize, T>,
        decode: impl FnOnce(&maxminddb::LookupResult<'_, Mmap>) -> Result<Option<T>, MaxMindDbError>,
    ) -> Option<T> {
        let loaded = self.loaded.load();
        let found = match loaded.reader.lookup(ip) {
            Ok(found) => found,
            Err(_) => {
                self.errors.increment(1);
                return None;
            }
        };
        let Some(offset) = found.offset() else {
            self.not_found.increment(1);
            return None;
        };
        let cache = cache(&loaded);
        if let Some(record) = cache.get(&offset, |o| *o) {
            self.found.increment(1);
            return Some(record);
        }
        match decode(&found) {
            Ok(Some(record)) => {
                self.found.increment(1);
                cache.insert(offset, record.clone());
                cache.maybe_rotate(0);
                Some(record)
            }
            Ok(None) => {
                self.not_found.increment(1);
                None
            }
            Err(_) => {
                self.errors.increment(1);
                None
            }
        }
    }

    pub fn city(&self, ip: IpAddr) -> Option<Arc<Geo>> {
        self.record(
            ip,
            |l| &l.cities,
            |found| {
                Ok(found.decode::<CityRecord>()?.map(|record| {
                    let location = record.location.as_ref();
                    let geo = Geo {
                        country: owned(record.country.and_then(|c| c.iso_code)),
                        region: owned(record.subdivisions.and_then(|s| s.iso_code)),
                        city: owned(record.city.and_then(|c| c.names).and_then(|n| n.en)),
                        lat: location.and_then(|l| l.latitude).map(coarse),
                        lon: location.and_then(|l| l.longitude).map(coarse),
                        tz: owned(location.and_then(|l| l.time_zone)),
                    };
                    (geo != Geo::default()).then(|| Arc::new(geo))
                }))
            },
        )
        .flatten()
    }

    pub fn asn(&self, ip: IpAddr) -> Option<Arc<Asn>> {
        self.record(
            ip,
            |l| &l.networks,
            |found| {
                Ok(found
                    .decode::<maxminddb::geoip2::Asn>()?
                    .and_then(|record| {
                        Some(Arc::new(Asn {
                            number: record.autonomous_system_number?,
                            org: owned(record.autonomous_system_organization),
                        }))
                    }))
            },
        )
    }
}

/// Registers every GeoIP series at zero so dashboards see them with no database.
pub fn register_metrics() {
    for kind in DbKind::ALL {
        let db = kind.as_str();
        for result in ["found", "not_found", "error"] {
            metrics::counter!(m::GEOIP_LOOKUPS_TOTAL, "db" => db, "result" => result).absolute(0);
        }
        for result in std::iter::once("ok").chain(GeoError::LABELS) {
            metrics::counter!(m::GEOIP_RELOADS_TOTAL, "db" => db, "result" => result).absolute(0);
        }
        metrics::gauge!(m::GEOIP_DATABASE_BUILD_TIMESTAMP_SECONDS, "db" => db).set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmdb_fixtures as fixtures;

    #[test]
    fn city_lookups_on_the_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixtures::write_city(dir.path(), "a");
        let db = Db::open(DbKind::City, path, dir.path().join("copies")).unwrap();
        let zurich = db.city("81.2.69.160".parse().unwrap()).unwrap();
        assert_eq!(zurich.country.as_deref(), Some("CH"));
        assert_eq!(zurich.region.as_deref(), Some("ZH"));
        assert_eq!(zurich.city.as_deref(), Some("Zürich"));
        assert_eq!((zurich.lat, zurich.lon), (Some(47.4), Some(8.5)));
        assert_eq!(zurich.tz.as_deref(), Some("Europe/Zurich"));
        let mapped = db.city("::ffff:81.2.69.160".parse().unwrap()).unwrap();
        assert_eq!(mapped, zurich);
        let cached = db.city("81.2.69.1".parse().unwrap()).unwrap();
        assert!(Arc::ptr_eq(&cached, &zurich), "one record, decoded once");
        let v6 = db.city("2001:db8:1::5".parse().unwrap()).unwrap();
        assert_eq!(v6.city.as_deref(), Some("São Paulo"));
        assert_eq!(v6.region, None, "no subdivisions in the record");
        let country_only = db.city("198.51.100.20".parse().unwrap()).unwrap();
        assert_eq!(country_only.country.as_deref(), Some("JP"));
        assert_eq!((&country_only.city, country_only.lat), (&None, None));
        assert_eq!(db.city("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn asn_lookups_on_the_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            DbKind::Asn,
            fixtures::write_asn(dir.path()),
            dir.path().join("copies"),
        )
        .unwrap();
        let asn = db.asn("81.2.69.160".parse().unwrap()).unwrap();
        assert_eq!(asn.number, 64_500);
        assert_eq!(asn.org.as_deref(), Some("Example Transit AG"));
        let bare = db.asn("2001:db8:1::5".parse().unwrap()).unwrap();
        assert_eq!((bare.number, &bare.org), (64_501, &None));
        assert_eq!(db.asn("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn reload_swaps_in_a_new_file_and_keeps_the_old_one_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixtures::write_city(dir.path(), "a");
        let db = Db::open(DbKind::City, path.clone(), dir.path().join("copies")).unwrap();
        let ip: IpAddr = "81.2.69.160".parse().unwrap();
        assert_eq!(db.city(ip).unwrap().city.as_deref(), Some("Zürich"));
        fixtures::write_city(dir.path(), "b");
        db.reload().unwrap();
        assert_eq!(db.city(ip).unwrap().city.as_deref(), Some("Genève"));
        std::fs::write(&path, b"not a database at all").unwrap();
        assert_eq!(db.reload().unwrap_err().as_str(), "invalid");
        assert_eq!(db.city(ip).unwrap().city.as_deref(), Some("Genève"));
        // A good file cut in half fails verification, not a later lookup.
        let good = std::fs::read(fixtures::write_city(dir.path(), "a")).unwrap();
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(db.reload().is_err());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(db.reload().unwrap_err().as_str(), "read");
        assert_eq!(db.city(ip).unwrap().city.as_deref(), Some("Genève"));
    }

    #[test]
    fn a_swapped_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let asn = fixtures::write_asn(dir.path());
        let copies = dir.path().join("copies");
        let err = Db::open(DbKind::City, asn, copies.clone()).err().unwrap();
        assert_eq!(err.as_str(), "wrong_type");
        let city = fixtures::write_city(dir.path(), "a");
        assert!(Db::open(DbKind::Asn, city, copies).is_err());
    }

    #[test]
    fn coordinates_are_coarse() {
        assert_eq!(coarse(47.3769), 47.4);
        assert_eq!(coarse(-0.04), -0.0);
        assert_eq!(coarse(-122.419_4), -122.4);
    }
}
