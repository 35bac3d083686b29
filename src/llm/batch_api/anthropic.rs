//! Anthropic Message Batches: `{"requests": [{custom_id, params}]}` in one call, results as
//! JSONL lines `{"custom_id", "result": {"type": "succeeded", "message"} | {"type":
//! "errored", "error"} | {"type": "canceled"} | {"type": "expired"}}`, readable once the
//! batch has ended.
//!
//! Anthropic stores nothing of ours with a batch (no metadata, no name), so a batch is found
//! again only by when it was created and how many requests it holds ([`Match::TimeAndCount`]).

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::Value;

use super::{
    enc, from_anthropic, json_str, jsonl, now_unix, to_anthropic, unix_from_rfc3339, BatchApi,
    Found, LlmError, Match, Outcome, RemoteBatch, RemoteCounts, RemoteRequest, RemoteResult,
    RemoteState, Replay, MAX_PAGES,
};

/// Page size of the listing (Anthropic allows 1 to 1000).
const PAGE: u32 = 100;

#[derive(Debug, Deserialize)]
pub(super) struct Batch {
    id: String,
    processing_status: String,
    #[serde(default)]
    request_counts: Counts,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    ended_at: Option<String>,
    #[serde(default)]
    cancel_initiated_at: Option<String>,
    #[serde(default)]
    results_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Counts {
    #[serde(default)]
    processing: u64,
    #[serde(default)]
    succeeded: u64,
    #[serde(default)]
    errored: u64,
    #[serde(default)]
    canceled: u64,
    #[serde(default)]
    expired: u64,
}

#[derive(Debug, Deserialize)]
struct List {
    data: Vec<Batch>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

impl Batch {
    pub(super) fn into_remote(self) -> RemoteBatch {
        let c = &self.request_counts;
        let state = match self.processing_status.as_str() {
            "in_progress" => RemoteState::InProgress,
            "canceling" => RemoteState::Cancelling,
            "ended" if self.cancel_initiated_at.is_some() => RemoteState::Cancelled,
            "ended" if c.expired > 0 => RemoteState::Expired,
            "ended" => RemoteState::Completed,
            other => {
                tracing::warn!(
                    status = other,
                    "unknown Anthropic processing_status; taken as in progress"
                );
                RemoteState::InProgress
            }
        };
        RemoteBatch {
            counts: RemoteCounts {
                total: c.processing + c.succeeded + c.errored + c.canceled + c.expired,
                succeeded: c.succeeded,
                failed: c.errored + c.canceled + c.expired,
                pending: c.processing,
            },
            id: self.id,
            state,
            errors: Vec::new(),
            tag: None,
            created_at: self.created_at.as_deref().and_then(unix_from_rfc3339),
            ended_at: self.ended_at.as_deref().and_then(unix_from_rfc3339),
            output_file_id: None,
            error_file_id: None,
            results_url: self.results_url,
        }
    }
}

/// Anthropic's rule for custom ids.
pub(super) fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The create body: every request translated; the error names the request and the field.
pub(super) fn encode(reqs: &[RemoteRequest], max: usize) -> Result<Bytes, LlmError> {
    let mut out = Vec::with_capacity(reqs.iter().map(|r| r.body.len() + 128).sum::<usize>() + 16);
    out.extend_from_slice(b"{\"requests\":[");
    for (i, r) in reqs.iter().enumerate() {
        let params = to_anthropic::params(&r.body)
            .map_err(|e| LlmError::InvalidRequest(format!("{}: {e}", r.custom_id)))?;
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"custom_id\":");
        out.extend_from_slice(json_str(&r.custom_id).as_bytes());
        out.extend_from_slice(b",\"params\":");
        serde_json::to_writer(&mut out, &params)
            .map_err(|e| LlmError::InvalidRequest(e.to_string()))?;
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    if out.len() > max {
        return Err(LlmError::InvalidRequest(format!(
            "the batch is {} bytes, over Anthropic's {max}",
            out.len()
        )));
    }
    Ok(Bytes::from(out))
}

pub(super) async fn start(api: &BatchApi, reqs: &[RemoteRequest]) -> Result<RemoteBatch, LlmError> {
    let body = encode(reqs, api.limits().max_bytes)?;
    // The newest batch before ours: a lost answer is looked for among the batches above it.
    let first: List = api
        .json(
            Method::GET,
            "messages/batches?limit=1",
            None,
            Replay::Always,
            "batch list",
        )
        .await?;
    let before = first.data.into_iter().next().map(|b| b.id);
    let before = before.as_deref();
    api.create(
        "batch creation",
        || {
            let content = Some((body.clone(), http::HeaderValue::from_static("application/json")));
            Box::pin(async move {
                let b: Batch = api
                    .json(Method::POST, "messages/batches", content, Replay::IfUnsent, "batch object")
                    .await?;
                Ok(b.into_remote())
            })
        },
        |since| {
            Box::pin(async move {
                let found = find(api, since, reqs.len(), before).await?;
                match found.matched {
                    Match::TimeAndCount { candidates } if candidates > 1 => Err(LlmError::InvalidRequest(format!(
                        "the answer to a batch creation was lost and {candidates} new batches of {} requests exist; \
                         not creating another (find the right one by its results' custom ids)",
                        reqs.len()
                    ))),
                    _ => Ok(found.batch),
                }
            })
        },
    )
    .await
}

/// Batches created since `since` (and above `stop_at`, when given) holding exactly
/// `requests` requests; the earliest of them is returned. The listing is newest first, as
/// the reference says, so it stops at the first older batch.
pub(super) async fn find(
    api: &BatchApi,
    since: u64,
    requests: usize,
    stop_at: Option<&str>,
) -> Result<Found, LlmError> {
    let mut after: Option<String> = None;
    let mut candidates = Vec::new();
    'pages: for _ in 0..MAX_PAGES {
        let path = match &after {
            None => format!("messages/batches?limit={PAGE}"),
            Some(a) => format!("messages/batches?limit={PAGE}&after_id={}", enc(a)),
        };
        let page: List = api
            .json(Method::GET, &path, None, Replay::Always, "batch list")
            .await?;
        for b in page.data {
            if stop_at == Some(b.id.as_str()) {
                break 'pages;
            }
            let b = b.into_remote();
            if b.created_at.is_some_and(|t| t < since) {
                break 'pages;
            }
            if b.counts.total == requests as u64 {
                candidates.push(b);
            }
        }
        match page.last_id {
            Some(last) if page.has_more => after = Some(last),
            _ => break,
        }
    }
    let n = candidates.len();
    Ok(Found {
        staged: None,
        batch: candidates.pop(),
        matched: if n == 0 {
            Match::None
        } else {
            Match::TimeAndCount { candidates: n }
        },
    })
}

pub(super) async fn get(api: &BatchApi, id: &str) -> Result<RemoteBatch, LlmError> {
    let path = format!("messages/batches/{}", enc(id));
    let b: Batch = api
        .json(Method::GET, &path, None, Replay::Always, "batch object")
        .await?;
    Ok(b.into_remote())
}

pub(super) async fn cancel(api: &BatchApi, id: &str) -> Result<RemoteBatch, LlmError> {
    let path = format!("messages/batches/{}/cancel", enc(id));
    let b: Batch = api
        .json(Method::POST, &path, None, Replay::Always, "batch object")
        .await?;
    Ok(b.into_remote())
}

/// The path of the results: `results_url` when it lies under the base URL (the key goes only
/// to the base URL's host), else the documented `messages/batches/{id}/results`.
fn results_path(api: &BatchApi, batch: &RemoteBatch) -> String {
    let fallback = format!("messages/batches/{}/results", enc(&batch.id));
    let Some(url) = &batch.results_url else {
        return fallback;
    };
    let base = api.client.config().base_url.trim_end_matches('/');
    match url
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        Some(rest) if !rest.is_empty() => rest.to_owned(),
        _ => {
            tracing::warn!(
                batch = %batch.id,
                "results_url is not under the base URL; reading the documented path instead"
            );
            fallback
        }
    }
}

