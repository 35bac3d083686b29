//! The inverted index of experience text (question and answer) in redb.
//!
//! Postings are keyed `(domain, term, id)` so a domain's candidates are one range scan, and
//! carry what scoring needs (term frequency, document length, outcome, time) so a search reads
//! no experience record.
//!
//! Recording an experience on a batch's completion path only marks it unindexed
//! (`MEMORY_UNINDEXED`, one small write in the completion's commit); the indexer
//! ([`index_pending_in`], run in the background and before every search) builds the postings
//! of many experiences at once, in the transaction that clears their marks, so each is
//! indexed exactly once whatever stops the process. The background steps wait while the
//! writer is busy with foreground work ([`Pacer`]). Other writers index at once. Deleting an
//! experience removes its postings or its mark in the same transaction.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::Serialize;

use super::record::{Experience, Outcome};
use crate::codec;
use crate::error::Result;
use crate::store::tables::{
    Posting, PostingKey, EXPERIENCES, MEMORY_DOCS, MEMORY_POSTINGS, MEMORY_STATS, MEMORY_TERMS,
    MEMORY_TOTAL_LEN, MEMORY_UNINDEXED,
};
use crate::store::Store;

/// Experiences one indexer transaction takes: large enough that postings of one term land
/// together, small enough not to hold the writer long.
pub const INDEX_BATCH: usize = 5_000;

/// Indexes up to `max` experiences waiting for the index, oldest first, and clears their
/// marks in the same transaction; returns how many.
pub fn index_pending_in(txn: &WriteTransaction, max: usize) -> Result<usize> {
    let mut pending = txn.open_table(MEMORY_UNINDEXED)?;
    let ids = pending
        .iter()?
        .take(max)
        .map(|row| row.map(|(k, _)| k.value()))
        .collect::<Result<Vec<u64>, _>>()?;
    if ids.is_empty() {
        return Ok(0);
    }
    let records = txn.open_table(EXPERIENCES)?;
    let mut exps = Vec::with_capacity(ids.len());
    for &id in &ids {
        pending.remove(id)?;
        // Deleted since: nothing to index.
        if let Some(bytes) = records.get(id)? {
            exps.push(codec::decode::<Experience>(bytes.value())?);
        }
    }
    drop((pending, records));
    IndexTables::open(txn)?.add(&exps)?;
    Ok(ids.len())
}

/// Experiences waiting for the index.
pub fn pending_read(txn: &ReadTransaction) -> Result<u64> {
    Ok(txn.open_table(MEMORY_UNINDEXED)?.len()?)
}

/// Indexes every experience waiting for the index, in batches: searches call it first, so
/// they see every recorded experience, as if it had been indexed when recorded.
pub async fn catch_up(store: &Store) -> Result<usize> {
    let mut total = 0;
    let mut pending = store.read(pending_read).await?;
    if pending > INDEX_BATCH as u64 {
        tracing::info!(
            pending,
            "indexing the experiences recorded since the last search"
        );
    }
    while pending > 0 {
        total += store
            .write(|txn| index_pending_in(txn, INDEX_BATCH))
            .await?;
        pending = store.read(pending_read).await?;
    }
    Ok(total)
}

/// The background indexer steps aside while the writer spent more than this share of the
/// time since its last step in transactions: the index is on no job's path, and the writer
/// sets a drain's pace (docs/benchmarks.md).
pub const BUSY_SHARE: f64 = 0.5;

/// ... unless more than this many experiences wait: a search indexes what waits first, and
/// this bounds that wait (about 8 s at the 62k experiences a second the indexer does alone).
pub const MAX_DEBT: u64 = 500_000;

/// Whether the background indexer leaves `pending` experiences for later when the writer
/// was busy `busy_share` of the time since its last step.
pub fn steps_aside(pending: u64, busy_share: f64) -> bool {
    busy_share > BUSY_SHARE && pending <= MAX_DEBT
}

/// The background indexer's pace: one batch (at most [`INDEX_BATCH`]) a step, taken only
/// when the writer has room for it ([`steps_aside`]).
pub struct Pacer {
    busy: crate::store::BusyMeter,
}

impl Pacer {
    /// A pacer that measures the writer from now.
    pub fn new(store: &Store) -> Pacer {
        Pacer {
            busy: crate::store::BusyMeter::new(store),
        }
    }

    /// One step: indexes one batch of the experiences waiting, unless the writer is busy
    /// with other work and the debt is still small. Returns how many it indexed.
    pub async fn step(&self, store: &Store) -> Result<usize> {
        let share = self.busy.share(store);
        let pending = store.read(pending_read).await?;
        let indexed = if pending == 0 || steps_aside(pending, share) {
            tracing::trace!(pending, share, "indexer steps aside");
            0
        } else {
            store
                .write(|txn| index_pending_in(txn, INDEX_BATCH))
                .await?
        };
        self.busy.reset(store);
        Ok(indexed)
    }
}

/// Terms longer than this (bytes) are not indexed: they are noise (hashes, base64) and keys.
pub const MAX_TERM_BYTES: usize = 64;

/// Common English words that carry no meaning for retrieval.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "has", "have",
    "how", "i", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was",
    "what", "when", "where", "which", "who", "why", "will", "with", "you", "your",
];

