//! Joining the outputs of a sharded batch ([`super::shard`]) into one file in the input's
//! order.
//!
//! Memory is O(1) in the number of lines: each shard's output is in input order (a
//! subsequence of the input), so the input is walked line by line and each line is taken
//! from the one shard output whose next line has its `custom_id`. Anything else (a line in
//! no output, in two, left over, out of order, not JSON) fails the merge, naming the file
//! and line, and the output file is not written (it is staged and renamed at the end).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::export::JsonlFile;
use super::shard::shard_of;
use crate::error::{Error, Result};

/// The UTF-8 byte-order mark, accepted at the start of a file (as the input reader does).
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// Lines in the merged output (one per input line).
    pub lines: u64,
    /// Lines taken from each shard output, in the order the files were given.
    pub per_file: Vec<u64>,
}

/// Merges `parts` (shard outputs) into `output` in the order of `input`'s lines. With
/// `shards` (the N of the runs), a line missing from every output names the shard it
/// belongs to, and every output must hold the lines of one shard only.
pub fn merge(
    input: &Path,
    parts: &[PathBuf],
    output: &Path,
    shards: Option<u64>,
) -> Result<Merged> {
    let in_name = input.display().to_string();
    let mut ids = Lines::open(input)?;
    let mut parts = parts
        .iter()
        .map(|p| Part::open(p, shards))
        .collect::<Result<Vec<_>>>()?;
    let mut staged = JsonlFile::create(output).map_err(|e| written(output, e))?;
    let mut lines = 0;
    while let Some((line, text)) = ids.next_line()? {
        let id = input_id(&text).map_err(|e| Error::Invalid(format!("{in_name}:{line}: {e}")))?;
        let holders: Vec<usize> = (0..parts.len())
            .filter(|&i| parts[i].head.as_ref().is_some_and(|h| h.custom_id == id))
            .collect();
        let at = match holders[..] {
            [] => return Err(missing(&in_name, line, &id, &parts, shards)),
            [one] => one,
            [a, b, ..] => {
                let (a, b) = (&parts[a], &parts[b]);
                return Err(Error::Invalid(format!(
                    "duplicated: custom_id {id:?} ({in_name} line {line}) is in two shard \
                     outputs, {} line {} and {} line {}; was one output given twice, or two \
                     runs made with the same --shard?",
                    a.name,
                    a.head_line(),
                    b.name,
                    b.head_line()
                )));
            }
        };
        let part = &mut parts[at];
        if let Some(head) = &part.head {
            staged.line(&head.text).map_err(|e| written(output, e))?;
        }
        part.taken += 1;
        part.advance()?;
        lines += 1;
    }
    if let Some(part) = parts.iter().find(|p| p.head.is_some()) {
        let id = part.head.as_ref().map_or("", |h| h.custom_id.as_str());
        return Err(Error::Invalid(format!(
            "{}:{}: custom_id {id:?} is left over: it is not in {in_name} after the lines \
             already merged; was this shard run on another input file?",
            part.name,
            part.head_line()
        )));
    }
    staged.commit().map_err(|e| written(output, e))?;
    Ok(Merged {
        lines,
        per_file: parts.iter().map(|p| p.taken).collect(),
    })
}

/// The error for an input line no shard output has next: out of order in one of them (found
/// further down), or in none of them.
fn missing(in_name: &str, line: u64, id: &str, parts: &[Part], shards: Option<u64>) -> Error {
    for part in parts {
        let Some(head) = &part.head else { continue };
        // Only on the error path: one more pass over the file, to say what is wrong.
        if let Some(later) = find_from(&part.path, head.line, id) {
            return Error::Invalid(format!(
                "{}:{}: custom_id {:?} is out of input order: {in_name} line {line} \
                 ({id:?}) comes first, and {} has it only on line {later}",
                part.name, head.line, head.custom_id, part.name
            ));
        }
    }
    let hint = match shards {
        Some(n) => format!("is shard {}/{n} finished?", shard_of(id, n)),
        None => "is its shard finished, and its output among the files given?".into(),
    };
    Error::Invalid(format!(
        "missing: custom_id {id:?} ({in_name} line {line}) is in no shard output; {hint}"
    ))
}

