//! The insights step (after ExpeL): show the model recent successes and failures of a domain,
//! ask for short rules, store them with their evidence. This module builds the request and
//! reads the reply; the use case that makes the call is `app::insights`.

use serde_json::{json, Value};

use crate::error::Result;
use crate::memory::experience::{self, Experience, Order, Outcome};

/// Rules kept from one reply at most.
pub const MAX_RULES: usize = 8;
/// Longest rule kept, in characters (longer lines are cut).
pub const MAX_RULE_CHARS: usize = 300;
/// Experiences of the domain looked at to find the recent successes and failures.
const SCAN: usize = 500;

/// The experiences compared: up to `n` recent successes and `n` recent failures, newest first.
pub fn evidence_read(
    txn: &redb::ReadTransaction,
    domain: &str,
    n: usize,
) -> Result<(Vec<Experience>, Vec<Experience>)> {
    let recent = experience::list_by_domain_read(txn, domain, SCAN, Order::NewestFirst)?;
    let pick = |o: Outcome| -> Vec<Experience> {
        recent
            .iter()
            .filter(|e| e.data.outcome == o)
            .take(n)
            .cloned()
            .collect()
    };
    Ok((pick(Outcome::Success), pick(Outcome::Failure)))
}

fn describe(e: &Experience) -> String {
    let steps = if e.data.reasoning.is_empty() {
        String::new()
    } else {
        format!("\nReasoning: {}", e.data.reasoning.join(" / "))
    };
    format!(
        "Question: {}{steps}\nAnswer: {}",
        e.data.question.trim(),
        e.data.answer.trim()
    )
}

/// The request that asks for rules (temperature 0, so it is cached like any other).
pub fn request(domain: &str, successes: &[Experience], failures: &[Experience]) -> Value {
    let list = |es: &[Experience]| -> String {
        if es.is_empty() {
            return "(none)".into();
        }
        es.iter()
            .enumerate()
            .map(|(i, e)| format!("{}. {}", i + 1, describe(e)))
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    let prompt = format!(
        "These are recent attempts at problems in the domain \"{domain}\".\n\n\
         SUCCESSFUL attempts:\n{}\n\nFAILED attempts:\n{}\n\n\
         Compare them. Write at most {MAX_RULES} short, general rules that would turn the \
         failures into successes, one per line, each starting with \"- \". Write nothing else.",
        list(successes),
        list(failures)
    );
    json!({
        "messages": [
            {"role": "system", "content": "You extract reusable lessons from past problem solving."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0,
    })
}

/// The rules of a reply: lines starting with `-`, `*` or a number and `.`/`)`.
pub fn parse_rules(content: &str) -> Vec<String> {
    content
        .lines()
        .filter_map(|l| {
            let t = l.trim();
            let rest = t
                .strip_prefix("- ")
                .or_else(|| t.strip_prefix("* "))
                .or_else(|| {
                    let digits = t.find(|c: char| !c.is_ascii_digit())?;
                    (digits > 0).then(|| {
                        t[digits..]
                            .strip_prefix(". ")
                            .or_else(|| t[digits..].strip_prefix(") "))
                    })?
                })?;
            let rule: String = rest.trim().chars().take(MAX_RULE_CHARS).collect();
            (!rule.is_empty()).then_some(rule)
        })
        .take(MAX_RULES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_the_bulleted_or_numbered_lines() {
        let reply = "Here are rules:\n- Check units.\n* Re-read the question\n3) Verify the sum\n10. Last\nplain line\n-no space";
        assert_eq!(
            parse_rules(reply),
            [
                "Check units.",
                "Re-read the question",
                "Verify the sum",
                "Last"
            ]
        );
    }
}
