//! The UCB1 bandit that picks a strategy per domain when a line names none, from the
//! domain's patterns.

use redb::ReadTransaction;

use super::pattern;
use super::strategy::Strategy;
use crate::error::Result;

/// What the bandit knows of one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arm {
    /// Times the strategy was used in the domain.
    pub uses: u64,
    pub successes: u64,
    pub failures: u64,
}

/// UCB1 over `arms` (in configured order). An arm never used is tried first; otherwise each
/// scores `(s + 1) / (n + 2) + sqrt(2 ln(N + 1) / (n + 1))` with `n` its judged uses
/// (successes + failures) and `N` theirs summed: the Laplace-smoothed mean keeps arms whose
/// outcomes are all unknown comparable. Ties go to the earlier arm, so the choice is
/// deterministic. `None` only when `arms` is empty.
pub fn choose(arms: &[(Strategy, Arm)]) -> Option<Strategy> {
    if let Some((s, _)) = arms.iter().find(|(_, a)| a.uses == 0) {
        return Some(*s);
    }
    let total: u64 = arms.iter().map(|(_, a)| a.successes + a.failures).sum();
    let ln = ((total + 1) as f64).ln();
    let score = |a: &Arm| {
        let n = (a.successes + a.failures) as f64;
        (a.successes as f64 + 1.0) / (n + 2.0) + (2.0 * ln / (n + 1.0)).sqrt()
    };
    let mut best: Option<(Strategy, f64)> = None;
    for (s, a) in arms {
        let v = score(a);
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((*s, v));
        }
    }
    best.map(|(s, _)| s)
}

/// [`choose`] among `configured` from the patterns of `domain` (direct when none configured).
pub fn choose_read(
    txn: &ReadTransaction,
    domain: &str,
    configured: &[Strategy],
) -> Result<Strategy> {
    let mut arms = Vec::with_capacity(configured.len());
    for &s in configured {
        let arm = pattern::get_read(txn, domain, s.name())?.map_or(Arm::default(), |p| Arm {
            uses: p.uses,
            successes: p.successes,
            failures: p.failures,
        });
        arms.push((s, arm));
    }
    Ok(choose(&arms).unwrap_or(Strategy::DIRECT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(uses: u64, successes: u64, failures: u64) -> Arm {
        Arm {
            uses,
            successes,
            failures,
        }
    }

    #[test]
    fn untried_arms_go_first_in_configured_order() {
        let arms = [
            (Strategy::DIRECT, arm(3, 3, 0)),
            (Strategy::STRUCTURED, arm(0, 0, 0)),
            (Strategy::CHAIN_OF_THOUGHT, arm(0, 0, 0)),
        ];
        assert_eq!(choose(&arms), Some(Strategy::STRUCTURED));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn after_evidence_the_better_arm_wins_and_ties_are_stable() {
        let arms = [
            (Strategy::DIRECT, arm(20, 4, 16)),
            (Strategy::CHAIN_OF_THOUGHT, arm(20, 17, 3)),
        ];
        assert_eq!(choose(&arms), Some(Strategy::CHAIN_OF_THOUGHT));
        let tied = [
            (Strategy::STRUCTURED, arm(5, 2, 2)),
            (Strategy::DIRECT, arm(5, 2, 2)),
        ];
        assert_eq!(choose(&tied), Some(Strategy::STRUCTURED));
        // A little-tried arm is still explored when the leader is only slightly better.
        let explore = [
            (Strategy::DIRECT, arm(100, 60, 40)),
            (Strategy::STRUCTURED, arm(1, 0, 1)),
        ];
        assert_eq!(choose(&explore), Some(Strategy::STRUCTURED));
    }
}
