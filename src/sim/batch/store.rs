//! The batches and files in memory, their lifecycle, and the helpers the three protocols
//! share (ids, timestamps, the deterministic result order, streamed bodies).
//!
//! Memory per request is the custom id, a `Bytes` of its chat body (a slice of the uploaded
//! file for OpenAI, no copy) and the answer text; rendered result lines are never stored,
//! they are rendered while a download streams.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use serde_json::Value;

use super::super::{decide, Fault, SimBody, State};
use super::{
    BatchConfig, BatchCounters, BatchInfo, BatchLimits, BatchMode, BatchState, ControlError,
    LineError, Protocol,
};

/// 24 hours, the completion window of all three providers.
pub(crate) const DAY_MS: u64 = 24 * 3600 * 1000;

/// The batch state of one server.
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    /// A store whose OpenAI output and error files are rendered line by line with
    /// `render_line` (given by the protocol module, which depends on the store).
    pub(crate) fn new(cfg: &BatchConfig, render_line: RenderLine) -> Store {
        Store {
            inner: Mutex::new(Inner {
                render_line,
                mode: cfg.mode,
                limits: cfg.limits.clone(),
                files: HashMap::new(),
                file_order: Vec::new(),
                batches: HashMap::new(),
                order: Vec::new(),
                submissions: HashMap::new(),
                line_faults: HashMap::new(),
                poll_faults: VecDeque::new(),
                download_faults: VecDeque::new(),
                create_faults: VecDeque::new(),
                counters: BatchCounters::default(),
                seq: 0,
                xai_adds: VecDeque::new(),
                xai_creates: VecDeque::new(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An uploaded or generated file.
pub(crate) struct FileObj {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub created_ms: u64,
    pub bytes: u64,
    pub content: FileContent,
}

/// Uploads keep their bytes; output and error files are rendered from their batch.
pub(crate) enum FileContent {
    Data(Bytes),
    Output { batch: String, errors: bool },
}

/// When each lifecycle state was entered (Unix milliseconds).
#[derive(Default, Clone, Copy)]
pub(crate) struct Times {
    pub in_progress: Option<u64>,
    pub finalizing: Option<u64>,
    pub completed: Option<u64>,
    pub failed: Option<u64>,
    pub expired: Option<u64>,
    pub cancelling: Option<u64>,
    pub cancelled: Option<u64>,
}

pub(crate) struct Batch {
    pub id: String,
    pub protocol: Protocol,
    pub state: BatchState,
    pub name: Option<String>,
    pub metadata: serde_json::Map<String, Value>,
    pub endpoint: String,
    pub completion_window: String,
    pub input_file_id: Option<String>,
    pub model: String,
    pub lines: Arc<Vec<Line>>,
    /// Finished lines, in the order results are served: each chunk that finishes together
    /// is shuffled, so results never come in input order and pages stay stable as a batch
    /// grows (xAI).
    pub finished: Arc<Vec<u32>>,
    /// custom id -> line, for xAI's incremental adds.
    pub index: HashMap<Box<str>, u32>,
    /// Problems found in the input, reported when validation ends (OpenAI).
    pub validation: Vec<LineError>,
    /// The reported `errors` of a failed batch.
    pub errors: Vec<LineError>,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub times: Times,
    pub next_step: Option<Instant>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    chunks: u64,
}

impl Batch {
    pub(crate) fn new(id: String, protocol: Protocol, lines: Vec<Line>) -> Batch {
        let created_ms = now_ms();
        Batch {
            id,
            protocol,
            state: if protocol == Protocol::Xai {
                BatchState::InProgress
            } else {
                BatchState::Validating
            },
            name: None,
            metadata: serde_json::Map::new(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            input_file_id: None,
            model: String::new(),
            lines: Arc::new(lines),
            finished: Arc::new(Vec::new()),
            index: HashMap::new(),
            validation: Vec::new(),
            errors: Vec::new(),
            created_ms,
            expires_ms: created_ms + DAY_MS,
            times: Times::default(),
            next_step: None,
            output_file_id: None,
            error_file_id: None,
            chunks: 0,
        }
    }

    /// (succeeded, http errors, expired, cancelled, pending).
    pub(crate) fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for l in self.lines.iter() {
            match l.outcome {
                Outcome::Pending => c.pending += 1,
                Outcome::Answered { .. } => c.succeeded += 1,
                Outcome::HttpError { .. } => c.errored += 1,
                Outcome::Expired => c.expired += 1,
                Outcome::Cancelled => c.cancelled += 1,
            }
        }
        c
    }

    /// Tokens of the answered lines, for the usage and cost fields.
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.lines
            .iter()
            .fold((0, 0), |(i, o), l| match &l.outcome {
                Outcome::Answered {
                    content,
                    prompt_chars,
                    ..
                } => (
                    i + (*prompt_chars as u64) / 4 + 1,
                    o + content.len() as u64 / 4 + 1,
                ),
                _ => (i, o),
            })
    }
}

#[derive(Default, Clone, Copy)]
pub(crate) struct Counts {
    pub succeeded: usize,
    pub errored: usize,
    pub expired: usize,
    pub cancelled: usize,
    pub pending: usize,
}

/// One request of a batch.
#[derive(Clone)]
pub(crate) struct Line {
    pub custom_id: Box<str>,
    /// The chat-completions request body.
    pub body: Bytes,
    pub outcome: Outcome,
    /// Left out of every result by [`super::BatchControl::drop_results`].
    pub dropped: bool,
    /// Numbers the ids of the answer (set when it finishes).
    pub seq: u64,
    pub added_ms: u64,
    pub finished_ms: u64,
}

impl Line {
    pub(crate) fn new(custom_id: &str, body: Bytes) -> Line {
        Line {
            custom_id: custom_id.into(),
            body,
            outcome: Outcome::Pending,
            dropped: false,
            seq: 0,
            added_ms: now_ms(),
            finished_ms: 0,
        }
    }
}

#[derive(Clone)]
pub(crate) enum Outcome {
    Pending,
    /// The answer, as `completion()` renders it.
    Answered {
        content: Box<str>,
        model: Box<str>,
        prompt_chars: u32,
    },
    /// A non-2xx answer.
    HttpError {
        status: u16,
        code: Option<Box<str>>,
        message: Box<str>,
    },
    Expired,
    Cancelled,
}

/// Renders one line of an OpenAI output (`false`) or error (`true`) file, `None` when the
/// line belongs to the other file.
pub(crate) type RenderLine = fn(&Line, bool) -> Option<String>;

pub(crate) struct Inner {
    render_line: RenderLine,
    pub mode: BatchMode,
    pub limits: BatchLimits,
    pub files: HashMap<String, FileObj>,
    pub file_order: Vec<String>,
    pub batches: HashMap<String, Batch>,
    /// Batch ids, oldest first, all protocols.
    pub order: Vec<String>,
    pub submissions: HashMap<Box<str>, u64>,
    pub line_faults: HashMap<Box<str>, Fault>,
    pub poll_faults: VecDeque<Fault>,
    pub download_faults: VecDeque<Fault>,
    pub create_faults: VecDeque<super::CreateFault>,
    pub counters: BatchCounters,
    seq: u64,
    pub xai_adds: VecDeque<Instant>,
    pub xai_creates: VecDeque<Instant>,
}

impl Inner {
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn count_submission(&mut self, custom_id: &str) {
        match self.submissions.get_mut(custom_id) {
            Some(n) => *n += 1,
            None => {
                self.submissions.insert(custom_id.into(), 1);
            }
        }
    }

    pub(crate) fn add_file(&mut self, f: FileObj) {
        self.file_order.push(f.id.clone());
        self.files.insert(f.id.clone(), f);
    }

    /// Registers a new batch and counts its requests as submitted.
    pub(crate) fn add_batch(&mut self, mut b: Batch) {
        for l in b.lines.iter() {
            match self.submissions.get_mut(&*l.custom_id) {
                Some(n) => *n += 1,
                None => {
                    self.submissions.insert(l.custom_id.clone(), 1);
                }
            }
        }
        if let BatchMode::Auto { step } = self.mode {
            if b.protocol != Protocol::Xai || !b.lines.is_empty() {
                b.next_step = Some(Instant::now() + step);
            }
        }
        self.counters.batches_created += 1;
        self.order.push(b.id.clone());
        self.batches.insert(b.id.clone(), b);
    }

    pub(crate) fn take(&mut self, id: &str) -> Result<Batch, ControlError> {
        self.batches
            .remove(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))
    }

    pub(crate) fn put(&mut self, b: Batch) {
        self.batches.insert(b.id.clone(), b);
    }

    /// Runs the Auto steps that are due.
    pub(crate) fn catch_up(&mut self, st: &State) {
        let BatchMode::Auto { step } = self.mode else {
            return;
        };
        let now = Instant::now();
        let due: Vec<String> = self
            .order
            .iter()
            .filter(|id| {
                self.batches
                    .get(*id)
                    .and_then(|b| b.next_step)
                    .is_some_and(|t| t <= now)
            })
            .cloned()
            .collect();
        for id in due {
            let Ok(mut b) = self.take(&id) else { continue };
            while let Some(t) = b.next_step.filter(|t| *t <= now) {
                let _ = self.step(st, &mut b);
                b.next_step = if b.state.is_terminal() || b.protocol == Protocol::Xai {
                    None
                } else {
                    Some(t + step)
                };
            }
            self.put(b);
        }
    }

    pub(crate) fn set_mode(&mut self, mode: BatchMode) {
        self.mode = mode;
        let next = match mode {
            BatchMode::Auto { step } => Some(Instant::now() + step),
            BatchMode::Manual => None,
        };
        for b in self.batches.values_mut() {
            let running = !b.state.is_terminal();
            let pending = b
                .lines
                .iter()
                .any(|l| matches!(l.outcome, Outcome::Pending));
            b.next_step = next.filter(|_| running && (b.protocol != Protocol::Xai || pending));
        }
    }

    /// Schedules an xAI batch's pending requests to finish one step from now.
    pub(crate) fn touch_xai(&mut self, id: &str) {
        if let BatchMode::Auto { step } = self.mode {
            if let Some(b) = self.batches.get_mut(id) {
                b.next_step = Some(Instant::now() + step);
            }
        }
    }

    pub(crate) fn advance(&mut self, st: &State, id: &str) -> Result<BatchState, ControlError> {
        let mut b = self.take(id)?;
        let r = self.step(st, &mut b);
        self.put(b);
        r
    }

    fn step(&mut self, st: &State, b: &mut Batch) -> Result<BatchState, ControlError> {
        let now = now_ms();
        match (b.protocol, b.state) {
            (_, s) if s.is_terminal() => {
                return Err(ControlError::Terminal {
                    id: b.id.clone(),
                    state: s,
                })
            }
            (Protocol::Xai, _) => self.finish(st, b, usize::MAX),
            (_, BatchState::Validating) if !b.validation.is_empty() => {
                b.errors = std::mem::take(&mut b.validation);
                self.end(b, BatchState::Failed);
            }
            (_, BatchState::Validating) => {
                b.state = BatchState::InProgress;
                b.times.in_progress = Some(now);
            }
            (_, BatchState::InProgress) => {
                b.state = BatchState::Finalizing;
                b.times.finalizing = Some(now);
            }
            (_, BatchState::Finalizing) => {
                self.finish(st, b, usize::MAX);
                self.end(b, BatchState::Completed);
            }
            (_, _) => self.end(b, BatchState::Cancelled),
        }
        Ok(b.state)
    }

    pub(crate) fn complete(&mut self, st: &State, id: &str) -> Result<BatchState, ControlError> {
        let mut b = self.take(id)?;
        let r = if b.state.is_terminal() {
            Err(ControlError::Terminal {
                id: b.id.clone(),
                state: b.state,
            })
        } else if b.state == BatchState::Validating && !b.validation.is_empty() {
            b.errors = std::mem::take(&mut b.validation);
            self.end(&mut b, BatchState::Failed);
            Ok(b.state)
        } else {
            self.finish(st, &mut b, usize::MAX);
            if b.protocol != Protocol::Xai {
                self.end(&mut b, BatchState::Completed);
            }
            Ok(b.state)
        };
        self.put(b);
        r
    }

    pub(crate) fn process(
        &mut self,
        st: &State,
        id: &str,
        fraction: f64,
    ) -> Result<usize, ControlError> {
        let mut b = self.take(id)?;
        let r = if b.state.is_terminal() {
            Err(ControlError::Terminal {
                id: b.id.clone(),
                state: b.state,
            })
        } else {
            let t = target(b.lines.len(), fraction);
            self.finish(st, &mut b, t);
            Ok(b.lines.len() - b.counts().pending)
        };
        self.put(b);
        r
    }

    pub(crate) fn expire(
        &mut self,
        st: &State,
        id: &str,
        fraction: f64,
    ) -> Result<(), ControlError> {
        let mut b = self.take(id)?;
        let r = if b.state.is_terminal() {
            Err(ControlError::Terminal {
                id: b.id.clone(),
                state: b.state,
            })
        } else {
            let t = target(b.lines.len(), fraction);
            self.finish(st, &mut b, t);
            self.end(&mut b, BatchState::Expired);
            Ok(())
        };
        self.put(b);
        r
    }

    pub(crate) fn cancel(&mut self, _st: &State, id: &str) -> Result<BatchState, ControlError> {
        let mut b = self.take(id)?;
        let r = match (b.protocol, b.state) {
            (Protocol::Xai, BatchState::Cancelled) | (_, BatchState::Cancelling) => Ok(b.state),
            (_, s) if s.is_terminal() => Err(ControlError::Terminal {
                id: b.id.clone(),
                state: s,
            }),
            (Protocol::Xai, _) => {
                self.end(&mut b, BatchState::Cancelled);
                Ok(b.state)
            }
            _ => {
                b.state = BatchState::Cancelling;
                b.times.cancelling = Some(now_ms());
                b.next_step = match self.mode {
                    BatchMode::Auto { step } => Some(Instant::now() + step),
                    BatchMode::Manual => None,
                };
                Ok(b.state)
            }
        };
        self.put(b);
        r
    }

    pub(crate) fn fail_validation(
        &mut self,
        id: &str,
        errors: Vec<LineError>,
    ) -> Result<(), ControlError> {
        let mut b = self.take(id)?;
        let r = if b.protocol != Protocol::OpenAi {
            Err(ControlError::Unsupported {
                protocol: b.protocol,
                what: "validation phase",
            })
        } else if b.state.is_terminal() {
            Err(ControlError::Terminal {
                id: b.id.clone(),
                state: b.state,
            })
        } else {
            b.errors = errors;
            self.end(&mut b, BatchState::Failed);
            Ok(())
        };
        self.put(b);
        r
    }

    pub(crate) fn set_state(
        &mut self,
        st: &State,
        id: &str,
        state: BatchState,
    ) -> Result<(), ControlError> {
        let b = self
            .batches
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.into()))?;
        if b.state.is_terminal() {
            return Err(ControlError::Terminal {
                id: id.into(),
                state: b.state,
            });
        }
        let protocol = b.protocol;
        match state {
            BatchState::Completed => {
                let mut b = self.take(id)?;
                self.finish(st, &mut b, usize::MAX);
                self.end(&mut b, BatchState::Completed);
                self.put(b);
                Ok(())
            }
            BatchState::Expired => self.expire(st, id, 0.0),
            BatchState::Failed => self.fail_validation(id, Vec::new()),
            BatchState::Cancelled => {
                let mut b = self.take(id)?;
                self.end(&mut b, BatchState::Cancelled);
                self.put(b);
                Ok(())
            }
            BatchState::Cancelling if protocol != Protocol::Xai => self.cancel(st, id).map(|_| ()),
            _ if protocol == Protocol::Xai && state != BatchState::InProgress => {
                Err(ControlError::Unsupported {
                    protocol,
                    what: "such state",
                })
            }
            _ => {
                let b = self
                    .batches
                    .get_mut(id)
                    .ok_or_else(|| ControlError::NotFound(id.into()))?;
                let now = Some(now_ms());
                match state {
                    BatchState::InProgress => b.times.in_progress = now,
                    BatchState::Finalizing => b.times.finalizing = now,
                    _ => {}
                }
                b.state = state;
                Ok(())
            }
        }
    }

    pub(crate) fn drop_results(&mut self, id: &str, ids: &[&str]) -> Result<usize, ControlError> {
        let mut b = self.take(id)?;
        let wanted: HashSet<&str> = ids.iter().copied().collect();
        let mut n = 0;
        for l in Arc::make_mut(&mut b.lines).iter_mut() {
            if wanted.contains(&*l.custom_id) && !l.dropped {
                l.dropped = true;
                n += 1;
            }
        }
        self.refresh_files(&b);
        self.put(b);
        Ok(n)
    }

    /// Answers pending lines in input order until `target` lines are finished.
    fn finish(&mut self, st: &State, b: &mut Batch, target: usize) {
        let mut done = b.lines.len() - b.counts().pending;
        if done >= target {
            return;
        }
        let now = now_ms();
        let mut fresh = Vec::new();
        let lines = Arc::make_mut(&mut b.lines);
        for (i, line) in lines.iter_mut().enumerate() {
            if done >= target {
                break;
            }
            if matches!(line.outcome, Outcome::Pending) {
                self.seq += 1;
                answer_line(st, &mut self.line_faults, line, self.seq, now);
                fresh.push(i as u32);
                done += 1;
            }
        }
        append_shuffled(b, fresh);
    }

    /// Enters a terminal state: what is still pending expires or is cancelled, OpenAI
    /// writes its output and error files.
    fn end(&mut self, b: &mut Batch, state: BatchState) {
        let now = now_ms();
        let rest = match state {
            BatchState::Expired => Some(Outcome::Expired),
            BatchState::Cancelled => Some(Outcome::Cancelled),
            _ => None,
        };
        if let Some(rest) = rest {
            let mut fresh = Vec::new();
            for (i, l) in Arc::make_mut(&mut b.lines).iter_mut().enumerate() {
                if matches!(l.outcome, Outcome::Pending) {
                    l.outcome = rest.clone();
                    l.finished_ms = now;
                    self.seq += 1;
                    l.seq = self.seq;
                    fresh.push(i as u32);
                }
            }
            append_shuffled(b, fresh);
        }
        let t = Some(now);
        match state {
            BatchState::Completed => {
                // A batch completed from an earlier state still went through these.
                b.times.in_progress.get_or_insert(now);
                b.times.finalizing.get_or_insert(now);
                b.times.completed = t;
            }
            BatchState::Failed => b.times.failed = t,
            BatchState::Expired => {
                b.times.expired = t;
                if b.protocol == Protocol::Xai {
                    b.expires_ms = now;
                }
            }
            BatchState::Cancelled => b.times.cancelled = t,
            _ => {}
        }
        b.state = state;
        b.next_step = None;
        if b.protocol == Protocol::OpenAi && state != BatchState::Failed {
            self.write_files(b);
        }
    }

    /// Creates the output file (2xx lines) and the error file (the rest), each only when it
    /// has a line; the generated files take the batch's lines as they are, no copy.
    fn write_files(&mut self, b: &mut Batch) {
        let c = b.counts();
        let created_ms = now_ms();
        for errors in [false, true] {
            let has = if errors {
                c.errored + c.expired + c.cancelled > 0
            } else {
                c.succeeded > 0
            };
            if !has {
                continue;
            }
            let seq = self.next_seq();
            let id = hex_id("file-", seq, 0xf11e);
            let kind = if errors { "error" } else { "output" };
            self.add_file(FileObj {
                id: id.clone(),
                filename: format!("{}_{kind}.jsonl", b.id),
                purpose: "batch_output".into(),
                created_ms,
                bytes: 0,
                content: FileContent::Output {
                    batch: b.id.clone(),
                    errors,
                },
            });
            if errors {
                b.error_file_id = Some(id);
            } else {
                b.output_file_id = Some(id);
            }
        }
        self.refresh_files(b);
    }

    /// Recomputes the `bytes` of a batch's generated files (after drops).
    fn refresh_files(&mut self, b: &Batch) {
        for (fid, errors) in [(&b.output_file_id, false), (&b.error_file_id, true)] {
            if let Some(f) = fid.as_ref().and_then(|id| self.files.get_mut(id)) {
                f.bytes = b
                    .finished
                    .iter()
                    .map(|i| &b.lines[*i as usize])
                    .filter(|l| !l.dropped)
                    .filter_map(|l| (self.render_line)(l, errors))
                    .map(|s| s.len() as u64 + 1)
                    .sum();
            }
        }
    }

    pub(crate) fn info(&self, id: &str) -> Option<BatchInfo> {
        let b = self.batches.get(id)?;
        let c = b.counts();
        Some(BatchInfo {
            id: b.id.clone(),
            protocol: b.protocol,
            state: b.state,
            name: b.name.clone(),
            metadata: b.metadata.clone(),
            total: b.lines.len(),
            succeeded: c.succeeded,
            errored: c.errored,
            expired: c.expired,
            cancelled: c.cancelled,
            custom_ids: b.lines.iter().map(|l| l.custom_id.to_string()).collect(),
        })
    }

    /// Ids of one protocol's batches, newest first.
    pub(crate) fn newest_first(&self, p: Protocol) -> Vec<&Batch> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.batches.get(id))
            .filter(|b| b.protocol == p)
            .collect()
    }
}

