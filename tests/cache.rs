//! The two-tier prompt cache: hits per tier, restarts, TTL, pruning, single flight, policy
//! and byte-weighted eviction. Time comes from a manual clock, so nothing here is timed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use reasonq::cache::{
    cacheable, get_blocking, len_read, prune_in, put_in, put_many_in, Cache, CacheConfig, CacheKey,
    CachePolicy, CachedResponse, Hit, Journal,
};
use reasonq::llm::Api;
use reasonq::store::{tables, Store, StoreConfig};
use reasonq::Error;
use redb::ReadableTableMetadata;
use serde_json::{json, Value};

const TTL_MS: u64 = 100;
const T0: u64 = 1_000_000;

/// A fake upstream that counts its calls and answers with the request's text.
#[derive(Default)]
struct Upstream {
    calls: AtomicUsize,
}

impl Upstream {
    async fn answer(&self, text: &str) -> Result<CachedResponse, Error> {
        self.calls.fetch_add(1, SeqCst);
        Ok(CachedResponse::new(
            200,
            Some("req_1".into()),
            format!("answer to {text}"),
        ))
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn new() -> Self {
        ManualClock(Arc::new(AtomicU64::new(T0)))
    }
    fn set(&self, ms: u64) {
        self.0.store(ms, SeqCst);
    }
}

fn config() -> CacheConfig {
    CacheConfig {
        memory_bytes: 1 << 20,
        ttl: Duration::from_millis(TTL_MS),
        persist: true,
    }
}

fn cache(store: Option<Store>, clock: &ManualClock) -> Cache {
    cache_with(store, clock, config())
}

fn cache_with(store: Option<Store>, clock: &ManualClock, config: CacheConfig) -> Cache {
    let t = clock.0.clone();
    Cache::with_clock(store, config, Arc::new(move || t.load(SeqCst)))
}

fn open_store(dir: &tempfile::TempDir) -> Store {
    Store::open(StoreConfig::new(dir.path().join("cache.redb"))).unwrap()
}

/// A store in a fresh directory, which lives as long as the returned guard.
fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    (dir, store)
}

fn key_for(text: &str) -> CacheKey {
    CacheKey::for_request(
        "http://127.0.0.1:1/v1",
        "/chat/completions",
        &json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]}),
    )
}

/// One lookup through the cache with the policy allowing it.
async fn ask(cache: &Cache, upstream: &Upstream, text: &str) -> (CachedResponse, Hit) {
    cache
        .get_or_fetch(key_for(text), true, || upstream.answer(text))
        .await
        .unwrap()
}

fn disk_rows(store: &Store) -> (u64, u64) {
    store
        .read_blocking(|txn| {
            let by_expiry = txn.open_table(tables::CACHE_BY_EXPIRY)?.len()?;
            Ok((len_read(txn)?, by_expiry))
        })
        .unwrap()
}

#[tokio::test]
async fn a_repeated_request_is_a_memory_hit_with_the_same_body() {
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let cache = cache(None, &clock);
    let (first, hit) = ask(&cache, &upstream, "q").await;
    assert_eq!(hit, Hit::Miss);
    assert_eq!((first.created_at, first.expires_at), (T0, T0 + TTL_MS));
    let (second, hit) = ask(&cache, &upstream, "q").await;
    assert_eq!(hit, Hit::Memory);
    assert_eq!(second, first);
    assert_eq!(upstream.calls(), 1);
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.hits_memory, stats.inserts), (1, 1, 1));
    assert_eq!(stats.hit_ratio, 0.5);
    assert_eq!(stats.memory_entries, 1);
    assert_eq!(stats.memory_bytes, first.weight());
}

