//! The network catalogue: named sets of vendor and hosting networks that rules refer
//! to by name (`networks = ["apple-mpp"]`).
//!
//! Input: the shipped `config/networks/*.toml` (one vendor and purpose per file, every
//! entry with its source; compiled into the binary by `build.rs`, so the default
//! config needs no other file) and, optionally, the operator's `classify.networks_dir`
//! holding more files of the same shape. Output: a [`Catalogue`] of [`NetworkSet`]s
//! for [`super::rulebook`]. Invariants: a set's name is its file stem and unique
//! across both sources; every entry's `source` names a declared source; a file over
//! [`MAX_FILE_BYTES`] is refused; errors name the file and the entry.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use super::cidr::{Cidr, CidrSet};
use super::verdict::valid_name;

/// The shipped catalogue: (file name, contents), sorted by file name.
const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/networks.rs"));

/// The shipped set of Apple Mail Privacy Protection's egress networks (iCloud Private
/// Relay's, which MPP loads images through), which
/// `rate_limit.exempt_apple_mpp` exempts from the recording limit.
pub const APPLE_MPP_SET: &str = "apple-private-relay-egress";

/// A vendor's published egress list can be long (thousands of networks).
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Files read from `classify.networks_dir`.
pub const MAX_DIR_FILES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    #[error("cannot read network set {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network set {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("network directory {path} holds more than {MAX_DIR_FILES} .toml files")]
    TooMany { path: PathBuf },
    #[error("network set {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSet {
    name: String,
    vendor: String,
    purpose: String,
    #[serde(default)]
    notes: String,
    /// Hosting, cloud or a vendor's scanning network: no person browses from here.
    #[serde(default)]
    datacenter: bool,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    cidrs: Vec<RawCidr>,
    #[serde(default)]
    asns: Vec<RawAsn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    id: String,
    url: String,
    retrieved: String,
    #[serde(default)]
    what: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCidr {
    cidr: String,
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsn {
    asn: u32,
    source: Option<String>,
}

/// Where an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub id: String,
    pub url: String,
    /// YYYY-MM-DD.
    pub retrieved: String,
    pub what: String,
}

/// One named set: its networks and autonomous systems.
#[derive(Debug, Clone)]
pub struct NetworkSet {
    pub name: String,
    pub vendor: String,
    pub purpose: String,
    pub notes: String,
    pub datacenter: bool,
    pub cidrs: Vec<Cidr>,
    pub asns: Vec<u32>,
    pub sources: Vec<Source>,
    /// Entries without a `source` (allowed in operator files only; a test keeps the
    /// shipped ones complete).
    pub unsourced: usize,
    /// The file it was read from (`<built-in>/<file>` for shipped sets).
    pub file: PathBuf,
}

impl NetworkSet {
    /// Parses one file; `path` names it in errors and its stem must be the set's name.
    pub fn parse(path: &Path, text: &str) -> Result<NetworkSet, NetworksError> {
        let invalid = |message: String| NetworksError::Invalid {
            path: path.to_owned(),
            message,
        };
        let raw: RawSet = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if !valid_name(&raw.name, 64) {
            return Err(invalid(format!(
                "name {:?} must be 1-64 characters of a-z, 0-9, _ - .",
                raw.name
            )));
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != raw.name {
            return Err(invalid(format!(
                "name {:?} must equal the file name's stem {stem:?}",
                raw.name
            )));
        }
        let mut ids = HashSet::new();
        for source in &raw.sources {
            if !ids.insert(source.id.as_str()) {
                return Err(invalid(format!(
                    "source id {:?} is declared twice",
                    source.id
                )));
            }
            if !is_date(&source.retrieved) {
                return Err(invalid(format!(
                    "source {:?}: retrieved {:?} is not a date like 2026-11-28",
                    source.id, source.retrieved
                )));
            }
        }
        let check_source = |what: &str, source: &Option<String>| match source {
            Some(id) if !ids.contains(id.as_str()) => Err(invalid(format!(
                "{what}: source {id:?} is not declared in [[sources]]"
            ))),
            _ => Ok(()),
        };
        let mut unsourced = 0;
        let mut cidrs = Vec::with_capacity(raw.cidrs.len());
        for entry in &raw.cidrs {
            let cidr = entry
                .cidr
                .parse::<Cidr>()
                .map_err(|e| invalid(e.to_string()))?;
            check_source(&format!("cidr {:?}", entry.cidr), &entry.source)?;
            unsourced += usize::from(entry.source.is_none());
            cidrs.push(cidr);
        }
        let mut asns = Vec::with_capacity(raw.asns.len());
        for entry in &raw.asns {
            check_source(&format!("asn {}", entry.asn), &entry.source)?;
            unsourced += usize::from(entry.source.is_none());
            asns.push(entry.asn);
        }
        if cidrs.is_empty() && asns.is_empty() {
            return Err(invalid(
                "needs at least one [[cidrs]] or [[asns]] entry".into(),
            ));
        }
        Ok(NetworkSet {
            name: raw.name,
            vendor: raw.vendor,
            purpose: raw.purpose,
            notes: raw.notes,
            datacenter: raw.datacenter,
            cidrs,
            asns,
            sources: raw
                .sources
                .into_iter()
                .map(|s| Source {
                    id: s.id,
                    url: s.url,
                    retrieved: s.retrieved,
                    what: s.what,
                })
                .collect(),
            unsourced,
            file: path.to_owned(),
        })
    }
}

fn is_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Every set in force: the shipped ones, then the operator's.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub sets: Vec<NetworkSet>,
    /// How many of `sets` (from the front) are shipped.
    pub shipped: usize,
}

