//! The durable blackboard: multi-step reasoning as one job.
//!
//! A session holds typed [`Entry`]s (problem, sub-problems, partial solutions, critiques,
//! final answer) in redb. Knowledge sources ([`sources`]: decompose, solve, critique,
//! synthesize) each read the board and write entries through one LLM call made through the
//! [`Gateway`](crate::runner::Gateway). A controller ([`controller::next_action`]) picks the next
//! source by explicit rules under a step limit. After every step the new entries and the job's
//! checkpoint are committed in one transaction, so a crashed or stopped session resumes at
//! the next step and never pays for a completed one twice. See `docs/blackboard.md`.

pub mod board;
pub mod controller;
mod run;
pub mod sources;

use serde::{Deserialize, Serialize};

pub use board::{load_read, session_id, Board};
pub(crate) use run::run;

/// The knowledge sources, by the name their entries carry.
pub const DECOMPOSE: &str = "decompose";
pub const SOLVE: &str = "solve";
pub const CRITIQUE: &str = "critique";
pub const SYNTHESIZE: &str = "synthesize";
/// Entries written without a call (the problem, fallbacks).
pub const CONTROLLER: &str = "controller";

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The question the session answers (entry 0).
    Problem,
    /// One part of the problem, from decompose.
    SubProblem,
    /// A solution of one sub-problem (`parent`), from solve.
    Partial,
    /// The critic's verdict (`accepted`) on the partial solutions; `parent` is the
    /// sub-problem it asks to redo.
    Critique,
    /// The answer of the session.
    Final,
    /// Model output a source could not use, kept as it came.
    Rejected,
}

impl EntryKind {
    /// Lower-case name, as in `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Problem => "problem",
            EntryKind::SubProblem => "sub_problem",
            EntryKind::Partial => "partial",
            EntryKind::Critique => "critique",
            EntryKind::Final => "final",
            EntryKind::Rejected => "rejected",
        }
    }
}

/// One typed note on the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position on the board, from 0 (the problem).
    pub seq: u32,
    pub kind: EntryKind,
    /// The entry this one is about (a sub-problem's seq).
    pub parent: Option<u32>,
    /// The knowledge source that wrote it (`decompose`, `solve`, ...) or `controller`.
    pub source: String,
    pub text: String,
    /// A critique's verdict: accepted or asking for a revision.
    pub accepted: Option<bool>,
    /// The step that wrote it (0: the session's creation).
    pub step: u32,
    pub created_at: u64,
}

impl crate::codec::Record for Entry {}

/// Whether a session has its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Running,
    Done,
}

/// A blackboard session: one job's board and its running totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// `bb-<job id>`.
    pub id: String,
    pub job_id: u64,
    pub problem: String,
    pub domain: String,
    pub created_at: u64,
    pub state: SessionState,
    /// LLM steps committed so far.
    pub steps_done: u32,
    pub final_answer: Option<String>,
    /// Model that answered the last step.
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Steps answered from the prompt cache.
    pub cached_steps: u32,
}

impl crate::codec::Record for Session {}
