//! The endpoints: auth, routing, body limits, and OpenAI's shapes for every answer.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::batches::{self, BatchRecord, Status};
use super::files::{self, internal, store_error, PURPOSE_BATCH};
use super::parse::{self, ApiError};
use super::Service;
use crate::app::batch::{self, BatchOptions};
use crate::app::metrics;
use crate::cache::Hit;
use crate::error::Error;
use crate::llm::LlmError;
use crate::runner::CallError;

/// An answer's body: most are whole, file contents stream from disk.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
pub(super) type Answer = Response<Body>;
type Handled = std::result::Result<Answer, ApiError>;

/// Answers one request; never fails (a refusal is an error body).
pub async fn handle(svc: Arc<Service>, req: Request<Incoming>) -> Answer {
    match route(&svc, req).await {
        Ok(answer) => answer,
        Err(e) => {
            svc.count_error(e.metric_code());
            json_answer(e.status, &e.body())
        }
    }
}

async fn route(svc: &Arc<Service>, req: Request<Incoming>) -> Handled {
    let viewer = {
        let segments: Vec<&str> = req
            .uri()
            .path()
            .trim_end_matches('/')
            .split('/')
            .skip(1)
            .collect();
        super::view::is_view_path(&segments)
    };
    if viewer {
        // The pages authorize their own way: a browser sends a cookie, not a bearer key.
        return Ok(super::view::actions::handle(svc, req).await);
    }
    if !authorized(svc, req.headers()) {
        return Err(ApiError::new(
            401,
            "authentication_error",
            "invalid_api_key",
            "Incorrect or missing API key: send 'Authorization: Bearer <REASONQ_SERVE_KEY>'.",
        ));
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let query = parts.uri.query();
    let m = &parts.method;
    match segments.as_slice() {
        ["healthz"] if m == Method::GET => Ok(text(200, "text/plain", "ok\n".into())),
        ["metrics"] if m == Method::GET => metrics_text(svc).await,
        ["v1", "models"] if m == Method::GET => models(svc).await,
        ["v1", "chat", "completions"] if m == Method::POST => {
            let body = read_body(body, &parts.headers, svc.opts.max_body_bytes).await?;
            chat(svc, &body).await
        }
        ["v1", "files"] if m == Method::POST => upload(svc, &parts.headers, body).await,
        ["v1", "files"] if m == Method::GET => list_files(svc, query).await,
        ["v1", "files", id] if m == Method::GET => {
            let record = file(svc, id).await?;
            Ok(json_answer(200, &record.object()))
        }
        ["v1", "files", id, "content"] if m == Method::GET => content(svc, id).await,
        ["v1", "files", id] if m == Method::DELETE => delete_file(svc, id).await,
        ["v1", "batches"] if m == Method::POST => {
            let body = read_body(body, &parts.headers, svc.opts.max_body_bytes).await?;
            create_batch(svc, &body).await
        }
        ["v1", "batches"] if m == Method::GET => list_batches(svc, query).await,
        ["v1", "batches", id] if m == Method::GET => {
            let record = batch_record(svc, id).await?;
            batch_answer(svc, &record).await
        }
        ["v1", "batches", id, "cancel"] if m == Method::POST => cancel(svc, id).await,
        _ => Err(ApiError::new(
            404,
            "invalid_request_error",
            "unknown_url",
            format!(
                "Unknown request URL: {} {}.",
                parts.method,
                parts.uri.path()
            ),
        )),
    }
}

/// Whether the request carries the service key (always, when none is set).
pub(super) fn authorized(svc: &Service, headers: &HeaderMap) -> bool {
    let Some(key) = &svc.opts.key else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    same_secret(given, key)
}

/// Whether `given` is `expected`. The digests are compared in full, so the time taken says
/// nothing about the secret.
pub(super) fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

pub(super) fn json_answer(status: u16, body: &Value) -> Answer {
    text(status, "application/json", Bytes::from(body.to_string()))
}

pub(super) fn text(status: u16, content_type: &str, body: Bytes) -> Answer {
    let body = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    with_status(status, content_type, body)
}

pub(super) fn with_status(status: u16, content_type: &str, body: Body) -> Answer {
    let mut answer = Response::new(body);
    *answer.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        answer.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    answer
}

/// The whole body, refused with 413 past `limit`.
pub(super) async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::too_large(limit)),
        Err(e) => Err(ApiError::invalid(
            format!("Could not read the request body: {e}"),
            None,
        )),
    }
}

async fn metrics_text(svc: &Service) -> Handled {
    let snapshot = metrics::snapshot(&svc.app, &svc.connected, svc.error_counts())
        .await
        .map_err(|e| store_error(&e))?;
    Ok(text(
        200,
        "text/plain; version=0.0.4",
        Bytes::from(metrics::render(&snapshot)),
    ))
}

