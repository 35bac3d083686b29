//! Insight rules: short guidance learned per domain (see [`super::insights`]), stored with the
//! experiences they came from and a score that follows the outcomes of prompts that used them.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::record::Outcome;
use crate::codec;
use crate::error::Result;
use crate::store::tables::{allocate_ids, MEMORY_RULES, NEXT_RULE_ID};

/// Score of a new rule; a rule at or below zero is no longer put in prompts (as in ExpeL,
/// where a rule voted down to zero is dropped).
pub const INITIAL_SCORE: i64 = 2;

/// One learned rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: u64,
    pub domain: String,
    pub text: String,
    /// Experiences the rule was learned from.
    pub evidence: Vec<u64>,
    /// Rises by one per success of a prompt that used it, falls by one per failure; a rule
    /// proposed again also gains one.
    pub score: i64,
    /// Prompts with a judged outcome that used it.
    pub successes: u64,
    pub failures: u64,
    /// When it was first learned (ms).
    pub created_at: u64,
}

impl crate::codec::Record for Rule {}

fn domain_range(domain: &str) -> std::ops::RangeInclusive<(&str, u64)> {
    (domain, 0)..=(domain, u64::MAX)
}

fn decode_all<'a>(
    rows: impl Iterator<
        Item = std::result::Result<
            (
                redb::AccessGuard<'a, (&'static str, u64)>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >,
    >,
) -> Result<Vec<Rule>> {
    rows.map(|row| Ok(codec::decode(row?.1.value())?)).collect()
}

/// Adds rules to a domain. A rule whose text (normalised) is already there gains a point and
/// the new evidence instead of being added twice. Returns the rules as stored.
pub fn add_in(
    txn: &WriteTransaction,
    domain: &str,
    texts: &[String],
    evidence: &[u64],
    now: u64,
) -> Result<Vec<Rule>> {
    let mut table = txn.open_table(MEMORY_RULES)?;
    let existing = decode_all(table.range(domain_range(domain))?)?;
    let mut out = Vec::new();
    for text in texts {
        let key = super::judge::normalise(text);
        let rule = match existing
            .iter()
            .find(|r| super::judge::normalise(&r.text) == key)
        {
            Some(old) => {
                let mut r = old.clone();
                r.score += 1;
                for id in evidence {
                    if !r.evidence.contains(id) {
                        r.evidence.push(*id);
                    }
                }
                r
            }
            None => Rule {
                id: allocate_ids(txn, NEXT_RULE_ID, 1)?,
                domain: domain.to_string(),
                text: text.trim().to_string(),
                evidence: evidence.to_vec(),
                score: INITIAL_SCORE,
                successes: 0,
                failures: 0,
                created_at: now,
            },
        };
        table.insert((domain, rule.id), codec::encode(&rule)?.as_slice())?;
        out.push(rule);
    }
    Ok(out)
}

/// Moves the score of each rule a prompt used by its outcome (unknown outcomes move nothing).
pub fn apply_outcome_in(
    txn: &WriteTransaction,
    domain: &str,
    ids: &[u64],
    outcome: Outcome,
) -> Result<()> {
    if ids.is_empty() || outcome == Outcome::Unknown {
        return Ok(());
    }
    let mut table = txn.open_table(MEMORY_RULES)?;
    for &id in ids {
        let Some(mut rule) = table
            .get((domain, id))?
            .map(|b| codec::decode::<Rule>(b.value()))
            .transpose()?
        else {
            continue;
        };
        if outcome == Outcome::Success {
            rule.score += 1;
            rule.successes += 1;
        } else {
            rule.score -= 1;
            rule.failures += 1;
        }
        table.insert((domain, id), codec::encode(&rule)?.as_slice())?;
    }
    Ok(())
}

/// Rules of one domain, or of all, by (domain, id).
pub fn list_read(txn: &ReadTransaction, domain: Option<&str>) -> Result<Vec<Rule>> {
    let table = txn.open_table(MEMORY_RULES)?;
    match domain {
        Some(d) => decode_all(table.range(domain_range(d))?),
        None => decode_all(table.iter()?),
    }
}

/// Rules fit for prompts: score above zero, best first (ties: older first).
pub fn active_read(txn: &ReadTransaction, domain: &str) -> Result<Vec<Rule>> {
    let mut rules: Vec<Rule> = list_read(txn, Some(domain))?
        .into_iter()
        .filter(|r| r.score > 0)
        .collect();
    rules.sort_by(|a, b| b.score.cmp(&a.score).then(a.id.cmp(&b.id)));
    Ok(rules)
}
