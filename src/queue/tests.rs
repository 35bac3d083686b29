//! Unit tests of transitions, ordering and fencing, with an explicit clock.

use super::*;
use crate::error::Error;
use crate::store::StoreConfig;

const LEASE_MS: u64 = 30_000;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    config: QueueConfig,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("q.redb"))).unwrap();
    Fixture {
        _dir: dir,
        store,
        config: QueueConfig::default(),
    }
}

impl Fixture {
    fn enqueue(&self, job: NewJob, now: u64) -> Enqueued {
        let config = self.config;
        self.store
            .write_blocking(move |txn| enqueue_in(txn, &config, &job, now))
            .unwrap()
    }

    fn lease(&self, max: usize, now: u64) -> Vec<Lease> {
        self.store
            .write_blocking(move |txn| lease_in(txn, "q", max, LEASE_MS, "w", now))
            .unwrap()
    }

    fn write<R: Send + 'static>(
        &self,
        f: impl Fn(&redb::WriteTransaction) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.store.write_blocking(f)
    }

    fn job(&self, id: u64) -> Job {
        self.store
            .read_blocking(|txn| get_read(txn, id))
            .unwrap()
            .unwrap()
    }

    fn counts(&self) -> Counts {
        self.store
            .read_blocking(|txn| counts_read(txn, Some("q")))
            .unwrap()
    }
}

fn job(priority: u8, run_at: Option<u64>) -> NewJob {
    NewJob {
        priority,
        run_at,
        ..NewJob::new("q", "k", b"p".to_vec())
    }
}

fn ids(leases: &[Lease]) -> Vec<u64> {
    leases.iter().map(|l| l.job.id).collect()
}

#[test]
fn lease_order_is_priority_then_run_at_then_fifo() {
    let f = fixture();
    let a = f.enqueue(job(1, Some(50)), 100).id;
    let b = f.enqueue(job(9, Some(80)), 100).id;
    let c = f.enqueue(job(9, Some(60)), 100).id;
    let d = f.enqueue(job(1, Some(50)), 100).id;
    assert_eq!(ids(&f.lease(10, 100)), vec![c, b, a, d]);
}

#[test]
fn a_future_high_priority_job_does_not_hide_due_lower_ones() {
    let f = fixture();
    let later = f.enqueue(job(200, Some(1_000)), 100).id;
    let due = f.enqueue(job(3, None), 100).id;
    assert_eq!(f.job(later).state, JobState::Scheduled);
    assert_eq!(ids(&f.lease(10, 100)), vec![due]);
    assert_eq!(ids(&f.lease(10, 1_000)), vec![later]);
}

#[test]
fn a_lease_starts_an_attempt_and_fences_with_a_new_token() {
    let f = fixture();
    let id = f.enqueue(job(0, None), 100).id;
    let lease = f.lease(1, 100).remove(0);
    assert_eq!((lease.job.attempt, lease.token), (1, 1));
    let job = f.job(id);
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.lease_expires_at, Some(100 + LEASE_MS));
    assert_eq!(job.lease_owner.as_deref(), Some("w"));
    assert!(
        f.lease(1, 100).is_empty(),
        "a running job is not leased twice"
    );
}

#[test]
fn dedup_key_returns_the_existing_job_even_within_one_batch() {
    let f = fixture();
    let keyed = |key: &str| NewJob {
        dedup_key: Some(key.into()),
        ..job(0, None)
    };
    let first = f.enqueue(keyed("x"), 1);
    assert!(first.inserted);
    assert_eq!(
        f.enqueue(keyed("x"), 2),
        Enqueued {
            id: first.id,
            inserted: false
        }
    );
    let config = f.config;
    let batch = vec![keyed("y"), keyed("y"), keyed("x"), job(0, None)];
    let out = f
        .write(move |txn| enqueue_many_in(txn, &config, &batch, 3))
        .unwrap();
    let inserted: Vec<bool> = out.iter().map(|e| e.inserted).collect();
    assert_eq!(inserted, vec![true, false, false, true]);
    assert_eq!(out[1].id, out[0].id);
    assert_eq!(out[2].id, first.id);
    assert_eq!(f.counts().available, 3);
}

