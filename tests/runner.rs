//! The runner with handlers of its own: jobs go to the handler of their kind, an unknown
//! kind is discarded, an answer too large to store fails its own job, not the run, and a
//! kind's own writes commit with its completions (`Also`), a failing one failing its job only.

use std::time::Duration;

use redb::ReadableTable;

use futures_util::future::BoxFuture;
use reasonq::chat::finish::{finish, Answer};
use reasonq::chat::{ChatJob, ResponseRecord};
use reasonq::codec::{self, MAX_RECORD_BYTES};
use reasonq::memory::experience::NewExperience;
use reasonq::queue::Failure;
use reasonq::queue::{JobState, NewJob, Queue, QueueConfig};
use reasonq::runner::{
    Also, DrainEnd, FailureRecord, Handler, JobCtx, Registry, Runner, RunnerConfig,
};
use reasonq::shutdown::Shutdown;
use reasonq::store::StoreConfig;
use reasonq::Result;

/// A table of the test's own job kind: job id -> the line its completion noted.
const NOTES: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("test_notes");

/// Answers every job through `chat::finish` with a body of `size` bytes.
struct Answers {
    size: usize,
}

impl Handler for Answers {
    fn run(&self, ctx: JobCtx) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let job: ChatJob = codec::decode(&ctx.job().payload)?;
            let answer = Answer {
                record: ResponseRecord {
                    status_code: 200,
                    request_id: None,
                    body: "x".repeat(self.size),
                    cached: false,
                    latency_ms: 1,
                    provider_batch: None,
                    cost: None,
                    cache_tier: None,
                },
                experience: Some(NewExperience::new("q", "a")),
                tokens: Some((1, 1)),
                cache: None,
            };
            finish(&ctx, &job, answer, |_, _| Ok(())).await
        })
    }
}

fn job(kind: &str, line: u64) -> NewJob {
    let chat = ChatJob {
        custom_id: format!("line-{line}"),
        line,
        body: "{}".into(),
        domain: "general".into(),
        strategy: None,
        expected: None,
        memory: false,
        api: reasonq::llm::Api::ChatCompletions,
        validate: None,
    };
    NewJob::new("q", kind, codec::encode(&chat).unwrap())
}

/// A queue in its own database under `dir`.
async fn queue_in(dir: &tempfile::TempDir, config: QueueConfig) -> Queue {
    Queue::open(StoreConfig::new(dir.path().join("r.redb")), config)
        .await
        .unwrap()
}