fn target(n: usize, fraction: f64) -> usize {
    ((n as f64) * fraction.clamp(0.0, 1.0)).round() as usize
}

fn append_shuffled(b: &mut Batch, fresh: Vec<u32>) {
    if fresh.is_empty() {
        return;
    }
    b.chunks += 1;
    let perm = Perm::new(fresh.len(), mix(hash_str(&b.id) ^ b.chunks));
    let finished = Arc::make_mut(&mut b.finished);
    finished.extend((0..fresh.len()).map(|k| fresh[perm.at(k)]));
}

/// Answers one line with the live route's logic; a fault scripted for its custom id (or
/// by the responder) becomes an HTTP error line.
fn answer_line(
    st: &State,
    faults: &mut HashMap<Box<str>, Fault>,
    line: &mut Line,
    seq: u64,
    now: u64,
) {
    line.seq = seq;
    line.finished_ms = now;
    let req: Value = match serde_json::from_slice(&line.body) {
        Ok(v) => v,
        Err(e) => {
            line.outcome = Outcome::HttpError {
                status: 400,
                code: None,
                message: format!("request body is not valid JSON: {e}").into(),
            };
            return;
        }
    };
    let d = decide(st, &req);
    let fault = faults.remove(&*line.custom_id).or(d.fault);
    line.outcome = match fault.as_ref().and_then(http_failure) {
        Some((status, code, message)) => Outcome::HttpError {
            status,
            code: code.map(Into::into),
            message: message.into(),
        },
        None => Outcome::Answered {
            content: d.content.into(),
            model: d.model.into(),
            prompt_chars: u32::try_from(d.prompt_chars).unwrap_or(u32::MAX),
        },
    };
}

