//! Prompt cache benchmarks: memory-hit latency (with and without hashing a ~1 KiB request
//! body), a tier-2 row lookup, and the hit ratio of a Zipf-distributed replay of 100k prompts
//! at several memory capacities (printed before the timings; no criterion timing there).
//!
//! `cargo bench --bench cache` (about a minute).

use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use rand::{rngs::StdRng, Rng, SeedableRng};
use reasonq::cache::{get_blocking, put_in, Cache, CacheConfig, CacheKey, CachedResponse, Journal};
use reasonq::store::{Durability, Store, StoreConfig};
use reasonq::Error;
use serde_json::{json, Value};

const BASE: &str = "https://api.x.ai/v1";
const ENDPOINT: &str = "/chat/completions";

/// A typical chat request of about 1 KiB: a system prompt, a user question, the usual knobs.
fn request_body(i: usize) -> Value {
    json!({
        "model": "grok-4",
        "temperature": 0,
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are a careful assistant. Think step by step, \
              check each intermediate result, and answer with a short justification followed \
              by the final answer on its own line. If the question is ambiguous, say so."},
            {"role": "user", "content": format!("Question {i}: {}", "a train leaves at nine \
              and travels at sixty kilometres per hour; a second train leaves the same station \
              an hour later at ninety kilometres per hour. When and where does the second \
              train catch up with the first, and how far have both travelled by then? ".repeat(2))}
        ],
        "response_format": {"type": "text"}
    })
}

/// A typical answer body of about 2 KiB.
fn response() -> CachedResponse {
    CachedResponse::new(200, Some("req_0123456789abcdef".into()), vec![b'x'; 2048])
}

async fn never_called() -> Result<CachedResponse, Error> {
    Err(Error::Invalid("a hit must not fetch".into()))
}

fn lookups(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let body = request_body(0);
    let body_len = serde_json::to_vec(&body).map_or(0, |b| b.len());
    let cache = Cache::new(None, CacheConfig::default());
    let key = CacheKey::for_request(BASE, ENDPOINT, &body);
    cache.remember(
        key,
        response().stamped(reasonq::clock::now_ms(), cache.config().ttl),
    );

    let mut group = c.benchmark_group("prompt_cache");
    group.bench_function(format!("key_hash_only_{body_len}B_body"), |b| {
        b.iter(|| CacheKey::for_request(BASE, ENDPOINT, black_box(&body)))
    });
    group.bench_function("memory_hit_precomputed_key", |b| {
        b.to_async(rt).iter(|| async {
            let found = cache.get_or_fetch(black_box(key), true, never_called).await;
            black_box(found.map(|(r, _)| r.status))
        })
    });
    group.bench_function(format!("memory_hit_with_key_hash_{body_len}B_body"), |b| {
        b.to_async(rt).iter(|| async {
            let key = CacheKey::for_request(BASE, ENDPOINT, black_box(&body));
            let found = cache.get_or_fetch(key, true, never_called).await;
            black_box(found.map(|(r, _)| r.status))
        })
    });

    let dir = tempfile::tempdir().ok();
    let store = dir.as_ref().and_then(|d| {
        let mut config = StoreConfig::new(d.path().join("bench.redb"));
        config.durability = Durability::None;
        Store::open(config).ok()
    });
    if let Some(store) = store {
        let stored = response().stamped(reasonq::clock::now_ms(), cache.config().ttl);
        let journal = Journal::of(&store);
        let written = store.write_blocking(move |txn| put_in(txn, &journal, &key, &stored));
        if written.is_ok() {
            // The row in the journal (as a batch leaves it), then merged into the table.
            group.bench_function("disk_row_lookup_read_txn", |b| {
                b.iter(|| get_blocking(&store, black_box(&key), 0).map(|r| r.is_some()))
            });
            let merged = store.write_blocking(|txn| reasonq::cache::merge_in(txn, usize::MAX));
            if merged.is_ok() {
                group.bench_function("disk_row_lookup_read_txn_merged", |b| {
                    b.iter(|| get_blocking(&store, black_box(&key), 0).map(|r| r.is_some()))
                });
            }
        }
        let _ = store.close();
    }
    group.finish();
}

/// Samples ranks 0..n with P(k) proportional to 1 / (k + 1)^s, by inverting the CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        for p in &mut cdf {
            *p /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&p| p < u).min(self.cdf.len() - 1)
    }
}

const REPLAY: usize = 100_000;
const DISTINCT: usize = 10_000;

/// Replays 100k Zipf(s = 1.0) prompts over 10k distinct ones through the memory tier at
/// several capacities and prints the hit ratio next to the best a static cache of the same
/// size could do (the most frequent prompts pinned, each still missed once).
fn zipf_hit_ratios(rt: &tokio::runtime::Runtime) {
    let zipf = Zipf::new(DISTINCT, 1.0);
    let mut rng = StdRng::seed_from_u64(42);
    let trace: Vec<usize> = (0..REPLAY).map(|_| zipf.sample(&mut rng)).collect();
    let keys: Vec<CacheKey> = (0..DISTINCT)
        .map(|i| CacheKey::for_request(BASE, ENDPOINT, &request_body(i)))
        .collect();
    let mut counts = vec![0usize; DISTINCT];
    for &i in &trace {
        counts[i] += 1;
    }
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let entry_bytes = response().weight();
    println!(
        "zipf replay: {REPLAY} requests, {DISTINCT} distinct prompts (s = 1.0), {} seen, \
         entry ~{entry_bytes} B",
        counts.iter().filter(|&&c| c > 0).count()
    );
    for capacity_mib in [1u64, 4, 16, 64] {
        let config = CacheConfig {
            memory_bytes: capacity_mib << 20,
            ..CacheConfig::default()
        };
        let cache = Cache::new(None, config);
        let started = Instant::now();
        rt.block_on(async {
            for &i in &trace {
                let fetched = cache
                    .get_or_fetch(keys[i], true, || async { Ok::<_, Error>(response()) })
                    .await;
                black_box(fetched.is_ok());
            }
        });
        let elapsed = started.elapsed();
        let stats = cache.stats();
        let fits = usize::try_from((capacity_mib << 20) / entry_bytes).unwrap_or(usize::MAX);
        let pinned = counts.iter().take(fits).filter(|&&c| c > 0);
        let best_hits: usize = pinned.map(|c| c - 1).sum();
        println!(
            "  {capacity_mib:>3} MiB (~{fits} entries): hit ratio {:.3} (static optimum {:.3}), \
             {} entries held, {} evictions, {:.0} ns/request",
            stats.hit_ratio,
            best_hits as f64 / REPLAY as f64,
            stats.memory_entries,
            stats.evictions,
            elapsed.as_nanos() as f64 / REPLAY as f64
        );
    }
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return;
        }
    };
    zipf_hit_ratios(&rt);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    lookups(&mut c, &rt);
    c.final_summary();
}
