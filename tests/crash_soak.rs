//! Crash soak (bounded): a 500-prompt batch is SIGKILLed at random moments 20 times and
//! restarted each time. At the end the output has exactly one right answer per id, and the
//! server never saw a second call for a request whose job had already completed.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use reasonq::queue::{list_read, JobState};
use reasonq::sim::{RandomFaults, SimConfig};
use reasonq::store::{Store, StoreConfig};
use support::{answer, questions, read_jsonl, stderr, Env};

const PROMPTS: usize = 500;
const KILLS: usize = 20;

/// Prompts whose jobs are completed in the database right now (the process is dead, so the
/// file can be opened).
fn completed_prompts(env: &Env) -> Vec<String> {
    if !env.db().exists() {
        return Vec::new();
    }
    let store = Store::open(StoreConfig::new(env.db())).unwrap();
    let jobs = store
        .read_blocking(|txn| list_read(txn, None, Some(JobState::Completed), usize::MAX))
        .unwrap();
    store.close().unwrap();
    jobs.iter()
        .map(|job| {
            let chat: reasonq::chat::ChatJob = reasonq::codec::decode(&job.payload).unwrap();
            let body: serde_json::Value = serde_json::from_str(&chat.body).unwrap();
            body["messages"][0]["content"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkill_loses_nothing_and_pays_nothing_twice() {
    let env = Env::start(SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(5),
            latency_max: Duration::from_millis(60),
            ..RandomFaults::default()
        }),
        record_requests: false,
        ..SimConfig::default()
    })
    .await;
    env.write_input("in.jsonl", &questions(PROMPTS));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Calls seen for a prompt when its job was first found completed: must never grow.
    let mut frozen: HashMap<String, u64> = HashMap::new();
    let mut check = |env: &Env| -> usize {
        let calls = env.server.stats().by_prompt;
        let completed = completed_prompts(env);
        let n = completed.len();
        for prompt in completed {
            let now = calls.get(&prompt).copied().unwrap_or(0);
            let first = *frozen.entry(prompt.clone()).or_insert(now);
            assert_eq!(
                now, first,
                "{prompt:?} was called again after its job completed"
            );
        }
        n
    };
    // Kills that landed mid-batch (some but not all jobs done): the soak must really crash it.
    let mut mid_batch = 0;
    for _ in 0..KILLS {
        let mut child = env
            .command(&[
                "batch",
                "in.jsonl",
                "-o",
                "out.jsonl",
                "--concurrency",
                "4",
                "--plain",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        let _ = child.kill(); // SIGKILL
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        let done = check(&env);
        if done > 0 && done < PROMPTS {
            mid_batch += 1;
        }
    }
    eprintln!("{mid_batch} of {KILLS} kills landed mid-batch");
    assert!(mid_batch >= 5, "only {mid_batch} kills landed mid-batch");
    let out = env.run(&["batch", "in.jsonl", "-o", "out.jsonl"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    check(&env);

    let lines = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(lines.len(), PROMPTS);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["custom_id"], format!("q{i:04}"));
        assert!(
            answer(line).contains(&format!("question number {i}")),
            "{line}"
        );
    }
    assert_eq!(frozen.len(), PROMPTS);
}
