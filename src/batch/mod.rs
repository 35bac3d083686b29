//! Batches: reading input files, turning lines into jobs, and writing results in OpenAI's
//! batch output format.

pub mod export;
pub mod input;
pub mod output;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::memory::Expectation;

/// The payload of a chat job, encoded with the store codec.
///
/// The request body is kept as JSON text, exactly as it will be sent (bincode cannot carry a
/// free-form `serde_json::Value`, and text keeps the caller's key order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatJob {
    pub custom_id: String,
    /// 1-based line of the input file it came from.
    pub line: u64,
    pub body: String,
    pub domain: String,
    /// The line's strategy name; `None` lets the bandit choose.
    pub strategy: Option<String>,
    /// Expected answer and match rule, for evaluation batches.
    pub expected: Option<Expectation>,
    /// Put memory (worked examples and rules) into the prompt.
    pub memory: bool,
}

impl ChatJob {
    /// The job for one input line.
    pub fn from_item(item: &input::BatchItem) -> ChatJob {
        ChatJob {
            custom_id: item.custom_id.clone(),
            line: item.line as u64,
            body: item.body.clone(),
            domain: item.domain.clone(),
            strategy: item.strategy.clone(),
            expected: item.expected.clone(),
            memory: item.memory.unwrap_or(false),
        }
    }

    /// The dedup key that makes enqueueing idempotent: the same id with the same request
    /// against the same endpoint is the same job; an edited line becomes a new job.
    pub fn dedup_key(&self, endpoint: &str) -> String {
        let mut h = Sha256::new();
        h.update(endpoint.as_bytes());
        h.update([0]);
        h.update(self.body.as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}#{hex}", self.custom_id)
    }
}