#[test]
fn a_rescued_lease_cannot_complete_over_the_new_owner() {
    let f = fixture();
    let id = f.enqueue(job(0, None), 100).id;
    let old = f.lease(1, 100).remove(0);
    let rescue_at = 100 + LEASE_MS;
    assert_eq!(
        f.write(move |txn| rescue_expired_in(txn, rescue_at))
            .unwrap(),
        1
    );
    let new = f.lease(1, rescue_at).remove(0);
    assert_eq!((new.job.attempt, new.token), (2, 2));

    let stale = old.clone();
    let err = f
        .write(move |txn| complete_in(txn, &stale, b"old", rescue_at))
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { job_id } if job_id == id));
    for call in 0..3 {
        let stale = old.clone();
        let config = f.config;
        let err = f
            .write(move |txn| match call {
                0 => fail_in(txn, &config, &stale, "e", Failure::Fatal, 1).map(|_| ()),
                1 => heartbeat_in(txn, &stale, 5, 1),
                _ => checkpoint_in(txn, &stale, b"c"),
            })
            .unwrap_err();
        assert!(matches!(err, Error::LeaseLost { .. }));
    }
    f.write(move |txn| complete_in(txn, &new, b"new", rescue_at))
        .unwrap();
    let done = f.job(id);
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.result.as_deref(), Some(&b"new"[..]));
    assert_eq!(done.finished_at, Some(rescue_at));
}

#[test]
fn a_burst_of_completions_in_any_order_gives_each_its_own_outcome() {
    let f = fixture();
    for _ in 0..3 {
        f.enqueue(job(0, None), 100);
    }
    let leases = f.lease(3, 100);
    let (a, b, c) = (leases[0].clone(), leases[1].clone(), leases[2].clone());
    // `b`'s lease goes stale: its job is rescued and leased again.
    let rescue_at = 100 + LEASE_MS;
    let (a2, c2) = (a.clone(), c.clone());
    f.write(move |txn| {
        complete_in(txn, &a2, b"a", 110)?;
        complete_in(txn, &c2, b"c", 110)
    })
    .unwrap();
    f.write(move |txn| rescue_expired_in(txn, rescue_at))
        .unwrap();
    let d_id = f.enqueue(job(0, None), rescue_at).id;
    let mut again = f.lease(2, rescue_at);
    let (b2, d) = (again.remove(0), again.remove(0));
    assert_eq!((b2.job.id, d.job.id), (b.job.id, d_id));

    // Applied in job order inside (b's stale lease, b's new one, then d), answered in the
    // caller's order.
    let burst = vec![
        (d.clone(), b"d".to_vec()),
        (b.clone(), b"stale".to_vec()),
        (b2.clone(), b"b2".to_vec()),
    ];
    let out = f
        .write(move |txn| complete_many_in(txn, &burst, rescue_at + 1))
        .unwrap();
    assert!(out[0].is_ok() && out[2].is_ok());
    assert!(matches!(out[1], Err(Error::LeaseLost { job_id }) if job_id == b.job.id));
    assert_eq!(f.job(b.job.id).result.as_deref(), Some(&b"b2"[..]));
    assert_eq!(f.job(d.job.id).result.as_deref(), Some(&b"d"[..]));

    // A fresh burst listed against job order: each result goes to its own job.
    for _ in 0..4 {
        f.enqueue(job(0, None), 200);
    }
    let mut leases = f.lease(4, 200);
    leases.reverse();
    let burst: Vec<(Lease, Vec<u8>)> = leases
        .iter()
        .map(|l| (l.clone(), format!("r{}", l.job.id).into_bytes()))
        .collect();
    let out = f
        .write(move |txn| complete_many_in(txn, &burst, 210))
        .unwrap();
    assert!(out.iter().all(|o| o.is_ok()));
    for l in &leases {
        let done = f.job(l.job.id);
        assert_eq!(done.state, JobState::Completed);
        assert_eq!(done.result, Some(format!("r{}", l.job.id).into_bytes()));
    }
}

