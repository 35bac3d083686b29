//! `reasonq estimate IN` (and `batch --dry-run`): what the file would cost; nothing is sent.

use serde_json::json;

use reasonq::app::estimate::{self, Estimate, EstimateOptions, Range};
use reasonq::app::{App, Endpoint, SIMULATED};
use reasonq::config::Config;

use super::args::EstimateArgs;
use super::print::print_json;
use super::{fail, CliResult, Outcome};

pub async fn run(config: Config, args: EstimateArgs, endpoint: &Endpoint) -> CliResult {
    let opts = EstimateOptions {
        input: args.input,
        batch: args.batch,
        strategy: args.strategy,
        endpoint: if endpoint.simulate {
            SIMULATED.to_string()
        } else {
            config.base_url.trim_end_matches('/').to_string()
        },
    };
    // Lines answered before are in the database, if there is one; none is made here.
    let app = if config.db.exists() {
        Some(App::open(config.clone()).await.map_err(fail)?)
    } else {
        None
    };
    let est = estimate::estimate(app.as_ref(), &config, &opts).await;
    if let Some(app) = &app {
        app.close().await.map_err(fail)?;
    }
    let est = est.map_err(fail)?;
    if args.json {
        return print_json(&as_json(&est));
    }
    print_text(&est)
}

fn range(r: Option<Range>) -> serde_json::Value {
    match r {
        Some(r) => json!({"low_usd": r.low.usd(), "high_usd": r.high.usd()}),
        None => serde_json::Value::Null,
    }
}

fn as_json(e: &Estimate) -> serde_json::Value {
    let models: serde_json::Map<String, serde_json::Value> = e
        .by_model
        .iter()
        .map(|(model, m)| {
            (
                model.clone(),
                json!({"lines": m.lines, "prompt_tokens": m.prompt_tokens,
                       "output_tokens_max": m.output_tokens_max, "tokens": m.tokens,
                       "live": range(m.live), "provider_batch": range(m.provider_batch)}),
            )
        })
        .collect();
    json!({"batch": e.batch, "lines": e.lines, "answered": e.answered, "cached": e.cached,
           "to_send": e.to_send, "multi_call": e.multi_call, "prompt_tokens": e.prompt_tokens,
           "output_tokens_max": e.output_tokens_max, "by_model": models,
           "live": range(Some(e.live)), "provider_batch": range(Some(e.provider_batch)),
           "unpriced": e.unpriced})
}

fn print_text(e: &Estimate) -> CliResult {
    emit!(
        "{}: {} lines, {} answered already, {} cached, {} to send",
        e.batch,
        e.lines,
        e.answered,
        e.cached,
        e.to_send
    )?;
    for (model, m) in &e.by_model {
        let cost = match (m.live, m.provider_batch) {
            (Some(l), Some(b)) => format!(
                "live {}-{}, provider batch {}-{}",
                l.low, l.high, b.low, b.high
            ),
            _ => "cost unknown: no price for this model".to_string(),
        };
        emit!(
            "  {model}: {} lines, {} prompt tokens ({}), up to {} output tokens; {cost}",
            m.lines,
            m.prompt_tokens,
            m.tokens,
            m.output_tokens_max
        )?;
    }
    emit!(
        "total: {} prompt tokens, up to {} output tokens; live {}-{}, provider batch {}-{}",
        e.prompt_tokens,
        e.output_tokens_max,
        e.live.low,
        e.live.high,
        e.provider_batch.low,
        e.provider_batch.high
    )?;
    if !e.unpriced.is_empty() {
        emit!(
            "not in the total: {} (no price; add them under [cost.prices], docs/cost.md)",
            e.unpriced.join(", ")
        )?;
    }
    if e.multi_call > 0 {
        emit!(
            "{} lines use a strategy of several calls (blackboard): each counts as one call here",
            e.multi_call
        )?;
    }
    Ok(Outcome::Done)
}
