//! Read-only queries while a process holds the database: redb lets one process open the file,
//! so the holder (`reasonq batch`) answers `status`, `stats`, `jobs list`, `jobs show` and
//! `results` for other processes over a Unix socket beside the database (`<db>.sock`, mode
//! 0600, only the file owner's uid is served).
//!
//! The protocol is JSON lines: one request line (at most [`MAX_REQUEST`] bytes, read within
//! [`REQUEST_TIMEOUT`]), then one response line `{"ok": ...}` or `{"error": "..."}`; `results`
//! answers with chunks `{"lines": [...]}` and ends with `{"end": tally}` or `{"error": ...}`,
//! so a 1M-line batch is never one buffer. The answers are the typed rows the same
//! [`inspect`] and [`Queue`] functions return, so a client prints them with the same code.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use super::inspect::{self, BatchStatus};
use super::runs::{self, Summary};
use super::App;
use crate::batch::export::Tally;
use crate::error::{Error, Result};
use crate::queue::{Job, JobState, Queue};
use crate::store::Store;

/// Longest request line: requests are a few names and numbers.
pub const MAX_REQUEST: usize = 4096;
/// Longest response line a client accepts (a `jobs list` of many large answers).
pub const MAX_RESPONSE: usize = 256 << 20;
/// A client must send its request this soon after connecting.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Each response line must be taken (server) or arrive (client) this soon; a stalled peer
/// must not hold a read transaction open for ever.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more wait.
const MAX_CLIENTS: usize = 8;
/// Results lines per chunk, and bytes after which a chunk goes early.
const CHUNK_LINES: usize = 512;
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks the export may run ahead of the socket.
const CHUNKS_AHEAD: usize = 4;

/// The commands the socket answers (the JSON `ask` field).
pub const COMMANDS: [&str; 5] = ["status", "stats", "jobs_list", "jobs_show", "results"];

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Stats,
    JobsList {
        batch: Option<String>,
        state: Option<JobState>,
        limit: usize,
    },
    JobsShow {
        id: u64,
    },
    /// Finished lines of a batch in input order (`details`: `results --json`).
    Results {
        batch: String,
        details: bool,
    },
}

/// The answer to one request (other than `results`, which streams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Vec<BatchStatus>),
    Stats(Summary),
    Jobs(Vec<WireJob>),
    Job(Option<WireJob>),
}

/// A [`Job`] with the parts its own serde skips (they are kept out of its stored record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireJob {
    pub job: Job,
    pub payload: Vec<u8>,
    pub result: Option<Vec<u8>>,
    pub body: Option<Vec<u8>>,
    /// Its failed tries (`jobs_show` only).
    #[serde(default)]
    pub attempts: Vec<inspect::Attempt>,
}

impl WireJob {
    fn of(job: Job) -> WireJob {
        let mut job = job;
        let payload = std::mem::take(&mut job.payload);
        let (result, body) = (job.result.take(), job.body.take());
        WireJob {
            job,
            payload,
            result,
            body,
            attempts: Vec::new(),
        }
    }

    /// The job whole again.
    pub fn into_job(self) -> Job {
        let mut job = self.job;
        job.payload = self.payload;
        job.result = self.result;
        job.body = self.body;
        job
    }

    /// The job whole again, with its failed tries (`jobs_show`).
    pub fn into_shown(mut self) -> (Job, Vec<inspect::Attempt>) {
        let attempts = std::mem::take(&mut self.attempts);
        (self.into_job(), attempts)
    }
}

/// One line the server writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Ok(Box<Reply>),
    Error(String),
    Lines(Vec<String>),
    End(Tally),
}

/// The socket of the database at `db`: its path with `.sock` appended.
pub fn socket_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".sock");
    PathBuf::from(name)
}

