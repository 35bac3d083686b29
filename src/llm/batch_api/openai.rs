//! OpenAI Batch + Files: the JSONL input file, the batch object and the output/error lines.
//!
//! Input line: `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`, the
//! body embedded as given. Output and error lines:
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
//! "error": {"code", "message"} | null}`; a 2xx response is [`Outcome::Succeeded`], another
//! status [`Outcome::HttpError`], `error.code` `batch_expired` / `batch_cancelled`
//! [`Outcome::Expired`] / [`Outcome::Cancelled`], any other error [`Outcome::Failed`].

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{
    enc, json_body, json_str, jsonl, multipart, one_line, BatchApi, Found, LlmError, Match,
    Outcome, RemoteBatch, RemoteCounts, RemoteRequest, RemoteResult, RemoteState, Replay,
    ValidationError, MAX_PAGES,
};

/// The metadata key holding the tag.
pub(super) const TAG_KEY: &str = "reasonq_tag";

/// Page size of the batch and file listings (the most the batch listing allows).
const PAGE: u32 = 100;

#[derive(Debug, Deserialize)]
pub(super) struct Batch {
    id: String,
    status: String,
    #[serde(default)]
    input_file_id: Option<String>,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    created_at: Option<u64>,
    #[serde(default)]
    completed_at: Option<u64>,
    #[serde(default)]
    failed_at: Option<u64>,
    #[serde(default)]
    expired_at: Option<u64>,
    #[serde(default)]
    cancelled_at: Option<u64>,
    #[serde(default)]
    request_counts: Option<Counts>,
    #[serde(default)]
    errors: Option<Errors>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct Counts {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    failed: u64,
}

#[derive(Debug, Deserialize)]
struct Errors {
    #[serde(default)]
    data: Vec<BatchError>,
}

#[derive(Debug, Deserialize)]
struct BatchError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    line: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct List<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct File {
    id: String,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    created_at: Option<u64>,
}

impl Batch {
    pub(super) fn into_remote(self) -> RemoteBatch {
        let counts = self.request_counts.unwrap_or_default();
        let state = match self.status.as_str() {
            "validating" => RemoteState::Validating,
            "in_progress" => RemoteState::InProgress,
            "finalizing" => RemoteState::Finalizing,
            "completed" => RemoteState::Completed,
            "failed" => RemoteState::Failed,
            "expired" => RemoteState::Expired,
            "cancelling" => RemoteState::Cancelling,
            "cancelled" => RemoteState::Cancelled,
            other => {
                tracing::warn!(
                    status = other,
                    "unknown OpenAI batch status; taken as in progress"
                );
                RemoteState::InProgress
            }
        };
        let tag = self
            .metadata
            .as_ref()
            .and_then(|m| m.get(TAG_KEY))
            .and_then(Value::as_str)
            .map(str::to_owned);
        RemoteBatch {
            id: self.id,
            state,
            counts: RemoteCounts {
                total: counts.total,
                succeeded: counts.completed,
                failed: counts.failed,
                pending: counts
                    .total
                    .saturating_sub(counts.completed + counts.failed),
            },
            errors: self
                .errors
                .map(|e| e.data)
                .unwrap_or_default()
                .into_iter()
                .map(|e| ValidationError {
                    line: e.line,
                    code: e.code.unwrap_or_default(),
                    message: e.message.unwrap_or_default(),
                })
                .collect(),
            tag,
            created_at: self.created_at,
            ended_at: self
                .completed_at
                .or(self.failed_at)
                .or(self.expired_at)
                .or(self.cancelled_at),
            output_file_id: self.output_file_id,
            error_file_id: self.error_file_id,
            results_url: None,
        }
    }
}

/// The JSONL input file.
pub(super) fn input_file(reqs: &[RemoteRequest]) -> Vec<u8> {
    let mut out = Vec::with_capacity(reqs.iter().map(|r| r.body.len() + 96).sum());
    for r in reqs {
        out.extend_from_slice(b"{\"custom_id\":");
        out.extend_from_slice(json_str(&r.custom_id).as_bytes());
        out.extend_from_slice(b",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":");
        out.extend_from_slice(&one_line(&r.body));
        out.extend_from_slice(b"}\n");
    }
    out
}

pub(super) async fn stage(
    api: &BatchApi,
    tag: &str,
    reqs: &[RemoteRequest],
) -> Result<String, LlmError> {
    let file = input_file(reqs);
    let max = api.limits().max_bytes;
    if file.len() > max {
        return Err(LlmError::InvalidRequest(format!(
            "the input file is {} bytes, over OpenAI's {max}",
            file.len()
        )));
    }
    let filename = format!("{tag}.jsonl");
    let (body, content_type) = multipart::form(
        &[("purpose", "batch")],
        "file",
        &filename,
        "application/jsonl",
        &file,
    )?;
    drop(file);
    let filename = &filename;
    api.create(
        "upload",
        || {
            let upload = Some((body.clone(), content_type.clone()));
            Box::pin(async move {
                let f: File = api
                    .json(
                        Method::POST,
                        "files",
                        upload,
                        Replay::IfUnsent,
                        "file object",
                    )
                    .await?;
                Ok(f.id)
            })
        },
        |since| Box::pin(find_file(api, filename, since)),
    )
    .await
}

pub(super) async fn start(
    api: &BatchApi,
    tag: &str,
    file_id: &str,
) -> Result<RemoteBatch, LlmError> {
    let body = serde_json::json!({
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": { TAG_KEY: tag },
    });
    let body = json_body(&body)?;
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
                Ok(b.into_remote())
            })
        },
        |since| Box::pin(async move { Ok(find_batch(api, tag, since).await?.map(|(b, _)| b)) }),
    )
    .await
}

