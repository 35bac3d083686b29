//! `batch --via provider` through the real binary against the loopback server's batch APIs:
//! the same output as a live run, one submission per line across kills and signals, the
//! provider's failures, cancels and flaky polls.

mod support;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use reasonq::sim::batch::CreateFault;
use reasonq::sim::{BatchConfig, BatchControl, BatchMode, Fault, Protocol, SimConfig};
use serde_json::Value;
use support::{answer, questions, read_jsonl, stderr, Env};

/// Polls fast, so a test waits for the loopback provider, not for the backoff.
const FAST_POLLS: [(&str, &str); 2] = [
    ("REASONQ_PROVIDER_BATCH_POLL_MIN_MS", "20"),
    ("REASONQ_PROVIDER_BATCH_POLL_MAX_S", "1"),
];

fn sim(mode: BatchMode) -> SimConfig {
    SimConfig {
        batch: BatchConfig {
            mode,
            ..BatchConfig::default()
        },
        ..SimConfig::default()
    }
}

fn auto() -> BatchMode {
    BatchMode::Auto {
        step: Duration::from_millis(50),
    }
}

/// `reasonq batch in.jsonl --via provider ARGS` against `base_url`, started.
fn spawn(env: &Env, base_url: &str, extra: &[&str]) -> Child {
    let mut args = vec![
        "batch", "in.jsonl", "--batch", "b", "--via", "provider", "--plain",
    ];
    args.extend_from_slice(extra);
    let mut cmd = env.command_at(&env.db(), base_url, &args);
    cmd.envs(FAST_POLLS)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    cmd.spawn().unwrap()
}

