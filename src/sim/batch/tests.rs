//! The three batch protocols end to end over loopback HTTP, driven by [`BatchControl`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::store::{rfc3339, Perm};
use super::*;
use crate::sim::{Reply, SimConfig, SimServer};

/// A small HTTP client with fixed extra headers.
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    headers: Vec<(String, String)>,
}

impl Http {
    fn new(base: String) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base,
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, k: &str, v: &str) -> Http {
        self.headers.push((k.into(), v.into()));
        self
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        ct: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, Bytes), hyper_util::client::legacy::Error> {
        let uri = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = self
            .client
            .request(req.body(Full::new(body)).unwrap())
            .await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok((status, body))
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let b = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
        let ct = body.map(|_| "application/json");
        let (s, b) = self.raw(method, path, ct, b).await.unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn text(&self, path: &str) -> (u16, String) {
        let (s, b) = self
            .raw(Method::GET, path, None, Bytes::new())
            .await
            .unwrap();
        (s, String::from_utf8(b.to_vec()).unwrap())
    }

    async fn upload(&self, filename: &str, purpose: Option<&str>, content: &str) -> (u16, Value) {
        let mut body = String::new();
        if let Some(p) = purpose {
            body.push_str(&format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{p}\r\n"
            ));
        }
        body.push_str(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{content}\r\n--XyZ--\r\n"
        ));
        let (s, b) = self
            .raw(
                Method::POST,
                "/files",
                Some("multipart/form-data; boundary=XyZ"),
                body.into(),
            )
            .await
            .unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

fn chat_body(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": prompt}]})
}

fn openai_jsonl(ids: &[&str]) -> String {
    // Formatted, not built as values: the big test writes 120,000 of these.
    ids.iter()
        .map(|id| {
            format!(
                r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"gpt-4o-mini","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":"question {id}"}}]}}}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}")).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

