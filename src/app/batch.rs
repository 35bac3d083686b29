//! The batch use case: read and check a file, enqueue its lines idempotently, drain them,
//! write the output in input order and record the run.
//!
//! It runs in steps so that a bad file changes nothing (not even a new database) and a
//! caller can show progress: [`read`] (before the database opens), [`prepare`] (models
//! checked, lines enqueued) and [`Prepared::run`] (the drain and the export).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::retry::{matching_read, RetryFilter};
use super::runs::{self, RunRecord};
use super::{App, Connected, SIMULATED};
use crate::batch::export::{export_read, JsonlFile};
use crate::batch::input::{self, items, scan_file, BatchItem, InputError, Scan};
use crate::batch::output::failure_line;
use crate::batch::shard::{self, Shard};
use crate::batch::{lines, with_suffix};
use crate::chat::prefill::{self, Prefill, Prefilled};
use crate::chat::remote::{self, RemoteEnd, RemoteWatch};
use crate::chat::structured::SchemaFile;
use crate::chat::{self, ChatJob};
use crate::clock::now_ms;
use crate::codec;
use crate::cost::Money;
use crate::error::{Error, Result};
use crate::llm::batch_api::Protocol;
use crate::memory::Strategy;
use crate::queue::{
    enqueue_answered_in, find_by_dedup_read, usage_read, waiting_ids_read, JobState, NewJob, Usage,
};
use crate::runner::{DrainEnd, FailureRecord, RunCounts};
use crate::shutdown::Listener;
use crate::store::tables;

/// Jobs enqueued per transaction: big files go in a few large commits.
const ENQUEUE_CHUNK: usize = 5_000;

/// Most invalid lines named in the error before "... and N more".
const SHOWN_ERRORS: usize = 20;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// OpenAI batch request lines or the short form.
    pub input: PathBuf,
    /// Output file (default: INPUT with `.out.jsonl`).
    pub output: Option<PathBuf>,
    /// Errors file (default: INPUT with `.errors.jsonl`, written when there are errors).
    pub errors: Option<PathBuf>,
    /// Batch name (default: [`batch_name`] of the input).
    pub batch: Option<String>,
    /// Run the valid lines and record the invalid ones as errors, instead of refusing.
    pub skip_invalid: bool,
    /// Strategy of lines that name none (else the bandit chooses).
    pub strategy: Option<Strategy>,
    /// Memory in prompts of lines that do not say.
    pub memory: bool,
    /// Send the lines that failed in earlier runs again (attempts reset).
    pub retry_failed: bool,
    /// Run a batch that ran against another endpoint again, against this one (every line
    /// is sent and paid for again).
    pub rerun: bool,
    /// Run only the lines of this shard (`--shard K/N`); every line is still validated.
    pub shard: Option<Shard>,
    /// One call per line, or the provider's batch API.
    pub via: Via,
    /// The most the batch may cost in all (`--max-cost`): earlier runs' spend counts
    /// (docs/cost.md).
    pub max_cost: Option<Money>,
    /// A JSON Schema every chat line's reply must match (`--validate`, docs/structured-output.md).
    pub validate: Option<PathBuf>,
}

/// How the lines are sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Via {
    /// One call per line (`--via live`).
    #[default]
    Live,
    /// Through the provider's batch API (`--via provider`): half price, hours of latency.
    Provider(ProviderOptions),
}

/// `--via provider` settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderOptions {
    /// Wire protocol; by default from the base URL's host.
    pub api: Option<Protocol>,
    /// Lines the provider did not answer (failed, expired, missing) and lines of strategies
    /// that take several calls run live afterwards.
    pub fallback_live: bool,
}

/// What the provider batches of a run came to.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSummary {
    pub protocol: Protocol,
    /// Provider batches still running (detached by a signal).
    pub open: usize,
    /// Lines not sent through the provider: they need a live run (`--fallback live`).
    pub left_for_live: u64,
    /// Whether the live fallback ran.
    pub fell_back: bool,
}