/// The HTTP error a fault stands for inside a batch (`None`: it still answers).
pub(crate) fn http_failure(f: &Fault) -> Option<(u16, Option<String>, String)> {
    match f {
        Fault::Ok | Fault::Latency(_) => None,
        Fault::Status {
            status,
            code,
            message,
        } => Some((*status, code.clone(), message.clone())),
        Fault::RateLimited { .. } => Some((
            429,
            Some("rate_limit_exceeded".into()),
            "simulated rate limit".into(),
        )),
        Fault::InsufficientQuota => Some((
            429,
            Some("insufficient_quota".into()),
            "You exceeded your current quota, please check your plan and billing details.".into(),
        )),
        Fault::WithHeaders(_, inner) => http_failure(inner),
        Fault::Raw { status, body, .. } => Some((*status, None, body.clone())),
        Fault::Reset
        | Fault::Truncated
        | Fault::MalformedJson
        | Fault::WrongContentType
        | Fault::Huge(_) => Some((500, None, "simulated server error".into())),
    }
}

/// A fixed pseudo-random permutation of `0..n` in O(1) memory: `k * stride + offset mod n`
/// with `stride` coprime to `n`.
#[derive(Clone, Copy)]
pub(crate) struct Perm {
    n: usize,
    stride: usize,
    offset: usize,
}

