//! The fuzz targets' checks (`trackedge::fuzzing`) over the committed seed corpus in
//! `fuzz/corpus/<target>/seed-*`, so plain `cargo test` runs every fuzz entry point
//! without a nightly toolchain; and the seed files are what the generator makes.
//!
//! To rewrite the seed files after a format change:
//! `TRACKEDGE_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus`.

use std::path::{Path, PathBuf};

use trackedge::fuzzing;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed seeds of one target (files named `seed-*`; what libFuzzer adds
/// next to them stays local).
fn committed_seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    let mut seeds: Vec<_> = entries
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("seed-"))
        })
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read seed");
            (path, bytes)
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn every_seed_passes_its_fuzz_check_and_the_seeds_reach_the_deep_branches() {
    for target in fuzzing::TARGETS {
        let seeds = committed_seeds(target);
        assert!(seeds.len() >= 2, "{target}: {} seeds", seeds.len());
        let mut deep = 0;
        for (path, bytes) in &seeds {
            let reached = fuzzing::check(target, bytes).expect("a known target");
            eprintln!("{target} {}: deep branch {reached}", path.display());
            deep += usize::from(reached);
        }
        // A seed corpus that never gets past the first refusal would only test that.
        assert!(deep > 0, "{target}: no seed reached the deep branch");
    }
}

#[test]
fn committed_seeds_are_what_the_generator_makes() {
    let write = std::env::var_os("TRACKEDGE_WRITE_FUZZ_SEEDS").is_some();
    let generated = fuzzing::seeds();
    for target in fuzzing::TARGETS {
        let want: Vec<_> = generated
            .iter()
            .filter(|(t, _, _)| *t == target)
            .map(|(_, name, bytes)| (corpus_dir(target).join(name), bytes.clone()))
            .collect();
        if write {
            std::fs::create_dir_all(corpus_dir(target)).expect("corpus dir");
            for (path, _) in committed_seeds(target) {
                std::fs::remove_file(path).expect("remove old seed");
            }
            for (path, bytes) in &want {
                std::fs::write(path, bytes).expect("write seed");
            }
        }
        let mut want = want;
        want.sort();
        assert_eq!(
            committed_seeds(target),
            want,
            "{target}: the seed files differ from fuzzing::seeds(); rewrite them with \
             TRACKEDGE_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus"
        );
    }
}
