//! Knowledge sources: the prompt each one sends and how its answer becomes board entries.
//!
//! Prompts are plain text and name their role in the first words ("You are the
//! decomposer ..."), so a scripted test server can tell them apart. Answers are parsed
//! tolerantly; output a source cannot use is kept as a [`EntryKind::Rejected`] entry and the
//! board moves on (a fallback sub-problem, an attempted solve, a final from the best partial).

use std::fmt::Write as _;

use super::controller::Action;
use super::{Board, EntryKind, CONTROLLER, CRITIQUE, DECOMPOSE, SOLVE, SYNTHESIZE};

/// Most sub-problems kept from a decomposition.
pub const MAX_SUB_PROBLEMS: usize = 5;

/// The knowledge source that runs an action (None: no call).
pub fn source_of(action: Action) -> Option<&'static str> {
    match action {
        Action::Decompose => Some(DECOMPOSE),
        Action::Solve { .. } | Action::Revise { .. } => Some(SOLVE),
        Action::Critique => Some(CRITIQUE),
        Action::Synthesize => Some(SYNTHESIZE),
        Action::FinalFromBest | Action::Done => None,
    }
}

/// The prompt of an action that calls the model.
pub fn prompt(board: &Board, action: Action) -> String {
    let problem = &board.session.problem;
    match action {
        Action::Decompose => format!(
            "You are the decomposer on a reasoning blackboard.\n\nProblem:\n{problem}\n\n\
             Break the problem into at most {MAX_SUB_PROBLEMS} sub-problems that, solved in \
             order, answer it. Reply with a numbered list only, one sub-problem per line \
             (\"1. ...\"). A simple problem may have a single sub-problem."
        ),
        Action::Solve { sub } | Action::Revise { sub, .. } => {
            let mut p =
                format!("You are a solver on a reasoning blackboard.\n\nProblem:\n{problem}\n\n");
            let solved = solved_list(board, Some(sub));
            if !solved.is_empty() {
                let _ = write!(p, "Solved so far:\n{solved}\n");
            }
            let text = entry_text(board, sub);
            let _ = writeln!(p, "Solve this sub-problem: {text}");
            if let Action::Revise { critique, .. } = action {
                let previous = board.latest_partial(sub).map_or("", |e| e.text.as_str());
                let _ = write!(
                    p,
                    "\nYour previous solution:\n{previous}\n\nThe critic said:\n{}\n\n\
                     Solve it again, fixing what the critic found.\n",
                    entry_text(board, critique)
                );
            }
            p.push_str("Reply with the solution only.");
            p
        }
        Action::Critique => format!(
            "You are the critic on a reasoning blackboard.\n\nProblem:\n{problem}\n\n\
             Proposed solutions of its sub-problems:\n{}\n\
             Check them. Reply ACCEPT on the first line if they are correct and complete, or \
             REVISE <number> naming the one sub-problem to redo; then your reasons.",
            solved_list(board, None)
        ),
        Action::Synthesize | Action::FinalFromBest | Action::Done => {
            let mut p = format!(
                "You are the synthesizer on a reasoning blackboard.\n\nProblem:\n{problem}\n\n"
            );
            let solved = solved_list(board, None);
            if !solved.is_empty() {
                let _ = write!(p, "Solutions of its sub-problems:\n{solved}\n");
            }
            if let Some(c) = board
                .latest_from(CRITIQUE)
                .filter(|c| c.kind == EntryKind::Critique)
            {
                let _ = write!(p, "The critic's last word:\n{}\n\n", c.text);
            }
            p.push_str("Write the final answer to the problem. Reply with the answer only.");
            p
        }
    }
}

