//! The queue against a plain in-memory model: a sequence of operations, with a controlled
//! clock, must give the same result for every call and leave the same jobs, counts and
//! checkpoints behind. Driven by proptest (`tests/queue_model.rs`) and by the `queue_ops`
//! fuzz target (through [`ops_from_bytes`]).

use std::collections::BTreeMap;

use crate::queue::{self, Counts, Failure, Job, JobState, Lease, NewJob, QueueConfig};
use crate::store::{Durability, Store, StoreConfig};
use crate::Error;

/// Lease length used by every `Lease` operation.
pub const LEASE_MS: u64 = 10_000;
/// The two queues operations pick from.
pub const QUEUES: [&str; 2] = ["a", "b"];
const HOUR: u64 = 3_600_000;
/// Clock advances an `Advance` operation may pick (crossing lease, backoff and retention).
pub const ADVANCES: [u64; 5] = [1_000, 6_000, 11_000, 25 * HOUR, 8 * 24 * HOUR];
/// Enqueue delays a spec may pick.
pub const DELAYS: [u64; 3] = [0, 500, 5_000];
/// Snooze delays a `Snooze` may pick.
pub const SNOOZES: [u64; 2] = [0, 2_000];
/// Job ids `Cancel` and `Retry` pick from (some never exist).
pub const IDS: u64 = 12;

/// One job to enqueue.
#[derive(Debug, Clone)]
pub struct Spec {
    pub queue: usize,
    pub priority: u8,
    pub delay: Option<u64>,
    pub key: Option<u8>,
    pub max_attempts: Option<u32>,
}

/// One queue operation. Lease-taking operations pick among the leases taken so far
/// (`index % count`), including stale ones, so fencing is exercised.
#[derive(Debug, Clone)]
pub enum Op {
    Enqueue(Vec<Spec>),
    Lease { queue: usize, max: usize },
    Complete(usize),
    CompleteMany(usize, usize),
    Fail { pick: usize, fatal: bool },
    Snooze { pick: usize, delay: u64 },
    Release(usize),
    Heartbeat(usize),
    Checkpoint(usize),
    Cancel(u64),
    Retry(u64),
    Advance(u64),
    RescueExpired,
    RescueInterrupted,
    Prune,
}

/// Most operations [`ops_from_bytes`] makes, to keep one fuzz run short.
pub const MAX_OPS: usize = 64;

/// Turns arbitrary bytes into operations (the fuzz target's input); every byte string gives
/// a valid sequence.
pub fn ops_from_bytes(bytes: &[u8]) -> Vec<Op> {
    let mut it = bytes.iter().copied();
    let mut next = move || it.next();
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(tag) = next() else { break };
        let a = next().unwrap_or(0);
        let b = next().unwrap_or(0);
        let (ai, bi) = (usize::from(a), usize::from(b));
        let op = match tag % 15 {
            0 => Op::Enqueue(
                (0..=(a % 3))
                    .map(|_| spec_of(next().unwrap_or(0), next().unwrap_or(0)))
                    .collect(),
            ),
            1 => Op::Lease {
                queue: ai % 2,
                max: 1 + bi % 3,
            },
            2 => Op::Complete(ai),
            3 => Op::CompleteMany(ai, bi),
            4 => Op::Fail {
                pick: ai,
                fatal: b % 2 == 1,
            },
            5 => Op::Snooze {
                pick: ai,
                delay: SNOOZES[bi % SNOOZES.len()],
            },
            6 => Op::Release(ai),
            7 => Op::Heartbeat(ai),
            8 => Op::Checkpoint(ai),
            9 => Op::Cancel(u64::from(a) % IDS),
            10 => Op::Retry(u64::from(a) % IDS),
            11 => Op::Advance(ADVANCES[ai % ADVANCES.len()]),
            12 => Op::RescueExpired,
            13 => Op::RescueInterrupted,
            _ => Op::Prune,
        };
        ops.push(op);
    }
    ops
}

fn spec_of(a: u8, b: u8) -> Spec {
    let pick = |v: u8, n: u8| (v % (n + 1)).checked_sub(1);
    Spec {
        queue: usize::from(a & 1),
        priority: (a >> 1) % 3,
        delay: pick(a >> 3, DELAYS.len() as u8).map(|i| DELAYS[usize::from(i)]),
        key: pick(b, 3),
        max_attempts: pick(b >> 2, 3).map(|m| u32::from(m) + 1),
    }
}