/// Where a prepared batch starts from: jobs already finished before this run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    /// What its answers cost so far.
    pub cost: Money,
    /// The cap of this run, if any.
    pub cap: Option<Money>,
}

/// A batch enqueued and ready to drain.
pub struct Prepared {
    pub batch: String,
    pub output: PathBuf,
    pub errors: PathBuf,
    /// Whether the errors file was asked for (it is then written even when empty).
    errors_asked: bool,
    /// Requests in the file (valid lines).
    pub requests: usize,
    /// Jobs this run added (the others were enqueued, and maybe answered, before).
    pub inserted: usize,
    /// Failed lines of earlier runs sent again (`retry_failed`).
    pub retried: usize,
    /// Waiting jobs of lines no longer in the file (removed or edited), cancelled unpaid.
    pub cancelled: usize,
    pub baseline: Baseline,
    invalid: Vec<InputError>,
    via: Via,
    watch: Arc<RemoteWatch>,
}

/// How a batch run ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub end: DrainEnd,
    /// Requests of the file (distinct lines).
    pub requests: usize,
    pub answered: usize,
    pub failed: usize,
    pub pending: usize,
    /// Lines in the errors file (failed requests and invalid lines).
    pub error_lines: usize,
    pub output: PathBuf,
    pub errors: PathBuf,
    /// This run's counters.
    pub counts: RunCounts,
    /// Calls abandoned in flight by a shutdown past the drain deadline (the provider may
    /// bill them; their jobs are back in the queue).
    pub abandoned_calls: u64,
    pub requests_sent: u64,
    /// Set when the lines went through the provider's batch API.
    pub remote: Option<RemoteSummary>,
    /// What this run's answers cost, and how many it could not price.
    pub cost: (Money, u64),
    /// The batch's totals after the run (cost of every run, unpriced answers).
    pub usage: Usage,
    /// The cap of this run, if any.
    pub cap: Option<Money>,
}

/// Checks the whole file in one streaming pass (`default_model` fills lines that name
/// none). A bad line fails the batch, unless `skip_invalid`. Nothing of the file is kept
/// but what [`prepare`] needs to read its good lines again.
pub fn read(opts: &BatchOptions, default_model: &str) -> Result<Scan> {
    let phase = std::time::Instant::now();
    let (output, errors) = files(opts);
    for (what, path, other, other_what) in [
        ("output", &output, &opts.input, "input"),
        ("errors", &errors, &opts.input, "input"),
        ("errors", &errors, &output, "output"),
    ] {
        if same_file(path, other) {
            return Err(Error::Invalid(format!(
                "the {what} file {} is the {other_what} file; name another one",
                path.display()
            )));
        }
    }
    let mut scan = scan_file(&opts.input, default_model)
        .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", opts.input.display())))?;
    if let Some(path) = &opts.validate {
        scan.validate = Some(validate_schema(opts, path, &scan)?);
    }
    if !scan.errors.is_empty() && !opts.skip_invalid {
        return Err(Error::Invalid(invalid_report(&scan.errors)));
    }
    if scan.valid == 0 && scan.errors.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no requests in the file",
            opts.input.display()
        )));
    }
    tracing::info!(lines = scan.valid, elapsed = ?phase.elapsed(), "input checked");
    Ok(scan)
}

/// Reads the `--validate` schema and checks that it can apply to the file: chat lines only,
/// none naming a strategy with a reply format of its own (nor `--strategy`).
fn validate_schema(opts: &BatchOptions, path: &Path, scan: &Scan) -> Result<SchemaFile> {
    let schema = SchemaFile::read(path)?;
    let check = format!("the --validate schema {}", path.display());
    if let Some(conflict) = opts
        .strategy
        .and_then(|s| input::strategy_conflict(s.name(), &check))
    {
        return Err(Error::Invalid(format!("--strategy {conflict}")));
    }
    let at = |line: usize, field: &str, message: String| {
        let e = InputError {
            file: scan.name.clone(),
            line,
            field: Some(field.into()),
            message,
        };
        Error::Invalid(e.to_string())
    };
    for (strategy, &line) in &scan.strategies {
        if let Some(conflict) = input::strategy_conflict(strategy, &check) {
            return Err(at(line, "strategy", conflict));
        }
    }
    if let Some((line, api)) = scan.first_other {
        let message = format!(
            "--validate checks replies of chat completions; this line goes to {}",
            api.url()
        );
        return Err(at(line, "url", message));
    }
    Ok(schema)
}

