//! The queries behind the results viewer (`GET /` of `reasonq serve`, `reasonq view`):
//! the batches, a batch's lines a page at a time, one line in full, and memory. What a page
//! reads is bounded whatever the batch's size: lines are read by keyset over the batch's
//! line index ([`crate::batch::lines`], in line order from a cursor); a filter examines at
//! most [`SCAN_LIMIT`] lines per page and a sort at most [`SORT_WINDOW`], and each page says
//! where it stopped so the next one goes on from there.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::Serialize;
use serde_json::Value;

use super::inspect::{attempts_read, known_batch_read, status_row_read, Attempt, BatchStatus};
use super::runs::runs_read;
use crate::batch::export::failure_of;
use crate::batch::lines;
use crate::chat::blackboard::{self, Board};
use crate::chat::{ChatJob, ResponseRecord};
use crate::codec;
use crate::cost::Money;
use crate::error::Result;
use crate::memory::experience::{self, Experience, Order};
use crate::memory::pattern::{self, Pattern};
use crate::memory::retrieve::{search_experiences_read, Query};
use crate::memory::rules::{self, Rule};
use crate::queue::{queues_read, Job, JobState, Whole};
use crate::runner::FailureRecord;
use crate::store::Store;

/// Rows of a lines page unless asked otherwise, and the most a page shows.
pub const PAGE_DEFAULT: usize = 50;
pub const PAGE_MAX: usize = 200;
/// Lines a filtered page examines at most before it stops and offers to go on.
pub const SCAN_LIMIT: u64 = 20_000;
/// Lines a sorted page ranks at most: a batch up to this size is sorted whole, a larger
/// one window by window from the cursor (there is no index by latency or cost).
pub const SORT_WINDOW: u64 = 100_000;
/// Rows a sorted page may skip within its window (its ranking keeps `skip + limit`).
pub const SORT_SKIP_MAX: usize = 1_000;
/// Characters of an answer a lines page shows.
pub const EXCERPT_CHARS: usize = 160;
/// Experiences a memory search returns.
pub const SEARCH_LIMIT: usize = 20;

/// One batch on the batches page.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    #[serde(flatten)]
    pub status: BatchStatus,
    /// Lines of its current file.
    pub lines: u64,
    /// Its first run's start (else its first line's enqueue), ms.
    pub started_at: Option<u64>,
    /// Its last run's end, once no line waits or runs, ms.
    pub finished_at: Option<u64>,
}

impl BatchRow {
    /// Jobs that ended (completed, failed, cancelled).
    pub fn done(&self) -> u64 {
        let c = &self.status.counts;
        c.completed + c.discarded + c.cancelled
    }

    /// Whether lines still wait or run.
    pub fn running(&self) -> bool {
        let c = &self.status.counts;
        c.available + c.scheduled + c.running + c.retryable > 0 || !self.status.remote.is_empty()
    }
}

/// Every batch: its counters, usage and run times (a few rows each, whatever its size).
pub async fn batches(store: &Store) -> Result<Vec<BatchRow>> {
    store
        .read(|txn| {
            let spans = run_spans(txn)?;
            queues_read(txn)?
                .into_iter()
                .map(|b| batch_row_read(txn, b, &spans))
                .collect()
        })
        .await
}

/// One batch, `None` when no such batch has lines.
pub async fn batch(store: &Store, name: &str) -> Result<Option<BatchRow>> {
    let name = name.to_string();
    store
        .read(move |txn| {
            if lines::size_read(txn, &name)? == 0 {
                return Ok(None);
            }
            let spans = run_spans(txn)?;
            batch_row_read(txn, name, &spans).map(Some)
        })
        .await
}

/// (first start, last end) of each batch's recorded runs.
fn run_spans(txn: &redb::ReadTransaction) -> Result<HashMap<String, (u64, u64)>> {
    let mut spans: HashMap<String, (u64, u64)> = HashMap::new();
    for run in runs_read(txn)? {
        let span = spans
            .entry(run.batch)
            .or_insert((run.started_at, run.finished_at));
        span.0 = span.0.min(run.started_at);
        span.1 = span.1.max(run.finished_at);
    }
    Ok(spans)
}

