//! xAI's native Batch API, mounted under `/xai`.
//!
//! Follows <https://docs.x.ai/developers/rest-api-reference/inference/batches> (the batch
//! object: `batch_id`, `name`, `create_time`, `expire_time`, `create_api_key_id`,
//! `cancel_time`, `cancel_by_xai_message`, `state{num_requests, num_pending, num_success,
//! num_error, num_cancelled}`) and <https://docs.x.ai/docs/guides/batch-api> (add requests
//! as `batch_requests[{batch_request_id, batch_request:{chat_get_completion}}]`; results
//! paged by `limit` and `pagination_token`, available as soon as each request finishes;
//! cancel as `POST /batches/{id}:cancel`; limits: 25 MB per add call, 100 add calls per
//! 30 s per team, 1 batch creation per second), and xAI's `batch.proto` for the shapes the
//! REST pages leave out. Choices where the docs are silent:
//!
//! - Errors are `{"code": <gRPC status text>, "error": <message>}` as xAI's REST API
//!   answers elsewhere; over 25 MB is a 413, the rate limits are 429s.
//! - Page size is `limit` (the reference) or `page_size` (the guide's curl examples),
//!   default 100; a page token is opaque (the last batch id, or a position).
//! - Results: `{results:[{batch_request_id, batch_result:{response:{chat_get_completion:
//!   <chat.completion>}} | {error:{code, message}}}], pagination_token}`, `error` a
//!   `google.rpc.Status` with the gRPC code of the HTTP status; cancelled requests never ran
//!   and are not in the results; requests of an expired batch are errors (`code` 4).
//! - An add call is all or nothing; `batch_request_id` is generated (a UUID) when left out
//!   and must be unique in the batch; adding to a cancelled or expired batch is a 400.
//! - A request's state in `GET /batches/{id}/requests` is `pending`, `succeeded`, `failed`
//!   or `cancelled`, as the guide writes them.
//! - `POST /batches` also takes an `input_file_id` (an uploaded OpenAI-format JSONL file),
//!   the OpenAI-compatible path xAI added; its `custom_id`s become `batch_request_id`s.
//! - Cost is `cost_breakdown.total_cost_usd_ticks` at an invented price (1,000 ticks an
//!   input token, 2,500 an output token: $0.20/$0.50 per million, halved).

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response};
use serde_json::{json, Value};

use super::store::{now_ms, rfc3339, uuid, Batch, Inner, Line, Outcome};
use super::{json, limit_param, openai, take_fault, BatchState, Call, ControlError, Protocol};
use crate::sim::SimBody;

pub(super) async fn handle(call: Call<'_>) -> io::Result<Response<SimBody>> {
    let segs = call.segments();
    match (call.method, segs.as_slice()) {
        (&Method::POST, ["files"]) => openai::upload(&call).await,
        (&Method::GET, ["files"]) => openai::list_files(&call),
        (&Method::GET, ["files", id]) => openai::get_file(&call, id),
        (&Method::GET, ["files", id, "content"]) => openai::file_content(&call, id).await,
        (&Method::DELETE, ["files", id]) => openai::delete_file(&call, id),
        (&Method::POST, ["batches"]) => create(&call),
        (&Method::GET, ["batches"]) => list(&call),
        (&Method::POST, ["batches", id]) if cancel_target(id).is_some() => {
            cancel(&call, cancel_target(id).unwrap_or_default())
        }
        (&Method::GET, ["batches", id]) => retrieve(&call, id).await,
        (&Method::POST, ["batches", id, "requests"]) => add(&call, id),
        (&Method::GET, ["batches", id, "requests"]) => list_requests(&call, id),
        (&Method::GET, ["batches", id, "results"]) => results(&call, id).await,
        _ => error(404, &format!("No route for {} {}", call.method, call.path)),
    }
}

/// `{id}:cancel` (also percent-encoded) -> `{id}`.
fn cancel_target(seg: &str) -> Option<&str> {
    seg.strip_suffix(":cancel")
        .or_else(|| seg.strip_suffix("%3Acancel"))
        .or_else(|| seg.strip_suffix("%3acancel"))
}

