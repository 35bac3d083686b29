//! The service's request parsers and its error answer: pure functions over bytes and
//! strings, so a fuzz target (`reasonq::testing::fuzz::serve_request`) can drive them.

use serde_json::{json, Map, Value};

use crate::llm::Api;

/// The only completion window OpenAI offers.
pub const COMPLETION_WINDOW: &str = "24h";
/// OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512.
const METADATA_PAIRS: usize = 16;
const METADATA_KEY: usize = 64;
const METADATA_VALUE: usize = 512;
/// Default and largest page of a list.
const LIMIT_DEFAULT: usize = 20;
const LIMIT_MAX: usize = 100;

/// A refused request, answered with OpenAI's error body
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// Another status, type and code.
    pub fn new(status: u16, kind: &'static str, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: Some(code.to_string()),
        }
    }

    pub fn with_code(mut self, code: &str) -> ApiError {
        self.code = Some(code.to_string());
        self
    }

    /// 404 for an id that names nothing.
    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(
            404,
            "invalid_request_error",
            "not_found",
            format!("No {what} found with id '{id}'."),
        )
    }

    /// 413 for a body over its limit.
    pub fn too_large(limit: u64) -> ApiError {
        ApiError::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// What `/metrics` counts it under.
    pub fn metric_code(&self) -> String {
        self.code.clone().unwrap_or_else(|| self.status.to_string())
    }
}

/// `POST /v1/batches`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateBatch {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    /// Up to 16 string pairs, kept as given.
    pub metadata: Option<Map<String, Value>>,
}

/// A JSON object body.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        )),
        Err(e) => Err(ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )),
    }
}

/// Parses and checks a batch creation; unknown fields are ignored.
pub fn create_batch(body: &[u8]) -> Result<CreateBatch, ApiError> {
    let map = json_object(body)?;
    let string = |name: &str| -> Result<String, ApiError> {
        match map.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(ApiError::invalid(
                format!("'{name}' must be a non-empty string."),
                Some(name),
            )),
            None => Err(ApiError::invalid(
                format!("Missing required parameter: '{name}'."),
                Some(name),
            )),
        }
    };
    let input_file_id = string("input_file_id")?;
    let endpoint = string("endpoint")?;
    if Api::from_url(&endpoint).is_none() {
        let served: Vec<&str> = Api::ALL.iter().map(|a| a.url()).collect();
        return Err(ApiError::invalid(
            format!(
                "Unsupported endpoint '{endpoint}': served are {}.",
                served.join(", ")
            ),
            Some("endpoint"),
        )
        .with_code("invalid_value"));
    }
    let completion_window = string("completion_window")?;
    if completion_window != COMPLETION_WINDOW {
        return Err(ApiError::invalid(
            format!("Unsupported completion_window '{completion_window}': only '24h'."),
            Some("completion_window"),
        )
        .with_code("invalid_value"));
    }
    let metadata = match map.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            let bad = m.len() > METADATA_PAIRS
                || m.iter().any(|(k, v)| {
                    k.chars().count() > METADATA_KEY
                        || v.as_str()
                            .is_none_or(|v| v.chars().count() > METADATA_VALUE)
                });
            if bad {
                return Err(ApiError::invalid(
                    "'metadata' takes up to 16 string values, keys up to 64 characters and \
                     values up to 512.",
                    Some("metadata"),
                ));
            }
            Some(m.clone())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "'metadata' must be an object.",
                Some("metadata"),
            ))
        }
    };
    Ok(CreateBatch {
        input_file_id,
        endpoint,
        completion_window,
        metadata,
    })
}

/// `?after=ID&limit=N` of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: usize,
    /// `purpose=` of `GET /v1/files`.
    pub purpose: Option<String>,
}

/// Parses a query string; unknown keys are ignored.
pub fn list_query(query: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut out = ListQuery {
        after: None,
        limit: LIMIT_DEFAULT,
        purpose: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| ApiError::invalid(format!("Bad encoding of '{key}'."), Some(key)))?;
        match key {
            "after" if !value.is_empty() => out.after = Some(value),
            "purpose" if !value.is_empty() => out.purpose = Some(value),
            "limit" => {
                out.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=LIMIT_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            format!("'limit' must be an integer from 1 to {LIMIT_MAX}."),
                            Some("limit"),
                        )
                    })?;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The pairs of a query string (or a form body), decoded, in order; `None` when one is
/// badly encoded.
pub fn query_pairs(query: Option<&str>) -> Option<Vec<(String, String)>> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

/// `%XX` and `+` decoding of a query value; `None` when it is not UTF-8 or a `%` is cut.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A chat completion request to pass on: a JSON object, not streamed.
pub fn chat_request(body: &[u8]) -> Result<Value, ApiError> {
    let map = json_object(body)?;
    if map.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid(
            "Streaming is not supported by this server; send 'stream': false.",
            Some("stream"),
        ));
    }
    if !map.get("messages").is_some_and(Value::is_array) {
        return Err(ApiError::invalid(
            "Missing required parameter: 'messages' (an array).",
            Some("messages"),
        ));
    }
    Ok(Value::Object(map))
}

/// Whether `id` can be one of our ids (letters, digits, `_`, `-`): anything else names
/// nothing, and never reaches a path.
pub fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The multipart boundary of a `Content-Type` header.
pub fn boundary(content_type: &str) -> Result<String, ApiError> {
    multer::parse_boundary(content_type).map_err(|_| {
        ApiError::invalid("Expected a multipart/form-data body with a boundary.", None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_batch_checks_fields() {
        let ok = br#"{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"a":"b"}}"#;
        assert_eq!(
            create_batch(ok).map(|c| c.input_file_id),
            Ok("file-1".into())
        );
        let embeddings =
            br#"{"input_file_id":"file-1","endpoint":"/v1/embeddings","completion_window":"24h"}"#;
        assert!(create_batch(embeddings).is_ok());
        let wrong =
            br#"{"input_file_id":"file-1","endpoint":"/v1/images/edits","completion_window":"24h"}"#;
        assert_eq!(
            create_batch(wrong).map_err(|e| e.param),
            Err(Some("endpoint".into()))
        );
        assert_eq!(create_batch(b"{").map_err(|e| e.status), Err(400));
        assert!(create_batch(b"[]").is_err());
    }

    #[test]
    fn list_query_bounds_the_limit() {
        assert_eq!(list_query(None).map(|q| q.limit), Ok(20));
        let q = list_query(Some("after=batch_1&limit=2")).ok();
        assert_eq!(q.and_then(|q| q.after), Some("batch_1".to_string()));
        assert!(list_query(Some("limit=0")).is_err());
        assert!(list_query(Some("limit=101")).is_err());
        assert!(list_query(Some("after=%zz")).is_err());
    }
}
