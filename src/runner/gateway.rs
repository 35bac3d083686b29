//! The one way every LLM call is made (batch lines, blackboard steps, insight prompts): the
//! prompt cache in front of the client, so all calls are cached, retried and rate limited
//! alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::breaker::{Breaker, Trip};
use crate::cache::{cacheable, Cache, CacheKey, CachePolicy, CachedResponse, Hit};
use crate::error::{Error, Result};
use crate::llm::{Api, ChatOutcome, LlmClient, LlmError};

/// Cache and client for one endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    client: LlmClient,
    cache: Arc<Cache>,
    settings: Arc<GatewaySettings>,
    /// Calls sent and not yet answered; a call whose task was aborted (a shutdown past its
    /// drain deadline) never comes back down, so after a drain this counts the calls
    /// abandoned in flight (which the provider may bill).
    unanswered: Arc<AtomicU64>,
    /// Sees every call's outcome; open, it stops every call (see [`Breaker`]).
    breaker: Breaker,
    /// Calls in flight at once: the runner holds more jobs than this, so jobs waiting for
    /// their commit never leave the endpoint idle.
    slots: Arc<tokio::sync::Semaphore>,
}

/// How the gateway uses the cache.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// What identifies the endpoint in cache keys (the base URL, or `simulated`, so simulated
    /// answers never mix with real ones).
    pub endpoint: String,
    pub cache_policy: CachePolicy,
    /// Keep fresh responses in the database's cache table (the memory tier is always on).
    pub persist_cache: bool,
    /// Calls in flight at once (at least 1).
    pub max_calls: usize,
}

/// Why a call produced no response: the API's error, the breaker (the endpoint or the
/// account cannot serve any line: return the job, spend nothing), or the store (cache tier
/// 2) failing.
#[derive(Debug)]
pub enum CallError {
    Llm(LlmError),
    Halted(Trip),
    Store(Error),
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError::Store(e)
    }
}

/// A fresh response for the disk tier of the cache, to be written in the caller's
/// transaction.
#[derive(Debug, Clone)]
pub struct CacheWrite {
    key: CacheKey,
    response: CachedResponse,
}

impl CacheWrite {
    /// Writes the response into the cache table within `txn`.
    pub fn put_in(&self, txn: &redb::WriteTransaction) -> Result<()> {
        crate::cache::put_in(txn, &self.key, &self.response)
    }
}

impl Gateway {
    /// A gateway over `client` and `cache`.
    pub fn new(
        client: LlmClient,
        cache: Arc<Cache>,
        settings: GatewaySettings,
        breaker: Breaker,
    ) -> Gateway {
        Gateway {
            client,
            cache,
            slots: Arc::new(tokio::sync::Semaphore::new(settings.max_calls.max(1))),
            settings: Arc::new(settings),
            unanswered: Arc::default(),
            breaker,
        }
    }

    /// Calls sent and not answered: after a drain, the calls abandoned in flight.
    pub fn unanswered_calls(&self) -> u64 {
        self.unanswered.load(Ordering::Relaxed)
    }

    /// The client (for its metrics and the model list).
    pub fn client(&self) -> &LlmClient {
        &self.client
    }

    /// The endpoint's name in cache and dedup keys.
    pub fn endpoint(&self) -> &str {
        &self.settings.endpoint
    }

    /// Looks up the cache and calls the API on a miss. A fresh response is kept on disk
    /// before this returns.
    pub async fn call(&self, body: &serde_json::Value) -> Result<(ChatOutcome, Hit), CallError> {
        let (outcome, hit, write) = self.call_deferred(body).await?;
        // A cache without a disk tier has nowhere to keep it.
        if let (Some(write), Some(store)) = (write, self.cache.store()) {
            store.write(move |txn| write.put_in(txn)).await?;
        }
        Ok((outcome, hit))
    }

    /// The cached answer to `body`, if the policy lets it be cached and a tier has it; no
    /// call is made (a provider batch sends only what the cache cannot answer).
    pub async fn cached(&self, body: &serde_json::Value) -> Result<Option<(ChatOutcome, Hit)>> {
        if !cacheable(self.settings.cache_policy, Api::ChatCompletions, body) {
            return Ok(None);
        }
        let key = CacheKey::for_request(&self.settings.endpoint, "/chat/completions", body);
        let Some((cached, hit)) = self.cache.lookup(key).await else {
            return Ok(None);
        };
        match ChatOutcome::from_parts(
            cached.status,
            cached.request_id.clone(),
            Bytes::from(cached.body.to_vec()),
        ) {
            Ok(outcome) => Ok(Some((outcome, hit))),
            // A row that no longer parses is a miss: the line is sent again.
            Err(_) => Ok(None),
        }
    }