async fn wait(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

async fn run(env: &Env, base_url: &str, extra: &[&str]) -> Output {
    wait(spawn(env, base_url, extra)).await
}

/// Waits (up to 30 s) until `ready` holds.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kill(child: &Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The one batch the server holds.
fn only_batch(control: &BatchControl) -> String {
    let all = control.list();
    assert_eq!(all.len(), 1, "{all:?}");
    all[0].id.clone()
}

/// Every line of `n` questions submitted exactly once.
fn submitted_once(control: &BatchControl, n: usize) {
    assert_eq!(control.max_submissions(), 1);
    let total: usize = control.list().iter().map(|b| b.total).sum();
    assert_eq!(total, n, "{:?}", control.list());
}

fn answers(env: &Env, name: &str) -> Vec<(String, String)> {
    read_jsonl(&env.path(name))
        .iter()
        .map(|l| {
            (
                l["custom_id"].as_str().unwrap_or("").to_string(),
                answer(l).to_string(),
            )
        })
        .collect()
}

fn status_json(env: &Env) -> Value {
    let out = env.command(&["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_batch_writes_what_a_live_run_writes_and_fills_the_cache() {
    let env = Env::start(sim(auto())).await;
    env.write_input("in.jsonl", &questions(30));
    let out = run(&env, &env.server.base_url(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sent through the openai batch API"),
        "{}",
        stderr(&out)
    );
    let control = env.server.batches();
    submitted_once(&control, 30);
    assert_eq!(env.server.stats().live_chats, 0, "no live call");
    let remote = answers(&env, "in.out.jsonl");
    // Each line says which provider batch answered it.
    let id = only_batch(&control);
    let out = env.command(&["results", "b", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let details = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        details
            .matches(&format!("\"provider_batch\":\"{id}\""))
            .count(),
        30,
        "{details}"
    );

    // The same file live, in another database: the same lines, answers and order.
    let live_db = env.path("live.redb");
    let out = env
        .command_on(&live_db, &["batch", "in.jsonl", "-o", "live.jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(answers(&env, "live.jsonl"), remote);
    assert_eq!(remote.len(), 30);

    // The provider's answers are in the cache: a live run of the same prompts is free.
    let calls = env.server.stats().live_chats;
    let out = env
        .command(&["batch", "in.jsonl", "--batch", "again", "-o", "again.jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.server.stats().live_chats, calls);
    assert_eq!(answers(&env, "again.jsonl"), remote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_provider_runs_resumes_the_same_batch() {
    let env = Env::start(sim(BatchMode::Manual)).await;
    env.write_input("in.jsonl", &questions(20));
    let control = env.server.batches();
    let mut child = spawn(&env, &env.server.base_url(), &[]);
    until("the batch to be created", || {
        control.counters().batches_created == 1
    })
    .await;
    // Let it poll once, so the id is surely recorded, then kill it.
    let polls = control.counters().polls;
    until("a poll", || control.counters().polls > polls).await;
    child.kill().unwrap();
    let _ = child.wait();

    let child = spawn(&env, &env.server.base_url(), &[]);
    let id = only_batch(&control);
    let polls = control.counters().polls;
    until("the resumed run to poll", || {
        control.counters().polls > polls
    })
    .await;
    control.complete(&id).unwrap();
    let out = wait(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let c = control.counters();
    assert_eq!((c.files_uploaded, c.batches_created), (1, 1), "{c:?}");
    submitted_once(&control, 20);
    assert_eq!(answers(&env, "in.out.jsonl").len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_collecting_loses_nothing_and_pays_nothing_twice() {
    let env = Env::start(sim(BatchMode::Manual)).await;
    env.write_input("in.jsonl", &questions(20));
    let control = env.server.batches();
    // The first download hangs: the process is killed in the middle of collecting.
    control.push_download_faults([Fault::Latency(Duration::from_secs(60))]);
    let mut child = spawn(&env, &env.server.base_url(), &[]);
    until("the batch to be created", || {
        control.counters().batches_created == 1
    })
    .await;
    let id = only_batch(&control);
    control.complete(&id).unwrap();
    until("a download", || control.counters().result_reads >= 1).await;
    child.kill().unwrap();
    let _ = child.wait();

    let out = run(&env, &env.server.base_url(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(control.counters().batches_created, 1);
    submitted_once(&control, 20);
    assert_eq!(answers(&env, "in.out.jsonl").len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_detaches_a_live_run_is_refused_and_the_next_provider_run_collects() {
    let env = Env::start(sim(BatchMode::Manual)).await;
    env.write_input("in.jsonl", &questions(10));
    let control = env.server.batches();
    let child = spawn(&env, &env.server.base_url(), &[]);
    until("the batch to be created", || {
        control.counters().batches_created == 1
    })
    .await;
    let polls = control.counters().polls;
    until("a poll", || control.counters().polls > polls).await;
    kill(&child, "-INT");
    let out = wait(child).await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("detached"), "{}", stderr(&out));
    let status = status_json(&env);
    assert_eq!(
        status[0]["provider_batches"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );

    // A live run would send the lines the provider holds: refused, with the way out.
    let out = env
        .command(&["batch", "in.jsonl", "--batch", "b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--via provider"), "{}", stderr(&out));
    assert_eq!(env.server.stats().live_chats, 0);

    control.complete(&only_batch(&control)).unwrap();
    let out = run(&env, &env.server.base_url(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    submitted_once(&control, 10);
    assert_eq!(answers(&env, "in.out.jsonl").len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lines_run_live_with_fallback_and_the_rest_is_paid_once() {
    let env = Env::start(sim(BatchMode::Manual)).await;
    env.write_input("in.jsonl", &questions(20));
    let control = env.server.batches();
    let child = spawn(&env, &env.server.base_url(), &["--fallback", "live"]);
    until("the batch to be created", || {
        control.counters().batches_created == 1
    })
    .await;
    control.expire(&only_batch(&control), 0.5).unwrap();
    let out = wait(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(answers(&env, "in.out.jsonl").len(), 20);
    assert!(read_jsonl(&env.path("in.out.jsonl"))
        .iter()
        .all(|l| l["error"].is_null()));
    // Half answered by the provider, the expired half live, one call each.
    assert_eq!(env.server.stats().live_chats, 10);
    submitted_once(&control, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_the_provider_left_out_or_failed_go_again_on_the_next_run() {
    let env = Env::start(sim(BatchMode::Manual)).await;
    env.write_input("in.jsonl", &questions(6));
    let control = env.server.batches();
    let child = spawn(&env, &env.server.base_url(), &[]);
    until("the batch to be created", || {
        control.counters().batches_created == 1
    })
    .await;
    let first = only_batch(&control);
    let ids = control.get(&first).unwrap().custom_ids;
    control.drop_results(&first, [ids[0].as_str()]).unwrap();
    control.fail_lines([ids[1].as_str()], Fault::status(500));
    control.complete(&first).unwrap();
    let out = wait(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("2 lines were not answered"),
        "{}",
        stderr(&out)
    );
    let status = status_json(&env);
    assert_eq!(status[0]["states"]["completed"], 4, "{status}");
    assert_eq!(status[0]["states"]["retryable"], 2, "{status}");

    // The next run sends just those two, in a second provider batch.
    let child = spawn(&env, &env.server.base_url(), &[]);
    until("a second batch", || control.counters().batches_created == 2).await;
    let second = control.list()[1].clone();
    assert_eq!(second.total, 2, "{second:?}");
    control.complete(&second.id).unwrap();
    let out = wait(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(answers(&env, "in.out.jsonl").len(), 6);
    assert!(read_jsonl(&env.path("in.out.jsonl"))
        .iter()
        .all(|l| l["error"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_named_by_a_failed_validation_fail_with_the_providers_message() {
    let env = Env::start(sim(BatchMode::Manual)).await;
    env.write_input("in.jsonl", &questions(4));
    let control = env.server.batches();
    let child = spawn(&env, &env.server.base_url(), &[]);
    until("the batch to be created", || {
        control.counters().batches_created == 1
    })
    .await;
    let id = only_batch(&control);
    control
        .fail_validation(
            &id,
            vec![reasonq::sim::batch::LineError::new(
                Some(2),
                "invalid_request",
                "max_tokens is too large",
            )],
        )
        .unwrap();
    let out = wait(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let errors = std::fs::read_to_string(env.path("in.errors.jsonl")).unwrap_or_default();
    assert!(errors.contains("max_tokens is too large"), "{errors}");
    let status = status_json(&env);
    assert_eq!(status[0]["states"]["discarded"], 1, "{status}");
    assert_eq!(status[0]["states"]["retryable"], 3, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_survive_server_errors_and_resets() {
    let env = Env::start(sim(auto())).await;
    env.write_input("in.jsonl", &questions(8));
    let control = env.server.batches();
    control.push_poll_faults([
        Fault::status(503),
        Fault::Reset,
        Fault::status(502),
        Fault::Reset,
        Fault::status(500),
    ]);
    let out = run(&env, &env.server.base_url(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(answers(&env, "in.out.jsonl").len(), 8);
    submitted_once(&control, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cancel_cancels_at_the_provider_and_keeps_the_partial_results() {
    let env = Env::start(sim(BatchMode::Manual)).await;
    env.write_input("in.jsonl", &questions(10));
    let control = env.server.batches();
    let child = spawn(&env, &env.server.base_url(), &[]);
    until("the batch to be created", || {
        control.counters().batches_created == 1
    })
    .await;
    let id = only_batch(&control);
    control.process(&id, 0.5).unwrap();
    kill(&child, "-INT");
    let out = wait(child).await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));

    let mut cancel = env.command(&["jobs", "cancel", "--batch", "b"]);
    cancel.envs(FAST_POLLS);
    let cancel = cancel
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    until("the cancel to reach the provider", || {
        control
            .get(&id)
            .is_some_and(|b| b.state == reasonq::sim::batch::BatchState::Cancelling)
    })
    .await;
    control.advance(&id).unwrap();
    let out = wait(cancel).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status = status_json(&env);
    assert_eq!(status[0]["states"]["completed"], 5, "{status}");
    assert_eq!(status[0]["states"]["cancelled"], 5, "{status}");
    assert_eq!(
        status[0]["provider_batches"].as_array().map(Vec::len),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xai_and_anthropic_batches_give_the_same_answers() {
    let env = Env::start(sim(auto())).await;
    env.write_input("in.jsonl", &questions(12));
    let out = run(&env, &env.server.base_url(), &["-o", "openai.jsonl"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = answers(&env, "openai.jsonl");
    for (protocol, name) in [(Protocol::Xai, "xai"), (Protocol::Anthropic, "anthropic")] {
        let db = env.path(&format!("{name}.redb"));
        let out_file = format!("{name}.jsonl");
        let mut cmd = env.command_at(
            &db,
            &env.server.base_url_for(protocol),
            &[
                "batch",
                "in.jsonl",
                "--via",
                "provider",
                "--batch-api",
                name,
                "-o",
                &out_file,
            ],
        );
        let out = cmd.envs(FAST_POLLS).output().unwrap();
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(answers(&env, &out_file), expected, "{name}");
    }
    // One batch per protocol, each line once in each (every database numbers its jobs
    // from 1, so the provider sees the same custom ids three times, once per protocol).
    let control = env.server.batches();
    let all = control.list();
    assert_eq!(
        all.iter()
            .map(|b| (b.protocol, b.total))
            .collect::<Vec<_>>(),
        [
            (Protocol::OpenAi, 12),
            (Protocol::Xai, 12),
            (Protocol::Anthropic, 12)
        ]
    );
    assert_eq!(control.max_submissions(), 3);
    assert_eq!(env.server.stats().live_chats, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_runs_a_provider_batch_offline_in_each_protocol() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input("in.jsonl", &questions(5));
    for api in ["openai", "xai", "anthropic"] {
        let db = format!("{api}.redb");
        let output = format!("{api}.jsonl");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_reasonq"));
        cmd.current_dir(env.dir.path())
            .args([
                "--simulate",
                "--db",
                &db,
                "batch",
                "in.jsonl",
                "-o",
                &output,
            ])
            .args(["--via", "provider", "--batch-api", api])
            .stdin(Stdio::null());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{api}: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("sent through the {api} batch API")));
        let lines = read_jsonl(&env.path(&output));
        assert_eq!(lines.len(), 5, "{api}");
        assert!(
            answer(&lines[0]).contains("[simulated]"),
            "{api}: {}",
            lines[0]
        );
    }
}

/// `reasonq::sim` with requests logged, so a test sees a create arrive.
fn logged(mode: BatchMode) -> SimConfig {
    SimConfig {
        record_requests: true,
        ..sim(mode)
    }
}

/// Whether a `POST` to a path ending in `tail` has arrived.
fn posted(env: &Env, tail: &str) -> bool {
    env.server
        .stats()
        .log
        .iter()
        .any(|r| r.method == "POST" && r.path.ends_with(tail))
}

/// Kills the run at the point `at` describes, runs the same command again, completes the
/// provider batch, and checks that nothing was uploaded, created or submitted twice.
async fn killed_then_resumed(
    protocol: Protocol,
    faults: Vec<CreateFault>,
    at: &str,
    ready: impl Fn(&Env, &BatchControl) -> bool,
) {
    let env = Env::start(logged(BatchMode::Manual)).await;
    env.write_input("in.jsonl", &questions(12));
    let control = env.server.batches();
    control.push_create_faults(faults);
    let base = env.server.base_url_for(protocol);
    let api = match protocol {
        Protocol::OpenAi => "openai",
        Protocol::Xai => "xai",
        Protocol::Anthropic => "anthropic",
    };
    let mut child = spawn(&env, &base, &["--batch-api", api]);
    until(at, || ready(&env, &control)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let before = control.counters();

    let child = spawn(&env, &base, &["--batch-api", api]);
    until("a batch holding every line", || {
        control.list().first().is_some_and(|b| b.total == 12)
    })
    .await;
    let id = only_batch(&control);
    let polls = control.counters().polls;
    until("the resumed run to poll", || {
        control.counters().polls > polls
    })
    .await;
    control.complete(&id).unwrap();
    let out = wait(child).await;
    assert!(out.status.success(), "{at}: {}", stderr(&out));
    let after = control.counters();
    assert_eq!(after.batches_created, 1, "{at}: {before:?} then {after:?}");
    let files = u64::from(protocol == Protocol::OpenAi);
    assert_eq!(
        after.files_uploaded, files,
        "{at}: {before:?} then {after:?}"
    );
    submitted_once(&control, 12);
    assert_eq!(answers(&env, "in.out.jsonl").len(), 12, "{at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_the_upload_reaches_the_provider() {
    killed_then_resumed(
        Protocol::OpenAi,
        vec![CreateFault::Before(Duration::from_secs(60))],
        "the upload to arrive (not applied)",
        |env, control| posted(env, "/files") && control.counters().files_uploaded == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_upload_before_its_id_is_recorded() {
    killed_then_resumed(
        Protocol::OpenAi,
        vec![CreateFault::After(Fault::Latency(Duration::from_secs(60)))],
        "the upload to be applied",
        |_, control| control.counters().files_uploaded == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_batch_is_created_before_its_id_is_recorded() {
    killed_then_resumed(
        Protocol::OpenAi,
        vec![
            CreateFault::After(Fault::Ok),
            CreateFault::After(Fault::Latency(Duration::from_secs(60))),
        ],
        "the batch to be created",
        |_, control| control.counters().batches_created == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_xai_took_the_requests_before_the_answer() {
    killed_then_resumed(
        Protocol::Xai,
        vec![
            CreateFault::After(Fault::Ok),
            CreateFault::After(Fault::Latency(Duration::from_secs(60))),
        ],
        "the requests to be added",
        |_, control| control.list().first().is_some_and(|b| b.total == 12),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_anthropic_created_the_batch_before_the_answer() {
    killed_then_resumed(
        Protocol::Anthropic,
        vec![CreateFault::After(Fault::Latency(Duration::from_secs(60)))],
        "the message batch to be created",
        |_, control| control.counters().batches_created == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_is_lost_is_found_again_not_repeated() {
    // No kill: the provider creates the batch and the connection drops before the answer.
    let env = Env::start(sim(auto())).await;
    env.write_input("in.jsonl", &questions(8));
    let control = env.server.batches();
    control.push_create_faults([
        CreateFault::After(Fault::Ok),
        CreateFault::After(Fault::Reset),
    ]);
    let out = run(&env, &env.server.base_url(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(control.counters().batches_created, 1);
    submitted_once(&control, 8);
    assert_eq!(answers(&env, "in.out.jsonl").len(), 8);
}

/// A provider batch holds chat completions; the file's other endpoints run live with
/// `--fallback live`, and wait for a live run without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_endpoints_of_the_file_run_live_beside_the_provider_batch() {
    let env = Env::start(sim(auto())).await;
    let mut lines = questions(4);
    lines.push(
        serde_json::json!({"custom_id": "emb", "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": "text-embedding-3-small", "input": "embed me"}})
        .to_string(),
    );
    env.write_input("in.jsonl", &lines);
    let out = run(&env, &env.server.base_url(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.server.stats().live_other,
        0,
        "not without --fallback live"
    );
    let out = run(&env, &env.server.base_url(), &["--fallback", "live"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let output = read_jsonl(&env.path("in.out.jsonl"));
    assert_eq!(output.len(), 5);
    assert!(
        output.iter().all(|l| l["response"]["status_code"] == 200),
        "{output:?}"
    );
    assert_eq!(output[4]["response"]["body"]["object"], "list");
    let stats = env.server.stats();
    assert_eq!((stats.live_chats, stats.live_other), (0, 1));
    submitted_once(&env.server.batches(), 4);
}
