//! The driver: submits a batch's waiting lines as provider batches, follows them to their
//! end and completes their jobs from the results (see the module doc of [`super`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::records::{self, custom_id, job_of, Phase, RemoteLine, RemoteRecord};
use super::{RemoteSettings, RemoteView, RemoteWatch};
use crate::cache::Hit;
use crate::chat::engine::Engine;
use crate::chat::single::{self, Reply, Shaped};
use crate::chat::structured::Required;
use crate::chat::{ChatHandler, ChatJob};
use crate::clock::now_ms;
use crate::codec;
use crate::cost::Money;
use crate::error::{Error, Result};
use crate::llm::batch_api::{BatchApi, Match, Outcome, RemoteBatch, RemoteRequest, RemoteResult};
use crate::llm::wire::ApiErrorBody;
use crate::llm::{ApiError, ChatOutcome, LlmError};
use crate::memory::prompt::MemorySection;
use crate::memory::strategy::Execution;
use crate::memory::Strategy;
use crate::queue::{lease_ids_in, waiting_ids_read, Failure, Lease, Queue, Whole};
use crate::runner::{FailureRecord, JobCtx, Reservation, RunStats};
use crate::shutdown::{Listener, Phase as ShutdownPhase};
use crate::store::tables;

/// Waiting lines read and shaped at a time.
const READ_CHUNK: usize = 500;
/// Results being completed at once (the writer groups their commits).
const COMPLETING: usize = 64;
/// Lines being shaped at once.
const SHAPING: usize = 32;

/// How a provider run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteEnd {
    /// Every provider batch of the queue is collected.
    Collected {
        /// Lines left waiting for a live run: strategies of several calls (blackboard).
        left_for_live: u64,
    },
    /// A signal stopped the driver; the provider batches keep running and the next run
    /// picks them up.
    Detached(ShutdownPhase),
}

/// Runs one queue's lines through a provider's batch API.
pub struct RemoteRun {
    engine: Arc<Engine>,
    queue: Queue,
    api: BatchApi,
    stats: Arc<RunStats>,
    settings: RemoteSettings,
    watch: Arc<RemoteWatch>,
    /// Lease length of lines answered from the cache while submitting.
    lease_len: Duration,
    /// With `--max-cost`: the worst case of each line in an open provider batch, held
    /// until its result settles it (by job id).
    held: std::sync::Mutex<HashMap<u64, Reservation>>,
}

/// When to poll a started batch next, and the wait after that.
#[derive(Debug, Clone, Copy)]
struct Poll {
    at: Instant,
    wait: Duration,
}

impl RemoteRun {
    /// A driver for `handler`'s jobs (same strategies, memory, judging, cache) through `api`.
    pub fn new(
        handler: &ChatHandler,
        queue: Queue,
        api: BatchApi,
        stats: Arc<RunStats>,
        settings: RemoteSettings,
        watch: Arc<RemoteWatch>,
        lease_len: Duration,
    ) -> RemoteRun {
        RemoteRun {
            engine: handler.engine(),
            queue,
            api,
            stats,
            settings,
            watch,
            lease_len,
            held: std::sync::Mutex::default(),
        }
    }

    /// Holds the worst case of the lines of provider batches already submitted (an earlier
    /// run's, detached): they are paid for whatever the cap says now.
    async fn hold_open(&self, batch: &str) -> Result<()> {
        if !self.engine.gateway.budget().capped() {
            return Ok(());
        }
        let queue = batch.to_owned();
        let lines = self
            .queue
            .store()
            .read(move |txn| {
                let table = txn.open_table(tables::REMOTE_LINES)?;
                let mut out = Vec::new();
                for record in records::open_read(txn, Some(&queue))? {
                    for row in table.range((record.key, 0)..=(record.key, u64::MAX))? {
                        let (k, v) = row?;
                        let line: RemoteLine = codec::decode(v.value())?;
                        out.push((k.value().1, line.body));
                    }
                }
                Ok(out)
            })
            .await?;
        for (id, body) in lines {
            let worst = serde_json::from_str(&body)
                .ok()
                .and_then(|b| self.engine.gateway.worst_case(&b).ok())
                .unwrap_or(Money::ZERO);
            let reservation = self.engine.gateway.budget().force(worst);
            self.hold(id, reservation);
        }
        Ok(())
    }