/// Records the model's answer to `action` on the board.
pub fn apply(board: &mut Board, action: Action, answer: &str, now: u64) {
    let answer = answer.trim();
    match action {
        Action::Decompose => {
            let subs = parse_list(answer);
            if subs.is_empty() {
                board.push(EntryKind::Rejected, None, DECOMPOSE, answer, None, now);
                // Without a usable decomposition the whole problem is the one sub-problem.
                let problem = board.session.problem.clone();
                board.push(
                    EntryKind::SubProblem,
                    Some(0),
                    CONTROLLER,
                    problem,
                    None,
                    now,
                );
            }
            for sub in subs {
                board.push(EntryKind::SubProblem, Some(0), DECOMPOSE, sub, None, now);
            }
        }
        Action::Solve { sub } | Action::Revise { sub, .. } => {
            let kind = if answer.is_empty() {
                EntryKind::Rejected
            } else {
                EntryKind::Partial
            };
            board.push(kind, Some(sub), SOLVE, answer, None, now);
        }
        Action::Critique => match parse_verdict(answer) {
            Some((accepted, n, reasons)) => {
                let subs: Vec<u32> = board.sub_problems().map(|e| e.seq).collect();
                // REVISE without a usable number means the last sub-problem.
                let target = (!accepted).then(|| {
                    n.and_then(|n| subs.get(n.checked_sub(1)?).copied())
                        .or(subs.last().copied())
                });
                let parent = target.flatten();
                board.push(
                    EntryKind::Critique,
                    parent,
                    CRITIQUE,
                    reasons,
                    Some(accepted),
                    now,
                );
            }
            None => {
                board.push(EntryKind::Rejected, None, CRITIQUE, answer, None, now);
            }
        },
        Action::Synthesize => {
            if answer.is_empty() {
                board.push(EntryKind::Rejected, None, SYNTHESIZE, answer, None, now);
                final_from_best(board, now);
            } else {
                board.push(EntryKind::Final, None, SYNTHESIZE, answer, None, now);
            }
        }
        Action::FinalFromBest => final_from_best(board, now),
        Action::Done => {}
    }
}

/// The latest partial solution becomes the final answer (no call).
pub fn final_from_best(board: &mut Board, now: u64) {
    let best = board
        .entries
        .iter()
        .rev()
        .find(|e| e.kind == EntryKind::Partial)
        .map_or_else(
            || "(no answer: the session ended before any solution)".to_string(),
            |e| e.text.clone(),
        );
    board.push(EntryKind::Final, None, CONTROLLER, best, None, now);
}

fn entry_text(board: &Board, seq: u32) -> &str {
    board
        .entries
        .get(seq as usize)
        .map_or("", |e| e.text.as_str())
}

/// "1. sub-problem\n   -> latest solution" for each solved sub-problem except `skip`.
fn solved_list(board: &Board, skip: Option<u32>) -> String {
    let mut out = String::new();
    for (i, sub) in board.sub_problems().enumerate() {
        if Some(sub.seq) == skip {
            continue;
        }
        if let Some(p) = board.latest_partial(sub.seq) {
            let _ = writeln!(out, "{}. {}\n   -> {}", i + 1, sub.text, p.text);
        }
    }
    out
}

/// Items of a numbered or bulleted list ("1. a", "2) b", "- c"), at most
/// [`MAX_SUB_PROBLEMS`]; lines that are not items are ignored.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.trim_start_matches(|c: char| c.is_ascii_digit());
            let item = if rest.len() < line.len() {
                rest.strip_prefix(['.', ')', ':'])?
            } else {
                rest.strip_prefix(['-', '*', '•'])?
            };
            let item = item.trim();
            (!item.is_empty()).then(|| item.to_string())
        })
        .take(MAX_SUB_PROBLEMS)
        .collect()
}

/// A critic's answer: (accepted, sub-problem number to redo, reasons). The verdict is the
/// first word of the first non-empty line, in any case, with markdown emphasis ignored.
pub fn parse_verdict(text: &str) -> Option<(bool, Option<usize>, String)> {
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let first = lines.next()?.trim().trim_matches(['*', '#', ' ']);
    let upper = first.to_ascii_uppercase();
    let accepted = if upper.starts_with("ACCEPT") {
        true
    } else if upper.starts_with("REVISE") {
        false
    } else {
        return None;
    };
    let number = first
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok());
    let rest: Vec<&str> = lines.collect();
    let reasons = rest.join("\n").trim().to_string();
    let reasons = if reasons.is_empty() {
        first.to_string()
    } else {
        reasons
    };
    Some((accepted, number, reasons))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_parsed_tolerantly_and_capped() {
        let text = "Here is the plan:\n1. find x\n2) find y\n- check\n\n7: done\n8. a\n9. b";
        assert_eq!(parse_list(text), ["find x", "find y", "check", "done", "a"]);
        assert!(parse_list("no list here").is_empty());
        assert!(parse_list("").is_empty());
        assert!(parse_list("1999 was a year").is_empty());
    }

    #[test]
    fn verdicts_accept_revise_with_number_or_nothing() {
        assert_eq!(
            parse_verdict("ACCEPT\nall good"),
            Some((true, None, "all good".into()))
        );
        assert_eq!(
            parse_verdict("\n**Revise 2**\nstep 2 is wrong"),
            Some((false, Some(2), "step 2 is wrong".into()))
        );
        assert_eq!(
            parse_verdict("REVISE"),
            Some((false, None, "REVISE".into()))
        );
        assert_eq!(parse_verdict("looks fine to me"), None);
        assert_eq!(parse_verdict(""), None);
    }
}