#[test]
fn retryable_failures_back_off_until_attempts_run_out() {
    let mut f = fixture();
    f.config.default_max_attempts = 2;
    let id = f.enqueue(job(0, None), 0).id;
    let config = f.config;
    let lease = f.lease(1, 0).remove(0);
    let state = f
        .write(move |txn| fail_in(txn, &config, &lease, "503", Failure::Retryable, 10))
        .unwrap();
    assert_eq!(state, JobState::Retryable);
    let job = f.job(id);
    assert_eq!(job.run_at, 10 + backoff_ms(&config, id, 1));
    assert_eq!(job.last_error.as_deref(), Some("503"));
    assert!(
        f.lease(1, job.run_at - 1).is_empty(),
        "not before the backoff"
    );
    let lease = f.lease(1, job.run_at).remove(0);
    let state = f
        .write(move |txn| fail_in(txn, &config, &lease, "503", Failure::Retryable, 99))
        .unwrap();
    assert_eq!(state, JobState::Discarded);
    assert_eq!(f.job(id).finished_at, Some(99));
    assert_eq!(f.counts().discarded, 1);
}

#[test]
fn a_fatal_failure_discards_at_once() {
    let f = fixture();
    let id = f.enqueue(job(0, None), 0).id;
    let config = f.config;
    let lease = f.lease(1, 0).remove(0);
    let state = f
        .write(move |txn| fail_in(txn, &config, &lease, "400", Failure::Fatal, 1))
        .unwrap();
    assert_eq!(state, JobState::Discarded);
    assert_eq!(f.job(id).attempt, 1);
}

#[test]
fn snoozes_past_the_free_ones_spend_attempts_until_the_job_is_discarded() {
    let f = Fixture {
        config: QueueConfig {
            default_max_attempts: 2,
            ..QueueConfig::default()
        },
        ..fixture()
    };
    let id = f.enqueue(job(0, None), 0).id;
    let mut now = 0;
    let mut snooze = || {
        let lease = f.lease(1, now).remove(0);
        f.write(move |txn| snooze_in(txn, &lease, "later", 1, now))
            .unwrap();
        now += 1;
        f.job(id)
    };
    for _ in 0..FREE_SNOOZES {
        let job = snooze();
        assert_eq!((job.state, job.attempt), (JobState::Scheduled, 0));
    }
    let job = snooze();
    assert_eq!(
        (job.state, job.attempt),
        (JobState::Scheduled, 1),
        "charged"
    );
    let job = snooze();
    assert_eq!(job.state, JobState::Discarded, "attempts ran out");
    assert!(job.last_error.unwrap().contains("asked to wait"));
}

#[test]
fn snooze_and_release_refund_the_attempt() {
    let f = fixture();
    let id = f.enqueue(job(0, None), 0).id;
    let lease = f.lease(1, 0).remove(0);
    f.write(move |txn| snooze_in(txn, &lease, "later", 500, 10))
        .unwrap();
    let job = f.job(id);
    assert_eq!(
        (job.state, job.attempt, job.run_at),
        (JobState::Scheduled, 0, 510)
    );
    assert!(job.lease_owner.is_none() && job.lease_expires_at.is_none());
    assert!(f.lease(1, 509).is_empty());
    let lease = f.lease(1, 510).remove(0);
    assert_eq!(lease.job.attempt, 1);
    f.write(move |txn| release_in(txn, &lease)).unwrap();
    let job = f.job(id);
    assert_eq!((job.state, job.attempt), (JobState::Available, 0));
}

#[test]
fn cancelling_a_running_job_fences_its_worker() {
    let f = fixture();
    let id = f.enqueue(job(0, None), 0).id;
    let lease = f.lease(1, 0).remove(0);
    f.write(move |txn| cancel_in(txn, id, 5)).unwrap();
    f.write(move |txn| cancel_in(txn, id, 6)).unwrap();
    let err = f
        .write(move |txn| complete_in(txn, &lease, b"r", 7))
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }));
    assert_eq!(f.job(id).state, JobState::Cancelled);
    assert_eq!(f.job(id).finished_at, Some(5));
}

