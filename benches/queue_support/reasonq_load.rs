//! reasonq workloads through the public async API.

use std::path::Path;
use std::time::{Duration, Instant};

use reasonq::queue::{NewJob, Queue, QueueConfig};
use reasonq::store::{Store, StoreConfig};

use super::{LEASE_SECS, PAYLOAD};

pub const QUEUE: &str = "bench";

/// A fresh queue in `dir` at immediate durability.
pub fn open(dir: &Path, name: &str) -> Queue {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut config = StoreConfig::new(path);
    if std::env::var("DURABILITY").as_deref() == Ok("none") {
        config.durability = reasonq::store::Durability::None;
    }
    let store = Store::open(config).unwrap();
    Queue::new(store, QueueConfig::default())
}

pub fn job() -> NewJob {
    NewJob::new(QUEUE, "noop", PAYLOAD.to_vec())
}

/// `n` jobs enqueued one per call from `tasks` concurrent tasks (group commit merges them).
pub async fn enqueue_single(queue: &Queue, n: u64, tasks: u64) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let queue = queue.clone();
            let mine = n / tasks + u64::from(t < n % tasks);
            tokio::spawn(async move {
                for _ in 0..mine {
                    queue.enqueue(job()).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

/// `n` jobs enqueued in batches of `batch`, one transaction each.
pub async fn enqueue_batched(queue: &Queue, n: u64, batch: u64) -> Duration {
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let size = left.min(batch);
        queue
            .enqueue_many((0..size).map(|_| job()).collect())
            .await
            .unwrap();
        left -= size;
    }
    start.elapsed()
}

/// Leases and completes every due job with `workers` tasks, `per_lease` jobs per call.
/// Returns the time and the number of jobs completed.
pub async fn drain(queue: &Queue, workers: usize, per_lease: usize) -> (Duration, u64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let owner = format!("w{w}");
                let mut done = 0u64;
                loop {
                    let leases = queue
                        .lease(QUEUE, per_lease, Duration::from_secs(LEASE_SECS), &owner)
                        .await
                        .unwrap();
                    if leases.is_empty() {
                        return done;
                    }
                    done += leases.len() as u64;
                    let batch = leases.into_iter().map(|l| (l, Vec::new())).collect();
                    for outcome in queue.complete_many(batch).await.unwrap() {
                        outcome.unwrap();
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    (start.elapsed(), total)
}
