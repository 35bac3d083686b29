//! Job records and the values the queue API takes and returns.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where a job is in its life. See `docs/queue.md` for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to run, due now.
    Available,
    /// Waiting for `run_at` (enqueued for later, or snoozed).
    Scheduled,
    /// Leased by a worker.
    Running,
    /// Finished with a result (terminal).
    Completed,
    /// Failed with a retryable error; runs again at `run_at` (after backoff).
    Retryable,
    /// Failed fatally or ran out of attempts (terminal; can be retried by hand).
    Discarded,
    /// Cancelled by a user (terminal; can be retried by hand).
    Cancelled,
}

impl JobState {
    /// Every state, in code order.
    pub const ALL: [JobState; 7] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Completed,
        JobState::Retryable,
        JobState::Discarded,
        JobState::Cancelled,
    ];

    /// Lower-case name, as shown by the CLI and accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Retryable => "retryable",
            JobState::Discarded => "discarded",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Stable one-byte code used in index keys (`JOBS_FINISHED`, `JOBS_COUNTS`).
    pub fn code(self) -> u8 {
        match self {
            JobState::Available => 0,
            JobState::Scheduled => 1,
            JobState::Running => 2,
            JobState::Completed => 3,
            JobState::Retryable => 4,
            JobState::Discarded => 5,
            JobState::Cancelled => 6,
        }
    }

    /// No further transition happens without a user's `retry` (or pruning).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Discarded | JobState::Cancelled
        )
    }

    /// Waiting in the due index, leasable once `run_at` has passed.
    pub fn is_waiting(self) -> bool {
        matches!(
            self,
            JobState::Available | JobState::Scheduled | JobState::Retryable
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown job state {s:?} (expected one of: available, scheduled, running, \
                     completed, retryable, discarded, cancelled)"
                ))
            })
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    /// Queue (batch) name.
    pub queue: String,
    /// What the worker should do with the payload.
    pub kind: String,
    /// What the job works on. Stored once at enqueue in its own table (`JOB_PAYLOADS`), so
    /// leases and completions rewrite only the small state record; filled in when a job is
    /// leased or read whole.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// 0..=255, higher runs first.
    pub priority: u8,
    /// Not leased before this time (ms since the epoch).
    pub run_at: u64,
    /// Attempts started so far (incremented by each lease; refunded by snooze and release).
    pub attempt: u32,
    pub max_attempts: u32,
    pub state: JobState,
    pub lease_expires_at: Option<u64>,
    pub lease_owner: Option<String>,
    /// Fencing token of the current (or last) lease; each lease increments it.
    pub lease_token: u64,
    pub last_error: Option<String>,
    pub dedup_key: Option<String>,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    /// The completed job's result record (`JOB_RESULTS`), filled in when read whole.
    #[serde(skip)]
    pub result: Option<Vec<u8>>,
    /// The response body the result refers to, stored once in `store::bodies` and shared with
    /// the cache; filled in with `result`.
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
    /// Times the job was running when its process died (rescued at open). The first
    /// [`FREE_INTERRUPTIONS`] do not spend an attempt.
    pub interruptions: u32,
}

impl crate::codec::Record for Job {
    /// Layout 2 keeps the payload and the result out of the state record.
    const LAYOUT: u8 = 2;

    fn upgrade(layout: u8, payload: &[u8]) -> Result<Self, crate::codec::CodecError> {
        match layout {
            1 => Ok(crate::codec::payload_of::<JobV1>(payload)?.into()),
            found => Err(crate::codec::CodecError::UnknownLayout {
                found,
                current: Self::LAYOUT,
            }),
        }
    }
}

/// Layout 1 of [`Job`]: payload and result inline (read once, by the upgrade at open).
#[derive(Deserialize)]
struct JobV1 {
    id: u64,
    queue: String,
    kind: String,
    #[serde(with = "bytes")]
    payload: Vec<u8>,
    priority: u8,
    run_at: u64,
    attempt: u32,
    max_attempts: u32,
    state: JobState,
    lease_expires_at: Option<u64>,
    lease_owner: Option<String>,
    lease_token: u64,
    last_error: Option<String>,
    dedup_key: Option<String>,
    created_at: u64,
    finished_at: Option<u64>,
    #[serde(with = "opt_bytes")]
    result: Option<Vec<u8>>,
    interruptions: u32,
}

impl From<JobV1> for Job {
    fn from(v: JobV1) -> Job {
        Job {
            id: v.id,
            queue: v.queue,
            kind: v.kind,
            payload: v.payload,
            priority: v.priority,
            run_at: v.run_at,
            attempt: v.attempt,
            max_attempts: v.max_attempts,
            state: v.state,
            lease_expires_at: v.lease_expires_at,
            lease_owner: v.lease_owner,
            lease_token: v.lease_token,
            last_error: v.last_error,
            dedup_key: v.dedup_key,
            created_at: v.created_at,
            finished_at: v.finished_at,
            result: v.result,
            body: None,
            interruptions: v.interruptions,
        }
    }
}

/// Crash interruptions per job that are not charged as attempts. Beyond them each crash
/// spends the attempt it interrupted, so a job that crashes the process every time still
/// ends up discarded.
pub const FREE_INTERRUPTIONS: u32 = 3;