fn error(status: u16, message: &str) -> io::Result<Response<SimBody>> {
    let code = match status {
        401 => "The request does not have valid authentication credentials for the operation.",
        403 => "The caller does not have permission to execute the specified operation.",
        404 => "Some requested entity was not found.",
        429 => "Some resource has been exhausted, perhaps a per-user quota.",
        500..=599 => "Internal error.",
        _ => "Client specified an invalid argument.",
    };
    json(status, &json!({"code": code, "error": message}))
}

/// The gRPC status code standing for an HTTP status, for `batch_result.error.code`.
fn grpc_code(status: u16) -> u16 {
    match status {
        400 | 413 | 422 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        409 => 10,
        429 => 8,
        501 => 12,
        503 => 14,
        504 => 4,
        _ => 13,
    }
}

fn own<'a>(inner: &'a Inner, id: &str) -> Option<&'a Batch> {
    inner
        .batches
        .get(id)
        .filter(|b| b.protocol == Protocol::Xai)
}

fn no_batch(id: &str) -> io::Result<Response<SimBody>> {
    error(404, &format!("Batch with ID {id} not found."))
}

/// Drops the instants older than `window` and reports whether `max` remain.
fn window_full(q: &mut std::collections::VecDeque<Instant>, window: Duration, max: usize) -> bool {
    let now = Instant::now();
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
    q.len() >= max
}

fn create(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let Ok(v) = serde_json::from_slice::<Value>(&call.body) else {
        return error(400, "Failed to parse the request body as JSON.");
    };
    let Some(name) = v
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return error(400, "name: a non-empty batch name is required.");
    };
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    if let Some(max) = inner.limits.xai_creates_per_second {
        if window_full(&mut inner.xai_creates, Duration::from_secs(1), max) {
            let msg = format!(
                "Batch creation rate limit exceeded: at most {max} batch per second per team."
            );
            return error(429, &msg);
        }
    }
    let mut lines = Vec::new();
    let mut index = std::collections::HashMap::new();
    if let Some(fid) = v.get("input_file_id").and_then(Value::as_str) {
        let data = match inner.files.get(fid).map(|f| &f.content) {
            Some(super::store::FileContent::Data(d)) => d.clone(),
            _ => return error(400, &format!("input_file_id: no file with ID {fid}.")),
        };
        let parsed = match openai::parse_file(&data) {
            Ok(p) => p,
            Err(e) => return error(400, &e.message),
        };
        for p in parsed {
            if index
                .insert(Box::from(p.custom_id.as_str()), lines.len() as u32)
                .is_some()
            {
                let msg = format!(
                    "Line {}: custom_id '{}' is not unique in the file.",
                    p.line, p.custom_id
                );
                return error(400, &msg);
            }
            lines.push(Line::new(&p.custom_id, p.body));
        }
    }
    inner.xai_creates.push_back(Instant::now());
    let seq = inner.next_seq();
    let mut b = Batch::new(format!("batch_{}", uuid(seq, 0x8a1)), Protocol::Xai, lines);
    b.name = Some(name.to_owned());
    b.index = index;
    let v = object(&b);
    inner.add_batch(b);
    json(200, &v)
}

/// The batch object of the REST reference, with the cost breakdown of `batch.proto`.
fn object(b: &Batch) -> Value {
    let c = b.counts();
    let (input, output) = b.usage();
    let ticks = input * 1000 + output * 2500;
    json!({
        "batch_id": b.id,
        "name": b.name,
        "create_time": rfc3339(b.created_ms),
        "expire_time": rfc3339(b.expires_ms),
        "create_api_key_id": "sim-api-key",
        "cancel_time": b.times.cancelled.map(rfc3339),
        "cancel_by_xai_message": null,
        "state": {
            "num_requests": b.lines.len(),
            "num_pending": c.pending,
            "num_success": c.succeeded,
            "num_error": c.errored + c.expired,
            "num_cancelled": c.cancelled,
        },
        "cost_breakdown": {
            "total_cost_usd_ticks": ticks,
            "endpoint_costs": [{"endpoint": "/v1/chat/completions", "cost_usd_ticks": ticks,
                                "request_count": c.succeeded}],
            "calculation_time": rfc3339(now_ms()),
        },
    })
}

