//! Turning a batch's jobs back into output lines, in input order.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::output::{failure_line, success_line};
use crate::chat::{ChatJob, ResponseRecord};
use crate::codec;
use crate::error::{Error, Result};
use crate::queue::{Job, JobState};
use crate::runner::FailureRecord;

/// A batch's results, one entry per request id.
#[derive(Debug, Default)]
pub struct Export {
    /// Output lines (JSON text) of finished requests, in input order.
    pub lines: Vec<String>,
    /// The failed ones among them (also in `lines`), for the errors file.
    pub errors: Vec<String>,
    /// Our own details per request (JSON text), for `reasonq results --json`.
    pub details: Vec<String>,
    /// Requests not finished yet.
    pub pending: usize,
}

/// Builds the export of `jobs`. With `only` (dedup key -> line in the current input file),
/// just those jobs, in the file's order (a job enqueued from an earlier version of the file
/// may have stood on another line); otherwise the newest job of every request id, in the
/// order of the lines they were enqueued from.
pub fn export(jobs: Vec<Job>, only: Option<&HashMap<String, u64>>) -> Result<Export> {
    let mut latest: HashMap<String, (Job, ChatJob)> = HashMap::new();
    let mut out_undecodable = Vec::new();
    for job in jobs {
        let line = match only {
            Some(lines) => match job.dedup_key.as_ref().and_then(|k| lines.get(k)) {
                Some(&line) => Some(line),
                None => continue,
            },
            None => None,
        };
        let mut chat: ChatJob = match codec::decode(&job.payload) {
            Ok(chat) => chat,
            // One record this build cannot read fails its own line, not the export.
            Err(e) => {
                let failure = FailureRecord::new(
                    "undecodable_record",
                    format!("job {} cannot be read by this build: {e}", job.id),
                );
                let line = failure_line(Some(job.id), &format!("job-{}", job.id), &failure);
                out_undecodable.push(line);
                continue;
            }
        };
        if let Some(line) = line {
            chat.line = line;
        }
        match latest.get(&chat.custom_id) {
            Some((kept, _)) if kept.id > job.id => {}
            _ => {
                latest.insert(chat.custom_id.clone(), (job, chat));
            }
        }
    }
    let mut entries: Vec<(Job, ChatJob)> = latest.into_values().collect();
    entries.sort_by_key(|(job, chat)| (chat.line, job.id));
    let mut out = Export {
        errors: out_undecodable.clone(),
        lines: out_undecodable,
        ..Export::default()
    };
    for (job, chat) in entries {
        let mut detail = json!({
            "custom_id": chat.custom_id,
            "job_id": job.id,
            "state": job.state.as_str(),
            "attempts": job.attempt,
            "domain": chat.domain,
            "strategy": chat.strategy,
        });
        let line = match job.state {
            JobState::Completed => {
                let bytes = job.result.as_deref().ok_or_else(|| {
                    Error::InvalidState(format!("completed job {} has no result", job.id))
                })?;
                let response: ResponseRecord = codec::decode(bytes)?;
                detail["cached"] = json!(response.cached);
                detail["latency_ms"] = json!(response.latency_ms);
                detail["status_code"] = json!(response.status_code);
                success_line(job.id, &chat.custom_id, &response)
            }
            JobState::Discarded | JobState::Cancelled => {
                let failure = match (&job.last_error, job.state) {
                    (Some(text), JobState::Discarded) => FailureRecord::from_last_error(text),
                    _ => FailureRecord::new("cancelled", "the job was cancelled"),
                };
                detail["error"] = json!({"code": failure.code, "message": failure.message});
                let line = failure_line(Some(job.id), &chat.custom_id, &failure);
                out.errors.push(line.clone());
                line
            }
            _ => {
                out.pending += 1;
                out.details.push(detail.to_string());
                continue;
            }
        };
        out.lines.push(line);
        out.details.push(detail.to_string());
    }
    Ok(out)
}

/// Writes JSON lines to `path` atomically (a temporary file renamed over it), so a crash
/// never leaves a half-written output.
pub fn write_jsonl(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for line in lines {
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
