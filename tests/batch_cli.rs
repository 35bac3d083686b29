//! The batch command end to end: the real binary against a simulated API on loopback.

mod support;

use std::time::{Duration, Instant};

use reasonq::sim::{RandomFaults, SimConfig};
use support::{answer, questions, read_jsonl, stderr, Env};

fn with_latency(ms: u64) -> SimConfig {
    SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(ms / 2),
            latency_max: Duration::from_millis(ms),
            ..RandomFaults::default()
        }),
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_batch_answers_every_line_in_input_order_and_reruns_for_free() {
    let env = Env::start(SimConfig::default()).await;
    let input = env.path("questions.jsonl");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/questions.jsonl");
    std::fs::copy(example, &input).unwrap();
    let out = env
        .run(&["batch", "questions.jsonl", "-o", "answers.jsonl"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));

    let lines = read_jsonl(&env.path("answers.jsonl"));
    assert_eq!(lines.len(), 50);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["custom_id"], format!("q{:02}", i + 1));
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "custom_id", "response", "error"]);
        assert_eq!(line["response"]["status_code"], 200);
        assert!(line["error"].is_null());
        assert!(answer(line).starts_with("[simulated]"), "{line}");
    }
    let q3 = std::fs::read_to_string(&input).unwrap();
    let q3: serde_json::Value = serde_json::from_str(q3.lines().nth(2).unwrap()).unwrap();
    assert!(answer(&lines[2]).contains(q3["question"].as_str().unwrap()));
    let chat_calls = |env: &Env| env.server.stats().by_prompt.values().sum::<u64>();
    let calls = chat_calls(&env);
    assert!(calls >= 50, "{calls} calls for 50 lines");

    // The same file again: nothing new is enqueued and nothing is sent.
    let again = env
        .run(&["batch", "questions.jsonl", "-o", "answers2.jsonl"])
        .await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("0 new"), "{}", stderr(&again));
    assert_eq!(chat_calls(&env), calls);
    assert_eq!(read_jsonl(&env.path("answers2.jsonl")), lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_refused_with_line_and_field_and_nothing_is_enqueued() {
    let env = Env::start(SimConfig::default()).await;
    let lines: Vec<String> = vec![
        r#"{"id":"ok","question":"fine"}"#.into(),
        r#"{"custom_id":"a","method":"POST","url":"/v1/images/generations","body":{"messages":[]}}"#.into(),
        "{not json".into(),
        r#"{"id":"ok","question":"duplicate"}"#.into(),
        r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions"}"#.into(),
        r#"{"id":"c"}"#.into(),
    ];
    env.write_input("in.jsonl", &lines);
    let out = env.run(&["batch", "in.jsonl"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for expected in [
        "in.jsonl:2: field `url`: unsupported endpoint \"/v1/images/generations\"",
        "in.jsonl:3: malformed JSON",
        "in.jsonl:4: field `id`: duplicate id \"ok\" (first used on line 1)",
        "in.jsonl:5: field `body`: missing",
        "in.jsonl:6: field `question`: missing",
        "5 invalid line(s); nothing was enqueued",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert_eq!(env.server.stats().requests, 0);
    let status = env.run(&["status", "--json"]).await;
    assert_eq!(support::stdout(&status).trim(), "[]");

    // With --skip-invalid exactly the bad lines go to the errors file.
    let out = env
        .run(&[
            "batch",
            "in.jsonl",
            "--skip-invalid",
            "-o",
            "out.jsonl",
            "--errors",
            "err.jsonl",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_jsonl(&env.path("out.jsonl")).len(), 1);
    let errors = read_jsonl(&env.path("err.jsonl"));
    let ids: Vec<&str> = errors
        .iter()
        .map(|e| e["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["line-2", "line-3", "line-4", "line-5", "line-6"]);
    assert!(errors
        .iter()
        .all(|e| e["error"]["code"] == "invalid_request"));
}

/// Runs `reasonq ARGS` in `env`, sends SIGTERM after 1.5 s, and returns its output and when
/// the signal went.
async fn terminated(env: &Env, args: &[&str]) -> (std::process::Output, Instant) {
    terminated_after(env, args, 0).await
}

/// [`terminated`] once the server has seen `requests` requests (at least 1.5 s after start),
/// so a loaded machine cannot signal before the calls the test counts are in flight.
async fn terminated_after(
    env: &Env,
    args: &[&str],
    requests: u64,
) -> (std::process::Output, Instant) {
    let child = env
        .command(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.server.stats().requests < requests && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    (out, signalled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_returns_unfinished_jobs_and_the_next_run_finishes() {
    let env = Env::start(with_latency(400)).await;
    env.write_input("in.jsonl", &questions(120));
    let args = ["batch", "in.jsonl", "-o", "out.jsonl", "--concurrency", "8"];
    let (out, signalled) = terminated(&env, &[&args[..], &["--drain-timeout", "5"]].concat()).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(5 + 5),
        "drain took {:?}",
        signalled.elapsed()
    );
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("returned to the queue"),
        "{}",
        stderr(&out)
    );
    let partial = read_jsonl(&env.path("out.jsonl"));
    assert!(partial.len() < 120, "the batch was not interrupted");

    let out = env.run(&["batch", "in.jsonl", "-o", "out.jsonl"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(lines.len(), 120);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["custom_id"], format!("q{i:04}"));
        assert!(answer(line).contains(&format!("question number {i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_batch_with_known_prompts_is_answered_from_the_disk_cache() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input("a.jsonl", &questions(20));
    let out = env.run(&["batch", "a.jsonl"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.server.stats().by_prompt.values().sum::<u64>(), 20);

    // Another file (another batch, another process) with the same deterministic prompts.
    env.write_input("b.jsonl", &questions(20));
    let out = env.run(&["batch", "b.jsonl"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(20 from cache this run)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.server.stats().by_prompt.values().sum::<u64>(), 20);
    let lines = read_jsonl(&env.path("b.out.jsonl"));
    assert_eq!(lines.len(), 20);
    assert!(answer(&lines[7]).contains("question number 7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_model_fails_before_anything_is_enqueued_or_sent() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input(
        "in.jsonl",
        &[
            r#"{"id":"a","question":"q1","model":"grok-4"}"#.to_string(),
            r#"{"id":"b","question":"q2","model":"grok4"}"#.to_string(),
        ],
    );
    let out = env.run(&["batch", "in.jsonl"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("model check failed") && err.contains("grok4"),
        "{err}"
    );
    assert!(err.contains("grok-4"), "no suggestion in: {err}");
    assert_eq!(env.server.stats().by_prompt.values().sum::<u64>(), 0);
    let status = env.run(&["status", "--json"]).await;
    assert_eq!(support::stdout(&status).trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_or_errors_file_that_is_the_input_is_refused_before_anything_runs() {
    let env = Env::start(SimConfig::default()).await;
    let input = env.write_input("in.jsonl", &questions(3));
    let before = std::fs::read(&input).unwrap();
    for args in [
        vec!["batch", "in.jsonl", "-o", "in.jsonl"],
        vec!["batch", "in.jsonl", "-o", "./in.jsonl"],
        vec!["batch", "in.jsonl", "--errors", "in.jsonl"],
        vec![
            "batch",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--errors",
            "out.jsonl",
        ],
    ] {
        let out = env.run(&args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("name another one"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input is untouched"
    );
    assert!(!env.db().exists(), "no database was created");
    assert_eq!(env.server.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_by_a_short_drain_are_counted_in_the_summary() {
    let env = Env::start(with_latency(4_000)).await;
    env.write_input("in.jsonl", &questions(6));
    let args = [
        "batch",
        "in.jsonl",
        "--concurrency",
        "3",
        "--drain-timeout",
        "0",
    ];
    let (out, _) = terminated_after(&env, &args, 3).await;
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    // The three calls in flight at the signal: every call sent and not answered (none was
    // answered: it takes 4 s), and no waiting job started one while the others were aborted.
    let text = stderr(&out);
    let abandoned: u64 = text
        .lines()
        .find_map(|l| {
            l.split(" calls were abandoned in flight and may be billed")
                .next()
                .filter(|_| l.contains("abandoned"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no abandoned-call count in: {text}"));
    assert_eq!(abandoned, 3, "{text}");
    let chat_calls: u64 = env.server.stats().by_prompt.values().sum();
    assert_eq!(chat_calls, 3, "{text}");
}