#[tokio::test]
async fn after_a_restart_the_answer_comes_from_disk_without_fetching() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let first = {
        let store = open_store(&dir);
        let upstream = Upstream::default();
        let cache = cache(Some(store.clone()), &clock);
        let (first, hit) = ask(&cache, &upstream, "q").await;
        assert_eq!(hit, Hit::Miss);
        // Persisted before get_or_fetch returned.
        assert_eq!(disk_rows(&store), (1, 1));
        drop(cache);
        store.close().unwrap();
        first
    };
    let store = open_store(&dir);
    let cache = cache(Some(store), &clock);
    let upstream = Upstream::default();
    let (again, hit) = ask(&cache, &upstream, "q").await;
    assert_eq!(hit, Hit::Disk);
    assert_eq!(again, first);
    assert_eq!(upstream.calls(), 0);
    // Promoted to memory.
    assert_eq!(ask(&cache, &upstream, "q").await.1, Hit::Memory);
    assert_eq!(cache.stats().hits_disk, 1);
}

#[tokio::test]
async fn expired_entries_are_misses_in_both_tiers() {
    let (_dir, store) = temp_store();
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let warm = cache(Some(store.clone()), &clock);
    ask(&warm, &upstream, "q").await;

    clock.set(T0 + TTL_MS - 1);
    assert_eq!(ask(&warm, &upstream, "q").await.1, Hit::Memory);
    assert_eq!(
        ask(&cache(Some(store.clone()), &clock), &upstream, "q")
            .await
            .1,
        Hit::Disk
    );
    assert_eq!(upstream.calls(), 1);

    clock.set(T0 + TTL_MS);
    // Tier 2 alone: a fresh cache with an empty memory finds only an expired row.
    let cold = cache(Some(store.clone()), &clock);
    let (fresh, hit) = ask(&cold, &upstream, "q").await;
    assert_eq!(hit, Hit::Miss);
    assert_eq!(fresh.expires_at, T0 + 2 * TTL_MS);
    // Tier 1: the warm cache drops its expired entry and finds the re-fetched row on disk.
    assert_eq!(ask(&warm, &upstream, "q").await.1, Hit::Disk);
    assert_eq!(warm.stats().expired, 1);
    assert_eq!(upstream.calls(), 2);
    // Re-putting replaced the row and its index entry.
    assert_eq!(disk_rows(&store), (1, 1));
}

#[tokio::test]
async fn sweep_drops_expired_entries_from_memory() {
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let cache = cache(None, &clock);
    ask(&cache, &upstream, "old").await;
    clock.set(T0 + 50);
    ask(&cache, &upstream, "new").await;
    clock.set(T0 + TTL_MS);
    assert_eq!(cache.sweep(), 1);
    let stats = cache.stats();
    assert_eq!((stats.memory_entries, stats.expired), (1, 1));
    assert_eq!(ask(&cache, &upstream, "new").await.1, Hit::Memory);
}

#[tokio::test]
async fn prune_removes_expired_rows_only() {
    let (_dir, store) = temp_store();
    let journal = Journal::of(&store);
    let put = |text: &'static str, expires_at: u64| {
        let response =
            CachedResponse::new(200, None, text).stamped(0, Duration::from_millis(expires_at));
        let journal = journal.clone();
        store.write(move |txn| put_in(txn, &journal, &key_for(text), &response))
    };
    for (text, expires_at) in [("a", 100), ("b", 200), ("c", 300), ("d", 400)] {
        put(text, expires_at).await.unwrap();
    }
    // "a" is stored again with a later expiry: its old index row goes with the old value.
    put("a", 500).await.unwrap();
    assert_eq!(disk_rows(&store), (4, 4));
    // A stray index row (as an unreadable old value would leave) must not delete "d" early.
    store
        .write(|txn| {
            let mut by_expiry = txn.open_table(tables::CACHE_BY_EXPIRY)?;
            by_expiry.insert((150, key_for("d").as_bytes()), ())?;
            Ok(())
        })
        .await
        .unwrap();

    // Due at 200: the stray (150, d) and (200, b). The limit bounds one transaction.
    let consumed = store.write(|txn| prune_in(txn, 200, 1)).await.unwrap();
    assert_eq!(consumed, 1);
    let cache = Cache::new(Some(store.clone()), config());
    assert_eq!(
        cache.prune_expired(200).await.unwrap(),
        1,
        "only b's row is left due"
    );
    assert_eq!(disk_rows(&store), (3, 3));
    let alive =
        |text: &'static str, now: u64| get_blocking(&store, &key_for(text), now).unwrap().is_some();
    assert!(!alive("b", 0), "expired at 200 and pruned");
    assert!(alive("a", 200) && alive("c", 200) && alive("d", 200));
    assert_eq!(cache.prune_expired(200).await.unwrap(), 0);
}

