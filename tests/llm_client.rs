//! End-to-end tests of the LLM client against the in-process simulation server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reasonq::llm::{LlmClient, LlmConfig, LlmError, PoolConfig, RateLimits, RetryPolicy, Secret};
use reasonq::sim::{Fault, RandomFaults, Reply, SimConfig, SimServer};
use serde_json::{json, Value};

const KEY: &str = "sk-test-7f3a9c1e-DO-NOT-LEAK";

async fn sim() -> SimServer {
    SimServer::start(SimConfig::default()).await.unwrap()
}

fn cfg(base_url: String) -> LlmConfig {
    LlmConfig {
        base_url,
        api_key: Some(Secret::new(KEY)),
        pool: PoolConfig {
            request_timeout: Duration::from_secs(5),
            ..PoolConfig::default()
        },
        retry: RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(20),
            deadline: Some(Duration::from_secs(20)),
        },
        ..LlmConfig::default()
    }
}

fn client(server: &SimServer) -> LlmClient {
    LlmClient::new(cfg(server.base_url())).unwrap()
}

fn body(prompt: &str) -> Value {
    json!({"messages": [{"role": "user", "content": prompt}]})
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let server = sim().await;
    let c = client(&server);
    for i in 0..20 {
        let out = c.chat(&body(&format!("q{i}"))).await.unwrap();
        assert_eq!(out.attempts, 1);
    }
    assert_eq!(server.stats().connections, 1);
    let m = c.metrics();
    assert_eq!((m.requests_sent, m.connections_opened), (20, 1));
    assert!((m.reuse_ratio - 0.95).abs() < 1e-9, "{m:?}");
    assert_eq!(m.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_stay_within_concurrency_cap() {
    let server = SimServer::start(SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(20),
            ..RandomFaults::default()
        }),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut config = cfg(server.base_url());
    config.limits.max_concurrency = 4;
    let c = LlmClient::new(config).unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.chat(&body(&format!("c{i}"))).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let conns = server.stats().connections;
    assert!((2..=4).contains(&conns), "connections: {conns}");
    assert_eq!(c.metrics().connections_opened, conns);
}

#[tokio::test]
async fn body_is_sent_as_given_and_response_is_complete() {
    let server = sim().await;
    let c = client(&server);
    let given: Value = serde_json::from_str(
        r#"{"zeta":1,"model":"grok-3-mini","messages":[{"role":"user","content":"2+2?"}],"reasoning_effort":"high","alpha":{"b":1,"a":2}}"#,
    )
    .unwrap();
    let out = c.chat(&given).await.unwrap();
    let log = server.stats().log;
    assert_eq!(log[0].body, serde_json::to_vec(&given).unwrap());
    assert_eq!(
        log[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(log[0].header("content-type"), Some("application/json"));
    assert_eq!(out.status, 200);
    assert_eq!(out.request_id.as_deref(), Some("sim-req-1"));
    assert_eq!(out.response.content(), Some("[simulated] answer to: 2+2?"));
    assert_eq!(out.response.model.as_deref(), Some("grok-3-mini"));
    assert!(out.response.usage.as_ref().unwrap().total() > 0);
    let raw: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(raw["id"], "chatcmpl-sim-1");

    // Without a model the configured one is put first, the rest untouched.
    c.chat(&body("m?")).await.unwrap();
    let sent: Value = serde_json::from_slice(&server.stats().log[1].body).unwrap();
    let keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["model", "messages"]);
    assert_eq!(sent["model"], "grok-4");
    assert!(c.chat(&json!([1, 2])).await.unwrap_err().code() == "invalid_request");
}

#[tokio::test]
async fn responder_scripts_answers_per_prompt() {
    let server = sim().await;
    server.set_responder(Arc::new(|req: &Value| {
        match req["messages"][0]["content"].as_str() {
            Some("fail") => Reply::Fault(Fault::status(422)),
            Some(p) => Reply::Text(format!("echo {p}")),
            None => Reply::Text(String::new()),
        }
    }));
    let c = client(&server);
    let out = c.chat(&body("hi")).await.unwrap();
    assert_eq!(out.response.content(), Some("echo hi"));
    assert_eq!(
        c.chat(&body("fail")).await.unwrap_err().code(),
        "unprocessable"
    );
    c.chat(&body("hi")).await.unwrap();
    assert_eq!((server.calls_for("hi"), server.calls_for("fail")), (2, 1));
}

/// Expected end of one scripted exchange.
enum Want {
    Ok { attempts: u32 },
    Err { code: &'static str, retryable: bool },
}

#[tokio::test]
async fn every_fault_class_ends_in_the_right_retry_or_error() {
    use Fault::*;
    use Want::{Err as E, Ok as O};
    let s = |st: u16| Fault::status(st);
    let limited = RateLimited {
        retry_after_secs: None,
        retry_after_ms: None,
    };
    let table: Vec<(&str, Vec<Fault>, Want)> = vec![
        ("500", vec![s(500)], O { attempts: 2 }),
        ("502 then 503", vec![s(502), s(503)], O { attempts: 3 }),
        ("504", vec![s(504)], O { attempts: 2 }),
        ("408", vec![s(408)], O { attempts: 2 }),
        ("409", vec![s(409)], O { attempts: 2 }),
        ("429 no advice", vec![limited.clone()], O { attempts: 2 }),
        ("reset before headers", vec![Reset], O { attempts: 2 }),
        ("reset mid-body", vec![Truncated], O { attempts: 2 }),
        (
            "latency",
            vec![Latency(Duration::from_millis(30))],
            O { attempts: 1 },
        ),
        (
            "400",
            vec![s(400)],
            E {
                code: "bad_request",
                retryable: false,
            },
        ),
        (
            "401",
            vec![s(401)],
            E {
                code: "unauthorized",
                retryable: false,
            },
        ),
        (
            "403",
            vec![s(403)],
            E {
                code: "forbidden",
                retryable: false,
            },
        ),
        (
            "404",
            vec![s(404)],
            E {
                code: "not_found",
                retryable: false,
            },
        ),
        (
            "422",
            vec![s(422)],
            E {
                code: "unprocessable",
                retryable: false,
            },
        ),
        (
            "quota",
            vec![InsufficientQuota],
            E {
                code: "insufficient_quota",
                retryable: false,
            },
        ),
        (
            "quota despite x-should-retry",
            vec![InsufficientQuota.with_headers(&[("x-should-retry", "true")])],
            E {
                code: "insufficient_quota",
                retryable: false,
            },
        ),
        // A broken 2xx body is retried like a truncated one.
        ("malformed", vec![MalformedJson], O { attempts: 2 }),
        // A page that is not JSON gets one more try (then see the test below).
        ("html once", vec![WrongContentType], O { attempts: 2 }),
        (
            "huge",
            vec![Huge(300_000)],
            E {
                code: "too_large",
                retryable: false,
            },
        ),
        (
            "500 x4",
            vec![s(500); 4],
            E {
                code: "server_error",
                retryable: true,
            },
        ),
        (
            "resets x4",
            vec![Reset; 4],
            E {
                code: "connection_reset",
                retryable: true,
            },
        ),
        (
            "x-should-retry true on 400",
            vec![s(400).with_headers(&[("x-should-retry", "true")])],
            O { attempts: 2 },
        ),
        (
            "x-should-retry false on 503",
            vec![s(503).with_headers(&[("x-should-retry", "false")])],
            E {
                code: "server_error",
                retryable: false,
            },
        ),
    ];
    let server = sim().await;
    for (name, faults, want) in table {
        let mut config = cfg(server.base_url());
        config.pool.max_response_bytes = 100_000;
        let c = LlmClient::new(config).unwrap();
        let n_faults = faults.len() as u64;
        let before = server.stats().requests;
        server.push_faults(faults);
        let res = c.chat(&body(name)).await;
        let sent = server.stats().requests - before;
        match (want, res) {
            (O { attempts }, Result::Ok(out)) => {
                assert_eq!(out.attempts, attempts, "{name}");
                assert_eq!(sent, u64::from(attempts), "{name}");
                assert_eq!(c.metrics().retries, u64::from(attempts - 1), "{name}");
            }
            (E { code, retryable }, Result::Err(e)) => {
                assert_eq!(e.code(), code, "{name}: {e}");
                assert_eq!(e.is_retryable(), retryable, "{name}: {e}");
                // Fatal errors stop at once; retryable ones use every attempt.
                let expect = if retryable { 4 } else { 1 };
                assert_eq!(sent, expect, "{name}: {e}");
                assert!(sent <= n_faults, "{name}");
            }
            (_, other) => panic!("{name}: unexpected {other:?}"),
        }
        assert_eq!(server.stats().faults_pending, 0, "{name}");
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = sim().await;
    let c = client(&server);
    for (fault, advised) in [
        (
            Fault::RateLimited {
                retry_after_secs: Some(1),
                retry_after_ms: None,
            },
            Duration::from_secs(1),
        ),
        (
            Fault::RateLimited {
                retry_after_secs: Some(5),
                retry_after_ms: Some(300),
            },
            Duration::from_millis(300),
        ),
    ] {
        server.push_faults([fault]);
        let t = Instant::now();
        let out = c.chat(&body("wait")).await.unwrap();
        let took = t.elapsed();
        assert_eq!(out.attempts, 2);
        assert!(took >= advised, "{took:?} < {advised:?}");
        assert!(took < advised * 2 + Duration::from_millis(500), "{took:?}");
    }
    // Retry-After as an HTTP date, second resolution: 1-2 s from now.
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    server.push_faults([Fault::status(503).with_headers(&[("retry-after", &date)])]);
    let t = Instant::now();
    assert_eq!(c.chat(&body("date")).await.unwrap().attempts, 2);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Advice beyond 60 s is ignored in favour of the (tiny) backoff.
    server.push_faults([Fault::RateLimited {
        retry_after_secs: Some(120),
        retry_after_ms: None,
    }]);
    let t = Instant::now();
    c.chat(&body("no wait")).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn giving_up_reports_retryable_error_with_advice() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    config.retry.max_attempts = 2;
    let c = LlmClient::new(config).unwrap();
    let f = Fault::RateLimited {
        retry_after_secs: None,
        retry_after_ms: Some(50),
    };
    server.push_faults([f.clone(), f]);
    let e = c.chat(&body("x")).await.unwrap_err();
    assert_eq!(e.code(), "rate_limited");
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_millis(50)));
    assert_eq!(e.status(), Some(429));
    assert_eq!(e.request_id(), Some("sim-req-2"));
}

#[tokio::test]
async fn overall_deadline_stops_retrying() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    config.retry.max_attempts = 10;
    config.retry.deadline = Some(Duration::from_millis(300));
    let c = LlmClient::new(config).unwrap();
    let f = Fault::RateLimited {
        retry_after_secs: None,
        retry_after_ms: Some(200),
    };
    server.push_faults(vec![f; 10]);
    let t = Instant::now();
    let e = c.chat(&body("x")).await.unwrap_err();
    assert!(e.is_retryable());
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    assert!(server.stats().requests <= 2);
}

#[tokio::test]
async fn per_request_deadline_covers_slow_headers() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    config.pool.request_timeout = Duration::from_millis(200);
    config.retry.max_attempts = 1;
    let c = LlmClient::new(config.clone()).unwrap();
    server.push_faults([Fault::Latency(Duration::from_secs(3))]);
    let t = Instant::now();
    let e = c.chat(&body("slow")).await.unwrap_err();
    assert_eq!(e.code(), "timeout");
    assert!(e.is_retryable());
    assert!(t.elapsed() < Duration::from_secs(1));
    // With a retry the second attempt succeeds.
    config.retry.max_attempts = 2;
    let c = LlmClient::new(config).unwrap();
    server.push_faults([Fault::Latency(Duration::from_secs(3))]);
    assert_eq!(c.chat(&body("slow")).await.unwrap().attempts, 2);
}

