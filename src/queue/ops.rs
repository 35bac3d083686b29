//! Queue operations as synchronous functions of a write transaction, so callers can compose
//! several of them (e.g. complete a job and record its experience) in one commit. Every one
//! takes `now` (ms) explicitly: they stay pure functions of the transaction (a group commit
//! may re-run them) and tests can drive time.

use std::collections::hash_map::{Entry, HashMap};

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::attempts;
use super::backoff::backoff_ms;
use super::index::{JobTables, Placed};
use super::job::{
    Enqueued, Failure, Job, JobState, Lease, NewJob, QueueConfig, Retention, FREE_INTERRUPTIONS,
    FREE_SNOOZES,
};
use crate::error::{Error, Result};
use crate::store::tables;

/// Enqueues one job.
pub fn enqueue_in(
    txn: &WriteTransaction,
    config: &QueueConfig,
    job: &NewJob,
    now: u64,
) -> Result<Enqueued> {
    let mut out = enqueue_many_in(txn, config, std::slice::from_ref(job), now)?;
    out.pop()
        .ok_or_else(|| Error::Task("enqueue produced no result".into()))
}

/// Enqueues jobs in order. A job whose dedup key is already taken in its queue (by a stored
/// job or an earlier one of this batch) is not inserted: its `Enqueued` names the holder.
pub fn enqueue_many_in(
    txn: &WriteTransaction,
    config: &QueueConfig,
    jobs: &[NewJob],
    now: u64,
) -> Result<Vec<Enqueued>> {
    enqueue_answered_in(txn, config, jobs, &[], now)
}

/// A job's result (and the response body it refers to) known when it is enqueued.
pub type Known<'a> = Option<(&'a [u8], Option<&'a [u8]>)>;

/// [`enqueue_many_in`], where `answers[i]` (when given) is the result of `jobs[i]`, known
/// already (the cache had it): such a job is inserted completed, with one attempt, and no
/// worker ever runs it. A job that is not inserted (its dedup key is taken) keeps its state.
pub fn enqueue_answered_in(
    txn: &WriteTransaction,
    config: &QueueConfig,
    jobs: &[NewJob],
    answers: &[Known<'_>],
    now: u64,
) -> Result<Vec<Enqueued>> {
    for job in jobs {
        validate(job)?;
    }
    let plan = plan_dedup(txn, jobs)?;
    let fresh = plan.iter().filter(|p| matches!(p, Slot::New)).count() as u64;
    let mut next_id = if fresh > 0 {
        tables::allocate_ids(txn, tables::NEXT_JOB_ID, fresh)?
    } else {
        0
    };

    let mut t = JobTables::open(txn)?;
    let mut by_queue = txn.open_table(tables::JOBS_BY_QUEUE)?;
    let mut dedup = txn.open_table(tables::JOBS_DEDUP)?;
    let mut out: Vec<Enqueued> = Vec::with_capacity(jobs.len());
    for (i, (new, slot)) in jobs.iter().zip(plan).enumerate() {
        let id = match slot {
            Slot::Stored(id) => id,
            Slot::SameAs(first) => out[first].id,
            Slot::New => {
                let id = next_id;
                next_id += 1;
                let mut job = new_job(config, new, id, now);
                if let Some(&Some((result, body))) = answers.get(i) {
                    job.state = JobState::Completed;
                    job.attempt = 1;
                    job.finished_at = Some(now);
                    t.put_result(id, result, body)?;
                }
                t.save(None, &job)?;
                by_queue.insert((job.queue.as_str(), id), ())?;
                if let Some(key) = job.dedup_key.as_deref() {
                    dedup.insert((job.queue.as_str(), key), id)?;
                }
                out.push(Enqueued { id, inserted: true });
                continue;
            }
        };
        out.push(Enqueued {
            id,
            inserted: false,
        });
    }
    t.finish()?;
    Ok(out)
}

/// Where each job of a batch goes.
enum Slot {
    /// Inserted with a fresh id.
    New,
    /// Its dedup key belongs to this stored job.
    Stored(u64),
    /// Its dedup key belongs to the job at this index of the same batch.
    SameAs(usize),
}

/// Resolves dedup keys before ids are allocated, so ids are only spent on inserted jobs.
fn plan_dedup(txn: &WriteTransaction, jobs: &[NewJob]) -> Result<Vec<Slot>> {
    let dedup = txn.open_table(tables::JOBS_DEDUP)?;
    let mut first_in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let mut plan = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let Some(key) = job.dedup_key.as_deref() else {
            plan.push(Slot::New);
            continue;
        };
        let slot = match dedup.get((job.queue.as_str(), key))? {
            Some(id) => Slot::Stored(id.value()),
            None => match first_in_batch.entry((job.queue.as_str(), key)) {
                Entry::Occupied(first) => Slot::SameAs(*first.get()),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                    Slot::New
                }
            },
        };
        plan.push(slot);
    }
    Ok(plan)
}

