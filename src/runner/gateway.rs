//! The one way every LLM call is made (batch lines, blackboard steps, insight prompts): the
//! prompt cache in front of the client, so all calls are cached, retried and rate limited
//! alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::breaker::{Breaker, Trip};
use super::budget::{Budget, Reservation, BUDGET_REACHED};
use crate::cache::{cacheable, Cache, CacheKey, CachePolicy, CachedResponse, Hit};
use crate::cost::{tokens, Money, Prices, Tokens};
use crate::error::{Error, Result};
use crate::llm::{Api, ChatOutcome, ChatResponse, LlmClient, LlmError, Usage};

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
    /// The spending cap every call reserves against (none unless `--max-cost`).
    budget: Budget,
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
    /// What answers cost.
    pub prices: Arc<Prices>,
    /// The output a call is assumed to reach when its request sets no `max_tokens`.
    pub max_output_tokens: u64,
}

/// The tokens an answer is billed for: prompt tokens with the provider's cached share
/// (`prompt_tokens_details.cached_tokens`), and output with reasoning (xAI reports reasoning
/// tokens beside `completion_tokens`, in `total_tokens`; OpenAI inside it).
pub fn billed_tokens(usage: &Usage) -> Tokens {
    let cached = usage
        .extra
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let beyond_prompt = usage.total_tokens.saturating_sub(usage.prompt_tokens);
    Tokens {
        prompt: usage.prompt_tokens,
        cached: cached.min(usage.prompt_tokens),
        output: usage.completion_tokens.max(beyond_prompt),
    }
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
#[derive(Clone)]
pub struct CacheWrite {
    key: CacheKey,
    response: CachedResponse,
    /// The cache whose memory tier holds the answer until the row is committed.
    cache: Arc<Cache>,
}

impl std::fmt::Debug for CacheWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheWrite")
            .field("key", &self.key)
            .field("response", &self.response)
            .finish_non_exhaustive()
    }
}

