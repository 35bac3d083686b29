//! The fault matrix: every fault the simulated server can inject, with the prompt cache on
//! and off, run through the real runner path (App, Queue, the runner of `App::connect`, a tempdir store). Each
//! row ends in its documented outcome (docs/reliability.md, "Fault matrix") and leaves a
//! consistent job table.
//!
//! The client's own retries are off (`retry.max_attempts = 1`) so every fault reaches the
//! worker: retryable errors go back to the queue (backoff 0 here), a `Retry-After` snoozes
//! the job without spending an attempt, fatal errors discard it with a code.

use std::time::Duration;

use futures_util::future::join_all;
use reasonq::app::{App, Endpoint};
use reasonq::cache::CachePolicy;
use reasonq::chat::ChatJob;
use reasonq::codec;
use reasonq::config::Config;
use reasonq::llm::Api;
use reasonq::queue::{Job, JobState, NewJob};
use reasonq::runner::FailureRecord;
use reasonq::runner::{DrainEnd, RunCounts, SNOOZE_FLOOR};
use reasonq::shutdown::Shutdown;
use reasonq::sim::{Fault, SimConfig, SimServer};

const QUEUE: &str = "matrix";

/// How a row must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Completed on the first attempt.
    Completed,
    /// Failed once (retryable), then completed on attempt 2.
    CompletedAfterRetry,
    /// Snoozed for the server's `Retry-After` (no attempt spent), then completed.
    SnoozedThenCompleted,
    /// Discarded at once with this failure code.
    Discarded(&'static str),
}

fn rows() -> Vec<(&'static str, Fault, Expect)> {
    use Expect::*;
    let ms = Duration::from_millis;
    vec![
        ("latency 200 ms", Fault::Latency(ms(200)), Completed),
        (
            "429 without Retry-After",
            Fault::RateLimited {
                retry_after_secs: None,
                retry_after_ms: None,
            },
            CompletedAfterRetry,
        ),
        (
            "429 with Retry-After: 1",
            Fault::RateLimited {
                retry_after_secs: Some(1),
                retry_after_ms: None,
            },
            SnoozedThenCompleted,
        ),
        // No spinning: the snooze has a floor.
        (
            "429 with Retry-After: 0",
            Fault::RateLimited {
                retry_after_secs: Some(0),
                retry_after_ms: None,
            },
            SnoozedThenCompleted,
        ),
        // No parking for a day: past the cap the job spends an attempt and goes on.
        (
            "429 with Retry-After: 86400",
            Fault::RateLimited {
                retry_after_secs: Some(86_400),
                retry_after_ms: None,
            },
            CompletedAfterRetry,
        ),
        (
            "429 with retry-after-ms: 100",
            Fault::RateLimited {
                retry_after_secs: None,
                retry_after_ms: Some(100),
            },
            SnoozedThenCompleted,
        ),
        ("500", Fault::status(500), CompletedAfterRetry),
        ("503", Fault::status(503), CompletedAfterRetry),
        ("reset before headers", Fault::Reset, CompletedAfterRetry),
        ("truncated mid-body", Fault::Truncated, CompletedAfterRetry),
        (
            "slow headers beyond the 1 s timeout",
            Fault::Latency(ms(1_600)),
            CompletedAfterRetry,
        ),
        // A broken 2xx body costs an attempt, not the line.
        ("malformed JSON", Fault::MalformedJson, CompletedAfterRetry),
        // A page that is not JSON (a wrong base URL) is not worth the queue's attempts.
        (
            "wrong content type",
            Fault::WrongContentType,
            Discarded("not_json"),
        ),
        (
            "huge body over the 1 MiB cap",
            Fault::Huge(3 * 1024 * 1024),
            Discarded("too_large"),
        ),
        (
            "insufficient_quota",
            Fault::InsufficientQuota,
            Discarded("insufficient_quota"),
        ),
        ("400", Fault::status(400), Discarded("bad_request")),
        ("401", Fault::status(401), Discarded("unauthorized")),
    ]
}

