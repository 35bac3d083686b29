//! The client side of three providers' own batch APIs, which answer within 24 hours at about
//! half the price of live calls: OpenAI Batch + Files, xAI Batch and Anthropic Message
//! Batches. One vocabulary ([`RemoteBatch`], [`RemoteState`], [`Outcome`]) over the three;
//! requests go in as OpenAI chat-completions bodies and results come out as OpenAI
//! `chat.completion` JSON, whatever the provider. The durable side (what was staged, started,
//! read) is the caller's: every step here is safe to repeat after a crash.
//!
//! Every call goes through the crate's [`LlmClient`] (its pool, retry policy honouring the
//! server's advice, metrics and error scrubbing), to the client's own host only, with the key
//! in the provider's header (`Authorization: Bearer` for OpenAI and xAI, `x-api-key` plus
//! `anthropic-version: 2023-06-01` for Anthropic). A create (upload, batch, add requests) is
//! retried by the client only when the server surely never saw it; after any other failure
//! the provider is asked what it has before the create is sent again, so a lost answer does
//! not pay twice.
//!
//! # The steps per protocol
//!
//! | step | OpenAI | xAI | Anthropic |
//! | --- | --- | --- | --- |
//! | [`BatchApi::stage`] | `POST /files` multipart, `purpose=batch`, file `{tag}.jsonl` → file id | `POST /batches {"name": tag}` → batch id | nothing (`None`); checks and translates the requests |
//! | [`BatchApi::start`] | `POST /batches {input_file_id, endpoint: "/v1/chat/completions", completion_window: "24h", metadata: {reasonq_tag}}` | `GET /batches/{id}/requests` (paged), then `POST /batches/{id}/requests` with the missing ones in chunks of ≤ 24 MB, at most 100 calls per 30 s `GET /messages/batches?limit=1` (the newest batch before ours, for reconciling a lost answer), then `POST /messages/batches {"requests": [{custom_id, params}]}` |
//! | [`BatchApi::find`] | batches whose `metadata.reasonq_tag` is the tag; else files named `{tag}.jsonl` | batches named `tag` (the fullest, then the newest); `batch` only once it holds every expected request, else `staged` alone | batches created since `since_unix` with the expected request count (no tag is stored) |
//! | [`BatchApi::get`] / [`BatchApi::cancel`] | `GET /batches/{id}` / `POST /batches/{id}/cancel` | `GET /batches/{id}` / `POST /batches/{id}:cancel` | `GET /messages/batches/{id}` / `POST /messages/batches/{id}/cancel` |
//! | [`BatchApi::results`] | output and error files, `GET /files/{id}/content`, streamed JSONL | `GET /batches/{id}/results?limit=100&pagination_token=…` | `results_url` (JSONL, streamed), once ended |
//!
//! # Limits per remote batch ([`BatchApi::limits`])
//!
//! | protocol | requests | bytes (the encoded upload) | source |
//! | --- | --- | --- | --- |
//! | OpenAI | 50,000 | 200 MB | guides/batch, api-reference/batch/create |
//! | xAI | 100,000 | 200 MB | none documented: "extremely large batches (>100,000 requests) may be throttled"; the byte cap is reasonq's, each add call is ≤ 25 MB |
//! | Anthropic | 100,000 | 256 MB | build-with-claude/batch-processing |
//!
//! # States ([`RemoteState`])
//!
//! | ours | OpenAI `status` | Anthropic `processing_status` | xAI (no state field; from `state` counters and times) |
//! | --- | --- | --- | --- |
//! | Validating | validating | – | no requests yet |
//! | InProgress | in_progress | in_progress | `num_pending > 0` |
//! | Finalizing | finalizing | – | – |
//! | Completed | completed | ended (no cancel, nothing expired) | requests, none pending |
//! | Failed | failed | – | – |
//! | Expired | expired | ended with `expired > 0` | past `expire_time` with requests pending |
//! | Cancelling | cancelling | canceling | `cancel_time` set, requests pending |
//! | Cancelled | cancelled | ended after `cancel_initiated_at` | `cancel_time` set, none pending |
//!
//! Counts: `total = succeeded + failed + pending`; `failed` holds errored, cancelled and expired
//! requests (OpenAI's `failed`; Anthropic's `errored + canceled + expired`; xAI's `num_error +
//! num_cancelled`).
//!
//! # Translations
//!
//! xAI's batch takes a chat-completions body as it is (`batch_request.chat_get_completion`)
//! and returns a `chat.completion` (`batch_result.response.chat_get_completion`): both pass
//! through (`xai.rs`). OpenAI lines pass through (`openai.rs`). Anthropic's are translated
//! field by field, each refusal naming the field:
//!
//! Request (`to_anthropic.rs`), chat-completions body → Messages `params`:
//!
//! | chat-completions | Messages params |
//! | --- | --- |
//! | `model` | `model` (required) |
//! | `messages[role=system\|developer]` | their text joined by a blank line into `system` (hoisted, wherever they stand) |
//! | `messages[role=user\|assistant]` | `messages`, content a string or text blocks (`{"type":"text","text"}` parts); other parts, `name`, `tool_calls`, roles `tool`/`function` refused |
//! | `max_completion_tokens`, else `max_tokens` | `max_tokens` (required by Anthropic; [`to_anthropic::DEFAULT_MAX_TOKENS`] when neither is set; both set and different is refused) |
//! | `temperature` | `temperature` (Anthropic's range is 0–1: above 1 is refused, not clamped) |
//! | `top_p` | `top_p` |
//! | `stop` (string or list) | `stop_sequences` |
//! | `user` | `metadata.user_id` |
//! | `n` | only 1 |
//! | `stream` | only false |
//! | any other non-null field | refused: "field `X` has no Anthropic Messages equivalent" |
//!
//! Result (`from_anthropic.rs`), Messages `message` → `chat.completion`:
//!
//! | Messages | chat.completion |
//! | --- | --- |
//! | `id`, `model` | `id`, `model` |
//! | – | `object: "chat.completion"`, `created`: the batch's `ended_at` (else `created_at`), Unix seconds |
//! | `content[type=text].text`, joined | `choices[0].message.content` (`null` when there is no text) |
//! | `content[type=thinking].thinking` | `choices[0].message.reasoning_content` |
//! | `content[type=tool_use]` `{id, name, input}` | `choices[0].message.tool_calls[] {id, type: "function", function: {name, arguments: input as JSON text}}` |
//! | `stop_reason` end_turn, stop_sequence, pause_turn / max_tokens / tool_use / refusal | `finish_reason` stop / length / tool_calls / content_filter (others as given) |
//! | `usage.input_tokens + cache_creation_input_tokens + cache_read_input_tokens` | `usage.prompt_tokens` (Anthropic's `input_tokens` leaves cached tokens out) |
//! | `usage.cache_read_input_tokens` | `usage.prompt_tokens_details.cached_tokens` |
//! | `usage.output_tokens` | `usage.completion_tokens`; `total_tokens` is the sum |
//!
//! Errored results become [`Outcome::HttpError`] with the HTTP status of the error type
//! (`invalid_request_error` 400, `authentication_error` 401, `billing_error` 402,
//! `permission_error` 403, `not_found_error` 404, `request_too_large` 413, `rate_limit_error`
//! 429, `api_error` 500, `timeout_error` 504, `overloaded_error` 529) and an OpenAI error body
//! `{"error": {"message", "type", "param": null, "code": null}}`; an unknown type becomes
//! [`Outcome::Failed`].
//!
//! # Sources
//!
//! - OpenAI: <https://platform.openai.com/docs/guides/batch>,
//!   <https://platform.openai.com/docs/api-reference/batch>,
//!   <https://platform.openai.com/docs/api-reference/files>.
//! - xAI: <https://docs.x.ai/docs/guides/batch-api> (limits: 25 MB per add call, 100 add calls
//!   per 30 s per team, 1 batch creation per second) and the REST reference
//!   <https://docs.x.ai/docs/api-reference> (batches: create, add requests, get, list, list
//!   requests, list results, cancel); the field names as the official SDK sends them
//!   (github.com/xai-org/xai-sdk-ts `src/resources/batches.ts`, `src/types.ts`) and the proto
//!   (github.com/xai-org/xai-proto `proto/xai/api/v1/batch.proto`).
//! - Anthropic: <https://docs.anthropic.com/en/docs/build-with-claude/batch-processing>,
//!   <https://docs.anthropic.com/en/api/creating-message-batches>,
//!   <https://docs.anthropic.com/en/api/retrieving-message-batch-results>,
//!   <https://docs.anthropic.com/en/api/listing-message-batches>.

