//! `reasonq check`: a sound file is reported with its contents and left as it was; a damaged
//! one is reported (exit 2) without being touched, and `--repair` keeps a backup. And
//! `reasonq stats --tables`: what each table of the file holds.

mod support;

use reasonq::sim::SimConfig;
use support::{questions, stderr, stdout, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_sound_file_and_never_touches_a_damaged_one_without_repair() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input("in.jsonl", &questions(5));
    let out = env.run(&["batch", "in.jsonl"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let before = std::fs::read(env.db()).unwrap();
    let out = env.run(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(": ok (5 jobs, 5 experiences, 5 cached responses, 1 runs)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read(env.db()).unwrap(),
        before,
        "a check changes nothing"
    );

    // Damage the file: its second half overwritten.
    let mut bytes = before.clone();
    let half = bytes.len() / 2;
    bytes[half..].iter_mut().for_each(|b| *b = 0xA5);
    let damaged = env.path("damaged.redb");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = env.command_on(&damaged, &["check"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("damaged"), "{}", stdout(&out));
    // redb's own panic text on the damaged pages is not shown; the verdict is.
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let status = env.command_on(&damaged, &["status"]).output().unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(!stderr(&status).contains("panicked"), "{}", stderr(&status));
    assert!(stderr(&status).contains("damaged"), "{}", stderr(&status));
    assert_eq!(
        std::fs::read(&damaged).unwrap(),
        bytes,
        "untouched without --repair"
    );

    let out = env
        .command_on(&damaged, &["check", "--repair"])
        .output()
        .unwrap();
    let text = stdout(&out);
    if text.contains("repaired") {
        assert!(out.status.success(), "{text}");
        let backups = std::fs::read_dir(env.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("damaged.redb.bak-")
            })
            .count();
        assert_eq!(backups, 1, "the damaged file is kept: {text}");
    } else {
        // Beyond repair: said so, and the file is left for the user.
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("beyond repair"), "{text}");
        assert_eq!(std::fs::read(&damaged).unwrap(), bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_tables_lists_rows_and_bytes_of_the_job_and_experience_tables() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input("in.jsonl", &questions(5));
    let out = env.run(&["batch", "in.jsonl"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let out = env.run(&["stats", "--tables", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let sizes: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let tables = sizes["tables"].as_array().unwrap();
    let table = |name: &str| {
        tables
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no table {name}: {sizes}"))
    };
    for name in ["jobs", "jobs_by_queue", "experiences"] {
        assert_eq!(table(name)["rows"], 5, "{name}: {sizes}");
        assert!(table(name)["stored_bytes"].as_u64().unwrap() > 0, "{name}");
    }
    // Cache rows are appended to the journal and merged into `cache` when the writer idles.
    let [cache, journal] = ["cache", "cache_journal"].map(|name| {
        let t = table(name);
        (
            t["rows"].as_u64().unwrap(),
            t["stored_bytes"].as_u64().unwrap(),
        )
    });
    assert_eq!(cache.0 + journal.0, 5, "{sizes}");
    assert!(cache.1 + journal.1 > 0);
    assert_eq!(
        table("jobs_due")["rows"],
        0,
        "a finished batch waits for nothing"
    );
    let in_tables: u64 = tables
        .iter()
        .map(|t| {
            ["stored_bytes", "metadata_bytes", "fragmented_bytes"]
                .iter()
                .map(|k| t[*k].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    let file = sizes["file_bytes"].as_u64().unwrap();
    assert!(in_tables > 0 && in_tables <= file, "{in_tables} of {file}");

    let out = env.run(&["stats", "--tables"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("table"), "{text}");
    assert!(text.contains("experiences"), "{text}");
    assert!(text.contains("in tables"), "{text}");
}
