//! `reasonq serve` through the real binary against the loopback upstream: files, batches to
//! completion (the CLI's output format), cancel, paging, errors, auth, the chat cache,
//! `/metrics` as strict Prometheus text, kill -9 and resume, and the official `openai`
//! Python SDK as a client.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use reasonq::sim::{Fault, RandomFaults, SimConfig};
use serde_json::{json, Value};
use support::{questions, read_jsonl, Env};

/// A running `reasonq serve`.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
    key: Option<String>,
    /// What it printed on stderr after the address.
    log: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// Starts the server on a free port of loopback and waits for its address.
    fn start(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut cmd = env.command(&args);
        cmd.envs(vars.iter().copied());
        let (child, base, rx) = support::spawn_serving(cmd);
        let key = vars
            .iter()
            .find(|(k, _)| *k == "REASONQ_SERVE_KEY")
            .map(|(_, v)| v.to_string());
        Server {
            child,
            base,
            // A new connection per request: after a refused body (413) the server closes its
            // side, and a request racing onto that pooled connection would fail as incomplete.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("a test HTTP client"),
            key,
            log: rx,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches("/v1"))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let req = match &self.key {
            Some(k) => req.header("authorization", format!("Bearer {k}")),
            None => req,
        };
        let resp = match req.send().await {
            Ok(resp) => resp,
            // The server answered (413) and closed before the client finished writing a body
            // it refused: status 0, so only the callers that allow it pass.
            Err(e) if e.is_request() && format!("{e:?}").contains("BodyWrite") => {
                return (0, Value::String(e.to_string()));
            }
            Err(e) => panic!("{e:?}"),
        };
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn text(&self, path: &str) -> String {
        match self.get(path).await {
            (200, Value::String(s)) => s,
            (200, v) => v.to_string(),
            other => panic!("{path}: {other:?}"),
        }
    }

    /// Uploads `bytes` as a batch input file.
    async fn upload(&self, name: &str, bytes: Vec<u8>) -> (u16, Value) {
        let boundary = "reasonq-test-boundary";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/jsonl\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.send(
            self.http
                .post(self.url("/v1/files"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body),
        )
        .await
    }

    async fn create(&self, lines: &[String]) -> Value {
        let (status, file) = self
            .upload("in.jsonl", (lines.join("\n") + "\n").into_bytes())
            .await;
        assert_eq!(status, 200, "{file}");
        let (status, batch) = self
            .post(
                "/v1/batches",
                &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                        "completion_window": "24h", "metadata": {"run": "test"}}),
            )
            .await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    /// Polls a batch until `done` holds (at most a minute).
    async fn poll(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, batch) = self.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(status, 200, "{batch}");
            if done(&batch) {
                return batch;
            }
            assert!(Instant::now() < deadline, "batch never got there: {batch}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn completed(&self, id: &str) -> Value {
        let batch = self
            .poll(id, |b| {
                ["completed", "failed", "cancelled"].contains(&b["status"].as_str().unwrap_or(""))
            })
            .await;
        assert_eq!(batch["status"], "completed", "{batch}");
        batch
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        self.child.wait().unwrap()
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream that takes `ms` for every answer.
fn slow(ms: u64) -> SimConfig {
    SimConfig {
        random: Some(RandomFaults {
            latency_min: Duration::from_millis(ms),
            latency_max: Duration::from_millis(ms),
            ..RandomFaults::default()
        }),
        ..SimConfig::default()
    }
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The stable part of an output line (request ids and job ids differ between runs).
fn essence(line: &Value) -> (String, String, Value) {
    (
        line["custom_id"].as_str().unwrap_or_default().to_string(),
        support::answer(line).to_string(),
        line["response"]["status_code"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_to_completion_and_its_output_is_the_clis() {
    let env = Env::start(SimConfig::default()).await;
    let lines = questions(20);
    let server = Server::start(&env, &[], &[]);
    let batch = server.create(&lines).await;
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["metadata"]["run"], "test");
    let id = batch["id"].as_str().unwrap().to_string();
    let done = server.completed(&id).await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 20, "completed": 20, "failed": 0})
    );
    assert!(done["error_file_id"].is_null(), "{done}");
    for stamp in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[stamp].is_u64(), "{stamp}: {done}");
    }
    let out_id = done["output_file_id"].as_str().unwrap();
    let (status, file) = server.get(&format!("/v1/files/{out_id}")).await;
    assert_eq!(
        (status, file["purpose"].as_str()),
        (200, Some("batch_output"))
    );
    let served = jsonl(&server.text(&format!("/v1/files/{out_id}/content")).await);

    // The same file through `reasonq batch` on another database.
    let input = env.write_input("cli.jsonl", &lines);
    let db = env.path("cli.redb");
    let out = env.command_on(
        &db,
        &["batch", input.to_str().unwrap(), "-o", "cli.out.jsonl"],
    );
    let status = tokio::task::spawn_blocking(move || {
        let mut out = out;
        out.output().unwrap()
    })
    .await
    .unwrap();
    assert!(status.status.success(), "{}", support::stderr(&status));
    let cli = read_jsonl(&env.path("cli.out.jsonl"));
    assert_eq!(served.len(), 20);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&served[0]), keys(&cli[0]));
    let a: Vec<_> = served.iter().map(essence).collect();
    let b: Vec<_> = cli.iter().map(essence).collect();
    assert_eq!(a, b);
    assert!(server.stop().code().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_run_and_list_pages() {
    let env = Env::start(slow(300)).await;
    let server = Server::start(&env, &["--concurrency", "1"], &[]);
    let first = server.create(&questions(2)).await;
    let second = server.create(&questions(2)).await;
    let big = server.create(&questions(40)).await;
    let id = big["id"].as_str().unwrap();
    server
        .poll(id, |b| b["request_counts"]["completed"].as_u64() >= Some(1))
        .await;
    let (status, cancelling) = server
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelling}");
    assert!(
        ["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()),
        "{cancelling}"
    );
    let cancelled = server.poll(id, |b| b["status"] == "cancelled").await;
    let answered = cancelled["request_counts"]["completed"].as_u64().unwrap();
    assert!((1..40).contains(&answered), "{cancelled}");
    assert!(cancelled["cancelled_at"].is_u64());
    // What was answered is in the output file.
    let out = cancelled["output_file_id"].as_str().unwrap();
    let lines = jsonl(&server.text(&format!("/v1/files/{out}/content")).await);
    let ok = lines
        .iter()
        .filter(|l| l["response"]["status_code"] == 200)
        .count() as u64;
    assert_eq!(ok, answered);
    // A cancelled batch cannot go on.
    let (status, _) = server
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);

    // Newest first, two at a time.
    let (status, page) = server.get("/v1/batches?limit=2").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id, second["id"].as_str().unwrap()]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["first_id"], id);
    let last = page["last_id"].as_str().unwrap();
    let (_, rest) = server
        .get(&format!("/v1/batches?limit=2&after={last}"))
        .await;
    let ids: Vec<&str> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first["id"].as_str().unwrap()]);
    assert_eq!(rest["has_more"], false);
    server.completed(first["id"].as_str().unwrap()).await;
    server.completed(second["id"].as_str().unwrap()).await;

    // Files page the same way; `purpose` filters. Three inputs, and outputs of the batches.
    let inputs = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                assert_eq!(f["purpose"], "batch", "{f}");
                f["id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let (_, one) = server.get("/v1/files?purpose=batch&limit=2").await;
    let mut walked = inputs(&one);
    assert_eq!(one["has_more"], true, "{one}");
    let (_, two) = server
        .get(&format!(
            "/v1/files?purpose=batch&limit=2&after={}",
            walked[1]
        ))
        .await;
    walked.extend(inputs(&two));
    assert_eq!(two["has_more"], false, "{two}");
    let expected: Vec<String> = [&big, &second, &first]
        .iter()
        .map(|b| b["input_file_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(walked, expected);
    let (_, all) = server.get("/v1/files?limit=100").await;
    let outputs = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["purpose"] == "batch_output")
        .count();
    assert!(outputs >= 3, "{all}");
    let (status, bad) = server.get("/v1/files?after=file-0000000000000000").await;
    assert_eq!(
        (status, &bad["error"]["param"]),
        (400, &json!("after")),
        "{bad}"
    );
}

fn error_of(v: &Value) -> (&str, Option<&str>, Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    (
        e["type"].as_str().unwrap_or_default(),
        e["param"].as_str(),
        e["code"].as_str(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_error_bodies() {
    let env = Env::start(SimConfig::default()).await;
    let server = Server::start(&env, &["--max-upload-mb", "1", "--max-body-mb", "1"], &[]);
    let http = &server.http;
    let (status, body) = server
        .send(http.post(server.url("/v1/batches")).body("{not json"))
        .await;
    assert_eq!((status, error_of(&body).0), (400, "invalid_request_error"));

    let batch = |file: &str, endpoint: &str| json!({"input_file_id": file, "endpoint": endpoint, "completion_window": "24h"});
    let (status, body) = server
        .post("/v1/batches", &batch("file-nope", "/v1/chat/completions"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_of(&body).1, Some("input_file_id"));

    let (_, file) = server
        .upload("in.jsonl", (questions(2).join("\n") + "\n").into_bytes())
        .await;
    let file_id = file["id"].as_str().unwrap();
    let (status, body) = server
        .post("/v1/batches", &batch(file_id, "/v1/images/generations"))
        .await;
    assert_eq!(
        (status, error_of(&body).1),
        (400, Some("endpoint")),
        "{body}"
    );
    let (status, body) = server
        .post("/v1/batches", &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "1h"}))
        .await;
    assert_eq!(
        (status, error_of(&body).1),
        (400, Some("completion_window"))
    );

    // An invalid line is refused with the CLI's message, naming the line and field.
    let (_, bad) = server
        .upload(
            "bad.jsonl",
            b"{\"id\":\"a\",\"question\":\"ok\"}\n{\"id\":\"b\"}\n".to_vec(),
        )
        .await;
    let (status, body) = server
        .post(
            "/v1/batches",
            &batch(bad["id"].as_str().unwrap(), "/v1/chat/completions"),
        )
        .await;
    assert_eq!(
        (status, error_of(&body).2),
        (400, Some("invalid_file")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    let file = bad["id"].as_str().unwrap();
    assert!(
        message.contains(&format!("{file}:2: field `question`")),
        "{message}"
    );
    assert!(!message.contains(".files"), "no server path: {message}");

    // Too large: an upload past --max-upload-mb and a JSON body past --max-body-mb.
    // The server may close before the client has written the whole body (status 0); the
    // requests after these show it is still up.
    let (status, body) = server.upload("big.jsonl", vec![b'x'; 1_200_000]).await;
    assert!(matches!(status, 413 | 0), "{status}: {body}");
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(1_200_000)}]});
    let (status, body) = server.post("/v1/chat/completions", &big).await;
    assert!(matches!(status, 413 | 0), "{status}: {body}");

    let (status, body) = server.upload("in.jsonl", Vec::new()).await;
    assert_eq!(status, 200, "an empty file is a file: {body}");
    let (status, _) = server.get("/v1/files/file-nope").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/v1/files/..%2F..%2Fetc/content").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/v1/batches/batch_nope").await;
    assert_eq!(status, 404);
    let (status, body) = server.get("/v1/batches?limit=1000").await;
    assert_eq!((status, error_of(&body).1), (400, Some("limit")));
    let (status, _) = server.get("/v1/nothing").await;
    assert_eq!(status, 404);
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            &json!({"messages": [], "stream": true}),
        )
        .await;
    assert_eq!((status, error_of(&body).1), (400, Some("stream")));

    // Files list and delete.
    let (status, list) = server.get("/v1/files?purpose=batch").await;
    assert_eq!(status, 200);
    assert!(list["data"].as_array().unwrap().len() >= 2);
    let (status, deleted) = server
        .send(http.delete(server.url(&format!("/v1/files/{file_id}"))))
        .await;
    assert_eq!((status, &deleted["deleted"]), (200, &json!(true)));
    let (status, _) = server.get(&format!("/v1/files/{file_id}")).await;
    assert_eq!(status, 404);

    // Every refusal was counted.
    let text = server.text("/metrics").await;
    let metrics = parse_prometheus(&text);
    assert!(
        metrics
            .get("reasonq_errors_total{code=\"invalid_file\"}")
            .is_some_and(|v| *v >= 1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_required_off_loopback_and_checked_on_every_request() {
    let env = Env::start(SimConfig::default()).await;
    let out = env.run(&["serve", "--listen", "0.0.0.0:0"]).await;
    assert!(!out.status.success());
    assert!(
        support::stderr(&out).contains("REASONQ_SERVE_KEY"),
        "{}",
        support::stderr(&out)
    );

    let server = Server::start(&env, &[], &[("REASONQ_SERVE_KEY", "s3cret-key")]);
    let (status, _) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret-key"),
        Some("Bearer s3cret-keyX"),
    ] {
        let mut req = server.http.get(server.url("/v1/batches"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{auth:?}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(
            error_of(&serde_json::from_str(&text).unwrap()).0,
            "authentication_error"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_pass_through_and_the_second_comes_from_the_cache() {
    let env = Env::start(SimConfig::default()).await;
    let server = Server::start(&env, &[], &[]);
    let before = parse_prometheus(&server.text("/metrics").await);
    let req = json!({"model": "grok-4", "temperature": 0,
                     "messages": [{"role": "user", "content": "What is 2+2?"}]});
    let (status, first) = server.post("/v1/chat/completions", &req).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "chat.completion");
    let chats = env.server.stats().live_chats;
    let (status, second) = server.post("/v1/chat/completions", &req).await;
    assert_eq!(status, 200);
    assert_eq!(first["choices"], second["choices"]);
    assert_eq!(
        env.server.stats().live_chats,
        chats,
        "the second was not sent upstream"
    );
    assert_eq!(env.server.calls_for("What is 2+2?"), 1);
    let after = parse_prometheus(&server.text("/metrics").await);
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get(&after, "reasonq_cache_hits_total{tier=\"memory\"}")
            - get(&before, "reasonq_cache_hits_total{tier=\"memory\"}"),
        1.0
    );
    assert!(
        get(&after, "reasonq_requests_sent_total") > get(&before, "reasonq_requests_sent_total")
    );
    assert!(get(&after, "reasonq_request_duration_seconds_count") >= 1.0);
    let (status, models) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "grok-4"));
    assert_eq!(server.text("/healthz").await.trim(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_strict_prometheus_text_and_move_with_a_batch() {
    let env = Env::start(SimConfig::default()).await;
    let server = Server::start(&env, &[], &[]);
    let before = parse_prometheus(&server.text("/metrics").await);
    let batch = server.create(&questions(5)).await;
    let id = batch["id"].as_str().unwrap();
    server.completed(id).await;
    let text = server.text("/metrics").await;
    let after = parse_prometheus(&text);
    assert_eq!(
        after.get(&format!(
            "reasonq_queue_jobs{{batch=\"{id}\",state=\"completed\"}}"
        )),
        Some(&5.0),
        "{text}"
    );
    assert!(after
        .get(&format!(
            "reasonq_tokens_total{{batch=\"{id}\",kind=\"prompt\"}}"
        ))
        .is_some_and(|v| *v > 0.0));
    let sent =
        |m: &BTreeMap<String, f64>| m.get("reasonq_requests_sent_total").copied().unwrap_or(0.0);
    assert!(sent(&after) >= sent(&before) + 5.0);
    assert!(after
        .get("reasonq_jobs_completed_total")
        .is_some_and(|v| *v >= 5.0));

    // A line the upstream refuses is counted by its code, as failed for good.
    env.server.push_faults([Fault::Status {
        status: 400,
        code: Some("invalid_prompt".into()),
        message: "refused".into(),
    }]);
    let refused = server.create(&questions(6)[5..]).await;
    server.completed(refused["id"].as_str().unwrap()).await;
    let text = server.text("/metrics").await;
    let failed: f64 = parse_prometheus(&text)
        .iter()
        .filter(|(k, _)| {
            k.starts_with("reasonq_job_errors_total{") && k.contains("outcome=\"failed\"")
        })
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(failed, 1.0, "{text}");
}

#[test]
fn the_strict_parser_refuses_bad_text() {
    for bad in [
        "no_type 1\n",
        "# TYPE a counter\na{x=\"1} 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
    ] {
        let result = std::panic::catch_unwind(|| parse_prometheus(bad));
        assert!(result.is_err(), "accepted: {bad:?}");
    }
}

/// A strict parser of the text exposition format: every sample belongs to a family declared
/// by `# TYPE` before it, labels are `name="escaped value"`, values are numbers, a
/// histogram's buckets are cumulative and end with `+Inf` equal to its `_count`. Returns
/// `name{labels}` -> value; panics on anything else.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut buckets: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                    assert!(
                        types.insert(name.to_string(), kind.to_string()).is_none(),
                        "twice: {line}"
                    );
                }
                (Some("HELP"), Some(_), _) => {}
                _ => panic!("bad comment: {line}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}")),
            ),
            None => (series, ""),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {name}");
        let mut rest = labels;
        let mut le = None;
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label: {line}"));
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => panic!("bad escape: {line}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label: {line}"),
                }
            };
            if key == "le" {
                le = Some(value);
            }
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
            assert!(!rest.starts_with(','), "{line}");
        }
        if name.ends_with("_bucket") {
            buckets
                .entry(family.to_string())
                .or_default()
                .push((le.expect("le"), value));
        }
        out.insert(series.to_string(), value);
    }
    for (family, list) in &buckets {
        assert!(
            list.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family}: not cumulative"
        );
        let last = list.last().unwrap();
        assert_eq!(last.0, "+Inf", "{family}");
        assert_eq!(
            Some(&last.1),
            out.get(&format!("{family}_count")),
            "{family}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_killed_mid_run_completes_after_a_restart_with_every_line_once() {
    let env = Env::start(slow(150)).await;
    let lines = questions(30);
    let server = Server::start(&env, &["--concurrency", "2"], &[]);
    let batch = server.create(&lines).await;
    let id = batch["id"].as_str().unwrap().to_string();
    server
        .poll(&id, |b| {
            b["request_counts"]["completed"].as_u64() >= Some(4)
        })
        .await;
    server.kill9();
    let seen = env.server.stats().live_chats;
    assert!(seen < 30, "the kill came mid-batch ({seen} calls)");

    let server = Server::start(&env, &["--concurrency", "2"], &[]);
    let resumed = server
        .log
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    assert!(
        resumed.contains("1 unfinished batches resumed"),
        "{resumed}"
    );
    let done = server.completed(&id).await;
    assert_eq!(done["request_counts"]["completed"], 30);
    let out = done["output_file_id"].as_str().unwrap();
    let output = jsonl(&server.text(&format!("/v1/files/{out}/content")).await);
    let ids: Vec<&str> = output
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!((ids.len(), unique.len()), (30, 30));
    let by_prompt = env.server.stats().by_prompt;
    for i in 0..30 {
        let calls = by_prompt
            .get(&format!("question number {i}"))
            .copied()
            .unwrap_or(0);
        // At most the calls in flight at the kill are sent twice.
        assert!((1..=2).contains(&calls), "question {i}: {calls} calls");
    }
    let twice = by_prompt.values().filter(|n| **n > 1).count();
    assert!(twice <= 2 * 4, "{twice} lines sent twice");
}

