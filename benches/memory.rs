//! Memory retrieval: BM25 top-5 latency and index size at 10k and 100k experiences, and what
//! the index adds to recording an experience. Results and method: docs/benchmarks.md, section
//! "Memory retrieval".
//!
//! The corpus is synthetic: questions of 12 words and answers of 4 drawn from a 5,000-word
//! vocabulary with Zipf (s = 1) frequencies, in 5 domains, 3 in 4 successes. Each corpus is
//! built once, in transactions of 5,000 experiences, with and without the index so the index
//! size is the difference of the two files.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reasonq::memory::experience::{self, ExperienceData, Indexing, NewExperience, Outcome};
use reasonq::memory::index;
use reasonq::memory::retrieve::{search_read, Query};
use reasonq::store::{Durability, Store, StoreConfig};

const VOCABULARY: usize = 5_000;
const DOMAINS: usize = 5;
const NOW: u64 = 1_800_000_000_000;

/// Draws word ranks with probability proportional to 1 / rank.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|r| {
                total += 1.0 / r as f64;
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn words(&self, rng: &mut StdRng, n: usize) -> String {
        let total = self.cumulative[self.cumulative.len() - 1];
        (0..n)
            .map(|_| {
                let x = rng.random::<f64>() * total;
                format!("w{}", self.cumulative.partition_point(|&c| c < x))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn corpus(n: usize, seed: u64) -> Vec<NewExperience> {
    let zipf = Zipf::new(VOCABULARY);
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| NewExperience {
            created_at: Some(NOW - (n - i) as u64 * 1000),
            data: ExperienceData {
                domain: format!("d{}", i % DOMAINS),
                outcome: if i % 4 == 0 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                strategy: "direct".into(),
                ..ExperienceData::new(zipf.words(&mut rng, 12), zipf.words(&mut rng, 4))
            },
        })
        .collect()
}

fn open(dir: &tempfile::TempDir, name: &str, durability: Durability) -> Store {
    let config = StoreConfig {
        durability,
        ..StoreConfig::new(dir.path().join(name))
    };
    Store::open(config).unwrap()
}

fn fill(store: &Store, items: &[NewExperience], indexing: Indexing) {
    for chunk in items.chunks(5_000) {
        let chunk = chunk.to_vec();
        store
            .write_blocking(move |txn| experience::record_with_in(txn, &chunk, NOW, indexing))
            .unwrap();
    }
}

fn file_mib(dir: &tempfile::TempDir, name: &str) -> f64 {
    std::fs::metadata(dir.path().join(name)).unwrap().len() as f64 / (1024.0 * 1024.0)
}

fn retrieval(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let indexed = open(&dir, "indexed.redb", Durability::None);
    let plain = open(&dir, "plain.redb", Durability::None);
    let all = corpus(100_000, 1);
    let queries: Vec<String> = {
        let zipf = Zipf::new(VOCABULARY);
        let mut rng = StdRng::seed_from_u64(2);
        (0..50).map(|_| zipf.words(&mut rng, 12)).collect()
    };
    let mut group = c.benchmark_group("memory_top5");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut loaded = 0;
    for size in [10_000usize, 100_000] {
        let started = Instant::now();
        fill(&indexed, &all[loaded..size], Indexing::On);
        let with_index = started.elapsed();
        let started = Instant::now();
        fill(&plain, &all[loaded..size], Indexing::Off);
        let without = started.elapsed();
        loaded = size;
        let stats = indexed.read_blocking(index::stats_read).unwrap();
        let (a, b) = (file_mib(&dir, "indexed.redb"), file_mib(&dir, "plain.redb"));
        eprintln!(
            "{size} experiences: file {a:.1} MiB with index, {b:.1} MiB without (difference \
             {:.1} MiB); index tables {:.1} MiB ({:.0} bytes per experience, {:.0} per posting); \
             {} postings, {} terms; built in {:.2} s with index, {:.2} s without (batches of 5,000)",
            a - b,
            stats.bytes as f64 / (1024.0 * 1024.0),
            stats.bytes as f64 / size as f64,
            stats.bytes as f64 / stats.postings as f64,
            stats.postings,
            stats.terms,
            with_index.as_secs_f64(),
            without.as_secs_f64(),
        );
        for (label, domain, successes_only) in [
            ("domain_successes", Some("d1"), true),
            ("all_domains", None, false),
        ] {
            let mut i = 0;
            group.bench_function(BenchmarkId::new(label, size), |b| {
                b.iter(|| {
                    i = (i + 1) % queries.len();
                    let text = queries[i].as_str();
                    indexed
                        .read_blocking(|txn| {
                            search_read(
                                txn,
                                &Query {
                                    text,
                                    domain,
                                    limit: 5,
                                    successes_only,
                                    now: NOW,
                                },
                            )
                        })
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

fn recording(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let items = corpus(20_000, 3);
    let mut group = c.benchmark_group("memory_record");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, indexing) in [("indexed", Indexing::On), ("unindexed", Indexing::Off)] {
        // 100 experiences per transaction, no fsync: the CPU and page cost of the records.
        let store = open(&dir, &format!("batch-{name}.redb"), Durability::None);
        let mut at = 0;
        group.bench_function(BenchmarkId::new("100_per_txn", name), |b| {
            b.iter(|| {
                let chunk = items[at % 19_900..at % 19_900 + 100].to_vec();
                at += 100;
                store
                    .write_blocking(move |txn| {
                        experience::record_with_in(txn, &chunk, NOW, indexing)
                    })
                    .unwrap()
            })
        });
        // One experience per durable commit (fsync), as a worker records one completion.
        let store = open(&dir, &format!("one-{name}.redb"), Durability::Immediate);
        let mut at = 0;
        group.bench_function(BenchmarkId::new("1_per_commit_fsync", name), |b| {
            b.iter(|| {
                let item = [items[at % 20_000].clone()];
                at += 1;
                store
                    .write_blocking(move |txn| {
                        experience::record_with_in(txn, &item, NOW, indexing)
                    })
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, retrieval, recording);
criterion_main!(benches);
