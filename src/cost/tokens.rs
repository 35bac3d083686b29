//! Token estimates of a request before it is sent: OpenAI's own encodings (tiktoken's
//! `o200k_base`, `cl100k_base`, embedded in the binary) for OpenAI models; for other
//! families (Grok, Claude), whose tokenizers are not published, the `o200k_base` count
//! raised by a quarter, an approximation that errs high (docs/cost.md).

use serde_json::Value;
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// Framing tokens of each chat message, and of the reply's start (OpenAI's cookbook).
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;

/// How a count was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The model's own encoding.
    Exact,
    /// `o200k_base` plus a quarter: the model's tokenizer is not public.
    Approximate,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Exact => "exact",
            Method::Approximate => "approximate",
        }
    }
}

/// The prompt tokens of a chat-completions request body, and how they were counted.
pub fn prompt_tokens(body: &Value) -> (u64, Method) {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    let (bpe, method) = encoding_for(model);
    let count = |text: &str| bpe.encode_with_special_tokens(text).len() as u64;
    let mut n = REPLY_PRIMING;
    for message in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        n += PER_MESSAGE;
        if let Some(role) = message.get("role").and_then(Value::as_str) {
            n += count(role);
        }
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            n += count(name) + 1;
        }
        n += match message.get("content") {
            Some(Value::String(text)) => count(text),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|part| match part.get("text").and_then(Value::as_str) {
                    Some(text) => count(text),
                    // Images and other parts: their JSON, a rough stand-in.
                    None => count(&part.to_string()),
                })
                .sum(),
            Some(Value::Null) | None => 0,
            Some(other) => count(&other.to_string()),
        };
    }
    // The other endpoints' inputs: a string, or an array of strings (or of items).
    for key in ["input", "prompt", "instructions"] {
        n += match body.get(key) {
            Some(Value::String(text)) => count(text),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => count(text),
                    other => count(&other.to_string()),
                })
                .sum(),
            Some(Value::Null) | None => 0,
            Some(other) => count(&other.to_string()),
        };
    }
    // Tools and response formats are sent as part of the prompt too.
    for key in ["tools", "response_format"] {
        if let Some(v) = body.get(key) {
            n += count(&v.to_string());
        }
    }
    match method {
        Method::Exact => (n, method),
        Method::Approximate => (n + n.div_ceil(4), method),
    }
}

/// The most output tokens a request asks for (`max_completion_tokens`, else `max_tokens`).
pub fn max_output_tokens(body: &Value) -> Option<u64> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
}

/// The model's encoding when tiktoken knows it, else `o200k_base` as the approximation.
fn encoding_for(model: &str) -> (&'static CoreBPE, Method) {
    match get_tokenizer(model) {
        Some(Tokenizer::Cl100kBase) => (tiktoken_rs::cl100k_base_singleton(), Method::Exact),
        Some(Tokenizer::O200kBase) => (tiktoken_rs::o200k_base_singleton(), Method::Exact),
        Some(Tokenizer::O200kHarmony) => (tiktoken_rs::o200k_harmony_singleton(), Method::Exact),
        _ => (tiktoken_rs::o200k_base_singleton(), Method::Approximate),
    }
}

/// Loads the encodings (about a second of CPU the first time), for a blocking thread before
/// estimates are needed on the async runtime.
pub fn warm_up() {
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_models_count_exactly_and_others_approximately() {
        let body = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hello world"}]});
        // "user" and "hello world" are one and two o200k tokens: 3 + 1 + 2 + 3.
        assert_eq!(prompt_tokens(&body("gpt-4o-mini")), (9, Method::Exact));
        assert_eq!(prompt_tokens(&body("grok-4")), (9 + 3, Method::Approximate));
        assert_eq!(max_output_tokens(&json!({"max_tokens": 7})), Some(7));
        assert_eq!(
            max_output_tokens(&json!({"max_tokens": 7, "max_completion_tokens": 9})),
            Some(9)
        );
        assert_eq!(max_output_tokens(&json!({})), None);
    }
}
