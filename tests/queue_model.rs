//! The queue against a plain in-memory model: random sequences of operations, with a
//! controlled clock, must give the same result for every call and leave the same jobs,
//! counts and checkpoints behind.

use std::collections::BTreeMap;

use proptest::prelude::*;
use reasonq::queue::{self, Counts, Failure, Job, JobState, Lease, NewJob, QueueConfig};
use reasonq::store::{Durability, Store, StoreConfig};
use reasonq::Error;

const LEASE_MS: u64 = 10_000;
const QUEUES: [&str; 2] = ["a", "b"];
const HOUR: u64 = 3_600_000;

#[derive(Debug, Clone)]
struct Spec {
    queue: usize,
    priority: u8,
    delay: Option<u64>,
    key: Option<u8>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Clone)]
enum Op {
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

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..2usize,
        0..3u8,
        prop::option::of(prop::sample::select(vec![0u64, 500, 5_000])),
        prop::option::of(0..3u8),
        prop::option::of(1..4u32),
    )
        .prop_map(|(queue, priority, delay, key, max_attempts)| Spec {
            queue,
            priority,
            delay,
            key,
            max_attempts,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(spec(), 1..4).prop_map(Op::Enqueue),
        4 => (0..2usize, 1..4usize).prop_map(|(queue, max)| Op::Lease { queue, max }),
        3 => any::<usize>().prop_map(Op::Complete),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::CompleteMany(a, b)),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, fatal)| Op::Fail { pick, fatal }),
        1 => (any::<usize>(), prop::sample::select(vec![0u64, 2_000]))
            .prop_map(|(pick, delay)| Op::Snooze { pick, delay }),
        1 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Heartbeat),
        1 => any::<usize>().prop_map(Op::Checkpoint),
        1 => (0..12u64).prop_map(Op::Cancel),
        1 => (0..12u64).prop_map(Op::Retry),
        3 => prop::sample::select(vec![1_000u64, 6_000, 11_000, 25 * HOUR, 8 * 24 * HOUR])
            .prop_map(Op::Advance),
        1 => Just(Op::RescueExpired),
        1 => Just(Op::RescueInterrupted),
        1 => Just(Op::Prune),
    ]
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
        other => panic!("unexpected error {other}"),
    }
}

fn out<T>(r: reasonq::Result<T>, f: impl FnOnce(T) -> Out) -> Out {
    match r {
        Ok(v) => f(v),
        Err(e) => Out::Err(kind(&e)),
    }
}

#[derive(Default)]
struct Model {
    jobs: BTreeMap<u64, MJob>,
    checkpoints: BTreeMap<u64, Vec<u8>>,
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
            let j = self.jobs.get_mut(&id).unwrap();
            j.state = JobState::Running;
            j.attempt += 1;
            j.lease_token += 1;
            j.lease_expires_at = Some(now + LEASE_MS);
            out.push((id, j.lease_token, j.attempt));
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

    fn retry(&mut self, id: u64, now: u64) -> Out {
        let Some(j) = self.jobs.get_mut(&id) else {
            return Out::Err("not found".into());
        };
        match j.state {
            JobState::Discarded | JobState::Cancelled => {
                j.attempt = 0;
                j.interruptions = 0;
                j.finished_at = None;
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
                    j.attempt -= 1;
                }
                j.interruptions += 1;
            } else if j.lease_expires_at.unwrap() > now {
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
                    j.finished_at.unwrap() <= now.saturating_sub(age.as_millis() as u64)
                })
            })
            .map(|j| j.id)
            .collect();
        for id in &old {
            self.jobs.remove(id);
            self.checkpoints.remove(id);
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
type WriteFn = Box<dyn Fn(&redb::WriteTransaction) -> reasonq::Result<Out> + Send>;

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("m.redb"));
    cfg.durability = Durability::None;
    let store = Store::open(cfg).unwrap();
    let config = QueueConfig::default();
    let mut model = Model::default();
    let mut leases: Vec<Lease> = Vec::new();
    let mut now: u64 = 1_000_000;
    let w = |f: WriteFn| store.write_blocking(f).unwrap();

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
                }));
                (got, model.enqueue(&config, &specs, now))
            }
            Op::Lease { queue: q, max } => {
                let got = store
                    .write_blocking(move |txn| {
                        queue::lease_in(txn, QUEUES[q], max, LEASE_MS, "w", now)
                    })
                    .unwrap();
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
                }));
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
                }));
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
                }));
                (got, model.fail(&config, &lease, fatal, now))
            }
            Op::Snooze { pick: i, delay } => {
                let Some(lease) = pick(i) else { continue };
                let l = lease.clone();
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::snooze_in(txn, &l, delay, now), |()| Out::Unit))
                }));
                let want = model.on_lease(&lease, |j| {
                    j.leave(JobState::Scheduled);
                    j.run_at = now + delay;
                    j.attempt -= 1;
                });
                (got, want)
            }
            Op::Release(i) => {
                let Some(lease) = pick(i) else { continue };
                let l = lease.clone();
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::release_in(txn, &l), |()| Out::Unit))
                }));
                let want = model.on_lease(&lease, |j| {
                    j.leave(JobState::Available);
                    j.attempt -= 1;
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
                }));
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
                }));
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
                }));
                (got, model.cancel(id, now))
            }
            Op::Retry(id) => {
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::retry_in(txn, id, now), |()| Out::Unit))
                }));
                (got, model.retry(id, now))
            }
            Op::Advance(ms) => {
                now += ms;
                (Out::Unit, Out::Unit)
            }
            Op::RescueExpired => {
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::rescue_expired_in(txn, now), Out::Count))
                }));
                (got, model.rescue(now, false))
            }
            Op::RescueInterrupted => {
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::rescue_interrupted_in(txn, now), Out::Count))
                }));
                (got, model.rescue(now, true))
            }
            Op::Prune => {
                let retention = config.retention;
                let got = w(Box::new(move |txn| {
                    Ok(out(queue::prune_in(txn, &retention, now), Out::Count))
                }));
                (got, model.prune(&config, now))
            }
        };
        assert_eq!(got, want, "result of {op:?}");
        check_state(&store, &model, &op);
    }
}

fn check_state(store: &Store, model: &Model, op: &Op) {
    let stored: Vec<MJob> = store
        .read_blocking(|txn| queue::list_read(txn, None, None, usize::MAX))
        .unwrap()
        .iter()
        .map(MJob::of)
        .collect();
    let expected: Vec<MJob> = model.jobs.values().cloned().collect();
    assert_eq!(stored, expected, "jobs after {op:?}");
    for q in [None, Some("a"), Some("b")] {
        let counts = store
            .read_blocking(|txn| queue::counts_read(txn, q))
            .unwrap();
        assert_eq!(counts, model.counts(q), "counts of {q:?} after {op:?}");
    }
    let queues = store.read_blocking(queue::queues_read).unwrap();
    let mut want: Vec<String> = model.jobs.values().map(|j| j.queue.clone()).collect();
    want.sort();
    want.dedup();
    assert_eq!(queues, want, "queues after {op:?}");
    for id in 1..=model.next_id {
        let cp = store
            .read_blocking(|txn| queue::load_checkpoint_read(txn, id))
            .unwrap();
        assert_eq!(
            cp.as_ref(),
            model.checkpoints.get(&id),
            "checkpoint {id} after {op:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