impl Catalogue {
    fn parse_shipped() -> Result<Catalogue, NetworksError> {
        let mut catalogue = Catalogue::default();
        for (file, text) in EMBEDDED {
            let set = NetworkSet::parse(&Path::new("<built-in>").join(file), text)?;
            catalogue.add(set)?;
        }
        catalogue.shipped = catalogue.sets.len();
        Ok(catalogue)
    }

    /// The shipped catalogue plus every `*.toml` file in `dir` (not recursive).
    pub fn with_dir(dir: Option<&Path>) -> Result<Catalogue, NetworksError> {
        let mut catalogue = shipped().clone();
        let Some(dir) = dir else {
            return Ok(catalogue);
        };
        for path in dir_files(dir)? {
            let read_err = |source| NetworksError::Read {
                path: path.clone(),
                source,
            };
            if std::fs::metadata(&path).map_err(read_err)?.len() > MAX_FILE_BYTES {
                return Err(NetworksError::TooLarge { path });
            }
            let text = std::fs::read_to_string(&path).map_err(read_err)?;
            catalogue.add(NetworkSet::parse(&path, &text)?)?;
        }
        Ok(catalogue)
    }

    fn add(&mut self, set: NetworkSet) -> Result<(), NetworksError> {
        if let Some(other) = self.get(&set.name) {
            return Err(NetworksError::Invalid {
                path: set.file.clone(),
                message: format!(
                    "a set named {:?} is already defined in {}",
                    set.name,
                    other.file.display()
                ),
            });
        }
        self.sets.push(set);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&NetworkSet> {
        self.sets.iter().find(|set| set.name == name)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.sets.iter().position(|set| set.name == name)
    }

    /// Operator sets (those after the shipped ones).
    pub fn operator_sets(&self) -> &[NetworkSet] {
        &self.sets[self.shipped..]
    }
}

/// The shipped catalogue, parsed once.
pub fn shipped() -> &'static Catalogue {
    static SHIPPED: OnceLock<Catalogue> = OnceLock::new();
    SHIPPED.get_or_init(|| {
        Catalogue::parse_shipped().expect("the shipped catalogue is checked by a unit test")
    })
}

/// The CIDRs of [`APPLE_MPP_SET`] (empty if the catalogue has no such set).
pub fn apple_mpp_cidrs() -> CidrSet {
    shipped()
        .get(APPLE_MPP_SET)
        .map(|set| CidrSet::new(set.cidrs.iter().copied()))
        .unwrap_or_default()
}

