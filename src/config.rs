//! Configuration: `reasonq.toml`, overridden by `REASONQ_*` environment variables, overridden
//! by command-line flags (applied by the CLI). Every key has a default, so no file is needed.
//!
//! `docs/reasonq.toml` lists every key with its default; a test keeps it equal to
//! [`Config::default`]. The API key is never part of this: it comes from the environment only.
//!
//! Each default is written once: a setting of one layer (the HTTP pool, the queue, the
//! cache, the store) takes that layer's own default; what only the application decides
//! (endpoint, concurrency, leases, retention of the CLI) is written here. Values are
//! typed, so a bad one fails at load with the key named; [`Config::normalized`] clamps the
//! counts that must be at least one, once, where the configuration becomes the parts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::{CacheConfig, CachePolicy};
use crate::llm::{PoolConfig, RetryPolicy};
use crate::memory::MemoryConfig;
use crate::queue::QueueConfig;
use crate::store::{Durability, DEFAULT_CACHE_BYTES};

/// The largest response a job can keep: its record (request, answer, bookkeeping) must fit
/// in one codec record.
pub const MAX_RESPONSE_MB: usize = crate::codec::MAX_RECORD_BYTES / MIB / 2;

/// Units of the configuration's sizes and times.
pub(crate) const MIB: usize = 1024 * 1024;
pub(crate) const HOUR: u64 = 3600;
pub(crate) const DAY: u64 = 24 * HOUR;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The database file.
    pub db: PathBuf,
    /// OpenAI-compatible API base URL (xAI by default).
    pub base_url: String,
    /// Model used when a request names none.
    pub model: String,
    /// Worker tasks, i.e. requests in flight at once.
    pub concurrency: usize,
    /// `never`, `deterministic` (temperature 0 or a seed) or `always`.
    pub cache_policy: CachePolicy,
    pub store: StoreSection,
    pub http: HttpSection,
    pub retry: RetrySection,
    pub limits: LimitsSection,
    pub queue: QueueSection,
    pub cache: CacheSection,
    pub shutdown: ShutdownSection,
    pub retention: RetentionSection,
    /// Memory in prompts, strategy choice and insights.
    pub memory: MemoryConfig,
    pub blackboard: BlackboardSection,
    /// Batches run through a provider's batch API (`batch --via provider`).
    pub provider_batch: ProviderBatchSection,
    /// Prices per model and what a spending cap reserves (docs/cost.md).
    pub cost: CostSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostSection {
    /// Output tokens a call is assumed to produce at most when its line sets no
    /// `max_tokens` (what `--max-cost` reserves and `estimate` shows as the high end).
    pub max_output_tokens: u64,
    /// Prices of models, USD per million tokens, over the built-in ones:
    /// `[cost.prices."my-model"] input = 1.0, cached_input = 0.1, output = 4.0,
    /// batch_discount = 0.5`.
    pub prices: std::collections::BTreeMap<String, crate::cost::Rates>,
}

