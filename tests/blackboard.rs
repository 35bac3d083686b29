//! The blackboard strategy end to end: the real binary against a scripted server that
//! answers each knowledge source by the first words of its prompt.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reasonq::sim::{Fault, RandomFaults, Reply, SimConfig};
use serde_json::Value;
use support::{answer, read_jsonl, stderr, stdout, Env};

/// The knowledge source a prompt belongs to.
fn role(prompt: &str) -> &'static str {
    if prompt.starts_with("You are the decomposer") {
        "decompose"
    } else if prompt.starts_with("You are a solver") {
        "solve"
    } else if prompt.starts_with("You are the critic") {
        "critique"
    } else if prompt.starts_with("You are the synthesizer") {
        "synthesize"
    } else {
        "other"
    }
}

fn prompt_of(body: &Value) -> String {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or_default();
    last["content"].as_str().unwrap_or_default().to_string()
}

/// Scripts the four sources; `critic` gives the critic's answer of its n-th call.
fn script(env: &Env, decomposition: &'static str, critic: fn(usize) -> &'static str) {
    let critiques = Arc::new(AtomicUsize::new(0));
    env.server.set_responder(Arc::new(move |body: &Value| {
        let prompt = prompt_of(body);
        let text = match role(&prompt) {
            "decompose" => decomposition.to_string(),
            "solve" if prompt.contains("The critic said") => "b = 3".into(),
            "solve" if prompt.contains("sub-problem: find a") => "a = 1".into(),
            "solve" if prompt.contains("sub-problem: find b") => "b = 2".into(),
            "solve" => "solved".into(),
            "critique" => critic(critiques.fetch_add(1, Ordering::SeqCst)).into(),
            "synthesize" => "the answer is 4".into(),
            _ => "?".into(),
        };
        Reply::Text(text)
    }));
}

/// The prompts of the chat calls the server saw, in order.
fn prompts(env: &Env) -> Vec<String> {
    env.server
        .stats()
        .log
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| prompt_of(&serde_json::from_slice(&r.body).unwrap()))
        .collect()
}

/// The sources of the chat calls the server saw, in order.
fn call_sequence(env: &Env) -> Vec<&'static str> {
    prompts(env).iter().map(|p| role(p)).collect()
}

const LINE: &str =
    r#"{"id":"b1","question":"What is a + b?","strategy":"blackboard","params":{"temperature":0}}"#;

/// Runs a one-line blackboard batch and returns its output line.
async fn run_batch(env: &Env, vars: &[(&str, &str)]) -> Value {
    env.write_input("in.jsonl", &[LINE.to_string()]);
    let out = env
        .run_with_env(&["batch", "in.jsonl", "-o", "out.jsonl", "--plain"], vars)
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(lines.len(), 1);
    lines[0].clone()
}

