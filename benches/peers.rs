//! Peer comparison: the same workload (enqueue 100k jobs, drain them with 8 workers,
//! durable commits) on reasonq, effectum 0.7 (a SQLite job queue from crates.io) as shipped
//! and with its file switched to WAL first, and the rusqlite baseline of `benches/queue.rs`.
//!
//! Each variant runs in a child process (this binary re-executed with `PEER_VARIANT`), so
//! its peak RSS (VmHWM) is its own. `cargo bench --bench peers`; env `JOBS` (default 100k).

#[path = "queue_support/mod.rs"]
mod queue_support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_support::{reasonq_load, sqlite, PAYLOAD};

const VARIANTS: [&str; 4] = ["reasonq", "effectum", "effectum-wal", "sqlite"];
/// effectum jobs added per `add_jobs` call (one transaction), like reasonq's batches.
const BATCH: usize = 1000;

fn jobs() -> u64 {
    std::env::var("JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Runs one variant in this process: (enqueue time, drain time).
fn run_variant(name: &str, dir: &Path, n: u64) -> (Duration, Duration) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    match name {
        "reasonq" => rt.block_on(async {
            let queue = reasonq_load::open(dir, "peers.redb");
            let enqueue = reasonq_load::enqueue_batched(&queue, n, BATCH as u64).await;
            let (drain, done) = reasonq_load::drain(&queue, 8, 64).await;
            assert_eq!(done, n);
            queue.store().close_async().await.unwrap();
            (enqueue, drain)
        }),
        "sqlite" => {
            let path = sqlite::create(dir, "peers.sqlite", sqlite::Sync::Full);
            let enqueue = sqlite::enqueue_batched(&path, sqlite::Sync::Full, n, BATCH as u64);
            let (drain, done) = sqlite::drain(&path, sqlite::Sync::Full, 8, 64);
            assert_eq!(done, n);
            (enqueue, drain)
        }
        _ => rt.block_on(effectum_run(dir, name == "effectum-wal", n)),
    }
}

#[derive(Debug, Clone)]
struct Done(Arc<AtomicU64>);

async fn noop(_job: effectum::RunningJob, done: Done) -> Result<(), effectum::Error> {
    done.0.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn effectum_run(dir: &Path, wal: bool, n: u64) -> (Duration, Duration) {
    let path = dir.join("peers.effectum");
    if wal {
        // effectum issues `PRAGMA journal = wal`, which SQLite ignores (the pragma is
        // `journal_mode`); WAL is persistent, so setting it first makes effectum run in WAL.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    let queue = effectum::Queue::new(&path).await.unwrap();
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH as u64);
        let batch = (0..k)
            .map(|_| {
                effectum::Job::builder("noop")
                    .payload(PAYLOAD.to_vec())
                    .build()
            })
            .collect();
        queue.add_jobs(batch).await.unwrap();
        left -= k;
    }
    let enqueue = started.elapsed();

    let done = Done(Arc::default());
    let runner = effectum::JobRunner::builder("noop", noop).build();
    let started = Instant::now();
    let worker = effectum::Worker::builder(&queue, done.clone())
        .min_concurrency(8)
        .max_concurrency(8)
        .jobs([runner])
        .build()
        .await
        .unwrap();
    // Done when every job has run and no job is pending or running any more (completions
    // are written after the job function returns).
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if done.0.load(Ordering::Relaxed) >= n {
            let active = queue.num_active_jobs().await.unwrap();
            if active.pending + active.running == 0 {
                break;
            }
        }
    }
    let drain = started.elapsed();
    worker.unregister(None).await.unwrap();
    queue.close(Duration::from_secs(5)).await.unwrap();
    (enqueue, drain)
}

struct Figures {
    name: &'static str,
    enqueue: f64,
    drain: f64,
    rss_mib: f64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = jobs();
    if let Ok(name) = std::env::var("PEER_VARIANT") {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (enqueue, drain) = run_variant(&name, dir.path(), n);
        println!(
            "RESULT {} {} {}",
            enqueue.as_secs_f64(),
            drain.as_secs_f64(),
            vm_hwm_kib()
        );
        return;
    }
    let me = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for name in VARIANTS {
        let out = Command::new(&me)
            .env("PEER_VARIANT", name)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with("RESULT ")) else {
            eprintln!("{name} failed: {}", String::from_utf8_lossy(&out.stderr));
            continue;
        };
        let v: Vec<f64> = line[7..].split(' ').map(|x| x.parse().unwrap()).collect();
        rows.push(Figures {
            name,
            enqueue: n as f64 / v[0],
            drain: n as f64 / v[1],
            rss_mib: v[2] / 1024.0,
        });
    }
    let base = rows
        .iter()
        .find(|r| r.name == "reasonq")
        .map(|r| (r.enqueue, r.drain));
    println!("{n} jobs, 8 workers, durable commits; jobs/s (ratio reasonq / variant)");
    println!(
        "{:<14} {:>12} {:>8} {:>12} {:>8} {:>10}",
        "variant", "enqueue/s", "ratio", "drain/s", "ratio", "VmHWM MiB"
    );
    for r in &rows {
        let (e, d) = base.map_or((0.0, 0.0), |(e, d)| (e / r.enqueue, d / r.drain));
        println!(
            "{:<14} {:>12.0} {:>8.2} {:>12.0} {:>8.2} {:>10.1}",
            r.name, r.enqueue, e, r.drain, d, r.rss_mib
        );
    }
}