/// A runner over `queue` with `concurrency` jobs in flight and a one-minute lease.
fn runner_of(queue: &Queue, registry: Registry, concurrency: usize) -> Runner {
    Runner::new(
        queue.clone(),
        registry,
        RunnerConfig {
            concurrency,
            lease: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(5),
            owner: RunnerConfig::owner_name(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_runs_its_handler_and_one_unstorable_answer_fails_only_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue_in(&dir, QueueConfig::default()).await;
    let mut registry = Registry::default();
    registry.register("small", Answers { size: 10 });
    registry.register(
        "huge",
        Answers {
            size: MAX_RECORD_BYTES + 1,
        },
    );
    let runner = runner_of(&queue, registry, 4);
    let jobs = vec![
        job("small", 1),
        job("huge", 2),
        job("small", 3),
        job("nobody", 4),
    ];
    let ids: Vec<u64> = queue
        .enqueue_many(jobs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let end = runner.drain("q", Shutdown::new().listener()).await.unwrap();
    assert_eq!(
        end,
        DrainEnd::Finished,
        "the run went on past the huge answer"
    );

    let state = |id| {
        let queue = queue.clone();
        async move { queue.get(id).await.unwrap().unwrap() }
    };
    for id in [ids[0], ids[2]] {
        assert_eq!(state(id).await.state, JobState::Completed);
    }
    let huge = state(ids[1]).await;
    assert_eq!(huge.state, JobState::Discarded);
    let failure = FailureRecord::from_last_error(huge.last_error.as_deref().unwrap());
    assert_eq!(failure.code, "result_too_large");
    assert!(
        failure.message.starts_with("line 2 (line-2)"),
        "{}",
        failure.message
    );
    let unknown = state(ids[3]).await;
    assert_eq!(unknown.state, JobState::Discarded);
    let failure = FailureRecord::from_last_error(unknown.last_error.as_deref().unwrap());
    assert_eq!(failure.code, "unknown_kind");
    let counts = runner.stats().snapshot();
    assert_eq!((counts.completed, counts.failed), (2, 2));
}

/// Times out on every call.
struct AlwaysTimesOut;

impl Handler for AlwaysTimesOut {
    fn run(&self, ctx: JobCtx) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let timeout = reasonq::llm::LlmError::Timeout {
                after: Duration::from_secs(1),
            };
            ctx.fail_call(timeout).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_retries_run_out_counts_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig {
        default_max_attempts: 2,
        backoff_base: Duration::ZERO,
        ..QueueConfig::default()
    };
    let queue = queue_in(&dir, config).await;
    let mut registry = Registry::default();
    registry.register("slow", AlwaysTimesOut);
    let runner = runner_of(&queue, registry, 1);
    let id = queue.enqueue(job("slow", 1)).await.unwrap().id;
    let end = runner.drain("q", Shutdown::new().listener()).await.unwrap();
    assert_eq!(end, DrainEnd::Finished);
    assert_eq!(
        queue.get(id).await.unwrap().unwrap().state,
        JobState::Discarded
    );
    let counts = runner.stats().snapshot();
    assert_eq!((counts.failed, counts.retried), (1, 2), "{counts:?}");
}

/// A kind that completes with a note of its own in the completion's transaction (`Also`);
/// the note of line `refuse` fails, and the handler then fails that job.
struct Notes {
    refuse: u64,
}

impl Handler for Notes {
    fn run(&self, ctx: JobCtx) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let job: ChatJob = codec::decode(&ctx.job().payload)?;
            let (id, line, refuse) = (ctx.job().id, job.line, self.refuse);
            let note = Also(move |txn: &redb::WriteTransaction, _now| {
                if line == refuse {
                    return Err(reasonq::Error::Invalid(format!("line {line} refused")));
                }
                txn.open_table(NOTES)?.insert(id, line)?;
                Ok(())
            });
            match ctx.complete(b"noted".to_vec(), None, note).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let failure = FailureRecord::new("note_failed", e.to_string());
                    ctx.fail(&failure, Failure::Fatal).await
                }
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinds_own_writes_commit_with_its_completions_and_a_failing_one_fails_its_job_only() {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue_in(&dir, QueueConfig::default()).await;
    let mut registry = Registry::default();
    registry.register("noted", Notes { refuse: 7 });
    // Many in flight, so completions wait for the writer together and are joined.
    let runner = runner_of(&queue, registry, 16);
    let jobs: Vec<NewJob> = (1..=40).map(|line| job("noted", line)).collect();
    let ids: Vec<u64> = queue
        .enqueue_many(jobs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let end = runner.drain("q", Shutdown::new().listener()).await.unwrap();
    assert_eq!(end, DrainEnd::Finished);

    let notes: Vec<(u64, u64)> = queue
        .store()
        .read(|txn| {
            let notes = txn.open_table(NOTES)?;
            let rows = notes
                .iter()?
                .map(|row| row.map(|(k, v)| (k.value(), v.value())));
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
        .await
        .unwrap();
    let expected: Vec<(u64, u64)> = ids
        .iter()
        .zip(1..)
        .filter(|&(_, line)| line != 7)
        .map(|(&id, line)| (id, line))
        .collect();
    assert_eq!(
        notes, expected,
        "each completed job's note, and none for line 7"
    );
    for (&id, line) in ids.iter().zip(1u64..) {
        let stored = queue.get(id).await.unwrap().unwrap();
        if line == 7 {
            assert_eq!(stored.state, JobState::Discarded);
            let failure = FailureRecord::from_last_error(stored.last_error.as_deref().unwrap());
            assert_eq!(failure.code, "note_failed");
            assert!(
                failure.message.contains("line 7 refused"),
                "{}",
                failure.message
            );
        } else {
            assert_eq!(stored.state, JobState::Completed, "line {line}");
        }
    }
}
