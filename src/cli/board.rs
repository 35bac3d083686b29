//! `reasonq board SESSION`: a blackboard session as a readable tree, or `--json`.

use serde_json::json;

use reasonq::app::{inspect, App};
use reasonq::chat::blackboard::{Board, Entry, EntryKind, SessionState};
use reasonq::config::Config;

use super::print::print_json;
use super::{fail, CliResult, Outcome};

/// Prints session `session` (`bb-<job id>`, or just the job id).
pub async fn board(config: Config, session: String, as_json: bool) -> CliResult {
    let app = App::open(config).await.map_err(fail)?;
    let found = inspect::board(&app, &session).await;
    app.close().await.map_err(fail)?;
    let board = found
        .map_err(fail)?
        .ok_or_else(|| fail(format!("no blackboard session `{session}`")))?;
    if as_json {
        return print_json(&json!({"session": board.session, "entries": board.entries}));
    }
    emit!("{}", render(&board).trim_end())?;
    Ok(Outcome::Done)
}

/// The board as a tree: the problem, each sub-problem with its solutions and critiques,
/// then the other entries (unrelated critiques, rejected output, the final answer).
fn render(board: &Board) -> String {
    let s = &board.session;
    let state = match s.state {
        SessionState::Running => "running",
        SessionState::Done => "done",
    };
    let mut out = format!(
        "board {} · job {} · domain {} · {state} · {} steps · {} tokens\n",
        s.id,
        s.job_id,
        s.domain,
        s.steps_done,
        s.prompt_tokens + s.completion_tokens
    );
    out.push_str(&format!("problem: {}\n", indent(&s.problem, "         ")));
    let subs: Vec<&Entry> = board.sub_problems().collect();
    let is_sub = |seq: u32| subs.iter().any(|e| e.seq == seq);
    let mut top: Vec<(String, Vec<String>)> = Vec::new();
    let mut n = 0;
    for e in &board.entries {
        if e.kind == EntryKind::Problem || e.parent.is_some_and(is_sub) {
            continue;
        }
        if e.kind == EntryKind::SubProblem {
            n += 1;
            let children = board
                .entries
                .iter()
                .filter(|c| c.parent == Some(e.seq))
                .map(label)
                .collect();
            top.push((format!("{n}. {}", e.text), children));
        } else {
            top.push((label(e), Vec::new()));
        }
    }
    for (i, (text, children)) in top.iter().enumerate() {
        let last = i + 1 == top.len();
        let (branch, rail) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        out.push_str(&format!(
            "{branch}{}\n",
            indent(text, &format!("{rail}   "))
        ));
        for (j, child) in children.iter().enumerate() {
            let child_last = j + 1 == children.len();
            let b = if child_last { "└─ " } else { "├─ " };
            let r = if child_last { "   " } else { "│  " };
            let cont = format!("{rail}{r}   ");
            out.push_str(&format!("{rail}{b}{}\n", indent(child, &cont)));
        }
    }
    out
}

/// "kind (source, step n): text", with a critique's verdict.
fn label(e: &Entry) -> String {
    let kind = match (e.kind, e.accepted) {
        (EntryKind::Critique, Some(true)) => "critique ACCEPT".to_string(),
        (EntryKind::Critique, Some(false)) => "critique REVISE".to_string(),
        (kind, _) => kind.as_str().replace('_', "-"),
    };
    let text = if e.text.is_empty() {
        "(empty)"
    } else {
        &e.text
    };
    format!("{kind} ({}, step {}): {text}", e.source, e.step)
}

/// Continuation lines of a multi-line text, indented under the first.
fn indent(text: &str, prefix: &str) -> String {
    let lines: Vec<String> = text
        .trim_end()
        .lines()
        .enumerate()
        .map(|(i, line)| match i {
            0 => line.to_string(),
            _ => format!("{prefix}{line}").trim_end().to_string(),
        })
        .collect();
    lines.join("\n")
}
