//! Retry policy, backoff with full jitter and parsing of server advice headers.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use rand::Rng;

use super::error::LlmError;

/// How `LlmClient::chat` retries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retries).
    pub max_attempts: u32,
    /// Backoff before the second attempt (before jitter).
    pub base: Duration,
    /// Largest backoff between two attempts.
    pub cap: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            deadline: Some(Duration::from_secs(15 * 60)),
        }
    }
}

/// Server advice is trusted only inside this range (as the OpenAI SDKs do).
const MAX_ADVISED: Duration = Duration::from_secs(60);

impl RetryPolicy {
    /// Full-jitter exponential backoff: uniform in `[0, min(cap, base * 2^(attempt-1))]`.
    /// `attempt` is the number of the attempt that just failed, from 1.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceil = exp.min(self.cap);
        ceil.mul_f64(rand::rng().random::<f64>())
    }

    /// Delay before the next attempt: the server's advice when it is within
    /// 0..=60 s (plus up to 10% jitter so clients do not stampede), else backoff.
    pub fn delay_after(&self, attempt: u32, err: &LlmError) -> Duration {
        match err.retry_after() {
            Some(d) if d <= MAX_ADVISED => d + d.mul_f64(0.1 * rand::rng().random::<f64>()),
            _ => self.backoff(attempt),
        }
    }
}

/// Retry advice read from one response's headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Advice {
    /// `x-should-retry: true|false`.
    pub should_retry: Option<bool>,
    /// `retry-after-ms`, else `Retry-After` (seconds or HTTP date).
    pub retry_after: Option<Duration>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok().map(str::trim)
}

/// Reads `x-should-retry`, `retry-after-ms` and `Retry-After`.
pub fn parse_advice(h: &HeaderMap) -> Advice {
    let should_retry = match header(h, "x-should-retry") {
        Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    };
    let ms = header(h, "retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|v| secs(v / 1000.0));
    let retry_after = ms.or_else(|| header(h, "retry-after").and_then(parse_retry_after));
    Advice {
        should_retry,
        retry_after,
    }
}

/// `Retry-After`: delta seconds (fractions tolerated) or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(n) = v.parse::<f64>() {
        return secs(n);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Go-style duration strings used by `x-ratelimit-reset-*`: `12ms`, `6m0s`,
/// `1.5s`, `1h2m`, `250us`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<f64>() {
        return secs(n);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += num * scale;
    }
    secs(total)
}

/// Seconds from a header as a `Duration`; `None` for negative, NaN or
/// absurdly large values rather than a panic.
fn secs(n: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("12ms"), Some(ms(12)));
        assert_eq!(parse_duration("6m0s"), Some(ms(360_000)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_duration("1h2m3s"), Some(ms(3_723_000)));
        assert_eq!(parse_duration("2"), Some(ms(2000)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        for bad in [
            "",
            "abc",
            "5x",
            "ms",
            "-1s",
            "1e300",
            "99999999999999999999h",
            "NaN",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn advice_order_and_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_advice(&h), Advice::default());
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(parse_advice(&h).retry_after, Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(
            parse_advice(&h).retry_after,
            Some(Duration::from_millis(250))
        );
        h.insert("x-should-retry", HeaderValue::from_static("false"));
        assert_eq!(parse_advice(&h).should_retry, Some(false));
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(10));
        let d = parse_retry_after(&date).unwrap();
        assert!(
            d <= Duration::from_secs(10) && d >= Duration::from_secs(8),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("1e300"), None);
        h.insert("retry-after-ms", HeaderValue::from_static("1e300"));
        assert_eq!(parse_advice(&h).retry_after, Some(Duration::from_secs(3)));
    }

    proptest::proptest! {
        #[test]
        fn header_parsers_never_panic(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
            let _ = parse_retry_after(&s);
        }

        #[test]
        fn go_durations_add_up(h in 0u64..100, m in 0u64..60, ms in 0u64..1000) {
            let text = format!("{h}h{m}m{ms}ms");
            let want = Duration::from_millis(((h * 60 + m) * 60) * 1000 + ms);
            let got = parse_duration(&text).unwrap();
            proptest::prop_assert!(got.abs_diff(want) < Duration::from_micros(1), "{text}");
        }
    }

    #[test]
    fn backoff_is_bounded_full_jitter() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(350),
            ..RetryPolicy::default()
        };
        for attempt in 1..40 {
            let ceil = Duration::from_millis(100 * (1 << (attempt - 1).min(20))).min(p.cap);
            assert!(p.backoff(attempt) <= ceil);
        }
        // Full jitter: values spread over the whole range, not clustered at the top.
        let low = (0..200)
            .filter(|_| p.backoff(3) < Duration::from_millis(150))
            .count();
        assert!(low > 20, "{low}");
    }
}
