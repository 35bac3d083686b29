//! The providers' batch APIs on the simulation server: OpenAI's Files + Batch API, xAI's
//! native Batch API and Anthropic's Message Batches, each after its own documentation, so a
//! client written from those docs runs against the loopback server unchanged.
//!
//! Every batched request is answered by the same [`super::decide`] as a live
//! `/chat/completions` call (responder or default echo, same `completion()` body), so a batch
//! run and a live run give the same answers. Anthropic `params` are turned into the same
//! chat request (system + messages) first; xAI's `chat_get_completion` already is one.
//!
//! | route (under the prefix, `/v1` by default) | follows |
//! |---|---|
//! | `POST /files`, `GET /files`, `GET /files/{id}`, `GET /files/{id}/content`, `DELETE /files/{id}` | <https://platform.openai.com/docs/api-reference/files> |
//! | `POST /batches`, `GET /batches`, `GET /batches/{id}`, `POST /batches/{id}/cancel` (OpenAI) | <https://platform.openai.com/docs/api-reference/batch>, <https://platform.openai.com/docs/guides/batch> |
//! | `POST /batches`, `GET /batches`, `GET /batches/{id}` (xAI mount) | <https://docs.x.ai/developers/rest-api-reference/inference/batches> |
//! | `POST /batches/{id}/requests`, `GET /batches/{id}/requests`, `GET /batches/{id}/results`, `POST /batches/{id}:cancel` (xAI) | same, and <https://docs.x.ai/docs/guides/batch-api> |
//! | `POST /messages/batches`, `GET /messages/batches`, `GET /messages/batches/{id}`, `POST /messages/batches/{id}/cancel`, `DELETE /messages/batches/{id}`, `GET /messages/batches/{id}/results` | <https://docs.anthropic.com/en/api/creating-message-batches> and its siblings, <https://docs.anthropic.com/en/docs/build-with-claude/batch-processing> |
//! | `POST /messages` (live Messages API, to compare with batched answers) | <https://docs.anthropic.com/en/api/messages> |
//!
//! OpenAI and xAI both own `{prefix}/batches` (and xAI accepts OpenAI-style `/files` uploads
//! too), so one server cannot be both at the bare prefix. The bare prefix is OpenAI's; every
//! protocol is also mounted under its own first path segment (`/openai/v1`, `/xai/v1`,
//! `/anthropic/v1`, see [`super::SimServer::base_url_for`]), the way each real provider has
//! its own host. `/messages/...` is Anthropic's under every mount.
//!
//! The lifecycle is driven by the test through [`BatchControl`] ([`BatchMode::Manual`]) or
//! by time ([`BatchMode::Auto`], what `--simulate` uses): a batch moves one state per step,
//! evaluated lazily whenever the server or the control handle looks at it.

mod anthropic;
mod openai;
mod store;
#[cfg(test)]
mod tests;
mod xai;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::BodyExt;
use serde_json::Value;

use super::{Fault, SimBody, State};
pub(crate) use store::Store;

/// Which provider's batch API a batch was created through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OpenAI Files + Batch API (`input_file_id`, output and error files).
    OpenAi,
    /// xAI's native Batch API (create by name, add requests, paged results).
    Xai,
    /// Anthropic Message Batches (`requests` inline, JSONL results).
    Anthropic,
}

impl Protocol {
    /// The first path segment this protocol is mounted under (`/openai`, `/xai`,
    /// `/anthropic`).
    pub fn mount(self) -> &'static str {
        match self {
            Protocol::OpenAi => "/openai",
            Protocol::Xai => "/xai",
            Protocol::Anthropic => "/anthropic",
        }
    }
}

/// How batches move through their lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// Batches stay where the test puts them ([`BatchControl`]).
    Manual,
    /// validating → in_progress → finalizing → completed, one state per `step` (xAI: the
    /// requests added finish one `step` after the last add); answers are computed on
    /// completion; a cancel ends one `step` later.
    Auto {
        /// Time spent in each state.
        step: Duration,
    },
}

