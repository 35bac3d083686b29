//! Lines the disk cache answers already, completed in the commit that enqueues them: a
//! replay of prompts answered before costs a lookup and its share of one commit per chunk,
//! instead of a lease, a run and a completion each.
//!
//! Only a line whose request is known before the drain qualifies: a one-call strategy fixed
//! by the line or the run (not the bandit's pick), no memory in the prompt (it changes as
//! the batch runs), no structure check (the schema is read at run time), and a body the
//! cache policy admits. Every other line, and every miss, runs as usual. A prefilled line
//! ends exactly as a live cache hit does: the same result record (tier `disk`), experience
//! and batch totals.

use std::sync::Arc;
use std::time::Duration;

use redb::WriteTransaction;

use super::engine::Engine;
use super::finish::{encoded, usage_of};
use super::handler::ChatHandler;
use super::single::{self, Learned};
use super::ChatJob;
use crate::cache::{CacheKey, Hit};
use crate::error::Result;
use crate::llm::{Api, ChatOutcome};
use crate::memory::experience::{self, Indexing, NewExperience};
use crate::memory::prompt::MemorySection;
use crate::memory::strategy::Execution;
use crate::memory::{apply, Strategy};
use crate::queue::{add_usage_in, Known, Usage};

/// Answers lines from the disk cache before they run.
pub struct Prefill {
    engine: Arc<Engine>,
}

/// A line the cache answered, ready to complete its job.
pub struct Prefilled {
    result: Vec<u8>,
    body: Vec<u8>,
    experience: NewExperience,
    usage: Usage,
}

impl Prefill {
    /// Answers for the jobs `handler` runs, with its engine's settings and cache.
    pub fn new(handler: &ChatHandler) -> Prefill {
        Prefill {
            engine: handler.engine(),
        }
    }

    /// The exact request `job` will send and its strategy, when both are known now.
    fn known(&self, job: &ChatJob) -> Option<(Strategy, CacheKey)> {
        if job.api != Api::ChatCompletions || job.memory || job.structured() {
            return None;
        }
        let strategy = self.engine.fixed_strategy(job)?.ok()?;
        if strategy.execution() != Execution::OneCall {
            return None;
        }
        let mut body: serde_json::Value = serde_json::from_str(&job.body).ok()?;
        // As `single::shape` does with an empty memory section.
        apply::shape(&mut body, strategy, &MemorySection::default());
        Some((strategy, self.engine.gateway.cache_key(&body)?))
    }

    /// The cached answers of `jobs` (their index in the caller's chunk with the job), in one
    /// read transaction. Blocking: call it off the async runtime.
    pub fn answers_blocking(&self, jobs: &[(usize, ChatJob)]) -> Result<Vec<(usize, Prefilled)>> {
        let known: Vec<(usize, &ChatJob, Strategy, CacheKey)> = jobs
            .iter()
            .filter_map(|(i, job)| self.known(job).map(|(s, key)| (*i, job, s, key)))
            .collect();
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<CacheKey> = known.iter().map(|(.., key)| *key).collect();
        let found = self.engine.gateway.disk_answers_blocking(&keys)?;
        let mut out = Vec::new();
        for ((i, job, strategy, _), cached) in known.into_iter().zip(found) {
            let Some(cached) = cached else { continue };
            let Ok(outcome) =
                ChatOutcome::from_parts(cached.status, cached.request_id.clone(), cached.body)
            else {
                // A row that no longer parses is no answer: the line runs and asks again.
                continue;
            };
            let record = self
                .engine
                .record_of(job, &outcome, Hit::Disk, Duration::ZERO, None);
            let Ok(result) = encoded(&record) else {
                continue;
            };
            let usage = usage_of(&record, None);
            let body = record.body.clone().into_bytes();
            // The job's id is known once it is inserted (see `complete_in`).
            let Learned { answer, .. } = single::learned(
                &self.engine,
                job,
                &outcome,
                record,
                strategy,
                MemorySection::default(),
                0,
            );
            let Some(experience) = answer.experience else {
                continue;
            };
            out.push((
                i,
                Prefilled {
                    result,
                    body,
                    experience,
                    usage,
                },
            ));
        }
        Ok(out)
    }
}

/// The known results of a chunk of `len` jobs for [`crate::queue::enqueue_answered_in`],
/// from `answered` (index in the chunk, its answer).
pub fn known(answered: &[(usize, Prefilled)], len: usize) -> Vec<Known<'_>> {
    let mut out: Vec<Known<'_>> = vec![None; len];
    for (i, p) in answered {
        if let Some(slot) = out.get_mut(*i) {
            *slot = Some((p.result.as_slice(), Some(p.body.as_slice())));
        }
    }
    out
}

/// Records, in `txn`, the experiences and `queue`'s totals of the jobs `answered` (job id,
/// its answer), which the same transaction inserted completed; as their live completions
/// would. Returns how many.
pub fn record_in(
    txn: &WriteTransaction,
    queue: &str,
    answered: &[(u64, &Prefilled)],
    now: u64,
) -> Result<u64> {
    if answered.is_empty() {
        return Ok(0);
    }
    let mut usage = Usage::default();
    let experiences: Vec<NewExperience> = answered
        .iter()
        .map(|(id, p)| {
            usage.add(&p.usage);
            let mut experience = p.experience.clone();
            experience.data.job_id = Some(*id);
            experience
        })
        .collect();
    experience::record_with_in(txn, &experiences, now, Indexing::Deferred)?;
    add_usage_in(txn, queue, usage)?;
    Ok(experiences.len() as u64)
}