mod anthropic;
mod from_anthropic;
mod jsonl;
mod multipart;
mod openai;
pub mod to_anthropic;
mod xai;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::client::{Auth, HttpCall, HttpReply, HttpStream, Replay};
use super::{LlmClient, LlmError};

/// Which provider's batch API a base URL speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// OpenAI Batch + Files (also what OpenAI-compatible gateways offer).
    OpenAi,
    /// xAI Batch: named batches that requests are added to.
    Xai,
    /// Anthropic Message Batches.
    Anthropic,
}

impl Protocol {
    /// The name in configuration: `openai`, `xai`, `anthropic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::OpenAi => "openai",
            Protocol::Xai => "xai",
            Protocol::Anthropic => "anthropic",
        }
    }

    /// The protocol of a base URL's host: x.ai and its subdomains speak xAI's, anthropic.com
    /// Anthropic's, anything else OpenAI's.
    pub fn for_base_url(url: &str) -> Protocol {
        let host = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        let is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if is("x.ai") {
            Protocol::Xai
        } else if is("anthropic.com") {
            Protocol::Anthropic
        } else {
            Protocol::OpenAi
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = LlmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(Protocol::OpenAi),
            "xai" => Ok(Protocol::Xai),
            "anthropic" => Ok(Protocol::Anthropic),
            _ => Err(LlmError::Config(format!(
                "unknown batch protocol {s:?}: use openai, xai or anthropic"
            ))),
        }
    }
}

