//! The runner: tokio tasks that drain a queue, each job handed to the handler registered for
//! its kind ([`Registry`]).
//!
//! The dispatcher never leases more jobs than it has free slots (backpressure), so nothing
//! sits leased while waiting. A handler gets a [`JobCtx`] that carries the job's complete,
//! fail, snooze and heartbeat; every LLM call goes through the [`Gateway`] (cache and
//! client).
//!
//! On shutdown the dispatcher stops leasing, lets in-flight jobs finish within the drain
//! deadline, then aborts the rest and returns their jobs to the queue at once.

mod breaker;
mod budget;
mod failure;
mod gateway;
mod job;
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use breaker::{Breaker, Trip, ACCOUNT_ERRORS, CONNECT_FAILURES};
pub use budget::{Budget, Reservation, Standing, BUDGET_REACHED};
pub use failure::FailureRecord;
pub use gateway::{billed_tokens, CacheWrite, CallError, Gateway, GatewaySettings};
pub use job::{ignore_lost, Also, Extras, Heartbeat, JobCtx, SNOOZE_CAP, SNOOZE_FLOOR};
pub use stats::{RunCounts, RunStats};

use crate::error::{Error, Result};
use crate::queue::{Failure, Lease, Queue};
use crate::shutdown::{Listener, Phase};

/// How often an idle dispatcher looks for scheduled jobs that became due.
const POLL: Duration = Duration::from_millis(200);

/// What runs the jobs of one kind.
pub trait Handler: Send + Sync {
    /// Runs a leased job to a durable end state (completed, failed, snoozed or checkpointed).
    /// An `Err` is the store failing, which stops the drain.
    fn run(&self, job: JobCtx) -> BoxFuture<'_, Result<()>>;
}

/// Handlers by job kind (`Job.kind`, as enqueued).
#[derive(Clone, Default)]
pub struct Registry {
    by_kind: HashMap<&'static str, Arc<dyn Handler>>,
}

impl Registry {
    /// Runs jobs of `kind` with `handler` (a later registration of the same kind wins).
    pub fn register(&mut self, kind: &'static str, handler: impl Handler + 'static) {
        self.by_kind.insert(kind, Arc::new(handler));
    }

    fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.by_kind.get(kind).cloned()
    }
}

/// How the runner runs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Jobs in flight at once.
    pub concurrency: usize,
    /// Lease length; a heartbeat extends it every third of it while a call runs.
    pub lease: Duration,
    /// After a shutdown signal, how long in-flight calls may finish.
    pub drain_timeout: Duration,
    /// Lease owner name, unique per process ([`RunnerConfig::owner_name`]).
    pub owner: String,
}

