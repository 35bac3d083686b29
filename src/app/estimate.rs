//! `reasonq estimate IN` (and `batch --dry-run`): what running a file would cost, before
//! anything is sent: its lines, those the batch has answered already or the cache holds,
//! the prompt tokens of the rest (tiktoken's encodings for OpenAI models, a documented
//! approximation otherwise) and the cost range live and through the provider's batch API.
//! The file is read twice, streaming (checked, then counted chunk by chunk): nothing of it
//! is kept but the totals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use super::batch::{read, BatchOptions};
use super::App;
use crate::batch::input::items;
use crate::batch::shard;
use crate::cache::{cacheable, CacheKey, CachePolicy};
use crate::chat::ChatJob;
use crate::cost::tokens::{self, Method};
use crate::cost::{Money, Prices, Tokens};
use crate::error::{Error, Result};
use crate::memory::prompt::MemorySection;
use crate::memory::strategy::Execution;
use crate::memory::{apply, Strategy};
use crate::queue::{find_by_dedup_read, JobState};

/// Lines counted per chunk (one read transaction each).
const CHUNK: usize = 1_000;

/// What to estimate.
#[derive(Debug, Clone)]
pub struct EstimateOptions {
    pub input: PathBuf,
    /// The batch whose answers count as done (default: the name `batch` gives the file).
    pub batch: Option<String>,
    /// Strategy of lines that name none.
    pub strategy: Option<Strategy>,
    /// The endpoint's name in dedup and cache keys (the base URL, or `simulated`).
    pub endpoint: String,
}

/// A low and a high cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Range {
    /// Prompt tokens only (no output).
    pub low: Money,
    /// Prompt tokens and every line's `max_tokens` (or the configured ceiling) of output.
    pub high: Money,
}

/// One model's share of the lines to send.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelEstimate {
    pub lines: u64,
    pub prompt_tokens: u64,
    /// The most output tokens the lines may produce.
    pub output_tokens_max: u64,
    /// `exact` (the model's own encoding) or `approximate`.
    pub tokens: &'static str,
    /// `None`: the model has no price.
    pub live: Option<Range>,
    pub provider_batch: Option<Range>,
}

/// What a file would cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Estimate {
    pub batch: String,
    pub lines: u64,
    /// Lines the batch has answered already (for this endpoint): not sent again.
    pub answered: u64,
    /// Lines the prompt cache answers: free.
    pub cached: u64,
    /// Lines that would be sent.
    pub to_send: u64,
    /// Of those, lines of strategies that make several calls (the blackboard): counted as
    /// one call, so their cost may be several times the estimate.
    pub multi_call: u64,
    pub prompt_tokens: u64,
    pub output_tokens_max: u64,
    pub by_model: BTreeMap<String, ModelEstimate>,
    /// The lines to send of priced models, live and through the provider's batch API.
    pub live: Range,
    pub provider_batch: Range,
    /// Models without a price: their lines are not in the ranges.
    pub unpriced: Vec<String>,
}

/// One counted line.
struct Line {
    model: String,
    dedup: String,
    cache: Option<CacheKey>,
    prompt: u64,
    output: u64,
    method: Method,
    multi_call: bool,
}

