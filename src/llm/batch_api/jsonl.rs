//! JSONL bodies read line by line from the wire (OpenAI's output files, Anthropic's results),
//! so a 200 MB file is never one buffer: at most one line and one frame are held.

use bytes::{Bytes, BytesMut};

use super::{BatchApi, HttpStream, LlmError};

/// Splits a streamed body into lines.
pub(super) struct Lines {
    stream: HttpStream,
    buf: BytesMut,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    max_line: usize,
    eof: bool,
}

impl Lines {
    pub(super) fn new(stream: HttpStream, max_line: usize) -> Self {
        Lines {
            stream,
            buf: BytesMut::new(),
            scanned: 0,
            max_line,
            eof: false,
        }
    }

    /// The next non-blank line without its line break; `None` at the end of the body.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, LlmError> {
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(self.scanned + at + 1).freeze();
                self.scanned = 0;
                match trim(line) {
                    Some(line) => return Ok(Some(line)),
                    None => continue,
                }
            }
            self.scanned = self.buf.len();
            if self.eof {
                self.scanned = 0;
                return Ok(trim(self.buf.split().freeze()));
            }
            if self.buf.len() > self.max_line {
                return Err(LlmError::TooLarge {
                    limit: self.max_line,
                    request_id: None,
                });
            }
            match self.stream.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => self.eof = true,
            }
        }
    }
}

/// The line without surrounding whitespace; `None` when blank.
fn trim(line: Bytes) -> Option<Bytes> {
    let start = line.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = line.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    Some(line.slice(start..end))
}

/// Hands every line of the JSONL file at `path` to `on`. A body that breaks part way is asked
/// for again and the lines already handed over are skipped (a finished batch's files do not
/// change), within the client's retry attempts.
pub(super) async fn each_line(
    api: &BatchApi,
    path: &str,
    on: &mut (dyn FnMut(Bytes) -> Result<(), LlmError> + Send),
) -> Result<(), LlmError> {
    let cfg = api.client.config();
    let max_line = cfg.pool.max_response_bytes;
    let attempts = cfg.retry.max_attempts.max(1);
    let mut done: u64 = 0;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut lines = Lines::new(api.stream(path).await?, max_line);
        let mut seen: u64 = 0;
        let broke = loop {
            match lines.next().await {
                Ok(Some(line)) => {
                    seen += 1;
                    if seen > done {
                        on(line)?;
                        done = seen;
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => break e,
            }
        };
        if !broke.is_retryable() || attempt >= attempts {
            return Err(broke);
        }
        tracing::info!(
            attempt,
            lines = done,
            code = broke.code(),
            "results file broke off; reading it again from the start"
        );
        tokio::time::sleep(cfg.retry.backoff(attempt)).await;
    }
}
