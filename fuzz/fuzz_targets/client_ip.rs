//! `cargo +nightly fuzz run client_ip`: see `trackedge::fuzzing::client_ip` for the input
//! layout and the properties checked (shared with `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trackedge::fuzzing::client_ip(data);
});
