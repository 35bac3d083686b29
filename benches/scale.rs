//! Scale (issue 10): `reasonq batch` on 10k, 100k and 1M distinct prompts, each size beside
//! the bare hyper-util pool sending the same requests in the same run. Per size: the batch's
//! wall time, rate, peak RSS, database size and bytes per line; a rerun on the finished
//! database; `status`; a cached replay (a second batch of the same prompts, all disk-cache
//! hits); then where the database's bytes go, per table, for the largest size.
//!
//! `bash benches/scale.sh` runs it against nginx on loopback (`SCALE_BASE_URL`); without it,
//! an in-process server answers (sharing the cores). `SCALE_SIZES` (default
//! 10000,100000,1000000), `SCALE_TIMEOUT` seconds per run (default 900), `SCALE_DIR` for the
//! work files (default the temp dir). Prints a markdown table to stdout, progress to stderr.

#[path = "bare_pool/mod.rs"]
mod bare_pool;

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use reasonq::sim::{SimConfig, SimServer};

const CONCURRENCY: usize = 64;
/// The bare pool's rate is flat in N; 200k requests measure it well enough for 1M.
const BARE_CAP: usize = 200_000;
const BARE_ROUNDS: usize = 3;
const STATUS_RUNS: usize = 5;
const BIN: &str = env!("CARGO_BIN_EXE_reasonq");
const GNU_TIME: &str = "/usr/bin/time";

fn prompt(i: usize) -> String {
    format!("Question {i}: what is {i} + {i}? Answer briefly.")
}

fn write_input(path: &Path, n: usize) -> std::io::Result<()> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            w,
            "{{\"id\":\"q{i}\",\"question\":\"{}\",\"params\":{{\"temperature\":0}}}}",
            prompt(i)
        )?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn count_lines(path: &Path) -> std::io::Result<usize> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut n = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(n);
        }
        n += buf.iter().filter(|&&b| b == b'\n').count();
        let len = buf.len();
        r.consume(len);
    }
}

/// One run of the binary.
struct Ran {
    wall: Duration,
    /// `None`: killed at the timeout.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    /// Peak RSS measured from outside (GNU time, or polling VmHWM), KiB.
    external_rss_kb: Option<u64>,
}

impl Ran {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// `peak RSS: X MB` as the binary prints it with `--plain`.
    fn reported_rss_mb(&self) -> Option<f64> {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("peak RSS: "))
            .and_then(|v| v.trim_end_matches(" MB").parse().ok())
    }

    /// Why the run is not a figure, or `None` when it is one.
    fn failure(&self) -> Option<String> {
        match self.status {
            None => Some("timeout".into()),
            Some(s) if !s.success() => Some(format!("failed ({s})")),
            Some(_) => None,
        }
    }
}

struct Bench {
    base: String,
    timeout: Duration,
    gnu_time: bool,
}

