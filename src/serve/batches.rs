//! The Batch API: an OpenAI batch is a reasonq batch (queue) named after its id, enqueued
//! and drained by the same use case as `reasonq batch`; its record (`serve_batches`) keeps
//! its life, so a batch that was running when the server stopped runs again at the next
//! start.

use std::path::Path;
use std::time::Duration;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::files::{self, FileRecord, PURPOSE_OUTPUT};
use super::index;
use super::Service;
use crate::app::batch::{self, BatchOptions};
use crate::app::cancel::{cancel_batch, expire_waiting};
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
    /// Its completion window ended: what was answered is kept, the rest was not run.
    Expired,
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
            Status::Expired => "expired",
        }
    }

    /// No more work: a restart leaves it alone.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::Expired
        )
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
    /// The end of its completion window, in ms (the server's window at creation).
    pub expires_ms: u64,
    /// When the window ended with lines left (they were cancelled as `batch_expired`).
    pub expired_at: Option<u64>,
}

/// A record as layout 1 wrote it (before the completion window was kept).
#[derive(Serialize, Deserialize)]
struct BatchRecordV1 {
    id: String,
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    status: Status,
    output_file_id: String,
    error_file_id: String,
    has_output: bool,
    has_errors: bool,
    errors: Vec<(String, String)>,
    metadata: Option<String>,
    created_ms: u64,
    in_progress_at: Option<u64>,
    finalizing_at: Option<u64>,
    completed_at: Option<u64>,
    failed_at: Option<u64>,
    cancelling_at: Option<u64>,
    cancelled_at: Option<u64>,
}

impl codec::Record for BatchRecord {
    /// Layout 2 adds the completion window's end and `expired_at`.
    const LAYOUT: u8 = 2;

    fn upgrade(layout: u8, payload: &[u8]) -> std::result::Result<Self, codec::CodecError> {
        if layout != 1 {
            return Err(codec::CodecError::UnknownLayout {
                found: layout,
                current: Self::LAYOUT,
            });
        }
        let v: BatchRecordV1 = codec::payload_of(payload)?;
        Ok(BatchRecord {
            expires_ms: v.created_ms + DEFAULT_WINDOW.as_millis() as u64,
            expired_at: None,
            id: v.id,
            input_file_id: v.input_file_id,
            endpoint: v.endpoint,
            completion_window: v.completion_window,
            status: v.status,
            output_file_id: v.output_file_id,
            error_file_id: v.error_file_id,
            has_output: v.has_output,
            has_errors: v.has_errors,
            errors: v.errors,
            metadata: v.metadata,
            created_ms: v.created_ms,
            in_progress_at: v.in_progress_at,
            finalizing_at: v.finalizing_at,
            completed_at: v.completed_at,
            failed_at: v.failed_at,
            cancelling_at: v.cancelling_at,
            cancelled_at: v.cancelled_at,
        })
    }
}

/// OpenAI's completion window: 24 hours.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

impl BatchRecord {
    pub fn new(
        input_file_id: String,
        endpoint: String,
        completion_window: String,
        metadata: Option<Map<String, Value>>,
        window: Duration,
    ) -> BatchRecord {
        let created_ms = now_ms();
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
            created_ms,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            cancelling_at: None,
            cancelled_at: None,
            expires_ms: created_ms.saturating_add(window.as_millis() as u64),
            expired_at: None,
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
            "expires_at": self.expires_ms / 1000,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
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
    let report = {
        let run = prepared.run(&svc.app, &svc.connected, svc.shutdown.clone());
        tokio::pin!(run);
        let left = record.expires_ms.saturating_sub(now_ms());
        let window = tokio::time::sleep(Duration::from_millis(left));
        tokio::pin!(window);
        let mut expired = record.expired_at.is_some();
        let mut window_ended = expired;
        // Once expired, lines that come back to wait (a retry) are cancelled too.
        let mut sweep = tokio::time::interval(Duration::from_millis(500));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                report = &mut run => break report?,
                () = &mut window, if !window_ended => {
                    window_ended = true;
                    expired = expire(svc, id).await?;
                }
                _ = sweep.tick(), if expired => {
                    let n = expire_waiting(&svc.app, id).await?;
                    if n > 0 {
                        tracing::info!(batch = %id, lines = n, "completion window ended: lines not run");
                    }
                }
            }
        }
    };
    // Expired only if the window cut lines off; a batch whose last lines were running
    // when it ended and then answered is complete.
    let cut_off = counts(svc, id).await?.cancelled > 0;
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
        } else if r.expired_at.is_some() && cut_off {
            r.status = Status::Expired;
            r.finalizing_at = r.finalizing_at.or(now);
        } else {
            r.expired_at = None;
            r.status = Status::Completed;
            r.finalizing_at = r.finalizing_at.or(now);
            r.completed_at = now;
        }
    })
    .await?;
    Ok(())
}

/// The completion window of `id` ended: it is marked so (unless a cancel came first) and
/// from then on its waiting lines are cancelled as `batch_expired` while running ones
/// finish; true when it expires.
async fn expire(svc: &Service, id: &str) -> Result<bool> {
    let record = update(svc, id, |r| {
        if !r.status.is_terminal() && r.status != Status::Cancelling && r.expired_at.is_none() {
            r.expired_at = Some(now_s());
        }
    })
    .await?;
    Ok(record.expired_at.is_some())
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

#[cfg(test)]
mod tests {
    use super::*;

    impl codec::Record for BatchRecordV1 {}

    #[test]
    fn a_layout_1_record_reads_with_the_24_hour_window() {
        let old = BatchRecordV1 {
            id: "batch_1".into(),
            input_file_id: "file-1".into(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            status: Status::InProgress,
            output_file_id: "file-2".into(),
            error_file_id: "file-3".into(),
            has_output: false,
            has_errors: false,
            errors: vec![],
            metadata: Some("{\"a\":1}".into()),
            created_ms: 1_000,
            in_progress_at: Some(1),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            cancelling_at: None,
            cancelled_at: None,
        };
        let read: BatchRecord = codec::decode(&codec::encode(&old).unwrap()).unwrap();
        assert_eq!(read.status, Status::InProgress);
        assert_eq!(read.metadata.as_deref(), Some("{\"a\":1}"));
        assert_eq!(read.expires_ms, 1_000 + 86_400_000);
        assert_eq!(read.expired_at, None);
        let again: BatchRecord = codec::decode(&codec::encode(&read).unwrap()).unwrap();
        assert_eq!(again, read);
    }
}
