//! Fuzz target `chat_response`: see `reasonq::testing::fuzz::chat_response` (also replayed on stable by
//! `tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = reasonq::testing::fuzz::chat_response(data) {
        panic!("{finding}");
    }
});
