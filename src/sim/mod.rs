//! A real hyper HTTP server on 127.0.0.1 that speaks the OpenAI
//! chat-completions wire format, with scripted faults. Used by the tests, the
//! benchmarks and the CLI's `--simulate` mode.
//!
//! [`batch`] adds the providers' batch APIs (OpenAI Files + Batch, xAI Batch, Anthropic
//! Message Batches), answering every batched request with the same [`decide`] as a live
//! `/chat/completions` call.

pub mod batch;
mod endpoints;
mod fault;
mod structured;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub use batch::{BatchConfig, BatchControl, BatchMode, Protocol};
pub use fault::{Fault, Reply, SimBody};

/// Scripts answers from the request body.
pub type Responder = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// Random misbehaviour for `--simulate`, reproducible from `seed`.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFaults {
    /// RNG seed.
    pub seed: u64,
    /// Smallest added latency.
    pub latency_min: Duration,
    /// Largest added latency (uniform between the two).
    pub latency_max: Duration,
    /// Probability of a 429 with `retry-after-ms`.
    pub p_rate_limit: f64,
    /// Advised delay of those 429s.
    pub retry_after_ms: u64,
    /// Probability of a 503.
    pub p_server_error: f64,
}

impl Default for RandomFaults {
    fn default() -> Self {
        RandomFaults {
            seed: 42,
            latency_min: Duration::ZERO,
            latency_max: Duration::ZERO,
            p_rate_limit: 0.0,
            retry_after_ms: 100,
            p_server_error: 0.0,
        }
    }
}

/// Server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Path prefix of the API, `/v1` by default.
    pub prefix: String,
    /// Names listed by `GET {prefix}/models`.
    pub models: Vec<String>,
    /// When set, requests must carry `Authorization: Bearer <key>` (else 401).
    pub api_key: Option<String>,
    /// Random faults after the scripted ones run out.
    pub random: Option<RandomFaults>,
    /// Keep a log of every request (headers and body); off for benchmarks.
    pub record_requests: bool,
    /// Benchmark mode: every chat request gets one canned answer without
    /// parsing the body, counting prompts or consulting faults/responder.
    pub fast: bool,
    /// The batch APIs: lifecycle mode and the providers' limits.
    pub batch: BatchConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            prefix: "/v1".into(),
            models: [
                "grok-4",
                "grok-3-mini",
                "gpt-4o-mini",
                "text-embedding-3-small",
                "omni-moderation-latest",
            ]
            .map(String::from)
            .to_vec(),
            api_key: None,
            random: None,
            record_requests: true,
            fast: false,
            batch: BatchConfig::default(),
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Protocol version, e.g. `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Headers, names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Bytes,
    /// When the server read it.
    pub received_at: std::time::Instant,
}

impl RequestRecord {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Counters and logs, copied out by [`SimServer::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Connections still open.
    pub open_connections: u64,
    /// HTTP requests received.
    pub requests: u64,
    /// Every request, when `record_requests` is on.
    pub log: Vec<RequestRecord>,
    /// Chat requests per prompt (text of the last user message), live and batched.
    pub by_prompt: HashMap<String, u64>,
    /// Live `/chat/completions` requests (not the requests of batches).
    pub live_chats: u64,
    /// Live requests to the other endpoints (responses, embeddings, completions,
    /// moderations).
    pub live_other: u64,
    /// Scripted faults not yet used.
    pub faults_pending: usize,
}

pub(crate) struct State {
    cfg: SimConfig,
    faults: Mutex<VecDeque<Fault>>,
    responder: RwLock<Option<Responder>>,
    rng: Mutex<StdRng>,
    connections: AtomicU64,
    open: AtomicU64,
    requests: AtomicU64,
    log: Mutex<Vec<RequestRecord>>,
    by_prompt: Mutex<HashMap<String, u64>>,
    live_chats: AtomicU64,
    live_other: AtomicU64,
    canned: Bytes,
    /// `http` or `https`, for absolute URLs such as Anthropic's `results_url`.
    scheme: &'static str,
    batches: batch::Store,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running simulation server; dropping it (or [`SimServer::shutdown`])
/// stops the accept loop and every open connection.
pub struct SimServer {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// Starts a plain-http server on a random port of 127.0.0.1.
    pub async fn start(cfg: SimConfig) -> io::Result<SimServer> {
        Self::spawn(cfg, None).await
    }

    /// Starts an https server (HTTP/2 and HTTP/1.1 via ALPN unless the config
    /// already names protocols).
    pub async fn start_tls(
        cfg: SimConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<SimServer> {
        let tls = if tls.alpn_protocols.is_empty() {
            let mut c = (*tls).clone();
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(c)
        } else {
            tls
        };
        Self::spawn(cfg, Some(TlsAcceptor::from(tls))).await
    }

    async fn spawn(cfg: SimConfig, tls: Option<TlsAcceptor>) -> io::Result<SimServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seed = cfg.random.as_ref().map_or(0, |r| r.seed);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let batches = batch::new_store(&cfg.batch);
        let state = Arc::new(State {
            cfg,
            faults: Mutex::new(VecDeque::new()),
            responder: RwLock::new(None),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            by_prompt: Mutex::new(HashMap::new()),
            live_chats: AtomicU64::new(0),
            live_other: AtomicU64::new(0),
            canned: completion(0, "sim", "[simulated] fast answer", 8),
            scheme,
            batches,
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state), tls));
        Ok(SimServer {
            addr,
            scheme,
            state,
            task,
        })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// API root for the client, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.addr, self.state.cfg.prefix)
    }