/// What an enqueue pass did.
struct Enqueued {
    /// The scan, handed back by the reading thread.
    scan: Scan,
    /// Requests of the file (of its shard).
    requests: u64,
    /// Jobs new in the queue.
    inserted: usize,
    /// New jobs the disk cache answered as they were enqueued (see `chat::prefill`).
    prefilled: u64,
    /// Waiting jobs of lines no longer in the file, to cancel.
    stale: Vec<u64>,
}

/// Reads the file again chunk by chunk and enqueues its lines with their line entries, each
/// chunk in one commit. The input's key is stored with the last commit.
async fn enqueue_file(
    app: &App,
    opts: &BatchOptions,
    scan: Scan,
    batch: &str,
    connected: &Connected,
    existed: bool,
    input: &[u8; 32],
) -> Result<Enqueued> {
    let phase = std::time::Instant::now();
    let endpoint = connected.endpoint();
    // With no row in the disk cache nothing can be answered at enqueue: a first run spares
    // every line the request's shaping, key and lookup.
    let rows = app.store.read(crate::cache::len_read).await?;
    let prefill = (rows > 0).then(|| Arc::new(Prefill::new(&connected.chat)));
    let stats = Arc::clone(connected.runner.stats());
    // The reading thread parses, keys and encodes; this task commits. Two chunks in flight
    // keep both busy with bounded memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Chunk>>(2);
    let reader = {
        let (opts, batch, endpoint) = (opts.clone(), batch.to_string(), endpoint.to_string());
        let model = app.config.model.clone();
        let prefill = prefill.clone();
        tokio::task::spawn_blocking(move || {
            let prefill = prefill.as_deref();
            let sent = read_chunks(&opts, &model, &scan, &batch, &endpoint, prefill, &tx);
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(e));
            }
            scan
        })
    };
    let config = *app.queue.config();
    let (mut inserted, mut prefilled) = (0, 0);
    let mut requests = 0u64;
    while let Some(chunk) = rx.recv().await {
        let mut chunk = chunk?;
        resolve_legacy(app, batch, &mut chunk).await?;
        requests = chunk.first + chunk.jobs.len() as u64;
        let b = batch.to_string();
        let now = now_ms();
        let (new, answered) = app
            .store
            .write(move |txn| {
                let known = prefill::known(&chunk.answered, chunk.jobs.len());
                let done = enqueue_answered_in(txn, &config, &chunk.jobs, &known, now)?;
                let ids: Vec<u64> = done.iter().map(|e| e.id).collect();
                lines::set_many_in(txn, &b, chunk.first, &ids)?;
                // Only jobs this commit inserted: an older job of the line keeps its state.
                let inserted: Vec<(u64, &Prefilled)> = chunk
                    .answered
                    .iter()
                    .filter_map(|(i, p)| done.get(*i).filter(|e| e.inserted).map(|e| (e.id, p)))
                    .collect();
                let answered = prefill::record_in(txn, &b, &inserted, now)?;
                Ok((done.iter().filter(|e| e.inserted).count(), answered))
            })
            .await?;
        inserted += new;
        prefilled += answered;
        stats.answered_from_cache(answered);
    }
    let scan = reader
        .await
        .map_err(|e| Error::Task(format!("input reader failed: {e}")))?;
    let (b, key) = (batch.to_string(), input.to_vec());
    app.store
        .write(move |txn| {
            lines::truncate_in(txn, &b, requests)?;
            txn.open_table(tables::BATCH_INPUTS)?
                .insert(b.as_str(), key.as_slice())?;
            Ok(())
        })
        .await?;
    tracing::info!(inserted, prefilled, elapsed = ?phase.elapsed(), "enqueued");

    // Waiting jobs of lines no longer in the file are cancelled (neither paid for nor
    // hidden); failed ones of this file go again if asked.
    let stale = if existed {
        let b = batch.to_string();
        app.store
            .read(move |txn| {
                let listed = txn.open_table(tables::JOB_LINES)?;
                let mut stale = Vec::new();
                for id in waiting_ids_read(txn, &b)? {
                    if !lines::is_listed(&listed, id)? {
                        stale.push(id);
                    }
                }
                Ok(stale)
            })
            .await?
    } else {
        Vec::new()
    };
    Ok(Enqueued {
        scan,
        requests,
        inserted,
        prefilled,
        stale,
    })
}

