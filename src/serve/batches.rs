//! The Batch API: an OpenAI batch is a reasonq batch (queue) named after its id, enqueued
//! and drained by the same use case as `reasonq batch`; its record (`serve_batches`) keeps
//! its life, so a batch that was running when the server stopped runs again at the next
//! start.

use std::path::Path;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::files::{self, FileRecord, PURPOSE_OUTPUT};
use super::index;
use super::Service;
use crate::app::batch::{self, BatchOptions};
use crate::app::cancel::cancel_batch;
use crate::clock::now_ms;
use crate::codec;
use crate::error::{Error, Result};
use crate::queue::Counts;
use crate::runner::DrainEnd;
use crate::store::tables;

/// Where a batch is in its life (OpenAI's statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    /// No more work: a restart leaves it alone.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// One batch, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub status: Status,
    /// Ids given at creation; shown once the files exist.
    pub output_file_id: String,
    pub error_file_id: String,
    pub has_output: bool,
    pub has_errors: bool,
    /// `errors.data` entries: (code, message).
    pub errors: Vec<(String, String)>,
    /// The metadata object as JSON text (the record codec has no JSON values).
    pub metadata: Option<String>,
    pub created_ms: u64,
    pub in_progress_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
}

impl codec::Record for BatchRecord {}

/// 24 hours, in seconds.
const WINDOW_S: u64 = 24 * 3600;

impl BatchRecord {
    pub fn new(
        input_file_id: String,
        endpoint: String,
        completion_window: String,
        metadata: Option<Map<String, Value>>,
    ) -> BatchRecord {
        BatchRecord {
            id: format!("batch_{:016x}", rand::random::<u64>()),
            input_file_id,
            endpoint,
            completion_window,
            status: Status::Validating,
            output_file_id: files::new_id(),
            error_file_id: files::new_id(),
            has_output: false,
            has_errors: false,
            errors: Vec::new(),
            metadata: metadata.map(|m| Value::Object(m).to_string()),
            created_ms: now_ms(),
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            cancelling_at: None,
            cancelled_at: None,
        }
    }

    /// OpenAI's batch object, with the request counts of the queue's counters.
    pub fn object(&self, counts: &Counts) -> Value {
        let created_at = self.created_ms / 1000;
        let errors = (!self.errors.is_empty()).then(|| {
            let data: Vec<Value> = self
                .errors
                .iter()
                .map(|(code, message)| {
                    json!({"code": code, "message": message, "param": null, "line": null})
                })
                .collect();
            json!({"object": "list", "data": data})
        });
        let metadata = self
            .metadata
            .as_deref()
            .and_then(|m| serde_json::from_str::<Value>(m).ok());
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.as_str(),
            "output_file_id": self.has_output.then_some(&self.output_file_id),
            "error_file_id": self.has_errors.then_some(&self.error_file_id),
            "created_at": created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": created_at + WINDOW_S,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": null,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": counts.total(),
                "completed": counts.completed,
                "failed": counts.discarded,
            },
            "metadata": metadata,
        })
    }
}

fn now_s() -> u64 {
    now_ms() / 1000
}

/// The batch table and its time index.
const TABLES: (index::Records, index::ByTime) =
    (tables::SERVE_BATCHES, tables::SERVE_BATCHES_BY_TIME);

/// Writes a new record.
pub async fn insert(svc: &Service, record: &BatchRecord) -> Result<()> {
    let record = record.clone();
    svc.app
        .store
        .write(move |txn| index::insert(txn, TABLES, &record.id, record.created_ms, &record))
        .await
}

/// The record of `id`.
pub async fn get(svc: &Service, id: &str) -> Result<Option<BatchRecord>> {
    let id = id.to_string();
    svc.app.store.read(move |txn| get_in(txn, &id)).await
}

fn get_in(txn: &redb::ReadTransaction, id: &str) -> Result<Option<BatchRecord>> {
    let table = txn.open_table(tables::SERVE_BATCHES)?;
    let found = table.get(id)?;
    match found {
        Some(v) => Ok(Some(codec::decode(v.value())?)),
        None => Ok(None),
    }
}

