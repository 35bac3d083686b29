//! `reasonq batch`: the batch use case with a progress line and a summary.

use reasonq::app::batch::{self, BatchOptions};
use reasonq::app::upkeep::peak_resident_bytes;
use reasonq::app::{live, metrics};
use reasonq::app::{App, Endpoint};
use reasonq::config::Config;
use reasonq::runner::{DrainEnd, BUDGET_REACHED};
use reasonq::shutdown::{exit_code, Shutdown};

use super::args::{BatchArgs, Fallback, Via};
use super::progress::Progress;
use super::{fail, CliResult, Outcome};

/// Exit code when the endpoint or the account stopped the batch (docs/runtime.md).
const EXIT_HALTED: i32 = 3;
/// Exit code when `--max-cost` stopped the batch (docs/cost.md).
const EXIT_BUDGET: i32 = 4;

pub async fn run(config: Config, args: BatchArgs, endpoint: &Endpoint) -> CliResult {
    let opts = BatchOptions {
        input: args.input,
        output: args.output,
        errors: args.errors,
        batch: args.batch,
        skip_invalid: args.skip_invalid,
        strategy: args.strategy,
        memory: args.memory,
        retry_failed: args.retry_failed,
        rerun: args.rerun,
        shard: args.shard,
        via: match args.via {
            Via::Live => batch::Via::Live,
            Via::Provider => batch::Via::Provider(batch::ProviderOptions {
                api: args.batch_api,
                fallback_live: args.fallback == Some(Fallback::Live),
            }),
        },
        max_cost: args.max_cost,
        validate: args.validate,
    };
    if args.dry_run {
        let estimate = super::args::EstimateArgs {
            input: opts.input.clone(),
            batch: opts.batch.clone(),
            strategy: opts.strategy,
            json: false,
        };
        return super::estimate::run(config, estimate, endpoint).await;
    }
    if args.via == Via::Live && (args.batch_api.is_some() || args.fallback.is_some()) {
        return Err(fail("--batch-api and --fallback go with --via provider"));
    }
    // A bad file is refused before the database is opened.
    // Reading a big file is blocking work: off the async runtime.
    let (to_read, model) = (opts.clone(), config.model.clone());
    let parsed = tokio::task::spawn_blocking(move || batch::read(&to_read, &model))
        .await
        .map_err(fail)?
        .map_err(fail)?;
    let lines = parsed.valid;
    // Bound before anything is enqueued: a taken port fails the command, not the batch later.
    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| fail(format!("cannot listen on {addr} for --metrics-listen: {e}")))?,
        ),
        None => None,
    };
    let app = App::open(config).await.map_err(fail)?;
    // Other terminals' `status`, `results`, ... ask this process while it holds the file.
    let live = match live::serve(&app).await {
        Ok(server) => Some(server),
        Err(e) => {
            eprintln!("warning: other commands cannot ask this batch for its progress ({e}); the batch runs anyway");
            None
        }
    };
    let connected = app.connect(endpoint).await.map_err(fail)?;
    let prepared = batch::prepare(&app, &connected, &opts, parsed)
        .await
        .map_err(fail)?;
    let label = if endpoint.simulate {
        " (simulated API)"
    } else {
        ""
    };
    eprintln!(
        "batch {}{label}: {} requests, {} new, {} enqueued by earlier runs",
        prepared.batch,
        prepared.requests,
        prepared.inserted,
        prepared.requests - prepared.inserted.min(prepared.requests)
    );
    if let Some(shard) = opts.shard {
        eprintln!("shard {shard}: {} of {lines} lines", prepared.requests);
    }
    if args.retry_failed {
        eprintln!("{} failed lines go again", prepared.retried);
    }
    if prepared.cancelled > 0 {
        eprintln!(
            "{} waiting jobs of lines no longer in the file (removed or edited) were cancelled",
            prepared.cancelled
        );
    }

    let shutdown = Shutdown::new();
    let _signals = shutdown
        .listen_for_signals()
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    let progress = Progress::start(
        prepared.baseline,
        connected.runner.stats().clone(),
        prepared.remote_watch(),
        args.plain,
    );
    let run = prepared.run(&app, &connected, shutdown.listener());
    let report = match metrics {
        Some(listener) => {
            if let Ok(addr) = listener.local_addr() {
                eprintln!("metrics: http://{addr}/metrics");
            }
            tokio::select! {
                report = run => report,
                served = metrics::serve_during(listener, &app, &connected) => {
                    served.map_err(fail)?;
                    return Err(fail("the metrics server stopped"));
                }
            }
        }
        None => run.await,
    };
    progress.finish();
    drop(live);
    let report = report.map_err(fail)?;
    app.close().await.map_err(fail)?;

    let c = &report.counts;
    eprintln!(
        "{} of {} requests answered ({} from cache this run), {} failed, {} not finished; \
         {} prompt + {} completion tokens this run; {} API requests",
        report.answered,
        report.requests,
        c.cached,
        report.failed,
        report.pending,
        c.prompt_tokens,
        c.completion_tokens,
        report.requests_sent,
    );
    eprintln!("{}", describe_cost(&report));
    if let Some(remote) = &report.remote {
        describe_remote_end(remote, &report);
    }
    if let Some(peak) = peak_resident_bytes() {
        eprintln!("peak RSS: {:.1} MB", peak as f64 / 1e6);
    }
    eprintln!("output: {}", report.output.display());
    if report.error_lines > 0 {
        eprintln!(
            "errors: {} ({} lines)",
            report.errors.display(),
            report.error_lines
        );
    }
    match report.end {
        DrainEnd::Finished => Ok(Outcome::Done),
        DrainEnd::Halted(trip) if trip.code == BUDGET_REACHED => {
            eprintln!(
                "stopped ({}): {}\nthe calls in flight finished; every unfinished line is back \
                 in the queue with no attempt spent; run the same command with a higher \
                 --max-cost to finish (answered lines are not paid for again)",
                trip.code, trip.message
            );
            Ok(Outcome::Exit(EXIT_BUDGET))
        }
        DrainEnd::Halted(trip) => {
            eprintln!(
                "stopped ({}): {}\nevery unfinished line is back in the queue with no attempt \
                 spent; fix the cause and run the same command again",
                trip.code, trip.message
            );
            Ok(Outcome::Exit(EXIT_HALTED))
        }
        DrainEnd::Stopped(phase) if report.remote.is_some() => {
            eprintln!(
                "detached by signal: the provider batches keep running; run the same command \
                 again to collect them"
            );
            Ok(Outcome::Exit(exit_code(phase.signal())))
        }
        DrainEnd::Stopped(phase) => {
            eprintln!(
                "stopped by signal: {} jobs returned to the queue; run the same command again to finish",
                c.returned
            );
            if report.abandoned_calls > 0 {
                eprintln!(
                    "{} calls were abandoned in flight and may be billed; --drain-timeout SECONDS \
                     lets calls finish",
                    report.abandoned_calls
                );
            }
            Ok(Outcome::Exit(exit_code(phase.signal())))
        }
    }
}

/// The money line of the summary: this run, the batch, the cap.
fn describe_cost(report: &batch::Report) -> String {
    let (run, unpriced_run) = report.cost;
    let total = &report.usage;
    let mut text = format!("cost: {run} this run, {} for the batch", total.cost);
    if let Some(cap) = report.cap {
        text.push_str(&format!(" (cap {cap})"));
    }
    if unpriced_run > 0 || total.unpriced > 0 {
        text.push_str(&format!(
            "; {} answers of models without a price are not counted (cost unknown; \
             [cost.prices] in docs/cost.md)",
            total.unpriced.max(unpriced_run)
        ));
    }
    text
}

/// What the provider batches came to, after the usual summary.
fn describe_remote_end(remote: &batch::RemoteSummary, report: &batch::Report) {
    eprintln!("sent through the {} batch API", remote.protocol.as_str());
    if remote.open > 0 {
        eprintln!("{} provider batches are still running", remote.open);
    }
    if !remote.fell_back && report.pending > 0 && remote.open == 0 {
        eprintln!(
            "{} lines were not answered by the provider (or take several calls); run the same \
             command again to send them again, or add --fallback live to run them live",
            report.pending
        );
    }
}
