//! The store as a whole: files, schema versions, locking, durability and group commit.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use reasonq::memory::experience::{self, NewExperience};
use reasonq::store::{tables, Durability, Store, StoreConfig, SCHEMA_VERSION};
use reasonq::Error;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir.join("db.redb"))
}

fn schema_version(store: &Store) -> Option<u64> {
    store
        .read_blocking(|txn| {
            let meta = txn.open_table(tables::META)?;
            let v = meta.get(tables::SCHEMA_VERSION)?.map(|v| v.value());
            Ok(v)
        })
        .unwrap()
}

fn set_schema_version(store: &Store, version: u64) {
    store
        .write_blocking(move |txn| {
            txn.open_table(tables::META)?
                .insert(tables::SCHEMA_VERSION, version)?;
            Ok(())
        })
        .unwrap();
}

fn record(store: &Store, question: &str) -> u64 {
    let new = NewExperience::new(question, "a");
    store
        .write_blocking(move |txn| experience::record_in(txn, &new, 1))
        .unwrap()
}

#[test]
fn a_new_file_is_private_and_at_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let mode = std::fs::metadata(store.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(schema_version(&store), Some(SCHEMA_VERSION));
}

#[test]
fn a_zero_length_file_is_initialised() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db.redb"), b"").unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(schema_version(&store), Some(SCHEMA_VERSION));
}

fn assert_bad_database(result: Result<Store, Error>, what: &str) {
    match result {
        Err(Error::BadDatabase { message, .. }) => assert!(!message.is_empty()),
        Err(other) => panic!("{what}: expected BadDatabase, got {other}"),
        Ok(_) => panic!("{what}: opened"),
    }
}

#[test]
fn random_bytes_are_a_bad_database_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (i, len) in [1usize, 100, 4096, 70_000].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        let sub = dir.path().join(i.to_string());
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("db.redb"), bytes).unwrap();
        assert_bad_database(Store::open(config(&sub)), &format!("{len} random bytes"));
    }
}

#[test]
fn a_truncated_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    for i in 0..200 {
        record(&store, &format!("question {i} {}", "x".repeat(200)));
    }
    store.close().unwrap();
    drop(store);
    let full = std::fs::read(dir.path().join("db.redb")).unwrap();
    for keep in [1, 64, 512, full.len() / 3, full.len() / 2, full.len() - 1] {
        let sub = dir.path().join(format!("t{keep}"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("db.redb"), &full[..keep]).unwrap();
        assert_bad_database(Store::open(config(&sub)), &format!("truncated to {keep}"));
    }
}

#[test]
fn a_file_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    set_schema_version(&store, SCHEMA_VERSION + 1);
    store.close().unwrap();
    drop(store);
    match Store::open(config(dir.path())) {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn a_file_from_an_older_schema_is_upgraded_at_open_keeping_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let id = record(&store, "kept");
    set_schema_version(&store, 0);
    store.close().unwrap();
    drop(store);
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(schema_version(&store), Some(SCHEMA_VERSION));
    let kept = store.read_blocking(|txn| experience::get_read(txn, id));
    assert_eq!(kept.unwrap().unwrap().data.question, "kept");
}

#[test]
fn a_second_open_of_the_same_file_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    match Store::open(config(dir.path())) {
        Err(Error::Locked { path }) => assert!(path.ends_with("db.redb")),
        other => panic!("expected Locked, got {other:?}"),
    }
    store.close().unwrap();
    drop(store);
    Store::open(config(dir.path())).expect("reopens once the first handle is gone");
}

#[test]
fn writes_after_close_fail_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.close().unwrap();
    let late = store.write_blocking(|_| Ok(()));
    assert!(matches!(late, Err(Error::Closed)), "{late:?}");
}

#[test]
fn non_durable_writes_are_on_disk_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        durability: Durability::None,
        ..config(dir.path())
    };
    let store = Store::open(cfg).unwrap();
    let ids: Vec<u64> = (0..20).map(|i| record(&store, &format!("q{i}"))).collect();
    store.close().unwrap();
    drop(store);
    let store = Store::open(config(dir.path())).unwrap();
    let counts = store.read_blocking(experience::counts_read).unwrap();
    assert_eq!(counts.total, 20);
    let last = store.read_blocking(|txn| experience::get_read(txn, ids[19]));
    assert_eq!(last.unwrap().unwrap().data.question, "q19");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_all_land_and_a_failing_one_undoes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_async(config(dir.path())).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let new = NewExperience::new(format!("q{i}"), "a");
            store
                .write(move |txn| {
                    let id = experience::record_in(txn, &new, i)?;
                    if i % 50 == 7 {
                        return Err(Error::Invalid(format!("write {i} refused")));
                    }
                    Ok(id)
                })
                .await
        }));
    }
    let mut landed = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(id) => landed.push(id),
            Err(Error::Invalid(msg)) => assert_eq!(msg, format!("write {i} refused")),
            Err(other) => panic!("write {i}: {other}"),
        }
    }
    assert_eq!(landed.len(), 196);
    let counts = store.experience_counts().await.unwrap();
    assert_eq!(counts.total, 196, "failed writes left nothing behind");
    for id in landed {
        assert!(store.experience(id).await.unwrap().is_some(), "id {id}");
    }
}

/// redb panics on some damaged pages (found by the `open_db` fuzz target); a read that hits
/// one must report a damaged file, not take the process down.
#[test]
fn a_panic_inside_a_read_is_a_damaged_file_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("p.redb"))).unwrap();
    let blocking: reasonq::Result<()> = store.read_blocking(|_| panic!("simulated redb panic"));
    assert!(
        matches!(&blocking, Err(reasonq::Error::BadDatabase { message, .. }) if message.contains("damaged")),
        "{blocking:?}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let asynchronous: reasonq::Result<()> =
        rt.block_on(store.read(|_| panic!("simulated redb panic")));
    assert!(
        matches!(asynchronous, Err(reasonq::Error::BadDatabase { .. })),
        "{asynchronous:?}"
    );
    store.close().unwrap();
}
