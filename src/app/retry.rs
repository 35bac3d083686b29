//! Sending failed lines again: every discarded (or cancelled) job of a batch's current file,
//! or those with one error code.

use redb::ReadTransaction;

use super::App;
use crate::batch::lines;
use crate::error::Result;
use crate::queue::{finished_read, JobState};
use crate::runner::FailureRecord;
use crate::store::tables;

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
/// how many (see [`matching_read`]).
pub async fn retry_failed(app: &App, batch: &str, filter: &RetryFilter) -> Result<usize> {
    let (b, f) = (batch.to_string(), filter.clone());
    let ids = app
        .store
        .read(move |txn| matching_read(txn, &b, &f))
        .await?;
    app.queue.retry_many(&ids).await?;
    Ok(ids.len())
}

/// The failed jobs of `batch` that `filter` picks, among the jobs of its current file's
/// lines (an older job of a line since edited does not count). Reads the jobs that ended in
/// the filter's state, not the whole batch.
pub(super) fn matching_read(
    txn: &ReadTransaction,
    batch: &str,
    filter: &RetryFilter,
) -> Result<Vec<u64>> {
    let listed = txn.open_table(tables::JOB_LINES)?;
    let mut ids = Vec::new();
    finished_read(txn, filter.state, |job| {
        if job.queue != batch || !lines::is_listed(&listed, job.id)? {
            return Ok(());
        }
        let code_matches = match &filter.code {
            Some(code) => job
                .last_error
                .as_deref()
                .is_some_and(|e| FailureRecord::from_last_error(e).code == *code),
            None => true,
        };
        if code_matches {
            ids.push(job.id);
        }
        Ok(())
    })?;
    ids.sort_unstable();
    Ok(ids)
}
