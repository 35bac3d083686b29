//! Replays every committed fuzz input (corpus and crash artifacts) on stable Rust, through the
//! same function each fuzz target calls (`reasonq::testing::fuzz::TARGETS`).

use std::path::{Path, PathBuf};

use reasonq::testing::fuzz::TARGETS;

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_has_a_committed_seed_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, _) in TARGETS {
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz target {name} exists"
        );
        assert!(
            files(&fuzz.join("corpus").join(name)).len() >= 3,
            "seed corpus fuzz/corpus/{name} is committed"
        );
    }
}

#[test]
fn every_corpus_and_artifact_input_replays_without_a_finding() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, check) in TARGETS {
        let corpus = files(&fuzz.join("corpus").join(name));
        let artifacts = files(&fuzz.join("artifacts").join(name));
        for path in corpus.iter().chain(&artifacts) {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(check(&bytes), Ok(()), "{name}: {}", path.display());
        }
    }
}