#[test]
fn completed_jobs_can_be_neither_cancelled_nor_retried() {
    let f = fixture();
    let id = f.enqueue(job(0, None), 0).id;
    let lease = f.lease(1, 0).remove(0);
    f.write(move |txn| complete_in(txn, &lease, b"r", 1))
        .unwrap();
    let cancel = f.write(move |txn| cancel_in(txn, id, 2)).unwrap_err();
    let retry = f.write(move |txn| retry_in(txn, id, 2)).unwrap_err();
    assert!(matches!(cancel, Error::InvalidState(_)));
    assert!(matches!(retry, Error::InvalidState(_)));
    let missing = f.write(|txn| retry_in(txn, 999, 2)).unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }));
}

#[test]
fn retrying_a_discarded_job_gives_fresh_attempts() {
    let mut f = fixture();
    f.config.default_max_attempts = 1;
    let id = f.enqueue(job(0, None), 0).id;
    let config = f.config;
    let lease = f.lease(1, 0).remove(0);
    f.write(move |txn| fail_in(txn, &config, &lease, "x", Failure::Retryable, 1))
        .unwrap();
    assert_eq!(f.job(id).state, JobState::Discarded);
    f.write(move |txn| retry_in(txn, id, 2)).unwrap();
    let job = f.job(id);
    assert_eq!(
        (job.state, job.attempt, job.finished_at),
        (JobState::Available, 0, None)
    );
    assert_eq!(ids(&f.lease(1, 2)), vec![id]);
}

#[test]
fn checkpoints_survive_until_completion() {
    let f = fixture();
    let id = f.enqueue(job(0, None), 0).id;
    let lease = f.lease(1, 0).remove(0);
    let l2 = lease.clone();
    f.write(move |txn| checkpoint_in(txn, &l2, b"step 2"))
        .unwrap();
    let read = |f: &Fixture| {
        f.store
            .read_blocking(|txn| load_checkpoint_read(txn, id))
            .unwrap()
    };
    assert_eq!(read(&f).as_deref(), Some(&b"step 2"[..]));
    f.write(move |txn| complete_in(txn, &lease, b"r", 1))
        .unwrap();
    assert_eq!(read(&f), None);
}

#[test]
fn prune_deletes_old_finished_jobs_and_frees_their_dedup_key() {
    let f = fixture();
    let keyed = NewJob {
        dedup_key: Some("k".into()),
        ..job(0, None)
    };
    let done = f.enqueue(keyed.clone(), 0).id;
    let waiting = f.enqueue(job(0, Some(10_000_000_000)), 0).id;
    let lease = f.lease(1, 0).remove(0);
    f.write(move |txn| complete_in(txn, &lease, b"r", 1_000))
        .unwrap();
    let queue = f.job(done).queue.clone();
    let q = queue.clone();
    f.write(move |txn| {
        let mut inputs = txn.open_table(crate::store::tables::BATCH_INPUTS)?;
        inputs.insert(q.as_str(), [1u8; 32].as_slice())?;
        Ok(())
    })
    .unwrap();
    let retention = Retention::default();
    let day = 24 * 3600 * 1000;
    assert_eq!(
        f.write(move |txn| prune_in(txn, &retention, 1_000 + day - 1))
            .unwrap(),
        0
    );
    assert_eq!(
        f.write(move |txn| prune_in(txn, &retention, 1_000 + day))
            .unwrap(),
        1
    );
    assert!(f
        .store
        .read_blocking(|txn| get_read(txn, done))
        .unwrap()
        .is_none());
    assert_eq!(f.job(waiting).state, JobState::Scheduled);
    assert_eq!(f.counts().total(), 1);
    assert!(f.enqueue(keyed, 2_000).inserted, "the key is free again");
    let gone = f
        .store
        .read_blocking(move |txn| {
            let inputs = txn.open_table(crate::store::tables::BATCH_INPUTS)?;
            Ok(inputs.get(queue.as_str())?.is_none())
        })
        .unwrap();
    assert!(gone, "a rerun of the batch's file enqueues it again");
}

