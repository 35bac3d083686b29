//! reasonq: durable, offline batch reasoning with LLMs.
//!
//! Layers, bottom up: [`store`] (one redb file, typed tables, a versioned codec and a
//! group-committing writer thread), [`queue`] (a durable job queue on the store), [`llm`] (a
//! tuned hyper client for OpenAI-compatible APIs) and [`sim`] (a loopback server that speaks
//! the same wire format), [`cache`] (a two-tier prompt cache), then [`worker`] (draining a
//! queue through cache and client), [`shutdown`] and [`background`] upkeep, and the
//! [`cli`] over them.
#![forbid(unsafe_code)]

pub mod app;
pub mod background;
pub mod batch;
pub mod blackboard;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod llm;
pub mod memory;
pub mod queue;
pub mod runs;
pub mod shutdown;
pub mod sim;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod worker;

pub use error::{Error, Result};
