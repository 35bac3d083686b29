//! OpenAI's Files API and Batch API.
//!
//! Follows <https://platform.openai.com/docs/api-reference/files>,
//! <https://platform.openai.com/docs/api-reference/batch> and
//! <https://platform.openai.com/docs/guides/batch>. Choices where the docs are silent:
//!
//! - An upload with `purpose=batch` is checked line by line at once (each line a JSON object
//!   with a string `custom_id`, `method` `POST`, a string `url` and an object `body`), and a
//!   bad line is a 400 naming the line, with `code` `invalid_json_line`,
//!   `missing_required_parameter` or `invalid_method`. A file over 200 MB is a 400 `File is
//!   too large.` (the message users report).
//! - What depends on the batch is found while it validates and fails it (`status: failed`,
//!   `errors.data[{code, line, message, param}]`), with the codes users report: `empty_file`,
//!   `too_many_tasks` (over 50,000 requests), `duplicate_custom_id`, `url_mismatch` (a line's
//!   `url` is not the batch's `endpoint`) and `model_mismatch` (one model per batch).
//! - `request_counts` are all 0 while validating (the total is known once validation ends);
//!   `failed` counts HTTP errors, expired and cancelled requests alike (they are the lines of
//!   the error file). `errors` and `metadata` are `null` when there are none.
//! - The output file exists only if some request succeeded, the error file only if some did
//!   not; both are `purpose: batch_output`. Lines come in no particular order.
//! - Cancelling a batch that has ended is a 409; an unknown `after` cursor is a 400.

use std::convert::Infallible;
use std::io;

use bytes::Bytes;
use http::{Method, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::store::{
    hex_id, now_ms, stream_lines, Batch, FileContent, FileObj, Inner, Line, Outcome,
};
use super::{json, limit_param, take_fault, BatchState, Call, ControlError, LineError, Protocol};
use crate::sim::fault;
use crate::sim::SimBody;

/// The `endpoint`s the Batch API documents; the simulator answers only chat completions.
const ENDPOINTS: [&str; 5] = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
];

const PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

pub(super) async fn handle(call: Call<'_>) -> io::Result<Response<SimBody>> {
    match (call.method, call.segments().as_slice()) {
        (&Method::POST, ["files"]) => upload(&call).await,
        (&Method::GET, ["files"]) => list_files(&call),
        (&Method::GET, ["files", id]) => get_file(&call, id),
        (&Method::GET, ["files", id, "content"]) => file_content(&call, id).await,
        (&Method::DELETE, ["files", id]) => delete_file(&call, id),
        (&Method::POST, ["batches"]) => create(&call),
        (&Method::GET, ["batches"]) => list(&call),
        (&Method::GET, ["batches", id]) => retrieve(&call, id).await,
        (&Method::POST, ["batches", id, "cancel"]) => cancel(&call, id),
        _ => {
            let msg = format!("Invalid URL ({} {})", call.method, call.path);
            error(404, &msg, None, None)
        }
    }
}

