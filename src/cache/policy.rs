//! Which requests may be answered from the cache.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::Api;

/// Per-request cache policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    /// Never read or write the cache: every request goes upstream.
    Never,
    /// Cache only requests whose answer is meant to be reproducible: `temperature` is 0 or a
    /// `seed` is set (default: sampling at a temperature asks for a fresh draw each time).
    #[default]
    Deterministic,
    /// Cache every request.
    Always,
}

impl CachePolicy {
    const ALL: [(CachePolicy, &'static str); 3] = [
        (CachePolicy::Never, "never"),
        (CachePolicy::Deterministic, "deterministic"),
        (CachePolicy::Always, "always"),
    ];

    /// The lowercase name used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map_or("deterministic", |(_, name)| name)
    }
}

impl fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CachePolicy {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(s.trim()))
            .map(|(p, _)| *p)
            .ok_or_else(|| {
                crate::Error::Invalid(format!(
                    "unknown cache policy {s:?} (expected never, deterministic or always)"
                ))
            })
    }
}

/// Whether `policy` lets a request of `api` with this body be served from and stored in the
/// cache. Embeddings and moderations do not sample: their answers are always reproducible.
pub fn cacheable(policy: CachePolicy, api: Api, body: &Value) -> bool {
    match policy {
        CachePolicy::Never => false,
        CachePolicy::Always => true,
        CachePolicy::Deterministic if matches!(api, Api::Embeddings | Api::Moderations) => true,
        CachePolicy::Deterministic => {
            let zero_temperature = body
                .get("temperature")
                .and_then(Value::as_f64)
                .is_some_and(|t| t == 0.0);
            let seeded = body.get("seed").is_some_and(|s| !s.is_null());
            zero_temperature || seeded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip_through_from_str_display_and_serde() {
        for (policy, name) in CachePolicy::ALL {
            assert_eq!(policy.to_string(), name);
            assert_eq!(name.parse::<CachePolicy>().unwrap(), policy);
            assert_eq!(serde_json::to_value(policy).unwrap(), json!(name));
            assert_eq!(
                serde_json::from_value::<CachePolicy>(json!(name)).unwrap(),
                policy
            );
        }
        assert_eq!(
            " Always ".parse::<CachePolicy>().unwrap(),
            CachePolicy::Always
        );
        assert!("sometimes".parse::<CachePolicy>().is_err());
        assert_eq!(CachePolicy::default(), CachePolicy::Deterministic);
    }

    #[test]
    fn deterministic_caches_only_zero_temperature_or_a_seed() {
        let cases = [
            (json!({"temperature": 0}), true),
            (json!({"temperature": 0.0}), true),
            (json!({"temperature": 0.7}), false),
            (json!({}), false),
            (json!({"temperature": null}), false),
            (json!({"temperature": "0"}), false),
            (json!({"temperature": 0.7, "seed": 42}), true),
            (json!({"seed": 0}), true),
            (json!({"seed": null}), false),
        ];
        for (body, expected) in cases {
            for api in [Api::ChatCompletions, Api::Responses, Api::Completions] {
                assert_eq!(
                    cacheable(CachePolicy::Deterministic, api, &body),
                    expected,
                    "{body}"
                );
            }
            for api in [Api::Embeddings, Api::Moderations] {
                assert!(cacheable(CachePolicy::Deterministic, api, &body));
                assert!(!cacheable(CachePolicy::Never, api, &body));
            }
            assert!(cacheable(CachePolicy::Always, Api::ChatCompletions, &body));
            assert!(!cacheable(CachePolicy::Never, Api::ChatCompletions, &body));
        }
    }
}
