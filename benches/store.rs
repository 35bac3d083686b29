//! Experience store: recording and querying by domain, against SQLite (rusqlite, WAL) with the
//! same schema and indexes, in the same run. Every recording benchmark starts from an empty
//! file; reasonq uses immediate durability (fsync per commit), matching synchronous=FULL.
//! Results and method: docs/benchmarks.md, section "Store: experiences".

use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use reasonq::memory::experience::{self, ExperienceData, NewExperience, Order, Outcome};
use reasonq::store::{Store, StoreConfig};
use rusqlite::{params, Connection};

const DOMAINS: usize = 10;

fn sample(i: usize) -> NewExperience {
    ExperienceData {
        reasoning: vec![format!("step one of {i}"), "step two".into()],
        confidence: Some(0.8),
        outcome: if i % 4 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        },
        domain: format!("domain{}", i % DOMAINS),
        strategy: "cot".into(),
        tags: vec![format!("tag{}", i % 7), "bench".into()],
        model: "model-x".into(),
        prompt_tokens: 120,
        completion_tokens: 80,
        latency_ms: 900,
        ..ExperienceData::new(
            format!("question number {i}: what is {i} * 3?"),
            "an answer",
        )
    }
    .into()
}

// ---- reasonq ----

fn open_store(dir: &tempfile::TempDir) -> Store {
    Store::open(StoreConfig::new(dir.path().join("bench.redb"))).unwrap()
}

fn reasonq_record(store: &Store, items: &[NewExperience], per_txn: usize) {
    for chunk in items.chunks(per_txn) {
        let chunk = chunk.to_vec();
        store
            .write_blocking(move |txn| experience::record_many_in(txn, &chunk, 1))
            .unwrap();
    }
}

fn reasonq_record_concurrent(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    items: &[NewExperience],
    tasks: usize,
) {
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = store.clone();
            let mine: Vec<_> = items.iter().skip(t).step_by(tasks).cloned().collect();
            handles.push(tokio::spawn(async move {
                for item in mine {
                    store.record_experience(item).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
}

// ---- SQLite: same data, indexes on domain, tag and time, pattern upsert per record ----

const SQLITE_SCHEMA: &str = "
    CREATE TABLE experiences (
        id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL, question TEXT NOT NULL,
        context TEXT, reasoning TEXT NOT NULL, answer TEXT NOT NULL, confidence REAL,
        outcome INTEGER NOT NULL, domain TEXT NOT NULL, strategy TEXT NOT NULL,
        tags TEXT NOT NULL, model TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER,
        latency_ms INTEGER, job_id INTEGER, used_experiences TEXT NOT NULL);
    CREATE INDEX experiences_by_time ON experiences(created_at, id);
    CREATE INDEX experiences_by_domain ON experiences(domain, id);
    CREATE TABLE experience_tags (tag TEXT NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (tag, id))
        WITHOUT ROWID;
    CREATE TABLE patterns (domain TEXT NOT NULL, strategy TEXT NOT NULL, uses INTEGER NOT NULL,
        successes INTEGER NOT NULL, failures INTEGER NOT NULL, mean_latency_ms REAL NOT NULL,
        last_used INTEGER NOT NULL, PRIMARY KEY (domain, strategy)) WITHOUT ROWID;";

fn open_sqlite(dir: &tempfile::TempDir, synchronous: &str) -> Connection {
    let conn = Connection::open(dir.path().join("bench.sqlite")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", synchronous)
        .unwrap();
    conn.execute_batch(SQLITE_SCHEMA).unwrap();
    conn
}

fn sqlite_insert(conn: &Connection, new: &NewExperience) {
    let e = &new.data;
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap();
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO experiences (created_at, question, context, reasoning, answer,
             confidence, outcome, domain, strategy, tags, model, prompt_tokens,
             completion_tokens, latency_ms, job_id, used_experiences)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, '[]')",
        )
        .unwrap();
    insert
        .execute(params![
            1,
            e.question,
            e.context,
            json(&e.reasoning),
            e.answer,
            e.confidence,
            e.outcome as u8,
            e.domain,
            e.strategy,
            json(&e.tags),
            e.model,
            e.prompt_tokens,
            e.completion_tokens,
            e.latency_ms,
            e.job_id,
        ])
        .unwrap();
    let id = conn.last_insert_rowid();
    let mut tag = conn
        .prepare_cached("INSERT INTO experience_tags (tag, id) VALUES (?1, ?2)")
        .unwrap();
    for t in &e.tags {
        tag.execute(params![t, id]).unwrap();
    }
    let mut pattern = conn
        .prepare_cached(
            "INSERT INTO patterns VALUES (?1, ?2, 1, ?3, ?4, ?5, 1)
             ON CONFLICT(domain, strategy) DO UPDATE SET uses = uses + 1,
             successes = successes + excluded.successes, failures = failures + excluded.failures,
             mean_latency_ms = mean_latency_ms + (excluded.mean_latency_ms - mean_latency_ms)
                 / (uses + 1), last_used = max(last_used, excluded.last_used)",
        )
        .unwrap();
    let (s, f) = match e.outcome {
        Outcome::Success => (1, 0),
        Outcome::Failure => (0, 1),
        Outcome::Unknown => (0, 0),
    };
    pattern
        .execute(params![e.domain, e.strategy, s, f, e.latency_ms as f64])
        .unwrap();
}

fn sqlite_record(conn: &mut Connection, items: &[NewExperience], per_txn: usize) {
    for chunk in items.chunks(per_txn) {
        let txn = conn.transaction().unwrap();
        for e in chunk {
            sqlite_insert(&txn, e);
        }
        txn.commit().unwrap();
    }
}

/// Rows of one domain, newest first, materialised like reasonq's decoded records.
fn sqlite_latest_in_domain(conn: &Connection, domain: &str, limit: usize) -> usize {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, created_at, question, context, reasoning, answer, confidence, outcome,
             domain, strategy, tags, model, prompt_tokens, completion_tokens, latency_ms,
             job_id, used_experiences FROM experiences WHERE domain = ?1
             ORDER BY id DESC LIMIT ?2",
        )
        .unwrap();
    let rows = stmt
        .query_map(params![domain, limit as i64], |r| {
            let reasoning: String = r.get(4)?;
            let tags: String = r.get(10)?;
            let used: String = r.get(16)?;
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(2)?,
                serde_json::from_str::<Vec<String>>(&reasoning).unwrap(),
                r.get::<_, String>(5)?,
                serde_json::from_str::<Vec<String>>(&tags).unwrap(),
                serde_json::from_str::<Vec<u64>>(&used).unwrap(),
                r.get::<_, String>(8)?,
            ))
        })
        .unwrap();
    rows.collect::<Result<Vec<_>, _>>().unwrap().len()
}

