//! Rows and bytes of every table in the file, to see where a database's size goes
//! (`reasonq stats --tables`, the scale bench). Read only.

use redb::{ReadTransaction, ReadableTableMetadata, TableHandle};
use serde::Serialize;

use crate::error::Result;

/// What one table holds, from redb's own statistics.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableSize {
    pub name: String,
    pub multimap: bool,
    /// Entries (values, for a multimap table).
    pub rows: u64,
    /// Bytes of keys and values in leaf pages.
    pub stored_bytes: u64,
    /// Bytes of branch pages and other tree overhead.
    pub metadata_bytes: u64,
    /// Bytes allocated to the table's pages but unused.
    pub fragmented_bytes: u64,
}

impl TableSize {
    /// Bytes of the pages the table occupies.
    pub fn total_bytes(&self) -> u64 {
        self.stored_bytes + self.metadata_bytes + self.fragmented_bytes
    }
}

/// Every table, plain and multimap, largest first (by the bytes of its pages).
pub fn table_sizes_read(txn: &ReadTransaction) -> Result<Vec<TableSize>> {
    let mut out = Vec::new();
    for handle in txn.list_tables()? {
        let table = txn.open_untyped_table(handle)?;
        out.push(size_of(table.name(), false, &table)?);
    }
    for handle in txn.list_multimap_tables()? {
        let table = txn.open_untyped_multimap_table(handle)?;
        out.push(size_of(
            redb::MultimapTableHandle::name(&table),
            true,
            &table,
        )?);
    }
    out.sort_by(|a, b| {
        b.total_bytes()
            .cmp(&a.total_bytes())
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(out)
}

fn size_of(name: &str, multimap: bool, table: &impl ReadableTableMetadata) -> Result<TableSize> {
    let stats = table.stats()?;
    Ok(TableSize {
        name: name.to_string(),
        multimap,
        rows: table.len()?,
        stored_bytes: stats.stored_bytes(),
        metadata_bytes: stats.metadata_bytes(),
        fragmented_bytes: stats.fragmented_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{tables, Store, StoreConfig};

    #[test]
    fn lists_every_table_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().join("db.redb"))).unwrap();
        store
            .write_blocking(|txn| {
                let mut jobs = txn.open_table(tables::JOBS)?;
                for id in 0..100u64 {
                    jobs.insert(id, [7u8; 100].as_slice())?;
                }
                Ok(())
            })
            .unwrap();
        let sizes = store.read_blocking(table_sizes_read).unwrap();
        let jobs = sizes.iter().find(|t| t.name == "jobs").unwrap();
        assert_eq!(jobs.rows, 100);
        assert!(!jobs.multimap);
        // 100 values of 100 bytes, plus their keys.
        assert!(jobs.stored_bytes >= 100 * 100, "{jobs:?}");
        assert!(jobs.total_bytes() >= jobs.stored_bytes);
        assert_eq!(sizes[0].name, "jobs", "the largest comes first: {sizes:?}");
        // Tables created at open and still empty are listed too.
        let cache = sizes.iter().find(|t| t.name == "cache").unwrap();
        assert_eq!(cache.rows, 0);
        store.close().unwrap();
    }
}
