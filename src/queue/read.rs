//! Queue queries as functions of a read transaction (see [`super::Queue`] for async ones).

use redb::{ReadTransaction, ReadableTable};

use super::index::decode_job;
use super::job::{Counts, Job, JobState};
use crate::error::Result;
use crate::store::{bodies, tables};

/// One job by id, whole (payload, result and body).
pub fn get_read(txn: &ReadTransaction, id: u64) -> Result<Option<Job>> {
    Whole::open(txn)?.get(id)
}

/// Reads jobs whole: the state record with its payload, result and body.
pub struct Whole<'t> {
    txn: &'t ReadTransaction,
    jobs: redb::ReadOnlyTable<u64, &'static [u8]>,
    payloads: redb::ReadOnlyTable<u64, &'static [u8]>,
    results: redb::ReadOnlyTable<u64, (&'static [u8], Option<tables::BodyKey>)>,
}

impl<'t> Whole<'t> {
    /// Opens the job tables of `txn`.
    pub fn open(txn: &'t ReadTransaction) -> Result<Self> {
        Ok(Whole {
            txn,
            jobs: txn.open_table(tables::JOBS)?,
            payloads: txn.open_table(tables::JOB_PAYLOADS)?,
            results: txn.open_table(tables::JOB_RESULTS)?,
        })
    }

    /// One job by id.
    pub fn get(&self, id: u64) -> Result<Option<Job>> {
        let Some(bytes) = self.jobs.get(id)? else {
            return Ok(None);
        };
        let job = decode_job(bytes.value())?;
        self.fill(job).map(Some)
    }

    /// One job's state record only (no payload, result or body): what a filter over many
    /// jobs reads before it loads the few it keeps.
    pub fn state(&self, id: u64) -> Result<Option<Job>> {
        self.jobs
            .get(id)?
            .map(|bytes| decode_job(bytes.value()))
            .transpose()
    }

    /// One job's result record, without its body.
    pub fn result_record(&self, id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.results.get(id)?.map(|v| v.value().0.to_vec()))
    }

    /// A job read by [`Whole::state`], with its payload, result and body.
    pub fn fill(&self, mut job: Job) -> Result<Job> {
        if let Some(payload) = self.payloads.get(job.id)? {
            job.payload = payload.value().to_vec();
        }
        if let Some(result) = self.results.get(job.id)? {
            let (record, body) = result.value();
            job.result = Some(record.to_vec());
            if let Some(hash) = body {
                job.body = bodies::get_read(self.txn, &hash)?;
            }
        }
        Ok(job)
    }
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
            let whole = Whole::open(txn)?;
            let by_queue = txn.open_table(tables::JOBS_BY_QUEUE)?;
            for entry in by_queue.range((queue, 0u64)..=(queue, u64::MAX))? {
                let id = entry?.0.value().1;
                if let Some(job) = whole.get(id)? {
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
            let whole = Whole::open(txn)?;
            for entry in whole.jobs.iter()? {
                let job = decode_job(entry?.1.value())?;
                if keep(&job) {
                    out.push(whole.fill(job)?);
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
    queue_names(&txn.open_table(tables::JOBS_COUNTS)?)
}

/// [`queues_read`] from the counts table, open in a read or a write transaction.
pub fn queue_names(table: &impl ReadableTable<(&'static str, u8), u64>) -> Result<Vec<String>> {
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

/// Ids of `queue`'s waiting jobs (available, scheduled, retryable), from the due index.
pub fn waiting_ids_read(txn: &ReadTransaction, queue: &str) -> Result<Vec<u64>> {
    let due = txn.open_table(tables::JOBS_DUE)?;
    let range = due.range((queue, 0u8, 0u64, 0u64)..=(queue, u8::MAX, u64::MAX, u64::MAX))?;
    range
        .map(|row| Ok(row?.0.value().3))
        .collect::<Result<Vec<u64>>>()
}

/// Jobs (of every queue) that ended in the terminal `state`, oldest finish first, whole.
/// Reads the finished index, so its cost follows the jobs in that state, not all jobs.
pub fn finished_read(
    txn: &ReadTransaction,
    state: JobState,
    mut each: impl FnMut(Job) -> Result<()>,
) -> Result<()> {
    let finished = txn.open_table(tables::JOBS_FINISHED)?;
    let whole = Whole::open(txn)?;
    let code = state.code();
    for row in finished.range((code, 0u64, 0u64)..=(code, u64::MAX, u64::MAX))? {
        let id = row?.0.value().2;
        if let Some(job) = whole.get(id)? {
            each(job)?;
        }
    }
    Ok(())
}
