//! Completing a chat job, the one way: the response record, the job's completion and its
//! experience in one transaction (with whatever else the strategy commits alongside), then
//! the run's counters.

use redb::WriteTransaction;

use super::{ChatJob, ResponseRecord};
use crate::codec::{self, CodecError};
use crate::cost::Money;
use crate::error::{Error, Result};
use crate::memory::experience::{self, Indexing, NewExperience};
use crate::queue::{add_usage_in, Failure, Usage};
use crate::runner::{CacheWrite, Extras, FailureRecord, JobCtx, RunStats};

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
    /// The disk-cache row of a fresh answer, written with it.
    pub cache: Option<CacheWrite>,
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
        cache,
    } = answer;
    let cached = record.cached;
    let result = match encoded(&record) {
        Ok(bytes) => bytes,
        Err(e) => return unstorable(ctx, job, &e).await,
    };
    let usage = usage_of(&record, tokens);
    let cost = usage_cost(&usage);
    let settle = cache.as_ref().map(CacheWrite::settler);
    let extras = ChatExtras {
        experience,
        cache,
        queue: ctx.job().queue.clone(),
        usage,
        also: Box::new(also),
    };
    let body = record.body.into_bytes();
    let committed = ctx.complete(result, Some(body), extras).await;
    let committed = match committed {
        Ok(committed) => committed,
        // The job record with its result (or the experience) does not fit in a record.
        Err(Error::Codec(e)) => return unstorable(ctx, job, &e).await,
        Err(e) => return Err(e),
    };
    if committed {
        if let Some(settle) = settle {
            settle();
        }
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

/// What a chat job's completion writes beside the queue's part.
struct ChatExtras {
    experience: Option<NewExperience>,
    cache: Option<CacheWrite>,
    /// The batch whose totals `usage` adds to.
    queue: String,
    usage: Usage,
    /// The strategy's own writes (rule scores, a blackboard).
    also: AlsoFn,
}

/// A strategy's own writes in a completion's transaction, given the commit time.
type AlsoFn = Box<dyn Fn(&WriteTransaction, u64) -> Result<()> + Send>;

impl Extras for ChatExtras {
    /// The experiences of a burst in one record call (their tables opened once, each
    /// domain's counter and pattern written once) and each batch's totals in one write.
    fn apply_all(txn: &WriteTransaction, done: &[&Self], now: u64) -> Result<()> {
        let experiences: Vec<&NewExperience> =
            done.iter().filter_map(|d| d.experience.as_ref()).collect();
        experience::record_with_in(txn, &experiences, now, Indexing::Deferred)?;
        let mut totals: Vec<(&str, Usage)> = Vec::new();
        for d in done {
            match totals.iter_mut().find(|(q, _)| *q == d.queue) {
                Some((_, sum)) => sum.add(&d.usage),
                None => totals.push((&d.queue, d.usage)),
            }
        }
        for (queue, usage) in totals {
            add_usage_in(txn, queue, usage)?;
        }
        let rows: Vec<&CacheWrite> = done.iter().filter_map(|d| d.cache.as_ref()).collect();
        CacheWrite::put_all_in(txn, &rows)?;
        done.iter().try_for_each(|d| (d.also)(txn, now))
    }
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
