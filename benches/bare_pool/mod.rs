//! The baseline of the end-to-end benches: the same requests through a bare hyper-util pool,
//! bodies read and parsed, and nothing else (no queue, cache, store or output).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tokio::sync::Semaphore;

/// Sends `n` requests with the prompts `prompt(0..n)`, `concurrency` at a time.
pub async fn bare(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    n: usize,
    concurrency: usize,
    prompt: fn(usize) -> String,
) -> Duration {
    let slots = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = slots.clone().acquire_owned().await.expect("semaphore");
        let client = client.clone();
        let body = serde_json::json!({
            "model": "grok-4",
            "messages": [{"role": "user", "content": prompt(i)}],
            "temperature": 0
        })
        .to_string();
        let req = hyper::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        tasks.spawn(async move {
            let resp = client.request(req).await.expect("response");
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            let _: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            drop(permit);
        });
        // Reap finished tasks as we go, so the set stays at about `concurrency`.
        while let Some(done) = tasks.try_join_next() {
            done.expect("request task");
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("request task");
    }
    started.elapsed()
}
