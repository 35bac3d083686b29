//! Judging an answer against an expected one: the match rules of evaluation batches.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::Outcome;

/// Default tolerance of the `numeric` rule (see [`MatchRule::Numeric`]).
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

/// How an answer is compared with the expected one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MatchRule {
    /// Equal after normalisation: case, runs of whitespace, surrounding whitespace and
    /// trailing punctuation (`.,;:!?`) do not count.
    Exact,
    /// The normalised answer contains the normalised expected text.
    Contains,
    /// The expected text is a regular expression that must match somewhere in the answer.
    Regex,
    /// The final number of the answer is within `tolerance` of the expected number:
    /// `|got - expected| <= tolerance * max(1, |expected|)`, i.e. absolute below 1 and
    /// relative above.
    Numeric { tolerance: f64 },
}

/// An expected answer with its rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expectation {
    /// The expected answer (for [`MatchRule::Regex`], the pattern).
    pub answer: String,
    pub rule: MatchRule,
}

/// A field that is wrong, and why (the caller adds file and line).
pub type FieldError = (String, String);

fn err(field: &str, message: impl Into<String>) -> FieldError {
    (field.to_string(), message.into())
}

impl Expectation {
    /// Reads `expected` (a string or number) and `match` (a rule name, or
    /// `{"rule": "numeric", "tolerance": 0.01}`). Without `match`, a number is compared
    /// numerically and a string exactly.
    pub fn parse(expected: &Value, rule: Option<&Value>) -> Result<Expectation, FieldError> {
        let answer = match expected {
            Value::String(s) if s.trim().is_empty() => {
                return Err(err("expected", "must not be empty"))
            }
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(err("expected", "must be a string or a number")),
        };
        let (name, tolerance) = match rule {
            None | Some(Value::Null) if expected.is_number() => ("numeric", None),
            None | Some(Value::Null) => ("exact", None),
            Some(Value::String(s)) => (s.as_str(), None),
            Some(Value::Object(o)) => match o.get("rule") {
                Some(Value::String(s)) => (s.as_str(), o.get("tolerance")),
                _ => {
                    return Err(err(
                        "match.rule",
                        "missing; one of exact, contains, regex, numeric",
                    ))
                }
            },
            Some(_) => return Err(err("match", "must be a rule name or an object")),
        };
        if tolerance.is_some() && name != "numeric" {
            return Err(err(
                "match.tolerance",
                "only the numeric rule takes a tolerance",
            ));
        }
        let rule = match name {
            "exact" => MatchRule::Exact,
            "contains" => MatchRule::Contains,
            "regex" => {
                regex::Regex::new(&answer)
                    .map_err(|e| err("expected", format!("not a valid regex: {e}")))?;
                MatchRule::Regex
            }
            "numeric" => {
                if parse_number(&answer).is_none() {
                    return Err(err("expected", format!("{answer:?} is not a number")));
                }
                let tolerance = match tolerance {
                    None => DEFAULT_TOLERANCE,
                    Some(t) => t
                        .as_f64()
                        .filter(|t| t.is_finite() && *t >= 0.0)
                        .ok_or_else(|| err("match.tolerance", "must be a number >= 0"))?,
                };
                MatchRule::Numeric { tolerance }
            }
            other => {
                return Err(err(
                    "match",
                    format!("unknown rule {other:?}; one of exact, contains, regex, numeric"),
                ))
            }
        };
        Ok(Expectation { answer, rule })
    }

