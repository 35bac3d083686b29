//! The Files API: each file is a file of its own in the directory beside the database
//! (`<db>.files/`, named by its id), indexed in the `serve_files` table.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyStream;
use hyper::body::Incoming;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::index;
use super::parse::ApiError;
use crate::app::App;
use crate::codec;
use crate::error::{Error, Result};
use crate::store::tables;

/// Purposes of uploaded and exported files.
pub const PURPOSE_BATCH: &str = "batch";
pub const PURPOSE_OUTPUT: &str = "batch_output";

/// One file's index row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: String,
    pub filename: String,
    pub bytes: u64,
    /// Seconds since the epoch (OpenAI's unit).
    pub created_at: u64,
    /// Milliseconds, for a stable order of files created in one second.
    pub created_ms: u64,
    pub purpose: String,
}

impl codec::Record for FileRecord {}

impl FileRecord {
    /// OpenAI's file object.
    pub fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        })
    }
}

/// The directory of the files of the database at `db`.
pub fn dir_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".files");
    PathBuf::from(name)
}

/// A new file id.
pub fn new_id() -> String {
    format!("file-{:016x}", rand::random::<u64>())
}

/// Where the file `id` lives.
pub fn path_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// The file table and its time index.
const TABLES: (index::Records, index::ByTime) = (tables::SERVE_FILES, tables::SERVE_FILES_BY_TIME);

/// Registers a file already in place.
pub async fn insert(app: &App, record: FileRecord) -> Result<()> {
    app.store
        .write(move |txn| index::insert(txn, TABLES, &record.id, record.created_ms, &record))
        .await
}

/// The index row of `id`.
pub async fn get(app: &App, id: &str) -> Result<Option<FileRecord>> {
    let id = id.to_string();
    app.store.read(move |txn| get_in(txn, &id)).await
}

fn get_in(txn: &redb::ReadTransaction, id: &str) -> Result<Option<FileRecord>> {
    let table = txn.open_table(tables::SERVE_FILES)?;
    let found = table.get(id)?;
    match found {
        Some(v) => Ok(Some(codec::decode(v.value())?)),
        None => Ok(None),
    }
}

/// A page of files newest first, after the file `after` (`None` when there is no such
/// file), of `purpose` when given.
pub async fn page(
    app: &App,
    after: Option<String>,
    limit: usize,
    purpose: Option<String>,
) -> Result<Option<index::Page<FileRecord>>> {
    app.store
        .read(move |txn| {
            let after = match after {
                None => None,
                Some(id) => match get_in(txn, &id)? {
                    Some(f) => Some((f.created_ms, id)),
                    None => return Ok(None),
                },
            };
            let after = after.as_ref().map(|(ms, id)| (*ms, id.as_str()));
            let keep = |f: &FileRecord| purpose.as_deref().is_none_or(|p| p == f.purpose);
            index::page(txn, TABLES, after, limit, keep).map(Some)
        })
        .await
}

/// The creation time of an encoded record (for the index built at start).
pub fn created_ms(bytes: &[u8]) -> Result<u64> {
    Ok(codec::decode::<FileRecord>(bytes)?.created_ms)
}

/// Removes the row of `id` (the caller removes the file).
pub async fn remove(app: &App, id: &str) -> Result<bool> {
    let id = id.to_string();
    app.store
        .write(move |txn| {
            let found = txn
                .open_table(tables::SERVE_FILES)?
                .get(id.as_str())?
                .map(|v| v.value().to_vec());
            let Some(bytes) = found else {
                return Ok(false);
            };
            index::remove(txn, TABLES, &id, created_ms(&bytes)?)
        })
        .await
}

/// An upload read from a multipart body: the file is in place under its id, not yet
/// registered.
pub struct Upload {
    pub record: FileRecord,
}

/// Streams the multipart body of `POST /v1/files` into `dir` (at most `limit` bytes);
/// needs a `file` part with a file name and `purpose=batch`.
pub async fn receive(
    dir: &Path,
    body: Incoming,
    boundary: String,
    limit: u64,
) -> std::result::Result<Upload, ApiError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| internal(format!("cannot create the files directory: {e}")))?;
    let stream = BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok::<Bytes, hyper::Error>),
            Err(e) => Some(Err(e)),
        }
    });
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit));
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let id = new_id();
    let temp = dir.join(format!(".{id}.part"));
    let result = read_parts(&mut multipart, &temp, limit).await;
    let (purpose, filename, bytes) = match result {
        Ok(parts) => parts,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
    };
    let refuse = |e: ApiError| async {
        let _ = tokio::fs::remove_file(&temp).await;
        Err(e)
    };
    let Some(filename) = filename else {
        return refuse(ApiError::invalid(
            "Missing required parameter: 'file'.",
            Some("file"),
        ))
        .await;
    };
    match purpose.as_deref() {
        Some(PURPOSE_BATCH) => {}
        Some(other) => {
            return refuse(ApiError::invalid(
                format!("Unsupported purpose '{other}': only 'batch' is accepted."),
                Some("purpose"),
            ))
            .await
        }
        None => {
            return refuse(ApiError::invalid(
                "Missing required parameter: 'purpose'.",
                Some("purpose"),
            ))
            .await
        }
    }
    let path = path_of(dir, &id);
    if let Err(e) = tokio::fs::rename(&temp, &path).await {
        return refuse(internal(format!("cannot keep the upload: {e}"))).await;
    }
    let now = crate::clock::now_ms();
    Ok(Upload {
        record: FileRecord {
            id,
            filename,
            bytes,
            created_at: now / 1000,
            created_ms: now,
            purpose: PURPOSE_BATCH.to_string(),
        },
    })
}

/// (purpose, file name, bytes written to `temp`).
async fn read_parts(
    multipart: &mut multer::Multipart<'_>,
    temp: &Path,
    limit: u64,
) -> std::result::Result<(Option<String>, Option<String>, u64), ApiError> {
    use tokio::io::AsyncWriteExt;
    let mut purpose = None;
    let mut filename = None;
    let mut written = 0u64;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        match field.name() {
            Some("purpose") => {
                let text = field.text().await.map_err(|e| multipart_error(&e, limit))?;
                purpose = Some(text.trim().to_string());
            }
            Some("file") => {
                if filename.is_some() {
                    return Err(ApiError::invalid(
                        "Only one 'file' part is accepted.",
                        Some("file"),
                    ));
                }
                let name = field
                    .file_name()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("upload.jsonl")
                    .to_string();
                let mut out = tokio::fs::File::create(temp)
                    .await
                    .map_err(|e| internal(format!("cannot write the upload: {e}")))?;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(&e, limit))?
                {
                    written += chunk.len() as u64;
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| internal(format!("cannot write the upload: {e}")))?;
                }
                out.sync_all()
                    .await
                    .map_err(|e| internal(format!("cannot write the upload: {e}")))?;
                filename = Some(name);
            }
            // Other parts are ignored, as OpenAI does.
            _ => {}
        }
    }
    Ok((purpose, filename, written))
}

fn multipart_error(e: &multer::Error, limit: u64) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::too_large(limit)
        }
        other => ApiError::invalid(format!("Bad multipart body: {other}"), None),
    }
}

/// A failure of ours (the disk), not the client's.
pub fn internal(message: impl Into<String>) -> ApiError {
    ApiError::new(500, "server_error", "internal_error", message)
}

/// An `Error` of the store as a 500.
pub fn store_error(e: &Error) -> ApiError {
    internal(e.to_string())
}
