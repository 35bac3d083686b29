//! Sending failed lines again: every discarded (or cancelled) job of a batch, or those with
//! one error code, or those of the lines of the current input file.

use std::collections::HashMap;

use super::App;
use crate::chat::ChatJob;
use crate::codec;
use crate::error::Result;
use crate::queue::{Job, JobState};
use crate::runner::FailureRecord;

/// Which failed jobs go again.
#[derive(Debug, Clone)]
pub struct RetryFilter {
    /// `Discarded` (failed) or `Cancelled`.
    pub state: JobState,
    /// Only jobs whose last error has this code (`bad_request`, `timeout`, ...).
    pub code: Option<String>,
}

impl Default for RetryFilter {
    fn default() -> Self {
        RetryFilter {
            state: JobState::Discarded,
            code: None,
        }
    }
}

/// Puts the matching jobs of `batch` back in the queue with their attempts reset, and says
/// how many (see [`matching`]).
pub async fn retry_failed(app: &App, batch: &str, filter: &RetryFilter) -> Result<usize> {
    let ids = matching(&app.queue.jobs_in_queue(batch).await?, filter, None);
    app.queue.retry_many(&ids).await?;
    Ok(ids.len())
}

/// The failed jobs that `filter` picks. Only the newest job of each request id counts (an
/// older one is a line since edited); with `only`, just the jobs whose dedup key is in it
/// (the current file's lines, keyed to their line numbers).
pub(super) fn matching(
    jobs: &[Job],
    filter: &RetryFilter,
    only: Option<&HashMap<String, u64>>,
) -> Vec<u64> {
    // The newest job of each request id (jobs come in enqueue order).
    let mut newest: HashMap<String, &Job> = HashMap::new();
    for job in jobs {
        let key = codec::decode::<ChatJob>(&job.payload)
            .map_or_else(|_| format!("job-{}", job.id), |c| c.custom_id);
        newest.insert(key, job);
    }
    let mut ids: Vec<u64> = newest
        .into_values()
        .filter(|j| j.state == filter.state)
        .filter(|j| match (only, &j.dedup_key) {
            (Some(keys), Some(k)) => keys.contains_key(k),
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter(|j| match &filter.code {
            Some(code) => j
                .last_error
                .as_deref()
                .is_some_and(|e| FailureRecord::from_last_error(e).code == *code),
            None => true,
        })
        .map(|j| j.id)
        .collect();
    ids.sort_unstable();
    ids
}