/// The providers' documented limits; tests shrink them to check the errors cheaply.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchLimits {
    /// Requests in one OpenAI batch (50,000).
    pub openai_max_requests: usize,
    /// Bytes of one OpenAI batch input file (200 MB).
    pub openai_max_file_bytes: usize,
    /// Requests in one Anthropic batch (100,000).
    pub anthropic_max_requests: usize,
    /// Bytes of one Anthropic create request (256 MB).
    pub anthropic_max_bytes: usize,
    /// Bytes of one xAI add-requests call (25 MB).
    pub xai_max_add_bytes: usize,
    /// xAI add-requests calls per rolling window (100), shared by all batches.
    pub xai_adds_per_window: usize,
    /// That window (30 s).
    pub xai_add_window: Duration,
    /// xAI batch creations per second (1); `None` turns the limit off.
    pub xai_creates_per_second: Option<usize>,
}

impl Default for BatchLimits {
    fn default() -> Self {
        const MB: usize = 1_000_000;
        BatchLimits {
            openai_max_requests: 50_000,
            openai_max_file_bytes: 200 * MB,
            anthropic_max_requests: 100_000,
            anthropic_max_bytes: 256 * MB,
            xai_max_add_bytes: 25 * MB,
            xai_adds_per_window: 100,
            xai_add_window: Duration::from_secs(30),
            xai_creates_per_second: Some(1),
        }
    }
}

/// Batch settings of a [`super::SimConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Lifecycle mode; [`BatchMode::Manual`] by default, `--simulate` uses `Auto`.
    pub mode: BatchMode,
    /// The providers' limits.
    pub limits: BatchLimits,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            mode: BatchMode::Manual,
            limits: BatchLimits::default(),
        }
    }
}

/// The lifecycle state, in OpenAI's terms; Anthropic and xAI show it their own way
/// (Anthropic: `in_progress` for the first three, `canceling`, `ended` for the terminal
/// ones; xAI: only counters, with `cancel_time` once cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchState {
    /// The input is being checked (OpenAI; Anthropic shows `in_progress`).
    Validating,
    /// Validation failed (OpenAI only).
    Failed,
    /// Running.
    InProgress,
    /// Results being written.
    Finalizing,
    /// Done.
    Completed,
    /// The completion window passed; finished requests are returned, the rest expired.
    Expired,
    /// Cancel requested.
    Cancelling,
    /// Cancelled; finished requests are returned, the rest cancelled.
    Cancelled,
}

impl BatchState {
    /// No further transitions.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchState::Failed
                | BatchState::Completed
                | BatchState::Expired
                | BatchState::Cancelled
        )
    }

    /// OpenAI's `status` string.
    pub fn openai(self) -> &'static str {
        match self {
            BatchState::Validating => "validating",
            BatchState::Failed => "failed",
            BatchState::InProgress => "in_progress",
            BatchState::Finalizing => "finalizing",
            BatchState::Completed => "completed",
            BatchState::Expired => "expired",
            BatchState::Cancelling => "cancelling",
            BatchState::Cancelled => "cancelled",
        }
    }
}

/// One entry of an OpenAI batch's `errors.data` (`{code, line, message, param}`).
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    /// 1-based line of the input file, if the error is about one line.
    pub line: Option<u64>,
    /// E.g. `invalid_json_line`, `duplicate_custom_id`, `too_many_tasks`.
    pub code: String,
    /// Human-readable text.
    pub message: String,
    /// The parameter at fault, if any.
    pub param: Option<String>,
}

impl LineError {
    /// An error about `line` (1-based) with no `param`.
    pub fn new(line: Option<u64>, code: &str, message: &str) -> Self {
        LineError {
            line,
            code: code.to_owned(),
            message: message.to_owned(),
            param: None,
        }
    }
}

/// What a test sees of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchInfo {
    /// The provider's id.
    pub id: String,
    /// The protocol it was created through.
    pub protocol: Protocol,
    /// Lifecycle state.
    pub state: BatchState,
    /// xAI's batch `name`.
    pub name: Option<String>,
    /// OpenAI's `metadata` map.
    pub metadata: serde_json::Map<String, Value>,
    /// Requests in the batch.
    pub total: usize,
    /// Requests answered (2xx).
    pub succeeded: usize,
    /// Requests answered with an HTTP error.
    pub errored: usize,
    /// Requests not run because the batch expired.
    pub expired: usize,
    /// Requests not run because the batch was cancelled.
    pub cancelled: usize,
    /// The custom ids (`batch_request_id` for xAI), in input order.
    pub custom_ids: Vec<String>,
}