    /// Success when `answer` satisfies the rule, failure otherwise (an empty answer fails).
    pub fn judge(&self, answer: &str) -> Outcome {
        let ok = match &self.rule {
            MatchRule::Exact => normalise(answer) == normalise(&self.answer),
            MatchRule::Contains => normalise(answer).contains(&normalise(&self.answer)),
            // Validated when the line was read; a pattern that no longer compiles fails.
            MatchRule::Regex => regex::Regex::new(&self.answer).is_ok_and(|r| r.is_match(answer)),
            MatchRule::Numeric { tolerance } => {
                match (final_number(answer), parse_number(&self.answer)) {
                    (Some(got), Some(want)) => {
                        (got - want).abs() <= tolerance * want.abs().max(1.0)
                    }
                    _ => false,
                }
            }
        };
        if ok && !answer.trim().is_empty() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

/// Lower case, single spaces, no surrounding whitespace or trailing punctuation.
pub fn normalise(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    joined
        .trim_end_matches(['.', ',', ';', ':', '!', '?'])
        .trim()
        .to_lowercase()
}

fn number_pattern() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
            .unwrap_or_else(|_| unreachable!("the number pattern is a valid regex"))
    })
}

fn parse_number(text: &str) -> Option<f64> {
    text.trim()
        .replace(',', "")
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
}

/// The final number of an answer: the last number on the last `Answer:` line when there is
/// one, else the last number of the text. Thousands separators are ignored.
pub fn final_number(text: &str) -> Option<f64> {
    let answer_line = text
        .lines()
        .rev()
        .find_map(|l| super::reply::after_answer_label(l));
    let last = |t: &str| {
        number_pattern()
            .find_iter(t)
            .filter_map(|m| parse_number(m.as_str()))
            .last()
    };
    answer_line.and_then(last).or_else(|| last(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn judge(expected: Value, rule: Option<Value>, answer: &str) -> Outcome {
        Expectation::parse(&expected, rule.as_ref())
            .unwrap()
            .judge(answer)
    }

    #[test]
    fn exact_ignores_case_spacing_and_trailing_punctuation() {
        assert_eq!(judge(json!("Paris"), None, "  paris. "), Outcome::Success);
        assert_eq!(
            judge(json!("New York"), None, "new\n york!"),
            Outcome::Success
        );
        assert_eq!(
            judge(json!("Paris"), None, "Paris, France"),
            Outcome::Failure
        );
        assert_eq!(
            judge(
                json!("Paris"),
                Some(json!("contains")),
                "It is Paris, France"
            ),
            Outcome::Success
        );
    }

    #[test]
    fn numeric_takes_the_final_number_within_tolerance() {
        assert_eq!(judge(json!(391), None, "17 * 23 = 391"), Outcome::Success);
        assert_eq!(
            judge(
                json!(42),
                None,
                "Answer: 42\nchecked with 7 * 6 = 42, 12 steps"
            ),
            Outcome::Success
        );
        assert_eq!(
            judge(json!("1,000"), Some(json!("numeric")), "about 1000.0000001"),
            Outcome::Success
        );
        assert_eq!(
            judge(
                json!(2.5),
                Some(json!({"rule":"numeric","tolerance":0.01})),
                "2.51"
            ),
            Outcome::Success
        );
        assert_eq!(judge(json!(2.5), None, "2.51"), Outcome::Failure);
        assert_eq!(judge(json!(5), None, "no number here"), Outcome::Failure);
    }

    #[test]
    fn regex_and_empty_answers() {
        assert_eq!(
            judge(json!("^4[02]$"), Some(json!("regex")), "42"),
            Outcome::Success
        );
        assert_eq!(
            judge(json!(".*"), Some(json!("regex")), ""),
            Outcome::Failure
        );
    }

    #[test]
    fn bad_expectations_name_the_field() {
        let e = |exp: Value, rule: Value| Expectation::parse(&exp, Some(&rule)).unwrap_err();
        assert_eq!(e(json!("("), json!("regex")).0, "expected");
        assert!(e(json!("a"), json!("fuzzy"))
            .1
            .contains("unknown rule \"fuzzy\""));
        assert_eq!(e(json!("abc"), json!("numeric")).0, "expected");
        assert_eq!(
            e(json!(1), json!({"rule":"numeric","tolerance":-1})).0,
            "match.tolerance"
        );
        assert_eq!(
            Expectation::parse(&json!([1]), None).unwrap_err().0,
            "expected"
        );
    }
}
