//! The smaller subcommands: one function each, printing a table or `--json`.

use serde_json::{json, Value};

use reasonq::app::cancel;
use reasonq::app::inspect::{self, job_detail};
use reasonq::app::live::{self, Reply, Request};
use reasonq::app::retry::{retry_failed, RetryFilter};
use reasonq::app::submit::{self, Question, Submitted};
use reasonq::app::{App, Endpoint};
use reasonq::batch::export::JsonlFile;
use reasonq::config::Config;
use reasonq::memory::experience::{Experience, Order};
use reasonq::queue::{Job, JobState};
use reasonq::runner::FailureRecord;
use reasonq::shutdown::{exit_code, Shutdown};

use super::args::{CheckArgs, ExperiencesCommand, JobsCommand, ResultsArgs, StatsArgs, SubmitArgs};
use super::print::{experience_row, print_json, short, table, EXPERIENCE_COLUMNS};
use super::{fail, CliError, CliResult, Outcome};

/// `reasonq submit`: one question through the same durable path as a batch.
pub async fn submit(config: Config, args: SubmitArgs, endpoint: &Endpoint) -> CliResult {
    let question = Question {
        text: args.question,
        system: args.system,
        domain: args.domain,
        temperature: args.temperature,
    };
    let app = App::open(config).await.map_err(fail)?;
    let connected = app.connect(endpoint).await.map_err(fail)?;
    let shutdown = Shutdown::new();
    let _signals = shutdown.listen_for_signals().map_err(fail)?;
    let submitted = submit::submit(&app, &connected, &question, shutdown.listener()).await;
    app.close().await.map_err(fail)?;
    match submitted.map_err(fail)? {
        Submitted::Stopped { job_id, phase } => {
            eprintln!("stopped; the question stays queued as job {job_id}");
            Ok(Outcome::Exit(exit_code(phase.signal())))
        }
        Submitted::Answered(body) if args.json => print_json(&body),
        Submitted::Answered(body) => {
            emit!(
                "{}",
                body["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
            )?;
            Ok(Outcome::Done)
        }
    }
}

/// The database for a read-only command, or the error saying another process holds it
/// (that process answers the command over its socket: [`ask_holder`]). A holder that
/// answers is asked at once; one that does not may be a command about to let go, so the
/// open waits a moment for it.
async fn open_or_held(config: Config) -> Result<Result<App, reasonq::Error>, CliError> {
    let db = config.db.clone();
    let opened = match App::open_or_locked(config.clone()).await {
        Err(reasonq::Error::Locked { .. }) if !live::answering(&db).await => {
            App::open(config).await
        }
        other => other,
    };
    match opened {
        Ok(app) => Ok(Ok(app)),
        Err(locked @ reasonq::Error::Locked { .. }) => Ok(Err(locked)),
        Err(e) => Err(fail(e)),
    }
}

/// Asks the process holding the database; when it serves no socket, `locked` is the error.
async fn ask_holder(
    db: &std::path::Path,
    locked: reasonq::Error,
    request: Request,
) -> Result<Reply, CliError> {
    match live::ask(db, &request).await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(not_served(locked)),
        Err(e) => Err(fail(e)),
    }
}

/// The holder serves no socket: it is no batch (or its socket could not be made).
fn not_served(locked: reasonq::Error) -> CliError {
    match locked {
        reasonq::Error::Locked { path } => fail(format!(
            "database {path} is already open in another process that answers no queries (a running `reasonq batch` does); try again when it ends"
        )),
        other => fail(other),
    }
}

fn wrong_answer() -> CliError {
    fail("the process holding the database gave an answer of the wrong kind")
}

