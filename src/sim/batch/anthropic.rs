//! Anthropic's Message Batches API (and the live Messages API, to compare answers).
//!
//! Follows <https://docs.anthropic.com/en/docs/build-with-claude/batch-processing> and the
//! API reference (`creating-message-batches`, `retrieving-message-batches`,
//! `listing-message-batches`, `canceling-message-batches`, `deleting-message-batches`,
//! `retrieving-message-batch-results`). Notable, as documented: `request_counts` stay all
//! `processing` until the whole batch ends; `results_url` is set only once it has ended;
//! results come in no particular order. Choices where the docs are silent:
//!
//! - Auth (only when the server has an `api_key`): a wrong `x-api-key` is a 401
//!   `authentication_error`, a missing `anthropic-version` a 400.
//! - A create over 256 MB is a 413 `request_too_large`; over 100,000 requests, an empty
//!   list, a bad or duplicate `custom_id`, or `params` without `model`, `max_tokens` or
//!   `messages` are 400s naming the request (`requests.3.custom_id: ...`).
//! - Results of a batch still processing, canceling an ended batch and deleting one still
//!   processing are 400 `invalid_request_error`s; results are `application/x-jsonl`.
//! - An errored request's `error` is the usual error envelope
//!   `{"type":"error","error":{type,message}}`, its type from the HTTP status.

use std::io;

use bytes::Bytes;
use http::{Method, Response};
use serde_json::{json, Value};

use super::store::{b62_id, rfc3339, stream_lines, Batch, Inner, Line, Outcome};
use super::{json, limit_param, take_fault, BatchState, Call, ControlError, Protocol};
use crate::sim::SimBody;

pub(super) async fn handle(call: Call<'_>) -> io::Result<Response<SimBody>> {
    if let Some(key) = &call.state.cfg.api_key {
        if call.header("x-api-key") != Some(key.as_str()) {
            return error(401, "authentication_error", "invalid x-api-key");
        }
        if call.header("anthropic-version").is_none() {
            return error(
                400,
                "invalid_request_error",
                "anthropic-version: header is required",
            );
        }
    }
    match (call.method, call.segments().as_slice()) {
        (&Method::POST, ["messages"]) => live(&call),
        (&Method::POST, ["messages", "batches"]) => create(&call),
        (&Method::GET, ["messages", "batches"]) => list(&call),
        (&Method::GET, ["messages", "batches", id]) => retrieve(&call, id).await,
        (&Method::DELETE, ["messages", "batches", id]) => delete(&call, id),
        (&Method::POST, ["messages", "batches", id, "cancel"]) => cancel(&call, id),
        (&Method::GET, ["messages", "batches", id, "results"]) => results(&call, id).await,
        _ => {
            let msg = format!("Not found: {} {}", call.method, call.path);
            error(404, "not_found_error", &msg)
        }
    }
}

/// `{"type":"error","error":{"type":kind,"message":message}}`.
pub(super) fn error(status: u16, kind: &str, message: &str) -> io::Result<Response<SimBody>> {
    json(status, &error_value(kind, message))
}

