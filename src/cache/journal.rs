//! Tier 2's journal: a fresh row is appended under a sequence number in the commit that
//! completes its job, and merged into the hashed table (`cache`) later, in sorted runs.
//!
//! Why: `cache` is keyed by the request's SHA-256, so each completion of a batch inserted at
//! a random place of a tree that grows with the batch, writing a leaf and a branch page per
//! job (13.4 KB written per job at a million rows, 5.7 KB without the cache;
//! docs/benchmarks.md). An append writes the journal's last leaf, and a merge of
//! [`MERGE_RUN`] sorted rows writes each leaf of `cache` it touches once for all its rows.
//!
//! A lookup finds a journal row through an in-memory index (the key's first 8 bytes to the
//! row's sequence number), loaded from the journal when a process first needs it and as
//! large as the journal, which merges keep near [`JOURNAL_MAX`] rows (about 1 MB). An entry
//! is a hint checked against the row's whole key; one that is stale (its row merged, or
//! written by a transaction that rolled back) sends the lookup on to `cache`. That is right
//! because:
//! - appends enter the index before their commit: a reader that finds the entry before the
//!   row falls back to the key's row it replaces (the index keeps where that was) or to
//!   `cache`, as it would have before the append;
//! - merges leave the index after their commit, and readers look the index up *before*
//!   opening their read transaction: an entry found points at a row the snapshot holds in
//!   the journal or, merged already, in `cache`; an entry not found was never there or was
//!   merged before the snapshot.
//!
//! The newest row of a key wins: a lookup tries the journal first, an append replaces the
//! key's journal row, and a merge replaces the key's `cache` row. A crash loses nothing: the
//! journal is in the file, the index is rebuilt from it, and a merge is one transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::ReadableTable;

use super::CacheKey;
use crate::store::tables::CACHE_JOURNAL;
use crate::store::Store;
use crate::Result;

/// Journal rows above which a merge runs even while the writer is busy: bounds the index
/// (about 1 MB: what arrives between two checks keeps it under 57k entries, the most a
/// 64k-bucket table holds). Measured on a 1M-line batch, the run as large as the bound:
/// 20k, 50k, 100k and 200k drained in 68.2, 64.7, 63.9 and 65.2 s, peak RSS 64, 64, 67 and
/// 78 MB.
pub const JOURNAL_MAX: u64 = 40_000;

/// Most rows one merge transaction moves.
pub const MERGE_RUN: usize = 50_000;

/// Whether a merge runs with `waiting` journal rows: whenever there are any and the writer
/// has room, and past [`JOURNAL_MAX`] even while it is busy.
pub fn merge_due(waiting: u64, writer_idle: bool) -> bool {
    waiting > 0 && (writer_idle || waiting > JOURNAL_MAX)
}

/// The index of one open file's journal (see the module doc); [`Journal::of`] shares it
/// between every cache over the same store.
#[derive(Debug, Default)]
pub struct Journal {
    /// `None` until loaded.
    index: Mutex<Option<Map>>,
}

/// The index proper, by [`short`] key.
#[derive(Debug, Default)]
struct Map {
    /// The sequence number of each key's newest journal row.
    newest: HashMap<u64, u64>,
    /// For keys whose journal row was replaced by a newer one: the older row, which readers
    /// try when the newer one is not in their snapshot yet (its commit may not have come).
    replaced: HashMap<u64, u64>,
}

/// The index's key for `key`: its first 8 bytes (a SHA-256's, so evenly spread), big-endian
/// so that they sort as the keys do (a merge sorts its run by them). Two keys sharing them
/// (a 2^-64 chance a pair) only cost the older one's journal row a trip to `cache`, where the
/// next merge puts it.
pub(super) fn short(key: &[u8; 32]) -> u64 {
    let mut n = [0u8; 8];
    n.copy_from_slice(&key[..8]);
    u64::from_be_bytes(n)
}

type Index<'a> = MutexGuard<'a, Option<Map>>;

impl Journal {
    /// The journal index of `store`'s file.
    pub fn of(store: &Store) -> Arc<Journal> {
        store.shared(Journal::default)
    }