/// What one remote batch may hold; the caller splits larger inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests per remote batch.
    pub max_requests: usize,
    /// Bytes of the encoded upload (bodies, custom ids and the protocol's envelope, under
    /// 200 bytes a request).
    pub max_bytes: usize,
}

/// One request of a remote batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRequest {
    /// Unique within the batch; Anthropic allows only `^[a-zA-Z0-9_-]{1,64}$`.
    pub custom_id: String,
    /// An OpenAI chat-completions request body (a JSON object with `model` set).
    pub body: Bytes,
}

/// A remote batch's state, one vocabulary for the three providers (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemoteState {
    /// Accepted, not yet running (xAI: no requests yet).
    Validating,
    InProgress,
    /// OpenAI: writing the output files.
    Finalizing,
    Completed,
    /// OpenAI: the input failed validation (see [`RemoteBatch::errors`]).
    Failed,
    /// Ended by the 24-hour window with requests unprocessed.
    Expired,
    Cancelling,
    Cancelled,
}

impl RemoteState {
    /// OpenAI's name of the state (`in_progress`, ...), used for every protocol in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteState::Validating => "validating",
            RemoteState::InProgress => "in_progress",
            RemoteState::Finalizing => "finalizing",
            RemoteState::Completed => "completed",
            RemoteState::Failed => "failed",
            RemoteState::Expired => "expired",
            RemoteState::Cancelling => "cancelling",
            RemoteState::Cancelled => "cancelled",
        }
    }

    /// Whether the provider will process nothing more (its results are final).
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            RemoteState::Completed
                | RemoteState::Failed
                | RemoteState::Expired
                | RemoteState::Cancelled
        )
    }
}

