//! Response bodies, stored once: a body is kept under a sequence number with a count of the
//! job results and cache rows that refer to it, so the cache row and the job of a fresh
//! answer share one copy, and so does the job a cache hit completes.
//!
//! Sequence numbers, not content hashes, key the bodies: every real answer differs from
//! every other (each carries its own id), so a hash key bought no sharing and scattered each
//! batch's bodies over the whole tree (two random B-tree inserts per completion). Which
//! references share a copy is found by a hint instead ([`RECENT`]: bodies stored or read
//! lately, by content hash), checked against the stored bytes before it is used. Bodies of
//! older files stay under their SHA-256 ([`BODIES`]) and are read and released as before.

use std::collections::HashMap;
use std::sync::Mutex;

use redb::{AccessGuard, ReadTransaction, ReadableTable, Table, WriteTransaction};
use sha2::{Digest, Sha256};

use super::tables::{BodyKey, BODIES, BODIES_BY_ID, BODY_ID_REFS, BODY_REFS, META, NEXT_BODY_ID};
use crate::error::Result;

/// Marks a [`BodyKey`] that holds a sequence number (in its last 8 bytes) rather than a
/// SHA-256, which cannot start with these 24 bytes in practice (a 2^-192 chance).
const ID_MARK: [u8; 24] = *b"reasonq body by sequence";

/// Where a body is, decoded from the [`BodyKey`] a result or cache row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// In [`BODIES_BY_ID`].
    Id(u64),
    /// In [`BODIES`], under its SHA-256 (bodies stored before sequence numbers).
    Hash(BodyKey),
}

impl Stored {
    /// Decodes a stored reference.
    pub fn of(key: &BodyKey) -> Stored {
        match key.split_at(ID_MARK.len()) {
            (mark, id) if mark == ID_MARK => {
                let mut n = [0u8; 8];
                n.copy_from_slice(id);
                Stored::Id(u64::from_be_bytes(n))
            }
            _ => Stored::Hash(*key),
        }
    }

    /// The reference as results and cache rows hold it.
    pub fn key(self) -> BodyKey {
        match self {
            Stored::Hash(hash) => hash,
            Stored::Id(id) => {
                let mut key = [0u8; 32];
                key[..ID_MARK.len()].copy_from_slice(&ID_MARK);
                key[ID_MARK.len()..].copy_from_slice(&id.to_be_bytes());
                key
            }
        }
    }
}

/// Hints of where bodies stored or read lately are, by SHA-256 of their bytes: the cache
/// row of a fresh answer finds the copy its job result just stored, and the job a cache hit
/// completes finds the copy the hit was read from (an enqueue chunk's hits, 5,000 lines, are
/// read before its jobs are written). Two generations of at most [`RECENT_MAX`] each keep
/// the latest hints in at most about 1.3 MB, grown as used. A hint is only used after the
/// stored bytes are found equal, so a stale one costs a copy, never a wrong body.
static RECENT: Mutex<Recent> = Mutex::new(Recent {
    new: None,
    old: None,
});
const RECENT_MAX: usize = 12_000;

struct Recent {
    new: Option<HashMap<[u8; 32], u64>>,
    old: Option<HashMap<[u8; 32], u64>>,
}

fn recent_get(hash: &[u8; 32]) -> Option<u64> {
    let recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    let found = [&recent.new, &recent.old]
        .into_iter()
        .find_map(|m| m.as_ref().and_then(|m| m.get(hash).copied()));
    found
}

fn recent_put(hash: [u8; 32], id: u64) {
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    if recent.new.as_ref().is_some_and(|m| m.len() >= RECENT_MAX) {
        recent.old = recent.new.take();
    }
    recent.new.get_or_insert_with(HashMap::new).insert(hash, id);
}

/// Notes that `body` was read from `key` (a cache hit): the job it completes then refers to
/// that copy instead of storing another.
pub fn note_read(key: &BodyKey, body: &[u8]) {
    if let Stored::Id(id) = Stored::of(key) {
        recent_put(Sha256::digest(body).into(), id);
    }
}

/// The body tables of a write transaction, opened once for many references.
pub struct Bodies<'t> {
    by_id: Table<'t, u64, &'static [u8]>,
    id_refs: Table<'t, u64, u64>,
    meta: Table<'t, &'static str, u64>,
    refs: Table<'t, &'static BodyKey, u64>,
    bodies: Table<'t, &'static BodyKey, &'static [u8]>,
}

impl<'t> Bodies<'t> {
    /// Opens the body tables.
    pub fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(Bodies {
            by_id: txn.open_table(BODIES_BY_ID)?,
            id_refs: txn.open_table(BODY_ID_REFS)?,
            meta: txn.open_table(META)?,
            refs: txn.open_table(BODY_REFS)?,
            bodies: txn.open_table(BODIES)?,
        })
    }

    /// Adds one reference to `body`: to a copy stored or read lately if it has these exact
    /// bytes, else to a new copy; returns where it is.
    pub fn put(&mut self, body: &[u8]) -> Result<BodyKey> {
        let hash: [u8; 32] = Sha256::digest(body).into();
        if let Some(id) = recent_get(&hash) {
            let refs = self.id_refs.get(id)?.map(|v| v.value());
            let same = self.by_id.get(id)?.is_some_and(|b| b.value() == body);
            if let (Some(n), true) = (refs, same) {
                self.id_refs.insert(id, n + 1)?;
                return Ok(Stored::Id(id).key());
            }
        }
        // A copy under its hash, from an older file.
        let old = self.refs.get(&hash)?.map(|v| v.value());
        if let Some(n) = old {
            self.refs.insert(&hash, n + 1)?;
            return Ok(Stored::Hash(hash).key());
        }
        let id = self.meta.get(NEXT_BODY_ID)?.map_or(1, |v| v.value());
        self.meta.insert(NEXT_BODY_ID, id + 1)?;
        self.by_id.insert(id, body)?;
        self.id_refs.insert(id, 1)?;
        recent_put(hash, id);
        Ok(Stored::Id(id).key())
    }

    /// Drops one reference; the body goes with the last one.
    pub fn release(&mut self, key: &BodyKey) -> Result<()> {
        match Stored::of(key) {
            Stored::Id(id) => {
                let n = self.id_refs.get(id)?.map_or(0, |v| v.value());
                if n > 1 {
                    self.id_refs.insert(id, n - 1)?;
                } else {
                    self.id_refs.remove(id)?;
                    self.by_id.remove(id)?;
                }
            }
            Stored::Hash(hash) => {
                let n = self.refs.get(&hash)?.map_or(0, |v| v.value());
                if n > 1 {
                    self.refs.insert(&hash, n - 1)?;
                } else {
                    self.refs.remove(&hash)?;
                    self.bodies.remove(&hash)?;
                }
            }
        }
        Ok(())
    }
}

