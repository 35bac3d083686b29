//! Structured outputs, as a provider gives them: a request with `response_format`
//! `json_schema` is answered with JSON that matches the schema, `json_object` with a JSON
//! object (OpenAI's structured outputs; the shape, not the model's judgement).

use serde_json::{json, Map, Value};

/// How deep an example goes into nested schemas (a recursive `$ref` must end).
const MAX_DEPTH: usize = 8;

/// The reply text for `req`'s `response_format`, if it asks for JSON; `text` is what a
/// plain reply would have said (put in the first string field).
pub(super) fn reply(req: &Value, text: &str) -> Option<String> {
    let format = req.get("response_format")?;
    match format.get("type").and_then(Value::as_str)? {
        "json_object" => Some(json!({ "answer": text }).to_string()),
        "json_schema" => {
            let schema = format.get("json_schema")?.get("schema");
            let mut said = Some(text);
            let value = match schema {
                Some(schema) => example(schema, schema, &mut said, 0),
                None => json!({ "answer": text }),
            };
            Some(value.to_string())
        }
        _ => None,
    }
}

/// A value that matches `schema` (the common keywords: type, enum, const, properties,
/// required, items, minItems, anyOf/oneOf/allOf, local `$ref`s).
fn example(schema: &Value, root: &Value, said: &mut Option<&str>, depth: usize) -> Value {
    let Value::Object(s) = schema else {
        return Value::Null;
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(target) = s.get("$ref").and_then(Value::as_str) {
        let pointer = target.strip_prefix('#').unwrap_or(target);
        return match root.pointer(pointer) {
            Some(found) => example(found, root, said, depth + 1),
            None => Value::Null,
        };
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = s.get(key).and_then(Value::as_array).and_then(|a| a.first()) {
            return example(first, root, said, depth + 1);
        }
    }
    let kind = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // A list of types: the first that is not null.
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ => "string",
    };
    match kind {
        "object" => {
            let mut out = Map::new();
            if let Some(Value::Object(props)) = s.get("properties") {
                for (name, sub) in props {
                    out.insert(name.clone(), example(sub, root, said, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = s
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .min(8);
            let item = s.get("items").cloned().unwrap_or(json!({}));
            (0..n)
                .map(|_| example(&item, root, said, depth + 1))
                .collect()
        }
        "integer" => json!(s.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(s.get("minimum").and_then(Value::as_f64).unwrap_or(1.5)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => {
            let text = said.take().unwrap_or("sim");
            let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0);
            let mut text = text.to_string();
            while (text.chars().count() as u64) < min {
                text.push('.');
            }
            json!(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_get_matching_examples() {
        let req = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a",
            "schema": {"type": "object", "properties": {
                "answer": {"type": "string"},
                "score": {"type": "integer", "minimum": 3},
                "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 2},
                "kind": {"$ref": "#/$defs/kind"}},
              "required": ["answer", "score", "tags", "kind"], "additionalProperties": false,
              "$defs": {"kind": {"type": ["string", "null"], "minLength": 4}}}}}});
        let out: Value = serde_json::from_str(&reply(&req, "hi").unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"answer": "hi", "score": 3, "tags": ["x", "x"], "kind": "sim."})
        );
        let object = json!({"response_format": {"type": "json_object"}});
        assert_eq!(reply(&object, "hi").unwrap(), r#"{"answer":"hi"}"#);
        assert_eq!(
            reply(&json!({"response_format": {"type": "text"}}), "hi"),
            None
        );
        assert_eq!(reply(&json!({}), "hi"), None);
    }
}
