//! Workloads shared by the queue benches: reasonq, the SQLite baseline and the physical
//! ceiling of the disk, each timing only the work (setup is excluded by the callers).

#![allow(dead_code)] // each bench binary uses a subset

pub mod physical;
pub mod reasonq_load;
pub mod sqlite;

/// 32-byte payload, as in the measurements.
pub const PAYLOAD: [u8; 32] = [7; 32];
/// Lease duration used by every worker (long: no rescue during a bench).
pub const LEASE_SECS: u64 = 600;
