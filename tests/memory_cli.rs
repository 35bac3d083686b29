//! Memory end to end: evaluation batches, structured replies, memory in prompts and insights,
//! the real binary against a scripted simulated API.

mod support;

use std::sync::Arc;

use reasonq::sim::{Reply, SimConfig};
use serde_json::{json, Value};
use support::{answer, read_jsonl, stderr, stdout, Env};

/// The last user message of a request.
fn question(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The system messages of every chat request the server received, per user question.
fn system_texts(env: &Env, q: &str) -> Vec<String> {
    env.server
        .stats()
        .log
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter(|b| question(b) == q)
        .flat_map(|b| {
            b["messages"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m["role"] == "system")
                .filter_map(|m| m["content"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn run_ok(env: &Env, args: &[&str]) -> String {
    let out = env.run(args).await;
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

async fn json_of(env: &Env, args: &[&str]) -> Value {
    serde_json::from_str(&run_ok(env, args).await).unwrap()
}

/// The number in "What is N plus N?".
fn n_of(q: &str) -> u64 {
    q.split_whitespace()
        .nth(2)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_batch_counts_exact_successes_and_patterns_match_a_hand_computation() {
    let env = Env::start(SimConfig::default()).await;
    // Lines 0..7 are answered right, 7..10 wrong; confidence (n + 1) / 10.
    env.server.set_responder(Arc::new(|body: &Value| {
        let n = n_of(&question(body));
        let given = if n < 7 { 2 * n } else { 2 * n + 1 };
        Reply::Text(
            json!({"answer": given.to_string(), "reasoning": [format!("{n} + {n}")],
                   "confidence": (n + 1) as f64 / 10.0})
            .to_string(),
        )
    }));
    let lines: Vec<String> = (0..10)
        .map(|n| {
            json!({"id": format!("q{n}"), "question": format!("What is {n} plus {n}?"),
                   "expected": 2 * n, "domain": "arith", "params": {"temperature": 0}})
            .to_string()
        })
        .collect();
    env.write_input("eval.jsonl", &lines);
    run_ok(
        &env,
        &[
            "batch",
            "eval.jsonl",
            "-o",
            "out.jsonl",
            "--strategy",
            "structured",
        ],
    )
    .await;

    let out = read_jsonl(&env.path("out.jsonl"));
    assert_eq!(out.len(), 10);
    // The output line carries the model's reply unchanged.
    let first: Value = serde_json::from_str(answer(&out[0])).unwrap();
    assert_eq!(first["answer"], "0");
    let instructions = system_texts(&env, "What is 3 plus 3?");
    assert_eq!(instructions.len(), 1);
    assert!(instructions[0].contains("JSON object"), "{instructions:?}");

    let patterns = json_of(&env, &["patterns", "--json"]).await;
    let stats = &patterns["statistics"][0];
    assert_eq!(
        (stats["domain"].as_str(), stats["strategy"].as_str()),
        (Some("arith"), Some("structured"))
    );
    assert_eq!(stats["uses"], 10);
    assert_eq!(stats["successes"], 7);
    assert_eq!(stats["failures"], 3);
    assert_eq!(stats["confidence_samples"], 10);
    let hand: f64 = (1..=10).map(|c| f64::from(c as f32 / 10.0)).sum::<f64>() / 10.0;
    let mean = stats["mean_confidence"].as_f64().unwrap();
    assert!((mean - hand).abs() < 1e-9, "{mean} vs {hand}");

    let exps = json_of(
        &env,
        &["experiences", "list", "--domain", "arith", "--json"],
    )
    .await;
    let exps = exps.as_array().unwrap();
    let wrong = exps
        .iter()
        .find(|e| e["data"]["question"] == "What is 8 plus 8?")
        .unwrap();
    assert_eq!(wrong["data"]["outcome"], "Failure");
    assert_eq!(wrong["data"]["answer"], "17");
    assert_eq!(wrong["data"]["reasoning"], json!(["8 + 8"]));
    assert_eq!(wrong["data"]["strategy"], "structured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_structured_replies_are_recorded_and_never_fatal() {
    let env = Env::start(SimConfig::default()).await;
    env.server.set_responder(Arc::new(|body: &Value| {
        Reply::Text(match question(body).as_str() {
            "not json" => "The answer is 4.".into(),
            "wrong shape" => r#"{"result": 4}"#.into(),
            "empty" => String::new(),
            _ => r#"{"answer": "4", "confidence": 0.9}"#.into(),
        })
    }));
    let lines: Vec<String> = ["not json", "wrong shape", "empty", "fine"]
        .iter()
        .map(|q| json!({"id": q, "question": q, "strategy": "structured"}).to_string())
        .collect();
    env.write_input("bad.jsonl", &lines);
    run_ok(&env, &["batch", "bad.jsonl", "-o", "out.jsonl"]).await;
    let out = read_jsonl(&env.path("out.jsonl"));
    assert!(
        out.iter().all(|l| l["response"]["status_code"] == 200),
        "{out:?}"
    );

    let exps = json_of(&env, &["experiences", "list", "--json"]).await;
    let by_q = |q: &str| {
        exps.as_array()
            .unwrap()
            .iter()
            .find(|e| e["data"]["question"] == q)
            .unwrap()["data"]
            .clone()
    };
    for (q, why) in [
        ("not json", "not the JSON asked for"),
        ("wrong shape", "unknown field"),
        ("empty", "empty reply"),
    ] {
        let e = by_q(q);
        assert_eq!(e["tags"], json!(["parse_error"]), "{q}");
        assert!(e["context"].as_str().unwrap().contains(why), "{q}: {e}");
        assert_eq!(e["outcome"], "Unknown");
    }
    assert_eq!(by_q("not json")["answer"], "The answer is 4.");
    let fine = by_q("fine");
    assert_eq!(
        (fine["tags"].clone(), fine["outcome"].clone()),
        (json!([]), json!("Success"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_puts_similar_successes_and_rules_in_the_prompt_and_rules_follow_outcomes() {
    let env = Env::start(SimConfig::default()).await;
    env.server.set_responder(Arc::new(|body: &Value| {
        let q = question(body);
        Reply::Text(if q.contains("SUCCESSFUL attempts") {
            "- Name only the city.\n- Check the country first.".into()
        } else if q.contains("Peru") || q.contains("Chile") {
            "Answer: Lima".into()
        } else {
            "Answer: Paris".into()
        })
    }));
    let line = |id: &str, q: &str, expected: &str, memory: Option<bool>| {
        let mut v = json!({"id": id, "question": q, "expected": expected, "domain": "geo"});
        if let Some(m) = memory {
            v["memory"] = json!(m);
        }
        v.to_string()
    };
    env.write_input(
        "learn.jsonl",
        &[
            line("a", "What is the capital of France?", "Paris", None),
            line("b", "What is the capital of Chile?", "Santiago", None),
        ],
    );
    run_ok(&env, &["batch", "learn.jsonl"]).await;
    assert!(
        system_texts(&env, "What is the capital of France?").is_empty(),
        "memory is off by default"
    );

    let rules = json_of(&env, &["insights", "geo", "--json"]).await;
    let rules = rules.as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["text"], "Name only the city.");
    assert_eq!(rules[0]["score"], 2);
    // Both experiences (ids 1 and 2, in completion order): the success first.
    let learned = json_of(&env, &["experiences", "list", "--domain", "geo", "--json"]).await;
    let id_of = |q: &str| {
        learned
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["data"]["question"] == q)
            .unwrap()["id"]
            .clone()
    };
    let france = id_of("What is the capital of France?");
    assert_eq!(
        rules[0]["evidence"],
        json!([france, id_of("What is the capital of Chile?")])
    );

    env.write_input(
        "use.jsonl",
        &[
            line("c", "Capital city of France, please?", "Paris", None),
            line("d", "Capital city of Peru?", "Cusco", None),
        ],
    );
    run_ok(&env, &["batch", "use.jsonl", "--memory"]).await;
    let sys = system_texts(&env, "Capital city of France, please?").join("\n");
    assert!(
        sys.contains("Question: What is the capital of France?\nAnswer: Paris"),
        "{sys}"
    );
    assert!(!sys.contains("Chile"), "failures are not examples: {sys}");
    assert!(
        sys.contains("- Name only the city.") && sys.contains("- Check the country first."),
        "{sys}"
    );

    let exps = json_of(&env, &["experiences", "list", "--domain", "geo", "--json"]).await;
    let c = exps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["question"] == "Capital city of France, please?")
        .unwrap();
    assert_eq!(c["data"]["used_experiences"], json!([france]));
    assert_eq!(c["data"]["tags"], json!(["memory"]));

    // A line that says no memory gets none, even with --memory.
    env.write_input(
        "off.jsonl",
        &[line("e", "Capital of France again?", "Paris", Some(false))],
    );
    run_ok(&env, &["batch", "off.jsonl", "--memory"]).await;
    assert!(system_texts(&env, "Capital of France again?").is_empty());

    // c succeeded and d failed, each with both rules in its prompt: +1 - 1.
    let patterns = json_of(&env, &["patterns", "--json"]).await;
    for rule in patterns["rules"].as_array().unwrap() {
        assert_eq!(
            (
                rule["score"].clone(),
                rule["successes"].clone(),
                rule["failures"].clone()
            ),
            (json!(2), json!(1), json!(1)),
            "{rule}"
        );
    }

    let hits = json_of(
        &env,
        &[
            "experiences",
            "search",
            "capital France",
            "--domain",
            "geo",
            "--json",
        ],
    )
    .await;
    let top: Vec<&str> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["experience"]["data"]["question"].as_str().unwrap())
        .collect();
    assert_eq!(top[0], "What is the capital of France?");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.0);
    let table = run_ok(&env, &["experiences", "search", "capital France"]).await;
    assert!(table.starts_with("score"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_evaluation_fields_are_refused_with_line_and_field() {
    let env = Env::start(SimConfig::default()).await;
    env.write_input(
        "in.jsonl",
        &[
            r#"{"id":"a","question":"q","expected":"(","match":"regex"}"#.into(),
            r#"{"id":"b","question":"q","expected":"x","match":"fuzzy"}"#.into(),
            r#"{"id":"c","question":"q","strategy":"tree"}"#.into(),
            r#"{"custom_id":"d","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"q"}]},"memory":"yes"}"#.into(),
            r#"{"id":"e","question":"q","match":"exact"}"#.into(),
        ],
    );
    let out = env.run(&["batch", "in.jsonl"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for expected in [
        "in.jsonl:1: field `expected`: not a valid regex",
        "in.jsonl:2: field `match`: unknown rule \"fuzzy\"",
        "in.jsonl:3: field `strategy`: unknown strategy \"tree\"",
        "in.jsonl:4: field `memory`: must be true or false",
        "in.jsonl:5: field `match`: given without `expected`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_without_a_strategy_get_the_bandits_pick_from_the_configured_arms() {
    let env = Env::start(SimConfig::default()).await;
    let arms = [(
        "REASONQ_MEMORY_STRATEGIES",
        r#"["chain_of_thought", "direct"]"#,
    )];
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        env.write_input(
            name,
            &[json!({"id": name, "question": format!("question {i}"), "domain": "x"}).to_string()],
        );
        let out = env.run_with_env(&["batch", name], &arms).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Untried arms first, in configured order; then (no outcome known) the first arm again.
    assert!(system_texts(&env, "question 0")[0].contains("step by step"));
    assert!(system_texts(&env, "question 1").is_empty());
    assert!(system_texts(&env, "question 2")[0].contains("step by step"));
    let patterns = json_of(&env, &["patterns", "--json"]).await;
    let uses: Vec<(String, u64)> = patterns["statistics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["strategy"].as_str().unwrap().to_string(),
                p["uses"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        uses,
        [
            ("chain_of_thought".to_string(), 2),
            ("direct".to_string(), 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackboard_lines_are_judged_on_their_final_answer() {
    let env = Env::start(SimConfig::default()).await;
    let lines = [
        json!({"id": "a", "question": "Plan a trip", "strategy": "blackboard",
               "expected": "simulated", "match": "contains", "domain": "plans"}),
        json!({"id": "b", "question": "Plan a party", "strategy": "blackboard",
               "expected": "^never$", "match": "regex", "domain": "plans"}),
    ];
    env.write_input("bb.jsonl", &lines.map(|l| l.to_string()));
    run_ok(&env, &["batch", "bb.jsonl"]).await;
    let patterns = json_of(&env, &["patterns", "--json"]).await;
    let stats = &patterns["statistics"][0];
    assert_eq!(stats["strategy"], "blackboard");
    assert_eq!(
        (stats["successes"].clone(), stats["failures"].clone()),
        (json!(1), json!(1))
    );
}
