//! The other endpoints of an OpenAI batch file, answered in the shapes OpenAI's API
//! reference and its official SDK's types give them (`Response`, `CreateEmbeddingResponse`,
//! `Completion`, `ModerationCreateResponse`), with the same scripted and random faults as
//! `/chat/completions` and the same answer text ([`super::decide`]).

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use base64::Engine as _;
use bytes::Bytes;
use http::Response;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::fault::{self, SimBody};
use super::{decide, json_response, lock, random_fault, State};

/// An endpoint this module answers (the server's own view: it knows nothing of the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Responses,
    Embeddings,
    Completions,
    Moderations,
}

impl Endpoint {
    /// The endpoint of a path under the prefix (`/embeddings`).
    pub(super) fn of_path(path: &str) -> Option<Endpoint> {
        match path {
            "/responses" => Some(Endpoint::Responses),
            "/embeddings" => Some(Endpoint::Embeddings),
            "/completions" => Some(Endpoint::Completions),
            "/moderations" => Some(Endpoint::Moderations),
            _ => None,
        }
    }

    /// What OpenAI refuses a request without.
    fn required(self) -> &'static str {
        match self {
            Endpoint::Completions => "prompt",
            _ => "input",
        }
    }
}

/// The 13 moderation categories (with their input types) of OpenAI's current model.
const CATEGORIES: [(&str, &[&str]); 13] = [
    ("harassment", &["text"]),
    ("harassment/threatening", &["text"]),
    ("hate", &["text"]),
    ("hate/threatening", &["text"]),
    ("illicit", &["text"]),
    ("illicit/violent", &["text"]),
    ("self-harm", &["text", "image"]),
    ("self-harm/intent", &["text", "image"]),
    ("self-harm/instructions", &["text", "image"]),
    ("sexual", &["text", "image"]),
    ("sexual/minors", &["text"]),
    ("violence", &["text", "image"]),
    ("violence/graphic", &["text", "image"]),
];

/// Default embedding width when the request sets no `dimensions` (small, for tests).
const DIMENSIONS: usize = 8;

/// Answers a live request to `api` (not chat completions).
pub(super) async fn answer(
    state: &State,
    api: Endpoint,
    body: &[u8],
    n: u64,
) -> io::Result<Response<SimBody>> {
    state.live_other.fetch_add(1, Relaxed);
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            let msg = "request body must be a JSON object";
            return json_response(400, fault::error_body(400, None, msg));
        }
        Err(e) => {
            let msg = format!("request body is not valid JSON: {e}");
            return json_response(400, fault::error_body(400, None, &msg));
        }
    };
    if req.get(api.required()).is_none() {
        let field = api.required();
        let msg = format!("Missing required parameter: '{field}'.");
        return json_response(
            400,
            fault::error_body(400, Some("missing_required_parameter"), &msg),
        );
    }
    let scripted = lock(&state.faults).pop_front();
    let d = decide(state, &req);
    let fault = match (scripted, d.fault) {
        (Some(f), _) | (None, Some(f)) => f,
        (None, None) => random_fault(state),
    };
    let body = match api {
        Endpoint::Responses => response(n, &d.model, &d.content, &req),
        Endpoint::Embeddings => embeddings(&d.model, &req),
        Endpoint::Completions => completion(n, &d.model, &d.content, &req),
        Endpoint::Moderations => moderation(n, &req),
    };
    fault::render(fault, body).await
}

