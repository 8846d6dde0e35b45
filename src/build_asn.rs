//! `trackedge geoip build-asn`: an ASN database without a licence key. Turns the free
//! ip-location-db ASN CSVs (`start_ip,end_ip,asn,organisation`, IPv4 and IPv6; the npm
//! package `@ip-location-db/asn` or the project's GitHub releases; CC BY 4.0, data by
//! RouteViews, DB-IP and NRO) into a MaxMind DB in the GeoLite2-ASN shape
//! (`autonomous_system_number`, `autonomous_system_organization`) that
//! `geoip.asn_db` accepts.
//!
//! Input: CSV files, read one row at a time (a bad row is an error naming the file and
//! line). Output: one `.mmdb` file, written to a temporary name beside it and renamed
//! into place, so a running edge polling the path never reads a half-written file.
//! Each inclusive range is split into the fewest CIDR blocks that cover it exactly
//! ([`ipnet::Ipv4Subnets`] / [`ipnet::Ipv6Subnets`]). Blocks inside the IPv6 space that
//! MaxMind databases alias to IPv4 (`::ffff:0:0/96`, Teredo `2001::/32`, 6to4
//! `2002::/16`) cannot hold data of their own and are skipped and counted.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};
use mmdb_writer::{Value, Writer};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the database: {0}")]
    Mmdb(String),
    #[error("no rows in the input files")]
    Empty,
}

/// What a build did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows: u64,
    pub networks: u64,
    /// Blocks inside IPv4-aliased IPv6 space, left out.
    pub aliased: u64,
}

fn aliased() -> [IpNet; 3] {
    ["::ffff:0:0/96", "2001::/32", "2002::/16"].map(|net| net.parse().expect("fixed networks"))
}

/// The CIDR blocks that cover `start..=end` exactly, fewest first-to-last.
pub fn range_to_networks(start: IpAddr, end: IpAddr) -> Result<Vec<IpNet>, String> {
    match (start, end) {
        (IpAddr::V4(start), IpAddr::V4(end)) if start <= end => {
            Ok(Ipv4Subnets::new(start, end, 0).map(IpNet::V4).collect())
        }
        (IpAddr::V6(start), IpAddr::V6(end)) if start <= end => {
            Ok(Ipv6Subnets::new(start, end, 0).map(IpNet::V6).collect())
        }
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            Err(format!("start {start} is after end {end}"))
        }
        _ => Err(format!(
            "start {start} and end {end} are of different IP versions"
        )),
    }
}

/// Reads every row of `csvs` into one database and writes it to `out`.
pub fn build(csvs: &[PathBuf], out: &Path) -> Result<Summary, BuildError> {
    let mut writer = Writer::builder("GeoLite2-ASN")
        .description(&[(
            "en",
            "ASN data from ip-location-db (CC BY 4.0: RouteViews, DB-IP, NRO), built by trackedge geoip build-asn",
        )])
        .build();
    let aliased = aliased();
    let mut summary = Summary::default();
    for path in csvs {
        let file = std::fs::File::open(path).map_err(|source| BuildError::Read {
            path: path.clone(),
            source,
        })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(std::io::BufReader::new(file));
        let mut record = csv::StringRecord::new();
        loop {
            let line = reader.position().line();
            let row_err = |message: String| BuildError::Row {
                path: path.clone(),
                line,
                message,
            };
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(err) => {
                    return Err(match err.kind() {
                        csv::ErrorKind::Io(_) => BuildError::Read {
                            path: path.clone(),
                            source: std::io::Error::other(err.to_string()),
                        },
                        _ => row_err(err.to_string()),
                    })
                }
            }
            if record.iter().all(|field| field.trim().is_empty()) {
                continue;
            }
            let (start, end, asn, org) = parse_row(&record).map_err(row_err)?;
            let mut fields = vec![("autonomous_system_number", Value::from(asn))];
            if !org.is_empty() {
                fields.push(("autonomous_system_organization", Value::from(org)));
            }
            let value = Value::map(fields);
            for network in range_to_networks(start, end).map_err(row_err)? {
                if aliased.iter().any(|alias| alias.contains(&network)) {
                    summary.aliased += 1;
                    continue;
                }
                writer
                    .insert_value(network, value.clone())
                    .map_err(|e| row_err(e.to_string()))?;
                summary.networks += 1;
            }
            summary.rows += 1;
        }
    }
    if summary.rows == 0 {
        return Err(BuildError::Empty);
    }
    let bytes = writer
        .to_bytes()
        .map_err(|e| BuildError::Mmdb(e.to_string()))?;
    write_atomically(out, &bytes)?;
    Ok(summary)
}

fn parse_row(record: &csv::StringRecord) -> Result<(IpAddr, IpAddr, u32, &str), String> {
    if record.len() != 4 {
        return Err(format!(
            "expected 4 fields (start_ip,end_ip,asn,organisation), found {}",
            record.len()
        ));
    }
    let ip = |index: usize, name: &str| {
        let text = record[index].trim();
        text.parse::<IpAddr>().map_err(|_| {
            if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
                format!("{name} {text:?} is a number: use the asn-ipv4.csv / asn-ipv6.csv files (addresses), not the -num ones")
            } else {
                format!("{name} {text:?} is not an IP address")
            }
        })
    };
    let start = ip(0, "start_ip")?;
    let end = ip(1, "end_ip")?;
    let asn_text = record[2].trim();
    let asn = asn_text
        .strip_prefix("AS")
        .unwrap_or(asn_text)
        .parse::<u32>()
        .map_err(|_| format!("asn {asn_text:?} is not a number from 0 to 4294967295"))?;
    Ok((start, end, asn, record[3].trim()))
}

