//! The read-only commands during a batch, through the real binary: the batch's process holds
//! the database and answers them over `<db>.sock` (`app::live`).

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use reasonq::sim::{RandomFaults, SimConfig};
use serde_json::Value;
use support::{questions, stderr, stdout, Env};

fn with_latency(ms: u64) -> SimConfig {
    SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(ms / 2),
            latency_max: Duration::from_millis(ms),
            ..RandomFaults::default()
        }),
        ..SimConfig::default()
    }
}

fn socket(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".sock");
    PathBuf::from(name)
}

/// `reasonq batch` in the background, slow enough to be watched for a few seconds.
fn start_batch(env: &Env, input: &str, batch: &str) -> Child {
    env.command(&[
        "batch",
        input,
        "--batch",
        batch,
        "--concurrency",
        "2",
        "--plain",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

async fn wait_for_socket(db: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket(db).exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the batch ended before it served"
        );
        assert!(Instant::now() < deadline, "no socket at {:?}", socket(db));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// Runs a command that must succeed and returns its stdout.
async fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.run(args).await;
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn row<'a>(status: &'a Value, batch: &str) -> &'a Value {
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["batch"] == batch)
        .unwrap_or_else(|| panic!("no row for {batch} in {status}"))
}

fn state_sum(row: &Value) -> u64 {
    row["states"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// `stats` without the lines a running batch moves (experiences and cached responses).
fn stable_stats(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("cache hit ratio") && !l.starts_with("experiences stored"))
        .map(String::from)
        .collect()
}

/// Every read-only command, asked of a running batch, prints what it prints when it opens the
/// database itself: byte for byte for a finished batch, the same shape for the running one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_batch_the_read_commands_answer_as_if_they_opened_the_database() {
    let env = Env::start(with_latency(300)).await;
    env.write_input("first.jsonl", &questions(6));
    let second: Vec<String> = questions(40)
        .iter()
        .map(|l| l.replace("question number", "another question"))
        .collect();
    env.write_input("second.jsonl", &second);
    ok(&env, &["batch", "first.jsonl", "--batch", "first"]).await;

    // What each command prints with the database to itself.
    let reads: [&[&str]; 7] = [
        &["jobs", "list", "--batch", "first", "--json"],
        &["jobs", "list", "--batch", "first"],
        &["jobs", "show", "3"],
        &["results", "first", "--json"],
        &["results", "first"],
        &["status"],
        &["status", "--json"],
    ];
    let mut direct = Vec::new();
    for args in reads {
        direct.push(ok(&env, args).await);
    }
    let direct_stats = ok(&env, &["stats"]).await;
    let first_row = row(&json(&direct[6]), "first").clone();

    let started = Instant::now();
    let mut child = start_batch(&env, "second.jsonl", "second");
    wait_for_socket(&env.db(), &mut child).await;
    let meta = std::fs::symlink_metadata(socket(&env.db())).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // The finished batch reads the same, byte for byte, from the running process.
    for (args, want) in reads[..5].iter().zip(&direct) {
        assert_eq!(&ok(&env, args).await, want, "{args:?}");
    }
    assert_eq!(
        stable_stats(&ok(&env, &["stats"]).await),
        stable_stats(&direct_stats)
    );

    // The running batch: counts that add up to it, and move.
    let first_status = json(&ok(&env, &["status", "--json"]).await);
    assert_eq!(row(&first_status, "first"), &first_row);
    let first_second = row(&first_status, "second").clone();
    assert_eq!(first_second["total"], 40);
    assert_eq!(state_sum(&first_second), 40);
    let mut moved = None;
    while moved.is_none() && child.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = env.run(&["status", "--json"]).await;
        if !out.status.success() {
            break; // the batch ended between the check and the call
        }
        let now = row(&json(&stdout(&out)), "second").clone();
        assert_eq!(state_sum(&now), 40);
        if now["states"]["completed"] != first_second["states"]["completed"] {
            moved = Some(now);
        }
    }
    let moved = moved.expect("status never moved while the batch ran");
    assert!(moved["states"]["completed"].as_u64() > first_second["states"]["completed"].as_u64());

    let listed = json(&ok(&env, &["jobs", "list", "--json", "--limit", "100"]).await);
    assert_eq!(listed.as_array().unwrap().len(), 46);
    let running_results = ok(&env, &["results", "second", "--json"]).await;
    assert_eq!(running_results.lines().count(), 40);
    assert!(ok(&env, &["status"]).await.contains("second"));

    // Writing commands are refused with what works meanwhile.
    for args in [
        &["jobs", "retry", "3"][..],
        &["cleanup"],
        &["jobs", "cancel", "3"],
    ] {
        let out = env.run(args).await;
        assert!(!out.status.success(), "{args:?} ran during the batch");
        let err = stderr(&out);
        assert!(err.contains("already open in another process"), "{err}");
        assert!(err.contains("`reasonq status`"), "{err}");
    }
    let unknown = env.run(&["results", "nope"]).await;
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("no batch named \"nope\""));
    assert!(env.run(&["jobs", "show", "999"]).await.status.code() == Some(1));

    let out = finish(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(!socket(&env.db()).exists(), "the socket outlived its batch");
    eprintln!("batch watched for {:?}", started.elapsed());

    // After the batch: the same shapes, now complete.
    let after = json(&ok(&env, &["status", "--json"]).await);
    let done = row(&after, "second");
    assert_eq!(done["states"]["completed"], 40);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(done), keys(&first_second));
    assert_eq!(row(&after, "first"), &first_row);
    let after_results = ok(&env, &["results", "second", "--json"]).await;
    let ids =
        |text: &str| -> Vec<Value> { text.lines().map(|l| json(l)["custom_id"].clone()).collect() };
    assert_eq!(ids(&after_results), ids(&running_results));
}

