//! Assembling the parts from a [`Config`]: the store, the queue, the cache and (for commands
//! that talk to an API) the LLM client, real or simulated.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Cache, CacheConfig, CachePolicy};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::llm::{LlmClient, LlmConfig, PoolConfig, RateLimits, RetryPolicy};
use crate::queue::{Queue, QueueConfig, Retention};
use crate::sim::{RandomFaults, SimConfig, SimServer};
use crate::store::{Store, StoreConfig};
use crate::worker::WorkerConfig;

const MIB: usize = 1024 * 1024;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// The open database and what lives in it.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub queue: Queue,
    pub cache: Arc<Cache>,
}

/// A client ready to call an endpoint.
pub struct Connected {
    pub client: LlmClient,
    /// What identifies the endpoint in cache keys and dedup keys: the configured base URL, or
    /// `simulated`, so simulated answers never mix with real ones.
    pub endpoint: String,
    /// The in-process server of `--simulate`, kept alive while the client is used.
    pub sim: Option<SimServer>,
}

impl App {
    /// Opens the database named by `config`.
    pub async fn open(config: Config) -> Result<App> {
        let mut store_config = StoreConfig::new(&config.db);
        store_config.cache_size_bytes = config.store.cache_size_mb * MIB;
        store_config.durability = config.store.durability;
        let store = Store::open_async(store_config).await?;
        let queue = Queue::new(store.clone(), queue_config(&config));
        let cache = Arc::new(Cache::new(Some(store.clone()), cache_config(&config)));
        Ok(App {
            config,
            store,
            queue,
            cache,
        })
    }

    /// The cache policy from the configuration.
    pub fn cache_policy(&self) -> Result<CachePolicy> {
        self.config
            .cache_policy
            .parse()
            .map_err(|e| Error::Invalid(format!("cache_policy: {e}")))
    }

    /// Builds the LLM client: against the configured endpoint (the API key must be in the
    /// environment), or against a loopback simulation.
    pub async fn connect(&self, simulate: bool) -> Result<Connected> {
        let mut llm = llm_config(&self.config);
        let (endpoint, sim) = if simulate {
            let server = SimServer::start(simulated_api())
                .await
                .map_err(|e| Error::Invalid(format!("cannot start the simulated API: {e}")))?;
            llm.base_url = server.base_url();
            (String::from("simulated"), Some(server))
        } else {
            llm.api_key = LlmConfig::api_key_from_env(&llm.base_url)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            (self.config.base_url.trim_end_matches('/').to_string(), None)
        };
        let client = LlmClient::new(llm).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Connected {
            client,
            endpoint,
            sim,
        })
    }

    /// Worker settings from the configuration.
    pub fn worker_config(&self, endpoint: &str) -> Result<WorkerConfig> {
        let mut w = WorkerConfig::new(endpoint);
        w.concurrency = self.config.concurrency.max(1);
        w.lease = Duration::from_secs(self.config.queue.lease_s.max(1));
        w.drain_timeout = Duration::from_secs(self.config.shutdown.drain_timeout_s);
        w.cache_policy = self.cache_policy()?;
        w.memory = self.config.memory.clone();
        w.blackboard_max_steps = self.config.blackboard.max_steps.max(1);
        w.persist_cache = self.config.cache.persist;
        Ok(w)
    }

    /// One cleanup pass with the configured retention (what `reasonq cleanup` runs; the
    /// background task runs the same pass on a timer).
    pub async fn cleanup(&self) -> Result<crate::background::CleanupReport> {
        crate::background::cleanup_pass(
            &self.queue,
            &self.cache,
            &self.store,
            crate::background::experience_retention(self),
        )
        .await
    }

    /// Closes the database after the writes already made.
    pub async fn close(&self) -> Result<()> {
        self.store.close_async().await
    }
}

/// The `--simulate` server: realistic latency (0.2 to 1.5 s), a 429 with `retry-after-ms` on
/// about 3% of requests and a 503 on about 1%, reproducible from a fixed seed.
fn simulated_api() -> SimConfig {
    SimConfig {
        random: Some(RandomFaults {
            seed: 7,
            latency_min: Duration::from_millis(200),
            latency_max: Duration::from_millis(1500),
            p_rate_limit: 0.03,
            retry_after_ms: 500,
            p_server_error: 0.01,
        }),
        record_requests: false,
        ..SimConfig::default()
    }
}

fn queue_config(c: &Config) -> QueueConfig {
    QueueConfig {
        default_max_attempts: c.queue.max_attempts.max(1),
        backoff_base: Duration::from_secs(c.queue.backoff_base_s),
        backoff_cap: Duration::from_secs(c.queue.backoff_cap_s),
        retention: Retention {
            completed: Duration::from_secs(c.retention.completed_jobs_hours * HOUR),
            cancelled: Duration::from_secs(c.retention.cancelled_jobs_hours * HOUR),
            discarded: Duration::from_secs(c.retention.discarded_jobs_days * DAY),
        },
    }
}

fn cache_config(c: &Config) -> CacheConfig {
    CacheConfig {
        memory_bytes: (c.cache.memory_mb * MIB) as u64,
        ttl: Duration::from_secs(c.cache.ttl_days * DAY),
        // The workers write fresh responses in the transaction that completes their job.
        persist: false,
    }
}

fn llm_config(c: &Config) -> LlmConfig {
    let nonzero = |v: u32| (v > 0).then_some(v);
    LlmConfig {
        base_url: c.base_url.trim_end_matches('/').to_string(),
        api_key: None,
        model: c.model.clone(),
        pool: PoolConfig {
            max_idle_per_host: c.http.max_idle_per_host,
            idle_timeout: Duration::from_secs(c.http.idle_timeout_s),
            connect_timeout: Duration::from_millis(c.http.connect_timeout_ms),
            tcp_keepalive: (c.http.tcp_keepalive_s > 0)
                .then(|| Duration::from_secs(c.http.tcp_keepalive_s)),
            request_timeout: Duration::from_secs(c.http.request_timeout_s),
            max_response_bytes: c.http.max_response_mb * MIB,
            ..PoolConfig::default()
        },
        retry: RetryPolicy {
            max_attempts: c.retry.max_attempts.max(1),
            base: Duration::from_millis(c.retry.base_ms),
            cap: Duration::from_millis(c.retry.cap_ms),
            deadline: (c.retry.deadline_s > 0).then(|| Duration::from_secs(c.retry.deadline_s)),
        },
        limits: RateLimits {
            rpm: nonzero(c.limits.rpm),
            tpm: nonzero(c.limits.tpm),
            max_concurrency: c.concurrency.max(1),
            ..RateLimits::default()
        },
        extra_root_ca_pem: None,
    }
}
