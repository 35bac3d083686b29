//! Chat jobs: the job contract (what is enqueued and what a finished job holds), the handler
//! that runs them, and the strategies it runs them with.
//!
//! A chat job is one chat-completions request. The [`handler`] resolves its strategy (the
//! line's own, else the bandit's pick), then hands it to that strategy's engine: one call
//! ([`single`]) or a durable multi-step [`blackboard`] session. Both end in [`finish`], the
//! one definition of completing a chat job.

pub mod blackboard;
mod call;
mod engine;
pub mod finish;
pub mod handler;
pub mod prefill;
pub mod remote;
mod single;
pub mod structured;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use engine::ChatSettings;
pub use handler::ChatHandler;

use crate::llm::Api;
use crate::memory::Expectation;

/// The job kind chat jobs are enqueued with, and registered under.
pub const KIND: &str = "chat";

/// The payload of a chat job, encoded with the codec.
///
/// The request body is kept as JSON text, exactly as it will be sent (bincode cannot carry a
/// free-form `serde_json::Value`, and text keeps the caller's key order). The strategy stays
/// a name: it is part of the stored payload, and the handler parses it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatJob {
    pub custom_id: String,
    /// 1-based line of the input file it came from.
    pub line: u64,
    pub body: String,
    pub domain: String,
    /// The line's strategy name; `None` lets the bandit choose.
    pub strategy: Option<String>,
    /// Expected answer and match rule, for evaluation batches.
    pub expected: Option<Expectation>,
    /// Put memory (worked examples and rules) into the prompt.
    pub memory: bool,
    /// The endpoint the body goes to. Only chat completions get strategies and memory;
    /// the others are sent as they are ([`call`]).
    pub api: Api,
    /// SHA-256 (hex) of the `--validate` schema the reply must match (its text is in
    /// `tables::SCHEMAS`, see [`structured`]).
    pub validate: Option<String>,
}

impl crate::codec::Record for ChatJob {
    /// Layout 2 adds the endpoint (layout 1 lines were all chat completions); layout 3 the
    /// `--validate` schema.
    const LAYOUT: u8 = 3;

    fn upgrade(layout: u8, payload: &[u8]) -> Result<Self, crate::codec::CodecError> {
        #[derive(Deserialize)]
        struct V1 {
            custom_id: String,
            line: u64,
            body: String,
            domain: String,
            strategy: Option<String>,
            expected: Option<Expectation>,
            memory: bool,
        }
        let (v, api) = match layout {
            1 => (
                crate::codec::payload_of::<V1>(payload)?,
                Api::ChatCompletions,
            ),
            2 => {
                let v: JobV2 = crate::codec::payload_of(payload)?;
                let v1 = V1 {
                    custom_id: v.custom_id,
                    line: v.line,
                    body: v.body,
                    domain: v.domain,
                    strategy: v.strategy,
                    expected: v.expected,
                    memory: v.memory,
                };
                (v1, v.api)
            }
            found => {
                return Err(crate::codec::CodecError::UnknownLayout {
                    found,
                    current: Self::LAYOUT,
                })
            }
        };
        Ok(ChatJob {
            custom_id: v.custom_id,
            line: v.line,
            body: v.body,
            domain: v.domain,
            strategy: v.strategy,
            expected: v.expected,
            memory: v.memory,
            api,
            validate: None,
        })
    }
}

/// A chat job as layout 2 wrote it (no `--validate` schema). bincode is not
/// self-describing: each layout is spelled out (no `flatten`).
#[derive(Serialize, Deserialize)]
struct JobV2 {
    custom_id: String,
    line: u64,
    body: String,
    domain: String,
    strategy: Option<String>,
    expected: Option<Expectation>,
    memory: bool,
    api: Api,
}

impl ChatJob {
    /// The dedup key that makes enqueueing idempotent: the same id with the same job (request,
    /// domain, strategy, memory, expected answer; not the line number) against the same
    /// endpoint is the same job; an edited line becomes a new job. Options left at their
    /// defaults add nothing, so keys of plain lines are those of earlier versions.
    pub fn dedup_key(&self, endpoint: &str) -> String {
        let mut h = Sha256::new();
        h.update(endpoint.as_bytes());
        h.update([0]);
        h.update(self.body.as_bytes());
        // Keys of chat lines stay those of earlier versions.
        if self.api != Api::ChatCompletions {
            h.update([1]);
            h.update(self.api.url().as_bytes());
        }
        // A check of the reply makes another job (an earlier answer is checked, from the cache).
        if let Some(schema) = &self.validate {
            h.update([2]);
            h.update(schema.as_bytes());
        }
        if !self.has_default_options() {
            let options = serde_json::json!({
                "domain": self.domain,
                "strategy": self.strategy,
                "expected": self.expected,
                "memory": self.memory,
            });
            h.update([0]);
            h.update(options.to_string().as_bytes());
        }
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}#{hex}", self.custom_id)
    }

    /// The key versions before 0.2 gave every line (endpoint and body only): a job enqueued
    /// under it is found again after an upgrade, so it is not paid for twice.
    pub fn legacy_dedup_key(&self, endpoint: &str) -> Option<String> {
        if self.has_default_options() || self.validate.is_some() {
            return None;
        }
        let plain = ChatJob {
            domain: "general".into(),
            strategy: None,
            expected: None,
            memory: false,
            ..self.clone()
        };
        Some(plain.dedup_key(endpoint))
    }

    /// Whether the same job differs from `other` by its line number at most.
    pub fn same_job(&self, other: &ChatJob) -> bool {
        ChatJob {
            line: other.line,
            ..self.clone()
        } == *other
    }

    /// Whether its reply is checked ([`structured`]): it runs with the `direct` strategy,
    /// whose reply is the model's text as it is.
    pub fn structured(&self) -> bool {
        self.validate.is_some() || structured::asks_structure(&self.body)
    }

    fn has_default_options(&self) -> bool {
        self.domain == "general"
            && self.strategy.is_none()
            && self.expected.is_none()
            && !self.memory
    }
}