fn new_job(config: &QueueConfig, new: &NewJob, id: u64, now: u64) -> Job {
    let run_at = new.run_at.unwrap_or(now);
    Job {
        id,
        queue: new.queue.clone(),
        kind: new.kind.clone(),
        payload: new.payload.clone(),
        priority: new.priority,
        run_at,
        attempt: 0,
        max_attempts: new.max_attempts.unwrap_or(config.default_max_attempts),
        state: if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        },
        lease_expires_at: None,
        lease_owner: None,
        lease_token: 0,
        last_error: None,
        dedup_key: new.dedup_key.clone(),
        created_at: now,
        finished_at: None,
        result: None,
        body: None,
        interruptions: 0,
    }
}

fn validate(job: &NewJob) -> Result<()> {
    if job.queue.is_empty() {
        return Err(Error::Invalid("a job needs a queue name".into()));
    }
    if job.max_attempts == Some(0) {
        return Err(Error::Invalid("max_attempts must be at least 1".into()));
    }
    Ok(())
}

/// Leases up to `max` due jobs of `queue` (highest priority first, then earliest run_at, then
/// FIFO), each for `lease_for_ms`. Each lease starts an attempt and gets a new fencing token.
///
/// Reads only the due index: within one priority level it is sorted by run_at, so the first
/// entry not yet due ends that level and the scan jumps to the next one.
pub fn lease_in(
    txn: &WriteTransaction,
    queue: &str,
    max: usize,
    lease_for_ms: u64,
    owner: &str,
    now: u64,
) -> Result<Vec<Lease>> {
    let mut t = JobTables::open(txn)?;
    let picked = due_ids(&t, queue, max, now)?;
    let expires = now.saturating_add(lease_for_ms);
    let mut leases = Vec::with_capacity(picked.len());
    for id in picked {
        let job = t.load_with_payload(id)?;
        leases.push(start_lease(&mut t, job, owner, expires)?);
    }
    t.finish()?;
    Ok(leases)
}

/// Moves `job` to running under a new lease of `owner` until `expires`: an attempt starts
/// and the fencing token moves on.
fn start_lease(t: &mut JobTables<'_>, mut job: Job, owner: &str, expires: u64) -> Result<Lease> {
    let before = Placed::of(&job);
    job.state = JobState::Running;
    job.attempt = job.attempt.saturating_add(1);
    job.lease_token += 1;
    job.lease_expires_at = Some(expires);
    job.lease_owner = Some(owner.to_owned());
    t.save(Some(before), &job)?;
    Ok(Lease {
        token: job.lease_token,
        job,
    })
}

/// The lease expiry of a job handed to a provider's batch API: it never expires and is not
/// rescued at open (the remote batch holds the job across restarts); it ends when the remote
/// result is recorded, or when the job is released, failed or cancelled.
pub const REMOTE_LEASE: u64 = u64::MAX;

/// Leases the jobs of `ids` that are still waiting (whatever their run_at) to `owner` until
/// `expires_at` ([`REMOTE_LEASE`] for a provider batch), in the order of `ids`. Ids that are
/// no longer waiting are skipped. Each lease starts an attempt and gets a new fencing token.
/// The leased jobs come without their payload (their holder has it already).
pub fn lease_ids_in(
    txn: &WriteTransaction,
    ids: &[u64],
    owner: &str,
    expires_at: u64,
) -> Result<Vec<Lease>> {
    let mut t = JobTables::open(txn)?;
    let mut leases = Vec::with_capacity(ids.len());
    for &id in ids {
        match t.load(id)? {
            Some(job) if job.state.is_waiting() => {
                leases.push(start_lease(&mut t, job, owner, expires_at)?);
            }
            _ => {}
        }
    }
    t.finish()?;
    Ok(leases)
}

