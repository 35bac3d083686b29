//! Chat jobs run through a provider's own batch API (half price, answers within hours)
//! instead of one call each: see `docs/provider-batch.md`.
//!
//! The life of a provider batch, each step durable before the next ([`records`]):
//!
//! 1. **Recorded**: waiting lines are shaped (strategy, memory) exactly as a live call
//!    would send them; the ones the cache answers complete at once; the others are written
//!    with their request bodies and leased to the record ([`crate::queue::REMOTE_LEASE`]:
//!    never rescued by a restart) in one transaction.
//! 2. **Staged**: the input is uploaded (a file, or xAI's empty named batch); its id is
//!    recorded.
//! 3. **Started**: the batch is created; its id is recorded. It is polled with a backoff.
//! 4. **Collected**: its results are completed through the same path as live answers
//!    ([`super::single::complete`]: experience, patterns, cache row, tokens); lines it did
//!    not answer go back to the queue with the provider's reason; the lines are deleted.
//!
//! A kill between a step and its record leaves the record one phase behind: on resume the
//! driver asks the provider for the record's tag before doing that step again, so nothing
//! is uploaded or submitted twice.

mod driver;
pub mod records;

use std::sync::Mutex;
use std::time::Duration;

pub use driver::{RemoteEnd, RemoteRun};
pub use records::{Phase, RemoteRecord};

/// How provider batches are sized and polled.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// Most lines per provider batch (below the protocol's own limit, which also applies).
    pub max_lines: usize,
    /// First wait between polls of a running batch; doubles up to `poll_max`.
    pub poll_min: Duration,
    pub poll_max: Duration,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            max_lines: 50_000,
            poll_min: Duration::from_secs(5),
            poll_max: Duration::from_secs(5 * 60),
        }
    }
}

/// What the provider batches of a run look like now, for a progress line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteView {
    /// Provider batches not yet collected.
    pub open: usize,
    /// Their lines, and how many the provider reports finished well or failed.
    pub lines: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The provider's states, e.g. `2 in_progress, 1 finalizing`.
    pub states: String,
}

/// Shared between the driver (which writes) and a progress display (which reads).
#[derive(Debug, Default)]
pub struct RemoteWatch(Mutex<RemoteView>);

impl RemoteWatch {
    /// The latest view.
    pub fn view(&self) -> RemoteView {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, view: RemoteView) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }
}