impl Bench {
    /// Runs `reasonq --db DB --base-url URL ARGS` in `dir`, killed after the timeout.
    fn run(&self, dir: &Path, db: &Path, args: &[&str], rss: bool) -> Ran {
        let rss_file = dir.join("time-v.txt");
        let out_file = dir.join("stdout.txt");
        let err_file = dir.join("stderr.txt");
        let _ = std::fs::remove_file(&rss_file);
        let mut cmd = if rss && self.gnu_time {
            let mut c = Command::new(GNU_TIME);
            c.arg("-v").arg("-o").arg(&rss_file).arg(BIN);
            c
        } else {
            Command::new(BIN)
        };
        cmd.current_dir(dir)
            .arg("--db")
            .arg(db)
            .args(["--base-url", &self.base])
            .args(args)
            .stdin(Stdio::null())
            // Files, not pipes: nothing to drain while waiting.
            .stdout(std::fs::File::create(&out_file).expect("stdout file"))
            .stderr(std::fs::File::create(&err_file).expect("stderr file"));
        // No stray configuration or key from the environment.
        for (key, _) in std::env::vars() {
            if key.starts_with("REASONQ_") || key.ends_with("_API_KEY") {
                cmd.env_remove(key);
            }
        }
        // Its own process group, so a timeout kills GNU time and reasonq together.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn reasonq");
        let pid = child.id();
        // Waiting on a thread gives an exact wall time; the main thread polls VmHWM meanwhile.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().map(|s| (s, Instant::now())));
        });
        let poll = rss && !self.gnu_time;
        let mut hwm_kb = None;
        let (status, ended) = loop {
            let left = self.timeout.saturating_sub(started.elapsed());
            let step = if poll {
                left.min(Duration::from_millis(20))
            } else {
                left
            };
            match rx.recv_timeout(step) {
                Ok(Ok((s, at))) => break (Some(s), at),
                Ok(Err(e)) => panic!("wait for reasonq: {e}"),
                Err(_) if started.elapsed() >= self.timeout => {
                    kill_run(pid, &rx);
                    break (None, Instant::now());
                }
                Err(_) => {
                    if poll {
                        hwm_kb = vm_hwm_kb(pid).max(hwm_kb);
                    }
                }
            }
        };
        let external_rss_kb = if rss && self.gnu_time {
            std::fs::read_to_string(&rss_file).ok().and_then(|t| {
                t.lines()
                    .find_map(|l| {
                        l.trim()
                            .strip_prefix("Maximum resident set size (kbytes): ")
                    })
                    .and_then(|v| v.trim().parse().ok())
            })
        } else {
            hwm_kb
        };
        Ran {
            wall: ended - started,
            status,
            stdout: std::fs::read_to_string(&out_file).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_file).unwrap_or_default(),
            external_rss_kb,
        }
    }
}

/// Kills a run at its timeout: reasonq under GNU time first, so time reaps it (no orphan),
/// then the whole process group if anything is left.
fn kill_run<T>(pid: u32, exited: &std::sync::mpsc::Receiver<T>) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", child]).status();
    }
    if children.trim().is_empty() || exited.recv_timeout(Duration::from_secs(5)).is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        let _ = exited.recv();
    }
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `reasonq stats --tables --json`, parsed.
struct Sizes {
    file_bytes: u64,
    /// (name, rows, stored, metadata, fragmented), largest first.
    tables: Vec<(String, u64, u64, u64, u64)>,
}

impl Sizes {
    /// Bytes of every table's pages.
    fn in_tables(&self) -> u64 {
        self.tables.iter().map(|t| t.2 + t.3 + t.4).sum()
    }

    /// Bytes of keys and values.
    fn stored(&self) -> u64 {
        self.tables.iter().map(|t| t.2).sum()
    }
}

fn parse_sizes(json: &str) -> Option<Sizes> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let n = |t: &serde_json::Value, k: &str| t[k].as_u64().unwrap_or(0);
    Some(Sizes {
        file_bytes: v["file_bytes"].as_u64()?,
        tables: v["tables"]
            .as_array()?
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap_or("?").to_string(),
                    n(t, "rows"),
                    n(t, "stored_bytes"),
                    n(t, "metadata_bytes"),
                    n(t, "fragmented_bytes"),
                )
            })
            .collect(),
    })
}

/// One size's figures; `None` cells print as a dash, failures as their reason.
#[derive(Default)]
struct Row {
    lines: usize,
    batch: Option<Result<Duration, String>>,
    bare_rate: Option<Result<f64, String>>,
    reported_rss_mb: Option<f64>,
    external_rss_kb: Option<u64>,
    db_bytes: Option<u64>,
    rerun: Option<Result<Duration, String>>,
    status_ms: Option<Result<f64, String>>,
    replay: Option<Result<Duration, String>>,
    replay_hits: Option<u64>,
    db_after_replay: Option<u64>,
    sizes: Option<Sizes>,
    sizes_after_replay: Option<Sizes>,
    notes: Vec<String>,
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .expect("SCALE_SIZES: numbers")
        })
        .collect();
    let timeout = Duration::from_secs(
        std::env::var("SCALE_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(900),
    );
    let root = std::env::var_os("SCALE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Kept alive for the whole run when there is no external server.
    let mut _sim = None;
    let base = match std::env::var("SCALE_BASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let server = rt
                .block_on(SimServer::start(SimConfig {
                    fast: true,
                    record_requests: false,
                    ..SimConfig::default()
                }))
                .expect("server");
            let url = server.base_url();
            _sim = Some(server);
            eprintln!("scale: no SCALE_BASE_URL, using the in-process server at {url}");
            url
        }
    };
    let bench = Bench {
        base: base.clone(),
        timeout,
        gnu_time: Path::new(GNU_TIME).exists(),
    };
    let url = format!("{base}/chat/completions");
    let mut rows = Vec::new();
    for &n in &sizes {
        let dir = tempfile::tempdir_in(&root).expect("work dir");
        let row = measure(&bench, &rt, &url, dir.path(), n);
        rows.push(row);
        // The work dir (a 1M database is GBs) goes now, before the next size.
        drop(dir);
    }
    print_table(&rows, &bench);
}

