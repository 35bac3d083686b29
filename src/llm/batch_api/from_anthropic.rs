//! Anthropic results → OpenAI shapes: a Messages `message` → a `chat.completion`, an
//! errored result → an OpenAI error body with the error type's HTTP status (the tables are
//! in the module doc of `batch_api`).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::Outcome;

/// The `chat.completion` for `message`, `created` Unix seconds.
pub(super) fn completion(message: &Value, created: u64) -> Result<Value, String> {
    let m = message.as_object().ok_or("message is not an object")?;
    let id = m
        .get("id")
        .and_then(Value::as_str)
        .ok_or("message.id is missing")?;
    let model = m.get("model").cloned().unwrap_or(Value::Null);
    let blocks = m
        .get("content")
        .and_then(Value::as_array)
        .ok_or("message.content is not a list")?;
    let mut text = String::new();
    let mut has_text = false;
    let mut thinking = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                has_text = true;
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some("thinking") => {
                thinking.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""));
            }
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": b.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": input.to_string(),
                    }
                }));
            }
            // Blocks of tools the request translation never asks for.
            _ => {}
        }
    }
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    msg.insert(
        "content".into(),
        if has_text {
            Value::String(text)
        } else {
            Value::Null
        },
    );
    if !thinking.is_empty() {
        msg.insert("reasoning_content".into(), Value::String(thinking));
    }
    if !tool_calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let finish = match m.get("stop_reason").and_then(Value::as_str) {
        None => Value::Null,
        Some("end_turn" | "stop_sequence" | "pause_turn") => json!("stop"),
        Some("max_tokens") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(other) => json!(other),
    };
    let u = m.get("usage");
    let n = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + n("cache_creation_input_tokens") + cached;
    let output = n("output_tokens");
    Ok(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": Value::Object(msg),
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": { "cached_tokens": cached },
        }
    }))
}

/// The outcome of an errored result: `error` is `{"type": "error", "error": {type, message}}`
/// (the API reference) or `{type, message}` (the guide's example); both are read.
pub(super) fn errored(error: Option<&Value>) -> Outcome {
    let inner = error.map(|e| match e.get("error") {
        Some(i) if i.is_object() => i,
        _ => e,
    });
    let kind = inner
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("error")
        .to_owned();
    let message = inner
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let status = match kind.as_str() {
        "invalid_request_error" | "invalid_request" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => {
            return Outcome::Failed {
                code: kind,
                message,
            }
        }
    };
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": null }
    });
    Outcome::HttpError {
        status,
        body: Bytes::from(body.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_example_message() {
        // The succeeded result of the batch-processing guide.
        let message = json!({
            "id": "msg_014VwiXbi91y3JMjcpyGBHX5",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-sonnet-20240620",
            "content": [{"type": "text", "text": "Hello again! It's nice to see you. How can I assist you today?"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": 36}
        });
        assert_eq!(
            completion(&message, 1_724_179_044).unwrap(),
            json!({
                "id": "msg_014VwiXbi91y3JMjcpyGBHX5",
                "object": "chat.completion",
                "created": 1_724_179_044,
                "model": "claude-3-5-sonnet-20240620",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello again! It's nice to see you. How can I assist you today?"},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 11, "completion_tokens": 36, "total_tokens": 47, "prompt_tokens_details": {"cached_tokens": 0}}
            })
        );
    }

    #[test]
    fn tools_thinking_caches_and_stop_reasons() {
        let message = json!({
            "id": "msg_1", "model": "m",
            "content": [
                {"type": "thinking", "thinking": "2+2", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": 2}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 900, "output_tokens": 7}
        });
        let c = completion(&message, 0).unwrap();
        let m = &c["choices"][0]["message"];
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["reasoning_content"], "2+2");
        assert_eq!(
            m["tool_calls"],
            json!([{"id": "toolu_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2,\"b\":2}"}}])
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 1005, "completion_tokens": 7, "total_tokens": 1012, "prompt_tokens_details": {"cached_tokens": 900}})
        );
        for (reason, want) in [
            ("max_tokens", "length"),
            ("stop_sequence", "stop"),
            ("refusal", "content_filter"),
        ] {
            let mut m = message.clone();
            m["stop_reason"] = json!(reason);
            assert_eq!(
                completion(&m, 0).unwrap()["choices"][0]["finish_reason"],
                want
            );
        }
        assert!(completion(&json!({"id": "x"}), 0).is_err());
    }

    #[test]
    fn errored_results_in_both_documented_shapes() {
        let reference = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}});
        let guide =
            json!({"type": "invalid_request_error", "message": "max_tokens: Field required"});
        for e in [reference, guide] {
            match errored(Some(&e)) {
                Outcome::HttpError { status, body } => {
                    assert_eq!(status, 400);
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["error"]["type"], "invalid_request_error");
                    assert_eq!(v["error"]["message"], "max_tokens: Field required");
                }
                other => panic!("{other:?}"),
            }
        }
        let over = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert!(matches!(
            errored(Some(&over)),
            Outcome::HttpError { status: 529, .. }
        ));
        assert_eq!(
            errored(Some(&json!({"type": "novel_error", "message": "m"}))),
            Outcome::Failed {
                code: "novel_error".into(),
                message: "m".into()
            }
        );
    }
}
