//! Client of OpenAI-compatible chat-completions APIs (xAI Grok by default):
//! a tuned hyper-util connection pool, retries with server advice, client-side
//! rate limits and metrics; and, over the same client, the providers' own batch APIs
//! ([`batch_api`]).

pub mod api;
pub mod batch_api;
mod client;
mod config;
mod error;
mod limit;
mod metrics;
mod pool;
mod retry;
pub mod wire;

pub use api::Api;
pub use client::{ChatOutcome, LlmClient};
pub use config::{key_from_lookup, LlmConfig, Secret};
pub use error::{ApiError, LlmError};
pub use limit::RateLimits;
pub use metrics::{Histogram, HistogramSnapshot, MetricsSnapshot};
pub use pool::{tls_config, PoolConfig};
pub use retry::{parse_advice, parse_duration, parse_retry_after, Advice, RetryPolicy};
pub use wire::{ChatRequest, ChatResponse, Message, Usage};
