//! The shipped classification data is well formed: every network set in `config/networks/`
//! parses, names itself after its file, and ties each prefix and ASN to a source with a URL
//! and a retrieval date; the catalogue rules only name sets that exist; the vendored
//! crawler list matches its VERSION file; the labelled corpus has the agreed columns,
//! labels and a source on every row, and its ASN fixture covers its addresses.
//!
//! These checks read files only; the engine's own tests run the corpus through the server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Every network set, by name.
fn network_sets() -> BTreeMap<String, toml::Table> {
    let dir = repo().join("config/networks");
    let mut sets = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("list config/networks") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name")
            .to_string();
        let table: toml::Table = read(&path)
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        sets.insert(stem, table);
    }
    sets
}

#[test]
fn every_network_set_names_its_sources_for_each_entry() {
    let sets = network_sets();
    assert!(sets.len() >= 40, "only {} network sets", sets.len());
    for (stem, set) in &sets {
        assert_eq!(
            set["name"].as_str(),
            Some(stem.as_str()),
            "{stem}: name must equal the file stem"
        );
        for key in ["vendor", "purpose", "notes"] {
            let value = set.get(key).and_then(|v| v.as_str()).unwrap_or("");
            assert!(!value.trim().is_empty(), "{stem}: {key} is empty");
        }
        if let Some(dc) = set.get("datacenter") {
            assert!(
                dc.as_bool().is_some(),
                "{stem}: datacenter must be a boolean"
            );
        }
        let sources = set["sources"].as_array().expect("sources array");
        let mut ids = BTreeSet::new();
        for source in sources {
            let id = source["id"].as_str().expect("source id");
            assert!(ids.insert(id), "{stem}: source {id} twice");
            let url = source["url"].as_str().expect("source url");
            assert!(
                url.starts_with("https://"),
                "{stem}: source {id} url {url} is not https"
            );
            let retrieved = source["retrieved"].as_str().expect("retrieved");
            assert!(
                is_date(retrieved),
                "{stem}: source {id} retrieved {retrieved:?} is not YYYY-MM-DD"
            );
            assert!(
                !source["what"].as_str().unwrap_or("").is_empty(),
                "{stem}: source {id} lacks what"
            );
        }
        let cidrs = set
            .get("cidrs")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        let asns = set
            .get("asns")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        assert!(
            !cidrs.is_empty() || !asns.is_empty(),
            "{stem}: neither prefixes nor ASNs"
        );
        for entry in &cidrs {
            let cidr = entry["cidr"].as_str().expect("cidr string");
            cidr.parse::<ipnet::IpNet>()
                .unwrap_or_else(|e| panic!("{stem}: {cidr}: {e}"));
            let source = entry["source"].as_str().expect("cidr source");
            assert!(
                ids.contains(source),
                "{stem}: {cidr} names unknown source {source}"
            );
        }
        for entry in &asns {
            let asn = entry["asn"].as_integer().expect("asn number");
            assert!(
                (1..=4_294_967_295).contains(&asn),
                "{stem}: ASN {asn} out of range"
            );
            let source = entry["source"].as_str().expect("asn source");
            assert!(
                ids.contains(source),
                "{stem}: AS{asn} names unknown source {source}"
            );
        }
    }
}

#[test]
fn catalogue_rules_name_only_existing_sets_and_carry_a_certainty() {
    let sets = network_sets();
    let v2 = repo().join("config/classify-rules.v2.toml");
    let path = if v2.exists() {
        v2
    } else {
        repo().join("config/classify-rules.toml")
    };
    let rules: toml::Table = read(&path).parse().expect("rules parse");
    let rules = rules["rule"].as_array().expect("[[rule]] entries");
    assert!(rules.len() >= 40, "only {} rules", rules.len());
    let mut names = BTreeSet::new();
    for rule in rules {
        let name = rule["name"].as_str().expect("rule name");
        assert!(names.insert(name), "rule {name} twice");
        let class = rule["class"].as_str().expect("class");
        assert!(
            ["human", "proxy_open", "prefetch", "link_scanner", "bot"].contains(&class),
            "{name}: class {class}"
        );
        let certainty = rule["certainty"].as_str().expect("certainty");
        assert!(
            ["certain", "probable"].contains(&certainty),
            "{name}: certainty {certainty}"
        );
        if ["proxy_open", "prefetch", "link_scanner"].contains(&class) {
            assert!(rule.get("who").is_some(), "{name}: {class} needs a who");
        }
        for set in rule
            .get("networks")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let set = set.as_str().expect("network name");
            assert!(sets.contains_key(set), "{name}: unknown network set {set}");
        }
    }
}

