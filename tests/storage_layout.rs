//! What a batch writes, and how often: each payload once, each response body once (shared by
//! the job and its cache row), per-batch totals `status` reads without a scan, and the line
//! index the export walks. Read back from the file a real batch wrote.

mod support;

use reasonq::sim::SimConfig;
use reasonq::store::bodies::Stored;
use reasonq::store::tables;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use support::{questions, stderr, stdout, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stores_each_payload_and_body_once_and_keeps_totals_for_status() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input("in.jsonl", &questions(6));
    let out = env.run(&["batch", "in.jsonl", "-o", "out.jsonl"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status = env.run(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();

    // A new batch of the same questions: every line a cache hit, its job referring to the
    // copy the hit was read from.
    let replay = env
        .run(&["batch", "in.jsonl", "--batch", "again", "-o", "again.jsonl"])
        .await;
    assert!(replay.status.success(), "{}", stderr(&replay));

    let db = redb::Database::open(env.db()).unwrap();
    let txn = db.begin_read().unwrap();
    let len = |t: redb::TableDefinition<u64, &[u8]>| txn.open_table(t).unwrap().len().unwrap();
    assert_eq!(len(tables::JOBS), 12);
    assert_eq!(len(tables::JOB_PAYLOADS), 12, "one payload per job");
    // Six distinct answers, each stored once, under sequence numbers, and referred to by its
    // job, its cache row and the job of the replayed line.
    let bodies = txn.open_table(tables::BODIES_BY_ID).unwrap();
    assert_eq!(bodies.len().unwrap(), 6);
    let ids: Vec<u64> = bodies
        .iter()
        .unwrap()
        .map(|r| r.unwrap().0.value())
        .collect();
    assert_eq!(
        ids,
        (ids[0]..ids[0] + 6).collect::<Vec<u64>>(),
        "appended in sequence"
    );
    let refs = txn.open_table(tables::BODY_ID_REFS).unwrap();
    for row in refs.iter().unwrap() {
        assert_eq!(
            row.unwrap().1.value(),
            3,
            "a job, its cache row and the replayed job share a body"
        );
    }
    assert_eq!(
        txn.open_table(tables::BODIES).unwrap().len().unwrap(),
        0,
        "no hash-keyed copies"
    );
    let results = txn.open_table(tables::JOB_RESULTS).unwrap();
    for row in results.iter().unwrap() {
        let (_, body) = row.unwrap().1.value();
        let body = body.expect("a completed job refers to its body");
        let Stored::Id(id) = Stored::of(&body) else {
            panic!("a new body is stored by sequence number");
        };
        assert!(bodies.get(id).unwrap().is_some());
    }
    // The job record holds its state only: no copy of the prompt or the answer.
    let jobs = txn.open_table(tables::JOBS).unwrap();
    for row in jobs.iter().unwrap() {
        let (_, record) = row.unwrap();
        assert!(record.value().len() < 160, "{} bytes", record.value().len());
    }
    // The line index lists the six lines in order; the totals match what status printed.
    let lines = txn.open_table(tables::BATCH_LINES).unwrap();
    let batch = status[0]["batch"].as_str().unwrap().to_string();
    let order: Vec<u64> = lines
        .range((batch.as_str(), 0)..=(batch.as_str(), u64::MAX))
        .unwrap()
        .map(|r| r.unwrap().0.value().1)
        .collect();
    assert_eq!(order, (0..6).collect::<Vec<u64>>());
    let usage = txn.open_table(tables::BATCH_USAGE).unwrap();
    let (prompt, completion, cached) = usage.get(batch.as_str()).unwrap().unwrap().value();
    assert!(prompt > 0 && completion > 0);
    assert_eq!(cached, 0);
    assert_eq!(status[0]["prompt_tokens"], prompt, "{status}");
    assert_eq!(status[0]["completion_tokens"], completion, "{status}");
}