#[tokio::test]
async fn fatal_errors_carry_the_provider_message() {
    let server = sim().await;
    let c = client(&server);
    server.push_faults([Fault::Status {
        status: 400,
        code: Some("invalid_value".into()),
        message: "temperature must be <= 2".into(),
    }]);
    let e = c.chat(&body("x")).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("400") && text.contains("temperature must be <= 2"),
        "{text}"
    );
    match e {
        LlmError::Api(a) => {
            assert_eq!(a.error_type.as_deref(), Some("invalid_request_error"));
            assert_eq!(a.code.as_deref(), Some("invalid_value"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn malformed_and_oversized_responses_name_the_problem() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    config.pool.max_response_bytes = 10_000;
    let c = LlmClient::new(config).unwrap();
    // Broken JSON on every attempt (it is retried like a truncated body).
    server.push_faults(vec![Fault::MalformedJson; 4]);
    let e = c.chat(&body("x")).await.unwrap_err().to_string();
    assert!(e.contains("not valid JSON") && e.contains("EOF"), "{e}");
    // A page that is not JSON is tried once more, then named with its URL.
    let before = server.stats().requests;
    server.push_faults([Fault::WrongContentType, Fault::WrongContentType]);
    let e = c.chat(&body("x")).await.unwrap_err().to_string();
    assert!(e.contains("text/html"), "{e}");
    assert!(
        e.contains(&format!("{}/chat/completions", server.base_url())),
        "{e}"
    );
    assert_eq!(server.stats().requests - before, 2, "one retry, no more");
    server.push_faults([Fault::Huge(20_000)]);
    let e = c.chat(&body("x")).await.unwrap_err().to_string();
    assert!(e.contains("10000-byte"), "{e}");
    server.push_faults([Fault::Huge(9_000)]);
    // Just under the cap is accepted.
    let out = c.chat(&body("x")).await.unwrap();
    assert!(out.body.len() > 8_000 && out.response.content().is_none());
}

fn tls_pair() -> (Arc<rustls::ServerConfig>, Vec<u8>) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    (Arc::new(server), ck.cert.pem().into_bytes())
}

#[tokio::test]
async fn tls_with_custom_root_works_and_fails_without_it() {
    let (server_cfg, ca) = tls_pair();
    let server = SimServer::start_tls(SimConfig::default(), server_cfg)
        .await
        .unwrap();
    assert!(server.base_url().starts_with("https://127.0.0.1:"));
    let mut config = cfg(server.base_url());
    config.extra_root_ca_pem = Some(ca);
    let c = LlmClient::new(config.clone()).unwrap();
    for _ in 0..3 {
        c.chat(&body("secure")).await.unwrap();
    }
    let stats = server.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.log[0].version, "HTTP/2.0");

    config.pool.http2 = false;
    let c = LlmClient::new(config.clone()).unwrap();
    c.chat(&body("secure")).await.unwrap();
    assert_eq!(server.stats().log[3].version, "HTTP/1.1");

    config.extra_root_ca_pem = None;
    let c = LlmClient::new(config.clone()).unwrap();
    let before = server.stats().connections;
    let e = c.chat(&body("secure")).await.unwrap_err();
    assert_eq!(e.code(), "tls", "{e}");
    assert!(!e.is_retryable());
    assert_eq!(
        server.stats().connections,
        before + 1,
        "TLS failures are not retried"
    );
    assert!(e.to_string().contains("certificate"), "{e}");

    config.extra_root_ca_pem = Some(b"not a pem".to_vec());
    assert_eq!(LlmClient::new(config).unwrap_err().code(), "config");
}

/// `io::Write` into a shared buffer, for capturing tracing output.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn api_key_never_leaks() {
    let logs = Capture::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    // The process-wide subscriber (this is the only test that sets one): a thread-local one
    // races with the other tests of this binary over the callsites' cached interest. The
    // other tests' logs land here too, and must not hold the key either.
    tracing::subscriber::set_global_default(subscriber).expect("no other test sets one");

    let server = sim().await;
    let c = client(&server);
    server.push_faults([
        Fault::status(500),
        // A provider echoing the key back in its error message.
        Fault::Raw {
            status: 401,
            content_type: "application/json".into(),
            body: json!({"error": {"message": format!("Incorrect API key provided: {KEY}"), "type": "invalid_request_error", "code": "invalid_api_key"}}).to_string(),
        },
    ]);
    let e = c.chat(&body("x")).await.unwrap_err();
    assert_eq!(e.code(), "unauthorized");
    let ok = c.chat(&body("y")).await.unwrap();
    let e2 = LlmClient::new(LlmConfig {
        base_url: "ftp://nope".into(),
        ..cfg(String::new())
    })
    .unwrap_err();

    // The key did go out, in the Authorization header only.
    let log = server.stats().log;
    assert_eq!(
        log[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );

    let captured = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        captured.contains("retrying"),
        "log capture is not working: {captured}"
    );
    let texts = [
        format!("{e} {e:?}"),
        format!("{e2} {e2:?}"),
        format!("{c:?}"),
        format!("{:?}", c.config()),
        format!("{ok:?}"),
        format!("{:?}", c.metrics()),
        captured,
    ];
    for t in texts {
        assert!(!t.contains(KEY), "key leaked: {t}");
        assert!(!t.contains("7f3a9c1e"), "key leaked: {t}");
    }
    assert!(format!("{e}").contains("Incorrect API key provided: ***"));
}

