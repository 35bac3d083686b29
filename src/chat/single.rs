//! The one-call strategies (direct, chain of thought, structured): shape the request with
//! the strategy's instructions and the memory section, make one call, judge the reply.

use std::time::Instant;

use super::engine::{bad_payload, Engine};
use super::finish::{finish, Answer};
use super::structured::{self, Required};
use super::{question_of, saturate, ChatJob};
use crate::cache::Hit;
use crate::clock::now_ms;
use crate::cost::Money;
use crate::error::Result;
use crate::llm::ChatOutcome;
use crate::memory::experience::{ExperienceData, NewExperience};
use crate::memory::prompt::{self, MemorySection};
use crate::memory::{apply, rules, Strategy};
use crate::queue::{add_usage_in, Failure, Usage};
use crate::runner::{CacheWrite, CallError, FailureRecord, JobCtx, RunStats};
use crate::store::Store;

/// Runs `job` with one call shaped by `strategy`.
pub(super) async fn run(
    engine: &Engine,
    ctx: JobCtx,
    job: ChatJob,
    strategy: Strategy,
) -> Result<()> {
    let Shaped { body, memory } = match shape(engine, ctx.store(), &job, strategy).await? {
        Ok(shaped) => shaped,
        Err(message) => return bad_payload(&ctx, message).await,
    };
    // Checks that cannot be made end the job before anything is paid for.
    let Some(required) = required(&ctx, &job).await? else {
        return Ok(());
    };
    let heartbeat = ctx.heartbeat();
    let started = Instant::now();
    let mut outcome = engine.gateway.call_deferred(&body).await;
    // A cached reply that fails its check is no answer: this attempt asks the model again.
    if let Ok((response, Hit::Memory | Hit::Disk, _)) = &outcome {
        if required.violation(&response.response).is_some() {
            outcome = engine.gateway.call_fresh(&body).await;
        }
    }
    drop(heartbeat);
    match outcome {
        Ok((response, hit, cache_write)) => {
            let reply = Reply {
                strategy,
                memory,
                hit,
                cache_write,
                latency: started.elapsed(),
                provider_batch: None,
            };
            complete(engine, &ctx, &job, response, reply).await
        }
        Err(CallError::Store(e)) => Err(e),
        Err(CallError::Llm(e)) => ctx.fail_call(e).await,
        Err(CallError::Halted(_)) => ctx.release().await,
    }
}

/// A one-call request shaped by its strategy and memory: the exact body to send.
pub(crate) struct Shaped {
    pub body: serde_json::Value,
    pub memory: MemorySection,
}

/// Shapes `job`'s request for `strategy`, with its memory section. The inner error is a
/// payload no call can use (the job's own fault).
pub(crate) async fn shape(
    engine: &Engine,
    store: &Store,
    job: &ChatJob,
    strategy: Strategy,
) -> Result<std::result::Result<Shaped, String>> {
    let mut body: serde_json::Value = match serde_json::from_str(&job.body) {
        Ok(body) => body,
        Err(e) => return Ok(Err(format!("request body is not JSON: {e}"))),
    };
    let memory = memory_for(engine, store, job).await?;
    apply::shape(&mut body, strategy, &memory);
    Ok(Ok(Shaped { body, memory }))
}

/// The memory section of a job's prompt (empty when memory is off).
async fn memory_for(engine: &Engine, store: &Store, job: &ChatJob) -> Result<MemorySection> {
    if !job.memory {
        return Ok(MemorySection::default());
    }
    let question = question_of(&job.body);
    let domain = job.domain.clone();
    let settings = &engine.settings.memory;
    let (k, budget) = (settings.k, settings.token_budget);
    let now = now_ms();
    // Experiences recorded a moment ago are searched too.
    crate::memory::index::catch_up(store).await?;
    store
        .read(move |txn| prompt::build_read(txn, &domain, &question, k, budget, now))
        .await
}

/// What a successful call brings to the completion besides the response.
pub(crate) struct Reply {
    pub strategy: Strategy,
    pub memory: MemorySection,
    pub hit: Hit,
    /// The fresh response's disk-cache write, committed with the completion.
    pub cache_write: Option<CacheWrite>,
    /// From sending the request to its answer.
    pub latency: std::time::Duration,
    /// The provider's batch the answer came through, if it did.
    pub provider_batch: Option<String>,
}

