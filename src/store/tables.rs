//! Every redb table of the database, typed, in one place.
//!
//! Keys are redb tuples of fixed-width integers and strings. redb compares integer key parts
//! numerically and tuples part by part, so `(created_at, id)` and `(queue, priority, run_at, id)`
//! iterate in exactly the order range scans need (the effect big-endian byte keys would have).
//! Values that are records are `&[u8]` produced by [`super::codec`].

use redb::{ReadableTable, TableDefinition};

/// Schema version and id counters. Keys: [`SCHEMA_VERSION`], [`NEXT_EXPERIENCE_ID`], ...
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const SCHEMA_VERSION: &str = "schema_version";
pub const NEXT_EXPERIENCE_ID: &str = "next_experience_id";
pub const NEXT_JOB_ID: &str = "next_job_id";
pub const NEXT_RUN_ID: &str = "next_run_id";
pub const NEXT_RULE_ID: &str = "next_rule_id";
pub const NEXT_REMOTE_ID: &str = "next_remote_id";
pub const NEXT_BODY_ID: &str = "next_body_id";
/// Layout of the job tables (2: payloads and results out of the job records).
pub const JOB_LAYOUT: &str = "job_layout";
/// Set once `BATCH_LINES` and `BATCH_USAGE` have been built for the batches of older files.
pub const BATCH_LINES_BUILT: &str = "batch_lines_built";
/// Set once [`SERVE_FILES_BY_TIME`] and [`SERVE_BATCHES_BY_TIME`] hold the rows of records
/// written before they existed.
pub const SERVE_INDEX_BUILT: &str = "serve_index_built";

// ---- experiences and patterns (memory/experience.rs, memory/pattern.rs) ----

/// Experience id -> encoded `Experience`.
pub const EXPERIENCES: TableDefinition<u64, &[u8]> = TableDefinition::new("experiences");
/// (created_at ms, experience id) -> (): time-range queries and retention by age.
pub const EXPERIENCES_BY_TIME: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("experiences_by_time");
/// (domain, experience id) -> ().
pub const EXPERIENCES_BY_DOMAIN: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("experiences_by_domain");
/// (tag, experience id) -> ().
pub const EXPERIENCES_BY_TAG: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("experiences_by_tag");
/// Domain -> number of stored experiences (absent when zero): counts without a scan.
pub const EXPERIENCE_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("experience_counts");
/// (domain, strategy) -> encoded `Pattern`.
pub const PATTERNS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("patterns");

// ---- memory: full-text index and insight rules (memory/) ----

/// (domain, term, experience id) -> (term frequency, document length in terms, outcome code,
/// created_at ms): everything BM25 and its boosts need, so a search reads no record.
pub const MEMORY_POSTINGS: TableDefinition<PostingKey, Posting> =
    TableDefinition::new("memory_postings");
/// Key of [`MEMORY_POSTINGS`]: (domain, term, experience id).
pub type PostingKey = (&'static str, &'static str, u64);
/// Value of [`MEMORY_POSTINGS`]: (term frequency, document length, outcome code, created_at).
pub type Posting = (u32, u32, u8, u64);
/// Experience id -> (): recorded and not yet in the postings. The background indexer takes
/// them in large batches and removes each in the transaction that indexes it, so every
/// experience is indexed exactly once, whatever stops the process.
pub const MEMORY_UNINDEXED: TableDefinition<u64, ()> = TableDefinition::new("memory_unindexed");
/// Term -> number of indexed experiences containing it (all domains).
pub const MEMORY_TERMS: TableDefinition<&str, u64> = TableDefinition::new("memory_terms");
/// Index totals: [`MEMORY_DOCS`] and [`MEMORY_TOTAL_LEN`].
pub const MEMORY_STATS: TableDefinition<&str, u64> = TableDefinition::new("memory_stats");
pub const MEMORY_DOCS: &str = "docs";
pub const MEMORY_TOTAL_LEN: &str = "total_len";
/// (domain, rule id) -> encoded `Rule`: insights learned from successes and failures.
pub const MEMORY_RULES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("memory_rules");

// ---- job queue (queue/) ----

/// Job id -> encoded `Job` (its state; payload and result live in the two tables below).
pub const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// Job id -> payload, written once at enqueue: leases and completions never rewrite it.
pub const JOB_PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("job_payloads");
/// Job id -> (result record, where its response body is stored ([`BodyKey`]), if any).
pub const JOB_RESULTS: TableDefinition<u64, (&[u8], Option<BodyKey>)> =
    TableDefinition::new("job_results");
