//! Experiences: past reasoning (question, steps, answer, outcome) kept for later prompts.
//!
//! Each experience lives in [`EXPERIENCES`] and in three index tables (by time, by domain, by
//! tag) plus a per-domain counter and the full-text index ([`crate::memory::index`]); every
//! write here keeps all of them, and the experience's [`Pattern`](super::pattern::Pattern),
//! consistent in the same transaction.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::index::IndexTables;
use super::pattern::{self, PatternTable};
use crate::codec;
use crate::error::{Error, Result, StorageKind};
use crate::store::tables::{
    allocate_ids, EXPERIENCES, EXPERIENCES_BY_DOMAIN, EXPERIENCES_BY_TAG, EXPERIENCES_BY_TIME,
    EXPERIENCE_COUNTS, MEMORY_UNINDEXED, NEXT_EXPERIENCE_ID, PATTERNS,
};
use crate::store::Store;

pub use super::record::{
    Experience, ExperienceCounts, ExperienceData, NewExperience, Order, Outcome, MAX_LABEL_BYTES,
};

/// Every table an experience write touches, opened once per transaction.
struct Tables<'t> {
    /// The full-text index, kept in step with the records (opened on first use: a batch's
    /// completions only mark their experiences for the indexer).
    index: Option<IndexTables<'t>>,
    txn: &'t WriteTransaction,
    records: redb::Table<'t, u64, &'static [u8]>,
    by_time: redb::Table<'t, (u64, u64), ()>,
    by_domain: redb::Table<'t, (&'static str, u64), ()>,
    by_tag: redb::Table<'t, (&'static str, u64), ()>,
    counts: redb::Table<'t, &'static str, u64>,
    patterns: PatternTable<'t>,
    /// Experiences the background indexer has not indexed yet.
    unindexed: redb::Table<'t, u64, ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(Tables {
            index: None,
            txn,
            records: txn.open_table(EXPERIENCES)?,
            by_time: txn.open_table(EXPERIENCES_BY_TIME)?,
            by_domain: txn.open_table(EXPERIENCES_BY_DOMAIN)?,
            by_tag: txn.open_table(EXPERIENCES_BY_TAG)?,
            counts: txn.open_table(EXPERIENCE_COUNTS)?,
            patterns: txn.open_table(PATTERNS)?,
            unindexed: txn.open_table(MEMORY_UNINDEXED)?,
        })
    }

    fn index(&mut self) -> Result<&mut IndexTables<'t>> {
        if self.index.is_none() {
            self.index = Some(IndexTables::open(self.txn)?);
        }
        self.index
            .as_mut()
            .ok_or_else(|| Error::Task("the index tables did not open".into()))
    }

    /// Applies per-domain count changes, one read and write per domain.
    fn add_to_counts(&mut self, deltas: BTreeMap<&str, i64>) -> Result<()> {
        for (domain, delta) in deltas {
            let old = self.counts.get(domain)?.map(|v| v.value()).unwrap_or(0);
            match old.saturating_add_signed(delta) {
                0 => self.counts.remove(domain).map(drop)?,
                n => self.counts.insert(domain, n).map(drop)?,
            }
        }
        Ok(())
    }

    fn insert_all(&mut self, exps: &[Experience], indexing: Indexing) -> Result<()> {
        match indexing {
            Indexing::On => self.index()?.add(exps)?,
            Indexing::Deferred => {
                for exp in exps {
                    self.unindexed.insert(exp.id, ())?;
                }
            }
            Indexing::Off => {}
        }
        let mut deltas = BTreeMap::new();
        for exp in exps {
            let domain = exp.data.domain.as_str();
            self.records
                .insert(exp.id, codec::encode(exp)?.as_slice())?;
            self.by_time.insert((exp.created_at, exp.id), ())?;
            self.by_domain.insert((domain, exp.id), ())?;
            for tag in &exp.data.tags {
                self.by_tag.insert((tag.as_str(), exp.id), ())?;
            }
            *deltas.entry(domain).or_insert(0) += 1;
        }
        self.add_to_counts(deltas)?;
        pattern::observe_in(&mut self.patterns, exps)
    }

    /// Deletes experiences and all their index entries; patterns keep their statistics.
    fn delete(&mut self, ids: &[u64]) -> Result<u64> {
        let mut forgotten: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
        for &id in ids {
            let Some(bytes) = self.records.remove(id)? else {
                continue;
            };
            let exp: Experience = codec::decode(bytes.value())?;
            drop(bytes);
            if self.unindexed.remove(id)?.is_none() {
                self.index()?.remove(std::slice::from_ref(&exp))?;
            }
            self.by_time.remove((exp.created_at, exp.id))?;
            self.by_domain.remove((exp.data.domain.as_str(), exp.id))?;
            for tag in &exp.data.tags {
                self.by_tag.remove((tag.as_str(), exp.id))?;
            }
            forgotten
                .entry((exp.data.domain, exp.data.strategy))
                .or_default()
                .insert(exp.id);
        }
        let mut deltas = BTreeMap::new();
        for ((domain, _), removed) in &forgotten {
            *deltas.entry(domain.as_str()).or_insert(0) -= removed.len() as i64;
        }
        self.add_to_counts(deltas)?;
        pattern::forget_examples_in(&mut self.patterns, &forgotten)?;
        Ok(forgotten.values().map(|ids| ids.len() as u64).sum())
    }
}