/// Request counts: `total = succeeded + failed + pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCounts {
    pub total: u64,
    pub succeeded: u64,
    /// Errored, cancelled and expired.
    pub failed: u64,
    pub pending: u64,
}

/// A problem the provider found with the batch as a whole or one of its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    /// 1-based input line, when the provider names one.
    pub line: Option<u64>,
    pub code: String,
    pub message: String,
}

/// A batch as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteBatch {
    pub id: String,
    pub state: RemoteState,
    pub counts: RemoteCounts,
    pub errors: Vec<ValidationError>,
    /// The tag the provider stores (OpenAI `metadata.reasonq_tag`, xAI `name`); Anthropic
    /// stores none.
    pub tag: Option<String>,
    /// Unix seconds.
    pub created_at: Option<u64>,
    /// Unix seconds, once processing ended.
    pub ended_at: Option<u64>,
    /// OpenAI: the file of successful lines.
    pub output_file_id: Option<String>,
    /// OpenAI: the file of failed lines.
    pub error_file_id: Option<String>,
    /// Anthropic: where the results are, once ended.
    pub results_url: Option<String>,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `chat.completion` JSON body, OpenAI shape.
    Succeeded { body: Bytes },
    /// The provider answered this request with an error status; `body` is
    /// `{"error": {...}}`, OpenAI shape.
    HttpError { status: u16, body: Bytes },
    /// It failed without an HTTP answer.
    Failed { code: String, message: String },
    /// The batch expired before this request ran.
    Expired,
    /// The batch was cancelled before this request ran.
    Cancelled,
}

/// One request's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteResult {
    pub custom_id: String,
    pub outcome: Outcome,
}

/// How [`BatchApi::find`] matched the batch it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// No batch found.
    None,
    /// By the tag the provider stores: certain.
    Tag,
    /// Anthropic: by creation time and request count. `candidates` batches fit; with more
    /// than one the earliest is returned and the caller must decide (its results' custom ids
    /// tell).
    TimeAndCount { candidates: usize },
}

/// What the provider already has for a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// What [`BatchApi::stage`] would have returned: OpenAI's file id, xAI's batch id.
    pub staged: Option<String>,
    /// The started batch. xAI: only once it holds every expected request; until then
    /// [`BatchApi::start`] with `staged` adds the rest.
    pub batch: Option<RemoteBatch>,
    pub matched: Match,
}

/// The batch API of one provider, over an [`LlmClient`] whose base URL and key are that
/// provider's.
#[derive(Debug, Clone)]
pub struct BatchApi {
    client: LlmClient,
    protocol: Protocol,
    auth: Auth,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Largest body of one xAI add call (smaller in tests).
    xai_chunk_bytes: usize,
}

/// One step of [`BatchApi::create`], boxed so the futures stay `Send`.
type Step<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, LlmError>> + Send + 'a>>;

/// A tag names a batch (OpenAI metadata, xAI name) and a file name: 1 to 64 of
/// `[A-Za-z0-9_.-]`.
const TAG_MAX: usize = 64;

/// Clock skew tolerated between us and the provider when matching creation times.
const CLOCK_SLACK_S: u64 = 120;

/// Most pages one listing reads, so a huge account cannot keep a lookup busy forever.
const MAX_PAGES: usize = 1000;

