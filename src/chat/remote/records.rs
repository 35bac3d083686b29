//! What the database knows of each provider batch, and every transaction that changes it.
//!
//! A record is written with its lines and their jobs' leases in one transaction, before
//! anything is uploaded; each step at the provider is followed by one transaction that
//! records the id it returned with the next phase. So after a kill at any moment the record
//! says which step may have happened unrecorded, and the driver asks the provider (by the
//! record's tag) instead of doing that step again.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::queue::{lease_ids_in, Job, JobState, Lease, Whole, REMOTE_LEASE};
use crate::store::tables;

/// Where a provider batch is in its life. Each phase says what is known to have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Lines and leases recorded; nothing known to be at the provider yet.
    Recorded,
    /// The provider holds the staged input (an uploaded file, or an empty named batch).
    Staged,
    /// The provider runs the batch: poll it.
    Started,
    /// Every result recorded, every other line failed back to the queue: nothing left to do.
    Collected,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Recorded => "recorded",
            Phase::Staged => "staged",
            Phase::Started => "started",
            Phase::Collected => "collected",
        }
    }
}

/// One batch handed to a provider's batch API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRecord {
    pub key: u64,
    /// The reasonq batch (queue) its lines belong to.
    pub queue: String,
    /// Wire protocol (`openai`, `xai`, `anthropic`).
    pub protocol: String,
    /// Unique name put in the remote batch's metadata, name or file name, so an interrupted
    /// step is found again instead of repeated; also the owner of its jobs' leases.
    pub tag: String,
    pub phase: Phase,
    /// What the provider gave back for the staged input (file id, or xAI's batch id).
    pub staged: Option<String>,
    /// The provider's batch id.
    pub remote_id: Option<String>,
    /// Lines in the batch.
    pub lines: u64,
    /// When it was recorded (ms since the epoch): a find after a crash looks from here.
    pub created_at: u64,
    /// A user asked to cancel it (`jobs cancel --batch`): lines it did not finish end
    /// cancelled instead of going back to the queue.
    pub cancel_requested: bool,
    /// The provider's last reported state and counts (succeeded, failed, total), for status.
    pub remote_state: Option<String>,
    pub counts: (u64, u64, u64),
}

impl codec::Record for RemoteRecord {}

/// One line of a provider batch, as sent: what its result is completed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteLine {
    /// The request body exactly as sent (JSON text).
    pub body: String,
    /// The strategy that shaped it.
    pub strategy: String,
    /// Memory shown in the prompt, scored when the answer is judged.
    pub used_experiences: Vec<u64>,
    pub used_rules: Vec<u64>,
}

impl codec::Record for RemoteLine {}

/// The id a line has at the provider: safe for every protocol's custom_id rules.
pub fn custom_id(job_id: u64) -> String {
    format!("rq-{job_id}")
}

/// The job id of a provider's custom_id, if it is one of ours.
pub fn job_of(custom_id: &str) -> Option<u64> {
    custom_id.strip_prefix("rq-")?.parse().ok()
}

/// Records a new provider batch of `queue` with `lines` (job id, line) and leases their jobs
/// to it, in one transaction. Jobs that stopped waiting since they were read are left out;
/// returns the record and the leases taken (`None` when no job was still waiting).
pub fn record_in(
    txn: &WriteTransaction,
    queue: &str,
    protocol: &str,
    lines: &[(u64, RemoteLine)],
    now: u64,
) -> Result<Option<(RemoteRecord, Vec<Lease>)>> {
    let key = tables::allocate_ids(txn, tables::NEXT_REMOTE_ID, 1)?;
    let tag = format!("reasonq-{:016x}-{key}", rand::random::<u64>());
    let ids: Vec<u64> = lines.iter().map(|(id, _)| *id).collect();
    let leases = lease_ids_in(txn, &ids, &tag, REMOTE_LEASE)?;
    if leases.is_empty() {
        return Ok(None);
    }
    let mut table = txn.open_table(tables::REMOTE_LINES)?;
    let mut leased = leases.iter().map(|l| l.job.id).peekable();
    for (id, line) in lines {
        // Leases come back in the order of `ids`, skipping jobs no longer waiting.
        if leased.peek() != Some(id) {
            continue;
        }
        leased.next();
        table.insert((key, *id), codec::encode(line)?.as_slice())?;
    }
    let record = RemoteRecord {
        key,
        queue: queue.to_owned(),
        protocol: protocol.to_owned(),
        tag,
        phase: Phase::Recorded,
        staged: None,
        remote_id: None,
        lines: leases.len() as u64,
        created_at: now,
        cancel_requested: false,
        remote_state: None,
        counts: (0, 0, leases.len() as u64),
    };
    put_in(txn, &record)?;
    Ok(Some((record, leases)))
}

