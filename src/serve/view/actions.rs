//! The viewer inside `reasonq serve`: who may see the pages, the login that lets a browser
//! in when the service has a key, and the actions (retry a batch's failed lines, cancel a
//! batch).
//!
//! A browser cannot send a bearer key with a link, so with a key set the pages take a
//! cookie instead: `POST /view/login` with the key sets it (HttpOnly, SameSite=Strict; its
//! value is a digest of the key, never the key). The cookie only reads. An action is a
//! `POST` that must carry the header `X-Reasonq-Action` (another site's form cannot set
//! it) and, with a key set, the key itself as `Authorization: Bearer`: the page asks for it
//! after the confirmation.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request};
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{html, secured, Answer};
use crate::app::cancel::cancel_batch;
use crate::app::retry::{retry_failed, RetryFilter};
use crate::serve::batches::{self, Status};
use crate::serve::routes::{authorized, json_answer, read_body, same_secret, text};
use crate::serve::Service;

/// The cookie that lets a browser read the pages of a service with a key.
const COOKIE: &str = "reasonq_view";
/// The header an action must carry.
pub const ACTION_HEADER: &str = "x-reasonq-action";
/// Largest login form.
const LOGIN_BYTES: u64 = 4096;

/// Answers a viewer path of `reasonq serve`.
pub async fn handle(svc: &Arc<Service>, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let pages = &svc.pages;
    match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["view", "login"]) => {
            let form = read_body(body, &parts.headers, LOGIN_BYTES).await;
            let key = form.ok().and_then(|form| {
                let text = String::from_utf8_lossy(&form).into_owned();
                crate::serve::parse::query_pairs(Some(&text))?
                    .into_iter()
                    .find(|(k, _)| k == "key")
                    .map(|(_, v)| v)
            });
            login(svc, key.as_deref())
        }
        (&Method::GET, ["view", "login"]) => secured(login_page(svc, 200, None)),
        (&Method::GET | &Method::HEAD, ["static", ..]) => {
            let answer = super::get(pages, &segments, None).await;
            answer.unwrap_or_else(|| secured(super::not_found(pages, "no such file")))
        }
        (&Method::GET | &Method::HEAD, _) => {
            if !may_read(svc, &parts.headers) {
                return secured(login_page(svc, 401, None));
            }
            match super::get(pages, &segments, parts.uri.query()).await {
                Some(answer) => answer,
                None => secured(super::not_found(pages, &format!("no page {path}"))),
            }
        }
        (&Method::POST, ["view", "batches", batch, action @ ("retry" | "cancel")]) => {
            if parts.headers.get(ACTION_HEADER).is_none() {
                return refused(403, "An action must come from the viewer's page.");
            }
            if !authorized(svc, &parts.headers) {
                return refused(401, "Incorrect or missing service key.");
            }
            let Some(batch) = crate::serve::parse::percent_decode(&batch.replace('+', "%2B"))
            else {
                return refused(404, "No such batch.");
            };
            match *action {
                "retry" => retry(svc, &batch).await,
                _ => cancel(svc, &batch).await,
            }
        }
        _ => refused(
            405,
            "The viewer answers GET; its actions are POSTs of its page.",
        ),
    }
}

/// The cookie's value: a digest of the key, so the browser never holds the key itself.
fn cookie_value(key: &str) -> String {
    let digest = Sha256::digest(format!("reasonq view cookie\0{key}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the request may read the pages: no key set, the bearer key, or the cookie.
fn may_read(svc: &Service, headers: &HeaderMap) -> bool {
    let Some(key) = &svc.opts.key else {
        return true;
    };
    if authorized(svc, headers) {
        return true;
    }
    let expected = cookie_value(key);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|given| same_secret(given, &expected))
}

fn login(svc: &Service, given: Option<&str>) -> Answer {
    let Some(key) = &svc.opts.key else {
        return see_other("/", None);
    };
    match given {
        Some(given) if same_secret(given, key) => {
            let cookie = format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                cookie_value(key)
            );
            see_other("/", Some(cookie))
        }
        _ => secured(login_page(svc, 401, Some("That is not the service key."))),
    }
}

fn see_other(to: &'static str, cookie: Option<String>) -> Answer {
    let mut answer = text(303, "text/plain", Bytes::from_static(b"see other\n"));
    let h = answer.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, v);
    }
    secured(answer)
}

