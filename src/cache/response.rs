//! What the cache holds: the raw successful response of one request, with its lifetime.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A successful upstream response, kept as the raw body so a hit returns exactly what the
/// provider sent. Times are milliseconds since the Unix epoch ([`crate::clock::now_ms`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedResponse {
    /// HTTP status (2xx: only successes are cached).
    pub status: u16,
    /// The provider's request id header, if any, for tracing a cached answer to its origin.
    pub request_id: Option<String>,
    /// The raw response body.
    pub body: Bytes,
    /// When the response was stored.
    pub created_at: u64,
    /// When it stops being served: from this instant on it is a miss.
    pub expires_at: u64,
}

impl crate::codec::Record for CachedResponse {}

impl CachedResponse {
    /// A fresh response, not yet stamped with its lifetime (the cache stamps it on insert,
    /// see [`CachedResponse::stamped`]).
    pub fn new(status: u16, request_id: Option<String>, body: impl Into<Bytes>) -> Self {
        CachedResponse {
            status,
            request_id,
            body: body.into(),
            created_at: 0,
            expires_at: 0,
        }
    }

    /// The response stamped as stored at `now` (ms) and living `ttl`.
    pub fn stamped(mut self, now: u64, ttl: Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.created_at = now;
        self.expires_at = now.saturating_add(ttl_ms);
        self
    }

    /// Whether it must no longer be served at `now` (ms).
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// Whether the status is a success, the only kind the cache keeps.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Approximate bytes it occupies in memory (never 0), the weight in the memory tier.
    pub fn weight(&self) -> u64 {
        let heap = self.body.len() + self.request_id.as_ref().map_or(0, String::len);
        // The key and the struct itself are held per entry too.
        (heap + size_of::<Self>() + 32) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_sets_the_lifetime_and_expiry_is_inclusive() {
        let r = CachedResponse::new(200, None, "x").stamped(1_000, Duration::from_millis(50));
        assert_eq!((r.created_at, r.expires_at), (1_000, 1_050));
        assert!(!r.is_expired(1_049));
        assert!(r.is_expired(1_050));
        let forever = CachedResponse::new(200, None, "x").stamped(5, Duration::MAX);
        assert_eq!(forever.expires_at, u64::MAX);
    }

    #[test]
    fn weight_counts_the_body_and_request_id() {
        let small = CachedResponse::new(200, None, vec![0u8; 10]);
        let big = CachedResponse::new(200, Some("req_1".into()), vec![0u8; 1010]);
        assert_eq!(big.weight() - small.weight(), 1000 + 5);
    }

    #[test]
    fn only_2xx_is_success() {
        assert!(CachedResponse::new(200, None, "").is_success());
        assert!(CachedResponse::new(204, None, "").is_success());
        assert!(!CachedResponse::new(429, None, "").is_success());
        assert!(!CachedResponse::new(500, None, "").is_success());
    }
}
