//! Compiles the shipped network catalogue (`config/networks/*.toml`) into the binary,
//! so the default config classifies with no file but the executable. Writes
//! `$OUT_DIR/networks.rs`: a slice of (file name, contents), sorted by file name.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/networks");
    // Cargo scans a directory named here for any change below it.
    println!("cargo:rerun-if-changed=config/networks");
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let mut out = String::from("&[\n");
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("catalogue file names are UTF-8");
        let full = path.to_str().expect("the source path is UTF-8");
        writeln!(out, "    ({name:?}, include_str!({full:?})),").expect("write to a String");
    }
    out.push(']');
    let target =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("networks.rs");
    std::fs::write(target, out).expect("write networks.rs");
}
