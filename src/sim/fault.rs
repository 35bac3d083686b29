//! Faults the simulation server can inject, and how each becomes a response.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use serde_json::{json, Value};

/// Response body type of the server.
pub type SimBody = BoxBody<Bytes, io::Error>;

/// One scripted misbehaviour, applied to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The normal answer.
    Ok,
    /// Wait this long, then answer normally (beyond the client timeout it
    /// simulates slow headers).
    Latency(Duration),
    /// An error status with an OpenAI-style body `{"error":{message,type,code}}`.
    Status {
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: Option<String>,
        /// `error.message`.
        message: String,
    },
    /// 429 with `Retry-After` seconds and/or `retry-after-ms` (or neither).
    RateLimited {
        /// `Retry-After` in seconds.
        retry_after_secs: Option<u64>,
        /// `retry-after-ms`.
        retry_after_ms: Option<u64>,
    },
    /// 429 with code `insufficient_quota`.
    InsufficientQuota,
    /// The inner fault's response plus these headers (`x-should-retry`,
    /// `x-ratelimit-*`, ...).
    WithHeaders(Vec<(String, String)>, Box<Fault>),
    /// Close the connection before sending headers.
    Reset,
    /// Send headers and half the body, then close the connection.
    Truncated,
    /// 200 with a body that is not valid JSON.
    MalformedJson,
    /// 200 with `content-type: text/html`.
    WrongContentType,
    /// 200 with a valid JSON body of about this many bytes.
    Huge(usize),
    /// Any status, content type and body.
    Raw {
        /// HTTP status.
        status: u16,
        /// `content-type` header.
        content_type: String,
        /// Body text.
        body: String,
    },
}

impl Fault {
    /// An error status with a stock message.
    pub fn status(status: u16) -> Self {
        Fault::Status {
            status,
            code: None,
            message: format!("simulated HTTP {status}"),
        }
    }

    /// Adds response headers to this fault.
    pub fn with_headers(self, headers: &[(&str, &str)]) -> Self {
        let h = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Fault::WithHeaders(h, Box::new(self))
    }
}

/// What a custom responder decides for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Answer with this text as the assistant message.
    Text(String),
    /// Misbehave.
    Fault(Fault),
}

const JSON: &str = "application/json";

fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// An OpenAI-style error body.
pub(crate) fn error_body(status: u16, code: Option<&str>, message: &str) -> Bytes {
    let v = json!({"error": {"message": message, "type": error_type(status), "code": code}});
    Bytes::from(v.to_string())
}

pub(crate) fn full(b: impl Into<Bytes>) -> SimBody {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Sends one chunk, waits a moment so hyper flushes it with the headers, then
/// fails so hyper aborts the connection mid-body.
struct PartialThenFail {
    chunk: Option<Bytes>,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl PartialThenFail {
    fn new(chunk: Bytes) -> Self {
        PartialThenFail {
            chunk: Some(chunk),
            pause: Box::pin(tokio::time::sleep(Duration::from_millis(20))),
        }
    }
}

impl Body for PartialThenFail {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(chunk) = self.chunk.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "simulated truncation",
            )))),
        }
    }
}

fn response(status: u16, content_type: &str, body: SimBody) -> Response<SimBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// A JSON response.
pub(crate) fn json(status: u16, body: Bytes) -> Response<SimBody> {
    response(status, JSON, full(body))
}

fn add_header(r: &mut Response<SimBody>, k: &str, v: &str) {
    if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
        r.headers_mut().append(k, v);
    }
}

/// Turns a fault into a response; `answer` is the normal completion body.
/// `Err` makes hyper drop the connection without answering.
pub(crate) async fn render(fault: Fault, answer: Bytes) -> io::Result<Response<SimBody>> {
    let mut fault = fault;
    let mut extra = Vec::new();
    while let Fault::WithHeaders(h, inner) = fault {
        extra.extend(h);
        fault = *inner;
    }
    let mut r = match fault {
        // WithHeaders was peeled off above; it only appears here to be exhaustive.
        Fault::Ok | Fault::WithHeaders(..) => json(200, answer),
        Fault::Latency(d) => {
            tokio::time::sleep(d).await;
            json(200, answer)
        }
        Fault::Status {
            status,
            code,
            message,
        } => json(status, error_body(status, code.as_deref(), &message)),
        Fault::RateLimited {
            retry_after_secs,
            retry_after_ms,
        } => {
            let body = error_body(429, Some("rate_limit_exceeded"), "simulated rate limit");
            let mut r = json(429, body);
            if let Some(s) = retry_after_secs {
                add_header(&mut r, "retry-after", &s.to_string());
            }
            if let Some(ms) = retry_after_ms {
                add_header(&mut r, "retry-after-ms", &ms.to_string());
            }
            r
        }
        Fault::InsufficientQuota => {
            let msg =
                "You exceeded your current quota, please check your plan and billing details.";
            json(429, error_body(429, Some("insufficient_quota"), msg))
        }
        Fault::Reset => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "simulated reset",
            ))
        }
        Fault::Truncated => {
            let half = answer.slice(..answer.len() / 2);
            let mut r = response(200, JSON, PartialThenFail::new(half).boxed());
            add_header(&mut r, "content-length", &answer.len().to_string());
            r
        }
        Fault::MalformedJson => json(
            200,
            Bytes::from_static(br#"{"id":"sim","choices":[{"message":"#),
        ),
        Fault::WrongContentType => response(
            200,
            "text/html",
            full("<html><body>502 Bad Gateway</body></html>"),
        ),
        Fault::Huge(n) => {
            let pad = "x".repeat(n.saturating_sub(40));
            let v: Value = json!({"pad": pad, "choices": []});
            json(200, Bytes::from(v.to_string()))
        }
        Fault::Raw {
            status,
            content_type,
            body,
        } => response(status, &content_type, full(body)),
    };
    for (k, v) in &extra {
        add_header(&mut r, k, v);
    }
    Ok(r)
}