/// `reasonq status`: counts by state per batch, and tokens spent; during a batch, from the
/// process running it.
pub async fn status(config: Config, as_json: bool) -> CliResult {
    let db = config.db.clone();
    let rows = match open_or_held(config).await? {
        Ok(app) => {
            let rows = inspect::status(&app).await;
            app.close().await.map_err(fail)?;
            rows.map_err(fail)?
        }
        Err(locked) => match ask_holder(&db, locked, Request::Status).await? {
            Reply::Status(rows) => rows,
            _ => return Err(wrong_answer()),
        },
    };
    if as_json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut states = serde_json::Map::new();
                for s in JobState::ALL {
                    states.insert(s.as_str().into(), json!(r.counts.get(s)));
                }
                let remote: Vec<Value> = r
                    .remote
                    .iter()
                    .map(|b| {
                        json!({"protocol": b.protocol, "phase": b.phase.as_str(), "id": b.remote_id,
                               "state": b.remote_state, "lines": b.lines, "succeeded": b.counts.0,
                               "failed": b.counts.1, "cancel_requested": b.cancel_requested})
                    })
                    .collect();
                json!({"batch": r.batch, "states": states, "total": r.counts.total(),
                       "prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens, "cached": r.usage.cached,
                       "cost_usd": r.usage.cost.usd(), "priced": r.usage.priced, "unpriced": r.usage.unpriced,
                       "provider_batches": remote})
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    if rows.is_empty() {
        emit!("no batches yet")?;
        return Ok(Outcome::Done);
    }
    let mut header = vec!["batch"];
    header.extend(JobState::ALL.iter().map(|s| s.as_str()));
    header.extend(["total", "tokens (prompt/completion)", "cost"]);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![r.batch.clone()];
            row.extend(JobState::ALL.iter().map(|s| r.counts.get(*s).to_string()));
            row.push(r.counts.total().to_string());
            row.push(format!(
                "{}/{}",
                r.usage.prompt_tokens, r.usage.completion_tokens
            ));
            row.push(match r.usage.unpriced {
                0 => r.usage.cost.to_string(),
                n => format!("{} + {n} unknown", r.usage.cost),
            });
            row
        })
        .collect();
    table(&header, &body)?;
    for r in rows.iter().filter(|r| !r.remote.is_empty()) {
        let lines: u64 = r.remote.iter().map(|b| b.lines).sum();
        let states: Vec<String> = r
            .remote
            .iter()
            .map(|b| {
                let state = b.remote_state.as_deref().unwrap_or(b.phase.as_str());
                match &b.remote_id {
                    Some(id) => format!("{id} {state} {}/{}", b.counts.0, b.lines),
                    None => format!("({state}) {} lines", b.lines),
                }
            })
            .collect();
        emit!(
            "{}: {} provider batches running with {lines} lines: {}",
            r.batch,
            r.remote.len(),
            states.join("; ")
        )?;
    }
    Ok(Outcome::Done)
}

/// `reasonq results BATCH`: export again, streamed to the file or to stdout; during a batch,
/// from the process running it.
pub async fn results(config: Config, args: ResultsArgs) -> CliResult {
    let db = config.db.clone();
    let app = match open_or_held(config).await? {
        Ok(app) => app,
        Err(locked) => return results_live(&db, locked, &args).await,
    };
    let out = match &args.output {
        Some(path) => inspect::results_to_file(&app, &args.batch, args.json, path)
            .await
            .map(|n| eprintln!("{n} lines written to {}", path.display())),
        None => inspect::results(&app, &args.batch, args.json, stdout_lines())
            .await
            .map(drop),
    };
    app.close().await.map_err(fail)?;
    out.map_err(fail)?;
    Ok(Outcome::Done)
}

/// [`results`] from the process holding the database, chunk by chunk.
async fn results_live(
    db: &std::path::Path,
    locked: reasonq::Error,
    args: &ResultsArgs,
) -> CliResult {
    let served = match &args.output {
        None => live::results(db, &args.batch, args.json, stdout_lines()).await,
        Some(path) => {
            let shown = path.display().to_string();
            let failed = |e: std::io::Error| reasonq::Error::Write {
                path: shown.clone(),
                message: e.to_string(),
            };
            let mut file = JsonlFile::create(path).map_err(|e| fail(failed(e)))?;
            let served = live::results(db, &args.batch, args.json, |line| {
                file.line(line).map_err(failed)
            })
            .await;
            if let Ok(Some(_)) = served {
                let n = file.len();
                file.commit().map_err(|e| fail(failed(e)))?;
                eprintln!("{n} lines written to {}", path.display());
            }
            served
        }
    };
    match served.map_err(fail)? {
        Some(_) => Ok(Outcome::Done),
        None => Err(not_served(locked)),
    }
}

/// Writes each line to stdout; a reader that stopped (`| head`) is not an error.
fn stdout_lines() -> impl FnMut(&str) -> reasonq::Result<()> + Send + 'static {
    let mut stdout = std::io::BufWriter::new(std::io::stdout());
    let mut closed = false;
    move |line| {
        use std::io::Write;
        if closed {
            return Ok(());
        }
        let wrote = writeln!(stdout, "{line}");
        match wrote {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                closed = true;
                Ok(())
            }
            other => other.map_err(|e| reasonq::Error::Write {
                path: "stdout".into(),
                message: e.to_string(),
            }),
        }
    }
}

