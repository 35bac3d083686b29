//! What a strategy's engine runs a job with: the gateway for its calls and the chat
//! settings. Shared by the handler that dispatches and the engines it dispatches to.

use crate::error::Result;
use crate::memory::MemoryConfig;
use crate::queue::Failure;
use crate::runner::{FailureRecord, Gateway, JobCtx};

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

/// Discards a job whose payload cannot be used (no retry can help).
pub(crate) async fn bad_payload(ctx: &JobCtx, message: String) -> Result<()> {
    let failure = FailureRecord::new("bad_payload", message);
    ctx.fail(&failure, Failure::Fatal).await
}
