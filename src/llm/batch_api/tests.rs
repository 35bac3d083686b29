//! Parsers against fixtures shaped like the providers' docs, and what each step sends,
//! against a scripted HTTP server on 127.0.0.1 (nothing leaves the machine).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::*;
use crate::llm::{LlmConfig, PoolConfig, RetryPolicy, Secret};

const KEY: &str = "sk-test-batch-4c1e9a-DO-NOT-LEAK";

// ----- a scripted server -----

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An answer: status, headers, body frames (`None` breaks the body off there).
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    frames: Vec<Option<Bytes>>,
}

fn ok(v: Value) -> Reply {
    reply(200, v)
}

fn reply(status: u16, v: Value) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json".into())],
        frames: vec![Some(Bytes::from(v.to_string()))],
    }
}

/// A body sent as these frames, in this order.
fn frames(parts: &[&str]) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type", "application/binary".into())],
        frames: parts
            .iter()
            .map(|p| Some(Bytes::from(p.to_string())))
            .collect(),
    }
}

type Script = Box<dyn FnMut(&Seen) -> Reply + Send>;

struct Mock {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    async fn start(script: impl FnMut(&Seen) -> Reply + Send + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(script)));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        let script = Arc::clone(&script);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                uri: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            };
                            let r = (script.lock().unwrap())(&seen);
                            log.lock().unwrap().push(seen);
                            let frames = r.frames.into_iter().map(|f| match f {
                                Some(b) => Ok(Frame::data(b)),
                                None => Err(std::io::Error::other("broken off")),
                            });
                            let mut resp =
                                Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                            *resp.status_mut() = http::StatusCode::from_u16(r.status).unwrap();
                            for (k, v) in r.headers {
                                resp.headers_mut().insert(k, v.parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Mock { base, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn api(&self, protocol: Protocol) -> BatchApi {
        api_for(&self.base, protocol)
    }
}

fn api_for(base: &str, protocol: Protocol) -> BatchApi {
    let cfg = LlmConfig {
        base_url: base.to_owned(),
        api_key: Some(Secret::new(KEY)),
        pool: PoolConfig {
            request_timeout: Duration::from_secs(5),
            ..PoolConfig::default()
        },
        retry: RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(2),
            cap: Duration::from_millis(10),
            deadline: Some(Duration::from_secs(20)),
        },
        ..LlmConfig::default()
    };
    BatchApi::new(LlmClient::new(cfg).unwrap(), protocol)
}

fn req(id: &str, prompt: &str) -> RemoteRequest {
    let body = json!({"model": "m-1", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16});
    RemoteRequest {
        custom_id: id.into(),
        body: Bytes::from(body.to_string()),
    }
}

fn reqs(n: usize) -> Vec<RemoteRequest> {
    (1..=n)
        .map(|i| req(&format!("rq-{i}"), &format!("q{i}")))
        .collect()
}

async fn collect(api: &BatchApi, batch: &RemoteBatch) -> Result<Vec<RemoteResult>, LlmError> {
    let mut out = Vec::new();
    api.results(batch, &mut |r| {
        out.push(r);
        Ok(())
    })
    .await?;
    Ok(out)
}

fn assert_bearer_only(s: &Seen) {
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {KEY}").as_str()),
        "{}",
        s.uri
    );
    assert_eq!(s.header("x-api-key"), None);
}

