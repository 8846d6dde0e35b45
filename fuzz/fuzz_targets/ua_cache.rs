//! `cargo +nightly fuzz run ua_cache`: see `trackedge::fuzzing::ua_cache` for the input
//! layout and the properties checked (shared with `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trackedge::fuzzing::ua_cache(data);
});
