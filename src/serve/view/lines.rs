//! A batch's lines page (`GET /view/batches/{batch}`): the batch's summary, filters (state,
//! error code, text), sorting (line, latency, cost), a page of rows and the way on. Pages
//! go by keyset from a line number (`from`), so the first page of a 1M-line batch costs
//! what the first page of a 100-line one does; see [`crate::app::view`] for the bounds.

use bytes::Bytes;

use super::batches::{fields, LIVE};
use super::html::{self, esc};
use super::{Actions, Answer, Pages};
use crate::app::view::{
    self, BatchRow, LineRow, LinesPage, LinesQuery, Sort, PAGE_MAX, SCAN_LIMIT, SORT_SKIP_MAX,
    SORT_WINDOW,
};
use crate::error::Result;
use crate::queue::JobState;

/// Reads the page's query; a bad value is ignored (a page, not an API).
pub fn query_of(query: Option<&str>) -> LinesQuery {
    let mut q = LinesQuery::default();
    for (key, value) in crate::serve::parse::query_pairs(query).unwrap_or_default() {
        let value = value.trim().to_string();
        match key.as_str() {
            "from" => q.from = value.parse().unwrap_or(0),
            "limit" => q.limit = value.parse().unwrap_or(q.limit).clamp(1, PAGE_MAX),
            "skip" => q.skip = value.parse().unwrap_or(0),
            "state" => q.state = value.parse::<JobState>().ok(),
            "code" if !value.is_empty() => q.code = Some(value),
            "q" if !value.is_empty() => q.text = Some(value),
            "sort" => q.sort = Sort::parse(&value).unwrap_or_default(),
            _ => {}
        }
    }
    q
}

/// The query string of `q` (for links that keep the filters).
pub fn query_string(q: &LinesQuery) -> String {
    let mut parts = Vec::new();
    if q.from > 0 {
        parts.push(format!("from={}", q.from));
    }
    if q.limit != LinesQuery::default().limit {
        parts.push(format!("limit={}", q.limit));
    }
    if let Some(s) = q.state {
        parts.push(format!("state={}", s.as_str()));
    }
    if let Some(c) = &q.code {
        parts.push(format!("code={}", html::url(c)));
    }
    if let Some(t) = &q.text {
        parts.push(format!("q={}", html::url(t)));
    }
    if q.sort != Sort::Line {
        parts.push(format!("sort={}", q.sort.as_str()));
    }
    if q.skip > 0 {
        parts.push(format!("skip={}", q.skip));
    }
    match parts.is_empty() {
        true => String::new(),
        false => format!("?{}", parts.join("&")),
    }
}

pub async fn page(pages: &Pages, batch: &str, query: Option<&str>) -> Result<Answer> {
    let q = query_of(query);
    let Some(row) = view::batch(&pages.store, batch).await? else {
        return Ok(super::not_found(
            pages,
            &format!("no batch named {batch:?}"),
        ));
    };
    let Some(lines) = view::lines_page(&pages.store, batch, q.clone()).await? else {
        return Ok(super::not_found(
            pages,
            &format!("no batch named {batch:?}"),
        ));
    };
    let mut body = String::new();
    summary(&mut body, &row, pages.actions);
    filters(&mut body, batch, &q);
    table(&mut body, batch, &lines);
    pager(&mut body, batch, &q, &lines);
    let live = row.running().then_some(LIVE);
    let frame = pages.frame(batch, "batches", live);
    Ok(super::text(
        200,
        "text/html; charset=utf-8",
        Bytes::from(html::page(&frame, &body)),
    ))
}