fn assert_x_api_key_only(s: &Seen) {
    assert_eq!(s.header("x-api-key"), Some(KEY), "{}", s.uri);
    assert_eq!(s.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(s.header("authorization"), None);
}

fn now() -> u64 {
    now_unix()
}

fn rfc3339(t: u64) -> String {
    // Good enough for fixtures: seconds since the epoch as a date via the inverse of the parser.
    let days = t / 86_400;
    let secs = t % 86_400;
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.100435Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

// ----- shared pieces -----

#[test]
fn protocols_by_name_and_host() {
    for p in [Protocol::OpenAi, Protocol::Xai, Protocol::Anthropic] {
        assert_eq!(p.as_str().parse::<Protocol>().unwrap(), p);
    }
    assert_eq!(" XAI ".parse::<Protocol>().unwrap(), Protocol::Xai);
    assert!("gemini"
        .parse::<Protocol>()
        .unwrap_err()
        .to_string()
        .contains("openai, xai or anthropic"));
    let by = Protocol::for_base_url;
    assert_eq!(by("https://api.x.ai/v1"), Protocol::Xai);
    assert_eq!(by("https://eu.api.x.ai/v1"), Protocol::Xai);
    assert_eq!(by("https://api.anthropic.com/v1"), Protocol::Anthropic);
    assert_eq!(by("https://api.openai.com/v1"), Protocol::OpenAi);
    assert_eq!(by("https://x.ai.evil.com/v1"), Protocol::OpenAi);
    assert_eq!(by("https://notanthropic.com/v1"), Protocol::OpenAi);
    assert_eq!(by("not a url"), Protocol::OpenAi);
}

#[test]
fn rfc3339_times() {
    assert_eq!(unix_from_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        unix_from_rfc3339("2024-08-20T18:37:24.100435Z"),
        Some(1_724_179_044)
    );
    assert_eq!(
        unix_from_rfc3339("2024-08-20T20:37:24+02:00"),
        Some(1_724_179_044)
    );
    assert_eq!(unix_from_rfc3339("2000-02-29T12:00:00Z"), Some(951_825_600));
    for bad in [
        "",
        "2024-08-20",
        "2024-13-01T00:00:00Z",
        "2024-08-20T18:37:24",
        "2024-08-20T18:37:24.Z",
        "1969-12-31T23:59:59Z",
    ] {
        assert_eq!(unix_from_rfc3339(bad), None, "{bad}");
    }
    let t = 1_751_000_000;
    assert_eq!(unix_from_rfc3339(&rfc3339(t)), Some(t));
}

#[test]
fn tags_and_requests_are_checked() {
    assert!(check_tag("rq-b12.part_3").is_ok());
    for bad in ["", "a b", "x\"y", "é", &"a".repeat(65)] {
        assert!(check_tag(bad).is_err(), "{bad}");
    }
    let api = api_for("http://127.0.0.1:9/v1", Protocol::OpenAi);
    assert!(api.check_requests(&[]).is_err());
    let mut two = reqs(2);
    assert!(api.check_requests(&two).is_ok());
    two[1].custom_id = "rq-1".into();
    assert!(api
        .check_requests(&two)
        .unwrap_err()
        .to_string()
        .contains("twice"));
    let not_object = RemoteRequest {
        custom_id: "a".into(),
        body: Bytes::from_static(b"[1]"),
    };
    assert!(api.check_requests(&[not_object]).is_err());
    let over = vec![req("x", "y"); 1];
    let many: Vec<RemoteRequest> = (0..50_001)
        .map(|i| RemoteRequest {
            custom_id: format!("r{i}"),
            ..over[0].clone()
        })
        .collect();
    assert!(api
        .check_requests(&many)
        .unwrap_err()
        .to_string()
        .contains("50000"));
}

#[tokio::test]
async fn pace_allows_max_calls_per_window() {
    let window = Duration::from_millis(200);
    let mut pace = Pace::new(2, window);
    let t0 = tokio::time::Instant::now();
    pace.wait().await;
    pace.wait().await;
    assert!(t0.elapsed() < window / 2);
    pace.wait().await;
    assert!(t0.elapsed() >= window);
}

#[test]
fn the_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let api = api_for("http://127.0.0.1:9/v1", Protocol::Xai);
    let rs = reqs(1);
    let batch = RemoteBatch {
        id: "b".into(),
        state: RemoteState::Completed,
        counts: RemoteCounts::default(),
        errors: Vec::new(),
        tag: None,
        created_at: None,
        ended_at: None,
        output_file_id: None,
        error_file_id: None,
        results_url: None,
    };
    let mut on = |_: RemoteResult| Ok(());
    send(api.stage("t", &rs));
    send(api.start("t", Some("b"), &rs));
    send(api.find("t", 0, 1));
    send(api.get("b"));
    send(api.cancel("b"));
    send(api.results(&batch, &mut on));
}

// ----- OpenAI parsers (fixtures from the API reference and the batch guide) -----

#[test]
fn openai_batch_object() {
    let doc = json!({
        "id": "batch_abc123",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": null,
        "input_file_id": "file-abc123",
        "completion_window": "24h",
        "status": "completed",
        "output_file_id": "file-cvaTdG",
        "error_file_id": "file-HOWS94",
        "created_at": 1711471533,
        "in_progress_at": 1711471538,
        "expires_at": 1711557933,
        "finalizing_at": 1711493133,
        "completed_at": 1711493163,
        "failed_at": null,
        "expired_at": null,
        "cancelling_at": null,
        "cancelled_at": null,
        "request_counts": {"total": 100, "completed": 95, "failed": 5},
        "metadata": {"customer_id": "user_123456789", "reasonq_tag": "t1"}
    });
    let b = serde_json::from_value::<openai::Batch>(doc)
        .unwrap()
        .into_remote();
    assert_eq!(b.id, "batch_abc123");
    assert_eq!(b.state, RemoteState::Completed);
    assert_eq!(
        b.counts,
        RemoteCounts {
            total: 100,
            succeeded: 95,
            failed: 5,
            pending: 0
        }
    );
    assert_eq!(b.tag.as_deref(), Some("t1"));
    assert_eq!(
        (b.created_at, b.ended_at),
        (Some(1711471533), Some(1711493163))
    );
    assert_eq!(b.output_file_id.as_deref(), Some("file-cvaTdG"));
    assert_eq!(b.error_file_id.as_deref(), Some("file-HOWS94"));
    let failed = json!({
        "id": "batch_x", "status": "failed", "created_at": 1, "failed_at": 2,
        "errors": {"object": "list", "data": [{"code": "invalid_json_line", "line": 3, "message": "This line is not parseable as valid JSON.", "param": null}]}
    });
    let b = serde_json::from_value::<openai::Batch>(failed)
        .unwrap()
        .into_remote();
    assert_eq!(b.state, RemoteState::Failed);
    assert!(b.state.is_ended());
    assert_eq!(
        b.errors,
        vec![ValidationError {
            line: Some(3),
            code: "invalid_json_line".into(),
            message: "This line is not parseable as valid JSON.".into()
        }]
    );
}

#[test]
fn openai_output_and_error_lines() {
    let ok_line = br#"{"id": "batch_req_123", "custom_id": "request-2", "response": {"status_code": 200, "request_id": "req_123", "body": {"id": "chatcmpl-123", "object": "chat.completion", "created": 1711652795, "model": "gpt-3.5-turbo-0125", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 22, "completion_tokens": 2, "total_tokens": 24}, "system_fingerprint": "fp_123"}}, "error": null}"#;
    let r = openai::parse_line(ok_line).unwrap();
    assert_eq!(r.custom_id, "request-2");
    let Outcome::Succeeded { body } = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    let c: crate::llm::ChatResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(c.content(), Some("Hello."));
    let expired = br#"{"id": "batch_req_456", "custom_id": "request-1", "response": null, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}"#;
    assert_eq!(
        openai::parse_line(expired).unwrap().outcome,
        Outcome::Expired
    );
    let cancelled = br#"{"id": "b", "custom_id": "c", "response": null, "error": {"code": "batch_cancelled", "message": "x"}}"#;
    assert_eq!(
        openai::parse_line(cancelled).unwrap().outcome,
        Outcome::Cancelled
    );
    let http = br#"{"id": "b", "custom_id": "c", "response": {"status_code": 400, "request_id": "r", "body": {"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}}}, "error": null}"#;
    match openai::parse_line(http).unwrap().outcome {
        Outcome::HttpError { status: 400, body } => {
            assert_eq!(
                serde_json::from_slice::<Value>(&body).unwrap()["error"]["message"],
                "bad"
            )
        }
        other => panic!("{other:?}"),
    }
    let timeout = br#"{"custom_id": "c", "response": null, "error": {"code": "request_timeout", "message": "m"}}"#;
    assert_eq!(
        openai::parse_line(timeout).unwrap().outcome,
        Outcome::Failed {
            code: "request_timeout".into(),
            message: "m".into()
        }
    );
    let odd = br#"{"custom_id": "c", "response": {"status_code": "x"}}"#;
    assert!(
        matches!(openai::parse_line(odd).unwrap().outcome, Outcome::Failed { ref code, .. } if code == "malformed_result")
    );
    assert!(openai::parse_line(b"{\"id\": 1}").is_none());
    assert!(openai::parse_line(b"garbage").is_none());
}

#[test]
fn openai_input_file_lines() {
    let mut r = req("rq-1", "hi");
    r.body = Bytes::from_static(b"{\n  \"model\": \"m\",\r\n  \"messages\": []\n}");
    let file = openai::input_file(&[r, req("rq-\"2", "x")]);
    let text = std::str::from_utf8(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        r#"{"custom_id":"rq-1","method":"POST","url":"/v1/chat/completions","body":{  "model": "m",  "messages": []}}"#
    );
    let second: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(second["custom_id"], "rq-\"2");
    assert_eq!(second["body"]["model"], "m-1");
}

// ----- Anthropic parsers (fixtures from the API reference and the guide) -----

#[test]
fn anthropic_batch_objects() {
    let created = json!({
        "id": "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d",
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
        "ended_at": null,
        "created_at": "2024-09-24T18:37:24.100435Z",
        "expires_at": "2024-09-25T18:37:24.100435Z",
        "cancel_initiated_at": null,
        "results_url": null
    });
    let b = serde_json::from_value::<anthropic::Batch>(created)
        .unwrap()
        .into_remote();
    assert_eq!(b.state, RemoteState::InProgress);
    assert_eq!(
        b.counts,
        RemoteCounts {
            total: 2,
            succeeded: 0,
            failed: 0,
            pending: 2
        }
    );
    assert_eq!(b.created_at, unix_from_rfc3339("2024-09-24T18:37:24Z"));
    assert_eq!((b.tag.clone(), b.results_url.clone()), (None, None));
    let reference = json!({
        "id": "msgbatch_013Zva2CMHLNnXjNJJKqJ2EF",
        "archived_at": "2024-08-20T18:37:24.100435Z",
        "cancel_initiated_at": "2024-08-20T18:37:24.100435Z",
        "created_at": "2024-08-20T18:37:24.100435Z",
        "ended_at": "2024-08-20T18:37:24.100435Z",
        "expires_at": "2024-08-20T18:37:24.100435Z",
        "processing_status": "ended",
        "request_counts": {"canceled": 10, "errored": 30, "expired": 10, "processing": 0, "succeeded": 50},
        "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_013Zva2CMHLNnXjNJJKqJ2EF/results",
        "type": "message_batch"
    });
    let b = serde_json::from_value::<anthropic::Batch>(reference.clone())
        .unwrap()
        .into_remote();
    assert_eq!(b.state, RemoteState::Cancelled);
    assert_eq!(
        b.counts,
        RemoteCounts {
            total: 100,
            succeeded: 50,
            failed: 50,
            pending: 0
        }
    );
    assert_eq!(b.ended_at, Some(1_724_179_044));
    let mut expired = reference.clone();
    expired["cancel_initiated_at"] = Value::Null;
    let b = serde_json::from_value::<anthropic::Batch>(expired.clone())
        .unwrap()
        .into_remote();
    assert_eq!(b.state, RemoteState::Expired);
    expired["request_counts"]["expired"] = json!(0);
    let b = serde_json::from_value::<anthropic::Batch>(expired)
        .unwrap()
        .into_remote();
    assert_eq!(b.state, RemoteState::Completed);
    let mut canceling = reference;
    canceling["processing_status"] = json!("canceling");
    let b = serde_json::from_value::<anthropic::Batch>(canceling)
        .unwrap()
        .into_remote();
    assert_eq!(b.state, RemoteState::Cancelling);
    assert!(!b.state.is_ended());
}

#[test]
fn anthropic_result_lines() {
    let ok_line = br#"{"custom_id":"my-first-request","result":{"type":"succeeded","message":{"id":"msg_014VwiXbi91y3JMjcpyGBHX5","type":"message","role":"assistant","model":"claude-3-5-sonnet-20240620","content":[{"type":"text","text":"Hello again! It's nice to see you. How can I assist you today?"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":36}}}}"#;
    let r = anthropic::parse_line(ok_line, 7).unwrap();
    assert_eq!(r.custom_id, "my-first-request");
    let Outcome::Succeeded { body } = r.outcome else {
        panic!()
    };
    let c: crate::llm::ChatResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        c.content(),
        Some("Hello again! It's nice to see you. How can I assist you today?")
    );
    assert_eq!(c.usage.unwrap().total(), 47);
    let errored = br#"{"custom_id":"my-second-request","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"Validation error"}}}}"#;
    assert!(matches!(
        anthropic::parse_line(errored, 7).unwrap().outcome,
        Outcome::HttpError { status: 400, .. }
    ));
    let canceled = br#"{"custom_id":"c","result":{"type":"canceled"}}"#;
    assert_eq!(
        anthropic::parse_line(canceled, 7).unwrap().outcome,
        Outcome::Cancelled
    );
    let expired = br#"{"custom_id":"e","result":{"type":"expired"}}"#;
    assert_eq!(
        anthropic::parse_line(expired, 7).unwrap().outcome,
        Outcome::Expired
    );
    assert!(anthropic::parse_line(br#"{"result":{"type":"expired"}}"#, 7).is_none());
    assert!(matches!(
        anthropic::parse_line(
            br#"{"custom_id":"x","result":{"type":"succeeded","message":{}}}"#,
            7
        )
        .unwrap()
        .outcome,
        Outcome::Failed { .. }
    ));
}

#[test]
fn anthropic_custom_ids() {
    assert!(anthropic::valid_custom_id("rq-123"));
    assert!(anthropic::valid_custom_id(&"a".repeat(64)));
    for bad in ["", "rq 1", "rq.1", "é", &"a".repeat(65)] {
        assert!(!anthropic::valid_custom_id(bad), "{bad}");
    }
}

// ----- xAI parsers (fixtures shaped like the SDK's types and the proto) -----

#[test]
fn xai_batch_states() {
    let now = 1_751_000_000;
    let batch = |state: Value, extra: Value| {
        let mut b = json!({
            "batch_id": "batch_1", "name": "t1",
            "create_time": rfc3339(now - 100), "expire_time": rfc3339(now + 86_400),
            "create_api_key_id": "k", "state": state
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        serde_json::from_value::<xai::Batch>(b)
            .unwrap()
            .into_remote(now)
    };
    let st = |n: [u64; 5]| json!({"num_requests": n[0], "num_pending": n[1], "num_success": n[2], "num_error": n[3], "num_cancelled": n[4]});
    assert_eq!(
        batch(st([0, 0, 0, 0, 0]), json!({})).state,
        RemoteState::Validating
    );
    let running = batch(st([4, 2, 1, 1, 0]), json!({}));
    assert_eq!(running.state, RemoteState::InProgress);
    assert_eq!(
        running.counts,
        RemoteCounts {
            total: 4,
            succeeded: 1,
            failed: 1,
            pending: 2
        }
    );
    assert_eq!(running.tag.as_deref(), Some("t1"));
    assert_eq!(running.created_at, Some(now - 100));
    assert_eq!(
        batch(st([4, 0, 3, 1, 0]), json!({})).state,
        RemoteState::Completed
    );
    let cancel = json!({"cancel_time": rfc3339(now - 5)});
    assert_eq!(
        batch(st([4, 1, 1, 0, 2]), cancel.clone()).state,
        RemoteState::Cancelling
    );
    let done = batch(st([4, 0, 1, 0, 3]), cancel);
    assert_eq!(
        (done.state, done.counts.failed, done.ended_at),
        (RemoteState::Cancelled, 3, Some(now - 5))
    );
    let by_xai = batch(
        st([4, 0, 1, 0, 3]),
        json!({"cancel_by_xai_message": "policy"}),
    );
    assert_eq!(by_xai.errors[0].code, "cancelled_by_xai");
    let past = json!({"expire_time": rfc3339(now - 1)});
    assert_eq!(
        batch(st([4, 2, 2, 0, 0]), past.clone()).state,
        RemoteState::Expired
    );
    assert_eq!(
        batch(st([4, 0, 4, 0, 0]), past).state,
        RemoteState::Completed
    );
    // Proto JSON writes int64 as strings.
    let text = batch(
        json!({"num_requests": "3", "num_pending": "0", "num_success": "3", "num_error": "0", "num_cancelled": "0"}),
        json!({}),
    );
    assert_eq!((text.state, text.counts.total), (RemoteState::Completed, 3));
    let no_state = serde_json::from_value::<xai::Batch>(json!({"batch_id": "b"}))
        .unwrap()
        .into_remote(now);
    assert_eq!(no_state.state, RemoteState::Validating);
}

#[test]
fn xai_results() {
    let completion = json!({"id": "c1", "object": "chat.completion", "model": "grok-4", "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    let ok_item = json!({"batch_request_id": "r1", "batch_result": {"response": {"chat_get_completion": completion.clone()}}});
    let r = xai::parse_result(&ok_item).unwrap();
    assert_eq!(r.custom_id, "r1");
    assert_eq!(
        r.outcome,
        Outcome::Succeeded {
            body: Bytes::from(completion.to_string())
        }
    );
    // A success may carry an empty status beside it.
    let with_ok_status = json!({"batch_request_id": "r1", "batch_result": {"response": {"chat_get_completion": completion}, "error": {"code": 0, "message": ""}}});
    assert!(matches!(
        xai::parse_result(&with_ok_status).unwrap().outcome,
        Outcome::Succeeded { .. }
    ));
    let text = json!({"batch_request_id": "r2", "batch_result": {"error": "model not found"}});
    assert_eq!(
        xai::parse_result(&text).unwrap().outcome,
        Outcome::Failed {
            code: "xai_error".into(),
            message: "model not found".into()
        }
    );
    let status = json!({"batch_request_id": "r3", "batch_result": {"error": {"code": 3, "message": "boom"}}});
    match xai::parse_result(&status).unwrap().outcome {
        Outcome::HttpError { status: 400, body } => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (v["error"]["message"].as_str(), v["error"]["type"].as_str()),
                (Some("boom"), Some("invalid_argument"))
            );
        }
        other => panic!("{other:?}"),
    }
    let cancelled = json!({"batch_request_id": "r4", "batch_result": {"error": {"code": 1, "message": "cancelled"}}});
    assert_eq!(
        xai::parse_result(&cancelled).unwrap().outcome,
        Outcome::Cancelled
    );
    let top = json!({"batch_request_id": "r5", "error": {"message": "bad request"}});
    assert!(matches!(
        xai::parse_result(&top).unwrap().outcome,
        Outcome::Failed { .. }
    ));
    let image =
        json!({"batch_request_id": "r6", "batch_result": {"response": {"image_generation": {}}}});
    assert!(
        matches!(xai::parse_result(&image).unwrap().outcome, Outcome::Failed { ref code, .. } if code == "unsupported_result")
    );
    assert!(xai::parse_result(&json!({"batch_result": {}})).is_none());
}

// ----- what the steps send -----

#[tokio::test]
async fn openai_stage_uploads_the_file_and_start_creates_the_tagged_batch() {
    let mock = Mock::start(|s| match (s.method.as_str(), s.uri.as_str()) {
        ("POST", "/v1/files") => ok(json!({"id": "file-abc123", "object": "file", "bytes": 120000, "created_at": 1677610602, "filename": "t1.jsonl", "purpose": "batch"})),
        ("POST", "/v1/batches") => ok(json!({"id": "batch_abc123", "object": "batch", "status": "validating", "input_file_id": "file-abc123", "created_at": 1711471533, "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": {"reasonq_tag": "t1"}})),
        _ => reply(404, json!({"error": {"message": "no"}})),
    })
    .await;
    let api = mock.api(Protocol::OpenAi);
    let rs = reqs(2);
    let staged = api.stage("t1", &rs).await.unwrap();
    assert_eq!(staged.as_deref(), Some("file-abc123"));
    let batch = api.start("t1", staged.as_deref(), &rs).await.unwrap();
    assert_eq!(
        (batch.id.as_str(), batch.state, batch.tag.as_deref()),
        ("batch_abc123", RemoteState::Validating, Some("t1"))
    );
    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_bearer_only(s);
    }
    let ct = seen[0].header("content-type").unwrap().to_owned();
    let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
    let body = std::str::from_utf8(&seen[0].body).unwrap();
    let file = String::from_utf8(openai::input_file(&rs)).unwrap();
    assert_eq!(
        body,
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t1.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{file}\r\n--{boundary}--\r\n"
        )
    );
    assert_eq!(
        seen[1].json(),
        json!({"input_file_id": "file-abc123", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"reasonq_tag": "t1"}})
    );
    // Without the staged file there is nothing to start from.
    assert!(matches!(
        api.start("t1", None, &rs).await,
        Err(LlmError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn openai_a_lost_create_answer_is_looked_up_before_sending_again() {
    let batch = json!({"id": "batch_9", "object": "batch", "status": "validating", "input_file_id": "file-1", "created_at": now(), "metadata": {"reasonq_tag": "t1"}});
    let other = json!({"id": "batch_8", "object": "batch", "status": "completed", "created_at": now(), "metadata": {"reasonq_tag": "t0"}});
    let b2 = batch.clone();
    let mock = Mock::start(move |s| match (s.method.as_str(), s.uri.as_str()) {
        ("POST", "/v1/batches") => reply(500, json!({"error": {"message": "upstream"}})),
        ("GET", "/v1/batches?limit=100") => {
            ok(json!({"object": "list", "data": [other.clone(), b2.clone()], "has_more": false}))
        }
        _ => reply(404, json!({})),
    })
    .await;
    let got = mock
        .api(Protocol::OpenAi)
        .start("t1", Some("file-1"), &reqs(1))
        .await
        .unwrap();
    assert_eq!(got.id, "batch_9");
    let posts = mock.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(
        posts, 1,
        "a create whose answer was lost is not sent again when the batch exists"
    );

    // Not there: sent again (and again answered 500 until the attempts run out).
    let mock = Mock::start(|s| match s.method.as_str() {
        "POST" => reply(502, json!({"error": {"message": "bad gateway"}})),
        _ => ok(json!({"object": "list", "data": [], "has_more": false})),
    })
    .await;
    let err = mock
        .api(Protocol::OpenAi)
        .start("t1", Some("file-1"), &reqs(1))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(502));
    let seen = mock.seen();
    assert_eq!(seen.iter().filter(|s| s.method == "POST").count(), 4);
    assert_eq!(seen.iter().filter(|s| s.method == "GET").count(), 3);

    // A 429 proves nothing was created: retried at once, no lookup.
    let n = Arc::new(Mutex::new(0));
    let n2 = Arc::clone(&n);
    let mock = Mock::start(move |_| {
        let mut n = n2.lock().unwrap();
        *n += 1;
        if *n == 1 {
            let mut r = reply(429, json!({"error": {"message": "slow down"}}));
            r.headers.push(("retry-after-ms", "1".into()));
            r
        } else {
            ok(batch.clone())
        }
    })
    .await;
    mock.api(Protocol::OpenAi)
        .start("t1", Some("file-1"), &reqs(1))
        .await
        .unwrap();
    assert!(mock.seen().iter().all(|s| s.method == "POST"));
}

#[tokio::test]
async fn openai_find_pages_batches_then_files() {
    let t = now();
    let mock = Mock::start(move |s| match s.uri.as_str() {
        "/v1/batches?limit=100" => ok(json!({"object": "list", "data": [{"id": "b3", "status": "completed", "created_at": t, "metadata": {"reasonq_tag": "other"}}], "has_more": true, "last_id": "b3"})),
        "/v1/batches?limit=100&after=b3" => ok(json!({"object": "list", "data": [
            {"id": "b2", "status": "in_progress", "created_at": t, "input_file_id": "file-2", "metadata": {"reasonq_tag": "t1"}},
            {"id": "b1", "status": "completed", "created_at": t - 90_000, "metadata": {"reasonq_tag": "t2"}}
        ], "has_more": true, "last_id": "b1"})),
        "/v1/files?purpose=batch&order=desc&limit=100" => ok(json!({"object": "list", "data": [
            {"id": "file-9", "filename": "x.jsonl", "created_at": t},
            {"id": "file-7", "filename": "t2.jsonl", "created_at": t}
        ], "has_more": false, "last_id": "file-7"})),
        other => reply(404, json!({"error": {"message": other}})),
    })
    .await;
    let api = mock.api(Protocol::OpenAi);
    let found = api.find("t1", t - 60, 5).await.unwrap();
    assert_eq!(found.matched, Match::Tag);
    assert_eq!(found.staged.as_deref(), Some("file-2"));
    assert_eq!(found.batch.unwrap().id, "b2");
    // t2's batch is older than `since`: the listing stops there and the file is found.
    let found = api.find("t2", t - 60, 5).await.unwrap();
    assert_eq!(
        (found.matched, found.batch, found.staged.as_deref()),
        (Match::None, None, Some("file-7"))
    );
    let uris: Vec<String> = mock.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        uris.iter().filter(|u| u.contains("after=b1")).count(),
        0,
        "{uris:?}"
    );
}

#[tokio::test]
async fn openai_results_stream_both_files_line_by_line_and_tolerate_a_missing_line() {
    let done = |id: &str, text: &str| {
        json!({"id": "batch_req", "custom_id": id, "response": {"status_code": 200, "request_id": "r", "body": {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}}, "error": null}).to_string()
    };
    let output = format!("{}\n\n{}\n", done("rq-1", "one"), done("rq-3", "three"));
    let error = r#"{"id": "batch_req", "custom_id": "rq-4", "response": null, "error": {"code": "batch_expired", "message": "m"}}"#;
    let mock = Mock::start(move |s| match s.uri.as_str() {
        // Frames split mid-line and mid-UTF-8.
        "/v1/files/file-out/content" => {
            let (a, b) = output.split_at(37);
            let (b, c) = b.split_at(b.len() - 20);
            frames(&[a, b, c])
        }
        "/v1/files/file-err/content" => frames(&[error]),
        _ => reply(404, json!({})),
    })
    .await;
    let api = mock.api(Protocol::OpenAi);
    let mut batch = api_batch("batch_1");
    batch.output_file_id = Some("file-out".into());
    batch.error_file_id = Some("file-err".into());
    let got = collect(&api, &batch).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|r| r.custom_id.as_str()).collect();
    assert_eq!(
        ids,
        ["rq-1", "rq-3", "rq-4"],
        "rq-2 has no line and is simply missing"
    );
    assert_eq!(got[2].outcome, Outcome::Expired);
    let Outcome::Succeeded { body } = &got[1].outcome else {
        panic!()
    };
    assert_eq!(
        serde_json::from_slice::<crate::llm::ChatResponse>(body)
            .unwrap()
            .content(),
        Some("three")
    );
    for s in mock.seen() {
        assert_bearer_only(&s);
    }
}

fn api_batch(id: &str) -> RemoteBatch {
    RemoteBatch {
        id: id.into(),
        state: RemoteState::Completed,
        counts: RemoteCounts::default(),
        errors: Vec::new(),
        tag: None,
        created_at: Some(1),
        ended_at: Some(2),
        output_file_id: None,
        error_file_id: None,
        results_url: None,
    }
}

#[tokio::test]
async fn a_broken_results_body_is_read_again_without_repeating_lines() {
    let line = |i: u32| {
        format!("{{\"custom_id\":\"rq-{i}\",\"response\":{{\"status_code\":200,\"body\":{{}}}},\"error\":null}}\n")
    };
    let n = Arc::new(Mutex::new(0));
    let n2 = Arc::clone(&n);
    let mock = Mock::start(move |_| {
        let mut n = n2.lock().unwrap();
        *n += 1;
        let all = Bytes::from(format!("{}{}{}", line(1), line(2), line(3)));
        let mut r = frames(&[]);
        r.frames = if *n == 1 {
            // Two whole lines and half of the third, then the connection breaks.
            let cut = line(1).len() + line(2).len() + 10;
            vec![Some(all.slice(..cut)), None]
        } else {
            vec![Some(all)]
        };
        r
    })
    .await;
    let api = mock.api(Protocol::OpenAi);
    let mut batch = api_batch("b");
    batch.output_file_id = Some("file-out".into());
    let got = collect(&api, &batch).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|r| r.custom_id.as_str()).collect();
    assert_eq!(ids, ["rq-1", "rq-2", "rq-3"]);
    assert_eq!(mock.seen().len(), 2);
}

#[tokio::test]
async fn get_retries_server_errors_and_honours_their_advice() {
    let n = Arc::new(Mutex::new(0));
    let n2 = Arc::clone(&n);
    let mock = Mock::start(move |s| {
        assert_eq!(s.uri, "/v1/batches/batch%2F1");
        let mut n = n2.lock().unwrap();
        *n += 1;
        match *n {
            1 => {
                let mut r = reply(503, json!({"error": {"message": "busy"}}));
                r.headers.push(("retry-after-ms", "5".into()));
                r
            }
            2 => reply(500, json!({"error": {"message": "oops"}})),
            _ => ok(json!({"batch_id": "batch/1", "name": "t1", "state": {"num_requests": 2, "num_pending": 0, "num_success": 2, "num_error": 0, "num_cancelled": 0}})),
        }
    })
    .await;
    let api = mock.api(Protocol::Xai);
    let b = api.get("batch/1").await.unwrap();
    assert_eq!((b.state, b.counts.succeeded), (RemoteState::Completed, 2));
    assert_eq!(mock.seen().len(), 3);
    assert!(api.client.metrics().retries >= 2);
}

#[tokio::test]
async fn xai_stage_names_the_batch_and_start_adds_only_what_it_lacks_in_chunks() {
    let mock = Mock::start(|s| match (s.method.as_str(), s.uri.as_str()) {
        ("POST", "/v1/batches") => ok(json!({"batch_id": "batch_7", "name": "t1", "create_time": "2025-06-01T00:00:00Z", "state": {}})),
        ("GET", "/v1/batches/batch_7/requests?limit=100") => ok(json!({"batch_request_metadata": [{"batch_request_id": "rq-1", "state": "pending"}], "pagination_token": "p+2"})),
        ("GET", "/v1/batches/batch_7/requests?limit=100&pagination_token=p%2B2") => ok(json!({"batch_request_metadata": [{"batch_request_id": "rq-3", "state": "succeeded"}], "pagination_token": ""})),
        ("POST", "/v1/batches/batch_7/requests") => ok(json!({})),
        ("GET", "/v1/batches/batch_7") => ok(json!({"batch_id": "batch_7", "name": "t1", "state": {"num_requests": "5", "num_pending": "5"}})),
        _ => reply(404, json!({"error": {"message": "no"}})),
    })
    .await;
    let mut api = mock.api(Protocol::Xai);
    let rs = reqs(5);
    assert_eq!(
        api.stage("t1", &rs).await.unwrap().as_deref(),
        Some("batch_7")
    );
    // Room for two requests per add call.
    let one = xai_item(&rs[1]).len();
    api.xai_chunk_bytes = 2 * one + 40;
    let b = api.start("t1", Some("batch_7"), &rs).await.unwrap();
    assert_eq!((b.state, b.counts.total), (RemoteState::InProgress, 5));
    let seen = mock.seen();
    for s in &seen {
        assert_bearer_only(s);
    }
    assert_eq!(seen[0].json(), json!({"name": "t1"}));
    let adds: Vec<Value> = seen
        .iter()
        .filter(|s| s.method == "POST" && s.uri.ends_with("/requests"))
        .map(Seen::json)
        .collect();
    let ids: Vec<Vec<String>> = adds
        .iter()
        .map(|a| {
            a["batch_requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["batch_request_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    assert_eq!(
        ids,
        vec![vec!["rq-2".to_string(), "rq-4".into()], vec!["rq-5".into()]]
    );
    let body: Value = serde_json::from_slice(&rs[1].body).unwrap();
    assert_eq!(
        adds[0]["batch_requests"][0],
        json!({"batch_request_id": "rq-2", "batch_request": {"chat_get_completion": body}})
    );
}

fn xai_item(r: &RemoteRequest) -> Vec<u8> {
    format!(
        "{{\"batch_request_id\":{},\"batch_request\":{{\"chat_get_completion\":{}}}}}",
        json_str(&r.custom_id),
        std::str::from_utf8(&r.body).unwrap()
    )
    .into_bytes()
}

#[tokio::test]
async fn xai_a_lost_add_answer_lists_the_batch_before_adding_again() {
    let added = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&added);
    let mock = Mock::start(move |s| match (s.method.as_str(), s.uri.as_str()) {
        ("POST", "/v1/batches/b/requests") => {
            let v: Value = serde_json::from_slice(&s.body).unwrap();
            let mut ids = log.lock().unwrap();
            let first = ids.is_empty();
            ids.extend(v["batch_requests"].as_array().unwrap().iter().map(|r| r["batch_request_id"].as_str().unwrap().to_owned()));
            if first {
                // Stored, but the answer is lost.
                reply(500, json!({"error": {"message": "lost"}}))
            } else {
                ok(json!({}))
            }
        }
        ("GET", "/v1/batches/b/requests?limit=100") => {
            let ids = log.lock().unwrap();
            ok(json!({"batch_request_metadata": ids.iter().map(|i| json!({"batch_request_id": i})).collect::<Vec<_>>()}))
        }
        ("GET", "/v1/batches/b") => ok(json!({"batch_id": "b", "state": {"num_requests": 3, "num_pending": 3}})),
        _ => reply(404, json!({})),
    })
    .await;
    let mut api = mock.api(Protocol::Xai);
    let rs = reqs(3);
    api.xai_chunk_bytes = 2 * xai_item(&rs[0]).len() + 40;
    api.start("t1", Some("b"), &rs).await.unwrap();
    assert_eq!(
        *added.lock().unwrap(),
        ["rq-1", "rq-2", "rq-3"],
        "every custom id added once"
    );
}

#[tokio::test]
async fn xai_results_are_paged_and_cancelled_requests_named() {
    let completion = json!({"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]});
    let mock = Mock::start(move |s| match s.uri.as_str() {
        "/v1/batches/b/results?limit=100" => ok(json!({"results": [{"batch_request_id": "rq-1", "batch_result": {"response": {"chat_get_completion": completion.clone()}}}], "pagination_token": "next"})),
        "/v1/batches/b/results?limit=100&pagination_token=next" => ok(json!({"results": [{"batch_request_id": "rq-2", "batch_result": {"error": "bad request"}}]})),
        "/v1/batches/b/requests?limit=100" => ok(json!({"batch_request_metadata": [
            {"batch_request_id": "rq-1", "state": "succeeded"},
            {"batch_request_id": "rq-2", "state": "failed"},
            {"batch_request_id": "rq-3", "state": "cancelled"},
            {"batch_request_id": "rq-4", "state": "STATE_CANCELLED"}
        ]})),
        _ => reply(404, json!({})),
    })
    .await;
    let api = mock.api(Protocol::Xai);
    let mut batch = api_batch("b");
    batch.state = RemoteState::Cancelled;
    batch.counts = RemoteCounts {
        total: 4,
        succeeded: 1,
        failed: 3,
        pending: 0,
    };
    let got = collect(&api, &batch).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|r| r.custom_id.as_str()).collect();
    assert_eq!(ids, ["rq-1", "rq-2", "rq-3", "rq-4"]);
    assert!(matches!(got[0].outcome, Outcome::Succeeded { .. }));
    assert!(matches!(got[1].outcome, Outcome::Failed { .. }));
    assert_eq!(
        (&got[2].outcome, &got[3].outcome),
        (&Outcome::Cancelled, &Outcome::Cancelled)
    );
}

#[tokio::test]
async fn xai_find_prefers_the_batch_holding_requests_and_waits_for_all_of_them() {
    let t = now();
    let mock = Mock::start(move |s| match s.uri.as_str() {
        "/v1/batches?limit=100" => ok(json!({"batches": [
            {"batch_id": "empty", "name": "t1", "create_time": rfc3339(t), "state": {"num_requests": 0}},
            {"batch_id": "other", "name": "t2", "create_time": rfc3339(t), "state": {"num_requests": 9}}
        ], "pagination_token": "2"})),
        "/v1/batches?limit=100&pagination_token=2" => ok(json!({"batches": [
            {"batch_id": "half", "name": "t1", "create_time": rfc3339(t), "state": {"num_requests": 2, "num_pending": 2}},
            {"batch_id": "old", "name": "t1", "create_time": rfc3339(t - 90_000), "state": {"num_requests": 4}}
        ]})),
        _ => reply(404, json!({})),
    })
    .await;
    let api = mock.api(Protocol::Xai);
    let found = api.find("t1", t - 60, 4).await.unwrap();
    assert_eq!(
        (
            found.staged.as_deref(),
            found.batch.is_none(),
            found.matched
        ),
        (Some("half"), true, Match::Tag)
    );
    let found = api.find("t1", t - 60, 2).await.unwrap();
    assert_eq!(found.batch.map(|b| b.id).as_deref(), Some("half"));
    let found = api.find("t3", t - 60, 2).await.unwrap();
    assert_eq!((found.staged, found.matched), (None, Match::None));
}

#[tokio::test]
async fn anthropic_start_sends_translated_params_with_its_key_header() {
    let mock = Mock::start(|s| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", "/v1/messages/batches?limit=1") => ok(json!({"data": [], "has_more": false, "first_id": null, "last_id": null})),
        ("POST", "/v1/messages/batches") => ok(json!({
            "id": "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d", "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": null, "created_at": "2024-09-24T18:37:24.100435Z", "expires_at": "2024-09-25T18:37:24.100435Z",
            "cancel_initiated_at": null, "results_url": null
        })),
        _ => reply(404, json!({"type": "error", "error": {"type": "not_found_error", "message": "no"}})),
    })
    .await;
    let api = mock.api(Protocol::Anthropic);
    let rs = reqs(2);
    assert_eq!(api.stage("t1", &rs).await.unwrap(), None);
    assert!(mock.seen().is_empty(), "Anthropic stages nothing");
    let b = api.start("t1", None, &rs).await.unwrap();
    assert_eq!(
        (b.id.as_str(), b.counts.pending),
        ("msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d", 2)
    );
    let seen = mock.seen();
    for s in &seen {
        assert_x_api_key_only(s);
    }
    assert_eq!(
        seen[1].json(),
        json!({"requests": [
            {"custom_id": "rq-1", "params": {"model": "m-1", "max_tokens": 16, "messages": [{"role": "user", "content": "q1"}]}},
            {"custom_id": "rq-2", "params": {"model": "m-1", "max_tokens": 16, "messages": [{"role": "user", "content": "q2"}]}}
        ]})
    );
}

#[tokio::test]
async fn anthropic_refuses_bad_custom_ids_and_untranslatable_bodies_before_sending() {
    let mock = Mock::start(|_| reply(500, json!({}))).await;
    let api = mock.api(Protocol::Anthropic);
    let mut rs = reqs(2);
    rs[1].custom_id = "rq 2!".into();
    let e = api.start("t1", None, &rs).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("\"rq 2!\" is not allowed by Anthropic"),
        "{e}"
    );
    assert!(api.stage("t1", &rs).await.is_err());
    let mut rs = reqs(1);
    rs[0].body = Bytes::from(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 1})
            .to_string(),
    );
    let e = api.stage("t1", &rs).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid request body: rq-1: field `seed` has no Anthropic Messages equivalent"
    );
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn anthropic_results_never_take_the_key_to_a_foreign_host() {
    let foreign = Mock::start(|_| frames(&["{}"])).await;
    let line = r#"{"custom_id":"rq-1","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}}}"#;
    let mock = Mock::start(move |s| match s.uri.as_str() {
        "/v1/messages/batches/msgbatch_1/results" => frames(&[
            line,
            "\n",
            r#"{"custom_id":"rq-2","result":{"type":"expired"}}"#,
        ]),
        "/v1/custom/results" => frames(&[r#"{"custom_id":"rq-9","result":{"type":"canceled"}}"#]),
        _ => reply(404, json!({})),
    })
    .await;
    let api = mock.api(Protocol::Anthropic);
    let mut batch = api_batch("msgbatch_1");
    batch.results_url = Some(format!(
        "{}/messages/batches/msgbatch_1/results",
        foreign.base
    ));
    let got = collect(&api, &batch).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].outcome, Outcome::Expired);
    let Outcome::Succeeded { body } = &got[0].outcome else {
        panic!()
    };
    let c: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        (c["object"].as_str(), c["created"].as_u64()),
        (Some("chat.completion"), Some(2))
    );
    assert!(foreign.seen().is_empty(), "the foreign host got a request");
    // A results_url under the base URL is followed.
    batch.results_url = Some(format!("{}/custom/results", mock.base));
    let got = collect(&api, &batch).await.unwrap();
    assert_eq!(got[0].custom_id, "rq-9");
    for s in mock.seen() {
        assert_x_api_key_only(&s);
    }
    // Before it ends there is nothing to read.
    batch.state = RemoteState::InProgress;
    assert!(collect(&api, &batch).await.unwrap().is_empty());
    assert_eq!(mock.seen().len(), 2);
}