fn batch_row_read(
    txn: &redb::ReadTransaction,
    batch: String,
    spans: &HashMap<String, (u64, u64)>,
) -> Result<BatchRow> {
    let span = spans.get(&batch).copied();
    let lines = lines::size_read(txn, &batch)?;
    let started_at = match span {
        Some((start, _)) => Some(start),
        None => match lines::job_at_read(txn, &batch, 0)? {
            Some(id) => Whole::open(txn)?.state(id)?.map(|j| j.created_at),
            None => None,
        },
    };
    let row = BatchRow {
        status: status_row_read(txn, batch)?,
        lines,
        started_at,
        finished_at: None,
    };
    let finished_at = match row.running() {
        true => None,
        false => span.map(|(_, end)| end),
    };
    Ok(BatchRow { finished_at, ..row })
}

/// The order of a lines page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Input order, by keyset from the cursor.
    #[default]
    Line,
    /// Slowest first, within the window.
    Latency,
    /// Most expensive first, within the window.
    Cost,
}

impl Sort {
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Line => "line",
            Sort::Latency => "latency",
            Sort::Cost => "cost",
        }
    }

    pub fn parse(text: &str) -> Option<Sort> {
        [Sort::Line, Sort::Latency, Sort::Cost]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// What a lines page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinesQuery {
    /// The first line (0-based) examined: the cursor.
    pub from: u64,
    pub limit: usize,
    pub state: Option<JobState>,
    /// The error code of failed, cancelled or retrying lines (`timeout`, `bad_request`, ...).
    pub code: Option<String>,
    /// Text the request or the response contains (case-insensitive).
    pub text: Option<String>,
    pub sort: Sort,
    /// Sorted pages: rows of the window's ranking skipped.
    pub skip: usize,
}

impl Default for LinesQuery {
    fn default() -> Self {
        LinesQuery {
            from: 0,
            limit: PAGE_DEFAULT,
            state: None,
            code: None,
            text: None,
            sort: Sort::Line,
            skip: 0,
        }
    }
}

impl LinesQuery {
    fn filters(&self) -> bool {
        self.state.is_some() || self.code.is_some() || self.text.is_some()
    }
}

/// One line of the lines page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineRow {
    /// 0-based line of the batch's file.
    pub n: u64,
    pub job_id: u64,
    pub custom_id: String,
    pub state: JobState,
    /// The start of the answer text.
    pub answer: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: Option<u64>,
    /// What the answer cost (a cache hit: zero); `None`: unknown or not answered.
    pub cost: Option<Money>,
    pub cached: bool,
    pub attempts: u32,
    pub max_attempts: u32,
    /// Why it failed, is cancelled or is being retried.
    pub error_code: Option<String>,
}

/// A page of a batch's lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinesPage {
    /// Lines of the batch's file.
    pub size: u64,
    pub rows: Vec<LineRow>,
    /// Lines `from..to` were examined.
    pub examined: (u64, u64),
    /// Where the next page starts, when lines are left.
    pub next: Option<u64>,
    /// The page stopped at its scan bound (or its sort window) rather than because it was
    /// full or the batch ended.
    pub bounded: bool,
}

impl LinesPage {
    /// A page that examined lines `examined`; the next starts where it stopped.
    fn new(size: u64, rows: Vec<LineRow>, examined: (u64, u64), bounded: bool) -> LinesPage {
        let end = examined.1;
        LinesPage {
            size,
            rows,
            examined,
            next: (end < size).then_some(end),
            bounded,
        }
    }
}