fn config(dir: &std::path::Path, base_url: String, cache: bool) -> Config {
    let mut c = Config {
        db: dir.join("matrix.redb"),
        base_url,
        model: "grok-4".into(),
        concurrency: 2,
        cache_policy: if cache {
            CachePolicy::Always
        } else {
            CachePolicy::Never
        },
        ..Config::default()
    };
    c.http.request_timeout_s = 1;
    c.http.max_response_mb = 1;
    c.retry.max_attempts = 1;
    c.queue.max_attempts = 3;
    c.queue.backoff_base_s = 0;
    c
}

/// A request of `api` whose prompt text is `prompt` (the server counts calls by it).
fn body_of(api: Api, prompt: &str) -> serde_json::Value {
    use serde_json::json;
    match api {
        Api::ChatCompletions => json!({
            "model": "grok-4",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0
        }),
        Api::Responses => json!({"model": "grok-4", "input": prompt, "temperature": 0}),
        Api::Embeddings => json!({"model": "text-embedding-3-small", "input": prompt}),
        Api::Completions => json!({"model": "grok-4", "prompt": prompt, "temperature": 0}),
        Api::Moderations => json!({"input": prompt}),
    }
}

fn enqueue_job(api: Api, custom_id: &str, prompt: &str) -> NewJob {
    let job = ChatJob {
        custom_id: custom_id.into(),
        line: 1,
        body: body_of(api, prompt).to_string(),
        domain: "general".into(),
        strategy: None,
        expected: None,
        memory: false,
        api,
        validate: None,
    };
    let mut new = NewJob::new(QUEUE, "chat", codec::encode(&job).unwrap());
    new.dedup_key = Some(job.dedup_key("matrix"));
    new
}

/// Runs the queue dry with the real runner path (a new runner, so the counts are this
/// drain's).
async fn drain(app: &App) -> RunCounts {
    let connected = app.connect(&Endpoint::default()).await.unwrap();
    // Bounded: a job parked for the server's whole advice (a day) must fail the row, not
    // hang the suite.
    let drained = connected.runner.drain(QUEUE, Shutdown::new().listener());
    let end = tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .expect("the queue did not drain within a minute")
        .unwrap();
    assert_eq!(end, DrainEnd::Finished);
    connected.runner.stats().snapshot()
}

/// Every job is in a final state, counts add up, no lease is held, and exactly the completed
/// jobs carry a result and (chat only) an experience.
async fn assert_consistent(app: &App, api: Api, row: &str) -> Vec<Job> {
    let jobs = app.queue.jobs_in_queue(QUEUE).await.unwrap();
    let counts = app.queue.counts(Some(QUEUE)).await.unwrap();
    assert_eq!(counts.total(), jobs.len() as u64, "{row}: counts add up");
    for state in JobState::ALL {
        let n = jobs.iter().filter(|j| j.state == state).count() as u64;
        assert_eq!(counts.get(state), n, "{row}: count of {state:?}");
    }
    for job in &jobs {
        assert!(
            matches!(job.state, JobState::Completed | JobState::Discarded),
            "{row}: job {} left {:?}",
            job.id,
            job.state
        );
        assert_eq!(
            job.lease_expires_at, None,
            "{row}: job {} holds a lease",
            job.id
        );
        assert_eq!(
            job.result.is_some(),
            job.state == JobState::Completed,
            "{row}: result of job {} in {:?}",
            job.id,
            job.state
        );
    }
    let experiences = app.store.experience_counts().await.unwrap().total;
    let learned = if api == Api::ChatCompletions {
        counts.completed
    } else {
        0
    };
    assert_eq!(
        experiences, learned,
        "{row}: one experience per completed chat job"
    );
    jobs
}

