//! `chain_of_thought`: asks for one reasoning step per line and a last `Answer:` line.

use super::{Definition, Execution};
use crate::memory::reply::plain;

pub(super) const DEFINITION: Definition = Definition {
    name: "chain_of_thought",
    instructions: Some(
        "Think step by step. Write each reasoning step on its own line, then finish \
         with a last line of the form `Answer: <final answer>`.",
    ),
    extract: plain,
    execution: Execution::OneCall,
};
