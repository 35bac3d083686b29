//! Checking a database file: redb's integrity check, on a copy unless asked to repair, and
//! what each table holds before and after, so a repair says what it kept and what it lost.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTableMetadata};
use serde::Serialize;

use super::tables::*;
use super::unpanicked;
use crate::error::{Error, Result};

/// What a check found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    /// `ok`, `repaired` (or repairable, without `--repair`), or `unrepairable`.
    pub verdict: &'static str,
    /// Rows per table as redb opens the file (it recovers an unclean shutdown on its own;
    /// `None` when the damaged file cannot be opened).
    pub before: Option<Vec<(String, u64)>>,
    /// Rows per table after the repair (of the file, or of the copy the check repaired).
    pub after: Option<Vec<(String, u64)>>,
    /// The copy of the file as it was, when a repair changed it.
    pub backup: Option<PathBuf>,
}

/// Checks the database at `path`. Without `repair` the file is not touched: the check (and
/// any repair it needs) runs on a copy. With `repair`, a damaged file is first copied to
/// `PATH.bak-<ms>`, then repaired in place.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport> {
    if !path.exists() {
        return Err(bad(path, "no such file".into()));
    }
    let scratch =
        tempdir_beside(path).map_err(|e| bad(path, format!("cannot make a scratch copy: {e}")))?;
    let checked = check_in(path, &scratch, repair);
    let _ = std::fs::remove_dir_all(&scratch);
    checked
}

fn check_in(path: &Path, scratch: &Path, repair: bool) -> Result<CheckReport> {
    let copy = scratch.join("check.redb");
    std::fs::copy(path, &copy).map_err(|e| bad(path, format!("cannot copy the file: {e}")))?;
    // redb may panic on a damaged file: `unpanicked` makes that an error, here a finding.
    let before = unpanicked(&copy, || counts_of(&copy)).ok();
    let checked = unpanicked(&copy, || {
        let mut db = redb::Database::open(&copy)?;
        Ok(db.check_integrity()?)
    });
    let verdict = match &checked {
        Ok(true) => "ok",
        Ok(false) => "repaired",
        Err(_) => "unrepairable",
    };
    let after = match checked {
        Ok(_) => unpanicked(&copy, || counts_of(&copy)).ok(),
        Err(_) => None,
    };
    let mut backup = None;
    if repair && verdict == "repaired" {
        let kept = path.with_extension(format!("redb.bak-{}", crate::clock::now_ms()));
        std::fs::copy(path, &kept)
            .map_err(|e| bad(path, format!("cannot back up the file: {e}")))?;
        std::fs::rename(&copy, path)
            .map_err(|e| bad(path, format!("cannot replace the file: {e}")))?;
        backup = Some(kept);
    }
    Ok(CheckReport {
        verdict,
        before,
        after,
        backup,
    })
}

fn bad(path: &Path, message: String) -> Error {
    Error::BadDatabase {
        path: path.display().to_string(),
        message,
    }
}

/// A private scratch folder next to the file (same filesystem, so the repaired copy can be
/// renamed over it).
fn tempdir_beside(path: &Path) -> std::io::Result<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = dir.join(format!(".reasonq-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    Ok(scratch)
}

/// Rows of every table of the file at `path` (read only).
fn counts_of(path: &Path) -> Result<Vec<(String, u64)>> {
    let db = redb::Database::open(path)?;
    let txn = db.begin_read()?;
    let mut out = Vec::new();
    macro_rules! count {
        ($($table:ident),* $(,)?) => {$(
            let n = match txn.open_table($table) {
                Ok(t) => t.len()?,
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(e.into()),
            };
            out.push((redb::TableHandle::name(&$table).to_string(), n));
        )*};
    }
    count!(
        JOBS,
        JOBS_BY_QUEUE,
        JOBS_DUE,
        JOBS_LEASED,
        JOBS_DEDUP,
        JOBS_FINISHED,
        JOB_CHECKPOINTS,
        JOBS_COUNTS,
        JOB_SNOOZES,
        JOB_ATTEMPTS,
        EXPERIENCES,
        EXPERIENCES_BY_TIME,
        EXPERIENCES_BY_DOMAIN,
        EXPERIENCES_BY_TAG,
        EXPERIENCE_COUNTS,
        PATTERNS,
        MEMORY_POSTINGS,
        MEMORY_TERMS,
        MEMORY_STATS,
        MEMORY_RULES,
        CACHE,
        CACHE_BY_EXPIRY,
        CACHE_JOURNAL,
        RUNS,
        BOARD_SESSIONS,
        BOARD_ENTRIES,
        BATCH_ENDPOINTS,
        SERVE_FILES,
        SERVE_BATCHES,
        SERVE_FILES_BY_TIME,
        SERVE_BATCHES_BY_TIME,
        SCHEMAS,
        BATCH_INPUTS,
        META,
    );
    Ok(out)
}
