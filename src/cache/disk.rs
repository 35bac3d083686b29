//! Tier 2: the cache in the store, so a re-run batch after a restart pays nothing twice.
//!
//! `CACHE` maps key -> encoded [`Row`]; new rows are appended to `CACHE_JOURNAL` first and
//! merged into it in sorted runs (see `journal`); `CACHE_BY_EXPIRY` holds
//! `(expires_at, key)` so pruning walks only the expired rows. A row refers to its body in
//! `store::bodies`, where the job completed with the same answer refers to it too: one copy. These are
//! transaction-level functions so a caller can, say, complete a job and cache its response
//! in one commit.

use std::collections::BTreeSet;

use bytes::Bytes;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::journal::{self, Journal};
use super::{CacheKey, CachedResponse};
use crate::codec::{self, CodecError};
use crate::store::bodies;
use crate::store::tables::{BodyKey, CACHE, CACHE_BY_EXPIRY, CACHE_JOURNAL};
use crate::store::Store;
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

/// The unexpired responses stored for `keys` at `now` (ms), from one read transaction on
/// the calling thread (not the async runtime's): `Err` if the transaction fails, else each
/// key's own outcome. An expired row is a miss (it stays until [`prune_in`] removes it).
pub fn get_many_blocking(
    store: &Store,
    keys: &[CacheKey],
    now: u64,
) -> Result<Vec<Result<Option<CachedResponse>>>> {
    // The journal's index before the snapshot (see `journal`).
    let seqs = Journal::of(store).find(store, keys)?;
    store.read_blocking(|txn| {
        let (table, log) = (txn.open_table(CACHE)?, txn.open_table(CACHE_JOURNAL)?);
        Ok(keys
            .iter()
            .zip(seqs)
            .map(|(key, seqs)| match newest(&table, &log, key, seqs)? {
                Some(row) if !row.is_expired(now) => row.resolve(|h| bodies::get_read(txn, h)),
                _ => Ok(None),
            })
            .collect())
    })
}

/// [`get_many_blocking`] for one key.
pub fn get_blocking(store: &Store, key: &CacheKey, now: u64) -> Result<Option<CachedResponse>> {
    get_many_blocking(store, std::slice::from_ref(key), now)?
        .pop()
        .unwrap_or(Ok(None))
}

/// The newest row of `key`, expired or not: its journal row at the first of `seqs` that
/// holds one in this snapshot, else its row in `cache`.
fn newest(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    log: &impl ReadableTable<u64, (&'static [u8; 32], &'static [u8])>,
    key: &CacheKey,
    seqs: [Option<u64>; 2],
) -> Result<Option<Row>> {
    for seq in seqs.into_iter().flatten() {
        if let Some(found) = log.get(seq)? {
            let (at, row) = found.value();
            if at == key.as_bytes() {
                return Ok(Some(codec::decode(row)?));
            }
        }
    }
    match table.get(key.as_bytes())? {
        Some(row) => Ok(Some(codec::decode(row.value())?)),
        None => Ok(None),
    }
}

/// Stores `response` (already stamped, see [`CachedResponse::stamped`]) under `key`: it
/// shadows any older row of the key at once and replaces it when the journal is merged.
pub fn put_in(
    txn: &WriteTransaction,
    journal: &Journal,
    key: &CacheKey,
    response: &CachedResponse,
) -> Result<()> {
    put_many_in(txn, journal, &[(key, response)])
}

