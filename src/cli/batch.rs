//! `reasonq batch`: enqueue a file idempotently, drain it, write the output in input order.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::args::BatchArgs;
use super::progress::{Baseline, Progress};
use super::{fail, CliResult, Outcome};
use crate::app::App;
use crate::background::Background;
use crate::batch::export::{export, write_jsonl};
use crate::batch::input::{read_file, InputError};
use crate::batch::output::{failure_line, FailureRecord};
use crate::batch::ChatJob;
use crate::config::Config;
use crate::queue::{JobState, NewJob};
use crate::runs::{self, RunRecord};
use crate::shutdown::{exit_code, Shutdown};
use crate::store::codec;
use crate::worker::{DrainEnd, Workers};

/// Jobs enqueued per transaction: big files go in a few large commits.
const ENQUEUE_CHUNK: usize = 5_000;

/// Most invalid lines printed before "... and N more".
const SHOWN_ERRORS: usize = 20;

pub async fn run(config: Config, args: BatchArgs, simulate: bool) -> CliResult {
    let phase = std::time::Instant::now();
    let parsed = read_file(&args.input, &config.model)
        .map_err(|e| fail(format!("cannot read {}: {e}", args.input.display())))?;
    if !parsed.errors.is_empty() && !args.skip_invalid {
        return Err(fail(invalid_report(&parsed.errors)));
    }
    if parsed.items.is_empty() && parsed.errors.is_empty() {
        return Err(fail(format!(
            "{}: no requests in the file",
            args.input.display()
        )));
    }
    tracing::info!(lines = parsed.items.len(), elapsed = ?phase.elapsed(), "input read");
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| with_suffix(&args.input, "out.jsonl"));
    let errors_path = args
        .errors
        .clone()
        .unwrap_or_else(|| with_suffix(&args.input, "errors.jsonl"));
    let batch = match &args.batch {
        Some(name) => name.clone(),
        None => batch_name(&args.input),
    };

    let app = App::open(config).await.map_err(fail)?;
    let connected = app.connect(simulate).await.map_err(fail)?;
    if !simulate {
        let models: BTreeSet<String> = parsed.items.iter().filter_map(model_of).collect();
        match connected
            .client
            .check_models(models.iter().map(String::as_str))
            .await
        {
            Ok(()) => {}
            // Endpoints without a model list (404) should not block the batch.
            Err(e) if e.status() == Some(404) => {
                tracing::warn!("cannot list models at the endpoint; model names not checked");
            }
            Err(e) => return Err(fail(format!("model check failed: {e}"))),
        }
    }

    // Enqueue idempotently: the dedup key is the id plus a hash of the request and endpoint.
    // Batch flags are the defaults of lines that do not say.
    let jobs: Vec<ChatJob> = parsed
        .items
        .iter()
        .map(|item| {
            let mut job = ChatJob::from_item(item);
            job.strategy = job
                .strategy
                .or_else(|| args.strategy.map(|s| s.name().to_string()));
            job.memory = item.memory.unwrap_or(args.memory);
            job
        })
        .collect();
    let keys: HashSet<String> = jobs
        .iter()
        .map(|j| j.dedup_key(&connected.endpoint))
        .collect();
    let mut inserted = 0;
    for chunk in jobs.chunks(ENQUEUE_CHUNK) {
        let mut new_jobs = Vec::with_capacity(chunk.len());
        for job in chunk {
            let mut new = NewJob::new(batch.clone(), "chat", codec::encode(job).map_err(fail)?);
            new.dedup_key = Some(job.dedup_key(&connected.endpoint));
            new_jobs.push(new);
        }
        let done = app.queue.enqueue_many(new_jobs).await.map_err(fail)?;
        inserted += done.iter().filter(|e| e.inserted).count();
    }
    tracing::info!(inserted, elapsed = ?phase.elapsed(), "enqueued");
    let counts = app.queue.counts(Some(&batch)).await.map_err(fail)?;
    let label = if simulate { " (simulated API)" } else { "" };
    eprintln!(
        "batch {batch}{label}: {} requests, {inserted} new, {} already done",
        jobs.len(),
        jobs.len() - inserted.min(jobs.len())
    );

    let shutdown = Shutdown::new();
    let _signals = shutdown
        .listen_for_signals()
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    let mut worker_config = app.worker_config(&connected.endpoint).map_err(fail)?;
    if let Some(n) = args.concurrency {
        worker_config.concurrency = n.max(1);
    }
    if let Some(s) = args.drain_timeout {
        worker_config.drain_timeout = std::time::Duration::from_secs(s);
    }
    let workers = Workers::new(
        app.queue.clone(),
        connected.client.clone(),
        app.cache.clone(),
        worker_config,
    );
    let background = Background::start(&app);
    let progress = Progress::start(
        Baseline {
            total: keys.len() as u64,
            completed: counts.get(JobState::Completed),
            failed: counts.get(JobState::Discarded) + counts.get(JobState::Cancelled),
        },
        workers.stats.clone(),
        args.plain,
    );
    let started_at = crate::clock::now_ms();
    let drained = workers.drain(&batch, shutdown.listener()).await;
    progress.finish();
    background.stop().await;
    let end = drained.map_err(fail)?;
    tracing::info!(elapsed = ?phase.elapsed(), "drained");

    let jobs_now = app.queue.jobs_in_queue(&batch).await.map_err(fail)?;
    let result = export(jobs_now, Some(&keys)).map_err(fail)?;
    let mut error_lines = result.errors.clone();
    for invalid in &parsed.errors {
        error_lines.push(failure_line(
            None,
            &format!("line-{}", invalid.line),
            &FailureRecord {
                code: "invalid_request".into(),
                message: invalid.to_string(),
                status_code: None,
                request_id: None,
                body: None,
            },
        ));
    }
    write_jsonl(&output, &result.lines)
        .map_err(|e| fail(format!("cannot write {}: {e}", output.display())))?;
    if !error_lines.is_empty() || args.errors.is_some() {
        write_jsonl(&errors_path, &error_lines)
            .map_err(|e| fail(format!("cannot write {}: {e}", errors_path.display())))?;
    }
    tracing::info!(elapsed = ?phase.elapsed(), "exported");
    let stats = workers.stats.snapshot();
    let metrics = connected.client.metrics();
    let run = RunRecord::new(
        &batch,
        started_at,
        crate::clock::now_ms(),
        stats,
        &metrics,
        &app.cache.stats(),
    );
    runs::record(&app.store, run).await.map_err(fail)?;
    app.close().await.map_err(fail)?;

    eprintln!(
        "{} of {} requests answered ({} from cache this run), {} failed, {} not finished; \
         {} prompt + {} completion tokens this run; {} API requests",
        result.lines.len() - result.errors.len(),
        keys.len(),
        stats.cached,
        result.errors.len(),
        result.pending,
        stats.prompt_tokens,
        stats.completion_tokens,
        metrics.requests_sent,
    );
    if let Some(peak) = crate::background::peak_resident_bytes() {
        eprintln!("peak RSS: {:.1} MB", peak as f64 / 1e6);
    }
    eprintln!("output: {}", output.display());
    if !error_lines.is_empty() {
        eprintln!(
            "errors: {} ({} lines)",
            errors_path.display(),
            error_lines.len()
        );
    }
    match end {
        DrainEnd::Finished => Ok(Outcome::Done),
        DrainEnd::Stopped(phase) => {
            eprintln!(
                "stopped by signal: {} jobs returned to the queue; run the same command again to finish",
                stats.returned
            );
            Ok(Outcome::Exit(exit_code(phase.signal())))
        }
    }
}

fn model_of(item: &crate::batch::input::BatchItem) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(&item.body).ok()?;
    body["model"].as_str().map(str::to_string)
}

/// `questions.jsonl` -> `questions.<suffix>`.
fn with_suffix(input: &Path, suffix: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or_else(|| "batch".into(), |s| s.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}.{suffix}"))
}

/// The default batch name: the file's stem and a hash of its absolute path, so two files of
/// the same name in different folders are different batches.
pub fn batch_name(input: &Path) -> String {
    let absolute = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
    let digest = Sha256::digest(absolute.to_string_lossy().as_bytes());
    let stem = input
        .file_stem()
        .map_or_else(|| "batch".into(), |s| s.to_string_lossy().into_owned());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{stem}-{hex}")
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