/// The batch's name, state, counts (each a filter link), files and actions.
fn summary(out: &mut String, row: &BatchRow, actions: Actions) {
    let name = &row.status.batch;
    let href = html::batch_href(name);
    w!(
        out,
        "<h1><a href=\"/\">Batches</a> / {}</h1><section class=\"summary\" data-batch=\"{}\">\
         <div><progress data-field=\"bar\" value=\"{}\" max=\"{}\"></progress></div>",
        esc(name),
        esc(name),
        row.done().min(row.lines.max(1)),
        row.lines.max(1)
    );
    out.push_str("<dl>");
    for (field, value) in fields(row) {
        w!(
            out,
            "<div><dt>{field}</dt><dd data-field=\"{field}\">{}</dd></div>",
            esc(&value)
        );
    }
    out.push_str("</dl><p class=\"states\">Lines by state: ");
    for s in JobState::ALL {
        let n = row.status.counts.get(s);
        if n > 0 {
            w!(
                out,
                "<a href=\"{}?state={}\">{} {}</a> ",
                esc(&href),
                s.as_str(),
                s.as_str(),
                html::count(n)
            );
        }
    }
    w!(
        out,
        "</p><p class=\"files\">Files (made from the database as they are sent): \
         <a href=\"{0}/output.jsonl\">output.jsonl</a> · \
         <a href=\"{0}/errors.jsonl\">errors.jsonl</a></p>",
        esc(&href)
    );
    if actions != Actions::ReadOnly {
        let failed = row.status.counts.discarded;
        out.push_str("<p class=\"actions\">");
        if failed > 0 {
            w!(
                out,
                "<button type=\"button\" data-action=\"{}/retry\" data-confirm=\"Send the {} \
                 failed lines of {} again?\">Retry failed lines</button> ",
                esc(&href),
                failed,
                esc(name)
            );
        }
        if row.running() {
            w!(
                out,
                "<button type=\"button\" data-action=\"{}/cancel\" data-confirm=\"Cancel batch \
                 {}? Waiting lines are not sent; answers so far are kept.\">Cancel batch</button>",
                esc(&href),
                esc(name)
            );
        }
        out.push_str("<output class=\"result\"></output></p>");
    }
    out.push_str("</section>");
}

/// The filter form.
fn filters(out: &mut String, batch: &str, q: &LinesQuery) {
    w!(
        out,
        "<form class=\"filters\" method=\"get\" action=\"{}\"><label>state <select name=\"state\">\
         <option value=\"\">any</option>",
        esc(&html::batch_href(batch))
    );
    for s in JobState::ALL {
        let selected = if q.state == Some(s) { " selected" } else { "" };
        w!(
            out,
            "<option value=\"{0}\"{selected}>{0}</option>",
            s.as_str()
        );
    }
    w!(
        out,
        "</select></label> <label>error code <input name=\"code\" value=\"{}\" size=\"14\" \
         placeholder=\"timeout\"></label> <label>text <input name=\"q\" value=\"{}\" \
         size=\"24\" placeholder=\"in prompt or answer\"></label> <label>sort <select \
         name=\"sort\">",
        esc(q.code.as_deref().unwrap_or("")),
        esc(q.text.as_deref().unwrap_or(""))
    );
    for (s, label) in [
        (Sort::Line, "line"),
        (Sort::Latency, "slowest first"),
        (Sort::Cost, "most expensive first"),
    ] {
        let selected = if q.sort == s { " selected" } else { "" };
        w!(
            out,
            "<option value=\"{}\"{selected}>{label}</option>",
            s.as_str()
        );
    }
    w!(
        out,
        "</select></label> <label>from line <input name=\"from\" value=\"{}\" size=\"8\" \
         inputmode=\"numeric\"></label> <button type=\"submit\">Show</button></form>",
        q.from
    );
}

fn table(out: &mut String, batch: &str, page: &LinesPage) {
    if page.rows.is_empty() {
        out.push_str("<p class=\"empty\">No matching lines here.</p>");
        return;
    }
    out.push_str(
        "<table class=\"lines\"><thead><tr><th>line</th><th>custom_id</th><th>state</th>\
         <th>answer</th><th>tokens</th><th>latency</th><th>cost</th><th>attempts</th>\
         <th>error</th></tr></thead><tbody>",
    );
    let href = html::batch_href(batch);
    for r in &page.rows {
        row(out, &href, r);
    }
    out.push_str("</tbody></table>");
}