    fn hold(&self, id: u64, reservation: Reservation) {
        if let Ok(mut held) = self.held.lock() {
            held.insert(id, reservation);
        }
    }

    /// The reservation of job `id`, if it holds one.
    fn release(&self, id: u64) -> Option<Reservation> {
        self.held.lock().ok().and_then(|mut held| held.remove(&id))
    }

    /// Submits the waiting lines of `batch` (those not answered by the cache), then follows
    /// every open provider batch of it (this run's and earlier ones') until all are collected
    /// or `shutdown` detaches.
    pub async fn run(&self, batch: &str, shutdown: &mut Listener) -> Result<RemoteEnd> {
        let mut fresh = HashSet::new();
        self.hold_open(batch).await?;
        let left_for_live = self.submit(batch, &mut fresh, shutdown).await?;
        self.follow(batch, fresh, left_for_live, shutdown).await
    }

    /// Asks the provider to cancel every open provider batch of `batch` and marks them so
    /// that the lines they did not finish end cancelled; [`RemoteRun::collect_all`] then
    /// keeps the partial results. Returns how many provider batches were asked.
    pub async fn cancel(&self, batch: &str) -> Result<usize> {
        let queue = batch.to_owned();
        let open = self
            .queue
            .store()
            .read(move |txn| records::open_read(txn, Some(&queue)))
            .await?;
        let mut asked = 0;
        for record in open {
            let mut next = record.clone();
            next.cancel_requested = true;
            let id = match record.phase {
                Phase::Started => record.remote_id.clone(),
                // Maybe created and not recorded: the provider knows.
                _ => {
                    let found = self
                        .api
                        .find(&record.tag, record.created_at / 1000, lines(&record))
                        .await?;
                    found.batch.map(|b| b.id)
                }
            };
            match id {
                Some(id) => {
                    let remote = self.api.cancel(&id).await?;
                    next.phase = Phase::Started;
                    next.remote_state = Some(remote.state.as_str().to_owned());
                    next.remote_id = Some(id);
                    asked += 1;
                    self.put(next).await?;
                }
                // Never submitted: its lines end cancelled here.
                None => {
                    self.end_missing(&next).await?;
                    self.queue
                        .store()
                        .write(move |txn| records::collected_in(txn, &next))
                        .await?;
                }
            }
        }
        Ok(asked)
    }

    /// Follows the open provider batches of `batch` until all are collected (or a signal
    /// detaches), without submitting any line.
    pub async fn collect_all(&self, batch: &str, shutdown: &mut Listener) -> Result<RemoteEnd> {
        self.follow(batch, HashSet::new(), 0, shutdown).await
    }

    async fn follow(
        &self,
        batch: &str,
        mut fresh: HashSet<u64>,
        left_for_live: u64,
        shutdown: &mut Listener,
    ) -> Result<RemoteEnd> {
        let mut polls: HashMap<u64, Poll> = HashMap::new();
        loop {
            let queue = batch.to_owned();
            let open = self
                .queue
                .store()
                .read(move |txn| records::open_read(txn, Some(&queue)))
                .await?;
            self.show(&open);
            if open.is_empty() {
                return Ok(RemoteEnd::Collected { left_for_live });
            }
            if shutdown.is_stopping() {
                return Ok(RemoteEnd::Detached(shutdown.phase()));
            }
            let mut wake = Instant::now() + self.settings.poll_max;
            for record in open {
                let key = record.key;
                match self.step(record, &mut fresh, &mut polls).await {
                    Ok(()) => {}
                    Err(StepError::Store(e)) => return Err(e),
                    Err(StepError::Provider(e)) => {
                        tracing::warn!(remote = key, error = %e, "provider batch step failed; trying again later");
                        // An ambiguous failure may have done the step: ask before redoing it.
                        fresh.remove(&key);
                        let poll = polls.entry(key).or_insert(Poll {
                            at: Instant::now(),
                            wait: self.settings.poll_min,
                        });
                        poll.at = Instant::now() + poll.wait;
                        poll.wait = (poll.wait * 2).min(self.settings.poll_max);
                    }
                }
                if let Some(poll) = polls.get(&key) {
                    wake = wake.min(poll.at);
                }
            }
            let nap = wake.saturating_duration_since(Instant::now());
            if nap > Duration::ZERO {
                tokio::select! {
                    () = tokio::time::sleep(nap) => {}
                    () = shutdown.stopping() => {}
                }
            }
        }
    }

