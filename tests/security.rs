//! Security properties of a real run: the API key never appears in any output, log or file
//! (the database included), the database file is private, and oversized input is refused
//! with an error naming the file and line.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reasonq::sim::{Fault, Reply, SimConfig};
use serde_json::Value;
use support::{questions, read_jsonl, stderr, Env};

const SECRET: &str = "sk-reasonq-TEST-7f3a9c51e2d84b06-never-log-me";

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_appears_in_no_output_log_or_file_of_a_traced_run() {
    let env = Env::start(SimConfig {
        api_key: Some(SECRET.into()),
        ..SimConfig::default()
    })
    .await;
    // Exercise the error paths too: a retried 500, and a provider that echoes the key back
    // in an error body (which is stored and exported).
    let n = Arc::new(AtomicU64::new(0));
    env.server.set_responder(Arc::new(move |body: &Value| {
        let prompt = body["messages"][0]["content"].as_str().unwrap_or_default();
        match (prompt, n.fetch_add(1, Ordering::Relaxed)) {
            ("question number 0", _) => Reply::Fault(Fault::Raw {
                status: 400,
                content_type: "application/json".into(),
                body: format!(
                    r#"{{"error":{{"message":"bad request for key {SECRET}","code":"bad"}}}}"#
                ),
            }),
            (_, 1) => Reply::Fault(Fault::status(500)),
            _ => Reply::Text("fine".into()),
        }
    }));
    env.write_input("in.jsonl", &questions(4));
    let out = env
        .run_with_env(
            &["--log", "trace", "batch", "in.jsonl", "-o", "out.jsonl"],
            &[
                ("REASONQ_API_KEY", SECRET),
                ("REASONQ_QUEUE_BACKOFF_BASE_S", "0"),
            ],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("TRACE") || stderr(&out).contains("trace"),
        "the run logged at trace level"
    );
    let answered = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(answered.len(), 4, "the key was accepted by the server");
    assert!(
        env.server.stats().requests >= 5,
        "the 500 and the echoing 400 were served"
    );

    let mut searched = vec![("stdout".to_string(), out.stdout.clone())];
    searched.push(("stderr".to_string(), out.stderr.clone()));
    for path in files_under(env.dir.path()) {
        searched.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    // The search does see what a run stores: the prompts are in the database file.
    let db = &searched
        .iter()
        .find(|(name, _)| name.ends_with(".redb"))
        .unwrap()
        .1;
    assert!(contains(db, "question number 3"));
    for (name, bytes) in &searched {
        assert!(!contains(bytes, SECRET), "the API key leaked into {name}");
    }
    let mode = std::fs::metadata(env.db()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the database is private to its owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_size_limit_is_refused_with_its_file_and_line() {
    let env = Env::start(SimConfig::default()).await;
    let mut lines = questions(2);
    let huge = "x".repeat(reasonq::batch::input::MAX_LINE_BYTES);
    lines.insert(1, format!(r#"{{"id":"big","question":"{huge}"}}"#));
    env.write_input("in.jsonl", &lines);
    let out = env.run(&["batch", "in.jsonl", "-o", "out.jsonl"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("in.jsonl:2:") && err.contains("over the limit"),
        "{err}"
    );
    assert_eq!(env.server.stats().requests, 0, "nothing was sent");
}

/// Runs `reasonq` in `env`'s folder on its database, with only `vars` of the key variables.
fn reasonq(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_reasonq"));
    cmd.current_dir(env.dir.path())
        .arg("--db")
        .arg(env.db())
        .args(args)
        .stdin(std::process::Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("REASONQ_") || key.ends_with("_API_KEY") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(vars.iter().copied()).output().unwrap()
}

/// A base URL from a config file or a flag cannot pull a provider's key to another host:
/// `XAI_API_KEY` goes to x.ai only, and no key goes over plain http beyond loopback. The
/// refusals happen before any connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_key_never_goes_to_another_host() {
    let env = Env::start(SimConfig {
        api_key: Some(SECRET.into()),
        ..SimConfig::default()
    })
    .await;
    // A cloned repository's reasonq.toml pointing at someone else's server.
    std::fs::write(
        env.path("reasonq.toml"),
        "base_url = \"https://collector.example.com/v1\"\n",
    )
    .unwrap();
    let xai = [("XAI_API_KEY", SECRET)];
    let out = reasonq(&env, &["models"], &xai);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no API key for collector.example.com: set REASONQ_API_KEY"),
        "{}",
        stderr(&out)
    );
    // Plain http to a host that is not this machine: even a key named on purpose is refused.
    let plain = [
        "--base-url",
        "http://gpu-box.invalid/v1",
        "--api-key-env",
        "XAI_API_KEY",
    ];
    let out = reasonq(&env, &[&plain[..], &["models"]].concat(), &xai);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("plain http"), "{}", stderr(&out));
    assert!(!contains(&out.stdout, SECRET) && !contains(&out.stderr, SECRET));
    // The loopback server gets the key of the variable the user names, and answers.
    let base = env.server.base_url();
    let named = [
        "--base-url",
        base.as_str(),
        "--api-key-env",
        "MY_GATEWAY_KEY",
        "models",
    ];
    let out = reasonq(&env, &named, &[("MY_GATEWAY_KEY", SECRET)]);
    assert!(out.status.success(), "{}", stderr(&out));
}
