//! Where an answer came from, and the counters behind [`CacheStats`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

/// Where [`super::Cache::get_or_fetch`] got its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hit {
    /// Tier 1 (memory), including a concurrent identical request's fresh answer.
    Memory,
    /// Tier 2 (the store); the entry is now in memory too.
    Disk,
    /// Fetched upstream (and cached if it succeeded).
    Miss,
    /// The policy ruled the cache out: fetched upstream, nothing read or stored.
    Bypass,
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hit::Memory => "memory",
            Hit::Disk => "disk",
            Hit::Miss => "miss",
            Hit::Bypass => "bypass",
        })
    }
}

/// A snapshot of the cache's counters since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Answers from memory.
    pub hits_memory: u64,
    /// Answers from the store.
    pub hits_disk: u64,
    /// Upstream fetches made through the cache.
    pub misses: u64,
    /// Upstream fetches the policy kept away from the cache.
    pub bypasses: u64,
    /// Responses put into memory after a fetch.
    pub inserts: u64,
    /// Entries dropped from memory because their TTL had passed.
    pub expired: u64,
    /// Entries evicted from memory for room (or refused as larger than a shard).
    pub evictions: u64,
    /// Bytes held in memory (approximate, see [`super::CachedResponse::weight`]).
    pub memory_bytes: u64,
    /// The memory tier's capacity in bytes.
    pub memory_capacity: u64,
    /// Entries held in memory.
    pub memory_entries: u64,
    /// (memory + disk hits) / (hits + misses); bypasses do not count. 0 before any lookup.
    pub hit_ratio: f64,
}

/// The event counters, shared with the memory tier's eviction hook.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub hits_memory: AtomicU64,
    pub hits_disk: AtomicU64,
    pub misses: AtomicU64,
    pub bypasses: AtomicU64,
    pub inserts: AtomicU64,
    pub expired: AtomicU64,
    pub evictions: Arc<AtomicU64>,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The snapshot, with the memory tier's gauges (`bytes`, `capacity`, `entries`).
    pub fn snapshot(&self, bytes: u64, capacity: u64, entries: u64) -> CacheStats {
        let hits_memory = self.hits_memory.load(Relaxed);
        let hits_disk = self.hits_disk.load(Relaxed);
        let misses = self.misses.load(Relaxed);
        let lookups = hits_memory + hits_disk + misses;
        CacheStats {
            hits_memory,
            hits_disk,
            misses,
            bypasses: self.bypasses.load(Relaxed),
            inserts: self.inserts.load(Relaxed),
            expired: self.expired.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            memory_bytes: bytes,
            memory_capacity: capacity,
            memory_entries: entries,
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                (hits_memory + hits_disk) as f64 / lookups as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_ratio_counts_both_tiers_and_ignores_bypasses() {
        let c = Counters::default();
        assert_eq!(c.snapshot(0, 0, 0).hit_ratio, 0.0);
        for counter in [&c.hits_memory, &c.hits_memory, &c.hits_disk, &c.misses] {
            Counters::bump(counter);
        }
        Counters::bump(&c.bypasses);
        let s = c.snapshot(10, 20, 1);
        assert_eq!(s.hit_ratio, 0.75);
        assert_eq!(
            (s.memory_bytes, s.memory_capacity, s.memory_entries),
            (10, 20, 1)
        );
    }
}