async fn models(svc: &Service) -> Handled {
    let names = if svc.connected.sim.is_some() {
        vec![svc.app.config.model.clone()]
    } else {
        svc.connected
            .client()
            .models()
            .await
            .map_err(|e| upstream_error(&e))?
    };
    let data: Vec<Value> = names
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "reasonq"}))
        .collect();
    Ok(json_answer(200, &json!({"object": "list", "data": data})))
}

/// Passes a chat completion through the gateway: a deterministic request already answered
/// comes from the cache (`x-reasonq-cache` says which tier).
async fn chat(svc: &Service, body: &[u8]) -> Handled {
    let request = parse::chat_request(body)?;
    match svc.connected.gateway.call(&request).await {
        Ok((outcome, hit)) => {
            let mut answer = text(outcome.status, "application/json", outcome.body);
            let tier = match hit {
                Hit::Memory => "memory",
                Hit::Disk => "disk",
                Hit::Miss => "miss",
                Hit::Bypass => "bypass",
            };
            answer
                .headers_mut()
                .insert("x-reasonq-cache", header::HeaderValue::from_static(tier));
            Ok(answer)
        }
        Err(CallError::Llm(e)) => {
            svc.count_error(format!("upstream_{}", e.code()));
            Err(upstream_error(&e))
        }
        Err(CallError::Halted(trip)) => Err(ApiError::new(
            503,
            "server_error",
            trip.code,
            format!("The upstream cannot serve requests now: {}", trip.message),
        )),
        Err(CallError::Store(e)) => Err(store_error(&e)),
    }
}

/// The upstream's refusal in OpenAI's shape: its status, type, code and message, except
/// for its answers about our credentials, which are none of the client's business.
fn upstream_error(e: &LlmError) -> ApiError {
    match e {
        LlmError::Api(a) if a.status == 401 || a.status == 403 => ApiError::new(
            502,
            "server_error",
            "upstream_auth",
            "The upstream refused this server's credentials.",
        ),
        LlmError::Api(a) => ApiError {
            status: a.status,
            message: a.message.clone(),
            kind: if a.status >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            },
            param: None,
            code: a.code.clone().or_else(|| a.error_type.clone()),
        },
        other => ApiError::new(
            502,
            "server_error",
            other.code(),
            format!("The upstream did not answer: {other}"),
        ),
    }
}

async fn upload(svc: &Service, headers: &HeaderMap, body: Incoming) -> Handled {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = svc.opts.max_upload_bytes;
    // The parts' headers take a little room beyond the file itself.
    if declared.is_some_and(|n| n > limit.saturating_add(64 * 1024)) {
        return Err(ApiError::too_large(limit));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = parse::boundary(content_type)?;
    let upload = files::receive(
        &svc.files_dir,
        body,
        boundary,
        limit.saturating_add(64 * 1024),
    )
    .await?;
    if upload.record.bytes > limit {
        let _ = tokio::fs::remove_file(files::path_of(&svc.files_dir, &upload.record.id)).await;
        return Err(ApiError::too_large(limit));
    }
    let object = upload.record.object();
    files::insert(&svc.app, upload.record)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(json_answer(200, &object))
}

async fn file(svc: &Service, id: &str) -> Result<files::FileRecord, ApiError> {
    if !parse::plausible_id(id) {
        return Err(ApiError::not_found("file", id));
    }
    files::get(&svc.app, id)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| ApiError::not_found("file", id))
}

async fn list_files(svc: &Service, query: Option<&str>) -> Handled {
    let q = parse::list_query(query)?;
    let page = files::page(&svc.app, q.after.clone(), q.limit, q.purpose.clone())
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| no_such_after(q.after.as_deref()))?;
    let data: Vec<Value> = page.items.iter().map(|f| f.object()).collect();
    Ok(json_answer(200, &list_body(data, page.has_more)))
}

fn no_such_after(after: Option<&str>) -> ApiError {
    ApiError::invalid(
        format!(
            "No object with id '{}' to list after.",
            after.unwrap_or_default()
        ),
        Some("after"),
    )
}

fn list_body(data: Vec<Value>, has_more: bool) -> Value {
    let first = data.first().and_then(|d| d.get("id")).cloned();
    let last = data.last().and_then(|d| d.get("id")).cloned();
    json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more})
}