/// Stores `record` as it is now.
pub fn put_in(txn: &WriteTransaction, record: &RemoteRecord) -> Result<()> {
    txn.open_table(tables::REMOTE_BATCHES)?
        .insert(record.key, codec::encode(record)?.as_slice())?;
    Ok(())
}

/// Marks `record` collected and deletes its lines (every one has ended by now).
pub fn collected_in(txn: &WriteTransaction, record: &RemoteRecord) -> Result<()> {
    let mut done = record.clone();
    done.phase = Phase::Collected;
    put_in(txn, &done)?;
    let mut lines = txn.open_table(tables::REMOTE_LINES)?;
    lines.retain_in((record.key, 0)..=(record.key, u64::MAX), |_, _| false)?;
    Ok(())
}

/// The records of `queue` (every queue when `None`) that are not collected, oldest first.
pub fn open_read(txn: &ReadTransaction, queue: Option<&str>) -> Result<Vec<RemoteRecord>> {
    all_read(txn, queue).map(|all| {
        all.into_iter()
            .filter(|r| r.phase != Phase::Collected)
            .collect()
    })
}

/// Every record of `queue` (every queue when `None`), oldest first.
pub fn all_read(txn: &ReadTransaction, queue: Option<&str>) -> Result<Vec<RemoteRecord>> {
    let table = txn.open_table(tables::REMOTE_BATCHES)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, bytes) = row?;
        let record: RemoteRecord = codec::decode(bytes.value())?;
        if queue.is_none_or(|q| q == record.queue) {
            out.push(record);
        }
    }
    Ok(out)
}

/// The lines of record `key`, in job order.
pub fn lines_read(txn: &ReadTransaction, key: u64) -> Result<Vec<(u64, RemoteLine)>> {
    let table = txn.open_table(tables::REMOTE_LINES)?;
    let mut out = Vec::new();
    for row in table.range((key, 0)..=(key, u64::MAX))? {
        let (k, bytes) = row?;
        out.push((k.value().1, codec::decode(bytes.value())?));
    }
    Ok(out)
}

/// The line of job `id` in record `key`, if the record still holds it.
pub fn line_read(txn: &ReadTransaction, key: u64, id: u64) -> Result<Option<RemoteLine>> {
    let table = txn.open_table(tables::REMOTE_LINES)?;
    table
        .get((key, id))?
        .map(|bytes| codec::decode(bytes.value()).map_err(Error::from))
        .transpose()
}

/// The lease `tag` holds on job `id`, with the job whole, if the job is still its own
/// (a job cancelled or retried by hand meanwhile is not).
pub fn lease_read(whole: &Whole<'_>, id: u64, tag: &str) -> Result<Option<Lease>> {
    Ok(whole.get(id)?.and_then(|job| held(job, tag)))
}

fn held(job: Job, tag: &str) -> Option<Lease> {
    let own = job.state == JobState::Running
        && job.lease_expires_at == Some(REMOTE_LEASE)
        && job.lease_owner.as_deref() == Some(tag);
    own.then_some(Lease {
        token: job.lease_token,
        job,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_round_trip_and_reject_others() {
        assert_eq!(custom_id(42), "rq-42");
        assert_eq!(job_of("rq-42"), Some(42));
        assert_eq!(job_of("line-42"), None);
        assert_eq!(job_of("rq-x"), None);
    }
}
