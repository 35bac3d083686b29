//! Every endpoint an OpenAI batch file may hold (chat completions, responses, embeddings,
//! completions, moderations), through the binary against the loopback server: one file
//! mixing them runs with the same queue, retries and cache, each answer in its provider's
//! documented shape (field by field here, and by the official SDK's types), and the chat
//! options refused on the other endpoints.

mod support;

use std::path::{Path, PathBuf};

use reasonq::sim::{Fault, SimConfig};
use serde_json::{json, Value};
use support::{read_jsonl, stderr, stdout, Env};

/// One line of each endpoint, plus a second embedding with several inputs.
fn mixed_lines() -> Vec<String> {
    let line = |id: &str, url: &str, body: Value| {
        json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string()
    };
    vec![
        line(
            "chat",
            "/v1/chat/completions",
            json!({"model": "grok-4", "temperature": 0, "messages": [{"role": "user", "content": "chat prompt"}]}),
        ),
        line(
            "resp",
            "/v1/responses",
            json!({"model": "grok-4", "temperature": 0, "input": "responses prompt"}),
        ),
        line(
            "emb",
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "embedding prompt"}),
        ),
        line(
            "emb-many",
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["first text", "second text"], "dimensions": 4}),
        ),
        line(
            "cmpl",
            "/v1/completions",
            json!({"model": "grok-4", "temperature": 0, "prompt": "completions prompt"}),
        ),
        line(
            "mod",
            "/v1/moderations",
            json!({"input": "a violent moderation prompt"}),
        ),
    ]
}

