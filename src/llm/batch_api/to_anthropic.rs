//! A chat-completions request body → Anthropic Messages `params` (the table is in the module
//! doc of `batch_api`). Nothing is dropped silently: a field without an equivalent is an
//! error naming it, so a batch never runs with settings other than the ones asked for.

use serde_json::{Map, Value};

/// `max_tokens` when the body sets neither `max_tokens` nor `max_completion_tokens`:
/// Anthropic requires one, OpenAI has no default cap.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The Messages `params` for `body`; the error names the field.
pub fn params(body: &[u8]) -> Result<Map<String, Value>, String> {
    let body: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a JSON object: {e}"))?;
    let mut out = Map::new();
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut max_tokens: Option<u64> = None;
    let mut max_completion_tokens: Option<u64> = None;
    for (field, value) in &body {
        if value.is_null() {
            continue;
        }
        match field.as_str() {
            "model" => {
                let m = value.as_str().ok_or("field `model` must be a string")?;
                out.insert("model".into(), Value::String(m.to_owned()));
            }
            "messages" => {
                let list = value
                    .as_array()
                    .ok_or("field `messages` must be an array")?;
                for (i, m) in list.iter().enumerate() {
                    message(i, m, &mut system, &mut messages)?;
                }
            }
            "max_tokens" => max_tokens = Some(count(field, value)?),
            "max_completion_tokens" => max_completion_tokens = Some(count(field, value)?),
            "temperature" => {
                let t = value
                    .as_f64()
                    .ok_or("field `temperature` must be a number")?;
                if !(0.0..=1.0).contains(&t) {
                    return Err(format!(
                        "field `temperature` is {t}: Anthropic accepts 0 to 1"
                    ));
                }
                out.insert("temperature".into(), value.clone());
            }
            "top_p" => {
                value.as_f64().ok_or("field `top_p` must be a number")?;
                out.insert("top_p".into(), value.clone());
            }
            "stop" => {
                let stops: Vec<Value> = match value {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
                    _ => return Err("field `stop` must be a string or a list of strings".into()),
                };
                if !stops.is_empty() {
                    out.insert("stop_sequences".into(), Value::Array(stops));
                }
            }
            "user" => {
                let u = value.as_str().ok_or("field `user` must be a string")?;
                out.insert("metadata".into(), serde_json::json!({ "user_id": u }));
            }
            "n" => {
                if value.as_u64() != Some(1) {
                    return Err(format!(
                        "field `n` is {value}: Anthropic returns one choice per request"
                    ));
                }
            }
            "stream" => {
                if value.as_bool() != Some(false) {
                    return Err("field `stream` must be false in a batch".into());
                }
            }
            other => {
                return Err(format!(
                    "field `{other}` has no Anthropic Messages equivalent"
                ))
            }
        }
    }
    if !out.contains_key("model") {
        return Err("field `model` is missing".into());
    }
    if messages.is_empty() {
        return Err("field `messages` holds no user or assistant message".into());
    }
    let max = match (max_completion_tokens, max_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "fields `max_completion_tokens` ({a}) and `max_tokens` ({b}) disagree"
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    out.insert("max_tokens".into(), Value::from(max));
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    Ok(out)
}

fn count(field: &str, v: &Value) -> Result<u64, String> {
    v.as_u64()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("field `{field}` must be a positive integer"))
}

/// One chat message: system text collected, user/assistant turns translated.
fn message(
    i: usize,
    m: &Value,
    system: &mut Vec<String>,
    messages: &mut Vec<Value>,
) -> Result<(), String> {
    let m = m
        .as_object()
        .ok_or_else(|| format!("messages[{i}] must be an object"))?;
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("messages[{i}].role is missing"))?;
    for (field, value) in m {
        if !matches!(field.as_str(), "role" | "content") && !value.is_null() {
            return Err(format!(
                "messages[{i}].{field} has no Anthropic Messages equivalent"
            ));
        }
    }
    let content = m.get("content").filter(|c| !c.is_null());
    match role {
        "system" | "developer" => {
            let content = content.ok_or_else(|| format!("messages[{i}].content is missing"))?;
            system.push(text_of(i, content)?);
        }
        "user" | "assistant" => {
            let content = content.ok_or_else(|| format!("messages[{i}].content is missing"))?;
            let content = match content {
                Value::String(s) => Value::String(s.clone()),
                Value::Array(parts) => Value::Array(
                    parts
                        .iter()
                        .enumerate()
                        .map(|(j, p)| {
                            let text = part_text(i, j, p)?;
                            Ok(serde_json::json!({ "type": "text", "text": text }))
                        })
                        .collect::<Result<_, String>>()?,
                ),
                _ => {
                    return Err(format!(
                        "messages[{i}].content must be a string or a list of parts"
                    ))
                }
            };
            messages.push(serde_json::json!({ "role": role, "content": content }));
        }
        other => {
            return Err(format!(
                "messages[{i}].role {other:?} has no Anthropic Messages equivalent"
            ))
        }
    }
    Ok(())
}

