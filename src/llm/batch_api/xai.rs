//! xAI Batch (REST): a named batch that requests are added to, results read in pages.
//!
//! Shapes, as the official SDK sends them (the REST reference and the proto agree on the
//! names):
//!
//! | call | body / answer |
//! | --- | --- |
//! | `POST /batches` | `{"name"}` → batch `{batch_id, name, create_time, expire_time, cancel_time?, cancel_by_xai_message?, state: {num_requests, num_pending, num_success, num_error, num_cancelled}}` |
//! | `POST /batches/{id}/requests` | `{"batch_requests": [{"batch_request_id", "batch_request": {"chat_get_completion": BODY}}]}`, BODY the chat-completions body as it is; answers `{}` |
//! | `GET /batches/{id}/requests` | `{"batch_request_metadata": [{batch_request_id, state, …}], "pagination_token"}` |
//! | `GET /batches/{id}/results` | `{"results": [{"batch_request_id", "batch_result": {"response": {"chat_get_completion": COMPLETION}} \| {"error": …}}], "pagination_token"}` |
//! | `GET /batches` | `{"batches": [...], "pagination_token"}` |
//! | `POST /batches/{id}:cancel` | → batch |
//!
//! Pages take `limit` (default 100) and `pagination_token`; an empty or absent token ends
//! the listing. The counters are int64, which proto JSON may write as strings: both are read.
//! Times are RFC 3339. A result's `error` is a string in the SDK's types but a
//! `google.rpc.Status` `{code, message}` in the proto; both are read, and a gRPC code maps to
//! the HTTP status of [`Outcome::HttpError`] (`CANCELLED` is [`Outcome::Cancelled`]).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{
    enc, json_body, json_str, now_unix, one_line, unix_from_rfc3339, BatchApi, Found, LlmError,
    Match, Outcome, Pace, RemoteBatch, RemoteCounts, RemoteRequest, RemoteResult, RemoteState,
    Replay, ValidationError, MAX_PAGES,
};

/// Largest body of one add call: the docs allow 25 MB; the rest is margin.
pub(super) const MAX_ADD_BYTES: usize = 24_000_000;

/// "A team can send up to 100 add-batch-requests API calls every 30 seconds."
const ADD_CALLS: usize = 100;
const ADD_WINDOW: Duration = Duration::from_secs(30);

/// Page size of the listings.
const PAGE: u32 = 100;

#[derive(Debug, Deserialize)]
pub(super) struct Batch {
    batch_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    create_time: Option<String>,
    #[serde(default)]
    expire_time: Option<String>,
    #[serde(default)]
    cancel_time: Option<String>,
    #[serde(default)]
    cancel_by_xai_message: Option<String>,
    #[serde(default)]
    state: Option<State>,
}

#[derive(Debug, Default, Deserialize)]
struct State {
    #[serde(default, deserialize_with = "int64")]
    num_requests: u64,
    #[serde(default, deserialize_with = "int64")]
    num_pending: u64,
    #[serde(default, deserialize_with = "int64")]
    num_success: u64,
    #[serde(default, deserialize_with = "int64")]
    num_error: u64,
    #[serde(default, deserialize_with = "int64")]
    num_cancelled: u64,
}

/// A proto int64: a JSON number or a string of digits.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Text(String),
        Null(()),
    }
    match N::deserialize(d)? {
        N::Num(n) => Ok(n),
        N::Text(s) => s.trim().parse().map_err(serde::de::Error::custom),
        N::Null(()) => Ok(0),
    }
}

