//! The merge use case: the outputs of a batch run in shards (`batch --shard K/N`) joined
//! into one output in the input's order ([`crate::batch::merge`]). No database is opened.

use std::path::PathBuf;

use crate::batch::merge::{merge as merge_files, Merged};
use crate::error::{Error, Result};

/// What to merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// The input file the shards ran.
    pub input: PathBuf,
    /// The shard outputs, in any order.
    pub parts: Vec<PathBuf>,
    /// The merged output, written only when the merge succeeds.
    pub output: PathBuf,
    /// N of the runs' `--shard K/N`, when known: every shard's output must be given, and a
    /// missing line names its shard.
    pub shards: Option<u64>,
}

/// Merges the shard outputs of `opts` (blocking file work: call it off the async runtime).
pub fn merge(opts: &MergeOptions) -> Result<Merged> {
    if opts.parts.is_empty() {
        return Err(Error::Invalid("no shard outputs to merge".into()));
    }
    if let Some(n) = opts.shards {
        if n == 0 || opts.parts.len() as u64 != n {
            return Err(Error::Invalid(format!(
                "--shards {n}: {} shard outputs given; give the output of every shard, 0 to {} \
                 (a shard with no lines writes an empty one)",
                opts.parts.len(),
                n.saturating_sub(1)
            )));
        }
    }
    // Inputs exist, so comparing resolved paths finds one file under two names. A shard
    // output given twice is left to the merge, which names the first id both hold.
    let resolved = |p: &PathBuf| std::fs::canonicalize(p).ok();
    let input = resolved(&opts.input);
    if let Some(part) = opts
        .parts
        .iter()
        .find(|p| input.is_some() && resolved(p) == input)
    {
        return Err(Error::Invalid(format!(
            "{} is the input file, not a shard output",
            part.display()
        )));
    }
    if let Some(out) = resolved(&opts.output) {
        let inputs = std::iter::once(&opts.input).chain(&opts.parts);
        if let Some(same) = inputs
            .into_iter()
            .find(|p| resolved(p).as_ref() == Some(&out))
        {
            return Err(Error::Invalid(format!(
                "the merged output {} is the file {}; name another one",
                opts.output.display(),
                same.display()
            )));
        }
    }
    merge_files(&opts.input, &opts.parts, &opts.output, opts.shards)
}