fn row(out: &mut String, href: &str, r: &LineRow) {
    let line = format!("{href}/lines/{}", r.n);
    w!(
        out,
        "<tr class=\"{0}\"><td class=\"num\">{1}</td><td><a href=\"{2}\">{3}</a></td>\
         <td>{0}{4}</td><td class=\"answer\">{5}</td><td class=\"num\">{6}</td>\
         <td class=\"num\">{7}</td><td class=\"num\">{8}</td><td class=\"num\">{9}/{10}</td><td>",
        r.state.as_str(),
        r.n + 1,
        esc(&line),
        esc(&r.custom_id),
        if r.cached { " (cache)" } else { "" },
        esc(&r.answer),
        if r.prompt_tokens + r.completion_tokens > 0 {
            format!("{}+{}", r.prompt_tokens, r.completion_tokens)
        } else {
            String::new()
        },
        html::millis(r.latency_ms),
        html::money(r.cost),
        r.attempts,
        r.max_attempts,
    );
    if let Some(code) = &r.error_code {
        w!(
            out,
            "<a href=\"{}?code={}\">{}</a>",
            esc(href),
            esc(&html::url(code)),
            esc(code)
        );
    }
    out.push_str("</td></tr>");
}

/// Where the page stopped and the links on.
fn pager(out: &mut String, batch: &str, q: &LinesQuery, page: &LinesPage) {
    let href = html::batch_href(batch);
    let (from, to) = page.examined;
    out.push_str("<nav class=\"pager\">");
    if q.sort == Sort::Line {
        w!(
            out,
            "<span>Lines {}–{} of {} examined, {} shown{}.</span> ",
            html::count(from + 1),
            html::count(to),
            html::count(page.size),
            page.rows.len(),
            if page.bounded {
                format!(
                    "; a filtered page examines at most {} lines",
                    html::count(SCAN_LIMIT)
                )
            } else {
                String::new()
            }
        );
    } else {
        w!(
            out,
            "<span>Ranked lines {}–{} of {} ({} at a time: there is no index by {}).</span> ",
            html::count(from + 1),
            html::count(to),
            html::count(page.size),
            html::count(SORT_WINDOW),
            q.sort.as_str()
        );
        let more = q.skip + q.limit;
        if page.rows.len() == q.limit && more <= SORT_SKIP_MAX {
            let next = LinesQuery {
                skip: more,
                ..q.clone()
            };
            w!(
                out,
                "<a rel=\"next\" href=\"{}{}\">More of these lines →</a> ",
                esc(&href),
                esc(&query_string(&next))
            );
        }
    }
    if from > 0 || q.skip > 0 {
        let first = LinesQuery {
            from: 0,
            skip: 0,
            ..q.clone()
        };
        w!(
            out,
            "<a href=\"{}{}\">← First</a> ",
            esc(&href),
            esc(&query_string(&first))
        );
    }
    if let Some(next) = page.next {
        let label = match (q.sort, page.bounded) {
            (Sort::Line, true) => "Continue the search →",
            (Sort::Line, false) => "Next →",
            _ => "Next lines →",
        };
        let on = LinesQuery {
            from: next,
            skip: 0,
            ..q.clone()
        };
        w!(
            out,
            "<a rel=\"next\" href=\"{}{}\">{label}</a>",
            esc(&href),
            esc(&query_string(&on))
        );
    }
    out.push_str("</nav>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_round_trips_through_its_links() {
        let q = query_of(Some(
            "from=100&state=discarded&code=bad_request&q=a+b%26c&sort=latency&skip=50&limit=20",
        ));
        assert_eq!(q.from, 100);
        assert_eq!(q.state, Some(JobState::Discarded));
        assert_eq!(q.code.as_deref(), Some("bad_request"));
        assert_eq!(q.text.as_deref(), Some("a b&c"));
        assert_eq!(q.sort, Sort::Latency);
        assert_eq!((q.skip, q.limit), (50, 20));
        let again = query_of(query_string(&q).strip_prefix('?'));
        assert_eq!(again, q);
    }

    #[test]
    fn bad_values_fall_back_to_the_defaults() {
        let q = query_of(Some("from=x&state=nope&sort=size&limit=99999"));
        assert_eq!(q.from, 0);
        assert_eq!(q.state, None);
        assert_eq!(q.sort, Sort::Line);
        assert_eq!(q.limit, PAGE_MAX);
        assert_eq!(query_of(Some("from=5&%zz")), LinesQuery::default());
    }
}
