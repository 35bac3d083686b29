//! Background upkeep, all in one place so it is started, cancelled and joined together
//! before the database closes: the lease rescuer, retention cleanup of old experiences,
//! finished jobs and expired cache entries, and a memory watchdog that shrinks the in-memory
//! cache when the process grows past its RSS limit. [`App`](super::App) owns it from open to
//! close; dropping it stops every task (as mini-redis's `DbDropGuard` stops its purge task).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::Cache;
use crate::clock::now_ms;
use crate::config::Config;
use crate::error::Result;
use crate::queue::Queue;
use crate::store::Store;

/// How often the indexer looks for experiences to index (and whether the writer has room
/// for it): often enough that an idle moment is used, seldom enough that each pass takes
/// thousands at once.
const INDEX_EVERY: Duration = Duration::from_millis(500);

/// What one cleanup pass removed.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CleanupReport {
    pub jobs_pruned: usize,
    pub experiences_deleted: u64,
    pub cache_entries_expired: usize,
    pub leases_rescued: usize,
    /// Blackboard sessions whose job was pruned.
    pub boards_pruned: usize,
}

/// Retention limits for experiences.
#[derive(Debug, Clone, Copy)]
pub struct ExperienceRetention {
    /// Delete experiences older than this (None = keep).
    pub max_age: Option<Duration>,
    /// Keep at most this many (None = no limit).
    pub max_count: Option<u64>,
}

/// Runs one cleanup pass: rescue expired leases, prune finished jobs (and their blackboard
/// sessions), apply experience
/// retention and drop expired cache entries. `reasonq cleanup` and the background task both
/// call this.
pub async fn cleanup_pass(
    queue: &Queue,
    cache: &Arc<Cache>,
    store: &Store,
    experiences: ExperienceRetention,
) -> Result<CleanupReport> {
    let leases_rescued = queue.rescue_expired().await?;
    let jobs_pruned = queue.prune().await?;
    let boards_pruned = store
        .write(crate::chat::blackboard::board::prune_orphans_in)
        .await?;
    let mut experiences_deleted = 0;
    if let Some(age) = experiences.max_age {
        let cutoff = now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        experiences_deleted += store.delete_experiences_older_than(cutoff).await?;
    }
    if let Some(max) = experiences.max_count {
        experiences_deleted += store.delete_experiences_beyond(max).await?;
    }
    let cache_entries_expired = cache.prune_expired(now_ms()).await?;
    cache.sweep();
    Ok(CleanupReport {
        jobs_pruned,
        experiences_deleted,
        cache_entries_expired,
        leases_rescued,
        boards_pruned,
    })
}

impl ExperienceRetention {
    /// The retention `config` sets.
    pub fn of(config: &Config) -> ExperienceRetention {
        let r = &config.retention;
        ExperienceRetention {
            max_age: (r.experiences_days > 0)
                .then(|| Duration::from_secs(r.experiences_days * 86_400)),
            max_count: (r.max_experiences > 0).then_some(r.max_experiences),
        }
    }
}

/// The running background tasks. [`Upkeep::stop`] cancels and joins them all; dropping it
/// cancels them.
pub struct Upkeep {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.tasks.abort_all();
    }
}

impl Upkeep {
    /// Starts the upkeep tasks over the open parts, as `config` says.
    pub fn start(config: &Config, queue: &Queue, cache: &Arc<Cache>, store: &Store) -> Upkeep {
        let (stop, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        // Twice a lease, at most once a second.
        let rescue_every =
            (Duration::from_secs(config.queue.lease_s) / 2).max(Duration::from_secs(1));
        let rescuer = queue.clone();
        every(&mut tasks, &stop, rescue_every, move || {
            let queue = rescuer.clone();
            async move {
                if let Ok(n @ 1..) = queue.rescue_expired().await {
                    tracing::info!(rescued = n, "expired leases returned to the queue");
                }
            }
        });
        // The retrieval index, off the completions' path (see memory::index): one batch a
        // tick, and none while the writer is busy with foreground work (a drain, an
        // enqueue) until the debt grows large; searches catch up on the rest first.
        let indexer = store.clone();
        let pacer = Arc::new(crate::memory::index::Pacer::new(store));
        every(&mut tasks, &stop, INDEX_EVERY, move || {
            let (store, pacer) = (indexer.clone(), pacer.clone());
            async move {
                if let Err(e) = pacer.step(&store).await {
                    tracing::warn!(error = %e, "indexing experiences failed; retried later");
                }
            }
        });
        // The prompt cache's journal, merged into its hashed table (see cache::Journal): a
        // run a tick while the writer has room, and at once past JOURNAL_MAX rows.
        let (merger, merge_store) = (cache.clone(), store.clone());
        let meter = Arc::new(crate::store::BusyMeter::new(store));
        every(&mut tasks, &stop, INDEX_EVERY, move || {
            let (cache, store, meter) = (merger.clone(), merge_store.clone(), meter.clone());
            async move {
                let idle = meter.share(&store) <= crate::memory::index::BUSY_SHARE;
                if let Err(e) = cache.merge_step(idle).await {
                    tracing::warn!(error = %e, "merging the prompt cache's journal failed; retried later");
                }
                meter.reset(&store);
            }
        });
        let (queue, cleanup_cache, store) = (queue.clone(), cache.clone(), store.clone());
        let retention = ExperienceRetention::of(config);
        let interval = Duration::from_secs(config.retention.interval_s);
        every(&mut tasks, &stop, interval, move || {
            let (queue, cache, store) = (queue.clone(), cleanup_cache.clone(), store.clone());
            async move {
                match cleanup_pass(&queue, &cache, &store, retention).await {
                    Ok(report) => tracing::debug!(?report, "cleanup pass"),
                    Err(e) => tracing::warn!(error = %e, "cleanup pass failed"),
                }
            }
        });
        let limit = config.cache.rss_limit_mb * 1024 * 1024;
        if limit > 0 {
            let cache = cache.clone();
            every(&mut tasks, &stop, Duration::from_secs(2), move || {
                let cache = cache.clone();
                async move {
                    if let Some(rss) = resident_bytes() {
                        if rss > limit {
                            tracing::warn!(rss, limit, "memory above limit; shrinking the cache");
                            cache.clear_memory();
                        }
                    }
                }
            });
        }
        Upkeep { stop, tasks }
    }

    /// Cancels every task and waits for them to end.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Tasks still running (for tests: zero after `stop`).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when no task runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Runs `tick` every `period` until `stop` turns true; a tick in progress finishes first.
fn every<F, Fut>(tasks: &mut JoinSet<()>, stop: &watch::Sender<bool>, period: Duration, tick: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut stopped = stop.subscribe();
    tasks.spawn(async move {
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                _ = timer.tick() => tick().await,
            }
        }
    });
}

/// The process's resident set size, from /proc (None where unavailable).
pub fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Peak resident set size (VmHWM), from /proc.
pub fn peak_resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