/// What the model keeps of a job: every field an operation can change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MJob {
    id: u64,
    queue: String,
    priority: u8,
    run_at: u64,
    attempt: u32,
    max_attempts: u32,
    state: JobState,
    lease_expires_at: Option<u64>,
    lease_token: u64,
    dedup_key: Option<String>,
    finished_at: Option<u64>,
    result: Option<Vec<u8>>,
    interruptions: u32,
}

impl MJob {
    fn of(job: &Job) -> MJob {
        MJob {
            id: job.id,
            queue: job.queue.clone(),
            priority: job.priority,
            run_at: job.run_at,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            state: job.state,
            lease_expires_at: job.lease_expires_at,
            lease_token: job.lease_token,
            dedup_key: job.dedup_key.clone(),
            finished_at: job.finished_at,
            result: job.result.clone(),
            interruptions: job.interruptions,
        }
    }

    fn waiting(&self) -> bool {
        matches!(
            self.state,
            JobState::Available | JobState::Scheduled | JobState::Retryable
        )
    }

    fn leave(&mut self, state: JobState) {
        self.state = state;
        self.lease_expires_at = None;
    }
}

/// The outcome of one call, as compared between queue and model.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Unit,
    Enqueued(Vec<(u64, bool)>),
    Leased(Vec<(u64, u64, u32)>),
    State(JobState),
    Count(usize),
    Many(Vec<Result<(), String>>),
    Err(String),
}

fn kind(e: &Error) -> String {
    match e {
        Error::LeaseLost { job_id } => format!("lease lost {job_id}"),
        Error::InvalidState(_) => "invalid state".into(),
        Error::NotFound { .. } => "not found".into(),
        // Never expected: it differs from every model outcome, so it is reported.
        other => format!("unexpected error: {other}"),
    }
}

fn out<T>(r: crate::Result<T>, f: impl FnOnce(T) -> Out) -> Out {
    match r {
        Ok(v) => f(v),
        Err(e) => Out::Err(kind(&e)),
    }
}

#[derive(Default)]
struct Model {
    jobs: BTreeMap<u64, MJob>,
    checkpoints: BTreeMap<u64, Vec<u8>>,
    /// Snoozes per job (the first `FREE_SNOOZES` spend no attempt).
    snoozes: BTreeMap<u64, u32>,
    next_id: u64,
}

impl Model {
    fn fenced(&mut self, lease: &Lease) -> Result<&mut MJob, String> {
        let id = lease.job.id;
        match self.jobs.get_mut(&id) {
            Some(j) if j.state == JobState::Running && j.lease_token == lease.token => Ok(j),
            _ => Err(format!("lease lost {id}")),
        }
    }

    /// Applies `change` to the job if the lease still holds it.
    fn on_lease(&mut self, lease: &Lease, change: impl FnOnce(&mut MJob)) -> Out {
        match self.fenced(lease) {
            Err(e) => Out::Err(e),
            Ok(j) => {
                change(j);
                Out::Unit
            }
        }
    }

    fn enqueue(&mut self, config: &QueueConfig, specs: &[Spec], now: u64) -> Out {
        let mut out = Vec::new();
        for s in specs {
            let queue = QUEUES[s.queue].to_string();
            let key = s.key.map(|k| format!("k{k}"));
            if let Some(holder) = self
                .jobs
                .values()
                .find(|j| key.is_some() && j.queue == queue && j.dedup_key == key)
            {
                out.push((holder.id, false));
                continue;
            }
            self.next_id += 1;
            let id = self.next_id;
            let run_at = now + s.delay.unwrap_or(0);
            self.jobs.insert(
                id,
                MJob {
                    id,
                    queue,
                    priority: s.priority,
                    run_at,
                    attempt: 0,
                    max_attempts: s.max_attempts.unwrap_or(config.default_max_attempts),
                    state: if run_at > now {
                        JobState::Scheduled
                    } else {
                        JobState::Available
                    },
                    lease_expires_at: None,
                    lease_token: 0,
                    dedup_key: key,
                    finished_at: None,
                    result: None,
                    interruptions: 0,
                },
            );
            out.push((id, true));
        }
        Out::Enqueued(out)
    }

