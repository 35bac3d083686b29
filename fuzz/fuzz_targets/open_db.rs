//! Fuzz target `open_db`: see `reasonq::testing::fuzz::open_db` (also replayed on stable by
//! `tests/fuzz_replay.rs`).
#![no_main]

static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts on every panic, even one reasonq catches on purpose
    // (redb panics on some damaged files; `Store::open` turns that into an error). Restore
    // the default hook: a panic that escapes is still caught by libfuzzer-sys and aborts.
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    if let Err(finding) = reasonq::testing::fuzz::open_db(data) {
        panic!("{finding}");
    }
});