impl BatchApi {
    /// `client` must be built for the provider's base URL (ending in `/v1`) and its key.
    pub fn new(client: LlmClient, protocol: Protocol) -> Self {
        let (auth, headers) = match protocol {
            Protocol::OpenAi | Protocol::Xai => (Auth::Bearer, Vec::new()),
            Protocol::Anthropic => (
                Auth::Header(HeaderName::from_static("x-api-key")),
                vec![(
                    HeaderName::from_static("anthropic-version"),
                    HeaderValue::from_static("2023-06-01"),
                )],
            ),
        };
        BatchApi {
            client,
            protocol,
            auth,
            headers,
            xai_chunk_bytes: xai::MAX_ADD_BYTES,
        }
    }

    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// What one remote batch may hold.
    pub fn limits(&self) -> Limits {
        match self.protocol {
            Protocol::OpenAi => Limits {
                max_requests: 50_000,
                max_bytes: 200_000_000,
            },
            Protocol::Xai => Limits {
                max_requests: 100_000,
                max_bytes: 200_000_000,
            },
            Protocol::Anthropic => Limits {
                max_requests: 100_000,
                max_bytes: 256_000_000,
            },
        }
    }

    /// Step 1, recorded by the caller before step 2. OpenAI uploads the JSONL file
    /// (`{tag}.jsonl`) and returns its file id; xAI creates an empty batch named `tag` and
    /// returns its id; Anthropic has nothing to stage (`None`) but checks the requests.
    pub async fn stage(
        &self,
        tag: &str,
        reqs: &[RemoteRequest],
    ) -> Result<Option<String>, LlmError> {
        check_tag(tag)?;
        self.check_requests(reqs)?;
        match self.protocol {
            Protocol::OpenAi => openai::stage(self, tag, reqs).await.map(Some),
            Protocol::Xai => xai::stage(self, tag).await.map(Some),
            Protocol::Anthropic => {
                anthropic::encode(reqs, self.limits().max_bytes)?;
                Ok(None)
            }
        }
    }

    /// Step 2: starts the batch from what step 1 returned and returns it. OpenAI creates the
    /// batch from the file; xAI adds the requests the staged batch lacks (it lists them
    /// first, so a resumed call never adds a custom id twice); Anthropic creates the batch
    /// with the translated requests.
    pub async fn start(
        &self,
        tag: &str,
        staged: Option<&str>,
        reqs: &[RemoteRequest],
    ) -> Result<RemoteBatch, LlmError> {
        check_tag(tag)?;
        self.check_requests(reqs)?;
        let need = |what: &str| {
            staged.ok_or_else(|| {
                LlmError::InvalidRequest(format!(
                    "{} starts from the {what} stage returned",
                    self.protocol
                ))
            })
        };
        match self.protocol {
            Protocol::OpenAi => openai::start(self, tag, need("file id")?).await,
            Protocol::Xai => xai::start(self, need("batch id")?, reqs).await,
            Protocol::Anthropic => anthropic::start(self, reqs).await,
        }
    }

    /// What the provider already has for `tag`, after a crash between a step and its
    /// record. `since_unix` is a time before step 1 (the caller records it); only batches
    /// and files created since then are considered, which also bounds the listing.
    /// `requests` is the number of requests the batch should hold: xAI reports a batch as
    /// started only once it holds them all, and Anthropic, which stores no tag, matches
    /// batches created since `since_unix` with exactly that many requests
    /// ([`Match::TimeAndCount`]).
    pub async fn find(
        &self,
        tag: &str,
        since_unix: u64,
        requests: usize,
    ) -> Result<Found, LlmError> {
        check_tag(tag)?;
        let since = since_unix.saturating_sub(CLOCK_SLACK_S);
        match self.protocol {
            Protocol::OpenAi => openai::find(self, tag, since).await,
            Protocol::Xai => xai::find(self, tag, since, requests).await,
            Protocol::Anthropic => anthropic::find(self, since, requests, None).await,
        }
    }

    /// The batch as the provider reports it now.
    pub async fn get(&self, id: &str) -> Result<RemoteBatch, LlmError> {
        match self.protocol {
            Protocol::OpenAi => openai::get(self, id).await,
            Protocol::Xai => xai::get(self, id).await,
            Protocol::Anthropic => anthropic::get(self, id).await,
        }
    }

