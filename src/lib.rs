//! reasonq: durable, offline batch reasoning with LLMs.
//!
//! The layers, from the top down; each imports only from the layers below it (see
//! `docs/architecture.md`):
//!
//! - [`serve`]: `reasonq serve`, an OpenAI-compatible Files, Batch and chat-completions
//!   service over the use cases, in the process that runs the workers, and the results
//!   viewer ([`serve::view`], also `reasonq view`).
//! - [`app`]: the use cases ([`app::batch`], [`app::submit`], [`app::insights`], the read-only
//!   [`app::inspect`] queries, which [`app::live`] serves to other processes during a batch,
//!   and the viewer's [`app::view`] queries),
//!   the one place a [`config::Config`] becomes the parts
//!   ([`app::App`]), background [`app::upkeep`] and the [`app::runs`] records.
//! - [`config`]: `reasonq.toml`, `REASONQ_*` and flags as one typed configuration.
//! - [`batch`]: the batch files only: input lines, output lines, export in input order.
//! - [`chat`]: the chat job contract and its handler, the one-call strategies and the
//!   durable [`chat::blackboard`], all ending in one [`chat::finish`].
//! - [`memory`]: experiences and patterns, the full-text index and retrieval, judging,
//!   strategies and their bandit, prompts, rules and insights.
//! - [`runner`]: drains a queue with a handler per job kind; a running job's context
//!   ([`runner::JobCtx`]) and the one gateway for LLM calls ([`runner::Gateway`]).
//! - [`queue`], [`cache`]: the durable job queue and the two-tier prompt cache, on the store.
//! - [`store`]: the redb file, its typed tables and the group-committing writer thread (which
//!   also joins waiting writes of one kind, such as a burst of job completions, into one call).
//! - [`error`], [`codec`], [`cost`], [`llm`], [`sim`], [`shutdown`], [`clock`]: the ground
//!   floor: the error type, the versioned record codec, prices and token estimates, the tuned
//!   hyper client, the loopback server that speaks the providers' wire format, signal
//!   handling, time.
//!
//! The `reasonq` binary (`src/main.rs`, `src/cli/`) parses, calls a use case and prints.
#![forbid(unsafe_code)]

pub mod app;
pub mod batch;
pub mod cache;
pub mod chat;
pub mod clock;
pub mod codec;
pub mod config;
pub mod cost;
pub mod error;
pub mod llm;
pub mod memory;
pub mod queue;
pub mod runner;
pub mod serve;
pub mod shutdown;
pub mod sim;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};
