//! A running job: its lease, and everything a handler does with it (after effectum's
//! running job, which carries its own complete/fail/heartbeat).

use std::sync::Arc;
use std::time::Duration;

use redb::WriteTransaction;

use super::failure::FailureRecord;
use super::stats::RunStats;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::llm::LlmError;
use crate::queue::{
    checkpoint_in, complete_all_in, Completing, Failure, Job, JobState, Lease, Queue,
};
use crate::store::join::Join;
use crate::store::Store;

/// Shortest snooze a server's `Retry-After` gets.
pub const SNOOZE_FLOOR: Duration = Duration::from_millis(500);
/// Longest snooze without spending an attempt.
pub const SNOOZE_CAP: Duration = Duration::from_secs(10 * 60);

/// One leased job, handed to its kind's handler. Every way it can end goes through here, so
/// the counters and the lease fencing are kept the same for every kind.
pub struct JobCtx {
    lease: Lease,
    queue: Queue,
    stats: Arc<RunStats>,
    lease_len: Duration,
}

/// Extends a lease while it lives; dropping it stops the heartbeat.
pub struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl JobCtx {
    /// A running job: leased by the runner, or held by a provider's batch (whose results
    /// end their jobs through the same calls).
    pub fn new(lease: Lease, queue: Queue, stats: Arc<RunStats>, lease_len: Duration) -> Self {
        JobCtx {
            lease,
            queue,
            stats,
            lease_len,
        }
    }

    /// The job as leased.
    pub fn job(&self) -> &Job {
        &self.lease.job
    }

    /// The lease (its token fences every write of this job).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The store, for reads and for writes composed with this job's end.
    pub fn store(&self) -> &Store {
        self.queue.store()
    }

    /// The run's counters.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// Extends the lease every third of its length until the guard drops.
    pub fn heartbeat(&self) -> Heartbeat {
        let queue = self.queue.clone();
        let lease = self.lease.clone();
        let lease_for = self.lease_len;
        Heartbeat(tokio::spawn(async move {
            let every = (lease_for / 3).max(Duration::from_millis(10));
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = queue.heartbeat(&lease, lease_for).await {
                    tracing::warn!(job = lease.job.id, error = %e, "lease heartbeat failed");
                    return;
                }
            }
        }))
    }

    /// Completes the job with `result` and the response `body` it refers to (stored once,
    /// see [`crate::store::bodies`]), writing `extras` in the same fenced transaction.
    /// Completions waiting for the writer together commit as one joined write (see
    /// [`Extras`]). Returns false when the lease was lost: another worker owns the job now
    /// and its result is the one kept.
    pub async fn complete<X: Extras>(
        &self,
        result: Vec<u8>,
        body: Option<Vec<u8>>,
        extras: X,
    ) -> Result<bool> {
        let done = Done {
            lease: self.lease.clone(),
            result,
            body,
            extras,
        };
        let committed = self.store().write_joined::<Completion<X>>(done).await?;
        if committed {
            RunStats::bump(&self.stats.completed);
        } else {
            tracing::warn!(job = self.lease.job.id, "lease lost; result discarded");
        }
        Ok(committed)
    }

    /// Saves the job's progress with `also` in one fenced transaction; false when the lease
    /// was lost.
    pub async fn checkpoint<F>(&self, progress: Vec<u8>, also: F) -> Result<bool>
    where
        F: Fn(&WriteTransaction) -> Result<()> + Send + 'static,
    {
        let lease = self.lease.clone();
        let saved = self
            .store()
            .write(move |txn| {
                checkpoint_in(txn, &lease, &progress)?;
                also(txn)
            })
            .await;
        saved
            .map(|()| true)
            .or_else(|e| ignore_lost(e).map(|()| false))
    }

    /// Fails the job: `Fatal` discards it, `Retryable` sends it back with backoff while it has
    /// attempts left.
    pub async fn fail(&self, record: &FailureRecord, how: Failure) -> Result<()> {
        self.fail_with(record, how, |_| Ok(())).await
    }

    /// [`JobCtx::fail`], running `also` in the same fenced transaction.
    pub async fn fail_with<F>(&self, record: &FailureRecord, how: Failure, also: F) -> Result<()>
    where
        F: Fn(&WriteTransaction) -> Result<()> + Send + 'static,
    {
        let state = self
            .queue
            .fail_with(&self.lease, &record.to_last_error(), how, also)
            .await
            .or_else(|e| ignore_lost(e).map(|()| JobState::Running))?;
        let last = state == JobState::Discarded;
        if last {
            RunStats::bump(&self.stats.failed);
        }
        self.stats.count_error(&record.code, last);
        Ok(())
    }

    /// Ends the job after a failed call, by the client's classification: a retryable error
    /// goes back to the queue (a server's `Retry-After` snoozes it, see [`JobCtx::snooze`]),
    /// a fatal one discards the job with the provider's message.
    pub async fn fail_call(&self, err: LlmError) -> Result<()> {
        let record = FailureRecord::of_llm_error(&err);
        if !err.is_retryable() {
            return self.fail(&record, Failure::Fatal).await;
        }
        RunStats::bump(&self.stats.retried);
        match err.retry_after() {
            // At least a floor, so `Retry-After: 0` does not spin a commit per cycle.
            Some(delay) if delay <= SNOOZE_CAP => {
                RunStats::bump(&self.stats.server_waits);
                self.stats.count_error(&record.code, false);
                self.snooze(&record, delay.max(SNOOZE_FLOOR)).await
            }
            // Longer than a batch should sit silent (a daily quota): spend an attempt instead,
            // so such a job ends instead of waiting a day per try.
            Some(delay) => {
                tracing::warn!(
                    job = self.lease.job.id,
                    asked_s = delay.as_secs(),
                    "the server asks to wait longer than the snooze cap; spending an attempt"
                );
                self.fail(&record, Failure::Retryable).await
            }
            None => self.fail(&record, Failure::Retryable).await,
        }
    }

    /// Returns the job to the queue as it was, spending no attempt (the batch is stopping for
    /// a reason that is not the job's).
    pub async fn release(&self) -> Result<()> {
        match self.queue.release(&self.lease).await {
            Ok(()) => {
                RunStats::bump(&self.stats.returned);
                Ok(())
            }
            Err(Error::InvalidState(_)) => Ok(()),
            Err(e) => ignore_lost(e),
        }
    }

    /// Puts the job back to run after `delay`; the first snoozes of a job spend no attempt
    /// (see [`crate::queue::snooze_in`]).
    pub async fn snooze(&self, record: &FailureRecord, delay: Duration) -> Result<()> {
        let state = self
            .queue
            .snooze(&self.lease, &record.to_last_error(), delay)
            .await
            .or_else(|e| ignore_lost(e).map(|()| JobState::Running))?;
        if state == JobState::Discarded {
            RunStats::bump(&self.stats.failed);
        }
        Ok(())
    }
}

