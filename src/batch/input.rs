//! Reading a batch input file: OpenAI batch request lines or the short form, validated whole
//! before anything is enqueued.
//!
//! Accepted lines:
//! - OpenAI's batch request format, exactly as documented:
//!   `{"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
//! - The short form `{"id", "question", "system"?, "model"?, "params"?}`, which becomes the
//!   same request.
//!
//! Both forms may carry the line options of [`OPTION_FIELDS`] (`domain`, `strategy`,
//! `expected` with `match`, `memory`) as top-level keys; see docs/memory.md.
//!
//! Every problem is reported with the file, the line and the field, and nothing is enqueued
//! unless every line is valid (or the caller asked to skip invalid lines).

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chat::ChatJob;
use crate::llm::Api;
use crate::memory::{Expectation, Strategy};

/// The only endpoint a batch line may name.
pub const CHAT_COMPLETIONS_URL: &str = "/v1/chat/completions";

/// The UTF-8 byte-order mark, accepted at the start of the file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Input limits: a line larger than this is refused before it is parsed.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One valid input line, ready to become a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    /// 1-based line number in the input file.
    pub line: usize,
    /// The caller's id for this request (OpenAI's `custom_id`, or `id` in the short form).
    pub custom_id: String,
    /// The chat-completions request body as JSON text, with `model` filled in.
    pub body: String,
    /// Domain for memory and pattern statistics ("general" when not given).
    pub domain: String,
    /// Strategy name ([`Strategy::name`]), if the line names one.
    pub strategy: Option<String>,
    /// The expected answer and how to compare, for evaluation batches.
    pub expected: Option<Expectation>,
    /// Whether memory goes into the prompt, if the line says.
    pub memory: Option<bool>,
    /// The model the request names (or the default it was given; empty for a moderation
    /// that names none).
    pub model: String,
    /// The endpoint the line's `url` names.
    pub api: Api,
}

impl BatchItem {
    /// The chat job this line becomes (memory off unless the line says).
    pub fn to_job(&self) -> ChatJob {
        ChatJob {
            custom_id: self.custom_id.clone(),
            line: self.line as u64,
            body: self.body.clone(),
            domain: self.domain.clone(),
            strategy: self.strategy.clone(),
            expected: self.expected.clone(),
            memory: self.memory.unwrap_or(false),
            api: self.api,
            validate: None,
        }
    }
}

/// Top-level fields of an OpenAI batch request line (the line options come on top).
pub const OPENAI_FIELDS: &[&str] = &["custom_id", "method", "url", "body"];
/// Fields of the short form that make the request.
pub const SHORT_FORM_FIELDS: &[&str] = &["id", "question", "system", "model", "params"];
/// Line options both forms take as top-level keys.
pub const OPTION_FIELDS: &[&str] = &["domain", "strategy", "expected", "match", "memory"];

/// The line options of [`OPTION_FIELDS`], validated.
#[derive(Debug, Clone, Default, PartialEq)]
struct LineOptions {
    domain: String,
    strategy: Option<String>,
    expected: Option<Expectation>,
    memory: Option<bool>,
}

fn line_options(obj: &Map<String, Value>) -> Result<LineOptions, LineError> {
    let domain = optional_string(obj, "domain")?.unwrap_or_else(|| "general".into());
    let strategy = match optional_string(obj, "strategy")? {
        None => None,
        Some(s) => Some(
            s.parse::<Strategy>()
                .map_err(|e| field_err("strategy", e))?
                .name()
                .to_string(),
        ),
    };
    let rule = obj.get("match").filter(|v| !v.is_null());
    let expected = match obj.get("expected") {
        None | Some(Value::Null) if rule.is_some() => {
            return Err(field_err("match", "given without `expected`"))
        }
        None | Some(Value::Null) => None,
        Some(v) => Some(Expectation::parse(v, rule).map_err(|(f, m)| field_err(&f, m))?),
    };
    let memory = match obj.get("memory") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(field_err("memory", "must be true or false")),
    };
    Ok(LineOptions {
        domain,
        strategy,
        expected,
        memory,
    })
}

