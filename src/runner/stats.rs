//! Live counters of a run, read by the progress line and kept in the run record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Counters the runner and the job handlers bump as jobs end.
#[derive(Debug, Default)]
pub struct RunStats {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub cached: AtomicU64,
    /// Jobs sent back to the queue to be tried again later (backoff or snooze).
    pub retried: AtomicU64,
    /// Jobs returned to the queue by a shutdown.
    pub returned: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Snoozes the server asked for (`Retry-After`), for the progress line; not part of
    /// [`RunCounts`], whose layout is stored in run records.
    pub server_waits: AtomicU64,
    /// Failed attempts by (error code, whether the job failed for good), for `/metrics`.
    errors: Mutex<BTreeMap<(String, bool), u64>>,
    /// Picodollars of this run's priced answers, and answers of models without a price
    /// (for the progress line and the summary; not in [`RunCounts`] either).
    pub cost_pico: AtomicU64,
    pub unpriced: AtomicU64,
}

/// A point-in-time copy of [`RunStats`] (but `server_waits`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunCounts {
    pub completed: u64,
    pub failed: u64,
    pub cached: u64,
    pub retried: u64,
    pub returned: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl RunCounts {
    /// Adds another run's counters to these.
    pub fn add(&mut self, other: &RunCounts) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.cached += other.cached;
        self.retried += other.retried;
        self.returned += other.returned;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

impl RunStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> RunCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RunCounts {
            completed: get(&self.completed),
            failed: get(&self.failed),
            cached: get(&self.cached),
            retried: get(&self.retried),
            returned: get(&self.returned),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
        }
    }

    /// Counts `n` jobs completed from the cache without running (`chat::prefill`).
    pub fn answered_from_cache(&self, n: u64) {
        self.completed.fetch_add(n, Ordering::Relaxed);
        self.cached.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts tokens billed by a call (not those of cache hits).
    pub fn add_tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    /// Counts a failed attempt with `code`; `last` when the job failed for good.
    pub fn count_error(&self, code: &str, last: bool) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((code.to_string(), last))
            .or_default() += 1;
    }

    /// Failed attempts by (error code, failed for good).
    pub fn errors(&self) -> BTreeMap<(String, bool), u64> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts one answer's cost (`None`: a model without a price).
    pub fn add_cost(&self, cost: Option<crate::cost::Money>) {
        match cost {
            Some(cost) => {
                self.cost_pico.fetch_add(cost.0, Ordering::Relaxed);
            }
            None => {
                self.unpriced.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// This run's spend so far, and how many answers it could not price.
    pub fn cost(&self) -> (crate::cost::Money, u64) {
        (
            crate::cost::Money(self.cost_pico.load(Ordering::Relaxed)),
            self.unpriced.load(Ordering::Relaxed),
        )
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