/// Estimates `opts.input` against the database of `app` (its answered lines and cache), or
/// against none.
pub async fn estimate(
    app: Option<&App>,
    config: &crate::config::Config,
    opts: &EstimateOptions,
) -> Result<Estimate> {
    let batch_opts = BatchOptions {
        input: opts.input.clone(),
        batch: opts.batch.clone(),
        ..BatchOptions::default()
    };
    let model = config.model.clone();
    let scan = {
        let (o, m) = (batch_opts.clone(), model.clone());
        tokio::task::spawn_blocking(move || read(&o, &m))
            .await
            .map_err(|e| Error::Task(format!("input check failed: {e}")))??
    };
    let batch = opts
        .batch
        .clone()
        .unwrap_or_else(|| shard::batch_name(&opts.input, None));
    let prices = Prices::with_overrides(&config.cost.prices);
    let settings = Counting {
        endpoint: opts.endpoint.clone(),
        strategy: opts.strategy,
        arms: config.memory.strategies.clone(),
        policy: config.cache_policy,
        ceiling: config.cost.max_output_tokens,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<Line>>>(2);
    let input = opts.input.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let sent = count_chunks(&input, &model, &scan, &settings, &tx);
        if let Err(e) = sent {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let mut est = Estimate {
        batch: batch.clone(),
        ..Estimate::default()
    };
    let mut methods: BTreeMap<String, Method> = BTreeMap::new();
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        let answered = match app {
            Some(app) => {
                let (b, keys) = (
                    batch.clone(),
                    chunk.iter().map(|l| l.dedup.clone()).collect::<Vec<_>>(),
                );
                app.store
                    .read(move |txn| {
                        keys.iter()
                            .map(|k| {
                                Ok(find_by_dedup_read(txn, &b, k)?
                                    .is_some_and(|job| job.state == JobState::Completed))
                            })
                            .collect::<Result<Vec<bool>>>()
                    })
                    .await?
            }
            None => vec![false; chunk.len()],
        };
        for (line, done) in chunk.into_iter().zip(answered) {
            est.lines += 1;
            if done {
                est.answered += 1;
                continue;
            }
            if let (Some(app), Some(key)) = (app, line.cache) {
                if app.cache.lookup(key).await.is_some() {
                    est.cached += 1;
                    continue;
                }
            }
            est.to_send += 1;
            est.multi_call += u64::from(line.multi_call);
            est.prompt_tokens += line.prompt;
            est.output_tokens_max += line.output;
            let m = est.by_model.entry(line.model.clone()).or_default();
            m.lines += 1;
            m.prompt_tokens += line.prompt;
            m.output_tokens_max += line.output;
            let method = methods.entry(line.model).or_insert(line.method);
            if line.method == Method::Approximate {
                *method = Method::Approximate;
            }
        }
    }
    reader
        .await
        .map_err(|e| Error::Task(format!("input reader failed: {e}")))?;
    let mut unpriced = BTreeSet::new();
    for (model, m) in &mut est.by_model {
        m.tokens = methods
            .get(model)
            .copied()
            .unwrap_or(Method::Exact)
            .as_str();
        let at = |output: u64, via_batch: bool| {
            let t = Tokens {
                prompt: m.prompt_tokens,
                cached: 0,
                output,
            };
            prices.cost(model, &t, via_batch)
        };
        let range = |via_batch: bool| {
            Some(Range {
                low: at(0, via_batch)?,
                high: at(m.output_tokens_max, via_batch)?,
            })
        };
        m.live = range(false);
        m.provider_batch = range(true);
        match (m.live, m.provider_batch) {
            (Some(live), Some(remote)) => {
                est.live.low = est.live.low.saturating_add(live.low);
                est.live.high = est.live.high.saturating_add(live.high);
                est.provider_batch.low = est.provider_batch.low.saturating_add(remote.low);
                est.provider_batch.high = est.provider_batch.high.saturating_add(remote.high);
            }
            _ => {
                unpriced.insert(model.clone());
            }
        }
    }
    est.unpriced = unpriced.into_iter().collect();
    Ok(est)
}

/// How lines are counted (on the reading thread).
struct Counting {
    endpoint: String,
    strategy: Option<Strategy>,
    arms: Vec<Strategy>,
    policy: CachePolicy,
    ceiling: u64,
}

/// Reads the file's items and counts each, a chunk at a time.
fn count_chunks(
    input: &std::path::Path,
    model: &str,
    scan: &crate::batch::input::Scan,
    settings: &Counting,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<Line>>>,
) -> Result<()> {
    let unreadable =
        |e: std::io::Error| Error::Invalid(format!("cannot read {}: {e}", input.display()));
    let mut chunk = Vec::with_capacity(CHUNK);
    for item in items(input, model, scan).map_err(unreadable)? {
        let item = item.map_err(unreadable)?;
        let mut job: ChatJob = item.to_job();
        job.strategy = job
            .strategy
            .or_else(|| settings.strategy.map(|s| s.name().to_string()));
        chunk.push(count(&job, settings));
        if chunk.len() == CHUNK && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
    Ok(())
}

/// One line's request as it would be sent (shaped by its strategy when that is known and
/// the line has no memory section, whose text depends on the database at run time).
fn count(job: &ChatJob, settings: &Counting) -> Line {
    let mut body: serde_json::Value = serde_json::from_str(&job.body).unwrap_or_default();
    let strategy = match job.strategy.as_deref() {
        Some(name) => name.parse::<Strategy>().ok(),
        None => match settings.arms.as_slice() {
            [only] => Some(*only),
            _ => None,
        },
    };
    // Strategies shape chat lines only; other endpoints' bodies go as they are.
    let is_chat = job.api == crate::llm::Api::ChatCompletions;
    let strategy = strategy.filter(|_| is_chat);
    let known = strategy.filter(|_| !job.memory);
    if let Some(strategy) = known {
        apply::shape(&mut body, strategy, &MemorySection::default());
    }
    let one_call = !is_chat || known.is_some_and(|s| s.execution() == Execution::OneCall);
    let cache = (one_call && cacheable(settings.policy, job.api, &body))
        .then(|| CacheKey::for_request(&settings.endpoint, job.api.route(), &body));
    let (prompt, method) = tokens::prompt_tokens(&body);
    Line {
        model: crate::chat::model_of(&job.body),
        dedup: job.dedup_key(&settings.endpoint),
        cache,
        prompt,
        output: tokens::max_output_tokens(&body).unwrap_or(settings.ceiling),
        method,
        multi_call: strategy.is_some_and(|s| s.execution() != Execution::OneCall),
    }
}