// ---- benchmarks ----

/// Times `run` on a fresh, empty database per iteration; opening and closing are not timed.
fn timed<D>(iters: u64, open: impl Fn(&tempfile::TempDir) -> D, run: impl Fn(&mut D)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let dir = tempfile::tempdir().unwrap();
        let mut db = open(&dir);
        let start = Instant::now();
        run(&mut db);
        total += start.elapsed();
    }
    total
}

fn record(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("record");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let batched: Vec<_> = (0..10_000).map(sample).collect();
    g.throughput(Throughput::Elements(batched.len() as u64));
    g.bench_function(BenchmarkId::new("10k_batch100", "reasonq"), |b| {
        b.iter_custom(|n| timed(n, open_store, |s| reasonq_record(s, &batched, 100)))
    });
    for sync in ["FULL", "NORMAL"] {
        g.bench_function(
            BenchmarkId::new("10k_batch100", format!("sqlite_{sync}")),
            |b| {
                b.iter_custom(|n| {
                    timed(
                        n,
                        |d| open_sqlite(d, sync),
                        |c| sqlite_record(c, &batched, 100),
                    )
                })
            },
        );
    }

    // One record per write call is bound by the disk's fsync rate; 500 records keep the run
    // short. reasonq from 16 concurrent tasks shows what group commit recovers.
    let single: Vec<_> = (0..500).map(sample).collect();
    g.throughput(Throughput::Elements(single.len() as u64));
    g.bench_function(BenchmarkId::new("500_one_per_txn", "reasonq"), |b| {
        b.iter_custom(|n| timed(n, open_store, |s| reasonq_record(s, &single, 1)))
    });
    g.bench_function(
        BenchmarkId::new("500_one_per_txn", "reasonq_16_tasks"),
        |b| {
            b.iter_custom(|n| {
                timed(n, open_store, |s| {
                    reasonq_record_concurrent(&rt, s, &single, 16)
                })
            })
        },
    );
    for sync in ["FULL", "NORMAL"] {
        let id = BenchmarkId::new("500_one_per_txn", format!("sqlite_{sync}"));
        g.bench_function(id, |b| {
            b.iter_custom(|n| {
                timed(
                    n,
                    |d| open_sqlite(d, sync),
                    |c| sqlite_record(c, &single, 1),
                )
            })
        });
    }
    g.finish();
}

fn query(c: &mut Criterion) {
    const N: usize = 100_000;
    const LIMIT: usize = 50;
    let items: Vec<_> = (0..N).map(sample).collect();

    let redb_dir = tempfile::tempdir().unwrap();
    let store = open_store(&redb_dir);
    for chunk in items.chunks(1000) {
        let chunk = chunk.to_vec();
        store
            .write_blocking(move |txn| experience::record_many_in(txn, &chunk, 1))
            .unwrap();
    }
    let sqlite_dir = tempfile::tempdir().unwrap();
    let mut conn = open_sqlite(&sqlite_dir, "FULL");
    for chunk in items.chunks(1000) {
        let txn = conn.transaction().unwrap();
        chunk.iter().for_each(|e| sqlite_insert(&txn, e));
        txn.commit().unwrap();
    }

    let mut g = c.benchmark_group("query_100k");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("latest50_of_domain", "reasonq"), |b| {
        b.iter(|| {
            let got = store
                .read_blocking(|txn| {
                    experience::list_by_domain_read(txn, "domain3", LIMIT, Order::NewestFirst)
                })
                .unwrap();
            assert_eq!(got.len(), LIMIT);
        })
    });
    g.bench_function(BenchmarkId::new("latest50_of_domain", "sqlite"), |b| {
        b.iter(|| assert_eq!(sqlite_latest_in_domain(&conn, "domain3", LIMIT), LIMIT))
    });
    g.bench_function(BenchmarkId::new("counts", "reasonq"), |b| {
        b.iter(|| store.read_blocking(experience::counts_read).unwrap())
    });
    g.bench_function(BenchmarkId::new("counts", "sqlite"), |b| {
        b.iter(|| {
            let mut stmt = conn
                .prepare_cached("SELECT domain, COUNT(*) FROM experiences GROUP BY domain")
                .unwrap();
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .unwrap();
            assert_eq!(rows.count(), DOMAINS);
        })
    });
    g.finish();
}

criterion_group!(benches, record, query);
criterion_main!(benches);
