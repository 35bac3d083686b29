//! A database written by an earlier build opens, drains and exports with this one, and a
//! record this build cannot read fails its own line instead of the file.
//!
//! `tests/fixtures/main-9c5b2a2.redb` was written by main at 9c5b2a2 (the last release of the
//! old layout): `reasonq --simulate batch` of the first four lines of
//! `main-9c5b2a2.jsonl` (three plain lines, one blackboard line), then, through that
//! version's library, lines 5 to 7 enqueued: line 5 left waiting, line 6 discarded with a
//! provider's 400, line 7 leased and never finished (running, as after a `kill -9`).

mod support;

use reasonq::queue::{NewJob, Queue, QueueConfig};
use reasonq::sim::SimConfig;
use reasonq::store::{tables, StoreConfig};
use serde_json::Value;
use support::{read_jsonl, stderr, stdout, Env};

const FIXTURE: &str = "tests/fixtures/main-9c5b2a2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_layout_opens_drains_and_exports() {
    let env = Env::start(SimConfig::default()).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join(format!("{FIXTURE}.redb")), env.db()).unwrap();
    std::fs::copy(root.join(format!("{FIXTURE}.jsonl")), env.path("in.jsonl")).unwrap();

    let out = env
        .run(&[
            "--simulate",
            "batch",
            "in.jsonl",
            "--batch",
            "fixture",
            "-o",
            "out.jsonl",
        ])
        .await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // Every line is known: nothing is enqueued (or paid for) again, the blackboard and
    // chain-of-thought lines (whose keys now cover their options) included.
    assert!(err.contains("7 requests, 0 new"), "{err}");
    let lines = read_jsonl(&env.path("out.jsonl"));
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["q1", "q2", "q3", "q4", "q5", "q6", "q7"]);
    for line in lines.iter().filter(|l| l["custom_id"] != "q6") {
        assert_eq!(line["response"]["status_code"], 200, "{line}");
    }
    // The discarded line keeps the provider's status and message.
    assert_eq!(lines[5]["response"]["status_code"], 400);
    assert_eq!(
        lines[5]["response"]["body"]["error"]["message"],
        "the prompt is not allowed"
    );
    // The blackboard line's answer came from its session of the old build.
    assert_eq!(
        lines[3]["response"]["body"]["board_session"].as_str(),
        Some("bb-4")
    );

    let status: Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"]).await)).unwrap();
    assert_eq!(status[0]["states"]["completed"], 6, "{status}");
    assert_eq!(status[0]["states"]["discarded"], 1, "{status}");
    // The old run records, experiences and board read back.
    let stats = env.run(&["stats"]).await;
    assert!(stats.status.success(), "{}", stderr(&stats));
    assert!(
        stdout(&stats).contains("runs recorded:        2"),
        "{}",
        stdout(&stats)
    );
    let board = env.run(&["board", "4"]).await;
    assert!(
        stdout(&board).starts_with("board bb-4"),
        "{}",
        stderr(&board)
    );
    let experiences: Value =
        serde_json::from_str(&stdout(&env.run(&["experiences", "list", "--json"]).await)).unwrap();
    assert_eq!(experiences.as_array().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_fails_its_own_line_and_the_file_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let queue = Queue::open(StoreConfig::new(&path), QueueConfig::default())
        .await
        .unwrap();
    // A job whose payload this build cannot read, and one it can.
    let mut bad = NewJob::new("b", "chat", b"\x01not a chat job".to_vec());
    bad.dedup_key = Some("bad".into());
    let id = queue.enqueue(bad).await.unwrap().id;
    let errors = queue
        .store()
        .write(move |txn| {
            reasonq::batch::lines::set_many_in(txn, "b", 0, &[id])?;
            reasonq::batch::lines::truncate_in(txn, "b", 1)
        })
        .await
        .and_then(|()| {
            queue.store().read_blocking(|txn| {
                let mut errors = Vec::new();
                reasonq::batch::export::export_read(txn, "b", false, |entry| {
                    if entry.failed {
                        errors.extend(entry.line);
                    }
                    Ok(())
                })?;
                Ok(errors)
            })
        })
        .unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("undecodable_record"), "{}", errors[0]);

    // A running job whose record is garbage: the open-time rescue passes it by.
    queue
        .store()
        .write(|txn| {
            txn.open_table(tables::JOBS)?
                .insert(99, b"\x01garbage".as_slice())?;
            txn.open_table(tables::JOBS_LEASED)?.insert((0, 99), ())?;
            Ok(())
        })
        .await
        .unwrap();
    queue.store().close_async().await.unwrap();
    drop(queue);
    let reopened = Queue::open(StoreConfig::new(&path), QueueConfig::default()).await;
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}
