//! Read-only queries behind the inspecting commands (`status`, `results`, `jobs show`,
//! `board`, `stats`, `stats --tables`): what they print is the binary's business, what they
//! read is here.

use serde::Serialize;
use serde_json::{json, Value};

use super::runs::{self, Summary};
use super::App;
use crate::batch::export::{export, Export};
use crate::chat::blackboard::{self, Board};
use crate::chat::{ChatJob, ResponseRecord};
use crate::codec;
use crate::error::{Error, Result};
use crate::queue::{Counts, Job};
use crate::runner::FailureRecord;
use crate::store::sizes::{table_sizes_read, TableSize};

/// One batch in `status`.
#[derive(Debug, Clone)]
pub struct BatchStatus {
    pub batch: String,
    pub counts: Counts,
    /// Prompt and completion tokens of its completed jobs (cache hits cost nothing).
    pub tokens: (u64, u64),
}

/// Every batch's job counts by state and tokens spent.
pub async fn status(app: &App) -> Result<Vec<BatchStatus>> {
    let mut rows = Vec::new();
    for batch in app.queue.queues().await? {
        let counts = app.queue.counts(Some(&batch)).await?;
        let tokens = runs::tokens_of(&app.queue.jobs_in_queue(&batch).await?);
        rows.push(BatchStatus {
            batch,
            counts,
            tokens,
        });
    }
    Ok(rows)
}

/// A batch's results again, in input order (the newest job of every request id).
pub async fn results(app: &App, batch: &str) -> Result<Export> {
    let jobs = app.queue.jobs_in_queue(batch).await?;
    if jobs.is_empty() {
        return Err(Error::Invalid(format!(
            "no batch named {batch:?}; `reasonq status` lists them"
        )));
    }
    export(jobs, None)
}

/// One job in full, as `jobs show` and `jobs list --json` print it: the queue's record with
/// the chat request, response and failure read out of it.
pub fn job_detail(job: &Job) -> Value {
    let chat: Option<ChatJob> = codec::decode(&job.payload).ok();
    let result: Option<ResponseRecord> = job.result.as_deref().and_then(|b| codec::decode(b).ok());
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
            "latency_ms": r.latency_ms,
            "body": serde_json::from_str::<Value>(&r.body).unwrap_or(Value::String(r.body.clone())),
        })),
        "last_error": job.last_error.as_deref().map(FailureRecord::from_last_error),
    })
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
