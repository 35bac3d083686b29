//! The controller: which knowledge source runs next, by explicit rules (docs/blackboard.md).

use super::{Board, EntryKind, CRITIQUE, DECOMPOSE, SOLVE};

/// Bounds of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// LLM steps in all; the last allowed one is always a synthesize.
    pub max_steps: u32,
    /// Re-solves a critic may ask for in a session.
    pub max_revisions: u32,
}

/// The next step of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Split the problem into sub-problems.
    Decompose,
    /// Solve sub-problem `sub` (its seq).
    Solve { sub: u32 },
    /// Solve sub-problem `sub` again in the light of critique `critique`.
    Revise { sub: u32, critique: u32 },
    /// Judge the partial solutions.
    Critique,
    /// Write the final answer.
    Synthesize,
    /// No step left (the limit was lowered under a running session): the best partial
    /// becomes the answer without a call.
    FinalFromBest,
    /// The board has its final answer.
    Done,
}

/// The rules, first match wins:
/// 1. a final answer -> done;
/// 2. no step left -> the best partial as final;
/// 3. one step left -> synthesize;
/// 4. not decomposed yet -> decompose;
/// 5. a sub-problem without a solve attempt -> solve it (one per step, in order);
/// 6. no critique since the latest partial -> critique;
/// 7. the critic asked to redo a sub-problem and revisions remain -> revise it;
/// 8. otherwise (accepted, unusable critique, revisions spent) -> synthesize.
pub fn next_action(board: &Board, limits: Limits) -> Action {
    let steps = board.session.steps_done;
    if board.final_answer().is_some() {
        return Action::Done;
    }
    if steps >= limits.max_steps {
        return Action::FinalFromBest;
    }
    if steps + 1 >= limits.max_steps {
        return Action::Synthesize;
    }
    if board.latest_from(DECOMPOSE).is_none() {
        return Action::Decompose;
    }
    let attempted = |sub: u32| {
        board
            .entries
            .iter()
            .any(|e| e.source == SOLVE && e.parent == Some(sub))
    };
    if let Some(sub) = board.sub_problems().find(|s| !attempted(s.seq)) {
        return Action::Solve { sub: sub.seq };
    }
    let last_partial = board
        .entries
        .iter()
        .rev()
        .find(|e| e.kind == EntryKind::Partial)
        .map(|e| e.seq);
    let critique = board.latest_from(CRITIQUE);
    match critique {
        None => return Action::Critique,
        Some(c) if last_partial.is_some_and(|p| p > c.seq) => return Action::Critique,
        _ => {}
    }
    if let Some(c) = critique {
        if let (EntryKind::Critique, Some(false), Some(sub)) = (c.kind, c.accepted, c.parent) {
            if revisions(board) < limits.max_revisions {
                return Action::Revise {
                    sub,
                    critique: c.seq,
                };
            }
        }
    }
    Action::Synthesize
}

/// Solve attempts beyond the first of each sub-problem.
fn revisions(board: &Board) -> u32 {
    let solves: Vec<u32> = board
        .entries
        .iter()
        .filter(|e| e.source == SOLVE)
        .filter_map(|e| e.parent)
        .collect();
    let mut distinct = solves.clone();
    distinct.sort_unstable();
    distinct.dedup();
    u32::try_from(solves.len() - distinct.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_steps: 8,
        max_revisions: 1,
    };

    fn board() -> Board {
        Board::start(1, "p", "d", 0)
    }

    /// Records one step's entries the way the runner does.
    fn step(b: &mut Board, entries: &[(EntryKind, Option<u32>, &str, Option<bool>)]) {
        b.session.steps_done += 1;
        for (kind, parent, source, accepted) in entries {
            b.push(*kind, *parent, source, "x", *accepted, 0);
        }
    }

    #[test]
    fn follows_decompose_solve_critique_revise_critique_synthesize() {
        let mut b = board();
        assert_eq!(next_action(&b, LIMITS), Action::Decompose);
        let sub = (EntryKind::SubProblem, None, DECOMPOSE, None);
        step(&mut b, &[sub, sub]);
        assert_eq!(next_action(&b, LIMITS), Action::Solve { sub: 1 });
        step(&mut b, &[(EntryKind::Partial, Some(1), SOLVE, None)]);
        assert_eq!(next_action(&b, LIMITS), Action::Solve { sub: 2 });
        step(&mut b, &[(EntryKind::Partial, Some(2), SOLVE, None)]);
        assert_eq!(next_action(&b, LIMITS), Action::Critique);
        step(
            &mut b,
            &[(EntryKind::Critique, Some(2), CRITIQUE, Some(false))],
        );
        assert_eq!(
            next_action(&b, LIMITS),
            Action::Revise {
                sub: 2,
                critique: 5
            }
        );
        step(&mut b, &[(EntryKind::Partial, Some(2), SOLVE, None)]);
        assert_eq!(next_action(&b, LIMITS), Action::Critique);
        // A second REVISE: the one revision is spent, so synthesize.
        step(
            &mut b,
            &[(EntryKind::Critique, Some(1), CRITIQUE, Some(false))],
        );
        assert_eq!(next_action(&b, LIMITS), Action::Synthesize);
        step(&mut b, &[(EntryKind::Final, None, "synthesize", None)]);
        assert_eq!(next_action(&b, LIMITS), Action::Done);
    }

    #[test]
    fn accepted_or_unusable_critique_synthesizes() {
        let mut b = board();
        step(&mut b, &[(EntryKind::SubProblem, None, DECOMPOSE, None)]);
        step(&mut b, &[(EntryKind::Partial, Some(1), SOLVE, None)]);
        step(&mut b, &[(EntryKind::Critique, None, CRITIQUE, Some(true))]);
        assert_eq!(next_action(&b, LIMITS), Action::Synthesize);
        b.entries.pop();
        step(&mut b, &[(EntryKind::Rejected, None, CRITIQUE, None)]);
        assert_eq!(next_action(&b, LIMITS), Action::Synthesize);
    }

    #[test]
    fn a_rejected_solve_counts_as_attempted() {
        let mut b = board();
        step(&mut b, &[(EntryKind::SubProblem, None, DECOMPOSE, None)]);
        step(&mut b, &[(EntryKind::Rejected, Some(1), SOLVE, None)]);
        assert_eq!(next_action(&b, LIMITS), Action::Critique);
    }

    #[test]
    fn the_last_step_synthesizes_and_none_left_takes_the_best_partial() {
        let limits = Limits {
            max_steps: 3,
            max_revisions: 1,
        };
        let mut b = board();
        let subs = [(EntryKind::SubProblem, None, DECOMPOSE, None); 3];
        step(&mut b, &subs);
        step(&mut b, &[(EntryKind::Partial, Some(1), SOLVE, None)]);
        assert_eq!(next_action(&b, limits), Action::Synthesize);
        b.session.steps_done = 3;
        assert_eq!(next_action(&b, limits), Action::FinalFromBest);
    }
}