/// Ids of up to `max` due jobs of `queue`, best first.
fn due_ids(t: &JobTables<'_>, queue: &str, max: usize, now: u64) -> Result<Vec<u64>> {
    let mut picked = Vec::with_capacity(max.min(1024));
    let end = (queue, u8::MAX, u64::MAX, u64::MAX);
    let mut level: u8 = 0;
    'levels: while picked.len() < max {
        for entry in t.due.range((queue, level, 0u64, 0u64)..=end)? {
            let (key, _) = entry?;
            let (_, lvl, run_at, id) = key.value();
            if run_at > now {
                // The rest of this priority level is later still.
                match lvl.checked_add(1) {
                    Some(next) => {
                        level = next;
                        continue 'levels;
                    }
                    None => break 'levels,
                }
            }
            picked.push(id);
            if picked.len() == max {
                break 'levels;
            }
        }
        break;
    }
    Ok(picked)
}

/// Extends a lease to `now + lease_for_ms`.
pub fn heartbeat_in(
    txn: &WriteTransaction,
    lease: &Lease,
    lease_for_ms: u64,
    now: u64,
) -> Result<()> {
    transition(txn, lease, |job| {
        job.lease_expires_at = Some(now.saturating_add(lease_for_ms));
    })
}

/// Completes a leased job with its result.
pub fn complete_in(txn: &WriteTransaction, lease: &Lease, result: &[u8], now: u64) -> Result<()> {
    complete_with_body_in(txn, lease, result, None, now)
}

/// Completes a leased job with its result record and the response body it refers to (stored
/// once, shared with a cache row of the same body; read back in [`Job::body`]).
pub fn complete_with_body_in(
    txn: &WriteTransaction,
    lease: &Lease,
    result: &[u8],
    body: Option<&[u8]>,
    now: u64,
) -> Result<()> {
    let mut t = JobTables::open(txn)?;
    complete_with(&mut t, lease, result, body, now)?;
    t.finish()?;
    txn.open_table(tables::JOB_CHECKPOINTS)?
        .remove(lease.job.id)?;
    Ok(())
}

/// Completes many leased jobs in one pass. Each entry gets its own outcome: a lost lease
/// fails that entry only.
pub fn complete_many_in(
    txn: &WriteTransaction,
    done: &[(Lease, Vec<u8>)],
    now: u64,
) -> Result<Vec<Result<()>>> {
    let done: Vec<Completing<'_>> = done
        .iter()
        .map(|(lease, result)| Completing {
            lease,
            result,
            body: None,
        })
        .collect();
    complete_all_in(txn, &done, now)
}

/// One leased job's completion: its result record and the response body it refers to.
pub struct Completing<'a> {
    pub lease: &'a Lease,
    pub result: &'a [u8],
    pub body: Option<&'a [u8]>,
}

