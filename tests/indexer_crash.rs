//! The background indexer after `kill -9`: a process recording experiences for the indexer
//! (as batch completions do) while the indexer runs is killed at random moments, three
//! times. After a reopen and one catch-up, every experience is indexed exactly once: its
//! postings are there, each term's document count and the index totals match a recount,
//! and nothing waits.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reasonq::memory::experience::{
    list_by_time_read, record_with_in, Indexing, NewExperience, Order,
};
use reasonq::memory::index::{self, tokenize};
use reasonq::store::{tables, Store, StoreConfig};
use redb::ReadableTableMetadata;

const CHILD_ENV: &str = "REASONQ_INDEXER_CHILD_DB";

/// The child: records experiences in small batches, marked for the indexer, while the
/// indexer takes a few at a time; both until it is killed.
#[test]
#[ignore = "started by every_experience_is_indexed_exactly_once_after_kills in a child"]
fn indexer_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open_async(StoreConfig::new(path)).await.unwrap();
        let indexer = store.clone();
        tokio::spawn(async move {
            loop {
                indexer
                    .write(|txn| index::index_pending_in(txn, 7))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut round = 0u64;
        loop {
            let items: Vec<NewExperience> = (0..20)
                .map(|i| {
                    let n = round * 20 + i;
                    NewExperience::new(
                        format!("what is {n} plus {} in base {}", n % 7, n % 3 + 2),
                        format!("the answer is {} or term{}", n * 2, n % 11),
                    )
                })
                .collect();
            store
                .write(move |txn| {
                    record_with_in(txn, &items, 1_000 + round, Indexing::Deferred).map(drop)
                })
                .await
                .unwrap();
            if round == 0 {
                println!("CHILD WORKING");
            }
            round += 1;
        }
    });
}

fn kill_child_mid_work(path: &std::path::Path, after: Duration) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "indexer_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("child exited before working").unwrap();
        if line == "CHILD WORKING" {
            break;
        }
    }
    std::thread::sleep(after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_experience_is_indexed_exactly_once_after_kills() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    for ms in [40, 15, 70] {
        kill_child_mid_work(&path, Duration::from_millis(ms));
    }
    let store = Store::open_async(StoreConfig::new(&path)).await.unwrap();
    let waiting = store.read(index::pending_read).await.unwrap();
    // Bounded: an indexer that never clears its marks would otherwise loop here forever.
    tokio::time::timeout(Duration::from_secs(60), index::catch_up(&store))
        .await
        .expect("the indexer clears what it indexes")
        .unwrap();
    assert_eq!(store.read(index::pending_read).await.unwrap(), 0);

    let exps = store
        .read(|txn| list_by_time_read(txn, 0, u64::MAX, usize::MAX, Order::OldestFirst))
        .await
        .unwrap();
    assert!(
        exps.len() >= 60,
        "the child recorded {} experiences",
        exps.len()
    );
    // The recount: each experience's distinct terms, the documents holding each term, and
    // the total length in terms.
    let mut postings = 0u64;
    let mut df: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_len = 0u64;
    let mut expected: Vec<(u64, BTreeSet<String>)> = Vec::new();
    for exp in &exps {
        let terms: Vec<String> = tokenize(&exp.data.question)
            .into_iter()
            .chain(tokenize(&exp.data.answer))
            .collect();
        total_len += terms.len() as u64;
        let distinct: BTreeSet<String> = terms.into_iter().collect();
        postings += distinct.len() as u64;
        for term in &distinct {
            *df.entry(term.clone()).or_default() += 1;
        }
        expected.push((exp.id, distinct));
    }
    store
        .read(move |txn| {
            let stats = index::stats_read(txn)?;
            assert_eq!(
                stats.docs,
                exps.len() as u64,
                "each experience counted once"
            );
            assert_eq!(stats.total_len, total_len);
            assert_eq!(stats.postings, postings, "no posting twice or missing");
            let table = txn.open_table(tables::MEMORY_POSTINGS)?;
            for (id, terms) in &expected {
                for term in terms {
                    assert!(
                        table.get(("general", term.as_str(), *id))?.is_some(),
                        "experience {id} lacks term {term}"
                    );
                }
            }
            let terms = txn.open_table(tables::MEMORY_TERMS)?;
            assert_eq!(terms.len()?, df.len() as u64);
            for (term, n) in &df {
                assert_eq!(
                    terms.get(term.as_str())?.map(|v| v.value()),
                    Some(*n),
                    "{term}"
                );
            }
            Ok(())
        })
        .await
        .unwrap();
    // Some experiences were still waiting at the last kill, or the test proves little.
    eprintln!("experiences waiting for the indexer after the kills: {waiting}");
}
