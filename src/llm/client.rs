//! `LlmClient`: one pooled client per process, with retries, rate limits and metrics.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::api::Api;
use super::config::LlmConfig;
use super::error::{ApiError, LlmError};
use super::limit::{estimate_tokens, Limiter};
use super::metrics::{Metrics, MetricsSnapshot};
use super::pool::{self, HttpClient};
use super::retry::parse_advice;
use super::wire::{ApiErrorBody, ChatResponse, ModelList};

/// A successful chat completion.
#[derive(Debug, Clone)]
pub struct ChatOutcome {
    /// HTTP status (2xx).
    pub status: u16,
    /// `x-request-id` of the answering request.
    pub request_id: Option<String>,
    /// The raw response body, exactly as received.
    pub body: Bytes,
    /// The parsed body.
    pub response: ChatResponse,
    /// Attempts it took (1 = no retry; 0 = rebuilt from a cache).
    pub attempts: u32,
    /// Time from the first attempt to the parsed answer, retries included.
    pub latency: Duration,
}

impl ChatOutcome {
    /// Rebuilds a chat completion's outcome from stored parts (for caches): parses `body`.
    pub fn from_parts(
        status: u16,
        request_id: Option<String>,
        body: Bytes,
    ) -> Result<Self, LlmError> {
        ChatOutcome::from_parts_of(Api::ChatCompletions, status, request_id, body)
    }

    /// [`ChatOutcome::from_parts`] for an answer of `api`.
    pub fn from_parts_of(
        api: Api,
        status: u16,
        request_id: Option<String>,
        body: Bytes,
    ) -> Result<Self, LlmError> {
        let response = parse_reply(api, &body, request_id.as_deref())?;
        Ok(ChatOutcome {
            status,
            request_id,
            body,
            response,
            attempts: 0,
            latency: Duration::ZERO,
        })
    }
}

/// A response: read in full, or (streamed 2xx) its head with the body still to read.
struct RawResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The unread body of a streamed 2xx answer.
    rest: Option<hyper::body::Incoming>,
}

/// How a request may be repeated after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Reads and idempotent writes: every retryable failure is retried per the policy.
    Always,
    /// Creates: retried only when the server cannot have acted on the request (no
    /// connection, or a 429); any other failure goes back to the caller, who checks what the
    /// server has before sending it again, so a lost answer never creates a thing twice.
    IfUnsent,
}

/// Where the API key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer KEY` (OpenAI, xAI).
    Bearer,
    /// The bare key in this header (Anthropic's `x-api-key`).
    Header(HeaderName),
}

/// One request of [`LlmClient::request`]: sent to the client's own host only.
pub(crate) struct HttpCall<'a> {
    pub method: Method,
    /// Path under the base URL, with any query (`batches?limit=100`).
    pub path: &'a str,
    /// Extra headers (`anthropic-version`).
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Body and its content type.
    pub body: Option<(Bytes, HeaderValue)>,
    pub auth: Auth,
    pub replay: Replay,
}

/// A 2xx answer read in full.
#[derive(Debug)]
pub(crate) struct HttpReply {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A 2xx answer whose body is read frame by frame (large JSONL files).
pub(crate) struct HttpStream {
    body: hyper::body::Incoming,
    /// Longest wait for the next frame.
    idle: Duration,
    received: usize,
}

impl HttpStream {
    /// The next chunk of the body, `None` at its end. A stalled or broken body is a
    /// retryable error (`Timeout`, `Truncated`).
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, LlmError> {
        loop {
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => return Err(LlmError::Timeout { after: self.idle }),
                Ok(None) => return Ok(None),
                Ok(Some(f)) => f.map_err(|e| LlmError::Truncated {
                    received: self.received,
                    message: chain(&e),
                })?,
            };
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    self.received += data.len();
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Everything one attempt needs, built once per call.
struct Exchange<'a> {
    method: Method,
    uri: &'a Uri,
    body: Option<Bytes>,
    headers: HeaderMap,
    /// Token estimate for the limiter; `None` bypasses the limiter (batch API calls count
    /// against the provider's batch limits, not the chat RPM/TPM).
    estimate: Option<u64>,
    replay: Replay,
    /// Return after the head of a 2xx answer, leaving the body unread.
    stream: bool,
}

struct Inner {
    cfg: LlmConfig,
    http: HttpClient,
    chat_uri: Uri,
    /// The URI of each of [`Api::ALL`], in that order.
    api_uris: Vec<Uri>,
    models_uri: Uri,
    /// Headers of every chat request (accept, user agent, authorization), built once.
    headers: HeaderMap,
    /// The same without authorization, for requests that carry the key elsewhere.
    plain_headers: HeaderMap,
    /// The bare key as a sensitive header value.
    key: Option<HeaderValue>,
    limiter: Limiter,
    metrics: Arc<Metrics>,
}

/// Client of an OpenAI-compatible chat-completions API. Cheap to clone; keep
/// one per process so every worker shares the connection pool.
#[derive(Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmClient")
            .field("base_url", &self.inner.cfg.base_url)
            .field("model", &self.inner.cfg.model)
            .field("api_key", &self.inner.cfg.api_key)
            .finish_non_exhaustive()
    }
}

