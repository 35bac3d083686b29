//! A batch larger than one provider batch: split by the protocol's limit, each part followed
//! and collected on its own, the output in input order with every line submitted once.

mod support;

use std::time::{Duration, Instant};

use reasonq::sim::{BatchConfig, BatchMode, SimConfig};
use support::{questions, read_jsonl, stderr, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_120k_lines_is_split_into_provider_batches_and_merged_in_order() {
    let env = Env::start(SimConfig {
        batch: BatchConfig {
            mode: BatchMode::Auto {
                step: Duration::from_millis(50),
            },
            ..BatchConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    let n = 120_000;
    env.write_input("in.jsonl", &questions(n));
    let started = Instant::now();
    let mut cmd = env.command(&["batch", "in.jsonl", "--via", "provider", "--plain"]);
    cmd.envs([
        ("REASONQ_PROVIDER_BATCH_POLL_MIN_MS", "50"),
        ("REASONQ_PROVIDER_BATCH_POLL_MAX_S", "1"),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    eprintln!(
        "120k lines through the provider batch API in {:?}",
        started.elapsed()
    );

    let control = env.server.batches();
    let batches = control.list();
    // OpenAI's 50,000 requests per batch: 50k + 50k + 20k.
    let sizes: Vec<usize> = batches.iter().map(|b| b.total).collect();
    assert_eq!(sizes, [50_000, 50_000, 20_000]);
    assert_eq!(control.max_submissions(), 1);
    assert_eq!(env.server.stats().live_chats, 0);

    let output = read_jsonl(&env.path("in.out.jsonl"));
    assert_eq!(output.len(), n);
    for (i, line) in output.iter().enumerate() {
        assert_eq!(line["custom_id"], format!("q{i:04}"), "line {i}");
        assert!(line["error"].is_null(), "line {i}: {line}");
    }
}
