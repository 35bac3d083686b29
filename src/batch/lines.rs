//! Which job answers each line of a batch's current input file: `BATCH_LINES` maps
//! (batch, n) -> job id for the n-th request of the file (0-based, in file order),
//! `JOB_LINES` maps back, and `BATCH_SIZES` holds n's end. The export walks the range in
//! order, so no job is loaded or sorted to put the output in input order, and every later run
//! of the file rewrites only the lines that changed.

use std::collections::HashMap;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use crate::chat::{ChatJob, ResponseRecord};
use crate::codec;
use crate::error::Result;
use crate::queue::{add_usage_in, queue_names, JobState, Usage};
use crate::store::tables::{self, BATCH_LINES, BATCH_SIZES, JOB_LINES};

/// Records that requests `first..first + ids.len()` of `batch`'s file are the jobs `ids`.
/// A line whose job changed (an edited line) lets go of the old job, unless the old job has
/// moved to another line of the file.
pub fn set_many_in(txn: &WriteTransaction, batch: &str, first: u64, ids: &[u64]) -> Result<()> {
    let mut lines = txn.open_table(BATCH_LINES)?;
    let mut back = txn.open_table(JOB_LINES)?;
    for (n, &id) in (first..).zip(ids) {
        let old = lines.get((batch, n))?.map(|v| v.value());
        if old == Some(id) {
            continue;
        }
        lines.insert((batch, n), id)?;
        if let Some(old) = old {
            if back.get(old)?.map(|v| v.value()) == Some(n) {
                back.remove(old)?;
            }
        }
        back.insert(id, n)?;
    }
    Ok(())
}

/// Ends `batch`'s file at `size` requests: lines past it (a file that got shorter) let go of
/// their jobs.
pub fn truncate_in(txn: &WriteTransaction, batch: &str, size: u64) -> Result<()> {
    let mut sizes = txn.open_table(BATCH_SIZES)?;
    let old = sizes.get(batch)?.map_or(0, |v| v.value());
    sizes.insert(batch, size)?;
    drop(sizes);
    if old <= size {
        return Ok(());
    }
    let mut lines = txn.open_table(BATCH_LINES)?;
    let mut back = txn.open_table(JOB_LINES)?;
    for n in size..old {
        if let Some(id) = lines.remove((batch, n))?.map(|v| v.value()) {
            if back.get(id)?.map(|v| v.value()) == Some(n) {
                back.remove(id)?;
            }
        }
    }
    Ok(())
}

/// Requests in `batch`'s current file.
pub fn size_read(txn: &ReadTransaction, batch: &str) -> Result<u64> {
    Ok(txn
        .open_table(BATCH_SIZES)?
        .get(batch)?
        .map_or(0, |v| v.value()))
}

/// Whether job `id` answers a line of its batch's current file.
pub fn is_listed(table: &impl ReadableTable<u64, u64>, id: u64) -> Result<bool> {
    Ok(table.get(id)?.is_some())
}

/// The jobs of `batch`'s lines, in file order, from request `from` on.
pub fn jobs_read(
    txn: &ReadTransaction,
    batch: &str,
    from: u64,
) -> Result<impl Iterator<Item = Result<u64>> + use<>> {
    Ok(numbered_read(txn, batch, from)?.map(|row| row.map(|(_, id)| id)))
}

/// [`jobs_read`] with each line's number: `(n, job id)`.
pub fn numbered_read(
    txn: &ReadTransaction,
    batch: &str,
    from: u64,
) -> Result<impl Iterator<Item = Result<(u64, u64)>> + use<>> {
    let lines = txn.open_table(BATCH_LINES)?;
    let range = lines.range((batch, from)..=(batch, u64::MAX))?;
    Ok(range.map(|row| {
        let (key, id) = row?;
        Ok((key.value().1, id.value()))
    }))
}

/// The job answering line `n` of `batch`'s file.
pub fn job_at_read(txn: &ReadTransaction, batch: &str, n: u64) -> Result<Option<u64>> {
    Ok(txn
        .open_table(BATCH_LINES)?
        .get((batch, n))?
        .map(|v| v.value()))
}

/// Open hook: files written before these tables existed get their lines (the newest job of
/// each request id, in the order of the lines they came from) and usage totals, once.
pub fn upgrade_at_open(txn: &WriteTransaction) -> Result<()> {
    let mut meta = txn.open_table(tables::META)?;
    if meta.get(tables::BATCH_LINES_BUILT)?.is_some() {
        return Ok(());
    }
    meta.insert(tables::BATCH_LINES_BUILT, 1)?;
    drop(meta);
    let queues = queue_names(&txn.open_table(tables::JOBS_COUNTS)?)?;
    for queue in queues {
        let mut newest: HashMap<String, (u64, u64)> = HashMap::new();
        let mut usage = Usage::default();
        {
            let by_queue = txn.open_table(tables::JOBS_BY_QUEUE)?;
            let payloads = txn.open_table(tables::JOB_PAYLOADS)?;
            let results = txn.open_table(tables::JOB_RESULTS)?;
            let jobs = txn.open_table(tables::JOBS)?;
            for row in by_queue.range((queue.as_str(), 0u64)..=(queue.as_str(), u64::MAX))? {
                let id = row?.0.value().1;
                let Some(payload) = payloads.get(id)? else {
                    continue;
                };
                let Ok(chat) = codec::decode::<ChatJob>(payload.value()) else {
                    continue;
                };
                newest.insert(chat.custom_id, (chat.line, id));
                let completed = jobs
                    .get(id)?
                    .and_then(|b| codec::decode::<crate::queue::Job>(b.value()).ok())
                    .is_some_and(|j| j.state == JobState::Completed);
                if !completed {
                    continue;
                }
                // Results of this era carry their body inline.
                if let Some(result) = results.get(id)? {
                    if let Ok(record) = codec::decode::<ResponseRecord>(result.value().0) {
                        if record.cached {
                            usage.cached += 1;
                        } else {
                            let (p, c) = record.usage();
                            usage.prompt_tokens += p;
                            usage.completion_tokens += c;
                        }
                    }
                }
            }
        }
        let mut order: Vec<(u64, u64)> = newest.into_values().collect();
        order.sort_unstable();
        let ids: Vec<u64> = order.into_iter().map(|(_, id)| id).collect();
        set_many_in(txn, &queue, 0, &ids)?;
        truncate_in(txn, &queue, ids.len() as u64)?;
        add_usage_in(txn, &queue, usage)?;
    }
    Ok(())
}