    /// Shapes and records the waiting lines of `batch`, in provider batches of at most the
    /// configured and the protocol's size. Returns how many lines were left for a live run.
    async fn submit(
        &self,
        batch: &str,
        fresh: &mut HashSet<u64>,
        shutdown: &Listener,
    ) -> Result<u64> {
        let store = self.queue.store();
        let queue = batch.to_owned();
        let ids = store.read(move |txn| waiting_ids_read(txn, &queue)).await?;
        let limits = self.api.limits();
        let max_lines = self.settings.max_lines.min(limits.max_requests).max(1);
        // Room for each line's envelope (custom_id, method, url) and the protocol's own.
        let max_bytes = limits.max_bytes / 10 * 9;
        let mut pending: Vec<(u64, RemoteLine)> = Vec::new();
        let mut bytes = 0usize;
        let mut left = 0u64;
        let mut full = false;
        for chunk in ids.chunks(READ_CHUNK) {
            if shutdown.is_stopping() || full {
                break;
            }
            let wanted = chunk.to_vec();
            let payloads = store
                .read(move |txn| {
                    let table = txn.open_table(tables::JOB_PAYLOADS)?;
                    let mut out = Vec::with_capacity(wanted.len());
                    for id in wanted {
                        if let Some(bytes) = table.get(id)? {
                            out.push((id, bytes.value().to_vec()));
                        }
                    }
                    Ok(out)
                })
                .await?;
            let mut hits = Vec::new();
            // Shaped a few at a time, so their cache lookups share reads; kept in order.
            let mut shaped = futures_util::stream::iter(payloads)
                .map(|(id, payload)| async move { (id, self.shape(&payload).await) })
                .buffered(SHAPING);
            while let Some((id, shape)) = shaped.next().await {
                match shape? {
                    // The live handler names what is wrong with it, or runs its steps.
                    Shape::Live => left += 1,
                    Shape::Cached(hit) => hits.push((id, hit)),
                    // The cap is reached: this line and the rest stay waiting.
                    Shape::Send(_) if full => {}
                    Shape::Send(line) => {
                        match self.reserve(&line.body) {
                            Some(reservation) => self.hold(id, reservation),
                            None => {
                                full = true;
                                continue;
                            }
                        }
                        let size = line.body.len() + 160;
                        if !pending.is_empty()
                            && (pending.len() >= max_lines || bytes + size > max_bytes)
                        {
                            self.record(batch, std::mem::take(&mut pending), fresh)
                                .await?;
                            bytes = 0;
                        }
                        bytes += size;
                        pending.push((id, line));
                    }
                }
            }
            self.complete_hits(hits).await?;
        }
        if !pending.is_empty() {
            self.record(batch, pending, fresh).await?;
        }
        Ok(left)
    }

    /// Reserves a line's worst case at the live price (an upper bound of its batch price
    /// whatever the discount); `None` when it does not fit (the breaker is then open with
    /// the reason).
    fn reserve(&self, body: &str) -> Option<Reservation> {
        let gateway = &self.engine.gateway;
        let body: serde_json::Value = serde_json::from_str(body).ok()?;
        gateway.reserve(&body).ok()
    }