#[tokio::test]
async fn models_are_listed_and_typos_fail_fast() {
    let server = sim().await;
    let c = client(&server);
    assert_eq!(
        c.models().await.unwrap(),
        [
            "grok-4",
            "grok-3-mini",
            "gpt-4o-mini",
            "text-embedding-3-small",
            "omni-moderation-latest"
        ]
    );
    c.check_model("grok-4").await.unwrap();
    let t = Instant::now();
    let e = c.check_model("grok4").await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(e.code(), "unknown_model");
    assert!(e.to_string().contains("did you mean grok-4"), "{e}");
    assert!(server
        .stats()
        .log
        .iter()
        .all(|r| r.method == "GET" && r.path == "/v1/models"));
}

#[tokio::test]
async fn sim_requires_its_key_when_configured() {
    let server = SimServer::start(SimConfig {
        api_key: Some(KEY.into()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    client(&server).chat(&body("x")).await.unwrap();
    let mut config = cfg(server.base_url());
    config.api_key = Some(Secret::new("wrong"));
    let e = LlmClient::new(config)
        .unwrap()
        .chat(&body("x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unauthorized");
}

#[tokio::test]
async fn rpm_limit_paces_requests() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    config.limits = RateLimits {
        rpm: Some(5),
        window: Duration::from_millis(500),
        ..RateLimits::default()
    };
    let c = LlmClient::new(config).unwrap();
    let t = Instant::now();
    for _ in 0..5 {
        c.chat(&body("burst")).await.unwrap();
    }
    // A full bucket lets the first window's budget through at once.
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "burst {:?}",
        t.elapsed()
    );
    for _ in 0..5 {
        c.chat(&body("paced")).await.unwrap();
    }
    // 5 more requests at 10/s after the burst: about 500 ms.
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(c.metrics().limiter_waits >= 4);
}

#[tokio::test]
async fn a_rate_limiter_wait_counts_against_the_calls_deadline() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    // One request a minute, and calls that may take 300 ms in all.
    config.limits = RateLimits {
        rpm: Some(1),
        window: Duration::from_secs(60),
        ..RateLimits::default()
    };
    config.retry.deadline = Some(Duration::from_millis(300));
    let c = LlmClient::new(config).unwrap();
    c.chat(&body("first")).await.unwrap();
    let t = Instant::now();
    let e = c.chat(&body("second")).await.unwrap_err();
    assert_eq!(e.code(), "timeout", "{e}");
    assert!(e.is_retryable());
    // It gave up at the deadline instead of waiting out the minute.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        server.stats().by_prompt.get("second"),
        None,
        "nothing was sent"
    );
}