async fn server(batch: BatchConfig) -> (SimServer, Http) {
    let s = SimServer::start(SimConfig {
        batch,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let h = Http::new(s.base_url());
    (s, h)
}

fn no_create_limit() -> BatchConfig {
    BatchConfig {
        limits: BatchLimits {
            xai_creates_per_second: None,
            ..BatchLimits::default()
        },
        ..BatchConfig::default()
    }
}

/// Uploads the lines and creates an OpenAI batch; returns its id.
async fn openai_batch(h: &Http, ids: &[&str]) -> String {
    let (s, f) = h
        .upload("in.jsonl", Some("batch"), &openai_jsonl(ids))
        .await;
    assert_eq!(s, 200, "{f}");
    let (s, b) = h
        .post(
            "/batches",
            &json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"run": "t"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b["id"].as_str().unwrap().to_owned()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The live `/chat/completions` answer for a body: (content, usage).
async fn live(h: &Http, body: &Value) -> (Value, Value) {
    let (s, v) = h.post("/chat/completions", body).await;
    assert_eq!(s, 200);
    (
        v["choices"][0]["message"]["content"].clone(),
        v["usage"].clone(),
    )
}

#[tokio::test]
async fn openai_full_lifecycle_matches_live_answers() {
    let (srv, h) = server(BatchConfig::default()).await;
    let ctl = srv.batches();
    let names = ids(7);
    let id = openai_batch(&h, &strs(&names)).await;
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(b["object"], "batch");
    assert_eq!(b["status"], "validating");
    assert_eq!(
        b["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert_eq!(b["metadata"], json!({"run": "t"}));
    assert_eq!(b["errors"], Value::Null);
    for key in [
        "endpoint",
        "input_file_id",
        "completion_window",
        "output_file_id",
        "error_file_id",
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    ] {
        assert!(b.get(key).is_some(), "missing {key}");
    }
    assert_eq!(ctl.advance(&id), Ok(BatchState::InProgress));
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(b["status"], "in_progress");
    assert_eq!(b["request_counts"]["total"], 7);
    assert_eq!(ctl.advance(&id), Ok(BatchState::Finalizing));
    assert_eq!(ctl.advance(&id), Ok(BatchState::Completed));
    assert!(ctl.advance(&id).is_err());
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(b["status"], "completed");
    assert_eq!(
        b["request_counts"],
        json!({"total": 7, "completed": 7, "failed": 0})
    );
    assert_eq!(b["error_file_id"], Value::Null);
    assert!(b["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let out = b["output_file_id"].as_str().unwrap();
    let (s, text) = h.text(&format!("/files/{out}/content")).await;
    assert_eq!(s, 200);
    let (_, meta) = h.get(&format!("/files/{out}")).await;
    assert_eq!(meta["bytes"], text.len());
    assert_eq!(meta["purpose"], "batch_output");
    let got = lines(&text);
    let order: Vec<&str> = got
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_ne!(order, strs(&names), "output must not be in input order");
    assert_eq!(
        order.iter().copied().collect::<HashSet<_>>(),
        strs(&names).into_iter().collect()
    );
    for l in &got {
        assert!(l["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(l["error"], Value::Null);
        assert_eq!(l["response"]["status_code"], 200);
        assert!(l["response"]["request_id"].is_string());
        let body = &l["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        let cid = l["custom_id"].as_str().unwrap();
        let (content, usage) = live(&h, &chat_body(&format!("question {cid}"))).await;
        assert_eq!(body["choices"][0]["message"]["content"], content);
        assert_eq!(body["usage"], usage);
    }
    assert_eq!(ctl.counters().files_uploaded, 1);
    assert_eq!(ctl.counters().batches_created, 1);
    assert_eq!(ctl.submissions("r3"), 1);
}

#[tokio::test]
async fn openai_auto_mode_walks_every_state_by_itself() {
    let (_srv, h) = server(BatchConfig {
        mode: BatchMode::Auto {
            step: Duration::from_millis(40),
        },
        ..BatchConfig::default()
    })
    .await;
    let id = openai_batch(&h, &strs(&ids(3))).await;
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let (_, b) = h.get(&format!("/batches/{id}")).await;
        let s = b["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == "completed" {
            assert!(b["output_file_id"].is_string());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "stuck: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = ["validating", "in_progress", "finalizing", "completed"];
    let mut at = 0;
    for s in &seen {
        let i = all.iter().position(|a| a == s).unwrap();
        assert!(i >= at, "went back: {seen:?}");
        at = i;
    }
}

#[tokio::test]
async fn openai_uploads_are_checked_line_by_line_and_by_size() {
    let (_srv, h) = server(BatchConfig {
        limits: BatchLimits {
            openai_max_file_bytes: 400,
            ..BatchLimits::default()
        },
        ..BatchConfig::default()
    })
    .await;
    let good = openai_jsonl(&["a"]);
    let cases = [
        (
            format!("{good}\n{{\"method\":\"POST\"}}"),
            "missing_required_parameter",
            "Line 2",
        ),
        (format!("{good}\nnot json"), "invalid_json_line", "Line 2"),
        (
            json!({"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}})
                .to_string(),
            "invalid_method",
            "Line 1",
        ),
    ];
    for (content, code, line) in cases {
        let (s, e) = h.upload("in.jsonl", Some("batch"), &content).await;
        assert_eq!(s, 400, "{e}");
        assert_eq!(e["error"]["code"], code);
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(line),
            "{e}"
        );
    }
    let (s, e) = h.upload("in.txt", Some("batch"), &good).await;
    assert_eq!(
        (s, e["error"]["message"].as_str()),
        (
            400,
            Some("Invalid file format for Batch API. Must be .jsonl")
        )
    );
    let (s, e) = h.upload("in.jsonl", None, &good).await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("purpose")));
    let (s, _) = h.upload("in.jsonl", Some("homework"), &good).await;
    assert_eq!(s, 400);
    let big = openai_jsonl(&strs(&ids(10)));
    let (s, e) = h.upload("in.jsonl", Some("batch"), &big).await;
    assert_eq!(
        (s, e["error"]["message"].as_str()),
        (400, Some("File is too large."))
    );
    // Other purposes are stored as they are.
    let (s, f) = h.upload("notes.txt", Some("user_data"), "hello").await;
    assert_eq!((s, f["bytes"].as_u64()), (200, Some(5)));
}

#[tokio::test]
async fn openai_validation_fails_the_batch_naming_the_lines() {
    let (srv, h) = server(BatchConfig {
        limits: BatchLimits {
            openai_max_requests: 3,
            ..BatchLimits::default()
        },
        ..BatchConfig::default()
    })
    .await;
    let ctl = srv.batches();
    let dup = openai_batch(&h, &["a", "b", "a"]).await;
    assert_eq!(ctl.advance(&dup), Ok(BatchState::Failed));
    let (_, b) = h.get(&format!("/batches/{dup}")).await;
    assert_eq!(b["status"], "failed");
    assert!(b["failed_at"].is_u64());
    assert_eq!(b["errors"]["object"], "list");
    assert_eq!(b["errors"]["data"][0]["code"], "duplicate_custom_id");
    assert_eq!(b["errors"]["data"][0]["line"], 3);
    assert_eq!(b["output_file_id"], Value::Null);

    let many = openai_batch(&h, &["a", "b", "c", "d"]).await;
    assert_eq!(ctl.complete(&many), Ok(BatchState::Failed));
    let (_, b) = h.get(&format!("/batches/{many}")).await;
    assert_eq!(b["errors"]["data"][0]["code"], "too_many_tasks");

    let content = json!({"custom_id": "x", "method": "POST", "url": "/v1/embeddings",
                         "body": chat_body("q")})
    .to_string();
    let (_, f) = h.upload("in.jsonl", Some("batch"), &content).await;
    let req = json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let (_, b) = h.post("/batches", &req).await;
    let id = b["id"].as_str().unwrap();
    ctl.advance(id).unwrap();
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(b["errors"]["data"][0]["code"], "url_mismatch");
    assert_eq!(b["errors"]["data"][0]["line"], 1);

    let ok = openai_batch(&h, &["a"]).await;
    ctl.fail_validation(
        &ok,
        vec![LineError::new(
            Some(1),
            "invalid_json_line",
            "This line is not parseable as valid JSON.",
        )],
    )
    .unwrap();
    let (_, b) = h.get(&format!("/batches/{ok}")).await;
    assert_eq!(b["status"], "failed");
    assert_eq!(
        b["errors"]["data"][0],
        json!({"code": "invalid_json_line", "line": 1,
        "message": "This line is not parseable as valid JSON.", "param": null})
    );

    // Errors at create time.
    let fid = f["id"].clone();
    for (body, param) in [
        (
            json!({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "48h"}),
            "completion_window",
        ),
        (
            json!({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
        (
            json!({"input_file_id": fid, "endpoint": "/v1/images", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
        (
            json!({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "metadata": (0..17).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            "metadata",
        ),
    ] {
        let (s, e) = h.post("/batches", &body).await;
        assert_eq!((s, e["error"]["param"].as_str()), (400, Some(param)), "{e}");
    }
}

#[tokio::test]
async fn openai_lists_page_newest_first() {
    let (_srv, h) = server(BatchConfig::default()).await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(openai_batch(&h, &[&format!("x{i}")]).await);
    }
    made.reverse();
    let (_, p1) = h.get("/batches?limit=2").await;
    assert_eq!(p1["object"], "list");
    assert_eq!(p1["has_more"], true);
    assert_eq!(p1["first_id"], made[0].as_str());
    assert_eq!(p1["last_id"], made[1].as_str());
    let (_, p2) = h.get(&format!("/batches?limit=2&after={}", made[1])).await;
    assert_eq!(p2["data"][0]["id"], made[2].as_str());
    assert_eq!(p2["has_more"], true);
    let (_, p3) = h.get(&format!("/batches?limit=2&after={}", made[3])).await;
    assert_eq!(p3["data"].as_array().unwrap().len(), 1);
    assert_eq!(p3["has_more"], false);
    let (s, _) = h.get("/batches?limit=101").await;
    assert_eq!(s, 400);
    let (_, files) = h.get("/files?limit=2&order=asc").await;
    assert_eq!(files["data"].as_array().unwrap().len(), 2);
    assert_eq!(files["has_more"], true);
    let first = files["data"][0]["id"].as_str().unwrap().to_owned();
    let (s, d) = h
        .call(Method::DELETE, &format!("/files/{first}"), None)
        .await;
    assert_eq!((s, &d["deleted"]), (200, &json!(true)));
    let (s, _) = h.get(&format!("/files/{first}")).await;
    assert_eq!(s, 404);
    let (_, all) = h.get("/files?purpose=batch").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn openai_expiry_returns_the_finished_part() {
    let (srv, h) = server(BatchConfig::default()).await;
    let ctl = srv.batches();
    let id = openai_batch(&h, &strs(&ids(10))).await;
    ctl.advance(&id).unwrap();
    ctl.expire(&id, 0.3).unwrap();
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(b["status"], "expired");
    assert!(b["expired_at"].is_u64());
    assert_eq!(
        b["request_counts"],
        json!({"total": 10, "completed": 3, "failed": 7})
    );
    let (_, out) = h
        .text(&format!(
            "/files/{}/content",
            b["output_file_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(lines(&out).len(), 3);
    let (_, err) = h
        .text(&format!(
            "/files/{}/content",
            b["error_file_id"].as_str().unwrap()
        ))
        .await;
    let err = lines(&err);
    assert_eq!(err.len(), 7);
    for l in &err {
        assert_eq!(l["response"], Value::Null);
        assert_eq!(l["error"]["code"], "batch_expired");
    }
    assert_eq!(ctl.get(&id).map(|i| (i.succeeded, i.expired)), Some((3, 7)));
}

#[tokio::test]
async fn openai_cancel_goes_through_cancelling_to_partial_results() {
    let (srv, h) = server(BatchConfig::default()).await;
    let ctl = srv.batches();
    let id = openai_batch(&h, &strs(&ids(10))).await;
    ctl.advance(&id).unwrap();
    assert_eq!(ctl.process(&id, 0.5), Ok(5));
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(b["request_counts"]["completed"], 5);
    let (s, b) = h.post(&format!("/batches/{id}/cancel"), &json!({})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("cancelling")));
    assert!(b["cancelling_at"].is_u64());
    assert_eq!(ctl.advance(&id), Ok(BatchState::Cancelled));
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(b["status"], "cancelled");
    let (_, out) = h
        .text(&format!(
            "/files/{}/content",
            b["output_file_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(lines(&out).len(), 5);
    let (_, err) = h
        .text(&format!(
            "/files/{}/content",
            b["error_file_id"].as_str().unwrap()
        ))
        .await;
    assert!(lines(&err)
        .iter()
        .all(|l| l["error"]["code"] == "batch_cancelled"));
    let (s, e) = h.post(&format!("/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(s, 409, "{e}");
    let (s, _) = h.post("/batches/batch_nope/cancel", &json!({})).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn line_faults_land_in_the_error_file_and_are_one_shot() {
    let (srv, h) = server(BatchConfig::default()).await;
    let ctl = srv.batches();
    srv.set_responder(std::sync::Arc::new(|req: &Value| {
        if req.to_string().contains("question r4") {
            Reply::Fault(Fault::Status {
                status: 400,
                code: Some("context_length_exceeded".into()),
                message: "too long".into(),
            })
        } else {
            Reply::Text("fine".into())
        }
    }));
    ctl.fail_lines(["r1", "r2"], Fault::status(500));
    let id = openai_batch(&h, &strs(&ids(6))).await;
    ctl.complete(&id).unwrap();
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(
        b["request_counts"],
        json!({"total": 6, "completed": 3, "failed": 3})
    );
    let (_, err) = h
        .text(&format!(
            "/files/{}/content",
            b["error_file_id"].as_str().unwrap()
        ))
        .await;
    let mut err = lines(&err);
    err.sort_by_key(|l| l["custom_id"].as_str().unwrap().to_owned());
    assert_eq!(err.len(), 3);
    for (l, (cid, status)) in err.iter().zip([("r1", 500), ("r2", 500), ("r4", 400)]) {
        assert_eq!(l["custom_id"], cid);
        assert_eq!(l["error"], Value::Null);
        assert_eq!(l["response"]["status_code"], status);
        assert!(l["response"]["body"]["error"]["message"].is_string());
    }
    assert_eq!(
        err[2]["response"]["body"]["error"]["code"],
        "context_length_exceeded"
    );
    assert_eq!(err[0]["response"]["body"]["error"]["type"], "server_error");
    let (_, out) = h
        .text(&format!(
            "/files/{}/content",
            b["output_file_id"].as_str().unwrap()
        ))
        .await;
    assert!(lines(&out)
        .iter()
        .all(|l| l["response"]["body"]["choices"][0]["message"]["content"] == "fine"));
    // The resubmitted line succeeds.
    let again = openai_batch(&h, &["r1"]).await;
    ctl.complete(&again).unwrap();
    assert_eq!(ctl.get(&again).map(|i| i.succeeded), Some(1));
    assert_eq!(ctl.submissions("r1"), 2);
}

#[tokio::test]
async fn dropped_lines_are_missing_from_every_result() {
    let (srv, h) = server(BatchConfig::default()).await;
    let ctl = srv.batches();
    let id = openai_batch(&h, &strs(&ids(5))).await;
    ctl.complete(&id).unwrap();
    assert_eq!(ctl.drop_results(&id, ["r0", "r3", "zz"]), Ok(2));
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(b["request_counts"]["completed"], 5);
    let out = b["output_file_id"].as_str().unwrap();
    let (_, text) = h.text(&format!("/files/{out}/content")).await;
    let got: HashSet<String> = lines(&text)
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        got,
        ["r1", "r2", "r4"].map(String::from).into_iter().collect()
    );
    let (_, meta) = h.get(&format!("/files/{out}")).await;
    assert_eq!(meta["bytes"], text.len());
}

#[tokio::test]
async fn poll_and_download_faults_hit_the_next_gets() {
    let (srv, h) = server(BatchConfig::default()).await;
    let ctl = srv.batches();
    let id = openai_batch(&h, &["a", "b", "c"]).await;
    ctl.push_poll_faults([Fault::status(503), Fault::Reset]);
    let (s, _) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(s, 503);
    let reset = h
        .raw(Method::GET, &format!("/batches/{id}"), None, Bytes::new())
        .await;
    assert!(reset.is_err(), "the connection should have been reset");
    let (s, _) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(ctl.counters().polls, 3);
    ctl.complete(&id).unwrap();
    let (_, b) = h.get(&format!("/batches/{id}")).await;
    let out = b["output_file_id"].as_str().unwrap().to_owned();
    ctl.push_download_faults([Fault::status(500)]);
    let (s, _) = h.text(&format!("/files/{out}/content")).await;
    assert_eq!(s, 500);
    let (s, text) = h.text(&format!("/files/{out}/content")).await;
    assert_eq!((s, lines(&text).len()), (200, 3));
    assert_eq!(ctl.counters().result_reads, 2);
}

#[tokio::test]
async fn auth_is_bearer_for_openai_and_xai_and_x_api_key_for_anthropic() {
    let srv = SimServer::start(SimConfig {
        api_key: Some("k".into()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let anon = Http::new(srv.base_url());
    let (s, _) = anon.get("/batches").await;
    assert_eq!(s, 401);
    let (s, _) = Http::new(srv.base_url_for(Protocol::Xai))
        .get("/batches")
        .await;
    assert_eq!(s, 401);
    let bearer = Http::new(srv.base_url()).with_header("authorization", "Bearer k");
    let (s, _) = bearer.get("/batches").await;
    assert_eq!(s, 200);
    let (s, e) = bearer.get("/messages/batches").await;
    assert_eq!(
        (s, e["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    let keyed = Http::new(srv.base_url_for(Protocol::Anthropic)).with_header("x-api-key", "k");
    let (s, e) = keyed.get("/messages/batches").await;
    assert_eq!((s, e["type"].as_str()), (400, Some("error")));
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("anthropic-version"));
    let ok = keyed.with_header("anthropic-version", "2023-06-01");
    let (s, _) = ok.get("/messages/batches").await;
    assert_eq!(s, 200);
    let wrong = Http::new(srv.base_url())
        .with_header("x-api-key", "nope")
        .with_header("anthropic-version", "2023-06-01");
    let (s, _) = wrong.get("/messages/batches").await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn one_hundred_twenty_thousand_lines_in_three_batches() {
    let (srv, h) = server(BatchConfig::default()).await;
    let ctl = srv.batches();
    let all = ids(120_000);
    let mut batches = Vec::new();
    for chunk in all.chunks(40_000) {
        batches.push(openai_batch(&h, &strs(chunk)).await);
    }
    let mut seen = HashSet::new();
    for id in &batches {
        ctl.complete(id).unwrap();
        let (_, b) = h.get(&format!("/batches/{id}")).await;
        assert_eq!(b["request_counts"]["completed"], 40_000);
        let (_, text) = h
            .text(&format!(
                "/files/{}/content",
                b["output_file_id"].as_str().unwrap()
            ))
            .await;
        // Cheaper than parsing 40,000 lines: the custom id is the second field.
        for l in text.lines() {
            let rest = l.split_once(r#""custom_id":""#).unwrap().1;
            assert!(seen.insert(rest.split_once('"').unwrap().0.to_owned()));
        }
    }
    assert_eq!(seen.len(), 120_000);
    assert_eq!(ctl.max_submissions(), 1);
}

// ----- Anthropic -----

fn anthropic_requests(ids: &[&str]) -> Value {
    let reqs: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"custom_id": id, "params": {"model": "claude-sonnet-4-5", "max_tokens": 64,
                "system": "Be brief.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": format!("question {id}")}]}]}})
        })
        .collect();
    json!({"requests": reqs})
}

fn anthropic(srv: &SimServer) -> Http {
    Http::new(srv.base_url_for(Protocol::Anthropic)).with_header("anthropic-version", "2023-06-01")
}

#[tokio::test]
async fn anthropic_full_lifecycle_matches_live_answers() {
    let (srv, h) = server(BatchConfig::default()).await;
    let a = anthropic(&srv);
    let ctl = srv.batches();
    let names = ids(6);
    let (s, b) = a
        .post("/messages/batches", &anthropic_requests(&strs(&names)))
        .await;
    assert_eq!(s, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_"));
    assert_eq!(b["type"], "message_batch");
    assert_eq!(b["processing_status"], "in_progress");
    assert_eq!(b["request_counts"]["processing"], 6);
    assert_eq!(b["results_url"], Value::Null);
    assert!(b["created_at"].as_str().unwrap().ends_with('Z'));
    let (s, _) = a.get(&format!("/messages/batches/{id}/results")).await;
    assert_eq!(s, 400);
    ctl.advance(&id).unwrap();
    ctl.advance(&id).unwrap();
    let (_, b) = a.get(&format!("/messages/batches/{id}")).await;
    assert_eq!(b["processing_status"], "in_progress");
    assert_eq!(
        b["request_counts"]["succeeded"], 0,
        "counts move only once the batch ends"
    );
    assert_eq!(ctl.advance(&id), Ok(BatchState::Completed));
    let (_, b) = a.get(&format!("/messages/batches/{id}")).await;
    assert_eq!(b["processing_status"], "ended");
    assert_eq!(
        b["request_counts"],
        json!({"processing": 0, "succeeded": 6, "errored": 0, "canceled": 0, "expired": 0})
    );
    assert!(b["ended_at"].is_string());
    let url = b["results_url"].as_str().unwrap();
    assert!(url.starts_with(&srv.base_url_for(Protocol::Anthropic)));
    assert!(url.ends_with(&format!("/messages/batches/{id}/results")));
    let (s, text) = a.text(url).await;
    assert_eq!(s, 200);
    let got = lines(&text);
    assert_eq!(got.len(), 6);
    let order: Vec<&str> = got
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_ne!(order, strs(&names));
    for l in &got {
        assert_eq!(l["result"]["type"], "succeeded");
        let m = &l["result"]["message"];
        assert_eq!(m["type"], "message");
        assert_eq!(m["role"], "assistant");
        assert_eq!(m["stop_reason"], "end_turn");
        let cid = l["custom_id"].as_str().unwrap();
        let prompt = format!("question {cid}");
        let mut chat = chat_body(&prompt);
        chat["model"] = json!("claude-sonnet-4-5");
        let (content, usage) = live(&h, &chat).await;
        assert_eq!(m["content"][0]["text"], content);
        assert_eq!(m["usage"]["input_tokens"], usage["prompt_tokens"]);
        assert_eq!(m["usage"]["output_tokens"], usage["completion_tokens"]);
        let params = &anthropic_requests(&[cid])["requests"][0]["params"];
        let (s, live_msg) = a.post("/messages", params).await;
        assert_eq!(s, 200);
        assert_eq!(live_msg["content"][0]["text"], content);
    }
}

#[tokio::test]
async fn anthropic_rejects_bad_requests_at_create() {
    let (srv, _h) = server(BatchConfig {
        limits: BatchLimits {
            anthropic_max_requests: 3,
            anthropic_max_bytes: 2_000,
            ..BatchLimits::default()
        },
        ..BatchConfig::default()
    })
    .await;
    let a = anthropic(&srv);
    let long = "x".repeat(65);
    for (body, needle) in [
        (
            anthropic_requests(&["ok", "bad id!"]),
            "requests.1.custom_id",
        ),
        (anthropic_requests(&[&long]), "requests.0.custom_id"),
        (anthropic_requests(&["a", "a"]), "Duplicate custom_id"),
        (json!({"requests": []}), "at least 1"),
        (json!({}), "requests: Field required"),
        (anthropic_requests(&["a", "b", "c", "d"]), "at most 3"),
        (
            json!({"requests": [{"custom_id": "a", "params": {"model": "m", "messages": []}}]}),
            "requests.0.params.max_tokens",
        ),
    ] {
        let (s, e) = a.post("/messages/batches", &body).await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
    }
    let big = anthropic_requests(&["a", "b", "c"]);
    let mut big = big.clone();
    big["requests"][0]["params"]["messages"][0]["content"][0]["text"] = json!("y".repeat(3000));
    let (s, e) = a.post("/messages/batches", &big).await;
    assert_eq!(
        (s, e["error"]["type"].as_str()),
        (413, Some("request_too_large"))
    );
}

#[tokio::test]
async fn anthropic_lists_page_both_ways() {
    let (srv, _h) = server(BatchConfig::default()).await;
    let a = anthropic(&srv);
    let mut made = Vec::new();
    for i in 0..5 {
        let (_, b) = a
            .post(
                "/messages/batches",
                &anthropic_requests(&[&format!("x{i}")]),
            )
            .await;
        made.push(b["id"].as_str().unwrap().to_owned());
    }
    made.reverse();
    let (_, p1) = a.get("/messages/batches?limit=2").await;
    assert_eq!(
        (p1["first_id"].as_str(), p1["last_id"].as_str()),
        (Some(made[0].as_str()), Some(made[1].as_str()))
    );
    assert_eq!(p1["has_more"], true);
    let (_, p2) = a
        .get(&format!("/messages/batches?limit=2&after_id={}", made[1]))
        .await;
    assert_eq!(p2["first_id"], made[2].as_str());
    let (_, p3) = a
        .get(&format!("/messages/batches?limit=2&after_id={}", made[3]))
        .await;
    assert_eq!(
        (p3["data"].as_array().unwrap().len(), &p3["has_more"]),
        (1, &json!(false))
    );
    let (_, back) = a
        .get(&format!("/messages/batches?limit=2&before_id={}", made[2]))
        .await;
    assert_eq!(back["first_id"], made[0].as_str());
    assert_eq!(back["has_more"], false);
    let (_, back) = a
        .get(&format!("/messages/batches?limit=1&before_id={}", made[2]))
        .await;
    assert_eq!(
        (back["first_id"].as_str(), &back["has_more"]),
        (Some(made[1].as_str()), &json!(true))
    );
}

#[tokio::test]
async fn anthropic_cancel_expiry_errors_and_delete() {
    let (srv, _h) = server(BatchConfig::default()).await;
    let a = anthropic(&srv);
    let ctl = srv.batches();
    let (_, b) = a
        .post("/messages/batches", &anthropic_requests(&strs(&ids(5))))
        .await;
    let id = b["id"].as_str().unwrap().to_owned();
    let (s, b) = a
        .post(&format!("/messages/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (s, b["processing_status"].as_str()),
        (200, Some("canceling"))
    );
    assert!(b["cancel_initiated_at"].is_string());
    let (s, _) = a
        .call(Method::DELETE, &format!("/messages/batches/{id}"), None)
        .await;
    assert_eq!(s, 400, "cannot delete a batch still processing");
    ctl.advance(&id).unwrap();
    let (_, b) = a.get(&format!("/messages/batches/{id}")).await;
    assert_eq!(b["processing_status"], "ended");
    assert_eq!(b["request_counts"]["canceled"], 5);
    let (_, text) = a.text(&format!("/messages/batches/{id}/results")).await;
    assert!(lines(&text)
        .iter()
        .all(|l| l["result"] == json!({"type": "canceled"})));
    let (s, _) = a
        .post(&format!("/messages/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 400);
    let (s, d) = a
        .call(Method::DELETE, &format!("/messages/batches/{id}"), None)
        .await;
    assert_eq!(
        (s, d["type"].as_str()),
        (200, Some("message_batch_deleted"))
    );
    let (s, _) = a.get(&format!("/messages/batches/{id}")).await;
    assert_eq!(s, 404);

    ctl.fail_lines(["r1"], Fault::status(529));
    let (_, b) = a
        .post("/messages/batches", &anthropic_requests(&strs(&ids(5))))
        .await;
    let id = b["id"].as_str().unwrap().to_owned();
    ctl.expire(&id, 0.4).unwrap();
    let (_, b) = a.get(&format!("/messages/batches/{id}")).await;
    assert_eq!(
        b["request_counts"],
        json!({"processing": 0, "succeeded": 1, "errored": 1, "canceled": 0, "expired": 3})
    );
    let (_, text) = a.text(&format!("/messages/batches/{id}/results")).await;
    let got = lines(&text);
    let errored: Vec<&Value> = got
        .iter()
        .filter(|l| l["result"]["type"] == "errored")
        .collect();
    assert_eq!(errored.len(), 1);
    assert_eq!(errored[0]["custom_id"], "r1");
    assert_eq!(errored[0]["result"]["error"]["type"], "error");
    assert_eq!(
        errored[0]["result"]["error"]["error"]["type"],
        "overloaded_error"
    );
    assert_eq!(
        got.iter()
            .filter(|l| l["result"] == json!({"type": "expired"}))
            .count(),
        3
    );
    assert_eq!(
        ctl.expire(&id, 1.0),
        Err(ControlError::Terminal {
            id: id.clone(),
            state: BatchState::Expired
        })
    );
    assert!(matches!(
        ctl.fail_validation(&id, vec![]),
        Err(ControlError::Unsupported { .. })
    ));
}

// ----- xAI -----

fn xai_requests(ids: &[&str]) -> Value {
    let reqs: Vec<Value> = ids
        .iter()
        .map(|id| json!({"batch_request_id": id, "batch_request": {"chat_get_completion": chat_body(&format!("question {id}"))}}))
        .collect();
    json!({"batch_requests": reqs})
}

async fn xai_batch(x: &Http, name: &str) -> String {
    let (s, b) = x.post("/batches", &json!({"name": name})).await;
    assert_eq!(s, 200, "{b}");
    b["batch_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn xai_full_lifecycle_with_chunks_and_pages() {
    let (srv, h) = server(no_create_limit()).await;
    let x = Http::new(srv.base_url_for(Protocol::Xai));
    let ctl = srv.batches();
    let id = xai_batch(&x, "eval-run").await;
    assert!(id.starts_with("batch_"));
    let names = ids(12);
    for chunk in names.chunks(4) {
        let (s, v) = x
            .post(
                &format!("/batches/{id}/requests"),
                &xai_requests(&strs(chunk)),
            )
            .await;
        assert_eq!((s, v), (200, json!({})));
    }
    assert_eq!(ctl.counters().add_request_calls, 3);
    let (_, b) = x.get(&format!("/batches/{id}")).await;
    assert_eq!(b["name"], "eval-run");
    assert_eq!(
        b["state"],
        json!({"num_requests": 12, "num_pending": 12, "num_success": 0, "num_error": 0, "num_cancelled": 0})
    );
    for key in [
        "create_time",
        "expire_time",
        "create_api_key_id",
        "cancel_time",
        "cancel_by_xai_message",
    ] {
        assert!(b.get(key).is_some(), "missing {key}");
    }
    let (_, r) = x.get(&format!("/batches/{id}/requests?limit=5")).await;
    assert_eq!(r["batch_request_metadata"].as_array().unwrap().len(), 5);
    assert_eq!(r["batch_request_metadata"][0]["state"], "pending");
    assert_eq!(r["pagination_token"], "5");
    let (_, r) = x.get(&format!("/batches/{id}/results")).await;
    assert_eq!(
        (
            r["results"].as_array().unwrap().len(),
            &r["pagination_token"]
        ),
        (0, &Value::Null)
    );

    ctl.advance(&id).unwrap();
    let (_, b) = x.get(&format!("/batches/{id}")).await;
    assert_eq!(b["state"]["num_success"], 12);
    assert_eq!(b["state"]["num_pending"], 0);
    assert!(
        b["cost_breakdown"]["total_cost_usd_ticks"]
            .as_u64()
            .unwrap()
            > 0
    );
    let mut token: Option<String> = None;
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let q = token
            .as_ref()
            .map_or(String::new(), |t| format!("&pagination_token={t}"));
        let (_, page) = x
            .get(&format!("/batches/{id}/results?page_size=5{q}"))
            .await;
        pages += 1;
        got.extend(page["results"].as_array().unwrap().iter().cloned());
        match page["pagination_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!((pages, got.len()), (3, 12));
    let order: Vec<&str> = got
        .iter()
        .map(|r| r["batch_request_id"].as_str().unwrap())
        .collect();
    assert_ne!(order, strs(&names));
    for r in &got {
        let cid = r["batch_request_id"].as_str().unwrap();
        let c = &r["batch_result"]["response"]["chat_get_completion"];
        let (content, usage) = live(&h, &chat_body(&format!("question {cid}"))).await;
        assert_eq!(c["choices"][0]["message"]["content"], content);
        assert_eq!(c["usage"], usage);
    }
    let (_, r) = x.get(&format!("/batches/{id}/requests?limit=100")).await;
    assert!(r["batch_request_metadata"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["state"] == "succeeded"));
    assert_eq!(r["pagination_token"], Value::Null);
}

#[tokio::test]
async fn xai_limits_rate_and_validation() {
    let (srv, _h) = server(BatchConfig {
        limits: BatchLimits {
            xai_max_add_bytes: 1_000,
            xai_adds_per_window: 4,
            xai_add_window: Duration::from_secs(60),
            ..BatchLimits::default()
        },
        ..BatchConfig::default()
    })
    .await;
    let x = Http::new(srv.base_url_for(Protocol::Xai));
    let id = xai_batch(&x, "a").await;
    let (s, e) = x.post("/batches", &json!({"name": "b"})).await;
    assert_eq!(s, 429, "one batch creation per second: {e}");
    assert!(e["error"].is_string() && e["code"].is_string());
    let (s, _) = x.post("/batches", &json!({})).await;
    assert_eq!(s, 400);
    let big = xai_requests(&strs(&ids(20)));
    let (s, _) = x.post(&format!("/batches/{id}/requests"), &big).await;
    assert_eq!(s, 413);
    let (s, _) = x
        .post(
            &format!("/batches/{id}/requests"),
            &xai_requests(&["a", "a"]),
        )
        .await;
    assert_eq!(s, 400, "duplicate ids in one call");
    let no_id =
        json!({"batch_requests": [{"batch_request": {"chat_get_completion": chat_body("q")}}]});
    let (s, _) = x.post(&format!("/batches/{id}/requests"), &no_id).await;
    assert_eq!(s, 200);
    let bad = json!({"batch_requests": [{"batch_request": {}}]});
    let (s, _) = x.post(&format!("/batches/{id}/requests"), &bad).await;
    assert_eq!(s, 400, "chat_get_completion is required");
    let (s, _) = x.post(&format!("/batches/{id}/requests"), &bad).await;
    assert_eq!(s, 429, "the fifth add call within the window");
    let info = srv.batches().get(&id).unwrap();
    assert_eq!(info.total, 1);
    assert_eq!(info.custom_ids[0].len(), 36, "a generated UUID");
    assert_eq!(srv.batches().counters().add_request_calls, 5);
}

#[tokio::test]
async fn xai_results_come_as_they_finish_and_cancel_keeps_them() {
    let (srv, _h) = server(no_create_limit()).await;
    let x = Http::new(srv.base_url_for(Protocol::Xai));
    let ctl = srv.batches();
    let id = xai_batch(&x, "c").await;
    x.post(
        &format!("/batches/{id}/requests"),
        &xai_requests(&strs(&ids(10))),
    )
    .await;
    assert_eq!(ctl.process(&id, 0.3), Ok(3));
    let (_, r) = x.get(&format!("/batches/{id}/results")).await;
    assert_eq!(r["results"].as_array().unwrap().len(), 3);
    let (s, b) = x.post(&format!("/batches/{id}:cancel"), &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(b["state"]["num_cancelled"], 7);
    assert_eq!(b["state"]["num_pending"], 0);
    assert!(b["cancel_time"].is_string());
    let (_, r) = x.get(&format!("/batches/{id}/results")).await;
    assert_eq!(r["results"].as_array().unwrap().len(), 3);
    let (s, _) = x
        .post(&format!("/batches/{id}/requests"), &xai_requests(&["late"]))
        .await;
    assert_eq!(s, 400);
    let (_, m) = x.get(&format!("/batches/{id}/requests")).await;
    let cancelled = m["batch_request_metadata"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "cancelled")
        .count();
    assert_eq!(cancelled, 7);

    ctl.fail_lines(["e0"], Fault::status(500));
    let id = xai_batch(&x, "d").await;
    let e_ids: Vec<String> = (0..6).map(|i| format!("e{i}")).collect();
    x.post(
        &format!("/batches/{id}/requests"),
        &xai_requests(&strs(&e_ids)),
    )
    .await;
    ctl.expire(&id, 0.5).unwrap();
    let (_, b) = x.get(&format!("/batches/{id}")).await;
    assert_eq!(b["state"]["num_success"], 2);
    assert_eq!(b["state"]["num_error"], 4);
    let (_, r) = x.get(&format!("/batches/{id}/results")).await;
    let errs: Vec<&Value> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["batch_result"].get("error").is_some())
        .collect();
    assert_eq!(errs.len(), 4);
    assert!(errs
        .iter()
        .any(|e| e["batch_request_id"] == "e0" && e["batch_result"]["error"]["code"] == 13));
    assert_eq!(
        errs.iter()
            .filter(|e| e["batch_result"]["error"]["code"] == 4)
            .count(),
        3
    );
}

#[tokio::test]
async fn xai_lists_batches_by_token_and_takes_uploaded_files() {
    let (srv, _h) = server(no_create_limit()).await;
    let x = Http::new(srv.base_url_for(Protocol::Xai));
    for n in ["a", "b", "c"] {
        xai_batch(&x, n).await;
    }
    let (_, p1) = x.get("/batches?limit=2").await;
    assert_eq!(p1["batches"][0]["name"], "c");
    let t = p1["pagination_token"].as_str().unwrap().to_owned();
    let (_, p2) = x
        .get(&format!("/batches?limit=2&pagination_token={t}"))
        .await;
    assert_eq!(p2["batches"].as_array().unwrap().len(), 1);
    assert_eq!(p2["pagination_token"], Value::Null);
    // OpenAI-style upload without purpose, then a batch from it.
    let (s, f) = x
        .upload("in.jsonl", None, &openai_jsonl(&["f1", "f2"]))
        .await;
    assert_eq!(s, 200, "{f}");
    let (s, b) = x
        .post(
            "/batches",
            &json!({"name": "from-file", "input_file_id": f["id"]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state"]["num_requests"], 2);
    // The bare prefix stays OpenAI's: an xAI batch is not found there.
    let (s, _) = Http::new(srv.base_url())
        .get(&format!("/batches/{}", b["batch_id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 404);
}

// ----- Control and Auto mode -----

#[tokio::test]
async fn control_sees_every_protocol_and_counts_submissions() {
    let (srv, h) = server(no_create_limit()).await;
    let ctl = srv.batches();
    let oid = openai_batch(&h, &["shared", "o1"]).await;
    let a = anthropic(&srv);
    let (_, b) = a
        .post("/messages/batches", &anthropic_requests(&["shared"]))
        .await;
    let aid = b["id"].as_str().unwrap().to_owned();
    let x = Http::new(srv.base_url_for(Protocol::Xai));
    let xid = xai_batch(&x, "named").await;
    x.post(
        &format!("/batches/{xid}/requests"),
        &xai_requests(&["shared"]),
    )
    .await;
    assert_eq!(ctl.submissions("shared"), 3);
    assert_eq!(ctl.submissions("o1"), 1);
    assert_eq!(ctl.submissions("never"), 0);
    assert_eq!(ctl.max_submissions(), 3);
    let list = ctl.list();
    let got: Vec<(&str, Protocol)> = list.iter().map(|i| (i.id.as_str(), i.protocol)).collect();
    assert_eq!(
        got,
        [
            (oid.as_str(), Protocol::OpenAi),
            (aid.as_str(), Protocol::Anthropic),
            (xid.as_str(), Protocol::Xai)
        ]
    );
    assert_eq!(list[0].metadata.get("run"), Some(&json!("t")));
    assert_eq!(list[2].name.as_deref(), Some("named"));
    assert_eq!(ctl.counters().batches_created, 3);
    ctl.set_state(&oid, BatchState::Finalizing).unwrap();
    assert_eq!(ctl.get(&oid).map(|i| i.state), Some(BatchState::Finalizing));
    ctl.set_state(&aid, BatchState::Completed).unwrap();
    assert_eq!(
        ctl.get(&aid).map(|i| (i.state, i.succeeded)),
        Some((BatchState::Completed, 1))
    );
    assert!(ctl.set_state(&aid, BatchState::InProgress).is_err());
    assert_eq!(
        ctl.fail_validation(&xid, vec![]),
        Err(ControlError::Unsupported {
            protocol: Protocol::Xai,
            what: "validation phase"
        })
    );
    assert_eq!(
        ctl.advance("nope"),
        Err(ControlError::NotFound("nope".into()))
    );
}

#[tokio::test]
async fn auto_mode_ends_anthropic_and_xai_batches_and_cancels() {
    let step = Duration::from_millis(30);
    let (srv, _h) = server(BatchConfig {
        mode: BatchMode::Auto { step },
        limits: no_create_limit().limits,
    })
    .await;
    let ctl = srv.batches();
    let a = anthropic(&srv);
    let (_, b) = a
        .post("/messages/batches", &anthropic_requests(&["a1", "a2"]))
        .await;
    let aid = b["id"].as_str().unwrap().to_owned();
    let (_, b) = a
        .post("/messages/batches", &anthropic_requests(&["c1"]))
        .await;
    let cid = b["id"].as_str().unwrap().to_owned();
    a.post(&format!("/messages/batches/{cid}/cancel"), &json!({}))
        .await;
    let x = Http::new(srv.base_url_for(Protocol::Xai));
    let xid = xai_batch(&x, "auto").await;
    x.post(
        &format!("/batches/{xid}/requests"),
        &xai_requests(&["x1", "x2"]),
    )
    .await;
    tokio::time::sleep(step * 6).await;
    let (_, b) = a.get(&format!("/messages/batches/{aid}")).await;
    assert_eq!(b["processing_status"], "ended");
    assert_eq!(b["request_counts"]["succeeded"], 2);
    let (_, b) = a.get(&format!("/messages/batches/{cid}")).await;
    assert_eq!(
        (
            b["processing_status"].as_str(),
            &b["request_counts"]["canceled"]
        ),
        (Some("ended"), &json!(1))
    );
    let (_, b) = x.get(&format!("/batches/{xid}")).await;
    assert_eq!(b["state"]["num_success"], 2);
    ctl.set_mode(BatchMode::Manual);
    x.post(&format!("/batches/{xid}/requests"), &xai_requests(&["x3"]))
        .await;
    tokio::time::sleep(step * 3).await;
    assert_eq!(
        ctl.get(&xid).map(|i| i.succeeded),
        Some(2),
        "manual mode leaves it pending"
    );
}

#[test]
fn perm_is_a_permutation_and_timestamps_are_rfc3339() {
    for n in 1..300 {
        let p = Perm::new(n, n as u64 * 7919);
        let set: HashSet<usize> = (0..n).map(|k| p.at(k)).collect();
        assert_eq!(set.len(), n);
        assert!(set.iter().all(|i| *i < n));
    }
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(1_724_179_044_100), "2024-08-20T18:37:24.100Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
}

#[test]
fn input_bodies_are_slices_of_the_file() {
    let data = Bytes::from(format!(
        "{}\n\n{}\n",
        openai_jsonl(&["a"]),
        openai_jsonl(&["b"])
    ));
    let parsed = super::openai::parse_file(&data).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[1].line, 3);
    let body: Value = serde_json::from_slice(&parsed[1].body).unwrap();
    assert_eq!(body, chat_body("question b"));
    assert_eq!(parsed[0].model.as_deref(), Some("gpt-4o-mini"));
}

#[test]
fn mounts_and_queries_parse() {
    assert_eq!(
        split_mount("/xai/v1/batches"),
        (Some(Protocol::Xai), "/v1/batches")
    );
    assert_eq!(split_mount("/xaiv1/batches"), (None, "/xaiv1/batches"));
    assert_eq!(split_mount("/v1/files"), (None, "/v1/files"));
    let q = parse_query("after=batch_1&limit=2&x=a%3Ab+c&flag");
    assert_eq!(q.get("x").map(String::as_str), Some("a:b c"));
    assert_eq!(q.get("flag").map(String::as_str), Some(""));
    assert_eq!(percent_decode("100%"), "100%");
}

#[tokio::test]
async fn a_prefix_that_looks_like_a_mount_still_serves_every_protocol() {
    let srv = SimServer::start(SimConfig {
        prefix: "/openai/v1".into(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (s, _) = Http::new(srv.base_url()).get("/batches").await;
    assert_eq!(s, 200);
    let x = Http::new(srv.base_url_for(Protocol::Xai));
    let (s, b) = x.get("/batches").await;
    assert_eq!((s, b.get("batches").is_some()), (200, true), "{b}");
    let (s, _) = anthropic(&srv).get("/messages/batches").await;
    assert_eq!(s, 200);
}
