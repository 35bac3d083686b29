//! The command-line interface: parse arguments, load configuration (file, environment, then
//! flags), run one subcommand's use case and print what it returns.

/// Prints a line to stdout; a closed pipe (`reasonq results B | head`) ends the command
/// quietly instead of panicking.
macro_rules! emit {
    ($($arg:tt)*) => {
        crate::cli::write_line(format_args!($($arg)*))
    };
}

mod args;
mod batch;
mod board;
mod commands;
mod estimate;
mod memory;
mod merge;
mod print;
mod progress;
mod serve;

use std::fmt::Display;

use clap::Parser;

use args::{Cli, Command, Global};
use reasonq::app::Endpoint;
use reasonq::config::Config;

/// How a command ended successfully.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    /// Finished early with this exit code (e.g. 130 after SIGINT).
    Exit(i32),
}

/// A command's failure: the message for stderr and the exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    pub message: String,
    pub code: i32,
}

pub(crate) type CliResult = Result<Outcome, CliError>;

/// A failure with exit code 1.
pub(crate) fn fail(message: impl Display) -> CliError {
    CliError {
        message: message.to_string(),
        code: 1,
    }
}

/// Writes one line to stdout (see `emit!`).
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError {
            message: String::new(),
            code: 0,
        }),
        Err(e) => Err(fail(format!("cannot write to stdout: {e}"))),
    }
}

/// Runs the CLI and returns the process exit code.
pub(crate) fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(&cli.global.log);
    quiet_storage_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::Exit(code)) => code,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            e.code
        }
    }
}

/// redb panics on some damaged pages; the store catches those panics and reports the file as
/// damaged, so their own message (printed before the error) would only confuse. Every other
/// panic is printed as usual.
fn quiet_storage_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_redb = info
            .location()
            .is_some_and(|l| l.file().contains("/redb-") || l.file().contains("\\redb-"));
        if !in_redb {
            default(info);
        }
    }));
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escape codes only for a person's terminal, not in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Configuration from file and environment, then the global flags on top (a command's own
/// flags go on top of that in [`run`]: each flag overrides the configuration in one place).
fn load_config(global: &Global) -> Result<Config, CliError> {
    let mut config = Config::load(global.config.as_deref(), std::env::vars()).map_err(fail)?;
    if let Some(db) = &global.db {
        config.db = db.clone();
    }
    if let Some(url) = &global.base_url {
        config.base_url = url.clone();
    }
    if let Some(model) = &global.model {
        config.model = model.clone();
    }
    Ok(config)
}

async fn run(cli: Cli) -> CliResult {
    let mut config = load_config(&cli.global)?;
    let endpoint = Endpoint {
        simulate: cli.global.simulate,
        key_env: cli.global.api_key_env.clone(),
    };
    match cli.command {
        Command::Batch(args) => {
            if let Some(c) = args.concurrency {
                config.concurrency = c;
            }
            if let Some(p) = args.cache {
                config.cache_policy = p;
            }
            if let Some(s) = args.drain_timeout {
                config.shutdown.drain_timeout_s = s;
            }
            batch::run(config, args, &endpoint).await
        }
        Command::Merge(args) => merge::run(args).await,
        Command::Submit(args) => commands::submit(config, args, &endpoint).await,
        Command::Status(f) => commands::status(config, f.json).await,
        Command::Estimate(args) => estimate::run(config, args, &endpoint).await,
        Command::Results(args) => commands::results(config, args).await,
        Command::Jobs(cmd) => commands::jobs(config, cmd, &endpoint).await,
        Command::Experiences(cmd) => commands::experiences(config, cmd).await,
        Command::Patterns(f) => commands::patterns(config, f.json).await,
        Command::Insights(args) => memory::insights(config, args, &endpoint).await,
        Command::Cleanup(f) => commands::cleanup(config, f.json).await,
        Command::Stats(args) => commands::stats(config, args).await,
        Command::Check(args) => commands::check(config, args).await,
        Command::Models(f) => commands::models(config, f.json, &endpoint).await,
        Command::Board(args) => board::board(config, args.session, args.json).await,
        Command::Serve(args) => {
            if let Some(c) = args.concurrency {
                config.concurrency = c;
            }
            if let Some(s) = args.drain_timeout {
                config.shutdown.drain_timeout_s = s;
            }
            serve::run(config, args, &endpoint).await
        }
        Command::View(args) => serve::view(config, args).await,
    }
}
