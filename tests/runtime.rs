//! The runtime's upkeep: background tasks are cancelled and joined before the database
//! closes, and the memory watchdog shrinks the in-memory cache above its RSS limit.

use std::time::Duration;

use reasonq::app::App;
use reasonq::cache::{put_in, CacheKey, CachedResponse, Journal};
use reasonq::clock::now_ms;
use reasonq::config::Config;
use reasonq::store::{Store, StoreConfig};

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        db: dir.join("db.redb"),
        ..Config::default()
    };
    config.queue.lease_s = 2;
    config.retention.interval_s = 1;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_are_joined_and_release_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(config(dir.path())).await.unwrap();
    assert!(app.upkeep_tasks().await > 0, "the app runs its upkeep");
    // Let every task tick at least once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.close().await.unwrap();
    assert_eq!(app.upkeep_tasks().await, 0, "closing joins every task");
    drop(app);
    // Had a task kept a handle, the file would still be locked by this process.
    let store = Store::open(StoreConfig::new(dir.path().join("db.redb"))).unwrap();
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_empties_the_memory_cache_above_the_rss_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.cache.rss_limit_mb = 1; // any real process is above this
    let app = App::open(config).await.unwrap();
    let key = CacheKey::for_request(
        "http://x",
        "/chat/completions",
        &serde_json::json!({"a": 1}),
    );
    let response = CachedResponse::new(200, None, "{}").stamped(now_ms(), Duration::from_secs(60));
    app.cache.remember(key, response);
    assert_eq!(app.cache.stats().memory_entries, 1);
    let mut emptied = false;
    for _ in 0..100 {
        if app.cache.stats().memory_entries == 0 {
            emptied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.close().await.unwrap();
    assert!(emptied, "the watchdog never shrank the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_drops_expired_cache_rows_and_keeps_fresh_ones() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(config(dir.path())).await.unwrap();
    let key = |n: u64| {
        CacheKey::for_request(
            "http://x",
            "/chat/completions",
            &serde_json::json!({"n": n}),
        )
    };
    let now = now_ms();
    let expired =
        CachedResponse::new(200, None, "{}").stamped(now - 60_000, Duration::from_secs(1));
    let fresh = CachedResponse::new(200, None, "{}").stamped(now, Duration::from_secs(3600));
    let journal = Journal::of(&app.store);
    app.store
        .write(move |txn| {
            put_in(txn, &journal, &key(1), &expired)?;
            put_in(txn, &journal, &key(2), &fresh)
        })
        .await
        .unwrap();
    let report = app.cleanup().await.unwrap();
    assert_eq!(report.cache_entries_expired, 1);
    assert_eq!(report.jobs_pruned, 0);
    let again = app.cleanup().await.unwrap();
    assert_eq!(again.cache_entries_expired, 0);
    app.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_of_zero_keeps_finished_jobs() {
    use reasonq::queue::NewJob;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention.completed_jobs_hours = 0;
    let app = App::open(config).await.unwrap();
    app.queue
        .enqueue(NewJob::new("b", "chat", vec![1]))
        .await
        .unwrap();
    let lease = app
        .queue
        .lease("b", 1, Duration::from_secs(60), "t")
        .await
        .unwrap()
        .remove(0);
    app.queue.complete(&lease, b"done".to_vec()).await.unwrap();
    let report = app.cleanup().await.unwrap();
    assert_eq!(report.jobs_pruned, 0, "0 means keep, not delete at once");
    assert_eq!(app.queue.counts(Some("b")).await.unwrap().completed, 1);
    app.close().await.unwrap();
}
