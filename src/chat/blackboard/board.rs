//! A session's board in redb: the session record and its entries, read and written inside
//! the caller's transactions so a step's entries commit with the job's checkpoint.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::{Entry, EntryKind, Session, SessionState, CONTROLLER};
use crate::codec;
use crate::error::Result;
use crate::store::tables;

/// The session id of a job: stable, so a resumed job finds its board.
pub fn session_id(job_id: u64) -> String {
    format!("bb-{job_id}")
}

/// A session with its entries in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Board {
    pub session: Session,
    pub entries: Vec<Entry>,
}

impl Board {
    /// A new session of job `job_id`, holding its problem (entry 0, step 0).
    pub fn start(job_id: u64, problem: &str, domain: &str, now: u64) -> Board {
        let mut board = Board {
            session: Session {
                id: session_id(job_id),
                job_id,
                problem: problem.to_string(),
                domain: domain.to_string(),
                created_at: now,
                state: SessionState::Running,
                steps_done: 0,
                final_answer: None,
                model: String::new(),
                prompt_tokens: 0,
                completion_tokens: 0,
                cached_steps: 0,
            },
            entries: Vec::new(),
        };
        board.push(EntryKind::Problem, None, CONTROLLER, problem, None, now);
        board
    }

    /// Appends an entry with the next seq, written by the current step, and returns it.
    pub fn push(
        &mut self,
        kind: EntryKind,
        parent: Option<u32>,
        source: &str,
        text: impl Into<String>,
        accepted: Option<bool>,
        now: u64,
    ) -> &Entry {
        let seq = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.entries.push(Entry {
            seq,
            kind,
            parent,
            source: source.to_string(),
            text: text.into(),
            accepted,
            step: self.session.steps_done,
            created_at: now,
        });
        &self.entries[self.entries.len() - 1]
    }

    /// Sub-problems in order.
    pub fn sub_problems(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::SubProblem)
    }

    /// The latest partial solution of sub-problem `sub`.
    pub fn latest_partial(&self, sub: u32) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.kind == EntryKind::Partial && e.parent == Some(sub))
    }

    /// The latest entry written by `source`.
    pub fn latest_from(&self, source: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.source == source)
    }

    /// The final answer, if the board has one.
    pub fn final_answer(&self) -> Option<&Entry> {
        self.entries.iter().find(|e| e.kind == EntryKind::Final)
    }
}

/// Reads a session and its entries.
pub fn load_read(txn: &ReadTransaction, id: &str) -> Result<Option<Board>> {
    let sessions = txn.open_table(tables::BOARD_SESSIONS)?;
    let Some(bytes) = sessions.get(id)? else {
        return Ok(None);
    };
    let session: Session = codec::decode(bytes.value())?;
    let table = txn.open_table(tables::BOARD_ENTRIES)?;
    let mut entries = Vec::new();
    for row in table.range((id, 0)..=(id, u32::MAX))? {
        let (_, value) = row?;
        entries.push(codec::decode(value.value())?);
    }
    Ok(Some(Board { session, entries }))
}

/// Writes the session record and the entries from `first_new_seq` on.
pub fn save_in(txn: &WriteTransaction, board: &Board, first_new_seq: u32) -> Result<()> {
    let id = board.session.id.as_str();
    txn.open_table(tables::BOARD_SESSIONS)?
        .insert(id, codec::encode(&board.session)?.as_slice())?;
    let mut table = txn.open_table(tables::BOARD_ENTRIES)?;
    for entry in board.entries.iter().filter(|e| e.seq >= first_new_seq) {
        table.insert((id, entry.seq), codec::encode(entry)?.as_slice())?;
    }
    Ok(())
}

/// Deletes the boards whose job no longer exists (pruned by retention); returns how many.
pub fn prune_orphans_in(txn: &WriteTransaction) -> Result<usize> {
    let jobs = txn.open_table(tables::JOBS)?;
    let mut sessions = txn.open_table(tables::BOARD_SESSIONS)?;
    let mut orphans = Vec::new();
    for row in sessions.iter()? {
        let (id, bytes) = row?;
        let session: Session = codec::decode(bytes.value())?;
        if jobs.get(session.job_id)?.is_none() {
            orphans.push(id.value().to_string());
        }
    }
    let mut entries = txn.open_table(tables::BOARD_ENTRIES)?;
    for id in &orphans {
        sessions.remove(id.as_str())?;
        entries.retain_in((id.as_str(), 0)..=(id.as_str(), u32::MAX), |_, _| false)?;
    }
    Ok(orphans.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    use crate::queue::{enqueue_in, NewJob, QueueConfig};
    use crate::store::{Store, StoreConfig};

    #[test]
    fn boards_of_vanished_jobs_are_pruned_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().join("b.redb"))).unwrap();
        let kept = store
            .write_blocking(|txn| {
                let job = NewJob::new("q", "chat", vec![1]);
                let id = enqueue_in(txn, &QueueConfig::default(), &job, 0)?.id;
                for job_id in [id, id + 100] {
                    let mut board = Board::start(job_id, "p", "d", 0);
                    board.push(EntryKind::SubProblem, Some(0), "decompose", "s", None, 0);
                    save_in(txn, &board, 0)?;
                }
                Ok(id)
            })
            .unwrap();
        let pruned = store.write_blocking(prune_orphans_in).unwrap();
        assert_eq!(pruned, 1);
        store
            .read_blocking(|txn| {
                assert_eq!(load_read(txn, &session_id(kept))?.unwrap().entries.len(), 2);
                assert_eq!(load_read(txn, &session_id(kept + 100))?, None);
                let entries = txn.open_table(tables::BOARD_ENTRIES)?;
                assert_eq!(entries.len()?, 2);
                Ok(())
            })
            .unwrap();
    }
}
