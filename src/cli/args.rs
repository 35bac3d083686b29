//! Command-line arguments (clap). Every subcommand's `--help` ends with an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Durable, offline batch reasoning with LLMs.
#[derive(Debug, Parser)]
#[command(name = "reasonq", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes; each overrides reasonq.toml and REASONQ_* variables.
#[derive(Debug, Args, Clone, Default)]
pub struct Global {
    /// Configuration file (default: ./reasonq.toml when present).
    #[arg(long, global = true, env = "REASONQ_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Database file.
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// OpenAI-compatible API base URL.
    #[arg(long, global = true, value_name = "URL")]
    pub base_url: Option<String>,
    /// Model for requests that name none.
    #[arg(long, global = true, value_name = "MODEL")]
    pub model: Option<String>,
    /// Run against a built-in loopback server that answers like an LLM API (labelled
    /// "[simulated]"), with realistic latency and occasional 429s. Costs nothing.
    #[arg(long, global = true)]
    pub simulate: bool,
    /// The environment variable that holds the API key, for any endpoint (by default
    /// XAI_API_KEY goes only to x.ai, OPENAI_API_KEY only to openai.com, REASONQ_API_KEY
    /// anywhere). Keys are never sent over plain http except to loopback.
    #[arg(long, global = true, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Log level filter (e.g. info, debug, reasonq=trace); logs go to stderr.
    #[arg(long, global = true, env = "REASONQ_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a batch file of prompts to completion, resumably.
    #[command(
        after_help = "Example:\n  reasonq batch questions.jsonl -o answers.jsonl --concurrency 32\n  reasonq --simulate batch docs/examples/questions.jsonl -o answers.jsonl\n  reasonq --db shard-0.redb batch questions.jsonl --shard 0/3 -o out-0.jsonl"
    )]
    Batch(BatchArgs),
    /// Join the outputs of a batch run in shards (`batch --shard K/N`) into one file, in the
    /// input's order; fails, writing nothing, if a line is missing or in two outputs.
    #[command(
        after_help = "Example:\n  reasonq merge answers.jsonl out-0.jsonl out-1.jsonl out-2.jsonl --input questions.jsonl --shards 3"
    )]
    Merge(MergeArgs),
    /// Ask one question and print the answer.
    #[command(after_help = "Example:\n  reasonq submit \"What is 17 * 23?\" --domain math")]
    Submit(SubmitArgs),
    /// Job counts by state for every batch, and tokens and money spent.
    #[command(after_help = "Example:\n  reasonq status --json")]
    Status(JsonFlag),
    /// What a batch file would cost: lines, lines already answered or cached, prompt tokens
    /// (tiktoken for OpenAI models, an approximation otherwise) and the cost range live and
    /// through the provider's batch API; nothing is sent (docs/cost.md).
    #[command(
        after_help = "Example:\n  reasonq estimate questions.jsonl\n  reasonq estimate questions.jsonl --json"
    )]
    Estimate(EstimateArgs),
    /// Export a batch's results again (OpenAI batch output format).
    #[command(
        after_help = "Example:\n  reasonq results questions-1a2b3c4d -o answers.jsonl\n  reasonq results questions-1a2b3c4d --json   # with cache, attempts, latency"
    )]
    Results(ResultsArgs),
    /// Inspect and manage jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Inspect recorded reasoning experiences.
    #[command(subcommand)]
    Experiences(ExperiencesCommand),
    /// Learned statistics per domain and strategy, and the learned rules.
    #[command(after_help = "Example:\n  reasonq patterns --json")]
    Patterns(JsonFlag),
    /// Ask the model to compare recent successes and failures of a domain and store the
    /// rules it writes (used as guidance in prompts with memory on).
    #[command(
        after_help = "Example:\n  reasonq insights math\n  reasonq --simulate insights math"
    )]
    Insights(InsightsArgs),
    /// Delete finished jobs and old experiences past retention, and expired cache entries.
    #[command(after_help = "Example:\n  reasonq cleanup")]
    Cleanup(JsonFlag),
    /// Check the database file (redb's integrity check, on a copy), or repair it with a
    /// backup of the damaged file; says what a repair keeps and loses per table.
    #[command(after_help = "Example:\n  reasonq check\n  reasonq check --repair")]
    Check(CheckArgs),
    /// Store, cache and queue statistics.
    #[command(after_help = "Example:\n  reasonq stats --json\n  reasonq stats --tables")]
    Stats(StatsArgs),
    /// List the models the endpoint offers.
    #[command(after_help = "Example:\n  reasonq models --base-url http://localhost:8000/v1")]
    Models(JsonFlag),
    /// Show a blackboard session as a tree: problem, sub-problems with their solutions and
    /// critiques, final answer.
    #[command(
        after_help = "Example:\n  reasonq board bb-42\n  reasonq board 42 --json   # by job id, for tools"
    )]
    Board(BoardArgs),
    /// Serve an OpenAI-compatible Files, Batch and chat-completions API over this database,
    /// running the batches in this process (docs/serve.md). Off loopback it needs
    /// REASONQ_SERVE_KEY, the bearer key clients must send.
    #[command(
        after_help = "Example:\n  reasonq --simulate serve\n  REASONQ_SERVE_KEY=secret reasonq serve --listen 0.0.0.0:8089"
    )]
    Serve(ServeArgs),
    /// Look at the database in the browser, read-only: batches, their lines (filters,
    /// search, sorting), each line in full, memory (docs/viewer.md). Prints the URL; a
    /// running `reasonq serve` shows the same pages at its own address.
    #[command(
        after_help = "Example:\n  reasonq view\n  reasonq --db shard-0.redb view --listen 127.0.0.1:8090"
    )]
    View(ViewArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ViewArgs {
    /// Address to listen on, loopback only (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8089", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8089", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Largest upload, in MiB.
    #[arg(long, default_value_t = 200, value_name = "MIB")]
    pub max_upload_mb: u64,
    /// Largest JSON request body (batch creation, chat completions), in MiB.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub max_body_mb: u64,
    /// Seconds a batch may run before it expires: lines not yet run are cancelled as
    /// `batch_expired`, what was answered is kept (OpenAI's 24 h completion window).
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    pub batch_window: u64,
    /// Requests in flight at once (all batches and chat calls together).
    #[arg(short, long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Seconds in-flight calls may finish after the first SIGINT/SIGTERM.
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<u64>,
}

#[derive(Debug, Args, Clone)]
pub struct BoardArgs {
    /// Session id (`bb-<job id>`, in the output line's `board_session`) or the job id.
    pub session: String,
    /// Print the session and its entries as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct CheckArgs {
    /// Repair a damaged file in place (the damaged file is kept as a backup beside it).
    #[arg(long)]
    pub repair: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct StatsArgs {
    /// Rows and bytes of every table of the database file instead of the run figures.
    #[arg(long)]
    pub tables: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct BatchArgs {
    /// Input file: OpenAI batch request lines or the short form ({"id","question",...}).
    pub input: PathBuf,
    /// Output file (default: INPUT with `.out.jsonl`).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Where failed lines go, in the same format (default: INPUT with `.errors.jsonl`).
    #[arg(long, value_name = "PATH")]
    pub errors: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(short, long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Batch name (default: the file's name and a hash of its path).
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,
    /// Record invalid lines in the errors file and run the rest, instead of refusing the file.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Cache policy: never, deterministic or always.
    #[arg(long, value_name = "POLICY")]
    pub cache: Option<reasonq::cache::CachePolicy>,
    /// Seconds in-flight calls may finish after the first SIGINT/SIGTERM.
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<u64>,
    /// Print plain progress lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Send the lines that failed in earlier runs of this file again (attempts reset).
    #[arg(long)]
    pub retry_failed: bool,
    /// Answer a batch that ran against another endpoint again, against this one (every
    /// line is sent and paid for again).
    #[arg(long)]
    pub rerun: bool,
    /// Put memory (similar past successes and learned rules) into prompts of lines that do
    /// not say `"memory"`.
    #[arg(long)]
    pub memory: bool,
    /// Strategy of lines that name none (direct, chain_of_thought, structured, blackboard);
    /// without it the bandit chooses per domain among `memory.strategies`.
    #[arg(long, value_name = "NAME")]
    pub strategy: Option<reasonq::memory::Strategy>,
    /// Run only shard K of N (0-based: 0/3, 1/3, 2/3): the lines whose custom_id hashes
    /// there (FNV-1a 64 % N, docs/scale-out.md). Give each shard its own --db.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<reasonq::batch::shard::Shard>,
    /// `live`: one call per line. `provider`: the provider's batch API, at about half the
    /// price, answers within hours; a signal detaches and the same command picks it up
    /// (docs/provider-batch.md).
    #[arg(long, value_enum, default_value_t = Via::Live, value_name = "HOW")]
    pub via: Via,
    /// The provider's batch protocol (openai, xai, anthropic); by default from the base
    /// URL's host (x.ai: xai, anthropic.com: anthropic, any other: openai).
    #[arg(long, value_name = "PROTOCOL")]
    pub batch_api: Option<reasonq::llm::batch_api::Protocol>,
    /// With --via provider: `live` runs the lines the provider did not answer (failed,
    /// expired, missing) and multi-call strategies with one call each, afterwards.
    #[arg(long, value_enum, value_name = "HOW")]
    pub fallback: Option<Fallback>,
    /// Serve `GET /metrics` (Prometheus text) and `/healthz` at this address while the
    /// batch runs, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A hard cap on what the batch costs in all, in US dollars (earlier runs count): each
    /// call's worst case is reserved before it is sent; when the next does not fit, the
    /// batch stops with exit code 4, resumable with a higher cap (docs/cost.md).
    #[arg(long, value_name = "USD", value_parser = parse_usd)]
    pub max_cost: Option<reasonq::cost::Money>,
    /// A JSON Schema every chat line's reply must match: a reply that does not is retried
    /// within the line's attempts, then the line fails with `invalid_structured_output`
    /// (docs/structured-output.md). Lines' own `response_format` schemas are checked too.
    #[arg(long, value_name = "SCHEMA.json")]
    pub validate: Option<std::path::PathBuf>,
    /// Print what `reasonq estimate` prints for the file and stop: nothing is sent.
    #[arg(long)]
    pub dry_run: bool,
}

/// A dollar amount of `--max-cost`.
fn parse_usd(text: &str) -> Result<reasonq::cost::Money, String> {
    let usd: f64 = text
        .trim()
        .trim_start_matches('$')
        .parse()
        .map_err(|_| format!("{text:?} is not an amount of US dollars (e.g. 25 or 0.50)"))?;
    reasonq::cost::Money::from_usd(usd)
        .ok_or_else(|| format!("{text:?} is not an amount of 0 dollars or more"))
}

#[derive(Debug, Args, Clone)]
pub struct EstimateArgs {
    /// Input file, as `reasonq batch` takes it.
    pub input: PathBuf,
    /// The batch whose answers count as done (default: the name `batch` gives the file).
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,
    /// Strategy of lines that name none, as with `batch --strategy`.
    #[arg(long, value_name = "NAME")]
    pub strategy: Option<reasonq::memory::Strategy>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct MergeArgs {
    /// The merged output file.
    pub output: PathBuf,
    /// The shards' output files, in any order.
    #[arg(required = true, value_name = "SHARD_OUTPUT")]
    pub parts: Vec<PathBuf>,
    /// The input file the shards ran: the merged output has its order.
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    /// N of the runs' --shard K/N: then every shard's output must be given, and a missing
    /// line names its shard.
    #[arg(long, value_name = "N")]
    pub shards: Option<u64>,
}

#[derive(Debug, Args, Clone)]
pub struct SubmitArgs {
    /// The question.
    pub question: String,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Domain for experiences and patterns.
    #[arg(long, default_value = "general")]
    pub domain: String,
    /// Sampling temperature (0 makes the answer cacheable under the default policy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Print the whole response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ResultsArgs {
    /// Batch name, as shown by `reasonq status`.
    pub batch: String,
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// One JSON object per job with our own details (state, cached, attempts, latency, domain).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    #[command(after_help = "Example:\n  reasonq jobs list --state discarded --limit 20")]
    List {
        /// Only this batch (queue).
        #[arg(long)]
        batch: Option<String>,
        /// Only this state (available, scheduled, running, completed, retryable, discarded, cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one job in full.
    #[command(after_help = "Example:\n  reasonq jobs show 42")]
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Run a discarded or cancelled job again, or every matching job of a batch.
    #[command(
        after_help = "Example:\n  reasonq jobs retry 42\n  reasonq jobs retry --batch questions-1a2b3c4d --code timeout"
    )]
    Retry {
        /// The job (or use --batch).
        #[arg(required_unless_present = "batch", conflicts_with = "batch")]
        id: Option<u64>,
        /// Every failed job of this batch (the newest job of each line).
        #[arg(long)]
        batch: Option<String>,
        /// With --batch: jobs in this state (discarded or cancelled).
        #[arg(long, default_value = "discarded", requires = "batch")]
        state: String,
        /// With --batch: only jobs whose last error has this code (e.g. timeout, bad_request).
        #[arg(long, requires = "batch")]
        code: Option<String>,
    },
    /// Cancel a job that has not finished, or every unfinished line of a batch (its
    /// provider batches too: what they answered is kept).
    #[command(
        after_help = "Examples:\n  reasonq jobs cancel 42\n  reasonq jobs cancel --batch questions"
    )]
    Cancel {
        #[arg(required_unless_present = "batch", conflicts_with = "batch")]
        id: Option<u64>,
        #[arg(long, value_name = "NAME")]
        batch: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExperiencesCommand {
    /// List experiences, newest first.
    #[command(after_help = "Example:\n  reasonq experiences list --domain math --limit 10")]
    List {
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one experience in full.
    #[command(after_help = "Example:\n  reasonq experiences show 7")]
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Full-text search (BM25, successes and recent ones boosted), best first with scores.
    #[command(
        after_help = "Example:\n  reasonq experiences search \"sum of two primes\" --domain math --limit 5"
    )]
    Search {
        text: String,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args, Clone)]
pub struct InsightsArgs {
    /// The domain to learn rules for.
    pub domain: String,
    /// Print JSON instead of a list.
    #[arg(long)]
    pub json: bool,
}

/// How `batch` sends its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Live,
    Provider,
}

/// What runs the lines a provider batch did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fallback {
    Live,
}
