//! A process that enqueues and works on jobs is killed with SIGKILL mid-work. Reopening the
//! file rescues its running jobs at once; draining then loses nothing and completes each job
//! exactly once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reasonq::queue::{Counts, JobState, NewJob, Queue, QueueConfig};
use reasonq::store::StoreConfig;

const JOBS: usize = 300;
const HELD: usize = 8;
const CHILD_ENV: &str = "REASONQ_CRASH_CHILD_DB";

fn jobs() -> Vec<NewJob> {
    (0..JOBS)
        .map(|i| NewJob {
            dedup_key: Some(format!("prompt-{i}")),
            ..NewJob::new("batch", "llm", format!("prompt {i}").into_bytes())
        })
        .collect()
}

/// The child: enqueues the batch, holds `HELD` leases it never finishes, then completes the
/// rest one by one, slowly, until it is killed. Runs only when the parent starts it.
#[test]
#[ignore = "started by crash_mid_work_loses_nothing in a child process"]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let queue = Queue::open(StoreConfig::new(path), QueueConfig::default())
            .await
            .unwrap();
        queue.enqueue_many(jobs()).await.unwrap();
        let lease_for = Duration::from_secs(3600);
        let held = queue
            .lease("batch", HELD, lease_for, "child")
            .await
            .unwrap();
        assert_eq!(held.len(), HELD);
        let mut announced = false;
        loop {
            let leases = queue.lease("batch", 1, lease_for, "child").await.unwrap();
            let Some(lease) = leases.into_iter().next() else {
                break;
            };
            queue.complete(&lease, b"child".to_vec()).await.unwrap();
            if !announced {
                println!("CHILD WORKING");
                announced = true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("CHILD DONE");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_work_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("child exited before working").unwrap();
        assert_ne!(
            line, "CHILD DONE",
            "the child finished before it was killed"
        );
        if line == "CHILD WORKING" {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let queue = Queue::open(StoreConfig::new(&path), QueueConfig::default())
        .await
        .unwrap();
    let counts = queue.counts(Some("batch")).await.unwrap();
    assert_eq!(counts.total(), JOBS as u64, "no job lost: {counts:?}");
    assert_eq!(counts.running, 0, "running jobs are rescued at open");
    let interrupted = queue
        .jobs_in_queue("batch")
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.interruptions == 1)
        .inspect(|j| {
            assert_eq!(j.state, JobState::Available);
            assert_eq!(j.attempt, 0, "an interrupted attempt is refunded");
        })
        .count();
    assert!(
        interrupted >= HELD,
        "held leases were rescued ({interrupted})"
    );

    // Resubmitting the batch is idempotent: every prompt is already known.
    let again = queue.enqueue_many(jobs()).await.unwrap();
    assert!(again.iter().all(|e| !e.inserted));

    let mut by_parent = 0;
    loop {
        let leases = queue
            .lease("batch", 16, Duration::from_secs(60), "parent")
            .await
            .unwrap();
        if leases.is_empty() {
            break;
        }
        for lease in leases {
            assert_ne!(lease.job.result.as_deref(), Some(&b"child"[..]));
            queue.complete(&lease, b"parent".to_vec()).await.unwrap();
            by_parent += 1;
        }
    }
    let counts = queue.counts(Some("batch")).await.unwrap();
    assert_eq!(
        counts,
        Counts {
            completed: JOBS as u64,
            ..Counts::default()
        }
    );
    let all = queue.jobs_in_queue("batch").await.unwrap();
    let by_child = all
        .iter()
        .filter(|j| j.result.as_deref() == Some(&b"child"[..]))
        .count();
    assert!(by_child >= 1, "the child's durable completions survive");
    assert_eq!(
        by_child + by_parent,
        JOBS,
        "each job completed exactly once"
    );
    queue.store().close_async().await.unwrap();
}