pub(super) async fn results(
    api: &BatchApi,
    batch: &RemoteBatch,
    on: &mut (dyn FnMut(RemoteResult) -> Result<(), LlmError> + Send),
) -> Result<(), LlmError> {
    // Results exist only once processing has ended.
    if !batch.state.is_ended() {
        return Ok(());
    }
    let created = batch.ended_at.or(batch.created_at).unwrap_or_else(now_unix);
    let path = results_path(api, batch);
    jsonl::each_line(
        api,
        &path,
        &mut |line: Bytes| match parse_line(&line, created) {
            Some(r) => on(r),
            None => {
                tracing::warn!(
                    bytes = line.len(),
                    "Anthropic result line without a custom_id skipped"
                );
                Ok(())
            }
        },
    )
    .await
}

/// One results line; `None` when it names no custom id.
pub(super) fn parse_line(line: &[u8], created: u64) -> Option<RemoteResult> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let custom_id = v.get("custom_id")?.as_str()?.to_owned();
    let result = v.get("result");
    let outcome = match result.and_then(|r| r.get("type")).and_then(Value::as_str) {
        Some("succeeded") => {
            let message = result
                .and_then(|r| r.get("message"))
                .unwrap_or(&Value::Null);
            match from_anthropic::completion(message, created) {
                Ok(c) => Outcome::Succeeded {
                    body: Bytes::from(c.to_string()),
                },
                Err(message) => Outcome::Failed {
                    code: "malformed_result".into(),
                    message,
                },
            }
        }
        Some("errored") => from_anthropic::errored(result.and_then(|r| r.get("error"))),
        Some("canceled") => Outcome::Cancelled,
        Some("expired") => Outcome::Expired,
        other => Outcome::Failed {
            code: "malformed_result".into(),
            message: format!("result type {other:?}"),
        },
    };
    Some(RemoteResult { custom_id, outcome })
}