/// Snoozes (a server's "come back later") per job that spend no attempt; each one after them
/// spends the attempt, so a job cannot wait forever.
pub const FREE_SNOOZES: u32 = 5;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    /// Higher runs first.
    pub priority: u8,
    /// Run no earlier than this (ms since the epoch); `None` means now.
    pub run_at: Option<u64>,
    /// `None` takes [`QueueConfig::default_max_attempts`].
    pub max_attempts: Option<u32>,
    /// Within a queue, a second job with the same key is not inserted: the first is returned.
    pub dedup_key: Option<String>,
}

impl NewJob {
    /// A job due now with default priority, attempts and no dedup key.
    pub fn new(queue: impl Into<String>, kind: impl Into<String>, payload: Vec<u8>) -> Self {
        NewJob {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            ..NewJob::default()
        }
    }
}

/// The outcome of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The new job's id, or the existing job's when the dedup key was taken.
    pub id: u64,
    /// False when the dedup key already existed.
    pub inserted: bool,
}

/// A worker's claim on a running job. The token fences every later call: once the job is
/// rescued, cancelled or leased again, calls with this lease fail with
/// [`Error::LeaseLost`](crate::Error::LeaseLost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job as it was when leased (state `running`).
    pub job: Job,
    pub token: u64,
}

/// How a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again after a backoff (timeouts, 5xx, ...), while attempts remain.
    Retryable,
    /// Trying again cannot help (bad request, invalid payload): discard now.
    Fatal,
}

/// Number of jobs per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    pub available: u64,
    pub scheduled: u64,
    pub running: u64,
    pub completed: u64,
    pub retryable: u64,
    pub discarded: u64,
    pub cancelled: u64,
}

impl Counts {
    /// The count of one state.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Available => self.available,
            JobState::Scheduled => self.scheduled,
            JobState::Running => self.running,
            JobState::Completed => self.completed,
            JobState::Retryable => self.retryable,
            JobState::Discarded => self.discarded,
            JobState::Cancelled => self.cancelled,
        }
    }

    /// Adds `n` jobs to one state.
    pub fn add(&mut self, state: JobState, n: u64) {
        let slot = match state {
            JobState::Available => &mut self.available,
            JobState::Scheduled => &mut self.scheduled,
            JobState::Running => &mut self.running,
            JobState::Completed => &mut self.completed,
            JobState::Retryable => &mut self.retryable,
            JobState::Discarded => &mut self.discarded,
            JobState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    /// All jobs.
    pub fn total(&self) -> u64 {
        JobState::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// How long finished jobs are kept before [`prune`](super::Queue::prune) deletes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub completed: Duration,
    pub cancelled: Duration,
    pub discarded: Duration,
}

impl Default for Retention {
    /// River's defaults: completed and cancelled jobs for 24 h, discarded ones for 7 days
    /// (long enough to inspect and retry them by hand).
    fn default() -> Self {
        Retention {
            completed: Duration::from_secs(24 * 3600),
            cancelled: Duration::from_secs(24 * 3600),
            discarded: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Retention {
    /// The retention of a terminal state (`None` for the others).
    pub fn of(&self, state: JobState) -> Option<Duration> {
        match state {
            JobState::Completed => Some(self.completed),
            JobState::Cancelled => Some(self.cancelled),
            JobState::Discarded => Some(self.discarded),
            _ => None,
        }
    }
}

/// Queue policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Attempts of a job enqueued without its own `max_attempts`.
    pub default_max_attempts: u32,
    /// Backoff after failed attempt `n` is about `min(base * 2^n, cap)` (see [`super::backoff_ms`]).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub retention: Retention,
}

impl Default for QueueConfig {
    /// 10 attempts, backoff 4 s, 8 s, ... capped at 10 min (about 27 min of waiting in all):
    /// LLM failures are rate limits and provider incidents that clear in minutes, not days.
    fn default() -> Self {
        QueueConfig {
            default_max_attempts: 10,
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(600),
            retention: Retention::default(),
        }
    }
}

/// Byte strings as one length-prefixed block instead of a sequence of `u8`s (serde's
/// default for `Vec<u8>`), which bincode would encode and decode byte by byte.
mod bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// [`bytes`] for an optional byte string.
mod opt_bytes {
    use serde::de::{Deserializer, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(OptVisitor)
    }

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Vec<u8>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an optional byte string")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::bytes::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn sample() -> Job {
        Job {
            id: 9,
            queue: "batch".into(),
            kind: "chat".into(),
            payload: (0..=255).collect(),
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
            result: None,
            body: None,
            interruptions: 1,
        }
    }

    #[test]
    fn the_state_record_leaves_payload_and_result_to_their_tables() {
        let job = sample();
        let bytes = codec::encode(&job).unwrap();
        assert!(bytes.len() < 100, "{} bytes", bytes.len());
        let back: Job = codec::decode(&bytes).unwrap();
        assert_eq!(
            back,
            Job {
                payload: Vec::new(),
                ..job
            }
        );
    }

    #[test]
    fn garbage_never_decodes_to_a_job_by_panicking() {
        let bytes = codec::encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            assert!(codec::decode::<Job>(&bytes[..cut]).is_err());
        }
    }
}