/// The texts of an `input` or `prompt`: a string or an array of strings (token arrays and
/// content parts count by their text).
fn texts(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("content")
                    .or_else(|| o.get("text"))
                    .map(|c| match c {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// About four characters a token, at least one.
fn tokens(texts: &[String]) -> u64 {
    texts.iter().map(|t| t.len() as u64 / 4 + 1).sum()
}

/// A Responses API object (`object: "response"`) with one output message.
fn response(n: u64, model: &str, content: &str, req: &Value) -> Bytes {
    let input = tokens(&texts(req.get("input")));
    let output = content.len() as u64 / 4 + 1;
    let v = json!({
        "id": format!("resp_sim{n}"),
        "object": "response",
        "created_at": 1_700_000_000,
        "status": "completed",
        "error": null,
        "incomplete_details": null,
        "instructions": req.get("instructions").cloned().unwrap_or(Value::Null),
        "max_output_tokens": req.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        "model": model,
        "output": [{
            "type": "message",
            "id": format!("msg_sim{n}"),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": content, "annotations": []}]
        }],
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "temperature": req.get("temperature").cloned().unwrap_or(json!(1.0)),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": req.get("top_p").cloned().unwrap_or(json!(1.0)),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output
        },
        "user": null,
        "metadata": {}
    });
    Bytes::from(v.to_string())
}

/// A deterministic unit vector of `dims` numbers for `text`.
fn vector(text: &str, dims: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dims);
    let mut block = 0u32;
    while out.len() < dims {
        let digest = Sha256::new()
            .chain_update(block.to_le_bytes())
            .chain_update(text.as_bytes())
            .finalize();
        for pair in digest.chunks(2) {
            if out.len() == dims {
                break;
            }
            let x = u16::from_le_bytes([pair[0], pair[1]]);
            out.push(f32::from(x) / f32::from(u16::MAX) * 2.0 - 1.0);
        }
        block += 1;
    }
    let norm = out
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    out.iter().map(|x| x / norm).collect()
}

/// A `CreateEmbeddingResponse`: one embedding per input, floats or base64 of little-endian
/// `f32`s as `encoding_format` asks.
fn embeddings(model: &str, req: &Value) -> Bytes {
    let inputs = texts(req.get("input"));
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(DIMENSIONS, |d| d.clamp(1, 4096) as usize);
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let used = tokens(&inputs);
    let v = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": used, "total_tokens": used}
    });
    Bytes::from(v.to_string())
}

/// A legacy `text_completion` with one choice per prompt.
fn completion(n: u64, model: &str, content: &str, req: &Value) -> Bytes {
    let prompts = texts(req.get("prompt"));
    let choices: Vec<Value> = (0..prompts.len().max(1))
        .map(|i| json!({"text": content, "index": i, "logprobs": null, "finish_reason": "stop"}))
        .collect();
    let prompt_tokens = tokens(&prompts);
    let completion_tokens = (content.len() as u64 / 4 + 1) * choices.len() as u64;
    let v = json!({
        "id": format!("cmpl-sim{n}"),
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    });
    Bytes::from(v.to_string())
}

/// A `ModerationCreateResponse`: one result per input; a text containing "violent" is
/// flagged for violence, so tests see both outcomes.
fn moderation(n: u64, req: &Value) -> Bytes {
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("omni-moderation-latest");
    let results: Vec<Value> = texts(req.get("input"))
        .iter()
        .map(|text| {
            let violent = text.to_lowercase().contains("violent");
            let mut categories = serde_json::Map::new();
            let mut scores = serde_json::Map::new();
            let mut types = serde_json::Map::new();
            for (name, applied) in CATEGORIES {
                let hit = violent && name == "violence";
                categories.insert(name.into(), json!(hit));
                scores.insert(name.into(), json!(if hit { 0.97 } else { 0.0001 }));
                types.insert(name.into(), json!(applied[..1]));
            }
            json!({
                "flagged": violent,
                "categories": categories,
                "category_scores": scores,
                "category_applied_input_types": types
            })
        })
        .collect();
    let v = json!({"id": format!("modr-sim{n}"), "model": model, "results": results});
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_unit_length_and_stable() {
        let a = vector("hello", 8);
        assert_eq!(a, vector("hello", 8));
        assert_ne!(a, vector("hellp", 8));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(vector("x", 40).len(), 40);
    }

    #[test]
    fn shapes_carry_the_fields_the_sdk_requires() {
        let e: Value = serde_json::from_slice(&embeddings(
            "m",
            &json!({"input": ["a", "b"], "dimensions": 4, "encoding_format": "base64"}),
        ))
        .unwrap();
        assert_eq!(e["data"].as_array().unwrap().len(), 2);
        let b64 = e["data"][1]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(bytes.len(), 16);
        let m: Value =
            serde_json::from_slice(&moderation(1, &json!({"input": "a violent text"}))).unwrap();
        assert_eq!(m["results"][0]["flagged"], true);
        assert_eq!(m["results"][0]["categories"].as_object().unwrap().len(), 13);
        let c: Value =
            serde_json::from_slice(&completion(1, "m", "hi", &json!({"prompt": ["a", "b"]})))
                .unwrap();
        assert_eq!(c["choices"].as_array().unwrap().len(), 2);
        let r: Value =
            serde_json::from_slice(&response(1, "m", "hi", &json!({"input": "q"}))).unwrap();
        assert_eq!(r["output"][0]["content"][0]["text"], "hi");
        // "q" is one token in, "hi" one token out.
        assert_eq!(r["usage"]["total_tokens"], 2);
    }
}