    fn lease(&mut self, queue: &str, max: usize, now: u64) -> Out {
        let mut due: Vec<&MJob> = self
            .jobs
            .values()
            .filter(|j| j.queue == queue && j.waiting() && j.run_at <= now)
            .collect();
        due.sort_by_key(|j| (255 - j.priority, j.run_at, j.id));
        let ids: Vec<u64> = due.iter().take(max).map(|j| j.id).collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.state = JobState::Running;
                j.attempt += 1;
                j.lease_token += 1;
                j.lease_expires_at = Some(now + LEASE_MS);
                out.push((id, j.lease_token, j.attempt));
            }
        }
        Out::Leased(out)
    }

    fn complete(&mut self, lease: &Lease, now: u64) -> Result<(), String> {
        let j = self.fenced(lease)?;
        j.leave(JobState::Completed);
        j.finished_at = Some(now);
        j.result = Some(result_of(lease));
        self.checkpoints.remove(&lease.job.id);
        Ok(())
    }

    fn fail(&mut self, config: &QueueConfig, lease: &Lease, fatal: bool, now: u64) -> Out {
        match self.fenced(lease) {
            Err(e) => Out::Err(e),
            Ok(j) => {
                if !fatal && j.attempt < j.max_attempts {
                    j.leave(JobState::Retryable);
                    j.run_at = now + queue::backoff_ms(config, j.id, j.attempt);
                } else {
                    j.leave(JobState::Discarded);
                    j.finished_at = Some(now);
                }
                Out::State(j.state)
            }
        }
    }

    fn cancel(&mut self, id: u64, now: u64) -> Out {
        let Some(j) = self.jobs.get_mut(&id) else {
            return Out::Err("not found".into());
        };
        match j.state {
            JobState::Cancelled => Out::Unit,
            JobState::Completed | JobState::Discarded => Out::Err("invalid state".into()),
            _ => {
                j.leave(JobState::Cancelled);
                j.finished_at = Some(now);
                Out::Unit
            }
        }
    }

    fn snooze(&mut self, lease: &Lease, delay: u64, now: u64) -> Out {
        let id = lease.job.id;
        let n = self.snoozes.get(&id).copied().unwrap_or(0) + 1;
        let mut state = JobState::Scheduled;
        let out = self.on_lease(lease, |j| {
            if n <= queue::FREE_SNOOZES {
                j.attempt = j.attempt.saturating_sub(1);
            } else if j.attempt >= j.max_attempts {
                j.leave(JobState::Discarded);
                j.finished_at = Some(now);
                state = JobState::Discarded;
                return;
            }
            j.leave(JobState::Scheduled);
            j.run_at = now + delay;
        });
        match out {
            Out::Unit => {
                self.snoozes.insert(id, n);
                Out::State(state)
            }
            other => other,
        }
    }

    fn retry(&mut self, id: u64, now: u64) -> Out {
        let Some(j) = self.jobs.get_mut(&id) else {
            return Out::Err("not found".into());
        };
        match j.state {
            JobState::Discarded | JobState::Cancelled => {
                j.attempt = 0;
                j.interruptions = 0;
                j.finished_at = None;
                self.snoozes.remove(&id);
            }
            _ if j.waiting() => {}
            _ => return Out::Err("invalid state".into()),
        }
        j.state = JobState::Available;
        j.run_at = j.run_at.min(now);
        Out::Unit
    }

    fn rescue(&mut self, now: u64, interrupted: bool) -> Out {
        let mut n = 0;
        for j in self.jobs.values_mut() {
            if j.state != JobState::Running {
                continue;
            }
            if interrupted {
                if j.interruptions < queue::FREE_INTERRUPTIONS {
                    j.attempt = j.attempt.saturating_sub(1);
                }
                j.interruptions += 1;
            } else if j.lease_expires_at.is_some_and(|t| t > now) {
                continue;
            }
            n += 1;
            if j.attempt >= j.max_attempts {
                j.leave(JobState::Discarded);
                j.finished_at = Some(now);
            } else {
                j.leave(JobState::Available);
            }
        }
        Out::Count(n)
    }

    fn prune(&mut self, config: &QueueConfig, now: u64) -> Out {
        let old: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| {
                config.retention.of(j.state).is_some_and(|age| {
                    j.finished_at
                        .is_some_and(|t| t <= now.saturating_sub(age.as_millis() as u64))
                })
            })
            .map(|j| j.id)
            .collect();
        for id in &old {
            self.jobs.remove(id);
            self.checkpoints.remove(id);
            self.snoozes.remove(id);
        }
        Out::Count(old.len())
    }

    fn counts(&self, queue: Option<&str>) -> Counts {
        let mut c = Counts::default();
        for j in self.jobs.values() {
            if queue.is_none_or(|q| q == j.queue) {
                c.add(j.state, 1);
            }
        }
        c
    }
}