/// `GET /batches`: newest first; the token is the last batch id of the previous page.
fn list(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let limit = match limit_param(call, &["limit", "page_size"], 100, 10_000) {
        Ok(l) => l,
        Err(m) => return error(400, &m),
    };
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let all = inner.newest_first(Protocol::Xai);
    let start = match call.query.get("pagination_token").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => match all.iter().position(|b| b.id == *t) {
            Some(i) => i + 1,
            None => return error(400, "pagination_token is not valid."),
        },
    };
    let end = (start + limit).min(all.len());
    let page = &all[start..end];
    let token = (end < all.len())
        .then(|| page.last().map(|b| b.id.clone()))
        .flatten();
    let batches: Vec<Value> = page.iter().map(|b| object(b)).collect();
    json(200, &json!({"batches": batches, "pagination_token": token}))
}

async fn retrieve(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    super::poll(call, |inner| own(inner, id).map(object), || no_batch(id)).await
}

/// `POST /batches/{id}/requests`: all or nothing, within the size and rate limits.
fn add(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    inner.counters.add_request_calls += 1;
    let (window, max) = (
        inner.limits.xai_add_window,
        inner.limits.xai_adds_per_window,
    );
    if window_full(&mut inner.xai_adds, window, max) {
        let msg = format!(
            "Too many add-batch-requests calls: at most {max} every {} seconds per team.",
            window.as_secs()
        );
        return error(429, &msg);
    }
    inner.xai_adds.push_back(Instant::now());
    let max_bytes = inner.limits.xai_max_add_bytes;
    if call.body.len() > max_bytes {
        let msg = format!(
            "The request payload is {} bytes; an add-batch-requests call may carry at most {max_bytes}.",
            call.body.len()
        );
        return error(413, &msg);
    }
    let Some(b) = own(&inner, id) else {
        return no_batch(id);
    };
    if matches!(b.state, BatchState::Cancelled | BatchState::Expired) {
        let msg = format!(
            "Batch {id} is {}; no requests can be added to it.",
            b.state.openai()
        );
        return error(400, &msg);
    }
    let Ok(v) = serde_json::from_slice::<Value>(&call.body) else {
        return error(400, "Failed to parse the request body as JSON.");
    };
    let Some(items) = v.get("batch_requests").and_then(Value::as_array) else {
        return error(400, "batch_requests: field required.");
    };
    let mut fresh: Vec<(Option<String>, Bytes)> = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let rid = match item.get("batch_request_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => {
                return error(
                    400,
                    &format!("batch_requests[{i}].batch_request_id must be a string."),
                )
            }
        };
        let Some(chat) = item
            .get("batch_request")
            .and_then(|r| r.get("chat_get_completion"))
            .filter(|c| c.is_object())
        else {
            return error(
                400,
                &format!("batch_requests[{i}].batch_request.chat_get_completion is required."),
            );
        };
        if chat.get("model").and_then(Value::as_str).is_none() {
            return error(
                400,
                &format!(
                    "batch_requests[{i}].batch_request.chat_get_completion.model is required."
                ),
            );
        }
        if !chat.get("messages").is_some_and(Value::is_array) {
            return error(
                400,
                &format!(
                    "batch_requests[{i}].batch_request.chat_get_completion.messages is required."
                ),
            );
        }
        if let Some(r) = &rid {
            if b.index.contains_key(r.as_str()) || !seen.insert(r.clone()) {
                return error(
                    400,
                    &format!(
                        "batch_requests[{i}].batch_request_id '{r}' already exists in batch {id}."
                    ),
                );
            }
        }
        fresh.push((rid, Bytes::from(chat.to_string())));
    }
    let Ok(mut b) = inner.take(id) else {
        return no_batch(id);
    };
    for (rid, body) in fresh {
        let rid = match rid {
            Some(r) => r,
            None => {
                let seq = inner.next_seq();
                uuid(seq, 0x4e0)
            }
        };
        inner.count_submission(&rid);
        let n = b.lines.len() as u32;
        b.index.insert(Box::from(rid.as_str()), n);
        std::sync::Arc::make_mut(&mut b.lines).push(Line::new(&rid, body));
    }
    inner.put(b);
    inner.touch_xai(id);
    json(200, &json!({}))
}