/// Judges the reply and finishes the job, with the rule scores of the memory it used and the
/// fresh response's cache row in the same transaction.
pub(crate) async fn complete(
    engine: &Engine,
    ctx: &JobCtx,
    job: &ChatJob,
    outcome: ChatOutcome,
    reply: Reply,
) -> Result<()> {
    let Reply {
        strategy,
        memory,
        hit,
        cache_write,
        latency,
        provider_batch,
    } = reply;
    let record = engine.record_of(job, &outcome, hit, latency, provider_batch);
    let usage = outcome.response.usage.clone().unwrap_or_default();
    // Checked here, not only in `run`: provider-batch answers come through this way too.
    let Some(required) = required(ctx, job).await? else {
        return Ok(());
    };
    if let Some(violation) = required.violation(&outcome.response) {
        return rejected(ctx, job, &record, &usage, violation).await;
    }
    let Learned {
        mut answer,
        used_rules,
        outcome: judged_outcome,
    } = learned(
        engine,
        job,
        &outcome,
        record,
        strategy,
        memory,
        ctx.job().id,
    );
    answer.cache = cache_write;
    let domain = job.domain.clone();
    finish(ctx, job, answer, move |txn, _now| {
        rules::apply_outcome_in(txn, &domain, &used_rules, judged_outcome)
    })
    .await
}

/// What a judged reply completes its job with, and what the rules it was shown learn.
pub(crate) struct Learned {
    pub answer: Answer,
    pub used_rules: Vec<u64>,
    pub outcome: crate::memory::record::Outcome,
}

/// Judges `outcome` by `strategy` and makes the job's answer and experience of it: a pure
/// function, shared by the live completion and answers known at enqueue (`chat::prefill`).
pub(crate) fn learned(
    engine: &Engine,
    job: &ChatJob,
    outcome: &ChatOutcome,
    record: crate::chat::ResponseRecord,
    strategy: Strategy,
    memory: MemorySection,
    job_id: u64,
) -> Learned {
    let usage = outcome.response.usage.clone().unwrap_or_default();
    let judged = apply::judge_reply(
        strategy,
        outcome.response.content().unwrap_or_default(),
        job.expected.as_ref(),
        engine.settings.memory.confidence_threshold,
    );
    // The model's own reasoning channel, when the strategy found no steps in the text.
    let reasoning = if judged.reasoning.is_empty() {
        outcome
            .response
            .choices
            .first()
            .and_then(|c| c.message.reasoning_content.clone())
            .into_iter()
            .collect()
    } else {
        judged.reasoning
    };
    let mut tags = Vec::new();
    if judged.parse_error.is_some() {
        tags.push(apply::PARSE_ERROR_TAG.to_string());
    }
    if !memory.used_experiences.is_empty() || !memory.used_rules.is_empty() {
        tags.push(apply::MEMORY_TAG.to_string());
    }
    let experience = NewExperience {
        created_at: None,
        data: ExperienceData {
            question: question_of(&job.body),
            context: judged.parse_error.map(|e| format!("parse error: {e}")),
            reasoning,
            answer: judged.answer,
            confidence: judged.confidence,
            outcome: judged.outcome,
            domain: job.domain.clone(),
            strategy: strategy.name().to_string(),
            tags,
            model: outcome.response.model.clone().unwrap_or_default(),
            prompt_tokens: saturate(usage.prompt_tokens),
            completion_tokens: saturate(usage.completion_tokens),
            latency_ms: record.latency_ms,
            job_id: Some(job_id),
            used_experiences: memory.used_experiences,
        },
    };
    Learned {
        answer: Answer {
            record,
            experience: Some(experience),
            tokens: Some((usage.prompt_tokens, usage.completion_tokens)),
            cache: None,
        },
        used_rules: memory.used_rules,
        outcome: judged.outcome,
    }
}

/// The checks of `job`'s reply; `None`: none can be made (the job was discarded).
async fn required(ctx: &JobCtx, job: &ChatJob) -> Result<Option<Required>> {
    match Required::of(ctx.store(), &job.body, job.validate.as_deref()).await? {
        Ok(required) => Ok(Some(required)),
        Err(message) => bad_payload(ctx, message).await.map(|()| None),
    }
}

/// A reply that failed its check: the attempt is spent (retried while attempts are left,
/// else the line fails with [`structured::INVALID`]); what it cost is counted with it.
async fn rejected(
    ctx: &JobCtx,
    job: &ChatJob,
    record: &crate::chat::ResponseRecord,
    usage: &crate::llm::Usage,
    violation: String,
) -> Result<()> {
    tracing::debug!(job = ctx.job().id, %violation, "reply failed its structure check");
    let failure = FailureRecord::new(
        structured::INVALID,
        format!(
            "line {} ({}): the reply does not match the requested structure: {violation}",
            job.line, job.custom_id
        ),
    );
    let paid = (!record.cached).then(|| Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cost: record.cost.unwrap_or(Money::ZERO),
        ..Usage::default()
    });
    RunStats::bump(&ctx.stats().retried);
    if let Some(paid) = &paid {
        ctx.stats()
            .add_tokens(paid.prompt_tokens, paid.completion_tokens);
        if record.cost.is_some() {
            ctx.stats().add_cost(record.cost);
        }
    }
    let queue = ctx.job().queue.clone();
    ctx.fail_with(&failure, Failure::Retryable, move |txn| match &paid {
        Some(paid) => add_usage_in(txn, &queue, *paid),
        None => Ok(()),
    })
    .await
}