/// A page of batches newest first, after the batch `after` (`None` when there is no such
/// batch).
pub async fn page(
    svc: &Service,
    after: Option<String>,
    limit: usize,
) -> Result<Option<index::Page<BatchRecord>>> {
    svc.app
        .store
        .read(move |txn| {
            let after = match after {
                None => None,
                Some(id) => match get_in(txn, &id)? {
                    Some(b) => Some((b.created_ms, id)),
                    None => return Ok(None),
                },
            };
            let after = after.as_ref().map(|(ms, id)| (*ms, id.as_str()));
            index::page(txn, TABLES, after, limit, |_: &BatchRecord| true).map(Some)
        })
        .await
}

/// The ids of the batches that have not ended, oldest first (resumed at start).
pub async fn unfinished(svc: &Service) -> Result<Vec<String>> {
    svc.app
        .store
        .read(|txn| {
            let records = txn.open_table(tables::SERVE_BATCHES)?;
            let index = txn.open_table(tables::SERVE_BATCHES_BY_TIME)?;
            let mut out = Vec::new();
            for row in index.iter()? {
                let (key, _) = row?;
                let (_, id) = key.value();
                if let Some(v) = records.get(id)? {
                    let record: BatchRecord = codec::decode(v.value())?;
                    if !record.status.is_terminal() {
                        out.push(record.id);
                    }
                }
            }
            Ok(out)
        })
        .await
}