/// The `*.toml` files of `dir`, sorted, at most [`MAX_DIR_FILES`].
pub fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, NetworksError> {
    let read_err = |source| NetworksError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
            if files.len() > MAX_DIR_FILES {
                return Err(NetworksError::TooMany {
                    path: dir.to_owned(),
                });
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"
        name = "acme-scan"
        vendor = "Acme"
        purpose = "link scanning"
        datacenter = true
        [[sources]]
        id = "docs"
        url = "https://acme.example/ranges"
        retrieved = "2026-11-28"
        [[cidrs]]
        cidr = "198.51.100.0/24"
        source = "docs"
        [[cidrs]]
        cidr = "2001:db8:5::/48"
        [[asns]]
        asn = 64511
        source = "docs"
    "#;

    #[test]
    fn a_set_parses_with_its_sources() {
        let set = NetworkSet::parse(Path::new("dir/acme-scan.toml"), SET).unwrap();
        assert_eq!(set.name, "acme-scan");
        assert!(set.datacenter);
        assert_eq!(set.cidrs.len(), 2);
        assert_eq!(set.asns, [64511]);
        assert_eq!(set.unsourced, 1);
        assert_eq!(set.sources[0].retrieved, "2026-11-28");
    }

    #[test]
    fn errors_name_the_file_and_the_entry() {
        for (path, text, needle) in [
            ("x/other.toml", SET.to_owned(), "file name's stem"),
            (
                "x/acme-scan.toml",
                SET.replace(
                    "asn = 64511\n        source = \"docs\"",
                    "asn = 64511\n        source = \"nope\"",
                ),
                "asn 64511: source \"nope\"",
            ),
            (
                "x/acme-scan.toml",
                SET.replace("198.51.100.0/24", "198.51.100.0/33"),
                "198.51.100.0/33",
            ),
            (
                "x/acme-scan.toml",
                SET.replace("2026-11-28", "yesterday"),
                "not a date",
            ),
            (
                "x/acme-scan.toml",
                SET.replace("datacenter", "data_centre"),
                "unknown field",
            ),
        ] {
            let err = NetworkSet::parse(Path::new(path), &text)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle) && err.contains(path),
                "{needle}: {err}"
            );
        }
    }

    #[test]
    fn the_shipped_catalogue_is_complete_and_sourced() {
        let catalogue = Catalogue::parse_shipped().unwrap();
        assert!(catalogue
            .get(APPLE_MPP_SET)
            .is_some_and(|set| !set.cidrs.is_empty()));
        for set in &catalogue.sets {
            assert_eq!(
                set.unsourced, 0,
                "{}: every entry names its source",
                set.name
            );
            assert!(!set.sources.is_empty(), "{}", set.name);
            for source in &set.sources {
                assert!(
                    source.url.starts_with("https://") || source.url.starts_with("http://"),
                    "{}: {}",
                    set.name,
                    source.url
                );
            }
        }
    }

    #[test]
    fn shipped_sets_hold_no_special_purpose_addresses() {
        // IANA's special-purpose registries (RFC 6890 and successors): no client on
        // the internet comes from these, so a vendor list holding one is a copying
        // error (a geofeed's example rows, say) and would catch private test rigs.
        let special: Vec<Cidr> = [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "::/127",
            "fc00::/7",
            "fe80::/10",
            "2001:db8::/32",
            "ff00::/8",
        ]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
        let overlaps = |a: &Cidr, b: &Cidr| {
            let ((a0, a1), (b0, b1)) = (a.range(), b.range());
            a0 <= b1 && b0 <= a1
        };
        for set in &Catalogue::parse_shipped().unwrap().sets {
            for cidr in &set.cidrs {
                for reserved in &special {
                    assert!(
                        !overlaps(cidr, reserved),
                        "{}: {cidr:?} overlaps {reserved:?}",
                        set.name
                    );
                }
            }
        }
    }

    #[test]
    fn operator_sets_add_to_the_shipped_ones_and_may_not_reuse_a_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme-scan.toml"), SET).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a set").unwrap();
        let catalogue = Catalogue::with_dir(Some(dir.path())).unwrap();
        assert_eq!(catalogue.operator_sets().len(), 1);
        assert!(catalogue.get("acme-scan").is_some());
        if let Some(shipped) = catalogue.sets.first().filter(|_| catalogue.shipped > 0) {
            let clash = SET.replace("acme-scan", &shipped.name);
            std::fs::write(dir.path().join(format!("{}.toml", shipped.name)), clash).unwrap();
            let err = Catalogue::with_dir(Some(dir.path()))
                .unwrap_err()
                .to_string();
            assert!(err.contains("already defined"), "{err}");
        }
    }
}
