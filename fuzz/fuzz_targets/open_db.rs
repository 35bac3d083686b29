//! Fuzz target `open_db`: see `reasonq::testing::fuzz::open_db` (also replayed on stable by
//! `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = reasonq::testing::fuzz::open_db(data) {
        panic!("{finding}");
    }
});