impl Batch {
    /// The batch at time `now` (xAI has no state field: it follows from the counters, the
    /// cancel time and the expiry).
    pub(super) fn into_remote(self, now: u64) -> RemoteBatch {
        let s = self.state.unwrap_or_default();
        let cancelled = self.cancel_time.is_some() || self.cancel_by_xai_message.is_some();
        let expired = self
            .expire_time
            .as_deref()
            .and_then(unix_from_rfc3339)
            .is_some_and(|t| t <= now);
        let state = if cancelled {
            if s.num_pending > 0 {
                RemoteState::Cancelling
            } else {
                RemoteState::Cancelled
            }
        } else if expired && (s.num_pending > 0 || s.num_requests == 0) {
            RemoteState::Expired
        } else if s.num_requests == 0 {
            RemoteState::Validating
        } else if s.num_pending > 0 {
            RemoteState::InProgress
        } else {
            RemoteState::Completed
        };
        let errors = self
            .cancel_by_xai_message
            .map(|message| ValidationError {
                line: None,
                code: "cancelled_by_xai".into(),
                message,
            })
            .into_iter()
            .collect();
        let ended_at = match state {
            RemoteState::Cancelled => self.cancel_time.as_deref().and_then(unix_from_rfc3339),
            RemoteState::Expired => self.expire_time.as_deref().and_then(unix_from_rfc3339),
            _ => None,
        };
        RemoteBatch {
            id: self.batch_id,
            state,
            counts: RemoteCounts {
                total: s.num_requests,
                succeeded: s.num_success,
                failed: s.num_error + s.num_cancelled,
                pending: s.num_pending,
            },
            errors,
            tag: self.name,
            created_at: self.create_time.as_deref().and_then(unix_from_rfc3339),
            ended_at,
            output_file_id: None,
            error_file_id: None,
            results_url: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct BatchList {
    #[serde(default)]
    batches: Vec<Batch>,
    #[serde(default)]
    pagination_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RequestList {
    #[serde(default)]
    batch_request_metadata: Vec<RequestMeta>,
    #[serde(default)]
    pagination_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RequestMeta {
    #[serde(default)]
    batch_request_id: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ResultList {
    #[serde(default)]
    results: Vec<Value>,
    #[serde(default)]
    pagination_token: Option<String>,
}

/// The next page's token; `None` when the listing is done.
fn next(token: Option<String>) -> Option<String> {
    token.filter(|t| !t.is_empty())
}

fn page_path(base: &str, limit: u32, token: &Option<String>) -> String {
    match token {
        None => format!("{base}?limit={limit}"),
        Some(t) => format!("{base}?limit={limit}&pagination_token={}", enc(t)),
    }
}

pub(super) async fn stage(api: &BatchApi, tag: &str) -> Result<String, LlmError> {
    let body = json_body(&serde_json::json!({ "name": tag }))?;
    api.create(
        "batch creation",
        || {
            let body = Some(body.clone());
            Box::pin(async move {
                let b: Batch = api
                    .json(
                        Method::POST,
                        "batches",
                        body,
                        Replay::IfUnsent,
                        "batch object",
                    )
                    .await?;
                Ok(b.batch_id)
            })
        },
        |since| Box::pin(async move { Ok(find_named(api, tag, since).await?.map(|b| b.id)) }),
    )
    .await
}

pub(super) async fn start(
    api: &BatchApi,
    id: &str,
    reqs: &[RemoteRequest],
) -> Result<RemoteBatch, LlmError> {
    let policy = &api.client.config().retry;
    let mut pace = Pace::new(ADD_CALLS, ADD_WINDOW);
    let mut have = request_ids(api, id).await?;
    let mut lost = 0;
    'rounds: loop {
        let missing: Vec<&RemoteRequest> = reqs
            .iter()
            .filter(|r| !have.contains(&r.custom_id))
            .collect();
        if missing.is_empty() {
            break;
        }
        for chunk in chunks(&missing, api.xai_chunk_bytes)? {
            pace.wait().await;
            let path = format!("batches/{}/requests", enc(id));
            let call = api.call(
                Method::POST,
                &path,
                Some((
                    chunk.body.clone(),
                    HeaderValue::from_static("application/json"),
                )),
                Replay::IfUnsent,
            );
            match api.client.request(call, |_| Ok(())).await {
                Ok(()) => have.extend(chunk.ids),
                Err(e) if e.is_retryable() && lost + 1 < policy.max_attempts.max(1) => {
                    // The requests may or may not be in: ask the batch, then add what it lacks.
                    lost += 1;
                    tracing::info!(
                        attempt = lost,
                        code = e.code(),
                        "adding requests to an xAI batch: the answer may be lost; listing the batch's requests"
                    );
                    tokio::time::sleep(policy.delay_after(lost, &e)).await;
                    have = request_ids(api, id).await?;
                    continue 'rounds;
                }
                Err(e) => return Err(e),
            }
        }
    }
    get(api, id).await
}

/// One add call's body and the ids it carries.
struct Chunk {
    body: Bytes,
    ids: Vec<String>,
}

/// The requests as add-call bodies of at most `max` bytes each.
fn chunks(reqs: &[&RemoteRequest], max: usize) -> Result<Vec<Chunk>, LlmError> {
    const OPEN: &[u8] = b"{\"batch_requests\":[";
    const CLOSE: &[u8] = b"]}";
    let mut out = Vec::new();
    let mut body = Vec::new();
    let mut ids = Vec::new();
    for r in reqs {
        let mut item = Vec::with_capacity(r.body.len() + 96);
        item.extend_from_slice(b"{\"batch_request_id\":");
        item.extend_from_slice(json_str(&r.custom_id).as_bytes());
        item.extend_from_slice(b",\"batch_request\":{\"chat_get_completion\":");
        item.extend_from_slice(&one_line(&r.body));
        item.extend_from_slice(b"}}");
        if OPEN.len() + item.len() + CLOSE.len() > max {
            return Err(LlmError::InvalidRequest(format!(
                "{}: the request is over xAI's {max} bytes per add call",
                r.custom_id
            )));
        }
        if !ids.is_empty() && body.len() + 1 + item.len() + CLOSE.len() > max {
            body.extend_from_slice(CLOSE);
            out.push(Chunk {
                body: Bytes::from(std::mem::take(&mut body)),
                ids: std::mem::take(&mut ids),
            });
        }
        if ids.is_empty() {
            body.extend_from_slice(OPEN);
        } else {
            body.push(b',');
        }
        body.extend_from_slice(&item);
        ids.push(r.custom_id.clone());
    }
    if !ids.is_empty() {
        body.extend_from_slice(CLOSE);
        out.push(Chunk {
            body: Bytes::from(body),
            ids,
        });
    }
    Ok(out)
}

/// The ids of the requests the batch holds, with their states.
async fn request_states(api: &BatchApi, id: &str) -> Result<Vec<(String, String)>, LlmError> {
    let base = format!("batches/{}/requests", enc(id));
    let mut token = None;
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let page: RequestList = api
            .json(
                Method::GET,
                &page_path(&base, PAGE, &token),
                None,
                Replay::Always,
                "batch request list",
            )
            .await?;
        out.extend(page.batch_request_metadata.into_iter().filter_map(|m| {
            let state = m.state.unwrap_or_default().to_ascii_lowercase();
            let state = state.strip_prefix("state_").unwrap_or(&state).to_owned();
            Some((m.batch_request_id?, state))
        }));
        token = next(page.pagination_token);
        if token.is_none() {
            break;
        }
    }
    Ok(out)
}

async fn request_ids(api: &BatchApi, id: &str) -> Result<HashSet<String>, LlmError> {
    Ok(request_states(api, id)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// Batches named `tag` created since `since`, the fullest first, then the newest.
async fn named(api: &BatchApi, tag: &str, since: u64) -> Result<Vec<RemoteBatch>, LlmError> {
    let mut token = None;
    let mut found = Vec::new();
    let now = now_unix();
    // The listing's order is not documented, so it is read to the end.
    for _ in 0..MAX_PAGES {
        let page: BatchList = api
            .json(
                Method::GET,
                &page_path("batches", PAGE, &token),
                None,
                Replay::Always,
                "batch list",
            )
            .await?;
        for b in page.batches {
            if b.name.as_deref() == Some(tag) {
                let b = b.into_remote(now);
                if b.created_at.is_none_or(|t| t >= since) {
                    found.push(b);
                }
            }
        }
        token = next(page.pagination_token);
        if token.is_none() {
            break;
        }
    }
    found.sort_by_key(|b| std::cmp::Reverse((b.counts.total, b.created_at)));
    Ok(found)
}

async fn find_named(
    api: &BatchApi,
    tag: &str,
    since: u64,
) -> Result<Option<RemoteBatch>, LlmError> {
    Ok(named(api, tag, since).await?.into_iter().next())
}

pub(super) async fn find(
    api: &BatchApi,
    tag: &str,
    since: u64,
    requests: usize,
) -> Result<Found, LlmError> {
    let Some(b) = find_named(api, tag, since).await? else {
        return Ok(Found {
            staged: None,
            batch: None,
            matched: Match::None,
        });
    };
    let complete = b.counts.total >= requests as u64;
    Ok(Found {
        staged: Some(b.id.clone()),
        batch: complete.then_some(b),
        matched: Match::Tag,
    })
}

pub(super) async fn get(api: &BatchApi, id: &str) -> Result<RemoteBatch, LlmError> {
    let path = format!("batches/{}", enc(id));
    let b: Batch = api
        .json(Method::GET, &path, None, Replay::Always, "batch object")
        .await?;
    Ok(b.into_remote(now_unix()))
}

pub(super) async fn cancel(api: &BatchApi, id: &str) -> Result<RemoteBatch, LlmError> {
    let path = format!("batches/{}:cancel", enc(id));
    let b: Batch = api
        .json(Method::POST, &path, None, Replay::Always, "batch object")
        .await?;
    Ok(b.into_remote(now_unix()))
}

pub(super) async fn results(
    api: &BatchApi,
    batch: &RemoteBatch,
    on: &mut (dyn FnMut(RemoteResult) -> Result<(), LlmError> + Send),
) -> Result<(), LlmError> {
    let base = format!("batches/{}/results", enc(&batch.id));
    let mut token: Option<String> = None;
    let mut limit = PAGE;
    let mut seen = HashSet::new();
    for _ in 0..MAX_PAGES * 8 {
        let page: ResultList = match api
            .json(
                Method::GET,
                &page_path(&base, limit, &token),
                None,
                Replay::Always,
                "batch result list",
            )
            .await
        {
            Ok(p) => p,
            // A page of long answers over the size cap: ask for fewer at a time.
            Err(LlmError::TooLarge { .. }) if limit > 1 => {
                limit /= 2;
                continue;
            }
            Err(e) => return Err(e),
        };
        for item in page.results {
            match parse_result(&item) {
                Some(r) => {
                    seen.insert(r.custom_id.clone());
                    on(r)?;
                }
                None => tracing::warn!("xAI result without a batch_request_id skipped"),
            }
        }
        token = next(page.pagination_token);
        if token.is_none() {
            break;
        }
    }
    // Cancelled requests have no result; the request listing names them.
    if (seen.len() as u64) < batch.counts.total && batch.counts.failed > 0 {
        for (id, state) in request_states(api, &batch.id).await? {
            if state == "cancelled" && !seen.contains(&id) {
                on(RemoteResult {
                    custom_id: id,
                    outcome: Outcome::Cancelled,
                })?;
            }
        }
    }
    Ok(())
}

/// One result of a results page; `None` when it names no request.
pub(super) fn parse_result(item: &Value) -> Option<RemoteResult> {
    let custom_id = item.get("batch_request_id")?.as_str()?.to_owned();
    let result = item.get("batch_result");
    let error = result
        .and_then(|r| r.get("error"))
        .or_else(|| item.get("error"))
        .or_else(|| item.get("error_message"))
        .filter(|e| !no_error(e));
    let completion = result
        .and_then(|r| r.get("response"))
        .and_then(|r| r.get("chat_get_completion"))
        .filter(|c| c.is_object());
    let outcome = match (completion, error) {
        (Some(c), None) => match serde_json::to_vec(c) {
            Ok(body) => Outcome::Succeeded {
                body: Bytes::from(body),
            },
            Err(e) => failed("malformed_result", e.to_string()),
        },
        (_, Some(e)) => error_outcome(e),
        (None, None) => match result.and_then(|r| r.get("response")) {
            Some(other) => failed(
                "unsupported_result",
                format!("not a chat completion: {}", excerpt(other)),
            ),
            None => failed("malformed_result", "neither response nor error".into()),
        },
    };
    Some(RemoteResult { custom_id, outcome })
}

/// An error field that says there is no error (`null`, `""`, `{"code": 0}`).
fn no_error(e: &Value) -> bool {
    match e {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(o) => {
            let code_zero = o
                .get("code")
                .is_none_or(|c| c.as_i64() == Some(0) || c.is_null());
            let no_text = o
                .get("message")
                .is_none_or(|m| m.is_null() || m.as_str() == Some(""));
            code_zero && no_text
        }
        _ => false,
    }
}

fn error_outcome(e: &Value) -> Outcome {
    let (code, message) = match e {
        Value::String(s) => return failed("xai_error", s.clone()),
        Value::Object(o) => (
            o.get("code").cloned().unwrap_or(Value::Null),
            o.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        other => return failed("xai_error", other.to_string()),
    };
    let Some(grpc) = code.as_u64() else {
        let code = code
            .as_str()
            .map_or_else(|| "xai_error".to_owned(), str::to_owned);
        return failed(&code, message);
    };
    let (status, name) = match grpc {
        1 => return Outcome::Cancelled,
        2 => (500, "unknown"),
        3 => (400, "invalid_argument"),
        4 => (504, "deadline_exceeded"),
        5 => (404, "not_found"),
        7 => (403, "permission_denied"),
        8 => (429, "resource_exhausted"),
        9 => (400, "failed_precondition"),
        11 => (400, "out_of_range"),
        12 => (501, "unimplemented"),
        13 => (500, "internal"),
        14 => (503, "unavailable"),
        16 => (401, "unauthenticated"),
        other => return failed(&format!("grpc_{other}"), message),
    };
    let body = serde_json::json!({
        "error": { "message": message, "type": name, "param": null, "code": null }
    });
    Outcome::HttpError {
        status,
        body: Bytes::from(body.to_string()),
    }
}

fn failed(code: &str, message: String) -> Outcome {
    Outcome::Failed {
        code: code.to_owned(),
        message,
    }
}

fn excerpt(v: &Value) -> String {
    let text = v.to_string();
    text.chars().take(120).collect()
}
