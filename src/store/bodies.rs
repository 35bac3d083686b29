//! Response bodies, stored once: a body is kept under its SHA-256 with a count of the job
//! results and cache rows that refer to it, so the cache row and the job of a fresh answer
//! share one copy, and identical answers share one too.

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use sha2::{Digest, Sha256};

use super::tables::{BodyHash, BODIES, BODY_REFS};
use crate::error::Result;

/// The key a body is stored under.
pub fn hash(body: &[u8]) -> BodyHash {
    Sha256::digest(body).into()
}

/// The body tables of a write transaction, opened once for many references.
pub struct Bodies<'t> {
    refs: Table<'t, &'static BodyHash, u64>,
    bodies: Table<'t, &'static BodyHash, &'static [u8]>,
}

impl<'t> Bodies<'t> {
    /// Opens the body tables.
    pub fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(Bodies {
            refs: txn.open_table(BODY_REFS)?,
            bodies: txn.open_table(BODIES)?,
        })
    }

    /// Adds one reference to `body`, storing it if it is new; returns its hash.
    pub fn put(&mut self, body: &[u8]) -> Result<BodyHash> {
        let key = hash(body);
        let n = self.refs.get(&key)?.map_or(0, |v| v.value());
        if n == 0 {
            self.bodies.insert(&key, body)?;
        }
        self.refs.insert(&key, n + 1)?;
        Ok(key)
    }

    /// Drops one reference; the body goes with the last one.
    pub fn release(&mut self, key: &BodyHash) -> Result<()> {
        let n = self.refs.get(key)?.map_or(0, |v| v.value());
        if n > 1 {
            self.refs.insert(key, n - 1)?;
        } else {
            self.refs.remove(key)?;
            self.bodies.remove(key)?;
        }
        Ok(())
    }
}

/// Adds one reference to `body`, storing it if it is new; returns its hash.
pub fn put_in(txn: &WriteTransaction, body: &[u8]) -> Result<BodyHash> {
    Bodies::open(txn)?.put(body)
}

/// Drops one reference; the body goes with the last one.
pub fn release_in(txn: &WriteTransaction, key: &BodyHash) -> Result<()> {
    Bodies::open(txn)?.release(key)
}

/// The body stored under `key`.
pub fn get_read(txn: &ReadTransaction, key: &BodyHash) -> Result<Option<Vec<u8>>> {
    Ok(txn
        .open_table(BODIES)?
        .get(key)?
        .map(|v| v.value().to_vec()))
}

/// [`get_read`] inside a write transaction.
pub fn get_in(txn: &WriteTransaction, key: &BodyHash) -> Result<Option<Vec<u8>>> {
    Ok(txn
        .open_table(BODIES)?
        .get(key)?
        .map(|v| v.value().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreConfig};

    #[test]
    fn a_body_lives_while_something_refers_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().join("b.redb"))).unwrap();
        let (a, b) = store
            .write_blocking(|txn| Ok((put_in(txn, b"same")?, put_in(txn, b"same")?)))
            .unwrap();
        assert_eq!(a, b);
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
}