/// `reasonq board SESSION --json`.
async fn board_json(env: &Env, session: &str) -> Value {
    let out = env.run(&["board", session, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// (kind, source) of each entry.
fn kinds(board: &Value) -> Vec<(String, String)> {
    board["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_decomposes_solves_critiques_synthesizes_and_outputs_the_final_answer() {
    let env = Env::start(SimConfig::default()).await;
    script(&env, "Plan:\n1. find a\n2. find b", |_| {
        "ACCEPT\nboth right"
    });
    let line = run_batch(&env, &[]).await;

    assert_eq!(
        call_sequence(&env),
        ["decompose", "solve", "solve", "critique", "synthesize"]
    );
    let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "custom_id", "response", "error"]);
    assert_eq!(line["response"]["status_code"], 200);
    assert_eq!(answer(&line), "the answer is 4");
    let body = &line["response"]["body"];
    assert_eq!(body["object"], "chat.completion");
    let session = body["board_session"].as_str().unwrap().to_string();
    assert!(session.starts_with("bb-"), "{session}");
    let usage = &body["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 5, "{usage}");

    let board = board_json(&env, &session).await;
    assert_eq!(
        kinds(&board),
        pairs(&[
            ("problem", "controller"),
            ("sub_problem", "decompose"),
            ("sub_problem", "decompose"),
            ("partial", "solve"),
            ("partial", "solve"),
            ("critique", "critique"),
            ("final", "synthesize"),
        ])
    );
    let entries = board["entries"].as_array().unwrap();
    assert_eq!(entries[3]["parent"], 1);
    assert_eq!(entries[4]["text"], "b = 2");
    assert_eq!(entries[5]["accepted"], true);
    assert_eq!(board["session"]["state"], "done");
    assert_eq!(board["session"]["steps_done"], 5);
    assert_eq!(board["session"]["final_answer"], "the answer is 4");

    let tree = env.run(&["board", &session]).await;
    assert!(tree.status.success(), "{}", stderr(&tree));
    let tree = stdout(&tree);
    for expected in [
        "problem: What is a + b?",
        "├─ 1. find a",
        "│  └─ partial (solve, step 2): a = 1",
        "├─ 2. find b",
        "critique ACCEPT (critique, step 4): both right",
        "└─ final (synthesize, step 5): the answer is 4",
    ] {
        assert!(tree.contains(expected), "{expected:?} not in\n{tree}");
    }

    let experiences = env.run(&["experiences", "list", "--json"]).await;
    let experiences: Value = serde_json::from_str(&stdout(&experiences)).unwrap();
    assert_eq!(experiences[0]["data"]["strategy"], "blackboard");
    assert_eq!(experiences[0]["data"]["answer"], "the answer is 4");
    let reasoning = experiences[0]["data"]["reasoning"].as_array().unwrap();
    assert_eq!(
        reasoning.len(),
        5,
        "one line per entry between problem and final"
    );

    // The same question on another line: a new session whose every step is a cache hit
    // (from disk: a new process), so nothing is sent.
    let again = LINE.replace("\"b1\"", "\"b2\"");
    env.write_input("again.jsonl", &[again]);
    let out = env
        .run(&["batch", "again.jsonl", "-o", "again.out.jsonl"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(call_sequence(&env).len(), 5);
    let second = &read_jsonl(&env.path("again.out.jsonl"))[0];
    assert_eq!(answer(second), "the answer is 4");
    assert_ne!(
        second["response"]["body"]["board_session"].as_str(),
        Some(session.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revise_verdict_re_solves_the_criticised_part_once() {
    let env = Env::start(SimConfig::default()).await;
    script(&env, "1. find a\n2. find b", |n| match n {
        0 => "REVISE 2\nb is wrong",
        _ => "REVISE 1\nstill unsure",
    });
    let line = run_batch(&env, &[]).await;
    assert_eq!(
        call_sequence(&env),
        [
            "decompose",
            "solve",
            "solve",
            "critique",
            "solve",
            "critique",
            "synthesize"
        ]
    );
    let session = line["response"]["body"]["board_session"].as_str().unwrap();
    let board = board_json(&env, session).await;
    let entries = board["entries"].as_array().unwrap();
    // The revision is a new partial of sub-problem 2 (seq 2), written after the critique.
    assert_eq!(entries[5]["kind"], "critique");
    assert_eq!(entries[5]["parent"], 2);
    assert_eq!(entries[6]["kind"], "partial");
    assert_eq!(entries[6]["parent"], 2);
    assert_eq!(entries[6]["text"], "b = 3");
    assert_eq!(answer(&line), "the answer is 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_limit_ends_with_a_synthesize() {
    let env = Env::start(SimConfig::default()).await;
    script(&env, "1. find a\n2. find b\n3. find c", |_| "ACCEPT");
    let line = run_batch(&env, &[("REASONQ_BLACKBOARD_MAX_STEPS", "3")]).await;
    assert_eq!(call_sequence(&env), ["decompose", "solve", "synthesize"]);
    assert_eq!(answer(&line), "the answer is 4");
    let session = line["response"]["body"]["board_session"].as_str().unwrap();
    let board = board_json(&env, session).await;
    assert_eq!(board["session"]["steps_done"], 3);
    let last = board["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["source"].as_str()),
        (Some("final"), Some("synthesize"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_model_output_is_recorded_and_the_session_still_answers() {
    let env = Env::start(SimConfig::default()).await;
    env.server.set_responder(Arc::new(|body: &Value| {
        let prompt = prompt_of(body);
        Reply::Text(
            match role(&prompt) {
                "decompose" => "I would rather not split this.",
                "solve" => "42",
                "critique" => "{\"verdict\": 7}",
                _ => "",
            }
            .into(),
        )
    }));
    let line = run_batch(&env, &[]).await;
    assert_eq!(
        call_sequence(&env),
        ["decompose", "solve", "critique", "synthesize"]
    );
    assert_eq!(line["response"]["status_code"], 200);
    // The synthesizer said nothing: the best partial is the answer.
    assert_eq!(answer(&line), "42");
    let session = line["response"]["body"]["board_session"].as_str().unwrap();
    let board = board_json(&env, session).await;
    assert_eq!(
        kinds(&board),
        pairs(&[
            ("problem", "controller"),
            ("rejected", "decompose"),
            ("sub_problem", "controller"),
            ("partial", "solve"),
            ("rejected", "critique"),
            ("rejected", "synthesize"),
            ("final", "controller"),
        ])
    );
    let entries = board["entries"].as_array().unwrap();
    assert_eq!(entries[1]["text"], "I would rather not split this.");
    assert_eq!(entries[2]["text"], "What is a + b?");
    let missing = env.run(&["board", "bb-999"]).await;
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("no blackboard session `bb-999`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_is_retried_by_the_queue_and_the_session_resumes_after_it() {
    let env = Env::start(SimConfig::default()).await;
    // The first two solve calls fail with a 503 (the job goes back to the queue each time);
    // everything else answers.
    let solves = Arc::new(AtomicUsize::new(0));
    env.server.set_responder(Arc::new(move |body: &Value| {
        let prompt = prompt_of(body);
        Reply::Text(
            match role(&prompt) {
                "decompose" => "1. find a\n2. find b",
                "solve" if solves.fetch_add(1, Ordering::SeqCst) < 2 => {
                    return Reply::Fault(Fault::status(503))
                }
                "solve" => "solved",
                "critique" => "ACCEPT",
                _ => "the answer is 4",
            }
            .into(),
        )
    }));
    let vars = [
        ("REASONQ_RETRY_MAX_ATTEMPTS", "1"),
        ("REASONQ_QUEUE_BACKOFF_BASE_S", "0"),
    ];
    let line = run_batch(&env, &vars).await;
    assert_eq!(answer(&line), "the answer is 4");
    assert_eq!(
        call_sequence(&env),
        [
            "decompose",
            "solve",
            "solve",
            "solve",
            "solve",
            "critique",
            "synthesize"
        ]
    );
    let session = line["response"]["body"]["board_session"].as_str().unwrap();
    let board = board_json(&env, session).await;
    assert_eq!(board["session"]["steps_done"], 5);
}

/// How the first run is stopped mid-session.
#[derive(Clone, Copy)]
enum Stop {
    Kill,
    Term,
}

/// Starts a session (300 ms per call, no cache so repeats would show), stops the process
/// while the third call is in flight, runs it again to the end and checks that no step
/// answered before the stop was called again.
async fn stop_mid_session_then_resume(stop: Stop) {
    let env = Env::start(SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(300),
            latency_max: Duration::from_millis(300),
            ..RandomFaults::default()
        }),
        ..SimConfig::default()
    })
    .await;
    script(&env, "1. find a\n2. find b\n3. find c", |_| "ACCEPT");
    env.write_input("in.jsonl", &[LINE.to_string()]);
    let args = [
        "batch",
        "in.jsonl",
        "-o",
        "out.jsonl",
        "--cache",
        "never",
        "--drain-timeout",
        "0",
        "--plain",
    ];
    let mut child = env
        .command(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The third call has arrived: decompose and the first solve are committed, the second
    // solve is in flight.
    while call_sequence(&env).len() < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match stop {
        Stop::Kill => child.kill().unwrap(),
        Stop::Term => {
            let pid = child.id().to_string();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap();
            assert!(sent.success());
        }
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the first run finished before the stop");
    let before = prompts(&env);
    assert!(before.len() < 6, "the stop came after the session ended");

    let out = env.run(&args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(answer(&lines[0]), "the answer is 4");
    let calls = env.server.stats().by_prompt;
    // Every step answered before the stop was paid for once; only the one in flight again.
    let (in_flight, completed) = before.split_last().unwrap();
    for prompt in completed {
        assert_eq!(
            calls[prompt], 1,
            "a completed step was called again: {prompt}"
        );
    }
    assert!(calls[in_flight] <= 2);
    assert_eq!(
        call_sequence(&env)
            .iter()
            .filter(|r| **r != "solve")
            .count(),
        3,
        "decompose, critique and synthesize once each"
    );
    let session = lines[0]["response"]["body"]["board_session"]
        .as_str()
        .unwrap();
    let board = board_json(&env, session).await;
    let partials = kinds(&board).iter().filter(|(k, _)| k == "partial").count();
    assert_eq!(partials, 3);
    assert_eq!(board["session"]["steps_done"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_mid_session_it_resumes_without_repeating_a_step() {
    stop_mid_session_then_resume(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_mid_session_it_resumes_without_repeating_a_step() {
    stop_mid_session_then_resume(Stop::Term).await;
}
