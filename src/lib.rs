//! reasonq: durable, offline batch reasoning with LLMs.
#![forbid(unsafe_code)]
pub mod llm;
pub mod sim;
