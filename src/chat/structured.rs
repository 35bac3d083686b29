//! Replies checked against the structure their request asked for: a chat line's
//! `response_format` (`json_schema` or `json_object`) and a batch's `--validate` schema.
//!
//! Schemas are compiled by the `jsonschema` crate (without remote `$ref`s: nothing is
//! fetched), once per distinct schema text ([`compiled`]). A reply that does not match is
//! not an answer: the line is retried within its attempts and fails with [`INVALID`],
//! naming the first violation, when they run out. A cached reply that does not match is
//! never used.

use std::sync::{Arc, LazyLock};

use jsonschema::Validator;
use redb::ReadableTable;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::llm::ChatResponse;
use crate::store::{tables, Store};

/// The error code of a reply that does not match what was asked for.
pub const INVALID: &str = "invalid_structured_output";

/// Violation messages are cut here: a reply can be large, the error names where it breaks.
const MAX_MESSAGE: usize = 400;

/// Compiled schemas by the SHA-256 of their text: a batch's lines share a few schemas.
static COMPILED: LazyLock<quick_cache::sync::Cache<[u8; 32], Arc<Validator>>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(256));

/// What a request's `response_format` asks the reply to be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Asked<'a> {
    /// Text (no `response_format`, or `{"type": "text"}`).
    Text,
    /// Any JSON object (`json_object`).
    JsonObject,
    /// JSON matching this schema (`json_schema`; no `schema` given: any JSON).
    Schema(Option<&'a Value>),
}

/// Reads a request body's `response_format`. The error is (field under the body, message).
pub fn asked(response_format: Option<&Value>) -> std::result::Result<Asked<'_>, (String, String)> {
    let format = match response_format {
        None | Some(Value::Null) => return Ok(Asked::Text),
        Some(Value::Object(format)) => format,
        Some(_) => return Err(("response_format".into(), "must be an object".into())),
    };
    let bad = |field: &str, message: &str| Err((format!("response_format{field}"), message.into()));
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Asked::Text),
        Some("json_object") => Ok(Asked::JsonObject),
        Some("json_schema") => match format.get("json_schema") {
            Some(Value::Object(spec)) => match spec.get("schema") {
                None | Some(Value::Null) => Ok(Asked::Schema(None)),
                Some(schema) => Ok(Asked::Schema(Some(schema))),
            },
            None => bad(".json_schema", "missing (type json_schema)"),
            Some(_) => bad(".json_schema", "must be an object"),
        },
        Some(other) => bad(
            ".type",
            &format!("unknown type {other:?} (text, json_object or json_schema)"),
        ),
        None => bad(".type", "missing"),
    }
}

/// Checks a request's `response_format` at input: its schema must compile. Returns whether
/// the reply will be checked. The error is (field under the body, message).
pub fn check_request(
    response_format: Option<&Value>,
) -> std::result::Result<bool, (String, String)> {
    match asked(response_format)? {
        Asked::Text => Ok(false),
        Asked::JsonObject | Asked::Schema(None) => Ok(true),
        Asked::Schema(Some(schema)) => compiled(schema)
            .map(|_| true)
            .map_err(|e| ("response_format.json_schema.schema".into(), e)),
    }
}

/// Whether a request body (JSON text) asks for a structured reply; cheap for the bodies
/// that do not mention it.
pub fn asks_structure(body: &str) -> bool {
    body.contains("response_format")
        && serde_json::from_str::<Value>(body).is_ok_and(|v| {
            let format = asked(v.get("response_format"));
            matches!(format, Ok(Asked::JsonObject | Asked::Schema(_)))
        })
}

/// The schema compiled, from the cache when the same text was compiled before. The error
/// says why it is not a usable schema.
pub fn compiled(schema: &Value) -> std::result::Result<Arc<Validator>, String> {
    let text = schema.to_string();
    let key = digest(&text);
    if let Some(found) = COMPILED.get(&key) {
        return Ok(found);
    }
    let validator = jsonschema::validator_for(schema)
        .map(Arc::new)
        .map_err(|e| format!("not a usable JSON Schema: {}", cut(&e.to_string())))?;
    COMPILED.insert(key, Arc::clone(&validator));
    Ok(validator)
}

