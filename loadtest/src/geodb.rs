//! A GeoIP2-City-shaped MaxMind database of realistic size, generated when the user
//! does not point to a real GeoLite2/DB-IP file, so that lookups in a benchmark walk
//! a tree as deep and a data section as varied as production's.
//!
//! Deterministic for a seed: the network list can be rebuilt without the file (the
//! traffic draws client addresses from it), and a file generated once is reused
//! from the temp dir.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mmdb_writer::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// GeoLite2-City has about 3.5 million networks; a few hundred thousand gives the
/// same tree depth on the paths a benchmark takes at a fraction of the build time.
pub const DEFAULT_NETWORKS: usize = 300_000;
const CITIES: usize = 4000;

const COUNTRIES: &[(&str, &str, &str, &str, f64, f64)] = &[
    ("US", "United States", "NA", "America/New_York", 39.0, -98.0),
    ("DE", "Germany", "EU", "Europe/Berlin", 51.0, 10.0),
    ("GB", "United Kingdom", "EU", "Europe/London", 53.0, -2.0),
    ("FR", "France", "EU", "Europe/Paris", 46.0, 2.0),
    ("BR", "Brazil", "SA", "America/Sao_Paulo", -14.0, -51.0),
    ("IN", "India", "AS", "Asia/Kolkata", 21.0, 78.0),
    ("JP", "Japan", "AS", "Asia/Tokyo", 36.0, 138.0),
    ("AU", "Australia", "OC", "Australia/Sydney", -25.0, 133.0),
    ("CA", "Canada", "NA", "America/Toronto", 56.0, -106.0),
    ("NG", "Nigeria", "AF", "Africa/Lagos", 9.0, 8.0),
    ("ES", "Spain", "EU", "Europe/Madrid", 40.0, -4.0),
    ("MX", "Mexico", "NA", "America/Mexico_City", 23.0, -102.0),
];

fn names(en: &str) -> Value {
    // Several languages per name, as in the real files (the data section grows).
    Value::map([
        ("de", Value::from(en)),
        ("en", Value::from(en)),
        ("fr", Value::from(en)),
        ("ja", Value::from(format!("{en} (ja)"))),
    ])
}

/// A record with the GeoIP2-City field names and MaxMind's value types (geoname ids
/// are uint32, coordinates doubles, accuracy uint16), which readers check.
fn city(index: usize, rng: &mut StdRng) -> Value {
    let (iso, country, continent, tz, lat, lon) = COUNTRIES[index % COUNTRIES.len()];
    let country_id = 6_000_000 + (index % COUNTRIES.len()) as u32;
    let place = || {
        Value::map([
            ("geoname_id", Value::from(country_id)),
            ("iso_code", Value::from(iso)),
            ("names", names(country)),
        ])
    };
    let accuracy: u16 = [5, 10, 20, 50, 100, 200, 500, 1000][rng.random_range(0..8)];
    Value::map([
        (
            "city",
            Value::map([
                ("geoname_id", Value::from(1_000_000 + index as u32)),
                ("names", names(&format!("City {index} of {country}"))),
            ]),
        ),
        (
            "continent",
            Value::map([
                ("code", Value::from(continent)),
                (
                    "geoname_id",
                    Value::from(6_255_000 + u32::from(continent.as_bytes()[0])),
                ),
                ("names", names(continent)),
            ]),
        ),
        ("country", place()),
        (
            "location",
            Value::map([
                ("accuracy_radius", Value::from(accuracy)),
                ("latitude", Value::from(lat + rng.random_range(-6.0..6.0))),
                (
                    "longitude",
                    Value::from(lon + rng.random_range(-10.0..10.0)),
                ),
                ("time_zone", Value::from(tz)),
            ]),
        ),
        (
            "postal",
            Value::map([(
                "code",
                Value::from(format!("{:05}", rng.random_range(1000..99999))),
            )]),
        ),
        ("registered_country", place()),
        (
            "subdivisions",
            Value::array([Value::map([
                ("geoname_id", Value::from(5_000_000 + (index % 400) as u32)),
                ("iso_code", Value::from(format!("S{}", index % 60))),
                (
                    "names",
                    names(&format!("Region {} of {country}", index % 60)),
                ),
            ])]),
        ),
    ])
}