#[test]
fn reopening_rescues_running_jobs_and_crash_loops_still_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let config = QueueConfig {
        default_max_attempts: 2,
        ..QueueConfig::default()
    };
    let store = Store::open(StoreConfig::new(&path)).unwrap();
    let id = store
        .write_blocking(move |txn| enqueue_in(txn, &config, &job(0, None), 0))
        .unwrap()
        .id;
    store.close().unwrap();
    drop(store);
    // Each round leases the job and "crashes" (closes without finishing it).
    let mut states = Vec::new();
    for _ in 0..(FREE_INTERRUPTIONS + 3) {
        // The queue's open hook does the rescue, as every App::open hands it in.
        let store = Store::open(StoreConfig::new(&path).with_open_hook(rescue_at_open)).unwrap();
        let job = store
            .read_blocking(|txn| get_read(txn, id))
            .unwrap()
            .unwrap();
        states.push((job.state, job.attempt));
        store
            .write_blocking(|txn| lease_in(txn, "q", 1, LEASE_MS, "w", 0))
            .unwrap();
        store.close().unwrap();
    }
    let free = FREE_INTERRUPTIONS as usize;
    assert_eq!(states[0], (JobState::Available, 0));
    assert!(states[1..=free]
        .iter()
        .all(|s| *s == (JobState::Available, 0)));
    assert_eq!(states[free + 1], (JobState::Available, 1), "now charged");
    assert_eq!(states[free + 2].0, JobState::Discarded);
}

#[test]
fn counts_and_queues_follow_every_transition() {
    let f = fixture();
    f.enqueue(job(0, None), 0);
    f.enqueue(job(0, Some(50)), 0);
    f.enqueue(NewJob::new("other", "k", vec![]), 0);
    let lease = f.lease(1, 0).remove(0);
    let expected = Counts {
        scheduled: 1,
        running: 1,
        ..Counts::default()
    };
    assert_eq!(f.counts(), expected);
    f.write(move |txn| complete_in(txn, &lease, b"", 1))
        .unwrap();
    assert_eq!(f.counts().completed, 1);
    assert_eq!(f.counts().running, 0);
    let queues = f.store.read_blocking(queues_read).unwrap();
    assert_eq!(queues, vec!["other".to_string(), "q".to_string()]);
    let all = f.store.read_blocking(|txn| counts_read(txn, None)).unwrap();
    assert_eq!(all.total(), 3);
}

#[test]
fn state_names_round_trip() {
    for state in JobState::ALL {
        assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
        assert_eq!(state.to_string(), state.as_str());
    }
    assert!("bogus".parse::<JobState>().is_err());
}

#[test]
fn invalid_jobs_are_refused() {
    let f = fixture();
    let config = f.config;
    let bad = vec![NewJob::new("", "k", vec![])];
    assert!(f
        .write(move |txn| enqueue_many_in(txn, &config, &bad, 0))
        .is_err());
    let zero = vec![NewJob {
        max_attempts: Some(0),
        ..job(0, None)
    }];
    assert!(f
        .write(move |txn| enqueue_many_in(txn, &config, &zero, 0))
        .is_err());
}

