//! Crash soak with figures: 100 SIGKILLs at random moments of the real `reasonq` binary,
//! across batch work (some lines `"strategy":"blackboard"`) and `reasonq cleanup`, each
//! followed by a restart. The simulated API runs in this process and counts calls per
//! prompt, so repeated upstream calls are counted on the server side.
//!
//! Prints: jobs lost, results duplicated, upstream calls repeated for completed jobs (all
//! must be 0), and time to resume (restart to the first upstream request). Bounded: `KILLS`
//! (default 100) kills of at most ~1 s each, then one clean run per batch.
//!
//! `cargo bench --bench crash_soak` (builds the release binary); env `KILLS`, `PROMPTS`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use reasonq::chat::question_of;
use reasonq::chat::ChatJob;
use reasonq::codec;
use reasonq::queue::{list_read, JobState};
use reasonq::sim::{RandomFaults, SimConfig, SimServer};
use reasonq::store::{Store, StoreConfig};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Soak {
    dir: tempfile::TempDir,
    server: SimServer,
    /// Calls seen for a prompt when its job was first seen completed.
    frozen: HashMap<String, u64>,
    repeated_calls: u64,
}

impl Soak {
    fn db(&self) -> PathBuf {
        self.dir.path().join("soak.redb")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reasonq"));
        cmd.current_dir(self.dir.path())
            .arg("--db")
            .arg(self.db())
            .arg("--base-url")
            .arg(self.server.base_url())
            .args(args)
            .env("REASONQ_QUEUE_BACKOFF_BASE_S", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("REASONQ_") || key.ends_with("_API_KEY") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Writes batch `round`'s input: `n` prompts, every fifth a blackboard line.
    fn write_round(&self, round: usize, n: usize) -> PathBuf {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let strategy = if i % 5 == 0 {
                    r#","strategy":"blackboard""#
                } else {
                    ""
                };
                format!(
                    r#"{{"id":"r{round}-{i:04}","question":"round {round} question {i}.","params":{{"temperature":0}}{strategy}}}"#
                )
            })
            .collect();
        let path = self.dir.path().join(format!("round{round}.jsonl"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    /// Completed jobs right now (the process is dead, so the file opens): checks that no
    /// completed prompt was called again, and returns (completed per batch, prompts).
    fn check(&mut self) -> HashMap<String, usize> {
        let mut per_batch = HashMap::new();
        if !self.db().exists() {
            return per_batch;
        }
        let store = Store::open(StoreConfig::new(self.db())).unwrap();
        let jobs = store
            .read_blocking(|txn| list_read(txn, None, Some(JobState::Completed), usize::MAX))
            .unwrap();
        store.close().unwrap();
        let calls = self.server.stats().by_prompt;
        for job in jobs {
            *per_batch.entry(job.queue.clone()).or_default() += 1;
            let chat: ChatJob = codec::decode(&job.payload).unwrap();
            let prompt = question_of(&chat.body);
            // Every upstream call made for this job: its question, or a blackboard step
            // prompt that quotes it (questions end with "." so "question 1." is not in
            // "question 10.").
            let now: u64 = calls
                .iter()
                .filter(|(p, _)| p.contains(&prompt))
                .map(|(_, n)| n)
                .sum();
            let first = *self.frozen.entry(prompt).or_insert(now);
            if now != first {
                self.repeated_calls += now - first;
            }
        }
        per_batch
    }
}

fn kill(mut child: Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// Time from spawn until the server sees a new request, or `None` if none within `limit`.
async fn time_to_resume(server: &SimServer, started: Instant, before: u64) -> Option<Duration> {
    while started.elapsed() < Duration::from_secs(5) {
        if server.stats().requests > before {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` / `cargo bench -- --list`
    }
    let kills = env_usize("KILLS", 100);
    let prompts = env_usize("PROMPTS", 400);
    let server = SimServer::start(SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(5),
            latency_max: Duration::from_millis(80),
            p_rate_limit: 0.02,
            retry_after_ms: 50,
            p_server_error: 0.01,
            ..RandomFaults::default()
        }),
        record_requests: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut soak = Soak {
        dir: tempfile::tempdir().unwrap(),
        server,
        frozen: HashMap::new(),
        repeated_calls: 0,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let started = Instant::now();
    let mut round = 0;
    let mut input = soak.write_round(round, prompts);
    let mut rounds: Vec<(String, PathBuf)> = vec![(format!("r{round}"), input.clone())];
    let (mut batch_kills, mut cleanup_kills, mut mid_batch) = (0, 0, 0);
    let mut resumes: Vec<Duration> = Vec::new();

    for _ in 0..kills {
        let name = format!("r{round}");
        if rng.random_bool(0.2) {
            // Cleanup (pruning, retention, compaction) killed at a random moment.
            let child = soak.command(&["cleanup"]).spawn().unwrap();
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            kill(child);
            cleanup_kills += 1;
        } else {
            let out = format!("{name}.out.jsonl");
            let before = soak.server.stats().requests;
            let spawned = Instant::now();
            let child = soak
                .command(&[
                    "batch",
                    input.to_str().unwrap(),
                    "--batch",
                    &name,
                    "-o",
                    &out,
                    "--concurrency",
                    "16",
                    "--plain",
                ])
                .spawn()
                .unwrap();
            let wait = Duration::from_millis(rng.random_range(30..900));
            if let Some(t) = time_to_resume(&soak.server, spawned, before).await {
                if t < wait {
                    resumes.push(t);
                }
            }
            tokio::time::sleep(wait.saturating_sub(spawned.elapsed())).await;
            kill(child);
            batch_kills += 1;
        }
        let done = soak.check().get(&name).copied().unwrap_or(0);
        if done > 0 && done < prompts {
            mid_batch += 1;
        }
        if done == prompts {
            // This batch is finished: crash the next one.
            round += 1;
            input = soak.write_round(round, prompts);
            rounds.push((format!("r{round}"), input.clone()));
        }
    }

    // One clean run per batch to finish what is left, then the figures.
    for (name, input) in &rounds {
        let out = format!("{name}.out.jsonl");
        let status = soak
            .command(&[
                "batch",
                input.to_str().unwrap(),
                "--batch",
                name,
                "-o",
                &out,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "final run of {name}");
    }
    soak.check();
    let (mut lost, mut duplicated, mut blackboard) = (0, 0, 0);
    for (name, _) in &rounds {
        let path = soak.dir.path().join(format!("{name}.out.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut seen = HashSet::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["custom_id"].as_str().unwrap_or_default().to_string();
            let i: usize = id.rsplit('-').next().unwrap().parse().unwrap();
            if !seen.insert(id.clone()) {
                duplicated += 1;
            } else if v["error"].is_null() {
                blackboard += usize::from(i % 5 == 0);
            }
        }
        lost += prompts - seen.len();
    }
    let store = Store::open(StoreConfig::new(soak.db())).unwrap();
    let jobs = store
        .read_blocking(|txn| list_read(txn, None, None, usize::MAX))
        .unwrap();
    store.close().unwrap();
    let keys: HashSet<_> = jobs.iter().map(|j| (&j.queue, &j.dedup_key)).collect();
    duplicated += jobs.len() - keys.len();
    let not_completed = jobs
        .iter()
        .filter(|j| j.state != JobState::Completed)
        .count();
    lost += rounds.len() * prompts - jobs.len() + not_completed;
    resumes.sort();

    println!(
        "crash soak: {kills} SIGKILLs in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!("  batch kills {batch_kills} ({mid_batch} mid-batch), cleanup kills {cleanup_kills}");
    println!(
        "  batches {} x {prompts} prompts ({} blackboard lines answered without error), upstream requests {}",
        rounds.len(),
        blackboard,
        soak.server.stats().requests
    );
    println!("  jobs lost: {lost}");
    println!("  results duplicated: {duplicated}");
    println!(
        "  upstream calls repeated for completed jobs: {}",
        soak.repeated_calls
    );
    println!(
        "  time to resume (restart to first upstream request, n={}): median {:?}, p95 {:?}, max {:?}",
        resumes.len(),
        percentile(&resumes, 0.5),
        percentile(&resumes, 0.95),
        resumes.last().copied().unwrap_or_default()
    );
    assert_eq!((lost, duplicated, soak.repeated_calls), (0, 0, 0));
}