fn endpoint(base: &str, path: &str) -> Result<Uri, LlmError> {
    let url = format!("{}/{path}", base.trim_end_matches('/'));
    let uri: Uri = url
        .parse()
        .map_err(|e| LlmError::Config(format!("invalid base URL {base:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(LlmError::Config(format!(
            "base URL {base:?} must be http:// or https:// with a host"
        ))),
    }
}

/// Guard keeping the in-flight gauge right even if the future is dropped.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn start(m: &'a Metrics) -> Self {
        m.in_flight.fetch_add(1, Relaxed);
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl LlmClient {
    /// Builds the client and its pool; fails on a bad URL, key or root CA.
    pub fn new(cfg: LlmConfig) -> Result<Self, LlmError> {
        let chat_uri = endpoint(&cfg.base_url, "chat/completions")?;
        let api_uris = Api::ALL
            .iter()
            .map(|api| endpoint(&cfg.base_url, api.path()))
            .collect::<Result<Vec<_>, _>>()?;
        let models_uri = endpoint(&cfg.base_url, "models")?;
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let agent = concat!("reasonq/", env!("CARGO_PKG_VERSION"));
        headers.insert(USER_AGENT, HeaderValue::from_static(agent));
        let plain_headers = headers.clone();
        let sensitive = |text: String| {
            let mut v = HeaderValue::try_from(text)
                .map_err(|_| LlmError::Config("API key holds invalid characters".into()))?;
            // Keeps the value out of hyper's debug output and HPACK tables.
            v.set_sensitive(true);
            Ok::<_, LlmError>(v)
        };
        let mut key = None;
        if let Some(k) = &cfg.api_key {
            headers.insert(AUTHORIZATION, sensitive(format!("Bearer {}", k.expose()))?);
            key = Some(sensitive(k.expose().to_owned())?);
        }
        let metrics = Arc::new(Metrics::default());
        let http = pool::build(
            &cfg.pool,
            cfg.extra_root_ca_pem.as_deref(),
            Arc::clone(&metrics),
        )?;
        let limiter = Limiter::new(&cfg.limits, Arc::clone(&metrics));
        Ok(LlmClient {
            inner: Arc::new(Inner {
                cfg,
                http,
                chat_uri,
                api_uris,
                models_uri,
                headers,
                plain_headers,
                key,
                limiter,
                metrics,
            }),
        })
    }

    /// The configuration the client was built with.
    pub fn config(&self) -> &LlmConfig {
        &self.inner.cfg
    }

    /// Current metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// The per-attempt latency histogram (for `/metrics`).
    pub fn latency_histogram(&self) -> super::metrics::HistogramSnapshot {
        self.inner.metrics.latency()
    }

    /// The exact bytes `chat(body)` sends: `body` with the default model
    /// filled in when it names none. Caches key on this.
    pub fn prepare_body(&self, body: &Value) -> Result<Bytes, LlmError> {
        self.prepare_body_of(Api::ChatCompletions, body)
    }

    /// [`LlmClient::prepare_body`] for `api` (a moderation without a model is left so: the
    /// provider picks its own).
    pub fn prepare_body_of(&self, api: Api, body: &Value) -> Result<Bytes, LlmError> {
        let obj = body
            .as_object()
            .ok_or_else(|| LlmError::InvalidRequest("request body must be a JSON object".into()))?;
        let bytes = if obj.contains_key("model") || !api.needs_model() {
            serde_json::to_vec(body)
        } else {
            let mut with_model = serde_json::Map::with_capacity(obj.len() + 1);
            with_model.insert("model".into(), Value::String(self.inner.cfg.model.clone()));
            with_model.extend(obj.iter().map(|(k, v)| (k.clone(), v.clone())));
            serde_json::to_vec(&with_model)
        };
        bytes
            .map(Bytes::from)
            .map_err(|e| LlmError::InvalidRequest(e.to_string()))
    }

    /// Sends a chat-completions request, retrying per the policy. The body is
    /// sent as given (key order kept); `model` is added only when absent.
    pub async fn chat(&self, body: &Value) -> Result<ChatOutcome, LlmError> {
        let bytes = self.prepare_body(body)?;
        self.chat_bytes(bytes).await
    }

    /// Like [`LlmClient::chat`] for an already serialized, complete body.
    pub async fn chat_bytes(&self, body: Bytes) -> Result<ChatOutcome, LlmError> {
        self.call_bytes(Api::ChatCompletions, body).await
    }

    /// Sends `body` to `api` (`POST /embeddings`, ...), retried and rate limited as chat
    /// requests are; `model` is added when absent (but for moderations).
    pub async fn call(&self, api: Api, body: &Value) -> Result<ChatOutcome, LlmError> {
        let bytes = self.prepare_body_of(api, body)?;
        self.call_bytes(api, bytes).await
    }

    /// [`LlmClient::call`] for an already serialized, complete body.
    pub async fn call_bytes(&self, api: Api, body: Bytes) -> Result<ChatOutcome, LlmError> {
        let started = Instant::now();
        let inner = &*self.inner;
        let uri = match Api::ALL.iter().position(|a| *a == api) {
            Some(i) => &inner.api_uris[i],
            None => &inner.chat_uri,
        };
        let estimate = if inner.limiter.counts_tokens() {
            estimate_tokens(&body)
        } else {
            0
        };
        let ex = Exchange {
            method: Method::POST,
            uri,
            body: Some(body),
            headers: self.json_headers(inner.headers.clone()),
            estimate: Some(estimate),
            replay: Replay::Always,
            stream: false,
        };
        let ((raw, rid, response), attempts) = self
            .execute(&ex, |raw| {
                let rid = request_id(&raw.headers);
                let key = inner.cfg.api_key.as_ref().map(|k| k.expose());
                check_json_type(&raw.headers, &raw.body, rid.as_deref(), uri)
                    .map_err(|e| scrub_error(e, key))?;
                let response =
                    parse_reply(api, &raw.body, rid.as_deref()).map_err(|e| scrub_error(e, key))?;
                Ok((raw, rid, response))
            })
            .await?;
        let used = response.usage.as_ref().map_or(estimate, |u| u.total());
        inner.limiter.settle(estimate, used);
        Ok(ChatOutcome {
            status: raw.status.as_u16(),
            request_id: rid,
            body: raw.body,
            response,
            attempts,
            latency: started.elapsed(),
        })
    }

    /// Model names served by the endpoint (`GET {base}/models`).
    pub async fn models(&self) -> Result<Vec<String>, LlmError> {
        let ex = Exchange {
            method: Method::GET,
            uri: &self.inner.models_uri,
            body: None,
            headers: self.inner.headers.clone(),
            estimate: Some(0),
            replay: Replay::Always,
            stream: false,
        };
        let (list, _) = self
            .execute(&ex, |raw| {
                let rid = request_id(&raw.headers);
                serde_json::from_slice::<ModelList>(&raw.body).map_err(|e| LlmError::Malformed {
                    what: format!(
                        "model list is not valid JSON ({e}); body starts with {}",
                        excerpt(&raw.body)
                    ),
                    request_id: rid,
                })
            })
            .await?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }

    /// Fails fast when `model` is not served, naming close matches.
    pub async fn check_model(&self, model: &str) -> Result<(), LlmError> {
        self.check_models([model]).await
    }

    /// [`LlmClient::check_model`] for several names with one `GET /models`; the first
    /// unknown name is the error.
    pub async fn check_models<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), LlmError> {
        let models = self.models().await?;
        match names.into_iter().find(|n| !models.iter().any(|m| m == n)) {
            None => Ok(()),
            Some(model) => Err(LlmError::UnknownModel {
                model: model.to_owned(),
                suggestions: close_names(model, &models),
            }),
        }
    }

    /// Sends `call` to the base URL's host and returns its 2xx answer after `parse`, with the
    /// chat calls' retries (server advice, 5xx, resets; per `call.replay`), metrics and
    /// scrubbing, but not their rate limiter. Non-2xx answers are `LlmError::Api`.
    pub(crate) async fn request<T>(
        &self,
        call: HttpCall<'_>,
        parse: impl Fn(&HttpReply) -> Result<T, LlmError>,
    ) -> Result<T, LlmError> {
        let uri = self.uri_for(call.path)?;
        let ex = self.exchange(call, &uri, false)?;
        let (value, _) = self
            .execute(&ex, |raw| {
                let reply = HttpReply {
                    headers: raw.headers,
                    body: raw.body,
                };
                parse(&reply).map_err(|e| self.scrub(e))
            })
            .await?;
        Ok(value)
    }

    /// Like [`LlmClient::request`], returning once the head of a 2xx answer is in, the body
    /// left to read with [`HttpStream::chunk`], so a large file is never one buffer.
    pub(crate) async fn request_stream(&self, call: HttpCall<'_>) -> Result<HttpStream, LlmError> {
        let uri = self.uri_for(call.path)?;
        let ex = self.exchange(call, &uri, true)?;
        let idle = self.inner.cfg.pool.request_timeout;
        let (stream, _) = self
            .execute(&ex, |raw| {
                let body = raw.rest.ok_or_else(|| LlmError::Transport {
                    message: "streamed answer without a body".into(),
                })?;
                Ok(HttpStream {
                    body,
                    idle,
                    received: 0,
                })
            })
            .await?;
        Ok(stream)
    }

    /// The URL of `path` under the base URL; refuses anything that would leave the base
    /// URL's scheme and host, since the key goes with every request.
    fn uri_for(&self, path: &str) -> Result<Uri, LlmError> {
        let base = &self.inner.chat_uri;
        let uri = endpoint(&self.inner.cfg.base_url, path.trim_start_matches('/'))?;
        if uri.scheme() != base.scheme() || uri.authority() != base.authority() {
            return Err(LlmError::InvalidRequest(format!(
                "path {path:?} leaves the base URL's host"
            )));
        }
        Ok(uri)
    }

    fn exchange<'a>(
        &self,
        call: HttpCall<'_>,
        uri: &'a Uri,
        stream: bool,
    ) -> Result<Exchange<'a>, LlmError> {
        let inner = &*self.inner;
        let mut headers = match &call.auth {
            Auth::Bearer => inner.headers.clone(),
            Auth::Header(name) => {
                let mut h = inner.plain_headers.clone();
                if let Some(key) = &inner.key {
                    h.insert(name.clone(), key.clone());
                }
                h
            }
        };
        for (name, value) in call.headers {
            if name == AUTHORIZATION || matches!(&call.auth, Auth::Header(n) if n == name) {
                return Err(LlmError::InvalidRequest(format!(
                    "header {name} is the client's to set"
                )));
            }
            headers.insert(name.clone(), value.clone());
        }
        let body = call.body.map(|(bytes, content_type)| {
            headers.insert(CONTENT_TYPE, content_type);
            bytes
        });
        Ok(Exchange {
            method: call.method,
            uri,
            body,
            headers,
            estimate: None,
            replay: call.replay,
            stream,
        })
    }

    /// `headers` with the JSON content type.
    fn json_headers(&self, mut headers: HeaderMap) -> HeaderMap {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers
    }

    /// An error whose text may quote a response, with the key replaced.
    pub(crate) fn scrub(&self, e: LlmError) -> LlmError {
        scrub_error(e, self.inner.cfg.api_key.as_ref().map(|k| k.expose()))
    }

    /// A `Malformed` error quoting the start of `body`, scrubbed of the key.
    pub(crate) fn malformed(&self, what: &str, body: &[u8], headers: &HeaderMap) -> LlmError {
        self.scrub(LlmError::Malformed {
            what: format!("{what}; body starts with {}", excerpt(body)),
            request_id: request_id(headers),
        })
    }

    /// The retry loop shared by all endpoints: limiter, one attempt, classify,
    /// then back off per the server's advice or the policy.
    async fn execute<T>(
        &self,
        ex: &Exchange<'_>,
        parse: impl Fn(RawResponse) -> Result<T, LlmError>,
    ) -> Result<(T, u32), LlmError> {
        let inner = &*self.inner;
        let policy = &inner.cfg.retry;
        let deadline = policy.deadline.and_then(|d| Instant::now().checked_add(d));
        let estimate = ex.estimate.unwrap_or(0);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if attempt > 1 {
                inner.metrics.retries.fetch_add(1, Relaxed);
            }
            // Waiting for the rate limiter counts against the call's deadline too.
            let permit = match (ex.estimate, deadline) {
                (None, _) => None,
                (Some(_), Some(d)) => {
                    let until = tokio::time::Instant::from_std(d);
                    match tokio::time::timeout_at(until, inner.limiter.acquire(estimate)).await {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            return Err(LlmError::Timeout {
                                after: policy.deadline.unwrap_or_default(),
                            })
                        }
                    }
                }
                (Some(_), None) => Some(inner.limiter.acquire(estimate).await),
            };
            let mut timeout = inner.cfg.pool.request_timeout;
            if let Some(d) = deadline {
                timeout = timeout.min(d.saturating_duration_since(Instant::now()));
            }
            let result = self.send_once(ex, timeout).await.and_then(&parse);
            drop(permit);
            let err = match result {
                Ok(value) => {
                    inner.metrics.responses.fetch_add(1, Relaxed);
                    return Ok((value, attempt));
                }
                Err(e) => e,
            };
            inner.metrics.failures.fetch_add(1, Relaxed);
            if ex.estimate.is_some() {
                // A failed attempt consumed no tokens; the retry reserves afresh.
                inner.limiter.settle(estimate, 0);
            }
            let worth = match ex.replay {
                Replay::Always => err.attempts_worth(policy.max_attempts.max(1)),
                Replay::IfUnsent if surely_unsent(&err) => policy.max_attempts.max(1),
                Replay::IfUnsent => 1,
            };
            let give_up = attempt >= worth;
            let delay = policy.delay_after(attempt, &err);
            let past_deadline =
                deadline.is_some_and(|d| Instant::now().checked_add(delay).is_none_or(|t| t >= d));
            if give_up || past_deadline {
                tracing::debug!(attempt, code = err.code(), "giving up: {err}");
                return Err(err);
            }
            tracing::info!(
                attempt,
                code = err.code(),
                status = err.status(),
                delay_ms = delay.as_millis() as u64,
                "retrying LLM request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One HTTP exchange, bounded by `timeout` (for a stream: until its head is in);
    /// non-2xx becomes `LlmError::Api`.
    async fn send_once(
        &self,
        ex: &Exchange<'_>,
        timeout: Duration,
    ) -> Result<RawResponse, LlmError> {
        let inner = &*self.inner;
        let uri = ex.uri;
        let mut req = Request::new(Full::new(ex.body.clone().unwrap_or_default()));
        *req.method_mut() = ex.method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = ex.headers.clone();
        inner.metrics.requests_sent.fetch_add(1, Relaxed);
        let _gauge = InFlight::start(&inner.metrics);
        let t0 = Instant::now();
        let exchange = async {
            let resp = inner
                .http
                .request(req)
                .await
                .map_err(|e| classify_send(&e, uri))?;
            let (parts, body) = resp.into_parts();
            if ex.stream && parts.status.is_success() {
                return Ok(RawResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: Bytes::new(),
                    rest: Some(body),
                });
            }
            let rid = request_id(&parts.headers);
            let body =
                read_capped(body, &parts.headers, inner.cfg.pool.max_response_bytes, rid).await?;
            Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
                rest: None,
            })
        };
        let raw = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(LlmError::Timeout { after: timeout }),
        };
        let took = t0.elapsed();
        inner.metrics.observe_latency(took);
        let raw = raw?;
        tracing::debug!(
            status = raw.status.as_u16(),
            request_id = raw
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            bytes = raw.body.len(),
            micros = took.as_micros() as u64,
            "LLM response"
        );
        if ex.estimate.is_some() {
            inner.limiter.observe(&raw.headers);
        }
        if raw.status.is_success() {
            Ok(raw)
        } else {
            Err(api_error(
                &raw,
                inner.cfg.api_key.as_ref().map(|k| k.expose()),
            ))
        }
    }
}