/// A `--validate` schema file, read and compiled: its canonical text and its digest (what
/// its jobs carry).
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaFile {
    /// SHA-256 (hex) of `text`.
    pub digest: String,
    /// The schema as compact JSON.
    pub text: String,
}

impl SchemaFile {
    /// Reads and compiles `path`; the error names the file and what is wrong.
    pub fn read(path: &std::path::Path) -> Result<SchemaFile> {
        let name = path.display();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Invalid(format!("--validate {name}: cannot read it: {e}")))?;
        let schema: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("--validate {name}: not JSON: {e}")))?;
        compiled(&schema).map_err(|e| Error::Invalid(format!("--validate {name}: {e}")))?;
        let text = schema.to_string();
        Ok(SchemaFile {
            digest: hex(&digest(&text)),
            text,
        })
    }

    /// Keeps the schema in the database (once; its jobs refer to it by digest).
    pub fn put_in(&self, txn: &redb::WriteTransaction) -> Result<()> {
        let mut table = txn.open_table(tables::SCHEMAS)?;
        if table.get(self.digest.as_str())?.is_none() {
            table.insert(self.digest.as_str(), self.text.as_str())?;
        }
        Ok(())
    }
}

/// What a job's reply must be: every check that applies, the line's own first.
#[derive(Clone, Default)]
pub struct Required {
    /// The reply must be JSON (any structured format asks for it).
    json: bool,
    /// It must be an object (`json_object`).
    object: bool,
    schemas: Vec<Arc<Validator>>,
}

