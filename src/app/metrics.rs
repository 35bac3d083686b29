//! The Prometheus text exposition of a process's figures: [`snapshot`] gathers them (queue
//! counters, cache, client, run counters, token totals), [`render`] is a pure function over
//! that snapshot, so `reasonq serve`'s `/metrics` and a batch run can expose the same text.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::inspect::{self, BatchStatus};
use super::{App, Connected};
use crate::cache::CacheStats;
use crate::error::Result;
use crate::llm::{HistogramSnapshot, MetricsSnapshot};
use crate::queue::JobState;
use crate::runner::RunCounts;

/// Everything `/metrics` shows, copied at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every batch's job counts by state and its token totals.
    pub batches: Vec<BatchStatus>,
    pub client: MetricsSnapshot,
    pub latency: HistogramSnapshot,
    pub cache: CacheStats,
    pub run: RunCounts,
    /// Errors by code, counted by the caller (e.g. the service's error answers).
    pub errors: BTreeMap<String, u64>,
    /// Jobs' failed attempts by (error code, failed for good).
    pub job_errors: BTreeMap<(String, bool), u64>,
}

/// Reads the figures of `app` and `connected` now; `errors` is the caller's own count.
pub async fn snapshot(
    app: &App,
    connected: &Connected,
    errors: BTreeMap<String, u64>,
) -> Result<Snapshot> {
    Ok(Snapshot {
        batches: inspect::status(app).await?,
        client: connected.client().metrics(),
        latency: connected.client().latency_histogram(),
        cache: app.cache.stats(),
        run: connected.runner.stats().snapshot(),
        job_errors: connected.runner.stats().errors(),
        errors,
    })
}