/// Counters a test asserts on, across all protocols.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounters {
    /// Files accepted by `POST /files`.
    pub files_uploaded: u64,
    /// Batches created (any protocol).
    pub batches_created: u64,
    /// xAI add-requests calls, accepted or not.
    pub add_request_calls: u64,
    /// `GET` of a batch object (any protocol), faulted ones included.
    pub polls: u64,
    /// Downloads of results (OpenAI file content, Anthropic results, xAI result pages).
    pub result_reads: u64,
}

/// A fault of a create call ([`BatchControl::push_create_faults`]).
#[derive(Debug, Clone, PartialEq)]
pub enum CreateFault {
    /// Wait this long before applying the create (a client killed meanwhile created
    /// nothing).
    Before(Duration),
    /// Apply the create, then answer with this fault instead (`Latency`: answer late;
    /// `Reset`, a status: the client never learns the create happened).
    After(Fault),
}

/// Why a control call did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No batch has this id.
    #[error("no batch {0}")]
    NotFound(String),
    /// The batch already ended.
    #[error("batch {id} is already {state:?}")]
    Terminal {
        /// The batch.
        id: String,
        /// Its state.
        state: BatchState,
    },
    /// The protocol has no such thing (e.g. validation errors outside OpenAI).
    #[error("{protocol:?} batches have no {what}")]
    Unsupported {
        /// The batch's protocol.
        protocol: Protocol,
        /// What was asked.
        what: &'static str,
    },
}

/// The test's handle on the batch APIs of one server; clones share the server.
#[derive(Clone)]
pub struct BatchControl {
    state: Arc<State>,
}

impl std::fmt::Debug for BatchControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchControl").finish_non_exhaustive()
    }
}

impl BatchControl {
    pub(crate) fn new(state: Arc<State>) -> Self {
        BatchControl { state }
    }

    fn with<R>(&self, f: impl FnOnce(&State, &mut store::Inner) -> R) -> R {
        let st = &*self.state;
        let mut inner = st.batches.lock();
        inner.catch_up(st);
        f(st, &mut inner)
    }

    /// The lifecycle mode.
    pub fn mode(&self) -> BatchMode {
        self.with(|_, i| i.mode)
    }

    /// Switches the lifecycle mode; `Auto` counts each running batch's step from now.
    pub fn set_mode(&self, mode: BatchMode) {
        self.with(|_, i| i.set_mode(mode));
    }

    /// One lifecycle step (validating → in_progress → finalizing → completed, cancelling →
    /// cancelled; xAI: every pending request finishes). Returns the new state.
    pub fn advance(&self, id: &str) -> Result<BatchState, ControlError> {
        self.with(|st, i| i.advance(st, id))
    }

    /// Puts a batch in `state`; a terminal state does what [`Self::complete`],
    /// [`Self::expire`] (nothing finished), [`Self::fail_validation`] (no errors) or a
    /// finished cancel would.
    pub fn set_state(&self, id: &str, state: BatchState) -> Result<(), ControlError> {
        self.with(|st, i| i.set_state(st, id, state))
    }

    /// Answers every request still pending and completes the batch (an OpenAI batch still
    /// validating is validated first and may fail).
    pub fn complete(&self, id: &str) -> Result<BatchState, ControlError> {
        self.with(|st, i| i.complete(st, id))
    }

    /// Answers pending requests in input order until `fraction` of the batch is finished,
    /// without ending it (partial progress for cancel and expiry). Returns the finished count.
    pub fn process(&self, id: &str, fraction: f64) -> Result<usize, ControlError> {
        self.with(|st, i| i.process(st, id, fraction))
    }

    /// Expires the batch: requests in input order are finished (answered and billed) until
    /// `finished_fraction` is, the rest become `batch_expired` / `expired`.
    pub fn expire(&self, id: &str, finished_fraction: f64) -> Result<(), ControlError> {
        self.with(|st, i| i.expire(st, id, finished_fraction))
    }

    /// Cancels as the provider's cancel call would (OpenAI/Anthropic: cancelling, ended by
    /// [`Self::advance`] or the next Auto step; xAI: at once). Returns the new state.
    pub fn cancel(&self, id: &str) -> Result<BatchState, ControlError> {
        self.with(|st, i| i.cancel(st, id))
    }

    /// Fails an OpenAI batch's validation with these errors (`status: failed`).
    pub fn fail_validation(&self, id: &str, errors: Vec<LineError>) -> Result<(), ControlError> {
        self.with(|_, i| i.fail_validation(id, errors))
    }

