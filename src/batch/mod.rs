//! Batches: reading input files, turning lines into jobs, and writing results in OpenAI's
//! batch output format.

pub mod input;
pub mod output;