impl RunnerConfig {
    /// A lease owner name unique to this process.
    pub fn owner_name() -> String {
        format!("pid-{}-{:08x}", std::process::id(), rand::random::<u32>())
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainEnd {
    /// The queue has no job left to run.
    Finished,
    /// A shutdown stopped it; holds the phase that did.
    Stopped(Phase),
    /// The breaker opened: the endpoint or the account cannot serve any line.
    Halted(Trip),
}

/// Drains queues with the registered handlers. Cheap to clone; clones share the counters.
#[derive(Clone)]
pub struct Runner {
    queue: Queue,
    registry: Arc<Registry>,
    config: Arc<RunnerConfig>,
    stats: Arc<RunStats>,
    breaker: Option<Breaker>,
}

/// Leases currently held by running tasks, so a shutdown can return them.
type InFlight = Arc<Mutex<HashMap<u64, Lease>>>;

impl Runner {
    /// A runner over `queue` with `registry`'s handlers.
    pub fn new(queue: Queue, registry: Registry, config: RunnerConfig) -> Runner {
        Runner {
            queue,
            registry: Arc::new(registry),
            config: Arc::new(config),
            stats: Arc::new(RunStats::default()),
            breaker: None,
        }
    }

    /// Stops leasing once `breaker` opens (the gateway's, so both see the same calls).
    pub fn with_breaker(mut self, breaker: Breaker) -> Runner {
        self.breaker = Some(breaker);
        self
    }

    /// The counters of every drain of this runner (and its clones).
    pub fn stats(&self) -> &Arc<RunStats> {
        &self.stats
    }

    /// Drains `queue_name` until no job is left to run or `shutdown` stops it.
    pub async fn drain(&self, queue_name: &str, mut shutdown: Listener) -> Result<DrainEnd> {
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let in_flight: InFlight = Arc::default();
        let mut tasks = JoinSet::new();
        let end = loop {
            if shutdown.is_stopping() {
                break DrainEnd::Stopped(shutdown.phase());
            }
            if let Some(trip) = self.breaker.as_ref().and_then(Breaker::tripped) {
                tracing::warn!(code = trip.code, "stopping the batch: {}", trip.message);
                break DrainEnd::Halted(trip.clone());
            }
            // Reap finished tasks; a task's error is the store failing, which is fatal here.
            while let Some(done) = tasks.try_join_next() {
                flatten(done)?;
            }
            let free = slots.available_permits();
            let leases = if free > 0 {
                self.queue
                    .lease(queue_name, free, self.config.lease, &self.config.owner)
                    .await?
            } else {
                Vec::new()
            };
            if leases.is_empty() {
                if tasks.is_empty() && !self.has_pending(queue_name).await? {
                    break DrainEnd::Finished;
                }
                tokio::select! {
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => flatten(done)?,
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.stopping() => {}
                }
                continue;
            }
            for lease in leases {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Closed)?;
                let me = self.clone();
                let held = in_flight.clone();
                if let Ok(mut map) = held.lock() {
                    map.insert(lease.job.id, lease.clone());
                }
                tasks.spawn(async move {
                    let id = lease.job.id;
                    let result = me.run_job(lease).await;
                    if let Ok(mut map) = held.lock() {
                        map.remove(&id);
                    }
                    drop(permit);
                    result
                });
            }
        };
        if end != DrainEnd::Finished {
            // Calls in flight may finish; jobs still waiting for a request slot go back unsent
            // (and none takes the slot of an aborted call to start one that is then
            // abandoned). For the rest of the process: it is stopping.
            if let Some(breaker) = &self.breaker {
                breaker.close_calls();
            }
        }
        self.finish_in_flight(tasks, in_flight, &mut shutdown)
            .await?;
        Ok(end)
    }

    /// Hands one leased job to the handler of its kind.
    async fn run_job(&self, lease: Lease) -> Result<()> {
        let handler = self.registry.get(&lease.job.kind);
        let ctx = JobCtx::new(
            lease,
            self.queue.clone(),
            self.stats.clone(),
            self.config.lease,
        );
        match handler {
            Some(handler) => handler.run(ctx).await,
            None => {
                let kind = &ctx.job().kind;
                let failure =
                    FailureRecord::new("unknown_kind", format!("no handler for job kind {kind:?}"));
                ctx.fail(&failure, Failure::Fatal).await
            }
        }
    }

    /// Whether the queue still has jobs that will become runnable (due, scheduled or leased).
    async fn has_pending(&self, queue_name: &str) -> Result<bool> {
        let c = self.queue.counts(Some(queue_name)).await?;
        Ok(c.available + c.scheduled + c.retryable + c.running > 0)
    }

    /// The drain: wait for in-flight jobs up to the deadline (or a second signal), then abort
    /// the rest and return their jobs to the queue without spending an attempt.
    async fn finish_in_flight(
        &self,
        mut tasks: JoinSet<Result<()>>,
        in_flight: InFlight,
        shutdown: &mut Listener,
    ) -> Result<()> {
        let deadline = tokio::time::sleep(self.config.drain_timeout);
        tokio::pin!(deadline);
        let mut first_error = None;
        loop {
            tokio::select! {
                done = tasks.join_next() => match done {
                    None => break,
                    Some(done) => if let Err(e) = flatten(done) { first_error.get_or_insert(e); },
                },
                _ = &mut deadline => break,
                _ = shutdown.aborted() => break,
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let leftovers: Vec<Lease> = in_flight
            .lock()
            .map(|mut m| m.drain().map(|(_, l)| l).collect())
            .unwrap_or_default();
        for lease in leftovers {
            match self.queue.release(&lease).await {
                Ok(()) => RunStats::bump(&self.stats.returned),
                // It completed (or was rescued) just before the abort: nothing to return.
                Err(Error::LeaseLost { .. } | Error::InvalidState(_)) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn flatten(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match done {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(Error::Task(format!("worker task panicked: {e}"))),
    }
}
