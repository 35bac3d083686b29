//! The simulation server on its own, seen through reqwest, so its faults are
//! checked independently of our client.

use std::time::Duration;

use reasonq::sim::{Fault, SimConfig, SimServer};
use serde_json::{json, Value};

fn chat_body(prompt: &str) -> String {
    json!({"model": "grok-4", "messages": [{"role": "user", "content": prompt}]}).to_string()
}

async fn post(
    c: &reqwest::Client,
    s: &SimServer,
    prompt: &str,
) -> reqwest::Result<reqwest::Response> {
    c.post(format!("{}/chat/completions", s.base_url()))
        .header("content-type", "application/json")
        .body(chat_body(prompt))
        .send()
        .await
}

#[tokio::test]
async fn answers_are_deterministic_and_labelled() {
    let s = SimServer::start(SimConfig::default()).await.unwrap();
    let c = reqwest::Client::new();
    let a = post(&c, &s, "why is the sky blue?").await.unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(a.headers()["x-request-id"], "sim-req-1");
    assert_eq!(a.headers()["content-type"], "application/json");
    let a: Value = serde_json::from_slice(&a.bytes().await.unwrap()).unwrap();
    let b: Value = serde_json::from_slice(
        &post(&c, &s, "why is the sky blue?")
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(
        a["choices"][0]["message"]["content"],
        "[simulated] answer to: why is the sky blue?"
    );
    assert_eq!(a["model"], "grok-4");
    let u = &a["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(s.calls_for("why is the sky blue?"), 2);
}

#[tokio::test]
async fn routes_prefix_and_errors() {
    let s = SimServer::start(SimConfig {
        prefix: "/openai/v1".into(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert!(s.base_url().ends_with("/openai/v1"));
    let c = reqwest::Client::new();
    let models = c
        .get(format!("{}/models", s.base_url()))
        .send()
        .await
        .unwrap();
    let models: Value = serde_json::from_slice(&models.bytes().await.unwrap()).unwrap();
    assert_eq!(models["data"][0]["id"], "grok-4");
    let r = c
        .post(format!("http://{}/v1/chat/completions", s.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{}/chat/completions", s.base_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
}

#[tokio::test]
async fn faults_misbehave_on_the_wire() {
    let s = SimServer::start(SimConfig::default()).await.unwrap();
    let c = reqwest::Client::new();
    s.push_faults([
        Fault::Reset,
        Fault::Truncated,
        Fault::RateLimited {
            retry_after_secs: Some(3),
            retry_after_ms: Some(250),
        },
        Fault::Huge(50_000),
        Fault::status(503).with_headers(&[("x-should-retry", "false")]),
        Fault::MalformedJson,
    ]);
    assert!(post(&c, &s, "reset").await.is_err());
    let truncated = post(&c, &s, "truncated").await.unwrap();
    assert!(truncated.bytes().await.is_err());
    let limited = post(&c, &s, "429").await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "3");
    assert_eq!(limited.headers()["retry-after-ms"], "250");
    let huge = post(&c, &s, "huge").await.unwrap().bytes().await.unwrap();
    assert!((49_000..=50_100).contains(&huge.len()), "{}", huge.len());
    let r = post(&c, &s, "503").await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-should-retry"].to_str().unwrap()
        ),
        (503, "false")
    );
    let e: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(e["error"]["type"], "server_error");
    let bad = post(&c, &s, "bad").await.unwrap().bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&bad).is_err());
    assert_eq!(s.stats().faults_pending, 0);
    // Then the default behaviour again.
    assert_eq!(post(&c, &s, "ok").await.unwrap().status(), 200);
}

#[tokio::test]
async fn serves_http2_and_fast_mode() {
    let s = SimServer::start(SimConfig {
        fast: true,
        record_requests: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = post(&c, &s, "anything").await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "[simulated] fast answer"
        );
    }
    let st = s.stats();
    assert_eq!((st.connections, st.requests), (1, 3));
    assert_eq!(st.log[0].version, "HTTP/2.0");
    // Fast mode does not parse prompts.
    assert!(st.by_prompt.is_empty());
}

#[tokio::test]
async fn dropping_the_server_closes_connections() {
    let s = SimServer::start(SimConfig::default()).await.unwrap();
    let c = reqwest::Client::new();
    post(&c, &s, "x").await.unwrap();
    let addr = s.addr();
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(post_to(&c, addr).await.is_err());
}

async fn post_to(
    c: &reqwest::Client,
    addr: std::net::SocketAddr,
) -> reqwest::Result<reqwest::Response> {
    c.post(format!("http://{addr}/v1/chat/completions"))
        .body(chat_body("after"))
        .send()
        .await
}
