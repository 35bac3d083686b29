//! The application: [`App::open`] is the one place a [`Config`] becomes the parts (store,
//! queue, cache, upkeep), and [`App::connect`] the one place it becomes a client, a gateway
//! and a runner with its job handlers. The use cases the commands run are library functions
//! here: [`batch`], [`merge`], [`submit`], [`insights`], [`retry`], and the read-only
//! [`inspect`] queries, and the [`metrics`] exposition.

pub mod batch;
pub mod cancel;
pub mod estimate;
pub mod insights;
pub mod inspect;
pub mod live;
pub mod merge;
pub mod metrics;
pub mod retry;
pub mod runs;
pub mod submit;
pub mod upkeep;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Cache, CacheConfig};
use crate::chat::{self, ChatHandler, ChatSettings};
use crate::config::{Config, DAY, HOUR, MIB};
use crate::error::{Error, Result};
use crate::llm::{LlmClient, LlmConfig, PoolConfig, RateLimits, RetryPolicy};
use crate::queue::{Queue, QueueConfig, Retention};
use crate::runner::{Breaker, Gateway, GatewaySettings, Registry, Runner, RunnerConfig};
use crate::sim::{BatchConfig, BatchMode, RandomFaults, SimConfig, SimServer};
use crate::store::{Store, StoreConfig};
use upkeep::{cleanup_pass, CleanupReport, ExperienceRetention, Upkeep};

/// The open database and what lives in it, with its background upkeep.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub queue: Queue,
    pub cache: Arc<Cache>,
    upkeep: tokio::sync::Mutex<Upkeep>,
}

/// The endpoint's name in cache and dedup keys under `--simulate`, so simulated answers
/// never mix with real ones.
pub const SIMULATED: &str = "simulated";

/// Which endpoint [`App::connect`] talks to.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// The in-process loopback server of `--simulate` instead of the configured base URL.
    pub simulate: bool,
    /// The environment variable holding the API key, as named on the command line (never
    /// from a file: a configuration file must not be able to send a key elsewhere).
    pub key_env: Option<String>,
}

/// A client ready to call an endpoint, and the runner that drains queues through it.
pub struct Connected {
    /// Cache and client: every LLM call goes through it.
    pub gateway: Gateway,
    pub runner: Runner,
    /// The chat jobs' handler (registered with the runner), for the provider-batch driver.
    pub chat: ChatHandler,
    /// The in-process server of `--simulate`, kept alive while the client is used.
    pub sim: Option<SimServer>,
}

impl Connected {
    /// What identifies the endpoint in cache keys and dedup keys: the configured base URL, or
    /// `simulated`, so simulated answers never mix with real ones.
    pub fn endpoint(&self) -> &str {
        self.gateway.endpoint()
    }

    /// The LLM client.
    pub fn client(&self) -> &LlmClient {
        self.gateway.client()
    }
}

impl App {
    /// Opens the database named by `config` and starts the upkeep tasks. When another
    /// process holds the file, waits a moment for it to let go (a read-only command holds
    /// it for milliseconds) before failing with [`Error::Locked`].
    pub async fn open(config: Config) -> Result<App> {
        App::open_waiting(config, crate::store::DEFAULT_LOCK_WAIT).await
    }

    /// [`App::open`] that fails with [`Error::Locked`] at once: for a read-only command,
    /// which then asks the holder (`live`) instead.
    pub async fn open_or_locked(config: Config) -> Result<App> {
        App::open_waiting(config, Duration::ZERO).await
    }

    async fn open_waiting(config: Config, lock_wait: Duration) -> Result<App> {
        let config = config.normalized();
        let mut store = store_config(&config);
        store.lock_wait = lock_wait;
        // Batches of files written before the line index existed get it at open.
        let store = store.with_open_hook(crate::batch::lines::upgrade_at_open);
        let queue = Queue::open(store, queue_config(&config)).await?;
        let store = queue.store().clone();
        let cache = Arc::new(Cache::new(Some(store.clone()), cache_config(&config)));
        let upkeep = Upkeep::start(&config, &queue, &cache, &store);
        Ok(App {
            config,
            store,
            queue,
            cache,
            upkeep: tokio::sync::Mutex::new(upkeep),
        })
    }