#[tokio::test]
async fn a_burst_that_stores_a_key_twice_keeps_one_expiry_row_for_the_newest() {
    let (_dir, store) = temp_store();
    let journal = Journal::of(&store);
    let stamped = |body: &'static str, expires_at: u64| {
        CachedResponse::new(200, None, body).stamped(0, Duration::from_millis(expires_at))
    };
    let rows = [
        (key_for("a"), stamped("a1", 100)),
        (key_for("b"), stamped("b1", 300)),
        (key_for("a"), stamped("a2", 500)),
    ];
    store
        .write(move |txn| {
            let refs: Vec<(&CacheKey, &CachedResponse)> =
                rows.iter().map(|(k, r)| (k, r)).collect();
            put_many_in(txn, &journal, &refs)
        })
        .await
        .unwrap();
    assert_eq!(
        disk_rows(&store),
        (2, 2),
        "one row and one expiry row a key"
    );
    let cache = Cache::new(Some(store.clone()), config());
    assert_eq!(
        cache.prune_expired(200).await.unwrap(),
        0,
        "a1's expiry went with a1"
    );
    let body = |text: &str, now: u64| {
        get_blocking(&store, &key_for(text), now)
            .unwrap()
            .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
    };
    assert_eq!(body("a", 200).as_deref(), Some("a2"));
    assert_eq!(
        cache.prune_expired(400).await.unwrap(),
        1,
        "b is due at 300"
    );
    assert_eq!(disk_rows(&store), (1, 1));
    assert_eq!(body("a", 400).as_deref(), Some("a2"));
}