/// A position token: the index to start from.
fn position(call: &Call<'_>) -> Option<usize> {
    match call.query.get("pagination_token").filter(|t| !t.is_empty()) {
        None => Some(0),
        Some(t) => t.parse::<usize>().ok(),
    }
}

fn list_requests(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let limit = match limit_param(call, &["limit", "page_size"], 100, 10_000) {
        Ok(l) => l,
        Err(m) => return error(400, &m),
    };
    let Some(start) = position(call) else {
        return error(400, "pagination_token is not valid.");
    };
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let Some(b) = own(&inner, id) else {
        return no_batch(id);
    };
    let end = (start + limit).min(b.lines.len());
    let meta: Vec<Value> = b.lines[start.min(end)..end]
        .iter()
        .map(|l| {
            let model = serde_json::from_slice::<Value>(&l.body)
                .ok()
                .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_owned));
            let state = match l.outcome {
                Outcome::Pending => "pending",
                Outcome::Answered { .. } => "succeeded",
                Outcome::HttpError { .. } | Outcome::Expired => "failed",
                Outcome::Cancelled => "cancelled",
            };
            json!({
                "batch_request_id": &*l.custom_id,
                "endpoint": "/v1/chat/completions",
                "model": model,
                "state": state,
                "create_time": rfc3339(l.added_ms),
                "finish_time": (l.finished_ms > 0).then(|| rfc3339(l.finished_ms)),
            })
        })
        .collect();
    let token = (end < b.lines.len()).then(|| end.to_string());
    json(
        200,
        &json!({"batch_request_metadata": meta, "pagination_token": token}),
    )
}

/// `GET /batches/{id}/results`: the finished requests so far, in finish order (shuffled
/// within each chunk that finished together); the token is a position in that order.
async fn results(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let limit = match limit_param(call, &["limit", "page_size"], 100, 10_000) {
        Ok(l) => l,
        Err(m) => return error(400, &m),
    };
    let Some(mut pos) = position(call) else {
        return error(400, "pagination_token is not valid.");
    };
    let st = call.state;
    let fault = {
        let mut inner = st.batches.lock();
        inner.counters.result_reads += 1;
        inner.download_faults.pop_front()
    };
    if let Some(r) = take_fault(fault, Bytes::new).await {
        return r;
    }
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let Some(b) = own(&inner, id) else {
        return no_batch(id);
    };
    let mut out = Vec::new();
    while pos < b.finished.len() && out.len() < limit {
        let l = &b.lines[b.finished[pos] as usize];
        pos += 1;
        if l.dropped {
            continue;
        }
        let result = match &l.outcome {
            Outcome::Answered {
                content,
                model,
                prompt_chars,
            } => {
                let body = crate::sim::completion(l.seq, model, content, *prompt_chars as usize);
                let completion: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                json!({"response": {"chat_get_completion": completion}})
            }
            Outcome::HttpError {
                status, message, ..
            } => json!({"error": {"code": grpc_code(*status), "message": message, "details": []}}),
            Outcome::Expired => json!({"error": {"code": 4, "message":
                "The batch expired before this request was processed.", "details": []}}),
            Outcome::Pending | Outcome::Cancelled => continue,
        };
        out.push(json!({"batch_request_id": &*l.custom_id, "batch_result": result}));
    }
    // Skip what this page would only have passed over, so the token means "more to read".
    while pos < b.finished.len() {
        let l = &b.lines[b.finished[pos] as usize];
        if !l.dropped && !matches!(l.outcome, Outcome::Cancelled) {
            break;
        }
        pos += 1;
    }
    let token = (pos < b.finished.len()).then(|| pos.to_string());
    json(200, &json!({"results": out, "pagination_token": token}))
}

fn cancel(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    if own(&inner, id).is_none() {
        return no_batch(id);
    }
    match inner.cancel(st, id) {
        Ok(_) => match own(&inner, id) {
            Some(b) => json(200, &object(b)),
            None => no_batch(id),
        },
        Err(ControlError::Terminal { state, .. }) => error(
            400,
            &format!("Batch {id} is {} and cannot be cancelled.", state.openai()),
        ),
        Err(_) => no_batch(id),
    }
}
