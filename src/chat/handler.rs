//! The chat job handler: decode the job, resolve its strategy once, and hand it to that
//! strategy's engine.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::engine::{bad_payload, ChatSettings, Engine};
use super::{blackboard, single, ChatJob};
use crate::codec;
use crate::error::Result;
use crate::memory::strategy::Execution;
use crate::memory::{bandit, Strategy};
use crate::runner::{Gateway, Handler, JobCtx};

/// Runs chat jobs (registered under [`super::KIND`]).
#[derive(Clone)]
pub struct ChatHandler {
    engine: Arc<Engine>,
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
            engine: Arc::new(Engine { gateway, settings }),
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
        // The strategy's engine (a strategy of a new kind of engine is one more arm here).
        match strategy.execution() {
            Execution::Blackboard => blackboard::run(&self.engine, ctx, job).await,
            Execution::OneCall => single::run(&self.engine, ctx, job, strategy).await,
        }
    }

    /// The bandit's pick among the configured strategies for `domain`.
    async fn choose_strategy(&self, ctx: &JobCtx, domain: &str) -> Result<Strategy> {
        let arms = self.engine.settings.memory.strategies.clone();
        // One arm (the default) is its own pick whatever the statistics say: no read.
        if let [only] = arms.as_slice() {
            return Ok(*only);
        }
        let domain = domain.to_string();
        ctx.store()
            .read(move |txn| bandit::choose_read(txn, &domain, &arms))
            .await
    }
}