    /// What to do with one waiting line.
    async fn shape(&self, payload: &[u8]) -> Result<Shape> {
        let Ok(job) = codec::decode::<ChatJob>(payload) else {
            return Ok(Shape::Live);
        };
        // A provider batch holds one endpoint: other endpoints' lines run live.
        if job.api != crate::llm::Api::ChatCompletions {
            return Ok(Shape::Live);
        }
        let store = self.queue.store();
        let strategy = match self.engine.strategy_for(store, &job).await? {
            Ok(s) if s.execution() == Execution::OneCall => s,
            _ => return Ok(Shape::Live),
        };
        let Shaped { body, memory } =
            match single::shape(&self.engine, store, &job, strategy).await? {
                Ok(shaped) => shaped,
                Err(_) => return Ok(Shape::Live),
            };
        let mut cached = self.engine.gateway.cached(&body).await?;
        if let Some((outcome, _)) = cached.as_ref().filter(|_| job.structured()) {
            // A cached reply that fails its check is no answer: the line is sent again.
            match Required::of(store, &job.body, job.validate.as_deref()).await? {
                Ok(r) if r.violation(&outcome.response).is_some() => cached = None,
                Ok(_) => {}
                Err(_) => return Ok(Shape::Live),
            }
        }
        if let Some((outcome, hit)) = cached {
            return Ok(Shape::Cached(Box::new(CachedLine {
                job,
                strategy,
                memory,
                outcome,
                hit,
            })));
        }
        let text = serde_json::to_string(&body)
            .map_err(|e| Error::Task(format!("cannot write a request body: {e}")))?;
        Ok(Shape::Send(RemoteLine {
            body: text,
            strategy: strategy.name().to_string(),
            used_experiences: memory.used_experiences,
            used_rules: memory.used_rules,
        }))
    }

    /// Records one provider batch of `lines` with their leases.
    async fn record(
        &self,
        batch: &str,
        lines: Vec<(u64, RemoteLine)>,
        fresh: &mut HashSet<u64>,
    ) -> Result<()> {
        let (queue, protocol) = (batch.to_owned(), self.api.protocol().as_str().to_owned());
        let recorded = self
            .queue
            .store()
            .write(move |txn| records::record_in(txn, &queue, &protocol, &lines, now_ms()))
            .await?;
        if let Some((record, _)) = recorded {
            tracing::info!(remote = record.key, lines = record.lines, tag = %record.tag, "provider batch recorded");
            fresh.insert(record.key);
        }
        Ok(())
    }

    /// Completes the lines the cache answered while submitting, as a live run would.
    async fn complete_hits(&self, hits: Vec<(u64, Box<CachedLine>)>) -> Result<()> {
        if hits.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = hits.iter().map(|(id, _)| *id).collect();
        let owner = format!("pid-{}-cache", std::process::id());
        let expires =
            now_ms().saturating_add(u64::try_from(self.lease_len.as_millis()).unwrap_or(u64::MAX));
        let leases = self
            .queue
            .store()
            .write(move |txn| lease_ids_in(txn, &ids, &owner, expires))
            .await?;
        let mut by_id: HashMap<u64, Box<CachedLine>> = hits.into_iter().collect();
        let mut running = FuturesUnordered::new();
        for lease in leases {
            let Some(line) = by_id.remove(&lease.job.id) else {
                continue;
            };
            let ctx = self.ctx(lease);
            running.push(async move {
                let CachedLine {
                    job,
                    strategy,
                    memory,
                    outcome,
                    hit,
                } = *line;
                let reply = Reply {
                    strategy,
                    memory,
                    hit,
                    cache_write: None,
                    latency: Duration::ZERO,
                    provider_batch: None,
                };
                single::complete(&self.engine, &ctx, &job, outcome, reply).await
            });
            if running.len() >= COMPLETING {
                if let Some(done) = running.next().await {
                    done?;
                }
            }
        }
        while let Some(done) = running.next().await {
            done?;
        }
        Ok(())
    }

    fn ctx(&self, lease: Lease) -> JobCtx {
        JobCtx::new(
            lease,
            self.queue.clone(),
            Arc::clone(&self.stats),
            self.lease_len,
        )
    }

