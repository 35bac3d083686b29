//! Running a batch again after its file changed, or against another name for its server:
//! nothing is paid for twice, nothing stale is drained, the output follows the file.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reasonq::sim::{Fault, Reply, SimConfig};
use serde_json::Value;
use support::{questions, read_jsonl, stderr, Env};

/// The states of the first batch in `status --json` output.
fn states(out: &std::process::Output) -> Value {
    let list: Value = serde_json::from_str(&support::stdout(out)).unwrap();
    list[0]["states"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_file_gets_its_own_order_and_new_options_and_removed_lines_cost_nothing() {
    let env = Env::start(SimConfig::default()).await;
    let line =
        |id: &str, q: &str, extra: &str| format!(r#"{{"id":"{id}","question":"{q}"{extra}}}"#);
    let v1 = [
        line("a", "first", ""),
        line("b", "second", ""),
        line("c", "third", ""),
    ];
    env.write_input("in.jsonl", &v1);
    let run = ["batch", "in.jsonl", "--batch", "t", "-o", "out.jsonl"];
    let out = env.run(&run).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.server.stats().by_prompt.values().sum::<u64>(), 3);

    // Reordered, one line with a new strategy, one removed, one added.
    let v2 = [
        line("c", "third", ""),
        line("a", "first", r#","strategy":"chain_of_thought""#),
        line("d", "fourth", ""),
    ];
    env.write_input("in.jsonl", &v2);
    let out = env.run(&run).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = read_jsonl(&env.path("out.jsonl"))
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["c", "a", "d"], "the output follows the current file");
    // `a` with its new strategy and the new `d` were asked; `c` was not asked again.
    let stats = env.server.stats();
    assert_eq!(stats.by_prompt.values().sum::<u64>(), 5);
    assert_eq!(stats.by_prompt["third"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jobs_of_removed_lines_are_cancelled_not_paid_for() {
    let env = Env::start(SimConfig::default()).await;
    // The first three calls are refused for the account: the first run stops with most
    // lines still waiting.
    let n = Arc::new(AtomicU64::new(0));
    env.server.set_responder(Arc::new(move |body: &Value| {
        let p = body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if n.fetch_add(1, Ordering::Relaxed) < 3 {
            Reply::Fault(Fault::status(401))
        } else {
            Reply::Text(format!("answer to {p}"))
        }
    }));
    let all = questions(10);
    env.write_input("in.jsonl", &all);
    let run = ["batch", "in.jsonl", "--batch", "t", "--concurrency", "1"];
    let out = env.run(&run).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // Lines 6 to 10 leave the file before the next run.
    env.write_input("in.jsonl", &all[..5]);
    let out = env.run(&run).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "5 waiting jobs of lines no longer in the file (removed or edited) were cancelled"
        ),
        "{}",
        stderr(&out)
    );
    let stats = env.server.stats();
    for i in 5..10 {
        assert_eq!(stats.by_prompt.get(&format!("question number {i}")), None);
    }
    let states = states(&env.run(&["status", "--json"]).await);
    assert_eq!(states["cancelled"], 5, "{states}");
    assert_eq!(read_jsonl(&env.path("in.out.jsonl")).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_against_another_name_for_the_server_stops_unless_asked() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input("in.jsonl", &questions(3));
    let out = env.run(&["batch", "in.jsonl", "--batch", "t"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = env.server.stats().by_prompt.values().sum::<u64>();

    // The same server, as localhost: every line would be enqueued and paid for again.
    let other = env.server.base_url().replace("127.0.0.1", "localhost");
    let again = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_reasonq"));
        cmd.current_dir(env.dir.path())
            .arg("--db")
            .arg(env.db())
            .args(["--base-url", &other, "batch", "in.jsonl", "--batch", "t"])
            .args(extra)
            .stdin(std::process::Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("REASONQ_") || key.ends_with("_API_KEY") {
                cmd.env_remove(key);
            }
        }
        cmd.output().unwrap()
    };
    let out = again(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("batch t ran against {}", env.server.base_url())),
        "{err}"
    );
    assert!(err.contains("--rerun"), "{err}");
    assert_eq!(env.server.stats().by_prompt.values().sum::<u64>(), calls);

    // Asked for: answered again there.
    let out = again(&["--rerun"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.server.stats().by_prompt.values().sum::<u64>(),
        calls + 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_the_same_file_skips_the_enqueue_pass_and_any_change_makes_it_again() {
    const SKIPPED: &str = "input unchanged since its last enqueue";
    let env = Env::start(SimConfig::default()).await;
    let mut lines = questions(20);
    env.write_input("in.jsonl", &lines);
    let run = |extra: &'static [&'static str]| {
        let mut args = vec!["--log", "info", "batch", "in.jsonl", "--batch", "t"];
        args.extend(["-o", "out.jsonl"]);
        args.extend(extra);
        env.command(&args).output().unwrap()
    };
    let asked = || env.server.stats().by_prompt.values().sum::<u64>();
    let first = run(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!stderr(&first).contains(SKIPPED));
    let output = std::fs::read(env.path("out.jsonl")).unwrap();

    let again = run(&[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains(SKIPPED), "{}", stderr(&again));
    assert_eq!(std::fs::read(env.path("out.jsonl")).unwrap(), output);
    assert_eq!(asked(), 20);

    // Another run option makes other jobs: the pass runs (answers come from the cache),
    // and the next rerun with the same option skips it again.
    let memory = run(&["--memory"]);
    assert!(memory.status.success(), "{}", stderr(&memory));
    assert!(!stderr(&memory).contains(SKIPPED));
    assert!(stderr(&run(&["--memory"])).contains(SKIPPED));

    // An edit of the same length is still another file.
    lines[3] = lines[3].replace("question number 3", "question number X");
    env.write_input("in.jsonl", &lines);
    let edited = run(&["--memory"]);
    assert!(edited.status.success(), "{}", stderr(&edited));
    assert!(!stderr(&edited).contains(SKIPPED));
    let out = read_jsonl(&env.path("out.jsonl"));
    assert!(
        support::answer(&out[3]).contains("question number X"),
        "{}",
        out[3]
    );
    assert_eq!(asked(), 21);
}