/// The running server; dropping it stops serving and removes the socket.
pub struct Server {
    path: PathBuf,
    /// The socket file we bound, so a file someone else put there is left alone.
    inode: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a server reads from.
#[derive(Clone)]
struct Source {
    store: Store,
    queue: Queue,
}

/// Serves `app`'s read-only queries on [`socket_path`] until the returned [`Server`] drops. A
/// socket left by a killed process (nobody accepts on it) is replaced; an error (a path over
/// the 108 bytes a Unix socket allows, a live server there, a file that is no socket) is for
/// the caller to report: the work goes on without it.
pub async fn serve(app: &App) -> Result<Server> {
    let path = socket_path(&app.config.db);
    let failed = |message: String| Error::Invalid(format!("{}: {message}", path.display()));
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if !meta.file_type().is_socket() {
            return Err(failed("exists and is not a socket".into()));
        }
        let probe = tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(&path)).await;
        if matches!(probe, Ok(Ok(_))) {
            return Err(failed("another process serves it".into()));
        }
        std::fs::remove_file(&path).map_err(|e| failed(format!("cannot remove it: {e}")))?;
    }
    let listener = UnixListener::bind(&path).map_err(|e| failed(e.to_string()))?;
    // Peers are checked against the socket's owner too: this closes the moment before chmod.
    let set = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let meta = set.and_then(|()| std::fs::symlink_metadata(&path));
    let meta = match meta {
        Ok(meta) => meta,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(failed(format!("cannot restrict it to its owner: {e}")));
        }
    };
    let source = Source {
        store: app.store.clone(),
        queue: app.queue.clone(),
    };
    let task = tokio::spawn(accept(listener, source, meta.uid()));
    Ok(Server {
        path,
        inode: meta.ino(),
        task,
    })
}

async fn accept(listener: UnixListener, source: Source, owner: u32) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !stream.peer_cred().is_ok_and(|c| c.uid() == owner) {
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _ = answer(stream, &source).await;
            drop(slot);
        });
    }
}

/// Reads one request from `stream` and writes its answer.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(stream: S, source: &Source) -> Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(read)).await {
        Ok(request) => request,
        Err(_) => Err(format!("no request within {REQUEST_TIMEOUT:?}")),
    };
    let request = match request {
        Ok(request) => request,
        Err(message) => return send(&mut write, &Line::Error(message)).await,
    };
    let reply = match request {
        Request::Results { batch, details } => {
            return stream_results(&mut write, source, &batch, details).await
        }
        Request::Status => inspect::status_of(&source.store).await.map(Reply::Status),
        Request::Stats => runs::summary(&source.store).await.map(Reply::Stats),
        Request::JobsList {
            batch,
            state,
            limit,
        } => source
            .queue
            .list(batch.as_deref(), state, limit)
            .await
            .map(|jobs| Reply::Jobs(jobs.into_iter().map(WireJob::of).collect())),
        Request::JobsShow { id } => inspect::job_of(&source.store, id).await.map(|shown| {
            Reply::Job(shown.map(|(job, attempts)| WireJob {
                attempts,
                ..WireJob::of(job)
            }))
        }),
    };
    let line = match reply {
        Ok(reply) => Line::Ok(Box::new(reply)),
        Err(e) => Line::Error(e.to_string()),
    };
    send(&mut write, &line).await
}

/// One request line, bounded; the message says what was wrong with it.
async fn read_request<R: AsyncRead + Unpin>(read: R) -> std::result::Result<Request, String> {
    let mut buf = Vec::new();
    let mut limited = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    limited
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if buf.len() > MAX_REQUEST {
        return Err(format!("request too large (over {MAX_REQUEST} bytes)"));
    }
    parse_request(&buf)
}

/// Parses one request line: bad JSON, an unknown command and bad fields are told apart.
pub fn parse_request(line: &[u8]) -> std::result::Result<Request, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("bad request: not JSON ({e})"))?;
    let ask = value
        .get("ask")
        .and_then(Value::as_str)
        .ok_or("bad request: no \"ask\" field")?;
    if !COMMANDS.contains(&ask) {
        return Err(format!(
            "unknown command {ask:?}; this server answers {}",
            COMMANDS.join(", ")
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))
}

async fn send<W: AsyncWrite + Unpin>(write: &mut W, line: &Line) -> Result<()> {
    let mut text = serde_json::to_vec(line).map_err(|e| Error::Task(e.to_string()))?;
    text.push(b'\n');
    let written = async {
        write.write_all(&text).await?;
        write.flush().await
    };
    match tokio::time::timeout(REPLY_TIMEOUT, written).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Task(format!("live client: {e}"))),
        Err(_) => Err(Error::Task("live client stopped reading".into())),
    }
}

