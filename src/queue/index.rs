//! The job tables of one write transaction, and the single place that keeps the secondary
//! indices (`JOBS_DUE`, `JOBS_LEASED`, `JOBS_FINISHED`, `JOBS_COUNTS`) in step with a job's
//! state: every transition goes through [`JobTables::save`] or [`JobTables::delete`].

use redb::{ReadableTable, Table, WriteTransaction};

use super::job::{Job, JobState, Lease};
use crate::codec;
use crate::error::{Error, Result};
use crate::store::bodies;
use crate::store::tables::{self, BodyKey};

/// Key of a waiting job in `JOBS_DUE`: best priority first, then earliest run_at, then FIFO.
fn due_key(job: &Job, run_at: u64) -> (&str, u8, u64, u64) {
    (job.queue.as_str(), 255 - job.priority, run_at, job.id)
}

/// Where a job sits in the state indices: the fields of their keys that can change (queue,
/// id and priority never do). Taken before a change, so the old entries can be removed
/// without cloning the whole job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    state: JobState,
    run_at: u64,
    lease_expires_at: Option<u64>,
    finished_at: Option<u64>,
}

impl Placed {
    pub fn of(job: &Job) -> Placed {
        Placed {
            state: job.state,
            run_at: job.run_at,
            lease_expires_at: job.lease_expires_at,
            finished_at: job.finished_at,
        }
    }
}

/// Decodes a stored job.
pub(crate) fn decode_job(bytes: &[u8]) -> Result<Job> {
    Ok(codec::decode(bytes)?)
}

/// `JOB_RESULTS` open in a write transaction.
pub(crate) type ResultTable<'txn> = Table<'txn, u64, (&'static [u8], Option<BodyKey>)>;

/// Open job tables plus the count changes not yet written.
pub(crate) struct JobTables<'txn> {
    pub jobs: Table<'txn, u64, &'static [u8]>,
    pub due: Table<'txn, (&'static str, u8, u64, u64), ()>,
    pub leased: Table<'txn, (u64, u64), ()>,
    pub finished: Table<'txn, (u8, u64, u64), ()>,
    /// Opened on first use: most transitions touch neither.
    payloads: Option<Table<'txn, u64, &'static [u8]>>,
    results: Option<ResultTable<'txn>>,
    bodies: Option<bodies::Bodies<'txn>>,
    txn: &'txn WriteTransaction,
    counts: Table<'txn, (&'static str, u8), u64>,
    /// (queue, state code, delta), merged so a batch of 64 jobs makes a few count writes.
    deltas: Vec<(String, u8, i64)>,
}

