//! The layering of `docs/architecture.md` holds in the code: every `crate::` path in a library
//! module names a module of a lower layer, every library module is in the table, and the
//! binary's CLI is not part of the library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Module -> layer, from the "Layers" table of docs/architecture.md.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | layer | module | one line |
        if cells.len() >= 4 {
            if let Ok(layer) = cells[1].parse::<u32>() {
                out.insert(cells[2].to_string(), layer);
            }
        }
    }
    assert!(out.len() > 10, "the layers table was not found: {out:?}");
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level library module a file under `src/` belongs to (`None`: the binary or lib.rs).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    if matches!(first, "main.rs" | "lib.rs" | "cli") {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// The modules a line names through `crate::` (`crate::Error` and `crate::Result` are the
/// error module's, re-exported at the root).
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        // `$crate::` in a macro is the defining crate's root, checked where it expands.
        if !rest[..at].ends_with('$') {
            // `crate::{Error, Result}` names several.
            let names: Vec<&str> = match after.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                None => vec![after],
            };
            for name in names {
                let name: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                match name.as_str() {
                    "" => {}
                    "Error" | "Result" => out.push("error".to_string()),
                    _ => out.push(name),
                }
            }
        }
        rest = after;
    }
    out
}

#[test]
fn every_import_points_down_a_layer() {
    let layers = layers();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(module) = module_of(rel) else {
            continue;
        };
        let Some(&own) = layers.get(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is not in the table",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for used in crate_paths(code) {
                if used == module {
                    continue;
                }
                match layers.get(&used) {
                    Some(&layer) if layer < own => {}
                    Some(&layer) => wrong.push(format!(
                        "{}:{}: `{module}` (layer {own}) imports `{used}` (layer {layer})",
                        rel.display(),
                        n + 1
                    )),
                    None => wrong.push(format!(
                        "{}:{}: `{used}` is not in the table",
                        rel.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_library_module_is_in_the_table_and_the_cli_is_not_in_the_library() {
    let layers = layers();
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    assert!(
        !declared.contains(&"cli"),
        "the CLI is the binary's, not the library's"
    );
    for m in &declared {
        assert!(
            layers.contains_key(*m),
            "src/lib.rs declares `{m}`, missing from the table"
        );
    }
    for m in layers.keys() {
        assert!(
            declared.contains(&m.as_str()),
            "the table names `{m}`, not in src/lib.rs"
        );
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    // A test that could never fail would prove nothing: the parser finds the names.
    assert_eq!(crate_paths("use crate::app::App;"), ["app"]);
    assert_eq!(crate_paths("x: crate::Result<()>"), ["error"]);
    assert!(crate_paths("$crate::cli::write_line(x)").is_empty());
    assert_eq!(
        crate_paths("use crate::{Error, store::Store}; crate::queue::x()"),
        ["error", "store", "queue"]
    );
}
