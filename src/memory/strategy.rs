//! Reasoning strategies: how each shapes a request and reads the answer back, and the UCB1
//! bandit that picks one per domain when a line names none.

use std::fmt;
use std::str::FromStr;

use redb::ReadTransaction;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reply::{self, Extracted};
use super::{pattern, structured};
use crate::error::Result;

/// A way of asking the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The request as written; the answer is the reply (or its `Answer:` line).
    Direct,
    /// Asks for numbered steps and a final `Answer:` line.
    #[serde(alias = "chain-of-thought")]
    ChainOfThought,
    /// Asks for JSON `{answer, reasoning, confidence}` (see [`super::structured`]).
    Structured,
    /// Multi-step reasoning on a durable blackboard (src/blackboard/).
    Blackboard,
}

impl Strategy {
    /// Every strategy, in the order ties are broken.
    pub const ALL: [Strategy; 4] = [
        Strategy::Direct,
        Strategy::ChainOfThought,
        Strategy::Structured,
        Strategy::Blackboard,
    ];

    /// The name used in input lines, experiences and patterns.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::ChainOfThought => "chain_of_thought",
            Strategy::Structured => "structured",
            Strategy::Blackboard => "blackboard",
        }
    }

    /// The system prompt this strategy adds, if any.
    pub fn instructions(self) -> Option<&'static str> {
        match self {
            Strategy::Direct | Strategy::Blackboard => None,
            Strategy::ChainOfThought => Some(
                "Think step by step. Write each reasoning step on its own line, then finish \
                 with a last line of the form `Answer: <final answer>`.",
            ),
            Strategy::Structured => Some(structured::INSTRUCTIONS),
        }
    }

    /// Reads answer, reasoning and confidence out of the model's reply.
    pub fn extract(self, content: &str) -> Extracted {
        match self {
            Strategy::Structured => structured::parse(content),
            _ => reply::plain(content),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    /// Accepts the names of [`Strategy::name`] (and `chain-of-thought`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().replace('-', "_");
        Strategy::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|k| k.name()).collect();
                format!("unknown strategy {s:?}; one of {}", names.join(", "))
            })
    }
}

/// Adds system messages to a chat request, after the caller's own leading system messages
/// (so theirs still come first), as one message.
pub fn add_system_text(body: &mut Value, texts: &[String]) {
    let texts: Vec<&str> = texts
        .iter()
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .collect();
    if texts.is_empty() {
        return;
    }
    let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) else {
        return;
    };
    let at = messages
        .iter()
        .take_while(|m| matches!(m["role"].as_str(), Some("system" | "developer")))
        .count();
    messages.insert(
        at,
        serde_json::json!({"role": "system", "content": texts.join("\n\n")}),
    );
}

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
    Ok(choose(&arms).unwrap_or(Strategy::Direct))
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
            (Strategy::Direct, arm(3, 3, 0)),
            (Strategy::Structured, arm(0, 0, 0)),
            (Strategy::ChainOfThought, arm(0, 0, 0)),
        ];
        assert_eq!(choose(&arms), Some(Strategy::Structured));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn after_evidence_the_better_arm_wins_and_ties_are_stable() {
        let arms = [
            (Strategy::Direct, arm(20, 4, 16)),
            (Strategy::ChainOfThought, arm(20, 17, 3)),
        ];
        assert_eq!(choose(&arms), Some(Strategy::ChainOfThought));
        let tied = [
            (Strategy::Structured, arm(5, 2, 2)),
            (Strategy::Direct, arm(5, 2, 2)),
        ];
        assert_eq!(choose(&tied), Some(Strategy::Structured));
        // A little-tried arm is still explored when the leader is only slightly better.
        let explore = [
            (Strategy::Direct, arm(100, 60, 40)),
            (Strategy::Structured, arm(1, 0, 1)),
        ];
        assert_eq!(choose(&explore), Some(Strategy::Structured));
    }

    #[test]
    fn names_parse_back_and_unknown_ones_are_listed() {
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        assert_eq!("chain-of-thought".parse(), Ok(Strategy::ChainOfThought));
        assert!("tree"
            .parse::<Strategy>()
            .unwrap_err()
            .contains("one of direct"));
    }

    #[test]
    fn system_text_goes_after_the_callers_system_messages() {
        let mut body = serde_json::json!({"messages":[
            {"role":"system","content":"mine"},{"role":"user","content":"q"}]});
        add_system_text(&mut body, &["ours".into(), String::new()]);
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["mine", "ours", "q"]);
    }
}
