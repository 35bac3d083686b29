//! The memory page (`GET /view/memory`): experience search over the BM25 index, patterns
//! per domain and strategy as bars (success rate, uses), and the learned rules.

use bytes::Bytes;

use super::html::{self, esc};
use super::{Answer, Pages};
use crate::app::view::{self, excerpt};
use crate::clock::now_ms;
use crate::error::Result;
use crate::memory::experience::Outcome;
use crate::memory::pattern::Pattern;

pub async fn page(pages: &Pages, query: Option<&str>) -> Result<Answer> {
    let mut text = None;
    let mut domain = None;
    for (k, v) in crate::serve::parse::query_pairs(query).unwrap_or_default() {
        let v = v.trim().to_string();
        match k.as_str() {
            "q" if !v.is_empty() => text = Some(v),
            "domain" if !v.is_empty() => domain = Some(v),
            _ => {}
        }
    }
    let m = view::memory(&pages.store, text.clone(), domain.clone(), now_ms()).await?;
    let mut body = String::from("<h1>Memory</h1>");
    w!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/view/memory\"><label>search \
         experiences <input name=\"q\" value=\"{}\" size=\"40\" placeholder=\"sum of two \
         primes\"></label> <label>domain <input name=\"domain\" value=\"{}\" size=\"12\">\
         </label> <button type=\"submit\">Search</button></form>",
        esc(text.as_deref().unwrap_or("")),
        esc(domain.as_deref().unwrap_or(""))
    );
    if m.unindexed > 0 {
        w!(
            body,
            "<p class=\"note\">{} experiences are not indexed yet (the background indexer \
             takes them in moments); a search misses them until then.</p>",
            html::count(m.unindexed)
        );
    }
    if text.is_some() {
        hits(&mut body, &m.hits);
    }
    patterns(&mut body, &m.patterns);
    rules(&mut body, &m.rules);
    let frame = pages.frame("Memory", "memory", None);
    Ok(super::text(
        200,
        "text/html; charset=utf-8",
        Bytes::from(html::page(&frame, &body)),
    ))
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Unknown => "unknown",
    }
}

fn hits(out: &mut String, hits: &[(crate::memory::experience::Experience, f64)]) {
    out.push_str("<h2>Experiences found</h2>");
    if hits.is_empty() {
        out.push_str("<p class=\"empty\">No matching experiences.</p>");
        return;
    }
    out.push_str(
        "<table class=\"hits\"><thead><tr><th>score</th><th>id</th><th>domain</th>\
         <th>strategy</th><th>outcome</th><th>question</th><th>answer</th><th>job</th>\
         </tr></thead><tbody>",
    );
    for (e, score) in hits {
        w!(
            out,
            "<tr><td class=\"num\">{score:.3}</td><td class=\"num\">{}</td><td>{}</td>\
             <td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             </tr>",
            e.id,
            esc(&e.data.domain),
            esc(&e.data.strategy),
            outcome(e.data.outcome),
            outcome(e.data.outcome),
            esc(&excerpt(&e.data.question, 120)),
            esc(&excerpt(&e.data.answer, 120)),
            e.data.job_id.map(|j| j.to_string()).unwrap_or_default()
        );
    }
    out.push_str("</tbody></table>");
}

/// Patterns grouped by domain, each strategy with its success rate and uses as bars.
fn patterns(out: &mut String, patterns: &[Pattern]) {
    out.push_str("<h2>Strategies per domain</h2>");
    if patterns.is_empty() {
        out.push_str("<p class=\"empty\">No patterns yet: answered lines record them.</p>");
        return;
    }
    let most = patterns.iter().map(|p| p.uses).max().unwrap_or(1).max(1);
    out.push_str(
        "<table class=\"patterns\"><thead><tr><th>domain</th><th>strategy</th>\
         <th>success rate</th><th>uses</th><th>successes / failures</th><th>confidence</th>\
         <th>mean latency</th></tr></thead><tbody>",
    );
    for p in patterns {
        let rate = p.success_rate();
        w!(
            out,
            "<tr><td>{}</td><td>{}</td><td><meter min=\"0\" max=\"1\" low=\"0.5\" \
             high=\"0.8\" optimum=\"1\" value=\"{:.3}\"></meter> {}</td><td><progress \
             value=\"{}\" max=\"{most}\"></progress> {}</td><td class=\"num\">{} / {}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&p.domain),
            esc(&p.strategy),
            rate.unwrap_or(0.0),
            rate.map_or_else(|| "not judged".into(), |r| format!("{:.0}%", r * 100.0)),
            p.uses,
            html::count(p.uses),
            p.successes,
            p.failures,
            p.mean_confidence
                .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
            html::millis(Some(p.mean_latency_ms.round() as u64)),
        );
    }
    out.push_str("</tbody></table>");
}

fn rules(out: &mut String, rules: &[crate::memory::rules::Rule]) {
    out.push_str("<h2>Learned rules</h2>");
    if rules.is_empty() {
        out.push_str(
            "<p class=\"empty\">No rules yet (<code>reasonq insights DOMAIN</code> learns \
             them).</p>",
        );
        return;
    }
    out.push_str(
        "<table class=\"rules\"><thead><tr><th>domain</th><th>id</th><th>score</th>\
         <th>successes / failures</th><th>evidence</th><th>learned (GMT)</th><th>rule</th>\
         </tr></thead><tbody>",
    );
    for r in rules {
        w!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{} / {}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.domain),
            r.id,
            r.score,
            r.successes,
            r.failures,
            r.evidence.len(),
            html::when(Some(r.created_at)),
            esc(&r.text)
        );
    }
    out.push_str("</tbody></table>");
}