    /// Moves one open record one step on.
    async fn step(
        &self,
        record: RemoteRecord,
        fresh: &mut HashSet<u64>,
        polls: &mut HashMap<u64, Poll>,
    ) -> std::result::Result<(), StepError> {
        let key = record.key;
        if matches!(record.phase, Phase::Recorded | Phase::Staged) && !fresh.contains(&key) {
            // This process did not do the last step: the provider may have it unrecorded.
            let mut found = self
                .api
                .find(&record.tag, record.created_at / 1000, lines(&record))
                .await?;
            fresh.insert(key);
            if let Match::TimeAndCount { candidates } = found.matched {
                // No tag at this provider: a batch another record holds is not this one.
                let taken = self.claimed(key).await?;
                if found.batch.as_ref().is_some_and(|b| taken.contains(&b.id)) {
                    found.batch = None;
                }
                if candidates > 1 {
                    tracing::warn!(remote = key, candidates, "several provider batches fit an interrupted submission by time and size; taking the earliest");
                }
            }
            let mut next = record.clone();
            if let Some(remote) = found.batch {
                tracing::info!(remote = key, id = %remote.id, "found the provider batch an interrupted run created");
                next.phase = Phase::Started;
                next.remote_id = Some(remote.id);
            } else if let (Some(staged), Phase::Recorded) = (found.staged, record.phase) {
                tracing::info!(remote = key, staged = %staged, "found the input an interrupted run staged");
                next.phase = Phase::Staged;
                next.staged = Some(staged);
            } else {
                return Box::pin(self.step(record, fresh, polls)).await;
            }
            self.put(next).await?;
            return Ok(());
        }
        match record.phase {
            Phase::Recorded => {
                let requests = self.requests(key).await?;
                match self.api.stage(&record.tag, &requests).await? {
                    Some(staged) => {
                        let mut next = record;
                        next.phase = Phase::Staged;
                        next.staged = Some(staged);
                        self.put(next).await?;
                    }
                    // Nothing to stage (Anthropic): the batch is created with its requests.
                    None => self.start(record, &requests).await?,
                }
            }
            Phase::Staged => {
                let requests = self.requests(key).await?;
                self.start(record, &requests).await?;
            }
            Phase::Started => {
                let poll = polls.entry(key).or_insert(Poll {
                    at: Instant::now(),
                    wait: self.settings.poll_min,
                });
                if poll.at > Instant::now() {
                    return Ok(());
                }
                poll.at = Instant::now() + poll.wait;
                poll.wait = (poll.wait * 2).min(self.settings.poll_max);
                let Some(id) = record.remote_id.clone() else {
                    return Err(StepError::Store(Error::Task(format!(
                        "provider batch {key} is started without an id"
                    ))));
                };
                let remote = self.api.get(&id).await?;
                let mut seen = record.clone();
                seen.remote_state = Some(remote.state.as_str().to_owned());
                seen.counts = (
                    remote.counts.succeeded,
                    remote.counts.failed,
                    remote.counts.total.max(record.lines),
                );
                if remote.state.is_ended() {
                    self.collect(seen, remote).await?;
                    polls.remove(&key);
                } else if seen != record {
                    self.put(seen).await?;
                }
            }
            Phase::Collected => {}
        }
        Ok(())
    }

    /// Creates the provider batch and records its id.
    async fn start(
        &self,
        record: RemoteRecord,
        requests: &[RemoteRequest],
    ) -> std::result::Result<(), StepError> {
        let remote = self
            .api
            .start(&record.tag, record.staged.as_deref(), requests)
            .await?;
        tracing::info!(remote = record.key, id = %remote.id, lines = requests.len(), "provider batch started");
        let mut next = record;
        next.phase = Phase::Started;
        next.remote_id = Some(remote.id);
        next.remote_state = Some(remote.state.as_str().to_owned());
        self.put(next).await?;
        Ok(())
    }

    /// The record's requests as they go on the wire (the model filled in), in job order.
    async fn requests(&self, key: u64) -> Result<Vec<RemoteRequest>> {
        let lines = self
            .queue
            .store()
            .read(move |txn| records::lines_read(txn, key))
            .await?;
        let client = self.engine.gateway.client();
        let mut out = Vec::with_capacity(lines.len());
        for (id, line) in lines {
            let value: serde_json::Value = serde_json::from_str(&line.body)
                .map_err(|e| Error::Task(format!("stored request of job {id} is not JSON: {e}")))?;
            let body = client
                .prepare_body(&value)
                .map_err(|e| Error::Task(format!("stored request of job {id}: {e}")))?;
            out.push(RemoteRequest {
                custom_id: custom_id(id),
                body,
            });
        }
        Ok(out)
    }

