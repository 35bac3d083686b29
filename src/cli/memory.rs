//! Memory subcommands: `experiences search`, the rules part of `patterns`, `insights`.

use serde_json::json;

use reasonq::app::{insights, App, Endpoint};
use reasonq::clock::now_ms;
use reasonq::config::Config;
use reasonq::memory::retrieve::{search_experiences_read, Query};
use reasonq::memory::rules::Rule;
use reasonq::store::Store;

use super::args::InsightsArgs;
use super::print::{experience_row, print_json, short, table, EXPERIENCE_COLUMNS};
use super::{fail, CliError, CliResult, Outcome};

/// `reasonq experiences search TEXT`.
pub(super) async fn search(
    store: &Store,
    text: String,
    domain: Option<String>,
    limit: usize,
    as_json: bool,
) -> CliResult {
    let now = now_ms();
    reasonq::memory::index::catch_up(store)
        .await
        .map_err(fail)?;
    let hits = store
        .read(move |txn| {
            let q = Query {
                text: &text,
                domain: domain.as_deref(),
                limit,
                successes_only: false,
                now,
            };
            search_experiences_read(txn, &q)
        })
        .await
        .map_err(fail)?;
    if as_json {
        let list: Vec<_> = hits
            .iter()
            .map(|(e, score)| json!({"score": score, "experience": e}))
            .collect();
        return print_json(&json!(list));
    }
    if hits.is_empty() {
        emit!("no matching experiences")?;
        return Ok(Outcome::Done);
    }
    let rows: Vec<Vec<String>> = hits
        .iter()
        .map(|(e, score)| {
            let mut row = vec![format!("{score:.3}")];
            row.extend(experience_row(e));
            row
        })
        .collect();
    let mut header = vec!["score"];
    header.extend(EXPERIENCE_COLUMNS);
    table(&header, &rows)?;
    Ok(Outcome::Done)
}

/// The rules table under `reasonq patterns`.
pub(super) fn print_rules(rules: &[Rule]) -> Result<(), CliError> {
    if rules.is_empty() {
        return emit!("\nno rules yet (`reasonq insights DOMAIN` learns them)");
    }
    emit!("")?;
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                r.domain.clone(),
                r.id.to_string(),
                r.score.to_string(),
                format!("{}/{}", r.successes, r.failures),
                r.evidence.len().to_string(),
                short(&r.text, 70),
            ]
        })
        .collect();
    table(
        &["domain", "rule", "score", "won/lost", "evidence", "text"],
        &rows,
    )
}

/// `reasonq insights DOMAIN`.
pub(super) async fn insights(config: Config, args: InsightsArgs, endpoint: &Endpoint) -> CliResult {
    let app = App::open(config).await.map_err(fail)?;
    let result = match app.connect(endpoint).await {
        Ok(connected) => insights::insights(&app, &connected.gateway, &args.domain)
            .await
            .map_err(fail),
        Err(e) => Err(fail(e)),
    };
    app.close().await.map_err(fail)?;
    let rules = result?;
    if args.json {
        return print_json(&json!(rules));
    }
    if rules.is_empty() {
        emit!("the model wrote no rules for {}", args.domain)?;
    }
    for r in &rules {
        emit!("rule {} (score {}): {}", r.id, r.score, r.text)?;
    }
    Ok(Outcome::Done)
}
