//! The durable job queue: jobs live in the store's redb file, so a batch survives crashes
//! and restarts, and no prompt is lost or paid for twice.
//!
//! States follow River/Oban (see `docs/queue.md`): `available`/`scheduled`/`retryable` jobs
//! wait in a due index ordered by (priority, run_at, id); a lease moves them to `running`
//! with a fencing token; they end `completed`, `discarded` or `cancelled`. Every operation
//! exists as a sync function of a write transaction (`*_in`) or read transaction
//! (`*_read`) to compose with other writes, and as an async method of [`Queue`].

mod attempts;
mod backoff;
mod index;
mod job;
mod ops;
mod read;
mod usage;

use std::time::Duration;

pub use attempts::{attempts_read, AttemptRecord, KEPT_ATTEMPTS};
pub use backoff::backoff_ms;
pub use job::{
    Counts, Enqueued, Failure, Job, JobState, Lease, NewJob, QueueConfig, Retention,
    FREE_INTERRUPTIONS, FREE_SNOOZES,
};
pub use ops::{
    cancel_in, checkpoint_in, complete_all_in, complete_in, complete_many_in,
    complete_with_body_in, enqueue_answered_in, enqueue_in, enqueue_many_in, fail_in, heartbeat_in,
    lease_ids_in, lease_in, prune_in, release_in, rescue_expired_in, rescue_interrupted_in,
    retry_in, snooze_in, REMOTE_LEASE,
};
pub use ops::{rescue_at_open, Completing, Known};
pub use read::{
    counts_read, find_by_dedup_read, finished_read, get_read, jobs_in_queue_read, list_read,
    load_checkpoint_read, queue_names, queues_read, waiting_ids_read, Whole,
};
pub use usage::{add_usage_in, usage_read, Usage};

use redb::WriteTransaction;

use crate::clock::now_ms;
use crate::error::Result;
use crate::store::{Store, StoreConfig};
use backoff::duration_ms;

/// Jobs changed per transaction by the bulk operations.
const BULK_CHUNK: usize = 5_000;

/// The job queue on a [`Store`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    store: Store,
    config: QueueConfig,
}

impl Queue {
    /// A queue on `store` with `config`'s policy. A store the queue is reopened on after a
    /// crash should have been opened with [`rescue_at_open`] handed in, as [`Queue::open`]
    /// does; otherwise the jobs a dead process left running wait for their leases to expire.
    pub fn new(store: Store, config: QueueConfig) -> Queue {
        Queue { store, config }
    }

    /// Opens the store with the queue's open hook ([`rescue_at_open`]) and a queue on it.
    pub async fn open(store: StoreConfig, config: QueueConfig) -> Result<Queue> {
        // First, so the hooks handed in see jobs at the current layout.
        let mut store = store;
        store.on_open.insert(0, rescue_at_open);
        let store = Store::open_async(store).await?;
        Ok(Queue::new(store, config))
    }