fn error_value(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's error type for an HTTP status.
fn kind_of(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

fn invalid(message: &str) -> io::Result<Response<SimBody>> {
    error(400, "invalid_request_error", message)
}

/// The chat-completions request that `params` stand for: the system prompt first, then the
/// messages; a single text block becomes string content, several stay text parts, so the
/// same prompt gives the same answer as through `/chat/completions`.
pub(super) fn to_chat(params: &Value) -> Result<Value, String> {
    let Some(p) = params.as_object() else {
        return Err("params: Input should be an object".into());
    };
    let model = p
        .get("model")
        .and_then(Value::as_str)
        .ok_or("params.model: Field required")?;
    let max_tokens = p
        .get("max_tokens")
        .and_then(Value::as_u64)
        .ok_or("params.max_tokens: Field required")?;
    let msgs = p
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("params.messages: Field required")?;
    let mut out = Vec::with_capacity(msgs.len() + 1);
    match p.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => out.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            out.push(json!({"role": "system", "content": text_of(blocks)}))
        }
        Some(_) => {
            return Err("params.system: Input should be a string or a list of text blocks".into())
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user" | "assistant")) {
            return Err(format!(
                "params.messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => json!(s),
            Some(Value::Array(blocks)) => text_of(blocks),
            _ => return Err(format!("params.messages.{i}.content: Field required")),
        };
        out.push(json!({"role": role, "content": content}));
    }
    let mut chat = json!({"model": model, "messages": out, "max_tokens": max_tokens});
    for k in ["temperature", "top_p"] {
        if let Some(v) = p.get(k) {
            chat[k] = v.clone();
        }
    }
    Ok(chat)
}

fn text_of(blocks: &[Value]) -> Value {
    let texts: Vec<&str> = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    match texts.as_slice() {
        [one] => json!(one),
        many => Value::Array(
            many.iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect(),
        ),
    }
}

/// A Messages API `message` built from the answer (tokens as `completion()` counts them).
pub(super) fn message(seq: u64, model: &str, content: &str, prompt_chars: usize) -> Value {
    json!({
        "id": b62_id("msg_", seq, 0x3e55),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": content}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": prompt_chars / 4 + 1, "output_tokens": content.len() / 4 + 1},
    })
}

/// `POST /messages`: one live answer, by the same logic as a batched one.
fn live(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let Ok(params) = serde_json::from_slice::<Value>(&call.body) else {
        return invalid("The request body is not valid JSON.");
    };
    let chat = match to_chat(&params) {
        Ok(c) => c,
        Err(m) => return invalid(&m),
    };
    let d = crate::sim::decide(call.state, &chat);
    let seq = call.state.batches.lock().next_seq();
    if let Some(f) = d.fault {
        if let Some((status, _, msg)) = super::store::http_failure(&f) {
            return error(status, kind_of(status), &msg);
        }
    }
    json(200, &message(seq, &d.model, &d.content, d.prompt_chars))
}

fn valid_custom_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn create(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let st = call.state;
    let (max_bytes, max_requests) = {
        let inner = st.batches.lock();
        (
            inner.limits.anthropic_max_bytes,
            inner.limits.anthropic_max_requests,
        )
    };
    if call.body.len() > max_bytes {
        let msg = format!("Request exceeds the maximum allowed number of bytes ({max_bytes}).");
        return error(413, "request_too_large", &msg);
    }
    let Ok(v) = serde_json::from_slice::<Value>(&call.body) else {
        return invalid("The request body is not valid JSON.");
    };
    let Some(requests) = v.get("requests").and_then(Value::as_array) else {
        return invalid("requests: Field required");
    };
    if requests.is_empty() {
        return invalid("requests: List should have at least 1 item after validation, not 0");
    }
    if requests.len() > max_requests {
        let msg = format!(
            "requests: List should have at most {max_requests} items after validation, not {}",
            requests.len()
        );
        return invalid(&msg);
    }
    let mut seen = std::collections::HashSet::new();
    let mut lines = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let Some(cid) = r.get("custom_id").and_then(Value::as_str) else {
            return invalid(&format!("requests.{i}.custom_id: Field required"));
        };
        if !valid_custom_id(cid) {
            return invalid(&format!(
                "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        if !seen.insert(cid) {
            return invalid(&format!(
                "requests.{i}.custom_id: Duplicate custom_id '{cid}'; custom_id must be unique within a batch"
            ));
        }
        let chat = match r.get("params").map(to_chat) {
            Some(Ok(c)) => c,
            Some(Err(m)) => return invalid(&format!("requests.{i}.{m}")),
            None => return invalid(&format!("requests.{i}.params: Field required")),
        };
        lines.push(Line::new(cid, Bytes::from(chat.to_string())));
    }
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let seq = inner.next_seq();
    let b = Batch::new(b62_id("msgbatch_", seq, 0xa7), Protocol::Anthropic, lines);
    let v = object(&b, &call.base());
    inner.add_batch(b);
    json(200, &v)
}

fn ended_at(b: &Batch) -> Option<u64> {
    match b.state {
        BatchState::Completed => b.times.completed,
        BatchState::Expired => b.times.expired,
        BatchState::Cancelled => b.times.cancelled,
        BatchState::Failed => b.times.failed,
        _ => None,
    }
}

/// The `message_batch` object.
fn object(b: &Batch, base: &str) -> Value {
    let ended = b.state.is_terminal();
    let status = match b.state {
        BatchState::Cancelling => "canceling",
        s if s.is_terminal() => "ended",
        _ => "in_progress",
    };
    let c = b.counts();
    let counts = if ended {
        json!({"processing": 0, "succeeded": c.succeeded, "errored": c.errored,
               "canceled": c.cancelled, "expired": c.expired})
    } else {
        json!({"processing": b.lines.len(), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    };
    json!({
        "id": b.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "ended_at": ended_at(b).map(rfc3339),
        "created_at": rfc3339(b.created_ms),
        "expires_at": rfc3339(b.expires_ms),
        "archived_at": null,
        "cancel_initiated_at": b.times.cancelling.map(rfc3339),
        "results_url": ended.then(|| format!("{base}/messages/batches/{}/results", b.id)),
    })
}

fn own<'a>(inner: &'a Inner, id: &str) -> Option<&'a Batch> {
    inner
        .batches
        .get(id)
        .filter(|b| b.protocol == Protocol::Anthropic)
}

fn no_batch(id: &str) -> io::Result<Response<SimBody>> {
    error(
        404,
        "not_found_error",
        &format!("No Message Batch with id '{id}'."),
    )
}

/// `GET /messages/batches`: newest first; `after_id` pages to older batches, `before_id`
/// to newer ones; `limit` 1..=1000, default 20.
fn list(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let limit = match limit_param(call, &["limit"], 20, 1000) {
        Ok(l) => l,
        Err(m) => return invalid(&m),
    };
    let st = call.state;
    let base = call.base();
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let all = inner.newest_first(Protocol::Anthropic);
    let find = |id: &str| all.iter().position(|b| b.id == id);
    let (start, end, has_more) = match (call.query.get("after_id"), call.query.get("before_id")) {
        (Some(a), _) => match find(a) {
            Some(i) => {
                let end = (i + 1 + limit).min(all.len());
                (i + 1, end, end < all.len())
            }
            None => return invalid(&format!("after_id: no Message Batch with id '{a}'")),
        },
        (None, Some(b)) => match find(b) {
            Some(i) => (i.saturating_sub(limit), i, i > limit),
            None => return invalid(&format!("before_id: no Message Batch with id '{b}'")),
        },
        (None, None) => {
            let end = limit.min(all.len());
            (0, end, end < all.len())
        }
    };
    let page = &all[start..end];
    let data: Vec<Value> = page.iter().map(|b| object(b, &base)).collect();
    json(
        200,
        &json!({
            "data": data,
            "has_more": has_more,
            "first_id": page.first().map(|b| b.id.clone()),
            "last_id": page.last().map(|b| b.id.clone()),
        }),
    )
}

async fn retrieve(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let base = call.base();
    super::poll(
        call,
        |inner| own(inner, id).map(|b| object(b, &base)),
        || no_batch(id),
    )
    .await
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
            Some(b) => json(200, &object(b, &call.base())),
            None => no_batch(id),
        },
        Err(ControlError::Terminal { .. }) => invalid(&format!(
            "Message Batch {id} has already ended and cannot be canceled."
        )),
        Err(_) => no_batch(id),
    }
}

