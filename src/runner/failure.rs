//! Why a job failed: the record kept in the job's `last_error`, which the output files show.

use serde::{Deserialize, Serialize};

use crate::llm::LlmError;

/// Why a job failed, kept as JSON in the job's `last_error` so the output can show the
/// provider's own status and error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Stable short code (`rate_limited`, `timeout`, `bad_request`, ...).
    pub code: String,
    pub message: String,
    /// Set when the server answered with an HTTP error.
    pub status_code: Option<u16>,
    pub request_id: Option<String>,
    /// The provider's error body (JSON text), when it sent one.
    pub body: Option<String>,
}

impl FailureRecord {
    /// The code of lines cancelled because their batch's completion window ended (OpenAI's).
    pub const BATCH_EXPIRED: &'static str = "batch_expired";

    /// A failure of our own (no HTTP answer behind it).
    pub fn new(code: &str, message: impl Into<String>) -> FailureRecord {
        FailureRecord {
            code: code.into(),
            message: message.into(),
            status_code: None,
            request_id: None,
            body: None,
        }
    }

    /// The failure of a call, with the provider's status, request id and error body.
    pub fn of_llm_error(err: &LlmError) -> FailureRecord {
        FailureRecord {
            code: err.code().to_string(),
            message: err.to_string(),
            status_code: err.status(),
            request_id: err.request_id().map(str::to_string),
            body: match err {
                LlmError::Api(api) if !api.body.is_empty() => {
                    Some(String::from_utf8_lossy(&api.body).into_owned())
                }
                _ => None,
            },
        }
    }

    /// Reads a job's `last_error`: our JSON record, or any other text as a plain message.
    pub fn from_last_error(text: &str) -> FailureRecord {
        serde_json::from_str(text).unwrap_or_else(|_| FailureRecord::new("failed", text))
    }

    /// JSON text for `last_error`.
    pub fn to_last_error(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.message.clone())
    }
}
