//! What a strategy's engine runs a job with: the gateway for its calls and the chat
//! settings. Shared by the handler that dispatches and the engines it dispatches to.

use super::{CacheTier, ChatJob, ResponseRecord};
use crate::cache::Hit;
use crate::cost::Money;
use crate::error::Result;
use crate::llm::ChatOutcome;
use crate::memory::{bandit, MemoryConfig, Strategy};
use crate::queue::Failure;
use crate::runner::{FailureRecord, Gateway, JobCtx};
use crate::store::Store;

/// What chat jobs need besides the job.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// Strategies, memory in prompts and judging.
    pub memory: MemoryConfig,
    /// LLM steps a blackboard session may take (see `docs/blackboard.md`).
    pub blackboard_max_steps: u32,
}

/// The gateway and the settings, handed to every engine.
pub struct Engine {
    pub gateway: Gateway,
    pub settings: ChatSettings,
}

impl Engine {
    /// The result record of `outcome`, priced: a cache hit paid nothing, an answer of a
    /// provider batch is priced at its batch rate, a model without a price costs unknown.
    pub(crate) fn record_of(
        &self,
        job: &ChatJob,
        outcome: &ChatOutcome,
        hit: Hit,
        latency: std::time::Duration,
        provider_batch: Option<String>,
    ) -> ResponseRecord {
        let cache_tier = match hit {
            Hit::Memory => Some(CacheTier::Memory),
            Hit::Disk => Some(CacheTier::Disk),
            Hit::Miss | Hit::Bypass => None,
        };
        let cached = cache_tier.is_some();
        let cost = if cached {
            Some(Money::ZERO)
        } else {
            let asked = super::model_of(&job.body);
            let via_batch = provider_batch.is_some();
            self.gateway.cost_of(&asked, &outcome.response, via_batch)
        };
        ResponseRecord {
            status_code: outcome.status,
            request_id: outcome.request_id.clone(),
            body: String::from_utf8_lossy(&outcome.body).into_owned(),
            cached,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            provider_batch,
            cost,
            cache_tier,
        }
    }

    /// The line's own strategy, else the bandit's pick for its domain among the configured
    /// ones. The inner error names a strategy that does not exist (the line's fault).
    pub async fn strategy_for(
        &self,
        store: &Store,
        job: &ChatJob,
    ) -> Result<std::result::Result<Strategy, String>> {
        if let Some(known) = self.fixed_strategy(job) {
            return Ok(known);
        }
        let arms = self.settings.memory.strategies.clone();
        let domain = job.domain.clone();
        store
            .read(move |txn| bandit::choose_read(txn, &domain, &arms))
            .await
            .map(Ok)
    }

    /// [`Engine::strategy_for`] when no statistics are needed to know it (the line names
    /// one, its reply is checked, or one strategy is configured); `None`: the bandit picks.
    pub(crate) fn fixed_strategy(
        &self,
        job: &ChatJob,
    ) -> Option<std::result::Result<Strategy, String>> {
        if let Some(name) = job.strategy.as_deref() {
            return Some(name.parse::<Strategy>());
        }
        // A reply checked against its structure must be the model's text as it is; other
        // strategies ask for formats of their own (lines naming one are refused at input).
        if job.structured() {
            return Some(Ok(Strategy::DIRECT));
        }
        // One arm (the default) is its own pick whatever the statistics say: no read.
        match self.settings.memory.strategies.as_slice() {
            [only] => Some(Ok(*only)),
            _ => None,
        }
    }
}

/// Discards a job whose payload cannot be used (no retry can help).
pub(crate) async fn bad_payload(ctx: &JobCtx, message: String) -> Result<()> {
    let failure = FailureRecord::new("bad_payload", message);
    ctx.fail(&failure, Failure::Fatal).await
}
