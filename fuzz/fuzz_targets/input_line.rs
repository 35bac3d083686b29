//! Fuzz target `input_line`: see `reasonq::testing::fuzz::input_line` (also replayed on stable by
//! `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = reasonq::testing::fuzz::input_line(data) {
        panic!("{finding}");
    }
});