/// The networks of the database for `seed`: 75% IPv4 (/24 mostly, some /16-/22
/// allocations), 25% IPv6 (/32-/48), public space only.
pub fn networks(count: usize, seed: u64) -> Vec<IpNet> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let net = if rng.random_bool(0.75) {
            let prefix = *[24u8, 24, 24, 24, 23, 22, 20, 16]
                .get(rng.random_range(0..8))
                .unwrap_or(&24);
            let first = loop {
                let first = rng.random_range(1u8..224);
                if ![10, 100, 127, 169, 172, 192, 198].contains(&first) {
                    break first;
                }
            };
            let addr = Ipv4Addr::new(first, rng.random(), rng.random(), 0);
            IpNet::V4(Ipv4Net::new(addr, prefix).expect("prefix <= 32").trunc())
        } else {
            let prefix = *[48u8, 48, 44, 40, 32]
                .get(rng.random_range(0..5))
                .unwrap_or(&48);
            // 2400::-2bff:: (RIR space); 2001::/32 (Teredo) and 2002::/16 (6to4) alias IPv4.
            let high = (0x2400_u128 + rng.random_range(0..0x0800) as u128) << 112
                | u128::from(rng.random::<u64>()) << 48;
            IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(high), prefix)
                    .expect("prefix <= 128")
                    .trunc(),
            )
        };
        if seen.insert(net) {
            out.push(net);
        }
    }
    out
}

/// Writes a database with `count` networks to `path`.
pub fn generate(path: &Path, count: usize, seed: u64) -> anyhow::Result<Vec<IpNet>> {
    let nets = networks(count, seed);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
    let cities: Vec<Value> = (0..CITIES).map(|i| city(i, &mut rng)).collect();
    // A description is required: trackedge verifies a database before it loads it.
    let mut writer = mmdb_writer::Writer::builder("GeoIP2-City")
        .description(&[("en", "trackedge-loadtest generated City database")])
        .build();
    for (index, net) in nets.iter().enumerate() {
        writer
            .insert_value(*net, cities[index % CITIES].clone())
            .with_context(|| format!("insert {net}"))?;
    }
    let tmp = path.with_extension("mmdb.partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    writer
        .write_to(std::io::BufWriter::new(file))
        .context("cannot write the database")?;
    // Renamed into place so a half-written file is never reused.
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move into {}", path.display()))?;
    Ok(nets)
}

/// The database to use: the user's real file (its networks unknown: traffic then
/// draws addresses at random), or the generated one, cached in the temp dir.
pub fn ensure(
    user: Option<&Path>,
    count: usize,
    seed: u64,
) -> anyhow::Result<(PathBuf, Vec<IpNet>)> {
    if let Some(path) = user {
        anyhow::ensure!(
            path.exists(),
            "GeoIP database {} does not exist",
            path.display()
        );
        return Ok((path.to_owned(), Vec::new()));
    }
    let path =
        std::env::temp_dir().join(format!("trackedge-loadtest-geoip-v2-{count}-{seed}.mmdb"));
    if path.exists() {
        return Ok((path, networks(count, seed)));
    }
    let started = std::time::Instant::now();
    let nets = generate(&path, count, seed)?;
    eprintln!(
        "generated GeoIP database {} ({count} networks) in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok((path, nets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_database_answers_city_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geo.mmdb");
        let nets = generate(&path, 2000, 3).unwrap();
        assert_eq!(nets, networks(2000, 3));
        let reader = maxminddb::Reader::open_readfile(&path).unwrap();
        assert_eq!(reader.metadata().database_type, "GeoIP2-City");
        for net in nets.iter().step_by(97) {
            let ip = net.network();
            let city: maxminddb::geoip2::City =
                reader.lookup(ip).unwrap().decode().unwrap().unwrap();
            assert!(city.country.iso_code.is_some(), "{ip}");
            assert!(city.location.latitude.is_some());
        }
    }
}