/// Records experiences in one transaction, updating indexes and patterns; returns their ids
/// in input order. `now` is the default `created_at` (passed in so a re-run is identical).
/// Nothing is written if any of them is invalid.
pub fn record_many_in(
    txn: &WriteTransaction,
    items: &[NewExperience],
    now: u64,
) -> Result<Vec<u64>> {
    record_with_in(txn, items, now, Indexing::On)
}

/// Whether recording adds full-text postings (see [`crate::memory::index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indexing {
    /// Index the question and answer in this transaction.
    On,
    /// Mark them for the background indexer (a batch's completions: the postings of many
    /// experiences are then written together, off the completion's path). Searches index
    /// what is waiting first ([`crate::memory::index::catch_up`]).
    Deferred,
    /// Skip the index: such experiences are invisible to search. Only for measuring what the
    /// index costs (benches/memory.rs).
    Off,
}

/// [`record_many_in`] with a choice of [`Indexing`].
pub fn record_with_in<E: std::borrow::Borrow<NewExperience>>(
    txn: &WriteTransaction,
    items: &[E],
    now: u64,
    indexing: Indexing,
) -> Result<Vec<u64>> {
    items
        .iter()
        .try_for_each(|item| item.borrow().data.validate())?;
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let first = allocate_ids(txn, NEXT_EXPERIENCE_ID, items.len() as u64)?;
    let exps: Vec<Experience> = (first..)
        .zip(items)
        .map(|(id, item)| item.borrow().to_experience(id, now))
        .collect();
    Tables::open(txn)?.insert_all(&exps, indexing)?;
    Ok(exps.iter().map(|e| e.id).collect())
}

/// Records one experience; see [`record_many_in`].
pub fn record_in(txn: &WriteTransaction, item: &NewExperience, now: u64) -> Result<u64> {
    record_many_in(txn, std::slice::from_ref(item), now)?
        .first()
        .copied()
        .ok_or_else(|| Error::Task("recording produced no id".into()))
}

/// Deletes every experience with `created_at < cutoff_ms`; returns how many.
pub fn delete_older_than_in(txn: &WriteTransaction, cutoff_ms: u64) -> Result<u64> {
    let mut tables = Tables::open(txn)?;
    let ids = index_ids(
        tables.by_time.range(..(cutoff_ms, 0))?,
        usize::MAX,
        Order::OldestFirst,
    )?;
    tables.delete(&ids)
}

/// Deletes the oldest experiences (by `created_at`) until at most `max_count` remain;
/// returns how many were deleted.
pub fn delete_beyond_in(txn: &WriteTransaction, max_count: u64) -> Result<u64> {
    let mut tables = Tables::open(txn)?;
    let excess = tables.records.len()?.saturating_sub(max_count);
    let excess = usize::try_from(excess).unwrap_or(usize::MAX);
    let ids = index_ids(tables.by_time.iter()?, excess, Order::OldestFirst)?;
    tables.delete(&ids)
}

/// Deletes experiences by id (missing ids are skipped); returns how many were deleted.
pub fn delete_in(txn: &WriteTransaction, ids: &[u64]) -> Result<u64> {
    Tables::open(txn)?.delete(ids)
}

/// Takes up to `limit` ids (the last key part) from an index range, in `order`.
fn index_ids<K>(range: redb::Range<'_, K, ()>, limit: usize, order: Order) -> Result<Vec<u64>>
where
    K: redb::Key + 'static,
    for<'a> K::SelfType<'a>: LastId,
{
    let ids = |row: std::result::Result<(redb::AccessGuard<'_, K>, _), redb::StorageError>| {
        row.map(|(k, _)| k.value().last_id()).map_err(Error::from)
    };
    match order {
        Order::OldestFirst => range.take(limit).map(ids).collect(),
        Order::NewestFirst => range.rev().take(limit).map(ids).collect(),
    }
}

/// The experience id at the end of an index key.
trait LastId {
    fn last_id(&self) -> u64;
}

impl LastId for (u64, u64) {
    fn last_id(&self) -> u64 {
        self.1
    }
}

impl LastId for (&str, u64) {
    fn last_id(&self) -> u64 {
        self.1
    }
}

fn load_all(txn: &ReadTransaction, ids: &[u64]) -> Result<Vec<Experience>> {
    let records = txn.open_table(EXPERIENCES)?;
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let bytes = records.get(id)?.ok_or_else(|| Error::Storage {
            context: "reading an experience index",
            message: format!("the index points at missing experience {id}"),
            kind: StorageKind::Corrupted,
        })?;
        out.push(codec::decode(bytes.value())?);
    }
    Ok(out)
}