    /// Asks the provider to stop the batch; requests already running may still finish.
    pub async fn cancel(&self, id: &str) -> Result<RemoteBatch, LlmError> {
        match self.protocol {
            Protocol::OpenAi => openai::cancel(self, id).await,
            Protocol::Xai => xai::cancel(self, id).await,
            Protocol::Anthropic => anthropic::cancel(self, id).await,
        }
    }

    /// Streams every result the provider has for `batch` to `on`, each in OpenAI shape, in
    /// no particular order: OpenAI's output and error files, xAI's result pages, Anthropic's
    /// results file (which exists only once the batch has ended). Files are read line by
    /// line, never whole. A request with no result is simply not delivered (the caller
    /// notices the missing custom id); a line that names no custom id is skipped with a
    /// warning. An error from `on` stops the stream and is returned. A call that fails part
    /// way may have delivered some results: calling again delivers them again.
    pub async fn results(
        &self,
        batch: &RemoteBatch,
        on: &mut (dyn FnMut(RemoteResult) -> Result<(), LlmError> + Send),
    ) -> Result<(), LlmError> {
        match self.protocol {
            Protocol::OpenAi => openai::results(self, batch, on).await,
            Protocol::Xai => xai::results(self, batch, on).await,
            Protocol::Anthropic => anthropic::results(self, batch, on).await,
        }
    }

    // ----- shared by the protocols -----

    /// A call in this protocol's auth and headers.
    fn call<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        body: Option<(Bytes, HeaderValue)>,
        replay: Replay,
    ) -> HttpCall<'a> {
        HttpCall {
            method,
            path,
            headers: &self.headers,
            body,
            auth: self.auth.clone(),
            replay,
        }
    }

    /// Sends a call and parses its JSON answer (a malformed answer is retried like any).
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, HeaderValue)>,
        replay: Replay,
        what: &str,
    ) -> Result<T, LlmError> {
        let call = self.call(method, path, body, replay);
        self.client
            .request(call, |reply: &HttpReply| {
                serde_json::from_slice::<T>(&reply.body).map_err(|e| {
                    self.client.malformed(
                        &format!("{what} is not what the docs describe ({e})"),
                        &reply.body,
                        &reply.headers,
                    )
                })
            })
            .await
    }

    /// Opens a streamed GET.
    async fn stream(&self, path: &str) -> Result<HttpStream, LlmError> {
        self.client
            .request_stream(self.call(Method::GET, path, None, Replay::Always))
            .await
    }

    /// Sends a create; after a failure that may have reached the server, asks `lookup`
    /// (given a time before the first attempt) whether the provider has the thing before
    /// sending it again. `send` already retries what surely never arrived.
    async fn create<'a, T>(
        &'a self,
        what: &str,
        send: impl Fn() -> Step<'a, T>,
        lookup: impl Fn(u64) -> Step<'a, Option<T>>,
    ) -> Result<T, LlmError> {
        let policy = &self.client.config().retry;
        let since = now_unix().saturating_sub(CLOCK_SLACK_S);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match send().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !err.is_retryable() || attempt >= policy.max_attempts.max(1) {
                return Err(err);
            }
            tracing::info!(
                attempt,
                code = err.code(),
                "{what}: the answer may be lost; asking the provider before sending again"
            );
            if let Some(found) = lookup(since).await? {
                return Ok(found);
            }
            tokio::time::sleep(policy.delay_after(attempt, &err)).await;
        }
    }

    /// Non-empty, within the limits, unique custom ids, bodies that are JSON objects.
    fn check_requests(&self, reqs: &[RemoteRequest]) -> Result<(), LlmError> {
        let limits = self.limits();
        if reqs.is_empty() {
            return Err(LlmError::InvalidRequest(
                "a batch needs at least one request".into(),
            ));
        }
        if reqs.len() > limits.max_requests {
            return Err(LlmError::InvalidRequest(format!(
                "{} requests exceed {}'s {} per batch",
                reqs.len(),
                self.protocol,
                limits.max_requests
            )));
        }
        let mut seen = HashSet::with_capacity(reqs.len());
        for r in reqs {
            if r.custom_id.is_empty() {
                return Err(LlmError::InvalidRequest("a custom_id is empty".into()));
            }
            if self.protocol == Protocol::Anthropic && !anthropic::valid_custom_id(&r.custom_id) {
                return Err(LlmError::InvalidRequest(format!(
                    "custom_id {:?} is not allowed by Anthropic (^[a-zA-Z0-9_-]{{1,64}}$)",
                    r.custom_id
                )));
            }
            if !seen.insert(r.custom_id.as_str()) {
                return Err(LlmError::InvalidRequest(format!(
                    "custom_id {:?} appears twice",
                    r.custom_id
                )));
            }
            check_body(r)?;
        }
        Ok(())
    }
}

