//! Files and batches in creation order: each record table (id -> record) has a time index
//! ((created ms, id) -> ()), so a list page reads its own rows and no more, newest first,
//! whatever the number of records.

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use crate::codec::{self, Record};
use crate::error::Result;
use crate::store::tables;

/// A table of records by id.
pub type Records = TableDefinition<'static, &'static str, &'static [u8]>;
/// Its time index.
pub type ByTime = TableDefinition<'static, (u64, &'static str), ()>;

/// One page of a list, newest first.
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// Writes `record` under `id` and its row in the time index.
pub fn insert<T: Record>(
    txn: &WriteTransaction,
    (records, by_time): (Records, ByTime),
    id: &str,
    created_ms: u64,
    record: &T,
) -> Result<()> {
    let bytes = codec::encode(record)?;
    txn.open_table(records)?.insert(id, bytes.as_slice())?;
    txn.open_table(by_time)?.insert((created_ms, id), ())?;
    Ok(())
}

/// Removes the record `id` (created at `created_ms`) and its index row.
pub fn remove(
    txn: &WriteTransaction,
    (records, by_time): (Records, ByTime),
    id: &str,
    created_ms: u64,
) -> Result<bool> {
    let removed = txn.open_table(records)?.remove(id)?.is_some();
    txn.open_table(by_time)?.remove((created_ms, id))?;
    Ok(removed)
}

/// Up to `limit` records kept by `keep`, newest first, after the one created at `after`
/// (`(created ms, id)`), or from the newest.
pub fn page<T: Record>(
    txn: &ReadTransaction,
    (records, by_time): (Records, ByTime),
    after: Option<(u64, &str)>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Page<T>> {
    let records = txn.open_table(records)?;
    let index = txn.open_table(by_time)?;
    let rows = match after {
        Some(key) => index.range(..key)?,
        None => index.range::<(u64, &str)>(..)?,
    };
    let mut items = Vec::new();
    for row in rows.rev() {
        let (key, _) = row?;
        let (_, id) = key.value();
        let Some(value) = records.get(id)? else {
            continue;
        };
        let record: T = codec::decode(value.value())?;
        if !keep(&record) {
            continue;
        }
        if items.len() == limit {
            return Ok(Page {
                items,
                has_more: true,
            });
        }
        items.push(record);
    }
    Ok(Page {
        items,
        has_more: false,
    })
}

/// A record table, its time index, and how to read a record's creation time.
pub type Indexed = (Records, ByTime, fn(&[u8]) -> Result<u64>);

/// Fills the time indexes from records written before they existed, once per database.
pub fn build_once(txn: &WriteTransaction, of: &[Indexed]) -> Result<()> {
    let mut meta = txn.open_table(tables::META)?;
    if meta.get(tables::SERVE_INDEX_BUILT)?.is_some() {
        return Ok(());
    }
    for (records, by_time, created_ms) in of {
        let records = txn.open_table(*records)?;
        let mut index = txn.open_table(*by_time)?;
        for row in records.iter()? {
            let (id, value) = row?;
            index.insert((created_ms(value.value())?, id.value()), ())?;
        }
    }
    meta.insert(tables::SERVE_INDEX_BUILT, 1)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::files::{created_ms, FileRecord};
    use crate::store::{Store, StoreConfig};

    const FILES: (Records, ByTime) = (tables::SERVE_FILES, tables::SERVE_FILES_BY_TIME);

    fn file(id: &str, ms: u64, purpose: &str) -> FileRecord {
        FileRecord {
            id: id.into(),
            filename: format!("{id}.jsonl"),
            bytes: 1,
            created_at: ms / 1000,
            created_ms: ms,
            purpose: purpose.into(),
        }
    }

    fn ids(page: &Page<FileRecord>) -> Vec<&str> {
        page.items.iter().map(|f| f.id.as_str()).collect()
    }

    #[test]
    fn pages_run_newest_first_and_an_older_database_gets_its_index_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().join("db.redb"))).unwrap();
        // Records as a database written before the index existed holds them.
        store
            .write_blocking(|txn| {
                let mut t = txn.open_table(tables::SERVE_FILES)?;
                for (id, ms, purpose) in [
                    ("a", 1, "batch"),
                    ("b", 2, "batch_output"),
                    ("c", 2, "batch"),
                    ("d", 3, "batch"),
                ] {
                    t.insert(id, codec::encode(&file(id, ms, purpose))?.as_slice())?;
                }
                Ok(())
            })
            .unwrap();
        let build = |txn: &WriteTransaction| build_once(txn, &[(FILES.0, FILES.1, created_ms)]);
        store.write_blocking(build).unwrap();
        // A second build adds nothing (the flag is set): a later insert is not doubled.
        store
            .write_blocking(|txn| insert(txn, FILES, "e", 4, &file("e", 4, "batch")))
            .unwrap();
        store.write_blocking(build).unwrap();
        store
            .read_blocking(|txn| {
                let all = page(txn, FILES, None, 10, |_: &FileRecord| true)?;
                assert_eq!(ids(&all), ["e", "d", "c", "b", "a"]);
                assert!(!all.has_more);
                let first = page(txn, FILES, None, 2, |f: &FileRecord| f.purpose == "batch")?;
                assert_eq!((ids(&first), first.has_more), (vec!["e", "d"], true));
                let rest = page(txn, FILES, Some((3, "d")), 2, |f: &FileRecord| {
                    f.purpose == "batch"
                })?;
                assert_eq!((ids(&rest), rest.has_more), (vec!["c", "a"], false));
                Ok(())
            })
            .unwrap();
        store
            .write_blocking(|txn| remove(txn, FILES, "c", 2).map(|_| ()))
            .unwrap();
        store
            .read_blocking(|txn| {
                let all = page(txn, FILES, None, 10, |_: &FileRecord| true)?;
                assert_eq!(ids(&all), ["e", "d", "b", "a"]);
                Ok(())
            })
            .unwrap();
    }
}
