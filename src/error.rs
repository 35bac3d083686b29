//! The crate's error type.
//!
//! Errors are `Clone` because one failed group commit must be reported to every caller whose
//! write was in it; storage errors are therefore kept as text with the operation that failed,
//! and an LLM error is shared behind an `Arc`.

use std::sync::Arc;

use crate::codec::CodecError;
use crate::llm::LlmError;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in reasonq, with enough context to act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// redb reported a failure (I/O, corruption, a full disk, ...).
    #[error("storage error while {context}: {message}")]
    Storage {
        context: &'static str,
        message: String,
        kind: StorageKind,
    },
    /// A stored record could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(#[from] CodecError),
    /// The file was written by a newer reasonq than this one.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade reasonq")]
    SchemaTooNew { found: u64, supported: u64 },
    /// The file is not a reasonq database, or it is damaged.
    #[error("cannot open database {path}: {message}")]
    BadDatabase { path: String, message: String },
    /// Another process holds the database. While a batch runs, its process answers the
    /// read-only commands (`app::live`), so the message names them.
    #[error("database {path} is already open in another process; while it runs, `reasonq status`, `stats`, `jobs list`, `jobs show` and `results` still work (they ask that process)")]
    Locked { path: String },
    /// A record that was asked for does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// A job's lease was lost (it was rescued and possibly leased again), so this worker's
    /// completion or failure is refused: the new owner's result wins.
    #[error("job {job_id} is no longer leased by this worker (lease lost)")]
    LeaseLost { job_id: u64 },
    /// An operation that does not fit the record's state (e.g. retrying a completed job).
    #[error("{0}")]
    InvalidState(String),
    /// Bad input from a user or a file.
    #[error("{0}")]
    Invalid(String),
    /// The LLM client could not be set up (no API key, a bad base URL) or a call failed.
    #[error("{0}")]
    Llm(Arc<LlmError>),
    /// The LLM call a step of a use case makes failed; `step` names it.
    #[error("{step} failed: {source}")]
    Call {
        step: &'static str,
        source: Arc<LlmError>,
    },
    /// The endpoint or the account cannot serve any request (the circuit breaker opened).
    #[error("stopped: {0}")]
    Halted(String),
    /// An output file could not be written.
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    /// The simulated API (`--simulate`) could not start.
    #[error("cannot start the simulated API: {0}")]
    Simulator(String),
    /// A task, thread or write closure failed or panicked: a bug or a runtime shutting down,
    /// never bad input.
    #[error("{0}")]
    Task(String),
    /// The store's writer thread has stopped (the store was closed).
    #[error("the store is closed")]
    Closed,
}

impl From<LlmError> for Error {
    fn from(e: LlmError) -> Self {
        Error::Llm(Arc::new(e))
    }
}

impl Error {
    /// The failure of the LLM call of `step`.
    pub fn call(step: &'static str, err: LlmError) -> Self {
        Error::Call {
            step,
            source: Arc::new(err),
        }
    }
}

/// Coarse classification of storage failures, for callers that react differently to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// The disk or quota is full.
    DiskFull,
    /// The file is corrupted.
    Corrupted,
    /// Anything else.
    Other,
}

impl Error {
    /// Wraps any redb error with the operation that failed, classifying full disks and
    /// corruption so callers can say so plainly.
    pub(crate) fn storage(context: &'static str, err: impl Into<redb::Error>) -> Self {
        let err: redb::Error = err.into();
        let kind = match &err {
            redb::Error::Corrupted(_) => StorageKind::Corrupted,
            // ENOSPC, EDQUOT, and EFBIG (a file size limit such as `ulimit -f`).
            redb::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::QuotaExceeded
                        | std::io::ErrorKind::FileTooLarge
                ) || matches!(io.raw_os_error(), Some(27 | 28 | 122)) =>
            {
                StorageKind::DiskFull
            }
            _ => StorageKind::Other,
        };
        let message = match kind {
            StorageKind::DiskFull => format!(
                "the disk is full or the database file may not grow ({err}); this write was \
                 not committed, earlier commits are intact: free space and run again"
            ),
            _ => err.to_string(),
        };
        Error::Storage {
            context,
            message,
            kind,
        }
    }
}

/// `?` on a redb error inside store code: the context names the failing step generically;
/// call sites that know better use [`Error::storage`] directly.
macro_rules! from_redb {
    ($($ty:ty => $ctx:literal),* $(,)?) => {$(
        impl From<$ty> for Error {
            fn from(err: $ty) -> Self {
                Error::storage($ctx, err)
            }
        }
    )*};
}

from_redb! {
    redb::Error => "accessing the database",
    redb::StorageError => "reading or writing the database",
    redb::TableError => "opening a table",
    redb::TransactionError => "starting a transaction",
    redb::CommitError => "committing a transaction",
    redb::DatabaseError => "opening the database",
    redb::SetDurabilityError => "setting durability",
    redb::CompactionError => "compacting the database",
}
