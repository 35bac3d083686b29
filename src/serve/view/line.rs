//! A line's page (`GET /view/batches/{batch}/lines/{n}`): its request messages, the raw
//! response, its attempts and error, where the answer came from, the judged outcome, and
//! for blackboard lines the session tree.

use bytes::Bytes;
use serde_json::Value;

use super::html::{self, esc};
use super::{Answer, Pages};
use crate::app::view::{self, answer_text, cost_of, LineDetail};
use crate::chat::blackboard::{Board, Entry};
use crate::clock::now_ms;
use crate::error::Result;
use crate::memory::experience::Outcome;
use crate::queue::JobState;

pub async fn page(pages: &Pages, batch: &str, n: u64) -> Result<Answer> {
    let Some(d) = view::line(&pages.store, batch, n).await? else {
        return Ok(super::not_found(
            pages,
            &format!("batch {batch:?} has no line {}", n + 1),
        ));
    };
    let mut body = String::new();
    let href = html::batch_href(batch);
    let custom_id = d.chat.as_ref().map_or("?", |c| c.custom_id.as_str());
    w!(
        body,
        "<h1><a href=\"/\">Batches</a> / <a href=\"{}\">{}</a> / line {} <code>{}</code></h1>",
        esc(&href),
        esc(batch),
        n + 1,
        esc(custom_id)
    );
    nav(&mut body, &href, &d);
    facts(&mut body, &d);
    request(&mut body, &d);
    response(&mut body, &d);
    attempts(&mut body, &d);
    outcome(&mut body, &d);
    if let Some(board) = &d.board {
        session(&mut body, board);
    }
    let title = format!("{batch} line {}", n + 1);
    let frame = pages.frame(&title, "batches", None);
    Ok(super::text(
        200,
        "text/html; charset=utf-8",
        Bytes::from(html::page(&frame, &body)),
    ))
}

fn nav(out: &mut String, href: &str, d: &LineDetail) {
    out.push_str("<nav class=\"pager\">");
    if d.n > 0 {
        w!(
            out,
            "<a rel=\"prev\" href=\"{}/lines/{}\">← line {}</a> ",
            esc(href),
            d.n - 1,
            d.n
        );
    }
    w!(
        out,
        "<a href=\"{}?from={}\">in the list</a> ",
        esc(href),
        d.n
    );
    if d.n + 1 < d.size {
        w!(
            out,
            "<a rel=\"next\" href=\"{}/lines/{}\">line {} →</a>",
            esc(href),
            d.n + 1,
            d.n + 2
        );
    }
    out.push_str("</nav>");
}

/// Where the answer came from.
fn source(d: &LineDetail) -> String {
    match &d.response {
        None => "-".into(),
        // Its tier is the "cache" row.
        Some(r) if r.cached => "the prompt cache (no call was made)".into(),
        Some(r) => match &r.provider_batch {
            Some(id) => format!("the provider's batch API (batch {id})"),
            None => "the upstream API (a live call)".into(),
        },
    }
}

fn facts(out: &mut String, d: &LineDetail) {
    let job = &d.job;
    let mut rows: Vec<(&str, String)> = vec![
        ("state", job.state.as_str().to_string()),
        ("job", job.id.to_string()),
        ("enqueued (GMT)", html::when(Some(job.created_at))),
        ("finished (GMT)", html::when(job.finished_at)),
        ("answer from", source(d)),
    ];
    if let Some(r) = &d.response {
        let tier = match (r.cache_tier, r.cached) {
            (Some(tier), _) => tier.as_str(),
            // A blackboard session's steps, or an answer recorded before tiers were kept.
            (None, true) => "cached (no single tier recorded)",
            (None, false) => "fresh call",
        };
        rows.push(("cache", tier.to_string()));
    }
    if let Some(chat) = &d.chat {
        rows.push(("endpoint", chat.api.url().to_string()));
        rows.push(("domain", chat.domain.clone()));
        rows.push((
            "strategy",
            chat.strategy
                .clone()
                .unwrap_or_else(|| "(the bandit's choice)".into()),
        ));
        rows.push(("input line", chat.line.to_string()));
    }
    if let Some(r) = &d.response {
        let (p, c) = r.usage();
        rows.push(("HTTP status", r.status_code.to_string()));
        rows.push(("request id", r.request_id.clone().unwrap_or_default()));
        rows.push(("latency", html::millis(Some(r.latency_ms))));
        rows.push(("tokens", format!("{p} prompt, {c} completion")));
        rows.push(("cost", html::money(cost_of(r))));
    }
    out.push_str("<table class=\"facts\"><tbody>");
    for (k, v) in rows {
        w!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    out.push_str("</tbody></table>");
}

/// The request: its messages one by one when it has them, else the body as JSON.
fn request(out: &mut String, d: &LineDetail) {
    out.push_str("<h2>Request</h2>");
    let Some(chat) = &d.chat else {
        out.push_str("<p class=\"error\">This build cannot read the line's record.</p>");
        return;
    };
    let body: Value = serde_json::from_str(&chat.body).unwrap_or(Value::Null);
    if let Some(messages) = body["messages"].as_array() {
        out.push_str("<ol class=\"messages\">");
        for m in messages {
            let role = m["role"].as_str().unwrap_or("?");
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                other => pretty(other),
            };
            w!(
                out,
                "<li class=\"message {0}\"><div class=\"role\">{0}</div><pre>{1}</pre></li>",
                esc(role),
                esc(&content)
            );
        }
        out.push_str("</ol>");
    }
    w!(
        out,
        "<details><summary>Request body (JSON)</summary><pre class=\"json\">{}</pre></details>",
        esc(&pretty_text(&chat.body))
    );
}

