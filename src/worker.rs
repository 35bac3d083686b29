//! Workers: tokio tasks that drain a queue through the cache and the LLM client.
//!
//! The dispatcher never leases more jobs than it has free workers (backpressure), so nothing
//! sits leased while waiting. Each job is: decode, look up the cache (single flight), call the
//! API while a heartbeat extends the lease, then complete the job **and** record its
//! experience in one transaction. Failures go through the client's classification: retryable
//! ones back to the queue (a server's `Retry-After` snoozes the job without spending an
//! attempt), fatal ones are discarded with the provider's message.
//!
//! On shutdown the dispatcher stops leasing, lets in-flight jobs finish within the drain
//! deadline, then aborts the rest and returns their jobs to the queue at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::batch::output::{FailureRecord, ResponseRecord};
use crate::batch::ChatJob;
use crate::cache::{cacheable, Cache, CacheKey, CachePolicy, CachedResponse, Hit};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::llm::{ChatOutcome, LlmClient, LlmError};
use crate::memory::prompt::{self, MemorySection};
use crate::memory::{apply, rules, strategy, MemoryConfig, Strategy};
use crate::queue::{Failure, Lease, Queue};
use crate::shutdown::{Listener, Phase};
use crate::store::codec;
use crate::store::experience::{self, ExperienceData, NewExperience};

/// How workers run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs in flight at once.
    pub concurrency: usize,
    /// Lease length; a heartbeat extends it every third of it while a call runs.
    pub lease: Duration,
    /// After a shutdown signal, how long in-flight calls may finish.
    pub drain_timeout: Duration,
    pub cache_policy: CachePolicy,
    /// What identifies the endpoint in cache keys (the base URL, or `simulated`).
    pub endpoint: String,
    /// Lease owner name, unique per process.
    pub owner: String,
    /// How often an idle dispatcher looks for scheduled jobs that became due.
    pub poll: Duration,
    /// Strategies, memory in prompts and judging.
    pub memory: MemoryConfig,
    /// LLM steps a blackboard session may take (see `docs/blackboard.md`).
    pub blackboard_max_steps: u32,
    /// Keep fresh responses in the database's cache table (the memory tier is always on).
    pub persist_cache: bool,
}

impl WorkerConfig {
    /// Defaults for `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            concurrency: 16,
            lease: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(30),
            cache_policy: CachePolicy::Deterministic,
            endpoint: endpoint.into(),
            owner: format!("pid-{}-{:08x}", std::process::id(), rand::random::<u32>()),
            poll: Duration::from_millis(200),
            memory: MemoryConfig::default(),
            blackboard_max_steps: 8,
            persist_cache: true,
        }
    }
}