/// What a batch's jobs are made of: the file's bytes, the endpoint, the default model and
/// the run options that go into jobs. Equal keys make equal jobs and line entries.
fn input_key(opts: &BatchOptions, scan: &Scan, endpoint: &str, model: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let made_of = serde_json::json!({
        "version": 1,
        "endpoint": endpoint,
        "model": model,
        "strategy": opts.strategy.map(|s| s.name()),
        "memory": opts.memory,
        "shard": opts.shard.map(|s| s.to_string()),
        "validate": scan.validate.as_ref().map(|v| &v.digest),
    });
    let mut h = Sha256::new();
    h.update(scan.digest);
    h.update(made_of.to_string().as_bytes());
    h.finalize().into()
}

/// Jobs of one chunk of the file, made on the reading thread.
struct Chunk {
    /// Index in the file's requests of the first one.
    first: u64,
    jobs: Vec<NewJob>,
    /// (index in `jobs`, the key an earlier version gave the line, its chat job), for
    /// lines whose key changed between versions.
    legacy: Vec<(usize, String, ChatJob)>,
    /// (index in `jobs`, its answer) for lines the disk cache answers already.
    answered: Vec<(usize, Prefilled)>,
}

/// Checks the models the lines name (unless simulated) and enqueues the lines, reading the
/// file again chunk by chunk: each chunk's jobs and their line entries go in one commit.
pub async fn prepare(
    app: &App,
    connected: &Connected,
    opts: &BatchOptions,
    scan: Scan,
) -> Result<Prepared> {
    let phase = std::time::Instant::now();
    if connected.sim.is_none() {
        check_models(connected, &scan.models).await?;
    }
    if opts.max_cost.is_some() {
        check_prices(connected, &scan.models)?;
        // The encodings load once, here, off the async runtime.
        tokio::task::spawn_blocking(crate::cost::tokens::warm_up)
            .await
            .map_err(|e| Error::Task(format!("loading the token encodings failed: {e}")))?;
    }
    let batch = opts
        .batch
        .clone()
        .unwrap_or_else(|| shard::batch_name(&opts.input, opts.shard));
    let endpoint = connected.endpoint().to_string();
    claim_endpoint(app, &batch, &endpoint, opts.rerun).await?;
    let existed = app.queue.counts(Some(&batch)).await?.total() > 0;
    let input = input_key(opts, &scan, &endpoint, &app.config.model);
    let same_input = {
        let b = batch.clone();
        let stored = app
            .store
            .read(move |txn| {
                let table = txn.open_table(tables::BATCH_INPUTS)?;
                Ok(table.get(b.as_str())?.map(|v| v.value().to_vec()))
            })
            .await?;
        existed && stored.as_deref() == Some(input.as_slice())
    };
    // The schema kept, and a pass that does not finish leaves no key behind (a rerun of an
    // unchanged file with no schema writes nothing here).
    if scan.validate.is_some() || !same_input {
        let (b, schema) = (batch.clone(), scan.validate.clone());
        app.store
            .write(move |txn| {
                if let Some(schema) = &schema {
                    schema.put_in(txn)?;
                }
                if !same_input {
                    txn.open_table(tables::BATCH_INPUTS)?.remove(b.as_str())?;
                }
                Ok(())
            })
            .await?;
    }
    let Enqueued {
        scan,
        requests,
        inserted,
        prefilled,
        stale,
    } = if same_input {
        // Every line of this file is enqueued and listed already, under these options.
        let b = batch.clone();
        let requests = app.store.read(move |txn| lines::size_read(txn, &b)).await?;
        tracing::info!(elapsed = ?phase.elapsed(), "input unchanged since its last enqueue");
        Enqueued {
            scan,
            requests,
            inserted: 0,
            prefilled: 0,
            stale: Vec::new(),
        }
    } else {
        enqueue_file(app, opts, scan, &batch, connected, existed, &input).await?
    };
    app.queue.cancel_many(&stale).await?;
    let again = if opts.retry_failed {
        let b = batch.clone();
        app.store
            .read(move |txn| matching_read(txn, &b, &RetryFilter::default()))
            .await?
    } else {
        Vec::new()
    };
    app.queue.retry_many(&again).await?;
    let counts = app.queue.counts(Some(&batch)).await?;
    let b = batch.clone();
    let usage = app.store.read(move |txn| usage_read(txn, &b)).await?;
    if let Some(cap) = opts.max_cost {
        connected.gateway.budget().limit(cap, usage.cost);
    }
    let (output, errors) = files(opts);
    Ok(Prepared {
        output,
        errors,
        errors_asked: opts.errors.is_some(),
        requests: requests as usize,
        inserted,
        retried: again.len(),
        cancelled: stale.len(),
        baseline: Baseline {
            total: requests,
            // Lines answered at enqueue are this run's (its counters have them).
            completed: counts.get(JobState::Completed).saturating_sub(prefilled),
            failed: counts.get(JobState::Discarded) + counts.get(JobState::Cancelled),
            cost: usage.cost,
            cap: opts.max_cost,
        },
        batch,
        invalid: scan.errors,
        via: opts.via.clone(),
        watch: Arc::default(),
    })
}

