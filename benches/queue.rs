//! Job queue throughput: reasonq against the SQLite design it replaces and against the
//! disk's physical ceiling, all in one run. `cargo bench --bench queue`; figures and their
//! reading are in docs/benchmarks.md ("Job queue"). Peak RSS is measured separately by
//! `cargo bench --bench queue_rss`.
//!
//! Every workload uses `iter_custom` with a fixed job count, so setup (building backlogs)
//! is not timed and criterion's throughput line reads directly as jobs/s.

#[path = "queue_support/mod.rs"]
mod queue_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use queue_support::{physical, reasonq_load, sqlite, sqlite::Sync};
use reasonq::queue::{Queue, QueueConfig};
use reasonq::store::{Store, StoreConfig};

const WORKERS: usize = 8;
const PER_LEASE: usize = 64;
const SQLITES: [(&str, Sync); 2] = [("sqlite_full", Sync::Full), ("sqlite_normal", Sync::Normal)];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs `run` (which times its own work) `iters` times and sums the times.
fn timed(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

/// Runs `work` on a new, empty queue file and closes it.
fn on_fresh_queue(dir: &Path, work: impl FnOnce(&Queue) -> Duration) -> Duration {
    let queue = reasonq_load::open(dir, "fresh.redb");
    let t = work(&queue);
    queue.store().close().unwrap();
    t
}

fn quick(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, jobs: u64) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(jobs));
}

fn physical_ceiling(c: &mut Criterion) {
    let dir = scratch();
    let n = 200;
    let mut group = c.benchmark_group("queue/physical");
    quick(&mut group, n);
    group.bench_function("fsync_64b", |b| {
        b.iter_custom(|iters| timed(iters, || physical::fsync_loop(dir.path(), n)))
    });
    group.bench_function("redb_empty_commit", |b| {
        b.iter_custom(|iters| timed(iters, || physical::redb_empty_commits(dir.path(), n)))
    });
    group.finish();
}

fn enqueue_single(c: &mut Criterion) {
    let rt = runtime();
    let dir = scratch();
    let tasks = 16;
    let mut group = c.benchmark_group("queue/enqueue_single_16_tasks");
    let n = 10_000;
    quick(&mut group, n);
    group.bench_function("reasonq", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                on_fresh_queue(dir.path(), |q| {
                    rt.block_on(reasonq_load::enqueue_single(q, n, tasks))
                })
            })
        })
    });
    for (name, sync) in SQLITES {
        // One fsync per job under FULL: fewer jobs keep the run short; the rate is the same.
        let n = if matches!(sync, Sync::Full) { 1_000 } else { n };
        group.throughput(Throughput::Elements(n));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    let path = sqlite::create(dir.path(), "single.db", sync);
                    sqlite::enqueue_single(&path, sync, n, tasks)
                })
            })
        });
    }
    group.finish();
}

fn enqueue_batched(c: &mut Criterion) {
    let rt = runtime();
    let dir = scratch();
    let n = 10_000;
    let mut group = c.benchmark_group("queue/enqueue_batched_10k");
    quick(&mut group, n);
    for batch in [100u64, 1_000, 10_000] {
        group.bench_function(format!("reasonq/batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    on_fresh_queue(dir.path(), |q| {
                        rt.block_on(reasonq_load::enqueue_batched(q, n, batch))
                    })
                })
            })
        });
        for (name, sync) in SQLITES {
            group.bench_function(format!("{name}/batch_{batch}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, || {
                        let path = sqlite::create(dir.path(), "batch.db", sync);
                        sqlite::enqueue_batched(&path, sync, n, batch)
                    })
                })
            });
        }
    }
    group.finish();
}

/// A reasonq file holding `n` available jobs, built once and copied for every run.
fn reasonq_backlog(rt: &tokio::runtime::Runtime, dir: &Path, n: u64) -> PathBuf {
    let queue = reasonq_load::open(dir, &format!("backlog_{n}.redb"));
    rt.block_on(reasonq_load::enqueue_batched(&queue, n, 10_000));
    let path = queue.store().path().to_path_buf();
    queue.store().close().unwrap();
    path
}

fn sqlite_backlog(dir: &Path, n: u64, sync: Sync) -> PathBuf {
    let path = sqlite::create(dir, &format!("backlog_{n}.db"), sync);
    sqlite::enqueue_batched(&path, sync, n, 10_000);
    sqlite::connect(&path, sync)
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    path
}

fn copy_of(template: &Path, name: &str) -> PathBuf {
    let path = template.with_file_name(name);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::copy(template, &path).unwrap();
    path
}

/// Lease + complete a backlog with 8 workers at immediate durability (`burn-down`).
fn burn_down(c: &mut Criterion) {
    let rt = runtime();
    let dir = scratch();
    let mut group = c.benchmark_group("queue/burn_down_8_workers");
    for n in [1_000u64, 10_000, 100_000] {
        quick(&mut group, n);
        let template = reasonq_backlog(&rt, dir.path(), n);
        let per_leases: &[usize] = if n == 10_000 {
            &[8, PER_LEASE]
        } else {
            &[PER_LEASE]
        };
        for &per_lease in per_leases {
            group.bench_function(format!("reasonq/{n}/lease_{per_lease}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, || {
                        let path = copy_of(&template, "work.redb");
                        let store = Store::open(StoreConfig::new(path)).unwrap();
                        let queue = Queue::new(store, QueueConfig::default());
                        let (t, done) =
                            rt.block_on(reasonq_load::drain(&queue, WORKERS, per_lease));
                        assert_eq!(done, n);
                        queue.store().close().unwrap();
                        t
                    })
                })
            });
        }
        if n == 1_000 {
            continue;
        }
        for (name, sync) in SQLITES {
            let template = sqlite_backlog(dir.path(), n, sync);
            group.bench_function(format!("{name}/{n}/lease_{PER_LEASE}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, || {
                        let path = copy_of(&template, "work.db");
                        let (t, done) = sqlite::drain(&path, sync, WORKERS, PER_LEASE);
                        assert_eq!(done, n);
                        t
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    physical_ceiling,
    enqueue_single,
    enqueue_batched,
    burn_down
);
criterion_main!(benches);