/// What a job kind writes with each completion, in the completion's transaction. A burst
/// of completions waiting for the writer is applied in one call: the queue's part with its
/// tables opened once, then [`Extras::apply_all`] with the extras of the jobs whose leases
/// held, so a kind can open its own tables once and sum its counters too.
pub trait Extras: Send + 'static {
    /// Writes `done` (given the commit time). An `Err` fails every completion of the call;
    /// the writer then commits each alone, so only the faulty one fails.
    fn apply_all(txn: &WriteTransaction, done: &[&Self], now: u64) -> Result<()>;
}

/// Extras as one closure a job, run in turn (for completions that write nothing to share).
pub struct Also<F>(pub F);

impl<F> Extras for Also<F>
where
    F: Fn(&WriteTransaction, u64) -> Result<()> + Send + 'static,
{
    fn apply_all(txn: &WriteTransaction, done: &[&Self], now: u64) -> Result<()> {
        done.iter().try_for_each(|also| (also.0)(txn, now))
    }
}

/// A completion waiting for the writer.
struct Done<X> {
    lease: Lease,
    result: Vec<u8>,
    body: Option<Vec<u8>>,
    extras: X,
}

/// Completions of jobs whose extras are of type `X`, joined by the writer.
struct Completion<X>(std::marker::PhantomData<fn() -> X>);

impl<X: Extras> Join for Completion<X> {
    type Item = Done<X>;
    /// False: the lease was lost.
    type Out = bool;

    fn apply(txn: &WriteTransaction, items: &[Done<X>]) -> Result<Vec<Result<bool>>> {
        let now = now_ms();
        let completing: Vec<Completing<'_>> = items
            .iter()
            .map(|d| Completing {
                lease: &d.lease,
                result: &d.result,
                body: d.body.as_deref(),
            })
            .collect();
        let outcomes = complete_all_in(txn, &completing, now)?;
        let held: Vec<&X> = items
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_ok())
            .map(|(d, _)| &d.extras)
            .collect();
        X::apply_all(txn, &held, now)?;
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                Ok(()) => Ok(true),
                Err(Error::LeaseLost { .. }) => Ok(false),
                Err(e) => Err(e),
            })
            .collect())
    }
}

/// A lost lease means another worker owns the job now: its result wins, ours is dropped.
pub fn ignore_lost(e: Error) -> Result<()> {
    match e {
        Error::LeaseLost { job_id } => {
            tracing::warn!(job = job_id, "lease lost; result discarded");
            Ok(())
        }
        other => Err(other),
    }
}