/// A page of `batch`'s lines (`None` when no such batch has lines).
pub async fn lines_page(store: &Store, batch: &str, q: LinesQuery) -> Result<Option<LinesPage>> {
    let batch = batch.to_string();
    store
        .read(move |txn| {
            let size = lines::size_read(txn, &batch)?;
            if size == 0 {
                return Ok(None);
            }
            let mut q = q;
            q.from = q.from.min(size);
            q.limit = q.limit.clamp(1, PAGE_MAX);
            q.text = q.text.map(|t| t.to_lowercase()).filter(|t| !t.is_empty());
            let page = match q.sort {
                Sort::Line => scan_read(txn, &batch, size, &q)?,
                Sort::Latency | Sort::Cost => sorted_read(txn, &batch, size, &q)?,
            };
            Ok(Some(page))
        })
        .await
}

/// Lines in input order from the cursor, until the page is full or [`SCAN_LIMIT`] lines
/// were examined.
fn scan_read(
    txn: &redb::ReadTransaction,
    batch: &str,
    size: u64,
    q: &LinesQuery,
) -> Result<LinesPage> {
    let whole = Whole::open(txn)?;
    let mut rows = Vec::new();
    let mut end = q.from;
    let mut bounded = false;
    for line in lines::numbered_read(txn, batch, q.from)? {
        let (n, id) = line?;
        if n.saturating_sub(q.from) >= SCAN_LIMIT {
            bounded = true;
            break;
        }
        end = n + 1;
        if let Some(job) = kept(&whole, id, q)? {
            rows.push(row_of(&job, n));
            if rows.len() == q.limit {
                break;
            }
        }
    }
    if !bounded && rows.len() < q.limit {
        end = size;
    }
    Ok(LinesPage::new(size, rows, (q.from, end), bounded))
}

/// The top `skip + limit` lines by latency or cost among the [`SORT_WINDOW`] lines from the
/// cursor (a bounded heap: memory follows the page, not the window); only the result
/// records are read to rank them, and only the rows shown are read whole.
fn sorted_read(
    txn: &redb::ReadTransaction,
    batch: &str,
    size: u64,
    q: &LinesQuery,
) -> Result<LinesPage> {
    let whole = Whole::open(txn)?;
    let end = q.from.saturating_add(SORT_WINDOW).min(size);
    let skip = q.skip.min(SORT_SKIP_MAX);
    let keep = skip + q.limit;
    // A min-heap of the best so far: (key, earlier line first on ties, job id).
    let mut best: BinaryHeap<Reverse<(u64, Reverse<u64>, u64)>> = BinaryHeap::new();
    for line in lines::numbered_read(txn, batch, q.from)? {
        let (n, id) = line?;
        if n >= end {
            break;
        }
        let Some(record) = whole.result_record(id)? else {
            continue;
        };
        let Ok(r) = codec::decode::<ResponseRecord>(&record) else {
            continue;
        };
        let key = match q.sort {
            Sort::Cost if r.cached => 0,
            Sort::Cost => match r.cost {
                Some(cost) => cost.0,
                None => continue,
            },
            _ => r.latency_ms,
        };
        if q.filters() && kept(&whole, id, q)?.is_none() {
            continue;
        }
        best.push(Reverse((key, Reverse(n), id)));
        if best.len() > keep {
            best.pop();
        }
    }
    let mut rows = Vec::new();
    for Reverse((_, Reverse(n), id)) in best.into_sorted_vec().into_iter().skip(skip) {
        if let Some(job) = whole.get(id)? {
            rows.push(row_of(&job, n));
        }
    }
    Ok(LinesPage::new(size, rows, (q.from, end), end < size))
}

/// The job `id` read whole when it passes the query's filters (the state record is read
/// first, the payload and body only when the text filter needs them or it is kept).
fn kept(whole: &Whole<'_>, id: u64, q: &LinesQuery) -> Result<Option<Job>> {
    let Some(job) = whole.state(id)? else {
        return Ok(None);
    };
    if q.state.is_some_and(|s| s != job.state) {
        return Ok(None);
    }
    if let Some(code) = &q.code {
        if error_of(&job).is_none_or(|f| f.code != *code) {
            return Ok(None);
        }
    }
    let job = whole.fill(job)?;
    if let Some(text) = &q.text {
        let request = codec::decode::<ChatJob>(&job.payload).map(|c| c.body);
        let in_request = request.is_ok_and(|body| contains_lower(body.as_bytes(), text));
        let in_response = contains_lower(job.body.as_deref().unwrap_or_default(), text);
        if !in_request && !in_response {
            return Ok(None);
        }
    }
    Ok(Some(job))
}

