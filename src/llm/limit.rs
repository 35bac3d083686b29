//! Client-side rate limiting: RPM and TPM token buckets, a concurrency cap and
//! pacing from the server's `x-ratelimit-*` headers.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;
use super::retry::parse_duration;

/// Limits applied before each attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// Requests per `window`.
    pub rpm: Option<u32>,
    /// Tokens (prompt estimate + output cap, corrected by usage) per `window`.
    pub tpm: Option<u32>,
    /// Requests on the wire at once.
    pub max_concurrency: usize,
    /// Length of the rate window; one minute except in tests.
    pub window: Duration,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            rpm: None,
            tpm: None,
            max_concurrency: 64,
            window: Duration::from_secs(60),
        }
    }
}

/// A token bucket with reservations: callers take tokens up front and sleep
/// off any debt, which keeps the order fair without a queue.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(per_window: u32, window: Duration) -> Self {
        let capacity = f64::from(per_window.max(1));
        Bucket {
            capacity,
            per_sec: capacity / window.as_secs_f64().max(1e-3),
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Removes `n` tokens (`n` may be negative to refund) and returns how long
    /// the caller must wait for the balance to be paid back.
    fn take(&self, n: f64) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.per_sec;
        st.0 = (st.0 + refill).min(self.capacity) - n;
        st.0 = st.0.min(self.capacity);
        st.1 = now;
        if st.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(-st.0 / self.per_sec).unwrap_or(Duration::MAX)
        }
    }
}

/// Longest wait for an advertised rate-limit reset.
const MAX_RESET_WAIT: Duration = Duration::from_secs(60);

/// Latest `x-ratelimit-*` report: remaining budget and when it resets.
#[derive(Debug, Default)]
struct Pacing {
    requests: Option<(u64, Instant)>,
    tokens: Option<(u64, Instant)>,
}

/// Applies `RateLimits` and server pacing to every attempt.
#[derive(Debug)]
pub(crate) struct Limiter {
    sem: Arc<Semaphore>,
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    pacing: Mutex<Pacing>,
    /// Set once the server ever reported limits; spares the lock otherwise.
    paced: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Held while a request is on the wire.
pub(crate) struct Permit {
    _slot: Option<OwnedSemaphorePermit>,
}

impl Limiter {
    pub(crate) fn new(l: &RateLimits, metrics: Arc<Metrics>) -> Self {
        Limiter {
            sem: Arc::new(Semaphore::new(l.max_concurrency.max(1))),
            rpm: l.rpm.map(|r| Bucket::new(r, l.window)),
            tpm: l.tpm.map(|t| Bucket::new(t, l.window)),
            pacing: Mutex::new(Pacing::default()),
            paced: AtomicBool::new(false),
            metrics,
        }
    }

    /// Whether token estimates are needed at all.
    pub(crate) fn counts_tokens(&self) -> bool {
        self.tpm.is_some()
    }

    /// Waits until a request of about `tokens` tokens may go out.
    pub(crate) async fn acquire(&self, tokens: u64) -> Permit {
        let mut wait = self.pace(tokens);
        if let Some(b) = &self.rpm {
            wait = wait.max(b.take(1.0));
        }
        if let Some(b) = &self.tpm {
            wait = wait.max(b.take(tokens as f64));
        }
        if !wait.is_zero() {
            self.metrics.limiter_waits.fetch_add(1, Relaxed);
            tracing::debug!(wait_ms = wait.as_millis() as u64, "rate limiter pacing");
            tokio::time::sleep(wait).await;
        }
        // The semaphore is never closed, so this is always Some.
        let slot = Arc::clone(&self.sem).acquire_owned().await.ok();
        Permit { _slot: slot }
    }

    /// Corrects the TPM bucket once the real usage is known (0 for failures).
    pub(crate) fn settle(&self, estimated: u64, actual: u64) {
        if let Some(b) = &self.tpm {
            // Only the balance matters here; a wait is paid by the next caller.
            let _ = b.take(actual as f64 - estimated as f64);
        }
    }

    /// Records the server's remaining budget from response headers.
    pub(crate) fn observe(&self, h: &HeaderMap) {
        let read = |rem: &str, reset: &str| -> Option<(u64, Instant)> {
            let remaining = h.get(rem)?.to_str().ok()?.trim().parse().ok()?;
            // A reset hours away (a daily quota) is not waited for inside one call: the
            // call's 429 goes back to the queue instead.
            let reset = parse_duration(h.get(reset)?.to_str().ok()?)?.min(MAX_RESET_WAIT);
            Some((remaining, Instant::now().checked_add(reset)?))
        };
        let req = read(
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        );
        let tok = read("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens");
        if req.is_none() && tok.is_none() {
            return;
        }
        self.paced.store(true, Relaxed);
        let mut p = self.pacing.lock().unwrap_or_else(PoisonError::into_inner);
        if req.is_some() {
            p.requests = req;
        }
        if tok.is_some() {
            p.tokens = tok;
        }
    }

    /// Wait imposed by the last server report, spending its budget locally
    /// so concurrent callers do not all rush the last remaining slot.
    fn pace(&self, tokens: u64) -> Duration {
        if !self.paced.load(Relaxed) {
            return Duration::ZERO;
        }
        let mut p = self.pacing.lock().unwrap_or_else(PoisonError::into_inner);
        let Pacing {
            requests,
            tokens: toks,
        } = &mut *p;
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for (slot, cost) in [(requests, 1), (toks, tokens)] {
            match slot {
                Some((_, reset)) if *reset <= now => *slot = None,
                Some((remaining, reset)) if *remaining < cost.max(1) => {
                    wait = wait.max(*reset - now);
                }
                Some((remaining, _)) => *remaining -= cost,
                None => {}
            }
        }
        wait
    }
}

/// Rough token estimate of a request: ~4 bytes per token of the body plus
/// the output cap, which providers count against TPM up front.
pub(crate) fn estimate_tokens(body: &[u8]) -> u64 {
    let prompt = body.len() as u64 / 4;
    let cap = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("max_completion_tokens")
                .or_else(|| v.get("max_tokens"))
                .and_then(serde_json::Value::as_u64)
        })
        .unwrap_or(0);
    prompt + cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bucket_allows_burst_then_paces() {
        let b = Bucket::new(10, Duration::from_secs(1));
        for _ in 0..10 {
            assert_eq!(b.take(1.0), Duration::ZERO);
        }
        let w = b.take(1.0);
        assert!(
            w > Duration::from_millis(80) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        // Refund brings the balance back.
        b.take(-5.0);
        assert_eq!(b.take(1.0), Duration::ZERO);
    }

    #[test]
    fn header_pacing() {
        let l = Limiter::new(&RateLimits::default(), Arc::new(Metrics::default()));
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("1"),
        );
        h.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_static("200ms"),
        );
        l.observe(&h);
        assert_eq!(l.pace(0), Duration::ZERO);
        let w = l.pace(0);
        assert!(w > Duration::from_millis(100), "{w:?}");
        h.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("50"),
        );
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("1s"));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("100"),
        );
        l.observe(&h);
        assert_eq!(l.pace(40), Duration::ZERO);
        assert!(l.pace(40) > Duration::from_millis(500));
    }

    #[test]
    fn estimate_counts_output_cap() {
        let body = br#"{"messages":[{"role":"user","content":"hello there"}],"max_tokens":100}"#;
        let e = estimate_tokens(body);
        assert!((110..=130).contains(&e), "{e}");
    }
}