    /// Builds the LLM client (against the configured base URL, with the API key that may go
    /// to its host, from the environment; or against a loopback simulation), the gateway
    /// over it, and a runner with every job kind's handler registered.
    pub async fn connect(&self, to: &Endpoint) -> Result<Connected> {
        let mut llm = llm_config(&self.config);
        let (endpoint, sim) = if to.simulate {
            let server = SimServer::start(simulated_api())
                .await
                .map_err(|e| Error::Simulator(e.to_string()))?;
            llm.base_url = server.base_url();
            (String::from(SIMULATED), Some(server))
        } else {
            llm.api_key = LlmConfig::api_key_from_env(&llm.base_url, to.key_env.as_deref())?;
            (self.config.base_url.trim_end_matches('/').to_string(), None)
        };
        let client = LlmClient::new(llm)?;
        let breaker = Breaker::default();
        let gateway = Gateway::new(
            client,
            self.cache.clone(),
            GatewaySettings {
                endpoint,
                cache_policy: self.config.cache_policy,
                persist_cache: self.config.cache.persist,
                max_calls: self.config.concurrency,
                prices: Arc::new(crate::cost::Prices::with_overrides(
                    &self.config.cost.prices,
                )),
                max_output_tokens: self.config.cost.max_output_tokens,
            },
            breaker.clone(),
        );
        let settings = ChatSettings {
            memory: self.config.memory.clone(),
            blackboard_max_steps: self.config.blackboard.max_steps,
        };
        let mut registry = Registry::default();
        let chat = ChatHandler::new(gateway.clone(), settings);
        registry.register(chat::KIND, chat.clone());
        let runner = Runner::new(self.queue.clone(), registry, runner_config(&self.config))
            .with_breaker(breaker);
        Ok(Connected {
            gateway,
            runner,
            chat,
            sim,
        })
    }

    /// One cleanup pass with the configured retention (what `reasonq cleanup` runs; the
    /// upkeep runs the same pass on a timer).
    pub async fn cleanup(&self) -> Result<CleanupReport> {
        let retention = ExperienceRetention::of(&self.config);
        cleanup_pass(&self.queue, &self.cache, &self.store, retention).await
    }

    /// Upkeep tasks still running (none after [`App::close`]).
    pub async fn upkeep_tasks(&self) -> usize {
        self.upkeep.lock().await.len()
    }

    /// Stops the upkeep, then closes the database after the writes already made.
    pub async fn close(&self) -> Result<()> {
        self.upkeep.lock().await.stop().await;
        self.store.close_async().await
    }
}

/// The `--simulate` server: realistic latency (0.2 to 1.5 s), a 429 with `retry-after-ms` on
/// about 3% of requests and a 503 on about 1%, reproducible from a fixed seed. Provider batches
/// advance by themselves, one state a second.
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
        batch: BatchConfig {
            mode: BatchMode::Auto {
                step: Duration::from_secs(1),
            },
            ..BatchConfig::default()
        },
        ..SimConfig::default()
    }
}

