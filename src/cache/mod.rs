//! The two-tier prompt cache: memory (quick_cache, S3-FIFO, weighted by bytes) in front of
//! the store, with a TTL, per-request policy and single flight. See `docs/cache.md`.
//!
//! Only successful responses are cached. Identical concurrent requests share one upstream
//! call: the first takes quick_cache's placeholder guard and fetches, the others wait for
//! its value; if that fetch fails, its guard drops and the next waiter fetches instead, so
//! nobody receives an error they did not cause.

mod disk;
mod journal;
mod key;
mod policy;
mod response;
mod stats;

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

pub use disk::{
    get_blocking, get_many_blocking, journal_len_read, len_read, merge_in, prune_in, put_in,
    put_many_in,
};
pub use journal::{Journal, JOURNAL_MAX, MERGE_RUN};
pub use key::{CacheKey, IGNORED_FIELDS};
pub use policy::{cacheable, CachePolicy};
pub use response::CachedResponse;
pub use stats::{CacheStats, Hit};

use crate::store::Store;
use crate::{Error, Result};
use stats::Counters;

/// Most expired tier-2 rows one prune transaction removes, so it never holds the writer long.
const PRUNE_BATCH: usize = 10_000;

/// A typical cached response, to size quick_cache's tables from the byte capacity.
const TYPICAL_ENTRY_BYTES: u64 = 4096;

/// How the cache is sized and how long entries live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Memory tier capacity in bytes (default 16 MiB: the disk tier serves re-runs, so the
    /// memory tier only spares a disk read for repeats within a run; a small one keeps a
    /// million-line batch's memory flat).
    pub memory_bytes: u64,
    /// How long an answer is served. Default 30 days: a batch tool re-runs the same inputs
    /// over days or weeks, and a deterministic request's answer does not go stale quickly;
    /// lower it for models that change under the same name.
    pub ttl: Duration,
    /// Whether [`Cache::get_or_fetch`] writes fresh answers to the store (tier 2) before
    /// returning. When false, tier 2 is still read; callers then write it themselves with
    /// [`put_in`], e.g. in the transaction that completes the job.
    pub persist: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 16 * 1024 * 1024,
            ttl: Duration::from_secs(30 * 24 * 3600),
            persist: true,
        }
    }
}

/// The source of "now" in ms since the epoch; tests swap in a manual clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

type Memory =
    quick_cache::sync::Cache<CacheKey, CachedResponse, ByBytes, DefaultHashBuilder, CountEvictions>;

/// The prompt cache. Share it behind an `Arc`.
pub struct Cache {
    memory: Memory,
    store: Option<Store>,
    /// The store's journal index (one per open file, shared by every cache over it).
    journal: Option<Arc<Journal>>,
    config: CacheConfig,
    clock: Clock,
    counters: Counters,
    /// Tier-2 lookups waiting for the reader (see [`Cache::disk_lookup`]).
    pending: Arc<std::sync::Mutex<PendingReads>>,
}

/// Tier-2 lookups of concurrent misses, and whether a reader is on its way for them.
#[derive(Default)]
struct PendingReads {
    queue: Vec<(
        CacheKey,
        tokio::sync::oneshot::Sender<Option<CachedResponse>>,
    )>,
    reading: bool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache in memory, backed by `store` when given.
    pub fn new(store: Option<Store>, config: CacheConfig) -> Cache {
        Cache::with_clock(store, config, Arc::new(crate::clock::now_ms))
    }