/// The experience with this id.
pub fn get_read(txn: &ReadTransaction, id: u64) -> Result<Option<Experience>> {
    match txn.open_table(EXPERIENCES)?.get(id)? {
        Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
        None => Ok(None),
    }
}

/// Up to `limit` experiences with `from_ms <= created_at < to_ms`, by time.
pub fn list_by_time_read(
    txn: &ReadTransaction,
    from_ms: u64,
    to_ms: u64,
    limit: usize,
    order: Order,
) -> Result<Vec<Experience>> {
    if from_ms >= to_ms {
        return Ok(Vec::new());
    }
    let index = txn.open_table(EXPERIENCES_BY_TIME)?;
    let ids = index_ids(index.range((from_ms, 0)..(to_ms, 0))?, limit, order)?;
    load_all(txn, &ids)
}

/// Up to `limit` experiences of a domain, in recording (id) order.
pub fn list_by_domain_read(
    txn: &ReadTransaction,
    domain: &str,
    limit: usize,
    order: Order,
) -> Result<Vec<Experience>> {
    list_by_label(txn, EXPERIENCES_BY_DOMAIN, domain, limit, order)
}

/// Up to `limit` experiences carrying a tag, in recording (id) order.
pub fn list_by_tag_read(
    txn: &ReadTransaction,
    tag: &str,
    limit: usize,
    order: Order,
) -> Result<Vec<Experience>> {
    list_by_label(txn, EXPERIENCES_BY_TAG, tag, limit, order)
}

/// Reads a `(label, id)` index: every id filed under one label.
fn list_by_label(
    txn: &ReadTransaction,
    index: redb::TableDefinition<(&str, u64), ()>,
    label: &str,
    limit: usize,
    order: Order,
) -> Result<Vec<Experience>> {
    let index = txn.open_table(index)?;
    let ids = index_ids(index.range((label, 0)..=(label, u64::MAX))?, limit, order)?;
    load_all(txn, &ids)
}

/// How many experiences are stored, in total and per domain (no scan of the records).
pub fn counts_read(txn: &ReadTransaction) -> Result<ExperienceCounts> {
    let total = txn.open_table(EXPERIENCES)?.len()?;
    let mut by_domain = BTreeMap::new();
    for row in txn.open_table(EXPERIENCE_COUNTS)?.iter()? {
        let (domain, n) = row?;
        by_domain.insert(domain.value().to_owned(), n.value());
    }
    Ok(ExperienceCounts { total, by_domain })
}

impl Store {
    /// [`record_in`] as its own (group-committed) write.
    pub async fn record_experience(&self, item: NewExperience) -> Result<u64> {
        let now = crate::clock::now_ms();
        self.write(move |txn| record_in(txn, &item, now)).await
    }

    /// [`record_many_in`] as one write.
    pub async fn record_experiences(&self, items: Vec<NewExperience>) -> Result<Vec<u64>> {
        let now = crate::clock::now_ms();
        self.write(move |txn| record_many_in(txn, &items, now))
            .await
    }

    /// [`get_read`] off the async runtime.
    pub async fn experience(&self, id: u64) -> Result<Option<Experience>> {
        self.read(move |txn| get_read(txn, id)).await
    }

    /// [`list_by_time_read`] off the async runtime.
    pub async fn experiences_by_time(
        &self,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Experience>> {
        self.read(move |txn| list_by_time_read(txn, from_ms, to_ms, limit, order))
            .await
    }

    /// [`list_by_domain_read`] off the async runtime.
    pub async fn experiences_by_domain(
        &self,
        domain: &str,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Experience>> {
        let domain = domain.to_owned();
        self.read(move |txn| list_by_domain_read(txn, &domain, limit, order))
            .await
    }

    /// [`list_by_tag_read`] off the async runtime.
    pub async fn experiences_by_tag(
        &self,
        tag: &str,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Experience>> {
        let tag = tag.to_owned();
        self.read(move |txn| list_by_tag_read(txn, &tag, limit, order))
            .await
    }

    /// [`counts_read`] off the async runtime.
    pub async fn experience_counts(&self) -> Result<ExperienceCounts> {
        self.read(counts_read).await
    }

    /// [`delete_older_than_in`] as its own write.
    pub async fn delete_experiences_older_than(&self, cutoff_ms: u64) -> Result<u64> {
        self.write(move |txn| delete_older_than_in(txn, cutoff_ms))
            .await
    }

    /// [`delete_beyond_in`] as its own write.
    pub async fn delete_experiences_beyond(&self, max_count: u64) -> Result<u64> {
        self.write(move |txn| delete_beyond_in(txn, max_count))
            .await
    }
}
