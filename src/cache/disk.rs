//! Tier 2: the cache in the store, so a re-run batch after a restart pays nothing twice.
//!
//! `CACHE` maps key -> encoded [`Row`]; `CACHE_BY_EXPIRY` holds `(expires_at, key)` so
//! pruning walks only the expired rows. A row refers to its body in `store::bodies`, where
//! the job completed with the same answer refers to it too: one copy. These are
//! transaction-level functions so a caller can, say, complete a job and cache its response
//! in one commit.

use bytes::Bytes;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{CacheKey, CachedResponse};
use crate::codec::{self, CodecError};
use crate::store::bodies;
use crate::store::tables::{BodyKey, CACHE, CACHE_BY_EXPIRY};
use crate::Result;

/// A stored cache entry: the response without its body, which is stored once beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    status: u16,
    request_id: Option<String>,
    body: RowBody,
    created_at: u64,
    expires_at: u64,
}

/// Where a row's body is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum RowBody {
    /// In the row (rows written before bodies were shared).
    Inline(Bytes),
    /// In `store::bodies`, at this key.
    Stored(BodyKey),
}

impl codec::Record for Row {
    /// Layout 1 was the whole [`CachedResponse`], body inline.
    const LAYOUT: u8 = 2;

    fn upgrade(layout: u8, payload: &[u8]) -> std::result::Result<Self, CodecError> {
        match layout {
            1 => {
                let old: CachedResponse = codec::payload_of(payload)?;
                Ok(Row {
                    status: old.status,
                    request_id: old.request_id,
                    body: RowBody::Inline(old.body),
                    created_at: old.created_at,
                    expires_at: old.expires_at,
                })
            }
            found => Err(CodecError::UnknownLayout {
                found,
                current: Self::LAYOUT,
            }),
        }
    }
}

impl Row {
    fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    fn stored_body(&self) -> Option<BodyKey> {
        match self.body {
            RowBody::Stored(key) => Some(key),
            RowBody::Inline(_) => None,
        }
    }

    fn resolve(
        self,
        body: impl FnOnce(&BodyKey) -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<CachedResponse>> {
        let body = match self.body {
            RowBody::Inline(bytes) => bytes,
            RowBody::Stored(key) => match body(&key)? {
                Some(bytes) => {
                    // The job this hit completes then refers to the same copy.
                    bodies::note_read(&key, &bytes);
                    Bytes::from(bytes)
                }
                // A row whose body is gone is a miss, never a wrong answer.
                None => return Ok(None),
            },
        };
        Ok(Some(CachedResponse {
            status: self.status,
            request_id: self.request_id,
            body,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }))
    }
}

/// The unexpired response stored for `key` at `now` (ms), seen from a read transaction.
/// An expired row is a miss (it stays until [`prune_in`] removes it).
pub fn get_read(txn: &ReadTransaction, key: &CacheKey, now: u64) -> Result<Option<CachedResponse>> {
    match lookup(&txn.open_table(CACHE)?, key, now)? {
        Some(row) => row.resolve(|h| bodies::get_read(txn, h)),
        None => Ok(None),
    }
}

/// [`get_read`] inside a write transaction (sees the transaction's own writes).
pub fn get_in(txn: &WriteTransaction, key: &CacheKey, now: u64) -> Result<Option<CachedResponse>> {
    let row = lookup(&txn.open_table(CACHE)?, key, now)?;
    match row {
        Some(row) => row.resolve(|h| bodies::get_in(txn, h)),
        None => Ok(None),
    }
}

fn lookup(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    key: &CacheKey,
    now: u64,
) -> Result<Option<Row>> {
    let Some(row) = table.get(key.as_bytes())? else {
        return Ok(None);
    };
    let row: Row = codec::decode(row.value())?;
    Ok((!row.is_expired(now)).then_some(row))
}

/// Stores `response` (already stamped, see [`CachedResponse::stamped`]) under `key`,
/// replacing any previous entry and its expiry index row.
pub fn put_in(txn: &WriteTransaction, key: &CacheKey, response: &CachedResponse) -> Result<()> {
    put_many_in(txn, &[(key, response)])
}

/// [`put_in`] for many entries, each table opened once (a burst of completions' rows).
pub fn put_many_in(txn: &WriteTransaction, rows: &[(&CacheKey, &CachedResponse)]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut bodies = bodies::Bodies::open(txn)?;
    let mut table = txn.open_table(CACHE)?;
    let mut by_expiry = txn.open_table(CACHE_BY_EXPIRY)?;
    for (key, response) in rows {
        let body_key = bodies.put(&response.body)?;
        let row = Row {
            status: response.status,
            request_id: response.request_id.clone(),
            body: RowBody::Stored(body_key),
            created_at: response.created_at,
            expires_at: response.expires_at,
        };
        let bytes = codec::encode(&row)?;
        let old = table
            .insert(key.as_bytes(), bytes.as_slice())?
            .map(|old| codec::decode::<Row>(old.value()));
        // An undecodable old row leaves its index row behind; prune_in copes with that.
        if let Some(Ok(old)) = old {
            by_expiry.remove((old.expires_at, key.as_bytes()))?;
            if let Some(body) = old.stored_body() {
                bodies.release(&body)?;
            }
        }
        by_expiry.insert((response.expires_at, key.as_bytes()), ())?;
    }
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
    let mut released = Vec::new();
    for (expires_at, key) in &due {
        by_expiry.remove((*expires_at, key))?;
        let stale = match table.get(key)? {
            Some(row) => match codec::decode::<Row>(row.value()) {
                Ok(row) if row.is_expired(now) => Some(row.stored_body()),
                Ok(_) => None,
                Err(_) => Some(None),
            },
            None => None,
        };
        if let Some(body) = stale {
            table.remove(key)?;
            released.extend(body);
        }
    }
    drop((table, by_expiry));
    for body in &released {
        bodies::release_in(txn, body)?;
    }
    Ok(due.len())
}

/// How many entries tier 2 holds, expired or not.
pub fn len_read(txn: &ReadTransaction) -> Result<u64> {
    Ok(txn.open_table(CACHE)?.len()?)
}