#[test]
fn the_vendored_crawler_list_matches_its_version_file() {
    let dir = repo().join("config/bots");
    let version = read(&dir.join("VERSION"));
    let field = |key: &str| {
        version
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.trim_start().strip_prefix('='))
            })
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("VERSION lacks {key}"))
    };
    let number = field("version");
    assert!(field("tarball").ends_with(&format!("crawler-user-agents-{number}.tgz")));
    assert!(field("integrity").starts_with("sha512-"));
    assert!(is_date(&field("retrieved")));
    let list: serde_json::Value =
        serde_json::from_str(&read(&dir.join("crawler-user-agents.json"))).expect("JSON list");
    let entries = list.as_array().expect("a list");
    assert!(entries.len() > 500, "only {} patterns", entries.len());
    assert!(entries.iter().all(|e| e["pattern"].is_string()));
    assert!(read(&dir.join("LICENSE")).contains("MIT"));
}

/// RFC 4180 fields of one CSV text (quoted fields may hold commas, quotes and newlines).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

fn v4_or_mapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[test]
fn the_corpus_rows_are_labelled_sourced_and_covered_by_the_asn_fixture() {
    let dir = repo().join("tests/corpus");
    let records = csv_records(&read(&dir.join("classify.csv")));
    let header = &records[0];
    assert_eq!(
        header.join(","),
        "id,kind,method,ip,user_agent,headers,secs_after_send,expected_class,expected_who,source"
    );
    let rows = &records[1..];
    assert!(rows.len() >= 300, "only {} rows", rows.len());
    let mut ids = BTreeSet::new();
    let mut per_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut addresses = Vec::new();
    for row in rows {
        assert_eq!(row.len(), 10, "row {row:?} has {} fields", row.len());
        let id = row[0].as_str();
        assert!(ids.insert(id), "{id} twice");
        assert!(
            ["open", "click", "download", "unsubscribe"].contains(&row[1].as_str()),
            "{id}: kind"
        );
        assert!(
            ["GET", "HEAD", "POST"].contains(&row[2].as_str()),
            "{id}: method"
        );
        if row[1] == "unsubscribe" {
            assert_eq!(
                row[2], "POST",
                "{id}: the edge records an unsubscribe only for the one-click POST"
            );
        }
        let ip: IpAddr = row[3]
            .parse()
            .unwrap_or_else(|e| panic!("{id}: ip {}: {e}", row[3]));
        addresses.push((id.to_string(), v4_or_mapped(ip)));
        for header in row[5].split(" | ").filter(|h| !h.is_empty()) {
            assert!(
                header.contains(": "),
                "{id}: header {header:?} is not `Name: value`"
            );
        }
        if !row[6].is_empty() {
            row[6]
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{id}: secs_after_send: {e}"));
        }
        let class = row[7].as_str();
        assert!(
            ["human", "proxy_open", "prefetch", "link_scanner", "bot"].contains(&class),
            "{id}: class {class}"
        );
        let who = row[8].as_str();
        match class {
            "human" => assert!(who.is_empty(), "{id}: a human has no who"),
            "proxy_open" | "prefetch" | "link_scanner" => {
                assert!(!who.is_empty(), "{id}: {class} needs a who")
            }
            _ => {}
        }
        assert!(
            row[9].contains("UA: ") && row[9].contains("IP: "),
            "{id}: source must name the UA's and the address's origin"
        );
        *per_class.entry(class).or_default() += 1;
    }
    for class in ["human", "proxy_open", "prefetch", "link_scanner", "bot"] {
        assert!(
            per_class.get(class).copied().unwrap_or(0) >= 15,
            "too few {class} rows: {per_class:?}"
        );
    }

    // The ASN fixture: package rows, sorted, IPv4 first, each holding a corpus address.
    let fixture = csv_records(&read(&dir.join("asn-fixture.csv")));
    assert!(!fixture.is_empty());
    let ranges: Vec<(IpAddr, IpAddr, u32)> = fixture
        .iter()
        .map(|r| {
            assert_eq!(r.len(), 4, "fixture row {r:?}");
            let start: IpAddr = r[0].parse().expect("start ip");
            let end: IpAddr = r[1].parse().expect("end ip");
            assert!(start <= end, "fixture row {r:?} runs backwards");
            (start, end, r[2].parse().expect("asn"))
        })
        .collect();
    assert!(
        ranges.windows(2).all(|w| w[0].0 < w[1].0),
        "fixture rows are not sorted"
    );
    let covered = |ip: &IpAddr| ranges.iter().any(|(s, e, _)| s <= ip && ip <= e);
    for (start, end, asn) in &ranges {
        assert!(
            addresses.iter().any(|(_, ip)| start <= ip && ip <= end),
            "fixture row {start}-{end} AS{asn} holds no corpus address"
        );
    }
    let uncovered: Vec<_> = addresses
        .iter()
        .filter(|(_, ip)| !covered(ip))
        .map(|(id, _)| id.as_str())
        .collect();
    // The corpus README lists these: prefixes absent from the package's data.
    assert!(
        uncovered.len() <= 10,
        "corpus addresses without an ASN row: {uncovered:?}"
    );
}
