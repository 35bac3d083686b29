//! Experiences that teach: the experience log and its per-domain patterns, judging answers
//! against expectations, strategies and the bandit that picks one, a full-text index of
//! experiences with BM25 retrieval, memory sections in prompts, and insight rules learned
//! from successes and failures. See docs/memory.md.
//!
//! The operations on experiences and patterns are methods of [`Store`](crate::store::Store)
//! defined here ([`experience`], [`pattern`]): the store holds the file, this layer says what
//! an experience is.

pub mod apply;
pub mod bandit;
pub mod experience;
pub mod index;
pub mod insights;
pub mod judge;
pub mod pattern;
pub mod prompt;
pub mod record;
pub mod reply;
pub mod retrieve;
pub mod rules;
pub mod strategy;

use serde::{Deserialize, Serialize};

pub use judge::{Expectation, MatchRule};
pub use strategy::Strategy;

/// Memory settings of the workers (the `[memory]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Strategies the bandit chooses among for lines that name none.
    pub strategies: Vec<Strategy>,
    /// Worked examples put in a prompt at most.
    pub k: usize,
    /// Token budget of the memory section (estimated as characters / 4).
    pub token_budget: usize,
    /// Without an expected answer, a structured answer with at least this confidence counts
    /// as a success, below it as a failure.
    pub confidence_threshold: f64,
    /// Successes and failures (each) shown to the model by `reasonq insights`.
    pub insight_examples: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            strategies: vec![Strategy::DIRECT],
            k: 3,
            token_budget: 1000,
            confidence_threshold: 0.7,
            insight_examples: 10,
        }
    }
}