async fn run_row(api: Api, name: &str, fault: Fault, expect: Expect, cache: bool) {
    let row = format!(
        "{} {name} (cache {})",
        api.url(),
        if cache { "on" } else { "off" }
    );
    let server = SimServer::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(config(dir.path(), server.base_url(), cache))
        .await
        .unwrap();
    let prompt = format!("prompt of {row}");

    server.push_faults([fault]);
    app.queue
        .enqueue(enqueue_job(api, "first", &prompt))
        .await
        .unwrap();
    let stats = drain(&app).await;
    let jobs = assert_consistent(&app, api, &row).await;
    let job = &jobs[0];
    let failure = job
        .last_error
        .as_deref()
        .map(FailureRecord::from_last_error);
    match expect {
        Expect::Completed | Expect::CompletedAfterRetry | Expect::SnoozedThenCompleted => {
            assert_eq!(job.state, JobState::Completed, "{row}: {failure:?}");
            let (attempt, retried, calls) = match expect {
                Expect::Completed => (1, 0, 1),
                Expect::CompletedAfterRetry => (2, 1, 2),
                _ => (1, 1, 2),
            };
            assert_eq!(job.attempt, attempt, "{row}: attempts");
            assert_eq!(stats.retried, retried, "{row}: retried");
            assert_eq!(server.calls_for(&prompt), calls, "{row}: upstream calls");
        }
        Expect::Discarded(code) => {
            assert_eq!(job.state, JobState::Discarded, "{row}");
            assert_eq!(job.attempt, 1, "{row}: no retry of a fatal error");
            assert_eq!(failure.map(|f| f.code), Some(code.to_string()), "{row}");
            assert_eq!(server.calls_for(&prompt), 1, "{row}: upstream calls");
        }
    }

    // The same prompt again: with the cache on, an answer is served from it and a failure
    // never is; with the cache off, it always goes upstream.
    let before = server.calls_for(&prompt);
    app.queue
        .enqueue(enqueue_job(api, "second", &prompt))
        .await
        .unwrap();
    let stats = drain(&app).await;
    let jobs = assert_consistent(&app, api, &row).await;
    let second = jobs.iter().find(|j| j.id != job.id).unwrap();
    assert_eq!(second.state, JobState::Completed, "{row}: second job");
    let from_cache = cache && job.state == JobState::Completed;
    assert_eq!(
        server.calls_for(&prompt) - before,
        u64::from(!from_cache),
        "{row}: upstream calls of the second job"
    );
    assert_eq!(stats.cached, u64::from(from_cache), "{row}");
    app.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_with_the_cache_on_and_off_ends_in_its_documented_outcome() {
    let runs = rows().into_iter().flat_map(|(name, fault, expect)| {
        [false, true].map(|cache| run_row(Api::ChatCompletions, name, fault.clone(), expect, cache))
    });
    join_all(runs).await;
}

/// The same rows for every other endpoint of a batch file: the same queue, retries, limits
/// and cache, and the same outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_ends_the_same_way_on_the_other_endpoints() {
    for api in [
        Api::Responses,
        Api::Embeddings,
        Api::Completions,
        Api::Moderations,
    ] {
        let runs = rows().into_iter().flat_map(|(name, fault, expect)| {
            [false, true].map(|cache| run_row(api, name, fault.clone(), expect, cache))
        });
        join_all(runs).await;
    }
}

/// `Retry-After: 0` snoozes for the floor, not zero: the retry comes no sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_retry_after_still_waits_the_snooze_floor() {
    let server = SimServer::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(config(dir.path(), server.base_url(), false))
        .await
        .unwrap();
    server.push_faults([Fault::RateLimited {
        retry_after_secs: Some(0),
        retry_after_ms: None,
    }]);
    app.queue
        .enqueue(enqueue_job(
            Api::ChatCompletions,
            "zero",
            "prompt of the zero retry-after",
        ))
        .await
        .unwrap();
    let stats = drain(&app).await;
    assert_eq!((stats.completed, stats.retried), (1, 1));
    let calls: Vec<_> = server
        .stats()
        .log
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .collect();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].received_at - calls[0].received_at;
    assert!(gap >= SNOOZE_FLOOR, "retried after {gap:?}");
    app.close().await.unwrap();
    server.shutdown().await;
}
