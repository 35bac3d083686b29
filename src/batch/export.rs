//! Turning a batch's jobs back into output lines, in input order, one line at a time: the
//! export walks the batch's lines ([`super::lines`]) and writes as it goes, so its memory
//! does not grow with the batch.

use std::io::Write;
use std::path::{Path, PathBuf};

use redb::ReadTransaction;
use serde_json::json;

use super::lines;
use super::output::{failure_line, success_line};
use crate::chat::{ChatJob, ResponseRecord};
use crate::codec;
use crate::error::{Error, Result};
use crate::queue::{Job, JobState, Whole};
use crate::runner::FailureRecord;

/// One request of the export.
#[derive(Debug)]
pub struct Entry {
    /// Its output line (JSON text); `None` while it is not finished.
    pub line: Option<String>,
    /// Whether that line is a failure (it goes to the errors file too).
    pub failed: bool,
    /// Our own details (JSON text, for `reasonq results --json`), when asked for.
    pub detail: Option<String>,
}

/// How many requests of each kind an export saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub answered: usize,
    pub failed: usize,
    pub pending: usize,
}

/// Walks `batch`'s lines in input order and hands each request's [`Entry`] to `sink`
/// (with details when `details`).
pub fn export_read(
    txn: &ReadTransaction,
    batch: &str,
    details: bool,
    mut sink: impl FnMut(Entry) -> Result<()>,
) -> Result<Tally> {
    let whole = Whole::open(txn)?;
    let mut tally = Tally::default();
    for id in lines::jobs_read(txn, batch, 0)? {
        let id = id?;
        let Some(job) = whole.get(id)? else {
            continue;
        };
        let entry = entry_of(&job, details)?;
        match (&entry.line, entry.failed) {
            (None, _) => tally.pending += 1,
            (Some(_), true) => tally.failed += 1,
            (Some(_), false) => tally.answered += 1,
        }
        sink(entry)?;
    }
    Ok(tally)
}

/// The entry of one job read whole.
fn entry_of(job: &Job, details: bool) -> Result<Entry> {
    let chat: ChatJob = match codec::decode(&job.payload) {
        Ok(chat) => chat,
        // One record this build cannot read fails its own line, not the export.
        Err(e) => {
            let failure = FailureRecord::new(
                "undecodable_record",
                format!("job {} cannot be read by this build: {e}", job.id),
            );
            let line = failure_line(Some(job.id), &format!("job-{}", job.id), &failure);
            return Ok(Entry {
                line: Some(line),
                failed: true,
                detail: None,
            });
        }
    };
    let mut detail = details.then(|| {
        json!({
            "custom_id": chat.custom_id,
            "job_id": job.id,
            "state": job.state.as_str(),
            "attempts": job.attempt,
            "domain": chat.domain,
            "strategy": chat.strategy,
        })
    });
    let (line, failed) = match job.state {
        JobState::Completed => {
            let response = ResponseRecord::of_job(job).ok_or_else(|| {
                Error::InvalidState(format!("completed job {} has no result", job.id))
            })??;
            if let Some(d) = detail.as_mut() {
                d["cached"] = json!(response.cached);
                d["latency_ms"] = json!(response.latency_ms);
                d["status_code"] = json!(response.status_code);
                d["provider_batch"] = json!(response.provider_batch);
                // What the answer cost, and on what basis: a cache hit paid nothing.
                let basis = match (response.cached, response.cost, &response.provider_batch) {
                    (true, _, _) => "cached",
                    (false, None, _) => "unknown",
                    (false, Some(_), Some(_)) => "batch",
                    (false, Some(_), None) => "live",
                };
                let cost = match response.cached {
                    true => Some(0.0),
                    false => response.cost.map(crate::cost::Money::usd),
                };
                d["cost_usd"] = json!(cost);
                d["cost"] = json!(basis);
            }
            (
                Some(success_line(job.id, &chat.custom_id, &response)),
                false,
            )
        }
        JobState::Discarded | JobState::Cancelled => {
            let failure = failure_of(job)
                .unwrap_or_else(|| FailureRecord::new("cancelled", "the job was cancelled"));
            if let Some(d) = detail.as_mut() {
                d["error"] = json!({"code": failure.code, "message": failure.message});
            }
            (
                Some(failure_line(Some(job.id), &chat.custom_id, &failure)),
                true,
            )
        }
        _ => (None, false),
    };
    Ok(Entry {
        line,
        failed,
        detail: detail.map(|d| d.to_string()),
    })
}

/// Why a job that ended without an answer (discarded or cancelled) ended, as its output
/// line says; `None` for any other state.
pub fn failure_of(job: &Job) -> Option<FailureRecord> {
    match (&job.last_error, job.state) {
        (Some(text), JobState::Discarded) => Some(FailureRecord::from_last_error(text)),
        // A cancel that said why (an expired batch); any other last error of a cancelled
        // job is an older attempt's, not why it ended.
        (Some(text), JobState::Cancelled)
            if FailureRecord::from_last_error(text).code == FailureRecord::BATCH_EXPIRED =>
        {
            Some(FailureRecord::from_last_error(text))
        }
        (_, JobState::Discarded | JobState::Cancelled) => {
            Some(FailureRecord::new("cancelled", "the job was cancelled"))
        }
        _ => None,
    }
}

/// A JSON-lines file written through a temporary file renamed over it on
/// [`JsonlFile::commit`], so a crash never leaves a half-written output.
pub struct JsonlFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    lines: usize,
}

impl JsonlFile {
    /// Starts writing `path` (beside it, under a temporary name).
    pub fn create(path: &Path) -> std::io::Result<JsonlFile> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let out = std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(&tmp)?);
        Ok(JsonlFile {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            lines: 0,
        })
    }

    /// Appends one line.
    pub fn line(&mut self, text: &str) -> std::io::Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the file is already committed"))?;
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")?;
        self.lines += 1;
        Ok(())
    }

    /// Lines written so far.
    pub fn len(&self) -> usize {
        self.lines
    }

    /// Whether no line was written.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Makes the file durable and puts it in place.
    pub fn commit(mut self) -> std::io::Result<()> {
        if let Some(out) = self.out.take() {
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&self.tmp, &self.path)?;
        // Renamed: nothing left for drop to remove.
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for JsonlFile {
    fn drop(&mut self) {
        // Not committed (an error on the way): no temporary file is left behind.
        drop(self.out.take());
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
