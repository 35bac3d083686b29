//! Fuzz target `queue_ops`: see `reasonq::testing::fuzz::queue_ops` (also replayed on stable by
//! `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = reasonq::testing::fuzz::queue_ops(data) {
        panic!("{finding}");
    }
});
