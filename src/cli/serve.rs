//! `reasonq serve` and `reasonq view`: the service, or the read-only viewer, with its address
//! printed, stopped by SIGINT or SIGTERM.

use reasonq::app::Endpoint;
use reasonq::config::Config;
use reasonq::serve::{self, ServeOptions, KEY_ENV};
use reasonq::shutdown::{exit_code, Shutdown};

use super::args::{ServeArgs, ViewArgs};
use super::{fail, CliResult, Outcome};

const MIB: u64 = 1024 * 1024;

pub async fn run(config: Config, args: ServeArgs, endpoint: &Endpoint) -> CliResult {
    let mut opts = ServeOptions::new(args.listen);
    // The key is read here and only compared: never printed or logged.
    opts.key = std::env::var(KEY_ENV).ok();
    opts.max_upload_bytes = args.max_upload_mb.saturating_mul(MIB);
    opts.max_body_bytes = args.max_body_mb.saturating_mul(MIB);
    opts.batch_window = std::time::Duration::from_secs(args.batch_window.max(1));
    serve::check_options(&opts).map_err(fail)?;
    let shutdown = Shutdown::new();
    let _signals = shutdown
        .listen_for_signals()
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    let label = if endpoint.simulate {
        " (simulated API)"
    } else {
        ""
    };
    let served = serve::run(
        config,
        endpoint,
        opts,
        shutdown.listener(),
        |addr, resumed| {
            eprintln!("listening on http://{addr}/v1{label}");
            if resumed > 0 {
                eprintln!("{resumed} unfinished batches resumed");
            }
        },
    )
    .await
    .map_err(fail)?;
    eprintln!("stopped: unfinished batches resume at the next start");
    Ok(match served.phase.signal() {
        Some(signal) => Outcome::Exit(exit_code(Some(signal))),
        None => Outcome::Done,
    })
}

/// `reasonq view`: the viewer's pages over the database, read-only.
pub async fn view(config: Config, args: ViewArgs) -> CliResult {
    let shutdown = Shutdown::new();
    let _signals = shutdown
        .listen_for_signals()
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    let db = config.db.display().to_string();
    let opts = serve::view::ViewOptions {
        listen: args.listen,
    };
    serve::view::run(config, opts, shutdown.listener(), |addr| {
        eprintln!("viewing {db} at http://{addr}/ (read-only; Ctrl-C stops)");
    })
    .await
    .map_err(fail)?;
    Ok(match shutdown.listener().phase().signal() {
        Some(signal) => Outcome::Exit(exit_code(Some(signal))),
        None => Outcome::Done,
    })
}
