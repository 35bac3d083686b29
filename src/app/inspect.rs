//! Read-only queries behind the inspecting commands (`status`, `results`, `jobs show`,
//! `board`, `stats`, `stats --tables`): what they print is the binary's business, what they
//! read is here.

use crate::chat::remote::RemoteRecord;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::runs::{self, Summary};
use super::App;
use crate::batch::export::{export_read, JsonlFile, Tally};
use crate::batch::lines;
use crate::chat::blackboard::{self, Board};
use crate::chat::{ChatJob, ResponseRecord};
use crate::codec;
use crate::error::{Error, Result};
use crate::queue::{self, usage_read, Counts, Job, Usage};
use crate::runner::FailureRecord;
use crate::store::sizes::{table_sizes_read, TableSize};
use crate::store::Store;

/// One batch in `status` (serialized for [`super::live`], which answers `status` during a
/// batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStatus {
    pub batch: String,
    pub counts: Counts,
    /// Tokens of its completed jobs (cache hits cost nothing), and answers from the cache.
    pub usage: Usage,
    /// Its provider batches not yet collected (their lines count as running).
    pub remote: Vec<RemoteRecord>,
}

/// Every batch's job counts by state and tokens spent: a few rows per batch, whatever its
/// size (the queue's counters and the batch's usage totals, in one read transaction).
pub async fn status(app: &App) -> Result<Vec<BatchStatus>> {
    status_of(&app.store).await
}

/// [`status`] from the store alone (what [`super::live`] serves).
pub async fn status_of(store: &Store) -> Result<Vec<BatchStatus>> {
    store
        .read(|txn| {
            crate::queue::queues_read(txn)?
                .into_iter()
                .map(|batch| status_row_read(txn, batch))
                .collect()
        })
        .await
}

/// One batch's row of [`status`].
pub(super) fn status_row_read(txn: &redb::ReadTransaction, batch: String) -> Result<BatchStatus> {
    let counts = crate::queue::counts_read(txn, Some(&batch))?;
    let usage = usage_read(txn, &batch)?;
    let remote = crate::chat::remote::records::open_read(txn, Some(&batch))?;
    Ok(BatchStatus {
        batch,
        counts,
        usage,
        remote,
    })
}

/// A batch's results again, in the order of its current file, each finished line handed to
/// `sink` as it is read (our details instead with `details`): nothing is collected.
pub async fn results<F>(app: &App, batch: &str, details: bool, sink: F) -> Result<Tally>
where
    F: FnMut(&str) -> Result<()> + Send + 'static,
{
    results_of(&app.store, batch, details, sink).await
}

/// [`results`] from the store alone (what [`super::live`] serves).
pub async fn results_of<F>(store: &Store, batch: &str, details: bool, sink: F) -> Result<Tally>
where
    F: FnMut(&str) -> Result<()> + Send + 'static,
{
    let pick = if details { Pick::Details } else { Pick::Lines };
    export_of(store, batch, pick, sink).await
}

/// Which text of each finished line an export hands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Its output line (the output file).
    Lines,
    /// Our details (`results --json`).
    Details,
    /// The output lines of the failures only (the errors file).
    Errors,
}

/// A batch's finished lines in input order, `pick`'s text of each handed to `sink` as it is
/// read, in one read transaction on the blocking pool: nothing is collected.
pub async fn export_of<F>(store: &Store, batch: &str, pick: Pick, mut sink: F) -> Result<Tally>
where
    F: FnMut(&str) -> Result<()> + Send + 'static,
{
    let batch = batch.to_string();
    store
        .read(move |txn| {
            known_batch_read(txn, &batch)?;
            export_read(txn, &batch, pick == Pick::Details, |entry| {
                let text = match pick {
                    Pick::Details => &entry.detail,
                    Pick::Errors if !entry.failed => &None,
                    Pick::Lines | Pick::Errors => &entry.line,
                };
                match text {
                    Some(text) => sink(text),
                    None => Ok(()),
                }
            })
        })
        .await
}

/// Refuses a batch with no lines in the database, by name.
pub(super) fn known_batch_read(txn: &redb::ReadTransaction, batch: &str) -> Result<u64> {
    match lines::size_read(txn, batch)? {
        0 => Err(Error::Invalid(format!(
            "no batch named {batch:?}; `reasonq status` lists them"
        ))),
        n => Ok(n),
    }
}