    /// API root under which `protocol` owns `/batches` and `/files`, e.g.
    /// `http://127.0.0.1:PORT/xai/v1` (see [`batch`] for why the mounts exist).
    pub fn base_url_for(&self, protocol: Protocol) -> String {
        format!(
            "{}://{}{}{}",
            self.scheme,
            self.addr,
            protocol.mount(),
            self.state.cfg.prefix
        )
    }

    /// The control handle of the batch APIs (cheap to clone).
    pub fn batches(&self) -> BatchControl {
        BatchControl::new(Arc::clone(&self.state))
    }

    /// Queues faults, used one per chat request in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.state.faults).extend(faults);
    }

    /// Scripts answers; scripted faults still go first.
    pub fn set_responder(&self, r: Responder) {
        *self
            .state
            .responder
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(r);
    }

    /// Copies counters and logs.
    pub fn stats(&self) -> SimStats {
        let s = &self.state;
        SimStats {
            connections: s.connections.load(Relaxed),
            open_connections: s.open.load(Relaxed),
            requests: s.requests.load(Relaxed),
            log: lock(&s.log).clone(),
            by_prompt: lock(&s.by_prompt).clone(),
            live_chats: s.live_chats.load(Relaxed),
            live_other: s.live_other.load(Relaxed),
            faults_pending: lock(&s.faults).len(),
        }
    }

    /// Chat requests seen for this prompt.
    pub fn calls_for(&self, prompt: &str) -> u64 {
        lock(&self.state.by_prompt)
            .get(prompt)
            .copied()
            .unwrap_or(0)
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // Only reports the cancellation; waiting makes the stop synchronous.
        let _ = (&mut self.task).await;
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    // Connections live in the set, so aborting this task closes them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    state.connections.fetch_add(1, Relaxed);
                    state.open.fetch_add(1, Relaxed);
                    let st = Arc::clone(&state);
                    match tls.clone() {
                        Some(acc) => conns.spawn(async move {
                            match acc.accept(stream).await {
                                Ok(s) => serve(s, st).await,
                                Err(e) => {
                                    st.open.fetch_sub(1, Relaxed);
                                    tracing::debug!("sim: TLS handshake failed: {e}");
                                }
                            }
                        }),
                        None => conns.spawn(serve(stream, st)),
                    };
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("sim: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve<S>(io: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = Arc::clone(&state);
    let svc = service_fn(move |req| handle(Arc::clone(&st), req));
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!("sim: connection ended: {e}");
    }
    state.open.fetch_sub(1, Relaxed);
}