/// The driver of `protocol` provider batches over `connected` (its chat handler, runner
/// counters and client), sized and polled as configured. The one place both `batch --via
/// provider` and `jobs cancel --batch` get it from.
pub(crate) fn remote_run(
    app: &App,
    connected: &Connected,
    protocol: crate::llm::batch_api::Protocol,
    watch: Arc<crate::chat::remote::RemoteWatch>,
) -> Result<crate::chat::remote::RemoteRun> {
    use crate::llm::batch_api::{BatchApi, Protocol};
    let c = &app.config;
    let mut settings = crate::chat::remote::RemoteSettings {
        max_lines: c.provider_batch.max_lines,
        poll_min: Duration::from_millis(c.provider_batch.poll_min_ms),
        poll_max: Duration::from_secs(c.provider_batch.poll_max_s),
    };
    let client = match &connected.sim {
        // The loopback server serves each protocol under its own mount, as each provider has
        // its own host; it finishes a batch in moments, so it is polled as fast.
        Some(server) => {
            settings.poll_min = settings.poll_min.min(Duration::from_millis(100));
            settings.poll_max = settings.poll_max.min(Duration::from_millis(500));
            let mount = match protocol {
                Protocol::OpenAi => crate::sim::Protocol::OpenAi,
                Protocol::Xai => crate::sim::Protocol::Xai,
                Protocol::Anthropic => crate::sim::Protocol::Anthropic,
            };
            let mut llm = connected.client().config().clone();
            llm.base_url = server.base_url_for(mount);
            LlmClient::new(llm)?
        }
        None => connected.client().clone(),
    };
    Ok(crate::chat::remote::RemoteRun::new(
        &connected.chat,
        app.queue.clone(),
        BatchApi::new(client, protocol),
        Arc::clone(connected.runner.stats()),
        settings,
        watch,
        Duration::from_secs(c.queue.lease_s),
    ))
}

fn store_config(c: &Config) -> StoreConfig {
    let mut store = StoreConfig::new(&c.db);
    store.cache_size_bytes = c.store.cache_size_mb * MIB;
    store.durability = c.store.durability;
    store
}

fn queue_config(c: &Config) -> QueueConfig {
    QueueConfig {
        default_max_attempts: c.queue.max_attempts,
        backoff_base: Duration::from_secs(c.queue.backoff_base_s),
        backoff_cap: Duration::from_secs(c.queue.backoff_cap_s),
        retention: Retention {
            completed: kept_for(c.retention.completed_jobs_hours, HOUR),
            cancelled: kept_for(c.retention.cancelled_jobs_hours, HOUR),
            discarded: kept_for(c.retention.discarded_jobs_days, DAY),
        },
    }
}

/// A retention of `n` units; 0 means keep, as for every retention key (never "delete at
/// once", which would drop a running batch's answers before they are exported).
fn kept_for(n: u64, unit: u64) -> Duration {
    match n {
        0 => Duration::MAX,
        n => Duration::from_secs(n.saturating_mul(unit)),
    }
}

fn cache_config(c: &Config) -> CacheConfig {
    CacheConfig {
        memory_bytes: (c.cache.memory_mb * MIB) as u64,
        ttl: Duration::from_secs(c.cache.ttl_days * DAY),
        // The runner writes fresh responses in the transaction that completes their job.
        persist: false,
    }
}

/// Jobs in flight per request slot. The client caps requests at `concurrency`; the runner
/// holds more jobs than that so the ones whose answer waits for its commit (an fsync) do
/// not keep a request slot idle: each commit then carries several slots' worth of jobs.
const JOBS_PER_REQUEST_SLOT: usize = 4;

fn runner_config(c: &Config) -> RunnerConfig {
    RunnerConfig {
        concurrency: c.concurrency.saturating_mul(JOBS_PER_REQUEST_SLOT),
        lease: Duration::from_secs(c.queue.lease_s),
        drain_timeout: Duration::from_secs(c.shutdown.drain_timeout_s),
        owner: RunnerConfig::owner_name(),
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
            max_attempts: c.retry.max_attempts,
            base: Duration::from_millis(c.retry.base_ms),
            cap: Duration::from_millis(c.retry.cap_ms),
            deadline: (c.retry.deadline_s > 0).then(|| Duration::from_secs(c.retry.deadline_s)),
        },
        limits: RateLimits {
            rpm: nonzero(c.limits.rpm),
            tpm: nonzero(c.limits.tpm),
            max_concurrency: c.concurrency,
            ..RateLimits::default()
        },
        extra_root_ca_pem: None,
    }
}