/// Live counters of a run, for progress output.
#[derive(Debug, Default)]
pub struct RunStats {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub cached: AtomicU64,
    /// Jobs sent back to the queue to be tried again later (backoff or snooze).
    pub retried: AtomicU64,
    /// Jobs returned to the queue by a shutdown.
    pub returned: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

/// A point-in-time copy of [`RunStats`].
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RunCounts {
    pub completed: u64,
    pub failed: u64,
    pub cached: u64,
    pub retried: u64,
    pub returned: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl RunCounts {
    /// Adds another run's counters to these.
    pub fn add(&mut self, other: &RunCounts) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.cached += other.cached;
        self.retried += other.retried;
        self.returned += other.returned;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

impl RunStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> RunCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RunCounts {
            completed: get(&self.completed),
            failed: get(&self.failed),
            cached: get(&self.cached),
            retried: get(&self.retried),
            returned: get(&self.returned),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// The queue has no job left to run.
    Finished,
    /// A shutdown stopped it; holds the phase that did.
    Stopped(Phase),
}

/// Everything a worker needs; cheap to clone into tasks.
#[derive(Clone)]
pub struct Workers {
    pub queue: Queue,
    pub client: LlmClient,
    pub cache: Arc<Cache>,
    pub config: Arc<WorkerConfig>,
    pub stats: Arc<RunStats>,
}

/// Leases currently held by running tasks, so a shutdown can return them.
type InFlight = Arc<Mutex<HashMap<u64, Lease>>>;

impl Workers {
    /// Assembles workers.
    pub fn new(
        queue: Queue,
        client: LlmClient,
        cache: Arc<Cache>,
        config: WorkerConfig,
    ) -> Workers {
        Workers {
            queue,
            client,
            cache,
            config: Arc::new(config),
            stats: Arc::new(RunStats::default()),
        }
    }

    /// Drains `queue_name` until no job is left to run or `shutdown` stops it.
    pub async fn drain(&self, queue_name: &str, mut shutdown: Listener) -> Result<DrainEnd> {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let in_flight: InFlight = Arc::default();
        let mut tasks = JoinSet::new();
        let end = loop {
            if shutdown.is_stopping() {
                break DrainEnd::Stopped(shutdown.phase());
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
                    _ = tokio::time::sleep(self.config.poll) => {}
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
        self.finish_in_flight(tasks, in_flight, &mut shutdown)
            .await?;
        Ok(end)
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
                Ok(()) => {
                    self.stats.returned.fetch_add(1, Ordering::Relaxed);
                }
                // It completed (or was rescued) just before the abort: nothing to return.
                Err(Error::LeaseLost { .. } | Error::InvalidState(_)) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs one job to a durable end state: resolve the strategy, shape the request
    /// (strategy and memory), call, then judge and record.
    pub async fn run_job(&self, lease: Lease) -> Result<()> {
        let job: ChatJob = match codec::decode(&lease.job.payload) {
            Ok(job) => job,
            Err(e) => {
                let failure = failure("bad_payload", format!("cannot read the job: {e}"));
                return self.fail(&lease, &failure, Failure::Fatal).await;
            }
        };
        // The line's own strategy, else the bandit's pick for the domain.
        let strategy = match job.strategy.as_deref().map(str::parse::<Strategy>) {
            Some(Ok(s)) => s,
            Some(Err(message)) => {
                let failure = failure("bad_payload", message);
                return self.fail(&lease, &failure, Failure::Fatal).await;
            }
            None => self.choose_strategy(&job.domain).await?,
        };
        // Strategies with an engine of their own take the job from here.
        if strategy == "blackboard" {
            return crate::blackboard::run(self, lease, job).await;
        }
        let mut body: serde_json::Value = match serde_json::from_str(&job.body) {
            Ok(body) => body,
            Err(e) => {
                let failure = failure("bad_payload", format!("request body is not JSON: {e}"));
                return self.fail(&lease, &failure, Failure::Fatal).await;
            }
        };
        let memory = self.memory_for(&job).await?;
        apply::shape(&mut body, strategy, &memory);
        let heartbeat = self.spawn_heartbeat(lease.clone());
        let started = Instant::now();
        let outcome = self.call_deferred(&body).await;
        heartbeat.abort();
        match outcome {
            Ok((response, hit, cache_write)) => {
                let done = Done {
                    strategy,
                    memory,
                    hit,
                    cache_write,
                    started,
                };
                self.complete(&lease, &job, response, done).await
            }
            Err(CallError::Store(e)) => Err(e),
            Err(CallError::Llm(e)) => self.handle_llm_error(&lease, e).await,
        }
    }

    /// The bandit's pick among the configured strategies for `domain`.
    pub async fn choose_strategy(&self, domain: &str) -> Result<Strategy> {
        let domain = domain.to_string();
        let arms = self.config.memory.strategies.clone();
        self.queue
            .store()
            .read(move |txn| strategy::choose_read(txn, &domain, &arms))
            .await
    }

    /// The memory section of a job's prompt (empty when memory is off).
    async fn memory_for(&self, job: &ChatJob) -> Result<MemorySection> {
        if !job.memory {
            return Ok(MemorySection::default());
        }
        let question = question_of(&job.body);
        let domain = job.domain.clone();
        let (k, budget) = (self.config.memory.k, self.config.memory.token_budget);
        let now = now_ms();
        self.queue
            .store()
            .read(move |txn| prompt::build_read(txn, &domain, &question, k, budget, now))
            .await
    }

    /// Looks up the cache and calls the API on a miss: the one way every LLM call is made
    /// (batch lines, blackboard steps, insight prompts), so all are cached, retried and rate
    /// limited alike. A fresh response is kept on disk before this returns.
    pub async fn call(&self, body: &serde_json::Value) -> Result<(ChatOutcome, Hit), CallError> {
        let (outcome, hit, write) = self.call_deferred(body).await?;
        if let Some(write) = write {
            self.queue
                .store()
                .write(move |txn| write.put_in(txn))
                .await?;
        }
        Ok((outcome, hit))
    }

    /// [`Workers::call`], leaving the disk-cache write to the caller, who puts it in the
    /// transaction that records the result: one commit instead of two per job, and a
    /// response is on disk exactly when its job is complete.
    pub async fn call_deferred(
        &self,
        body: &serde_json::Value,
    ) -> Result<(ChatOutcome, Hit, Option<CacheWrite>), CallError> {
        let key = CacheKey::for_request(&self.config.endpoint, "/chat/completions", body);
        let allowed = cacheable(self.config.cache_policy, body);
        let client = self.client.clone();
        let (cached, hit) = self
            .cache
            .get_or_fetch(key, allowed, || async move {
                let outcome = client.chat(body).await.map_err(CallError::Llm)?;
                Ok::<_, CallError>(CachedResponse::new(
                    outcome.status,
                    outcome.request_id.clone(),
                    outcome.body.clone(),
                ))
            })
            .await?;
        let outcome = ChatOutcome::from_parts(
            cached.status,
            cached.request_id.clone(),
            Bytes::from(cached.body.to_vec()),
        )
        .map_err(CallError::Llm)?;
        let keep = matches!(hit, Hit::Miss) && self.config.persist_cache && cached.is_success();
        let write = keep.then(|| CacheWrite {
            key,
            response: cached,
        });
        Ok((outcome, hit, write))
    }

    async fn complete(
        &self,
        lease: &Lease,
        job: &ChatJob,
        outcome: ChatOutcome,
        done: Done,
    ) -> Result<()> {
        let Done {
            strategy,
            memory,
            hit,
            cache_write,
            started,
        } = done;
        let cached = matches!(hit, Hit::Memory | Hit::Disk);
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let record = ResponseRecord {
            status_code: outcome.status,
            request_id: outcome.request_id.clone(),
            body: String::from_utf8_lossy(&outcome.body).into_owned(),
            cached,
            latency_ms,
        };
        let result = codec::encode(&record)?;
        let usage = outcome.response.usage.clone().unwrap_or_default();
        let judged = apply::judge_reply(
            strategy,
            outcome.response.content().unwrap_or_default(),
            job.expected.as_ref(),
            self.config.memory.confidence_threshold,
        );
        // The model's own reasoning channel, when the strategy found no steps in the text.
        let reasoning = if judged.reasoning.is_empty() {
            outcome
                .response
                .choices
                .first()
                .and_then(|c| c.message.reasoning_content.clone())
                .into_iter()
                .collect()
        } else {
            judged.reasoning
        };
        let mut tags = Vec::new();
        if judged.parse_error.is_some() {
            tags.push(apply::PARSE_ERROR_TAG.to_string());
        }
        if !memory.used_experiences.is_empty() || !memory.used_rules.is_empty() {
            tags.push(apply::MEMORY_TAG.to_string());
        }
        let experience = NewExperience {
            created_at: None,
            data: ExperienceData {
                question: question_of(&job.body),
                context: judged.parse_error.map(|e| format!("parse error: {e}")),
                reasoning,
                answer: judged.answer,
                confidence: judged.confidence,
                outcome: judged.outcome,
                domain: job.domain.clone(),
                strategy: strategy.name().to_string(),
                tags,
                model: outcome.response.model.clone().unwrap_or_default(),
                prompt_tokens: saturate(usage.prompt_tokens),
                completion_tokens: saturate(usage.completion_tokens),
                latency_ms,
                job_id: Some(lease.job.id),
                used_experiences: memory.used_experiences,
            },
        };
        let lease_for_txn = lease.clone();
        let (domain, used_rules, judged_outcome) =
            (job.domain.clone(), memory.used_rules, judged.outcome);
        let committed = self
            .queue
            .store()
            .write(move |txn| {
                let now = now_ms();
                crate::queue::complete_in(txn, &lease_for_txn, &result, now)?;
                experience::record_in(txn, &experience, now)?;
                rules::apply_outcome_in(txn, &domain, &used_rules, judged_outcome)?;
                if let Some(write) = &cache_write {
                    write.put_in(txn)?;
                }
                Ok(())
            })
            .await;
        match committed {
            Ok(()) => {}
            // Another worker owns the job now; its result will be the one kept.
            Err(e @ Error::LeaseLost { .. }) => return ignore_lost(e),
            Err(e) => return Err(e),
        }
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        if cached {
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats
                .prompt_tokens
                .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
            self.stats
                .completion_tokens
                .fetch_add(usage.completion_tokens, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(crate) async fn handle_llm_error(&self, lease: &Lease, err: LlmError) -> Result<()> {
        let record = FailureRecord {
            code: err.code().to_string(),
            message: err.to_string(),
            status_code: err.status(),
            request_id: err.request_id().map(str::to_string),
            body: match &err {
                LlmError::Api(api) if !api.body.is_empty() => {
                    Some(String::from_utf8_lossy(&api.body).into_owned())
                }
                _ => None,
            },
        };
        if !err.is_retryable() {
            return self.fail(lease, &record, Failure::Fatal).await;
        }
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
        match err.retry_after() {
            // The server said when to come back: wait without spending an attempt.
            Some(delay) => self.queue.snooze(lease, delay).await.or_else(ignore_lost),
            None => self
                .queue
                .fail(lease, &record.to_last_error(), Failure::Retryable)
                .await
                .map(|_| ())
                .or_else(ignore_lost),
        }
    }

    pub(crate) async fn fail(
        &self,
        lease: &Lease,
        record: &FailureRecord,
        how: Failure,
    ) -> Result<()> {
        let state = self
            .queue
            .fail(lease, &record.to_last_error(), how)
            .await
            .or_else(|e| ignore_lost(e).map(|()| crate::queue::JobState::Running))?;
        if state == crate::queue::JobState::Discarded {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Extends the lease every third of its length while the call runs.
    pub(crate) fn spawn_heartbeat(&self, lease: Lease) -> tokio::task::JoinHandle<()> {
        let queue = self.queue.clone();
        let every = self.config.lease / 3;
        let lease_for = self.config.lease;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = queue.heartbeat(&lease, lease_for).await {
                    tracing::warn!(job = lease.job.id, error = %e, "lease heartbeat failed");
                    return;
                }
            }
        })
    }
}

/// What a successful call brings to the completion besides the response.
struct Done {
    strategy: Strategy,
    memory: MemorySection,
    hit: Hit,
    /// The fresh response's disk-cache write, committed with the completion.
    cache_write: Option<CacheWrite>,
    started: Instant,
}

/// A lost lease means another worker owns the job now: its result wins, ours is dropped.
pub(crate) fn ignore_lost(e: Error) -> Result<()> {
    match e {
        Error::LeaseLost { job_id } => {
            tracing::warn!(job = job_id, "lease lost; result discarded");
            Ok(())
        }
        other => Err(other),
    }
}

pub(crate) fn failure(code: &str, message: String) -> FailureRecord {
    FailureRecord {
        code: code.into(),
        message,
        status_code: None,
        request_id: None,
        body: None,
    }
}

fn flatten(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match done {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(Error::Invalid(format!("worker task panicked: {e}"))),
    }
}

/// The last user message of a request body, for the experience record.
pub fn question_of(body: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    value["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

pub(crate) fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A fresh response for the disk tier of the cache, to be written in the caller's
/// transaction.
#[derive(Debug, Clone)]
pub struct CacheWrite {
    key: CacheKey,
    response: CachedResponse,
}

impl CacheWrite {
    /// Writes the response into the cache table within `txn`.
    pub fn put_in(&self, txn: &redb::WriteTransaction) -> Result<()> {
        crate::cache::put_in(txn, &self.key, &self.response)
    }
}

/// Why a call produced no response: the API's error, or the store (cache tier 2) failing.
#[derive(Debug)]
pub enum CallError {
    Llm(LlmError),
    Store(Error),
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError::Store(e)
    }
}
