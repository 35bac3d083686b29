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
    /// Reads the API key for `base_url` from the environment (see [`key_from_lookup`]).
    pub fn api_key_from_env(
        base_url: &str,
        key_env: Option<&str>,
    ) -> Result<Option<Secret>, LlmError> {
        key_from_lookup(base_url, key_env, |name| std::env::var(name).ok())
    }
}

/// The environment variables whose key may go to `host`, in order: a provider's own key
/// goes only to that provider's hosts (`XAI_API_KEY` to x.ai, `OPENAI_API_KEY` to
/// openai.com, `ANTHROPIC_API_KEY` to anthropic.com); `REASONQ_API_KEY` goes to any host.
pub fn key_names(host: &str) -> &'static [&'static str] {
    let is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    if is("x.ai") {
        &["XAI_API_KEY", "REASONQ_API_KEY"]
    } else if is("openai.com") {
        &["OPENAI_API_KEY", "REASONQ_API_KEY"]
    } else if is("anthropic.com") {
        &["ANTHROPIC_API_KEY", "REASONQ_API_KEY"]
    } else {
        &["REASONQ_API_KEY"]
    }
}

/// Whether `host` is this machine (a key may go there over plain http).
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// [`LlmConfig::api_key_from_env`] with an injectable lookup, so tests need not touch the
/// process environment. `key_env` is a variable the user named on the command line; it
/// replaces [`key_names`] for any host. A key never goes over plain http to a host other
/// than loopback: such an endpoint gets no key (an error when the user named one). An https
/// endpoint without a key is an error that names the variables to set.
pub fn key_from_lookup(
    base_url: &str,
    key_env: Option<&str>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, LlmError> {
    let uri = base_url
        .parse::<http::Uri>()
        .map_err(|e| LlmError::Config(format!("invalid base URL {base_url:?}: {e}")))?;
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let plain = uri.scheme_str() == Some("http");
    let named;
    let names: &[&str] = match key_env {
        Some(name) => {
            named = [name];
            &named
        }
        None => key_names(&host),
    };
    if plain && !is_loopback(&host) {
        if let Some(name) = key_env {
            return Err(LlmError::Config(format!(
                "{base_url} is plain http: the key in {name} is not sent to {host}; use https"
            )));
        }
        if names
            .iter()
            .any(|n| lookup(n).is_some_and(|k| !k.trim().is_empty()))
        {
            tracing::warn!(%host, "plain http endpoint: no API key is sent (use https)");
        }
        return Ok(None);
    }
    if let Some(key) = names
        .iter()
        .filter_map(|n| lookup(n))
        .find(|k| !k.trim().is_empty())
    {
        return Ok(Some(Secret(key.trim().to_owned())));
    }
    if plain {
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
        let k = key_from_lookup("https://api.x.ai/v1", None, both)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "x");
        let k = key_from_lookup("https://api.openai.com/v1", None, both)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "o");
        let none = env(&[]);
        let e = key_from_lookup("https://api.x.ai/v1", None, none).unwrap_err();
        assert!(e.to_string().contains("XAI_API_KEY"), "{e}");
        let e = key_from_lookup("https://api.openai.com/v1", None, none).unwrap_err();
        assert!(e.to_string().contains("OPENAI_API_KEY"), "{e}");
        assert!(key_from_lookup("http://localhost:8000/v1", None, none)
            .unwrap()
            .is_none());
        let r = env(&[("REASONQ_API_KEY", "r")]);
        let k = key_from_lookup("https://gw.example.com/v1", None, r)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "r");
    }

    #[test]
    fn a_providers_key_goes_only_to_its_own_hosts() {
        let env = |n: &str| match n {
            "XAI_API_KEY" => Some("xai-secret".to_string()),
            "OPENAI_API_KEY" => Some("openai-secret".to_string()),
            "ANTHROPIC_API_KEY" => Some("anthropic-secret".to_string()),
            _ => None,
        };
        // Another host never gets the xAI or OpenAI key, and says what to set instead.
        let e = key_from_lookup("https://evil.example.com/v1", None, env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration error: no API key for evil.example.com: set REASONQ_API_KEY"
        );
        // Lookalike hosts are other hosts.
        for url in [
            "https://x.ai.evil.com/v1",
            "https://notx.ai/v1",
            "https://openai.com.evil.io/v1",
            "https://anthropic.com.evil.io/v1",
            "https://notanthropic.com/v1",
        ] {
            assert!(key_from_lookup(url, None, env).is_err(), "{url}");
        }
        // Subdomains of the provider are the provider's.
        let k = key_from_lookup("https://eu.api.x.ai/v1", None, env)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "xai-secret");
        let k = key_from_lookup("https://api.anthropic.com/v1", None, env)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "anthropic-secret");
        // A variable named on the command line is used for any host.
        let k = key_from_lookup("https://gw.example.com/v1", Some("XAI_API_KEY"), env)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), "xai-secret");
    }

    #[test]
    fn no_key_goes_over_plain_http_except_to_loopback() {
        let env = |n: &str| (n == "REASONQ_API_KEY").then(|| "generic-secret".to_string());
        assert!(key_from_lookup("http://10.0.0.7:8000/v1", None, env)
            .unwrap()
            .is_none());
        assert!(key_from_lookup("http://gpu-box.lan/v1", None, env)
            .unwrap()
            .is_none());
        let e = key_from_lookup("http://gpu-box.lan/v1", Some("REASONQ_API_KEY"), env).unwrap_err();
        assert!(e.to_string().contains("plain http"), "{e}");
        for url in [
            "http://localhost:8000/v1",
            "http://127.0.0.1:9/v1",
            "http://[::1]:9/v1",
        ] {
            let k = key_from_lookup(url, None, env).unwrap().unwrap();
            assert_eq!(k.expose(), "generic-secret", "{url}");
        }
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
