//! Tier 2: the cache in the store, so a re-run batch after a restart pays nothing twice.
//!
//! `CACHE` maps key -> encoded [`CachedResponse`]; `CACHE_BY_EXPIRY` holds
//! `(expires_at, key)` so pruning walks only the expired rows. These are transaction-level
//! functions so a caller can, say, complete a job and cache its response in one commit.

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::{CacheKey, CachedResponse};
use crate::codec;
use crate::store::tables::{CACHE, CACHE_BY_EXPIRY};
use crate::Result;

/// The unexpired response stored for `key` at `now` (ms), seen from a read transaction.
/// An expired row is a miss (it stays until [`prune_in`] removes it).
pub fn get_read(txn: &ReadTransaction, key: &CacheKey, now: u64) -> Result<Option<CachedResponse>> {
    lookup(&txn.open_table(CACHE)?, key, now)
}

/// [`get_read`] inside a write transaction (sees the transaction's own writes).
pub fn get_in(txn: &WriteTransaction, key: &CacheKey, now: u64) -> Result<Option<CachedResponse>> {
    lookup(&txn.open_table(CACHE)?, key, now)
}

fn lookup(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    key: &CacheKey,
    now: u64,
) -> Result<Option<CachedResponse>> {
    let Some(row) = table.get(key.as_bytes())? else {
        return Ok(None);
    };
    let response: CachedResponse = codec::decode(row.value())?;
    Ok((!response.is_expired(now)).then_some(response))
}

/// Stores `response` (already stamped, see [`CachedResponse::stamped`]) under `key`,
/// replacing any previous entry and its expiry index row.
pub fn put_in(txn: &WriteTransaction, key: &CacheKey, response: &CachedResponse) -> Result<()> {
    let bytes = codec::encode(response)?;
    let mut table = txn.open_table(CACHE)?;
    let mut by_expiry = txn.open_table(CACHE_BY_EXPIRY)?;
    if let Some(old) = table.insert(key.as_bytes(), bytes.as_slice())? {
        // An undecodable old row leaves its index row behind; prune_in copes with that.
        if let Ok(old) = codec::decode::<CachedResponse>(old.value()) {
            by_expiry.remove((old.expires_at, key.as_bytes()))?;
        }
    }
    by_expiry.insert((response.expires_at, key.as_bytes()), ())?;
    Ok(())
}

/// Removes up to `limit` entries expired at `now` (ms), walking the expiry index from the
/// oldest, and returns how many index rows it consumed: call again while it returns `limit`.
///
/// A row is deleted only if it is itself expired (or unreadable), so a leftover index row can
/// never delete an entry that was stored again with a later expiry.
pub fn prune_in(txn: &WriteTransaction, now: u64, limit: usize) -> Result<usize> {
    let mut table = txn.open_table(CACHE)?;
    let mut by_expiry = txn.open_table(CACHE_BY_EXPIRY)?;
    let mut due = Vec::new();
    for row in by_expiry.range(..=(now, &[0xFF; 32]))?.take(limit) {
        let (index_key, _) = row?;
        let (expires_at, key) = index_key.value();
        due.push((expires_at, *key));
    }
    for (expires_at, key) in &due {
        by_expiry.remove((*expires_at, key))?;
        let stale = match table.get(key)? {
            Some(row) => {
                codec::decode::<CachedResponse>(row.value()).map_or(true, |r| r.is_expired(now))
            }
            None => false,
        };
        if stale {
            table.remove(key)?;
        }
    }
    Ok(due.len())
}

/// How many entries tier 2 holds, expired or not.
pub fn len_read(txn: &ReadTransaction) -> Result<u64> {
    Ok(txn.open_table(CACHE)?.len()?)
}