fn result_of(lease: &Lease) -> Vec<u8> {
    format!("{}:{}", lease.job.id, lease.token).into_bytes()
}

/// A write step returning the observed outcome.
type WriteFn = Box<dyn Fn(&redb::WriteTransaction) -> crate::Result<Out> + Send>;

/// Runs `ops` against a fresh queue in a new database at `path` (no fsync) and against the
/// model; `Err` names the first operation whose result or aftermath differs.
pub fn run(path: &std::path::Path, ops: &[Op]) -> Result<(), String> {
    let mut cfg = StoreConfig::new(path);
    cfg.durability = Durability::None;
    let store = Store::open(cfg).map_err(|e| format!("cannot open the store: {e}"))?;
    let checked = run_on(&store, ops);
    let closed = store.close().map_err(|e| format!("cannot close: {e}"));
    checked.and(closed)
}

fn run_on(store: &Store, ops: &[Op]) -> Result<(), String> {
    let config = QueueConfig::default();
    let mut model = Model::default();
    let mut leases: Vec<Lease> = Vec::new();
    let mut now: u64 = 1_000_000;
    let w = |f: WriteFn| {
        store
            .write_blocking(f)
            .map_err(|e| format!("write failed: {e}"))
    };

    for op in ops {
        let pick = |i: usize| leases.get(i % leases.len().max(1)).cloned();
        let (got, want) = match op.clone() {
            Op::Enqueue(specs) => {
                let jobs: Vec<NewJob> = specs
                    .iter()
                    .map(|s| NewJob {
                        priority: s.priority,
                        run_at: s.delay.map(|d| now + d),
                        max_attempts: s.max_attempts,
                        dedup_key: s.key.map(|k| format!("k{k}")),
                        ..NewJob::new(QUEUES[s.queue], "kind", vec![1, 2, 3])
                    })
                    .collect();
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::enqueue_many_in(txn, &config, &jobs, now), |v| {
                        Out::Enqueued(v.iter().map(|e| (e.id, e.inserted)).collect())
                    }))
                }))?;
                (got, model.enqueue(&config, &specs, now))
            }
            Op::Lease { queue: q, max } => {
                let got = store
                    .write_blocking(move |txn| {
                        queue::lease_in(txn, QUEUES[q], max, LEASE_MS, "w", now)
                    })
                    .map_err(|e| format!("lease failed: {e}"))?;
                let summary = got
                    .iter()
                    .map(|l| (l.job.id, l.token, l.job.attempt))
                    .collect();
                leases.extend(got);
                (Out::Leased(summary), model.lease(QUEUES[q], max, now))
            }
            Op::Complete(i) => {
                let Some(lease) = pick(i) else { continue };
                let l = lease.clone();
                let got = w(Box::new(move |txn| {
                    Ok(out(
                        queue::complete_in(txn, &l, &result_of(&l), now),
                        |()| Out::Unit,
                    ))
                }))?;
                let want = match model.complete(&lease, now) {
                    Ok(()) => Out::Unit,
                    Err(e) => Out::Err(e),
                };
                (got, want)
            }
            Op::CompleteMany(i, k) => {
                let (Some(a), Some(b)) = (pick(i), pick(k)) else {
                    continue;
                };
                let done: Vec<(Lease, Vec<u8>)> = [a, b]
                    .into_iter()
                    .map(|l| (l.clone(), result_of(&l)))
                    .collect();
                let d = done.clone();
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::complete_many_in(txn, &d, now), |v| {
                        Out::Many(v.into_iter().map(|r| r.map_err(|e| kind(&e))).collect())
                    }))
                }))?;
                let want = Out::Many(done.iter().map(|(l, _)| model.complete(l, now)).collect());
                (got, want)
            }
            Op::Fail { pick: i, fatal } => {
                let Some(lease) = pick(i) else { continue };
                let l = lease.clone();
                let failure = if fatal {
                    Failure::Fatal
                } else {
                    Failure::Retryable
                };
                let got = w(Box::new(move |txn| {
                    Ok(out(
                        queue::fail_in(txn, &config, &l, "boom", failure, now),
                        Out::State,
                    ))
                }))?;
                (got, model.fail(&config, &lease, fatal, now))
            }
            Op::Snooze { pick: i, delay } => {
                let Some(lease) = pick(i) else { continue };
                let l = lease.clone();
                let got = w(Box::new(move |txn| {
                    Ok(out(
                        queue::snooze_in(txn, &l, "later", delay, now),
                        Out::State,
                    ))
                }))?;
                let want = model.snooze(&lease, delay, now);
                (got, want)
            }
            Op::Release(i) => {
                let Some(lease) = pick(i) else { continue };
                let l = lease.clone();
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::release_in(txn, &l), |()| Out::Unit))
                }))?;
                let want = model.on_lease(&lease, |j| {
                    j.leave(JobState::Available);
                    j.attempt = j.attempt.saturating_sub(1);
                });
                (got, want)
            }
            Op::Heartbeat(i) => {
                let Some(lease) = pick(i) else { continue };
                let l = lease.clone();
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::heartbeat_in(txn, &l, LEASE_MS, now), |()| {
                        Out::Unit
                    }))
                }))?;
                let want = model.on_lease(&lease, |j| {
                    j.lease_expires_at = Some(now + LEASE_MS);
                });
                (got, want)
            }
            Op::Checkpoint(i) => {
                let Some(lease) = pick(i) else { continue };
                let l = lease.clone();
                let bytes = now.to_be_bytes().to_vec();
                let b = bytes.clone();
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::checkpoint_in(txn, &l, &b), |()| Out::Unit))
                }))?;
                let want = match model.fenced(&lease) {
                    Err(e) => Out::Err(e),
                    Ok(_) => {
                        model.checkpoints.insert(lease.job.id, bytes);
                        Out::Unit
                    }
                };
                (got, want)
            }
            Op::Cancel(id) => {
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::cancel_in(txn, id, now), |()| Out::Unit))
                }))?;
                (got, model.cancel(id, now))
            }
            Op::Retry(id) => {
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::retry_in(txn, id, now), |()| Out::Unit))
                }))?;
                (got, model.retry(id, now))
            }
            Op::Advance(ms) => {
                now += ms;
                (Out::Unit, Out::Unit)
            }
            Op::RescueExpired => {
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::rescue_expired_in(txn, now), Out::Count))
                }))?;
                (got, model.rescue(now, false))
            }
            Op::RescueInterrupted => {
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::rescue_interrupted_in(txn, now), Out::Count))
                }))?;
                (got, model.rescue(now, true))
            }
            Op::Prune => {
                let retention = config.retention;
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::prune_in(txn, &retention, now), Out::Count))
                }))?;
                (got, model.prune(&config, now))
            }
        };
        if got != want {
            return Err(format!(
                "result of {op:?}: queue gave {got:?}, model {want:?}"
            ));
        }
        check_state(store, &model, op)?;
    }
    Ok(())
}

