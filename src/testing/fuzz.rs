//! The core of each fuzz target: `Err` (or a panic) is a finding. Each is called by its
//! target in `fuzz/fuzz_targets/` and by the stable corpus replay in `tests/fuzz_replay.rs`.

use bytes::Bytes;

use super::{queue_model, ScratchFile};
use crate::batch::input;
use crate::chat::ChatJob;
use crate::codec;
use crate::llm::ChatOutcome;
use crate::store::{Durability, Store, StoreConfig};

/// A fuzz target's core: `Err` is a finding.
pub type Check = fn(&[u8]) -> Result<(), String>;

/// The fuzz targets, by name, with their core function (the replay test walks this list).
pub const TARGETS: &[(&str, Check)] = &[
    ("codec", codec),
    ("open_db", open_db),
    ("queue_ops", queue_ops),
    ("input_line", input_line),
    ("chat_response", chat_response),
    ("serve_request", serve_request),
];

/// Decodes `bytes` as every stored record type; for each that decodes, checks that encoding
/// and decoding again gives the same bytes. Decode errors are expected on garbage and fine;
/// `Err` means a round trip changed a value (a codec bug). The `codec` fuzz target.
pub fn codec(bytes: &[u8]) -> Result<(), String> {
    use crate::app::runs::RunRecord;
    use crate::cache::CachedResponse;
    use crate::chat::blackboard::{Entry, Session};
    use crate::chat::{ChatJob, ResponseRecord};
    use crate::memory::{experience::Experience, pattern::Pattern};
    use crate::queue::Job;
    round_trips::<Experience>(bytes)?;
    round_trips::<Pattern>(bytes)?;
    round_trips::<Job>(bytes)?;
    round_trips::<ChatJob>(bytes)?;
    round_trips::<ResponseRecord>(bytes)?;
    round_trips::<CachedResponse>(bytes)?;
    round_trips::<RunRecord>(bytes)?;
    round_trips::<Session>(bytes)?;
    round_trips::<crate::serve::files::FileRecord>(bytes)?;
    round_trips::<crate::serve::batches::BatchRecord>(bytes)?;
    round_trips::<Entry>(bytes)
}

/// Runs `bytes` through every request parser of `reasonq serve` (batch creation, chat
/// request, list query, multipart boundary, id check): a refusal must be a 4xx with a
/// message, an accepted batch request must name a file and the one endpoint, a list limit
/// must be in 1..=100. The `serve_request` fuzz target.
pub fn serve_request(bytes: &[u8]) -> Result<(), String> {
    use crate::serve::parse;
    let refusal = |e: &parse::ApiError| {
        if (400..500).contains(&e.status) && !e.message.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "a refusal that is not a client error with a message: {e:?}"
            ))
        }
    };
    match parse::create_batch(bytes) {
        Ok(c) if c.input_file_id.is_empty() || crate::llm::Api::from_url(&c.endpoint).is_none() => {
            return Err(format!("accepted a bad batch request: {c:?}"))
        }
        Ok(_) => {}
        Err(e) => refusal(&e)?,
    }
    match parse::chat_request(bytes) {
        Ok(v) if !v.is_object() => return Err(format!("accepted a non-object chat: {v}")),
        Ok(_) => {}
        Err(e) => refusal(&e)?,
    }
    let text = String::from_utf8_lossy(bytes);
    match parse::list_query(Some(&text)) {
        Ok(q) if !(1..=100).contains(&q.limit) => {
            return Err(format!("list limit out of range: {q:?}"))
        }
        Ok(_) => {}
        Err(e) => refusal(&e)?,
    }
    if let Err(e) = parse::boundary(&text) {
        refusal(&e)?;
    }
    if parse::plausible_id(&text) && (text.contains('/') || text.contains('.')) {
        return Err(format!(
            "an id that could leave the files directory: {text:?}"
        ));
    }
    e_body_renders(bytes)
}

/// An error body always renders as JSON with the four fields.
fn e_body_renders(bytes: &[u8]) -> Result<(), String> {
    let e = crate::serve::parse::ApiError::invalid(String::from_utf8_lossy(bytes), None);
    let body = e.body();
    let fields = ["message", "type", "param", "code"];
    if fields.iter().all(|f| body["error"].get(f).is_some()) {
        Ok(())
    } else {
        Err(format!("error body without its fields: {body}"))
    }
}