fn response(out: &mut String, d: &LineDetail) {
    out.push_str("<h2>Response</h2>");
    let Some(r) = &d.response else {
        out.push_str("<p class=\"empty\">No answer (yet).</p>");
        return;
    };
    let answer = answer_text(&r.body);
    if !answer.is_empty() {
        w!(out, "<pre class=\"answer\">{}</pre>", esc(&answer));
    }
    w!(
        out,
        "<details open><summary>Raw response (JSON)</summary><pre class=\"json\">{}</pre>\
         </details>",
        esc(&pretty_text(&r.body))
    );
}

fn attempts(out: &mut String, d: &LineDetail) {
    let job = &d.job;
    out.push_str("<h2>Attempts</h2>");
    w!(
        out,
        "<p>{} of at most {} attempts started{}.",
        job.attempt,
        job.max_attempts,
        match job.interruptions {
            0 => String::new(),
            n => format!("; interrupted {n} times by a process that stopped"),
        }
    );
    if job.state.is_waiting() {
        let now = now_ms();
        let wait = job.run_at.saturating_sub(now);
        w!(
            out,
            " Waiting: the next attempt is due at {} GMT{}.",
            html::when(Some(job.run_at)),
            if wait > 0 {
                format!(" (in {})", html::millis(Some(wait)))
            } else {
                " (now)".into()
            }
        );
    }
    if job.state == JobState::Running {
        w!(
            out,
            " Running now (lease of {}, until {} GMT).",
            esc(job.lease_owner.as_deref().unwrap_or("?")),
            html::when(job.lease_expires_at)
        );
    }
    out.push_str("</p>");
    tries(out, d);
    let Some(e) = &d.error else {
        return;
    };
    let heading = match job.state {
        JobState::Discarded => "Failed",
        JobState::Cancelled => "Cancelled",
        _ => "Last attempt's error",
    };
    w!(
        out,
        "<table class=\"facts error\"><tbody><tr><th>{}</th><td><code>{}</code></td></tr>\
         <tr><th>message</th><td><pre>{}</pre></td></tr>",
        heading,
        esc(&e.code),
        esc(&e.message)
    );
    if let Some(status) = e.status_code {
        w!(out, "<tr><th>HTTP status</th><td>{status}</td></tr>");
    }
    if let Some(id) = &e.request_id {
        w!(out, "<tr><th>request id</th><td>{}</td></tr>", esc(id));
    }
    if let Some(body) = &e.body {
        w!(
            out,
            "<tr><th>provider's body</th><td><pre class=\"json\">{}</pre></td></tr>",
            esc(&pretty_text(body))
        );
    }
    out.push_str("</tbody></table>");
}

