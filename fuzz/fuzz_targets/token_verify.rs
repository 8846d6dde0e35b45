//! `cargo +nightly fuzz run token_verify`: see `trackedge::fuzzing::token_verify` for the input
//! layout and the properties checked (shared with `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trackedge::fuzzing::token_verify(data);
});