/// An OpenAI error body `{"error":{message,type,param,code}}`.
pub(super) fn error_value(
    status: u16,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Value {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

pub(super) fn error(
    status: u16,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> io::Result<Response<SimBody>> {
    json(status, &error_value(status, message, param, code))
}

fn missing(param: &str) -> io::Result<Response<SimBody>> {
    let msg = format!("Missing required parameter: '{param}'.");
    error(400, &msg, Some(param), Some("missing_required_parameter"))
}

// ----- Files -----

/// `POST /files` (multipart). Under the xAI mount `purpose` may be left out, as xAI's
/// uploads do; it then means `batch`.
pub(super) async fn upload(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let ct = call.header("content-type").unwrap_or("");
    let Ok(boundary) = multer::parse_boundary(ct) else {
        let msg = "Invalid content type: expected multipart/form-data with a boundary.";
        return error(400, msg, None, None);
    };
    let body = call.body.clone();
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut purpose = None;
    let mut file: Option<(String, Bytes)> = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return error(400, &format!("Malformed multipart body: {e}"), None, None),
        };
        let name = field.name().map(str::to_owned);
        let filename = field.file_name().map(str::to_owned);
        let data = match field.bytes().await {
            Ok(d) => d,
            Err(e) => return error(400, &format!("Malformed multipart body: {e}"), None, None),
        };
        match name.as_deref() {
            Some("purpose") => purpose = Some(String::from_utf8_lossy(&data).trim().to_owned()),
            Some("file") => file = Some((filename.unwrap_or_else(|| "file".into()), data)),
            _ => {}
        }
    }
    let purpose = match (purpose, call.mount) {
        (Some(p), _) => p,
        (None, Some(Protocol::Xai)) => "batch".into(),
        (None, _) => return missing("purpose"),
    };
    if !PURPOSES.contains(&purpose.as_str()) {
        let msg = format!(
            "Invalid value: '{purpose}'. Supported values are: {}.",
            PURPOSES.map(|p| format!("'{p}'")).join(", ")
        );
        return error(400, &msg, Some("purpose"), Some("invalid_value"));
    }
    let Some((filename, data)) = file else {
        return missing("file");
    };
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    if purpose == "batch" {
        if !filename.ends_with(".jsonl") {
            let msg = "Invalid file format for Batch API. Must be .jsonl";
            return error(400, msg, Some("file"), None);
        }
        if data.len() > inner.limits.openai_max_file_bytes {
            return error(400, "File is too large.", None, None);
        }
        if let Err(e) = parse_file(&data) {
            let code = e.code.clone();
            return error(400, &e.message, Some("file"), Some(&code));
        }
    }
    let seq = inner.next_seq();
    let f = FileObj {
        id: hex_id("file-", seq, 0xf11e),
        filename,
        purpose,
        created_ms: now_ms(),
        bytes: data.len() as u64,
        content: FileContent::Data(data),
    };
    let v = file_object(&f);
    inner.add_file(f);
    inner.counters.files_uploaded += 1;
    json(200, &v)
}

fn file_object(f: &FileObj) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_ms / 1000,
        "expires_at": null,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
    })
}

/// `GET /files`: `after`, `limit` (1..=10000, default 10000), `order` (`desc` by default),
/// `purpose`.
pub(super) fn list_files(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let limit = match limit_param(call, &["limit"], 10_000, 10_000) {
        Ok(l) => l,
        Err(m) => return error(400, &m, Some("limit"), Some("invalid_value")),
    };
    let asc = match call.query.get("order").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            let msg = format!("Invalid value: '{o}'. Supported values are: 'asc' and 'desc'.");
            return error(400, &msg, Some("order"), Some("invalid_value"));
        }
    };
    let purpose = call.query.get("purpose");
    let inner = call.state.batches.lock();
    let mut files: Vec<&FileObj> = inner
        .file_order
        .iter()
        .filter_map(|id| inner.files.get(id))
        .filter(|f| purpose.is_none_or(|p| *p == f.purpose))
        .collect();
    if !asc {
        files.reverse();
    }
    let start = match call.query.get("after") {
        None => 0,
        Some(a) => match files.iter().position(|f| f.id == *a) {
            Some(i) => i + 1,
            None => {
                let msg = format!("No such File object: {a}");
                return error(400, &msg, Some("after"), None);
            }
        },
    };
    page(
        files[start..]
            .iter()
            .map(|f| (f.id.clone(), file_object(f))),
        limit,
    )
}

/// An OpenAI list page `{object, data, first_id, last_id, has_more}`.
fn page(
    items: impl Iterator<Item = (String, Value)>,
    limit: usize,
) -> io::Result<Response<SimBody>> {
    let mut items = items.peekable();
    let mut data = Vec::new();
    let (mut first, mut last) = (None, None);
    while data.len() < limit {
        let Some((id, v)) = items.next() else { break };
        first.get_or_insert_with(|| id.clone());
        last = Some(id);
        data.push(v);
    }
    let has_more = items.peek().is_some();
    json(
        200,
        &json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more}),
    )
}