/// Adds one reference to `body` (see [`Bodies::put`]); returns where it is.
pub fn put_in(txn: &WriteTransaction, body: &[u8]) -> Result<BodyKey> {
    Bodies::open(txn)?.put(body)
}

/// Drops one reference; the body goes with the last one.
pub fn release_in(txn: &WriteTransaction, key: &BodyKey) -> Result<()> {
    Bodies::open(txn)?.release(key)
}

/// The body stored at `key`.
pub fn get_read(txn: &ReadTransaction, key: &BodyKey) -> Result<Option<Vec<u8>>> {
    match Stored::of(key) {
        Stored::Id(id) => copied(txn.open_table(BODIES_BY_ID)?.get(id)?),
        Stored::Hash(hash) => copied(txn.open_table(BODIES)?.get(&hash)?),
    }
}

/// [`get_read`] inside a write transaction.
pub fn get_in(txn: &WriteTransaction, key: &BodyKey) -> Result<Option<Vec<u8>>> {
    match Stored::of(key) {
        Stored::Id(id) => copied(txn.open_table(BODIES_BY_ID)?.get(id)?),
        Stored::Hash(hash) => copied(txn.open_table(BODIES)?.get(&hash)?),
    }
}

fn copied(found: Option<AccessGuard<'_, &'static [u8]>>) -> Result<Option<Vec<u8>>> {
    Ok(found.map(|v| v.value().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreConfig};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().join("b.redb"))).unwrap();
        (dir, store)
    }

    #[test]
    fn a_body_lives_while_something_refers_to_it() {
        let (_dir, store) = open();
        let (a, b) = store
            .write_blocking(|txn| Ok((put_in(txn, b"same")?, put_in(txn, b"same")?)))
            .unwrap();
        assert_eq!(a, b, "one copy for two references");
        assert!(matches!(Stored::of(&a), Stored::Id(_)));
        store
            .write_blocking(move |txn| release_in(txn, &a))
            .unwrap();
        let left = store.read_blocking(|txn| get_read(txn, &a)).unwrap();
        assert_eq!(left.as_deref(), Some(&b"same"[..]));
        store
            .write_blocking(move |txn| release_in(txn, &a))
            .unwrap();
        assert_eq!(store.read_blocking(|txn| get_read(txn, &a)).unwrap(), None);
    }

    #[test]
    fn bodies_take_sequence_numbers_and_a_stale_hint_costs_a_copy_not_a_wrong_body() {
        let (_dir, store) = open();
        let first = store.write_blocking(|txn| put_in(txn, b"one")).unwrap();
        let second = store.write_blocking(|txn| put_in(txn, b"two")).unwrap();
        let (Stored::Id(i), Stored::Id(j)) = (Stored::of(&first), Stored::of(&second)) else {
            panic!("new bodies are stored by sequence number");
        };
        assert_eq!(j, i + 1);
        // The last reference goes, and with it the copy the hint points at.
        store
            .write_blocking(move |txn| release_in(txn, &first))
            .unwrap();
        let again = store.write_blocking(|txn| put_in(txn, b"one")).unwrap();
        assert_ne!(again, first, "a hint to a deleted copy is not followed");
        let read = store
            .read_blocking(move |txn| get_read(txn, &again))
            .unwrap();
        assert_eq!(read.as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn bodies_of_older_files_are_still_read_shared_and_released_under_their_hash() {
        let (_dir, store) = open();
        let hash: BodyKey = Sha256::digest(b"old").into();
        store
            .write_blocking(move |txn| {
                txn.open_table(BODIES)?.insert(&hash, &b"old"[..])?;
                txn.open_table(BODY_REFS)?.insert(&hash, 1)?;
                Ok(())
            })
            .unwrap();
        let shared = store.write_blocking(|txn| put_in(txn, b"old")).unwrap();
        assert_eq!(Stored::of(&shared), Stored::Hash(hash));
        for _ in 0..2 {
            let read = store
                .read_blocking(move |txn| get_read(txn, &hash))
                .unwrap();
            assert_eq!(read.as_deref(), Some(&b"old"[..]));
            store
                .write_blocking(move |txn| release_in(txn, &hash))
                .unwrap();
        }
        assert_eq!(
            store
                .read_blocking(move |txn| get_read(txn, &hash))
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_stored_reference_round_trips() {
        for stored in [Stored::Id(0), Stored::Id(u64::MAX), Stored::Hash([7; 32])] {
            assert_eq!(Stored::of(&stored.key()), stored);
        }
    }
}
