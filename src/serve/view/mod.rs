//! The results viewer: server-rendered pages over a database (`GET /` of `reasonq serve`,
//! and `reasonq view`, which serves them read-only). One file per page; [`html`] escapes
//! every text that comes from a prompt, an answer or a name. The data comes from
//! [`crate::app::view`]; the only script is this server's `/static/view.js` (live refresh
//! and the confirmations of actions) and the Content-Security-Policy allows no other.

/// Appends formatted text to a `String` (which cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($out, $($arg)*);
    }};
}

pub mod actions;
mod batches;
pub mod html;
mod line;
mod lines;
mod memory;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use super::routes::{text, with_status, Answer};
use crate::app::inspect::{export_of, Pick};
use crate::app::{live, App};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::shutdown::Listener;
use crate::store::Store;

/// The Content-Security-Policy of every page: only this server's script and style sheet,
/// no inline script, no other origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

const SCRIPT: &str = include_str!("view.js");
const STYLE: &str = include_str!("view.css");

/// What the pages may offer besides reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actions {
    /// `reasonq view`: nothing.
    ReadOnly,
    /// `reasonq serve` without a key (loopback): retry and cancel, after a confirmation.
    Open,
    /// `reasonq serve` with a key: the same, with the key the page asks for.
    WithKey,
}

/// The pages over one database.
#[derive(Clone)]
pub struct Pages {
    pub store: Store,
    pub actions: Actions,
}

impl Pages {
    fn frame<'a>(&self, title: &'a str, tab: &'a str, live: Option<&'a str>) -> html::Frame<'a> {
        html::Frame {
            title,
            tab,
            live,
            key_required: self.actions == Actions::WithKey,
            read_only: self.actions == Actions::ReadOnly,
        }
    }
}

/// Whether a path is one of the viewer's (so the router sends it here).
pub fn is_view_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        [] | ["view", ..] | ["static", "view.js" | "view.css"]
    )
}

/// Answers a `GET` of a viewer path (`None`: no such page).
pub async fn get(pages: &Pages, segments: &[&str], query: Option<&str>) -> Option<Answer> {
    let decoded: Vec<String> = segments
        .iter()
        .map(|s| super::parse::percent_decode(&s.replace('+', "%2B")))
        .collect::<Option<_>>()?;
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let answer = match parts.as_slice() {
        ["static", "view.js"] => Ok(asset("text/javascript; charset=utf-8", SCRIPT)),
        ["static", "view.css"] => Ok(asset("text/css; charset=utf-8", STYLE)),
        [] | ["view"] => batches::page(pages).await,
        ["view", "api", "batches"] => batches::live_json(pages).await,
        ["view", "batches", batch] => lines::page(pages, batch, query).await,
        ["view", "batches", batch, "output.jsonl"] => export(pages, batch, Pick::Lines).await,
        ["view", "batches", batch, "errors.jsonl"] => export(pages, batch, Pick::Errors).await,
        ["view", "batches", batch, "lines", n] => match n.parse::<u64>() {
            Ok(n) => line::page(pages, batch, n).await,
            Err(_) => Ok(not_found(pages, &format!("no line {n:?}"))),
        },
        ["view", "memory"] => memory::page(pages, query).await,
        _ => return None,
    };
    Some(match answer {
        Ok(answer) => secured(answer),
        Err(e) => secured(html_answer(
            pages,
            500,
            "Error",
            &format!(
                "<h1>Error</h1><p class=\"error\">{}</p>",
                html::esc(&e.to_string())
            ),
        )),
    })
}

/// A page answer with `status`.
fn html_answer(pages: &Pages, status: u16, title: &str, body: &str) -> Answer {
    let frame = pages.frame(title, "", None);
    text(
        status,
        "text/html; charset=utf-8",
        Bytes::from(html::page(&frame, body)),
    )
}

/// The 404 page.
fn not_found(pages: &Pages, what: &str) -> Answer {
    html_answer(
        pages,
        404,
        "Not found",
        &format!(
            "<h1>Not found</h1><p>{}</p><p><a href=\"/\">All batches</a></p>",
            html::esc(what)
        ),
    )
}

fn asset(content_type: &str, body: &'static str) -> Answer {
    let mut answer = text(200, content_type, Bytes::from_static(body.as_bytes()));
    answer.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    answer
}

/// Adds the security headers every viewer answer carries.
pub fn secured(mut answer: Answer) -> Answer {
    let h = answer.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    answer
}

/// Bytes of an export sent per chunk, and chunks the export may run ahead of the socket.
const CHUNK_BYTES: usize = 64 * 1024;
const CHUNKS_AHEAD: usize = 4;