/// (queue, job id) -> (): a queue's (batch's) jobs in enqueue order, for export and listing.
pub const JOBS_BY_QUEUE: TableDefinition<(&str, u64), ()> = TableDefinition::new("jobs_by_queue");
/// (queue, 255 - priority, run_at ms, job id) -> (): waiting jobs, best first, without a scan.
/// Holds available, scheduled and retryable jobs only (they are leasable once run_at passes).
pub const JOBS_DUE: TableDefinition<(&str, u8, u64, u64), ()> = TableDefinition::new("jobs_due");
/// (lease expiry ms, job id) -> (): running jobs, for the lease rescuer.
pub const JOBS_LEASED: TableDefinition<(u64, u64), ()> = TableDefinition::new("jobs_leased");
/// (queue, dedup key) -> job id.
pub const JOBS_DEDUP: TableDefinition<(&str, &str), u64> = TableDefinition::new("jobs_dedup");
/// (state code, finished_at ms, job id) -> (): terminal jobs, for pruning by age.
pub const JOBS_FINISHED: TableDefinition<(u8, u64, u64), ()> =
    TableDefinition::new("jobs_finished");
/// Job id -> checkpoint bytes of multi-step work.
pub const JOB_CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("job_checkpoints");
/// Job id -> snoozes so far: after the free ones, a snooze spends an attempt.
pub const JOB_SNOOZES: TableDefinition<u64, u32> = TableDefinition::new("job_snoozes");
/// (job id, n-th try) -> encoded `queue::AttemptRecord`: a job's failed tries, the last 20.
pub const JOB_ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("job_attempts");
/// (queue, state code) -> number of jobs: counts and the list of queues without a scan.
pub const JOBS_COUNTS: TableDefinition<(&str, u8), u64> = TableDefinition::new("jobs_counts");

// ---- response bodies, stored once (store/bodies.rs) ----

/// Where a body is stored, as job results and cache rows refer to it: a sequence number in
/// [`BODIES_BY_ID`], or (bodies stored before those) a SHA-256 in [`BODIES`];
/// `store::bodies::Stored` reads it.
pub type BodyKey = [u8; 32];
/// Body id -> body: one copy of each response, shared by its job and its cache row.
/// Sequence numbers, so a batch's bodies are appended, not scattered over the tree.
pub const BODIES_BY_ID: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies_by_id");
/// Body id -> number of job results and cache rows referring to it.
pub const BODY_ID_REFS: TableDefinition<u64, u64> = TableDefinition::new("body_id_refs");
/// SHA-256 of a body -> body: how bodies were stored before [`BODIES_BY_ID`]; read and
/// released, no longer written.
pub const BODIES: TableDefinition<&BodyKey, &[u8]> = TableDefinition::new("bodies");
/// SHA-256 of a body -> number of references, for [`BODIES`].
pub const BODY_REFS: TableDefinition<&BodyKey, u64> = TableDefinition::new("body_refs");

// ---- response cache (cache.rs) ----

/// SHA-256 key of a canonical request -> encoded cached response (with its expiry).
pub const CACHE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("cache");
/// Sequence number -> (key, encoded cached response): rows as they are written, appended
/// rather than scattered over [`CACHE`], and merged into it in sorted runs (cache/journal.rs).
pub const CACHE_JOURNAL: TableDefinition<u64, (&[u8; 32], &[u8])> =
    TableDefinition::new("cache_journal");
/// (expiry ms, key) -> (): pruning expired entries without a scan.
pub const CACHE_BY_EXPIRY: TableDefinition<(u64, &[u8; 32]), ()> =
    TableDefinition::new("cache_by_expiry");

// ---- batches (app/batch.rs) ----

/// Batch name -> the endpoint it runs against, so a run against another name for the same
/// server (which would enqueue and pay for every line again) is caught.
pub const BATCH_ENDPOINTS: TableDefinition<&str, &str> = TableDefinition::new("batch_endpoints");
/// (batch, line) -> job id: the lines of the batch's current input file, walked in order by
/// the export (no job is loaded to sort them).
pub const BATCH_LINES: TableDefinition<(&str, u64), u64> = TableDefinition::new("batch_lines");
/// Job id -> its line in its batch's current file; absent for jobs of lines since edited or
/// removed.
pub const JOB_LINES: TableDefinition<u64, u64> = TableDefinition::new("job_lines");
/// Batch -> number of lines of its current input file (the end of its [`BATCH_LINES`]).
pub const BATCH_SIZES: TableDefinition<&str, u64> = TableDefinition::new("batch_sizes");
/// Batch -> (prompt tokens, completion tokens, answers from the cache), added at each
/// completion, so `status` reads one row per batch.
pub const BATCH_USAGE: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("batch_usage");
/// Batch -> SHA-256 of the input file and of everything that makes its jobs (endpoint,
/// default model, run options), written with the last chunk of a complete enqueue pass: a
/// rerun of the same file with the same options skips that pass. Removed when a pass
/// starts and when a job of the batch is pruned.
pub const BATCH_INPUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("batch_inputs");
/// Batch -> (picodollars spent, answers priced, answers of models without a price), added
/// in the same transactions as [`BATCH_USAGE`].
pub const BATCH_COST: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("batch_cost");

// ---- provider batches (chat/remote/) ----

