//! Result lines in OpenAI's batch output format, so existing parsers of OpenAI and vLLM batch
//! output read them unchanged:
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
//!
//! HTTP failures keep their status and the provider's error body in `response`; failures
//! without an HTTP answer (timeouts, resets, retries exhausted) have `response: null` and
//! `error: {"code", "message"}`. Our own details (cache, attempts, latency) are not here: they
//! are in `reasonq results --json`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What a finished job's result holds (encoded with the store codec in the job record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    pub status_code: u16,
    pub request_id: Option<String>,
    /// The response body exactly as received (JSON text).
    pub body: String,
    /// Served from the prompt cache instead of the API.
    pub cached: bool,
    pub latency_ms: u64,
}

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
    /// Reads a job's `last_error`: our JSON record, or any other text as a plain message.
    pub fn from_last_error(text: &str) -> FailureRecord {
        serde_json::from_str(text).unwrap_or_else(|_| FailureRecord {
            code: "failed".into(),
            message: text.to_string(),
            status_code: None,
            request_id: None,
            body: None,
        })
    }

    /// JSON text for `last_error`.
    pub fn to_last_error(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.message.clone())
    }
}

/// JSON text as a value; text that is not JSON stays a string rather than being lost.
fn json_or_string(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The output line of a successful request.
pub fn success_line(job_id: u64, custom_id: &str, response: &ResponseRecord) -> Value {
    json!({
        "id": format!("batch_req_{job_id}"),
        "custom_id": custom_id,
        "response": {
            "status_code": response.status_code,
            "request_id": response.request_id,
            "body": json_or_string(&response.body),
        },
        "error": null,
    })
}

/// The output line of a failed request.
pub fn failure_line(job_id: Option<u64>, custom_id: &str, failure: &FailureRecord) -> Value {
    let id = job_id.map_or_else(
        || Value::Null,
        |id| Value::String(format!("batch_req_{id}")),
    );
    match failure.status_code {
        Some(status) => json!({
            "id": id,
            "custom_id": custom_id,
            "response": {
                "status_code": status,
                "request_id": failure.request_id,
                "body": failure.body.as_deref().map(json_or_string).unwrap_or_else(
                    || json!({"error": {"message": failure.message, "code": failure.code}})),
            },
            "error": null,
        }),
        None => json!({
            "id": id,
            "custom_id": custom_id,
            "response": null,
            "error": {"code": failure.code, "message": failure.message},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_line_has_exactly_openai_keys() {
        let line = success_line(
            7,
            "q1",
            &ResponseRecord {
                status_code: 200,
                request_id: Some("req-1".into()),
                body: r#"{"choices":[]}"#.into(),
                cached: true,
                latency_ms: 3,
            },
        );
        assert_eq!(
            line.to_string(),
            r#"{"id":"batch_req_7","custom_id":"q1","response":{"status_code":200,"request_id":"req-1","body":{"choices":[]}},"error":null}"#
        );
    }

    #[test]
    fn http_failures_keep_status_and_body_others_use_error() {
        let http = FailureRecord {
            code: "bad_request".into(),
            message: "bad".into(),
            status_code: Some(400),
            request_id: None,
            body: Some(r#"{"error":{"message":"bad"}}"#.into()),
        };
        let line = failure_line(Some(1), "a", &http);
        assert_eq!(line["response"]["status_code"], 400);
        assert_eq!(line["response"]["body"]["error"]["message"], "bad");
        assert!(line["error"].is_null());

        let timeout = FailureRecord::from_last_error("timed out");
        let line = failure_line(None, "b", &timeout);
        assert!(line["response"].is_null());
        assert_eq!(line["error"]["message"], "timed out");
        let round = FailureRecord::from_last_error(&http.to_last_error());
        assert_eq!(round, http);
    }
}
