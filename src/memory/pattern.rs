//! Patterns: running statistics per (domain, strategy), updated by every recorded experience.
//!
//! A pattern summarises history: retention that deletes old experiences does not rewrite its
//! counts and means (they describe everything ever recorded), it only drops the deleted ids
//! from [`Pattern::recent_examples`] so they never point at missing records.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use super::record::{Experience, Outcome};
use crate::codec;
use crate::error::Result;
use crate::store::tables::PATTERNS;
use crate::store::Store;

/// How many recent example experience ids a pattern keeps.
pub const RECENT_EXAMPLES: usize = 8;

/// Learned statistics of one (domain, strategy) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pattern {
    /// Domain of the experiences summarised.
    pub domain: String,
    /// Strategy of the experiences summarised.
    pub strategy: String,
    /// Experiences recorded.
    pub uses: u64,
    /// Of which with [`Outcome::Success`].
    pub successes: u64,
    /// Of which with [`Outcome::Failure`].
    pub failures: u64,
    /// Experiences that carried a confidence.
    pub confidence_samples: u64,
    /// Mean confidence over those, `None` while there are none.
    pub mean_confidence: Option<f64>,
    /// Mean latency over all uses, in milliseconds.
    pub mean_latency_ms: f64,
    /// Latest `created_at` seen (ms).
    pub last_used: u64,
    /// Ids of the most recent [`RECENT_EXAMPLES`] experiences, oldest first.
    pub recent_examples: Vec<u64>,
}

impl crate::codec::Record for Pattern {}

impl Pattern {
    fn empty(domain: &str, strategy: &str) -> Self {
        Pattern {
            domain: domain.to_owned(),
            strategy: strategy.to_owned(),
            uses: 0,
            successes: 0,
            failures: 0,
            confidence_samples: 0,
            mean_confidence: None,
            mean_latency_ms: 0.0,
            last_used: 0,
            recent_examples: Vec::new(),
        }
    }

    /// Successes over uses whose outcome is known, `None` when no outcome is known yet.
    pub fn success_rate(&self) -> Option<f64> {
        let known = self.successes + self.failures;
        (known > 0).then(|| self.successes as f64 / known as f64)
    }

    fn observe(&mut self, exp: &Experience) {
        self.uses += 1;
        match exp.data.outcome {
            Outcome::Success => self.successes += 1,
            Outcome::Failure => self.failures += 1,
            Outcome::Unknown => {}
        }
        if let Some(c) = exp.data.confidence {
            self.confidence_samples += 1;
            let old = self.mean_confidence.unwrap_or(0.0);
            self.mean_confidence =
                Some(old + (f64::from(c) - old) / self.confidence_samples as f64);
        }
        self.mean_latency_ms +=
            (exp.data.latency_ms as f64 - self.mean_latency_ms) / self.uses as f64;
        self.last_used = self.last_used.max(exp.created_at);
        self.recent_examples.push(exp.id);
        let excess = self.recent_examples.len().saturating_sub(RECENT_EXAMPLES);
        self.recent_examples.drain(..excess);
    }
}

/// The open patterns table of a write transaction.
pub(crate) type PatternTable<'t> = redb::Table<'t, (&'static str, &'static str), &'static [u8]>;

fn load(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    domain: &str,
    strategy: &str,
) -> Result<Option<Pattern>> {
    match table.get((domain, strategy))? {
        Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
        None => Ok(None),
    }
}

/// Folds newly recorded experiences into their patterns (same transaction as the records),
/// reading and writing each pattern once.
pub(crate) fn observe_in(table: &mut PatternTable<'_>, exps: &[Experience]) -> Result<()> {
    let mut touched: BTreeMap<(&str, &str), Pattern> = BTreeMap::new();
    for exp in exps {
        let key = (exp.data.domain.as_str(), exp.data.strategy.as_str());
        let pattern = match touched.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let found = load(table, key.0, key.1)?;
                e.insert(found.unwrap_or_else(|| Pattern::empty(key.0, key.1)))
            }
        };
        pattern.observe(exp);
    }
    for (key, pattern) in touched {
        table.insert(key, codec::encode(&pattern)?.as_slice())?;
    }
    Ok(())
}

/// Drops deleted experience ids from the recent examples of their patterns.
pub(crate) fn forget_examples_in(
    table: &mut PatternTable<'_>,
    deleted: &BTreeMap<(String, String), BTreeSet<u64>>,
) -> Result<()> {
    for ((domain, strategy), ids) in deleted {
        if let Some(mut pattern) = load(table, domain, strategy)? {
            let before = pattern.recent_examples.len();
            pattern.recent_examples.retain(|id| !ids.contains(id));
            if pattern.recent_examples.len() != before {
                table.insert(
                    (domain.as_str(), strategy.as_str()),
                    codec::encode(&pattern)?.as_slice(),
                )?;
            }
        }
    }
    Ok(())
}

/// The pattern of (domain, strategy), if any experience was recorded for it.
pub fn get_read(txn: &ReadTransaction, domain: &str, strategy: &str) -> Result<Option<Pattern>> {
    load(&txn.open_table(PATTERNS)?, domain, strategy)
}

/// All patterns, or those of one domain, ordered by (domain, strategy).
pub fn list_read(txn: &ReadTransaction, domain: Option<&str>) -> Result<Vec<Pattern>> {
    let table = txn.open_table(PATTERNS)?;
    let rows = match domain {
        // (d, "") is the smallest key of domain d and (d + "\0", "") the first one after it.
        Some(d) => {
            let next = format!("{d}\0");
            table.range((d, "")..(next.as_str(), ""))?
        }
        None => table.iter()?,
    };
    let mut out = Vec::new();
    for row in rows {
        let (_, bytes) = row?;
        out.push(codec::decode(bytes.value())?);
    }
    Ok(out)
}

impl Store {
    /// [`get_read`] off the async runtime.
    pub async fn pattern(&self, domain: &str, strategy: &str) -> Result<Option<Pattern>> {
        let (domain, strategy) = (domain.to_owned(), strategy.to_owned());
        self.read(move |txn| get_read(txn, &domain, &strategy))
            .await
    }

    /// [`list_read`] off the async runtime.
    pub async fn patterns(&self, domain: Option<&str>) -> Result<Vec<Pattern>> {
        let domain = domain.map(str::to_owned);
        self.read(move |txn| list_read(txn, domain.as_deref()))
            .await
    }
}