/// A line that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: String,
    pub line: usize,
    /// The offending field as a path (`body.messages[0].role`), when one field is to blame.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for InputError {}

/// The result of reading a whole file.
#[derive(Debug, Default)]
pub struct ParsedInput {
    /// Valid lines, in file order.
    pub items: Vec<BatchItem>,
    /// Invalid lines, in file order.
    pub errors: Vec<InputError>,
}

/// Reads and checks every line of `reader` into memory (`name` in error messages); for
/// small inputs and the fuzz target. Batch files go through [`scan_file`] and [`items`],
/// which stream.
pub fn read(reader: impl BufRead, name: &str, default_model: &str) -> std::io::Result<ParsedInput> {
    let mut parsed = ParsedInput::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for entry in lines(reader, name, default_model) {
        match entry? {
            Ok(parsed_line) => {
                let Parsed { item, id_field } = parsed_line;
                if let Some(&first) = seen.get(&item.custom_id) {
                    parsed
                        .errors
                        .push(duplicate_id(name, &item, id_field, first));
                    continue;
                }
                seen.insert(item.custom_id.clone(), item.line);
                parsed.items.push(item);
            }
            Err(e) => parsed.errors.push(e),
        }
    }
    Ok(parsed)
}

/// What one checking pass over a file keeps: the bad lines, the models named, and how to
/// find the good lines again. Memory is a few bytes per line (a hash of its id, for
/// duplicates), never the requests themselves.
#[derive(Debug)]
pub struct Scan {
    /// The file as named in messages.
    pub name: String,
    /// Valid requests.
    pub valid: usize,
    /// Invalid lines, in file order.
    pub errors: Vec<InputError>,
    /// Every model the valid lines name.
    pub models: std::collections::BTreeSet<String>,
    /// The first line naming each strategy (`--validate` refuses the ones with a reply
    /// format of their own).
    pub strategies: std::collections::BTreeMap<String, usize>,
    /// The first line to an endpoint other than chat completions, and that endpoint.
    pub first_other: Option<(usize, Api)>,
    /// The `--validate` schema the chat lines' replies are checked against (set by the
    /// use case that reads the file with one).
    pub validate: Option<crate::chat::structured::SchemaFile>,
    /// Size and modification time when scanned: a second pass refuses a changed file.
    stamp: (u64, Option<std::time::SystemTime>),
}

/// Checks every line of `path` in one streaming pass (see [`Scan`]). Duplicate ids are
/// found from 8-byte hashes; only lines whose hash repeats are read again to name them.
pub fn scan_file(path: &Path, default_model: &str) -> std::io::Result<Scan> {
    let name = path.display().to_string();
    let stamp = stamp_of(path)?;
    let mut scan = Scan {
        name: name.clone(),
        valid: 0,
        errors: Vec::new(),
        models: Default::default(),
        strategies: Default::default(),
        first_other: None,
        validate: None,
        stamp,
    };
    let mut ids: Vec<u64> = Vec::new();
    for entry in lines(open(path)?, &name, default_model) {
        match entry? {
            Ok(item) => {
                ids.push(id_hash(&item.custom_id));
                // A moderation that names no model lets the provider pick.
                if let Some(strategy) = &item.strategy {
                    if !scan.strategies.contains_key(strategy) {
                        scan.strategies.insert(strategy.clone(), item.line);
                    }
                }
                if item.api != Api::ChatCompletions && scan.first_other.is_none() {
                    scan.first_other = Some((item.line, item.api));
                }
                if !item.model.is_empty() && !scan.models.contains(&item.model) {
                    scan.models.insert(item.item.model);
                }
                scan.valid += 1;
            }
            Err(e) => scan.errors.push(e),
        }
    }
    ids.sort_unstable();
    let repeated: std::collections::HashSet<u64> = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    drop(ids);
    if !repeated.is_empty() {
        // Second look at the few lines whose id hash repeats: which ids really repeat.
        let mut first: HashMap<String, usize> = HashMap::new();
        for entry in lines(open(path)?, &name, default_model) {
            let Ok(item) = entry? else { continue };
            if !repeated.contains(&id_hash(&item.custom_id)) {
                continue;
            }
            match first.get(&item.custom_id) {
                Some(&line) => {
                    scan.valid -= 1;
                    scan.errors
                        .push(duplicate_id(&name, &item, item.id_field, line));
                }
                None => {
                    first.insert(item.item.custom_id, item.item.line);
                }
            }
        }
        scan.errors.sort_by_key(|e| e.line);
    }
    Ok(scan)
}