/// `reasonq jobs ...`.
pub async fn jobs(config: Config, cmd: JobsCommand, endpoint: &Endpoint) -> CliResult {
    let db = config.db.clone();
    let app = match open_or_held(config).await? {
        Ok(app) => app,
        Err(locked) => return jobs_live(&db, locked, cmd).await,
    };
    let result = match cmd {
        JobsCommand::Cancel {
            batch: Some(batch), ..
        } => cancel_batch(&app, &batch, endpoint).await,
        cmd => jobs_inner(&app, cmd).await,
    };
    app.close().await.map_err(fail)?;
    result
}

async fn jobs_inner(app: &App, cmd: JobsCommand) -> CliResult {
    match cmd {
        JobsCommand::List {
            batch,
            state,
            limit,
            json: as_json,
        } => {
            let state = match state {
                Some(s) => Some(s.parse::<JobState>().map_err(fail)?),
                None => None,
            };
            let jobs = app
                .queue
                .list(batch.as_deref(), state, limit)
                .await
                .map_err(fail)?;
            print_jobs(&jobs, as_json)
        }
        JobsCommand::Show { id, json: _ } => {
            let job = inspect::job_of(&app.store, id).await.map_err(fail)?;
            print_job(job, id)
        }
        JobsCommand::Retry { id: Some(id), .. } => {
            app.queue.retry(id).await.map_err(fail)?;
            emit!("job {id} will run again")?;
            Ok(Outcome::Done)
        }
        JobsCommand::Retry {
            batch, state, code, ..
        } => {
            let batch = batch.ok_or_else(|| fail("name a job id or --batch"))?;
            let state = state.parse::<JobState>().map_err(fail)?;
            if !matches!(state, JobState::Discarded | JobState::Cancelled) {
                return Err(fail("--state takes discarded or cancelled"));
            }
            let filter = RetryFilter { state, code };
            let n = retry_failed(app, &batch, &filter).await.map_err(fail)?;
            emit!("{n} jobs of {batch} will run again at the next `reasonq batch` of its file")?;
            Ok(Outcome::Done)
        }
        JobsCommand::Cancel { id: Some(id), .. } => {
            app.queue.cancel(id).await.map_err(fail)?;
            emit!("job {id} cancelled")?;
            Ok(Outcome::Done)
        }
        JobsCommand::Cancel { .. } => Err(fail("name a job id or --batch")),
    }
}

/// `jobs list` and `jobs show` from the process holding the database; the writing ones get
/// `locked`, which says what works meanwhile.
async fn jobs_live(db: &std::path::Path, locked: reasonq::Error, cmd: JobsCommand) -> CliResult {
    match cmd {
        JobsCommand::List {
            batch,
            state,
            limit,
            json: as_json,
        } => {
            let state = match state {
                Some(s) => Some(s.parse::<JobState>().map_err(fail)?),
                None => None,
            };
            let request = Request::JobsList {
                batch,
                state,
                limit,
            };
            match ask_holder(db, locked, request).await? {
                Reply::Jobs(jobs) => {
                    let jobs: Vec<Job> = jobs.into_iter().map(|j| j.into_job()).collect();
                    print_jobs(&jobs, as_json)
                }
                _ => Err(wrong_answer()),
            }
        }
        JobsCommand::Show { id, json: _ } => {
            match ask_holder(db, locked, Request::JobsShow { id }).await? {
                Reply::Job(job) => print_job(job.map(|j| j.into_shown()), id),
                _ => Err(wrong_answer()),
            }
        }
        _ => Err(fail(locked)),
    }
}

/// `jobs list`: a table, or every job in full with `--json`.
fn print_jobs(jobs: &[Job], as_json: bool) -> CliResult {
    if as_json {
        return print_json(&Value::Array(jobs.iter().map(job_detail).collect()));
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.queue.clone(),
                inspect::custom_id(j).unwrap_or_default(),
                j.state.as_str().to_string(),
                format!("{}/{}", j.attempt, j.max_attempts),
                j.last_error
                    .as_deref()
                    .map(|e| short(&FailureRecord::from_last_error(e).message, 60))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "batch",
            "custom_id",
            "state",
            "attempts",
            "last error",
        ],
        &rows,
    )?;
    Ok(Outcome::Done)
}

/// `jobs show ID`.
fn print_job(job: Option<(Job, Vec<inspect::Attempt>)>, id: u64) -> CliResult {
    let (job, attempts) = job.ok_or_else(|| fail(format!("no job {id}")))?;
    print_json(&inspect::job_shown(&job, &attempts))
}

