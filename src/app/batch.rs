//! The batch use case: read and check a file, enqueue its lines idempotently, drain them,
//! write the output in input order and record the run.
//!
//! It runs in steps so that a bad file changes nothing (not even a new database) and a
//! caller can show progress: [`read`] (before the database opens), [`prepare`] (models
//! checked, lines enqueued) and [`Prepared::run`] (the drain and the export).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::retry::{matching, RetryFilter};
use super::runs::{self, RunRecord};
use super::{App, Connected, SIMULATED};
use crate::batch::export::{export, write_jsonl};
use crate::batch::input::{read_file, BatchItem, InputError, ParsedInput};
use crate::batch::output::failure_line;
use crate::batch::shard::{self, Shard};
use crate::batch::with_suffix;
use crate::chat::{self, ChatJob};
use crate::clock::now_ms;
use crate::codec;
use crate::error::{Error, Result};
use crate::memory::Strategy;
use crate::queue::{find_by_dedup_read, JobState, NewJob};
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
}

/// Where a prepared batch starts from: jobs already finished before this run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
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
    /// Dedup keys of this file's lines, with their line: the export is of exactly these.
    keys: HashMap<String, u64>,
    invalid: Vec<InputError>,
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
}

/// Reads and checks the whole file (`default_model` fills lines that name none). A bad line
/// fails the batch, unless `skip_invalid`.
pub fn read(opts: &BatchOptions, default_model: &str) -> Result<ParsedInput> {
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
    let parsed = read_file(&opts.input, default_model)
        .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", opts.input.display())))?;
    if !parsed.errors.is_empty() && !opts.skip_invalid {
        return Err(Error::Invalid(invalid_report(&parsed.errors)));
    }
    if parsed.items.is_empty() && parsed.errors.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no requests in the file",
            opts.input.display()
        )));
    }
    tracing::info!(lines = parsed.items.len(), elapsed = ?phase.elapsed(), "input read");
    Ok(parsed)
}

/// Checks the models the lines name (unless simulated) and enqueues them.
pub async fn prepare(
    app: &App,
    connected: &Connected,
    opts: &BatchOptions,
    mut parsed: ParsedInput,
) -> Result<Prepared> {
    let phase = std::time::Instant::now();
    if connected.sim.is_none() {
        check_models(connected, &parsed.items).await?;
    }
    // After the model check, which sees every line, so a bad line fails every shard alike.
    if let Some(shard) = opts.shard {
        parsed.items.retain(|item| shard.contains(&item.custom_id));
    }
    let batch = opts
        .batch
        .clone()
        .unwrap_or_else(|| shard::batch_name(&opts.input, opts.shard));
    // Batch options are the defaults of lines that do not say.
    let jobs: Vec<ChatJob> = parsed
        .items
        .iter()
        .map(|item| {
            let mut job = item.to_job();
            job.strategy = job
                .strategy
                .or_else(|| opts.strategy.map(|s| s.name().to_string()));
            job.memory = item.memory.unwrap_or(opts.memory);
            job
        })
        .collect();
    // Idempotent: the dedup key is the id plus a hash of the request and endpoint.
    let endpoint = connected.endpoint();
    claim_endpoint(app, &batch, endpoint, opts.rerun).await?;
    let job_keys = dedup_keys(app, &batch, endpoint, &jobs).await?;
    let keys: HashMap<String, u64> = job_keys
        .iter()
        .zip(&jobs)
        .map(|(k, j)| (k.clone(), j.line))
        .collect();
    let mut inserted = 0;
    for (chunk, chunk_keys) in jobs
        .chunks(ENQUEUE_CHUNK)
        .zip(job_keys.chunks(ENQUEUE_CHUNK))
    {
        let mut new_jobs = Vec::with_capacity(chunk.len());
        for (job, key) in chunk.iter().zip(chunk_keys) {
            let mut new = NewJob::new(batch.clone(), chat::KIND, codec::encode(job)?);
            new.dedup_key = Some(key.clone());
            new_jobs.push(new);
        }
        let done = app.queue.enqueue_many(new_jobs).await?;
        inserted += done.iter().filter(|e| e.inserted).count();
    }
    tracing::info!(inserted, elapsed = ?phase.elapsed(), "enqueued");
    // One look at the batch for both: waiting jobs of lines no longer in the file are
    // cancelled (neither paid for nor hidden), failed ones of this file go again if asked.
    let now_queued = app.queue.jobs_in_queue(&batch).await?;
    let stale: Vec<u64> = now_queued
        .iter()
        .filter(|j| j.state.is_waiting())
        .filter(|j| !j.dedup_key.as_ref().is_some_and(|k| keys.contains_key(k)))
        .map(|j| j.id)
        .collect();
    app.queue.cancel_many(&stale).await?;
    let again = if opts.retry_failed {
        matching(&now_queued, &RetryFilter::default(), Some(&keys))
    } else {
        Vec::new()
    };
    drop(now_queued);
    app.queue.retry_many(&again).await?;
    let counts = app.queue.counts(Some(&batch)).await?;
    let (output, errors) = files(opts);
    Ok(Prepared {
        output,
        errors,
        errors_asked: opts.errors.is_some(),
        requests: jobs.len(),
        inserted,
        retried: again.len(),
        cancelled: stale.len(),
        baseline: Baseline {
            total: keys.len() as u64,
            completed: counts.get(JobState::Completed),
            failed: counts.get(JobState::Discarded) + counts.get(JobState::Cancelled),
        },
        batch,
        keys,
        invalid: parsed.errors,
    })
}