/// Whether `haystack` (UTF-8, lossily) contains the lower-case `needle`, ignoring case.
fn contains_lower(haystack: &[u8], needle: &str) -> bool {
    String::from_utf8_lossy(haystack)
        .to_lowercase()
        .contains(needle)
}

/// Why a line failed, was cancelled, or is being tried again (its last attempt's error).
pub fn error_of(job: &Job) -> Option<FailureRecord> {
    match job.state {
        JobState::Completed => None,
        JobState::Discarded | JobState::Cancelled => failure_of(job),
        _ => job
            .last_error
            .as_deref()
            .map(FailureRecord::from_last_error),
    }
}

fn row_of(job: &Job, n: u64) -> LineRow {
    let chat: Option<ChatJob> = codec::decode(&job.payload).ok();
    let response = ResponseRecord::of_job(job).and_then(|r| r.ok());
    let (prompt_tokens, completion_tokens) = response.as_ref().map_or((0, 0), |r| r.usage());
    LineRow {
        n,
        job_id: job.id,
        custom_id: chat.map_or_else(|| format!("job-{}", job.id), |c| c.custom_id),
        state: job.state,
        answer: response
            .as_ref()
            .map(|r| excerpt(&answer_text(&r.body), EXCERPT_CHARS))
            .unwrap_or_default(),
        prompt_tokens,
        completion_tokens,
        latency_ms: response.as_ref().map(|r| r.latency_ms),
        cost: response.as_ref().and_then(cost_of),
        cached: response.as_ref().is_some_and(|r| r.cached),
        attempts: job.attempt,
        max_attempts: job.max_attempts,
        error_code: error_of(job).map(|f| f.code),
    }
}

/// What an answer cost: a cache hit nothing, an unpriced model unknown.
pub fn cost_of(r: &ResponseRecord) -> Option<Money> {
    if r.cached {
        Some(Money::ZERO)
    } else {
        r.cost
    }
}

/// The text of a response body of any endpoint: a chat message, a completion, a Responses
/// API output, or a word on what an embedding or a moderation returned.
pub fn answer_text(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return body.to_string();
    };
    if let Some(choice) = v["choices"].get(0) {
        if let Some(text) = choice["message"]["content"].as_str() {
            return text.to_string();
        }
        if let Some(text) = choice["text"].as_str() {
            return text.to_string();
        }
    }
    if let Some(output) = v["output"].as_array() {
        let texts: Vec<&str> = output
            .iter()
            .filter_map(|o| o["content"].as_array())
            .flatten()
            .filter_map(|c| c["text"].as_str())
            .collect();
        if !texts.is_empty() {
            return texts.join("\n");
        }
    }
    if let Some(embedding) = v["data"][0]["embedding"].as_array() {
        return format!("[an embedding of {} numbers]", embedding.len());
    }
    if let Some(flagged) = v["results"][0]["flagged"].as_bool() {
        return format!("[moderation: flagged {flagged}]");
    }
    String::new()
}

/// The first `max` characters of `text` on one line, with an ellipsis when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// One line in full.
#[derive(Debug, Clone)]
pub struct LineDetail {
    pub n: u64,
    /// Lines of the batch's file.
    pub size: u64,
    /// The job, whole.
    pub job: Job,
    /// Its request (none when this build cannot read the record).
    pub chat: Option<ChatJob>,
    /// Its answer, with the body.
    pub response: Option<ResponseRecord>,
    /// Why it failed or was cancelled, or its last attempt's error while it is retried.
    pub error: Option<FailureRecord>,
    /// Its failed tries, oldest first (the most recent ones the queue keeps).
    pub attempts: Vec<Attempt>,
    /// The experience its answer recorded (with the judged outcome), if still kept.
    pub experience: Option<Experience>,
    /// Its blackboard session, for lines of the blackboard strategy.
    pub board: Option<Board>,
}