/// `jobs cancel --batch B`: the waiting lines here, the provider batches at the provider.
async fn cancel_batch(app: &App, batch: &str, endpoint: &Endpoint) -> CliResult {
    let connected = if cancel::open_remote(app, batch).await.map_err(fail)? > 0 {
        Some(app.connect(endpoint).await.map_err(fail)?)
    } else {
        None
    };
    let shutdown = Shutdown::new();
    let _signals = shutdown
        .listen_for_signals()
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    if connected.is_some() {
        eprintln!("asking the provider to cancel the batch's provider batches; waiting for them to end (partial results are kept)");
    }
    let done = cancel::cancel_batch(app, connected.as_ref(), batch, shutdown.listener())
        .await
        .map_err(fail)?;
    emit!(
        "{} waiting lines of {batch} cancelled; {} provider batches cancelled",
        done.waiting,
        done.remote
    )?;
    if !done.collected {
        eprintln!("stopped waiting: run the command again to collect what the provider finished");
    }
    Ok(Outcome::Done)
}

fn experience_json(e: &Experience) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

/// `reasonq experiences ...`.
pub async fn experiences(config: Config, cmd: ExperiencesCommand) -> CliResult {
    let app = App::open(config).await.map_err(fail)?;
    let store = app.store.clone();
    let result = async {
        match cmd {
            ExperiencesCommand::List {
                domain,
                tag,
                limit,
                json: as_json,
            } => {
                let list = match (domain, tag) {
                    (Some(d), _) => {
                        store
                            .experiences_by_domain(&d, limit, Order::NewestFirst)
                            .await
                    }
                    (None, Some(t)) => {
                        store
                            .experiences_by_tag(&t, limit, Order::NewestFirst)
                            .await
                    }
                    (None, None) => {
                        store
                            .experiences_by_time(0, u64::MAX, limit, Order::NewestFirst)
                            .await
                    }
                }
                .map_err(fail)?;
                if as_json {
                    return print_json(&Value::Array(list.iter().map(experience_json).collect()));
                }
                let rows: Vec<Vec<String>> = list.iter().map(experience_row).collect();
                table(&EXPERIENCE_COLUMNS, &rows)?;
                Ok(Outcome::Done)
            }
            ExperiencesCommand::Search {
                text,
                domain,
                limit,
                json: as_json,
            } => super::memory::search(&store, text, domain, limit, as_json).await,
            ExperiencesCommand::Show { id, json: _ } => {
                let e = store
                    .experience(id)
                    .await
                    .map_err(fail)?
                    .ok_or_else(|| fail(format!("no experience {id}")))?;
                print_json(&experience_json(&e))
            }
        }
    }
    .await;
    app.close().await.map_err(fail)?;
    result
}

/// `reasonq patterns`.
pub async fn patterns(config: Config, as_json: bool) -> CliResult {
    let app = App::open(config).await.map_err(fail)?;
    let list = app.store.patterns(None).await.map_err(fail)?;
    let rules = app
        .store
        .read(|txn| reasonq::memory::rules::list_read(txn, None))
        .await
        .map_err(fail)?;
    app.close().await.map_err(fail)?;
    if as_json {
        return print_json(&json!({"statistics": list, "rules": rules}));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            vec![
                p.domain.clone(),
                p.strategy.clone(),
                p.uses.to_string(),
                p.successes.to_string(),
                p.failures.to_string(),
                p.success_rate()
                    .map_or_else(|| "-".into(), |r| format!("{:.0}%", r * 100.0)),
                p.mean_confidence
                    .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                format!("{:.0}", p.mean_latency_ms),
            ]
        })
        .collect();
    table(
        &[
            "domain",
            "strategy",
            "uses",
            "successes",
            "failures",
            "success rate",
            "confidence",
            "latency ms",
        ],
        &rows,
    )?;
    super::memory::print_rules(&rules)?;
    Ok(Outcome::Done)
}

/// `reasonq cleanup`.
pub async fn cleanup(config: Config, as_json: bool) -> CliResult {
    let app = App::open(config).await.map_err(fail)?;
    let report = app.cleanup().await.map_err(fail)?;
    app.close().await.map_err(fail)?;
    if as_json {
        return print_json(&serde_json::to_value(report).map_err(fail)?);
    }
    emit!(
        "pruned {} finished jobs and {} blackboard sessions, deleted {} experiences, dropped {} expired cache entries, rescued {} expired leases",
        report.jobs_pruned, report.boards_pruned, report.experiences_deleted, report.cache_entries_expired, report.leases_rescued
    )?;
    Ok(Outcome::Done)
}

