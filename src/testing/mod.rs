//! Test and fuzz harnesses shared by the fuzz targets (`fuzz/`), the stable corpus replay
//! (`tests/fuzz_replay.rs`) and the property tests, so each check has one definition.
//! Not part of the supported API.

pub mod fuzz;
pub mod queue_model;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A unique scratch path (in `/dev/shm` when it exists, else the temp folder), removed on drop. The
/// library has no `tempfile` dependency, and fuzz targets run millions of times per process.
pub struct ScratchFile {
    path: PathBuf,
}

impl ScratchFile {
    /// A fresh path tagged `tag`; nothing is created yet.
    pub fn new(tag: &str) -> ScratchFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("reasonq-{tag}-{}-{n}.redb", std::process::id());
        // A RAM-backed folder where there is one: the store fsyncs at open and close, which
        // on a disk caps a fuzz target at a few runs per second.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        ScratchFile {
            path: dir.join(name),
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