impl<'txn> JobTables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self> {
        Ok(JobTables {
            jobs: txn.open_table(tables::JOBS)?,
            due: txn.open_table(tables::JOBS_DUE)?,
            leased: txn.open_table(tables::JOBS_LEASED)?,
            finished: txn.open_table(tables::JOBS_FINISHED)?,
            payloads: None,
            results: None,
            bodies: None,
            txn,
            counts: txn.open_table(tables::JOBS_COUNTS)?,
            deltas: Vec::new(),
        })
    }

    pub fn load(&self, id: u64) -> Result<Option<Job>> {
        self.jobs
            .get(id)?
            .map(|bytes| decode_job(bytes.value()))
            .transpose()
    }

    /// The payload table.
    pub fn payloads(&mut self) -> Result<&mut Table<'txn, u64, &'static [u8]>> {
        if self.payloads.is_none() {
            self.payloads = Some(self.txn.open_table(tables::JOB_PAYLOADS)?);
        }
        self.payloads
            .as_mut()
            .ok_or_else(|| Error::Task("the payload table did not open".into()))
    }

    /// The result table.
    pub fn results(&mut self) -> Result<&mut ResultTable<'txn>> {
        if self.results.is_none() {
            self.results = Some(self.txn.open_table(tables::JOB_RESULTS)?);
        }
        self.results
            .as_mut()
            .ok_or_else(|| Error::Task("the result table did not open".into()))
    }

    /// The response bodies (see [`bodies`]).
    fn bodies(&mut self) -> Result<&mut bodies::Bodies<'txn>> {
        if self.bodies.is_none() {
            self.bodies = Some(bodies::Bodies::open(self.txn)?);
        }
        self.bodies
            .as_mut()
            .ok_or_else(|| Error::Task("the body tables did not open".into()))
    }

    /// The job with its payload (what a lease hands to a worker).
    pub fn load_with_payload(&mut self, id: u64) -> Result<Job> {
        let mut job = self.load_existing(id)?;
        if let Some(bytes) = self.payloads()?.get(id)? {
            job.payload = bytes.value().to_vec();
        }
        Ok(job)
    }

    pub fn load_existing(&self, id: u64) -> Result<Job> {
        self.load(id)?.ok_or_else(|| Error::NotFound {
            what: format!("job {id}"),
        })
    }

    /// The job behind a lease, if the lease still holds it; [`Error::LeaseLost`] otherwise.
    pub fn fenced(&self, lease: &Lease) -> Result<Job> {
        let id = lease.job.id;
        match self.load(id)? {
            Some(job) if job.state == JobState::Running && job.lease_token == lease.token => {
                Ok(job)
            }
            _ => Err(Error::LeaseLost { job_id: id }),
        }
    }

    /// Stores `after` (a new job, or a changed one that was at `before`) and moves its index
    /// entries to match its new state.
    /// A new job's payload is stored here, once.
    pub fn save(&mut self, before: Option<Placed>, after: &Job) -> Result<()> {
        match before {
            Some(before) => self.unindex(after, before)?,
            None => {
                let id = after.id;
                self.payloads()?.insert(id, after.payload.as_slice())?;
            }
        }
        self.index(after, Placed::of(after))?;
        let bytes = codec::encode(after)?;
        self.jobs.insert(after.id, bytes.as_slice())?;
        Ok(())
    }

    /// Stores a completed job's result and its body (shared, see [`bodies`]).
    pub fn put_result(&mut self, id: u64, record: &[u8], body: Option<&[u8]>) -> Result<()> {
        let key = body.map(|b| self.bodies()?.put(b)).transpose()?;
        let old = self
            .results()?
            .insert(id, (record, key))?
            .and_then(|v| v.value().1);
        if let Some(old) = old {
            self.bodies()?.release(&old)?;
        }
        Ok(())
    }

    /// Removes a job with its payload, result and state index entries (the caller removes
    /// queue/dedup entries).
    pub fn delete(&mut self, job: &Job) -> Result<()> {
        self.unindex(job, Placed::of(job))?;
        self.jobs.remove(job.id)?;
        self.payloads()?.remove(job.id)?;
        let body = self.results()?.remove(job.id)?.and_then(|v| v.value().1);
        if let Some(body) = body {
            self.bodies()?.release(&body)?;
        }
        Ok(())
    }

    fn index(&mut self, job: &Job, at: Placed) -> Result<()> {
        match at.state {
            s if s.is_waiting() => {
                self.due.insert(due_key(job, at.run_at), ())?;
            }
            JobState::Running => {
                self.leased
                    .insert((at.lease_expires_at.unwrap_or(0), job.id), ())?;
            }
            s => {
                self.finished
                    .insert((s.code(), at.finished_at.unwrap_or(0), job.id), ())?;
            }
        }
        self.count(&job.queue, at.state, 1);
        Ok(())
    }

    fn unindex(&mut self, job: &Job, at: Placed) -> Result<()> {
        match at.state {
            s if s.is_waiting() => {
                self.due.remove(due_key(job, at.run_at))?;
            }
            JobState::Running => {
                self.leased
                    .remove((at.lease_expires_at.unwrap_or(0), job.id))?;
            }
            s => {
                self.finished
                    .remove((s.code(), at.finished_at.unwrap_or(0), job.id))?;
            }
        }
        self.count(&job.queue, at.state, -1);
        Ok(())
    }

    fn count(&mut self, queue: &str, state: JobState, delta: i64) {
        let code = state.code();
        match self
            .deltas
            .iter_mut()
            .find(|(q, c, _)| *c == code && q == queue)
        {
            Some(entry) => entry.2 += delta,
            None => self.deltas.push((queue.to_owned(), code, delta)),
        }
    }

    /// Writes the pending count changes. Every operation ends with it.
    pub fn finish(mut self) -> Result<()> {
        for (queue, code, delta) in std::mem::take(&mut self.deltas) {
            if delta == 0 {
                continue;
            }
            let key = (queue.as_str(), code);
            let old = self.counts.get(key)?.map(|v| v.value()).unwrap_or(0);
            let new = old.saturating_add_signed(delta);
            if new == 0 {
                self.counts.remove(key)?;
            } else {
                self.counts.insert(key, new)?;
            }
        }
        Ok(())
    }
}