#[test]
fn a_remote_lease_outlives_restarts_and_expiry_but_ends_like_any_lease() {
    let f = fixture();
    let a = f.enqueue(job(0, None), 1_000).id;
    let b = f.enqueue(job(0, Some(99_000)), 1_000).id;
    let done = f.enqueue(job(0, None), 1_000).id;
    let leased = f.lease(1, 2_000);
    assert_eq!(leased[0].job.id, a);
    f.write(move |txn| {
        fail_in(
            txn,
            &QueueConfig::default(),
            &leased[0],
            "x",
            Failure::Retryable,
            2_000,
        )
    })
    .unwrap();
    // Waiting in any way (retryable, scheduled for later) counts; a finished job does not.
    let lease = f.lease(1, 2_000).pop().unwrap();
    assert_eq!(lease.job.id, done);
    f.write(move |txn| complete_in(txn, &lease, b"r", 2_000))
        .unwrap();
    let remote = f
        .write(move |txn| lease_ids_in(txn, &[b, a, done, 999], "remote-1", REMOTE_LEASE))
        .unwrap();
    assert_eq!(remote.iter().map(|l| l.job.id).collect::<Vec<_>>(), [b, a]);
    assert_eq!(f.job(a).attempt, 2);
    assert_eq!(f.counts().running, 2);
    // Neither the expiry sweep nor the rescue at open takes them from the provider batch.
    assert_eq!(
        f.write(|txn| rescue_expired_in(txn, u64::MAX - 1)).unwrap(),
        0
    );
    f.write(rescue_at_open).unwrap();
    assert_eq!(f.job(b).state, JobState::Running);
    assert_eq!(f.job(b).lease_owner.as_deref(), Some("remote-1"));
    // Its result completes it through the same fencing as a worker's.
    let first = remote[0].clone();
    f.write(move |txn| complete_in(txn, &first, b"answer", 3_000))
        .unwrap();
    assert_eq!(f.job(b).state, JobState::Completed);
    let stale = remote[0].clone();
    assert!(matches!(
        f.write(move |txn| complete_in(txn, &stale, b"again", 3_000)),
        Err(Error::LeaseLost { .. })
    ));
}

#[test]
fn failed_tries_are_kept_with_their_wait_and_go_with_the_pruned_job() {
    let f = fixture();
    let id = f.enqueue(job(0, None), 0).id;
    let config = f.config;
    let attempts = |f: &Fixture| {
        f.store
            .read_blocking(move |txn| attempts_read(txn, id))
            .unwrap()
    };
    let lease = f.lease(1, 0).remove(0);
    f.write(move |txn| fail_in(txn, &config, &lease, "503", Failure::Retryable, 10))
        .unwrap();
    let run_at = f.job(id).run_at;
    let lease = f.lease(1, run_at).remove(0);
    f.write(move |txn| snooze_in(txn, &lease, "429", 700, run_at + 1))
        .unwrap();
    let lease = f.lease(1, run_at + 701).remove(0);
    f.write(move |txn| complete_in(txn, &lease, b"r", 2_000))
        .unwrap();
    let rows = attempts(&f);
    let seen: Vec<_> = rows
        .iter()
        .map(|(n, a)| (*n, a.error.as_str(), a.wait_ms, a.at_ms))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, "503", Some(backoff_ms(&config, id, 1)), 10),
            (2, "429", Some(700), run_at + 1)
        ]
    );
    let day = 24 * 3600 * 1000;
    let retention = Retention::default();
    assert_eq!(
        f.write(move |txn| prune_in(txn, &retention, 2_000 + day))
            .unwrap(),
        1
    );
    assert!(attempts(&f).is_empty(), "pruned with the job");
}

#[test]
fn a_job_keeps_its_most_recent_tries_only_and_the_last_has_no_wait() {
    let f = Fixture {
        config: QueueConfig {
            default_max_attempts: KEPT_ATTEMPTS,
            ..QueueConfig::default()
        },
        ..fixture()
    };
    let id = f.enqueue(job(0, None), 0).id;
    let mut now = 0;
    loop {
        let lease = f.lease(1, now).remove(0);
        let error = format!("e{now}");
        let state = f
            .write(move |txn| snooze_in(txn, &lease, &error, 1, now))
            .unwrap();
        now += 1;
        if state == JobState::Discarded {
            break;
        }
    }
    let rows = f
        .store
        .read_blocking(move |txn| attempts_read(txn, id))
        .unwrap();
    let tries = u32::try_from(now).unwrap();
    assert!(tries > KEPT_ATTEMPTS, "{tries} tries");
    assert_eq!(rows.len(), KEPT_ATTEMPTS as usize);
    let (first, _) = &rows[0];
    let (last, record) = &rows[rows.len() - 1];
    assert_eq!((*first, *last), (tries - KEPT_ATTEMPTS + 1, tries));
    assert_eq!(record.wait_ms, None, "the try that ended the job");
    assert_eq!(record.error, format!("e{}", now - 1));
}
