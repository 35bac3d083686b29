//! Every failed try of a job (the last [`KEPT_ATTEMPTS`]), written in the transaction that
//! records the failure, so a line can show each attempt with its error and wait. Only
//! failure paths write here; a job that succeeds first time has no rows.

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::tables;

/// Tries kept per job: the most recent ones, so a job snoozed many times stays bounded.
pub const KEPT_ATTEMPTS: u32 = 20;

/// One failed try of a job, in `tables::JOB_ATTEMPTS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the try ended (ms since the epoch).
    pub at_ms: u64,
    /// The error as the job's `last_error` got it (the runner's failure record as JSON;
    /// the queue does not read it).
    pub error: String,
    /// The backoff or snooze before the next try; `None` when this try ended the job.
    pub wait_ms: Option<u64>,
}

impl crate::codec::Record for AttemptRecord {}

/// A job's failed tries, oldest first: (n-th try, record). Tries are numbered by the job's
/// history, not its attempt count (a free snooze refunds the attempt but is still a try).
pub fn attempts_read(txn: &ReadTransaction, job_id: u64) -> Result<Vec<(u32, AttemptRecord)>> {
    let table = txn.open_table(tables::JOB_ATTEMPTS)?;
    let mut out = Vec::new();
    for row in table.range((job_id, 0u32)..=(job_id, u32::MAX))? {
        let (key, value) = row?;
        out.push((key.value().1, crate::codec::decode(value.value())?));
    }
    Ok(out)
}

/// Records a failed try of `job_id`, dropping the oldest beyond [`KEPT_ATTEMPTS`].
pub(super) fn record_in(
    txn: &WriteTransaction,
    job_id: u64,
    error: &str,
    wait_ms: Option<u64>,
    now: u64,
) -> Result<()> {
    let mut table = txn.open_table(tables::JOB_ATTEMPTS)?;
    let last = match table
        .range((job_id, 0u32)..=(job_id, u32::MAX))?
        .next_back()
    {
        Some(row) => row?.0.value().1,
        None => 0,
    };
    let n = last.saturating_add(1);
    let record = AttemptRecord {
        at_ms: now,
        error: error.to_owned(),
        wait_ms,
    };
    table.insert((job_id, n), crate::codec::encode(&record)?.as_slice())?;
    // Rows are contiguous (only the oldest is ever dropped): one removal keeps the bound.
    if n > KEPT_ATTEMPTS {
        table.remove((job_id, n - KEPT_ATTEMPTS))?;
    }
    Ok(())
}

/// Deletes every try of `job_id` (the job is being deleted).
pub(super) fn remove_in(
    table: &mut Table<'_, (u64, u32), &'static [u8]>,
    job_id: u64,
) -> Result<()> {
    table.retain_in((job_id, 0u32)..=(job_id, u32::MAX), |_, _| false)?;
    Ok(())
}