/// The line number of the first line at or after `from` whose `custom_id` is `id`.
fn find_from(path: &Path, from: u64, id: &str) -> Option<u64> {
    let mut lines = Lines::open(path).ok()?;
    while let Ok(Some((line, text))) = lines.next_line() {
        if line >= from && output_id(&text).is_ok_and(|found| found == id) {
            return Some(line);
        }
    }
    None
}

/// One shard output and its next line.
struct Part {
    path: PathBuf,
    name: String,
    lines: Lines,
    head: Option<Head>,
    /// N of the runs, when given: every line must be in the shard of the first.
    shards: Option<u64>,
    /// (line, shard) of the first line.
    first: Option<(u64, u64)>,
    taken: u64,
}

struct Head {
    line: u64,
    custom_id: String,
    /// The line as written by the shard, copied through unchanged.
    text: String,
}

impl Part {
    fn open(path: &Path, shards: Option<u64>) -> Result<Part> {
        let mut part = Part {
            path: path.to_path_buf(),
            name: path.display().to_string(),
            lines: Lines::open(path)?,
            head: None,
            shards,
            first: None,
            taken: 0,
        };
        part.advance()?;
        Ok(part)
    }

    fn head_line(&self) -> u64 {
        self.head.as_ref().map_or(0, |h| h.line)
    }

    fn advance(&mut self) -> Result<()> {
        self.head = None;
        let Some((line, text)) = self.lines.next_line()? else {
            return Ok(());
        };
        let custom_id =
            output_id(&text).map_err(|e| Error::Invalid(format!("{}:{line}: {e}", self.name)))?;
        if let Some(n) = self.shards {
            let shard = shard_of(&custom_id, n);
            match self.first {
                None => self.first = Some((line, shard)),
                Some((first, expected)) if expected != shard => {
                    return Err(Error::Invalid(format!(
                        "{}:{line}: custom_id {custom_id:?} is in shard {shard}/{n}, but line \
                         {first} of this file is in shard {expected}/{n}: this file mixes \
                         shards, or its runs did not use --shard K/{n}",
                        self.name
                    )));
                }
                Some(_) => {}
            }
        }
        self.head = Some(Head {
            line,
            custom_id,
            text,
        });
        Ok(())
    }
}

/// The ids of a line: OpenAI's `custom_id`, or `id` in the short input form.
#[derive(Deserialize)]
struct Ids<'a> {
    #[serde(default, borrow)]
    custom_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

/// The request id of an input line: `custom_id`, else the short form's `id`.
pub fn input_id(text: &str) -> std::result::Result<String, String> {
    let ids = ids(text)?;
    let (field, raw) = match (ids.custom_id, ids.id) {
        (Some(raw), _) => ("custom_id", raw),
        (None, Some(raw)) => ("id", raw),
        (None, None) => return Err("no `custom_id` (or short-form `id`)".into()),
    };
    let id = string_field(field, raw)?;
    if id.trim().is_empty() {
        return Err(format!("field `{field}`: must not be empty"));
    }
    Ok(id)
}

/// The `custom_id` of an output line.
pub fn output_id(text: &str) -> std::result::Result<String, String> {
    match ids(text)?.custom_id {
        Some(raw) => string_field("custom_id", raw),
        None => Err("field `custom_id`: missing; not an output line".into()),
    }
}

fn ids(text: &str) -> std::result::Result<Ids<'_>, String> {
    // serde would also read a struct from an array (`[1]` as `custom_id` 1).
    if !text.trim_start().starts_with('{') {
        return Err("not a JSON object".into());
    }
    serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))
}

fn string_field(field: &str, raw: &RawValue) -> std::result::Result<String, String> {
    serde_json::from_str::<String>(raw.get())
        .map_err(|_| format!("field `{field}`: must be a string, found {}", raw.get()))
}

