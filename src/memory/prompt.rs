//! The memory section of a prompt: worked examples from similar past successes of the same
//! domain and the domain's active rules, within a token budget.

use redb::ReadTransaction;

use super::judge::normalise;
use super::retrieve::{search_experiences_read, Query};
use super::rules;
use crate::error::Result;

/// What memory adds to one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemorySection {
    /// The system message text; empty when there was nothing to add.
    pub text: String,
    /// Experiences shown as worked examples.
    pub used_experiences: Vec<u64>,
    /// Rules shown as guidance.
    pub used_rules: Vec<u64>,
}

/// Tokens estimated as characters / 4, rounded up: close enough for English and cheap.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

const EXAMPLES_HEADER: &str = "Worked examples of similar problems solved before:";
const RULES_HEADER: &str = "Guidance learned from earlier attempts:";

/// Builds the section for `question` in `domain`: up to `k` most similar successful
/// experiences (an identical question is skipped: its answer would leak), then active rules,
/// best first, each added only while the whole text stays within `token_budget`.
pub fn build_read(
    txn: &ReadTransaction,
    domain: &str,
    question: &str,
    k: usize,
    token_budget: usize,
    now: u64,
) -> Result<MemorySection> {
    let query = Query {
        text: question,
        domain: Some(domain),
        limit: k + 1,
        successes_only: true,
        now,
    };
    let asked = normalise(question);
    let mut section = MemorySection::default();
    let mut parts: Vec<String> = Vec::new();
    let fits = |parts: &[String], extra: &str| {
        estimate_tokens(&parts.join("\n")) + estimate_tokens(extra) < token_budget
    };
    for (exp, _) in search_experiences_read(txn, &query)? {
        if section.used_experiences.len() == k || normalise(&exp.data.question) == asked {
            continue;
        }
        let example = format!(
            "\nQuestion: {}\nAnswer: {}",
            exp.data.question.trim(),
            exp.data.answer.trim()
        );
        let header = if parts.is_empty() {
            EXAMPLES_HEADER
        } else {
            ""
        };
        if fits(&parts, &format!("{header}{example}")) {
            if parts.is_empty() {
                parts.push(EXAMPLES_HEADER.to_string());
            }
            parts.push(example);
            section.used_experiences.push(exp.id);
        }
    }
    let mut rules_started = false;
    for rule in rules::active_read(txn, domain)? {
        let line = format!("- {}", rule.text.trim());
        let header = if rules_started {
            String::new()
        } else {
            format!("\n{RULES_HEADER}\n")
        };
        if fits(&parts, &format!("{header}{line}")) {
            if !rules_started {
                parts.push(format!("\n{RULES_HEADER}"));
                rules_started = true;
            }
            parts.push(line);
            section.used_rules.push(rule.id);
        }
    }
    section.text = parts.join("\n");
    Ok(section)
}