/// Streams the file from disk in chunks: a million-line output costs no more memory than
/// a small one.
async fn content(svc: &Service, id: &str) -> Handled {
    use futures_util::TryStreamExt;
    let record = file(svc, id).await?;
    let opened = tokio::fs::File::open(files::path_of(&svc.files_dir, &record.id)).await;
    let file = opened.map_err(|e| internal(format!("cannot read file {id}: {e}")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| internal(format!("cannot read file {id}: {e}")))?
        .len();
    let chunks = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let body = StreamBody::new(chunks.map_ok(hyper::body::Frame::data)).boxed_unsync();
    let mut answer = with_status(200, "application/octet-stream", body);
    answer
        .headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    Ok(answer)
}

async fn delete_file(svc: &Service, id: &str) -> Handled {
    let record = file(svc, id).await?;
    let in_use = batches::reads_file(svc, &record.id)
        .await
        .map_err(|e| store_error(&e))?;
    if in_use {
        return Err(ApiError::invalid(
            format!("File '{id}' is the input of a batch that has not ended; cancel it first."),
            None,
        )
        .with_code("file_in_use"));
    }
    files::remove(&svc.app, &record.id)
        .await
        .map_err(|e| store_error(&e))?;
    let _ = tokio::fs::remove_file(files::path_of(&svc.files_dir, &record.id)).await;
    Ok(json_answer(
        200,
        &json!({"id": record.id, "object": "file", "deleted": true}),
    ))
}

/// Checks the request and the whole input file (the CLI's checks and messages, naming the
/// file by its id), stores the batch and starts it.
async fn create_batch(svc: &Arc<Service>, body: &[u8]) -> Handled {
    let request = parse::create_batch(body)?;
    let input = match file(svc, &request.input_file_id).await {
        Ok(f) => f,
        Err(mut e) if e.status == 404 => {
            e.param = Some("input_file_id".into());
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if input.purpose != PURPOSE_BATCH {
        return Err(ApiError::invalid(
            format!(
                "File '{}' has purpose '{}', not 'batch'.",
                input.id, input.purpose
            ),
            Some("input_file_id"),
        ));
    }
    let path = files::path_of(&svc.files_dir, &input.id);
    let opts = BatchOptions {
        input: path.clone(),
        output: Some(svc.files_dir.join(".check.out")),
        errors: Some(svc.files_dir.join(".check.errors")),
        ..BatchOptions::default()
    };
    let model = svc.app.config.model.clone();
    let checked = tokio::task::spawn_blocking(move || batch::read(&opts, &model))
        .await
        .map_err(|e| internal(format!("input check failed: {e}")))?;
    match checked {
        Ok(_) => {}
        Err(Error::Invalid(message)) => {
            let message = message.replace(&path.display().to_string(), &input.id);
            return Err(ApiError::invalid(message, Some("input_file_id")).with_code("invalid_file"));
        }
        Err(e) => return Err(store_error(&e)),
    }
    let record = BatchRecord::new(
        request.input_file_id,
        request.endpoint,
        request.completion_window,
        request.metadata,
        svc.opts.batch_window,
    );
    batches::insert(svc, &record)
        .await
        .map_err(|e| store_error(&e))?;
    svc.spawn_drive(record.id.clone());
    batch_answer(svc, &record).await
}

async fn batch_record(svc: &Service, id: &str) -> Result<BatchRecord, ApiError> {
    if !parse::plausible_id(id) {
        return Err(ApiError::not_found("batch", id));
    }
    batches::get(svc, id)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| ApiError::not_found("batch", id))
}

async fn batch_object(svc: &Service, record: &BatchRecord) -> Result<Value, ApiError> {
    let counts = batches::counts(svc, &record.id)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(record.object(&counts))
}

async fn batch_answer(svc: &Service, record: &BatchRecord) -> Handled {
    Ok(json_answer(200, &batch_object(svc, record).await?))
}

async fn list_batches(svc: &Service, query: Option<&str>) -> Handled {
    let q = parse::list_query(query)?;
    let page = batches::page(svc, q.after.clone(), q.limit)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| no_such_after(q.after.as_deref()))?;
    let mut data = Vec::with_capacity(page.items.len());
    for record in &page.items {
        data.push(batch_object(svc, record).await?);
    }
    Ok(json_answer(200, &list_body(data, page.has_more)))
}

async fn cancel(svc: &Service, id: &str) -> Handled {
    let record = batch_record(svc, id).await?;
    if record.status.is_terminal() && record.status != Status::Cancelled {
        return Err(ApiError::new(
            409,
            "invalid_request_error",
            "batch_not_cancellable",
            format!(
                "Batch '{id}' is {}: it cannot be cancelled.",
                record.status.as_str()
            ),
        ));
    }
    let record = batches::cancel(svc, id)
        .await
        .map_err(|e| store_error(&e))?;
    batch_answer(svc, &record).await
}