/// The body must be one JSON object (it is embedded in the protocol's envelope as it is).
fn check_body(r: &RemoteRequest) -> Result<(), LlmError> {
    let first = r.body.iter().find(|b| !b.is_ascii_whitespace());
    let ok =
        first == Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(&r.body).is_ok();
    if ok {
        Ok(())
    } else {
        Err(LlmError::InvalidRequest(format!(
            "{}: the body is not a JSON object",
            r.custom_id
        )))
    }
}

/// The body without raw newlines (they are JSON whitespace; a JSONL line cannot hold them).
fn one_line(body: &Bytes) -> std::borrow::Cow<'_, [u8]> {
    if body.contains(&b'\n') || body.contains(&b'\r') {
        std::borrow::Cow::Owned(
            body.iter()
                .copied()
                .filter(|b| *b != b'\n' && *b != b'\r')
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(&body[..])
    }
}

fn check_tag(tag: &str) -> Result<(), LlmError> {
    let ok = !tag.is_empty()
        && tag.len() <= TAG_MAX
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(LlmError::InvalidRequest(format!(
            "batch tag {tag:?} must be 1 to {TAG_MAX} of [A-Za-z0-9_.-]"
        )))
    }
}

/// A path segment or query value, percent-encoded (ids and page tokens come from the
/// provider).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `value` as a JSON request body.
fn json_body(value: &serde_json::Value) -> Result<(Bytes, HeaderValue), LlmError> {
    let bytes = serde_json::to_vec(value).map_err(|e| LlmError::InvalidRequest(e.to_string()))?;
    Ok((
        Bytes::from(bytes),
        HeaderValue::from_static("application/json"),
    ))
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds of an RFC 3339 time (`2024-08-20T18:37:24.100435Z`, `…+02:00`), as Anthropic
/// and xAI write them.
fn unix_from_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let (sign, hm) = match rest.as_bytes().first()? {
                b'+' => (1, &rest[1..]),
                b'-' => (-1, &rest[1..]),
                _ => return None,
            };
            let (oh, om) = hm.split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(t).ok()
}

/// Paces calls to at most `max` per rolling `window` (xAI's add-requests limit).
struct Pace {
    max: usize,
    window: std::time::Duration,
    sent: std::collections::VecDeque<tokio::time::Instant>,
}

impl Pace {
    fn new(max: usize, window: std::time::Duration) -> Self {
        Pace {
            max: max.max(1),
            window,
            sent: std::collections::VecDeque::new(),
        }
    }

    /// Waits until one more call fits, and counts it.
    async fn wait(&mut self) {
        let now = tokio::time::Instant::now();
        while self.sent.front().is_some_and(|t| *t + self.window <= now) {
            self.sent.pop_front();
        }
        if self.sent.len() >= self.max {
            if let Some(first) = self.sent.pop_front() {
                tokio::time::sleep_until(first + self.window).await;
            }
        }
        self.sent.push_back(tokio::time::Instant::now());
    }
}