/// `reasonq stats`: figures of the recorded runs, or with `--tables` what each table holds.
pub async fn stats(config: Config, args: StatsArgs) -> CliResult {
    if args.tables {
        return table_sizes(config, args.json).await;
    }
    let as_json = args.json;
    let db = config.db.clone();
    let summary = match open_or_held(config).await? {
        Ok(app) => {
            let summary = inspect::stats(&app).await;
            app.close().await.map_err(fail)?;
            summary.map_err(fail)?
        }
        Err(locked) => match ask_holder(&db, locked, Request::Stats).await? {
            Reply::Stats(summary) => summary,
            _ => return Err(wrong_answer()),
        },
    };
    if as_json {
        return print_json(&serde_json::to_value(&summary).map_err(fail)?);
    }
    emit!("{summary}")?;
    Ok(Outcome::Done)
}

/// `reasonq stats --tables`.
async fn table_sizes(config: Config, as_json: bool) -> CliResult {
    let app = App::open(config).await.map_err(fail)?;
    let sizes = inspect::table_sizes(&app).await;
    app.close().await.map_err(fail)?;
    let sizes = sizes.map_err(fail)?;
    if as_json {
        return print_json(&serde_json::to_value(&sizes).map_err(fail)?);
    }
    let rows: Vec<Vec<String>> = sizes
        .tables
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.rows.to_string(),
                bytes(t.stored_bytes),
                bytes(t.metadata_bytes),
                bytes(t.fragmented_bytes),
                bytes(t.total_bytes()),
            ]
        })
        .collect();
    table(
        &["table", "rows", "stored", "metadata", "fragmented", "total"],
        &rows,
    )?;
    let in_tables: u64 = sizes.tables.iter().map(|t| t.total_bytes()).sum();
    emit!(
        "file {}, of which {} in tables (the rest: redb's own trees and free pages)",
        bytes(sizes.file_bytes),
        bytes(in_tables)
    )?;
    Ok(Outcome::Done)
}

/// Bytes in KiB/MiB/GiB, one decimal.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `reasonq models`.
pub async fn models(config: Config, as_json: bool, endpoint: &Endpoint) -> CliResult {
    let app = App::open(config).await.map_err(fail)?;
    let models = match app.connect(endpoint).await {
        Ok(connected) => connected.client().models().await.map_err(fail),
        Err(e) => Err(fail(e)),
    };
    app.close().await.map_err(fail)?;
    let models = models?;
    if as_json {
        return print_json(&json!(models));
    }
    for m in models {
        emit!("{m}")?;
    }
    Ok(Outcome::Done)
}

/// `reasonq check`: exit 0 when the file is sound (or was repaired), 2 when it is damaged.
pub async fn check(config: Config, args: CheckArgs) -> CliResult {
    let path = config.db.clone();
    let repair = args.repair;
    let report = tokio::task::spawn_blocking(move || reasonq::store::check::check(&path, repair))
        .await
        .map_err(fail)?
        .map_err(fail)?;
    let damaged = report.verdict != "ok" && report.backup.is_none();
    if args.json {
        print_json(&serde_json::to_value(&report).map_err(fail)?)?;
    } else {
        let db = config.db.display();
        let rows = |counts: &[(String, u64)]| -> String {
            let get = |name: &str| {
                counts
                    .iter()
                    .find(|(t, _)| t == name)
                    .map_or(0, |(_, n)| *n)
            };
            format!(
                "{} jobs, {} experiences, {} cached responses, {} runs",
                get("jobs"),
                get("experiences"),
                get("cache") + get("cache_journal"),
                get("runs")
            )
        };
        let lost = || -> String {
            let (Some(before), Some(after)) = (&report.before, &report.after) else {
                return "unknown (the damaged file cannot be read as it is)".into();
            };
            let gone: Vec<String> = before
                .iter()
                .filter_map(|(t, n)| {
                    let kept = after.iter().find(|(a, _)| a == t).map_or(0, |(_, k)| *k);
                    (kept < *n).then(|| format!("{} of {n} rows of {t}", n - kept))
                })
                .collect();
            if gone.is_empty() {
                "nothing".into()
            } else {
                gone.join(", ")
            }
        };
        match (report.verdict, &report.backup, &report.after) {
            ("ok", _, after) => emit!(
                "{db}: ok ({})",
                after.as_deref().map(rows).unwrap_or_default()
            )?,
            (_, Some(backup), Some(after)) => emit!(
                "{db}: repaired; kept {}; lost {}; the damaged file is kept as {}",
                rows(after),
                lost(),
                backup.display()
            )?,
            ("repaired", None, Some(after)) => emit!(
                "{db}: damaged; a repair (reasonq check --repair) would keep {} and lose {}",
                rows(after),
                lost()
            )?,
            _ => emit!(
                "{db}: damaged beyond repair; keep a copy of it and start a new database with --db"
            )?,
        }
    }
    Ok(if damaged {
        Outcome::Exit(2)
    } else {
        Outcome::Done
    })
}
