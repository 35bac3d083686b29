//! Running a session as a job: one committed step at a time.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::controller::{next_action, Action, Limits};
use super::{board, sources, Board, EntryKind, Session, SessionState};
use crate::cache::Hit;
use crate::chat::engine::{bad_payload, Engine};
use crate::chat::finish::{finish, Answer};
use crate::chat::{question_of, saturate, ChatJob, ResponseRecord};
use crate::clock::now_ms;
use crate::codec;
use crate::error::Result;
use crate::memory::experience::{ExperienceData, NewExperience, Outcome};
use crate::queue::load_checkpoint_read;
use crate::runner::{ignore_lost, CacheWrite, CallError, JobCtx};

/// Re-solves the critic may ask for in one session.
const MAX_REVISIONS: u32 = 1;

/// The job's checkpoint: steps committed so far (the board holds the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    steps_done: u32,
}

impl crate::codec::Record for Progress {}

/// Runs (or resumes) the blackboard session of a leased job to a durable end state.
pub(crate) async fn run(engine: &Engine, ctx: JobCtx, job: ChatJob) -> Result<()> {
    let request: Value = match serde_json::from_str(&job.body) {
        Ok(v) => v,
        Err(e) => return bad_payload(&ctx, format!("request body is not JSON: {e}")).await,
    };
    // Stops when the session ends or its task is aborted.
    let _heartbeat = ctx.heartbeat();
    let limits = Limits {
        max_steps: engine.settings.blackboard_max_steps,
        max_revisions: MAX_REVISIONS,
    };
    let mut board = match open(&ctx, &job).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(()),
        Err(e) => return ignore_lost(e),
    };
    loop {
        let action = next_action(&board, limits);
        let first_new = u32::try_from(board.entries.len()).unwrap_or(u32::MAX);
        // A fresh response goes to the disk cache in its step's transaction.
        let cache_write = match action {
            Action::Done => return complete(engine, &ctx, &job, board).await,
            Action::FinalFromBest => {
                sources::final_from_best(&mut board, now_ms());
                None
            }
            _ => {
                let body = step_request(&request, &sources::prompt(&board, action));
                let (outcome, hit, write) = match engine.gateway.call_deferred(&body).await {
                    Ok(answer) => answer,
                    Err(CallError::Store(e)) => return Err(e),
                    Err(CallError::Llm(e)) => return ctx.fail_call(e).await,
                    Err(CallError::Halted(_)) => return ctx.release().await,
                };
                let usage = outcome.response.usage.clone().unwrap_or_default();
                let cached = matches!(hit, Hit::Memory | Hit::Disk);
                let s = &mut board.session;
                s.steps_done += 1;
                s.prompt_tokens += usage.prompt_tokens;
                s.completion_tokens += usage.completion_tokens;
                s.cached_steps += u32::from(cached);
                if let Some(model) = &outcome.response.model {
                    s.model.clone_from(model);
                }
                if !cached {
                    ctx.stats()
                        .add_tokens(usage.prompt_tokens, usage.completion_tokens);
                }
                let answer = outcome.response.content().unwrap_or_default().to_string();
                sources::apply(&mut board, action, &answer, now_ms());
                write
            }
        };
        if !commit_step(&ctx, &board, first_new, cache_write).await? {
            return Ok(());
        }
    }
}

/// The session of this job: resumed from the board, or created with its problem entry
/// (`None` when the lease was lost meanwhile).
async fn open(ctx: &JobCtx, job: &ChatJob) -> Result<Option<Board>> {
    let job_id = ctx.job().id;
    let found = ctx
        .store()
        .read(move |txn| {
            let board = board::load_read(txn, &board::session_id(job_id))?;
            let checkpoint = load_checkpoint_read(txn, job_id)?;
            Ok((board, checkpoint))
        })
        .await?;
    if let (Some(mut board), checkpoint) = found {
        // Entries and checkpoint commit together; the checkpoint is the step count of record.
        if let Some(bytes) = checkpoint {
            let progress: Progress = codec::decode(&bytes)?;
            board.session.steps_done = progress.steps_done;
        }
        return Ok(Some(board));
    }
    let board = Board::start(job_id, &question_of(&job.body), &job.domain, now_ms());
    let saved = commit_step(ctx, &board, 0, None).await?;
    Ok(saved.then_some(board))
}