    /// Leaves these custom ids out of every result the batch serves (its counts still count
    /// them). Returns how many were found.
    pub fn drop_results<'a>(
        &self,
        id: &str,
        custom_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<usize, ControlError> {
        let ids: Vec<&str> = custom_ids.into_iter().collect();
        self.with(|_, i| i.drop_results(id, &ids))
    }

    /// The next answer of each of these custom ids, in any batch of any protocol, is this
    /// fault instead: an HTTP error line (`Fault::Status` keeps its status, code and message;
    /// 429 faults are 429s; the connection faults become a 500). One-shot, so a resubmitted
    /// line succeeds.
    pub fn fail_lines<'a>(&self, custom_ids: impl IntoIterator<Item = &'a str>, fault: Fault) {
        self.with(|_, i| {
            for id in custom_ids {
                i.line_faults.insert(id.into(), fault.clone());
            }
        });
    }

    /// The next `GET`s of a batch object (any protocol) answer with these faults, in order
    /// (`Fault::status(503)`, `Fault::Reset`, ...).
    pub fn push_poll_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.with(|_, i| i.poll_faults.extend(faults));
    }

    /// The next creates (`POST` of a file, a batch, Anthropic's message batch, xAI's added
    /// requests) meet these faults, in order: a crash or a lost answer between a create and
    /// the client's record of it.
    pub fn push_create_faults(&self, faults: impl IntoIterator<Item = CreateFault>) {
        self.with(|_, i| i.create_faults.extend(faults));
    }

    /// The next result downloads answer with these faults, in order.
    pub fn push_download_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.with(|_, i| i.download_faults.extend(faults));
    }

    /// How many times this custom id was submitted, across all batches and protocols.
    pub fn submissions(&self, custom_id: &str) -> u64 {
        self.with(|_, i| i.submissions.get(custom_id).copied().unwrap_or(0))
    }

    /// The most any one custom id was submitted (0 with no batch).
    pub fn max_submissions(&self) -> u64 {
        self.with(|_, i| i.submissions.values().copied().max().unwrap_or(0))
    }

    /// The counters.
    pub fn counters(&self) -> BatchCounters {
        self.with(|_, i| i.counters)
    }

    /// Every batch, oldest first.
    pub fn list(&self) -> Vec<BatchInfo> {
        self.with(|_, i| i.order.iter().filter_map(|id| i.info(id)).collect())
    }

    /// One batch.
    pub fn get(&self, id: &str) -> Option<BatchInfo> {
        self.with(|_, i| i.info(id))
    }
}

/// The batch state of a new server.
pub(crate) fn new_store(cfg: &BatchConfig) -> Store {
    Store::new(cfg, openai::render_line)
}

/// Strips a leading protocol mount (`/openai`, `/xai`, `/anthropic`) off a path.
pub(crate) fn split_mount(path: &str) -> (Option<Protocol>, &str) {
    for p in [Protocol::OpenAi, Protocol::Xai, Protocol::Anthropic] {
        if let Some(rest) = path.strip_prefix(p.mount()) {
            if rest.starts_with('/') {
                return (Some(p), rest);
            }
        }
    }
    (None, path)
}

/// Anthropic's routes (`x-api-key` auth).
pub(crate) fn is_anthropic(path: &str) -> bool {
    path == "/messages" || path.starts_with("/messages/")
}

/// OpenAI's and xAI's routes (bearer auth, checked by the caller).
pub(crate) fn is_batch(path: &str) -> bool {
    path == "/files"
        || path.starts_with("/files/")
        || path == "/batches"
        || path.starts_with("/batches/")
}

/// Everything under one request that a handler needs.
pub(crate) struct Call<'a> {
    pub state: &'a State,
    pub method: &'a Method,
    pub path: &'a str,
    pub query: HashMap<String, String>,
    pub headers: &'a http::HeaderMap,
    pub body: Bytes,
    pub mount: Option<Protocol>,
    /// `host[:port]` the client addressed, for absolute URLs.
    pub host: String,
}

