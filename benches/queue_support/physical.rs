//! The disk's ceiling: raw fsync rate and redb's empty-commit rate at immediate durability.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Time to write 64 bytes and fsync a file `n` times.
pub fn fsync_loop(dir: &Path, n: u64) -> Duration {
    let mut file = std::fs::File::create(dir.join("fsync.bin")).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        file.write_all(&[1u8; 64]).unwrap();
        file.sync_data().unwrap();
    }
    start.elapsed()
}

/// Time for `n` empty redb commits at immediate durability.
pub fn redb_empty_commits(dir: &Path, n: u64) -> Duration {
    let path = dir.join("empty.redb");
    let _ = std::fs::remove_file(&path);
    let db = redb::Database::create(&path).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        db.begin_write().unwrap().commit().unwrap();
    }
    start.elapsed()
}