fn round_trips<T: codec::Record>(bytes: &[u8]) -> Result<(), String> {
    let Ok(value) = codec::decode::<T>(bytes) else {
        return Ok(());
    };
    let name = std::any::type_name::<T>();
    let once =
        codec::encode(&value).map_err(|e| format!("{name} decoded but does not encode: {e}"))?;
    let again: T =
        codec::decode(&once).map_err(|e| format!("{name} re-encoding does not decode: {e}"))?;
    match codec::encode(&again) {
        Ok(twice) if twice == once => Ok(()),
        _ => Err(format!("{name} changed in an encode/decode round trip")),
    }
}

/// Opens a database file made of `bytes`: any damage must be an error, never a panic or an
/// abort. When the file does open, the store must be usable (reads, a write, a clean close).
pub fn open_db(bytes: &[u8]) -> Result<(), String> {
    let file = ScratchFile::new("fuzz-open");
    std::fs::write(file.path(), bytes).map_err(|e| format!("cannot write scratch file: {e}"))?;
    let mut config = StoreConfig::new(file.path());
    config.durability = Durability::None;
    config.cache_size_bytes = 1024 * 1024;
    config.on_open.push(crate::queue::rescue_at_open);
    let Ok(store) = Store::open(config) else {
        return Ok(());
    };
    // Reads and writes on a damaged file may fail; they must not panic.
    let _ = store.read_blocking(|txn| crate::queue::counts_read(txn, None));
    let _ = store.read_blocking(|txn| crate::queue::list_read(txn, None, None, 100));
    let _ = store.write_blocking(|txn| {
        crate::queue::enqueue_many_in(
            txn,
            &crate::queue::QueueConfig::default(),
            &[crate::queue::NewJob::new("fuzz", "kind", vec![1])],
            1,
        )
    });
    let _ = store.close();
    Ok(())
}

/// A sequence of queue operations decoded from `bytes` must behave like the in-memory model.
pub fn queue_ops(bytes: &[u8]) -> Result<(), String> {
    let file = ScratchFile::new("fuzz-queue");
    queue_model::run(file.path(), &queue_model::ops_from_bytes(bytes))
}

/// Reads `bytes` as a batch input file and parses it as one line: never a panic; every
/// accepted line carries a JSON object body naming a model, and its job payload round-trips
/// through the codec.
pub fn input_line(bytes: &[u8]) -> Result<(), String> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(item) = input::parse_line(text, "default-model") {
            check_item(&item)?;
        }
    }
    let parsed = input::read(bytes, "fuzz.jsonl", "default-model")
        .map_err(|e| format!("reading from memory failed: {e}"))?;
    for item in &parsed.items {
        check_item(item)?;
    }
    for err in &parsed.errors {
        if err.line == 0 || err.message.is_empty() {
            return Err(format!("error without line or message: {err:?}"));
        }
    }
    Ok(())
}

fn check_item(item: &input::BatchItem) -> Result<(), String> {
    let body: serde_json::Value = serde_json::from_str(&item.body)
        .map_err(|e| format!("accepted line has a body that is not JSON ({e}): {item:?}"))?;
    if !body.get("model").is_some_and(serde_json::Value::is_string) {
        return Err(format!("accepted line has no model: {item:?}"));
    }
    let job = item.to_job();
    let bytes = codec::encode(&job).map_err(|e| format!("job does not encode: {e}"))?;
    match codec::decode::<ChatJob>(&bytes) {
        Ok(back) if back == job => Ok(()),
        _ => Err(format!("job payload changed in a round trip: {job:?}")),
    }
}

/// Parses `bytes` as a chat-completion body the way the client (and the cache) does: an
/// error or a response, never a panic; the error message must render.
pub fn chat_response(bytes: &[u8]) -> Result<(), String> {
    match ChatOutcome::from_parts(200, Some("rid".into()), Bytes::copy_from_slice(bytes)) {
        Ok(outcome) => {
            // What the worker reads from every answer.
            let _ = (outcome.response.content(), &outcome.response.usage);
            Ok(())
        }
        Err(e) => {
            if e.to_string().is_empty() {
                return Err("empty error message".into());
            }
            Ok(())
        }
    }
}