    /// Provider batch ids other records than `key` hold.
    async fn claimed(&self, key: u64) -> Result<HashSet<String>> {
        self.queue
            .store()
            .read(move |txn| {
                Ok(records::all_read(txn, None)?
                    .into_iter()
                    .filter(|r| r.key != key)
                    .filter_map(|r| r.remote_id)
                    .collect())
            })
            .await
    }

    async fn put(&self, record: RemoteRecord) -> Result<()> {
        self.queue
            .store()
            .write(move |txn| records::put_in(txn, &record))
            .await
    }

    /// Completes the jobs of an ended provider batch from its results; lines without one go
    /// back to the queue (or end cancelled, if the user cancelled the batch). Safe to run
    /// again after a kill: a job already ended is no longer the record's and is skipped.
    async fn collect(
        &self,
        record: RemoteRecord,
        remote: RemoteBatch,
    ) -> std::result::Result<(), StepError> {
        self.refused(&record, &remote).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RemoteResult>();
        let download = async move {
            let mut send = |result: RemoteResult| {
                tx.send(result)
                    .map_err(|_| LlmError::Config("the result consumer stopped".into()))
            };
            self.api.results(&remote, &mut send).await
        };
        let consume = async {
            let mut running = FuturesUnordered::new();
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some(first) => {
                            // What arrived meanwhile is looked up in the same read.
                            let mut results = vec![first];
                            while results.len() < READ_CHUNK {
                                match rx.try_recv() {
                                    Ok(more) => results.push(more),
                                    Err(_) => break,
                                }
                            }
                            for (held, outcome) in self.held(&record, results).await? {
                                running.push(self.finish_one(&record, held, outcome));
                            }
                        }
                        None => break,
                    },
                    Some(done) = running.next(), if running.len() >= COMPLETING => done?,
                }
            }
            while let Some(done) = running.next().await {
                done?;
            }
            Ok::<(), Error>(())
        };
        let (downloaded, consumed) = tokio::join!(download, consume);
        consumed?;
        downloaded?;
        self.end_missing(&record).await?;
        let done = record.clone();
        self.queue
            .store()
            .write(move |txn| records::collected_in(txn, &done))
            .await?;
        tracing::info!(remote = record.key, "provider batch collected");
        Ok(())
    }

    /// Fails the lines the provider's validation named (1-based lines of the uploaded input,
    /// which holds the record's lines in job order): trying them again cannot help.
    async fn refused(&self, record: &RemoteRecord, remote: &RemoteBatch) -> Result<()> {
        let named: Vec<(u64, String, String)> = remote
            .errors
            .iter()
            .filter_map(|e| Some((e.line?, e.code.clone(), e.message.clone())))
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        let (key, tag) = (record.key, record.tag.clone());
        let leases = self
            .queue
            .store()
            .read(move |txn| {
                let whole = Whole::open(txn)?;
                let lines = txn.open_table(tables::REMOTE_LINES)?;
                let ids = lines
                    .range((key, 0)..=(key, u64::MAX))?
                    .map(|row| row.map(|(k, _)| k.value().1))
                    .collect::<std::result::Result<Vec<u64>, _>>()?;
                let mut out = Vec::new();
                for (line, code, message) in named {
                    let Some(&id) = usize::try_from(line.saturating_sub(1))
                        .ok()
                        .and_then(|i| ids.get(i))
                    else {
                        continue;
                    };
                    if let Some(lease) = records::lease_read(&whole, id, &tag)? {
                        out.push((lease, code, message));
                    }
                }
                Ok(out)
            })
            .await?;
        for (lease, code, message) in leases {
            let failure = FailureRecord::new(
                &code,
                format!("the provider refused this line of its batch: {message}"),
            );
            self.ctx(lease).fail(&failure, Failure::Fatal).await?;
        }
        Ok(())
    }

    /// The jobs of `results` the record still holds, each with its line and its outcome, in
    /// one read. Jobs already ended (an earlier collect, a cancel by hand) are left out.
    async fn held(
        &self,
        record: &RemoteRecord,
        results: Vec<RemoteResult>,
    ) -> Result<Vec<((Lease, RemoteLine), Outcome)>> {
        let (key, tag) = (record.key, record.tag.clone());
        self.queue
            .store()
            .read(move |txn| {
                let whole = Whole::open(txn)?;
                let mut out = Vec::with_capacity(results.len());
                for result in results {
                    let Some(id) = job_of(&result.custom_id) else {
                        tracing::warn!(custom_id = %result.custom_id, "a result that is not one of ours; ignored");
                        continue;
                    };
                    let lease = records::lease_read(&whole, id, &tag)?;
                    let line = records::line_read(txn, key, id)?;
                    if let Some(held) = lease.zip(line) {
                        out.push((held, result.outcome));
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Ends one job from its result.
    async fn finish_one(
        &self,
        record: &RemoteRecord,
        (lease, line): (Lease, RemoteLine),
        outcome: Outcome,
    ) -> Result<()> {
        let id = lease.job.id;
        // Dropped unsettled unless the line was answered: a failed line costs nothing.
        let reservation = self.release(id);
        let ctx = self.ctx(lease);
        let job = match codec::decode::<ChatJob>(&ctx.job().payload) {
            Ok(job) => job,
            Err(e) => {
                let failure =
                    FailureRecord::new("bad_payload", format!("cannot read the job: {e}"));
                return ctx.fail(&failure, Failure::Fatal).await;
            }
        };
        match outcome {
            Outcome::Succeeded { body } => {
                self.answered(record, &ctx, &job, &line, body, reservation)
                    .await
            }
            Outcome::HttpError { status, body } => {
                let err = api_error(status, &body);
                let how = if err.is_retryable() {
                    Failure::Retryable
                } else {
                    Failure::Fatal
                };
                ctx.fail(&FailureRecord::of_llm_error(&err), how).await
            }
            Outcome::Failed { code, message } => {
                let failure = FailureRecord::new(&code, format!("the provider's batch: {message}"));
                ctx.fail(&failure, Failure::Retryable).await
            }
            Outcome::Expired => {
                let failure = FailureRecord::new(
                    "batch_expired",
                    "the provider's batch expired before this line ran",
                );
                ctx.fail(&failure, Failure::Retryable).await
            }
            Outcome::Cancelled if record.cancel_requested => self.queue.cancel(id).await,
            Outcome::Cancelled => {
                let failure = FailureRecord::new(
                    "batch_cancelled",
                    "the provider's batch was cancelled before this line ran",
                );
                ctx.fail(&failure, Failure::Retryable).await
            }
        }
    }

    /// Completes a job from its provider answer, as a live answer would be.
    async fn answered(
        &self,
        record: &RemoteRecord,
        ctx: &JobCtx,
        job: &ChatJob,
        line: &RemoteLine,
        body: Bytes,
        reservation: Option<Reservation>,
    ) -> Result<()> {
        let sent: serde_json::Value = match serde_json::from_str(&line.body) {
            Ok(sent) => sent,
            Err(e) => {
                let failure =
                    FailureRecord::new("bad_payload", format!("stored request is not JSON: {e}"));
                return ctx.fail(&failure, Failure::Fatal).await;
            }
        };
        let (outcome, cache_write) = match self.engine.gateway.adopt(&sent, 200, None, body) {
            Ok(adopted) => adopted,
            Err(e) => return ctx.fail_call(e).await,
        };
        if let Some(reservation) = reservation {
            let asked = sent
                .get("model")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            let cost = self.engine.gateway.cost_of(asked, &outcome.response, true);
            reservation.settle(cost.unwrap_or(Money::ZERO));
        }
        let strategy = match line.strategy.parse::<Strategy>() {
            Ok(strategy) => strategy,
            Err(message) => {
                return ctx
                    .fail(&FailureRecord::new("bad_payload", message), Failure::Fatal)
                    .await
            }
        };
        let reply = Reply {
            strategy,
            memory: MemorySection {
                text: String::new(),
                used_experiences: line.used_experiences.clone(),
                used_rules: line.used_rules.clone(),
            },
            hit: Hit::Miss,
            cache_write,
            latency: Duration::from_millis(now_ms().saturating_sub(record.created_at)),
            provider_batch: record.remote_id.clone(),
        };
        single::complete(&self.engine, ctx, job, outcome, reply).await
    }

    /// Lines of `record` still its own after its results: the provider left them out.
    async fn end_missing(&self, record: &RemoteRecord) -> Result<()> {
        let (key, tag) = (record.key, record.tag.clone());
        let missing = self
            .queue
            .store()
            .read(move |txn| {
                let whole = Whole::open(txn)?;
                let lines = txn.open_table(tables::REMOTE_LINES)?;
                let mut out = Vec::new();
                for row in lines.range((key, 0)..=(key, u64::MAX))? {
                    let id = row?.0.value().1;
                    if let Some(lease) = records::lease_read(&whole, id, &tag)? {
                        out.push(lease);
                    }
                }
                Ok(out)
            })
            .await?;
        if !missing.is_empty() {
            tracing::warn!(
                remote = key,
                lines = missing.len(),
                "the provider returned no result for some lines"
            );
        }
        for lease in missing {
            let id = lease.job.id;
            if record.cancel_requested {
                self.queue.cancel(id).await?;
                continue;
            }
            let failure = FailureRecord::new(
                "missing_result",
                format!(
                    "the provider's batch {} ended ({}) without a result for this line",
                    record.remote_id.as_deref().unwrap_or("?"),
                    record.remote_state.as_deref().unwrap_or("?")
                ),
            );
            self.ctx(lease).fail(&failure, Failure::Retryable).await?;
        }
        Ok(())
    }

    /// Publishes what the open records look like.
    fn show(&self, open: &[RemoteRecord]) {
        let mut states: Vec<(String, usize)> = Vec::new();
        let mut view = RemoteView {
            open: open.len(),
            ..RemoteView::default()
        };
        for record in open {
            view.lines += record.lines;
            view.succeeded += record.counts.0;
            view.failed += record.counts.1;
            let state = record
                .remote_state
                .clone()
                .unwrap_or_else(|| record.phase.as_str().to_owned());
            match states.iter_mut().find(|(s, _)| *s == state) {
                Some((_, n)) => *n += 1,
                None => states.push((state, 1)),
            }
        }
        view.states = states
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.watch.set(view);
    }
}

/// A line the cache answered while submitting.
struct CachedLine {
    job: ChatJob,
    strategy: Strategy,
    memory: MemorySection,
    outcome: ChatOutcome,
    hit: Hit,
}

enum Shape {
    /// Leave it waiting for a live run.
    Live,
    Cached(Box<CachedLine>),
    Send(RemoteLine),
}

/// Why a step did not happen: the provider (try again later) or the store (stop).
#[derive(Debug)]
enum StepError {
    Provider(LlmError),
    Store(Error),
}

impl From<LlmError> for StepError {
    fn from(e: LlmError) -> Self {
        StepError::Provider(e)
    }
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        StepError::Store(e)
    }
}

/// A line's HTTP failure inside a provider batch, as a live call's would read.
fn api_error(status: u16, body: &[u8]) -> LlmError {
    let parsed = ApiErrorBody::parse(body);
    let excerpt = || {
        String::from_utf8_lossy(body)
            .chars()
            .take(300)
            .collect::<String>()
    };
    let (error_type, code, message) = match parsed {
        Some(p) => (p.error_type, p.code, p.message.unwrap_or_else(excerpt)),
        None => (None, None, excerpt()),
    };
    LlmError::Api(Box::new(ApiError {
        status,
        request_id: None,
        error_type,
        code,
        message,
        body: Bytes::copy_from_slice(body),
        retry_after: None,
        should_retry: None,
    }))
}

/// A record's line count, as the provider counts requests.
fn lines(record: &RemoteRecord) -> usize {
    usize::try_from(record.lines).unwrap_or(usize::MAX)
}