/// The snapshot in the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "reasonq_queue_jobs",
        "gauge",
        "Jobs by batch and state.",
    );
    for b in &s.batches {
        for state in JobState::ALL {
            sample(
                &mut out,
                "reasonq_queue_jobs",
                &[("batch", &b.batch), ("state", state.as_str())],
                b.counts.get(state) as f64,
            );
        }
    }
    family(
        &mut out,
        "reasonq_tokens_total",
        "counter",
        "Tokens the server reported for completed jobs, by batch and kind.",
    );
    for b in &s.batches {
        let batch = b.batch.as_str();
        let usage = [
            ("prompt", b.usage.prompt_tokens),
            ("completion", b.usage.completion_tokens),
        ];
        for (kind, n) in usage {
            sample(
                &mut out,
                "reasonq_tokens_total",
                &[("batch", batch), ("kind", kind)],
                n as f64,
            );
        }
    }
    let plain: [(&str, &str, &str, u64); 9] = [
        (
            "reasonq_requests_in_flight",
            "gauge",
            "HTTP requests to the upstream on the wire now.",
            s.client.in_flight,
        ),
        (
            "reasonq_requests_sent_total",
            "counter",
            "HTTP requests sent upstream (every attempt).",
            s.client.requests_sent,
        ),
        (
            "reasonq_retries_total",
            "counter",
            "Upstream attempts after the first one.",
            s.client.retries,
        ),
        (
            "reasonq_upstream_failures_total",
            "counter",
            "Upstream attempts that failed.",
            s.client.failures,
        ),
        (
            "reasonq_rate_limiter_waits_total",
            "counter",
            "Times the client's rate limiter made a request wait.",
            s.client.limiter_waits,
        ),
        (
            "reasonq_cache_misses_total",
            "counter",
            "Upstream fetches made through the cache.",
            s.cache.misses,
        ),
        (
            "reasonq_jobs_completed_total",
            "counter",
            "Jobs completed by this process.",
            s.run.completed,
        ),
        (
            "reasonq_jobs_failed_total",
            "counter",
            "Jobs failed for good by this process.",
            s.run.failed,
        ),
        (
            "reasonq_jobs_retried_total",
            "counter",
            "Jobs sent back to the queue to be tried again.",
            s.run.retried,
        ),
    ];
    for (name, kind, help, value) in plain {
        family(&mut out, name, kind, help);
        sample(&mut out, name, &[], value as f64);
    }
    family(
        &mut out,
        "reasonq_cache_hits_total",
        "counter",
        "Answers from the prompt cache, by tier.",
    );
    sample(
        &mut out,
        "reasonq_cache_hits_total",
        &[("tier", "memory")],
        s.cache.hits_memory as f64,
    );
    sample(
        &mut out,
        "reasonq_cache_hits_total",
        &[("tier", "disk")],
        s.cache.hits_disk as f64,
    );
    family(
        &mut out,
        "reasonq_errors_total",
        "counter",
        "Errors answered by the service, by code.",
    );
    for (code, n) in &s.errors {
        sample(
            &mut out,
            "reasonq_errors_total",
            &[("code", code)],
            *n as f64,
        );
    }
    family(
        &mut out,
        "reasonq_job_errors_total",
        "counter",
        "Failed attempts of jobs by error code; outcome retried (it goes again) or failed (for good).",
    );
    for ((code, last), n) in &s.job_errors {
        let outcome = if *last { "failed" } else { "retried" };
        sample(
            &mut out,
            "reasonq_job_errors_total",
            &[("code", code), ("outcome", outcome)],
            *n as f64,
        );
    }
    histogram(
        &mut out,
        "reasonq_request_duration_seconds",
        "Per-attempt upstream latency.",
        &s.latency,
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A histogram with cumulative `le` buckets, `+Inf`, `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    family(out, name, "histogram", help);
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (upper_us, n) in &h.buckets {
        cumulative += n;
        let le = format!("{}", *upper_us as f64 / 1e6);
        sample(out, &bucket, &[("le", &le)], cumulative as f64);
    }
    sample(out, &bucket, &[("le", "+Inf")], h.count as f64);
    sample(out, &format!("{name}_sum"), &[], h.sum_us as f64 / 1e6);
    sample(out, &format!("{name}_count"), &[], h.count as f64);
}

/// A label value escaped as the format requires (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` (and `/healthz`) on `listener` with the figures of `app` and
/// `connected`, until the future is dropped: `batch --metrics-listen` runs it beside the
/// batch. Connections are served inside this future (no task outlives the batch).
pub async fn serve_during(
    listener: tokio::net::TcpListener,
    app: &App,
    connected: &Connected,
) -> Result<()> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use hyper_util::rt::TokioIo;

    let mut conns = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => match snapshot(app, connected, BTreeMap::new()).await {
                                Ok(s) => (200, render(&s)),
                                Err(e) => (500, format!("cannot read the figures: {e}\n")),
                            },
                            "/healthz" => (200, "ok\n".to_string()),
                            _ => (404, "only /metrics and /healthz\n".to_string()),
                        };
                        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    conns.push(async move {
                        let served = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(e) = served {
                            tracing::debug!("metrics connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(()) = conns.next(), if !conns.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let mut s = Snapshot {
            latency: HistogramSnapshot {
                buckets: vec![(1000, 2), (2000, 3)],
                sum_us: 6000,
                count: 5,
            },
            ..Snapshot::default()
        };
        s.errors.insert("a\"b".into(), 1);
        s.job_errors.insert(("rate_limited".into(), false), 3);
        s.job_errors.insert(("bad_request".into(), true), 1);
        let text = render(&s);
        assert!(text.contains("reasonq_request_duration_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("reasonq_request_duration_seconds_bucket{le=\"0.002\"} 5\n"));
        assert!(text.contains("reasonq_request_duration_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("reasonq_request_duration_seconds_sum 0.006\n"));
        assert!(text.contains("reasonq_errors_total{code=\"a\\\"b\"} 1\n"));
        assert!(text
            .contains("reasonq_job_errors_total{code=\"rate_limited\",outcome=\"retried\"} 3\n"));
        assert!(
            text.contains("reasonq_job_errors_total{code=\"bad_request\",outcome=\"failed\"} 1\n")
        );
    }
}
