//! Sharding end to end, through the real binary with `--simulate`: `batch --shard K/N` on
//! one database per shard, then `merge`, gives what one unsharded run gives.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use reasonq::batch::shard::Shard;
use reasonq::sim::SimConfig;
use support::{answer, questions, read_jsonl, stderr, Env};

const SHARDS: u64 = 3;

/// `reasonq --simulate --db DB ARGS` in `env`, off the async runtime.
async fn run_on(env: &Env, db: &str, args: &[&str]) -> Output {
    let mut cmd = env.command_on(&env.path(db), &[&["--simulate"], args].concat());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn ids(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect()
}

/// (custom_id, answer text): the parts of an output line that do not depend on the database
/// (the `id` is the job id of the database that ran it).
fn answers(lines: &[serde_json::Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| (l["custom_id"].as_str().unwrap().into(), answer(l).into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_and_a_merge_give_what_one_run_gives() {
    let env = Env::start(SimConfig::default()).await;
    let input = questions(60);
    env.write_input("in.jsonl", &input);
    // A fixed strategy: the bandit of each database would otherwise choose on its own.
    let common = ["--strategy", "direct", "--plain"];

    let whole_args = [&["batch", "in.jsonl", "-o", "whole.jsonl"], &common[..]].concat();
    let whole = run_on(&env, "whole.redb", &whole_args);
    let shard_runs = (0..SHARDS).map(|k| {
        let (db, spec, out) = (
            format!("shard-{k}.redb"),
            format!("{k}/{SHARDS}"),
            format!("out-{k}.jsonl"),
        );
        let env = &env;
        async move {
            let args = [
                &["batch", "in.jsonl", "--shard", &spec, "-o", &out],
                &common[..],
            ]
            .concat();
            run_on(env, &db, &args).await
        }
    });
    let (whole, shard_outs) = tokio::join!(whole, futures_util::future::join_all(shard_runs));
    assert!(whole.status.success(), "{}", stderr(&whole));
    let whole = read_jsonl(&env.path("whole.jsonl"));
    assert_eq!(whole.len(), 60);

    // Each shard ran exactly its own lines; together they are disjoint and cover the input.
    let mut seen = BTreeSet::new();
    for (k, out) in shard_outs.iter().enumerate() {
        assert!(out.status.success(), "shard {k}: {}", stderr(out));
        let shard = Shard::new(k as u64, SHARDS).unwrap();
        let lines = read_jsonl(&env.path(&format!("out-{k}.jsonl")));
        assert!(!lines.is_empty(), "shard {k} ran nothing");
        for id in ids(&lines) {
            assert!(shard.contains(&id), "{id} in the output of shard {k}");
            assert!(seen.insert(id.clone()), "{id} in two shards");
        }
        let summary = format!("shard {k}/{SHARDS}: {} of 60 lines", lines.len());
        assert!(stderr(out).contains(&summary), "{}", stderr(out));
        // The default batch name carries the shard.
        let status = run_on(&env, &format!("shard-{k}.redb"), &["status", "--json"]).await;
        let suffix = format!("-s{k}of{SHARDS}\"");
        assert!(support::stdout(&status).contains(&suffix), "{status:?}");
    }
    assert_eq!(seen.len(), 60);

    let merge = |parts: &[&str], shards: Option<&str>| {
        let mut args = vec!["merge", "merged.jsonl"];
        args.extend_from_slice(parts);
        args.extend(["--input", "in.jsonl"]);
        if let Some(n) = shards {
            args.extend(["--shards", n]);
        }
        let mut cmd = env.command(&args);
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let all = ["out-2.jsonl", "out-0.jsonl", "out-1.jsonl"];
    let out = merge(&all, Some("3")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("merged 60 lines"), "{}", stderr(&out));
    let merged = read_jsonl(&env.path("merged.jsonl"));
    assert_eq!(ids(&merged), ids(&whole), "same lines in the same order");
    assert_eq!(answers(&merged), answers(&whole), "same answers");
    assert_eq!(ids(&merged).iter().collect::<BTreeSet<_>>().len(), 60);
    std::fs::remove_file(env.path("merged.jsonl")).unwrap();

    // The first line of shard 1 is what a merge without shard 1 misses.
    let shard1 = Shard::new(1, SHARDS).unwrap();
    let in_order = ids(&whole);
    let (at, first1) = in_order
        .iter()
        .enumerate()
        .find(|(_, id)| shard1.contains(id))
        .unwrap();
    let out = merge(&["out-0.jsonl", "out-2.jsonl"], None).await;
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "missing: custom_id \"{first1}\" (in.jsonl line {}) is in no shard output",
        at + 1
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    let out = merge(&["out-0.jsonl", "out-2.jsonl"], Some("3")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--shards 3: 2 shard outputs given"),
        "{}",
        stderr(&out)
    );

    // A shard whose run did not finish (its output lacks its last line): the shard is named.
    let short = env.path("out-1-short.jsonl");
    let text = std::fs::read_to_string(env.path("out-1.jsonl")).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    std::fs::write(&short, kept[..kept.len() - 1].join("\n")).unwrap();
    let out = merge(
        &["out-0.jsonl", "out-1-short.jsonl", "out-2.jsonl"],
        Some("3"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is in no shard output; is shard 1/3 finished?"),
        "{}",
        stderr(&out)
    );

    // One output given twice: the first id both hold, and both files.
    let first0 = read_jsonl(&env.path("out-0.jsonl"))[0]["custom_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = merge(
        &["out-0.jsonl", "out-1.jsonl", "out-2.jsonl", "out-0.jsonl"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("duplicated: custom_id \"{first0}\"")),
        "{err}"
    );
    assert_eq!(err.matches("out-0.jsonl line 1").count(), 2, "{err}");

    // A failed merge writes nothing.
    assert!(!env.path("merged.jsonl").exists());
    let stray = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".tmp-"));
    assert!(!stray, "a temporary file was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_shard_is_refused_before_anything_runs() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input("in.jsonl", &questions(3));
    for (spec, expected) in [
        ("3/3", "K must be below N: the shards of 3 are 0/3 to 2/3"),
        ("x/2", "K must be a whole number, found \"x\""),
        ("0/0", "N must be at least 1"),
        ("1", "expected K/N (e.g. 0/3)"),
    ] {
        let out = run_on(&env, "db.redb", &["batch", "in.jsonl", "--shard", spec]).await;
        assert_eq!(out.status.code(), Some(2), "{spec}");
        let err = stderr(&out);
        assert!(err.contains("--shard"), "{spec}: {err}");
        assert!(err.contains(expected), "{spec}: {err}");
    }
    assert!(!env.path("db.redb").exists());
    assert_eq!(env.server.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_no_lines_succeeds_with_an_empty_output() {
    let env = Env::start(SimConfig::default()).await;
    // q0000 is in shard 0 of 3 (pinned in src/batch/shard.rs), so shard 1 has nothing.
    env.write_input("in.jsonl", &questions(1));
    let out = run_on(
        &env,
        "db.redb",
        &["batch", "in.jsonl", "--shard", "1/3", "-o", "out.jsonl"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shard 1/3: 0 of 1 lines"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(env.path("out.jsonl")).unwrap(), "");
    assert!(Path::new(&env.path("out.jsonl")).exists());
}
