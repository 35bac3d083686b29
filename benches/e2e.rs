//! End to end: 10k prompts through the real `reasonq batch` binary against a fast loopback
//! server, side by side in the same run with the bare pooled client sending the same 10k
//! requests and nothing else (no queue, cache, store or output). Also: the same batch with
//! 500 ms of server latency at concurrency 64, whose ideal is 64 / 0.5 s = 128 jobs/s.
//!
//! The binary prints its peak RSS; those figures go to stderr as `e2e:` lines. With
//! `E2E_BASE_URL` set (benches/nginx.sh does), the 10k runs go to that server instead of the
//! in-process one.

#[path = "bare_pool/mod.rs"]
mod bare_pool;

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use reasonq::sim::{RandomFaults, SimConfig, SimServer};
use tokio::runtime::Runtime;

const PROMPTS: usize = 10_000;
const CONCURRENCY: usize = 64;

fn prompt(i: usize) -> String {
    format!("Question {i}: what is {i} + {i}? Answer briefly.")
}

fn write_input(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("in.jsonl");
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"q{i}\",\"question\":\"{}\",\"params\":{{\"temperature\":0}}}}\n",
                prompt(i)
            )
        })
        .collect();
    std::fs::write(&path, text).expect("input");
    path
}

/// Runs the binary on a fresh database; returns wall time and the peak RSS it reported.
fn run_batch(dir: &std::path::Path, base_url: &str, round: usize) -> (Duration, Option<f64>) {
    let db = dir.join(format!("db-{round}.redb"));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_reasonq"))
        .current_dir(dir)
        .args([
            "--db",
            db.to_str().unwrap_or("db.redb"),
            "--base-url",
            base_url,
        ])
        .args(["batch", "in.jsonl", "-o", "out.jsonl", "--plain"])
        .args(["--concurrency", &CONCURRENCY.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run reasonq");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let _ = std::fs::remove_file(&db);
    let rss = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS: "))
        .and_then(|v| v.trim_end_matches(" MB").parse().ok());
    (elapsed, rss)
}

fn e2e(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    write_input(dir.path(), PROMPTS);
    let fast = rt
        .block_on(SimServer::start(SimConfig {
            fast: true,
            record_requests: false,
            ..SimConfig::default()
        }))
        .expect("server");
    // An external server (nginx, see benches/nginx.sh) takes the server's cost off our cores.
    let base = std::env::var("E2E_BASE_URL").unwrap_or_else(|_| fast.base_url());
    let url = format!("{base}/chat/completions");
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());

    let mut group = c.benchmark_group("e2e_10k_prompts");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(PROMPTS as u64));
    let mut round = 0;
    let mut peaks = Vec::new();
    group.bench_function("reasonq_batch", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let (t, rss) = run_batch(dir.path(), &base, round);
                total += t;
                peaks.extend(rss);
            }
            total
        })
    });
    group.bench_function("bare_pool", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(bare_pool::bare(&client, &url, PROMPTS, CONCURRENCY, prompt));
            }
            total
        })
    });
    group.finish();
    if let Some(max) = peaks.iter().copied().reduce(f64::max) {
        eprintln!("e2e: reasonq batch of {PROMPTS} prompts: peak RSS up to {max:.1} MB");
    }

    // Idle footprint: a one-prompt batch.
    let small = tempfile::tempdir().expect("tempdir");
    write_input(small.path(), 1);
    let (_, rss) = run_batch(small.path(), &base, 0);
    if let Some(rss) = rss {
        eprintln!("e2e: one-prompt batch (idle footprint): peak RSS {rss:.1} MB");
    }

    // 500 ms of latency at concurrency 64: the ideal is 128 jobs/s.
    let slow = rt
        .block_on(SimServer::start(SimConfig {
            random: Some(RandomFaults {
                latency_min: Duration::from_millis(500),
                latency_max: Duration::from_millis(500),
                ..RandomFaults::default()
            }),
            record_requests: false,
            ..SimConfig::default()
        }))
        .expect("server");
    let slow_dir = tempfile::tempdir().expect("tempdir");
    let n = 640;
    write_input(slow_dir.path(), n);
    let (t, _) = run_batch(slow_dir.path(), &slow.base_url(), 1);
    let rate = n as f64 / t.as_secs_f64();
    eprintln!(
        "e2e: {n} prompts at 500 ms latency, concurrency {CONCURRENCY}: {rate:.1} jobs/s = {:.0}% of the ideal 128/s",
        rate / 128.0 * 100.0
    );
}

criterion_group!(benches, e2e);
criterion_main!(benches);
