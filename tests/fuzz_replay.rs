//! Replays every committed fuzz input (corpus and crash artifacts) on stable Rust, through the
//! same function the `codec` fuzz target calls.

use std::path::Path;

use reasonq::store::codec::fuzz_decode_all;

fn inputs(root: &Path) -> Vec<std::path::PathBuf> {
    let Ok(targets) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for target in targets.map(|t| t.unwrap().path()).filter(|p| p.is_dir()) {
        for file in std::fs::read_dir(target).unwrap() {
            let path = file.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn every_fuzz_corpus_and_artifact_input_decodes_without_a_finding() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&fuzz.join("corpus"));
    assert!(
        corpus.len() >= 5,
        "the seed corpus is committed under fuzz/corpus/codec"
    );
    for path in corpus.iter().chain(&inputs(&fuzz.join("artifacts"))) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(fuzz_decode_all(&bytes), Ok(()), "{}", path.display());
    }
}
