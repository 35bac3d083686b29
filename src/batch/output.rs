//! Result lines in OpenAI's batch output format, so existing parsers of OpenAI and vLLM batch
//! output read them unchanged:
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
//!
//! HTTP failures keep their status and the provider's error body in `response`; failures
//! without an HTTP answer (timeouts, resets, retries exhausted) have `response: null` and
//! `error: {"code", "message"}`. Our own details (cache, attempts, latency) are not here: they
//! are in `reasonq results --json`.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::chat::ResponseRecord;
use crate::runner::FailureRecord;

/// A body as it goes into an output line: the server's JSON copied through unparsed (no
/// value tree per line, so exporting 100k lines stays small), or text that was not JSON
/// kept as a string rather than lost.
enum Body<'a> {
    Raw(Box<RawValue>),
    Text(&'a str),
}

impl<'a> Body<'a> {
    fn of(text: &'a str) -> Body<'a> {
        RawValue::from_string(text.to_string()).map_or(Body::Text(text), Body::Raw)
    }
}

impl Serialize for Body<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Body::Raw(raw) => raw.serialize(s),
            Body::Text(text) => text.serialize(s),
        }
    }
}

/// One output line; field order is the format's key order.
#[derive(Serialize)]
struct Line<'a> {
    id: Option<String>,
    custom_id: &'a str,
    response: Option<Response<'a>>,
    error: Option<ErrorField<'a>>,
}

#[derive(Serialize)]
struct Response<'a> {
    status_code: u16,
    request_id: Option<&'a str>,
    body: Body<'a>,
}

#[derive(Serialize)]
struct ErrorField<'a> {
    code: &'a str,
    message: &'a str,
}

fn render(line: &Line<'_>) -> String {
    // Serializing plain structs and validated raw JSON cannot fail.
    serde_json::to_string(line).unwrap_or_default()
}

/// The output line of a successful request.
pub fn success_line(job_id: u64, custom_id: &str, response: &ResponseRecord) -> String {
    render(&Line {
        id: Some(format!("batch_req_{job_id}")),
        custom_id,
        response: Some(Response {
            status_code: response.status_code,
            request_id: response.request_id.as_deref(),
            body: Body::of(&response.body),
        }),
        error: None,
    })
}

/// The output line of a failed request.
pub fn failure_line(job_id: Option<u64>, custom_id: &str, failure: &FailureRecord) -> String {
    let id = job_id.map(|id| format!("batch_req_{id}"));
    match failure.status_code {
        Some(status) => {
            let fallback;
            let body = match failure.body.as_deref() {
                Some(text) => Body::of(text),
                None => {
                    fallback = serde_json::json!({
                        "error": {"message": failure.message, "code": failure.code}
                    })
                    .to_string();
                    Body::of(&fallback)
                }
            };
            render(&Line {
                id,
                custom_id,
                response: Some(Response {
                    status_code: status,
                    request_id: failure.request_id.as_deref(),
                    body,
                }),
                error: None,
            })
        }
        None => render(&Line {
            id,
            custom_id,
            response: None,
            error: Some(ErrorField {
                code: &failure.code,
                message: &failure.message,
            }),
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
                provider_batch: None,
                cost: None,
                cache_tier: None,
            },
        );
        assert_eq!(
            line,
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
        let line: serde_json::Value =
            serde_json::from_str(&failure_line(Some(1), "a", &http)).unwrap();
        assert_eq!(line["response"]["status_code"], 400);
        assert_eq!(line["response"]["body"]["error"]["message"], "bad");
        assert!(line["error"].is_null());

        let timeout = FailureRecord::from_last_error("timed out");
        let line: serde_json::Value =
            serde_json::from_str(&failure_line(None, "b", &timeout)).unwrap();
        assert!(line["response"].is_null());
        assert_eq!(line["error"]["message"], "timed out");
        let round = FailureRecord::from_last_error(&http.to_last_error());
        assert_eq!(round, http);
    }
}
