//! MaxMind DB fixtures written with `mmdb-writer` in the GeoIP2 City and GeoLite2
//! ASN schemas, so no test depends on a downloaded database. Shared by the unit
//! tests, the integration tests and the benches; hidden from the docs.
//!
//! City (`variant` "a"; "b" renames Zürich to Genève, for reload tests):
//! - 81.2.69.0/24: CH, subdivision ZH, Zürich, 47.3769/8.5417, Europe/Zurich
//! - 2001:db8:1::/48: BR, São Paulo, no subdivisions
//! - 198.51.100.0/24: JP only (city, location, subdivisions missing)
//! - 203.0.113.0/24: RU, subdivisions MOW then a second one, Москва
//!
//! ASN: 81.2.69.0/24 AS64500 "Example Transit AG"; 2001:db8:1::/48 AS64501 with no
//! organisation; 203.0.113.0/24 AS16509 "Amazon.com, Inc." (a data centre).

use std::path::{Path, PathBuf};

use mmdb_writer::{Value, Writer};

fn names(english: &str) -> Value {
    Value::map([("names", Value::map([("en", Value::from(english))]))])
}

fn country(iso: &str) -> Value {
    Value::map([
        ("iso_code", Value::from(iso)),
        ("geoname_id", Value::from(1_u32)),
        (
            "names",
            Value::map([("en", Value::from(iso)), ("de", Value::from(iso))]),
        ),
    ])
}

fn location(lat: f64, lon: f64, tz: &str) -> Value {
    Value::map([
        ("latitude", Value::from(lat)),
        ("longitude", Value::from(lon)),
        ("accuracy_radius", Value::from(20_u16)),
        ("time_zone", Value::from(tz)),
    ])
}

fn subdivision(iso: &str) -> Value {
    Value::map([
        ("iso_code", Value::from(iso)),
        ("geoname_id", Value::from(7_u32)),
    ])
}

/// The City database bytes.
pub fn city_bytes(variant: &str) -> Vec<u8> {
    let mut writer = Writer::builder("GeoLite2-City")
        .description(&[("en", "trackedge test City database")])
        .build();
    let first_city = if variant == "b" { "Genève" } else { "Zürich" };
    let insert = |writer: &mut Writer, net: &str, value: Value| {
        writer
            .insert_value(net.parse::<ipnet::IpNet>().expect("fixture network"), value)
            .expect("fixture insert");
    };
    insert(
        &mut writer,
        "81.2.69.0/24",
        Value::map([
            ("city", names(first_city)),
            ("country", country("CH")),
            ("location", location(47.3769, 8.5417, "Europe/Zurich")),
            ("subdivisions", Value::array([subdivision("ZH")])),
        ]),
    );
    insert(
        &mut writer,
        "2001:db8:1::/48",
        Value::map([
            ("city", names("São Paulo")),
            ("country", country("BR")),
            (
                "location",
                location(-23.5475, -46.6361, "America/Sao_Paulo"),
            ),
        ]),
    );
    insert(
        &mut writer,
        "198.51.100.0/24",
        Value::map([("country", country("JP"))]),
    );
    insert(
        &mut writer,
        "203.0.113.0/24",
        Value::map([
            ("city", names("Москва")),
            ("country", country("RU")),
            ("location", location(55.7522, 37.6156, "Europe/Moscow")),
            (
                "subdivisions",
                Value::array([subdivision("MOW"), subdivision("X1")]),
            ),
        ]),
    );
    writer.to_bytes().expect("fixture city database")
}

/// The ASN database bytes.
pub fn asn_bytes() -> Vec<u8> {
    let mut writer = Writer::builder("GeoLite2-ASN")
        .description(&[("en", "trackedge test ASN database")])
        .build();
    let asn = |number: u32, org: Option<&str>| {
        let mut entries = vec![("autonomous_system_number", Value::from(number))];
        if let Some(org) = org {
            entries.push(("autonomous_system_organization", Value::from(org)));
        }
        Value::map(entries)
    };
    for (net, value) in [
        ("81.2.69.0/24", asn(64_500, Some("Example Transit AG"))),
        ("2001:db8:1::/48", asn(64_501, None)),
        ("203.0.113.0/24", asn(16_509, Some("Amazon.com, Inc."))),
    ] {
        writer
            .insert_value(net.parse::<ipnet::IpNet>().expect("fixture network"), value)
            .expect("fixture insert");
    }
    writer.to_bytes().expect("fixture asn database")
}

/// Writes `city.mmdb` into `dir` (replacing it) and returns its path.
pub fn write_city(dir: &Path, variant: &str) -> PathBuf {
    let path = dir.join("city.mmdb");
    replace(&path, &city_bytes(variant));
    path
}

/// Writes `asn.mmdb` into `dir` and returns its path.
pub fn write_asn(dir: &Path) -> PathBuf {
    let path = dir.join("asn.mmdb");
    replace(&path, &asn_bytes());
    path
}

/// Write-then-rename, as an operator's updater would, so a reader never sees half.
fn replace(path: &Path, bytes: &[u8]) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).expect("write fixture");
    std::fs::rename(&temp, path).expect("rename fixture");
}
