//! The batches page (`GET /`): one row per batch with its state, progress, counts, tokens,
//! cost and times; live while lines wait or run (the script polls [`live_json`] and
//! rewrites the cells named by `data-field`).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::html::{self, esc};
use super::{Answer, Pages};
use crate::app::view::{self, BatchRow};
use crate::error::Result;
use crate::queue::JobState;

/// The JSON the page polls.
pub const LIVE: &str = "/view/api/batches";

/// The state a batch is in, as the page says it.
pub fn state(row: &BatchRow) -> &'static str {
    let c = &row.status.counts;
    if c.running > 0 || !row.status.remote.is_empty() {
        "running"
    } else if row.running() {
        "waiting"
    } else if c.discarded + c.cancelled > 0 {
        "finished with failures"
    } else {
        "finished"
    }
}

/// The cells of a row the live refresh rewrites, by name: one definition for the page and
/// the JSON.
pub fn fields(row: &BatchRow) -> Vec<(&'static str, String)> {
    let c = &row.status.counts;
    let u = &row.status.usage;
    let waiting = c.available + c.scheduled + c.retryable;
    let cost = match u.unpriced {
        0 => u.cost.to_string(),
        n => format!("{} + {n} unpriced", u.cost),
    };
    vec![
        ("state", state(row).to_string()),
        (
            "progress",
            format!("{} / {}", html::count(row.done()), html::count(row.lines)),
        ),
        ("completed", html::count(c.completed)),
        ("failed", html::count(c.discarded)),
        ("cancelled", html::count(c.cancelled)),
        ("running", html::count(c.running)),
        ("waiting", html::count(waiting)),
        (
            "tokens",
            format!(
                "{} / {}",
                html::count(u.prompt_tokens),
                html::count(u.completion_tokens)
            ),
        ),
        ("cached", html::count(u.cached)),
        ("cost", cost),
        ("started", html::when(row.started_at)),
        ("finished", html::when(row.finished_at)),
    ]
}

/// The progress bar's value and maximum.
fn progress(row: &BatchRow) -> (u64, u64) {
    (row.done().min(row.lines.max(1)), row.lines.max(1))
}

pub async fn page(pages: &Pages) -> Result<Answer> {
    let rows = view::batches(&pages.store).await?;
    let live = rows.iter().any(BatchRow::running);
    let mut body = String::from("<h1>Batches</h1>");
    if rows.is_empty() {
        body.push_str(
            "<p>No batches yet: <code>reasonq batch FILE</code> runs one, or send one to \
             <code>POST /v1/batches</code>.</p>",
        );
    } else {
        body.push_str(
            "<table class=\"batches\"><thead><tr><th>batch</th><th>state</th>\
             <th>progress</th><th>completed</th><th>failed</th>\
             <th>cancelled</th><th>running</th><th>waiting</th>\
             <th>tokens in / out</th><th>cached</th><th>cost</th>\
             <th>started (GMT)</th><th>finished (GMT)</th></tr></thead><tbody>",
        );
        for row in &rows {
            batch_row(&mut body, row);
        }
        body.push_str("</tbody></table>");
    }
    let frame = pages.frame("Batches", "batches", live.then_some(LIVE));
    Ok(super::text(
        200,
        "text/html; charset=utf-8",
        Bytes::from(html::page(&frame, &body)),
    ))
}

fn batch_row(out: &mut String, row: &BatchRow) {
    let name = &row.status.batch;
    let (value, max) = progress(row);
    let cells = fields(row);
    w!(out, "<tr data-batch=\"{}\"><td>", esc(name));
    // A queue without a file's lines (`reasonq submit`'s) has no lines page.
    match row.lines {
        0 => w!(out, "{}</td>", esc(name)),
        _ => w!(
            out,
            "<a href=\"{}\">{}</a></td>",
            esc(&html::batch_href(name)),
            esc(name)
        ),
    }
    for (field, value_text) in &cells {
        if *field == "progress" {
            // The bar and the count in one cell.
            w!(
                out,
                "<td><progress data-field=\"bar\" value=\"{value}\" max=\"{max}\"></progress> \
                 <span data-field=\"{field}\">{}</span></td>",
                esc(value_text)
            );
            continue;
        }
        w!(out, "<td data-field=\"{field}\">{}</td>", esc(value_text));
    }
    out.push_str("</tr>");
}

/// `GET /view/api/batches`: every batch's cells and progress, for the live refresh.
pub async fn live_json(pages: &Pages) -> Result<Answer> {
    let rows = view::batches(&pages.store).await?;
    let list: Vec<Value> = rows.iter().map(live_row).collect();
    Ok(super::text(
        200,
        "application/json",
        Bytes::from(Value::Array(list).to_string()),
    ))
}

/// One batch for the live refresh.
pub fn live_row(row: &BatchRow) -> Value {
    let (value, max) = progress(row);
    let fields: Map<String, Value> = fields(row)
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    let states: Map<String, Value> = JobState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(row.status.counts.get(*s))))
        .collect();
    json!({
        "batch": row.status.batch,
        "running": row.running(),
        "progress": {"value": value, "max": max},
        "fields": fields,
        "states": states,
    })
}