fn measure(bench: &Bench, rt: &tokio::runtime::Runtime, url: &str, dir: &Path, n: usize) -> Row {
    let mut row = Row {
        lines: n,
        ..Row::default()
    };
    let input = dir.join("in.jsonl");
    let t = Instant::now();
    write_input(&input, n).expect("input");
    eprintln!(
        "scale {n}: input {:.1} MB written in {:.1} s",
        mb(std::fs::metadata(&input).map_or(0, |m| m.len())),
        t.elapsed().as_secs_f64()
    );

    // 1. The bare pool, just before the batch, a median of a few rounds.
    let bare_n = n.min(BARE_CAP);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut rates = Vec::new();
    for _ in 0..BARE_ROUNDS {
        match rt.block_on(async {
            tokio::time::timeout(
                bench.timeout,
                bare_pool::bare(&client, url, bare_n, CONCURRENCY, prompt),
            )
            .await
        }) {
            Ok(t) => rates.push(bare_n as f64 / t.as_secs_f64()),
            Err(_) => break,
        }
    }
    drop(client);
    row.bare_rate = Some(if rates.len() == BARE_ROUNDS {
        Ok(median(rates))
    } else {
        Err("timeout".into())
    });
    if bare_n < n {
        row.notes.push(format!(
            "bare pool measured on {bare_n} of the {n} requests"
        ));
    }
    eprintln!("scale {n}: bare pool {:?}", row.bare_rate);

    // 2. The batch on a fresh database, default durability.
    let db = dir.join("db.redb");
    let c = CONCURRENCY.to_string();
    let batch_args = [
        "batch",
        "in.jsonl",
        "-o",
        "out.jsonl",
        "--plain",
        "--concurrency",
        &c,
    ];
    let ran = bench.run(dir, &db, &batch_args, true);
    row.reported_rss_mb = ran.reported_rss_mb();
    row.external_rss_kb = ran.external_rss_kb;
    eprintln!(
        "scale {n}: batch {:.2} s, {}",
        ran.wall.as_secs_f64(),
        ran.failure().unwrap_or_else(|| "ok".into())
    );
    if let Some(why) = ran.failure() {
        eprintln!("{}", tail(&ran.stderr, 20));
        row.batch = Some(Err(why));
        return row;
    }
    row.batch = Some(Ok(ran.wall));
    check_lines(&mut row, &dir.join("out.jsonl"), n, "batch");
    row.db_bytes = std::fs::metadata(&db).ok().map(|m| m.len());

    // 6 (before the replay doubles the jobs). Where the bytes go.
    let ran = bench.run(dir, &db, &["stats", "--tables", "--json"], false);
    row.sizes = ran.ok().then(|| parse_sizes(&ran.stdout)).flatten();
    if row.sizes.is_none() {
        let why = ran.failure().unwrap_or_else(|| "unreadable output".into());
        row.notes.push(format!("stats --tables: {why}"));
    }

    // 3. The same command again: nothing to send.
    let ran = bench.run(dir, &db, &batch_args, false);
    row.rerun = Some(ran.failure().map_or(Ok(ran.wall), Err));
    if ran.ok() {
        check_lines(&mut row, &dir.join("out.jsonl"), n, "rerun");
    }
    eprintln!("scale {n}: rerun {:?}", row.rerun);

    // 4. status, the median of a few runs.
    let mut times = Vec::new();
    let mut failed = None;
    for _ in 0..STATUS_RUNS {
        let ran = bench.run(dir, &db, &["status"], false);
        if let Some(why) = ran.failure() {
            failed = Some(why);
            break;
        }
        times.push(ran.wall.as_secs_f64() * 1000.0);
    }
    row.status_ms = Some(failed.map_or_else(|| Ok(median(times)), Err));
    eprintln!("scale {n}: status {:?} ms", row.status_ms);

    // 5. A second batch of the same prompts in the same database: every one a cache hit.
    let replay_name = format!("replay-{n}");
    let replay_args = [
        "batch",
        "in.jsonl",
        "-o",
        "replay.jsonl",
        "--plain",
        "--concurrency",
        &c,
        "--batch",
        &replay_name,
    ];
    let ran = bench.run(dir, &db, &replay_args, false);
    row.replay = Some(ran.failure().map_or(Ok(ran.wall), Err));
    if ran.ok() {
        check_lines(&mut row, &dir.join("replay.jsonl"), n, "replay");
        row.replay_hits = cache_hits(&ran.stderr);
        if row.replay_hits != Some(n as u64) {
            row.notes.push(format!(
                "replay of {n}: {:?} answered from cache, not all",
                row.replay_hits
            ));
        }
        row.db_after_replay = std::fs::metadata(&db).ok().map(|m| m.len());
        // The file grows in steps; what the tables gained says what a replay line stores.
        let ran = bench.run(dir, &db, &["stats", "--tables", "--json"], false);
        row.sizes_after_replay = ran.ok().then(|| parse_sizes(&ran.stdout)).flatten();
    } else {
        eprintln!("{}", tail(&ran.stderr, 20));
    }
    eprintln!("scale {n}: cached replay {:?}", row.replay);
    row
}