/// The valid requests of a scanned file, read again in order, one at a time. A file that
/// changed since the scan is an error (its lines were not the ones checked).
pub fn items(
    path: &Path,
    default_model: &str,
    scan: &Scan,
) -> std::io::Result<impl Iterator<Item = std::io::Result<BatchItem>> + use<>> {
    let changed = || {
        std::io::Error::other(format!(
            "{} changed while the batch was being read; run it again",
            scan.name
        ))
    };
    if stamp_of(path)? != scan.stamp {
        return Err(changed());
    }
    let bad: Vec<usize> = scan.errors.iter().map(|e| e.line).collect();
    let mut next_bad = 0;
    let mut left = scan.valid;
    let name = scan.name.clone();
    let stream = lines(open(path)?, &scan.name, default_model);
    let mut stream = stream.fuse();
    let changed = move || {
        std::io::Error::other(format!(
            "{name} changed while the batch was being read; run it again"
        ))
    };
    Ok(std::iter::from_fn(move || loop {
        let entry = match stream.next() {
            Some(entry) => entry,
            None if left == 0 => return None,
            None => return Some(Err(changed())),
        };
        let line = match &entry {
            Ok(Ok(item)) => item.line,
            Ok(Err(e)) => e.line,
            Err(_) => 0,
        };
        while next_bad < bad.len() && bad[next_bad] < line {
            next_bad += 1;
        }
        if next_bad < bad.len() && bad[next_bad] == line {
            continue;
        }
        return match entry {
            Ok(Ok(item)) if left > 0 => {
                left -= 1;
                Some(Ok(item.item))
            }
            Err(e) => Some(Err(e)),
            _ => Some(Err(changed())),
        };
    }))
}

fn open(path: &Path) -> std::io::Result<std::io::BufReader<std::fs::File>> {
    Ok(std::io::BufReader::with_capacity(
        256 * 1024,
        std::fs::File::open(path)?,
    ))
}

fn stamp_of(path: &Path) -> std::io::Result<(u64, Option<std::time::SystemTime>)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.len(), meta.modified().ok()))
}

/// A stable-within-this-process hash of an id, to spot repeats in 8 bytes a line.
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// The error of a line whose id an earlier line (`first`) already used.
fn duplicate_id(file: &str, item: &BatchItem, id_field: &str, first: usize) -> InputError {
    InputError {
        file: file.to_string(),
        line: item.line,
        field: Some(id_field.to_string()),
        message: format!(
            "duplicate id {:?} (first used on line {first})",
            item.custom_id
        ),
    }
}

/// A parsed line with the name of its id field (for duplicate errors).
struct Parsed {
    item: BatchItem,
    id_field: &'static str,
}

impl std::ops::Deref for Parsed {
    type Target = BatchItem;
    fn deref(&self) -> &BatchItem {
        &self.item
    }
}