#[tokio::test]
async fn anthropic_find_matches_creation_time_and_request_count() {
    let t = now();
    let b = |id: &str, created: u64, n: u64| {
        json!({"id": id, "type": "message_batch", "processing_status": "in_progress", "created_at": rfc3339(created),
               "request_counts": {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}})
    };
    let mock = Mock::start(move |s| match s.uri.as_str() {
        "/v1/messages/batches?limit=100" => ok(json!({"data": [b("new3", t, 3), b("new2", t, 2)], "has_more": true, "first_id": "new3", "last_id": "new2"})),
        "/v1/messages/batches?limit=100&after_id=new2" => ok(json!({"data": [b("mine", t - 10, 2), b("old2", t - 90_000, 2)], "has_more": true, "last_id": "old2"})),
        _ => reply(404, json!({})),
    })
    .await;
    let api = mock.api(Protocol::Anthropic);
    let found = api.find("t1", t - 60, 2).await.unwrap();
    assert_eq!(found.matched, Match::TimeAndCount { candidates: 2 });
    assert_eq!(
        found.batch.map(|b| b.id).as_deref(),
        Some("mine"),
        "the earliest candidate"
    );
    let found = api.find("t1", t - 60, 3).await.unwrap();
    assert_eq!(
        (found.matched, found.batch.map(|b| b.id)),
        (Match::TimeAndCount { candidates: 1 }, Some("new3".into()))
    );
    let found = api.find("t1", t - 60, 7).await.unwrap();
    assert_eq!(
        (found.matched, found.batch, found.staged),
        (Match::None, None, None)
    );
    assert!(
        mock.seen().iter().all(|s| !s.uri.contains("after_id=old2")),
        "stops at the first older batch"
    );
}

