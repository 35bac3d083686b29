//! Replies checked against their structure, through the real binary against the loopback
//! server: a line's `response_format` (`json_schema`, `json_object`) and `--validate`
//! schemas; a reply that breaks them is retried within the line's attempts (a cached one is
//! never used), paid for and recorded, and the line fails with `invalid_structured_output`
//! naming the first violation when the attempts run out. Bad schemas are input errors.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reasonq::sim::{Reply, SimConfig};
use serde_json::{json, Value};
use support::{answer, read_jsonl, stderr, stdout, Env};

/// Backoff 0 and no client-side retries: each attempt is one call and comes at once.
const QUEUE_RETRIES: &[(&str, &str)] = &[
    ("REASONQ_RETRY_MAX_ATTEMPTS", "1"),
    ("REASONQ_QUEUE_BACKOFF_BASE_S", "0"),
    ("REASONQ_QUEUE_MAX_ATTEMPTS", "3"),
];

fn answer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"answer": {"type": "integer"}, "unit": {"enum": ["m", "s"]}},
        "required": ["answer", "unit"],
        "additionalProperties": false
    })
}

fn line(id: &str, text: &str, format: Option<Value>) -> String {
    let mut body = json!({"model": "gpt-4o-mini", "temperature": 0,
                          "messages": [{"role": "user", "content": text}]});
    if let Some(format) = format {
        body["response_format"] = format;
    }
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

fn schema_format(schema: Value) -> Option<Value> {
    Some(json!({"type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": true}}))
}

