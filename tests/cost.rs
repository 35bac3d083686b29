//! Cost and budget through the real binary against the loopback server: cost per line and
//! per batch from the reported usage, cache hits free, unknown models unknown, `--max-cost`
//! stopping a batch within its cap and resuming without paying a line twice, `estimate`,
//! and provider-batch answers at the batch discount.

mod support;

use std::time::Duration;

use reasonq::cost::tokens::prompt_tokens;
use reasonq::cost::{Prices, Tokens};
use reasonq::sim::{BatchConfig, BatchMode, Protocol, SimConfig};
use serde_json::{json, Value};
use support::{read_jsonl, stderr, stdout, Env};

/// Prices of the defaults, USD per million tokens.
const GPT_4O_MINI: (f64, f64) = (0.15, 0.60);

fn line(id: &str, model: &str, text: &str, max_tokens: Option<u64>) -> String {
    let mut body = json!({"model": model, "temperature": 0,
                          "messages": [{"role": "user", "content": text}]});
    if let Some(m) = max_tokens {
        body["max_tokens"] = json!(m);
    }
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

fn status(env: &Env) -> Vec<Value> {
    let out = env.command(&["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn batch_status<'a>(rows: &'a [Value], batch: &str) -> &'a Value {
    rows.iter().find(|r| r["batch"] == batch).unwrap()
}

fn details(env: &Env, batch: &str) -> Vec<Value> {
    let out = env.command(&["results", batch, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each line's worst case in picodollars, as the gateway reserves it: the prompt estimate
/// plus `output` (the lines' `max_tokens`) at `model`'s live price.
fn worst_cases(lines: &[String], model: &str, output: u64) -> Vec<u64> {
    let prices = Prices::default();
    lines
        .iter()
        .map(|l| {
            let body = &serde_json::from_str::<Value>(l).unwrap()["body"];
            let t = Tokens {
                prompt: prompt_tokens(body).0,
                cached: 0,
                output,
            };
            prices.cost(model, &t, false).unwrap().0
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// The cost of an output line's answer by its reported usage at `rates`, in dollars.
fn by_usage(line: &Value, (input, output): (f64, f64)) -> f64 {
    let usage = &line["response"]["body"]["usage"];
    let p = usage["prompt_tokens"].as_f64().unwrap();
    let c = usage["completion_tokens"].as_f64().unwrap();
    (p * input + c * output) / 1e6
}

#[tokio::test]
async fn lines_and_batches_cost_what_the_usage_says_and_cache_hits_nothing() {
    let env = Env::start(SimConfig::default()).await;
    let lines: Vec<String> = (0..4)
        .map(|i| {
            line(
                &format!("q{i}"),
                "gpt-4o-mini",
                &format!("what is {i} + {i}?"),
                None,
            )
        })
        .collect();
    env.write_input("in.jsonl", &lines);
    let out = env
        .run(&[
            "batch",
            "in.jsonl",
            "--batch",
            "b",
            "-o",
            "out.jsonl",
            "--plain",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let outputs = read_jsonl(&env.path("out.jsonl"));
    let expected: Vec<f64> = outputs.iter().map(|l| by_usage(l, GPT_4O_MINI)).collect();
    let total: f64 = expected.iter().sum();
    assert!(total > 0.0);
    assert!(
        stderr(&out).contains(&format!(
            "cost: ${total:.6} this run, ${total:.6} for the batch"
        )),
        "{}",
        stderr(&out)
    );
    let rows = details(&env, "b");
    assert_eq!(rows.len(), 4);
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(row["cost"], "live", "{row}");
        assert!(
            close(row["cost_usd"].as_f64().unwrap(), *want),
            "{row} vs {want}"
        );
    }
    let s = status(&env);
    let b = batch_status(&s, "b");
    assert!(close(b["cost_usd"].as_f64().unwrap(), total), "{b}");
    assert_eq!(
        (b["priced"].as_u64(), b["unpriced"].as_u64()),
        (Some(4), Some(0))
    );

    // The same prompts under another batch: every answer from the cache, at no cost.
    let out = env
        .run(&[
            "batch",
            "in.jsonl",
            "--batch",
            "again",
            "-o",
            "again.jsonl",
            "--plain",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cost: $0 this run, $0 for the batch"),
        "{}",
        stderr(&out)
    );
    for row in details(&env, "again") {
        assert_eq!(
            (row["cost"].as_str(), row["cost_usd"].as_f64()),
            (Some("cached"), Some(0.0)),
            "{row}"
        );
        assert_eq!(row["cached"], true);
    }
    let s = status(&env);
    let again = batch_status(&s, "again");
    assert_eq!(again["cost_usd"].as_f64(), Some(0.0), "{again}");
    assert_eq!(again["cached"].as_u64(), Some(4));
    // The table says it too.
    let out = env.command(&["status"]).output().unwrap();
    assert!(
        stdout(&out).contains(&format!("${total:.6}")),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn a_model_without_a_price_costs_unknown_never_zero_and_cannot_be_capped() {
    let env = Env::start(SimConfig {
        models: vec!["acme-1".into(), "gpt-4o-mini".into()],
        ..SimConfig::default()
    })
    .await;
    env.write_input(
        "in.jsonl",
        &[
            line("a", "acme-1", "hello there", None),
            line("b", "gpt-4o-mini", "hello there", None),
        ],
    );
    let out = env
        .run(&[
            "batch",
            "in.jsonl",
            "--batch",
            "b",
            "--max-cost",
            "5",
            "--plain",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("acme-1"), "{}", stderr(&out));
    assert_eq!(env.server.stats().live_chats, 0, "nothing was sent");

    let out = env
        .run(&["batch", "in.jsonl", "--batch", "b", "--plain"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 answers of models without a price are not counted"),
        "{}",
        stderr(&out)
    );
    let rows = details(&env, "b");
    assert_eq!(rows[0]["cost"], "unknown");
    assert!(rows[0]["cost_usd"].is_null(), "{}", rows[0]);
    assert_eq!(rows[1]["cost"], "live");
    assert!(rows[1]["cost_usd"].as_f64().unwrap() > 0.0);
    let s = status(&env);
    let b = batch_status(&s, "b");
    assert_eq!(
        (b["priced"].as_u64(), b["unpriced"].as_u64()),
        (Some(1), Some(1)),
        "{b}"
    );
    let out = env.command(&["status"]).output().unwrap();
    assert!(stdout(&out).contains("+ 1 unknown"), "{}", stdout(&out));

    // A price in the configuration makes it known.
    std::fs::write(
        env.path("reasonq.toml"),
        "[cost.prices.\"acme-1\"]\ninput = 1.0\noutput = 2.0\n",
    )
    .unwrap();
    env.write_input(
        "in2.jsonl",
        &[line("c", "acme-1", "another question", None)],
    );
    let out = env
        .run(&[
            "batch",
            "in2.jsonl",
            "--batch",
            "c",
            "--max-cost",
            "1",
            "--plain",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = details(&env, "c");
    let usage = &read_jsonl(&env.path("in2.out.jsonl"))[0]["response"]["body"]["usage"];
    let want = (usage["prompt_tokens"].as_f64().unwrap() * 1.0
        + usage["completion_tokens"].as_f64().unwrap() * 2.0)
        / 1e6;
    assert!(
        close(rows[0]["cost_usd"].as_f64().unwrap(), want),
        "{}",
        rows[0]
    );
}

#[tokio::test]
async fn max_cost_stops_within_the_cap_and_a_higher_cap_finishes_without_paying_twice() {
    let env = Env::start(SimConfig {
        models: vec!["gpt-4o".into()],
        ..SimConfig::default()
    })
    .await;
    let n = 30;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            line(
                &format!("q{i:02}"),
                "gpt-4o",
                &format!("question number {i}: say something about the number {i}"),
                Some(40),
            )
        })
        .collect();
    env.write_input("in.jsonl", &lines);
    let worst = worst_cases(&lines, "gpt-4o", 40);
    let all: u64 = worst.iter().sum();
    // A third of the worst case of the whole file.
    let cap_pico = all / 3;
    let cap = format!("{:.12}", cap_pico as f64 / 1e12);
    let out = env
        .run(&[
            "batch",
            "in.jsonl",
            "--batch",
            "b",
            "--max-cost",
            &cap,
            "-c",
            "2",
            "--plain",
        ])
        .await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("budget_reached"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("higher --max-cost"),
        "{}",
        stderr(&out)
    );

    let rows = details(&env, "b");
    let answered: Vec<&Value> = rows.iter().filter(|r| r["state"] == "completed").collect();
    assert!(
        !answered.is_empty() && answered.len() < n,
        "{}",
        answered.len()
    );
    let spent_usd = batch_status(&status(&env), "b")["cost_usd"]
        .as_f64()
        .unwrap();
    let spent_pico = (spent_usd * 1e12).round() as u64;
    // The cap holds but for answers that cost more than they reserved.
    let outputs = read_jsonl(&env.path("in.out.jsonl"));
    let slack: u64 = outputs
        .iter()
        .filter(|o| !o["response"].is_null())
        .map(|o| {
            let i: usize = o["custom_id"].as_str().unwrap()[1..].parse().unwrap();
            let usage = &o["response"]["body"]["usage"];
            let t = Tokens {
                prompt: usage["prompt_tokens"].as_u64().unwrap(),
                cached: 0,
                output: usage["completion_tokens"].as_u64().unwrap(),
            };
            let actual = Prices::default().cost("gpt-4o", &t, false).unwrap().0;
            actual.saturating_sub(worst[i])
        })
        .sum();
    assert!(
        spent_pico <= cap_pico + slack,
        "spent {spent_pico} pico, cap {cap_pico}, slack {slack}"
    );
    // It stopped because the next call did not fit, not much earlier: what is left is less
    // than that call's worst case and those of the calls in flight (two at a time) beside it.
    let largest = *worst.iter().max().unwrap();
    assert!(
        cap_pico.saturating_sub(spent_pico) < largest * 3,
        "stopped early: {spent_pico} of {cap_pico} spent, largest call {largest}"
    );
    let calls_first = env.server.stats().live_chats;
    assert_eq!(
        calls_first as usize,
        answered.len(),
        "a call per answered line"
    );

    // The same cap again: at most what the settled answers left room for is sent (their
    // reservations were above what they cost), and the batch stops again within the cap.
    let out = env
        .run(&[
            "batch",
            "in.jsonl",
            "--batch",
            "b",
            "--max-cost",
            &cap,
            "--plain",
        ])
        .await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let spent_usd = batch_status(&status(&env), "b")["cost_usd"]
        .as_f64()
        .unwrap();
    assert!((spent_usd * 1e12).round() as u64 <= cap_pico, "{spent_usd}");
    assert!(env.server.stats().live_chats < calls_first + 3);

    // A higher cap finishes the rest, each line paid once.
    let out = env
        .run(&[
            "batch",
            "in.jsonl",
            "--batch",
            "b",
            "--max-cost",
            "10",
            "--plain",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.server.stats().live_chats as usize, n);
    let rows = details(&env, "b");
    assert!(rows.iter().all(|r| r["state"] == "completed"));
    let sum: f64 = rows.iter().map(|r| r["cost_usd"].as_f64().unwrap()).sum();
    let total = batch_status(&status(&env), "b")["cost_usd"]
        .as_f64()
        .unwrap();
    assert!((sum - total).abs() < 1e-9, "lines {sum} vs batch {total}");
}

#[tokio::test]
async fn estimate_counts_tokens_answered_and_cached_lines_and_the_cost_range() {
    let env = Env::start(SimConfig {
        models: vec!["acme-1".into(), "gpt-4o-mini".into(), "grok-4".into()],
        ..SimConfig::default()
    })
    .await;
    // "user" is one o200k token and "hello world" two: 3 + 1 + 2 + 3 = 9 prompt tokens.
    env.write_input(
        "in.jsonl",
        &[
            line("a", "gpt-4o-mini", "hello world", Some(10)),
            line("b", "gpt-4o-mini", "hello world", Some(10)),
            line("c", "gpt-4o-mini", "hello world", Some(10)),
        ],
    );
    let out = env
        .command(&["estimate", "in.jsonl", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!env.db().exists(), "an estimate makes no database");
    let e: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(e["lines"], 3);
    assert_eq!(
        (
            e["answered"].as_u64(),
            e["cached"].as_u64(),
            e["to_send"].as_u64()
        ),
        (Some(0), Some(0), Some(3))
    );
    assert_eq!(e["prompt_tokens"], 27);
    assert_eq!(e["output_tokens_max"], 30);
    assert_eq!(e["by_model"]["gpt-4o-mini"]["tokens"], "exact");
    // 27 x $0.15 per million, and 30 x $0.60 more; half through the batch API.
    let (low, high) = (27.0 * 0.15 / 1e6, (27.0 * 0.15 + 30.0 * 0.60) / 1e6);
    assert!(close(e["live"]["low_usd"].as_f64().unwrap(), low), "{e}");
    assert!(close(e["live"]["high_usd"].as_f64().unwrap(), high), "{e}");
    assert!(
        close(e["provider_batch"]["low_usd"].as_f64().unwrap(), low / 2.0),
        "{e}"
    );
    assert!(
        close(
            e["provider_batch"]["high_usd"].as_f64().unwrap(),
            high / 2.0
        ),
        "{e}"
    );

    // Answered lines are not counted again; the same prompts in another file are cached.
    let out = env.run(&["batch", "in.jsonl", "--plain"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env
        .command(&["estimate", "in.jsonl", "--json"])
        .output()
        .unwrap();
    let e: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (e["answered"].as_u64(), e["to_send"].as_u64()),
        (Some(3), Some(0)),
        "{e}"
    );
    assert_eq!(e["live"]["high_usd"].as_f64(), Some(0.0));
    let calls = env.server.stats().live_chats;
    env.write_input(
        "other.jsonl",
        &[
            line("x", "gpt-4o-mini", "hello world", Some(10)),
            line("y", "grok-4", "hello world", Some(10)),
            line("z", "acme-1", "hello world", Some(10)),
        ],
    );
    let out = env
        .command(&["batch", "other.jsonl", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("3 lines, 0 answered already, 1 cached, 2 to send"),
        "{text}"
    );
    assert!(
        text.contains("grok-4: 1 lines, 12 prompt tokens (approximate)"),
        "{text}"
    );
    assert!(text.contains("not in the total: acme-1"), "{text}");
    assert_eq!(
        env.server.stats().live_chats,
        calls,
        "a dry run sends nothing"
    );
}

#[tokio::test]
async fn provider_batch_answers_cost_the_batch_rate() {
    let env = Env::start(SimConfig {
        batch: BatchConfig {
            mode: BatchMode::Auto {
                step: Duration::from_millis(50),
            },
            ..BatchConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    let lines: Vec<String> = (0..3)
        .map(|i| {
            line(
                &format!("p{i}"),
                "gpt-4o-mini",
                &format!("batch question {i}"),
                None,
            )
        })
        .collect();
    env.write_input("in.jsonl", &lines);
    let mut cmd = env.command_at(
        &env.db(),
        &env.server.base_url_for(Protocol::OpenAi),
        &[
            "batch",
            "in.jsonl",
            "--batch",
            "b",
            "--via",
            "provider",
            "--batch-api",
            "openai",
            "--plain",
        ],
    );
    cmd.envs([
        ("REASONQ_PROVIDER_BATCH_POLL_MIN_MS", "20"),
        ("REASONQ_PROVIDER_BATCH_POLL_MAX_S", "1"),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let outputs = read_jsonl(&env.path("in.out.jsonl"));
    let rows = details(&env, "b");
    let mut total = 0.0;
    for (row, out) in rows.iter().zip(&outputs) {
        assert_eq!(row["cost"], "batch", "{row}");
        assert!(!row["provider_batch"].is_null());
        let half = by_usage(out, GPT_4O_MINI) / 2.0;
        assert!(
            close(row["cost_usd"].as_f64().unwrap(), half),
            "{row} vs {half}"
        );
        total += half;
    }
    let b = batch_status(&status(&env), "b")["cost_usd"]
        .as_f64()
        .unwrap();
    assert!((b - total).abs() < 1e-12, "{b} vs {total}");
}

#[tokio::test]
async fn a_provider_batch_is_cut_to_what_fits_under_the_cap() {
    let env = Env::start(SimConfig {
        batch: BatchConfig {
            mode: BatchMode::Auto {
                step: Duration::from_millis(50),
            },
            ..BatchConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    let n = 6;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            line(
                &format!("p{i}"),
                "gpt-4o-mini",
                &format!("provider question {i}"),
                Some(20),
            )
        })
        .collect();
    env.write_input("in.jsonl", &lines);
    let worst = worst_cases(&lines, "gpt-4o-mini", 20);
    // Room for the worst cases (at the live price) of two lines and a half.
    let cap_pico = worst[0] + worst[1] + worst[2] / 2;
    let cap = format!("{:.12}", cap_pico as f64 / 1e12);
    let run = |cap: String| {
        let mut cmd = env.command_at(
            &env.db(),
            &env.server.base_url_for(Protocol::OpenAi),
            &[
                "batch",
                "in.jsonl",
                "--batch",
                "b",
                "--via",
                "provider",
                "--batch-api",
                "openai",
                "--max-cost",
                &cap,
                "--plain",
            ],
        );
        cmd.envs([
            ("REASONQ_PROVIDER_BATCH_POLL_MIN_MS", "20"),
            ("REASONQ_PROVIDER_BATCH_POLL_MAX_S", "1"),
        ]);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = run(cap).await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let rows = details(&env, "b");
    let answered = rows.iter().filter(|r| r["state"] == "completed").count();
    assert_eq!(answered, 2, "{rows:?}");
    let sent: u64 = env.server.stats().by_prompt.values().sum();
    assert_eq!(sent, 2, "only the lines that fit went to the provider");
    let spent = batch_status(&status(&env), "b")["cost_usd"]
        .as_f64()
        .unwrap();
    assert!(spent * 1e12 <= cap_pico as f64, "{spent}");

    let out = run("1".into()).await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = env.server.stats();
    assert_eq!(stats.by_prompt.len(), n);
    assert!(
        stats.by_prompt.values().all(|&c| c == 1),
        "{:?}",
        stats.by_prompt
    );
    assert!(details(&env, "b").iter().all(|r| r["cost"] == "batch"));
}
