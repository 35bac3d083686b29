//! What each queue's (batch's) completed jobs consumed, kept as running totals in
//! `BATCH_USAGE` and added to in the transaction that completes a job, so `status` reads one
//! row per batch instead of every job.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::tables::BATCH_USAGE;

/// Totals of one queue's completed jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens the server reported (cache hits cost nothing and add none).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Jobs answered from the cache.
    pub cached: u64,
}

/// Adds one completed job's usage to `queue`'s totals.
pub fn add_usage_in(txn: &WriteTransaction, queue: &str, add: Usage) -> Result<()> {
    let mut table = txn.open_table(BATCH_USAGE)?;
    let (p, c, k) = table.get(queue)?.map_or((0, 0, 0), |v| v.value());
    table.insert(
        queue,
        (
            p.saturating_add(add.prompt_tokens),
            c.saturating_add(add.completion_tokens),
            k.saturating_add(add.cached),
        ),
    )?;
    Ok(())
}

/// `queue`'s totals.
pub fn usage_read(txn: &ReadTransaction, queue: &str) -> Result<Usage> {
    let table = txn.open_table(BATCH_USAGE)?;
    let (prompt_tokens, completion_tokens, cached) =
        table.get(queue)?.map_or((0, 0, 0), |v| v.value());
    Ok(Usage {
        prompt_tokens,
        completion_tokens,
        cached,
    })
}