/// The non-blank lines of a file, one at a time, with their 1-based line numbers.
struct Lines {
    reader: BufReader<File>,
    name: String,
    line: u64,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines> {
        let name = path.display().to_string();
        let file =
            File::open(path).map_err(|e| Error::Invalid(format!("cannot read {name}: {e}")))?;
        Ok(Lines {
            reader: BufReader::new(file),
            name,
            line: 0,
        })
    }

    fn next_line(&mut self) -> Result<Option<(u64, String)>> {
        loop {
            let mut bytes = Vec::new();
            let read = self.reader.read_until(b'\n', &mut bytes).map_err(|e| {
                Error::Invalid(format!("cannot read {}:{}: {e}", self.name, self.line + 1))
            })?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            if self.line == 1 && bytes.starts_with(UTF8_BOM) {
                bytes.drain(..UTF8_BOM.len());
            }
            let text = String::from_utf8(bytes).map_err(|_| {
                Error::Invalid(format!(
                    "{}:{}: line is not valid UTF-8",
                    self.name, self.line
                ))
            })?;
            if !text.trim().is_empty() {
                return Ok(Some((self.line, text)));
            }
        }
    }
}

fn written(path: &Path, e: std::io::Error) -> Error {
    Error::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_line(id: &str) -> String {
        format!(
            r#"{{"id":"batch_req_1","custom_id":"{id}","response":{{"status_code":200,"request_id":null,"body":{{}}}},"error":null}}"#
        )
    }

    fn input(ids: &[&str]) -> String {
        ids.iter()
            .map(|id| format!(r#"{{"id":"{id}","question":"?"}}"#))
            .collect::<Vec<_>>()
            .join("\n")
    }

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            Dir(tempfile::tempdir().unwrap())
        }
        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
        fn outputs(&self, files: &[(&str, &[&str])]) -> Vec<PathBuf> {
            files
                .iter()
                .map(|(name, ids)| {
                    let text: Vec<String> = ids.iter().map(|id| out_line(id)).collect();
                    self.file(name, &(text.join("\n") + "\n"))
                })
                .collect()
        }
        fn merge(&self, input: &Path, parts: &[PathBuf], n: Option<u64>) -> Result<Merged> {
            merge(input, parts, &self.0.path().join("out.jsonl"), n)
        }
        fn merged_ids(&self) -> Vec<String> {
            std::fs::read_to_string(self.0.path().join("out.jsonl"))
                .unwrap()
                .lines()
                .map(|l| output_id(l).unwrap())
                .collect()
        }
        fn only_out_absent(&self) {
            let names: Vec<String> = std::fs::read_dir(self.0.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                !names
                    .iter()
                    .any(|n| n == "out.jsonl" || n.contains(".tmp-")),
                "{names:?}"
            );
        }
    }

    fn message(r: Result<Merged>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn interleaves_outputs_in_input_order() {
        let d = Dir::new();
        let input = d.file(
            "in.jsonl",
            &format!("\u{feff}{}\n\n", input(&["a", "b", "c", "d"])),
        );
        let parts = d.outputs(&[("s0", &["b", "c"]), ("s1", &["a"]), ("s2", &["d"])]);
        let merged = d.merge(&input, &parts, None).unwrap();
        assert_eq!(merged.lines, 4);
        assert_eq!(merged.per_file, [2, 1, 1]);
        assert_eq!(d.merged_ids(), ["a", "b", "c", "d"]);
        // Lines are copied through byte for byte.
        let text = std::fs::read_to_string(d.0.path().join("out.jsonl")).unwrap();
        assert_eq!(text.lines().next().unwrap(), out_line("a"));
    }

    #[test]
    fn openai_request_lines_use_custom_id() {
        let d = Dir::new();
        let input = d.file(
            "in.jsonl",
            r#"{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{}}"#,
        );
        let parts = d.outputs(&[("s0", &["x"])]);
        assert_eq!(d.merge(&input, &parts, None).unwrap().lines, 1);
    }

    #[test]
    fn a_missing_line_names_its_id_line_and_shard() {
        let d = Dir::new();
        let input = d.file("in.jsonl", &input(&["q0000", "q0001", "q0002"]));
        // q0001 is in shard 1 of 3 (see shard.rs); its output was not given.
        let parts = d.outputs(&[("s0", &["q0000"]), ("s2", &["q0002"])]);
        let e = message(d.merge(&input, &parts, Some(3)));
        assert!(e.starts_with("missing: custom_id \"q0001\" ("), "{e}");
        assert!(e.contains("in.jsonl line 2) is in no shard output; is shard 1/3 finished?"));
        let e = message(d.merge(&input, &parts, None));
        assert!(e.contains("is its shard finished"), "{e}");
        d.only_out_absent();
    }

    #[test]
    fn the_same_id_in_two_outputs_is_refused_naming_both() {
        let d = Dir::new();
        let input = d.file("in.jsonl", &input(&["a", "b"]));
        let parts = d.outputs(&[("s0", &["a", "b"]), ("copy", &["b"])]);
        let e = message(d.merge(&input, &parts, None));
        assert!(e.starts_with("duplicated: custom_id \"b\" ("), "{e}");
        assert!(e.contains("s0 line 2 and "), "{e}");
        assert!(e.contains("copy line 1"), "{e}");
        d.only_out_absent();
    }

    #[test]
    fn out_of_order_left_over_and_bad_lines_name_file_and_line() {
        let d = Dir::new();
        let input = d.file("in.jsonl", &input(&["a", "b", "c"]));
        let parts = d.outputs(&[("s0", &["a", "c", "b"])]);
        let e = message(d.merge(&input, &parts, None));
        assert!(
            e.contains("s0:2: custom_id \"c\" is out of input order"),
            "{e}"
        );
        assert!(e.ends_with("has it only on line 3"), "{e}");

        let parts = d.outputs(&[("s0", &["a", "b", "c", "zz"])]);
        let e = message(d.merge(&input, &parts, None));
        assert!(e.contains("s0:4: custom_id \"zz\" is left over"), "{e}");

        let bad = d.file("bad", &format!("{}\nnot json\n", out_line("a")));
        let e = message(d.merge(&input, &[bad], None));
        assert!(e.contains("bad:2: not a JSON object"), "{e}");
        let bad = d.file("bad", r#"{"custom_id":7}"#);
        let e = message(d.merge(&input, &[bad], None));
        assert!(
            e.ends_with("bad:1: field `custom_id`: must be a string, found 7"),
            "{e}"
        );
        let bad_in = d.file("bad_in", "{\"id\":\"a\",\"question\":\"?\"}\n[1]\n");
        let parts = d.outputs(&[("s0", &["a"])]);
        let e = message(d.merge(&bad_in, &parts, None));
        assert!(e.contains("bad_in:2: not a JSON object"), "{e}");
        d.only_out_absent();
    }

    #[test]
    fn with_n_an_output_mixing_shards_is_refused() {
        let d = Dir::new();
        // q0000 is in shard 0 of 3, q0001 in shard 1.
        let input = d.file("in.jsonl", &input(&["q0000", "q0001"]));
        let parts = d.outputs(&[("s0", &["q0000", "q0001"])]);
        let e = message(d.merge(&input, &parts, Some(3)));
        assert!(
            e.contains("s0:2: custom_id \"q0001\" is in shard 1/3, but line 1 of this file is in shard 0/3"),
            "{e}"
        );
        assert_eq!(d.merge(&input, &parts, None).unwrap().lines, 2);
    }

    #[test]
    fn a_failed_merge_keeps_an_earlier_output() {
        let d = Dir::new();
        let input = d.file("in.jsonl", &input(&["a"]));
        let out = d.file("out.jsonl", "earlier\n");
        let parts = d.outputs(&[("s0", &[])]);
        assert!(merge(&input, &parts, &out, None).is_err());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier\n");
    }
}