/// A batch's output or errors file, made from the database as it is sent: the export runs
/// on the blocking pool and hands chunks to the body through a short channel, so a 1M-line
/// batch is never one buffer and a slow reader slows the export instead of filling memory.
async fn export(pages: &Pages, batch: &str, pick: Pick) -> Result<Answer> {
    if crate::app::view::batch(&pages.store, batch)
        .await?
        .is_none()
    {
        return Ok(not_found(pages, &format!("no batch named {batch:?}")));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(CHUNKS_AHEAD);
    let store = pages.store.clone();
    let name = batch.to_string();
    tokio::spawn(async move {
        let pending = Arc::new(std::sync::Mutex::new(Vec::with_capacity(CHUNK_BYTES)));
        let (chunk, sink_tx) = (Arc::clone(&pending), tx.clone());
        let sent = export_of(&store, &name, pick, move |line| {
            let mut chunk = chunk.lock().map_err(|_| Error::Closed)?;
            chunk.extend_from_slice(line.as_bytes());
            chunk.push(b'\n');
            if chunk.len() >= CHUNK_BYTES {
                let full = std::mem::replace(&mut *chunk, Vec::with_capacity(CHUNK_BYTES));
                drop(chunk);
                // On the blocking pool (`Store::read`): waiting here is allowed.
                sink_tx
                    .blocking_send(Ok(Bytes::from(full)))
                    .map_err(|_| Error::Task("the client went away".into()))?;
            }
            Ok(())
        })
        .await;
        let last = match sent {
            Ok(_) => pending
                .lock()
                .map(|mut rest| Ok(Bytes::from(std::mem::take(&mut *rest))))
                .unwrap_or_else(|_| Err(std::io::Error::other("the export lock was poisoned"))),
            // An error cuts the body short: the client sees an incomplete answer.
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let _ = tx.send(last).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    let body = StreamBody::new(stream).boxed_unsync();
    let mut answer = with_status(200, "application/x-ndjson; charset=utf-8", body);
    let file = match pick {
        Pick::Errors => "errors",
        _ => "output",
    };
    let disposition = format!("inline; filename=\"{}.{file}.jsonl\"", html::url(batch));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        answer.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(answer)
}

/// How `reasonq view` listens.
#[derive(Debug, Clone)]
pub struct ViewOptions {
    pub listen: SocketAddr,
}

/// `reasonq view`: opens the database (no workers, no upstream), serves the pages
/// read-only until `shutdown`, and answers other processes' status commands meanwhile.
/// `ready` gets the bound address. A database another process holds is refused with what
/// to do instead.
pub async fn run(
    config: Config,
    opts: ViewOptions,
    shutdown: Listener,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    if !opts.listen.ip().is_loopback() {
        return Err(Error::Invalid(format!(
            "--listen {}: `reasonq view` has no key, so it listens on loopback only (reach it \
             with `ssh -L`, or run `reasonq serve` with {} to share the pages)",
            opts.listen,
            super::KEY_ENV
        )));
    }
    let db = config.db.clone();
    // A viewer never makes a database: a wrong path is an error, not an empty file.
    if !tokio::fs::try_exists(&db).await.unwrap_or(false) {
        return Err(Error::Invalid(format!(
            "no database at {} (--db names it; `reasonq batch` makes one)",
            db.display()
        )));
    }
    let app = match App::open_or_locked(config).await {
        Ok(app) => app,
        Err(Error::Locked { path }) => {
            let holder = if live::answering(&db).await {
                "a running `reasonq batch` or `reasonq serve`"
            } else {
                "another process"
            };
            return Err(Error::Invalid(format!(
                "database {path} is held by {holder}; `reasonq view` needs it to itself \
                 (redb lets one process open a file). While a batch runs, `reasonq status` \
                 shows its progress; a `reasonq serve` shows these pages itself at GET /. \
                 Run `reasonq view` when it ends."
            )));
        }
        Err(e) => return Err(e),
    };
    let served = serve_pages(&app, opts, shutdown, ready).await;
    let closed = app.close().await;
    served.and(closed)
}

async fn serve_pages(
    app: &App,
    opts: ViewOptions,
    shutdown: Listener,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let (listener, addr) = super::bind(opts.listen).await?;
    let live = super::serve_live(app).await;
    let pages = Arc::new(Pages {
        store: app.store.clone(),
        actions: Actions::ReadOnly,
    });
    ready(addr);
    let mut conns = super::accept_until(listener, shutdown, move |req| {
        let pages = Arc::clone(&pages);
        async move { read_only(&pages, &req).await }
    })
    .await;
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    drop(live);
    Ok(())
}

/// `reasonq view`'s router: the pages' `GET`s, and nothing else.
async fn read_only(pages: &Pages, req: &Request<Incoming>) -> Answer {
    let path = req.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if req.method() == Method::GET || req.method() == Method::HEAD {
        if let Some(answer) = get(pages, &segments, req.uri().query()).await {
            return answer;
        }
        return secured(not_found(pages, &format!("no page {path}")));
    }
    let mut refused = secured(html_answer(
        pages,
        405,
        "Read-only",
        "<h1>Read-only</h1><p><code>reasonq view</code> only shows pages; actions are on \
         <code>reasonq serve</code>.</p>",
    ));
    refused
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    refused
}