fn json_response(status: u16, body: Bytes) -> io::Result<Response<SimBody>> {
    Ok(fault::json(status, body))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> io::Result<Response<SimBody>> {
    let n = state.requests.fetch_add(1, Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if state.cfg.record_requests {
        lock(&state.log).push(RequestRecord {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            version: format!("{:?}", parts.version),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.clone(),
            received_at: std::time::Instant::now(),
        });
    }
    let mut resp = route(&state, &parts, body, n).await?;
    if let Ok(v) = http::HeaderValue::try_from(format!("sim-req-{n}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    Ok(resp)
}

async fn route(
    state: &State,
    parts: &http::request::Parts,
    body: Bytes,
    n: u64,
) -> io::Result<Response<SimBody>> {
    let prefix = state.cfg.prefix.trim_end_matches('/');
    // A protocol mount (`/xai/v1`, see `batch`) only when the path is not already under the
    // prefix, so a prefix such as `/openai/v1` keeps working.
    let (mount, path) = match parts.uri.path().strip_prefix(prefix) {
        Some(p) => (None, p),
        None => {
            let (mount, full) = batch::split_mount(parts.uri.path());
            (mount, full.strip_prefix(prefix).unwrap_or(""))
        }
    };
    if batch::is_anthropic(path) {
        // Anthropic authenticates with `x-api-key`, not a bearer token.
        return batch::route(state, mount, parts, body, path).await;
    }
    if let Some(key) = &state.cfg.api_key {
        let expected = format!("Bearer {key}");
        let given = parts.headers.get(http::header::AUTHORIZATION);
        if given.map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
            let msg = "Incorrect API key provided";
            return json_response(401, fault::error_body(401, Some("invalid_api_key"), msg));
        }
    }
    match (&parts.method, path) {
        (&Method::GET, "/models") => {
            let data: Vec<Value> = state
                .cfg
                .models
                .iter()
                .map(|m| json!({"id": m, "object": "model", "owned_by": "reasonq-sim"}))
                .collect();
            json_response(
                200,
                Bytes::from(json!({"object": "list", "data": data}).to_string()),
            )
        }
        (&Method::POST, "/chat/completions") if state.cfg.fast => {
            json_response(200, state.canned.clone())
        }
        (&Method::POST, "/chat/completions") => chat(state, &body, n).await,
        _ if batch::is_batch(path) => batch::route(state, mount, parts, body, path).await,
        (&Method::POST, p) if let Some(api) = endpoints::Endpoint::of_path(p) => {
            endpoints::answer(state, api, &body, n).await
        }
        _ => {
            let msg = format!("no route for {} {}", parts.method, parts.uri.path());
            json_response(404, fault::error_body(404, Some("not_found"), &msg))
        }
    }
}

/// Text of the last user message (string content or text parts); for the other endpoints,
/// their `input` or `prompt` text.
fn last_user_text(req: &Value) -> String {
    if req.get("messages").is_none() {
        return match req.get("input").or_else(|| req.get("prompt")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
    }
    let messages = req.get("messages").and_then(Value::as_array);
    let Some(msg) = messages.and_then(|m| m.iter().rev().find(|m| m["role"] == "user")) else {
        return String::new();
    };
    match &msg["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn prompt_chars(req: &Value) -> usize {
    req.get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| {
            m.iter().map(|m| m["content"].to_string().len()).sum()
        })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

async fn chat(state: &State, body: &[u8], n: u64) -> io::Result<Response<SimBody>> {
    state.live_chats.fetch_add(1, Relaxed);
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("request body is not valid JSON: {e}");
            return json_response(400, fault::error_body(400, None, &msg));
        }
    };
    let scripted = lock(&state.faults).pop_front();
    let d = decide(state, &req);
    let fault = match (scripted, d.fault) {
        (Some(f), _) | (None, Some(f)) => f,
        (None, None) => random_fault(state),
    };
    let answer = completion(n, &d.model, &d.content, d.prompt_chars);
    fault::render(fault, answer).await
}

/// What one chat request is answered with, live or batched: the responder's text (or the
/// default echo) and the fault it scripted, if any. Counts the prompt in `by_prompt`.
struct Decision {
    content: String,
    model: String,
    prompt_chars: usize,
    fault: Option<Fault>,
}

/// The one answer logic that `/chat/completions` and every batch protocol share, so a
/// batch run and a live run give the same answers. Scripted and random faults are the live
/// route's own (they model the HTTP exchange) and are not consulted here.
fn decide(state: &State, req: &Value) -> Decision {
    let prompt = last_user_text(req);
    *lock(&state.by_prompt).entry(prompt.clone()).or_default() += 1;
    let reply = state
        .responder
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|r| r(req));
    let (fault, text) = match reply {
        Some(Reply::Fault(f)) => (Some(f), None),
        Some(Reply::Text(t)) => (None, Some(t)),
        None => (None, None),
    };
    let content = text.unwrap_or_else(|| {
        let said = format!("[simulated] answer to: {}", truncate(&prompt, 80));
        structured::reply(req, &said).unwrap_or(said)
    });
    // A provider stops at the request's output limit: at ~4 chars a token, the answer is cut
    // so its reported completion tokens stay within `max_tokens`.
    let limit = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.get(*k).and_then(Value::as_u64));
    let content = match limit {
        Some(max) => {
            let room = usize::try_from(max.saturating_mul(4))
                .unwrap_or(usize::MAX)
                .saturating_sub(1);
            let mut end = room.min(content.len());
            while !content.is_char_boundary(end) {
                end -= 1;
            }
            content[..end].to_string()
        }
        None => content,
    };
    let model = req.get("model").and_then(Value::as_str).unwrap_or("sim");
    Decision {
        content,
        model: model.to_owned(),
        prompt_chars: prompt_chars(req),
        fault,
    }
}

/// A completion body with usage derived from text lengths (~4 chars a token).
fn completion(n: u64, model: &str, content: &str, prompt_chars: usize) -> Bytes {
    let prompt_tokens = prompt_chars / 4 + 1;
    let completion_tokens = content.len() / 4 + 1;
    let v = json!({
        "id": format!("chatcmpl-sim-{n}"),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    });
    Bytes::from(v.to_string())
}

fn random_fault(state: &State) -> Fault {
    let Some(r) = &state.cfg.random else {
        return Fault::Ok;
    };
    let mut rng = lock(&state.rng);
    let x: f64 = rng.random();
    if x < r.p_rate_limit {
        return Fault::RateLimited {
            retry_after_secs: None,
            retry_after_ms: Some(r.retry_after_ms),
        };
    }
    if x < r.p_rate_limit + r.p_server_error {
        return Fault::status(503);
    }
    if r.latency_max > r.latency_min {
        Fault::Latency(rng.random_range(r.latency_min..=r.latency_max))
    } else if r.latency_min > Duration::ZERO {
        Fault::Latency(r.latency_min)
    } else {
        Fault::Ok
    }
}