/// What a finished chat job's result holds (encoded with the codec as the job's result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    pub status_code: u16,
    pub request_id: Option<String>,
    /// The response body exactly as received (JSON text). Not in the encoded record: it is
    /// stored once beside it (the queue's job body, shared with the cache row), see
    /// [`ResponseRecord::of_job`].
    #[serde(skip)]
    pub body: String,
    /// Served from the prompt cache instead of the API.
    pub cached: bool,
    pub latency_ms: u64,
    /// The provider's batch id, when the answer came through its batch API (priced at its
    /// batch rate).
    pub provider_batch: Option<String>,
    /// What the answer cost, priced at completion (a cache hit: zero); `None`: unknown (a
    /// model without a price, or answered before reasonq priced answers).
    pub cost: Option<crate::cost::Money>,
    /// The cache tier a cached answer came from; `None`: a fresh call (or a blackboard
    /// session, whose steps each have their own), or answered before reasonq kept it.
    pub cache_tier: Option<CacheTier>,
}

/// The tier of the prompt cache an answer was served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheTier {
    Memory,
    Disk,
}

impl CacheTier {
    /// Its name in the viewer and `jobs show --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::Memory => "memory",
            CacheTier::Disk => "disk",
        }
    }
}

/// A response record as layout 2 wrote it (the body stored beside it, no provider batch).
#[derive(Serialize, Deserialize)]
struct ResponseV2 {
    status_code: u16,
    request_id: Option<String>,
    cached: bool,
    latency_ms: u64,
}

/// A response record as layout 3 wrote it (no cost).
#[derive(Serialize, Deserialize)]
struct ResponseV3 {
    status_code: u16,
    request_id: Option<String>,
    cached: bool,
    latency_ms: u64,
    provider_batch: Option<String>,
}

/// A response record as layout 4 wrote it (no cache tier). bincode is not self-describing:
/// each layout is spelled out (no `flatten`).
#[derive(Serialize, Deserialize)]
struct ResponseV4 {
    status_code: u16,
    request_id: Option<String>,
    cached: bool,
    latency_ms: u64,
    provider_batch: Option<String>,
    cost: Option<crate::cost::Money>,
}

impl crate::codec::Record for ResponseRecord {
    /// Layout 2 left the body out; layout 3 adds `provider_batch`; layout 4 `cost`; layout 5
    /// `cache_tier`.
    const LAYOUT: u8 = 5;

    fn upgrade(layout: u8, payload: &[u8]) -> Result<Self, crate::codec::CodecError> {
        #[derive(Deserialize)]
        struct V1 {
            status_code: u16,
            request_id: Option<String>,
            body: String,
            cached: bool,
            latency_ms: u64,
        }
        let (v, body) = match layout {
            1 => {
                let v: V1 = crate::codec::payload_of(payload)?;
                let v4 = ResponseV4 {
                    status_code: v.status_code,
                    request_id: v.request_id,
                    cached: v.cached,
                    latency_ms: v.latency_ms,
                    provider_batch: None,
                    cost: None,
                };
                (v4, v.body)
            }
            2 => {
                let v: ResponseV2 = crate::codec::payload_of(payload)?;
                let v4 = ResponseV4 {
                    status_code: v.status_code,
                    request_id: v.request_id,
                    cached: v.cached,
                    latency_ms: v.latency_ms,
                    provider_batch: None,
                    cost: None,
                };
                (v4, String::new())
            }
            3 => {
                let v: ResponseV3 = crate::codec::payload_of(payload)?;
                let v4 = ResponseV4 {
                    status_code: v.status_code,
                    request_id: v.request_id,
                    cached: v.cached,
                    latency_ms: v.latency_ms,
                    provider_batch: v.provider_batch,
                    cost: None,
                };
                (v4, String::new())
            }
            4 => (crate::codec::payload_of(payload)?, String::new()),
            found => {
                return Err(crate::codec::CodecError::UnknownLayout {
                    found,
                    current: Self::LAYOUT,
                })
            }
        };
        Ok(ResponseRecord {
            status_code: v.status_code,
            request_id: v.request_id,
            body,
            cached: v.cached,
            latency_ms: v.latency_ms,
            provider_batch: v.provider_batch,
            cost: v.cost,
            cache_tier: None,
        })
    }
}