/// The Python of the venv `.ci/run` makes (or `REASONQ_SDK_PYTHON`).
fn sdk_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REASONQ_SDK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-sdk/bin/python");
    venv.is_file().then_some(venv)
}

/// The SDK's Python, or `None` after saying loudly that the test is skipped (never under
/// CI, which makes the venv).
fn sdk_or_skip() -> Option<PathBuf> {
    let python = sdk_python();
    if python.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but .venv-sdk is missing: .ci/run makes it"
        );
        eprintln!(
            "\n!!! SKIPPED an openai SDK test: no .venv-sdk (python3 -m venv .venv-sdk && \
             .venv-sdk/bin/pip install openai==1.109.1) and no REASONQ_SDK_PYTHON\n"
        );
    }
    python
}

/// Runs tests/sdk/drive_batch.py with `args` against `server`; its stdout, after checking
/// it succeeded and said "SDK OK" (or `until`, for the steps that stop early).
async fn drive_sdk(
    python: &Path,
    env: &Env,
    server: &Server,
    args: &[&str],
    until: &str,
) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/drive_batch.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script)
        .args(args)
        .env("OPENAI_BASE_URL", &server.base)
        .env("OPENAI_API_KEY", server.key.as_deref().unwrap_or("none"))
        .env("WORK_DIR", env.dir.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = support::stdout(&out);
    assert!(
        out.status.success() && stdout.contains(until),
        "stdout:\n{stdout}\nstderr:\n{}",
        support::stderr(&out)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_drives_a_batch() {
    let Some(python) = sdk_or_skip() else {
        return;
    };
    let env = Env::start(slow(100)).await;
    let server = Server::start(
        &env,
        &["--concurrency", "2"],
        &[("REASONQ_SERVE_KEY", "sdk-key")],
    );
    drive_sdk(&python, &env, &server, &[], "SDK OK").await;
    assert_eq!(
        env.server.calls_for("sdk chat"),
        1,
        "the second chat came from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sees_a_batch_complete_with_every_line_once_after_the_server_is_killed() {
    let Some(python) = sdk_or_skip() else {
        return;
    };
    // Long enough that the SDK (slow to start on a loaded machine) catches it mid-run.
    let env = Env::start(slow(250)).await;
    let key = [("REASONQ_SERVE_KEY", "sdk-key")];
    let server = Server::start(&env, &["--concurrency", "2"], &key);
    let started = drive_sdk(&python, &env, &server, &["start", "60"], "BATCH ").await;
    let id = started
        .lines()
        .find_map(|l| l.strip_prefix("BATCH "))
        .unwrap()
        .trim()
        .to_string();
    server.kill9();
    let seen = env.server.stats().live_chats;
    assert!(seen < 60, "the kill came mid-batch ({seen} calls)");

    let server = Server::start(&env, &["--concurrency", "2"], &key);
    let done = drive_sdk(&python, &env, &server, &["finish", &id, "60"], "SDK OK").await;
    assert!(done.contains("60 lines once each"), "{done}");
    let by_prompt = env.server.stats().by_prompt;
    for i in 0..60 {
        let calls = by_prompt
            .get(&format!("sdk killed {i}"))
            .copied()
            .unwrap_or(0);
        // At most the calls in flight at the kill are sent twice.
        assert!((1..=2).contains(&calls), "line {i}: {calls} calls");
    }
    let twice = by_prompt.values().filter(|n| **n > 1).count();
    assert!(twice <= 2, "{twice} lines sent twice (2 were in flight)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_its_completion_window_expires_keeping_what_was_answered() {
    let env = Env::start(slow(300)).await;
    let server = Server::start(&env, &["--concurrency", "1", "--batch-window", "2"], &[]);
    let batch = server.create(&questions(30)).await;
    let id = batch["id"].as_str().unwrap();
    assert_eq!(
        batch["expires_at"].as_u64(),
        batch["created_at"].as_u64().map(|c| c + 2),
        "{batch}"
    );
    let ended = server
        .poll(id, |b| {
            ["completed", "failed", "cancelled", "expired"].contains(&b["status"].as_str().unwrap())
        })
        .await;
    assert_eq!(ended["status"], "expired", "{ended}");
    assert!(ended["expired_at"].is_u64(), "{ended}");
    let answered = ended["request_counts"]["completed"].as_u64().unwrap();
    assert!((1..30).contains(&answered), "{ended}");

    // The answers are kept; every other line says the window ended.
    let out = ended["output_file_id"].as_str().unwrap();
    let lines = jsonl(&server.text(&format!("/v1/files/{out}/content")).await);
    assert_eq!(lines.len(), 30);
    let ok = lines
        .iter()
        .filter(|l| l["response"]["status_code"] == 200)
        .count() as u64;
    assert_eq!(ok, answered);
    let errors = ended["error_file_id"].as_str().unwrap();
    let errors = jsonl(&server.text(&format!("/v1/files/{errors}/content")).await);
    assert_eq!(errors.len() as u64, 30 - answered);
    for line in &errors {
        assert_eq!(line["error"]["code"], "batch_expired", "{line}");
    }
    // Nothing was sent after the window (but the line running when it ended).
    assert!(env.server.stats().live_chats <= answered + 1);
    let (status, refused) = server
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
}
