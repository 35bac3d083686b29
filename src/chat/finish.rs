//! Completing a chat job, the one way: the response record, the job's completion and its
//! experience in one transaction (with whatever else the strategy commits alongside), then
//! the run's counters.

use redb::WriteTransaction;

use super::ResponseRecord;
use crate::codec;
use crate::error::Result;
use crate::memory::experience::{self, NewExperience};
use crate::runner::{JobCtx, RunStats};

/// How a chat job ended well.
pub struct Answer {
    /// The job's result, as exported.
    pub record: ResponseRecord,
    /// What was learned, recorded with the completion.
    pub experience: NewExperience,
    /// Tokens this run paid for, counted at completion when the answer was not cached
    /// (`None`: already counted, step by step).
    pub tokens: Option<(u64, u64)>,
}

/// Completes the job with `answer`; `also` runs in the same transaction. A lost lease is not
/// an error: the job's new owner records it.
pub async fn finish<F>(ctx: &JobCtx, answer: Answer, also: F) -> Result<()>
where
    F: Fn(&WriteTransaction, u64) -> Result<()> + Send + 'static,
{
    let Answer {
        record,
        experience,
        tokens,
    } = answer;
    let cached = record.cached;
    let result = codec::encode(&record)?;
    let committed = ctx
        .complete(result, move |txn, now| {
            experience::record_in(txn, &experience, now)?;
            also(txn, now)
        })
        .await?;
    if committed {
        let stats = ctx.stats();
        if cached {
            RunStats::bump(&stats.cached);
        } else if let Some((prompt, completion)) = tokens {
            stats.add_tokens(prompt, completion);
        }
    }
    Ok(())
}
