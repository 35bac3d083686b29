//! The chat job handler: decode the job, resolve its strategy once, and hand it to that
//! strategy's engine (a request to another endpoint goes out as it is: [`call`]).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::engine::{bad_payload, ChatSettings, Engine};
use super::{blackboard, call, single, ChatJob};
use crate::codec;
use crate::error::Result;
use crate::llm::Api;
use crate::memory::strategy::Execution;
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

    /// The engine its jobs run with, shared with the provider-batch driver.
    pub(crate) fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    async fn handle(&self, ctx: JobCtx) -> Result<()> {
        let job: ChatJob = match codec::decode(&ctx.job().payload) {
            Ok(job) => job,
            Err(e) => return bad_payload(&ctx, format!("cannot read the job: {e}")).await,
        };
        if job.api != Api::ChatCompletions {
            return call::run(&self.engine, ctx, job).await;
        }
        let strategy = match self.engine.strategy_for(ctx.store(), &job).await? {
            Ok(s) => s,
            Err(message) => return bad_payload(&ctx, message).await,
        };
        // The strategy's engine (a strategy of a new kind of engine is one more arm here).
        match strategy.execution() {
            Execution::Blackboard => blackboard::run(&self.engine, ctx, job).await,
            Execution::OneCall => single::run(&self.engine, ctx, job, strategy).await,
        }
    }
}