/// Every non-blank line of `reader`, checked on its own (no duplicate check), in order.
fn lines(
    reader: impl BufRead,
    name: &str,
    default_model: &str,
) -> impl Iterator<Item = std::io::Result<Result<Parsed, InputError>>> {
    let name = name.to_string();
    let default_model = default_model.to_string();
    split_lines(reader).filter_map(move |(index, line)| {
        let line_no = index + 1;
        let err = |field: Option<&str>, message: String| InputError {
            file: name.clone(),
            line: line_no,
            field: field.map(str::to_string),
            message,
        };
        let mut bytes = match line {
            Ok(bytes) => bytes,
            Err(e) => return Some(Err(e)),
        };
        // Editors on Windows start files with a UTF-8 byte-order mark.
        if index == 0 && bytes.starts_with(UTF8_BOM) {
            bytes.drain(..UTF8_BOM.len());
        }
        if bytes.len() > MAX_LINE_BYTES {
            return Some(Ok(Err(err(
                None,
                format!(
                    "line is {} bytes, over the limit of {MAX_LINE_BYTES}",
                    bytes.len()
                ),
            ))));
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Some(Ok(Err(err(None, "line is not valid UTF-8".into()))));
        };
        if text.trim().is_empty() {
            return None;
        }
        Some(Ok(match parse_line(text, &default_model) {
            Ok(mut item) => {
                item.line = line_no;
                Ok(Parsed {
                    item,
                    id_field: id_field(text),
                })
            }
            Err((field, message)) => Err(err(field.as_deref(), message)),
        }))
    })
}

/// Lines as raw bytes (so one bad byte is reported for its line, not as an I/O error), with a
/// cap on what is buffered for a single over-long line.
fn split_lines(
    mut reader: impl BufRead,
) -> impl Iterator<Item = (usize, std::io::Result<Vec<u8>>)> {
    let mut index = 0;
    std::iter::from_fn(move || {
        let mut buf = Vec::new();
        let mut total = 0usize;
        loop {
            let chunk = match reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Some((index, Err(e))),
            };
            if chunk.is_empty() {
                if total == 0 {
                    return None;
                }
                break;
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(pos) => (pos + 1, true),
                None => (chunk.len(), false),
            };
            // Keep at most one byte past the limit: enough to know the line is too long.
            let room = (MAX_LINE_BYTES + 1).saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..take.min(room)]);
            total += take;
            reader.consume(take);
            if done {
                break;
            }
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let out = (index, Ok(buf));
        index += 1;
        Some(out)
    })
}

fn id_field(text: &str) -> &'static str {
    if text.contains("\"custom_id\"") {
        "custom_id"
    } else {
        "id"
    }
}

type LineError = (Option<String>, String);

fn field_err(field: &str, message: impl Into<String>) -> LineError {
    (Some(field.to_string()), message.into())
}

/// Parses one non-empty line into an item (line number filled by the caller).
pub fn parse_line(text: &str, default_model: &str) -> Result<BatchItem, LineError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| (None, format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err((None, "expected a JSON object".into()));
    };
    if obj.contains_key("custom_id") || obj.contains_key("body") || obj.contains_key("url") {
        parse_openai(obj, default_model)
    } else {
        parse_short(obj, default_model)
    }
}

fn required_string(obj: &Map<String, Value>, field: &str) -> Result<String, LineError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(field_err(field, "missing")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(field_err(field, "must not be empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(field_err(field, "must be a string")),
    }
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, LineError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(field_err(field, "must not be empty")),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(field_err(field, "must be a string")),
    }
}

