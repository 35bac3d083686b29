//! A durable record of each batch run's figures, so `reasonq stats` can report cache hit
//! ratio, connection reuse, latency percentiles, retries and tokens after the process is gone.

use std::fmt;

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::cache::CacheStats;
use crate::codec;
use crate::error::Result;
use crate::llm::MetricsSnapshot;
use crate::runner::RunCounts;
use crate::store::{tables, Store};

/// The figures of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub batch: String,
    pub started_at: u64,
    pub finished_at: u64,
    /// The workers' counters at the end of the run.
    pub counts: RunCounts,
    pub requests_sent: u64,
    pub connections_opened: u64,
    pub http_retries: u64,
    pub latency_p50_us: u64,
    pub latency_p95_us: u64,
    pub latency_p99_us: u64,
    pub cache_hits_memory: u64,
    pub cache_hits_disk: u64,
    pub cache_misses: u64,
}

impl crate::codec::Record for RunRecord {}

impl RunRecord {
    /// Collects a run's figures.
    pub fn new(
        batch: &str,
        started_at: u64,
        finished_at: u64,
        counts: RunCounts,
        http: &MetricsSnapshot,
        cache: &CacheStats,
    ) -> RunRecord {
        RunRecord {
            batch: batch.to_string(),
            started_at,
            finished_at,
            counts,
            requests_sent: http.requests_sent,
            connections_opened: http.connections_opened,
            http_retries: http.retries,
            latency_p50_us: http.latency_p50_us,
            latency_p95_us: http.latency_p95_us,
            latency_p99_us: http.latency_p99_us,
            cache_hits_memory: cache.hits_memory,
            cache_hits_disk: cache.hits_disk,
            cache_misses: cache.misses,
        }
    }
}

/// Stores a run record (keyed by its start time and a counter, so none overwrites another).
pub fn record_in(txn: &WriteTransaction, run: &RunRecord) -> Result<()> {
    let id = tables::allocate_ids(txn, tables::NEXT_RUN_ID, 1)?;
    txn.open_table(tables::RUNS)?
        .insert(id, codec::encode(run)?.as_slice())?;
    Ok(())
}

/// [`record_in`] through the writer.
pub async fn record(store: &Store, run: RunRecord) -> Result<()> {
    store.write(move |txn| record_in(txn, &run)).await
}

/// What `reasonq stats` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub runs: u64,
    pub totals: RunRecord,
    pub cache_hit_ratio: Option<f64>,
    pub connection_reuse_ratio: Option<f64>,
    pub last_run: Option<RunRecord>,
    pub experiences: u64,
    /// Experiences not yet in the retrieval index (the next search or idle moment indexes
    /// them; the background indexer steps aside while the writer is busy).
    pub unindexed: u64,
    pub cached_responses_on_disk: u64,
}

/// Every recorded run, oldest first (a few rows per batch: one per run).
pub fn runs_read(txn: &redb::ReadTransaction) -> Result<Vec<RunRecord>> {
    let table = txn.open_table(tables::RUNS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, bytes) = row?;
        out.push(codec::decode(bytes.value())?);
    }
    Ok(out)
}

/// Sums every recorded run.
pub async fn summary(store: &Store) -> Result<Summary> {
    let runs: Vec<RunRecord> = store.read(runs_read).await?;
    let mut totals = RunRecord {
        batch: "all".into(),
        ..RunRecord::default()
    };
    for r in &runs {
        totals.counts.add(&r.counts);
        totals.requests_sent += r.requests_sent;
        totals.connections_opened += r.connections_opened;
        totals.http_retries += r.http_retries;
        totals.cache_hits_memory += r.cache_hits_memory;
        totals.cache_hits_disk += r.cache_hits_disk;
        totals.cache_misses += r.cache_misses;
        totals.started_at = if totals.started_at == 0 {
            r.started_at
        } else {
            totals.started_at.min(r.started_at)
        };
        totals.finished_at = totals.finished_at.max(r.finished_at);
    }
    let lookups = totals.cache_hits_memory + totals.cache_hits_disk + totals.cache_misses;
    let experiences = store.experience_counts().await?.total;
    let (cached_responses_on_disk, unindexed) = store
        .read(|txn| {
            Ok((
                crate::cache::len_read(txn)?,
                crate::memory::index::pending_read(txn)?,
            ))
        })
        .await?;
    Ok(Summary {
        runs: runs.len() as u64,
        cache_hit_ratio: (lookups > 0)
            .then(|| (totals.cache_hits_memory + totals.cache_hits_disk) as f64 / lookups as f64),
        connection_reuse_ratio: (totals.requests_sent > 0).then(|| {
            1.0 - totals.connections_opened.min(totals.requests_sent) as f64
                / totals.requests_sent as f64
        }),
        last_run: runs.last().cloned(),
        totals,
        experiences,
        unindexed,
        cached_responses_on_disk,
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct =
            |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0));
        let t = &self.totals;
        writeln!(f, "runs recorded:        {}", self.runs)?;
        writeln!(
            f,
            "jobs completed:       {} ({} from cache), {} failed, {} retried",
            t.counts.completed, t.counts.cached, t.counts.failed, t.counts.retried
        )?;
        writeln!(
            f,
            "tokens:               {} prompt, {} completion",
            t.counts.prompt_tokens, t.counts.completion_tokens
        )?;
        writeln!(
            f,
            "cache hit ratio:      {} ({} memory, {} disk, {} misses; {} responses on disk)",
            pct(self.cache_hit_ratio),
            t.cache_hits_memory,
            t.cache_hits_disk,
            t.cache_misses,
            self.cached_responses_on_disk
        )?;
        writeln!(
            f,
            "HTTP:                 {} requests, {} connections, reuse {}, {} retries",
            t.requests_sent,
            t.connections_opened,
            pct(self.connection_reuse_ratio),
            t.http_retries
        )?;
        if let Some(last) = &self.last_run {
            writeln!(
                f,
                "last run latency:     p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms ({})",
                last.latency_p50_us as f64 / 1000.0,
                last.latency_p95_us as f64 / 1000.0,
                last.latency_p99_us as f64 / 1000.0,
                last.batch
            )?;
        }
        write!(f, "experiences stored:   {}", self.experiences)?;
        if self.unindexed > 0 {
            write!(
                f,
                " ({} not in the retrieval index yet: the next search or idle moment adds them)",
                self.unindexed
            )?;
        }
        Ok(())
    }
}
