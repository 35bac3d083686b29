//! What each queue's (batch's) completed jobs consumed, kept as running totals in
//! `BATCH_USAGE` and `BATCH_COST` and added to in the transaction that completes a job, so
//! `status` reads two rows per batch instead of every job, and a kill -9 neither loses nor
//! double-counts a job's share.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::cost::Money;
use crate::error::Result;
use crate::store::tables::{BATCH_COST, BATCH_USAGE};

/// Totals of one queue's completed jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens the server reported (cache hits cost nothing and add none).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Jobs answered from the cache.
    pub cached: u64,
    /// What the priced answers cost (cache hits: nothing).
    #[serde(default)]
    pub cost: Money,
    /// Answers whose cost is known (cache hits included, at zero).
    #[serde(default)]
    pub priced: u64,
    /// Answers of models without a price: the total leaves them out and says so.
    #[serde(default)]
    pub unpriced: u64,
}

impl Usage {
    /// Adds `other` to these totals (saturating).
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cached = self.cached.saturating_add(other.cached);
        self.cost = Money(self.cost.0.saturating_add(other.cost.0));
        self.priced = self.priced.saturating_add(other.priced);
        self.unpriced = self.unpriced.saturating_add(other.unpriced);
    }
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
    if add.priced > 0 || add.unpriced > 0 {
        let mut table = txn.open_table(BATCH_COST)?;
        let (m, n, u) = table.get(queue)?.map_or((0, 0, 0), |v| v.value());
        table.insert(
            queue,
            (
                m.saturating_add(add.cost.0),
                n.saturating_add(add.priced),
                u.saturating_add(add.unpriced),
            ),
        )?;
    }
    Ok(())
}

/// `queue`'s totals.
pub fn usage_read(txn: &ReadTransaction, queue: &str) -> Result<Usage> {
    let table = txn.open_table(BATCH_USAGE)?;
    let (prompt_tokens, completion_tokens, cached) =
        table.get(queue)?.map_or((0, 0, 0), |v| v.value());
    // Files of versions before costs have no such table until a write opens it.
    let (cost, priced, unpriced) = match txn.open_table(BATCH_COST) {
        Ok(table) => table.get(queue)?.map_or((0, 0, 0), |v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => (0, 0, 0),
        Err(e) => return Err(e.into()),
    };
    Ok(Usage {
        prompt_tokens,
        completion_tokens,
        cached,
        cost: Money(cost),
        priced,
        unpriced,
    })
}