fn login_page(svc: &Service, status: u16, problem: Option<&str>) -> Answer {
    let mut body = String::from("<h1>Sign in</h1>");
    if svc.opts.key.is_none() {
        body.push_str("<p>This service has no key: <a href=\"/\">the batches</a>.</p>");
    } else {
        if let Some(problem) = problem {
            w!(body, "<p class=\"error\">{}</p>", html::esc(problem));
        }
        body.push_str(
            "<p>This service has a key (<code>REASONQ_SERVE_KEY</code>). Give it once to read \
             the pages in this browser; actions ask for it again.</p><form method=\"post\" \
             action=\"/view/login\"><label>key <input type=\"password\" name=\"key\" \
             autocomplete=\"current-password\" required></label> <button \
             type=\"submit\">Sign in</button></form>",
        );
    }
    super::html_answer(&svc.pages, status, "Sign in", &body)
}

fn refused(status: u16, message: &str) -> Answer {
    secured(json_answer(status, &json!({ "message": message })))
}

fn done(message: String) -> Answer {
    secured(json_answer(200, &json!({ "message": message })))
}

/// Sends the batch's failed lines again. A batch of this service that had ended runs
/// again, so its output and error files are made anew with the new answers; a batch of
/// `reasonq batch` runs them at the next `reasonq batch` of its file.
async fn retry(svc: &Arc<Service>, batch: &str) -> Answer {
    let record = match batches::get(svc, batch).await {
        Ok(record) => record,
        Err(e) => return refused(500, &e.to_string()),
    };
    let n = match retry_failed(&svc.app, batch, &RetryFilter::default()).await {
        Ok(n) => n,
        Err(e) => return refused(400, &e.to_string()),
    };
    let Some(record) = record else {
        return done(format!(
            "{n} failed lines of {batch} will run again at the next `reasonq batch` of its file."
        ));
    };
    if n > 0 && matches!(record.status, Status::Completed | Status::Failed) {
        let reopened = batches::update(svc, batch, |r| {
            if matches!(r.status, Status::Completed | Status::Failed) {
                r.status = Status::InProgress;
                r.completed_at = None;
                r.failed_at = None;
            }
        })
        .await;
        if let Err(e) = reopened {
            return refused(500, &e.to_string());
        }
        svc.spawn_drive(batch.to_string());
    }
    done(format!("{n} failed lines of {batch} run again."))
}

/// Cancels the batch: a batch of this service as `POST /v1/batches/{id}/cancel` does, any
/// other batch's waiting lines.
async fn cancel(svc: &Arc<Service>, batch: &str) -> Answer {
    match batches::get(svc, batch).await {
        Ok(Some(record)) => {
            if record.status.is_terminal() {
                return refused(
                    409,
                    &format!(
                        "Batch {batch} is {}: it cannot be cancelled.",
                        record.status.as_str()
                    ),
                );
            }
            match batches::cancel(svc, batch).await {
                Ok(r) => done(format!("Batch {batch} is {}.", r.status.as_str())),
                Err(e) => refused(500, &e.to_string()),
            }
        }
        Ok(None) => {
            let cancelled =
                cancel_batch(&svc.app, Some(&svc.connected), batch, svc.shutdown.clone()).await;
            match cancelled {
                Ok(c) => done(format!("{} waiting lines of {batch} cancelled.", c.waiting)),
                Err(e) => refused(400, &e.to_string()),
            }
        }
        Err(e) => refused(500, &e.to_string()),
    }
}