    /// The underlying store, to compose queue operations with other writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The queue's policy.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Enqueues one job (see [`enqueue_many_in`] for dedup keys).
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        let config = self.config;
        let now = now_ms();
        self.store
            .write(move |txn| enqueue_in(txn, &config, &job, now))
            .await
    }

    /// Enqueues jobs in one transaction: all or none.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let config = self.config;
        let now = now_ms();
        self.store
            .write(move |txn| enqueue_many_in(txn, &config, &jobs, now))
            .await
    }

    /// Leases up to `max` due jobs of `queue` for `lease_for` (see [`lease_in`]).
    pub async fn lease(
        &self,
        queue: &str,
        max: usize,
        lease_for: Duration,
        owner: &str,
    ) -> Result<Vec<Lease>> {
        let (queue, owner) = (queue.to_owned(), owner.to_owned());
        let lease_ms = duration_ms(lease_for);
        let now = now_ms();
        // Relaxed: a lease lost in a crash is harmless (leases are rescued at open).
        self.store
            .write_relaxed(move |txn| lease_in(txn, &queue, max, lease_ms, &owner, now))
            .await
    }

    /// Extends a lease to now + `lease_for`.
    pub async fn heartbeat(&self, lease: &Lease, lease_for: Duration) -> Result<()> {
        let lease = lease.clone();
        let lease_ms = duration_ms(lease_for);
        let now = now_ms();
        self.store
            .write_relaxed(move |txn| heartbeat_in(txn, &lease, lease_ms, now))
            .await
    }

    /// Completes a leased job with its result ([`crate::Error::LeaseLost`] if the lease was lost).
    pub async fn complete(&self, lease: &Lease, result: Vec<u8>) -> Result<()> {
        let lease = lease.clone();
        let now = now_ms();
        self.store
            .write(move |txn| complete_in(txn, &lease, &result, now))
            .await
    }

    /// Completes many leased jobs in one write; one outcome per entry.
    pub async fn complete_many(&self, done: Vec<(Lease, Vec<u8>)>) -> Result<Vec<Result<()>>> {
        let now = now_ms();
        self.store
            .write(move |txn| complete_many_in(txn, &done, now))
            .await
    }

    /// Records a failed attempt and returns the job's new state (see [`fail_in`]).
    pub async fn fail(&self, lease: &Lease, error: &str, failure: Failure) -> Result<JobState> {
        self.fail_with(lease, error, failure, |_| Ok(())).await
    }

    /// [`Queue::fail`], running `also` in the same transaction (e.g. counting what a rejected
    /// answer cost).
    pub async fn fail_with<F>(
        &self,
        lease: &Lease,
        error: &str,
        failure: Failure,
        also: F,
    ) -> Result<JobState>
    where
        F: Fn(&redb::WriteTransaction) -> Result<()> + Send + 'static,
    {
        let (lease, error) = (lease.clone(), error.to_owned());
        let config = self.config;
        let now = now_ms();
        self.store
            .write(move |txn| {
                let state = fail_in(txn, &config, &lease, &error, failure, now)?;
                also(txn)?;
                Ok(state)
            })
            .await
    }

    /// Puts a running job back to scheduled for `delay` (see [`snooze_in`]); the state it ends
    /// in (`Discarded` once snoozes have used up its attempts).
    pub async fn snooze(&self, lease: &Lease, error: &str, delay: Duration) -> Result<JobState> {
        let (lease, error) = (lease.clone(), error.to_owned());
        let delay_ms = duration_ms(delay);
        let now = now_ms();
        self.store
            .write(move |txn| snooze_in(txn, &lease, &error, delay_ms, now))
            .await
    }

    /// Gives a running job back at once (shutdown), refunding its attempt.
    pub async fn release(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.store.write(move |txn| release_in(txn, &lease)).await
    }

    /// Stores a running job's progress durably.
    pub async fn checkpoint(&self, lease: &Lease, bytes: Vec<u8>) -> Result<()> {
        let lease = lease.clone();
        self.store
            .write(move |txn| checkpoint_in(txn, &lease, &bytes))
            .await
    }

    /// The job's last checkpoint.
    pub async fn load_checkpoint(&self, id: u64) -> Result<Option<Vec<u8>>> {
        self.store
            .read(move |txn| load_checkpoint_read(txn, id))
            .await
    }

    /// Cancels a job that has not finished (see [`cancel_in`]).
    pub async fn cancel(&self, id: u64) -> Result<()> {
        let now = now_ms();
        self.store.write(move |txn| cancel_in(txn, id, now)).await
    }

    /// Runs a discarded, cancelled or waiting job again now (see [`retry_in`]).
    pub async fn retry(&self, id: u64) -> Result<()> {
        let now = now_ms();
        self.store.write(move |txn| retry_in(txn, id, now)).await
    }

    /// [`Queue::cancel`] for many jobs, a few thousand per transaction.
    pub async fn cancel_many(&self, ids: &[u64]) -> Result<()> {
        self.each_in_chunks(ids, cancel_in).await
    }

    /// [`Queue::cancel_many`] that records `reason` as each job's last error.
    pub async fn cancel_many_because(&self, ids: &[u64], reason: &str) -> Result<()> {
        for chunk in ids.chunks(BULK_CHUNK) {
            let (chunk, reason) = (chunk.to_vec(), reason.to_string());
            self.store
                .write(move |txn| {
                    let now = now_ms();
                    chunk
                        .iter()
                        .try_for_each(|&id| ops::cancel_because_in(txn, id, now, Some(&reason)))
                })
                .await?;
        }
        Ok(())
    }

    /// [`Queue::retry`] for many jobs, a few thousand per transaction.
    pub async fn retry_many(&self, ids: &[u64]) -> Result<()> {
        self.each_in_chunks(ids, retry_in).await
    }

    async fn each_in_chunks(
        &self,
        ids: &[u64],
        op: fn(&WriteTransaction, u64, u64) -> Result<()>,
    ) -> Result<()> {
        for chunk in ids.chunks(BULK_CHUNK) {
            let chunk = chunk.to_vec();
            self.store
                .write(move |txn| {
                    let now = now_ms();
                    chunk.iter().try_for_each(|&id| op(txn, id, now))
                })
                .await?;
        }
        Ok(())
    }

    /// One job.
    pub async fn get(&self, id: u64) -> Result<Option<Job>> {
        self.store.read(move |txn| get_read(txn, id)).await
    }

    /// Up to `limit` jobs in id order, filtered by queue and state.
    pub async fn list(
        &self,
        queue: Option<&str>,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let queue = queue.map(str::to_owned);
        self.store
            .read(move |txn| list_read(txn, queue.as_deref(), state, limit))
            .await
    }

    /// Every job of a queue in enqueue order (export).
    pub async fn jobs_in_queue(&self, queue: &str) -> Result<Vec<Job>> {
        let queue = queue.to_owned();
        self.store
            .read(move |txn| jobs_in_queue_read(txn, &queue))
            .await
    }

    /// Jobs per state, of one queue or all.
    pub async fn counts(&self, queue: Option<&str>) -> Result<Counts> {
        let queue = queue.map(str::to_owned);
        self.store
            .read(move |txn| counts_read(txn, queue.as_deref()))
            .await
    }

    /// Queues holding at least one job.
    pub async fn queues(&self) -> Result<Vec<String>> {
        self.store.read(queues_read).await
    }

    /// Rescues running jobs whose lease has expired (call it periodically).
    pub async fn rescue_expired(&self) -> Result<usize> {
        let now = now_ms();
        self.store
            .write(move |txn| rescue_expired_in(txn, now))
            .await
    }

    /// Deletes finished jobs past the configured retention.
    pub async fn prune(&self) -> Result<usize> {
        let retention = self.config.retention;
        let now = now_ms();
        self.store
            .write(move |txn| prune_in(txn, &retention, now))
            .await
    }
}

#[cfg(test)]
mod tests;