/// Whether a failure proves the server never acted on the request: no connection was
/// made, or it refused with a 429 (a rate limit, not a quota), unless it said not to retry.
fn surely_unsent(e: &LlmError) -> bool {
    match e {
        LlmError::Connect { .. } => true,
        LlmError::Api(a) => {
            a.status == 429
                && a.code.as_deref() != Some("insufficient_quota")
                && a.should_retry != Some(false)
        }
        _ => false,
    }
}

/// Reads the body, refusing more than `limit` bytes.
async fn read_capped(
    mut body: hyper::body::Incoming,
    headers: &HeaderMap,
    limit: usize,
    request_id: Option<String>,
) -> Result<Bytes, LlmError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(LlmError::TooLarge { limit, request_id });
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(8 << 10, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| LlmError::Truncated {
            received: buf.len(),
            message: chain(&e),
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(LlmError::TooLarge { limit, request_id });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The error and all its causes, `: `-separated.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Whether a rustls error is among the causes. hyper-rustls wraps it in
/// `io::Error`s whose `source()` skips it, so look inside those too.
fn has_tls_error(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(s) = cur {
        if s.is::<rustls::Error>() {
            return true;
        }
        cur = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => s.source(),
        };
    }
    false
}

/// Maps a hyper-util client error to a retry class.
fn classify_send(e: &hyper_util::client::legacy::Error, uri: &Uri) -> LlmError {
    let message = chain(e);
    if e.is_connect() {
        let host = uri.host().unwrap_or_default().to_owned();
        // A rejected certificate or TLS setup does not heal by retrying.
        if has_tls_error(e) {
            return LlmError::Tls { host, message };
        }
        return LlmError::Connect { host, message };
    }
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = cur {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return LlmError::Reset { message };
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return LlmError::Reset { message };
            }
        }
        cur = s.source();
    }
    LlmError::Transport { message }
}