#[tokio::test]
async fn each_protocol_sends_its_key_header_and_paths() {
    let mock = Mock::start(|s| match s.uri.as_str() {
        "/v1/batches/b1" | "/v1/batches/b1/cancel" => ok(json!({"id": "b1", "status": "cancelling"})),
        "/v1/batches/b1:cancel" => ok(json!({"batch_id": "b1", "cancel_time": "2025-01-01T00:00:00Z", "state": {"num_requests": 1, "num_pending": 1}})),
        "/v1/messages/batches/b1" | "/v1/messages/batches/b1/cancel" => ok(json!({"id": "b1", "processing_status": "canceling", "request_counts": {}})),
        _ => reply(404, json!({})),
    })
    .await;
    for p in [Protocol::OpenAi, Protocol::Anthropic] {
        let api = mock.api(p);
        assert_eq!(api.get("b1").await.unwrap().id, "b1");
        assert_eq!(
            api.cancel("b1").await.unwrap().state,
            RemoteState::Cancelling
        );
    }
    assert_eq!(
        mock.api(Protocol::Xai).cancel("b1").await.unwrap().state,
        RemoteState::Cancelling
    );
    let seen = mock.seen();
    let uris: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.uri.as_str()))
        .collect();
    assert_eq!(
        uris,
        [
            ("GET", "/v1/batches/b1"),
            ("POST", "/v1/batches/b1/cancel"),
            ("GET", "/v1/messages/batches/b1"),
            ("POST", "/v1/messages/batches/b1/cancel"),
            ("POST", "/v1/batches/b1:cancel"),
        ]
    );
    assert_bearer_only(&seen[0]);
    assert_bearer_only(&seen[1]);
    assert_x_api_key_only(&seen[2]);
    assert_x_api_key_only(&seen[3]);
    assert_bearer_only(&seen[4]);
}

#[tokio::test]
async fn provider_errors_are_scrubbed_of_the_key() {
    let mock = Mock::start(|_| reply(401, json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid x-api-key {KEY}")}}))).await;
    let e = mock.api(Protocol::Anthropic).get("b1").await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(!text.contains(KEY), "{text}");
    assert_eq!(e.status(), Some(401));
    assert_eq!(mock.seen().len(), 1, "a 401 is not retried");
}
