//! A database on a nearly full filesystem: the run fails with a clear "disk is full" error,
//! and once there is room again every job committed before the fault is intact and the same
//! command finishes the batch.
//!
//! The filesystem is a 1 MiB tmpfs when this process may mount one (root), otherwise the
//! binary runs under `ulimit -f` (writes past the limit fail with EFBIG); when neither is
//! possible the test says why and passes.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use reasonq::queue::JobState;
use reasonq::sim::SimConfig;
use reasonq::store::{Store, StoreConfig};
use support::{questions, stderr, Env};

/// Long prompts, so a few hundred jobs outgrow the 1 MiB limit.
fn big_questions(n: usize, tag: &str) -> Vec<String> {
    let filler = "y".repeat(4_000);
    (0..n)
        .map(|i| format!(r#"{{"id":"{tag}{i:04}","question":"{tag} {i} {filler}"}}"#))
        .collect()
}

/// How the disk is made small.
enum Limit {
    /// A tmpfs mounted on the env's `disk` folder; remounted larger to make room.
    Tmpfs(std::path::PathBuf),
    /// `ulimit -f` in KiB for the `reasonq` process; lifted to make room.
    FileSize(u64),
}

fn sh(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn small_disk(env: &Env) -> Option<Limit> {
    let disk = env.path("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = sh(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&disk));
    if mounted {
        return Some(Limit::Tmpfs(disk));
    }
    if sh(Command::new("bash").args(["-c", "ulimit -f 1024"])) {
        return Some(Limit::FileSize(1024));
    }
    None
}

impl Limit {
    fn db(&self, env: &Env) -> std::path::PathBuf {
        env.path("disk").join("full.redb")
    }

    /// Runs `reasonq batch <name>.jsonl --batch <name>` on the small disk.
    async fn batch(&self, env: &Env, name: &str) -> Output {
        let (input, output) = (format!("{name}.jsonl"), format!("{name}.out.jsonl"));
        let args = ["batch", &input, "--batch", name, "-o", &output];
        let inner = env.command_on(&self.db(env), &args);
        let mut cmd = match self {
            Limit::Tmpfs(_) => inner,
            Limit::FileSize(kib) => {
                let mut cmd = Command::new("bash");
                cmd.current_dir(env.dir.path())
                    .arg("-c")
                    .arg(format!("ulimit -f {kib}; trap '' XFSZ; exec \"$0\" \"$@\""))
                    .arg(inner.get_program())
                    .args(inner.get_args())
                    .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
                for (k, v) in inner.get_envs() {
                    if v.is_none() {
                        cmd.env_remove(k);
                    }
                }
                cmd
            }
        };
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    fn make_room(&mut self) {
        match self {
            Limit::Tmpfs(dir) => assert!(sh(Command::new("mount")
                .args(["-o", "remount,size=64m", "tmpfs"])
                .arg(&*dir))),
            Limit::FileSize(kib) => *kib = 1 << 20,
        }
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        if let Limit::Tmpfs(dir) = self {
            let _ = Command::new("umount").arg(&*dir).status();
        }
    }
}

fn jobs_of(db: &Path, batch: &str) -> Vec<reasonq::queue::Job> {
    let store = Store::open(StoreConfig::new(db)).unwrap();
    let batch = batch.to_string();
    let jobs = store
        .read_blocking(move |txn| reasonq::queue::jobs_in_queue_read(txn, &batch))
        .unwrap();
    store.close().unwrap();
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_loses_no_committed_job() {
    let env = Env::start(SimConfig::default()).await;
    let Some(mut limit) = small_disk(&env) else {
        eprintln!("skipped: cannot mount a tmpfs nor set `ulimit -f` here");
        return;
    };
    let db = limit.db(&env);

    // A small batch fits and completes.
    env.write_input("small.jsonl", &questions(20));
    let out = limit.batch(&env, "small").await;
    assert!(out.status.success(), "{}", stderr(&out));

    // A large one does not fit: a clear error, not a crash.
    env.write_input("big.jsonl", &big_questions(400, "big"));
    let out = limit.batch(&env, "big").await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the disk is full or the database file may not grow"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // With room again, nothing committed before the fault is lost.
    limit.make_room();
    let small = jobs_of(&db, "small");
    assert_eq!(small.len(), 20);
    assert!(small
        .iter()
        .all(|j| j.state == JobState::Completed && j.result.is_some()));
    let big_before: Vec<_> = jobs_of(&db, "big")
        .into_iter()
        .filter(|j| j.state == JobState::Completed)
        .collect();

    // And the same command finishes the batch, keeping what was already done.
    let out = limit.batch(&env, "big").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let big = jobs_of(&db, "big");
    assert_eq!(big.len(), 400);
    assert!(big.iter().all(|j| j.state == JobState::Completed));
    for done in &big_before {
        let now = big.iter().find(|j| j.id == done.id).unwrap();
        assert_eq!(now.result, done.result, "job {} kept its result", done.id);
    }
}