    /// The store behind the disk tier, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The journal index of the store behind the disk tier, for callers that write rows
    /// themselves with [`put_in`]; `None` without a store.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// [`Cache::new`] with a custom clock (tests).
    pub fn with_clock(store: Option<Store>, config: CacheConfig, clock: Clock) -> Cache {
        let counters = Counters::default();
        let estimated_items = usize::try_from(config.memory_bytes / TYPICAL_ENTRY_BYTES)
            .unwrap_or(usize::MAX)
            .max(1);
        let memory = Memory::with(
            estimated_items,
            config.memory_bytes,
            ByBytes,
            DefaultHashBuilder::default(),
            CountEvictions(counters.evictions.clone()),
        );
        Cache {
            memory,
            journal: store.as_ref().map(Journal::of),
            store,
            config,
            clock,
            counters,
            pending: Arc::default(),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The answer for `key`: from memory, else from the store, else from `fetch` (once for
    /// all concurrent callers with the same key). A successful fetched response is stamped
    /// with the TTL, put in memory and, when [`CacheConfig::persist`] is set, committed to the
    /// store before this returns.
    ///
    /// With `policy_allows == false` (see [`cacheable`]) the cache is neither read nor
    /// written: `fetch` runs and its result is returned as [`Hit::Bypass`].
    ///
    /// A failed fetch returns its error to this caller only. A failed tier-2 read is logged
    /// and treated as a miss; a failed tier-2 write is returned as an error (the response is
    /// still in memory, so a retry does not pay again).
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        key: CacheKey,
        policy_allows: bool,
        fetch: F,
    ) -> Result<(CachedResponse, Hit), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedResponse, E>>,
        E: From<Error>,
    {
        if !policy_allows {
            Counters::bump(&self.counters.bypasses);
            return fetch().await.map(|r| (r, Hit::Bypass));
        }
        let guard = loop {
            match self.memory.get_value_or_guard_async(&key).await {
                Ok(found) => {
                    let now = self.now();
                    if !found.is_expired(now) {
                        Counters::bump(&self.counters.hits_memory);
                        return Ok((found, Hit::Memory));
                    }
                    if self.memory.remove_if(&key, |v| v.is_expired(now)).is_some() {
                        Counters::bump(&self.counters.expired);
                    }
                }
                Err(guard) => break guard,
            }
        };
        if let Some(found) = self.disk_lookup(key).await {
            Counters::bump(&self.counters.hits_disk);
            let _ = guard.insert(found.clone());
            return Ok((found, Hit::Disk));
        }
        Counters::bump(&self.counters.misses);
        let response = fetch().await?.stamped(self.now(), self.config.ttl);
        if !response.is_success() {
            // Not cached; dropping the guard lets the next waiter fetch for itself.
            return Ok((response, Hit::Miss));
        }
        // Waiters get the answer now; this caller also waits for the store commit.
        let _ = guard.insert(response.clone());
        Counters::bump(&self.counters.inserts);
        self.persist(key, &response).await?;
        Ok((response, Hit::Miss))
    }

    /// The answer for `key` from memory or the store, if either has a fresh one; nothing is
    /// fetched (a provider batch sends only the misses, later). Counts a hit, not a miss.
    pub async fn lookup(&self, key: CacheKey) -> Option<(CachedResponse, Hit)> {
        let now = self.now();
        if let Some(found) = self.memory.get(&key).filter(|v| !v.is_expired(now)) {
            Counters::bump(&self.counters.hits_memory);
            return Some((found, Hit::Memory));
        }
        let found = self.disk_lookup(key).await?;
        Counters::bump(&self.counters.hits_disk);
        self.memory.insert(key, found.clone());
        Some((found, Hit::Disk))
    }

    /// Tier-2 answers for `keys` (`None`: absent or expired), from one read transaction on
    /// the calling thread, which must not be the async runtime's; hits are counted, misses
    /// not (their lines look again when they run). For answers known before a line runs
    /// (`chat::prefill`); the memory tier is left alone, so a million-line replay does not
    /// churn it.
    pub fn disk_answers_blocking(&self, keys: &[CacheKey]) -> Result<Vec<Option<CachedResponse>>> {
        let Some(store) = &self.store else {
            return Ok(keys.iter().map(|_| None).collect());
        };
        let found = get_many_blocking(store, keys, self.now())?
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        self.counters.hits_disk.fetch_add(hits, Relaxed);
        Ok(found)
    }

    /// Looks `key` up in tier 2. Concurrent misses are gathered: one reader on the blocking
    /// pool takes every lookup waiting and answers them from one read transaction, so a burst
    /// of misses costs one hop to the pool instead of one each. A lookup that fails is a miss
    /// (the request is fetched instead).
    async fn disk_lookup(&self, key: CacheKey) -> Option<CachedResponse> {
        let store = self.store.as_ref()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.queue.push((key, tx));
            !std::mem::replace(&mut pending.reading, true)
        };
        if start {
            let (store, pending, clock) = (store.clone(), self.pending.clone(), self.clock.clone());
            tokio::task::spawn_blocking(move || read_pending(&store, &pending, &clock));
        }
        rx.await.unwrap_or(None)
    }

    async fn persist(&self, key: CacheKey, response: &CachedResponse) -> Result<()> {
        match (&self.store, &self.journal) {
            (Some(store), Some(journal)) if self.config.persist => {
                let (response, journal) = (response.clone(), journal.clone());
                store
                    .write(move |txn| put_in(txn, &journal, &key, &response))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Merges one run of the journal into the hashed table if one is due: always while it
    /// holds more than [`JOURNAL_MAX`] rows, and whenever it holds any if `writer_idle`
    /// (background upkeep decides that, as for the retrieval indexer). Returns the rows
    /// merged.
    pub async fn merge_step(&self, writer_idle: bool) -> Result<usize> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let waiting = store.read(journal_len_read).await?;
        if !journal::merge_due(waiting, writer_idle) {
            return Ok(0);
        }
        let merged = self.merge_run().await?;
        tracing::debug!(merged, waiting, "prompt cache journal merged");
        Ok(merged)
    }

    /// Merges the whole journal into the hashed table, run by run; returns the rows merged.
    pub async fn merge_all(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let merged = self.merge_run().await?;
            total += merged;
            if merged < MERGE_RUN {
                return Ok(total);
            }
        }
    }

    /// One merge transaction of at most [`MERGE_RUN`] rows; the index forgets them once it
    /// has committed.
    async fn merge_run(&self) -> Result<usize> {
        let (Some(store), Some(journal)) = (&self.store, &self.journal) else {
            return Ok(0);
        };
        let merged = store.write(|txn| merge_in(txn, MERGE_RUN)).await?;
        journal.forget(&merged);
        Ok(merged.len())
    }

    /// Puts a response (stamped, see [`CachedResponse::stamped`]) into memory only: for
    /// callers that wrote it to the store themselves with [`put_in`].
    pub fn remember(&self, key: CacheKey, response: CachedResponse) {
        if response.is_success() && !response.is_expired(self.now()) {
            self.memory.insert(key, response);
            Counters::bump(&self.counters.inserts);
        }
    }

    /// A fresh answer to `key` is on disk now (its caller committed the row): it leaves the
    /// memory tier, which held it for the concurrent askers of single flight. A batch of
    /// distinct prompts would otherwise fill the memory tier with answers nobody asks for
    /// again; a repeat finds the row on disk and brings it back to memory (a disk hit is
    /// remembered), so what the memory tier holds is what was asked for twice.
    pub fn settle(&self, key: CacheKey) {
        self.memory.remove(&key);
    }

    /// Drops expired entries from memory and returns how many; for a periodic task.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        let removed = Cell::new(0usize);
        self.memory.retain(|_, v| {
            let keep = !v.is_expired(now);
            if !keep {
                removed.set(removed.get() + 1);
            }
            keep
        });
        let removed = removed.get();
        self.counters.expired.fetch_add(removed as u64, Relaxed);
        removed
    }

    /// Deletes the store's entries expired at `now` (ms), in batches, through the expiry
    /// index; returns how many. No-op without a store.
    pub async fn prune_expired(&self, now: u64) -> Result<usize> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        // Every row in the hashed table first (prune_in would merge them too, but without
        // dropping their index entries).
        self.merge_all().await?;
        let mut total = 0;
        loop {
            let n = store
                .write(move |txn| prune_in(txn, now, PRUNE_BATCH))
                .await?;
            total += n;
            if n < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Sets the memory tier's capacity in bytes, evicting down to it at once: a memory
    /// watchdog shrinks it under pressure and restores [`CacheConfig::memory_bytes`] later.
    pub fn set_memory_capacity(&self, bytes: u64) {
        self.memory.set_capacity(bytes);
    }

    /// Empties the memory tier (the store keeps its entries).
    pub fn clear_memory(&self) {
        self.memory.clear();
    }

    /// The counters and gauges.
    pub fn stats(&self) -> CacheStats {
        self.counters.snapshot(
            self.memory.weight(),
            self.memory.capacity(),
            self.memory.len() as u64,
        )
    }
}

/// The reader of [`Cache::disk_lookup`]: answers waiting lookups, batch by batch, until none
/// is left.
fn read_pending(store: &Store, pending: &std::sync::Mutex<PendingReads>, clock: &Clock) {
    // A reader that panics must not leave `reading` set: later lookups would wait for it
    // forever. Its waiting lookups become misses (their senders drop).
    struct Unwinding<'a>(&'a std::sync::Mutex<PendingReads>);
    impl Drop for Unwinding<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
                p.queue.clear();
                p.reading = false;
            }
        }
    }
    let _unwinding = Unwinding(pending);
    loop {
        let batch = {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.queue.is_empty() {
                // Under the same lock as the check: a lookup queued after it starts a reader.
                p.reading = false;
                return;
            }
            std::mem::take(&mut p.queue)
        };
        let keys: Vec<CacheKey> = batch.iter().map(|(key, _)| *key).collect();
        let found = get_many_blocking(store, &keys, clock());
        match found {
            Ok(found) => {
                for ((key, reply), row) in batch.into_iter().zip(found) {
                    let row = row.unwrap_or_else(|error| {
                        tracing::warn!(%key, %error, "prompt cache: tier-2 read failed, fetching instead");
                        None
                    });
                    let _ = reply.send(row);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "prompt cache: tier-2 read failed, fetching instead");
                // The senders drop: each lookup is a miss.
            }
        }
    }
}

/// Weighs memory entries by their bytes.
#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl Weighter<CacheKey, CachedResponse> for ByBytes {
    fn weight(&self, _key: &CacheKey, value: &CachedResponse) -> u64 {
        value.weight()
    }
}

/// Counts evictions (quick_cache reports them through its lifecycle hook).
#[derive(Debug, Clone)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<CacheKey, CachedResponse> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: CacheKey, _value: CachedResponse) {
        self.0.fetch_add(1, Relaxed);
    }
}