fn check_lines(row: &mut Row, path: &Path, n: usize, what: &str) {
    match count_lines(path) {
        Ok(got) if got == n => {}
        Ok(got) => row
            .notes
            .push(format!("{what} of {n}: output has {got} lines, not {n}")),
        Err(e) => row.notes.push(format!("{what} of {n}: no output ({e})")),
    }
}

/// `... answered (K from cache this run) ...` of the batch's summary line.
fn cache_hits(stderr: &str) -> Option<u64> {
    let at = stderr.find(" from cache this run")?;
    let before = &stderr[..at];
    before.rsplit('(').next()?.trim().parse().ok()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Megabytes of 10^6 bytes, as the binary's `peak RSS` line.
fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn cell<T>(v: &Option<Result<T, String>>, f: impl Fn(&T) -> String) -> String {
    match v {
        None => "-".into(),
        Some(Ok(v)) => f(v),
        Some(Err(why)) => why.clone(),
    }
}

fn print_table(rows: &[Row], bench: &Bench) {
    println!(
        "| lines | wall | jobs/s | bare pool req/s | ratio | peak RSS | db size | bytes/line | rerun wall | status ms | cached replay lines/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let n = r.lines as f64;
        let rate = match &r.batch {
            Some(Ok(t)) => Some(n / t.as_secs_f64()),
            _ => None,
        };
        let ratio = match (rate, &r.bare_rate) {
            (Some(a), Some(Ok(b))) => format!("{:.3}", a / b),
            _ => "-".into(),
        };
        let rss = match (r.reported_rss_mb, r.external_rss_kb) {
            (Some(a), Some(b)) => format!("{a:.0} / {:.0} MB", mb(b * 1024)),
            (Some(a), None) => format!("{a:.0} MB"),
            (None, Some(b)) => format!("- / {:.0} MB", mb(b * 1024)),
            (None, None) => "-".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.lines,
            cell(&r.batch, |t| secs(*t)),
            rate.map_or("-".into(), |v| format!("{v:.0}")),
            cell(&r.bare_rate, |v| format!("{v:.0}")),
            ratio,
            rss,
            r.db_bytes
                .map_or("-".into(), |b| format!("{:.1} MB", mb(b))),
            r.db_bytes
                .map_or("-".into(), |b| format!("{:.0}", b as f64 / n)),
            cell(&r.rerun, |t| secs(*t)),
            cell(&r.status_ms, |v| format!("{v:.0}")),
            cell(&r.replay, |t| format!("{:.0}", n / t.as_secs_f64())),
        );
    }
    println!();
    println!(
        "Concurrency {CONCURRENCY}, default durability, a fresh database per size. Peak RSS: as \
         the binary reports it / as measured from outside ({}). Bare pool: median of \
         {BARE_ROUNDS} rounds of min(N, {BARE_CAP}) requests. status: median of {STATUS_RUNS} \
         runs, process start to exit.",
        if bench.gnu_time {
            "GNU time's maximum resident set size"
        } else {
            "VmHWM polled every 20 ms"
        }
    );
    for r in rows {
        if let (Some(before), Some(after)) = (r.db_bytes, r.db_after_replay) {
            let n = r.lines as f64;
            let tables = match (&r.sizes, &r.sizes_after_replay) {
                (Some(a), Some(b)) => {
                    let grown = b.in_tables().saturating_sub(a.in_tables());
                    format!(
                        ", the tables by {:.1} MB ({:.0} bytes/line)",
                        mb(grown),
                        grown as f64 / n
                    )
                }
                _ => String::new(),
            };
            println!(
                "- {} lines: the cached replay grew the file by {:.1} MB ({:.0} bytes/line){tables}; \
                 {} of {} answered from cache.",
                r.lines,
                mb(after.saturating_sub(before)),
                after.saturating_sub(before) as f64 / n,
                r.replay_hits.map_or("?".into(), |h| h.to_string()),
                r.lines
            );
        }
        if let Some(s) = &r.sizes {
            println!(
                "- {} lines: {:.1} MB of the {:.1} MB file in table pages ({:.0} bytes/line), \
                 {:.1} MB of it keys and values ({:.0} bytes/line).",
                r.lines,
                mb(s.in_tables()),
                mb(s.file_bytes),
                s.in_tables() as f64 / r.lines as f64,
                mb(s.stored()),
                s.stored() as f64 / r.lines as f64
            );
        }
        for note in &r.notes {
            println!("- {note}");
        }
    }

    let Some(largest) = rows.iter().rev().find(|r| r.sizes.is_some()) else {
        return;
    };
    let Some(sizes) = &largest.sizes else { return };
    let n = largest.lines as f64;
    println!();
    println!(
        "Database of {} lines after the batch, by table ({:.1} MB file):",
        largest.lines,
        mb(sizes.file_bytes)
    );
    println!();
    println!("| table | rows | stored | metadata | fragmented | total | bytes/line | share |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut in_tables = 0;
    let (mut small, mut small_bytes) = (0, 0);
    for (name, rows, stored, meta, frag) in &sizes.tables {
        let total = stored + meta + frag;
        in_tables += total;
        // Tables under 0.1% of the file (counters, meta, empty ones) go on one line.
        if total * 1000 < sizes.file_bytes {
            small += 1;
            small_bytes += total;
            continue;
        }
        println!(
            "| {name} | {rows} | {:.1} MB | {:.1} MB | {:.1} MB | {:.1} MB | {:.0} | {:.1}% |",
            mb(*stored),
            mb(*meta),
            mb(*frag),
            mb(total),
            total as f64 / n,
            total as f64 / sizes.file_bytes as f64 * 100.0
        );
    }
    println!(
        "| ({small} small tables) | | | | | {:.1} MB | {:.0} | {:.1}% |",
        mb(small_bytes),
        small_bytes as f64 / n,
        small_bytes as f64 / sizes.file_bytes as f64 * 100.0
    );
    let rest = sizes.file_bytes.saturating_sub(in_tables);
    println!(
        "| (redb's own trees, free pages) | | | | | {:.1} MB | {:.0} | {:.1}% |",
        mb(rest),
        rest as f64 / n,
        rest as f64 / sizes.file_bytes as f64 * 100.0
    );
}