/// Whether a batch that has not ended reads `file_id` (such a file cannot be deleted).
pub async fn reads_file(svc: &Service, file_id: &str) -> Result<bool> {
    let file_id = file_id.to_string();
    svc.app
        .store
        .read(move |txn| {
            let records = txn.open_table(tables::SERVE_BATCHES)?;
            for row in records.iter()? {
                let (_, v) = row?;
                let record: BatchRecord = codec::decode(v.value())?;
                if record.input_file_id == file_id && !record.status.is_terminal() {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
}

/// The creation time of an encoded record (for the index built at start).
pub fn created_ms(bytes: &[u8]) -> Result<u64> {
    Ok(codec::decode::<BatchRecord>(bytes)?.created_ms)
}

/// Changes the record of `id` in one write transaction (read, `change`, write), so the
/// drive task and a cancel never overwrite each other; returns the record as written.
pub async fn update<F>(svc: &Service, id: &str, change: F) -> Result<BatchRecord>
where
    F: Fn(&mut BatchRecord) + Send + Sync + 'static,
{
    let id = id.to_string();
    svc.app
        .store
        .write(move |txn| {
            let mut table = txn.open_table(tables::SERVE_BATCHES)?;
            let found = table.get(id.as_str())?.map(|v| v.value().to_vec());
            let Some(bytes) = found else {
                return Err(Error::NotFound {
                    what: format!("batch {id}"),
                });
            };
            let mut record: BatchRecord = codec::decode(&bytes)?;
            change(&mut record);
            let bytes = codec::encode(&record)?;
            table.insert(id.as_str(), bytes.as_slice())?;
            Ok(record)
        })
        .await
}

/// The queue's counters of a batch.
pub async fn counts(svc: &Service, id: &str) -> Result<Counts> {
    svc.app.queue.counts(Some(id)).await
}

/// Asks for a cancel: waiting lines are cancelled now, running ones finish, and the drive
/// task ends the batch as `cancelled` with what was answered.
pub async fn cancel(svc: &Service, id: &str) -> Result<BatchRecord> {
    let record = update(svc, id, |r| {
        if !r.status.is_terminal() && r.status != Status::Cancelling {
            r.status = Status::Cancelling;
            r.cancelling_at = Some(now_s());
        }
    })
    .await?;
    if record.status == Status::Cancelling {
        cancel_batch(&svc.app, Some(&svc.connected), id, svc.shutdown.clone()).await?;
    }
    Ok(record)
}

/// Runs a batch from wherever it is to its end (or until a shutdown stops it, leaving it to
/// the next start); a failure of ours marks it failed with the reason.
pub async fn drive(svc: std::sync::Arc<Service>, id: String) {
    if let Err(e) = drive_inner(&svc, &id).await {
        tracing::warn!(batch = %id, "batch failed: {e}");
        let message = e.to_string();
        let code = match e {
            Error::Invalid(_) => "invalid_file",
            _ => "server_error",
        };
        let failed = update(&svc, &id, move |r| {
            r.status = Status::Failed;
            r.failed_at = Some(now_s());
            r.errors.push((code.to_string(), message.clone()));
        })
        .await;
        if let Err(e) = failed {
            tracing::warn!(batch = %id, "cannot record the failure: {e}");
        }
    }
}

async fn drive_inner(svc: &Service, id: &str) -> Result<()> {
    let Some(record) = get(svc, id).await? else {
        return Ok(());
    };
    if record.status.is_terminal() {
        return Ok(());
    }
    let opts = options(svc, &record);
    let (to_read, model) = (opts.clone(), svc.app.config.model.clone());
    let scan = tokio::task::spawn_blocking(move || batch::read(&to_read, &model))
        .await
        .map_err(|e| Error::Task(format!("input check failed: {e}")))??;
    let prepared = batch::prepare(&svc.app, &svc.connected, &opts, scan).await?;
    let record = update(svc, id, |r| {
        if r.status == Status::Validating {
            r.status = Status::InProgress;
            r.in_progress_at = Some(now_s());
        }
    })
    .await?;
    if record.status == Status::Cancelling {
        // A cancel that came while the lines were being enqueued missed the later ones.
        cancel_batch(&svc.app, Some(&svc.connected), id, svc.shutdown.clone()).await?;
    }
    let report = prepared
        .run(&svc.app, &svc.connected, svc.shutdown.clone())
        .await?;
    match report.end {
        DrainEnd::Stopped(_) => return Ok(()),
        DrainEnd::Halted(trip) => {
            let (code, message) = (trip.code.to_string(), trip.message.clone());
            update(svc, id, move |r| {
                r.status = Status::Failed;
                r.failed_at = Some(now_s());
                r.errors.push((code.clone(), message.clone()));
            })
            .await?;
            return Ok(());
        }
        DrainEnd::Finished => {}
    }
    update(svc, id, |r| {
        if r.status == Status::InProgress {
            r.status = Status::Finalizing;
            r.finalizing_at = Some(now_s());
        }
    })
    .await?;
    let output = register(
        svc,
        &record.output_file_id,
        &report.output,
        format!("{id}_output.jsonl"),
    )
    .await?;
    let has_errors = report.error_lines > 0;
    if has_errors {
        register(
            svc,
            &record.error_file_id,
            &report.errors,
            format!("{id}_error.jsonl"),
        )
        .await?;
    } else {
        let _ = tokio::fs::remove_file(&report.errors).await;
    }
    update(svc, id, move |r| {
        r.has_output = output;
        r.has_errors = has_errors;
        let now = Some(now_s());
        if r.status == Status::Cancelling {
            r.status = Status::Cancelled;
            r.cancelled_at = now;
        } else {
            r.status = Status::Completed;
            r.finalizing_at = r.finalizing_at.or(now);
            r.completed_at = now;
        }
    })
    .await?;
    Ok(())
}

/// The batch use case's options for a record: its stored file as input, its output and
/// errors files under their ids, the batch named after its id.
fn options(svc: &Service, record: &BatchRecord) -> BatchOptions {
    BatchOptions {
        input: files::path_of(&svc.files_dir, &record.input_file_id),
        output: Some(files::path_of(&svc.files_dir, &record.output_file_id)),
        errors: Some(files::path_of(&svc.files_dir, &record.error_file_id)),
        batch: Some(record.id.clone()),
        ..BatchOptions::default()
    }
}

/// Registers an exported file (`batch_output`); false when it is not there.
async fn register(svc: &Service, id: &str, path: &Path, name: String) -> Result<bool> {
    let Ok(meta) = tokio::fs::metadata(path).await else {
        return Ok(false);
    };
    let now = now_ms();
    let record = FileRecord {
        id: id.to_string(),
        filename: name,
        bytes: meta.len(),
        created_at: now / 1000,
        created_ms: now,
        purpose: PURPOSE_OUTPUT.to_string(),
    };
    files::insert(&svc.app, record).await?;
    Ok(true)
}