/// Remote key -> encoded `chat::remote::RemoteRecord`: one batch handed to a provider's
/// batch API, with the ids the provider gave it and where it is in its life.
pub const REMOTE_BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("remote_batches");
/// (remote key, job id) -> the request body exactly as sent: written before the upload, so
/// an interrupted upload sends the same lines again and a result finds its request.
pub const REMOTE_LINES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("remote_lines");

// ---- the OpenAI-compatible service (serve/) ----

/// File id -> encoded `serve::files::FileRecord`: an uploaded or exported file, kept as a
/// file of its own in the directory beside the database.
pub const SERVE_FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("serve_files");
/// Batch id -> encoded `serve::batches::BatchRecord`: one OpenAI batch object, so a batch
/// resumes when the server starts again.
pub const SERVE_BATCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("serve_batches");
/// (created_at ms, file id) -> (): files in creation order, so a list page reads only its
/// own rows.
pub const SERVE_FILES_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("serve_files_by_time");
/// (created_at ms, batch id) -> (): batches in creation order, for list pages.
pub const SERVE_BATCHES_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("serve_batches_by_time");

// ---- structured output (chat/structured.rs) ----

/// SHA-256 of a `--validate` schema (hex) -> the schema's JSON text: written once when a
/// batch is enqueued, so its jobs carry the digest instead of the schema.
pub const SCHEMAS: TableDefinition<&str, &str> = TableDefinition::new("schemas");

// ---- run records (runs.rs) ----

/// Run id -> encoded `RunRecord`: the figures of each batch run, for `reasonq stats`.
pub const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");

// ---- blackboard sessions (blackboard/) ----

/// Session id (`bb-<job id>`) -> encoded `blackboard::Session`.
pub const BOARD_SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("board_sessions");
/// (session id, entry seq) -> encoded `blackboard::Entry`: a board's entries in order.
pub const BOARD_ENTRIES: TableDefinition<(&str, u32), &[u8]> =
    TableDefinition::new("board_entries");

/// Creates every table so that read transactions never meet a missing one.
pub fn create_all(txn: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(META)?;
    txn.open_table(EXPERIENCES)?;
    txn.open_table(EXPERIENCES_BY_TIME)?;
    txn.open_table(EXPERIENCES_BY_DOMAIN)?;
    txn.open_table(EXPERIENCES_BY_TAG)?;
    txn.open_table(EXPERIENCE_COUNTS)?;
    txn.open_table(PATTERNS)?;
    txn.open_table(MEMORY_POSTINGS)?;
    txn.open_table(MEMORY_TERMS)?;
    txn.open_table(MEMORY_UNINDEXED)?;
    txn.open_table(MEMORY_STATS)?;
    txn.open_table(MEMORY_RULES)?;
    txn.open_table(JOBS)?;
    txn.open_table(JOB_PAYLOADS)?;
    txn.open_table(JOB_RESULTS)?;
    txn.open_table(BODIES)?;
    txn.open_table(BODY_REFS)?;
    txn.open_table(BODIES_BY_ID)?;
    txn.open_table(BODY_ID_REFS)?;
    txn.open_table(JOBS_BY_QUEUE)?;
    txn.open_table(JOBS_DUE)?;
    txn.open_table(JOBS_LEASED)?;
    txn.open_table(JOBS_DEDUP)?;
    txn.open_table(JOBS_FINISHED)?;
    txn.open_table(JOB_CHECKPOINTS)?;
    txn.open_table(JOBS_COUNTS)?;
    txn.open_table(JOB_SNOOZES)?;
    txn.open_table(JOB_ATTEMPTS)?;
    txn.open_table(CACHE)?;
    txn.open_table(CACHE_BY_EXPIRY)?;
    txn.open_table(CACHE_JOURNAL)?;
    txn.open_table(RUNS)?;
    txn.open_table(BATCH_ENDPOINTS)?;
    txn.open_table(BATCH_LINES)?;
    txn.open_table(JOB_LINES)?;
    txn.open_table(BATCH_SIZES)?;
    txn.open_table(BATCH_USAGE)?;
    txn.open_table(BATCH_COST)?;
    txn.open_table(BOARD_SESSIONS)?;
    txn.open_table(BOARD_ENTRIES)?;
    txn.open_table(REMOTE_BATCHES)?;
    txn.open_table(REMOTE_LINES)?;
    txn.open_table(SERVE_FILES)?;
    txn.open_table(SERVE_BATCHES)?;
    txn.open_table(SERVE_FILES_BY_TIME)?;
    txn.open_table(SERVE_BATCHES_BY_TIME)?;
    txn.open_table(SCHEMAS)?;
    txn.open_table(BATCH_INPUTS)?;
    Ok(())
}

/// Reserves `n` consecutive ids from a META counter and returns the first one.
pub fn allocate_ids(txn: &redb::WriteTransaction, counter: &str, n: u64) -> crate::Result<u64> {
    let mut meta = txn.open_table(META)?;
    let first = meta.get(counter)?.map(|v| v.value()).unwrap_or(1);
    meta.insert(counter, first + n)?;
    Ok(first)
}
