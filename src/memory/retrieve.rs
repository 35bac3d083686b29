//! BM25 retrieval over the index, with a boost for successes and for recent experiences.

use std::collections::{BTreeSet, HashMap};

use redb::{ReadTransaction, ReadableTable};
use serde::Serialize;

use super::index::{outcome_code, tokenize};
use crate::error::Result;
use crate::memory::experience::{self, Experience, Outcome};
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

/// The largest [`boost`] there is: a brand-new success.
const MAX_BOOST: f64 = (1.0 + SUCCESS_BOOST) * (1.0 + RECENCY_BOOST);

/// A document met while scanning postings.
struct Candidate {
    /// BM25 text score so far.
    text: f64,
    /// [`boost`] of the document.
    boost: f64,
    /// Index into the searched domains.
    domain: usize,
}

/// A query term with its weight.
struct Term {
    text: String,
    idf: f64,
}

/// The best `limit` experiences for the query, best first (ties: newer first).
///
/// Exact top-k with early termination (term-at-a-time, rarest term first): a term can add at
/// most `idf * (k1 + 1)` to a document's text score. Once the k-th best score so far beats
/// what the remaining terms could give a document not yet seen, the remaining postings are
/// not scanned; only the candidates that could still reach the top k get point lookups.
/// Common terms, which have the longest posting lists and the smallest weights, are the ones
/// skipped.
pub fn search_read(txn: &ReadTransaction, q: &Query<'_>) -> Result<Vec<Hit>> {
    let words: BTreeSet<String> = tokenize(q.text).into_iter().collect();
    if words.is_empty() || q.limit == 0 {
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
    let mut terms = Vec::new();
    for word in words {
        if let Some(df) = df_table.get(word.as_str())?.map(|v| v.value() as f64) {
            let idf = (1.0 + (docs - df + 0.5) / (df + 0.5)).ln();
            terms.push(Term { text: word, idf });
        }
    }
    terms.sort_by(|a, b| b.idf.total_cmp(&a.idf).then_with(|| a.text.cmp(&b.text)));
    // rest[j]: the most terms j.. can add to a text score.
    let mut rest = vec![0.0; terms.len() + 1];
    for j in (0..terms.len()).rev() {
        rest[j] = rest[j + 1] + terms[j].idf * (K1 + 1.0);
    }
    let postings = txn.open_table(MEMORY_POSTINGS)?;
    let success = outcome_code(Outcome::Success);
    let wanted = |outcome: u8| !q.successes_only || outcome == success;
    let bm25 = |idf: f64, tf: u32, len: u32| {
        let tf = f64::from(tf);
        idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * f64::from(len) / avg_len))
    };
    let mut found: HashMap<u64, Candidate> = HashMap::new();
    let mut j = 0;
    while j < terms.len() {
        if let Some(threshold) = kth_score(&found, q.limit) {
            if threshold > rest[j] * MAX_BOOST {
                // No unseen document can make the top k: finish the candidates that can.
                found.retain(|_, c| (c.text + rest[j]) * c.boost >= threshold);
                for (&id, c) in found.iter_mut() {
                    for term in &terms[j..] {
                        let key = (domains[c.domain].as_str(), term.text.as_str(), id);
                        if let Some(v) = postings.get(key)? {
                            let (tf, len, _, _) = v.value();
                            c.text += bm25(term.idf, tf, len);
                        }
                    }
                }
                break;
            }
        }
        let term = &terms[j];
        for (di, domain) in domains.iter().enumerate() {
            let (d, t) = (domain.as_str(), term.text.as_str());
            for row in postings.range((d, t, 0)..=(d, t, u64::MAX))? {
                let (key, value) = row?;
                let (tf, len, outcome, created_at) = value.value();
                if !wanted(outcome) {
                    continue;
                }
                let c = found.entry(key.value().2).or_insert_with(|| Candidate {
                    text: 0.0,
                    boost: boost(outcome == success, created_at, q.now),
                    domain: di,
                });
                c.text += bm25(term.idf, tf, len);
            }
        }
        j += 1;
    }
    let mut hits: Vec<Hit> = found
        .into_iter()
        .map(|(id, c)| Hit {
            id,
            score: c.text * c.boost,
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.id.cmp(&a.id)));
    hits.truncate(q.limit);
    Ok(hits)
}

/// The k-th best final score among the candidates, once there are k of them.
fn kth_score(found: &HashMap<u64, Candidate>, k: usize) -> Option<f64> {
    if found.len() < k {
        return None;
    }
    let mut scores: Vec<f64> = found.values().map(|c| c.text * c.boost).collect();
    let (_, kth, _) = scores.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    Some(*kth)
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