fn output_of(env: &Env, input: &Path) -> Vec<Value> {
    let out = input.with_extension("out.jsonl");
    assert!(out.exists(), "no output at {}", out.display());
    let _ = env;
    read_jsonl(&out)
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

/// The answer's body of the line `id`.
fn body<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let line = lines.iter().find(|l| l["custom_id"] == id).unwrap();
    assert_eq!(line["response"]["status_code"], 200, "{line}");
    assert!(line["error"].is_null(), "{line}");
    &line["response"]["body"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_mixing_every_endpoint_runs_and_each_answer_has_its_documented_shape() {
    let env = Env::start(SimConfig::default()).await;
    let input = env.write_input("mixed.jsonl", &mixed_lines());
    let out = env.run(&["batch", input.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = output_of(&env, &input);
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["chat", "resp", "emb", "emb-many", "cmpl", "mod"],
        "input order"
    );
    for line in &lines {
        assert_eq!(
            keys(line),
            ["custom_id", "error", "id", "response"],
            "{line}"
        );
        assert_eq!(
            keys(&line["response"]),
            ["body", "request_id", "status_code"]
        );
    }

    // Field by field, as OpenAI's API reference gives each object.
    let chat = body(&lines, "chat");
    assert_eq!(chat["object"], "chat.completion");
    let resp = body(&lines, "resp");
    assert_eq!(resp["object"], "response");
    assert_eq!(resp["status"], "completed");
    assert_eq!(resp["output"][0]["type"], "message");
    assert_eq!(resp["output"][0]["role"], "assistant");
    assert_eq!(resp["output"][0]["content"][0]["type"], "output_text");
    assert!(resp["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("responses prompt"));
    for k in ["input_tokens", "output_tokens", "total_tokens"] {
        assert!(resp["usage"][k].is_u64(), "usage.{k}: {resp}");
    }
    let emb = body(&lines, "emb");
    assert_eq!(keys(emb), ["data", "model", "object", "usage"]);
    assert_eq!(emb["object"], "list");
    assert_eq!(emb["data"][0]["object"], "embedding");
    assert_eq!(emb["data"][0]["index"], 0);
    assert!(emb["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .all(Value::is_f64));
    assert_eq!(keys(&emb["usage"]), ["prompt_tokens", "total_tokens"]);
    let many = body(&lines, "emb-many");
    let data = many["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[1]["embedding"].as_array().unwrap().len(), 4);
    let cmpl = body(&lines, "cmpl");
    assert_eq!(cmpl["object"], "text_completion");
    assert_eq!(
        keys(&cmpl["choices"][0]),
        ["finish_reason", "index", "logprobs", "text"]
    );
    let moderation = body(&lines, "mod");
    assert_eq!(keys(moderation), ["id", "model", "results"]);
    let result = &moderation["results"][0];
    assert_eq!(
        keys(result),
        [
            "categories",
            "category_applied_input_types",
            "category_scores",
            "flagged"
        ]
    );
    assert_eq!(result["flagged"], true);
    assert_eq!(result["categories"]["violence"], true);
    // No model named: the provider's own, not the configured chat model.
    assert_eq!(moderation["model"], "omni-moderation-latest");
    let sent = env.server.stats();
    assert_eq!((sent.live_chats, sent.live_other), (1, 5));

    // Tokens of every endpoint are counted (embeddings: their input).
    let status = stdout(&env.run(&["status", "--json"]).await);
    let status: Value = serde_json::from_str(&status).unwrap();
    let row = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["batch"].as_str().unwrap().starts_with("mixed"))
        .unwrap();
    let prompt: u64 = lines
        .iter()
        .filter_map(|l| {
            let u = &l["response"]["body"]["usage"];
            u["prompt_tokens"].as_u64().or(u["input_tokens"].as_u64())
        })
        .sum();
    assert_eq!(row["prompt_tokens"].as_u64(), Some(prompt), "{row}");

    // Embeddings cost their input tokens ($0.02 per million for text-embedding-3-small);
    // a moderation model has no price: unknown, never zero.
    let batch = row["batch"].as_str().unwrap();
    let out = env.run(&["results", batch, "--json"]).await;
    let details: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let detail = |id: &str| details.iter().find(|d| d["custom_id"] == id).unwrap();
    let emb_tokens = body(&lines, "emb")["usage"]["prompt_tokens"]
        .as_f64()
        .unwrap();
    let emb_cost = detail("emb")["cost_usd"].as_f64().unwrap();
    assert!(
        (emb_cost - emb_tokens * 0.02 / 1e6).abs() < 1e-15,
        "{}",
        detail("emb")
    );
    assert_eq!(detail("emb")["cost"], "live");
    assert!(detail("mod")["cost_usd"].is_null(), "{}", detail("mod"));
    assert_eq!(detail("mod")["cost"], "unknown");

    // The same lines as a new batch come from the cache (embeddings and moderations do not
    // sample, so they are cached without a temperature).
    let again = env.write_input("again.jsonl", &mixed_lines());
    let out = env.run(&["batch", again.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = env.server.stats();
    assert_eq!(
        (sent.live_chats, sent.live_other),
        (1, 5),
        "all six from the cache"
    );
    let replay = output_of(&env, &again);
    for (a, b) in lines.iter().zip(&replay) {
        assert_eq!(a["response"]["body"], b["response"]["body"]);
    }

    // The official SDK's types accept every answer.
    if let Some(python) = sdk_python() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/check_shapes.py");
        let out = std::process::Command::new(python)
            .arg(script)
            .arg(&input)
            .arg(input.with_extension("out.jsonl"))
            .output()
            .unwrap();
        assert!(
            out.status.success() && stdout(&out).contains("SHAPES OK 6"),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but .venv-sdk is missing: .ci/run makes it"
        );
        eprintln!("\n!!! SKIPPED the SDK shape check: no .venv-sdk\n");
    }
}

/// The Python of the venv `.ci/run` makes (or `REASONQ_SDK_PYTHON`).
fn sdk_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REASONQ_SDK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-sdk/bin/python");
    venv.is_file().then_some(venv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_endpoints_are_retried_and_their_failures_land_in_the_errors_file() {
    let env = Env::start(SimConfig::default()).await;
    // The first request is rate limited (retried), the second refused for good.
    env.server.push_faults([
        Fault::RateLimited {
            retry_after_secs: None,
            retry_after_ms: Some(50),
        },
        Fault::status(400),
    ]);
    let line = |id: &str, text: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "text-embedding-3-small", "input": text}})
        .to_string()
    };
    let input = env.write_input("emb.jsonl", &[line("a", "first"), line("b", "second")]);
    let out = env
        .run(&["batch", input.to_str().unwrap(), "--concurrency", "1"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = output_of(&env, &input);
    let ok = lines
        .iter()
        .filter(|l| l["response"]["status_code"] == 200)
        .count();
    assert_eq!(ok, 1, "{lines:?}");
    let errors = read_jsonl(&input.with_extension("errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["response"]["status_code"], 400, "{}", errors[0]);
    assert_eq!(
        env.server.stats().live_other,
        3,
        "one retry, one refusal, one answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_options_on_other_endpoints_and_unknown_urls_are_refused_by_name() {
    let env = Env::start(SimConfig::default()).await;
    let cases = [
        (
            json!({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                   "body": {"input": "x"}, "strategy": "cot"}),
            "field `strategy`: applies to /v1/chat/completions lines only",
        ),
        (
            json!({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "m", "input": "x"}, "memory": true}),
            "field `memory`: applies to /v1/chat/completions lines only",
        ),
        (
            json!({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "m"}}),
            "field `body.input`: missing",
        ),
        (
            json!({"custom_id": "a", "method": "POST", "url": "/v1/completions",
                   "body": {"model": "m", "prompt": 3}}),
            "field `body.prompt`: must be a string or an array",
        ),
        (
            json!({"custom_id": "a", "method": "POST", "url": "/v1/responses",
                   "body": {"model": "m", "input": "x", "stream": true}}),
            "field `body.stream`: streaming is not supported",
        ),
        (
            json!({"custom_id": "a", "method": "POST", "url": "/v1/images/generations",
                   "body": {"prompt": "x"}}),
            "unsupported endpoint \"/v1/images/generations\"; supported: /v1/chat/completions, /v1/responses, /v1/embeddings, /v1/completions, /v1/moderations",
        ),
    ];
    for (i, (line, expected)) in cases.iter().enumerate() {
        let input = env.write_input(&format!("bad{i}.jsonl"), &[line.to_string()]);
        let out = env.run(&["batch", input.to_str().unwrap()]).await;
        assert!(!out.status.success(), "{line}");
        let err = stderr(&out);
        assert!(err.contains(&format!("bad{i}.jsonl:1: ")), "{err}");
        assert!(err.contains(expected), "{line}\n{err}");
    }
    assert!(!env.db().exists(), "a bad file opens no database");
    assert_eq!(env.server.stats().requests, 0);
}