impl CacheWrite {
    /// What to call once the row is committed: the answer then leaves the memory tier
    /// ([`Cache::settle`]).
    pub fn settler(&self) -> impl FnOnce() + Send + 'static {
        let (cache, key) = (Arc::clone(&self.cache), self.key);
        move || cache.settle(key)
    }

    /// Writes the response into the cache table within `txn`.
    pub fn put_in(&self, txn: &redb::WriteTransaction) -> Result<()> {
        Self::put_all_in(txn, &[self])
    }

    /// [`CacheWrite::put_in`] for many, the cache tables opened once. The writes come from
    /// one gateway, so they share its cache and that cache's journal.
    pub fn put_all_in(txn: &redb::WriteTransaction, writes: &[&CacheWrite]) -> Result<()> {
        let Some(journal) = writes.first().and_then(|w| w.cache.journal()) else {
            return Ok(());
        };
        let rows: Vec<_> = writes.iter().map(|w| (&w.key, &w.response)).collect();
        crate::cache::put_many_in(txn, journal, &rows)
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
            budget: Budget::default(),
        }
    }

    /// The spending cap of the calls (set by a batch run with `--max-cost`).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Why calls stopped (the cap, the endpoint, the account), once they did.
    pub fn stopped(&self) -> Option<Trip> {
        self.breaker.tripped().cloned()
    }

    /// The price table.
    pub fn prices(&self) -> &Prices {
        &self.settings.prices
    }

    /// What `response` to a request for `asked` cost, by the usage it reports: priced as
    /// the model that answered (a snapshot name), else as the one asked for; `None` for a
    /// model without a price.
    pub fn cost_of(&self, asked: &str, response: &ChatResponse, via_batch: bool) -> Option<Money> {
        let prices = &self.settings.prices;
        let rates = response
            .model
            .as_deref()
            .and_then(|m| prices.get(m))
            .or_else(|| prices.get(asked))?;
        let usage = response.usage.clone().unwrap_or_default();
        Some(rates.cost(&billed_tokens(&usage), via_batch))
    }

    /// The most `body` can cost live (a provider batch costs less): its prompt estimated,
    /// plus `max_tokens` (or the configured ceiling) of output. The error is a model with no
    /// price, whose cost no cap can bound.
    pub fn worst_case(&self, body: &serde_json::Value) -> std::result::Result<Money, String> {
        let model = body
            .get("model")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let (prompt, _) = tokens::prompt_tokens(body);
        let output = tokens::max_output_tokens(body).unwrap_or(self.settings.max_output_tokens);
        let worst = Tokens {
            prompt,
            cached: 0,
            output,
        };
        self.settings.prices.cost(model, &worst, false).ok_or_else(|| {
            format!("model {model:?} has no price, so no cap can bound its cost; add it under [cost.prices] (docs/cost.md)")
        })
    }

    /// Reserves `body`'s worst case; when it does not fit (or cannot be priced) the breaker
    /// opens with [`BUDGET_REACHED`] and no call may start any more.
    pub fn reserve(&self, body: &serde_json::Value) -> std::result::Result<Reservation, Trip> {
        // Without a cap nothing need be estimated: a zero reservation always fits.
        let worst = if self.budget.capped() {
            self.worst_case(body).map_err(|message| {
                self.breaker.stop(Trip {
                    code: BUDGET_REACHED,
                    message,
                })
            })?
        } else {
            Money::ZERO
        };
        self.budget.reserve(worst).ok_or_else(|| {
            let s = self.budget.standing();
            self.breaker.stop(Trip {
                code: BUDGET_REACHED,
                message: format!(
                    "the next call may cost up to {worst} and {} of the {} cap is left ({} spent, {} held by calls in flight)",
                    s.left().unwrap_or(Money::ZERO),
                    s.cap.unwrap_or(Money::ZERO),
                    s.spent,
                    s.reserved
                ),
            })
        })
    }

    /// Calls sent and not answered: after a drain, the calls abandoned in flight.
    pub fn unanswered_calls(&self) -> u64 {
        self.unanswered.load(Ordering::Relaxed)
    }

    /// The client (for its metrics and the model list).
    pub fn client(&self) -> &LlmClient {
        &self.client
    }

    /// Whether fresh answers are written to the disk tier: the settings ask for it and the
    /// cache has one (a [`CacheWrite`] exists only then).
    fn keeps_on_disk(&self) -> bool {
        self.settings.persist_cache && self.cache.journal().is_some()
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
        let Some(key) = self.cache_key(body) else {
            return Ok(None);
        };
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

    /// The cache key of the chat request `body`; `None` when the policy keeps it out of
    /// the cache.
    pub fn cache_key(&self, body: &serde_json::Value) -> Option<CacheKey> {
        cacheable(self.settings.cache_policy, Api::ChatCompletions, body).then(|| {
            CacheKey::for_request(&self.settings.endpoint, Api::ChatCompletions.route(), body)
        })
    }

    /// The disk tier's answers to `keys` (see [`Cache::disk_answers_blocking`]): off the
    /// async runtime only.
    pub fn disk_answers_blocking(&self, keys: &[CacheKey]) -> Result<Vec<Option<CachedResponse>>> {
        self.cache.disk_answers_blocking(keys)
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
        let Some(key) = self.cache_key(body) else {
            return Ok((outcome, None));
        };
        let response = CachedResponse::new(status, request_id, bytes)
            .stamped(crate::clock::now_ms(), self.cache.config().ttl);
        if !response.is_success() {
            return Ok((outcome, None));
        }
        self.cache.remember(key, response.clone());
        let write = self.keeps_on_disk().then(|| CacheWrite {
            key,
            response,
            cache: Arc::clone(&self.cache),
        });
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
        self.call_with(api, body, false).await
    }

    /// [`Gateway::call_deferred`] without looking in the cache: the cached answer was not
    /// one (a reply that failed its check, `chat::structured`). The fresh answer replaces
    /// it in both tiers.
    pub async fn call_fresh(
        &self,
        body: &serde_json::Value,
    ) -> Result<(ChatOutcome, Hit, Option<CacheWrite>), CallError> {
        self.call_with(Api::ChatCompletions, body, true).await
    }

    async fn call_with(
        &self,
        api: Api,
        body: &serde_json::Value,
        fresh: bool,
    ) -> Result<(ChatOutcome, Hit, Option<CacheWrite>), CallError> {
        let key = CacheKey::for_request(&self.settings.endpoint, api.route(), body);
        let allowed = cacheable(self.settings.cache_policy, api, body);
        if let Some(trip) = self.breaker.tripped() {
            return Err(CallError::Halted(trip.clone()));
        }
        let (cached, hit) = if fresh && allowed {
            let response = self
                .send(api, body)
                .await?
                .stamped(crate::clock::now_ms(), self.cache.config().ttl);
            self.cache.remember(key, response.clone());
            (response, Hit::Miss)
        } else {
            self.cache
                .get_or_fetch(key, allowed, || self.send(api, body))
                .await?
        };
        let outcome = ChatOutcome::from_parts_of(
            api,
            cached.status,
            cached.request_id.clone(),
            Bytes::from(cached.body.to_vec()),
        )
        .map_err(CallError::Llm)?;
        let keep = matches!(hit, Hit::Miss) && self.keeps_on_disk() && cached.is_success();
        let write = keep.then(|| CacheWrite {
            key,
            response: cached,
            cache: Arc::clone(&self.cache),
        });
        Ok((outcome, hit, write))
    }

    /// One call to the API under the concurrency cap and the budget; the breaker hears how
    /// it went.
    async fn send(&self, api: Api, body: &serde_json::Value) -> Result<CachedResponse, CallError> {
        // Closed only when the gateway is gone; then there is nothing to call with.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| CallError::Store(Error::Closed))?;
        // A drain aborting its jobs freed this slot: the job goes back unsent.
        if self.breaker.calls_closed() {
            return Err(CallError::Halted(Trip {
                code: "shutdown",
                message: "the drain deadline passed before this call started".into(),
            }));
        }
        // Stopped (the cap among others) while this job waited for its slot.
        if let Some(trip) = self.breaker.tripped() {
            return Err(CallError::Halted(trip.clone()));
        }
        // Reserved only now, so jobs waiting for a slot hold none of the budget.
        let reservation = self.reserve(body).map_err(CallError::Halted)?;
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        let sent = self.client.call(api, body).await;
        // Not reached when the task is aborted mid-call: the count stays up.
        self.unanswered.fetch_sub(1, Ordering::Relaxed);
        let outcome = match sent {
            Ok(outcome) => {
                self.breaker.succeeded();
                // A model without a price has no cap either (refused before).
                let asked = body
                    .get("model")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                let cost = self.cost_of(asked, &outcome.response, false);
                reservation.settle(cost.unwrap_or(Money::ZERO));
                outcome
            }
            Err(e) => {
                return Err(match self.breaker.failed(&e) {
                    Some(trip) => CallError::Halted(trip),
                    None => CallError::Llm(e),
                })
            }
        };
        Ok(CachedResponse::new(
            outcome.status,
            outcome.request_id.clone(),
            outcome.body.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(json: serde_json::Value) -> Usage {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn billed_tokens_count_cached_prompts_and_reasoning_beside_the_completion() {
        // OpenAI: reasoning inside completion_tokens, cached share in the details.
        let openai = usage(
            serde_json::json!({"prompt_tokens": 100, "completion_tokens": 50,
            "total_tokens": 150, "prompt_tokens_details": {"cached_tokens": 64}}),
        );
        assert_eq!(
            billed_tokens(&openai),
            Tokens {
                prompt: 100,
                cached: 64,
                output: 50
            }
        );
        // xAI: reasoning tokens only in the total.
        let xai = usage(
            serde_json::json!({"prompt_tokens": 37, "completion_tokens": 530,
            "total_tokens": 800, "completion_tokens_details": {"reasoning_tokens": 233}}),
        );
        assert_eq!(billed_tokens(&xai).output, 763);
        // No total: the completion.
        let bare = usage(serde_json::json!({"prompt_tokens": 5, "completion_tokens": 7}));
        assert_eq!(billed_tokens(&bare).output, 7);
    }
}