impl Prepared {
    /// Drains the batch until it is done or `shutdown` stops it, then writes the output and
    /// errors files (atomically) and records the run.
    pub async fn run(self, app: &App, connected: &Connected, shutdown: Listener) -> Result<Report> {
        let phase = std::time::Instant::now();
        let started_at = now_ms();
        let end = connected.runner.drain(&self.batch, shutdown).await?;
        tracing::info!(elapsed = ?phase.elapsed(), "drained");

        let jobs_now = app.queue.jobs_in_queue(&self.batch).await?;
        let result = export(jobs_now, Some(&self.keys))?;
        let mut error_lines = result.errors.clone();
        for invalid in &self.invalid {
            let failure = FailureRecord::new("invalid_request", invalid.to_string());
            error_lines.push(failure_line(
                None,
                &format!("line-{}", invalid.line),
                &failure,
            ));
        }
        write_jsonl(&self.output, &result.lines).map_err(|e| written(&self.output, e))?;
        // An errors file of an earlier run is rewritten too, so it never lists lines that
        // have since been answered.
        if !error_lines.is_empty() || self.errors_asked || self.errors.exists() {
            write_jsonl(&self.errors, &error_lines).map_err(|e| written(&self.errors, e))?;
        }
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
        Ok(Report {
            end,
            requests: self.keys.len(),
            answered: result.lines.len() - result.errors.len(),
            failed: result.errors.len(),
            pending: result.pending,
            error_lines: error_lines.len(),
            output: self.output,
            errors: self.errors,
            counts,
            abandoned_calls: connected.gateway.unanswered_calls(),
            requests_sent: metrics.requests_sent,
        })
    }
}

/// Each job's dedup key: its own, or the key an earlier version gave it when the batch holds
/// that same job under it (a line with options, enqueued before the key covered them).
async fn dedup_keys(
    app: &App,
    batch: &str,
    endpoint: &str,
    jobs: &[ChatJob],
) -> Result<Vec<String>> {
    let legacy: Vec<(usize, String)> = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| j.legacy_dedup_key(endpoint).map(|k| (i, k)))
        .collect();
    let mut keys: Vec<String> = jobs.iter().map(|j| j.dedup_key(endpoint)).collect();
    if legacy.is_empty() {
        return Ok(keys);
    }
    let batch = batch.to_string();
    let found: Vec<(usize, String, ChatJob)> = app
        .store
        .read(move |txn| {
            let mut found = Vec::new();
            for (i, key) in legacy {
                if let Some(job) = find_by_dedup_read(txn, &batch, &key)? {
                    if let Ok(chat) = codec::decode::<ChatJob>(&job.payload) {
                        found.push((i, key, chat));
                    }
                }
            }
            Ok(found)
        })
        .await?;
    for (i, key, stored) in found {
        if jobs[i].same_job(&stored) {
            keys[i] = key;
        }
    }
    Ok(keys)
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

/// Checks every model the lines name with one model list request. Endpoints without a model
/// list (404) do not block the batch.
async fn check_models(connected: &Connected, items: &[BatchItem]) -> Result<()> {
    let models: BTreeSet<String> = items.iter().filter_map(model_of).collect();
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

fn model_of(item: &BatchItem) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(&item.body).ok()?;
    body["model"].as_str().map(str::to_string)
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
