//! Queue queries as functions of a read transaction (see [`super::Queue`] for async ones).

use redb::{ReadTransaction, ReadableTable};

use super::index::decode_job;
use super::job::{Counts, Job, JobState};
use crate::error::Result;
use crate::store::tables;

/// One job by id.
pub fn get_read(txn: &ReadTransaction, id: u64) -> Result<Option<Job>> {
    let jobs = txn.open_table(tables::JOBS)?;
    let job = jobs.get(id)?.map(|v| decode_job(v.value())).transpose()?;
    Ok(job)
}

/// The job enqueued in `queue` with `dedup_key`, if any.
pub fn find_by_dedup_read(
    txn: &ReadTransaction,
    queue: &str,
    dedup_key: &str,
) -> Result<Option<Job>> {
    let dedup = txn.open_table(tables::JOBS_DEDUP)?;
    let Some(id) = dedup.get((queue, dedup_key))?.map(|v| v.value()) else {
        return Ok(None);
    };
    get_read(txn, id)
}

/// Up to `limit` jobs in id order, optionally of one queue and one state. Admin listing: it
/// reads the queue's (or every) job until `limit` match.
pub fn list_read(
    txn: &ReadTransaction,
    queue: Option<&str>,
    state: Option<JobState>,
    limit: usize,
) -> Result<Vec<Job>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let keep = |job: &Job| state.is_none_or(|s| job.state == s);
    match queue {
        Some(queue) => {
            let jobs = txn.open_table(tables::JOBS)?;
            let by_queue = txn.open_table(tables::JOBS_BY_QUEUE)?;
            for entry in by_queue.range((queue, 0u64)..=(queue, u64::MAX))? {
                let id = entry?.0.value().1;
                if let Some(bytes) = jobs.get(id)? {
                    let job = decode_job(bytes.value())?;
                    if keep(&job) {
                        out.push(job);
                        if out.len() == limit {
                            break;
                        }
                    }
                }
            }
        }
        None => {
            let jobs = txn.open_table(tables::JOBS)?;
            for entry in jobs.iter()? {
                let job = decode_job(entry?.1.value())?;
                if keep(&job) {
                    out.push(job);
                    if out.len() == limit {
                        break;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Every job of a queue, in enqueue (id) order.
pub fn jobs_in_queue_read(txn: &ReadTransaction, queue: &str) -> Result<Vec<Job>> {
    list_read(txn, Some(queue), None, usize::MAX)
}

/// Jobs per state, of one queue or of all. Reads the maintained counters, not the jobs.
pub fn counts_read(txn: &ReadTransaction, queue: Option<&str>) -> Result<Counts> {
    let table = txn.open_table(tables::JOBS_COUNTS)?;
    let mut counts = Counts::default();
    let range = match queue {
        Some(q) => table.range((q, 0u8)..=(q, u8::MAX))?,
        None => table.range::<(&str, u8)>(..)?,
    };
    for entry in range {
        let (key, n) = entry?;
        let (_, code) = key.value();
        if let Some(state) = JobState::ALL.into_iter().find(|s| s.code() == code) {
            counts.add(state, n.value());
        }
    }
    Ok(counts)
}

/// Names of the queues that hold at least one job, sorted.
pub fn queues_read(txn: &ReadTransaction) -> Result<Vec<String>> {
    let table = txn.open_table(tables::JOBS_COUNTS)?;
    let mut names: Vec<String> = Vec::new();
    for entry in table.range::<(&str, u8)>(..)? {
        let (key, _) = entry?;
        let (queue, _) = key.value();
        if names.last().map(String::as_str) != Some(queue) {
            names.push(queue.to_owned());
        }
    }
    Ok(names)
}

/// The last checkpoint stored for a job.
pub fn load_checkpoint_read(txn: &ReadTransaction, id: u64) -> Result<Option<Vec<u8>>> {
    let table = txn.open_table(tables::JOB_CHECKPOINTS)?;
    let bytes = table.get(id)?.map(|v| v.value().to_vec());
    Ok(bytes)
}
