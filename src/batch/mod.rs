//! Batch files: reading input lines, and writing results in OpenAI's batch output format.
//! The job a line becomes is the chat job contract ([`crate::chat::ChatJob`]); this layer only
//! knows the files.

pub mod export;
pub mod input;
pub mod lines;
pub mod merge;
pub mod output;
pub mod shard;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// `questions.jsonl` -> `questions.<suffix>`.
pub fn with_suffix(input: &Path, suffix: &str) -> PathBuf {
    input.with_file_name(format!("{}.{suffix}", stem(input)))
}

/// The default batch name: the file's stem and a hash of its absolute path, so two files of
/// the same name in different folders are different batches.
pub fn batch_name(input: &Path) -> String {
    let absolute = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
    let digest = Sha256::digest(absolute.to_string_lossy().as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", stem(input))
}

fn stem(input: &Path) -> String {
    input
        .file_stem()
        .map_or_else(|| "batch".into(), |s| s.to_string_lossy().into_owned())
}
