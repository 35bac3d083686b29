//! reasonq: durable, offline batch reasoning with LLMs.
//!
//! Layers, bottom up: [`store`] (one redb file, typed tables, a versioned codec and a
//! group-committing writer thread), [`queue`] (a durable job queue on the store), [`llm`] (a
//! tuned hyper client for OpenAI-compatible APIs), [`cache`] (a two-tier prompt cache), then
//! the worker runtime and the CLI.
#![forbid(unsafe_code)]

pub mod cache;
pub mod clock;
pub mod error;
pub mod store;

pub use error::{Error, Result};