impl Call<'_> {
    /// The API root this request came in under, e.g. `http://127.0.0.1:PORT/anthropic/v1`.
    fn base(&self) -> String {
        let mount = self.mount.map_or("", Protocol::mount);
        let prefix = self.state.cfg.prefix.trim_end_matches('/');
        format!("{}://{}{mount}{prefix}", self.state.scheme, self.host)
    }

    /// Path segments after the prefix.
    fn segments(&self) -> Vec<&str> {
        self.path.trim_start_matches('/').split('/').collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) async fn route(
    state: &State,
    mount: Option<Protocol>,
    parts: &http::request::Parts,
    body: Bytes,
    path: &str,
) -> io::Result<Response<SimBody>> {
    let call = Call {
        state,
        method: &parts.method,
        path,
        query: parse_query(parts.uri.query().unwrap_or("")),
        headers: &parts.headers,
        body,
        mount,
        host: parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                let h = parts.headers.get(http::header::HOST)?;
                h.to_str().ok().map(str::to_owned)
            })
            .unwrap_or_else(|| "127.0.0.1".into()),
    };
    let create = parts.method == Method::POST && is_create(path);
    let fault = if create {
        let mut inner = state.batches.lock();
        inner.create_faults.pop_front()
    } else {
        None
    };
    match fault {
        // Nothing is applied until the wait is over: a client gone meanwhile created nothing.
        Some(CreateFault::Before(wait)) => tokio::time::sleep(wait).await,
        Some(CreateFault::After(fault)) => {
            let applied = dispatch(call, mount, parts).await?;
            if let Fault::Latency(wait) = fault {
                tokio::time::sleep(wait).await;
                return Ok(applied);
            }
            let answer = applied.into_body().collect().await.map(|b| b.to_bytes())?;
            return super::fault::render(fault, answer).await;
        }
        None => {}
    }
    dispatch(call, mount, parts).await
}

/// Whether a `POST` to `path` creates something at the provider (an upload, a batch, added
/// requests): the calls a client must never repeat blindly.
fn is_create(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path == "/files"
        || path == "/batches"
        || path == "/messages/batches"
        || (path.starts_with("/batches/") && path.ends_with("/requests"))
}

async fn dispatch(
    call: Call<'_>,
    mount: Option<Protocol>,
    parts: &http::request::Parts,
) -> io::Result<Response<SimBody>> {
    if is_anthropic(call.path) {
        return anthropic::handle(call).await;
    }
    match mount {
        Some(Protocol::Xai) => xai::handle(call).await,
        Some(Protocol::Anthropic) => {
            let msg = format!("no route for {} {}", parts.method, parts.uri.path());
            anthropic::error(404, "not_found_error", &msg)
        }
        Some(Protocol::OpenAi) | None => openai::handle(call).await,
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET` of one batch object, the same in every protocol: counts the poll, meets the next
/// queued poll fault, and answers `object` of the batch (rendered under the store's lock) or
/// `missing` when there is none.
async fn poll(
    call: &Call<'_>,
    object: impl FnOnce(&store::Inner) -> Option<Value>,
    missing: impl FnOnce() -> io::Result<Response<SimBody>>,
) -> io::Result<Response<SimBody>> {
    let st = call.state;
    let (fault, v) = {
        let mut inner = st.batches.lock();
        inner.catch_up(st);
        inner.counters.polls += 1;
        let fault = inner.poll_faults.pop_front();
        (fault, object(&inner))
    };
    let body = v.as_ref().map(|v| Bytes::from(v.to_string()));
    if let Some(r) = take_fault(fault, || body.clone().unwrap_or_default()).await {
        return r;
    }
    match v {
        Some(v) => json(200, &v),
        None => missing(),
    }
}

/// Applies a queued poll or download fault: `Some` is the response to send instead (a
/// latency fault only waits and answers normally).
async fn take_fault(
    fault: Option<Fault>,
    answer: impl FnOnce() -> Bytes,
) -> Option<io::Result<Response<SimBody>>> {
    match fault? {
        Fault::Ok => None,
        Fault::Latency(d) => {
            tokio::time::sleep(d).await;
            None
        }
        f => Some(super::fault::render(f, answer()).await),
    }
}

/// A JSON response from a value.
fn json(status: u16, v: &Value) -> io::Result<Response<SimBody>> {
    Ok(super::fault::json(status, Bytes::from(v.to_string())))
}

/// A `limit` query parameter: absent is `default`, out of `1..=max` is `Err`.
fn limit_param(
    call: &Call<'_>,
    names: &[&str],
    default: usize,
    max: usize,
) -> Result<usize, String> {
    let Some(raw) = names.iter().find_map(|n| call.query.get(*n)) else {
        return Ok(default);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "limit must be an integer between 1 and {max}, got '{raw}'"
        )),
    }
}