impl Default for CostSection {
    fn default() -> Self {
        CostSection {
            max_output_tokens: 8192,
            prices: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// redb page cache in MiB (redb's own default is 1 GiB).
    pub cache_size_mb: usize,
    /// `immediate` (fsync each commit) or `none`.
    pub durability: Durability,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub connect_timeout_ms: u64,
    /// Deadline for one request, headers and whole body.
    pub request_timeout_s: u64,
    pub max_idle_per_host: usize,
    pub idle_timeout_s: u64,
    pub max_response_mb: usize,
    pub tcp_keepalive_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySection {
    /// Attempts per call inside the client (the queue retries the job again after that).
    pub max_attempts: u32,
    pub base_ms: u64,
    pub cap_ms: u64,
    /// Overall deadline for one call with its retries.
    pub deadline_s: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Requests per minute (0 = unlimited).
    pub rpm: u32,
    /// Tokens per minute (0 = unlimited).
    pub tpm: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSection {
    pub max_attempts: u32,
    pub backoff_base_s: u64,
    pub backoff_cap_s: u64,
    /// How long a leased job is held before the rescuer may take it back (heartbeats extend it).
    pub lease_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    pub memory_mb: usize,
    pub ttl_days: u64,
    /// Keep responses in the database too, so a re-run after a restart pays nothing twice.
    pub persist: bool,
    /// Shrink the in-memory cache when the process RSS goes above this (MiB; 0 = off).
    pub rss_limit_mb: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSection {
    /// After the first SIGINT/SIGTERM, how long in-flight calls may finish.
    pub drain_timeout_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// Delete experiences older than this many days (0 = keep).
    pub experiences_days: u64,
    /// Keep at most this many experiences, oldest deleted first (0 = no limit).
    pub max_experiences: u64,
    pub completed_jobs_hours: u64,
    pub cancelled_jobs_hours: u64,
    pub discarded_jobs_days: u64,
    /// How often background cleanup runs.
    pub interval_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlackboardSection {
    /// LLM steps a blackboard session may take; the last one always synthesizes the answer.
    pub max_steps: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderBatchSection {
    /// Most lines per provider batch (the protocol's own limit applies too).
    pub max_lines: usize,
    /// First wait between polls of a running provider batch; doubles up to `poll_max_s`.
    pub poll_min_ms: u64,
    pub poll_max_s: u64,
}

impl Default for ProviderBatchSection {
    fn default() -> Self {
        let remote = crate::chat::remote::RemoteSettings::default();
        ProviderBatchSection {
            max_lines: remote.max_lines,
            poll_min_ms: millis(remote.poll_min),
            poll_max_s: remote.poll_max.as_secs(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db: PathBuf::from("reasonq.redb"),
            base_url: "https://api.x.ai/v1".into(),
            model: "grok-4".into(),
            concurrency: 16,
            cache_policy: CachePolicy::default(),
            store: StoreSection::default(),
            http: HttpSection::default(),
            retry: RetrySection::default(),
            limits: LimitsSection::default(),
            queue: QueueSection::default(),
            cache: CacheSection::default(),
            shutdown: ShutdownSection::default(),
            retention: RetentionSection::default(),
            memory: MemoryConfig::default(),
            blackboard: BlackboardSection::default(),
            provider_batch: ProviderBatchSection::default(),
            cost: CostSection::default(),
        }
    }
}

impl Default for BlackboardSection {
    fn default() -> Self {
        BlackboardSection { max_steps: 8 }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            cache_size_mb: DEFAULT_CACHE_BYTES / MIB,
            durability: Durability::default(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        let pool = PoolConfig::default();
        HttpSection {
            connect_timeout_ms: millis(pool.connect_timeout),
            request_timeout_s: pool.request_timeout.as_secs(),
            max_idle_per_host: pool.max_idle_per_host,
            idle_timeout_s: pool.idle_timeout.as_secs(),
            max_response_mb: pool.max_response_bytes.min(MAX_RESPONSE_MB * MIB) / MIB,
            tcp_keepalive_s: pool.tcp_keepalive.map_or(0, |d| d.as_secs()),
        }
    }
}

impl Default for RetrySection {
    fn default() -> Self {
        let retry = RetryPolicy::default();
        RetrySection {
            // Fewer than the client's own default: the queue tries the job again after.
            max_attempts: 4,
            base_ms: millis(retry.base),
            cap_ms: millis(retry.cap),
            deadline_s: retry.deadline.map_or(0, |d| d.as_secs()),
        }
    }
}

impl Default for QueueSection {
    fn default() -> Self {
        let queue = QueueConfig::default();
        QueueSection {
            max_attempts: queue.default_max_attempts,
            backoff_base_s: queue.backoff_base.as_secs(),
            backoff_cap_s: queue.backoff_cap.as_secs(),
            lease_s: 120,
        }
    }
}

impl Default for CacheSection {
    fn default() -> Self {
        let cache = CacheConfig::default();
        CacheSection {
            memory_mb: usize::try_from(cache.memory_bytes).unwrap_or(usize::MAX) / MIB,
            ttl_days: cache.ttl.as_secs() / DAY,
            persist: cache.persist,
            rss_limit_mb: 1024,
        }
    }
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            drain_timeout_s: 30,
        }
    }
}

impl Default for RetentionSection {
    fn default() -> Self {
        // Longer than the queue's own (River's) defaults, so `reasonq results` can export a
        // batch again weeks later.
        RetentionSection {
            experiences_days: 0,
            max_experiences: 0,
            completed_jobs_hours: 30 * 24,
            cancelled_jobs_hours: 24,
            discarded_jobs_days: 30,
            interval_s: 300,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// The configuration with every count that must be at least one raised to one
    /// (concurrency, attempts, lease, blackboard steps, intervals): the one place they are clamped.
    pub fn normalized(mut self) -> Config {
        self.concurrency = self.concurrency.max(1);
        self.queue.max_attempts = self.queue.max_attempts.max(1);
        self.queue.lease_s = self.queue.lease_s.max(1);
        self.retry.max_attempts = self.retry.max_attempts.max(1);
        self.blackboard.max_steps = self.blackboard.max_steps.max(1);
        self.memory.insight_examples = self.memory.insight_examples.max(1);
        self.retention.interval_s = self.retention.interval_s.max(1);
        self.provider_batch.max_lines = self.provider_batch.max_lines.max(1);
        self.provider_batch.poll_min_ms = self.provider_batch.poll_min_ms.max(1);
        self.provider_batch.poll_max_s = self.provider_batch.poll_max_s.max(1);
        self
    }
}

/// Environment variables that are not configuration keys (secrets never go in the file).
const NOT_KEYS: &[&str] = &[
    "REASONQ_API_KEY",
    "REASONQ_LOG",
    "REASONQ_CONFIG",
    "REASONQ_SERVE_KEY",
];

impl Config {
    /// Loads `path` (or `./reasonq.toml` when it exists and no path is given), then applies
    /// `REASONQ_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, String> {
        let default_path = Path::new("reasonq.toml");
        let (text, name) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?,
                p.display().to_string(),
            ),
            None if default_path.exists() => (
                std::fs::read_to_string(default_path)
                    .map_err(|e| format!("cannot read config file reasonq.toml: {e}"))?,
                "reasonq.toml".to_string(),
            ),
            None => (String::new(), String::new()),
        };
        let mut table: toml::Table = if text.is_empty() {
            toml::Table::new()
        } else {
            text.parse()
                .map_err(|e: toml::de::Error| format!("{name}: {}", e.to_string().trim()))?
        };
        let mut sources = Vec::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("REASONQ_") else {
                continue;
            };
            if NOT_KEYS.contains(&key.as_str()) {
                continue;
            }
            set_env_key(&mut table, &rest.to_ascii_lowercase(), &value)
                .map_err(|e| format!("environment variable {key}: {e}"))?;
            sources.push(key);
        }
        let from = if sources.is_empty() {
            name
        } else if name.is_empty() {
            format!("environment ({})", sources.join(", "))
        } else {
            format!("{name} with environment ({})", sources.join(", "))
        };
        let config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("invalid configuration in {from}: {}", e.to_string().trim()))?;
        config
            .check()
            .map_err(|e| format!("invalid configuration in {from}: {e}"))?;
        Ok(config)
    }

    /// Refuses values no run can work with, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.http.max_response_mb > MAX_RESPONSE_MB {
            return Err(format!(
                "http.max_response_mb = {} is more than a job can store; at most {MAX_RESPONSE_MB}",
                self.http.max_response_mb
            ));
        }
        for (model, rates) in &self.cost.prices {
            rates
                .check()
                .map_err(|e| format!("cost.prices.{model:?}: {e}"))?;
        }
        Ok(())
    }
}

/// Applies one `REASONQ_X` override: `x` is a top-level key (`base_url`) or
/// `section_key` (`http_connect_timeout_ms`). Values parse as TOML literals when they can
/// (numbers, booleans) and as strings otherwise.
fn set_env_key(table: &mut toml::Table, name: &str, raw: &str) -> Result<(), String> {
    let defaults = toml::Table::try_from(Config::default()).map_err(|e| e.to_string())?;
    let value = raw
        .parse::<toml::Value>()
        .ok()
        .or_else(|| {
            format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()?
                .remove("v")
        })
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    if let Some(default) = defaults.get(name) {
        if !default.is_table() {
            table.insert(name.to_string(), coerce(value, default));
            return Ok(());
        }
    }
    for (section, fields) in &defaults {
        let Some(fields) = fields.as_table() else {
            continue;
        };
        if let Some(field) = name
            .strip_prefix(section.as_str())
            .and_then(|r| r.strip_prefix('_'))
        {
            if let Some(default) = fields.get(field) {
                let entry = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(sub) = entry else {
                    return Err(format!("`{section}` in the config file is not a table"));
                };
                sub.insert(field.to_string(), coerce(value, default));
                return Ok(());
            }
        }
    }
    Err(format!("no configuration key `{name}`"))
}

/// Strings stay strings where the key is a string (so `REASONQ_MODEL=4` is the model "4").
fn coerce(value: toml::Value, default: &toml::Value) -> toml::Value {
    match (default, &value) {
        (toml::Value::String(_), v) if !v.is_str() => match v {
            toml::Value::Integer(i) => toml::Value::String(i.to_string()),
            toml::Value::Float(f) => toml::Value::String(f.to_string()),
            toml::Value::Boolean(b) => toml::Value::String(b.to_string()),
            other => other.clone(),
        },
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn documented_file_lists_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reasonq.toml");
        let config = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(config, Config::default());
        // Every key of the defaults appears in the documented file.
        let documented: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(documented, defaults);
    }

    #[test]
    fn environment_overrides_file_and_names_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "model = \"a\"\n[http]\nconnect_timeout_ms = 5\n").unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("REASONQ_MODEL", "b"),
                ("REASONQ_HTTP_REQUEST_TIMEOUT_S", "7"),
                ("REASONQ_STORE_DURABILITY", "none"),
                ("REASONQ_API_KEY", "secret"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.model, "b");
        assert_eq!(c.http.connect_timeout_ms, 5);
        assert_eq!(c.http.request_timeout_s, 7);
        assert_eq!(c.store.durability, Durability::None);

        let err = Config::load(Some(&path), env(&[("REASONQ_CONCURRENCY", "many")])).unwrap_err();
        assert!(err.contains("REASONQ_CONCURRENCY"), "{err}");
        let err = Config::load(Some(&path), env(&[("REASONQ_NOPE", "1")])).unwrap_err();
        assert_eq!(
            err,
            "environment variable REASONQ_NOPE: no configuration key `nope`"
        );
        let err =
            Config::load(Some(&path), env(&[("REASONQ_HTTP_MAX_RESPONSE_MB", "20")])).unwrap_err();
        assert!(
            err.contains("http.max_response_mb = 20 is more than a job can store; at most 8"),
            "{err}"
        );
        std::fs::write(&path, "concurency = 3\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(
            err.contains("r.toml") && err.contains("concurency"),
            "{err}"
        );
    }
}