    /// A response to `body` that came back another way (a provider's batch API): parsed
    /// like a call's, remembered in the memory tier, and returned with its disk-cache write
    /// for the completion's transaction, so a later live run of the same prompt is free.
    pub fn adopt(
        &self,
        body: &serde_json::Value,
        status: u16,
        request_id: Option<String>,
        bytes: Bytes,
    ) -> std::result::Result<(ChatOutcome, Option<CacheWrite>), LlmError> {
        let outcome = ChatOutcome::from_parts(status, request_id.clone(), bytes.clone())?;
        if !cacheable(self.settings.cache_policy, Api::ChatCompletions, body) {
            return Ok((outcome, None));
        }
        let key = CacheKey::for_request(&self.settings.endpoint, "/chat/completions", body);
        let response = CachedResponse::new(status, request_id, bytes)
            .stamped(crate::clock::now_ms(), self.cache.config().ttl);
        if !response.is_success() {
            return Ok((outcome, None));
        }
        self.cache.remember(key, response.clone());
        let write = self
            .settings
            .persist_cache
            .then_some(CacheWrite { key, response });
        Ok((outcome, write))
    }

    /// [`Gateway::call`], leaving the disk-cache write to the caller, who puts it in the
    /// transaction that records the result: one commit instead of two per job, and a
    /// response is on disk exactly when its job is complete.
    pub async fn call_deferred(
        &self,
        body: &serde_json::Value,
    ) -> Result<(ChatOutcome, Hit, Option<CacheWrite>), CallError> {
        self.call_api_deferred(Api::ChatCompletions, body).await
    }

    /// [`Gateway::call_deferred`] to any endpoint: the cache key covers the endpoint and
    /// the whole body.
    pub async fn call_api_deferred(
        &self,
        api: Api,
        body: &serde_json::Value,
    ) -> Result<(ChatOutcome, Hit, Option<CacheWrite>), CallError> {
        let path = format!("/{}", api.path());
        let key = CacheKey::for_request(&self.settings.endpoint, &path, body);
        let allowed = cacheable(self.settings.cache_policy, api, body);
        if let Some(trip) = self.breaker.tripped() {
            return Err(CallError::Halted(trip.clone()));
        }
        let client = self.client.clone();
        let unanswered = self.unanswered.clone();
        let breaker = self.breaker.clone();
        let slots = self.slots.clone();
        let (cached, hit) = self
            .cache
            .get_or_fetch(key, allowed, || async move {
                // Closed only when the gateway is gone; then there is nothing to call with.
                let _slot = slots
                    .acquire_owned()
                    .await
                    .map_err(|_| CallError::Store(Error::Closed))?;
                // A drain aborting its jobs freed this slot: the job goes back unsent.
                if breaker.calls_closed() {
                    return Err(CallError::Halted(Trip {
                        code: "shutdown",
                        message: "the drain deadline passed before this call started".into(),
                    }));
                }
                unanswered.fetch_add(1, Ordering::Relaxed);
                let sent = client.call(api, body).await;
                // Not reached when the task is aborted mid-call: the count stays up.
                unanswered.fetch_sub(1, Ordering::Relaxed);
                let outcome = match sent {
                    Ok(outcome) => {
                        breaker.succeeded();
                        outcome
                    }
                    Err(e) => {
                        return Err(match breaker.failed(&e) {
                            Some(trip) => CallError::Halted(trip),
                            None => CallError::Llm(e),
                        })
                    }
                };
                Ok::<_, CallError>(CachedResponse::new(
                    outcome.status,
                    outcome.request_id.clone(),
                    outcome.body.clone(),
                ))
            })
            .await?;
        let outcome = ChatOutcome::from_parts_of(
            api,
            cached.status,
            cached.request_id.clone(),
            Bytes::from(cached.body.to_vec()),
        )
        .map_err(CallError::Llm)?;
        let keep = matches!(hit, Hit::Miss) && self.settings.persist_cache && cached.is_success();
        let write = keep.then(|| CacheWrite {
            key,
            response: cached,
        });
        Ok((outcome, hit, write))
    }
}
