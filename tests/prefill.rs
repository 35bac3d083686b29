//! Lines the disk cache answers already are completed as they are enqueued: no lease, no
//! call, the same output, result records, experiences and totals as a live cache hit.

mod support;

use reasonq::sim::SimConfig;
use serde_json::Value;
use support::{questions, read_jsonl, stderr, stdout, Env};

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap()
}

/// How many lines the enqueue pass answered from the cache (its `--log info` line).
fn prefilled(out: &std::process::Output) -> u64 {
    let text = stderr(out);
    let at = text
        .find("prefilled=")
        .expect("an enqueue line with prefilled=");
    let digits: String = text[at + "prefilled=".len()..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// `in.jsonl` as batch `name` into `name.jsonl`, logging at info; it must succeed.
async fn batch_logged(env: &Env, name: &str) -> std::process::Output {
    let out_file = format!("{name}.jsonl");
    let args = [
        "--log", "info", "batch", "in.jsonl", "--batch", name, "-o", &out_file,
    ];
    let out = env.run(&args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_answered_prompts_is_answered_at_enqueue_without_a_call() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input("in.jsonl", &questions(30));
    let first = env
        .run(&["batch", "in.jsonl", "--batch", "first", "-o", "first.jsonl"])
        .await;
    assert!(first.status.success(), "{}", stderr(&first));
    let asked = env.server.stats().live_chats;
    assert!(asked >= 30, "the first run asked the server: {asked}");

    let replay = batch_logged(&env, "replay").await;
    assert_eq!(prefilled(&replay), 30, "{}", stderr(&replay));
    assert_eq!(
        env.server.stats().live_chats,
        asked,
        "no chat request was sent"
    );
    assert!(
        stderr(&replay).contains("30 of 30 requests answered (30 from cache this run)"),
        "{}",
        stderr(&replay)
    );

    // The same lines, in order, with the same answers.
    let (a, b) = (
        read_jsonl(&env.path("first.jsonl")),
        read_jsonl(&env.path("replay.jsonl")),
    );
    assert_eq!(a.len(), 30);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["custom_id"], y["custom_id"]);
        assert_eq!(x["response"]["body"], y["response"]["body"]);
    }

    // Completed with one attempt, its result from the disk tier at no cost, and the batch's
    // totals and experiences as a live cache hit leaves them.
    let status = json(&env.run(&["status", "--json"]).await);
    let replayed = status
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["batch"] == "replay")
        .unwrap_or_else(|| panic!("no replay batch in {status}"))
        .clone();
    assert_eq!(replayed["states"]["completed"], 30, "{replayed}");
    assert_eq!(replayed["cached"], 30, "{replayed}");
    let jobs = json(
        &env.run(&[
            "jobs", "list", "--batch", "replay", "--json", "--limit", "100",
        ])
        .await,
    );
    let jobs = jobs.as_array().expect("a list of jobs");
    assert_eq!(jobs.len(), 30);
    for job in jobs {
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["attempt"], 1, "{job}");
        assert!(job["lease_owner"].is_null(), "never leased: {job}");
        assert_eq!(job["response"]["cached"], true, "{job}");
        assert_eq!(job["response"]["cache_tier"], "disk", "{job}");
    }
    let exps = json(
        &env.run(&["experiences", "list", "--json", "--limit", "100"])
            .await,
    );
    assert_eq!(
        exps.as_array().map(Vec::len),
        Some(60),
        "one per answer, as live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_whose_request_is_not_known_before_they_run_go_the_usual_way() {
    let env = Env::start(SimConfig::default()).await;
    let line = |id: &str, extra: &str| {
        format!(r#"{{"id":"{id}","question":"question {id}","params":{{"temperature":0}}{extra}}}"#)
    };
    // Memory in the prompt changes it as the batch runs; a line sampled at a temperature is
    // not cached at all.
    let lines = [
        line("plain", ""),
        line("remembers", r#","memory":true"#),
        r#"{"id":"warm","question":"question warm","params":{"temperature":0.7}}"#.to_string(),
    ];
    env.write_input("in.jsonl", &lines);
    let out = env
        .run(&["batch", "in.jsonl", "--batch", "one", "-o", "one.jsonl"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = batch_logged(&env, "two").await;
    assert_eq!(prefilled(&out), 1, "only the plain line: {}", stderr(&out));
    let two = read_jsonl(&env.path("two.jsonl"));
    assert_eq!(two.len(), 3);
    assert!(two.iter().all(|l| l["error"].is_null()), "{two:?}");
}
