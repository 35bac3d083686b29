//! The `structured` strategy's reply: JSON `{answer, reasoning: [steps], confidence}`, read
//! strictly; anything else falls back to plain text with the reason recorded.

use serde::Deserialize;

use super::{Definition, Execution};
use crate::memory::reply::{plain, Extracted};

pub(super) const DEFINITION: Definition = Definition {
    name: "structured",
    instructions: Some(INSTRUCTIONS),
    extract: parse,
    execution: Execution::OneCall,
};

/// The system prompt of the structured strategy.
pub const INSTRUCTIONS: &str = "Reply with only a JSON object of the form \
{\"answer\": \"<final answer>\", \"reasoning\": [\"<step>\", ...], \"confidence\": <number from 0 to 1>} \
and nothing else.";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    answer: serde_json::Value,
    #[serde(default)]
    reasoning: Vec<String>,
    confidence: Option<f64>,
}

/// Parses a reply: the whole text, or one fenced ```json block, must be the object. On any
/// error the reply is read as plain text and `parse_error` says why.
pub fn parse(content: &str) -> Extracted {
    match strict(content) {
        Ok(e) => e,
        Err(why) => Extracted {
            parse_error: Some(why),
            ..plain(content)
        },
    }
}

fn strict(content: &str) -> Result<Extracted, String> {
    let text = unfence(content.trim());
    if text.is_empty() {
        return Err("empty reply".into());
    }
    let reply: Reply =
        serde_json::from_str(text).map_err(|e| format!("not the JSON asked for: {e}"))?;
    let answer = match reply.answer {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        other => {
            return Err(format!(
                "`answer` must be a string or number, found {other}"
            ))
        }
    };
    let confidence = match reply.confidence {
        None => None,
        Some(c) if (0.0..=1.0).contains(&c) => Some(c as f32),
        Some(c) => return Err(format!("`confidence` must be in 0..=1, found {c}")),
    };
    Ok(Extracted {
        answer,
        reasoning: reply.reasoning,
        confidence,
        parse_error: None,
    })
}

/// The inside of a ```json (or bare ```) fence that wraps the whole reply, else the text.
fn unfence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").map_or(text, str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_json_and_fenced_json_are_read() {
        let e = parse(r#"{"answer":"391","reasoning":["17*23"],"confidence":0.9}"#);
        assert_eq!(
            (e.answer.as_str(), e.confidence, e.parse_error),
            ("391", Some(0.9), None)
        );
        assert_eq!(e.reasoning, ["17*23"]);
        let e = parse("```json\n{\"answer\": 42, \"confidence\": 1}\n```");
        assert_eq!((e.answer.as_str(), e.confidence), ("42", Some(1.0)));
    }

    #[test]
    fn bad_replies_fall_back_to_text_with_the_reason() {
        for (reply, why) in [
            ("The answer is 7.", "not the JSON asked for"),
            (r#"{"result": 7}"#, "unknown field `result`"),
            (r#"{"answer": [7]}"#, "`answer` must be"),
            (
                r#"{"answer": "7", "confidence": 3}"#,
                "`confidence` must be in 0..=1",
            ),
            ("   ", "empty reply"),
        ] {
            let e = parse(reply);
            let err = e.parse_error.unwrap_or_default();
            assert!(err.contains(why), "{reply}: {err}");
            assert_eq!(e.answer, reply.trim());
            assert_eq!(e.confidence, None);
        }
    }
}
