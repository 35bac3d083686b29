//! How the batch treats server faults: fatal errors keep the provider's status and message,
//! retryable ones go back to the queue, `Retry-After` snoozes without spending an attempt,
//! and leases are extended while a slow call is in flight.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reasonq::sim::{Fault, RandomFaults, Reply, SimConfig};
use serde_json::Value;
use support::{questions, read_jsonl, stderr, stdout, Env};

/// One attempt per call inside the client, so every failure reaches the queue; no backoff.
const QUEUE_RETRIES: &[(&str, &str)] = &[
    ("REASONQ_RETRY_MAX_ATTEMPTS", "1"),
    ("REASONQ_QUEUE_BACKOFF_BASE_S", "0"),
];

fn prompt(body: &Value) -> String {
    body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn details(out: &std::process::Output) -> HashMap<String, Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["custom_id"].as_str().unwrap().to_string(), v))
        .collect()
}

/// Answers each chat request with `reply(prompt, n)`, `n` counting the calls of that prompt
/// from 1; returns the counts.
fn script(
    env: &Env,
    reply: impl Fn(&str, u32) -> Reply + Send + Sync + 'static,
) -> Arc<Mutex<HashMap<String, u32>>> {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let calls = seen.clone();
    env.server.set_responder(Arc::new(move |body: &Value| {
        let p = prompt(body);
        let n = {
            let mut calls = calls.lock().unwrap();
            let n = calls.entry(p.clone()).or_default();
            *n += 1;
            *n
        };
        reply(&p, n)
    }));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_errors_keep_the_provider_message_and_retryable_ones_recover() {
    let env = Env::start(SimConfig::default()).await;
    let seen = script(&env, |p, n| match (p, n) {
        ("question number 0", _) => Reply::Fault(Fault::Status {
            status: 400,
            code: Some("invalid_prompt".into()),
            message: "the prompt is not allowed".into(),
        }),
        ("question number 1", 1 | 2) => Reply::Fault(Fault::status(503)),
        ("question number 2", 1) => Reply::Fault(Fault::RateLimited {
            retry_after_secs: None,
            retry_after_ms: Some(300),
        }),
        ("question number 3", 1) => Reply::Fault(Fault::Reset),
        _ => Reply::Text(format!("answer to {p}")),
    });
    env.write_input("in.jsonl", &questions(5));
    let out = env
        .run_with_env(
            &["batch", "in.jsonl", "--batch", "t", "-o", "out.jsonl"],
            QUEUE_RETRIES,
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));

    let lines = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["response"]["status_code"], 400);
    assert_eq!(
        lines[0]["response"]["body"]["error"]["message"],
        "the prompt is not allowed"
    );
    assert!(lines[0]["error"].is_null());
    for line in &lines[1..] {
        assert_eq!(line["response"]["status_code"], 200, "{line}");
    }
    let errors = read_jsonl(&env.path("in.errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "q0000");

    let results = env.run(&["results", "t", "--json"]).await;
    let jobs = details(&results);
    assert_eq!(jobs["q0000"]["state"], "discarded");
    assert_eq!(jobs["q0000"]["attempts"], 1, "a fatal error is not retried");
    assert_eq!(jobs["q0001"]["attempts"], 3, "two 503s, then success");
    assert_eq!(
        jobs["q0002"]["attempts"], 1,
        "a snooze for Retry-After spends no attempt"
    );
    assert_eq!(jobs["q0003"]["attempts"], 2, "a reset is retried");
    assert_eq!(seen.lock().unwrap()["question number 0"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_out_into_a_clear_error() {
    let env = Env::start(SimConfig::default()).await;
    env.server
        .set_responder(Arc::new(|_: &Value| Reply::Fault(Fault::status(502))));
    env.write_input("in.jsonl", &questions(1));
    let mut vars = QUEUE_RETRIES.to_vec();
    vars.push(("REASONQ_QUEUE_MAX_ATTEMPTS", "3"));
    let out = env
        .run_with_env(&["batch", "in.jsonl", "-o", "out.jsonl"], &vars)
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(lines[0]["response"]["status_code"], 502);
    assert_eq!(env.server.stats().by_prompt["question number 0"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_extended_while_a_slow_call_is_in_flight() {
    let env = Env::start(SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(3500),
            latency_max: Duration::from_millis(3500),
            ..RandomFaults::default()
        }),
        ..SimConfig::default()
    })
    .await;
    env.write_input("in.jsonl", &questions(2));
    // A 2 s lease against 3.5 s calls: without heartbeats the rescuer would take the jobs
    // back mid-call and they would be called twice.
    let out = env
        .run_with_env(
            &[
                "batch",
                "in.jsonl",
                "--batch",
                "slow",
                "-o",
                "out.jsonl",
                "--cache",
                "never",
            ],
            &[("REASONQ_QUEUE_LEASE_S", "2")],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_jsonl(&env.path("out.jsonl")).len(), 2);
    let by_prompt = env.server.stats().by_prompt;
    assert_eq!(by_prompt["question number 0"], 1);
    assert_eq!(by_prompt["question number 1"], 1);
    let jobs = details(&env.run(&["results", "slow", "--json"]).await);
    assert_eq!(jobs["q0000"]["attempts"], 1);
}

/// Lines that failed can go again: by error code for a batch, or every failed line of the
/// file with `--retry-failed`; each is answered once the server is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lines_go_again_by_code_or_with_retry_failed() {
    let env = Env::start(SimConfig::default()).await;
    // Two lines fail fatally the first time only (a moderation hiccup, a missing model).
    let seen = script(&env, |p, n| match (p, n) {
        ("question number 0", 1) => Reply::Fault(Fault::status(400)),
        ("question number 1", 1) => Reply::Fault(Fault::status(404)),
        _ => Reply::Text(format!("answer to {p}")),
    });
    env.write_input("in.jsonl", &questions(5));
    let batch = ["batch", "in.jsonl", "--batch", "t", "-o", "out.jsonl"];
    let out = env.run(&batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_jsonl(&env.path("in.errors.jsonl")).len(), 2);

    // By code: only the 404 goes again.
    let out = env
        .run(&["jobs", "retry", "--batch", "t", "--code", "not_found"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(support::stdout(&out).starts_with("1 jobs of t will run again"));
    let out = env.run(&batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let errors = read_jsonl(&env.path("in.errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "q0000");

    // A plain re-run leaves the failed line failed; --retry-failed sends it again.
    let again: Vec<&str> = batch.iter().copied().chain(["--retry-failed"]).collect();
    let out = env.run(&again).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 failed lines go again"),
        "{}",
        stderr(&out)
    );
    let lines = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(lines.len(), 5);
    assert!(
        lines.iter().all(|l| l["response"]["status_code"] == 200),
        "{lines:?}"
    );
    // Each line was paid for once more at most: 5 answers, 2 failures.
    let calls = seen.lock().unwrap().values().sum::<u32>();
    assert_eq!(calls, 7);
}

fn status_of(out: &std::process::Output) -> Value {
    let list: Value = serde_json::from_str(&support::stdout(out)).unwrap();
    list[0]["states"].clone()
}

/// The server goes away mid-batch: after a short run of connection failures the batch stops
/// leasing, returns every job (no line is discarded for it), names the cause and exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_stops_the_batch_and_keeps_every_line() {
    let mut env = Env::start(SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(200),
            latency_max: Duration::from_millis(400),
            ..RandomFaults::default()
        }),
        ..SimConfig::default()
    })
    .await;
    env.write_input("in.jsonl", &questions(60));
    let child = env
        .command(&["batch", "in.jsonl", "--batch", "t", "--concurrency", "4"])
        .envs(QUEUE_RETRIES.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The endpoint dies: its listener and every open connection close.
    let spare = reasonq::sim::SimServer::start(SimConfig::default())
        .await
        .unwrap();
    std::mem::replace(&mut env.server, spare).shutdown().await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("stopped (endpoint_unreachable)"), "{err}");
    assert!(err.contains("cannot connect to 127.0.0.1"), "{err}");
    assert!(err.contains("back in the queue"), "{err}");
    let states = status_of(&env.run(&["status", "--json"]).await);
    assert_eq!(states["discarded"], 0, "{states}");
    assert_eq!(states["running"], 0, "{states}");
    assert!(states["completed"].as_u64().unwrap() < 60, "{states}");
}

/// A key that stops working (or credits that run out) fails the account, not each line: the
/// batch stops after a short run of them instead of discarding every remaining line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_error_stops_the_batch_instead_of_discarding_every_line() {
    let env = Env::start(SimConfig::default()).await;
    env.server.set_responder(Arc::new(|_: &Value| {
        Reply::Fault(Fault::Status {
            status: 401,
            code: Some("invalid_api_key".into()),
            message: "Incorrect API key provided".into(),
        })
    }));
    env.write_input("in.jsonl", &questions(20));
    let out = env
        .run_with_env(
            &["batch", "in.jsonl", "--batch", "t", "--concurrency", "2"],
            QUEUE_RETRIES,
        )
        .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("stopped (unauthorized)"), "{err}");
    assert!(err.contains("Incorrect API key provided"), "{err}");
    let states = status_of(&env.run(&["status", "--json"]).await);
    let discarded = states["discarded"].as_u64().unwrap();
    assert!(
        discarded < u64::from(reasonq::runner::ACCOUNT_ERRORS),
        "{states}"
    );
    assert_eq!(states["running"], 0, "{states}");
    let calls = env.server.stats().requests;
    assert!(calls < 10, "{calls} calls for 20 lines");
}
