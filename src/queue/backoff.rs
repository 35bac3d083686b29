//! Retry backoff: exponential, capped, with "equal jitter".
//!
//! After failed attempt `n` (1-based) the ceiling is `d = min(base * 2^n, cap)` and the delay
//! is drawn from `[d/2, d]`. Half the ceiling is guaranteed, so a burst of failures against a
//! rate-limited API never comes back at once, and the other half spreads the retries out.
//!
//! The "random" half is a hash of (job id, attempt), not a RNG: store writes must be pure
//! functions of the transaction (a group commit may re-run them), and the model test can
//! predict it. Different jobs still get different delays.

use std::time::Duration;

use super::job::QueueConfig;

/// Milliseconds to wait before the job's next attempt, after failed attempt `attempt`.
pub fn backoff_ms(config: &QueueConfig, job_id: u64, attempt: u32) -> u64 {
    let ceiling = ceiling_ms(config.backoff_base, config.backoff_cap, attempt);
    let half = ceiling / 2;
    let spread = ceiling - half;
    half + mix(job_id ^ (u64::from(attempt) << 48)) % (spread + 1)
}

/// `min(base * 2^attempt, cap)` in ms, without overflow.
fn ceiling_ms(base: Duration, cap: Duration, attempt: u32) -> u64 {
    let base = duration_ms(base);
    let cap = duration_ms(cap);
    let factor = 1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX);
    base.saturating_mul(factor).min(cap)
}

/// A duration in whole ms, saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// splitmix64 finaliser: a well-spread hash of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_stays_between_half_the_ceiling_and_the_ceiling() {
        let config = QueueConfig::default();
        for attempt in 1..=12u32 {
            let ceiling = (2_000u64 << attempt).min(600_000);
            for id in 0..200 {
                let d = backoff_ms(&config, id, attempt);
                assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d}");
            }
        }
    }

    #[test]
    fn delay_is_capped_even_for_absurd_attempts() {
        let config = QueueConfig::default();
        for attempt in [30, 63, 64, 1000, u32::MAX] {
            assert!(backoff_ms(&config, 7, attempt) <= 600_000);
        }
        let huge = QueueConfig {
            backoff_base: Duration::MAX,
            backoff_cap: Duration::MAX,
            ..QueueConfig::default()
        };
        assert!(backoff_ms(&huge, 1, 5) >= u64::MAX / 2);
    }

    #[test]
    fn delays_are_jittered_across_jobs_but_stable_per_job() {
        let config = QueueConfig::default();
        let delays: std::collections::HashSet<u64> =
            (0..100).map(|id| backoff_ms(&config, id, 3)).collect();
        assert!(delays.len() > 50, "only {} distinct delays", delays.len());
        assert_eq!(backoff_ms(&config, 42, 3), backoff_ms(&config, 42, 3));
    }

    #[test]
    fn zero_base_means_retry_at_once() {
        let config = QueueConfig {
            backoff_base: Duration::ZERO,
            ..QueueConfig::default()
        };
        assert_eq!(backoff_ms(&config, 1, 4), 0);
    }
}