fn parse_openai(mut obj: Map<String, Value>, default_model: &str) -> Result<BatchItem, LineError> {
    let known = |k: &str| OPENAI_FIELDS.contains(&k) || OPTION_FIELDS.contains(&k);
    if let Some(unknown) = obj.keys().find(|k| !known(k)) {
        return Err(field_err(
            unknown,
            format!(
                "unknown field; a request line takes {}, {}",
                OPENAI_FIELDS.join(", "),
                OPTION_FIELDS.join(", ")
            ),
        ));
    }
    let custom_id = required_string(&obj, "custom_id")?;
    let method = required_string(&obj, "method")?;
    if method != "POST" {
        return Err(field_err(
            "method",
            format!("must be \"POST\", found {method:?}"),
        ));
    }
    let url = required_string(&obj, "url")?;
    let Some(api) = Api::from_url(&url) else {
        let known: Vec<&str> = Api::ALL.iter().map(|a| a.url()).collect();
        return Err(field_err(
            "url",
            format!(
                "unsupported endpoint {url:?}; supported: {}",
                known.join(", ")
            ),
        ));
    };
    let body = match obj.remove("body") {
        Some(Value::Object(body)) => body,
        None | Some(Value::Null) => return Err(field_err("body", "missing")),
        Some(_) => return Err(field_err("body", "must be a JSON object")),
    };
    if api != Api::ChatCompletions {
        return finish_other(custom_id, body, api, default_model, &obj);
    }
    let options = line_options(&obj)?;
    finish(custom_id, body, default_model, "body.", options)
}

/// A line for another endpoint than chat completions: its body's own fields are checked
/// (model, the endpoint's required input, no streaming) and it is sent as it is. The line
/// options are about chat and refused here, so no one thinks they applied.
fn finish_other(
    custom_id: String,
    mut body: Map<String, Value>,
    api: Api,
    default_model: &str,
    line: &Map<String, Value>,
) -> Result<BatchItem, LineError> {
    if let Some(option) = OPTION_FIELDS
        .iter()
        .find(|f| line.get(**f).is_some_and(|v| !v.is_null()))
    {
        return Err(field_err(
            option,
            format!(
                "applies to {CHAT_COMPLETIONS_URL} lines only (memory, strategies, the \
                 blackboard and judging work on chat), not to {}",
                api.url()
            ),
        ));
    }
    match body.get("model") {
        None | Some(Value::Null) if api.needs_model() => {
            body.insert("model".into(), Value::String(default_model.to_string()));
        }
        None | Some(Value::Null) => {
            body.remove("model");
        }
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        Some(_) => return Err(field_err("body.model", "must be a non-empty string")),
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    for field in api.required() {
        let at = format!("body.{field}");
        match body.get(*field) {
            None | Some(Value::Null) => return Err(field_err(&at, "missing")),
            Some(Value::String(t)) if t.is_empty() => {
                return Err(field_err(&at, "must not be empty"))
            }
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(field_err(&at, "must not be empty"))
            }
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => return Err(field_err(&at, "must be a string or an array")),
        }
    }
    let body = sendable(body, "body.")?;
    Ok(BatchItem {
        line: 0,
        custom_id,
        body,
        domain: "general".into(),
        strategy: None,
        expected: None,
        memory: None,
        model,
        api,
    })
}

fn parse_short(mut obj: Map<String, Value>, default_model: &str) -> Result<BatchItem, LineError> {
    let known = |k: &str| SHORT_FORM_FIELDS.contains(&k) || OPTION_FIELDS.contains(&k);
    if let Some(unknown) = obj.keys().find(|k| !known(k)) {
        return Err(field_err(
            unknown,
            format!(
                "unknown field; the short form takes {}, {}",
                SHORT_FORM_FIELDS.join(", "),
                OPTION_FIELDS.join(", ")
            ),
        ));
    }
    let custom_id = required_string(&obj, "id")?;
    let question = required_string(&obj, "question")?;
    let system = optional_string(&obj, "system")?;
    let model = optional_string(&obj, "model")?;
    let mut body = match obj.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => {
            if params.contains_key("messages") {
                return Err(field_err(
                    "params.messages",
                    "not allowed in the short form; use `question` and `system`",
                ));
            }
            params
        }
        Some(_) => return Err(field_err("params", "must be a JSON object")),
    };
    if let Some(model) = model {
        body.insert("model".into(), Value::String(model));
    }
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": question}));
    body.insert("messages".into(), Value::Array(messages));
    let options = line_options(&obj)?;
    finish(custom_id, body, default_model, "params.", options)
}

