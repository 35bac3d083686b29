//! What the worker does with memory around one call: shape the request before it, read and
//! judge the reply after it.

use serde_json::Value;

use super::judge::Expectation;
use super::prompt::MemorySection;
use super::record::Outcome;
use super::strategy::{add_system_text, Strategy};

/// Tag of an experience whose structured reply could not be read.
pub const PARSE_ERROR_TAG: &str = "parse_error";
/// Tag of an experience whose prompt carried memory.
pub const MEMORY_TAG: &str = "memory";

/// Adds the strategy's instructions and the memory section to a request, as one system
/// message after the caller's own system messages. A direct request without memory is left
/// exactly as written.
pub fn shape(body: &mut Value, strategy: Strategy, memory: &MemorySection) {
    let texts: Vec<String> = strategy
        .instructions()
        .map(str::to_string)
        .into_iter()
        .chain(Some(memory.text.clone()))
        .collect();
    add_system_text(body, &texts);
}

/// A reply read by its strategy and judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub answer: String,
    pub reasoning: Vec<String>,
    pub confidence: Option<f32>,
    pub outcome: Outcome,
    /// Why the reply was not in the asked format (recorded as context, tagged).
    pub parse_error: Option<String>,
}

/// Reads `content` with `strategy` and judges it: against `expected` when given, else by
/// the structured confidence against `threshold`, else the outcome is unknown.
pub fn judge_reply(
    strategy: Strategy,
    content: &str,
    expected: Option<&Expectation>,
    threshold: f64,
) -> Judged {
    let e = strategy.extract(content);
    let outcome = match (expected, e.confidence) {
        (Some(x), _) => x.judge(&e.answer),
        (None, Some(c)) if f64::from(c) >= threshold => Outcome::Success,
        (None, Some(_)) => Outcome::Failure,
        (None, None) => Outcome::Unknown,
    };
    Judged {
        answer: e.answer,
        reasoning: e.reasoning,
        confidence: e.confidence,
        outcome,
        parse_error: e.parse_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn direct_without_memory_leaves_the_request_alone() {
        let mut body = json!({"messages":[{"role":"user","content":"q"}]});
        let before = body.clone();
        shape(&mut body, Strategy::DIRECT, &MemorySection::default());
        assert_eq!(body, before);
    }

    #[test]
    fn outcomes_come_from_expected_then_confidence() {
        let x = Expectation::parse(&json!(4), None).unwrap();
        let j = judge_reply(Strategy::CHAIN_OF_THOUGHT, "2+2\nAnswer: 4", Some(&x), 0.7);
        assert_eq!((j.outcome, j.answer.as_str()), (Outcome::Success, "4"));
        let sure = r#"{"answer":"x","confidence":0.8}"#;
        assert_eq!(
            judge_reply(Strategy::STRUCTURED, sure, None, 0.7).outcome,
            Outcome::Success
        );
        let unsure = r#"{"answer":"x","confidence":0.2}"#;
        assert_eq!(
            judge_reply(Strategy::STRUCTURED, unsure, None, 0.7).outcome,
            Outcome::Failure
        );
        let bad = judge_reply(Strategy::STRUCTURED, "not json", None, 0.7);
        assert_eq!(bad.outcome, Outcome::Unknown);
        assert!(bad.parse_error.is_some());
        assert_eq!(
            judge_reply(Strategy::DIRECT, "x", None, 0.7).outcome,
            Outcome::Unknown
        );
    }
}