/// [`results`] into a file, written atomically; returns how many lines.
pub async fn results_to_file(
    app: &App,
    batch: &str,
    details: bool,
    path: &std::path::Path,
) -> Result<usize> {
    let shown = path.display().to_string();
    let failed = move |e: std::io::Error| Error::Write {
        path: shown.clone(),
        message: e.to_string(),
    };
    let file = JsonlFile::create(path).map_err(&failed)?;
    let file = std::sync::Arc::new(std::sync::Mutex::new(file));
    let sink = file.clone();
    let failed_line = failed.clone();
    results(app, batch, details, move |line| {
        let mut file = sink.lock().map_err(|_| Error::Closed)?;
        file.line(line).map_err(&failed_line)
    })
    .await?;
    let file = std::sync::Arc::try_unwrap(file)
        .map_err(|_| Error::Task("the results file is still in use".into()))?
        .into_inner()
        .map_err(|_| Error::Task("the results file lock was poisoned".into()))?;
    let n = file.len();
    file.commit().map_err(failed)?;
    Ok(n)
}

/// One job in full, as `jobs show` and `jobs list --json` print it: the queue's record with
/// the chat request, response and failure read out of it.
pub fn job_detail(job: &Job) -> Value {
    let chat: Option<ChatJob> = codec::decode(&job.payload).ok();
    let result: Option<ResponseRecord> = ResponseRecord::of_job(job).and_then(Result::ok);
    json!({
        "id": job.id,
        "batch": job.queue,
        "kind": job.kind,
        "state": job.state.as_str(),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "run_at": job.run_at,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "lease_owner": job.lease_owner,
        "lease_expires_at": job.lease_expires_at,
        "custom_id": chat.as_ref().map(|c| c.custom_id.clone()),
        "request": chat.as_ref().and_then(|c| serde_json::from_str::<Value>(&c.body).ok()),
        "response": result.as_ref().map(|r| json!({
            "status_code": r.status_code, "request_id": r.request_id, "cached": r.cached,
            "cache_tier": r.cache_tier.map(|t| t.as_str()),
            "latency_ms": r.latency_ms, "provider_batch": r.provider_batch,
            "body": serde_json::from_str::<Value>(&r.body).unwrap_or(Value::String(r.body.clone())),
        })),
        "last_error": job.last_error.as_deref().map(FailureRecord::from_last_error),
    })
}

/// [`job_detail`] with the job's failed tries, as `jobs show` prints it.
pub fn job_shown(job: &Job, attempts: &[Attempt]) -> Value {
    let mut detail = job_detail(job);
    detail["attempts"] = json!(attempts);
    detail
}

/// One failed try of a job, its error read out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The job's n-th try (free snoozes count: they are tries too).
    pub n: u32,
    pub at_ms: u64,
    pub code: String,
    pub message: String,
    pub status_code: Option<u16>,
    /// The backoff or snooze before the next try; `None` when this try ended the job.
    pub wait_ms: Option<u64>,
}

/// A job's failed tries (the most recent [`queue::KEPT_ATTEMPTS`]), oldest first.
pub fn attempts_read(txn: &redb::ReadTransaction, job_id: u64) -> Result<Vec<Attempt>> {
    let rows = queue::attempts_read(txn, job_id)?;
    Ok(rows
        .into_iter()
        .map(|(n, a)| {
            let error = FailureRecord::from_last_error(&a.error);
            Attempt {
                n,
                at_ms: a.at_ms,
                code: error.code,
                message: error.message,
                status_code: error.status_code,
                wait_ms: a.wait_ms,
            }
        })
        .collect())
}

/// Job `id` whole with its failed tries (`jobs show`).
pub async fn job_of(store: &Store, id: u64) -> Result<Option<(Job, Vec<Attempt>)>> {
    store
        .read(move |txn| match queue::get_read(txn, id)? {
            Some(job) => Ok(Some((job, attempts_read(txn, id)?))),
            None => Ok(None),
        })
        .await
}

/// The custom id of a job, when it is a chat job.
pub fn custom_id(job: &Job) -> Option<String> {
    codec::decode::<ChatJob>(&job.payload)
        .ok()
        .map(|c| c.custom_id)
}

/// A blackboard session by its id (`bb-<job id>`) or its job's id.
pub async fn board(app: &App, session: &str) -> Result<Option<Board>> {
    let id = match session.parse::<u64>() {
        Ok(job_id) => blackboard::session_id(job_id),
        Err(_) => session.to_string(),
    };
    app.store
        .read(move |txn| blackboard::load_read(txn, &id))
        .await
}

/// The figures of every recorded run.
pub async fn stats(app: &App) -> Result<Summary> {
    runs::summary(&app.store).await
}

/// The database file's size and what each of its tables occupies.
#[derive(Debug, Clone, Serialize)]
pub struct DbSizes {
    pub file_bytes: u64,
    /// Largest first.
    pub tables: Vec<TableSize>,
}

/// Rows and bytes of every table (`stats --tables`).
pub async fn table_sizes(app: &App) -> Result<DbSizes> {
    let path = app.store.path().to_path_buf();
    app.store
        .read(move |txn| {
            // Here on the blocking pool, like the table reads.
            let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            Ok(DbSizes {
                file_bytes,
                tables: table_sizes_read(txn)?,
            })
        })
        .await
}