/// The body as JSON text, as it will be sent; a batch line cannot stream.
fn sendable(body: Map<String, Value>, prefix: &str) -> Result<String, LineError> {
    if body.get("stream").is_some_and(|s| s != &Value::Bool(false)) {
        return Err(field_err(
            &format!("{prefix}stream"),
            "streaming is not supported in a batch",
        ));
    }
    serde_json::to_string(&Value::Object(body))
        .map_err(|e| (None, format!("cannot encode body: {e}")))
}

/// Checks the request body shared by both forms and fills in the model.
fn finish(
    custom_id: String,
    mut body: Map<String, Value>,
    default_model: &str,
    prefix: &str,
    options: LineOptions,
) -> Result<BatchItem, LineError> {
    let f = |name: &str| format!("{prefix}{name}");
    match body.get("model") {
        None | Some(Value::Null) => {
            body.insert("model".into(), Value::String(default_model.to_string()));
        }
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        Some(_) => return Err(field_err(&f("model"), "must be a non-empty string")),
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(default_model)
        .to_string();
    let messages = match body.get("messages") {
        None | Some(Value::Null) => return Err(field_err(&f("messages"), "missing")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(field_err(&f("messages"), "must not be empty"))
        }
        Some(Value::Array(m)) => m,
        Some(_) => return Err(field_err(&f("messages"), "must be an array")),
    };
    for (i, message) in messages.iter().enumerate() {
        let at = |name: &str| f(&format!("messages[{i}]{name}"));
        let Value::Object(m) = message else {
            return Err(field_err(&at(""), "must be an object"));
        };
        match m.get("role") {
            Some(Value::String(r))
                if ["system", "developer", "user", "assistant", "tool"].contains(&r.as_str()) => {}
            Some(Value::String(r)) => {
                return Err(field_err(&at(".role"), format!("unknown role {r:?}")))
            }
            Some(_) => return Err(field_err(&at(".role"), "must be a string")),
            None => return Err(field_err(&at(".role"), "missing")),
        }
        match m.get("content") {
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            // Assistant messages with tool calls may have no content.
            None | Some(Value::Null) if m.contains_key("tool_calls") => {}
            None => return Err(field_err(&at(".content"), "missing")),
            Some(_) => return Err(field_err(&at(".content"), "must be a string or an array")),
        }
    }
    let structured = crate::chat::structured::check_request(body.get("response_format"))
        .map_err(|(field, message)| field_err(&f(&field), message))?;
    if let Some(conflict) = options
        .strategy
        .as_deref()
        .filter(|_| structured)
        .and_then(|s| strategy_conflict(s, "its response_format"))
    {
        return Err(field_err("strategy", conflict));
    }
    let body = sendable(body, prefix)?;
    Ok(BatchItem {
        line: 0,
        custom_id,
        body,
        domain: options.domain,
        strategy: options.strategy,
        expected: options.expected,
        memory: options.memory,
        model,
        api: Api::ChatCompletions,
    })
}

/// Why `strategy` cannot run a line whose reply is checked against `check`, if it cannot:
/// such a reply is the model's text as it is, and the other strategies (chain of thought,
/// structured, blackboard) ask for formats of their own.
pub fn strategy_conflict(strategy: &str, check: &str) -> Option<String> {
    (strategy != Strategy::DIRECT.name()).then(|| {
        format!(
            "{strategy:?} asks for a reply format of its own, but the reply is checked against \
             {check}; use \"direct\" or leave the strategy out"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_pass_refuses_a_file_changed_since_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let line = |id: &str| format!("{{\"id\":\"{id}\",\"question\":\"hi\"}}\n");
        std::fs::write(&path, line("a") + &line("b")).unwrap();
        let scan = scan_file(&path, "grok-4").unwrap();
        assert_eq!(scan.valid, 2);
        let ids: Vec<String> = items(&path, "grok-4", &scan)
            .unwrap()
            .map(|i| i.unwrap().custom_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        std::fs::write(&path, line("a") + &line("b") + &line("c")).unwrap();
        let refused = items(&path, "grok-4", &scan)
            .err()
            .expect("a changed file is refused");
        assert!(refused.to_string().contains("changed"), "{refused}");
    }

    #[test]
    fn the_check_names_a_repeated_id_with_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let text = "{\"id\":\"a\",\"question\":\"x\"}\n{\"id\":\"b\",\"question\":\"y\"}\n{\"id\":\"a\",\"question\":\"z\"}\n";
        std::fs::write(&path, text).unwrap();
        let scan = scan_file(&path, "grok-4").unwrap();
        assert_eq!(scan.valid, 2);
        assert_eq!(scan.errors.len(), 1);
        assert_eq!(scan.errors[0].line, 3);
        assert!(
            scan.errors[0].message.contains("first used on line 1"),
            "{}",
            scan.errors[0]
        );
        let ids: Vec<String> = items(&path, "grok-4", &scan)
            .unwrap()
            .map(|i| i.unwrap().custom_id)
            .collect();
        assert_eq!(ids, ["a", "b"], "the repeat is skipped in the second pass");
    }

    fn parse(text: &str) -> ParsedInput {
        read(text.as_bytes(), "in.jsonl", "grok-4").unwrap()
    }

    fn only_error(text: &str) -> String {
        let p = parse(text);
        assert!(p.items.is_empty(), "expected no items, got {:?}", p.items);
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        p.errors[0].to_string()
    }

    #[test]
    fn openai_line_is_kept_as_written_with_model_filled() {
        let p = parse(
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"hi"}],"temperature":0,"reasoning_effort":"low"}}"#,
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let body: Value = serde_json::from_str(&p.items[0].body).unwrap();
        assert_eq!(body["model"], "grok-4");
        assert_eq!(body["reasoning_effort"], "low");
        assert_eq!(p.items[0].custom_id, "a");
        assert_eq!(p.items[0].line, 1);
    }

    #[test]
    fn a_byte_order_mark_on_line_one_is_accepted() {
        let p = parse(
            "\u{feff}{\"id\":\"q1\",\"question\":\"hi\"}\n{\"id\":\"q2\",\"question\":\"x\"}",
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.items.len(), 2);
        // Only at the start of the file: elsewhere it is not JSON.
        let e = only_error("\n\u{feff}{\"id\":\"q1\",\"question\":\"hi\"}");
        assert!(e.starts_with("in.jsonl:2: malformed JSON"), "{e}");
    }

    #[test]
    fn a_typo_in_an_option_of_a_request_line_is_reported() {
        let e = only_error(
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[]},"stratgy":"structured"}"#,
        );
        assert!(
            e.starts_with(
                "in.jsonl:1: field `stratgy`: unknown field; a request line takes custom_id"
            ),
            "{e}"
        );
    }

    #[test]
    fn short_form_becomes_a_chat_request() {
        let p = parse(
            "\n{\"id\":\"q1\",\"question\":\"2+2?\",\"system\":\"be brief\",\"model\":\"m\",\"params\":{\"temperature\":0},\"domain\":\"math\"}\n",
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let item = &p.items[0];
        assert_eq!(item.line, 2);
        assert_eq!(item.domain, "math");
        let body: Value = serde_json::from_str(&item.body).unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "2+2?");
    }

    #[test]
    fn bad_lines_name_line_and_field() {
        assert_eq!(
            only_error("{nope"),
            "in.jsonl:1: malformed JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(only_error("[1]"), "in.jsonl:1: expected a JSON object");
        assert_eq!(
            only_error(
                r#"{"custom_id":"a","method":"GET","url":"/v1/chat/completions","body":{}}"#
            ),
            "in.jsonl:1: field `method`: must be \"POST\", found \"GET\""
        );
        assert!(only_error(
            r#"{"custom_id":"a","method":"POST","url":"/v1/images/generations","body":{}}"#
        )
        .starts_with("in.jsonl:1: field `url`: unsupported endpoint \"/v1/images/generations\""));
        assert_eq!(
            only_error(r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{}}"#),
            "in.jsonl:1: field `body.input`: missing"
        );
        assert_eq!(
            only_error(r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions"}"#),
            "in.jsonl:1: field `body`: missing"
        );
        assert_eq!(
            only_error(
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"robot","content":"x"}]}}"#
            ),
            "in.jsonl:1: field `body.messages[0].role`: unknown role \"robot\""
        );
        assert_eq!(
            only_error(r#"{"question":"x"}"#),
            "in.jsonl:1: field `id`: missing"
        );
        assert_eq!(
            only_error(r#"{"id":"x"}"#),
            "in.jsonl:1: field `question`: missing"
        );
        assert!(only_error(r#"{"id":"x","question":"q","temprature":0}"#)
            .starts_with("in.jsonl:1: field `temprature`: unknown field"));
        assert_eq!(
            only_error(r#"{"id":"x","question":"q","params":{"stream":true}}"#),
            "in.jsonl:1: field `params.stream`: streaming is not supported in a batch"
        );
    }

    #[test]
    fn duplicate_ids_are_refused_with_both_lines() {
        let p = parse("{\"id\":\"a\",\"question\":\"1\"}\n{\"id\":\"a\",\"question\":\"2\"}\n");
        assert_eq!(p.items.len(), 1);
        assert_eq!(
            p.errors[0].to_string(),
            "in.jsonl:2: field `id`: duplicate id \"a\" (first used on line 1)"
        );
    }

    #[test]
    fn over_long_and_non_utf8_lines_are_errors() {
        let mut text = format!(
            "{{\"id\":\"a\",\"question\":\"{}\"}}\n",
            "x".repeat(MAX_LINE_BYTES)
        );
        text.push_str("{\"id\":\"b\",\"question\":\"ok\"}");
        let p = parse(&text);
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].line, 2);
        assert!(p.errors[0].to_string().contains("over the limit"));
        let p = read(&b"\xff\xfe\n"[..], "in.jsonl", "m").unwrap();
        assert_eq!(
            p.errors[0].to_string(),
            "in.jsonl:1: line is not valid UTF-8"
        );
    }

    #[test]
    fn both_forms_carry_evaluation_and_memory_options() {
        let p = parse(concat!(
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"2+2"}]},"#,
            r#""expected":4,"match":{"rule":"numeric","tolerance":0.5},"domain":"math","strategy":"chain-of-thought","memory":true}"#,
            "\n",
            r#"{"id":"b","question":"capital of France","expected":"paris","match":"contains"}"#,
        ));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let a = &p.items[0];
        assert_eq!(a.domain, "math");
        assert_eq!(a.strategy.as_deref(), Some("chain_of_thought"));
        assert_eq!(a.memory, Some(true));
        let expected = a.expected.as_ref().unwrap();
        assert_eq!(expected.answer, "4");
        assert_eq!(
            expected.rule,
            crate::memory::MatchRule::Numeric { tolerance: 0.5 }
        );
        let b = &p.items[1];
        assert_eq!(
            b.expected.as_ref().unwrap().rule,
            crate::memory::MatchRule::Contains
        );
        assert_eq!((b.memory, b.strategy.clone()), (None, None));
        let body: Value = serde_json::from_str(&a.body).unwrap();
        assert!(
            body.get("expected").is_none(),
            "options never reach the request"
        );
    }
}
