//! Shared helpers of the integration tests: a simulated API server on loopback and a way to
//! run the real `reasonq` binary against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reasonq::sim::{SimConfig, SimServer};

/// A temporary folder with a database, and a simulated API.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: SimServer,
}

impl Env {
    /// Starts a server with `config` (call inside a tokio runtime).
    pub async fn start(config: SimConfig) -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            server: SimServer::start(config).await.unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db(&self) -> PathBuf {
        self.path("reasonq.redb")
    }

    /// A `reasonq` command against this env's database and server, with no API key and no
    /// stray configuration from the environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_on(&self.db(), args)
    }

    /// [`Env::command`] against the database at `db`.
    pub fn command_on(&self, db: &Path, args: &[&str]) -> Command {
        self.command_at(db, &self.server.base_url(), args)
    }

    /// [`Env::command_on`] against another base URL (a protocol's mount of the server).
    pub fn command_at(&self, db: &Path, base_url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reasonq"));
        cmd.current_dir(self.dir.path())
            .arg("--db")
            .arg(db)
            .arg("--base-url")
            .arg(base_url)
            .args(args)
            .stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("REASONQ_") || key.ends_with("_API_KEY") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Runs `reasonq` to the end off the async runtime.
    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[]).await
    }

    /// [`Env::run`] with extra environment variables.
    pub async fn run_with_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(vars.iter().copied());
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// Writes `lines` as a JSONL file and returns its path.
    pub fn write_input(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }
}

/// Spawns `cmd` (a `serve` or `view`) with its stderr read on a thread and waits, up to a
/// minute, for the `http://` address it prints: the child, that address, and the rest of
/// its stderr lines.
pub fn spawn_serving(mut cmd: Command) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("it printed its address");
        if let Some(at) = line.find("http://") {
            break line[at..].split_whitespace().next().unwrap().to_string();
        }
    };
    (child, address, rx)
}

/// Short-form input lines `{"id":"q{i}","question":"question number {i}"}`.
pub fn questions(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(r#"{{"id":"q{i:04}","question":"question number {i}","params":{{"temperature":0}}}}"#)
        })
        .collect()
}

/// Reads a JSONL file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answer text of an output line.
pub fn answer(line: &serde_json::Value) -> &str {
    line["response"]["body"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}