fn request_id(h: &HeaderMap) -> Option<String> {
    h.get("x-request-id")
        .or_else(|| h.get("request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// First bytes of a body, for error messages.
fn excerpt(body: &[u8]) -> String {
    let n = body.len().min(120);
    let text = String::from_utf8_lossy(&body[..n]);
    if body.len() > n {
        format!("{text:?}...")
    } else {
        format!("{text:?}")
    }
}

fn check_json_type(
    h: &HeaderMap,
    body: &[u8],
    rid: Option<&str>,
    url: &http::Uri,
) -> Result<(), LlmError> {
    let is_json = |ct: &str| {
        ct.as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"json"))
    };
    match h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) if !is_json(ct) => Err(LlmError::NotJson {
            // Without any user:password part of the authority.
            url: format!(
                "{}://{}{}",
                url.scheme_str().unwrap_or("https"),
                url.authority()
                    .map_or("", |a| a.as_str().rsplit('@').next().unwrap_or("")),
                url.path()
            ),
            content_type: ct.to_string(),
            excerpt: excerpt(body),
            request_id: rid.map(str::to_owned),
        }),
        _ => Ok(()),
    }
}

/// A 2xx body of `api`: a chat completion parsed whole; another endpoint's answer must be a
/// JSON object, of which its id, model and usage are read (the body itself is kept as is).
fn parse_reply(api: Api, body: &[u8], rid: Option<&str>) -> Result<ChatResponse, LlmError> {
    if api == Api::ChatCompletions {
        return parse_chat(body, rid);
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return Err(LlmError::Malformed {
                what: format!(
                    "{} answer is not a JSON object; body starts with {}",
                    api.path(),
                    excerpt(body)
                ),
                request_id: rid.map(str::to_owned),
            })
        }
        Err(e) => {
            return Err(LlmError::Malformed {
                what: format!(
                    "{} answer is not valid JSON ({e}); body starts with {}",
                    api.path(),
                    excerpt(body)
                ),
                request_id: rid.map(str::to_owned),
            })
        }
    };
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(ChatResponse {
        id: text("id"),
        model: text("model"),
        choices: Vec::new(),
        usage: super::api::usage_of(&value),
        extra: serde_json::Map::new(),
    })
}

