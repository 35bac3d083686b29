//! `blackboard`: a durable multi-step session (decompose, solve, critique, synthesize),
//! run by `chat::blackboard`; its final answer is read as plain text.

use super::{Definition, Execution};
use crate::memory::reply::plain;

pub(super) const DEFINITION: Definition = Definition {
    name: "blackboard",
    instructions: None,
    extract: plain,
    execution: Execution::Blackboard,
};
