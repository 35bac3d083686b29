//! The cache key: SHA-256 of a canonical encoding of the request URL and its entire body.
//!
//! Gateways that hash only the parameters they know serve wrong answers when a new parameter
//! (say `reasoning_effort`) changes the output. So every field counts, known or not, except
//! the few in [`IGNORED_FIELDS`], which identify the caller or route the request and cannot
//! change the answer.

use std::fmt;
use std::io::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Top-level request fields left out of the key: end-user identifiers and routing or
/// bookkeeping hints that the provider does not use to produce the answer. `store` is NOT
/// here: it asks the provider for a side effect, so a request with it is kept apart.
pub const IGNORED_FIELDS: &[&str] = &["user", "safety_identifier", "metadata", "prompt_cache_key"];

/// Bumped whenever the canonical encoding changes, so old entries can never be confused with
/// new ones (they simply stop matching).
const KEY_DOMAIN: &[u8] = b"reasonq.cache.v1\n";

/// A 32-byte SHA-256 digest identifying one request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key of a request to `endpoint` (e.g. `/chat/completions`) under `base_url` (e.g.
    /// `https://api.x.ai/v1`) with this JSON body.
    ///
    /// The URL is normalised to `base` without trailing slashes + `/` + `endpoint` without
    /// leading slashes. Object keys are sorted recursively, so key order never matters; numbers
    /// are written as serde_json prints them, so `0` and `0.0` are different requests (never
    /// wrongly merged, at worst a missed hit).
    pub fn for_request(base_url: &str, endpoint: &str, body: &Value) -> CacheKey {
        // One buffer hashed in one call, rather than many tiny hasher updates (serde_json
        // writes strings in small pieces).
        let mut canonical = Vec::with_capacity(1024);
        // Writing into a Vec cannot fail.
        let _ = write_canonical_request(&mut canonical, base_url, endpoint, body);
        CacheKey(Sha256::digest(&canonical).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

/// The bytes that are hashed: a domain tag, the normalised URL, a NUL (a URL never contains
/// one, so URL and body cannot run into each other), then the body minus [`IGNORED_FIELDS`] as
/// canonical JSON.
fn write_canonical_request(
    out: &mut impl Write,
    base_url: &str,
    endpoint: &str,
    body: &Value,
) -> std::io::Result<()> {
    out.write_all(KEY_DOMAIN)?;
    out.write_all(base_url.trim_end_matches('/').as_bytes())?;
    out.write_all(b"/")?;
    out.write_all(endpoint.trim_start_matches('/').as_bytes())?;
    out.write_all(b"\0")?;
    match body {
        Value::Object(map) => write_object(
            out,
            map.iter()
                .filter(|(k, _)| !IGNORED_FIELDS.contains(&k.as_str())),
        ),
        other => write_canonical(out, other),
    }
}

/// Compact JSON with object keys sorted bytewise, recursively; strings escaped and numbers
/// printed by serde_json (both deterministic).
fn write_canonical(out: &mut impl Write, value: &Value) -> std::io::Result<()> {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(out, item)?;
            }
            out.write_all(b"]")
        }
        Value::Object(map) => write_object(out, map.iter()),
    }
}

fn write_object<'a>(
    out: &mut impl Write,
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = entries.collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.write_all(b"{")?;
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, k).map_err(std::io::Error::other)?;
        out.write_all(b":")?;
        write_canonical(out, v)?;
    }
    out.write_all(b"}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(base: &str, endpoint: &str, body: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_canonical_request(&mut out, base, endpoint, body).unwrap();
        out
    }

    #[test]
    fn encoding_sorts_keys_recursively_and_drops_ignored_top_level_fields() {
        let body = json!({
            "model": "m", "user": "u1", "metadata": {"k": "v"},
            "a": [1, {"z": 1.5, "b": null, "user": "kept when nested"}], "s": "é\"\n"
        });
        let mut expected = KEY_DOMAIN.to_vec();
        expected.extend_from_slice(b"https://h/v1/chat/completions\0");
        expected.extend_from_slice(
            r#"{"a":[1,{"b":null,"user":"kept when nested","z":1.5}],"model":"m","s":"é\"\n"}"#
                .as_bytes(),
        );
        assert_eq!(
            String::from_utf8(canonical("https://h/v1//", "chat/completions", &body)).unwrap(),
            String::from_utf8(expected.clone()).unwrap()
        );
        let key = CacheKey::for_request("https://h/v1", "/chat/completions", &body);
        assert_eq!(key.0, <[u8; 32]>::from(Sha256::digest(&expected)));
    }

    #[test]
    fn display_is_lowercase_hex() {
        let key = CacheKey([0xab; 32]);
        assert_eq!(key.to_string(), "ab".repeat(32));
        assert_eq!(format!("{key:?}"), format!("CacheKey({})", "ab".repeat(32)));
    }
}