fn write_atomically(out: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let write_err = |source| BuildError::Write {
        path: out.to_owned(),
        source,
    };
    let name = out
        .file_name()
        .ok_or_else(|| write_err(std::io::Error::other("not a file name")))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = out.with_file_name(temp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::geo::{Db, DbKind};

    fn nets(start: &str, end: &str) -> Vec<String> {
        range_to_networks(start.parse().unwrap(), end.parse().unwrap())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn ranges_become_the_fewest_exact_blocks() {
        assert_eq!(nets("1.0.0.0", "1.0.0.255"), ["1.0.0.0/24"]);
        assert_eq!(nets("1.0.4.0", "1.0.7.255"), ["1.0.4.0/22"]);
        assert_eq!(
            nets("10.0.0.1", "10.0.0.6"),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(nets("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(nets("192.0.2.7", "192.0.2.7"), ["192.0.2.7/32"]);
        assert_eq!(
            nets("2001:db8::", "2001:db8:0:1:ffff:ffff:ffff:ffff"),
            ["2001:db8::/63"]
        );
        assert_eq!(
            nets("2001:db8::ff", "2001:db8::100"),
            ["2001:db8::ff/128", "2001:db8::100/128"]
        );
        let start = "::".parse().unwrap();
        let end = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(range_to_networks(start, end).unwrap().len(), 1);
        for (start, end) in [("10.0.0.2", "10.0.0.1"), ("10.0.0.1", "::1")] {
            assert!(range_to_networks(start.parse().unwrap(), end.parse().unwrap()).is_err());
        }
    }

    #[test]
    fn a_built_database_answers_like_geolite2_asn() {
        let dir = tempfile::tempdir().unwrap();
        let v4 = dir.path().join("asn-ipv4.csv");
        let v6 = dir.path().join("asn-ipv6.csv");
        std::fs::write(
            &v4,
            "1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n\n10.0.0.1,10.0.0.6,64500,\n",
        )
        .unwrap();
        std::fs::write(
            &v6,
            "2001::,2001::ffff:ffff:ffff:ffff:ffff:ffff,6939,Hurricane Electric LLC\n\
             2a00:1450::,2a00:1450:ffff:ffff:ffff:ffff:ffff:ffff,15169,Google LLC\n",
        )
        .unwrap();
        let out = dir.path().join("asn.mmdb");
        let summary = build(&[v4, v6], &out).unwrap();
        assert_eq!(
            summary,
            Summary {
                rows: 4,
                networks: 6,
                aliased: 1
            }
        );
        let db = Db::open(DbKind::Asn, out, dir.path().join("copies")).unwrap();
        let asn = |ip: &str| {
            db.asn(ip.parse().unwrap())
                .map(|a| (a.number, a.org.clone()))
        };
        assert_eq!(
            asn("1.0.0.77"),
            Some((13335, Some("Cloudflare, Inc.".into())))
        );
        assert_eq!(asn("::ffff:1.0.0.77"), asn("1.0.0.77"), "IPv4-mapped");
        assert_eq!(asn("10.0.0.1"), Some((64500, None)));
        assert_eq!(asn("10.0.0.6"), Some((64500, None)));
        assert_eq!(asn("10.0.0.7"), None);
        assert_eq!(asn("10.0.0.0"), None);
        assert_eq!(
            asn("2a00:1450:4001::1"),
            Some((15169, Some("Google LLC".into())))
        );
        assert_eq!(asn("1.0.1.0"), None);
        assert!(!dir.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    #[test]
    fn bad_rows_are_named_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        for (row, needle) in [
            ("1.0.0.0,1.0.0.255,13335\n", "expected 4 fields"),
            (
                "1.0.0.x,1.0.0.255,13335,X\n",
                "start_ip \"1.0.0.x\" is not an IP address",
            ),
            ("16777216,16777471,13335,X\n", "-num"),
            ("1.0.0.9,1.0.0.1,13335,X\n", "is after end"),
            ("1.0.0.0,::1,13335,X\n", "different IP versions"),
            ("1.0.0.0,1.0.0.255,AS-X,X\n", "asn \"AS-X\""),
            ("1.0.0.0,1.0.0.255,99999999999,X\n", "asn"),
        ] {
            std::fs::write(&path, format!("2.0.0.0,2.0.0.255,1,Fine\n{row}")).unwrap();
            let err = build(std::slice::from_ref(&path), &dir.path().join("x.mmdb"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("bad.csv:2") && err.contains(needle),
                "{row}: {err}"
            );
        }
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            build(std::slice::from_ref(&path), &dir.path().join("x.mmdb")),
            Err(BuildError::Empty)
        ));
        let missing = build(&[dir.path().join("none.csv")], &dir.path().join("x.mmdb"));
        assert!(missing.unwrap_err().to_string().contains("none.csv"));
        assert!(!dir.path().join("x.mmdb").exists());
    }
}
