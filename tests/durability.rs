//! With `durability = none`, a `kill -9` loses at most the last few seconds of writes: the
//! writer makes a durable commit every `SYNC_EVERY` while commits wait for one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reasonq::store::{tables, Durability, Store, StoreConfig, SYNC_EVERY};

const CHILD_ENV: &str = "REASONQ_DURABILITY_CHILD_DB";

/// The child: one non-durable write, then it idles until killed.
#[test]
#[ignore = "started by a_killed_non_durable_store_keeps_writes_older_than_the_sync_window"]
fn durability_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut config = StoreConfig::new(path);
    config.durability = Durability::None;
    let store = Store::open(config).unwrap();
    store
        .write_blocking(|txn| {
            txn.open_table(tables::META)?
                .insert("written_before_the_kill", 7)?;
            Ok(())
        })
        .unwrap();
    println!("WRITTEN");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_non_durable_store_keeps_writes_older_than_the_sync_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "durability_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("child exited early").unwrap();
        if line == "WRITTEN" {
            break;
        }
    }
    std::thread::sleep(SYNC_EVERY * 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let store = Store::open(StoreConfig::new(&path)).unwrap();
    let kept = store
        .read_blocking(|txn| {
            Ok(txn
                .open_table(tables::META)?
                .get("written_before_the_kill")?
                .map(|v| v.value()))
        })
        .unwrap();
    assert_eq!(kept, Some(7), "a write older than the sync window was lost");
}