/// The text of a system message: its string, or its text parts joined by newlines.
fn text_of(i: usize, content: &Value) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => Ok(parts
            .iter()
            .enumerate()
            .map(|(j, p)| part_text(i, j, p))
            .collect::<Result<Vec<_>, _>>()?
            .join("\n")),
        _ => Err(format!(
            "messages[{i}].content must be a string or a list of parts"
        )),
    }
}

fn part_text(i: usize, j: usize, p: &Value) -> Result<String, String> {
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "text" {
        return Err(format!(
            "messages[{i}].content[{j}].type {kind:?} is not translated (text parts only)"
        ));
    }
    p.get("text")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("messages[{i}].content[{j}].text is missing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tr(v: Value) -> Result<Value, String> {
        params(v.to_string().as_bytes()).map(Value::Object)
    }

    #[test]
    fn the_docs_example_request() {
        // The chat-completions example of the OpenAI reference, with every translated field.
        let got = tr(json!({
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "developer", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "No lists."}]},
                {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
                {"role": "user", "content": "What is 2+2?"}
            ],
            "max_completion_tokens": 64,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "\n\nHuman:",
            "user": "u-42",
            "n": 1,
            "stream": false,
            "seed": null
        }))
        .unwrap();
        assert_eq!(
            got,
            json!({
                "model": "claude-sonnet-4-5",
                "temperature": 0.2,
                "top_p": 0.9,
                "stop_sequences": ["\n\nHuman:"],
                "metadata": {"user_id": "u-42"},
                "max_tokens": 64,
                "system": "You are a helpful assistant.\n\nBe brief.\nNo lists.",
                "messages": [
                    {"role": "user", "content": "Hello!"},
                    {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
                    {"role": "user", "content": "What is 2+2?"}
                ]
            })
        );
    }

    #[test]
    fn max_tokens_default_and_sources() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        assert_eq!(tr(base.clone()).unwrap()["max_tokens"], DEFAULT_MAX_TOKENS);
        let mut b = base.clone();
        b["max_tokens"] = json!(10);
        assert_eq!(tr(b.clone()).unwrap()["max_tokens"], 10);
        b["max_completion_tokens"] = json!(10);
        assert_eq!(tr(b.clone()).unwrap()["max_tokens"], 10);
        b["max_completion_tokens"] = json!(11);
        assert!(tr(b).unwrap_err().contains("disagree"));
        let mut s = base;
        s["stop"] = json!(["a", "b"]);
        assert_eq!(tr(s).unwrap()["stop_sequences"], json!(["a", "b"]));
    }

    #[test]
    fn refusals_name_the_field() {
        let ok = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            tr(b).unwrap_err()
        };
        assert_eq!(
            with("seed", json!(7)),
            "field `seed` has no Anthropic Messages equivalent"
        );
        assert!(
            with("response_format", json!({"type": "json_object"})).contains("`response_format`")
        );
        assert!(with("tools", json!([])).contains("`tools`"));
        assert!(with("n", json!(2)).contains("`n` is 2"));
        assert!(with("stream", json!(true)).contains("`stream`"));
        assert!(with("temperature", json!(1.5)).contains("0 to 1"));
        let msg = |m: Value| tr(json!({"model": "m", "messages": [m]})).unwrap_err();
        assert_eq!(
            msg(
                json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})
            ),
            "messages[0].content[0].type \"image_url\" is not translated (text parts only)"
        );
        assert!(
            msg(json!({"role": "tool", "content": "x", "tool_call_id": "t"}))
                .contains("tool_call_id")
        );
        assert!(msg(json!({"role": "tool", "content": "x"})).contains("role \"tool\""));
        assert!(msg(json!({"role": "user", "content": "x", "name": "bob"}))
            .contains("messages[0].name"));
        assert!(msg(json!({"role": "system", "content": "only"})).contains("no user or assistant"));
        assert!(tr(json!({"messages": [{"role": "user", "content": "x"}]}))
            .unwrap_err()
            .contains("`model`"));
    }
}