/// [`put_in`] for many entries, each table opened once (a burst of completions' rows): each
/// row is appended to the journal, with its expiry index row and its body.
pub fn put_many_in(
    txn: &WriteTransaction,
    journal: &Journal,
    rows: &[(&CacheKey, &CachedResponse)],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut bodies = bodies::Bodies::open(txn)?;
    let mut log = txn.open_table(CACHE_JOURNAL)?;
    let mut by_expiry = txn.open_table(CACHE_BY_EXPIRY)?;
    let mut index = journal.loaded(&log)?;
    let first = log.last()?.map_or(0, |(seq, _)| seq.value() + 1);
    // The burst's expiry rows, inserted in key order after the loop: they share an expiry
    // (or nearly), so in completion order they would land before one another and split the
    // table's last leaves in half; in order they fill them.
    let mut expiring: BTreeSet<(u64, [u8; 32])> = BTreeSet::new();
    for (next, (key, response)) in (first..).zip(rows) {
        let key = key.as_bytes();
        // The key's older journal row goes (an older row in `cache` goes at the merge).
        let mut replaced = None;
        if let Some(seq) = index.get(key) {
            let old = match log.get(seq)? {
                Some(found) if found.value().0 == key => {
                    Some(codec::decode::<Row>(found.value().1))
                }
                _ => None,
            };
            if let Some(old) = old {
                replaced = Some(seq);
                log.remove(seq)?;
                // An undecodable old row leaves its index row behind; prune_in copes with that.
                if let Ok(old) = old {
                    if !expiring.remove(&(old.expires_at, *key)) {
                        by_expiry.remove((old.expires_at, key))?;
                    }
                    if let Some(body) = old.stored_body() {
                        bodies.release(&body)?;
                    }
                }
            }
        }
        let row = Row {
            status: response.status,
            request_id: response.request_id.clone(),
            body: RowBody::Stored(bodies.put(&response.body)?),
            created_at: response.created_at,
            expires_at: response.expires_at,
        };
        log.insert(next, (key, codec::encode(&row)?.as_slice()))?;
        expiring.insert((response.expires_at, *key));
        index.put(key, next, replaced);
    }
    for (expires_at, key) in &expiring {
        by_expiry.insert((*expires_at, key), ())?;
    }
    Ok(())
}

/// Moves up to `max` of the oldest journal rows into `cache`, in key order, replacing older
/// rows of their keys; returns the rows moved (short key, sequence number), for
/// [`Journal::forget`] once committed.
pub fn merge_in(txn: &WriteTransaction, max: usize) -> Result<Vec<(u64, u64)>> {
    let mut log = txn.open_table(CACHE_JOURNAL)?;
    let mut run = Vec::new();
    for row in log.iter()?.take(max) {
        let (seq, value) = row?;
        run.push((journal::short(value.value().0), seq.value()));
    }
    if run.is_empty() {
        return Ok(run);
    }
    // Key order, so neighbouring rows land in the same leaf; a key's newest row last.
    run.sort_unstable();
    let mut bodies = bodies::Bodies::open(txn)?;
    let mut table = txn.open_table(CACHE)?;
    let mut by_expiry = txn.open_table(CACHE_BY_EXPIRY)?;
    for (_, seq) in &run {
        let Some((key, bytes)) = log.get(*seq)?.map(|v| {
            let (key, bytes) = v.value();
            (*key, bytes.to_vec())
        }) else {
            continue;
        };
        let old = table
            .insert(&key, bytes.as_slice())?
            .map(|old| codec::decode::<Row>(old.value()));
        if let Some(Ok(old)) = old {
            let expires_at = codec::decode::<Row>(&bytes).map(|row| row.expires_at);
            // The new row's expiry index row stays (it may be the same).
            if expires_at.ok() != Some(old.expires_at) {
                by_expiry.remove((old.expires_at, &key))?;
            }
            if let Some(body) = old.stored_body() {
                bodies.release(&body)?;
            }
        }
    }
    for (_, seq) in &run {
        log.remove(*seq)?;
    }
    Ok(run)
}

/// Removes up to `limit` entries expired at `now` (ms), walking the expiry index from the
/// oldest, and returns how many index rows it consumed: call again while it returns `limit`.
///
/// A row is deleted only if it is itself expired (or unreadable), so a leftover index row can
/// never delete an entry that was stored again with a later expiry.
///
/// The journal is merged first (all of it), so every row it judges is in `cache`.
pub fn prune_in(txn: &WriteTransaction, now: u64, limit: usize) -> Result<usize> {
    merge_in(txn, usize::MAX)?;
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

/// How many entries tier 2 holds, expired or not (a key stored again since the last merge
/// counts twice until the next).
pub fn len_read(txn: &ReadTransaction) -> Result<u64> {
    Ok(txn.open_table(CACHE)?.len()? + journal_len_read(txn)?)
}

/// How many rows wait in the journal.
pub fn journal_len_read(txn: &ReadTransaction) -> Result<u64> {
    Ok(txn.open_table(CACHE_JOURNAL)?.len()?)
}