/// `results`: the export runs on the blocking pool and hands chunks to the socket through a
/// short channel, so it waits for a slow reader instead of buffering the batch.
async fn stream_results<W: AsyncWrite + Unpin>(
    write: &mut W,
    source: &Source,
    batch: &str,
    details: bool,
) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<String>>(CHUNKS_AHEAD);
    let pending = Arc::new(Mutex::new((Vec::<String>::new(), 0usize)));
    let chunk = pending.clone();
    let sink_tx = tx.clone();
    let sink = move |line: &str| -> Result<()> {
        let mut guard = chunk.lock().map_err(|_| Error::Closed)?;
        guard.0.push(line.to_string());
        guard.1 += line.len();
        if guard.0.len() >= CHUNK_LINES || guard.1 >= CHUNK_BYTES {
            let full = std::mem::take(&mut guard.0);
            guard.1 = 0;
            drop(guard);
            // On the blocking pool (`Store::read`): waiting here is allowed.
            sink_tx
                .blocking_send(full)
                .map_err(|_| Error::Task("live client went away".into()))?;
        }
        Ok(())
    };
    let store = source.store.clone();
    let batch = batch.to_string();
    let export =
        tokio::spawn(async move { inspect::results_of(&store, &batch, details, sink).await });
    drop(tx);
    let mut sent = Ok(());
    while let Some(lines) = rx.recv().await {
        if sent.is_ok() {
            sent = send(write, &Line::Lines(lines)).await;
        }
        if sent.is_err() {
            // Dropping the receiver ends the export at its next chunk.
            break;
        }
    }
    drop(rx);
    let tally = export
        .await
        .map_err(|e| Error::Task(format!("results export failed: {e}")))?;
    sent?;
    match tally {
        Ok(tally) => {
            let rest = pending
                .lock()
                .map(|mut g| std::mem::take(&mut g.0))
                .map_err(|_| Error::Closed)?;
            if !rest.is_empty() {
                send(write, &Line::Lines(rest)).await?;
            }
            send(write, &Line::End(tally)).await
        }
        Err(e) => send(write, &Line::Error(e.to_string())).await,
    }
}

/// A connection to the server of the database at `db`, or `None` when nobody serves it.
async fn connect(db: &Path) -> Option<UnixStream> {
    let path = socket_path(db);
    match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(&path)).await {
        Ok(Ok(stream)) => Some(stream),
        _ => None,
    }
}

/// Lines of the server's answer, each bounded and within [`REPLY_TIMEOUT`].
struct Answers {
    read: BufReader<tokio::io::ReadHalf<UnixStream>>,
    _write: tokio::io::WriteHalf<UnixStream>,
}

impl Answers {
    async fn open(db: &Path, request: &Request) -> Result<Option<Answers>> {
        let Some(stream) = connect(db).await else {
            return Ok(None);
        };
        let (read, mut write) = tokio::io::split(stream);
        let mut text = serde_json::to_vec(request).map_err(|e| Error::Task(e.to_string()))?;
        text.push(b'\n');
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&text)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(lost("the request could not be sent"));
        }
        Ok(Some(Answers {
            read: BufReader::new(read),
            _write: write,
        }))
    }

    async fn next(&mut self) -> Result<Line> {
        let mut buf = Vec::new();
        let mut limited = (&mut self.read).take(MAX_RESPONSE as u64 + 1);
        let got = tokio::time::timeout(REPLY_TIMEOUT, limited.read_until(b'\n', &mut buf)).await;
        match got {
            Err(_) => return Err(lost("no answer in time")),
            Ok(Err(e)) => return Err(lost(&e.to_string())),
            Ok(Ok(0)) => return Err(lost("it closed the connection")),
            Ok(Ok(_)) => {}
        }
        if buf.len() > MAX_RESPONSE {
            return Err(lost("an answer over the size limit"));
        }
        serde_json::from_slice(&buf).map_err(|e| lost(&format!("an unreadable answer ({e})")))
    }
}

fn lost(why: &str) -> Error {
    Error::Task(format!(
        "the process holding the database did not answer: {why}"
    ))
}

/// Whether a process holding the database at `db` answers on its socket.
pub async fn answering(db: &Path) -> bool {
    connect(db).await.is_some()
}

/// Asks the process holding the database at `db`: `Ok(None)` when nobody serves it; an error
/// the server reports comes back as [`Error::Invalid`] with its message, so it reads as the
/// same command's error when it opens the database itself.
pub async fn ask(db: &Path, request: &Request) -> Result<Option<Reply>> {
    if matches!(request, Request::Results { .. }) {
        return Err(Error::Invalid(
            "results are streamed: use live::results".into(),
        ));
    }
    let Some(mut answers) = Answers::open(db, request).await? else {
        return Ok(None);
    };
    match answers.next().await? {
        Line::Ok(reply) => Ok(Some(*reply)),
        Line::Error(message) => Err(Error::Invalid(message)),
        Line::Lines(_) | Line::End(_) => Err(lost("an answer of the wrong kind")),
    }
}