/// A batch killed with -9 leaves its socket behind; neither the next status nor the next
/// batch is stopped by it, and the next batch serves on it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_from_a_killed_batch_is_replaced() {
    let env = Env::start(with_latency(300)).await;
    env.write_input("q.jsonl", &questions(30));
    let mut child = start_batch(&env, "q.jsonl", "q");
    wait_for_socket(&env.db(), &mut child).await;
    // Killed once its lines are enqueued (it answers for them).
    loop {
        let out = env.run(&["status", "--json"]).await;
        if out.status.success() && !json(&stdout(&out)).as_array().unwrap().is_empty() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the batch ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    finish(child).await;
    assert!(
        socket(&env.db()).exists(),
        "a killed process removes nothing"
    );

    let status = json(&ok(&env, &["status", "--json"]).await);
    assert_eq!(row(&status, "q")["total"], 30);

    let mut child = start_batch(&env, "q.jsonl", "q");
    // The new process's socket answers (the stale one refused connections). Nothing else
    // opens the database meanwhile: a command holding it would keep the batch from starting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket_is_live(&env.db()) {
        if child.try_wait().unwrap().is_some() {
            let out = finish(child).await;
            panic!(
                "the batch ended before its socket answered: {}",
                stderr(&out)
            );
        }
        assert!(Instant::now() < deadline, "the next batch never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = json(&ok(&env, &["status", "--json"]).await);
    assert_eq!(state_sum(row(&status, "q")), 30);
    let out = finish(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(!socket(&env.db()).exists());
}

fn socket_is_live(db: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket(db)).is_ok()
}

/// A database whose socket path would not fit a Unix socket (108 bytes) still runs its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_path_too_long_leaves_the_batch_running_with_a_warning() {
    let env = Env::start(SimConfig::default()).await;
    let deep = env.path(&"d".repeat(120));
    std::fs::create_dir_all(&deep).unwrap();
    let db = deep.join("reasonq.redb");
    env.write_input("q.jsonl", &questions(3));
    let cmd = env.command_on(&db, &["batch", "q.jsonl", "--plain"]);
    let out = tokio::task::spawn_blocking(move || { cmd }.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("warning: other commands cannot ask"), "{err}");
    assert!(err.contains("3 of 3 requests answered"), "{err}");
}

/// A process that holds the database without serving it (`reasonq submit`): the read-only
/// commands say so instead of promising an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_serves_nothing_is_named_as_such() {
    let env = Env::start(with_latency(6_000)).await;
    let child = env
        .command(&["submit", "what is 2 + 2?"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Nothing opens the file before submit has it (that would keep submit from starting).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.db().exists() {
        assert!(
            Instant::now() < deadline,
            "submit never created the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = loop {
        assert!(Instant::now() < deadline, "submit never held the database");
        let out = env.run(&["status"]).await;
        if !out.status.success() {
            break stderr(&out);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(err.contains("answers no queries"), "{err}");
    let out = finish(child).await;
    assert!(out.status.success());
}

/// `GET` of `path` on `addr`, the body as text (plain HTTP/1.1 over a socket: no client
/// crate needed for one line).
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of a sample named `name` (no labels) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_prometheus_text_that_moves_during_the_batch() {
    let env = Env::start(with_latency(300)).await;
    env.write_input("in.jsonl", &questions(40));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = env
        .command(&[
            "batch",
            "in.jsonl",
            "--concurrency",
            "4",
            "--plain",
            "--metrics-listen",
            &addr,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        if let Some(text) = http_get(&addr, "/metrics") {
            let body = text
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            if let Some(sent) = sample(&body, "reasonq_requests_sent_total") {
                seen.push(sent);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("metrics: http://{addr}/metrics")));
    assert!(seen.len() >= 2, "too few scrapes: {seen:?}");
    assert!(
        seen.last() > seen.first(),
        "the request counter did not move: {seen:?}"
    );
    // Gone with the batch.
    assert!(http_get(&addr, "/healthz").is_none());
}

/// A read-only command holds a free database for a moment; a batch started in that moment
/// waits for it instead of failing with "already open".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_started_while_a_command_briefly_holds_the_database_waits_for_it() {
    use reasonq::store::{Store, StoreConfig};
    let env = Env::start(SimConfig::default()).await;
    let input = env.write_input("q.jsonl", &questions(3));
    let holder = Store::open(StoreConfig::new(env.db())).unwrap();
    let batch = env
        .command(&["batch", input.to_str().unwrap(), "--batch", "waited"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    holder.close().unwrap();
    drop(holder);
    let out = finish(batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.server.stats().live_chats, 3);
}
