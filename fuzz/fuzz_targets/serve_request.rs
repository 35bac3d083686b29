//! Fuzz target `serve_request`: see `reasonq::testing::fuzz::serve_request` (also replayed on
//! stable by `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = reasonq::testing::fuzz::serve_request(data) {
        panic!("{finding}");
    }
});
