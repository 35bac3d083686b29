//! The chat job handler: decode the job, resolve its strategy once, and hand it to that
//! strategy's engine.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{blackboard, single, ChatJob};
use crate::codec;
use crate::error::Result;
use crate::memory::{strategy, MemoryConfig, Strategy};
use crate::queue::Failure;
use crate::runner::{FailureRecord, Gateway, Handler, JobCtx};

/// What chat jobs need besides the job.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// Strategies, memory in prompts and judging.
    pub memory: MemoryConfig,
    /// LLM steps a blackboard session may take (see `docs/blackboard.md`).
    pub blackboard_max_steps: u32,
}

/// Runs chat jobs (registered under [`super::KIND`]).
#[derive(Clone)]
pub struct ChatHandler {
    pub(super) gateway: Gateway,
    pub(super) settings: Arc<ChatSettings>,
}

impl Handler for ChatHandler {
    fn run(&self, job: JobCtx) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.handle(job))
    }
}

impl ChatHandler {
    /// A handler calling through `gateway`.
    pub fn new(gateway: Gateway, settings: ChatSettings) -> ChatHandler {
        ChatHandler {
            gateway,
            settings: Arc::new(settings),
        }
    }

    async fn handle(&self, ctx: JobCtx) -> Result<()> {
        let job: ChatJob = match codec::decode(&ctx.job().payload) {
            Ok(job) => job,
            Err(e) => return bad_payload(&ctx, format!("cannot read the job: {e}")).await,
        };
        // The line's own strategy, else the bandit's pick for the domain.
        let strategy = match job.strategy.as_deref().map(str::parse::<Strategy>) {
            Some(Ok(s)) => s,
            Some(Err(message)) => return bad_payload(&ctx, message).await,
            None => self.choose_strategy(&ctx, &job.domain).await?,
        };
        // Each strategy's engine; a new engine is one more arm here.
        match strategy {
            Strategy::Blackboard => blackboard::run(self, ctx, job).await,
            Strategy::Direct | Strategy::ChainOfThought | Strategy::Structured => {
                single::run(self, ctx, job, strategy).await
            }
        }
    }

    /// The bandit's pick among the configured strategies for `domain`.
    async fn choose_strategy(&self, ctx: &JobCtx, domain: &str) -> Result<Strategy> {
        let domain = domain.to_string();
        let arms = self.settings.memory.strategies.clone();
        ctx.store()
            .read(move |txn| strategy::choose_read(txn, &domain, &arms))
            .await
    }
}

/// Discards a job whose payload cannot be used (no retry can help).
pub(super) async fn bad_payload(ctx: &JobCtx, message: String) -> Result<()> {
    let failure = FailureRecord::new("bad_payload", message);
    ctx.fail(&failure, Failure::Fatal).await
}