impl Perm {
    pub(crate) fn new(n: usize, seed: u64) -> Perm {
        if n <= 1 {
            return Perm {
                n: n.max(1),
                stride: 1,
                offset: 0,
            };
        }
        let mut stride = n / 2 + 1 + (seed as usize) % (n / 4 + 1);
        while gcd(stride, n) != 1 {
            stride += 1;
        }
        Perm {
            n,
            stride: stride % n,
            offset: (seed >> 17) as usize % n,
        }
    }

    pub(crate) fn at(&self, k: usize) -> usize {
        ((k as u128 * self.stride as u128 + self.offset as u128) % self.n as u128) as usize
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// splitmix64: ids and shuffles that look random but repeat run after run.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x1000_0000_01b3)
    })
}

/// `prefix` + 24 hex digits, OpenAI style (`batch_…`, `file-…`, `batch_req_…`).
pub(crate) fn hex_id(prefix: &str, seq: u64, salt: u64) -> String {
    let a = mix(seq ^ salt.rotate_left(32));
    let b = mix(a ^ seq);
    format!("{prefix}{a:016x}{:08x}", b as u32)
}

/// `prefix` + 24 base-62 characters, Anthropic style (`msgbatch_…`, `msg_…`).
pub(crate) fn b62_id(prefix: &str, seq: u64, salt: u64) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut x = mix(seq ^ salt);
    let mut y = mix(x ^ 0x5eed);
    let mut s = String::from(prefix);
    s.push_str("01");
    for i in 0..22 {
        let v = if i < 11 { &mut x } else { &mut y };
        s.push(A[(*v % 62) as usize] as char);
        *v /= 62;
    }
    s
}

