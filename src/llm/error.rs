//! Errors of the LLM client, classified for retries.

use std::time::Duration;

use bytes::Bytes;

/// Everything that can go wrong talking to a chat-completions endpoint.
///
/// No variant ever holds the API key: provider messages are scrubbed of it
/// before they are stored here.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The server answered with a non-success status (boxed: it is large).
    #[error("{0}")]
    Api(Box<ApiError>),
    /// The per-request deadline (headers and whole body) passed.
    #[error("request timed out after {after:?}")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The TCP/TLS connection could not be established.
    #[error("cannot connect to {host}: {message}")]
    Connect {
        /// Host the client tried to reach.
        host: String,
        /// Underlying cause.
        message: String,
    },
    /// The TLS handshake failed (unknown issuer, bad name, ...); not retried.
    #[error("TLS handshake with {host} failed: {message}")]
    Tls {
        /// Host the client tried to reach.
        host: String,
        /// Underlying cause.
        message: String,
    },
    /// The connection was closed or reset before the response headers arrived.
    #[error("connection closed before the response arrived: {message}")]
    Reset {
        /// Underlying cause.
        message: String,
    },
    /// Headers arrived but the body ended early.
    #[error("response body truncated after {received} bytes: {message}")]
    Truncated {
        /// Bytes received before the connection broke.
        received: usize,
        /// Underlying cause.
        message: String,
    },
    /// Another transport-level failure (HTTP/2 protocol error and the like).
    #[error("transport error: {message}")]
    Transport {
        /// Underlying cause.
        message: String,
    },
    /// The server's answer could not be understood.
    #[error("malformed response{}: {what}", rid(request_id.as_deref()))]
    Malformed {
        /// What exactly is wrong.
        what: String,
        /// Value of the `x-request-id` header, if any.
        request_id: Option<String>,
    },
    /// A 2xx answer that is not JSON at all (an HTML page: a wrong base URL, a login portal,
    /// a proxy). Tried once more, then reported with the URL.
    #[error("{url} answered with content-type {content_type:?}, not JSON{}; body starts with {excerpt}; check the base URL (it usually ends in /v1)", rid(request_id.as_deref()))]
    NotJson {
        /// The URL that was called.
        url: String,
        content_type: String,
        /// The first bytes of the body.
        excerpt: String,
        /// Value of the `x-request-id` header, if any.
        request_id: Option<String>,
    },
    /// The response body exceeded `PoolConfig::max_response_bytes`.
    #[error("response exceeds the {limit}-byte size cap{}", rid(request_id.as_deref()))]
    TooLarge {
        /// The configured cap.
        limit: usize,
        /// Value of the `x-request-id` header, if any.
        request_id: Option<String>,
    },
    /// The model is not served by the endpoint.
    #[error("unknown model {model:?}{}", suggest(suggestions))]
    UnknownModel {
        /// Name that was asked for.
        model: String,
        /// Close names the endpoint does serve.
        suggestions: Vec<String>,
    },
    /// The request body given by the caller is unusable.
    #[error("invalid request body: {0}")]
    InvalidRequest(String),
    /// Bad client configuration (URL, key, TLS roots).
    #[error("configuration error: {0}")]
    Config(String),
}

/// A non-success HTTP answer, with the provider's explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Value of the `x-request-id` header, if any.
    pub request_id: Option<String>,
    /// Provider's `error.type`.
    pub error_type: Option<String>,
    /// Provider's `error.code`.
    pub code: Option<String>,
    /// Provider's `error.message` (or a body excerpt when there is none).
    pub message: String,
    /// Raw response body.
    pub body: Bytes,
    /// Server advice from `retry-after-ms` / `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Server override from `x-should-retry`.
    pub should_retry: Option<bool>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self
            .code
            .as_deref()
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        write!(
            f,
            "provider returned HTTP {}{code}: {}{}",
            self.status,
            self.message,
            rid(self.request_id.as_deref())
        )
    }
}