fn prompt(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Answers each prompt with the next of its scripted replies (the last one repeats), and
/// counts the calls.
#[derive(Clone, Default)]
struct Script {
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Script {
    fn install(&self, env: &Env, replies: HashMap<&'static str, Vec<&'static str>>) {
        let calls = self.calls.clone();
        env.server.set_responder(Arc::new(move |body: &Value| {
            let p = prompt(body);
            let n = {
                let mut calls = calls.lock().unwrap();
                let n = calls.entry(p.clone()).or_default();
                *n += 1;
                *n
            };
            let script = &replies[p.as_str()];
            Reply::Text(script[(n - 1).min(script.len() - 1)].to_string())
        }));
    }

    fn calls(&self, prompt: &str) -> usize {
        self.calls.lock().unwrap().get(prompt).copied().unwrap_or(0)
    }
}

/// Every job of the database (custom ids are unique across a test's batches).
fn jobs(env: &Env) -> Vec<Value> {
    let out = env.command(&["jobs", "list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn job_of<'a>(jobs: &'a [Value], id: &str) -> &'a Value {
    jobs.iter()
        .find(|j| j["custom_id"] == id)
        .unwrap_or_else(|| panic!("no job {id} in {jobs:?}"))
}

/// The status row of the batch of `stem.jsonl` (batch names add a hash of the path).
fn status_of(env: &Env, stem: &str) -> Value {
    let out = env.command(&["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let prefix = format!("{stem}-");
    rows.into_iter()
        .find(|r| r["batch"].as_str().is_some_and(|b| b.starts_with(&prefix)))
        .unwrap()
}

#[tokio::test]
async fn the_loopback_server_answers_structured_requests_with_matching_json() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input(
        "in.jsonl",
        &[
            line("s", "how far?", schema_format(answer_schema())),
            line("o", "an object", Some(json!({"type": "json_object"}))),
            line("t", "plain text", None),
        ],
    );
    // The run's strategy applies to the free-text line only.
    let out = env
        .run(&[
            "batch",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--strategy",
            "chain_of_thought",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = read_jsonl(&env.path("out.jsonl"));
    let schema = jsonschema::validator_for(&answer_schema()).unwrap();
    let s: Value = serde_json::from_str(answer(&lines[0])).unwrap();
    assert!(schema.is_valid(&s), "{s}");
    let o: Value = serde_json::from_str(answer(&lines[1])).unwrap();
    assert!(o.is_object(), "{o}");
    assert!(lines.iter().all(|l| l["error"].is_null()));
    // The structured lines were sent as written; the text line got the strategy's prompt.
    let sent: Vec<Value> = env
        .server
        .stats()
        .log
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(sent.len(), 3);
    for body in sent {
        let strategy_prompt = body["messages"][0]["role"] == "system";
        assert_eq!(strategy_prompt, prompt(&body) == "plain text", "{body}");
    }
}

#[tokio::test]
async fn a_reply_that_breaks_the_schema_is_retried_paid_for_and_never_served_from_the_cache() {
    let env = Env::start(SimConfig::default()).await;
    let script = Script::default();
    script.install(
        &env,
        HashMap::from([
            (
                "how far?",
                vec![
                    r#"{"answer": "four", "unit": "m"}"#,
                    r#"{"answer": 4, "unit": "m"}"#,
                ],
            ),
            ("how long?", vec![r#"{"answer": 2, "unit": "s"}"#]),
        ]),
    );
    env.write_input(
        "in.jsonl",
        &[
            line("far", "how far?", schema_format(answer_schema())),
            line("long", "how long?", schema_format(answer_schema())),
        ],
    );
    let out = env
        .run_with_env(&["batch", "in.jsonl", "-o", "out.jsonl"], QUEUE_RETRIES)
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = read_jsonl(&env.path("out.jsonl"));
    // Temperature 0: the bad first reply was in the memory cache, yet the retry asked again.
    assert_eq!(answer(&lines[0]), r#"{"answer": 4, "unit": "m"}"#);
    assert_eq!(answer(&lines[1]), r#"{"answer": 2, "unit": "s"}"#);
    assert_eq!(
        (script.calls("how far?"), script.calls("how long?")),
        (2, 1)
    );
    let jobs = jobs(&env);
    let far = job_of(&jobs, "far");
    assert_eq!(far["attempt"], 2);
    let error = &far["last_error"];
    assert_eq!(error["code"], "invalid_structured_output");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("line 1 (far)")
            && message.contains("/answer")
            && message.contains("integer"),
        "{message}"
    );
    // Both calls of `far` were paid for: the batch counts the rejected reply's tokens too.
    let answered: u64 = lines
        .iter()
        .map(|l| {
            l["response"]["body"]["usage"]["completion_tokens"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let status = status_of(&env, "in");
    assert!(
        status["completion_tokens"].as_u64().unwrap() > answered,
        "{status} vs {answered}"
    );

    // The good reply replaced the bad one in the disk cache: a new batch asks nothing.
    env.write_input(
        "again.jsonl",
        &[line("far2", "how far?", schema_format(answer_schema()))],
    );
    let out = env
        .run_with_env(
            &["batch", "again.jsonl", "-o", "again.out.jsonl"],
            QUEUE_RETRIES,
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let again = read_jsonl(&env.path("again.out.jsonl"));
    assert_eq!(answer(&again[0]), r#"{"answer": 4, "unit": "m"}"#);
    assert_eq!(script.calls("how far?"), 2);
}

#[tokio::test]
async fn a_line_whose_replies_never_match_fails_naming_the_first_violation() {
    let env = Env::start(SimConfig::default()).await;
    let script = Script::default();
    script.install(
        &env,
        HashMap::from([
            ("json please", vec!["Sure! Here it is: {\"answer\": 1}"]),
            ("object please", vec!["[1, 2, 3]"]),
            ("fine", vec![r#"{"answer": 1, "unit": "s"}"#]),
        ]),
    );
    env.write_input(
        "in.jsonl",
        &[
            line("a", "json please", schema_format(answer_schema())),
            line("b", "object please", Some(json!({"type": "json_object"}))),
            line("c", "fine", schema_format(answer_schema())),
        ],
    );
    let out = env
        .run_with_env(&["batch", "in.jsonl", "-o", "out.jsonl"], QUEUE_RETRIES)
        .await;
    // Failed lines are results: the batch itself is done.
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        (script.calls("json please"), script.calls("object please")),
        (3, 3)
    );
    let errors = read_jsonl(&env.path("in.errors.jsonl"));
    let by_id = |id: &str| errors.iter().find(|l| l["custom_id"] == id).unwrap();
    for (id, needle) in [("a", "the reply is not JSON"), ("b", "not a JSON object")] {
        let line = by_id(id);
        assert!(line["response"].is_null(), "{line}");
        assert_eq!(line["error"]["code"], "invalid_structured_output", "{line}");
        let message = line["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
    assert_eq!(errors.len(), 2);
    let outputs = read_jsonl(&env.path("out.jsonl"));
    let c = outputs.iter().find(|l| l["custom_id"] == "c").unwrap();
    assert_eq!(answer(c), r#"{"answer": 1, "unit": "s"}"#);
}

#[tokio::test]
async fn validate_applies_one_schema_to_every_chat_line_of_the_file() {
    let env = Env::start(SimConfig::default()).await;
    let script = Script::default();
    script.install(
        &env,
        HashMap::from([
            ("one", vec![r#"{"answer": 1, "unit": "m"}"#]),
            ("two", vec![r#"{"answer": 2}"#]),
        ]),
    );
    std::fs::write(env.path("schema.json"), answer_schema().to_string()).unwrap();
    env.write_input(
        "in.jsonl",
        &[line("1", "one", None), line("2", "two", None)],
    );
    let out = env
        .run_with_env(
            &[
                "batch",
                "in.jsonl",
                "-o",
                "out.jsonl",
                "--validate",
                "schema.json",
            ],
            QUEUE_RETRIES,
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((script.calls("one"), script.calls("two")), (1, 3));
    let errors = read_jsonl(&env.path("in.errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "2");
    let message = errors[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("unit"), "{message}");

    // The same file without the flag is another job for line 2, answered; line 1 comes
    // from the disk cache, line 2 is asked again (a rejected reply is not kept on disk).
    let out = env
        .run_with_env(&["batch", "in.jsonl", "-o", "plain.jsonl"], QUEUE_RETRIES)
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = read_jsonl(&env.path("plain.jsonl"));
    assert!(plain.iter().all(|l| l["error"].is_null()), "{plain:?}");
    assert_eq!((script.calls("one"), script.calls("two")), (1, 4));
}

#[tokio::test]
async fn unusable_schemas_and_conflicting_options_are_refused_before_anything_is_sent() {
    let env = Env::start(SimConfig::default()).await;
    let refused = |args: &[&str]| {
        let out = env.command(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        stderr(&out)
    };
    // A line's own schema that is not a schema: file, line and field.
    env.write_input(
        "bad.jsonl",
        &[
            line("ok", "fine", None),
            line("bad", "x", schema_format(json!({"type": 12}))),
        ],
    );
    let e = refused(&["batch", "bad.jsonl"]);
    assert!(
        e.contains("bad.jsonl:2: field `body.response_format.json_schema.schema`: not a usable JSON Schema"),
        "{e}"
    );
    env.write_input("odd.jsonl", &[line("x", "x", Some(json!({"type": "xml"})))]);
    let e = refused(&["batch", "odd.jsonl"]);
    assert!(
        e.contains("odd.jsonl:1: field `body.response_format.type`"),
        "{e}"
    );

    // A line asking for structure with a strategy that has a reply format of its own.
    let mut cot: Value =
        serde_json::from_str(&line("c", "x", schema_format(answer_schema()))).unwrap();
    cot["strategy"] = json!("chain_of_thought");
    env.write_input("cot.jsonl", &[cot.to_string()]);
    let e = refused(&["batch", "cot.jsonl"]);
    assert!(e.contains("cot.jsonl:1: field `strategy`"), "{e}");

    // `--validate` with a file that is not JSON, or not a schema.
    env.write_input("in.jsonl", &[line("1", "one", None)]);
    std::fs::write(env.path("broken.json"), "{not json").unwrap();
    let e = refused(&["batch", "in.jsonl", "--validate", "broken.json"]);
    assert!(e.contains("--validate broken.json: not JSON"), "{e}");
    std::fs::write(
        env.path("wrong.json"),
        r#"{"type": "integer", "minimum": "zero"}"#,
    )
    .unwrap();
    let e = refused(&["batch", "in.jsonl", "--validate", "wrong.json"]);
    assert!(
        e.contains("--validate wrong.json: not a usable JSON Schema"),
        "{e}"
    );
    let e = refused(&["batch", "in.jsonl", "--validate", "missing.json"]);
    assert!(e.contains("--validate missing.json: cannot read it"), "{e}");

    // `--validate` with lines it cannot apply to: another endpoint, a strategy, --strategy.
    std::fs::write(env.path("schema.json"), answer_schema().to_string()).unwrap();
    let embedding = json!({"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": "text-embedding-3-small", "input": "x"}});
    env.write_input(
        "mixed.jsonl",
        &[line("1", "one", None), embedding.to_string()],
    );
    let e = refused(&["batch", "mixed.jsonl", "--validate", "schema.json"]);
    assert!(
        e.contains("mixed.jsonl:2: field `url`") && e.contains("/v1/embeddings"),
        "{e}"
    );
    let mut named: Value = serde_json::from_str(&line("s", "x", None)).unwrap();
    named["strategy"] = json!("structured");
    env.write_input("named.jsonl", &[line("1", "one", None), named.to_string()]);
    let e = refused(&["batch", "named.jsonl", "--validate", "schema.json"]);
    assert!(e.contains("named.jsonl:2: field `strategy`"), "{e}");
    let e = refused(&[
        "batch",
        "in.jsonl",
        "--validate",
        "schema.json",
        "--strategy",
        "chain_of_thought",
    ]);
    assert!(e.contains("--strategy \"chain_of_thought\""), "{e}");

    // Nothing was sent, and no batch exists.
    assert_eq!(env.server.stats().requests, 0);
    let out = env.command(&["status", "--json"]).output().unwrap();
    let rows: Value = serde_json::from_str(&stdout(&out)).unwrap_or(json!([]));
    assert_eq!(rows, json!([]), "{}", stderr(&out));
}
