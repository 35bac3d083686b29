//! Client configuration and the API key wrapper.

use std::fmt;

use super::error::LlmError;
use super::limit::RateLimits;
use super::pool::PoolConfig;
use super::retry::RetryPolicy;

/// A secret string (the API key). Prints as `***`, is never serialized;
/// read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; only for the Authorization header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// Everything `LlmClient::new` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// API root, e.g. `https://api.x.ai/v1` or `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Bearer token; `None` for local servers that need none.
    pub api_key: Option<Secret>,
    /// Model put in requests that name none.
    pub model: String,
    /// Transport and pool settings.
    pub pool: PoolConfig,
    /// Retry policy of `chat` and `models`.
    pub retry: RetryPolicy,
    /// Client-side rate limits.
    pub limits: RateLimits,
    /// Extra trusted root certificate(s), PEM, for private endpoints and tests.
    pub extra_root_ca_pem: Option<Vec<u8>>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: "https://api.x.ai/v1".into(),
            api_key: None,
            model: "grok-4".into(),
            pool: PoolConfig::default(),
            retry: RetryPolicy::default(),
            limits: RateLimits::default(),
            extra_root_ca_pem: None,
        }
    }
}

impl LlmConfig {
    /// Reads the API key for `base_url` from the environment: `XAI_API_KEY`
    /// for x.ai, `OPENAI_API_KEY` for openai.com, `REASONQ_API_KEY` for any
    /// endpoint. Plain-http endpoints may run without a key (`Ok(None)`).
    pub fn api_key_from_env(base_url: &str) -> Result<Option<Secret>, LlmError> {
        key_from_lookup(base_url, |name| std::env::var(name).ok())
    }
}

/// `api_key_from_env` with an injectable lookup, so tests need not touch the
/// process environment.
pub fn key_from_lookup(
    base_url: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, LlmError> {
    let host = base_url
        .parse::<http::Uri>()
        .map_err(|e| LlmError::Config(format!("invalid base URL {base_url:?}: {e}")))?
        .host()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    let names: &[&str] = if is("x.ai") {
        &["XAI_API_KEY", "REASONQ_API_KEY"]
    } else if is("openai.com") {
        &["OPENAI_API_KEY", "REASONQ_API_KEY"]
    } else {
        &["REASONQ_API_KEY", "XAI_API_KEY", "OPENAI_API_KEY"]
    };
    if let Some(key) = names
        .iter()
        .filter_map(|n| lookup(n))
        .find(|k| !k.trim().is_empty())
    {
        return Ok(Some(Secret(key.trim().to_owned())));
    }
    if base_url.starts_with("http://") {
        return Ok(None);
    }
    Err(LlmError::Config(format!(
        "no API key for {host}: set {}",
        names.join(" or ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lookup_by_provider() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                vars.iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both = env(&[("XAI_API_KEY", "x"), ("OPENAI_API_KEY", "o")]);
        let k = key_from_lookup("https://api.x.ai/v1", both)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "x");
        let k = key_from_lookup("https://api.openai.com/v1", both)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "o");
        let none = env(&[]);
        let e = key_from_lookup("https://api.x.ai/v1", none).unwrap_err();
        assert!(e.to_string().contains("XAI_API_KEY"), "{e}");
        let e = key_from_lookup("https://api.openai.com/v1", none).unwrap_err();
        assert!(e.to_string().contains("OPENAI_API_KEY"), "{e}");
        assert!(key_from_lookup("http://localhost:8000/v1", none)
            .unwrap()
            .is_none());
        let r = env(&[("REASONQ_API_KEY", "r")]);
        let k = key_from_lookup("https://gw.example.com/v1", r)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "r");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let cfg = LlmConfig {
            api_key: Some(s),
            ..LlmConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("very-secret"));
    }
}
