//! `reasonq serve`: an OpenAI-compatible batch service in the process that holds the
//! database and runs the workers. Files ([`files`]) and batches ([`batches`]) are OpenAI's
//! objects over reasonq's own batches; chat completions go through the gateway (cache,
//! retries, rate limits); `/metrics` is [`crate::app::metrics`]. The request parsers are
//! pure ([`parse`]) so they can be fuzzed.

pub mod batches;
pub mod files;
mod index;
pub mod parse;
mod routes;
pub mod view;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::app::{App, Connected, Endpoint};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::shutdown::{Listener, Phase};
use crate::store::tables;

/// The environment variable of the service's own bearer key (the binary reads it).
pub const KEY_ENV: &str = "REASONQ_SERVE_KEY";

/// How the service listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The bearer key every request must carry; required off loopback.
    pub key: Option<String>,
    /// Largest upload (`POST /v1/files`).
    pub max_upload_bytes: u64,
    /// Largest JSON body (batch creation, chat completions).
    pub max_body_bytes: u64,
    /// How long a batch may run before it expires (OpenAI's `24h` completion window).
    pub batch_window: Duration,
}

impl ServeOptions {
    /// 127.0.0.1:8089, no key, OpenAI's 200 MB upload limit, 16 MiB JSON bodies.
    pub fn new(listen: SocketAddr) -> ServeOptions {
        ServeOptions {
            listen,
            key: None,
            max_upload_bytes: 200 * 1024 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            batch_window: batches::DEFAULT_WINDOW,
        }
    }
}

/// How the service ended.
#[derive(Debug, Clone)]
pub struct Served {
    /// The phase the shutdown was in (its signal gives the exit code).
    pub phase: Phase,
    /// Batches resumed at the start.
    pub resumed: usize,
}

/// What every request handler shares.
pub struct Service {
    app: App,
    connected: Connected,
    files_dir: PathBuf,
    opts: ServeOptions,
    shutdown: Listener,
    /// One drive task per running batch.
    drives: Mutex<JoinSet<()>>,
    /// Error answers by code, for `/metrics`.
    errors: Mutex<BTreeMap<String, u64>>,
    /// The results viewer (`GET /`), with its actions.
    pages: view::Pages,
}

impl Service {
    /// Runs `id` in the background.
    fn spawn_drive(self: &Arc<Self>, id: String) {
        let me = Arc::clone(self);
        self.drives
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawn(batches::drive(me, id));
    }

    fn count_error(&self, code: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code)
            .or_default() += 1;
    }

    fn error_counts(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Refuses a listen address off loopback without a key: the service spends the upstream
/// account's money for whoever reaches it.
pub fn check_options(opts: &ServeOptions) -> Result<()> {
    if opts.key.as_deref().is_some_and(str::is_empty) {
        return Err(Error::Invalid(format!("{KEY_ENV} is set but empty")));
    }
    if !opts.listen.ip().is_loopback() && opts.key.is_none() {
        return Err(Error::Invalid(format!(
            "--listen {} is not a loopback address: set {KEY_ENV} to the bearer key clients \
             must send",
            opts.listen
        )));
    }
    Ok(())
}

/// Opens the database, connects, resumes unfinished batches and serves until `shutdown`
/// drains: then it stops accepting, lets the batches' drains return their jobs within the
/// drain timeout, and closes the database. `ready` gets the bound address and the number
/// of batches resumed.
pub async fn run(
    config: Config,
    endpoint: &Endpoint,
    opts: ServeOptions,
    shutdown: Listener,
    ready: impl FnOnce(SocketAddr, usize),
) -> Result<Served> {
    check_options(&opts)?;
    let (listener, addr) = bind(opts.listen).await?;
    let app = App::open(config).await?;
    let connected = match app.connect(endpoint).await {
        Ok(c) => c,
        Err(e) => {
            let _ = app.close().await;
            return Err(e);
        }
    };
    let files_dir = files::dir_of(&app.config.db);
    if let Err(e) = tokio::fs::create_dir_all(&files_dir).await {
        let _ = app.close().await;
        return Err(Error::Write {
            path: files_dir.display().to_string(),
            message: e.to_string(),
        });
    }
    let pages = view::Pages {
        store: app.store.clone(),
        actions: match opts.key {
            Some(_) => view::Actions::WithKey,
            None => view::Actions::Open,
        },
    };
    let svc = Arc::new(Service {
        pages,
        app,
        connected,
        files_dir,
        opts,
        shutdown: shutdown.clone(),
        drives: Mutex::new(JoinSet::new()),
        errors: Mutex::new(BTreeMap::new()),
    });
    svc.app
        .store
        .write(|txn| {
            index::build_once(
                txn,
                &[
                    (
                        tables::SERVE_FILES,
                        tables::SERVE_FILES_BY_TIME,
                        files::created_ms,
                    ),
                    (
                        tables::SERVE_BATCHES,
                        tables::SERVE_BATCHES_BY_TIME,
                        batches::created_ms,
                    ),
                ],
            )
        })
        .await?;
    let unfinished = batches::unfinished(&svc).await?;
    let resumed = unfinished.len();
    for id in unfinished {
        svc.spawn_drive(id);
    }
    let live = serve_live(&svc.app).await;
    ready(addr, resumed);
    let handler = Arc::clone(&svc);
    let mut conns = accept_until(listener, shutdown.clone(), move |req| {
        let svc = Arc::clone(&handler);
        async move { routes::handle(svc, req).await }
    })
    .await;
    // The drains see the same shutdown: they return their jobs within the drain timeout.
    let mut drives =
        std::mem::take(&mut *svc.drives.lock().unwrap_or_else(PoisonError::into_inner));
    while drives.join_next().await.is_some() {}
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    drop(live);
    svc.app.close().await?;
    Ok(Served {
        phase: shutdown.phase(),
        resumed,
    })
}

/// Binds `listen`, naming it in the error.
async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let failed = |e: std::io::Error| Error::Invalid(format!("cannot listen on {listen}: {e}"));
    let listener = TcpListener::bind(listen).await.map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}

/// Answers other processes' read-only commands (status, jobs, results) while this process
/// holds the database, until the server returned drops; without it the work goes on.
async fn serve_live(app: &App) -> Option<crate::app::live::Server> {
    match crate::app::live::serve(app).await {
        Ok(live) => Some(live),
        Err(e) => {
            tracing::warn!("status commands of other processes will not be answered: {e}");
            None
        }
    }
}

/// Accepts connections until `shutdown` stops, each request answered by `handle`; returns
/// the connections still open (the caller aborts them when it is ready to).
async fn accept_until<H, F>(listener: TcpListener, mut shutdown: Listener, handle: H) -> JoinSet<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = routes::Answer> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(stream, handle.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.stopping() => break,
        }
    }
    conns
}

async fn serve_connection<H, F>(stream: tokio::net::TcpStream, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = routes::Answer> + Send + 'static,
{
    let handler = service_fn(move |req| {
        let answer = handle(req);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), handler)
        .await
    {
        tracing::debug!("connection ended: {e}");
    }
}