/// Every failed try the queue kept (the most recent ones), with its error and wait.
fn tries(out: &mut String, d: &LineDetail) {
    if d.attempts.is_empty() {
        return;
    }
    out.push_str(
        "<table class=\"attempts\"><thead><tr><th>try</th><th>ended (GMT)</th><th>code</th>\
         <th>HTTP status</th><th>message</th><th>wait before the next</th></tr></thead><tbody>",
    );
    for a in &d.attempts {
        let status = a.status_code.map(|s| s.to_string()).unwrap_or_default();
        let wait = match a.wait_ms {
            Some(ms) => html::millis(Some(ms)),
            None => "none (the job ended)".into(),
        };
        w!(
            out,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.n,
            esc(&html::when(Some(a.at_ms))),
            esc(&a.code),
            esc(&status),
            esc(&a.message),
            esc(&wait)
        );
    }
    w!(
        out,
        "</tbody></table><p>The queue keeps a line's last {} failed tries; \
         retries inside one attempt (429, 5xx) are counted in <code>/metrics</code>.</p>",
        crate::queue::KEPT_ATTEMPTS
    );
}

fn outcome(out: &mut String, d: &LineDetail) {
    out.push_str("<h2>Judged outcome</h2>");
    if let Some(expected) = d.chat.as_ref().and_then(|c| c.expected.as_ref()) {
        w!(
            out,
            "<p>Expected answer: <code>{}</code> ({:?} match).</p>",
            esc(&expected.answer),
            expected.rule
        );
    }
    let Some(e) = &d.experience else {
        out.push_str(
            "<p class=\"empty\">No experience recorded for this line (not answered, another \
             endpoint, or removed by retention).</p>",
        );
        return;
    };
    let verdict = match e.data.outcome {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Unknown => "not judged (no expected answer)",
    };
    w!(
        out,
        "<table class=\"facts\"><tbody><tr><th>outcome</th><td class=\"{}\">{}</td></tr>\
         <tr><th>experience</th><td>{}</td></tr><tr><th>strategy</th><td>{}</td></tr>\
         <tr><th>confidence</th><td>{}</td></tr><tr><th>memory used</th><td>{}</td></tr>",
        match e.data.outcome {
            Outcome::Success => "good",
            Outcome::Failure => "bad",
            Outcome::Unknown => "",
        },
        verdict,
        e.id,
        esc(&e.data.strategy),
        e.data
            .confidence
            .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
        match e.data.used_experiences.len() {
            0 => "none".to_string(),
            n => format!("{n} experiences"),
        }
    );
    if !e.data.reasoning.is_empty() {
        out.push_str("<tr><th>reasoning</th><td><ol>");
        for step in &e.data.reasoning {
            w!(out, "<li>{}</li>", esc(step));
        }
        out.push_str("</ol></td></tr>");
    }
    out.push_str("</tbody></table>");
}

/// The blackboard session as a tree: entries under their parents.
fn session(out: &mut String, board: &Board) {
    let s = &board.session;
    w!(
        out,
        "<h2>Blackboard session <code>{}</code></h2><p>{} steps ({} from the cache), {} prompt \
         and {} completion tokens, {}.</p>",
        esc(&s.id),
        s.steps_done,
        s.cached_steps,
        s.prompt_tokens,
        s.completion_tokens,
        match s.final_answer {
            Some(_) => "answered",
            None => "not finished",
        }
    );
    out.push_str("<ul class=\"tree\">");
    for root in board.entries.iter().filter(|e| e.parent.is_none()) {
        entry(out, board, root, 0);
    }
    out.push_str("</ul>");
}

/// One entry and its children (depth-bounded: a board is a few levels deep).
fn entry(out: &mut String, board: &Board, e: &Entry, depth: usize) {
    let verdict = match e.accepted {
        Some(true) => " accepted",
        Some(false) => " rejected",
        None => "",
    };
    w!(
        out,
        "<li><span class=\"kind\">{}</span> <span class=\"source\">{} · step {}{}</span>\
         <pre>{}</pre>",
        e.kind.as_str(),
        esc(&e.source),
        e.step,
        verdict,
        esc(&e.text)
    );
    let children: Vec<&Entry> = board
        .entries
        .iter()
        .filter(|c| c.parent == Some(e.seq) && c.seq != e.seq)
        .collect();
    if !children.is_empty() && depth < 8 {
        out.push_str("<ul>");
        for c in children {
            entry(out, board, c, depth + 1);
        }
        out.push_str("</ul>");
    }
    out.push_str("</li>");
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// JSON text indented, or as it is when it is not JSON.
fn pretty_text(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => pretty(&v),
        Err(_) => text.to_string(),
    }
}