fn check_state(store: &Store, model: &Model, op: &Op) -> Result<(), String> {
    let read_err = |e: Error| format!("read failed after {op:?}: {e}");
    let stored: Vec<MJob> = store
        .read_blocking(|txn| queue::list_read(txn, None, None, usize::MAX))
        .map_err(read_err)?
        .iter()
        .map(MJob::of)
        .collect();
    let expected: Vec<MJob> = model.jobs.values().cloned().collect();
    if stored != expected {
        return Err(format!(
            "jobs after {op:?}: stored {stored:?}, model {expected:?}"
        ));
    }
    for q in [None, Some("a"), Some("b")] {
        let counts = store
            .read_blocking(|txn| queue::counts_read(txn, q))
            .map_err(read_err)?;
        if counts != model.counts(q) {
            return Err(format!(
                "counts of {q:?} after {op:?}: stored {counts:?}, model {:?}",
                model.counts(q)
            ));
        }
    }
    let queues = store.read_blocking(queue::queues_read).map_err(read_err)?;
    let mut want: Vec<String> = model.jobs.values().map(|j| j.queue.clone()).collect();
    want.sort();
    want.dedup();
    if queues != want {
        return Err(format!(
            "queues after {op:?}: stored {queues:?}, model {want:?}"
        ));
    }
    for id in 1..=model.next_id {
        let cp = store
            .read_blocking(|txn| queue::load_checkpoint_read(txn, id))
            .map_err(read_err)?;
        if cp.as_ref() != model.checkpoints.get(&id) {
            return Err(format!("checkpoint {id} after {op:?}: stored {cp:?}"));
        }
    }
    Ok(())
}