impl Required {
    /// The checks of a job: its body's `response_format` and its `--validate` schema (read
    /// from the database once per process). The inner error is a job no check can be made
    /// for (its schema is unusable or missing: the job's fault).
    pub async fn of(
        store: &Store,
        body: &str,
        validate: Option<&str>,
    ) -> Result<std::result::Result<Required, String>> {
        let mut required = Required::default();
        if asks_structure(body) {
            let Ok(value) = serde_json::from_str::<Value>(body) else {
                return Ok(Err("request body is not JSON".into()));
            };
            required.json = true;
            match asked(value.get("response_format")) {
                Ok(Asked::JsonObject) => required.object = true,
                Ok(Asked::Schema(Some(schema))) => match compiled(schema) {
                    Ok(v) => required.schemas.push(v),
                    Err(e) => return Ok(Err(format!("response_format.json_schema.schema: {e}"))),
                },
                Ok(_) => {}
                Err((field, message)) => return Ok(Err(format!("{field}: {message}"))),
            }
        }
        if let Some(digest) = validate {
            required.json = true;
            match validator_of(store, digest).await? {
                Ok(v) => required.schemas.push(v),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(required))
    }

    /// Whether anything is checked.
    pub fn any(&self) -> bool {
        self.json
    }

    /// The first violation of `response`'s reply, if any.
    pub fn violation(&self, response: &ChatResponse) -> Option<String> {
        if !self.json {
            return None;
        }
        let message = response.choices.first().map(|c| &c.message);
        if let Some(refusal) = message
            .and_then(|m| m.extra.get("refusal"))
            .and_then(Value::as_str)
        {
            return Some(cut(&format!("the model refused: {refusal}")));
        }
        let content = match message.and_then(|m| m.content.as_deref()) {
            Some(c) if !c.trim().is_empty() => c,
            _ => return Some("the reply is empty".into()),
        };
        let value: Value = match serde_json::from_str(content) {
            Ok(v) => v,
            Err(e) => return Some(format!("the reply is not JSON: {e}")),
        };
        if self.object && !value.is_object() {
            return Some("the reply is not a JSON object".into());
        }
        self.schemas.iter().find_map(|schema| {
            schema.validate(&value).err().map(|e| {
                let path = e.instance_path().to_string();
                let at = if path.is_empty() {
                    "the top level"
                } else {
                    &path
                };
                cut(&format!("at {at}: {e}"))
            })
        })
    }
}

/// A `--validate` schema by digest, compiled: from the cache, else from the database.
async fn validator_of(
    store: &Store,
    digest: &str,
) -> Result<std::result::Result<Arc<Validator>, String>> {
    if let Some(key) = unhex(digest) {
        if let Some(found) = COMPILED.get(&key) {
            return Ok(Ok(found));
        }
    }
    let wanted = digest.to_string();
    let text = store
        .read(move |txn| {
            let table = txn.open_table(tables::SCHEMAS)?;
            Ok(table.get(wanted.as_str())?.map(|v| v.value().to_string()))
        })
        .await?;
    let Some(text) = text else {
        return Ok(Err(format!(
            "the --validate schema {digest} is not in the database"
        )));
    };
    Ok(serde_json::from_str::<Value>(&text)
        .map_err(|e| format!("the stored --validate schema is not JSON: {e}"))
        .and_then(|schema| compiled(&schema)))
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn cut(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(content: &str) -> ChatResponse {
        serde_json::from_value(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]
        }))
        .unwrap()
    }

    fn schema_of(schema: Value) -> Required {
        Required {
            json: true,
            object: false,
            schemas: vec![compiled(&schema).unwrap()],
        }
    }

    #[test]
    fn a_reply_is_checked_against_the_schema_and_the_first_violation_is_named() {
        let r = schema_of(json!({
            "type": "object",
            "properties": {"answer": {"type": "integer"}},
            "required": ["answer"],
            "additionalProperties": false
        }));
        assert_eq!(r.violation(&reply(r#"{"answer": 4}"#)), None);
        let v = r.violation(&reply(r#"{"answer": "four"}"#)).unwrap();
        assert!(v.contains("/answer") && v.contains("integer"), "{v}");
        let v = r.violation(&reply(r#"{"answer": 4, "extra": 1}"#)).unwrap();
        assert!(v.contains("the top level") && v.contains("extra"), "{v}");
        let v = r.violation(&reply("four")).unwrap();
        assert!(v.starts_with("the reply is not JSON"), "{v}");
        assert_eq!(r.violation(&reply(" ")).unwrap(), "the reply is empty");
    }

    #[test]
    fn json_object_wants_an_object_and_a_refusal_is_a_violation() {
        let r = Required {
            json: true,
            object: true,
            schemas: Vec::new(),
        };
        assert_eq!(r.violation(&reply(r#"{"a": 1}"#)), None);
        assert_eq!(
            r.violation(&reply("[1, 2]")).unwrap(),
            "the reply is not a JSON object"
        );
        let refused: ChatResponse = serde_json::from_value(json!({"choices": [{"index": 0,
            "message": {"role": "assistant", "content": null, "refusal": "I can't"}}]}))
        .unwrap();
        assert_eq!(r.violation(&refused).unwrap(), "the model refused: I can't");
        assert_eq!(Required::default().violation(&reply("anything")), None);
    }

    #[test]
    fn response_formats_are_read_and_bad_schemas_named_by_field() {
        let check = |body: &Value| check_request(body.get("response_format"));
        assert_eq!(check(&json!({"messages": []})), Ok(false));
        let text = json!({"response_format": {"type": "text"}});
        assert_eq!(check(&text), Ok(false));
        let object = json!({"response_format": {"type": "json_object"}});
        assert_eq!(check(&object), Ok(true));
        let good = json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": "object"}}}});
        assert_eq!(check(&good), Ok(true));
        let bad = json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": 12}}}});
        let (field, message) = check(&bad).unwrap_err();
        assert_eq!(field, "response_format.json_schema.schema");
        assert!(message.starts_with("not a usable JSON Schema"), "{message}");
        let odd = json!({"response_format": {"type": "xml"}});
        assert_eq!(check(&odd).unwrap_err().0, "response_format.type");
        assert!(asks_structure(&good.to_string()));
        assert!(!asks_structure(&text.to_string()));
    }

    #[test]
    fn long_violations_are_cut_and_digests_round_trip() {
        let long = "x".repeat(MAX_MESSAGE * 2);
        assert!(cut(&long).chars().count() <= MAX_MESSAGE + 1);
        let d = digest("{}");
        assert_eq!(unhex(&hex(&d)), Some(d));
        assert_eq!(unhex("zz"), None);
    }
}