/// Line `n` of `batch` in full (`None` when there is no such line).
pub async fn line(store: &Store, batch: &str, n: u64) -> Result<Option<LineDetail>> {
    let batch = batch.to_string();
    store
        .read(move |txn| {
            let Some(id) = lines::job_at_read(txn, &batch, n)? else {
                return Ok(None);
            };
            let size = known_batch_read(txn, &batch)?;
            let Some(job) = Whole::open(txn)?.get(id)? else {
                return Ok(None);
            };
            // The experience commits with the completion, stamped with the same time.
            let experience = match job.finished_at {
                Some(at) => experience::list_by_time_read(txn, at, at + 1, 64, Order::OldestFirst)?
                    .into_iter()
                    .find(|e| e.data.job_id == Some(job.id)),
                None => None,
            };
            let board = blackboard::load_read(txn, &blackboard::session_id(job.id))?;
            Ok(Some(LineDetail {
                n,
                size,
                chat: codec::decode(&job.payload).ok(),
                response: ResponseRecord::of_job(&job).and_then(|r| r.ok()),
                error: error_of(&job),
                attempts: attempts_read(txn, job.id)?,
                experience,
                board,
                job,
            }))
        })
        .await
}

/// The memory page: a search's hits, and the learned statistics and rules.
#[derive(Debug, Clone)]
pub struct MemoryView {
    /// Best first, with their scores (empty without a query).
    pub hits: Vec<(Experience, f64)>,
    /// Per domain and strategy.
    pub patterns: Vec<Pattern>,
    pub rules: Vec<Rule>,
    /// Experiences the background indexer has not indexed yet (a search misses them).
    pub unindexed: u64,
}

/// The memory page's data: BM25 search over experiences (of `domain`, when given), and the
/// patterns and rules (of `domain`). A search first indexes what the background indexer
/// has not reached yet, as `experiences search` does (index upkeep, not a change of data).
pub async fn memory(
    store: &Store,
    text: Option<String>,
    domain: Option<String>,
    now: u64,
) -> Result<MemoryView> {
    if text.is_some() {
        crate::memory::index::catch_up(store).await?;
    }
    store
        .read(move |txn| {
            let hits = match text.as_deref().filter(|t| !t.trim().is_empty()) {
                Some(text) => search_experiences_read(
                    txn,
                    &Query {
                        text,
                        domain: domain.as_deref(),
                        limit: SEARCH_LIMIT,
                        successes_only: false,
                        now,
                    },
                )?,
                None => Vec::new(),
            };
            Ok(MemoryView {
                hits,
                patterns: pattern::list_read(txn, domain.as_deref())?,
                rules: rules::list_read(txn, domain.as_deref())?,
                unindexed: crate::memory::index::pending_read(txn)?,
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_every_endpoint_are_found() {
        let chat = r#"{"choices":[{"message":{"content":"four"}}]}"#;
        assert_eq!(answer_text(chat), "four");
        let completion = r#"{"choices":[{"text":"five"}]}"#;
        assert_eq!(answer_text(completion), "five");
        let responses = r#"{"output":[{"content":[{"type":"output_text","text":"six"}]}]}"#;
        assert_eq!(answer_text(responses), "six");
        let embedding = r#"{"data":[{"embedding":[0.1,0.2]}]}"#;
        assert_eq!(answer_text(embedding), "[an embedding of 2 numbers]");
        assert_eq!(answer_text("not json"), "not json");
    }

    #[test]
    fn excerpts_cut_on_characters_and_flatten_lines() {
        assert_eq!(excerpt("ab\ncd", 10), "ab cd");
        assert_eq!(excerpt("éèêë", 2), "éè…");
        assert_eq!(excerpt("", 2), "");
    }

    #[test]
    fn sorts_parse_by_name() {
        for s in [Sort::Line, Sort::Latency, Sort::Cost] {
            assert_eq!(Sort::parse(s.as_str()), Some(s));
        }
        assert_eq!(Sort::parse("size"), None);
    }
}
