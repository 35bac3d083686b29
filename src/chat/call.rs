//! Lines for the other endpoints of an OpenAI batch file (responses, embeddings,
//! completions, moderations): the body is sent as it is, through the same gateway (cache,
//! retries, rate limits, breaker) and completed the same way, without a strategy, memory
//! or an experience (those are about chat).

use std::time::Instant;

use super::engine::{bad_payload, Engine};
use super::finish::{finish, Answer};
use super::ChatJob;
use crate::error::Result;
use crate::runner::{CallError, JobCtx};

/// Runs `job` with one request to its endpoint.
pub(super) async fn run(engine: &Engine, ctx: JobCtx, job: ChatJob) -> Result<()> {
    let body: serde_json::Value = match serde_json::from_str(&job.body) {
        Ok(body) => body,
        Err(e) => return bad_payload(&ctx, format!("request body is not JSON: {e}")).await,
    };
    let heartbeat = ctx.heartbeat();
    let started = Instant::now();
    let outcome = engine.gateway.call_api_deferred(job.api, &body).await;
    drop(heartbeat);
    let (response, hit, cache_write) = match outcome {
        Ok(answered) => answered,
        Err(CallError::Store(e)) => return Err(e),
        Err(CallError::Llm(e)) => return ctx.fail_call(e).await,
        Err(CallError::Halted(_)) => return ctx.release().await,
    };
    let usage = response.response.usage.clone().unwrap_or_default();
    let record = engine.record_of(&job, &response, hit, started.elapsed(), None);
    let answer = Answer {
        record,
        experience: None,
        tokens: Some((usage.prompt_tokens, usage.completion_tokens)),
        cache: cache_write,
    };
    finish(&ctx, &job, answer, |_, _| Ok(())).await
}
