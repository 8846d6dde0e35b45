//! `cargo +nightly fuzz run segment_decode`: see `trackedge::fuzzing::segment_decode` for the input
//! layout and the properties checked (shared with `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trackedge::fuzzing::segment_decode(data);
});