/// `results` from the process holding the database at `db`, each line handed to `sink` as
/// its chunk arrives; `Ok(None)` when nobody serves it.
pub async fn results<F>(db: &Path, batch: &str, details: bool, mut sink: F) -> Result<Option<Tally>>
where
    F: FnMut(&str) -> Result<()>,
{
    let request = Request::Results {
        batch: batch.to_string(),
        details,
    };
    let Some(mut answers) = Answers::open(db, &request).await? else {
        return Ok(None);
    };
    loop {
        match answers.next().await? {
            Line::Lines(lines) => {
                for line in &lines {
                    sink(line)?;
                }
            }
            Line::End(tally) => return Ok(Some(tally)),
            Line::Error(message) => return Err(Error::Invalid(message)),
            Line::Ok(_) => return Err(lost("an answer of the wrong kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_told_apart() {
        assert_eq!(parse_request(br#"{"ask":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(br#"{"ask":"jobs_show","id":7}"#),
            Ok(Request::JobsShow { id: 7 })
        );
        let err = parse_request(b"not json").unwrap_err();
        assert!(err.starts_with("bad request: not JSON"), "{err}");
        let err = parse_request(br#"{"ask":"cancel"}"#).unwrap_err();
        assert!(err.starts_with("unknown command \"cancel\""), "{err}");
        let err = parse_request(br#"{"ask":"jobs_show","id":"x"}"#).unwrap_err();
        assert!(err.starts_with("bad request:"), "{err}");
        let err = parse_request(br#"{"ask":"jobs_show","id":1,"extra":1}"#).unwrap_err();
        assert!(err.starts_with("bad request:"), "{err}");
        let err = parse_request(br#"[1]"#).unwrap_err();
        assert_eq!(err, "bad request: no \"ask\" field");
    }

    #[test]
    fn every_request_round_trips_and_names_a_known_command() {
        let all = [
            Request::Status,
            Request::Stats,
            Request::JobsList {
                batch: Some("b".into()),
                state: Some(JobState::Completed),
                limit: 5,
            },
            Request::JobsShow { id: 1 },
            Request::Results {
                batch: "b".into(),
                details: true,
            },
        ];
        for request in all {
            let text = serde_json::to_vec(&request).unwrap();
            assert_eq!(parse_request(&text), Ok(request));
        }
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_refused_without_reading_it_all() {
        let mut line = br#"{"ask":"status","pad":""#.to_vec();
        line.resize(MAX_REQUEST * 4, b'x');
        let (mut client, server) = tokio::io::duplex(MAX_REQUEST * 8);
        client.write_all(&line).await.unwrap();
        let err = read_request(server).await.unwrap_err();
        assert!(err.starts_with("request too large"), "{err}");
    }

    #[tokio::test]
    async fn a_request_exactly_at_the_limit_is_read() {
        let mut line = br#"{"ask":"status"}"#.to_vec();
        line.resize(MAX_REQUEST - 1, b' ');
        line.push(b'\n');
        let (mut client, server) = tokio::io::duplex(MAX_REQUEST * 2);
        client.write_all(&line).await.unwrap();
        assert_eq!(read_request(server).await, Ok(Request::Status));
    }

    #[test]
    fn a_job_keeps_its_payload_and_result_across_the_wire() {
        let job = Job {
            id: 9,
            queue: "b".into(),
            kind: "chat".into(),
            payload: vec![1, 2, 3],
            priority: 3,
            run_at: 1_000,
            attempt: 2,
            max_attempts: 10,
            state: JobState::Completed,
            lease_expires_at: None,
            lease_owner: Some("w1".into()),
            lease_token: 4,
            last_error: Some("503".into()),
            dedup_key: Some("k".into()),
            created_at: 900,
            finished_at: Some(1_200),
            result: Some(vec![4]),
            body: Some(vec![5, 6]),
            interruptions: 1,
        };
        let text = serde_json::to_string(&WireJob::of(job.clone())).unwrap();
        let back: WireJob = serde_json::from_str(&text).unwrap();
        assert_eq!(back.into_job(), job);
    }

    #[test]
    fn the_socket_sits_beside_the_database() {
        assert_eq!(
            socket_path(Path::new("/d/reasonq.redb")),
            PathBuf::from("/d/reasonq.redb.sock")
        );
    }
}