fn parse_chat(body: &[u8], rid: Option<&str>) -> Result<ChatResponse, LlmError> {
    serde_json::from_slice(body).map_err(|e| LlmError::Malformed {
        what: format!(
            "chat completion is not valid JSON ({e}); body starts with {}",
            excerpt(body)
        ),
        request_id: rid.map(str::to_owned),
    })
}

/// An error whose text quotes a response body, with the key replaced (a 2xx body can echo
/// the request's headers back).
fn scrub_error(e: LlmError, key: Option<&str>) -> LlmError {
    match e {
        LlmError::Malformed { what, request_id } => LlmError::Malformed {
            what: scrub(&what, key),
            request_id,
        },
        LlmError::NotJson {
            url,
            content_type,
            excerpt,
            request_id,
        } => LlmError::NotJson {
            url,
            content_type,
            excerpt: scrub(&excerpt, key),
            request_id,
        },
        other => other,
    }
}

/// Replaces the key wherever a provider echoes it back.
fn scrub(text: &str, key: Option<&str>) -> String {
    match key {
        Some(k) if !k.is_empty() && text.contains(k) => text.replace(k, "***"),
        _ => text.to_owned(),
    }
}

fn api_error(raw: &RawResponse, key: Option<&str>) -> LlmError {
    let advice = parse_advice(&raw.headers);
    let parsed = ApiErrorBody::parse(&raw.body).unwrap_or_default();
    let message = parsed.message.unwrap_or_else(|| {
        let reason = raw.status.canonical_reason().unwrap_or("error");
        if raw.body.is_empty() {
            reason.to_owned()
        } else {
            format!("{reason}; body starts with {}", excerpt(&raw.body))
        }
    });
    let body = match key {
        Some(k) if !k.is_empty() && raw.body.windows(k.len()).any(|w| w == k.as_bytes()) => {
            Bytes::from(scrub(&String::from_utf8_lossy(&raw.body), key))
        }
        _ => raw.body.clone(),
    };
    LlmError::Api(Box::new(ApiError {
        status: raw.status.as_u16(),
        request_id: request_id(&raw.headers),
        error_type: parsed.error_type,
        code: parsed.code,
        message: scrub(&message, key),
        body,
        retry_after: advice.retry_after,
        should_retry: advice.should_retry,
    }))
}

/// Names within a small edit distance of `want`, or containing it, closest first.
fn close_names(want: &str, names: &[String]) -> Vec<String> {
    let want_l = want.to_ascii_lowercase();
    let limit = (want.len() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter_map(|n| {
            let nl = n.to_ascii_lowercase();
            let d = levenshtein(&want_l, &nl);
            (d <= limit || nl.contains(&want_l) || want_l.contains(&nl)).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, n)| n.clone()).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let u = endpoint("http://127.0.0.1:9/v1/", "chat/completions").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9/v1/chat/completions");
        assert!(endpoint("ftp://x/v1", "models").is_err());
        assert!(endpoint("not a url", "models").is_err());
    }

    #[test]
    fn suggestions() {
        let names: Vec<String> = ["grok-4", "grok-3-mini", "gpt-4o"]
            .map(String::from)
            .to_vec();
        assert_eq!(close_names("grok4", &names), vec!["grok-4".to_string()]);
        assert!(close_names("claude", &names).is_empty());
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn scrubbing() {
        assert_eq!(
            scrub("bad key sk-1 given", Some("sk-1")),
            "bad key *** given"
        );
        assert_eq!(scrub("fine", None), "fine");
    }
}
