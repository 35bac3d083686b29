//! Completing a chat job, the one way: the response record, the job's completion and its
//! experience in one transaction (with whatever else the strategy commits alongside), then
//! the run's counters.

use redb::WriteTransaction;

use super::{ChatJob, ResponseRecord};
use crate::codec::{self, CodecError};
use crate::cost::Money;
use crate::error::{Error, Result};
use crate::memory::experience::{self, NewExperience};
use crate::queue::{add_usage_in, Failure, Usage};
use crate::runner::{FailureRecord, JobCtx, RunStats};

/// How a chat job ended well.
pub struct Answer {
    /// The job's result, as exported.
    pub record: ResponseRecord,
    /// What was learned, recorded with the completion (none for requests to other
    /// endpoints than chat completions: memory is about chat).
    pub experience: Option<NewExperience>,
    /// Tokens this run paid for, counted at completion when the answer was not cached
    /// (`None`: already counted, step by step).
    pub tokens: Option<(u64, u64)>,
}

/// Completes `job` with `answer`; `also` runs in the same transaction. A lost lease is not
/// an error: the job's new owner records it. An answer too large to store fails this job
/// alone (`result_too_large`, naming its line), never the run.
pub async fn finish<F>(ctx: &JobCtx, job: &ChatJob, answer: Answer, also: F) -> Result<()>
where
    F: Fn(&WriteTransaction, u64) -> Result<()> + Send + 'static,
{
    let Answer {
        record,
        experience,
        tokens,
    } = answer;
    let cached = record.cached;
    let result = match encoded(&record) {
        Ok(bytes) => bytes,
        Err(e) => return unstorable(ctx, job, &e).await,
    };
    let usage = usage_of(&record, tokens);
    let cost = usage_cost(&usage);
    let queue = ctx.job().queue.clone();
    let body = record.body.into_bytes();
    let committed = ctx
        .complete(result, Some(body), move |txn, now| {
            if let Some(experience) = &experience {
                experience::record_deferred_in(txn, experience, now)?;
            }
            add_usage_in(txn, &queue, usage)?;
            also(txn, now)
        })
        .await;
    let committed = match committed {
        Ok(committed) => committed,
        // The job record with its result (or the experience) does not fit in a record.
        Err(Error::Codec(e)) => return unstorable(ctx, job, &e).await,
        Err(e) => return Err(e),
    };
    if committed {
        let stats = ctx.stats();
        if cached {
            RunStats::bump(&stats.cached);
        } else if let Some((prompt, completion)) = tokens {
            stats.add_tokens(prompt, completion);
        }
        stats.add_cost(cost);
    }
    Ok(())
}

/// `record` encoded for the job's result; the error says why it cannot be stored.
pub(crate) fn encoded(record: &ResponseRecord) -> std::result::Result<Vec<u8>, CodecError> {
    if record.body.len() > codec::MAX_RECORD_BYTES {
        return Err(CodecError::Encode(format!(
            "the body is {} bytes, more than the {} byte limit",
            record.body.len(),
            codec::MAX_RECORD_BYTES
        )));
    }
    codec::encode(record)
}

/// What the answer `record` adds to its batch's totals; `tokens` as in [`Answer::tokens`].
pub(crate) fn usage_of(record: &ResponseRecord, tokens: Option<(u64, u64)>) -> Usage {
    let mut usage = match (record.cached, tokens) {
        (true, _) => Usage {
            cached: 1,
            ..Usage::default()
        },
        (false, Some((prompt_tokens, completion_tokens))) => Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        },
        // Counted step by step (blackboard): the record's usage is the session's total.
        (false, None) => {
            let (prompt_tokens, completion_tokens) = record.usage();
            Usage {
                prompt_tokens,
                completion_tokens,
                ..Usage::default()
            }
        }
    };
    // A cache hit paid nothing.
    match if record.cached {
        Some(Money::ZERO)
    } else {
        record.cost
    } {
        Some(cost) => {
            usage.cost = cost;
            usage.priced = 1;
        }
        None => usage.unpriced = 1,
    }
    usage
}

/// The cost in `usage` of one answer, `None` when unpriced.
fn usage_cost(usage: &Usage) -> Option<Money> {
    (usage.priced > 0).then_some(usage.cost)
}

/// Discards a job whose answer cannot be stored; the call was made, so the message says so.
async fn unstorable(ctx: &JobCtx, job: &ChatJob, e: &CodecError) -> Result<()> {
    let failure = FailureRecord::new(
        "result_too_large",
        format!(
            "line {} ({}): the answer cannot be stored ({e}); lower max_tokens or split the \
             request",
            job.line, job.custom_id
        ),
    );
    ctx.fail(&failure, Failure::Fatal).await
}