#[tokio::test]
async fn tpm_limit_paces_and_corrects_with_usage() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    config.limits = RateLimits {
        tpm: Some(1000),
        window: Duration::from_millis(500),
        ..RateLimits::default()
    };
    let c = LlmClient::new(config).unwrap();
    let big = json!({"messages": [{"role": "user", "content": "q"}], "max_tokens": 400});
    // Sequential: the estimate (~420) is refunded down to the real usage (~15),
    // so five of them never wait although 5 * 420 > 1000.
    for _ in 0..5 {
        c.chat(&big).await.unwrap();
    }
    assert_eq!(c.metrics().limiter_waits, 0);
    // Concurrent: all reserve before any usage comes back, so the later ones wait.
    let t = Instant::now();
    let calls = (0..5).map(|_| c.chat(&big));
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    assert!(c.metrics().limiter_waits >= 2);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn ratelimit_headers_slow_down_before_429() {
    let server = sim().await;
    let c = client(&server);
    server.push_faults([Fault::Ok.with_headers(&[
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "300ms"),
        ("x-ratelimit-remaining-tokens", "90000"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ])]);
    c.chat(&body("first")).await.unwrap();
    let t = Instant::now();
    c.chat(&body("second")).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(c.metrics().limiter_waits, 1);
}

#[tokio::test]
async fn random_mode_is_reproducible() {
    async fn codes(seed: u64) -> Vec<&'static str> {
        let server = SimServer::start(SimConfig {
            random: Some(RandomFaults {
                seed,
                p_rate_limit: 0.3,
                p_server_error: 0.2,
                ..RandomFaults::default()
            }),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let mut config = cfg(server.base_url());
        config.retry.max_attempts = 1;
        let c = LlmClient::new(config).unwrap();
        let mut out = Vec::new();
        for i in 0..30 {
            out.push(match c.chat(&body(&i.to_string())).await {
                Ok(_) => "ok",
                Err(e) => e.code(),
            });
        }
        out
    }
    let a = codes(7).await;
    assert_eq!(a, codes(7).await);
    assert!(a.contains(&"ok") && a.contains(&"rate_limited") && a.contains(&"server_error"));
    assert_ne!(a, codes(8).await);
}

#[tokio::test]
async fn metrics_report_latency_and_retries() {
    let server = sim().await;
    let c = client(&server);
    server.push_faults([
        Fault::status(503),
        Fault::Latency(Duration::from_millis(20)),
    ]);
    c.chat(&body("x")).await.unwrap();
    for _ in 0..8 {
        c.chat(&body("y")).await.unwrap();
    }
    let m = c.metrics();
    assert_eq!(
        (m.requests_sent, m.responses, m.failures, m.retries),
        (10, 9, 1, 1)
    );
    assert!(m.latency_p50_us > 0 && m.latency_p50_us < 20_000, "{m:?}");
    assert!(m.latency_p99_us >= 20_000, "{m:?}");
    let v: Value = serde_json::to_value(&m).unwrap();
    assert_eq!(v["retries"], 1);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    config.retry.max_attempts = 1;
    let c = LlmClient::new(config).unwrap();
    c.chat(&body("x")).await.unwrap();
    server.shutdown().await;
    let e = c.chat(&body("x")).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(matches!(e.code(), "connect" | "connection_reset"), "{e}");
}

#[tokio::test]
async fn pool_idle_settings_take_effect() {
    let server = sim().await;
    let mut config = cfg(server.base_url());
    config.pool.idle_timeout = Duration::from_millis(100);
    let c = LlmClient::new(config.clone()).unwrap();
    c.chat(&body("a")).await.unwrap();
    c.chat(&body("b")).await.unwrap();
    assert_eq!(server.stats().connections, 1);
    assert_eq!(server.stats().open_connections, 1);
    // The pool timer's sweep closes the idle connection without any new request.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.stats().open_connections, 0);
    c.chat(&body("c")).await.unwrap();
    assert_eq!(server.stats().connections, 2);

    config.pool.max_idle_per_host = 0;
    let c = LlmClient::new(config).unwrap();
    for p in ["d", "e", "f"] {
        c.chat(&body(p)).await.unwrap();
    }
    assert_eq!(c.metrics().connections_opened, 3);
}

#[tokio::test]
async fn a_2xx_body_that_echoes_the_key_is_scrubbed_from_the_error() {
    let server = sim().await;
    let c = client(&server);
    // A gateway answering 200 with a debug page that quotes the request's headers.
    let echo = Fault::Raw {
        status: 200,
        content_type: "application/json".into(),
        body: format!("not json: Authorization: Bearer {KEY}"),
    };
    server.push_faults(vec![echo; 4]);
    let e = c.chat(&body("x")).await.unwrap_err();
    assert_eq!(e.code(), "malformed_response");
    let text = format!("{e} {e:?}");
    assert!(text.contains("not json"), "the excerpt is kept: {text}");
    assert!(!text.contains(KEY), "the key leaked: {text}");
}