/// [`complete_with_body_in`] for many jobs, with each table opened and each count written
/// once. Each entry gets its own outcome: a lost lease fails that entry only (nothing of it
/// is written).
pub fn complete_all_in(
    txn: &WriteTransaction,
    done: &[Completing<'_>],
    now: u64,
) -> Result<Vec<Result<()>>> {
    let mut t = JobTables::open(txn)?;
    // In job order: a burst's results and finished-index rows then land at the end of their
    // tables one after another (appends fill a leaf), where completion order would insert
    // before rows just written and split leaves in half.
    let mut order: Vec<usize> = (0..done.len()).collect();
    order.sort_by_key(|&i| done[i].lease.job.id);
    let mut outcomes: Vec<Option<Result<()>>> = (0..done.len()).map(|_| None).collect();
    for i in order {
        let c = &done[i];
        outcomes[i] = Some(
            match complete_with(&mut t, c.lease, c.result, c.body, now) {
                Err(e @ Error::LeaseLost { .. }) => Err(e),
                other => Ok(other?),
            },
        );
    }
    let outcomes: Vec<Result<()>> = outcomes.into_iter().flatten().collect();
    t.finish()?;
    let mut checkpoints = txn.open_table(tables::JOB_CHECKPOINTS)?;
    if !checkpoints.is_empty()? {
        for (c, outcome) in done.iter().zip(&outcomes) {
            if outcome.is_ok() {
                checkpoints.remove(c.lease.job.id)?;
            }
        }
    }
    Ok(outcomes)
}

fn complete_with(
    t: &mut JobTables<'_>,
    lease: &Lease,
    result: &[u8],
    body: Option<&[u8]>,
    now: u64,
) -> Result<()> {
    let mut job = t.fenced(lease)?;
    let before = Placed::of(&job);
    leave_running(&mut job, JobState::Completed);
    job.finished_at = Some(now);
    t.put_result(job.id, result, body)?;
    t.save(Some(before), &job)
}

/// Records a failed attempt (also in the job's attempt history). A retryable failure with
/// attempts left waits for the backoff (state `retryable`); a fatal one, or the last attempt,
/// discards the job. Returns the new state.
pub fn fail_in(
    txn: &WriteTransaction,
    config: &QueueConfig,
    lease: &Lease,
    error: &str,
    failure: Failure,
    now: u64,
) -> Result<JobState> {
    let mut state = JobState::Running;
    let mut wait_ms = None;
    transition(txn, lease, |job| {
        job.last_error = Some(error.to_owned());
        if failure == Failure::Retryable && job.attempt < job.max_attempts {
            leave_running(job, JobState::Retryable);
            let wait = backoff_ms(config, job.id, job.attempt);
            job.run_at = now.saturating_add(wait);
            wait_ms = Some(wait);
        } else {
            leave_running(job, JobState::Discarded);
            job.finished_at = Some(now);
        }
        state = job.state;
    })?;
    attempts::record_in(txn, lease.job.id, error, wait_ms, now)?;
    Ok(state)
}

/// Puts a running job back to `scheduled` for `delay_ms` (e.g. a 429 with `Retry-After`).
/// The first [`FREE_SNOOZES`] snoozes of a job spend no attempt; later ones do, so a server
/// that keeps saying "later" (a quota that never comes back) cannot keep a job forever: it is
/// discarded when its attempts run out. `error` (why the server said later) goes into the
/// job's attempt history.
pub fn snooze_in(
    txn: &WriteTransaction,
    lease: &Lease,
    error: &str,
    delay_ms: u64,
    now: u64,
) -> Result<JobState> {
    let mut snoozes = txn.open_table(tables::JOB_SNOOZES)?;
    let id = lease.job.id;
    let n = snoozes.get(id)?.map_or(0, |v| v.value()).saturating_add(1);
    snoozes.insert(id, n)?;
    drop(snoozes);
    let mut state = JobState::Scheduled;
    transition(txn, lease, |job| {
        if n <= FREE_SNOOZES {
            job.attempt = job.attempt.saturating_sub(1);
        } else if job.attempt >= job.max_attempts {
            job.last_error = Some(format!(
                "the server asked to wait {n} times; attempts ran out"
            ));
            leave_running(job, JobState::Discarded);
            job.finished_at = Some(now);
            state = JobState::Discarded;
            return;
        }
        leave_running(job, JobState::Scheduled);
        job.run_at = now.saturating_add(delay_ms);
    })?;
    let wait_ms = (state == JobState::Scheduled).then_some(delay_ms);
    attempts::record_in(txn, id, error, wait_ms, now)?;
    Ok(state)
}

/// Gives a running job back (e.g. at shutdown): available again at once, in its old place in
/// line, without spending its attempt.
pub fn release_in(txn: &WriteTransaction, lease: &Lease) -> Result<()> {
    transition(txn, lease, |job| {
        leave_running(job, JobState::Available);
        job.attempt = job.attempt.saturating_sub(1);
    })
}

/// Stores a running job's progress durably; [`super::load_checkpoint_read`] reads it back
/// when the job runs again. Completing the job deletes it.
pub fn checkpoint_in(txn: &WriteTransaction, lease: &Lease, bytes: &[u8]) -> Result<()> {
    JobTables::open(txn)?.fenced(lease)?;
    txn.open_table(tables::JOB_CHECKPOINTS)?
        .insert(lease.job.id, bytes)?;
    Ok(())
}

/// Applies `change` to a job the lease still holds and saves it with its indices.
fn transition(txn: &WriteTransaction, lease: &Lease, change: impl FnOnce(&mut Job)) -> Result<()> {
    let mut t = JobTables::open(txn)?;
    let mut job = t.fenced(lease)?;
    let before = Placed::of(&job);
    change(&mut job);
    t.save(Some(before), &job)?;
    t.finish()
}

/// Moves a job to `state`, dropping its lease if it had one.
fn leave_running(job: &mut Job, state: JobState) {
    job.state = state;
    job.lease_expires_at = None;
    job.lease_owner = None;
}

/// Cancels a job that has not finished. A running job's worker loses its lease. Cancelling
/// a cancelled job is a no-op; a completed or discarded job cannot be cancelled.
pub fn cancel_in(txn: &WriteTransaction, id: u64, now: u64) -> Result<()> {
    cancel_because_in(txn, id, now, None)
}

/// [`cancel_in`], recording `reason` as the job's last error (why it was cancelled, for
/// the batch output: an expired batch's lines say so).
pub fn cancel_because_in(
    txn: &WriteTransaction,
    id: u64,
    now: u64,
    reason: Option<&str>,
) -> Result<()> {
    let mut t = JobTables::open(txn)?;
    let mut job = t.load_existing(id)?;
    match job.state {
        JobState::Cancelled => return Ok(()),
        JobState::Completed | JobState::Discarded => {
            return Err(Error::InvalidState(format!(
                "job {id} is {} and cannot be cancelled",
                job.state
            )))
        }
        _ => {}
    }
    let before = Placed::of(&job);
    leave_running(&mut job, JobState::Cancelled);
    job.finished_at = Some(now);
    if let Some(reason) = reason {
        job.last_error = Some(reason.to_string());
    }
    t.save(Some(before), &job)?;
    t.finish()
}

/// Runs a job again now, by hand: a discarded or cancelled job gets a fresh set of
/// attempts; a waiting one is moved up to now. Running and completed jobs are refused
/// (each job ends with exactly one result).
pub fn retry_in(txn: &WriteTransaction, id: u64, now: u64) -> Result<()> {
    let mut t = JobTables::open(txn)?;
    let mut job = t.load_existing(id)?;
    let before = Placed::of(&job);
    match job.state {
        JobState::Discarded | JobState::Cancelled => {
            job.attempt = 0;
            job.interruptions = 0;
            job.finished_at = None;
            txn.open_table(tables::JOB_SNOOZES)?.remove(id)?;
        }
        s if s.is_waiting() => {}
        s => {
            return Err(Error::InvalidState(format!(
                "job {id} is {s} and cannot be retried"
            )))
        }
    }
    job.state = JobState::Available;
    job.run_at = job.run_at.min(now);
    t.save(Some(before), &job)?;
    t.finish()
}

/// Running jobs whose lease expired at or before `now` (a hung or lost worker): back to
/// `available` in their old place, the attempt spent; discarded when it was the last one.
pub fn rescue_expired_in(txn: &WriteTransaction, now: u64) -> Result<usize> {
    rescue(txn, now, Some(now), |job| {
        job.last_error = Some(format!("lease expired during attempt {}", job.attempt));
    })
}

/// Every running job, at open: the process that leased it is gone (redb lets one process
/// hold the file). The interrupted attempt is refunded for the first
/// [`FREE_INTERRUPTIONS`] crashes of a job, then charged, so a job that kills the process
/// every time is eventually discarded.
pub fn rescue_interrupted_in(txn: &WriteTransaction, now: u64) -> Result<usize> {
    rescue(txn, now, None, |job| {
        job.last_error = Some(format!(
            "interrupted: the process stopped during attempt {}",
            job.attempt
        ));
        if job.interruptions < FREE_INTERRUPTIONS {
            job.attempt = job.attempt.saturating_sub(1);
        }
        job.interruptions = job.interruptions.saturating_add(1);
    })
}

/// Moves running jobs with a lease expiring at or before `until` (all if `None`) out of
/// `running`, after `mark` has set their error and attempt.
fn rescue(
    txn: &WriteTransaction,
    now: u64,
    until: Option<u64>,
    mark: impl Fn(&mut Job),
) -> Result<usize> {
    let mut t = JobTables::open(txn)?;
    // Remote leases are held by a provider's batch, not by a process: never rescued here.
    let until = until.unwrap_or(u64::MAX).min(REMOTE_LEASE - 1);
    let ids = t
        .leased
        .range((0u64, 0u64)..=(until, u64::MAX))?
        .map(|entry| entry.map(|(key, _)| key.value().1))
        .collect::<Result<Vec<u64>, _>>()?;
    let mut rescued = 0;
    for &id in &ids {
        let mut job = match t.load_existing(id) {
            Ok(job) => job,
            // A record this build cannot read stays as it is rather than making the file
            // impossible to open (the rescue runs at every open).
            Err(Error::Codec(e)) => {
                tracing::warn!(job = id, error = %e, "cannot read a running job; left as it is");
                continue;
            }
            Err(e) => return Err(e),
        };
        rescued += 1;
        let before = Placed::of(&job);
        mark(&mut job);
        let wait_ms = if job.attempt >= job.max_attempts {
            leave_running(&mut job, JobState::Discarded);
            job.finished_at = Some(now);
            None
        } else {
            leave_running(&mut job, JobState::Available);
            Some(0)
        };
        t.save(Some(before), &job)?;
        let error = job.last_error.as_deref().unwrap_or_default();
        attempts::record_in(txn, id, error, wait_ms, now)?;
    }
    t.finish()?;
    Ok(rescued)
}

/// The queue's open hook ([`StoreConfig::with_open_hook`](crate::store::StoreConfig::with_open_hook)):
/// brings jobs of an older layout to the current one, then rescues every job left running by
/// a dead process. redb lets one process hold the file, so at open any running job is
/// orphaned.
pub fn rescue_at_open(txn: &WriteTransaction) -> Result<()> {
    upgrade_in(txn)?;
    let n = rescue_interrupted_in(txn, crate::clock::now_ms())?;
    if n > 0 {
        tracing::warn!(jobs = n, "rescued jobs left running by a stopped process");
    }
    Ok(())
}

/// The job layout this build writes, recorded in META once every job is at it.
const JOB_LAYOUT: u64 = 2;

/// Moves the payloads and results of layout-1 jobs (stored inline) to their own tables,
/// once per file. Results move as they are: their bodies stay inline in the old records.
fn upgrade_in(txn: &WriteTransaction) -> Result<()> {
    let mut meta = txn.open_table(tables::META)?;
    if meta.get(tables::JOB_LAYOUT)?.map(|v| v.value()) >= Some(JOB_LAYOUT) {
        return Ok(());
    }
    meta.insert(tables::JOB_LAYOUT, JOB_LAYOUT)?;
    drop(meta);
    let mut t = JobTables::open(txn)?;
    let ids = t
        .jobs
        .iter()?
        .map(|entry| entry.map(|(key, _)| key.value()))
        .collect::<Result<Vec<u64>, _>>()?;
    let mut moved = 0usize;
    for id in ids {
        let job = match t.load_existing(id) {
            Ok(job) => job,
            Err(Error::Codec(e)) => {
                tracing::warn!(job = id, error = %e, "cannot read a job to upgrade; left as it is");
                continue;
            }
            Err(e) => return Err(e),
        };
        t.payloads()?.insert(id, job.payload.as_slice())?;
        if let Some(result) = &job.result {
            t.results()?.insert(id, (result.as_slice(), None))?;
        }
        t.jobs.insert(id, crate::codec::encode(&job)?.as_slice())?;
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(jobs = moved, "job records upgraded to layout {JOB_LAYOUT}");
    }
    t.finish()
}

/// Deletes finished jobs older than their state's retention, with their index, dedup,
/// checkpoint and attempt entries (a pruned job's dedup key is free again) and their batch's input
/// digest. Returns how many.
pub fn prune_in(txn: &WriteTransaction, retention: &Retention, now: u64) -> Result<usize> {
    let mut t = JobTables::open(txn)?;
    let mut by_queue = txn.open_table(tables::JOBS_BY_QUEUE)?;
    let mut dedup = txn.open_table(tables::JOBS_DEDUP)?;
    let mut checkpoints = txn.open_table(tables::JOB_CHECKPOINTS)?;
    let mut snoozes = txn.open_table(tables::JOB_SNOOZES)?;
    let mut tries = txn.open_table(tables::JOB_ATTEMPTS)?;
    // A batch with a pruned job must enqueue its file again on a rerun.
    let mut inputs = txn.open_table(tables::BATCH_INPUTS)?;
    let mut pruned = 0;
    for state in JobState::ALL {
        let Some(age) = retention.of(state) else {
            continue;
        };
        let cut = now.saturating_sub(super::backoff::duration_ms(age));
        let code = state.code();
        let ids = t
            .finished
            .range((code, 0u64, 0u64)..=(code, cut, u64::MAX))?
            .map(|entry| entry.map(|(key, _)| key.value().2))
            .collect::<Result<Vec<u64>, _>>()?;
        for id in ids {
            let job = t.load_existing(id)?;
            t.delete(&job)?;
            by_queue.remove((job.queue.as_str(), id))?;
            if let Some(key) = job.dedup_key.as_deref() {
                let holder = dedup.get((job.queue.as_str(), key))?.map(|v| v.value());
                if holder == Some(id) {
                    dedup.remove((job.queue.as_str(), key))?;
                }
            }
            checkpoints.remove(id)?;
            snoozes.remove(id)?;
            attempts::remove_in(&mut tries, id)?;
            inputs.remove(job.queue.as_str())?;
            pruned += 1;
        }
    }
    t.finish()?;
    Ok(pruned)
}