/// Lower-cased alphanumeric runs, stopwords and over-long runs dropped, in text order.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty() && t.len() <= MAX_TERM_BYTES)
        .map(str::to_lowercase)
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
        .collect()
}

/// Term frequencies of a document, and its length in terms.
fn term_counts(exp: &Experience) -> (BTreeMap<String, u32>, u32) {
    let mut counts = BTreeMap::new();
    let mut len = 0u32;
    for text in [&exp.data.question, &exp.data.answer] {
        for term in tokenize(text) {
            *counts.entry(term).or_insert(0) += 1;
            len = len.saturating_add(1);
        }
    }
    (counts, len)
}

/// The outcome as stored in a posting.
pub(crate) fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Unknown => 0,
        Outcome::Success => 1,
        Outcome::Failure => 2,
    }
}

/// The index tables of a write transaction, opened once.
pub struct IndexTables<'t> {
    postings: redb::Table<'t, PostingKey, Posting>,
    terms: redb::Table<'t, &'static str, u64>,
    stats: redb::Table<'t, &'static str, u64>,
}

impl<'t> IndexTables<'t> {
    /// Opens the index tables.
    pub fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(IndexTables {
            postings: txn.open_table(MEMORY_POSTINGS)?,
            terms: txn.open_table(MEMORY_TERMS)?,
            stats: txn.open_table(MEMORY_STATS)?,
        })
    }

    /// Indexes experiences; document frequencies are updated once per distinct term.
    pub fn add(&mut self, exps: &[Experience]) -> Result<()> {
        let mut df: BTreeMap<String, i64> = BTreeMap::new();
        let mut total_len = 0i64;
        for exp in exps {
            let (counts, len) = term_counts(exp);
            let code = outcome_code(exp.data.outcome);
            for (term, tf) in counts {
                self.postings.insert(
                    (exp.data.domain.as_str(), term.as_str(), exp.id),
                    (tf, len, code, exp.created_at),
                )?;
                *df.entry(term).or_insert(0) += 1;
            }
            total_len += i64::from(len);
        }
        self.apply(df, exps.len() as i64, total_len)
    }

    /// Removes an experience's postings (it must be the record as it was indexed).
    pub fn remove(&mut self, exps: &[Experience]) -> Result<()> {
        let mut df: BTreeMap<String, i64> = BTreeMap::new();
        let (mut docs, mut total_len) = (0i64, 0i64);
        for exp in exps {
            let (counts, len) = term_counts(exp);
            let mut found = false;
            for term in counts.into_keys() {
                let key = (exp.data.domain.as_str(), term.as_str(), exp.id);
                if self.postings.remove(key)?.is_some() {
                    found = true;
                    *df.entry(term).or_insert(0) -= 1;
                }
            }
            // Experiences recorded before the index existed have no postings to count.
            if found {
                docs += 1;
                total_len += i64::from(len);
            }
        }
        self.apply(df, -docs, -total_len)
    }

    fn apply(&mut self, df: BTreeMap<String, i64>, docs: i64, total_len: i64) -> Result<()> {
        for (term, delta) in df {
            let old = self.terms.get(term.as_str())?.map_or(0, |v| v.value());
            match old.saturating_add_signed(delta) {
                0 => self.terms.remove(term.as_str()).map(drop)?,
                n => self.terms.insert(term.as_str(), n).map(drop)?,
            }
        }
        for (key, delta) in [(MEMORY_DOCS, docs), (MEMORY_TOTAL_LEN, total_len)] {
            if delta != 0 {
                let old = self.stats.get(key)?.map_or(0, |v| v.value());
                self.stats.insert(key, old.saturating_add_signed(delta))?;
            }
        }
        Ok(())
    }
}

/// Size figures of the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IndexStats {
    /// Indexed experiences.
    pub docs: u64,
    /// Sum of their lengths in terms.
    pub total_len: u64,
    /// Distinct terms.
    pub terms: u64,
    /// (domain, term, experience) entries.
    pub postings: u64,
    /// Bytes of the index tables' B-trees: entries, page metadata and unused page space.
    pub bytes: u64,
}

/// Reads the index totals.
pub fn stats_read(txn: &ReadTransaction) -> Result<IndexStats> {
    let stats = txn.open_table(MEMORY_STATS)?;
    let get = |k: &str| -> Result<u64> { Ok(stats.get(k)?.map_or(0, |v| v.value())) };
    let terms = txn.open_table(MEMORY_TERMS)?;
    let postings = txn.open_table(MEMORY_POSTINGS)?;
    let mut bytes = 0;
    for s in [stats.stats()?, terms.stats()?, postings.stats()?] {
        bytes += s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
    }
    Ok(IndexStats {
        docs: get(MEMORY_DOCS)?,
        total_len: get(MEMORY_TOTAL_LEN)?,
        terms: terms.len()?,
        postings: postings.len()?,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_lowercases_splits_and_drops_stopwords() {
        assert_eq!(
            tokenize("What is the SUM of 17 and 25? Über-fast!"),
            ["sum", "17", "25", "über", "fast"]
        );
        assert!(tokenize(&"x".repeat(MAX_TERM_BYTES + 1)).is_empty());
    }
}