/// Sends 10 identical requests at once. The n-th upstream call (from 0) answers `answer(n)`
/// after a short delay, so the others pile up behind it. Returns the results and the number
/// of upstream calls.
async fn ten_at_once(
    answer: fn(usize) -> Result<CachedResponse, Error>,
) -> (Vec<Result<(CachedResponse, Hit), Error>>, usize) {
    let cache = Arc::new(cache(None, &ManualClock::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch(key_for("q"), true, || async move {
                        let n = calls.fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        answer(n)
                    })
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    (results, calls.load(SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_identical_requests_make_one_upstream_call() {
    let (results, calls) = ten_at_once(|_| Ok(CachedResponse::new(200, None, "shared"))).await;
    assert_eq!(calls, 1);
    let hits: Vec<Hit> = results
        .into_iter()
        .map(|r| {
            let (response, hit) = r.unwrap();
            assert_eq!(response.body, "shared");
            hit
        })
        .collect();
    assert_eq!(hits.iter().filter(|h| **h == Hit::Miss).count(), 1);
    assert_eq!(hits.iter().filter(|h| **h == Hit::Memory).count(), 9);
}

#[tokio::test]
async fn a_failed_fetch_fails_only_its_caller_and_the_next_call_fetches_again() {
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let cache = cache(None, &clock);
    let failed = cache
        .get_or_fetch(key_for("q"), true, || async {
            Err::<CachedResponse, _>(Error::Invalid("upstream down".into()))
        })
        .await;
    assert!(matches!(failed, Err(Error::Invalid(_))));
    assert_eq!(cache.stats().memory_entries, 0);
    assert_eq!(ask(&cache, &upstream, "q").await.1, Hit::Miss);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_shared_fetch_fails_a_waiter_fetches_instead_of_failing() {
    let (results, calls) = ten_at_once(|n| match n {
        0 => Err(Error::Invalid("upstream down".into())),
        _ => Ok(CachedResponse::new(200, None, "ok")),
    })
    .await;
    let mut errors = 0;
    for result in results {
        match result {
            Ok((response, _)) => assert_eq!(response.body, "ok"),
            Err(_) => errors += 1,
        }
    }
    assert_eq!(
        errors, 1,
        "only the caller whose fetch failed sees the error"
    );
    assert_eq!(calls, 2, "one failed fetch, one successful retry");
}

#[tokio::test]
async fn unsuccessful_responses_are_returned_but_not_cached() {
    let (_dir, store) = temp_store();
    let clock = ManualClock::new();
    let cache = cache(Some(store.clone()), &clock);
    for _ in 0..2 {
        let (response, hit) = cache
            .get_or_fetch(key_for("q"), true, || async {
                Ok::<_, Error>(CachedResponse::new(503, None, "busy"))
            })
            .await
            .unwrap();
        assert_eq!((response.status, hit), (503, Hit::Miss));
    }
    assert_eq!(cache.stats().memory_entries, 0);
    assert_eq!(disk_rows(&store), (0, 0));
}

#[tokio::test]
async fn policy_never_bypasses_both_tiers() {
    let (_dir, store) = temp_store();
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let cache = cache(Some(store.clone()), &clock);
    let body = json!({"model": "m", "temperature": 0, "messages": []});
    let allowed = cacheable(CachePolicy::Never, Api::ChatCompletions, &body);
    for _ in 0..3 {
        let (_, hit) = cache
            .get_or_fetch(key_for("q"), allowed, || upstream.answer("q"))
            .await
            .unwrap();
        assert_eq!(hit, Hit::Bypass);
    }
    assert_eq!(upstream.calls(), 3);
    let stats = cache.stats();
    assert_eq!(
        (stats.bypasses, stats.memory_entries, stats.inserts),
        (3, 0, 0)
    );
    assert_eq!(disk_rows(&store), (0, 0));
    // A bypass does not read either: an entry stored earlier is not served.
    ask(&cache, &upstream, "q").await;
    let (_, hit) = cache
        .get_or_fetch(key_for("q"), false, || upstream.answer("q"))
        .await
        .unwrap();
    assert_eq!((hit, upstream.calls()), (Hit::Bypass, 5));
}

#[tokio::test]
async fn deterministic_policy_caches_only_zero_temperature_or_seeded_requests() {
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let cache = cache(None, &clock);
    let bodies = [
        (json!({"model": "m", "temperature": 0.8}), false),
        (json!({"model": "m"}), false),
        (json!({"model": "m", "temperature": 0}), true),
        (json!({"model": "m", "temperature": 0.8, "seed": 7}), true),
    ];
    for (body, cached) in bodies {
        let key = CacheKey::for_request("http://h/v1", "/chat/completions", &body);
        let allowed = cacheable(CachePolicy::Deterministic, Api::ChatCompletions, &body);
        let before = upstream.calls();
        for _ in 0..2 {
            cache
                .get_or_fetch(key, allowed, || upstream.answer("x"))
                .await
                .unwrap();
        }
        let fetched = upstream.calls() - before;
        assert_eq!(fetched, if cached { 1 } else { 2 }, "{body}");
    }
}

#[tokio::test]
async fn persist_off_reads_the_store_but_leaves_writing_to_the_caller() {
    let (_dir, store) = temp_store();
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let config = CacheConfig {
        persist: false,
        ..config()
    };
    let cache = cache_with(Some(store.clone()), &clock, config);
    let (fetched, _) = ask(&cache, &upstream, "q").await;
    assert_eq!(disk_rows(&store), (0, 0));
    // The caller stores it in its own transaction (e.g. the one completing the job)...
    let (stored, journal) = (fetched.clone(), Journal::of(&store));
    store
        .write(move |txn| put_in(txn, &journal, &key_for("q"), &stored))
        .await
        .unwrap();
    // ...and once memory is emptied, the answer comes from disk.
    cache.clear_memory();
    assert_eq!(ask(&cache, &upstream, "q").await, (fetched, Hit::Disk));
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn the_memory_tier_evicts_by_bytes() {
    let capacity = 16 * 1024;
    let config = CacheConfig {
        memory_bytes: capacity,
        ..config()
    };
    let cache = cache_with(None, &ManualClock::new(), config);
    for i in 0..40 {
        cache
            .get_or_fetch(key_for(&i.to_string()), true, || async {
                Ok::<_, Error>(CachedResponse::new(200, None, vec![b'x'; 1024]))
            })
            .await
            .unwrap();
    }
    let stats = cache.stats();
    assert!(stats.memory_bytes <= capacity, "{stats:?}");
    assert!(
        stats.memory_entries < 40 && stats.evictions > 0,
        "{stats:?}"
    );
    assert_eq!(stats.memory_entries + stats.evictions, 40, "{stats:?}");
    // About 1 KiB + overhead per entry.
    let per_entry = stats.memory_bytes / stats.memory_entries;
    assert!((1024..1024 + 256).contains(&per_entry), "{per_entry}");

    cache.set_memory_capacity(4 * 1024);
    let stats = cache.stats();
    assert!(
        stats.memory_bytes <= 4 * 1024 && stats.memory_entries > 0,
        "{stats:?}"
    );
    cache.clear_memory();
    assert_eq!(cache.stats().memory_bytes, 0);
}

#[tokio::test]
async fn remember_puts_a_stored_response_into_memory() {
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let cache = cache(None, &clock);
    let response =
        CachedResponse::new(200, None, "from the job").stamped(T0, Duration::from_millis(TTL_MS));
    cache.remember(key_for("q"), response.clone());
    assert_eq!(ask(&cache, &upstream, "q").await, (response, Hit::Memory));
    // Expired or unsuccessful responses are not remembered.
    cache.remember(
        key_for("old"),
        CachedResponse::new(200, None, "x").stamped(0, Duration::ZERO),
    );
    cache.remember(
        key_for("bad"),
        CachedResponse::new(500, None, "x").stamped(T0, Duration::from_secs(1)),
    );
    assert_eq!(cache.stats().memory_entries, 1);
    assert_eq!(upstream.calls(), 0);
}

#[test]
fn a_batch_tool_keeps_answers_for_30_days_by_default() {
    let config = CacheConfig::default();
    assert_eq!(config.ttl, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(config.memory_bytes, 16 << 20);
    assert!(config.persist);
    let _: Value = serde_json::to_value(Cache::new(None, config).stats()).unwrap();
}

#[tokio::test]
async fn a_failed_store_write_is_reported_but_the_answer_is_not_paid_for_twice() {
    let (_dir, store) = temp_store();
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let cache = cache(Some(store.clone()), &clock);
    store.close().unwrap();
    let failed = cache
        .get_or_fetch(key_for("q"), true, || upstream.answer("q"))
        .await;
    assert!(matches!(failed, Err(Error::Closed)), "{failed:?}");
    assert_eq!(ask(&cache, &upstream, "q").await.1, Hit::Memory);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn with_no_memory_budget_answers_still_come_from_disk() {
    let (_dir, store) = temp_store();
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let config = CacheConfig {
        memory_bytes: 0,
        ..config()
    };
    let cache = cache_with(Some(store), &clock, config);
    assert_eq!(ask(&cache, &upstream, "q").await.1, Hit::Miss);
    assert_eq!(ask(&cache, &upstream, "q").await.1, Hit::Disk);
    assert_eq!((cache.stats().memory_entries, upstream.calls()), (0, 1));
}

/// A fresh answer whose row is on disk leaves the memory tier (what a batch's completion
/// does once it commits the row): the next ask reads it from disk, paying nothing, and
/// brings it back to memory, where the one after finds it.
#[tokio::test]
async fn a_settled_answer_leaves_memory_and_a_repeat_brings_it_back() {
    let (_dir, store) = temp_store();
    let (clock, upstream) = (ManualClock::new(), Upstream::default());
    let cache = cache(Some(store), &clock);
    let (first, hit) = ask(&cache, &upstream, "q").await;
    assert_eq!(hit, Hit::Miss);
    assert_eq!(ask(&cache, &upstream, "q").await.1, Hit::Memory);

    cache.settle(key_for("q"));
    let (again, hit) = ask(&cache, &upstream, "q").await;
    assert_eq!((hit, again), (Hit::Disk, first));
    assert_eq!(ask(&cache, &upstream, "q").await.1, Hit::Memory);
    assert_eq!(upstream.calls(), 1, "asked once, whatever the tier");
}

// ---- the journal: rows appended, merged into the hashed table in sorted runs ----

/// Rows in (`cache`, `cache_journal`, `bodies_by_id`).
fn layout(store: &Store) -> (u64, u64, u64) {
    store
        .read_blocking(|txn| {
            Ok((
                txn.open_table(tables::CACHE)?.len()?,
                txn.open_table(tables::CACHE_JOURNAL)?.len()?,
                txn.open_table(tables::BODIES_BY_ID)?.len()?,
            ))
        })
        .unwrap()
}

/// Stores `body` as the answer to `text`, expiring at 10^12 ms.
async fn store_answer(store: &Store, text: &'static str, body: &'static str) {
    let journal = Journal::of(store);
    let response = CachedResponse::new(200, None, body).stamped(0, Duration::from_secs(1 << 30));
    store
        .write(move |txn| put_in(txn, &journal, &key_for(text), &response))
        .await
        .unwrap();
}

fn answer(store: &Store, text: &str) -> Option<String> {
    get_blocking(store, &key_for(text), T0)
        .unwrap()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
}

#[tokio::test]
async fn rows_go_to_the_journal_then_into_the_table_and_the_newest_row_wins() {
    let (_dir, store) = temp_store();
    let cache = cache(Some(store.clone()), &ManualClock::new());
    for (text, body) in [("a", "a1"), ("b", "b1"), ("c", "c1")] {
        store_answer(&store, text, body).await;
    }
    assert_eq!(
        layout(&store),
        (0, 3, 3),
        "appended, not in the hashed table"
    );
    assert_eq!(answer(&store, "a").as_deref(), Some("a1"));

    assert_eq!(cache.merge_all().await.unwrap(), 3);
    assert_eq!(layout(&store), (3, 0, 3));
    assert_eq!(
        Journal::of(&store).indexed(),
        0,
        "merged rows leave the index"
    );
    assert_eq!(answer(&store, "b").as_deref(), Some("b1"));

    // Stored again: the journal row shadows the table's at once, replaces it at the merge,
    // and the old body goes with it.
    store_answer(&store, "a", "a2").await;
    assert_eq!(answer(&store, "a").as_deref(), Some("a2"));
    assert_eq!(layout(&store), (3, 1, 4));
    // And again before a merge: the journal keeps only the newest.
    store_answer(&store, "a", "a3").await;
    assert_eq!(layout(&store), (3, 1, 4));
    assert_eq!(answer(&store, "a").as_deref(), Some("a3"));
    assert_eq!(cache.merge_all().await.unwrap(), 1);
    assert_eq!(layout(&store), (3, 0, 3));
    assert_eq!(answer(&store, "a").as_deref(), Some("a3"));
    assert_eq!(disk_rows(&store), (3, 3), "one expiry row per entry");
    assert_eq!(answer(&store, "d"), None);
}

#[tokio::test]
async fn a_reopened_file_finds_the_rows_its_journal_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    store_answer(&store, "a", "a1").await;
    store_answer(&store, "b", "b1").await;
    store.close_async().await.unwrap();
    drop(store);

    let store = open_store(&dir);
    assert_eq!(
        Journal::of(&store).indexed(),
        0,
        "not loaded before it is needed"
    );
    assert_eq!(answer(&store, "a").as_deref(), Some("a1"));
    assert_eq!(Journal::of(&store).indexed(), 2, "loaded from the file");
    // An append after the reload replaces the row it found.
    store_answer(&store, "b", "b2").await;
    assert_eq!(answer(&store, "b").as_deref(), Some("b2"));
    assert_eq!(layout(&store), (0, 2, 2));
}

#[tokio::test]
async fn a_rolled_back_write_leaves_the_older_row_readable() {
    let (_dir, store) = temp_store();
    let cache = cache(Some(store.clone()), &ManualClock::new());
    store_answer(&store, "a", "a1").await;
    cache.merge_all().await.unwrap();
    // The append enters the index before its commit; the commit never comes.
    let journal = Journal::of(&store);
    let failed = store
        .write(move |txn| {
            for (text, body) in [("a", "a2"), ("b", "b1")] {
                let response = CachedResponse::new(200, None, body).stamped(0, Duration::MAX);
                put_in(txn, &journal, &key_for(text), &response)?;
            }
            Err::<(), _>(Error::Task("rolled back".into()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(Journal::of(&store).indexed(), 2, "stale hints");
    assert_eq!(answer(&store, "a").as_deref(), Some("a1"));
    assert_eq!(answer(&store, "b"), None);
    assert_eq!(layout(&store), (1, 0, 1));
    store_answer(&store, "b", "b2").await;
    assert_eq!(answer(&store, "b").as_deref(), Some("b2"));
}

#[tokio::test]
async fn a_merge_waits_for_an_idle_writer_until_the_journal_is_full() {
    let (_dir, store) = temp_store();
    let cache = cache(Some(store.clone()), &ManualClock::new());
    store_answer(&store, "a", "a1").await;
    assert_eq!(cache.merge_step(false).await.unwrap(), 0, "busy writer");
    assert_eq!(layout(&store), (0, 1, 1));
    assert_eq!(cache.merge_step(true).await.unwrap(), 1, "idle writer");
    assert_eq!(layout(&store), (1, 0, 1));
    assert_eq!(cache.merge_step(true).await.unwrap(), 0, "nothing left");
}

/// Readers never miss a stored row while merges move rows from the journal to the table:
/// they look the index up before taking their snapshot, and a merge leaves the index only
/// after its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_during_merges_find_every_stored_row() {
    let (_dir, store) = temp_store();
    let cache = Arc::new(cache(Some(store.clone()), &ManualClock::new()));
    const TEXTS: [&str; 8] = ["q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7"];
    for text in TEXTS {
        store_answer(&store, text, "x").await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        let keys: Vec<_> = TEXTS.iter().map(|t| key_for(t)).collect();
        tokio::task::spawn_blocking(move || {
            let mut rounds = 0;
            while !stop.load(SeqCst) {
                let found = reasonq::cache::get_many_blocking(&store, &keys, T0).unwrap();
                let misses = found.iter().filter(|f| !matches!(f, Ok(Some(_)))).count();
                assert_eq!(misses, 0, "round {rounds}");
                rounds += 1;
            }
            rounds
        })
    };
    for _ in 0..40 {
        // Each key written again, then merged: the rows move back and forth.
        for text in TEXTS {
            store_answer(&store, text, "x").await;
        }
        cache.merge_all().await.unwrap();
    }
    stop.store(true, SeqCst);
    assert!(reader.await.unwrap() > 0);
}