impl ResponseRecord {
    /// The record of a completed job read whole, with its body (`None` if it has no result).
    pub fn of_job(
        job: &crate::queue::Job,
    ) -> Option<Result<ResponseRecord, crate::codec::CodecError>> {
        let bytes = job.result.as_deref()?;
        Some(
            crate::codec::decode::<ResponseRecord>(bytes).map(|mut record| {
                // Layout-1 records carry their body inline; later ones beside them.
                if let Some(body) = &job.body {
                    record.body = String::from_utf8_lossy(body).into_owned();
                }
                record
            }),
        )
    }

    /// Prompt and completion tokens the server reported (0 when it did not say).
    pub fn usage(&self) -> (u64, u64) {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|b| crate::llm::api::usage_of(&b))
            .map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens))
    }
}

/// The last user message of a request body, for the experience record.
pub fn question_of(body: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    value["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// The model a request body names (empty when it names none).
pub fn model_of(body: &str) -> String {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        model: String,
    }
    serde_json::from_str::<Named>(body)
        .map(|n| n.model)
        .unwrap_or_default()
}

/// Token counts as stored in an experience.
pub(crate) fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl crate::codec::Record for ResponseV2 {
        const LAYOUT: u8 = 2;
    }

    #[test]
    fn records_of_layout_2_read_as_answers_of_no_provider_batch() {
        let old = ResponseV2 {
            status_code: 200,
            request_id: Some("r".into()),
            cached: true,
            latency_ms: 9,
        };
        let bytes = crate::codec::encode(&old).unwrap();
        let read: ResponseRecord = crate::codec::decode(&bytes).unwrap();
        assert_eq!(
            (
                read.status_code,
                read.request_id.as_deref(),
                read.cached,
                read.latency_ms
            ),
            (200, Some("r"), true, 9)
        );
        assert_eq!(read.provider_batch, None);
        assert_eq!(read.cost, None);
        let now = ResponseRecord {
            provider_batch: Some("batch_1".into()),
            cost: Some(crate::cost::Money(12)),
            ..read
        };
        let again: ResponseRecord =
            crate::codec::decode(&crate::codec::encode(&now).unwrap()).unwrap();
        assert_eq!(again.provider_batch.as_deref(), Some("batch_1"));
        assert_eq!(again.cost, Some(crate::cost::Money(12)));
    }

    impl crate::codec::Record for ResponseV3 {
        const LAYOUT: u8 = 3;
    }

    impl crate::codec::Record for ResponseV4 {
        const LAYOUT: u8 = 4;
    }

    #[test]
    fn records_of_layout_4_read_with_no_cache_tier() {
        let old = ResponseV4 {
            status_code: 200,
            request_id: Some("r".into()),
            cached: true,
            latency_ms: 3,
            provider_batch: None,
            cost: Some(crate::cost::Money::ZERO),
        };
        let read: ResponseRecord =
            crate::codec::decode(&crate::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(
            (read.cached, read.cost, read.cache_tier),
            (true, Some(crate::cost::Money::ZERO), None)
        );
        let now = ResponseRecord {
            cache_tier: Some(CacheTier::Disk),
            ..read
        };
        let again: ResponseRecord =
            crate::codec::decode(&crate::codec::encode(&now).unwrap()).unwrap();
        assert_eq!(again.cache_tier, Some(CacheTier::Disk));
    }

    #[test]
    fn records_of_layout_3_read_with_an_unknown_cost() {
        let old = ResponseV3 {
            status_code: 200,
            request_id: None,
            cached: false,
            latency_ms: 1,
            provider_batch: Some("b".into()),
        };
        let read: ResponseRecord =
            crate::codec::decode(&crate::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(
            (read.provider_batch.as_deref(), read.cost),
            (Some("b"), None)
        );
    }

    impl crate::codec::Record for JobV2 {
        const LAYOUT: u8 = 2;
    }

    #[test]
    fn jobs_of_layout_2_keep_their_endpoint_and_check_nothing_more() {
        let old = JobV2 {
            custom_id: "a".into(),
            line: 3,
            body: r#"{"input":"x"}"#.into(),
            domain: "general".into(),
            strategy: None,
            expected: None,
            memory: false,
            api: Api::Embeddings,
        };
        let read: ChatJob = crate::codec::decode(&crate::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(
            (read.api, read.line, read.validate.clone()),
            (Api::Embeddings, 3, None)
        );
        let checked = ChatJob {
            validate: Some("ab".into()),
            ..read.clone()
        };
        assert_ne!(checked.dedup_key("e"), read.dedup_key("e"));
        assert!(checked.structured() && !read.structured());
    }
}
