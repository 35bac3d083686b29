//! The design reasonq replaces: the same job schema and operations on SQLite (WAL), one
//! connection per thread, leases as one `UPDATE ... RETURNING` transaction.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, TransactionBehavior};

use super::{LEASE_SECS, PAYLOAD};

/// `synchronous` setting: FULL matches immediate durability; NORMAL skips the fsync per
/// commit in WAL mode.
#[derive(Debug, Clone, Copy)]
pub enum Sync {
    Full,
    Normal,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL, kind TEXT NOT NULL, payload BLOB NOT NULL,
    priority INTEGER NOT NULL, run_at INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    state TEXT NOT NULL,
    lease_expires_at INTEGER, lease_owner TEXT, lease_token INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, dedup_key TEXT,
    created_at INTEGER NOT NULL, finished_at INTEGER, result BLOB
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (state, finished_at)
    WHERE state IN ('completed', 'discarded', 'cancelled');
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedup ON jobs (queue, dedup_key)
    WHERE dedup_key IS NOT NULL;
";

/// A fresh database in `dir`.
pub fn create(dir: &Path, name: &str, sync: Sync) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    connect(&path, sync).execute_batch(SCHEMA).unwrap();
    path
}

pub fn connect(path: &Path, sync: Sync) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    let sync = match sync {
        Sync::Full => "FULL",
        Sync::Normal => "NORMAL",
    };
    // `journal_mode` returns a row, which rusqlite 0.31's `execute_batch` refuses.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(&format!("PRAGMA synchronous={sync};"))
        .unwrap();
    conn
}

fn now_ms() -> i64 {
    reasonq::clock::now_ms() as i64
}

const INSERT: &str = "INSERT INTO jobs (queue, kind, payload, priority, run_at, max_attempts, \
     state, created_at) VALUES ('bench', 'noop', ?1, 0, ?2, 10, 'available', ?2)";

/// `n` jobs, one commit each, from `threads` threads sharing one connection behind a mutex:
/// SQLite's best case for concurrent callers (with one connection per thread, writers
/// collide and back off in the busy handler, which is far slower).
pub fn enqueue_single(path: &Path, sync: Sync, n: u64, threads: u64) -> Duration {
    let conn = std::sync::Mutex::new(connect(path, sync));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let mine = n / threads + u64::from(t < n % threads);
            let conn = &conn;
            s.spawn(move || {
                for _ in 0..mine {
                    let conn = conn.lock().unwrap();
                    let mut stmt = conn.prepare_cached(INSERT).unwrap();
                    stmt.execute(params![&PAYLOAD[..], now_ms()]).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

/// `n` jobs in transactions of `batch`.
pub fn enqueue_batched(path: &Path, sync: Sync, n: u64, batch: u64) -> Duration {
    let mut conn = connect(path, sync);
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let size = left.min(batch);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        {
            let mut stmt = tx.prepare_cached(INSERT).unwrap();
            let now = now_ms();
            for _ in 0..size {
                stmt.execute(params![&PAYLOAD[..], now]).unwrap();
            }
        }
        tx.commit().unwrap();
        left -= size;
    }
    start.elapsed()
}

const LEASE: &str = "UPDATE jobs SET state = 'running', attempt = attempt + 1, \
     lease_token = lease_token + 1, lease_expires_at = ?1, lease_owner = ?2 \
     WHERE id IN (SELECT id FROM jobs WHERE queue = 'bench' \
       AND state IN ('available', 'scheduled', 'retryable') AND run_at <= ?3 \
       ORDER BY priority DESC, run_at, id LIMIT ?4) \
     RETURNING id, lease_token";

const COMPLETE: &str = "UPDATE jobs SET state = 'completed', finished_at = ?1, result = ?2, \
     lease_expires_at = NULL, lease_owner = NULL \
     WHERE id = ?3 AND state = 'running' AND lease_token = ?4";

/// Leases (one transaction per batch) and completes (one transaction per batch) every due
/// job from `workers` threads.
pub fn drain(path: &Path, sync: Sync, workers: usize, per_lease: usize) -> (Duration, u64) {
    let start = Instant::now();
    let total = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let mut conn = connect(path, sync);
                    let owner = format!("w{w}");
                    let mut done = 0u64;
                    loop {
                        let now = now_ms();
                        let tx = conn
                            .transaction_with_behavior(TransactionBehavior::Immediate)
                            .unwrap();
                        let leased: Vec<(i64, i64)> = {
                            let mut stmt = tx.prepare_cached(LEASE).unwrap();
                            let expires = now + LEASE_SECS as i64 * 1000;
                            stmt.query_map(params![expires, owner, now, per_lease as i64], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })
                            .unwrap()
                            .collect::<Result<_, _>>()
                            .unwrap()
                        };
                        tx.commit().unwrap();
                        if leased.is_empty() {
                            return done;
                        }
                        let tx = conn
                            .transaction_with_behavior(TransactionBehavior::Immediate)
                            .unwrap();
                        {
                            let mut stmt = tx.prepare_cached(COMPLETE).unwrap();
                            for (id, token) in &leased {
                                let n =
                                    stmt.execute(params![now_ms(), &[][..], id, token]).unwrap();
                                assert_eq!(n, 1);
                            }
                        }
                        tx.commit().unwrap();
                        done += leased.len() as u64;
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    (start.elapsed(), total)
}
