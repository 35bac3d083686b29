//! Decodes arbitrary bytes as every stored record type; a round-trip mismatch or a panic is a
//! finding. `tests/fuzz_replay.rs` replays the corpus through the same function on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = reasonq::testing::fuzz::codec(data) {
        panic!("{finding}");
    }
});