fn no_file(id: &str) -> io::Result<Response<SimBody>> {
    error(404, &format!("No such File object: {id}"), Some("id"), None)
}

pub(super) fn get_file(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let inner = call.state.batches.lock();
    match inner.files.get(id) {
        Some(f) => json(200, &file_object(f)),
        None => no_file(id),
    }
}

pub(super) fn delete_file(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let mut inner = call.state.batches.lock();
    if inner.files.remove(id).is_none() {
        return no_file(id);
    }
    inner.file_order.retain(|f| f != id);
    json(200, &json!({"id": id, "object": "file", "deleted": true}))
}

/// `GET /files/{id}/content`: uploads as stored, output and error files streamed from the
/// batch.
pub(super) async fn file_content(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let st = call.state;
    let fault = {
        let mut inner = st.batches.lock();
        inner.counters.result_reads += 1;
        inner.download_faults.pop_front()
    };
    if let Some(r) = take_fault(fault, Bytes::new).await {
        return r;
    }
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let Some(f) = inner.files.get(id) else {
        return no_file(id);
    };
    let body: SimBody = match &f.content {
        FileContent::Data(d) => fault::full(d.clone()),
        FileContent::Output { batch, errors } => {
            let errors = *errors;
            let Some(b) = inner.batches.get(batch) else {
                return no_file(id);
            };
            stream_lines(b.lines.clone(), b.finished.clone(), move |l| {
                render_line(l, errors)
            })
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

/// One line of the output file (`errors == false`: the 2xx answers) or of the error file
/// (HTTP errors with `error: null`; expired and cancelled requests with `response: null`).
pub(super) fn render_line(l: &Line, errors: bool) -> Option<String> {
    let id = hex_id("batch_req_", l.seq, 0xb4);
    let cid = serde_json::to_string(&*l.custom_id).unwrap_or_default();
    let request_id = hex_id("req_", l.seq, 0x4e9);
    match (&l.outcome, errors) {
        (
            Outcome::Answered {
                content,
                model,
                prompt_chars,
            },
            false,
        ) => {
            let body = crate::sim::completion(l.seq, model, content, *prompt_chars as usize);
            Some(format!(
                r#"{{"id":"{id}","custom_id":{cid},"response":{{"status_code":200,"request_id":"{request_id}","body":{}}},"error":null}}"#,
                String::from_utf8_lossy(&body)
            ))
        }
        (
            Outcome::HttpError {
                status,
                code,
                message,
            },
            true,
        ) => {
            let body = error_value(*status, message, None, code.as_deref());
            Some(format!(
                r#"{{"id":"{id}","custom_id":{cid},"response":{{"status_code":{status},"request_id":"{request_id}","body":{body}}},"error":null}}"#
            ))
        }
        (Outcome::Expired, true) => Some(no_response(
            &id,
            &cid,
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        )),
        (Outcome::Cancelled, true) => Some(no_response(
            &id,
            &cid,
            "batch_cancelled",
            "This request was not executed because the batch was cancelled.",
        )),
        _ => None,
    }
}

fn no_response(id: &str, cid: &str, code: &str, message: &str) -> String {
    let err = json!({"code": code, "message": message});
    format!(r#"{{"id":"{id}","custom_id":{cid},"response":null,"error":{err}}}"#)
}

// ----- Input lines -----

#[derive(Deserialize)]
struct InLine<'a> {
    custom_id: Option<Value>,
    method: Option<Value>,
    url: Option<Value>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ModelOnly {
    model: Option<String>,
}

/// One valid input line; `body` is a slice of the file, not a copy.
pub(super) struct Parsed {
    pub line: u64,
    pub custom_id: String,
    pub url: String,
    pub model: Option<String>,
    pub body: Bytes,
}

/// Parses a batch input file, stopping at the first line that is not a request.
/// Whitespace-only lines are skipped (they still count in line numbers).
pub(super) fn parse_file(data: &Bytes) -> Result<Vec<Parsed>, LineError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut lineno = 0u64;
    while start < data.len() {
        let end = data[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(data.len(), |p| start + p);
        lineno += 1;
        let raw = &data[start..end];
        let line_start = start;
        start = end + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(parse_line(data, line_start, raw, lineno)?);
    }
    Ok(out)
}

fn parse_line(data: &Bytes, offset: usize, raw: &[u8], lineno: u64) -> Result<Parsed, LineError> {
    let bad = |code: &str, msg: String| LineError {
        line: Some(lineno),
        code: code.to_owned(),
        message: msg,
        param: None,
    };
    let not_json = || {
        bad(
            "invalid_json_line",
            format!("Line {lineno} of the batch input file is not a valid JSON object."),
        )
    };
    let text = std::str::from_utf8(raw).map_err(|_| not_json())?;
    let l: InLine<'_> = serde_json::from_str(text).map_err(|_| not_json())?;
    let missing = |field: &str| {
        bad(
            "missing_required_parameter",
            format!("Line {lineno} of the batch input file: missing or invalid '{field}'."),
        )
    };
    let custom_id = match l.custom_id {
        Some(Value::String(s)) => s,
        _ => return Err(missing("custom_id")),
    };
    match l.method {
        Some(Value::String(m)) if m == "POST" => {}
        Some(Value::String(m)) => {
            return Err(bad(
                "invalid_method",
                format!("Line {lineno} of the batch input file: method '{m}' is not supported; only POST is."),
            ))
        }
        _ => return Err(missing("method")),
    }
    let url = match l.url {
        Some(Value::String(u)) => u,
        _ => return Err(missing("url")),
    };
    let Some(body) = l.body.filter(|b| b.get().starts_with('{')) else {
        return Err(missing("body"));
    };
    let model = serde_json::from_str::<ModelOnly>(body.get())
        .ok()
        .and_then(|m| m.model);
    // The body is a sub-slice of `raw`, itself a slice of `data`: its offset is the
    // distance between the two pointers.
    let at = offset + (body.get().as_ptr() as usize - raw.as_ptr() as usize);
    Ok(Parsed {
        line: lineno,
        custom_id,
        url,
        model,
        body: data.slice(at..at + body.get().len()),
    })
}

/// The problems a validating batch reports (at most 1000).
fn validate(parsed: &[Parsed], endpoint: &str, max: usize) -> Vec<LineError> {
    let mut errs = Vec::new();
    if parsed.is_empty() {
        errs.push(LineError::new(
            None,
            "empty_file",
            "The batch input file is empty.",
        ));
        return errs;
    }
    if parsed.len() > max {
        let msg = format!(
            "The batch input file has {} requests; a batch can hold at most {max}.",
            parsed.len()
        );
        errs.push(LineError::new(None, "too_many_tasks", &msg));
    }
    let model = parsed[0].model.as_deref();
    let mut seen = std::collections::HashSet::new();
    for p in parsed {
        if errs.len() >= 1000 {
            break;
        }
        if !seen.insert(p.custom_id.as_str()) {
            let msg = format!(
                "The custom_id '{}' is used by more than one request.",
                p.custom_id
            );
            errs.push(LineError {
                param: Some("custom_id".into()),
                ..LineError::new(Some(p.line), "duplicate_custom_id", &msg)
            });
        }
        if p.url != endpoint {
            let msg = format!(
                "The url '{}' does not match the batch endpoint '{endpoint}'.",
                p.url
            );
            errs.push(LineError {
                param: Some("url".into()),
                ..LineError::new(Some(p.line), "url_mismatch", &msg)
            });
        }
        if p.model.as_deref() != model {
            let msg = "Every request of a batch must use the same model.";
            errs.push(LineError {
                param: Some("body.model".into()),
                ..LineError::new(Some(p.line), "model_mismatch", msg)
            });
        }
    }
    errs
}

// ----- Batches -----

fn create(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let Ok(v) = serde_json::from_slice::<Value>(&call.body) else {
        let msg = "We could not parse the JSON body of your request.";
        return error(400, msg, None, None);
    };
    let Some(file_id) = v.get("input_file_id").and_then(Value::as_str) else {
        return missing("input_file_id");
    };
    let Some(endpoint) = v.get("endpoint").and_then(Value::as_str) else {
        return missing("endpoint");
    };
    let Some(window) = v.get("completion_window").and_then(Value::as_str) else {
        return missing("completion_window");
    };
    if window != "24h" {
        let msg = format!("Invalid value: '{window}'. Supported values are: '24h'.");
        return error(400, &msg, Some("completion_window"), Some("invalid_value"));
    }
    if !ENDPOINTS.contains(&endpoint) {
        let msg = format!(
            "Invalid value: '{endpoint}'. Supported values are: {}.",
            ENDPOINTS.map(|e| format!("'{e}'")).join(", ")
        );
        return error(400, &msg, Some("endpoint"), Some("invalid_value"));
    }
    if endpoint != "/v1/chat/completions" {
        let msg =
            format!("The simulator answers '/v1/chat/completions' batches only, not '{endpoint}'.");
        return error(400, &msg, Some("endpoint"), Some("invalid_value"));
    }
    let metadata = match check_metadata(v.get("metadata")) {
        Ok(m) => m,
        Err(msg) => return error(400, &msg, Some("metadata"), Some("invalid_value")),
    };
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let Some(file) = inner.files.get(file_id) else {
        let msg = format!("Invalid 'input_file_id': '{file_id}'. No such file.");
        return error(400, &msg, Some("input_file_id"), None);
    };
    let data = match (&file.content, file.purpose.as_str()) {
        (FileContent::Data(d), "batch") => d.clone(),
        _ => {
            let msg = format!(
                "The file {file_id} has purpose '{}'; a batch input file must have purpose 'batch'.",
                file.purpose
            );
            return error(400, &msg, Some("input_file_id"), None);
        }
    };
    let (parsed, mut validation) = match parse_file(&data) {
        Ok(p) => (p, Vec::new()),
        Err(e) => (Vec::new(), vec![e]),
    };
    if validation.is_empty() {
        validation = validate(&parsed, endpoint, inner.limits.openai_max_requests);
    }
    let model = parsed
        .first()
        .and_then(|p| p.model.clone())
        .unwrap_or_default();
    let lines = parsed
        .into_iter()
        .map(|p| Line::new(&p.custom_id, p.body))
        .collect();
    let seq = inner.next_seq();
    let mut b = Batch::new(hex_id("batch_", seq, 0xba7c), Protocol::OpenAi, lines);
    b.metadata = metadata;
    b.endpoint = endpoint.to_owned();
    b.completion_window = window.to_owned();
    b.input_file_id = Some(file_id.to_owned());
    b.model = model;
    b.validation = validation;
    let v = object(&b);
    inner.add_batch(b);
    json(200, &v)
}

/// Up to 16 string pairs, keys up to 64 characters, values up to 512.
fn check_metadata(v: Option<&Value>) -> Result<serde_json::Map<String, Value>, String> {
    let m = match v {
        None | Some(Value::Null) => return Ok(serde_json::Map::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("metadata must be an object of string values.".into()),
    };
    if m.len() > 16 {
        return Err(format!(
            "metadata has {} keys; at most 16 are allowed.",
            m.len()
        ));
    }
    for (k, v) in m {
        if k.chars().count() > 64 {
            return Err(format!("metadata key '{k}' is longer than 64 characters."));
        }
        match v.as_str() {
            Some(s) if s.chars().count() <= 512 => {}
            Some(_) => {
                return Err(format!(
                    "metadata value of '{k}' is longer than 512 characters."
                ))
            }
            None => return Err(format!("metadata value of '{k}' must be a string.")),
        }
    }
    Ok(m.clone())
}

/// The batch object with every documented field.
pub(super) fn object(b: &Batch) -> Value {
    let c = b.counts();
    let secs = |ms: Option<u64>| ms.map(|m| m / 1000);
    // The total is known once validation has passed.
    let known = !matches!(b.state, BatchState::Validating | BatchState::Failed);
    let (total, completed, failed) = if known {
        (
            b.lines.len(),
            c.succeeded,
            c.errored + c.expired + c.cancelled,
        )
    } else {
        (0, 0, 0)
    };
    let (input, output) = b.usage();
    let errors = if b.errors.is_empty() {
        Value::Null
    } else {
        let data: Vec<Value> = b
            .errors
            .iter()
            .map(
                |e| json!({"code": e.code, "line": e.line, "message": e.message, "param": e.param}),
            )
            .collect();
        json!({"object": "list", "data": data})
    };
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": if b.model.is_empty() { Value::Null } else { json!(b.model) },
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.state.openai(),
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_ms / 1000,
        "in_progress_at": secs(b.times.in_progress),
        "expires_at": b.expires_ms / 1000,
        "finalizing_at": secs(b.times.finalizing),
        "completed_at": secs(b.times.completed),
        "failed_at": secs(b.times.failed),
        "expired_at": secs(b.times.expired),
        "cancelling_at": secs(b.times.cancelling),
        "cancelled_at": secs(b.times.cancelled),
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "usage": {
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output,
        },
        "metadata": if b.metadata.is_empty() { Value::Null } else { Value::Object(b.metadata.clone()) },
    })
}

fn no_batch(id: &str) -> io::Result<Response<SimBody>> {
    error(404, &format!("No batch found with id '{id}'."), None, None)
}

fn own<'a>(inner: &'a Inner, id: &str) -> Option<&'a Batch> {
    inner
        .batches
        .get(id)
        .filter(|b| b.protocol == Protocol::OpenAi)
}

/// `GET /batches`: newest first, `after` and `limit` (1..=100, default 20).
fn list(call: &Call<'_>) -> io::Result<Response<SimBody>> {
    let limit = match limit_param(call, &["limit"], 20, 100) {
        Ok(l) => l,
        Err(m) => return error(400, &m, Some("limit"), Some("invalid_value")),
    };
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    let all = inner.newest_first(Protocol::OpenAi);
    let start = match call.query.get("after") {
        None => 0,
        Some(a) => match all.iter().position(|b| b.id == *a) {
            Some(i) => i + 1,
            None => {
                return error(
                    400,
                    &format!("No batch found with id '{a}'."),
                    Some("after"),
                    None,
                )
            }
        },
    };
    page(
        all[start..].iter().map(|b| (b.id.clone(), object(b))),
        limit,
    )
}

async fn retrieve(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    super::poll(call, |inner| own(inner, id).map(object), || no_batch(id)).await
}

fn cancel(call: &Call<'_>, id: &str) -> io::Result<Response<SimBody>> {
    let st = call.state;
    let mut inner = st.batches.lock();
    inner.catch_up(st);
    if own(&inner, id).is_none() {
        return no_batch(id);
    }
    match inner.cancel(st, id) {
        Ok(_) => match own(&inner, id) {
            Some(b) => json(200, &object(b)),
            None => no_batch(id),
        },
        Err(ControlError::Terminal { state, .. }) => {
            let msg = format!("Cannot cancel a batch with status '{}'.", state.openai());
            error(409, &msg, None, None)
        }
        Err(_) => no_batch(id),
    }
}
