//! Lock-free client metrics: counters and a log-bucketed latency histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Four buckets per power of two of microseconds: ~19% resolution, 1 µs to ~70 min.
const SUB_BITS: u32 = 2;
const SUB: u32 = 1 << SUB_BITS;
const BUCKETS: usize = 32 * SUB as usize;

/// Live counters, shared by the client, its connector and its limiter.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) requests_sent: AtomicU64,
    pub(crate) responses: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) limiter_waits: AtomicU64,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_sent: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            limiter_waits: AtomicU64::new(0),
            latency: Histogram::default(),
        }
    }
}

/// Point-in-time copy of the client metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// HTTP requests put on the wire (every attempt counts).
    pub requests_sent: u64,
    /// Attempts that ended in a usable answer.
    pub responses: u64,
    /// Attempts that failed: transport error, error status or bad body.
    pub failures: u64,
    /// TCP connections opened by the connector.
    pub connections_opened: u64,
    /// Share of requests that went over an already open connection.
    pub reuse_ratio: f64,
    /// Requests on the wire right now.
    pub in_flight: u64,
    /// Attempts after the first one.
    pub retries: u64,
    /// Times the rate limiter made a request wait.
    pub limiter_waits: u64,
    /// Per-attempt latency percentiles (upper bucket bounds), microseconds.
    pub latency_p50_us: u64,
    /// 95th percentile.
    pub latency_p95_us: u64,
    /// 99th percentile.
    pub latency_p99_us: u64,
    /// Largest latency bucket seen.
    pub latency_max_us: u64,
}

impl Metrics {
    /// Records one attempt's latency (request sent to body read).
    pub fn observe_latency(&self, d: Duration) {
        self.latency.record(d);
    }

    /// The per-attempt latency histogram's buckets.
    pub fn latency(&self) -> HistogramSnapshot {
        self.latency.snapshot()
    }

    /// Copies the current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let sent = self.requests_sent.load(Relaxed);
        let opened = self.connections_opened.load(Relaxed);
        let reuse_ratio = if sent == 0 {
            0.0
        } else {
            1.0 - (opened.min(sent) as f64 / sent as f64)
        };
        MetricsSnapshot {
            requests_sent: sent,
            responses: self.responses.load(Relaxed),
            failures: self.failures.load(Relaxed),
            connections_opened: opened,
            reuse_ratio,
            in_flight: self.in_flight.load(Relaxed),
            retries: self.retries.load(Relaxed),
            limiter_waits: self.limiter_waits.load(Relaxed),
            latency_p50_us: self.latency.percentile(0.50),
            latency_p95_us: self.latency.percentile(0.95),
            latency_p99_us: self.latency.percentile(0.99),
            latency_max_us: self.latency.percentile(1.0),
        }
    }
}

/// Fixed log-scale histogram of durations; recording is one atomic add.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the observations in µs, for the Prometheus `_sum`.
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// A histogram's buckets as they are now, for an exposition format (`/metrics`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in µs, observations in this bucket alone), the non-empty buckets in
    /// ascending order.
    pub buckets: Vec<(u64, u64)>,
    /// Sum of every observation, µs.
    pub sum_us: u64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < 2 {
            return 0;
        }
        let log = 63 - us.leading_zeros();
        // Next SUB_BITS bits after the leading one pick the sub-bucket.
        let frac = if log >= SUB_BITS {
            (us >> (log - SUB_BITS)) & u64::from(SUB - 1)
        } else {
            (us << (SUB_BITS - log)) & u64::from(SUB - 1)
        };
        ((log * SUB) as usize + frac as usize).min(BUCKETS - 1)
    }

    fn upper_bound(i: usize) -> u64 {
        let log = i as u32 / SUB;
        let frac = u64::from(i as u32 % SUB);
        let base = 1u64 << log;
        base + (base * (frac + 1)) / u64::from(SUB)
    }

    /// Adds one observation.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The non-empty buckets, their total and the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(u64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (Self::upper_bound(i), b.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_us: self.sum_us.load(Relaxed),
        }
    }

    /// Upper bound (µs) of the bucket holding quantile `q` (0..=1); 0 when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper_bound(i);
            }
        }
        Self::upper_bound(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_values() {
        let mut last = 0;
        for us in [
            1u64, 2, 3, 5, 9, 17, 100, 1000, 12_345, 1_000_000, 60_000_000,
        ] {
            let i = Histogram::index(us);
            assert!(i >= last);
            last = i;
            let ub = Histogram::upper_bound(i);
            assert!(ub >= us, "{us} -> {ub}");
            assert!(ub as f64 <= us as f64 * 1.5 + 2.0, "{us} -> {ub}");
        }
    }

    #[test]
    fn percentiles() {
        let h = Histogram::default();
        assert_eq!(h.percentile(0.5), 0);
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(10));
        h.record(Duration::from_millis(10));
        let p50 = h.percentile(0.5);
        assert!((100..=125).contains(&p50), "{p50}");
        let p99 = h.percentile(0.99);
        assert!((10_000..=12_500).contains(&p99), "{p99}");
    }
}