    fn lock(&self) -> Index<'_> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the index says `keys`' journal rows are, newest first (at most two each),
    /// loading it from `store` if this process has not yet (so: on a thread that may block).
    /// Call it before opening the read transaction that reads the rows.
    pub(super) fn find(&self, store: &Store, keys: &[CacheKey]) -> Result<Vec<[Option<u64>; 2]>> {
        let mut index = self.lock();
        if index.is_none() {
            *index = Some(store.read_blocking(|txn| load(&txn.open_table(CACHE_JOURNAL)?))?);
        }
        let found = index.as_ref().map_or_else(Default::default, |m| {
            keys.iter()
                .map(|k| {
                    let short = short(k.as_bytes());
                    [m.newest.get(&short), m.replaced.get(&short)].map(|s| s.copied())
                })
                .collect()
        });
        Ok(found)
    }

    /// The index, loaded from `journal` (the table as a write transaction sees it) if this
    /// process has not yet: for appends and merges, on the writer thread.
    pub(super) fn loaded<'a>(
        &'a self,
        journal: &impl ReadableTable<u64, (&'static [u8; 32], &'static [u8])>,
    ) -> Result<Loaded<'a>> {
        let mut index = self.lock();
        if index.is_none() {
            *index = Some(load(journal)?);
        }
        Ok(Loaded(index))
    }

    /// Drops the entries of rows a committed merge moved to `cache` (`(short key, seq)`),
    /// unless a newer row of the key took their place.
    pub(super) fn forget(&self, merged: &[(u64, u64)]) {
        if let Some(map) = self.lock().as_mut() {
            for (short, seq) in merged {
                if map.newest.get(short) == Some(seq) {
                    map.newest.remove(short);
                    // The row it replaced was deleted when it was written.
                    map.replaced.remove(short);
                }
            }
            if map.newest.capacity() > 4 * map.newest.len().max(JOURNAL_MAX as usize) {
                map.newest.shrink_to_fit();
            }
            if map.replaced.is_empty() {
                map.replaced.shrink_to_fit();
            }
        }
    }

    /// Entries in the index (tests and `stats`): 0 before it is loaded.
    pub fn indexed(&self) -> usize {
        self.lock().as_ref().map_or(0, |m| m.newest.len())
    }
}

/// The loaded index, locked: appends enter it as they write their rows.
pub(super) struct Loaded<'a>(Index<'a>);

impl Loaded<'_> {
    /// The sequence number of `key`'s journal row, if the index has one.
    pub fn get(&self, key: &[u8; 32]) -> Option<u64> {
        self.0
            .as_ref()
            .and_then(|m| m.newest.get(&short(key)).copied())
    }

    /// Notes that `key`'s newest row is at `seq`, replacing its row at `replaced` (deleted
    /// in the same transaction) if it had one. Without one, an older hint of a replaced row
    /// stays: the write that left it may have rolled back, leaving that row the newest.
    pub fn put(&mut self, key: &[u8; 32], seq: u64, replaced: Option<u64>) {
        if let Some(m) = self.0.as_mut() {
            let short = short(key);
            m.newest.insert(short, seq);
            if let Some(old) = replaced {
                m.replaced.insert(short, old);
            }
        }
    }
}

/// Every journal row's key, newest last, so the newest row of a key wins.
fn load(journal: &impl ReadableTable<u64, (&'static [u8; 32], &'static [u8])>) -> Result<Map> {
    let mut newest = HashMap::with_capacity(usize::try_from(journal.len()?).unwrap_or(0));
    for row in journal.iter()? {
        let (seq, value) = row?;
        newest.insert(short(value.value().0), seq.value());
    }
    Ok(Map {
        newest,
        replaced: HashMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_writer_gets_a_merge_only_past_the_bound() {
        assert!(!merge_due(0, true), "nothing to merge");
        assert!(merge_due(1, true), "idle: merge what waits");
        assert!(!merge_due(JOURNAL_MAX, false), "busy: wait up to the bound");
        assert!(merge_due(JOURNAL_MAX + 1, false), "busy, past the bound");
    }
}
