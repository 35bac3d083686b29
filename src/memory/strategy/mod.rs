//! Reasoning strategies: how each shapes a request and reads the answer back, and whether it
//! is one call or the multi-step blackboard. Each strategy is one file here with its
//! [`Definition`]; [`Strategy::ALL`] registers them. The bandit that picks one is in
//! [`super::bandit`].

mod blackboard;
mod chain_of_thought;
mod direct;
pub mod structured;

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub use super::reply::Extracted;

/// How a strategy runs a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// One call, shaped by the strategy's instructions (and memory).
    OneCall,
    /// A durable multi-step session on the blackboard (`chat::blackboard`).
    Blackboard,
}

/// What a strategy is.
#[derive(Debug)]
pub struct Definition {
    /// The name used in input lines, configuration, experiences and patterns.
    pub name: &'static str,
    /// The system prompt it adds to a request, if any.
    pub instructions: Option<&'static str>,
    /// Reads answer, reasoning and confidence out of the model's reply.
    pub extract: fn(&str) -> Extracted,
    pub execution: Execution,
}

/// A way of asking the model: one of [`Strategy::ALL`]. Compared, hashed, printed and
/// (de)serialized by name.
#[derive(Clone, Copy)]
pub struct Strategy(&'static Definition);

impl Strategy {
    /// The request as written; the answer is the reply (or its `Answer:` line).
    pub const DIRECT: Strategy = Strategy(&direct::DEFINITION);
    /// Asks for numbered steps and a final `Answer:` line.
    pub const CHAIN_OF_THOUGHT: Strategy = Strategy(&chain_of_thought::DEFINITION);
    /// Asks for JSON `{answer, reasoning, confidence}` (see [`structured`]).
    pub const STRUCTURED: Strategy = Strategy(&structured::DEFINITION);
    /// Multi-step reasoning on a durable blackboard (`src/chat/blackboard/`).
    pub const BLACKBOARD: Strategy = Strategy(&blackboard::DEFINITION);

    /// Every strategy, in the order ties are broken: a new strategy is one file and one
    /// line here.
    pub const ALL: [Strategy; 4] = [
        Strategy::DIRECT,
        Strategy::CHAIN_OF_THOUGHT,
        Strategy::STRUCTURED,
        Strategy::BLACKBOARD,
    ];

    /// The name used in input lines, experiences and patterns.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The system prompt this strategy adds, if any.
    pub fn instructions(self) -> Option<&'static str> {
        self.0.instructions
    }

    /// Reads answer, reasoning and confidence out of the model's reply.
    pub fn extract(self, content: &str) -> Extracted {
        (self.0.extract)(content)
    }

    /// How it runs a job.
    pub fn execution(self) -> Execution {
        self.0.execution
    }

    fn rank(self) -> usize {
        Strategy::ALL
            .iter()
            .position(|s| s.name() == self.name())
            .unwrap_or(usize::MAX)
    }
}

impl PartialEq for Strategy {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Strategy {}

impl Hash for Strategy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl PartialOrd for Strategy {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Strategy {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl fmt::Debug for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Strategy({})", self.name())
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    /// Accepts the names of [`Strategy::name`], with `-` for `_` (`chain-of-thought`).
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

impl Serialize for Strategy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_listed() {
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        assert_eq!("chain-of-thought".parse(), Ok(Strategy::CHAIN_OF_THOUGHT));
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