/// Lines per chunk: one transaction each.
fn read_chunks(
    opts: &BatchOptions,
    default_model: &str,
    scan: &Scan,
    batch: &str,
    endpoint: &str,
    prefill: Option<&Prefill>,
    tx: &tokio::sync::mpsc::Sender<Result<Chunk>>,
) -> Result<()> {
    let unreadable =
        |e: std::io::Error| Error::Invalid(format!("cannot read {}: {e}", opts.input.display()));
    let empty = |first: u64| Chunk {
        first,
        jobs: Vec::with_capacity(ENQUEUE_CHUNK),
        legacy: Vec::new(),
        answered: Vec::new(),
    };
    let mut chunk = empty(0);
    // The chunk's chat jobs, for the cache to answer when the chunk is full.
    let mut asked: Vec<(usize, ChatJob)> = Vec::with_capacity(ENQUEUE_CHUNK);
    // Lines of other shards were checked with the rest (a bad line fails every shard alike)
    // and are skipped here.
    let mine = |item: &std::io::Result<BatchItem>| match (opts.shard, item) {
        (Some(shard), Ok(item)) => shard.contains(&item.custom_id),
        _ => true,
    };
    for (n, item) in items(&opts.input, default_model, scan)
        .map_err(unreadable)?
        .filter(mine)
        .enumerate()
    {
        let item = item.map_err(unreadable)?;
        let job = chat_job(opts, scan, &item);
        let mut new = NewJob::new(batch, chat::KIND, codec::encode(&job)?);
        new.dedup_key = Some(job.dedup_key(endpoint));
        if let Some(key) = job.legacy_dedup_key(endpoint) {
            chunk.legacy.push((chunk.jobs.len(), key, job.clone()));
        }
        if prefill.is_some() {
            asked.push((chunk.jobs.len(), job));
        }
        chunk.jobs.push(new);
        if chunk.jobs.len() == ENQUEUE_CHUNK {
            let mut full = std::mem::replace(&mut chunk, empty(n as u64 + 1));
            full.answered = answers(prefill, &mut asked)?;
            if tx.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.jobs.is_empty() {
        chunk.answered = answers(prefill, &mut asked)?;
        let _ = tx.blocking_send(Ok(chunk));
    }
    Ok(())
}

/// The cache's answers to the jobs `asked` (emptied), when `prefill` is on.
fn answers(
    prefill: Option<&Prefill>,
    asked: &mut Vec<(usize, ChatJob)>,
) -> Result<Vec<(usize, Prefilled)>> {
    let answered = match prefill {
        Some(prefill) => prefill.answers_blocking(asked)?,
        None => Vec::new(),
    };
    asked.clear();
    Ok(answered)
}

/// The chat job of a line: batch options are the defaults of lines that do not say.
fn chat_job(opts: &BatchOptions, scan: &Scan, item: &BatchItem) -> ChatJob {
    let mut job = item.to_job();
    // The run's strategy and memory are about chat; other endpoints' lines go as they are.
    if job.api != crate::llm::Api::ChatCompletions {
        return job;
    }
    job.validate = scan.validate.as_ref().map(|v| v.digest.clone());
    // The run's strategy is for lines whose reply is free text (see `ChatJob::structured`).
    if !job.structured() {
        job.strategy = job
            .strategy
            .or_else(|| opts.strategy.map(|s| s.name().to_string()));
    }
    job.memory = item.memory.unwrap_or(opts.memory);
    job
}

impl Prepared {
    /// Drains the batch until it is done or `shutdown` stops it, then writes the output and
    /// errors files (atomically) and records the run.
    pub async fn run(self, app: &App, connected: &Connected, shutdown: Listener) -> Result<Report> {
        let phase = std::time::Instant::now();
        let started_at = now_ms();
        let (end, remote) = self.send(app, connected, shutdown).await?;
        tracing::info!(elapsed = ?phase.elapsed(), "drained");

        let phase = std::time::Instant::now();
        let written = self.write_files(app).await?;
        tracing::info!(elapsed = ?phase.elapsed(), "exported");
        let counts = connected.runner.stats().snapshot();
        let metrics = connected.client().metrics();
        let run = RunRecord::new(
            &self.batch,
            started_at,
            now_ms(),
            counts,
            &metrics,
            &app.cache.stats(),
        );
        runs::record(&app.store, run).await?;
        let b = self.batch.clone();
        let usage = app.store.read(move |txn| usage_read(txn, &b)).await?;
        Ok(Report {
            end,
            requests: self.requests,
            answered: written.tally.answered,
            failed: written.tally.failed,
            pending: written.tally.pending,
            error_lines: written.error_lines,
            output: self.output,
            errors: self.errors,
            counts,
            abandoned_calls: connected.gateway.unanswered_calls(),
            requests_sent: metrics.requests_sent,
            remote,
            cost: connected.runner.stats().cost(),
            usage,
            cap: self.baseline.cap,
        })
    }
}

impl Prepared {
    /// The provider batches of the run as they are now (for a progress line).
    pub fn remote_watch(&self) -> Arc<RemoteWatch> {
        Arc::clone(&self.watch)
    }

    /// Sends the lines live, or through the provider's batch API and then (if asked) live.
    async fn send(
        &self,
        app: &App,
        connected: &Connected,
        mut shutdown: Listener,
    ) -> Result<(DrainEnd, Option<RemoteSummary>)> {
        let batch = self.batch.clone();
        let open = app
            .store
            .read(move |txn| remote::records::open_read(txn, Some(&batch)))
            .await?;
        let provider = match &self.via {
            Via::Provider(provider) => provider,
            Via::Live if open.is_empty() => {
                return Ok((connected.runner.drain(&self.batch, shutdown).await?, None))
            }
            Via::Live => {
                let lines: u64 = open.iter().map(|r| r.lines).sum();
                return Err(Error::Invalid(format!(
                    "batch {} has {lines} lines in {} provider batches that have not been \
                     collected; run it with --via provider to collect them, or cancel them with \
                     `reasonq jobs cancel --batch {}`",
                    self.batch,
                    open.len(),
                    self.batch
                )));
            }
        };
        let protocol = provider
            .api
            .unwrap_or_else(|| Protocol::for_base_url(&connected.client().config().base_url));
        let run = super::remote_run(app, connected, protocol, Arc::clone(&self.watch))?;
        let mut summary = RemoteSummary {
            protocol,
            open: 0,
            left_for_live: 0,
            fell_back: false,
        };
        match run.run(&self.batch, &mut shutdown).await? {
            RemoteEnd::Detached(phase) => {
                summary.open = self.watch.view().open;
                Ok((DrainEnd::Stopped(phase), Some(summary)))
            }
            RemoteEnd::Collected { left_for_live } => {
                summary.left_for_live = left_for_live;
                // The cap stopped the submission: the lines not submitted stay waiting.
                if let Some(trip) = connected.gateway.stopped() {
                    return Ok((DrainEnd::Halted(trip), Some(summary)));
                }
                if !provider.fallback_live {
                    return Ok((DrainEnd::Finished, Some(summary)));
                }
                summary.fell_back = true;
                let end = connected.runner.drain(&self.batch, shutdown).await?;
                Ok((end, Some(summary)))
            }
        }
    }
}

/// What [`Prepared::write_files`] wrote.
struct Written {
    tally: crate::batch::export::Tally,
    error_lines: usize,
}

impl Prepared {
    /// Writes the output and errors files (atomically), streaming the batch's lines from one
    /// read transaction on the blocking pool. An errors file of an earlier run is rewritten
    /// too, so it never lists lines that have since been answered.
    async fn write_files(&self, app: &App) -> Result<Written> {
        let (batch, output, errors) =
            (self.batch.clone(), self.output.clone(), self.errors.clone());
        let invalid: Vec<String> = self
            .invalid
            .iter()
            .map(|invalid| {
                let failure = FailureRecord::new("invalid_request", invalid.to_string());
                failure_line(None, &format!("line-{}", invalid.line), &failure)
            })
            .collect();
        let keep_errors = self.errors_asked || self.errors.exists();
        app.store
            .read(move |txn| {
                let mut out = JsonlFile::create(&output).map_err(|e| written(&output, e))?;
                let mut errs = JsonlFile::create(&errors).map_err(|e| written(&errors, e))?;
                let tally = export_read(txn, &batch, false, |entry| {
                    if let Some(line) = &entry.line {
                        out.line(line).map_err(|e| written(&output, e))?;
                        if entry.failed {
                            errs.line(line).map_err(|e| written(&errors, e))?;
                        }
                    }
                    Ok(())
                })?;
                for line in &invalid {
                    errs.line(line).map_err(|e| written(&errors, e))?;
                }
                out.commit().map_err(|e| written(&output, e))?;
                let error_lines = errs.len();
                if !errs.is_empty() || keep_errors {
                    errs.commit().map_err(|e| written(&errors, e))?;
                }
                Ok(Written { tally, error_lines })
            })
            .await
    }
}

/// Lines whose key an earlier version computed differently keep that key when the batch
/// holds that same job under it (a line with options, enqueued before the key covered
/// them), so it is not enqueued and paid for again.
async fn resolve_legacy(app: &App, batch: &str, chunk: &mut Chunk) -> Result<()> {
    if chunk.legacy.is_empty() {
        return Ok(());
    }
    let legacy = std::mem::take(&mut chunk.legacy);
    let batch = batch.to_string();
    let found: Vec<(usize, String)> = app
        .store
        .read(move |txn| {
            let mut found = Vec::new();
            for (i, key, job) in legacy {
                if let Some(stored) = find_by_dedup_read(txn, &batch, &key)? {
                    let same = codec::decode::<ChatJob>(&stored.payload)
                        .is_ok_and(|stored| job.same_job(&stored));
                    if same {
                        found.push((i, key));
                    }
                }
            }
            Ok(found)
        })
        .await?;
    for (i, key) in found {
        chunk.jobs[i].dedup_key = Some(key);
    }
    Ok(())
}

/// Records the endpoint `batch` runs against, refusing another real endpoint unless
/// `rerun`: the same file against the same server under another name (`localhost` for
/// `127.0.0.1`, a gateway in front of the provider) would enqueue every line again and pay
/// twice. Switching to or from `--simulate` costs nothing and is allowed.
async fn claim_endpoint(app: &App, batch: &str, endpoint: &str, rerun: bool) -> Result<()> {
    let (b, e) = (batch.to_string(), endpoint.to_string());
    let before = app
        .store
        .read(move |txn| {
            let table = txn.open_table(tables::BATCH_ENDPOINTS)?;
            let found = table.get(b.as_str())?.map(|v| v.value().to_string());
            Ok(found)
        })
        .await?;
    if let Some(old) = &before {
        let free = old == SIMULATED || endpoint == SIMULATED;
        if old != endpoint && !free && !rerun {
            return Err(Error::Invalid(format!(
                "batch {batch} ran against {old}; this run would send every line to {endpoint} \
                 and pay for it again. Name a new batch (--batch NAME), or pass --rerun to \
                 answer it again at {endpoint}"
            )));
        }
    }
    if before.as_deref() != Some(endpoint) {
        let b = batch.to_string();
        app.store
            .write(move |txn| {
                txn.open_table(tables::BATCH_ENDPOINTS)?
                    .insert(b.as_str(), e.as_str())?;
                Ok(())
            })
            .await?;
    }
    Ok(())
}

/// The output and errors files: as given, else beside the input.
fn files(opts: &BatchOptions) -> (PathBuf, PathBuf) {
    let output = opts
        .output
        .clone()
        .unwrap_or_else(|| with_suffix(&opts.input, "out.jsonl"));
    let errors = opts
        .errors
        .clone()
        .unwrap_or_else(|| with_suffix(&opts.input, "errors.jsonl"));
    (output, errors)
}

/// Whether two paths name one file (links and `./` included), existing or not.
fn same_file(a: &Path, b: &Path) -> bool {
    let resolved = |p: &Path| -> Option<PathBuf> {
        if let Ok(full) = std::fs::canonicalize(p) {
            return Some(full);
        }
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
    };
    match (resolved(a), resolved(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A cap needs a price for every model the lines name: the cost of the others is unknown.
fn check_prices(connected: &Connected, models: &BTreeSet<String>) -> Result<()> {
    let prices = connected.gateway.prices();
    let unpriced: Vec<&str> = models
        .iter()
        .map(String::as_str)
        .filter(|m| prices.get(m).is_none())
        .collect();
    if unpriced.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--max-cost cannot bound the cost of {}: no price is known for it; add it under \
         [cost.prices] in reasonq.toml (docs/cost.md)",
        unpriced.join(", ")
    )))
}

/// Checks every model the lines name with one model list request. Endpoints without a model
/// list (404) do not block the batch.
async fn check_models(connected: &Connected, models: &BTreeSet<String>) -> Result<()> {
    match connected
        .client()
        .check_models(models.iter().map(String::as_str))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if e.status() == Some(404) => {
            tracing::warn!("cannot list models at the endpoint; model names not checked");
            Ok(())
        }
        Err(e) => Err(Error::call("model check", e)),
    }
}

fn written(path: &Path, e: std::io::Error) -> Error {
    Error::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn invalid_report(errors: &[InputError]) -> String {
    let mut text: Vec<String> = errors
        .iter()
        .take(SHOWN_ERRORS)
        .map(ToString::to_string)
        .collect();
    if errors.len() > SHOWN_ERRORS {
        text.push(format!("... and {} more", errors.len() - SHOWN_ERRORS));
    }
    text.push(format!(
        "{} invalid line(s); nothing was enqueued. Fix them, or pass --skip-invalid to run the \
         valid lines and record these in the errors file.",
        errors.len()
    ));
    text.join("\n")
}
