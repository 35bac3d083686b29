//! The results viewer on a 1M-line batch against a 100-line one: the batches page, a
//! batch's first page, a page in the middle (keyset from a line), a filtered page (bounded
//! scan) and a line's page, rendered to HTML by the same function `GET` calls. Results and
//! method: docs/benchmarks.md, section "Results viewer".
//!
//! The databases are filled through the queue's own transactions (enqueue, line index,
//! lease, complete with a distinct body per line), 10,000 lines per transaction, without
//! sending anything: a 1M-line fill takes a minute or two and about 1 GB under
//! VIEWER_DIR (default the system temp dir). VIEWER_SIZES (default 100,1000000) picks
//! the sizes.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http_body_util::BodyExt;
use reasonq::chat::{ChatJob, ResponseRecord, KIND};
use reasonq::codec;
use reasonq::cost::Money;
use reasonq::llm::Api;
use reasonq::queue::{NewJob, QueueConfig};
use reasonq::serve::view::{self, Actions, Pages};
use reasonq::store::{Durability, Store, StoreConfig};

const BATCH: &str = "bench";
const CHUNK: u64 = 10_000;

fn sizes() -> Vec<u64> {
    std::env::var("VIEWER_SIZES")
        .unwrap_or_else(|_| "100,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A database holding one batch of `n` answered lines.
fn fill(path: &Path, n: u64) -> Store {
    let _ = std::fs::remove_file(path);
    let mut config = StoreConfig::new(path);
    config.durability = Durability::None;
    let store = Store::open(config).unwrap();
    let queue_config = QueueConfig::default();
    let started = Instant::now();
    let mut first = 0;
    while first < n {
        let count = CHUNK.min(n - first);
        store
            .write_blocking(move |txn| {
                let jobs: Vec<NewJob> = (first..first + count)
                    .map(|i| {
                        let chat = ChatJob {
                            custom_id: format!("request-{i:07}"),
                            line: i + 1,
                            body: format!(
                                r#"{{"model":"grok-4","messages":[{{"role":"user","content":"question number {i}: what is {i} times 7?"}}]}}"#
                            ),
                            domain: "general".into(),
                            strategy: None,
                            expected: None,
                            memory: false,
                            api: Api::ChatCompletions,
                            validate: None,
                        };
                        NewJob::new(BATCH, KIND, codec::encode(&chat).unwrap())
                    })
                    .collect();
                let ids: Vec<u64> = reasonq::queue::enqueue_many_in(txn, &queue_config, &jobs, 1)?
                    .iter()
                    .map(|e| e.id)
                    .collect();
                reasonq::batch::lines::set_many_in(txn, BATCH, first, &ids)?;
                let leases =
                    reasonq::queue::lease_in(txn, BATCH, ids.len(), 60_000, "bench", 2)?;
                for (k, lease) in leases.iter().enumerate() {
                    let i = first + k as u64;
                    let body = format!(
                        r#"{{"id":"chatcmpl-{i}","object":"chat.completion","model":"grok-4","choices":[{{"index":0,"message":{{"role":"assistant","content":"{} is the answer to question {i}."}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":14,"completion_tokens":9,"total_tokens":23}}}}"#,
                        i * 7
                    );
                    let record = ResponseRecord {
                        status_code: 200,
                        request_id: Some(format!("req-{i}")),
                        body: String::new(),
                        cached: false,
                        latency_ms: 200 + (i * 7919) % 1300,
                        provider_batch: None,
                        cost: Some(Money(150_000_000 + (i % 97) * 1_000_000)),
                        cache_tier: None,
                    };
                    reasonq::queue::complete_with_body_in(
                        txn,
                        lease,
                        &codec::encode(&record)?,
                        Some(body.as_bytes()),
                        3,
                    )?;
                }
                Ok(())
            })
            .unwrap();
        first += count;
    }
    store
        .write_blocking(move |txn| reasonq::batch::lines::truncate_in(txn, BATCH, n))
        .unwrap();
    eprintln!(
        "filled {n} lines in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    store
}

/// `GET path` through the viewer, body read whole.
async fn get(pages: &Pages, path: &str, query: Option<&str>) -> usize {
    let segments: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    let answer = view::get(pages, &segments, query).await.unwrap();
    assert_eq!(answer.status(), 200, "{path}");
    answer.into_body().collect().await.unwrap().to_bytes().len()
}

fn bench(c: &mut Criterion) {
    let dir = match std::env::var_os("VIEWER_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("viewer");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for n in sizes() {
        let store = fill(&dir.path().join(format!("view-{n}.redb")), n);
        let pages = Pages {
            store: store.clone(),
            actions: Actions::ReadOnly,
        };
        let middle = format!("from={}", n / 2);
        let last_line = format!("/view/batches/{BATCH}/lines/{}", n - 1);
        let cases: [(&str, &str, Option<&str>); 5] = [
            ("batches", "/", None),
            ("first_page", "/view/batches/bench", None),
            ("middle_page", "/view/batches/bench", Some(&middle)),
            (
                "filtered_page",
                "/view/batches/bench",
                Some("state=discarded"),
            ),
            ("line", &last_line, None),
        ];
        for (name, path, query) in cases {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.to_async(&rt).iter(|| get(&pages, path, query));
            });
        }
        // Ranks a window of up to 100,000 lines (the whole of a smaller batch).
        group.bench_with_input(BenchmarkId::new("sorted_page", n), &n, |b, _| {
            b.to_async(&rt)
                .iter(|| get(&pages, "/view/batches/bench", Some("sort=latency")));
        });
        store.close().unwrap();
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