pub(super) async fn find(api: &BatchApi, tag: &str, since: u64) -> Result<Found, LlmError> {
    if let Some((batch, input)) = find_batch(api, tag, since).await? {
        return Ok(Found {
            staged: input,
            batch: Some(batch),
            matched: Match::Tag,
        });
    }
    let staged = find_file(api, &format!("{tag}.jsonl"), since).await?;
    Ok(Found {
        staged,
        batch: None,
        matched: Match::None,
    })
}

/// The newest batch tagged `tag` created since `since`, with its input file. The listing is
/// newest first (what the API does; its reference does not say), so it stops at the first
/// older batch.
async fn find_batch(
    api: &BatchApi,
    tag: &str,
    since: u64,
) -> Result<Option<(RemoteBatch, Option<String>)>, LlmError> {
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let path = match &after {
            None => format!("batches?limit={PAGE}"),
            Some(a) => format!("batches?limit={PAGE}&after={}", enc(a)),
        };
        let page: List<Batch> = api
            .json(Method::GET, &path, None, Replay::Always, "batch list")
            .await?;
        for b in page.data {
            if b.created_at.is_some_and(|t| t < since) {
                return Ok(None);
            }
            let tagged = b
                .metadata
                .as_ref()
                .and_then(|m| m.get(TAG_KEY))
                .and_then(Value::as_str)
                == Some(tag);
            if tagged {
                let input = b.input_file_id.clone();
                return Ok(Some((b.into_remote(), input)));
            }
        }
        match page.last_id {
            Some(last) if page.has_more => after = Some(last),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// The newest batch-purpose file named `filename` created since `since` (files listed
/// newest first, `order=desc`).
async fn find_file(api: &BatchApi, filename: &str, since: u64) -> Result<Option<String>, LlmError> {
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!("files?purpose=batch&order=desc&limit={PAGE}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", enc(a)));
        }
        let page: List<File> = api
            .json(Method::GET, &path, None, Replay::Always, "file list")
            .await?;
        for f in page.data {
            if f.created_at.is_some_and(|t| t < since) {
                return Ok(None);
            }
            if f.filename.as_deref() == Some(filename) {
                return Ok(Some(f.id));
            }
        }
        match page.last_id {
            Some(last) if page.has_more => after = Some(last),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

pub(super) async fn get(api: &BatchApi, id: &str) -> Result<RemoteBatch, LlmError> {
    let path = format!("batches/{}", enc(id));
    let b: Batch = api
        .json(Method::GET, &path, None, Replay::Always, "batch object")
        .await?;
    Ok(b.into_remote())
}

pub(super) async fn cancel(api: &BatchApi, id: &str) -> Result<RemoteBatch, LlmError> {
    let path = format!("batches/{}/cancel", enc(id));
    let b: Batch = api
        .json(Method::POST, &path, None, Replay::Always, "batch object")
        .await?;
    Ok(b.into_remote())
}

pub(super) async fn results(
    api: &BatchApi,
    batch: &RemoteBatch,
    on: &mut (dyn FnMut(RemoteResult) -> Result<(), LlmError> + Send),
) -> Result<(), LlmError> {
    for file in [&batch.output_file_id, &batch.error_file_id]
        .into_iter()
        .flatten()
    {
        let path = format!("files/{}/content", enc(file));
        jsonl::each_line(api, &path, &mut |line: Bytes| match parse_line(&line) {
            Some(r) => on(r),
            None => {
                tracing::warn!(
                    bytes = line.len(),
                    "OpenAI result line without a custom_id skipped"
                );
                Ok(())
            }
        })
        .await?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Line<'a> {
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default, borrow)]
    response: Option<Response<'a>>,
    #[serde(default)]
    error: Option<LineError>,
}

#[derive(Debug, Deserialize)]
struct Response<'a> {
    status_code: u16,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct LineError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// One output or error line; `None` when it names no custom id.
pub(super) fn parse_line(line: &[u8]) -> Option<RemoteResult> {
    let parsed = serde_json::from_slice::<Line<'_>>(line);
    let custom_id = match &parsed {
        Ok(l) => l.custom_id.clone()?,
        // Unparseable as a whole: salvage the id so the request is not left silent.
        Err(_) => serde_json::from_slice::<Value>(line)
            .ok()?
            .get("custom_id")?
            .as_str()?
            .to_owned(),
    };
    let outcome = match parsed {
        Err(e) => malformed(e.to_string()),
        Ok(Line {
            response: Some(r), ..
        }) => {
            let body = Bytes::copy_from_slice(r.body.map_or("null", RawValue::get).as_bytes());
            if (200..300).contains(&r.status_code) {
                Outcome::Succeeded { body }
            } else {
                Outcome::HttpError {
                    status: r.status_code,
                    body,
                }
            }
        }
        Ok(Line { error: Some(e), .. }) => {
            let code = e.code.unwrap_or_default();
            match code.as_str() {
                "batch_expired" => Outcome::Expired,
                "batch_cancelled" => Outcome::Cancelled,
                _ => Outcome::Failed {
                    code,
                    message: e.message.unwrap_or_default(),
                },
            }
        }
        Ok(_) => malformed("neither response nor error".into()),
    };
    Some(RemoteResult { custom_id, outcome })
}

fn malformed(message: String) -> Outcome {
    Outcome::Failed {
        code: "malformed_result".into(),
        message,
    }
}