/// Commits a step: its new entries, the session totals, the job's checkpoint and the step's
/// fresh response for the disk cache, in one fenced transaction. False when the lease was
/// lost.
async fn commit_step(
    ctx: &JobCtx,
    board: &Board,
    first_new: u32,
    cache_write: Option<CacheWrite>,
) -> Result<bool> {
    let progress = codec::encode(&Progress {
        steps_done: board.session.steps_done,
    })?;
    let board = board.clone();
    // Once the row is on disk the answer leaves the memory tier, as a completion's does.
    let settle = cache_write.as_ref().map(CacheWrite::settler);
    let committed = ctx
        .checkpoint(progress, move |txn| {
            if let Some(write) = &cache_write {
                write.put_in(txn)?;
            }
            board::save_in(txn, &board, first_new)
        })
        .await?;
    if let (true, Some(settle)) = (committed, settle) {
        settle();
    }
    Ok(committed)
}

/// The request of one step: the line's request (model, parameters, system prompt) with the
/// source's prompt as the one user message.
fn step_request(request: &Value, prompt: &str) -> Value {
    let mut body = request.clone();
    let mut messages: Vec<Value> = request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == "system")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    messages.push(json!({"role": "user", "content": prompt}));
    body["messages"] = Value::Array(messages);
    body
}

/// The job's result in the shape of any chat job, with the session id in the body.
fn response_body(session: &Session, answer: &str) -> Value {
    json!({
        "id": session.id,
        "object": "chat.completion",
        "created": session.created_at / 1000,
        "model": session.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": session.prompt_tokens,
            "completion_tokens": session.completion_tokens,
            "total_tokens": session.prompt_tokens + session.completion_tokens,
        },
        "board_session": session.id,
    })
}

/// Completes the job with the final answer and records the experience, in one transaction.
async fn complete(engine: &Engine, ctx: &JobCtx, job: &ChatJob, board: Board) -> Result<()> {
    let answer = board
        .final_answer()
        .map(|e| e.text.clone())
        .unwrap_or_default();
    let mut session = board.session.clone();
    session.state = SessionState::Done;
    session.final_answer = Some(answer.clone());
    let latency_ms = now_ms().saturating_sub(session.created_at);
    let all_cached = session.steps_done > 0 && session.cached_steps == session.steps_done;
    // The steps' billed tokens at the session model's prices (one model, linear prices).
    let spent = crate::cost::Tokens {
        prompt: session.prompt_tokens,
        cached: 0,
        output: session.completion_tokens,
    };
    let cost = engine.gateway.prices().cost(&session.model, &spent, false);
    let record = ResponseRecord {
        status_code: 200,
        request_id: None,
        body: response_body(&session, &answer).to_string(),
        cached: all_cached,
        latency_ms,
        provider_batch: None,
        cost,
        // Its steps each came from a tier of their own (or a fresh call).
        cache_tier: None,
    };
    let reasoning = board
        .entries
        .iter()
        .filter(|e| !matches!(e.kind, EntryKind::Problem | EntryKind::Final))
        .map(|e| format!("[{} {}] {}", e.source, e.kind.as_str(), e.text))
        .collect();
    // An evaluation line is judged on the final answer, like any other strategy.
    let outcome = job
        .expected
        .as_ref()
        .map_or(Outcome::Unknown, |x| x.judge(&answer));
    let experience = NewExperience {
        created_at: None,
        data: ExperienceData {
            question: session.problem.clone(),
            context: None,
            reasoning,
            answer,
            confidence: None,
            outcome,
            domain: job.domain.clone(),
            strategy: "blackboard".into(),
            tags: Vec::new(),
            model: session.model.clone(),
            prompt_tokens: saturate(session.prompt_tokens),
            completion_tokens: saturate(session.completion_tokens),
            latency_ms,
            job_id: Some(ctx.job().id),
            used_experiences: Vec::new(),
        },
    };
    let done = Board {
        session,
        entries: board.entries,
    };
    let first_new = u32::try_from(done.entries.len()).unwrap_or(u32::MAX);
    // Tokens were counted step by step.
    let answer = Answer {
        record,
        experience: Some(experience),
        tokens: None,
        // Each step's cache row was written with that step.
        cache: None,
    };
    finish(ctx, job, answer, move |txn, _now| {
        board::save_in(txn, &done, first_new)
    })
    .await
}