fn rid(id: Option<&str>) -> String {
    id.map(|i| format!(" (request id {i})")).unwrap_or_default()
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}

impl LlmError {
    /// Whether retrying the same request may succeed.
    ///
    /// `insufficient_quota` is never retryable; otherwise `x-should-retry`
    /// overrides the status-based rule (408, 409, 429, 5xx retry).
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Api(a) => {
                if a.code.as_deref() == Some("insufficient_quota") {
                    return false;
                }
                a.should_retry
                    .unwrap_or(matches!(a.status, 408 | 409 | 429 | 500..=599))
            }
            LlmError::Timeout { .. }
            | LlmError::Connect { .. }
            | LlmError::Reset { .. }
            | LlmError::Truncated { .. }
            | LlmError::Transport { .. }
            // A broken body from a working server: the next answer is usually whole.
            | LlmError::Malformed { .. } => true,
            LlmError::NotJson { .. }
            | LlmError::Tls { .. }
            | LlmError::TooLarge { .. }
            | LlmError::UnknownModel { .. }
            | LlmError::InvalidRequest(_)
            | LlmError::Config(_) => false,
        }
    }

    /// Attempts worth making inside one call, out of the policy's `max`: a non-JSON page is
    /// tried once more (a proxy's hiccup), not `max` times.
    pub fn attempts_worth(&self, max: u32) -> u32 {
        match self {
            LlmError::NotJson { .. } => max.min(2),
            e if e.is_retryable() => max,
            _ => 1,
        }
    }

    /// Delay the server asked for before the next attempt, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Api(a) => a.retry_after,
            _ => None,
        }
    }

    /// HTTP status, for errors that carry one.
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::Api(a) => Some(a.status),
            _ => None,
        }
    }

    /// Request id reported by the server, if any.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            LlmError::Api(a) => a.request_id.as_deref(),
            LlmError::Malformed { request_id, .. }
            | LlmError::NotJson { request_id, .. }
            | LlmError::TooLarge { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Stable short code for storage and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::Api(a) => {
                if a.code.as_deref() == Some("insufficient_quota") {
                    return "insufficient_quota";
                }
                match a.status {
                    400 => "bad_request",
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "not_found",
                    408 => "request_timeout",
                    409 => "conflict",
                    422 => "unprocessable",
                    429 => "rate_limited",
                    500..=599 => "server_error",
                    _ => "http_error",
                }
            }
            LlmError::Timeout { .. } => "timeout",
            LlmError::Connect { .. } => "connect",
            LlmError::Tls { .. } => "tls",
            LlmError::Reset { .. } => "connection_reset",
            LlmError::Truncated { .. } => "truncated",
            LlmError::Transport { .. } => "transport",
            LlmError::Malformed { .. } => "malformed_response",
            LlmError::NotJson { .. } => "not_json",
            LlmError::TooLarge { .. } => "too_large",
            LlmError::UnknownModel { .. } => "unknown_model",
            LlmError::InvalidRequest(_) => "invalid_request",
            LlmError::Config(_) => "config",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<&str>, should_retry: Option<bool>) -> LlmError {
        LlmError::Api(Box::new(ApiError {
            status,
            request_id: Some("r1".into()),
            error_type: None,
            code: code.map(String::from),
            message: "m".into(),
            body: Bytes::new(),
            retry_after: None,
            should_retry,
        }))
    }

    #[test]
    fn status_classification() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(api(s, None, None).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!api(s, None, None).is_retryable(), "{s}");
        }
        assert!(!api(503, None, Some(false)).is_retryable());
        assert!(api(400, None, Some(true)).is_retryable());
        let q = api(429, Some("insufficient_quota"), Some(true));
        assert!(!q.is_retryable());
        assert_eq!(q.code(), "insufficient_quota");
        assert_eq!(api(429, None, None).code(), "rate_limited");
        assert!(api(401, None, None).to_string().contains("request id r1"));
    }
}
