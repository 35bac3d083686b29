//! Serde types of the OpenAI chat-completions wire format.
//!
//! Known fields are typed; everything else lands in `extra` and is written
//! back untouched, so a request body survives a round trip.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A chat-completions request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name; the client fills its default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Conversation so far.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Legacy output cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Output cap including reasoning tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// Stop string or list of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// `{"type":"json_object"}` and friends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Every other field, passed through as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// A string or an array of content parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    /// Other fields (`name`, `tool_calls`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A text message with the given role.
    pub fn new(role: &str, text: &str) -> Self {
        Message {
            role: role.to_owned(),
            content: Some(Value::String(text.to_owned())),
            extra: Map::new(),
        }
    }
}

/// A chat-completions response body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Completion id.
    #[serde(default)]
    pub id: Option<String>,
    /// Model that answered.
    #[serde(default)]
    pub model: Option<String>,
    /// Answers.
    pub choices: Vec<Choice>,
    /// Token accounting.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Other fields (`object`, `created`, `system_fingerprint`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatResponse {
    /// Text of the first choice, if any.
    pub fn content(&self) -> Option<&str> {
        self.choices.first()?.message.content.as_deref()
    }
}

/// One answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position among the choices.
    #[serde(default)]
    pub index: u32,
    /// The answer message.
    pub message: ResponseMessage,
    /// `stop`, `length`, `content_filter`, ...
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields (`logprobs`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The assistant's message in a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// Usually `assistant`.
    #[serde(default)]
    pub role: Option<String>,
    /// Answer text.
    #[serde(default)]
    pub content: Option<String>,
    /// Reasoning trace, for providers that return one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Other fields (`tool_calls`, `refusal`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Token accounting of a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens (including reasoning on most providers).
    #[serde(default)]
    pub completion_tokens: u64,
    /// Sum reported by the provider.
    #[serde(default)]
    pub total_tokens: u64,
    /// Breakdown, where `reasoning_tokens` lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Usage {
    /// Reasoning tokens, 0 when the provider does not report them.
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details
            .as_ref()
            .map_or(0, |d| d.reasoning_tokens)
    }

    /// Total tokens, summing the parts when the provider sent no total.
    pub fn total(&self) -> u64 {
        if self.total_tokens > 0 {
            self.total_tokens
        } else {
            self.prompt_tokens + self.completion_tokens
        }
    }
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Tokens spent reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GET /models` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// The models.
    pub data: Vec<ModelInfo>,
}

/// One entry of `GET /models`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model name to put in requests.
    pub id: String,
    /// Other fields (`owned_by`, `created`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Parsed `{"error": {...}}` body; tolerant of providers that send
/// `{"error": "text", "code": ...}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiErrorBody {
    /// `error.message`.
    pub message: Option<String>,
    /// `error.type`.
    pub error_type: Option<String>,
    /// `error.code`, numbers turned to text.
    pub code: Option<String>,
}

impl ApiErrorBody {
    /// Parses an error body; `None` when it is not JSON of a known shape.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let text = |v: Option<&Value>| match v? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        match v.get("error")? {
            Value::Object(e) => Some(ApiErrorBody {
                message: text(e.get("message")),
                error_type: text(e.get("type")),
                code: text(e.get("code")),
            }),
            Value::String(s) => Some(ApiErrorBody {
                message: Some(s.clone()),
                error_type: None,
                code: text(v.get("code")),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_keeps_unknown_fields_in_order() {
        let raw = r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"x"}],"reasoning_effort":"high","temperature":0.0,"zz":{"a":1}}"#;
        let req: ChatRequest = serde_json::from_str(raw).unwrap();
        assert_eq!(req.extra["reasoning_effort"], "high");
        assert_eq!(req.messages[0].extra["name"], "x");
        let back: Value = serde_json::to_value(&req).unwrap();
        let orig: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn response_fields() {
        let raw = r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"4","reasoning_content":"2+2"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,"completion_tokens_details":{"reasoning_tokens":4}}}"#;
        let r: ChatResponse = serde_json::from_str(raw).unwrap();
        assert_eq!(r.content(), Some("4"));
        assert_eq!(
            r.choices[0].message.reasoning_content.as_deref(),
            Some("2+2")
        );
        let u = r.usage.unwrap();
        assert_eq!((u.total(), u.reasoning_tokens()), (8, 4));
        assert_eq!(r.extra["object"], "chat.completion");
    }

    #[test]
    fn error_bodies() {
        let e = ApiErrorBody::parse(
            br#"{"error":{"message":"bad","type":"invalid_request_error","code":null}}"#,
        )
        .unwrap();
        assert_eq!(e.message.as_deref(), Some("bad"));
        assert_eq!(e.code, None);
        let e = ApiErrorBody::parse(br#"{"code":"Some code","error":"Incorrect key"}"#).unwrap();
        assert_eq!(e.message.as_deref(), Some("Incorrect key"));
        assert_eq!(e.code.as_deref(), Some("Some code"));
        assert!(ApiErrorBody::parse(b"<html>").is_none());
    }
}