/// A UUID-shaped id (xAI's `batch_…` and generated `batch_request_id`s).
pub(crate) fn uuid(seq: u64, salt: u64) -> String {
    let a = mix(seq ^ salt);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// RFC 3339 in UTC with milliseconds, e.g. `2024-08-20T18:37:24.100Z`.
pub(crate) fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// A body produced chunk by chunk, so a result file of 100k lines is never held whole.
struct ChunkedBody {
    next: Box<dyn FnMut() -> Option<Bytes> + Send + Sync>,
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        Poll::Ready((this.next)().map(|b| Ok(Frame::data(b))))
    }
}

/// Streams the finished lines of a batch in result order, one rendered line each (`None`
/// skips the line), about 64 KiB a frame.
pub(crate) fn stream_lines<F>(lines: Arc<Vec<Line>>, order: Arc<Vec<u32>>, render: F) -> SimBody
where
    F: Fn(&Line) -> Option<String> + Send + Sync + 'static,
{
    let mut pos = 0;
    let next = move || {
        let mut buf = String::new();
        while pos < order.len() && buf.len() < 64 * 1024 {
            let line = &lines[order[pos] as usize];
            pos += 1;
            if line.dropped {
                continue;
            }
            if let Some(s) = render(line) {
                buf.push_str(&s);
                buf.push('\n');
            }
        }
        (!buf.is_empty()).then(|| Bytes::from(buf))
    };
    ChunkedBody {
        next: Box::new(next),
    }
    .boxed()
}
