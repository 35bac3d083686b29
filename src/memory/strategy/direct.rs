//! `direct`: the request as written; the answer is the reply (or its `Answer:` line).

use super::{Definition, Execution};
use crate::memory::reply::plain;

pub(super) const DEFINITION: Definition = Definition {
    name: "direct",
    instructions: None,
    extract: plain,
    execution: Execution::OneCall,
};