fn delete(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let Some(b) = own(&inner, id) else {
        return no_batch(id);
    };
    if !b.state.is_terminal() {
        return invalid(&format!(
            "Message Batch {id} is still processing; cancel it and wait for it to end before deleting it."
        ));
    }
    inner.batches.remove(id);
    inner.order.retain(|b| b != id);
    json(200, &json!({"id": id, "type": "message_batch_deleted"}))
}

async fn results(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
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
    if !b.state.is_terminal() {
        return invalid(&format!(
            "Message Batch {id} has not finished processing; its results are available once processing_status is 'ended'."
        ));
    }
    let body = stream_lines(b.lines.clone(), b.finished.clone(), render_result);
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-jsonl"),
    );
    Ok(r)
}

/// One results line `{custom_id, result:{type, message|error}}`.
fn render_result(l: &Line) -> Option<String> {
    let result = match &l.outcome {
        Outcome::Pending => return None,
        Outcome::Answered {
            content,
            model,
            prompt_chars,
        } => {
            json!({"type": "succeeded", "message": message(l.seq, model, content, *prompt_chars as usize)})
        }
        Outcome::HttpError {
            status, message, ..
        } => json!({"type": "errored", "error": error_value(kind_of(*status), message)}),
        Outcome::Expired => json!({"type": "expired"}),
        Outcome::Cancelled => json!({"type": "canceled"}),
    };
    Some(json!({"custom_id": &*l.custom_id, "result": result}).to_string())
}
