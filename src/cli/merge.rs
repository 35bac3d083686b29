//! `reasonq merge`: the shard outputs of a batch joined in input order.

use reasonq::app::merge::{self, MergeOptions};

use super::args::MergeArgs;
use super::{fail, CliResult, Outcome};

pub async fn run(args: MergeArgs) -> CliResult {
    let opts = MergeOptions {
        input: args.input,
        parts: args.parts,
        output: args.output,
        shards: args.shards,
    };
    // Reading and writing big files is blocking work: off the async runtime.
    let to_merge = opts.clone();
    let merged = tokio::task::spawn_blocking(move || merge::merge(&to_merge))
        .await
        .map_err(fail)?
        .map_err(fail)?;
    let per_file: Vec<String> = opts
        .parts
        .iter()
        .zip(&merged.per_file)
        .map(|(path, n)| format!("{n} from {}", path.display()))
        .collect();
    eprintln!(
        "merged {} lines in the order of {} ({}) into {}",
        merged.lines,
        opts.input.display(),
        per_file.join(", "),
        opts.output.display()
    );
    Ok(Outcome::Done)
}
