//! BM25 retrieval over the index, with a boost for successes and for recent experiences.

use std::collections::{BTreeSet, HashMap};

use redb::{ReadTransaction, ReadableTable};
use serde::Serialize;

use super::index::{outcome_code, tokenize};
use crate::error::Result;
use crate::store::experience::{self, Experience, Outcome};
use crate::store::tables::{
    EXPERIENCE_COUNTS, MEMORY_DOCS, MEMORY_POSTINGS, MEMORY_STATS, MEMORY_TERMS, MEMORY_TOTAL_LEN,
};

/// BM25 term-frequency saturation.
pub const K1: f64 = 1.2;
/// BM25 length normalisation.
pub const B: f64 = 0.75;
/// A success scores `1 + SUCCESS_BOOST` times its text score.
pub const SUCCESS_BOOST: f64 = 0.5;
/// A brand-new experience scores up to `1 + RECENCY_BOOST` times, halving every
/// [`RECENCY_HALF_LIFE_MS`] of age.
pub const RECENCY_BOOST: f64 = 0.25;
/// See [`RECENCY_BOOST`]: 30 days.
pub const RECENCY_HALF_LIFE_MS: f64 = 30.0 * 24.0 * 3600.0 * 1000.0;

/// What to look for.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub text: &'a str,
    /// Only this domain, or all.
    pub domain: Option<&'a str>,
    /// Hits returned at most.
    pub limit: usize,
    /// Only experiences judged successful.
    pub successes_only: bool,
    /// The time recency is measured from (ms).
    pub now: u64,
}

/// One result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hit {
    pub id: u64,
    pub score: f64,
}

/// The best `limit` experiences for the query, best first (ties: newer first).
pub fn search_read(txn: &ReadTransaction, q: &Query<'_>) -> Result<Vec<Hit>> {
    let terms: BTreeSet<String> = tokenize(q.text).into_iter().collect();
    if terms.is_empty() || q.limit == 0 {
        return Ok(Vec::new());
    }
    let stats = txn.open_table(MEMORY_STATS)?;
    let docs = stats.get(MEMORY_DOCS)?.map_or(0, |v| v.value()) as f64;
    let total_len = stats.get(MEMORY_TOTAL_LEN)?.map_or(0, |v| v.value()) as f64;
    if docs == 0.0 {
        return Ok(Vec::new());
    }
    let avg_len = (total_len / docs).max(1.0);
    let domains: Vec<String> = match q.domain {
        Some(d) => vec![d.to_string()],
        None => {
            let counts = txn.open_table(EXPERIENCE_COUNTS)?;
            let mut all = Vec::new();
            for row in counts.iter()? {
                all.push(row?.0.value().to_string());
            }
            all
        }
    };
    let df_table = txn.open_table(MEMORY_TERMS)?;
    let postings = txn.open_table(MEMORY_POSTINGS)?;
    let success = outcome_code(Outcome::Success);
    // id -> (text score, outcome, created_at)
    let mut scores: HashMap<u64, (f64, u8, u64)> = HashMap::new();
    for term in &terms {
        let Some(df) = df_table.get(term.as_str())?.map(|v| v.value() as f64) else {
            continue;
        };
        let idf = (1.0 + (docs - df + 0.5) / (df + 0.5)).ln();
        for domain in &domains {
            let (d, t) = (domain.as_str(), term.as_str());
            for row in postings.range((d, t, 0)..=(d, t, u64::MAX))? {
                let (key, value) = row?;
                let (tf, len, outcome, created_at) = value.value();
                if q.successes_only && outcome != success {
                    continue;
                }
                let tf = f64::from(tf);
                let norm = K1 * (1.0 - B + B * f64::from(len) / avg_len);
                let entry = scores
                    .entry(key.value().2)
                    .or_insert((0.0, outcome, created_at));
                entry.0 += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
    }
    let mut hits: Vec<Hit> = scores
        .into_iter()
        .map(|(id, (text, outcome, created_at))| Hit {
            id,
            score: text * boost(outcome == success, created_at, q.now),
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.id.cmp(&a.id)));
    hits.truncate(q.limit);
    Ok(hits)
}

/// The multiplier for outcome and age.
pub fn boost(success: bool, created_at: u64, now: u64) -> f64 {
    let age = now.saturating_sub(created_at) as f64;
    let recency = 1.0 + RECENCY_BOOST * 0.5f64.powf(age / RECENCY_HALF_LIFE_MS);
    let outcome = if success { 1.0 + SUCCESS_BOOST } else { 1.0 };
    outcome * recency
}

/// [`search_read`] with the experiences loaded.
pub fn search_experiences_read(
    txn: &ReadTransaction,
    q: &Query<'_>,
) -> Result<Vec<(Experience, f64)>> {
    let mut out = Vec::new();
    for hit in search_read(txn, q)? {
        if let Some(e) = experience::get_read(txn, hit.id)? {
            out.push((e, hit.score));
        }
    }
    Ok(out)
}
